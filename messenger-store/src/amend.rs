//! The rule every backend applies to [`AmendMessage`]: whether the target still is what the
//! caller read.

use messenger_core::Message;
use messenger_core::store::AmendMessage;

/// What to do with the stored target, once `update`'s key was found free.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// It equals `expected`: store `amended` and append `update`.
    Apply,
    /// It equals `amended` already (an interrupted or re-sequenced earlier attempt): append
    /// `update` only.
    Repair,
    /// It is something else (or nothing): write nothing.
    Changed,
}

/// Decides how `request` applies to the target as stored (`current`).
pub(crate) fn decide(current: Option<&Message>, request: &AmendMessage) -> Decision {
    match current {
        Some(current) if *current == *request.expected => Decision::Apply,
        Some(current) if *current == *request.amended => Decision::Repair,
        _ => Decision::Changed,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use messenger_core::{Body, ClientMsgId, ConversationId, DeviceId, Seq, Timestamp, UserId};

    use super::*;

    fn entry(seq: u64, body: Body) -> Arc<Message> {
        Arc::new(Message {
            conversation: ConversationId::new("g:amend").expect("id"),
            seq: Seq(seq),
            sender: UserId::new("alice").expect("id"),
            sender_device: DeviceId::new("phone").expect("id"),
            client_msg_id: ClientMsgId::new(format!("k{seq}")).expect("id"),
            sent_at: Timestamp(seq),
            body,
        })
    }

    #[test]
    fn applies_on_what_was_read_repairs_on_the_result_refuses_the_rest() {
        let expected = entry(1, Body::text("before"));
        let amended = entry(
            1,
            Body::Text {
                text: "after".into(),
                reply_to: None,
                edited_at: Some(Timestamp(9)),
                edits: 1,
                reactions: Vec::new(),
                mention_all: false,
                mentions: Vec::new(),
            },
        );
        let request = AmendMessage {
            update: entry(
                2,
                Body::Edit {
                    target: Seq(1),
                    text: "after".into(),
                },
            ),
            expected: Arc::clone(&expected),
            amended: Arc::clone(&amended),
        };
        assert_eq!(decide(Some(&expected), &request), Decision::Apply);
        assert_eq!(decide(Some(&amended), &request), Decision::Repair);
        let other = entry(1, Body::text("someone else's edit"));
        assert_eq!(decide(Some(&other), &request), Decision::Changed);
        assert_eq!(decide(None, &request), Decision::Changed);
    }
}
