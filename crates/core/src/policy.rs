//! The routing policy: from per-model predictions to a ranked, constrained list.
//!
//! Pure and synchronous (no I/O, no protobuf), so every rule here is unit-tested directly.
//!
//! Utility. For a model with predicted quality `q` in [0,1] and predicted cost `c` in USD,
//! `utility = (1 - w) * q - w * c / cost_scale_usd`, where `w` is the cost weight and
//! `cost_scale_usd` a fixed price of one unit of quality (config `routing.cost_scale_usd`,
//! $0.01 by default): at `w = 0.5`, 0.1 more quality is worth $0.001 more per request. With
//! `w = 0` the ranking is by quality alone; with `w = 1` by cost alone (the cheapest model that
//! passes the constraints, `min_quality` included). Cost enters linearly because that is what a
//! budget is: maximising `quality - lambda * cost` prompt by prompt maximises mean quality for
//! the mean cost it spends (the Lagrangian of "best quality under an average budget"), so a sweep
//! of `w` traces the router's whole quality-cost frontier. (A log-cost utility was tried first:
//! its sweep cannot reach the points between models that a budget-optimal policy uses, and on
//! the held-out shared data it lost 5-19 points of the single-model-to-oracle gap.) The scale
//! does not depend on which other models a request allows, so adding a candidate never reorders
//! the others.
//!
//! Two kinds of rule. The **hard** rules are coverage by the head (a model without a prediction
//! cannot be ranked) and the request's own constraints: model allow/deny lists, provider
//! allow/deny lists, context window, `min_quality`, `max_cost_usd`. They are applied in that
//! order, a model's exclusion reason is the first one it fails, and when one leaves no model the
//! request is refused with an error naming that rule: only the caller's constraints (or a head
//! that covers nothing) can refuse a request.
//!
//! The **soft** rules are the router's own judgement, applied after the hard ones: the head's
//! domain (training evidence near the prompt, see `learning::Support`), then live health (see
//! `health`). A soft rule never empties the list: when it would leave no model, the models it
//! would have left out stay, ranked by utility, each carrying the rule in `Scored::kept_despite`
//! so `explain` says why it was doubted and kept. A model whose circuit is open (cooling down
//! after repeated failures) is left out with reason UNHEALTHY unless only cooling-down models
//! remain; routing to a model that may be failing, or whose prediction is an extrapolation,
//! beats refusing to route. Degraded models stay eligible but rank behind every healthy (or
//! probing) one; within each tier the order is by utility.
//!
//! Fallbacks are the next best by utility, except that when none of them is from a provider
//! other than the primary's and such a model is eligible, the best of those takes the last slot:
//! one provider's outage must not take out the whole list.
//!
//! **Endpoints.** A model is served by one or more endpoints (providers, see `catalog`). The
//! rules about a provider, a window, a price or a capability are judged per endpoint: a model is
//! left out by such a rule only when none of its endpoints passes it (its reason is then that
//! rule's, with the closest endpoint's numbers), and each endpoint carries the first rule it
//! failed. The request's provider preferences mirror OpenRouter's `provider` object: hard
//! filters (`only`, `ignore`, `quantizations`, `data_collection = "deny"`, `zdr`,
//! `require_parameters`, `max_price`, and `allow_fallbacks = false` with an `order`) and the
//! request's needs (tools, images, JSON schema output, a reasoning effort, output tokens: an
//! endpoint that declares it cannot is never used) exclude endpoints; soft ones reorder them and
//! never refuse: `order` first, then the endpoint's own breaker (one cooling down is left out while
//! another endpoint of the model is usable; degraded ones go after healthy ones), then the
//! endpoints that meet `preferred_max_latency` / `preferred_min_throughput` (judged on the
//! endpoint's measured quantiles, see [`Live`], or the catalog's priors while unmeasured), then by
//! `sort`, then catalog order. Without `sort` and `order` the order is OpenRouter's default load
//! balancing on live figures: by price, near ties ([`NEAR_TIE`]) broken by measured speed, and
//! the load spread among equally good endpoints (and those not measured yet). `max_latency` is a
//! hard endpoint rule on the measured latency quantiles; unmeasured endpoints pass it.
//! `allow_fallbacks = false` keeps only a model's first endpoint. A candidate's cost, latency and
//! utility are those of its first endpoint. The response's attempt order (`Ranking::attempts`)
//! is `partition = model` (default): each candidate's endpoints, then the next candidate's; or
//! `partition = none`: every endpoint of every candidate sorted together by the same keys.
use crate::{
    catalog::{Catalog, CatalogModel, Endpoint},
    encoder::text::Requirements,
    health::{EndpointLive, Percentile, Snapshot, State},
};

/// Default price of one unit of quality, USD per request (see the module docs).
pub const DEFAULT_COST_SCALE_USD: f64 = 0.01;

/// What the head predicts for one model on one prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Predicted quality in [0,1].
    pub quality: f64,
    /// Predicted output tokens (>= 1).
    pub output_tokens: f64,
    /// Chance that the head's lack of evidence for this model near the prompt is a fluke (see
    /// `Head::domain_chance`); 1 when it has evidence or does not measure it.
    pub domain_chance: f64,
}

/// OpenRouter's `provider.sort` (`by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    /// Cheapest first: the endpoint's predicted cost for this request.
    Price,
    /// Highest output tokens per second first.
    Throughput,
    /// Lowest time to first token first.
    Latency,
}

/// OpenRouter's `provider.sort.partition`: how the attempt order spans candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Partition {
    /// Each candidate's endpoints, then the next candidate's: the same model on another
    /// endpoint before another model.
    #[default]
    Model,
    /// Every endpoint of every candidate sorted together.
    None,
}

/// A soft target as a single number (p50) or per percentile (OpenRouter's
/// `preferred_max_latency` / `preferred_min_throughput`). Every given percentile must be met.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: Option<f64>,
    /// 75th percentile.
    pub p75: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

impl Percentiles {
    /// True when no percentile is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The cutoffs given, with their percentile.
    fn cutoffs(&self) -> impl Iterator<Item = (Percentile, f64)> {
        Percentile::ALL.into_iter().zip([self.p50, self.p75, self.p90, self.p99]).filter_map(|(p, v)| Some((p, v?)))
    }
}

/// A hard limit on an endpoint's measured end-to-end latency at a percentile (`max_latency_ms`).
/// Endpoints without measurements yet pass it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyLimit {
    /// The most milliseconds.
    pub ms: f64,
    /// The percentile the limit applies to.
    pub percentile: Percentile,
}

/// Near ties: endpoints whose predicted cost is within this share of the cheapest one's are
/// ordered by measured speed, and those also within this share of the fastest share the load.
pub const NEAR_TIE: f64 = 0.10;

/// What the router knows live when it ranks: each model's breaker and each endpoint's breaker
/// and measurements, in catalog order, and a number that spreads load among equal endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live<'a> {
    /// `models[i]` is catalog model `i`'s health; empty: every model healthy.
    pub models: &'a [Snapshot],
    /// `endpoints[i][j]` is endpoint `j` of catalog model `i`; empty (or short): unmeasured.
    pub endpoints: &'a [Vec<EndpointLive>],
    /// A hash of the request id: which of several equally good endpoints goes first.
    pub spread: u64,
}

impl Live<'_> {
    fn endpoint(&self, i: usize, j: usize) -> Option<&EndpointLive> {
        self.endpoints.get(i).and_then(|v| v.get(j))
    }
}

/// OpenRouter's `provider` object: how one request picks among a model's endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderPreferences {
    /// Providers to try first, in this order.
    pub order: Vec<String>,
    /// When non-empty, the only providers allowed.
    pub only: Vec<String>,
    /// Providers never used.
    pub ignore: Vec<String>,
    /// false: with `order`, only its providers (in that order); without, only each model's first
    /// endpoint.
    pub allow_fallbacks: bool,
    /// Sort key for the endpoint order (None: price, OpenRouter's default priority).
    pub sort: Option<SortBy>,
    /// How the attempt order spans candidates.
    pub partition: Partition,
    /// Most USD per million prompt tokens.
    pub max_prompt_price: Option<f64>,
    /// Most USD per million completion tokens.
    pub max_completion_price: Option<f64>,
    /// When non-empty, the only quantizations allowed ("unknown" matches endpoints without one).
    pub quantizations: Vec<String>,
    /// `data_collection = "deny"`: only endpoints known not to train on prompts.
    pub deny_data_collection: bool,
    /// Only endpoints known not to retain prompts (zero data retention).
    pub zdr: bool,
    /// Only endpoints that declare every capability the request needs.
    pub require_parameters: bool,
    /// Preferred most time to first token, seconds (soft).
    pub preferred_max_latency: Percentiles,
    /// Preferred least output tokens per second (soft).
    pub preferred_min_throughput: Percentiles,
}

impl Default for ProviderPreferences {
    fn default() -> Self {
        Self {
            order: Vec::new(),
            only: Vec::new(),
            ignore: Vec::new(),
            allow_fallbacks: true,
            sort: None,
            partition: Partition::Model,
            max_prompt_price: None,
            max_completion_price: None,
            quantizations: Vec::new(),
            deny_data_collection: false,
            zdr: false,
            require_parameters: false,
            preferred_max_latency: Percentiles::default(),
            preferred_min_throughput: Percentiles::default(),
        }
    }
}

