//! Fleet mode against the single-replica defaults, side by side in one run:
//! - Route p50 and routes/s of one replica with the PostgreSQL decision log and Redis health,
//!   against the SQLite log and local health (each Route followed by its Feedback, concurrency
//!   4, rounds alternating between the two so machine noise hits both);
//! - how long a circuit opened on one replica takes to be seen on another (median of 15);
//! - records per second the PostgreSQL writer sustains (and the SQLite writer, for scale), and
//!   with one row in every 512 refused by the database (a CHECK constraint): the cost of
//!   splitting each batch to find the refused row and dead-letter it.
//!
//! `cargo bench --bench fleet`. Starts its own PostgreSQL and Redis from Debian's packages
//! (`scripts/bootstrap.sh --fleet`). The load generator runs in the same process and on the
//! same 2 cores as the replicas, PostgreSQL and Redis, so absolute figures are lower bounds.
//! BENCH_ROUTES (default 3000) routes per round; BENCH_RECORDS (default 200000) records for
//! the writers.
#[path = "../tests/common/servers.rs"]
mod servers;

use std::time::{Duration, Instant};

use pointsman::{
    config::Config,
    logs::{DecisionLog, DecisionRecord, LogConfig},
    pb::{router_client::RouterClient, FeedbackRequest, HealthState, ListModelsRequest, Outcome, RouteRequest},
};
use servers::{Postgres, Redis};
use tokio::net::TcpListener;
use tonic::transport::Channel;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn config(dir: &std::path::Path, pg: Option<&str>, redis: Option<&str>) -> Config {
    let mut cfg = Config::load(&std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/pointsman.toml")).unwrap();
    cfg.decision_log.path = dir.join("decisions.db");
    cfg.decision_log.spill_path = dir.join("spill.db");
    cfg.decision_log.url = pg.map(str::to_string);
    cfg.health.shared = redis.map(str::to_string);
    cfg.health.count_unknown_requests = true;
    cfg
}

async fn start(config: Config) -> (RouterClient<Channel>, tokio::sync::oneshot::Sender<()>) {
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = data.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pointsman::transport::serve(config, pointsman::transport::Listeners { data, admin, ext_proc: None }, async {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().tcp_nodelay(true).connect_lazy();
    let mut client = RouterClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(120);
    while client.route(RouteRequest { prompt: "warm up".into(), ..Default::default() }).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (client, tx)
}

/// `n` Route + Feedback pairs from 4 callers over 200 distinct prompts (the cache is hot after
/// the first 200): Route latencies sorted, and the wall time.
async fn round(client: &RouterClient<Channel>, n: usize, tag: &str) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut c = client.clone();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..n).step_by(4) {
                let id = format!("{tag}-{i}");
                let prompt = format!("Explain topic number {} in one paragraph.", i % 200);
                let t = Instant::now();
                let r = c.route(RouteRequest { prompt, request_id: id.clone(), ..Default::default() }).await.unwrap().into_inner();
                lat.push(t.elapsed());
                let fb = FeedbackRequest {
                    request_id: id,
                    model: r.candidates[0].model.clone(),
                    outcome: Outcome::Success as i32,
                    quality: Some(0.5),
                    output_tokens: Some(100),
                    latency_ms: Some(900.0),
                    ..Default::default()
                };
                c.feedback(fb).await.unwrap();
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    (all, start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn decision(i: usize) -> DecisionRecord {
    DecisionRecord {
        request_id: format!("bench-{i}"),
        ts_ms: pointsman::logs::now_ms(),
        routing_text: Some(format!("Explain topic number {} in one paragraph, with an example.", i % 997)),
        embedding: None,
        encoder: "minilm".into(),
        router_version: "bench".into(),
        cost_weight: 0.5,
        profile: Some("balanced".into()),
        constraints: pointsman::policy::Constraints::default(),
        tradeoff: "default".into(),
        input_tokens: 42,
        candidates: vec![],
        policy: Default::default(),
        session: None,
        baseline: None,
    }
}

/// Records per second through the writer: `n` decisions queued as fast as they go, then
/// flushed; every `poison_every`th one (if any) carries text the database refuses. Also the
/// dead letters the writer counted.
async fn writer_rate(cfg: LogConfig, n: usize, poison_every: Option<usize>) -> (f64, u64) {
    let cfg = LogConfig { queue_capacity: n + 16, queue_max_bytes: u64::MAX / 2, ..cfg };
    let log = tokio::task::spawn_blocking(move || DecisionLog::open(cfg).unwrap()).await.unwrap();
    let t = Instant::now();
    for i in 0..n {
        let mut d = decision(i);
        if poison_every.is_some_and(|k| i % k == k / 2) {
            d.routing_text = Some("a poison pill".into());
        }
        log.log_decision(d);
    }
    log.flush().await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let stats = log.stats();
    assert_eq!(stats.decisions_dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(stats.spilled_total.load(std::sync::atomic::Ordering::Relaxed), 0);
    let dead = stats.dead_letters.load(std::sync::atomic::Ordering::Relaxed);
    tokio::task::spawn_blocking(move || drop(log)).await.unwrap();
    (rate, dead)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pg = Postgres::start();
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let (single_dir, fleet_dir, fleet2_dir) = (dir.path().join("single"), dir.path().join("fleet"), dir.path().join("fleet2"));
    let n = env_usize("BENCH_ROUTES", 3000);
    let (single, _s1) = start(config(&single_dir, None, None)).await;
    let (fleet, _s2) = start(config(&fleet_dir, Some(&pg.url()), Some(&redis.url()))).await;

    println!("## Route + Feedback, concurrency 4, cache hot ({n} pairs per round; rounds alternate)\n");
    println!("| setup | round | Route p50 | Route p99 | routes/s |");
    println!("|---|---|---|---|---|");
    let mut p50 = [Vec::new(), Vec::new()];
    let mut rate = [Vec::new(), Vec::new()];
    for r in 0..3 {
        for (k, (name, client)) in
            [("SQLite log + local health", &single), ("PostgreSQL log + Redis health", &fleet)].into_iter().enumerate()
        {
            let (lat, wall) = round(client, n, &format!("{k}-{r}")).await;
            let (a, b) = (lat[lat.len() / 2], lat[lat.len() * 99 / 100]);
            let rps = n as f64 / wall.as_secs_f64();
            println!("| {name} | {r} | {:.2} ms | {:.2} ms | {rps:.0} |", a.as_secs_f64() * 1e3, b.as_secs_f64() * 1e3);
            p50[k].push(a.as_secs_f64() * 1e3);
            rate[k].push(rps);
        }
    }
    let (m0, m1) = (median(p50[0].clone()), median(p50[1].clone()));
    let (r0, r1) = (median(rate[0].clone()), median(rate[1].clone()));
    println!("\nmedian of rounds: SQLite + local p50 {m0:.2} ms, {r0:.0} routes/s; PostgreSQL + Redis p50 {m1:.2} ms, {r1:.0} routes/s");
    println!("ratio fleet/single: p50 x{:.2}, routes/s x{:.2}\n", m1 / m0, r1 / r0);

    // A second fleet replica; a circuit opened on the first is polled for on the second.
    let (fleet2, _s3) = start(config(&fleet2_dir, Some(&pg.url()), Some(&redis.url()))).await;
    let models: Vec<String> =
        fleet.clone().list_models(ListModelsRequest {}).await.unwrap().into_inner().models.into_iter().map(|m| m.model).collect();
    let mut seen = Vec::new();
    for model in models.iter().take(15) {
        // One report per request id and model counts: five requests (count_unknown_requests).
        for i in 0..5 {
            let fb = FeedbackRequest {
                request_id: format!("breaker-{i}"),
                model: model.clone(),
                outcome: Outcome::ServerError as i32,
                ..Default::default()
            };
            fleet.clone().feedback(fb).await.unwrap();
        }
        let t = Instant::now();
        loop {
            let list = fleet2.clone().list_models(ListModelsRequest {}).await.unwrap().into_inner().models;
            let state = list.iter().find(|m| &m.model == model).and_then(|m| m.health.as_ref()).map(|h| h.state());
            if state == Some(HealthState::CoolingDown) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{model} never opened on the second replica");
        }
        seen.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let max = seen.iter().copied().fold(0.0, f64::max);
    println!(
        "## Breaker propagation\n\ncircuit opened on replica 1 (5th failure acknowledged) -> cooling down in replica 2's ListModels: median {:.2} ms, max {max:.2} ms over {} models\n",
        median(seen.clone()),
        seen.len()
    );

    let records = env_usize("BENCH_RECORDS", 200_000);
    println!("## Decision-log writer ({records} decisions queued at once, then flushed; batch_max 512)\n");
    let base = LogConfig::default();
    let (pg_rate, _) =
        writer_rate(LogConfig { url: Some(pg.url()), spill_path: dir.path().join("writer-spill.db"), ..base.clone() }, records, None).await;
    let (sqlite_rate, _) = writer_rate(LogConfig { path: dir.path().join("writer.db"), ..base.clone() }, records, None).await;
    println!("PostgreSQL writer: {pg_rate:.0} records/s; SQLite writer: {sqlite_rate:.0} records/s (same run)");
    // The same load into a database that refuses one row in every 512 (a CHECK constraint).
    let poison_url = format!("{}/poison", pg.url().trim_end_matches("/postgres"));
    {
        let (base_url, poison_url) = (pg.url(), poison_url.clone());
        servers::off_runtime(move || {
            let mut db = pointsman::logs::postgres::Db::connect(&base_url, Duration::from_secs(5)).unwrap();
            db.execute("CREATE DATABASE poison", &[], Duration::from_secs(60)).unwrap();
            let mut db = pointsman::logs::postgres::Db::connect(&poison_url, Duration::from_secs(5)).unwrap();
            db.migrate().unwrap();
            db.execute(
                "ALTER TABLE decisions ADD CONSTRAINT no_poison CHECK (routing_text NOT LIKE '%poison pill%')",
                &[],
                Duration::from_secs(60),
            )
            .unwrap();
        });
    }
    let (poisoned_rate, dead) =
        writer_rate(LogConfig { url: Some(poison_url), spill_path: dir.path().join("poison-spill.db"), ..base }, records, Some(512)).await;
    println!(
        "PostgreSQL writer, one row in 512 refused: {poisoned_rate:.0} records/s ({dead} dead letters; x{:.2} of the clean rate)",
        poisoned_rate / pg_rate
    );
}
