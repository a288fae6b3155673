//! One `pointsman train` run, end to end:
//!
//! 1. read the logs and embed each prompt with the serving encoder (`embed`);
//! 2. hold out a cross-validation fold (`train --cv`) or, only when asked (`--val-fraction`), a
//!    validation split by prompt;
//! 3. group the files into model families (`families`);
//! 4. per family, choose the predictor by an inner cross-validation of the training prompts:
//!    kNN with shrinkage, factor heads, the MLP ensemble, blends (`select`);
//! 5. fit the winners on every training prompt (an MLP's early-stopping rows included) and build
//!    the graph's parts: stacked heads, the capped memory of training prompts, per-model blend
//!    weights, each model's empirical-Bayes prior and the evidence guard (`fit`);
//! 6. export one ONNX graph and write it with its typed manifest (`predictor::manifest`).
//!
//! Without a held-out split (the default), the validation figures are the winner's out-of-fold
//! figures from the inner cross-validation; a held-out split, when there is one, never influences
//! any choice or fit.
use std::{collections::HashSet, path::PathBuf, time::Instant};

mod families;
mod fit;
mod routing_value;
mod select;

pub(crate) use crate::write_atomically;
pub use crate::DEFAULT_MEMORY_CAP;
pub use crate::{embed_logged_prompts, embed_prompts, embed_prompts_cached, now_rfc3339, JobError};
pub use families::{log_files, model_families, Family, LogFile};
pub use select::{BLEND_WEIGHTS, FACTOR_RANKS, GAP_TOLERANCE, INNER_FOLDS};

use super::{
    baseline_metrics, evaluate, export_with_support, read_logs, split_by_prompt, Dataset, Metrics, Mlp, Shrink, Support, TrainConfig,
};
use crate::{
    encoder::Encoder,
    predictor::{
        manifest::{
            Architecture, FamilyKind, FamilySpec, FileRef, HeldOutMetrics, MlpSettings, QualityPrior, Selection, Shrinkage, TrainedOn,
            Training, Validation,
        },
        sha256_hex, EncoderRef, HeadManifest, HEAD_FORMAT,
    },
};

/// What to train and where to write it.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Routing log files (JSON Lines, gzip or plain).
    pub data: Vec<PathBuf>,
    /// Output folder for `head.onnx` and `manifest.json`.
    pub out_dir: PathBuf,
    /// Share of prompts held out for validation, by prompt (0, the default: none; the head is
    /// fitted on every prompt and the validation figures come from the inner cross-validation).
    pub val_fraction: f64,
    /// Share of a family's training prompts an MLP head stops early on.
    pub early_stop_fraction: f64,
    /// Fail on the first malformed line instead of skipping it.
    pub strict: bool,
    /// Name prefix of the head id.
    pub name: String,
    /// MLP optimiser settings (the seed also drives the splits and folds).
    pub train: TrainConfig,
    /// The catalog (prices) candidates are scored with on full-matrix logs; without it they are
    /// scored by the Brier score.
    pub catalog: Option<pointsman_core::catalog::Catalog>,
    /// Price of one unit of quality, as the server will route (`routing.cost_scale_usd`).
    pub cost_scale_usd: f64,
    /// Folder of the on-disk embedding cache; `None` embeds everything.
    pub embedding_cache: Option<PathBuf>,
    /// MLPs averaged per MLP head (different seeds).
    pub ensemble: usize,
    /// Which candidates the selection considers.
    pub method: HeadMethod,
    /// Also try the MLP ensemble on logs dense enough for factor heads (slow: a full ensemble per
    /// inner fold).
    pub mlp_candidate: bool,
    /// Training prompts a head stores per model family (its memory for the kNN and the domain rule).
    pub memory_cap: usize,
    /// On sparse families, each model's kNN averages its own nearest observations (per-model
    /// memory blocks) instead of the nearest prompts (`--knn-own-neighbours`; measured worse on
    /// issue 23's mmlu_pro logs, so off by default).
    pub own_neighbours: bool,
    /// The prompts (by id) to hold out instead of a random `val_fraction` of them: one fold of a
    /// cross-validation (`pointsman train --cv`).
    pub holdout: Option<std::collections::HashSet<String>>,
}

