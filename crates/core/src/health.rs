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
