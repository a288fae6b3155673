//! Live model health: a circuit breaker per model, fed by the outcomes gateways report with
//! `Feedback`.
//!
//! Per model, the attempts of the last `window_seconds` are kept (bounded). From them:
//! - **Healthy**: fewer than `min_requests` attempts, or an error rate under `degraded_error_rate`.
//! - **Degraded**: error rate at or above `degraded_error_rate`. Still eligible, but ranked
//!   behind every healthy model.
//! - **Cooling down** (circuit open): `open_after_consecutive_failures` failures in a row, or an
//!   error rate at or above `open_error_rate` over at least `min_requests` attempts. Left out of
//!   routing for `cool_down_seconds`; each time it opens again straight after a probe the
//!   cool-down doubles, up to `max_cool_down_seconds`.
//! - **Probing** (half-open): the cool-down has ended. The model is eligible again; the next
//!   success closes the circuit (and forgets the window's failures), the next failure opens it again.
//!
//! Failures are timeouts, rate limits and server errors. A refusal is an answer (its quality is
//! 0 for learning), not an availability failure. Health is in memory: a restart starts every
//! model healthy, which is the safe default for a breaker. It is per replica unless
//! `shared` names a Redis, through which a fleet's replicas feed each other's breakers
//! ([`shared`]).
pub use crate::outcome::Outcome;
pub use pointsman_core::health::{EndpointLive, Percentile, Quantiles, Snapshot, State};

pub mod endpoints;
pub mod offers;
pub mod shared;
pub(crate) mod stream;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// `[health]`: thresholds of the circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Sliding window, seconds.
    pub window_seconds: u64,
    /// Attempts in the window before an error rate counts.
    pub min_requests: u32,
    /// Error rate from which a model is ranked behind healthy ones.
    pub degraded_error_rate: f64,
    /// Error rate from which the circuit opens.
    pub open_error_rate: f64,
    /// Failures in a row that open the circuit whatever the rate (0 disables).
    pub open_after_consecutive_failures: u32,
    /// First cool-down, seconds.
    pub cool_down_seconds: f64,
    /// Longest cool-down after repeated failed probes, seconds.
    pub max_cool_down_seconds: f64,
    /// Let every report for a catalog model move its breaker, including reports for request
    /// ids no replica decided and models not offered for the request (still once per request
    /// id and model). Off by default, so that a client cannot take a model out of routing with
    /// made-up reports; on for replicas without shared state whose gateway reports to any of them.
    pub count_unknown_requests: bool,
    /// Request ids whose offered models are remembered (for an hour) to verify reports: this
    /// replica's decisions and, with `shared`, the fleet's. Reports on an id that has left are
    /// unverified.
    pub recent_requests: u64,
    /// A Redis URL (`redis://host:6379/0`) through which replicas share the reports that feed
    /// their breakers. Unset: each replica's own.
    pub shared: Option<String>,
    /// PEM CA certificates that verify the Redis server of a `rediss://` (TLS) `shared` URL.
    /// Unset: the system's roots.
    pub shared_ca_file: Option<std::path::PathBuf>,
    /// Prefix of the Redis keys, so that several fleets can share one Redis.
    pub shared_key: String,
    /// Successful attempts with a reported latency an endpoint needs in the window before its
    /// measured quantiles are used (ordering, `max_latency_ms`, the predicted latency); fewer:
    /// the catalog's priors.
    pub min_measured_requests: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window_seconds: 60,
            min_requests: 10,
            degraded_error_rate: 0.2,
            open_error_rate: 0.5,
            open_after_consecutive_failures: 5,
            cool_down_seconds: 30.0,
            max_cool_down_seconds: 600.0,
            count_unknown_requests: false,
            recent_requests: 100_000,
            shared: None,
            shared_ca_file: None,
            shared_key: "pointsman".into(),
            min_measured_requests: 5,
        }
    }
}

