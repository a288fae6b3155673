//! The engine's settings: what [`super::Engine::load`] takes. The server fills it from its
//! config file (`[cache]`, `[routing]`, ...); a library user builds it directly.
use std::{collections::BTreeMap, path::PathBuf};

use crate::{catalog::CatalogModel, encoder::EncoderConfig};

use serde::{Deserialize, Serialize};

/// `[cache]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Switch: 0 turns the cache off (any other value keeps it on; the bound is `max_bytes`).
    /// Kept from the versions whose bound was an entry count.
    pub capacity: u64,
    /// Bytes the cache may hold (its entries are keyed by a hash of the routing text, so an
    /// entry's size is the head's outputs, a few KB, whatever the prompt's length); 0 turns it off.
    pub max_bytes: u64,
    /// Seconds an entry lives; 0 means no expiry.
    pub ttl_seconds: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { capacity: 20_000, max_bytes: 64 << 20, ttl_seconds: 3600 }
    }
}

/// `[routing]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Profile used when a request names neither a profile nor a cost weight.
    pub default_profile: String,
    /// Named cost weights in [0,1].
    pub profiles: BTreeMap<String, f64>,
    /// Time to first token for models without their own figure, ms.
    pub default_ttft_ms: f64,
    /// Decoding speed for models without their own figure, tokens/s.
    pub default_output_tokens_per_second: f64,
    /// Price of one unit of quality in the utility, USD per request: at cost weight 0.5, 0.1 more
    /// quality is worth `cost_scale_usd / 10` more per request.
    pub cost_scale_usd: f64,
    /// A model with no outcome among the training prompts nearest the request is left out as
    /// outside the head's domain when that would happen by chance with probability below this
    /// (given how often it was observed overall). 0 disables; needs a head with `support`.
    pub out_of_domain_p: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            default_profile: "balanced".into(),
            profiles: BTreeMap::from([("quality".into(), 0.0), ("balanced".into(), 0.5), ("economy".into(), 0.85)]),
            default_ttft_ms: 500.0,
            default_output_tokens_per_second: 60.0,
            out_of_domain_p: 0.01,
            cost_scale_usd: crate::policy::DEFAULT_COST_SCALE_USD,
        }
    }
}

/// Everything [`super::Engine::load`] needs. Relative paths are taken from the working
/// directory; the server resolves its file's paths before it builds this.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// ONNX Runtime's shared library; `None` searches the usual places ([`crate::runtime::locate`]).
    pub onnxruntime: Option<PathBuf>,
    /// The sentence encoder.
    pub encoder: EncoderConfig,
    /// Folder of the head: `manifest.json` and the ONNX graph it names.
    pub head_dir: PathBuf,
    /// Folder of the static tier's head (`encoder.variant` `static` or `cascade`).
    pub static_head_dir: PathBuf,
    /// The prediction cache.
    pub cache: CacheConfig,
    /// Profiles, latency defaults and the cost scale.
    pub routing: RoutingConfig,
    /// The catalog: the candidate models.
    pub models: Vec<CatalogModel>,
    /// Requests that may wait for an encoder thread; beyond this `route` answers
    /// [`super::RouteError::Overloaded`] at once instead of queueing.
    pub max_queued_requests: usize,
    /// Most fallbacks a query may ask for.
    pub max_fallbacks: u32,
    /// Decisions carry their routing text (for a decision log that stores prompts).
    pub keep_routing_text: bool,
    /// Decisions carry the prompt's embedding (for a decision log that stores no prompts).
    pub keep_embeddings: bool,
    /// Exploration (off by default).
    pub exploration: crate::exploration::ExplorationConfig,
    /// Folder of a second head scored beside the serving one, never served (shadow mode).
    pub shadow_head_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    /// The shipped models under `models/` (relative to the working directory), no catalog.
    fn default() -> Self {
        Self {
            onnxruntime: None,
            encoder: EncoderConfig::default(),
            head_dir: "models/router".into(),
            static_head_dir: "models/router-static".into(),
            cache: CacheConfig::default(),
            routing: RoutingConfig::default(),
            models: Vec::new(),
            max_queued_requests: 256,
            max_fallbacks: 8,
            keep_routing_text: false,
            keep_embeddings: false,
            exploration: crate::exploration::ExplorationConfig::default(),
            shadow_head_dir: None,
        }
    }
}
