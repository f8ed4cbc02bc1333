//! Site rules: `_redirects` and `_headers` at a deploy's root, in the format Netlify defined
//! (and Cloudflare Pages reads), checked and compiled at publish time.
//!
//! `_redirects`: one rule a line, `FROM [KEY=VALUE...] TO [STATUS][!]`; `#` starts a comment.
//! FROM is a path whose segments are literal, `:name` placeholders (one segment) or a final
//! `*` (the rest of the path, possibly empty: `:splat`). KEY=VALUE pairs match query
//! parameters (`VALUE` literal, or `:name` to capture). TO is a path inside the deploy or an
//! `http(s)://` URL, in which `:name` and `:splat` are replaced. STATUS is 301 (the default),
//! 302, 303, 307 or 308 (redirects), 200 (a rewrite: the target's content under the request's
//! URL) or 404 (the target's content with status 404). A rule applies only when no file
//! matches the path (shadowing), unless its status ends in `!`. Rules are tried top to bottom;
//! the first that matches wins. Trailing slashes do not matter when matching.
//!
//! `_headers`: a path pattern (as FROM above) on a line of its own, then indented
//! `Name: value` lines. Every block whose pattern matches adds its headers; a name set by
//! several blocks gets their values joined with `, `. Headers that belong to the transport or
//! to the edge's own framing (hop-by-hop ones, `Content-Length`, `Content-Encoding`, ...) are
//! refused.
//!
//! Errors name the file, the line and the reason. The compiled form ([`Rules`], JSON) is an
//! ordinary content-addressed object referenced from the root tree node; the edge decodes it
//! once per deploy and matches with [`Rules::redirect`] and [`Rules::headers`], which are pure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The rules files, at the root of the published folder.
pub const REDIRECTS: &str = "_redirects";
pub const HEADERS: &str = "_headers";
/// The compiled format's version.
const FORMAT: u32 = 1;
/// The largest rules file read (the edge holds the compiled rules in memory).
pub const MAX_FILE: u64 = 8 << 20;

/// A rules file line that cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {why}", file.display())]
pub struct RulesError {
    pub file: PathBuf,
    /// 1-based; 0 when the file as a whole is at fault.
    pub line: usize,
    pub why: String,
}

/// One path segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seg {
    Lit(String),
    Param(String),
}

/// A path pattern: segments, and whether a final `*` takes the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pattern {
    pub segs: Vec<Seg>,
    pub splat: bool,
}

/// A query parameter condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryCond {
    pub key: String,
    /// `None`: any value, captured under `capture`.
    pub value: Option<String>,
    pub capture: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub from: Pattern,
    pub query: Vec<QueryCond>,
    pub to: String,
    pub status: u16,
    pub force: bool,
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderRule {
    pub path: Pattern,
    pub headers: Vec<(String, String)>,
    pub line: u32,
}

/// A site's compiled rules, with the indexes the edge matches through (built on decode).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rules {
    format: u32,
    pub redirects: Vec<Redirect>,
    pub headers: Vec<HeaderRule>,
    #[serde(skip)]
    index: Index,
}

/// Rule numbers by the literal first segment of their pattern, and those whose first segment
/// is not literal; each list in file order. Candidates for a path are the merge of its first
/// segment's list and the wild list, so a site with thousands of rules tries a few.
#[derive(Debug, Clone, Default)]
struct Index {
    redirects: FirstSeg,
    forced: FirstSeg,
    headers: FirstSeg,
}

#[derive(Debug, Clone, Default)]
struct FirstSeg {
    by_first: HashMap<String, Vec<u32>>,
    wild: Vec<u32>,
}

