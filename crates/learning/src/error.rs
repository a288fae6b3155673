//! The trainer's errors: [`LearningError`] for reading logs, building datasets and fitting;
//! [`JobError`] for a whole command (it adds the encoder, files and settings).
use std::path::PathBuf;

use pointsman_core::encoder::EncoderError;

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

impl From<pointsman_core::predictor::graph::NotAHead> for LearningError {
    fn from(e: pointsman_core::predictor::graph::NotAHead) -> Self {
        LearningError::NotAHead(e.0)
    }
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

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Reading or training failed.
    #[error(transparent)]
    Learning(#[from] LearningError),
    /// Embedding failed.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// Writing the head failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The settings are inconsistent.
    #[error("`{field}` must be {limit}. Given: {value}")]
    Invalid {
        /// The flag.
        field: &'static str,
        /// The rule.
        limit: &'static str,
        /// The value given.
        value: String,
    },
}

impl JobError {
    /// Stable snake_case label.
    pub fn label(&self) -> &'static str {
        match self {
            JobError::Learning(e) => e.label(),
            JobError::Encoder(e) => e.label(),
            JobError::Write { .. } => "train_write",
            JobError::Invalid { .. } => "train_invalid",
        }
    }
}
