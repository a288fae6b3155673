//! Learning: from routing logs to an ONNX router head.
//!
//! The offline half of Pointsman. One training run is a straight pipeline:
//!
//! 1. [`read_logs`] turns JSON Lines routing logs (gzip or plain) into a dense index of prompts
//!    and models plus a sparse list of observed outcomes.
//! 2. The caller embeds `logs.prompts` with the encoder (not this module's business) and builds a
//!    [`Dataset`]: dense `[prompts, models]` targets with a mask, because production logs hold
//!    one model per prompt and every loss and metric must ignore the unobserved pairs.
//! 3. [`split_by_prompt`] + [`train()`] fit a small multi-task [`Mlp`] (quality and output tokens
//!    per model) with hand-written backprop on `ndarray`: the head is tiny, so a training
//!    framework would cost more in build time and dependencies than it saves.
//! 4. [`export`] writes the head as a self-contained ONNX model that the serving path runs with
//!    the same `ort` session machinery as the encoder. [`Mlp::predict`] computes exactly what
//!    the graph computes, so tests can compare the two.
//!
//! The pieces above depend on nothing else in the crate; [`job`] ties them to the serving
//! encoder and the head manifest for `pointsman train`.

mod data;
mod dataset;
pub mod embed_cache;
pub mod eval;
pub mod extend;
pub mod frontier;
pub mod job;
pub mod knn;
pub mod lowrank;
mod memory;
mod mlp;
mod onnx;
mod rng;
mod shrink;
mod support;
mod train;
pub mod tune;

pub use data::{read_logs, LogRecord, Observation, PromptEntry, RoutingLogs, MAX_PROBLEMS};
pub use dataset::{folds, split_by_prompt, Dataset};
pub use memory::{memory_rows, memory_rows_stratified, DEFAULT_MEMORY_CAP, DEFAULT_MODEL_FLOOR};
pub use mlp::{decode_tokens, encode_tokens, Mlp};
pub use onnx::{export, export_with_support, graph_facts, import, INPUT_NAME, IR_VERSION, OPSET_VERSION, QUALITY_OUTPUT, TOKENS_OUTPUT};
pub use rng::SplitMix64;
pub use shrink::{LocalPrior, MemoryBlock, Shrink, MIN_KAPPA};
pub use support::{Support, DEFAULT_NEIGHBOURS, SUPPORT_OUTPUT};
pub use train::{baseline_metrics, evaluate, train, Metrics, TrainConfig, TrainReport};

use std::path::PathBuf;

/// Fails with [`LearningError::ShapeMismatch`] on the first `(what, expected, actual)` that differ.
pub(crate) fn check_shapes(checks: &[(&'static str, usize, usize)]) -> Result<(), LearningError> {
    match checks.iter().find(|(_, expected, actual)| expected != actual) {
        Some(&(what, expected, actual)) => Err(LearningError::ShapeMismatch { what, expected, actual }),
        None => Ok(()),
    }
}

/// Errors of the learning layer: reading logs, building datasets, training.
#[derive(Debug, thiserror::Error)]
pub enum LearningError {
    /// A log file could not be opened or read.
    #[error("cannot read routing log {path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// What the operating system or the gzip decoder said.
        #[source]
        source: std::io::Error,
    },
    /// A log line is not a valid outcome record (strict mode only; otherwise it is skipped).
    #[error("{path}:{line}: {reason}")]
    MalformedLine {
        /// The file holding the line.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A `prompt_id` reappears with a different prompt text (strict mode only; otherwise the
    /// first text is kept and the conflict is listed in `RoutingLogs::problems`).
    #[error("{path}:{line}: prompt_id {prompt_id:?} was seen before with a different prompt text")]
    InconsistentPrompt {
        /// The file holding the conflicting line.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The prompt id in conflict.
        prompt_id: String,
    },
    /// There is nothing to learn from: no valid observation in the input.
    #[error("no observed (prompt, model) outcome in {what}")]
    NoObservations {
        /// What was empty (the files read, the training split, ...).
        what: String,
    },
    /// Two pieces of data that must line up do not.
    #[error("shape mismatch in {what}: expected {expected}, got {actual}")]
    ShapeMismatch {
        /// Which quantity disagrees (e.g. "embedding rows vs prompts").
        what: &'static str,
        /// The size that was required.
        expected: usize,
        /// The size that was given.
        actual: usize,
    },
    /// An input holds values outside its domain (NaN or infinity, a mask entry other than 0/1,
    /// a quality outside [0, 1]).
    #[error("invalid values in {what}")]
    InvalidValue {
        /// Which input, and what is required of it.
        what: &'static str,
    },
    /// A training setting is out of range.
    #[error("invalid training config: `{field}` {reason}")]
    InvalidConfig {
        /// The `TrainConfig` field at fault.
        field: &'static str,
        /// The limit and the value given.
        reason: String,
    },
    /// A head file is not one this version exported (missing or malformed initializer).
    #[error("not a Pointsman head graph: {0}")]
    NotAHead(String),
    /// Training produced a non-finite loss (learning rate too high, or bad inputs).
    #[error("training diverged at epoch {epoch}: loss is not finite")]
    Diverged {
        /// 1-based epoch at which the loss stopped being finite.
        epoch: usize,
    },
}

impl LearningError {
    /// Stable snake_case label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            LearningError::Io { .. } => "learning_io",
            LearningError::MalformedLine { .. } => "learning_malformed_line",
            LearningError::InconsistentPrompt { .. } => "learning_inconsistent_prompt",
            LearningError::NoObservations { .. } => "learning_no_observations",
            LearningError::ShapeMismatch { .. } => "learning_shape_mismatch",
            LearningError::InvalidValue { .. } => "learning_invalid_value",
            LearningError::InvalidConfig { .. } => "learning_invalid_config",
            LearningError::Diverged { .. } => "learning_diverged",
            LearningError::NotAHead(_) => "learning_not_a_head",
        }
    }
}
