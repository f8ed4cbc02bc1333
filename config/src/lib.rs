//! Configuration of the edge node: the TOML file format (serde) and the validated runtime
//! values it becomes. Text is parsed once into typed values (addresses, byte sizes,
//! durations); every error names the key, and the line when the file has one.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod reload;
mod tls;
mod units;
pub use reload::ReloadPlan;
pub use tls::{Hsts, Http3, Http3Section, Tls, TlsSection};
pub use units::{parse_duration, parse_size};

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{}line {line}: {message}", file_prefix(.file))]
    Syntax {
        file: Option<String>,
        line: usize,
        message: String,
    },
    #[error("{}{}`{key}`: {message}", file_prefix(.file), line_prefix(.line))]
    Invalid {
        file: Option<String>,
        key: String,
        line: Option<usize>,
        message: String,
    },
}

fn file_prefix(f: &Option<String>) -> String {
    f.as_ref().map(|f| format!("{f}: ")).unwrap_or_default()
}

fn line_prefix(l: &Option<usize>) -> String {
    l.map(|l| format!("line {l}: ")).unwrap_or_default()
}

impl ConfigError {
    /// The dotted key at fault, when the error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The 1-based line at fault, when the error has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. } => Some(*line),
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }
}

/// A byte size in the file: an integer, or a string with a unit (`"256MiB"`, `"10GB"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeText {
    Bytes(u64),
    Text(String),
}

/// A duration in the file: a string with a unit (`"5s"`, `"250ms"`, `"2m"`).
pub type DurationText = String;

/// The file, as written. Every section and key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub store: StoreSection,
    pub cache: CacheSection,
    pub pointers: PointerSection,
    pub http: HttpSection,
    pub origin: OriginSection,
    pub admin: AdminSection,
    pub tls: TlsSection,
    pub http3: Http3Section,
    pub log: LogSection,
    pub notify: NotifySection,
    pub tiers: TiersSection,
}

/// `[tiers]`: parent edges this node reads objects from, and serving objects to children.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TiersSection {
    pub parents: Option<Vec<String>>,
    pub serve_children: Option<bool>,
    pub token: Option<String>,
}

/// `[notify]`: pushed pointer changes over NATS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySection {
    pub nats: Option<String>,
    pub fallback_refresh_interval: Option<DurationText>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: Option<String>,
    pub level: Option<String>,
    pub access_log: Option<String>,
    pub access_log_queue: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginSection {
    pub connect_timeout: Option<DurationText>,
    pub first_byte_timeout: Option<DurationText>,
    pub total_timeout: Option<DurationText>,
    pub min_rate: Option<SizeText>,
    pub concurrency: Option<u64>,
    pub queue: Option<u64>,
    pub site_concurrency: Option<u64>,
    pub site_queue: Option<u64>,
    pub retry_attempts: Option<u64>,
    pub retry_budget: Option<f64>,
    pub breaker_failures: Option<u64>,
    pub breaker_failure_rate: Option<f64>,
    pub breaker_window: Option<DurationText>,
    pub breaker_open: Option<DurationText>,
    pub breaker_probes: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: Option<String>,
    pub default_site: Option<String>,
    pub header_read_timeout: Option<DurationText>,
    pub yield_after: Option<DurationText>,
    pub max_buffered: Option<SizeText>,
    pub send_timeout: Option<DurationText>,
    pub idle_timeout: Option<DurationText>,
    pub max_connections: Option<CountText>,
    pub max_header_bytes: Option<SizeText>,
}

/// A count that may also be `"auto"` (derived at start).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CountText {
    Count(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub location: Option<String>,
    pub s3: S3Section,
}

/// `[store.s3]`: how to reach an `s3://` store. Unset keys fall back to the standard
/// `AWS_*` variables; credentials come only from those.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub path_style: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    pub dir: Option<String>,
    pub memory_size: Option<SizeText>,
    pub memory_max_object: Option<SizeText>,
    pub disk_size: Option<SizeText>,
    pub disk_scrub_rate: Option<SizeText>,
    pub tree_size: Option<SizeText>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PointerSection {
    pub refresh_interval: Option<DurationText>,
    pub negative_ttl: Option<DurationText>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub cache_control_html: Option<String>,
    pub cache_control_other: Option<String>,
}

