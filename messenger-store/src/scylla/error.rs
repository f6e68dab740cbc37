//! The ScyllaDB store's private errors, converted to [`messenger_core::Error`] at the edge.

use crate::rule::Rule;
use messenger_core::{Error, ErrorKind};
use scylla::errors::{
    DbError, DeserializationError, ExecutionError, IntoRowsResultError, MaybeFirstRowError,
    NewSessionError, NextPageError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError, RowsError, TypeCheckError, UseKeyspaceError, WriteType,
};

/// The backend name carried by every error of this backend.
pub(crate) const BACKEND: &str = "scylla";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScyllaError {
    #[error(transparent)]
    Rule(crate::rule::Rule),
    #[error("scylla: {0}")]
    Execution(Box<ExecutionError>),
    #[error("scylla: {0}")]
    Prepare(Box<PrepareError>),
    #[error("scylla: {0}")]
    Pager(Box<PagerExecutionError>),
    #[error("scylla: {0}")]
    NextRow(Box<NextRowError>),
    #[error("scylla: {0}")]
    NewSession(Box<NewSessionError>),
    #[error("scylla: {0}")]
    UseKeyspace(Box<UseKeyspaceError>),
    #[error("the keyspace name {0:?} is not a plain CQL identifier")]
    BadKeyspace(String),
    #[error("the cluster was not ready within {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("a conditional write kept racing with others ({0})")]
    Contended(&'static str),
}

/// Driver errors are large (hundreds of bytes): boxed, so every `Result` stays small.
macro_rules! boxed_from {
    ($($variant:ident($error:ty)),+) => {
        $(impl From<$error> for ScyllaError {
            fn from(err: $error) -> Self {
                ScyllaError::$variant(Box::new(err))
            }
        })+
    };
}

boxed_from!(
    Execution(ExecutionError),
    Prepare(PrepareError),
    Pager(PagerExecutionError),
    NextRow(NextRowError),
    NewSession(NewSessionError),
    UseKeyspace(UseKeyspaceError)
);

macro_rules! corrupt_from {
    ($($error:ty),+) => {
        $(impl From<$error> for ScyllaError {
            fn from(err: $error) -> Self {
                ScyllaError::Rule(Rule::Corrupt(err.to_string()))
            }
        })+
    };
}

corrupt_from!(
    IntoRowsResultError,
    RowsError,
    MaybeFirstRowError,
    DeserializationError,
    TypeCheckError
);

impl ScyllaError {
    /// Whether a lightweight transaction timed out in its Paxos phase (contention with other
    /// writers of the same partition): its outcome is unknown, and running the same
    /// idempotent operation again converges.
    pub(crate) fn is_cas_timeout(&self) -> bool {
        matches!(
            self,
            ScyllaError::Execution(err) if matches!(
                &**err,
                ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    DbError::WriteTimeout {
                        write_type: WriteType::Cas,
                        ..
                    },
                    _,
                ))
            )
        )
    }

    fn kind(&self) -> ErrorKind {
        match self {
            ScyllaError::Rule(rule) => rule.kind(),
            ScyllaError::BadKeyspace(_) => ErrorKind::InvalidRequest,
            ScyllaError::Execution(err) => execution_kind(err),
            ScyllaError::Prepare(err) => prepare_kind(err),
            ScyllaError::Pager(err) => match &**err {
                PagerExecutionError::PrepareError(err) => prepare_kind(err),
                PagerExecutionError::NextPageError(err) => next_page_kind(err),
                _ => ErrorKind::Unexpected,
            },
            ScyllaError::NextRow(err) => match &**err {
                NextRowError::NextPageError(err) => next_page_kind(err),
                _ => ErrorKind::Unexpected,
            },
            ScyllaError::NewSession(err) => match &**err {
                NewSessionError::FailedToResolveAnyHostname(_)
                | NewSessionError::MetadataError(_) => ErrorKind::Unavailable,
                NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
                    ErrorKind::InvalidRequest
                }
                _ => ErrorKind::Unexpected,
            },
            ScyllaError::UseKeyspace(err) => match &**err {
                UseKeyspaceError::RequestError(err) => attempt_kind(err),
                UseKeyspaceError::RequestTimeout(_) => ErrorKind::Timeout,
                _ => ErrorKind::Unexpected,
            },
            ScyllaError::ConnectTimeout(_) | ScyllaError::Contended(_) => ErrorKind::Unavailable,
        }
    }
}

