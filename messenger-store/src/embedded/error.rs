//! The embedded store's private errors, converted to [`messenger_core::Error`] at the edge.

use messenger_core::{ConversationId, Error, ErrorKind, Seq};
use rusqlite::ErrorCode;

/// The backend name carried by every error of this backend.
pub(crate) const BACKEND: &str = "embedded";

#[derive(Debug, thiserror::Error)]
pub(crate) enum EmbeddedError {
    #[error("seq {seq} of {conversation} already holds another entry")]
    SeqTaken {
        conversation: ConversationId,
        seq: Seq,
    },
    #[error("receipt at seq {seq} is past the head {head} of {conversation}")]
    PastHead {
        conversation: ConversationId,
        seq: Seq,
        head: Seq,
    },
    #[error("{what} {value} is out of the store's integer range")]
    OutOfRange { what: &'static str, value: u64 },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored row cannot be decoded: {0}")]
    Corrupt(String),
    #[error("a message body cannot be encoded or decoded")]
    Json(#[from] serde_json::Error),
    #[error("the database schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the store's committer thread is gone")]
    CommitterGone,
    #[error("the store's committer thread cannot start")]
    Spawn(#[source] std::io::Error),
    #[error("a read task failed")]
    ReadTask(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Media(#[from] crate::media::MediaRefusal),
    #[error("the batch was not committed: {0}")]
    BatchFailed(#[source] std::sync::Arc<rusqlite::Error>),
}

impl EmbeddedError {
    fn kind(&self) -> ErrorKind {
        match self {
            EmbeddedError::SeqTaken { .. } => ErrorKind::Conflict,
            EmbeddedError::PastHead { .. } | EmbeddedError::OutOfRange { .. } => {
                ErrorKind::InvalidRequest
            }
            EmbeddedError::Media(refusal) => refusal.kind(),
            EmbeddedError::Sqlite(err) => sqlite_kind(err),
            EmbeddedError::BatchFailed(err) => sqlite_kind(err),
            EmbeddedError::CommitterGone | EmbeddedError::Spawn(_) => ErrorKind::Unavailable,
            EmbeddedError::Corrupt(_)
            | EmbeddedError::Json(_)
            | EmbeddedError::SchemaTooNew { .. }
            | EmbeddedError::ReadTask(_) => ErrorKind::Unexpected,
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

impl From<EmbeddedError> for Error {
    fn from(err: EmbeddedError) -> Self {
        let kind = err.kind();
        let message = err.to_string();
        Error::new(kind, message)
            .with_backend(BACKEND)
            .with_source(err)
    }
}
