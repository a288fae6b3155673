//! Route latency and throughput against the real server on loopback, next to the bare encoder.
//!
//! `cargo bench --bench route` (or `make bench`). Prints a markdown table: p50/p99 latency and
//! throughput at concurrency 1, 4 and 16, for short prompts and prompts at the 256-token cap,
//! with the cache cold (cache off: every request runs the encoder) and hot (every text cached),
//! and the bare encoder (tokenize + embed + head, no gRPC, one caller) on the same prompts.
//! Prompts are real ones from `data/` (or `POINTSMAN_DATA`). Set BENCH_REQUESTS to scale the run, and
//! BENCH_SESSIONS / BENCH_THREADS to try another encoder pool layout, and BENCH_DECISION_LOG=off
//! to measure without the decision log (it is on by default, as in the shipped config). The load generator runs in
//! the same process (and on the same cores) as the server, so the service figures include it.
//!
//! `BENCH_MODE=feedback` runs only Route with live health: cache-hit Route on short prompts at
//! concurrency 1 and 4, first with no report, then after BENCH_FEEDBACK_PREFILL (default 20000)
//! Feedback reports and while a background task keeps sending BENCH_FEEDBACK_RATE (default 500)
//! reports a second, spread round-robin over the catalog's models with about one failure in six
//! (timeouts and server errors, never five in a row for a model, so no circuit opens).
//!
//! `BENCH_MODE=endpoints` runs only Route on short prompts at concurrency 1 against two servers in
//! this one process: every catalog model on one endpoint (its first), and every model on three
//! (its first and two more providers at other prices and speeds), in alternating rounds of
//! BENCH_REQUESTS each (BENCH_ROUNDS, default 6), with the cache off (the encoder runs) and on
//! (every text cached); it prints the p50 of each, the in-server rank stage (`timings.rank_us`)
//! and the added cost of three endpoints. Before the rounds, every endpoint of both servers gets
//! BENCH_MEASURED (default 20) Feedback reports naming its provider, with latency, time to first
//! token, generation time and output tokens, so Route reads live endpoint measurements (quantiles
//! from the sketches, per-endpoint breakers) as it would in production; 0 leaves every endpoint
//! unmeasured.
//!
//! `BENCH_MODE=shadow` runs the same side-by-side rounds against a server without and with a
//! shadow head (`[shadow] head_dir`, a copy of the shipped head) and prints the added cost.
#[path = "../tests/common/prompts.rs"]
mod prompts;
mod support;

use support::start;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use pointsman::{
    config::Config,
    encoder::Encoder,
    pb::{router_client::RouterClient, FeedbackRequest, ListModelsRequest, Outcome, RouteRequest},
    predictor::Head,
    runtime,
};
use tonic::transport::Channel;

