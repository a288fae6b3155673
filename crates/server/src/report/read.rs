//! The rows a report reads from a decision log, from SQLite or PostgreSQL, in one shape.
use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Deserialize;

use super::Window;
use crate::logs::{
    postgres::{self, Db},
    store, LogError,
};

/// One logged candidate, as the report reads it from the `candidates` JSON.
#[derive(Debug, Clone, Deserialize)]
pub struct Cand {
    /// Model id.
    pub model: String,
    /// Predicted quality.
    #[serde(default)]
    pub quality: f64,
    /// Predicted cost, USD.
    #[serde(default)]
    pub cost_usd: f64,
}

/// The candidates of a decision (primary first); an unreadable list reads as empty.
pub fn candidates(json: Option<&str>) -> Vec<Cand> {
    json.and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default()
}

/// One decision.
#[derive(Debug, Clone)]
pub struct DecisionRow {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The profile applied.
    pub profile: Option<String>,
    /// Primary first, then fallbacks.
    pub candidates: Vec<Cand>,
    /// The baseline (none for rows logged before the savings columns or without a baseline).
    pub baseline_model: Option<String>,
    /// The baseline's cost at the primary's predicted tokens.
    pub baseline_cost_usd: Option<f64>,
    /// The baseline's predicted quality.
    pub baseline_quality: Option<f64>,
}

/// One feedback report with what its decision (the latest with its request id) said.
#[derive(Debug, Clone)]
pub struct FeedbackRow {
    /// Request id.
    pub request_id: String,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The model reported on.
    pub model: String,
    /// `Outcome::as_str`.
    pub outcome: String,
    /// Latency, ms.
    pub latency_ms: Option<f64>,
    /// The reported cost.
    pub cost_usd: Option<f64>,
    /// The reported quality.
    pub quality: Option<f64>,
    /// Logged as verified.
    pub verified: bool,
    /// The baseline's cost at the reported tokens.
    pub baseline_cost_usd: Option<f64>,
    /// The realised cost (reported, else the list price at the reported tokens).
    pub realised_cost_usd: Option<f64>,
    /// The decision's candidates (empty when no decision has the request id).
    pub decision: Vec<Cand>,
    /// The decision's profile.
    pub profile: Option<String>,
}

/// One sampled decision for the prompt clusters.
#[derive(Debug, Clone)]
pub struct SampleRow {
    /// The routing text, when kept.
    pub text: Option<String>,
    /// The embedding, when kept instead of the text.
    pub embedding: Option<Vec<f32>>,
    /// The encoder of `embedding`.
    pub encoder: String,
    /// Primary first.
    pub candidates: Vec<Cand>,
}

/// A decision log open for reading.
pub enum Source {
    /// A SQLite file.
    Sqlite {
        /// The connection.
        conn: rusqlite::Connection,
        /// The file.
        path: PathBuf,
        /// The file has the savings columns.
        savings: bool,
    },
    /// A PostgreSQL database.
    Postgres(Box<Db>),
}

impl Source {
    /// Opens a SQLite file or a `postgres://` URL (migrating the database's schema, as every reader does).
    pub fn open(source: &Path) -> Result<Self, LogError> {
        match source.to_str().filter(|s| postgres::is_url(s)) {
            Some(url) => Ok(Source::Postgres(Box::new(postgres::reader(url)?))),
            None => {
                let conn = store::open_for_reading(source)?;
                let savings = store::has_column(&conn, "decisions", "baseline_model").map_err(store::db_err(source))?;
                Ok(Source::Sqlite { conn, path: source.to_path_buf(), savings })
            }
        }
    }

    /// Calls `f` on every decision in `w`.
    pub fn decisions(&mut self, w: Window, f: &mut dyn FnMut(DecisionRow)) -> Result<(), LogError> {
        match self {
            Source::Sqlite { conn, path, savings } => {
                let e = store::db_err(path);
                let cols = if *savings { "baseline_model, baseline_cost_usd, baseline_quality" } else { "NULL, NULL, NULL" };
                let mut stmt = conn
                    .prepare(&format!("SELECT ts_ms, profile, candidates, {cols} FROM decisions WHERE ts_ms >= ?1 AND ts_ms < ?2"))
                    .map_err(e)?;
                let mut rows = stmt.query(params![w.since_ms, w.until_ms]).map_err(e)?;
                while let Some(r) = rows.next().map_err(e)? {
                    let json: Option<String> = r.get(2).map_err(e)?;
                    f(DecisionRow {
                        ts_ms: r.get(0).map_err(e)?,
                        profile: r.get(1).map_err(e)?,
                        candidates: candidates(json.as_deref()),
                        baseline_model: r.get(3).map_err(e)?,
                        baseline_cost_usd: r.get(4).map_err(e)?,
                        baseline_quality: r.get(5).map_err(e)?,
                    });
                }
                Ok(())
            }
            Source::Postgres(db) => {
                let rows = db.query(
                    "SELECT ts_ms, profile, candidates::text, baseline_model, baseline_cost_usd, baseline_quality
                     FROM decisions WHERE ts_ms >= $1 AND ts_ms < $2",
                    &[&w.since_ms, &w.until_ms],
                )?;
                for r in rows {
                    let json: Option<String> = r.get(2);
                    f(DecisionRow {
                        ts_ms: r.get(0),
                        profile: r.get(1),
                        candidates: candidates(json.as_deref()),
                        baseline_model: r.get(3),
                        baseline_cost_usd: r.get(4),
                        baseline_quality: r.get(5),
                    });
                }
                Ok(())
            }
        }
    }

