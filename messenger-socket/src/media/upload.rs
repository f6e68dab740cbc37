//! The upload endpoint: `PUT`, `HEAD`, `PATCH`, `DELETE /media/uploads/{conversation}/{seq}`.

use std::sync::Arc;

use axum::body::{Body as HttpBody, BodyDataStream};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use messenger_core::auth::{Authenticate, Identity};
use messenger_core::store::ReadRange;
use messenger_core::{Body, ConversationId, MediaBody, MediaStatus, Seq, Timestamp, call};
use object_store::{ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::media::Committed;
use crate::engine::media::entry_key;
use crate::engine::media::{MediaState, object_path};
use crate::engine::media::{TicketClaims, TicketError};
use crate::engine::{Backends, Engine};

/// Bytes read from the staged file per step while moving it into the object store.
const MOVE_CHUNK: usize = 1024 * 1024;
/// Parts of a multipart put to the object store (S3 needs at least 5 MiB but the last).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// How many bytes the type check looks at.
const SNIFF_BYTES: usize = 8 * 1024;

/// A plain-text answer.
pub(crate) fn reply(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

fn with_offset(mut response: Response, offset: u64) -> Response {
    response
        .headers_mut()
        .insert("upload-offset", HeaderValue::from(offset));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The user behind the request's bearer token (or `token`, from the query string).
pub(crate) async fn authenticate<B: Backends>(
    node: &Engine<B>,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Identity, Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = bearer.or(query_token) else {
        return Err(reply(
            StatusCode::UNAUTHORIZED,
            "missing credentials: send Authorization: Bearer <token>",
        ));
    };
    call(
        node.services().auth(),
        Authenticate {
            token: Arc::from(token),
        },
    )
    .await
    .map_err(|err| {
        if err.kind() == messenger_core::ErrorKind::Unauthorized {
            reply(StatusCode::UNAUTHORIZED, err.message().to_owned())
        } else {
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "authentication is unavailable",
            )
        }
    })
}

/// The media entry at `seq`, or the answer to give when there is none.
pub(crate) async fn media_entry<B: Backends>(
    node: &Engine<B>,
    conversation: &ConversationId,
    seq: Seq,
) -> Result<MediaBody, Response> {
    if seq == Seq::ZERO {
        return Err(reply(StatusCode::NOT_FOUND, "no such media"));
    }
    let page = call(
        node.services().store(),
        ReadRange {
            conversation: conversation.clone(),
            after: Seq(seq.get() - 1),
            until: Some(seq),
            limit: 1,
        },
    )
    .await
    .map_err(|err| {
        tracing::warn!(error = %err, "cannot read a media entry");
        reply(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
    })?;
    match page.messages.first() {
        Some(message) if message.seq == seq => match &message.body {
            Body::Media(media) => Ok(MediaBody::clone(media)),
            Body::Deleted { .. } => Err(reply(StatusCode::GONE, "the message was deleted")),
            _ => Err(reply(StatusCode::NOT_FOUND, "no such media")),
        },
        _ => Err(reply(StatusCode::NOT_FOUND, "no such media")),
    }
}

fn canonical_mime(value: &str) -> &str {
    match value {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "audio/mp3" => "audio/mpeg",
        "audio/x-wav" | "audio/wave" => "audio/x-wav",
        "video/x-m4v" => "video/mp4",
        other => other,
    }
}

/// Checks the first bytes against the declared type: images, videos and audio must be
/// recognised as exactly that type; other types are refused only when the bytes are
/// recognisably media or a program of another type.
pub(crate) fn check_type(declared: &str, head: &[u8]) -> Result<(), String> {
    let declared = canonical_mime(declared);
    let found = infer::get(head).map(|kind| canonical_mime(kind.mime_type()).to_owned());
    let is_media = |mime: &str| {
        mime.starts_with("image/") || mime.starts_with("video/") || mime.starts_with("audio/")
    };
    let is_program = |mime: &str| {
        matches!(
            mime,
            "application/x-executable"
                | "application/vnd.microsoft.portable-executable"
                | "application/x-mach-binary"
                | "application/x-msdownload"
        )
    };
    match found {
        Some(found) if found == declared => Ok(()),
        Some(found) if is_media(declared) || is_media(&found) || is_program(&found) => Err(
            format!("the bytes are {found}, not the declared {declared}"),
        ),
        None if is_media(declared) => Err(format!(
            "the bytes are not recognisable as the declared {declared}"
        )),
        _ => Ok(()),
    }
}

fn ticket_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("upload-ticket")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
}

fn offset_header(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("upload-offset")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

async fn staged_len(state: &MediaState, key: &str) -> u64 {
    tokio::fs::metadata(state.staging_path(key))
        .await
        .map(|meta| meta.len())
        .unwrap_or(0)
}

async fn discard(state: &MediaState, key: &str) {
    let _ = tokio::fs::remove_file(state.staging_path(key)).await;
}

/// `PUT`, `HEAD`, `PATCH`, `DELETE /media/uploads/{conversation}/{seq}`.
///
/// A request refused before its body was read to the end (401, 403, 410, 413...) keeps its
/// connection usable: the rest of the body is read and discarded (at most [`DRAIN_BYTES`],
/// within [`DRAIN_TIME`]); when that is not possible the answer says `Connection: close`.
/// Otherwise the server would close a kept-alive connection without saying so, and a pooled
/// client's next request on it would fail.
pub(crate) async fn handle<B: Backends>(
    State(node): State<Engine<B>>,
    Path((conversation, seq)): Path<(String, u64)>,
    method: Method,
    headers: HeaderMap,
    body: HttpBody,
) -> Response {
    let mut body = RequestBody::new(body);
    let response = respond(&node, conversation, seq, method, &headers, &mut body).await;
    body.settle(&headers, response).await
}

/// Most bytes of a refused request's body read (and discarded) to keep its connection.
const DRAIN_BYTES: u64 = 1024 * 1024;
/// Longest time spent reading a refused request's body to keep its connection.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A request body, read once, that knows whether it was read to its end.
struct RequestBody {
    stream: BodyDataStream,
    /// The stream ended (or broke): nothing more to read.
    ended: bool,
    /// Whether anything was asked of the stream (with `Expect: 100-continue`, the client
    /// sends the body only then).
    polled: bool,
    /// Bytes read so far.
    received: u64,
}

impl RequestBody {
    fn new(body: HttpBody) -> Self {
        Self {
            stream: body.into_data_stream(),
            ended: false,
            polled: false,
            received: 0,
        }
    }

    /// The next chunk; `None` at the end. An error means the connection broke.
    async fn next(&mut self) -> Option<Result<Bytes, axum::Error>> {
        if self.ended {
            return None;
        }
        self.polled = true;
        let item = self.stream.next().await;
        match &item {
            Some(Ok(chunk)) => self.received += chunk.len() as u64,
            Some(Err(_)) | None => self.ended = true,
        }
        item
    }

    /// `response`, once the connection can serve another request: reads the rest of the body
    /// (within [`DRAIN_BYTES`] and [`DRAIN_TIME`]), or adds `Connection: close`.
    async fn settle(mut self, headers: &HeaderMap, mut response: Response) -> Response {
        if self.ended {
            return response;
        }
        let expects_continue = headers
            .get(header::EXPECT)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        // A client waiting for `100 Continue` has sent no body: asking for it now would only
        // make it send bytes to discard.
        let waiting_to_send = expects_continue && !self.polled;
        let worth_reading = !waiting_to_send
            && declared.is_none_or(|len| len.saturating_sub(self.received) <= DRAIN_BYTES);
        if worth_reading {
            let limit = self.received.saturating_add(DRAIN_BYTES);
            let drained = tokio::time::timeout(DRAIN_TIME, async {
                while self.received <= limit {
                    if self.next().await.is_none() {
                        return true;
                    }
                }
                false
            })
            .await;
            if drained == Ok(true) {
                return response;
            }
        }
        if !waiting_to_send {
            // A lingering close: the client may still be sending. Closing now with its bytes
            // unread makes the kernel answer with a reset, which can destroy the response
            // before the client reads it; reading (and discarding) the rest for a while lets
            // it see the answer and stop. The connection closes when this ends.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(DRAIN_TIME, async {
                    while self.next().await.is_some() {}
                })
                .await;
            });
        }
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// [`handle`], with the body to read.
async fn respond<B: Backends>(
    node: &Engine<B>,
    conversation: String,
    seq: u64,
    method: Method,
    headers: &HeaderMap,
    body: &mut RequestBody,
) -> Response {
    let Some(state) = node.media() else {
        return reply(StatusCode::NOT_FOUND, "this server takes no media");
    };
    let Ok(conversation) = ConversationId::new(conversation) else {
        return reply(StatusCode::NOT_FOUND, "no such media");
    };
    let seq = Seq(seq);
    if !matches!(
        method,
        Method::PUT | Method::PATCH | Method::HEAD | Method::DELETE
    ) {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT, PATCH (with Upload-Offset), HEAD or DELETE",
        );
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("PUT, PATCH, HEAD, DELETE"),
        );
        return response;
    }
    let identity = match authenticate(node, headers, None).await {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    let Some(ticket) = ticket_of(headers) else {
        return reply(StatusCode::UNAUTHORIZED, "missing Upload-Ticket header");
    };
    let claims = match state.signer.check(ticket, Timestamp::now()) {
        Ok(claims) => claims,
        Err(TicketError::Expired) => {
            return reply(
                StatusCode::GONE,
                "the upload ticket expired: the message is failed",
            );
        }
        Err(TicketError::Invalid(err)) => {
            return reply(
                StatusCode::UNAUTHORIZED,
                format!("bad upload ticket: {err}"),
            );
        }
    };
    if claims.conv != conversation.as_str() || claims.seq != seq.get() {
        return reply(StatusCode::FORBIDDEN, "the ticket is for another message");
    }
    if claims.sub != identity.user.as_str() {
        return reply(StatusCode::FORBIDDEN, "the ticket belongs to another user");
    }
    let key = entry_key(&conversation, seq);
    let Some(_busy) = state.claim(&key) else {
        return reply(
            StatusCode::CONFLICT,
            "another request is uploading this message; resume when it ends",
        );
    };
    let media = match media_entry(node, &conversation, seq).await {
        Ok(media) => media,
        Err(response) => return response,
    };
    match media.status {
        MediaStatus::Pending => {}
        MediaStatus::Ready => return reply(StatusCode::CONFLICT, "already uploaded"),
        MediaStatus::Failed => {
            return reply(
                StatusCode::GONE,
                format!(
                    "the message failed: {}",
                    media.reason.as_deref().unwrap_or("upload failed")
                ),
            );
        }
    }
    let upload = Upload {
        node,
        state,
        conversation: &conversation,
        seq,
        key: &key,
        claims: &claims,
    };
    match method {
        Method::HEAD => {
            let mut response = with_offset(
                StatusCode::OK.into_response(),
                staged_len(state, &key).await,
            );
            response
                .headers_mut()
                .insert("upload-length", HeaderValue::from(claims.size));
            response
        }
        Method::DELETE => upload.cancel().await,
        Method::PATCH => {
            let current = staged_len(state, &key).await;
            let Some(offset) = offset_header(headers) else {
                return with_offset(
                    reply(
                        StatusCode::BAD_REQUEST,
                        "PATCH needs an Upload-Offset header",
                    ),
                    current,
                );
            };
            if offset != current {
                return with_offset(
                    reply(
                        StatusCode::CONFLICT,
                        format!("the upload is at byte {current}, not {offset}"),
                    ),
                    current,
                );
            }
            upload.receive(headers, body, current).await
        }
        _ => upload.receive(headers, body, 0).await,
    }
}

