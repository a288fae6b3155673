//! Conversions between the wire types (`pb`) and the core, and the wire-level validation.
//! Every rejection names the field, its limit and the value given.
use std::{
    str::FromStr,
    time::{Duration, Instant},
};

use tonic::{metadata::MetadataMap, Status};

use crate::{
    config::ServerConfig,
    encoder::text::{without_control_chars, ChatMessage, Requirements, Role},
    engine::{truncated, Decision, Engine, RouteError, RouteQuery, StageTimings, Tradeoff},
    exploration::Opt,
    health::{EndpointLive, Outcome, Percentile, Quantiles, Snapshot, State},
    logs::{now_ms, FeedbackRecord},
    pb,
    policy::{Constraints, Exclusion, LatencyLimit, Partition, Percentiles, ProviderPreferences, Scored, SortBy},
    session::{SessionKey, SessionOutcome, SessionRequest, Verdict, MAX_SESSION_KEY_CHARS},
};

/// Longest accepted model id in `Feedback`, bytes.
pub const MAX_MODEL_ID_BYTES: usize = 256;
/// Largest accepted `latency_ms` (one day).
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;
/// Largest accepted `cost_usd` for one call.
pub const MAX_COST_USD: f64 = 10_000.0;

/// Longest accepted `request_id`, bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// Longest accepted `requirements.reasoning_effort`, bytes.
pub const MAX_REASONING_EFFORT_BYTES: usize = 32;
/// Largest accepted `provider.preferred_max_latency` cutoff, seconds (one hour).
pub const MAX_PREFERRED_LATENCY_S: f64 = 3600.0;
/// Largest accepted `provider.preferred_min_throughput` cutoff, tokens per second.
pub const MAX_PREFERRED_THROUGHPUT: f64 = 100_000.0;
/// Largest accepted `provider.max_price` figure, USD per million tokens.
pub const MAX_PRICE_USD_PER_MTOK: f64 = 100_000.0;
/// Longest accepted Feedback `provider`, bytes.
pub const MAX_PROVIDER_BYTES: usize = 128;

/// The gRPC status of a routing error: the code its kind calls for and a message for the caller.
pub fn status(e: RouteError) -> Status {
    let msg = e.to_string();
    match e {
        RouteError::InvalidArgument { .. } => Status::invalid_argument(msg),
        RouteError::NoEligibleModel(_) => Status::failed_precondition(msg),
        RouteError::Overloaded { .. } => Status::resource_exhausted(msg),
        RouteError::DeadlineExceeded => Status::deadline_exceeded(msg),
        RouteError::Worker(_) => Status::unavailable(msg),
        RouteError::WorkerPanic(_) => {
            // The panic's text is for the operator's log, not the client.
            tracing::error!(error = %msg, label = e.label(), "routing failed");
            Status::internal("routing failed: an internal error (a worker panicked; the server logged it)")
        }
        RouteError::Encoder(_) | RouteError::Head(_) | RouteError::Runtime(_) | RouteError::Catalog(_) => {
            tracing::error!(error = %msg, label = e.label(), "routing failed");
            Status::internal(msg)
        }
    }
}

/// The call's deadline from its `grpc-timeout` header, counted from `now`; None without one.
///
/// tonic's server enforces the header itself (it drops the handler future when the time is up
/// and answers CANCELLED); the engine gets the deadline too, so that waiting for the encoder ends
/// there and work whose caller stopped waiting is never started. A header that does not follow
/// the gRPC spec (1 to 8 digits and a unit of H, M, S, m, u or n) is ignored, as tonic does.
pub fn deadline(metadata: &MetadataMap, now: Instant) -> Option<Instant> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    };
    now.checked_add(timeout)
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> RouteError {
    RouteError::invalid(field, message)
}

fn check_request_id(id: &str) -> Result<(), RouteError> {
    if id.len() > MAX_REQUEST_ID_BYTES {
        return Err(invalid("request_id", format!("must be at most {MAX_REQUEST_ID_BYTES} bytes. Given: {} bytes", id.len())));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid("request_id", "must not contain control characters"));
    }
    Ok(())
}

