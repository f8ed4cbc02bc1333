//! Response bodies: whole (small answers, records) or streamed from the store, with the body
//! faults (truncate, flip) applied on the way.
//!
//! Invariant: objects are streamed chunk by chunk as the store yields them; nothing here
//! holds more than one chunk.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt, stream};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use origin_client::store::ByteStream;

use super::conn::ConnState;
use super::counts::InFlight;
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

/// `inner`, holding `guard` until the body is over: hyper drops a body once its last frame
/// is written, or when the connection ends first.
pub(crate) fn tracked(inner: Body, guard: InFlight) -> Body {
    BodyExt::boxed_unsync(Tracked {
        inner,
        _guard: guard,
    })
}

struct Tracked {
    inner: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
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
    async fn a_tracked_body_is_in_flight_until_it_is_over() {
        let counter = crate::chaos::counts::Counter::new(10);
        let body = tracked(full("hello"), counter.enter("objects/ab/ab00"));
        assert_eq!(counter.snapshot().objects_in_flight, 1);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let s = counter.snapshot();
        assert_eq!((s.in_flight, s.peak_in_flight), (0, 1));
        // Dropped before it is read (the connection went away): over too.
        let body = tracked(full("x"), counter.enter("sites/docs/current"));
        assert_eq!(counter.snapshot().in_flight, 1);
        drop(body);
        assert_eq!(counter.snapshot().in_flight, 0);
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
