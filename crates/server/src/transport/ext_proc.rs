//! Envoy's external processor (`envoy.service.ext_proc.v3.ExternalProcessor`): Pointsman inside
//! the gateway's request path, with no glue code in the gateway or the client.
//!
//! Envoy opens one bidirectional stream per HTTP request and sends what its filter's processing
//! mode asks for (the shipped `deploy/envoy/envoy.yaml`: request headers, the request body
//! buffered, response headers, the response body streamed chunk by chunk). Per stream:
//!
//! 1. **Request headers**: kept (the per-request knobs ride on them, see [`headers`]), except the
//!    headers Pointsman sets itself ([`headers::OWN`]: the upstream, the chosen model, the
//!    fallbacks): a client's copies are removed, so no client names a cluster or forges a decision.
//! 2. **Request body** (the whole OpenAI-compatible chat request, up to `ext_proc.max_body_bytes`):
//!    when its `model` is one of `ext_proc.route_models` (`pointsman/auto` by default), the
//!    conversation (mapped by [`super::openai`]: tool calls, content parts, any number of turns)
//!    is routed by the same engine, validation, profiles and constraints as `Route`; the body's
//!    `model` is rewritten to the chosen model, and headers name the model, its upstream
//!    (provider), the fallbacks and the decision id; the route cache is cleared so Envoy routes on
//!    them. Any other `model` passes through untouched (with the upstream header when the catalog
//!    knows the model). A request Pointsman cannot route (not JSON, no messages, no text at all,
//!    over the body cap) passes through unrouted and is counted by reason
//!    (`pointsman_ext_proc_passed_total{reason}`): it is never refused for its shape. A request
//!    whose Pointsman knobs are wrong is answered 400 naming the header, and 422 when its
//!    constraints leave no model. When Pointsman cannot route for a reason of its own (loading,
//!    overloaded, its deadline, an internal error) the stream ends with the gRPC status and
//!    Envoy's `failure_mode_allow` decides, as when Pointsman is down.
//!
//!    Each exchange has a deadline, `ext_proc.message_timeout_ms` (Envoy's `message_timeout`):
//!    work for it that has not started by then is never started. When Envoy gives up on the
//!    stream (its timeout, the client gone), the exchange is dropped where it stands: nothing is
//!    routed, logged or counted as routed for it.
//! 3. **Response headers and body**: the status decides the outcome (2xx success, 429 rate
//!    limited, 408/504 timeout, other 5xx server error; other 4xx are the client's fault and
//!    report nothing); the body is passed on chunk by chunk (so streams stay streams) while its
//!    tail is kept to read `usage` (the JSON body's last `usage` object, or the last `data:`
//!    event of a stream); at its end `Feedback` is recorded with the latency from the decision, so
//!    the loop closes by itself. The report names the endpoint (the provider it was sent to), so
//!    it moves that endpoint's breaker and measurements; for a streamed answer
//!    (`text/event-stream`) it also carries the time to first token (the decision to the first
//!    body chunk) and the generation time (the first chunk to the last), from which, with the
//!    usage's output tokens, the endpoint's throughput is measured.
//!
//! If Pointsman is down or slow, what happens is Envoy's choice: with `failure_mode_allow: true`
//! (shipped) the request goes on unrouted to the default upstream; with `false` it fails with 500.
use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::{
    config::core::v3::{header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption},
    r#type::v3::HttpStatus,
    service::ext_proc::v3::{
        body_mutation::Mutation, external_processor_server::ExternalProcessor, processing_request::Request as Phase,
        processing_response::Response as Reply, BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
        HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse,
    },
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, openai, pb};
use crate::{engine::RouteError, service::Service};

