//! One `pointsman train` run, end to end: read logs, embed each prompt with the serving encoder
//! (batch of one, exactly as at serving time), hold out a validation split by prompt, train with
//! early stopping on a further inner split, export ONNX, and write `head.onnx` plus its manifest.
//!
//! The held-out split never influences training (not even the stopping epoch), so the metrics
//! written to the manifest are an honest estimate on unseen prompts.
use std::{
    collections::{HashMap, HashSet},
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use ndarray::Array2;

mod choose;

pub use choose::DEFAULT_SHRINK;
use choose::{choose_local, choose_shrink, LOCAL_KAPPA, LOCAL_NEIGHBOURS};

use super::{
    baseline_metrics, evaluate, export_with_support, read_logs, split_by_prompt, train, Dataset, LearningError, Metrics, Mlp, Shrink,
    Support, TrainConfig, DEFAULT_NEIGHBOURS,
};
use crate::{
    encoder::{Encoder, EncoderError},
    predictor::{
        manifest::{
            Architecture, FamilyKind, FamilySpec, FileChoice, FileRef, HeldOutMetrics, LocalPriorSpec, MlpSettings, QualityPrior,
            Shrinkage, SupportIndex, TrainedOn, Training, Validation,
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
    /// The catalog (prices) used to choose the shrinkage on full-matrix early-stopping prompts;
    /// without it the shrinkage is [`DEFAULT_SHRINK`].
    pub catalog: Option<crate::catalog::Catalog>,
    /// Price of one unit of quality, as the server will route (`routing.cost_scale_usd`).
    pub cost_scale_usd: f64,
    /// A fixed shrinkage weight instead of choosing one.
    pub shrink: Option<f32>,
    /// Folder of the on-disk embedding cache; `None` embeds everything.
    pub embedding_cache: Option<PathBuf>,
    /// MLPs averaged per model family (different seeds).
    pub ensemble: usize,
    /// Factor head, MLP ensemble, or the factor head where the logs are dense enough.
    pub method: HeadMethod,
    /// The prompts (by id) to hold out instead of a random `val_fraction` of them: one fold of a
    /// cross-validation (`pointsman train --cv`).
    pub holdout: Option<std::collections::HashSet<String>>,
}

/// Log files whose models overlap, and those models: one head is trained per family.
#[derive(Debug, Clone)]
pub struct Family {
    /// The files.
    pub files: Vec<PathBuf>,
    /// Indices into `logs.models`.
    pub models: Vec<usize>,
}

/// One of the job's log files, read once: which prompts and models it holds.
pub struct LogFile {
    /// The file.
    pub path: PathBuf,
    /// Its prompts' ids.
    pub prompt_ids: std::collections::HashSet<String>,
    /// Its models, as indices into the merged logs' `models`.
    pub models: std::collections::BTreeSet<usize>,
}

/// Reads each of the job's files once for what the families, the shrinkage and the local prior
/// need to know of it: its prompts, and the models observed on its *training* prompts
/// (`training` holds their ids), so a model seen only on held-out prompts shapes no family.
pub fn log_files(paths: &[PathBuf], logs: &super::RoutingLogs, training: &HashSet<&str>) -> Result<Vec<LogFile>, JobError> {
    let index: HashMap<&str, usize> = logs.models.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    paths
        .iter()
        .map(|path| {
            let file = read_logs(std::slice::from_ref(path), false)?;
            Ok(LogFile {
                path: path.clone(),
                models: file
                    .observations
                    .iter()
                    .filter(|o| training.contains(file.prompts[o.prompt].id.as_str()))
                    .filter_map(|o| index.get(file.models[o.model].as_str()).copied())
                    .collect(),
                prompt_ids: file.prompts.into_iter().map(|p| p.id).collect(),
            })
        })
        .collect()
}

/// Groups the job's files into families: files that share a model belong together (daily logs of
/// one gateway form one family); files with disjoint models (two benchmarks, two products) are
/// trained apart, since their scores need not share a scale and a shared hidden layer lets the
/// larger one crowd out the smaller (measured on the shared data: -17% of the gap on alpaca_eval2
/// jointly, +3% alone).
pub fn model_families(files: &[LogFile]) -> Vec<Family> {
    let mut sets: Vec<(Vec<PathBuf>, std::collections::BTreeSet<usize>)> = Vec::new();
    for file in files {
        let (mut paths, mut merged) = (vec![file.path.clone()], file.models.clone());
        sets.retain(|(f, m)| {
            if m.is_disjoint(&merged) {
                true
            } else {
                paths.extend(f.iter().cloned());
                merged.extend(m.iter().copied());
                false
            }
        });
        sets.push((paths, merged));
    }
    sets.into_iter().map(|(files, models)| Family { files, models: models.into_iter().collect() }).collect()
}

fn columns(d: &Dataset, rows: &[usize], cols: &[usize]) -> Dataset {
    let pick = |a: &Array2<f32>| a.select(ndarray::Axis(0), rows).select(ndarray::Axis(1), cols);
    Dataset { x: d.x.select(ndarray::Axis(0), rows), quality: pick(&d.quality), log_tokens: pick(&d.log_tokens), mask: pick(&d.mask) }
}

/// Which kind of head each family gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadMethod {
    /// The factor head where the family's logs are dense enough (at least 3 models observed on
    /// 95% of its prompts), else the MLP ensemble.
    #[default]
    Auto,
    /// Always the MLP ensemble.
    Mlp,
    /// Always the factor head (fails on sparse logs).
    LowRank,
}

impl std::str::FromStr for HeadMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "mlp" => Ok(Self::Mlp),
            "lowrank" => Ok(Self::LowRank),
            other => Err(format!("method must be `auto`, `mlp` or `lowrank`. Given: `{other}`")),
        }
    }
}

