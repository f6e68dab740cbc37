//! The one send pipeline: validate → member check → seq → conditional append (fence, retry,
//! void) → ack → fanout. Messages, membership changes and media status changes all go through
//! [`Engine::append_sequenced`]; media is one hook in it (a pending entry's journal record and
//! its upload ticket), not a special case at every step.

use std::future::Future;
use std::sync::Arc;

use messenger_core::auth::Identity;
use messenger_core::fanout::Deliver;
use messenger_core::protocol::{ErrorCode, NewBody};
use messenger_core::sequencer::{FenceSeq, NextSeq};
use messenger_core::store::{AmendMessage, Amended, AppendMessage, FindMessage, VoidSeq};
use messenger_core::{
    Body, ClientMsgId, ConversationId, ConversationKind, DomainEvent, Error, ErrorKind, Event,
    MAX_EMOJI_BYTES, MAX_MENTIONS, Message, Role, Seq, Timestamp, UserId, call,
};

use super::amend::{self, Amendment, Standing};
use super::{Backends, Engine, MessageSent, SendMessage};

/// Conflicts (a seq found taken) tolerated before an append gives up.
const MAX_ATTEMPTS: u32 = 4;

/// Decisions on a changed target before an edit, delete or reaction gives up
/// (`unavailable`): each round means someone else changed the same message in between.
const MAX_AMEND_ROUNDS: u32 = 4;

/// A send's body checked against the limits, before its conversation is looked at.
#[derive(Debug)]
pub(crate) struct Draft {
    pub(crate) body: Body,
    /// The seq it replies to: [`Engine::prepare_send`] quotes it into the body.
    pub(crate) reply_to: Option<Seq>,
    /// The device says it may have sent this before: look its key up before spending a seq.
    pub(crate) resend: bool,
}

impl From<Body> for Draft {
    fn from(body: Body) -> Self {
        Draft {
            body,
            reply_to: None,
            resend: false,
        }
    }
}

/// An entry that has its seq and waits to be stored.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) message: Arc<Message>,
    pub(crate) recipients: Arc<[UserId]>,
    /// For an edit, a delete or a reaction: its target as checked.
    pub(crate) amendment: Option<Amendment>,
}

/// What checking and sequencing a send produced.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// A new entry, sequenced, to store with [`Engine::commit_send`].
    Pending(Pending),
    /// A retried media send whose original is stored already (answered as a duplicate).
    Duplicate(Stored),
}

/// A stored entry: the one just appended, or the original of a retried send.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) message: Arc<Message>,
    pub(crate) duplicate: bool,
    /// The entry still to fan out, and to whom ([`Engine::deliver_stored`]): the sender is
    /// acked first, so a slow fanout (a broker round trip) never delays the ack.
    fanout: Option<(Arc<[UserId]>, Arc<Message>)>,
}

impl Stored {
    /// An entry just appended, to fan out to `recipients`.
    pub(crate) fn fresh(message: Arc<Message>, recipients: Arc<[UserId]>) -> Self {
        Stored {
            fanout: Some((recipients, Arc::clone(&message))),
            message,
            duplicate: false,
        }
    }

    /// The original of a retried send; the void the store wrote at the retry's seq is what
    /// `recipients` are told.
    pub(crate) fn duplicate(
        original: Arc<Message>,
        recipients: Arc<[UserId]>,
        void: Arc<Message>,
    ) -> Self {
        Stored {
            message: original,
            duplicate: true,
            fanout: Some((recipients, void)),
        }
    }
}

/// A reaction within the limits: 1 to [`MAX_EMOJI_BYTES`] bytes, no whitespace or control
/// characters.
fn checked_emoji(emoji: String) -> Result<String, Error> {
    if emoji.is_empty() || emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(Error::refused(
            ErrorCode::InvalidRequest,
            "a reaction is a non-empty emoji or word without spaces",
        ))
    } else if emoji.len() > MAX_EMOJI_BYTES {
        Err(Error::refused(
            ErrorCode::TooLarge,
            format!(
                "the reaction is {} bytes; the limit is {MAX_EMOJI_BYTES}",
                emoji.len()
            ),
        ))
    } else {
        Ok(emoji)
    }
}

