//! One `switchyard train` run, end to end: read logs, embed each prompt with the serving encoder
//! (batch of one, exactly as at serving time), hold out a validation split by prompt, train with
//! early stopping on a further inner split, export ONNX, and write `head.onnx` plus its manifest.
//!
//! The held-out split never influences training (not even the stopping epoch), so the metrics
//! written to the manifest are an honest estimate on unseen prompts.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use ndarray::Array2;
use serde_json::json;

use super::{baseline_metrics, evaluate, export_with_support, read_logs, Support, DEFAULT_TAU, split_by_prompt, train, Dataset, LearningError, Metrics, TrainConfig};
use crate::{
    encoder::{Encoder, EncoderError},
    predictor::{sha256_hex, EncoderRef, HeadManifest, HEAD_FORMAT},
};

/// What to train and where to write it.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Routing log files (JSON Lines, gzip or plain).
    pub data: Vec<PathBuf>,
    /// Output folder for `head.onnx` and `manifest.json`.
    pub out_dir: PathBuf,
    /// Share of prompts held out for validation, by prompt.
    pub val_fraction: f64,
    /// Share of the training prompts used for early stopping.
    pub early_stop_fraction: f64,
    /// Fail on the first malformed line instead of skipping it.
    pub strict: bool,
    /// Name prefix of the head id.
    pub name: String,
    /// Optimiser settings (the seed also drives the splits).
    pub train: TrainConfig,
}

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Reading or training failed.
    #[error(transparent)]
    Learning(#[from] LearningError),
    /// Embedding failed.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// Writing the head failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The settings are inconsistent.
    #[error("`{field}` must be {limit}. Given: {value}")]
    Invalid {
        /// The flag.
        field: &'static str,
        /// The rule.
        limit: &'static str,
        /// The value given.
        value: String,
    },
}

impl JobError {
    /// Stable snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            JobError::Learning(e) => e.label(),
            JobError::Encoder(e) => e.label(),
            JobError::Write { .. } => "train_write",
            JobError::Invalid { .. } => "train_invalid",
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
    /// First problems found in the logs.
    pub problems: Vec<String>,
}

fn metrics_json(m: &Metrics) -> serde_json::Value {
    json!({
        "observed_pairs": m.observed,
        "loss": m.loss,
        "quality_mae": m.quality_mae,
        "quality_brier": m.quality_brier,
        "log_tokens_mae": m.log_tokens_mae,
        "tokens_median_abs_error": m.tokens_median_abs_error,
    })
}

/// Current UTC time as RFC 3339 (no external date crate needed for one timestamp).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (proleptic Gregorian), Howard Hinnant's published algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), JobError> {
    let err = |source| JobError::Write { path: path.to_path_buf(), source };
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Embeds prompts with progress on stderr every ~10%.
pub fn embed_prompts(encoder: &Encoder, texts: &[&str], quiet: bool) -> Result<Array2<f32>, EncoderError> {
    let n = texts.len();
    let step = (n / 10).max(1);
    let start = Instant::now();
    let rows = encoder.embed_many(texts, &|done| {
        if !quiet && (done % step == 0 || done == n) {
            eprintln!("embedding prompts: {done}/{n} ({:.1}s)", start.elapsed().as_secs_f64());
        }
    })?;
    let d = encoder.dimension();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Ok(Array2::from_shape_vec((n, d), flat).expect("every embedding has the encoder's dimension. This is a bug."))
}

