//! The chat engine of the messenger SDK and its edge: the engine that composes a store, a
//! sequencer, a fanout and a presence registry into chat operations, and the WebSocket and HTTP
//! endpoints that expose it.
//!
//! - [`engine`]: the [`Engine`] and its operations, each a [`tower::Service`] with a typed
//!   request (send, open a direct chat, create a group, add/remove members, roles, leave,
//!   receipts, typing, presence, history...), callable from any code with the same guarantees
//!   as a WebSocket client gets.
//! - [`serve_connection`] runs the protocol (`docs/protocol.md`) on one WebSocket, over any
//!   byte stream: one client of the engine.
//! - [`Server`] is the HTTP side: `GET /ws`, `/healthz`, `/readyz`, connection limit, drain.
//! - [`Node`] is this process's place in the cluster: its id and its [`hub::Hub`], the
//!   registry of local connections the local fanout delivers through.
//! - [`auth`]: dev tokens and signed tokens (JWT). The presence registries (memory, Redis)
//!   live in `messenger_fanout::presence`.
//! - [`media`]: media messages: upload tickets, the upload and download endpoints, expiry.
//! - [`order`]: the per-conversation order of log entries (sans I/O), by which the server
//!   writes entries to a device and the Rust client surfaces them.
//! - `client` (feature `client`): the Rust client with outbox, resume and gap filling. A
//!   client-only build (`default-features = false, features = ["client"]`) compiles none of
//!   the server stack (feature `server`, on by default: axum, hyper, jsonwebtoken,
//!   object_store).
//!
//! An engine on the embedded backends, serving one connection over an in-memory pipe (a real
//! server uses [`Server`] on TCP instead):
//!
//! ```
//! use std::sync::Arc;
//!
//! use futures_util::{SinkExt, StreamExt};
//! use messenger_fanout::presence::{Presence, memory::MemoryPresence};
//! use messenger_fanout::{Fanout, local::LocalFanout};
//! use messenger_sequencer::{Sequencer, memory::MemorySequencer};
//! use messenger_socket::auth::DevAuthenticator;
//! use messenger_socket::{Engine, EngineConfig, Node, Services};
//! use messenger_store::{EmbeddedStore, Store};
//! use tokio_tungstenite::WebSocketStream;
//! use tokio_tungstenite::tungstenite::{Message, protocol::Role};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db"))?);
//! let node = Node::single();
//! let services = Services {
//!     // The sequencer learns each conversation's floor from the store.
//!     sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
//!     fanout: Fanout::new(LocalFanout::new(node.hub())),
//!     store,
//!     auth: DevAuthenticator,
//!     presence: Presence::new(MemoryPresence::new()),
//! };
//! let engine = Engine::new(services, node, EngineConfig::default());
//!
//! let (server_side, client_side) = tokio::io::duplex(64 * 1024);
//! tokio::spawn(async move {
//!     let ws = WebSocketStream::from_raw_socket(server_side, Role::Server, None).await;
//!     messenger_socket::serve_connection(engine, ws).await;
//! });
//! let mut ws = WebSocketStream::from_raw_socket(client_side, Role::Client, None).await;
//! ws.send(Message::text(r#"{"type":"hello","v":1,"token":"alice:phone"}"#)).await?;
//! let welcome = ws.next().await.ok_or("closed")??;
//! assert!(welcome.to_text()?.starts_with(r#"{"type":"welcome""#));
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "server")]
mod connection;
#[cfg(feature = "server")]
pub mod engine;
#[cfg(all(fuzzing, feature = "server"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
pub mod hub;
#[cfg(feature = "server")]
mod io;
#[cfg(feature = "server")]
mod last_seen;
#[cfg(feature = "server")]
pub mod media;
#[cfg(feature = "server")]
pub mod members;
pub mod order;
#[cfg(feature = "server")]
mod server;

#[cfg(feature = "server")]
pub use connection::serve_connection;
#[cfg(feature = "server")]
pub use engine::{Backends, Engine, EngineConfig, EventSink, Node, Services};
#[cfg(feature = "server")]
pub use server::{Server, ServerConfig, bind, shutdown_signal};

/// The guides under `docs/`, as rustdoc pages: their Rust code blocks are compiled and run by
/// `cargo test --doc`, so they cannot drift from the API.
// Markdown written for people, not for clippy's doc style.
#[allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
pub mod docs {
    #[doc = include_str!("../../docs/architecture.md")]
    pub mod architecture {}
    #[doc = include_str!("../../docs/media.md")]
    pub mod media {}
    #[doc = include_str!("../../docs/operations.md")]
    pub mod operations {}
}