impl HealthConfig {
    /// Checks the ranges; the error names the key, the limit and the value.
    pub fn validate(&self) -> Result<(), crate::config_error::ConfigError> {
        let bad = |k: &str, l: &str, v: String| Err(crate::config_error::invalid(&format!("health.{k}"), l, v));
        if self.window_seconds == 0 || self.window_seconds > 86_400 {
            return bad("window_seconds", "in 1..=86400", self.window_seconds.to_string());
        }
        if self.min_requests == 0 {
            return bad("min_requests", ">= 1", "0".into());
        }
        for (k, v) in [("degraded_error_rate", self.degraded_error_rate), ("open_error_rate", self.open_error_rate)] {
            if !(v > 0.0 && v <= 1.0) {
                return bad(k, "in (0, 1]", v.to_string());
            }
        }
        if self.open_error_rate < self.degraded_error_rate {
            return bad(
                "open_error_rate",
                &format!(">= health.degraded_error_rate ({})", self.degraded_error_rate),
                self.open_error_rate.to_string(),
            );
        }
        if !(self.cool_down_seconds.is_finite() && self.cool_down_seconds > 0.0) {
            return bad("cool_down_seconds", "a finite number > 0", self.cool_down_seconds.to_string());
        }
        if !(self.max_cool_down_seconds.is_finite() && self.max_cool_down_seconds >= self.cool_down_seconds) {
            return bad(
                "max_cool_down_seconds",
                &format!(">= health.cool_down_seconds ({})", self.cool_down_seconds),
                self.max_cool_down_seconds.to_string(),
            );
        }
        if !(1..=100_000).contains(&self.min_measured_requests) {
            return bad("min_measured_requests", "in 1..=100000", self.min_measured_requests.to_string());
        }
        if !(1_000..=10_000_000).contains(&self.recent_requests) {
            return bad("recent_requests", "in 1000..=10000000", self.recent_requests.to_string());
        }
        if let Some(url) = &self.shared {
            let shown = crate::redact::redact(url);
            if !shared::is_url(url) {
                return bad("shared", "a redis:// or rediss:// (TLS) URL", format!("{shown:?}"));
            }
            if let Err(e) = redis::Client::open(url.as_str()) {
                return bad("shared", &format!("a valid Redis URL ({e})"), format!("{shown:?}"));
            }
        }
        // Without `shared` (it may come from --health-shared or the environment later), the CA
        // file waits unused; with a plaintext URL it is a mistake.
        if let Some(ca) = &self.shared_ca_file {
            if let Some(url) = self.shared.as_deref().filter(|u| !u.starts_with("rediss://")) {
                let shown = crate::redact::redact(url);
                return bad("shared_ca_file", "set only with a rediss:// (TLS) health.shared URL", format!("health.shared = {shown:?}"));
            }
            if let Err(e) = std::fs::metadata(ca) {
                return bad("shared_ca_file", "a readable PEM file", format!("{:?} ({e})", ca.display().to_string()));
            }
        }
        if self.shared_key.is_empty() || self.shared_key.len() > 64 || self.shared_key.chars().any(|c| c.is_whitespace()) {
            return bad("shared_key", "1 to 64 characters without spaces", format!("{:?}", self.shared_key));
        }
        Ok(())
    }
}

/// Most attempts kept per model (the window is also bounded by time).
const MAX_EVENTS: usize = 4096;

#[derive(Debug)]
struct Event {
    at: Instant,
    failed: bool,
    latency_ms: Option<f64>,
}

/// One attempt as Route sees it: when, and how many failures up to and including it.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    failures_through: u32,
}

/// One model's breaker as of its last report, published for lock-free reads. Everything that
/// depends on the time of the read (window expiry, cool-down remaining, probing once it ends) is
/// evaluated from it at read time.
#[derive(Debug)]
struct View {
    /// The window's attempts, oldest first (times never decrease).
    marks: Box<[Mark]>,
    consecutive_failures: u32,
    open: Option<(Instant, Duration)>,
}

impl View {
    /// The model's health at `now`, without the latency median (0).
    fn snapshot(&self, cfg: &HealthConfig, now: Instant) -> Snapshot {
        let window = Duration::from_secs(cfg.window_seconds);
        // Marks are in time order, so the expired ones are a prefix.
        let first = self.marks.partition_point(|m| now.saturating_duration_since(m.at) > window);
        let n = (self.marks.len() - first) as u32;
        let failures_before = first.checked_sub(1).map_or(0, |i| self.marks[i].failures_through);
        let failed = self.marks.last().map_or(0, |m| m.failures_through) - failures_before;
        let error_rate = if n == 0 { 0.0 } else { f64::from(failed) / f64::from(n) };
        let state = match self.open {
            Some((at, d)) if now.saturating_duration_since(at) < d => {
                State::CoolingDown { remaining: d - now.saturating_duration_since(at) }
            }
            Some(_) => State::Probing,
            None if n >= cfg.min_requests && error_rate >= cfg.degraded_error_rate => State::Degraded,
            None => State::Healthy,
        };
        Snapshot {
            state,
            window_requests: n,
            error_rate,
            p50_latency_ms: 0.0,
            consecutive_failures: self.consecutive_failures,
            window_seconds: cfg.window_seconds,
        }
    }
}