/// Turns a wire feedback report into a core record, naming the field, limit and value on error.
pub fn feedback_record(req: pb::FeedbackRequest) -> Result<FeedbackRecord, RouteError> {
    if req.request_id.is_empty() {
        return Err(invalid("request_id", "must be set (the id of the Route call). Given: \"\""));
    }
    check_request_id(&req.request_id)?;
    if req.model.trim().is_empty() {
        return Err(invalid("model", "must name the model that was called. Given: an empty name"));
    }
    if req.model.len() > MAX_MODEL_ID_BYTES {
        return Err(invalid("model", format!("must be at most {MAX_MODEL_ID_BYTES} bytes. Given: {} bytes", req.model.len())));
    }
    if req.model.chars().any(char::is_control) {
        return Err(invalid("model", "must not contain control characters"));
    }
    let outcome = match pb::Outcome::try_from(req.outcome) {
        Ok(pb::Outcome::Success) => Outcome::Success,
        Ok(pb::Outcome::Timeout) => Outcome::Timeout,
        Ok(pb::Outcome::RateLimited) => Outcome::RateLimited,
        Ok(pb::Outcome::ServerError) => Outcome::ServerError,
        Ok(pb::Outcome::Refused) => Outcome::Refused,
        Ok(pb::Outcome::Unspecified) | Err(_) => {
            return Err(invalid(
                "outcome",
                format!("must be one of SUCCESS, TIMEOUT, RATE_LIMITED, SERVER_ERROR, REFUSED. Given: {}", req.outcome),
            ))
        }
    };
    for (field, v) in [("latency_ms", req.latency_ms), ("ttft_ms", req.ttft_ms), ("generation_ms", req.generation_ms)] {
        if let Some(l) = v.filter(|l| !(l.is_finite() && (0.0..=MAX_LATENCY_MS).contains(l))) {
            return Err(invalid(field, format!("must be in [0, {MAX_LATENCY_MS}]. Given: {l}")));
        }
    }
    if req.provider.len() > MAX_PROVIDER_BYTES || req.provider.chars().any(char::is_control) {
        return Err(invalid(
            "provider",
            format!(
                "must be at most {MAX_PROVIDER_BYTES} bytes without control characters. Given: {} bytes: {:?}",
                req.provider.len(),
                truncated(&req.provider)
            ),
        ));
    }
    if let Some(c) = req.cost_usd {
        if !(c.is_finite() && (0.0..=MAX_COST_USD).contains(&c)) {
            return Err(invalid("cost_usd", format!("must be in [0, {MAX_COST_USD}]. Given: {c}")));
        }
    }
    if let Some(q) = req.quality {
        if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
            return Err(invalid("quality", format!("must be in [0, 1]. Given: {q}")));
        }
    }
    Ok(FeedbackRecord {
        request_id: req.request_id,
        ts_ms: now_ms(),
        model: req.model,
        outcome,
        latency_ms: req.latency_ms,
        input_tokens: req.input_tokens,
        output_tokens: req.output_tokens,
        cost_usd: req.cost_usd,
        quality: req.quality,
        provider: (!req.provider.trim().is_empty()).then_some(req.provider),
        ttft_ms: req.ttft_ms,
        generation_ms: req.generation_ms,
        // Decided by `Service::feedback`.
        verified: false,
        offered: false,
        baseline: None,
    })
}

fn health_state(s: &State) -> pb::HealthState {
    match s {
        State::Healthy => pb::HealthState::Healthy,
        State::Degraded => pb::HealthState::Degraded,
        State::CoolingDown { .. } => pb::HealthState::CoolingDown,
        State::Probing => pb::HealthState::Probing,
    }
}

fn percentiles_pb(q: Option<Quantiles>) -> Option<pb::Percentiles> {
    q.map(|q| pb::Percentiles { p50: Some(q.p50), p75: Some(q.p75), p90: Some(q.p90), p99: Some(q.p99) })
}

/// The wire form of an endpoint's breaker and measurements.
pub fn endpoint_measurements(l: &EndpointLive) -> pb::EndpointMeasurements {
    let h = model_health(&l.health);
    pb::EndpointMeasurements {
        state: h.state,
        window_requests: h.window_requests,
        error_rate: h.error_rate,
        rate_limited_rate: l.rate_limited_rate,
        measured_requests: l.measured_requests,
        latency_ms: percentiles_pb(l.latency_ms),
        ttft_ms: percentiles_pb(l.ttft_ms),
        tokens_per_second: percentiles_pb(l.tokens_per_second),
        consecutive_failures: h.consecutive_failures,
        cool_down_remaining_s: h.cool_down_remaining_s,
    }
}

