//! `edge::path::parse` on arbitrary request paths: what it accepts holds only clean segments,
//! re-encoding the segments parses back to the same path, and the routing walk over a small
//! fixed deploy ends for every accepted path.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use edge::path::{self, MAX_URI_LEN};
use edge::route::{Step, Walk};
use libfuzzer_sys::fuzz_target;
use origin_client::tree::{self, EntryKind, OwnedEntry, TreeNode};
use origin_client::{Hash, rules};

/// A small deploy: `index.html`, `about.html`, `a b.txt` (+ `.br`), `docs/index.html`,
/// `docs/ü.css`, and `_redirects` on a root that names rules.
fn deploy() -> (TreeNode, HashMap<Hash, TreeNode>) {
    let file = |name: &str| OwnedEntry {
        name: name.into(),
        kind: EntryKind::File,
        size: 100,
        hash: Hash::of(name.as_bytes()),
    };
    let docs = tree::encode(vec![file("index.html"), file("ü.css")]).expect("valid names");
    let docs_hash = Hash::of(&docs);
    let root = tree::encode_node(
        vec![
            (file("index.html"), Vec::new()),
            (file("about.html"), Vec::new()),
            (file("a b.txt"), Vec::new()),
            (file("a b.txt.br"), Vec::new()),
            (file(rules::REDIRECTS), Vec::new()),
            (
                OwnedEntry {
                    name: "docs".into(),
                    kind: EntryKind::Dir,
                    size: docs.len() as u64,
                    hash: docs_hash,
                },
                Vec::new(),
            ),
        ],
        Some(Hash::of(b"rules")),
    )
    .expect("valid names");
    let mut nodes = HashMap::new();
    nodes.insert(docs_hash, TreeNode::decode(docs).expect("canonical"));
    (TreeNode::decode(root).expect("canonical"), nodes)
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = path::parse(raw) else {
        return;
    };
    assert!(raw.len() <= MAX_URI_LEN && raw.starts_with('/'));
    for s in &p.segments {
        assert!(!s.is_empty() && s != "." && s != "..", "{s:?}");
        assert!(!s.contains('/') && !s.contains('\0'), "{s:?}");
    }
    if p.segments.is_empty() {
        assert!(p.trailing_slash);
    }

    // The segments, encoded as the edge writes links, are the same path.
    let mut enc = String::new();
    for s in &p.segments {
        enc.push('/');
        enc.push_str(&path::encode_segment(s));
    }
    if p.trailing_slash {
        enc.push('/');
    }
    if enc.len() <= MAX_URI_LEN {
        let again = path::parse(&enc).expect("an encoded path parses");
        assert_eq!(again, p, "{enc:?}");
    }

    // The walk over a fixed deploy consumes one segment per folder and ends.
    static DEPLOY: OnceLock<(TreeNode, HashMap<Hash, TreeNode>)> = OnceLock::new();
    let (root, nodes) = DEPLOY.get_or_init(deploy);
    let mut walk = Walk::new(&p);
    let mut node = root;
    for _ in 0..=p.segments.len() {
        match walk.step(node) {
            Step::Need(h) => node = nodes.get(&h).expect("the walk asks for known folders"),
            Step::Done(_) => return,
        }
    }
    panic!("the walk did not end for {raw:?}");
});
