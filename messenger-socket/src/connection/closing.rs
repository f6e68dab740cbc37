//! Ending a connection: close frames that reach the peer.

use std::time::Duration;

use messenger_core::protocol::close;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

/// A close reason must fit a control frame (123 bytes).
pub(super) fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// The close a transport error calls for: 1009 for a frame over the size limit; `None` when
/// the peer is gone (nothing more can be written).
pub(super) fn transport_close(err: &tungstenite::Error) -> Option<(u16, String)> {
    match err {
        tungstenite::Error::Capacity(_) => Some((close::TOO_BIG, "frame too large".into())),
        _ => None,
    }
}

/// After its close frame, how long the server keeps reading what the peer still sends.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// After its close frame, how many bytes the server reads (and discards) at most.
const CLOSE_LINGER_BYTES: usize = 1024 * 1024;

/// Sends a close frame, then lingers: half-closes the socket and reads (discarding) until the
/// peer closes its side, [`CLOSE_LINGER`] passes or [`CLOSE_LINGER_BYTES`] were read.
///
/// Closing a socket that still holds unread bytes makes the kernel reset the connection, and
/// a peer that was still writing (a flood of bad frames, the rest of an oversize frame) then
/// loses the close frame with its code and sees 1006 instead. Reading below the WebSocket
/// codec also works after an oversize frame, whose payload the codec never read.
pub(super) async fn close_with<S>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
    config: &crate::EngineConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(truncate(reason)),
    };
    match timeout(config.write_timeout, ws.close(Some(frame))).await {
        Ok(Ok(())) => {}
        // Not written (the peer does not read, or is gone): nothing to linger for.
        Ok(Err(_)) | Err(_) => return,
    }
    let deadline = tokio::time::Instant::now() + CLOSE_LINGER;
    let socket = ws.get_mut();
    // Our FIN right after the close frame: a peer that answers the close frame then reads
    // the end of the stream and closes its side, which ends the loop below at once.
    if !matches!(
        tokio::time::timeout_at(deadline, socket.shutdown()).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let mut scratch = vec![0u8; 8 * 1024];
    let mut budget = CLOSE_LINGER_BYTES;
    while budget > 0 {
        match tokio::time::timeout_at(deadline, socket.read(&mut scratch)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => return,
            Ok(Ok(read)) => budget = budget.saturating_sub(read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn a_close_reason_fits_a_control_frame_and_keeps_whole_characters() {
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert!(cut.len() <= 120, "{} bytes", cut.len());
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }
}
