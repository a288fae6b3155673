//! No open door, against the real server: made-up or repeated feedback cannot take a model out
//! of routing nor become a training label,
//! the operator surface (Admin, /metrics) lives on its own listener, bearer tokens gate each
//! role, TLS and mutual TLS on the data port (certificates made at test time with rcgen), and
//! reflection in both versions.
mod common;

use common::*;
use pointsman::pb::{self, admin_client::AdminClient, router_client::RouterClient, HealthState, Outcome};
use tokio_stream::StreamExt;
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code, Request, Status,
};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

/// The services a reflection client of version `$v` (`v1` or `v1alpha`) lists on `$channel`.
macro_rules! list_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
        let mut stream =
            ServerReflectionClient::new($channel).server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
        let resp = stream.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("unexpected {resp:?}") };
        list.service.into_iter().map(|s| s.name).collect::<Vec<String>>()
    }};
}

fn route_req(id: &str) -> pb::RouteRequest {
    pb::RouteRequest { prompt: MATH_PROMPT.into(), request_id: id.into(), profile: "quality".into(), ..Default::default() }
}

fn failure(id: &str, model: &str) -> pb::FeedbackRequest {
    pb::FeedbackRequest { request_id: id.into(), model: model.into(), outcome: Outcome::ServerError as i32, ..Default::default() }
}

#[tokio::test]
async fn feedback_for_requests_never_decided_leaves_health_alone_unless_configured() {
    let cfg = shipped_config();
    let db = cfg.decision_log.path.clone();
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    let r = c.route(route_req("real")).await.unwrap().into_inner();
    let primary = r.candidates[0].model.clone();
    let listed = c.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    let not_offered = listed.models.iter().map(|m| m.model.clone()).find(|m| r.candidates.iter().all(|x| &x.model != m)).unwrap();

    // Ten server errors on made-up ids (twice the streak that opens a circuit), and ten on the
    // real id for a model this replica did not offer for it.
    for i in 0..10 {
        let ack = c.feedback(failure(&format!("forged-{i}"), &primary)).await.unwrap().into_inner();
        assert!(!ack.known_request);
        let h = ack.health.expect("catalog model");
        assert_eq!((h.state, h.window_requests, h.consecutive_failures), (HealthState::Healthy as i32, 0, 0), "{h:?}");
        let ack = c.feedback(failure("real", &not_offered)).await.unwrap().into_inner();
        assert!(ack.known_request);
        assert_eq!(ack.health.unwrap().state, HealthState::Healthy as i32);
    }
    let again = c.route(route_req("real-2")).await.unwrap().into_inner();
    assert_eq!(again.candidates[0].model, primary, "forged reports did not move routing");
    // Still logged and counted.
    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_feedback_total{outcome=\"server_error\"}"), Some(20.0));
    assert_eq!(metric(&page, "pointsman_feedback_unverified_total"), Some(20.0));
    eventually(|| Some(()).filter(|_| pointsman::logs::store::counts(&db).unwrap_or((0, 0)).1 == 20)).await;
    // A real report on the offered model does count.
    let h = c.feedback(failure("real", &primary)).await.unwrap().into_inner().health.unwrap();
    assert_eq!((h.window_requests, h.consecutive_failures), (1, 1));
    server.shutdown().await;

    // With `health.count_unknown_requests`, the same made-up reports open the circuit.
    let mut cfg = shipped_config();
    cfg.health.count_unknown_requests = true;
    let streak = cfg.health.open_after_consecutive_failures;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    let mut last = None;
    for i in 0..streak {
        last = c.feedback(failure(&format!("forged-{i}"), &primary)).await.unwrap().into_inner().health;
    }
    assert_eq!(last.unwrap().state, HealthState::CoolingDown as i32);
    let r = c.route(route_req("after")).await.unwrap().into_inner();
    assert!(r.candidates.iter().all(|x| x.model != primary), "the model is out of routing");
    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_feedback_unverified_total"), Some(0.0));
    server.shutdown().await;
}