/// Header names: what Pointsman reads from the request and what it sets.
pub mod headers {
    /// In: a named profile (as `RouteRequest.profile`).
    pub const PROFILE: &str = "x-pointsman-profile";
    /// In: the cost weight in [0, 1] (as `RouteRequest.cost_weight`).
    pub const COST_WEIGHT: &str = "x-pointsman-cost-weight";
    /// In: the hard cost limit in USD (as `RouteRequest.max_cost_usd`).
    pub const MAX_COST_USD: &str = "x-pointsman-max-cost-usd";
    /// In: the quality floor (as `RouteRequest.min_quality`).
    pub const MIN_QUALITY: &str = "x-pointsman-min-quality";
    /// In: how many fallbacks to name (as `RouteRequest.max_fallbacks`).
    pub const MAX_FALLBACKS: &str = "x-pointsman-max-fallbacks";
    /// In: the most measured latency of an endpoint, ms (as `RouteRequest.max_latency.ms`).
    pub const MAX_LATENCY_MS: &str = "x-pointsman-max-latency-ms";
    /// In: the percentile `MAX_LATENCY_MS` applies to: p50 (default), p75, p90, p99.
    pub const MAX_LATENCY_PERCENTILE: &str = "x-pointsman-max-latency-percentile";
    /// In: the request id (else Envoy's `x-request-id`, else a new UUID). Out: the decision id.
    pub const REQUEST_ID: &str = "x-pointsman-request-id";
    /// In (Envoy's own): the request id Envoy generates or forwards.
    pub const ENVOY_REQUEST_ID: &str = "x-request-id";
    /// Out: the chosen model.
    pub const MODEL: &str = "x-pointsman-model";
    /// Out: the chosen model's provider, which the Envoy config maps to a cluster.
    pub const UPSTREAM: &str = "x-pointsman-upstream";
    /// Out: the fallbacks in order, `model@provider`, comma-separated: the attempts after the
    /// first (the same model on its other endpoints first, by default).
    pub const FALLBACKS: &str = "x-pointsman-fallbacks";
    /// Out: the full attempt order, `model@provider`, comma-separated, the chosen one first
    /// (`RouteResponse.attempts`).
    pub const ATTEMPTS: &str = "x-pointsman-attempts";
    /// In: OpenRouter's `provider` object as JSON, for clients that cannot add it to the body;
    /// the body's `provider` wins when both are given.
    pub const PROVIDER: &str = "x-pointsman-provider";
    /// Out: how the request was passed through unrouted, when it was (`not_json`, `no_text`, ...).
    pub const PASSED: &str = "x-pointsman-passed";
    /// In: the session id (OpenRouter's header; the body's `session_id` wins when both are given).
    pub const SESSION_ID: &str = "x-session-id";
    /// In: the conversation key that, with the body's OpenAI `user`, names the session when no
    /// session id is given.
    pub const CONVERSATION: &str = "x-pointsman-conversation";
    /// In: `true` to switch the session only to a model of higher predicted quality.
    pub const ESCALATE_ONLY: &str = "x-pointsman-escalate-only";
    /// Out: what the session did (`new`, `kept`, `moved`), when the request named one.
    pub const SESSION: &str = "x-pointsman-session";
    /// The headers only Pointsman sets: a client's copies are removed before routing.
    pub const OWN: [&str; 6] = [MODEL, UPSTREAM, FALLBACKS, ATTEMPTS, PASSED, SESSION];
}

/// What a routed request needs for its feedback.
#[derive(Debug, Clone)]
struct Routed {
    request_id: String,
    model: String,
    /// The endpoint's provider it was sent to.
    provider: String,
    at: Instant,
    /// When the first response body chunk arrived.
    first_chunk: Option<Instant>,
}

/// Most bytes of a response body kept to read its `usage` (the end of it: a stream's usage is in
/// its last event).
const RESPONSE_TAIL_BYTES: usize = 64 * 1024;

/// One HTTP request's state across its stream.
#[derive(Debug, Default)]
struct Exchange {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// The body went over `ext_proc.max_body_bytes`: it is no longer kept, and passes unrouted.
    too_large: bool,
    routed: Option<Routed>,
    status: Option<u16>,
    /// The response is a server-sent-event stream (its first chunk is the first token).
    streamed: bool,
    tail: Vec<u8>,
    reported: bool,
}

/// The `ExternalProcessor` service.
pub struct ExtProcService {
    service: Arc<Service>,
}

impl ExtProcService {
    /// Serves with `service`'s engine, health and decision log.
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ReplyStream;