/// The validated configuration the node runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    /// The site for requests whose Host names no site.
    pub default_site: Option<String>,
    /// How long a client may take to send a request head (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A serving thread busy this long without going idle yields its CPU between two
    /// requests; zero: never.
    pub yield_after: Duration,
    /// What one client may hold of the node: buffers, time, connections, head bytes.
    pub limits: Limits,
    /// Where deploys come from: a path, `file://`, `http(s)://` or `s3://` URL.
    pub store: String,
    /// `[store.s3]`: endpoint, region and request style for an `s3://` store.
    pub store_s3: StoreS3,
    /// The disk tier's folder; `None` turns the disk tier off.
    pub cache_dir: Option<PathBuf>,
    /// Byte bound of the memory tier (blobs).
    pub memory_size: u64,
    /// Blobs larger than this skip the memory tier.
    pub memory_max_object: u64,
    /// Byte bound of the disk tier.
    pub disk_size: u64,
    /// Bytes per second the background scrub reads of the disk tier; zero: no scrub.
    pub disk_scrub_rate: u64,
    /// Byte bound of the decoded tree-node cache.
    pub tree_size: u64,
    /// How often cached pointers are refreshed from the store.
    pub refresh_interval: Duration,
    /// How long an unknown host or site is remembered as unknown.
    pub negative_ttl: Duration,
    pub cache_control_html: String,
    pub cache_control_other: String,
    pub origin: Origin,
    /// HTTPS on `tls.listen`; `None` when TLS is off.
    pub tls: Option<Tls>,
    pub http3: Http3,
    /// The admin listener; `None` turns it off.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for mutating admin endpoints (`EDGE_ADMIN_TOKEN` overrides).
    pub admin_token: Option<String>,
    pub log_format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `edge=debug,info`.
    pub log_level: String,
    pub access_log: AccessLog,
    pub access_log_queue: usize,
    /// `[notify]`: pushed pointer changes over NATS; `None` when `notify.nats` is unset.
    pub notify: Option<Notify>,
    /// `[tiers]`: parents to read objects from, and whether children may read from this node.
    pub tiers: Tiers,
}

/// `[tiers]`, validated.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tiers {
    /// Parent edges, `http(s)://host[:port][/path]` without a trailing slash, in the order
    /// given (each object's home parent is picked by rendezvous hashing, not by this order).
    pub parents: Vec<String>,
    /// Answer `GET /.edge/objects/<hash>` for child edges.
    pub serve_children: bool,
    /// The bearer token children must send, and that this node sends to its parents
    /// (`EDGE_TIERS_TOKEN` overrides it).
    pub token: Option<String>,
}

impl std::fmt::Debug for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiers")
            .field("parents", &self.parents)
            .field("serve_children", &self.serve_children)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The shortest tiers token accepted, from `tiers.token` or `EDGE_TIERS_TOKEN` (bytes).
pub const TIERS_TOKEN_MIN_LEN: usize = 16;

/// The most parents one node may have.
pub const MAX_PARENTS: usize = 64;

/// Checks a parent's URL (`http(s)://host[:port][/path]`: no user, query or fragment) and
/// returns it without a trailing slash.
pub fn parse_parent_url(text: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "{text:?} is not a parent URL like http://10.0.0.5:8080 or https://parent.example ({why})"
        )
    };
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or_else(|| bad("the scheme must be http:// or https://"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("it needs a host, and no user"));
    }
    if text.contains(['?', '#']) || text.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(bad("no query, fragment, spaces or non-ASCII"));
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(bad("no `.` or `..` segments"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().ok().filter(|&p| p != 0).is_none()
    {
        return Err(bad("the port must be 1 to 65535"));
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                })
        }
    };
    if !host_ok {
        return Err(bad("the host is not a name or an IP address"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// `[notify]`, validated: where pointer-change hints arrive, and how often to poll while
/// they cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// `nats://HOST:PORT` (the port defaults to 4222).
    pub nats: String,
    /// The polling interval while NATS is unreachable (when shorter than
    /// `pointers.refresh_interval`).
    pub fallback_refresh_interval: Duration,
}

/// The NATS port when a `nats://` URL names none.
pub const DEFAULT_NATS_PORT: u16 = 4222;

/// Checks a `nats://HOST[:PORT]` URL (a name, an IPv4 address or a bracketed IPv6 one, no
/// user, path or query) and returns it with the port made explicit.
pub fn parse_nats_url(text: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{text:?} is not a URL like nats://127.0.0.1:4222 ({why})");
    let rest = text
        .strip_prefix("nats://")
        .ok_or_else(|| bad("the scheme must be nats://"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) || authority.is_empty() {
        return Err(bad("only a host and a port"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port must be 1 to 65535"))?;
            (h, port)
        }
        _ => (authority, DEFAULT_NATS_PORT),
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                })
        }
    };
    if !host_ok {
        return Err(bad("the host is not a name or an IP address"));
    }
    Ok(format!("nats://{host}:{port}"))
}

/// `[store.s3]`, validated. `None`: not set in the file (the `AWS_*` variables decide).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreS3 {
    /// `http(s)://host[:port]`, without a path.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    pub path_style: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

/// Bounds on what clients may hold (`[server]` `max_buffered`, `send_timeout`,
/// `idle_timeout`, `max_connections`, `max_header_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Node-wide bound on response bytes buffered in memory on their way to clients.
    pub max_buffered: u64,
    /// A response that makes no progress this long is reset.
    pub send_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Open client connections (TCP) at most; `None`: derived from the descriptor limit.
    pub max_connections: Option<u64>,
    /// The largest request head accepted (431 beyond).
    pub max_header_bytes: u64,
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// The shortest admin token accepted, from `admin.token` or `EDGE_ADMIN_TOKEN` (bytes).
pub const ADMIN_TOKEN_MIN_LEN: usize = 16;

/// How the node treats its origin (see `[origin]` in config/edge.toml).
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    /// Base of the whole-transfer deadline; `size / min_rate` is added per object.
    pub total_timeout: Duration,
    /// Bytes per second.
    pub min_rate: u64,
    pub concurrency: usize,
    pub queue: usize,
    pub site_concurrency: usize,
    pub site_queue: usize,
    pub retry_attempts: u32,
    pub retry_budget: f64,
    pub breaker_failures: u32,
    pub breaker_failure_rate: f64,
    pub breaker_window: Duration,
    pub breaker_open: Duration,
    pub breaker_probes: u32,
}

