//! What an error frame says: our code and words; a backend's text goes to the log only.

use messenger_core::protocol::{ErrorCode, ServerFrame};
use messenger_core::{ClientMsgId, ConversationId, Error, ErrorKind, RequestId};

/// The code and words an error frame carries for `err`; a backend's error is logged here and
/// reaches the client only as its code and generic words.
fn refusal_words(err: &Error) -> (ErrorCode, String) {
    if err.refusal_code().is_none()
        && !matches!(
            err.kind(),
            ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::Forbidden
        )
    {
        tracing::warn!(error = %err, "backend error");
    }
    let (code, message) = err.client_message();
    (code, message.to_owned())
}

/// The error frame answering request `id`.
pub(super) fn request_error(id: Option<RequestId>, err: &Error) -> ServerFrame {
    let (code, message) = refusal_words(err);
    ServerFrame::error(id, code, message)
}

/// The error frame refusing a send.
pub(super) fn send_error(
    conversation: ConversationId,
    client_msg_id: ClientMsgId,
    err: &Error,
) -> ServerFrame {
    let (code, message) = refusal_words(err);
    ServerFrame::Error {
        id: None,
        conversation: Some(conversation),
        client_msg_id: Some(client_msg_id),
        code,
        message,
        retryable: code.is_retryable(),
    }
}
