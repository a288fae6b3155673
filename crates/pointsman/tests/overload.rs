//! Overload against the real server: bursts of Route calls whose callers give up (5 ms
//! deadlines, client cancellations) must leave nothing behind. Calm requests afterwards are
//! served, the whole queue can be filled again without a refusal, the encoder queue drains to
//! zero, work for callers that went away is skipped, and the `/metrics` counters add up exactly.
//!
//! One server for the whole binary: the phases run in order in one test.
mod common;

use std::{
    collections::BTreeMap,
    io::BufRead,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{metric, shared_data, TestServer};
use pointsman::{
    learning::SplitMix64,
    pb::{router_client::RouterClient, RouteRequest},
};
use tonic::{transport::Channel, Request};

/// Concurrent callers in a burst.
const CONCURRENCY: usize = 64;
/// HTTP/2 connections the callers share, as a gateway's connection pool would. NOTE: on one
/// connection, 64 callers that cancel can have over 20 streams reset before the (busy) server
/// accepted them, which h2's rapid-reset protection answers by closing the connection
/// (GOAWAY ENHANCE_YOUR_CALM, "remotely-reset pending-accept streams reached limit (20)"):
/// every call on it then fails with a transport error. 8 per connection stay below that limit.
const CONNECTIONS: usize = 8;
/// Route calls per burst.
const BURST: usize = 400;
/// Deadline of each burst call.
const BURST_DEADLINE: Duration = Duration::from_millis(5);
/// Calm requests after each burst, one at a time.
const CALM: usize = 20;
/// Deadline of each calm request: generous, the machine is shared.
const CALM_DEADLINE: Duration = Duration::from_secs(30);
/// The encoder's input limit; prompts at least this long cost the most encoder time.
const LONG_PROMPT_TOKENS: u32 = 256;

/// Distinct real prompts (MMLU-Pro questions) of at least `LONG_PROMPT_TOKENS` tokens.
fn long_prompts(n: usize) -> Vec<String> {
    let encoder = common::shipped_encoder();
    let file = std::fs::File::open(shared_data().join("mmlu_pro/train.jsonl.gz")).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let (id, text) = (v["prompt_id"].as_str().unwrap(), v["prompt"].as_str().unwrap());
        if seen.insert(id.to_string()) && encoder.count_tokens(text).unwrap() >= LONG_PROMPT_TOKENS {
            out.push(text.to_string());
            if out.len() == n {
                return out;
            }
        }
    }
    panic!("only {} prompts of {LONG_PROMPT_TOKENS}+ tokens", out.len());
}

/// How the client saw a burst: answers by gRPC code, and calls given up before an answer.
#[derive(Debug, Default)]
struct Tally {
    codes: BTreeMap<String, usize>,
    /// The first message seen for each code other than Ok.
    messages: BTreeMap<String, String>,
    abandoned: usize,
}

impl Tally {
    fn ok(&self) -> usize {
        self.codes.get("Ok").copied().unwrap_or(0)
    }
    fn answered(&self) -> usize {
        self.codes.values().sum()
    }
}

/// `total` Route calls over `CONCURRENCY` callers on `CONNECTIONS` connections. `deadline`: set as `grpc-timeout`.
/// `give_up`: the caller drops its call after a random delay below this many microseconds.
async fn burst(s: &TestServer, prompts: &[String], total: usize, deadline: Option<Duration>, give_up: Option<u64>, seed: u64) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let prompts: Arc<[String]> = prompts.into();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{}", s.addr)).unwrap().tcp_nodelay(true).connect().await.unwrap();
        clients.push(RouterClient::new(channel));
    }
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..CONCURRENCY {
        let (mut client, next, prompts) = (clients[lane % CONNECTIONS].clone(), Arc::clone(&next), Arc::clone(&prompts));
        let mut rng = SplitMix64::new(seed.wrapping_add(lane as u64));
        lanes.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return tally;
                }
                let mut req = Request::new(RouteRequest { prompt: prompts[i % prompts.len()].clone(), ..Default::default() });
                if let Some(d) = deadline {
                    req.set_timeout(d);
                }
                let call = client.route(req);
                let result = match give_up {
                    Some(max_us) => {
                        let wait = Duration::from_micros(rng.next_u64() % max_us);
                        // Dropping the call's future resets its HTTP/2 stream: the server sees the
                        // client go away.
                        tokio::time::timeout(wait, call).await.ok()
                    }
                    None => Some(call.await),
                };
                match result {
                    Some(Ok(_)) => *tally.codes.entry("Ok".into()).or_default() += 1,
                    Some(Err(e)) => {
                        let code = format!("{:?}", e.code());
                        tally.messages.entry(code.clone()).or_insert_with(|| format!("{e}"));
                        *tally.codes.entry(code).or_default() += 1;
                    }
                    None => tally.abandoned += 1,
                }
            }
        });
    }
    let mut all = Tally::default();
    while let Some(t) = lanes.join_next().await {
        let t = t.unwrap();
        for (k, v) in t.codes {
            *all.codes.entry(k).or_default() += v;
        }
        for (k, v) in t.messages {
            all.messages.entry(k).or_insert(v);
        }
        all.abandoned += t.abandoned;
    }
    all
}

