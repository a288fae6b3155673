//! The catalog: the models a request may be routed to, and for each model the endpoints that
//! serve it (a provider with its prices, context window, quantization, data policy, capabilities
//! and speed priors). It is plain data loaded from the config file; the policy reads it and the
//! head's manifest says which of its models the head can predict.
//!
//! A model is written either the old way, with `provider` and prices on the model (one endpoint),
//! or with `[[models.endpoints]]` entries (one or more). In the second form the model-level
//! `context_tokens`, `max_output_tokens`, `ttft_ms` and `output_tokens_per_second` are defaults
//! for its endpoints, and `provider` and the prices must be given per endpoint. The first
//! endpoint is the model's reference: its provider and prices are what `ListModels` shows as the
//! model's and what training and evaluation price the model at.
use serde::{Deserialize, Serialize};

/// The quantization levels OpenRouter names (`provider.quantizations`), plus "unknown".
pub const QUANTIZATIONS: [&str; 9] = ["int4", "int8", "fp4", "fp6", "fp8", "fp16", "bf16", "fp32", "unknown"];

/// What an endpoint can do beyond text. `None` is "not declared": a request that needs it is
/// sent there unless it sets `require_parameters` (as OpenRouter does with parameters a
/// provider does not list); `Some(false)` is "cannot": a request that needs it never is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Tool (function) calling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
    /// Image input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<bool>,
    /// Structured output to a JSON schema (`response_format: json_schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<bool>,
    /// The `reasoning_effort` levels it accepts (e.g. ["low", "medium", "high"]); empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_efforts: Option<Vec<String>>,
}

/// One provider's deployment of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Provider slug, e.g. "together"; what `provider.only`/`ignore`/`order` and the gateway's
    /// upstream name.
    pub provider: String,
    /// List price in USD per million input tokens.
    pub input_usd_per_mtok: f64,
    /// List price in USD per million output tokens.
    pub output_usd_per_mtok: f64,
    /// List price in USD per million cached input tokens, when the provider discounts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Context window in tokens.
    pub context_tokens: u32,
    /// Most output tokens one answer may have, when the provider caps it below the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Weights precision, one of [`QUANTIZATIONS`]; unset counts as "unknown".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// Whether the provider keeps prompts after answering (unset: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retains_prompts: Option<bool>,
    /// Whether the provider trains on prompts (unset: not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trains_on_prompts: Option<bool>,
    /// What it can do beyond text.
    #[serde(default, skip_serializing_if = "Capabilities::is_undeclared")]
    pub capabilities: Capabilities,
    /// Prior time to first token, ms (default from `[routing]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Prior decoding speed, output tokens per second (default from `[routing]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_second: Option<f64>,
}

impl Capabilities {
    fn is_undeclared(&self) -> bool {
        *self == Self::default()
    }
}

impl Endpoint {
    /// Cost in USD of `input_tokens` in and `output_tokens` out at list price.
    ///
    /// ```
    /// let m = pointsman_core::catalog::CatalogModel::single("claude-3-5-haiku-20241022", "anthropic", 0.8, 4.0, 200_000);
    /// // 1,000 tokens in and 500 out: $0.0008 + $0.002.
    /// assert!((m.endpoints[0].cost_usd(1_000, 500.0) - 0.0028).abs() < 1e-12);
    /// ```
    pub fn cost_usd(&self, input_tokens: u32, output_tokens: f64) -> f64 {
        (f64::from(input_tokens) * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1e6
    }

    /// The quantization, "unknown" when not given.
    pub fn quantization(&self) -> &str {
        self.quantization.as_deref().unwrap_or("unknown")
    }
}

/// One routable model and its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ModelEntry")]
pub struct CatalogModel {
    /// Model id, as the head's manifest and the routing logs name it.
    pub id: String,
    /// The endpoints that serve it, at least one, in config order.
    pub endpoints: Vec<Endpoint>,
}

/// A `[[models]]` entry as written: the old single-endpoint form, or `endpoints`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    output_usd_per_mtok: Option<f64>,
    #[serde(default)]
    cached_input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    context_tokens: Option<u32>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    quantization: Option<String>,
    #[serde(default)]
    retains_prompts: Option<bool>,
    #[serde(default)]
    trains_on_prompts: Option<bool>,
    #[serde(default)]
    capabilities: Option<Capabilities>,
    #[serde(default)]
    ttft_ms: Option<f64>,
    #[serde(default)]
    output_tokens_per_second: Option<f64>,
    #[serde(default)]
    endpoints: Vec<EndpointEntry>,
}

