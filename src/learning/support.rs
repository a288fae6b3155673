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
//! Dividing by the rate means a model that was routed to rarely is not penalised for being rare,
//! only for being absent from this region. The serving side compares models relatively
//! (`routing.min_relative_support`), and every prompt has k neighbours, so a prompt unlike
//! anything in training never excludes every model.
//!
//! Measured on the shared data (500 held-out prompts, k = 16, threshold 0.05): zeroeval's models
//! fall under the threshold on 58% of alpaca prompts and alpaca's on 95% of zeroeval prompts
//! (many alpaca instructions are maths or code, where the math models' evidence is real), while
//! a model is wrongly excluded in its own domain on 0% (zeroeval) and 4% (alpaca) of prompts,
//! and a model observed on a random 44% of prompts is never excluded. A softmax kernel
//! (temperature 0.02) separated the domains more sharply (79% / 98%) but excluded partially
//! observed models near prompts they happened not to be tried on, which production logs (one
//! model per prompt) are full of.
//!
//! It is exported as a third ONNX output next to quality and tokens.
use ndarray::{Array2, ArrayView2, Axis};

/// Name of the support output.
pub const SUPPORT_OUTPUT: &str = "support";
/// Default number of neighbours.
pub const DEFAULT_NEIGHBOURS: usize = 16;

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
        let rows = mask.nrows() as f32;
        let inv_rate = mask.sum_axis(Axis(0)).mapv(|c| if c > 0.0 { rows / c } else { 0.0 });
        let weights = &mask * &inv_rate.insert_axis(Axis(0));
        let mut keys = keys.to_owned();
        for mut row in keys.rows_mut() {
            let n = row.dot(&row).sqrt().max(f32::MIN_POSITIVE);
            row.mapv_inplace(|v| v / n);
        }
        Support { keys, weights, k: k.clamp(1, mask.nrows().max(1)) }
    }

    /// Support of every model at each row of `x` ([N, D], L2-normalised), as the graph computes it.
    pub fn compute(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let sim = x.dot(&self.keys.t());
        let mut out = Array2::zeros((x.nrows(), self.weights.ncols()));
        for (r, row) in sim.rows().into_iter().enumerate() {
            let mut order: Vec<usize> = (0..row.len()).collect();
            // Ties by index, as ONNX TopK breaks them.
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for &i in &order[..self.k] {
                out.row_mut(r).scaled_add(1.0 / self.k as f32, &self.weights.row(i));
            }
        }
        out
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
