//! `[tls]` and `[http3]`: HTTPS (HTTP/2 and HTTP/1.1 over TLS) and HTTP/3 over QUIC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{ConfigError, DurationText, parse_duration};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    pub listen: Option<String>,
    pub cert_dir: Option<String>,
    pub watch: Option<bool>,
    pub handshake_timeout: Option<DurationText>,
    pub redirect_http: Option<bool>,
    pub hsts_max_age: Option<DurationText>,
    pub hsts_include_subdomains: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Section {
    pub enabled: Option<bool>,
    pub max_connections: Option<u64>,
    pub max_streams: Option<u64>,
    pub idle_timeout: Option<DurationText>,
    pub early_data: Option<bool>,
    pub alt_svc_max_age: Option<DurationText>,
}

/// HTTPS settings; present only when `tls.listen` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// TCP address for HTTP/2 and HTTP/1.1 over TLS; HTTP/3 uses the same port over UDP.
    pub listen: SocketAddr,
    /// `<host>.crt` + `<host>.key` per host name, `default.crt` + `default.key` for others.
    pub cert_dir: PathBuf,
    /// Reload certificates when files in `cert_dir` change (SIGHUP reloads either way).
    pub watch: bool,
    pub handshake_timeout: Duration,
    /// Answer every cleartext request with a redirect to `https://`.
    pub redirect_http: bool,
    /// `Strict-Transport-Security` on HTTPS and HTTP/3 responses; `None` sends none.
    pub hsts: Option<Hsts>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
}

/// HTTP/3 settings (used only when TLS is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http3 {
    pub enabled: bool,
    /// QUIC connections open at once; more are refused.
    pub max_connections: u32,
    /// Concurrent request streams per connection.
    pub max_streams: u32,
    pub idle_timeout: Duration,
    /// Accept 0-RTT (early data) requests. Off: a replayed early request cannot reach the
    /// handler. Only GET and HEAD are served, so turning it on is safe for this node.
    pub early_data: bool,
    /// `ma=` of the `Alt-Svc` header on HTTPS responses.
    pub alt_svc_max_age: Duration,
}

pub const DEFAULT_HTTP3_MAX_CONNECTIONS: u64 = 10_000;
pub const DEFAULT_HTTP3_MAX_STREAMS: u64 = 100;

/// Validates `[tls]` and `[http3]`; `invalid` builds an error naming a dotted key.
pub(crate) fn from_file(
    t: &TlsSection,
    h: &Http3Section,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<(Option<Tls>, Http3), ConfigError> {
    let duration = |key: &str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(text) => parse_duration(text).map_err(|m| invalid(key, m)),
    };
    let count = |key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
        let v = v.unwrap_or(default);
        if v < min || v > max {
            return Err(invalid(key, format!("{v} is outside {min}..={max}")));
        }
        Ok(v as u32)
    };
    let http3 = Http3 {
        enabled: h.enabled.unwrap_or(true),
        max_connections: count(
            "http3.max_connections",
            h.max_connections,
            DEFAULT_HTTP3_MAX_CONNECTIONS,
            1,
            1_000_000,
        )?,
        max_streams: count(
            "http3.max_streams",
            h.max_streams,
            DEFAULT_HTTP3_MAX_STREAMS,
            1,
            10_000,
        )?,
        idle_timeout: duration(
            "http3.idle_timeout",
            &h.idle_timeout,
            Duration::from_secs(30),
        )?,
        early_data: h.early_data.unwrap_or(false),
        alt_svc_max_age: duration(
            "http3.alt_svc_max_age",
            &h.alt_svc_max_age,
            Duration::from_secs(86_400),
        )?,
    };
    if http3.idle_timeout.is_zero() || http3.idle_timeout > Duration::from_secs(3600) {
        return Err(invalid(
            "http3.idle_timeout",
            "must be more than zero and at most 1h".into(),
        ));
    }

    let redirect_http = t.redirect_http.unwrap_or(false);
    let listen = match t.listen.as_deref() {
        None | Some("") => {
            if redirect_http {
                return Err(invalid(
                    "tls.redirect_http",
                    "needs tls.listen (there is no HTTPS listener to redirect to)".into(),
                ));
            }
            return Ok((None, http3));
        }
        Some(l) => l.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "tls.listen",
                format!("{l:?} is not an address like 127.0.0.1:8443 or [::1]:8443"),
            )
        })?,
    };
    let cert_dir = match t.cert_dir.as_deref() {
        None | Some("") => {
            return Err(invalid(
                "tls.cert_dir",
                "must name the certificate folder when tls.listen is set".into(),
            ));
        }
        Some(d) => PathBuf::from(d),
    };
    let handshake_timeout = duration(
        "tls.handshake_timeout",
        &t.handshake_timeout,
        Duration::from_secs(10),
    )?;
    if handshake_timeout.is_zero() {
        return Err(invalid(
            "tls.handshake_timeout",
            "must be more than zero".into(),
        ));
    }
    let max_age = duration("tls.hsts_max_age", &t.hsts_max_age, Duration::ZERO)?;
    let hsts = (!max_age.is_zero()).then(|| Hsts {
        max_age,
        include_subdomains: t.hsts_include_subdomains.unwrap_or(false),
    });
    Ok((
        Some(Tls {
            listen,
            cert_dir,
            watch: t.watch.unwrap_or(true),
            handshake_timeout,
            redirect_http,
            hsts,
        }),
        http3,
    ))
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use std::time::Duration;

    #[test]
    fn tls_is_off_by_default_and_http3_on() {
        let c = Config::default();
        assert_eq!(c.tls, None);
        assert!(c.http3.enabled);
        assert!(!c.http3.early_data);
        assert_eq!(c.http3.alt_svc_max_age, Duration::from_secs(86_400));
    }

    #[test]
    fn tls_values_are_parsed() {
        let c = Config::parse(
            "[tls]\nlisten = \"127.0.0.1:8443\"\ncert_dir = \"certs\"\nredirect_http = true\nhsts_max_age = \"24h\"\n[http3]\nearly_data = true\nmax_streams = 8\n",
            None,
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.listen.port(), 8443);
        assert_eq!(t.cert_dir, std::path::Path::new("certs"));
        assert!(t.redirect_http && t.watch);
        assert_eq!(t.hsts.unwrap().max_age, Duration::from_secs(86_400));
        assert!(c.http3.early_data);
        assert_eq!(c.http3.max_streams, 8);
    }

    #[test]
    fn tls_errors_name_the_key() {
        let e = Config::parse("[tls]\nlisten = \"127.0.0.1:8443\"\n", None).unwrap_err();
        assert_eq!(e.key(), Some("tls.cert_dir"));
        let e = Config::parse("[tls]\nredirect_http = true\n", None).unwrap_err();
        assert_eq!(e.key(), Some("tls.redirect_http"));
        let e = Config::parse("[tls]\nlisten = \"nope\"\n", None).unwrap_err();
        assert_eq!(e.key(), Some("tls.listen"));
        let e = Config::parse("[http3]\nmax_streams = 0\n", None).unwrap_err();
        assert_eq!(e.key(), Some("http3.max_streams"));
    }
}
