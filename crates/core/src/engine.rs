//! The routing engine: the core that the gRPC handlers and the CLI call. It knows nothing of
//! protobuf. One `route` call: build the routing text, look the text up in the cache, on a miss
//! tokenize + embed + predict on a thread of the worker pool (`workers`: one thread per encoder
//! session, a bounded queue in front, bounded by the request's deadline), then apply the policy.
//!
//! Tiers: the engine runs one encoder and its head (MiniLM, or the static tier), or with
//! `encoder.variant = "cascade"` two: the static tier decides when the best two utilities of its
//! ranking are at least `encoder.cascade_margin` apart, and MiniLM decides the rest. Each tier's
//! predictions are cached under its own key, so a cached text whose static margin is narrow for
//! one request's cost weight and wide for another's reaches MiniLM only when it must.
mod config;
pub mod workers;

pub use config::{CacheConfig, EngineConfig, RoutingConfig};

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use ndarray::ArrayView2;

use crate::{
    catalog::Catalog,
    encoder::{
        text::{routing_text, ChatMessage, TOKENS_PER_MESSAGE},
        Encoder, EncoderError, EncoderVariant,
    },
    exploration::{self, Choice, Explorer},
    policy::{self, Constraints, NoEligibleModel, Prediction, Ranking, Scoring},
    predictor::{Head, HeadError, HeadOutput},
    runtime::{self, RuntimeError},
};

/// Errors of a routing call or of loading the engine.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A request field is invalid: names the field, its limit and the value given.
    #[error("`{field}` {message}")]
    InvalidArgument {
        /// The field, as named in the API.
        field: String,
        /// The rule and the value given.
        message: String,
    },
    /// The constraints left no model.
    #[error(transparent)]
    NoEligibleModel(#[from] NoEligibleModel),
    /// Too many requests are waiting for the encoder.
    #[error("overloaded: {waiting} requests are waiting for the encoder (limit {limit})")]
    Overloaded {
        /// Requests waiting.
        waiting: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The encoder failed.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// The head failed.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The catalog and the head do not fit together.
    #[error("catalog: {0}")]
    Catalog(String),
    /// The request's deadline passed before an encoder thread started its work.
    #[error("the request's deadline passed while it waited for the encoder")]
    DeadlineExceeded,
    /// The routing work panicked (a bug); the worker thread survived.
    #[error("routing failed: a worker panicked: {0}")]
    WorkerPanic(String),
    /// The engine is shutting down or a worker died.
    #[error("the routing worker stopped: {0}")]
    Worker(String),
}

impl RouteError {
    /// Stable snake_case label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RouteError::InvalidArgument { .. } => "invalid_argument",
            RouteError::NoEligibleModel(_) => "no_eligible_model",
            RouteError::Overloaded { .. } => "overloaded",
            RouteError::Encoder(e) => e.label(),
            RouteError::Head(e) => e.label(),
            RouteError::Runtime(e) => e.label(),
            RouteError::Catalog(_) => "catalog",
            RouteError::DeadlineExceeded => "deadline_exceeded",
            RouteError::WorkerPanic(_) => "worker_panic",
            RouteError::Worker(_) => "worker",
        }
    }

    /// An invalid-argument error.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        RouteError::InvalidArgument { field: field.into(), message: message.into() }
    }
}

/// The lead of the best utility over the second best among the eligible models; infinite when
/// fewer than two are eligible (nothing to choose between).
pub fn top_two_margin(r: &Ranking) -> f64 {
    let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for s in r.scored.iter().filter(|s| s.utility.is_finite()) {
        if s.utility > a {
            (a, b) = (s.utility, a);
        } else if s.utility > b {
            b = s.utility;
        }
    }
    if b.is_finite() {
        a - b
    } else {
        f64::INFINITY
    }
}

/// Longest client value echoed back in an error message, in characters.
pub const MAX_ECHOED_CHARS: usize = 64;

/// `s` cut to [`MAX_ECHOED_CHARS`] characters (with "…" when cut), for error messages: a client's
/// value is echoed so the caller sees what was wrong, never in full.
pub fn truncated(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}