/// The hard constraints of one request, already validated against the catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    /// Upper bound on predicted cost in USD.
    pub max_cost_usd: Option<f64>,
    /// Lower bound on predicted quality.
    pub min_quality: Option<f64>,
    /// When non-empty, the only models allowed.
    pub allowed_models: Vec<String>,
    /// Models never chosen.
    pub denied_models: Vec<String>,
    /// When non-empty, the only providers allowed.
    pub allowed_providers: Vec<String>,
    /// Providers never chosen.
    pub denied_providers: Vec<String>,
    /// Fallbacks after the primary.
    pub max_fallbacks: usize,
    /// Models whose `domain_chance` is below this are out of the head's domain (0 disables).
    pub out_of_domain_p: f64,
    /// What the request needs beyond text: an endpoint that declares it cannot is never used.
    pub requirements: Requirements,
    /// OpenRouter-style provider preferences.
    pub provider: ProviderPreferences,
    /// Most measured latency of an endpoint at a percentile (hard; unmeasured endpoints pass).
    pub max_latency: Option<LatencyLimit>,
}

/// Server-wide scoring settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring {
    /// Time to first token for models without their own figure, ms.
    pub ttft_ms: f64,
    /// Output tokens per second for models without their own figure.
    pub output_tokens_per_second: f64,
    /// Price of one unit of quality in the utility, USD per request.
    pub cost_scale_usd: f64,
}

/// A capability a request needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Need {
    /// Tool calling.
    Tools,
    /// Image input.
    Images,
    /// JSON schema output.
    JsonSchema,
    /// This reasoning effort level.
    ReasoningEffort(String),
    /// This many output tokens.
    OutputTokens(u32),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Tools => write!(f, "tools"),
            Need::Images => write!(f, "image input"),
            Need::JsonSchema => write!(f, "JSON schema output"),
            Need::ReasoningEffort(l) => write!(f, "reasoning effort {l:?}"),
            Need::OutputTokens(n) => write!(f, "{n} output tokens"),
        }
    }
}

/// Whether an endpoint offers what a request needs: Some(true) yes, Some(false) no, None not declared.
fn offers(e: &Endpoint, need: &Need) -> Option<bool> {
    let c = &e.capabilities;
    match need {
        Need::Tools => c.tools,
        Need::Images => c.images,
        Need::JsonSchema => c.json_schema,
        Need::ReasoningEffort(l) => c.reasoning_efforts.as_ref().map(|v| v.iter().any(|x| x == l)),
        Need::OutputTokens(n) => {
            let limit = e.max_output_tokens.unwrap_or(e.context_tokens);
            Some(*n <= limit)
        }
    }
}

fn needs(r: &Requirements) -> Vec<Need> {
    let mut v = Vec::new();
    if r.tools {
        v.push(Need::Tools);
    }
    if r.images {
        v.push(Need::Images);
    }
    if r.json_schema {
        v.push(Need::JsonSchema);
    }
    if let Some(l) = &r.reasoning_effort {
        v.push(Need::ReasoningEffort(l.clone()));
    }
    if let Some(n) = r.max_output_tokens {
        v.push(Need::OutputTokens(n));
    }
    v
}

/// Why a model (or one of its endpoints) was left out.
#[derive(Debug, Clone, PartialEq)]
pub enum Exclusion {
    /// The head has no output for this model.
    NotCovered,
    /// The head has output for this model but no training evidence near this prompt.
    OutOfDomain {
        /// The model's domain chance.
        chance: f64,
        /// The threshold.
        threshold: f64,
    },
    /// Denied by `denied_models` or absent from `allowed_models`.
    ModelNotAllowed,
    /// Denied by `denied_providers` or absent from `allowed_providers`.
    ProviderNotAllowed,
    /// The provider is not in `provider.only`.
    NotInOnly,
    /// The provider is in `provider.ignore`.
    Ignored,
    /// The conversation does not fit the context window.
    ContextWindow {
        /// Input tokens of the conversation.
        input_tokens: u32,
        /// The model's window.
        context_tokens: u32,
    },
    /// The endpoint's quantization is not in `provider.quantizations`.
    Quantization(String),
    /// `provider.data_collection = "deny"` and the endpoint trains on prompts (or does not say).
    DataCollection(Option<bool>),
    /// `provider.zdr` and the endpoint retains prompts (or does not say).
    Zdr(Option<bool>),
    /// The request needs something the endpoint declares it cannot do.
    Capability(Need),
    /// `provider.require_parameters` and the endpoint does not declare something the request needs.
    Undeclared(Need),
    /// A price over `provider.max_price`.
    MaxPrice {
        /// "prompt" or "completion".
        which: &'static str,
        /// The endpoint's price, USD per million tokens.
        price: f64,
        /// The limit.
        limit: f64,
    },
    /// `provider.allow_fallbacks = false` and the provider is not in `provider.order`.
    NotInOrder,
    /// Predicted quality under `min_quality`.
    MinQuality {
        /// Predicted quality.
        predicted: f64,
        /// The floor.
        floor: f64,
    },
    /// Predicted cost over `max_cost_usd`.
    Budget {
        /// Predicted cost.
        predicted: f64,
        /// The limit.
        limit: f64,
    },
    /// The endpoint's measured latency at the request's percentile is over `max_latency_ms`.
    MaxLatency {
        /// The endpoint, `model@provider`.
        endpoint: String,
        /// The percentile.
        percentile: Percentile,
        /// Its measured latency there, ms.
        measured_ms: f64,
        /// The limit, ms.
        limit_ms: f64,
    },
    /// Cooling down after repeated failures reported by `Feedback` (circuit open).
    Unhealthy(Snapshot),
    /// This endpoint is cooling down after repeated failures (its own breaker) while another
    /// endpoint of the model is not.
    EndpointUnhealthy(Snapshot),
    /// Eligible but ranked after the last fallback.
    BelowCutoff,
    /// An eligible endpoint after the first, with `provider.allow_fallbacks = false`.
    NoEndpointFallbacks,
}

impl Exclusion {
    /// The request field or rule that caused this exclusion.
    pub fn constraint(&self) -> &'static str {
        match self {
            Exclusion::NotCovered => "head coverage",
            Exclusion::OutOfDomain { .. } => "head domain",
            Exclusion::ModelNotAllowed => "allowed_models/denied_models",
            Exclusion::ProviderNotAllowed => "allowed_providers/denied_providers",
            Exclusion::NotInOnly => "provider.only",
            Exclusion::Ignored => "provider.ignore",
            Exclusion::ContextWindow { .. } => "context window",
            Exclusion::Quantization(_) => "provider.quantizations",
            Exclusion::DataCollection(_) => "provider.data_collection",
            Exclusion::Zdr(_) => "provider.zdr",
            Exclusion::Capability(_) => "capabilities",
            Exclusion::Undeclared(_) => "provider.require_parameters",
            Exclusion::MaxPrice { .. } => "provider.max_price",
            Exclusion::NotInOrder => "provider.order/allow_fallbacks",
            Exclusion::MinQuality { .. } => "min_quality",
            Exclusion::Budget { .. } => "max_cost_usd",
            Exclusion::MaxLatency { .. } => "max_latency_ms",
            Exclusion::Unhealthy(_) => "model health",
            Exclusion::EndpointUnhealthy(_) => "endpoint health",
            Exclusion::BelowCutoff => "max_fallbacks",
            Exclusion::NoEndpointFallbacks => "provider.allow_fallbacks",
        }
    }

    /// True for the rules of the request's provider preferences (OpenRouter's `provider` object).
    pub fn is_provider_preference(&self) -> bool {
        matches!(
            self,
            Exclusion::NotInOnly
                | Exclusion::Ignored
                | Exclusion::Quantization(_)
                | Exclusion::DataCollection(_)
                | Exclusion::Zdr(_)
                | Exclusion::Undeclared(_)
                | Exclusion::MaxPrice { .. }
                | Exclusion::NotInOrder
        )
    }

    /// The reason in words, with its numbers.
    pub fn detail(&self) -> String {
        let known = |v: &Option<bool>| if v.is_none() { "does not say whether it does" } else { "does" };
        match self {
            Exclusion::NotCovered => "the routing head has no prediction for this model".into(),
            Exclusion::OutOfDomain { chance, threshold } => format!(
                "the head has too little evidence about this model on prompts like this one to trust its prediction: too few of its outcomes among the nearest training prompts of its log, or this prompt farther from that log's prompts than they are from each other (p = {chance:.2e} < {threshold})"
            ),
            Exclusion::ModelNotAllowed => "excluded by allowed_models/denied_models".into(),
            Exclusion::ProviderNotAllowed => "excluded by allowed_providers/denied_providers".into(),
            Exclusion::NotInOnly => "the provider is not in provider.only".into(),
            Exclusion::Ignored => "the provider is in provider.ignore".into(),
            Exclusion::ContextWindow { input_tokens, context_tokens } => {
                format!("{input_tokens} input tokens do not fit a {context_tokens}-token context window")
            }
            Exclusion::Quantization(q) => format!("quantization {q} is not in provider.quantizations"),
            Exclusion::DataCollection(v) => {
                format!("provider.data_collection is \"deny\" and the endpoint may train on prompts (it {})", known(v))
            }
            Exclusion::Zdr(v) => format!("provider.zdr is set and the endpoint may retain prompts (it {})", known(v)),
            Exclusion::Capability(n) => format!("the request needs {n}, which the endpoint does not offer"),
            Exclusion::Undeclared(n) => {
                format!("provider.require_parameters is set and the endpoint does not declare {n}, which the request needs")
            }
            Exclusion::MaxPrice { which, price, limit } => {
                format!("its {which} price ${price}/Mtok is above provider.max_price.{which} ${limit}/Mtok")
            }
            Exclusion::NotInOrder => "provider.allow_fallbacks is false and the provider is not in provider.order".into(),
            Exclusion::MinQuality { predicted, floor } => {
                format!("predicted quality {predicted:.3} is below min_quality {floor}")
            }
            Exclusion::Budget { predicted, limit } => {
                format!("predicted cost ${predicted:.6} is above max_cost_usd ${limit}")
            }
            Exclusion::MaxLatency { endpoint, percentile, measured_ms, limit_ms } => format!(
                "{endpoint}: measured {} latency {measured_ms:.0} ms is above max_latency_ms {limit_ms} ms",
                percentile.as_str()
            ),
            Exclusion::Unhealthy(h) => h.detail(),
            Exclusion::EndpointUnhealthy(h) => format!("the endpoint is {}; another endpoint of the model is not", h.detail()),
            Exclusion::BelowCutoff => "eligible, but ranked after the last fallback".into(),
            Exclusion::NoEndpointFallbacks => "eligible, but provider.allow_fallbacks is false: only the first endpoint is used".into(),
        }
    }

    /// Of two exclusions by the same rule, the one closest to passing (the cheapest, the best,
    /// the largest window, the lowest price).
    fn closest(self, other: &Exclusion) -> Exclusion {
        match (self, other) {
            (Exclusion::Budget { predicted: a, limit }, Exclusion::Budget { predicted: b, .. }) => {
                Exclusion::Budget { predicted: a.min(*b), limit }
            }
            (Exclusion::MinQuality { predicted: a, floor }, Exclusion::MinQuality { predicted: b, .. }) => {
                Exclusion::MinQuality { predicted: a.max(*b), floor }
            }
            (Exclusion::ContextWindow { input_tokens, context_tokens: a }, Exclusion::ContextWindow { context_tokens: b, .. }) => {
                Exclusion::ContextWindow { input_tokens, context_tokens: a.max(*b) }
            }
            (Exclusion::MaxPrice { which, price: a, limit }, Exclusion::MaxPrice { which: w, price: b, .. }) if which == *w => {
                Exclusion::MaxPrice { which, price: a.min(*b), limit }
            }
            (a @ Exclusion::MaxLatency { measured_ms: x, .. }, b @ Exclusion::MaxLatency { measured_ms: y, .. }) => {
                if *y < x {
                    b.clone()
                } else {
                    a
                }
            }
            (prev, _) => prev,
        }
    }
}

