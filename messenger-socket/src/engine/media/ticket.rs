//! Upload tickets: HS256-signed tokens bound to one media entry, its sender and what the
//! sender declared.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use messenger_core::{ConversationId, Seq, Timestamp, UserId};
use serde::{Deserialize, Serialize};

/// The `aud` claim of every ticket: a ticket is never a login token.
const AUDIENCE: &str = "messenger-media-upload";

/// What a ticket carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TicketClaims {
    /// The conversation of the media entry.
    pub(crate) conv: String,
    /// The media entry's seq.
    pub(crate) seq: u64,
    /// The sender: the only user who may upload.
    pub(crate) sub: String,
    /// The declared size in bytes.
    pub(crate) size: u64,
    /// The declared type.
    pub(crate) mime: String,
    /// The declared SHA-256, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sha256: Option<String>,
    /// Expiry in milliseconds since the epoch (checked to the millisecond).
    pub(crate) exp_ms: u64,
    /// Expiry in seconds, for standard JWT tooling.
    pub(crate) exp: u64,
    /// Always [`AUDIENCE`].
    pub(crate) aud: String,
}

impl TicketClaims {
    pub(crate) fn new(
        conversation: &ConversationId,
        seq: Seq,
        sender: &UserId,
        size: u64,
        mime: &str,
        sha256: Option<&str>,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            conv: conversation.as_str().to_owned(),
            seq: seq.get(),
            sub: sender.as_str().to_owned(),
            size,
            mime: mime.to_owned(),
            sha256: sha256.map(str::to_owned),
            exp_ms: expires_at.as_millis(),
            exp: expires_at.as_millis().div_ceil(1000),
            aud: AUDIENCE.to_owned(),
        }
    }
}

/// Why a ticket is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TicketError {
    /// Not a ticket of this server (bad signature, malformed, wrong audience).
    Invalid(String),
    /// Valid but past its expiry.
    Expired,
}

/// Signs and checks tickets with one secret.
pub(crate) struct TicketSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketSigner")
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TicketSigner {
    pub(crate) fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked to the millisecond below, not by the library (whole seconds).
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["aud", "sub"]);
        validation.set_audience(&[AUDIENCE]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub(crate) fn sign(&self, claims: &TicketClaims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|err| err.to_string())
    }

    pub(crate) fn check(&self, ticket: &str, now: Timestamp) -> Result<TicketClaims, TicketError> {
        let data = jsonwebtoken::decode::<TicketClaims>(ticket, &self.decoding, &self.validation)
            .map_err(|err| TicketError::Invalid(err.to_string()))?;
        if data.claims.exp_ms <= now.as_millis() {
            return Err(TicketError::Expired);
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: Timestamp) -> TicketClaims {
        TicketClaims::new(
            &ConversationId::new("g:t").unwrap(),
            Seq(3),
            &UserId::new("alice").unwrap(),
            10,
            "image/png",
            None,
            expires_at,
        )
    }

    #[test]
    fn a_ticket_round_trips_and_expires() {
        let signer = TicketSigner::new(b"secret");
        let ticket = signer.sign(&claims(Timestamp(2_000))).unwrap();
        assert_eq!(
            signer.check(&ticket, Timestamp(1_999)).unwrap(),
            claims(Timestamp(2_000))
        );
        assert_eq!(
            signer.check(&ticket, Timestamp(2_000)),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn another_secret_or_a_login_token_is_refused() {
        let ticket = TicketSigner::new(b"one")
            .sign(&claims(Timestamp(u64::MAX / 2)))
            .unwrap();
        assert!(matches!(
            TicketSigner::new(b"two").check(&ticket, Timestamp(0)),
            Err(TicketError::Invalid(_))
        ));
        #[derive(Serialize)]
        struct Login {
            sub: &'static str,
            device: &'static str,
            exp: u64,
        }
        let login = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Login {
                sub: "alice",
                device: "phone",
                exp: u64::MAX / 2000,
            },
            &EncodingKey::from_secret(b"one"),
        )
        .unwrap();
        assert!(matches!(
            TicketSigner::new(b"one").check(&login, Timestamp(0)),
            Err(TicketError::Invalid(_))
        ));
    }
}
