//! The decision log on PostgreSQL, for a fleet of replicas writing one log.
//!
//! The same records as the SQLite log, in the same two tables, created and upgraded by
//! versioned migrations (`migrations/postgres/`, applied under an advisory lock so replicas
//! starting together apply each one once). Every row carries a UUIDv7 id made by the replica,
//! and inserts skip ids already present, so a batch written twice lands once.
//!
//! The writer thread sends each batch as one multi-row INSERT per table (arrays through
//! `unnest`, one prepared statement whatever the batch size). When PostgreSQL is unreachable, a
//! write fails, or it takes longer than `write_timeout_ms` (a stalled server), the batch goes to
//! a local SQLite spill file instead, and the spill is replayed, oldest first, once PostgreSQL
//! answers again; a record leaves the spill file only after its batch is committed. Nothing on
//! the Route path waits for any of this.
//!
//! The client is `tokio-postgres`, driven by a single-thread runtime of the connection's own
//! ([`Db`]), so that every call from the (synchronous) writer thread has a time limit. TLS
//! (rustls) is asked for in the URL with libpq's `sslmode` and `sslrootcert` ([`transport`]).
use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use super::{
    store::{self, ExportSkips, FeedbackScope, Joined},
    DecisionRecord, FeedbackRecord, LogConfig, LogError, LogStats,
};
use crate::learning::LogRecord;

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "decision log tables", include_str!("../../migrations/postgres/0001_decision_log.sql")),
    (2, "feedback trust", include_str!("../../migrations/postgres/0002_feedback_trust.sql")),
];

/// The advisory lock key that serialises migrations across replicas ("pointsmn" in ASCII).
const MIGRATION_LOCK: i64 = 0x706f_696e_7473_6d6e;

/// True for a `postgres://` or `postgresql://` URL.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((userinfo, host)) = rest.split_once('@') else { return url.to_string() };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

fn pg_err(url: &str) -> impl Fn(tokio_postgres::Error) -> LogError + '_ {
    move |source| LogError::Postgres { url: redact(url), detail: describe(&source), source: Some(source) }
}

fn timed_out(url: &str, limit: Duration) -> LogError {
    LogError::Postgres { url: redact(url), detail: format!("no answer in {} ms", limit.as_millis()), source: None }
}

/// What went wrong, in full: the server's code and message, or the client's error and its cause
/// (the client's own Display says only "db error" or "error connecting to server").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// True when the server itself answered with an error (authentication, a missing database, a
/// constraint) or the TLS settings do not fit it (a certificate that does not verify, a server
/// without TLS): a configuration or schema problem rather than an unreachable server.
pub fn answered(e: &LogError) -> bool {
    // tokio-postgres exposes no error kind; its TLS kind displays as this (0.7).
    let tls = |s: &tokio_postgres::Error| s.to_string().starts_with("error performing TLS handshake");
    matches!(e, LogError::Postgres { source: Some(s), .. } if s.as_db_error().is_some() || tls(s)) || matches!(e, LogError::Schema { .. })
}

/// How a URL asks to reach its server: libpq's `sslmode` and `sslrootcert` parameters, so that
/// a URL written for `psql` works unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// No `sslmode`, or `disable`, `allow` or `prefer`: plaintext (an unverified TLS session
    /// would protect against nothing an attacker on the path cannot undo).
    Plain,
    /// `require`, `verify-ca` or `verify-full`: TLS, the server's certificate verified against
    /// `sslrootcert` (a PEM file of CA certificates) or else the system's roots, and its host
    /// name checked, whichever of the three is given (stricter than libpq's `require`).
    Tls {
        /// `sslrootcert`.
        root_cert: Option<PathBuf>,
    },
}

