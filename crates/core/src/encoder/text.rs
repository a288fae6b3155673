//! How a conversation becomes the one text that is embedded (the routing text), and how its
//! input tokens are counted. This is the one place that defines it: gRPC `Route`, Envoy's
//! external processor and the CLI all call [`routing_text`]; the Python client and the LiteLLM
//! integration only map an OpenAI request onto `Message`s (the same mapping as
//! `transport::openai`) and leave the rest to the server.
//!
//! Policy (documented in docs/routing.md, "The routing text"):
//! 1. The last user turn with text is the anchor (the latest user intent) and comes first, so the
//!    encoder's truncation (which cuts the end) never removes it.
//! 2. An agent turn: the tool results that follow the anchor (an agent's loop of tool calls after
//!    the user's request) come next, in order, because they are what the next answer works on.
//!    When they do not fit they are cut from the front: the newest results are kept.
//! 3. A short anchor is usually a follow-up ("now do it in Rust") whose meaning lives in the
//!    turns before it: while the text has fewer than [`FOLLOW_UP_WORDS`] words, the previous user
//!    turns are appended, newest first, up to [`MAX_CONTEXT_TURNS`] of them.
//! 4. Assistant turns are left out (some model's answer, or only its tool calls, not the task), and
//!    so is the system prompt (usually boilerplate shared by every request of an application).
//! 5. A conversation without a user turn is routed on its last message with text; one with no text
//!    at all (only images, only tool calls) has no routing text ([`routing_text`] is `None`).
//! 6. The whole text is at most [`MAX_ROUTING_TEXT_BYTES`]: an anchor longer than that keeps its
//!    start; tool results and earlier turns get what the anchor leaves.
//!
//! Empty contents are normal (an assistant turn that only calls tools, an image-only turn): they
//! count toward the input tokens and are skipped here. Input tokens for cost and context-window
//! checks are counted on the whole conversation, every role included, not on the routing text.

/// The routing text is cut to this many bytes (on a character boundary). It bounds what the
/// cache hashes, the decision log stores and the encoder tokenizes, whatever the prompt's size;
/// the encoder itself reads only its first `max_tokens` tokens.
pub const MAX_ROUTING_TEXT_BYTES: usize = 32 * 1024;
/// A short last user turn (fewer words than this) pulls in earlier user turns as context.
pub const FOLLOW_UP_WORDS: usize = 24;
/// At most this many earlier user turns are added as context.
pub const MAX_CONTEXT_TURNS: usize = 2;
/// Tokens counted per message for the chat format's role and separators (OpenAI counts 3-4).
pub const TOKENS_PER_MESSAGE: u32 = 4;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The end user.
    User,
    /// A model's earlier answer.
    Assistant,
    /// A tool's output.
    Tool,
}

impl std::str::FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "system" | "developer" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" | "function" => Ok(Role::Tool),
            _ => Err(()),
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl ChatMessage {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self { role: Role::User, content: content.into() }
    }
}

