//! Live endpoint measurements over gRPC: Feedback reports that name the provider, with their
//! latency, time to first token and generation time given explicitly, and what Route, ListModels
//! and /metrics make of them: the default order, OpenRouter's `sort`, `order`, `only` and a p90
//! latency preference, the `max_latency` hard limit (measured endpoints over it left out and
//! named, unmeasured ones passed and said so), a tool-calling request kept off an endpoint
//! without tools, the predicted latency from measurements, and one provider's outage moving the
//! model to its next endpoint.
mod common;

use common::*;
use pointsman::pb::{self, Outcome};

const LLAMA: &str = "Meta-Llama-3.1-8B-Instruct";
const QWEN: &str = "Qwen2.5-7B-Instruct";

/// The shipped config with every report counted (no Route needed before each), three-report
/// measurements, and LLAMA's three endpoints at one price (near ties): together, deepinfra
/// (declares tools) and bedrock (declares none).
fn config() -> pointsman::config::Config {
    let mut c = shipped_config();
    c.health.count_unknown_requests = true;
    c.health.min_measured_requests = 3;
    c.health.open_after_consecutive_failures = 3;
    c.health.cool_down_seconds = 600.0;
    c.health.max_cool_down_seconds = 600.0;
    c.routing.out_of_domain_p = 0.0;
    let llama = c.models.iter_mut().find(|m| m.id == LLAMA).expect("the shipped catalog has the model");
    assert_eq!(llama.endpoints.iter().map(|e| e.provider.as_str()).collect::<Vec<_>>(), ["together", "deepinfra", "bedrock"]);
    for e in &mut llama.endpoints {
        (e.input_usd_per_mtok, e.output_usd_per_mtok) = (0.2, 0.2);
    }
    llama.endpoints[1].capabilities.tools = Some(true);
    llama.endpoints[2].capabilities.tools = Some(false);
    c
}

/// One report on LLAMA at `provider`.
fn report(n: &mut u32, provider: &str, outcome: Outcome, latency: f64, ttft: f64, generation: f64) -> pb::FeedbackRequest {
    *n += 1;
    pb::FeedbackRequest {
        request_id: format!("measure-{n}"),
        model: LLAMA.into(),
        outcome: outcome as i32,
        latency_ms: Some(latency),
        output_tokens: Some(100),
        provider: provider.into(),
        ttft_ms: Some(ttft),
        generation_ms: Some(generation),
        ..Default::default()
    }
}

fn route(provider: Option<pb::ProviderPreferences>) -> pb::RouteRequest {
    pb::RouteRequest { prompt: CHAT_PROMPT.into(), allowed_models: vec![LLAMA.into()], provider, explain: true, ..Default::default() }
}

/// LLAMA's endpoints in the response's attempt order.
fn order(r: &pb::RouteResponse) -> Vec<&str> {
    r.attempts.iter().filter(|a| a.model == LLAMA).map(|a| a.provider.as_str()).collect()
}

fn prefs(f: impl FnOnce(&mut pb::ProviderPreferences)) -> Option<pb::ProviderPreferences> {
    let mut p = pb::ProviderPreferences::default();
    f(&mut p);
    Some(p)
}

