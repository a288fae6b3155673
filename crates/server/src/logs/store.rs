//! The SQLite file behind the decision log: schema, batched writes, retention, and the joined
//! read that turns decisions plus feedback into training lines.
//!
//! WAL mode: readers (`logs export`, `train --data decisions.db`) never block the writer, and a
//! process killed mid-write leaves the last committed transaction intact (SQLite rolls back the
//! torn one on the next open). `synchronous = NORMAL` (the default here) makes a commit durable
//! against a process crash; `FULL` also against power loss, at a fsync per batch.
use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::{DecisionRecord, FeedbackRecord, LogError};
use pointsman_core::record::LogRecord;

/// Schema version in `PRAGMA user_version`. 2 added `feedback.verified` and `feedback.offered`;
/// 3 added `decisions.propensity` and `decisions.policy`, the session columns, the savings
/// columns ([`BASELINE_COLUMNS`]) and the endpoint columns (`feedback.endpoint_provider`,
/// `endpoint_ttft_ms`, `endpoint_generation_ms`); each step checks its columns, so they apply
/// in any order.
/// 4 added the report columns ([`REPORT_COLUMNS`]) and indexes ([`REPORT_INDEXES`]).
pub const SCHEMA_VERSION: i64 = 4;

/// The savings step (schema version 3): what each decision would have cost on the baseline
/// (`savings`) at the same predicted tokens, the baseline's predicted quality and the predicted
/// saving; and for each report, the realised cost and the baseline's at the reported tokens.
pub const BASELINE_COLUMNS: &[(&str, &str, &str)] = &[
    ("decisions", "baseline_model", "TEXT"),
    ("decisions", "baseline_cost_usd", "REAL"),
    ("decisions", "baseline_quality", "REAL"),
    ("decisions", "baseline_saving_usd", "REAL"),
    ("feedback", "baseline_model", "TEXT"),
    ("feedback", "baseline_cost_usd", "REAL"),
    ("feedback", "baseline_realised_cost_usd", "REAL"),
];

/// Version 1 files: the trust columns, their reports unverified (nothing was checked then).
const TRUST_COLUMNS: &[(&str, &str, &str)] =
    &[("feedback", "verified", "INTEGER NOT NULL DEFAULT 0"), ("feedback", "offered", "INTEGER NOT NULL DEFAULT 0")];

/// Version 2 files: the policy columns, their decisions deterministic.
const POLICY_COLUMNS: &[(&str, &str, &str)] = &[("decisions", "propensity", "REAL NOT NULL DEFAULT 1"), ("decisions", "policy", "TEXT")];

/// Version 2 files: the endpoint columns, empty for the reports logged before.
const ENDPOINT_COLUMNS: &[(&str, &str, &str)] =
    &[("feedback", "endpoint_provider", "TEXT"), ("feedback", "endpoint_ttft_ms", "REAL"), ("feedback", "endpoint_generation_ms", "REAL")];

/// Files from before sessions: the session columns (NULL for the decisions already logged).
const SESSION_COLUMNS: &[(&str, &str, &str)] =
    &[("decisions", "session_id", "TEXT"), ("decisions", "session_verdict", "TEXT"), ("decisions", "session_reason", "TEXT")];

/// The report step (schema version 4): each decision's primary (its first candidate) in columns
/// of its own, so that `report` reads a window's decisions through [`REPORT_INDEXES`] without
/// parsing the candidates list. Rows logged before keep NULL (the report reads their JSON).
pub const REPORT_COLUMNS: &[(&str, &str, &str)] =
    &[("decisions", "primary_model", "TEXT"), ("decisions", "primary_quality", "REAL"), ("decisions", "primary_cost_usd", "REAL")];