    /// Calls `f` on every feedback report in `w`, joined to the latest decision with its request id.
    pub fn feedback(&mut self, w: Window, f: &mut dyn FnMut(FeedbackRow)) -> Result<(), LogError> {
        match self {
            Source::Sqlite { conn, path, savings } => {
                let e = store::db_err(path);
                let cols = if *savings { "f.baseline_cost_usd, f.baseline_realised_cost_usd" } else { "NULL, f.cost_usd" };
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT f.request_id, f.ts_ms, f.model, f.outcome, f.latency_ms, f.cost_usd, f.quality, f.verified, {cols}, d.candidates, d.profile
                         FROM feedback f
                         LEFT JOIN decisions d ON d.id = (SELECT max(id) FROM decisions WHERE request_id = f.request_id)
                         WHERE f.ts_ms >= ?1 AND f.ts_ms < ?2"
                    ))
                    .map_err(e)?;
                let mut rows = stmt.query(params![w.since_ms, w.until_ms]).map_err(e)?;
                while let Some(r) = rows.next().map_err(e)? {
                    let json: Option<String> = r.get(10).map_err(e)?;
                    f(FeedbackRow {
                        request_id: r.get(0).map_err(e)?,
                        ts_ms: r.get(1).map_err(e)?,
                        model: r.get(2).map_err(e)?,
                        outcome: r.get(3).map_err(e)?,
                        latency_ms: r.get(4).map_err(e)?,
                        cost_usd: r.get(5).map_err(e)?,
                        quality: r.get(6).map_err(e)?,
                        verified: r.get(7).map_err(e)?,
                        baseline_cost_usd: r.get(8).map_err(e)?,
                        realised_cost_usd: r.get(9).map_err(e)?,
                        decision: candidates(json.as_deref()),
                        profile: r.get(11).map_err(e)?,
                    });
                }
                Ok(())
            }
            Source::Postgres(db) => {
                let rows = db.query(
                    "SELECT f.request_id, f.ts_ms, f.model, f.outcome, f.latency_ms, f.cost_usd, f.quality, f.verified,
                            f.baseline_cost_usd, f.baseline_realised_cost_usd, d.candidates::text, d.profile
                     FROM feedback f
                     LEFT JOIN LATERAL (
                         SELECT candidates, profile FROM decisions WHERE request_id = f.request_id ORDER BY id DESC LIMIT 1
                     ) d ON true
                     WHERE f.ts_ms >= $1 AND f.ts_ms < $2",
                    &[&w.since_ms, &w.until_ms],
                )?;
                for r in rows {
                    let json: Option<String> = r.get(10);
                    f(FeedbackRow {
                        request_id: r.get(0),
                        ts_ms: r.get(1),
                        model: r.get(2),
                        outcome: r.get(3),
                        latency_ms: r.get(4),
                        cost_usd: r.get(5),
                        quality: r.get(6),
                        verified: r.get(7),
                        baseline_cost_usd: r.get(8),
                        realised_cost_usd: r.get(9),
                        decision: candidates(json.as_deref()),
                        profile: r.get(11),
                    });
                }
                Ok(())
            }
        }
    }

    /// About `n` decisions of `w`, spread over it (SQLite: every k-th row; PostgreSQL: a random sample).
    pub fn sample(&mut self, w: Window, n: usize) -> Result<Vec<SampleRow>, LogError> {
        let n = n as i64;
        let mut out = Vec::new();
        match self {
            Source::Sqlite { conn, path, .. } => {
                let e = store::db_err(path);
                let total: i64 = conn
                    .query_row("SELECT count(*) FROM decisions WHERE ts_ms >= ?1 AND ts_ms < ?2", params![w.since_ms, w.until_ms], |r| {
                        r.get(0)
                    })
                    .map_err(e)?;
                let step = (total / n.max(1)).max(1);
                let mut stmt = conn
                    .prepare(
                        "SELECT routing_text, embedding, encoder, candidates FROM decisions
                         WHERE ts_ms >= ?1 AND ts_ms < ?2 AND id % ?3 = 0 LIMIT ?4",
                    )
                    .map_err(e)?;
                let mut rows = stmt.query(params![w.since_ms, w.until_ms, step, n]).map_err(e)?;
                while let Some(r) = rows.next().map_err(e)? {
                    let blob: Option<Vec<u8>> = r.get(1).map_err(e)?;
                    let json: Option<String> = r.get(3).map_err(e)?;
                    out.push(SampleRow {
                        text: r.get(0).map_err(e)?,
                        embedding: blob.as_deref().and_then(store::embedding_from_bytes),
                        encoder: r.get(2).map_err(e)?,
                        candidates: candidates(json.as_deref()),
                    });
                }
            }
            Source::Postgres(db) => {
                let rows = db.query(
                    "SELECT routing_text, embedding, encoder, candidates::text FROM decisions
                     WHERE ts_ms >= $1 AND ts_ms < $2 ORDER BY random() LIMIT $3",
                    &[&w.since_ms, &w.until_ms, &n],
                )?;
                for r in rows {
                    let blob: Option<Vec<u8>> = r.get(1);
                    let json: Option<String> = r.get(3);
                    out.push(SampleRow {
                        text: r.get(0),
                        embedding: blob.as_deref().and_then(store::embedding_from_bytes),
                        encoder: r.get(2),
                        candidates: candidates(json.as_deref()),
                    });
                }
            }
        }
        Ok(out)
    }
}
