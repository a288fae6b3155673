//! How the graph combines a family's head with the kNN prior and each model's mean.
//!
//! Quality: `w * head + (1 - w) * prior` per model, where the prior is the kNN with shrinkage
//! ([`LocalPrior`]: the model's mean on the prompt's `k` nearest training prompts pulled towards
//! its global mean by `b` pseudo-observations) or, for a model without one, its global mean.
//! `w` = 1 is the head alone, 0 the kNN alone, in between a blend; the trainer chooses per model
//! family by inner cross-validation (`job::select`). Tokens: `w_t * head + (1 - w_t) * mean` in
//! log space, `w_t` 1 when the head predicts tokens, 0 for each model's mean; or, for the models
//! the trainer gives them ([`LocalPrior::token_models`]), the neighbours' arithmetic mean tokens
//! shrunk the same way as their quality (cost is linear in tokens, so the mean prices the
//! expected cost, where a log-space prediction prices the typical answer and under-prices the
//! long tail).
//!
//! Why a prior at all: with many candidates, routing takes an argmax over noisy per-model
//! estimates and so favours the model that was lucky on similar prompts (the winner's curse);
//! pulling towards a smoother estimate trades a little accuracy for much less of that.
use ndarray::{Array1, Array2, ArrayView2};

use super::support::Support;
pub use pointsman_core::predictor::graph::MemoryBlock;

/// The per-prompt quality prior of [`Shrink`]: each model's mean observed quality on the
/// query's `k[m]` nearest memory prompts, `(sum + b[m] * prior) / (count + b[m])` (a kNN router
/// with shrinkage, `learning::knn`). The memory is the first `keys` keys of the head's support
/// index, in blocks, one per model family: a model's neighbours are searched in its family's
/// block only, so a prompt's neighbours from another log file (which never saw the model)
/// cannot dilute its estimate. A model added later by `extend` appends keys after the memory
/// and leaves this prior, and so every older model's prediction, unchanged. Each model has its
/// own `k` and `b` (the trainer chooses them per family); `k[m] = 0` leaves `m` at its global mean.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPrior {
    /// Neighbours averaged over, per model (0: none, the global mean).
    pub k: Vec<usize>,
    /// How many of the support index's keys (from the first) are this prior's memory.
    pub keys: usize,
    /// The memory's blocks: which keys each family's models search.
    pub blocks: Vec<MemoryBlock>,
    /// Observed quality per memory prompt and model, 0 where unobserved: [keys, M].
    pub quality_sum: Array2<f32>,
    /// 1 where observed: [keys, M]. A zero column makes that model's prior its global mean.
    pub count: Array2<f32>,
    /// Pseudo-count of the global mean, per model (at least [`MIN_KAPPA`], so a query with no
    /// observed neighbour gets the global mean rather than 0/0).
    pub kappa: Vec<f32>,
    /// Models whose output tokens come from the same neighbours: `(sum of tokens + b * mean
    /// tokens) / (count + b)` with their own `k` and `b` (each has `k > 0`).
    pub token_models: Vec<usize>,
    /// Observed output tokens per memory prompt and model, 0 where unobserved and in the columns
    /// of models not in `token_models`: [keys, M].
    pub token_sum: Array2<f32>,
    /// Each model's mean output tokens over the training prompts (arithmetic), for `token_models`.
    pub mean_tokens: Vec<f32>,
}

/// Smallest pseudo-count the graph uses: `b = 0` is stored as this, which changes a mean over at
/// least one observed neighbour by under 0.1% and turns "no neighbour observed" into the global mean.
pub const MIN_KAPPA: f32 = 1e-3;

