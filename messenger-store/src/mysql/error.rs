//! The MySQL store's private errors, converted to [`messenger_core::Error`] at the edge.

use crate::rule::Rule;
use messenger_core::{Error, ErrorKind};
use mysql_async::DriverError;

/// The backend name carried by every error of this backend.
pub(crate) const BACKEND: &str = "mysql";

/// Server error codes the store reacts to.
pub(crate) mod code {
    /// `ER_DUP_ENTRY`: a unique key already holds the value.
    pub(crate) const DUPLICATE_ENTRY: u16 = 1062;
    /// `ER_LOCK_DEADLOCK`: the transaction was rolled back to break a deadlock.
    pub(crate) const DEADLOCK: u16 = 1213;
    /// `ER_LOCK_WAIT_TIMEOUT`: a row lock was not granted in time.
    pub(crate) const LOCK_WAIT_TIMEOUT: u16 = 1205;
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum MysqlError {
    #[error(transparent)]
    Rule(crate::rule::Rule),
    #[error("mysql: {0}")]
    Mysql(#[from] mysql_async::Error),
    #[error("no connection to the database within {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("the migrations' lock was not granted")]
    MigrationLock,
    #[error("the store's append committers are gone")]
    CommittersGone,
}

impl From<mysql_async::FromRowError> for MysqlError {
    fn from(err: mysql_async::FromRowError) -> Self {
        MysqlError::Rule(Rule::Corrupt(format!(
            "unexpected column types in {:?}",
            err.0
        )))
    }
}

impl MysqlError {
    /// The server error code, when the server refused a statement.
    pub(crate) fn server_code(&self) -> Option<u16> {
        match self {
            MysqlError::Mysql(mysql_async::Error::Server(err)) => Some(err.code),
            _ => None,
        }
    }

    /// Whether the server undid the whole transaction and it may simply run again.
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self.server_code(),
            Some(code::DEADLOCK | code::LOCK_WAIT_TIMEOUT)
        )
    }

    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            MysqlError::Rule(rule) => rule.kind(),
            MysqlError::Mysql(err) => mysql_kind(err),
            MysqlError::ConnectTimeout(_)
            | MysqlError::MigrationLock
            | MysqlError::CommittersGone => ErrorKind::Unavailable,
        }
    }
}

fn mysql_kind(err: &mysql_async::Error) -> ErrorKind {
    match err {
        mysql_async::Error::Io(_) => ErrorKind::Unavailable,
        mysql_async::Error::Driver(
            DriverError::ConnectionClosed
            | DriverError::PoolDisconnected
            | DriverError::PacketOutOfOrder
            | DriverError::BadCompressedPacketHeader,
        ) => ErrorKind::Unavailable,
        mysql_async::Error::Driver(_) | mysql_async::Error::Other(_) => ErrorKind::Unexpected,
        mysql_async::Error::Url(_) => ErrorKind::InvalidRequest,
        mysql_async::Error::Server(err) => match err.code {
            code::DUPLICATE_ENTRY => ErrorKind::Conflict,
            // Deadlock and lock wait timeout (after our retries), too many connections, server
            // shutting down, connection killed, query interrupted, read-only (failover),
            // and the client-side "gone away" / "lost connection" codes.
            code::DEADLOCK
            | code::LOCK_WAIT_TIMEOUT
            | 1040
            | 1053
            | 1077
            | 1078
            | 1079
            | 1080
            | 1152
            | 1153
            | 1158
            | 1159
            | 1160
            | 1161
            | 1290
            | 1317
            | 1836
            | 1927
            | 2002
            | 2003
            | 2006
            | 2013 => ErrorKind::Unavailable,
            _ => ErrorKind::Unexpected,
        },
    }
}

crate::rule::rule_conversions!(MysqlError);

impl From<MysqlError> for Error {
    fn from(err: MysqlError) -> Self {
        let kind = err.kind();
        let message = err.to_string();
        Error::new(kind, message)
            .with_backend(BACKEND)
            .with_source(err)
    }
}
