//! The training loop of the router head, and how its predictions are scored.
//!
//! - Masked objective: mean binary cross-entropy (soft targets) of quality plus
//!   `token_loss_weight` times the mean squared error of `ln(1 + tokens)`, both averaged over
//!   the observed pairs of a mini-batch only; Adam with L2 weight decay on weight matrices.
//! - The untrained model is the baseline: output heads start at zero weights with biases at
//!   each model's training mean (quality logit, log tokens), so epoch 0 predicts per-model
//!   means and a prompt region the data never covered drifts back towards them.
//! - Early stopping keeps the weights of the best validation epoch (epoch 0 included), so a
//!   run never returns a higher validation loss than the per-model means. The validation set
//!   thus chooses the epoch: for an unbiased estimate, [`evaluate`] on a third, untouched split.
//! - Reproducible from the seed: initialisation and batch order come from [`SplitMix64`], and
//!   the matmuls are single-threaded.
//!
//! Inputs are centred per feature and scaled by one global factor before training (so that an
//! L2-normalised 384-d embedding, whose components are ~0.05, gives unit-scale activations
//! without distorting its geometry); the scaling is folded into the first layer at the end, so
//! the returned [`Mlp`] takes raw embeddings.
use std::time::Instant;

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::{
    dataset::Dataset,
    mlp::{Adam, LossSums, Mlp},
    rng::SplitMix64,
    LearningError,
};

/// Hyper-parameters of [`train()`].
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Width of the hidden layer. Default 128.
    pub hidden: usize,
    /// Maximum number of passes over the training prompts. Default 200.
    pub epochs: usize,
    /// Prompts per mini-batch. Default 64.
    pub batch_size: usize,
    /// Adam step size. Default 1e-3.
    pub learning_rate: f32,
    /// L2 penalty on weight matrices (not biases), added to the gradient. Default 1e-4.
    pub weight_decay: f32,
    /// Weight of the log-token MSE relative to the quality BCE. Default 0.5.
    pub token_loss_weight: f32,
    /// Stop after this many epochs without a new best validation loss. Default 15.
    pub patience: usize,
    /// Seed of initialisation and batch order.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: 128,
            epochs: 200,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            token_loss_weight: 0.5,
            patience: 15,
            seed: 0x5EED,
        }
    }
}

impl TrainConfig {
    fn validate(&self) -> Result<(), LearningError> {
        let invalid = |field, reason: String| Err(LearningError::InvalidConfig { field, reason });
        if self.hidden == 0 {
            return invalid("hidden", "must be >= 1. Given: 0".into());
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "must be >= 1. Given: 0".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid("learning_rate", format!("must be > 0. Given: {}", self.learning_rate));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return invalid("weight_decay", format!("must be >= 0. Given: {}", self.weight_decay));
        }
        if !(self.token_loss_weight.is_finite() && self.token_loss_weight >= 0.0) {
            return invalid("token_loss_weight", format!("must be >= 0. Given: {}", self.token_loss_weight));
        }
        Ok(())
    }
}

/// Quality of predictions over the observed pairs of a dataset.
///
/// All values are NaN when `observed` is 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Observed (prompt, model) pairs the metrics average over.
    pub observed: usize,
    /// The training objective (mean BCE + token weight * mean squared log-token error).
    pub loss: f32,
    /// Mean |predicted quality - observed score|.
    pub quality_mae: f32,
    /// Brier score: mean (predicted quality - observed score)^2.
    pub quality_brier: f32,
    /// Mean |predicted - observed| in `ln(1 + tokens)` units.
    pub log_tokens_mae: f32,
    /// Median |predicted tokens - observed tokens|, in tokens.
    pub tokens_median_abs_error: f32,
}

/// Outcome of one [`train()`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Epochs actually run (<= `TrainConfig::epochs`).
    pub epochs_run: usize,
    /// Epoch whose weights were kept (0 = the untrained per-model-mean model).
    pub best_epoch: usize,
    /// Mean training loss per epoch, over that epoch's mini-batches (index 0 = epoch 1).
    pub train_loss: Vec<f32>,
    /// Validation loss after each epoch (index 0 = epoch 1); the training loss when the
    /// validation set has no observation.
    pub val_loss: Vec<f32>,
    /// Validation metrics of the returned model.
    pub validation: Metrics,
    /// Validation metrics of the baseline predicting each model's training means.
    pub baseline: Metrics,
    /// Wall-clock training time in seconds.
    pub seconds: f64,
}