/// Which candidates a run chooses among (`pointsman train --method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadMethod {
    /// Every candidate: kNN with shrinkage, factor heads where the logs are dense enough (at
    /// least 3 models observed on 95% of a family's prompts), the MLP ensemble with
    /// `--mlp-candidate`, and blends; chosen by inner cross-validation.
    #[default]
    Auto,
    /// The kNN with shrinkage alone ((k, b) still chosen by inner cross-validation).
    Knn,
    /// Factor heads alone (the rank chosen by inner cross-validation; fails on sparse logs).
    LowRank,
    /// The MLP ensemble alone.
    Mlp,
}

impl std::str::FromStr for HeadMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "knn" => Ok(Self::Knn),
            "mlp" => Ok(Self::Mlp),
            "lowrank" => Ok(Self::LowRank),
            other => Err(format!("method must be `auto`, `knn`, `lowrank` or `mlp`. Given: `{other}`")),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The manifest written.
    pub manifest: HeadManifest,
    /// Held-out metrics of the head.
    pub validation: Metrics,
    /// Held-out metrics of the per-model-mean baseline.
    pub baseline: Metrics,
    /// Seconds spent embedding.
    pub embed_seconds: f64,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Lines skipped as malformed.
    pub skipped_lines: usize,
    /// Per model: its id and what the trainer knew of it and did with it (`None`: observed on no
    /// training prompt, served at the unobserved prior).
    pub evidence: Vec<(String, Option<crate::evidence::ModelEvidence>)>,
    /// What a model observed on no training prompt is predicted at.
    pub unobserved_prior: f32,
    /// Observations that carried a propensity.
    pub with_propensity: usize,
    /// Observations read.
    pub observations: usize,
    /// First problems found in the logs.
    pub problems: Vec<String>,
}

fn held_out(m: &Metrics) -> HeldOutMetrics {
    HeldOutMetrics {
        observed_pairs: m.observed,
        loss: m.loss,
        quality_mae: m.quality_mae,
        quality_brier: m.quality_brier,
        log_tokens_mae: m.log_tokens_mae,
        tokens_median_abs_error: m.tokens_median_abs_error,
    }
}

/// Held-out metrics of `mlp` with `shrink` applied, over observed pairs.
fn shrunk_metrics(mlp: &Mlp, shrink: &Shrink, support: &Support, data: &Dataset, token_weight: f32) -> Metrics {
    let (q, t) = mlp.predict(data.x.view());
    let (q, t) = shrink.apply(Some(support), data.x.view(), &q, &t);
    metrics_of(&q, &t, data, token_weight)
}

/// Metrics of predicted quality and tokens ([rows, models]) over `data`'s observed pairs.
fn metrics_of(q: &ndarray::Array2<f32>, t: &ndarray::Array2<f32>, data: &Dataset, token_weight: f32) -> Metrics {
    let (mut n, mut bce, mut mae, mut brier, mut lmae) = (0usize, 0f64, 0f64, 0f64, 0f64);
    let mut tok_err = Vec::new();
    for ((((&m, &p), &y), &pt), &yl) in data.mask.iter().zip(q).zip(&data.quality).zip(t).zip(&data.log_tokens) {
        if m == 0.0 {
            continue;
        }
        let (p, y) = (f64::from(p).clamp(1e-6, 1.0 - 1e-6), f64::from(y));
        n += 1;
        bce -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
        mae += (p - y).abs();
        brier += (p - y).powi(2);
        let zl = f64::from(pt.max(0.0)).ln_1p();
        lmae += (zl - f64::from(yl)).abs();
        tok_err.push((f64::from(pt) - (f64::from(yl).exp() - 1.0)).abs());
    }
    tok_err.sort_by(f64::total_cmp);
    let d = n.max(1) as f64;
    let sq: f64 = data
        .mask
        .iter()
        .zip(t)
        .zip(&data.log_tokens)
        .filter(|((m, _), _)| **m > 0.0)
        .map(|((_, &pt), &yl)| (f64::from(pt.max(0.0)).ln_1p() - f64::from(yl)).powi(2))
        .sum();
    Metrics {
        observed: n,
        loss: ((bce + f64::from(token_weight) * sq) / d) as f32,
        quality_mae: (mae / d) as f32,
        quality_brier: (brier / d) as f32,
        log_tokens_mae: (lmae / d) as f32,
        tokens_median_abs_error: tok_err.get(tok_err.len() / 2).copied().unwrap_or(0.0) as f32,
    }
}