/// How the request chose its trade-off.
#[derive(Debug, Clone, PartialEq)]
pub enum Tradeoff {
    /// The server's default profile.
    Default,
    /// A named profile.
    Profile(String),
    /// An explicit cost weight in [0,1].
    Weight(f64),
}

/// One routing request, already structurally valid (see `transport` for the wire checks).
#[derive(Debug, Clone)]
pub struct RouteQuery {
    /// Request id (generated by the caller of `route` if the client gave none).
    pub request_id: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// The trade-off.
    pub tradeoff: Tradeoff,
    /// Hard constraints; `max_fallbacks` already defaulted.
    pub constraints: Constraints,
    /// Return every model's score.
    pub explain: bool,
    /// When the caller stops waiting (from `grpc-timeout`): waiting for the encoder ends
    /// there with `DeadlineExceeded`, and work not started by then is never computed.
    pub deadline: Option<Instant>,
    /// The request's say on exploration.
    pub explore: exploration::Opt,
    /// The session the request belongs to, if it names one. The engine does not read it: the
    /// server applies the session to the decision (`session::apply`).
    pub session: Option<crate::session::SessionRequest>,
}

impl RouteQuery {
    /// A query for `messages` under the default profile, with no constraints and up to
    /// `max_fallbacks` fallbacks.
    ///
    /// ```
    /// use pointsman_core::{encoder::text::ChatMessage, engine::{RouteQuery, Tradeoff}};
    ///
    /// let q = RouteQuery::new("req-1", vec![ChatMessage::user("Summarise this contract.")], 2);
    /// assert_eq!(q.tradeoff, Tradeoff::Default);
    /// assert_eq!(q.constraints.max_fallbacks, 2);
    /// ```
    pub fn new(request_id: impl Into<String>, messages: Vec<ChatMessage>, max_fallbacks: usize) -> Self {
        Self {
            request_id: request_id.into(),
            messages,
            tradeoff: Tradeoff::Default,
            constraints: Constraints { max_fallbacks, ..Constraints::default() },
            explain: false,
            deadline: None,
            explore: exploration::Opt::Default,
            session: None,
        }
    }

    /// A query the server makes of its own engine (a reload check, a probe), not traffic: one
    /// user prompt under the default profile, no fallbacks, never exploring (so it spends none
    /// of the exploration budget) and in no session.
    pub fn internal(request_id: impl Into<String>, prompt: &str) -> Self {
        Self { explore: exploration::Opt::Out, ..Self::new(request_id, vec![ChatMessage::user(prompt.to_string())], 0) }
    }
}

/// Time per stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Routing text and token count.
    pub prepare: Duration,
    /// Tokenize and embed (zero on a cache hit).
    pub encode: Duration,
    /// Head (zero on a cache hit).
    pub predict: Duration,
    /// Policy.
    pub rank: Duration,
    /// Whole call.
    pub total: Duration,
    /// Whether the cache answered.
    pub cache_hit: bool,
}

/// The decision for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The request id.
    pub request_id: String,
    /// Ranked and explained models.
    pub ranking: Ranking,
    /// The cost weight applied.
    pub cost_weight: f64,
    /// The profile applied, if any.
    pub profile: Option<String>,
    /// Input tokens of the whole conversation.
    pub input_tokens: u32,
    /// Time per stage.
    pub timings: StageTimings,
    /// The routing text that was embedded, kept only when the decision log stores prompts.
    pub routing_text: Option<String>,
    /// Its embedding, kept only when the decision log stores embeddings instead of prompts.
    pub embedding: Option<Arc<[f32]>>,
    /// The request's constraints as applied.
    pub constraints: Constraints,
    /// How the request chose its trade-off.
    pub tradeoff: Tradeoff,
    /// The encoder whose embedding decided (with the cascade, the static tier's or MiniLM's).
    pub encoder: Arc<str>,
    /// With the cascade: the static tier's margin was narrow and MiniLM decided.
    pub escalated: bool,
    /// What the request's session did to the ranking (set by the server, see `session`).
    pub session: Option<crate::session::SessionOutcome>,
    /// How the primary was chosen: its propensity, whether it was explored.
    pub choice: Choice,
    /// What the shadow head would have chosen, when one is configured.
    pub shadow: Option<ShadowDecision>,
}

