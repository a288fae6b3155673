//! The decision log survives `kill -9` of the real binary, and the loop closes: route, report
//! outcomes, export, retrain from the database, reload, and the predictions move towards what
//! was reported.
mod common;

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use pointsman::{
    config::Config,
    pb::{self, admin_client::AdminClient, router_client::RouterClient, Outcome},
};

const BIN: &str = env!("CARGO_BIN_EXE_pointsman");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn connect(port: u16) -> RouterClient<tonic::transport::Channel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
            let mut c = RouterClient::new(ch);
            if c.list_models(pb::ListModelsRequest {}).await.is_ok() {
                return c;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_server(cfg: &Path, port: u16) -> std::process::Child {
    Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap(), "serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_at_most_the_unflushed_batch_and_never_corrupts_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("decisions.db");
    let batch = 64usize;
    let cfg = write_config(&dir.path().join("pointsman.toml"), &repo().join("models/router"), &db, &[("batch_max", &batch.to_string())]);
    let port = free_port();
    let mut child = spawn_server(&cfg, port);
    let client = connect(port).await;

    // Four clients route and report as fast as they can; count what the server acknowledged.
    let (acked_routes, acked_reports) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let (mut c, stop, routes, reports) = (client.clone(), Arc::clone(&stop), Arc::clone(&acked_routes), Arc::clone(&acked_reports));
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("k{w}-{i}");
                let prompt = format!("{} ({i})", if i % 2 == 0 { CHAT_PROMPT } else { MATH_PROMPT });
                let Ok(r) = c.route(pb::RouteRequest { prompt, request_id: id.clone(), ..Default::default() }).await else { break };
                routes.fetch_add(1, Ordering::SeqCst);
                let model = r.into_inner().candidates[0].model.clone();
                let fb = pb::FeedbackRequest {
                    request_id: id,
                    model,
                    outcome: Outcome::Success as i32,
                    quality: Some(0.5),
                    output_tokens: Some(10),
                    ..Default::default()
                };
                if c.feedback(fb).await.is_err() {
                    break;
                }
                reports.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // SIGKILL mid-traffic: no shutdown hook runs.
    let (routes, reports) = (acked_routes.load(Ordering::SeqCst), acked_reports.load(Ordering::SeqCst));
    child.kill().unwrap();
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    assert!(routes > 50, "the load ran ({routes} routes)");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let (decisions, feedback) = pointsman::logs::store::counts(&db).unwrap();
    eprintln!("kill -9 after {routes} acknowledged routes and {reports} reports: {decisions} decisions and {feedback} reports stored");
    // At most what was queued or in the batch being written at the kill is missing.
    let bound = 2 * batch;
    assert!(decisions as usize + bound >= routes, "{decisions} decisions stored of {routes} acknowledged");
    assert!(feedback as usize + bound >= reports, "{feedback} reports stored of {reports} acknowledged");
    // One queue in arrival order, committed batch by batch: a report that survived has its
    // decision (routed before it) stored too.
    let orphans: i64 = conn
        .query_row(
            "SELECT count(*) FROM feedback f WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.request_id = f.request_id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0);
    drop(conn);

    // The same file opens again and keeps growing.
    let port = free_port();
    let mut child = spawn_server(&cfg, port);
    let mut c = connect(port).await;
    c.route(pb::RouteRequest { prompt: CHAT_PROMPT.into(), request_id: "after-restart".into(), ..Default::default() }).await.unwrap();
    let grown = eventually(|| Some(pointsman::logs::store::counts(&db).unwrap().0).filter(|&d| d > decisions)).await;
    assert_eq!(grown, decisions + 1);
    // A clean stop (SIGTERM) drains the queue: nothing routed before it is lost.
    for i in 0..50 {
        c.route(pb::RouteRequest { prompt: format!("{CHAT_PROMPT} {i}"), ..Default::default() }).await.unwrap();
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    child.wait().unwrap();
    assert_eq!(pointsman::logs::store::counts(&db).unwrap().0, decisions + 51);
}

/// The first `n` distinct prompts of a routing log.
fn prompts(path: &Path, n: usize) -> Vec<String> {
    let logs = pointsman::learning::read_logs(&[path.to_path_buf()], true).unwrap();
    logs.prompts.into_iter().take(n).map(|p| p.text).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_exported_and_retrained_moves_predictions_towards_what_was_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("decisions.db");
    let cfg_path = dir.path().join("pointsman.toml");
    write_config(&cfg_path, &repo().join("models/router"), &db, &[]);
    let server = TestServer::start_with(Config::load(&cfg_path).unwrap()).await;
    let mut c = server.client.clone();
    // Two models of the zeroeval family: the head thinks the first is the better one.
    let (good, bad) = ("gpt-4o-2024-05-13", "claude-3-haiku-20240307");
    let texts = prompts(&shared_data().join("zeroeval/train.jsonl.gz"), 60);
    let predicted = |r: &pb::RouteResponse, m: &str| {
        let e = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == m).unwrap();
        let c = e.candidate.as_ref().unwrap();
        (c.predicted_quality, f64::from(c.predicted_output_tokens))
    };
    let mut before = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let id = format!("loop-{i}");
        let r = c
            .route(pb::RouteRequest { prompt: t.clone(), request_id: id.clone(), explain: true, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        before.push((predicted(&r, good), predicted(&r, bad)));
        // The gateway reports the opposite of what the head expects: the "good" model failed every
        // task with long answers, the "bad" one solved every task briefly.
        for (m, q, tokens) in [(good, 0.0, 900), (bad, 1.0, 40)] {
            let fb = pb::FeedbackRequest {
                request_id: id.clone(),
                model: m.into(),
                outcome: Outcome::Success as i32,
                quality: Some(q),
                output_tokens: Some(tokens),
                ..Default::default()
            };
            c.feedback(fb).await.unwrap();
        }
        // Now and then an availability failure: logged, not a training label (and not counted
        // for health unless this replica offered the model).
        if i % 6 == 0 {
            c.feedback(pb::FeedbackRequest { request_id: id, model: bad.into(), outcome: Outcome::Timeout as i32, ..Default::default() })
                .await
                .unwrap();
        }
    }
    let reports = 2 * texts.len() as i64 + 10;
    eventually(|| Some(()).filter(|_| pointsman::logs::store::counts(&db).unwrap().1 == reports)).await;

    // Export: one training line per rated report.
    let out = dir.path().join("export.jsonl.gz");
    let status = Command::new(BIN)
        .args(["--config", cfg_path.to_str().unwrap(), "logs", "export", "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let exported = pointsman::learning::read_logs(&[out], true).unwrap();
    assert_eq!((exported.prompts.len(), exported.models.len(), exported.observations.len()), (texts.len(), 2, 2 * texts.len()));

    // Retrain straight from the database, then reload the server onto the new head.
    let new_head = dir.path().join("retrained");
    let train = Command::new(BIN)
        .args(["--config", cfg_path.to_str().unwrap(), "train", "--data", db.to_str().unwrap(), "--out", new_head.to_str().unwrap()])
        .args(["--ensemble", "1", "--no-embedding-cache", "--quiet", "--name", "feedback"])
        .output()
        .unwrap();
    assert!(train.status.success(), "{}", String::from_utf8_lossy(&train.stderr));
    write_config(&cfg_path, &new_head, &db, &[]);
    let r = AdminClient::new(server.admin_channel.clone()).reload(pb::ReloadRequest {}).await.unwrap().into_inner();
    assert!(r.router_version.contains("+feedback-"), "{r:?}");

    let mut moved = 0;
    for (t, ((q_good, tok_good), (q_bad, tok_bad))) in texts.iter().zip(&before) {
        let r = c.route(pb::RouteRequest { prompt: t.clone(), explain: true, ..Default::default() }).await.unwrap().into_inner();
        let ((nq_good, ntok_good), (nq_bad, ntok_bad)) = (predicted(&r, good), predicted(&r, bad));
        assert!(
            nq_good < *q_good && nq_bad > *q_bad,
            "quality moves towards the reports: {good} {q_good:.3} -> {nq_good:.3}, {bad} {q_bad:.3} -> {nq_bad:.3}"
        );
        assert!(ntok_good > *tok_good && ntok_bad < *tok_bad, "lengths move towards the reports");
        moved += usize::from(r.candidates[0].model == bad);
    }
    assert_eq!(moved, texts.len(), "the retrained head routes every prompt to the model that was reported better");
    server.shutdown().await;
}
