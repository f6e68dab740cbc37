//! The one error type every crate of the SDK returns.

use std::fmt;

/// A boxed error, as tower layers produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The thing asked for does not exist.
    NotFound,
    /// The write collides with existing state (a seq already taken by another message).
    Conflict,
    /// The request itself is wrong: bad id, bad range, oversize payload.
    InvalidRequest,
    /// The caller is not authenticated, or its credentials are wrong or expired.
    Unauthorized,
    /// The caller is authenticated but not allowed to do this.
    Forbidden,
    /// A backend cannot be reached or refused to work for now.
    Unavailable,
    /// The operation did not finish in time.
    Timeout,
    /// Too much load: a limit or a load-shedding layer refused the request.
    Overloaded,
    /// A bug or a state that should not exist.
    Unexpected,
}

impl ErrorKind {
    /// Whether trying the same request again later may succeed.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Overloaded
        )
    }

    /// A stable lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unexpected => "unexpected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SDK's error: a [`kind`](Error::kind) to act on, a message for humans, the backend that
/// produced it and the underlying cause.
///
/// The display text is for people and logs; it is not part of any contract.
pub struct Error {
    kind: ErrorKind,
    message: String,
    backend: Option<&'static str>,
    source: Option<BoxError>,
    code: Option<ErrorCode>,
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            backend: None,
            source: None,
            code: None,
        }
    }

    /// A refusal meant for the client: the protocol `code` of its error frame and `message`
    /// in our own words, shown to the client as they are. The kind follows from the code.
    ///
    /// Errors made with [`Error::new`] (a backend's) never show their message to clients:
    /// see [`Error::client_message`].
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut err = Self::new(code.kind(), message);
        err.code = Some(code);
        err
    }

    /// The protocol code of a refusal made with [`Error::refused`]; `None` for other errors.
    pub fn refusal_code(&self) -> Option<ErrorCode> {
        self.code
    }

    /// The code and message an error frame carries for this error: a refusal's own; for any
    /// other error (a backend's), the code of its kind and generic words, so backend text
    /// never reaches a client.
    pub fn client_message(&self) -> (ErrorCode, &str) {
        match self.code {
            Some(code) => (code, &self.message),
            None => {
                let code = ErrorCode::from(self);
                (code, code.generic_message())
            }
        }
    }

    /// Names the backend that produced the error (`"embedded"`, `"redis"`...).
    #[must_use]
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether trying again later may succeed.
    pub fn is_temporary(&self) -> bool {
        self.kind.is_temporary()
    }

    /// The backend that produced the error, when known.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// The human-readable message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Recovers an [`Error`] from the boxed error a tower layer returns.
    ///
    /// Our own `Error` comes back unchanged; tower's `Elapsed` becomes
    /// [`ErrorKind::Timeout`] and its `Overloaded` [`ErrorKind::Overloaded`]; anything else is
    /// [`ErrorKind::Unexpected`] with the original as its source.
    pub fn from_boxed(err: BoxError) -> Self {
        match err.downcast::<Error>() {
            Ok(err) => *err,
            Err(err) => {
                if err.is::<tower::timeout::error::Elapsed>() {
                    Error::new(ErrorKind::Timeout, "the operation timed out").with_source(err)
                } else if err.is::<tower::load_shed::error::Overloaded>() {
                    Error::new(ErrorKind::Overloaded, "the service is overloaded").with_source(err)
                } else {
                    Error::new(ErrorKind::Unexpected, err.to_string()).with_source(err)
                }
            }
        }
    }
}

/// The `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Not JSON, not an object, or fields of the wrong shape.
    BadFrame,
    /// A `type` this server does not know.
    UnknownType,
    /// An identifier that breaks the documented rules.
    InvalidId,
    /// A body or list over its documented limit.
    TooLarge,
    /// The frame is well-formed but makes no sense (seq past the head, adding a member twice...).
    InvalidRequest,
    /// A frame other than `hello` before authentication, or `hello` twice.
    NotAuthenticated,
    /// The user is not a member of the conversation.
    NotMember,
    /// The user's role does not allow this.
    Forbidden,
    /// No such conversation.
    NotFound,
    /// Too many frames; slow down.
    RateLimited,
    /// A backend is unavailable; retry later.
    Unavailable,
    /// The operation timed out; retry (sends are idempotent).
    Timeout,
    /// The node is overloaded; retry later.
    Overloaded,
    /// A bug on the server.
    Internal,
    /// A reply, edit or delete names a seq that holds no message (nothing, or a void).
    TargetNotFound,
    /// A reply, edit or delete names a message that was deleted.
    TargetDeleted,
    /// The target cannot be replied to, edited or deleted this way (an edit of a media
    /// message, a reply to a membership change...).
    NotEditable,
    /// The edit window of the message has closed.
    EditWindowClosed,
    /// The message was edited as often as allowed.
    TooManyEdits,
    /// The window in which a sender may delete their message has closed.
    DeleteWindowClosed,
}

