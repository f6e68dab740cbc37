//! The socket layer of the messenger SDK: WebSocket connections, authentication, per-connection
//! ordering and backpressure, the presence registry, and the node that composes a store, a
//! sequencer and a fanout into a chat server.
//!
//! - [`Node`] holds the services ([`Services`]) and runs the chat operations: send (checked,
//!   sequenced, stored durably, then fanned out), group membership, receipts, typing,
//!   presence.
//! - [`serve_connection`] runs the protocol (`docs/protocol.md`) on one WebSocket, over any
//!   byte stream.
//! - [`Server`] is the HTTP side: `GET /ws`, `/healthz`, `/readyz`, connection limit, drain.
//! - [`hub::Hub`] is the node's registry of local connections; the local fanout delivers
//!   through it.
//! - [`auth`]: dev tokens and signed tokens (JWT). [`presence`]: the memory registry.
//! - [`media`]: media messages: upload tickets, the upload and download endpoints, expiry.
//! - `client` (feature `client`): the Rust client with outbox, resume and gap filling.
//!
//! A node on the embedded backends, serving one connection over an in-memory pipe (a real
//! server uses [`Server`] on TCP instead):
//!
//! ```
//! use std::sync::Arc;
//!
//! use futures_util::{SinkExt, StreamExt};
//! use messenger_fanout::{Fanout, local::LocalFanout};
//! use messenger_sequencer::{Sequencer, memory::MemorySequencer};
//! use messenger_socket::auth::DevAuthenticator;
//! use messenger_socket::{Node, NodeConfig, Services, hub::Hub, presence::MemoryPresence};
//! use messenger_store::{EmbeddedStore, Store};
//! use tokio_tungstenite::WebSocketStream;
//! use tokio_tungstenite::tungstenite::{Message, protocol::Role};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::new(EmbeddedStore::open(dir.path().join("messages.db"))?);
//! let hub = Hub::new();
//! let services = Services {
//!     // The sequencer learns each conversation's floor from the store.
//!     sequencer: Sequencer::new(MemorySequencer::new(store.clone())),
//!     fanout: Fanout::new(LocalFanout::new(Arc::clone(&hub))),
//!     store,
//!     auth: DevAuthenticator,
//!     presence: MemoryPresence::new(),
//! };
//! let node = Node::new(services, hub, NodeConfig::default());
//!
//! let (server_side, client_side) = tokio::io::duplex(64 * 1024);
//! tokio::spawn(async move {
//!     let ws = WebSocketStream::from_raw_socket(server_side, Role::Server, None).await;
//!     messenger_socket::serve_connection(node, ws).await;
//! });
//! let mut ws = WebSocketStream::from_raw_socket(client_side, Role::Client, None).await;
//! ws.send(Message::text(r#"{"type":"hello","v":1,"token":"alice:phone"}"#)).await?;
//! let welcome = ws.next().await.ok_or("closed")??;
//! assert!(welcome.to_text()?.starts_with(r#"{"type":"welcome""#));
//! # Ok(())
//! # }
//! ```

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
mod connection;
mod holes;
pub mod hub;
mod io;
mod last_seen;
pub mod media;
pub mod members;
mod node;
pub mod presence;
mod server;

pub use connection::serve_connection;
pub use node::{Backends, EventSink, Node, NodeConfig, Services};
pub use server::{Server, ServerConfig};
