//! `sync`: the device's backlog from its cursors, streamed in order, then `synced`.

use std::collections::{BTreeMap, HashMap};

use messenger_core::protocol::ServerFrame;
use messenger_core::store::UserConversations;
use messenger_core::{ConversationId, ConversationSummary, Error, Seq, call};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use super::delivery::Track;
use super::refusal::request_error;
use super::{Connection, Done, End};
use crate::engine::Backends;

/// A `sync` whose backlog is still being written.
pub(super) struct PendingSync {
    summaries: Vec<ConversationSummary>,
    /// Conversations whose backlog is not yet fully written, with the head to reach.
    remaining: HashMap<ConversationId, Seq>,
}

impl<B: Backends> Connection<B> {
    /// Reads the user's conversations off the loop; [`Connection::sync_loaded`] goes on.
    pub(super) fn start_sync(
        &mut self,
        cursors: BTreeMap<ConversationId, Seq>,
        limit: Option<u32>,
    ) {
        let store = self.node.services().store().clone();
        let user = self.identity.user.clone();
        self.spawn_task(Box::pin(async move {
            let result = call(&store, UserConversations { user }).await;
            Done::SyncLoaded(result, cursors, limit)
        }));
    }

    /// The user's conversations are known: every track restarts from the device's cursor
    /// (never past the head; with a `limit`, no further back than `limit` entries from the
    /// head, announced by a `limited` frame) and streams its backlog.
    pub(super) async fn sync_loaded<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        result: Result<Vec<ConversationSummary>, Error>,
        cursors: BTreeMap<ConversationId, Seq>,
        limit: Option<u32>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let summaries = match result {
            Ok(summaries) => summaries,
            Err(err) => return self.reply(ws, request_error(None, &err)).await,
        };
        self.synced = true;
        let mut remaining = HashMap::new();
        let mut ids = Vec::with_capacity(summaries.len());
        for summary in &summaries {
            let id = summary.conversation.id.clone();
            let mut cursor = cursors
                .get(&id)
                .copied()
                .unwrap_or(Seq::ZERO)
                .min(summary.head);
            if let Some(limit) = limit {
                let from = Seq(summary.head.get().saturating_sub(u64::from(limit)));
                if from > cursor {
                    cursor = from;
                    let frame = ServerFrame::Limited {
                        conversation: id.clone(),
                        from,
                    };
                    self.reply(ws, frame).await?;
                }
            }
            self.tracks
                .entry(id.clone())
                .or_insert_with(|| Track::new(cursor))
                .restart_at(cursor, summary.head);
            if summary.head > cursor {
                remaining.insert(id.clone(), summary.head);
            }
            ids.push(id);
        }
        self.pending_sync = Some(PendingSync {
            summaries,
            remaining,
        });
        for id in &ids {
            self.pump(ws, id).await?;
        }
        // Conversations with nothing to stream (or none at all) are done already.
        self.check_synced(ws, None).await
    }

    /// Sends `synced` once every conversation of the pending sync reached its target;
    /// `conversation` is the one that just moved.
    pub(super) async fn check_synced<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        conversation: Option<&ConversationId>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Some(pending) = &mut self.pending_sync else {
            return Ok(());
        };
        if let Some(conversation) = conversation {
            let delivered = self
                .tracks
                .get(conversation)
                .map_or(Seq::ZERO, |track| track.lane.delivered());
            if pending
                .remaining
                .get(conversation)
                .is_some_and(|target| delivered >= *target)
            {
                pending.remaining.remove(conversation);
            }
        }
        if pending.remaining.is_empty() {
            if let Some(pending) = self.pending_sync.take() {
                let frame = ServerFrame::Synced {
                    conversations: pending.summaries,
                };
                self.reply(ws, frame).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::protocol::ServerFrame;

    use super::super::testing::{Harness, next_frame, sync};

    #[tokio::test]
    async fn a_sync_streams_what_follows_each_cursor_then_says_synced() {
        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut first = harness.connect("alice:phone").await;
        let (backlog, summaries) = sync(&mut first, "{}").await;
        let head = summaries[0].head.get();
        let expected: Vec<_> = (1..=head).map(|seq| (group.clone(), seq)).collect();
        assert_eq!(
            backlog, expected,
            "from seq 1 for a conversation not listed"
        );

        let mut resumed = harness.connect("alice:laptop").await;
        let cursors = format!(r#"{{"{group}":{}}}"#, head - 1);
        let (backlog, _) = sync(&mut resumed, &cursors).await;
        assert_eq!(
            backlog,
            [(group.clone(), head)],
            "only what follows the cursor"
        );
    }

    #[tokio::test]
    async fn a_cursor_past_the_head_streams_nothing() {
        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut peer = harness.connect("alice:phone").await;
        let (backlog, summaries) = sync(&mut peer, &format!(r#"{{"{group}":999}}"#)).await;
        assert!(backlog.is_empty(), "{backlog:?}");
        assert_eq!(summaries.len(), 1);
    }

    /// docs/protocol.md §4.2: a cursor past the head is taken as the head: nothing is
    /// streamed, `synced` tells the real head, and the next entry (head + 1) comes live.
    #[tokio::test]
    async fn a_cursor_past_the_head_is_taken_as_the_head() {
        let harness = Harness::new();
        let group = harness.group("alice", &["bob"]).await;
        let mut peer = harness.connect("alice:phone").await;
        let (backlog, summaries) = sync(&mut peer, &format!(r#"{{"{group}":999}}"#)).await;
        assert!(backlog.is_empty(), "{backlog:?}");
        let head = summaries[0].head.get();
        assert!(head < 999, "synced tells the real head: {head}");
        harness
            .engine
            .send(crate::engine::SendMessage {
                resend: false,
                actor: messenger_core::auth::Identity::new(
                    messenger_core::UserId::new("bob").unwrap(),
                    messenger_core::DeviceId::new("laptop").unwrap(),
                ),
                conversation: group.clone(),
                client_msg_id: messenger_core::ClientMsgId::new("after-reset").unwrap(),
                body: messenger_core::protocol::NewBody::text("x"),
            })
            .await
            .unwrap();
        match next_frame(&mut peer).await {
            ServerFrame::Message { message } => assert_eq!(message.seq.get(), head + 1),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_user_with_no_conversations_is_synced_at_once() {
        let harness = Harness::new();
        let mut peer = harness.connect("alice:phone").await;
        let (backlog, summaries) = sync(&mut peer, "{}").await;
        assert!(backlog.is_empty() && summaries.is_empty());
    }
}