impl FirstSeg {
    fn build<'a>(patterns: impl Iterator<Item = (usize, &'a Pattern)>) -> FirstSeg {
        let mut out = FirstSeg::default();
        for (i, p) in patterns {
            match p.segs.first() {
                Some(Seg::Lit(s)) => out.by_first.entry(s.clone()).or_default().push(i as u32),
                _ => out.wild.push(i as u32),
            }
        }
        out
    }

    /// Rule numbers that may match `segs`, in file order.
    fn candidates(&self, segs: &[&str]) -> impl Iterator<Item = usize> + '_ {
        let lit: &[u32] = segs
            .first()
            .and_then(|s| self.by_first.get(*s))
            .map_or(&[], |v| v.as_slice());
        let (mut a, mut b) = (lit.iter().peekable(), self.wild.iter().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x < y => a.next().map(|&i| i as usize),
            (Some(_), Some(_)) | (None, Some(_)) => b.next().map(|&i| i as usize),
            (Some(_), None) => a.next().map(|&i| i as usize),
            (None, None) => None,
        })
    }

    fn is_empty(&self) -> bool {
        self.by_first.is_empty() && self.wild.is_empty()
    }
}

/// What a matching redirect rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub status: u16,
    /// The target with placeholders replaced: a percent-encoded path (with the request's
    /// query appended for redirects whose rule neither matched nor set a query), or a URL.
    pub to: String,
    /// The target is served in place (200, 404) rather than redirected to.
    pub rewrite: bool,
    /// The rule's line in `_redirects`.
    pub line: u32,
}

/// The answer of [`Rules::redirect`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub action: Option<Action>,
    /// A rule that looked at the query string was tried: the answer may differ for another
    /// query, so it must not be remembered per path alone.
    pub query_dependent: bool,
}

impl Pattern {
    /// Matches decoded path segments; returns the captures (`splat` last) on success.
    fn matches(&self, segs: &[&str]) -> Option<Vec<(&str, String)>> {
        if segs.len() < self.segs.len() || (!self.splat && segs.len() != self.segs.len()) {
            return None;
        }
        let mut caps = Vec::new();
        for (p, s) in self.segs.iter().zip(segs) {
            match p {
                Seg::Lit(l) if l == s => {}
                Seg::Lit(_) => return None,
                Seg::Param(name) => caps.push((name.as_str(), encode_segment(s))),
            }
        }
        if self.splat {
            let rest: Vec<String> = segs[self.segs.len()..]
                .iter()
                .map(|s| encode_segment(s))
                .collect();
            caps.push(("splat", rest.join("/")));
        }
        Some(caps)
    }
}

impl Rules {
    /// Decodes a compiled rules object and builds its indexes.
    pub fn decode(bytes: &[u8]) -> Result<Rules, serde_json::Error> {
        let mut r: Rules = serde_json::from_slice(bytes)?;
        if r.format != FORMAT {
            return Err(serde::de::Error::custom(format!(
                "unknown rules format {}",
                r.format
            )));
        }
        r.index();
        Ok(r)
    }

    /// The canonical bytes of these rules.
    pub fn encode(&self) -> Bytes {
        // Serializing plain structs of strings and numbers to memory cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    fn index(&mut self) {
        self.index = Index {
            redirects: FirstSeg::build(self.redirects.iter().map(|r| &r.from).enumerate()),
            forced: FirstSeg::build(
                self.redirects
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.force)
                    .map(|(i, r)| (i, &r.from)),
            ),
            headers: FirstSeg::build(self.headers.iter().map(|h| &h.path).enumerate()),
        };
    }

    pub fn is_empty(&self) -> bool {
        self.redirects.is_empty() && self.headers.is_empty()
    }

    /// Whether any forced rule's path matches `segs` (whatever the query): when none does, a
    /// file found at the path is served whatever the query, and may be remembered.
    pub fn may_force(&self, segs: &[&str]) -> bool {
        self.index
            .forced
            .candidates(segs)
            .any(|i| self.redirects[i].from.matches(segs).is_some())
    }

    /// The first rule that applies to `segs` (decoded path segments) and `query` (the raw
    /// query string): when `file_exists`, only forced rules are tried (shadowing).
    pub fn redirect(&self, segs: &[&str], query: Option<&str>, file_exists: bool) -> Decision {
        let mut out = Decision::default();
        let index = if file_exists {
            &self.index.forced
        } else {
            &self.index.redirects
        };
        if index.is_empty() {
            return out;
        }
        let params = query.map(parse_query).unwrap_or_default();
        for i in index.candidates(segs) {
            let r = &self.redirects[i];
            let Some(mut caps) = r.from.matches(segs) else {
                continue;
            };
            if !r.query.is_empty() {
                out.query_dependent = true;
                let mut ok = true;
                for c in &r.query {
                    match params.iter().find(|(k, _)| *k == c.key) {
                        Some((_, v)) if c.value.as_ref().is_none_or(|want| want == v) => {
                            if let Some(name) = &c.capture {
                                caps.push((name.as_str(), encode_query_value(v)));
                            }
                        }
                        _ => ok = false,
                    }
                }
                if !ok {
                    continue;
                }
            }
            let rewrite = matches!(r.status, 200 | 404);
            let mut to = substitute(&r.to, &caps);
            if !rewrite && r.query.is_empty() && !to.contains('?') {
                out.query_dependent = true;
                if let Some(q) = query.filter(|q| !q.is_empty()) {
                    to.push('?');
                    to.push_str(q);
                }
            }
            out.action = Some(Action {
                status: r.status,
                to,
                rewrite,
                line: r.line,
            });
            return out;
        }
        out
    }

    /// The headers `_headers` sets for a path, in file order, values of a repeated name
    /// joined with `, ` (names compared case-insensitively, kept as first written).
    pub fn headers(&self, segs: &[&str]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for i in self.index.headers.candidates(segs) {
            let rule = &self.headers[i];
            if rule.path.matches(segs).is_none() {
                continue;
            }
            for (name, value) in &rule.headers {
                match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    Some((_, v)) => {
                        v.push_str(", ");
                        v.push_str(value);
                    }
                    None => out.push((name.clone(), value.clone())),
                }
            }
        }
        out
    }
}

