//! The local SQLite file that holds batches PostgreSQL could not take, oldest first, and the
//! rows it refused for good when even the dead-letter table could not take them.
//!
//! - Each batch records the database it was meant for: the URL's `user@host:port/db`, and the
//!   database's identity (`system_identifier` and name) when this run had reached it. A batch
//!   for another database is never replayed into this one: it is moved to the `set_aside` table
//!   of the same file, with an error in the log, for its operator to deal with.
//! - The batches are bounded by `spill_max_bytes` (their JSON): over it, new batches are dropped
//!   and counted, the oldest kept (they are the ones closest to being replayed).
//! - The file is this process's alone (an exclusive lock): a second replica pointed at it is
//!   refused at start, since it would replay, and count, this one's batches.
use std::path::PathBuf;

use rusqlite::OptionalExtension;

use super::{now_ms, store, LogError};

/// Where a batch was meant to go.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Destination {
    /// `user@host:port/db` from the URL.
    pub target: String,
    /// The database's identity, when reached in this run.
    pub database: Option<String>,
}

impl Destination {
    /// True when a batch spilled for `self` may be replayed into `now` (reached, so its
    /// identity is known): the identities match, or, for a batch spilled before its run reached
    /// any database, the URLs name the same one. A batch from a build that kept no destination
    /// (`target` empty) is replayed.
    pub fn accepts(&self, now: &Destination) -> bool {
        match (&self.database, &now.database) {
            (Some(then), Some(now)) => then == now,
            _ => self.target.is_empty() || self.target == now.target,
        }
    }

    fn describe(&self) -> String {
        match &self.database {
            Some(db) => format!("{} (database {db})", self.target),
            None => self.target.clone(),
        }
    }
}

/// One spilled batch as read back.
pub(crate) struct Spilled {
    /// Its place in the file.
    pub seq: i64,
    /// Records in it.
    pub records: u64,
    /// Where it was meant to go.
    pub destination: Destination,
    /// The batch (JSON).
    pub batch: String,
}

/// A refused row kept in the file.
pub(crate) struct LocalDeadLetter<'a> {
    /// The row's id.
    pub id: String,
    /// `decision` or `feedback` (or `batch` for a spilled batch that could not be read).
    pub kind: &'static str,
    /// Its request id.
    pub request_id: Option<&'a str>,
    /// When it was logged, ms.
    pub ts_ms: Option<i64>,
    /// Why it was refused.
    pub error: &'a str,
    /// The row (JSON).
    pub record: &'a str,
}

