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
use crate::learning::LogRecord;

/// Schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

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
    candidates TEXT NOT NULL
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
    quality REAL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback(ts_ms);
";

pub(super) fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> LogError + Copy + '_ {
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
    conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(&e)?;
    Ok(conn)
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
    })
    .to_string()
}

/// Writes one batch in one transaction.
pub fn write_batch(conn: &mut Connection, decisions: &[DecisionRecord], feedback: &[FeedbackRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut ins = tx.prepare_cached(
            "INSERT INTO decisions (request_id, ts_ms, routing_text, embedding, encoder, router_version, cost_weight, profile, constraints, input_tokens, candidates)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
            ])?;
        }
        let mut ins = tx.prepare_cached(
            "INSERT INTO feedback (request_id, ts_ms, model, outcome, latency_ms, input_tokens, output_tokens, cost_usd, quality)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
                f.quality
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

/// Deletes rows older than `min_ts_ms`, then the oldest tenth at a time while the database is
/// over `max_bytes` (0 = no size limit), and gives the space back.
pub fn enforce_retention(conn: &mut Connection, min_ts_ms: Option<i64>, max_bytes: u64) -> rusqlite::Result<Pruned> {
    let mut pruned = Pruned::default();
    if let Some(min) = min_ts_ms {
        pruned.decisions += conn.execute("DELETE FROM decisions WHERE ts_ms < ?1", [min])?;
        pruned.feedback += conn.execute("DELETE FROM feedback WHERE ts_ms < ?1", [min])?;
    }
    if max_bytes > 0 {
        for _ in 0..64 {
            if used_bytes(conn)? <= max_bytes as i64 {
                break;
            }
            let rows: i64 =
                conn.query_row("SELECT (SELECT count(*) FROM decisions) + (SELECT count(*) FROM feedback)", [], |r| r.get(0))?;
            if rows == 0 {
                break;
            }
            // The cut-off time below which a tenth of the rows lie (at least one row).
            let cut: Option<i64> = conn
                .query_row(
                    "SELECT ts_ms FROM (SELECT ts_ms FROM decisions UNION ALL SELECT ts_ms FROM feedback) ORDER BY ts_ms LIMIT 1 OFFSET ?1",
                    [(rows / 10).max(0)],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(cut) = cut else { break };
            pruned.decisions += conn.execute("DELETE FROM decisions WHERE ts_ms <= ?1", [cut])?;
            pruned.feedback += conn.execute("DELETE FROM feedback WHERE ts_ms <= ?1", [cut])?;
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

/// Why feedback reports did not become training lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct ExportSkips {
    /// Reports whose request id has no decision in this log.
    pub no_decision: usize,
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
/// ones that carry a quality label as training lines, in feedback order.
pub fn training_lines(path: &Path) -> Result<(Vec<LogRecord>, ExportSkips), LogError> {
    let conn = open_for_reading(path)?;
    let e = db_err(path);
    let mut stmt = conn
        .prepare(
            "SELECT f.model, f.outcome, f.output_tokens, f.quality, d.routing_text, d.embedding, d.encoder, d.id IS NOT NULL
             FROM feedback f
             LEFT JOIN decisions d ON d.id = (SELECT max(id) FROM decisions WHERE request_id = f.request_id)
             ORDER BY f.id",
        )
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
        };
        out.extend(training_line(joined, &mut skips));
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
}

/// The training line of one joined report, or the reason it has none (counted in `skips`).
pub(crate) fn training_line(j: Joined, skips: &mut ExportSkips) -> Option<LogRecord> {
    if !j.joined {
        skips.no_decision += 1;
        return None;
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
    Some(LogRecord { prompt_id, prompt, model: j.model, score, output_tokens, task: Some("feedback".into()), embedding, encoder })
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
