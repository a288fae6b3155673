//! The decision log on PostgreSQL, for a fleet of replicas writing one log.
//!
//! The same records as the SQLite log, in the same two tables, created and upgraded by
//! versioned migrations (`migrations/postgres/`, applied under an advisory lock so replicas
//! starting together apply each one once). Every row carries a UUIDv7 id made by the replica,
//! and inserts skip ids already present, so a batch written twice lands once.
//!
//! The writer thread sends each batch as one multi-row INSERT per table (arrays through
//! `unnest`, one prepared statement whatever the batch size). Failures are sorted
//! (`failure::classify`):
//! - transient (unreachable, a closed connection, longer than `write_timeout_ms`, SQLSTATE
//!   classes 08, 40, 53, 57, 58): the batch goes to a local SQLite spill file (`spill`) and
//!   the spill is replayed, oldest first, once PostgreSQL answers again; a record leaves the
//!   spill file only after its batch is committed;
//! - permanent (classes 22, 23, 42 and the rest): the batch is split in halves until the
//!   refused rows are found (`failure::isolate`); they go to the `dead_letters` table (or, if
//!   that fails too, the spill file's) and are counted, and the rest land. The same holds for
//!   a spilled batch on replay, so no row ever holds up the log.
//!
//! Nothing on the Route path waits for any of this. Retention deletes in chunks on a thread and
//! a connection of its own (`retention`).
//!
//! The client is `tokio-postgres`, driven by a single-thread runtime of the connection's own
//! ([`Db`]), so that every call from the (synchronous) writer thread has a time limit. TLS
//! (rustls) is asked for in the URL with libpq's `sslmode` and `sslrootcert` ([`transport`]).
use std::{
    path::Path,
    str::FromStr,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

pub use super::pg_url::{client_tls, is_url, redact, transport, Transport};
use super::{
    failure::{self, Batch, WriteError},
    retention::Retention,
    spill::{Destination, LocalDeadLetter, Spill, Spilled},
    store::{self, ExportSkips, FeedbackScope, Joined},
    DecisionRecord, FeedbackRecord, LogConfig, LogError, LogStats,
};
use pointsman_core::record::LogRecord;

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "decision log tables", include_str!("../../../../migrations/postgres/0001_decision_log.sql")),
    (2, "feedback trust", include_str!("../../../../migrations/postgres/0002_feedback_trust.sql")),
    (3, "dead letters", include_str!("../../../../migrations/postgres/0003_dead_letter.sql")),
    (4, "sessions", include_str!("../../../../migrations/postgres/0004_sessions.sql")),
    (5, "decision policy", include_str!("../../../../migrations/postgres/0005_decision_policy.sql")),
    (6, "savings baseline", include_str!("../../../../migrations/postgres/0006_savings_baseline.sql")),
    (7, "endpoint feedback", include_str!("../../../../migrations/postgres/0007_endpoint_feedback.sql")),
];