/// Largest accepted `max_latency.ms` (one day).
pub const MAX_LATENCY_LIMIT_MS: f64 = 86_400_000.0;

fn latency_limit(l: Option<pb::LatencyLimit>) -> Result<Option<LatencyLimit>, RouteError> {
    let Some(l) = l else { return Ok(None) };
    if !(l.ms.is_finite() && l.ms > 0.0 && l.ms <= MAX_LATENCY_LIMIT_MS) {
        return Err(invalid("max_latency.ms", format!("must be in (0, {MAX_LATENCY_LIMIT_MS}] milliseconds. Given: {}", l.ms)));
    }
    let percentile = match l.percentile.as_str() {
        "" => Percentile::P50,
        p => Percentile::parse(p)
            .ok_or_else(|| invalid("max_latency.percentile", format!("must be one of p50, p75, p90, p99. Given: {:?}", truncated(p))))?,
    };
    Ok(Some(LatencyLimit { ms: l.ms, percentile }))
}

/// The wire form of a model's health.
pub fn model_health(h: &Snapshot) -> pb::ModelHealth {
    pb::ModelHealth {
        state: health_state(&h.state) as i32,
        window_requests: h.window_requests,
        error_rate: h.error_rate,
        p50_latency_ms: h.p50_latency_ms,
        consecutive_failures: h.consecutive_failures,
        cool_down_remaining_s: match h.state {
            State::CoolingDown { remaining } => remaining.as_secs_f64(),
            _ => 0.0,
        },
    }
}

fn check_list(field: &str, list: &[String], limit: usize) -> Result<Vec<String>, RouteError> {
    if list.len() > limit {
        return Err(invalid(field, format!("must have at most {limit} entries. Given: {}", list.len())));
    }
    if let Some(i) = list.iter().position(|s| s.trim().is_empty()) {
        return Err(invalid(format!("{field}[{i}]"), "must be a non-empty name. Given: \"\""));
    }
    Ok(list.to_vec())
}

fn percentiles(field: &str, p: Option<pb::Percentiles>, max: f64) -> Result<Percentiles, RouteError> {
    let Some(p) = p else { return Ok(Percentiles::default()) };
    for (name, v) in [("p50", p.p50), ("p75", p.p75), ("p90", p.p90), ("p99", p.p99)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0 && *v <= max)) {
            return Err(invalid(format!("{field}.{name}"), format!("must be in (0, {max}]. Given: {v}")));
        }
    }
    Ok(Percentiles { p50: p.p50, p75: p.p75, p90: p.p90, p99: p.p99 })
}