/// Splits `sslmode` and `sslrootcert` off `url`: the URL tokio-postgres is given (with
/// `sslmode=require` or `sslmode=disable`) and the transport.
pub fn transport(url: &str) -> Result<(String, Transport), String> {
    let Some((base, query)) = url.split_once('?') else { return Ok((format!("{url}?sslmode=disable"), Transport::Plain)) };
    let (mut mode, mut root_cert, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root_cert = Some(PathBuf::from(percent_decode(v).map_err(|m| format!("sslrootcert: {m}"))?)),
            _ => rest.push(pair),
        }
    }
    let transport = match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => {
            if root_cert.is_some() {
                return Err(format!(
                    "sslrootcert is given but sslmode is {}: add sslmode=verify-full to use TLS",
                    mode.as_deref().unwrap_or("unset")
                ));
            }
            Transport::Plain
        }
        Some("require" | "verify-ca" | "verify-full") => Transport::Tls { root_cert },
        Some(other) => {
            return Err(format!("sslmode must be disable, allow, prefer, require, verify-ca or verify-full. Given: `{other}`"));
        }
    };
    rest.push(if matches!(transport, Transport::Plain) { "sslmode=disable" } else { "sslmode=require" });
    Ok((format!("{base}?{}", rest.join("&")), transport))
}

/// `%XX` escapes of a URL parameter.
fn percent_decode(v: &str) -> Result<String, String> {
    let (bytes, mut out, mut i) = (v.as_bytes(), Vec::new(), 0);
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = v.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| format!("bad escape in `{v}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{v}` is not UTF-8"))
}

/// The rustls client settings of [`Transport::Tls`]: the CA certificates of `root_cert`, or the
/// system's.
pub fn client_tls(root_cert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("sslrootcert {}: no PEM certificate in it", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("sslmode asks for TLS and the system has no root certificates: set sslrootcert to the server's CA".into());
            }
        }
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// Longest wait for a migration (another replica may hold the migration lock) or a read.
const SLOW: Duration = Duration::from_secs(600);

/// Runs `fut` on `rt` for at most `limit`.
fn block<T>(
    rt: &Runtime,
    url: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, LogError> {
    match rt.block_on(async { tokio::time::timeout(limit, fut).await }) {
        Ok(r) => r.map_err(pg_err(url)),
        Err(_elapsed) => Err(timed_out(url, limit)),
    }
}

/// One PostgreSQL connection with a single-thread runtime of its own: every call blocks the
/// calling (non-async) thread for at most its time limit. Dropping it closes the connection.
pub struct Db {
    rt: Runtime,
    client: Client,
    url: String,
}

impl Db {
    /// Connects within `timeout`.
    pub fn connect(url: &str, timeout: Duration) -> Result<Db, LogError> {
        let (pg_url, transport) = transport(url).map_err(|message| LogError::Schema { path: redact(url).into(), message })?;
        let mut config = tokio_postgres::Config::from_str(&pg_url).map_err(pg_err(url))?;
        config.application_name("pointsman").connect_timeout(timeout).keepalives(true).keepalives_idle(Duration::from_secs(30));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| LogError::Io { path: redact(url).into(), source })?;
        let client = match transport {
            Transport::Plain => Self::open(&rt, url, timeout, &config, NoTls)?,
            Transport::Tls { root_cert } => {
                let tls = client_tls(root_cert.as_deref()).map_err(|message| LogError::Schema { path: redact(url).into(), message })?;
                Self::open(&rt, url, timeout, &config, tokio_postgres_rustls::MakeRustlsConnect::new(tls))?
            }
        };
        Ok(Db { rt, client, url: url.to_string() })
    }

    /// Connects through `tls` (plaintext or rustls) and drives the connection on `rt`.
    fn open<T>(rt: &Runtime, url: &str, timeout: Duration, config: &tokio_postgres::Config, tls: T) -> Result<Client, LogError>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = block(rt, url, timeout, config.connect(tls))?;
        rt.spawn(async move { connection.await.map_err(|e| tracing::debug!(error = %e, "decision log: PostgreSQL connection ended")) });
        Ok(client)
    }

    /// True once the connection is known to be gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Applies the migrations this build knows and the database lacks; returns the schema
    /// version. Refuses a database migrated by a newer build.
    pub fn migrate(&mut self) -> Result<i32, LogError> {
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        let Db { rt, client, url } = self;
        let current = block(rt, url, SLOW, async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS pointsman_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
            let current: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM pointsman_migrations", &[]).await?.get(0);
            if current <= latest {
                for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
                    tx.batch_execute(sql).await?;
                    tx.execute("INSERT INTO pointsman_migrations (version, name) VALUES ($1, $2)", &[version, name]).await?;
                    tracing::info!(version, name, "decision log: applied PostgreSQL migration");
                }
                tx.commit().await?;
            }
            Ok(current)
        })?;
        if current > latest {
            return Err(LogError::Schema {
                path: redact(url).into(),
                message: format!("schema version {current} is newer than this build's {latest}; upgrade pointsman"),
            });
        }
        Ok(latest)
    }

    /// Writes one batch in one transaction within `limit`; returns the rows that were new (a
    /// replayed batch that had already landed adds none).
    pub(crate) fn insert(&mut self, rows: &Rows, limit: Duration) -> Result<u64, LogError> {
        let Db { rt, client, url } = self;
        block(rt, url, limit, insert(client, rows))
    }

    /// The first column of the first row of `sql`, as a bigint.
    pub fn query_i64(&mut self, sql: &str) -> Result<i64, LogError> {
        let Db { rt, client, url } = self;
        block(rt, url, SLOW, async { Ok(client.query_one(sql, &[]).await?.get::<_, i64>(0)) })
    }

    fn delete_older(&mut self, min_ts_ms: i64, limit: Duration) -> Result<u64, LogError> {
        let Db { rt, client, url } = self;
        block(rt, url, limit, async {
            let d = client.execute("DELETE FROM decisions WHERE ts_ms < $1", &[&min_ts_ms]).await?;
            let f = client.execute("DELETE FROM feedback WHERE ts_ms < $1", &[&min_ts_ms]).await?;
            Ok(d + f)
        })
    }
}