/// One endpoint of a model as scored for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointScore {
    /// Index into the model's `endpoints`.
    pub endpoint: usize,
    /// Predicted cost in USD at this endpoint's prices.
    pub cost_usd: f64,
    /// Predicted latency in ms: the endpoint's measurements once it has them (median time to
    /// first token plus the predicted output at its median throughput, or its median end-to-end
    /// latency), the catalog's priors before.
    pub latency_ms: f64,
    /// Time to first token it is judged on, ms: measured median (or median latency), else prior.
    pub ttft_ms: f64,
    /// Output tokens per second it is judged on: measured median, else prior.
    pub tokens_per_second: f64,
    /// Its latency comes from measurements (not the catalog's priors).
    pub measured: bool,
    /// Its own breaker: 0 healthy or probing, 1 degraded, 2 cooling down.
    pub tier: u8,
    /// 1-based place in the model's failover order, 0 when excluded.
    pub rank: usize,
    /// Why it is not used, if it is not.
    pub exclusion: Option<Exclusion>,
    /// It misses `preferred_max_latency` / `preferred_min_throughput` (ranked behind those that meet them).
    pub misses_preference: bool,
}

/// One catalog model as scored for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Index into the catalog.
    pub model: usize,
    /// The head's prediction, if it covers the model.
    pub prediction: Option<Prediction>,
    /// Predicted cost in USD at its first endpoint (0 when not covered).
    pub cost_usd: f64,
    /// Predicted latency in ms at its first endpoint (0 when not covered).
    pub latency_ms: f64,
    /// Utility (negative infinity when not covered).
    pub utility: f64,
    /// 1-based rank among eligible models, 0 when excluded.
    pub rank: usize,
    /// Why it is not in the answer, if it is not.
    pub exclusion: Option<Exclusion>,
    /// A soft rule (the head's domain) that this model fails but was not excluded by, because it
    /// would have left no model under the request's constraints.
    pub kept_despite: Option<Exclusion>,
    /// Its live health when ranked.
    pub health: Snapshot,
    /// Every endpoint of the model, in catalog order, with its score.
    pub endpoints: Vec<EndpointScore>,
    /// The usable endpoints in failover order (indices into `endpoints`); empty when the model
    /// is left out by a hard rule.
    pub order: Vec<usize>,
    /// The endpoint the cost and latency above are of: the first of `order`, or for a model left
    /// out by a hard rule the best of all its endpoints.
    pub priced_endpoint: usize,
}

impl Scored {
    /// Health tier for ranking: 0 healthy or probing, 1 degraded, 2 cooling down (kept only
    /// when nothing else was eligible).
    pub fn health_tier(&self) -> u8 {
        match self.health.state {
            State::Healthy | State::Probing => 0,
            State::Degraded => 1,
            State::CoolingDown { .. } => 2,
        }
    }

    /// The endpoint the model is tried on first, or priced at when left out (index into the
    /// model's endpoints).
    pub fn first_endpoint(&self) -> usize {
        self.order.first().copied().unwrap_or(self.priced_endpoint)
    }
}

/// No model survived the constraints.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no model satisfies the constraints: `{constraint}` left no candidate ({detail})")]
pub struct NoEligibleModel {
    /// The rule that emptied the list.
    pub constraint: &'static str,
    /// What the closest models missed by.
    pub detail: String,
}

/// One attempt of the response's failover order: a candidate on one of its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Index into `Ranking::scored`.
    pub scored: usize,
    /// Index into that model's endpoints.
    pub endpoint: usize,
}

/// The outcome: the chosen models in order, and every catalog model's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Indices into `scored`: primary first, then fallbacks.
    pub chosen: Vec<usize>,
    /// One entry per catalog model, in catalog order.
    pub scored: Vec<Scored>,
    /// Every attempt in order, by the request's `partition`.
    pub attempts: Vec<Attempt>,
}

impl Ranking {
    /// Makes `scored` (an eligible model, possibly below the cutoff) the primary: it moves to the
    /// front of `chosen` (a model from below the cutoff takes the last candidate's place, which
    /// goes below the cutoff) and its endpoints to the front of `attempts`; the rest keep their
    /// order. Used by exploration.
    pub fn promote(&mut self, scored: usize) {
        if self.chosen.first() == Some(&scored) {
            return;
        }
        match self.chosen.iter().position(|&i| i == scored) {
            Some(pos) => {
                self.chosen.remove(pos);
            }
            None => {
                if let Some(dropped) = self.chosen.pop() {
                    self.scored[dropped].exclusion = Some(Exclusion::BelowCutoff);
                    self.attempts.retain(|a| a.scored != dropped);
                }
                self.scored[scored].exclusion = None;
            }
        }
        self.chosen.insert(0, scored);
        let own: Vec<Attempt> = self.scored[scored].order.iter().map(|&j| Attempt { scored, endpoint: j }).collect();
        self.attempts.retain(|a| a.scored != scored);
        self.attempts.splice(0..0, own);
    }
}

/// Utility of a model with quality `q` and cost `cost_usd` at cost weight `w`.
pub fn utility(q: f64, cost_usd: f64, w: f64, cost_scale_usd: f64) -> f64 {
    (1.0 - w) * q - w * cost_usd / cost_scale_usd
}

fn ttft_ms(e: &Endpoint, d: Scoring) -> f64 {
    e.ttft_ms.unwrap_or(d.ttft_ms)
}

fn tokens_per_second(e: &Endpoint, d: Scoring) -> f64 {
    e.output_tokens_per_second.unwrap_or(d.output_tokens_per_second)
}

fn latency_ms(e: &Endpoint, output_tokens: f64, d: Scoring) -> f64 {
    ttft_ms(e, d) + output_tokens / tokens_per_second(e, d) * 1000.0
}

/// The figures one endpoint is judged on for one request: (predicted latency, time to first
/// token, tokens per second, measured). Measured medians where the window has them, else the
/// catalog's priors; time to first token falls back on the measured end-to-end latency (an upper
/// bound of it) when only non-streamed answers were reported.
fn figures(e: &Endpoint, live: Option<&EndpointLive>, output_tokens: f64, d: Scoring) -> (f64, f64, f64, bool) {
    let (prior_ttft, prior_tps) = (ttft_ms(e, d), tokens_per_second(e, d));
    let Some(l) = live else { return (latency_ms(e, output_tokens, d), prior_ttft, prior_tps, false) };
    let ttft = l.ttft_ms.or(l.latency_ms).map_or(prior_ttft, |q| q.p50);
    let tps = l.tokens_per_second.map_or(prior_tps, |q| q.p50);
    let latency = match (l.ttft_ms, l.tokens_per_second, l.latency_ms) {
        (Some(t), Some(r), _) if r.p50 > 0.0 => t.p50 + output_tokens / r.p50 * 1000.0,
        (_, _, Some(q)) => q.p50,
        _ => return (latency_ms(e, output_tokens, d), ttft, tps, false),
    };
    (latency, ttft, tps, true)
}

/// True when the endpoint misses a soft target: `preferred_max_latency` on its time to first
/// token and `preferred_min_throughput` on its tokens per second, each at the percentile named,
/// measured where the window has it, else the catalog's prior (one figure for every percentile).
fn misses_preference(p: &ProviderPreferences, e: &Endpoint, live: Option<&EndpointLive>, d: Scoring) -> bool {
    let ttft = live.and_then(|l| l.ttft_ms.or(l.latency_ms));
    let tps = live.and_then(|l| l.tokens_per_second);
    p.preferred_max_latency.cutoffs().any(|(at, s)| ttft.map_or(ttft_ms(e, d), |q| q.at(at)) > s * 1000.0)
        || p.preferred_min_throughput.cutoffs().any(|(at, t)| tps.map_or(tokens_per_second(e, d), |q| q.at(at)) < t)
}

