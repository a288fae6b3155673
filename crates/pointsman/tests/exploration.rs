//! Exploration and shadow mode against the real server (real encoder and heads, a real SQLite
//! decision log): opted-in requests draw their primary among the near-best eligible models with
//! a logged propensity, deterministically per request id, never outside the hard constraints;
//! the propensity reaches the training export; a shadow head scores every request on the same
//! embedding (one encoder run per routing text) and its agreement is counted and logged.
mod common;

use std::collections::BTreeMap;

use common::*;
use pointsman::{
    logs::store::FeedbackScope,
    pb::{self, Outcome},
};

/// A shadow head that disagrees: the shipped head with its model ids in reverse order, so each
/// model gets another model's predictions.
fn reversed_head(dir: &std::path::Path) -> std::path::PathBuf {
    let dir = copy_head(dir);
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["models"].as_array_mut().unwrap().reverse();
    m["head_id"] = "shadow-reversed".into();
    std::fs::write(&path, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    dir
}

fn route(prompt: &str, id: &str, explore: Option<bool>) -> pb::RouteRequest {
    pb::RouteRequest { prompt: prompt.into(), request_id: id.into(), profile: "quality".into(), explore, ..Default::default() }
}

#[tokio::test]
async fn exploration_draws_near_best_models_with_logged_propensities_and_a_shadow_head_is_counted() {
    let scratch = tempfile::tempdir().unwrap();
    let mut cfg = shipped_config();
    let db = cfg.decision_log.path.clone();
    // No share by default: only requests that opt in explore. A wide margin and a warm softmax so
    // that several models are drawn.
    cfg.exploration.share = 0.0;
    cfg.exploration.margin = 0.1;
    cfg.exploration.temperature = 0.05;
    cfg.exploration.floor = 0.3;
    cfg.shadow.head_dir = Some(reversed_head(&scratch.path().join("shadow")));
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    // Encoder jobs run at start-up (the reload check, the savings baseline's probes).
    let jobs_at_start = metric(&server.metrics().await, r#"pointsman_encoder_jobs_total{result="run"}"#).unwrap();

    // Opted out, and by default (share 0): the best model, propensity 1.
    let best = c.route(route(MATH_PROMPT, "base", Some(false))).await.unwrap().into_inner();
    assert_eq!((best.propensity, best.explored), (1.0, false));
    let best_model = best.candidates[0].model.clone();
    let default = c.route(route(MATH_PROMPT, "default", None)).await.unwrap().into_inner();
    assert_eq!((default.candidates[0].model.as_str(), default.propensity, default.explored), (best_model.as_str(), 1.0, false));

    // Opted in: the primary is drawn, with its propensity; the same request id draws the same.
    let n = 300;
    let mut seen: BTreeMap<String, (u32, f64)> = BTreeMap::new();
    for i in 0..n {
        let r = c.route(route(MATH_PROMPT, &format!("x{i}"), Some(true))).await.unwrap().into_inner();
        assert!(r.explored);
        assert!(r.propensity > 0.0 && r.propensity <= 1.0, "{}", r.propensity);
        assert_eq!(r.attempts[0].model, r.candidates[0].model, "the failover order starts at the drawn primary");
        let e = seen.entry(r.candidates[0].model.clone()).or_default();
        assert!(e.1 == 0.0 || (e.1 - r.propensity).abs() < 1e-9, "one prompt, one propensity per model");
        e.0 += 1;
        e.1 = r.propensity;
    }
    assert!(seen.len() >= 2, "opted-in requests drew only {seen:?}");
    assert!(seen.contains_key(&best_model), "{seen:?}");
    let total: f64 = seen.values().map(|v| v.1).sum();
    assert!(total <= 1.0 + 1e-9, "propensities of the models drawn sum to {total}");
    for (model, (count, p)) in &seen {
        let share = f64::from(*count) / f64::from(n);
        let se = (p * (1.0 - p) / f64::from(n)).sqrt().max(1e-3);
        assert!((share - p).abs() < 5.0 * se, "{model}: drawn {share} of the time, propensity {p}");
    }
    let again = c.route(route(MATH_PROMPT, "x7", Some(true))).await.unwrap().into_inner();
    let first = c.route(route(MATH_PROMPT, "x7", Some(true))).await.unwrap().into_inner();
    assert_eq!((again.candidates[0].model.clone(), again.propensity), (first.candidates[0].model.clone(), first.propensity));

    // Never outside the hard constraints: with the best model denied it is never drawn.
    for i in 0..60 {
        let req = pb::RouteRequest { denied_models: vec![best_model.clone()], ..route(MATH_PROMPT, &format!("d{i}"), Some(true)) };
        let r = c.route(req).await.unwrap().into_inner();
        assert!(r.candidates.iter().all(|m| m.model != best_model));
    }

    // The propensity of the primary reaches the training export.
    let drawn = c.route(route(MATH_PROMPT, "rated", Some(true))).await.unwrap().into_inner();
    let report = pb::FeedbackRequest {
        request_id: "rated".into(),
        model: drawn.candidates[0].model.clone(),
        outcome: Outcome::Success as i32,
        quality: Some(0.9),
        output_tokens: Some(120),
        ..Default::default()
    };
    c.feedback(report).await.unwrap();

    // Shadow mode: every Route above was scored by the shadow head, counted by agreement; the
    // encoder ran once per distinct routing text (the shadow head reads the same embedding).
    let page = server.metrics().await;
    let agreed = metric(&page, r#"pointsman_shadow_decisions_total{head="shadow-reversed",agrees="true"}"#).unwrap_or(0.0);
    let disagreed = metric(&page, r#"pointsman_shadow_decisions_total{head="shadow-reversed",agrees="false"}"#).unwrap_or(0.0);
    let routed = metric(&page, r#"pointsman_route_requests_total{result="ok"}"#).unwrap();
    assert_eq!(agreed + disagreed, routed, "{page}");
    assert!(disagreed > 0.0, "a head with its models reversed disagrees somewhere");
    let jobs = metric(&page, r#"pointsman_encoder_jobs_total{result="run"}"#).unwrap();
    // One job for the one routing text routed: every later Route hit the cache.
    assert_eq!(jobs - jobs_at_start, 1.0, "encoder jobs for one prompt: the shadow head adds none");
    let explored = metric(&page, r#"pointsman_exploration_decisions_total{result="explored"}"#).unwrap();
    assert!(explored >= f64::from(n) + 3.0, "{explored}");

    // The decision log keeps the propensity and the policy; the export carries the propensity.
    let lines =
        eventually(|| pointsman::logs::read_training_lines(&db, FeedbackScope::Verified).ok().map(|(l, _)| l).filter(|l| !l.is_empty()))
            .await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].propensity, Some(drawn.propensity));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (propensity, policy): (f64, String) =
        conn.query_row("SELECT propensity, policy FROM decisions WHERE request_id = 'rated'", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(propensity, drawn.propensity);
    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(policy["explored"], true);
    assert_eq!(policy["shadow_head"], "shadow-reversed");
    assert!(policy["exploration"].as_str().unwrap().contains("applied_share=1"), "{policy}");
    let base: String = conn.query_row("SELECT policy FROM decisions WHERE request_id = 'base'", [], |r| r.get(0)).unwrap();
    let base: serde_json::Value = serde_json::from_str(&base).unwrap();
    assert_eq!((base["explored"].as_bool(), base["propensity"].as_f64()), (Some(false), Some(1.0)));
}
