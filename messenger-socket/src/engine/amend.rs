//! Replies, edits, deletes and reactions: the rules that decide what a message may become
//! (pure, over the target as read) and the reads they need.
//!
//! An edit, a delete or a reaction is a send like any other (a `send` frame, an idempotency
//! key, a seq, an ack): its entry ([`Body::Edit`], [`Body::Delete`], [`Body::React`]...) is
//! appended to the log, and the target's stored body is replaced in the same write
//! ([`messenger_core::store::AmendMessage`], from the send pipeline), so history read later
//! shows the latest version and a device that holds the target already learns of the change
//! in order. The store refuses the write when the target changed meanwhile, and the pipeline
//! decides again here on what it holds now.

use std::sync::Arc;

use messenger_core::protocol::{ErrorCode, Limits};
use messenger_core::store::ReadRange;
use messenger_core::{
    Body, ConversationId, ConversationKind, Error, Message, Reaction, Reply, Role, Seq, call,
};

use super::{Backends, Engine};

/// What the actor is in the conversation of an amendment: the rules depend on it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Standing {
    pub(crate) role: Role,
    pub(crate) kind: ConversationKind,
}

/// An edit or delete waiting to be stored: the target as read when it was checked.
#[derive(Debug)]
pub(crate) struct Amendment {
    pub(crate) expected: Arc<Message>,
    pub(crate) standing: Standing,
}

/// The target of `update` as it must be stored, if `actor` may change `target` this way at
/// `now` (the update's `sent_at`). Pure: the whole rule of replies' neighbours, edits and
/// deletes.
///
/// # Errors
/// `target_not_found` for a void, `target_deleted`, `not_editable` (an edit of anything but
/// text, a delete of anything but a text or media message), `forbidden` (another user's
/// message, unless an admin or owner deletes it in a group), `edit_window_closed`,
/// `too_many_edits`, `delete_window_closed`.
pub(crate) fn amended(
    update: &Message,
    target: &Message,
    standing: Standing,
    limits: &Limits,
) -> Result<Message, Error> {
    check_target(target)?;
    let own = target.sender == update.sender;
    let age = update
        .sent_at
        .as_millis()
        .saturating_sub(target.sent_at.as_millis());
    let body = match &update.body {
        Body::Edit { text: new, .. } => {
            let mut body = target.body.clone();
            let Body::Text {
                text,
                edited_at,
                edits,
                ..
            } = &mut body
            else {
                return Err(Error::refused(
                    ErrorCode::NotEditable,
                    format!("seq {} is not a text message", target.seq),
                ));
            };
            if !own {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    "only its sender edits a message",
                ));
            }
            if age > limits.edit_window_ms {
                return Err(Error::refused(
                    ErrorCode::EditWindowClosed,
                    format!(
                        "seq {} was sent {} s ago; messages may be edited for {} s",
                        target.seq,
                        age / 1000,
                        limits.edit_window_ms / 1000
                    ),
                ));
            }
            if *edits >= limits.max_edits {
                return Err(Error::refused(
                    ErrorCode::TooManyEdits,
                    format!(
                        "seq {} was edited {edits} times, the most allowed",
                        target.seq
                    ),
                ));
            }
            // Replies, reactions and mentions stay as they were.
            text.clone_from(new);
            *edited_at = Some(update.sent_at);
            *edits += 1;
            body
        }
        Body::React { emoji, .. } => {
            let mut body = target.body.clone();
            let reactions = reactions_of(&mut body, target.seq)?;
            let distinct = reactions.len();
            match reactions
                .iter_mut()
                .find(|reaction| reaction.emoji == *emoji)
            {
                Some(reaction) if reaction.users.contains(&update.sender) => {
                    return Err(Error::refused(
                        ErrorCode::InvalidRequest,
                        format!("already reacted {emoji} to seq {}", target.seq),
                    ));
                }
                Some(reaction) => reaction.users.push(update.sender.clone()),
                None if distinct >= limits.max_reactions_per_message => {
                    return Err(Error::refused(
                        ErrorCode::TooLarge,
                        format!(
                            "seq {} has {distinct} different reactions, the most allowed",
                            target.seq
                        ),
                    ));
                }
                None => reactions.push(Reaction {
                    emoji: emoji.clone(),
                    users: vec![update.sender.clone()],
                }),
            }
            body
        }
        Body::Unreact { emoji, .. } => {
            let mut body = target.body.clone();
            let reactions = reactions_of(&mut body, target.seq)?;
            let mine = reactions
                .iter()
                .position(|reaction| reaction.emoji == *emoji)
                .filter(|&index| reactions[index].users.contains(&update.sender));
            let Some(index) = mine else {
                return Err(Error::refused(
                    ErrorCode::InvalidRequest,
                    format!("no {emoji} reaction of yours on seq {}", target.seq),
                ));
            };
            reactions[index].users.retain(|user| *user != update.sender);
            if reactions[index].users.is_empty() {
                reactions.remove(index);
            }
            body
        }
        Body::Delete { .. } => {
            if !matches!(target.body, Body::Text { .. } | Body::Media(_)) {
                return Err(Error::refused(
                    ErrorCode::NotEditable,
                    format!("seq {} is not a text or media message", target.seq),
                ));
            }
            let moderator = standing.kind == ConversationKind::Group
                && matches!(standing.role, Role::Admin | Role::Owner);
            if !own && !moderator {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    "only its sender, or a group admin or owner, deletes a message",
                ));
            }
            if !moderator && age > limits.delete_window_ms {
                return Err(Error::refused(
                    ErrorCode::DeleteWindowClosed,
                    format!(
                        "seq {} was sent {} s ago; senders may delete for {} s",
                        target.seq,
                        age / 1000,
                        limits.delete_window_ms / 1000
                    ),
                ));
            }
            Body::Deleted {
                by: update.sender.clone(),
                at: update.sent_at,
            }
        }
        _ => {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "not an edit, a delete or a reaction",
            ));
        }
    };
    Ok(Message {
        body,
        ..target.clone()
    })
}