/// The wire provider preferences as the policy's, naming the field, limit and value on error.
pub fn provider_preferences(p: Option<pb::ProviderPreferences>, server: &ServerConfig) -> Result<ProviderPreferences, RouteError> {
    let Some(p) = p else { return Ok(ProviderPreferences::default()) };
    let lim = server.max_list_entries;
    let sort = match p.sort.as_str() {
        "" => None,
        "price" => Some(SortBy::Price),
        "throughput" => Some(SortBy::Throughput),
        "latency" => Some(SortBy::Latency),
        other => return Err(invalid("provider.sort", format!("must be one of price, throughput, latency. Given: {:?}", truncated(other)))),
    };
    let partition = match p.partition.as_str() {
        "" | "model" => Partition::Model,
        "none" => Partition::None,
        other => return Err(invalid("provider.partition", format!("must be one of model, none. Given: {:?}", truncated(other)))),
    };
    let deny_data_collection = match p.data_collection.as_str() {
        "" | "allow" => false,
        "deny" => true,
        other => return Err(invalid("provider.data_collection", format!("must be one of allow, deny. Given: {:?}", truncated(other)))),
    };
    let quantizations = check_list("provider.quantizations", &p.quantizations, lim)?;
    if let Some((i, q)) = quantizations.iter().enumerate().find(|(_, q)| !crate::catalog::QUANTIZATIONS.contains(&q.as_str())) {
        return Err(invalid(
            format!("provider.quantizations[{i}]"),
            format!("must be one of {}. Given: {:?}", crate::catalog::QUANTIZATIONS.join(", "), truncated(q)),
        ));
    }
    let max_price = p.max_price.unwrap_or_default();
    for (field, v) in [("provider.max_price.prompt", max_price.prompt), ("provider.max_price.completion", max_price.completion)] {
        if let Some(v) = v.filter(|v| !(v.is_finite() && (0.0..=MAX_PRICE_USD_PER_MTOK).contains(v))) {
            return Err(invalid(field, format!("must be in [0, {MAX_PRICE_USD_PER_MTOK}] USD per million tokens. Given: {v}")));
        }
    }
    Ok(ProviderPreferences {
        order: check_list("provider.order", &p.order, lim)?,
        only: check_list("provider.only", &p.only, lim)?,
        ignore: check_list("provider.ignore", &p.ignore, lim)?,
        allow_fallbacks: p.allow_fallbacks.unwrap_or(true),
        sort,
        partition,
        max_prompt_price: max_price.prompt,
        max_completion_price: max_price.completion,
        quantizations,
        deny_data_collection,
        zdr: p.zdr,
        require_parameters: p.require_parameters,
        preferred_max_latency: percentiles("provider.preferred_max_latency", p.preferred_max_latency, MAX_PREFERRED_LATENCY_S)?,
        preferred_min_throughput: percentiles("provider.preferred_min_throughput", p.preferred_min_throughput, MAX_PREFERRED_THROUGHPUT)?,
    })
}

fn requirements(r: Option<pb::Requirements>) -> Result<Requirements, RouteError> {
    let Some(r) = r else { return Ok(Requirements::default()) };
    if r.reasoning_effort.len() > MAX_REASONING_EFFORT_BYTES || r.reasoning_effort.chars().any(char::is_control) {
        return Err(invalid(
            "requirements.reasoning_effort",
            format!(
                "must be at most {MAX_REASONING_EFFORT_BYTES} bytes without control characters. Given: {:?}",
                truncated(&r.reasoning_effort)
            ),
        ));
    }
    if r.max_output_tokens == Some(0) {
        return Err(invalid("requirements.max_output_tokens", "must be > 0 when set. Given: 0"));
    }
    Ok(Requirements {
        tools: r.tools,
        images: r.images,
        audio: r.audio,
        files: r.files,
        json_schema: r.json_schema,
        reasoning_effort: (!r.reasoning_effort.is_empty()).then_some(r.reasoning_effort),
        max_output_tokens: r.max_output_tokens,
    })
}

fn session_value(field: &str, v: &str) -> Result<(), RouteError> {
    let n = v.chars().count();
    if n > MAX_SESSION_KEY_CHARS {
        return Err(invalid(
            field,
            format!("must be at most {MAX_SESSION_KEY_CHARS} characters. Given: {n} characters ({:?})", truncated(v)),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, format!("must not contain control characters. Given: {:?}", truncated(v))));
    }
    if v.trim().is_empty() {
        return Err(invalid(field, format!("must not be blank when set. Given: {v:?}")));
    }
    Ok(())
}

/// The request's session, naming the field, limit and value on error: an `id`, or a `user` with
/// its `conversation`.
pub fn session_request(s: Option<pb::Session>) -> Result<Option<SessionRequest>, RouteError> {
    let Some(s) = s else { return Ok(None) };
    let key = if !s.id.is_empty() {
        session_value("session.id", &s.id)?;
        SessionKey::of_id(&s.id)
    } else if !s.user.is_empty() || !s.conversation.is_empty() {
        if s.conversation.is_empty() {
            return Err(invalid(
                "session.conversation",
                format!("must be set with session.user (each of a user's conversations is a session of its own). Given: user {:?} and no conversation", truncated(&s.user)),
            ));
        }
        if s.user.is_empty() {
            return Err(invalid(
                "session.user",
                format!("must be set with session.conversation. Given: conversation {:?} and no user", truncated(&s.conversation)),
            ));
        }
        session_value("session.user", &s.user)?;
        session_value("session.conversation", &s.conversation)?;
        SessionKey::of_user(&s.user, &s.conversation)
    } else {
        if s.escalate_only {
            return Err(invalid(
                "session.escalate_only",
                "needs a session: set session.id, or session.user and session.conversation. Given: true with neither",
            ));
        }
        return Ok(None);
    };
    Ok(Some(SessionRequest { key, escalate_only: s.escalate_only }))
}

