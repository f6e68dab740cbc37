//! Frames in: decoding, the bad-frame budget, pacing, and each frame's answer. Requests run
//! through the engine off the loop; their answers come back through the connection's queue.

use std::time::Instant;

use messenger_core::protocol::{ClientFrame, ErrorCode, ServerFrame, close, decode_client_frame};
use messenger_core::{ConversationId, Error, ReceiptKind, RequestId, Role, Seq, UserId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

use super::closing::transport_close;
use super::refusal::{request_error, send_error};
use super::sends::QueuedSend;
use super::{Connection, End};
use crate::engine::{
    AddMembers, Backends, CreateGroup, Draft, GetMembers, GetPresence, LeaveGroup,
    ListConversations, MarkReceipt, OpenDirect, ReadHistory, ReadReceipts, RemoveMember, SetRole,
    SetTyping,
};
use crate::hub::Outbound;

impl<B: Backends> Connection<B> {
    /// One frame (or the end of the stream) from the peer.
    pub(super) async fn inbound<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        frame: Option<Result<tungstenite::Message, tungstenite::Error>>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.last_inbound = Instant::now();
        let text = match frame {
            Some(Ok(tungstenite::Message::Text(text))) => text,
            Some(Ok(tungstenite::Message::Binary(_))) => {
                return Err(End::Close(
                    close::UNSUPPORTED_DATA,
                    "text frames only".into(),
                ));
            }
            Some(Ok(tungstenite::Message::Close(_))) | None => return Err(End::Quiet),
            Some(Ok(_)) => return Ok(()),
            Some(Err(err)) => {
                return Err(match transport_close(&err) {
                    Some((code, reason)) => End::Close(code, reason),
                    None => End::Quiet,
                });
            }
        };
        let frame = match decode_client_frame(&text) {
            Ok(frame) => frame,
            Err(err) => {
                self.bad_frames += 1;
                if self.bad_frames >= self.node.config().max_bad_frames {
                    return Err(End::Close(
                        close::TOO_MANY_ERRORS,
                        "too many bad frames".into(),
                    ));
                }
                return self
                    .reply(ws, ServerFrame::error(err.id, err.code, err.message))
                    .await;
            }
        };
        self.bad_frames = 0;
        // Pacing, not refusal: a device over its frame rate is simply read more slowly, and
        // TCP backpressure slows it down. Nothing it sent is lost.
        self.frames.until_ready().await;
        self.handle_frame(ws, frame).await
    }

    /// Runs a request off the loop: `work` gets the request id for its answer; the answer (or
    /// the error frame) comes back through the connection's queue.
    fn spawn_request<F, W>(&self, id: Option<RequestId>, work: W) -> Result<(), End>
    where
        W: FnOnce(Option<RequestId>) -> F,
        F: std::future::Future<Output = Result<ServerFrame, Error>> + Send + 'static,
    {
        let handle = self.handle.clone();
        let work = work(id.clone());
        tokio::spawn(async move {
            let frame = match work.await {
                Ok(frame) => frame,
                Err(err) => request_error(id, &err),
            };
            handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
        });
        Ok(())
    }

    /// Answers one decoded frame.
    async fn handle_frame<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        frame: ClientFrame,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let node = self.node.clone();
        let me = self.identity.clone();
        match frame {
            ClientFrame::Hello { .. } => {
                self.reply(
                    ws,
                    ServerFrame::error(None, ErrorCode::NotAuthenticated, "already authenticated"),
                )
                .await
            }
            ClientFrame::Sync { cursors, limit } => {
                self.start_sync(cursors, limit);
                Ok(())
            }
            ClientFrame::Send {
                conversation,
                client_msg_id,
                body,
                resend,
            } => {
                let err = match node.validate_body(body) {
                    // A full send queue slows the reading of this connection (backpressure)
                    // rather than refusing: refusals would make retries overtake later sends.
                    Ok(body) => match self
                        .sends
                        .send(
                            &self.node,
                            &self.identity,
                            &self.handle,
                            QueuedSend {
                                conversation: conversation.clone(),
                                client_msg_id: client_msg_id.clone(),
                                body: Draft { resend, ..body },
                            },
                        )
                        .await
                    {
                        Ok(()) => return Ok(()),
                        Err(_) => Error::refused(ErrorCode::Internal, "the send worker stopped"),
                    },
                    Err(err) => err,
                };
                self.reply(ws, send_error(conversation, client_msg_id, &err))
                    .await
            }
            ClientFrame::Delivered { conversation, seq } => {
                self.receipt(conversation, ReceiptKind::Delivered, seq);
                Ok(())
            }
            ClientFrame::Read { conversation, seq } => {
                self.receipt(conversation, ReceiptKind::Read, seq);
                Ok(())
            }
            ClientFrame::Typing {
                conversation,
                active,
            } => {
                if self.typing.check().is_ok() {
                    let handle = self.handle.clone();
                    tokio::spawn(async move {
                        let typing = SetTyping {
                            actor: me,
                            conversation,
                            active,
                        };
                        if let Err(err) = node.set_typing(typing).await {
                            let frame = request_error(None, &err);
                            handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
                        }
                    });
                }
                Ok(())
            }
            ClientFrame::OpenDirect { id, user } => self.spawn_request(id, |request| async move {
                let info = node
                    .open_direct(OpenDirect {
                        actor: me,
                        other: user,
                    })
                    .await?;
                Ok(conversation_frame(request, info))
            }),
            ClientFrame::CreateGroup { id, title, members } => {
                self.spawn_request(id, |request| async move {
                    let create = CreateGroup {
                        actor: me,
                        title,
                        members,
                    };
                    Ok(conversation_frame(
                        request,
                        node.create_group(create).await?,
                    ))
                })
            }
            ClientFrame::AddMembers {
                id,
                conversation,
                users,
                role,
            } => self.spawn_request(id, |request| async move {
                let add = AddMembers {
                    actor: me,
                    conversation: conversation.clone(),
                    users,
                    role: role.unwrap_or(Role::Member),
                };
                Ok(changed(request, conversation, node.add_members(add).await?))
            }),
            ClientFrame::RemoveMember {
                id,
                conversation,
                user,
            } => self.spawn_request(id, |request| async move {
                let remove = RemoveMember {
                    actor: me,
                    conversation: conversation.clone(),
                    user,
                };
                Ok(changed(
                    request,
                    conversation,
                    node.remove_member(remove).await?,
                ))
            }),
            ClientFrame::Leave { id, conversation } => {
                self.spawn_request(id, |request| async move {
                    let leave = LeaveGroup {
                        actor: me,
                        conversation: conversation.clone(),
                    };
                    Ok(changed(request, conversation, node.leave(leave).await?))
                })
            }
            ClientFrame::SetRole {
                id,
                conversation,
                user,
                role,
            } => self.spawn_request(id, |request| async move {
                let set = SetRole {
                    actor: me,
                    conversation: conversation.clone(),
                    user,
                    role,
                };
                Ok(changed(request, conversation, node.set_role(set).await?))
            }),
            ClientFrame::History {
                id,
                conversation,
                after,
                before,
                limit,
            } => self.spawn_request(id, |request| async move {
                let read = ReadHistory {
                    actor: me,
                    conversation: conversation.clone(),
                    after,
                    before,
                    limit,
                };
                let page = node.read_history(read).await?;
                Ok(ServerFrame::History {
                    id: request,
                    conversation,
                    messages: page.messages,
                    head: page.head,
                })
            }),
            ClientFrame::Conversations { id } => self.spawn_request(id, |request| async move {
                let conversations = node
                    .list_conversations(ListConversations { user: me.user })
                    .await?;
                Ok(ServerFrame::Conversations {
                    id: request,
                    conversations,
                })
            }),
            ClientFrame::Members { id, conversation } => {
                self.spawn_request(id, |request| async move {
                    let info = node
                        .get_members(GetMembers {
                            actor: me,
                            conversation,
                        })
                        .await?;
                    Ok(conversation_frame(request, info))
                })
            }
            ClientFrame::Receipts { id, conversation } => {
                self.spawn_request(id, |request| async move {
                    let receipts = node
                        .read_receipts(ReadReceipts {
                            actor: me,
                            conversation: conversation.clone(),
                        })
                        .await?;
                    Ok(ServerFrame::Receipts {
                        id: request,
                        conversation,
                        receipts,
                    })
                })
            }
            ClientFrame::LastSeen { id, users } => self.spawn_request(id, |request| async move {
                let users = node.presence_of(GetPresence { users }).await?;
                Ok(ServerFrame::LastSeen { id: request, users })
            }),
            ClientFrame::SubscribePresence { id, users } => {
                self.subscribe_presence(ws, id, users).await
            }
            ClientFrame::UnsubscribePresence { id, users } => {
                self.unsubscribe_presence(ws, id, users).await
            }
            ClientFrame::Ping { id } => self.reply(ws, ServerFrame::Pong { id }).await,
            _ => {
                self.reply(
                    ws,
                    ServerFrame::error(None, ErrorCode::UnknownType, "unsupported frame"),
                )
                .await
            }
        }
    }

    /// Records a `delivered` or `read` off the loop; a refusal comes back as an error frame.
    fn receipt(&self, conversation: ConversationId, kind: ReceiptKind, seq: Seq) {
        let node = self.node.clone();
        let mark = MarkReceipt {
            actor: self.identity.clone(),
            conversation,
            kind,
            seq,
        };
        let handle = self.handle.clone();
        tokio::spawn(async move {
            // Refusals of receipts carry neither `id` nor `conversation` (docs/protocol.md).
            if let Err(err) = node.mark_receipt(mark).await {
                let frame = request_error(None, &err);
                handle.push(Outbound::Frame(Utf8Bytes::from(frame.to_json())));
            }
        });
    }
}

