//! The entries replicas append to the shared-health streams, how they are read back, and the
//! reader's de-duplication of re-sent entries.
//!
//! Two streams under `<shared_key>`:
//! - `:reports`: one entry per report a replica applied to its breakers. Fields `r` (replica:
//!   a random id per process), `s` (that replica's sequence number of the report), `q` (the
//!   request id), `m` (model), `o` (outcome), `l` (latency, ms, or empty), `t` (time, ms since
//!   the epoch), and when the report names the endpoint: `p` (provider), `f` (time to first
//!   token, ms), `g` (generation time, ms), `k` (output tokens), each empty when not reported.
//!   Entries of older builds lack `s` and `q` and are applied without de-duplication; those
//!   without `p` feed the model's breaker.
//! - `:offered`: the models each decision offered, so that a report landing on another replica
//!   is verified there. One entry per batch: `r` (replica) and `b`, a JSON array of
//!   `[request_id, [model, ...]]`.
use std::collections::HashMap;

use redis::Value;
use serde::{Deserialize, Serialize};

use super::Outcome;

/// One report as shared.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Report {
    pub request_id: Option<String>,
    pub model: String,
    pub outcome: Outcome,
    pub latency_ms: Option<f64>,
    pub ts_ms: i64,
    /// The endpoint's provider, when the report names one.
    pub provider: Option<String>,
    pub ttft_ms: Option<f64>,
    pub generation_ms: Option<f64>,
    pub output_tokens: Option<u32>,
}

/// The models offered for one request id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Offer(pub String, pub Vec<String>);

/// The field/value pairs of a report entry.
pub(super) fn report_fields(replica: &str, seq: u64, r: &Report) -> [(&'static str, String); 11] {
    let num = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    [
        ("r", replica.to_string()),
        ("s", seq.to_string()),
        ("q", r.request_id.clone().unwrap_or_default()),
        ("m", r.model.clone()),
        ("o", r.outcome.as_str().to_string()),
        ("l", r.latency_ms.map_or(String::new(), |l| l.to_string())),
        ("t", r.ts_ms.to_string()),
        ("p", r.provider.clone().unwrap_or_default()),
        ("f", num(r.ttft_ms)),
        ("g", num(r.generation_ms)),
        ("k", r.output_tokens.map_or(String::new(), |k| k.to_string())),
    ]
}

/// (replica, sequence number, report) from a report entry's fields; None for an entry this
/// build cannot read.
pub(super) fn parse_report(fields: &[(String, String)]) -> Option<(String, Option<u64>, Report)> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let ms = |k: &str| get(k).and_then(|l| l.parse().ok()).filter(|l: &f64| l.is_finite() && *l >= 0.0);
    let report = Report {
        request_id: get("q").filter(|q| !q.is_empty()).map(str::to_string),
        model: get("m")?.to_string(),
        outcome: Outcome::parse(get("o")?)?,
        latency_ms: ms("l"),
        ts_ms: get("t")?.parse().ok()?,
        provider: get("p").filter(|p| !p.is_empty()).map(str::to_string),
        ttft_ms: ms("f"),
        generation_ms: ms("g"),
        output_tokens: get("k").and_then(|k| k.parse().ok()),
    };
    Some((get("r")?.to_string(), get("s").and_then(|s| s.parse().ok()), report))
}

/// The `b` field of an offered-sets entry.
pub(super) fn offers_json(offers: &[Offer]) -> String {
    serde_json::to_string(offers).unwrap_or_else(|_| "[]".into())
}

/// (replica, offered sets) from an offered-sets entry's fields; None for one this build cannot read.
pub(super) fn parse_offers(fields: &[(String, String)]) -> Option<(String, Vec<Offer>)> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    Some((get("r")?.to_string(), serde_json::from_str(get("b")?).ok()?))
}

/// A connection for the shared streams: a 1 s connection timeout, and `response_timeout` for
/// each command (a reader's must outlast its `XREAD BLOCK`).
pub(crate) async fn connect(
    client: &redis::Client,
    response_timeout: std::time::Duration,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// Streams tailed together with one `XREAD BLOCK`, each from its own cursor (the id of the last
/// entry read), never further back than its history: a reader that starts, or comes back after
/// an outage, reads what is still relevant and no more.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    keys: Vec<String>,
    cursors: Vec<String>,
    history_ms: Vec<i64>,
}

impl Tail {
    /// Tails each `(stream key, history in ms)` from `now_ms - history`.
    pub fn new(streams: &[(&str, i64)], now_ms: i64) -> Self {
        Self {
            keys: streams.iter().map(|(k, _)| k.to_string()).collect(),
            cursors: streams.iter().map(|(_, h)| format!("{}-0", now_ms - h)).collect(),
            history_ms: streams.iter().map(|(_, h)| *h).collect(),
        }
    }

