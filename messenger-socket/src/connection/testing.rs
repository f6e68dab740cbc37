//! A connection under test: an engine on the embedded backends and WebSocket peers over
//! `tokio::io::duplex`, frames read raw (nothing dropped, reordered or filled).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use messenger_core::protocol::ServerFrame;
use messenger_core::{ConversationId, UserId};
use messenger_fanout::presence::{Presence, memory::MemoryPresence};
use messenger_fanout::{Fanout, local::LocalFanout};
use messenger_sequencer::{Sequencer, memory::MemorySequencer};
use messenger_store::{EmbeddedStore, Store};
use tokio::io::DuplexStream;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, protocol::Role};

use super::serve_connection;
use crate::auth::DevAuthenticator;
use crate::engine::Node;
use crate::engine::{CreateGroup, Engine};
use crate::hub::{ConnectionHandle, Hub};
use crate::{EngineConfig, Services};

/// The peer's end of a connection.
pub(super) type Peer = WebSocketStream<DuplexStream>;

/// How long a test waits for a frame before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// The backends of [`Harness`]: embedded store, memory sequencer, local fanout, dev tokens.
pub(super) type TestBackends = Services<
    Store<EmbeddedStore>,
    Sequencer<MemorySequencer<Store<EmbeddedStore>>>,
    Fanout<LocalFanout<Arc<Hub>>>,
    DevAuthenticator,
    Presence<MemoryPresence>,
>;

/// An engine on a fresh embedded store.
pub(super) struct Harness {
    pub(super) engine: Engine<TestBackends>,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self::with_config(EngineConfig::default())
    }

    pub(super) fn with_config(config: EngineConfig) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(EmbeddedStore::open(dir.path().join("m.db")).expect("a store"));
        let node = Node::single();
        let engine = Engine::new(
            Services {
                sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
                fanout: Fanout::new(LocalFanout::new(node.hub())),
                store,
                auth: DevAuthenticator,
                presence: Presence::new(MemoryPresence::new()),
            },
            node,
            config,
        );
        Harness { engine, _dir: dir }
    }

    /// A WebSocket served by [`serve_connection`], before `hello`.
    pub(super) async fn raw(&self) -> Peer {
        let (server_side, client_side) = tokio::io::duplex(64 * 1024);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_side, Role::Server, None).await;
            serve_connection(engine, ws).await;
        });
        WebSocketStream::from_raw_socket(client_side, Role::Client, None).await
    }

    /// A connection past `hello` (dev token `user:device`), its `welcome` read.
    pub(super) async fn connect(&self, token: &str) -> Peer {
        let mut peer = self.raw().await;
        send(
            &mut peer,
            &format!(r#"{{"type":"hello","v":1,"token":"{token}"}}"#),
        )
        .await;
        let welcome = next_frame(&mut peer).await;
        assert!(
            matches!(welcome, ServerFrame::Welcome { .. }),
            "{welcome:?}"
        );
        peer
    }

    /// The one connection of `user` on this engine.
    pub(super) fn handle_of(&self, user: &str) -> ConnectionHandle {
        let user = UserId::new(user).expect("a user id");
        let mut handles = self.engine.hub().handles(&user);
        assert_eq!(handles.len(), 1, "one connection of {user}");
        handles.remove(0)
    }

    /// A group of `owner` with `members`, through the engine.
    pub(super) async fn group(&self, owner: &str, members: &[&str]) -> ConversationId {
        let info = self
            .engine
            .create_group(CreateGroup {
                actor: messenger_core::auth::Identity::new(
                    UserId::new(owner).expect("a user id"),
                    messenger_core::DeviceId::new("admin").expect("a device id"),
                ),
                title: "test".into(),
                members: members
                    .iter()
                    .map(|user| UserId::new(*user).expect("a user id"))
                    .collect(),
            })
            .await
            .expect("a group");
        info.conversation.id
    }
}

/// Writes a text frame.
pub(super) async fn send(peer: &mut Peer, text: &str) {
    peer.send(tungstenite::Message::text(text.to_owned()))
        .await
        .expect("the frame written");
}

/// The next data frame, as the server wrote it.
pub(super) async fn next_frame(peer: &mut Peer) -> ServerFrame {
    loop {
        let message = timeout(WAIT, peer.next())
            .await
            .expect("a frame in time")
            .expect("the connection open")
            .expect("a frame");
        match message {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(&text).expect("a server frame");
            }
            tungstenite::Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
}

/// Every data frame until the `pong` answering a `ping` sent now: what the server wrote
/// before it.
pub(super) async fn frames_until_pong(peer: &mut Peer) -> Vec<ServerFrame> {
    send(peer, r#"{"type":"ping","id":"fence"}"#).await;
    let mut frames = Vec::new();
    loop {
        match next_frame(peer).await {
            ServerFrame::Pong { .. } => return frames,
            frame => frames.push(frame),
        }
    }
}

/// The close code the server ends with (data frames before it are skipped); `None` when
/// the stream ends without a close frame.
pub(super) async fn close_code(peer: &mut Peer) -> Option<u16> {
    loop {
        match timeout(WAIT, peer.next()).await.expect("the close in time") {
            Some(Ok(tungstenite::Message::Close(close))) => {
                return close.map(|frame| u16::from(frame.code));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// Sends `sync` with `cursors` (JSON object text) and reads up to `synced`: the seqs of every
/// `message` before it, in the order written, and the summaries.
pub(super) async fn sync(
    peer: &mut Peer,
    cursors: &str,
) -> (
    Vec<(ConversationId, u64)>,
    Vec<messenger_core::ConversationSummary>,
) {
    send(peer, &format!(r#"{{"type":"sync","cursors":{cursors}}}"#)).await;
    let mut seqs = Vec::new();
    loop {
        match next_frame(peer).await {
            ServerFrame::Message { message } => {
                seqs.push((message.conversation.clone(), message.seq.get()));
            }
            ServerFrame::Synced { conversations } => return (seqs, conversations),
            other => panic!("{other:?}"),
        }
    }
}

/// A text entry of `conversation` at `seq` (not stored: for pushing into a queue).
pub(super) fn entry(conversation: &ConversationId, seq: u64) -> Arc<messenger_core::Message> {
    Arc::new(messenger_core::Message {
        conversation: conversation.clone(),
        seq: messenger_core::Seq(seq),
        sender: UserId::new("bob").expect("a user id"),
        sender_device: messenger_core::DeviceId::new("laptop").expect("a device id"),
        client_msg_id: messenger_core::ClientMsgId::new(format!("m{seq}")).expect("an id"),
        sent_at: messenger_core::Timestamp(seq),
        body: messenger_core::Body::text(format!("#{seq}")),
    })
}
