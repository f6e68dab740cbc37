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
//! - `client` (feature `client`): the Rust client with outbox, resume and gap filling.

pub mod auth;
#[cfg(feature = "client")]
pub mod client;
mod connection;
pub mod hub;
mod node;
pub mod presence;
mod server;

pub use connection::serve_connection;
pub use node::{Backends, EventSink, Node, NodeConfig, Services};
pub use server::{Server, ServerConfig};