/// The winners' out-of-fold figures over the training prompts (each family's rows and models),
/// and those of each model's out-of-fold mean: the validation figures of a head refitted on every
/// prompt it was given.
fn out_of_fold_metrics(all: &Dataset, choices: &[select::Choice], families: &[Family], token_weight: f32, seed: u64) -> (Metrics, Metrics) {
    let (n, m) = (all.n_rows(), all.n_models());
    let (mut q, mut t) = (ndarray::Array2::<f32>::zeros((n, m)), ndarray::Array2::<f32>::zeros((n, m)));
    let (mut bq, mut bt) = (ndarray::Array2::<f32>::zeros((n, m)), ndarray::Array2::<f32>::zeros((n, m)));
    let mut have = ndarray::Array2::<f32>::zeros((n, m));
    for (c, f) in choices.iter().zip(families) {
        let fold = crate::folds(c.rows.len(), select::INNER_FOLDS, seed.wrapping_add(2));
        for k in 0..select::INNER_FOLDS {
            let fit: Vec<usize> = (0..c.rows.len()).filter(|&i| fold[i] != k).map(|i| c.rows[i]).collect();
            let sub = families::columns(all, &fit, &f.models);
            let mq = crate::knn::column_means(sub.quality.view(), sub.mask.view());
            let mt = crate::knn::column_means(sub.log_tokens.view(), sub.mask.view());
            for (i, &r) in c.rows.iter().enumerate().filter(|(i, _)| fold[*i] == k) {
                for (col, &j) in f.models.iter().enumerate() {
                    q[[r, j]] = c.oof.0[[i, col]];
                    t[[r, j]] = c.oof.1[[i, col]];
                    bq[[r, j]] = mq[col];
                    bt[[r, j]] = crate::decode_tokens(mt[col]);
                    have[[r, j]] = 1.0;
                }
            }
        }
    }
    let rows: Vec<usize> = (0..n).filter(|&r| have.row(r).iter().any(|&v| v > 0.0)).collect();
    let mut d = all.select(&rows);
    d.mask = &d.mask * &have.select(ndarray::Axis(0), &rows);
    let pick = |a: &ndarray::Array2<f32>| a.select(ndarray::Axis(0), &rows);
    (metrics_of(&pick(&q), &pick(&t), &d, token_weight), metrics_of(&pick(&bq), &pick(&bt), &d, token_weight))
}

