//! The Redis sequencer's private errors and their conversion to [`messenger_core::Error`].

use std::sync::Arc;

use ::redis::RetryMethod;
use messenger_core::{ConversationId, Error, ErrorKind};

use super::BACKEND;

/// What can go wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub(super) enum RedisSequencerError {
    /// The command failed: connection, cluster or server error.
    #[error("redis {operation} of {conversation} failed")]
    Command {
        operation: &'static str,
        conversation: ConversationId,
        #[source]
        source: ::redis::RedisError,
    },
    /// The pipeline carrying the command failed, or the command failed inside it.
    #[error("redis {operation} of {conversation} failed in a pipeline")]
    Pipeline {
        operation: &'static str,
        conversation: ConversationId,
        #[source]
        source: Arc<::redis::RedisError>,
    },
    /// The batching task stopped with the request on board (its runtime shut down).
    #[error("redis {operation} of {conversation} was lost: the batching task stopped")]
    BatcherGone {
        operation: &'static str,
        conversation: ConversationId,
    },
    /// A seq beyond the largest this backend hands out (2^52 - 1).
    #[error(
        "seq {seq} of {conversation} is beyond 2^52 - 2, the largest the Redis sequencer raises to"
    )]
    SeqTooLarge {
        conversation: ConversationId,
        seq: u64,
    },
    /// A script answered something it never answers.
    #[error("redis {operation} of {conversation} answered {value}, which it never answers")]
    UnexpectedReply {
        operation: &'static str,
        conversation: ConversationId,
        value: i64,
    },
}

impl RedisSequencerError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Command { source, .. } => kind_of(source),
            Self::Pipeline { source, .. } => kind_of(source),
            Self::BatcherGone { .. } => ErrorKind::Unavailable,
            Self::SeqTooLarge { .. } => ErrorKind::InvalidRequest,
            Self::UnexpectedReply { .. } => ErrorKind::Unexpected,
        }
    }
}

/// The kind of a Redis client error.
fn kind_of(source: &::redis::RedisError) -> ErrorKind {
    if source.is_timeout() {
        return ErrorKind::Timeout;
    }
    // Connection refused or dropped, I/O, cluster down or moving, loading, ...: everything the
    // client itself would retry is temporary.
    match source.retry_method() {
        RetryMethod::NoRetry => {
            if source.is_io_error() || source.is_connection_dropped() {
                ErrorKind::Unavailable
            } else {
                ErrorKind::Unexpected
            }
        }
        _ => ErrorKind::Unavailable,
    }
}

impl From<RedisSequencerError> for Error {
    fn from(err: RedisSequencerError) -> Self {
        Error::new(err.kind(), err.to_string())
            .with_backend(BACKEND)
            .with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command_error(source: ::redis::RedisError) -> Error {
        RedisSequencerError::Command {
            operation: "increment",
            conversation: ConversationId::new("g:a").unwrap(),
            source,
        }
        .into()
    }

    #[test]
    fn connection_errors_are_temporary() {
        for io_kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
        ] {
            let err = command_error(std::io::Error::from(io_kind).into());
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{io_kind:?}");
            assert!(err.is_temporary());
            assert_eq!(err.backend(), Some("redis"));
        }
    }

    #[test]
    fn pipeline_errors_map_like_command_errors() {
        let err: Error = RedisSequencerError::Pipeline {
            operation: "increment",
            conversation: ConversationId::new("g:a").unwrap(),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into()),
        }
        .into();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.is_temporary());
    }

    #[test]
    fn a_negative_reply_is_unexpected() {
        let err: Error = RedisSequencerError::UnexpectedReply {
            operation: "fence",
            conversation: ConversationId::new("g:a").unwrap(),
            value: -1,
        }
        .into();
        assert_eq!(err.kind(), ErrorKind::Unexpected);
        assert!(!err.is_temporary());
    }
}