/// A decision as stored: what the writer sends and what the spill file keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DecisionRow {
    id: Uuid,
    request_id: String,
    ts_ms: i64,
    routing_text: Option<String>,
    embedding: Option<Vec<u8>>,
    encoder: String,
    router_version: String,
    cost_weight: f64,
    profile: Option<String>,
    constraints: String,
    input_tokens: i32,
    candidates: String,
}

/// A feedback report as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FeedbackRow {
    id: Uuid,
    request_id: String,
    ts_ms: i64,
    model: String,
    outcome: String,
    latency_ms: Option<f64>,
    input_tokens: Option<i32>,
    output_tokens: Option<i32>,
    cost_usd: Option<f64>,
    quality: Option<f64>,
    // Absent from batches spilled by a build before the trust columns: unverified.
    #[serde(default)]
    verified: bool,
    #[serde(default)]
    offered: bool,
}

/// One write batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rows {
    decisions: Vec<DecisionRow>,
    feedback: Vec<FeedbackRow>,
}

impl Rows {
    /// Gives every record its id (UUIDv7: time-ordered, unique across replicas).
    pub(crate) fn new(decisions: &[DecisionRecord], feedback: &[FeedbackRecord]) -> Self {
        let count = |n: Option<u32>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        Rows {
            decisions: decisions
                .iter()
                .map(|d| DecisionRow {
                    id: Uuid::now_v7(),
                    request_id: d.request_id.clone(),
                    ts_ms: d.ts_ms,
                    routing_text: d.routing_text.clone(),
                    embedding: d.embedding.as_deref().map(store::embedding_bytes),
                    encoder: d.encoder.clone(),
                    router_version: d.router_version.clone(),
                    cost_weight: d.cost_weight,
                    profile: d.profile.clone(),
                    constraints: store::constraints_json(d),
                    input_tokens: i32::try_from(d.input_tokens).unwrap_or(i32::MAX),
                    candidates: serde_json::to_string(&d.candidates).unwrap_or_else(|_| "[]".into()),
                })
                .collect(),
            feedback: feedback
                .iter()
                .map(|f| FeedbackRow {
                    id: Uuid::now_v7(),
                    request_id: f.request_id.clone(),
                    ts_ms: f.ts_ms,
                    model: f.model.clone(),
                    outcome: f.outcome.as_str().to_string(),
                    latency_ms: f.latency_ms,
                    input_tokens: count(f.input_tokens),
                    output_tokens: count(f.output_tokens),
                    cost_usd: f.cost_usd,
                    quality: f.quality,
                    verified: f.verified,
                    offered: f.offered,
                })
                .collect(),
        }
    }

    fn len(&self) -> usize {
        self.decisions.len() + self.feedback.len()
    }
}