/// The advisory lock key that serialises migrations across replicas ("pointsmn" in ASCII).
const MIGRATION_LOCK: i64 = 0x706f_696e_7473_6d6e;

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
    // NOTE: hand-written rather than refinery or sqlx::migrate!: it is one transaction under an
    // advisory lock over the connection `Db` already drives with time limits; refinery's
    // tokio-postgres runner and sqlx would bring a second client (sqlx: a second driver) for
    // twenty lines.
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

    /// The rows of `sql` with `params` (reads such as `report`'s), within the long read limit.
    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, LogError> {
        let Db { rt, client, url } = self;
        block(rt, url, SLOW, client.query(sql, params))
    }

    /// The first column of the first row of `sql`, as a boolean.
    pub fn query_bool(&mut self, sql: &str) -> Result<bool, LogError> {
        let Db { rt, client, url } = self;
        block(rt, url, Duration::from_secs(30), async { Ok(client.query_one(sql, &[]).await?.get::<_, bool>(0)) })
    }

    /// Runs one statement within `limit`; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)], limit: Duration) -> Result<u64, LogError> {
        let Db { rt, client, url } = self;
        block(rt, url, limit, client.execute(sql, params))
    }

    /// The database's identity: the cluster's `system_identifier` (from `pg_control_system()`,
    /// or, where that is not granted, the database's oid and the server's address) and the
    /// database's name. A spilled batch is replayed only into the database it names.
    pub fn identity(&mut self, limit: Duration) -> Result<String, LogError> {
        let Db { rt, client, url } = self;
        block(rt, url, limit, async {
            let sysid = client.query_one("SELECT system_identifier::text || '/' || current_database() FROM pg_control_system()", &[]).await;
            match sysid {
                Ok(row) => Ok(row.get::<_, String>(0)),
                Err(e) if e.as_db_error().is_some() => {
                    let row = client
                        .query_one(
                            "SELECT 'oid ' || d.oid::text || ' at ' || coalesce(host(inet_server_addr()), 'local') || ':' || coalesce(inet_server_port(), 0)::text || '/' || d.datname
                             FROM pg_database d WHERE d.datname = current_database()",
                            &[],
                        )
                        .await?;
                    Ok(row.get::<_, String>(0))
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Writes refused rows to the `dead_letters` table within `limit` (ids already there are
    /// skipped).
    fn insert_dead_letters(&mut self, rows: &[DeadLetter], limit: Duration) -> Result<u64, LogError> {
        let Db { rt, client, url } = self;
        block(
            rt,
            url,
            limit,
            client.execute(
                INSERT_DEAD_LETTERS,
                &[
                    &rows.iter().map(|r| r.id).collect::<Vec<_>>(),
                    &rows.iter().map(|r| r.kind).collect::<Vec<_>>(),
                    &rows.iter().map(|r| r.request_id.as_str()).collect::<Vec<_>>(),
                    &rows.iter().map(|r| r.ts_ms).collect::<Vec<_>>(),
                    &rows.iter().map(|r| r.sqlstate.as_deref()).collect::<Vec<_>>(),
                    &rows.iter().map(|r| r.error.as_str()).collect::<Vec<_>>(),
                    &rows.iter().map(|r| r.record.as_str()).collect::<Vec<_>>(),
                ],
            ),
        )
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
    // Absent from batches spilled by a build before the savings columns.
    #[serde(default)]
    baseline_model: Option<String>,
    #[serde(default)]
    baseline_cost_usd: Option<f64>,
    #[serde(default)]
    baseline_quality: Option<f64>,
    #[serde(default)]
    baseline_saving_usd: Option<f64>,
    /// The session's hash, verdict and reason (absent from spill files of older builds).
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    session_verdict: Option<String>,
    #[serde(default)]
    session_reason: Option<String>,
    // Absent from batches spilled by a build before the policy columns: deterministic.
    #[serde(default = "deterministic")]
    propensity: f64,
    #[serde(default)]
    policy: Option<String>,
}

fn deterministic() -> f64 {
    1.0
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
    #[serde(default)]
    baseline_model: Option<String>,
    #[serde(default)]
    baseline_cost_usd: Option<f64>,
    #[serde(default)]
    baseline_realised_cost_usd: Option<f64>,
    // Absent from batches spilled by a build before the endpoint columns: none.
    #[serde(default)]
    endpoint_provider: Option<String>,
    #[serde(default)]
    endpoint_ttft_ms: Option<f64>,
    #[serde(default)]
    endpoint_generation_ms: Option<f64>,
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
                    propensity: d.policy.propensity,
                    policy: serde_json::to_string(&d.policy).ok(),
                    session_id: d.session.as_ref().map(|s| s.id.clone()),
                    session_verdict: d.session.as_ref().map(|s| s.verdict.to_string()),
                    session_reason: d.session.as_ref().map(|s| s.reason.to_string()),
                    baseline_model: d.baseline.as_ref().map(|b| b.baseline_model.clone()),
                    baseline_cost_usd: d.baseline.as_ref().map(|b| b.baseline_cost_usd),
                    baseline_quality: d.baseline.as_ref().and_then(|b| b.baseline_quality),
                    baseline_saving_usd: d.baseline.as_ref().map(|b| b.saving_usd),
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
                    baseline_model: f.baseline.as_ref().map(|b| b.baseline_model.clone()),
                    baseline_cost_usd: f.baseline.as_ref().and_then(|b| b.baseline_cost_usd),
                    baseline_realised_cost_usd: f.baseline.as_ref().and_then(|b| b.cost_usd),
                    endpoint_provider: f.provider.clone(),
                    endpoint_ttft_ms: f.ttft_ms,
                    endpoint_generation_ms: f.generation_ms,
                })
                .collect(),
        }
    }

    fn len(&self) -> usize {
        self.decisions.len() + self.feedback.len()
    }

    /// The rows as dead letters, refused with `error`.
    fn dead_letters(&self, error: &LogError) -> Vec<DeadLetter> {
        let sqlstate = failure::sqlstate(error).map(str::to_string);
        let error = super::storable(&error.to_string()).into_owned();
        let letter = |id: Uuid, kind: &'static str, request_id: &str, ts_ms: i64, record: String| DeadLetter {
            id,
            kind,
            request_id: super::storable(request_id).into_owned(),
            ts_ms,
            sqlstate: sqlstate.clone(),
            error: error.clone(),
            record,
        };
        let json = |r: &dyn erased::Json| r.json();
        let mut out: Vec<DeadLetter> = self.decisions.iter().map(|d| letter(d.id, "decision", &d.request_id, d.ts_ms, json(d))).collect();
        out.extend(self.feedback.iter().map(|f| letter(f.id, "feedback", &f.request_id, f.ts_ms, json(f))));
        out
    }
}

/// Serialising either row type behind one reference.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"unserialisable\": {:?}}}", e.to_string()))
        }
    }
}

