//! Entry points for the fuzz targets under `fuzz/` (compiled only with `--cfg fuzzing`, as
//! cargo-fuzz builds): thin forwards to crate-private parsers, so the public API stays as it is.

use std::ops::Range;

use messenger_core::{ConversationId, Seq, Timestamp, UserId};

use crate::engine::media::{FuzzTicketSigner, TicketClaims, TicketError};
use crate::media::{Wanted, wanted};

/// What [`media_range`] decided for a `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaRange {
    /// Serve the whole object.
    All,
    /// Serve these bytes (206).
    Part(Range<u64>),
    /// 416.
    Unsatisfiable,
}

/// The download endpoint's `Range` parser against an object of `size` bytes.
pub fn media_range(range: Option<&str>, size: u64) -> MediaRange {
    match wanted(range, size) {
        Wanted::All => MediaRange::All,
        Wanted::Part(range) => MediaRange::Part(range),
        Wanted::Unsatisfiable => MediaRange::Unsatisfiable,
    }
}

/// The claims of an upload ticket, as the upload endpoint reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Conversation.
    pub conv: String,
    /// Seq of the media entry.
    pub seq: u64,
    /// Sender.
    pub sub: String,
    /// Declared size.
    pub size: u64,
    /// Declared type.
    pub mime: String,
    /// Declared SHA-256.
    pub sha256: Option<String>,
    /// Expiry, milliseconds.
    pub exp_ms: u64,
}

impl From<TicketClaims> for Ticket {
    fn from(claims: TicketClaims) -> Self {
        Ticket {
            conv: claims.conv,
            seq: claims.seq,
            sub: claims.sub,
            size: claims.size,
            mime: claims.mime,
            sha256: claims.sha256,
            exp_ms: claims.exp_ms,
        }
    }
}

/// Why [`check_ticket`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketRefusal {
    /// Not a ticket of this secret.
    Invalid(String),
    /// Past its expiry.
    Expired,
}

/// The upload endpoint's ticket check with `secret`, at `now_ms`.
///
/// # Errors
/// Why the ticket is refused.
pub fn check_ticket(secret: &[u8], ticket: &str, now_ms: u64) -> Result<Ticket, TicketRefusal> {
    FuzzTicketSigner::new(secret)
        .check(ticket, Timestamp(now_ms))
        .map(Ticket::from)
        .map_err(|err| match err {
            TicketError::Invalid(reason) => TicketRefusal::Invalid(reason),
            TicketError::Expired => TicketRefusal::Expired,
        })
}

/// Signs a ticket as the engine does for a media entry.
///
/// # Errors
/// The signing error.
#[allow(clippy::too_many_arguments)]
pub fn sign_ticket(
    secret: &[u8],
    conversation: &ConversationId,
    seq: u64,
    sender: &UserId,
    size: u64,
    mime: &str,
    sha256: Option<&str>,
    expires_ms: u64,
) -> Result<(String, Ticket), String> {
    let claims = TicketClaims::new(
        conversation,
        Seq(seq),
        sender,
        size,
        mime,
        sha256,
        Timestamp(expires_ms),
    );
    let ticket = FuzzTicketSigner::new(secret).sign(&claims)?;
    Ok((ticket, Ticket::from(claims)))
}
