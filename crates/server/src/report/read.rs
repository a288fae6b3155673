//! The rows a report reads from a decision log, from SQLite or PostgreSQL, in one shape.
//!
//! Both stores hand the report the same rows: each decision of the window (its primary's
//! prediction, profile and baseline) and each feedback report of the window joined to the
//! latest decision with its request id (the primary, the profile and the reported model's own
//! prediction). PostgreSQL joins in SQL. SQLite, where a million rows through the SQL engine
//! cost seconds, reads the decisions through a covering index ([`store::REPORT_INDEXES`]) with
//! the primary's figures in columns of their own ([`store::REPORT_COLUMNS`]), keeps each one's
//! join figures by request id, and joins the reports to them in memory; a report whose request
//! has no decision in the window is looked up in the log, and the candidates list (JSON) is
//! read only for a report on a model other than the primary.
use std::{
    hash::BuildHasher,
    path::{Path, PathBuf},
};

// NOTE: foldhash rather than std's SipHash for these maps: a million request ids and model
// names per report, where SipHash was a tenth of the time (keys are hashed with a per-process
// random seed all the same).
use foldhash::HashMap;

use rusqlite::{params, types::ValueRef, OptionalExtension};
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

/// A candidate's prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pred<'a> {
    /// Model id.
    pub model: &'a str,
    /// Predicted quality.
    pub quality: f64,
    /// Predicted cost, USD.
    pub cost_usd: f64,
}

/// One decision.
#[derive(Debug, Clone, Copy)]
pub struct Dec<'a> {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The profile applied.
    pub profile: Option<&'a str>,
    /// The primary (none for a decision without candidates).
    pub primary: Option<Pred<'a>>,
    /// The baseline (none for rows logged before the savings columns or without a baseline).
    pub baseline_model: Option<&'a str>,
    /// The baseline's cost at the primary's predicted tokens.
    pub baseline_cost_usd: Option<f64>,
    /// The baseline's predicted quality.
    pub baseline_quality: Option<f64>,
}

/// What a feedback report's decision (the latest with its request id, with candidates) said.
#[derive(Debug, Clone, Copy)]
pub struct Joined<'a> {
    /// The decision's primary model.
    pub primary: &'a str,
    /// The decision's profile.
    pub profile: Option<&'a str>,
    /// The reported model's prediction in that decision (its first candidate of that id), as
    /// (quality, cost in USD); none when the model was not a candidate.
    pub reported: Option<(f64, f64)>,
}

/// One feedback report.
#[derive(Debug, Clone, Copy)]
pub struct Fb<'a> {
    /// Orders reports with the same `ts_ms` (SQLite: the row id; PostgreSQL: the place in
    /// (time, id) order, its ids being time-ordered UUIDs).
    pub id: i64,
    /// Request id.
    pub request_id: &'a str,
    /// The request id hashed (with this read's random seed), to key per-request figures.
    pub request: u64,
    /// The first report of the window on its request id (in the order read).
    pub first_of_request: bool,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The model reported on.
    pub model: &'a str,
    /// `Outcome::as_str`.
    pub outcome: &'a str,
    /// Latency, ms.
    pub latency_ms: Option<f64>,
    /// The reported quality.
    pub quality: Option<f64>,
    /// Logged as verified.
    pub verified: bool,
    /// The baseline's cost at the reported tokens.
    pub baseline_cost_usd: Option<f64>,
    /// The realised cost (reported, else the list price at the reported tokens).
    pub realised_cost_usd: Option<f64>,
    /// Its decision (none when no decision with candidates has its request id).
    pub decision: Option<Joined<'a>>,
}

/// A row of the log as [`Source::read`] hands it over.
#[derive(Debug, Clone, Copy)]
pub enum Row<'r, 'a> {
    /// A decision.
    Decision(&'r Dec<'a>),
    /// A feedback report with its decision.
    Feedback(&'r Fb<'a>),
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
        /// The file has the report columns (and their indexes).
        report: bool,
    },
    /// A PostgreSQL database.
    Postgres(Box<Db>),
}

/// Strings met while reading, kept once each (model ids and profiles), by number.
#[derive(Default)]
struct Names {
    all: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
}

