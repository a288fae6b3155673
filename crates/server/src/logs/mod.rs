//! The decision log: every `Route` decision and every `Feedback` report, kept in an embedded
//! SQLite database (WAL mode) or, for a fleet of replicas, in PostgreSQL (`postgres`), and
//! joined by request id.
//!
//! Writes never sit on the request path. Handlers put records on a queue bounded in records
//! (`queue_capacity`) and in bytes (`queue_max_bytes`: records carry routing text), a `flume`
//! channel, and a writer thread commits them in batches (one transaction per batch). When the
//! queue is full:
//! - a decision is dropped and counted (`pointsman_decision_log_dropped_total`, and a warning
//!   at most every 10 s): routing goes on;
//! - a feedback report waits up to `feedback_wait_ms` for room, then the RPC answers
//!   RESOURCE_EXHAUSTED so the gateway retries it: an accepted report is never silently lost.
//!   A closed log (the server stopping) is told apart: [`NotQueued::Closed`].
//!
//! Before any sink sees a record, the writer makes its text [`storable`]: C0 control characters
//! but tab, CR and LF (U+0000 above all, which PostgreSQL's `text` refuses) become U+FFFD. If
//! the writer panics (a bug), it is restarted on the same queue and counted
//! (`pointsman_decision_log_writer_restarts_total`); [`DecisionLog::writer_running`] says
//! whether it runs.
//!
//! A crash or `kill -9` loses at most what was still queued (the last unflushed batch); SQLite's
//! WAL guarantees the file itself is never corrupted (see `tests/feedback.rs`). Shutdown drains
//! the queue. SQLite's retention (age and size) runs on the writer thread between batches.
//!
//! With `url = "postgres://…"` the writer sends the batches to PostgreSQL instead (`postgres`);
//! while it is unreachable they go to a local SQLite spill file (`spill`, capped by
//! `spill_max_bytes`) and are replayed when it answers again, into the database they were meant
//! for only. Rows PostgreSQL refuses for good are found by splitting their batch (`failure`)
//! and kept in a dead-letter table; the rest land. Retention there runs on a thread and a
//! connection of its own (`retention`). Route never waits for any of it.
pub mod failure;
pub mod pg_url;
pub mod postgres;
pub mod retention;
mod spill;
pub mod store;

use std::{
    borrow::Cow,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;

/// Errors of the decision log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// SQLite failed.
    #[error("decision log {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A file or folder could not be used.
    #[error("decision log {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// PostgreSQL failed (the URL's password is redacted).
    #[error("decision log {url}: {detail}")]
    Postgres {
        /// The database URL, without its password.
        url: String,
        /// What went wrong, with the server's code or the client's cause.
        detail: String,
        /// What the client or the server said (none for a time limit).
        source: Option<tokio_postgres::Error>,
    },
    /// Another process holds the spill file.
    #[error("decision log spill file {path}: in use by another process ({source}); give each replica its own decision_log.spill_path")]
    SpillInUse {
        /// The spill file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file is not a decision log this build understands.
    #[error("decision log {path}: {message}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `[decision_log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log decisions and feedback at all.
    pub enabled: bool,
    /// The SQLite file (relative paths are resolved against the config file's folder).
    pub path: PathBuf,
    /// A PostgreSQL URL (`postgres://user:password@host:5432/db`): the log of a fleet of
    /// replicas, in place of the SQLite file. Unset: the SQLite file.
    pub url: Option<String>,
    /// With `url`: the local SQLite file that keeps batches while PostgreSQL is unreachable,
    /// replayed when it answers again.
    pub spill_path: PathBuf,
    /// With `url`: the longest a statement or an unacknowledged write may take before the
    /// batch goes to the spill file instead, ms.
    pub write_timeout_ms: u64,
    /// With `url`: the most bytes of batches the spill file keeps (0 = no limit); over it, new
    /// batches are dropped and counted.
    pub spill_max_bytes: u64,
    /// Keep the routing text of each decision. When false only its embedding is kept (the
    /// trainer can still learn from it with the same encoder).
    pub store_prompts: bool,
    /// Records that may wait for the writer; beyond this decisions are dropped and counted.
    pub queue_capacity: usize,
    /// Bytes (mostly routing text) that may wait for the writer; a decision that would go over
    /// is dropped and counted like one that finds the queue full. Feedback waits for room.
    pub queue_max_bytes: u64,
    /// Most records committed in one transaction.
    pub batch_max: usize,
    /// After the first record of a batch arrives, how long the writer waits for more before it
    /// commits, ms: fewer, larger transactions under load (less CPU taken from routing), at the
    /// price of this much extra delay before a record is durable. 0 commits at once.
    pub linger_ms: u64,
    /// `normal` (durable across a process crash) or `full` (also across power loss; a fsync per batch).
    pub synchronous: String,
    /// Rows older than this many days are deleted (0 keeps them forever).
    pub max_age_days: f64,
    /// The oldest rows are deleted while the database is larger than this (0 = no limit).
    pub max_bytes: u64,
    /// Seconds between retention passes.
    pub retention_interval_seconds: u64,
    /// How long a `Feedback` call waits for room in a full queue before RESOURCE_EXHAUSTED, ms.
    pub feedback_wait_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "decisions.db".into(),
            url: None,
            spill_path: "decisions-spill.db".into(),
            write_timeout_ms: 5000,
            spill_max_bytes: 256 << 20,
            store_prompts: true,
            queue_capacity: 10_000,
            queue_max_bytes: 64 << 20,
            batch_max: 512,
            linger_ms: 5,
            synchronous: "normal".into(),
            max_age_days: 30.0,
            max_bytes: 1 << 30,
            retention_interval_seconds: 60,
            feedback_wait_ms: 1000,
        }
    }
}

