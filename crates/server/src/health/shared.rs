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
//! Verification travels the same way: every decision's offered set (request id and model ids)
//! is appended, in batches, to a second stream (`<key>:offered`), and every replica adds the
//! other replicas' sets to its [`Offers`], so that a report landing on any replica is verified
//! there without `count_unknown_requests`. A report carries its request id, and a replica that
//! applies another's report takes that (request id, model) in its own [`Offers`]: a duplicate of
//! it landing there later does not count again. Each report also carries its replica's sequence
//! number, so entries a publisher sends twice (a pipeline whose answer was lost) are applied
//! once ([`stream::Seen`]).
//!
//! Redis is never on the Route or Feedback path: reports and offered sets are handed to a
//! publisher task through bounded queues. When Redis is unreachable each replica goes on with the
//! reports it sees itself (its own breakers, as without `shared`), says so in its log and in
//! `pointsman_health_shared_connected`, keeps the reports it could not publish (the window's
//! worth, at most `MAX_BACKLOG`), and publishes them when Redis answers again, so the fleet
//! converges on the same windows. The reader starts once the catalog is known (the first
//! [`SharedHealth::set_models`]) from the window's first entry, so a replica that starts or
//! restarts joins with the fleet's breakers; it applies what it reads off the async workers
//! (`spawn_blocking`).
use std::{
    collections::{HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use redis::{aio::MultiplexedConnection, Value};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    endpoints::{EndpointTracker, Measurement},
    offers::Offers,
    stream::{self, Offer, Report, Seen},
    HealthTracker, Outcome,
};
use crate::{logs::now_ms, redact::redact};

/// Report stream entries kept (approximately; older ones are trimmed by XADD).
const MAX_STREAM: usize = 100_000;
/// Offered-set stream entries kept (approximately), each a batch of up to `OFFER_BATCH` sets.
const MAX_OFFER_STREAM: usize = 2_000;
/// Offered sets in one stream entry.
const OFFER_BATCH: usize = 256;
/// Reports kept while Redis is unreachable, to publish when it is back.
const MAX_BACKLOG: usize = 10_000;
/// Offered sets kept while Redis is unreachable (the newest).
const MAX_OFFER_BACKLOG: usize = 50_000;
/// Reports waiting for the publisher; beyond this they are applied locally only and counted.
const QUEUE: usize = 4096;
/// Offered sets waiting for the publisher; beyond this they are not shared and counted.
const OFFER_QUEUE: usize = 16_384;
/// How far back a reader that starts (or returns after an outage) reads offered sets: a report
/// usually follows its decision within seconds, so this covers the calls in flight.
const OFFER_HISTORY_MS: i64 = 10 * 60 * 1000;
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
    /// Other replicas' reports read and not applied: sent twice by their publisher, or a report
    /// on a (request id, model) that already counted here.
    pub duplicates: AtomicU64,
    /// Local reports never shared (queue or backlog full, or older than the window when Redis returned).
    pub unshared: AtomicU64,
    /// Local decisions' offered sets appended to the stream.
    pub offers_published: AtomicU64,
    /// Other replicas' offered sets added here (they verify reports on their decisions).
    pub offers_applied: AtomicU64,
    /// Local offered sets never shared (queue or backlog full).
    pub offers_unshared: AtomicU64,
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

/// The replica's link to the fleet's shared health. Dropping it stops its tasks.
pub struct SharedHealth {
    tx: mpsc::Sender<Report>,
    offers_tx: mpsc::Sender<Offer>,
    stats: Arc<SharedStats>,
    models: Arc<ArcSwap<HashSet<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SharedHealth {
    /// Starts the publisher and the reader on the current Tokio runtime. Other replicas' reports
    /// go to `tracker`, and their offered sets to `offers`. Fails only on a malformed URL or an
    /// unreadable CA file: an unreachable Redis is retried in the background.
    pub fn start(
        url: &str,
        ca_file: Option<&std::path::Path>,
        key: &str,
        tracker: Arc<HealthTracker>,
        endpoints: Arc<EndpointTracker>,
        offers: Arc<Offers>,
    ) -> Result<Self, String> {
        let client = client(url, ca_file)?;
        let stats = Arc::new(SharedStats::default());
        let models = Arc::new(ArcSwap::from_pointee(HashSet::new()));
        let streams =
            Streams { reports: format!("{key}:reports"), offered: format!("{key}:offered"), replica: uuid::Uuid::new_v4().to_string() };
        let (tx, rx) = mpsc::channel(QUEUE);
        let (offers_tx, offers_rx) = mpsc::channel(OFFER_QUEUE);
        let window = Duration::from_secs(tracker.config().window_seconds);
        let shown = redact(url);
        let publisher = tokio::spawn(publish(client.clone(), streams.clone(), rx, offers_rx, window, Arc::clone(&stats), shown.clone()));
        let trackers = Trackers { models: tracker, endpoints };
        let reader = tokio::spawn(read(client, streams, trackers, offers, Arc::clone(&models), Arc::clone(&stats), shown));
        Ok(Self { tx, offers_tx, stats, models, tasks: vec![publisher, reader] })
    }

    /// The catalog: reports on other models are ignored (the trackers must not grow with
    /// arbitrary names). The reader starts reading once it is set.
    pub fn set_models<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.models.store(Arc::new(ids.into_iter().map(str::to_string).collect()));
    }

    /// Shares one report this replica applied to its own breakers (the endpoint's, when
    /// `provider` names one of the model's endpoints, with what it measured). Never waits.
    pub fn share(&self, request_id: &str, model: &str, provider: Option<&str>, outcome: Outcome, m: &Measurement) {
        let report = Report {
            request_id: Some(request_id.to_string()),
            model: model.to_string(),
            outcome,
            latency_ms: m.latency_ms,
            ts_ms: now_ms(),
            provider: provider.map(str::to_string),
            ttft_ms: m.ttft_ms,
            generation_ms: m.generation_ms,
            output_tokens: m.output_tokens,
        };
        if self.tx.try_send(report).is_err() {
            self.stats.unshared.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shares the models a decision of this replica offered for `request_id`. Never waits.
    pub fn offer<'a>(&self, request_id: &str, models: impl IntoIterator<Item = &'a str>) {
        let offer = Offer(request_id.to_string(), models.into_iter().map(str::to_string).collect());
        if self.offers_tx.try_send(offer).is_err() {
            self.stats.offers_unshared.fetch_add(1, Ordering::Relaxed);
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

/// The two stream keys and this replica's id in them.
#[derive(Debug, Clone)]
struct Streams {
    reports: String,
    offered: String,
    replica: String,
}

/// Reports (or offered-set batches) sent in one pipeline: what a pipeline acknowledged leaves
/// the backlog, so a failure re-sends at most one chunk.
const CHUNK: usize = 512;

/// Appends local reports and offered sets to the streams; keeps them while Redis is unreachable.
async fn publish(
    client: redis::Client,
    streams: Streams,
    mut rx: mpsc::Receiver<Report>,
    mut offers_rx: mpsc::Receiver<Offer>,
    window: Duration,
    stats: Arc<SharedStats>,
    url: String,
) {
    // Each report gets the next sequence number as it enters the backlog, and keeps it when sent again.
    let mut seq = 0u64;
    let mut backlog: VecDeque<(u64, Report)> = VecDeque::new();
    let mut offers: VecDeque<Offer> = VecDeque::new();
    let mut conn: Option<MultiplexedConnection> = None;
    let mut next_try = Instant::now();
    let mut offers_open = true;
    loop {
        // Wait for a report or an offered set, or a second: an idle publisher checks the
        // connection (PING), so `connected` is true to the state of Redis even without traffic.
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => {
                    seq += 1;
                    backlog.push_back((seq, r));
                }
                None => return,
            },
            o = offers_rx.recv(), if offers_open => match o {
                Some(o) => offers.push_back(o),
                None => offers_open = false,
            },
            _ = tokio::time::sleep(RETRY) => {}
        }
        while let Ok(r) = rx.try_recv() {
            seq += 1;
            backlog.push_back((seq, r));
        }
        while let Ok(o) = offers_rx.try_recv() {
            offers.push_back(o);
        }
        if conn.is_none() && Instant::now() >= next_try {
            next_try = Instant::now() + RETRY;
            match stream::connect(&client, Duration::from_secs(2)).await {
                Ok(c) => conn = Some(c),
                Err(e) => tracing::debug!(error = %e, "shared health: cannot reach Redis to publish"),
            }
        }
        if let Some(c) = conn.as_mut() {
            // Reports older than the window no longer count anywhere.
            let oldest = now_ms() - window.as_millis() as i64;
            let before = backlog.len();
            backlog.retain(|(_, r)| r.ts_ms >= oldest);
            stats.unshared.fetch_add((before - backlog.len()) as u64, Ordering::Relaxed);
            match send(c, &streams, &mut backlog, &mut offers, &stats).await {
                Ok(()) => stats.set(&stats.publisher_up, true, &url),
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
        while offers.len() > MAX_OFFER_BACKLOG {
            offers.pop_front();
            stats.offers_unshared.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends the backlogs in chunks (a PING when both are empty); what Redis acknowledged leaves them.
async fn send(
    c: &mut MultiplexedConnection,
    streams: &Streams,
    backlog: &mut VecDeque<(u64, Report)>,
    offers: &mut VecDeque<Offer>,
    stats: &SharedStats,
) -> redis::RedisResult<()> {
    if backlog.is_empty() && offers.is_empty() {
        return redis::cmd("PING").query_async::<()>(c).await;
    }
    while !backlog.is_empty() {
        let n = backlog.len().min(CHUNK);
        let mut pipe = redis::pipe();
        for (seq, r) in backlog.iter().take(n) {
            let cmd = pipe.cmd("XADD").arg(&streams.reports).arg("MAXLEN").arg("~").arg(MAX_STREAM).arg("*");
            for (k, v) in stream::report_fields(&streams.replica, *seq, r) {
                cmd.arg(k).arg(v);
            }
            cmd.ignore();
        }
        pipe.query_async::<()>(c).await?;
        backlog.drain(..n);
        stats.published.fetch_add(n as u64, Ordering::Relaxed);
    }
    while !offers.is_empty() {
        let mut pipe = redis::pipe();
        let mut taken = 0;
        for _ in 0..CHUNK / 16 {
            let n = (offers.len() - taken).min(OFFER_BATCH);
            if n == 0 {
                break;
            }
            let batch: Vec<Offer> = offers.range(taken..taken + n).cloned().collect();
            pipe.cmd("XADD")
                .arg(&streams.offered)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_OFFER_STREAM)
                .arg("*")
                .arg("r")
                .arg(&streams.replica)
                .arg("b")
                .arg(stream::offers_json(&batch))
                .ignore();
            taken += n;
        }
        pipe.query_async::<()>(c).await?;
        offers.drain(..taken);
        stats.offers_published.fetch_add(taken as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// What one stream read brought from the other replicas, to apply off the async workers.
#[derive(Default)]
struct Batch {
    offers: Vec<Offer>,
    /// Reports in the window on catalog models, read for the first time, with their age.
    reports: Vec<(Report, Duration)>,
}

/// What applying a [`Batch`] did.
struct Applied {
    offers: u64,
    reports: u64,
    duplicates: u64,
}

/// The breakers other replicas' reports go to: the model's, or the endpoint's when a report names it.
#[derive(Clone)]
struct Trackers {
    models: Arc<HealthTracker>,
    endpoints: Arc<EndpointTracker>,
}

/// Adds the offered sets to `offers`, then applies the reports to the trackers (each (request id,
/// model) once, whichever replica it came from).
fn apply(batch: Batch, trackers: &Trackers, offers: &Offers) -> Applied {
    let mut done = Applied { offers: 0, reports: 0, duplicates: 0 };
    for Offer(request_id, models) in &batch.offers {
        offers.offer(request_id, models.iter().map(String::as_str));
        done.offers += 1;
    }
    let now = Instant::now();
    for (r, age) in batch.reports {
        if let Some(q) = &r.request_id {
            if !offers.take_remote(q, &r.model) {
                done.duplicates += 1;
                continue;
            }
        }
        let at = now.checked_sub(age).unwrap_or(now);
        match &r.provider {
            Some(p) => {
                let m = Measurement {
                    latency_ms: r.latency_ms,
                    ttft_ms: r.ttft_ms,
                    generation_ms: r.generation_ms,
                    output_tokens: r.output_tokens,
                };
                trackers.endpoints.record(&r.model, p, r.outcome, &m, at);
            }
            None => {
                trackers.models.record(&r.model, r.outcome, r.latency_ms, at);
            }
        }
        done.reports += 1;
    }
    done
}

/// Tails both streams: applies the other replicas' reports to this replica's breakers and adds
/// their offered sets to its [`Offers`].
async fn read(
    client: redis::Client,
    streams: Streams,
    trackers: Trackers,
    offers: Arc<Offers>,
    models: Arc<ArcSwap<HashSet<String>>>,
    stats: Arc<SharedStats>,
    url: String,
) {
    let window_ms = trackers.models.config().window_seconds as i64 * 1000;
    // Nothing is read before the catalog is known: entries on models not known yet would be
    // skipped, and the cursor would move past them (a late joiner must see the window).
    while models.load().is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Start with the window's reports, so a new replica joins with the fleet's breakers; after an
    // outage, reports older than the window no longer count.
    let mut tail = stream::Tail::new(&[(&streams.reports, window_ms), (&streams.offered, OFFER_HISTORY_MS)], now_ms());
    let mut seen = Seen::default();
    // Losing a connection is said by `SharedStats::set`; never having had one is said here, once,
    // with the reason (a wrong address, a certificate that does not verify...).
    let (mut ever_connected, mut said) = (false, false);
    loop {
        let mut conn = match stream::connect(&client, Duration::from_millis(BLOCK_MS + 2000)).await {
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
            let reply = match tail.read(&mut conn, BLOCK_MS, now_ms()).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "shared health: reading the stream failed");
                    stats.set(&stats.reader_up, false, &url);
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            };
            stats.set(&stats.reader_up, true, &url);
            let batch = collect(&reply, &streams, &models.load(), &mut seen, &mut tail, window_ms, &stats);
            if batch.offers.is_empty() && batch.reports.is_empty() {
                continue;
            }
            let (trackers, offers) = (trackers.clone(), Arc::clone(&offers));
            // Up to a thousand breaker updates: on a blocking thread, not an async worker.
            match tokio::task::spawn_blocking(move || apply(batch, &trackers, &offers)).await {
                Ok(done) => {
                    stats.offers_applied.fetch_add(done.offers, Ordering::Relaxed);
                    stats.applied.fetch_add(done.reports, Ordering::Relaxed);
                    stats.duplicates.fetch_add(done.duplicates, Ordering::Relaxed);
                }
                Err(e) => tracing::error!(error = %e, "shared health: applying the fleet's reports failed"),
            }
        }
    }
}

/// Sorts one XREAD reply into a [`Batch`], moving the cursors past every entry: this replica's
/// own entries, re-sent reports, reports older than the window and on models outside the catalog
/// are left out (counted as duplicates when re-sent).
fn collect(
    reply: &Value,
    streams: &Streams,
    known: &HashSet<String>,
    seen: &mut Seen,
    tail: &mut stream::Tail,
    window_ms: i64,
    stats: &SharedStats,
) -> Batch {
    let now = now_ms();
    let mut batch = Batch::default();
    for (name, id, fields) in stream::entries(reply) {
        tail.advance(&name, id);
        if name == streams.offered {
            // This replica's own batches are skipped unparsed.
            let own = fields.iter().any(|(k, v)| k == "r" && *v == streams.replica);
            if let Some((_, offers)) = stream::parse_offers(&fields).filter(|_| !own) {
                batch.offers.extend(offers);
            }
            continue;
        }
        let Some((from, seq, report)) = stream::parse_report(&fields) else { continue };
        if from == streams.replica {
            continue;
        }
        if let Some(seq) = seq {
            if !seen.fresh(&from, seq, now) {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let age = now.saturating_sub(report.ts_ms).max(0);
        if age > window_ms || !known.contains(&report.model) {
            continue;
        }
        batch.reports.push((report, Duration::from_millis(age as u64)));
    }
    // Replicas silent for two windows: their reports are out of the window anyway.
    if seen.len() > 64 {
        seen.forget_before(now - 2 * window_ms);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn reply(stream: &str, entries: &[(&str, Vec<String>)]) -> Value {
        let entries = entries.iter().map(|(id, kv)| Value::Array(vec![b(id), Value::Array(kv.iter().map(|s| b(s)).collect())])).collect();
        Value::Array(vec![Value::Array(vec![b(stream), Value::Array(entries)])])
    }

    fn report(replica: &str, seq: u64, request_id: &str, model: &str) -> Vec<String> {
        let r = Report {
            request_id: Some(request_id.into()),
            model: model.into(),
            outcome: Outcome::ServerError,
            latency_ms: None,
            ts_ms: now_ms(),
            provider: None,
            ttft_ms: None,
            generation_ms: None,
            output_tokens: None,
        };
        stream::report_fields(replica, seq, &r).into_iter().flat_map(|(k, v)| [k.to_string(), v]).collect()
    }

    /// A reader's state, fed one reply at a time.
    struct Reader {
        streams: Streams,
        known: HashSet<String>,
        seen: Seen,
        tail: stream::Tail,
        trackers: Trackers,
        offers: Offers,
        stats: SharedStats,
    }

    impl Reader {
        fn read(&mut self, entries: &[(&str, Vec<String>)], stream: &str) -> Applied {
            let batch = collect(&reply(stream, entries), &self.streams, &self.known, &mut self.seen, &mut self.tail, 60_000, &self.stats);
            apply(batch, &self.trackers, &self.offers)
        }
    }

    fn reader() -> Reader {
        Reader {
            streams: Streams { reports: "k:reports".into(), offered: "k:offered".into(), replica: "me".into() },
            known: ["m".to_string()].into(),
            seen: Seen::default(),
            tail: stream::Tail::new(&[("k:reports", 60_000), ("k:offered", 60_000)], 0),
            trackers: Trackers {
                models: Arc::new(HealthTracker::new(super::super::HealthConfig::default())),
                endpoints: Arc::new(EndpointTracker::new(super::super::HealthConfig { min_measured_requests: 1, ..Default::default() })),
            },
            offers: Offers::new(1000),
            stats: SharedStats::default(),
        }
    }

    #[test]
    fn a_report_naming_an_endpoint_feeds_its_breaker_and_measurements_not_the_models() {
        let mut r = reader();
        let report = Report {
            request_id: Some("r1".into()),
            model: "m".into(),
            outcome: Outcome::Success,
            latency_ms: Some(900.0),
            ts_ms: now_ms(),
            provider: Some("p".into()),
            ttft_ms: Some(100.0),
            generation_ms: Some(800.0),
            output_tokens: Some(80),
        };
        let fields = stream::report_fields("B", 1, &report).into_iter().flat_map(|(k, v)| [k.to_string(), v]).collect();
        assert_eq!(r.read(&[("1-0", fields)], "k:reports").reports, 1);
        let now = Instant::now();
        let e = r.trackers.endpoints.get("m", "p", now);
        assert_eq!(e.health.window_requests, 1);
        let (lat, tps) = (e.latency_ms.unwrap().p50, e.tokens_per_second.unwrap().p50);
        assert!((lat - 900.0).abs() < 18.0 && (tps - 100.0).abs() < 2.0, "{e:?}");
        assert_eq!(r.trackers.models.snapshot("m", now).window_requests, 0);
    }

    #[test]
    fn a_re_sent_pipeline_and_a_report_counted_here_are_applied_once() {
        let mut r = reader();
        r.trackers.endpoints = Arc::new(EndpointTracker::new(super::super::HealthConfig::default()));
        // B's pipeline of three reports is applied, then sent again in full with a fourth after a
        // lost answer: only the fourth is new. One of B's reports is on a model outside the catalog.
        let first: Vec<(&str, Vec<String>)> = vec![
            ("1-0", report("B", 1, "r1", "m")),
            ("1-1", report("B", 2, "r2", "m")),
            ("1-2", report("B", 3, "r3", "not-in-catalog")),
            ("1-3", report("me", 1, "r9", "m")),
        ];
        let done = r.read(&first, "k:reports");
        assert_eq!((done.reports, done.duplicates), (2, 0));
        let mut again = first[..3].to_vec();
        again.push(("2-0", report("B", 4, "r4", "m")));
        let done = r.read(&again, "k:reports");
        assert_eq!((done.reports, done.duplicates), (1, 0));
        assert_eq!(r.stats.duplicates.load(Ordering::Relaxed), 3, "the re-sent three were skipped by sequence number");
        assert_eq!(r.trackers.models.snapshot("m", Instant::now()).consecutive_failures, 3);
        // A report this replica counted itself, then C's copy of it: applied once.
        r.offers.offer("r5", ["m"]);
        assert!(r.offers.claim("r5", "m", true, false).counts);
        let done = r.read(&[("3-0", report("C", 1, "r5", "m"))], "k:reports");
        assert_eq!((done.reports, done.duplicates), (0, 1));
        assert_eq!(r.tail.cursor(0), "3-0");
        // Offered sets: the other replicas' are added, this one's skipped.
        let batch = |replica: &str, id: &str| {
            vec!["r".to_string(), replica.to_string(), "b".into(), stream::offers_json(&[Offer(id.into(), vec!["m".into()])])]
        };
        let done = r.read(&[("4-0", batch("B", "r6")), ("4-1", batch("me", "r7"))], "k:offered");
        assert_eq!(done.offers, 1);
        assert_eq!(r.tail.cursor(1), "4-1");
        assert!(r.offers.claim("r6", "m", true, false).verified);
        assert!(!r.offers.claim("r7", "m", true, false).known_request);
    }
}
