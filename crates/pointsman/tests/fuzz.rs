//! Property tests against ONE real server: arbitrary `Route` and `Feedback` requests through the
//! generated client, arbitrary bytes as gRPC message bodies (raw HTTP/2), and raw TCP garbage.
//! Every answer must be OK or a clear error (a known status with a non-empty message), the
//! connection must survive, and afterwards the server must still answer health and a normal
//! Route. Case counts: FUZZ_CASES (default 1024) per kind; proptest shrinks and prints a failure.
mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use pointsman::pb::{self, router_client::RouterClient, ListModelsRequest};
use proptest::{
    prelude::*,
    test_runner::{Config as ProptestConfig, TestCaseError, TestRunner},
};
use tonic::{transport::Channel, Code, Status};
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1024)
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })
}

/// Names the server knows (catalog models, providers, profiles), to get past the first checks.
#[derive(Debug, Clone)]
struct Known {
    models: Vec<String>,
    providers: Vec<String>,
    profiles: Vec<String>,
}

/// Arbitrary text: any unicode (control characters included), whitespace only, long runs of
/// one character (up to past the request size limit), or one of `known`.
fn text(known: Vec<String>) -> BoxedStrategy<String> {
    let known = if known.is_empty() { vec![String::new()] } else { known };
    prop_oneof![
        20 => proptest::string::string_regex("(?s).{0,40}").unwrap(),
        8 => proptest::string::string_regex("[ \t\r\n\u{0}-\u{1f}\u{7f}\u{85}\u{a0}\u{2028}\u{feff}]{0,6}").unwrap(),
        8 => proptest::sample::select(known),
        4 => any::<Vec<u8>>().prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        4 => (any::<char>(), 1usize..50_000).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => (1_048_577usize..1_300_000).prop_map(|n| "x".repeat(n)),
    ]
    .boxed()
}

/// Small arbitrary text (for fields repeated hundreds of times).
fn short_text(known: Vec<String>) -> BoxedStrategy<String> {
    let known = if known.is_empty() { vec![String::new()] } else { known };
    prop_oneof![3 => proptest::string::string_regex("(?s).{0,12}").unwrap(), 1 => proptest::sample::select(known)].boxed()
}

/// Any double, with NaN, the infinities, signed zero and the [0, 1] range well represented.
fn number() -> BoxedStrategy<f64> {
    prop_oneof![
        3 => any::<f64>(),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-0.0),
        3 => -0.5..1.5f64,
    ]
    .boxed()
}

/// Usually `sane`, one time in ten `wild`: most requests get past the first check, so the later ones
/// (and the engine) see arbitrary values too.
fn mostly<T: std::fmt::Debug + Clone + 'static>(
    sane: impl Strategy<Value = T> + 'static,
    wild: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![9 => sane, 1 => wild].boxed()
}

fn id() -> BoxedStrategy<String> {
    mostly(prop_oneof![Just(String::new()), "[a-z0-9-]{1,24}"], text(Vec::new()))
}

fn list(names: &[String]) -> BoxedStrategy<Vec<String>> {
    let known = proptest::sample::select(names.to_vec());
    mostly(
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(known, 1..4)],
        prop::collection::vec(short_text(names.to_vec()), 0..300),
    )
}

/// A plain prompt, usually; anything sometimes.
fn prose() -> BoxedStrategy<String> {
    mostly("[A-Za-z][A-Za-z ,.?]{0,60}", text(Vec::new()))
}

fn opt_number() -> BoxedStrategy<Option<f64>> {
    mostly(prop_oneof![2 => Just(None), 1 => (0.0..=1.0f64).prop_map(Some)], prop::option::of(number()))
}

