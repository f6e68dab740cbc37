//! Ordered delivery: log entries written to the device in seq order per conversation, each
//! once, with gaps filled from the store (and dead holes resolved as voids).
//!
//! The order itself is a [`Lane`] per conversation, the same type the Rust client orders by;
//! what this module adds is the server's policy for a gap: wait [`HOLE_RETRY`] for the fanout
//! (sends are stored concurrently, so entries can be handed over out of order), then read the
//! store, and past the engine's `void_after` have the holes voided in one write.

use std::sync::Arc;
use std::time::Instant;

use messenger_core::protocol::ServerFrame;
use messenger_core::store::{MessagePage, ReadRange};
use messenger_core::{ConversationId, Error, Message, Seq};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

use super::write::feed;
use super::{Connection, Done, End, HOLE_RETRY};
use crate::engine::Backends;
use crate::order::{Lane, Offer};

/// A log entry waiting for its turn.
pub(super) struct Held {
    message: Arc<Message>,
    /// The frame, when the fanout already serialized it.
    text: Option<Utf8Bytes>,
}

impl Held {
    fn into_text(self) -> Utf8Bytes {
        self.text.unwrap_or_else(|| {
            Utf8Bytes::from(
                ServerFrame::Message {
                    message: self.message,
                }
                .to_json(),
            )
        })
    }
}

/// Per-conversation delivery state of one connection.
pub(super) struct Track {
    /// What was written to the device, and what waits for a gap below it.
    pub(super) lane: Lane<Held>,
    /// A store read is in flight.
    fetching: bool,
    /// Don't ask the store again before this.
    retry_at: Option<Instant>,
    /// When `delivered + 1` was first seen missing.
    missing_since: Option<Instant>,
    /// The highest seq known when `missing_since` was set: a hole at or below it has been
    /// missing at least since then.
    missing_upto: Seq,
}

impl Track {
    pub(super) fn new(delivered: Seq) -> Self {
        Self {
            lane: Lane::new(delivered),
            fetching: false,
            retry_at: None,
            missing_since: None,
            missing_upto: Seq::ZERO,
        }
    }

    /// Starts over from a device's cursor (a `sync`) whose backlog reaches `head`.
    pub(super) fn restart_at(&mut self, cursor: Seq, head: Seq) {
        self.lane.restart_at(cursor);
        self.lane.note_head(head);
        self.retry_at = None;
        self.missing_since = None;
    }

    /// The gap below `seq` was just seen in a live stream: its entries are most likely still
    /// on their way, so give them a moment before asking the store, rather than one store
    /// read per connection of a large group for every reordering.
    fn gap_seen(&mut self, seq: Seq) {
        if self.missing_since.is_none() && self.retry_at.is_none() && !self.fetching {
            let now = Instant::now();
            self.missing_since = Some(now);
            self.missing_upto = seq;
            self.retry_at = Some(now + HOLE_RETRY);
        }
    }

    fn progressed(&mut self) {
        self.missing_since = None;
        self.retry_at = None;
    }
}

