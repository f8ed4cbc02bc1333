//! The host a request names, strictly (RFC 9112 3.2, RFC 9113 8.3.1, RFC 3986 3.2.2): one
//! `Host` at most, a valid authority (reg-name, IPv4 or bracketed IPv6, port digits only,
//! no userinfo), and on HTTP/2 and HTTP/3 a `:authority` that agrees with `host`. Pure.

use http::header::{self, HeaderMap};
use http::{Uri, Version};

/// Why a request's host is refused (each a 400 with this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("more than one Host header")]
    Duplicate,
    #[error("missing Host header")]
    Missing,
    #[error("Host header is not a valid host[:port]")]
    Invalid,
    #[error(":authority and Host disagree")]
    Mismatch,
}

/// The host a request names (`host[:port]` as sent), `None` when it names none (HTTP/1.0
/// without Host, or an empty Host).
pub fn request_host<'a>(
    uri: &'a Uri,
    headers: &'a HeaderMap,
    version: Version,
) -> Result<Option<&'a str>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let host = match host {
        Some(h) => Some(h.to_str().map_err(|_| HostError::Invalid)?),
        None => None,
    };
    if let Some(a) = uri.authority() {
        let a = a.as_str();
        if !valid_authority(a) {
            return Err(HostError::Invalid);
        }
        // HTTP/1.1 absolute-form: the target's authority wins and Host is ignored (RFC 9112
        // 3.2.2) once it is itself valid; HTTP/2 and HTTP/3 must agree (RFC 9113 8.3.1).
        if let Some(h) = host {
            if !valid_authority(h) && !h.is_empty() {
                return Err(HostError::Invalid);
            }
            if matches!(version, Version::HTTP_2 | Version::HTTP_3) && !h.eq_ignore_ascii_case(a) {
                return Err(HostError::Mismatch);
            }
        }
        return Ok(Some(a));
    }
    match host {
        Some("") => Ok(None),
        Some(h) if valid_authority(h) => Ok(Some(h)),
        Some(_) => Err(HostError::Invalid),
        None if version == Version::HTTP_11 => Err(HostError::Missing),
        None => Ok(None),
    }
}

/// `host [":" port]` with host a reg-name, IPv4 address or `[IPv6]`, port digits only.
pub fn valid_authority(a: &str) -> bool {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if a.starts_with('[') {
        return true;
    }
    !host.is_empty() && reg_name(host)
}

/// RFC 3986 reg-name: unreserved, pct-encoded and sub-delims (an IPv4 address is one too).
fn reg_name(h: &str) -> bool {
    let b = h.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
                continue;
            }
            c if c.is_ascii_alphanumeric() => {}
            b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(uri: &str, hosts: &[&[u8]], v: Version) -> Result<Option<String>, HostError> {
        let uri: Uri = uri.parse().unwrap();
        let mut h = HeaderMap::new();
        for x in hosts {
            h.append(header::HOST, http::HeaderValue::from_bytes(x).unwrap());
        }
        request_host(&uri, &h, v).map(|o| o.map(str::to_owned))
    }

    #[test]
    fn host_table() {
        use HostError::*;
        use Version as V;
        let ok = |s: &str| Ok(Some(s.to_owned()));
        type Case<'a> = (
            &'a str,
            &'a [&'a [u8]],
            Version,
            Result<Option<String>, HostError>,
        );
        let cases: &[Case<'_>] = &[
            ("/", &[b"example.com"], V::HTTP_11, ok("example.com")),
            (
                "/",
                &[b"example.com:8080"],
                V::HTTP_11,
                ok("example.com:8080"),
            ),
            ("/", &[b"127.0.0.1:80"], V::HTTP_11, ok("127.0.0.1:80")),
            ("/", &[b"[::1]:8443"], V::HTTP_11, ok("[::1]:8443")),
            ("/", &[b"[::1]"], V::HTTP_11, ok("[::1]")),
            (
                "/",
                &[b"xn--bcher-kva.example"],
                V::HTTP_11,
                ok("xn--bcher-kva.example"),
            ),
            ("/", &[b"a%41b"], V::HTTP_11, ok("a%41b")),
            ("/", &[b""], V::HTTP_11, Ok(None)),
            ("/", &[], V::HTTP_10, Ok(None)),
            ("/", &[], V::HTTP_11, Err(Missing)),
            (
                "/",
                &[b"other.example", b"127.0.0.1"],
                V::HTTP_11,
                Err(Duplicate),
            ),
            ("/", &[b"a", b"a"], V::HTTP_11, Err(Duplicate)),
            ("/", &[b"a b@c/d"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"user@host"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"host:"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"host:8x"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"host:123456"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"host:1:2"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"[::1"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"[zz]"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"[::1]x"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"a%4"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"a%zz"], V::HTTP_11, Err(Invalid)),
            ("/", &[b"h\xc3\xa9"], V::HTTP_11, Err(Invalid)),
            ("/", &[b":80"], V::HTTP_11, Err(Invalid)),
            // HTTP/2 and HTTP/3: :authority (the URI's) and host must agree.
            ("https://a.example/", &[], V::HTTP_2, ok("a.example")),
            (
                "https://a.example/",
                &[b"A.example"],
                V::HTTP_2,
                ok("a.example"),
            ),
            (
                "https://a.example/",
                &[b"b.example"],
                V::HTTP_2,
                Err(Mismatch),
            ),
            (
                "https://a.example/",
                &[b"b.example"],
                V::HTTP_3,
                Err(Mismatch),
            ),
            (
                "https://a.example:1/",
                &[b"a.example"],
                V::HTTP_2,
                Err(Mismatch),
            ),
            ("https://u@a.example/", &[], V::HTTP_2, Err(Invalid)),
            // HTTP/1.1 absolute-form: the target's authority wins (RFC 9112 3.2.2).
            (
                "http://a.example/",
                &[b"b.example"],
                V::HTTP_11,
                ok("a.example"),
            ),
            ("http://a.example/", &[b"a b"], V::HTTP_11, Err(Invalid)),
        ];
        for (uri, hosts, v, want) in cases {
            assert_eq!(&check(uri, hosts, *v), want, "{uri} {hosts:?} {v:?}");
        }
    }
}
