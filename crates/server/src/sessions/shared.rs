//! Sessions shared by a fleet through Redis, beside the shared health (same URL, same key
//! prefix): each turn a replica routes for a session is appended to the stream
//! `<key>:sessions` (trimmed to about `MAX_STREAM` entries) by a publisher task, and every
//! replica tails that stream (`XREAD BLOCK`) and puts the other replicas' turns into its own
//! session cache, the newer turn winning. A conversation whose next turn lands on another replica
//! (typically seconds later, while the stream's delay is milliseconds) finds its session there.
//! Redis is never on the Route path: when it is unreachable each replica keeps its own sessions
//! and publishes what it could not, younger than the TTL, when Redis is back. A replica that
//! starts reads the last TTL's worth of turns. Entries carry the session's hash, never its id.
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use redis::aio::MultiplexedConnection;
use tokio::{sync::mpsc, task::JoinHandle};

use super::SessionStats;
use crate::{
    health::{shared::client, stream},
    logs::now_ms,
    redact::redact,
    session::{SessionKey, Sticky},
};

/// Stream entries kept (approximately; older ones are trimmed by XADD).
const MAX_STREAM: usize = 200_000;
/// Turns waiting for the publisher; beyond this they are not shared and counted.
const QUEUE: usize = 16_384;
/// Turns kept while Redis is unreachable.
const MAX_BACKLOG: usize = 50_000;
/// Between reconnection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// How long one stream read blocks in Redis.
const BLOCK_MS: u64 = 500;
/// Turns sent in one pipeline.
const CHUNK: usize = 512;

/// The replica's link to the fleet's sessions. Dropping it stops its tasks.
pub struct SharedSessions {
    tx: mpsc::Sender<(SessionKey, Sticky)>,
    stats: Arc<SessionStats>,
    up: Arc<[AtomicBool; 2]>,
    tasks: Vec<JoinHandle<()>>,
}