/// The choice of the shadow head for one request: scored on the same embedding, under the same
/// constraints and health, never served.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowDecision {
    /// The shadow head's id.
    pub head_id: String,
    /// The model it would have made the primary (`None` when its predictions left no model).
    pub model: Option<String>,
    /// Its predicted quality and cost of that model.
    pub quality: f64,
    /// Predicted cost, USD.
    pub cost_usd: f64,
    /// It agrees with the served primary (before exploration).
    pub agrees: bool,
}

/// A second head scored beside the serving one (shadow mode).
struct Shadow {
    head: Head,
    /// For each catalog model, its output index in the shadow head.
    index: Vec<Option<usize>>,
}

/// The head's outputs for one routing text, in head order.
#[derive(Debug)]
struct Outputs {
    quality: Vec<f32>,
    output_tokens: Vec<f32>,
    support: Option<Vec<f32>>,
    family_support: Option<Vec<f32>>,
}

impl Outputs {
    fn from(out: HeadOutput) -> Self {
        Self { quality: out.quality, output_tokens: out.output_tokens, support: out.support, family_support: out.family_support }
    }

    fn floats(&self) -> usize {
        self.quality.len()
            + self.output_tokens.len()
            + self.support.as_ref().map_or(0, Vec::len)
            + self.family_support.as_ref().map_or(0, Vec::len)
    }

    /// Per catalog model (through `index`), the prediction of `head`.
    fn predictions(&self, head: &Head, index: &[Option<usize>]) -> Vec<Option<Prediction>> {
        let chance = head.domain_chance(self.support.as_deref(), self.family_support.as_deref());
        index
            .iter()
            .map(|idx| {
                idx.map(|j| Prediction {
                    quality: f64::from(self.quality[j]).clamp(0.0, 1.0),
                    output_tokens: f64::from(self.output_tokens[j]).max(1.0),
                    domain_chance: chance[j],
                })
            })
            .collect()
    }
}

/// What the cache keeps per routing text: the head's outputs in head order.
#[derive(Debug)]
pub struct Cached {
    head: Outputs,
    shadow: Option<Outputs>,
    text_tokens: u32,
    embedding: Option<Arc<[f32]>>,
}

impl Cached {
    /// Bytes this entry holds (with its key and moka's bookkeeping, roughly), for the cache's
    /// byte budget.
    fn bytes(&self) -> u32 {
        let floats = self.head.floats() + self.shadow.as_ref().map_or(0, Outputs::floats) + self.embedding.as_ref().map_or(0, |e| e.len());
        u32::try_from(floats * 4 + std::mem::size_of::<Self>() + CACHE_ENTRY_OVERHEAD).unwrap_or(u32::MAX)
    }
}

/// Bytes per cache entry beyond its vectors: the 16-byte key, the `Arc`, moka's node and
/// frequency sketch (measured with `cargo bench --bench memory_bound`, see docs/measurements.md).
const CACHE_ENTRY_OVERHEAD: usize = 160;

/// The prediction cache: the head's outputs keyed by a 128-bit hash (XXH3) of the routing text,
/// so an entry's size does not depend on the prompt's, bounded in bytes. It belongs to the
/// service and is handed from one engine to the next by a reload that keeps the encoder, the head
/// and the logged fields (see [`PredictionCache::key`]).
#[derive(Clone)]
pub struct PredictionCache {
    inner: moka::sync::Cache<u128, Arc<Cached>>,
    /// What the cached values depend on: encoder id, head id, whether embeddings are kept.
    key: String,
}

impl PredictionCache {
    fn new(config: &CacheConfig, key: String) -> Option<Self> {
        (config.capacity > 0 && config.max_bytes > 0).then(|| {
            let b = moka::sync::Cache::builder().max_capacity(config.max_bytes).weigher(|_k: &u128, v: &Arc<Cached>| v.bytes());
            let b = if config.ttl_seconds > 0 { b.time_to_live(Duration::from_secs(config.ttl_seconds)) } else { b };
            Self { inner: b.build(), key }
        })
    }

    /// The key of a routing text.
    fn hash(text: &str) -> u128 {
        xxhash_rust::xxh3::xxh3_128(text.as_bytes())
    }
}

