//! Sessions this replica keeps: for each session (a hash of what the request named, see
//! `session::SessionKey`) where its last turn went (`session::Sticky`), for an idle TTL, in a
//! bounded cache (moka: `max_sessions` entries, each insert restarting its time to live). The
//! rule that keeps or moves a session is the core's (`session::apply`); this module is its state
//! and its counters. In a fleet (`[health] shared`) every turn is also published to a Redis stream
//! and every replica applies the others' turns to its own cache (`shared`), so a conversation
//! whose turns land on different replicas stays on its endpoint; Redis is never on the Route path.
pub mod shared;

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use serde::{Deserialize, Serialize};

use crate::{
    config_error::{invalid, ConfigError},
    engine::{Decision, Engine},
    logs::now_ms,
    session::{self, SessionKey, SessionRequest, Sticky, Verdict},
};

/// `[sessions]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Keep sessions at all (false: a request's session is accepted and ignored).
    pub enabled: bool,
    /// Idle time after which a session is forgotten, seconds (OpenRouter's sticky sessions: 10 minutes).
    pub ttl_seconds: u64,
    /// Most sessions kept; beyond it the least used go first.
    pub max_sessions: u64,
    /// With `[health] shared`, share sessions with the other replicas through the same Redis.
    pub shared: bool,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self { enabled: true, ttl_seconds: 600, max_sessions: 100_000, shared: true }
    }
}

impl SessionsConfig {
    /// Checks the ranges; the error names the key, the limit and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.ttl_seconds) {
            return Err(invalid("sessions.ttl_seconds", "in 1..=86400", self.ttl_seconds));
        }
        if !(1..=100_000_000).contains(&self.max_sessions) {
            return Err(invalid("sessions.max_sessions", "in 1..=100000000", self.max_sessions));
        }
        Ok(())
    }
}

/// Counters of the sessions, for metrics.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Decisions of a request that named a session, by verdict: new, kept, moved.
    pub new: AtomicU64,
    /// See `new`.
    pub kept: AtomicU64,
    /// See `new`.
    pub moved: AtomicU64,
    /// Turns published to the fleet's stream.
    pub published: AtomicU64,
    /// Other replicas' turns applied here.
    pub applied: AtomicU64,
    /// Turns not shared (the publisher's queue was full).
    pub unshared: AtomicU64,
}

/// The sessions of this replica.
pub struct Sessions {
    config: SessionsConfig,
    cache: moka::sync::Cache<u128, Arc<Sticky>>,
    stats: Arc<SessionStats>,
    shared: Option<shared::SharedSessions>,
}

impl Sessions {
    /// An empty store under `config` (not shared yet: see [`Sessions::share`]).
    pub fn new(config: &SessionsConfig) -> Arc<Self> {
        Arc::new(Self { config: config.clone(), cache: Self::cache(config), stats: Arc::new(SessionStats::default()), shared: None })
    }

    fn cache(config: &SessionsConfig) -> moka::sync::Cache<u128, Arc<Sticky>> {
        moka::sync::Cache::builder()
            .max_capacity(config.max_sessions)
            .time_to_live(std::time::Duration::from_secs(config.ttl_seconds))
            .build()
    }

    /// A store shared with the fleet through Redis at `url` under `key` (`<key>:sessions`).
    /// Fails only on a malformed URL or an unreadable CA file.
    pub fn shared(config: &SessionsConfig, url: &str, ca_file: Option<&std::path::Path>, key: &str) -> Result<Arc<Self>, String> {
        let stats = Arc::new(SessionStats::default());
        let cache = Self::cache(config);
        let link = shared::SharedSessions::start(url, ca_file, key, config.ttl_seconds, cache.clone(), Arc::clone(&stats))?;
        Ok(Arc::new(Self { config: config.clone(), cache, stats, shared: Some(link) }))
    }

    /// The settings.
    pub fn config(&self) -> &SessionsConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Sessions kept (approximate).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// True when no session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the fleet link is connected to Redis (None without one).
    pub fn shared_connected(&self) -> Option<bool> {
        self.shared.as_ref().map(|s| s.connected())
    }

    /// The session's last turn, if it is younger than the TTL.
    pub fn last(&self, key: SessionKey) -> Option<Sticky> {
        let s = self.cache.get(&key.0)?;
        let ttl_ms = i64::try_from(self.config.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        (now_ms() - s.ts_ms <= ttl_ms).then(|| (*s).clone())
    }

    /// Remembers the session's turn here and, in a fleet, publishes it. Never waits.
    pub fn remember(&self, key: SessionKey, sticky: Sticky) {
        if let Some(link) = &self.shared {
            link.publish(key, &sticky);
        }
        self.cache.insert(key.0, Arc::new(sticky));
    }

    /// Applies the request's session to a decision: reorders it when the session stays or
    /// escalates, sets `d.session`, counts the verdict and remembers where this turn goes.
    pub fn decide(&self, engine: &Engine, d: &mut Decision, request: SessionRequest) {
        if !self.config.enabled {
            return;
        }
        let previous = self.last(request.key);
        let routing = &engine.config().routing;
        let outcome = session::apply(
            engine.catalog(),
            &mut d.ranking,
            request,
            previous,
            d.input_tokens,
            d.cost_weight,
            routing.cost_scale_usd,
            &d.constraints,
        );
        let counter = match outcome.verdict {
            Verdict::New => &self.stats.new,
            Verdict::Kept => &self.stats.kept,
            Verdict::Moved => &self.stats.moved,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(session = %request.key.hex(), verdict = outcome.verdict.as_str(), reason = outcome.reason.as_str(), "session");
        let next = session::next_sticky(engine.catalog(), &d.ranking, d.input_tokens, now_ms(), outcome.turn);
        self.remember(request.key, next);
        d.session = Some(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(ts_ms: i64) -> Sticky {
        Sticky { model: "m".into(), provider: "p".into(), prefix_tokens: 10, ts_ms, turns: 1 }
    }

    #[test]
    fn a_turn_older_than_the_ttl_is_forgotten() {
        let s = Sessions::new(&SessionsConfig { ttl_seconds: 60, ..Default::default() });
        let k = SessionKey::of_id("a");
        assert_eq!(s.last(k), None);
        s.remember(k, sticky(now_ms()));
        assert_eq!(s.last(k).map(|t| t.model), Some("m".into()));
        // A turn another replica routed 61 s ago is past the idle TTL.
        s.remember(k, sticky(now_ms() - 61_000));
        assert_eq!(s.last(k), None);
    }

    #[test]
    fn the_config_is_checked() {
        assert!(SessionsConfig::default().validate().is_ok());
        let e = SessionsConfig { ttl_seconds: 0, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("sessions.ttl_seconds") && e.contains("1..=86400") && e.contains('0'), "{e}");
        let e = SessionsConfig { max_sessions: 0, ..Default::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("sessions.max_sessions"), "{e}");
    }
}
