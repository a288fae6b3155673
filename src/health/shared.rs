//! Model health shared by a fleet of replicas through Redis (`[health] shared = "redis://…"`).
//!
//! Every replica keeps its own [`HealthTracker`](super::HealthTracker), and the trackers are kept
//! equal by sharing what feeds them: each report a replica applies to its breakers is also
//! appended to one Redis stream (`<key>:reports`, trimmed to about `MAX_STREAM` entries), and
//! every replica tails that stream (`XREAD BLOCK`) and applies the other replicas' reports to its
//! own breakers, aged by their timestamps. The breaker logic is the single-replica one, so every
//! replica sees the same windows and opens a model's circuit within one stream read of the
//! report that opened it elsewhere (milliseconds; measured in `tests/fleet.rs`).
//!
//! Redis is never on the Route or Feedback path: reports are handed to a publisher task through
//! a bounded queue. When Redis is unreachable each replica goes on with the reports it sees
//! itself (its own breakers, as without `shared`), says so in its log and in
//! `pointsman_health_shared_connected`, keeps the reports it could not publish (the window's
//! worth, at most `MAX_BACKLOG`), and publishes them when Redis answers again, so the fleet
//! converges on the same windows.
use std::{
    collections::{HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Value};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{HealthTracker, Outcome};
use crate::logs::now_ms;

/// Stream entries kept (approximately; older ones are trimmed by XADD).
const MAX_STREAM: usize = 100_000;
/// Reports kept while Redis is unreachable, to publish when it is back.
const MAX_BACKLOG: usize = 10_000;
/// Reports waiting for the publisher; beyond this they are applied locally only and counted.
const QUEUE: usize = 4096;
/// Between reconnection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// How long one stream read blocks in Redis.
const BLOCK_MS: u64 = 500;

/// True for a `redis://` URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("redis://") || s.starts_with("rediss://")
}

/// The Redis client: plaintext for `redis://`; TLS for `rediss://`, the server's certificate
/// verified (with its host name) against the PEM CA certificates in `ca_file`, or else the
/// system's roots.
pub fn client(url: &str, ca_file: Option<&std::path::Path>) -> Result<redis::Client, String> {
    match ca_file {
        None => redis::Client::open(url).map_err(|e| e.to_string()),
        Some(path) => {
            if !url.starts_with("rediss://") {
                return Err(format!("a CA file ({}) is given for a plaintext URL: use rediss:// for TLS", path.display()));
            }
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert: Some(pem) })
                .map_err(|e| format!("{}: {e}", path.display()))
        }
    }
}

/// Counters of the shared health, for metrics.
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Both the publisher and the reader are connected.
    pub connected: AtomicBool,
    publisher_up: AtomicBool,
    reader_up: AtomicBool,
    /// Local reports appended to the stream.
    pub published: AtomicU64,
    /// Other replicas' reports applied to this replica's breakers.
    pub applied: AtomicU64,
    /// Local reports never shared (queue or backlog full, or older than the window when Redis returned).
    pub unshared: AtomicU64,
    /// Times the connection to Redis was lost.
    pub disconnects: AtomicU64,
}

impl SharedStats {
    fn set(&self, which: &AtomicBool, up: bool, url: &str) {
        let was = self.connected.load(Ordering::Relaxed);
        which.store(up, Ordering::Relaxed);
        let now = self.publisher_up.load(Ordering::Relaxed) && self.reader_up.load(Ordering::Relaxed);
        if self.connected.swap(now, Ordering::Relaxed) != now {
            if now {
                tracing::info!(url, "shared health: connected to Redis; breakers are shared with the other replicas");
            } else if was {
                self.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url, "shared health: Redis is unreachable; this replica uses its own breakers until it is back");
            }
        }
    }
}

/// One report as shared.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    model: String,
    outcome: Outcome,
    latency_ms: Option<f64>,
    ts_ms: i64,
}

