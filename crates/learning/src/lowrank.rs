//! A low-rank factor head for dense (benchmark-like) logs: few shared per-prompt factors
//! predicted from the embedding, and a calibrated link per model.
//!
//! For quality, and separately for `ln(1 + output tokens)`:
//! 1. The models observed on at least `min_coverage` of the training prompts form a score matrix
//!    `Y` (the rare missing cells filled with the model's mean). Its top-`k` principal
//!    directions `V` (eigenvectors of the centred `YᵀY`) span what varies from prompt to prompt:
//!    for quality, mostly difficulty and kind of task.
//! 2. A ridge regression maps the embedding to those factors: `z(x) = (x - μ) P` with
//!    `P = (XcᵀXc + λI)⁻¹ Xcᵀ (Y - ȳ) V`.
//! 3. Each model (all of the family's models, dense or not, with at least 5 outcomes) gets its
//!    own link from the factors: a logistic regression of its observed (soft) scores on
//!    `[1, z]` for quality, a linear one on `[1, z_t]` for log tokens, both fitted on
//!    out-of-fold factors (the ridge refitted without each fifth of the prompts), so the links
//!    are calibrated to the noise the factors will have on new prompts.
//!
//! Why: with ~30 candidates, a flexible per-model predictor (the MLP) picks whichever model was
//! lucky on similar prompts; a rank-2 structure shares strength across models and the per-model
//! link calibrates. Measured in a numpy prototype on 20 prompt-level 80/20 splits of the shared
//! data (gap closed, mean ± sd): zeroeval 9.5 ± 3.7% vs 8.3 ± 2.6% for the MLP ensemble,
//! alpaca_eval2 6.3 ± 4.2% vs 3.4 ± 3.3% (docs/research-log.md).
//!
//! It needs dense logs (benchmarks, or shadow evaluation of several models per prompt); sparse
//! production logs (one model per prompt) have no dense model and train the MLP instead.
//!
//! Export: `z = relu(z) - relu(-z)`, so the head is exactly an [`Mlp`] with hidden layer
//! `[P, -P, P_t, -P_t]` (biases `∓μP`) and output weights `±w_m`: the ONNX graph, the shrinkage,
//! the support and `extend` all work unchanged.
use faer::{linalg::solvers::Solve, Mat, MatRef, Side};
use ndarray::{s, Array1, Array2, Axis};

use super::{rng::SplitMix64, Dataset, LearningError, Mlp};

/// Settings of the factor head.
#[derive(Debug, Clone, PartialEq)]
pub struct LowRankConfig {
    /// Quality factors.
    pub rank_quality: usize,
    /// Log-token factors.
    pub rank_tokens: usize,
    /// Ridge penalty of the quality factors.
    pub ridge_quality: f64,
    /// Ridge penalty of the token factors.
    pub ridge_tokens: f64,
    /// Folds for the out-of-fold factors.
    pub folds: usize,
    /// L2 penalty on each model's link slopes.
    pub link_l2: f64,
    /// Share of the prompts a model must be observed on to shape the factors.
    pub min_coverage: f64,
    /// Seed of the folds.
    pub seed: u64,
}

impl Default for LowRankConfig {
    fn default() -> Self {
        Self {
            rank_quality: 2,
            rank_tokens: 4,
            ridge_quality: 3.0,
            ridge_tokens: 3.0,
            folds: 5,
            link_l2: 1e-2,
            min_coverage: 0.95,
            seed: 0x5EED,
        }
    }
}

/// Models observed on at least `min_coverage` of the rows.
pub fn dense_models(d: &Dataset, min_coverage: f64) -> Vec<usize> {
    let n = d.n_rows().max(1) as f64;
    (0..d.n_models()).filter(|&j| f64::from(d.mask.column(j).sum()) / n >= min_coverage).collect()
}

/// `a` as a `faer` matrix.
fn to_faer(a: &Array2<f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]])
}

