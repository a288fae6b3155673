//! Resident memory of the real server under traffic that used to grow it without bound: distinct
//! long prompts (the prediction cache and the decision-log queue carry a routing text each) and
//! routes at full speed with nobody scraping /metrics (the latency histogram keeps each sample
//! until it is folded into buckets).
//!
//! `cargo bench --bench memory_bound`. Starts the release binary on the shipped config (decision
//! log in a temp folder, prompts stored), then:
//! 1. sends BENCH_PROMPTS (default 5,000) distinct prompts of BENCH_PROMPT_KB (default 100) KB,
//!    one at a time, and prints RSS (VmRSS) every 1,000;
//! 2. sends cache-hit routes as fast as BENCH_CONCURRENCY (default 16) callers can for
//!    BENCH_SECONDS (default 120) without scraping, and prints RSS every 20 s, the routes sent,
//!    and the RSS slope extrapolated to an hour of the same rate;
//! 3. scrapes /metrics once at the end for the cache's own weighing (`pointsman_cache_bytes`).
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use pointsman::pb::{router_client::RouterClient, RouteRequest};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mb(pid: u32) -> f64 {
    common::status_mb(pid, "VmRSS:")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A prompt of about `bytes` bytes, distinct for each `i`: words drawn from a small vocabulary
/// with a seeded generator, so the tokenizer sees ordinary text.
fn prompt(i: u64, bytes: usize) -> String {
    const WORDS: [&str; 16] = [
        "routing",
        "latency",
        "context",
        "retrieval",
        "document",
        "answer",
        "quarterly",
        "revenue",
        "kernel",
        "schema",
        "invoice",
        "contract",
        "patient",
        "dosage",
        "theorem",
        "compiler",
    ];
    let mut rng = pointsman::learning::SplitMix64::new(i);
    let mut s = format!("Question {i}: summarise the passage below.\n");
    while s.len() < bytes {
        s.push_str(WORDS[(rng.next_u64() % 16) as usize]);
        s.push(' ');
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let prompts = env_num("BENCH_PROMPTS", 5_000);
    let kb = env_num("BENCH_PROMPT_KB", 100) as usize;
    let seconds = env_num("BENCH_SECONDS", 120);
    let concurrency = env_num("BENCH_CONCURRENCY", 16);

    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        &dir.path().join("pointsman.toml"),
        &common::repo().join("models/router"),
        &dir.path().join("decisions.db"),
        &[],
    );
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_pointsman"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let addr = format!("http://127.0.0.1:{port}");
    let mut client = loop {
        if let Ok(c) = RouterClient::connect(addr.clone()).await {
            if c.clone().route(RouteRequest { prompt: "hello".into(), ..Default::default() }).await.is_ok() {
                break c.max_decoding_message_size(16 << 20).max_encoding_message_size(16 << 20);
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the server exited");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let start = rss_mb(pid);
    println!("RSS at start: {start:.0} MB\n");

    println!("1. {prompts} distinct prompts of {kb} KB, one at a time\n");
    println!("| prompts | RSS MB |");
    println!("|---|---|");
    println!("| 0 | {start:.0} |");
    let t = Instant::now();
    for i in 1..=prompts {
        client.route(RouteRequest { prompt: prompt(i, kb * 1024), ..Default::default() }).await.expect("route");
        if i % 1000 == 0 || i == prompts {
            println!("| {i} | {:.0} |", rss_mb(pid));
        }
    }
    println!("\n({:.1} s; the old text-keyed cache grew about 96 MB per 1,000 such prompts)\n", t.elapsed().as_secs_f64());

    println!("2. cache-hit routes for {seconds} s, {concurrency} callers, nobody scraping\n");
    println!("| seconds | routes | RSS MB |");
    println!("|---|---|---|");
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut lanes = Vec::new();
    for _ in 0..concurrency {
        let (mut c, sent, stop) = (client.clone(), Arc::clone(&sent), Arc::clone(&stop));
        lanes.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                c.route(RouteRequest { prompt: "What is the capital of France?".into(), ..Default::default() }).await.expect("route");
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let t = Instant::now();
    let first = rss_mb(pid);
    println!("| 0 | 0 | {first:.0} |");
    let mut last = first;
    // The first interval warms up (connections, buffers, the log's queue): the slope is taken
    // from its end.
    let mut warm: Option<(f64, f64)> = None;
    while t.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(20).min(Duration::from_secs(seconds).saturating_sub(t.elapsed()))).await;
        last = rss_mb(pid);
        println!("| {:.0} | {} | {last:.0} |", t.elapsed().as_secs_f64(), sent.load(Ordering::Relaxed));
        warm.get_or_insert((t.elapsed().as_secs_f64(), last));
    }
    stop.store(true, Ordering::Relaxed);
    for l in lanes {
        l.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let routes = sent.load(Ordering::Relaxed);
    let rate = routes as f64 / secs;
    let (warm_s, warm_mb) = warm.unwrap_or((0.0, first));
    let slope = if secs > warm_s + 1.0 { (last - warm_mb) / (secs - warm_s) * 3600.0 } else { f64::NAN };
    println!(
        "\n{routes} routes in {secs:.0} s ({rate:.0}/s): RSS {first:.0} -> {last:.0} MB; after the first interval \
         {slope:+.1} MB per hour at this rate (unfolded histogram samples would be {:.0} MB per hour: 8 bytes each)\n",
        rate * 3600.0 * 8.0 / 1e6
    );

    let page = common::http_get(format!("127.0.0.1:{admin}").parse().unwrap(), "/metrics").await;
    for l in page.lines().filter(|l| l.starts_with("pointsman_cache_") || l.starts_with("pointsman_decision_log_queued")) {
        println!("{l}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