/// An encoder and the head trained on its embeddings.
struct Tier {
    encoder: Encoder,
    head: Head,
    /// For each catalog model, its output index in the head.
    head_index: Vec<Option<usize>>,
    /// The encoder's id, shared with the decisions.
    id: Arc<str>,
}

impl Tier {
    fn load(
        env: &ort::environment::Environment,
        config: &EngineConfig,
        catalog: &Catalog,
        variant: EncoderVariant,
    ) -> Result<Self, RouteError> {
        let encoder = Encoder::load_variant(env, &config.encoder, variant)?;
        let head_dir = match variant {
            EncoderVariant::Static => &config.static_head_dir,
            _ => &config.head_dir,
        };
        // The static tier's head is most of its work (the encoder, a table lookup, is quick), so
        // each worker thread gets a session of it; MiniLM's waits behind a 4 ms encoder, so one.
        let sessions = if encoder.is_static() { encoder.parallelism() } else { 1 };
        let head = Head::load_with_sessions(env, head_dir, sessions)?;
        let m = head.manifest();
        if m.encoder.dimension != encoder.dimension() {
            return Err(RouteError::Catalog(format!(
                "the head in {} expects {}-dimensional embeddings from `{}`, the encoder `{}` gives {}",
                head_dir.display(),
                m.encoder.dimension,
                m.encoder.id,
                encoder.id(),
                encoder.dimension()
            )));
        }
        if m.encoder.id != encoder.id() {
            tracing::warn!(head = %m.encoder.id, encoder = %encoder.id(), "the head was trained on another encoder variant; predictions may be less accurate");
        }
        let head_index: Vec<Option<usize>> = catalog.models().iter().map(|c| head.models().iter().position(|h| *h == c.id)).collect();
        if head_index.iter().all(Option::is_none) {
            return Err(RouteError::Catalog(format!("the head in {} covers none of the catalog's models", head_dir.display())));
        }
        for (c, idx) in catalog.models().iter().zip(&head_index) {
            if idx.is_none() {
                tracing::warn!(model = %c.id, head = %head_dir.display(), "catalog model not covered by the head; it will never be routed to");
            }
        }
        let id = Arc::from(encoder.id());
        Ok(Self { encoder, head, head_index, id })
    }
}

/// How often the cascade's static tier decided alone and how often it asked MiniLM.
#[derive(Debug, Default)]
pub struct CascadeStats {
    /// Decided by the static tier.
    pub static_decided: AtomicU64,
    /// Decided by MiniLM (the static margin was narrow).
    pub escalated: AtomicU64,
}

/// The loaded engine: encoder, head, catalog, cache and settings.
pub struct Engine {
    config: EngineConfig,
    catalog: Catalog,
    /// The tier that routes every request (with the cascade: the static one).
    tier: Tier,
    /// The cascade's second tier (MiniLM), asked when the first's margin is narrow.
    escalation: Option<Tier>,
    cascade: CascadeStats,
    cache: Option<PredictionCache>,
    version: String,
    pool: workers::WorkerPool,
    keep_embeddings: bool,
    keep_text: bool,
    explorer: Arc<Explorer>,
    shadow: Option<Shadow>,
}

impl Engine {
    /// Loads ONNX Runtime, the encoder and the head, and checks them against the catalog.
    pub fn load(config: EngineConfig) -> Result<Self, RouteError> {
        Self::load_after(config, None)
    }