impl<B: Backends> Engine<B> {
    /// The whole pipeline for one send, as [`SendMessage`] answers it: returns once the entry
    /// is durable and handed to the fanout.
    pub(crate) async fn send(&self, request: SendMessage) -> Result<MessageSent, Error> {
        let SendMessage {
            actor,
            conversation,
            client_msg_id,
            body,
            resend,
        } = request;
        let draft = Draft {
            resend,
            ..self.validate_body(body)?
        };
        let mut stored = match self
            .prepare_send(&actor, conversation, client_msg_id, draft)
            .await?
        {
            Prepared::Pending(pending) => self.commit_send(pending).await?,
            Prepared::Duplicate(stored) => stored,
        };
        let upload = self.upload_ticket(&stored.message).await;
        self.deliver_stored(&mut stored).await;
        Ok(MessageSent {
            message: stored.message,
            duplicate: stored.duplicate,
            upload,
        })
    }

    /// Checks a body a device sent against the limits and turns it into a stored body (a
    /// reply's quote is added by [`Engine::prepare_send`]).
    pub(crate) fn validate_body(&self, body: NewBody) -> Result<Draft, Error> {
        match body {
            NewBody::Text {
                text,
                reply_to,
                mut mentions,
                mention_all,
            } => {
                mentions.sort();
                mentions.dedup();
                if mentions.len() > MAX_MENTIONS {
                    return Err(Error::refused(
                        ErrorCode::TooLarge,
                        format!(
                            "{} users mentioned; the limit is {MAX_MENTIONS}",
                            mentions.len()
                        ),
                    ));
                }
                let mut body = Body::text(self.checked_text(text)?);
                if let Body::Text {
                    mentions: to,
                    mention_all: all,
                    ..
                } = &mut body
                {
                    *to = mentions;
                    *all = mention_all;
                }
                Ok(Draft {
                    reply_to,
                    ..Draft::from(body)
                })
            }
            NewBody::Media(media) => {
                let reply_to = media.reply_to;
                Ok(Draft {
                    reply_to,
                    ..Draft::from(self.accept_media(media)?)
                })
            }
            NewBody::Edit { target, text } => Ok(Draft::from(Body::Edit {
                target,
                text: self.checked_text(text)?,
            })),
            NewBody::Delete { target } => Ok(Draft::from(Body::Delete { target })),
            NewBody::React { target, emoji } => Ok(Draft::from(Body::React {
                target,
                emoji: checked_emoji(emoji)?,
            })),
            NewBody::Unreact { target, emoji } => Ok(Draft::from(Body::Unreact {
                target,
                emoji: checked_emoji(emoji)?,
            })),
            _ => Err(Error::refused(
                ErrorCode::InvalidRequest,
                "unsupported body",
            )),
        }
    }

    /// A message's text within the limits: not over `max_text_bytes`, not blank.
    fn checked_text(&self, text: String) -> Result<String, Error> {
        let limits = &self.config().limits;
        if text.len() > limits.max_text_bytes {
            Err(Error::refused(
                ErrorCode::TooLarge,
                format!(
                    "text is {} bytes; the limit is {}",
                    text.len(),
                    limits.max_text_bytes
                ),
            ))
        } else if text.trim().is_empty() {
            Err(Error::refused(
                ErrorCode::InvalidRequest,
                "text must not be empty",
            ))
        } else {
            Ok(text)
        }
    }