impl ErrorCode {
    /// Whether sending the same frame again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::Overloaded
                | ErrorCode::Internal
        )
    }
}

impl ErrorCode {
    /// The [`ErrorKind`] a refusal with this code has.
    pub fn kind(self) -> ErrorKind {
        match self {
            ErrorCode::BadFrame
            | ErrorCode::UnknownType
            | ErrorCode::InvalidId
            | ErrorCode::TooLarge
            | ErrorCode::InvalidRequest
            | ErrorCode::NotEditable
            | ErrorCode::TooManyEdits => ErrorKind::InvalidRequest,
            ErrorCode::NotAuthenticated => ErrorKind::Unauthorized,
            ErrorCode::NotMember
            | ErrorCode::Forbidden
            | ErrorCode::EditWindowClosed
            | ErrorCode::DeleteWindowClosed => ErrorKind::Forbidden,
            ErrorCode::NotFound | ErrorCode::TargetNotFound | ErrorCode::TargetDeleted => {
                ErrorKind::NotFound
            }
            ErrorCode::RateLimited | ErrorCode::Overloaded => ErrorKind::Overloaded,
            ErrorCode::Unavailable => ErrorKind::Unavailable,
            ErrorCode::Timeout => ErrorKind::Timeout,
            ErrorCode::Internal => ErrorKind::Unexpected,
        }
    }

    /// Words a client may be shown for an error of this code whose own message is not meant
    /// for clients (a backend's).
    pub fn generic_message(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "malformed frame",
            ErrorCode::UnknownType => "unsupported frame",
            ErrorCode::InvalidId => "invalid identifier",
            ErrorCode::TooLarge => "over a documented limit",
            ErrorCode::InvalidRequest => "the request does not fit the current state",
            ErrorCode::NotAuthenticated => "not authenticated",
            ErrorCode::NotMember => "not a member of this conversation",
            ErrorCode::Forbidden => "not allowed",
            ErrorCode::NotFound => "not found",
            ErrorCode::RateLimited => "too many requests; slow down",
            ErrorCode::Unavailable => "a backend is unavailable; retry later",
            ErrorCode::Timeout => "the operation timed out; retry",
            ErrorCode::Overloaded => "the server is overloaded; retry later",
            ErrorCode::Internal => "internal error",
            ErrorCode::TargetNotFound => "no message at that seq",
            ErrorCode::TargetDeleted => "that message was deleted",
            ErrorCode::NotEditable => "that entry cannot be changed this way",
            ErrorCode::EditWindowClosed => "too late to edit that message",
            ErrorCode::TooManyEdits => "that message was edited too often",
            ErrorCode::DeleteWindowClosed => "too late to delete that message",
        }
    }
}

impl From<&crate::Error> for ErrorCode {
    fn from(err: &crate::Error) -> Self {
        if let Some(code) = err.code {
            return code;
        }
        match err.kind() {
            ErrorKind::NotFound => ErrorCode::NotFound,
            ErrorKind::InvalidRequest | ErrorKind::Conflict => ErrorCode::InvalidRequest,
            ErrorKind::Unauthorized => ErrorCode::NotAuthenticated,
            ErrorKind::Forbidden => ErrorCode::Forbidden,
            ErrorKind::Unavailable => ErrorCode::Unavailable,
            ErrorKind::Timeout => ErrorCode::Timeout,
            ErrorKind::Overloaded => ErrorCode::Overloaded,
            _ => ErrorCode::Internal,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug
            .field("kind", &self.kind)
            .field("message", &self.message);
        if let Some(backend) = self.backend {
            debug.field("backend", &backend);
        }
        if let Some(source) = &self.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backend {
            Some(backend) => write!(f, "{} ({backend}): {}", self.kind, self.message),
            None => write!(f, "{}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// A `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_errors_keep_their_kind() {
        let boxed: BoxError = Box::new(Error::new(ErrorKind::Conflict, "seq taken"));
        assert_eq!(Error::from_boxed(boxed).kind(), ErrorKind::Conflict);

        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let err = Error::from_boxed(elapsed);
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(err.is_temporary());

        let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(Error::from_boxed(shed).kind(), ErrorKind::Overloaded);

        let other: BoxError = "boom".into();
        assert_eq!(Error::from_boxed(other).kind(), ErrorKind::Unexpected);
    }
}
