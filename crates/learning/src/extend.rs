//! `pointsman extend`: add models to a trained head from a few hundred labelled prompts each,
//! without retraining the models it already predicts.
//!
//! The head's hidden layer is a learned description of prompts; a new model gets its own output
//! column fitted on those frozen features: a ridge-penalised logistic regression (Newton steps)
//! for quality and a ridge regression for log output tokens. Every existing column, the hidden
//! layer and the existing shrinkage stay byte-identical, so the other models' predictions do not
//! move. The support index grows by the new model's prompts (its evidence), and its shrinkage
//! weight is the mean of the existing ones.
use std::path::PathBuf;

use ndarray::{concatenate, s, Array1, Array2, ArrayView2, Axis};

use super::{
    export_with_support, import,
    job::{embed_prompts_cached, write_atomically, JobError},
    read_logs, split_by_prompt, MemoryBlock, Mlp,
};
use crate::{
    encoder::Encoder,
    predictor::{manifest::AddedModel, sha256_hex, HeadManifest},
};

/// What to add and where.
#[derive(Debug, Clone)]
pub struct ExtendJob {
    /// The head to extend (`head.onnx` + `manifest.json`).
    pub head_dir: PathBuf,
    /// Routing logs holding the new models' outcomes (other models' lines are ignored).
    pub data: Vec<PathBuf>,
    /// Where to write the extended head (may be `head_dir`).
    pub out_dir: PathBuf,
    /// Share of each new model's prompts held out to report its accuracy.
    pub val_fraction: f64,
    /// Ridge penalty on the new columns; `None` picks it from the head's width ([`default_l2`]).
    pub l2: Option<f64>,
    /// Seed of the split.
    pub seed: u64,
    /// Embedding cache folder.
    pub embedding_cache: Option<PathBuf>,
}

/// Solves `a x = b` for symmetric positive definite `a` (Cholesky).
fn solve_spd(a: &Array2<f64>, b: &Array1<f64>) -> Array1<f64> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let sum: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            if i == j {
                l[[i, i]] = (a[[i, i]] - sum).max(1e-12).sqrt();
            } else {
                l[[i, j]] = (a[[i, j]] - sum) / l[[j, j]];
            }
        }
    }
    let mut y = Array1::<f64>::zeros(n);
    for i in 0..n {
        y[i] = (b[i] - (0..i).map(|k| l[[i, k]] * y[k]).sum::<f64>()) / l[[i, i]];
    }
    let mut x = Array1::<f64>::zeros(n);
    for i in (0..n).rev() {
        x[i] = (y[i] - (i + 1..n).map(|k| l[[k, i]] * x[k]).sum::<f64>()) / l[[i, i]];
    }
    x
}

/// Features with a trailing 1 for the intercept.
fn design(h: ArrayView2<f32>) -> Array2<f64> {
    concatenate![Axis(1), h.mapv(f64::from), Array2::ones((h.nrows(), 1))]
}

/// Ridge-penalised logistic regression with soft targets (Newton / IRLS); the intercept is not penalised.
pub fn fit_logistic(x: &Array2<f64>, y: &Array1<f64>, l2: f64) -> Array1<f64> {
    let d = x.ncols();
    let mut w = Array1::<f64>::zeros(d);
    let mean = y.mean().unwrap_or(0.5).clamp(1e-3, 1.0 - 1e-3);
    w[d - 1] = (mean / (1.0 - mean)).ln();
    let mut pen = Array1::from_elem(d, l2);
    pen[d - 1] = 0.0;
    for _ in 0..25 {
        let p = x.dot(&w).mapv(|z| 1.0 / (1.0 + (-z).exp()));
        let g = x.t().dot(&(&p - y)) + &(&pen * &w);
        let s = p.mapv(|p| (p * (1.0 - p)).max(1e-6));
        let mut h = x.t().dot(&(x * &s.insert_axis(Axis(1))));
        for i in 0..d {
            h[[i, i]] += pen[i] + 1e-9;
        }
        let step = solve_spd(&h, &g);
        w -= &step;
        if step.iter().map(|v| v.abs()).fold(0.0, f64::max) < 1e-6 {
            break;
        }
    }
    w
}

/// Ridge regression; the intercept is not penalised.
pub fn fit_ridge(x: &Array2<f64>, y: &Array1<f64>, l2: f64) -> Array1<f64> {
    let d = x.ncols();
    let mut a = x.t().dot(x);
    for i in 0..d - 1 {
        a[[i, i]] += l2;
    }
    a[[d - 1, d - 1]] += 1e-9;
    solve_spd(&a, &x.t().dot(y))
}

/// The ridge penalty for new columns on a head of `hidden` units: a factor head's few units need
/// little (3 was best of 3, 10, 30, 100 on zeroeval at 250 to 1,000 labels), a 128-unit MLP's
/// many need more (100 was best there).
pub fn default_l2(hidden: usize) -> f64 {
    if hidden <= 32 {
        3.0
    } else {
        100.0
    }
}

