//! Why a PostgreSQL write failed, and what to do with the batch: wait and retry it, or find the
//! rows that can never be stored and set them aside.
//!
//! - **Transient**: the server or the path to it failed (I/O, a closed connection, a time limit,
//!   SQLSTATE classes 08 connection, 53 resources, 57 operator intervention, 40 transaction
//!   rollback, 58 system error, 55P03 lock not available). The same batch may land later: it
//!   goes to the spill file and is replayed.
//! - **Permanent**: the server refused the batch as it is (class 22 data, 23 integrity, 42
//!   syntax or access, and every other code; a parameter the client cannot encode). Sending it
//!   again changes nothing, so [`isolate`] splits the batch in halves until the refused rows are
//!   found; the rest land, and the refused rows go to the dead-letter table. Class 42 (a missing
//!   table or column, a revoked grant) concerns the statement rather than a row: the whole batch
//!   is refused at once, without splitting it.
use super::LogError;

/// A failed write, by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The same batch may succeed later (spill and replay it).
    #[error("{0}")]
    Transient(LogError),
    /// The batch can never be written as it is (isolate the refused rows).
    #[error("{error}")]
    Permanent {
        /// What the server or the client said.
        error: LogError,
        /// The error depends on the rows, so splitting the batch finds them; false when every
        /// row fails alike (class 42: a missing table, a revoked grant).
        per_row: bool,
    },
}

impl WriteError {
    /// The underlying error.
    pub fn into_inner(self) -> LogError {
        match self {
            WriteError::Transient(e) | WriteError::Permanent { error: e, .. } => e,
        }
    }
}

/// The server's SQLSTATE, when it answered.
pub fn sqlstate(e: &LogError) -> Option<&str> {
    match e {
        LogError::Postgres { source: Some(s), .. } => s.as_db_error().map(|d| d.code().code()),
        _ => None,
    }
}

/// True when a SQLSTATE says the same statement may succeed later.
pub fn transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57" | "40" | "58")) || code == "55P03"
}

/// Sorts a failed write: see the module documentation.
pub fn classify(e: LogError) -> WriteError {
    let client_side = match &e {
        LogError::Postgres { source: Some(s), .. } if s.as_db_error().is_none() => Some(s.to_string()),
        _ => None,
    };
    let code = sqlstate(&e).map(str::to_string);
    match (code, client_side) {
        (Some(code), _) if transient_sqlstate(&code) => WriteError::Transient(e),
        (Some(code), _) => WriteError::Permanent { error: e, per_row: !code.starts_with("42") },
        // tokio-postgres exposes no error kind; these are its displays (0.7) of a value it
        // could not encode, which no retry changes. Everything else on the client side (I/O,
        // closed, a protocol error) is the connection's.
        (None, Some(shown)) if shown.starts_with("error serializing parameter") || shown.starts_with("error encoding message") => {
            WriteError::Permanent { error: e, per_row: true }
        }
        // A time limit (no source), a local file, the connection.
        _ => WriteError::Transient(e),
    }
}

/// A write batch that can be split.
pub trait Batch: Clone {
    /// Records in it.
    fn len(&self) -> usize;
    /// No record in it.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The first half and the rest (each non-empty when `len() >= 2`).
    fn split(self) -> (Self, Self);
}

/// The rows [`isolate`] could not write, with the error that refused them.
#[derive(Debug)]
pub struct Refused<B> {
    /// The rows.
    pub rows: B,
    /// Why.
    pub error: LogError,
}

/// What [`isolate`] did with a batch.
#[derive(Debug)]
pub struct Isolated<B> {
    /// Statements (transactions) sent.
    pub attempts: usize,
    /// Rows refused for good, by the error that refused them.
    pub refused: Vec<Refused<B>>,
}

/// Writes `batch` with `write`. On a permanent, row-specific error it splits the batch in
/// halves and writes each, recursively, until every refused row stands alone: the rest land.
/// A transient error at any depth stops it and is returned (the caller keeps the whole batch
/// for later; halves that landed already are skipped then by their ids). The batch is copied
/// only when it has to be split.
pub fn isolate<B: Batch>(batch: &B, write: &mut impl FnMut(&B) -> Result<(), WriteError>) -> Result<Isolated<B>, LogError> {
    let mut out = Isolated { attempts: 0, refused: Vec::new() };
    if !batch.is_empty() {
        out.attempts += 1;
        match write(batch) {
            Ok(()) => {}
            Err(e) => settle(batch.clone(), e, write, &mut out)?,
        }
    }
    Ok(out)
}

