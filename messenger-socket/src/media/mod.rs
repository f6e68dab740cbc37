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
//! file system ([`local_storage`]), or the store a URL names ([`storage_from_url`]: `file://`,
//! or `s3://` with the `s3` feature).
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

#[cfg(fuzzing)]
pub(crate) use self::download::{Wanted, wanted};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get};

pub use crate::engine::media::{
    MediaConfig, ObjectStore, local_storage, run_sweeper, storage_from_url,
};
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

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt as _;
    use object_store::path::Path as ObjectPath;

    use super::*;

    #[tokio::test]
    async fn a_file_url_is_a_local_store_in_that_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects/nested");
        let url = url::Url::from_directory_path(&root).unwrap();
        let storage = storage_from_url(url.as_str()).unwrap();
        storage
            .put(&ObjectPath::from("media/a/1"), b"bytes".to_vec().into())
            .await
            .unwrap();
        assert_eq!(std::fs::read(root.join("media/a/1")).unwrap(), b"bytes");
    }

    #[test]
    fn other_urls_are_invalid_input() {
        for url in [
            "local",
            "file:///tmp/objects?durability=relaxed",
            "memory:///",
            "gs://bucket",
            "https://example.com/objects",
            #[cfg(not(feature = "s3"))]
            "s3://bucket",
            #[cfg(feature = "s3")]
            "s3://bucket?endpoint=http://127.0.0.1:9010&colour=blue",
        ] {
            let err = storage_from_url(url).expect_err(url);
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{url}: {err}");
        }
    }

    /// The documented form builds a client (no request is sent yet), with the prefix applied.
    #[cfg(feature = "s3")]
    #[test]
    fn an_s3_url_with_endpoint_and_region_builds_a_client() {
        let plain =
            storage_from_url("s3://media?endpoint=http://127.0.0.1:9010&region=us-east-1").unwrap();
        assert!(plain.to_string().contains("media"), "{plain}");
        let prefixed =
            storage_from_url("s3://media/chat?endpoint=http://127.0.0.1:9010&region=us-east-1")
                .unwrap();
        assert!(prefixed.to_string().contains("chat"), "{prefixed}");
    }
}
