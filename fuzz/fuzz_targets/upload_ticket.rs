//! Upload tickets (`messenger-socket/src/engine/media/ticket.rs`). The input, as text, is
//! checked as a ticket: refused without panic, unless signed with the secret, and then in the
//! one canonical encoding (no malleable base64).
//! The same bytes then drive a signing: any claims the engine may sign verify back to
//! themselves before their expiry, expire at it, and are refused under another secret.
#![no_main]

use arbitrary::{Result, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use messenger_core::{ConversationId, UserId};
use messenger_socket::fuzzing::{TicketRefusal, check_ticket, sign_ticket};

/// The secret of the seed tickets (`fuzz/seeds/upload_ticket/`).
const SECRET: &[u8] = b"fuzz-secret";

const NAME: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@+";
const CONVERSATION: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@+:";

/// A valid id of at most `max` bytes from `alphabet`.
fn id(u: &mut Unstructured<'_>, alphabet: &[u8], max: usize) -> Result<String> {
    let len = u.int_in_range(1..=max)?;
    (0..len)
        .map(|_| u.choose(alphabet).map(|&byte| char::from(byte)))
        .collect()
}

fn sign_and_check(u: &mut Unstructured<'_>) -> Result<()> {
    let secret: Vec<u8> = u.arbitrary()?;
    let conversation = ConversationId::new(id(u, CONVERSATION, 160)?).expect("a valid id");
    let sender = UserId::new(id(u, NAME, 64)?).expect("a valid id");
    let seq: u64 = u.arbitrary()?;
    let size: u64 = u.arbitrary()?;
    let mime: String = u.arbitrary()?;
    let sha256: Option<String> = u.arbitrary()?;
    let expires_ms: u64 = u.arbitrary()?;
    let now_ms: u64 = u.arbitrary()?;
    let (ticket, claims) = sign_ticket(
        &secret,
        &conversation,
        seq,
        &sender,
        size,
        &mime,
        sha256.as_deref(),
        expires_ms,
    )
    .unwrap_or_else(|err| panic!("cannot sign {conversation} {seq}: {err}"));
    let checked = check_ticket(&secret, &ticket, now_ms);
    if now_ms < expires_ms {
        assert_eq!(checked, Ok(claims), "{ticket}");
    } else {
        assert_eq!(checked, Err(TicketRefusal::Expired), "{ticket}");
    }
    let mut other = secret.clone();
    other.push(1);
    assert!(
        matches!(
            check_ticket(&other, &ticket, 0),
            Err(TicketRefusal::Invalid(_))
        ),
        "{ticket} verifies under another secret"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match check_ticket(SECRET, text, 0) {
            Ok(claims) => {
                // Not malleable: three parts, each the one base64url encoding of its bytes.
                let parts: Vec<&str> = text.split('.').collect();
                assert_eq!(parts.len(), 3, "{text} accepted");
                for part in parts {
                    let bytes = URL_SAFE_NO_PAD.decode(part).expect("accepted base64");
                    assert_eq!(URL_SAFE_NO_PAD.encode(bytes), part, "{text} accepted");
                }
                assert!(claims.exp_ms > 0);
            }
            Err(TicketRefusal::Invalid(_) | TicketRefusal::Expired) => {}
        }
    }
    let _ = sign_and_check(&mut Unstructured::new(data));
});
