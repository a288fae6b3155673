//! Live state per endpoint (a model on one provider): its own circuit breaker, and sliding-window
//! quantiles of what its recent traffic measured: end-to-end latency, time to first token and
//! throughput (output tokens per second of generation), with its rate-limited share.
//!
//! Fed by the `Feedback` reports that name the provider (ext_proc's automatic reports always do),
//! here and, through the shared-health stream, from the fleet's other replicas, so every replica
//! orders a model's endpoints on the same figures. A report that names no provider feeds the
//! model's breaker as before ([`super::HealthTracker`]); one that names a provider feeds that
//! endpoint's breaker instead, so one provider's outage moves traffic to the same model on another
//! provider before it moves it to another model (the policy leaves a cooling-down endpoint out
//! while another endpoint of the model is usable, and the model out only when all are cooling).
//!
//! The window is the health window (`health.window_seconds`), cut into [`SLOTS`] sub-windows
//! that rotate: a report lands in the newest, the oldest is dropped as it leaves the window, and
//! the quantiles are read off the live sub-windows merged. Each sub-window keeps one sketch per
//! figure.
//!
//! NOTE: the sketch is `sketches-ddsketch` (DDSketch), not a hand-written histogram: its
//! quantiles are within 1% relative error whatever the range (1 ms to hours, 1 to 10,000 tokens
//! per second) in a bounded number of bins, and two sketches merge exactly, which the rotating
//! sub-windows need. `hdrhistogram` needs a value range fixed up front and `tdigest` merges only
//! approximately; `sketches-ddsketch` is also what `metrics-util` (the Prometheus exporter's)
//! already builds on, so it adds no code to the build.
//!
//! Route reads the published figures without a lock, as it reads the models' breakers: each
//! report republishes its endpoint's breaker view and quantiles, and the breaker's window expiry
//! and cool-down are evaluated at read time. The quantiles are those of the last report's
//! window; an endpoint with no report for a whole window reads as unmeasured again.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use pointsman_core::{
    catalog::Catalog,
    health::{EndpointLive, Percentile, Quantiles},
};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use super::{HealthConfig, ModelHealth, Outcome, View};

/// Sub-windows per window.
pub const SLOTS: u32 = 6;

/// What one report says about one attempt on an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measurement {
    /// Wall time of the attempt, ms.
    pub latency_ms: Option<f64>,
    /// Time to first token, ms (a streamed answer's first event).
    pub ttft_ms: Option<f64>,
    /// Generation time, ms: from the first token to the last.
    pub generation_ms: Option<f64>,
    /// Output tokens of the answer.
    pub output_tokens: Option<u32>,
}

impl Measurement {
    /// Output tokens per second of generation: from the generation time, or the latency less the
    /// time to first token; None without output tokens or a positive generation time.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let tokens = f64::from(self.output_tokens.filter(|&n| n > 0)?);
        let gen = self.generation_ms.or_else(|| Some(self.latency_ms? - self.ttft_ms?))?;
        (gen > 0.0).then(|| tokens / (gen / 1000.0))
    }
}

/// One sub-window.
#[derive(Clone)]
struct Slot {
    start: Instant,
    latency: DDSketch,
    ttft: DDSketch,
    tps: DDSketch,
    attempts: u32,
    rate_limited: u32,
}

impl Slot {
    fn new(start: Instant) -> Self {
        let sketch = || DDSketch::new(SketchConfig::defaults());
        Slot { start, latency: sketch(), ttft: sketch(), tps: sketch(), attempts: 0, rate_limited: 0 }
    }
}

/// The figures of one window, as published.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    rate_limited_rate: f64,
    measured: u32,
    latency: Option<Quantiles>,
    ttft: Option<Quantiles>,
    tps: Option<Quantiles>,
}

fn quantiles(s: &DDSketch, min: u32) -> Option<Quantiles> {
    if (s.count() as u64) < u64::from(min.max(1)) {
        return None;
    }
    let q = |p: Percentile| s.quantile(p.quantile()).ok().flatten().unwrap_or(0.0);
    Some(Quantiles { p50: q(Percentile::P50), p75: q(Percentile::P75), p90: q(Percentile::P90), p99: q(Percentile::P99) })
}

/// One endpoint's breaker and measurement window.
struct EndpointState {
    breaker: ModelHealth,
    slots: VecDeque<Slot>,
}

impl EndpointState {
    fn add(&mut self, now: Instant, window: Duration, outcome: Outcome, m: &Measurement) {
        let slot_len = window / SLOTS;
        while self.slots.front().is_some_and(|s| now.saturating_duration_since(s.start) >= window) {
            self.slots.pop_front();
        }
        if self.slots.back().is_none_or(|s| now.saturating_duration_since(s.start) >= slot_len) {
            self.slots.push_back(Slot::new(now));
        }
        let slot = self.slots.back_mut().expect("a slot was just made. This is a bug.");
        slot.attempts += 1;
        slot.rate_limited += u32::from(outcome == Outcome::RateLimited);
        if outcome == Outcome::Success {
            let ok = |v: &f64| v.is_finite() && *v >= 0.0;
            if let Some(l) = m.latency_ms.filter(ok) {
                slot.latency.add(l);
            }
            if let Some(t) = m.ttft_ms.filter(ok) {
                slot.ttft.add(t);
            }
            if let Some(r) = m.tokens_per_second().filter(ok) {
                slot.tps.add(r);
            }
        }
    }

