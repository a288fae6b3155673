//! A model's live health as the policy reads it: the circuit state and the window's figures.
//! The breakers that produce it live in the server (`pointsman_server::health`); a library user
//! passes what it knows (or nothing: every model healthy).
use std::time::Duration;

/// The circuit state of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum State {
    /// Eligible, ranked normally.
    Healthy,
    /// Eligible, ranked behind healthy models.
    Degraded,
    /// Left out until the cool-down ends.
    CoolingDown {
        /// Time left.
        remaining: Duration,
    },
    /// Eligible on trial after a cool-down.
    Probing,
}

impl State {
    /// Stable snake_case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::CoolingDown { .. } => "cooling_down",
            State::Probing => "probing",
        }
    }
}

/// One model's health as seen now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// Circuit state.
    pub state: State,
    /// Attempts in the window.
    pub window_requests: u32,
    /// Failed share of them.
    pub error_rate: f64,
    /// Median latency of the window's successes, ms (0 when none).
    pub p50_latency_ms: f64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// The window these figures cover, seconds.
    pub window_seconds: u64,
}

impl Snapshot {
    /// A model nobody reported on.
    pub const HEALTHY: Snapshot = Snapshot {
        state: State::Healthy,
        window_requests: 0,
        error_rate: 0.0,
        p50_latency_ms: 0.0,
        consecutive_failures: 0,
        window_seconds: 0,
    };

    /// The state in words, with its numbers (for explanations and logs).
    pub fn detail(&self) -> String {
        let window_seconds = self.window_seconds;
        let rate = format!(
            "{} of the last {} attempts failed in {window_seconds} s ({:.0}%), {} in a row",
            (self.error_rate * f64::from(self.window_requests)).round(),
            self.window_requests,
            self.error_rate * 100.0,
            self.consecutive_failures
        );
        match self.state {
            State::Healthy => format!("healthy: {rate}"),
            State::Degraded => format!("degraded, ranked behind healthy models: {rate}"),
            State::CoolingDown { remaining } => {
                format!("cooling down after repeated failures, tried again in {:.1} s: {rate}", remaining.as_secs_f64())
            }
            State::Probing => format!("probing after a cool-down: the next failure opens the circuit again; {rate}"),
        }
    }
}

/// A percentile of a measured figure (OpenRouter's `p50`, `p75`, `p90`, `p99`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Percentile {
    /// The median.
    #[default]
    P50,
    /// The 75th percentile.
    P75,
    /// The 90th percentile.
    P90,
    /// The 99th percentile.
    P99,
}

impl Percentile {
    /// Every percentile, in order.
    pub const ALL: [Percentile; 4] = [Percentile::P50, Percentile::P75, Percentile::P90, Percentile::P99];

    /// "p50", "p75", "p90" or "p99".
    pub fn as_str(self) -> &'static str {
        match self {
            Percentile::P50 => "p50",
            Percentile::P75 => "p75",
            Percentile::P90 => "p90",
            Percentile::P99 => "p99",
        }
    }

    /// Parses [`Percentile::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The quantile in (0, 1).
    pub fn quantile(self) -> f64 {
        match self {
            Percentile::P50 => 0.5,
            Percentile::P75 => 0.75,
            Percentile::P90 => 0.9,
            Percentile::P99 => 0.99,
        }
    }
}

/// A measured figure at the four percentiles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 75th percentile.
    pub p75: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

impl Quantiles {
    /// The figure at `p`.
    pub fn at(&self, p: Percentile) -> f64 {
        match p {
            Percentile::P50 => self.p50,
            Percentile::P75 => self.p75,
            Percentile::P90 => self.p90,
            Percentile::P99 => self.p99,
        }
    }
}

/// One endpoint's live state: its own breaker and what its recent traffic measured, over the
/// health window. The server's endpoint tracker produces it from `Feedback` reports that name
/// the provider; a library user passes what it measures (or nothing: every endpoint healthy and
/// unmeasured, judged on the catalog's priors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointLive {
    /// The endpoint's breaker (reports naming this provider for this model).
    pub health: Snapshot,
    /// Share of the window's attempts refused for rate or quota (HTTP 429).
    pub rate_limited_rate: f64,
    /// Successful attempts in the window with a reported latency.
    pub measured_requests: u32,
    /// End-to-end latency of the window's successful attempts, ms (None: too few measured).
    pub latency_ms: Option<Quantiles>,
    /// Time to first token, ms (None: too few measured; only streamed answers report it).
    pub ttft_ms: Option<Quantiles>,
    /// Output tokens per second of generation (None: too few measured).
    pub tokens_per_second: Option<Quantiles>,
}

impl EndpointLive {
    /// An endpoint nobody reported on.
    pub const UNMEASURED: EndpointLive = EndpointLive {
        health: Snapshot::HEALTHY,
        rate_limited_rate: 0.0,
        measured_requests: 0,
        latency_ms: None,
        ttft_ms: None,
        tokens_per_second: None,
    };
}
