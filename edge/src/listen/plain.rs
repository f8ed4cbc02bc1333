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
    super::tcp::sniff_h2c(stream, limit).await.is_some()
}
