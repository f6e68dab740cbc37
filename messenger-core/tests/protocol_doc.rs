//! `docs/protocol.md` is a contract: every JSON example in it (a line of a ```json block)
//! must decode as what it shows — a client frame through the server's strict decoder, a
//! server frame, a message body, a conversation or a conversation summary — so an example cannot drift from
//! the code without this test failing.

use messenger_core::protocol::{ServerFrame, decode_client_frame};
use messenger_core::{Body, Conversation, ConversationSummary};

/// The lines of every ```json block.
fn json_examples(doc: &str) -> Vec<(usize, &str)> {
    let mut examples = Vec::new();
    let mut inside = false;
    for (number, line) in doc.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            inside = trimmed == "```json";
            continue;
        }
        if inside && trimmed.starts_with('{') {
            examples.push((number + 1, trimmed));
        }
    }
    examples
}

#[test]
fn every_json_example_of_the_protocol_decodes() {
    let doc = include_str!("../../docs/protocol.md");
    let examples = json_examples(doc);
    assert!(examples.len() > 50, "found {} examples", examples.len());
    let mut failures = Vec::new();
    for (line, example) in examples {
        let value: serde_json::Value = match serde_json::from_str(example) {
            Ok(value) => value,
            Err(err) => {
                failures.push(format!("line {line}: not JSON ({err}): {example}"));
                continue;
            }
        };
        let decodes = if value.get("type").is_some() {
            decode_client_frame(example).is_ok()
                || serde_json::from_value::<ServerFrame>(value.clone()).is_ok()
        } else if value.get("created_by").is_some() {
            serde_json::from_value::<Conversation>(value.clone()).is_ok()
        } else if value.get("kind").is_some() {
            serde_json::from_value::<Body>(value.clone()).is_ok()
        } else if value.get("conversation").is_some() && value.get("unread").is_some() {
            serde_json::from_value::<ConversationSummary>(value.clone()).is_ok()
        } else {
            // Shared objects shown alone (a conversation, a member, receipts): their frames
            // are checked through the examples that carry them.
            true
        };
        if !decodes {
            failures.push(format!("line {line}: does not decode: {example}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