impl Batch for Rows {
    fn len(&self) -> usize {
        Rows::len(self)
    }

    /// The first half of the records (decisions first, then feedback) and the rest.
    fn split(mut self) -> (Self, Self) {
        let half = Rows::len(&self) / 2;
        let rest = if half <= self.decisions.len() {
            Rows { decisions: self.decisions.split_off(half), feedback: std::mem::take(&mut self.feedback) }
        } else {
            Rows { decisions: Vec::new(), feedback: self.feedback.split_off(half - self.decisions.len()) }
        };
        (self, rest)
    }
}

/// A row PostgreSQL refused for good, as kept in `dead_letters`.
#[derive(Debug, Clone)]
struct DeadLetter {
    id: Uuid,
    kind: &'static str,
    request_id: String,
    ts_ms: i64,
    sqlstate: Option<String>,
    error: String,
    record: String,
}

const INSERT_DEAD_LETTERS: &str = "
INSERT INTO dead_letters (id, kind, request_id, ts_ms, sqlstate, error, record)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
ON CONFLICT (id) DO NOTHING";

const INSERT_DECISIONS: &str = "
INSERT INTO decisions (id, request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints, input_tokens, candidates, propensity, policy, session_id, session_verdict, session_reason, baseline_model, baseline_cost_usd, baseline_quality, baseline_saving_usd)
SELECT id, request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints::jsonb, input_tokens, candidates::jsonb, propensity, policy::jsonb, session_id, session_verdict, session_reason, baseline_model, baseline_cost_usd, baseline_quality, baseline_saving_usd
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::bytea[], $6::text[], $7::text[], $8::float8[], $9::text[], $10::text[], $11::int4[], $12::text[],
            $13::float8[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[], $19::float8[], $20::float8[], $21::float8[])
    AS t(id, request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints, input_tokens, candidates, propensity, policy, session_id, session_verdict, session_reason, baseline_model, baseline_cost_usd, baseline_quality, baseline_saving_usd)
ON CONFLICT (id) DO NOTHING";

const INSERT_FEEDBACK: &str = "
INSERT INTO feedback (id, request_id, ts_ms, model, outcome, latency_ms, input_tokens, output_tokens, cost_usd, quality, verified, offered,
                      baseline_model, baseline_cost_usd, baseline_realised_cost_usd, endpoint_provider, endpoint_ttft_ms, endpoint_generation_ms)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::float8[], $7::int4[], $8::int4[], $9::float8[], $10::float8[], $11::bool[], $12::bool[],
                     $13::text[], $14::float8[], $15::float8[], $16::text[], $17::float8[], $18::float8[])
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
                    &d.iter().map(|r| r.propensity).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.policy.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.session_id.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.session_verdict.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.session_reason.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.baseline_model.as_deref()).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.baseline_cost_usd).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.baseline_quality).collect::<Vec<_>>(),
                    &d.iter().map(|r| r.baseline_saving_usd).collect::<Vec<_>>(),
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
                    &f.iter().map(|r| r.baseline_model.as_deref()).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.baseline_cost_usd).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.baseline_realised_cost_usd).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.endpoint_provider.as_deref()).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.endpoint_ttft_ms).collect::<Vec<_>>(),
                    &f.iter().map(|r| r.endpoint_generation_ms).collect::<Vec<_>>(),
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(added)
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
    /// Where this run's batches go: the URL's database, and its identity once reached.
    destination: Destination,
    last_drop_warning: Option<Instant>,
    /// Prunes old rows on its own thread and connection (stops when the sink is dropped).
    _retention: Option<Retention>,
}

