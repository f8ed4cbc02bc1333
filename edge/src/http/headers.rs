//! Header logic with no I/O: content types, ranges, validators, content negotiation.

/// `Content-Type` for a file name, with `charset=utf-8` for text.
pub fn content_type(name: &str) -> std::borrow::Cow<'static, str> {
    let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let ext = ext.to_ascii_lowercase();
    let common = match ext.as_str() {
        "html" | "htm" => Some("text/html; charset=utf-8"),
        "css" => Some("text/css; charset=utf-8"),
        "js" | "mjs" => Some("text/javascript; charset=utf-8"),
        "json" | "map" => Some("application/json"),
        "txt" => Some("text/plain; charset=utf-8"),
        "svg" => Some("image/svg+xml"),
        "xml" => Some("application/xml"),
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "gif" => Some("image/gif"),
        "webp" => Some("image/webp"),
        "avif" => Some("image/avif"),
        "ico" => Some("image/x-icon"),
        "woff2" => Some("font/woff2"),
        "woff" => Some("font/woff"),
        "wasm" => Some("application/wasm"),
        "pdf" => Some("application/pdf"),
        "webmanifest" => Some("application/manifest+json"),
        _ => None,
    };
    if let Some(c) = common {
        return c.into();
    }
    match mime_guess::from_ext(&ext).first_raw() {
        Some(m) if m.starts_with("text/") => format!("{m}; charset=utf-8").into(),
        Some(m) => m.into(),
        None => "application/octet-stream".into(),
    }
}

/// Is this a content type that gets the HTML cache policy?
/// The token in an `Authorization` value with the `Bearer` scheme, in any case (RFC 9110
/// 11.1: the scheme is case-insensitive; one or more spaces follow it).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Whether `headers` carry `Authorization: Bearer T` with `blake3(T) == want`: the
/// comparison is of hashes, in constant time (`blake3::Hash`'s equality is), so the time it
/// takes says nothing about the token.
pub fn bearer_matches(headers: &http::HeaderMap, want: &blake3::Hash) -> bool {
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .unwrap_or("");
    blake3::hash(given.as_bytes()) == *want
}

/// `"<hex hash>"`, built on the stack: one allocation (the header value's own).
pub fn etag(hash: &origin_client::Hash) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'"'; 66];
    for (i, b) in hash.as_bytes().iter().enumerate() {
        buf[1 + 2 * i] = HEX[(b >> 4) as usize];
        buf[2 + 2 * i] = HEX[(b & 15) as usize];
    }
    http::HeaderValue::from_bytes(&buf).unwrap_or(http::HeaderValue::from_static("\"\""))
}

pub fn is_html(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".html") || lower.ends_with(".htm")
}

/// A `Range` request header, against a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No usable range: serve the whole thing (absent, another unit, or several ranges).
    Whole,
    /// `start..end` (end exclusive).
    Single(u64, u64),
    /// Syntactically valid but outside the representation: 416.
    Unsatisfiable,
    /// Not valid `bytes=` syntax: 416 too (see the README).
    Malformed,
}

pub fn parse_range(header: &str, len: u64) -> RangeSpec {
    let h = header.trim();
    let Some((unit, set)) = h.split_once('=') else {
        return RangeSpec::Malformed;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeSpec::Whole;
    }
    let parts: Vec<&str> = set.split(',').map(str::trim).collect();
    let mut parsed = Vec::with_capacity(parts.len());
    for p in &parts {
        match parse_one(p, len) {
            Some(r) => parsed.push(r),
            None => return RangeSpec::Malformed,
        }
    }
    match parsed.as_slice() {
        [one] => *one,
        [] => RangeSpec::Malformed,
        many if many.iter().all(|r| *r == RangeSpec::Unsatisfiable) => RangeSpec::Unsatisfiable,
        _ => RangeSpec::Whole,
    }
}

fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_one(p: &str, len: u64) -> Option<RangeSpec> {
    let (a, b) = p.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    Some(if a.is_empty() {
        let n = digits(b)?;
        if n == 0 || len == 0 {
            RangeSpec::Unsatisfiable
        } else {
            RangeSpec::Single(len - n.min(len), len)
        }
    } else {
        let start = digits(a)?;
        let end = if b.is_empty() { None } else { Some(digits(b)?) };
        if end.is_some_and(|e| e < start) {
            return None;
        }
        if start >= len {
            RangeSpec::Unsatisfiable
        } else {
            RangeSpec::Single(start, end.map_or(len, |e| (e + 1).min(len)))
        }
    })
}

/// Does an `If-None-Match` value match `etag` (weak comparison)?
pub fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Content codings the edge serves from precompressed siblings, in preference order, with
/// the sibling suffix for each.
pub use crate::route::CODINGS;