fn route_request(k: &Known) -> impl Strategy<Value = Shown<pb::RouteRequest>> {
    let role = mostly(proptest::sample::select(vec!["system", "user", "assistant", "tool"]).prop_map(String::from), short_text(Vec::new()));
    let message = |content: BoxedStrategy<String>| (role.clone(), content).prop_map(|(role, content)| pb::Message { role, content });
    let content = prose();
    // Long conversations of short messages (a long one of long messages is one big request).
    let messages = prop_oneof![
        3 => prop::collection::vec(message(content), 1..5),
        1 => prop::collection::vec(message(mostly("[a-z ]{1,12}", short_text(Vec::new()))), 200..300),
    ];
    // Exactly one of prompt and messages, or (rarely) both or neither.
    let conversation = prop_oneof![
        4 => prose().prop_map(|p| (Vec::new(), p)),
        4 => messages.clone().prop_map(|m| (m, String::new())),
        1 => (messages, prose()),
        1 => Just((Vec::new(), String::new())),
    ];
    let profile = mostly(prop_oneof![Just(String::new()), proptest::sample::select(k.profiles.clone())], short_text(Vec::new()));
    let cost_weight = mostly(Just(None), prop::option::of(number()));
    let max_cost = mostly(prop_oneof![Just(None), (0.0001..10.0f64).prop_map(Some)], prop::option::of(number()));
    let fallbacks = mostly(prop_oneof![Just(None), (0u32..9).prop_map(Some)], prop::option::of(any::<u32>()));
    let word =
        |good: &'static [&'static str]| mostly(proptest::sample::select(good.to_vec()).prop_map(String::from), short_text(Vec::new()));
    let percentiles = prop::option::of((opt_number(), opt_number(), opt_number(), opt_number()))
        .prop_map(|p| p.map(|(p50, p75, p90, p99)| pb::Percentiles { p50, p75, p90, p99 }));
    let provider = prop::option::of((
        (list(&k.providers), list(&k.providers), list(&k.providers), prop::option::of(any::<bool>())),
        (word(&["", "price", "throughput", "latency"]), word(&["", "model", "none"]), word(&["", "allow", "deny"])),
        (prop::collection::vec(word(&["fp8", "bf16", "int4", "unknown"]), 0..3), any::<(bool, bool)>()),
        (prop::option::of((opt_number(), opt_number())), percentiles.clone(), percentiles),
    ))
    .prop_map(|p| {
        p.map(
            |(
                (order, only, ignore, allow_fallbacks),
                (sort, partition, data_collection),
                (quantizations, (zdr, require_parameters)),
                (max_price, preferred_max_latency, preferred_min_throughput),
            )| pb::ProviderPreferences {
                order,
                only,
                ignore,
                allow_fallbacks,
                sort,
                partition,
                max_price: max_price.map(|(prompt, completion)| pb::MaxPrice { prompt, completion }),
                quantizations,
                data_collection,
                zdr,
                require_parameters,
                preferred_max_latency,
                preferred_min_throughput,
            },
        )
    });
    // Sessions: mostly a plausible id, or a user with a conversation; sometimes anything.
    let session = prop::option::of((id(), id(), id(), any::<bool>()))
        .prop_map(|s| s.map(|(id, user, conversation, escalate_only)| pb::Session { id, user, conversation, escalate_only }));
    (
        (id(), conversation, profile),
        (cost_weight, max_cost, opt_number()),
        (list(&k.models), list(&k.models), list(&k.providers), list(&k.providers)),
        (fallbacks, any::<bool>(), prop::option::of((any::<(bool, bool, bool, bool, bool)>(), word(&["", "low", "high"]), opt_u32()))),
        (provider, session, prop::option::of(any::<bool>()), prop::option::of((number(), word(&["", "p50", "p90", "p99", "p95"])))),
    )
        .prop_map(
            |(
                (request_id, (messages, prompt), profile),
                (cost_weight, max_cost_usd, min_quality),
                (allowed_models, denied_models, allowed_providers, denied_providers),
                (max_fallbacks, explain, needs),
                (provider, session, explore, max_latency),
            )| {
                Shown(pb::RouteRequest {
                    request_id,
                    messages,
                    prompt,
                    profile,
                    cost_weight,
                    max_cost_usd,
                    min_quality,
                    allowed_models,
                    denied_models,
                    allowed_providers,
                    denied_providers,
                    max_fallbacks,
                    explain,
                    requirements: needs.map(|((tools, images, audio, files, json_schema), reasoning_effort, max_output_tokens)| {
                        pb::Requirements { tools, images, audio, files, json_schema, reasoning_effort, max_output_tokens }
                    }),
                    provider,
                    explore,
                    session,
                    max_latency: max_latency.map(|(ms, percentile)| pb::LatencyLimit { ms, percentile }),
                })
            },
        )
}

fn opt_u32() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![Just(None), (0u32..100_000).prop_map(Some), any::<u32>().prop_map(Some)]
}