/// The report's covering indexes: a window of decisions or of feedback reports, with every
/// column the report reads, without touching the tables' wide rows.
pub const REPORT_INDEXES: &str = "
CREATE INDEX IF NOT EXISTS decisions_report ON decisions(ts_ms, request_id, profile, primary_model, primary_quality, primary_cost_usd, baseline_model, baseline_cost_usd, baseline_quality);
CREATE INDEX IF NOT EXISTS feedback_report ON feedback(ts_ms, request_id, model, outcome, latency_ms, quality, verified, baseline_cost_usd, baseline_realised_cost_usd);
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    routing_text TEXT,
    embedding BLOB,
    encoder TEXT NOT NULL,
    router_version TEXT NOT NULL,
    cost_weight REAL NOT NULL,
    profile TEXT,
    constraints TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    candidates TEXT NOT NULL,
    propensity REAL NOT NULL DEFAULT 1,
    policy TEXT,
    session_id TEXT,
    session_verdict TEXT,
    session_reason TEXT
);
CREATE INDEX IF NOT EXISTS decisions_request ON decisions(request_id);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts_ms);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    model TEXT NOT NULL,
    outcome TEXT NOT NULL,
    latency_ms REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd REAL,
    quality REAL,
    verified INTEGER NOT NULL DEFAULT 0,
    offered INTEGER NOT NULL DEFAULT 0,
    endpoint_provider TEXT,
    endpoint_ttft_ms REAL,
    endpoint_generation_ms REAL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback(ts_ms);
";

pub(crate) fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> LogError + Copy + '_ {
    move |source| LogError::Db { path: path.to_path_buf(), source }
}

/// Opens (creating if needed) the log for writing: WAL, the schema, the version check.
pub fn open_for_writing(path: &Path, synchronous_full: bool) -> Result<Connection, LogError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Io { path: dir.to_path_buf(), source })?;
    }
    let e = db_err(path);
    let conn = Connection::open(path).map_err(&e)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(&e)?;
    // NOTE: auto_vacuum must be set before the first table exists to take effect; it lets
    // retention give space back with `incremental_vacuum` instead of a full VACUUM.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(&e)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(&e)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LogError::Schema { path: path.into(), message: format!("cannot switch to WAL mode (journal_mode is {mode})") });
    }
    conn.pragma_update(None, "synchronous", if synchronous_full { "FULL" } else { "NORMAL" }).map_err(&e)?;
    check_version(&conn, path)?;
    conn.execute_batch(SCHEMA).map_err(&e)?;
    // Older files gain each step's columns they lack, by column, not by version number, so the
    // steps apply in any order and a file that has some of a step's columns gets the rest.
    for step in [TRUST_COLUMNS, POLICY_COLUMNS, ENDPOINT_COLUMNS, SESSION_COLUMNS, BASELINE_COLUMNS, REPORT_COLUMNS] {
        add_columns(&conn, step).map_err(&e)?;
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS decisions_session ON decisions(session_id) WHERE session_id IS NOT NULL;")
        .map_err(&e)?;
    conn.execute_batch(REPORT_INDEXES).map_err(&e)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(&e)?;
    Ok(conn)
}

/// True when the feedback table has `verified` and `offered` (schema version 2).
fn has_trust_columns(conn: &Connection) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("SELECT count(*) FROM pragma_table_info('feedback') WHERE name IN ('verified', 'offered')")?;
    Ok(stmt.query_row([], |r| r.get::<_, i64>(0))? == 2)
}

/// A schema step by columns: adds those of `columns` (table, column, type) a file lacks (older
/// rows keep NULL: nothing was known of them when they were logged), in one transaction.
fn add_columns(conn: &Connection, columns: &[(&str, &str, &str)]) -> rusqlite::Result<()> {
    let mut missing = Vec::new();
    for (table, column, kind) in columns {
        if !has_column(conn, table, column)? {
            missing.push(format!("ALTER TABLE {table} ADD COLUMN {column} {kind};"));
        }
    }
    if !missing.is_empty() {
        conn.execute_batch(&format!("BEGIN; {} COMMIT;", missing.join(" ")))?;
    }
    Ok(())
}

