//! Sessions through the real server (real encoder and head, gRPC on 127.0.0.1:0, the generated
//! client): a session keeps the model and endpoint of its last turn while that is worth the
//! cached-input saving, moves when its model's breaker opens (failures reported by Feedback) or
//! when another model gains more than the saving, ends after its idle TTL, is recorded in the
//! decision log as a hash, and bad session values are refused naming the field, limit and value.
mod common;
#[path = "common/servers.rs"]
mod servers;

use common::*;
use pointsman::{
    catalog::CatalogModel,
    config::Config,
    pb::{self, router_client::RouterClient},
};
use tonic::transport::Channel;

/// The models of these tests, from the shipped catalog: on equal list prices ($5 per million
/// tokens in and out, cached input free) they rank by predicted quality (and answer length), and
/// staying saves far more than any quality gain is worth: a kept session is the cache's doing.
/// "claude-3-opus-20240229" is dear ($100 in and out, cached input $99): a session on it saves
/// little, and any other model gains much more, so a session there moves.
const MODELS: [&str; 4] = ["gpt-4o-mini-2024-07-18", "claude-3-haiku-20240307", "deepseek-v2.5-0908", "Meta-Llama-3.1-8B-Instruct"];
const DEAR: &str = "claude-3-opus-20240229";

fn config(ttl_seconds: u64) -> Config {
    let mut cfg = shipped_config();
    let mut models: Vec<CatalogModel> = cfg.models.iter().filter(|m| MODELS.contains(&m.id.as_str()) || m.id == DEAR).cloned().collect();
    assert_eq!(models.len(), 5, "the test's models are in the shipped catalog");
    for m in &mut models {
        let dear = m.id == DEAR;
        for e in &mut m.endpoints {
            (e.input_usd_per_mtok, e.output_usd_per_mtok) = if dear { (100.0, 100.0) } else { (5.0, 5.0) };
            e.cached_input_usd_per_mtok = Some(if dear { 99.0 } else { 0.0 });
        }
    }
    cfg.models = models;
    cfg.sessions.ttl_seconds = ttl_seconds;
    cfg
}

/// A long conversation (a policy document as system prompt, then `turns` question and answer
/// pairs, ending on a question), so that its prefix is worth caching.
fn conversation(turns: usize) -> Vec<pb::Message> {
    let msg = |role: &str, content: String| pb::Message { role: role.into(), content };
    let policy: String = (1..=60)
        .map(|i| {
            format!("Clause {i}: a refund request for order category {i} must be answered within {} days, citing the clause. ", i % 7 + 1)
        })
        .collect();
    let mut m = vec![msg("system", format!("You are a support agent. Follow the policy exactly.\n{policy}"))];
    let questions = [
        "A customer wants a refund for a category 12 order placed five days ago. What do I tell them?",
        "And if the same customer writes again after nine days?",
        "Draft the reply for the second case, politely, in three sentences.",
        "Now translate that reply into French.",
    ];
    for (i, q) in questions.iter().enumerate().take(turns) {
        if i > 0 {
            m.push(msg(
                "assistant",
                format!("Here is my answer to question {i}, citing the relevant clause of the policy in full detail."),
            ));
        }
        m.push(msg("user", q.to_string()));
    }
    m
}

fn session(id: &str) -> Option<pb::Session> {
    Some(pb::Session { id: id.into(), ..Default::default() })
}

async fn route(
    client: &mut RouterClient<Channel>,
    messages: Vec<pb::Message>,
    session: Option<pb::Session>,
    allowed: &[&str],
) -> pb::RouteResponse {
    let req = pb::RouteRequest {
        messages,
        session,
        allowed_models: allowed.iter().map(|s| s.to_string()).collect(),
        cost_weight: Some(0.5),
        explain: true,
        ..Default::default()
    };
    client.route(req).await.expect("Route").into_inner()
}

fn first(r: &pb::RouteResponse) -> (String, String) {
    (r.candidates[0].model.clone(), r.candidates[0].provider.clone())
}

fn verdict(r: &pb::RouteResponse) -> (pb::SessionVerdict, String, u32) {
    let s = r.session.as_ref().expect("the response says what the session did");
    (pb::SessionVerdict::try_from(s.verdict).unwrap(), s.reason.clone(), s.turn)
}