#[derive(Debug, Default)]
struct ModelHealth {
    /// Attempts in the window (with latencies, for the median); times never decrease.
    events: VecDeque<Event>,
    consecutive_failures: u32,
    /// When the circuit opened and how long it stays open.
    open: Option<(Instant, Duration)>,
    /// The last cool-down, for the doubling after a failed probe.
    last_cool_down: Option<Duration>,
}

impl ModelHealth {
    fn prune(&mut self, now: Instant, window: Duration) {
        while self.events.front().is_some_and(|e| now.saturating_duration_since(e.at) > window) {
            self.events.pop_front();
        }
    }

    fn probing(&self, now: Instant) -> bool {
        self.open.is_some_and(|(at, d)| now.saturating_duration_since(at) >= d)
    }

    /// The read-side copy of this model's breaker.
    fn view(&self) -> View {
        let mut failures = 0u32;
        let marks = self
            .events
            .iter()
            .map(|e| {
                failures += u32::from(e.failed);
                Mark { at: e.at, failures_through: failures }
            })
            .collect();
        View { marks, consecutive_failures: self.consecutive_failures, open: self.open }
    }

    /// Records one attempt (of the breaker named `name` in the log) and returns the view to
    /// publish and the health after it, with the latency median.
    fn record(&mut self, cfg: &HealthConfig, name: &str, outcome: Outcome, latency_ms: Option<f64>, now: Instant) -> (View, Snapshot) {
        // NOTE: reports racing for the lock may arrive a few microseconds out of order; the
        // later time is kept so the window stays sorted (Route counts it by binary search).
        let now = self.events.back().map_or(now, |e| e.at.max(now));
        if let Some(o) = self.step(cfg, outcome, latency_ms, now) {
            tracing::warn!(
                model = name,
                cool_down_s = o.cool_down.as_secs_f64(),
                error_rate = o.error_rate,
                consecutive_failures = o.consecutive_failures,
                "circuit opened: left out of routing"
            );
        }
        let view = self.view();
        let snap = Snapshot { p50_latency_ms: self.p50_latency_ms(cfg, now), ..view.snapshot(cfg, now) };
        (view, snap)
    }

    /// The breaker's transition for one attempt at `now` (not before the last one's time): the
    /// window, the failures in a row, the circuit; returns the opening when it opened.
    fn step(&mut self, cfg: &HealthConfig, outcome: Outcome, latency_ms: Option<f64>, now: Instant) -> Option<Opened> {
        self.prune(now, Duration::from_secs(cfg.window_seconds));
        let failed = outcome.is_failure();
        let was_probing = self.probing(now);
        if failed {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
        }
        if was_probing && !failed {
            // The probe worked: close the circuit and forget the failures that opened it.
            self.open = None;
            self.last_cool_down = None;
            self.events.clear();
        }
        self.events.push_back(Event { at: now, failed, latency_ms });
        if self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
        let still_open = self.open.is_some_and(|(at, d)| now.saturating_duration_since(at) < d);
        if !failed || still_open {
            return None;
        }
        // Pruned at `now`, every event left is in the window.
        let n = self.events.len() as u32;
        let error_rate = f64::from(self.events.iter().filter(|e| e.failed).count() as u32) / f64::from(n.max(1));
        let by_rate = n >= cfg.min_requests && error_rate >= cfg.open_error_rate;
        let by_streak = cfg.open_after_consecutive_failures > 0 && self.consecutive_failures >= cfg.open_after_consecutive_failures;
        if !(was_probing || by_rate || by_streak) {
            return None;
        }
        let base = Duration::from_secs_f64(cfg.cool_down_seconds);
        let d = match (was_probing, self.last_cool_down) {
            (true, Some(last)) => (last * 2).min(Duration::from_secs_f64(cfg.max_cool_down_seconds)),
            _ => base,
        };
        self.open = Some((now, d));
        self.last_cool_down = Some(d);
        Some(Opened { cool_down: d, error_rate, consecutive_failures: self.consecutive_failures })
    }

