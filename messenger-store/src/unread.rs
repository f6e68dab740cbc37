//! The rule of `unread` in SQL: which stored bodies are messages a client shows
//! ([`messenger_core::Body::is_displayed_message`]), decided on the stored JSON.
//!
//! Bodies are stored as serde's JSON of [`messenger_core::Body`], an internally tagged enum:
//! the tag is always the first member (`{"kind":"text",...}`), and a media body's status is
//! the only place the unescaped characters `"status":"failed"` can appear (inside strings,
//! quotes are escaped). The tests below hold the SQL to the Rust rule on every kind.

use messenger_core::MAX_UNREAD_SPAN;

/// A condition on the `body` of a `messages` row aliased `x`: a text message, or a media
/// message that is not failed.
pub(crate) const DISPLAYED_MESSAGE_SQL: &str = "(x.body LIKE '{\"kind\":\"text\"%' \
     OR (x.body LIKE '{\"kind\":\"media\"%' AND x.body NOT LIKE '%\"status\":\"failed\"%'))";

/// One member's entries the counts look at: after the read watermark, among the latest
/// [`MAX_UNREAD_SPAN`], sent by someone else.
pub(crate) struct Member<'a> {
    /// The member's conversation, as an SQL expression.
    pub(crate) conversation: &'a str,
    /// The member's user id.
    pub(crate) user: &'a str,
    /// The user id in double quotes, as it appears in the stored JSON (`'"' || m.user || '"'`).
    pub(crate) quoted_user: &'a str,
    /// The read watermark.
    pub(crate) read: &'a str,
    /// The conversation's head.
    pub(crate) head: &'a str,
}