#[tokio::test]
async fn one_report_per_offered_model_moves_health_and_only_verified_reports_are_training_labels() {
    let cfg = shipped_config();
    let db = cfg.decision_log.path.clone();
    let streak = cfg.health.open_after_consecutive_failures;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    let ranked = c.route(route_req("probe")).await.unwrap().into_inner().candidates;
    let victim = ranked[0].model.clone();
    let listed = c.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner().models;
    let other = listed.iter().map(|m| m.model.clone()).find(|m| *m != victim).unwrap();
    // The attack of the review's H2: one Route on the victim alone, then the breaker's streak of
    // failures on that request id.
    let only = |id: &str| pb::RouteRequest { allowed_models: vec![victim.clone()], max_fallbacks: Some(0), ..route_req(id) };
    let r = c.route(only("once")).await.unwrap().into_inner();
    assert_eq!(r.candidates.iter().map(|x| x.model.as_str()).collect::<Vec<_>>(), [victim.as_str()]);
    // Each report carries a label, so each would be a training line if it were taken.
    let labelled = |model: &str, outcome: Outcome, quality: f64| pb::FeedbackRequest {
        outcome: outcome as i32,
        quality: Some(quality),
        output_tokens: Some(40),
        ..failure("once", model)
    };
    for i in 0..streak {
        let ack = c.feedback(labelled(&victim, Outcome::ServerError, 0.0)).await.unwrap().into_inner();
        let h = ack.health.unwrap();
        assert!(ack.known_request);
        assert_eq!((ack.counted, ack.verified), (i == 0, i == 0), "report {i}");
        assert_eq!((h.state, h.window_requests, h.consecutive_failures), (HealthState::Healthy as i32, 1, 1), "report {i}: {h:?}");
    }
    let h = c.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner().models.into_iter().find(|m| m.model == victim).unwrap();
    let h = h.health.unwrap();
    assert_eq!((h.state, h.consecutive_failures), (HealthState::Healthy as i32, 1), "{h:?}");
    assert_eq!(c.route(only("after")).await.unwrap().into_inner().candidates[0].model, victim, "the breaker stays closed");
    // A rated report on a model that was not offered for that request.
    let ack = c.feedback(labelled(&other, Outcome::Success, 1.0)).await.unwrap().into_inner();
    assert!(ack.known_request && !ack.counted && !ack.verified, "{ack:?}");
    let page = server.metrics().await;
    assert_eq!(metric(&page, "pointsman_feedback_total{outcome=\"server_error\"}"), Some(f64::from(streak)));
    assert_eq!(metric(&page, "pointsman_feedback_duplicates_total"), Some(f64::from(streak - 1)));
    assert_eq!(metric(&page, "pointsman_feedback_unverified_total"), Some(1.0));

    // The log holds every report, with what was verified and offered.
    let total = i64::from(streak) + 1;
    eventually(|| Some(()).filter(|_| pointsman::logs::store::counts(&db).unwrap_or((0, 0)).1 == total)).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, bool, bool)> = conn
        .prepare("SELECT model, verified, offered FROM feedback ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut want = vec![(victim.clone(), true, true)];
    want.extend((1..streak).map(|_| (victim.clone(), false, true)));
    want.push((other.clone(), false, false));
    assert_eq!(rows, want);
    // Training takes the verified report only, through the trainer's own reader; every report
    // only when asked for.
    // The binary registers the server's decision-log reader with the trainer at start; so does this test.
    pointsman::ServerDecisionLogs::register();
    let logs = pointsman::learning::read_logs(std::slice::from_ref(&db), true).unwrap();
    assert_eq!(logs.observations.len(), 1);
    assert_eq!(logs.models, std::slice::from_ref(&victim));
    let (all, _) = pointsman::logs::read_training_lines(&db, pointsman::logs::store::FeedbackScope::All).unwrap();
    assert_eq!(all.len(), streak as usize + 1);
    assert!(all.iter().any(|l| l.model == other && l.score == 1.0));
    let (_, skips) = pointsman::logs::read_training_lines(&db, pointsman::logs::store::FeedbackScope::Verified).unwrap();
    assert_eq!((skips.unverified, skips.not_offered), (streak as usize - 1, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn admin_and_metrics_are_only_on_the_admin_listener_and_reflection_speaks_both_versions() {
    let server = TestServer::start().await;
    assert_ne!(server.addr, server.admin_addr);

    // The data port: no Admin, no /metrics.
    let e = AdminClient::new(server.channel.clone()).reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("admin.listen"), "{}", e.message());
    let (status, body) = http_request(server.addr, "/metrics", &[]).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("pointsman_"), "{body}");

    // The admin listener: /metrics (Admin itself is exercised by tests/reload.rs), no Router.
    let page = server.metrics().await;
    assert!(metric(&page, "pointsman_route_requests_total{result=\"ok\"}").is_some(), "{page}");
    let e = RouterClient::new(server.admin_channel.clone()).route(route_req("x")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    let (status, _) = http_request(server.admin_addr, "/nothing-here", &[]).await;
    assert_eq!(status, 404);

    // Reflection v1 and v1alpha (grpcio-reflection, grpcurl's fallback) on the data port list
    // the Router and health, not Admin; on the admin listener, Admin.
    for names in [list_services!(v1, server.channel.clone()), list_services!(v1alpha, server.channel.clone())] {
        assert!(names.iter().any(|n| n == "pointsman.v1.Router"), "{names:?}");
        assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");
        assert!(!names.iter().any(|n| n == "pointsman.v1.Admin"), "{names:?}");
    }
    let names = list_services!(v1alpha, server.admin_channel.clone());
    assert!(names.iter().any(|n| n == "pointsman.v1.Admin") && !names.iter().any(|n| n == "pointsman.v1.Router"), "{names:?}");
    server.shutdown().await;
}

const GATEWAY_ENV: &str = "POINTSMAN_TEST_SECURITY_GATEWAY_TOKEN";
const GATEWAY: &str = "gw-5b8f0c1d9e2a4f6b8c0d";
const READER: &str = "reader-0a1b2c3d4e5f6a7b";
const OPS: &str = "ops-9f8e7d6c5b4a39281706";

/// Adds `authorization: Bearer <token>` to every call (nothing with `None`).
fn bearer(token: Option<&str>) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let value = token.map(|t| MetadataValue::try_from(format!("Bearer {t}")).unwrap());
    move |mut req: Request<()>| {
        if let Some(v) = &value {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

fn with_token(
    channel: Channel,
    token: Option<&str>,
) -> RouterClient<tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>> {
    RouterClient::with_interceptor(channel, bearer(token))
}

#[tokio::test]
async fn tokens_gate_each_role_and_health_stays_open() {
    // Set before the config is validated, by the only test that names this variable.
    std::env::set_var(GATEWAY_ENV, GATEWAY);
    let mut cfg = shipped_config();
    let toml = format!(
        r#"
        enabled = true
        [[tokens]]
        name = "gateway"
        token_env = "{GATEWAY_ENV}"
        roles = ["route", "feedback"]
        [[tokens]]
        name = "reader"
        token = "{READER}"
        roles = ["route"]
        [[tokens]]
        name = "ops"
        token = "{OPS}"
        roles = ["admin"]
        "#
    );
    cfg.auth = toml::from_str(&toml).unwrap();
    cfg.validate().unwrap();
    // The helper waits on health, which needs no token.
    let server = TestServer::start_with(cfg).await;

    let (anon, gateway, reader, ops) = (None, Some(GATEWAY), Some(READER), Some(OPS));
    for token in [anon, Some("not-a-configured-token-at-all")] {
        let e = with_token(server.channel.clone(), token).route(route_req("a")).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        assert!(!e.message().contains("not-a-configured"), "the token is never echoed: {}", e.message());
        let e = with_token(server.channel.clone(), token).list_models(pb::ListModelsRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }
    let e = with_token(server.channel.clone(), anon).route(route_req("a")).await.unwrap_err();
    assert!(e.message().contains("authorization: Bearer") && e.message().contains("`route`"), "{}", e.message());

    let mut gw = with_token(server.channel.clone(), gateway);
    let r = gw.route(route_req("ok-1")).await.unwrap().into_inner();
    gw.list_models(pb::ListModelsRequest {}).await.unwrap();
    let fb = pb::FeedbackRequest { outcome: Outcome::Success as i32, ..failure("ok-1", &r.candidates[0].model) };
    assert!(gw.feedback(fb.clone()).await.unwrap().into_inner().known_request);

    let mut rd = with_token(server.channel.clone(), reader);
    rd.route(route_req("ok-2")).await.unwrap();
    let e = rd.feedback(fb.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("`feedback` role") && e.message().contains("reader") && !e.message().contains(READER), "{}", e.message());
    let e = with_token(server.channel.clone(), ops).route(route_req("x")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Admin needs the admin role (a real reload with it).
    let admin_client = |token: Option<&str>| AdminClient::with_interceptor(server.admin_channel.clone(), bearer(token));
    assert_eq!(admin_client(anon).reload(pb::ReloadRequest {}).await.unwrap_err().code(), Code::Unauthenticated);
    let e = admin_client(gateway).reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("`admin` role") && e.message().contains("route, feedback"), "{}", e.message());
    assert_eq!(admin_client(ops).reload(pb::ReloadRequest {}).await.unwrap().into_inner().models, 94);

    // /metrics: 401 without a token, 403 without the role, 200 with it.
    let (status, body) = http_request(server.admin_addr, "/metrics", &[]).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_request(server.admin_addr, "/metrics", &[("authorization", &format!("Bearer {GATEWAY}"))]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("`admin` role") && !body.contains(GATEWAY), "{body}");
    let (status, body) = http_request(server.admin_addr, "/metrics", &[("authorization", &format!("Bearer {OPS}"))]).await;
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "pointsman_route_requests_total{result=\"ok\"}"), Some(2.0));
    // What a listener does not serve is still UNIMPLEMENTED / 404, token or not.
    let e = AdminClient::new(server.channel.clone()).reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert_eq!(http_request(server.addr, "/metrics", &[]).await.0, 404);

    // Health and reflection stay open.
    let mut health = HealthClient::new(server.channel.clone());
    let h = health.check(HealthCheckRequest { service: "pointsman.v1.Router".into() }).await.unwrap().into_inner();
    assert_eq!(h.status, ServingStatus::Serving as i32);
    assert!(list_services!(v1, server.channel.clone()).iter().any(|n| n == "pointsman.v1.Router"));
    server.shutdown().await;
}

fn client_tls(ca: &str, identity: Option<&(String, String)>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    match identity {
        Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
        None => tls,
    }
}

/// A Route over `channel`, or the error of connecting or calling.
async fn try_route(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<pb::RouteResponse, String> {
    let channel = connect(addr, tls).await.map_err(|e| format!("connect: {e:?}"))?;
    RouterClient::new(channel).route(route_req("tls")).await.map(|r| r.into_inner()).map_err(|e| format!("{:?}: {}", e.code(), e.message()))
}

#[tokio::test]
async fn tls_and_mutual_tls_on_the_data_port() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki("pointsman");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key, ca) = (write("server.pem", &pki.server.0), write("server.key", &pki.server.1), write("ca.pem", &pki.ca));

    // TLS: a TLS client routes; a plaintext client gets nothing.
    let mut cfg = shipped_config();
    cfg.tls.cert = Some(cert.clone());
    cfg.tls.key = Some(key.clone());
    cfg.validate().unwrap();
    let server = TestServer::start_tls(cfg, Some(client_tls(&pki.ca, None))).await;
    let r = server.client.clone().route(route_req("tls")).await.unwrap().into_inner();
    assert!(!r.candidates.is_empty());
    let plain = try_route(server.addr, None).await;
    assert!(plain.is_err(), "a plaintext client must not be served: {plain:?}");
    // The admin listener stays plaintext unless tls.admin.
    assert!(server.metrics().await.contains("pointsman_route_requests_total"));
    server.shutdown().await;

    // Mutual TLS (and TLS on the admin listener): only clients with a certificate from the CA.
    let mut cfg = shipped_config();
    cfg.tls = pointsman::transport::tls::TlsConfig { cert: Some(cert), key: Some(key), client_ca: Some(ca), admin: true };
    let server = TestServer::start_tls(cfg, Some(client_tls(&pki.ca, Some(&pki.client)))).await;
    assert!(try_route(server.addr, Some(client_tls(&pki.ca, Some(&pki.client)))).await.is_ok());
    let anonymous = try_route(server.addr, Some(client_tls(&pki.ca, None))).await;
    assert!(anonymous.is_err(), "a client without a certificate is refused: {anonymous:?}");
    let stranger = make_pki("stranger");
    let foreign = try_route(server.addr, Some(client_tls(&pki.ca, Some(&stranger.client)))).await;
    assert!(foreign.is_err(), "a certificate from another CA is refused: {foreign:?}");
    assert!(try_route(server.addr, None).await.is_err());
    // The admin listener speaks TLS too: reflection over mTLS works, plaintext HTTP gets no page.
    let names = list_services!(v1, server.admin_channel.clone());
    assert!(names.iter().any(|n| n == "pointsman.v1.Admin"), "{names:?}");
    let (status, _) = http_request(server.admin_addr, "/metrics", &[]).await;
    assert_ne!(status, 200);
    server.shutdown().await;
}

#[test]
fn listener_and_tls_settings_are_validated_naming_the_key() {
    let err = |f: &dyn Fn(&mut pointsman::config::Config)| {
        let mut cfg = shipped_config();
        f(&mut cfg);
        cfg.validate().unwrap_err().to_string()
    };
    let e = err(&|c| c.admin.listen = c.server.listen.clone());
    assert!(e.contains("admin.listen") && e.contains("server.listen"), "{e}");
    let e = err(&|c| c.admin.listen = "everywhere".into());
    assert!(e.contains("admin.listen") && e.contains("everywhere"), "{e}");
    let e = err(&|c| c.tls.cert = Some("/nonexistent/cert.pem".into()));
    assert!(e.contains("tls.key"), "{e}");
    let e = err(&|c| {
        c.tls.cert = Some("/nonexistent/cert.pem".into());
        c.tls.key = Some("/nonexistent/key.pem".into());
    });
    assert!(e.contains("tls.cert") && e.contains("/nonexistent/cert.pem"), "{e}");
    let e = err(&|c| c.tls.client_ca = Some("/x/ca.pem".into()));
    assert!(e.contains("tls.client_ca"), "{e}");
    let not_pem = repo().join("Cargo.toml");
    let e = err(&|c| {
        c.tls.cert = Some(not_pem.clone());
        c.tls.key = Some(not_pem.clone());
    });
    assert!(e.contains("tls.cert") && e.contains("PEM"), "{e}");
    let e = err(&|c| c.auth.enabled = true);
    assert!(e.contains("auth.tokens"), "{e}");
}
