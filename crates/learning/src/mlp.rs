//! The router head: a one-hidden-layer, two-headed MLP with hand-written backprop.
//!
//! ```text
//! x [N, D] -> h = relu(x W1 + b1) [N, H] -> quality       = sigmoid(h Wq + bq)        [N, M]
//!                                        -> output_tokens = max(exp(h Wt + bt) - 1, 0) [N, M]
//! ```
//!
//! Why it is shaped this way:
//! - One shared hidden layer, one column per model in each head: models share what they learn
//!   about prompts, which matters when production logs show each prompt to a single model.
//! - The token head regresses `z = ln(1 + output_tokens)` ([`encode_tokens`]); predicted tokens
//!   are its exact inverse clamped at zero ([`decode_tokens`]). `ln(1 + t)` is defined for the
//!   zero-token answers that real logs contain, and the log scale makes a 50-vs-100 token miss
//!   cost as much as 500-vs-1000. Being a log-scale regression, the prediction estimates the
//!   geometric mean (about the median) of `1 + t`, not its arithmetic mean.
//! - The math is written out on `ndarray` (`dot` for every product): the network is a few
//!   hundred thousand parameters and trains in seconds, so a framework is not worth its weight.
//! - [`Mlp::predict`] is the contract with the ONNX export: same operations, same order, f32.
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};

use super::{rng::SplitMix64, LearningError};

/// Training target for an output token count: `ln(1 + tokens)`.
pub fn encode_tokens(tokens: u32) -> f32 {
    // In f64 so that large counts round-trip through `decode_tokens` to the nearest token.
    (f64::from(tokens)).ln_1p() as f32
}

/// Predicted output tokens from a log-token output `z`: `max(exp(z) - 1, 0)`, computed in f32
/// exactly as the ONNX graph does (`Exp`, `Sub`, `Relu`).
pub fn decode_tokens(z: f32) -> f32 {
    (z.exp() - 1.0).max(0.0)
}

/// The trained head. Weights are stored input-major (`x W`), as the ONNX graph uses them.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub(super) w1: Array2<f32>,
    pub(super) b1: Array1<f32>,
    pub(super) wq: Array2<f32>,
    pub(super) bq: Array1<f32>,
    pub(super) wt: Array2<f32>,
    pub(super) bt: Array1<f32>,
}

/// Per-batch loss sums, before averaging over the observed pairs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LossSums {
    /// Sum of masked binary cross-entropy terms.
    pub bce: f64,
    /// Sum of masked squared log-token errors.
    pub sq: f64,
    /// Number of observed pairs.
    pub observed: f64,
}

impl LossSums {
    /// The training objective: mean BCE + `token_weight` * mean squared log-token error.
    pub fn loss(&self, token_weight: f32) -> f64 {
        (self.bce + f64::from(token_weight) * self.sq) / self.observed
    }
}