impl Member<'_> {
    fn counted(&self, condition: &str) -> String {
        format!(
            "(SELECT COUNT(*) FROM messages x \
              WHERE x.conversation = {} AND x.seq > {} \
                AND x.seq + {MAX_UNREAD_SPAN} > {} AND x.sender <> {} AND {condition})",
            self.conversation, self.read, self.head, self.user
        )
    }

    /// The unread count as a correlated subquery.
    pub(crate) fn unread(&self) -> String {
        self.counted(DISPLAYED_MESSAGE_SQL)
    }

    /// The mention count as a correlated subquery: text messages with `"mention_all":true`,
    /// or with the quoted user id after `"mentions":[` (the last member of a text body, where
    /// nothing but mentioned ids follows; `INSTR` and `SUBSTR` mean the same in SQLite,
    /// MySQL and MariaDB, and match no wildcards).
    pub(crate) fn mentions(&self) -> String {
        let condition = format!(
            "x.body LIKE '{{\"kind\":\"text\"%' \
             AND (INSTR(x.body, '\"mention_all\":true') > 0 \
                  OR (INSTR(x.body, '\"mentions\":[') > 0 \
                      AND INSTR(SUBSTR(x.body, INSTR(x.body, '\"mentions\":[')), {}) > 0))",
            self.quoted_user
        );
        self.counted(&condition)
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::{
        Body, MediaBody, MediaStatus, MediaUpdate, Member, Role, Seq, Timestamp, UserId,
    };

    /// `DISPLAYED_MESSAGE_SQL` evaluated by hand: SQL's LIKE with `%` only at the ends.
    fn displayed_in_sql(json: &str) -> bool {
        json.starts_with(r#"{"kind":"text""#)
            || (json.starts_with(r#"{"kind":"media""#) && !json.contains(r#""status":"failed""#))
    }

    fn media(status: MediaStatus, name: &str) -> Body {
        Body::Media(Box::new(MediaBody {
            name: name.into(),
            mime: "image/png".into(),
            size: 1,
            sha256: None,
            width: None,
            height: None,
            duration_ms: None,
            status,
            url: None,
            reason: (status == MediaStatus::Failed).then(|| "upload expired".into()),
            reply_to: None,
            reactions: Vec::new(),
        }))
    }

    /// The mention condition of [`super::Member::mentions`] evaluated by hand (`INSTR`,
    /// `SUBSTR`: plain substring search).
    fn mentions_in_sql(json: &str, user: &str) -> bool {
        let quoted = format!("\"{user}\"");
        json.starts_with(r#"{"kind":"text""#)
            && (json.contains(r#""mention_all":true"#)
                || json
                    .find(r#""mentions":["#)
                    .is_some_and(|at| json[at..].contains(&quoted)))
    }

    #[test]
    fn the_mention_condition_agrees_with_the_rule() {
        use messenger_core::{ClientMsgId, ConversationId, DeviceId, Message, Reaction, Reply};
        let bob = UserId::new("bob").expect("id");
        let carol = UserId::new("carol").expect("id");
        let text = |text: &str, mentions: &[&UserId], all: bool| Body::Text {
            text: text.into(),
            // Another "bob" before the mentions must not count.
            reply_to: Some(Box::new(Reply {
                seq: Seq(1),
                sender: bob.clone(),
                kind: messenger_core::ReplyKind::Text,
                excerpt: "bob".into(),
            })),
            edited_at: None,
            edits: 0,
            reactions: vec![Reaction {
                emoji: "👍".into(),
                users: vec![bob.clone()],
            }],
            mention_all: all,
            mentions: mentions.iter().map(|user| (*user).clone()).collect(),
        };
        let bodies = [
            text("hi", &[], false),
            text(r#"say "bob" and "mentions":["bob"]"#, &[&carol], false),
            text("hi @bob", &[&bob], false),
            text("hi @carol @bob", &[&carol, &bob], false),
            text("@all", &[], true),
            Body::text("bob"),
            Body::Deleted {
                by: bob.clone(),
                at: Timestamp(1),
            },
        ];
        for body in bodies {
            let message = Message {
                conversation: ConversationId::new("g:m").expect("id"),
                seq: Seq(2),
                sender: carol.clone(),
                sender_device: DeviceId::new("d").expect("id"),
                client_msg_id: ClientMsgId::new("k").expect("id"),
                sent_at: Timestamp(2),
                body,
            };
            let json = serde_json::to_string(&message.body).expect("json");
            assert_eq!(
                mentions_in_sql(&json, "bob"),
                message.mentions(&bob),
                "{json}"
            );
        }
    }

    #[test]
    fn the_sql_condition_agrees_with_the_rule_on_every_kind() {
        let alice = UserId::new("alice").expect("id");
        let bodies = [
            Body::text("hello"),
            Body::text(r#"a text that says "status":"failed""#),
            media(MediaStatus::Pending, "cat.png"),
            media(MediaStatus::Ready, r#""status":"failed".png"#),
            media(MediaStatus::Failed, "cat.png"),
            Body::GroupCreated {
                title: "t".into(),
                members: vec![Member {
                    user: alice.clone(),
                    role: Role::Owner,
                }],
            },
            Body::MembersAdded {
                users: vec![alice.clone()],
                role: Role::Member,
            },
            Body::MemberRemoved {
                user: alice.clone(),
            },
            Body::MemberLeft,
            Body::RoleChanged {
                user: alice.clone(),
                role: Role::Admin,
            },
            Body::Void,
            Body::MediaStatus(Box::new(MediaUpdate {
                media_seq: Seq(1),
                status: MediaStatus::Ready,
                url: None,
                reason: None,
            })),
            Body::Edit {
                target: Seq(1),
                text: "x".into(),
            },
            Body::Delete { target: Seq(1) },
            Body::React {
                target: Seq(1),
                emoji: "👍".into(),
            },
            Body::Unreact {
                target: Seq(1),
                emoji: "👍".into(),
            },
            Body::Deleted {
                by: alice,
                at: Timestamp(1),
            },
        ];
        for body in bodies {
            let json = serde_json::to_string(&body).expect("json");
            assert_eq!(
                displayed_in_sql(&json),
                body.is_displayed_message(),
                "{json}"
            );
        }
    }
}
