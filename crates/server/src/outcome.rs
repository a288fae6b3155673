//! What a gateway reports of one attempt: the outcome that feeds the breakers (`health`) and
//! the decision log (`logs`).
use serde::{Deserialize, Serialize};

/// How an attempt ended, as the gateway reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The model answered.
    Success,
    /// No answer in time.
    Timeout,
    /// Rate or quota refusal.
    RateLimited,
    /// Provider failure.
    ServerError,
    /// A content refusal: an answer of quality 0, not an availability failure.
    Refused,
}

impl Outcome {
    /// True for availability failures (they count against health).
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Timeout | Outcome::RateLimited | Outcome::ServerError)
    }

    /// Stable snake_case name (database, metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Timeout => "timeout",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::Refused => "refused",
        }
    }

    /// Parses [`Outcome::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Outcome::Success, Outcome::Timeout, Outcome::RateLimited, Outcome::ServerError, Outcome::Refused]
            .into_iter()
            .find(|o| o.as_str() == s)
    }

    /// Every outcome, for metrics.
    pub const ALL: [Outcome; 5] = [Outcome::Success, Outcome::Timeout, Outcome::RateLimited, Outcome::ServerError, Outcome::Refused];
}
