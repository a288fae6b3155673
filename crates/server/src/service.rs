//! The running service's core, below the gRPC handlers and above the engine: the current engine
//! (swapped atomically on reload), live model health, the decision log and the counters. It
//! knows nothing of protobuf.
//!
//! The engine is replaceable; health, the log and the counters outlive reloads.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    engine::{Decision, Engine, RouteError, RouteQuery, Tradeoff},
    health::{
        endpoints::{EndpointTracker, Measurement},
        offers::Offers,
        shared::SharedHealth,
        EndpointLive, HealthTracker, Outcome, Snapshot,
    },
    logs::{now_ms, DecisionLog, DecisionPolicy, DecisionRecord, FeedbackRecord, LogError, LoggedCandidate, NotQueued},
    savings::{Baseline, Estimate},
    sessions::Sessions,
    telemetry::Telemetry,
};

/// Counters for metrics (beyond the log's own).
///
/// Every Route call received ends in exactly one result: `routes_received` = `routes_ok` + the
/// sum of `route_errors` + `routes_cancelled` once no call is in flight (see [`RouteCall`]).
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Route calls received by the handler.
    pub routes_received: AtomicU64,
    /// Route calls answered.
    pub routes_ok: AtomicU64,
    /// Route calls refused, by error label (rare: a lock is fine here, not on success).
    pub route_errors: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Route calls dropped before an answer: the client cancelled, or tonic's `grpc-timeout`
    /// layer gave up on the call (the client then reads CANCELLED).
    pub routes_cancelled: AtomicU64,
    /// Route calls answered from the prediction cache.
    pub cache_hits: AtomicU64,
    /// Decisions where the shadow head's primary was the serving head's best model.
    pub shadow_agreed: AtomicU64,
    /// Decisions where it was another model (or none).
    pub shadow_disagreed: AtomicU64,
    /// Feedback reports accepted, by outcome (index of `Outcome::ALL`).
    pub feedback: [AtomicU64; 5],
    /// Feedback reports for catalog models left out of health because no replica offered that
    /// model for that request id, as far as this one knows (`health.count_unknown_requests` off).
    pub feedback_unverified: AtomicU64,
    /// Feedback reports for catalog models left out of health because a report on the same
    /// (request id, model) already moved it (here, or on another replica as read from Redis).
    pub feedback_duplicates: AtomicU64,
    /// Requests Envoy's external processor routed (`transport::ext_proc`).
    pub ext_proc_routed: AtomicU64,
    /// Requests it passed on untouched (an explicit model, or not a chat request).
    pub ext_proc_passed: AtomicU64,
    /// The same, by reason (`explicit_model`, `not_json`, `no_messages`, `no_text`, `too_large`).
    pub ext_proc_passed_by_reason: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Requests it answered with an error instead of routing (the request's own fault).
    pub ext_proc_refused: AtomicU64,
    /// Requests it could not route for a reason of its own (loading, overloaded, internal): the
    /// stream ended with the gRPC status and Envoy's `failure_mode_allow` decided.
    pub ext_proc_failed: AtomicU64,
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Rejected reloads.
    pub reloads_failed: AtomicU64,
}

impl ServiceStats {
    /// Counts a request that Envoy's external processor passed through, and why.
    pub fn count_ext_proc_pass(&self, reason: &'static str) {
        self.ext_proc_passed.fetch_add(1, Ordering::Relaxed);
        *self.ext_proc_passed_by_reason.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }
}

/// One Route call in flight, from [`Service::route_call`]: resolve it with [`RouteCall::ok`] or
/// [`RouteCall::error`]; dropped unresolved (its handler future was dropped), it counts as
/// cancelled. Each result is counted once and observed once in the latency histogram.
#[must_use = "a dropped RouteCall counts as cancelled"]
pub struct RouteCall<'a> {
    stats: &'a ServiceStats,
    telemetry: &'a Telemetry,
    started: Instant,
    resolved: bool,
}

impl RouteCall<'_> {
    /// The call was answered (from the prediction cache or not).
    pub fn ok(mut self, cache_hit: bool) {
        self.resolved = true;
        self.stats.routes_ok.fetch_add(1, Ordering::Relaxed);
        self.telemetry.observe_route("ok", cache_hit, self.started.elapsed());
    }

    /// The call was refused with the error labelled `label`.
    pub fn error(mut self, label: &'static str) {
        self.resolved = true;
        *self.stats.route_errors.lock().unwrap_or_else(|e| e.into_inner()).entry(label).or_default() += 1;
        self.telemetry.observe_route(label, false, self.started.elapsed());
    }
}

