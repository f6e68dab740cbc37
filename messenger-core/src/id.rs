//! Opaque, validated identifiers.
//!
//! Every identifier that crosses the wire is a short ASCII string checked on the way in, so
//! no backend ever sees an empty, oversized or control-character id. The limits are part of
//! the protocol (see `docs/protocol.md`, "Identifiers").

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidId {
    /// The string was empty.
    #[error("invalid id: {kind} must not be empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// The string was longer than the limit.
    #[error("invalid id: {kind} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The string held a character outside the allowed set.
    #[error("invalid id: {kind} may only hold {allowed}")]
    BadCharacter {
        /// Which identifier.
        kind: &'static str,
        /// The allowed set, in words.
        allowed: &'static str,
    },
}

impl From<InvalidId> for Error {
    fn from(err: InvalidId) -> Self {
        Error::refused(crate::error::ErrorCode::InvalidId, err.to_string())
    }
}

fn is_name_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'@' | b'+')
}

fn is_conversation_char(byte: u8) -> bool {
    is_name_char(byte) || byte == b':'
}

fn validate(
    kind: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    accept: fn(u8) -> bool,
) -> Result<(), InvalidId> {
    if value.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if value.len() > max {
        return Err(InvalidId::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    if !value.bytes().all(accept) {
        return Err(InvalidId::BadCharacter { kind, allowed });
    }
    Ok(())
}

const NAME_CHARS: &str = "ASCII letters, digits and - _ . @ +";
const CONVERSATION_CHARS: &str = "ASCII letters, digits and - _ . @ + :";

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal, $max:expr, $allowed:expr, $accept:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// [`InvalidId`] when `value` is empty, longer than [`Self::MAX_LEN`] or holds a
            /// character outside the allowed set.
            pub fn new(value: impl AsRef<str>) -> Result<Self, InvalidId> {
                let value = value.as_ref();
                validate($kind, value, $max, $allowed, $accept)?;
                Ok(Self(Arc::from(value)))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;

            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::new(&*value).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A user: 1–64 bytes of ASCII letters, digits and `- _ . @ +`.
    UserId,
    "user id",
    64,
    NAME_CHARS,
    is_name_char
);
string_id!(
    /// One device (one installation of an app) of a user: 1–64 bytes, same characters as
    /// [`UserId`].
    DeviceId,
    "device id",
    64,
    NAME_CHARS,
    is_name_char
);
string_id!(
    /// A conversation (direct or group): 1–160 bytes of ASCII letters, digits and
    /// `- _ . @ + :`.
    ///
    /// Direct conversations have the derived id `dm:<smaller user>:<larger user>` (see
    /// [`ConversationId::direct`]); groups get `g:` and a random suffix from the server.
    ConversationId,
    "conversation id",
    160,
    CONVERSATION_CHARS,
    is_conversation_char
);
string_id!(
    /// The sender's own id for one message, chosen by the device before the first attempt
    /// and kept across retries: 1–64 bytes of ASCII letters, digits and `- _ . @ + :`.
    ClientMsgId,
    "client_msg_id",
    64,
    CONVERSATION_CHARS,
    is_conversation_char
);
string_id!(
    /// A request id a client puts on a request frame so it can match the answer: 1–64 bytes of
    /// ASCII letters, digits and `- _ . @ + :`.
    RequestId,
    "request id",
    64,
    CONVERSATION_CHARS,
    is_conversation_char
);

impl ConversationId {
    /// The one direct conversation between two users, whoever starts it.
    ///
    /// User ids cannot contain `:`, so the id is unambiguous.
    ///
    /// # Errors
    /// `InvalidRequest` when both users are the same user.
    ///
    /// ```
    /// use messenger_core::{ConversationId, UserId};
    /// let alice = UserId::new("alice").unwrap();
    /// let bob = UserId::new("bob").unwrap();
    /// assert_eq!(
    ///     ConversationId::direct(&bob, &alice).unwrap(),
    ///     ConversationId::direct(&alice, &bob).unwrap(),
    /// );
    /// assert_eq!(ConversationId::direct(&alice, &bob).unwrap().as_str(), "dm:alice:bob");
    /// ```
    pub fn direct(a: &UserId, b: &UserId) -> Result<Self, Error> {
        if a == b {
            return Err(Error::refused(
                crate::error::ErrorCode::InvalidRequest,
                "a direct conversation needs two different users",
            ));
        }
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        Ok(Self(Arc::from(format!("dm:{low}:{high}"))))
    }

    /// The two users of a direct conversation id, or `None` for any other id.
    pub fn direct_members(&self) -> Option<(UserId, UserId)> {
        let rest = self.0.strip_prefix("dm:")?;
        let (a, b) = rest.split_once(':')?;
        Some((UserId::new(a).ok()?, UserId::new(b).ok()?))
    }
}

/// A position in one conversation's log: strictly increasing, never reused.
///
/// Seq 0 means "nothing": the first message of a conversation has seq 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq before the first message.
    pub const ZERO: Seq = Seq(0);

    /// The following seq.
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis())
            .unwrap_or(0);
        Timestamp(u64::try_from(millis).unwrap_or(u64::MAX))
    }

    /// The raw number of milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_bad_input() {
        assert!(matches!(UserId::new(""), Err(InvalidId::Empty { .. })));
        assert!(matches!(
            UserId::new("a".repeat(65)),
            Err(InvalidId::TooLong { len: 65, .. })
        ));
        assert!(UserId::new("a".repeat(64)).is_ok());
        assert!(matches!(
            UserId::new("al ice"),
            Err(InvalidId::BadCharacter { .. })
        ));
        assert!(
            UserId::new("a:b").is_err(),
            "':' would make direct ids ambiguous"
        );
        assert!(ConversationId::new("g:abc").is_ok());
        assert!(ConversationId::new("g:\u{e9}").is_err());
    }

    #[test]
    fn ids_deserialize_with_validation() {
        let ok: UserId = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(ok.as_str(), "bob");
        assert!(serde_json::from_str::<UserId>("\"b\\nob\"").is_err());
    }

    #[test]
    fn direct_members_round_trip() {
        let a = UserId::new("zed").unwrap();
        let b = UserId::new("amy").unwrap();
        let id = ConversationId::direct(&a, &b).unwrap();
        assert_eq!(id.direct_members(), Some((b, a.clone())));
        assert!(ConversationId::direct(&a, &a).is_err());
        assert_eq!(ConversationId::new("g:x").unwrap().direct_members(), None);
    }
}