impl Names {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.all.len() as u32;
        self.all.push(s.into());
        self.index.insert(s.into(), i);
        i
    }

    fn get(&self, i: u32) -> &str {
        &self.all[i as usize]
    }
}

/// A decision as the SQLite join keeps it.
#[derive(Clone, Copy)]
struct Kept {
    id: i64,
    /// A report on its request was read.
    reported: bool,
    /// The primary's name, quality and cost (none: no candidates).
    primary: Option<(u32, f64, f64)>,
    profile: Option<u32>,
}

fn text<'a>(v: ValueRef<'a>) -> Option<&'a str> {
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t).ok(),
        _ => None,
    }
}

fn real(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Real(x) => Some(x),
        ValueRef::Integer(i) => Some(i as f64),
        _ => None,
    }
}

fn int(v: ValueRef<'_>) -> i64 {
    match v {
        ValueRef::Integer(i) => i,
        ValueRef::Real(x) => x as i64,
        _ => 0,
    }
}

impl Source {
    /// Opens a SQLite file or a `postgres://` URL (migrating the database's schema, as every reader does).
    pub fn open(source: &Path) -> Result<Self, LogError> {
        match source.to_str().filter(|s| postgres::is_url(s)) {
            Some(url) => Ok(Source::Postgres(Box::new(postgres::reader(url)?))),
            None => {
                let conn = store::open_for_reading(source)?;
                let e = store::db_err(source);
                // Read the pages in place rather than copied through read(2): a report reads
                // the whole window's index pages.
                conn.pragma_update(None, "mmap_size", 1i64 << 36).map_err(e)?;
                let savings = store::has_column(&conn, "decisions", "baseline_model").map_err(e)?;
                let report = store::has_report_columns(&conn).map_err(e)?;
                Ok(Source::Sqlite { conn, path: source.to_path_buf(), savings, report })
            }
        }
    }

    /// Calls `f` on every decision in `w`, then on every feedback report in `w` with its
    /// decision.
    pub fn read(&mut self, w: Window, f: &mut dyn FnMut(Row)) -> Result<(), LogError> {
        match self {
            Source::Sqlite { conn, path, savings, report } => read_sqlite(conn, path, *savings, *report, w, f),
            Source::Postgres(db) => read_postgres(db, w, f),
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

fn read_sqlite(
    conn: &rusqlite::Connection,
    path: &Path,
    savings: bool,
    report: bool,
    w: Window,
    f: &mut dyn FnMut(Row),
) -> Result<(), LogError> {
    let e = store::db_err(path);
    let hasher = foldhash::quality::RandomState::default();
    let mut names = Names::default();
    // Per request id (hashed with this process's random key): its latest decision in the window,
    // kept in time order (a report's decision is near the last one's) behind a small index.
    let mut kept: Vec<Kept> = Vec::new();
    let mut by_hash: HashMap<u64, u32> = HashMap::default();
    let mut keep = |names: &mut Names, id: i64, request_id: &str, d: &Dec| {
        let k = Kept {
            id,
            reported: false,
            primary: d.primary.map(|p| (names.id(p.model), p.quality, p.cost_usd)),
            profile: d.profile.map(|p| names.id(p)),
        };
        match by_hash.entry(hasher.hash_one(request_id)) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let slot = &mut kept[*o.get() as usize];
                if slot.id < k.id {
                    *slot = k;
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(kept.len() as u32);
                kept.push(k);
            }
        }
    };
    let baseline = if savings { "baseline_model, baseline_cost_usd, baseline_quality" } else { "NULL, NULL, NULL" };
    // Decisions logged before the report columns (or without candidates): read again by id,
    // with their candidates list.
    let mut unfilled: Vec<i64> = Vec::new();
    if report {
        // Every decision of the window through the covering index alone.
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, request_id, ts_ms, profile, primary_model, primary_quality, primary_cost_usd, {baseline}
                 FROM decisions INDEXED BY decisions_report WHERE ts_ms >= ?1 AND ts_ms < ?2"
            ))
            .map_err(e)?;
        let mut rows = stmt.query(params![w.since_ms, w.until_ms]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            let col = |i| r.get_ref(i).map_err(e);
            let Some(model) = text(col(4)?) else {
                unfilled.push(int(col(0)?));
                continue;
            };
            let d = Dec {
                ts_ms: int(col(2)?),
                profile: text(col(3)?),
                primary: Some(Pred { model, quality: real(col(5)?).unwrap_or(0.0), cost_usd: real(col(6)?).unwrap_or(0.0) }),
                baseline_model: text(col(7)?),
                baseline_cost_usd: real(col(8)?),
                baseline_quality: real(col(9)?),
            };
            f(Row::Decision(&d));
            keep(&mut names, int(col(0)?), text(col(1)?).unwrap_or_default(), &d);
        }
    }
    let mut from_json = |r: &rusqlite::Row| -> Result<(), LogError> {
        let col = |i| r.get_ref(i).map_err(e);
        let cands = candidates(text(col(4)?));
        let d = Dec {
            ts_ms: int(col(2)?),
            profile: text(col(3)?),
            primary: cands.first().map(|c| Pred { model: &c.model, quality: c.quality, cost_usd: c.cost_usd }),
            baseline_model: text(col(5)?),
            baseline_cost_usd: real(col(6)?),
            baseline_quality: real(col(7)?),
        };
        f(Row::Decision(&d));
        keep(&mut names, int(col(0)?), text(col(1)?).unwrap_or_default(), &d);
        Ok(())
    };
    let json_cols = format!("id, request_id, ts_ms, profile, candidates, {baseline}");
    if report {
        let mut stmt = conn.prepare(&format!("SELECT {json_cols} FROM decisions WHERE id = ?1")).map_err(e)?;
        for id in unfilled {
            let mut rows = stmt.query([id]).map_err(e)?;
            if let Some(r) = rows.next().map_err(e)? {
                from_json(r)?;
            }
        }
    } else {
        let mut stmt = conn.prepare(&format!("SELECT {json_cols} FROM decisions WHERE ts_ms >= ?1 AND ts_ms < ?2")).map_err(e)?;
        let mut rows = stmt.query(params![w.since_ms, w.until_ms]).map_err(e)?;
        while let Some(r) = rows.next().map_err(e)? {
            from_json(r)?;
        }
    }