/// The q-value `Accept-Encoding` gives `coding` (0 when not acceptable).
pub fn accept_q(header: &str, coding: &str) -> f32 {
    let mut star = None;
    for item in header.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let mut q = 1.0f32;
        for param in parts {
            if let Some(v) = param.trim().strip_prefix("q=") {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if name.eq_ignore_ascii_case(coding)
            || (coding == "gzip" && name.eq_ignore_ascii_case("x-gzip"))
        {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0.0)
}

/// Which of the offered codings (indexes into [`CODINGS`], each at most once) to send, given
/// the request's `Accept-Encoding`: the highest q-value above 0; ties go to the earlier in
/// CODINGS (br, then zstd, then gzip). Returns the position in `offered`; `None` means the
/// file as it is (no header, or nothing acceptable).
pub fn choose_encoding(
    accept: Option<&str>,
    offered: impl Iterator<Item = usize>,
) -> Option<usize> {
    let accept = accept?;
    let mut best: Option<(f32, usize, usize)> = None; // (q, rank, position)
    for (pos, rank) in offered.enumerate() {
        let Some((coding, _)) = CODINGS.get(rank) else {
            continue;
        };
        let q = accept_q(accept, coding);
        if q > 0.0 && best.is_none_or(|(bq, br, _)| q > bq || (q == bq && rank < br)) {
            best = Some((q, rank, pos));
        }
    }
    best.map(|(_, _, pos)| pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k"] {
            assert_eq!(bearer(v), Some("t0k"), "{v}");
        }
        for v in ["Basic t0k", "Bearert0k", "Bearer", "Token t0k"] {
            assert_ne!(bearer(v), Some("t0k"), "{v}");
        }
        let want = blake3::hash(b"0123456789abcdef");
        let mut h = http::HeaderMap::new();
        assert!(!bearer_matches(&h, &want));
        h.insert("authorization", "Bearer 0123456789abcdeX".parse().unwrap());
        assert!(!bearer_matches(&h, &want));
        h.insert("authorization", "bearer 0123456789abcdef".parse().unwrap());
        assert!(bearer_matches(&h, &want));
    }

    #[test]
    fn types() {
        assert_eq!(content_type("a.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("a.tar.gz"), "application/gzip");
        assert_eq!(content_type("README"), "application/octet-stream");
        assert_eq!(content_type("x.csv"), "text/csv; charset=utf-8");
    }

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Single(0, 10));
        assert_eq!(parse_range("bytes=90-", 100), Single(90, 100));
        assert_eq!(parse_range("bytes=-10", 100), Single(90, 100));
        assert_eq!(parse_range("bytes=-1000", 100), Single(0, 100));
        assert_eq!(parse_range("bytes=50-1000", 100), Single(50, 100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
        assert_eq!(parse_range("bytes=5-1", 100), Malformed);
        assert_eq!(parse_range("bytes=abc", 100), Malformed);
        assert_eq!(parse_range("bytes=", 100), Malformed);
        assert_eq!(parse_range("bytes=--1", 100), Malformed);
        assert_eq!(parse_range("nonsense", 100), Malformed);
        assert_eq!(parse_range("bytes=99999999999999999999-", 100), Malformed);
    }

    #[test]
    fn etags() {
        assert!(none_match("\"a\"", "\"a\""));
        assert!(none_match("W/\"a\", \"b\"", "\"a\""));
        assert!(none_match("*", "\"a\""));
        assert!(!none_match("\"b\"", "\"a\""));
    }

    #[test]
    fn encoding_choice_table() {
        // (Accept-Encoding, codings offered, chosen coding or "identity")
        let table: &[(Option<&str>, &[&str], &str)] = &[
            (None, &["br", "zstd", "gzip"], "identity"),
            (Some(""), &["br", "zstd", "gzip"], "identity"),
            (
                Some("gzip, deflate, br, zstd"),
                &["br", "zstd", "gzip"],
                "br",
            ),
            (Some("gzip, deflate, br, zstd"), &["zstd", "gzip"], "zstd"),
            (Some("gzip"), &["br", "zstd", "gzip"], "gzip"),
            (Some("gzip"), &["br"], "identity"),
            (
                Some("br;q=0.5, gzip;q=0.8"),
                &["br", "zstd", "gzip"],
                "gzip",
            ),
            (
                Some("br;q=0.8, zstd;q=0.8, gzip;q=0.8"),
                &["gzip", "zstd"],
                "zstd",
            ),
            (Some("br;q=0, gzip"), &["br", "gzip"], "gzip"),
            (Some("*"), &["zstd", "gzip"], "zstd"),
            (Some("*;q=0.1, gzip;q=0.5"), &["br", "gzip"], "gzip"),
            (Some("identity"), &["br", "zstd", "gzip"], "identity"),
            (Some("x-gzip"), &["gzip"], "gzip"),
            (Some("BR"), &["br"], "br"),
            (Some("br;q=nonsense"), &["br"], "identity"),
        ];
        for (accept, offered, want) in table {
            let ranks: Vec<usize> = offered
                .iter()
                .map(|c| CODINGS.iter().position(|(t, _)| t == c).unwrap())
                .collect();
            let got =
                choose_encoding(*accept, ranks.iter().copied()).map_or("identity", |i| offered[i]);
            assert_eq!(got, *want, "{accept:?} offering {offered:?}");
        }
    }

    #[test]
    fn encodings() {
        assert_eq!(accept_q("gzip, br", "br"), 1.0);
        assert_eq!(accept_q("gzip;q=0.5", "gzip"), 0.5);
        assert_eq!(accept_q("br;q=0", "br"), 0.0);
        assert_eq!(accept_q("*", "zstd"), 1.0);
        assert_eq!(accept_q("identity", "gzip"), 0.0);
    }
}
