//! The training-line format: one JSON line per (prompt, model) outcome. The trainer reads it
//! (`pointsman-learning`) and the server's decision log writes it (`logs export`), so it lives
//! here, below both.
use serde::{Deserialize, Serialize};

/// One line of the log format, as read here and as written by `pointsman logs export`.
/// Unknown fields are ignored so the gateway can add some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Stable id of the prompt; many lines share it (one per model).
    pub prompt_id: String,
    /// The prompt text; empty when only `embedding` is given.
    #[serde(default)]
    pub prompt: String,
    /// Model id.
    pub model: String,
    /// Quality in [0, 1].
    pub score: f64,
    /// Tokens in the answer.
    // NOTE: signed on purpose, so a negative count is reported as such rather than as a
    // generic type error.
    pub output_tokens: i64,
    /// Sub-benchmark or traffic tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// A stored embedding, for decision logs kept without prompt text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// Encoder id of `embedding`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
    /// Probability in (0, 1] with which the logging policy chose this model for this prompt
    /// (1 for a deterministic choice); absent when unknown. The trainer weights outcomes by its
    /// inverse (clipped, self-normalised) and `eval --log` uses it for off-policy estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f64>,
    /// price at the reported tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The model savings were measured against when it was logged (decision-log exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_model: Option<String>,
    /// What the baseline would have cost at the same tokens, USD (decision-log exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_cost_usd: Option<f64>,
}