impl LogConfig {
    /// Checks the ranges; the error names the key, the limit and the value.
    pub fn validate(&self) -> Result<(), crate::config_error::ConfigError> {
        let bad = |k: &str, l: &str, v: String| Err(crate::config_error::invalid(&format!("decision_log.{k}"), l, v));
        if self.queue_capacity == 0 {
            return bad("queue_capacity", ">= 1", "0".into());
        }
        if self.queue_max_bytes < 65_536 {
            return bad("queue_max_bytes", ">= 65536", self.queue_max_bytes.to_string());
        }
        if self.batch_max == 0 {
            return bad("batch_max", ">= 1", "0".into());
        }
        if !matches!(self.synchronous.as_str(), "normal" | "full") {
            return bad("synchronous", "`normal` or `full`", format!("{:?}", self.synchronous));
        }
        if !(self.max_age_days.is_finite() && self.max_age_days >= 0.0) {
            return bad("max_age_days", "a finite number >= 0", self.max_age_days.to_string());
        }
        if self.linger_ms > 1000 {
            return bad("linger_ms", "in 0..=1000", self.linger_ms.to_string());
        }
        if self.retention_interval_seconds == 0 {
            return bad("retention_interval_seconds", ">= 1", "0".into());
        }
        if self.enabled && self.path.as_os_str().is_empty() {
            return bad("path", "a file path", "\"\"".into());
        }
        if let Some(url) = &self.url {
            let shown = postgres::redact(url);
            if !postgres::is_url(url) {
                return bad("url", "a postgres:// or postgresql:// URL", format!("{shown:?}"));
            }
            let parsed = postgres::transport(url)
                .and_then(|(pg_url, t)| pg_url.parse::<tokio_postgres::Config>().map(|_| t).map_err(|e| e.to_string()));
            let transport = match parsed {
                Ok(t) => t,
                Err(e) => return bad("url", &format!("a valid PostgreSQL URL ({e})"), format!("{shown:?}")),
            };
            if let postgres::Transport::Tls { root_cert: Some(ca) } = transport {
                if let Err(e) = postgres::client_tls(Some(&ca)) {
                    return bad("url", "an sslrootcert with the server's CA certificates", format!("{shown:?} ({e})"));
                }
            }
            if self.spill_path.as_os_str().is_empty() {
                return bad("spill_path", "a file path", "\"\"".into());
            }
            if self.spill_max_bytes != 0 && self.spill_max_bytes < 1 << 20 {
                return bad("spill_max_bytes", "0 (no cap) or >= 1048576", self.spill_max_bytes.to_string());
            }
            if !(100..=600_000).contains(&self.write_timeout_ms) {
                return bad("write_timeout_ms", "in 100..=600000", self.write_timeout_ms.to_string());
            }
        }
        Ok(())
    }
}

/// One ranked model as logged with its decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedCandidate {
    /// Catalog model id.
    pub model: String,
    /// Predicted quality.
    pub quality: f64,
    /// Predicted output tokens.
    pub output_tokens: f64,
    /// Predicted cost, USD.
    pub cost_usd: f64,
    /// Utility.
    pub utility: f64,
    /// Health state when decided.
    pub health: &'static str,
}

/// A decision's session, as logged (columns `session_id`, `session_verdict`, `session_reason`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedSession {
    /// The session's hash (32 hex digits, `session::SessionKey::hex`), never the id as given.
    pub id: String,
    /// "new", "kept" or "moved".
    pub verdict: &'static str,
    /// Why (`session::Reason::as_str`).
    pub reason: &'static str,
}

/// One `Route` decision.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    /// Request id.
    pub request_id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The routing text (None when prompt storage is off).
    pub routing_text: Option<String>,
    /// The embedding (when prompt storage is off).
    pub embedding: Option<Arc<[f32]>>,
    /// Encoder id.
    pub encoder: String,
    /// Router version.
    pub router_version: String,
    /// Cost weight applied.
    pub cost_weight: f64,
    /// Profile applied.
    pub profile: Option<String>,
    /// The request's constraints (stored as JSON by the writer thread).
    pub constraints: crate::policy::Constraints,
    /// How the trade-off was chosen: "default", "profile:<name>" or "weight:<w>".
    pub tradeoff: String,
    /// Input tokens.
    pub input_tokens: u32,
    /// Primary first, then fallbacks.
    pub candidates: Vec<LoggedCandidate>,
    /// The predicted saving against the baseline (`savings`; the `baseline_*` columns), when
    /// the engine has a baseline.
    pub baseline: Option<crate::savings::Estimate>,
    /// The request's session, when it named one.
    pub session: Option<LoggedSession>,
    /// The policy that chose the primary and the propensity of its choice.
    pub policy: DecisionPolicy,
}

