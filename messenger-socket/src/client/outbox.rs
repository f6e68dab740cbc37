//! The outbox: sends not yet acknowledged, in the order they were made.

use std::collections::VecDeque;

use messenger_core::protocol::{ClientFrame, NewBody};
use messenger_core::{ClientMsgId, ConversationId, Error};
use tokio::sync::oneshot;

use super::Sent;

/// Where the result of a send goes.
pub(crate) type SendReply = oneshot::Sender<Result<Sent, Error>>;

/// One unacknowledged send.
#[derive(Debug)]
pub(crate) struct PendingSend {
    conversation: ConversationId,
    client_msg_id: ClientMsgId,
    body: NewBody,
    waiters: Vec<SendReply>,
    /// Transmitted on the current connection and not answered yet.
    in_flight: bool,
    /// Transmitted at least once: sent again, it is marked `resend`.
    transmitted: bool,
}

impl PendingSend {
    /// Resolves every waiter.
    pub(crate) fn resolve(self, result: impl Fn() -> Result<Sent, Error>) {
        for waiter in self.waiters {
            let _ = waiter.send(result());
        }
    }
}

/// Unacknowledged sends, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    entries: VecDeque<PendingSend>,
}

impl Outbox {
    /// Queues a send; a send with a `client_msg_id` already queued only adds a waiter.
    pub(crate) fn push(
        &mut self,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        body: NewBody,
        waiter: SendReply,
    ) {
        if let Some(entry) = self.find_mut(&conversation, &client_msg_id) {
            entry.waiters.push(waiter);
            return;
        }
        self.entries.push_back(PendingSend {
            conversation,
            client_msg_id,
            body,
            waiters: vec![waiter],
            in_flight: false,
            transmitted: false,
        });
    }

    /// The `send` frames of every entry not in flight, oldest first, now marked in flight;
    /// an entry transmitted before is marked `resend`.
    pub(crate) fn take_unsent(&mut self) -> Vec<ClientFrame> {
        self.entries
            .iter_mut()
            .filter(|entry| !entry.in_flight)
            .map(|entry| {
                entry.in_flight = true;
                let resend = std::mem::replace(&mut entry.transmitted, true);
                ClientFrame::Send {
                    conversation: entry.conversation.clone(),
                    client_msg_id: entry.client_msg_id.clone(),
                    body: entry.body.clone(),
                    resend,
                }
            })
            .collect()
    }

    /// Removes an entry (acknowledged, or refused for good).
    pub(crate) fn remove(
        &mut self,
        conversation: &ConversationId,
        client_msg_id: &ClientMsgId,
    ) -> Option<PendingSend> {
        let index = self.entries.iter().position(|entry| {
            &entry.conversation == conversation && &entry.client_msg_id == client_msg_id
        })?;
        self.entries.remove(index)
    }

    /// A retryable refusal: the entry is sent again with the next [`Outbox::take_unsent`].
    pub(crate) fn requeue(&mut self, conversation: &ConversationId, client_msg_id: &ClientMsgId) {
        if let Some(entry) = self.find_mut(conversation, client_msg_id) {
            entry.in_flight = false;
        }
    }

    /// The connection is gone: everything is sent again on the next one.
    pub(crate) fn connection_lost(&mut self) {
        for entry in &mut self.entries {
            entry.in_flight = false;
        }
    }

    /// Empties the outbox (the client is closing).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = PendingSend> + '_ {
        self.entries.drain(..)
    }

    /// How many sends wait for their acknowledgement.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn find_mut(
        &mut self,
        conversation: &ConversationId,
        client_msg_id: &ClientMsgId,
    ) -> Option<&mut PendingSend> {
        self.entries.iter_mut().find(|entry| {
            &entry.conversation == conversation && &entry.client_msg_id == client_msg_id
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(frames: &[ClientFrame]) -> Vec<String> {
        frames
            .iter()
            .map(|frame| match frame {
                ClientFrame::Send { client_msg_id, .. } => client_msg_id.to_string(),
                other => panic!("not a send: {other:?}"),
            })
            .collect()
    }

    fn push(outbox: &mut Outbox, id: &str) -> oneshot::Receiver<Result<Sent, Error>> {
        let (tx, rx) = oneshot::channel();
        outbox.push(
            ConversationId::new("g:x").unwrap(),
            ClientMsgId::new(id).unwrap(),
            NewBody::text(id),
            tx,
        );
        rx
    }

    #[test]
    fn resends_in_order_after_a_lost_connection() {
        let conv = ConversationId::new("g:x").unwrap();
        let mut outbox = Outbox::default();
        let _a = push(&mut outbox, "a");
        let _b = push(&mut outbox, "b");
        assert_eq!(ids(&outbox.take_unsent()), ["a", "b"]);
        let _c = push(&mut outbox, "c");
        assert_eq!(ids(&outbox.take_unsent()), ["c"]);
        assert!(outbox.take_unsent().is_empty());
        assert!(
            outbox
                .remove(&conv, &ClientMsgId::new("a").unwrap())
                .is_some()
        );
        outbox.connection_lost();
        assert_eq!(ids(&outbox.take_unsent()), ["b", "c"]);
        outbox.requeue(&conv, &ClientMsgId::new("c").unwrap());
        assert_eq!(ids(&outbox.take_unsent()), ["c"]);
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn the_same_id_is_queued_once() {
        let conv = ConversationId::new("g:x").unwrap();
        let mut outbox = Outbox::default();
        let _first = push(&mut outbox, "a");
        let _second = push(&mut outbox, "a");
        assert_eq!(outbox.len(), 1);
        let entry = outbox
            .remove(&conv, &ClientMsgId::new("a").unwrap())
            .unwrap();
        assert_eq!(entry.waiters.len(), 2);
    }
}