    /// Checks membership and allocates the send's seq. Called in the order the device sent,
    /// so a device's messages get increasing seqs.
    pub(crate) async fn prepare_send(
        &self,
        actor: &Identity,
        conversation: ConversationId,
        client_msg_id: ClientMsgId,
        draft: Draft,
    ) -> Result<Prepared, Error> {
        let (info, role) = self.membership(&conversation, &actor.user).await?;
        let Draft {
            mut body,
            reply_to,
            resend,
        } = draft;
        if let Body::Text {
            mentions,
            mention_all,
            ..
        } = &body
        {
            let moderator = info.conversation.kind == ConversationKind::Group
                && matches!(role, Role::Admin | Role::Owner);
            if *mention_all && !moderator {
                return Err(Error::refused(
                    ErrorCode::Forbidden,
                    "only group admins and the owner mention everyone",
                ));
            }
            if let Some(stranger) = mentions.iter().find(|user| info.role_of(user).is_none()) {
                return Err(Error::refused(
                    ErrorCode::InvalidRequest,
                    format!("{stranger} is not a member of {conversation}"),
                ));
            }
        }
        if let Some(seq) = reply_to {
            let quote = amend::quote(&*self.target_entry(&conversation, seq).await?)?;
            match &mut body {
                Body::Text { reply_to, .. } => *reply_to = Some(Box::new(quote)),
                Body::Media(media) => media.reply_to = Some(quote),
                _ => {}
            }
        }
        // Idempotency is the append's: it finds an earlier entry with this key atomically and
        // answers it (voiding the new seq). Looking first costs a store read per send and only
        // spares that void on a retry, so only sends the device marks as resent look first,
        // and media sends: their pending upload must not be recorded for a seq that ends up
        // void.
        if resend || matches!(body, Body::Media(_)) {
            let earlier = call(
                self.services().store(),
                FindMessage {
                    conversation: conversation.clone(),
                    sender: actor.user.clone(),
                    client_msg_id: client_msg_id.clone(),
                },
            )
            .await?;
            if let Some(message) = earlier {
                return Ok(Prepared::Duplicate(Stored {
                    message,
                    duplicate: true,
                    fanout: None,
                }));
            }
        }
        let mut message = Message {
            conversation,
            seq: Seq::ZERO,
            sender: actor.user.clone(),
            sender_device: actor.device.clone(),
            client_msg_id,
            sent_at: Timestamp::now(),
            body,
        };
        let amendment = match message.body.amends() {
            Some(target) => {
                // Checked before a seq is spent on it; checked again on what the target holds
                // when it is written.
                let expected = self.target_entry(&message.conversation, target).await?;
                let standing = Standing {
                    role,
                    kind: info.conversation.kind,
                };
                amend::amended(&message, &expected, standing, &self.config().limits)?;
                Some(Amendment { expected, standing })
            }
            None => None,
        };
        message.seq = self.next_seq(&message.conversation).await?;
        // Just after the allocation: readers judge the holes below an entry by its `sent_at`.
        message.sent_at = Timestamp::now();
        let recipients: Arc<[UserId]> = info.members.iter().map(|m| m.user.clone()).collect();
        Ok(Prepared::Pending(Pending {
            message: Arc::new(message),
            recipients,
            amendment,
        }))
    }

    /// Stores a prepared entry (the media hook first records a pending upload's deadline).
    /// The caller acks, then fans the entry out with [`Engine::deliver_stored`].
    pub(crate) async fn commit_send(&self, mut pending: Pending) -> Result<Stored, Error> {
        if let Some(amendment) = pending.amendment.take() {
            return self
                .store_amendment(pending.message, pending.recipients, amendment)
                .await;
        }
        self.record_pending_media(&pending.message).await;
        self.store_pending(pending).await
    }

    /// Appends a prepared entry with [`AppendMessage`], through [`Engine::append_sequenced`].
    pub(crate) async fn store_pending(&self, pending: Pending) -> Result<Stored, Error> {
        let Pending {
            message,
            recipients,
            ..
        } = pending;
        let store = self.services().store().clone();
        let (attempted, appended) = self
            .append_sequenced(message, &recipients, |message| {
                let store = store.clone();
                async move { call(&store, AppendMessage { message }).await }
            })
            .await?;
        if appended.duplicate {
            // The store voided our seq in the same write: tell the readers.
            let void = Message::void(
                attempted.conversation.clone(),
                attempted.seq,
                attempted.sent_at,
            );
            return Ok(Stored::duplicate(
                appended.message,
                recipients,
                Arc::new(void),
            ));
        }
        if appended.message.body.is_membership_change() {
            self.invalidate(&appended.message.conversation);
        }
        self.publish(DomainEvent::MessageStored {
            message: Arc::clone(&appended.message),
        });
        Ok(Stored::fresh(appended.message, recipients))
    }

    /// Stores an edit or delete through the send pipeline's conditional append, deciding
    /// again when the target changed since it was checked. A refusal decided here (the
    /// target was deleted meanwhile...) voids the entry's seq.
    pub(crate) async fn store_amendment(
        &self,
        message: Arc<Message>,
        recipients: Arc<[UserId]>,
        amendment: Amendment,
    ) -> Result<Stored, Error> {
        let Amendment {
            mut expected,
            standing,
        } = amendment;
        let limits = self.config().limits.clone();
        let store = self.services().store().clone();
        let mut message = message;
        for _ in 0..MAX_AMEND_ROUNDS {
            let target = Arc::clone(&expected);
            let write = |update: Arc<Message>| {
                let store = store.clone();
                let expected = Arc::clone(&target);
                let decided = amend::amended(&update, &expected, standing, &limits);
                async move {
                    let amended = Arc::new(decided?);
                    call(
                        &store,
                        AmendMessage {
                            update,
                            expected,
                            amended,
                        },
                    )
                    .await
                }
            };
            let (attempted, outcome) = self.append_sequenced(message, &recipients, write).await?;
            match outcome {
                Amended::Applied { update, target } => {
                    if let Body::Media(_) = expected.body {
                        if matches!(target.body, Body::Deleted { .. }) {
                            self.forget_media(&target).await;
                        }
                    }
                    self.publish(messenger_core::DomainEvent::MessageStored {
                        message: Arc::clone(&update),
                    });
                    return Ok(Stored::fresh(update, recipients));
                }
                Amended::Duplicate { original } => {
                    let void = Arc::new(Message::void(
                        attempted.conversation.clone(),
                        attempted.seq,
                        attempted.sent_at,
                    ));
                    return Ok(Stored::duplicate(original, recipients, void));
                }
                Amended::Changed { current } => {
                    // Our seq is still unwritten: decide again on what the target holds now.
                    let Some(current) = current else {
                        self.void_unused(&attempted.conversation, attempted.seq, &recipients)
                            .await;
                        return Err(Error::refused(
                            ErrorCode::TargetNotFound,
                            "the message is gone",
                        ));
                    };
                    expected = current;
                    message = attempted;
                }
            }
        }
        self.void_unused(&message.conversation, message.seq, &recipients)
            .await;
        Err(Error::refused(
            ErrorCode::Unavailable,
            "the message kept changing; try again",
        ))
    }