fn feedback_request(k: &Known) -> impl Strategy<Value = Shown<pb::FeedbackRequest>> {
    let request_id = mostly("[a-z0-9-]{1,24}", text(Vec::new()));
    let model = mostly(proptest::sample::select(k.models.clone()), text(Vec::new()));
    let outcome = mostly(1i32..6, any::<i32>());
    let latency = mostly(prop_oneof![Just(None), (0.0..60_000.0f64).prop_map(Some)], prop::option::of(number()));
    let cost = mostly(prop_oneof![Just(None), (0.0..1.0f64).prop_map(Some)], prop::option::of(number()));
    let endpoint = (text(Vec::new()), prop::option::of(number()), prop::option::of(number()));
    (
        (request_id, model, outcome),
        (latency, prop::option::of(any::<u32>()), prop::option::of(any::<u32>())),
        (cost, opt_number()),
        endpoint,
    )
        .prop_map(
            |(
                (request_id, model, outcome),
                (latency_ms, input_tokens, output_tokens),
                (cost_usd, quality),
                (provider, ttft_ms, generation_ms),
            )| {
                Shown(pb::FeedbackRequest {
                    request_id,
                    model,
                    outcome,
                    latency_ms,
                    input_tokens,
                    output_tokens,
                    cost_usd,
                    quality,
                    provider,
                    ttft_ms,
                    generation_ms,
                })
            },
        )
}

/// "Ok", or the status code and the start of the message (the field named), for the summary.
fn outcome<T>(r: &Result<T, Status>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(s) => format!("{:?} {}", s.code(), s.message().chars().take(24).collect::<String>()),
    }
}

/// A value whose `Debug` is cut short: a failing case may hold megabytes of text.
#[derive(Clone)]
struct Shown<T>(T);

impl<T: std::fmt::Debug> std::fmt::Debug for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let full = format!("{:?}", self.0);
        match full.char_indices().nth(3000) {
            Some((cut, _)) => write!(f, "{}... ({} bytes of Debug output in all)", &full[..cut], full.len()),
            None => f.write_str(&full),
        }
    }
}

/// OK, or a clear refusal: a status a client can act on, with a message.
fn clear<T>(r: Result<T, Status>) -> Result<(), TestCaseError> {
    if let Err(s) = r {
        let m = s.message();
        // NOTE: past tonic's own decoding limit (4 x server.max_request_bytes) tonic answers
        // OUT_OF_RANGE, naming the size and the limit, before our handler sees the request.
        let over_tonic_limit = s.code() == Code::OutOfRange && m.contains("decoded message length too large") && m.contains("the limit is");
        prop_assert!(
            over_tonic_limit
                || matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted | Code::DeadlineExceeded),
            "{:?}: {}",
            s.code(),
            m.chars().take(500).collect::<String>()
        );
        prop_assert!(!s.message().trim().is_empty(), "{:?} without a message", s.code());
    }
    Ok(())
}

/// The server still answers health and a normal Route.
async fn still_serving(server: &TestServer) {
    let status =
        server.health.clone().check(HealthCheckRequest { service: "pointsman.v1.Router".into() }).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let r = server.client.clone().route(pb::RouteRequest { prompt: CHAT_PROMPT.into(), ..Default::default() }).await.unwrap();
    assert!(!r.into_inner().candidates.is_empty());
}

/// A gRPC-over-HTTP/2 call with `body` sent as is; returns (grpc-status, grpc-message).
async fn raw_call(h2: &mut h2::client::SendRequest<Bytes>, path: &str, body: Bytes) -> (i32, String) {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://pointsman{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(req, false).expect("the connection is still open");
    stream.send_data(body, true).expect("the request body is accepted");
    let response = response.await.expect("an HTTP/2 response, not a reset");
    let header = |h: &http::HeaderMap, k: &str| h.get(k).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let (mut status, mut message) = (header(response.headers(), "grpc-status"), header(response.headers(), "grpc-message"));
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the response body arrives");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(trailers) = body.trailers().await.expect("trailers arrive") {
        status = status.or(header(&trailers, "grpc-status"));
        message = message.or(header(&trailers, "grpc-message"));
    }
    (status.expect("a grpc-status").parse().expect("a numeric grpc-status"), message.unwrap_or_default())
}