    fn figures(&self, min: u32) -> Figures {
        let mut merged = self.slots.iter();
        let Some(first) = merged.next() else {
            return Figures { rate_limited_rate: 0.0, measured: 0, latency: None, ttft: None, tps: None };
        };
        let mut all = first.clone();
        for s in merged {
            // Same config everywhere: merging cannot fail.
            let _ = all.latency.merge(&s.latency);
            let _ = all.ttft.merge(&s.ttft);
            let _ = all.tps.merge(&s.tps);
            all.attempts += s.attempts;
            all.rate_limited += s.rate_limited;
        }
        Figures {
            rate_limited_rate: if all.attempts == 0 { 0.0 } else { f64::from(all.rate_limited) / f64::from(all.attempts) },
            measured: all.latency.count() as u32,
            latency: quantiles(&all.latency, min),
            ttft: quantiles(&all.ttft, min),
            tps: quantiles(&all.tps, min),
        }
    }
}

/// One endpoint as Route reads it.
#[derive(Debug)]
struct Published {
    view: View,
    figures: Figures,
    at: Instant,
}

type PublishedMap = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Published>>>;

/// The breakers and measurement windows of every endpoint with a report. Cheap to share; all
/// methods take `&self`.
pub struct EndpointTracker {
    cfg: HealthConfig,
    state: Mutex<HashMap<(String, String), EndpointState>>,
    published: ArcSwap<PublishedMap>,
}

impl std::fmt::Debug for EndpointTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTracker").field("endpoints", &self.published.load().values().map(HashMap::len).sum::<usize>()).finish()
    }
}

impl EndpointTracker {
    /// An empty tracker: every endpoint healthy and unmeasured.
    pub fn new(cfg: HealthConfig) -> Self {
        Self { cfg, state: Mutex::new(HashMap::new()), published: ArcSwap::from_pointee(HashMap::new()) }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.cfg.window_seconds)
    }

    /// Records one attempt of `model` on `provider` and returns the endpoint's state after it.
    /// Callers track catalog endpoints only (the map must not grow with arbitrary names).
    pub fn record(&self, model: &str, provider: &str, outcome: Outcome, m: &Measurement, now: Instant) -> EndpointLive {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let e = state
            .entry((model.to_string(), provider.to_string()))
            .or_insert_with(|| EndpointState { breaker: ModelHealth::default(), slots: VecDeque::new() });
        let name = format!("{model}@{provider}");
        let (view, snap) = e.breaker.record(&self.cfg, &name, outcome, m.latency_ms, now);
        // The breaker keeps its window sorted by moving a late report to the newest time; so does this.
        let at = e.breaker.events.back().map_or(now, |ev| ev.at);
        e.add(at, self.window(), outcome, m);
        let figures = e.figures(self.cfg.min_measured_requests);
        let published = Arc::new(Published { view, figures, at });
        // Writers are serialised by the lock above, so this copy-and-swap loses no update.
        let mut map = PublishedMap::clone(&self.published.load());
        map.entry(Arc::from(model)).or_default().insert(Arc::from(provider), published);
        self.published.store(Arc::new(map));
        live(snap, &figures)
    }

    /// True while no endpoint has a report. Lock-free.
    pub fn is_empty(&self) -> bool {
        self.published.load().is_empty()
    }

    fn read(&self, p: &Published, now: Instant) -> EndpointLive {
        let snap = p.view.snapshot(&self.cfg, now);
        if now.saturating_duration_since(p.at) > self.window() {
            // No report for a whole window: the quantiles have left it.
            return EndpointLive { health: snap, ..EndpointLive::UNMEASURED };
        }
        live(snap, &p.figures)
    }

    /// The state of endpoint `provider` of `model` now (unmeasured and healthy without a report).
    pub fn get(&self, model: &str, provider: &str, now: Instant) -> EndpointLive {
        let map = self.published.load();
        match map.get(model).and_then(|m| m.get(provider)) {
            Some(p) => self.read(p, now),
            None => EndpointLive { health: self.healthy(), ..EndpointLive::UNMEASURED },
        }
    }

    fn healthy(&self) -> pointsman_core::health::Snapshot {
        pointsman_core::health::Snapshot { window_seconds: self.cfg.window_seconds, ..pointsman_core::health::Snapshot::HEALTHY }
    }

    /// Every endpoint of `catalog`, `[model][endpoint]` in catalog order, for routing: lock-free;
    /// an empty list when no endpoint has a report (the policy reads that as every endpoint
    /// healthy and unmeasured), and an empty row for a model none of whose endpoints has one.
    pub fn routing(&self, catalog: &Catalog, now: Instant) -> Vec<Vec<EndpointLive>> {
        let map = self.published.load();
        if map.is_empty() {
            return Vec::new();
        }
        catalog
            .models()
            .iter()
            .map(|m| match map.get(m.id.as_str()) {
                None => Vec::new(),
                Some(by_provider) => m
                    .endpoints
                    .iter()
                    .map(|e| match by_provider.get(e.provider.as_str()) {
                        Some(p) => self.read(p, now),
                        None => EndpointLive { health: self.healthy(), ..EndpointLive::UNMEASURED },
                    })
                    .collect(),
            })
            .collect()
    }
}

