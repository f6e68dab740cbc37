//! The rule every backend applies to [`SetMediaStatus`](messenger_core::store::SetMediaStatus):
//! which media entries may move, and to what.

use messenger_core::{Body, ErrorKind, MediaStatus, Message, Seq};

/// Why a media status change is refused before anything is written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MediaRefusal {
    #[error("seq {0} holds no entry")]
    NoEntry(Seq),
    #[error("seq {0} is not a media entry")]
    NotMedia(Seq),
    #[error("the update is not a media status entry with a final status")]
    NotAnUpdate,
}

impl MediaRefusal {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            MediaRefusal::NoEntry(_) => ErrorKind::NotFound,
            MediaRefusal::NotMedia(_) | MediaRefusal::NotAnUpdate => ErrorKind::InvalidRequest,
        }
    }
}

/// What to do with the stored media entry.
#[derive(Debug)]
pub(crate) enum Decision {
    /// It is pending: store this moved entry and append the update.
    Apply(Message),
    /// It already holds the update's status and url: append the update if its key is free.
    Repair,
    /// It is final with another outcome: write nothing.
    Refuse,
}

/// The media seq an update names.
pub(crate) fn media_seq_of(update: &Message) -> Result<Seq, MediaRefusal> {
    match &update.body {
        Body::MediaStatus(change) if change.status != MediaStatus::Pending => Ok(change.media_seq),
        _ => Err(MediaRefusal::NotAnUpdate),
    }
}

/// Decides how `update` applies to the stored `media` entry.
pub(crate) fn decide(media: &Message, update: &Message) -> Result<Decision, MediaRefusal> {
    let Body::MediaStatus(change) = &update.body else {
        return Err(MediaRefusal::NotAnUpdate);
    };
    let Body::Media(body) = &media.body else {
        return Err(MediaRefusal::NotMedia(media.seq));
    };
    if body.status == MediaStatus::Pending {
        let mut moved = media.clone();
        if let Body::Media(moved_body) = &mut moved.body {
            moved_body.status = change.status;
            moved_body.url.clone_from(&change.url);
            moved_body.reason.clone_from(&change.reason);
        }
        return Ok(Decision::Apply(moved));
    }
    if body.status == change.status && body.url == change.url {
        return Ok(Decision::Repair);
    }
    Ok(Decision::Refuse)
}
