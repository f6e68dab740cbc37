//! The errors every backend shares: the store's own rules (a taken seq, a receipt past the
//! head, a number out of range, a media status change refused), rows that do not decode, and
//! schema versions this build cannot use. Each backend's error enum wraps a [`Rule`], so the
//! words and the [`ErrorKind`] of these are written once.

use messenger_core::{ConversationId, ErrorKind, Seq};

use crate::media::MediaRefusal;

/// An error every backend raises the same way.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Rule {
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
    #[error(transparent)]
    Media(#[from] MediaRefusal),
    #[error("a stored row cannot be decoded: {0}")]
    Corrupt(String),
    #[error("a message body cannot be encoded or decoded")]
    Json(#[from] serde_json::Error),
    #[error("the schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    // Only the shared databases can be told not to migrate.
    #[cfg_attr(not(any(feature = "mysql", feature = "scylla")), allow(dead_code))]
    #[error("the schema is at version {found}, this build needs {known}; migrations are off")]
    SchemaTooOld { found: i64, known: i64 },
}

impl Rule {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Rule::SeqTaken { .. } => ErrorKind::Conflict,
            Rule::PastHead { .. } | Rule::OutOfRange { .. } => ErrorKind::InvalidRequest,
            Rule::Media(refusal) => refusal.kind(),
            Rule::Corrupt(_)
            | Rule::Json(_)
            | Rule::SchemaTooNew { .. }
            | Rule::SchemaTooOld { .. } => ErrorKind::Unexpected,
        }
    }
}

/// `From` a [`Rule`] and from what converts into one (a JSON error, a media refusal), for a
/// backend's error enum with a `Rule(Rule)` variant, so `?` works on either.
macro_rules! rule_conversions {
    ($backend:ident) => {
        impl From<$crate::rule::Rule> for $backend {
            fn from(rule: $crate::rule::Rule) -> Self {
                $backend::Rule(rule)
            }
        }

        impl From<serde_json::Error> for $backend {
            fn from(err: serde_json::Error) -> Self {
                $backend::Rule($crate::rule::Rule::Json(err))
            }
        }

        impl From<$crate::media::MediaRefusal> for $backend {
            fn from(refusal: $crate::media::MediaRefusal) -> Self {
                $backend::Rule($crate::rule::Rule::Media(refusal))
            }
        }
    };
}

pub(crate) use rule_conversions;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let chat = ConversationId::new("g:x").unwrap();
        let taken = Rule::SeqTaken {
            conversation: chat.clone(),
            seq: Seq(3),
        };
        assert_eq!(taken.kind(), ErrorKind::Conflict);
        assert_eq!(
            taken.to_string(),
            "seq 3 of g:x already holds another entry"
        );
        let past = Rule::PastHead {
            conversation: chat,
            seq: Seq(9),
            head: Seq(2),
        };
        assert_eq!(past.kind(), ErrorKind::InvalidRequest);
        assert_eq!(Rule::Corrupt("x".into()).kind(), ErrorKind::Unexpected);
        assert_eq!(
            Rule::Media(MediaRefusal::NoEntry(Seq(1))).kind(),
            ErrorKind::NotFound
        );
    }
}