fn tier(state: &State) -> u8 {
    match state {
        State::Healthy | State::Probing => 0,
        State::Degraded => 1,
        State::CoolingDown { .. } => 2,
    }
}

fn listed(list: &[String], id: &str) -> bool {
    list.iter().any(|x| x == id)
}

/// An endpoint rule: the reason endpoint (model index, endpoint) fails, if it does.
type EndpointRule<'a> = Box<dyn Fn(usize, &Endpoint, &EndpointScore) -> Option<Exclusion> + 'a>;
/// A model rule: the reason it fails, if it does.
type ModelRule<'a> = Box<dyn Fn(&CatalogModel, &Scored) -> Option<Exclusion> + 'a>;

enum Rule<'a> {
    Model(ModelRule<'a>),
    Endpoint(EndpointRule<'a>),
}

type Key = (usize, u8, bool, f64);

/// The sort key of an endpoint: `order` position, its breaker's tier, soft-target miss, then the
/// `sort` figure (price by default).
fn endpoint_key(p: &ProviderPreferences, e: &Endpoint, s: &EndpointScore) -> Key {
    let pos = p.order.iter().position(|x| *x == e.provider).unwrap_or(usize::MAX);
    let figure = match p.sort {
        None | Some(SortBy::Price) => s.cost_usd,
        Some(SortBy::Throughput) => -s.tokens_per_second,
        Some(SortBy::Latency) => s.ttft_ms,
    };
    (pos, s.tier, s.misses_preference, figure)
}

fn by_key(a: Key, b: Key) -> std::cmp::Ordering {
    a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)).then(a.3.total_cmp(&b.3))
}

/// OpenRouter's default among a model's endpoints, once sorted by price: endpoints within
/// [`NEAR_TIE`] of the cheapest of their run (same breaker tier and soft-target miss) go by
/// measured speed (the predicted latency of this request), the measured ones first. The first
/// run's endpoints that are equally good share the load: the measured ones within [`NEAR_TIE`]
/// of its fastest, and those not measured yet (their speed cannot break the tie, and sharing is
/// how they get measured). Which of them goes first is drawn by `spread` with weights the
/// inverse square of their cost, as OpenRouter's price-weighted balancing does.
fn near_ties(order: &mut [usize], es: &[EndpointScore], spread: u64) {
    let mut start = 0;
    while start < order.len() {
        let a = &es[order[start]];
        let bound = a.cost_usd * (1.0 + NEAR_TIE);
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&j| es[j].tier == a.tier && es[j].misses_preference == a.misses_preference && es[j].cost_usd <= bound)
                .count();
        if end - start > 1 {
            order[start..end]
                .sort_by(|&x, &y| es[y].measured.cmp(&es[x].measured).then(es[x].latency_ms.total_cmp(&es[y].latency_ms)).then(x.cmp(&y)));
            if start == 0 {
                let fastest = es[order[0]].latency_ms;
                let shares = |j: usize| !es[j].measured || !es[order[0]].measured || es[j].latency_ms <= fastest * (1.0 + NEAR_TIE);
                let run: Vec<usize> = (0..end).filter(|&k| shares(order[k])).collect();
                if run.len() > 1 {
                    let weight = |j: usize| 1.0 / es[j].cost_usd.max(1e-12).powi(2);
                    let total: f64 = run.iter().map(|&k| weight(order[k])).sum();
                    let mut draw = (spread >> 11) as f64 / (1u64 << 53) as f64 * total;
                    let mut pick = run[run.len() - 1];
                    for &k in &run {
                        draw -= weight(order[k]);
                        if draw < 0.0 {
                            pick = k;
                            break;
                        }
                    }
                    order[..=pick].rotate_right(1);
                }
            }
        }
        start = end;
    }
}

/// Ranks `catalog` for one request. `predictions[i]` and `health[i]` belong to
/// `catalog.models()[i]`; an empty `health` means every model is healthy. Every endpoint is
/// unmeasured (see [`rank_live`]).
#[allow(clippy::too_many_arguments)]
pub fn rank(
    catalog: &Catalog,
    predictions: &[Option<Prediction>],
    health: &[Snapshot],
    input_tokens: u32,
    cost_weight: f64,
    c: &Constraints,
    scoring: Scoring,
) -> Result<Ranking, NoEligibleModel> {
    rank_live(catalog, predictions, Live { models: health, ..Live::default() }, input_tokens, cost_weight, c, scoring)
}