/// The policy behind one decision: which head and setting chose the primary, with what
/// probability, and what a shadow head would have chosen. Stored as the decision's `propensity`
/// column and its `policy` JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionPolicy {
    /// Probability with which the primary was chosen: 1 for a deterministic choice, below 1 when
    /// exploration could have chosen another model.
    pub propensity: f64,
    /// The primary was drawn by exploration (it may still be the best model).
    pub explored: bool,
    /// The serving head's id.
    pub head_id: String,
    /// The exploration setting that applied (None when the request could not explore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exploration: Option<String>,
    /// The near-best models the draw was among.
    pub explore_candidates: usize,
    /// The shadow head's id, when one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_head: Option<String>,
    /// The model the shadow head would have made the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_model: Option<String>,
    /// The shadow head agreed with the serving head's best model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_agrees: Option<bool>,
}

impl Default for DecisionPolicy {
    fn default() -> Self {
        Self {
            propensity: 1.0,
            explored: false,
            head_id: String::new(),
            exploration: None,
            explore_candidates: 1,
            shadow_head: None,
            shadow_model: None,
            shadow_agrees: None,
        }
    }
}

/// One `Feedback` report.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRecord {
    /// Request id.
    pub request_id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The model used.
    pub model: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Latency, ms.
    pub latency_ms: Option<f64>,
    /// Input tokens billed.
    pub input_tokens: Option<u32>,
    /// Output tokens billed.
    pub output_tokens: Option<u32>,
    /// Cost paid, USD.
    pub cost_usd: Option<f64>,
    /// Quality in [0,1].
    pub quality: Option<f64>,
    /// The endpoint's provider the attempt went to, when the report names it.
    pub provider: Option<String>,
    /// Time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Generation time, ms (first token to last).
    pub generation_ms: Option<f64>,
    /// A replica of the fleet offered `model` for `request_id`, and this is the first report on
    /// that pair logged as verified (set by `Service::feedback`; false as received).
    pub verified: bool,
    /// `model` was among the models offered for `request_id`, as far as this replica knew.
    pub offered: bool,
    /// The realised cost and the baseline's at the same tokens (`savings`; the `baseline_*`
    /// columns), set by `Service::feedback` (none as received).
    pub baseline: Option<crate::savings::Realised>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `text` as every sink can store it: C0 control characters other than tab, CR and LF (U+0000
/// above all, which PostgreSQL's `text` refuses) become U+FFFD. Borrowed when there is none.
pub fn storable(text: &str) -> Cow<'_, str> {
    let bad = |c: char| c < ' ' && !matches!(c, '\t' | '\r' | '\n');
    if !text.contains(bad) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().map(|c| if bad(c) { char::REPLACEMENT_CHARACTER } else { c }).collect())
}

/// Replaces `s` with its [`storable`] form when that differs.
fn make_storable(s: &mut String) {
    if let Cow::Owned(clean) = storable(s) {
        *s = clean;
    }
}

impl DecisionRecord {
    /// Makes every text field [`storable`] (the writer thread does this before any sink sees it).
    pub fn make_storable(&mut self) {
        let c = &mut self.constraints;
        let lists = [&mut c.allowed_models, &mut c.denied_models, &mut c.allowed_providers, &mut c.denied_providers];
        for s in [&mut self.request_id, &mut self.encoder, &mut self.router_version, &mut self.tradeoff]
            .into_iter()
            .chain(self.routing_text.as_mut())
            .chain(self.profile.as_mut())
            .chain(lists.into_iter().flatten())
            .chain(self.candidates.iter_mut().map(|c| &mut c.model))
            .chain(self.policy.shadow_model.as_mut())
        {
            make_storable(s);
        }
    }

    /// About how many bytes it holds (what the queue's byte bound counts).
    pub fn approx_bytes(&self) -> u64 {
        let c = &self.constraints;
        let texts = [&c.allowed_models, &c.denied_models, &c.allowed_providers, &c.denied_providers]
            .iter()
            .flat_map(|l| l.iter())
            .map(|s| s.len() + 24)
            .sum::<usize>();
        let fixed = std::mem::size_of::<Self>() + self.request_id.len() + self.encoder.len() + self.router_version.len();
        let candidates = self.candidates.iter().map(|c| std::mem::size_of::<LoggedCandidate>() + c.model.len()).sum::<usize>();
        (fixed
            + texts
            + candidates
            + self.tradeoff.len()
            + self.routing_text.as_ref().map_or(0, String::len)
            + self.profile.as_ref().map_or(0, String::len)
            + self.baseline.as_ref().map_or(0, |b| b.baseline_model.len())
            + self.embedding.as_ref().map_or(0, |e| e.len() * 4)) as u64
    }
}

impl FeedbackRecord {
    /// Makes every text field [`storable`].
    pub fn make_storable(&mut self) {
        make_storable(&mut self.request_id);
        make_storable(&mut self.model);
        if let Some(p) = &mut self.provider {
            make_storable(p);
        }
    }

