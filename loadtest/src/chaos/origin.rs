//! One request to the origin: count it, map its path to a store key, pick a fault, then
//! serve the key from the store the way a static file server over the store's folder would.
//!
//! Statuses: 200 found (with `Content-Length`), 404 not found or not in the layout, 400 a
//! malformed path, 405 a method other than GET or HEAD, 500 a store error. Objects are
//! streamed as the store yields them, never read whole; records are re-encoded as the local
//! store writes them (pretty JSON), and `history` is the deploy ids, one per line.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use origin_client::store::ObjectBody;
use origin_client::tree::MAGIC;
use origin_client::{Store, StoreError};
use tracing::Instrument;

use super::Shared;
use super::body::{self, Body};
use super::conn::ConnState;
use super::control;
use super::layout::{self, PathError, Target};
use super::rules::{Action, BodyFault, Kind, MAX_DELAY, latency};

/// Why a request got no response at all: hyper drops the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Dropped {
    #[error("connection reset by a chaos rule")]
    Reset,
    #[error("hang ended after {0:?}; connection reset")]
    Hang(Duration),
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    let path = req.uri().path();
    if path == "/_chaos" || path.starts_with("/_chaos/") {
        return Ok(control::handle(&shared, req).await);
    }
    let key = path.strip_prefix('/').unwrap_or(path).to_owned();
    shared.counter.count(&key);
    // In flight until the answer's body is over (or the answer is dropped: resets, hangs).
    let in_flight = shared.counter.enter(&key);
    let method = req.method().clone();
    let span = tracing::debug_span!(
        "request",
        url.path = %key,
        http.request.method = %method,
        http.response.status_code = tracing::field::Empty,
    );
    let res = origin(&shared, &conn, &method, &key)
        .instrument(span.clone())
        .await;
    match &res {
        Ok(resp) => {
            span.record("http.response.status_code", resp.status().as_u16());
        }
        Err(e) => span.in_scope(|| tracing::debug!(fault = %e, "no response")),
    }
    res.map(|resp| resp.map(|b| body::tracked(b, in_flight)))
}

async fn origin(
    shared: &Shared,
    conn: &Arc<ConnState>,
    method: &Method,
    key: &str,
) -> Result<Response<Body>, Dropped> {
    let head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED);
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(resp);
        }
    };
    let target = match layout::parse(key) {
        Ok(t) => t,
        Err(PathError::Bad) => return Ok(plain(StatusCode::BAD_REQUEST)),
        Err(PathError::NotFound) => return Ok(plain(StatusCode::NOT_FOUND)),
    };

    let rules = shared.rules.load_full();
    // The object, when deciding needed a look at its first bytes: `Some(None)` is missing.
    let mut opened: Option<Option<ObjectBody>> = None;
    let kind = match &target {
        Target::Object(hash) if rules.needs_object_kind(key) => {
            match shared.store.open_object(hash).await {
                Ok(Some(body)) => match peek_kind(body).await {
                    Ok((kind, body)) => {
                        opened = Some(Some(body));
                        Some(kind)
                    }
                    Err(e) => return Ok(store_error(&StoreErrorOrIo::Io(e))),
                },
                Ok(None) => {
                    opened = Some(None);
                    None
                }
                Err(e) => return Ok(store_error(&StoreErrorOrIo::Store(e))),
            }
        }
        t => t.kind(),
    };
    let action = rules
        .select(key, kind, Instant::now(), &mut || shared.rng.next_f64())
        .cloned();
    drop(rules);

    let mut fault = None;
    match action {
        None => {}
        Some(Action::Latency { ms, jitter_ms }) => {
            let delay = latency(ms, jitter_ms, shared.rng.next_f64());
            tracing::debug!(fault = "latency", ?delay);
            tokio::time::sleep(delay).await;
        }
        Some(Action::Status { code, body }) => {
            tracing::debug!(fault = "status", code);
            return Ok(fault_status(code, body));
        }
        Some(Action::Reset) => {
            conn.reset_on_close();
            return Err(Dropped::Reset);
        }
        Some(Action::Hang { max_ms }) => {
            let max = max_ms.map_or(MAX_DELAY, Duration::from_millis);
            tracing::debug!(fault = "hang", ?max);
            let started = Instant::now();
            tokio::select! {
                () = tokio::time::sleep(max) => {}
                () = shared.shutdown.cancelled() => {}
            }
            conn.reset_on_close();
            return Err(Dropped::Hang(started.elapsed()));
        }
        Some(a @ (Action::Truncate { .. } | Action::Flip { .. })) => fault = Some(a),
    }
    Ok(serve(
        shared.store.as_ref(),
        conn,
        target,
        opened,
        head,
        fault.as_ref(),
    )
    .await)
}

