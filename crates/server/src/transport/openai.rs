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
//!    and file parts.
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
    r
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
        assert_eq!(c.requirements, pb::Requirements { tools: false, images: true, audio: true, files: true });
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
}
