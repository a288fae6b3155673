//! The service surface besides `Route`: health, reflection, ListModels, and graceful shutdown.
mod common;

use common::TestServer;
use pointsman::pb::ListModelsRequest;
use tokio_stream::StreamExt;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

#[tokio::test]
async fn health_reflection_and_catalog() {
    let mut s = TestServer::start().await;
    for service in ["", "pointsman.v1.Router"] {
        let r = s.health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32);
    }

    let mut refl = ServerReflectionClient::new(s.channel.clone());
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("unexpected {resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"pointsman.v1.Router".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    let catalog = s.client.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    let prices = std::fs::read_to_string(common::shared_data().join("prices.csv")).expect("data/prices.csv");
    assert!(catalog.models.len() >= 20, "catalog has {} models", catalog.models.len());
    assert!(catalog.models.iter().all(|m| m.covered_by_head), "shipped catalog lists only covered models");
    for m in &catalog.models {
        assert!(m.context_tokens > 0 && m.input_usd_per_mtok > 0.0, "{m:?}");
        // No listed model sells output tokens cheaper than input tokens.
        assert!(m.output_usd_per_mtok >= m.input_usd_per_mtok, "{m:?}");
        // Every catalog price is the one in the price list the catalog was generated from.
        let line = prices.lines().find(|l| l.split(',').next() == Some(m.model.as_str())).expect("model in prices.csv");
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[1], m.provider);
        assert_eq!(f[2].parse::<f64>().unwrap(), m.input_usd_per_mtok);
        assert_eq!(f[3].parse::<f64>().unwrap(), m.output_usd_per_mtok);
        assert_eq!(f[4].trim().parse::<u32>().unwrap(), m.context_tokens);
    }
    assert_eq!(catalog.default_profile, "balanced");
    assert!(catalog.encoder.starts_with("all-MiniLM-L6-v2/"));
    s.shutdown().await;
}

#[tokio::test]
async fn a_missing_head_fails_to_start_with_a_clear_error() {
    let mut config = common::shipped_config();
    config.head.dir = std::env::temp_dir().join("pointsman-no-such-head");
    let data = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listeners = pointsman::transport::Listeners { data, admin, ext_proc: None };
    let err = pointsman::transport::serve(config, listeners, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("pointsman-no-such-head"), "{err}");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    // Long prompts and no cache, so that 16 requests keep the two encoder sessions busy for
    // well over the moment shutdown begins.
    let mut config = common::shipped_config();
    config.cache.capacity = 0;
    let s = TestServer::start_with(config).await;
    let long = "Explain, step by step and with examples, how the borrow checker reasons about lifetimes in nested closures. ".repeat(12);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mut c = s.client.clone();
        let prompt = format!("Question {i}. {long}");
        tasks.spawn(async move {
            let r = c.route(pointsman::pb::RouteRequest { prompt, ..Default::default() }).await;
            (r, std::time::Instant::now())
        });
    }
    // Let every request reach the server, then begin the shutdown.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut late_client = s.client.clone();
    let began = std::time::Instant::now();
    s.shutdown().await;
    let mut after_shutdown_began = 0;
    while let Some(r) = tasks.join_next().await {
        let (r, done) = r.unwrap();
        // Every request the server had accepted is answered, not cut off.
        let resp = r.expect("an in-flight request finishes during shutdown").into_inner();
        assert!(!resp.candidates.is_empty());
        after_shutdown_began += usize::from(done > began);
    }
    assert!(after_shutdown_began > 0, "no request was still in flight when shutdown began; the test proves nothing");
    // Once the server is gone, a new request is refused.
    let refused = late_client.route(pointsman::pb::RouteRequest { prompt: "too late".into(), ..Default::default() }).await;
    let code = refused.expect_err("the server has stopped").code();
    assert!(matches!(code, tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown), "{code:?}");
}
