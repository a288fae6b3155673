//! The catalog: the models a request may be routed to, with their provider, prices, context
//! window and speed figures. It is plain data loaded from the config file; the policy reads it
//! and the head's manifest says which of its models the head can predict.
use serde::{Deserialize, Serialize};

/// One routable model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogModel {
    /// Model id, as the head's manifest and the routing logs name it.
    pub id: String,
    /// Provider that serves it; fallbacks are spread across providers.
    pub provider: String,
    /// List price in USD per million input tokens.
    pub input_usd_per_mtok: f64,
    /// List price in USD per million output tokens.
    pub output_usd_per_mtok: f64,
    /// Context window in tokens.
    pub context_tokens: u32,
    /// Time to first token in milliseconds, for the latency estimate (default from `[routing]`).
    #[serde(default)]
    pub ttft_ms: Option<f64>,
    /// Decoding speed in output tokens per second, for the latency estimate (default from `[routing]`).
    #[serde(default)]
    pub output_tokens_per_second: Option<f64>,
}

impl CatalogModel {
    /// Cost in USD of `input_tokens` in and `output_tokens` out at list price.
    ///
    /// ```
    /// let m = pointsman_core::catalog::CatalogModel {
    ///     id: "claude-3-5-haiku-20241022".into(),
    ///     provider: "anthropic".into(),
    ///     input_usd_per_mtok: 0.8,
    ///     output_usd_per_mtok: 4.0,
    ///     context_tokens: 200_000,
    ///     ttft_ms: None,
    ///     output_tokens_per_second: None,
    /// };
    /// // 1,000 tokens in and 500 out: $0.0008 + $0.002.
    /// assert!((m.cost_usd(1_000, 500.0) - 0.0028).abs() < 1e-12);
    /// ```
    pub fn cost_usd(&self, input_tokens: u32, output_tokens: f64) -> f64 {
        (f64::from(input_tokens) * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6
    }
}

/// Errors in a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog lists no model.
    #[error("the catalog is empty: add at least one [[models]] entry")]
    Empty,
    /// Two entries share an id.
    #[error("model `{0}` is listed twice in the catalog")]
    Duplicate(String),
    /// A field is out of range.
    #[error("model `{model}`: `{field}` must be {limit}. Given: {value}")]
    InvalidField {
        /// The model's id.
        model: String,
        /// The offending field.
        field: &'static str,
        /// What it must be.
        limit: &'static str,
        /// The value given.
        value: String,
    },
}

/// The validated list of candidate models, in config order.
#[derive(Debug, Clone)]
pub struct Catalog {
    models: Vec<CatalogModel>,
}

impl Catalog {
    /// Validates and wraps the models.
    pub fn new(models: Vec<CatalogModel>) -> Result<Self, CatalogError> {
        if models.is_empty() {
            return Err(CatalogError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        for m in &models {
            if !seen.insert(m.id.as_str()) {
                return Err(CatalogError::Duplicate(m.id.clone()));
            }
            let bad = |field, limit, value: String| CatalogError::InvalidField { model: m.id.clone(), field, limit, value };
            if m.id.trim().is_empty() {
                return Err(bad("id", "non-empty", format!("{:?}", m.id)));
            }
            if m.provider.trim().is_empty() {
                return Err(bad("provider", "non-empty", format!("{:?}", m.provider)));
            }
            for (field, v) in [("input_usd_per_mtok", m.input_usd_per_mtok), ("output_usd_per_mtok", m.output_usd_per_mtok)] {
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(field, "a finite number >= 0", v.to_string()));
                }
            }
            if m.context_tokens == 0 {
                return Err(bad("context_tokens", "> 0", "0".into()));
            }
            for (field, v) in [("ttft_ms", m.ttft_ms), ("output_tokens_per_second", m.output_tokens_per_second)] {
                if let Some(v) = v {
                    if !v.is_finite() || v <= 0.0 {
                        return Err(bad(field, "a finite number > 0", v.to_string()));
                    }
                }
            }
        }
        Ok(Self { models })
    }

    /// All models, in config order.
    pub fn models(&self) -> &[CatalogModel] {
        &self.models
    }

    /// The model with this id.
    pub fn get(&self, id: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|m| m.id == id)
    }

    /// True when some model is served by this provider.
    pub fn has_provider(&self, provider: &str) -> bool {
        self.models.iter().any(|m| m.provider == provider)
    }
}
