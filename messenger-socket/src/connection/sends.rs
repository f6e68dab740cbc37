//! The send queue: a device's sends checked and sequenced one at a time, in the order it sent
//! them, then stored concurrently; acks and upload tickets queued back to the connection.

use messenger_core::auth::Identity;
use messenger_core::protocol::{ServerFrame, UploadTicket};
use messenger_core::{ClientMsgId, ConversationId, Message};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::refusal::send_error;
use crate::engine::{Backends, Draft, Engine, Prepared};
use crate::hub::{ConnectionHandle, Outbound};

/// A send waiting for its seq, in the order the device sent it.
pub(super) struct QueuedSend {
    pub(super) conversation: ConversationId,
    pub(super) client_msg_id: ClientMsgId,
    pub(super) body: Draft,
}

/// The connection's send worker, started by its first `send`: a connection that never sends
/// carries no task and no queue.
#[derive(Default)]
pub(super) struct SendWorker(Option<mpsc::Sender<QueuedSend>>);

impl SendWorker {
    /// Queues `send` for the worker (starting it if needed); waits while the queue is full.
    pub(super) async fn send<B: Backends>(
        &mut self,
        node: &Engine<B>,
        identity: &Identity,
        handle: &ConnectionHandle,
        send: QueuedSend,
    ) -> Result<(), mpsc::error::SendError<QueuedSend>> {
        let queue = self.0.get_or_insert_with(|| {
            spawn_send_worker(node.clone(), identity.clone(), handle.clone())
        });
        queue.send(send).await
    }
}

/// Checks and sequences sends one at a time, in order, then stores them concurrently: the
/// engine's send pipeline in two stages ([`Engine::prepare_send`], [`Engine::commit_send`]),
/// so a device's pipelined sends get increasing seqs without waiting for each other's
/// durable write.
fn spawn_send_worker<B: Backends>(
    node: Engine<B>,
    identity: Identity,
    handle: ConnectionHandle,
) -> mpsc::Sender<QueuedSend> {
    let (sender, mut receiver) = mpsc::channel::<QueuedSend>(node.config().send_queue.max(1));
    tokio::spawn(async move {
        while let Some(send) = receiver.recv().await {
            let QueuedSend {
                conversation,
                client_msg_id,
                body,
            } = send;
            let prepared = node
                .prepare_send(&identity, conversation.clone(), client_msg_id.clone(), body)
                .await;
            match prepared {
                Ok(Prepared::Pending(pending)) => {
                    let node = node.clone();
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        match node.commit_send(pending).await {
                            Ok(mut stored) => {
                                // Durable: ack first, then deliver.
                                let upload = node.upload_ticket(&stored.message).await;
                                push_sent(&handle, &stored.message, stored.duplicate, upload);
                                node.deliver_stored(&mut stored).await;
                            }
                            Err(err) => {
                                let frame = send_error(conversation, client_msg_id, &err);
                                handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
                            }
                        }
                    });
                }
                Ok(Prepared::Duplicate(stored)) => {
                    let upload = node.upload_ticket(&stored.message).await;
                    push_sent(&handle, &stored.message, stored.duplicate, upload);
                }
                Err(err) => {
                    let frame = send_error(conversation, client_msg_id, &err);
                    handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
                }
            }
        }
    });
    sender
}

/// Queues the ack of a stored send, and its upload ticket for a pending media message.
fn push_sent(
    handle: &ConnectionHandle,
    message: &Message,
    duplicate: bool,
    upload: Option<UploadTicket>,
) {
    let sent = ServerFrame::Sent {
        conversation: message.conversation.clone(),
        client_msg_id: message.client_msg_id.clone(),
        seq: message.seq,
        sent_at: message.sent_at,
        duplicate,
    };
    handle.push(Outbound::Frame(Utf8Bytes::from(sent.to_json())));
    if let Some(upload) = upload {
        let frame = ServerFrame::Upload {
            conversation: message.conversation.clone(),
            client_msg_id: message.client_msg_id.clone(),
            seq: message.seq,
            upload,
        };
        handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::protocol::ServerFrame;

    use super::super::testing::{Harness, next_frame, send};

    fn text_send(conversation: &str, id: &str) -> String {
        format!(
            r#"{{"type":"send","conversation":"{conversation}","client_msg_id":"{id}","body":{{"kind":"text","text":"{id}"}}}}"#
        )
    }

    /// Acks (and nothing else but the sender's own copies) until `count` acks were read.
    async fn acks(
        peer: &mut super::super::testing::Peer,
        count: usize,
    ) -> Vec<(String, u64, bool)> {
        let mut acks = Vec::new();
        while acks.len() < count {
            match next_frame(peer).await {
                ServerFrame::Sent {
                    client_msg_id,
                    seq,
                    duplicate,
                    ..
                } => acks.push((client_msg_id.to_string(), seq.get(), duplicate)),
                ServerFrame::Message { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        acks
    }

    #[tokio::test]
    async fn pipelined_sends_are_sequenced_in_the_order_they_were_sent() {
        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut peer = harness.connect("alice:phone").await;
        for n in 0..50 {
            send(&mut peer, &text_send(group.as_str(), &format!("m{n}"))).await;
        }
        let mut acks = acks(&mut peer, 50).await;
        // Acks may come in any order (stores are concurrent); seqs follow the send order.
        acks.sort_by_key(|(_, seq, _)| *seq);
        let order: Vec<String> = acks.iter().map(|(id, _, _)| id.clone()).collect();
        let sent: Vec<String> = (0..50).map(|n| format!("m{n}")).collect();
        assert_eq!(order, sent);
        assert!(acks.windows(2).all(|w| w[1].1 == w[0].1 + 1), "{acks:?}");
        assert!(acks.iter().all(|(_, _, duplicate)| !duplicate));
    }

    #[tokio::test]
    async fn a_resent_message_is_acked_as_a_duplicate_at_its_first_seq() {
        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut peer = harness.connect("alice:phone").await;
        send(&mut peer, &text_send(group.as_str(), "once")).await;
        let first = acks(&mut peer, 1).await;
        send(&mut peer, &text_send(group.as_str(), "once")).await;
        let again = acks(&mut peer, 1).await;
        assert_eq!(again[0].1, first[0].1);
        assert!(again[0].2, "flagged duplicate");
    }

    #[tokio::test]
    async fn a_send_to_a_conversation_of_others_is_refused_with_its_ids() {
        let harness = Harness::new();
        let group = harness.group("bob", &["carol"]).await;
        let mut peer = harness.connect("alice:phone").await;
        send(&mut peer, &text_send(group.as_str(), "nope")).await;
        match next_frame(&mut peer).await {
            ServerFrame::Error {
                id,
                conversation,
                client_msg_id,
                ..
            } => {
                assert_eq!(id, None);
                assert_eq!(conversation, Some(group));
                assert_eq!(client_msg_id.map(|id| id.to_string()), Some("nope".into()));
            }
            other => panic!("{other:?}"),
        }
    }
}
