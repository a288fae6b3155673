//! Envoy's external processor (`envoy.service.ext_proc.v3.ExternalProcessor`): Pointsman inside
//! the gateway's request path, with no glue code in the gateway or the client.
//!
//! Envoy opens one bidirectional stream per HTTP request and sends what its filter's processing
//! mode asks for (the shipped `deploy/envoy/envoy.yaml`: request headers, the request body
//! buffered, response headers, the response body streamed chunk by chunk). Per stream:
//!
//! 1. **Request headers**: kept (the per-request knobs ride on them, see [`headers`]).
//! 2. **Request body** (the whole OpenAI-compatible chat request): when its `model` is one of
//!    `ext_proc.route_models` (`pointsman/auto` by default), the conversation is routed by the
//!    same engine, validation, profiles and constraints as `Route`; the body's `model` is
//!    rewritten to the chosen model, and headers name the model, its upstream (provider), the
//!    fallbacks and the decision id; the route cache is cleared so Envoy routes on them. Any
//!    other `model` passes through untouched (with the upstream header when the catalog knows
//!    the model). A request at fault is answered with an OpenAI-style error naming the field, its
//!    limit and the value given (400 for a bad value, 422 when its constraints leave no model);
//!    when Pointsman cannot route for a reason of its own (loading, overloaded, a deadline, an
//!    internal error) the stream ends with the gRPC status and Envoy's `failure_mode_allow`
//!    decides, as when Pointsman is down.
//! 3. **Response headers and body**: the status decides the outcome (2xx success, 429 rate
//!    limited, 408/504 timeout, other 5xx server error; other 4xx are the client's fault and
//!    report nothing); the body is passed on chunk by chunk (so streams stay streams) while its
//!    tail is kept to read `usage` (the JSON body, or the last `data:` event of a stream); at its
//!    end `Feedback` is recorded with the latency from the decision, so the loop closes by itself.
//!
//! If Pointsman is down or slow, what happens is Envoy's choice: with `failure_mode_allow: true`
//! (shipped) the request goes on unrouted to the default upstream; with `false` it fails with 500.
use std::{collections::HashMap, pin::Pin, sync::Arc, time::Instant};

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

use super::{convert, pb};
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
    /// In: the request id (else Envoy's `x-request-id`, else a new UUID). Out: the decision id.
    pub const REQUEST_ID: &str = "x-pointsman-request-id";
    /// In (Envoy's own): the request id Envoy generates or forwards.
    pub const ENVOY_REQUEST_ID: &str = "x-request-id";
    /// Out: the chosen model.
    pub const MODEL: &str = "x-pointsman-model";
    /// Out: the chosen model's provider, which the Envoy config maps to a cluster.
    pub const UPSTREAM: &str = "x-pointsman-upstream";
    /// Out: the fallbacks in order, `model@provider`, comma-separated.
    pub const FALLBACKS: &str = "x-pointsman-fallbacks";
}

/// What a routed request needs for its feedback.
#[derive(Debug, Clone)]
struct Routed {
    request_id: String,
    model: String,
    at: Instant,
}

/// Most bytes of a response body kept to read its `usage` (the end of it: a stream's usage is in
/// its last event).
const RESPONSE_TAIL_BYTES: usize = 64 * 1024;