impl Drop for RouteCall<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.stats.routes_cancelled.fetch_add(1, Ordering::Relaxed);
            self.telemetry.observe_route("cancelled", false, self.started.elapsed());
        }
    }
}

/// A feedback report was not accepted (health has seen it all the same: a retry does not count
/// twice).
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    /// The decision log's queue stayed full: retry.
    #[error(transparent)]
    QueueFull(NotQueued),
    /// The decision log is closed: the server is shutting down.
    #[error("the decision log is closed (the server is shutting down); send the report to another replica")]
    LogClosed,
}

impl From<NotQueued> for FeedbackError {
    fn from(e: NotQueued) -> Self {
        match e {
            NotQueued::Full { .. } => FeedbackError::QueueFull(e),
            NotQueued::Closed => FeedbackError::LogClosed,
        }
    }
}

/// What a feedback report changed.
#[derive(Debug, Clone, Copy)]
pub struct FeedbackAck {
    /// A replica of the fleet made the decision recently (this one, or one whose offered set
    /// reached this one through Redis).
    pub known_request: bool,
    /// The model's health after the report, when it is a catalog model.
    pub health: Option<Snapshot>,
    /// The report moved the model's health (the first on an offered model for that request id,
    /// or any first one with `health.count_unknown_requests`).
    pub counted: bool,
    /// The report is logged as verified: the model was offered for that request id and this is
    /// the first report on it (training exports take only these by default).
    pub verified: bool,
    /// The endpoint's breaker and measurements after the report, when it names an endpoint of
    /// the model.
    pub endpoint: Option<EndpointLive>,
}

/// The outcome of a successful reload.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// Version now serving.
    pub version: String,
    /// Version that served before (empty if none).
    pub previous: String,
    /// Catalog size.
    pub models: usize,
    /// Load and validation time.
    pub elapsed: Duration,
}

/// The prompt a new engine must route before it is swapped in.
pub const RELOAD_TEST_PROMPT: &str = "Write a short haiku about routing requests between language models.";

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The decision log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The shared health (`health.shared`, Redis) could not be set up.
    #[error("health.shared ({url}): {message}")]
    SharedHealth {
        /// The Redis URL, without its password.
        url: String,
        /// What failed.
        message: String,
    },
}

/// The service core.
pub struct Service {
    engine: RwLock<Option<Arc<Engine>>>,
    config: RwLock<Arc<Config>>,
    health: Arc<HealthTracker>,
    /// Each endpoint's breaker and measurements (reports that name the provider).
    endpoints: Arc<EndpointTracker>,
    /// The fleet's shared health, with `health.shared`.
    shared: Option<SharedHealth>,
    log: Option<DecisionLog>,
    /// Recent request ids (this replica's and, with `health.shared`, the fleet's), the models
    /// offered for each, and the reports already taken on them.
    offers: Arc<Offers>,
    /// Where each session's last turn went (shared with the fleet with `health.shared`).
    sessions: Arc<Sessions>,
    reload_lock: tokio::sync::Mutex<()>,
    stats: ServiceStats,
    telemetry: Telemetry,
    /// The savings baseline of the engine serving now (`savings`), set after each (re)load.
    baseline: RwLock<Option<Arc<Baseline>>>,
}

