//! HTTP versions in HTTP/1 framing that hyper's parser refuses with 400, handled as the RFCs
//! say: `HTTP/1.x` with x > 1 is served as HTTP/1.1 (RFC 9110 2.5: a recipient treats a
//! higher minor version as the highest it supports), and a major version of 2 or more
//! (`GET / HTTP/2.0`) gets 505 HTTP Version Not Supported.
//!
//! [`VersionShim`] sits under hyper on HTTP/1 connections and rewrites each request line's
//! version before hyper reads it: `HTTP/1.2` becomes `HTTP/1.1` in place; `HTTP/2.0` becomes
//! `HTTP/1.1` followed by a [`MARKER`] header, which [`super::Front`] answers with 505 and
//! `Connection: close`. To find request lines it follows HTTP/1 framing: the head ends at an
//! empty line and a `Content-Length` body is skipped. Anything it does not follow exactly (a
//! `Transfer-Encoding` body, a malformed length, a request line longer than the head limit,
//! the h2c preface `PRI * HTTP/2.0`, `CONNECT`) turns it into a pass-through for the rest of
//! the connection, so it never rewrites a byte hyper would read as body: the worst case is
//! the 400 hyper gives without it. Bodies and h2c pass through without a copy; only request
//! heads are scanned, and an idle connection holds no buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The header a rewritten request with an unsupported major version carries (its value: the
/// version the client sent). A client that sends it itself gets the same 505.
pub const MARKER: &str = "edge-unsupported-http-version";

/// The start of a header line kept to recognise `Content-Length` and `Transfer-Encoding`.
const HEADER_KEEP: usize = 48;

/// The end of an incomplete request line held back until its end arrives: the version and
/// its space, and a CR LF (` HTTP/1.2\r\n`).
const TAIL: usize = 11;

#[derive(Clone, Copy)]
enum State {
    /// Inside a request line (or before one): `seen` bytes of it delivered, the first of
    /// them in `head`.
    Line { seen: usize },
    /// Inside the head, with the body length given so far.
    Head { length: Option<u64> },
    /// Inside a body of this many bytes still to come.
    Body(u64),
    /// No more rewriting on this connection.
    Pass,
}

pub struct VersionShim<T> {
    io: T,
    state: State,
    /// The first bytes of the current line (request line or header line), and how many.
    head: [u8; HEADER_KEEP],
    head_len: usize,
    /// Bytes read but not delivered: the tail of an incomplete request line, or a marker
    /// header and what followed it. Scanned again on the next read. Empty (unallocated)
    /// almost always.
    held: Vec<u8>,
    /// The longest request line followed.
    max_line: usize,
}