/// True when the file has the report step: its columns and its indexes.
pub(crate) fn has_report_columns(conn: &Connection) -> rusqlite::Result<bool> {
    for (table, column, _) in REPORT_COLUMNS {
        if !has_column(conn, table, column)? {
            return Ok(false);
        }
    }
    let indexes: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN ('decisions_report', 'feedback_report')",
        [],
        |r| r.get(0),
    )?;
    Ok(indexes == 2)
}

/// True when `table` has `column`.
pub(crate) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2", [table, column], |r| r.get::<_, i64>(0)).map(|n| n > 0)
}

fn check_version(conn: &Connection, path: &Path) -> Result<(), LogError> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db_err(path))?;
    if v > SCHEMA_VERSION {
        return Err(LogError::Schema {
            path: path.into(),
            message: format!("schema version {v} is newer than this build's {SCHEMA_VERSION}; upgrade pointsman"),
        });
    }
    Ok(())
}

/// Opens an existing log read-only (safe while a server writes to it).
pub fn open_for_reading(path: &Path) -> Result<Connection, LogError> {
    if !path.is_file() {
        return Err(LogError::Io { path: path.into(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such decision log") });
    }
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX).map_err(db_err(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err(path))?;
    check_version(&conn, path)?;
    Ok(conn)
}

/// Little-endian f32 bytes of an embedding.
pub fn embedding_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Inverse of [`embedding_bytes`].
pub fn embedding_from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    b.len().is_multiple_of(4).then(|| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

pub(crate) fn constraints_json(d: &DecisionRecord) -> String {
    let c = &d.constraints;
    serde_json::json!({
        "tradeoff": d.tradeoff,
        "max_cost_usd": c.max_cost_usd,
        "min_quality": c.min_quality,
        "allowed_models": c.allowed_models,
        "denied_models": c.denied_models,
        "allowed_providers": c.allowed_providers,
        "denied_providers": c.denied_providers,
        "max_fallbacks": c.max_fallbacks,
        "requirements": c.requirements,
        "provider": provider_json(&c.provider),
        "max_latency": c.max_latency.map(|l| serde_json::json!({"ms": l.ms, "percentile": l.percentile.as_str()})),
    })
    .to_string()
}

/// The request's provider preferences for the log, `null` when it gave none (the defaults).
fn provider_json(p: &crate::policy::ProviderPreferences) -> serde_json::Value {
    use crate::policy::{Partition, ProviderPreferences, SortBy};
    if *p == ProviderPreferences::default() {
        return serde_json::Value::Null;
    }
    let percentiles = |q: &crate::policy::Percentiles| {
        (!q.is_empty()).then(|| serde_json::json!({"p50": q.p50, "p75": q.p75, "p90": q.p90, "p99": q.p99}))
    };
    serde_json::json!({
        "order": p.order,
        "only": p.only,
        "ignore": p.ignore,
        "allow_fallbacks": p.allow_fallbacks,
        "sort": p.sort.map(|s| match s { SortBy::Price => "price", SortBy::Throughput => "throughput", SortBy::Latency => "latency" }),
        "partition": match p.partition { Partition::Model => "model", Partition::None => "none" },
        "max_price": {"prompt": p.max_prompt_price, "completion": p.max_completion_price},
        "quantizations": p.quantizations,
        "data_collection": if p.deny_data_collection { "deny" } else { "allow" },
        "zdr": p.zdr,
        "require_parameters": p.require_parameters,
        "preferred_max_latency": percentiles(&p.preferred_max_latency),
        "preferred_min_throughput": percentiles(&p.preferred_min_throughput),
    })
}

/// Writes one batch in one transaction.
pub fn write_batch(conn: &mut Connection, decisions: &[DecisionRecord], feedback: &[FeedbackRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO decisions (request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints, input_tokens, candidates,
                 propensity, policy, session_id, session_verdict, session_reason, baseline_model, baseline_cost_usd, baseline_quality, baseline_saving_usd,
                 primary_model, primary_quality, primary_cost_usd)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
        )?;
        for d in decisions {
            let candidates = serde_json::to_string(&d.candidates).unwrap_or_else(|_| "[]".into());
            ins.execute(params![
                d.request_id,
                d.ts_ms,
                d.routing_text,
                d.embedding.as_deref().map(embedding_bytes),
                d.encoder,
                d.router_version,
                d.cost_weight,
                d.profile,
                constraints_json(d),
                d.input_tokens,
                candidates,
                d.policy.propensity,
                serde_json::to_string(&d.policy).ok(),
                d.session.as_ref().map(|s| s.id.as_str()),
                d.session.as_ref().map(|s| s.verdict),
                d.session.as_ref().map(|s| s.reason),
                d.baseline.as_ref().map(|b| b.baseline_model.as_str()),
                d.baseline.as_ref().map(|b| b.baseline_cost_usd),
                d.baseline.as_ref().and_then(|b| b.baseline_quality),
                d.baseline.as_ref().map(|b| b.saving_usd),
                d.candidates.first().map(|c| c.model.as_str()),
                d.candidates.first().map(|c| c.quality),
                d.candidates.first().map(|c| c.cost_usd),
            ])?;
        }
        let mut ins = tx.prepare_cached(
            "INSERT INTO feedback (request_id, ts_ms, model, outcome, latency_ms, input_tokens, output_tokens, cost_usd, quality, verified, offered,
                 baseline_model, baseline_cost_usd, baseline_realised_cost_usd, endpoint_provider, endpoint_ttft_ms, endpoint_generation_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        )?;
        for f in feedback {
            ins.execute(params![
                f.request_id,
                f.ts_ms,
                f.model,
                f.outcome.as_str(),
                f.latency_ms,
                f.input_tokens,
                f.output_tokens,
                f.cost_usd,
                f.quality,
                f.verified,
                f.offered,
                f.baseline.as_ref().map(|b| b.baseline_model.as_str()),
                f.baseline.as_ref().and_then(|b| b.baseline_cost_usd),
                f.baseline.as_ref().and_then(|b| b.cost_usd),
                f.provider,
                f.ttft_ms,
                f.generation_ms,
            ])?;
        }
    }
    tx.commit()
}

/// Bytes the database uses (pages in use times the page size; the WAL is not counted).
pub fn used_bytes(conn: &Connection) -> rusqlite::Result<i64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((pages - free) * size)
}

/// What one retention pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Pruned {
    /// Decision rows deleted.
    pub decisions: usize,
    /// Feedback rows deleted.
    pub feedback: usize,
}

/// Deletes rows older than `min_ts_ms`, then the oldest rows while the database is over
/// `max_bytes` (0 = no size limit), and gives the space back. Each size pass deletes the share
/// of each table the database is over by (at least a tenth), its cut-off read off the table's
/// `ts_ms` index (no sort), so one or two passes usually do.
pub fn enforce_retention(conn: &mut Connection, min_ts_ms: Option<i64>, max_bytes: u64) -> rusqlite::Result<Pruned> {
    let mut pruned = Pruned::default();
    if let Some(min) = min_ts_ms {
        pruned.decisions += conn.execute("DELETE FROM decisions WHERE ts_ms < ?1", [min])?;
        pruned.feedback += conn.execute("DELETE FROM feedback WHERE ts_ms < ?1", [min])?;
    }
    if max_bytes > 0 {
        for _ in 0..64 {
            let used = used_bytes(conn)?;
            if used <= max_bytes as i64 {
                break;
            }
            let share = ((used - max_bytes as i64) as f64 / used as f64 + 0.02).clamp(0.1, 1.0);
            let mut deleted = 0;
            for (table, count) in [("decisions", &mut pruned.decisions), ("feedback", &mut pruned.feedback)] {
                let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
                if rows == 0 {
                    continue;
                }
                let offset = ((rows as f64 * share) as i64).min(rows - 1);
                let cut: Option<i64> = conn
                    .query_row(&format!("SELECT ts_ms FROM {table} ORDER BY ts_ms LIMIT 1 OFFSET ?1"), [offset], |r| r.get(0))
                    .optional()?;
                if let Some(cut) = cut {
                    let n = conn.execute(&format!("DELETE FROM {table} WHERE ts_ms <= ?1"), [cut])?;
                    *count += n;
                    deleted += n;
                }
            }
            if deleted == 0 {
                break;
            }
            conn.execute_batch("PRAGMA incremental_vacuum")?;
        }
    }
    if pruned.decisions + pruned.feedback > 0 {
        conn.execute_batch("PRAGMA incremental_vacuum")?;
        // Also shrink the WAL, which otherwise keeps the deleted pages' images.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(pruned)
}

/// Which feedback reports become training lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackScope {
    /// Only verified reports on offered models: the first report on a model a replica offered
    /// for that request id. A client can neither invent nor repeat such a label.
    #[default]
    Verified,
    /// Every report joined to a decision, verified or not (`--unverified-feedback`).
    All,
}

/// Why feedback reports did not become training lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct ExportSkips {
    /// Reports whose request id has no decision in this log.
    pub no_decision: usize,
    /// Reports on a model that was not offered for their request id (left out unless
    /// [`FeedbackScope::All`]).
    pub not_offered: usize,
    /// Reports on an offered model that were not verified: a repeat of a report on the same
    /// (request id, model), or logged by a replica that did not know the decision (left out
    /// unless [`FeedbackScope::All`]).
    pub unverified: usize,
    /// Reports with neither a quality nor a refusal (availability outcomes, unrated successes).
    pub no_quality: usize,
    /// Reports without output tokens.
    pub no_output_tokens: usize,
}