/// Undoes the percent-encoding of `grpc-message`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC frame: compression flag, declared length, then `payload`.
fn frame(compressed: bool, declared: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(declared);
    b.put_slice(payload);
    b.freeze()
}

/// Runs `call` on each generated request: every answer must be [`clear`], and both accepted and
/// refused requests must have come up. Prints how the answers were spread.
fn generated_client_cases<R: std::fmt::Debug>(
    name: &str,
    requests: impl Strategy<Value = Shown<R>>,
    call: impl Fn(R) -> Result<(), Status>,
) {
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    runner()
        .run(&requests, |req| {
            let r = call(req.0);
            *seen.borrow_mut().entry(outcome(&r)).or_default() += 1;
            clear(r)
        })
        .unwrap();
    let seen = seen.into_inner();
    println!("{name}: {seen:#?}");
    assert!(seen.contains_key("Ok") && seen.keys().any(|k| k.starts_with("InvalidArgument")), "both paths were exercised: {seen:?}");
}

#[test]
fn arbitrary_requests_and_bytes_get_clear_answers_and_the_server_keeps_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let server = rt.block_on(TestServer::start());
    let client: RouterClient<Channel> = server.client.clone();
    let listing = rt.block_on(client.clone().list_models(ListModelsRequest {})).unwrap().into_inner();
    let known = Known {
        models: listing.models.iter().map(|m| m.model.clone()).collect(),
        providers: listing.models.iter().map(|m| m.provider.clone()).collect(),
        profiles: listing.profiles.keys().cloned().collect(),
    };

    // 1. Route and 2. Feedback through the generated client.
    generated_client_cases("Route", route_request(&known), |req| rt.block_on(client.clone().route(req)).map(drop));
    rt.block_on(still_serving(&server));
    generated_client_cases("Feedback", feedback_request(&known), |req| rt.block_on(client.clone().feedback(req)).map(drop));
    rt.block_on(still_serving(&server));

    // 3. Arbitrary bytes as message bodies over one raw HTTP/2 connection: well framed, with a
    // wrong declared length, with the compression flag, or unframed.
    let h2 = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        h2.ready().await.unwrap()
    });
    let body = (any::<Vec<u8>>(), 0u8..4, any::<u32>(), any::<bool>()).prop_map(|(payload, kind, declared, route)| {
        let body = match kind {
            0 => frame(false, payload.len() as u32, &payload),
            1 => frame(false, declared % (payload.len() as u32 + 64), &payload),
            2 => frame(true, payload.len() as u32, &payload),
            _ => Bytes::from(payload),
        };
        Shown((if route { "/pointsman.v1.Router/Route" } else { "/pointsman.v1.Router/Feedback" }, body))
    });
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    runner()
        .run(&body, |Shown((path, body))| {
            let (status, message) = rt.block_on(raw_call(&mut h2.clone(), path, body));
            let message = percent_decode(&message);
            *seen.borrow_mut().entry(format!("{status} {}", message.chars().take(48).collect::<String>())).or_default() += 1;
            // NOTE: tonic answers a body that is not a protobuf message, or not a whole gRPC
            // frame, with INTERNAL, as the gRPC status-code table prescribes for "error parsing
            // request proto"; the message says what was wrong.
            let parse_error = status == Code::Internal as i32
                && ["failed to decode", "Unexpected EOF", "protocol error", "Missing request message"].iter().any(|w| message.contains(w));
            prop_assert!(status == 0 || parse_error || [3, 8, 9, 11].contains(&status), "grpc-status {status}: {message}");
            prop_assert!(status == 0 || !message.is_empty(), "grpc-status {status} without a message");
            Ok(())
        })
        .unwrap();
    println!("raw bodies, by grpc-status and message: {:#?}", seen.into_inner());
    rt.block_on(still_serving(&server));

    // 4. Raw TCP garbage: the server drops or answers the connection, and keeps serving.
    runner()
        .run(&prop::collection::vec(any::<u8>(), 0..4096).prop_map(Shown), |Shown(garbage)| {
            rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
                let _ = s.write_all(&garbage).await;
                let _ = s.shutdown().await;
                let mut sink = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
            });
            Ok(())
        })
        .unwrap();
    rt.block_on(still_serving(&server));
    rt.block_on(server.shutdown());
}
