//! Which prompts of a log file `pointsman eval` scores: the head's held-out prompts, or with
//! `--all-prompts` every prompt of a log the head never saw. A file the head was trained on is
//! recognised by its SHA-256 in the manifest (`trained_on.files`), whatever it is called now.
use std::{collections::HashSet, path::Path};

use super::{EvalError, MIN_EVAL_PROMPTS};
use crate::{
    learning::RoutingLogs,
    predictor::{manifest::FileRef, sha256_hex, HeadManifest},
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