/// One HTTP request's state across its stream.
#[derive(Debug, Default)]
struct Exchange {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    routed: Option<Routed>,
    status: Option<u16>,
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
                let reply = x.handle(&service, msg).await;
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

/// What a routing error becomes: the request's own fault is answered to the client (400 for a
/// bad value, 422 when its constraints leave no model); Pointsman's (loading, overloaded, a
/// deadline, an internal error) ends the stream with the gRPC status, so Envoy applies its own
/// `failure_mode_allow`: on, the request goes on unrouted, as when Pointsman is down; off, 500.
fn route_error_reply(e: RouteError) -> Result<ProcessingResponse, Status> {
    match e {
        RouteError::InvalidArgument { .. } => Ok(refuse(400, "invalid_request_error", &e.to_string())),
        RouteError::NoEligibleModel(_) => Ok(refuse(422, "no_eligible_model", &e.to_string())),
        other => Err(Status::from(other)),
    }
}

/// Our role for an OpenAI chat role: `developer` (the newer name of `system`) is `system`, the
/// legacy `function` is `tool`; the rest as given (an unknown one is refused, naming the field).
fn openai_role(role: &str) -> &str {
    match role {
        "developer" => "system",
        "function" => "tool",
        other => other,
    }
}

/// The text of an OpenAI message `content`: a string, or the text parts of an array.
fn content_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(|t| t.as_str())).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
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
                Reply::RequestHeaders(HeadersResponse { response: Some(carry_on()) })
            }
            Some(Phase::RequestBody(b)) => {
                self.body.extend_from_slice(&b.body);
                if !b.end_of_stream {
                    Reply::RequestBody(BodyResponse { response: Some(carry_on()) })
                } else {
                    let body = std::mem::take(&mut self.body);
                    let stats = service.stats();
                    match self.route(service, &body).await {
                        Ok(r) => {
                            let n = if self.routed.is_some() { &stats.ext_proc_routed } else { &stats.ext_proc_passed };
                            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Reply::RequestBody(BodyResponse { response: Some(r) })
                        }
                        Err(Ok(refusal)) => {
                            stats.ext_proc_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return Ok(refusal);
                        }
                        Err(Err(status)) => {
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
            None => Reply::RequestHeaders(HeadersResponse { response: Some(carry_on()) }),
        };
        Ok(ProcessingResponse { response: Some(reply), ..Default::default() })
    }

    /// Routes the chat request `body` when its model asks for it; the body and header changes.
    async fn route(&mut self, service: &Arc<Service>, body: &[u8]) -> Result<CommonResponse, Result<ProcessingResponse, Status>> {
        let Some(engine) = service.engine() else {
            return Err(Err(Status::unavailable("models are loading")));
        };
        let config = engine.config();
        let mut json: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            // Not a JSON object: not a chat request; pass it on untouched.
            _ => return Ok(carry_on()),
        };
        let model = json.get("model").and_then(|m| m.as_str()).unwrap_or_default().to_string();
        if !config.ext_proc.route_models.contains(&model) {
            // An explicit model passes through; Envoy routes it by its provider when we know it.
            return Ok(match engine.catalog().get(&model) {
                Some(m) => CommonResponse {
                    header_mutation: Some(HeaderMutation {
                        set_headers: vec![set(headers::MODEL, &m.id), set(headers::UPSTREAM, &m.provider)],
                        ..Default::default()
                    }),
                    clear_route_cache: true,
                    ..Default::default()
                },
                None => carry_on(),
            });
        }
        let query = self.query(&json).and_then(|req| {
            // The same size limit as `Route`'s, on the request it amounts to.
            let size = prost::Message::encoded_len(&req);
            if size > config.server.max_request_bytes {
                return Err(RouteError::invalid(
                    "messages",
                    format!(
                        "amount to a {size}-byte routing request, over the limit of {} bytes (server.max_request_bytes)",
                        config.server.max_request_bytes
                    ),
                ));
            }
            convert::route_query(req, &config.server)
        });
        let call = service.route_call();
        let query = match query {
            Ok(q) => q,
            Err(e) => {
                call.error(e.label());
                return Err(route_error_reply(e));
            }
        };
        let decision = match service.route(call, &engine, query).await {
            Ok(d) => convert::route_response(&engine, d, false),
            Err(e) => return Err(route_error_reply(e)),
        };
        let Some(primary) = decision.candidates.first() else {
            return Err(Err(Status::internal("the router named no model")));
        };
        json["model"] = serde_json::Value::String(primary.model.clone());
        let fallbacks: Vec<String> = decision.candidates[1..].iter().map(|c| format!("{}@{}", c.model, c.provider)).collect();
        self.routed = Some(Routed { request_id: decision.request_id.clone(), model: primary.model.clone(), at: Instant::now() });
        let body = serde_json::to_vec(&json).expect("a JSON value serialises. This is a bug.");
        Ok(CommonResponse {
            header_mutation: Some(HeaderMutation {
                set_headers: vec![
                    set(headers::MODEL, &primary.model),
                    set(headers::UPSTREAM, &primary.provider),
                    set(headers::FALLBACKS, &fallbacks.join(",")),
                    set(headers::REQUEST_ID, &decision.request_id),
                    set("content-length", &body.len().to_string()),
                ],
                ..Default::default()
            }),
            body_mutation: Some(BodyMutation { mutation: Some(Mutation::Body(body)) }),
            clear_route_cache: true,
            ..Default::default()
        })
    }

    /// The `RouteRequest` this chat request and its headers ask for.
    fn query(&self, json: &serde_json::Value) -> Result<pb::RouteRequest, RouteError> {
        let h = &self.headers;
        let messages = match json.get("messages") {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|m| pb::Message {
                    role: openai_role(m.get("role").and_then(|r| r.as_str()).unwrap_or_default()).to_string(),
                    content: m.get("content").map(content_text).unwrap_or_default(),
                })
                .collect(),
            _ => return Err(RouteError::invalid("messages", "must be the chat request's array of messages. Given: none")),
        };
        let request_id = h.get(headers::REQUEST_ID).or_else(|| h.get(headers::ENVOY_REQUEST_ID)).cloned().unwrap_or_default();
        Ok(pb::RouteRequest {
            request_id,
            messages,
            profile: h.get(headers::PROFILE).cloned().unwrap_or_default(),
            cost_weight: knob(h, headers::COST_WEIGHT, "a number in [0, 1]")?,
            max_cost_usd: knob(h, headers::MAX_COST_USD, "a number of USD")?,
            min_quality: knob(h, headers::MIN_QUALITY, "a number in [0, 1]")?,
            max_fallbacks: knob(h, headers::MAX_FALLBACKS, "a whole number")?,
            ..Default::default()
        })
    }

    fn response_chunk(&mut self, service: &Arc<Service>, b: &HttpBody) {
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
        let req = pb::FeedbackRequest {
            request_id: r.request_id.clone(),
            model: r.model.clone(),
            outcome: outcome as i32,
            latency_ms: Some(r.at.elapsed().as_secs_f64() * 1000.0),
            input_tokens,
            output_tokens,
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
        let status = |r: Result<ProcessingResponse, Status>| match r.map(|p| p.response) {
            Ok(Some(Reply::ImmediateResponse(i))) => Ok(i.status.unwrap().code),
            Ok(_) => panic!("an immediate response"),
            Err(s) => Err(s.code()),
        };
        assert_eq!(status(route_error_reply(RouteError::invalid("cost_weight", "must be in [0, 1]. Given: 2"))), Ok(400));
        assert_eq!(status(route_error_reply(RouteError::Overloaded { waiting: 9, limit: 8 })), Err(tonic::Code::ResourceExhausted));
        assert_eq!(status(route_error_reply(RouteError::DeadlineExceeded)), Err(tonic::Code::DeadlineExceeded));
        assert_eq!(status(route_error_reply(RouteError::Worker("gone".into()))), Err(tonic::Code::Unavailable));
    }

    #[test]
    fn openai_roles_map_to_ours() {
        let x = Exchange::default();
        let body = serde_json::json!({"model": "pointsman/auto", "messages": [
            {"role": "developer", "content": "be brief"}, {"role": "function", "content": "42"}, {"role": "user", "content": "hi"}]});
        let req = x.query(&body).unwrap();
        let roles: Vec<&str> = req.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "tool", "user"]);
        let server = crate::config::ServerConfig::default();
        assert!(convert::route_query(req, &server).is_ok());
        let bad = serde_json::json!({"messages": [{"role": "narrator", "content": "x"}]});
        let e = convert::route_query(x.query(&bad).unwrap(), &server).unwrap_err().to_string();
        assert!(e.contains("messages[0].role") && e.contains("narrator"), "{e}");
    }

    #[test]
    fn content_parts_are_joined() {
        let v = serde_json::json!([{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {}}, {"type": "text", "text": "b"}]);
        assert_eq!(content_text(&v), "a\nb");
        assert_eq!(content_text(&serde_json::json!("plain")), "plain");
    }
}
