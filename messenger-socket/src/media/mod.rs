//! Media messages: images, videos and files (see `docs/media.md`) — the HTTP edge.
//!
//! A media message is sequenced like any message, as `pending`; the sender gets an upload
//! ticket, uploads the bytes over HTTP ([`router`]), and the entry becomes `ready` (with a
//! download URL) or, when the upload fails or its ticket expires ([`run_sweeper`]),
//! `failed`. Each change is a log entry of its own (`media_status`) fanned out to every
//! member, and the media entry changes in place in the store. The engine
//! ([`crate::engine`]) owns tickets, the journal of pending uploads and the status changes;
//! this module only receives and serves bytes.
//!
//! Bytes are staged on local disk under [`MediaConfig::dir`] (resumable by offset), checked
//! (size, type by magic bytes, SHA-256), then streamed into an [`ObjectStore`]: the local
//! file system ([`local_storage`]) or S3 (`s3_storage`, feature `s3`).
//!
//! ```no_run
//! # async fn wire<B: messenger_socket::engine::Backends>(engine: messenger_socket::engine::Engine<B>) -> Result<(), Box<dyn std::error::Error>> {
//! use messenger_socket::media::{self, MediaConfig};
//!
//! let config = MediaConfig::new("data/media", "https://chat.example.com");
//! let storage = media::local_storage("data/media/objects")?;
//! let engine = engine.with_media(config, storage)?;
//! let routes = media::router(&engine); // merge into the HTTP server's routes
//! tokio::spawn(media::run_sweeper(engine.clone())); // fails expired uploads
//! # drop(routes);
//! # Ok(())
//! # }
//! ```

mod download;
mod upload;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};

#[cfg(feature = "s3")]
pub use crate::engine::media::s3_storage;
pub use crate::engine::media::{MediaConfig, ObjectStore, local_storage, run_sweeper};
use crate::engine::{Backends, Engine};

/// The HTTP routes of media, to merge into the server's router:
///
/// - `PUT /media/uploads/{conversation}/{seq}`: the whole body (again from byte 0 on a retry);
/// - `HEAD` the same URL: how many bytes arrived (`Upload-Offset`), to resume;
/// - `PATCH` the same URL with `Upload-Offset: N`: appends from byte `N`;
/// - `DELETE` the same URL: the sender gives up; the message becomes `failed`;
/// - `GET /media/files/{conversation}/{seq}`: the bytes, for members (ranges, cache headers).
///
/// Uploads carry `Upload-Ticket: <ticket>` and the user's token (`Authorization: Bearer`);
/// downloads the user's token (header, or `?token=` for players that cannot set headers).
/// Without media on the engine ([`Engine::with_media`]) every route answers 404.
pub fn router<B: Backends>(engine: &Engine<B>) -> Router {
    Router::new()
        .route(
            "/media/uploads/{conversation}/{seq}",
            any(upload::handle::<B>).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/media/files/{conversation}/{seq}",
            get(download::handle::<B>),
        )
        .with_state(engine.clone())
}