impl Eq for Origin {}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `pointers.refresh_interval` when unset, and `notify.fallback_refresh_interval` too.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_STORE: &str = "store";
pub const DEFAULT_CACHE_DIR: &str = "edge-cache";
pub const DEFAULT_CACHE_CONTROL_HTML: &str = "public, max-age=0, must-revalidate";
pub const DEFAULT_CACHE_CONTROL_OTHER: &str = "public, max-age=300";

impl Default for Config {
    fn default() -> Self {
        Config::from_file(&FileConfig::default(), None, None)
            .expect("the built-in defaults are valid")
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Config::parse(&text, Some(&path.display().to_string()))
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: Option<&str>) -> Result<Config, ConfigError> {
        let parsed: FileConfig = toml::from_str(text).map_err(|e| {
            let file = file.map(str::to_owned);
            let message = e.message().to_owned();
            let Some(span) = e.span() else {
                return ConfigError::Syntax {
                    file,
                    line: 1,
                    message,
                };
            };
            let line = line_at(text, span.start);
            // A value of the wrong type or an unknown key: name the key the span falls in.
            match key_at(text, span.start) {
                Some(key) => ConfigError::Invalid {
                    file,
                    key,
                    line: Some(line),
                    message,
                },
                None => ConfigError::Syntax {
                    file,
                    line,
                    message,
                },
            }
        })?;
        Config::from_file(&parsed, Some(text), file)
    }

