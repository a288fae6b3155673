//! A replay of production-shaped traffic through the real gateway: a corpus generated here
//! (seeded, so every run sends the same bytes) of tool-calling agent sessions, multimodal turns,
//! 100-turn chats, 200 KB RAG prompts, streamed answers, unicode and control characters (U+0000
//! too), bodies that are not JSON or are cut short, client-set routing headers and explicit
//! models, sent four at a time through the real Envoy (the shipped config, ports changed) to fake
//! upstreams, with the release binary as the ext_proc processor, its decision log in a real
//! PostgreSQL and its health shared through a real Redis.
//!
//! What must hold, from what the server, the upstreams and PostgreSQL counted:
//! 1. every request reaches exactly one upstream and its client gets a 2xx: Pointsman makes no
//!    4xx or 5xx of its own for requests an upstream accepts;
//! 2. every routed request's decision id is in PostgreSQL's `decisions` exactly once, with the
//!    model the upstream was sent, and the decisions equal the server's routed count;
//! 3. no request reaches a cluster a client header named: every arrival at a provider's cluster
//!    carries Pointsman's choice of that provider;
//! 4. the replica's resident memory after the corpus is bounded;
//! 5. nothing went to the dead-letter table and the spill is empty (the control characters were
//!    made storable).
mod common;
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/replica.rs"]
mod replica;
#[path = "common/servers.rs"]
mod servers;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use gateway::*;
use replica::*;
use serde_json::{json, Value};
use servers::*;

/// The corpus's seed.
const SEED: u64 = 0x5EED_2026_1207;
/// Clients sending at once.
const CLIENTS: usize = 4;
/// The replica's resident set after the corpus, at most. The release binary holds the ONNX
/// encoder and ONNX Runtime's arenas, the head, the prediction cache and the log queue: about
/// 180 MB here after the corpus (2 cores; more cores, more runtime threads and arenas). The
/// corpus itself is about 1 MB, so 600 MB is room for a larger machine, not for a leak of
/// bodies or of routing work kept per request.
const RSS_LIMIT_KB: u64 = 600 * 1024;
/// Providers with a cluster of their own in the shipped Envoy config.
const CLUSTERS: [&str; 4] = ["openai", "together", "anthropic", "deepseek"];

/// A small deterministic generator (xorshift64*): the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One request of the corpus.
struct Request {
    kind: &'static str,
    body: String,
    headers: Vec<(&'static str, String)>,
}

const TOPICS: [&str; 8] = [
    "the history of the Roman aqueducts",
    "how to reverse a linked list in Rust without unsafe code",
    "a weekly meal plan for a vegetarian runner",
    "the proof that there are infinitely many primes",
    "why the sky is blue at noon and red at sunset",
    "how to negotiate a salary for a first job",
    "the difference between TCP and UDP for a game server",
    "a haiku about autumn rain",
];

/// Strings clients really send: scripts, emoji sequences, bidi marks, a BOM, terminal escapes,
/// and the C0 controls, U+0000 included (PostgreSQL's text refuses it).
const ODD: [&str; 14] = [
    "naïve café, e\u{301}",
    "日本語で説明してください",
    "مرحبا، كيف حالك؟",
    "🦀👩\u{200d}👩\u{200d}👧🏳️\u{200d}🌈",
    "\u{0000}",
    "before\u{0000}after",
    "\u{0007}bell\u{0008}",
    "\u{001b}[31mred\u{001b}[0m",
    "\u{feff}BOM first",
    "\u{202e}reversed\u{202c}",
    "tabs\tand\r\nnewlines\n",
    "\u{fffd}\u{fffe}\u{ffff}",
    "\u{007f}\u{0085}\u{2028}\u{2029}",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√ Ω",
];

fn user(text: impl Into<String>) -> Value {
    json!({"role": "user", "content": text.into()})
}

fn auto(messages: Vec<Value>) -> Value {
    json!({"model": "pointsman/auto", "messages": messages})
}

/// A tool-calling agent session, one request per step: each step adds the assistant's tool
/// call (content null) and the tool's answer, so the later requests end on a tool turn.
fn agent_session(rng: &mut Rng, session: usize, out: &mut Vec<Request>) {
    let tools = json!([
        {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
    ]);
    let mut messages = vec![
        json!({"role": "system", "content": "You are a coding agent. Use the tools; answer briefly."}),
        user(format!("Session {session}: find out {}", rng.pick(&TOPICS))),
    ];
    for step in 0..4 {
        let mut body = auto(messages.clone());
        body["tools"] = tools.clone();
        body["tool_choice"] = json!("auto");
        out.push(Request { kind: "agent", body: body.to_string(), headers: vec![] });
        let (id, tool) = (format!("call_{session}_{step}"), *rng.pick(&["search", "read_file"]));
        let args = json!({"q": rng.pick(&TOPICS), "path": format!("src/step{step}.rs")}).to_string();
        messages.push(json!({"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function", "function": {"name": tool, "arguments": args}}]}));
        messages.push(
            json!({"role": "tool", "tool_call_id": id, "content": format!("{{\"result\": \"{} lines\", \"ok\": true}}", rng.below(500))}),
        );
    }
}

