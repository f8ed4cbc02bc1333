//! The listener: accepts connections (a bounded number at once), serves HTTP/1.1 on each, and
//! winds everything down on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::Shared;
use super::conn::{ChaosIo, ConnState};
use super::origin;

/// How long shutdown waits for in-flight requests before cutting connections.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
) {
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut conns = JoinSet::new();
    let shutdown = shared.shutdown.clone();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set stays as small as the live ones.
        while conns.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                let span = tracing::debug_span!("conn", peer.addr = %peer, proto = "http/1.1");
                conns.spawn(serve(stream, peer, shared.clone(), permit).instrument(span));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    // Every connection watches the same token and is finishing gracefully.
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(
            left = conns.len(),
            "cutting connections still busy after the drain"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

async fn serve(
    stream: TcpStream,
    _peer: SocketAddr,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnState::default());
    let io = TokioIo::new(ChaosIo::new(stream, state.clone()));
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |req| origin::handle(shared.clone(), state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        // Resets and truncations end connections with an error on purpose.
        tracing::debug!(error = %e, "connection ended");
    }
}
