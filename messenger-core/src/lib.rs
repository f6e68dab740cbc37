//! The core of the messenger SDK: identifiers, the message model, the wire protocol, the
//! [`Error`] type, and the requests every capability answers.
//!
//! Every other crate of the SDK depends on this one and on nothing else of the SDK, so a
//! backend author needs only `messenger-core`. Capabilities meet through the request types of
//! [`store`], [`sequencer`], [`fanout`], [`presence`] and [`auth`]: each is a
//! [`tower::Service`] per request, bound together by traits such as [`store::StoreService`].
//!
//! ```
//! use messenger_core::protocol::{decode_client_frame, ClientFrame};
//! use messenger_core::{ConversationId, UserId};
//!
//! let alice = UserId::new("alice")?;
//! let bob = UserId::new("bob")?;
//! let chat = ConversationId::direct(&alice, &bob)?;
//! let frame = decode_client_frame(&format!(
//!     r#"{{"type":"send","conversation":"{chat}","client_msg_id":"m-1","body":{{"kind":"text","text":"hi"}}}}"#
//! ))
//! .map_err(|err| err.message)?;
//! assert!(matches!(frame, ClientFrame::Send { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod auth;
mod error;
pub mod event;
pub mod fanout;
mod id;
mod model;
pub mod presence;
pub mod protocol;
pub mod sequencer;
pub mod service;
pub mod store;

pub use error::{BoxError, Error, ErrorKind, Result};
pub use event::{DomainEvent, Event, PresenceUpdate, ReceiptUpdate, TypingUpdate};
pub use id::{ClientMsgId, ConversationId, DeviceId, InvalidId, RequestId, Seq, Timestamp, UserId};
pub use model::{
    Body, Conversation, ConversationKind, ConversationSummary, MAX_EMOJI_BYTES, MAX_EXCERPT_CHARS,
    MAX_GROUP_MEMBERS, MAX_MEDIA_NAME_BYTES, MAX_MENTIONS, MAX_TEXT_BYTES, MAX_TITLE_BYTES,
    MAX_UNREAD_SPAN, MediaBody, MediaStatus, MediaUpdate, Member, Message, Reaction, ReceiptKind,
    Receipts, Reply, ReplyKind, Role,
};
pub use service::{Handles, Operation, call};

/// The guides under `docs/`, as rustdoc pages: their Rust code blocks are compiled and run by
/// `cargo test --doc`, so they cannot drift from the API.
// Markdown written for people, not for clippy's doc style.
#[allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
pub mod docs {
    #[doc = include_str!("../../docs/protocol.md")]
    pub mod protocol {}
    #[doc = include_str!("../../docs/events.md")]
    pub mod events {}
}
