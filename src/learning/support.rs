//! Domain of competence: how much training evidence a head has for each model near a prompt.
//!
//! A head trained on logs where some models were only ever tried on some kinds of prompt (the
//! shared data: math models on math, chat models on chat) extrapolates freely elsewhere, and an
//! MLP's extrapolation is not evidence. `Support` measures, per model, how often that model was
//! observed among the `k` training prompts nearest the query (cosine), relative to how often it
//! was observed overall:
//!
//! `support[m](x) = mean over the k nearest training prompts of observed[k, m] / rate[m]`,
//! `rate[m]` = m's share of the training prompts,
//!
//! so about 1 means "observed here as often as anywhere", 0 means "never observed near here".
//! The serving side (`Head::domain_chance`) turns it back into a count of neighbours and asks
//! how likely so few would be by chance if the model had been tried here as often as anywhere
//! (a binomial tail at its overall rate); below `routing.out_of_domain_p` (0.01) the model is
//! left out of that request. The test is what makes the rule safe on production logs, where
//! each prompt was answered by one model: a model routed to 5% of the time is expected on 1.6
//! of 32 neighbours, sees none 19% of the time, and is never excluded for it, while a model
//! tried on 78% of all prompts but on 3 of these 32 is.
//!
//! On the shared data (k = 32, p < 0.01): a chit-chat prompt leaves out 55 of the 82 catalog
//! models (the math and code family), a competition-math prompt 39 (the chat family and the
//! math models evaluated only on other subsets). Earlier forms measured worse: a softmax kernel
//! (temperature 0.02) with a relative threshold separated the two families but excluded
//! partially observed models near prompts they happened not to be tried on; the top-k mean
//! with a relative threshold let the chat family answer competition math.
//!
//! It is exported as a third ONNX output next to quality and tokens.
use ndarray::{Array2, ArrayView2, Axis};

/// Name of the support output.
pub const SUPPORT_OUTPUT: &str = "support";
/// Default number of neighbours.
pub const DEFAULT_NEIGHBOURS: usize = 32;

/// The training prompts and which models were observed on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    /// Training prompt embeddings, L2-normalised, [K, D].
    pub keys: Array2<f32>,
    /// `mask[k, m] / rate[m]` ([K, M]) with `rate[m] = count[m] / K`.
    pub weights: Array2<f32>,
    /// Neighbours averaged over.
    pub k: usize,
}

impl Support {
    /// Builds the index from embeddings [K, D] and the observation mask [K, M].
    pub fn new(keys: ArrayView2<f32>, mask: ArrayView2<f32>, k: usize) -> Self {
        Self::scoped(keys, mask, k, &vec![mask.nrows(); mask.ncols()])
    }

    /// Like [`Support::new`], with each model's rate taken over `scope[m]` keys instead of all of
    /// them: the keys of its own model family's block. A head trained on several benchmarks holds
    /// each benchmark's prompts in its own block, and a model's rate over all keys (18% for a
    /// zeroeval model among the three shared files) would let a prompt with a couple of zeroeval
    /// neighbours in 32 pass as "observed here as often as anywhere"; over its block (about 100%)
    /// it does not.
    pub fn scoped(keys: ArrayView2<f32>, mask: ArrayView2<f32>, k: usize, scope: &[usize]) -> Self {
        let counts = mask.sum_axis(Axis(0));
        let inv_rate =
            ndarray::Array1::from_iter(counts.iter().zip(scope).map(|(&c, &n)| if c > 0.0 { n as f32 / c.min(n as f32) } else { 0.0 }));
        let weights = &mask * &inv_rate.insert_axis(Axis(0));
        let mut keys = keys.to_owned();
        for mut row in keys.rows_mut() {
            let n = row.dot(&row).sqrt().max(f32::MIN_POSITIVE);
            row.mapv_inplace(|v| v / n);
        }
        Support { keys, weights, k: k.clamp(1, mask.nrows().max(1)) }
    }

    /// Each model's share of the indexed prompts (the `rate` above; 0 for a model never observed).
    pub fn rates(&self) -> Vec<f32> {
        self.weights.columns().into_iter().map(|c| c.fold(0.0f32, |a, &b| a.max(b))).map(|w| if w > 0.0 { 1.0 / w } else { 0.0 }).collect()
    }

    /// Support of every model at each row of `x` ([N, D], L2-normalised), as the graph computes it.
    pub fn compute(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let mut out = Array2::zeros((x.nrows(), self.weights.ncols()));
        for (r, near) in self.nearest(x, self.k, self.keys.nrows()).into_iter().enumerate() {
            for i in near {
                out.row_mut(r).scaled_add(1.0 / self.k as f32, &self.weights.row(i));
            }
        }
        out
    }

    /// The `k` most similar of the first `limit` keys to each row of `x`, most similar first
    /// (ties by index, as ONNX TopK breaks them).
    pub fn nearest(&self, x: ArrayView2<f32>, k: usize, limit: usize) -> Vec<Vec<usize>> {
        self.nearest_in(x, k, 0..limit.min(self.keys.nrows()))
    }

    /// The `k` most similar keys of `range` to each row of `x` (key indices), most similar first
    /// (ties by index, as ONNX TopK breaks them).
    pub fn nearest_in(&self, x: ArrayView2<f32>, k: usize, range: std::ops::Range<usize>) -> Vec<Vec<usize>> {
        let range = range.start.min(self.keys.nrows())..range.end.min(self.keys.nrows());
        let near = crate::learning::knn::neighbours(x, self.keys.slice(ndarray::s![range.clone(), ..]), k);
        near.into_iter().map(|v| v.into_iter().map(|i| i + range.start).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn support_is_high_where_a_model_was_observed_and_low_elsewhere() {
        let keys = array![[1.0f32, 0.0], [0.0, 1.0]];
        // Model 0 observed on prompt 0 only, model 1 on both.
        let mask = array![[1.0f32, 1.0], [0.0, 1.0]];
        let s = Support::new(keys.view(), mask.view(), 1);
        let out = s.compute(array![[1.0f32, 0.0], [0.0, 1.0]].view());
        // Model 0 has rate 1/2: observed on the nearest prompt, so support ~2 there.
        assert!((out[[0, 0]] - 2.0).abs() < 1e-4, "{out}");
        assert!(out[[1, 0]] < 1e-6, "model 0 never saw anything like prompt 1");
        assert!((out[[1, 1]] - 1.0).abs() < 1e-6, "model 1 is observed everywhere: support 1");
    }
}