impl Service {
    /// Opens the decision log (if enabled) and sets up health; the engine comes later ([`Service::install`]).
    pub fn new(config: Config) -> Result<Self, StartError> {
        let log = if config.decision_log.enabled { Some(DecisionLog::open(config.decision_log.clone())?) } else { None };
        let health = Arc::new(HealthTracker::new(config.health.clone()));
        let endpoints = Arc::new(EndpointTracker::new(config.health.clone()));
        let offers = Arc::new(Offers::new(config.health.recent_requests));
        let shared = match &config.health.shared {
            Some(url) => Some(
                SharedHealth::start(
                    url,
                    config.health.shared_ca_file.as_deref(),
                    &config.health.shared_key,
                    Arc::clone(&health),
                    Arc::clone(&endpoints),
                    Arc::clone(&offers),
                )
                .map_err(|message| StartError::SharedHealth { url: crate::redact::redact(url), message })?,
            ),
            None => None,
        };
        let sessions = match (&config.health.shared, config.sessions.shared && config.sessions.enabled) {
            (Some(url), true) => {
                Sessions::shared(&config.sessions, url, config.health.shared_ca_file.as_deref(), &config.health.shared_key)
                    .map_err(|message| StartError::SharedHealth { url: crate::redact::redact(url), message })?
            }
            _ => Sessions::new(&config.sessions),
        };
        Ok(Self {
            engine: RwLock::new(None),
            sessions,
            health,
            endpoints,
            shared,
            config: RwLock::new(Arc::new(config)),
            log,
            offers,
            reload_lock: tokio::sync::Mutex::new(()),
            stats: ServiceStats::default(),
            telemetry: Telemetry::new(),
            baseline: RwLock::new(None),
        })
    }

    /// The engine serving now, if loaded.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs an engine; in-flight requests keep the one they hold. Returns the previous one.
    pub fn install(&self, engine: Arc<Engine>) -> Option<Arc<Engine>> {
        if let Some(shared) = &self.shared {
            shared.set_models(engine.catalog().models().iter().map(|m| m.id.as_str()));
        }
        self.engine.write().unwrap_or_else(|e| e.into_inner()).replace(engine)
    }

    /// Chooses the savings baseline of `engine` (`savings::resolve`) and keeps it for the
    /// decisions of that engine. A failure is logged and leaves decisions without a baseline.
    pub async fn set_baseline_for(&self, engine: &Arc<Engine>, cfg: &crate::savings::SavingsConfig) {
        let baseline = match crate::savings::resolve(engine, cfg).await {
            Ok(b) => {
                tracing::info!(baseline = %b.id, chosen_by = b.chosen_by, probe_wins = ?b.probe_wins, mean_quality = ?b.mean_quality, "savings baseline");
                Some(Arc::new(b))
            }
            Err(e) => {
                tracing::error!(error = %e, "savings: no baseline; decisions are logged without savings");
                None
            }
        };
        *self.baseline.write().unwrap_or_else(|e| e.into_inner()) = baseline;
    }

    /// The savings baseline of `engine`, when one was chosen for it.
    pub fn baseline(&self, engine: &Engine) -> Option<Arc<Baseline>> {
        let b = self.baseline.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        (b.router_version == engine.version()).then_some(b)
    }

    /// The predicted saving of a decision of `engine` against its baseline.
    pub fn savings(&self, engine: &Engine, d: &Decision) -> Option<Estimate> {
        self.baseline(engine)?.estimate(engine.catalog(), d)
    }

    /// The config of the last successful (re)load.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Live health.
    pub fn health(&self) -> &HealthTracker {
        &self.health
    }

    /// Each endpoint's breaker and measurements.
    pub fn endpoints(&self) -> &EndpointTracker {
        &self.endpoints
    }

    /// Every catalog endpoint of `engine`'s live state, `[model][endpoint]` (empty when none has
    /// a report), for display (ListModels, explanations, metrics).
    pub fn endpoint_live(&self, engine: &Engine) -> Vec<Vec<EndpointLive>> {
        self.endpoints.routing(engine.catalog(), Instant::now())
    }

    /// The fleet's shared health, with `health.shared`.
    pub fn shared_health(&self) -> Option<&SharedHealth> {
        self.shared.as_ref()
    }

    /// The sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The decision log, if enabled.
    pub fn log(&self) -> Option<&DecisionLog> {
        self.log.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> &ServiceStats {
        &self.stats
    }

    /// The recorder of what is measured as it happens (Route latency).
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Counts a Route call as received; its result is counted when the guard is resolved or
    /// dropped. Take it first thing in the handler, so every call is counted exactly once.
    pub fn route_call(&self) -> RouteCall<'_> {
        self.stats.routes_received.fetch_add(1, Ordering::Relaxed);
        RouteCall { stats: &self.stats, telemetry: &self.telemetry, started: Instant::now(), resolved: false }
    }

    /// Health of each catalog model of `engine`, in catalog order, with latency medians (for
    /// display: ListModels, metrics).
    pub fn catalog_health(&self, engine: &Engine) -> Vec<Snapshot> {
        self.health.snapshots(engine.catalog().models().iter().map(|m| m.id.as_str()), Instant::now())
    }