/// `m` as an `ndarray` matrix.
fn from_faer(m: MatRef<'_, f64>) -> Array2<f64> {
    Array2::from_shape_fn((m.nrows(), m.ncols()), |(i, j)| m[(i, j)])
}

/// Solves `a x = b` for symmetric positive definite `a`, every column of `b` (`faer`'s Cholesky
/// `a = L Lᵀ`, reading the lower triangle).
fn spd_solve(a: &Array2<f64>, b: &Array2<f64>) -> Result<Array2<f64>, LearningError> {
    let not_pd = || LearningError::InvalidValue { what: "low-rank head: a ridge system is not positive definite" };
    // NOTE: faer refuses a NaN pivot but factors an infinite one; refuse every non-finite entry.
    if !a.iter().all(|v| v.is_finite()) {
        return Err(not_pd());
    }
    let llt = to_faer(a).llt(Side::Lower).map_err(|_| not_pd())?;
    Ok(from_faer(llt.solve(to_faer(b)).as_ref()))
}

/// Eigenvectors of a symmetric matrix, as columns sorted by decreasing eigenvalue (`faer`'s
/// self-adjoint eigendecomposition, reading the lower triangle).
fn symmetric_eigenvectors(a: &Array2<f64>) -> Result<Array2<f64>, LearningError> {
    let eigen = to_faer(a)
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| LearningError::InvalidValue { what: "low-rank head: the score covariance has no eigendecomposition" })?;
    // faer sorts the eigenvalues in nondecreasing order.
    let u = from_faer(eigen.U());
    let order: Vec<usize> = (0..u.ncols()).rev().collect();
    Ok(u.select(Axis(1), &order))
}

/// Ridge from features to factors: returns `(μ, P)` with `z = (x - μ) P`.
fn ridge_factors(x: &Array2<f64>, y: &Array2<f64>, v: &Array2<f64>, lambda: f64) -> Result<(Array1<f64>, Array2<f64>), LearningError> {
    let mu = x.mean_axis(Axis(0)).expect("rows are not empty. This is a bug.");
    let xc = x - &mu;
    let ym = y.mean_axis(Axis(0)).expect("rows are not empty. This is a bug.");
    let t = (y - &ym).dot(v);
    let mut gram = xc.t().dot(&xc);
    for i in 0..gram.nrows() {
        gram[[i, i]] += lambda;
    }
    let p = spd_solve(&gram, &xc.t().dot(&t))?;
    Ok((mu, p))
}

/// The fitted factors of one target: the projection and out-of-fold factors of the rows.
struct Factors {
    mu: Array1<f64>,
    p: Array2<f64>,
    oof: Array2<f64>,
}