impl Mlp {
    /// Builds a head from its weights: `w1 [D, H]`, `b1 [H]`, `wq [H, M]`, `bq [M]`,
    /// `wt [H, M]`, `bt [M]`.
    ///
    /// # Errors
    /// [`LearningError::ShapeMismatch`] if the shapes disagree, [`LearningError::InvalidValue`]
    /// if a weight is not finite.
    pub fn from_parts(
        w1: Array2<f32>,
        b1: Array1<f32>,
        wq: Array2<f32>,
        bq: Array1<f32>,
        wt: Array2<f32>,
        bt: Array1<f32>,
    ) -> Result<Self, LearningError> {
        let (h, m) = (w1.ncols(), bq.len());
        let checks: [(&'static str, usize, usize); 6] = [
            ("b1 length vs hidden size", h, b1.len()),
            ("wq rows vs hidden size", h, wq.nrows()),
            ("wq columns vs models", m, wq.ncols()),
            ("wt rows vs hidden size", h, wt.nrows()),
            ("wt columns vs models", m, wt.ncols()),
            ("bt length vs models", m, bt.len()),
        ];
        super::check_shapes(&checks)?;
        // Standard layout lets the optimizer treat every tensor as a flat slice.
        let mlp = Mlp {
            w1: w1.as_standard_layout().into_owned(),
            b1,
            wq: wq.as_standard_layout().into_owned(),
            bq,
            wt: wt.as_standard_layout().into_owned(),
            bt,
        };
        if !mlp.slices().iter().all(|s| s.iter().all(|v| v.is_finite())) {
            return Err(LearningError::InvalidValue { what: "mlp weights (must be finite)" });
        }
        Ok(mlp)
    }

    /// Input (embedding) dimension `D`.
    pub fn input_dim(&self) -> usize {
        self.w1.nrows()
    }

    /// Hidden layer width `H`.
    pub fn hidden_dim(&self) -> usize {
        self.w1.ncols()
    }

    /// Number of models `M` (columns of both outputs).
    pub fn n_models(&self) -> usize {
        self.bq.len()
    }

    /// First layer weights `[D, H]`.
    pub fn w1(&self) -> ArrayView2<'_, f32> {
        self.w1.view()
    }

