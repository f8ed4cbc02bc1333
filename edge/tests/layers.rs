//! The dependency rule (ARCHITECTURE.md, "Dependency rule"): dependencies flow one way,
//! listeners -> handler -> route/pointers -> trees/blobs -> origin-client, and there are no
//! import cycles between the top-level modules of `edge/src`.
//!
//! This reads every `edge/src/**/*.rs`, collects each top-level module's references to
//! `crate::X` (in `use` items and in paths, `crate::{a, b}` groups included, and `super::`
//! chains that climb to the crate root), and fails naming the file, line and import when a
//! module uses one its layer may not. Comments, string and char literals are ignored, and so
//! are `#[cfg(test)]` items: unit tests may build their fixtures through the composition root.
//! A module missing from [`LAYERS`] fails too, so a new module is placed deliberately.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Module -> the top-level modules it may use (`None`: anything). A module may always use
/// itself.
const LAYERS: &[(&str, Option<&[&str]>)] = &[
    ("main", None),
    ("cli", None),
    // The one composition root.
    ("node", None),
    // Listeners: transport policy around the one handler.
    (
        "listen",
        Some(&["http", "sched", "metrics", "error", "path", "accesslog"]),
    ),
    (
        "admin",
        Some(&[
            "http",
            "pointers",
            "trees",
            "tiers",
            "metrics",
            "error",
            "accesslog",
            "sched",
            "samples",
            "notify",
        ]),
    ),
    // `edge top`: a client of the admin listener; formats with the sample ring's units.
    ("top", Some(&["samples"])),
    ("preview", Some(&["http", "pointers", "error"])),
    // Pushed pointer changes (NATS): hints in, `Pointers::refresh_site` out; its own metrics.
    ("notify", Some(&["pointers", "metrics", "error"])),
    // The handler: the only layer that speaks HTTP.
    (
        "http",
        Some(&[
            "route",
            "pointers",
            "trees",
            "tiers",
            "path",
            "error",
            "metrics",
            "accesslog",
            "sched",
        ]),
    ),
    // Below the handler: no HTTP.
    ("route", Some(&["path"])),
    ("pointers", Some(&["trees", "coalesce", "error"])),
    ("trees", Some(&["tiers", "coalesce", "error"])),
    ("tiers", Some(&["coalesce", "error"])),
    ("accesslog", Some(&["metrics"])),
    // The per-second sample ring of the status page: pure, over the metrics' counters.
    ("samples", Some(&["metrics"])),
    // Freed memory back to the OS after load drops: reads two of the metrics' gauges.
    ("memory", Some(&["metrics"])),
    // exception: `Metrics::render` prints `sched::yields()` (edge_worker_yields_total); it
    // goes when the count is passed in by the caller. `sched` uses nothing from the crate.
    ("metrics", Some(&["sched"])),
    ("path", Some(&[])),
    ("error", Some(&["coalesce"])),
    ("coalesce", Some(&[])),
    ("sched", Some(&[])),
    // Unit-test support (`#[cfg(test)]`): builds handlers the way `node` does.
    ("testing", None),
];

/// Allowed edges that close a cycle today; the cycle check leaves them out.
const LEGACY_EDGES: &[(&str, &str)] = &[];

// ---- the checks on edge/src ---------------------------------------------------------------