fn live(health: pointsman_core::health::Snapshot, f: &Figures) -> EndpointLive {
    EndpointLive {
        health,
        rate_limited_rate: f.rate_limited_rate,
        measured_requests: f.measured,
        latency_ms: f.latency,
        ttft_ms: f.ttft,
        tokens_per_second: f.tps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pointsman_core::health::State;

    fn cfg() -> HealthConfig {
        HealthConfig { window_seconds: 60, min_measured_requests: 3, open_after_consecutive_failures: 3, ..HealthConfig::default() }
    }

    fn ok(latency: f64) -> Measurement {
        Measurement { latency_ms: Some(latency), ttft_ms: Some(latency / 4.0), generation_ms: None, output_tokens: Some(100) }
    }

    #[test]
    fn quantiles_come_from_the_window_and_leave_with_it() {
        let t = EndpointTracker::new(cfg());
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // Two reports: too few to measure.
        for i in 0..2 {
            let l = t.record("m", "a", Outcome::Success, &ok(100.0), at(f64::from(i)));
            assert!(l.latency_ms.is_none() && l.measured_requests == i + 1, "{l:?}");
        }
        // 100 reports from 100 ms to 10 s over 50 s, spread over the sub-windows.
        let mut last = EndpointLive::UNMEASURED;
        for i in 1..=100 {
            last = t.record("m", "b", Outcome::Success, &ok(f64::from(i) * 100.0), at(f64::from(i) * 0.5));
        }
        let q = last.latency_ms.unwrap();
        for (got, want) in [(q.p50, 5000.0), (q.p90, 9000.0), (q.p99, 9900.0)] {
            assert!((got - want).abs() <= want * 0.03, "{q:?}");
        }
        // Throughput: 100 tokens over 3/4 of the latency.
        let tps = last.tokens_per_second.unwrap();
        assert!((tps.p50 - 100.0 / (5.0 * 0.75)).abs() < 0.5, "{tps:?}");
        assert_eq!(last.measured_requests, 100);
        // Ten seconds later the first sub-windows (the fastest reports) have left the window.
        let later = t.record("m", "b", Outcome::Success, &ok(9000.0), at(70.0));
        assert!(later.measured_requests < 100 && later.latency_ms.unwrap().p50 > 5500.0, "{later:?}");
        // A whole window without a report: unmeasured again, as seen by Route.
        let cat = Catalog::new(vec![pointsman_core::catalog::CatalogModel {
            id: "m".into(),
            endpoints: ["a", "b", "c"]
                .iter()
                .map(|p| pointsman_core::catalog::CatalogModel::single("m", p, 1.0, 1.0, 1000).endpoints.remove(0))
                .collect(),
        }])
        .unwrap();
        let r = t.routing(&cat, at(71.0));
        assert!(r[0][1].latency_ms.is_some() && r[0][2] == EndpointLive { health: t.healthy(), ..EndpointLive::UNMEASURED });
        assert!(t.routing(&cat, at(200.0))[0][1].latency_ms.is_none());
    }

    #[test]
    fn an_endpoint_has_its_own_breaker_and_rate_limit_share() {
        let t = EndpointTracker::new(cfg());
        let now = Instant::now();
        t.record("m", "a", Outcome::Success, &ok(10.0), now);
        t.record("m", "a", Outcome::RateLimited, &Measurement::default(), now);
        t.record("m", "a", Outcome::ServerError, &Measurement::default(), now);
        let l = t.record("m", "a", Outcome::Timeout, &Measurement::default(), now);
        assert!(matches!(l.health.state, State::CoolingDown { .. }), "{l:?}");
        assert!((l.rate_limited_rate - 0.25).abs() < 1e-12);
        assert_eq!(t.get("m", "b", now).health.state, State::Healthy, "the model's other endpoint is untouched");
    }

    #[test]
    fn throughput_needs_tokens_and_a_generation_time() {
        let m = |l, t, g, n| Measurement { latency_ms: l, ttft_ms: t, generation_ms: g, output_tokens: n };
        assert_eq!(m(None, None, Some(2000.0), Some(100)).tokens_per_second(), Some(50.0));
        assert_eq!(m(Some(3000.0), Some(1000.0), None, Some(100)).tokens_per_second(), Some(50.0));
        assert_eq!(m(Some(3000.0), None, None, Some(100)).tokens_per_second(), None);
        assert_eq!(m(None, None, Some(0.0), Some(100)).tokens_per_second(), None);
        assert_eq!(m(None, None, Some(10.0), Some(0)).tokens_per_second(), None);
    }
}