    /// About how many bytes it holds.
    pub fn approx_bytes(&self) -> u64 {
        (std::mem::size_of::<Self>()
            + self.request_id.len()
            + self.model.len()
            + self.provider.as_ref().map_or(0, String::len)
            + self.baseline.as_ref().map_or(0, |b| b.baseline_model.len())) as u64
    }
}

enum Msg {
    // Boxed: records are many times larger than a flush, and the queue holds
    // up to `queue_capacity` of them. Each record carries the bytes it was counted for.
    Decision(Box<DecisionRecord>, u64),
    Feedback(Box<FeedbackRecord>, u64),
    Flush(flume::Sender<()>),
}

/// Counters of the log, for metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Decisions committed.
    pub decisions_written: AtomicU64,
    /// Feedback reports committed.
    pub feedback_written: AtomicU64,
    /// Decisions dropped because the queue was full (in records or in bytes).
    pub decisions_dropped: AtomicU64,
    /// Feedback reports refused because the queue stayed full.
    pub feedback_refused: AtomicU64,
    /// Records lost to a failed write (disk full, I/O error).
    pub write_failures: AtomicU64,
    /// Committed batches.
    pub batches: AtomicU64,
    /// Rows removed by retention.
    pub pruned_rows: AtomicU64,
    /// PostgreSQL: DELETE statements retention ran (each at most `retention::CHUNK` rows).
    pub retention_deletes: AtomicU64,
    /// PostgreSQL: retention passes skipped because another replica held the lock.
    pub retention_skipped: AtomicU64,
    /// Records waiting for the writer.
    pub queued: AtomicU64,
    /// Bytes of the records waiting for the writer (see [`DecisionRecord::approx_bytes`]).
    pub queued_bytes: AtomicU64,
    /// PostgreSQL: records waiting in the spill file now.
    pub spilled: AtomicU64,
    /// PostgreSQL: bytes of the batches waiting in the spill file now.
    pub spill_bytes: AtomicU64,
    /// PostgreSQL: records ever written to the spill file.
    pub spilled_total: AtomicU64,
    /// PostgreSQL: records dropped because the spill file was at `spill_max_bytes`.
    pub spill_dropped: AtomicU64,
    /// PostgreSQL: spilled records meant for another database, set aside instead of replayed.
    pub spill_set_aside: AtomicU64,
    /// PostgreSQL: spilled records since written to PostgreSQL.
    pub replayed: AtomicU64,
    /// PostgreSQL: records refused for good and kept in a dead-letter table.
    pub dead_letters: AtomicU64,
    /// Times the writer thread panicked and was started again.
    pub writer_restarts: AtomicU64,
    /// PostgreSQL: connected (always true for SQLite).
    pub backend_up: AtomicBool,
    last_drop_warning_ms: AtomicU64,
}

/// A record the log did not take.
#[derive(Debug, thiserror::Error)]
pub enum NotQueued {
    /// The queue stayed full (in records or bytes): retry later (RESOURCE_EXHAUSTED).
    #[error("the decision log queue is full ({capacity} records waiting for the writer); retry the report")]
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// The log is closed (the server is stopping) or its writer is gone: retry on another
    /// replica (UNAVAILABLE).
    #[error("the decision log is closed (the server is stopping); retry the report elsewhere")]
    Closed,
}

/// The former name of [`NotQueued`].
pub type QueueFull = NotQueued;

/// Handle to the log: cheap to share; the writer thread stops when [`DecisionLog::close`] runs.
pub struct DecisionLog {
    cfg: LogConfig,
    tx: RwLock<Option<flume::Sender<Msg>>>,
    stats: Arc<LogStats>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl DecisionLog {
    /// Opens (or creates) the database and starts the writer thread. Errors are immediate, so a
    /// server with an unwritable log path does not start.
    pub fn open(cfg: LogConfig) -> Result<Self, LogError> {
        let stats = Arc::new(LogStats::default());
        let sink = match &cfg.url {
            // NOTE: the synchronous client runs a runtime of its own, which Tokio refuses inside
            // another runtime's thread: connect from a plain thread.
            Some(url) => {
                let opened = std::thread::scope(|s| s.spawn(|| postgres::PgSink::open(&cfg, url, &stats)).join());
                Sink::Postgres(Box::new(opened.unwrap_or_else(|p| std::panic::resume_unwind(p))?))
            }
            None => {
                stats.backend_up.store(true, Ordering::Relaxed);
                Sink::Sqlite(store::open_for_writing(&cfg.path, cfg.synchronous == "full")?)
            }
        };
        let (tx, rx) = flume::bounded(cfg.queue_capacity);
        let writer = {
            let (wcfg, stats) = (cfg.clone(), Arc::clone(&stats));
            std::thread::Builder::new()
                .name("pointsman-decision-log".into())
                .spawn(move || supervise(sink, rx, &wcfg, &stats))
                .map_err(|source| LogError::Io { path: cfg.path.clone(), source })?
        };
        let target = match &cfg.url {
            Some(url) => postgres::redact(url),
            None => cfg.path.display().to_string(),
        };
        tracing::info!(%target, store_prompts = cfg.store_prompts, "decision log open");
        Ok(Self { cfg, tx: RwLock::new(Some(tx)), stats, writer: std::sync::Mutex::new(Some(writer)) })
    }

    /// The settings.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// True while the writer thread runs (it restarts itself after a panic; false only if
    /// that failed too, or after [`DecisionLog::close`]): readiness can follow it.
    pub fn writer_running(&self) -> bool {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|h| !h.is_finished())
    }