    /// Moves stream `key`'s cursor to entry `id` (an entry read, or skipped).
    pub fn advance(&mut self, key: &str, id: String) {
        if let Some(i) = self.keys.iter().position(|k| k == key) {
            self.cursors[i] = id;
        }
    }

    /// Moves every cursor older than its history at `now_ms` up to it.
    fn floor(&mut self, now_ms: i64) {
        for (cursor, history) in self.cursors.iter_mut().zip(&self.history_ms) {
            let floor = now_ms - history;
            if stream_ms(cursor) < floor {
                *cursor = format!("{floor}-0");
            }
        }
    }

    /// The cursor of stream `i` (in the order given to [`Tail::new`]).
    #[cfg(test)]
    pub fn cursor(&self, i: usize) -> &str {
        &self.cursors[i]
    }

    /// Up to 1,000 entries after each cursor, waiting up to `block_ms` for one; cursors older
    /// than their history at `now_ms` first move up to it.
    pub async fn read(&mut self, conn: &mut redis::aio::MultiplexedConnection, block_ms: u64, now_ms: i64) -> redis::RedisResult<Value> {
        self.floor(now_ms);
        redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.keys)
            .arg(&self.cursors)
            .query_async(conn)
            .await
    }
}

/// The milliseconds part of a stream id.
pub(crate) fn stream_ms(id: &str) -> i64 {
    id.split('-').next().and_then(|ms| ms.parse().ok()).unwrap_or(0)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// One stream entry: (stream, id, field/value pairs).
pub(crate) type Entry = (String, String, Vec<(String, String)>);

/// The entries of an XREAD reply, stream by stream. Nil (a timeout) is none.
pub(crate) fn entries(reply: &Value) -> Vec<Entry> {
    let streams: Vec<(Option<String>, &Value)> = match reply {
        Value::Array(a) => {
            a.iter().filter_map(|s| if let Value::Array(kv) = s { Some((kv.first().and_then(text), kv.get(1)?)) } else { None }).collect()
        }
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), v)).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for (name, s) in streams {
        let (Some(name), Value::Array(items)) = (name, s) else { continue };
        for item in items {
            let Value::Array(pair) = item else { continue };
            let (Some(id), Some(Value::Array(fv))) = (pair.first().and_then(text), pair.get(1)) else { continue };
            let fields = fv.chunks_exact(2).filter_map(|c| Some((text(&c[0])?, text(&c[1])?))).collect();
            out.push((name.clone(), id, fields));
        }
    }
    out
}

/// Per replica, the highest report sequence number applied: a publisher that re-sends its
/// backlog after a failed pipeline (Redis may have applied part or all of it) appends entries
/// already read, in the same order, and those are skipped.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Replica -> (highest sequence number, when it was last seen, ms).
    replicas: HashMap<String, (u64, i64)>,
}

impl Seen {
    /// True the first time (`replica`, `seq`) is read: a number above every one read from that replica.
    pub fn fresh(&mut self, replica: &str, seq: u64, now_ms: i64) -> bool {
        match self.replicas.get_mut(replica) {
            Some((max, seen)) => {
                *seen = now_ms;
                if seq > *max {
                    *max = seq;
                    true
                } else {
                    false
                }
            }
            None => {
                self.replicas.insert(replica.to_string(), (seq, now_ms));
                true
            }
        }
    }

    /// Forgets replicas not heard from since `before_ms` (their reports have left the window).
    pub fn forget_before(&mut self, before_ms: i64) {
        self.replicas.retain(|_, (_, seen)| *seen >= before_ms);
    }

