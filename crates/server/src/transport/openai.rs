//! An OpenAI chat-completions request as a `RouteRequest`: the one mapping of Envoy's external
//! processor, mirrored by the Python client (`clients/python/src/pointsman/client.py`,
//! `route_messages`). The routing text itself is the server's (`encoder::text::routing_text`).
//!
//! 1. Roles: `developer` is `system`, the legacy `function` is `tool`; `system`, `user`,
//!    `assistant` and `tool` as given. A message with another role (or none) is left out: it is
//!    not a valid OpenAI request, and the upstream will say so.
//! 2. Content: a string as is; an array of parts gives the `text` of its `text` (`input_text`)
//!    parts joined with "\n"; `null` (an assistant turn that only calls tools) or anything else
//!    gives "".
//! 3. Requirements: tools offered (`tools`, `functions`), tool calls or tool turns; image, audio
//!    and file parts; `response_format.type = "json_schema"`; `reasoning_effort` (or OpenRouter's
//!    `reasoning.effort`); `max_completion_tokens`, else `max_tokens`.
//! 6. Provider preferences: OpenRouter's `provider` object, field for field (see [`provider`]).
//! 4. Size: the conversation's tail is kept: at most `max_messages` messages, and within
//!    `max_bytes` (the oldest messages go first; a single message too large keeps its start).
//! 5. No message with text: nothing to route on; the caller passes the request through.
use serde_json::Value;

use super::pb;

/// Bytes counted per message beside its role and content (protobuf framing, as an estimate).
const MESSAGE_OVERHEAD_BYTES: usize = 16;

/// Why a chat request is not routed but passed through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unroutable {
    /// `messages` is missing or not an array.
    NoMessages,
    /// No message has text (only images, only tool calls).
    NoText,
}

impl Unroutable {
    /// Stable snake_case label (metrics).
    pub fn label(self) -> &'static str {
        match self {
            Unroutable::NoMessages => "no_messages",
            Unroutable::NoText => "no_text",
        }
    }
}

/// The routable part of a chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The messages kept, oldest first.
    pub messages: Vec<pb::Message>,
    /// What the request needs beyond text.
    pub requirements: pb::Requirements,
    /// Messages left out: of unknown roles, or older than the tail kept.
    pub dropped: usize,
}

/// Our role for an OpenAI chat role; `None` for a role OpenAI does not have.
pub fn role(role: &str) -> Option<&'static str> {
    Some(match role {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" | "function" => "tool",
        _ => return None,
    })
}

/// The kind of a content part (`type`), if it is one.
fn part_type(part: &Value) -> &str {
    part.get("type").and_then(Value::as_str).unwrap_or_default()
}

/// The text of an OpenAI message `content` (see the module docs).
pub fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| matches!(part_type(p), "text" | "input_text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn non_empty_list(v: Option<&Value>) -> bool {
    v.and_then(Value::as_array).is_some_and(|a| !a.is_empty())
}