    /// As [`Engine::load`], keeping `previous`'s prediction cache when the new engine would fill
    /// it with the same values (same encoder, head, cache settings and logged fields): a reload
    /// that changes prices or profiles does not start cold.
    pub fn load_after(config: EngineConfig, previous: Option<&Engine>) -> Result<Self, RouteError> {
        let env = runtime::environment(config.onnxruntime.as_deref())?;
        let catalog = Catalog::new(config.models.clone()).map_err(|e| RouteError::Catalog(e.to_string()))?;
        let (tier, escalation) = match config.encoder.variant {
            EncoderVariant::Cascade => {
                let margin = config.encoder.cascade_margin;
                if !(margin.is_finite() && margin >= 0.0) {
                    return Err(RouteError::invalid("encoder.cascade_margin", format!("must be a finite number >= 0. Given: {margin}")));
                }
                let first = Tier::load(env, &config, &catalog, EncoderVariant::Static)?;
                (first, Some(Tier::load(env, &config, &catalog, EncoderVariant::Int8)?))
            }
            v => (Tier::load(env, &config, &catalog, v)?, None),
        };
        // The shadow head reads the first tier's embedding (with the cascade: the static one's).
        let shadow = match &config.shadow_head_dir {
            Some(dir) => {
                let head = Head::load(env, dir)?;
                let sm = head.manifest();
                if sm.encoder.dimension != tier.encoder.dimension() {
                    return Err(RouteError::Catalog(format!(
                        "the shadow head at {} expects {}-dimensional embeddings, the encoder `{}` gives {}",
                        dir.display(),
                        sm.encoder.dimension,
                        tier.encoder.id(),
                        tier.encoder.dimension()
                    )));
                }
                let index: Vec<Option<usize>> = catalog.models().iter().map(|c| head.models().iter().position(|h| *h == c.id)).collect();
                if index.iter().all(Option::is_none) {
                    return Err(RouteError::Catalog(format!("the shadow head at {} covers none of the catalog's models", dir.display())));
                }
                Some(Shadow { head, index })
            }
            None => None,
        };
        let explorer = match previous {
            // The day's exploration budget carries over a reload that keeps the setting.
            Some(p) if p.explorer.config() == &config.exploration => Arc::clone(&p.explorer),
            _ => Arc::new(Explorer::new(config.exploration.clone())),
        };
        let m = tier.head.manifest();
        let version = match &escalation {
            Some(e) => format!("{}+{}+{}", env!("CARGO_PKG_VERSION"), m.head_id, e.head.manifest().head_id),
            None => format!("{}+{}", env!("CARGO_PKG_VERSION"), m.head_id),
        };
        let threads = tier.encoder.parallelism().max(escalation.as_ref().map_or(0, |e| e.encoder.parallelism()));
        let pool = workers::WorkerPool::start("pointsman-encoder", threads, config.max_queued_requests)?;
        let (keep_text, keep_embeddings) = (config.keep_routing_text, config.keep_embeddings);
        let shadow_id = shadow.as_ref().map(|s| s.head.manifest().head_id.clone());
        let cache_key = format!(
            "{}|{}|{shadow_id:?}|{keep_embeddings}|{:?}|{}",
            tier.encoder.id(),
            version,
            config.cache,
            config.encoder.cascade_margin
        );
        let cache = match previous.and_then(|p| p.cache.as_ref()) {
            Some(c) if c.key == cache_key => {
                tracing::info!(entries = c.inner.entry_count(), "the prediction cache carries over: same encoder, head and cache settings");
                Some(c.clone())
            }
            _ => PredictionCache::new(&config.cache, cache_key),
        };
        Ok(Self {
            config,
            catalog,
            tier,
            escalation,
            cascade: CascadeStats::default(),
            cache,
            version,
            pool,
            keep_embeddings,
            keep_text,
            explorer,
            shadow,
        })
    }

    /// The config the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The encoder (with the cascade: the static tier's).
    pub fn encoder(&self) -> &Encoder {
        &self.tier.encoder
    }

    /// The head (with the cascade: the static tier's).
    pub fn head(&self) -> &Head {
        &self.tier.head
    }

    /// With the cascade: MiniLM's encoder and head.
    pub fn escalation(&self) -> Option<(&Encoder, &Head)> {
        self.escalation.as_ref().map(|t| (&t.encoder, &t.head))
    }

    /// With the cascade: how many decisions each tier made.
    pub fn cascade_stats(&self) -> Option<&CascadeStats> {
        self.escalation.as_ref().map(|_| &self.cascade)
    }

    /// "<package version>+<head id>".
    pub fn version(&self) -> &str {
        &self.version
    }

    /// True when the head predicts catalog model `i`.
    pub fn covers(&self, i: usize) -> bool {
        self.tier.head_index.get(i).is_some_and(Option::is_some)
    }

    /// Named profiles.
    pub fn profiles(&self) -> &BTreeMap<String, f64> {
        &self.config.routing.profiles
    }

