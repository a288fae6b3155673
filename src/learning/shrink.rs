//! Shrinking the head's predictions towards each model's average.
//!
//! With many candidates, routing takes an argmax over noisy per-model estimates and so favours
//! the model that was lucky on similar prompts (the winner's curse). Pulling every prediction
//! towards that model's training mean, `a * predicted + (1 - a) * mean` (quality in probability,
//! tokens in log space), trades a little accuracy for much less of that: at `a = 0` the router
//! sends each price point to the best single model, so it cannot fall below the single-model
//! frontier by much, and larger `a` lets per-prompt evidence move it.
//!
//! `a` is chosen per model family by `pointsman train` on the early-stopping prompts (never the
//! held-out ones): for each log file, the prompts answered by every catalog model form a full
//! matrix on which the share of the single-to-oracle gap each `a` closes is measured, and the
//! best `a` applies to that file's models (their scores share one scale and one noise level).
//! Models in no such file get the mean of the chosen weights, or the default.
//!
//! For a factor family the quality prior is *local* instead ([`LocalPrior`]): the mean quality of
//! that model on the prompt's nearest training prompts, pulled towards its global mean by a
//! pseudo-count. The factor head is a global, low-rank description of the prompts; the
//! neighbours carry what it smooths away. `a` is then chosen per log file by an inner 5-fold
//! cross-validation of the training prompts (see `job::choose_local`), and tokens keep the factor
//! head's own prediction (`token_weight` 1).
use ndarray::{Array1, Array2, ArrayView2};

use super::support::Support;

/// The per-prompt quality prior of [`Shrink`]: each model's mean observed quality on the
/// query's `k` nearest training prompts, `(sum + kappa * prior) / (count + kappa)`, over the
/// first `keys` keys of the head's support index (a model added later by `extend` appends keys
/// after them and leaves this prior, and so every older model's prediction, unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPrior {
    /// Neighbours averaged over.
    pub k: usize,
    /// How many of the support index's keys (from the first) are this prior's memory.
    pub keys: usize,
    /// Observed quality per memory prompt and model, 0 where unobserved: [keys, M].
    pub quality_sum: Array2<f32>,
    /// 1 where observed: [keys, M]. A zero column makes that model's prior its global mean.
    pub count: Array2<f32>,
    /// Pseudo-count of the global mean.
    pub kappa: f32,
}

impl LocalPrior {
    /// The prior from the memory prompts' outcomes ([keys, M] each); only the columns in
    /// `local_models` get one, the others keep the global mean.
    pub fn new(quality: &Array2<f32>, mask: &Array2<f32>, local_models: &[usize], k: usize, kappa: f32) -> Self {
        let mut sum = Array2::zeros(quality.dim());
        let mut count = Array2::zeros(quality.dim());
        for &j in local_models {
            sum.column_mut(j).assign(&(&quality.column(j) * &mask.column(j)));
            count.column_mut(j).assign(&mask.column(j));
        }
        LocalPrior { k: k.clamp(1, quality.nrows().max(1)), keys: quality.nrows(), quality_sum: sum, count, kappa }
    }

    /// The prior at each row of `x` ([N, D], L2-normalised), with `global` as each model's mean.
    pub fn at(&self, support: &Support, x: ArrayView2<f32>, global: &Array1<f32>) -> Array2<f32> {
        let mut out = Array2::zeros((x.nrows(), self.quality_sum.ncols()));
        for (r, near) in support.nearest(x, self.k, self.keys).into_iter().enumerate() {
            let mut sum = global * self.kappa;
            let mut n = Array1::from_elem(global.len(), self.kappa);
            for i in near {
                sum += &self.quality_sum.row(i);
                n += &self.count.row(i);
            }
            out.row_mut(r).assign(&(sum / n));
        }
        out
    }
}

/// The shrinkage applied in the exported graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Shrink {
    /// Weight of the head's own quality prediction per model, in [0, 1].
    pub weight: Array1<f32>,
    /// Weight of the head's own log-token prediction per model, in [0, 1].
    pub token_weight: Array1<f32>,
    /// The per-prompt quality prior, when there is one (else the global means).
    pub local: Option<LocalPrior>,
    /// Per-model mean quality on the training prompts.
    pub prior_quality: Array1<f32>,
    /// Per-model mean `ln(1 + output_tokens)` on the training prompts.
    pub prior_log_tokens: Array1<f32>,
}

impl Shrink {
    /// Per-model means of observed pairs (0 for a model never observed).
    pub fn priors(quality: &Array2<f32>, log_tokens: &Array2<f32>, mask: &Array2<f32>, weight: f32) -> Self {
        let n = mask.sum_axis(ndarray::Axis(0)).mapv(|c| c.max(1.0));
        Shrink {
            weight: Array1::from_elem(mask.ncols(), weight),
            token_weight: Array1::from_elem(mask.ncols(), weight),
            local: None,
            prior_quality: (quality * mask).sum_axis(ndarray::Axis(0)) / &n,
            prior_log_tokens: (log_tokens * mask).sum_axis(ndarray::Axis(0)) / &n,
        }
    }

    /// Applies the shrinkage to raw head outputs (quality, tokens) at the rows of `x`, as the
    /// graph does; a local prior needs the support index it was built on.
    pub fn apply(
        &self,
        support: Option<&Support>,
        x: ArrayView2<f32>,
        quality: &Array2<f32>,
        tokens: &Array2<f32>,
    ) -> (Array2<f32>, Array2<f32>) {
        let a = &self.weight;
        let keep = a.mapv(|w| 1.0 - w);
        let q = match (&self.local, support) {
            (Some(l), Some(s)) => quality * a + &(l.at(s, x, &self.prior_quality) * &keep),
            _ => quality * a + &(&self.prior_quality * &keep),
        };
        let at = &self.token_weight;
        let z = tokens.mapv(|t| t.max(0.0).ln_1p()) * at + &(&self.prior_log_tokens * &at.mapv(|w| 1.0 - w));
        (q, z.mapv(|v| (v.exp() - 1.0).max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn weight_one_is_identity_and_zero_is_the_mean() {
        let q = array![[0.9f32, 0.1], [0.5, 0.3]];
        let t = array![[99.0f32, 9.0], [9.0, 99.0]];
        let mask = array![[1.0f32, 1.0], [1.0, 0.0]];
        let s = Shrink::priors(&q, &t.mapv(|v| v.ln_1p()), &mask, 1.0);
        assert!((s.prior_quality[0] - 0.7).abs() < 1e-6 && (s.prior_quality[1] - 0.1).abs() < 1e-6);
        let x = Array2::<f32>::zeros((2, 1));
        let (q1, t1) = s.apply(None, x.view(), &q, &t);
        assert!(q1.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-6));
        assert!(t1.iter().zip(&t).all(|(a, b)| (a - b).abs() / b < 1e-5));
        let s0 = Shrink { weight: Array1::zeros(2), token_weight: Array1::zeros(2), ..s };
        let (q0, t0) = s0.apply(None, x.view(), &q, &t);
        assert!((q0[[1, 0]] - 0.7).abs() < 1e-6 && (t0[[0, 1]] - 9.0).abs() < 1e-4);
    }
}