impl PgSink {
    /// Connects and migrates. A server that answers with an error (authentication, a missing
    /// database, a schema from a newer build) is a configuration error and fails here; a server
    /// that does not answer is not: records spill until it does.
    pub(crate) fn open(cfg: &LogConfig, url: &str, stats: &Arc<LogStats>) -> Result<Self, LogError> {
        let spill = Spill::open(cfg.spill_path.clone(), cfg.spill_max_bytes)?;
        let mut sink = PgSink {
            url: url.to_string(),
            write_timeout: Duration::from_millis(cfg.write_timeout_ms),
            client: None,
            next_try: Instant::now(),
            spill,
            migrated: false,
            destination: Destination { target: super::pg_url::target(url), database: None },
            last_drop_warning: None,
            _retention: None,
        };
        sink.gauges(stats);
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
        sink._retention = Retention::start(cfg, url, stats);
        Ok(sink)
    }

    fn try_connect(&mut self, stats: &LogStats) -> Result<(), LogError> {
        self.next_try = Instant::now() + RETRY_AFTER;
        let mut client = Db::connect(&self.url, CONNECT_TIMEOUT)?;
        if !self.migrated {
            client.migrate()?;
            self.migrated = true;
        }
        // Asked at every connection: a URL that now leads to another database must not take
        // the batches spilled for the previous one.
        self.destination.database = Some(client.identity(CONNECT_TIMEOUT.max(self.write_timeout))?);
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

    fn gauges(&self, stats: &LogStats) {
        stats.spilled.store(self.spill.records, Ordering::Relaxed);
        stats.spill_bytes.store(self.spill.bytes, Ordering::Relaxed);
    }

    /// Writes a batch to PostgreSQL, or to the spill file while older batches wait there or
    /// PostgreSQL fails. Rows PostgreSQL refuses for good go to the dead-letter table and the
    /// rest land. Errors only when the spill file fails too (the records are lost).
    pub(crate) fn write(&mut self, decisions: &[DecisionRecord], feedback: &[FeedbackRecord], stats: &LogStats) -> Result<(), LogError> {
        let rows = Rows::new(decisions, feedback);
        // Order is kept: while a backlog waits, new batches queue behind it.
        if self.spill.records == 0 && self.client(stats).is_some() {
            match self.deliver(&rows, stats) {
                Ok(()) => return Ok(()),
                Err(e) => self.lost(stats, &e.to_string()),
            }
        }
        let result = self.spill_push(&rows, stats);
        self.gauges(stats);
        result
    }

    fn spill_push(&mut self, rows: &Rows, stats: &LogStats) -> Result<(), LogError> {
        let path = self.spill.path().to_path_buf();
        let json = serde_json::to_string(rows).map_err(|e| LogError::Schema { path, message: e.to_string() })?;
        let n = rows.len() as u64;
        if self.spill.push(n, &json, &self.destination)? {
            stats.spilled_total.fetch_add(n, Ordering::Relaxed);
        } else {
            let dropped = stats.spill_dropped.fetch_add(n, Ordering::Relaxed) + n;
            if self.last_drop_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                self.last_drop_warning = Some(Instant::now());
                tracing::warn!(
                    dropped_total = dropped,
                    spill_bytes = self.spill.bytes,
                    "decision log: the spill file is at decision_log.spill_max_bytes; new batches are dropped until PostgreSQL takes the backlog"
                );
            }
        }
        Ok(())
    }

    /// Writes `rows` over the live connection. A permanent error splits the batch until the
    /// refused rows are found (`failure::isolate`); they go to the dead-letter table and the
    /// rest land. Errors on a transient failure (the caller keeps the batch).
    fn deliver(&mut self, rows: &Rows, stats: &LogStats) -> Result<(), LogError> {
        let limit = self.write_timeout;
        let Some(client) = self.client.as_mut() else {
            return Err(LogError::Postgres { url: redact(&self.url), detail: "not connected".into(), source: None });
        };
        let out = failure::isolate(rows, &mut |b: &Rows| client.insert(b, limit).map(|_| ()).map_err(failure::classify))?;
        if !out.refused.is_empty() {
            self.dead_letter(out.refused, out.attempts, stats);
        }
        Ok(())
    }