/// Runs the whole job with `encoder`; `quiet` turns progress lines off.
pub fn run(job: &TrainJob, encoder: &Encoder, quiet: bool) -> Result<TrainSummary, JobError> {
    for (field, v) in [("val_fraction", job.val_fraction), ("early_stop_fraction", job.early_stop_fraction)] {
        if !(v > 0.0 && v < 0.9) {
            return Err(JobError::Invalid { field, limit: "in (0, 0.9)", value: v.to_string() });
        }
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
    let texts: Vec<&str> = logs.prompts.iter().map(|p| p.text.as_str()).collect();
    let t = Instant::now();
    let x = embed_prompts(encoder, &texts, quiet)?;
    let embed_seconds = t.elapsed().as_secs_f64();
    let all = Dataset::from_logs(&logs, x.view())?;

    let seed = job.train.seed;
    let (train_idx, holdout_idx) = split_by_prompt(logs.prompts.len(), job.val_fraction, seed);
    let (inner_fit, inner_stop) = split_by_prompt(train_idx.len(), job.early_stop_fraction, seed.wrapping_add(1));
    let fit_rows: Vec<usize> = inner_fit.iter().map(|&i| train_idx[i]).collect();
    let stop_rows: Vec<usize> = inner_stop.iter().map(|&i| train_idx[i]).collect();
    let (fit, stop, holdout) = (all.select(&fit_rows), all.select(&stop_rows), all.select(&holdout_idx));

    let t = Instant::now();
    let (mlp, report) = train(&fit, &stop, &job.train)?;
    let train_seconds = t.elapsed().as_secs_f64();
    let validation = evaluate(&mlp, &holdout, job.train.token_loss_weight);
    let baseline = baseline_metrics(&fit, &holdout, job.train.token_loss_weight);
    if !quiet {
        eprintln!(
            "trained {} epochs (best {}) in {train_seconds:.1}s; held-out quality MAE {:.4} (baseline {:.4}), Brier {:.4} (baseline {:.4})",
            report.epochs_run, report.best_epoch, validation.quality_mae, baseline.quality_mae, validation.quality_brier, baseline.quality_brier
        );
    }

    // Domain of competence over every training prompt (never the held-out ones).
    let support = Support::new(all.x.select(ndarray::Axis(0), &train_idx).view(), all.mask.select(ndarray::Axis(0), &train_idx).view(), DEFAULT_TAU);
    let producer = [("producer".to_string(), format!("switchyard {}", env!("CARGO_PKG_VERSION")))];
    let bytes = export_with_support(&mlp, Some(&support), &producer);
    let digest = sha256_hex(&bytes);
    let files: Vec<_> = job
        .data
        .iter()
        .map(|p| {
            let sha = std::fs::read(p).map(|b| sha256_hex(&b)).unwrap_or_default();
            json!({ "path": p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(), "sha256": sha })
        })
        .collect();
    let counts = logs.model_counts();
    let manifest = HeadManifest {
        format: HEAD_FORMAT.into(),
        head_id: format!("{}-{}", job.name, &digest[..8]),
        graph: "head.onnx".into(),
        graph_sha256: digest,
        encoder: EncoderRef { id: encoder.id().to_string(), dimension: encoder.dimension() },
        models: logs.models.clone(),
        trained_on: json!({
            "files": files,
            "prompts": logs.prompts.len(),
            "observations": logs.observations.len(),
            "density": logs.density(),
            "skipped_lines": logs.skipped_lines,
            "observations_per_model": logs.models.iter().zip(&counts).map(|(m, c)| (m.clone(), json!(c))).collect::<serde_json::Map<_, _>>(),
        }),
        validation: json!({
            "split": "by prompt; held-out prompts never used for fitting or early stopping",
            "fraction": job.val_fraction,
            "prompts": holdout_idx.len(),
            "prompt_ids": holdout_idx.iter().map(|&i| logs.prompts[i].id.as_str()).collect::<Vec<_>>(),
            "head": metrics_json(&validation),
            "baseline_per_model_mean": metrics_json(&baseline),
        }),
        training: json!({
            "architecture": format!("embeddings[{}] -> relu({}) -> sigmoid quality[{m}], exp-1 tokens[{m}]; neighbour support[{m}]", encoder.dimension(), job.train.hidden, m = logs.models.len()),
            "hidden": job.train.hidden,
            "epochs_max": job.train.epochs,
            "epochs_run": report.epochs_run,
            "best_epoch": report.best_epoch,
            "batch_size": job.train.batch_size,
            "learning_rate": job.train.learning_rate,
            "weight_decay": job.train.weight_decay,
            "token_loss_weight": job.train.token_loss_weight,
            "patience": job.train.patience,
            "seed": job.train.seed,
            "fit_prompts": fit_rows.len(),
            "early_stop_prompts": stop_rows.len(),
            "seconds": train_seconds,
            "support": { "tau": DEFAULT_TAU, "prompts": train_idx.len() },
        }),
        created_at: now_rfc3339(),
    };
    std::fs::create_dir_all(&job.out_dir).map_err(|source| JobError::Write { path: job.out_dir.clone(), source })?;
    write_atomically(&job.out_dir.join("head.onnx"), &bytes)?;
    let text = serde_json::to_string_pretty(&manifest).expect("manifest serialises. This is a bug.");
    write_atomically(&job.out_dir.join("manifest.json"), text.as_bytes())?;
    Ok(TrainSummary {
        manifest,
        validation,
        baseline,
        embed_seconds,
        train_seconds,
        skipped_lines: logs.skipped_lines,
        problems: logs.problems.clone(),
    })
}