fn multimodal(rng: &mut Rng, i: usize) -> Request {
    let image = json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,iVBORw0KGgo{i}="), "detail": "low"}});
    let messages = match i % 3 {
        // Text and an image in one turn.
        0 => vec![
            json!({"role": "user", "content": [{"type": "text", "text": format!("What is in this picture? Think about {}", rng.pick(&TOPICS))}, image]}),
        ],
        // Image only, nothing else to route on.
        1 => vec![json!({"role": "user", "content": [image]})],
        // Image only, after text turns.
        _ => vec![
            user("I will send a photo of a plant. Tell me how to care for it."),
            json!({"role": "assistant", "content": "Sure, send it."}),
            json!({"role": "user", "content": [image]}),
        ],
    };
    Request { kind: "multimodal", body: auto(messages).to_string(), headers: vec![] }
}

fn long_chat(rng: &mut Rng, i: usize) -> Request {
    let messages = (0..100)
        .map(|t| {
            let role = if t % 2 == 0 { "user" } else { "assistant" };
            json!({"role": role, "content": format!("chat {i} turn {t}: more about {}", rng.pick(&TOPICS))})
        })
        .collect();
    Request { kind: "100 turns", body: auto(messages).to_string(), headers: vec![] }
}

/// A retrieval-augmented prompt of about 200 KB: numbered passages, then the question.
fn rag(rng: &mut Rng, i: usize) -> Request {
    let mut context = String::new();
    let mut n = 0;
    while context.len() < 200_000 {
        n += 1;
        context.push_str(&format!(
            "[doc {n}] Passage about {}: the committee reviewed the figures in detail and found them sound. ",
            rng.pick(&TOPICS)
        ));
    }
    let messages = vec![
        json!({"role": "system", "content": format!("Answer from the documents only.\n\n{context}")}),
        user(format!("Question {i}: which documents discuss {}?", rng.pick(&TOPICS))),
    ];
    Request { kind: "200 KB RAG", body: auto(messages).to_string(), headers: vec![] }
}

fn streamed(rng: &mut Rng, i: usize) -> Request {
    let mut body = auto(vec![user(format!("Stream {i}: tell me about {}", rng.pick(&TOPICS)))]);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    Request { kind: "stream", body: body.to_string(), headers: vec![] }
}

/// Odd characters in the user's text, the system prompt, or a tool's answer.
fn odd(rng: &mut Rng, i: usize) -> Request {
    let text = format!("{} {} {}", rng.pick(&ODD), rng.pick(&TOPICS), rng.pick(&ODD));
    let messages = match i % 3 {
        0 => vec![user(text)],
        1 => vec![json!({"role": "system", "content": text}), user(format!("Explain {}", rng.pick(&TOPICS)))],
        _ => vec![
            user(format!("Look up {}", rng.pick(&TOPICS))),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": text}),
            user(format!("{} and summarise", rng.pick(&ODD))),
        ],
    };
    Request { kind: "unicode/control", body: auto(messages).to_string(), headers: vec![] }
}