fn prompt_id(bytes: &[u8]) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(bytes);
    h[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Joins every feedback report to the latest decision with its request id and returns the
/// ones in `scope` that carry a quality label as training lines, in feedback order.
pub fn training_lines(path: &Path, scope: FeedbackScope) -> Result<(Vec<LogRecord>, ExportSkips), LogError> {
    let conn = open_for_reading(path)?;
    let e = db_err(path);
    // A version 1 file no server has opened since: every report unverified.
    let trust = if has_trust_columns(&conn).map_err(&e)? { "f.verified, f.offered" } else { "0, 0" };
    // The propensity belongs to the decision's primary: a report on a fallback has none.
    let propensity = if has_column(&conn, "decisions", "propensity").map_err(&e)? {
        "CASE WHEN json_extract(d.candidates, '$[0].model') = f.model THEN d.propensity END"
    } else {
        "CASE WHEN json_extract(d.candidates, '$[0].model') = f.model THEN 1.0 END"
    };
    // A file no server of schema 3 has opened yet has no savings columns.
    let savings = if has_column(&conn, "feedback", "baseline_model").map_err(&e)? {
        "f.baseline_realised_cost_usd, f.baseline_model, f.baseline_cost_usd"
    } else {
        "f.cost_usd, NULL, NULL"
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT f.model, f.outcome, f.output_tokens, f.quality, d.routing_text, d.embedding, d.encoder, d.id IS NOT NULL, {trust}, {propensity}, {savings}
             FROM feedback f
             LEFT JOIN decisions d ON d.id = (SELECT max(id) FROM decisions WHERE request_id = f.request_id)
             ORDER BY f.id"
        ))
        .map_err(&e)?;
    let mut rows = stmt.query([]).map_err(&e)?;
    let (mut out, mut skips) = (Vec::new(), ExportSkips::default());
    while let Some(r) = rows.next().map_err(&e)? {
        let joined = Joined {
            model: r.get(0).map_err(&e)?,
            outcome: r.get(1).map_err(&e)?,
            output_tokens: r.get(2).map_err(&e)?,
            quality: r.get(3).map_err(&e)?,
            text: r.get(4).map_err(&e)?,
            embedding: r.get(5).map_err(&e)?,
            encoder: r.get(6).map_err(&e)?,
            joined: r.get(7).map_err(&e)?,
            verified: r.get(8).map_err(&e)?,
            offered: r.get(9).map_err(&e)?,
            propensity: r.get(10).map_err(&e)?,
            cost_usd: r.get(11).map_err(&e)?,
            baseline_model: r.get(12).map_err(&e)?,
            baseline_cost_usd: r.get(13).map_err(&e)?,
        };
        out.extend(training_line(joined, scope, &mut skips));
    }
    Ok((out, skips))
}