const INSERT_DECISIONS: &str = "
INSERT INTO decisions (id, request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints, input_tokens, candidates)
SELECT id, request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints::jsonb, input_tokens, candidates::jsonb
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[], $6::text[], $7::text[], $8::float8[], $9::text[], $10::text[], $11::int4[], $12::text[])
    AS t(id, request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints, input_tokens, candidates)
ON CONFLICT (id) DO NOTHING";

const INSERT_FEEDBACK: &str = "
INSERT INTO feedback (id, request_id, ts_ms, model, outcome, latency_ms, input_tokens, output_tokens, cost_usd, quality, verified, offered)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::float8[], $7::int4[], $8::int4[], $9::float8[], $10::float8[], $11::bool[], $12::bool[])
ON CONFLICT (id) DO NOTHING";

async fn insert(client: &mut Client, rows: &Rows) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut added = 0;
    if !rows.decisions.is_empty() {
        let d = &rows.decisions;
        added += tx
            .execute(
                INSERT_DECISIONS,
                &[
                    &d.iter().map(|r| r.id).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.routing_text.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.embedding.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.encoder.as_str()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.router_version.as_str()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.cost_weight).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.profile.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.constraints.as_str()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.input_tokens).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.candidates.as_str()).collect::<Vec<_>>(),
                ],
            )
            .await?;
    }
    if !rows.feedback.is_empty() {
        let f = &rows.feedback;
        added += tx
            .execute(
                INSERT_FEEDBACK,
                &[
                    &f.iter().map(|r| r.id).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.model.as_str()).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.latency_ms).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.input_tokens).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.output_tokens).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.cost_usd).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.quality).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.verified).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.offered).collect::<Vec<_>>(),
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(added)
}

/// The local SQLite file that holds batches PostgreSQL could not take, oldest first.
struct Spill {
    path: PathBuf,
    conn: Option<rusqlite::Connection>,
    /// Records waiting in the file.
    records: u64,
}

impl Spill {
    /// Opens (creating) the file and takes it for this process alone: the batches a previous
    /// run left are replayed, and a second replica pointed at the same file is refused (it
    /// would replay, and count, this one's batches).
    fn open(path: PathBuf) -> Result<Self, LogError> {
        let mut spill = Spill { path, conn: None, records: 0 };
        let path = spill.path.clone();
        let in_use = |err: &rusqlite::Error| LogError::Schema {
            path: path.clone(),
            message: format!("the spill file is in use by another process ({err}); give each replica its own decision_log.spill_path"),
        };
        let busy = |err: &rusqlite::Error| {
            matches!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
        };
        let e = store::db_err(&path);
        let conn = match spill.connect() {
            Ok(c) => c,
            Err(LogError::Db { source, .. }) if busy(&source) => return Err(in_use(&source)),
            Err(other) => return Err(other),
        };
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(e)?;
        if let Err(err) = conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;") {
            return Err(if busy(&err) { in_use(&err) } else { e(err) });
        }
        let records: i64 = conn.query_row("SELECT coalesce(sum(records), 0) FROM spill", [], |r| r.get(0)).map_err(e)?;
        spill.records = records as u64;
        Ok(spill)
    }

    fn connect(&mut self) -> Result<&mut rusqlite::Connection, LogError> {
        if self.conn.is_none() {
            let e = store::db_err(&self.path);
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| LogError::Io { path: dir.to_path_buf(), source })?;
            }
            let conn = rusqlite::Connection::open(&self.path).map_err(e)?;
            // The file is this process's alone (see `open`): another holder is an error, not a wait.
            conn.busy_timeout(std::time::Duration::ZERO).map_err(e)?;
            conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
            // Each spilled batch is the only copy of records already acknowledged: FULL.
            conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
            conn.execute_batch("CREATE TABLE IF NOT EXISTS spill (seq INTEGER PRIMARY KEY, records INTEGER NOT NULL, batch TEXT NOT NULL)")
                .map_err(e)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn push(&mut self, rows: &Rows) -> Result<(), LogError> {
        let path = self.path.clone();
        let json = serde_json::to_string(rows).map_err(|e| LogError::Schema { path: path.clone(), message: e.to_string() })?;
        self.connect()?
            .execute("INSERT INTO spill (records, batch) VALUES (?1, ?2)", rusqlite::params![rows.len() as i64, json])
            .map_err(store::db_err(&path))?;
        self.records += rows.len() as u64;
        Ok(())
    }

    /// The oldest spilled batch.
    fn oldest(&mut self) -> Result<Option<(i64, Rows)>, LogError> {
        let path = self.path.clone();
        let e = store::db_err(&path);
        let row: Option<(i64, String)> = {
            use rusqlite::OptionalExtension;
            self.connect()?
                .query_row("SELECT seq, batch FROM spill ORDER BY seq LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(e)?
        };
        row.map(|(seq, json)| {
            serde_json::from_str(&json)
                .map(|rows| (seq, rows))
                .map_err(|err| LogError::Schema { path: path.clone(), message: format!("spilled batch {seq} is unreadable: {err}") })
        })
        .transpose()
    }

    fn remove(&mut self, seq: i64, records: usize) -> Result<(), LogError> {
        let path = self.path.clone();
        self.connect()?.execute("DELETE FROM spill WHERE seq = ?1", [seq]).map_err(store::db_err(&path))?;
        self.records = self.records.saturating_sub(records as u64);
        Ok(())
    }
}