/// A body that is not JSON, or a chat request cut short.
fn broken(rng: &mut Rng, i: usize) -> Request {
    if i.is_multiple_of(2) {
        let junk = [
            "this is not JSON {",
            "model=pointsman/auto&prompt=hello",
            "<chat><model>pointsman/auto</model></chat>",
            "",
            "\u{0000}\u{0001}\u{0002}",
            "[1, 2, 3",
            "null",
        ];
        return Request { kind: "not JSON", body: rng.pick(&junk).to_string(), headers: vec![] };
    }
    let whole = auto(vec![user(format!("Cut short {i}: {} {}", rng.pick(&TOPICS), rng.pick(&ODD)))]).to_string();
    let mut cut = 1 + rng.below(whole.len() - 2);
    while !whole.is_char_boundary(cut) {
        cut -= 1;
    }
    Request { kind: "truncated JSON", body: whole[..cut].to_string(), headers: vec![] }
}

/// Routing headers set by the client, on routed, explicit and unroutable requests.
fn forged(rng: &mut Rng, i: usize) -> Request {
    let upstream = *rng.pick(&["anthropic", "deepseek", "openai", "pointsman", "default_upstream"]);
    let model = *rng.pick(&["claude-3-opus-20240229", "deepseek-v2.5-0908", "gpt-4o-2024-08-06"]);
    let headers = vec![
        ("x-pointsman-upstream", upstream.to_string()),
        ("x-pointsman-model", model.to_string()),
        ("x-pointsman-fallbacks", "x@deepseek".to_string()),
    ];
    let body = match i % 3 {
        0 => auto(vec![user(format!("Forged {i}: {}", rng.pick(&TOPICS)))]).to_string(),
        1 => json!({"model": "my-own-model", "messages": [user(format!("Forged {i}: {}", rng.pick(&TOPICS)))]}).to_string(),
        _ => "not JSON, and a routing header".to_string(),
    };
    Request { kind: "client routing headers", body, headers }
}

fn explicit(rng: &mut Rng, i: usize) -> Request {
    let model = *rng.pick(&[
        "gpt-4o-2024-08-06",
        "claude-3-opus-20240229",
        "deepseek-v2.5-0908",
        "Qwen2.5-72B-Instruct",
        "gemini-1.5-pro",
        "my-own-model",
    ]);
    let body = json!({"model": model, "messages": [user(format!("Explicit {i}: {}", rng.pick(&TOPICS)))]});
    Request { kind: "explicit model", body: body.to_string(), headers: vec![] }
}

fn plain(rng: &mut Rng, i: usize) -> Request {
    let prompt = match i % 3 {
        0 => MATH_PROMPT.to_string(),
        1 => CHAT_PROMPT.to_string(),
        _ => format!("Plain {i}: tell me about {}", rng.pick(&TOPICS)),
    };
    Request { kind: "plain chat", body: auto(vec![user(prompt)]).to_string(), headers: vec![] }
}

/// The corpus, shuffled (seeded).
fn corpus() -> Vec<Request> {
    let mut rng = Rng(SEED);
    let mut out = Vec::new();
    for s in 0..10 {
        agent_session(&mut rng, s, &mut out);
    }
    type Make = fn(&mut Rng, usize) -> Request;
    let kinds: [(Make, usize); 9] =
        [(multimodal, 30), (long_chat, 10), (rag, 4), (streamed, 30), (odd, 36), (broken, 30), (forged, 24), (explicit, 24), (plain, 30)];
    for (make, n) in kinds {
        for i in 0..n {
            out.push(make(&mut rng, i));
        }
    }
    for i in (1..out.len()).rev() {
        out.swap(i, rng.below(i + 1));
    }
    out
}