impl<B: Backends> Connection<B> {
    /// A live entry from the fanout: written now when it is next in line, else held until
    /// the gap below it fills.
    pub(super) async fn deliver_live<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        message: Arc<Message>,
        text: Utf8Bytes,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if !self.synced {
            // Until the device syncs, live entries are not delivered: its sync reads them
            // from the store, so dropping them here loses nothing and duplicates nothing.
            return Ok(());
        }
        let seq = message.seq;
        let Some(track) = self.tracks.get_mut(&message.conversation) else {
            // A conversation first seen live (a group the user was just added to): its whole
            // log is read from the store, from seq 0, right away.
            let conversation = message.conversation.clone();
            let mut track = Track::new(Seq::ZERO);
            track.lane.hold(
                seq,
                Held {
                    message,
                    text: Some(text),
                },
            );
            self.tracks.insert(conversation.clone(), track);
            return Box::pin(self.pump(ws, &conversation)).await;
        };
        if track.lane.held_len() > 0 {
            // Behind a gap already: join the queue.
            if track.lane.hold(
                seq,
                Held {
                    message: Arc::clone(&message),
                    text: Some(text),
                },
            ) && seq > track.lane.delivered().next()
            {
                track.gap_seen(seq);
            }
            return Box::pin(self.pump(ws, &message.conversation)).await;
        }
        // The common case of a live fanout: the entry is exactly the next one of its
        // conversation and is written straight away, without going through the held map.
        let offer = track.lane.offer(
            seq,
            Held {
                message: Arc::clone(&message),
                text: Some(text),
            },
        );
        match offer {
            Offer::Next(held) => {
                track.progressed();
                let behind = track.lane.is_behind();
                feed(
                    ws,
                    tungstenite::Message::Text(held.into_text()),
                    self.write_timeout,
                )
                .await?;
                if behind {
                    Box::pin(self.pump(ws, &message.conversation)).await
                } else if self.pending_sync.is_some() {
                    Box::pin(self.check_synced(ws, Some(&message.conversation))).await
                } else {
                    Ok(())
                }
            }
            Offer::Held => {
                track.gap_seen(seq);
                Box::pin(self.pump(ws, &message.conversation)).await
            }
            Offer::Duplicate(_) | Offer::Full(_) => Ok(()),
        }
    }

    /// Writes every entry of `conversation` that is next in line; asks the store for what is
    /// missing.
    pub(super) async fn pump<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        conversation: &ConversationId,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let write_timeout = self.write_timeout;
        let sync_page = self.node.config().sync_page;
        let void_after = self.node.config().void_after;
        let Some(track) = self.tracks.get_mut(conversation) else {
            return Ok(());
        };
        let mut progressed = false;
        while let Some((_, held)) = track.lane.pop_ready() {
            progressed = true;
            feed(
                ws,
                tungstenite::Message::Text(held.into_text()),
                write_timeout,
            )
            .await?;
        }
        if progressed {
            track.progressed();
        }
        let delivered = track.lane.delivered();
        if track.lane.is_behind() && !track.fetching {
            let now = Instant::now();
            if track.missing_since.is_none() {
                track.missing_since = Some(now);
                track.missing_upto = track.lane.known_head();
            }
            let missing_since = track.missing_since.unwrap_or(now);
            match track.retry_at {
                Some(at) if at > now => {
                    self.hole_deadline = Some(self.hole_deadline.map_or(at, |d| d.min(at)));
                }
                _ => {
                    track.fetching = true;
                    let store = self.node.services().store().clone();
                    let conversation = conversation.clone();
                    let until = track.lane.known_head();
                    let limit = sync_page;
                    // Watched for `void_after`: what was known missing then is dead.
                    let overdue = if now.duration_since(missing_since) >= void_after {
                        track.missing_upto
                    } else {
                        Seq::ZERO
                    };
                    self.spawn_task(Box::pin(async move {
                        // Dead holes come back as voids, all of them in one store write.
                        let range = ReadRange {
                            conversation: conversation.clone(),
                            after: delivered,
                            until: Some(until),
                            limit,
                        };
                        let result =
                            crate::engine::holes::read_after(&store, range, void_after, overdue)
                                .await
                                .map(MessagePage::from);
                        Done::Fetched(conversation, result)
                    }));
                }
            }
        }
        self.check_synced(ws, Some(conversation)).await
    }

    /// Pumps every conversation whose retry is due.
    pub(super) async fn pump_waiting<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let now = Instant::now();
        let due: Vec<ConversationId> = self
            .tracks
            .iter()
            .filter(|(_, track)| {
                !track.fetching
                    && track.lane.is_behind()
                    && track.retry_at.is_some_and(|at| at <= now)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for conversation in due {
            self.pump(ws, &conversation).await?;
        }
        Ok(())
    }

    /// A store read for `conversation` came back.
    pub(super) async fn fetched<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        conversation: ConversationId,
        result: Result<MessagePage, Error>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(track) = self.tracks.get_mut(&conversation) else {
            return Ok(());
        };
        track.fetching = false;
        match result {
            Ok(page) => {
                track.lane.note_head(page.head);
                let next = track.lane.delivered().next();
                let mut found_next = false;
                for message in page.messages {
                    found_next |= message.seq == next;
                    track.lane.hold(
                        message.seq,
                        Held {
                            message,
                            text: None,
                        },
                    );
                }
                if !found_next {
                    // The entry after the cursor is still missing: ask again later.
                    track.retry_at = Some(Instant::now() + HOLE_RETRY);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, %conversation, "store read for delivery failed");
                track.retry_at = Some(Instant::now() + HOLE_RETRY * 10);
            }
        }
        self.pump(ws, &conversation).await
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::protocol::ServerFrame;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::super::testing::{Harness, entry, frames_until_pong, sync};
    use crate::hub::Outbound;

    fn seqs(frames: &[ServerFrame]) -> Vec<u64> {
        frames
            .iter()
            .map(|frame| match frame {
                ServerFrame::Message { message } => message.seq.get(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn push(
        handle: &crate::hub::ConnectionHandle,
        message: std::sync::Arc<messenger_core::Message>,
    ) {
        let text = Utf8Bytes::from(
            ServerFrame::Message {
                message: std::sync::Arc::clone(&message),
            }
            .to_json(),
        );
        handle.push(Outbound::Entry(message, text));
    }

    #[tokio::test]
    async fn live_entries_handed_over_out_of_order_are_written_in_order_once() {
        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut peer = harness.connect("alice:phone").await;
        let (_, summaries) = sync(&mut peer, "{}").await;
        let head = summaries[0].head.get();
        let handle = harness.handle_of("alice");
        // The fanout can hand entries over out of order (sends are stored concurrently),
        // and twice (a retry): the device still gets each once, in seq order.
        for seq in [head + 3, head + 1, head + 1, head + 2, head + 3, head] {
            push(&handle, entry(&group, seq));
        }
        let frames = frames_until_pong(&mut peer).await;
        assert_eq!(seqs(&frames), [head + 1, head + 2, head + 3]);
    }

    #[tokio::test]
    async fn a_gap_in_the_live_stream_is_filled_from_the_store() {
        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut peer = harness.connect("alice:phone").await;
        let (_, summaries) = sync(&mut peer, "{}").await;
        let head = summaries[0].head.get();
        // Stored, but its live copy never reaches this connection (taken off the hub while
        // it is sent); the next one does.
        let alice = messenger_core::UserId::new("alice").unwrap();
        let handle = harness.handle_of("alice");
        harness.engine.hub().unregister(&alice, handle.id);
        let bob = messenger_core::auth::Identity::new(
            messenger_core::UserId::new("bob").unwrap(),
            messenger_core::DeviceId::new("laptop").unwrap(),
        );
        let sent = harness
            .engine
            .send(crate::engine::SendMessage {
                resend: false,
                actor: bob,
                conversation: group.clone(),
                client_msg_id: messenger_core::ClientMsgId::new("lost-live").unwrap(),
                body: messenger_core::protocol::NewBody::text("x"),
            })
            .await
            .unwrap();
        assert_eq!(sent.message.seq.get(), head + 1);
        push(&handle, entry(&group, head + 2));
        let frames = frames_until_pong(&mut peer).await;
        // The pong can overtake the store read: read on until both entries came.
        let mut got = seqs(&frames);
        while got.len() < 2 {
            got.extend(seqs(&frames_until_pong(&mut peer).await));
        }
        assert_eq!(got, [head + 1, head + 2]);
    }

    /// docs/protocol.md §11 "Removed and re-added": a connection that stayed open while its
    /// user was out of a group continues after the last entry it delivered: the
    /// `member_removed` entry, then every entry stored while the user was out, then the
    /// `members_added` entry; it does not restart from seq 1.
    #[tokio::test]
    async fn a_member_removed_and_added_again_gets_what_was_stored_meanwhile_in_order() {
        use messenger_core::{Body, ClientMsgId, DeviceId, Role, UserId};

        use super::super::testing::next_frame;
        use crate::engine::{AddMembers, RemoveMember, SendMessage};

        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut peer = harness.connect("bob:phone").await;
        let (_, summaries) = sync(&mut peer, "{}").await;
        let head = summaries[0].head.get();
        let alice = messenger_core::auth::Identity::new(
            UserId::new("alice").unwrap(),
            DeviceId::new("admin").unwrap(),
        );
        let bob = UserId::new("bob").unwrap();
        let removed = harness
            .engine
            .remove_member(RemoveMember {
                actor: alice.clone(),
                conversation: group.clone(),
                user: bob.clone(),
            })
            .await
            .unwrap();
        for n in 0..3 {
            harness
                .engine
                .send(SendMessage {
                    resend: false,
                    actor: alice.clone(),
                    conversation: group.clone(),
                    client_msg_id: ClientMsgId::new(format!("while-out-{n}")).unwrap(),
                    body: messenger_core::protocol::NewBody::text("x"),
                })
                .await
                .unwrap();
        }
        let added = harness
            .engine
            .add_members(AddMembers {
                actor: alice,
                conversation: group.clone(),
                users: vec![bob],
                role: Role::Member,
            })
            .await
            .unwrap();
        assert_eq!(removed.get(), head + 1);
        assert_eq!(added.get(), head + 5);
        let mut got = Vec::new();
        while got.last().is_none_or(|(seq, _)| *seq < added.get()) {
            match next_frame(&mut peer).await {
                ServerFrame::Message { message } => {
                    let kind = match &message.body {
                        Body::MemberRemoved { .. } => "member_removed",
                        Body::Text { .. } => "text",
                        Body::MembersAdded { .. } => "members_added",
                        other => panic!("{other:?}"),
                    };
                    got.push((message.seq.get(), kind));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            got,
            [
                (head + 1, "member_removed"),
                (head + 2, "text"),
                (head + 3, "text"),
                (head + 4, "text"),
                (head + 5, "members_added"),
            ]
        );
    }
}