/// The longest a connection attempt takes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a failed connection waits before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The writer thread's side of the PostgreSQL log.
pub(crate) struct PgSink {
    url: String,
    write_timeout: Duration,
    client: Option<Db>,
    next_try: Instant,
    spill: Spill,
    migrated: bool,
}

impl PgSink {
    /// Connects and migrates. A server that answers with an error (authentication, a missing
    /// database, a schema from a newer build) is a configuration error and fails here; a server
    /// that does not answer is not: records spill until it does.
    pub(crate) fn open(cfg: &LogConfig, url: &str, stats: &LogStats) -> Result<Self, LogError> {
        let spill = Spill::open(cfg.spill_path.clone())?;
        stats.spilled.store(spill.records, Ordering::Relaxed);
        let mut sink = PgSink {
            url: url.to_string(),
            write_timeout: Duration::from_millis(cfg.write_timeout_ms),
            client: None,
            next_try: Instant::now(),
            spill,
            migrated: false,
        };
        match sink.try_connect(stats) {
            Ok(()) => {}
            Err(e) if answered(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(url = %redact(url), error = %e, spill = %cfg.spill_path.display(),
                    "decision log: PostgreSQL is unreachable; records spill to the local file until it answers");
            }
        }
        if sink.spill.records > 0 {
            tracing::info!(records = sink.spill.records, spill = %cfg.spill_path.display(), "decision log: spilled records from an earlier run will be replayed");
        }
        Ok(sink)
    }