/// What was trained for one family.
#[derive(Debug, Clone)]
pub struct FamilyReport {
    /// "lowrank" or "mlp".
    pub method: &'static str,
    /// What its part of the graph is, as the manifest describes it.
    pub kind: FamilyKind,
    /// The (first) member's training report; for the factor head, epochs are 0.
    pub train: super::TrainReport,
}

/// Trains one head per family and merges them into one block-structured MLP: hidden units of a
/// family feed only that family's outputs. A family gets the factor head (`lowrank`, fitted on
/// all of `fit` and `stop`: it needs no early stopping) or `ensemble` MLPs (seeds `seed`,
/// `seed + 1`, ...) whose logits (quality) and log tokens are averaged, which is exactly an MLP
/// whose output weights are divided by the ensemble size.
fn train_families(
    families: &[Family],
    fit: &Dataset,
    stop: &Dataset,
    cfg: &super::TrainConfig,
    ensemble: usize,
    method: HeadMethod,
) -> Result<(Mlp, Vec<FamilyReport>), JobError> {
    let observed =
        |d: &Dataset, cols: &[usize]| -> Vec<usize> { (0..d.n_rows()).filter(|&r| cols.iter().any(|&c| d.mask[[r, c]] > 0.0)).collect() };
    let (dim, m) = (fit.x.ncols(), fit.quality.ncols());
    let n = ensemble.max(1);
    let mut parts: Vec<(&[usize], Mlp, f32)> = Vec::new();
    let mut reports = Vec::new();
    for f in families {
        let (fr, sr) = (observed(fit, &f.models), observed(stop, &f.models));
        let (fd, sd) = (columns(fit, &fr, &f.models), columns(stop, &sr, &f.models));
        if method != HeadMethod::Mlp {
            let t = Instant::now();
            let both = Dataset {
                x: ndarray::concatenate![ndarray::Axis(0), fd.x, sd.x],
                quality: ndarray::concatenate![ndarray::Axis(0), fd.quality, sd.quality],
                log_tokens: ndarray::concatenate![ndarray::Axis(0), fd.log_tokens, sd.log_tokens],
                mask: ndarray::concatenate![ndarray::Axis(0), fd.mask, sd.mask],
            };
            let lr_cfg = super::lowrank::LowRankConfig { seed: cfg.seed, ..Default::default() };
            match super::lowrank::fit(&both, &lr_cfg)? {
                Some(head) => {
                    let report = super::TrainReport {
                        epochs_run: 0,
                        best_epoch: 0,
                        train_loss: Vec::new(),
                        val_loss: Vec::new(),
                        validation: evaluate(&head, &sd, cfg.token_loss_weight),
                        baseline: baseline_metrics(&fd, &sd, cfg.token_loss_weight),
                        seconds: t.elapsed().as_secs_f64(),
                    };
                    // The ranks the fit used: capped by the models dense enough to shape the factors.
                    let dense = super::lowrank::dense_models(&both, lr_cfg.min_coverage).len();
                    let kind = FamilyKind::FactorHead {
                        rank_quality: lr_cfg.rank_quality.min(dense).max(1),
                        rank_tokens: lr_cfg.rank_tokens.min(dense).max(1),
                        ridge_quality: lr_cfg.ridge_quality,
                        ridge_tokens: lr_cfg.ridge_tokens,
                        folds: lr_cfg.folds,
                        link_l2: lr_cfg.link_l2,
                        min_coverage: lr_cfg.min_coverage,
                    };
                    parts.push((&f.models, head, 1.0));
                    reports.push(FamilyReport { method: "lowrank", kind, train: report });
                    continue;
                }
                None if method == HeadMethod::LowRank => {
                    return Err(JobError::Invalid {
                        field: "method",
                        limit: "`lowrank` only for logs with at least 3 models observed on 95% of a family's prompts (use `auto` or `mlp`)",
                        value: format!("lowrank for {}", f.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")),
                    })
                }
                None => {}
            }
        }
        for member in 0..n {
            let member_cfg = super::TrainConfig { seed: cfg.seed.wrapping_add(member as u64), ..cfg.clone() };
            let (mlp, report) = train(&fd, &sd, &member_cfg)?;
            parts.push((&f.models, mlp, 1.0 / n as f32));
            if member == 0 {
                let kind = FamilyKind::MlpEnsemble {
                    hidden: cfg.hidden,
                    members: n,
                    epochs_run: report.epochs_run,
                    best_epoch: report.best_epoch,
                };
                reports.push(FamilyReport { method: "mlp", kind, train: report });
            }
        }
    }
    let h: usize = parts.iter().map(|(_, p, _)| p.hidden_dim()).sum();
    let (mut w1, mut b1) = (Array2::zeros((dim, h)), ndarray::Array1::zeros(h));
    let (mut wq, mut wt) = (Array2::zeros((h, m)), Array2::zeros((h, m)));
    let (mut bq, mut bt) = (ndarray::Array1::zeros(m), ndarray::Array1::zeros(m));
    let mut off = 0;
    for (cols, p, share) in &parts {
        let (hp, share) = (p.hidden_dim(), *share);
        w1.slice_mut(ndarray::s![.., off..off + hp]).assign(&p.w1());
        b1.slice_mut(ndarray::s![off..off + hp]).assign(&p.b1());
        for (k, &c) in cols.iter().enumerate() {
            wq.slice_mut(ndarray::s![off..off + hp, c]).assign(&p.wq().column(k).mapv(|v| v * share));
            wt.slice_mut(ndarray::s![off..off + hp, c]).assign(&p.wt().column(k).mapv(|v| v * share));
            bq[c] += p.bq()[k] * share;
            bt[c] += p.bt()[k] * share;
        }
        off += hp;
    }
    Ok((Mlp::from_parts(w1, b1, wq, bq, wt, bt)?, reports))
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
    let (mut n, mut bce, mut mae, mut brier, mut lmae) = (0usize, 0f64, 0f64, 0f64, 0f64);
    let mut tok_err = Vec::new();
    for ((((&m, &p), &y), &pt), &yl) in data.mask.iter().zip(&q).zip(&data.quality).zip(&t).zip(&data.log_tokens) {
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
        .zip(&t)
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

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), JobError> {
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

/// Embeds with an on-disk cache: cached texts are read back, the rest embedded and appended.
/// A cache that cannot be opened or written is reported and skipped, never fatal.
pub fn embed_prompts_cached(
    encoder: &Encoder,
    texts: &[&str],
    cache_dir: Option<&Path>,
    quiet: bool,
) -> Result<(Array2<f32>, usize), EncoderError> {
    let cache = cache_dir.and_then(|dir| match super::embed_cache::EmbeddingCache::open(dir, encoder.id(), encoder.dimension()) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "embedding cache unavailable; embedding everything");
            None
        }
    });
    let Some(mut cache) = cache else {
        return Ok((embed_prompts(encoder, texts, quiet)?, 0));
    };
    let misses: Vec<&str> = texts.iter().copied().filter(|t| cache.get(t).is_none()).collect();
    let hits = texts.len() - misses.len();
    if !quiet {
        eprintln!("embedding cache: {hits} of {} prompts cached, {} to embed", texts.len(), misses.len());
    }
    if !misses.is_empty() {
        let fresh = embed_prompts(encoder, &misses, quiet)?;
        if let Err(e) = cache.insert_many(
            misses.iter().copied().zip(fresh.rows().into_iter().map(|r| r.to_slice().expect("standard layout. This is a bug."))),
        ) {
            tracing::warn!(error = %e, "could not write the embedding cache");
        }
    }
    let d = encoder.dimension();
    let mut x = Array2::zeros((texts.len(), d));
    for (i, t) in texts.iter().enumerate() {
        let v = cache.get(t).expect("every text is cached now. This is a bug.");
        x.row_mut(i).assign(&ndarray::ArrayView1::from(v));
    }
    Ok((x, hits))
}