/// What to do with `b` after `write` failed with `e`.
fn settle<B: Batch>(
    b: B,
    e: WriteError,
    write: &mut impl FnMut(&B) -> Result<(), WriteError>,
    out: &mut Isolated<B>,
) -> Result<(), LogError> {
    match e {
        WriteError::Transient(e) => Err(e),
        WriteError::Permanent { per_row: true, .. } if b.len() >= 2 => {
            // The first half first: rows keep their order.
            let (first, rest) = b.split();
            for half in [first, rest] {
                if half.is_empty() {
                    continue;
                }
                out.attempts += 1;
                if let Err(e) = write(&half) {
                    settle(half, e, write, out)?;
                }
            }
            Ok(())
        }
        WriteError::Permanent { error, .. } => {
            out.refused.push(Refused { rows: b, error });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(detail: &str) -> LogError {
        LogError::Postgres { url: "postgres://db".into(), detail: detail.into(), source: None }
    }

    impl Batch for Vec<u32> {
        fn len(&self) -> usize {
            <[u32]>::len(self)
        }
        fn split(mut self) -> (Self, Self) {
            let rest = self.split_off(self.len() / 2);
            (self, rest)
        }
    }

    #[test]
    fn sqlstates_are_sorted_into_transient_and_permanent() {
        for code in ["08006", "08001", "53100", "53300", "57014", "57P01", "40001", "40P01", "58030", "55P03"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["22021", "22P05", "23514", "23505", "42501", "42P01", "42703", "XX000", "0A000", "55000"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        // A time limit or a local failure (no server answer) is transient.
        assert!(matches!(classify(err("no answer in 500 ms")), WriteError::Transient(_)));
        let io = LogError::Io { path: "spill.db".into(), source: std::io::Error::other("disk") };
        assert!(matches!(classify(io), WriteError::Transient(_)));
    }

    /// Rows 13 and 40 are refused (permanent, row-specific); everything else lands.
    #[test]
    fn bisect_isolates_the_refused_rows_and_lands_the_rest() {
        let bad = [13u32, 40];
        let mut landed = Vec::new();
        let mut write = |b: &Vec<u32>| {
            if b.iter().any(|r| bad.contains(r)) {
                Err(WriteError::Permanent { error: err("invalid byte sequence (22021)"), per_row: true })
            } else {
                landed.extend_from_slice(b);
                Ok(())
            }
        };
        let out = isolate(&(0..64).collect::<Vec<u32>>(), &mut write).unwrap();
        let refused: Vec<u32> = out.refused.iter().flat_map(|r| r.rows.clone()).collect();
        assert_eq!(refused, bad);
        assert_eq!(landed, (0..64).filter(|r| !bad.contains(r)).collect::<Vec<_>>(), "the rest land, in order");
        // Two bad rows in 64: at most 2 * log2(64) levels of halves, far fewer than 64 singles.
        assert!(out.attempts <= 2 * 2 * 6 + 1, "{} attempts", out.attempts);
    }

    #[test]
    fn a_transient_error_while_splitting_keeps_the_batch() {
        let mut calls = 0;
        let mut write = |_: &Vec<u32>| {
            calls += 1;
            match calls {
                1 => Err(WriteError::Permanent { error: err("check constraint (23514)"), per_row: true }),
                _ => Err(WriteError::Transient(err("no answer in 500 ms"))),
            }
        };
        let e = isolate(&(0..8).collect::<Vec<u32>>(), &mut write).unwrap_err();
        assert!(e.to_string().contains("no answer"), "{e}");
    }

    #[test]
    fn a_statement_level_error_refuses_the_whole_batch_at_once() {
        let mut write = |_: &Vec<u32>| Err(WriteError::Permanent { error: err("permission denied (42501)"), per_row: false });
        let out = isolate(&(0..100).collect::<Vec<u32>>(), &mut write).unwrap();
        assert_eq!(out.attempts, 1);
        assert_eq!(out.refused.len(), 1);
        assert_eq!(out.refused[0].rows.len(), 100);
    }
}