/// `key=value` pairs of a raw query, percent-decoded (`+` is a space).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn decode_component(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Percent-encodes a decoded path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

fn encode_query_value(s: &str) -> String {
    encode_segment(s)
}

/// Is `b` a character of a placeholder name (after its first, a letter)?
fn name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The `:name` placeholders in a target, in order.
fn placeholders(to: &str) -> Vec<&str> {
    let b = to.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':' && b.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && name_char(b[end]) {
                end += 1;
            }
            out.push(&to[start..end]);
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Replaces `:name` in `to` with its capture (captures are already percent-encoded).
fn substitute(to: &str, caps: &[(&str, String)]) -> String {
    let b = to.as_bytes();
    let mut out = String::with_capacity(to.len() + 16);
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] == b':' && b.get(i + 1).is_some_and(|c| c.is_ascii_alphabetic()) {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && name_char(b[end]) {
                end += 1;
            }
            if let Some((_, v)) = caps.iter().rev().find(|(n, _)| *n == &to[start..end]) {
                out.push_str(&to[copied..i]);
                out.push_str(v);
                copied = end;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out.push_str(&to[copied..]);
    out
}

// ---- parsing -------------------------------------------------------------------------------

struct Ctx<'a> {
    file: &'a Path,
    line: usize,
}

impl Ctx<'_> {
    fn err(&self, why: impl Into<String>) -> RulesError {
        RulesError {
            file: self.file.to_owned(),
            line: self.line,
            why: why.into(),
        }
    }
}

