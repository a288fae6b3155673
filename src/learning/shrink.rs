//! Shrinking the head's predictions towards each model's average.
//!
//! With many candidates, routing takes an argmax over noisy per-model estimates and so favours
//! the model that was lucky on similar prompts (the winner's curse). Pulling every prediction
//! towards that model's training mean, `a * predicted + (1 - a) * mean` (quality in probability,
//! tokens in log space), trades a little accuracy for much less of that: at `a = 0` the router
//! sends each price point to the best single model, so it cannot fall below the single-model
//! frontier by much, and larger `a` lets per-prompt evidence move it.
//!
//! `a` is chosen per model family by `switchyard train` on the early-stopping prompts (never the
//! held-out ones): for each log file, the prompts answered by every catalog model form a full
//! matrix on which the share of the single-to-oracle gap each `a` closes is measured, and the
//! best `a` applies to that file's models (their scores share one scale and one noise level).
//! Models in no such file get the mean of the chosen weights, or the default.
use ndarray::{Array1, Array2};

/// The shrinkage applied in the exported graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Shrink {
    /// Weight of the head's own prediction per model, in [0, 1].
    pub weight: Array1<f32>,
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
            prior_quality: (quality * mask).sum_axis(ndarray::Axis(0)) / &n,
            prior_log_tokens: (log_tokens * mask).sum_axis(ndarray::Axis(0)) / &n,
        }
    }

    /// Applies the shrinkage to raw head outputs (quality, tokens), as the graph does.
    pub fn apply(&self, quality: &Array2<f32>, tokens: &Array2<f32>) -> (Array2<f32>, Array2<f32>) {
        let a = &self.weight;
        let keep = a.mapv(|w| 1.0 - w);
        let q = quality * a + &(&self.prior_quality * &keep);
        let z = tokens.mapv(|t| t.max(0.0).ln_1p()) * a + &(&self.prior_log_tokens * &keep);
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
        let (q1, t1) = s.apply(&q, &t);
        assert!(q1.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-6));
        assert!(t1.iter().zip(&t).all(|(a, b)| (a - b).abs() / b < 1e-5));
        let s0 = Shrink { weight: Array1::zeros(2), ..s };
        let (q0, t0) = s0.apply(&q, &t);
        assert!((q0[[1, 0]] - 0.7).abs() < 1e-6 && (t0[[0, 1]] - 9.0).abs() < 1e-4);
    }
}