    fn try_connect(&mut self, stats: &LogStats) -> Result<(), LogError> {
        self.next_try = Instant::now() + RETRY_AFTER;
        let mut client = Db::connect(&self.url, CONNECT_TIMEOUT)?;
        if !self.migrated {
            client.migrate()?;
            self.migrated = true;
        }
        self.client = Some(client);
        stats.backend_up.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// A live connection, reconnecting at most once per [`RETRY_AFTER`].
    fn client(&mut self, stats: &LogStats) -> Option<&mut Db> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.lost(stats, "the connection closed");
        }
        if self.client.is_none() && Instant::now() >= self.next_try {
            if let Err(e) = self.try_connect(stats) {
                tracing::debug!(error = %e, "decision log: PostgreSQL still unreachable");
            } else {
                tracing::info!(url = %redact(&self.url), "decision log: PostgreSQL is back");
            }
        }
        self.client.as_mut()
    }

    fn lost(&mut self, stats: &LogStats, why: &str) {
        if self.client.take().is_some() {
            tracing::warn!(url = %redact(&self.url), why, "decision log: lost PostgreSQL; records spill to the local file until it answers");
        }
        self.next_try = Instant::now() + RETRY_AFTER;
        stats.backend_up.store(false, Ordering::Relaxed);
    }

    /// Writes a batch to PostgreSQL, or to the spill file while older batches wait there or
    /// PostgreSQL fails. Errors only when both fail (the records are lost).
    pub(crate) fn write(&mut self, decisions: &[DecisionRecord], feedback: &[FeedbackRecord], stats: &LogStats) -> Result<(), LogError> {
        let rows = Rows::new(decisions, feedback);
        // Order is kept: while a backlog waits, new batches queue behind it.
        if self.spill.records == 0 {
            let limit = self.write_timeout;
            if let Some(client) = self.client(stats) {
                match client.insert(&rows, limit) {
                    Ok(_) => return Ok(()),
                    Err(e) => self.lost(stats, &e.to_string()),
                }
            }
        }
        self.spill.push(&rows)?;
        stats.spilled.store(self.spill.records, Ordering::Relaxed);
        stats.spilled_total.fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Replays spilled batches, oldest first, while PostgreSQL takes them (at most `budget`).
    pub(crate) fn replay(&mut self, stats: &LogStats, budget: Duration) {
        self.replay_batches(stats, budget);
        // On every way out, PostgreSQL lost half-way included: the gauge is the file's count.
        stats.spilled.store(self.spill.records, Ordering::Relaxed);
    }

    fn replay_batches(&mut self, stats: &LogStats, budget: Duration) {
        let started = Instant::now();
        while self.spill.records > 0 && started.elapsed() < budget {
            if self.client(stats).is_none() {
                return;
            }
            let (seq, rows) = match self.spill.oldest() {
                Ok(Some(b)) => b,
                Ok(None) => {
                    self.spill.records = 0;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "decision log: cannot read the spill file");
                    return;
                }
            };
            let Some(client) = self.client.as_mut() else { return };
            match client.insert(&rows, self.write_timeout) {
                Ok(added) => {
                    if let Err(e) = self.spill.remove(seq, rows.len()) {
                        // Replayed again later; the ids make the second insert a no-op.
                        tracing::error!(error = %e, "decision log: cannot remove a replayed batch from the spill file");
                        return;
                    }
                    stats.replayed.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    tracing::debug!(records = rows.len(), added, left = self.spill.records, "decision log: replayed a spilled batch");
                    if self.spill.records == 0 {
                        tracing::info!("decision log: the spill file is replayed; writing to PostgreSQL again");
                    }
                }
                Err(e) => {
                    self.lost(stats, &e.to_string());
                    return;
                }
            }
        }
    }

    /// True while batches wait in the spill file.
    pub(crate) fn backlog(&self) -> bool {
        self.spill.records > 0
    }

    /// Deletes rows older than `min_ts_ms` (age only: the size of a shared database is its
    /// operator's). Replicas may run it at once; the deletes commute.
    pub(crate) fn enforce_retention(&mut self, min_ts_ms: i64, stats: &LogStats) -> Result<u64, LogError> {
        let limit = self.write_timeout.max(Duration::from_secs(60));
        let Some(client) = self.client(stats) else { return Ok(0) };
        let result = client.delete_older(min_ts_ms, limit);
        if let Err(e) = &result {
            self.lost(stats, &e.to_string());
        }
        result
    }
}

/// Joins every feedback report to the latest decision with its request id (whichever replica
/// logged either) and returns the labelled ones in `scope` as training lines, in id (time) order.
pub fn training_lines(url: &str, scope: FeedbackScope) -> Result<(Vec<LogRecord>, ExportSkips), LogError> {
    let mut db = Db::connect(url, CONNECT_TIMEOUT)?;
    db.migrate()?;
    let Db { rt, client, .. } = &mut db;
    let rows = block(
        rt,
        url,
        SLOW,
        client.query(
            "SELECT f.model, f.outcome, f.output_tokens::bigint, f.quality, d.routing_text, d.embedding, d.encoder, d.id IS NOT NULL,
                    f.verified, f.offered
             FROM feedback f
             LEFT JOIN LATERAL (
                 SELECT id, routing_text, embedding, encoder FROM decisions WHERE request_id = f.request_id ORDER BY id DESC LIMIT 1
             ) d ON true
             ORDER BY f.id",
            &[],
        ),
    )?;
    let (mut out, mut skips) = (Vec::new(), ExportSkips::default());
    for r in rows {
        let joined = Joined {
            model: r.get(0),
            outcome: r.get(1),
            output_tokens: r.get(2),
            quality: r.get(3),
            text: r.get(4),
            embedding: r.get(5),
            encoder: r.get(6),
            joined: r.get(7),
            verified: r.get(8),
            offered: r.get(9),
        };
        out.extend(store::training_line(joined, scope, &mut skips));
    }
    Ok((out, skips))
}