fn real_prompts() -> Vec<String> {
    prompts::shared_prompts(&["alpaca_eval2", "zeroeval"])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    label: String,
    concurrency: usize,
    p50: Duration,
    p99: Duration,
    rps: f64,
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

async fn run_load(client: &RouterClient<Channel>, prompts: &[String], concurrency: usize, requests: usize) -> (Vec<Duration>, Duration) {
    let l = support::run_load(client, prompts, concurrency, requests, None).await;
    (l.latencies, l.wall)
}

/// The decision-log lines of the server's `/metrics` page.
async fn log_metrics(addr: std::net::SocketAddr) -> Vec<String> {
    support::metrics(addr, "pointsman_decision_log").await
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Report `n` of the feedback stream: model `n mod len`, about one failure in six.
fn feedback_report(models: &[String], n: usize) -> FeedbackRequest {
    let outcome = if n % 9 == 4 {
        Outcome::Timeout
    } else if n % 23 == 7 {
        Outcome::ServerError
    } else {
        Outcome::Success
    };
    FeedbackRequest {
        request_id: format!("bench-feedback-{n}"),
        model: models[n % models.len()].clone(),
        outcome: outcome as i32,
        latency_ms: (outcome == Outcome::Success).then(|| 200.0 + (n * 37 % 1800) as f64),
        ..Default::default()
    }
}

/// `BENCH_MODE=feedback`: cache-hit Route with and without a stream of Feedback reports.
async fn feedback_mode(config: Config, short: &[String], requests: usize) {
    let prefill = env_usize("BENCH_FEEDBACK_PREFILL", 20_000);
    let rate = env_usize("BENCH_FEEDBACK_RATE", 500);
    let (client, stop, _) = start(config).await;
    let models: Vec<String> =
        client.clone().list_models(ListModelsRequest {}).await.unwrap().into_inner().models.into_iter().map(|m| m.model).collect();
    for p in short {
        client.clone().route(RouteRequest { prompt: p.clone(), ..Default::default() }).await.unwrap();
    }
    let mut rows = Vec::new();
    let measure = |rows: &mut Vec<Row>, label: &str, lat: Vec<Duration>, wall: Duration, c: usize| {
        rows.push(Row {
            label: label.to_string(),
            concurrency: c,
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            rps: lat.len() as f64 / wall.as_secs_f64(),
        })
    };
    for c in [1, 4] {
        let (lat, wall) = run_load(&client, short, c, requests).await;
        measure(&mut rows, "Route, short, cache hit, no feedback", lat, wall, c);
    }
    // Prefill: the reports a busy gateway sends within the health window.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut c, models, next, refused) = (client.clone(), models.clone(), Arc::clone(&next), Arc::clone(&refused));
        tasks.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= prefill {
                    return;
                }
                if c.feedback(feedback_report(&models, n)).await.is_err() {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    println!("prefill: {prefill} Feedback reports over {} models in {:.1} s", models.len(), t.elapsed().as_secs_f64());
    // The stream: every 10 ms, rate/100 reports.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sender = {
        let (mut c, models, next, refused, running) =
            (client.clone(), models.clone(), Arc::clone(&next), Arc::clone(&refused), Arc::clone(&running));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut sent, t) = (0usize, Instant::now());
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..(rate / 100).max(1) {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if c.feedback(feedback_report(&models, n)).await.is_err() {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    sent += 1;
                }
            }
            sent as f64 / t.elapsed().as_secs_f64()
        })
    };
    for c in [1, 4] {
        let (lat, wall) = run_load(&client, short, c, requests).await;
        measure(&mut rows, "Route, short, cache hit, feedback flowing", lat, wall, c);
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let achieved = sender.await.unwrap();
    let _ = stop.send(());
    println!(
        "feedback stream: {achieved:.0} reports/s during the measurement; {} reports refused in all",
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("\n| what | concurrency | p50 ms | p99 ms | req/s |\n|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {:.0} |", r.label, r.concurrency, ms(r.p50), ms(r.p99), r.rps);
    }
}

/// Latencies and in-server rank-stage times of `requests` sequential Routes of `req(prompt)`.
async fn route_timed(client: &RouterClient<Channel>, prompts: &[String], requests: usize) -> (Vec<Duration>, Vec<(u64, u64)>) {
    let mut c = client.clone();
    let (mut lat, mut rank) = (Vec::with_capacity(requests), Vec::with_capacity(requests));
    for i in 0..requests {
        let req = RouteRequest { prompt: prompts[i % prompts.len()].clone(), ..Default::default() };
        let t = Instant::now();
        let r = c.route(req).await.expect("route succeeds").into_inner();
        lat.push(t.elapsed());
        rank.push(r.timings.map_or((0, 0), |t| (t.rank_us, t.total_us)));
        assert!(!r.attempts.is_empty());
    }
    (lat, rank)
}

/// `BENCH_MODE=endpoints`: one endpoint per model against three, side by side in one process.
async fn endpoints_mode(config: Config, short: &[String], requests: usize) {
    let mut one = config.clone();
    for m in &mut one.models {
        m.endpoints.truncate(1);
    }
    let mut three = one.clone();
    for m in &mut three.models {
        let first = m.endpoints[0].clone();
        for (k, (price, ttft, tps)) in [(0.6, 300.0, 90.0), (1.4, 700.0, 35.0)].into_iter().enumerate() {
            let mut e = first.clone();
            e.provider = format!("{}-alt{}", first.provider, k + 1);
            e.input_usd_per_mtok *= price;
            e.output_usd_per_mtok *= price;
            e.ttft_ms = Some(ttft);
            e.output_tokens_per_second = Some(tps);
            m.endpoints.push(e);
        }
    }
    let endpoints = |c: &Config| c.models.iter().map(|m| m.endpoints.len()).sum::<usize>();
    println!("catalog: {} models; {} endpoints against {}", one.models.len(), endpoints(&one), endpoints(&three));
    side_by_side(("1 endpoint/model", one), ("3 endpoints/model", three), "three endpoints", short, requests).await;
}