/// The replica's resident set in kB (/proc/<pid>/status).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Polls the replica's `series` until `done` holds, for up to 120 s (a busy machine).
async fn until_metric(replica: &Replica, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = replica.metric(series).await;
        if done(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{series} is {v} after 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_shaped_traffic_through_envoy_is_routed_logged_once_and_bounded() {
    let (pg, redis) = (Postgres::start(), Redis::start());
    let root = tempfile::tempdir().unwrap();
    let ext_port = free_port();
    let ext_listen = format!("127.0.0.1:{ext_port}");
    // Envoy's message timeout and Pointsman's, raised together from 1 s: this test checks what
    // is routed and logged, not how fast, and a busy machine must not send bodies on unrouted.
    let settings = [("shared_key", "\"pointsman\""), ("message_timeout_ms", "10000")];
    let replica =
        Replica::start_args("replay", root.path(), &pg.url(), Some(&redis.url()), &settings, &["--ext-proc-listen", &ext_listen]).await;
    until_metric(&replica, "pointsman_health_shared_connected", |v| v == 1.0).await;
    // The encoder's first run is its slowest: done here, over gRPC, with an id of its own.
    replica.route("Warming up: what is the capital of France?", "replay-warm-up").await.expect("a warm-up Route");
    let warm_rss = rss_kb(replica.child.id());

    let all = Arc::default();
    let mut upstreams = vec![Upstream::start("default", &all).await];
    for name in CLUSTERS {
        upstreams.push(Upstream::start(name, &all).await);
    }
    let ports = gateway_ports(free_port(), ext_port, &upstreams.iter().collect::<Vec<_>>());
    let gw = Envoy::start(&ports, true, &[("message_timeout: 1s", "message_timeout: 10s")]).await;

    let corpus = Arc::new(corpus());
    let sent_bytes: usize = corpus.iter().map(|r| r.body.len()).sum();
    // Four clients, each taking every fourth request; each request carries its number.
    let replies: Arc<Mutex<BTreeMap<usize, Reply>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (corpus, replies, addr) = (Arc::clone(&corpus), Arc::clone(&replies), gw.addr);
        clients.push(tokio::spawn(async move {
            for seq in (c..corpus.len()).step_by(CLIENTS) {
                let r = &corpus[seq];
                let seq_header = seq.to_string();
                let mut headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                headers.push(("x-replay-seq", &seq_header));
                let reply = post(addr, &r.body, &headers).await;
                replies.lock().unwrap().insert(seq, reply);
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let replies = std::mem::take(&mut *replies.lock().unwrap());
    let arrivals: Vec<(&'static str, Seen)> = all.lock().unwrap().clone();

    // 1. Each request reached exactly one upstream, and its client got that upstream's 2xx.
    let mut by_seq: HashMap<usize, Vec<(&'static str, &Seen)>> = HashMap::new();
    for (name, seen) in &arrivals {
        let seq: usize = seen.headers.get("x-replay-seq").and_then(|s| s.parse().ok()).expect("x-replay-seq reaches the upstream");
        by_seq.entry(seq).or_default().push((name, seen));
    }
    let mut problems = Vec::new();
    for (seq, r) in corpus.iter().enumerate() {
        let reply = &replies[&seq];
        let reached = by_seq.get(&seq).map_or(0, Vec::len);
        if reached != 1 || !(200..300).contains(&reply.status) {
            problems.push(format!("#{seq} ({}): reached {reached} upstreams, client got {}: {:.200}", r.kind, reply.status, reply.body));
        }
        let streamed = serde_json::from_str::<Value>(&r.body).ok().and_then(|b| b["stream"].as_bool()) == Some(true);
        if streamed && !(reply.headers.get("content-type").is_some_and(|t| t == "text/event-stream") && reply.body.contains("data: [DONE]"))
        {
            problems.push(format!("#{seq} ({}): not a complete event stream: {:.200}", r.kind, reply.body));
        }
    }
    assert!(problems.is_empty(), "{} of {} requests:\n{}", problems.len(), corpus.len(), problems.join("\n"));

    // 3. Every arrival at a provider's cluster carries Pointsman's choice of that provider;
    //    what reached default_upstream was not routed, or routed to a provider without a cluster.
    //    The client's own headers never arrive.
    let mut by_cluster: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_choice: BTreeMap<&str, usize> = BTreeMap::new();
    for (seq, r) in corpus.iter().enumerate() {
        let (name, seen) = by_seq[&seq][0];
        let chosen = seen.headers.get("x-pointsman-upstream").map(String::as_str);
        let expected = chosen.filter(|p| CLUSTERS.contains(p)).unwrap_or("default");
        assert_eq!(name, expected, "#{seq} ({}) reached {name}; Pointsman chose {chosen:?}; headers {:?}", r.kind, seen.headers);
        *by_cluster.entry(name).or_default() += 1;
        *by_choice.entry(expected).or_default() += 1;
        if r.kind == "client routing headers" {
            let fallbacks = seen.headers.get("x-pointsman-fallbacks").map(String::as_str);
            assert_ne!(fallbacks, Some("x@deepseek"), "#{seq}: the client's x-pointsman-fallbacks arrived");
            if !r.body.contains("pointsman/auto") {
                assert_eq!((name, chosen), ("default", None), "#{seq}: an unrouted request with a client's routing headers");
            }
        }
    }
    assert_eq!(by_cluster, by_choice);

    // 2. Every routed request's decision is in PostgreSQL once, with the model it was sent.
    let routed: Vec<(&str, &str)> =
        arrivals.iter().filter_map(|(_, s)| s.headers.get("x-pointsman-request-id").map(|id| (id.as_str(), s.model.as_str()))).collect();
    for (id, model) in &routed {
        assert_ne!(*model, "pointsman/auto", "{id}: routed, but the body's model was not rewritten");
    }
    let counted = replica.metric("pointsman_ext_proc_requests_total{action=\"routed\"}").await;
    assert_eq!(counted, routed.len() as f64, "the server's routed count and the routed arrivals");
    for action in ["refused", "failed"] {
        assert_eq!(replica.metric(&format!("pointsman_ext_proc_requests_total{{action=\"{action}\"}}")).await, 0.0, "{action}");
    }
    // The log writes behind the requests: wait for all of them (the warm-up is one more).
    let deadline = Instant::now() + Duration::from_secs(120);
    while pg.query_i64("SELECT count(*) FROM decisions") < routed.len() as i64 + 1 {
        assert!(Instant::now() < deadline, "the decisions did not reach PostgreSQL in 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_metric(&replica, "pointsman_decision_log_spilled", |v| v == 0.0).await;
    let values: Vec<String> = routed.iter().map(|(id, model)| format!("({}, {})", lit(id), lit(model))).collect();
    let ids = routed.iter().map(|(id, _)| lit(id)).collect::<Vec<_>>().join(", ");
    let total = pg.query_i64("SELECT count(*) FROM decisions WHERE request_id <> 'replay-warm-up'");
    let distinct = pg.query_i64(&format!("SELECT count(DISTINCT request_id) FROM decisions WHERE request_id IN ({ids})"));
    let matching = pg.query_i64(&format!(
        "SELECT count(*) FROM decisions d JOIN (VALUES {}) AS v(id, model) ON d.request_id = v.id AND d.candidates->0->>'model' = v.model",
        values.join(", ")
    ));
    assert_eq!(
        (total, distinct, matching),
        (routed.len() as i64, routed.len() as i64, routed.len() as i64),
        "decisions in PostgreSQL: all, distinct ids, ids with their model"
    );

    // 5. Nothing was refused by PostgreSQL: no dead letters, nothing left in the spill.
    assert_eq!(replica.metric("pointsman_decision_log_dead_letters_total").await, 0.0);
    assert_eq!(pg.query_i64("SELECT count(*) FROM dead_letters"), 0);
    assert_eq!(replica.metric("pointsman_decision_log_spilled").await, 0.0);
    let nul = pg.query_i64("SELECT count(*) FROM decisions WHERE routing_text ~ '(before.?after|bell|reversed|BOM first|\\[31mred)'");
    assert!(nul > 0, "the requests with control characters were routed and stored");

    // 4. The replica's memory after the corpus.
    let rss = rss_kb(replica.child.id());
    assert!(rss < RSS_LIMIT_KB, "replica RSS {rss} kB, over {RSS_LIMIT_KB} kB");

    let page = http_get(format!("127.0.0.1:{}", replica.admin_port).parse().unwrap(), "/metrics").await;
    let passed: Vec<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("pointsman_ext_proc_passed_total{reason=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let kinds: BTreeMap<&str, usize> = corpus.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.kind).or_default() += 1;
        m
    });
    println!(
        "replay: {} requests ({:.1} MB; {kinds:?}), {} routed, passed by reason [{}], upstream arrivals {by_cluster:?}, replica RSS {} MB after the corpus ({} MB after the warm-up)",
        corpus.len(),
        sent_bytes as f64 / 1e6,
        routed.len(),
        passed.join(", "),
        rss / 1024,
        warm_rss / 1024
    );
}
