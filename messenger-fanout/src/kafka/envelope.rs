//! The record a node sends another node's topic: one event for some of that node's users.
//!
//! JSON, versioned: `{"v":1,"users":["bob","carol"],"event":{"event":"typing",...}}`, where
//! `event` is a [`messenger_core::Event`] in its serde form. A receiver refuses (logs and
//! skips) a version it does not know rather than guess.

use messenger_core::{Event, UserId};
use serde::Deserialize;

/// The version this code writes and reads.
pub(super) const VERSION: u32 = 1;

/// A decoded envelope.
#[derive(Debug, Deserialize, PartialEq)]
pub(super) struct Envelope {
    pub(super) users: Vec<UserId>,
    pub(super) event: Event,
}

/// An envelope with its version, as read from the wire.
#[derive(Deserialize)]
struct Versioned {
    v: u32,
    #[serde(flatten)]
    envelope: Envelope,
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

/// An event serialized once, to be wrapped in one envelope per node.
pub(super) struct EncodedEvent(Vec<u8>);

impl EncodedEvent {
    pub(super) fn new(event: &Event) -> Result<Self, serde_json::Error> {
        serde_json::to_vec(event).map(Self)
    }
}

/// The envelope for `users`, around an event serialized once for every node.
pub(super) fn encode(users: &[UserId], event: &EncodedEvent) -> Result<Vec<u8>, serde_json::Error> {
    let users = serde_json::to_vec(users)?;
    let mut payload = Vec::with_capacity(32 + users.len() + event.0.len());
    payload.extend_from_slice(format!(r#"{{"v":{VERSION},"users":"#).as_bytes());
    payload.extend_from_slice(&users);
    payload.extend_from_slice(br#","event":"#);
    payload.extend_from_slice(&event.0);
    payload.push(b'}');
    Ok(payload)
}

/// Parses an envelope once; only a payload that does not parse is read again, for its
/// version, so that a newer envelope is told apart from garbage.
pub(super) fn decode(payload: &[u8]) -> Result<Envelope, DecodeError> {
    match serde_json::from_slice::<Versioned>(payload) {
        Ok(read) if read.v == VERSION => Ok(read.envelope),
        Ok(read) => Err(DecodeError::Version(read.v)),
        Err(err) => match serde_json::from_slice::<VersionOnly>(payload) {
            Ok(version) if version.v != VERSION => Err(DecodeError::Version(version.v)),
            _ => Err(DecodeError::Malformed(err)),
        },
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::{ConversationId, DeviceId, TypingUpdate};

    use super::*;

    fn typing() -> Event {
        Event::Typing(TypingUpdate {
            conversation: ConversationId::new("g:lunch").unwrap(),
            user: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            active: true,
        })
    }

    #[test]
    fn envelopes_round_trip_with_their_version() {
        let users = [UserId::new("bob").unwrap(), UserId::new("carol").unwrap()];
        let bytes = encode(&users, &EncodedEvent::new(&typing()).unwrap()).unwrap();
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
