//! A plain HTTP/1.1 (and h2c) listener for a side service: the admin endpoints. Not the
//! serving path: no worker threads, no TLS, no `Front`; but the same accept back-off and a
//! header-read timeout, from the accept on, so a silent client cannot hold a connection open
//! forever.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// What an h2c client sends first (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `handle` on `listener` until `shutdown` resolves.
pub async fn serve<F, Fut, B>(
    listener: TcpListener,
    handle: F,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let builder = std::sync::Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (handle, builder) = (handle.clone(), builder.clone());
        tokio::spawn(async move {
            if !first_bytes(&stream, header_read_timeout).await {
                return;
            }
            let svc = service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(handle(req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

/// Waits up to `limit` for the first bytes of a request: enough to tell HTTP/1.1 from h2c.
/// hyper's header-read timeout only starts once hyper-util has read those (it looks for the
/// h2c preface, with no timeout of its own), so a client that connects and sends nothing, or
/// a few bytes of the preface, would otherwise hold its connection forever. `false`: close.
async fn first_bytes(stream: &TcpStream, limit: Duration) -> bool {
    let wait = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
                return Some(());
            }
            // A part of the preface so far: a real client sends all 24 bytes at once, so
            // this polls only for one that trickles them.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    matches!(tokio::time::timeout(limit, wait).await, Ok(Some(())))
}