/// Embeds the prompts of a log: stored embeddings (decision logs kept without prompt text) are
/// used as they are when they come from this encoder; the rest go through the cached encoder.
pub fn embed_logged_prompts(
    encoder: &Encoder,
    prompts: &[super::PromptEntry],
    cache_dir: Option<&Path>,
    quiet: bool,
) -> Result<Array2<f32>, JobError> {
    let d = encoder.dimension();
    for p in prompts {
        if let Some((enc, v)) = &p.embedding {
            if enc != encoder.id() || v.len() != d {
                return Err(JobError::Invalid {
                    field: "data",
                    limit: "stored embeddings from the training encoder",
                    value: format!(
                        "prompt {} has a {}-dimensional embedding from `{enc}`, the encoder is `{}` ({d})",
                        p.id,
                        v.len(),
                        encoder.id()
                    ),
                });
            }
        }
    }
    let texts: Vec<&str> = prompts.iter().filter(|p| p.embedding.is_none()).map(|p| p.text.as_str()).collect();
    let (embedded, _cached) = embed_prompts_cached(encoder, &texts, cache_dir, quiet)?;
    let mut x = Array2::<f32>::zeros((prompts.len(), d));
    let mut next = 0;
    for (i, p) in prompts.iter().enumerate() {
        match &p.embedding {
            Some((_, v)) => x.row_mut(i).assign(&ndarray::ArrayView1::from(v.as_slice())),
            None => {
                x.row_mut(i).assign(&embedded.row(next));
                next += 1;
            }
        }
    }
    Ok(x)
}

