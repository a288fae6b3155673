//! How a conversation becomes the one text that is embedded (the routing text), and how its
//! input tokens are counted.
//!
//! Policy (documented in the README):
//! 1. The last user turn is the anchor and comes first, so the encoder's truncation (which cuts
//!    the end) never removes it.
//! 2. A short last turn is usually a follow-up ("now do it in Rust") whose meaning lives in the
//!    turns before it: while the text has fewer than [`FOLLOW_UP_WORDS`] words, the previous user
//!    turns are appended, newest first, up to [`MAX_CONTEXT_TURNS`] of them.
//! 3. Assistant and tool turns are left out (they are some model's answer, not the task), and so
//!    is the system prompt (usually boilerplate shared by every request of an application).
//! 4. A conversation without a user turn is routed on its last non-empty message.
//!
//! Input tokens for cost and context-window checks are counted on the whole conversation, every
//! role included, not on the routing text.

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

/// The text that is embedded for a conversation (see the module docs for the policy).
pub fn routing_text(messages: &[ChatMessage]) -> String {
    let users: Vec<&str> =
        messages.iter().filter(|m| m.role == Role::User && !m.content.trim().is_empty()).map(|m| m.content.trim()).collect();
    let Some((last, earlier)) = users.split_last() else {
        return messages.iter().rev().map(|m| m.content.trim()).find(|c| !c.is_empty()).unwrap_or_default().to_string();
    };
    let mut text = last.to_string();
    let mut words = last.split_whitespace().count();
    for turn in earlier.iter().rev().take(MAX_CONTEXT_TURNS) {
        if words >= FOLLOW_UP_WORDS {
            break;
        }
        text.push_str("\n\n");
        text.push_str(turn);
        words += turn.split_whitespace().count();
    }
    text
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
        let t = routing_text(&conv);
        assert!(t.starts_with("now do it in Rust\n\nWrite a function"), "{t}");
        assert!(!t.contains("helpful assistant") && !t.contains("def merge"));
    }

    #[test]
    fn long_last_turn_stands_alone() {
        let long = "Prove that the sum of the first n odd numbers equals n squared, using induction, and explain every step in detail for a student.";
        let conv = [msg(Role::User, "hello there"), msg(Role::User, long)];
        assert_eq!(routing_text(&conv), long);
    }

    #[test]
    fn no_user_turn_uses_last_message() {
        let conv = [msg(Role::System, "Summarise the document."), msg(Role::Assistant, "  ")];
        assert_eq!(routing_text(&conv), "Summarise the document.");
        assert_eq!(routing_text(&[]), "");
    }
}