    let cols = if savings { "baseline_cost_usd, baseline_realised_cost_usd" } else { "NULL, cost_usd" };
    let index = if report { "INDEXED BY feedback_report" } else { "" };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id, request_id, ts_ms, model, outcome, latency_ms, quality, verified, {cols}
             FROM feedback {index} WHERE ts_ms >= ?1 AND ts_ms < ?2"
        ))
        .map_err(e)?;
    let mut by_request =
        conn.prepare("SELECT id, profile, candidates FROM decisions WHERE request_id = ?1 ORDER BY id DESC LIMIT 1").map_err(e)?;
    let mut by_id = conn.prepare("SELECT candidates FROM decisions WHERE id = ?1").map_err(e)?;
    let mut unjoined = foldhash::HashSet::<u64>::default();
    let mut rows = stmt.query(params![w.since_ms, w.until_ms]).map_err(e)?;
    while let Some(r) = rows.next().map_err(e)? {
        let col = |i| r.get_ref(i).map_err(e);
        let request_id = text(col(1)?).unwrap_or_default();
        let model = text(col(3)?).unwrap_or_default();
        let key = hasher.hash_one(request_id);
        // The first report of the window on its request; its decision, as kept or looked up.
        let (first_of_request, k) = if let Some(k) = by_hash.get(&key).map(|&i| &mut kept[i as usize]) {
            let first = !k.reported;
            k.reported = true;
            (first, Some(*k))
        } else if unjoined.contains(&key) {
            (false, None)
        } else {
            // The request's decision is outside the window (or there is none).
            let found: Option<(i64, Option<String>, Option<String>)> =
                by_request.query_row([request_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional().map_err(e)?;
            let k = found.map(|(id, profile, json)| {
                let first = candidates(json.as_deref()).into_iter().next();
                Kept {
                    id,
                    reported: true,
                    primary: first.map(|c| (names.id(&c.model), c.quality, c.cost_usd)),
                    profile: profile.as_deref().map(|p| names.id(p)),
                }
            });
            match k {
                Some(k) => {
                    by_hash.insert(key, kept.len() as u32);
                    kept.push(k);
                }
                None => {
                    unjoined.insert(key);
                }
            }
            (true, k)
        };
        let decision = match k {
            Some(Kept { id, primary: Some((p, q, c)), profile, .. }) => {
                let primary = names.get(p);
                let reported = if primary == model {
                    Some((q, c))
                } else {
                    let json: Option<String> = by_id.query_row([id], |r| r.get(0)).optional().map_err(e)?.flatten();
                    candidates(json.as_deref()).into_iter().find(|c| c.model == model).map(|c| (c.quality, c.cost_usd))
                };
                Some(Joined { primary, profile: profile.map(|p| names.get(p)), reported })
            }
            _ => None,
        };
        f(Row::Feedback(&Fb {
            id: int(col(0)?),
            request_id,
            request: key,
            first_of_request,
            ts_ms: int(col(2)?),
            model,
            outcome: text(col(4)?).unwrap_or_default(),
            latency_ms: real(col(5)?),
            quality: real(col(6)?),
            verified: int(col(7)?) != 0,
            baseline_cost_usd: real(col(8)?),
            realised_cost_usd: real(col(9)?),
            decision,
        }));
    }
    Ok(())
}

fn read_postgres(db: &mut Db, w: Window, f: &mut dyn FnMut(Row)) -> Result<(), LogError> {
    let rows = db.query(
        "SELECT ts_ms, profile, candidates::text, baseline_model, baseline_cost_usd, baseline_quality
         FROM decisions WHERE ts_ms >= $1 AND ts_ms < $2",
        &[&w.since_ms, &w.until_ms],
    )?;
    for r in rows {
        let json: Option<String> = r.get(2);
        let cands = candidates(json.as_deref());
        let (profile, baseline): (Option<String>, Option<String>) = (r.get(1), r.get(3));
        f(Row::Decision(&Dec {
            ts_ms: r.get(0),
            profile: profile.as_deref(),
            primary: cands.first().map(|c| Pred { model: &c.model, quality: c.quality, cost_usd: c.cost_usd }),
            baseline_model: baseline.as_deref(),
            baseline_cost_usd: r.get(4),
            baseline_quality: r.get(5),
        }));
    }
    let rows = db.query(
        "SELECT f.id, f.request_id, f.ts_ms, f.model, f.outcome, f.latency_ms, f.quality, f.verified,
                f.baseline_cost_usd, f.baseline_realised_cost_usd, d.candidates::text, d.profile
         FROM feedback f
         LEFT JOIN LATERAL (
             SELECT candidates, profile FROM decisions WHERE request_id = f.request_id ORDER BY id DESC LIMIT 1
         ) d ON true
         WHERE f.ts_ms >= $1 AND f.ts_ms < $2
         ORDER BY f.ts_ms, f.id",
        &[&w.since_ms, &w.until_ms],
    )?;
    // The ids are UUIDs (time-ordered): the row's place in (time, id) order stands in for them.
    let hasher = foldhash::quality::RandomState::default();
    let mut requests = foldhash::HashSet::<u64>::default();
    for (i, r) in rows.into_iter().enumerate() {
        let (request_id, model, outcome): (String, String, String) = (r.get(1), r.get(3), r.get(4));
        let json: Option<String> = r.get(10);
        let profile: Option<String> = r.get(11);
        let cands = candidates(json.as_deref());
        let decision = cands.first().map(|p| Joined {
            primary: &p.model,
            profile: profile.as_deref(),
            reported: cands.iter().find(|c| c.model == model).map(|c| (c.quality, c.cost_usd)),
        });
        let request = hasher.hash_one(&request_id);
        f(Row::Feedback(&Fb {
            id: i as i64,
            request_id: &request_id,
            request,
            first_of_request: requests.insert(request),
            ts_ms: r.get(2),
            model: &model,
            outcome: &outcome,
            latency_ms: r.get(5),
            quality: r.get(6),
            verified: r.get(7),
            baseline_cost_usd: r.get(8),
            realised_cost_usd: r.get(9),
            decision,
        }));
    }
    Ok(())
}