/// The `conversation` answer to request `id`.
fn conversation_frame(
    id: Option<RequestId>,
    info: messenger_core::store::ConversationInfo,
) -> ServerFrame {
    ServerFrame::Conversation {
        id,
        conversation: info.conversation,
        members: info.members,
        head: info.head,
    }
}

/// The `changed` answer to request `id`.
fn changed(id: Option<RequestId>, conversation: ConversationId, seq: Seq) -> ServerFrame {
    ServerFrame::Changed {
        id,
        conversation,
        seq,
    }
}

/// Refuses a list of more than `max` users.
pub(super) fn check_user_count(users: &[UserId], max: usize) -> Result<(), Error> {
    if users.len() > max {
        return Err(Error::refused(
            ErrorCode::TooLarge,
            format!("at most {max} users per request"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use messenger_core::protocol::{ErrorCode, ServerFrame, close};

    use super::super::testing::{Harness, close_code, frames_until_pong, next_frame, send};

    fn code(frame: &ServerFrame) -> Option<ErrorCode> {
        match frame {
            ServerFrame::Error { code, .. } => Some(*code),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_its_id() {
        let harness = Harness::new();
        let mut peer = harness.connect("alice:phone").await;
        send(&mut peer, r#"{"type":"ping","id":"p1"}"#).await;
        match next_frame(&mut peer).await {
            ServerFrame::Pong { id } => assert_eq!(id.map(|id| id.to_string()), Some("p1".into())),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_frames_get_error_frames_and_the_connection_stays() {
        let harness = Harness::new();
        let mut peer = harness.connect("alice:phone").await;
        send(&mut peer, r#"{"type":"no_such_type","id":"x"}"#).await;
        send(&mut peer, "not json").await;
        send(&mut peer, r#"{"type":"hello","v":1,"token":"alice:phone"}"#).await;
        let codes: Vec<_> = frames_until_pong(&mut peer)
            .await
            .iter()
            .map(code)
            .collect();
        assert_eq!(
            codes,
            [
                Some(ErrorCode::UnknownType),
                Some(ErrorCode::BadFrame),
                Some(ErrorCode::NotAuthenticated)
            ]
        );
    }

    #[tokio::test]
    async fn too_many_bad_frames_in_a_row_close_with_4009() {
        let harness = Harness::new();
        let max = harness.engine.config().max_bad_frames;
        let mut peer = harness.connect("alice:phone").await;
        for _ in 0..max {
            send(&mut peer, "not json").await;
        }
        assert_eq!(close_code(&mut peer).await, Some(close::TOO_MANY_ERRORS));
    }

    #[tokio::test]
    async fn a_good_frame_resets_the_bad_frame_count() {
        let harness = Harness::new();
        let max = harness.engine.config().max_bad_frames;
        let mut peer = harness.connect("alice:phone").await;
        for _ in 0..2 {
            for _ in 0..max - 1 {
                send(&mut peer, "not json").await;
            }
            let frames = frames_until_pong(&mut peer).await;
            assert_eq!(
                frames.len() as u32,
                max - 1,
                "one error frame per bad frame"
            );
        }
    }
}