    async fn process(&self, request: Request<Streaming<ProcessingRequest>>) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let service = Arc::clone(&self.service);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut x = Exchange::default();
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    // Envoy closed the stream (request done, or the client went away).
                    Ok(None) | Err(_) => break,
                };
                // When Envoy gives up (its message_timeout, the client gone) it resets the stream
                // and tonic drops the reply stream: the exchange is dropped where it stands, so
                // the engine's caller-gone skip applies and nothing is logged for it.
                let reply = tokio::select! {
                    reply = x.handle(&service, msg) => reply,
                    () = tx.closed() => break,
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

fn header_text(h: &HeaderValue) -> String {
    if h.raw_value.is_empty() {
        h.value.clone()
    } else {
        String::from_utf8_lossy(&h.raw_value).into_owned()
    }
}

fn read_headers(h: &HttpHeaders) -> HashMap<String, String> {
    h.headers.iter().flat_map(|m| m.headers.iter()).map(|v| (v.key.to_ascii_lowercase(), header_text(v))).collect()
}

fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), raw_value: value.as_bytes().to_vec(), ..Default::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn carry_on() -> CommonResponse {
    CommonResponse::default()
}

/// An OpenAI-style error reply from Pointsman itself.
fn refuse(status: u16, kind: &str, message: &str) -> ProcessingResponse {
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "code": status } }).to_string();
    ProcessingResponse {
        response: Some(Reply::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code: i32::from(status) }),
            headers: Some(HeaderMutation { set_headers: vec![set("content-type", "application/json")], ..Default::default() }),
            body: body.into_bytes(),
            details: format!("pointsman_{kind}"),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// What one request body comes to.
enum Step {
    /// Routed: the body and header changes.
    Routed(CommonResponse),
    /// An explicit model, passed on (with its upstream when the catalog knows it).
    Explicit(CommonResponse),
    /// Passed through unrouted, for this reason (a [`Pass`] or [`openai::Unroutable`] label).
    Pass(&'static str),
    /// Answered by Pointsman: the request's own fault.
    Refuse(ProcessingResponse),
    /// Pointsman's own failure: the stream ends with this status and Envoy decides.
    Fail(Status),
}

/// Why a request passes through (besides [`openai::Unroutable`]).
#[derive(Debug, Clone, Copy)]
enum Pass {
    /// The body is not a JSON object.
    NotJson,
    /// It names a model of its own.
    Explicit,
}

impl Pass {
    fn label(self) -> &'static str {
        match self {
            Pass::NotJson => "not_json",
            Pass::Explicit => "explicit_model",
        }
    }
}

/// What a routing error becomes: the request's own fault is answered to the client (400 for a
/// bad knob, 422 when its constraints leave no model); Pointsman's (loading, overloaded, a
/// deadline, an internal error) ends the stream with the gRPC status, so Envoy applies its own
/// `failure_mode_allow`: on, the request goes on unrouted, as when Pointsman is down; off, 500.
fn route_error_reply(e: RouteError) -> Step {
    match e {
        RouteError::InvalidArgument { .. } => Step::Refuse(refuse(400, "invalid_request_error", &e.to_string())),
        RouteError::NoEligibleModel(_) => Step::Refuse(refuse(422, "no_eligible_model", &e.to_string())),
        other => Step::Fail(convert::status(other)),
    }
}

/// Parses a per-request header into `T`, naming the header, what it takes and the value on error.
fn knob<T: std::str::FromStr>(h: &HashMap<String, String>, name: &str, what: &str) -> Result<Option<T>, RouteError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| RouteError::invalid(name, format!("must be {what}. Given: {v:?}"))),
    }
}