/// Parses a path pattern (`/a/:b/*`).
fn parse_pattern(cx: &Ctx<'_>, raw: &str, what: &str) -> Result<Pattern, RulesError> {
    if raw.starts_with("http://") || raw.starts_with("https://") || raw.starts_with("//") {
        return Err(cx.err(format!(
            "{what} {raw:?}: rules for other host names are not supported; start the path with `/`"
        )));
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(cx.err(format!("{what} {raw:?} must start with `/`")));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !query.is_empty() {
        return Err(cx.err(format!(
            "{what} {raw:?}: write query conditions as separate KEY=VALUE fields"
        )));
    }
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut segs = Vec::with_capacity(parts.len());
    let mut splat = false;
    for (k, part) in parts.iter().enumerate() {
        if *part == "*" {
            if k + 1 != parts.len() {
                return Err(cx.err(format!("{what} {raw:?}: `*` may only be the last segment")));
            }
            splat = true;
        } else if part.contains('*') {
            return Err(cx.err(format!(
                "{what} {raw:?}: `*` must be a whole segment (as in `/blog/*`)"
            )));
        } else if let Some(name) = part.strip_prefix(':') {
            if name.is_empty() || !name.bytes().all(name_char) || name == "splat" {
                return Err(cx.err(format!("{what} {raw:?}: bad placeholder `{part}`")));
            }
            segs.push(Seg::Param(name.to_owned()));
        } else {
            let decoded = percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map_err(|_| cx.err(format!("{what} {raw:?}: not UTF-8 once decoded")))?;
            if decoded == "." || decoded == ".." || decoded.contains('/') || decoded.contains('\0')
            {
                return Err(cx.err(format!("{what} {raw:?}: bad segment `{part}`")));
            }
            segs.push(Seg::Lit(decoded.into_owned()));
        }
    }
    Ok(Pattern { segs, splat })
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses `_redirects` text (`file` names it in errors).
pub fn parse_redirects(file: &Path, text: &str) -> Result<Vec<Redirect>, RulesError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let cx = Ctx { file, line: n + 1 };
        // `#` starts a comment at the start of a field (a URL's fragment stays a fragment).
        let fields: Vec<&str> = line
            .split_whitespace()
            .take_while(|f| !f.starts_with('#'))
            .collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 2 {
            return Err(cx.err("expected `FROM TO [STATUS]`"));
        }
        let from = parse_pattern(&cx, fields[0], "FROM")?;
        let mut query = Vec::new();
        let mut k = 1;
        // Query conditions: `key=value` fields before the target (the target starts with
        // `/` or a scheme, never contains `=` before that).
        while k < fields.len() && !fields[k].starts_with('/') && !fields[k].contains("://") {
            let Some((key, value)) = fields[k].split_once('=') else {
                break;
            };
            if key.is_empty() {
                return Err(cx.err(format!("bad query condition {:?}", fields[k])));
            }
            let (value, capture) = match value.strip_prefix(':') {
                Some(name) if !name.is_empty() && name.bytes().all(name_char) => {
                    (None, Some(name.to_owned()))
                }
                Some(_) => return Err(cx.err(format!("bad placeholder in {:?}", fields[k]))),
                None => (Some(decode_component(value)), None),
            };
            query.push(QueryCond {
                key: decode_component(key),
                value,
                capture,
            });
            k += 1;
        }
        let Some(to) = fields.get(k) else {
            return Err(cx.err("no target: expected `FROM TO [STATUS]`"));
        };
        k += 1;
        let (status, force) = match fields.get(k) {
            None => (301, false),
            Some(s) => {
                k += 1;
                let (code, force) = match s.strip_suffix('!') {
                    Some(c) => (c, true),
                    None => (*s, false),
                };
                let status: u16 = code.parse().map_err(|_| {
                    cx.err(format!("bad status {s:?}: expected a number such as 301"))
                })?;
                (status, force)
            }
        };
        if let Some(extra) = fields.get(k) {
            return Err(cx.err(if extra.contains('=') {
                format!("conditions such as {extra:?} (country, language, role, cookie) are not supported")
            } else {
                format!("unexpected {extra:?} after the status")
            }));
        }
        let external = to.starts_with("http://") || to.starts_with("https://");
        match status {
            301 | 302 | 303 | 307 | 308 => {}
            200 | 404 if external => {
                return Err(cx.err(format!(
                    "status {status} to {to:?} would proxy another host; proxy rules are not supported yet (redirect with 301 or 302 instead)"
                )));
            }
            200 | 404 => {}
            other => {
                return Err(cx.err(format!(
                    "status {other} is not supported: use 301, 302, 303, 307, 308 (redirects), 200 (rewrite) or 404"
                )));
            }
        }
        if !external && !to.starts_with('/') {
            return Err(cx.err(format!(
                "target {to:?} must be a path starting with `/` or an http(s):// URL"
            )));
        }
        if !external && (to.contains("/../") || to.ends_with("/..")) {
            return Err(cx.err(format!("target {to:?} leaves the deploy")));
        }
        let mut known: Vec<&str> = from
            .segs
            .iter()
            .filter_map(|s| match s {
                Seg::Param(n) => Some(n.as_str()),
                Seg::Lit(_) => None,
            })
            .collect();
        if from.splat {
            known.push("splat");
        }
        known.extend(query.iter().filter_map(|q| q.capture.as_deref()));
        for p in placeholders(to) {
            if !known.contains(&p) {
                return Err(cx.err(format!(
                    "target {to:?} uses `:{p}`, which FROM does not capture"
                )));
            }
        }
        if to.bytes().any(|b| b.is_ascii_control()) {
            return Err(cx.err("control characters in the target"));
        }
        out.push(Redirect {
            from,
            query,
            to: (*to).to_owned(),
            status,
            force,
            line: (n + 1) as u32,
        });
    }
    Ok(out)
}