fn factors(x: &Array2<f64>, y: &Array2<f64>, rank: usize, lambda: f64, folds: &[usize], n_folds: usize) -> Result<Factors, LearningError> {
    let yc = y - &y.mean_axis(Axis(0)).expect("rows are not empty. This is a bug.");
    let v = symmetric_eigenvectors(&yc.t().dot(&yc))?;
    let k = rank.min(v.ncols()).max(1);
    let v = v.slice(s![.., ..k]).to_owned();
    let mut oof = Array2::<f64>::zeros((x.nrows(), k));
    for f in 0..n_folds {
        let (fit, held): (Vec<usize>, Vec<usize>) = (0..x.nrows()).partition(|&r| folds[r] != f);
        if held.is_empty() || fit.len() < 2 {
            continue;
        }
        let (mu, p) = ridge_factors(&x.select(Axis(0), &fit), &y.select(Axis(0), &fit), &v, lambda)?;
        let z = (&x.select(Axis(0), &held) - &mu).dot(&p);
        for (i, &r) in held.iter().enumerate() {
            oof.row_mut(r).assign(&z.row(i));
        }
    }
    let (mu, p) = ridge_factors(x, y, &v, lambda)?;
    Ok(Factors { mu, p, oof })
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Soft-label logistic regression of `y` on `[1, z]` over the rows with `w > 0` (Newton, L2 on
/// the slopes only). Returns `[intercept, slopes...]`.
fn logistic_link(z: &Array2<f64>, y: &[f64], w: &[f64], l2: f64) -> Result<Array1<f64>, LearningError> {
    let k = z.ncols() + 1;
    let (sw, sy) = w.iter().zip(y).fold((0.0, 0.0), |(a, b), (w, y)| (a + w, b + w * y));
    let p0 = (sy / sw).clamp(1e-3, 1.0 - 1e-3);
    let mut th = Array1::<f64>::zeros(k);
    th[0] = (p0 / (1.0 - p0)).ln();
    for _ in 0..25 {
        let mut g = Array1::<f64>::zeros(k);
        let mut h = Array2::<f64>::zeros((k, k));
        for r in 0..z.nrows() {
            if w[r] <= 0.0 {
                continue;
            }
            let a: Vec<f64> = std::iter::once(1.0).chain(z.row(r).iter().copied()).collect();
            let p = sigmoid(a.iter().zip(th.iter()).map(|(a, t)| a * t).sum());
            for i in 0..k {
                g[i] += w[r] * (p - y[r]) * a[i];
                for j in 0..k {
                    h[[i, j]] += w[r] * p * (1.0 - p) * a[i] * a[j];
                }
            }
        }
        for i in 0..k {
            h[[i, i]] += 1e-9;
            if i > 0 {
                g[i] += l2 * th[i];
                h[[i, i]] += l2;
            }
        }
        let step = spd_solve(&h, &g.insert_axis(Axis(1)))?;
        th -= &step.column(0);
    }
    Ok(th)
}

/// Weighted least squares of `y` on `[1, z]` with L2 on the slopes. Returns `[intercept, slopes...]`.
fn linear_link(z: &Array2<f64>, y: &[f64], w: &[f64], l2: f64) -> Result<Array1<f64>, LearningError> {
    let k = z.ncols() + 1;
    let mut a = Array2::<f64>::zeros((k, k));
    let mut b = Array2::<f64>::zeros((k, 1));
    for r in 0..z.nrows() {
        if w[r] <= 0.0 {
            continue;
        }
        let row: Vec<f64> = std::iter::once(1.0).chain(z.row(r).iter().copied()).collect();
        for i in 0..k {
            b[[i, 0]] += w[r] * row[i] * y[r];
            for j in 0..k {
                a[[i, j]] += w[r] * row[i] * row[j];
            }
        }
    }
    for i in 0..k {
        a[[i, i]] += if i > 0 { l2 } else { 1e-9 };
    }
    Ok(spd_solve(&a, &b)?.column(0).to_owned())
}

/// Fits the factor head on `d` (all of one family's models). `Ok(None)` when fewer than 3
/// models are dense enough to shape the factors (train the MLP instead).
pub fn fit(d: &Dataset, cfg: &LowRankConfig) -> Result<Option<Mlp>, LearningError> {
    let dense = dense_models(d, cfg.min_coverage);
    if dense.len() < 3 || d.n_rows() < 2 * cfg.folds.max(2) {
        return Ok(None);
    }
    let (n, m) = (d.n_rows(), d.n_models());
    let x = d.x.mapv(f64::from);
    let filled = |values: &Array2<f32>| -> Array2<f64> {
        let mut y = Array2::<f64>::zeros((n, dense.len()));
        for (c, &j) in dense.iter().enumerate() {
            let obs: Vec<f64> = (0..n).filter(|&r| d.mask[[r, j]] > 0.0).map(|r| f64::from(values[[r, j]])).collect();
            let mean = obs.iter().sum::<f64>() / obs.len().max(1) as f64;
            for r in 0..n {
                y[[r, c]] = if d.mask[[r, j]] > 0.0 { f64::from(values[[r, j]]) } else { mean };
            }
        }
        y
    };
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(cfg.seed).shuffle(&mut order);
    let mut folds = vec![0usize; n];
    for (i, &r) in order.iter().enumerate() {
        folds[r] = i % cfg.folds.max(2);
    }
    let fq = factors(&x, &filled(&d.quality), cfg.rank_quality, cfg.ridge_quality, &folds, cfg.folds.max(2))?;
    let ft = factors(&x, &filled(&d.log_tokens), cfg.rank_tokens, cfg.ridge_tokens, &folds, cfg.folds.max(2))?;
    let (kq, kt) = (fq.p.ncols(), ft.p.ncols());

    // Per-model links on the out-of-fold factors.
    let mut thq = Array2::<f64>::zeros((m, kq + 1));
    let mut tht = Array2::<f64>::zeros((m, kt + 1));
    for j in 0..m {
        let w: Vec<f64> = d.mask.column(j).iter().map(|&v| f64::from(v)).collect();
        let q: Vec<f64> = d.quality.column(j).iter().map(|&v| f64::from(v)).collect();
        let t: Vec<f64> = d.log_tokens.column(j).iter().map(|&v| f64::from(v)).collect();
        let seen = w.iter().filter(|&&v| v > 0.0).count();
        if seen >= 5 {
            thq.row_mut(j).assign(&logistic_link(&fq.oof, &q, &w, cfg.link_l2)?);
            tht.row_mut(j).assign(&linear_link(&ft.oof, &t, &w, cfg.link_l2)?);
        } else if seen > 0 {
            let mean = |v: &[f64]| v.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / seen as f64;
            let p = mean(&q).clamp(1e-3, 1.0 - 1e-3);
            thq[[j, 0]] = (p / (1.0 - p)).ln();
            tht[[j, 0]] = mean(&t);
        }
    }

    // As an MLP: hidden [z, -z, z_t, -z_t] through relu, outputs +-w.
    let h = 2 * (kq + kt);
    let dim = d.x.ncols();
    let mut w1 = Array2::<f32>::zeros((dim, h));
    let mut b1 = Array1::<f32>::zeros(h);
    let mut place = |p: &Array2<f64>, mu: &Array1<f64>, off: usize| {
        let k = p.ncols();
        let bias = mu.dot(p);
        for c in 0..k {
            for r in 0..dim {
                w1[[r, off + c]] = p[[r, c]] as f32;
                w1[[r, off + k + c]] = -p[[r, c]] as f32;
            }
            b1[off + c] = -bias[c] as f32;
            b1[off + k + c] = bias[c] as f32;
        }
    };
    place(&fq.p, &fq.mu, 0);
    place(&ft.p, &ft.mu, 2 * kq);
    let mut wq = Array2::<f32>::zeros((h, m));
    let mut wt = Array2::<f32>::zeros((h, m));
    for j in 0..m {
        for c in 0..kq {
            wq[[c, j]] = thq[[j, c + 1]] as f32;
            wq[[kq + c, j]] = -thq[[j, c + 1]] as f32;
        }
        for c in 0..kt {
            wt[[2 * kq + c, j]] = tht[[j, c + 1]] as f32;
            wt[[2 * kq + kt + c, j]] = -tht[[j, c + 1]] as f32;
        }
    }
    let bq = thq.column(0).mapv(|v| v as f32);
    let bt = tht.column(0).mapv(|v| v as f32);
    Ok(Some(Mlp::from_parts(w1, b1, wq, bq, wt, bt)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_algebra_is_right() {
        let a = ndarray::array![[4.0, 2.0, 0.6], [2.0, 5.0, 1.0], [0.6, 1.0, 3.0]];
        let b = ndarray::array![[1.0, -2.0], [2.0, 0.5], [3.0, 7.0]];
        let x = spd_solve(&a, &b).unwrap();
        assert_eq!(x.dim(), (3, 2));
        assert!((a.dot(&x) - &b).iter().all(|v| v.abs() < 1e-12), "{x}");
        let v = symmetric_eigenvectors(&a).unwrap();
        // Orthonormal columns that diagonalise `a`, largest eigenvalue first.
        assert!((v.t().dot(&v) - Array2::<f64>::eye(3)).iter().all(|e| e.abs() < 1e-12));
        let d = v.t().dot(&a).dot(&v);
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    assert!(d[[i, j]].abs() < 1e-9, "{d}");
                }
            }
        }
        assert!(d[[0, 0]] > d[[1, 1]] && d[[1, 1]] > d[[2, 2]], "{d}");
        // The trace is the sum of the eigenvalues.
        assert!((d.diag().sum() - 12.0).abs() < 1e-12);
        // Not positive definite, or not finite: a clear error, not a NaN solution.
        let indefinite = ndarray::array![[1.0, 2.0], [2.0, 1.0]];
        assert!(matches!(spd_solve(&indefinite, &ndarray::array![[1.0], [1.0]]), Err(LearningError::InvalidValue { .. })));
        let nan = ndarray::array![[f64::NAN, 0.0], [0.0, 1.0]];
        assert!(matches!(spd_solve(&nan, &ndarray::array![[1.0], [1.0]]), Err(LearningError::InvalidValue { .. })));
    }

    /// Quality driven by one hidden difficulty that is linear in the embedding: the factor head
    /// recovers it, and its MLP form predicts exactly what the factors and links say.
    #[test]
    fn recovers_a_shared_difficulty_factor() {
        let (n, dim, m) = (400, 8, 6);
        let mut rng = SplitMix64::new(7);
        let x = Array2::from_shape_fn((n, dim), |_| rng.next_normal() as f32);
        let difficulty: Vec<f64> = (0..n).map(|r| f64::from(x[[r, 0]]) - 0.5 * f64::from(x[[r, 1]])).collect();
        let skill = [2.0, 1.0, 0.5, 0.0, -0.5, -1.0];
        let mut d = Dataset { x: x.clone(), quality: Array2::zeros((n, m)), log_tokens: Array2::zeros((n, m)), mask: Array2::ones((n, m)) };
        for r in 0..n {
            for (j, skill) in skill.iter().enumerate() {
                let p = sigmoid(skill - 1.5 * difficulty[r]);
                d.quality[[r, j]] = if rng.next_f64() < p { 1.0 } else { 0.0 };
                d.log_tokens[[r, j]] = (5.0 + 0.5 * f64::from(x[[r, 2]]) + 0.2 * j as f64) as f32;
            }
        }
        let head = fit(&d, &LowRankConfig { ridge_quality: 1.0, ridge_tokens: 1.0, ..LowRankConfig::default() }).unwrap().unwrap();
        let (q, t) = head.predict(x.view());
        let mut brier = 0.0;
        let mut brier_mean = 0.0;
        for j in 0..m {
            let mean = f64::from(d.quality.column(j).mean().unwrap());
            for r in 0..n {
                let y = f64::from(d.quality[[r, j]]);
                brier += (f64::from(q[[r, j]]) - y).powi(2);
                brier_mean += (mean - y).powi(2);
            }
        }
        assert!(brier < 0.8 * brier_mean, "the factor explains the scores: Brier {brier:.1} vs {brier_mean:.1} for the means");
        // Easier prompts (low difficulty) get higher predicted quality for every model.
        let easy = (0..n).min_by(|&a, &b| difficulty[a].total_cmp(&difficulty[b])).unwrap();
        let hard = (0..n).max_by(|&a, &b| difficulty[a].total_cmp(&difficulty[b])).unwrap();
        assert!((0..m).all(|j| q[[easy, j]] > q[[hard, j]]));
        // Lengths follow their own factor.
        let err: f32 = (0..n).map(|r| ((t[[r, 0]] + 1.0).ln() - d.log_tokens[[r, 0]]).abs()).sum::<f32>() / n as f32;
        assert!(err < 0.05, "log-token error {err}");
        // Sparse logs (no dense model) are left to the MLP.
        let mut sparse = d.clone();
        sparse.mask.fill(0.0);
        for r in 0..n {
            sparse.mask[[r, r % m]] = 1.0;
        }
        assert!(fit(&sparse, &LowRankConfig::default()).unwrap().is_none());
    }
}