/// Runs the whole job with `encoder`; `quiet` turns progress lines off.
pub fn run(job: &TrainJob, encoder: &Encoder, quiet: bool) -> Result<TrainSummary, JobError> {
    if !(job.val_fraction >= 0.0 && job.val_fraction < 0.9) {
        return Err(JobError::Invalid { field: "val_fraction", limit: "in [0, 0.9)", value: job.val_fraction.to_string() });
    }
    if !(job.early_stop_fraction > 0.0 && job.early_stop_fraction < 0.9) {
        return Err(JobError::Invalid { field: "early_stop_fraction", limit: "in (0, 0.9)", value: job.early_stop_fraction.to_string() });
    }
    if job.ensemble == 0 || job.ensemble > 32 {
        return Err(JobError::Invalid { field: "ensemble", limit: "in 1..=32", value: job.ensemble.to_string() });
    }
    if job.memory_cap < 2 * crate::knn::K_GRID[crate::knn::K_GRID.len() - 1] {
        return Err(JobError::Invalid {
            field: "memory_cap",
            limit: "at least 800 prompts (twice the largest k of the kNN grid)",
            value: job.memory_cap.to_string(),
        });
    }
    let logs = read_logs(&job.data, job.strict)?;
    if !quiet {
        eprintln!(
            "read {} prompts, {} models, {} observations ({:.1}% of pairs), {} malformed lines skipped",
            logs.prompts.len(),
            logs.models.len(),
            logs.observations.len(),
            logs.density() * 100.0,
            logs.skipped_lines
        );
    }
    let t = Instant::now();
    let x = embed_logged_prompts(encoder, &logs.prompts, job.embedding_cache.as_deref(), quiet)?;
    let embed_seconds = t.elapsed().as_secs_f64();
    let all = Dataset::from_logs(&logs, x.view())?;

    let seed = job.train.seed;
    let (train_idx, holdout_idx) = match &job.holdout {
        Some(ids) => {
            let (held, train): (Vec<usize>, Vec<usize>) = (0..logs.prompts.len()).partition(|&i| ids.contains(&logs.prompts[i].id));
            if held.is_empty() || train.len() < 2 {
                return Err(JobError::Invalid {
                    field: "holdout",
                    limit: "at least one held-out and two training prompts",
                    value: format!("{} held out of {}", held.len(), logs.prompts.len()),
                });
            }
            (train, held)
        }
        None if job.val_fraction > 0.0 => split_by_prompt(logs.prompts.len(), job.val_fraction, seed),
        None => ((0..logs.prompts.len()).collect(), Vec::new()),
    };
    let (ipw, with_propensity) = crate::evidence::inverse_propensities(&logs);
    let holdout = all.select(&holdout_idx);

    let t = Instant::now();
    // Everything below is fitted or chosen on training prompts only (`train_idx`); `holdout_idx`
    // is only ever evaluated on.
    let training_ids: HashSet<&str> = train_idx.iter().map(|&i| logs.prompts[i].id.as_str()).collect();
    let files = log_files(&job.data, &logs, &training_ids)?;
    let families = model_families(&files);
    let cx = select::Context {
        job,
        logs: &logs,
        files: &files,
        all: &all,
        train_idx: &train_idx,
        ipw: &ipw,
        propensities: with_propensity > 0,
        encoder,
    };
    let mut choices = Vec::with_capacity(families.len());
    for f in &families {
        let c = select::choose(&cx, f)?;
        if !quiet {
            let best = c.report.candidates.iter().map(|s| s.score).fold(f64::NEG_INFINITY, f64::max);
            let shown = |name: &str| c.report.candidates.iter().find(|s| s.name == name).map_or(f64::NAN, |s| s.score);
            eprintln!(
                "{}: {} candidates by inner {}-fold cross-validation ({}): chose {} ({:.4}; best {:.4}), tokens from {}",
                c.report.files.join(", "),
                c.report.candidates.len(),
                select::INNER_FOLDS,
                c.report.metric,
                c.report.winner,
                shown(&c.report.winner),
                best,
                c.report.tokens
            );
        }
        choices.push(c);
    }
    let fitted = fit::fit(&cx, &families, &choices, job.memory_cap)?;
    let train_seconds = t.elapsed().as_secs_f64();
    let train_data = all.select(&train_idx);
    let tw = job.train.token_loss_weight;
    let (raw_validation, baseline, validation) = if holdout_idx.is_empty() {
        // Fitted on every prompt: the figures are the winners' out-of-fold ones.
        let (v, b) = out_of_fold_metrics(&all, &choices, &families, tw, seed);
        (v, b, v)
    } else {
        (
            evaluate(&fitted.mlp, &holdout, tw),
            baseline_metrics(&train_data, &holdout, tw),
            // The metrics of the head as exported (blends and kNN included).
            shrunk_metrics(&fitted.mlp, &fitted.shrink, &fitted.support, &holdout, tw),
        )
    };
    let evidence: Vec<(String, Option<crate::evidence::ModelEvidence>)> =
        logs.models.iter().cloned().zip(fitted.evidence.iter().cloned()).collect();
    if !quiet {
        let figures = if holdout_idx.is_empty() { "inner cross-validated (out-of-fold)" } else { "held-out" };
        eprintln!(
            "trained in {train_seconds:.1}s on {} prompts; memory {} of {} training prompts; {figures} quality MAE {:.4} (per-model mean {:.4}), Brier {:.4} (per-model mean {:.4})",
            train_idx.len(), fitted.memory.prompts, fitted.memory.of, validation.quality_mae, baseline.quality_mae, validation.quality_brier, baseline.quality_brier
        );
    }
    let producer = [("producer".to_string(), format!("pointsman {}", env!("CARGO_PKG_VERSION")))];
    let bytes = export_with_support(&fitted.mlp, Some(&fitted.support), Some(&fitted.shrink), &producer);
    let digest = sha256_hex(&bytes);
    let file_refs: Vec<FileRef> = job
        .data
        .iter()
        .map(|p| FileRef {
            path: p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            sha256: std::fs::read(p).map(|b| sha256_hex(&b)).unwrap_or_default(),
        })
        .collect();
    let ids = |cols: &[usize]| cols.iter().map(|&j| logs.models[j].clone()).collect::<Vec<_>>();
    let mut first_unit = 0;
    let mut family_specs: Vec<FamilySpec> = families
        .iter()
        .zip(&fitted.families)
        .zip(&choices)
        .map(|((f, fitted), c)| {
            let spec = FamilySpec {
                files: f.files.iter().map(|p| p.display().to_string()).collect(),
                models: ids(&f.models),
                first_unit,
                units: fitted.kind.units(),
                head: fitted.kind.clone(),
                quality_prior: if matches!(c.quality, select::QualitySource::Head(_)) {
                    QualityPrior::GlobalMean
                } else {
                    QualityPrior::LocalMean
                },
                predictor: c.report.winner.clone(),
                tokens: c.report.tokens.clone(),
            };
            first_unit += spec.units;
            spec
        })
        .collect();
    // A model observed on no training prompt belongs to no family: its column is a constant,
    // and the manifest lists it as a family of its own with no units.
    let orphans: Vec<usize> = (0..logs.models.len()).filter(|j| !families.iter().any(|f| f.models.contains(j))).collect();
    if !orphans.is_empty() {
        family_specs.push(FamilySpec {
            files: Vec::new(),
            models: ids(&orphans),
            first_unit,
            units: 0,
            head: FamilyKind::Unobserved,
            quality_prior: QualityPrior::GlobalMean,
            predictor: "none: not observed on any training prompt".into(),
            tokens: "none".into(),
        });
    }
    let counts: Vec<usize> = (0..logs.models.len()).map(|j| train_data.mask.column(j).iter().filter(|&&v| v > 0.0).count()).collect();
    let shrink = &fitted.shrink;
    let manifest = HeadManifest {
        format: HEAD_FORMAT.into(),
        head_id: format!("{}-{}", job.name, &digest[..8]),
        graph: "head.onnx".into(),
        graph_sha256: digest,
        encoder: EncoderRef { id: encoder.id().to_string(), dimension: encoder.dimension() },
        models: logs.models.clone(),
        architecture: Architecture { hidden_units: fitted.mlp.hidden_dim(), families: family_specs, added: Vec::new() },
        shrinkage: Shrinkage {
            quality_weight: shrink.weight.to_vec(),
            token_weight: shrink.token_weight.to_vec(),
            local_prior: shrink.local.as_ref().map(crate::LocalPrior::spec),
        },
        support: fitted.support.index(),
        trained_on: TrainedOn {
            files: file_refs,
            prompts: logs.prompts.len(),
            training_prompts: train_idx.len(),
            observations: logs.observations.len(),
            density: logs.density(),
            skipped_lines: logs.skipped_lines,
            training_observations_per_model: logs.models.iter().cloned().zip(counts).collect(),
        },
        validation: Validation {
            split: if job.holdout.is_some() {
                "by prompt, given (a cross-validation fold); held-out prompts never used for any training choice".into()
            } else if holdout_idx.is_empty() {
                "none: the head is fitted on every prompt it was given; figures are the chosen predictor's out-of-fold ones from the inner cross-validation".into()
            } else {
                "by prompt; held-out prompts never used for any training choice".into()
            },
            fraction: holdout_idx.len() as f64 / logs.prompts.len().max(1) as f64,
            prompts: holdout_idx.len(),
            prompt_ids: holdout_idx.iter().map(|&i| logs.prompts[i].id.clone()).collect(),
            head: held_out(&validation),
            head_before_shrinkage: held_out(&raw_validation),
            baseline_per_model_mean: held_out(&baseline),
        },
        training: Training {
            method: format!("{:?}", job.method).to_lowercase(),
            seed: job.train.seed,
            fit_prompts: train_idx.len(),
            early_stop_prompts: fitted.early_stop_prompts,
            mlp: MlpSettings {
                hidden: job.train.hidden,
                ensemble: job.ensemble,
                epochs_max: job.train.epochs,
                batch_size: job.train.batch_size,
                learning_rate: job.train.learning_rate,
                weight_decay: job.train.weight_decay,
                token_loss_weight: job.train.token_loss_weight,
                patience: job.train.patience,
            },
            seconds: train_seconds,
            selection: Selection {
                rule: format!(
                    "per model family: the first candidate (kNN from the smoothest, factor heads from the lowest rank, blends from the most kNN, then the MLP) that the best inner cross-validated score beats by no more than {} (on logs without a full matrix: or the standard error of their paired per-fold difference, if larger)",
                    select::GAP_TOLERANCE
                ),
                folds: select::INNER_FOLDS,
                families: choices.iter().map(|c| c.report.clone()).collect(),
            },
            memory: fitted.memory.clone(),
        },
        created_at: now_rfc3339(),
    };
    // What is written is what the server will accept.
    manifest.validate().map_err(|e| JobError::Invalid { field: "manifest", limit: "consistent (a bug if not)", value: e.0 })?;
    std::fs::create_dir_all(&job.out_dir).map_err(|source| JobError::Write { path: job.out_dir.clone(), source })?;
    write_atomically(&job.out_dir.join("head.onnx"), &bytes)?;
    write_atomically(&job.out_dir.join("manifest.json"), manifest.to_json().as_bytes())?;
    Ok(TrainSummary {
        manifest,
        validation,
        baseline,
        embed_seconds,
        train_seconds,
        skipped_lines: logs.skipped_lines,
        problems: logs.problems.clone(),
        evidence,
        unobserved_prior: fitted.unobserved_prior,
        with_propensity,
        observations: logs.observations.len(),
    })
}