/// The reactions of a text or media message, to change.
fn reactions_of(body: &mut Body, seq: Seq) -> Result<&mut Vec<Reaction>, Error> {
    body.reactions_mut().ok_or_else(|| {
        Error::refused(
            ErrorCode::NotEditable,
            format!("seq {seq} is not a text or media message"),
        )
    })
}

/// The quote of `target` for a reply.
///
/// # Errors
/// `target_not_found` for a void, `target_deleted`, `not_editable` for an entry one does not
/// reply to (membership changes, status entries, edits and deletes).
pub(crate) fn quote(target: &Message) -> Result<Reply, Error> {
    check_target(target)?;
    Reply::quote(target).ok_or_else(|| {
        Error::refused(
            ErrorCode::NotEditable,
            format!("seq {} is not a text or media message", target.seq),
        )
    })
}

fn check_target(target: &Message) -> Result<(), Error> {
    match target.body {
        Body::Void => Err(Error::refused(
            ErrorCode::TargetNotFound,
            format!("seq {} holds no message", target.seq),
        )),
        Body::Deleted { .. } => Err(Error::refused(
            ErrorCode::TargetDeleted,
            format!("seq {} was deleted", target.seq),
        )),
        _ => Ok(()),
    }
}

impl<B: Backends> Engine<B> {
    /// The entry at `seq`, which a reply, edit or delete names.
    ///
    /// # Errors
    /// `target_not_found` when the seq holds nothing (yet) or is past the head.
    pub(crate) async fn target_entry(
        &self,
        conversation: &ConversationId,
        seq: Seq,
    ) -> Result<Arc<Message>, Error> {
        let missing = || {
            Error::refused(
                ErrorCode::TargetNotFound,
                format!("seq {seq} holds no message"),
            )
        };
        if seq == Seq::ZERO {
            return Err(missing());
        }
        let page = call(
            self.services().store(),
            ReadRange {
                conversation: conversation.clone(),
                after: Seq(seq.get() - 1),
                until: Some(seq),
                limit: 1,
            },
        )
        .await?;
        page.messages
            .into_iter()
            .find(|message| message.seq == seq)
            .ok_or_else(missing)
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::{ClientMsgId, DeviceId, Timestamp, UserId};

    use super::*;

    const HOUR: u64 = 60 * 60 * 1000;

    fn user(name: &str) -> UserId {
        UserId::new(name).expect("id")
    }

    fn entry(seq: u64, sender: &str, at: u64, body: Body) -> Message {
        Message {
            conversation: ConversationId::new("g:rules").expect("id"),
            seq: Seq(seq),
            sender: user(sender),
            sender_device: DeviceId::new("phone").expect("id"),
            client_msg_id: ClientMsgId::new(format!("k{seq}")).expect("id"),
            sent_at: Timestamp(at),
            body,
        }
    }

    fn edit(sender: &str, at: u64) -> Message {
        let body = Body::Edit {
            target: Seq(1),
            text: "new".into(),
        };
        entry(9, sender, at, body)
    }

    fn delete(sender: &str, at: u64) -> Message {
        entry(9, sender, at, Body::Delete { target: Seq(1) })
    }

    fn member() -> Standing {
        Standing {
            role: Role::Member,
            kind: ConversationKind::Group,
        }
    }

    fn code(result: Result<Message, Error>) -> Option<ErrorCode> {
        result.err().and_then(|err| err.refusal_code())
    }

    #[test]
    fn an_edit_replaces_the_text_and_counts() {
        let limits = Limits::default();
        let target = entry(1, "alice", 0, Body::text("old"));
        let now = amended(&edit("alice", HOUR), &target, member(), &limits).expect("edit");
        assert_eq!(
            now.body,
            Body::Text {
                text: "new".into(),
                reply_to: None,
                edited_at: Some(Timestamp(HOUR)),
                edits: 1,
                reactions: Vec::new(),
                mention_all: false,
                mentions: Vec::new(),
            }
        );
        assert_eq!((now.seq, now.sent_at), (target.seq, target.sent_at));
    }

    #[test]
    fn each_edit_refusal_has_its_code() {
        let limits = Limits::default();
        let text = entry(1, "alice", 0, Body::text("old"));
        let owner = Standing {
            role: Role::Owner,
            kind: ConversationKind::Group,
        };
        assert_eq!(
            code(amended(&edit("bob", 1), &text, owner, &limits)),
            Some(ErrorCode::Forbidden),
            "not even the owner edits another's message"
        );
        let late = limits.edit_window_ms + 1;
        assert_eq!(
            code(amended(&edit("alice", late), &text, member(), &limits)),
            Some(ErrorCode::EditWindowClosed)
        );
        let worn = entry(
            1,
            "alice",
            0,
            Body::Text {
                text: "old".into(),
                reply_to: None,
                edited_at: Some(Timestamp(5)),
                edits: limits.max_edits,
                reactions: Vec::new(),
                mention_all: false,
                mentions: Vec::new(),
            },
        );
        assert_eq!(
            code(amended(&edit("alice", 10), &worn, member(), &limits)),
            Some(ErrorCode::TooManyEdits)
        );
        let left = entry(1, "alice", 0, Body::MemberLeft);
        assert_eq!(
            code(amended(&edit("alice", 1), &left, member(), &limits)),
            Some(ErrorCode::NotEditable)
        );
        let void = Message::void(text.conversation.clone(), Seq(1), Timestamp(0));
        assert_eq!(
            code(amended(&edit("alice", 1), &void, member(), &limits)),
            Some(ErrorCode::TargetNotFound)
        );
        let gone = entry(
            1,
            "alice",
            0,
            Body::Deleted {
                by: user("alice"),
                at: Timestamp(1),
            },
        );
        assert_eq!(
            code(amended(&edit("alice", 2), &gone, member(), &limits)),
            Some(ErrorCode::TargetDeleted)
        );
    }

    #[test]
    fn senders_delete_within_the_window_moderators_at_any_time() {
        let limits = Limits::default();
        let text = entry(1, "alice", 0, Body::text("old"));
        let late = limits.delete_window_ms + 1;
        let gone = amended(&delete("alice", 5), &text, member(), &limits).expect("own");
        assert_eq!(
            gone.body,
            Body::Deleted {
                by: user("alice"),
                at: Timestamp(5)
            }
        );
        assert_eq!(
            code(amended(&delete("alice", late), &text, member(), &limits)),
            Some(ErrorCode::DeleteWindowClosed)
        );
        assert_eq!(
            code(amended(&delete("bob", 5), &text, member(), &limits)),
            Some(ErrorCode::Forbidden)
        );
        let admin = Standing {
            role: Role::Admin,
            kind: ConversationKind::Group,
        };
        let moderated = amended(&delete("bob", late), &text, admin, &limits).expect("admin");
        assert!(matches!(moderated.body, Body::Deleted { ref by, .. } if by.as_str() == "bob"));
        let direct = Standing {
            role: Role::Member,
            kind: ConversationKind::Direct,
        };
        assert_eq!(
            code(amended(&delete("bob", 5), &text, direct, &limits)),
            Some(ErrorCode::Forbidden),
            "nobody moderates a direct conversation"
        );
    }

    fn react(sender: &str, emoji: &str, on: bool) -> Message {
        let (target, emoji) = (Seq(1), emoji.to_owned());
        let body = if on {
            Body::React { target, emoji }
        } else {
            Body::Unreact { target, emoji }
        };
        entry(9, sender, 1, body)
    }

    fn summary(message: &Message) -> Vec<(String, Vec<String>)> {
        message
            .body
            .reactions()
            .unwrap_or_default()
            .iter()
            .map(|reaction| {
                let users = reaction.users.iter().map(ToString::to_string).collect();
                (reaction.emoji.clone(), users)
            })
            .collect()
    }

    #[test]
    fn reactions_are_one_per_user_and_emoji_and_bounded() {
        let limits = Limits {
            max_reactions_per_message: 2,
            ..Limits::default()
        };
        let mut target = entry(1, "alice", 0, Body::text("lunch?"));
        for (who, emoji) in [("bob", "👍"), ("carol", "👍"), ("bob", "🎉")] {
            target = amended(&react(who, emoji, true), &target, member(), &limits).expect("react");
        }
        let expected = |pairs: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
            pairs
                .iter()
                .map(|(emoji, users)| {
                    let users = users.iter().map(|user| (*user).to_owned()).collect();
                    ((*emoji).to_owned(), users)
                })
                .collect()
        };
        assert_eq!(
            summary(&target),
            expected(&[("👍", &["bob", "carol"]), ("🎉", &["bob"])])
        );
        assert_eq!(
            code(amended(
                &react("bob", "👍", true),
                &target,
                member(),
                &limits
            )),
            Some(ErrorCode::InvalidRequest),
            "once per user and emoji"
        );
        assert_eq!(
            code(amended(
                &react("dave", "❤️", true),
                &target,
                member(),
                &limits
            )),
            Some(ErrorCode::TooLarge),
            "at most max_reactions_per_message emojis"
        );
        assert_eq!(
            code(amended(
                &react("dave", "👍", false),
                &target,
                member(),
                &limits
            )),
            Some(ErrorCode::InvalidRequest),
            "only one's own reaction is taken back"
        );
        let target = amended(&react("bob", "🎉", false), &target, member(), &limits).expect("off");
        assert_eq!(summary(&target), expected(&[("👍", &["bob", "carol"])]));
        let edited = amended(&edit("alice", 2), &target, member(), &limits).expect("edit");
        assert_eq!(
            summary(&edited),
            summary(&target),
            "an edit keeps reactions"
        );
        let left = entry(1, "alice", 0, Body::MemberLeft);
        assert_eq!(
            code(amended(&react("bob", "👍", true), &left, member(), &limits)),
            Some(ErrorCode::NotEditable)
        );
    }

    #[test]
    fn replies_quote_messages_only() {
        let text = entry(1, "alice", 0, Body::text("é".repeat(200)));
        let reply = quote(&text).expect("a text is quoted");
        assert_eq!(
            reply.excerpt.chars().count(),
            messenger_core::MAX_EXCERPT_CHARS
        );
        let changed = entry(1, "alice", 0, Body::MemberLeft);
        assert_eq!(
            quote(&changed).err().and_then(|err| err.refusal_code()),
            Some(ErrorCode::NotEditable)
        );
    }
}