/// Runs the whole job with `encoder`; `quiet` turns progress lines off.
pub fn run(job: &TrainJob, encoder: &Encoder, quiet: bool) -> Result<TrainSummary, JobError> {
    for (field, v) in [("val_fraction", job.val_fraction), ("early_stop_fraction", job.early_stop_fraction)] {
        if !(v > 0.0 && v < 0.9) {
            return Err(JobError::Invalid { field, limit: "in (0, 0.9)", value: v.to_string() });
        }
    }
    if let Some(a) = job.shrink {
        if !(0.0..=1.0).contains(&a) {
            return Err(JobError::Invalid { field: "shrink", limit: "in [0, 1]", value: a.to_string() });
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
        None => split_by_prompt(logs.prompts.len(), job.val_fraction, seed),
    };
    let (inner_fit, inner_stop) = split_by_prompt(train_idx.len(), job.early_stop_fraction, seed.wrapping_add(1));
    let fit_rows: Vec<usize> = inner_fit.iter().map(|&i| train_idx[i]).collect();
    let stop_rows: Vec<usize> = inner_stop.iter().map(|&i| train_idx[i]).collect();
    let (fit, stop, holdout) = (all.select(&fit_rows), all.select(&stop_rows), all.select(&holdout_idx));

    let t = Instant::now();
    // Everything below is fitted or chosen on training prompts only: `train_idx` (and its
    // split into `fit_rows` and `stop_rows`); `holdout_idx` is only ever evaluated on.
    let training_ids: HashSet<&str> = train_idx.iter().map(|&i| logs.prompts[i].id.as_str()).collect();
    let files = log_files(&job.data, &logs, &training_ids)?;
    let families = model_families(&files);
    let (mlp, reports) = train_families(&families, &fit, &stop, &job.train, job.ensemble, job.method)?;
    let report = &reports[0].train;
    let train_seconds = t.elapsed().as_secs_f64();
    let raw_validation = evaluate(&mlp, &holdout, job.train.token_loss_weight);
    let baseline = baseline_metrics(&fit, &holdout, job.train.token_loss_weight);

    // Domain of competence over every training prompt (never the held-out ones).
    let train_data = all.select(&train_idx);
    let support = Support::new(train_data.x.view(), train_data.mask.view(), DEFAULT_NEIGHBOURS);
    // The per-model means the graph shrinks towards: the fitted prompts' (as the MLPs' own).
    let priors = Shrink::priors(&fit.quality, &fit.log_tokens, &fit.mask, 1.0);
    let mlp_models: Vec<usize> =
        families.iter().zip(&reports).filter(|(_, r)| r.method == "mlp").flat_map(|(f, _)| f.models.iter().copied()).collect();
    let (mut shrink_weight, shrink_choice) = choose_shrink(job, &logs, &files, &all, &stop_rows, &mlp_models, &mlp, &priors, encoder)?;
    // The factor head was fitted on the early-stopping prompts too (choosing its shrinkage there
    // would be in-sample) and is calibrated per model already: its quality is weighed against
    // the local prior instead (chosen by an inner cross-validation), its tokens are its own.
    let mut token_weight = shrink_weight.clone();
    let mut local_models = Vec::new();
    let mut local_prior_choice = None;
    let factor_families: Vec<&Family> = families.iter().zip(&reports).filter(|(_, r)| r.method == "lowrank").map(|(f, _)| f).collect();
    if job.shrink.is_none() && !factor_families.is_empty() {
        let (local_weights, local_choice) = choose_local(job, &logs, &files, &all, &train_idx, &factor_families, encoder)?;
        for f in &factor_families {
            for &j in &f.models {
                shrink_weight[j] = local_weights[j].unwrap_or(1.0);
                token_weight[j] = 1.0;
                local_models.push(j);
            }
        }
        local_prior_choice = Some(local_choice);
    }
    // Its memory is the support index's keys: every training prompt, in the same order.
    let local = local_models
        .iter()
        .any(|&j| shrink_weight[j] < 1.0)
        .then(|| super::LocalPrior::new(&train_data.quality, &train_data.mask, &local_models, LOCAL_NEIGHBOURS, LOCAL_KAPPA));
    let shrink = Shrink { weight: shrink_weight.clone(), token_weight, local, ..priors };
    // The metrics of the head as exported (shrinkage included).
    let validation = shrunk_metrics(&mlp, &shrink, &support, &holdout, job.train.token_loss_weight);
    if !quiet {
        let describe = |files: &[FileChoice]| files.iter().map(|f| format!("{} -> {}", f.file, f.weight)).collect::<Vec<_>>().join(", ");
        if reports.iter().any(|r| r.method == "mlp") {
            eprintln!(
                "MLP families, shrinkage towards each model's mean ({}): {}",
                shrink_choice.chosen,
                if shrink_choice.files.is_empty() { shrink_choice.other_models.to_string() } else { describe(&shrink_choice.files) }
            );
        }
        if let Some(c) = local_prior_choice.as_ref().filter(|c| !c.files.is_empty()) {
            eprintln!(
                "factor families, weight of the factor head against the local prior (inner 5-fold cross-validation): {}",
                describe(&c.files)
            );
        }
        let methods: Vec<&str> = reports.iter().map(|r| r.method).collect();
        eprintln!(
            "trained ({}) in {train_seconds:.1}s; first MLP family: {} epochs (best {}); held-out quality MAE {:.4} (baseline {:.4}), Brier {:.4} (baseline {:.4})",
            methods.join(", "), report.epochs_run, report.best_epoch, validation.quality_mae, baseline.quality_mae, validation.quality_brier, baseline.quality_brier
        );
    }
    let producer = [("producer".to_string(), format!("pointsman {}", env!("CARGO_PKG_VERSION")))];
    let bytes = export_with_support(&mlp, Some(&support), Some(&shrink), &producer);
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
    let family_specs: Vec<FamilySpec> = families
        .iter()
        .zip(&reports)
        .map(|(f, r)| {
            let spec = FamilySpec {
                files: f.files.iter().map(|p| p.display().to_string()).collect(),
                models: ids(&f.models),
                first_unit,
                units: r.kind.units(),
                head: r.kind.clone(),
                quality_prior: if r.method == "lowrank" && shrink.local.is_some() {
                    QualityPrior::LocalMean
                } else {
                    QualityPrior::GlobalMean
                },
            };
            first_unit += spec.units;
            spec
        })
        .collect();
    // A model observed on no training prompt belongs to no family: its column is a constant,
    // and the manifest lists it as a family of its own with no units.
    let orphans: Vec<usize> = (0..logs.models.len()).filter(|j| !families.iter().any(|f| f.models.contains(j))).collect();
    let mut family_specs = family_specs;
    if !orphans.is_empty() {
        family_specs.push(FamilySpec {
            files: Vec::new(),
            models: ids(&orphans),
            first_unit,
            units: 0,
            head: FamilyKind::Unobserved,
            quality_prior: QualityPrior::GlobalMean,
        });
    }
    let counts: Vec<usize> = (0..logs.models.len()).map(|j| train_data.mask.column(j).iter().filter(|&&v| v > 0.0).count()).collect();
    let manifest = HeadManifest {
        format: HEAD_FORMAT.into(),
        head_id: format!("{}-{}", job.name, &digest[..8]),
        graph: "head.onnx".into(),
        graph_sha256: digest,
        encoder: EncoderRef { id: encoder.id().to_string(), dimension: encoder.dimension() },
        models: logs.models.clone(),
        architecture: Architecture { hidden_units: mlp.hidden_dim(), families: family_specs, added: Vec::new() },
        shrinkage: Shrinkage {
            quality_weight: shrink.weight.to_vec(),
            token_weight: shrink.token_weight.to_vec(),
            local_prior: shrink.local.as_ref().map(|l| LocalPriorSpec { neighbours: l.k, kappa: l.kappa, memory_prompts: l.keys }),
        },
        support: SupportIndex { neighbours: support.k, prompts: support.keys.nrows(), rates: support.rates() },
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
            fit_prompts: fit_rows.len(),
            early_stop_prompts: stop_rows.len(),
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
            shrink_choice,
            local_prior_choice,
        },
        created_at: now_rfc3339(),
    };
    // What is written is what the server will accept.
    manifest.validate().map_err(|e| JobError::Invalid { field: "manifest", limit: "consistent (a bug if not)", value: e })?;
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn dataset(n: usize, seed: u64) -> Dataset {
        let mut rng = super::super::SplitMix64::new(seed);
        let x = Array2::from_shape_fn((n, 8), |_| rng.next_f64() as f32 - 0.5);
        let quality = Array2::from_shape_fn((n, 3), |(r, c)| if (x[[r, c]] > 0.0) ^ (c == 2) { 1.0 } else { 0.0 });
        let log_tokens = Array2::from_shape_fn((n, 3), |(r, _)| 3.0 + x[[r, 0]]);
        // Models 0 and 1 observed on the first half, model 2 on the second: two families.
        let mask = Array2::from_shape_fn((n, 3), |(r, c)| if (r < n / 2) == (c < 2) { 1.0 } else { 0.0 });
        Dataset { x, quality, log_tokens, mask }
    }

    #[test]
    fn a_model_seen_only_on_held_out_prompts_shapes_no_family() {
        let dir = tempfile::tempdir().unwrap();
        let line = |p: &str, m: &str| format!(r#"{{"prompt_id":"{p}","prompt":"text {p}","model":"{m}","score":1,"output_tokens":5}}"#);
        // File a: models a1, a2 on p1; on the held-out p2, also `shared`, which file b has too.
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        std::fs::write(&a, [line("p1", "a1"), line("p1", "a2"), line("p2", "a1"), line("p2", "shared")].join("\n")).unwrap();
        std::fs::write(&b, [line("q1", "b1"), line("q1", "shared")].join("\n")).unwrap();
        let paths = vec![a, b];
        let logs = read_logs(&paths, true).unwrap();
        let id = |m: &str| logs.models.iter().position(|x| x == m).unwrap();
        let families = |training: &[&str]| {
            let files = log_files(&paths, &logs, &training.iter().copied().collect()).unwrap();
            let mut f: Vec<Vec<usize>> = model_families(&files).into_iter().map(|f| f.models).collect();
            f.sort();
            f
        };
        // With p2 held out, `shared` belongs to file b only: two families.
        let mut expected = vec![vec![id("a1"), id("a2")], vec![id("b1"), id("shared")]];
        expected.iter_mut().for_each(|f| f.sort());
        expected.sort();
        assert_eq!(families(&["p1", "q1"]), expected);
        // Trained on, p2 joins the two files into one family.
        assert_eq!(families(&["p1", "p2", "q1"]).len(), 1);
    }

    #[test]
    fn merged_ensemble_averages_member_logits_per_family() {
        let (fit, stop) = (dataset(120, 1), dataset(40, 2));
        let families = vec![Family { files: vec![], models: vec![0, 1] }, Family { files: vec![], models: vec![2] }];
        let cfg = super::super::TrainConfig { hidden: 6, epochs: 5, ..Default::default() };
        let (merged, reports) = train_families(&families, &fit, &stop, &cfg, 2, HeadMethod::Mlp).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(merged.hidden_dim(), 4 * 6);
        let (q, t) = merged.predict(fit.x.view());
        // Rebuild family 0's members exactly as train_families does and average their logits.
        let rows: Vec<usize> = (0..fit.n_rows()).filter(|&r| fit.mask[[r, 0]] > 0.0 || fit.mask[[r, 1]] > 0.0).collect();
        let srows: Vec<usize> = (0..stop.n_rows()).filter(|&r| stop.mask[[r, 0]] > 0.0 || stop.mask[[r, 1]] > 0.0).collect();
        let (fd, sd) = (columns(&fit, &rows, &[0, 1]), columns(&stop, &srows, &[0, 1]));
        let logit = |p: f32| (p / (1.0 - p)).ln();
        let mut mean_logit = Array2::<f32>::zeros((fit.n_rows(), 2));
        let mut mean_log_t = Array2::<f32>::zeros((fit.n_rows(), 2));
        for member in 0..2u64 {
            let (m, _) = train(&fd, &sd, &super::super::TrainConfig { seed: cfg.seed + member, ..cfg.clone() }).unwrap();
            let (mq, mt) = m.predict(fit.x.view());
            mean_logit = mean_logit + mq.mapv(logit) / 2.0;
            mean_log_t = mean_log_t + mt.mapv(|v| v.ln_1p()) / 2.0;
        }
        for r in 0..fit.n_rows() {
            for c in 0..2 {
                assert!((logit(q[[r, c]]) - mean_logit[[r, c]]).abs() < 1e-3, "quality logit at ({r},{c})");
                assert!((t[[r, c]].ln_1p() - mean_log_t[[r, c]]).abs() < 1e-3, "log tokens at ({r},{c})");
            }
        }
    }
}