/// Turns a wire request into a core query, checking everything that needs no catalog.
pub fn route_query(req: pb::RouteRequest, server: &ServerConfig) -> Result<RouteQuery, RouteError> {
    check_request_id(&req.request_id)?;
    let request_id = if req.request_id.is_empty() { uuid::Uuid::now_v7().to_string() } else { req.request_id };

    let messages = match (req.messages.is_empty(), req.prompt.is_empty()) {
        (true, true) => {
            return Err(invalid(
                "messages",
                "must hold at least one message, or `prompt` must be set. Given: no messages and an empty prompt",
            ))
        }
        (false, false) => {
            return Err(invalid(
                "prompt",
                format!("must be empty when `messages` is set. Given: {} messages and a prompt", req.messages.len()),
            ))
        }
        (true, false) => {
            let prompt = without_control_chars(req.prompt);
            if prompt.trim().is_empty() {
                return Err(invalid("prompt", "must contain non-whitespace text. Given: only whitespace or control characters"));
            }
            vec![ChatMessage::user(prompt)]
        }
        (false, true) => {
            if req.messages.len() > server.max_messages {
                return Err(invalid(
                    "messages",
                    format!("must hold at most {} messages (server.max_messages). Given: {}", server.max_messages, req.messages.len()),
                ));
            }
            let messages = req
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| {
                    let role = Role::from_str(&m.role).map_err(|()| {
                        invalid(
                            format!("messages[{i}].role"),
                            format!("must be one of system, developer, user, assistant, tool, function. Given: {:?}", truncated(&m.role)),
                        )
                    })?;
                    // Empty is normal: an assistant turn that only calls tools, an image-only turn.
                    Ok(ChatMessage { role, content: without_control_chars(m.content) })
                })
                .collect::<Result<Vec<_>, RouteError>>()?;
            if messages.iter().all(|m| m.content.trim().is_empty()) {
                return Err(invalid(
                    "messages",
                    format!("must hold at least one message with text to route on. Given: {} messages, none with text", messages.len()),
                ));
            }
            messages
        }
    };

    let tradeoff = match (req.cost_weight, req.profile.is_empty()) {
        (Some(_), false) => {
            return Err(invalid("profile", format!("must be empty when `cost_weight` is set. Given: {:?}", truncated(&req.profile))))
        }
        (Some(w), true) => {
            if !(0.0..=1.0).contains(&w) {
                return Err(invalid("cost_weight", format!("must be in [0, 1]. Given: {w}")));
            }
            Tradeoff::Weight(w)
        }
        (None, false) => Tradeoff::Profile(req.profile),
        (None, true) => Tradeoff::Default,
    };
    if let Some(c) = req.max_cost_usd {
        if !(c.is_finite() && c > 0.0) {
            return Err(invalid("max_cost_usd", format!("must be a finite number > 0. Given: {c}")));
        }
    }
    if let Some(q) = req.min_quality {
        if !(0.0..=1.0).contains(&q) {
            return Err(invalid("min_quality", format!("must be in [0, 1]. Given: {q}")));
        }
    }
    let max_fallbacks = req.max_fallbacks.unwrap_or(server.default_fallbacks);
    if max_fallbacks > server.max_fallbacks {
        return Err(invalid("max_fallbacks", format!("must be <= {}. Given: {max_fallbacks}", server.max_fallbacks)));
    }
    let lim = server.max_list_entries;
    let constraints = Constraints {
        max_cost_usd: req.max_cost_usd,
        min_quality: req.min_quality,
        allowed_models: check_list("allowed_models", &req.allowed_models, lim)?,
        denied_models: check_list("denied_models", &req.denied_models, lim)?,
        allowed_providers: check_list("allowed_providers", &req.allowed_providers, lim)?,
        denied_providers: check_list("denied_providers", &req.denied_providers, lim)?,
        max_fallbacks: max_fallbacks as usize,
        out_of_domain_p: 0.0,
        requirements: requirements(req.requirements)?,
        provider: provider_preferences(req.provider, server)?,
        max_latency: latency_limit(req.max_latency)?,
    };
    let explore = match req.explore {
        None => Opt::Default,
        Some(true) => Opt::In,
        Some(false) => Opt::Out,
    };
    let session = session_request(req.session)?;
    Ok(RouteQuery { request_id, messages, tradeoff, constraints, explain: req.explain, deadline: None, explore, session })
}