impl<T> VersionShim<T> {
    pub fn new(io: T, max_line: usize) -> VersionShim<T> {
        VersionShim {
            io,
            state: State::Line { seen: 0 },
            head: [0; HEADER_KEEP],
            head_len: 0,
            held: Vec::new(),
            max_line,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn keep(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(HEADER_KEEP - self.head_len);
        self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
        self.head_len += n;
    }

    /// Scans `data` (bytes in hyper's buffer, in order) in place, rewriting request-line
    /// versions; returns how many of them hyper may read now. The rest is moved to `held`.
    fn scan(&mut self, data: &mut [u8]) -> usize {
        let mut at = 0;
        while at < data.len() {
            let rest = &data[at..];
            match self.state {
                State::Pass => return data.len(),
                State::Body(left) => {
                    let n = left.min(rest.len() as u64);
                    at += n as usize;
                    self.state = match left - n {
                        0 => State::Line { seen: 0 },
                        l => State::Body(l),
                    };
                }
                State::Head { .. } => match memchr(rest) {
                    Some(e) => {
                        self.keep(&rest[..e]);
                        at += e + 1;
                        self.header_line();
                    }
                    None => {
                        self.keep(rest);
                        at = data.len();
                    }
                },
                State::Line { seen } => {
                    let Some(e) = memchr(rest) else {
                        // Incomplete: deliver all but its possible version and line end.
                        let give = rest.len().saturating_sub(TAIL);
                        if seen + rest.len() > self.max_line {
                            // Too long to follow: hyper answers it (414/431/400).
                            self.state = State::Pass;
                            return data.len();
                        }
                        self.keep(&rest[..give]);
                        self.state = State::Line { seen: seen + give };
                        self.held = rest[give..].to_vec();
                        return at + give;
                    };
                    if seen + e + 1 > self.max_line {
                        self.state = State::Pass;
                        return data.len();
                    }
                    self.keep(&rest[..e]);
                    let line_end = at + e + 1;
                    let marker = self.request_line(&mut data[at..line_end], seen);
                    at = line_end;
                    if let Some(m) = marker {
                        let mut held = m;
                        held.extend_from_slice(&data[at..]);
                        self.held = held;
                        return at;
                    }
                }
            }
        }
        data.len()
    }

    /// A whole request line has arrived: `line` is its part in the buffer (ending in LF),
    /// after `seen` bytes delivered earlier (whose first bytes are in `head`). Rewrites its
    /// version in place; returns the marker header line to insert after it, if any.
    fn request_line(&mut self, line: &mut [u8], seen: usize) -> Option<Vec<u8>> {
        let start = &self.head[..self.head_len];
        let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
        let text_len = line.len() - 1 - usize::from(crlf);
        self.head_len = 0;
        if seen == 0 && text_len == 0 {
            // An empty line before a request line is ignored (RFC 9112 2.2).
            return None;
        }
        if start.starts_with(b"PRI * ") || start.starts_with(b"CONNECT ") {
            self.state = State::Pass;
            return None;
        }
        self.state = State::Head { length: None };
        // " HTTP/D.D" at the end of the line: within this part (a held-back tail ensures it).
        let v = text_len.checked_sub(9)?;
        let version = &line[v..text_len];
        if version[0] != b' ' || !version[1..].starts_with(b"HTTP/") || version[7] != b'.' {
            return None;
        }
        let (major, minor) = (version[6], version[8]);
        if !major.is_ascii_digit() || !minor.is_ascii_digit() {
            return None;
        }
        match major {
            b'1' if minor > b'1' => {
                line[v + 8] = b'1';
                None
            }
            b'2'..=b'9' => {
                line[v + 6..v + 9].copy_from_slice(b"1.1");
                let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
                let mut m = format!("{MARKER}: {}.{}", major as char, minor as char).into_bytes();
                m.extend_from_slice(eol);
                Some(m)
            }
            _ => None,
        }
    }

    /// A whole header line has arrived; its start is in `head`.
    fn header_line(&mut self) {
        let kept = &self.head[..self.head_len];
        let text = kept.strip_suffix(b"\r").unwrap_or(kept);
        let cut = self.head_len == HEADER_KEEP;
        let State::Head { length } = self.state else {
            return;
        };
        let next = if text.is_empty() {
            // The end of the head.
            match length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Line { seen: 0 },
            }
        } else if text[0] == b' ' || text[0] == b'\t' {
            // obs-fold: not followed (hyper refuses it anyway).
            State::Pass
        } else {
            match text.iter().position(|&b| b == b':') {
                // A long line with no colon in its start: a long name, not one of ours.
                None if cut => State::Head { length },
                None => State::Pass,
                Some(colon) => {
                    let name = &text[..colon];
                    if name.eq_ignore_ascii_case(b"transfer-encoding") {
                        State::Pass
                    } else if name.eq_ignore_ascii_case(b"content-length") {
                        let value = text[colon + 1..].trim_ascii();
                        let parsed = std::str::from_utf8(value)
                            .ok()
                            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|v| v.parse::<u64>().ok());
                        match (cut, parsed, length) {
                            (false, Some(n), None) => State::Head { length: Some(n) },
                            (false, Some(n), Some(m)) if n == m => State::Head { length },
                            _ => State::Pass,
                        }
                    } else {
                        State::Head { length }
                    }
                }
            }
        };
        self.state = next;
        self.head_len = 0;
    }
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

impl<T: AsyncRead + Unpin> AsyncRead for VersionShim<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            let start = buf.filled().len();
            // What was held back comes first, scanned again.
            if !me.held.is_empty() {
                let n = me.held.len().min(buf.remaining());
                buf.put_slice(&me.held[..n]);
                me.held.drain(..n);
                if me.held.is_empty() {
                    me.held = Vec::new();
                }
            }
            let placed = buf.filled().len() - start;
            let mut pending = false;
            let mut eof = false;
            let reads = me.held.is_empty() && buf.remaining() > 0;
            if reads {
                match Pin::new(&mut me.io).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => eof = buf.filled().len() == start + placed,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => pending = true,
                }
            }
            let end = buf.filled().len();
            if matches!(me.state, State::Pass) && me.held.is_empty() {
                return if pending && end == start {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(()))
                };
            }
            let mut held = std::mem::take(&mut me.held);
            let give = me.scan(&mut buf.filled_mut()[start..end]);
            // `scan` set `held` to what it kept back; anything not yet placed follows it.
            me.held.append(&mut held);
            buf.set_filled(start + give);
            if give > 0 || eof {
                return Poll::Ready(Ok(()));
            }
            if pending {
                return Poll::Pending;
            }
            if !reads {
                // The reader's buffer has no room beyond what is held back: the line's end
                // cannot be seen through it. Pass it on as it is (hyper sees the version it
                // was sent) rather than wait for room that will not come.
                me.state = State::Pass;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for VersionShim<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What hyper would read from `input` arriving in pieces of `step` bytes (as
    /// `poll_read` does it: what was held back, then what was read).
    fn shim(input: &[u8], step: usize) -> Vec<u8> {
        let mut s = VersionShim::new((), 1024);
        let mut out = Vec::new();
        let mut pieces = input.chunks(step.max(1));
        loop {
            let mut data = std::mem::take(&mut s.held);
            let held = data.len();
            match pieces.next() {
                Some(p) => data.extend_from_slice(p),
                None if held == 0 => break,
                None => {}
            }
            let give = s.scan(&mut data);
            out.extend_from_slice(&data[..give]);
            if give == 0 && data.len() == held {
                break; // an incomplete line at the end of the input
            }
        }
        out
    }

    fn all_steps(input: &[u8], want: &[u8]) {
        for step in [1, 2, 3, 7, 64, input.len()] {
            assert_eq!(
                String::from_utf8_lossy(&shim(input, step)),
                String::from_utf8_lossy(want),
                "step {step}"
            );
        }
    }

    #[test]
    fn minor_versions_above_one_become_one_one() {
        all_steps(
            b"GET / HTTP/1.2\r\nHost: a\r\n\r\nGET /b HTTP/1.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        );
        // 1.0 and 1.1 are left alone, and so is garbage (hyper refuses it).
        for same in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.1\n\n",
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/1.x\r\n\r\n",
            b"GET / HTTPS/1.2\r\n\r\n",
            b"GET /\r\n\r\n",
        ] {
            all_steps(same, same);
        }
    }

    #[test]
    fn major_versions_two_and_up_are_marked() {
        all_steps(
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nedge-unsupported-http-version: 2.0\r\nHost: a\r\n\r\n",
        );
        all_steps(
            b"GET / HTTP/3.1\nHost: a\n\n",
            b"GET / HTTP/1.1\nedge-unsupported-http-version: 3.1\nHost: a\n\n",
        );
    }

    #[test]
    fn bodies_are_skipped_and_never_rewritten() {
        let input = b"POST / HTTP/1.1\r\nContent-Length: 18\r\n\r\nGET / HTTP/1.2\r\n\r\nGET / HTTP/1.2\r\n\r\n";
        all_steps(
            input,
            b"POST / HTTP/1.1\r\nContent-Length: 18\r\n\r\nGET / HTTP/1.2\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        );
        // What it does not follow, it passes through from there on.
        for pass in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nGET / HTTP/1.2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\nGET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\nGET / HTTP/1.2\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.2\r\n\r\n",
        ] {
            all_steps(pass, pass);
        }
        // A long header line is followed (only its start is kept).
        let long = format!(
            "GET / HTTP/1.1\r\nCookie: {}\r\n\r\nGET / HTTP/1.2\r\n\r\n",
            "c".repeat(5000)
        );
        all_steps(
            long.as_bytes(),
            long.replace("HTTP/1.2", "HTTP/1.1").as_bytes(),
        );
    }

    /// Read through `poll_read` into a buffer of `room` bytes at a time.
    async fn read_in(input: &[u8], room: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut s = VersionShim::new(input, 1 << 20);
        let mut out = Vec::new();
        let mut buf = vec![0u8; room];
        loop {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("a read makes progress")
                .unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test]
    async fn small_read_buffers_make_progress() {
        let line = format!("GET /{} HTTP/1.2\r\nHost: a\r\n\r\n", "a".repeat(100));
        for room in [1, 5, 10, 11, 12, 64, 4096] {
            let out = read_in(line.as_bytes(), room).await;
            // Rewritten when the buffer can hold the line's end, passed on as sent otherwise.
            let text = String::from_utf8(out).unwrap();
            assert!(
                text == line.replace("HTTP/1.2", "HTTP/1.1") || (room <= TAIL && text == line),
                "room {room}: {text:?}"
            );
        }
        let out = read_in(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 64).await;
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nedge-unsupported-http-version: 2.0\r\nHost: a\r\n\r\n"
        );
    }

    #[test]
    fn an_overlong_request_line_passes_through() {
        let line = format!("GET /{} HTTP/1.2\r\n\r\n", "a".repeat(2000));
        all_steps(line.as_bytes(), line.as_bytes());
    }
}
