//! The history checker: records what a concurrent test saw — every acknowledged send, every
//! entry each device received, in the order it arrived, and the log read back at the end —
//! and finds what the protocol forbids:
//!
//! - **lost**: an acknowledged send missing from the stored log, or from a device's stream
//!   that went past its seq;
//! - **duplicated** / **reordered** / **gap**: a device's stream of a conversation that does
//!   not go cursor+1, cursor+2, ... (each session starts right after the cursor it synced
//!   from);
//! - **two messages at one seq**: two different (sender, `client_msg_id`) seen at one
//!   (conversation, seq), in acks, streams or the log;
//! - **one message at two seqs**: one (sender, `client_msg_id`) seen at two seqs.
//!
//! It checks what it is given and hides nothing: the recorder takes raw entries, whoever
//! decoded them. On failure it writes its whole log, one JSON object per line, under
//! `target/history/` and names the file in the panic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use messenger_core::{ConversationId, Message, Seq};
use serde_json::{Value, json};

/// One observation.
#[derive(Debug, Clone)]
enum Record {
    /// `sender` (user:device) was told `client_msg_id` is stored at `seq`.
    Acked {
        sender: String,
        conversation: String,
        client_msg_id: String,
        seq: u64,
    },
    /// `device` (user:device) starts (again) a stream of `conversation` after `cursor`.
    Session {
        device: String,
        conversation: String,
        cursor: u64,
    },
    /// `device` received this entry, in this order.
    Received { device: String, entry: Entry },
    /// The entry is in the log read back at the end.
    Stored { entry: Entry },
}

/// What the checker needs of a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    conversation: String,
    seq: u64,
    /// `user:device` of the sender; `None` for a void.
    sender: Option<String>,
    client_msg_id: String,
}

impl Entry {
    fn of(message: &Message) -> Entry {
        Entry {
            conversation: message.conversation.to_string(),
            seq: message.seq.get(),
            sender: (!message.is_void())
                .then(|| format!("{}:{}", message.sender, message.sender_device)),
            client_msg_id: message.client_msg_id.to_string(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "conversation": self.conversation,
            "seq": self.seq,
            "sender": self.sender,
            "client_msg_id": self.client_msg_id,
        })
    }
}

impl Record {
    fn json(&self) -> Value {
        match self {
            Record::Acked {
                sender,
                conversation,
                client_msg_id,
                seq,
            } => json!({
                "acked": {"sender": sender, "conversation": conversation,
                          "client_msg_id": client_msg_id, "seq": seq}
            }),
            Record::Session {
                device,
                conversation,
                cursor,
            } => json!({
                "session": {"device": device, "conversation": conversation, "cursor": cursor}
            }),
            Record::Received { device, entry } => {
                json!({"received": {"device": device, "entry": entry.json()}})
            }
            Record::Stored { entry } => json!({"stored": entry.json()}),
        }
    }
}

/// The recorder and checker of one test. Share it as `Arc<History>`.
#[derive(Debug)]
pub struct History {
    name: String,
    records: Mutex<Vec<Record>>,
}

impl History {
    /// A history named after its test (the name of the log file on failure).
    pub fn new(name: &str) -> Arc<History> {
        Arc::new(History {
            name: name.to_owned(),
            records: Mutex::new(Vec::new()),
        })
    }

    fn push(&self, record: Record) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }

    /// `sender` (`user:device`) was acknowledged `client_msg_id` at `seq`.
    pub fn acked(
        &self,
        sender: &str,
        conversation: &ConversationId,
        client_msg_id: &str,
        seq: Seq,
    ) {
        self.push(Record::Acked {
            sender: sender.to_owned(),
            conversation: conversation.to_string(),
            client_msg_id: client_msg_id.to_owned(),
            seq: seq.get(),
        });
    }

    /// `device` (`user:device`) synced `conversation` from `cursor`: its stream of it starts
    /// again at `cursor + 1`.
    pub fn session(&self, device: &str, conversation: &ConversationId, cursor: Seq) {
        self.push(Record::Session {
            device: device.to_owned(),
            conversation: conversation.to_string(),
            cursor: cursor.get(),
        });
    }

    /// `device` received `message`, now. Also checks it at once against the device's stream
    /// so far, so a test can stop at the first bad frame: `Err` says what is wrong.
    pub fn received(&self, device: &str, message: &Message) -> Result<(), String> {
        let entry = Entry::of(message);
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let expected = next_expected(&records, device, &entry.conversation);
        records.push(Record::Received {
            device: device.to_owned(),
            entry: entry.clone(),
        });
        match expected {
            Some(expected) => out_of_order(device, &entry, expected).map_or(Ok(()), Err),
            None => Ok(()),
        }
    }

    /// The log read back at the end (every entry of the conversations it covers).
    pub fn stored(&self, messages: &[Arc<Message>]) {
        for message in messages {
            self.push(Record::Stored {
                entry: Entry::of(message),
            });
        }
    }

    /// Everything the protocol forbids in what was recorded, one line each.
    pub fn problems(&self) -> Vec<String> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let mut problems = Vec::new();
        stream_problems(&records, &mut problems);
        identity_problems(&records, &mut problems);
        lost(&records, &mut problems);
        problems
    }

    /// Panics with every problem, after writing the log to `target/history/<name>.jsonl`.
    pub fn assert_clean(&self) {
        let problems = self.problems();
        if problems.is_empty() {
            return;
        }
        let path = self.write_log();
        panic!(
            "history {}: {} problem(s), log in {}:\n{}",
            self.name,
            problems.len(),
            path.display(),
            problems.join("\n")
        );
    }

    fn write_log(&self) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/history");
        let path = dir.join(format!("{}-{}.jsonl", self.name, std::process::id()));
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::File::create(&path))
            .and_then(|mut file| {
                for record in records.iter() {
                    writeln!(file, "{}", record.json())?;
                }
                Ok(())
            });
        if let Err(err) = written {
            eprintln!("cannot write {}: {err}", path.display());
        }
        path
    }
}