/// Scores `model` on the observed pairs of `data` (see [`Metrics`]).
///
/// Panics if `data` does not have `model.input_dim()` features and `model.n_models()` models.
pub fn evaluate(model: &Mlp, data: &Dataset, token_loss_weight: f32) -> Metrics {
    let sums = data.loss_sums(model, data.x.view());
    let (quality, tokens) = model.predict(data.x.view());
    let (mut abs_q, mut sq_q, mut abs_z) = (0.0f64, 0.0f64, 0.0f64);
    let mut token_errors = Vec::new();
    for ((i, j), &m) in data.mask.indexed_iter() {
        if m <= 0.0 {
            continue;
        }
        let dq = f64::from(quality[[i, j]] - data.quality[[i, j]]);
        abs_q += dq.abs();
        sq_q += dq * dq;
        let observed_tokens = f64::from(data.log_tokens[[i, j]]).exp_m1().round();
        let predicted_z = f64::from(tokens[[i, j]]).ln_1p();
        abs_z += (predicted_z - f64::from(data.log_tokens[[i, j]])).abs();
        token_errors.push((f64::from(tokens[[i, j]]) - observed_tokens).abs());
    }
    let n = token_errors.len() as f64;
    let nan_if_empty = |v: f64| if n > 0.0 { (v / n) as f32 } else { f32::NAN };
    Metrics {
        observed: token_errors.len(),
        loss: if n > 0.0 { sums.loss(token_loss_weight) as f32 } else { f32::NAN },
        quality_mae: nan_if_empty(abs_q),
        quality_brier: nan_if_empty(sq_q),
        log_tokens_mae: nan_if_empty(abs_z),
        tokens_median_abs_error: median(&mut token_errors),
    }
}

/// Scores, on `val`, the baseline that predicts each model's mean quality and mean log tokens
/// over `train` (the model [`train()`] starts from).
pub fn baseline_metrics(train: &Dataset, val: &Dataset, token_loss_weight: f32) -> Metrics {
    let (bq, bt) = model_means(train);
    let baseline = Mlp::constant(Array2::zeros((train.x.ncols(), 1)), bq, bt);
    evaluate(&baseline, val, token_loss_weight)
}