async fn serve(
    store: &dyn Store,
    conn: &Arc<ConnState>,
    target: Target,
    opened: Option<Option<ObjectBody>>,
    head: bool,
    fault: Option<&Action>,
) -> Response<Body> {
    let found = match target {
        Target::Object(hash) => {
            let object = match opened {
                Some(o) => o,
                None => match store.open_object(&hash).await {
                    Ok(o) => o,
                    Err(e) => return store_error(&StoreErrorOrIo::Store(e)),
                },
            };
            let Some(object) = object else {
                return plain(StatusCode::NOT_FOUND);
            };
            let fault = fault.map_or_else(BodyFault::default, |a| BodyFault::of(a, object.len));
            let body = if head {
                body::empty()
            } else {
                body::streamed(object.stream, fault, conn.clone())
            };
            return ok_response(body, object.len, "application/octet-stream");
        }
        Target::Host(host) => record(store.get_host(&host).await),
        Target::HostIndex => record(store.get_host_index().await),
        Target::Current(site) => record(store.get_current(&site).await),
        Target::Deploy { site, id } => record(store.get_deploy(&site, &id).await),
        Target::History(site) => match store.list_deploys(&site).await {
            // The local store writes `history` with the first deploy: none, no file.
            Ok(list) if list.is_empty() => Ok(None),
            Ok(list) => {
                let mut text = String::new();
                for d in &list {
                    text.push_str(&d.id);
                    text.push('\n');
                }
                Ok(Some((Bytes::from(text), "text/plain; charset=utf-8")))
            }
            Err(e) => Err(StoreErrorOrIo::Store(e)),
        },
    };
    match found {
        Ok(Some((bytes, content_type))) => {
            let len = bytes.len() as u64;
            let fault = fault.map_or_else(BodyFault::default, |a| BodyFault::of(a, Some(len)));
            let body = if head {
                body::empty()
            } else {
                body::streamed(
                    stream::once(async { Ok(bytes) }).boxed(),
                    fault,
                    conn.clone(),
                )
            };
            ok_response(body, Some(len), content_type)
        }
        Ok(None) => plain(StatusCode::NOT_FOUND),
        Err(e) => store_error(&e),
    }
}

fn ok_response(body: Body, len: Option<u64>, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(len) = len {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    resp
}

type Found = Result<Option<(Bytes, &'static str)>, StoreErrorOrIo>;

/// A record as the local store writes it.
fn record<T: serde::Serialize>(r: Result<Option<T>, StoreError>) -> Found {
    match r {
        Ok(None) => Ok(None),
        Ok(Some(rec)) => serde_json::to_vec_pretty(&rec)
            .map(|json| Some((Bytes::from(json), "application/json")))
            .map_err(|e| StoreErrorOrIo::Io(io::Error::other(e))),
        Err(e) => Err(StoreErrorOrIo::Store(e)),
    }
}

/// Reads an object's first bytes to tell a tree from a blob, then puts them back in front of
/// the rest of the stream. Reads at most the chunks that hold [`MAGIC`]'s length.
async fn peek_kind(object: ObjectBody) -> io::Result<(Kind, ObjectBody)> {
    let ObjectBody { len, mut stream } = object;
    let mut head: Vec<Bytes> = Vec::new();
    let mut have = 0;
    while have < MAGIC.len() {
        match stream.next().await {
            None => break,
            Some(chunk) => {
                let chunk = chunk?;
                have += chunk.len();
                head.push(chunk);
            }
        }
    }
    let first: Vec<u8> = head
        .iter()
        .flat_map(|c| c.iter().copied())
        .take(MAGIC.len())
        .collect();
    let kind = if first == MAGIC[..] {
        Kind::Tree
    } else {
        Kind::Blob
    };
    let stream = stream::iter(head.into_iter().map(Ok)).chain(stream).boxed();
    Ok((kind, ObjectBody { len, stream }))
}

#[derive(Debug)]
enum StoreErrorOrIo {
    Store(StoreError),
    Io(io::Error),
}

fn store_error(e: &StoreErrorOrIo) -> Response<Body> {
    let err: &(dyn StdError + 'static) = match e {
        // A name no store holds: what a static server answers for a missing file.
        StoreErrorOrIo::Store(StoreError::Name(_)) => return plain(StatusCode::NOT_FOUND),
        StoreErrorOrIo::Store(e) => e,
        StoreErrorOrIo::Io(e) => e,
    };
    tracing::warn!(error = %chain(err), "store read failed");
    plain(StatusCode::INTERNAL_SERVER_ERROR)
}

/// An error with its causes, `: `-separated, for one log line.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A short text answer: the status line's reason.
pub(crate) fn plain(status: StatusCode) -> Response<Body> {
    let text = format!("{status}\n");
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn fault_status(code: u16, body: Option<String>) -> Response<Body> {
    // Rules are checked when installed: the code is 200..=599.
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match body {
        None => plain(status),
        Some(text) => {
            let mut resp = Response::new(body::full(text));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
    }
}
