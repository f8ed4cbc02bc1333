//! Request paths to store keys: the store layout of `origin_client` read back from a URL path.
//!
//! Invariant: does no I/O. A path is refused (400) when it could climb out of the layout or
//! hides its meaning (`..`, `.`, empty segments, `%`-escapes, backslashes, control bytes); a
//! well-formed path that names nothing in the layout, or a name a store would never hold
//! (a host name that is not normalised, an invalid site or deploy id, a hash in the wrong
//! folder), is not found (404), which is what a static file server over the store's folder
//! would answer. A parent edge's object paths (`.edge/objects/<hh>/<hash>`, and
//! `.edge/objects/<hash>`) name objects too, so that a chaos origin can pose as a parent.

use origin_client::Hash;
use origin_client::records::{normalize_host, validate_deploy_id, validate_site};

use super::rules::Kind;

/// A store key named by a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Object(Hash),
    Host(String),
    HostIndex,
    Current(String),
    Deploy { site: String, id: String },
    History(String),
}

/// Why a path names no store key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// Malformed or dangerous: 400.
    Bad,
    /// Well-formed but outside the layout: 404.
    NotFound,
}

impl Target {
    /// The kind when the key alone tells it (objects need their bytes).
    pub(crate) fn kind(&self) -> Option<Kind> {
        match self {
            Target::Object(_) => None,
            Target::Host(_) | Target::HostIndex | Target::Current(_) => Some(Kind::Pointer),
            Target::Deploy { .. } | Target::History(_) => Some(Kind::Record),
        }
    }
}

/// Parses a store key (a URL path without its leading `/`).
pub(crate) fn parse(key: &str) -> Result<Target, PathError> {
    if key.is_empty() {
        return Err(PathError::NotFound);
    }
    let segments: Vec<&str> = key.split('/').collect();
    let bad = |s: &str| {
        s.is_empty()
            || s == "."
            || s == ".."
            || s.bytes()
                .any(|b| b == b'%' || b == b'\\' || b.is_ascii_control())
    };
    if segments.iter().any(|s| bad(s)) {
        return Err(PathError::Bad);
    }
    let object = |hh: Option<&str>, hex: &str| {
        hex.parse::<Hash>()
            .ok()
            .filter(|h| h.to_hex() == hex && hh.is_none_or(|hh| hex.get(..2) == Some(hh)))
            .map(Target::Object)
    };
    let found = match segments.as_slice() {
        ["objects", hh, hex] | [".edge", "objects", hh, hex] => object(Some(hh), hex),
        [".edge", "objects", hex] => object(None, hex),
        ["hosts", host] => normalize_host(host)
            .ok()
            .filter(|h| h == host)
            .map(Target::Host),
        ["host-index"] => Some(Target::HostIndex),
        ["sites", site, "current"] => valid_site(site).map(Target::Current),
        ["sites", site, "history"] => valid_site(site).map(Target::History),
        ["sites", site, "deploys", id] => valid_site(site).and_then(|site| {
            validate_deploy_id(id).ok().map(|()| Target::Deploy {
                site,
                id: (*id).to_owned(),
            })
        }),
        _ => None,
    };
    found.ok_or(PathError::NotFound)
}

fn valid_site(site: &str) -> Option<String> {
    validate_site(site).ok().map(|()| site.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keys_parse() {
        let h = Hash::of(b"x");
        let hex = h.to_hex();
        assert_eq!(
            parse(&format!("objects/{}/{hex}", &hex[..2])),
            Ok(Target::Object(h))
        );
        // A parent edge's paths.
        assert_eq!(
            parse(&format!(".edge/objects/{}/{hex}", &hex[..2])),
            Ok(Target::Object(h))
        );
        assert_eq!(
            parse(&format!(".edge/objects/{hex}")),
            Ok(Target::Object(h))
        );
        assert_eq!(
            parse("hosts/docs.example.com"),
            Ok(Target::Host("docs.example.com".into()))
        );
        assert_eq!(
            parse("sites/docs/current"),
            Ok(Target::Current("docs".into()))
        );
        assert_eq!(
            parse("sites/docs/history"),
            Ok(Target::History("docs".into()))
        );
        assert_eq!(
            parse("sites/docs/deploys/20240101-000000-abcd0123"),
            Ok(Target::Deploy {
                site: "docs".into(),
                id: "20240101-000000-abcd0123".into()
            })
        );
    }

    #[test]
    fn dangerous_paths_are_bad_requests() {
        for p in [
            "..",
            "sites/../current",
            "sites/docs/./current",
            "objects//x",
            "sites/docs/",
            "sites/%2e%2e/current",
            "hosts/a\\b",
            "hosts/a\u{1}b",
        ] {
            assert_eq!(parse(p), Err(PathError::Bad), "{p:?}");
        }
    }

    #[test]
    fn names_a_store_would_not_hold_are_not_found() {
        let hex = Hash::of(b"x").to_hex();
        for p in [
            String::new(),
            "index.html".into(),
            "objects/zz/".to_owned() + &hex,
            format!("objects/{}/{}", &hex[..2], hex.to_uppercase()),
            format!("objects/{}", hex),
            format!(".edge/objects/zz/{hex}"),
            ".edge/objects/abc".into(),
            "objects/ab/abc".into(),
            "hosts/Docs.Example.com".into(),
            "hosts/docs.example.com.".into(),
            "sites/Docs/current".into(),
            "sites/docs/deploys/UPPER".into(),
            "sites/docs/lock".into(),
            "tmp/1.0.tmp".into(),
        ] {
            assert_eq!(parse(&p), Err(PathError::NotFound), "{p:?}");
        }
    }

    #[test]
    fn kinds_known_from_the_key() {
        assert_eq!(Target::Host("a".into()).kind(), Some(Kind::Pointer));
        assert_eq!(Target::Current("a".into()).kind(), Some(Kind::Pointer));
        assert_eq!(Target::History("a".into()).kind(), Some(Kind::Record));
        assert_eq!(Target::Object(Hash::of(b"")).kind(), None);
    }
}
