//! One accepted TCP connection, wrapped so faults can reach below HTTP.
//!
//! hyper owns the socket while it serves a connection, so the faults that act on TCP itself
//! go through [`ConnState`], shared by the socket wrapper and the request handler:
//!
//! - reset: the handler marks the connection and fails the request; hyper drops the
//!   connection without writing a response, and the wrapper's `Drop` sets `SO_LINGER` to zero
//!   first, so the close is a TCP RST (the client reads "connection reset"), not a FIN.
//! - truncate: the body sends its last bytes and then waits for [`ConnState::flushed`]. hyper
//!   writes out everything it has buffered before it calls `poll_flush` on the socket, so the
//!   first flush after the body asked is proof that the cut body reached the kernel; only
//!   then does the body fail, and hyper closes the connection. Failing earlier would drop
//!   buffered bytes (and maybe the headers) with it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// How long a truncated body waits for its bytes to be flushed before closing anyway (a
/// client that stopped reading).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(crate) struct ConnState {
    reset_on_close: AtomicBool,
    want_flush: AtomicBool,
    flushed: Notify,
}

impl ConnState {
    /// Makes the coming close of this connection a TCP reset.
    pub(crate) fn reset_on_close(&self) {
        self.reset_on_close.store(true, Ordering::Relaxed);
    }

    /// Waits until everything written so far has been handed to the socket (or
    /// [`FLUSH_WAIT`] passed).
    pub(crate) async fn flushed(&self) {
        self.want_flush.store(true, Ordering::Release);
        // `notify_one` keeps a permit when nobody waits yet, so a flush between the store
        // above and this await is not lost.
        let _ = tokio::time::timeout(FLUSH_WAIT, self.flushed.notified()).await;
        self.want_flush.store(false, Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn notify_flushed(&self) {
        self.flushed.notify_one();
    }
}

/// The accepted socket, as hyper sees it.
#[derive(Debug)]
pub(crate) struct ChaosIo {
    stream: TcpStream,
    state: std::sync::Arc<ConnState>,
}

impl ChaosIo {
    pub(crate) fn new(stream: TcpStream, state: std::sync::Arc<ConnState>) -> ChaosIo {
        ChaosIo { stream, state }
    }
}

impl Drop for ChaosIo {
    fn drop(&mut self) {
        if self.state.reset_on_close.load(Ordering::Relaxed) {
            // Zero linger never blocks: the kernel discards the socket and sends RST.
            if let Err(e) = self.stream.set_zero_linger() {
                tracing::debug!(error = %e, "could not set zero linger for a reset");
            }
        }
    }
}

impl AsyncRead for ChaosIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ChaosIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = ready!(Pin::new(&mut self.stream).poll_flush(cx));
        if res.is_ok() && self.state.want_flush.load(Ordering::Acquire) {
            self.state.flushed.notify_one();
        }
        Poll::Ready(res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