/// `CALM` requests one at a time with a generous deadline; returns the refusals.
async fn calm(s: &TestServer, prompts: &[String]) -> Vec<String> {
    let mut client = s.client.clone();
    let mut refused = Vec::new();
    for p in prompts.iter().cycle().take(CALM) {
        let mut req = Request::new(RouteRequest { prompt: p.clone(), ..Default::default() });
        req.set_timeout(CALM_DEADLINE);
        if let Err(e) = client.route(req).await {
            refused.push(format!("{:?}: {}", e.code(), e.message()));
        }
    }
    refused
}

/// Polls `f` every 50 ms for up to 30 s until it returns Some; panics with the last page if not.
async fn poll_until<F, Fut>(mut f: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f().await {
            Ok(page) => return page,
            Err(page) if tokio::time::Instant::now() >= deadline => panic!("the counters never added up in 30 s:\n{page}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `n` calls with a generous deadline, started 3 ms apart so that each one finds the earlier
/// ones running or queued: with `n` = sessions + queue limit, every one is accepted only if the
/// whole queue is free. Returns the refusals.
async fn fill_the_queue(s: &TestServer, prompts: &[String], n: usize) -> Vec<String> {
    let mut calls = tokio::task::JoinSet::new();
    for p in prompts.iter().cycle().take(n) {
        let mut client = s.client.clone();
        let mut req = Request::new(RouteRequest { prompt: p.clone(), ..Default::default() });
        req.set_timeout(CALM_DEADLINE);
        calls.spawn(async move { client.route(req).await });
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut refused = Vec::new();
    while let Some(r) = calls.join_next().await {
        if let Err(e) = r.unwrap() {
            refused.push(format!("{:?}: {}", e.code(), e.message()));
        }
    }
    refused
}

/// After a burst: `CALM` calls one at a time, then `full` calls filling the whole queue; every
/// one must be served.
async fn all_served_after(s: &TestServer, prompts: &[String], full: usize, burst: &str) {
    let refused = calm(s, prompts).await;
    println!("after the {burst} burst: {} of {CALM} calm requests refused {:?}", refused.len(), refused.first());
    assert!(refused.is_empty(), "{} of {CALM} calm requests refused after the {burst} burst: {refused:?}", refused.len());
    let refused = fill_the_queue(s, prompts, full).await;
    println!("after the {burst} burst: {} of {full} calls filling the queue refused {:?}", refused.len(), refused.first());
    assert!(refused.is_empty(), "the queue lost capacity in the {burst} burst: {} of {full} refused: {refused:?}", refused.len());
}

/// The sum of every `pointsman_route_requests_total{result=...}` line.
fn sum_of_results(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("pointsman_route_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_leave_nothing_behind() {
    let prompts = long_prompts(CONCURRENCY);
    let mut cfg = common::shipped_config();
    cfg.server.max_queued_requests = 8;
    cfg.cache.capacity = 0;
    let full = cfg.encoder.sessions + cfg.server.max_queued_requests;
    let s = TestServer::start_with(cfg).await;
    let mut client_ok = 0;
    let mut client_sent = 0;

    // 1. A burst of calls with 5 ms deadlines, then calm traffic.
    let timed_out = burst(&s, &prompts, BURST, Some(BURST_DEADLINE), None, 1).await;
    println!("deadline burst: {:?}", timed_out.codes);
    assert_eq!(timed_out.answered(), BURST, "every call with a deadline gets an answer");
    for code in timed_out.codes.keys() {
        assert!(["Ok", "Cancelled", "DeadlineExceeded", "ResourceExhausted"].contains(&code.as_str()), "{timed_out:?}");
    }
    all_served_after(&s, &prompts, full, "deadline").await;
    client_ok += timed_out.ok() + CALM + full;
    client_sent += BURST + CALM + full;

    // 2. A burst whose callers cancel after a random 0-60 ms (no deadline), then calm traffic.
    let cancelled = burst(&s, &prompts, BURST, None, Some(60_000), 2).await;
    println!("cancellation burst: {:?}, abandoned {}", cancelled.codes, cancelled.abandoned);
    assert!(cancelled.abandoned > 0, "no call was cancelled: {cancelled:?}");
    for code in cancelled.codes.keys() {
        assert!(["Ok", "ResourceExhausted"].contains(&code.as_str()), "{cancelled:?}");
    }
    all_served_after(&s, &prompts, full, "cancellation").await;
    client_ok += cancelled.ok() + CALM + full;
    client_sent += BURST + CALM + full;

    // 3. The counters add up once the server has seen every dropped call: every call received
    // has exactly one result, the encoder queue is empty, and work for gone callers was skipped.
    let page = poll_until(|| async {
        let page = s.metrics().await;
        let received = metric(&page, "pointsman_route_received_total");
        let depth = metric(&page, "pointsman_encoder_queue_depth");
        if received == Some(sum_of_results(&page)) && depth == Some(0.0) {
            Ok(page)
        } else {
            Err(page)
        }
    })
    .await;
    let m = |series: &str| metric(&page, series).unwrap_or_else(|| panic!("{series} missing from /metrics:\n{page}"));
    let received = m("pointsman_route_received_total");
    println!(
        "{}",
        page.lines().filter(|l| l.starts_with("pointsman_route") || l.starts_with("pointsman_encoder")).collect::<Vec<_>>().join("\n")
    );
    // What the server counted, bounded by what only the server can have answered: an Ok or a
    // RESOURCE_EXHAUSTED comes from its handler, while a CANCELLED or DEADLINE_EXCEEDED may be
    // the client's own timer (tonic's client enforces `grpc-timeout` too) before the call ever
    // reached the handler: how many depends on scheduling, so they bound nothing.
    let server_answered = client_ok
        + timed_out.codes.get("ResourceExhausted").copied().unwrap_or(0)
        + cancelled.codes.get("ResourceExhausted").copied().unwrap_or(0);
    assert!(
        received <= client_sent as f64 && received >= server_answered as f64,
        "received {received}: more than the {client_sent} sent, or fewer than the {server_answered} the server answered"
    );
    assert_eq!(received, sum_of_results(&page));
    let ok = m("pointsman_route_requests_total{result=\"ok\"}");
    assert!(ok >= client_ok as f64, "server ok {ok} < client ok {client_ok}");
    assert!(m("pointsman_route_requests_total{result=\"cancelled\"}") > 0.0, "no handler future was dropped");
    let (run, gone, late) = (
        m("pointsman_encoder_jobs_total{result=\"run\"}"),
        m("pointsman_encoder_jobs_total{result=\"skipped_caller_gone\"}"),
        m("pointsman_encoder_jobs_total{result=\"skipped_deadline\"}"),
    );
    assert!(gone + late > 0.0, "no job for a gone caller was skipped");
    // Cache off, one message per call: each call queued at most one encoder job, and every
    // answered call ran exactly one. So jobs that ran or were skipped can only belong to calls
    // answered, cancelled or timed out; a job computed twice, or a slot never given back, breaks
    // these.
    let (cancelled_calls, late_calls) =
        (m("pointsman_route_requests_total{result=\"cancelled\"}"), m("pointsman_route_requests_total{result=\"deadline_exceeded\"}"));
    assert!(run >= ok, "{run} jobs run for {ok} answers");
    assert!(
        run + gone + late <= ok + cancelled_calls + late_calls,
        "{run} run + {gone} + {late} skipped jobs for {ok} answered, {cancelled_calls} cancelled and {late_calls} late calls"
    );
    assert_eq!(m("pointsman_encoder_worker_panics_total"), 0.0);
    s.shutdown().await;
}