/// Row counts (decisions, feedback).
pub fn counts(url: &str) -> Result<(i64, i64), LogError> {
    let mut db = Db::connect(url, CONNECT_TIMEOUT)?;
    db.migrate()?;
    Ok((db.query_i64("SELECT count(*) FROM decisions")?, db.query_i64("SELECT count(*) FROM feedback")?))
}

/// Where a log is read from: a SQLite file or a PostgreSQL URL.
pub fn source_name(source: &Path) -> String {
    let s = source.to_string_lossy();
    if is_url(&s) {
        redact(&s)
    } else {
        source.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://me:secret@db:5432/log"), "postgres://me:***@db:5432/log");
        assert_eq!(redact("postgres://me@db/log"), "postgres://me@db/log");
        assert_eq!(redact("postgresql://db/log"), "postgresql://db/log");
        assert!(is_url("postgresql://x") && is_url("postgres://x") && !is_url("decisions.db"));
    }

    #[test]
    fn libpq_tls_parameters_choose_the_transport() {
        let base = "postgres://me:secret@db:5432/log";
        assert_eq!(transport(base).unwrap(), (format!("{base}?sslmode=disable"), Transport::Plain));
        assert_eq!(transport(&format!("{base}?sslmode=prefer")).unwrap(), (format!("{base}?sslmode=disable"), Transport::Plain));
        let (url, t) = transport(&format!("{base}?connect_timeout=3&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem")).unwrap();
        assert_eq!(url, format!("{base}?connect_timeout=3&sslmode=require"));
        assert_eq!(t, Transport::Tls { root_cert: Some(PathBuf::from("/etc/ca x.pem")) });
        assert!(url.parse::<tokio_postgres::Config>().is_ok());
        assert_eq!(transport(&format!("{base}?sslmode=require")).unwrap().1, Transport::Tls { root_cert: None });
        let err = transport(&format!("{base}?sslmode=verify_full")).unwrap_err();
        assert!(err.contains("verify-full") && err.contains("`verify_full`"), "{err}");
        let err = transport(&format!("{base}?sslrootcert=/ca.pem")).unwrap_err();
        assert!(err.contains("sslmode is unset"), "{err}");
        assert!(transport(&format!("{base}?sslmode=require&sslrootcert=%zz")).is_err());
    }

    #[test]
    fn a_root_certificate_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_tls(Some(&empty)).unwrap_err();
        assert!(err.contains("no PEM certificate") && err.contains("empty.pem"), "{err}");
        let err = client_tls(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn a_spilled_batch_round_trips_and_leaves_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.db");
        let d = DecisionRecord {
            request_id: "r1".into(),
            ts_ms: 5,
            routing_text: None,
            embedding: Some(std::sync::Arc::from(vec![0.5f32, -2.0])),
            encoder: "e".into(),
            router_version: "v".into(),
            cost_weight: 0.25,
            profile: None,
            constraints: crate::policy::Constraints::default(),
            tradeoff: "default".into(),
            input_tokens: 3,
            candidates: vec![],
        };
        let first = Rows::new(std::slice::from_ref(&d), &[]);
        let second = Rows::new(&[d.clone(), d], &[]);
        assert_ne!(first.decisions[0].id, second.decisions[0].id, "every record gets its own id");
        let mut s = Spill::open(path.clone()).unwrap();
        let taken = Spill::open(path.clone()).err().expect("a second process is refused").to_string();
        assert!(taken.contains("give each replica its own decision_log.spill_path"), "{taken}");
        s.push(&first).unwrap();
        s.push(&second).unwrap();
        drop(s);
        // A restart finds the backlog and replays it oldest first.
        let mut s = Spill::open(path).unwrap();
        assert_eq!(s.records, 3);
        let (seq, rows) = s.oldest().unwrap().unwrap();
        assert_eq!(rows, first);
        s.remove(seq, rows.len()).unwrap();
        assert_eq!(s.oldest().unwrap().unwrap().1, second);
        assert_eq!(s.records, 2);
    }
}
