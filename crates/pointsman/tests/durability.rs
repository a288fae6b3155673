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
    let (a, b) = ("gpt-4o-2024-05-13", "claude-3-haiku-20240307");
    // Two kinds of prompt: reasoning and code (zeroeval) and chat (alpaca_eval2). The gateway
    // reports that `a` solves the first kind at length and fails the second, and `b` the
    // reverse; the first 40 of each kind get feedback, the next 15 are never reported on.
    let (math, chat) =
        (prompts(&shared_data().join("zeroeval/train.jsonl.gz"), 55), prompts(&shared_data().join("alpaca_eval2/train.jsonl.gz"), 55));
    let reported: Vec<(&String, bool)> = math[..40].iter().map(|t| (t, true)).chain(chat[..40].iter().map(|t| (t, false))).collect();
    let unseen: Vec<(&String, bool)> = math[40..].iter().map(|t| (t, true)).chain(chat[40..].iter().map(|t| (t, false))).collect();
    let predicted = |r: &pb::RouteResponse, m: &str| {
        let e = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == m).unwrap();
        let c = e.candidate.as_ref().unwrap();
        (c.predicted_quality, f64::from(c.predicted_output_tokens))
    };
    let mut before = Vec::new();
    for (i, (t, is_math)) in reported.iter().enumerate() {
        let id = format!("loop-{i}");
        // Both models offered (primary and fallback): a report is a training label only on a
        // model offered for its request.
        let both = vec![a.to_string(), b.to_string()];
        let r = c
            .route(pb::RouteRequest {
                prompt: (*t).clone(),
                request_id: id.clone(),
                explain: true,
                allowed_models: both,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        before.push((predicted(&r, a), predicted(&r, b)));
        let (qa, ta, qb, tb) = if *is_math { (1.0, 900, 0.0, 40) } else { (0.0, 40, 1.0, 900) };
        for (m, q, tokens) in [(a, qa, ta), (b, qb, tb)] {
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
        // Now and then an availability failure: logged, not a training label (and it
        // moves health only if this replica offered the model; too rare to degrade it anyway).
        if i % 8 == 0 {
            c.feedback(pb::FeedbackRequest { request_id: id, model: b.into(), outcome: Outcome::Timeout as i32, ..Default::default() })
                .await
                .unwrap();
        }
    }
    let reports = 2 * reported.len() as i64 + 10;
    eventually(|| Some(()).filter(|_| pointsman::logs::store::counts(&db).unwrap().1 == reports)).await;

    // Export: one training line per rated report.
    let out = dir.path().join("export.jsonl.gz");
    let status = Command::new(BIN)
        .args(["--config", cfg_path.to_str().unwrap(), "logs", "export", "--out", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let exported = pointsman::learning::read_logs(&[out], true).unwrap();
    assert_eq!((exported.prompts.len(), exported.models.len(), exported.observations.len()), (reported.len(), 2, 2 * reported.len()));

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

    // Before, the shipped head ranked `a` (the stronger model overall) above `b` on most chat
    // prompts too; after, the order of the answer lengths on every reported prompt is the one
    // reported, and the quality order on at least nine in ten. (The trainer chooses the smoothest
    // predictor within one standard error of the best by cross-validation: on 80 prompts that
    // can be a kNN of 25 neighbours, which does not memorise each training prompt.)
    let a_first_on_chat = reported.iter().zip(&before).filter(|((_, is_math), ((q_a, _), (q_b, _)))| !is_math && q_a > q_b).count();
    assert!(a_first_on_chat * 2 >= chat[..40].len(), "the shipped head put {a} first on {a_first_on_chat} of 40 chat prompts");
    let mut quality_right = 0;
    for (t, is_math) in &reported {
        let r = c.route(pb::RouteRequest { prompt: (*t).clone(), explain: true, ..Default::default() }).await.unwrap().into_inner();
        let ((q_a, tok_a), (q_b, tok_b)) = (predicted(&r, a), predicted(&r, b));
        assert_eq!(tok_a > tok_b, *is_math, "reported prompt (math: {is_math}): {a} {q_a:.3}/{tok_a:.0}, {b} {q_b:.3}/{tok_b:.0}");
        quality_right += usize::from((q_a > q_b) == *is_math);
    }
    assert!(quality_right * 10 >= reported.len() * 9, "{quality_right} of {} reported prompts ranked as reported", reported.len());
    // On prompts never reported on, the retrained head tells the two kinds apart from the prompt
    // alone: the per-model averages are equal (each model solved half), so only a head that
    // learned which prompts each model is good at ranks them right.
    let mut right = 0;
    for (t, is_math) in &unseen {
        let r = c.route(pb::RouteRequest { prompt: (*t).clone(), explain: true, ..Default::default() }).await.unwrap().into_inner();
        let ((q_a, tok_a), (q_b, tok_b)) = (predicted(&r, a), predicted(&r, b));
        right += usize::from((q_a > q_b) == *is_math && (tok_a > tok_b) == *is_math);
    }
    assert!(right * 10 >= unseen.len() * 9, "{right} of {} unseen prompts ranked as their kind was reported", unseen.len());
    server.shutdown().await;
}
