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

/// The unread count of one member as a correlated subquery, for SQL where the member's
/// conversation, user, read watermark and head are the given expressions.
pub(crate) fn unread_subquery(conversation: &str, user: &str, read: &str, head: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM messages x \
          WHERE x.conversation = {conversation} AND x.seq > {read} \
            AND x.seq + {MAX_UNREAD_SPAN} > {head} AND x.sender <> {user} \
            AND {DISPLAYED_MESSAGE_SQL})"
    )
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