impl Exchange {
    /// The reply to one message; `Err` ends the stream (see [`route_error_reply`]).
    async fn handle(&mut self, service: &Arc<Service>, msg: ProcessingRequest) -> Result<ProcessingResponse, Status> {
        let reply = match msg.request {
            Some(Phase::RequestHeaders(h)) => {
                self.headers = read_headers(&h);
                Reply::RequestHeaders(HeadersResponse { response: Some(self.without_own_headers()) })
            }
            Some(Phase::RequestBody(b)) => {
                let limit = service.config().ext_proc.max_body_bytes;
                if !self.too_large && self.body.len() + b.body.len() > limit {
                    self.too_large = true;
                    self.body = Vec::new();
                } else if !self.too_large {
                    self.body.extend_from_slice(&b.body);
                }
                if !b.end_of_stream {
                    Reply::RequestBody(BodyResponse { response: Some(carry_on()) })
                } else {
                    let body = std::mem::take(&mut self.body);
                    let step = if self.too_large { Step::Pass("too_large") } else { self.route(service, &body).await };
                    let stats = service.stats();
                    match step {
                        Step::Routed(r) => {
                            stats.ext_proc_routed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Reply::RequestBody(BodyResponse { response: Some(r) })
                        }
                        Step::Explicit(r) => {
                            stats.count_ext_proc_pass(Pass::Explicit.label());
                            Reply::RequestBody(BodyResponse { response: Some(r) })
                        }
                        Step::Pass(reason) => {
                            stats.count_ext_proc_pass(reason);
                            tracing::debug!(reason, "ext_proc: passed through unrouted");
                            Reply::RequestBody(BodyResponse {
                                response: Some(CommonResponse {
                                    header_mutation: Some(HeaderMutation {
                                        set_headers: vec![set(headers::PASSED, reason)],
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                }),
                            })
                        }
                        Step::Refuse(refusal) => {
                            stats.ext_proc_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return Ok(refusal);
                        }
                        Step::Fail(status) => {
                            tracing::warn!(code = ?status.code(), message = status.message(), "ext_proc: not routed; Envoy's failure_mode_allow decides");
                            stats.ext_proc_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return Err(status);
                        }
                    }
                }
            }
            Some(Phase::ResponseHeaders(h)) => {
                let end = h.end_of_stream;
                let h = read_headers(&h);
                self.status = h.get(":status").and_then(|s| s.parse().ok());
                self.streamed = h.get("content-type").is_some_and(|t| t.contains("text/event-stream"));
                if end {
                    // A response without a body ends here.
                    self.report(service);
                }
                Reply::ResponseHeaders(HeadersResponse { response: Some(carry_on()) })
            }
            Some(Phase::ResponseBody(b)) => {
                self.response_chunk(service, &b);
                Reply::ResponseBody(BodyResponse { response: Some(carry_on()) })
            }
            Some(Phase::RequestTrailers(_)) => Reply::RequestTrailers(Default::default()),
            Some(Phase::ResponseTrailers(_)) => {
                self.report(service);
                Reply::ResponseTrailers(Default::default())
            }
            // Not a phase Envoy sends: a peer that is not Envoy, or a newer protocol.
            None => return Err(Status::invalid_argument("a ProcessingRequest must carry one of its phases; this one has none")),
        };
        Ok(ProcessingResponse { response: Some(reply), ..Default::default() })
    }

    /// The request-headers reply: a client's copies of the headers only Pointsman sets are removed
    /// (and the route cache cleared, so Envoy does not route on them).
    fn without_own_headers(&self) -> CommonResponse {
        let present: Vec<String> = headers::OWN.iter().filter(|h| self.headers.contains_key(**h)).map(|h| h.to_string()).collect();
        if present.is_empty() {
            return carry_on();
        }
        tracing::debug!(headers = ?present, "ext_proc: removed client-set routing headers");
        CommonResponse {
            header_mutation: Some(HeaderMutation { remove_headers: present, ..Default::default() }),
            clear_route_cache: true,
            ..Default::default()
        }
    }

    /// Routes the chat request `body` when its model asks for it.
    async fn route(&mut self, service: &Arc<Service>, body: &[u8]) -> Step {
        let Some(engine) = service.engine() else {
            return Step::Fail(Status::unavailable("models are loading"));
        };
        let config = service.config();
        let mut json: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            // Not a JSON object: not a chat request; pass it on untouched.
            _ => return Step::Pass(Pass::NotJson.label()),
        };
        let model = json.get("model").and_then(|m| m.as_str()).unwrap_or_default().to_string();
        if !config.ext_proc.route_models.contains(&model) {
            // An explicit model passes through; Envoy routes it by its provider when we know it.
            return Step::Explicit(match engine.catalog().get(&model) {
                Some(m) => CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: vec![set(headers::MODEL, &m.id), set(headers::UPSTREAM, m.provider())],
                        ..Default::default()
                    }),
                    clear_route_cache: true,
                    ..Default::default()
                },
                None => carry_on(),
            });
        }
        let conversation = match openai::conversation(&json, config.server.max_messages, config.server.max_request_bytes) {
            Ok(c) => c,
            Err(why) => return Step::Pass(why.label()),
        };
        let call = service.route_call();
        let query = self.query(conversation, &json).and_then(|req| convert::route_query(req, &config.server));
        let mut query = match query {
            Ok(q) => q,
            Err(e) => {
                call.error(e.label());
                return route_error_reply(e);
            }
        };
        query.deadline = Some(Instant::now() + Duration::from_millis(config.ext_proc.message_timeout_ms));
        let decision = match service.route(call, &engine, query).await {
            Ok(d) => convert::route_response(&engine, d, false, None),
            Err(e) => return route_error_reply(e),
        };
        let Some(primary) = decision.candidates.first() else {
            return Step::Fail(Status::internal("the router named no model"));
        };
        json["model"] = serde_json::Value::String(primary.model.clone());
        let attempts: Vec<String> = decision.attempts.iter().map(|a| format!("{}@{}", a.model, a.provider)).collect();
        let fallbacks = attempts.get(1..).unwrap_or_default();
        self.routed = Some(Routed {
            request_id: decision.request_id.clone(),
            model: primary.model.clone(),
            provider: primary.provider.clone(),
            at: Instant::now(),
            first_chunk: None,
        });
        let body = serde_json::to_vec(&json).expect("a JSON value serialises. This is a bug.");
        let mut set_headers = vec![
            set(headers::MODEL, &primary.model),
            set(headers::UPSTREAM, &primary.provider),
            set(headers::FALLBACKS, &fallbacks.join(",")),
            set(headers::ATTEMPTS, &attempts.join(",")),
            set(headers::REQUEST_ID, &decision.request_id),
            set("content-length", &body.len().to_string()),
        ];
        if let Some(s) = &decision.session {
            let verdict = match pb::SessionVerdict::try_from(s.verdict) {
                Ok(pb::SessionVerdict::Kept) => "kept",
                Ok(pb::SessionVerdict::Moved) => "moved",
                _ => "new",
            };
            set_headers.push(set(headers::SESSION, &format!("{verdict}; reason={}", s.reason)));
        }
        Step::Routed(CommonResponse {
            header_mutation: Some(HeaderMutation { set_headers, ..Default::default() }),
            body_mutation: Some(BodyMutation { mutation: Some(Mutation::Body(body)) }),
            clear_route_cache: true,
            ..Default::default()
        })
    }

    /// The `RouteRequest` a chat request's conversation, its `provider` object and its headers ask for.
    fn query(&self, c: openai::Conversation, body: &serde_json::Value) -> Result<pb::RouteRequest, RouteError> {
        let h = &self.headers;
        let from_body = openai::provider(body).map_err(|e| RouteError::invalid(format!("provider.{}", e.field), e.to_string()))?;
        let provider = match (from_body, h.get(headers::PROVIDER)) {
            (Some(p), _) => Some(p),
            (None, Some(text)) => {
                let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                    RouteError::invalid(
                        headers::PROVIDER,
                        format!("must be OpenRouter's provider object as JSON ({e}). Given: {:?}", crate::engine::truncated(text)),
                    )
                })?;
                openai::provider(&serde_json::json!({ "provider": v }))
                    .map_err(|e| RouteError::invalid(headers::PROVIDER, e.to_string()))?
            }
            (None, None) => None,
        };
        let request_id = h.get(headers::REQUEST_ID).or_else(|| h.get(headers::ENVOY_REQUEST_ID)).cloned().unwrap_or_default();
        let session = self.session(body)?;
        Ok(pb::RouteRequest {
            request_id,
            messages: c.messages,
            requirements: Some(c.requirements),
            profile: h.get(headers::PROFILE).cloned().unwrap_or_default(),
            cost_weight: knob(h, headers::COST_WEIGHT, "a number in [0, 1]")?,
            max_cost_usd: knob(h, headers::MAX_COST_USD, "a number of USD")?,
            min_quality: knob(h, headers::MIN_QUALITY, "a number in [0, 1]")?,
            max_fallbacks: knob(h, headers::MAX_FALLBACKS, "a whole number")?,
            max_latency: knob(h, headers::MAX_LATENCY_MS, "a number of milliseconds")?
                .map(|ms| pb::LatencyLimit { ms, percentile: h.get(headers::MAX_LATENCY_PERCENTILE).cloned().unwrap_or_default() }),
            provider,
            session,
            ..Default::default()
        })
    }

    /// The request's session: the body's `session_id` (OpenRouter's), else the `x-session-id`
    /// header, else the body's OpenAI `user` with the `x-pointsman-conversation` header. The
    /// values are checked by `convert::session_request` like a `Route` call's.
    fn session(&self, body: &serde_json::Value) -> Result<Option<pb::Session>, RouteError> {
        let h = &self.headers;
        let text = |field: &str| -> Result<Option<String>, RouteError> {
            match body.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => {
                    Err(RouteError::invalid(field, format!("must be a string. Given: {}", crate::engine::truncated(&other.to_string()))))
                }
            }
        };
        let escalate_only = knob::<bool>(h, headers::ESCALATE_ONLY, "true or false")?.unwrap_or(false);
        let id = text("session_id")?.or_else(|| h.get(headers::SESSION_ID).cloned()).filter(|s| !s.is_empty());
        let session = match (id, text("user")?.filter(|u| !u.is_empty()), h.get(headers::CONVERSATION).filter(|c| !c.is_empty())) {
            (Some(id), _, _) => pb::Session { id, escalate_only, ..Default::default() },
            (None, Some(user), Some(conversation)) => {
                pb::Session { user, conversation: conversation.clone(), escalate_only, ..Default::default() }
            }
            // A `user` alone names a user, not a conversation: no session.
            _ if !escalate_only => return Ok(None),
            _ => pb::Session { escalate_only, ..Default::default() },
        };
        Ok(Some(session))
    }

    fn response_chunk(&mut self, service: &Arc<Service>, b: &HttpBody) {
        if let Some(r) = self.routed.as_mut().filter(|r| r.first_chunk.is_none() && !b.body.is_empty()) {
            r.first_chunk = Some(Instant::now());
        }
        if self.routed.is_some() {
            self.tail.extend_from_slice(&b.body);
            if self.tail.len() > RESPONSE_TAIL_BYTES {
                let cut = self.tail.len() - RESPONSE_TAIL_BYTES;
                self.tail.drain(..cut);
            }
        }
        if b.end_of_stream {
            self.report(service);
        }
    }

    /// Records the feedback of a routed request once.
    fn report(&mut self, service: &Arc<Service>) {
        let (Some(r), Some(status), false) = (&self.routed, self.status, self.reported) else { return };
        self.reported = true;
        let outcome = match status {
            200..=299 => pb::Outcome::Success,
            429 => pb::Outcome::RateLimited,
            408 | 504 => pb::Outcome::Timeout,
            500..=599 => pb::Outcome::ServerError,
            _ => return,
        };
        let (input_tokens, output_tokens) = usage(&self.tail);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // A stream's first chunk is its first token; a whole JSON body has no such moment.
        let first = r.first_chunk.filter(|_| self.streamed && outcome == pb::Outcome::Success);
        let req = pb::FeedbackRequest {
            request_id: r.request_id.clone(),
            model: r.model.clone(),
            outcome: outcome as i32,
            latency_ms: Some(ms(r.at.elapsed())),
            input_tokens,
            output_tokens,
            provider: r.provider.clone(),
            ttft_ms: first.map(|f| ms(f.duration_since(r.at))),
            generation_ms: first.map(|f| ms(f.elapsed())),
            ..Default::default()
        };
        let service = Arc::clone(service);
        tokio::spawn(async move {
            match convert::feedback_record(req) {
                Ok(rec) => {
                    if let Err(e) = service.feedback(rec).await {
                        tracing::warn!(error = %e, "ext_proc: feedback not recorded");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ext_proc: feedback not recorded"),
            }
        });
    }
}

/// `usage.prompt_tokens` and `usage.completion_tokens` from the end of a response body: the JSON
/// body, or the last `data:` event of a server-sent-event stream that has a `usage`.
fn usage(tail: &[u8]) -> (Option<u32>, Option<u32>) {
    let read = |v: &serde_json::Value| {
        let u = v.get("usage")?;
        let n = |k: &str| u.get(k).and_then(|x| x.as_u64()).map(|x| x.min(u64::from(u32::MAX)) as u32);
        Some((n("prompt_tokens"), n("completion_tokens")))
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(tail) {
        return read(&v).unwrap_or((None, None));
    }
    let text = String::from_utf8_lossy(tail);
    if !text.trim_start().starts_with("data:") && !text.contains("\ndata:") {
        // The end of a JSON body too long to keep whole: its last `"usage": {...}` object.
        let Some(at) = text.rfind("\"usage\"") else { return (None, None) };
        let after = text[at + "\"usage\"".len()..].trim_start().strip_prefix(':').unwrap_or_default();
        let value = serde_json::Deserializer::from_str(after).into_iter::<serde_json::Value>().next().and_then(Result::ok);
        return value.and_then(|u| read(&serde_json::json!({ "usage": u }))).unwrap_or((None, None));
    }
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:").map(str::trim))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .find_map(|v| read(&v).filter(|(i, o)| i.is_some() || o.is_some()))
        .unwrap_or((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_a_json_body_or_the_last_event_of_a_stream() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        assert_eq!(usage(body), (Some(12), Some(34)));
        let stream = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        assert_eq!(usage(stream), (Some(5), Some(7)));
        assert_eq!(usage(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n"), (None, None));
        assert_eq!(usage(b"not json"), (None, None));
        // The tail of a JSON body longer than the part kept.
        let long = format!("{}\"}}}}],\"usage\": {{\"prompt_tokens\":9,\"completion_tokens\":70000}}}}", "x".repeat(100));
        assert_eq!(usage(long.as_bytes()), (Some(9), Some(70000)));
    }

    #[test]
    fn knobs_name_the_header_and_the_value_given() {
        let h: HashMap<String, String> = [(headers::COST_WEIGHT.to_string(), "cheap".to_string())].into();
        let e = knob::<f64>(&h, headers::COST_WEIGHT, "a number in [0, 1]").unwrap_err().to_string();
        assert!(e.contains("x-pointsman-cost-weight") && e.contains("\"cheap\""), "{e}");
        assert_eq!(knob::<f64>(&HashMap::new(), headers::COST_WEIGHT, "").unwrap(), None);
    }

    #[test]
    fn the_clients_faults_are_answered_and_pointsmans_are_left_to_envoy() {
        let status = |r: Step| match r {
            Step::Refuse(p) => match p.response {
                Some(Reply::ImmediateResponse(i)) => Ok(i.status.unwrap().code),
                _ => panic!("an immediate response"),
            },
            Step::Fail(s) => Err(s.code()),
            _ => panic!("a refusal or a failure"),
        };
        assert_eq!(status(route_error_reply(RouteError::invalid("cost_weight", "must be in [0, 1]. Given: 2"))), Ok(400));
        assert_eq!(status(route_error_reply(RouteError::Overloaded { waiting: 9, limit: 8 })), Err(tonic::Code::ResourceExhausted));
        assert_eq!(status(route_error_reply(RouteError::DeadlineExceeded)), Err(tonic::Code::DeadlineExceeded));
        assert_eq!(status(route_error_reply(RouteError::Worker("gone".into()))), Err(tonic::Code::Unavailable));
    }

    #[test]
    fn a_clients_copies_of_pointsmans_own_headers_are_removed() {
        let mut x = Exchange::default();
        assert_eq!(x.without_own_headers(), carry_on());
        x.headers = [
            (headers::UPSTREAM.to_string(), "pointsman".to_string()),
            (headers::MODEL.to_string(), "x".to_string()),
            (headers::COST_WEIGHT.to_string(), "0.2".to_string()),
            (headers::REQUEST_ID.to_string(), "mine".to_string()),
        ]
        .into();
        let r = x.without_own_headers();
        let mut removed = r.header_mutation.unwrap().remove_headers;
        removed.sort();
        // The knobs and the request id stay the client's.
        assert_eq!(removed, [headers::MODEL, headers::UPSTREAM]);
        assert!(r.clear_route_cache);
    }

    #[test]
    fn the_conversation_becomes_a_valid_route_query() {
        let x = Exchange::default();
        let body = serde_json::json!({"model": "pointsman/auto", "messages": [
            {"role": "developer", "content": "be brief"}, {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}, {"role": "function", "content": "42"}]});
        let c = openai::conversation(&body, 1024, 1 << 20).unwrap();
        let req = x.query(c, &body).unwrap();
        assert!(req.requirements.as_ref().unwrap().tools);
        let q = convert::route_query(req, &crate::config::ServerConfig::default()).unwrap();
        assert!(q.constraints.requirements.tools);
        assert_eq!(crate::encoder::text::routing_text(&q.messages).unwrap(), "Weather?\n\n42");
    }
}
