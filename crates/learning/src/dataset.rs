//! Dense, masked training data and the prompt-level train/validation split.
//!
//! - Targets are a `[prompts, models]` matrix with holes: production logs show each prompt to
//!   one model. A [`Dataset`] is dense with a 0/1 mask (a few MB even for 100k prompts x 50
//!   models), which keeps the training loop to plain matrix products; every loss and metric
//!   averages over the observed pairs only.
//! - Rows of one prompt are not independent, so [`split_by_prompt`] splits prompts, never
//!   (prompt, model) pairs; otherwise validation would reward memorising prompts.
use ndarray::{Array2, ArrayView2, Axis};

use super::{
    data::RoutingLogs,
    mlp::{encode_tokens, LossSums, Mlp},
    rng::SplitMix64,
    LearningError,
};

/// Dense training data: one row per prompt, one column per model, with a mask of observed pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Prompt embeddings `[N, D]`.
    pub x: Array2<f32>,
    /// Observed quality in `[0, 1]` `[N, M]` (0 where unobserved).
    pub quality: Array2<f32>,
    /// Observed `ln(1 + output_tokens)` `[N, M]` (0 where unobserved).
    pub log_tokens: Array2<f32>,
    /// 1 where the (prompt, model) pair was observed, else 0 `[N, M]`.
    pub mask: Array2<f32>,
}

impl Dataset {
    /// Densifies `logs` with `embeddings [logs.prompts.len(), D]`, row `i` embedding prompt `i`.
    ///
    /// # Errors
    /// [`LearningError::ShapeMismatch`] if the rows do not match the prompts or an observation
    /// points outside `logs`; [`LearningError::InvalidValue`] for non-finite embeddings.
    pub fn from_logs(logs: &RoutingLogs, embeddings: ArrayView2<f32>) -> Result<Self, LearningError> {
        let (n, m) = (logs.prompts.len(), logs.models.len());
        if embeddings.nrows() != n {
            return Err(LearningError::ShapeMismatch { what: "embedding rows vs prompts", expected: n, actual: embeddings.nrows() });
        }
        if !embeddings.iter().all(|v| v.is_finite()) {
            return Err(LearningError::InvalidValue { what: "embeddings (must be finite)" });
        }
        let mut data = Dataset {
            x: embeddings.as_standard_layout().into_owned(),
            quality: Array2::zeros((n, m)),
            log_tokens: Array2::zeros((n, m)),
            mask: Array2::zeros((n, m)),
        };
        for o in &logs.observations {
            let (p, k) = (o.prompt, o.model);
            if p >= n {
                return Err(LearningError::ShapeMismatch { what: "observation prompt index vs prompts", expected: n, actual: p });
            }
            if k >= m {
                return Err(LearningError::ShapeMismatch { what: "observation model index vs models", expected: m, actual: k });
            }
            if !o.score.is_finite() {
                return Err(LearningError::InvalidValue { what: "observation scores (must be finite)" });
            }
            data.quality[[p, k]] = o.score.clamp(0.0, 1.0);
            data.log_tokens[[p, k]] = encode_tokens(o.output_tokens);
            data.mask[[p, k]] = 1.0;
        }
        Ok(data)
    }

    /// Observed output tokens (`log_tokens` decoded; 0 where unobserved).
    pub fn tokens(&self) -> Array2<f32> {
        self.log_tokens.mapv(super::decode_tokens)
    }

    /// The rows `rows`, in that order (e.g. one side of [`split_by_prompt`]).
    ///
    /// Panics if a row index is out of range.
    pub fn select(&self, rows: &[usize]) -> Dataset {
        Dataset {
            x: self.x.select(Axis(0), rows),
            quality: self.quality.select(Axis(0), rows),
            log_tokens: self.log_tokens.select(Axis(0), rows),
            mask: self.mask.select(Axis(0), rows),
        }
    }

    /// Number of prompts (rows).
    pub fn n_rows(&self) -> usize {
        self.x.nrows()
    }

    /// Number of models (columns of the targets).
    pub fn n_models(&self) -> usize {
        self.mask.ncols()
    }

    /// Number of observed (prompt, model) pairs.
    pub fn n_observed(&self) -> usize {
        self.mask.iter().filter(|&&m| m > 0.0).count()
    }