/// Runs the job: returns the new manifest and each added model's held-out accuracy.
pub fn run(job: &ExtendJob, encoder: &Encoder, quiet: bool) -> Result<(HeadManifest, Vec<AddedModel>), JobError> {
    let read = |p: PathBuf| std::fs::read(&p).map_err(|source| JobError::Write { path: p, source });
    let text = read(job.head_dir.join("manifest.json"))?;
    let mut manifest = HeadManifest::parse(&String::from_utf8_lossy(&text)).map_err(|e| JobError::Invalid {
        field: "head",
        limit: "a folder with a valid manifest.json",
        value: format!("{}: {e}", job.head_dir.join("manifest.json").display()),
    })?;
    let graph = read(job.head_dir.join(&manifest.graph))?;
    // Extend only a head whose manifest says what its graph is (as the server would load it).
    manifest.check_graph(&pointsman_core::predictor::graph::facts(&graph).map_err(crate::LearningError::from)?).map_err(|e| {
        JobError::Invalid {
            field: "head",
            limit: "a manifest that describes its graph",
            value: format!("{}: {e}", job.head_dir.join("manifest.json").display()),
        }
    })?;
    let (mlp, support, shrink) = import(&graph)?;
    let l2 = job.l2.unwrap_or_else(|| default_l2(mlp.hidden_dim()));
    let logs = read_logs(&job.data, false)?;
    let new: Vec<usize> = (0..logs.models.len()).filter(|&j| !manifest.models.contains(&logs.models[j])).collect();
    if new.is_empty() {
        return Err(JobError::Invalid {
            field: "data",
            limit: "outcomes of at least one model the head does not cover",
            value: "only models the head already has".into(),
        });
    }
    let texts: Vec<&str> = logs.prompts.iter().map(|p| p.text.as_str()).collect();
    let (x, _) = embed_prompts_cached(encoder, &texts, job.embedding_cache.as_deref(), quiet)?;
    let features = design(mlp.features(x.view()).view());

    let (mut wq, mut bq, mut wt, mut bt) = (mlp.wq().to_owned(), mlp.bq().to_owned(), mlp.wt().to_owned(), mlp.bt().to_owned());
    let mut support = support;
    let mut shrink = shrink;
    let mut added = Vec::new();
    for &j in &new {
        let obs: Vec<_> = logs.observations.iter().filter(|o| o.model == j).collect();
        let (fit_i, val_i) = split_by_prompt(obs.len(), job.val_fraction, job.seed);
        let rows = |idx: &[usize]| idx.iter().map(|&i| obs[i].prompt).collect::<Vec<usize>>();
        let target = |idx: &[usize]| -> (Array1<f64>, Array1<f64>) {
            (idx.iter().map(|&i| f64::from(obs[i].score)).collect(), idx.iter().map(|&i| f64::from(obs[i].output_tokens).ln_1p()).collect())
        };
        let (fx, vx) = (features.select(Axis(0), &rows(&fit_i)), features.select(Axis(0), &rows(&val_i)));
        let ((fq, ft), (vq, vt)) = (target(&fit_i), target(&val_i));
        let (cq, ct) = (fit_logistic(&fx, &fq, l2), fit_ridge(&fx, &ft, l2));
        let pq = vx.dot(&cq).mapv(|z| 1.0 / (1.0 + (-z).exp()));
        let pt = vx.dot(&ct);
        let (mq, mt) = (fq.mean().unwrap_or(0.0), ft.mean().unwrap_or(0.0));
        let n = vq.len().max(1) as f64;
        added.push(AddedModel {
            model: logs.models[j].clone(),
            files: job.data.iter().map(|p| p.display().to_string()).collect(),
            l2,
            labels: obs.len(),
            validation_prompts: vq.len(),
            brier: (&pq - &vq).mapv(|e| e * e).sum() / n,
            baseline_brier: vq.mapv(|y| (y - mq).powi(2)).sum() / n,
            log_tokens_mae: (&pt - &vt).mapv(f64::abs).sum() / n,
            baseline_log_tokens_mae: vt.mapv(|y| (y - mt).abs()).sum() / n,
        });
        // The column that ships is fitted on every label.
        let all: Vec<usize> = (0..obs.len()).collect();
        let (ax, (aq, at)) = (features.select(Axis(0), &rows(&all)), target(&all));
        let (cq, ct) = (fit_logistic(&ax, &aq, l2), fit_ridge(&ax, &at, l2));
        let h = cq.len() - 1;
        wq = concatenate![Axis(1), wq, cq.slice(s![..h]).mapv(|v| v as f32).insert_axis(Axis(1))];
        wt = concatenate![Axis(1), wt, ct.slice(s![..h]).mapv(|v| v as f32).insert_axis(Axis(1))];
        bq = concatenate![Axis(0), bq, Array1::from_elem(1, cq[h] as f32)];
        bt = concatenate![Axis(0), bt, Array1::from_elem(1, ct[h] as f32)];
        if let Some(s) = shrink.as_mut() {
            let w = s.weight.mean().unwrap_or(1.0);
            s.weight = concatenate![Axis(0), s.weight, Array1::from_elem(1, w)];
            s.token_weight = concatenate![Axis(0), s.token_weight, Array1::from_elem(1, w)];
            if let Some(l) = s.local.as_mut() {
                // No neighbours' evidence for the new model: its prior is its mean.
                let zero = Array2::<f32>::zeros((l.keys, 1));
                l.quality_sum = concatenate![Axis(1), l.quality_sum, zero];
                l.count = concatenate![Axis(1), l.count, zero];
                l.token_sum = concatenate![Axis(1), l.token_sum, zero];
                l.mean_tokens.push(0.0);
                l.k.push(0);
                l.kappa.push(crate::MIN_KAPPA);
            }
            s.prior_quality = concatenate![Axis(0), s.prior_quality, Array1::from_elem(1, aq.mean().unwrap_or(0.0) as f32)];
            s.prior_log_tokens = concatenate![Axis(0), s.prior_log_tokens, Array1::from_elem(1, at.mean().unwrap_or(0.0) as f32)];
        }
        if let Some(sup) = support.as_mut() {
            // Grow the index by this model's prompts, as a block (a family) of its own: the old
            // blocks' rates do not change, the new model is observed on all of its block, and the
            // family test asks whether a prompt is like the ones it was labelled on.
            let (k_old, m_old) = sup.weights.dim();
            let new_keys = x.select(Axis(0), &rows(&all));
            let k_new = k_old + new_keys.nrows();
            let mut weights = Array2::<f32>::zeros((k_new, m_old + 1));
            weights.slice_mut(s![..k_old, ..m_old]).assign(&sup.weights);
            weights.slice_mut(s![k_old.., m_old]).fill(1.0);
            // Encoder outputs are already L2-normalised, as the index requires.
            sup.keys = concatenate![Axis(0), sup.keys, new_keys];
            sup.weights = weights;
            sup.blocks.push(MemoryBlock { start: k_old, end: k_new, models: vec![m_old] });
        }
        manifest.models.push(logs.models[j].clone());
    }
    if let Some(sup) = support.as_ref() {
        manifest.support = sup.index();
    }
    match shrink.as_ref() {
        Some(s) => {
            manifest.shrinkage.quality_weight = s.weight.to_vec();
            manifest.shrinkage.token_weight = s.token_weight.to_vec();
            manifest.shrinkage.local_prior = s.local.as_ref().map(crate::LocalPrior::spec);
        }
        None => {
            let m = manifest.models.len();
            manifest.shrinkage.quality_weight.resize(m, 1.0);
            manifest.shrinkage.token_weight.resize(m, 1.0);
        }
    }
    manifest.architecture.added.extend(added.iter().cloned());
    let extended = Mlp::from_parts(mlp.w1().to_owned(), mlp.b1().to_owned(), wq, bq, wt, bt)?;
    let bytes = export_with_support(
        &extended,
        support.as_ref(),
        shrink.as_ref(),
        &[("producer".into(), format!("pointsman {}", env!("CARGO_PKG_VERSION")))],
    );
    let digest = sha256_hex(&bytes);
    let base = manifest.head_id.rsplit_once('-').map_or(manifest.head_id.as_str(), |(b, _)| b).to_string();
    manifest.head_id = format!("{base}-{}", &digest[..8]);
    manifest.graph = "head.onnx".into();
    manifest.graph_sha256 = digest;
    manifest.created_at = super::job::now_rfc3339();
    manifest.validate().map_err(|e| JobError::Invalid { field: "manifest", limit: "consistent (a bug if not)", value: e.0 })?;
    std::fs::create_dir_all(&job.out_dir).map_err(|source| JobError::Write { path: job.out_dir.clone(), source })?;
    write_atomically(&job.out_dir.join("head.onnx"), &bytes)?;
    write_atomically(&job.out_dir.join("manifest.json"), manifest.to_json().as_bytes())?;
    Ok((manifest, added))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn solvers_recover_known_coefficients() {
        let a = array![[4.0, 1.0], [1.0, 3.0]];
        let x = solve_spd(&a, &array![1.0, 2.0]);
        assert!((a.dot(&x) - array![1.0, 2.0]).iter().all(|e| e.abs() < 1e-9));
        let xs = array![[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]];
        let w = fit_ridge(&xs, &array![1.0, 3.0, 5.0, 7.0], 1e-9);
        assert!((w[0] - 2.0).abs() < 1e-6 && (w[1] - 1.0).abs() < 1e-6);
        let y = array![0.0, 0.0, 1.0, 1.0];
        let w = fit_logistic(&xs, &y, 0.1);
        assert!(w[0] > 0.5, "positive slope: {w}");
    }
}