    fn sender(&self) -> Option<flume::Sender<Msg>> {
        self.tx.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues a decision without waiting; a full queue (in records or bytes) drops it and
    /// counts it.
    pub fn log_decision(&self, rec: DecisionRecord) {
        let Some(tx) = self.sender() else { return };
        let bytes = rec.approx_bytes();
        // Counted before it is sent, so the writer's subtraction never comes first.
        let before = self.stats.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.cfg.queue_max_bytes {
            self.stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped("bytes");
            return;
        }
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if tx.try_send(Msg::Decision(Box::new(rec), bytes)).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped("records");
        }
    }

    fn dropped(&self, full_in: &'static str) {
        let dropped = self.stats.decisions_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms() as u64;
        let last = self.stats.last_drop_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self.stats.last_drop_warning_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                dropped_total = dropped,
                full_in,
                capacity = self.cfg.queue_capacity,
                max_bytes = self.cfg.queue_max_bytes,
                "decision log queue full: decisions are being dropped (routing continues)"
            );
        }
    }

    /// Queues a feedback report, waiting up to `feedback_wait_ms` for room.
    pub async fn log_feedback(&self, rec: FeedbackRecord) -> Result<(), NotQueued> {
        let Some(tx) = self.sender() else { return Err(NotQueued::Closed) };
        let wait = Duration::from_millis(self.cfg.feedback_wait_ms);
        let bytes = rec.approx_bytes();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.stats.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let sent = tokio::time::timeout(wait, tx.send_async(Msg::Feedback(Box::new(rec), bytes))).await;
        if matches!(sent, Ok(Ok(()))) {
            return Ok(());
        }
        self.stats.queued.fetch_sub(1, Ordering::Relaxed);
        self.stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        match sent {
            Ok(Err(_disconnected)) => {
                tracing::warn!("decision log closed: a feedback report was refused");
                Err(NotQueued::Closed)
            }
            _ => {
                self.stats.feedback_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(capacity = self.cfg.queue_capacity, "decision log queue full: a feedback report was refused");
                Err(NotQueued::Full { capacity: self.cfg.queue_capacity })
            }
        }
    }

    /// Waits until everything queued before this call is committed.
    pub async fn flush(&self) {
        let Some(tx) = self.sender() else { return };
        let (ack_tx, ack_rx) = flume::bounded(1);
        if tx.send_async(Msg::Flush(ack_tx)).await.is_ok() {
            let _ = ack_rx.recv_async().await;
        }
    }

    /// Stops accepting records, drains the queue and waits for the writer (blocking).
    pub fn close(&self) {
        self.tx.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for DecisionLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Where the writer thread commits batches.
enum Sink {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::PgSink>),
}

impl Sink {
    /// Commits a batch. PostgreSQL's failures are handled inside (spill, dead letters): an
    /// error here means the records are lost.
    fn write(&mut self, decisions: &[DecisionRecord], feedback: &[FeedbackRecord], stats: &LogStats) -> Result<(), LogError> {
        match self {
            Sink::Sqlite(conn) => {
                // One retry covers a transient SQLITE_BUSY from an external writer.
                let mut result = store::write_batch(conn, decisions, feedback);
                if result.is_err() {
                    std::thread::sleep(Duration::from_millis(50));
                    result = store::write_batch(conn, decisions, feedback);
                }
                result.map_err(|source| LogError::Db { path: conn.path().unwrap_or("decision log").into(), source })
            }
            Sink::Postgres(pg) => pg.write(decisions, feedback, stats),
        }
    }

    /// SQLite's retention, between batches (PostgreSQL's runs on a thread of its own).
    fn enforce_retention(&mut self, cfg: &LogConfig, stats: &LogStats) {
        let Sink::Sqlite(conn) = self else { return };
        let min_ts = (cfg.max_age_days > 0.0).then(|| now_ms() - (cfg.max_age_days * 86_400_000.0) as i64);
        match store::enforce_retention(conn, min_ts, cfg.max_bytes).map(|p| p.decisions + p.feedback) {
            Ok(0) => {}
            Ok(n) => {
                stats.pruned_rows.fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(rows = n, "decision log retention removed old rows");
            }
            Err(e) => tracing::error!(error = %e, "decision log retention failed"),
        }
    }

    /// Work between batches (replaying spilled batches). Returns how soon to come back for more.
    fn between_batches(&mut self, stats: &LogStats) -> Option<Duration> {
        match self {
            Sink::Sqlite(_) => None,
            Sink::Postgres(pg) => {
                pg.replay(stats, Duration::from_millis(200));
                pg.backlog().then_some(Duration::from_millis(250))
            }
        }
    }
}

