//! Status changes of media entries, appended like membership changes: a seq from the
//! sequencer, one conditional store write, fanout to every member, domain events.

use std::sync::Arc;

use messenger_core::store::SetMediaStatus;
use messenger_core::{
    Body, ClientMsgId, ConversationId, DeviceId, DomainEvent, Error, ErrorKind, MediaStatus,
    MediaUpdate, Message, Seq, Timestamp, UserId, call,
};

use crate::engine::{Backends, Engine};

/// What became of a status change.
#[derive(Debug)]
pub(crate) enum Committed {
    /// The entry moved; the update is stored and fanned out.
    Applied,
    /// The entry was final already (ready or failed): nothing changed.
    Refused(Arc<Message>),
}

fn system_user() -> Result<UserId, Error> {
    UserId::new("system").map_err(|err| Error::new(ErrorKind::Unexpected, err.to_string()))
}

fn system_device() -> Result<DeviceId, Error> {
    DeviceId::new("system").map_err(|err| Error::new(ErrorKind::Unexpected, err.to_string()))
}

fn status_key(media_seq: Seq) -> Result<ClientMsgId, Error> {
    ClientMsgId::new(format!("media-status:{media_seq}"))
        .map_err(|err| Error::new(ErrorKind::Unexpected, err.to_string()))
}

impl<B: Backends> Engine<B> {
    /// Moves the media entry at `media_seq` to `status` (ready with `url`, or failed with
    /// `reason`), as the next entry of the conversation, through the same sequenced append as
    /// every entry.
    pub(crate) async fn commit_media_status(
        &self,
        conversation: &ConversationId,
        media_seq: Seq,
        status: MediaStatus,
        url: Option<String>,
        reason: Option<String>,
    ) -> Result<Committed, Error> {
        let info = self.conversation(conversation).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no conversation {conversation}"),
            )
        })?;
        let recipients: Arc<[UserId]> = info.members.iter().map(|m| m.user.clone()).collect();
        let update = Arc::new(Message {
            conversation: conversation.clone(),
            seq: self.next_seq(conversation).await?,
            sender: system_user()?,
            sender_device: system_device()?,
            client_msg_id: status_key(media_seq)?,
            sent_at: Timestamp::now(),
            body: Body::MediaStatus(Box::new(MediaUpdate {
                media_seq,
                status,
                url: url.clone(),
                reason: reason.clone(),
            })),
        });
        let store = self.services().store().clone();
        let (update, set) = self
            .append_sequenced(update, &recipients, |update| {
                let store = store.clone();
                async move { call(&store, SetMediaStatus { update }).await }
            })
            .await?;
        if !set.applied {
            self.void_unused(conversation, update.seq, &recipients)
                .await;
            return Ok(Committed::Refused(set.media));
        }
        self.fan_out(Arc::clone(&recipients), Arc::clone(&update))
            .await;
        self.publish(DomainEvent::MessageStored {
            message: Arc::clone(&update),
        });
        match (status, url) {
            (MediaStatus::Ready, Some(url)) => self.publish(DomainEvent::MediaReady {
                message: Arc::clone(&set.media),
                url,
            }),
            _ => self.publish(DomainEvent::MediaFailed {
                conversation: conversation.clone(),
                seq: media_seq,
                reason: reason.unwrap_or_default(),
            }),
        }
        Ok(Committed::Applied)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use messenger_core::store::{AppendMessage, CreateConversation};
    use messenger_core::{Conversation, ConversationKind, MediaBody, Member, Role};
    use messenger_fanout::presence::{Presence, memory::MemoryPresence};
    use messenger_fanout::{Fanout, local::LocalFanout};
    use messenger_sequencer::{Sequencer, memory::MemorySequencer};
    use messenger_store::{EmbeddedStore, Store};

    use super::*;
    use crate::auth::DevAuthenticator;
    use crate::engine::Node;
    use crate::engine::{EngineConfig, Services};

    #[tokio::test]
    async fn a_status_moves_once_with_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(EmbeddedStore::open(dir.path().join("m.db")).unwrap());
        let this_node = Node::single();
        let services = Services {
            sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
            fanout: Fanout::new(LocalFanout::new(this_node.hub())),
            store: store.clone(),
            auth: DevAuthenticator,
            presence: Presence::new(MemoryPresence::new()),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let node = Engine::new(services, this_node, EngineConfig::default())
            .with_event_sink(Arc::new(move |event| sink.lock().unwrap().push(event)));

        let alice = UserId::new("alice").unwrap();
        let chat = ConversationId::new("g:media").unwrap();
        call(
            &store,
            CreateConversation {
                conversation: Conversation {
                    id: chat.clone(),
                    kind: ConversationKind::Group,
                    title: Some("t".into()),
                    created_by: alice.clone(),
                    created_at: Timestamp(1),
                },
                members: vec![Member {
                    user: alice.clone(),
                    role: Role::Owner,
                }],
            },
        )
        .await
        .unwrap();
        let media = |seq: u64| Message {
            conversation: chat.clone(),
            seq: Seq(seq),
            sender: alice.clone(),
            sender_device: DeviceId::new("phone").unwrap(),
            client_msg_id: ClientMsgId::new(format!("m{seq}")).unwrap(),
            sent_at: Timestamp(2),
            body: Body::Media(Box::new(MediaBody {
                name: "a.png".into(),
                mime: "image/png".into(),
                size: 3,
                sha256: None,
                width: None,
                height: None,
                duration_ms: None,
                status: MediaStatus::Pending,
                url: None,
                reason: None,
                reply_to: None,
                reactions: Vec::new(),
            })),
        };
        for seq in [1, 2] {
            call(
                &store,
                AppendMessage {
                    message: Arc::new(media(seq)),
                },
            )
            .await
            .unwrap();
        }

        let ready = node
            .commit_media_status(&chat, Seq(1), MediaStatus::Ready, Some("u".into()), None)
            .await
            .unwrap();
        assert!(matches!(ready, Committed::Applied));
        let failed = node
            .commit_media_status(&chat, Seq(2), MediaStatus::Failed, None, Some("x".into()))
            .await
            .unwrap();
        assert!(matches!(failed, Committed::Applied));
        let late = node
            .commit_media_status(&chat, Seq(2), MediaStatus::Ready, Some("v".into()), None)
            .await
            .unwrap();
        assert!(matches!(late, Committed::Refused(_)), "ready after failed");

        let events = events.lock().unwrap();
        let ready_events: Vec<_> = events
            .iter()
            .filter_map(|event| match event {
                DomainEvent::MediaReady { message, url } => Some((message.seq, url.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(ready_events, vec![(Seq(1), "u".to_owned())]);
        let failed_events: Vec<_> = events
            .iter()
            .filter_map(|event| match event {
                DomainEvent::MediaFailed { seq, reason, .. } => Some((*seq, reason.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(failed_events, vec![(Seq(2), "x".to_owned())]);
        let stored = events
            .iter()
            .filter(|event| matches!(event, DomainEvent::MessageStored { .. }))
            .count();
        assert_eq!(
            stored, 2,
            "one status entry per applied change, none for the refusal"
        );
    }
}