/// Trains a head on `train`, early-stopping on the loss over `val`, and returns the weights of
/// the best validation epoch with a report.
///
/// If `val` has no observed pair, early stopping is off and the last epoch is kept.
/// Deterministic for a given `cfg.seed` and data.
///
/// # Errors
/// [`LearningError::InvalidConfig`] for an out-of-range setting;
/// [`LearningError::ShapeMismatch`] / [`LearningError::InvalidValue`] for datasets that do not
/// line up or hold invalid values; [`LearningError::NoObservations`] for an empty training
/// set; [`LearningError::Diverged`] if the loss stops being finite.
pub fn train(train: &Dataset, val: &Dataset, cfg: &TrainConfig) -> Result<(Mlp, TrainReport), LearningError> {
    let started = Instant::now();
    cfg.validate()?;
    train.validate()?;
    val.validate()?;
    let (d, m) = (train.x.ncols(), train.n_models());
    if val.x.ncols() != d {
        return Err(LearningError::ShapeMismatch { what: "validation vs training input dimension", expected: d, actual: val.x.ncols() });
    }
    if val.n_models() != m {
        return Err(LearningError::ShapeMismatch { what: "validation vs training models", expected: m, actual: val.n_models() });
    }
    // Prompts with no observation contribute nothing: leave them out of the batches.
    let rows: Vec<usize> = (0..train.n_rows()).filter(|&i| train.mask.row(i).iter().any(|&v| v > 0.0)).collect();
    if rows.is_empty() {
        return Err(LearningError::NoObservations { what: "the training dataset".into() });
    }
    let train = train.select(&rows);
    let use_val = val.n_observed() > 0;

    let (mean, scale) = input_scaling(train.x.view());
    let xs_train = (&train.x - &mean) * scale;
    let xs_val = (&val.x - &mean) * scale;

    let (bq, bt) = model_means(&train);
    let mut rng = SplitMix64::new(cfg.seed);
    let mut model = Mlp::init(d, cfg.hidden, bq, bt, &mut rng);
    let mut grads = model.zeros_like();
    let mut adam = Adam::new(&model);

    let mut best = model.clone();
    let mut best_epoch = 0;
    let mut best_loss = if use_val { val.loss_sums(&model, xs_val.view()).loss(cfg.token_loss_weight) } else { f64::INFINITY };
    let (mut train_losses, mut val_losses) = (Vec::new(), Vec::new());
    let mut order: Vec<usize> = (0..train.n_rows()).collect();

    for epoch in 1..=cfg.epochs {
        rng.shuffle(&mut order);
        let mut epoch_sums = LossSums::default();
        for batch in order.chunks(cfg.batch_size) {
            let x = xs_train.select(Axis(0), batch);
            let quality = train.quality.select(Axis(0), batch);
            let log_tokens = train.log_tokens.select(Axis(0), batch);
            let mask = train.mask.select(Axis(0), batch);
            let sums = model.loss_and_grads(x.view(), quality.view(), log_tokens.view(), mask.view(), cfg.token_loss_weight, &mut grads);
            epoch_sums.bce += sums.bce;
            epoch_sums.sq += sums.sq;
            epoch_sums.observed += sums.observed;
            adam.step(&mut model, &grads, cfg.learning_rate, cfg.weight_decay);
        }
        let train_loss = epoch_sums.loss(cfg.token_loss_weight);
        let val_loss = if use_val { val.loss_sums(&model, xs_val.view()).loss(cfg.token_loss_weight) } else { train_loss };
        if !train_loss.is_finite() || !val_loss.is_finite() {
            return Err(LearningError::Diverged { epoch });
        }
        train_losses.push(train_loss as f32);
        val_losses.push(val_loss as f32);
        // Progress on long runs: every 10th epoch at info, the rest at debug.
        if epoch % 10 == 0 {
            tracing::info!(epoch, max_epochs = cfg.epochs, train_loss, val_loss, best_epoch, "training");
        } else {
            tracing::debug!(epoch, train_loss, val_loss, "epoch done");
        }

        if !use_val || val_loss < best_loss {
            best_loss = val_loss;
            best_epoch = epoch;
            best = model.clone();
        } else if epoch - best_epoch >= cfg.patience {
            break;
        }
    }

    let model = best.fold_input_scaling(mean.view(), scale);
    let report = TrainReport {
        epochs_run: train_losses.len(),
        best_epoch,
        train_loss: train_losses,
        val_loss: val_losses,
        validation: evaluate(&model, val, cfg.token_loss_weight),
        baseline: baseline_metrics(&train, val, cfg.token_loss_weight),
        seconds: started.elapsed().as_secs_f64(),
    };
    tracing::info!(
        epochs = report.epochs_run,
        best_epoch = report.best_epoch,
        val_loss = report.validation.loss,
        baseline_loss = report.baseline.loss,
        seconds = report.seconds,
        "trained router head"
    );
    Ok((model, report))
}

/// Per-model mean quality (as a logit) and mean log tokens over the observed pairs of `data`;
/// a model never observed gets the means over all models.
fn model_means(data: &Dataset) -> (Array1<f32>, Array1<f32>) {
    let counts = data.mask.sum_axis(Axis(0));
    let q_sums = (&data.quality * &data.mask).sum_axis(Axis(0));
    let t_sums = (&data.log_tokens * &data.mask).sum_axis(Axis(0));
    let total = counts.sum().max(1.0);
    let (q_all, t_all) = (q_sums.sum() / total, t_sums.sum() / total);
    let mean = |sums: &Array1<f32>, fallback: f32| {
        Array1::from_iter(sums.iter().zip(&counts).map(|(&s, &c)| if c > 0.0 { s / c } else { fallback }))
    };
    // NOTE: a model that always scored 0 or 1 would get an infinite logit; clamp to +-9.2.
    let logit = |p: f32| {
        let p = p.clamp(1e-4, 1.0 - 1e-4);
        (p / (1.0 - p)).ln()
    };
    (mean(&q_sums, q_all).mapv_into(logit), mean(&t_sums, t_all))
}