fn endpoint(e: &crate::catalog::Endpoint, cost_usd: f64, latency_ms: f64, measured: bool) -> pb::Endpoint {
    pb::Endpoint {
        provider: e.provider.clone(),
        input_usd_per_mtok: e.input_usd_per_mtok,
        output_usd_per_mtok: e.output_usd_per_mtok,
        cached_input_usd_per_mtok: e.cached_input_usd_per_mtok,
        context_tokens: e.context_tokens,
        max_output_tokens: e.max_output_tokens,
        quantization: e.quantization().to_string(),
        predicted_cost_usd: cost_usd,
        predicted_latency_ms: latency_ms,
        measured: None,
        latency_measured: measured,
    }
}

fn candidate(engine: &Engine, s: &Scored) -> pb::Candidate {
    let m = &engine.catalog().models()[s.model];
    let p = s.prediction;
    let endpoints = s
        .order
        .iter()
        .map(|&j| {
            let es = &s.endpoints[j];
            endpoint(&m.endpoints[j], es.cost_usd, es.latency_ms, es.measured)
        })
        .collect();
    pb::Candidate {
        model: m.id.clone(),
        provider: m.endpoints[s.first_endpoint()].provider.clone(),
        predicted_quality: p.map_or(0.0, |p| p.quality),
        predicted_output_tokens: p.map_or(0, |p| p.output_tokens.round().clamp(0.0, f64::from(u32::MAX)) as u32),
        predicted_cost_usd: s.cost_usd,
        utility: if s.utility.is_finite() { s.utility } else { 0.0 },
        predicted_latency_ms: s.latency_ms,
        health: health_state(&s.health.state) as i32,
        endpoints,
        latency_measured: s.endpoints.get(s.first_endpoint()).is_some_and(|e| e.measured),
    }
}

fn reason(e: &Option<Exclusion>) -> pb::ExclusionReason {
    use pb::ExclusionReason as R;
    match e {
        None => R::Unspecified,
        Some(Exclusion::NotCovered) => R::NotCovered,
        Some(Exclusion::OutOfDomain { .. }) => R::OutOfDomain,
        Some(Exclusion::ModelNotAllowed) => R::ModelNotAllowed,
        Some(Exclusion::ProviderNotAllowed) => R::ProviderNotAllowed,
        Some(Exclusion::ContextWindow { .. }) => R::ContextWindow,
        Some(Exclusion::MinQuality { .. }) => R::MinQuality,
        Some(Exclusion::Budget { .. }) => R::Budget,
        Some(Exclusion::Unhealthy(_) | Exclusion::EndpointUnhealthy(_)) => R::Unhealthy,
        Some(Exclusion::MaxLatency { .. }) => R::MaxLatency,
        Some(Exclusion::BelowCutoff | Exclusion::NoEndpointFallbacks) => R::BelowCutoff,
        Some(Exclusion::Capability(_)) => R::Capability,
        Some(
            Exclusion::NotInOnly
            | Exclusion::Ignored
            | Exclusion::Quantization(_)
            | Exclusion::DataCollection(_)
            | Exclusion::Zdr(_)
            | Exclusion::Undeclared(_)
            | Exclusion::MaxPrice { .. }
            | Exclusion::NotInOrder,
        ) => R::ProviderPreferences,
    }
}

