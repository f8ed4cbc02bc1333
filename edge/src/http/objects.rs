//! Serving as a parent (`[tiers] serve_children`): `GET /.edge/objects/<hash>` (or
//! `/.edge/objects/<hh>/<hash>`, the store's object layout, which is what a child edge's
//! store client asks for) answers an object from this node's tiers: memory, disk, or a fill
//! coalesced with every other request for it, from this node's own parents or origin.
//!
//! Invariants: only immutable objects are served here, never pointers or records (children
//! read those from the store); every byte served was verified against the hash when it
//! entered the tiers, or is verified as it streams; with a token set, a request without it
//! gets 401 before anything else is looked at, and the token is compared in constant time.
//!
//! | answer | when |
//! | --- | --- |
//! | 200, the bytes, `Content-Length` | the tiers have it or filled it |
//! | 401 | a token is set and the request's `Authorization: Bearer` is not it |
//! | 400 | the path names no hash |
//! | 404 | the origin has no such object |
//! | 502, 503, 504 | the fill failed, as for any request (see `error`) |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use origin_client::Hash;

use super::{Body, CacheStatus, Facts, Handler, RequestHead, text};

/// The path prefix children read objects under.
pub const PREFIX: &str = "/.edge/objects/";

/// How this node answers child edges, and what it answered.
#[derive(Debug, Default)]
pub struct Children {
    /// blake3 of the token children must send; `None`: none needed (loopback only, which
    /// the node checks at start).
    token: Option<blake3::Hash>,
    pub stats: ChildStats,
}

/// Requests from children, by answer.
#[derive(Debug, Default)]
pub struct ChildStats {
    pub ok: AtomicU64,
    pub not_found: AtomicU64,
    pub unauthorized: AtomicU64,
    pub bad_request: AtomicU64,
    pub failed: AtomicU64,
}

impl ChildStats {
    /// `(result label, count)` for each answer.
    pub fn counts(&self) -> [(&'static str, u64); 5] {
        [
            ("ok", &self.ok),
            ("not_found", &self.not_found),
            ("unauthorized", &self.unauthorized),
            ("bad_request", &self.bad_request),
            ("error", &self.failed),
        ]
        .map(|(k, v)| (k, v.load(Relaxed)))
    }
}

impl Children {
    pub fn new(token: Option<&str>) -> Children {
        Children {
            token: token.map(|t| blake3::hash(t.as_bytes())),
            stats: ChildStats::default(),
        }
    }
}

/// The hash a path after [`PREFIX`] names: `<hash>`, or `<hh>/<hash>` with `hh` its first
/// two digits. Lowercase hex only, as the store writes it.
pub fn parse(rest: &str) -> Option<Hash> {
    let hex = match rest.split_once('/') {
        Some((hh, hex)) if hex.get(..2) == Some(hh) => hex,
        Some(_) => return None,
        None => rest,
    };
    let hash: Hash = hex.parse().ok()?;
    (hash.to_hex() == hex).then_some(hash)
}

impl Handler {
    /// Answers a child's `GET` (or `HEAD`) of `/.edge/objects/...`.
    pub(super) async fn child_object(
        &self,
        children: &Children,
        req: &RequestHead<'_>,
        rest: &str,
        head_only: bool,
        facts: &mut Facts,
    ) -> Response<Body> {
        let stats = &children.stats;
        if let Some(want) = &children.token
            && !super::headers::bearer_matches(req.headers, want)
        {
            stats.unauthorized.fetch_add(1, Relaxed);
            let mut r = text(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let Some(hash) = parse(rest) else {
            stats.bad_request.fetch_add(1, Relaxed);
            return text(
                StatusCode::BAD_REQUEST,
                "not an object path: /.edge/objects/<hash> (64 lowercase hex digits)",
            );
        };
        let (blob, source) = match self.tiers.object(hash).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                stats.not_found.fetch_add(1, Relaxed);
                return text(StatusCode::NOT_FOUND, "the origin has no such object");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                return self.failure(&e, "object for a child");
            }
        };
        stats.ok.fetch_add(1, Relaxed);
        let len = blob.len();
        let cache = CacheStatus::Tier(source);
        facts.cache = Some(cache);
        facts.bytes = Some(if head_only { 0 } else { len });
        let body = match blob {
            _ if head_only => Body::Empty,
            crate::tiers::Blob::Bytes(b) => Body::full(b),
            other => Body::Stream {
                stream: other.into_stream(0, len),
                len,
            },
        };
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::ETAG, super::headers::etag(&hash));
        // Named by its hash: the same bytes forever.
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        );
        h.insert(
            super::CACHE_STATUS.clone(),
            HeaderValue::from_static(cache.as_str()),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths() {
        let h = Hash::of(b"x");
        let hex = h.to_hex();
        assert_eq!(parse(&hex), Some(h));
        assert_eq!(parse(&format!("{}/{hex}", &hex[..2])), Some(h));
        for bad in [
            String::new(),
            "zz".into(),
            hex.to_uppercase(),
            format!("{hex}0"),
            hex[1..].to_owned(),
            format!("{}/{hex}", if &hex[..2] == "00" { "01" } else { "00" }),
            format!("{}/{hex}/", &hex[..2]),
            format!("{hex}/"),
            format!("/{hex}"),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
    }
}
