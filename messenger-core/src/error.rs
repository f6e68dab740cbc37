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
}

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            backend: None,
            source: None,
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