    /// Validates a parsed file. `text` (the source) lets errors carry line numbers.
    pub fn from_file(
        f: &FileConfig,
        text: Option<&str>,
        file: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.map(str::to_owned),
            key: key.to_owned(),
            line: text.and_then(|t| line_of(t, key)),
            message,
        };
        let size = |key: &str, v: &Option<SizeText>, default: u64| -> Result<u64, ConfigError> {
            match v {
                None => Ok(default),
                Some(SizeText::Bytes(b)) => Ok(*b),
                Some(SizeText::Text(t)) => parse_size(t).map_err(|m| invalid(key, m)),
            }
        };
        let duration =
            |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(t) => parse_duration(t).map_err(|m| invalid(key, m)),
                }
            };
        let listen_text = f.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "server.listen",
                format!("{listen_text:?} is not an address like 127.0.0.1:8080 or [::1]:8080"),
            )
        })?;
        let default_site = match f.server.default_site.as_deref() {
            None | Some("") => None,
            Some(s) => {
                if !valid_site(s) {
                    return Err(invalid(
                        "server.default_site",
                        format!("{s:?} is not a site name (lowercase letters, digits, `-`, `_`)"),
                    ));
                }
                Some(s.to_owned())
            }
        };
        let store = f
            .store
            .location
            .clone()
            .unwrap_or_else(|| DEFAULT_STORE.to_owned());
        if store.is_empty() {
            return Err(invalid("store.location", "must not be empty".into()));
        }
        let s3 = &f.store.s3;
        if let Some(e) = &s3.endpoint {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.trim_end_matches('/').contains('/') => {}
                _ => {
                    return Err(invalid(
                        "store.s3.endpoint",
                        format!(
                            "{e:?} is not an endpoint like https://s3.eu-west-1.amazonaws.com or http://127.0.0.1:9000 (scheme and host, no path)"
                        ),
                    ));
                }
            }
            if e.starts_with("http://") && s3.allow_http != Some(true) {
                return Err(invalid(
                    "store.s3.endpoint",
                    format!(
                        "{e:?} is plain http: set `store.s3.allow_http = true` (for a loopback or private endpoint only)"
                    ),
                ));
            }
        }
        if let Some(r) = &s3.region
            && (r.is_empty()
                || !r
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'))
        {
            return Err(invalid(
                "store.s3.region",
                format!("{r:?} is not a region like eu-west-1 or auto"),
            ));
        }
        let store_s3 = StoreS3 {
            endpoint: s3
                .endpoint
                .as_ref()
                .map(|e| e.trim_end_matches('/').to_owned()),
            region: s3.region.clone(),
            allow_http: s3.allow_http,
            path_style: s3.path_style,
        };
        let cache_dir = match f.cache.dir.as_deref() {
            None => Some(PathBuf::from(DEFAULT_CACHE_DIR)),
            Some("") => None,
            Some(d) => Some(PathBuf::from(d)),
        };
        let memory_size = size("cache.memory_size", &f.cache.memory_size, 256 << 20)?;
        let memory_max_object = size(
            "cache.memory_max_object",
            &f.cache.memory_max_object,
            4 << 20,
        )?;
        let disk_size = size("cache.disk_size", &f.cache.disk_size, 10 << 30)?;
        let disk_scrub_rate = size("cache.disk_scrub_rate", &f.cache.disk_scrub_rate, 8 << 20)?;
        let tree_size = size("cache.tree_size", &f.cache.tree_size, 64 << 20)?;
        if memory_max_object > memory_size {
            return Err(invalid(
                "cache.memory_max_object",
                format!(
                    "{memory_max_object} bytes is larger than cache.memory_size ({memory_size})"
                ),
            ));
        }
        if tree_size < 1 << 20 {
            return Err(invalid("cache.tree_size", "must be at least 1MiB".into()));
        }
        if cache_dir.is_some() && disk_size < 1 << 20 {
            return Err(invalid("cache.disk_size", "must be at least 1MiB".into()));
        }
        let refresh_interval = duration(
            "pointers.refresh_interval",
            &f.pointers.refresh_interval,
            DEFAULT_REFRESH_INTERVAL,
        )?;
        if refresh_interval < Duration::from_millis(100) {
            return Err(invalid(
                "pointers.refresh_interval",
                "must be at least 100ms".into(),
            ));
        }
        let negative_ttl = duration(
            "pointers.negative_ttl",
            &f.pointers.negative_ttl,
            Duration::from_secs(10),
        )?;
        let header_read_timeout = duration(
            "server.header_read_timeout",
            &f.server.header_read_timeout,
            Duration::from_secs(10),
        )?;
        if header_read_timeout.is_zero() {
            return Err(invalid(
                "server.header_read_timeout",
                "must be more than zero".into(),
            ));
        }
        let yield_after = duration(
            "server.yield_after",
            &f.server.yield_after,
            Duration::from_millis(1),
        )?;
        if yield_after > Duration::from_secs(1) {
            return Err(invalid(
                "server.yield_after",
                "must be at most 1s (\"0ms\" turns yielding off)".into(),
            ));
        }
        let limits = {
            let sv = &f.server;
            let max_buffered = size("server.max_buffered", &sv.max_buffered, 256 << 20)?;
            if max_buffered < 1 << 20 {
                return Err(invalid(
                    "server.max_buffered",
                    "must be at least 1MiB".into(),
                ));
            }
            let send_timeout = duration(
                "server.send_timeout",
                &sv.send_timeout,
                Duration::from_secs(60),
            )?;
            let idle_timeout = duration(
                "server.idle_timeout",
                &sv.idle_timeout,
                Duration::from_secs(60),
            )?;
            for (key, d) in [
                ("server.send_timeout", send_timeout),
                ("server.idle_timeout", idle_timeout),
            ] {
                if d < Duration::from_millis(100) {
                    return Err(invalid(key, "must be at least 100ms".into()));
                }
            }
            let max_connections = match &sv.max_connections {
                None => None,
                Some(CountText::Text(t)) if t == "auto" => None,
                Some(CountText::Count(n)) if (1..=10_000_000).contains(n) => Some(*n),
                Some(CountText::Count(n)) => {
                    return Err(invalid(
                        "server.max_connections",
                        format!("{n} is outside 1..=10000000"),
                    ));
                }
                Some(CountText::Text(t)) => {
                    return Err(invalid(
                        "server.max_connections",
                        format!("{t:?} is neither a count nor \"auto\""),
                    ));
                }
            };
            let max_header_bytes = size("server.max_header_bytes", &sv.max_header_bytes, 32 << 10)?;
            if !(8 << 10..=1 << 20).contains(&max_header_bytes) {
                return Err(invalid(
                    "server.max_header_bytes",
                    "must be between 8KiB and 1MiB".into(),
                ));
            }
            Limits {
                max_buffered,
                send_timeout,
                idle_timeout,
                max_connections,
                max_header_bytes,
            }
        };
        let header_value = |key: &str, v: &Option<String>, default: &str| {
            let v = v.clone().unwrap_or_else(|| default.to_owned());
            if v.is_empty() || !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(invalid(key, "must be non-empty printable ASCII".into()));
            }
            Ok(v)
        };
        let o = &f.origin;
        let count = |key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
            let v = v.unwrap_or(default);
            if v < min || v > max {
                return Err(invalid(key, format!("{v} is outside {min}..={max}")));
            }
            Ok(v)
        };
        let fraction = |key: &str, v: Option<f64>, default: f64| {
            let v = v.unwrap_or(default);
            if !(0.0..=1.0).contains(&v) {
                return Err(invalid(key, format!("{v} is outside 0.0..=1.0")));
            }
            Ok(v)
        };
        let origin = Origin {
            connect_timeout: duration(
                "origin.connect_timeout",
                &o.connect_timeout,
                Duration::from_secs(3),
            )?,
            first_byte_timeout: duration(
                "origin.first_byte_timeout",
                &o.first_byte_timeout,
                Duration::from_secs(5),
            )?,
            total_timeout: duration(
                "origin.total_timeout",
                &o.total_timeout,
                Duration::from_secs(10),
            )?,
            min_rate: size("origin.min_rate", &o.min_rate, 1 << 20)?.max(1),
            concurrency: count("origin.concurrency", o.concurrency, 256, 1, 100_000)? as usize,
            queue: count("origin.queue", o.queue, 1024, 0, 1_000_000)? as usize,
            site_concurrency: count(
                "origin.site_concurrency",
                o.site_concurrency,
                128,
                1,
                100_000,
            )? as usize,
            site_queue: count("origin.site_queue", o.site_queue, 256, 0, 1_000_000)? as usize,
            retry_attempts: count("origin.retry_attempts", o.retry_attempts, 3, 1, 10)? as u32,
            retry_budget: fraction("origin.retry_budget", o.retry_budget, 0.2)?,
            breaker_failures: count(
                "origin.breaker_failures",
                o.breaker_failures,
                5,
                1,
                1_000_000,
            )? as u32,
            breaker_failure_rate: fraction(
                "origin.breaker_failure_rate",
                o.breaker_failure_rate,
                0.5,
            )?,
            breaker_window: duration(
                "origin.breaker_window",
                &o.breaker_window,
                Duration::from_secs(10),
            )?,
            breaker_open: duration(
                "origin.breaker_open",
                &o.breaker_open,
                Duration::from_secs(5),
            )?,
            breaker_probes: count("origin.breaker_probes", o.breaker_probes, 3, 1, 1000)? as u32,
        };
        if origin.first_byte_timeout.is_zero() {
            return Err(invalid(
                "origin.first_byte_timeout",
                "must be more than zero".into(),
            ));
        }
        let admin_listen = match f.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN) {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "admin.listen",
                    format!("{a:?} is not an address like 127.0.0.1:9901"),
                )
            })?),
        };
        let admin_token = f.admin.token.clone().filter(|t| !t.is_empty());
        if admin_token
            .as_ref()
            .is_some_and(|t| t.len() < ADMIN_TOKEN_MIN_LEN)
        {
            return Err(invalid(
                "admin.token",
                format!("must be at least {ADMIN_TOKEN_MIN_LEN} characters"),
            ));
        }
        let log_format = match f.log.format.as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?} is not one of \"pretty\", \"json\""),
                ));
            }
        };
        let log_level = f.log.level.clone().unwrap_or_else(|| "info".to_owned());
        if log_level.is_empty() {
            return Err(invalid("log.level", "must not be empty".into()));
        }
        let access_log = match f.log.access_log.as_deref().unwrap_or("off") {
            "off" | "" => AccessLog::Off,
            "stdout" | "-" => AccessLog::Stdout,
            path => AccessLog::File(PathBuf::from(path)),
        };
        let access_log_queue = count(
            "log.access_log_queue",
            f.log.access_log_queue,
            65_536,
            1,
            10_000_000,
        )? as usize;
        let (tls, http3) = tls::from_file(&f.tls, &f.http3, &invalid)?;
        let fallback_refresh_interval = duration(
            "notify.fallback_refresh_interval",
            &f.notify.fallback_refresh_interval,
            DEFAULT_REFRESH_INTERVAL,
        )?;
        if fallback_refresh_interval < Duration::from_millis(100) {
            return Err(invalid(
                "notify.fallback_refresh_interval",
                "must be at least 100ms".into(),
            ));
        }
        let notify = match f.notify.nats.as_deref() {
            None | Some("") => None,
            Some(url) => Some(Notify {
                nats: parse_nats_url(url).map_err(|m| invalid("notify.nats", m))?,
                fallback_refresh_interval,
            }),
        };
        let tiers = {
            let t = &f.tiers;
            let mut parents: Vec<String> = Vec::new();
            for p in t.parents.iter().flatten() {
                let url = parse_parent_url(p).map_err(|m| invalid("tiers.parents", m))?;
                if parents.contains(&url) {
                    return Err(invalid("tiers.parents", format!("{url:?} is listed twice")));
                }
                parents.push(url);
            }
            if parents.len() > MAX_PARENTS {
                return Err(invalid(
                    "tiers.parents",
                    format!("{} parents: at most {MAX_PARENTS}", parents.len()),
                ));
            }
            let token = t.token.clone().filter(|t| !t.is_empty());
            if let Some(tok) = &token {
                check_tiers_token(tok).map_err(|m| invalid("tiers.token", m))?;
            }
            Tiers {
                parents,
                serve_children: t.serve_children.unwrap_or(false),
                token,
            }
        };
        Ok(Config {
            tiers,
            tls,
            http3,
            admin_listen,
            admin_token,
            log_format,
            log_level,
            access_log,
            access_log_queue,
            notify,
            origin,
            listen,
            default_site,
            header_read_timeout,
            yield_after,
            limits,
            store,
            store_s3,
            cache_dir,
            memory_size,
            memory_max_object,
            disk_size,
            disk_scrub_rate,
            tree_size,
            refresh_interval,
            negative_ttl,
            cache_control_html: header_value(
                "http.cache_control_html",
                &f.http.cache_control_html,
                DEFAULT_CACHE_CONTROL_HTML,
            )?,
            cache_control_other: header_value(
                "http.cache_control_other",
                &f.http.cache_control_other,
                DEFAULT_CACHE_CONTROL_OTHER,
            )?,
        })
    }
}