/// A `[[models.endpoints]]` entry as written: unset window and speed figures come from the model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    provider: String,
    input_usd_per_mtok: f64,
    output_usd_per_mtok: f64,
    #[serde(default)]
    cached_input_usd_per_mtok: Option<f64>,
    #[serde(default)]
    context_tokens: Option<u32>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    quantization: Option<String>,
    #[serde(default)]
    retains_prompts: Option<bool>,
    #[serde(default)]
    trains_on_prompts: Option<bool>,
    #[serde(default)]
    capabilities: Capabilities,
    #[serde(default)]
    ttft_ms: Option<f64>,
    #[serde(default)]
    output_tokens_per_second: Option<f64>,
}

impl TryFrom<ModelEntry> for CatalogModel {
    type Error = String;

    fn try_from(m: ModelEntry) -> Result<Self, String> {
        if m.endpoints.is_empty() {
            let missing = |field: &str| format!("model `{}`: `{field}` must be set (or list the model's [[models.endpoints]])", m.id);
            let endpoint = Endpoint {
                provider: m.provider.clone().ok_or_else(|| missing("provider"))?,
                input_usd_per_mtok: m.input_usd_per_mtok.ok_or_else(|| missing("input_usd_per_mtok"))?,
                output_usd_per_mtok: m.output_usd_per_mtok.ok_or_else(|| missing("output_usd_per_mtok"))?,
                cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
                context_tokens: m.context_tokens.ok_or_else(|| missing("context_tokens"))?,
                max_output_tokens: m.max_output_tokens,
                quantization: m.quantization,
                retains_prompts: m.retains_prompts,
                trains_on_prompts: m.trains_on_prompts,
                capabilities: m.capabilities.unwrap_or_default(),
                ttft_ms: m.ttft_ms,
                output_tokens_per_second: m.output_tokens_per_second,
            };
            return Ok(CatalogModel { id: m.id, endpoints: vec![endpoint] });
        }
        let per_endpoint: [(&str, bool); 8] = [
            ("provider", m.provider.is_some()),
            ("input_usd_per_mtok", m.input_usd_per_mtok.is_some()),
            ("output_usd_per_mtok", m.output_usd_per_mtok.is_some()),
            ("cached_input_usd_per_mtok", m.cached_input_usd_per_mtok.is_some()),
            ("quantization", m.quantization.is_some()),
            ("retains_prompts", m.retains_prompts.is_some()),
            ("trains_on_prompts", m.trains_on_prompts.is_some()),
            ("capabilities", m.capabilities.is_some()),
        ];
        if let Some((field, _)) = per_endpoint.iter().find(|(_, set)| *set) {
            return Err(format!(
                "model `{}`: `{field}` must be given on each [[models.endpoints]] entry, not on a model that lists endpoints",
                m.id
            ));
        }
        let endpoints = m
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                Ok(Endpoint {
                    context_tokens: e.context_tokens.or(m.context_tokens).ok_or_else(|| {
                        format!("model `{}`: endpoints[{i}] (`{}`): `context_tokens` must be set on it or on the model", m.id, e.provider)
                    })?,
                    provider: e.provider,
                    input_usd_per_mtok: e.input_usd_per_mtok,
                    output_usd_per_mtok: e.output_usd_per_mtok,
                    cached_input_usd_per_mtok: e.cached_input_usd_per_mtok,
                    max_output_tokens: e.max_output_tokens.or(m.max_output_tokens),
                    quantization: e.quantization,
                    retains_prompts: e.retains_prompts,
                    trains_on_prompts: e.trains_on_prompts,
                    capabilities: e.capabilities,
                    ttft_ms: e.ttft_ms.or(m.ttft_ms),
                    output_tokens_per_second: e.output_tokens_per_second.or(m.output_tokens_per_second),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CatalogModel { id: m.id, endpoints })
    }
}

impl CatalogModel {
    /// A single-endpoint model (the old form).
    pub fn single(id: &str, provider: &str, input_usd_per_mtok: f64, output_usd_per_mtok: f64, context_tokens: u32) -> Self {
        Self {
            id: id.into(),
            endpoints: vec![Endpoint {
                provider: provider.into(),
                input_usd_per_mtok,
                output_usd_per_mtok,
                cached_input_usd_per_mtok: None,
                context_tokens,
                max_output_tokens: None,
                quantization: None,
                retains_prompts: None,
                trains_on_prompts: None,
                capabilities: Capabilities::default(),
                ttft_ms: None,
                output_tokens_per_second: None,
            }],
        }
    }

