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
