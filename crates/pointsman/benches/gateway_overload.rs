//! The routed share under overload, end to end: the real Envoy running the shipped
//! `deploy/envoy/envoy.yaml` (its `message_timeout` and `failure_mode_allow` as shipped) in front
//! of fake OpenAI-compatible upstreams, with a real Pointsman binary as its external processor,
//! held at twice the rate it can route.
//!
//! `cargo bench --bench gateway_overload`. Measures the binary in `POINTSMAN_BIN` (default: the
//! one this bench was built with) and, when `POINTSMAN_BIN_BEFORE` names another, that one too,
//! side by side: each binary is started as a child process on the shipped config of the tree it
//! was built in (`<tree>/target/release/pointsman` -> `<tree>/config/pointsman.toml`, with
//! absolute model paths and the decision log in a temp folder; an older binary rejects the newer
//! config's keys), behind an Envoy of its own. Then, for `BENCH_ROUNDS` rounds (default 3), each
//! binary in turn (the order alternating by round), on the same machine minutes apart:
//! 1. **capacity**: `BENCH_CONCURRENCY` (default 8) closed-loop clients for
//!    `BENCH_CAPACITY_SECONDS` (default 15) s; capacity is routed responses per second;
//! 2. **overload**: open-loop arrivals at `BENCH_OVERLOAD` (default 2) times that capacity for
//!    `BENCH_SECONDS` (default 40) s, the client waiting up to 60 s for each answer.
//!
//! Every request is a chat request with `"model": "pointsman/auto"` and a prompt never sent
//! before (an MMLU-Pro question from `data/mmlu_pro/train.jsonl.gz`, at least 1,200 characters,
//! so the encoder's 256 tokens are full, behind a unique number): each one is encoded, none is a
//! cache hit. A request counts as **routed** when the fake upstream received it with the model
//! Pointsman chose (the body's `model` rewritten from `pointsman/auto`, `x-pointsman-model` set),
//! as **passed** when it arrived with `pointsman/auto` (Envoy let it through unrouted: Pointsman
//! failed, was too slow for `message_timeout`, or passed it), as an **error** when the client got
//! no 200 (a 5xx, a reset, its own timeout). Pointsman's own counters for each phase (ext_proc
//! actions, Route results, encoder jobs run and skipped) come from its `/metrics`.
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/gateway.rs"]
mod gateway;

use std::{
    collections::BTreeMap,
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use gateway::{chat, free_loopback_port, gateway_ports, parse, Envoy, Seen, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The client's own patience for one answer: generous, so that what is counted is what Envoy
/// and Pointsman did, not the client giving up.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Distinct MMLU-Pro prompts of at least `min_chars` characters.
fn load_prompts(min_chars: usize) -> Vec<String> {
    let path = common::repo().join("data/mmlu_pro/train.jsonl.gz");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let (Some(id), Some(p)) = (v["prompt_id"].as_str(), v["prompt"].as_str()) else { continue };
        if p.len() >= min_chars && seen.insert(id.to_string()) {
            out.push(p.to_string());
        }
    }
    assert!(out.len() >= 100, "only {} MMLU-Pro prompts of {min_chars}+ characters", out.len());
    out
}

/// Prompts never sent before: the corpus in turn, each behind a number not used before.
struct Prompts {
    corpus: Vec<String>,
    next: AtomicU64,
}

impl Prompts {
    fn next_body(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let p = &self.corpus[(n % self.corpus.len() as u64) as usize];
        chat("pointsman/auto", &format!("[request {n}] {p}"), false)
    }
}

/// How one request ended, as the client saw it.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// 200 with the model Pointsman chose (the fake upstream echoes the model it received).
    Routed(Duration),
    /// 200 with `pointsman/auto`: Envoy passed it on unrouted.
    Passed,
    /// Any other status (Envoy's 5xx, a 4xx).
    Status(u16),
    /// Reset or closed without a reply.
    Broken,
    /// No answer within [`CLIENT_TIMEOUT`].
    TimedOut,
}

async fn send(addr: SocketAddr, body: String) -> Outcome {
    let t = Instant::now();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
        Err(_) => return Outcome::TimedOut,
        Ok(Err(_)) => return Outcome::Broken,
        Ok(Ok(buf)) if !buf.windows(4).any(|w| w == b"\r\n\r\n") => return Outcome::Broken,
        Ok(Ok(buf)) => buf,
    };
    let reply = parse(&buf);
    if reply.status != 200 {
        return Outcome::Status(reply.status);
    }
    let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
    match json["model"].as_str() {
        Some("pointsman/auto") | None => Outcome::Passed,
        Some(_) => Outcome::Routed(t.elapsed()),
    }
}