/// Ranks `catalog` for one request with what is known live: each model's health, and each
/// endpoint's breaker and measurements (`live`).
#[allow(clippy::too_many_arguments)]
pub fn rank_live(
    catalog: &Catalog,
    predictions: &[Option<Prediction>],
    live: Live<'_>,
    input_tokens: u32,
    cost_weight: f64,
    c: &Constraints,
    scoring: Scoring,
) -> Result<Ranking, NoEligibleModel> {
    let health = live.models;
    let models = catalog.models();
    debug_assert_eq!(models.len(), predictions.len());
    let p = &c.provider;
    let soft_latency = !p.preferred_max_latency.is_empty() || !p.preferred_min_throughput.is_empty();
    let mut scored: Vec<Scored> = models
        .iter()
        .zip(predictions)
        .enumerate()
        .map(|(i, (m, pred))| {
            let endpoints = m
                .endpoints
                .iter()
                .enumerate()
                .map(|(j, e)| {
                    let l = live.endpoint(i, j);
                    let out = pred.map_or(0.0, |p| p.output_tokens);
                    let (latency, ttft_ms, tokens_per_second, measured) = figures(e, l, out, scoring);
                    let (cost_usd, latency_ms) = if pred.is_some() { (e.cost_usd(input_tokens, out), latency) } else { (0.0, 0.0) };
                    let misses_preference = soft_latency && misses_preference(p, e, l, scoring);
                    EndpointScore {
                        endpoint: j,
                        cost_usd,
                        latency_ms,
                        ttft_ms,
                        tokens_per_second,
                        measured,
                        tier: l.map_or(0, |l| tier(&l.health.state)),
                        rank: 0,
                        exclusion: None,
                        misses_preference,
                    }
                })
                .collect();
            let health = health.get(i).copied().unwrap_or(Snapshot::HEALTHY);
            Scored {
                model: i,
                prediction: *pred,
                cost_usd: 0.0,
                latency_ms: 0.0,
                utility: f64::NEG_INFINITY,
                rank: 0,
                exclusion: None,
                kept_despite: None,
                health,
                endpoints,
                order: Vec::new(),
                priced_endpoint: 0,
            }
        })
        .collect();

    // The hard rules, in the order their reasons are reported. An endpoint rule leaves a model
    // out when no endpoint of it passes.
    let needs = needs(&c.requirements);
    let rules: Vec<Rule> = vec![
        Rule::Model(Box::new(|_, s| s.prediction.is_none().then_some(Exclusion::NotCovered))),
        Rule::Model(Box::new(|m, _| {
            let denied = listed(&c.denied_models, &m.id) || (!c.allowed_models.is_empty() && !listed(&c.allowed_models, &m.id));
            denied.then_some(Exclusion::ModelNotAllowed)
        })),
        Rule::Endpoint(Box::new(|_, e, _| {
            let denied =
                listed(&c.denied_providers, &e.provider) || (!c.allowed_providers.is_empty() && !listed(&c.allowed_providers, &e.provider));
            denied.then_some(Exclusion::ProviderNotAllowed)
        })),
        Rule::Endpoint(Box::new(|_, e, _| (!p.only.is_empty() && !listed(&p.only, &e.provider)).then_some(Exclusion::NotInOnly))),
        Rule::Endpoint(Box::new(|_, e, _| listed(&p.ignore, &e.provider).then_some(Exclusion::Ignored))),
        Rule::Endpoint(Box::new(|_, e, _| {
            (input_tokens >= e.context_tokens).then_some(Exclusion::ContextWindow { input_tokens, context_tokens: e.context_tokens })
        })),
        Rule::Endpoint(Box::new(|_, e, _| {
            let q = e.quantization();
            (!p.quantizations.is_empty() && !listed(&p.quantizations, q)).then(|| Exclusion::Quantization(q.to_string()))
        })),
        Rule::Endpoint(Box::new(|_, e, _| {
            (p.deny_data_collection && e.trains_on_prompts != Some(false)).then_some(Exclusion::DataCollection(e.trains_on_prompts))
        })),
        Rule::Endpoint(Box::new(|_, e, _| (p.zdr && e.retains_prompts != Some(false)).then_some(Exclusion::Zdr(e.retains_prompts)))),
        Rule::Endpoint(Box::new(|_, e, _| needs.iter().find(|n| offers(e, n) == Some(false)).map(|n| Exclusion::Capability(n.clone())))),
        Rule::Endpoint(Box::new(|_, e, _| {
            if !p.require_parameters {
                return None;
            }
            needs.iter().find(|n| offers(e, n).is_none()).map(|n| Exclusion::Undeclared(n.clone()))
        })),
        Rule::Endpoint(Box::new(|_, e, _| {
            let over = |which, price: f64, limit: Option<f64>| {
                let limit = limit?;
                (price > limit).then_some(Exclusion::MaxPrice { which, price, limit })
            };
            over("prompt", e.input_usd_per_mtok, p.max_prompt_price)
                .or_else(|| over("completion", e.output_usd_per_mtok, p.max_completion_price))
        })),
        Rule::Endpoint(Box::new(|_, e, _| {
            (!p.allow_fallbacks && !p.order.is_empty() && !listed(&p.order, &e.provider)).then_some(Exclusion::NotInOrder)
        })),
        Rule::Endpoint(Box::new(|i, e, es| {
            let limit = c.max_latency?;
            let measured = live.endpoint(i, es.endpoint)?.latency_ms?.at(limit.percentile);
            (measured > limit.ms).then(|| Exclusion::MaxLatency {
                endpoint: format!("{}@{}", models[i].id, e.provider),
                percentile: limit.percentile,
                measured_ms: measured,
                limit_ms: limit.ms,
            })
        })),
        Rule::Model(Box::new(|_, s| {
            let (floor, q) = (c.min_quality?, s.prediction?.quality);
            (q < floor).then_some(Exclusion::MinQuality { predicted: q, floor })
        })),
        Rule::Endpoint(Box::new(|_, _, s| {
            let limit = c.max_cost_usd?;
            (s.cost_usd > limit).then_some(Exclusion::Budget { predicted: s.cost_usd, limit })
        })),
    ];
    // Only the rules the request turns on are run (the others pass every endpoint).
    let active = [
        true,
        !c.denied_models.is_empty() || !c.allowed_models.is_empty(),
        !c.denied_providers.is_empty() || !c.allowed_providers.is_empty(),
        !p.only.is_empty(),
        !p.ignore.is_empty(),
        true,
        !p.quantizations.is_empty(),
        p.deny_data_collection,
        p.zdr,
        !needs.is_empty(),
        p.require_parameters && !needs.is_empty(),
        p.max_prompt_price.is_some() || p.max_completion_price.is_some(),
        !p.allow_fallbacks && !p.order.is_empty(),
        c.max_latency.is_some() && !live.endpoints.is_empty(),
        c.min_quality.is_some(),
        c.max_cost_usd.is_some(),
    ];
    debug_assert_eq!(active.len(), rules.len());
    for rule in rules.iter().zip(active).filter_map(|(r, on)| on.then_some(r)) {
        let before = scored.iter().filter(|s| s.exclusion.is_none()).count();
        let mut closest: Option<Exclusion> = None;
        for s in scored.iter_mut().filter(|s| s.exclusion.is_none()) {
            let m = &models[s.model];
            let failed = match rule {
                Rule::Model(f) => f(m, s),
                Rule::Endpoint(f) => {
                    let mut model_closest: Option<Exclusion> = None;
                    let mut passed = false;
                    let i = s.model;
                    for es in s.endpoints.iter_mut().filter(|es| es.exclusion.is_none()) {
                        match f(i, &m.endpoints[es.endpoint], es) {
                            Some(e) => {
                                model_closest = Some(match model_closest.take() {
                                    Some(prev) => prev.closest(&e),
                                    None => e.clone(),
                                });
                                es.exclusion = Some(e);
                            }
                            None => passed = true,
                        }
                    }
                    if passed {
                        None
                    } else {
                        model_closest
                    }
                }
            };
            if let Some(e) = failed {
                closest = Some(match closest.take() {
                    Some(prev) => prev.closest(&e),
                    None => e.clone(),
                });
                s.exclusion = Some(e);
            }
        }
        if before > 0 && scored.iter().all(|s| s.exclusion.is_some()) {
            let closest = closest.expect("a rule emptied a non-empty list, so it excluded something. This is a bug.");
            let detail = match &closest {
                Exclusion::Budget { .. } => format!("the cheapest remaining model: {}", closest.detail()),
                Exclusion::MinQuality { .. } => format!("the best remaining model: {}", closest.detail()),
                Exclusion::ContextWindow { .. } => format!("the largest remaining window: {}", closest.detail()),
                Exclusion::MaxPrice { .. } => format!("the cheapest remaining endpoint: {}", closest.detail()),
                other if other.is_provider_preference() || matches!(other, Exclusion::Capability(_) | Exclusion::MaxLatency { .. }) => {
                    format!("no endpoint of the {before} remaining model(s) passes it; for one: {}", other.detail())
                }
                other => format!("{before} remaining model(s) {}", other.detail().trim_start_matches("the ")),
            };
            return Err(NoEligibleModel { constraint: closest.constraint(), detail });
        }
    }

    // Each model's endpoint order, and its cost, latency and utility at the first endpoint (for
    // a model left out: at the first of all its endpoints, for the explanation).
    for s in scored.iter_mut() {
        let Some(pred) = s.prediction else { continue };
        let m = &models[s.model];
        let key = |j: usize| endpoint_key(p, &m.endpoints[j], &s.endpoints[j]);
        let first = if s.exclusion.is_some() {
            // Left out: priced at its best endpoint of all, with no order to keep (no allocation).
            (0..s.endpoints.len()).min_by(|&a, &b| by_key(key(a), key(b)).then(a.cmp(&b))).expect("a model has an endpoint")
        } else {
            let mut order: Vec<usize> = (0..s.endpoints.len()).filter(|&j| s.endpoints[j].exclusion.is_none()).collect();
            if order.len() > 1 {
                order.sort_by(|&a, &b| by_key(key(a), key(b)).then(a.cmp(&b)));
                if p.sort.is_none() && p.order.is_empty() {
                    near_ties(&mut order, &s.endpoints, live.spread);
                }
                // An endpoint cooling down (its own breaker open) is left out while another
                // endpoint of the model is not: the same model on another provider first.
                if s.endpoints[order[0]].tier < 2 {
                    let i = s.model;
                    order.retain(|&j| {
                        let cooling = s.endpoints[j].tier == 2;
                        if cooling {
                            let h = live.endpoint(i, j).map_or(Snapshot::HEALTHY, |l| l.health);
                            s.endpoints[j].exclusion = Some(Exclusion::EndpointUnhealthy(h));
                        }
                        !cooling
                    });
                }
            }
            // The model is as healthy as its best usable endpoint: every endpoint cooling down
            // leaves the model out as a cooling-down model would be.
            if let Some(l) = live.endpoint(s.model, order[0]) {
                if tier(&l.health.state) > s.health_tier() {
                    s.health = l.health;
                }
            }
            if !p.allow_fallbacks && p.order.is_empty() {
                for &j in &order[1..] {
                    s.endpoints[j].exclusion = Some(Exclusion::NoEndpointFallbacks);
                }
                order.truncate(1);
            }
            for (r, &j) in order.iter().enumerate() {
                s.endpoints[j].rank = r + 1;
            }
            let first = order[0];
            s.order = order;
            first
        };
        s.priced_endpoint = first;
        let first = &s.endpoints[first];
        s.cost_usd = first.cost_usd;
        s.latency_ms = first.latency_ms;
        s.utility = utility(pred.quality, first.cost_usd, cost_weight, scoring.cost_scale_usd);
    }

    // Soft rule: the head's domain. It demotes instead of excluding when it would empty the list.
    let out_of_domain = |s: &Scored| {
        let p = s.prediction?.domain_chance;
        (p < c.out_of_domain_p).then_some(Exclusion::OutOfDomain { chance: p, threshold: c.out_of_domain_p })
    };
    let in_domain = scored.iter().any(|s| s.exclusion.is_none() && out_of_domain(s).is_none());
    for s in scored.iter_mut().filter(|s| s.exclusion.is_none()) {
        match (out_of_domain(s), in_domain) {
            (Some(e), true) => s.exclusion = Some(e),
            (Some(e), false) => s.kept_despite = Some(e),
            (None, _) => {}
        }
    }

    // Soft rule: live health. Cooling-down models stay only when nothing else is left.
    let cooling = |s: &Scored| matches!(s.health.state, State::CoolingDown { .. });
    if scored.iter().any(|s| s.exclusion.is_none() && !cooling(s)) {
        for s in scored.iter_mut().filter(|s| s.exclusion.is_none() && cooling(s)) {
            s.exclusion = Some(Exclusion::Unhealthy(s.health));
        }
    }
    let mut eligible: Vec<usize> = (0..scored.len()).filter(|&i| scored[i].exclusion.is_none()).collect();
    eligible.sort_by(|&a, &b| {
        scored[a]
            .health_tier()
            .cmp(&scored[b].health_tier())
            .then_with(|| scored[b].utility.total_cmp(&scored[a].utility))
            .then_with(|| models[scored[a].model].id.cmp(&models[scored[b].model].id))
    });
    for (r, &i) in eligible.iter().enumerate() {
        scored[i].rank = r + 1;
    }
    let mut chosen: Vec<usize> = eligible.iter().copied().take(1 + c.max_fallbacks).collect();
    let provider_of = |i: usize, j: usize| models[scored[i].model].endpoints[j].provider.as_str();
    let primary_provider = provider_of(chosen[0], scored[chosen[0]].first_endpoint());
    let diverse = |i: &usize| scored[*i].order.iter().any(|&j| provider_of(*i, j) != primary_provider);
    if chosen.len() > 1 && !chosen.iter().any(diverse) {
        if let Some(&other) = eligible.iter().find(|i| diverse(i)) {
            *chosen.last_mut().expect("chosen has at least two entries. This is a bug.") = other;
        }
    }
    for &i in &eligible {
        if !chosen.contains(&i) {
            scored[i].exclusion = Some(Exclusion::BelowCutoff);
        }
    }
    let mut attempts: Vec<Attempt> =
        chosen.iter().flat_map(|&i| scored[i].order.iter().map(move |&j| Attempt { scored: i, endpoint: j })).collect();
    if p.partition == Partition::None {
        // Stable: ties keep the candidates' rank and each model's own order.
        attempts.sort_by(|a, b| {
            let key = |t: &Attempt| {
                let s = &scored[t.scored];
                endpoint_key(p, &models[s.model].endpoints[t.endpoint], &s.endpoints[t.endpoint])
            };
            by_key(key(a), key(b))
        });
    }
    Ok(Ranking { chosen, scored, attempts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, provider: &str, price: f64, ctx: u32) -> CatalogModel {
        CatalogModel::single(id, provider, price, price * 4.0, ctx)
    }

    fn catalog() -> Catalog {
        Catalog::new(vec![
            model("big", "a", 10.0, 128_000),
            model("mid", "a", 1.0, 128_000),
            model("small", "a", 0.1, 8_000),
            model("other", "b", 0.5, 32_000),
            model("uncovered", "c", 0.01, 128_000),
        ])
        .unwrap()
    }

    fn preds() -> Vec<Option<Prediction>> {
        [0.9, 0.8, 0.5, 0.6]
            .iter()
            .map(|&q| Some(Prediction { quality: q, output_tokens: 200.0, domain_chance: 1.0 }))
            .chain([None])
            .collect()
    }

    const LAT: Scoring = Scoring { ttft_ms: 400.0, output_tokens_per_second: 50.0, cost_scale_usd: DEFAULT_COST_SCALE_USD };

    fn ids(cat: &Catalog, r: &Ranking) -> Vec<String> {
        r.chosen.iter().map(|&i| cat.models()[r.scored[i].model].id.clone()).collect()
    }

    #[test]
    fn weight_zero_ranks_by_quality_and_one_by_cost() {
        let cat = catalog();
        let c = Constraints { max_fallbacks: 3, ..Default::default() };
        let r0 = rank(&cat, &preds(), &[], 100, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r0)[0], "big");
        let r1 = rank(&cat, &preds(), &[], 100, 1.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r1)[0], "small");
        let r1q = rank(&cat, &preds(), &[], 100, 1.0, &Constraints { min_quality: Some(0.55), ..c.clone() }, LAT).unwrap();
        assert_eq!(ids(&cat, &r1q)[0], "other");
    }

    #[test]
    fn fallbacks_span_providers() {
        let cat = catalog();
        let c = Constraints { max_fallbacks: 2, ..Default::default() };
        let r = rank(&cat, &preds(), &[], 100, 0.0, &c, LAT).unwrap();
        // By quality: big, mid, other(0.6), small(0.5): "other" is already third.
        assert_eq!(ids(&cat, &r), ["big", "mid", "other"]);
        let c = Constraints { max_fallbacks: 1, ..Default::default() };
        let r = rank(&cat, &preds(), &[], 100, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["big", "other"]);
        let none = Constraints { max_fallbacks: 0, ..Default::default() };
        assert_eq!(ids(&cat, &rank(&cat, &preds(), &[], 100, 0.0, &none, LAT).unwrap()), ["big"]);
    }

    #[test]
    fn constraints_exclude_with_reasons() {
        let cat = catalog();
        let c =
            Constraints { denied_models: vec!["big".into()], denied_providers: vec!["b".into()], max_fallbacks: 3, ..Default::default() };
        let r = rank(&cat, &preds(), &[], 10_000, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["mid"]);
        assert_eq!(r.scored[0].exclusion, Some(Exclusion::ModelNotAllowed));
        assert_eq!(r.scored[3].exclusion, Some(Exclusion::ProviderNotAllowed));
        assert_eq!(r.scored[4].exclusion, Some(Exclusion::NotCovered));
        assert!(matches!(r.scored[2].exclusion, Some(Exclusion::ContextWindow { .. })));
    }

    #[test]
    fn emptying_constraint_is_named() {
        let cat = catalog();
        let c = Constraints { max_cost_usd: Some(1e-9), max_fallbacks: 3, ..Default::default() };
        let err = rank(&cat, &preds(), &[], 100, 0.5, &c, LAT).unwrap_err();
        assert_eq!(err.constraint, "max_cost_usd");
        assert!(err.detail.contains("cheapest"), "{}", err.detail);
        let c = Constraints { allowed_models: vec!["uncovered".into()], max_fallbacks: 3, ..Default::default() };
        assert_eq!(rank(&cat, &preds(), &[], 100, 0.5, &c, LAT).unwrap_err().constraint, "allowed_models/denied_models");
        let c = Constraints { max_fallbacks: 3, ..Default::default() };
        assert_eq!(rank(&cat, &preds(), &[], 500_000, 0.5, &c, LAT).unwrap_err().constraint, "context window");
    }

    #[test]
    fn the_domain_rule_demotes_instead_of_refusing() {
        let cat = catalog();
        let mut p = preds();
        // "big" and "mid" have no evidence near this prompt.
        for j in [0, 1] {
            p[j].as_mut().unwrap().domain_chance = 1e-6;
        }
        let c = Constraints { out_of_domain_p: 0.01, max_fallbacks: 3, ..Default::default() };
        let r = rank(&cat, &p, &[], 100, 0.0, &c, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["other", "small"]);
        assert!(matches!(r.scored[0].exclusion, Some(Exclusion::OutOfDomain { .. })));
        // Only out-of-domain models allowed: routed anyway, best first, each marked.
        let only = Constraints { allowed_models: vec!["big".into(), "mid".into()], ..c.clone() };
        let r = rank(&cat, &p, &[], 100, 0.0, &only, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["big", "mid"]);
        assert!(matches!(r.scored[0].kept_despite, Some(Exclusion::OutOfDomain { .. })));
        assert_eq!(r.scored[0].exclusion, None);
        // A hard rule that empties the list is named, even when the domain rule would have too.
        let cheap = Constraints { max_cost_usd: Some(1e-9), ..only.clone() };
        assert_eq!(rank(&cat, &p, &[], 100, 0.0, &cheap, LAT).unwrap_err().constraint, "max_cost_usd");
        // A model both out of domain and denied reports the caller's rule.
        let deny = Constraints { denied_models: vec!["big".into()], ..c.clone() };
        assert_eq!(rank(&cat, &p, &[], 100, 0.0, &deny, LAT).unwrap().scored[0].exclusion, Some(Exclusion::ModelNotAllowed));
        // Out of domain and cooling down: health is judged among the kept models as usual.
        let mut health = vec![Snapshot::HEALTHY; 5];
        health[0].state = State::CoolingDown { remaining: std::time::Duration::from_secs(5) };
        let r = rank(&cat, &p, &health, 100, 0.0, &only, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["mid"]);
        assert!(matches!(r.scored[0].exclusion, Some(Exclusion::Unhealthy(_))));
    }

    #[test]
    fn utility_is_monotone() {
        let s = DEFAULT_COST_SCALE_USD;
        assert!(utility(0.9, 0.01, 0.5, s) > utility(0.8, 0.01, 0.5, s));
        assert!(utility(0.8, 0.001, 0.5, s) > utility(0.8, 0.01, 0.5, s));
        // At w = 0.5, 0.1 quality is worth $0.001 at the default scale.
        assert!((utility(0.9, 0.002, 0.5, s) - utility(0.8, 0.001, 0.5, s)).abs() < 1e-12);
        assert!(utility(0.0, 0.0, 1.0, s).is_finite());
    }

    #[test]
    fn unhealthy_models_are_left_out_and_degraded_ones_ranked_behind() {
        use std::time::Duration;
        let cat = catalog();
        let c = Constraints { max_fallbacks: 3, ..Default::default() };
        let mut health = vec![Snapshot::HEALTHY; 5];
        health[0].state = State::CoolingDown { remaining: Duration::from_secs(5) };
        health[1].state = State::Degraded;
        let r = rank(&cat, &preds(), &health, 100, 0.0, &c, LAT).unwrap();
        // big is cooling down; mid (degraded) drops behind the healthy other and small.
        assert_eq!(ids(&cat, &r), ["other", "small", "mid"]);
        assert!(matches!(r.scored[0].exclusion, Some(Exclusion::Unhealthy(_))));
        assert_eq!(r.scored[0].exclusion.as_ref().unwrap().constraint(), "model health");
        // Probing models rank normally.
        health[0].state = State::Probing;
        assert_eq!(ids(&cat, &rank(&cat, &preds(), &health, 100, 0.0, &c, LAT).unwrap())[0], "big");
        // When only cooling-down models pass the request's constraints, they stay (fail open).
        health[0].state = State::CoolingDown { remaining: Duration::from_secs(5) };
        let only_big = Constraints { allowed_models: vec!["big".into()], ..c.clone() };
        let r = rank(&cat, &preds(), &health, 100, 0.0, &only_big, LAT).unwrap();
        assert_eq!(ids(&cat, &r), ["big"]);
        assert_eq!(r.scored[0].health_tier(), 2);
    }

    // Endpoints and OpenRouter's provider preferences.

    fn ep(provider: &str, price_in: f64, price_out: f64, ttft: f64, tps: f64) -> Endpoint {
        let mut e = CatalogModel::single("x", provider, price_in, price_out, 128_000).endpoints.remove(0);
        e.ttft_ms = Some(ttft);
        e.output_tokens_per_second = Some(tps);
        e
    }

    /// "llama" on three providers: a (dear, slow, fp8, tools, retains prompts), b (cheap, fast
    /// decoding, bf16, no tools, 4096 output tokens, ZDR), c (mid price, lowest TTFT, declares
    /// nothing, 8192 window); and "other" on d.
    fn endpoints_catalog() -> Catalog {
        let mut a = ep("a", 1.0, 1.0, 800.0, 40.0);
        a.quantization = Some("fp8".into());
        a.capabilities.tools = Some(true);
        (a.retains_prompts, a.trains_on_prompts) = (Some(true), Some(false));
        let mut b = ep("b", 0.2, 0.4, 300.0, 120.0);
        b.quantization = Some("bf16".into());
        b.capabilities.tools = Some(false);
        b.max_output_tokens = Some(4096);
        (b.retains_prompts, b.trains_on_prompts) = (Some(false), Some(false));
        let mut c = ep("c", 0.5, 0.5, 200.0, 60.0);
        c.context_tokens = 8192;
        let llama = CatalogModel { id: "llama".into(), endpoints: vec![a, b, c] };
        Catalog::new(vec![llama, model("other", "d", 0.3, 128_000)]).unwrap()
    }

    fn endpoint_preds() -> Vec<Option<Prediction>> {
        [0.9, 0.5].iter().map(|&q| Some(Prediction { quality: q, output_tokens: 200.0, domain_chance: 1.0 })).collect()
    }

    fn with(p: ProviderPreferences) -> Constraints {
        Constraints { max_fallbacks: 3, provider: p, ..Default::default() }
    }

    /// The providers of "llama"'s failover order.
    fn llama_order(r: &Ranking) -> Vec<&'static str> {
        r.scored[0].order.iter().map(|&j| ["a", "b", "c"][j]).collect()
    }

    fn route(c: &Constraints) -> Result<Ranking, NoEligibleModel> {
        rank(&endpoints_catalog(), &endpoint_preds(), &[], 100, 0.0, c, LAT)
    }

    #[test]
    fn endpoints_go_cheapest_first_by_default_and_the_candidate_costs_its_first() {
        let r = route(&with(ProviderPreferences::default())).unwrap();
        assert_eq!(llama_order(&r), ["b", "c", "a"]);
        // 100 in x $0.2 + 200 out x $0.4 per million.
        assert!((r.scored[0].cost_usd - 1.0e-4).abs() < 1e-12, "{}", r.scored[0].cost_usd);
        assert_eq!(r.scored[0].first_endpoint(), 1);
        // The model keeps its utility rank; its endpoints are each ranked.
        assert_eq!(r.scored[0].endpoints.iter().map(|e| e.rank).collect::<Vec<_>>(), [3, 1, 2]);
    }

    #[test]
    fn sort_orders_by_price_throughput_or_latency() {
        let by = |sort| llama_order(&route(&with(ProviderPreferences { sort: Some(sort), ..Default::default() })).unwrap());
        assert_eq!(by(SortBy::Price), ["b", "c", "a"]);
        assert_eq!(by(SortBy::Throughput), ["b", "c", "a"]);
        assert_eq!(by(SortBy::Latency), ["c", "b", "a"]);
    }

    #[test]
    fn order_goes_first_and_allow_fallbacks_false_keeps_only_it() {
        let order = ProviderPreferences { order: vec!["a".into(), "c".into()], ..Default::default() };
        assert_eq!(llama_order(&route(&with(order.clone())).unwrap()), ["a", "c", "b"]);
        // No fallbacks beyond `order`: b is left out by a hard rule, named.
        let strict = ProviderPreferences { allow_fallbacks: false, ..order };
        let r = route(&with(strict)).unwrap();
        assert_eq!(llama_order(&r), ["a", "c"]);
        assert_eq!(r.scored[0].endpoints[1].exclusion, Some(Exclusion::NotInOrder));
        // A model with no endpoint in `order` is left out: "other" (on d).
        assert_eq!(r.scored[1].exclusion.as_ref().map(Exclusion::constraint), Some("provider.order/allow_fallbacks"));
        // Without `order`, only each model's first endpoint.
        let r = route(&with(ProviderPreferences { allow_fallbacks: false, ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["b"]);
        assert_eq!(r.scored[0].endpoints[2].exclusion, Some(Exclusion::NoEndpointFallbacks));
        assert_eq!(r.scored[0].exclusion, None);
    }

    #[test]
    fn only_and_ignore_filter_providers() {
        let r = route(&with(ProviderPreferences { only: vec!["a".into(), "c".into()], ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["c", "a"]);
        assert_eq!(r.scored[0].endpoints[1].exclusion, Some(Exclusion::NotInOnly));
        assert_eq!(r.scored[1].exclusion, Some(Exclusion::NotInOnly));
        let r = route(&with(ProviderPreferences { ignore: vec!["b".into()], ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["c", "a"]);
        assert_eq!(r.scored[0].endpoints[1].exclusion, Some(Exclusion::Ignored));
        // Ignoring every endpoint of every model refuses, naming the rule.
        let all = ProviderPreferences { ignore: ["a", "b", "c", "d"].map(String::from).to_vec(), ..Default::default() };
        let err = route(&with(all)).unwrap_err();
        assert_eq!(err.constraint, "provider.ignore");
        assert!(err.detail.contains("no endpoint"), "{}", err.detail);
    }

    #[test]
    fn quantizations_data_collection_and_zdr_filter_endpoints() {
        let q = ProviderPreferences { quantizations: vec!["fp8".into(), "unknown".into()], ..Default::default() };
        let r = route(&with(q)).unwrap();
        assert_eq!(llama_order(&r), ["c", "a"]);
        assert_eq!(r.scored[0].endpoints[1].exclusion, Some(Exclusion::Quantization("bf16".into())));
        // data_collection = deny: c does not say whether it trains on prompts.
        let r = route(&with(ProviderPreferences { deny_data_collection: true, ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["b", "a"]);
        assert_eq!(r.scored[0].endpoints[2].exclusion, Some(Exclusion::DataCollection(None)));
        // zdr: a retains prompts, c does not say.
        let r = route(&with(ProviderPreferences { zdr: true, ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["b"]);
        assert_eq!(r.scored[0].endpoints[0].exclusion, Some(Exclusion::Zdr(Some(true))));
        assert!(r.scored[0].endpoints[0].exclusion.as_ref().unwrap().detail().contains("provider.zdr"));
    }

    #[test]
    fn a_tool_calling_request_never_lands_on_an_endpoint_without_tools() {
        let tools = Constraints { requirements: Requirements { tools: true, ..Default::default() }, ..with(Default::default()) };
        let r = route(&tools).unwrap();
        // b says it has no tools; c does not say (kept, as OpenRouter without require_parameters).
        assert_eq!(llama_order(&r), ["c", "a"]);
        assert_eq!(r.scored[0].endpoints[1].exclusion, Some(Exclusion::Capability(Need::Tools)));
        // require_parameters: only endpoints that declare tools.
        let strict = Constraints { provider: ProviderPreferences { require_parameters: true, ..Default::default() }, ..tools.clone() };
        let r = route(&strict).unwrap();
        assert_eq!(llama_order(&r), ["a"]);
        assert_eq!(r.scored[0].endpoints[2].exclusion, Some(Exclusion::Undeclared(Need::Tools)));
        // Only b allowed: refused by the capability rule, in words.
        let only_b = Constraints { provider: ProviderPreferences { only: vec!["b".into()], ..Default::default() }, ..tools };
        let err = route(&only_b).unwrap_err();
        assert_eq!(err.constraint, "capabilities");
        assert!(err.detail.contains("needs tools"), "{}", err.detail);
        // Output tokens over b's cap, a reasoning effort nobody declares (kept) or one a refuses.
        let long =
            Constraints { requirements: Requirements { max_output_tokens: Some(8000), ..Default::default() }, ..with(Default::default()) };
        let r = route(&long).unwrap();
        assert_eq!(llama_order(&r), ["c", "a"]);
        assert_eq!(r.scored[0].endpoints[1].exclusion, Some(Exclusion::Capability(Need::OutputTokens(8000))));
        let mut cat = endpoints_catalog();
        let mut models = cat.models().to_vec();
        models[0].endpoints[0].capabilities.reasoning_efforts = Some(vec!["low".into()]);
        cat = Catalog::new(models).unwrap();
        let high = Constraints {
            requirements: Requirements { reasoning_effort: Some("high".into()), ..Default::default() },
            ..with(Default::default())
        };
        let r = rank(&cat, &endpoint_preds(), &[], 100, 0.0, &high, LAT).unwrap();
        assert_eq!(r.scored[0].endpoints[0].exclusion, Some(Exclusion::Capability(Need::ReasoningEffort("high".into()))));
        assert_eq!(llama_order(&r), ["b", "c"]);
    }

    #[test]
    fn max_price_and_max_cost_judge_each_endpoint() {
        let p = ProviderPreferences { max_prompt_price: Some(0.6), max_completion_price: Some(0.45), ..Default::default() };
        let r = route(&with(p)).unwrap();
        assert_eq!(llama_order(&r), ["b"]);
        assert_eq!(r.scored[0].endpoints[0].exclusion, Some(Exclusion::MaxPrice { which: "prompt", price: 1.0, limit: 0.6 }));
        assert_eq!(r.scored[0].endpoints[2].exclusion, Some(Exclusion::MaxPrice { which: "completion", price: 0.5, limit: 0.45 }));
        // max_cost_usd keeps a model whose cheap endpoint fits, and prices it there.
        let budget =
            Constraints { max_cost_usd: Some(1.2e-4), ..with(ProviderPreferences { sort: Some(SortBy::Latency), ..Default::default() }) };
        let r = route(&budget).unwrap();
        assert_eq!(llama_order(&r), ["b"]);
        assert!(matches!(r.scored[0].endpoints[2].exclusion, Some(Exclusion::Budget { .. })));
        assert!(matches!(r.scored[1].exclusion, Some(Exclusion::Budget { .. })));
    }

    #[test]
    fn preferred_latency_and_throughput_reorder_and_never_refuse() {
        // Only c's TTFT (200 ms) is under 0.25 s at p90: it goes first, the rest by price.
        let p90 = Percentiles { p90: Some(0.25), ..Default::default() };
        let r = route(&with(ProviderPreferences { preferred_max_latency: p90, ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["c", "b", "a"]);
        // Only a misses 50 tokens/s (a number is p50).
        let tps = Percentiles { p50: Some(50.0), ..Default::default() };
        let r =
            route(&with(ProviderPreferences { preferred_min_throughput: tps, sort: Some(SortBy::Latency), ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["c", "b", "a"]);
        // Nobody meets 10 ms: the order is unchanged and nothing is refused.
        let none = Percentiles { p50: Some(0.01), ..Default::default() };
        let r = route(&with(ProviderPreferences { preferred_max_latency: none, ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r), ["b", "c", "a"]);
        assert!(r.scored[0].endpoints.iter().all(|e| e.exclusion.is_none() && e.misses_preference));
    }

    #[test]
    fn partition_model_tries_the_same_model_first_and_none_sorts_everything() {
        let attempts = |p: Partition| {
            let r = route(&with(ProviderPreferences { partition: p, ..Default::default() })).unwrap();
            let cat = endpoints_catalog();
            r.attempts
                .iter()
                .map(|a| {
                    let m = &cat.models()[r.scored[a.scored].model];
                    format!("{}@{}", m.id, m.endpoints[a.endpoint].provider)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(attempts(Partition::Model), ["llama@b", "llama@c", "llama@a", "other@d"]);
        // By price across models: other@d ($2.7e-4) before llama@a ($3e-4).
        assert_eq!(attempts(Partition::None), ["llama@b", "llama@c", "other@d", "llama@a"]);
    }

    #[test]
    fn provider_lists_apply_per_endpoint() {
        let c = Constraints { denied_providers: vec!["b".into()], ..with(Default::default()) };
        let r = route(&c).unwrap();
        assert_eq!(llama_order(&r), ["c", "a"]);
        assert!(r.chosen.contains(&0));
        let c = Constraints { allowed_providers: vec!["d".into()], ..with(Default::default()) };
        let r = route(&c).unwrap();
        assert_eq!(r.scored[0].exclusion, Some(Exclusion::ProviderNotAllowed));
        assert_eq!(ids(&endpoints_catalog(), &r), ["other"]);
    }

    // Live endpoint measurements.

    use crate::health::Quantiles;

    /// "llama" on a, b, c at one price (near ties), and "other" on d, dearer.
    fn tied_catalog() -> Catalog {
        let llama = CatalogModel { id: "llama".into(), endpoints: ["a", "b", "c"].map(|p| ep(p, 0.5, 0.5, 400.0, 50.0)).to_vec() };
        Catalog::new(vec![llama, model("other", "d", 1.0, 128_000)]).unwrap()
    }

    fn q(p50: f64, p90: f64) -> Option<Quantiles> {
        Some(Quantiles { p50, p75: (p50 + p90) / 2.0, p90, p99: p90 * 1.5 })
    }

    /// An endpoint measured at `latency` (p50, p90) ms end to end, a quarter of it to the first token.
    fn measured(latency: (f64, f64), tps: f64) -> EndpointLive {
        EndpointLive {
            measured_requests: 20,
            latency_ms: q(latency.0, latency.1),
            ttft_ms: q(latency.0 / 4.0, latency.1 / 4.0),
            tokens_per_second: q(tps, tps),
            ..EndpointLive::UNMEASURED
        }
    }

    fn live_route(cat: &Catalog, endpoints: &[Vec<EndpointLive>], spread: u64, c: &Constraints) -> Result<Ranking, NoEligibleModel> {
        rank_live(cat, &endpoint_preds(), Live { models: &[], endpoints, spread }, 100, 0.0, c, LAT)
    }

    #[test]
    fn near_ties_share_the_load_until_measurements_order_them_by_speed() {
        let cat = tied_catalog();
        let c = with(ProviderPreferences::default());
        // Unmeasured and equal: each endpoint goes first for some requests.
        let firsts: std::collections::BTreeSet<&str> =
            (0..64u64).map(|k| llama_order(&live_route(&cat, &[], k.wrapping_mul(0x9e37_79b9_7f4a_7c15), &c).unwrap())[0]).collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        // Measured: c slow, b fastest. Order by speed, whatever the spread, and the predicted
        // latency is the measured one (TTFT median + 200 tokens at the median throughput).
        let live = vec![vec![measured((800.0, 900.0), 50.0), measured((300.0, 350.0), 100.0), measured((5000.0, 9000.0), 20.0)]];
        for k in [0, u64::MAX / 3, u64::MAX] {
            let r = live_route(&cat, &live, k, &c).unwrap();
            assert_eq!(llama_order(&r), ["b", "a", "c"], "spread {k}");
            assert!(r.scored[0].endpoints[1].measured && (r.scored[0].latency_ms - (75.0 + 2000.0)).abs() < 1e-9, "{:?}", r.scored[0]);
        }
        // A cheaper endpoint (beyond the near tie) still goes first: price leads, speed breaks ties.
        let mut models = cat.models().to_vec();
        models[0].endpoints[2].input_usd_per_mtok = 0.1;
        models[0].endpoints[2].output_usd_per_mtok = 0.1;
        let cheap = Catalog::new(models).unwrap();
        assert_eq!(llama_order(&live_route(&cheap, &live, 0, &c).unwrap()), ["c", "b", "a"]);
    }

    #[test]
    fn sort_and_soft_targets_use_measured_percentiles() {
        let cat = tied_catalog();
        let live = vec![vec![measured((800.0, 4000.0), 30.0), measured((1000.0, 1200.0), 90.0), measured((400.0, 6000.0), 60.0)]];
        let by = |p: ProviderPreferences| llama_order(&live_route(&cat, &live, 0, &with(p)).unwrap());
        assert_eq!(by(ProviderPreferences { sort: Some(SortBy::Latency), ..Default::default() }), ["c", "a", "b"]);
        assert_eq!(by(ProviderPreferences { sort: Some(SortBy::Throughput), ..Default::default() }), ["b", "c", "a"]);
        // p90 time to first token under 0.5 s: only b (300 ms at p90) meets it and goes first;
        // by p50 c and a would lead.
        let p90 = Percentiles { p90: Some(0.5), ..Default::default() };
        let r = live_route(&cat, &live, 0, &with(ProviderPreferences { preferred_max_latency: p90, ..Default::default() })).unwrap();
        assert_eq!(llama_order(&r)[0], "b");
        assert!(r.scored[0].endpoints[0].misses_preference && !r.scored[0].endpoints[1].misses_preference);
        // `order` goes before measured speed; `only` filters.
        assert_eq!(by(ProviderPreferences { order: vec!["a".into()], sort: Some(SortBy::Latency), ..Default::default() }), ["a", "c", "b"]);
        assert_eq!(by(ProviderPreferences { only: vec!["a".into(), "b".into()], ..Default::default() }), ["b", "a"]);
    }

    #[test]
    fn max_latency_excludes_measured_endpoints_over_it_and_passes_unmeasured_ones() {
        let cat = tied_catalog();
        let live = vec![vec![measured((800.0, 4000.0), 30.0), measured((1000.0, 1200.0), 90.0), EndpointLive::UNMEASURED]];
        let limit = |ms, percentile| Constraints { max_latency: Some(LatencyLimit { ms, percentile }), ..with(Default::default()) };
        let r = live_route(&cat, &live, 0, &limit(2000.0, Percentile::P90)).unwrap();
        // a's p90 (4000 ms) is over; b's (1200 ms) is not; c is unmeasured and passes.
        assert_eq!(llama_order(&r), ["b", "c"]);
        let e = r.scored[0].endpoints[0].exclusion.clone().unwrap();
        assert_eq!(e.constraint(), "max_latency_ms");
        assert!(e.detail().contains("llama@a") && e.detail().contains("4000 ms") && e.detail().contains("2000"), "{}", e.detail());
        // At p50 a passes (800 ms).
        assert_eq!(llama_order(&live_route(&cat, &live, 0, &limit(2000.0, Percentile::P50)).unwrap()).len(), 3);
        // Every endpoint measured and over: refused, naming the closest endpoint and the figures.
        let only = Constraints { allowed_models: vec!["llama".into()], ..limit(100.0, Percentile::P50) };
        let all = vec![vec![measured((800.0, 900.0), 30.0), measured((300.0, 900.0), 90.0), measured((5000.0, 9000.0), 9.0)]];
        let err = live_route(&cat, &all, 0, &only).unwrap_err();
        assert_eq!(err.constraint, "max_latency_ms");
        assert!(err.detail.contains("llama@b") && err.detail.contains("300 ms") && err.detail.contains("100 ms"), "{}", err.detail);
    }

    #[test]
    fn an_endpoint_outage_moves_to_the_same_model_elsewhere_before_another_model() {
        let cat = tied_catalog();
        let cooling = |mut l: EndpointLive| {
            l.health.state = State::CoolingDown { remaining: std::time::Duration::from_secs(30) };
            l
        };
        let fast = measured((300.0, 350.0), 100.0);
        let live = vec![vec![measured((800.0, 900.0), 100.0), cooling(fast), measured((900.0, 950.0), 100.0)]];
        let r = live_route(&cat, &live, 0, &with(Default::default())).unwrap();
        assert_eq!(llama_order(&r), ["a", "c"], "the fastest is cooling down: left out, the model stays first");
        assert_eq!(r.scored[0].endpoints[1].exclusion.as_ref().map(Exclusion::constraint), Some("endpoint health"));
        assert_eq!(ids(&cat, &r)[0], "llama");
        // Every endpoint cooling: the model is, and another model goes first.
        let down = vec![vec![cooling(fast), cooling(fast), cooling(fast)]];
        let r = live_route(&cat, &down, 0, &with(Default::default())).unwrap();
        assert_eq!(ids(&cat, &r), ["other"]);
        assert!(matches!(r.scored[0].exclusion, Some(Exclusion::Unhealthy(_))));
        // A degraded endpoint goes behind the healthy ones of its model.
        let mut degraded = fast;
        degraded.health.state = State::Degraded;
        let r = live_route(
            &cat,
            &[vec![measured((800.0, 900.0), 100.0), degraded, measured((900.0, 950.0), 100.0)]],
            0,
            &with(Default::default()),
        )
        .unwrap();
        assert_eq!(llama_order(&r), ["a", "c", "b"]);
    }
}
