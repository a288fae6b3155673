//! Fleet mode end to end: three real replicas (the release binary) on 127.0.0.1 sharing one
//! PostgreSQL decision log and one Redis for health, both real servers from Debian's packages
//! (`scripts/bootstrap.sh --fleet`), started here on loopback and killed with -9 mid-traffic.
//!
//! One test, in phases, because the phases share the servers and the replicas (each heavy server
//! starts once per test binary) and some of them kill those servers. Both servers also speak TLS
//! (a test CA's certificate): A and B connect in plaintext, C over TLS (`sslmode=verify-full` and
//! `rediss://`, each verifying the server against the CA), so every phase runs over both.
mod common;

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::*;
use pointsman::pb::{self, router_client::RouterClient, HealthState, Outcome};
use tonic::transport::Channel;

/// The tests of this file start heavy servers and replicas: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Per replica, the request ids whose Route and whose Feedback were acknowledged.
type Acked = HashMap<&'static str, (Vec<String>, Vec<String>)>;

#[path = "common/servers.rs"]
mod servers;
use servers::*;
#[path = "common/replica.rs"]
mod replica;
use replica::*;

/// Polls until `model` is cooling down on `replica`; returns how long that took.
async fn until_cooling_down(replica: &Replica, model: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    while replica.state(model).await != HealthState::CoolingDown {
        assert!(t.elapsed() < limit, "{model} not cooling down on replica {} after {limit:?}", replica.name);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_postgres_log_and_one_redis_health() {
    let _one_at_a_time = SERIAL.lock().await;
    let tls = TestTls::new("pointsman fleet");
    let mut pg = Postgres::start_tls(&tls.cert(), &tls.key());
    let mut redis = Redis::start_tls(&tls.cert(), &tls.key(), &tls.ca());
    let root = tempfile::tempdir().unwrap();
    let a = Replica::start("a", root.path(), &pg, &redis, None).await;
    let b = Replica::start("b", root.path(), &pg, &redis, None).await;
    let c = Replica::start("c", root.path(), &pg, &redis, Some(&tls)).await;
    for r in [&a, &b, &c] {
        let connected =
            eventually_async("check 1", || async { Some(r.metric("pointsman_health_shared_connected").await).filter(|v| *v == 1.0) }).await;
        assert_eq!(connected, 1.0);
        assert_eq!(r.metric("pointsman_decision_log_backend_up").await, 1.0);
    }
    // Every replica applied the same migrations once: one row per file.
    let migrations = std::fs::read_dir(repo().join("migrations/postgres")).unwrap().count() as i64;
    assert_eq!(pg.query_i64("SELECT count(*) FROM pointsman_migrations"), migrations);
    // C's connection is encrypted (the test's own and A's and B's are not).
    let encrypted =
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'pointsman' AND s.ssl";
    assert!(pg.query_i64(encrypted) >= 1, "C writes over TLS");
    // A URL that asks for TLS without the CA fails on the certificate, naming it, and a
    // misspelt sslmode is refused before any connection.
    for (url, expect) in [
        (format!("{}?sslmode=verify-full", pg.url()), "certificate"),
        (format!("{}?sslmode=required", pg.url()), "sslmode must be disable, allow, prefer, require, verify-ca or verify-full"),
    ] {
        let out = Command::new(BIN)
            .args(["logs", "export", "--decision-log-url", &url, "--out", root.path().join("tls.jsonl").to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect), "{url}: {err}");
    }
    // A replica whose URL asks for TLS it cannot verify stops at start, like one with a bad
    // password, instead of starting and spilling.
    let bad = root.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let spill = format!("{:?}", bad.join("spill.db").display().to_string());
    let cfg = write_config(&bad.join("pointsman.toml"), &repo().join("models/router"), &bad.join("unused.db"), &[("spill_path", &spill)]);
    let stderr = bad.join("stderr.log");
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--decision-log-url", &format!("{}?sslmode=verify-full", pg.url())])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("a replica with an unverifiable PostgreSQL certificate did not stop");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(!status.success() && err.contains("invalid peer certificate"), "{status}: {err}");

    // 1. Feedback sent only to A opens the breaker on B and C.
    let model = a.route(MATH_PROMPT, "fleet-breaker-0").await.unwrap();
    assert_eq!(b.state(&model).await, HealthState::Healthy);
    // One report per request id and model counts (tests/security.rs): five requests.
    for i in 0..5 {
        a.report(&format!("fleet-breaker-0-{i}"), &model, Outcome::ServerError, None).await.unwrap();
    }
    // Polled from the fifth report's answer: the issue asks for about a second; 2 s leaves room
    // for a loaded machine (it takes well under a millisecond here).
    let seen_b = until_cooling_down(&b, &model, Duration::from_secs(2)).await;
    let seen_c = until_cooling_down(&c, &model, Duration::from_secs(2)).await;
    assert_eq!(a.state(&model).await, HealthState::CoolingDown, "five failures in a row open A's breaker");
    eprintln!("circuit opened on A: seen on B after {seen_b:?}, then on C after {seen_c:?}");
    // B no longer routes to it.
    let on_b = b.route(MATH_PROMPT, "fleet-breaker-1").await.unwrap();
    assert_ne!(on_b, model, "B routes around the model A's reports took out");

    // 2. A decision made on A and reported to B is joined in the log and exported for training.
    let prompt = "Fleet join check: summarise the plot of Hamlet in two sentences.";
    let published = a.metric(OFFERS_PUBLISHED).await;
    let chosen = a.route(prompt, "fleet-join-1").await.unwrap();
    until_offered(&a, published, &b).await;
    b.report("fleet-join-1", &chosen, Outcome::Success, Some(0.875)).await.unwrap();
    let joined = eventually_async("check 2", || async {
        let n = pg.query_i64(
            "SELECT count(*) FROM feedback f JOIN decisions d USING (request_id) WHERE request_id = 'fleet-join-1' AND f.quality = 0.875",
        );
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(joined, 1);
    let export = root.path().join("export.jsonl");
    let out =
        Command::new(BIN).args(["logs", "export", "--decision-log-url", &pg.url(), "--out", export.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&export).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let line = lines.iter().find(|l| l["prompt"] == prompt).expect("the joined report is a training line");
    assert_eq!((line["model"].as_str().unwrap(), line["score"].as_f64().unwrap()), (chosen.as_str(), 0.875));
    // `train --data postgres://…` reads the same join.
    // The binary registers the server's decision-log reader with the trainer at start; so does this test.
    pointsman::ServerDecisionLogs::register();
    let url = std::path::PathBuf::from(pg.url());
    let logs = off_runtime(|| pointsman::learning::read_logs(&[url], true)).unwrap();
    assert_eq!(logs.observations.len(), lines.len(), "the trainer's reader sees every exported line");
    assert!(logs.prompts.iter().any(|p| p.text == prompt));
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains(&format!("127.0.0.1:{}", pg.port)) && !summary.contains("secret"), "{summary}");

    // 3. Redis stopped: routing goes on with local breakers, and shares again after restart.
    redis.kill_9();
    let other = b.route(CHAT_PROMPT, "fleet-redis-0").await.unwrap();
    for r in [&a, &b] {
        let v =
            eventually_async("check 3", || async { Some(r.metric("pointsman_health_shared_connected").await).filter(|v| *v == 0.0) }).await;
        assert_eq!(v, 0.0);
    }
    for i in 0..5 {
        b.report(&format!("fleet-redis-0-{i}"), &other, Outcome::Timeout, None).await.unwrap();
    }
    assert_eq!(b.state(&other).await, HealthState::CoolingDown, "B's own breaker works without Redis");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(a.state(&other).await, HealthState::Healthy, "without Redis, A does not see B's reports");
    assert!(a.route(CHAT_PROMPT, "fleet-redis-1").await.is_ok(), "routing goes on without Redis");
    redis.run();
    let caught_up = until_cooling_down(&a, &other, Duration::from_secs(10)).await;
    until_cooling_down(&c, &other, Duration::from_secs(10)).await;
    eprintln!("Redis restarted: B's reports from the outage reached A after {caught_up:?}");
    for r in [&a, &b, &c] {
        eventually_async("check 4", || async { Some(r.metric("pointsman_health_shared_connected").await).filter(|v| *v == 1.0) }).await;
    }

    // 4. PostgreSQL stalled (every process stopped: connections open, nothing answers): A's
    // writer gives up on each write after write_timeout_ms (500) and spills; Route and Feedback
    // never wait; after the stall everything lands.
    let spilled_before = a.metric("pointsman_decision_log_spilled_total").await;
    pg.signal_all("STOP");
    let stalled_at = Instant::now();
    let mut stall_ids = Vec::new();
    let mut slowest_stalled = Duration::ZERO;
    while stalled_at.elapsed() < Duration::from_millis(3000) {
        let id = format!("fleet-stall-{}", stall_ids.len());
        let t = Instant::now();
        let model = a.route(&format!("{CHAT_PROMPT} stall {}", stall_ids.len()), &id).await.expect("Route never waits for PostgreSQL");
        a.report(&id, &model, Outcome::Success, Some(0.25)).await.expect("nor does Feedback");
        slowest_stalled = slowest_stalled.max(t.elapsed());
        stall_ids.push(id);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let spilled_stall = eventually_async("check 5", || async {
        let v = a.metric("pointsman_decision_log_spilled_total").await;
        (v > spilled_before).then_some(v - spilled_before)
    })
    .await;
    pg.signal_all("CONT");
    eprintln!(
        "PostgreSQL stalled 3 s: {} Route+Feedback pairs on A, slowest pair {slowest_stalled:?}, {spilled_stall} records spilled",
        stall_ids.len()
    );
    eventually_async("check 6", || async { Some(a.metric("pointsman_decision_log_spilled").await).filter(|v| *v == 0.0) }).await;

    // 5. Traffic on all three; C is killed with -9, then PostgreSQL is. No Route fails or waits on
    // PostgreSQL, and after its restart every acknowledged record is stored exactly once.
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let mut load = Vec::new();
    for (name, port) in [("a", a.port), ("b", b.port), ("c", c.port)] {
        let (acked, stop, slowest) = (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&slowest));
        load.push(tokio::spawn(async move {
            let ch = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
            let mut client = RouterClient::new(ch);
            let mut i = 0;
            let mut failures = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("fleet-load-{name}-{i}");
                let t = Instant::now();
                let routed = client
                    .route(pb::RouteRequest { prompt: format!("{CHAT_PROMPT} ({name} {i})"), request_id: id.clone(), ..Default::default() })
                    .await;
                let Ok(r) = routed else {
                    failures += 1;
                    break;
                };
                {
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(t.elapsed());
                }
                acked.lock().unwrap().entry(name).or_default().0.push(id.clone());
                let model = r.into_inner().candidates[0].model.clone();
                let fb = pb::FeedbackRequest {
                    request_id: id.clone(),
                    model,
                    outcome: Outcome::Success as i32,
                    quality: Some(0.5),
                    output_tokens: Some(10),
                    ..Default::default()
                };
                if client.feedback(fb).await.is_err() {
                    failures += 1;
                    break;
                }
                acked.lock().unwrap().entry(name).or_default().1.push(id);
                i += 1;
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = c;
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let at_kill_c = acked.lock().unwrap().get("c").map_or((0, 0), |(d, f)| (d.len(), f.len()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.kill_9();
    let outage_start = acked.lock().unwrap().values().map(|(d, _)| d.len()).sum::<usize>();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during_outage = acked.lock().unwrap().values().map(|(d, _)| d.len()).sum::<usize>() - outage_start;
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<usize> = futures_join(load).await;
    // C's client stopped at the kill; A's and B's never failed.
    assert_eq!(&failures[..2], &[0, 0], "no Route or Feedback failed on A or B while PostgreSQL was down");
    assert!(during_outage > 20, "routing went on during the PostgreSQL outage ({during_outage} routes)");
    let spilled = a.metric("pointsman_decision_log_spilled_total").await + b.metric("pointsman_decision_log_spilled_total").await;
    assert!(spilled > 0.0, "records went to the spill files");
    eprintln!(
        "PostgreSQL killed: {during_outage} routes acknowledged in the 2.5 s outage, slowest Route of the whole load {:?}, {spilled} records spilled",
        *slowest.lock().unwrap()
    );
    pg.restart();
    for r in [&a, &b] {
        eventually_async("check 7", || async { Some(r.metric("pointsman_decision_log_spilled").await).filter(|v| *v == 0.0) }).await;
    }
    // A clean stop drains what is still queued.
    a.terminate();
    b.terminate();
    let acked = acked.lock().unwrap().clone();
    let stored = |table: &str, id: &str| pg.query_i64(&format!("SELECT count(*) FROM {table} WHERE request_id = '{id}'"));
    let dupes = pg.query_i64(
        "SELECT count(*) FROM (SELECT request_id FROM decisions WHERE request_id LIKE 'fleet-load-%' GROUP BY request_id HAVING count(*) > 1) x",
    ) + pg.query_i64(
        "SELECT count(*) FROM (SELECT request_id FROM feedback WHERE request_id LIKE 'fleet-load-%' GROUP BY request_id HAVING count(*) > 1) x",
    );
    assert_eq!(dupes, 0, "no record is stored twice");
    for id in &stall_ids {
        assert_eq!((stored("decisions", id), stored("feedback", id)), (1, 1), "{id}, acknowledged during the stall");
    }
    for name in ["a", "b"] {
        let (decisions, reports) = &acked[name];
        let missing: Vec<&String> = decisions.iter().filter(|id| stored("decisions", id) != 1).collect();
        let missing_reports: Vec<&String> = reports.iter().filter(|id| stored("feedback", id) != 1).collect();
        assert!(
            missing.is_empty() && missing_reports.is_empty(),
            "replica {name}: acknowledged but not stored once: {} decisions {missing:?}, {} reports {missing_reports:?}",
            missing.len(),
            missing_reports.len()
        );
        eprintln!("replica {name}: {} decisions and {} reports acknowledged, all stored once", decisions.len(), reports.len());
    }
    // 6. The replica killed with -9 lost at most its queued, unflushed batch (batch_max 64).
    let c_stored = pg.query_i64("SELECT count(*) FROM decisions WHERE request_id LIKE 'fleet-load-c-%'") as usize;
    let c_reports = pg.query_i64("SELECT count(*) FROM feedback WHERE request_id LIKE 'fleet-load-c-%'") as usize;
    eprintln!("replica c killed with -9 after {} routes and {} reports: {c_stored} and {c_reports} stored", at_kill_c.0, at_kill_c.1);
    assert!(c_stored + 2 * 64 >= at_kill_c.0 && c_reports + 2 * 64 >= at_kill_c.1);
}

/// Polls an async condition every 20 ms for up to 15 s.
async fn eventually_async<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not reached in 15 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<usize>>) -> Vec<usize> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Runs one statement on `url` (off the runtime: the client has a runtime of its own).
fn sql(url: &str, statement: &str) -> u64 {
    let (url, statement) = (url.to_string(), statement.to_string());
    off_runtime(move || {
        let mut db = pointsman::logs::postgres::Db::connect(&url, Duration::from_secs(5)).unwrap();
        db.execute(&statement, &[], Duration::from_secs(300)).unwrap_or_else(|e| panic!("{statement}: {e}"))
    })
}

fn count(url: &str, query: &str) -> i64 {
    let (url, query) = (url.to_string(), query.to_string());
    off_runtime(move || pointsman::logs::postgres::Db::connect(&url, Duration::from_secs(5)).unwrap().query_i64(&query).unwrap())
}

/// The PostgreSQL log never stops on bad rows or a foreign spill, and retention never slows
/// the writer:
/// (a) a decision whose routing text holds U+0000, and the decisions after it, all land;
/// (b) a row PostgreSQL refuses for good (a CHECK constraint the test adds) goes to
///     `dead_letters`, counted, and the rest of its batch lands, whether it comes straight
///     from the queue or is replayed from the spill file;
/// (c) a spill file written for database `a` is set aside, not replayed, by a replica on `b`;
/// (d) a backlog of old rows is left alone while another replica holds the retention lock, then
///     pruned in chunks while routes keep landing, with no spill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_log_survives_bad_rows_foreign_spills_and_a_retention_backlog() {
    let _one_at_a_time = SERIAL.lock().await;
    let pg = Postgres::start();
    let base = pg.url();
    let root_url = base.trim_end_matches("/postgres");
    let (url_a, url_b) = (format!("{root_url}/a"), format!("{root_url}/b"));
    sql(&base, "CREATE DATABASE a");
    sql(&base, "CREATE DATABASE b");
    // b: migrated by the test, with 200,000 decisions and 20,000 reports from 40 days ago.
    let backlog = 220_000;
    off_runtime(|| pointsman::logs::postgres::Db::connect(&url_b, Duration::from_secs(5)).unwrap().migrate().unwrap());
    sql(
        &url_b,
        "INSERT INTO decisions (id, request_id, ts_ms, routing_text, encoder, router_version, cost_weight, constraints, input_tokens, candidates)
         SELECT md5('d' || g)::uuid, 'old-' || g, (extract(epoch FROM now() - interval '40 days') * 1000)::bigint + g, 'an old prompt',
                'e', 'v', 0.5, '{}'::jsonb, 3, '[]'::jsonb
         FROM generate_series(1, 200000) g",
    );
    sql(
        &url_b,
        "INSERT INTO feedback (id, request_id, ts_ms, model, outcome)
         SELECT md5('f' || g)::uuid, 'old-' || g, (extract(epoch FROM now() - interval '40 days') * 1000)::bigint + g, 'm', 'success'
         FROM generate_series(1, 20000) g",
    );
    let root = tempfile::tempdir().unwrap();
    let r1 = Replica::start_with("r1", root.path(), &url_a, None, &[]).await;
    assert_eq!(r1.metric("pointsman_decision_log_backend_up").await, 1.0);
    // A rule that one prompt breaks: PostgreSQL refuses that row for good (SQLSTATE 23514).
    sql(&url_a, "ALTER TABLE decisions ADD CONSTRAINT no_poison CHECK (routing_text NOT LIKE '%poison pill%')");

    // (a) and (b), straight from the queue.
    let mut expected = Vec::new();
    let mut nul_accepted = false;
    for i in 0..20 {
        let id = format!("bad-rows-{i}");
        let prompt = match i {
            3 => format!("{CHAT_PROMPT} with a NUL \u{0} inside"),
            7 => format!("{CHAT_PROMPT} with a poison pill inside"),
            _ => format!("{CHAT_PROMPT} ({i})"),
        };
        match r1.route(&prompt, &id).await {
            Ok(_) => {
                if i == 3 {
                    nul_accepted = true;
                }
                if i != 7 {
                    expected.push(id);
                }
            }
            // The gRPC layer may refuse control characters itself; then there is nothing to store.
            Err(s) if i == 3 && s.code() == tonic::Code::InvalidArgument => {}
            Err(s) => panic!("{id}: {s}"),
        }
    }
    let landed = eventually_async("bad rows landed", || async {
        let n = count(&url_a, "SELECT count(*) FROM decisions WHERE request_id LIKE 'bad-rows-%'");
        (n == expected.len() as i64).then_some(n)
    })
    .await;
    assert_eq!(landed, expected.len() as i64, "every decision but the refused one landed");
    assert_eq!(count(&url_a, "SELECT count(*) FROM decisions WHERE request_id = 'bad-rows-7'"), 0);
    assert_eq!(
        count(&url_a, "SELECT count(*) FROM dead_letters WHERE request_id = 'bad-rows-7' AND kind = 'decision' AND sqlstate = '23514'"),
        1,
        "the refused decision is in the dead-letter table"
    );
    assert_eq!(r1.metric("pointsman_decision_log_dead_letters_total").await, 1.0);
    // Route takes the NUL out of the routing text (the log's own `storable` is the backstop for
    // any other path: a unit test in logs), so the row is stored without it.
    assert!(nul_accepted, "a prompt with a NUL is routed");
    assert_eq!(
        count(&url_a, "SELECT count(*) FROM decisions WHERE request_id = 'bad-rows-3' AND routing_text LIKE '%with a NUL  inside'"),
        1,
        "the NUL was taken out of the stored routing text"
    );
    assert_eq!(r1.metric("pointsman_decision_log_spilled").await, 0.0);
    assert_eq!(r1.metric("pointsman_decision_log_backend_up").await, 1.0, "a refused row is not a lost connection");

    // (b) again, from the spill file: PostgreSQL stalls, a poisoned batch spills, and on replay
    // it goes to the dead-letter table without holding up the rest.
    pg.signal_all("STOP");
    for i in 0..6 {
        let prompt = if i == 2 { format!("{CHAT_PROMPT} poison pill, spilled") } else { format!("{CHAT_PROMPT} spilled {i}") };
        r1.route(&prompt, &format!("spilled-{i}")).await.expect("Route never waits for PostgreSQL");
    }
    eventually_async("spilled", || async { Some(r1.metric("pointsman_decision_log_spilled").await).filter(|v| *v >= 6.0) }).await;
    pg.signal_all("CONT");
    eventually_async("replayed", || async { Some(r1.metric("pointsman_decision_log_spilled").await).filter(|v| *v == 0.0) }).await;
    assert_eq!(r1.metric("pointsman_decision_log_dead_letters_total").await, 2.0);
    assert_eq!(count(&url_a, "SELECT count(*) FROM decisions WHERE request_id LIKE 'spilled-%'"), 5);
    assert_eq!(count(&url_a, "SELECT count(*) FROM dead_letters WHERE request_id = 'spilled-2'"), 1);
    assert_eq!(r1.metric("pointsman_decision_log_spill_bytes").await, 0.0);

    // (c) A spill for `a`, left behind by a replica killed during a stall.
    pg.signal_all("STOP");
    for i in 0..3 {
        r1.route(&format!("{CHAT_PROMPT} foreign {i}"), &format!("foreign-{i}")).await.unwrap();
    }
    eventually_async("spilled for a", || async { Some(r1.metric("pointsman_decision_log_spilled").await).filter(|v| *v >= 3.0) }).await;
    let spill = root.path().join("r1").join("spill.db");
    drop(r1);
    pg.signal_all("CONT");
    // Another replica is pruning `b` (the test holds the retention lock)...
    let holder = off_runtime(|| {
        let mut db = pointsman::logs::postgres::Db::connect(&url_b, Duration::from_secs(5)).unwrap();
        let lock = format!("SELECT pg_try_advisory_lock({})", pointsman::logs::retention::RETENTION_LOCK);
        assert!(db.query_bool(&lock).unwrap());
        db
    });
    // ...when a replica on `b` takes over that spill file (same path), with retention every second.
    let spill_setting = format!("{:?}", spill.display().to_string());
    let r2 = Replica::start_with(
        "r2",
        root.path(),
        &url_b,
        None,
        // A write may take 3 s before it spills (not the replicas' 500 ms): a PostgreSQL slowed
        // by a busy machine must not pass for a writer that waited for retention, which would
        // wait for the whole backlog (44 statements).
        &[("spill_path", &spill_setting), ("retention_interval_seconds", "1"), ("batch_max", "16"), ("write_timeout_ms", "3000")],
    )
    .await;
    // (d) While another replica holds the lock, this one leaves the backlog alone.
    eventually_async("retention skipped", || async {
        Some(r2.metric("pointsman_decision_log_retention_skipped_total").await).filter(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(r2.metric("pointsman_decision_log_pruned_rows_total").await, 0.0, "one replica prunes at a time");
    off_runtime(move || drop(holder));
    // Routes go on while retention works through the backlog.
    let mut mine = Vec::new();
    let pruned = loop {
        let id = format!("b-own-{}", mine.len());
        r2.route(&format!("{CHAT_PROMPT} on b {}", mine.len()), &id).await.unwrap();
        mine.push(id);
        let pruned = r2.metric("pointsman_decision_log_pruned_rows_total").await;
        if pruned >= backlog as f64 || mine.len() > 5000 {
            break pruned;
        }
    };
    assert_eq!(pruned, backlog as f64, "the whole backlog was pruned");
    let deletes = r2.metric("pointsman_decision_log_retention_deletes_total").await;
    assert!(deletes >= (200_000 / 5000 + 20_000 / 5000) as f64, "in chunks of at most 5000 rows: {deletes} statements");
    eprintln!("retention: {backlog} old rows pruned in {deletes} statements while {} routes went on", mine.len());
    let all_landed = eventually_async("own routes landed", || async {
        let n = count(&url_b, "SELECT count(*) FROM decisions WHERE request_id LIKE 'b-own-%'");
        (n == mine.len() as i64).then_some(n)
    })
    .await;
    assert_eq!(all_landed, mine.len() as i64);
    assert_eq!(r2.metric("pointsman_decision_log_spilled_total").await, 0.0, "the writer never waited for retention");
    assert_eq!(r2.metric("pointsman_decision_log_dropped_total").await, 0.0);
    // The spill meant for `a` went to neither database: it is set aside in the file.
    assert_eq!(r2.metric("pointsman_decision_log_spill_set_aside_total").await, 3.0);
    assert_eq!(count(&url_b, "SELECT count(*) FROM decisions WHERE request_id LIKE 'foreign-%'"), 0);
    assert_eq!(count(&url_a, "SELECT count(*) FROM decisions WHERE request_id LIKE 'foreign-%'"), 0);
    assert_eq!(count(&url_b, "SELECT count(*) FROM decisions WHERE request_id LIKE 'old-%'"), 0);
    r2.terminate();
    let kept = rusqlite::Connection::open(&spill)
        .unwrap()
        .query_row("SELECT coalesce(sum(records), 0) FROM set_aside", [], |r| r.get::<_, i64>(0))
        .unwrap();
    assert_eq!(kept, 3, "the foreign batches are kept in the spill file's set_aside table");
}

const OFFERS_PUBLISHED: &str = "pointsman_health_shared_offers_total{result=\"published\"}";
const OFFERS_APPLIED: &str = "pointsman_health_shared_offers_total{result=\"applied\"}";

/// Waits until `from` has published an offered set after `published_before` and `to` has
/// applied every one `from` published (no other replica routes meanwhile): a report sent to
/// `to` on `from`'s last decision is then verified there.
async fn until_offered(from: &Replica, published_before: f64, to: &Replica) {
    eventually_async("offered set shared", || async {
        let published = from.metric(OFFERS_PUBLISHED).await;
        (published > published_before && to.metric(OFFERS_APPLIED).await >= published).then_some(())
    })
    .await;
}

impl Replica {
    /// A replica with its own SQLite decision log and the fleet's Redis, verifying reports
    /// (`count_unknown_requests` off, the default).
    async fn start_verifying(name: &'static str, root: &Path, redis: &Redis) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = write_config(
            &dir.join("pointsman.toml"),
            &repo().join("models/router"),
            &dir.join("decisions.db"),
            &[("count_unknown_requests", "false"), ("cool_down_seconds", "120.0"), ("shared_key", "\"trust\"")],
        );
        let replica = Replica::spawn(name, &cfg, &["--health-shared", &redis.url()]).await;
        eventually_async("connected", || async { Some(replica.metric("pointsman_health_shared_connected").await).filter(|v| *v == 1.0) })
            .await;
        replica
    }

    async fn feedback(&self, id: &str, model: &str, outcome: Outcome) -> pb::FeedbackResponse {
        let fb = pb::FeedbackRequest {
            request_id: id.into(),
            model: model.into(),
            outcome: outcome as i32,
            quality: Some(0.0),
            output_tokens: Some(7),
            ..Default::default()
        };
        self.client.clone().feedback(fb).await.unwrap().into_inner()
    }
}

/// Feedback trust across a fleet, without `count_unknown_requests`: a decision's offered set
/// reaches every replica through Redis, so a report sent to another replica than the one that
/// routed is verified there and counted once fleet-wide; a replica that starts after the reports
/// were published joins with their breakers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_verified_on_any_replica_and_a_late_joiner_sees_the_window() {
    let _one_at_a_time = SERIAL.lock().await;
    let redis = Redis::start();
    let root = tempfile::tempdir().unwrap();
    let a = Replica::start_verifying("trust-a", root.path(), &redis).await;
    let b = Replica::start_verifying("trust-b", root.path(), &redis).await;

    // Routed on A, reported to B: verified and counted on B, and A takes it from the stream.
    let published = a.metric(OFFERS_PUBLISHED).await;
    let model = a.route(MATH_PROMPT, "trust-0").await.unwrap();
    until_offered(&a, published, &b).await;
    let ack = b.feedback("trust-0", &model, Outcome::ServerError).await;
    assert!(ack.known_request && ack.counted && ack.verified, "{ack:?}");
    assert_eq!(ack.health.unwrap().consecutive_failures, 1);
    eventually_async("A applies B's report", || async { (a.metric("pointsman_health_shared_applied_total").await >= 1.0).then_some(()) })
        .await;
    // The same report again, to B and to A: logged, counted nowhere.
    let again = b.feedback("trust-0", &model, Outcome::ServerError).await;
    assert!(again.known_request && !again.counted && !again.verified, "{again:?}");
    let on_a = a.feedback("trust-0", &model, Outcome::ServerError).await;
    assert!(on_a.known_request && !on_a.counted && !on_a.verified, "{on_a:?}");
    assert_eq!(on_a.health.unwrap().consecutive_failures, 1, "A counted B's report once");
    assert_eq!(b.metric("pointsman_feedback_duplicates_total").await, 1.0);
    assert_eq!(a.metric("pointsman_feedback_duplicates_total").await, 1.0);
    assert_eq!(b.metric("pointsman_feedback_unverified_total").await, 0.0);
    // A model A did not offer for that request: logged on B, not counted.
    let listed = b.client.clone().list_models(pb::ListModelsRequest {}).await.unwrap().into_inner().models;
    let not_offered = listed.iter().map(|m| m.model.clone()).find(|m| *m != model).unwrap();
    let ack = b.feedback("trust-0", &not_offered, Outcome::ServerError).await;
    assert!(!ack.counted && !ack.verified && ack.health.unwrap().window_requests == 0, "{ack:?}");

    // Four more failures, each on its own request routed on A and reported to B: five in a row
    // open the breaker on both.
    for i in 1..5 {
        let id = format!("trust-{i}");
        let published = a.metric(OFFERS_PUBLISHED).await;
        assert_eq!(a.route(MATH_PROMPT, &id).await.unwrap(), model);
        until_offered(&a, published, &b).await;
        assert!(b.feedback(&id, &model, Outcome::ServerError).await.counted);
    }
    assert_eq!(b.state(&model).await, HealthState::CoolingDown);
    until_cooling_down(&a, &model, Duration::from_secs(10)).await;
    // B's log: 7 reports, of which the five first on an offered model are verified.
    let db = root.path().join("trust-b/decisions.db");
    let rows = eventually_async("B's log", || async {
        let n = pointsman::logs::store::counts(&db).map_or(0, |c| c.1);
        (n == 7).then_some(n)
    })
    .await;
    assert_eq!(rows, 7);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (verified, offered): (i64, i64) =
        conn.query_row("SELECT sum(verified), sum(offered) FROM feedback", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((verified, offered), (5, 6));

    // A replica started now reads the window's reports: the breaker is open there too.
    let c = Replica::start_verifying("trust-c", root.path(), &redis).await;
    until_cooling_down(&c, &model, Duration::from_secs(10)).await;
    assert!(c.metric("pointsman_health_shared_applied_total").await >= 5.0);
    for r in [a, b, c] {
        r.terminate();
    }
}