/// What the request needs beyond text.
pub fn requirements(body: &Value) -> pb::Requirements {
    let mut r =
        pb::Requirements { tools: non_empty_list(body.get("tools")) || non_empty_list(body.get("functions")), ..Default::default() };
    for m in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let called = non_empty_list(m.get("tool_calls")) || m.get("function_call").is_some_and(|f| !f.is_null());
        let tool_turn = matches!(m.get("role").and_then(Value::as_str), Some("tool" | "function"));
        r.tools |= called || tool_turn;
        for part in m.get("content").and_then(Value::as_array).into_iter().flatten() {
            match part_type(part) {
                "image_url" | "input_image" => r.images = true,
                "input_audio" | "audio" => r.audio = true,
                "file" | "input_file" => r.files = true,
                _ => {}
            }
        }
    }
    r.json_schema = body.pointer("/response_format/type").and_then(Value::as_str) == Some("json_schema");
    r.reasoning_effort = body
        .get("reasoning_effort")
        .or_else(|| body.pointer("/reasoning/effort"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_default();
    r.max_output_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .filter(|&n| n > 0)
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    r
}

/// A `provider` field that is not what OpenRouter takes, named as `provider.<field>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`provider.{field}` must be {what}. Given: {given}")]
pub struct BadProvider {
    /// The field under `provider`.
    pub field: String,
    /// What it takes.
    pub what: &'static str,
    /// The value given (cut).
    pub given: String,
}

fn given(v: &Value) -> String {
    crate::engine::truncated(&v.to_string()).into_owned()
}

/// OpenRouter's `provider` object of a chat request as `ProviderPreferences`; `None` without one.
/// Shapes are checked here (a list of strings, a boolean, a number or percentile object); values
/// (sort keys, quantizations, ranges) by `convert::route_query` like any gRPC request's.
pub fn provider(body: &Value) -> Result<Option<pb::ProviderPreferences>, BadProvider> {
    let Some(p) = body.get("provider").filter(|p| !p.is_null()) else { return Ok(None) };
    let bad = |field: &str, what, v: &Value| BadProvider { field: field.into(), what, given: given(v) };
    let Some(obj) = p.as_object() else { return Err(bad("", "an object", p)) };
    let strings = |field: &str| -> Result<Vec<String>, BadProvider> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(field, "a list of strings", v))).collect()
            }
            Some(v) => Err(bad(field, "a list of strings", v)),
        }
    };
    let boolean = |field: &str| -> Result<Option<bool>, BadProvider> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(bad(field, "true or false", v)),
        }
    };
    let string = |field: &str, v: Option<&Value>| -> Result<String, BadProvider> {
        match v {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(bad(field, "a string", v)),
        }
    };
    let number = |field: &str, v: Option<&Value>| -> Result<Option<f64>, BadProvider> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(field, "a number", v)),
        }
    };
    let percentiles = |field: &str| -> Result<Option<pb::Percentiles>, BadProvider> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => {
                if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "p50" | "p75" | "p90" | "p99")) {
                    return Err(bad(&format!("{field}.{k}"), "absent: the percentiles are p50, p75, p90, p99", &o[k]));
                }
                let n = |k: &str| number(&format!("{field}.{k}"), o.get(k));
                Ok(Some(pb::Percentiles { p50: n("p50")?, p75: n("p75")?, p90: n("p90")?, p99: n("p99")? }))
            }
            Some(v) => Ok(Some(pb::Percentiles { p50: number(field, Some(v))?, ..Default::default() })),
        }
    };
    let (sort, partition) = match obj.get("sort") {
        Some(Value::Object(o)) => (string("sort.by", o.get("by"))?, string("sort.partition", o.get("partition"))?),
        v => (string("sort", v)?, String::new()),
    };
    let max_price = match obj.get("max_price") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(pb::MaxPrice {
            prompt: number("max_price.prompt", o.get("prompt"))?,
            completion: number("max_price.completion", o.get("completion"))?,
        }),
        Some(v) => return Err(bad("max_price", "an object with prompt and completion prices", v)),
    };
    Ok(Some(pb::ProviderPreferences {
        order: strings("order")?,
        only: strings("only")?,
        ignore: strings("ignore")?,
        allow_fallbacks: boolean("allow_fallbacks")?,
        sort,
        partition,
        max_price,
        quantizations: strings("quantizations")?,
        data_collection: string("data_collection", obj.get("data_collection"))?,
        zdr: boolean("zdr")?.unwrap_or(false),
        require_parameters: boolean("require_parameters")?.unwrap_or(false),
        preferred_max_latency: percentiles("preferred_max_latency")?,
        preferred_min_throughput: percentiles("preferred_min_throughput")?,
    }))
}

