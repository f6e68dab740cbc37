//! The embedded store's private errors, converted to [`messenger_core::Error`] at the edge.

use messenger_core::{Error, ErrorKind};
use rusqlite::ErrorCode;

/// The backend name carried by every error of this backend.
pub(crate) const BACKEND: &str = "embedded";

#[derive(Debug, thiserror::Error)]
pub(crate) enum EmbeddedError {
    #[error(transparent)]
    Rule(crate::rule::Rule),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store's committer thread is gone")]
    CommitterGone,
    #[error("the store's committer thread cannot start")]
    Spawn(#[source] std::io::Error),
    #[error("a read task failed")]
    ReadTask(#[from] tokio::task::JoinError),
    #[error("the batch was not committed: {0}")]
    BatchFailed(#[source] std::sync::Arc<rusqlite::Error>),
}

impl EmbeddedError {
    fn kind(&self) -> ErrorKind {
        match self {
            EmbeddedError::Rule(rule) => rule.kind(),
            EmbeddedError::Sqlite(err) => sqlite_kind(err),
            EmbeddedError::BatchFailed(err) => sqlite_kind(err),
            EmbeddedError::CommitterGone | EmbeddedError::Spawn(_) => ErrorKind::Unavailable,
            EmbeddedError::ReadTask(_) => ErrorKind::Unexpected,
        }
    }
}

fn sqlite_kind(err: &rusqlite::Error) -> ErrorKind {
    match err.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied,
        ) => ErrorKind::Unavailable,
        Some(ErrorCode::ConstraintViolation) => ErrorKind::Conflict,
        _ => ErrorKind::Unexpected,
    }
}

crate::rule::rule_conversions!(EmbeddedError);

impl From<EmbeddedError> for Error {
    fn from(err: EmbeddedError) -> Self {
        let kind = err.kind();
        let message = err.to_string();
        Error::new(kind, message)
            .with_backend(BACKEND)
            .with_source(err)
    }
}
