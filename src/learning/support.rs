//! Domain of competence: how much training evidence a head has for each model near a prompt.
//!
//! A head trained on logs where some models were only ever tried on some kinds of prompt (the
//! shared data: math models on math, chat models on chat) extrapolates freely elsewhere, and an
//! MLP's extrapolation is not evidence. `Support` measures, per model, how often that model was
//! observed among the training prompts nearest the query, relative to how often it was observed
//! overall:
//!
//! `w_k(x) = softmax_k(cos(x, e_k) / tau)` (attention over the training prompts)
//! `support[m](x) = sum_k w_k(x) * observed[k, m] / rate[m]`, `rate[m]` = m's share of prompts
//!
//! so about 1 means "observed here as often as anywhere", 0 means "never observed near here".
//! Dividing by the rate means a model that was routed to rarely is not penalised for being rare,
//! only for being absent from this region. The serving side compares models relatively
//! (`routing.min_relative_support`); the softmax makes a prompt unlike anything in training
//! lean on its nearest neighbours all the same, so it never excludes every model.
//!
//! Measured on the shared data (500 held-out prompts, tau 0.02, threshold 0.05): zeroeval's
//! models fall under the threshold on 79% of alpaca prompts and alpaca's on 98% of zeroeval
//! prompts, while a model is wrongly excluded in its own domain on 0% (zeroeval) and 6%
//! (alpaca) of prompts. In logs from one traffic distribution every model is observed
//! everywhere and the rule excludes nothing; a model tried only a handful of times can still
//! fall under it by chance, so set the threshold to 0 while exploring a new model.
//!
//! It is exported as a third ONNX output next to quality and tokens.
use ndarray::{Array2, ArrayView2, Axis};

/// Name of the support output.
pub const SUPPORT_OUTPUT: &str = "support";
/// Default softmax temperature: a neighbour 0.02 less similar weighs e^-1 as much.
pub const DEFAULT_TAU: f32 = 0.02;

/// The training prompts and which models were observed on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    /// Training prompt embeddings, L2-normalised, [K, D].
    pub keys: Array2<f32>,
    /// `mask[k, m] / rate[m]` ([K, M]) with `rate[m] = count[m] / K`.
    pub weights: Array2<f32>,
    /// Softmax temperature.
    pub tau: f32,
}

impl Support {
    /// Builds the index from embeddings [K, D] and the observation mask [K, M].
    pub fn new(keys: ArrayView2<f32>, mask: ArrayView2<f32>, tau: f32) -> Self {
        let k = mask.nrows() as f32;
        let inv_rate = mask.sum_axis(Axis(0)).mapv(|c| if c > 0.0 { k / c } else { 0.0 });
        let weights = &mask * &inv_rate.insert_axis(Axis(0));
        let mut keys = keys.to_owned();
        for mut row in keys.rows_mut() {
            let n = row.dot(&row).sqrt().max(f32::MIN_POSITIVE);
            row.mapv_inplace(|v| v / n);
        }
        Support { keys, weights, tau }
    }

    /// Support of every model at each row of `x` ([N, D], L2-normalised), as the graph computes it.
    pub fn compute(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let inv = 1.0 / self.tau;
        let mut w = x.dot(&self.keys.t()).mapv(|s| s * inv);
        for mut row in w.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
        }
        w.dot(&self.weights)
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
        let s = Support::new(keys.view(), mask.view(), 0.02);
        let out = s.compute(array![[1.0f32, 0.0], [0.0, 1.0]].view());
        // Model 0 has rate 1/2: observed on the nearest prompt, so support ~2 there.
        assert!((out[[0, 0]] - 2.0).abs() < 1e-4, "{out}");
        assert!(out[[1, 0]] < 1e-6, "model 0 never saw anything like prompt 1");
        assert!((out[[1, 1]] - 1.0).abs() < 1e-6, "model 1 is observed everywhere: support 1");
    }
}