    /// The conditional append every log entry goes through: `write` stores `message` at its
    /// seq; when the seq is taken (`Conflict`: a reader voided it, or the sequencer lost its
    /// state) the sequencer is fenced past it and the entry tried again with a fresh seq; when
    /// the write fails otherwise, the seq is stored as void (and the void fanned out to
    /// `recipients`) so nobody waits on the hole. Answers the entry as last attempted (its
    /// final seq) and what `write` answered.
    pub(crate) async fn append_sequenced<T, W, F>(
        &self,
        mut message: Arc<Message>,
        recipients: &Arc<[UserId]>,
        write: W,
    ) -> Result<(Arc<Message>, T), Error>
    where
        W: Fn(Arc<Message>) -> F,
        F: Future<Output = Result<T, Error>>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match write(Arc::clone(&message)).await {
                Ok(written) => return Ok((message, written)),
                Err(err) if err.kind() == ErrorKind::Conflict && attempts < MAX_ATTEMPTS => {
                    let conversation = message.conversation.clone();
                    call(
                        self.services().sequencer(),
                        FenceSeq {
                            conversation: conversation.clone(),
                            at_least: message.seq,
                        },
                    )
                    .await?;
                    let mut retry = (*message).clone();
                    retry.seq = self.next_seq(&conversation).await?;
                    // Just after the allocation, as for the first seq: readers judge the holes
                    // below an entry by its `sent_at` (see `holes`).
                    retry.sent_at = Timestamp::now();
                    message = Arc::new(retry);
                }
                Err(err) => {
                    if err.kind() != ErrorKind::Conflict {
                        self.void_unused(&message.conversation, message.seq, recipients)
                            .await;
                    }
                    return Err(err);
                }
            }
        }
    }

    pub(crate) async fn next_seq(&self, conversation: &ConversationId) -> Result<Seq, Error> {
        call(
            self.services().sequencer(),
            NextSeq {
                conversation: conversation.clone(),
            },
        )
        .await
    }

    /// Fills a seq that was allocated for an entry that was not stored, so readers do not
    /// wait on the hole; the void is fanned out (an entry found there instead is its own
    /// writer's to fan out).
    pub(crate) async fn void_unused(
        &self,
        conversation: &ConversationId,
        seq: Seq,
        recipients: &Arc<[UserId]>,
    ) {
        let voided = call(
            self.services().store(),
            VoidSeq {
                conversation: conversation.clone(),
                seq,
            },
        )
        .await;
        if let Ok(entry) = voided {
            if entry.is_void() {
                self.fan_out(Arc::clone(recipients), entry).await;
            }
        }
    }

    /// Fans out what [`Engine::store_pending`] stored (once: the entry is taken).
    pub(crate) async fn deliver_stored(&self, stored: &mut Stored) {
        if let Some((recipients, entry)) = stored.fanout.take() {
            self.fan_out(recipients, entry).await;
        }
    }

    /// Delivers a log entry to every online device of `recipients`.
    pub(crate) async fn fan_out(&self, recipients: Arc<[UserId]>, message: Arc<Message>) {
        self.deliver(recipients, Event::Message { message }).await;
    }

    pub(crate) async fn deliver(&self, recipients: Arc<[UserId]>, event: Event) {
        if recipients.is_empty() {
            return;
        }
        if let Err(err) = call(self.services().fanout(), Deliver { recipients, event }).await {
            // Nothing is lost: devices that miss a live entry fetch it from the store.
            tracing::warn!(error = %err, "fanout failed");
        }
    }
}