    /// Median latency of the window's successes at `now`, ms (0 when none).
    fn p50_latency_ms(&self, cfg: &HealthConfig, now: Instant) -> f64 {
        let window = Duration::from_secs(cfg.window_seconds);
        let mut latencies: Vec<f64> = self
            .events
            .iter()
            .filter(|e| !e.failed && now.saturating_duration_since(e.at) <= window)
            .filter_map(|e| e.latency_ms)
            .collect();
        latencies.sort_by(f64::total_cmp);
        latencies.get(latencies.len() / 2).copied().unwrap_or(0.0)
    }
}

/// A circuit opening, as [`ModelHealth::step`] and [`Replay::record`] return it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Opened {
    /// Its cool-down.
    pub cool_down: Duration,
    /// The window's error rate then.
    pub error_rate: f64,
    /// Failures in a row then.
    pub consecutive_failures: u32,
}

/// The breakers of models numbered `0..`, fed attempts in time order by one thread: the same
/// transitions as [`HealthTracker`] without what serving needs (published views, latency
/// medians, a lock), for replaying a log (`report`).
#[derive(Debug)]
pub struct Replay {
    cfg: HealthConfig,
    models: Vec<ModelHealth>,
}

impl Replay {
    /// Every model healthy.
    pub fn new(cfg: HealthConfig) -> Self {
        Self { cfg, models: Vec::new() }
    }

    /// Records one attempt of model number `model` at `now` (attempts come in time order);
    /// returns the opening when its circuit opened.
    pub fn record(&mut self, model: usize, outcome: Outcome, now: Instant) -> Option<Opened> {
        if self.models.len() <= model {
            self.models.resize_with(model + 1, ModelHealth::default);
        }
        let h = &mut self.models[model];
        let now = h.events.back().map_or(now, |e| e.at.max(now));
        h.step(&self.cfg, outcome, None, now)
    }
}

/// What Route reads: the published view of every model with a report.
type Published = HashMap<Arc<str>, Arc<View>>;

/// The breakers of every tracked model. Cheap to share; all methods take `&self`.
///
/// Reports update the breakers under a mutex and publish each changed model's [`View`]; Route
/// reads the published views without a lock ([`HealthTracker::routing_snapshots`]). The median
/// latency, which routing does not use, is computed only by [`HealthTracker::snapshots`]
/// (ListModels, metrics) and [`HealthTracker::record`] (the Feedback answer).
#[derive(Debug)]
pub struct HealthTracker {
    cfg: HealthConfig,
    models: Mutex<HashMap<String, ModelHealth>>,
    published: ArcSwap<Published>,
}

impl HealthTracker {
    /// An empty tracker: every model healthy.
    pub fn new(cfg: HealthConfig) -> Self {
        Self { cfg, models: Mutex::new(HashMap::new()), published: ArcSwap::from_pointee(HashMap::new()) }
    }

    /// The thresholds.
    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    /// Records one attempt of `model` and returns its health after it. Callers track catalog
    /// models only (the map must not grow with arbitrary names).
    pub fn record(&self, model: &str, outcome: Outcome, latency_ms: Option<f64>, now: Instant) -> Snapshot {
        let cfg = &self.cfg;
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let h = models.entry(model.to_string()).or_default();
        let (view, snap) = h.record(cfg, model, outcome, latency_ms, now);
        // Writers are serialised by the lock above, so this copy-and-swap loses no update.
        let mut published = Published::clone(&self.published.load());
        published.insert(Arc::from(model), Arc::new(view));
        self.published.store(Arc::new(published));
        snap
    }

    /// True while no model has a report (every model is healthy). Lock-free.
    pub fn is_empty(&self) -> bool {
        self.published.load().is_empty()
    }

    /// The health of `model` now, with its latency median.
    pub fn snapshot(&self, model: &str, now: Instant) -> Snapshot {
        self.snapshots([model], now).pop().unwrap_or_else(|| self.healthy())
    }

    fn healthy(&self) -> Snapshot {
        Snapshot { window_seconds: self.cfg.window_seconds, ..Snapshot::HEALTHY }
    }