/// What a tiers token must be (from `tiers.token` or `EDGE_TIERS_TOKEN`): at least
/// [`TIERS_TOKEN_MIN_LEN`] visible ASCII characters (it travels in an `Authorization` header).
pub fn check_tiers_token(token: &str) -> Result<(), String> {
    if token.len() < TIERS_TOKEN_MIN_LEN {
        return Err(format!("must be at least {TIERS_TOKEN_MIN_LEN} characters"));
    }
    if !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("must be visible ASCII (no spaces)".into());
    }
    Ok(())
}

impl Config {
    /// A listener children could reach from another machine while `tiers.serve_children`
    /// is on: the first of `server.listen` and `tls.listen` not on a loopback address. A
    /// token is then required.
    pub fn children_listener_exposed(&self) -> Option<SocketAddr> {
        if !self.tiers.serve_children {
            return None;
        }
        std::iter::once(self.listen)
            .chain(self.tls.as_ref().map(|t| t.listen))
            .find(|a| !a.ip().is_loopback())
    }
}

fn valid_site(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// The 1-based line where dotted `key` (`section.name`) is set in `text`, if it is: from the
/// span toml's parser gives the key, so dotted keys and inline tables are found too.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut segments = key.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (k, v) = table.get_key_value(segment)?;
        if segments.peek().is_none() {
            return Some(line_at(text, k.span().start));
        }
        table = v.get_ref().as_table()?;
    }
    None
}