    /// Routes with live health, logs the decision (never waiting on the log), counts the result
    /// on `call` (from [`Service::route_call`]).
    pub async fn route(&self, call: RouteCall<'_>, engine: &Arc<Engine>, q: RouteQuery) -> Result<Decision, RouteError> {
        // Lock-free; empty while no model has a report (the policy reads that as all healthy).
        let now = Instant::now();
        let health = self.health.routing_snapshots(engine.catalog().models().iter().map(|m| m.id.as_str()), now);
        // Lock-free too; empty while no endpoint has a report (all healthy, judged on priors).
        let endpoints = self.endpoints.routing(engine.catalog(), now);
        let session = q.session;
        let mut result = engine.route_live(q, &health, &endpoints).await;
        match &mut result {
            Ok(d) => {
                if let Some(s) = session {
                    self.sessions.decide(engine, d, s);
                }
                if d.timings.cache_hit {
                    self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(s) = &d.shadow {
                    let n = if s.agrees { &self.stats.shadow_agreed } else { &self.stats.shadow_disagreed };
                    n.fetch_add(1, Ordering::Relaxed);
                }
                self.remember_offered(engine, d);
                if let Some(log) = &self.log {
                    let baseline = self.savings(engine, d);
                    log.log_decision(decision_record(engine, d, baseline));
                }
                call.ok(d.timings.cache_hit);
            }
            Err(e) => call.error(e.label()),
        }
        result
    }

    /// Remembers the models a decision offered (primary and fallbacks), for
    /// [`Service::feedback`] here and, through Redis, on the other replicas. Never waits.
    fn remember_offered(&self, engine: &Engine, d: &Decision) {
        let models = engine.catalog().models();
        let ids = || d.ranking.chosen.iter().map(|&i| models[d.ranking.scored[i].model].id.as_str());
        self.offers.offer(&d.request_id, ids());
        if let Some(shared) = &self.shared {
            shared.offer(&d.request_id, ids());
        }
    }

    /// Records one feedback report: health first (in memory), then the log via its queue.
    ///
    /// A report moves a catalog model's health only when a replica of the fleet offered that
    /// model for that request id (any catalog model with `health.count_unknown_requests`), and
    /// only the first report on each (request id, model) does: made-up or repeated reports cannot
    /// take a model out of routing. Every valid report is logged, marked verified (the first on
    /// an offered model) and offered. When the log refuses it (a full queue, a shutdown) the
    /// error says so, health has seen the report, and its retry counts no second time.
    pub async fn feedback(&self, mut rec: FeedbackRecord) -> Result<FeedbackAck, FeedbackError> {
        let engine = self.engine();
        let model = engine.as_ref().and_then(|e| e.catalog().get(&rec.model));
        let in_catalog = model.is_some();
        if let Some((e, b)) = engine.as_ref().and_then(|e| Some((e, self.baseline(e)?))) {
            rec.baseline = Some(b.realised(e.catalog(), &rec.model, rec.input_tokens, rec.output_tokens, rec.cost_usd));
        }
        // A report naming one of the model's endpoints moves that endpoint's breaker (and feeds
        // its measurements) instead of the model's.
        let provider: Option<String> = rec.provider.clone().filter(|p| model.is_some_and(|m| m.endpoints.iter().any(|e| e.provider == *p)));
        let provider = provider.as_deref();
        let measurement = Measurement {
            latency_ms: rec.latency_ms,
            ttft_ms: rec.ttft_ms,
            generation_ms: rec.generation_ms,
            output_tokens: rec.output_tokens,
        };
        let claim = self.offers.claim(&rec.request_id, &rec.model, in_catalog, self.health.config().count_unknown_requests);
        let mut endpoint = None;
        let health = in_catalog.then(|| {
            if claim.counts {
                if let Some(shared) = &self.shared {
                    shared.share(&rec.request_id, &rec.model, provider, rec.outcome, &measurement);
                }
                match provider {
                    Some(p) => {
                        endpoint = Some(self.endpoints.record(&rec.model, p, rec.outcome, &measurement, Instant::now()));
                        self.health.snapshot(&rec.model, Instant::now())
                    }
                    None => self.health.record(&rec.model, rec.outcome, rec.latency_ms, Instant::now()),
                }
            } else {
                if claim.duplicate {
                    self.stats.feedback_duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(model = %rec.model, "feedback not applied to health: a report on this request id and model already was");
                } else {
                    self.stats.feedback_unverified.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(model = %rec.model, known_request = claim.known_request, "feedback not applied to health: no replica offered the model for the request");
                }
                self.health.snapshot(&rec.model, Instant::now())
            }
        });
        if let (None, Some(p)) = (&endpoint, provider) {
            endpoint = Some(self.endpoints.get(&rec.model, p, Instant::now()));
        }
        (rec.verified, rec.offered) = (claim.verified, claim.offered);
        let outcome = rec.outcome;
        if let Some(log) = &self.log {
            let taken = claim.verified.then(|| (rec.request_id.clone(), rec.model.clone()));
            if let Err(e) = log.log_feedback(rec).await {
                if let Some((request_id, model)) = taken {
                    // Not logged: its retry takes the verified place (it does not count again).
                    self.offers.unlog(&request_id, &model);
                }
                return Err(e.into());
            }
        }
        let idx = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        self.stats.feedback[idx].fetch_add(1, Ordering::Relaxed);
        Ok(FeedbackAck { known_request: claim.known_request, health, counted: claim.counts, verified: claim.verified, endpoint })
    }

    /// Re-reads the config, loads and validates a new engine, and swaps it in. One reload at a
    /// time; on any failure the current engine keeps serving and the error says why.
    pub async fn reload(&self) -> Result<ReloadReport, RouteError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let t = Instant::now();
        let result = self.load_and_validate().await;
        match result {
            Ok((engine, config)) => {
                let version = engine.version().to_string();
                let models = engine.catalog().models().len();
                self.set_baseline_for(&engine, &config.savings).await;
                let old = self.install(engine);
                let previous = old.map(|e| e.version().to_string()).unwrap_or_default();
                *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                self.stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
                let elapsed = t.elapsed();
                tracing::info!(%version, %previous, models, load_ms = elapsed.as_millis() as u64, "reloaded models");
                Ok(ReloadReport { version, previous, models, elapsed })
            }
            Err(e) => {
                self.stats.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "reload rejected; the current models keep serving");
                Err(e)
            }
        }
    }

    async fn load_and_validate(&self) -> Result<(Arc<Engine>, Config), RouteError> {
        let mut config = self.config().reread().map_err(|e| RouteError::Catalog(format!("config: {e}")))?;
        keep_restart_only_settings(&mut config, &self.config());
        let cfg = config.clone();
        let previous = self.engine();
        let engine = tokio::task::spawn_blocking(move || Engine::load_after(cfg.engine_config(), previous.as_deref()))
            .await
            .map_err(|e| RouteError::Worker(e.to_string()))??;
        let engine = Arc::new(engine);
        validate_engine(&engine).await?;
        Ok((engine, config))
    }

    /// Drains the decision log (blocking until it is written).
    pub fn close(&self) {
        if let Some(log) = &self.log {
            log.close();
        }
    }
}