/// Why a model was or was not chosen, in words: its exclusion, or what the router doubted about a
/// model it kept (outside the head's domain, unhealthy) because nothing else was left.
fn explanation_detail(s: &Scored) -> String {
    if let Some(e) = &s.exclusion {
        if e.is_provider_preference() || matches!(e, Exclusion::Capability(_) | Exclusion::MaxLatency { .. }) {
            return format!("no endpoint passes `{}`; the closest: {}", e.constraint(), e.detail());
        }
        return e.detail();
    }
    let mut doubts = Vec::new();
    if let Some(e) = &s.kept_despite {
        doubts.push(format!("{} (kept: no model inside the head's domain meets the request's constraints)", e.detail()));
    }
    if s.health_tier() > 0 {
        doubts.push(s.health.detail());
    }
    if doubts.is_empty() {
        "chosen".into()
    } else {
        format!("chosen, but {}", doubts.join("; "))
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl From<StageTimings> for pb::Timings {
    fn from(t: StageTimings) -> Self {
        pb::Timings {
            prepare_us: micros(t.prepare),
            encode_us: micros(t.encode),
            predict_us: micros(t.predict),
            rank_us: micros(t.rank),
            total_us: micros(t.total),
            cache_hit: t.cache_hit,
        }
    }
}

/// The wire form of a session's part in a decision.
pub fn session_decision(o: &SessionOutcome) -> pb::SessionDecision {
    let verdict = match o.verdict {
        Verdict::New => pb::SessionVerdict::New,
        Verdict::Kept => pb::SessionVerdict::Kept,
        Verdict::Moved => pb::SessionVerdict::Moved,
    };
    pb::SessionDecision {
        verdict: verdict as i32,
        reason: o.reason.as_str().to_string(),
        detail: o.detail.clone(),
        previous_model: o.previous.as_ref().map(|p| p.model.clone()).unwrap_or_default(),
        previous_provider: o.previous.as_ref().map(|p| p.provider.clone()).unwrap_or_default(),
        cached_saving_usd: o.saving_usd,
        saving_utility: o.saving_utility,
        utility_gain: o.gain,
        turn: o.turn,
        session_hash: o.key.hex(),
    }
}

/// Builds the wire response for a decision; with `explain`, `live` (the endpoints' state as
/// routed, `[model][endpoint]`, possibly empty) fills each explained endpoint's measurements.
pub fn route_response(engine: &Engine, d: Decision, explain: bool, savings: Option<crate::savings::Estimate>) -> pb::RouteResponse {
    route_response_live(engine, d, explain, &[], savings)
}

/// [`route_response`] with the endpoints' live state for the explanations.
pub fn route_response_live(
    engine: &Engine,
    d: Decision,
    explain: bool,
    live: &[Vec<EndpointLive>],
    savings: Option<crate::savings::Estimate>,
) -> pb::RouteResponse {
    let limit = d.constraints.max_latency;
    let r = &d.ranking;
    let candidates = r.chosen.iter().map(|&i| candidate(engine, &r.scored[i])).collect();
    let models = engine.catalog().models();
    let attempts = r
        .attempts
        .iter()
        .map(|a| {
            let m = &models[r.scored[a.scored].model];
            pb::Attempt { model: m.id.clone(), provider: m.endpoints[a.endpoint].provider.clone() }
        })
        .collect();
    let explanations = if explain {
        r.scored
            .iter()
            .map(|s| pb::Explanation {
                candidate: Some(candidate(engine, s)),
                rank: s.rank as u32,
                reason: reason(&s.exclusion) as i32,
                detail: explanation_detail(s),
                kept_despite: reason(&s.kept_despite) as i32,
                endpoints: s
                    .endpoints
                    .iter()
                    .map(|es| {
                        let l = live.get(s.model).and_then(|v| v.get(es.endpoint));
                        let mut wire = endpoint(&models[s.model].endpoints[es.endpoint], es.cost_usd, es.latency_ms, es.measured);
                        wire.measured = l.map(endpoint_measurements);
                        let mut detail = match &es.exclusion {
                            Some(e) => format!("`{}`: {}", e.constraint(), e.detail()),
                            None if es.misses_preference => {
                                "usable, but after the endpoints that meet provider.preferred_max_latency/preferred_min_throughput".into()
                            }
                            None => "usable".into(),
                        };
                        if let (Some(limit), None) = (limit, &es.exclusion) {
                            if l.and_then(|l| l.latency_ms).is_none() {
                                detail.push_str(&format!(
                                    "; not measured yet (fewer than health.min_measured_requests successful reports in the window), so max_latency_ms {} ms at {} does not apply to it",
                                    limit.ms,
                                    limit.percentile.as_str()
                                ));
                            }
                        }
                        pb::EndpointExplanation { endpoint: Some(wire), rank: es.rank as u32, reason: reason(&es.exclusion) as i32, detail }
                    })
                    .collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    pb::RouteResponse {
        request_id: d.request_id,
        candidates,
        router_version: engine.version().to_string(),
        timings: Some(d.timings.into()),
        explanations,
        cost_weight: d.cost_weight,
        input_tokens: d.input_tokens,
        profile: d.profile.unwrap_or_default(),
        attempts,
        propensity: d.choice.propensity,
        explored: d.choice.explored,
        shadow: d.shadow.map(|s| pb::ShadowDecision {
            head_id: s.head_id,
            model: s.model.unwrap_or_default(),
            predicted_quality: s.quality,
            predicted_cost_usd: s.cost_usd,
            agrees: s.agrees,
        }),
        session: d.session.as_ref().map(session_decision),
        savings: savings.map(|s| pb::Savings {
            baseline_model: s.baseline_model,
            baseline_cost_usd: s.baseline_cost_usd,
            baseline_quality: s.baseline_quality,
            predicted_cost_usd: s.predicted_cost_usd,
            saving_usd: s.saving_usd,
        }),
    }
}

/// Builds the catalog listing; `endpoints[i][j]` is endpoint `j` of model `i` (empty: none measured).
pub fn list_models(engine: &Engine, health: &[Snapshot], endpoints: &[Vec<EndpointLive>]) -> pb::ListModelsResponse {
    let cfg = engine.config();
    pb::ListModelsResponse {
        models: engine
            .catalog()
            .models()
            .iter()
            .enumerate()
            .map(|(i, m)| pb::ModelInfo {
                model: m.id.clone(),
                provider: m.provider().to_string(),
                input_usd_per_mtok: m.primary().input_usd_per_mtok,
                output_usd_per_mtok: m.primary().output_usd_per_mtok,
                context_tokens: m.primary().context_tokens,
                covered_by_head: engine.covers(i),
                health: health.get(i).map(model_health),
                endpoints: m
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(j, e)| pb::Endpoint {
                        measured: endpoints.get(i).and_then(|v| v.get(j)).map(endpoint_measurements),
                        ..endpoint(e, 0.0, 0.0, false)
                    })
                    .collect(),
            })
            .collect(),
        router_version: engine.version().to_string(),
        encoder: engine.encoder().id().to_string(),
        profiles: cfg.routing.profiles.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        default_profile: cfg.routing.default_profile.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        m
    }

    #[test]
    fn grpc_timeout_becomes_a_deadline() {
        let now = Instant::now();
        let d = |v: &str| deadline(&with_timeout(v), now).map(|d| d - now);
        assert_eq!(d("5m"), Some(Duration::from_millis(5)));
        assert_eq!(d("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(d("3M"), Some(Duration::from_secs(180)));
        assert_eq!(d("30S"), Some(Duration::from_secs(30)));
        assert_eq!(d("250u"), Some(Duration::from_micros(250)));
        assert_eq!(d("99999999n"), Some(Duration::from_nanos(99_999_999)));
        // Not the gRPC format: ignored, like tonic does.
        for bad in ["", "m", "5", "5x", "123456789m", "-5m", "5 m", "1.5S"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        assert_eq!(deadline(&MetadataMap::new(), now), None);
        // What tonic's client sends for `Request::set_timeout`.
        let mut r = tonic::Request::new(());
        r.set_timeout(Duration::from_millis(5));
        assert_eq!(deadline(r.metadata(), now).map(|d| d - now), Some(Duration::from_millis(5)));
    }

    #[test]
    fn deadline_and_worker_panic_map_to_their_status() {
        assert_eq!(status(RouteError::DeadlineExceeded).code(), tonic::Code::DeadlineExceeded);
        let s = status(RouteError::WorkerPanic("boom".into()));
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(!s.message().contains("boom") && s.message().contains("panicked"), "{}", s.message());
        let s = status(RouteError::Overloaded { waiting: 8, limit: 8 });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    }
}