/// The 1-based line of byte `offset` in `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key whose key or value span holds byte `offset`: the innermost one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    fn walk(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
        for (k, v) in table.iter() {
            let inside = |s: std::ops::Range<usize>| s.contains(&offset);
            let nested = v.get_ref().as_table();
            if inside(k.span()) || inside(v.span()) {
                path.push(k.get_ref().to_string());
                if let Some(t) = nested {
                    walk(t, offset, path);
                }
                return true;
            }
            // A `[section]` table's own span is its header; its keys lie after it.
            if let Some(t) = nested {
                path.push(k.get_ref().to_string());
                if walk(t, offset, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    walk(doc.get_ref(), offset, &mut path).then(|| path.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_as_is() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.memory_size, 256 << 20);
        assert_eq!(c.refresh_interval, Duration::from_secs(5));
        assert_eq!(c.cache_dir.as_deref(), Some(Path::new(DEFAULT_CACHE_DIR)));
        assert_eq!(Config::parse("", None).unwrap(), c);
    }

    #[test]
    fn server_limits_parse_and_refuse_bad_values() {
        let d = Config::default().limits;
        assert_eq!(d.max_buffered, 256 << 20);
        assert_eq!(d.send_timeout, Duration::from_secs(60));
        assert_eq!(d.idle_timeout, Duration::from_secs(60));
        assert_eq!(d.max_connections, None);
        assert_eq!(d.max_header_bytes, 32 << 10);
        let c = Config::parse(
            "[server]\nmax_buffered = \"16MiB\"\nsend_timeout = \"2s\"\nidle_timeout = \"500ms\"\nmax_connections = 900\nmax_header_bytes = \"8KiB\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.limits.max_buffered, 16 << 20);
        assert_eq!(c.limits.send_timeout, Duration::from_secs(2));
        assert_eq!(c.limits.idle_timeout, Duration::from_millis(500));
        assert_eq!(c.limits.max_connections, Some(900));
        assert_eq!(c.limits.max_header_bytes, 8 << 10);
        for (text, key) in [
            ("max_buffered = \"1KiB\"", "server.max_buffered"),
            ("send_timeout = \"0s\"", "server.send_timeout"),
            ("idle_timeout = \"forever\"", "server.idle_timeout"),
            ("max_connections = 0", "server.max_connections"),
            ("max_connections = \"lots\"", "server.max_connections"),
            ("max_header_bytes = \"2MiB\"", "server.max_header_bytes"),
        ] {
            let e = Config::parse(&format!("[server]\n{text}\n"), Some("e.toml")).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}");
            assert_eq!(e.line(), Some(2), "{text}");
        }
    }

    #[test]
    fn values_are_parsed() {
        let c = Config::parse(
            "[server]\nlisten = \"[::1]:9000\"\ndefault_site = \"docs\"\n[cache]\ndir = \"\"\nmemory_size = \"64MiB\"\nmemory_max_object = 1024\n[pointers]\nrefresh_interval = \"250ms\"\n",
            None,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "[::1]:9000");
        assert_eq!(c.default_site.as_deref(), Some("docs"));
        assert_eq!(c.cache_dir, None);
        assert_eq!(c.memory_size, 64 << 20);
        assert_eq!(c.memory_max_object, 1024);
        assert_eq!(c.refresh_interval, Duration::from_millis(250));
        assert_eq!(c.yield_after, Duration::from_millis(1));
        let off = Config::parse("[server]\nyield_after = \"0ms\"\n", None).unwrap();
        assert_eq!(off.yield_after, Duration::ZERO);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let e =
            Config::parse("[cache]\n\nmemory_size = \"lots\"\n", Some("edge.toml")).unwrap_err();
        assert_eq!(e.key(), Some("cache.memory_size"));
        let msg = e.to_string();
        assert!(
            msg.starts_with("edge.toml: line 3: `cache.memory_size`"),
            "{msg}"
        );

        let e = Config::parse("[server]\nlisten = \"nope\"\n", None).unwrap_err();
        assert_eq!(e.key(), Some("server.listen"));

        let e = Config::parse("[server]\nlisten = \"x\"\nbogus = 1\n", None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 3") && msg.contains("bogus"), "{msg}");

        let e = Config::parse("[pointers]\nrefresh_interval = \"1ms\"\n", None).unwrap_err();
        assert_eq!(e.key(), Some("pointers.refresh_interval"));

        let e = Config::parse("[cache]\nmemory_max_object = \"1GiB\"\n", None).unwrap_err();
        assert_eq!(e.key(), Some("cache.memory_max_object"));

        let e = Config::parse("[server]\ndefault_site = \"Bad Site\"\n", None).unwrap_err();
        assert_eq!(e.key(), Some("server.default_site"));

        // A value of the wrong type in a nested table: the key and its line, from the span.
        let e = Config::parse(
            "[server]\nlisten = \"127.0.0.1:1\"\n\n[origin]\nconcurrency = 8\nqueue = \"lots\"\n",
            Some("edge.toml"),
        )
        .unwrap_err();
        assert_eq!(e.key(), Some("origin.queue"), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("edge.toml: line 6: `origin.queue`: invalid type"),
            "{msg}"
        );
        // The same written as a dotted key and as an inline table, which no line search of
        // `[section]` headers would find.
        let e = Config::parse("\norigin.queue = true\n", None).unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("origin.queue"), Some(2)), "{e}");
        let e = Config::parse("cache = { dir = \"d\",\n  tree_size = [1] }\n", None).unwrap_err();
        assert_eq!(
            (e.key(), e.line()),
            (Some("cache.tree_size"), Some(2)),
            "{e}"
        );

        // An unknown key, nested: named with its section, on its own line.
        let e = Config::parse("[tls]\nlisten = \"127.0.0.1:0\"\n\nhsts = 1\n", None).unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("tls.hsts"), Some(4)), "{e}");
        assert!(e.to_string().contains("unknown field `hsts`"), "{e}");

        // A validation error after parsing finds its line from the spans too.
        let e = Config::parse("log.level = \"\"\n[cache]\n", None).unwrap_err();
        assert_eq!((e.key(), e.line()), (Some("log.level"), Some(1)), "{e}");

        // Broken syntax has no key, only a line.
        let e = Config::parse("[cache]\n\nmemory_size = = 1\n", None).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{e:?}");

        for bad in ["2s", "0", "1us"] {
            let text = format!("[server]\nyield_after = \"{bad}\"\n");
            let e = Config::parse(&text, None).unwrap_err();
            assert_eq!(e.key(), Some("server.yield_after"), "{bad}");
        }
    }
}