#[test]
fn every_module_uses_only_what_its_layer_may() {
    let files = sources();
    let mut failures = String::new();
    for f in &files {
        for r in &f.refs {
            if let Some(why) = refused(&f.module, &r.target) {
                let _ = writeln!(
                    failures,
                    "{}:{}: `{}` uses `crate::{}`: {why}",
                    f.rel, r.line, f.module, r.target
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the dependency rule is broken (ARCHITECTURE.md, \"Dependency rule\"):\n{failures}"
    );
}

#[test]
fn every_module_has_a_layer() {
    let mut missing = String::new();
    for f in sources() {
        if f.module != "lib" && layer(&f.module).is_none() {
            let _ = writeln!(missing, "{}: module `{}`", f.rel, f.module);
        }
    }
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("reading edge/src/lib.rs");
    for m in declared_modules(&sanitize(&lib)) {
        if layer(&m).is_none() {
            let _ = writeln!(missing, "edge/src/lib.rs: `mod {m}`");
        }
    }
    assert!(
        missing.is_empty(),
        "modules with no place in the layer table of edge/tests/layers.rs (add each one \
         deliberately, with what it may use):\n{missing}"
    );
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in sources() {
        for r in f.refs {
            let legacy = LEGACY_EDGES
                .iter()
                .any(|&(a, b)| a == f.module && b == r.target);
            if r.target != f.module && !legacy {
                edges.entry(f.module.clone()).or_default().insert(r.target);
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle between modules: {}", cycle.join(" -> "));
    }
}

// ---- the checker checks itself ------------------------------------------------------------

#[test]
fn scanner_finds_uses_groups_paths_and_super_chains() {
    let text = r#"
use crate::http::{Body, Handler};
use crate::{error::EdgeError, path, tiers::{self, Tiers}};
use super::Front;
use super::super::metrics::Metrics;
fn f() { crate::sched::serving_thread(); let _ = $crate::coalesce::X; }
pub(crate) fn g() {}
pub(super) fn h() {}
"#;
    let refs = references(&sanitize(text), &["listen".into(), "tcp".into()]);
    let got: Vec<_> = refs.iter().map(|r| (r.target.as_str(), r.line)).collect();
    assert_eq!(
        got,
        [
            ("http", 2),
            ("error", 3),
            ("path", 3),
            ("tiers", 3),
            ("metrics", 5),
            ("sched", 6),
            ("coalesce", 6),
        ]
    );
}

#[test]
fn scanner_ignores_comments_strings_and_test_items() {
    let text = r####"
// use crate::node;
/* crate::node /* nested crate::node */ crate::node */
/// [`crate::node::build`]
const A: &str = "crate::node::x";
const B: &str = r##"crate::node "# still"##;
const C: char = '"'; const D: char = '\''; fn e<'a>(x: &'a str) -> &'a str { x }
#[cfg(test)]
mod tests { use crate::node::build_handler; fn t() { let _ = "}"; crate::cli::x(); } }
#[cfg(test)]
use crate::cli::Thing;
#[cfg( test )]
#[allow(dead_code)]
fn only_in_tests() { crate::node::build(); }
fn real() { crate::path::parse("/"); }
"####;
    let refs = references(&sanitize(text), &["http".into()]);
    let got: Vec<_> = refs.iter().map(|r| (r.target.as_str(), r.line)).collect();
    assert_eq!(got, [("path", 15)]);
}

#[test]
fn a_forbidden_import_is_refused_and_an_allowed_one_is_not() {
    assert!(refused("listen", "node").is_some());
    assert!(refused("listen", "cli").is_some());
    assert!(refused("tiers", "http").is_some());
    assert!(refused("route", "tiers").is_some());
    assert!(refused("sched", "metrics").is_some());
    assert!(refused("unplaced", "error").is_some());
    assert!(refused("listen", "http").is_none());
    assert!(refused("listen", "listen").is_none());
    assert!(refused("node", "listen").is_none());
    // Nothing below the handler speaks HTTP.
    for m in [
        "pointers",
        "trees",
        "route",
        "tiers",
        "accesslog",
        "metrics",
        "path",
    ] {
        assert!(refused(m, "http").is_some(), "{m}");
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    fn edge(g: &mut BTreeMap<String, BTreeSet<String>>, a: &str, b: &str) {
        g.entry(a.into()).or_default().insert(b.into());
    }
    let mut g = BTreeMap::new();
    edge(&mut g, "listen", "http");
    edge(&mut g, "http", "tiers");
    assert_eq!(find_cycle(&g), None);
    edge(&mut g, "tiers", "listen");
    assert_eq!(
        find_cycle(&g).map(|c| c.join(" -> ")).as_deref(),
        Some("http -> tiers -> listen -> http")
    );
}

// ---- the table ----------------------------------------------------------------------------

/// `Some(None)`: may use anything; `None`: not in the table.
fn layer(module: &str) -> Option<Option<&'static [&'static str]>> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, a)| *a)
}

/// Why `module` may not use `target`, or `None` when it may.
fn refused(module: &str, target: &str) -> Option<String> {
    if module == target {
        return None;
    }
    match layer(module) {
        None => Some(format!(
            "`{module}` is not in the layer table of edge/tests/layers.rs"
        )),
        Some(None) => None,
        Some(Some(allowed)) if allowed.contains(&target) => None,
        Some(Some(allowed)) => Some(format!(
            "its layer may use only {}",
            if allowed.is_empty() {
                "nothing from the crate".to_owned()
            } else {
                allowed.join(", ")
            }
        )),
    }
}

/// A cycle in `g`, as the modules along it with the first repeated at the end.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_owned());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_owned());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut done, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

// ---- reading the sources ------------------------------------------------------------------

struct Source {
    /// Path from the workspace root, for messages.
    rel: String,
    /// The top-level module (`lib` for the crate root).
    module: String,
    refs: Vec<Ref>,
}

#[derive(Debug)]
struct Ref {
    /// The top-level module referred to.
    target: String,
    line: usize,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn sources() -> Vec<Source> {
    let root = src_dir();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    assert!(
        paths.len() > 10,
        "found only {} files under {}",
        paths.len(),
        root.display()
    );
    paths
        .into_iter()
        .map(|p| {
            let rel_src = p.strip_prefix(&root).expect("under src");
            let mut parts: Vec<String> = rel_src
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let file = parts.pop().expect("a file name");
            if file != "mod.rs" {
                parts.push(file.trim_end_matches(".rs").to_owned());
            }
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            // main.rs is the binary's root, lib.rs the library's: both sit at the crate root.
            let module_path: Vec<String> = if parts == ["lib"] || parts == ["main"] {
                Vec::new()
            } else {
                parts.clone()
            };
            Source {
                rel: format!("edge/src/{}", rel_src.display()),
                module: parts[0].clone(),
                refs: references(&sanitize(&text), &module_path),
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `mod x;` / `pub mod x;` declarations.
fn declared_modules(text: &[char]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = find_word(text, i, "mod") {
        let j = skip_ws(text, at + 3);
        let (name, end) = ident(text, j);
        if !name.is_empty() {
            out.push(name);
        }
        i = end.max(at + 3);
    }
    out
}

// ---- a small Rust scanner -----------------------------------------------------------------

/// The text with comments, string literals and char literals blanked (newlines kept, so
/// line numbers stay right) and `#[cfg(test)]` items removed.
fn sanitize(text: &str) -> Vec<char> {
    let s: Vec<char> = text.chars().collect();
    let mut out = s.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        let prev_ident = i > 0 && is_ident(s[i - 1]);
        if c == '/' && next == Some('/') {
            let end = s[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(s.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && next == Some('*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j] == '/' && s.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && s.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c == 'r'
            && (!prev_ident || (i > 0 && s[i - 1] == 'b' && (i < 2 || !is_ident(s[i - 2]))))
            && matches!(next, Some('"') | Some('#'))
        {
            let hashes = s[i + 1..].iter().take_while(|&&c| c == '#').count();
            if s.get(i + 1 + hashes) != Some(&'"') {
                i += 1;
                continue;
            }
            let mut j = i + 2 + hashes;
            loop {
                if j >= s.len() {
                    break;
                }
                if s[j] == '"'
                    && s[j + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == '#')
                        .count()
                        == hashes
                {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            blank(&mut out, i + 1, j);
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), which stays.
            if next == Some('\\') {
                // Past the escaped character, so that '\'' ends at its last quote.
                let mut j = i + 3;
                while j < s.len() && s[j] != '\'' {
                    j += 1;
                }
                blank(&mut out, i, j + 1);
                i = j + 1;
            } else if s.get(i + 2) == Some(&'\'') {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    remove_test_items(&mut out);
    out
}

/// Blanks every item under `#[cfg(test)]`: the attribute, any attributes after it, and the
/// item up to its `;` or its closing brace.
fn remove_test_items(s: &mut [char]) {
    let mut i = 0;
    while i + 1 < s.len() {
        if !(s[i] == '#' && s[i + 1] == '[') {
            i += 1;
            continue;
        }
        let Some(attr_end) = matching(s, i + 1) else {
            return;
        };
        let attr: String = s[i + 2..attr_end]
            .iter()
            .filter(|c| !c.is_whitespace())
            .collect();
        if attr != "cfg(test)" {
            i = attr_end + 1;
            continue;
        }
        let mut j = attr_end + 1;
        loop {
            j = skip_ws(s, j);
            if j + 1 < s.len() && s[j] == '#' && s[j + 1] == '[' {
                j = matching(s, j + 1).map_or(s.len(), |e| e + 1);
            } else {
                break;
            }
        }
        let mut end = s.len();
        let mut depth = 0i32;
        while j < s.len() {
            match s[j] {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                '{' if depth == 0 => {
                    end = matching(s, j).map_or(s.len(), |e| e + 1);
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        for c in &mut s[i..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
}

/// The index of the bracket closing the one at `open` (`(`, `[` or `{`).
fn matching(s: &[char], open: usize) -> Option<usize> {
    let (o, c) = match s[open] {
        '(' => ('(', ')'),
        '[' => ('[', ']'),
        _ => ('{', '}'),
    };
    let mut depth = 0;
    for (k, &ch) in s.iter().enumerate().skip(open) {
        if ch == o {
            depth += 1;
        } else if ch == c {
            depth -= 1;
            if depth == 0 {
                return Some(k);
            }
        }
    }
    None
}

/// The top-level modules a sanitized file refers to, in order: `crate::X`, `crate::{X, ..}`,
/// and `super::` chains that climb from `module_path` (the file's module) to the crate root.
fn references(s: &[char], module_path: &[String]) -> Vec<Ref> {
    let mut out = Vec::new();
    let line_of = |i: usize| 1 + s[..i].iter().filter(|&&c| c == '\n').count();
    let mut i = 0;
    while i < s.len() {
        let at_word = |w: &str| {
            let n = w.chars().count();
            s[i..].iter().take(n).copied().eq(w.chars())
                && (i == 0 || !is_ident(s[i - 1]))
                && s.get(i + n).is_none_or(|&c| !is_ident(c))
        };
        // Only where a word starts (a blanked comment is a long run of spaces).
        let after_path_sep = || {
            let k = s[..i].iter().rposition(|c| !c.is_whitespace());
            k.is_some_and(|k| k > 0 && s[k] == ':' && s[k - 1] == ':')
        };
        if at_word("crate") && !after_path_sep() {
            if let Some(j) = path_sep(s, i + 5) {
                for target in first_segments(s, j) {
                    out.push(Ref {
                        target,
                        line: line_of(i),
                    });
                }
            }
            i += 5;
        } else if at_word("super") && !after_path_sep() {
            let mut j = i;
            let mut ups = 0;
            while s[j..].iter().take(5).copied().eq("super".chars()) {
                match path_sep(s, j + 5) {
                    Some(k) => {
                        ups += 1;
                        j = skip_ws(s, k);
                    }
                    None => break,
                }
            }
            if ups > 0 && ups >= module_path.len() {
                for target in first_segments(s, j) {
                    out.push(Ref {
                        target,
                        line: line_of(i),
                    });
                }
            }
            i = j.max(i + 5);
        } else {
            i += 1;
        }
    }
    out
}

/// After optional whitespace, `::`: the index just past it.
fn path_sep(s: &[char], from: usize) -> Option<usize> {
    let j = skip_ws(s, from);
    (s.get(j) == Some(&':') && s.get(j + 1) == Some(&':')).then_some(j + 2)
}

/// The first segment of the path at `from`, or of each path in a `{ .. }` group.
fn first_segments(s: &[char], from: usize) -> Vec<String> {
    let j = skip_ws(s, from);
    if s.get(j) != Some(&'{') {
        let (name, _) = ident(s, j);
        return if name.is_empty() {
            Vec::new()
        } else {
            vec![name]
        };
    }
    let end = matching(s, j).unwrap_or(s.len());
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = true;
    for k in j + 1..end {
        match s[k] {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && depth == 0 && !c.is_whitespace() => {
                start = false;
                let (name, _) = ident(s, k);
                if !name.is_empty() && name != "self" {
                    out.push(name);
                }
            }
            _ => {}
        }
    }
    out
}

fn ident(s: &[char], from: usize) -> (String, usize) {
    let n = s[from.min(s.len())..]
        .iter()
        .take_while(|&&c| is_ident(c))
        .count();
    (s[from..from + n].iter().collect(), from + n)
}

fn find_word(s: &[char], from: usize, w: &str) -> Option<usize> {
    let n = w.chars().count();
    (from..s.len().saturating_sub(n - 1)).find(|&i| {
        s[i..i + n].iter().copied().eq(w.chars())
            && (i == 0 || !is_ident(s[i - 1]))
            && s.get(i + n).is_none_or(|&c| !is_ident(c))
    })
}

fn skip_ws(s: &[char], from: usize) -> usize {
    from + s[from.min(s.len())..]
        .iter()
        .take_while(|c| c.is_whitespace())
        .count()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}