/// A Pointsman binary as Envoy's external processor, behind an Envoy of its own.
struct Gateway {
    label: &'static str,
    child: Child,
    admin: SocketAddr,
    envoy: Envoy,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The source tree `bin` was built in (`<tree>/target/<profile>/pointsman`).
fn tree_of(bin: &Path) -> PathBuf {
    bin.ancestors().nth(3).unwrap_or_else(|| panic!("{} is not <tree>/target/<profile>/pointsman", bin.display())).to_path_buf()
}

impl Gateway {
    async fn start(label: &'static str, bin: &Path, upstreams: &[&Upstream]) -> Self {
        let tree = tree_of(bin);
        let dir = tempfile::tempdir().unwrap();
        // The tree's own shipped config (an older binary refuses a newer config's keys), its
        // relative paths made absolute and the decision log moved to the temp folder.
        let text = std::fs::read_to_string(tree.join("config/pointsman.toml")).unwrap();
        let text = text
            .replace("\"../var/", &format!("\"{}/", dir.path().display()))
            .replace("\"../models/", &format!("\"{}/models/", tree.display()));
        let config = dir.path().join("pointsman.toml");
        std::fs::write(&config, text).unwrap();
        let (port, admin, ext) = (free_loopback_port(), free_loopback_port(), free_loopback_port());
        let child = Command::new(bin)
            .args(["serve", "--config", config.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--ext-proc-listen", &format!("127.0.0.1:{ext}")])
            .current_dir(&tree)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let envoy = Envoy::start(&gateway_ports(free_loopback_port(), ext, upstreams), true, &[]).await;
        let mut g = Gateway { label, child, admin: format!("127.0.0.1:{admin}").parse().unwrap(), envoy, _dir: dir };
        // Ready once a request through Envoy comes back routed (the models are loaded).
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let body = chat("pointsman/auto", "What is the capital of France?", false);
            if matches!(send(g.envoy.addr, body).await, Outcome::Routed(_)) {
                break;
            }
            assert!(g.child.try_wait().unwrap().is_none(), "{label}: {} exited", bin.display());
            assert!(Instant::now() < deadline, "{label}: nothing routed within 180 s");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        g
    }

    /// Pointsman's counters that tell what happened to each request, by series.
    async fn counters(&self) -> BTreeMap<String, f64> {
        let page = common::http_get(self.admin, "/metrics").await;
        page.lines()
            .filter(|l| {
                ["pointsman_ext_proc_", "pointsman_route_requests_total", "pointsman_encoder_jobs_total", "pointsman_encoder_queue_depth"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
            .collect()
    }

    /// Waits until no Route call waits for the encoder (the last phase's backlog is gone).
    async fn drain(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.counters().await.get("pointsman_encoder_queue_depth").copied().unwrap_or(0.0) > 0.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What the upstreams received, in order (shared by all of them).
type Arrivals = Arc<Mutex<Vec<(&'static str, Seen)>>>;

/// Counts of one phase.
#[derive(Default, Clone)]
struct Phase {
    seconds: f64,
    offered: u64,
    routed_client: u64,
    passed_client: u64,
    errors: u64,
    /// The errors that had a status, by status.
    statuses: BTreeMap<u16, u64>,
    timed_out: u64,
    /// Upstream arrivals: routed (model rewritten and x-pointsman-model set) and passed.
    up_routed: u64,
    up_passed: u64,
    routed_latency_p50_ms: f64,
    /// (routed, offered) per 10 s of send time.
    windows: Vec<(u64, u64)>,
    counters: BTreeMap<String, f64>,
    load: (f64, f64),
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split(' ').next().and_then(|v| v.parse().ok())).unwrap_or(f64::NAN)
}

fn upstream_counts(all: &Arrivals, from: usize) -> (u64, u64, usize) {
    let all = all.lock().unwrap();
    let (mut routed, mut passed) = (0, 0);
    for (_, s) in &all[from..] {
        if s.model != "pointsman/auto" && s.headers.contains_key("x-pointsman-model") {
            routed += 1;
        } else {
            passed += 1;
        }
    }
    (routed, passed, all.len())
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter(|(k, _)| !k.starts_with("pointsman_encoder_queue_depth"))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

fn tally(phase: &mut Phase, outcomes: &[(Duration, Outcome)], window: Duration) {
    let mut lat = Vec::new();
    for (at, o) in outcomes {
        let w = (at.as_secs_f64() / window.as_secs_f64()) as usize;
        if phase.windows.len() <= w {
            phase.windows.resize(w + 1, (0, 0));
        }
        phase.windows[w].1 += 1;
        match o {
            Outcome::Routed(l) => {
                phase.routed_client += 1;
                phase.windows[w].0 += 1;
                lat.push(l.as_secs_f64() * 1000.0);
            }
            Outcome::Passed => phase.passed_client += 1,
            Outcome::Status(code) => {
                phase.errors += 1;
                *phase.statuses.entry(*code).or_default() += 1;
            }
            Outcome::Broken => phase.errors += 1,
            Outcome::TimedOut => phase.timed_out += 1,
        }
    }
    phase.offered = outcomes.len() as u64;
    phase.routed_latency_p50_ms = median(&mut lat);
}

/// Closed loop: `lanes` clients, each sending its next request when the last is answered.
async fn capacity(g: &Gateway, prompts: &Arc<Prompts>, all: &Arrivals, lanes: usize, seconds: f64) -> Phase {
    g.drain().await;
    let before = g.counters().await;
    let from = all.lock().unwrap().len();
    let load0 = loadavg();
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..lanes {
        let (addr, prompts, stop) = (g.envoy.addr, Arc::clone(prompts), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = t.elapsed();
                out.push((at, send(addr, prompts.next_body()).await));
            }
            out
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap());
    }
    let mut p = Phase { seconds: t.elapsed().as_secs_f64(), ..Default::default() };
    tally(&mut p, &outcomes, Duration::from_secs(5));
    g.drain().await;
    (p.up_routed, p.up_passed, _) = upstream_counts(all, from);
    p.counters = delta(&g.counters().await, &before);
    p.load = (load0, loadavg());
    p
}

/// Open loop: a request every 1/`rate` s for `seconds`, whatever became of the earlier ones.
async fn overload(g: &Gateway, prompts: &Arc<Prompts>, all: &Arrivals, rate: f64, seconds: f64) -> Phase {
    g.drain().await;
    let before = g.counters().await;
    let from = all.lock().unwrap().len();
    let load0 = loadavg();
    let t = tokio::time::Instant::now();
    let n = (rate * seconds) as u64;
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(t + Duration::from_secs_f64(i as f64 / rate)).await;
        let (addr, body) = (g.envoy.addr, prompts.next_body());
        let at = t.elapsed();
        tasks.push(tokio::spawn(async move { (at, send(addr, body).await) }));
    }
    let sent_in = t.elapsed().as_secs_f64();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let mut p = Phase { seconds: sent_in, ..Default::default() };
    tally(&mut p, &outcomes, Duration::from_secs(10));
    g.drain().await;
    (p.up_routed, p.up_passed, _) = upstream_counts(all, from);
    p.counters = delta(&g.counters().await, &before);
    p.load = (load0, loadavg());
    p
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// One round of one binary.
struct Round {
    cap: Phase,
    capacity: f64,
    over: Phase,
}

impl Round {
    fn offered_rate(&self) -> f64 {
        self.over.offered as f64 / self.over.seconds
    }
    fn routed_share(&self) -> f64 {
        self.over.up_routed as f64 / self.over.offered as f64
    }
    fn capacity_share(&self) -> f64 {
        self.capacity / self.offered_rate()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = env_num("BENCH_ROUNDS", 3.0) as usize;
    let lanes = env_num("BENCH_CONCURRENCY", 8.0) as usize;
    let cap_seconds = env_num("BENCH_CAPACITY_SECONDS", 15.0);
    let seconds = env_num("BENCH_SECONDS", 40.0);
    let factor = env_num("BENCH_OVERLOAD", 2.0);
    let after_bin = std::env::var_os("POINTSMAN_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_pointsman").into());
    let before_bin = std::env::var_os("POINTSMAN_BIN_BEFORE").filter(|p| !p.is_empty()).map(PathBuf::from);

    let prompts = Arc::new(Prompts { corpus: load_prompts(1200), next: AtomicU64::new(0) });
    let all: Arrivals = Arc::default();
    let mut ups = Vec::new();
    for name in ["default", "openai", "together", "anthropic", "deepseek"] {
        ups.push(Upstream::start(name, &all).await);
    }
    let refs: Vec<&Upstream> = ups.iter().collect();
    let mut gateways = Vec::new();
    if let Some(b) = &before_bin {
        gateways.push(Gateway::start("before", b, &refs).await);
    }
    gateways.push(Gateway::start("after", &after_bin, &refs).await);
    println!("binaries:");
    for (g, bin) in gateways.iter().zip(before_bin.iter().chain(std::iter::once(&after_bin))) {
        println!("  {}: {}", g.label, bin.display());
    }
    println!(
        "{} MMLU-Pro prompts of 1,200+ characters, each sent once behind a unique number; {rounds} rounds; capacity: {lanes} closed-loop clients for {cap_seconds} s; overload: {factor}x capacity, open loop, for {seconds} s\n",
        prompts.corpus.len()
    );

    let mut results: Vec<Vec<Round>> = gateways.iter().map(|_| Vec::new()).collect();
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..gateways.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let g = &gateways[i];
            let cap = capacity(g, &prompts, &all, lanes, cap_seconds).await;
            let capacity = cap.up_routed as f64 / cap.seconds;
            let over = overload(g, &prompts, &all, factor * capacity, seconds).await;
            let round = Round { cap, capacity, over };
            print_round(g.label, r + 1, &round);
            results[i].push(round);
        }
    }

    println!("\n## Medians over {rounds} rounds ({factor}x the capacity measured just before, {seconds} s open loop)\n");
    println!("| binary | capacity, routed/s | offered/s | offered | answered by upstream | routed | passed unrouted | errors (5xx, resets, client timeouts) | routed share | capacity share | routed/s under overload | load avg |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (g, rs) in gateways.iter().zip(&results) {
        let m = |f: &dyn Fn(&Round) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.0}% | {:.1} | {:.1} |",
            g.label,
            m(&|r| r.capacity),
            m(&|r| r.offered_rate()),
            m(&|r| r.over.offered as f64),
            m(&|r| (r.over.up_routed + r.over.up_passed) as f64),
            m(&|r| r.over.up_routed as f64),
            m(&|r| r.over.up_passed as f64),
            m(&|r| (r.over.errors + r.over.timed_out) as f64),
            100.0 * m(&|r| r.routed_share()),
            100.0 * m(&|r| r.capacity_share()),
            m(&|r| r.over.up_routed as f64 / r.over.seconds),
            m(&|r| (r.over.load.0 + r.over.load.1) / 2.0),
        );
    }
}

fn print_round(label: &str, n: usize, r: &Round) {
    let (c, o) = (&r.cap, &r.over);
    println!("### {label}, round {n}");
    println!(
        "capacity: {:.1} routed/s ({} routed, {} passed, {} errors of {} in {:.1} s; upstream saw {} routed, {} passed; median routed latency {:.0} ms; load {:.1} -> {:.1})",
        r.capacity, c.routed_client, c.passed_client, c.errors + c.timed_out, c.offered, c.seconds, c.up_routed, c.up_passed, c.routed_latency_p50_ms, c.load.0, c.load.1
    );
    println!(
        "overload: {} offered at {:.1}/s in {:.1} s; upstream saw {} routed, {} passed; client saw {} routed, {} passed, {} errors, {} timed out; routed share {:.0}% (capacity share {:.0}%); median routed latency {:.0} ms; load {:.1} -> {:.1}",
        o.offered,
        r.offered_rate(),
        o.seconds,
        o.up_routed,
        o.up_passed,
        o.routed_client,
        o.passed_client,
        o.errors,
        o.timed_out,
        100.0 * r.routed_share(),
        100.0 * r.capacity_share(),
        o.routed_latency_p50_ms,
        o.load.0,
        o.load.1
    );
    let w: Vec<String> = o.windows.iter().map(|(routed, sent)| format!("{:.0}%", 100.0 * *routed as f64 / (*sent).max(1) as f64)).collect();
    if !o.statuses.is_empty() {
        println!("error statuses: {:?}", o.statuses);
    }
    println!("routed share by 10 s of send time: {}", w.join(", "));
    println!("Pointsman's counters, overload phase:");
    for (k, v) in &o.counters {
        println!("  {k} {v}");
    }
    println!();
}