#[cfg(test)]
mod notify_section {
    use std::time::Duration;

    use super::{Config, parse_nats_url};

    #[test]
    fn nats_urls() {
        for (text, want) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://127.0.0.1", "nats://127.0.0.1:4222"),
            ("nats://nats.internal:5000/", "nats://nats.internal:5000"),
            ("nats://[::1]:4333", "nats://[::1]:4333"),
            ("nats://[::1]", "nats://[::1]:4222"),
        ] {
            assert_eq!(parse_nats_url(text).as_deref(), Ok(want), "{text}");
        }
        for bad in [
            "",
            "127.0.0.1:4222",
            "http://127.0.0.1:4222",
            "nats://",
            "nats://:4222",
            "nats://h:0",
            "nats://h:99999",
            "nats://h:port",
            "nats://user:pw@h:4222",
            "nats://h:4222/path",
            "nats://h:4222?x=1",
            "nats://bad host",
            "nats://::1",
            "nats://[nope]:1",
        ] {
            assert!(parse_nats_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_section_is_read_and_checked() {
        assert_eq!(Config::default().notify, None);
        let c = Config::parse(
            "[pointers]\nrefresh_interval = \"60s\"\n[notify]\nnats = \"nats://127.0.0.1:4333\"\n",
            None,
        )
        .unwrap();
        let n = c.notify.unwrap();
        assert_eq!(n.nats, "nats://127.0.0.1:4333");
        assert_eq!(n.fallback_refresh_interval, Duration::from_secs(5));
        let c = Config::parse(
            "[notify]\nnats = \"nats://h\"\nfallback_refresh_interval = \"1s\"\n",
            None,
        )
        .unwrap();
        assert_eq!(
            c.notify.unwrap().fallback_refresh_interval,
            Duration::from_secs(1)
        );
        // Empty: off, as unset.
        assert_eq!(
            Config::parse("[notify]\nnats = \"\"\n", None)
                .unwrap()
                .notify,
            None
        );
        for (text, key) in [
            ("[notify]\nnats = \"127.0.0.1:4222\"\n", "notify.nats"),
            ("[notify]\nnats = 4222\n", "notify.nats"),
            (
                "[notify]\nnats = \"nats://h\"\nfallback_refresh_interval = \"10ms\"\n",
                "notify.fallback_refresh_interval",
            ),
            ("[notify]\nsubject = \"x\"\n", "notify.subject"),
        ] {
            let e = Config::parse(text, Some("edge.toml")).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().contains("edge.toml: line"), "{e}");
        }
    }
}

#[cfg(test)]
mod example_file {
    #[test]
    fn shipped_example_is_valid_and_matches_the_defaults() {
        let text = include_str!("../edge.toml");
        let parsed = super::Config::parse(text, Some("config/edge.toml")).unwrap();
        // The example's empty default_site means "none", as the default does.
        assert_eq!(parsed, super::Config::default());
    }

