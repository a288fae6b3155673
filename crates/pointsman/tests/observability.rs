//! What an operator sees of the real server: log lines that carry the request id (from the
//! gRPC handler down to the encoder worker threads and the health tracker) and the Prometheus
//! page (counters, the Route latency histogram, the encoder queue gauge, live health).
mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
};

use common::*;
use pointsman::pb::{self, Outcome};

/// Every log line of this test binary's servers, as the `fmt` subscriber writes them.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Installs (once per test binary) a subscriber like the binary's, at debug level, with thread names.
fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_thread_names(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("pointsman=debug"))
            .init();
        logs
    })
}

/// The captured lines that contain every one of `needles`.
fn lines_with(needles: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().unwrap()).to_string();
    text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(String::from).collect()
}

#[tokio::test]
async fn core_log_lines_carry_the_request_id() {
    logs();
    let server = TestServer::start().await;
    let mut c = server.client.clone();

    // A cache miss: the encoder worker thread logs the encoding inside the request's span.
    let prompt = "Explain why the sky at dusk turns orange, for a curious ten-year-old (observability test).";
    let r = pb::RouteRequest { prompt: prompt.into(), request_id: "obs-route-7f3a".into(), ..Default::default() };
    let primary = c.route(r).await.unwrap().into_inner().candidates[0].model.clone();
    let encoded = eventually(|| Some(lines_with(&["encoded", "request_id=obs-route-7f3a"])).filter(|l| !l.is_empty())).await;
    assert!(
        encoded.iter().all(|l| l.contains("pointsman-encoder-") && l.contains("route{") && l.contains("pointsman_core::engine")),
        "logged on an encoder thread by the engine, inside the route span: {encoded:?}"
    );
    assert_eq!(lines_with(&["routed", "request_id=obs-route-7f3a"]).len(), 1);

    // Feedback: five timeouts in a row open the circuit; the health tracker's warning carries
    // the id of the report that opened it. Each report is on a request this server routed (it
    // only lets reports on its own decisions move a breaker).
    for i in 1..=5 {
        let r = pb::RouteRequest { prompt: prompt.into(), request_id: format!("obs-feedback-{i}"), ..Default::default() };
        assert!(c.route(r).await.unwrap().into_inner().candidates.iter().any(|m| m.model == primary));
        let f = pb::FeedbackRequest {
            request_id: format!("obs-feedback-{i}"),
            model: primary.clone(),
            outcome: Outcome::Timeout as i32,
            ..Default::default()
        };
        c.feedback(f).await.unwrap();
    }
    let opened = lines_with(&["circuit opened", &format!("model={primary}")]);
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert!(
        opened[0].contains("feedback{request_id=obs-feedback-5") && opened[0].contains("pointsman_server::health"),
        "logged by the health tracker inside the feedback span: {}",
        opened[0]
    );
    // A line of another request never carries this one's id.
    assert!(lines_with(&["obs-feedback-5", "obs-route-7f3a"]).is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_page_has_counters_route_histogram_queue_depth_and_health() {
    // Only the first report per request id and model counts; with this, reports on ids the
    // server did not route count too (the three attempts below are on three ids).
    let mut cfg = shipped_config();
    cfg.health.count_unknown_requests = true;
    let server = TestServer::start_with(cfg).await;
    let mut c = server.client.clone();
    let route = |p: &str| pb::RouteRequest { prompt: p.into(), ..Default::default() };
    let first = pb::RouteRequest { request_id: "m-0".into(), ..route(MATH_PROMPT) };
    let primary = c.route(first).await.unwrap().into_inner().candidates[0].model.clone();
    c.route(route(MATH_PROMPT)).await.unwrap(); // cache hit
    c.route(route(CHAT_PROMPT)).await.unwrap();
    let bad = pb::RouteRequest { profile: "no-such-profile".into(), ..route(CHAT_PROMPT) };
    assert_eq!(c.route(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    // Three attempts of the primary reported (it answered twice, timed out once).
    for (i, (o, l)) in [(Outcome::Success, Some(400.0)), (Outcome::Success, Some(800.0)), (Outcome::Timeout, None)].into_iter().enumerate()
    {
        let f = pb::FeedbackRequest {
            request_id: format!("m-0-{i}"),
            model: primary.clone(),
            outcome: o as i32,
            latency_ms: l,
            ..Default::default()
        };
        c.feedback(f).await.unwrap();
    }

    let page = server.metrics().await;
    let h = "pointsman_route_duration_seconds";
    assert_eq!(metric(&page, &format!("{h}_count{{result=\"ok\",cache_hit=\"false\"}}")), Some(2.0), "{page}");
    assert_eq!(metric(&page, &format!("{h}_count{{result=\"ok\",cache_hit=\"true\"}}")), Some(1.0));
    assert_eq!(metric(&page, &format!("{h}_count{{result=\"invalid_argument\",cache_hit=\"false\"}}")), Some(1.0));
    // Buckets from 0.1 ms to 1 s, cumulative; a cache miss takes more than 0.1 ms and less than 1 s.
    let bucket = |le: &str| metric(&page, &format!("{h}_bucket{{result=\"ok\",cache_hit=\"false\",le=\"{le}\"}}"));
    assert_eq!(bucket("0.0001"), Some(0.0));
    assert_eq!(bucket("1"), Some(2.0));
    assert_eq!(bucket("+Inf"), Some(2.0));
    assert!(metric(&page, &format!("{h}_sum{{result=\"ok\",cache_hit=\"false\"}}")).unwrap() > 0.0);
    assert!(page.contains(&format!("# TYPE {h} histogram")));

    assert_eq!(metric(&page, "pointsman_route_requests_total{result=\"ok\"}"), Some(3.0));
    assert_eq!(metric(&page, "pointsman_route_requests_total{result=\"invalid_argument\"}"), Some(1.0));
    assert_eq!(metric(&page, "pointsman_route_cache_hits_total"), Some(1.0));
    assert_eq!(metric(&page, "pointsman_feedback_total{outcome=\"success\"}"), Some(2.0));
    assert_eq!(metric(&page, "pointsman_feedback_total{outcome=\"refused\"}"), Some(0.0));
    assert_eq!(metric(&page, "pointsman_reloads_total{result=\"rejected\"}"), Some(0.0));
    assert_eq!(metric(&page, "pointsman_encoder_queue_depth"), Some(0.0));
    assert!(page.contains("# TYPE pointsman_encoder_queue_depth gauge"));
    assert!(page.contains("# TYPE pointsman_route_requests_total counter"));
    assert!(page.contains("# HELP pointsman_route_requests_total Route calls by result"));
    assert_eq!(metric(&page, &format!("pointsman_model_health_state{{model=\"{primary}\",state=\"healthy\"}}")), Some(1.0));
    let rate = metric(&page, &format!("pointsman_model_error_rate{{model=\"{primary}\"}}")).unwrap();
    assert!((rate - 1.0 / 3.0).abs() < 1e-9, "{rate}");
    // The median of 400 and 800 ms (the upper one of two), in seconds; models without reports have none.
    assert_eq!(metric(&page, &format!("pointsman_model_p50_latency_seconds{{model=\"{primary}\"}}")), Some(0.8));
    assert_eq!(page.matches("pointsman_model_p50_latency_seconds{").count(), 1);
    assert_eq!(page.matches("pointsman_model_health_state{").count(), page.matches("pointsman_model_error_rate{").count());
    assert!(page.lines().any(|l| l.starts_with("pointsman_info{") && l.ends_with(" 1")));
    assert!(metric(&page, "pointsman_decision_log_queued").is_some());
    server.shutdown().await;
}