/// `BENCH_MODE=shadow`: the shipped head alone against the same head with a shadow head beside it
/// (a copy of the shipped head: the same work a real candidate head does), side by side.
async fn shadow_mode(config: Config, short: &[String], requests: usize) {
    let dir = std::env::temp_dir().join(format!("pointsman-bench-shadow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["head.onnx", "manifest.json"] {
        std::fs::copy(config.head.dir.join(f), dir.join(f)).unwrap();
    }
    let mut with = config.clone();
    with.shadow.head_dir = Some(dir.clone());
    side_by_side(("shadow off", config), ("shadow on", with), "the shadow head", short, requests).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Two servers in this process, A and B, timed in alternating rounds of `requests` sequential
/// short Routes (BENCH_ROUNDS, default 6), with the cache off (every request runs the encoder)
/// and on (every text cached); prints the p50s, the in-server rank stage and B's added cost.
async fn side_by_side(a: (&str, Config), b: (&str, Config), what: &str, short: &[String], requests: usize) {
    let rounds = env_usize("BENCH_ROUNDS", 6);
    let ((label_a, one), (label_b, three)) = (a, b);
    let mut rows = Vec::new();
    let caches = std::env::var("BENCH_CACHE").unwrap_or_else(|_| "miss,hit".into());
    for cache in caches.split(',') {
        let (mut a, mut b) = (one.clone(), three.clone());
        if cache == "miss" {
            a.cache.capacity = 0;
            b.cache.capacity = 0;
        }
        let measured = env_usize("BENCH_MEASURED", 20);
        for c in [&mut a, &mut b] {
            c.health.count_unknown_requests = true;
            c.health.window_seconds = 3600;
        }
        let (ca, stop_a, _) = start(a.clone()).await;
        let (cb, stop_b, _) = start(b.clone()).await;
        for (client, config) in [(&ca, &a), (&cb, &b)] {
            let mut n = 0u64;
            for m in &config.models {
                for (j, e) in m.endpoints.iter().enumerate() {
                    for k in 0..measured {
                        n += 1;
                        let latency = 400.0 + 300.0 * j as f64 + (k % 7) as f64 * 40.0;
                        let report = FeedbackRequest {
                            request_id: format!("measure-{n}"),
                            model: m.id.clone(),
                            outcome: Outcome::Success as i32,
                            latency_ms: Some(latency),
                            output_tokens: Some(200),
                            provider: e.provider.clone(),
                            ttft_ms: Some(latency / 4.0),
                            generation_ms: Some(latency * 0.75),
                            ..Default::default()
                        };
                        client.clone().feedback(report).await.unwrap();
                    }
                }
            }
        }
        if measured > 0 {
            println!("cache {cache}: every endpoint measured ({measured} reports each)");
        }
        if cache == "hit" {
            for p in short {
                for c in [&ca, &cb] {
                    c.clone().route(RouteRequest { prompt: p.clone(), ..Default::default() }).await.unwrap();
                }
            }
        }
        let (mut lat_a, mut lat_b, mut rank_a, mut rank_b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut p50s_a, mut p50s_b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so drift in the machine's load falls on both.
            let order: [(&RouterClient<Channel>, bool); 2] =
                if round % 2 == 0 { [(&ca, true), (&cb, false)] } else { [(&cb, false), (&ca, true)] };
            for (client, is_one) in order {
                let (mut l, r) = route_timed(client, short, requests).await;
                l.sort();
                let (lat, rank, p50s) =
                    if is_one { (&mut lat_a, &mut rank_a, &mut p50s_a) } else { (&mut lat_b, &mut rank_b, &mut p50s_b) };
                p50s.push(percentile(&l, 0.5));
                lat.extend(l);
                rank.extend(r);
            }
        }
        let _ = (stop_a.send(()), stop_b.send(()));
        for (label, lat, rank, p50s) in [(label_a, &mut lat_a, &mut rank_a, &mut p50s_a), (label_b, &mut lat_b, &mut rank_b, &mut p50s_b)] {
            lat.sort();
            p50s.sort();
            let mut stage: Vec<u64> = rank.iter().map(|r| r.0).collect();
            let mut total: Vec<u64> = rank.iter().map(|r| r.1).collect();
            stage.sort();
            total.sort();
            rows.push((
                format!("Route, short, cache {cache}, {label}"),
                percentile(lat, 0.5),
                percentile(lat, 0.99),
                (stage[stage.len() / 2], total[total.len() / 2]),
                p50s[p50s.len() / 2],
                lat.len(),
            ));
        }
    }
    println!("\n| what | requests | p50 ms | p99 ms | median of round p50s ms | in-server p50 us | rank stage p50 us |\n|---|---|---|---|---|---|---|");
    for (label, p50, p99, (rank, total), round, n) in &rows {
        println!("| {label} | {n} | {} | {} | {} | {total} | {rank} |", ms(*p50), ms(*p99), ms(*round));
    }
    for pair in rows.chunks(2) {
        println!(
            "{}: {what} adds {:+.1}% to the p50 ({:+.1}% on the median of round p50s), rank stage {} us -> {} us, in-server {} us -> {} us",
            pair[0].0.trim_end_matches(&format!(", {label_a}")),
            (pair[1].1.as_secs_f64() / pair[0].1.as_secs_f64() - 1.0) * 100.0,
            (pair[1].4.as_secs_f64() / pair[0].4.as_secs_f64() - 1.0) * 100.0,
            pair[0].3 .0,
            pair[1].3 .0,
            pair[0].3 .1,
            pair[1].3 .1
        );
    }
}

#[tokio::main]
async fn main() {
    let requests: usize = std::env::var("BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut config = Config::load(&Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/pointsman.toml")).unwrap();
    // BENCH_SESSIONS / BENCH_THREADS override the encoder pool to compare layouts.
    if let Some(n) = std::env::var("BENCH_SESSIONS").ok().and_then(|v| v.parse().ok()) {
        config.encoder.sessions = n;
    }
    if let Some(n) = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()) {
        config.encoder.intra_threads = n;
    }
    // The decision log writes to a throw-away file; BENCH_DECISION_LOG=off measures without it.
    let log_dir = std::env::temp_dir().join(format!("pointsman-bench-{}", std::process::id()));
    config.decision_log.path = log_dir.join("decisions.db");
    config.decision_log.enabled = std::env::var("BENCH_DECISION_LOG").map_or(true, |v| v != "off");
    println!("decision log: {}", if config.decision_log.enabled { "on" } else { "off" });
    let env = runtime::environment(config.runtime.onnxruntime.as_deref()).unwrap();
    let encoder = Encoder::load(env, &config.encoder).unwrap();
    let head = Head::load(env, &config.head.dir).unwrap();

    // Short: real prompts of 8..=32 tokens. Long: real prompts joined until they pass 256 tokens.
    let all = real_prompts();
    let count = |p: &str| encoder.count_tokens(p).unwrap();
    let short: Vec<String> = all.iter().filter(|p| (8..=32).contains(&count(p))).take(requests).cloned().collect();
    let mut long = Vec::new();
    let mut acc = String::new();
    for p in &all {
        acc.push_str(p);
        acc.push('\n');
        if count(&acc) > 300 {
            long.push(std::mem::take(&mut acc));
            if long.len() >= requests / 2 {
                break;
            }
        }
    }
    let mean_tokens = |v: &[String]| v.iter().map(|p| count(p).min(254) as f64).sum::<f64>() / v.len() as f64;
    println!(
        "# Route benchmark\nprompts: {} short (mean {:.1} tokens), {} long (capped at 256 tokens); encoder {}, {} sessions x {} intra-op threads; {} CPUs",
        short.len(),
        mean_tokens(&short),
        long.len(),
        encoder.id(),
        config.encoder.sessions,
        config.encoder.intra_threads,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    if std::env::var("BENCH_MODE").is_ok_and(|m| m == "endpoints") {
        drop(encoder);
        endpoints_mode(config, &short, requests).await;
        return;
    }
    if std::env::var("BENCH_MODE").is_ok_and(|m| m == "shadow") {
        drop(encoder);
        shadow_mode(config, &short, requests).await;
        return;
    }
    if std::env::var("BENCH_MODE").is_ok_and(|m| m == "feedback") {
        drop(encoder);
        feedback_mode(config, &short, requests).await;
        return;
    }

    // Bare encoder (tokenize + embed + head), one caller, same prompts.
    let mut rows = Vec::new();
    for (name, set) in [("short", &short), ("256-token", &long)] {
        let n = set.len().min(requests / 2).max(50);
        let mut lat = Vec::new();
        let t0 = Instant::now();
        for p in set.iter().cycle().take(n) {
            let t = Instant::now();
            let tokens = encoder.tokenize(p).unwrap();
            let e = encoder.embed(&tokens).unwrap();
            head.predict(ndarray::ArrayView2::from_shape((1, e.len()), &e).unwrap()).unwrap();
            lat.push(t.elapsed());
        }
        let wall = t0.elapsed();
        lat.sort();
        rows.push(Row {
            label: format!("bare encoder+head, {name}"),
            concurrency: 1,
            p50: percentile(&lat, 0.5),
            p99: percentile(&lat, 0.99),
            rps: n as f64 / wall.as_secs_f64(),
        });
    }
    drop(encoder);

    let mut cold_cfg = config.clone();
    cold_cfg.cache.capacity = 0;
    let (cold, stop_cold, cold_addr) = start(cold_cfg).await;
    let (hot, stop_hot, hot_addr) = start(config).await;
    for (name, set, n) in [("short", &short, requests), ("256-token", &long, requests / 3)] {
        // Warm the hot server's cache with every text.
        for p in set.iter() {
            hot.clone().route(RouteRequest { prompt: p.clone(), ..Default::default() }).await.unwrap();
        }
        for c in [1, 4, 16] {
            for (cache, client) in [("miss", &cold), ("hit", &hot)] {
                let (lat, wall) = run_load(client, set, c, n).await;
                rows.push(Row {
                    label: format!("Route, {name}, cache {cache}"),
                    concurrency: c,
                    p50: percentile(&lat, 0.5),
                    p99: percentile(&lat, 0.99),
                    rps: lat.len() as f64 / wall.as_secs_f64(),
                });
            }
        }
    }
    let mut log_lines = Vec::new();
    for (name, addr) in [("cold", cold_addr), ("hot", hot_addr)] {
        tokio::time::sleep(Duration::from_millis(500)).await;
        log_lines.extend(log_metrics(addr).await.into_iter().map(|l| format!("{name} server: {l}")));
    }
    let _ = (stop_cold.send(()), stop_hot.send(()));

    println!("\n| what | concurrency | p50 ms | p99 ms | req/s |\n|---|---|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} | {} | {:.0} |", r.label, r.concurrency, ms(r.p50), ms(r.p99), r.rps);
    }
    for name in ["short", "256-token"] {
        let bare = rows.iter().find(|r| r.label == format!("bare encoder+head, {name}")).unwrap();
        let svc = rows.iter().find(|r| r.label == format!("Route, {name}, cache miss") && r.concurrency == 1).unwrap();
        println!(
            "\n{name}: Route p50 at concurrency 1 (cache miss) {} ms vs bare {} ms: service overhead {:+.1}%",
            ms(svc.p50),
            ms(bare.p50),
            (svc.p50.as_secs_f64() / bare.p50.as_secs_f64() - 1.0) * 100.0
        );
    }
    if !log_lines.is_empty() {
        println!("\ndecision log counters at the end:");
        for l in log_lines {
            println!("  {l}");
        }
    }
}
