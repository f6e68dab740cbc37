//! The embedded store's row decoding (`messenger-store/src/embedded/codec.rs`), fed with
//! arbitrary column values through SQLite itself (`SELECT ?1, ...`), as a corrupt or foreign
//! database file would hold them: never panics, and a row that decodes re-encodes (as the
//! store writes it) to one that decodes to the same value.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use messenger_core::{Conversation, Message, Role};
use messenger_store::embedded::fuzzing::{
    Column, decode_conversation, decode_message, from_sql, parse_ids, parse_role, to_sql,
};

/// A column value, biased towards what a row holds.
#[derive(Arbitrary, Debug)]
enum Value<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
    /// A small non-negative integer (a seq, a time).
    Small(u16),
    /// An id-shaped text.
    Id(u8),
    /// A message body.
    Body(u8, &'a str),
}

const IDS: [&str; 6] = ["alice", "dm:alice:bob", "g:team", "phone", "m-1", ""];

impl Value<'_> {
    fn column(&self) -> Column {
        match self {
            Value::Null => Column::Null,
            Value::Integer(value) => Column::Integer(*value),
            Value::Real(value) => Column::Real(*value),
            Value::Text(value) => Column::Text((*value).to_owned()),
            Value::Blob(value) => Column::Blob(value.to_vec()),
            Value::Small(value) => Column::Integer(i64::from(*value)),
            Value::Id(which) => Column::Text(IDS[usize::from(*which) % IDS.len()].to_owned()),
            Value::Body(which, text) => Column::Text(match which % 6 {
                0 => serde_json::json!({"kind": "text", "text": text}).to_string(),
                1 => r#"{"kind":"void"}"#.to_owned(),
                2 => r#"{"kind":"member_left"}"#.to_owned(),
                3 => {
                    serde_json::json!({"kind": "members_added", "users": [text], "role": "member"})
                        .to_string()
                }
                4 => serde_json::json!({"kind": "media", "name": text, "mime": "image/png",
                    "size": 1, "status": "pending"})
                .to_string(),
                _ => (*text).to_owned(),
            }),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    message: [Value<'a>; 7],
    conversation: [Value<'a>; 5],
    text: &'a str,
    integer: i64,
    number: u64,
}

fn message_columns(message: &Message) -> [Column; 7] {
    [
        Column::Text(message.conversation.as_str().to_owned()),
        Column::Integer(to_sql(message.seq.get()).expect("a decoded seq is in range")),
        Column::Text(message.sender.as_str().to_owned()),
        Column::Text(message.sender_device.as_str().to_owned()),
        Column::Text(message.client_msg_id.as_str().to_owned()),
        Column::Integer(to_sql(message.sent_at.as_millis()).expect("a decoded time is in range")),
        Column::Text(serde_json::to_string(&message.body).expect("bodies encode")),
    ]
}

fn conversation_columns(conversation: &Conversation) -> [Column; 5] {
    [
        Column::Text(conversation.id.as_str().to_owned()),
        Column::Text(conversation.kind.as_str().to_owned()),
        conversation
            .title
            .clone()
            .map_or(Column::Null, Column::Text),
        Column::Text(conversation.created_by.as_str().to_owned()),
        Column::Integer(
            to_sql(conversation.created_at.as_millis()).expect("a decoded time is in range"),
        ),
    ]
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    if let Ok(message) = decode_message(input.message.each_ref().map(Value::column)) {
        let again = decode_message(message_columns(&message))
            .unwrap_or_else(|err| panic!("{message:?} re-encoded does not decode: {err}"));
        assert_eq!(again, message);
    }
    if let Ok(conversation) = decode_conversation(input.conversation.each_ref().map(Value::column))
    {
        let again = decode_conversation(conversation_columns(&conversation))
            .unwrap_or_else(|err| panic!("{conversation:?} re-encoded does not decode: {err}"));
        assert_eq!(again, conversation);
    }
    let (user, conversation, key) = parse_ids(input.text);
    for id in [
        user.as_ref().map(|id| id.as_str()),
        conversation.as_ref().map(|id| id.as_str()),
        key.as_ref().map(|id| id.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        assert_eq!(id, input.text);
    }
    if let Some(role) = parse_role(input.text) {
        assert_eq!(role.as_str(), input.text);
        assert!(matches!(role, Role::Member | Role::Admin | Role::Owner));
    }
    let (number, seq) = from_sql(input.integer);
    assert_eq!(number, u64::try_from(input.integer).ok());
    assert_eq!(seq.map(|seq| seq.get()), number);
    if let Some(stored) = to_sql(input.number) {
        assert_eq!(from_sql(stored).0, Some(input.number));
    }
});