    /// Keeps refused rows in PostgreSQL's `dead_letters` table, or, if that fails too, in the
    /// spill file's; counts them.
    fn dead_letter(&mut self, refused: Vec<failure::Refused<Rows>>, attempts: usize, stats: &LogStats) {
        let letters: Vec<DeadLetter> = refused.iter().flat_map(|r| r.rows.dead_letters(&r.error)).collect();
        for r in &refused {
            tracing::error!(records = r.rows.len(), error = %r.error, attempts,
                "decision log: PostgreSQL refused records for good; they go to the dead-letter table and the rest of the batch lands");
        }
        let limit = self.write_timeout;
        let stored = match self.client.as_mut().map(|c| c.insert_dead_letters(&letters, limit)) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                tracing::warn!(error = %e, spill = %self.spill.path().display(),
                    "decision log: cannot write to PostgreSQL's dead_letters table; the refused records go to the spill file's");
                if matches!(failure::classify(e), WriteError::Transient(_)) {
                    self.lost(stats, "the dead-letter write failed");
                }
                self.local_dead_letters(&letters)
            }
            None => self.local_dead_letters(&letters),
        };
        match stored {
            Ok(()) => {
                stats.dead_letters.fetch_add(letters.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.write_failures.fetch_add(letters.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, records = letters.len(), "decision log: cannot keep refused records anywhere; they are lost");
            }
        }
    }

    fn local_dead_letters(&mut self, letters: &[DeadLetter]) -> Result<(), LogError> {
        let local: Vec<LocalDeadLetter> = letters
            .iter()
            .map(|l| LocalDeadLetter {
                id: l.id.to_string(),
                kind: l.kind,
                request_id: Some(&l.request_id),
                ts_ms: Some(l.ts_ms),
                error: &l.error,
                record: &l.record,
            })
            .collect();
        self.spill.dead_letter(&local)
    }

    /// Replays spilled batches, oldest first, while PostgreSQL takes them (at most `budget`).
    pub(crate) fn replay(&mut self, stats: &LogStats, budget: Duration) {
        self.replay_batches(stats, budget);
        // On every way out, PostgreSQL lost half-way included: the gauges are the file's.
        self.gauges(stats);
    }

    fn replay_batches(&mut self, stats: &LogStats, budget: Duration) {
        let started = Instant::now();
        while self.spill.records > 0 && started.elapsed() < budget {
            if self.client(stats).is_none() {
                return;
            }
            let b = match self.spill.oldest() {
                Ok(Some(b)) => b,
                Ok(None) => {
                    (self.spill.records, self.spill.bytes) = (0, 0);
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "decision log: cannot read the spill file");
                    return;
                }
            };
            if !b.destination.accepts(&self.destination) {
                let reason = format!("this replica now writes to {}", self.destination.target);
                if let Err(e) = self.spill.set_aside(&b, &reason) {
                    tracing::error!(error = %e, "decision log: cannot set a spilled batch aside");
                    return;
                }
                stats.spill_set_aside.fetch_add(b.records, Ordering::Relaxed);
                continue;
            }
            match serde_json::from_str::<Rows>(&b.batch) {
                Ok(rows) => match self.deliver(&rows, stats) {
                    Ok(()) => self.replayed(&b, stats),
                    Err(e) => {
                        self.lost(stats, &e.to_string());
                        return;
                    }
                },
                // Unreadable: kept whole as a dead letter, never in the way of the rest.
                Err(e) => {
                    let error = format!("spilled batch {} is unreadable: {e}", b.seq);
                    let letter = LocalDeadLetter {
                        id: format!("spill-batch-{}-{}", b.seq, Uuid::now_v7()),
                        kind: "batch",
                        request_id: None,
                        ts_ms: None,
                        error: &error,
                        record: &b.batch,
                    };
                    tracing::error!(%error, "decision log: a spilled batch goes to the spill file's dead_letters table");
                    if let Err(e) = self.spill.dead_letter(&[letter]).and_then(|()| self.spill.remove(&b)) {
                        tracing::error!(error = %e, "decision log: cannot set an unreadable spilled batch aside");
                        return;
                    }
                    stats.dead_letters.fetch_add(b.records, Ordering::Relaxed);
                }
            }
        }
    }

    fn replayed(&mut self, b: &Spilled, stats: &LogStats) {
        if let Err(e) = self.spill.remove(b) {
            // Replayed again later; the ids make the second insert a no-op.
            tracing::error!(error = %e, "decision log: cannot remove a replayed batch from the spill file");
            return;
        }
        stats.replayed.fetch_add(b.records, Ordering::Relaxed);
        tracing::debug!(records = b.records, left = self.spill.records, "decision log: replayed a spilled batch");
        if self.spill.records == 0 {
            tracing::info!("decision log: the spill file is replayed; writing to PostgreSQL again");
        }
    }

    /// True while batches wait in the spill file.
    pub(crate) fn backlog(&self) -> bool {
        self.spill.records > 0
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
                    f.verified, f.offered, CASE WHEN d.candidates->0->>'model' = f.model THEN d.propensity END,
                    f.baseline_realised_cost_usd, f.baseline_model, f.baseline_cost_usd
             FROM feedback f
             LEFT JOIN LATERAL (
                 SELECT id, routing_text, embedding, encoder, candidates, propensity FROM decisions WHERE request_id = f.request_id ORDER BY id DESC LIMIT 1
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
            propensity: r.get(10),
            cost_usd: r.get(11),
            baseline_model: r.get(12),
            baseline_cost_usd: r.get(13),
        };
        out.extend(store::training_line(joined, scope, &mut skips));
    }
    Ok((out, skips))
}