/// Runs the writer; after a panic (a bug), logs it, counts it and runs it again on the same
/// queue and sink, so the log goes on (the batch in hand is lost and counted as failed).
fn supervise(mut sink: Sink, rx: flume::Receiver<Msg>, cfg: &LogConfig, stats: &LogStats) {
    loop {
        let mut in_hand = 0u64;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer_loop(&mut sink, &rx, cfg, stats, &mut in_hand)));
        let Err(panic) = run else { break };
        let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        stats.write_failures.fetch_add(in_hand, Ordering::Relaxed);
        let restarts = stats.writer_restarts.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(
            panic = what.as_deref().unwrap_or("?"),
            records_lost = in_hand,
            restarts,
            "decision log writer panicked; restarting it"
        );
        // A panic on every batch must not spin.
        std::thread::sleep(Duration::from_millis(100));
    }
    // Shutdown: one last try to empty the spill file (it is replayed at the next start anyway).
    sink.between_batches(stats);
    tracing::debug!("decision log writer stopped");
}

/// The writer: batches from the queue to the sink until the queue closes. `in_hand` is the
/// number of records taken off the queue and not yet committed or counted.
fn writer_loop(sink: &mut Sink, rx: &flume::Receiver<Msg>, cfg: &LogConfig, stats: &LogStats, in_hand: &mut u64) {
    let mut last_retention = Instant::now() - Duration::from_secs(cfg.retention_interval_seconds);
    let linger = Duration::from_millis(cfg.linger_ms);
    // Waits for the next record, or until `wake` passes when the sink has work of its own.
    let mut wake = sink.between_batches(stats);
    loop {
        let first = match wake {
            Some(after) => match rx.recv_timeout(after) {
                Ok(m) => m,
                Err(flume::RecvTimeoutError::Timeout) => {
                    wake = sink.between_batches(stats);
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        if !linger.is_zero() && !matches!(first, Msg::Flush(_)) {
            std::thread::sleep(linger);
        }
        let mut batch = vec![first];
        while batch.len() < cfg.batch_max {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let (mut decisions, mut feedback, mut acks, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for m in batch {
            match m {
                Msg::Decision(d, b) => {
                    decisions.push(*d);
                    bytes += b;
                }
                Msg::Feedback(f, b) => {
                    feedback.push(*f);
                    bytes += b;
                }
                Msg::Flush(ack) => acks.push(ack),
            }
        }
        let n = (decisions.len() + feedback.len()) as u64;
        stats.queued.fetch_sub(n, Ordering::Relaxed);
        stats.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
        *in_hand = n;
        if n > 0 {
            // Text every sink can store, made so here, off the Route path.
            decisions.iter_mut().for_each(DecisionRecord::make_storable);
            feedback.iter_mut().for_each(FeedbackRecord::make_storable);
            #[cfg(test)]
            if decisions.iter().any(|d| d.request_id == tests::PANIC_ID) {
                panic!("a test asked the writer to panic");
            }
            match sink.write(&decisions, &feedback, stats) {
                Ok(()) => {
                    stats.decisions_written.fetch_add(decisions.len() as u64, Ordering::Relaxed);
                    stats.feedback_written.fetch_add(feedback.len() as u64, Ordering::Relaxed);
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.write_failures.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(error = %e, records = n, "decision log write failed; these records are lost");
                }
            }
        }
        *in_hand = 0;
        wake = sink.between_batches(stats);
        for ack in acks {
            let _ = ack.send(());
        }
        if last_retention.elapsed() >= Duration::from_secs(cfg.retention_interval_seconds) {
            last_retention = Instant::now();
            sink.enforce_retention(cfg, stats);
        }
    }
}

/// The labelled feedback in `scope` of a decision log (a SQLite file or a `postgres://` URL) as
/// training lines, with why the other reports have none.
pub fn read_training_lines(
    source: &std::path::Path,
    scope: store::FeedbackScope,
) -> Result<(Vec<pointsman_core::record::LogRecord>, store::ExportSkips), LogError> {
    match source.to_str().filter(|s| postgres::is_url(s)) {
        Some(url) => postgres::training_lines(url, scope),
        None => store::training_lines(source, scope),
    }
}

/// Row counts (decisions, feedback) of a decision log (a SQLite file or a `postgres://` URL).
pub fn read_counts(source: &std::path::Path) -> Result<(i64, i64), LogError> {
    match source.to_str().filter(|s| postgres::is_url(s)) {
        Some(url) => postgres::counts(url),
        None => store::counts(source),
    }
}

/// True when `source` names a decision log (a SQLite file or a `postgres://` URL) rather than a
/// routing-log file.
pub fn is_decision_log(source: &std::path::Path) -> bool {
    source.to_str().is_some_and(postgres::is_url) || store::is_sqlite(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decision with this request id makes the writer panic (to test its supervision).
    pub(super) const PANIC_ID: &str = "test-writer-panic";

    fn decision(i: usize, ts_ms: i64) -> DecisionRecord {
        DecisionRecord {
            request_id: format!("r{i}"),
            ts_ms,
            routing_text: Some(format!("prompt {}", i % 3)),
            embedding: None,
            encoder: "enc".into(),
            router_version: "v".into(),
            cost_weight: 0.5,
            profile: Some("balanced".into()),
            constraints: crate::policy::Constraints::default(),
            tradeoff: "default".into(),
            input_tokens: 7,
            candidates: vec![],
            policy: DecisionPolicy::default(),
            session: None,
            baseline: None,
        }
    }

    fn feedback(i: usize, ts_ms: i64, quality: Option<f64>, outcome: Outcome) -> FeedbackRecord {
        FeedbackRecord {
            request_id: format!("r{i}"),
            ts_ms,
            model: "m".into(),
            outcome,
            latency_ms: Some(10.0),
            input_tokens: Some(7),
            output_tokens: Some(20),
            cost_usd: Some(0.001),
            quality,
            provider: (i == 0).then(|| "p".into()),
            ttft_ms: (i == 0).then_some(3.0),
            generation_ms: (i == 0).then_some(5.0),
            verified: true,
            offered: true,
            baseline: None,
        }
    }

    #[tokio::test]
    async fn records_are_committed_joined_and_exported() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { path: dir.path().join("sub/log.db"), batch_max: 3, ..LogConfig::default() };
        let log = DecisionLog::open(cfg.clone()).unwrap();
        for i in 0..5 {
            log.log_decision(decision(i, now_ms()));
        }
        log.log_feedback(feedback(0, now_ms(), Some(0.75), Outcome::Success)).await.unwrap();
        log.log_feedback(feedback(1, now_ms(), None, Outcome::Refused)).await.unwrap();
        log.log_feedback(feedback(2, now_ms(), None, Outcome::Timeout)).await.unwrap();
        log.log_feedback(feedback(99, now_ms(), Some(1.0), Outcome::Success)).await.unwrap();
        log.flush().await;
        assert_eq!(store::counts(&cfg.path).unwrap(), (5, 4));
        let (lines, skips) = store::training_lines(&cfg.path, store::FeedbackScope::Verified).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].score, lines[0].prompt.as_str()), (0.75, "prompt 0"));
        assert_eq!((lines[1].score, lines[1].prompt.as_str()), (0.0, "prompt 1"));
        assert_ne!(lines[0].prompt_id, lines[1].prompt_id);
        assert_eq!(skips, store::ExportSkips { no_decision: 1, no_quality: 1, ..Default::default() });
        log.close();
        assert_eq!(log.stats().decisions_written.load(Ordering::Relaxed), 5);
        // After close nothing is accepted, and nothing panics.
        log.log_decision(decision(9, now_ms()));
        let closed = log.log_feedback(feedback(9, now_ms(), None, Outcome::Success)).await;
        assert!(matches!(closed, Err(NotQueued::Closed)), "{closed:?}");
    }

    #[test]
    fn the_byte_bounds_are_validated_naming_key_limit_and_value() {
        let e = LogConfig { queue_max_bytes: 100, ..LogConfig::default() }.validate().unwrap_err().to_string();
        assert!(e.contains("decision_log.queue_max_bytes") && e.contains(">= 65536") && e.contains("100"), "{e}");
        let pg = LogConfig { url: Some("postgres://db/log".into()), ..LogConfig::default() };
        let e = LogConfig { spill_max_bytes: 5000, ..pg.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("decision_log.spill_max_bytes") && e.contains(">= 1048576") && e.contains("5000"), "{e}");
        assert!(LogConfig { spill_max_bytes: 0, ..pg }.validate().is_ok(), "0: no cap");
    }

    #[test]
    fn storable_text_has_no_control_characters_but_tabs_and_newlines() {
        assert!(matches!(storable("plain\ttext\r\n"), Cow::Borrowed(_)));
        assert_eq!(storable("a\u{0}b\u{1b}c\u{7f}d"), "a\u{fffd}b\u{fffd}c\u{7f}d");
        let mut d = decision(0, 0);
        d.request_id = "r\u{0}".into();
        d.routing_text = Some("\u{0}".into());
        d.constraints.allowed_models = vec!["m\u{1}".into()];
        d.make_storable();
        assert_eq!((d.request_id.as_str(), d.routing_text.as_deref()), ("r\u{fffd}", Some("\u{fffd}")));
        assert_eq!(d.constraints.allowed_models, ["m\u{fffd}"]);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_the_writer_survives_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { path: dir.path().join("log.db"), queue_max_bytes: 65_536, linger_ms: 0, ..LogConfig::default() };
        let log = DecisionLog::open(cfg.clone()).unwrap();
        let mut big = decision(0, now_ms());
        big.routing_text = Some("x".repeat(70_000));
        log.log_decision(big);
        assert_eq!(log.stats().decisions_dropped.load(Ordering::Relaxed), 1, "over queue_max_bytes: dropped and counted");
        let mut nul = decision(1, now_ms());
        nul.routing_text = Some("a\u{0}b".into());
        log.log_decision(nul);
        log.flush().await;
        let mut boom = decision(2, now_ms());
        boom.request_id = tests::PANIC_ID.into();
        log.log_decision(boom);
        log.flush().await;
        for i in 3..50 {
            log.log_decision(decision(i, now_ms()));
        }
        log.flush().await;
        let s = log.stats();
        assert_eq!(s.writer_restarts.load(Ordering::Relaxed), 1);
        assert_eq!(s.write_failures.load(Ordering::Relaxed), 1, "the batch in hand at the panic");
        assert!(log.writer_running());
        assert_eq!((s.queued.load(Ordering::Relaxed), s.queued_bytes.load(Ordering::Relaxed)), (0, 0));
        assert_eq!(store::counts(&cfg.path).unwrap(), (48, 0));
        let conn = store::open_for_reading(&cfg.path).unwrap();
        let text: String = conn.query_row("SELECT routing_text FROM decisions WHERE request_id = 'r1'", [], |r| r.get(0)).unwrap();
        assert_eq!(text, "a\u{fffd}b");
    }

    #[test]
    fn retention_removes_old_rows_and_keeps_the_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut conn = store::open_for_writing(&path, false).unwrap();
        let now = now_ms();
        let old: Vec<_> = (0..50).map(|i| decision(i, now - 40 * 86_400_000)).collect();
        let new: Vec<_> = (50..2050).map(|i| decision(i, now - 2050 + i as i64)).collect();
        store::write_batch(&mut conn, &old, &[feedback(1, now - 40 * 86_400_000, Some(1.0), Outcome::Success)]).unwrap();
        store::write_batch(&mut conn, &new, &[]).unwrap();
        let p = store::enforce_retention(&mut conn, Some(now - 30 * 86_400_000), 0).unwrap();
        assert_eq!(p, store::Pruned { decisions: 50, feedback: 1 });
        let before = store::used_bytes(&conn).unwrap();
        let limit = (before / 2) as u64;
        store::enforce_retention(&mut conn, None, limit).unwrap();
        assert!(store::used_bytes(&conn).unwrap() <= limit as i64);
        // The newest rows are the ones kept.
        let newest: String = conn.query_row("SELECT request_id FROM decisions ORDER BY ts_ms DESC LIMIT 1", [], |r| r.get(0)).unwrap();
        assert_eq!(newest, "r2049");
        let oldest: i64 = conn.query_row("SELECT min(ts_ms) FROM decisions", [], |r| r.get(0)).unwrap();
        assert!(oldest > now - 2050 + 500, "the oldest rows went first");
    }

    #[test]
    fn embeddings_round_trip_and_a_newer_schema_is_refused() {
        let v = [0.5f32, -1.25, 3.0];
        assert_eq!(store::embedding_from_bytes(&store::embedding_bytes(&v)).unwrap(), v);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        drop(store::open_for_writing(&path, false).unwrap());
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let e = store::open_for_writing(&path, false).err().unwrap().to_string();
        assert!(e.contains("schema version 99"), "{e}");
    }

    #[test]
    fn a_version_1_file_gains_the_trust_columns_and_its_reports_are_unverified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            // A file as version 1 wrote it.
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE decisions (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, routing_text TEXT,
                     embedding BLOB, encoder TEXT NOT NULL, router_version TEXT NOT NULL, cost_weight REAL NOT NULL, profile TEXT,
                     constraints TEXT NOT NULL, input_tokens INTEGER NOT NULL, candidates TEXT NOT NULL);
                 CREATE TABLE feedback (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, model TEXT NOT NULL,
                     outcome TEXT NOT NULL, latency_ms REAL, input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, quality REAL);
                 INSERT INTO decisions VALUES (1, 'r0', 1, 'old prompt', NULL, 'e', 'v', 0.5, NULL, '{}', 3, '[]');
                 INSERT INTO feedback VALUES (1, 'r0', 2, 'm', 'success', NULL, NULL, 20, NULL, 0.5);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        // Read before any server opened it: unverified, exported only on request.
        let (lines, skips) = store::training_lines(&path, store::FeedbackScope::Verified).unwrap();
        assert_eq!((lines.len(), skips.not_offered), (0, 1));
        assert_eq!(store::training_lines(&path, store::FeedbackScope::All).unwrap().0.len(), 1);
        // Opened for writing: migrated, old rows unverified, new rows carry their flags.
        let mut conn = store::open_for_writing(&path, false).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, store::SCHEMA_VERSION);
        store::write_batch(&mut conn, &[decision(1, 3)], &[feedback(1, 4, Some(0.25), Outcome::Success)]).unwrap();
        let repeat = FeedbackRecord { verified: false, ..feedback(1, 5, Some(1.0), Outcome::Success) };
        let not_offered = FeedbackRecord { verified: false, offered: false, ..feedback(1, 6, Some(0.0), Outcome::Success) };
        store::write_batch(&mut conn, &[], &[repeat, not_offered]).unwrap();
        drop(conn);
        drop(store::open_for_writing(&path, false).unwrap());
        let (lines, skips) = store::training_lines(&path, store::FeedbackScope::Verified).unwrap();
        assert_eq!(lines.iter().map(|l| l.score).collect::<Vec<_>>(), [0.25]);
        assert_eq!((skips.not_offered, skips.unverified), (2, 1));
        assert_eq!(store::training_lines(&path, store::FeedbackScope::All).unwrap().0.len(), 4);
    }
}
