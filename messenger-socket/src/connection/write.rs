//! Writing frames with a deadline that costs nothing while the socket keeps up.

use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

use super::End;

/// Buffers `message` for writing. A frame that fits the write buffer costs no timer: the
/// write deadline is armed only when the socket pushes back.
pub(super) async fn feed<S>(
    ws: &mut WebSocketStream<S>,
    message: tungstenite::Message,
    write_timeout: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Polled again below with the task's waker when pending, which registers it.
    match ws.poll_ready_unpin(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => return ws.start_send_unpin(message).map_err(|_| End::Quiet),
        Poll::Ready(Err(_)) => return Err(End::Quiet),
        Poll::Pending => {}
    }
    match Box::pin(timeout(write_timeout, ws.feed(message))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Quiet),
    }
}

/// Writes out what is buffered; the deadline is armed only when the socket pushes back.
pub(super) async fn flush<S>(
    ws: &mut WebSocketStream<S>,
    write_timeout: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    match ws.poll_flush_unpin(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => return Ok(()),
        Poll::Ready(Err(_)) => return Err(End::Quiet),
        Poll::Pending => {}
    }
    match Box::pin(timeout(write_timeout, ws.flush())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Quiet),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use messenger_core::protocol::close;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    use super::super::testing::{Harness, close_code, sync};
    use crate::EngineConfig;
    use crate::hub::Outbound;

    /// docs/protocol.md §3 (operator settings): the defaults the document states.
    #[test]
    fn the_documented_defaults() {
        let config = EngineConfig::default();
        assert_eq!(config.hello_timeout, Duration::from_secs(10));
        assert_eq!(config.outbound_queue, 4096);
        assert_eq!(config.write_timeout, Duration::from_secs(10));
    }

    /// docs/protocol.md §10, 4008: more frames queued for a connection than its outgoing
    /// queue holds close it with 4008.
    #[tokio::test]
    async fn an_overflowing_outgoing_queue_closes_with_4008() {
        let harness = Harness::with_config(EngineConfig {
            outbound_queue: 16,
            ..EngineConfig::default()
        });
        let mut peer = harness.connect("alice:phone").await;
        sync(&mut peer, "{}").await;
        let handle = harness.handle_of("alice");
        // Pushed without yielding (one-threaded test runtime): the connection cannot take
        // any of them before the queue is over its size.
        for n in 0..64 {
            handle.push(Outbound::Frame(Utf8Bytes::from(format!(
                r#"{{"type":"pong","id":"f{n}"}}"#
            ))));
        }
        assert_eq!(close_code(&mut peer).await, Some(close::SLOW_CONSUMER));
    }

    /// docs/protocol.md §10: a connection whose writes stall for the write timeout is
    /// dropped without a close frame (the peer reads nothing more, so none could reach it).
    #[tokio::test]
    async fn a_write_stalled_past_the_write_timeout_drops_the_connection() {
        let harness = Harness::with_config(EngineConfig {
            write_timeout: Duration::from_millis(100),
            ..EngineConfig::default()
        });
        let mut peer = harness.connect("alice:phone").await;
        sync(&mut peer, "{}").await;
        let handle = harness.handle_of("alice");
        // Far more than the duplex pipe (64 KiB) and the WebSocket write buffer hold.
        let big = "x".repeat(16 * 1024);
        for n in 0..64 {
            handle.push(Outbound::Frame(Utf8Bytes::from(format!(
                r#"{{"type":"pong","id":"f{n}","pad":"{big}"}}"#
            ))));
        }
        // Not reading while the server's write stalls past its timeout.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(close_code(&mut peer).await, None, "no close frame");
    }
}
