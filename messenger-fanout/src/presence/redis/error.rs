//! The Redis presence registry's private errors and their conversion to
//! [`messenger_core::Error`].

use ::redis::RetryMethod;
use messenger_core::presence::NodeId;
use messenger_core::{Error, ErrorKind};

use super::BACKEND;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub(super) enum RedisPresenceError {
    /// The configuration cannot work.
    #[error("invalid Redis presence configuration: {0}")]
    Config(String),
    /// A command failed: connection, cluster or server error.
    #[error("redis presence {operation} failed")]
    Command {
        operation: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    /// A command did not answer in time.
    #[error("redis presence {operation} timed out")]
    Elapsed { operation: &'static str },
    /// Another live process holds this node id's lease.
    #[error("node {node} already holds a live lease: another process runs with this node id")]
    LeaseHeld { node: NodeId },
    /// A request named another node than this registry's.
    #[error("this registry is node {ours}; it cannot register devices of node {theirs}")]
    ForeignNode { ours: NodeId, theirs: NodeId },
    /// The registry was released.
    #[error("the presence registry of node {node} was released")]
    Released { node: NodeId },
    /// Nodes kept appearing while a change was decided.
    #[error("redis presence {operation}: the set of nodes kept changing; try again")]
    Unsettled { operation: &'static str },
    /// A script answered something it never answers.
    #[error("redis presence {operation} answered something it never answers: {reply}")]
    UnexpectedReply {
        operation: &'static str,
        reply: String,
    },
}

impl RedisPresenceError {
    pub(super) fn command(operation: &'static str) -> impl FnOnce(::redis::RedisError) -> Self {
        move |source| Self::Command { operation, source }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) | Self::ForeignNode { .. } => ErrorKind::InvalidRequest,
            Self::Command { source, .. } if source.is_timeout() => ErrorKind::Timeout,
            // Connection refused or dropped, I/O, cluster down or moving, loading, ...:
            // everything the client itself would retry is temporary.
            Self::Command { source, .. } => match source.retry_method() {
                RetryMethod::NoRetry => {
                    if source.is_io_error() || source.is_connection_dropped() {
                        ErrorKind::Unavailable
                    } else {
                        ErrorKind::Unexpected
                    }
                }
                _ => ErrorKind::Unavailable,
            },
            Self::Elapsed { .. } => ErrorKind::Timeout,
            Self::LeaseHeld { .. } => ErrorKind::Conflict,
            Self::Released { .. } | Self::Unsettled { .. } => ErrorKind::Unavailable,
            Self::UnexpectedReply { .. } => ErrorKind::Unexpected,
        }
    }
}

impl From<RedisPresenceError> for Error {
    fn from(err: RedisPresenceError) -> Self {
        Error::new(err.kind(), err.to_string())
            .with_backend(BACKEND)
            .with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_temporary() {
        for io_kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
        ] {
            let err: Error =
                RedisPresenceError::command("lookup")(std::io::Error::from(io_kind).into()).into();
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{io_kind:?}");
            assert!(err.is_temporary());
            assert_eq!(err.backend(), Some("redis"));
        }
    }

    #[test]
    fn misuse_is_not_temporary() {
        let err: Error = RedisPresenceError::ForeignNode {
            ours: NodeId::from("a"),
            theirs: NodeId::from("b"),
        }
        .into();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        let err: Error = RedisPresenceError::LeaseHeld {
            node: NodeId::from("a"),
        }
        .into();
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }
}
