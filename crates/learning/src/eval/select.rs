//! Which prompts and models of a log file `pointsman eval` scores: the head's held-out prompts,
//! or with `--all-prompts` every prompt of a log the head never saw (a file the head was trained
//! on is recognised by its SHA-256 in the manifest's `trained_on.files`, whatever it is called
//! now); of those, the full matrix of the catalog models the head predicts ([`full_matrix`]),
//! and what that rule dropped ([`Coverage`]), which the report states.
use std::{collections::HashSet, path::Path};

use serde::Serialize;

use super::{EvalError, MIN_EVAL_PROMPTS};
use crate::{
    predictor::{manifest::FileRef, sha256_hex, HeadManifest},
    RoutingLogs,
};

/// The manifest's `trained_on.files` entry whose SHA-256 is that of `file`'s bytes, if any.
pub fn trained_on<'m>(manifest: &'m HeadManifest, file: &Path) -> Result<Option<&'m FileRef>, EvalError> {
    let bytes = std::fs::read(file).map_err(|source| EvalError::Read { file: file.display().to_string(), source })?;
    let digest = sha256_hex(&bytes);
    Ok(manifest.trained_on.files.iter().find(|f| f.sha256.eq_ignore_ascii_case(&digest)))
}

/// The prompt ids to evaluate `file` (read into `logs`) on: every prompt with `all_prompts`,
/// which a file the head was trained on refuses unless `allow_training_prompts`; otherwise the
/// head's held-out prompts, of which the file must hold at least [`MIN_EVAL_PROMPTS`].
pub fn eval_prompts(
    manifest: &HeadManifest,
    file: &Path,
    logs: &RoutingLogs,
    all_prompts: bool,
    allow_training_prompts: bool,
) -> Result<Vec<String>, EvalError> {
    let name = file.display().to_string();
    let held: HashSet<&str> = manifest.validation.prompt_ids.iter().map(String::as_str).collect();
    let held_out = logs.prompts.iter().filter(|p| held.contains(p.id.as_str())).count();
    if all_prompts {
        if !allow_training_prompts {
            if let Some(f) = trained_on(manifest, file)? {
                return Err(EvalError::TrainingData { file: name, trained_as: f.path.clone(), held_out });
            }
        }
        return Ok(logs.prompts.iter().map(|p| p.id.clone()).collect());
    }
    if held_out < MIN_EVAL_PROMPTS {
        let hint = if manifest.validation.prompt_ids.is_empty() {
            "The manifest lists no held-out prompts: retrain the head with this version, or pass --all-prompts for a log it never saw."
                .to_string()
        } else if let Some(f) = trained_on(manifest, file)? {
            format!(
                "The head was trained on this file (its SHA-256 matches `{}` in the manifest's trained_on.files) and held out too few of its prompts: retrain with a larger --val-fraction, or evaluate on a log the head never saw.",
                f.path
            )
        } else {
            "For a log the head never saw, pass --all-prompts to evaluate on every prompt of it.".to_string()
        };
        return Err(EvalError::NotHeldOut { file: name, held_out, prompts: logs.prompts.len(), hint });
    }
    Ok(manifest.validation.prompt_ids.clone())
}

/// Share of the prompts a model must have answered to join a full matrix.
pub const MIN_COVERAGE: f64 = 0.95;

/// Picks a full matrix out of sparse outcomes: of `candidates`, the models that answered at least
/// [`MIN_COVERAGE`] of `prompts`, then the prompts that all of those answered.
pub fn full_matrix<M: Copy>(
    prompts: &[usize],
    candidates: impl IntoIterator<Item = M>,
    answered: impl Fn(usize, M) -> bool,
) -> (Vec<M>, Vec<usize>) {
    let models: Vec<M> = candidates
        .into_iter()
        .filter(|&m| prompts.iter().filter(|&&p| answered(p, m)).count() as f64 >= MIN_COVERAGE * prompts.len() as f64)
        .collect();
    let rows = prompts.iter().copied().filter(|&p| models.iter().all(|&m| answered(p, m))).collect();
    (models, rows)
}

/// A model the full-matrix rule dropped for answering too few of the prompts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelShare {
    /// Model id.
    pub model: String,
    /// Share of the candidate prompts it answered (below [`MIN_COVERAGE`]).
    pub answered: f64,
}

/// What the scoring rule kept of one file: the models of the log that are not scored and why, and
/// the prompts dropped because a scored model did not answer them.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Coverage {
    /// The rule's threshold: a model must answer this share of the prompts ([`MIN_COVERAGE`]).
    pub min_coverage: f64,
    /// Models in the log.
    pub models_in_log: usize,
    /// Models scored.
    pub models_scored: usize,
    /// Models of the log without a catalog entry (no price, so no cost to score them at).
    pub dropped_no_price: Vec<String>,
    /// Priced models the head does not predict.
    pub dropped_not_in_head: Vec<String>,
    /// Priced models the head predicts that answered fewer than [`MIN_COVERAGE`] of the prompts.
    pub dropped_low_coverage: Vec<ModelShare>,
    /// Prompts to be evaluated before the rule.
    pub prompts_considered: usize,
    /// Of those, prompts dropped because some scored model did not answer them.
    pub prompts_dropped: usize,
}

impl Coverage {
    /// The folds of one file together: dropped models united, prompts summed.
    pub fn merge(parts: &[&Coverage], models_scored: usize) -> Coverage {
        let mut out = Coverage { min_coverage: MIN_COVERAGE, models_scored, ..Coverage::default() };
        for c in parts {
            out.models_in_log = out.models_in_log.max(c.models_in_log);
            out.prompts_considered += c.prompts_considered;
            out.prompts_dropped += c.prompts_dropped;
            for m in c.dropped_no_price.iter().chain(&c.dropped_not_in_head) {
                let list = if c.dropped_no_price.contains(m) { &mut out.dropped_no_price } else { &mut out.dropped_not_in_head };
                if !list.contains(m) {
                    list.push(m.clone());
                }
            }
            for s in &c.dropped_low_coverage {
                match out.dropped_low_coverage.iter_mut().find(|o| o.model == s.model) {
                    Some(o) => o.answered = o.answered.min(s.answered),
                    None => out.dropped_low_coverage.push(s.clone()),
                }
            }
        }
        out
    }

    /// One line for the printed report.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "scored {} of the log's {} models on {} of {} prompts",
            self.models_scored,
            self.models_in_log,
            self.prompts_considered - self.prompts_dropped,
            self.prompts_considered
        );
        if !self.dropped_no_price.is_empty() {
            s += &format!("; no catalog price: {}", self.dropped_no_price.join(", "));
        }
        if !self.dropped_not_in_head.is_empty() {
            s += &format!("; not predicted by the head: {}", self.dropped_not_in_head.join(", "));
        }
        if !self.dropped_low_coverage.is_empty() {
            let l: Vec<String> = self.dropped_low_coverage.iter().map(|m| format!("{} ({:.0}%)", m.model, m.answered * 100.0)).collect();
            s += &format!("; answered < {:.0}% of the prompts: {}", self.min_coverage * 100.0, l.join(", "));
        }
        if self.prompts_dropped > 0 {
            s += &format!("; {} prompts dropped: a scored model has no outcome for them", self.prompts_dropped);
        }
        s
    }
}