/// One feedback report joined to the latest decision with its request id, as both stores read it.
pub(crate) struct Joined {
    pub model: String,
    pub outcome: String,
    pub output_tokens: Option<i64>,
    pub quality: Option<f64>,
    pub text: Option<String>,
    pub embedding: Option<Vec<u8>>,
    pub encoder: Option<String>,
    /// A decision was found.
    pub joined: bool,
    /// The report was verified when it was logged.
    pub verified: bool,
    /// Its model was offered for its request id.
    pub offered: bool,
    /// The probability with which its model was chosen as the decision's primary (None for a
    /// report on a fallback).
    pub propensity: Option<f64>,
    /// The realised cost (`baseline_realised_cost_usd`).
    pub cost_usd: Option<f64>,
    /// The baseline model when it was logged.
    pub baseline_model: Option<String>,
    /// The baseline's cost at the reported tokens.
    pub baseline_cost_usd: Option<f64>,
}

/// The training line of one joined report, or the reason it has none (counted in `skips`).
pub(crate) fn training_line(j: Joined, scope: FeedbackScope, skips: &mut ExportSkips) -> Option<LogRecord> {
    if !j.joined {
        skips.no_decision += 1;
        return None;
    }
    if scope == FeedbackScope::Verified {
        if !j.offered {
            skips.not_offered += 1;
            return None;
        }
        if !j.verified {
            skips.unverified += 1;
            return None;
        }
    }
    let score = match (j.quality, j.outcome.as_str()) {
        (Some(q), _) => q,
        (None, "refused") => 0.0,
        _ => {
            skips.no_quality += 1;
            return None;
        }
    };
    let Some(output_tokens) = j.output_tokens else {
        skips.no_output_tokens += 1;
        return None;
    };
    // The prompt id hashes the routing text (or the embedding), so the same prompt across
    // requests is one prompt for the trainer's split.
    let (prompt_id, prompt, embedding, encoder) = match (j.text, j.embedding) {
        (Some(text), _) => (prompt_id(text.as_bytes()), text, None, None),
        (None, Some(bytes)) => (prompt_id(&bytes), String::new(), embedding_from_bytes(&bytes), j.encoder),
        (None, None) => {
            skips.no_decision += 1;
            return None;
        }
    };
    Some(LogRecord {
        prompt_id,
        prompt,
        model: j.model,
        score,
        output_tokens,
        task: Some("feedback".into()),
        embedding,
        encoder,
        propensity: j.propensity,
        cost_usd: j.cost_usd,
        baseline_model: j.baseline_model,
        baseline_cost_usd: j.baseline_cost_usd,
    })
}

/// Row counts, for `logs export` summaries and tests.
pub fn counts(path: &Path) -> Result<(i64, i64), LogError> {
    let conn = open_for_reading(path)?;
    let e = db_err(path);
    let d = conn.query_row("SELECT count(*) FROM decisions", [], |r| r.get(0)).map_err(&e)?;
    let f = conn.query_row("SELECT count(*) FROM feedback", [], |r| r.get(0)).map_err(&e)?;
    Ok((d, f))
}

/// True when `path` starts with the SQLite header.
pub fn is_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 16];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == b"SQLite format 3\0"
}
