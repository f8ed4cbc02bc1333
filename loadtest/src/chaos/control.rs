//! The control endpoint under `/_chaos/`, on the origin's own listener (JSON):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /_chaos/rules` | 200, the installed rule list |
//! | `PUT /_chaos/rules` | replaces the list (body: a rule list, at most 1 MiB); 200 with it, or 400 with `{"error": …}` |
//! | `DELETE /_chaos/rules` | heals: no rules; 204 |
//! | `GET /_chaos/counts` | 200, [`Counts`](super::Counts) |
//! | `DELETE /_chaos/counts` | resets the counts; 204 |
//!
//! With a control token, every control request needs `Authorization: Bearer TOKEN`, else 401.
//! Control requests are not counted and no rule applies to them.

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Serialize;

use super::Shared;
use super::body::{self, Body};
use super::origin::plain;
use super::rules::parse_rules;

/// Largest rule list accepted by `PUT /_chaos/rules`.
const MAX_RULES_BODY: usize = 1024 * 1024;

pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    if let Some(token) = &shared.token
        && !authorized(req.headers(), token)
    {
        let mut resp = error_json(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"chaos-origin\""),
        );
        return resp;
    }
    let method = req.method().clone();
    match (method, req.uri().path()) {
        (Method::GET, "/_chaos/rules") => json(StatusCode::OK, shared.rules.load().rules()),
        (Method::PUT, "/_chaos/rules") => {
            let bytes = match Limited::new(req.into_body(), MAX_RULES_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                    return error_json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "rule list is larger than 1 MiB",
                    );
                }
                Err(e) => {
                    return error_json(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"));
                }
            };
            let installed = parse_rules(&bytes).and_then(|rules| shared.install(rules));
            match installed {
                Ok(()) => json(StatusCode::OK, shared.rules.load().rules()),
                Err(e) => error_json(StatusCode::BAD_REQUEST, &error_text(&e)),
            }
        }
        (Method::DELETE, "/_chaos/rules") => {
            shared.heal();
            no_content()
        }
        (Method::GET, "/_chaos/counts") => json(StatusCode::OK, &shared.counter.snapshot()),
        (Method::DELETE, "/_chaos/counts") => {
            shared.counter.reset();
            no_content()
        }
        (_, "/_chaos/rules" | "/_chaos/counts") => plain(StatusCode::METHOD_NOT_ALLOWED),
        _ => plain(StatusCode::NOT_FOUND),
    }
}

/// Compares the bearer token in constant time: both sides are hashed and `blake3::Hash`
/// equality does not stop at the first differing byte, so neither the content nor the length
/// of the expected token leaks through timing.
fn authorized(headers: &HeaderMap, token: &blake3::Hash) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, given)) = value.split_at_checked(7) else {
        return false;
    };
    scheme.eq_ignore_ascii_case(b"bearer ") && blake3::hash(given) == *token
}

fn error_text(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            let mut resp = Response::new(body::full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not encode a control answer");
            plain(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn error_json(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn no_content() -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_must_match_exactly() {
        let token = blake3::hash(b"s3cret");
        let check = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            authorized(&h, &token)
        };
        assert!(check("Bearer s3cret"));
        assert!(check("bearer s3cret"));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret ",
            "Basic s3cret",
            "s3cret",
            "Bearer",
            "",
        ] {
            assert!(!check(bad), "{bad:?}");
        }
        assert!(!authorized(&HeaderMap::new(), &token));
    }
}