impl LocalPrior {
    /// The prior from the memory prompts' outcomes ([keys, M] each), with per-model neighbours
    /// `k` (0 for a model without one) and pseudo-counts `kappa`. A model in no block gets none.
    pub fn new(quality: &Array2<f32>, mask: &Array2<f32>, blocks: Vec<MemoryBlock>, k: &[usize], kappa: &[f32]) -> Self {
        let keys = quality.nrows();
        let mut sum = quality * mask;
        let mut count = mask.clone();
        let mut k: Vec<usize> = k.to_vec();
        for (j, kj) in k.iter_mut().enumerate() {
            match blocks.iter().find(|b| b.models.contains(&j)) {
                Some(b) => *kj = (*kj).min(b.end - b.start),
                None => *kj = 0,
            }
            if *kj == 0 {
                sum.column_mut(j).fill(0.0);
                count.column_mut(j).fill(0.0);
            }
        }
        let mut blocks = blocks;
        for b in &mut blocks {
            b.models.retain(|&j| k[j] > 0);
        }
        blocks.retain(|b| !b.models.is_empty() && b.end > b.start);
        let m = sum.ncols();
        LocalPrior {
            k,
            keys,
            blocks,
            quality_sum: sum,
            count,
            kappa: kappa.iter().map(|&b| b.max(MIN_KAPPA)).collect(),
            token_models: Vec::new(),
            token_sum: Array2::zeros((keys, m)),
            mean_tokens: vec![0.0; m],
        }
    }

    /// The same prior, also predicting the output tokens of `models` (those with neighbours)
    /// from the memory prompts' observed `tokens` ([keys, M], arithmetic, 0 where unobserved),
    /// each shrunk towards its `mean` tokens.
    pub fn with_tokens(mut self, tokens: &Array2<f32>, models: &[usize], mean: &Array1<f32>) -> Self {
        let mut models: Vec<usize> = models.iter().copied().filter(|&j| self.k.get(j).is_some_and(|&k| k > 0)).collect();
        models.sort_unstable();
        models.dedup();
        self.token_sum.fill(0.0);
        for &j in &models {
            self.token_sum.column_mut(j).assign(&(&tokens.column(j) * &self.count.column(j)));
        }
        self.mean_tokens = mean.to_vec();
        self.token_models = models;
        self
    }

    /// What the manifest says of it.
    pub fn spec(&self) -> pointsman_core::predictor::manifest::LocalPriorSpec {
        pointsman_core::predictor::manifest::LocalPriorSpec {
            neighbours: self.k.clone(),
            kappa: self.kappa.clone(),
            memory_prompts: self.keys,
            token_models: self.token_models.clone(),
            blocks: self
                .blocks
                .iter()
                .map(|b| pointsman_core::predictor::manifest::MemoryBlockSpec {
                    first_key: b.start,
                    keys: b.end - b.start,
                    models: b.models.clone(),
                })
                .collect(),
        }
    }

    /// The prior at each row of `x` ([N, D], L2-normalised), with `global` as each model's mean:
    /// quality, and output tokens (meaningful in the columns of `token_models` only).
    pub fn at(&self, support: &Support, x: ArrayView2<f32>, global: &Array1<f32>) -> (Array2<f32>, Array2<f32>) {
        let m = self.quality_sum.ncols();
        let mut sum = Array2::from_shape_fn((x.nrows(), m), |(_, j)| global[j] * self.kappa[j]);
        let mut tokens = Array2::from_shape_fn((x.nrows(), m), |(_, j)| self.mean_tokens[j] * self.kappa[j]);
        let mut n = Array2::from_shape_fn((x.nrows(), m), |(_, j)| self.kappa[j]);
        for b in &self.blocks {
            for (r, near) in support.nearest_in(x, b.k_max(&self.k), b.start..b.end).into_iter().enumerate() {
                for &j in &b.models {
                    for &i in near.iter().take(self.k[j]) {
                        sum[[r, j]] += self.quality_sum[[i, j]];
                        tokens[[r, j]] += self.token_sum[[i, j]];
                        n[[r, j]] += self.count[[i, j]];
                    }
                }
            }
        }
        (sum / &n, tokens / &n)
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
        let at = &self.token_weight;
        let mut z = tokens.mapv(|t| t.max(0.0).ln_1p()) * at + &(&self.prior_log_tokens * &at.mapv(|w| 1.0 - w));
        let q = match (&self.local, support) {
            (Some(l), Some(s)) => {
                let (local_q, local_t) = l.at(s, x, &self.prior_quality);
                // Models with kNN tokens: the neighbours' mean tokens alone (their weight is 0).
                for &j in &l.token_models {
                    z.column_mut(j).assign(&local_t.column(j).mapv(|t| t.max(0.0).ln_1p()));
                }
                quality * a + &(local_q * &keep)
            }
            _ => quality * a + &(&self.prior_quality * &keep),
        };
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