/// The spill file.
pub(crate) struct Spill {
    path: PathBuf,
    conn: Option<rusqlite::Connection>,
    /// Records waiting in the file.
    pub records: u64,
    /// Bytes of the batches waiting (their JSON).
    pub bytes: u64,
    max_bytes: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS spill (seq INTEGER PRIMARY KEY, records INTEGER NOT NULL, batch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER PRIMARY KEY, records INTEGER NOT NULL, batch TEXT NOT NULL,
    target TEXT, database TEXT, reason TEXT NOT NULL, at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, request_id TEXT, ts_ms INTEGER, error TEXT NOT NULL, record TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
";

impl Spill {
    /// Opens (creating) the file and takes it for this process alone.
    pub fn open(path: PathBuf, max_bytes: u64) -> Result<Self, LogError> {
        let mut spill = Spill { path, conn: None, records: 0, bytes: 0, max_bytes };
        let path = spill.path.clone();
        let in_use = |source: rusqlite::Error| LogError::SpillInUse { path: path.clone(), source };
        let busy = |err: &rusqlite::Error| {
            matches!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
        };
        let e = store::db_err(&path);
        let conn = match spill.connect() {
            Ok(c) => c,
            Err(LogError::Db { source, .. }) if busy(&source) => return Err(in_use(source)),
            Err(other) => return Err(other),
        };
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(e)?;
        if let Err(err) = conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;") {
            return Err(if busy(&err) { in_use(err) } else { e(err) });
        }
        // Files from before batches kept their destination get the columns (empty: replayed).
        let has_target: bool =
            conn.query_row("SELECT count(*) FROM pragma_table_info('spill') WHERE name = 'target'", [], |r| r.get(0)).map_err(e)?;
        if !has_target {
            conn.execute_batch("ALTER TABLE spill ADD COLUMN target TEXT NOT NULL DEFAULT ''; ALTER TABLE spill ADD COLUMN database TEXT;")
                .map_err(e)?;
        }
        let (records, bytes): (i64, i64) = conn
            .query_row("SELECT coalesce(sum(records), 0), coalesce(sum(length(CAST(batch AS BLOB))), 0) FROM spill", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(e)?;
        (spill.records, spill.bytes) = (records as u64, bytes as u64);
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
            conn.execute_batch(SCHEMA).map_err(e)?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// The file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends a batch of `records` records meant for `to`. False (nothing written) when it
    /// would take the batches over the byte cap.
    pub fn push(&mut self, records: u64, batch: &str, to: &Destination) -> Result<bool, LogError> {
        let len = batch.len() as u64;
        if self.max_bytes > 0 && self.bytes + len > self.max_bytes {
            return Ok(false);
        }
        let path = self.path.clone();
        self.connect()?
            .execute(
                "INSERT INTO spill (records, batch, target, database) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![records as i64, batch, to.target, to.database],
            )
            .map_err(store::db_err(&path))?;
        self.records += records;
        self.bytes += len;
        Ok(true)
    }

    /// The oldest spilled batch.
    pub fn oldest(&mut self) -> Result<Option<Spilled>, LogError> {
        let path = self.path.clone();
        self.connect()?
            .query_row("SELECT seq, records, target, database, batch FROM spill ORDER BY seq LIMIT 1", [], |r| {
                Ok(Spilled {
                    seq: r.get(0)?,
                    records: r.get::<_, i64>(1)? as u64,
                    destination: Destination { target: r.get(2)?, database: r.get(3)? },
                    batch: r.get(4)?,
                })
            })
            .optional()
            .map_err(store::db_err(&path))
    }

    /// Removes a batch (replayed, or dead-lettered).
    pub fn remove(&mut self, b: &Spilled) -> Result<(), LogError> {
        let path = self.path.clone();
        self.connect()?.execute("DELETE FROM spill WHERE seq = ?1", [b.seq]).map_err(store::db_err(&path))?;
        self.forget(b);
        Ok(())
    }

    fn forget(&mut self, b: &Spilled) {
        self.records = self.records.saturating_sub(b.records);
        self.bytes = self.bytes.saturating_sub(b.batch.len() as u64);
        if self.records == 0 {
            self.bytes = 0;
        }
    }

    /// Moves a batch meant for another database to the `set_aside` table, where it is never
    /// replayed.
    pub fn set_aside(&mut self, b: &Spilled, reason: &str) -> Result<(), LogError> {
        let path = self.path.clone();
        let conn = self.connect()?;
        let tx = conn.transaction().map_err(store::db_err(&path))?;
        tx.execute(
            "INSERT INTO set_aside (seq, records, batch, target, database, reason, at_ms) SELECT seq, records, batch, target, database, ?2, ?3 FROM spill WHERE seq = ?1",
            rusqlite::params![b.seq, reason, now_ms()],
        )
        .map_err(store::db_err(&path))?;
        tx.execute("DELETE FROM spill WHERE seq = ?1", [b.seq]).map_err(store::db_err(&path))?;
        tx.commit().map_err(store::db_err(&path))?;
        tracing::error!(
            records = b.records,
            meant_for = %b.destination.describe(),
            spill = %self.path.display(),
            reason,
            "decision log: spilled records meant for another database are NOT replayed into this one; they are kept in the spill file's set_aside table"
        );
        self.forget(b);
        Ok(())
    }

    /// Keeps refused rows in the file's `dead_letters` table.
    pub fn dead_letter(&mut self, rows: &[LocalDeadLetter]) -> Result<(), LogError> {
        let path = self.path.clone();
        let conn = self.connect()?;
        let tx = conn.transaction().map_err(store::db_err(&path))?;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO dead_letters (id, kind, request_id, ts_ms, error, record, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(store::db_err(&path))?;
            for r in rows {
                ins.execute(rusqlite::params![r.id, r.kind, r.request_id, r.ts_ms, r.error, r.record, now_ms()])
                    .map_err(store::db_err(&path))?;
            }
        }
        tx.commit().map_err(store::db_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(target: &str, database: Option<&str>) -> Destination {
        Destination { target: target.into(), database: database.map(str::to_string) }
    }

    #[test]
    fn a_batch_replays_only_into_the_database_it_was_meant_for() {
        let now = to("me@db:5432/a", Some("7301/a"));
        assert!(to("me@db:5432/a", Some("7301/a")).accepts(&now));
        // The same database under another URL (a new host name): the identity decides.
        assert!(to("me@10.0.0.5:5432/a", Some("7301/a")).accepts(&now));
        // The same URL, another database behind it (a new cluster, another database name).
        assert!(!to("me@db:5432/a", Some("9999/a")).accepts(&now));
        assert!(!to("me@db:5432/b", Some("7301/b")).accepts(&now));
        // Spilled before its run reached any database: the URL decides.
        assert!(to("me@db:5432/a", None).accepts(&now));
        assert!(!to("me@db:5432/b", None).accepts(&now));
        // A file from before destinations were kept.
        assert!(to("", None).accepts(&now));
    }

    #[test]
    fn batches_round_trip_within_the_byte_cap_and_set_aside_ones_stay_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spill.db");
        let here = to("me@db:5432/a", Some("1/a"));
        let mut s = Spill::open(path.clone(), 100).unwrap();
        let taken = Spill::open(path.clone(), 100).err().expect("a second process is refused").to_string();
        assert!(taken.contains("give each replica its own decision_log.spill_path"), "{taken}");
        assert!(s.push(2, &"x".repeat(40), &here).unwrap());
        assert!(s.push(1, &"y".repeat(40), &to("me@db:5432/b", None)).unwrap());
        assert!(!s.push(5, &"z".repeat(40), &here).unwrap(), "over the cap: refused");
        assert_eq!((s.records, s.bytes), (3, 80));
        drop(s);
        // A restart finds the backlog, oldest first.
        let mut s = Spill::open(path.clone(), 100).unwrap();
        assert_eq!((s.records, s.bytes), (3, 80));
        let first = s.oldest().unwrap().unwrap();
        assert_eq!((first.records, first.destination.clone()), (2, here.clone()));
        s.remove(&first).unwrap();
        let second = s.oldest().unwrap().unwrap();
        assert!(!second.destination.accepts(&here));
        s.set_aside(&second, "test").unwrap();
        assert!(s.oldest().unwrap().is_none());
        assert_eq!((s.records, s.bytes), (0, 0));
        s.dead_letter(&[LocalDeadLetter {
            id: "u1".into(),
            kind: "decision",
            request_id: Some("r1"),
            ts_ms: Some(5),
            error: "bad",
            record: "{}",
        }])
        .unwrap();
        drop(s);
        let c = rusqlite::Connection::open(&path).unwrap();
        let kept: (i64, String) = c.query_row("SELECT records, batch FROM set_aside", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(kept, (1, "y".repeat(40)));
        let dead: i64 = c.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0)).unwrap();
        assert_eq!(dead, 1);
    }
}