/// The replica's link to the fleet's shared health. Dropping it stops its tasks.
pub struct SharedHealth {
    tx: mpsc::Sender<Report>,
    stats: Arc<SharedStats>,
    models: Arc<ArcSwap<HashSet<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SharedHealth {
    /// Starts the publisher and the reader on the current Tokio runtime. Fails only on a
    /// malformed URL or an unreadable CA file: an unreachable Redis is retried in the background.
    pub fn start(url: &str, ca_file: Option<&std::path::Path>, key: &str, tracker: Arc<HealthTracker>) -> Result<Self, String> {
        let client = client(url, ca_file)?;
        let stats = Arc::new(SharedStats::default());
        let models = Arc::new(ArcSwap::from_pointee(HashSet::new()));
        let replica = uuid::Uuid::new_v4().to_string();
        let stream = format!("{key}:reports");
        let (tx, rx) = mpsc::channel(QUEUE);
        let window = Duration::from_secs(tracker.config().window_seconds);
        let shown = redact(url);
        let publisher =
            tokio::spawn(publish(client.clone(), stream.clone(), replica.clone(), rx, window, Arc::clone(&stats), shown.clone()));
        let reader = tokio::spawn(read(client, stream, replica, tracker, Arc::clone(&models), Arc::clone(&stats), shown));
        Ok(Self { tx, stats, models, tasks: vec![publisher, reader] })
    }

    /// The catalog: reports on other models are ignored (the trackers must not grow with
    /// arbitrary names).
    pub fn set_models<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.models.store(Arc::new(ids.into_iter().map(str::to_string).collect()));
    }