    /// First layer bias `[H]`.
    pub fn b1(&self) -> ArrayView1<'_, f32> {
        self.b1.view()
    }

    /// Quality head weights `[H, M]`.
    pub fn wq(&self) -> ArrayView2<'_, f32> {
        self.wq.view()
    }

    /// Quality head bias `[M]` (logits).
    pub fn bq(&self) -> ArrayView1<'_, f32> {
        self.bq.view()
    }

    /// Token head weights `[H, M]`.
    pub fn wt(&self) -> ArrayView2<'_, f32> {
        self.wt.view()
    }

    /// Token head bias `[M]` (in `ln(1 + tokens)` units).
    pub fn bt(&self) -> ArrayView1<'_, f32> {
        self.bt.view()
    }

    /// Predicted quality in `[0, 1]` and predicted output tokens (>= 0), both `[N, M]`, for
    /// embeddings `x [N, D]`; the same numbers as the exported ONNX graph, up to float
    /// summation order.
    ///
    /// Panics if `x.ncols() != self.input_dim()`.
    pub fn predict(&self, x: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
        let (_, hidden) = self.hidden(x);
        let quality = self.quality_logits(hidden.view()).mapv_into(sigmoid);
        let tokens = self.log_tokens(hidden.view()).mapv_into(decode_tokens);
        (quality, tokens)
    }

    /// A head that ignores its input: zero output weights, so it predicts `sigmoid(bq)` and
    /// `decode_tokens(bt)` everywhere. With per-model means as biases this is the baseline,
    /// and with random `w1` it is the starting point of training.
    pub(super) fn constant(w1: Array2<f32>, bq: Array1<f32>, bt: Array1<f32>) -> Self {
        let (h, m) = (w1.ncols(), bq.len());
        Mlp { w1, b1: Array1::zeros(h), wq: Array2::zeros((h, m)), bq, wt: Array2::zeros((h, m)), bt }
    }

    /// He-normal first layer, zero heads, given output biases.
    pub(super) fn init(d: usize, h: usize, bq: Array1<f32>, bt: Array1<f32>, rng: &mut SplitMix64) -> Self {
        // NOTE: zero heads make the untrained model exactly the per-model-mean baseline; the
        // hidden layer starts learning from the second step, once the heads are non-zero.
        let std = (2.0 / d.max(1) as f64).sqrt();
        let w1 = Array2::from_shape_simple_fn((d, h), || (rng.next_normal() * std) as f32);
        Mlp::constant(w1, bq, bt)
    }

    /// Same shapes, all zeros (gradient and optimizer-moment buffers).
    pub(super) fn zeros_like(&self) -> Self {
        Mlp {
            w1: Array2::zeros(self.w1.raw_dim()),
            b1: Array1::zeros(self.b1.raw_dim()),
            wq: Array2::zeros(self.wq.raw_dim()),
            bq: Array1::zeros(self.bq.raw_dim()),
            wt: Array2::zeros(self.wt.raw_dim()),
            bt: Array1::zeros(self.bt.raw_dim()),
        }
    }

    /// Every tensor as a flat slice, in the order w1, b1, wq, bq, wt, bt.
    pub(super) fn slices(&self) -> [&[f32]; 6] {
        const MSG: &str = "Mlp tensors are in standard layout. This is a bug.";
        [
            self.w1.as_slice().expect(MSG),
            self.b1.as_slice().expect(MSG),
            self.wq.as_slice().expect(MSG),
            self.bq.as_slice().expect(MSG),
            self.wt.as_slice().expect(MSG),
            self.bt.as_slice().expect(MSG),
        ]
    }

    /// Mutable version of [`Mlp::slices`].
    pub(super) fn slices_mut(&mut self) -> [&mut [f32]; 6] {
        const MSG: &str = "Mlp tensors are in standard layout. This is a bug.";
        [
            self.w1.as_slice_mut().expect(MSG),
            self.b1.as_slice_mut().expect(MSG),
            self.wq.as_slice_mut().expect(MSG),
            self.bq.as_slice_mut().expect(MSG),
            self.wt.as_slice_mut().expect(MSG),
            self.bt.as_slice_mut().expect(MSG),
        ]
    }

    /// Which of [`Mlp::slices`] are weight matrices (decayed) rather than biases (not decayed).
    pub(super) const IS_WEIGHT: [bool; 6] = [true, false, true, false, true, false];

    /// Rewrites a head trained on `(x - mean) * scale` into one that takes raw `x`:
    /// `W1' = scale * W1`, `b1' = b1 - scale * (mean W1)`.
    pub(super) fn fold_input_scaling(&self, mean: ArrayView1<f32>, scale: f32) -> Self {
        let mut out = self.clone();
        out.b1 = &self.b1 - &(mean.dot(&self.w1) * scale);
        out.w1 = &self.w1 * scale;
        out
    }

    /// Hidden-layer activations `relu(x W1 + b1)`: the features a new model's output is fitted on.
    pub fn features(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.hidden(x).1
    }

    /// Pre-activation and activation of the hidden layer.
    fn hidden(&self, x: ArrayView2<f32>) -> (Array2<f32>, Array2<f32>) {
        let pre = x.dot(&self.w1) + &self.b1;
        let act = pre.mapv(|v| v.max(0.0));
        (pre, act)
    }

    fn quality_logits(&self, hidden: ArrayView2<f32>) -> Array2<f32> {
        hidden.dot(&self.wq) + &self.bq
    }

    fn log_tokens(&self, hidden: ArrayView2<f32>) -> Array2<f32> {
        hidden.dot(&self.wt) + &self.bt
    }

    /// Loss sums of a batch without gradients (validation).
    pub(super) fn loss_sums(
        &self,
        x: ArrayView2<f32>,
        quality: ArrayView2<f32>,
        log_tokens: ArrayView2<f32>,
        mask: ArrayView2<f32>,
    ) -> LossSums {
        let (_, hidden) = self.hidden(x);
        let logits = self.quality_logits(hidden.view());
        let z = self.log_tokens(hidden.view());
        let mut sums = LossSums::default();
        Zip::from(&logits).and(&z).and(quality).and(log_tokens).and(mask).for_each(|&l, &z, &q, &t, &m| {
            if m > 0.0 {
                sums.bce += f64::from(m * bce_with_logit(l, q));
                sums.sq += f64::from(m * (z - t) * (z - t));
                sums.observed += f64::from(m);
            }
        });
        sums
    }

    /// Loss sums of a batch and the gradient of the batch's mean loss
    /// `(sum BCE + token_weight * sum sq) / observed` with respect to every tensor, written
    /// into `grads` (overwritten). A batch with no observed pair yields zero gradients.
    pub(super) fn loss_and_grads(
        &self,
        x: ArrayView2<f32>,
        quality: ArrayView2<f32>,
        log_tokens: ArrayView2<f32>,
        mask: ArrayView2<f32>,
        token_weight: f32,
        grads: &mut Mlp,
    ) -> LossSums {
        let (pre, hidden) = self.hidden(x);
        let logits = self.quality_logits(hidden.view());
        let z = self.log_tokens(hidden.view());

        let observed: f32 = mask.sum();
        let inv_n = if observed > 0.0 { 1.0 / observed } else { 0.0 };
        let mut sums = LossSums { observed: f64::from(observed), ..LossSums::default() };
        // d loss / d logit = (sigmoid(l) - q) / n ; d loss / d z = 2 w (z - t) / n, masked.
        let mut d_logits = Array2::<f32>::zeros(logits.raw_dim());
        let mut d_z = Array2::<f32>::zeros(z.raw_dim());
        Zip::from(&mut d_logits).and(&logits).and(quality).and(mask).for_each(|dl, &l, &q, &m| {
            if m > 0.0 {
                sums.bce += f64::from(m * bce_with_logit(l, q));
                *dl = m * (sigmoid(l) - q) * inv_n;
            }
        });
        Zip::from(&mut d_z).and(&z).and(log_tokens).and(mask).for_each(|dz, &z, &t, &m| {
            if m > 0.0 {
                sums.sq += f64::from(m * (z - t) * (z - t));
                *dz = m * 2.0 * token_weight * (z - t) * inv_n;
            }
        });

        // NOTE: `dot` may return column-major results for some shapes (seen with one model per
        // family); the optimizer walks parameters and gradients as flat row-major slices.
        let standard = |a: Array2<f32>| if a.is_standard_layout() { a } else { a.as_standard_layout().into_owned() };
        grads.wq = standard(hidden.t().dot(&d_logits));
        grads.bq = d_logits.sum_axis(Axis(0));
        grads.wt = standard(hidden.t().dot(&d_z));
        grads.bt = d_z.sum_axis(Axis(0));
        let mut d_hidden = d_logits.dot(&self.wq.t()) + d_z.dot(&self.wt.t());
        Zip::from(&mut d_hidden).and(&pre).for_each(|d, &p| {
            if p <= 0.0 {
                *d = 0.0;
            }
        });
        grads.w1 = standard(x.t().dot(&d_hidden));
        grads.b1 = d_hidden.sum_axis(Axis(0));
        sums
    }
}

