//! Retention on PostgreSQL: rows older than `max_age_days` deleted in chunks, by one replica at
//! a time, on a thread and a connection of its own.
//!
//! Each pass takes a session advisory lock with `pg_try_advisory_lock`: the replica that gets it
//! prunes, the others skip the pass (the deletes would only contend for the same rows). It then
//! deletes [`CHUNK`] rows per statement (each its own short transaction, through the `ts_ms`
//! index) until none is left, so a large backlog (retention first turned on, `max_age_days`
//! lowered, a long downtime) takes many short statements rather than one that holds locks for
//! minutes. The writer thread never waits for any of it. The size of a shared database is its
//! operator's: there is no byte limit here.
use std::{
    sync::{atomic::Ordering, Arc},
    thread::JoinHandle,
    time::Duration,
};

use super::{now_ms, postgres::Db, LogConfig, LogError, LogStats};

/// Rows deleted per statement.
pub const CHUNK: i64 = 5000;

/// The advisory lock key of the pruning replica ("ptsmnret").
pub const RETENTION_LOCK: i64 = 0x7074_736d_6e72_6574;

/// Longest one chunk's DELETE may take.
const CHUNK_LIMIT: Duration = Duration::from_secs(60);

/// The tables pruned, each with a `ts_ms` index.
const TABLES: [&str; 3] = ["decisions", "feedback", "dead_letters"];

/// The retention thread; told to stop (between chunks) when dropped, and not waited for: a
/// DELETE on a stalled server must not hold up shutdown.
pub(crate) struct Retention {
    /// Dropping it disconnects the thread's receiver: its signal to stop.
    _stop: flume::Sender<()>,
    _thread: JoinHandle<()>,
}

impl Retention {
    /// Starts the thread (none when `max_age_days` is 0).
    pub fn start(cfg: &LogConfig, url: &str, stats: &Arc<LogStats>) -> Option<Self> {
        if cfg.max_age_days <= 0.0 {
            return None;
        }
        let (stop, stopped) = flume::bounded::<()>(1);
        let (url, stats) = (url.to_string(), Arc::clone(stats));
        let (max_age_ms, interval) = ((cfg.max_age_days * 86_400_000.0) as i64, Duration::from_secs(cfg.retention_interval_seconds));
        let thread = std::thread::Builder::new()
            .name("pointsman-log-retention".into())
            .spawn(move || {
                let mut db = None;
                loop {
                    let stop = || !matches!(stopped.try_recv(), Err(flume::TryRecvError::Empty));
                    match prune(&mut db, &url, now_ms() - max_age_ms, &stats, &stop) {
                        Ok(0) => {}
                        Ok(rows) => tracing::info!(rows, "decision log retention removed old rows"),
                        Err(e) => {
                            // A new connection next time (and the lock, if held, goes with this one).
                            db = None;
                            tracing::warn!(error = %e, "decision log retention failed; trying again next interval");
                        }
                    }
                    if !matches!(stopped.recv_timeout(interval), Err(flume::RecvTimeoutError::Timeout)) {
                        break;
                    }
                }
                // Dropping a connection's runtime is fine on this plain thread.
                drop(db);
            })
            .ok()?;
        Some(Retention { _stop: stop, _thread: thread })
    }
}

/// One pass: deletes rows older than `min_ts_ms` in chunks if this replica holds the lock;
/// returns the rows deleted. `stop` is asked between chunks.
fn prune(db: &mut Option<Db>, url: &str, min_ts_ms: i64, stats: &LogStats, stop: &impl Fn() -> bool) -> Result<u64, LogError> {
    if db.as_ref().is_none_or(|d| d.is_closed()) {
        *db = Some(Db::connect(url, Duration::from_secs(5))?);
    }
    let db = db.as_mut().expect("connected above");
    if !db.query_bool(&format!("SELECT pg_try_advisory_lock({RETENTION_LOCK})"))? {
        tracing::debug!("decision log retention: another replica is pruning");
        stats.retention_skipped.fetch_add(1, Ordering::Relaxed);
        return Ok(0);
    }
    let result = (|| {
        let mut total = 0;
        for table in TABLES {
            let sql = format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE ts_ms < $1 LIMIT {CHUNK})");
            loop {
                let n = db.execute(&sql, &[&min_ts_ms], CHUNK_LIMIT)?;
                stats.retention_deletes.fetch_add(1, Ordering::Relaxed);
                stats.pruned_rows.fetch_add(n, Ordering::Relaxed);
                total += n;
                if n < CHUNK as u64 || stop() {
                    break;
                }
            }
            if stop() {
                break;
            }
        }
        Ok(total)
    })();
    // On an error the caller drops the connection, and the lock with it.
    if result.is_ok() {
        db.query_bool(&format!("SELECT pg_advisory_unlock({RETENTION_LOCK})"))?;
    }
    result
}
