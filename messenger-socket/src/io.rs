//! Socket reads for the WebSocket codec that hold no buffer while a connection is idle.
//!
//! tungstenite's frame codec reads into a buffer of its own, allocated when the connection
//! starts and kept for its whole life: 4 KiB per connection, idle or not, was the largest
//! single part of an idle connection's memory. [`CoalescedReads`] lets the codec's buffer be
//! small ([`CODEC_READ_BUFFER`]) without a syscall per small read: it reads up to
//! `read_size` bytes from the socket into a scratch buffer shared by the thread, hands the
//! codec what it asks for and keeps only the bytes the codec has not asked for yet, in a
//! buffer freed as soon as they are taken.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The WebSocket codec's own read buffer, in bytes: what an idle connection keeps for
/// reading (it grows to the largest frame received, as before).
pub(crate) const CODEC_READ_BUFFER: usize = 128;

thread_local! {
    /// One read buffer per runtime thread, shared by every connection polled on it.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A byte stream whose reads go through the thread's scratch buffer (see the module docs).
/// Writes pass through.
#[derive(Debug)]
pub(crate) struct CoalescedReads<S> {
    inner: S,
    /// Bytes read from the socket that the reader has not taken yet, from `taken` on.
    pending: Vec<u8>,
    taken: usize,
    /// Most bytes read from the socket at once.
    read_size: usize,
}

impl<S> CoalescedReads<S> {
    /// Wraps `inner`, reading up to `read_size` bytes at once.
    pub(crate) fn new(inner: S, read_size: usize) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            taken: 0,
            read_size: read_size.max(1),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedReads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.taken < this.pending.len() {
            let left = &this.pending[this.taken..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.taken += n;
            if this.taken == this.pending.len() {
                // Everything handed over: free the buffer.
                this.pending = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= this.read_size {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < this.read_size {
                scratch.resize(this.read_size, 0);
            }
            let mut scratch_buf = ReadBuf::new(&mut scratch[..this.read_size]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut scratch_buf) {
                Poll::Ready(Ok(())) => {
                    let read = scratch_buf.filled();
                    let n = read.len().min(buf.remaining());
                    buf.put_slice(&read[..n]);
                    if n < read.len() {
                        this.pending = read[n..].to_vec();
                        this.taken = 0;
                    }
                    Poll::Ready(Ok(()))
                }
                other => other,
            }
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedReads<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_leave_no_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut reader = CoalescedReads::new(server, 4096);
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            let n = reader.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, sent);
        assert_eq!(reader.pending.capacity(), 0);
    }

    #[tokio::test]
    async fn a_large_read_goes_straight_to_the_socket() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&[7u8; 5000]).await.unwrap();
        let mut reader = CoalescedReads::new(server, 16);
        let mut big = vec![0u8; 8192];
        let n = reader.read(&mut big).await.unwrap();
        assert_eq!(n, 5000);
        assert!(big[..n].iter().all(|b| *b == 7));
        assert!(reader.pending.is_empty());
    }
}