/// `s` without the C0 control characters other than tab, line feed and carriage return (and
/// without DEL): U+0000 in particular, which PostgreSQL's `text` refuses. Every message's text
/// passes through here before it is routed, so nothing downstream (cache, log, sinks) sees one.
pub fn without_control_chars(s: String) -> String {
    let bad = |c: char| (c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{7f}';
    if s.contains(bad) {
        s.replace(bad, "")
    } else {
        s
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn cut_end(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// The longest suffix of `s` of at most `max` bytes that starts on a character boundary.
pub fn cut_front(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// The text that is embedded for a conversation (see the module docs for the policy); `None`
/// when no message has any text.
///
/// An agent turn is routed on the user's request and the tool results that answer it; the
/// assistant's tool call (no text) adds nothing:
/// ```
/// use pointsman_core::encoder::text::{routing_text, ChatMessage, Role};
///
/// let turn = |role, content: &str| ChatMessage { role, content: content.into() };
/// let conversation = [
///     turn(Role::System, "You are a travel agent with a flight search tool."),
///     turn(Role::User, "Find me the cheapest flight from Lisbon to Oslo next Friday, and explain the layovers."),
///     turn(Role::Assistant, ""),
///     turn(Role::Tool, r#"{"flights": [{"price": 182, "stops": ["CPH"]}]}"#),
/// ];
/// let text = routing_text(&conversation).unwrap();
/// assert!(text.starts_with("Find me the cheapest flight"));
/// assert!(text.ends_with(r#"{"flights": [{"price": 182, "stops": ["CPH"]}]}"#));
/// assert!(!text.contains("travel agent"));
///
/// // Nothing to route on: no message has text.
/// assert_eq!(routing_text(&[turn(Role::Assistant, " ")]), None);
/// ```
pub fn routing_text(messages: &[ChatMessage]) -> Option<String> {
    let has_text = |m: &&ChatMessage| !m.content.trim().is_empty();
    let Some(anchor_at) = messages.iter().rposition(|m| m.role == Role::User && !m.content.trim().is_empty()) else {
        return messages.iter().rev().find(has_text).map(|m| cut_end(m.content.trim(), MAX_ROUTING_TEXT_BYTES).to_string());
    };
    let anchor = cut_end(messages[anchor_at].content.trim(), MAX_ROUTING_TEXT_BYTES);
    let mut text = String::with_capacity(anchor.len());
    text.push_str(anchor);
    let room = |text: &String| MAX_ROUTING_TEXT_BYTES.saturating_sub(text.len() + 2);

    // 2. The tool results after the anchor, newest kept when they do not all fit.
    let results: Vec<&str> =
        messages[anchor_at + 1..].iter().filter(|m| m.role == Role::Tool).filter(has_text).map(|m| m.content.trim()).collect();
    if !results.is_empty() && room(&text) > 0 {
        let joined = results.join("\n\n");
        let kept = cut_front(&joined, room(&text));
        if !kept.trim().is_empty() {
            text.push_str("\n\n");
            text.push_str(kept.trim_start());
        }
    }

    // 3. A short anchor pulls in earlier user turns.
    let mut words = anchor.split_whitespace().count();
    let earlier = messages[..anchor_at].iter().rev().filter(|m| m.role == Role::User).filter(has_text).take(MAX_CONTEXT_TURNS);
    for turn in earlier {
        if words >= FOLLOW_UP_WORDS || room(&text) == 0 {
            break;
        }
        let turn = cut_end(turn.content.trim(), room(&text));
        text.push_str("\n\n");
        text.push_str(turn);
        words += turn.split_whitespace().count();
    }
    Some(text)
}

/// What a request needs of the model beyond text (RouteRequest.requirements), recorded with the
/// decision so that it can be matched against model capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Requirements {
    /// Tools offered, tool calls or tool results in the conversation.
    pub tools: bool,
    /// An image part.
    pub images: bool,
    /// An audio part.
    pub audio: bool,
    /// A file part.
    pub files: bool,
    /// Structured output to a JSON schema (`response_format.type = "json_schema"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub json_schema: bool,
    /// The reasoning effort asked for (`reasoning_effort`, or OpenRouter's `reasoning.effort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// The most output tokens asked for (`max_completion_tokens`, else `max_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

impl Requirements {
    /// True when the request needs nothing beyond text.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: Role, c: &str) -> ChatMessage {
        ChatMessage { role, content: c.into() }
    }

    #[test]
    fn follow_up_pulls_in_context_last_turn_first() {
        let conv = [
            msg(Role::System, "You are a helpful assistant."),
            msg(Role::User, "Write a function that merges two sorted lists in Python."),
            msg(Role::Assistant, "def merge(a, b): ..."),
            msg(Role::User, "now do it in Rust"),
        ];
        let t = routing_text(&conv).unwrap();
        assert!(t.starts_with("now do it in Rust\n\nWrite a function"), "{t}");
        assert!(!t.contains("helpful assistant") && !t.contains("def merge"));
    }

    #[test]
    fn long_last_turn_stands_alone() {
        let long = "Prove that the sum of the first n odd numbers equals n squared, using induction, and explain every step in detail for a student.";
        let conv = [msg(Role::User, "hello there"), msg(Role::User, long)];
        assert_eq!(routing_text(&conv).unwrap(), long);
    }

    #[test]
    fn no_user_turn_uses_last_message() {
        let conv = [msg(Role::System, "Summarise the document."), msg(Role::Assistant, "  ")];
        assert_eq!(routing_text(&conv).unwrap(), "Summarise the document.");
        assert_eq!(routing_text(&[]), None);
    }

    #[test]
    fn an_agent_turn_is_the_user_intent_then_the_tool_results_after_it() {
        let conv = [
            msg(Role::System, "You are an agent with a weather tool."),
            msg(Role::User, "What should I wear in Oslo tomorrow? Check the forecast and tell me in two lines."),
            msg(Role::Assistant, ""),
            msg(Role::Tool, "{\"temp_c\": -3, \"wind\": \"strong\"}"),
            msg(Role::Assistant, ""),
            msg(Role::Tool, "{\"snow\": true}"),
        ];
        let t = routing_text(&conv).unwrap();
        assert_eq!(t, "What should I wear in Oslo tomorrow? Check the forecast and tell me in two lines.\n\n{\"temp_c\": -3, \"wind\": \"strong\"}\n\n{\"snow\": true}");
        // Tool results before the anchor belong to an earlier task.
        let later = [
            conv[3].clone(),
            msg(Role::User, "thanks, and for Bergen the day after, same two lines please, keep it short and simple for me"),
        ];
        assert!(!routing_text(&later).unwrap().contains("temp_c"));
    }

    #[test]
    fn control_characters_are_removed_but_whitespace_is_kept() {
        assert_eq!(without_control_chars("a\u{0}b\u{1b}[0m\tc\r\nd\u{7f}".into()), "ab[0m\tc\r\nd");
        assert_eq!(without_control_chars("plain é 字".into()), "plain é 字");
    }

    #[test]
    fn no_text_at_all_has_no_routing_text() {
        let conv = [msg(Role::User, ""), msg(Role::Assistant, "  "), msg(Role::Tool, "")];
        assert_eq!(routing_text(&conv), None);
        // An image-only last turn is routed on the turn before it.
        let conv = [msg(Role::User, "Describe the pictures I send."), msg(Role::User, "")];
        assert_eq!(routing_text(&conv).unwrap(), "Describe the pictures I send.");
    }

    #[test]
    fn the_text_is_capped_keeping_the_anchors_start_and_the_newest_results() {
        let rag = "é".repeat(MAX_ROUTING_TEXT_BYTES); // two bytes a char
        let t = routing_text(&[msg(Role::User, &rag)]).unwrap();
        assert!(t.len() <= MAX_ROUTING_TEXT_BYTES && t.len() > MAX_ROUTING_TEXT_BYTES - 2, "{}", t.len());
        let old = format!("OLD {}", "x".repeat(MAX_ROUTING_TEXT_BYTES));
        let conv = [msg(Role::User, "Summarise what the tools found."), msg(Role::Tool, &old), msg(Role::Tool, "NEWEST result")];
        let t = routing_text(&conv).unwrap();
        assert!(t.len() <= MAX_ROUTING_TEXT_BYTES, "{}", t.len());
        assert!(t.starts_with("Summarise what the tools found.\n\n") && t.ends_with("NEWEST result") && !t.contains("OLD"), "{}", &t[..80]);
    }
}