fn execution_kind(err: &ExecutionError) -> ErrorKind {
    match err {
        ExecutionError::EmptyPlan | ExecutionError::ConnectionPoolError(_) => {
            ErrorKind::Unavailable
        }
        ExecutionError::RequestTimeout(_) => ErrorKind::Timeout,
        ExecutionError::LastAttemptError(err) => attempt_kind(err),
        ExecutionError::PrepareError(err) => prepare_kind(err),
        _ => ErrorKind::Unexpected,
    }
}

fn prepare_kind(err: &PrepareError) -> ErrorKind {
    match err {
        PrepareError::ConnectionPoolError(_) => ErrorKind::Unavailable,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_kind(first_attempt),
        _ => ErrorKind::Unexpected,
    }
}

fn next_page_kind(err: &NextPageError) -> ErrorKind {
    match err {
        NextPageError::RequestFailure(err) => request_kind(err),
        _ => ErrorKind::Unexpected,
    }
}

fn request_kind(err: &scylla::errors::RequestError) -> ErrorKind {
    use scylla::errors::RequestError;
    match err {
        RequestError::EmptyPlan | RequestError::ConnectionPoolError(_) => ErrorKind::Unavailable,
        RequestError::RequestTimeout(_) => ErrorKind::Timeout,
        RequestError::LastAttemptError(err) => attempt_kind(err),
        _ => ErrorKind::Unexpected,
    }
}

fn attempt_kind(err: &RequestAttemptError) -> ErrorKind {
    match err {
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => ErrorKind::Unavailable,
        RequestAttemptError::DbError(err, _) => db_kind(err),
        _ => ErrorKind::Unexpected,
    }
}

/// What the server said, as a kind. A write timeout of a lightweight transaction leaves its
/// outcome unknown: `Timeout` (temporary), and retrying the same append is safe.
fn db_kind(err: &DbError) -> ErrorKind {
    match err {
        DbError::Unavailable { .. }
        | DbError::IsBootstrapping
        | DbError::ReadFailure { .. }
        | DbError::WriteFailure { .. }
        | DbError::ServerError => ErrorKind::Unavailable,
        DbError::Overloaded | DbError::RateLimitReached { .. } => ErrorKind::Overloaded,
        DbError::ReadTimeout { .. } | DbError::WriteTimeout { .. } => ErrorKind::Timeout,
        _ => ErrorKind::Unexpected,
    }
}

crate::rule::rule_conversions!(ScyllaError);

impl From<ScyllaError> for Error {
    fn from(err: ScyllaError) -> Self {
        let kind = err.kind();
        let message = err.to_string();
        Error::new(kind, message)
            .with_backend(BACKEND)
            .with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::{ConversationId, Seq};

    use super::*;

    #[test]
    fn kinds_follow_the_store_contract() {
        let Ok(conversation) = ConversationId::new("g:errors") else {
            unreachable!("a valid literal id");
        };
        let taken = Error::from(ScyllaError::Rule(Rule::SeqTaken {
            conversation: conversation.clone(),
            seq: Seq(3),
        }));
        assert_eq!(taken.kind(), ErrorKind::Conflict);
        let past = Error::from(ScyllaError::Rule(Rule::PastHead {
            conversation,
            seq: Seq(9),
            head: Seq(2),
        }));
        assert_eq!(past.kind(), ErrorKind::InvalidRequest);
        let timeout = Error::from(ScyllaError::from(ExecutionError::RequestTimeout(
            std::time::Duration::from_secs(1),
        )));
        assert_eq!(timeout.kind(), ErrorKind::Timeout);
        assert!(timeout.is_temporary());
        let down = Error::from(ScyllaError::from(ExecutionError::EmptyPlan));
        assert_eq!(down.kind(), ErrorKind::Unavailable);
        let cas = |write_type| {
            ScyllaError::from(ExecutionError::LastAttemptError(
                RequestAttemptError::DbError(
                    DbError::WriteTimeout {
                        consistency: scylla::statement::Consistency::LocalQuorum,
                        received: 1,
                        required: 2,
                        write_type,
                    },
                    "timeout".to_owned(),
                ),
            ))
        };
        assert!(cas(WriteType::Cas).is_cas_timeout());
        assert!(!cas(WriteType::Simple).is_cas_timeout());
        assert_eq!(Error::from(cas(WriteType::Cas)).kind(), ErrorKind::Timeout);
        assert!(
            Error::from(ScyllaError::Contended("append"))
                .to_string()
                .contains("append")
        );
    }
}