    /// The exploration policy and its counters.
    pub fn explorer(&self) -> &Explorer {
        &self.explorer
    }

    /// The shadow head's id, when one is configured.
    pub fn shadow_head_id(&self) -> Option<&str> {
        self.shadow.as_ref().map(|s| s.head.manifest().head_id.as_str())
    }

    /// Counters of the encoder worker pool (queue depth, jobs run and skipped, panics).
    pub fn pool_stats(&self) -> &workers::PoolStats {
        self.pool.stats()
    }

    /// Entries in the prediction cache (approximate; for metrics and tests).
    pub fn cache_entries(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            c.inner.run_pending_tasks();
            c.inner.entry_count()
        })
    }

    /// Bytes the prediction cache holds, by its own weighing (for metrics and benches).
    pub fn cache_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            c.inner.run_pending_tasks();
            c.inner.weighted_size()
        })
    }

    /// Checks the parts of a query that need the catalog and config, naming the field.
    pub fn validate(&self, q: &RouteQuery) -> Result<(), RouteError> {
        let known_models = |field: &str, list: &[String]| -> Result<(), RouteError> {
            for m in list {
                if self.catalog.get(m).is_none() {
                    return Err(RouteError::invalid(
                        field,
                        format!("names a model that is not in the catalog (see ListModels). Given: {:?}", truncated(m)),
                    ));
                }
            }
            Ok(())
        };
        let known_providers = |field: &str, list: &[String]| -> Result<(), RouteError> {
            for p in list {
                if !self.catalog.has_provider(p) {
                    return Err(RouteError::invalid(
                        field,
                        format!("names a provider that no catalog model has. Given: {:?}", truncated(p)),
                    ));
                }
            }
            Ok(())
        };
        let c = &q.constraints;
        known_models("allowed_models", &c.allowed_models)?;
        known_models("denied_models", &c.denied_models)?;
        known_providers("allowed_providers", &c.allowed_providers)?;
        known_providers("denied_providers", &c.denied_providers)?;
        if let Tradeoff::Profile(p) = &q.tradeoff {
            if !self.config.routing.profiles.contains_key(p) {
                let known: Vec<_> = self.config.routing.profiles.keys().map(String::as_str).collect();
                return Err(RouteError::invalid("profile", format!("must be one of [{}]. Given: {:?}", known.join(", "), truncated(p))));
            }
        }
        let limit = self.config.max_fallbacks as usize;
        if c.max_fallbacks > limit {
            return Err(RouteError::invalid("max_fallbacks", format!("must be <= {limit}. Given: {}", c.max_fallbacks)));
        }
        Ok(())
    }

    fn resolve_tradeoff(&self, t: &Tradeoff) -> (f64, Option<String>) {
        let profile = |name: &str| {
            let w = *self.config.routing.profiles.get(name).expect("profile was validated. This is a bug.");
            (w, Some(name.to_string()))
        };
        match t {
            Tradeoff::Weight(w) => (*w, None),
            Tradeoff::Profile(p) => profile(p),
            Tradeoff::Default => profile(&self.config.routing.default_profile),
        }
    }

    /// Routes one query with every model healthy.
    pub async fn route(self: &Arc<Self>, q: RouteQuery) -> Result<Decision, RouteError> {
        self.route_with_health(q, &[]).await
    }

    /// Routes one query; `health[i]` is the live health of catalog model `i` (empty: all healthy).
    pub async fn route_with_health(self: &Arc<Self>, q: RouteQuery, health: &[crate::health::Snapshot]) -> Result<Decision, RouteError> {
        self.route_live(q, health, &[]).await
    }

    /// Routes one query with what is known live: `health[i]` is catalog model `i`'s health (empty:
    /// all healthy) and `endpoints[i][j]` endpoint `j` of model `i`'s breaker and measurements
    /// (empty: every endpoint unmeasured, judged on the catalog's priors).
    pub async fn route_live(
        self: &Arc<Self>,
        q: RouteQuery,
        health: &[crate::health::Snapshot],
        endpoints: &[Vec<crate::health::EndpointLive>],
    ) -> Result<Decision, RouteError> {
        let t0 = Instant::now();
        self.validate(&q)?;
        let (cost_weight, profile) = self.resolve_tradeoff(&q.tradeoff);
        let Some(text) = routing_text(&q.messages) else {
            return Err(RouteError::invalid(
                "messages",
                format!("must hold at least one message with text to route on. Given: {} messages, none with text", q.messages.len()),
            ));
        };
        let logged_text = self.keep_text.then(|| text.clone());
        // One message routed on whole: its tokens are the routing text's (else the conversation
        // is counted message by message, every role and the part cut from the routing text included).
        let single = q.messages.len() == 1 && text.len() == q.messages[0].content.trim().len();
        let mut timings = StageTimings::default();
        let key = PredictionCache::hash(&text);
        let (pred, conversation_tokens) = self.predict(&self.tier, key, &text, (&q.messages, q.deadline), single, &mut timings).await?;
        let constraints = Constraints { out_of_domain_p: self.config.routing.out_of_domain_p, ..q.constraints };
        let live = policy::Live { models: health, endpoints, spread: xxhash_rust::xxh3::xxh3_64(q.request_id.as_bytes()) };
        let mut t = Instant::now();
        let mut ranking = self.rank_with(&self.tier, &pred.head, live, conversation_tokens, cost_weight, &constraints)?;
        let (mut decided_by, mut embedding, mut escalated) = (&self.tier, pred.embedding.clone(), false);
        if let Some(minilm) = &self.escalation {
            if top_two_margin(&ranking) < self.config.encoder.cascade_margin {
                timings.rank += t.elapsed();
                // MiniLM's entry lives under its own key (the text's hash plus one).
                let (p2, _) = self.predict(minilm, key.wrapping_add(1), &text, (&q.messages, q.deadline), single, &mut timings).await?;
                t = Instant::now();
                ranking = self.rank_with(minilm, &p2.head, live, conversation_tokens, cost_weight, &constraints)?;
                (decided_by, embedding, escalated) = (minilm, p2.embedding.clone(), true);
                self.cascade.escalated.fetch_add(1, Ordering::Relaxed);
            } else {
                self.cascade.static_decided.fetch_add(1, Ordering::Relaxed);
            }
        }
        let best = ranking.chosen[0];
        let shadow = match (&self.shadow, &pred.shadow) {
            (Some(s), Some(out)) => {
                let predictions = out.predictions(&s.head, &s.index);
                let r = self.score(&predictions, live, conversation_tokens, cost_weight, &constraints).ok();
                let top = r.as_ref().map(|r| &r.scored[r.chosen[0]]);
                Some(ShadowDecision {
                    head_id: s.head.manifest().head_id.clone(),
                    model: top.map(|t| self.catalog.models()[t.model].id.clone()),
                    quality: top.and_then(|t| t.prediction).map_or(0.0, |p| p.quality),
                    cost_usd: top.map_or(0.0, |t| t.cost_usd),
                    agrees: top.is_some_and(|t| t.model == ranking.scored[best].model),
                })
            }
            _ => None,
        };
        let choice = self.explorer.choose(&q.request_id, q.explore, &mut ranking);
        timings.rank += t.elapsed();
        timings.total = t0.elapsed();
        Ok(Decision {
            request_id: q.request_id,
            ranking,
            cost_weight,
            profile,
            input_tokens: conversation_tokens,
            timings,
            routing_text: logged_text,
            embedding,
            constraints,
            tradeoff: q.tradeoff,
            encoder: Arc::clone(&decided_by.id),
            escalated,
            choice,
            shadow,
            session: None,
        })
    }

    /// The head's outputs for `text` from `tier`: from the cache under `key`, else tokenize +
    /// embed + predict on the worker pool (and cache them). The first tier's entry also holds the
    /// shadow head's outputs, on the same embedding. Adds to `timings`.
    async fn predict(
        self: &Arc<Self>,
        tier: &Tier,
        key: u128,
        text: &str,
        (messages, deadline): (&[ChatMessage], Option<Instant>),
        single: bool,
        timings: &mut StageTimings,
    ) -> Result<(Arc<Cached>, u32), RouteError> {
        let t0 = Instant::now();
        if let Some(hit) = self.cache.as_ref().and_then(|c| c.inner.get(&key)) {
            timings.cache_hit = true;
            let tokens = if single && hit.text_tokens > 0 {
                hit.text_tokens + TOKENS_PER_MESSAGE
            } else {
                // Counting a conversation's tokens is tokenizer work but no encoder work: it
                // runs on tokio's blocking pool, so cache hits never queue for the encoder.
                let this = Arc::clone(self);
                let msgs = messages.to_vec();
                tokio::task::spawn_blocking(move || this.count_conversation(&msgs))
                    .await
                    .map_err(|e| RouteError::Worker(e.to_string()))??
            };
            timings.prepare += t0.elapsed();
            return Ok((hit, tokens));
        }
        timings.cache_hit = false;
        let this = Arc::clone(self);
        let msgs = messages.to_vec();
        let text = text.to_string();
        let second = !std::ptr::eq(tier, &self.tier);
        let (pred, tokens, stage) = self
            .pool
            .run(deadline, move || -> Result<_, RouteError> {
                let tier = if second { this.escalation.as_ref().expect("a second tier exists. This is a bug.") } else { &this.tier };
                let t = Instant::now();
                let tokens = tier.encoder.tokenize(&text)?;
                let conv = if single { tokens.full_count + TOKENS_PER_MESSAGE } else { this.count_conversation(&msgs)? };
                let prepare = t.elapsed();
                let t = Instant::now();
                let emb = tier.encoder.embed(&tokens)?;
                let encode = t.elapsed();
                let t = Instant::now();
                let x = ArrayView2::from_shape((1, emb.len()), &emb).expect("1xD. This is a bug.");
                let out = tier.head.predict(x)?;
                // The shadow head reads the same embedding: no second encoder run.
                let shadow = match (&this.shadow, second) {
                    (Some(s), false) => Some(Outputs::from(s.head.predict(x)?)),
                    _ => None,
                };
                let predict = t.elapsed();
                tracing::debug!(
                    tokens = tokens.full_count,
                    encoder = %tier.id,
                    encode_us = encode.as_micros() as u64,
                    predict_us = predict.as_micros() as u64,
                    "encoded"
                );
                let cached = Arc::new(Cached {
                    head: Outputs::from(out),
                    shadow,
                    text_tokens: tokens.full_count,
                    embedding: this.keep_embeddings.then(|| Arc::from(emb.as_slice())),
                });
                if let Some(c) = &this.cache {
                    c.inner.insert(key, Arc::clone(&cached));
                }
                Ok((cached, conv, (prepare, encode, predict)))
            })
            .await??;
        timings.prepare += stage.0;
        timings.encode += stage.1;
        timings.predict += stage.2;
        Ok((pred, tokens))
    }

    /// Ranks the catalog on `tier`'s predictions.
    fn rank_with(
        &self,
        tier: &Tier,
        out: &Outputs,
        live: policy::Live<'_>,
        conversation_tokens: u32,
        cost_weight: f64,
        constraints: &Constraints,
    ) -> Result<Ranking, RouteError> {
        let predictions = out.predictions(&tier.head, &tier.head_index);
        self.score(&predictions, live, conversation_tokens, cost_weight, constraints)
    }

    /// Ranks the catalog on per-model predictions under the routing settings.
    fn score(
        &self,
        predictions: &[Option<Prediction>],
        live: policy::Live<'_>,
        conversation_tokens: u32,
        cost_weight: f64,
        constraints: &Constraints,
    ) -> Result<Ranking, RouteError> {
        let r = &self.config.routing;
        let scoring = Scoring {
            ttft_ms: r.default_ttft_ms,
            output_tokens_per_second: r.default_output_tokens_per_second,
            cost_scale_usd: r.cost_scale_usd,
        };
        Ok(policy::rank_live(&self.catalog, predictions, live, conversation_tokens, cost_weight, constraints, scoring)?)
    }

    fn count_conversation(&self, msgs: &[ChatMessage]) -> Result<u32, RouteError> {
        let mut n = 0u32;
        for m in msgs {
            n = n.saturating_add(self.tier.encoder.count_tokens(&m.content)?).saturating_add(TOKENS_PER_MESSAGE);
        }
        Ok(n)
    }
}