/// Header names a site may not set: they belong to the connection, to the edge's framing of
/// the body, or to the edge's own validators and caching marks.
const REFUSED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "date",
    "vary",
    "location",
    "age",
    "alt-svc",
    "cache-status",
    "set-cookie",
    "host",
];

/// Parses `_headers` text (`file` names it in errors).
pub fn parse_headers(file: &Path, text: &str) -> Result<Vec<HeaderRule>, RulesError> {
    let mut out: Vec<HeaderRule> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let cx = Ctx { file, line: n + 1 };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indented = raw.starts_with(' ') || raw.starts_with('\t');
        if !indented {
            if trimmed.contains(": ") && !trimmed.starts_with('/') {
                return Err(cx.err(format!(
                    "header {trimmed:?} must be indented under a path line"
                )));
            }
            let path = parse_pattern(&cx, trimmed, "path")?;
            out.push(HeaderRule {
                path,
                headers: Vec::new(),
                line: (n + 1) as u32,
            });
            continue;
        }
        let Some(rule) = out.last_mut() else {
            return Err(cx.err("a header line before any path line"));
        };
        let Some((name, value)) = trimmed.split_once(':') else {
            return Err(cx.err(format!("expected `Name: value`, got {trimmed:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if !is_token(name) {
            return Err(cx.err(format!("bad header name {name:?}")));
        }
        let lower = name.to_ascii_lowercase();
        if REFUSED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-edge-") {
            return Err(cx.err(format!(
                "header {name} cannot be set by a site: the edge sets it (or it belongs to the connection)"
            )));
        }
        if value.is_empty() {
            return Err(cx.err(format!("header {name} has no value")));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(cx.err(format!("header {name}: control characters in the value")));
        }
        rule.headers.push((name.to_owned(), value.to_owned()));
    }
    if let Some(empty) = out.iter().find(|r| r.headers.is_empty()) {
        return Err(RulesError {
            file: file.to_owned(),
            line: empty.line as usize,
            why: "a path with no headers under it".into(),
        });
    }
    Ok(out)
}

/// Compiles rules from the two files' text (either may be absent).
pub fn compile(
    redirects: Option<(&Path, &str)>,
    headers: Option<(&Path, &str)>,
) -> Result<Rules, RulesError> {
    let mut r = Rules {
        format: FORMAT,
        redirects: match redirects {
            Some((f, t)) => parse_redirects(f, t)?,
            None => Vec::new(),
        },
        headers: match headers {
            Some((f, t)) => parse_headers(f, t)?,
            None => Vec::new(),
        },
        index: Index::default(),
    };
    r.index();
    Ok(r)
}

/// Reads and compiles `_redirects` and `_headers` at the root of `dir`: the compiled object's
/// bytes, or None when neither file exists (or both hold no rule).
pub async fn compile_dir(dir: &Path) -> Result<Option<Bytes>, RulesError> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let read = |name: &str| -> Result<Option<(PathBuf, String)>, RulesError> {
            let path = dir.join(name);
            let whole = |why: String| RulesError {
                file: path.clone(),
                line: 0,
                why,
            };
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => {
                    if m.len() > MAX_FILE {
                        return Err(whole(format!("larger than {} MiB", MAX_FILE >> 20)));
                    }
                    let bytes = std::fs::read(&path).map_err(|e| whole(e.to_string()))?;
                    let text =
                        String::from_utf8(bytes).map_err(|_| whole("is not UTF-8".into()))?;
                    Ok(Some((path, text)))
                }
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(whole(e.to_string())),
            }
        };
        let redirects = read(REDIRECTS)?;
        let headers = read(HEADERS)?;
        let rules = compile(
            redirects.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
            headers.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
        )?;
        Ok(if rules.is_empty() {
            None
        } else {
            Some(rules.encode())
        })
    })
    .await
    .unwrap_or_else(|e| {
        Err(RulesError {
            file: PathBuf::from(REDIRECTS),
            line: 0,
            why: format!("reading the rules failed: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(redirects: &str) -> Rules {
        compile(Some((Path::new("_redirects"), redirects)), None).unwrap()
    }

    fn segs(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            })
            .collect()
    }

    /// What `rules` does with `url` (`path?query`), given whether a file exists there.
    fn run(r: &Rules, url: &str, file_exists: bool) -> String {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        let owned = segs(path);
        let s: Vec<&str> = owned.iter().map(String::as_str).collect();
        match r.redirect(&s, query, file_exists).action {
            Some(a) => format!("{} {}", a.status, a.to),
            None => "-".into(),
        }
    }

    /// The cases of Netlify's redirect documentation (redirects, splats, placeholders, query
    /// parameters, rewrites, custom 404s, shadowing and forcing, status codes), and the edge's
    /// choices where it says nothing (trailing slashes, encoding, order).
    #[test]
    fn redirect_matching_table() {
        let r = rules(
            "# comment line
/home              /                         301
/blog/my-post.php  /blog/my-post             # default status 301
/news              /blog                     302
/old/*             /new/:splat               303
/temp              /elsewhere                307
/perm              /forever                  308
/news/:year/:month/:date/:slug  /blog/:year/:month/:date/:slug
/day/:year/:month/:date  /blog-:year-:month-:date.html  301
/store  id=:id     /blog/:id                 301
/articles id=:id tag=:tag  /posts/:tag/:id   301
/things type=a     /a-things                 302
/twitter           https://twitter.com/example  302
/ecommerce/*       /store-closed.html        404
/app/*             /app/index.html           200!
/docs/:page        /manual/:page.html        200
/first             /one                      301
/first             /two                      301
/spaces/*          /s/:splat                 301
/*                 /index.html               200
",
        );
        // (url, a file exists at the path, expected "status target" or "-")
        let table: &[(&str, bool, &str)] = &[
            ("/home", false, "301 /"),
            ("/home/", false, "301 /"),
            ("/blog/my-post.php", false, "301 /blog/my-post"),
            ("/news", false, "302 /blog"),
            ("/old/a/b/c.html", false, "303 /new/a/b/c.html"),
            ("/old", false, "303 /new/"),
            ("/temp", false, "307 /elsewhere"),
            ("/perm", false, "308 /forever"),
            (
                "/news/2004/02/12/my-story",
                false,
                "301 /blog/2004/02/12/my-story",
            ),
            ("/day/2004/02/12", false, "301 /blog-2004-02-12.html"),
            // The query is passed on when the rule neither matches nor sets one.
            ("/home?utm=x", false, "301 /?utm=x"),
            ("/store?id=my-blog-post", false, "301 /blog/my-blog-post"),
            (
                "/store?id=my-blog-post&other=1",
                false,
                "301 /blog/my-blog-post",
            ),
            ("/articles?id=7&tag=rust", false, "301 /posts/rust/7"),
            ("/articles?tag=rust&id=7", false, "301 /posts/rust/7"),
            ("/things?type=a", false, "302 /a-things"),
            ("/twitter", false, "302 https://twitter.com/example"),
            ("/ecommerce/cart", false, "404 /store-closed.html"),
            ("/docs/intro", false, "200 /manual/intro.html"),
            ("/first", false, "301 /one"),
            ("/spaces/a%20b/c", false, "301 /s/a%20b/c"),
            // Missing or different query parameters: the rule does not match, later ones may.
            ("/store", false, "200 /index.html"),
            ("/articles?id=7", false, "200 /index.html"),
            ("/things?type=b", false, "200 /index.html"),
            // The SPA fallback, for any path with no file...
            ("/dashboard/settings", false, "200 /index.html"),
            ("/", false, "200 /index.html"),
            // ...and shadowing: a file at the path wins over every rule that is not forced.
            ("/dashboard/settings", true, "-"),
            ("/home", true, "-"),
            ("/news/2004/02/12/my-story", true, "-"),
            ("/app/settings", true, "200 /app/index.html"),
            ("/app/settings", false, "200 /app/index.html"),
            // Placeholders take one segment each.
            ("/news/2004/02", false, "200 /index.html"),
            ("/news/2004/02/12/my-story/more", false, "200 /index.html"),
        ];
        for (url, exists, want) in table {
            assert_eq!(
                run(&r, url, *exists),
                *want,
                "{url} (file exists: {exists})"
            );
        }
        let s = ["store"];
        assert!(r.redirect(&s, None, false).query_dependent);
        assert!(!r.redirect(&["dashboard"], None, false).query_dependent);
        assert!(r.may_force(&["app", "x"]));
        assert!(!r.may_force(&["dashboard"]));
    }

    #[test]
    fn the_compiled_form_round_trips() {
        let r = rules("/a /b 302\n/c/* /d/:splat 200!\n");
        let back = Rules::decode(&r.encode()).unwrap();
        assert_eq!(back.redirects, r.redirects);
        assert_eq!(run(&back, "/c/x", true), "200 /d/x");
        assert!(Rules::decode(b"{\"format\":9,\"redirects\":[],\"headers\":[]}").is_err());
        assert!(Rules::decode(b"not json").is_err());
    }

    #[test]
    fn ten_thousand_rules_try_few_candidates() {
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&format!("/old-{i}/* /new-{i}/:splat 301\n"));
        }
        text.push_str("/* /index.html 200\n");
        let r = rules(&text);
        assert_eq!(run(&r, "/old-9999/x", false), "301 /new-9999/x");
        assert_eq!(run(&r, "/other", false), "200 /index.html");
        let n = r.index.redirects.candidates(&["old-5"]).count();
        assert_eq!(n, 2, "its own rule and the wild one");
    }

    fn bad_redirects(text: &str) -> String {
        compile(Some((Path::new("site/_redirects"), text)), None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_redirect_lines_name_file_and_line() {
        let cases: &[(&str, &str)] = &[
            (
                "/ok /fine\n/lonely\n",
                "site/_redirects:2: expected `FROM TO [STATUS]`",
            ),
            (
                "/a /b 999\n",
                "site/_redirects:1: status 999 is not supported",
            ),
            ("/a /b abc\n", "site/_redirects:1: bad status \"abc\""),
            (
                "\n\n/api/* https://api.example.com/:splat 200\n",
                "site/_redirects:3: status 200 to \"https://api.example.com/:splat\" would proxy another host; proxy rules are not supported yet",
            ),
            (
                "/a /b 302 Country=us\n",
                "site/_redirects:1: conditions such as \"Country=us\"",
            ),
            (
                "a /b\n",
                "site/_redirects:1: FROM \"a\" must start with `/`",
            ),
            ("/a b\n", "site/_redirects:1: target \"b\" must be a path"),
            (
                "/a /b/:id\n",
                "site/_redirects:1: target \"/b/:id\" uses `:id`, which FROM does not capture",
            ),
            (
                "/a/*/b /c\n",
                "site/_redirects:1: FROM \"/a/*/b\": `*` may only be the last segment",
            ),
            (
                "/a/b* /c\n",
                "site/_redirects:1: FROM \"/a/b*\": `*` must be a whole segment",
            ),
            (
                "https://other.example/* /x 301\n",
                "site/_redirects:1: FROM \"https://other.example/*\": rules for other host names are not supported",
            ),
            (
                "/a /b 301 extra\n",
                "site/_redirects:1: unexpected \"extra\" after the status",
            ),
            (
                "/a /../etc 200\n",
                "site/_redirects:1: target \"/../etc\" leaves the deploy",
            ),
        ];
        for (text, want) in cases {
            let got = bad_redirects(text);
            assert!(
                got.starts_with(want),
                "{text:?}:\n got  {got}\n want {want}"
            );
        }
    }

    #[test]
    fn headers_merge_in_file_order() {
        let text = "# security for everything
/*
  X-Frame-Options: DENY
  Content-Security-Policy: default-src 'self'
/assets/*
  Cache-Control: public, max-age=31536000, immutable
/fonts/:name
  Access-Control-Allow-Origin: *
/*
  x-frame-options: SAMEORIGIN
";
        let r = compile(None, Some((Path::new("_headers"), text))).unwrap();
        let h = |p: &str| {
            let owned = segs(p);
            let s: Vec<&str> = owned.iter().map(String::as_str).collect();
            r.headers(&s)
                .into_iter()
                .map(|(n, v)| format!("{n}: {v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            h("/assets/app.3f2a.js"),
            [
                "X-Frame-Options: DENY, SAMEORIGIN",
                "Content-Security-Policy: default-src 'self'",
                "Cache-Control: public, max-age=31536000, immutable",
            ]
        );
        assert_eq!(h("/fonts/a.woff2")[2], "Access-Control-Allow-Origin: *");
        assert_eq!(h("/fonts/a/b.woff2").len(), 2);
        assert_eq!(h("/").len(), 2);
    }

    #[test]
    fn bad_header_lines_name_file_and_line() {
        let bad = |t: &str| {
            compile(None, Some((Path::new("_headers"), t)))
                .unwrap_err()
                .to_string()
        };
        let cases: &[(&str, &str)] = &[
            (
                "  X-A: b\n",
                "_headers:1: a header line before any path line",
            ),
            (
                "/a\n  Content-Length: 5\n",
                "_headers:2: header Content-Length cannot be set by a site",
            ),
            (
                "/a\n  Content-Encoding: br\n",
                "_headers:2: header Content-Encoding cannot be set",
            ),
            (
                "/a\n  Connection: close\n",
                "_headers:2: header Connection cannot be set",
            ),
            (
                "/a\n  Transfer-Encoding: chunked\n",
                "_headers:2: header Transfer-Encoding",
            ),
            (
                "/a\n  X-Edge-Deploy: x\n",
                "_headers:2: header X-Edge-Deploy",
            ),
            ("/a\n  Bad Name: x\n", "_headers:2: bad header name"),
            (
                "/a\n  X-Empty:\n",
                "_headers:2: header X-Empty has no value",
            ),
            (
                "/a\n  no colon here\n",
                "_headers:2: expected `Name: value`",
            ),
            (
                "/a\n/b\n  X-A: 1\n",
                "_headers:1: a path with no headers under it",
            ),
            ("X-A: b\n", "_headers:1: header \"X-A: b\" must be indented"),
        ];
        for (text, want) in cases {
            let got = bad(text);
            assert!(
                got.starts_with(want),
                "{text:?}:\n got  {got}\n want {want}"
            );
        }
    }

    /// A bad rules file fails the publish before anything is written; the previous deploy
    /// stays current. A good one is compiled into an object the root node names.
    #[tokio::test]
    async fn publish_refuses_bad_rules_and_records_good_ones() {
        use crate::publish::{PublishError, PublishOptions, publish};
        use crate::store::{MemoryStore, Store};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.path().join("_redirects"), "/* /index.html 200\n").unwrap();
        let store = MemoryStore::new();
        let opts = PublishOptions::default();
        let good = publish(&store, dir.path(), "s", &opts).await.unwrap();
        let root = store.get_object(&good.deploy.root).await.unwrap().unwrap();
        let root = crate::tree::TreeNode::decode(root).unwrap();
        let rules = root.rules().expect("the root names its rules");
        let compiled = store.get_object(&rules).await.unwrap().unwrap();
        assert_eq!(Rules::decode(&compiled).unwrap().redirects.len(), 1);

        let objects = store.object_count();
        std::fs::write(dir.path().join("index.html"), "<p>v2</p>").unwrap();
        std::fs::write(dir.path().join("_headers"), "/*\n  Content-Length: 1\n").unwrap();
        let err = publish(&store, dir.path(), "s", &opts).await.unwrap_err();
        assert!(matches!(err, PublishError::Rules(_)), "{err}");
        let shown = err.to_string();
        assert!(shown.ends_with("_headers:2: header Content-Length cannot be set by a site: the edge sets it (or it belongs to the connection)"), "{shown}");
        assert!(shown.contains(&dir.path().display().to_string()), "{shown}");
        assert_eq!(store.object_count(), objects, "nothing written");
        let current = store.get_current("s").await.unwrap().unwrap();
        assert_eq!(current.deploy, good.deploy.id);
    }
}
