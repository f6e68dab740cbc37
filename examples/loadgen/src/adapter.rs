//! The three wire protocols the load generator speaks: the messenger protocol
//! (docs/protocol.md), the baseline server's line protocol, and Socket.IO (Engine.IO v4 over a
//! raw WebSocket).
//!
//! Every load pattern is expressed with rooms: a connection joins rooms and sends a payload to
//! a room; every other member receives the payload. A messenger room is a conversation (a
//! direct conversation for 1:1, a group for fanout), a Socket.IO room is a room, a baseline
//! room is a set of connections in the baseline server.

use serde::{Deserialize, Serialize};

/// Which server the load generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    /// A messenger server (reference-server): `hello`, `sync`, `send`, `message`.
    Messenger,
    /// The `baseline` binary of this crate: `J room`, `B room payload`, `E payload`.
    Baseline,
    /// The Socket.IO peer (`peer/server.js`): `join`, `msg`, `echo` events.
    Socketio,
}

/// What one incoming text frame means to the load generator.
/// The socket options of the load's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SocketMode {
    /// The operating system's defaults, as most client libraries and apps leave them:
    /// Nagle's algorithm on, delayed ACKs on the peer.
    Default,
    /// `TCP_NODELAY`, as the messenger client library sets it.
    Nodelay,
}

