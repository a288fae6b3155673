//! The feedback loop against the real server and a real SQLite file: Feedback RPC validation,
//! the decision log and its join, live health (circuit breaker) in Route and ListModels, metrics,
//! and a full queue that drops decisions without failing a request.
mod common;

use std::time::Duration;

use common::*;
use pointsman::pb::{self, ExclusionReason, HealthState, Outcome};
use tonic::Code;

fn route(prompt: &str, id: &str) -> pb::RouteRequest {
    pb::RouteRequest { prompt: prompt.into(), request_id: id.into(), profile: "quality".into(), ..Default::default() }
}

fn report(id: &str, model: &str, outcome: Outcome) -> pb::FeedbackRequest {
    pb::FeedbackRequest {
        request_id: id.into(),
        model: model.into(),
        outcome: outcome as i32,
        latency_ms: Some(850.0),
        ..Default::default()
    }
}

fn db_counts(path: &std::path::Path) -> (i64, i64) {
    pointsman::logs::store::counts(path).unwrap_or((0, 0))
}

#[tokio::test]
async fn decisions_and_feedback_are_logged_joined_and_validated() {
    let cfg = shipped_config();
    let db = cfg.decision_log.path.clone();
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();

    let r = c.route(route(MATH_PROMPT, "req-1")).await.unwrap().into_inner();
    let primary = r.candidates[0].model.clone();
    let fallback = r.candidates[1].model.clone();
    let chat_primary = c.route(route(CHAT_PROMPT, "req-2")).await.unwrap().into_inner().candidates[0].model.clone();

    // Two attempts for one request (the primary timed out, the fallback answered and was rated).
    let ack = c.feedback(report("req-1", &primary, Outcome::Timeout)).await.unwrap().into_inner();
    assert!(ack.known_request);
    assert_eq!(ack.health.unwrap().window_requests, 1);
    let rated = pb::FeedbackRequest {
        quality: Some(0.75),
        output_tokens: Some(321),
        input_tokens: Some(80),
        cost_usd: Some(0.002),
        ..report("req-1", &fallback, Outcome::Success)
    };
    c.feedback(rated).await.unwrap();
    c.feedback(pb::FeedbackRequest { output_tokens: Some(12), ..report("req-2", &chat_primary, Outcome::Refused) }).await.unwrap();
    // An id this replica never saw is accepted and kept; a model outside the catalog too.
    let ack = c.feedback(report("made-elsewhere", "some-private-model", Outcome::Success)).await.unwrap().into_inner();
    assert!(!ack.known_request);
    assert!(ack.health.is_none(), "no health is tracked for models outside the catalog");

    // Bad reports name the field, the limit and the value.
    for (bad, field, shows) in [
        (pb::FeedbackRequest { outcome: 0, ..report("x", &primary, Outcome::Success) }, "outcome", "Given: 0"),
        (pb::FeedbackRequest { outcome: 42, ..report("x", &primary, Outcome::Success) }, "outcome", "Given: 42"),
        (pb::FeedbackRequest { quality: Some(1.5), ..report("x", &primary, Outcome::Success) }, "quality", "1.5"),
        (pb::FeedbackRequest { latency_ms: Some(-3.0), ..report("x", &primary, Outcome::Success) }, "latency_ms", "-3"),
        (pb::FeedbackRequest { cost_usd: Some(f64::NAN), ..report("x", &primary, Outcome::Success) }, "cost_usd", "NaN"),
        (report("", &primary, Outcome::Success), "request_id", "must be set"),
        (report(&"r".repeat(200), &primary, Outcome::Success), "request_id", "200 bytes"),
        (report("x", " ", Outcome::Success), "model", "empty"),
        (report("x", &"m".repeat(300), Outcome::Success), "model", "300 bytes"),
        (report("x", "gpt\u{7}", Outcome::Success), "model", "control characters"),
    ] {
        let e = c.feedback(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(field) && e.message().contains(shows), "{}", e.message());
    }

    let (decisions, feedback) = eventually(|| Some(db_counts(&db)).filter(|&(d, f)| d >= 2 && f >= 4)).await;
    assert_eq!((decisions, feedback), (2, 4), "rejected reports are not stored");

    // The decision row holds the routing text and the ranked candidates as served.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (text, candidates, weight): (String, String, f64) = conn
        .query_row("SELECT routing_text, candidates, cost_weight FROM decisions WHERE request_id = 'req-1'", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(text, MATH_PROMPT);
    assert_eq!(weight, 0.0);
    let candidates: serde_json::Value = serde_json::from_str(&candidates).unwrap();
    assert_eq!(candidates[0]["model"], primary.as_str());
    assert_eq!(candidates.as_array().unwrap().len(), r.candidates.len());
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");

    // The join keeps rated and refused answers, not availability outcomes or unknown requests.
    let (lines, skips) = pointsman::logs::store::training_lines(&db, pointsman::logs::store::FeedbackScope::Verified).unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!((lines[0].model.as_str(), lines[0].score, lines[0].output_tokens), (fallback.as_str(), 0.75, 321));
    assert_eq!((lines[1].prompt.as_str(), lines[1].score), (CHAT_PROMPT, 0.0));
    assert_eq!((skips.no_decision, skips.no_quality), (1, 1));

    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_feedback_total{outcome=\"timeout\"}"), Some(1.0));
    assert_eq!(metric(&page, "pointsman_feedback_total{outcome=\"success\"}"), Some(2.0));
    assert_eq!(metric(&page, "pointsman_route_requests_total{result=\"ok\"}"), Some(2.0));
    assert_eq!(metric(&page, "pointsman_decision_log_decisions_written_total"), Some(2.0));
    assert_eq!(metric(&page, "pointsman_decision_log_dropped_total"), Some(0.0));
    server.shutdown().await;
}