/// One upload request that passed the checks.
struct Upload<'a, B> {
    node: &'a Engine<B>,
    state: &'a MediaState,
    conversation: &'a ConversationId,
    seq: Seq,
    key: &'a str,
    claims: &'a TicketClaims,
}

impl<B: Backends> Upload<'_, B> {
    /// Appends the body to the staged file from `start`, then finishes when complete.
    async fn receive(&self, headers: &HeaderMap, body: &mut RequestBody, start: u64) -> Response {
        let size = self.claims.size;
        let declared_len = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if let Some(len) = declared_len {
            if start.saturating_add(len) > size {
                if start == 0 {
                    discard(self.state, self.key).await;
                }
                return with_offset(
                    reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "{len} bytes from byte {start} exceed the declared size of {size} bytes"
                        ),
                    ),
                    start.min(size),
                );
            }
        }
        if start == size {
            // Everything arrived before (the last request was cut while finishing).
            return self.finish().await;
        }
        let path = self.state.staging_path(self.key);
        let opened = if start == 0 {
            tokio::fs::File::create(&path).await
        } else {
            tokio::fs::OpenOptions::new().append(true).open(&path).await
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(error = %err, "cannot open a staged upload");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "cannot stage the upload");
            }
        };
        let mut received = start;
        let mut cut = false;
        while let Some(chunk) = body.next().await {
            let chunk: Bytes = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    tracing::debug!(error = %err, received, "an upload was cut");
                    cut = true;
                    break;
                }
            };
            let len = chunk.len() as u64;
            if received + len > size {
                drop(file);
                discard(self.state, self.key).await;
                return with_offset(
                    reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body exceeds the declared size of {size} bytes; start again"),
                    ),
                    0,
                );
            }
            if let Err(err) = file.write_all(&chunk).await {
                tracing::warn!(error = %err, "cannot write a staged upload");
                return reply(StatusCode::SERVICE_UNAVAILABLE, "cannot stage the upload");
            }
            received += len;
        }
        if let Err(err) = async {
            file.flush().await?;
            file.sync_data().await
        }
        .await
        {
            tracing::warn!(error = %err, "cannot sync a staged upload");
            return reply(StatusCode::SERVICE_UNAVAILABLE, "cannot stage the upload");
        }
        drop(file);
        if cut {
            return with_offset(
                reply(
                    StatusCode::BAD_REQUEST,
                    format!("the body was cut at byte {received}: resume with PATCH"),
                ),
                received,
            );
        }
        if received < size {
            return with_offset(StatusCode::NO_CONTENT.into_response(), received);
        }
        self.finish().await
    }

    /// Checks the complete staged file and moves it into the object store, then marks the
    /// entry ready.
    async fn finish(&self) -> Response {
        let path = self.state.staging_path(self.key);
        let object = object_path(self.key);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(error = %err, "cannot open a staged upload");
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot read the staged upload",
                );
            }
        };
        let mut head = vec![0u8; SNIFF_BYTES];
        let mut filled = 0;
        while filled < head.len() {
            match file.read(&mut head[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read a staged upload");
                    return reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot read the staged upload",
                    );
                }
            }
        }
        head.truncate(filled);
        if let Err(refusal) = check_type(&self.claims.mime, &head) {
            discard(self.state, self.key).await;
            return with_offset(reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, refusal), 0);
        }
        let digest = match self.store_object(&object, head, file).await {
            Ok(digest) => digest,
            Err(response) => return response,
        };
        if let Some(declared) = &self.claims.sha256 {
            if !declared.eq_ignore_ascii_case(&digest) {
                let _ = self.state.storage.delete(&object).await;
                discard(self.state, self.key).await;
                return with_offset(
                    reply(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!(
                            "the bytes hash to {digest}, not the declared {declared}; start again"
                        ),
                    ),
                    0,
                );
            }
        }
        let url = self.state.download_url(self.conversation, self.seq);
        let committed = self
            .node
            .commit_media_status(
                self.conversation,
                self.seq,
                MediaStatus::Ready,
                Some(url.clone()),
                None,
            )
            .await;
        match committed {
            Ok(Committed::Applied) => {
                self.state.journal.remove(self.conversation, self.seq).await;
                discard(self.state, self.key).await;
                let body = serde_json::json!({
                    "status": "ready",
                    "conversation": self.conversation,
                    "seq": self.seq,
                    "url": url,
                    "sha256": digest,
                });
                (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response()
            }
            Ok(Committed::Refused(media)) => {
                let ready =
                    matches!(&media.body, Body::Media(media) if media.status == MediaStatus::Ready);
                if !ready {
                    let _ = self.state.storage.delete(&object).await;
                }
                discard(self.state, self.key).await;
                if ready {
                    reply(StatusCode::CONFLICT, "already uploaded")
                } else {
                    reply(
                        StatusCode::GONE,
                        "the message failed before the upload finished",
                    )
                }
            }
            Err(err) => {
                // The staged file stays: `PATCH` at the full size finishes again.
                tracing::warn!(error = %err, "cannot mark a media entry ready");
                let _ = self.state.storage.delete(&object).await;
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot complete the upload; retry",
                )
            }
        }
    }

    /// Streams `head` then the rest of `file` into the object store, hashing on the way.
    async fn store_object(
        &self,
        object: &object_store::path::Path,
        head: Vec<u8>,
        mut file: tokio::fs::File,
    ) -> Result<String, Response> {
        let unavailable = |err: &dyn std::fmt::Display| {
            tracing::warn!(error = %err, "cannot write to the object store");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the object store is unavailable; retry",
            )
        };
        let upload = self
            .state
            .storage
            .put_multipart(object)
            .await
            .map_err(|err| unavailable(&err))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut hasher = Sha256::new();
        hasher.update(&head);
        writer.put(Bytes::from(head));
        loop {
            let mut chunk = vec![0u8; MOVE_CHUNK];
            let n = match file.read(&mut chunk).await {
                Ok(n) => n,
                Err(err) => {
                    let _ = writer.abort().await;
                    return Err(unavailable(&err));
                }
            };
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            hasher.update(&chunk);
            if let Err(err) = writer.wait_for_capacity(2).await {
                return Err(unavailable(&err));
            }
            writer.put(Bytes::from(chunk));
        }
        writer.finish().await.map_err(|err| unavailable(&err))?;
        let digest = hasher.finalize();
        Ok(digest.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// The sender gives up: the entry becomes failed.
    async fn cancel(&self) -> Response {
        let committed = self
            .node
            .commit_media_status(
                self.conversation,
                self.seq,
                MediaStatus::Failed,
                None,
                Some("cancelled by the sender".to_owned()),
            )
            .await;
        match committed {
            Ok(Committed::Applied) => {
                self.state.journal.remove(self.conversation, self.seq).await;
                discard(self.state, self.key).await;
                StatusCode::NO_CONTENT.into_response()
            }
            Ok(Committed::Refused(_)) => {
                reply(StatusCode::CONFLICT, "the message is final already")
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot cancel an upload");
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot cancel the upload; retry",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn types_are_checked_by_magic_bytes() {
        assert!(check_type("image/png", PNG).is_ok());
        assert!(check_type("image/jpeg", PNG).is_err());
        assert!(check_type("image/png", b"just some text").is_err());
        assert!(check_type("application/pdf", PNG).is_err());
        assert!(check_type("text/plain", b"just some text").is_ok());
        assert!(check_type("application/octet-stream", b"\x00\x01\x02").is_ok());
        assert!(check_type("image/jpg", b"\xff\xd8\xff\xe0\0\x10JFIF\0").is_ok());
    }
}