    /// Shares one report this replica applied to its own breakers. Never waits.
    pub fn share(&self, model: &str, outcome: Outcome, latency_ms: Option<f64>) {
        let report = Report { model: model.to_string(), outcome, latency_ms, ts_ms: now_ms() };
        if self.tx.try_send(report).is_err() {
            self.stats.unshared.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn stats(&self) -> &SharedStats {
        &self.stats
    }
}

impl Drop for SharedHealth {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    crate::logs::postgres::redact(url)
}

async fn connect(client: &redis::Client, response_timeout: Duration) -> redis::RedisResult<MultiplexedConnection> {
    let config =
        AsyncConnectionConfig::new().set_connection_timeout(Some(Duration::from_secs(1))).set_response_timeout(Some(response_timeout));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Appends local reports to the stream; keeps them while Redis is unreachable.
async fn publish(
    client: redis::Client,
    stream: String,
    replica: String,
    mut rx: mpsc::Receiver<Report>,
    window: Duration,
    stats: Arc<SharedStats>,
    url: String,
) {
    let mut backlog: VecDeque<Report> = VecDeque::new();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut next_try = Instant::now();
    loop {
        // Wait for a report, or a second: an idle publisher checks the connection (PING), so
        // `connected` is true to the state of Redis even without traffic.
        match tokio::time::timeout(RETRY, rx.recv()).await {
            Ok(Some(r)) => backlog.push_back(r),
            Ok(None) => return,
            Err(_idle) => {}
        }
        while let Ok(r) = rx.try_recv() {
            backlog.push_back(r);
        }
        if conn.is_none() && Instant::now() >= next_try {
            next_try = Instant::now() + RETRY;
            match connect(&client, Duration::from_secs(2)).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::debug!(error = %e, "shared health: cannot reach Redis to publish"),
            }
        }
        if let Some(c) = conn.as_mut() {
            // Reports older than the window no longer count anywhere.
            let oldest = now_ms() - window.as_millis() as i64;
            let before = backlog.len();
            backlog.retain(|r| r.ts_ms >= oldest);
            stats.unshared.fetch_add((before - backlog.len()) as u64, Ordering::Relaxed);
            let mut pipe = redis::pipe();
            if backlog.is_empty() {
                pipe.cmd("PING").ignore();
            }
            for r in &backlog {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(MAX_STREAM)
                    .arg("*")
                    .arg("r")
                    .arg(&replica)
                    .arg("m")
                    .arg(&r.model)
                    .arg("o")
                    .arg(r.outcome.as_str())
                    .arg("l")
                    .arg(r.latency_ms.map_or(String::new(), |l| l.to_string()))
                    .arg("t")
                    .arg(r.ts_ms)
                    .ignore();
            }
            match pipe.query_async::<()>(c).await {
                Ok(()) => {
                    stats.published.fetch_add(backlog.len() as u64, Ordering::Relaxed);
                    backlog.clear();
                    stats.set(&stats.publisher_up, true, &url);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "shared health: publishing failed");
                    conn = None;
                    next_try = Instant::now() + RETRY;
                    stats.set(&stats.publisher_up, false, &url);
                }
            }
        } else {
            stats.set(&stats.publisher_up, false, &url);
        }
        while backlog.len() > MAX_BACKLOG {
            backlog.pop_front();
            stats.unshared.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Tails the stream and applies the other replicas' reports to this replica's breakers.
async fn read(
    client: redis::Client,
    stream: String,
    replica: String,
    tracker: Arc<HealthTracker>,
    models: Arc<ArcSwap<HashSet<String>>>,
    stats: Arc<SharedStats>,
    url: String,
) {
    let window_ms = tracker.config().window_seconds as i64 * 1000;
    // Start with the window's reports, so a new replica joins with the fleet's breakers.
    let mut last = format!("{}-0", now_ms() - window_ms);
    // Losing a connection is said by `SharedStats::set`; never having had one is said here, once,
    // with the reason (a wrong address, a certificate that does not verify...).
    let (mut ever_connected, mut said) = (false, false);
    loop {
        let mut conn = match connect(&client, Duration::from_millis(BLOCK_MS + 2000)).await {
            Ok(c) => {
                ever_connected = true;
                c
            }
            Err(e) => {
                stats.set(&stats.reader_up, false, &url);
                if !ever_connected && !said {
                    tracing::warn!(url, error = %e, "shared health: cannot reach Redis; this replica uses its own breakers until it can");
                    said = true;
                } else {
                    tracing::debug!(error = %e, "shared health: cannot reach Redis to read");
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            // After an outage, reports older than the window no longer count.
            let floor = now_ms() - window_ms;
            if stream_ms(&last) < floor {
                last = format!("{floor}-0");
            }
            let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&last)
                .query_async(&mut conn)
                .await;
            let reply = match reply {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "shared health: reading the stream failed");
                    stats.set(&stats.reader_up, false, &url);
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            };
            stats.set(&stats.reader_up, true, &url);
            let known = models.load();
            let now = (now_ms(), Instant::now());
            for (id, fields) in entries(&reply) {
                last = id;
                let Some((from, report)) = parse_report(&fields) else { continue };
                if from == replica || !known.contains(&report.model) {
                    continue;
                }
                let age = Duration::from_millis(now.0.saturating_sub(report.ts_ms).max(0) as u64);
                if age.as_millis() as i64 > window_ms {
                    continue;
                }
                let at = now.1.checked_sub(age).unwrap_or(now.1);
                tracker.record(&report.model, report.outcome, report.latency_ms, at);
                stats.applied.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The milliseconds part of a stream id.
fn stream_ms(id: &str) -> i64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of an XREAD reply (one stream): (id, field/value pairs). Nil (a timeout) is none.
fn entries(reply: &Value) -> Vec<(String, Vec<(String, String)>)> {
    let streams: Vec<&Value> = match reply {
        Value::Array(a) => a.iter().filter_map(|s| if let Value::Array(kv) = s { kv.get(1) } else { None }).collect(),
        Value::Map(m) => m.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(items) = s else { continue };
        for item in items {
            let Value::Array(pair) = item else { continue };
            let (Some(id), Some(Value::Array(fv))) = (pair.first().and_then(text), pair.get(1)) else { continue };
            let fields = fv.chunks_exact(2).filter_map(|c| Some((text(&c[0])?, text(&c[1])?))).collect();
            out.push((id, fields));
        }
    }
    out
}

/// (replica, report) from an entry's fields; None for an entry this build cannot read.
fn parse_report(fields: &[(String, String)]) -> Option<(String, Report)> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let report = Report {
        model: get("m")?.to_string(),
        outcome: Outcome::parse(get("o")?)?,
        latency_ms: get("l").and_then(|l| l.parse().ok()).filter(|l: &f64| l.is_finite() && *l >= 0.0),
        ts_ms: get("t")?.parse().ok()?,
    };
    Some((get("r")?.to_string(), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_replies_are_parsed() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |id: &str, kv: &[&str]| Value::Array(vec![b(id), Value::Array(kv.iter().map(|s| b(s)).collect())]);
        let reply = Value::Array(vec![Value::Array(vec![
            b("pointsman:reports"),
            Value::Array(vec![
                entry("1-0", &["r", "A", "m", "x/m", "o", "timeout", "l", "", "t", "1700000000000"]),
                entry("1-1", &["r", "B", "m", "x/m", "o", "no-such-outcome", "t", "1"]),
                entry("2-0", &["r", "B", "m", "y/m", "o", "success", "l", "12.5", "t", "5"]),
            ]),
        ])]);
        let got = entries(&reply);
        assert_eq!(got.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["1-0", "1-1", "2-0"]);
        let first = parse_report(&got[0].1).unwrap();
        assert_eq!(
            first,
            ("A".into(), Report { model: "x/m".into(), outcome: Outcome::Timeout, latency_ms: None, ts_ms: 1_700_000_000_000 })
        );
        assert!(parse_report(&got[1].1).is_none(), "an unknown outcome is skipped, not misread");
        assert_eq!(parse_report(&got[2].1).unwrap().1.latency_ms, Some(12.5));
        assert!(entries(&Value::Nil).is_empty(), "a blocked read that timed out has no entries");
        assert_eq!(stream_ms("1700000000123-4"), 1_700_000_000_123);
    }
}