#[tokio::test]
async fn measured_endpoints_order_filter_and_explain_routes() {
    let server = TestServer::start_with(config()).await;
    let mut c = server.client.clone();
    // Unmeasured: every endpoint on its prior, and a limit on latency passes them all, saying so.
    let limited = |ms: f64, percentile: &str| pb::RouteRequest {
        max_latency: Some(pb::LatencyLimit { ms, percentile: percentile.into() }),
        ..route(None)
    };
    let r = c.route(limited(1500.0, "p90")).await.unwrap().into_inner();
    assert_eq!(order(&r).len(), 3);
    assert!(!r.candidates[0].latency_measured);
    let llama = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == LLAMA).unwrap();
    assert!(llama.endpoints.iter().all(|e| e.detail.contains("not measured yet")), "{:?}", llama.endpoints);

    // Reports: together answers in 300 ms end to end, its first token in 100 ms but 3 s twice in
    // ten (p90); deepinfra 3.1 to 4.9 s, first token 3 s, the fastest decoder (100 tokens in 100 ms);
    // bedrock 1 s, first token 150 ms, 100 tokens in 300 ms.
    let mut n = 0;
    for i in 0..10 {
        let spike = if i % 5 == 4 { 3000.0 } else { 100.0 };
        for req in [
            report(&mut n, "together", Outcome::Success, 300.0, spike, 200.0),
            report(&mut n, "deepinfra", Outcome::Success, 3100.0 + f64::from(i) * 200.0, 3000.0, 100.0),
            report(&mut n, "bedrock", Outcome::Success, 1000.0, 150.0, 300.0),
        ] {
            let ack = c.feedback(req).await.unwrap().into_inner();
            assert!(ack.counted && ack.endpoint.is_some(), "{ack:?}");
            let h = ack.health.unwrap();
            assert_eq!(h.window_requests, 0, "a report naming the endpoint moves its breaker, not the model's");
        }
    }

    // Default: near ties by measured speed (predicted latency), fastest first.
    let r = c.route(route(None)).await.unwrap().into_inner();
    assert_eq!(order(&r), ["together", "bedrock", "deepinfra"]);
    let first = &r.candidates[0];
    assert!(first.latency_measured && first.endpoints[0].latency_measured);
    // The predicted latency: together's measured first-token median plus the predicted output at
    // its measured throughput (500 tokens/s), not the catalog's prior.
    let expected = 100.0 + f64::from(first.predicted_output_tokens) / 500.0 * 1000.0;
    assert!((first.predicted_latency_ms - expected).abs() <= expected * 0.03, "{} vs {expected}", first.predicted_latency_ms);
    // The explanation carries each endpoint's measurements.
    let llama = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == LLAMA).unwrap();
    let together = llama.endpoints[0].endpoint.as_ref().unwrap().measured.unwrap();
    let p = together.ttft_ms.unwrap();
    assert!((p.p50.unwrap() - 100.0).abs() < 3.0 && (p.p90.unwrap() - 3000.0).abs() < 90.0, "{p:?}");

    // OpenRouter's sort: by price (one price: catalog order, no speed tie-break), by throughput
    // (highest first), by latency (lowest time to first token first).
    let sort = |by: &str| prefs(|p| p.sort = by.into());
    assert_eq!(order(&c.route(route(sort("price"))).await.unwrap().into_inner()), ["together", "deepinfra", "bedrock"]);
    assert_eq!(order(&c.route(route(sort("throughput"))).await.unwrap().into_inner()), ["deepinfra", "together", "bedrock"]);
    assert_eq!(order(&c.route(route(sort("latency"))).await.unwrap().into_inner()), ["together", "bedrock", "deepinfra"]);
    // `order` first, the rest after; `only` filters (the rest by measured speed).
    let r = c.route(route(prefs(|p| p.order = vec!["deepinfra".into()]))).await.unwrap().into_inner();
    assert_eq!(order(&r)[0], "deepinfra");
    let r = c.route(route(prefs(|p| p.only = vec!["deepinfra".into(), "bedrock".into()]))).await.unwrap().into_inner();
    assert_eq!(order(&r), ["bedrock", "deepinfra"]);

    // A p90 latency preference (first token under 0.5 s at p90) reorders: together's spikes miss
    // it, so bedrock goes first; at p50 together still leads.
    let within =
        |p50: Option<f64>, p90: Option<f64>| prefs(|p| p.preferred_max_latency = Some(pb::Percentiles { p50, p90, ..Default::default() }));
    assert_eq!(order(&c.route(route(within(None, Some(0.5)))).await.unwrap().into_inner())[0], "bedrock");
    assert_eq!(order(&c.route(route(within(Some(0.5), None))).await.unwrap().into_inner())[0], "together");

    // max_latency: deepinfra's measured p90 (about 4.7 s) is over 1.5 s: left out and named.
    let r = c.route(limited(1500.0, "p90")).await.unwrap().into_inner();
    assert_eq!(order(&r), ["together", "bedrock"]);
    let llama = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == LLAMA).unwrap();
    let d = &llama.endpoints[1];
    assert_eq!(d.reason, pb::ExclusionReason::MaxLatency as i32);
    assert!(d.detail.contains(&format!("{LLAMA}@deepinfra")) && d.detail.contains("p90") && d.detail.contains("1500"), "{}", d.detail);
    // Every endpoint over: refused, naming the rule, the closest endpoint and its figure.
    let err = c.route(limited(50.0, "p50")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("max_latency_ms") && err.message().contains(&format!("{LLAMA}@together")), "{}", err.message());
    // An unmeasured model passes and says so.
    let r = c.route(pb::RouteRequest { allowed_models: vec![QWEN.into()], ..limited(50.0, "p50") }).await.unwrap().into_inner();
    let qwen = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == QWEN).unwrap();
    assert!(qwen.endpoints.iter().all(|e| e.detail.contains("not measured yet")), "{:?}", qwen.endpoints);
    // A bad limit names the field.
    let err = c.route(limited(50.0, "p95")).await.unwrap_err();
    assert!(err.message().contains("max_latency.percentile") && err.message().contains("p95"), "{}", err.message());

    // A tool-calling request never reaches bedrock (no tools).
    let tools = pb::RouteRequest { requirements: Some(pb::Requirements { tools: true, ..Default::default() }), ..route(None) };
    let r = c.route(tools).await.unwrap().into_inner();
    assert_eq!(order(&r), ["together", "deepinfra"]);

    // ListModels and /metrics show the measurements per endpoint.
    let models = c.list_models(pb::ListModelsRequest {}).await.unwrap().into_inner();
    let info = models.models.iter().find(|m| m.model == LLAMA).unwrap();
    let bedrock = info.endpoints[2].measured.unwrap();
    assert_eq!((bedrock.window_requests, bedrock.measured_requests), (10, 10));
    assert!((bedrock.latency_ms.unwrap().p50.unwrap() - 1000.0).abs() < 25.0, "{bedrock:?}");
    let page = server.metrics().await;
    let series = |name: &str, provider: &str, q: &str| format!("{name}{{model=\"{LLAMA}\",provider=\"{provider}\",quantile=\"{q}\"}}");
    let lat = metric(&page, &series("pointsman_endpoint_latency_seconds", "bedrock", "0.5")).unwrap();
    assert!((lat - 1.0).abs() < 0.025, "{lat}");
    let tps = metric(&page, &series("pointsman_endpoint_throughput_tokens_per_second", "deepinfra", "0.5")).unwrap();
    assert!((tps - 1000.0).abs() < 25.0, "{tps}");

    // An outage at together (3 server errors): its breaker opens, the model stays first on its
    // next endpoint; the model's own breaker is untouched.
    for _ in 0..3 {
        c.feedback(report(&mut n, "together", Outcome::ServerError, 10.0, 0.0, 0.0)).await.unwrap();
    }
    let ack = c.feedback(report(&mut n, "together", Outcome::RateLimited, 10.0, 0.0, 0.0)).await.unwrap().into_inner();
    let e = ack.endpoint.unwrap();
    assert_eq!(e.state, pb::HealthState::CoolingDown as i32);
    assert!(e.rate_limited_rate > 0.0);
    let r = c.route(route(None)).await.unwrap().into_inner();
    let llama = r.explanations.iter().find(|e| e.candidate.as_ref().unwrap().model == LLAMA).unwrap();
    assert_eq!(llama.endpoints[0].reason, pb::ExclusionReason::Unhealthy as i32, "{:?}", llama.endpoints[0]);
    assert_eq!(llama.candidate.as_ref().unwrap().health, pb::HealthState::Healthy as i32);
    assert_eq!(order(&r), ["bedrock", "deepinfra"]);
    let page = server.metrics().await;
    let state = format!("pointsman_endpoint_health_state{{model=\"{LLAMA}\",provider=\"together\",state=\"cooling_down\"}}");
    assert_eq!(metric(&page, &state), Some(1.0));

    // A report naming a provider the model does not have feeds the model's breaker, as before.
    let ack = c.feedback(report(&mut n, "no-such-provider", Outcome::ServerError, 10.0, 0.0, 0.0)).await.unwrap().into_inner();
    assert!(ack.endpoint.is_none() && ack.health.unwrap().window_requests == 1);
    // Bad endpoint figures name the field.
    let mut bad = report(&mut n, "together", Outcome::Success, 10.0, 0.0, 0.0);
    bad.ttft_ms = Some(-1.0);
    let err = c.feedback(bad).await.unwrap_err();
    assert!(err.message().contains("ttft_ms") && err.message().contains("-1"), "{}", err.message());
}
