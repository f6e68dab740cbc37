//! The record a node sends another node's topic: one event for some of that node's users.
//!
//! JSON, versioned: `{"v":1,"users":["bob","carol"],"event":{"event":"typing",...}}`, where
//! `event` is a [`messenger_core::Event`] in its serde form. A receiver refuses (logs and
//! skips) a version it does not know rather than guess.

use messenger_core::{Event, UserId};
use serde::{Deserialize, Serialize};

/// The version this code writes and reads.
pub(super) const VERSION: u32 = 1;

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    v: u32,
    users: &'a [UserId],
    event: &'a Event,
}

/// A decoded envelope.
#[derive(Debug, Deserialize, PartialEq)]
pub(super) struct Envelope {
    pub(super) users: Vec<UserId>,
    pub(super) event: Event,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("envelope version {0} is not supported (this node reads version {VERSION})")]
    Version(u32),
    #[error("malformed envelope")]
    Malformed(#[source] serde_json::Error),
}

pub(super) fn encode(users: &[UserId], event: &Event) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&EnvelopeRef {
        v: VERSION,
        users,
        event,
    })
}

pub(super) fn decode(payload: &[u8]) -> Result<Envelope, DecodeError> {
    let version: VersionOnly = serde_json::from_slice(payload).map_err(DecodeError::Malformed)?;
    if version.v != VERSION {
        return Err(DecodeError::Version(version.v));
    }
    serde_json::from_slice(payload).map_err(DecodeError::Malformed)
}

#[cfg(test)]
mod tests {
    use messenger_core::{ConversationId, DeviceId};

    use super::*;

    fn typing() -> Event {
        Event::Typing {
            conversation: ConversationId::new("g:lunch").unwrap(),
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            active: true,
        }
    }

    #[test]
    fn envelopes_round_trip_with_their_version() {
        let users = [UserId::new("bob").unwrap(), UserId::new("carol").unwrap()];
        let bytes = encode(&users, &typing()).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["users"], serde_json::json!(["bob", "carol"]));
        assert_eq!(json["event"]["event"], "typing");
        assert_eq!(
            decode(&bytes).unwrap(),
            Envelope {
                users: users.to_vec(),
                event: typing()
            }
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        let future = br#"{"v":2,"users":["bob"],"event":{"event":"teleport"}}"#;
        assert!(matches!(decode(future), Err(DecodeError::Version(2))));
        for garbage in [
            &b"not json"[..],
            b"{}",
            br#"{"v":1}"#,
            br#"{"v":1,"users":["bad\nid"],"event":{"event":"typing"}}"#,
            b"",
        ] {
            assert!(
                matches!(decode(garbage), Err(DecodeError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(garbage)
            );
        }
    }
}