#[tokio::test]
async fn without_prompt_storage_only_the_embedding_is_kept() {
    let mut cfg = shipped_config();
    cfg.decision_log.store_prompts = false;
    let db = cfg.decision_log.path.clone();
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    // Twice: the second answer comes from the prediction cache and must log the embedding too.
    c.route(route(MATH_PROMPT, "a")).await.unwrap();
    let r = c.route(route(MATH_PROMPT, "b")).await.unwrap().into_inner();
    assert!(r.timings.unwrap().cache_hit);
    eventually(|| Some(()).filter(|_| db_counts(&db).0 == 2)).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn.prepare("SELECT routing_text, embedding FROM decisions ORDER BY id").unwrap();
    let rows: Vec<(Option<String>, Option<Vec<u8>>)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    for (text, emb) in &rows {
        assert!(text.is_none(), "the prompt text must not be stored");
        let v = pointsman::logs::store::embedding_from_bytes(emb.as_ref().expect("embedding stored")).unwrap();
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "a real (normalised) embedding, norm {norm}");
    }
    assert_eq!(rows[0].1, rows[1].1, "cache hit and miss log the same embedding");
    server.shutdown().await;
}

#[tokio::test]
async fn a_failing_model_cools_down_is_probed_and_recovers() {
    let mut cfg = shipped_config();
    cfg.health = pointsman::health::HealthConfig {
        window_seconds: 60,
        min_requests: 4,
        degraded_error_rate: 0.2,
        open_error_rate: 0.9,
        open_after_consecutive_failures: 3,
        cool_down_seconds: 1.5,
        max_cool_down_seconds: 10.0,
        ..Default::default()
    };
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    let explain = |id: &str| pb::RouteRequest { explain: true, ..route(MATH_PROMPT, id) };
    let first = c.route(explain("h0")).await.unwrap().into_inner();
    let primary = first.candidates[0].model.clone();
    assert_eq!(first.candidates[0].health, HealthState::Healthy as i32);

    for i in 0..3 {
        // Each report is on a request this replica decided and offered the model for (reports on
        // other ids leave health alone by default: tests/security.rs).
        if i > 0 {
            let r = c.route(route(MATH_PROMPT, &format!("h{i}"))).await.unwrap().into_inner();
            assert_eq!(r.candidates[0].model, primary);
        }
        let ack = c.feedback(report(&format!("h{i}"), &primary, Outcome::ServerError)).await.unwrap().into_inner();
        let h = ack.health.unwrap();
        if i == 2 {
            assert_eq!(h.state, HealthState::CoolingDown as i32);
            assert!(h.cool_down_remaining_s > 1.0 && h.cool_down_remaining_s <= 1.5, "{h:?}");
        }
    }
    let r = c.route(explain("h3")).await.unwrap().into_inner();
    assert_ne!(r.candidates[0].model, primary, "a cooling-down model is not offered");
    assert!(r.candidates.iter().all(|x| x.model != primary));
    let e = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == primary).unwrap();
    assert_eq!(e.reason, ExclusionReason::Unhealthy as i32);
    assert!(e.detail.contains("cooling down") && e.detail.contains("3 in a row"), "{}", e.detail);
    let listed = c.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    let h = listed.models.iter().find(|m| m.model == primary).unwrap().health.unwrap();
    assert_eq!((h.state, h.window_requests, h.consecutive_failures), (HealthState::CoolingDown as i32, 3, 3));
    assert_eq!(h.error_rate, 1.0);

    // After the cool-down the model is tried again, ranked normally.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = c.route(explain("h4")).await.unwrap().into_inner();
    assert_eq!(r.candidates[0].model, primary);
    assert_eq!(r.candidates[0].health, HealthState::Probing as i32);
    // The probe succeeds: the circuit closes and the failures are forgotten.
    let h = c.feedback(report("h4", &primary, Outcome::Success)).await.unwrap().into_inner().health.unwrap();
    assert_eq!((h.state, h.window_requests), (HealthState::Healthy as i32, 1));

    // A model failing now and then (1 of its 5 attempts in the window) stays eligible but ranks behind healthy ones.
    let second = r.candidates[1].model.clone();
    assert!(c.route(route(MATH_PROMPT, "h5-0")).await.unwrap().into_inner().candidates.iter().any(|x| x.model == primary));
    for (j, o) in [Outcome::Success, Outcome::Success, Outcome::Success, Outcome::Timeout].into_iter().enumerate() {
        // One report per request id and model counts: a request each.
        let id = format!("h5-{j}");
        if j > 0 {
            assert!(c.route(route(MATH_PROMPT, &id)).await.unwrap().into_inner().candidates.iter().any(|x| x.model == primary));
        }
        assert!(c.feedback(report(&id, &primary, o)).await.unwrap().into_inner().counted);
    }
    let r = c.route(explain("h6")).await.unwrap().into_inner();
    assert_eq!(r.candidates[0].model, second, "the degraded model drops behind");
    let demoted = r.candidates.iter().find(|x| x.model == primary);
    if let Some(d) = demoted {
        assert_eq!(d.health, HealthState::Degraded as i32);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_full_log_queue_drops_decisions_and_never_fails_a_route() {
    let mut cfg = shipped_config();
    cfg.decision_log.queue_capacity = 1;
    cfg.decision_log.batch_max = 1;
    cfg.decision_log.synchronous = "full".into();
    let db = cfg.decision_log.path.clone();
    let server = TestServer::start_with(cfg).await;
    // One request first puts the prompt in the cache, so the burst below is all cache hits: it
    // loads the log, not the encoder (300 simultaneous misses would meet the encoder's own
    // backpressure, `server.max_queued_requests`, instead).
    server.client.clone().route(route(CHAT_PROMPT, "warm")).await.unwrap();
    let n = 301;
    let mut tasks = Vec::new();
    for i in 1..n {
        let mut c = server.client.clone();
        tasks.push(tokio::spawn(async move { c.route(route(CHAT_PROMPT, &format!("q{i}"))).await.map(|_| ()) }));
    }
    for t in tasks {
        t.await.unwrap().expect("routing never fails because of the log");
    }
    let page = server.metrics().await;
    let dropped = metric(&page, "pointsman_decision_log_dropped_total").unwrap();
    let written = eventually(|| Some(db_counts(&db).0).filter(|&d| d as f64 + dropped >= n as f64)).await;
    assert_eq!(written as f64 + dropped, n as f64, "every decision is either written or counted as dropped");
    assert!(dropped > 0.0, "a one-slot queue under 300 concurrent requests drops some decisions");
    server.shutdown().await;
}

/// M18: health sees a report before the log's queue does. With the queue held full, the report
/// is answered RESOURCE_EXHAUSTED, yet health has counted it; the client's retry is logged (as the
/// verified report: the refused one never was) and does not count a second time.
#[tokio::test]
async fn health_counts_a_report_the_full_log_refused_and_its_retry_once() {
    let mut cfg = shipped_config();
    cfg.decision_log.queue_capacity = 1;
    cfg.decision_log.batch_max = 1;
    cfg.decision_log.linger_ms = 0;
    cfg.decision_log.feedback_wait_ms = 0;
    // Failures are only counted here: no circuit opens.
    cfg.health.open_after_consecutive_failures = 0;
    cfg.health.min_requests = 1000;
    let db = cfg.decision_log.path.clone();
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    let model = c.route(route(MATH_PROMPT, "m18-warm")).await.unwrap().into_inner().candidates[0].model.clone();
    eventually(|| Some(()).filter(|_| db_counts(&db).0 == 1)).await;
    // Another connection holds the file's write lock: the log's writer waits on its next write
    // (seconds), and the one-record queue behind it fills.
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // A report per request until one meets the full queue (the writer may take a record or
    // two before it is stuck on the lock); each accepted one counts.
    let mut accepted = 0;
    let refused = loop {
        assert!(accepted < 20, "the log's queue never filled");
        let id = format!("m18-{accepted}");
        assert_eq!(c.route(route(MATH_PROMPT, &id)).await.unwrap().into_inner().candidates[0].model, model);
        for j in 0..2 {
            c.route(route(CHAT_PROMPT, &format!("{id}-filler-{j}"))).await.unwrap();
        }
        match c.feedback(report(&id, &model, Outcome::ServerError)).await {
            Ok(ack) => {
                assert!(ack.into_inner().counted);
                accepted += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                break id;
            }
        }
    };
    let window = |models: Vec<pb::ModelInfo>| models.into_iter().find(|m| m.model == model).unwrap().health.unwrap().window_requests;
    let listed = c.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner().models;
    assert_eq!(window(listed), accepted + 1, "health counted the refused report");
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    // The client retries until the log takes it: it does not count again, and it is the verified one.
    let mut retries = 0.0;
    let ack = loop {
        retries += 1.0;
        match c.feedback(report(&refused, &model, Outcome::ServerError)).await {
            Ok(ack) => break ack.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(!ack.counted && ack.verified, "{ack:?}");
    assert_eq!(ack.health.unwrap().window_requests, accepted + 1);
    let page = server.metrics().await;
    assert!(metric(&page, "pointsman_decision_log_feedback_refused_total").unwrap() >= 1.0);
    assert_eq!(metric(&page, "pointsman_feedback_duplicates_total"), Some(retries), "every retry was taken for a repeat");
    let stored = || {
        let conn = rusqlite::Connection::open(&db).ok()?;
        let q = "SELECT count(*), coalesce(sum(verified), 0) FROM feedback WHERE request_id = ?1";
        conn.query_row(q, [&refused], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))).ok()
    };
    assert_eq!(eventually(|| stored().filter(|s| s.0 > 0)).await, (1, 1), "logged once, verified");
    server.shutdown().await;
}