/// Puts back the settings a reload cannot change (the listening socket, the open decision log
/// and the health trackers were set up at start), warning when the file changed them, so that
/// the new engine works with the running log (for example, keeps embeddings instead of prompt
/// text exactly when the log stores them).
fn keep_restart_only_settings(new: &mut Config, running: &Config) {
    if new.server.listen != running.server.listen {
        tracing::warn!("server.listen changed: it takes effect at the next restart");
        new.server.listen = running.server.listen.clone();
    }
    if new.admin != running.admin || new.auth != running.auth || new.tls != running.tls {
        tracing::warn!("[admin], [auth] or [tls] changed: it takes effect at the next restart");
        (new.admin, new.auth, new.tls) = (running.admin.clone(), running.auth.clone(), running.tls.clone());
    }
    if new.decision_log != running.decision_log {
        tracing::warn!("[decision_log] changed: it takes effect at the next restart");
        new.decision_log = running.decision_log.clone();
    }
    if new.health != running.health {
        tracing::warn!("[health] changed: it takes effect at the next restart");
        new.health = running.health.clone();
    }
    if new.sessions != running.sessions {
        tracing::warn!("[sessions] changed: it takes effect at the next restart");
        new.sessions = running.sessions.clone();
    }
}

/// Checks a freshly loaded engine by routing a test prompt under the default profile: the head
/// must produce finite predictions in range for the catalog.
pub async fn validate_engine(engine: &Arc<Engine>) -> Result<(), RouteError> {
    let d = engine.route(RouteQuery::internal("reload-check", RELOAD_TEST_PROMPT)).await.map_err(|e| match e {
        // Constraints of a test prompt emptying the list is a catalog problem, not a crash.
        RouteError::NoEligibleModel(n) => RouteError::Catalog(format!("the test prompt found no eligible model: {n}")),
        other => other,
    })?;
    for s in &d.ranking.scored {
        if let Some(p) = s.prediction {
            if !(p.quality.is_finite() && p.output_tokens.is_finite() && s.cost_usd.is_finite()) {
                let id = &engine.catalog().models()[s.model].id;
                return Err(RouteError::Catalog(format!("the head predicts a non-finite value for {id} on the test prompt")));
            }
        }
    }
    Ok(())
}

