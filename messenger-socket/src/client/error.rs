//! How error frames and close codes become [`messenger_core::Error`]s.

use messenger_core::protocol::{ErrorCode, close};
use messenger_core::{Error, ErrorKind};

/// What the client does after the server closed the connection (or it was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterClose {
    /// Reconnect with backoff.
    Reconnect,
    /// Wait for a fresh token ([`super::Client::set_token`]), then reconnect.
    NeedToken,
    /// Give up: the client is closed.
    Fatal,
}

/// The error an `error` frame stands for: a refusal with the frame's code
/// ([`Error::refusal_code`]), whose kind follows from it ([`ErrorCode::kind`]).
pub(crate) fn from_error_frame(code: ErrorCode, message: &str) -> Error {
    let name = serde_json::to_value(code)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"));
    Error::refused(
        code,
        format!("the server refused the request ({name}): {message}"),
    )
}

/// The error a close code stands for, and what to do next. `None`: the connection ended
/// without a close frame.
pub(crate) fn classify_close(code: Option<u16>, reason: &str) -> (Error, AfterClose) {
    let Some(code) = code else {
        return (
            Error::new(ErrorKind::Unavailable, "the connection was lost"),
            AfterClose::Reconnect,
        );
    };
    let (kind, what, after) = match code {
        close::UNAUTHORIZED => (
            ErrorKind::Unauthorized,
            "the token was refused",
            AfterClose::Fatal,
        ),
        close::TOKEN_EXPIRED => (
            ErrorKind::Unauthorized,
            "the token expired; set a fresh one",
            AfterClose::NeedToken,
        ),
        close::UNSUPPORTED_VERSION => (
            ErrorKind::InvalidRequest,
            "the server does not speak this protocol version",
            AfterClose::Fatal,
        ),
        close::PROTOCOL_ERROR | close::TOO_MANY_ERRORS | close::UNSUPPORTED_DATA => (
            ErrorKind::InvalidRequest,
            "the server rejected the client's frames",
            AfterClose::Fatal,
        ),
        close::TOO_BIG => (
            ErrorKind::InvalidRequest,
            "a frame was over the server's limit",
            AfterClose::Fatal,
        ),
        close::HELLO_TIMEOUT => (
            ErrorKind::Timeout,
            "the hello was too slow",
            AfterClose::Reconnect,
        ),
        close::SLOW_CONSUMER => (
            ErrorKind::Overloaded,
            "the client read its frames too slowly",
            AfterClose::Reconnect,
        ),
        close::SERVICE_RESTART | close::TRY_AGAIN_LATER => (
            ErrorKind::Unavailable,
            "the server asked to reconnect",
            AfterClose::Reconnect,
        ),
        close::INTERNAL => (
            ErrorKind::Unexpected,
            "the server hit a bug",
            AfterClose::Reconnect,
        ),
        _ => (
            ErrorKind::Unavailable,
            "the server closed the connection",
            AfterClose::Reconnect,
        ),
    };
    let message = if reason.is_empty() {
        format!("{what} (close code {code})")
    } else {
        format!("{what} (close code {code}: {reason})")
    };
    (Error::new(kind, message), after)
}

/// The error of an operation on a client whose background task has ended.
pub(crate) fn client_closed() -> Error {
    Error::new(ErrorKind::Unavailable, "the client is closed")
}

/// A copy of `error` (which is not `Clone`) keeping its kind and message.
pub(crate) fn copy_error(error: &Error) -> Error {
    match error.refusal_code() {
        Some(code) => Error::refused(code, error.message()),
        None => Error::new(error.kind(), error.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_kinds() {
        let cases = [
            (ErrorCode::BadFrame, ErrorKind::InvalidRequest),
            (ErrorCode::TooLarge, ErrorKind::InvalidRequest),
            (ErrorCode::NotAuthenticated, ErrorKind::Unauthorized),
            (ErrorCode::NotMember, ErrorKind::Forbidden),
            (ErrorCode::Forbidden, ErrorKind::Forbidden),
            (ErrorCode::NotFound, ErrorKind::NotFound),
            (ErrorCode::RateLimited, ErrorKind::Overloaded),
            (ErrorCode::Unavailable, ErrorKind::Unavailable),
            (ErrorCode::Timeout, ErrorKind::Timeout),
            (ErrorCode::Internal, ErrorKind::Unexpected),
        ];
        for (code, kind) in cases {
            assert_eq!(from_error_frame(code, "no").kind(), kind, "{code:?}");
        }
        let err = from_error_frame(ErrorCode::NotMember, "no");
        assert!(err.message().contains("not_member"), "{err}");
        assert_eq!(err.refusal_code(), Some(ErrorCode::NotMember));
    }

    #[test]
    fn close_codes_decide_what_happens_next() {
        let after = |code| classify_close(Some(code), "").1;
        assert_eq!(after(close::UNAUTHORIZED), AfterClose::Fatal);
        assert_eq!(after(close::UNSUPPORTED_VERSION), AfterClose::Fatal);
        assert_eq!(after(close::TOKEN_EXPIRED), AfterClose::NeedToken);
        assert_eq!(after(close::SERVICE_RESTART), AfterClose::Reconnect);
        assert_eq!(after(close::SLOW_CONSUMER), AfterClose::Reconnect);
        assert_eq!(after(close::NORMAL), AfterClose::Reconnect);
        assert_eq!(classify_close(None, "").1, AfterClose::Reconnect);
        let (err, _) = classify_close(Some(close::UNAUTHORIZED), "bad token");
        assert_eq!(err.kind(), ErrorKind::Unauthorized);
        assert!(err.message().contains("bad token"));
        assert_eq!(
            classify_close(Some(close::SLOW_CONSUMER), "").0.kind(),
            ErrorKind::Overloaded
        );
    }
}
