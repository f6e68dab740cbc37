//! The download endpoint: `GET /media/files/{conversation}/{seq}`, for members only, with
//! ranges and cache headers fit for a CDN.

use std::collections::HashMap;
use std::ops::Range;

use axum::body::Body as HttpBody;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use messenger_core::protocol::ErrorCode;
use messenger_core::{ConversationId, MediaStatus, Seq};
use object_store::{GetOptions, GetRange};

use super::upload::{authenticate, media_entry, reply};
use crate::engine::media::entry_key;
use crate::engine::media::object_path;
use crate::engine::{Backends, Engine};

/// What a `Range` header asks for, against an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// The whole object (no header, or one this server serves whole: several ranges).
    All,
    /// One satisfiable range.
    Part(Range<u64>),
    /// A range past the end: 416.
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` and `bytes=-N` (one range; anything else is served whole,
/// as RFC 9110 allows).
pub(crate) fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|value| value.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Wanted::All;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(suffix) = number(last) else {
            return Wanted::All;
        };
        if suffix == 0 || size == 0 {
            return Wanted::Unsatisfiable;
        }
        return Wanted::Part(size.saturating_sub(suffix)..size);
    }
    let Some(start) = number(first) else {
        return Wanted::All;
    };
    let end = if last.is_empty() {
        size
    } else {
        match number(last) {
            Some(last) if last >= start => last.saturating_add(1).min(size),
            _ => return Wanted::All,
        }
    };
    if start >= size {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(start..end)
}

/// A position of a range: `1*DIGIT` (RFC 9110), stricter than `u64::from_str`, which takes a
/// leading `+`.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `GET /media/files/{conversation}/{seq}` (and `HEAD`, which axum answers from it).
pub(crate) async fn handle<B: Backends>(
    State(node): State<Engine<B>>,
    Path((conversation, seq)): Path<(String, u64)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(state) = node.media() else {
        return reply(StatusCode::NOT_FOUND, "this server takes no media");
    };
    let Ok(conversation) = ConversationId::new(conversation) else {
        return reply(StatusCode::NOT_FOUND, "no such media");
    };
    let seq = Seq(seq);
    let identity = match authenticate(&node, &headers, query.get("token").map(String::as_str)).await
    {
        Ok(identity) => identity,
        Err(response) => return response,
    };
    if let Err(refusal) = node.membership(&conversation, &identity.user).await {
        let (code, message) = refusal.client_message();
        let status = match code {
            ErrorCode::NotMember => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        return reply(status, message);
    }
    let media = match media_entry(&node, &conversation, seq).await {
        Ok(media) => media,
        Err(response) => return response,
    };
    if media.status != MediaStatus::Ready {
        // Nothing is visible before the upload is complete and checked.
        return reply(StatusCode::NOT_FOUND, "no such media (not uploaded)");
    }
    let key = entry_key(&conversation, seq);
    let etag = format!("\"{key}\"");
    let cache = format!(
        "private, max-age={}, immutable",
        state.config.download_max_age.as_secs()
    );
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    if not_modified {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        insert(&mut response, header::ETAG, &etag);
        insert(&mut response, header::CACHE_CONTROL, &cache);
        return response;
    }
    let size = media.size;
    let range_header = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    // A range is honoured only for this very object (If-Range with our ETag, or no If-Range).
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|value| value.to_str().ok())
        .is_none_or(|value| value.trim() == etag);
    let wanted = if if_range_ok {
        wanted(range_header, size)
    } else {
        Wanted::All
    };
    let (status, range) = match wanted {
        Wanted::All => (StatusCode::OK, 0..size),
        Wanted::Part(range) => (StatusCode::PARTIAL_CONTENT, range),
        Wanted::Unsatisfiable => {
            let mut response = reply(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            insert(
                &mut response,
                header::CONTENT_RANGE,
                &format!("bytes */{size}"),
            );
            insert(&mut response, header::ACCEPT_RANGES, "bytes");
            return response;
        }
    };
    let options = GetOptions::new().with_range(Some(GetRange::Bounded(range.clone())));
    let object = match state.storage.get_opts(&object_path(&key), options).await {
        Ok(object) => object,
        Err(object_store::Error::NotFound { .. }) => {
            tracing::warn!(%conversation, %seq, "a ready media entry has no object");
            return reply(StatusCode::NOT_FOUND, "no such media");
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read from the object store");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the object store is unavailable",
            );
        }
    };
    let stream = object
        .into_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut response = Response::new(HttpBody::from_stream(stream));
    *response.status_mut() = status;
    insert(&mut response, header::CONTENT_TYPE, &media.mime);
    insert(
        &mut response,
        header::CONTENT_LENGTH,
        &(range.end - range.start).to_string(),
    );
    insert(&mut response, header::ACCEPT_RANGES, "bytes");
    insert(&mut response, header::ETAG, &etag);
    insert(&mut response, header::CACHE_CONTROL, &cache);
    insert(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if status == StatusCode::PARTIAL_CONTENT {
        insert(
            &mut response,
            header::CONTENT_RANGE,
            &format!("bytes {}-{}/{size}", range.start, range.end - 1),
        );
    }
    response
}

fn insert(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(wanted(None, 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Part(0..10));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(Some("bytes=-500"), 100), Wanted::Part(0..100));
        assert_eq!(wanted(Some("bytes=50-500"), 100), Wanted::Part(50..100));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=9-1"), 100), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::All);
    }

    #[test]
    fn positions_are_digits_only() {
        // `u64::from_str` takes a sign; RFC 9110 positions are `1*DIGIT`: such a header is
        // not a valid range, and the object is served whole (found by fuzz/media_range).
        assert_eq!(wanted(Some("bytes=+5-"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=+5-+9"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-+9"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=-+10"), 100), Wanted::All);
        assert_eq!(wanted(Some("bytes=5-9"), 100), Wanted::Part(5..10));
    }
}
