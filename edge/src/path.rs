//! Request paths: percent-decoded once, checked, split into segments. Pure; no I/O.

/// Longest request target accepted (path and query), in bytes.
pub const MAX_URI_LEN: usize = 8 * 1024;

use std::borrow::Cow;

/// A checked request path. Segments borrow from the request unless they were escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath<'a> {
    /// Decoded segments; never empty strings, `.`, `..`, or containing `/` or NUL.
    pub segments: Vec<Cow<'a, str>>,
    /// Whether the path ended with `/` (always true for `/`).
    pub trailing_slash: bool,
}

/// Why a path is refused (each becomes a 400, or 414 for length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("request target longer than {MAX_URI_LEN} bytes")]
    TooLong,
    #[error("path must start with `/`")]
    NotAbsolute,
    #[error("bad percent-encoding in path")]
    BadEscape,
    #[error("path is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("path contains an encoded `/`")]
    EncodedSlash,
    #[error("path contains NUL")]
    Nul,
    #[error("path contains a `.` or `..` segment")]
    DotSegment,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses the path part of a request target (without the query).
///
/// Each segment is percent-decoded exactly once (`%2525` is the name `%25`). Empty segments
/// (`//`) are dropped, as static servers do.
pub fn parse(raw: &str) -> Result<RequestPath<'_>, PathError> {
    if raw.len() > MAX_URI_LEN {
        return Err(PathError::TooLong);
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    let trailing_slash = rest.is_empty() || rest.ends_with('/');
    let mut segments = Vec::new();
    for seg in rest.split('/') {
        if seg.is_empty() {
            continue;
        }
        let bytes = seg.as_bytes();
        let decoded = if bytes.contains(&b'%') {
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let (Some(h), Some(l)) = (
                        bytes.get(i + 1).copied().and_then(hex),
                        bytes.get(i + 2).copied().and_then(hex),
                    ) else {
                        return Err(PathError::BadEscape);
                    };
                    let b = (h << 4) | l;
                    if b == b'/' {
                        return Err(PathError::EncodedSlash);
                    }
                    out.push(b);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            Cow::Owned(String::from_utf8(out).map_err(|_| PathError::NotUtf8)?)
        } else {
            Cow::Borrowed(seg)
        };
        if decoded.contains('\0') {
            return Err(PathError::Nul);
        }
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        segments.push(decoded);
    }
    Ok(RequestPath {
        segments,
        trailing_slash,
    })
}

/// Percent-encodes one name for use in a URL path (everything but unreserved characters and
/// a few safe sub-delimiters), so that it survives a round trip through [`parse`].
pub fn encode_segment(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        parse(p)
            .unwrap()
            .segments
            .into_iter()
            .map(|s| s.into_owned())
            .collect()
    }

    #[test]
    fn decodes_once() {
        assert_eq!(segs("/a%20b/c.d.e"), ["a b", "c.d.e"]);
        assert_eq!(segs("/%2525"), ["%25"]);
        assert_eq!(segs("/%F0%9F%98%80"), ["😀"]);
        assert_eq!(segs("/a+b"), ["a+b"]);
        assert_eq!(segs("//a//b"), ["a", "b"]);
        assert!(parse("/").unwrap().trailing_slash);
        assert!(parse("/dir/").unwrap().trailing_slash);
        assert!(!parse("/dir").unwrap().trailing_slash);
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(parse("/../etc/passwd"), Err(PathError::DotSegment));
        assert_eq!(parse("/%2e%2e/"), Err(PathError::DotSegment));
        assert_eq!(parse("/a/./b"), Err(PathError::DotSegment));
        assert_eq!(parse("/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(parse("/a%2Fb"), Err(PathError::EncodedSlash));
        assert_eq!(parse("/a%00"), Err(PathError::Nul));
        assert_eq!(parse("/%ff%fe"), Err(PathError::NotUtf8));
        assert_eq!(parse("/%zz"), Err(PathError::BadEscape));
        assert_eq!(parse("/%4"), Err(PathError::BadEscape));
        assert_eq!(parse("a"), Err(PathError::NotAbsolute));
        assert_eq!(
            parse(&format!("/{}", "a".repeat(MAX_URI_LEN))),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn encode_round_trips() {
        for name in [
            "a b",
            "100%",
            "a+b#c?d",
            "x~y",
            "😀.tar.gz",
            "é",
            "e\u{301}",
        ] {
            let enc = encode_segment(name);
            assert_eq!(segs(&format!("/{enc}")), [name], "{enc}");
        }
    }
}
