//! Response bodies: whole (small answers, records) or streamed from the store, with the body
//! faults (truncate, flip) applied on the way.
//!
//! Invariant: objects are streamed chunk by chunk as the store yields them; nothing here
//! holds more than one chunk.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt, stream};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use origin_client::store::ByteStream;

use super::conn::ConnState;
use super::rules::BodyFault;

/// Not `Sync`: store streams are `Send` only, and hyper's server needs no more.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub(crate) fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// A streamed body with `fault` applied. The caller sets `Content-Length` to the full length,
/// so a truncated body is visibly short.
pub(crate) fn streamed(inner: ByteStream, fault: BodyFault, conn: Arc<ConnState>) -> Body {
    if fault == BodyFault::default() {
        return BodyExt::boxed_unsync(StreamBody::new(inner.map_ok(Frame::data)));
    }
    BodyExt::boxed_unsync(StreamBody::new(
        faulty(inner, fault, conn).map_ok(Frame::data),
    ))
}

struct State {
    inner: ByteStream,
    pos: u64,
    fault: BodyFault,
    conn: Arc<ConnState>,
    done: bool,
}

fn faulty(
    inner: ByteStream,
    fault: BodyFault,
    conn: Arc<ConnState>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    let state = State {
        inner,
        pos: 0,
        fault,
        conn,
        done: false,
    };
    stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(limit) = st.fault.truncate_at
            && st.pos >= limit
        {
            st.done = true;
            // Let hyper put every byte sent so far on the wire; then fail the body, which
            // makes hyper close the connection short of the announced length.
            st.conn.flushed().await;
            let cut = io::Error::other(format!("body truncated at {limit} bytes by a chaos rule"));
            return Some((Err(cut), st));
        }
        match st.inner.next().await {
            None => None,
            Some(Err(e)) => {
                st.done = true;
                Some((Err(e), st))
            }
            Some(Ok(mut chunk)) => {
                if let Some(limit) = st.fault.truncate_at {
                    let room = limit - st.pos;
                    if chunk.len() as u64 > room {
                        chunk.truncate(room as usize);
                    }
                }
                let len = chunk.len() as u64;
                if let Some(at) = st.fault.flip_at
                    && (st.pos..st.pos + len).contains(&at)
                {
                    let mut owned = BytesMut::from(&chunk[..]);
                    owned[(at - st.pos) as usize] ^= 0xff;
                    chunk = owned.freeze();
                }
                st.pos += len;
                Some((Ok(chunk), st))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        let parts: Vec<io::Result<Bytes>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        stream::iter(parts).boxed()
    }

    async fn collect(s: impl futures_util::Stream<Item = io::Result<Bytes>>) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(item) = s.next().await {
            match item {
                Ok(b) => out.extend_from_slice(&b),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    #[tokio::test]
    async fn flip_inverts_one_byte_across_chunks() {
        let fault = BodyFault {
            truncate_at: None,
            flip_at: Some(4),
        };
        let conn = Arc::new(ConnState::default());
        let (out, failed) = collect(faulty(chunks(&[b"abc", b"defg"]), fault, conn)).await;
        assert!(!failed);
        assert_eq!(out, [b'a', b'b', b'c', b'd', b'e' ^ 0xff, b'f', b'g']);
    }

    #[tokio::test]
    async fn truncate_stops_then_fails() {
        let fault = BodyFault {
            truncate_at: Some(5),
            flip_at: None,
        };
        let conn = Arc::new(ConnState::default());
        // No socket here: stand in for the flush the body waits for.
        conn.notify_flushed();
        let (out, failed) = collect(faulty(chunks(&[b"abc", b"defg", b"h"]), fault, conn)).await;
        assert!(failed);
        assert_eq!(out, b"abcde");
    }
}