/// The log record of a decision; the text or embedding the engine kept for it is moved out
/// (the response does not need them).
fn decision_record(engine: &Engine, d: &mut Decision, baseline: Option<Estimate>) -> DecisionRecord {
    let models = engine.catalog().models();
    let candidates = d
        .ranking
        .chosen
        .iter()
        .map(|&i| {
            let s = &d.ranking.scored[i];
            LoggedCandidate {
                model: models[s.model].id.clone(),
                quality: s.prediction.map_or(0.0, |p| p.quality),
                output_tokens: s.prediction.map_or(0.0, |p| p.output_tokens),
                cost_usd: s.cost_usd,
                utility: s.utility,
                health: s.health.state.as_str(),
            }
        })
        .collect();
    DecisionRecord {
        request_id: d.request_id.clone(),
        ts_ms: now_ms(),
        routing_text: d.routing_text.take(),
        embedding: d.embedding.take(),
        encoder: d.encoder.to_string(),
        router_version: engine.version().to_string(),
        cost_weight: d.cost_weight,
        profile: d.profile.clone(),
        // Taken, not cloned: the response needs only the latency limit (for its explanations).
        constraints: {
            let c = std::mem::take(&mut d.constraints);
            d.constraints.max_latency = c.max_latency;
            c
        },
        tradeoff: match &d.tradeoff {
            Tradeoff::Default => "default".into(),
            Tradeoff::Profile(p) => format!("profile:{p}"),
            Tradeoff::Weight(w) => format!("weight:{w}"),
        },
        input_tokens: d.input_tokens,
        candidates,
        baseline,
        session: d.session.as_ref().map(|s| crate::logs::LoggedSession {
            id: s.key.hex(),
            verdict: s.verdict.as_str(),
            reason: s.reason.as_str(),
        }),
        policy: decision_policy(engine, d),
    }
}

/// The policy record of a decision: propensity, exploration setting, shadow choice.
fn decision_policy(engine: &Engine, d: &Decision) -> DecisionPolicy {
    let c = &d.choice;
    DecisionPolicy {
        propensity: c.propensity,
        explored: c.explored,
        head_id: engine.head().manifest().head_id.clone(),
        exploration: (c.share > 0.0).then(|| format!("{} applied_share={}", engine.explorer().config().describe(), c.share)),
        explore_candidates: c.candidates,
        shadow_head: d.shadow.as_ref().map(|s| s.head_id.clone()),
        shadow_model: d.shadow.as_ref().and_then(|s| s.model.clone()),
        shadow_agrees: d.shadow.as_ref().map(|s| s.agrees),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_report_after_the_log_closed_is_refused_as_closed_not_as_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            Config::load(&std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/pointsman.toml")).unwrap();
        config.decision_log.path = dir.path().join("log.db");
        let service = Service::new(config).unwrap();
        let rec = FeedbackRecord {
            request_id: "r".into(),
            ts_ms: now_ms(),
            model: "m".into(),
            outcome: Outcome::Success,
            latency_ms: None,
            input_tokens: None,
            output_tokens: None,
            cost_usd: None,
            quality: None,
            provider: None,
            ttft_ms: None,
            generation_ms: None,
            verified: false,
            offered: false,
            baseline: None,
        };
        let ack = service.feedback(rec.clone()).await.unwrap();
        assert!(!ack.known_request && !ack.counted && !ack.verified && ack.health.is_none());
        service.close();
        assert!(matches!(service.feedback(rec).await, Err(FeedbackError::LogClosed)));
    }
}