    /// The reference endpoint: the first listed.
    pub fn primary(&self) -> &Endpoint {
        &self.endpoints[0]
    }

    /// The reference endpoint's provider.
    pub fn provider(&self) -> &str {
        &self.primary().provider
    }

    /// Cost in USD at the reference endpoint's list price (training and evaluation use it).
    pub fn cost_usd(&self, input_tokens: u32, output_tokens: f64) -> f64 {
        self.primary().cost_usd(input_tokens, output_tokens)
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
        /// The offending field (`endpoints[i].field` for an endpoint's).
        field: String,
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

fn check_endpoint(m: &CatalogModel, i: usize, e: &Endpoint) -> Result<(), CatalogError> {
    let field = |name: &str| if m.endpoints.len() == 1 { name.to_string() } else { format!("endpoints[{i}].{name}") };
    let bad = |name: &str, limit, value: String| CatalogError::InvalidField { model: m.id.clone(), field: field(name), limit, value };
    if e.provider.trim().is_empty() {
        return Err(bad("provider", "non-empty", format!("{:?}", e.provider)));
    }
    if m.endpoints[..i].iter().any(|o| o.provider == e.provider) {
        return Err(bad("provider", "unique among the model's endpoints", format!("{:?}", e.provider)));
    }
    let prices = [
        ("input_usd_per_mtok", Some(e.input_usd_per_mtok)),
        ("output_usd_per_mtok", Some(e.output_usd_per_mtok)),
        ("cached_input_usd_per_mtok", e.cached_input_usd_per_mtok),
    ];
    for (name, v) in prices {
        if let Some(v) = v.filter(|v| !v.is_finite() || *v < 0.0) {
            return Err(bad(name, "a finite number >= 0", v.to_string()));
        }
    }
    if e.context_tokens == 0 {
        return Err(bad("context_tokens", "> 0", "0".into()));
    }
    if e.max_output_tokens == Some(0) {
        return Err(bad("max_output_tokens", "> 0", "0".into()));
    }
    if let Some(q) = e.quantization.as_deref().filter(|q| !QUANTIZATIONS.contains(q)) {
        return Err(bad("quantization", "one of int4, int8, fp4, fp6, fp8, fp16, bf16, fp32, unknown", format!("{q:?}")));
    }
    for (name, v) in [("ttft_ms", e.ttft_ms), ("output_tokens_per_second", e.output_tokens_per_second)] {
        if let Some(v) = v.filter(|v| !v.is_finite() || *v <= 0.0) {
            return Err(bad(name, "a finite number > 0", v.to_string()));
        }
    }
    if let Some(levels) = &e.capabilities.reasoning_efforts {
        if let Some(l) = levels.iter().find(|l| l.trim().is_empty()) {
            return Err(bad("capabilities.reasoning_efforts", "a list of non-empty level names", format!("{l:?}")));
        }
    }
    Ok(())
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
            let bad =
                |field: &str, limit, value: String| CatalogError::InvalidField { model: m.id.clone(), field: field.into(), limit, value };
            if m.id.trim().is_empty() {
                return Err(bad("id", "non-empty", format!("{:?}", m.id)));
            }
            if m.endpoints.is_empty() {
                return Err(bad("endpoints", "at least one endpoint", "none".into()));
            }
            for (i, e) in m.endpoints.iter().enumerate() {
                check_endpoint(m, i, e)?;
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

    /// True when some endpoint of some model is served by this provider.
    pub fn has_provider(&self, provider: &str) -> bool {
        self.models.iter().any(|m| m.endpoints.iter().any(|e| e.provider == provider))
    }

    /// The most endpoints any model has.
    pub fn max_endpoints(&self) -> usize {
        self.models.iter().map(|m| m.endpoints.len()).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        models: Vec<CatalogModel>,
    }

    fn parse(text: &str) -> Result<Vec<CatalogModel>, String> {
        toml::from_str::<File>(text).map(|f| f.models).map_err(|e| e.to_string())
    }

    #[test]
    fn a_model_written_the_old_way_is_one_endpoint() {
        let m = parse(
            r#"[[models]]
id = "m"
provider = "p"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
context_tokens = 8192
ttft_ms = 300.0"#,
        )
        .unwrap();
        assert_eq!(m[0], {
            let mut x = CatalogModel::single("m", "p", 1.0, 2.0, 8192);
            x.endpoints[0].ttft_ms = Some(300.0);
            x
        });
        assert_eq!(m[0].provider(), "p");
        // Missing a price: the message names it.
        let e = parse("[[models]]\nid = \"m\"\nprovider = \"p\"\ninput_usd_per_mtok = 1.0\ncontext_tokens = 1").unwrap_err();
        assert!(e.contains("output_usd_per_mtok"), "{e}");
    }

    #[test]
    fn endpoints_take_the_models_defaults_and_are_validated() {
        let text = r#"[[models]]
id = "llama"
context_tokens = 131072
ttft_ms = 400.0

[[models.endpoints]]
provider = "a"
input_usd_per_mtok = 0.88
output_usd_per_mtok = 0.88
quantization = "fp8"

[[models.endpoints]]
provider = "b"
input_usd_per_mtok = 0.13
output_usd_per_mtok = 0.40
cached_input_usd_per_mtok = 0.05
context_tokens = 32768
retains_prompts = false
trains_on_prompts = false
capabilities = { tools = true, json_schema = true, reasoning_efforts = ["low", "high"] }"#;
        let m = parse(text).unwrap();
        let cat = Catalog::new(m).unwrap();
        let llama = cat.get("llama").unwrap();
        assert_eq!(llama.endpoints.len(), 2);
        assert_eq!((llama.endpoints[0].context_tokens, llama.endpoints[1].context_tokens), (131072, 32768));
        assert_eq!(llama.endpoints[1].ttft_ms, Some(400.0));
        assert_eq!(llama.endpoints[1].quantization(), "unknown");
        assert_eq!(llama.endpoints[1].capabilities.tools, Some(true));
        assert!(cat.has_provider("b") && !cat.has_provider("c"));
        // The model's prices belong on its endpoints when it lists them.
        let e = parse(&text.replace("ttft_ms = 400.0", "provider = \"a\"")).unwrap_err();
        assert!(e.contains("`provider` must be given on each [[models.endpoints]]"), "{e}");
        // An unknown quantization and a repeated provider are refused, naming the endpoint.
        let e = Catalog::new(parse(&text.replace("\"fp8\"", "\"fp7\"")).unwrap()).unwrap_err().to_string();
        assert!(e.contains("endpoints[0].quantization") && e.contains("\"fp7\""), "{e}");
        let e = Catalog::new(parse(&text.replace("provider = \"b\"", "provider = \"a\"")).unwrap()).unwrap_err().to_string();
        assert!(e.contains("endpoints[1].provider") && e.contains("unique"), "{e}");
        let e = Catalog::new(parse(&text.replace("0.05", "-1.0")).unwrap()).unwrap_err().to_string();
        assert!(e.contains("endpoints[1].cached_input_usd_per_mtok") && e.contains("-1"), "{e}");
    }
}