impl SharedSessions {
    /// Starts the publisher and the reader on the current Tokio runtime; other replicas' turns go
    /// into `cache`. Fails only on a malformed URL or an unreadable CA file.
    pub fn start(
        url: &str,
        ca_file: Option<&std::path::Path>,
        key: &str,
        ttl_seconds: u64,
        cache: moka::sync::Cache<u128, Arc<Sticky>>,
        stats: Arc<SessionStats>,
    ) -> Result<Self, String> {
        let client = client(url, ca_file)?;
        let stream_key = format!("{key}:sessions");
        let replica = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(QUEUE);
        let up: Arc<[AtomicBool; 2]> = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let ttl_ms = i64::try_from(ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        let shown = redact(url);
        let link = Link { client, stream_key, replica, ttl_ms, stats: Arc::clone(&stats), up: Arc::clone(&up), url: shown };
        let publisher = tokio::spawn(publish(link.clone(), rx));
        let reader = tokio::spawn(read(link, cache));
        Ok(Self { tx, stats, up, tasks: vec![publisher, reader] })
    }

    /// Shares one turn. Never waits.
    pub fn publish(&self, key: SessionKey, sticky: &Sticky) {
        if self.tx.try_send((key, sticky.clone())).is_err() {
            self.stats.unshared.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Both the publisher and the reader are connected.
    pub fn connected(&self) -> bool {
        self.up.iter().all(|u| u.load(Ordering::Relaxed))
    }
}

impl Drop for SharedSessions {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone)]
struct Link {
    client: redis::Client,
    stream_key: String,
    replica: String,
    ttl_ms: i64,
    stats: Arc<SessionStats>,
    up: Arc<[AtomicBool; 2]>,
    url: String,
}

/// The fields of one turn's entry.
fn fields(replica: &str, key: SessionKey, s: &Sticky) -> [(&'static str, String); 7] {
    [
        ("r", replica.to_string()),
        ("s", key.hex()),
        ("m", s.model.clone()),
        ("p", s.provider.clone()),
        ("t", s.prefix_tokens.to_string()),
        ("ts", s.ts_ms.to_string()),
        ("n", s.turns.to_string()),
    ]
}

/// (replica, session, turn) from an entry's fields; None for one this build cannot read.
fn parse(f: &[(String, String)]) -> Option<(String, SessionKey, Sticky)> {
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let sticky = Sticky {
        model: get("m")?.to_string(),
        provider: get("p")?.to_string(),
        prefix_tokens: get("t")?.parse().ok()?,
        ts_ms: get("ts")?.parse().ok()?,
        turns: get("n")?.parse().ok()?,
    };
    Some((get("r")?.to_string(), SessionKey::from_hex(get("s")?)?, sticky))
}

fn set_up(link: &Link, which: usize, up: bool) {
    if link.up[which].swap(up, Ordering::Relaxed) != up {
        if up {
            tracing::info!(url = %link.url, "shared sessions: connected to Redis");
        } else {
            tracing::warn!(url = %link.url, "shared sessions: Redis is unreachable; this replica keeps its own sessions until it is back");
        }
    }
}

async fn publish(link: Link, mut rx: mpsc::Receiver<(SessionKey, Sticky)>) {
    let mut backlog: VecDeque<(SessionKey, Sticky)> = VecDeque::new();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut next_try = Instant::now();
    loop {
        tokio::select! {
            t = rx.recv() => match t {
                Some(t) => backlog.push_back(t),
                None => return,
            },
            _ = tokio::time::sleep(RETRY) => {}
        }
        while let Ok(t) = rx.try_recv() {
            backlog.push_back(t);
        }
        if conn.is_none() && Instant::now() >= next_try {
            next_try = Instant::now() + RETRY;
            match stream::connect(&link.client, Duration::from_secs(2)).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::debug!(error = %e, "shared sessions: cannot reach Redis to publish"),
            }
        }
        if let Some(c) = conn.as_mut() {
            // Turns older than the TTL end no session anywhere.
            let oldest = now_ms() - link.ttl_ms;
            let before = backlog.len();
            backlog.retain(|(_, s)| s.ts_ms >= oldest);
            link.stats.unshared.fetch_add((before - backlog.len()) as u64, Ordering::Relaxed);
            match send(c, &link, &mut backlog).await {
                Ok(()) => set_up(&link, 0, true),
                Err(e) => {
                    tracing::debug!(error = %e, "shared sessions: publishing failed");
                    conn = None;
                    next_try = Instant::now() + RETRY;
                    set_up(&link, 0, false);
                }
            }
        } else {
            set_up(&link, 0, false);
        }
        while backlog.len() > MAX_BACKLOG {
            backlog.pop_front();
            link.stats.unshared.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn send(c: &mut MultiplexedConnection, link: &Link, backlog: &mut VecDeque<(SessionKey, Sticky)>) -> redis::RedisResult<()> {
    if backlog.is_empty() {
        return redis::cmd("PING").query_async::<()>(c).await;
    }
    while !backlog.is_empty() {
        let n = backlog.len().min(CHUNK);
        let mut pipe = redis::pipe();
        for (key, s) in backlog.iter().take(n) {
            let cmd = pipe.cmd("XADD").arg(&link.stream_key).arg("MAXLEN").arg("~").arg(MAX_STREAM).arg("*");
            for (k, v) in fields(&link.replica, *key, s) {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
        }
        pipe.query_async::<()>(c).await?;
        backlog.drain(..n);
        link.stats.published.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Puts another replica's turn into `cache` unless a newer one is there.
fn apply(cache: &moka::sync::Cache<u128, Arc<Sticky>>, key: SessionKey, s: Sticky) -> bool {
    if cache.get(&key.0).is_some_and(|have| have.ts_ms >= s.ts_ms) {
        return false;
    }
    cache.insert(key.0, Arc::new(s));
    true
}

async fn read(link: Link, cache: moka::sync::Cache<u128, Arc<Sticky>>) {
    let mut tail = stream::Tail::new(&[(&link.stream_key, link.ttl_ms)], now_ms());
    loop {
        let mut conn = match stream::connect(&link.client, Duration::from_millis(BLOCK_MS + 2000)).await {
            Ok(c) => c,
            Err(e) => {
                set_up(&link, 1, false);
                tracing::debug!(error = %e, "shared sessions: cannot reach Redis to read");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            let reply = match tail.read(&mut conn, BLOCK_MS, now_ms()).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "shared sessions: reading the stream failed");
                    set_up(&link, 1, false);
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            };
            set_up(&link, 1, true);
            let mut applied = 0;
            for (name, id, f) in stream::entries(&reply) {
                tail.advance(&name, id);
                let Some((from, key, s)) = parse(&f) else { continue };
                if from != link.replica && apply(&cache, key, s) {
                    applied += 1;
                }
            }
            link.stats.applied.fetch_add(applied, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_reads_back_and_the_newer_one_wins() {
        let k = SessionKey::of_id("x");
        let s = Sticky { model: "m".into(), provider: "p".into(), prefix_tokens: 12, ts_ms: 100, turns: 3 };
        let f: Vec<(String, String)> = fields("r1", k, &s).into_iter().map(|(a, b)| (a.to_string(), b)).collect();
        assert_eq!(parse(&f), Some(("r1".to_string(), k, s.clone())));
        assert_eq!(parse(&f[1..]), None);
        let cache = moka::sync::Cache::new(10);
        assert!(apply(&cache, k, s.clone()));
        assert!(!apply(&cache, k, Sticky { ts_ms: 99, ..s.clone() }));
        assert!(apply(&cache, k, Sticky { ts_ms: 101, model: "n".into(), ..s }));
        assert_eq!(cache.get(&k.0).unwrap().model, "n");
    }
}