/// Logistic function, written as the ONNX `Sigmoid` op defines it.
pub(super) fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// `BCE(sigmoid(l), q)` for a soft target `q`, stable for any logit:
/// `softplus(l) - q l` with `softplus(l) = max(l, 0) + ln(1 + exp(-|l|))`.
pub(super) fn bce_with_logit(l: f32, q: f32) -> f32 {
    l.max(0.0) + (-l.abs()).exp().ln_1p() - q * l
}

/// Adam (Kingma and Ba 2015) with classic L2 weight decay on weight matrices: the decay is added
/// to the gradient, so the objective is `loss + weight_decay / 2 * |W|^2` (biases not decayed).
pub(super) struct Adam {
    m: Mlp,
    v: Mlp,
    step: i32,
}

impl Adam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    pub fn new(model: &Mlp) -> Self {
        Adam { m: model.zeros_like(), v: model.zeros_like(), step: 0 }
    }

    pub fn step(&mut self, model: &mut Mlp, grads: &Mlp, learning_rate: f32, weight_decay: f32) {
        self.step += 1;
        let c1 = 1.0 - Self::BETA1.powi(self.step);
        let c2 = 1.0 - Self::BETA2.powi(self.step);
        let params = model.slices_mut();
        let grads = grads.slices();
        let ms = self.m.slices_mut();
        let vs = self.v.slices_mut();
        for ((((p, g), m), v), is_weight) in params.into_iter().zip(grads).zip(ms).zip(vs).zip(Mlp::IS_WEIGHT) {
            let decay = if is_weight { weight_decay } else { 0.0 };
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                let g = g + decay * *p;
                *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
                *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
                *p -= learning_rate * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: (usize, usize), rng: &mut SplitMix64, scale: f64) -> Array2<f32> {
        Array2::from_shape_simple_fn(shape, || (rng.next_normal() * scale) as f32)
    }

    /// Central finite differences against the analytic gradient, for every parameter.
    #[test]
    fn gradients_match_finite_differences() {
        let (n, d, h, m) = (7, 5, 6, 4);
        let mut rng = SplitMix64::new(42);
        let model = Mlp::from_parts(
            random((d, h), &mut rng, 0.8),
            random((1, h), &mut rng, 0.3).remove_axis(Axis(0)),
            random((h, m), &mut rng, 0.8),
            random((1, m), &mut rng, 0.3).remove_axis(Axis(0)),
            random((h, m), &mut rng, 0.8),
            random((1, m), &mut rng, 0.3).remove_axis(Axis(0)),
        )
        .expect("valid shapes");
        let x = random((n, d), &mut rng, 1.0);
        let quality = Array2::from_shape_simple_fn((n, m), || rng.next_f64() as f32);
        let log_tokens = random((n, m), &mut rng, 1.0);
        let mask = Array2::from_shape_simple_fn((n, m), || if rng.next_f64() < 0.6 { 1.0 } else { 0.0 });
        let w = 0.7;
        let loss = |mlp: &Mlp| mlp.loss_sums(x.view(), quality.view(), log_tokens.view(), mask.view()).loss(w);

        let mut grads = model.zeros_like();
        let sums = model.loss_and_grads(x.view(), quality.view(), log_tokens.view(), mask.view(), w, &mut grads);
        assert!((sums.loss(w) - loss(&model)).abs() < 1e-6);

        let eps = 1e-2f32;
        let mut checked = 0;
        for t in 0..6 {
            for i in 0..model.slices()[t].len() {
                let mut plus = model.clone();
                plus.slices_mut()[t][i] += eps;
                let mut minus = model.clone();
                minus.slices_mut()[t][i] -= eps;
                let numeric = (loss(&plus) - loss(&minus)) / (2.0 * f64::from(eps));
                let analytic = f64::from(grads.slices()[t][i]);
                assert!(
                    (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                    "tensor {t} index {i}: numeric {numeric} vs analytic {analytic}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, d * h + h + 2 * (h * m + m));
    }

    #[test]
    fn token_transform_round_trips_and_clamps() {
        for t in [0u32, 1, 7, 250, 4852, 100_000] {
            assert_eq!(decode_tokens(encode_tokens(t)).round() as u32, t);
        }
        assert_eq!(decode_tokens(-3.0), 0.0);
    }

    #[test]
    fn folding_input_scaling_preserves_predictions() {
        let mut rng = SplitMix64::new(3);
        let mut model = Mlp::init(8, 5, Array1::from_elem(3, 0.2), Array1::from_elem(3, 4.0), &mut rng);
        model.wq = random((5, 3), &mut rng, 0.5);
        model.wt = random((5, 3), &mut rng, 0.5);
        let mean = random((1, 8), &mut rng, 1.0).remove_axis(Axis(0));
        let scale = 3.5;
        let x = random((4, 8), &mut rng, 1.0);
        let (q_ref, t_ref) = model.predict(((&x - &mean) * scale).view());
        let (q, t) = model.fold_input_scaling(mean.view(), scale).predict(x.view());
        Zip::from(&q).and(&q_ref).for_each(|a, b| assert!((a - b).abs() < 1e-5));
        Zip::from(&t).and(&t_ref).for_each(|a, b| assert!((a - b).abs() <= 1e-4 * b.max(1.0)));
    }
}