    /// The health of each of `models`, in order, with latency medians (for display: ListModels,
    /// metrics). Takes the writers' lock.
    pub fn snapshots<'a>(&self, models: impl IntoIterator<Item = &'a str>, now: Instant) -> Vec<Snapshot> {
        let map = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models
            .into_iter()
            .map(|m| {
                map.get(m).map_or(self.healthy(), |h| Snapshot {
                    p50_latency_ms: h.p50_latency_ms(&self.cfg, now),
                    ..h.view().snapshot(&self.cfg, now)
                })
            })
            .collect()
    }

    /// The health of each of `models`, in order, for routing: lock-free, from the views the
    /// last reports published, with `p50_latency_ms` left at 0. An empty list when no model has
    /// a report (the policy reads that as every model healthy).
    pub fn routing_snapshots<'a>(&self, models: impl IntoIterator<Item = &'a str>, now: Instant) -> Vec<Snapshot> {
        let published = self.published.load();
        if published.is_empty() {
            return Vec::new();
        }
        models.into_iter().map(|m| published.get(m).map_or(self.healthy(), |v| v.snapshot(&self.cfg, now))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            window_seconds: 60,
            min_requests: 4,
            degraded_error_rate: 0.25,
            open_error_rate: 0.6,
            open_after_consecutive_failures: 3,
            cool_down_seconds: 10.0,
            max_cool_down_seconds: 25.0,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn a_redis_ca_file_needs_a_tls_url_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let with = |url: &str, ca: &std::path::Path| HealthConfig { shared: Some(url.into()), shared_ca_file: Some(ca.into()), ..cfg() };
        assert!(with("rediss://127.0.0.1:6380/0", &ca).validate().is_ok());
        let err = with("redis://:secret@127.0.0.1:6379/0", &ca).validate().unwrap_err().to_string();
        assert!(err.contains("health.shared_ca_file") && err.contains("rediss://") && !err.contains("secret"), "{err}");
        let err = with("rediss://127.0.0.1:6380/0", &dir.path().join("missing.pem")).validate().unwrap_err().to_string();
        assert!(err.contains("health.shared_ca_file") && err.contains("missing.pem"), "{err}");
        // The URL may come later, from --health-shared or the environment.
        assert!(HealthConfig { shared_ca_file: Some(ca), ..cfg() }.validate().is_ok());
    }

    #[test]
    fn a_failing_model_degrades_opens_cools_down_probes_and_recovers() {
        let t = HealthTracker::new(cfg());
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        for i in 0..3 {
            assert_eq!(t.record("m", Outcome::Success, Some(100.0), at(f64::from(i))).state, State::Healthy);
        }
        // 1 failure in 4: degraded (25%), not open.
        let s = t.record("m", Outcome::Timeout, None, at(3.0));
        assert_eq!(s.state, State::Degraded);
        assert_eq!(s.window_requests, 4);
        assert!((s.error_rate - 0.25).abs() < 1e-12);
        assert_eq!(s.p50_latency_ms, 100.0);
        // A refusal is an answer, not a failure: the streak resets.
        assert_eq!(t.record("m", Outcome::Refused, None, at(3.5)).consecutive_failures, 0);
        t.record("m", Outcome::ServerError, None, at(4.0));
        t.record("m", Outcome::RateLimited, None, at(4.5));
        let s = t.record("m", Outcome::Timeout, None, at(5.0));
        assert!(matches!(s.state, State::CoolingDown { .. }), "3 in a row opens the circuit: {s:?}");
        assert!(
            matches!(t.snapshot("m", at(14.0)).state, State::CoolingDown { remaining } if (remaining.as_secs_f64() - 1.0).abs() < 1e-6)
        );
        assert_eq!(t.snapshot("m", at(15.0)).state, State::Probing);
        // A failed probe reopens for twice as long, capped at the maximum.
        let s = t.record("m", Outcome::Timeout, None, at(15.0));
        assert!(matches!(s.state, State::CoolingDown { remaining } if remaining == Duration::from_secs(20)), "{s:?}");
        assert_eq!(t.snapshot("m", at(35.0)).state, State::Probing);
        let s = t.record("m", Outcome::Timeout, None, at(35.0));
        assert!(matches!(s.state, State::CoolingDown { remaining } if remaining == Duration::from_secs(25)), "{s:?}");
        // A successful probe closes the circuit and forgets the failures.
        let s = t.record("m", Outcome::Success, Some(80.0), at(60.0));
        assert_eq!(s.state, State::Healthy);
        assert_eq!(s.window_requests, 1);
        assert_eq!(s.error_rate, 0.0);
    }

    #[test]
    fn error_rate_opens_the_circuit_and_the_window_forgets_old_failures() {
        let c = HealthConfig { open_after_consecutive_failures: 0, ..cfg() };
        let t = HealthTracker::new(c);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Alternate failure/success: never 3 in a row, but the rate reaches 60% at the 5th.
        let outcomes = [Outcome::Timeout, Outcome::Success, Outcome::Timeout, Outcome::Success, Outcome::Timeout];
        let mut last = t.snapshot("m", t0);
        for (i, o) in outcomes.into_iter().enumerate() {
            last = t.record("m", o, Some(10.0), at(i as u64));
        }
        assert!(matches!(last.state, State::CoolingDown { .. }), "{last:?}");
        // Other models are untouched.
        assert_eq!(t.snapshot("other", at(5)).state, State::Healthy);
        // Old events leave the window.
        let s = t.snapshot("m", at(200));
        assert_eq!(s.window_requests, 0);
        assert_eq!(s.state, State::Probing);
    }

    /// The window as the tracker computed it before reads were lock-free: a scan of the events.
    fn scanned(h: &ModelHealth, cfg: &HealthConfig, now: Instant) -> Snapshot {
        let window = Duration::from_secs(cfg.window_seconds);
        let recent: Vec<&Event> = h.events.iter().filter(|e| now.duration_since(e.at) <= window).collect();
        let n = recent.len() as u32;
        let failed = recent.iter().filter(|e| e.failed).count() as u32;
        let error_rate = if n == 0 { 0.0 } else { f64::from(failed) / f64::from(n) };
        let state = match h.open {
            Some((at, d)) if now.duration_since(at) < d => State::CoolingDown { remaining: d - now.duration_since(at) },
            Some(_) => State::Probing,
            None if n >= cfg.min_requests && error_rate >= cfg.degraded_error_rate => State::Degraded,
            None => State::Healthy,
        };
        Snapshot {
            state,
            window_requests: n,
            error_rate,
            p50_latency_ms: 0.0,
            consecutive_failures: h.consecutive_failures,
            window_seconds: cfg.window_seconds,
        }
    }

    #[test]
    fn lock_free_reads_match_a_scan_of_the_window_at_any_time() {
        let c = HealthConfig { window_seconds: 20, ..cfg() };
        let t = HealthTracker::new(c.clone());
        let t0 = Instant::now();
        assert!(t.is_empty() && t.routing_snapshots(["a"], t0).is_empty(), "no report: an empty list (all healthy)");
        let models = ["a", "b", "c", "never-reported"];
        let mut seen = std::collections::BTreeSet::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..600u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let model = models[(x % 3) as usize];
            // Failures often enough to open circuits; gaps long enough for windows and cool-downs to end.
            let outcome = Outcome::ALL[((x >> 8) % 5) as usize];
            let at = t0 + Duration::from_millis(i * 400 + (x >> 20) % 400);
            t.record(model, outcome, Some(((x >> 30) % 1000) as f64), at);
            for dt in [0, 999, 9_999, 10_000, 20_000, 20_001, 65_000] {
                let now = at + Duration::from_millis(dt);
                let fast = t.routing_snapshots(models, now);
                let map = t.models.lock().unwrap();
                for (m, f) in models.iter().zip(&fast) {
                    let want = map.get(*m).map_or(t.healthy(), |h| scanned(h, &c, now));
                    assert_eq!(*f, want, "{m} at +{dt} ms after report {i}");
                    seen.insert(f.state.as_str());
                }
            }
        }
        assert_eq!(seen.len(), 4, "every state was exercised: {seen:?}");
    }

    #[test]
    fn config_ranges_are_checked() {
        assert!(HealthConfig::default().validate().is_ok());
        let key = |c: HealthConfig| match c.validate().unwrap_err() {
            crate::config_error::ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        };
        assert_eq!(key(HealthConfig { open_error_rate: 0.1, ..HealthConfig::default() }), "health.open_error_rate");
        assert_eq!(key(HealthConfig { cool_down_seconds: -1.0, ..HealthConfig::default() }), "health.cool_down_seconds");
    }
}