/// The conversation of an OpenAI chat request, its tail cut to `max_messages` messages and
/// about `max_bytes` bytes (see the module docs).
pub fn conversation(body: &Value, max_messages: usize, max_bytes: usize) -> Result<Conversation, Unroutable> {
    let list = body.get("messages").and_then(Value::as_array).ok_or(Unroutable::NoMessages)?;
    let mapped: Vec<pb::Message> = list
        .iter()
        .filter_map(|m| {
            let role = role(m.get("role").and_then(Value::as_str)?)?;
            Some(pb::Message { role: role.into(), content: m.get("content").map(content_text).unwrap_or_default() })
        })
        .collect();
    let mut dropped = list.len() - mapped.len();
    // The tail: newest first, while both limits hold.
    let total = mapped.len();
    let mut kept = Vec::new();
    let mut bytes = 0usize;
    for mut m in mapped.into_iter().rev() {
        let size = m.role.len() + m.content.len() + MESSAGE_OVERHEAD_BYTES;
        if kept.len() == max_messages || (bytes + size > max_bytes && !kept.is_empty()) {
            dropped += total - kept.len();
            break;
        }
        if bytes + size > max_bytes {
            let room = max_bytes.saturating_sub(bytes + m.role.len() + MESSAGE_OVERHEAD_BYTES);
            let cut = crate::encoder::text::cut_end(&m.content, room).len();
            m.content.truncate(cut);
        }
        bytes += m.role.len() + m.content.len() + MESSAGE_OVERHEAD_BYTES;
        kept.push(m);
    }
    kept.reverse();
    if kept.iter().all(|m| m.content.trim().is_empty()) {
        return Err(Unroutable::NoText);
    }
    Ok(Conversation { messages: kept, requirements: requirements(body), dropped })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn roles(c: &Conversation) -> Vec<&str> {
        c.messages.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn an_agent_conversation_maps_with_its_tool_calls_and_results() {
        let body = json!({"model": "pointsman/auto", "tools": [{"type": "function", "function": {"name": "weather"}}], "messages": [
            {"role": "developer", "content": "You are an agent."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
            {"role": "function", "name": "legacy", "content": "snow"}]});
        let c = conversation(&body, 1024, 1 << 20).unwrap();
        assert_eq!(roles(&c), ["system", "user", "assistant", "tool", "tool"]);
        assert_eq!(c.messages[2].content, "");
        assert_eq!(c.requirements, pb::Requirements { tools: true, ..Default::default() });
        assert_eq!(c.dropped, 0);
        // Tool calls alone say the request needs tools, even with no `tools` list.
        let calls =
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}]});
        assert!(requirements(&calls).tools);
        assert!(!requirements(&json!({"messages": [{"role": "user", "content": "x"}], "tools": []})).tools);
    }

    #[test]
    fn parts_give_their_text_and_their_requirements() {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, {"type": "file", "file": {"file_id": "f"}},
            {"type": "input_text", "text": "these?"}, {"type": "refusal", "text": "not this"}]}]});
        let c = conversation(&body, 1024, 1 << 20).unwrap();
        assert_eq!(c.messages[0].content, "What is in\nthese?");
        assert_eq!(c.requirements, pb::Requirements { tools: false, images: true, audio: true, files: true, ..Default::default() });
    }

    #[test]
    fn nothing_to_route_on_is_said_so() {
        let image_only = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
        assert_eq!(conversation(&image_only, 1024, 1 << 20), Err(Unroutable::NoText));
        assert_eq!(conversation(&json!({"prompt": "x"}), 1024, 1 << 20), Err(Unroutable::NoMessages));
        assert_eq!(conversation(&json!({"messages": "hi"}), 1024, 1 << 20), Err(Unroutable::NoMessages));
        // A role OpenAI does not have is left out, not refused.
        let odd = json!({"messages": [{"role": "narrator", "content": "x"}, {"content": "no role"}, {"role": "user", "content": "hi"}]});
        let c = conversation(&odd, 1024, 1 << 20).unwrap();
        assert_eq!((roles(&c), c.dropped), (vec!["user"], 2));
    }

    #[test]
    fn the_tail_is_kept_within_both_limits() {
        let turns: Vec<Value> =
            (0..300).map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("turn {i}")})).collect();
        let c = conversation(&json!({ "messages": turns }), 256, 1 << 20).unwrap();
        assert_eq!((c.messages.len(), c.dropped), (256, 44));
        assert_eq!(c.messages.last().unwrap().content, "turn 299");
        assert_eq!(c.messages[0].content, "turn 44");

        let big = "é".repeat(300_000); // 600 KB
        let body = json!({"messages": [{"role": "user", "content": "old question"}, {"role": "user", "content": big}]});
        let c = conversation(&body, 1024, 100_000).unwrap();
        assert_eq!((c.messages.len(), c.dropped), (1, 1));
        let kept = &c.messages[0].content;
        assert!(kept.len() <= 100_000 && kept.len() > 99_900 && kept.chars().all(|ch| ch == 'é'), "{}", kept.len());
    }

    #[test]
    fn openrouter_provider_objects_map_field_for_field() {
        let body = json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
            "reasoning": {"effort": "high"}, "max_tokens": 900,
            "provider": {"order": ["deepinfra", "together"], "only": ["deepinfra", "together", "hyperbolic"], "ignore": ["azure"],
                "allow_fallbacks": false, "sort": {"by": "throughput", "partition": "none"}, "max_price": {"prompt": 1, "completion": 2},
                "quantizations": ["fp8"], "data_collection": "deny", "zdr": true, "require_parameters": true,
                "preferred_max_latency": {"p90": 1.5}, "preferred_min_throughput": 40}});
        let r = requirements(&body);
        assert!(r.json_schema && r.reasoning_effort == "high" && r.max_output_tokens == Some(900), "{r:?}");
        let p = provider(&body).unwrap().unwrap();
        assert_eq!(p.order, ["deepinfra", "together"]);
        assert_eq!((p.allow_fallbacks, p.sort.as_str(), p.partition.as_str()), (Some(false), "throughput", "none"));
        assert_eq!(p.max_price, Some(pb::MaxPrice { prompt: Some(1.0), completion: Some(2.0) }));
        assert_eq!((p.data_collection.as_str(), p.zdr, p.require_parameters), ("deny", true, true));
        assert_eq!(p.preferred_max_latency.unwrap().p90, Some(1.5));
        assert_eq!(p.preferred_min_throughput.unwrap().p50, Some(40.0));
        // A plain string sort; no provider object.
        assert_eq!(provider(&json!({"provider": {"sort": "price"}})).unwrap().unwrap().sort, "price");
        assert_eq!(provider(&json!({})).unwrap(), None);
        // Wrong shapes name the field and the value.
        let e = provider(&json!({"provider": {"only": "together"}})).unwrap_err().to_string();
        assert!(e.contains("provider.only") && e.contains("\"together\""), "{e}");
        let e = provider(&json!({"provider": {"preferred_max_latency": {"p95": 1}}})).unwrap_err().to_string();
        assert!(e.contains("provider.preferred_max_latency.p95"), "{e}");
    }
}