/// `train`'s report of the evidence: how much of the log was usable, and per model how many
/// observations it had and what the trainer did with them.
pub fn evidence_report(
    evidence: &[(String, Option<crate::evidence::ModelEvidence>)],
    unobserved_prior: f32,
    observations: usize,
    with_propensity: usize,
    skipped_lines: usize,
) -> Vec<String> {
    let used: usize = evidence.iter().filter_map(|(_, e)| e.as_ref()).filter(|e| e.local).map(|e| e.observations).sum();
    let guarded: Vec<&(String, Option<crate::evidence::ModelEvidence>)> =
        evidence.iter().filter(|(_, e)| e.as_ref().is_some_and(|e| !e.local)).collect();
    let unobserved = evidence.iter().filter(|(_, e)| e.as_ref().is_none_or(|e| e.observations == 0)).count();
    let none = match unobserved {
        0 => "0 none".to_string(),
        n => format!("{n} none (predicted at {unobserved_prior:.3})"),
    };
    let mut lines = vec![format!(
        "usable: {used} of {observations} observations ({:.1}%) trained a local estimate or head; {} models had too little evidence (< {} effective observations: prior only), {none}; {with_propensity} observations carried a propensity; {skipped_lines} malformed lines skipped",
        used as f64 / observations.max(1) as f64 * 100.0,
        guarded.len(),
        crate::evidence::MIN_EVIDENCE,
    )];
    for (model, e) in evidence {
        lines.push(match e {
            Some(e) => format!("  {model}: {}", e.describe()),
            None => format!("  {model}: not observed on any training prompt: predicted at {unobserved_prior:.3}"),
        });
    }
    lines
}