/// A connection for reading the log, its schema migrated to this build's.
pub fn reader(url: &str) -> Result<Db, LogError> {
    let mut db = Db::connect(url, CONNECT_TIMEOUT)?;
    db.migrate()?;
    Ok(db)
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

    fn decision(id: &str) -> DecisionRecord {
        DecisionRecord {
            request_id: id.into(),
            ts_ms: 5,
            routing_text: Some("text \u{0} with a NUL".into()),
            embedding: Some(std::sync::Arc::from(vec![0.5f32, -2.0])),
            encoder: "e".into(),
            router_version: "v".into(),
            cost_weight: 0.25,
            profile: None,
            constraints: crate::policy::Constraints::default(),
            tradeoff: "default".into(),
            input_tokens: 3,
            candidates: vec![],
            policy: Default::default(),
            session: Some(crate::logs::LoggedSession {
                id: "0123456789abcdef0123456789abcdef".into(),
                verdict: "kept",
                reason: "cache_saving",
            }),
            baseline: None,
        }
    }

    #[test]
    fn rows_round_trip_split_in_order_and_become_dead_letters() {
        let decisions: Vec<_> = (0..3).map(|i| decision(&format!("r{i}"))).collect();
        let fb = FeedbackRecord {
            request_id: "r0".into(),
            ts_ms: 6,
            model: "m".into(),
            outcome: crate::outcome::Outcome::Success,
            latency_ms: None,
            input_tokens: None,
            output_tokens: Some(3),
            cost_usd: None,
            quality: Some(0.5),
            provider: Some("p".into()),
            ttft_ms: Some(1.5),
            generation_ms: None,
            verified: true,
            offered: true,
            baseline: None,
        };
        let rows = Rows::new(&decisions, std::slice::from_ref(&fb));
        assert_ne!(rows.decisions[0].id, rows.decisions[1].id, "every record gets its own id");
        let json = serde_json::to_string(&rows).unwrap();
        assert_eq!(serde_json::from_str::<Rows>(&json).unwrap(), rows, "what the spill file keeps reads back");
        let (first, rest) = rows.split();
        assert_eq!((first.decisions.len(), first.feedback.len(), rest.decisions.len(), rest.feedback.len()), (2, 0, 1, 1));
        let (d, f) = rest.split();
        assert_eq!((d.decisions[0].request_id.as_str(), f.feedback[0].request_id.as_str()), ("r2", "r0"));
        let error = LogError::Postgres { url: "postgres://db".into(), detail: "bad \u{0}".into(), source: None };
        let letters = first.dead_letters(&error);
        assert_eq!(letters.len(), 2);
        // Storable in a PostgreSQL text column: the NUL is escaped in the JSON, replaced in the error.
        assert!(letters.iter().all(|l| !l.record.contains('\0') && !l.error.contains('\0')));
        assert!(letters[0].record.contains("\\u0000"), "{}", letters[0].record);
        assert_eq!((letters[0].kind, letters[1].request_id.as_str()), ("decision", "r1"));
    }
}