    /// Errors unless the four matrices line up (`x [N, D]`, the others `[N, M]`), every value
    /// is finite, the mask is 0/1 and observed qualities are in `[0, 1]`: the checks that keep a
    /// hand-built dataset from turning into a NaN model.
    pub(super) fn validate(&self) -> Result<(), LearningError> {
        let (n, m) = self.mask.dim();
        let checks: [(&'static str, usize, usize); 5] = [
            ("dataset x rows vs mask rows", n, self.x.nrows()),
            ("dataset quality rows vs mask rows", n, self.quality.nrows()),
            ("dataset quality columns vs mask columns", m, self.quality.ncols()),
            ("dataset log_tokens rows vs mask rows", n, self.log_tokens.nrows()),
            ("dataset log_tokens columns vs mask columns", m, self.log_tokens.ncols()),
        ];
        super::check_shapes(&checks)?;
        if !self.x.iter().all(|v| v.is_finite()) {
            return Err(LearningError::InvalidValue { what: "dataset x (must be finite)" });
        }
        if !self.log_tokens.iter().all(|v| v.is_finite()) {
            return Err(LearningError::InvalidValue { what: "dataset log_tokens (must be finite)" });
        }
        // NOTE: written so that NaN fails every comparison and is rejected too.
        if !self.mask.iter().all(|&v| v == 0.0 || v == 1.0) {
            return Err(LearningError::InvalidValue { what: "dataset mask (must be 0 or 1)" });
        }
        let quality_ok = self.quality.iter().zip(&self.mask).all(|(&q, &k)| k == 0.0 || (0.0..=1.0).contains(&q));
        if !quality_ok {
            return Err(LearningError::InvalidValue { what: "dataset quality (must be in [0, 1] where observed)" });
        }
        Ok(())
    }

    /// Loss sums of `model` on this data, with `x` standing in for `self.x` (scaled inputs).
    pub(super) fn loss_sums(&self, model: &Mlp, x: ArrayView2<f32>) -> LossSums {
        model.loss_sums(x, self.quality.view(), self.log_tokens.view(), self.mask.view())
    }
}

/// Assigns `n_prompts` prompts to `k` folds of (nearly) equal size, shuffled by `seed`.
pub fn folds(n_prompts: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_prompts).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut fold = vec![0; n_prompts];
    for (i, &p) in order.iter().enumerate() {
        fold[p] = i % k.max(1);
    }
    fold
}

/// Splits prompt indices `0..n_prompts` into `(train, validation)`, each sorted ascending.
///
/// `val_fraction` is clamped to `[0, 1]` and rounded to whole prompts; with at least two
/// prompts and a non-zero fraction, both sides get at least one. Same seed, same split.
pub fn split_by_prompt(n_prompts: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let fraction = if val_fraction.is_nan() { 0.0 } else { val_fraction.clamp(0.0, 1.0) };
    let mut n_val = (n_prompts as f64 * fraction).round() as usize;
    if n_prompts >= 2 && fraction > 0.0 {
        n_val = n_val.clamp(1, n_prompts - 1);
    }
    let mut order: Vec<usize> = (0..n_prompts).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut val = order[..n_val].to_vec();
    let mut train = order[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_by_prompt_deterministic_and_complete() {
        let (train, val) = split_by_prompt(100, 0.2, 9);
        assert_eq!((train.len(), val.len()), (80, 20));
        assert_eq!(split_by_prompt(100, 0.2, 9), (train.clone(), val.clone()));
        assert_ne!(split_by_prompt(100, 0.2, 10).1, val);
        let mut all: Vec<usize> = train.into_iter().chain(val).collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split_by_prompt(2, 0.01, 1).1.len(), 1);
        assert_eq!(split_by_prompt(5, 0.0, 1).1.len(), 0);
    }

    #[test]
    fn from_logs_densifies_and_validate_rejects_bad_values() {
        use crate::{Observation, PromptEntry};
        let prompt = |id: &str| PromptEntry { id: id.into(), text: id.into(), task: None, embedding: None };
        let logs = RoutingLogs {
            prompts: vec![prompt("a"), prompt("b")],
            models: vec!["m0".into(), "m1".into()],
            observations: vec![Observation { prompt: 1, model: 0, score: 0.25, output_tokens: 9, propensity: None }],
            ..RoutingLogs::default()
        };
        let x = Array2::from_elem((2, 3), 0.5f32);
        let data = Dataset::from_logs(&logs, x.view()).expect("dataset");
        assert_eq!(data.mask, ndarray::array![[0.0, 0.0], [1.0, 0.0]]);
        assert_eq!(data.quality[[1, 0]], 0.25);
        assert_eq!(data.log_tokens[[1, 0]], 10f32.ln());
        assert!(data.validate().is_ok());

        let short = Array2::from_elem((1, 3), 0.5f32);
        let err = Dataset::from_logs(&logs, short.view()).expect_err("one row for two prompts");
        assert_eq!(err.label(), "learning_shape_mismatch");
        let mut bad = data.clone();
        bad.mask[[0, 0]] = 0.5;
        assert_eq!(bad.validate().expect_err("fractional mask").label(), "learning_invalid_value");
        let mut bad = data;
        bad.x[[0, 1]] = f32::NAN;
        assert_eq!(bad.validate().expect_err("NaN input").label(), "learning_invalid_value");
    }
}