/// Per-feature mean and one global scale making the mean feature variance 1.
fn input_scaling(x: ArrayView2<f32>) -> (Array1<f32>, f32) {
    let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(x.ncols()));
    let mean_var = (&x - &mean).mapv(|v| v * v).mean().unwrap_or(0.0);
    let scale = if mean_var > 1e-12 { 1.0 / mean_var.sqrt() } else { 1.0 };
    (mean, scale)
}

/// Median, averaging the two middle values; NaN when empty.
fn median(values: &mut [f64]) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    let v = if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 };
    v as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split_by_prompt;

    /// Quality depends on the input (sign of a projection decides which model is good);
    /// tokens depend on another projection.
    fn synthetic(n: usize, d: usize, m: usize, seed: u64) -> Dataset {
        let mut rng = SplitMix64::new(seed);
        let x = Array2::from_shape_simple_fn((n, d), || rng.next_normal() as f32);
        let mut data = Dataset { quality: Array2::zeros((n, m)), log_tokens: Array2::zeros((n, m)), mask: Array2::zeros((n, m)), x };
        for i in 0..n {
            let (a, b) = (data.x[[i, 0]], data.x[[i, 1]]);
            for j in 0..m {
                let sign = if j % 2 == 0 { 1.0 } else { -1.0 };
                let p = 1.0 / (1.0 + (-3.0 * sign * (a + 0.5 * b)).exp());
                data.quality[[i, j]] = if rng.next_f64() < f64::from(p) { 1.0 } else { 0.0 };
                data.log_tokens[[i, j]] = 4.0 + j as f32 * 0.1 + b.abs();
                data.mask[[i, j]] = if rng.next_f64() < 0.5 { 1.0 } else { 0.0 };
            }
        }
        data
    }

    #[test]
    fn training_beats_the_mean_baseline_when_quality_depends_on_x_and_is_deterministic() {
        let data = synthetic(1200, 16, 4, 1);
        let (tr, va) = split_by_prompt(data.n_rows(), 0.25, 2);
        let (train_set, val_set) = (data.select(&tr), data.select(&va));
        let cfg = TrainConfig { hidden: 32, epochs: 60, patience: 10, seed: 5, ..TrainConfig::default() };
        let (model, report) = train(&train_set, &val_set, &cfg).expect("training runs");

        assert!(report.best_epoch > 0);
        assert!(report.val_loss.iter().all(|v| v.is_finite()));
        assert!(
            report.validation.loss < report.baseline.loss - 0.1,
            "val loss {} vs baseline {}",
            report.validation.loss,
            report.baseline.loss
        );
        assert!(report.validation.quality_brier < report.baseline.quality_brier);
        assert!(report.validation.log_tokens_mae < report.baseline.log_tokens_mae);
        // The reported loss of the kept epoch is what the folded model scores.
        let best = report.val_loss[report.best_epoch - 1];
        assert!((best - report.validation.loss).abs() < 1e-3, "{best} vs {}", report.validation.loss);

        let (again, report_again) = train(&train_set, &val_set, &cfg).expect("training runs");
        assert_eq!(model, again);
        assert_eq!(report.val_loss, report_again.val_loss);
    }

    #[test]
    fn rejects_bad_config_and_empty_training_data() {
        let data = synthetic(20, 4, 2, 1);
        let bad = TrainConfig { batch_size: 0, ..TrainConfig::default() };
        let err = train(&data, &data, &bad).expect_err("batch_size 0");
        assert_eq!(err.label(), "learning_invalid_config");
        let mut empty = data.clone();
        empty.mask.fill(0.0);
        let err = train(&empty, &data, &TrainConfig::default()).expect_err("no observations");
        assert_eq!(err.label(), "learning_no_observations");
    }
}