    /// Replicas remembered.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, kv: &[&str]) -> Value {
        Value::Array(vec![b(id), Value::Array(kv.iter().map(|s| b(s)).collect())])
    }

    #[test]
    fn stream_replies_are_parsed() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                b("pointsman:reports"),
                Value::Array(vec![
                    entry("1-0", &["r", "A", "m", "x/m", "o", "timeout", "l", "", "t", "1700000000000"]),
                    entry("1-1", &["r", "B", "m", "x/m", "o", "no-such-outcome", "t", "1"]),
                    entry("2-0", &["r", "B", "s", "7", "q", "req-1", "m", "y/m", "o", "success", "l", "12.5", "t", "5"]),
                ]),
            ]),
            Value::Array(vec![
                b("pointsman:offered"),
                Value::Array(vec![entry("3-0", &["r", "A", "b", r#"[["req-1",["y/m","z/m"]]]"#]), entry("3-1", &["r", "A", "b", "{"])]),
            ]),
        ]);
        let got = entries(&reply);
        let ids: Vec<(&str, &str)> = got.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("pointsman:reports", "1-0"),
                ("pointsman:reports", "1-1"),
                ("pointsman:reports", "2-0"),
                ("pointsman:offered", "3-0"),
                ("pointsman:offered", "3-1")
            ]
        );
        let first = parse_report(&got[0].2).unwrap();
        let want = Report {
            request_id: None,
            model: "x/m".into(),
            outcome: Outcome::Timeout,
            latency_ms: None,
            ts_ms: 1_700_000_000_000,
            provider: None,
            ttft_ms: None,
            generation_ms: None,
            output_tokens: None,
        };
        assert_eq!(first, ("A".into(), None, want), "an entry of an older build: no sequence number, no request id");
        assert!(parse_report(&got[1].2).is_none(), "an unknown outcome is skipped, not misread");
        let (from, seq, r) = parse_report(&got[2].2).unwrap();
        assert_eq!((from.as_str(), seq, r.request_id.as_deref(), r.latency_ms), ("B", Some(7), Some("req-1"), Some(12.5)));
        let (from, offers) = parse_offers(&got[3].2).unwrap();
        assert_eq!((from.as_str(), offers), ("A", vec![Offer("req-1".into(), vec!["y/m".into(), "z/m".into()])]));
        assert!(parse_offers(&got[4].2).is_none(), "a malformed batch is skipped");
        assert!(entries(&Value::Nil).is_empty(), "a blocked read that timed out has no entries");
        assert_eq!(stream_ms("1700000000123-4"), 1_700_000_000_123);
        // RESP3 answers with a map of stream name to entries.
        let map = Value::Map(vec![(b("k:offered"), Value::Array(vec![entry("9-0", &["r", "C", "b", "[]"])]))]);
        assert_eq!(entries(&map)[0].0, "k:offered");
    }

    #[test]
    fn a_tail_starts_its_history_back_advances_by_stream_and_never_falls_behind_its_history() {
        let mut t = Tail::new(&[("a", 1_000), ("b", 10_000)], 50_000);
        assert_eq!((t.cursor(0), t.cursor(1)), ("49000-0", "40000-0"));
        t.advance("a", "49500-3".into());
        t.advance("nope", "1-0".into());
        t.floor(50_200);
        assert_eq!((t.cursor(0), t.cursor(1)), ("49500-3", "40200-0"), "a within its history, b moved up to it");
        t.floor(60_000);
        assert_eq!((t.cursor(0), t.cursor(1)), ("59000-0", "50000-0"), "after an outage: moved up to the history");
    }

    #[test]
    fn written_entries_read_back() {
        let r = Report {
            request_id: Some("q\t1".into()),
            model: "m".into(),
            outcome: Outcome::RateLimited,
            latency_ms: Some(3.5),
            ts_ms: 9,
            provider: Some("together".into()),
            ttft_ms: Some(1.25),
            generation_ms: None,
            output_tokens: Some(40),
        };
        let fields: Vec<(String, String)> = report_fields("R", 41, &r).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(parse_report(&fields), Some(("R".into(), Some(41), r)));
        let offers = vec![Offer("id \"quoted\"\n".into(), vec!["a/b".into()]), Offer("x".into(), vec![])];
        let fields = vec![("r".to_string(), "R".to_string()), ("b".to_string(), offers_json(&offers))];
        assert_eq!(parse_offers(&fields), Some(("R".into(), offers)));
    }

    #[test]
    fn re_sent_reports_are_read_once() {
        let mut seen = Seen::default();
        // A's pipeline timed out after Redis applied 1..=3; A sends 1..=5 again; then 6.
        let stream = [("A", 1), ("A", 2), ("A", 3), ("B", 1), ("A", 1), ("A", 2), ("A", 3), ("A", 4), ("A", 5), ("B", 1), ("A", 6)];
        let fresh: Vec<(&str, u64)> = stream.into_iter().filter(|(r, s)| seen.fresh(r, *s, 0)).collect();
        assert_eq!(fresh, [("A", 1), ("A", 2), ("A", 3), ("B", 1), ("A", 4), ("A", 5), ("A", 6)]);
        // A restarted replica is a new id, numbered from 1 again.
        assert!(seen.fresh("A2", 1, 10));
        seen.forget_before(5);
        assert_eq!(seen.len(), 1);
        assert!(seen.fresh("A", 1, 20), "forgotten: its reports have left the window anyway");
    }
}