/// The eligible models of an explained response, best first, with their utility.
fn ranked(r: &pb::RouteResponse) -> Vec<(String, f64)> {
    let mut v: Vec<(u32, String, f64)> = r
        .explanations
        .iter()
        .filter(|e| e.rank > 0)
        .map(|e| {
            let c = e.candidate.as_ref().unwrap();
            (e.rank, c.model.clone(), c.utility)
        })
        .collect();
    v.sort_by_key(|x| x.0);
    v.into_iter().map(|(_, m, u)| (m, u)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_endpoint_until_its_breaker_opens() {
    let cfg = config(600);
    let db = cfg.decision_log.path.clone();
    let server = TestServer::start_with(cfg).await;
    let mut client = server.client.clone();

    // Turn 2's conversation without a session: the best model, and the runner-up.
    let plain = route(&mut client, conversation(2), None, &[]).await;
    assert!(plain.session.is_none());
    let order = ranked(&plain);
    let (best, runner_up) = (order[0].0.clone(), order[1].0.clone());
    assert!(order[0].1 > order[1].1, "{order:?}");

    // Turn 1 lands on the runner-up (the client allowed only it).
    let t1 = route(&mut client, conversation(1), session("support-42"), &[&runner_up]).await;
    assert_eq!(verdict(&t1), (pb::SessionVerdict::New, "first_turn".into(), 1));
    let endpoint = first(&t1);
    assert_eq!(endpoint.0, runner_up);

    // Turn 2: the best model ranks first by a small margin, the session stays where its cache is.
    let t2 = route(&mut client, conversation(2), session("support-42"), &[]).await;
    assert_eq!(verdict(&t2), (pb::SessionVerdict::Kept, "cache_saving".into(), 2), "{:?}", t2.session);
    assert_eq!(first(&t2), endpoint);
    assert_eq!(t2.attempts[0].model, runner_up);
    assert_eq!(t2.attempts[0].provider, endpoint.1);
    let s = t2.session.as_ref().unwrap();
    assert!(s.utility_gain > 0.0 && s.utility_gain < s.saving_utility, "{s:?}");
    assert!(s.cached_saving_usd > 0.0);
    assert_eq!((s.previous_model.as_str(), s.previous_provider.as_str()), (runner_up.as_str(), endpoint.1.as_str()));
    assert!(s.detail.contains(&best), "{}", s.detail);
    // Another session, or none, still gets the best.
    assert_eq!(first(&route(&mut client, conversation(2), session("someone-else"), &[]).await).0, best);

    // Turn 3 stays too.
    let t3 = route(&mut client, conversation(3), session("support-42"), &[]).await;
    assert_eq!(verdict(&t3).0, pb::SessionVerdict::Kept);
    assert_eq!((first(&t3), verdict(&t3).2), (endpoint.clone(), 3));

    // Five failures reported on the runner-up (each on a request that offered it) open its
    // breaker: the next turn moves, and says why.
    for i in 0..5 {
        let id = format!("offered-{i}");
        let req = pb::RouteRequest {
            prompt: "Hello there".into(),
            request_id: id.clone(),
            allowed_models: vec![runner_up.clone()],
            ..Default::default()
        };
        client.route(req).await.unwrap();
        let report = pb::FeedbackRequest {
            request_id: id,
            model: runner_up.clone(),
            outcome: pb::Outcome::ServerError as i32,
            ..Default::default()
        };
        assert!(client.feedback(report).await.unwrap().into_inner().counted);
    }
    let t4 = route(&mut client, conversation(4), session("support-42"), &[]).await;
    assert_eq!(verdict(&t4), (pb::SessionVerdict::Moved, "unhealthy".into(), 4), "{:?}", t4.session);
    assert_ne!(first(&t4).0, runner_up);
    // The session now lives where it moved.
    let t5 = route(&mut client, conversation(4), session("support-42"), &[]).await;
    assert_eq!(verdict(&t5).0, pb::SessionVerdict::Kept);
    assert_eq!(first(&t5), first(&t4));

    // The decision log holds the session's hash (never the id) and what it did.
    let hash = t2.session.as_ref().unwrap().session_hash.clone();
    assert_eq!(hash.len(), 32);
    let logged = |request_id: String| {
        let conn = pointsman::logs::store::open_for_reading(&db).ok()?;
        conn.query_row("SELECT session_id, session_verdict, session_reason FROM decisions WHERE request_id = ?1", [request_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })
        .ok()
    };
    assert_eq!(eventually(|| logged(t2.request_id.clone())).await, (hash.clone(), "kept".into(), "cache_saving".into()));
    assert_eq!(eventually(|| logged(t4.request_id.clone())).await, (hash, "moved".into(), "unhealthy".into()));

    // The counters say the same.
    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_session_decisions_total{verdict=\"moved\"}"), Some(1.0));
    assert_eq!(metric(&page, "pointsman_session_decisions_total{verdict=\"new\"}"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_gain_moves_a_session_and_escalate_only_holds_it() {
    let server = TestServer::start_with(config(600)).await;
    let mut client = server.client.clone();
    // A session on the dear model: staying saves $1 per million prefix tokens, every other
    // model costs some $95 per million less.
    let t1 = route(&mut client, conversation(1), session("dear"), &[DEAR]).await;
    assert_eq!(first(&t1).0, DEAR);
    let t2 = route(&mut client, conversation(2), session("dear"), &[]).await;
    assert_eq!(verdict(&t2), (pb::SessionVerdict::Moved, "gain".into(), 2), "{:?}", t2.session);
    let s = t2.session.as_ref().unwrap();
    assert!(s.utility_gain > s.saving_utility, "{s:?}");
    assert_ne!(first(&t2).0, DEAR);

    // escalate_only: the same move is made only to a model of higher predicted quality than the
    // dear one; with none, the session stays despite the gain.
    let escalate = Some(pb::Session { id: "up".into(), escalate_only: true, ..Default::default() });
    route(&mut client, conversation(1), escalate.clone(), &[DEAR]).await;
    let t2 = route(&mut client, conversation(2), escalate, &[]).await;
    let quality = |m: &str| t2.explanations.iter().map(|e| e.candidate.as_ref().unwrap()).find(|c| c.model == m).unwrap().predicted_quality;
    let (v, reason, _) = verdict(&t2);
    if v == pb::SessionVerdict::Kept {
        assert_eq!((reason.as_str(), first(&t2).0.as_str()), ("escalate_only", DEAR));
        for (m, _) in ranked(&t2) {
            assert!(quality(&m) <= quality(DEAR), "{m} is predicted better than {DEAR}: escalate_only should have moved there");
        }
    } else {
        assert_eq!((v, reason.as_str()), (pb::SessionVerdict::Moved, "gain"));
        assert!(quality(&first(&t2).0) > quality(DEAR), "escalated to a model predicted no better");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_after_its_idle_ttl() {
    let server = TestServer::start_with(config(1)).await;
    let mut client = server.client.clone();
    let t1 = route(&mut client, conversation(1), session("short"), &[]).await;
    assert_eq!(verdict(&t1).2, 1);
    let t2 = route(&mut client, conversation(2), session("short"), &[]).await;
    assert_eq!(verdict(&t2).2, 2, "{:?}", t2.session);
    assert_ne!(verdict(&t2).0, pb::SessionVerdict::New);
    // Idle for longer than ttl_seconds = 1: the next turn starts a new session.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let t3 = route(&mut client, conversation(3), session("short"), &[]).await;
    assert_eq!(verdict(&t3), (pb::SessionVerdict::New, "first_turn".into(), 1), "{:?}", t3.session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_values_are_refused_naming_the_field_the_limit_and_the_value() {
    let server = TestServer::start_with(config(600)).await;
    let client = server.client.clone();
    let refused = |s: pb::Session| {
        let mut client = client.clone();
        async move {
            let req = pb::RouteRequest { prompt: "Hello".into(), session: Some(s), ..Default::default() };
            client.route(req).await.expect_err("refused")
        }
    };
    let e = refused(pb::Session { id: "x".repeat(257), ..Default::default() }).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("session.id") && e.message().contains("256") && e.message().contains("257"), "{}", e.message());
    let e = refused(pb::Session { id: "a\u{7}b".into(), ..Default::default() }).await;
    assert!(
        e.message().contains("session.id") && e.message().contains("control characters") && e.message().contains("a\\u{7}b"),
        "{}",
        e.message()
    );
    let e = refused(pb::Session { id: "   ".into(), ..Default::default() }).await;
    assert!(e.message().contains("session.id") && e.message().contains("blank"), "{}", e.message());
    let e = refused(pb::Session { user: "u-1".into(), ..Default::default() }).await;
    assert!(e.message().contains("session.conversation") && e.message().contains("\"u-1\""), "{}", e.message());
    let e = refused(pb::Session { user: "u".into(), conversation: "c".repeat(300), ..Default::default() }).await;
    assert!(e.message().contains("session.conversation") && e.message().contains("300 characters"), "{}", e.message());
    let e = refused(pb::Session { escalate_only: true, ..Default::default() }).await;
    assert!(e.message().contains("session.escalate_only"), "{}", e.message());
    // A user and conversation name a session; an empty message names none.
    let ok = |s: pb::Session| {
        let mut client = client.clone();
        async move {
            client.route(pb::RouteRequest { prompt: "Hello".into(), session: Some(s), ..Default::default() }).await.unwrap().into_inner()
        }
    };
    let r = ok(pb::Session { user: "u".into(), conversation: "c".into(), ..Default::default() }).await;
    assert_eq!(verdict(&r).0, pb::SessionVerdict::New);
    assert!(ok(pb::Session::default()).await.session.is_none());
    // Nothing refused was counted as a session decision.
    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_session_decisions_total{verdict=\"new\"}"), Some(1.0));
}

/// Two replicas (in-process servers) sharing one real Redis: a session's turn routed by A is
/// kept by B, and B's next turn by A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_through_redis() {
    let redis = servers::Redis::start();
    let shared = |_: ()| {
        let mut cfg = config(600);
        cfg.health.shared = Some(redis.url());
        cfg.health.shared_key = "sessions-test".into();
        cfg
    };
    let a = TestServer::start_with(shared(())).await;
    let b = TestServer::start_with(shared(())).await;
    let (mut ca, mut cb) = (a.client.clone(), b.client.clone());
    for s in [&a, &b] {
        let mut n = 0;
        while metric(&s.metrics().await, "pointsman_sessions_shared_connected") != Some(1.0) {
            n += 1;
            assert!(n < 500, "a replica did not reach Redis for its sessions");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    let plain = route(&mut ca, conversation(2), None, &[]).await;
    let runner_up = ranked(&plain)[1].0.clone();
    // Turn 1 on A, on the runner-up.
    let t1 = route(&mut ca, conversation(1), session("fleet-1"), &[&runner_up]).await;
    assert_eq!(verdict(&t1).0, pb::SessionVerdict::New);
    // B applies A's turn (read from the stream), then keeps the session there on turn 2.
    until(&b, "applied", 1.0).await;
    let t2 = route(&mut cb, conversation(2), session("fleet-1"), &[]).await;
    assert_eq!(verdict(&t2), (pb::SessionVerdict::Kept, "cache_saving".into(), 2), "{:?}", t2.session);
    assert_eq!(first(&t2), first(&t1));
    // And back on A: turn 3 follows B's turn 2.
    until(&a, "applied", 1.0).await;
    let t3 = route(&mut ca, conversation(3), session("fleet-1"), &[]).await;
    assert_eq!(verdict(&t3).2, 3, "{:?}", t3.session);
    assert_eq!(first(&t3), first(&t1));
    // Each replica published the turns it routed for the session.
    until(&a, "published", 2.0).await;
    until(&b, "published", 1.0).await;
}

/// Waits until `pointsman_sessions_shared_total{result}` reaches `n` on `server` (10 s at most).
async fn until(server: &TestServer, result: &str, n: f64) {
    let series = format!("pointsman_sessions_shared_total{{result=\"{result}\"}}");
    for _ in 0..500 {
        if metric(&server.metrics().await, &series).unwrap_or(0.0) >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{series} did not reach {n}");
}

/// On PostgreSQL (the fleet's decision log) the migration adds the session columns and each
/// decision carries its session's hash, verdict and reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_log_records_sessions() {
    let pg = servers::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(600);
    cfg.decision_log.url = Some(pg.url());
    cfg.decision_log.spill_path = dir.path().join("spill.db");
    let server = TestServer::start_with(cfg).await;
    let mut client = server.client.clone();
    let runner_up = ranked(&route(&mut client, conversation(2), None, &[]).await)[1].0.clone();
    route(&mut client, conversation(1), session("pg-1"), &[&runner_up]).await;
    let t2 = route(&mut client, conversation(2), session("pg-1"), &[]).await;
    let hash = t2.session.as_ref().unwrap().session_hash.clone();
    let count = |verdict: &str, reason: &str| {
        let sql = format!(
            "SELECT count(*) FROM decisions WHERE session_id = '{hash}' AND session_verdict = '{verdict}' AND session_reason = '{reason}'"
        );
        pg.query_i64(&sql)
    };
    let mut n = 0;
    while count("kept", "cache_saving") != 1 {
        n += 1;
        assert!(n < 500, "the kept turn never reached PostgreSQL");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(count("new", "first_turn"), 1);
    assert_eq!(pg.query_i64("SELECT count(*) FROM decisions WHERE session_id IS NULL"), 1, "the plain route");
    assert_eq!(pg.query_i64("SELECT count(*) FROM pointsman_migrations WHERE name = 'sessions'"), 1);
}