    #[test]
    fn store_s3_keys_are_read_and_checked() {
        let c = super::Config::parse(
            "[store]\nlocation = \"s3://b/p\"\n[store.s3]\nendpoint = \"http://127.0.0.1:9000/\"\nregion = \"auto\"\nallow_http = true\npath_style = false\n",
            None,
        )
        .unwrap();
        assert_eq!(c.store, "s3://b/p");
        assert_eq!(
            c.store_s3,
            super::StoreS3 {
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("auto".into()),
                allow_http: Some(true),
                path_style: Some(false),
            }
        );
        for (text, key) in [
            (
                "[store.s3]\nendpoint = \"127.0.0.1:9000\"\n",
                "store.s3.endpoint",
            ),
            (
                "[store.s3]\nendpoint = \"http://h/x\"\nallow_http = true\n",
                "store.s3.endpoint",
            ),
            ("[store.s3]\nendpoint = \"http://h\"\n", "store.s3.endpoint"),
            ("[store.s3]\nregion = \"EU West\"\n", "store.s3.region"),
            ("[store.s3]\nbucket = \"b\"\n", "store.s3.bucket"),
        ] {
            let e = super::Config::parse(text, Some("edge.toml")).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().contains("line"), "{e}");
        }
    }
}

#[cfg(test)]
mod tiers_section {
    use super::{Config, parse_parent_url};

    #[test]
    fn parent_urls() {
        for (text, want) in [
            ("http://10.0.0.5:8080", "http://10.0.0.5:8080"),
            ("http://10.0.0.5:8080/", "http://10.0.0.5:8080"),
            ("https://parent.example", "https://parent.example"),
            (
                "https://parent.example/shield/",
                "https://parent.example/shield",
            ),
            ("http://[::1]:8080", "http://[::1]:8080"),
        ] {
            assert_eq!(parse_parent_url(text).as_deref(), Ok(want), "{text}");
        }
        for bad in [
            "",
            "10.0.0.5:8080",
            "ftp://h",
            "s3://bucket/p",
            "http://",
            "http://user@h",
            "http://h:0",
            "http://h:99999",
            "http://h?x=1",
            "http://h/#x",
            "http://bad host",
            "http://h/../x",
            "http://::1",
        ] {
            assert!(parse_parent_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_section_is_read_and_checked() {
        let d = Config::default().tiers;
        assert!(d.parents.is_empty() && !d.serve_children && d.token.is_none());
        let c = Config::parse(
            "[tiers]\nparents = [\"http://127.0.0.1:8081/\", \"https://p2.example\"]\nserve_children = true\ntoken = \"0123456789abcdef\"\n",
            None,
        )
        .unwrap();
        assert_eq!(
            c.tiers.parents,
            ["http://127.0.0.1:8081", "https://p2.example"]
        );
        assert!(c.tiers.serve_children);
        assert_eq!(c.tiers.token.as_deref(), Some("0123456789abcdef"));
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "the token stays out of Debug"
        );
        for (text, key, line) in [
            ("[tiers]\nparents = [\"10.0.0.5:80\"]\n", "tiers.parents", 2),
            (
                "[tiers]\n\nparents = [\"http://a\", \"http://a/\"]\n",
                "tiers.parents",
                3,
            ),
            ("[tiers]\nparents = \"http://a\"\n", "tiers.parents", 2),
            ("[tiers]\ntoken = \"short\"\n", "tiers.token", 2),
            (
                "[tiers]\ntoken = \"has spaces in it, sixteen+\"\n",
                "tiers.token",
                2,
            ),
            (
                "[tiers]\nserve_children = \"yes\"\n",
                "tiers.serve_children",
                2,
            ),
            ("[tiers]\nchildren = true\n", "tiers.children", 2),
        ] {
            let e = Config::parse(text, Some("edge.toml")).unwrap_err();
            assert_eq!((e.key(), e.line()), (Some(key), Some(line)), "{text}: {e}");
            assert!(e.to_string().starts_with("edge.toml: line"), "{e}");
        }
    }

    #[test]
    fn an_exposed_listener_is_named_only_while_serving_children() {
        let c = Config::parse("[server]\nlisten = \"0.0.0.0:8080\"\n", None).unwrap();
        assert_eq!(c.children_listener_exposed(), None, "serve_children is off");
        let c = Config::parse(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[tiers]\nserve_children = true\n",
            None,
        )
        .unwrap();
        assert_eq!(
            c.children_listener_exposed()
                .map(|a| a.to_string())
                .as_deref(),
            Some("0.0.0.0:8080")
        );
        let c = Config::parse("[tiers]\nserve_children = true\n", None).unwrap();
        assert_eq!(c.children_listener_exposed(), None, "loopback only");
    }
}
