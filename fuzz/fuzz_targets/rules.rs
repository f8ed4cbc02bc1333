//! Site rules: `_redirects` and `_headers` text compiled as `edge publish` does, the
//! compiled object decoded as the edge does, and matching against a fuzzed request path and
//! query. Input: `REDIRECTS \0 HEADERS \0 PATH[?QUERY]`; a first part starting with `{` is
//! taken as a compiled rules object instead (what a store could hold).
#![no_main]

use std::path::Path;

use edge::http::routes::site_headers;
use edge::metrics::ClientLogs;
use libfuzzer_sys::fuzz_target;
use origin_client::rules::{self, Rules};

fn compile(redirects: &str, headers: &str) -> Option<Rules> {
    let r = (Path::new(rules::REDIRECTS), redirects);
    let h = (Path::new(rules::HEADERS), headers);
    // Each file alone too, so that a bad line in one still lets the other be matched.
    [
        rules::compile(Some(r), Some(h)),
        rules::compile(Some(r), None),
        rules::compile(None, Some(h)),
    ]
    .into_iter()
    .find_map(Result::ok)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let (first, headers, target) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("/"),
    );
    let (compiled, rules) = if first.starts_with('{') {
        let Ok(r) = Rules::decode(first.as_bytes()) else {
            return;
        };
        (false, r)
    } else {
        let Some(r) = compile(first, headers) else {
            return;
        };
        // The edge reads what publishing wrote: the compiled object round-trips.
        let back = Rules::decode(&r.encode()).expect("compiled rules decode");
        assert_eq!((&back.redirects, &back.headers), (&r.redirects, &r.headers));
        assert_eq!(back.encode(), r.encode());
        (true, back)
    };

    let (raw_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Ok(path) = edge::path::parse(raw_path) else {
        return;
    };
    let segs: Vec<&str> = path.segments.iter().map(|s| &**s).collect();

    let forced = rules.may_force(&segs);
    for file_exists in [false, true] {
        let d = rules.redirect(&segs, query, file_exists);
        let Some(a) = d.action else {
            continue;
        };
        if file_exists {
            assert!(
                forced,
                "a forced rule applied where may_force said none could"
            );
        }
        if compiled {
            let rule = rules
                .redirects
                .iter()
                .find(|r| r.line == a.line)
                .expect("the action names its rule's line");
            assert_eq!(a.status, rule.status);
            assert!(!file_exists || rule.force);
            assert_eq!(a.rewrite, matches!(a.status, 200 | 404));
            let external = a.to.starts_with("http://") || a.to.starts_with("https://");
            assert!(external || a.to.starts_with('/'), "{:?}", a.to);
            assert!(
                !a.rewrite || !external,
                "a rewrite to another host: {:?}",
                a.to
            );
            if query.is_none_or(|q| !q.bytes().any(|b| b.is_ascii_control())) {
                assert!(!a.to.bytes().any(|b| b.is_ascii_control()), "{:?}", a.to);
            }
        }
    }

    let set = rules.headers(&segs);
    let usable = site_headers(Some(&rules), &segs, &ClientLogs::default());
    if compiled {
        // Publishing checked every name and value: the edge can send each one.
        assert_eq!(usable.len(), set.len(), "{set:?}");
    }
});