/// The seq `device` must receive next in `conversation`, if a session of it started.
fn next_expected(records: &[Record], device: &str, conversation: &str) -> Option<u64> {
    let mut next = None;
    for record in records {
        match record {
            Record::Session {
                device: d,
                conversation: c,
                cursor,
            } if d == device && c == conversation => next = Some(cursor + 1),
            Record::Received { device: d, entry }
                if d == device && entry.conversation == conversation =>
            {
                next = Some(entry.seq + 1);
            }
            _ => {}
        }
    }
    next
}

/// What is wrong with `device` receiving `entry` where `expected` was next, if anything.
fn out_of_order(device: &str, entry: &Entry, expected: u64) -> Option<String> {
    (entry.seq != expected).then(|| {
        let what = if entry.seq < expected {
            "duplicate or reordered"
        } else {
            "gap"
        };
        format!(
            "{device}: received seq {} of {} where {expected} was next ({what})",
            entry.seq, entry.conversation
        )
    })
}

/// Every device's stream goes cursor+1, cursor+2, ... per conversation.
fn stream_problems(records: &[Record], problems: &mut Vec<String>) {
    let mut next: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for record in records {
        match record {
            Record::Session {
                device,
                conversation,
                cursor,
            } => {
                next.insert((device, conversation), cursor + 1);
            }
            Record::Received { device, entry } => {
                let key = (device.as_str(), entry.conversation.as_str());
                match next.get(&key) {
                    None => problems.push(format!(
                        "{device}: received seq {} of {} before any session of it",
                        entry.seq, entry.conversation
                    )),
                    Some(&expected) => problems.extend(out_of_order(device, entry, expected)),
                }
                next.insert(key, entry.seq + 1);
            }
            _ => {}
        }
    }
}

/// One message per seq, one seq per message, over acks, streams and the log.
fn identity_problems(records: &[Record], problems: &mut Vec<String>) {
    let mut at_seq: BTreeMap<(&str, u64), BTreeSet<(&str, &str)>> = BTreeMap::new();
    let mut seqs_of: BTreeMap<(&str, &str, &str), BTreeSet<u64>> = BTreeMap::new();
    for record in records {
        let (conversation, seq, sender, client_msg_id) = match record {
            Record::Acked {
                sender,
                conversation,
                client_msg_id,
                seq,
            } => (
                conversation.as_str(),
                *seq,
                sender.as_str(),
                client_msg_id.as_str(),
            ),
            Record::Received { entry, .. } | Record::Stored { entry } => match &entry.sender {
                Some(sender) => (
                    entry.conversation.as_str(),
                    entry.seq,
                    sender.as_str(),
                    entry.client_msg_id.as_str(),
                ),
                None => continue,
            },
            Record::Session { .. } => continue,
        };
        at_seq
            .entry((conversation, seq))
            .or_default()
            .insert((sender, client_msg_id));
        seqs_of
            .entry((conversation, sender, client_msg_id))
            .or_default()
            .insert(seq);
    }
    for ((conversation, seq), messages) in at_seq {
        if messages.len() > 1 {
            problems.push(format!(
                "two messages at seq {seq} of {conversation}: {messages:?}"
            ));
        }
    }
    for ((conversation, sender, client_msg_id), seqs) in seqs_of {
        if seqs.len() > 1 {
            problems.push(format!(
                "one message at two seqs of {conversation}: {sender} {client_msg_id} at {seqs:?}"
            ));
        }
    }
}

/// Every acknowledged send is in the stored log (when the log of its conversation was read
/// back), and the log has no hole.
fn lost(records: &[Record], problems: &mut Vec<String>) {
    let mut stored: BTreeMap<&str, BTreeMap<u64, &Entry>> = BTreeMap::new();
    for record in records {
        if let Record::Stored { entry } = record {
            stored
                .entry(entry.conversation.as_str())
                .or_default()
                .insert(entry.seq, entry);
        }
    }
    for record in records {
        let Record::Acked {
            sender,
            conversation,
            client_msg_id,
            seq,
        } = record
        else {
            continue;
        };
        let Some(log) = stored.get(conversation.as_str()) else {
            continue;
        };
        match log.get(seq) {
            Some(entry)
                if entry.sender.as_deref() == Some(sender)
                    && &entry.client_msg_id == client_msg_id => {}
            Some(entry) => problems.push(format!(
                "lost: {sender} {client_msg_id} acknowledged at seq {seq} of {conversation}, \
                 the log holds {:?} there",
                entry.json()
            )),
            None => problems.push(format!(
                "lost: {sender} {client_msg_id} acknowledged at seq {seq} of {conversation}, \
                 missing from the log"
            )),
        }
    }
    for (conversation, log) in stored {
        let mut expected = 1;
        for &seq in log.keys() {
            if seq != expected {
                problems.push(format!(
                    "the log of {conversation} skips from {} to {seq}",
                    expected - 1
                ));
            }
            expected = seq + 1;
        }
    }
}
