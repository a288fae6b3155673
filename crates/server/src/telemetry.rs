//! The service's own Prometheus recorder, for what is measured as it happens (today the Route
//! latency histogram). One per [`crate::service::Service`], never installed globally, so several
//! servers can share a process (tests do). Counters kept as atomics elsewhere are copied into
//! the page at scrape time (see `transport::metrics`).
use std::time::Duration;

use metrics::{Histogram, Key, Label, Metadata, Recorder as _};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Route latency, seconds, by result and cache hit.
pub const ROUTE_DURATION: &str = "pointsman_route_duration_seconds";

/// Upper bounds of the Route latency buckets, seconds: 0.1 ms to 1 s.
pub const ROUTE_DURATION_BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0];

/// How often the server folds recorded samples into buckets ([`Telemetry::run_upkeep`]).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Metadata for registrations (the exporter ignores it).
pub(crate) static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The recorder and the handles the hot path uses.
#[derive(Debug)]
pub struct Telemetry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// `result="ok"` with `cache_hit="false"` and `"true"`, registered once.
    route_ok: [Histogram; 2],
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

fn route_key(result: &'static str, cache_hit: bool) -> Key {
    Key::from_parts(ROUTE_DURATION, vec![Label::new("result", result), Label::new("cache_hit", if cache_hit { "true" } else { "false" })])
}

impl Telemetry {
    /// A fresh recorder with the Route histogram's buckets.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(ROUTE_DURATION.into()), &ROUTE_DURATION_BUCKETS)
            .expect("the bucket list is not empty. This is a bug.")
            .build_recorder();
        recorder.describe_histogram(
            ROUTE_DURATION.into(),
            Some(metrics::Unit::Seconds),
            "Route latency in the service core (health, encoder or cache, policy, log), by result and prediction-cache hit; \
             refused requests count as cache_hit=\"false\"."
                .into(),
        );
        let route_ok = [false, true].map(|hit| recorder.register_histogram(&route_key("ok", hit), &METADATA));
        let handle = recorder.handle();
        Self { recorder, handle, route_ok }
    }

    /// Records one Route call: `result` is "ok" or the error label.
    pub fn observe_route(&self, result: &'static str, cache_hit: bool, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if result == "ok" {
            self.route_ok[usize::from(cache_hit)].record(secs);
        } else {
            // Errors are rare: registering (a map lookup) each time is fine.
            self.recorder.register_histogram(&route_key(result, cache_hit), &METADATA).record(secs);
        }
    }

    /// Folds the samples recorded since the last call into the histograms' buckets. Until then
    /// each sample is kept (8 bytes each): without a scrape, nothing else drains them, so the
    /// server calls this every [`UPKEEP_INTERVAL`].
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The recorded series in Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
