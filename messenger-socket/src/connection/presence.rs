//! Presence subscriptions: `subscribe_presence`, `unsubscribe_presence`, and the presence
//! frames written for them (a snapshot at subscription, then live changes).

use messenger_core::{PresenceUpdate, RequestId, UserId};
use std::collections::HashSet;

use messenger_core::protocol::{ErrorCode, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::dispatch::check_user_count;
use super::refusal::request_error;
use super::{Connection, End};
use crate::engine::{Backends, GetPresence};
use crate::hub::{Outbound, PresenceFrame};

impl<B: Backends> Connection<B> {
    /// Watches `users`: `ok`, then each one's state now (a snapshot), then live changes.
    pub(super) async fn subscribe_presence<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        id: Option<RequestId>,
        users: Vec<UserId>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let max = self.node.config().limits.max_users_per_request;
        if let Err(err) = check_user_count(&users, max) {
            return self.reply(ws, request_error(id, &err)).await;
        }
        if self.watched.len() + users.len() > max * 4 {
            let refusal = ServerFrame::error(
                id,
                ErrorCode::TooLarge,
                "too many presence subscriptions on this connection",
            );
            return self.reply(ws, refusal).await;
        }
        self.node.hub().watch(&self.handle, &users);
        // The snapshot below counts until a live change about the user is written.
        self.watched
            .extend(users.iter().map(|user| (user.clone(), false)));
        self.reply(ws, ServerFrame::Ok { id }).await?;
        let node = self.node.clone();
        let handle = self.handle.clone();
        tokio::spawn(async move {
            if let Ok(states) = node.presence_of(GetPresence { users }).await {
                for state in states {
                    let frame = ServerFrame::Presence(PresenceUpdate {
                        user: state.user.clone(),
                        online: state.online,
                        last_seen: state.last_seen,
                    });
                    handle.push(Outbound::Presence(Box::new(PresenceFrame {
                        user: state.user,
                        text: Utf8Bytes::from(frame.to_json()),
                        snapshot: true,
                    })));
                }
            }
        });
        Ok(())
    }

    /// Stops watching `users`.
    pub(super) async fn unsubscribe_presence<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        id: Option<RequestId>,
        users: Vec<UserId>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let max = self.node.config().limits.max_users_per_request;
        if let Err(err) = check_user_count(&users, max) {
            return self.reply(ws, request_error(id, &err)).await;
        }
        let users: HashSet<UserId> = users.into_iter().collect();
        self.node.hub().unwatch(self.handle.id, &users);
        self.watched.retain(|user, _| !users.contains(user));
        self.reply(ws, ServerFrame::Ok { id }).await
    }

    /// Writes a presence frame unless it is stale: a snapshot after a live change about the
    /// same user was written, or anything about a user no longer watched.
    pub(super) async fn write_presence<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        frame: PresenceFrame,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let PresenceFrame {
            user,
            text,
            snapshot,
        } = frame;
        match self.watched.get_mut(&user) {
            // A live change was written since the subscription: this state is older.
            Some(true) if snapshot => return Ok(()),
            Some(live) if !snapshot => *live = true,
            Some(_) => {}
            // Unsubscribed meanwhile.
            None => return Ok(()),
        }
        self.write_text(ws, text).await
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::protocol::{ErrorCode, ServerFrame};
    use messenger_core::{PresenceUpdate, Timestamp, UserId};
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::super::testing::{Harness, frames_until_pong, next_frame, send};
    use crate::hub::{Outbound, PresenceFrame};

    /// The state read when a connection subscribes to someone's presence can be queued after
    /// a live change about them; written last, it would tell the client the older state.
    #[tokio::test]
    async fn a_presence_snapshot_older_than_a_live_change_is_dropped() {
        let harness = Harness::new();
        let mut peer = harness.connect("alice:phone").await;
        send(
            &mut peer,
            r#"{"type":"subscribe_presence","id":"p","users":["carol"]}"#,
        )
        .await;
        // `ok`, then the snapshot (carol never seen): a live change of carol's counts from here.
        assert!(matches!(
            next_frame(&mut peer).await,
            ServerFrame::Ok { .. }
        ));
        assert!(matches!(
            next_frame(&mut peer).await,
            ServerFrame::Presence(PresenceUpdate { online: false, .. })
        ));

        // Carol comes online (live), then a stale snapshot of the same subscription arrives.
        let carol = UserId::new("carol").unwrap();
        let handle = harness.handle_of("alice");
        let frame = |online: bool| {
            Utf8Bytes::from(
                ServerFrame::Presence(PresenceUpdate {
                    user: carol.clone(),
                    online,
                    last_seen: Some(Timestamp(5)),
                })
                .to_json(),
            )
        };
        for (online, snapshot) in [(true, false), (false, true)] {
            handle.push(Outbound::Presence(Box::new(PresenceFrame {
                user: carol.clone(),
                text: frame(online),
                snapshot,
            })));
        }
        let presence: Vec<bool> = frames_until_pong(&mut peer)
            .await
            .into_iter()
            .filter_map(|frame| match frame {
                ServerFrame::Presence(PresenceUpdate { online, .. }) => Some(online),
                _ => None,
            })
            .collect();
        assert_eq!(
            presence,
            [true],
            "the stale snapshot was written after the live change"
        );
    }

    #[tokio::test]
    async fn nothing_is_written_about_a_user_no_longer_watched() {
        let harness = Harness::new();
        let mut peer = harness.connect("alice:phone").await;
        send(
            &mut peer,
            r#"{"type":"subscribe_presence","id":"s","users":["carol"]}"#,
        )
        .await;
        send(
            &mut peer,
            r#"{"type":"unsubscribe_presence","id":"u","users":["carol"]}"#,
        )
        .await;
        let _ = frames_until_pong(&mut peer).await;
        let carol = UserId::new("carol").unwrap();
        harness
            .handle_of("alice")
            .push(Outbound::Presence(Box::new(PresenceFrame {
                user: carol.clone(),
                text: Utf8Bytes::from(
                    ServerFrame::Presence(PresenceUpdate {
                        user: carol,
                        online: true,
                        last_seen: None,
                    })
                    .to_json(),
                ),
                snapshot: false,
            })));
        assert!(frames_until_pong(&mut peer).await.is_empty());
    }

    #[tokio::test]
    async fn too_many_users_in_one_request_is_too_large() {
        let harness = Harness::new();
        let max = harness.engine.config().limits.max_users_per_request;
        let users: Vec<String> = (0..=max).map(|n| format!(r#""u{n}""#)).collect();
        let mut peer = harness.connect("alice:phone").await;
        for kind in ["subscribe_presence", "unsubscribe_presence"] {
            send(
                &mut peer,
                &format!(
                    r#"{{"type":"{kind}","id":"x","users":[{}]}}"#,
                    users.join(",")
                ),
            )
            .await;
            match next_frame(&mut peer).await {
                ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::TooLarge, "{kind}"),
                other => panic!("{kind}: {other:?}"),
            }
        }
    }
}