/// What a receiving app answers to each message it gets (messenger target only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Receipts {
    /// Nothing.
    None,
    /// A `delivered` receipt per message, as an app does when a message reaches the phone.
    Delivered,
    /// `delivered` and `read` per message, as an app with the conversation open on screen.
    Read,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// A payload sent by some connection to a room this connection is in.
    Payload(&'a str),
    /// The messenger server acknowledged a send (durably stored); the client_msg_id.
    Ack(&'a str),
    /// A `receipt` frame (messenger): a watermark moved.
    Receipt,
    /// The answer the handshake or a setup step waits for.
    Ready,
    /// A frame to answer with this text (Engine.IO ping → pong).
    Reply(&'static str),
    /// An error reported by the server.
    Error,
    /// Anything else (receipts, own echoes, group entries without text...).
    Other,
}

/// The value of `"key":"..."` in a flat JSON text, without unescaping (our payloads and ids
/// never need escapes).
fn json_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = text.get(start..)?;
    let end = rest.find('"')?;
    rest.get(..end)
}

impl Target {
    /// The frames that open a session for `user` (after the WebSocket upgrade), and how many
    /// `Ready` answers to wait for before the session is usable. `cursors` is a JSON object of
    /// sync cursors (messenger only).
    pub(crate) fn open(self, user: &str, cursors: &str) -> (Vec<String>, usize) {
        match self {
            Target::Messenger => (
                vec![
                    format!(r#"{{"type":"hello","v":1,"token":"{user}:load"}}"#),
                    format!(r#"{{"type":"sync","cursors":{cursors}}}"#),
                ],
                2,
            ),
            // Engine.IO sends its open packet first; the namespace connect "40" is answered
            // by "40{...}".
            Target::Socketio => (vec!["40".to_owned()], 1),
            Target::Baseline => (Vec::new(), 0),
        }
    }

    /// The frame joining `room` (answered by one `Ready`), if the target needs one.
    pub(crate) fn join(self, room: &str) -> Option<String> {
        match self {
            Target::Messenger => None,
            Target::Socketio => Some(format!(r#"42["join","{room}"]"#)),
            Target::Baseline => Some(format!("J {room}")),
        }
    }

    /// The messenger frame opening the direct conversation with `user` (answered by one
    /// `Ready`).
    pub(crate) fn open_direct(self, user: &str) -> Option<String> {
        match self {
            Target::Messenger => Some(format!(
                r#"{{"type":"open_direct","id":"od","user":"{user}"}}"#
            )),
            Target::Socketio | Target::Baseline => None,
        }
    }

    /// The frame sending `payload` to `room`; `key` is the messenger client_msg_id.
    pub(crate) fn send(self, room: &str, key: &str, payload: &str) -> String {
        match self {
            Target::Messenger => format!(
                r#"{{"type":"send","conversation":"{room}","client_msg_id":"{key}","body":{{"kind":"text","text":"{payload}"}}}}"#
            ),
            Target::Socketio => format!(r#"42["msg","{room}","{payload}"]"#),
            Target::Baseline => format!("B {room} {payload}"),
        }
    }

    /// Classifies one incoming text frame.
    pub(crate) fn classify(self, text: &str) -> Incoming<'_> {
        match self {
            Target::Messenger => {
                let Some(kind) = json_str(text, r#""type":""#) else {
                    return Incoming::Other;
                };
                match kind {
                    "message" => match json_str(text, r#""text":""#) {
                        Some(payload) => Incoming::Payload(payload),
                        None => Incoming::Other,
                    },
                    "sent" => match json_str(text, r#""client_msg_id":""#) {
                        Some(key) => Incoming::Ack(key),
                        None => Incoming::Other,
                    },
                    "receipt" => Incoming::Receipt,
                    "welcome" | "synced" | "conversation" => Incoming::Ready,
                    "error" => Incoming::Error,
                    _ => Incoming::Other,
                }
            }
            Target::Socketio => {
                if text == "2" {
                    Incoming::Reply("3")
                } else if let Some(rest) = text.strip_prefix(r#"42["msg",""#) {
                    match rest.strip_suffix(r#""]"#) {
                        Some(payload) => Incoming::Payload(payload),
                        None => Incoming::Other,
                    }
                } else if text.starts_with(r#"42["joined""#) || text.starts_with("40") {
                    Incoming::Ready
                } else if text.starts_with("44") {
                    Incoming::Error
                } else {
                    Incoming::Other
                }
            }
            Target::Baseline => {
                if text.starts_with("j ") {
                    Incoming::Ready
                } else {
                    Incoming::Payload(text)
                }
            }
        }
    }
}

/// The direct conversation id of two users (`dm:<smaller>:<larger>`, byte-wise).
/// The digits after `key` in `text` (`"seq":12` → 12).
fn json_u64(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let rest = text.get(start..)?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

impl Target {
    /// The receipt frames an app sends for the `message` frame `text` (none for other
    /// targets, or for anything but a message).
    pub(crate) fn receipts(self, text: &str, receipts: Receipts) -> Vec<String> {
        if self != Target::Messenger || receipts == Receipts::None {
            return Vec::new();
        }
        let (Some(conversation), Some(seq)) = (
            json_str(text, r#""conversation":""#),
            json_u64(text, r#""seq":"#),
        ) else {
            return Vec::new();
        };
        let mut frames = vec![format!(
            r#"{{"type":"delivered","conversation":"{conversation}","seq":{seq}}}"#
        )];
        if receipts == Receipts::Read {
            frames.push(format!(
                r#"{{"type":"read","conversation":"{conversation}","seq":{seq}}}"#
            ));
        }
        frames
    }
}

pub(crate) fn direct_id(a: &str, b: &str) -> String {
    if a.as_bytes() < b.as_bytes() {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

/// What a payload carries: `step:sender:seq:scheduled_ns~padding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Payload {
    /// The step (rate) of the run it was sent in.
    pub(crate) step: usize,
    /// The global index of the sending connection.
    pub(crate) sender: u32,
    /// 1, 2, 3... per sender.
    pub(crate) seq: u64,
    /// When it was scheduled to be sent, ns since the Unix epoch.
    pub(crate) scheduled_ns: u64,
}

impl Payload {
    /// The payload text, padded with `~x...` to at least `size` bytes.
    pub(crate) fn encode(&self, size: usize) -> String {
        let mut text = format!(
            "{}:{}:{}:{}",
            self.step, self.sender, self.seq, self.scheduled_ns
        );
        if text.len() < size {
            text.push('~');
            while text.len() < size {
                text.push('x');
            }
        }
        text
    }

    /// Parses a payload (or a messenger client_msg_id `c` + payload fields).
    pub(crate) fn decode(text: &str) -> Option<Payload> {
        let text = text.split('~').next()?;
        let mut parts = text.split(':');
        let payload = Payload {
            step: parts.next()?.parse().ok()?,
            sender: parts.next()?.parse().ok()?,
            seq: parts.next()?.parse().ok()?,
            scheduled_ns: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(payload)
    }

    /// The messenger client_msg_id of this payload (unique per user and conversation).
    pub(crate) fn key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.step, self.sender, self.seq, self.scheduled_ns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip_with_padding() {
        let payload = Payload {
            step: 2,
            sender: 17,
            seq: 9,
            scheduled_ns: 1_700_000_000_000_000_123,
        };
        let text = payload.encode(64);
        assert_eq!(text.len(), 64);
        assert_eq!(Payload::decode(&text), Some(payload));
        assert_eq!(Payload::decode(&payload.key()), Some(payload));
        assert_eq!(Payload::decode("1:2:3"), None);
        assert_eq!(Payload::decode("1:2:3:x"), None);
    }

    #[test]
    fn receipts_name_the_message() {
        let message = r#"{"type":"message","message":{"conversation":"dm:a:b","seq":31,"sender":"a","sender_device":"load","client_msg_id":"0:1:1:5","sent_at":1,"body":{"kind":"text","text":"0:1:1:5~xx"}}}"#;
        assert!(
            Target::Messenger
                .receipts(message, Receipts::None)
                .is_empty()
        );
        assert_eq!(
            Target::Messenger.receipts(message, Receipts::Delivered),
            [r#"{"type":"delivered","conversation":"dm:a:b","seq":31}"#]
        );
        assert_eq!(
            Target::Messenger.receipts(message, Receipts::Read),
            [
                r#"{"type":"delivered","conversation":"dm:a:b","seq":31}"#,
                r#"{"type":"read","conversation":"dm:a:b","seq":31}"#
            ]
        );
        assert!(
            Target::Baseline
                .receipts(message, Receipts::Read)
                .is_empty()
        );
    }

    #[test]
    fn classifies_messenger_frames() {
        let message = r#"{"type":"message","message":{"conversation":"dm:a:b","seq":3,"sender":"a","sender_device":"load","client_msg_id":"0:1:1:5","sent_at":1,"body":{"kind":"text","text":"0:1:1:5~xx"}}}"#;
        assert_eq!(
            Target::Messenger.classify(message),
            Incoming::Payload("0:1:1:5~xx")
        );
        let sent = r#"{"type":"sent","conversation":"dm:a:b","client_msg_id":"0:1:1:5","seq":3,"sent_at":1,"duplicate":false}"#;
        assert_eq!(Target::Messenger.classify(sent), Incoming::Ack("0:1:1:5"));
        assert_eq!(
            Target::Messenger.classify(r#"{"type":"welcome","v":1}"#),
            Incoming::Ready
        );
        assert_eq!(
            Target::Messenger.classify(r#"{"type":"error","code":"bad_frame"}"#),
            Incoming::Error
        );
    }

    #[test]
    fn classifies_socketio_frames() {
        assert_eq!(Target::Socketio.classify("2"), Incoming::Reply("3"));
        assert_eq!(
            Target::Socketio.classify(r#"42["msg","0:1:1:5"]"#),
            Incoming::Payload("0:1:1:5")
        );
        assert_eq!(
            Target::Socketio.classify(r#"40{"sid":"x"}"#),
            Incoming::Ready
        );
        assert_eq!(
            Target::Socketio.classify(r#"42["joined","r"]"#),
            Incoming::Ready
        );
        assert_eq!(
            Target::Socketio.classify(r#"0{"sid":"x"}"#),
            Incoming::Other
        );
    }

    #[test]
    fn direct_ids_sort_bytewise() {
        assert_eq!(direct_id("b", "a"), "dm:a:b");
        assert_eq!(direct_id("Zed", "amy"), "dm:Zed:amy");
    }
}
