//! `TreeNode::decode` on arbitrary bytes. A node that decodes is walked whole (every entry,
//! its variants, lookups by name, the references a collector marks), must re-encode to the
//! very same bytes (one tree, one hash), and every entry must be reachable through the
//! edge's request-path parser and routing walk.
#![no_main]

use bytes::Bytes;
use edge::route::{Step, Target, Walk};
use libfuzzer_sys::fuzz_target;
use origin_client::tree::{self, EntryKind, OwnedEntry, TreeNode};

fuzz_target!(|data: &[u8]| {
    let Ok(node) = TreeNode::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert_eq!(&node.bytes()[..], data);
    assert_eq!(node.is_empty(), node.len() == 0);
    assert_eq!(node.iter().len(), node.len());

    let mut owned = Vec::with_capacity(node.len());
    let mut variant_count = 0;
    for i in 0..node.len() {
        let e = node.entry(i);
        tree::validate_name(e.name.as_bytes(), i).expect("a decoded name is canonical");
        assert_eq!(node.position(e.name), Ok(i));
        assert_eq!(node.lookup(e.name), Some(e));
        if i > 0 {
            assert!(node.entry(i - 1).name.as_bytes() < e.name.as_bytes());
        }
        // A name just past this one (names hold no NUL) is absent and sorts right after it.
        let after = format!("{}\0", e.name);
        assert_eq!(node.position(&after), Err(i + 1));
        for x in node.extensions(e.name) {
            assert!(x.name.len() > e.name.len() && x.name.starts_with(e.name));
        }
        let variants: Vec<_> = node.variants(i).collect();
        assert!(variants.len() <= tree::Coding::ALL.len());
        assert!(variants.is_empty() || e.kind == EntryKind::File);
        for w in variants.windows(2) {
            assert!(w[0].coding < w[1].coding);
        }
        for v in &variants {
            assert!(v.size < e.size);
        }
        variant_count += variants.len();
        owned.push((
            OwnedEntry {
                name: e.name.to_owned(),
                kind: e.kind,
                size: e.size,
                hash: e.hash,
            },
            variants,
        ));
    }
    assert_eq!(
        node.references().count(),
        node.len() + variant_count + usize::from(node.rules().is_some())
    );

    let again = tree::encode_node(owned, node.rules()).expect("a decoded node re-encodes");
    assert_eq!(&again[..], data, "re-encoding changed the bytes");
    assert_eq!(
        TreeNode::decode(again).expect("re-decodes").hash(),
        node.hash()
    );

    // Routing: every name is one URL segment away (percent-encoded as the edge links it).
    for e in node.iter().take(64) {
        let enc = edge::path::encode_segment(e.name);
        for slash in [false, true] {
            let raw = format!("/{enc}{}", if slash { "/" } else { "" });
            let path = edge::path::parse(&raw).expect("an encoded entry name parses");
            assert_eq!(path.segments.len(), 1);
            assert_eq!(path.segments[0], e.name);
            let hidden = edge::route::is_rules_file(&path, &node);
            let step = Walk::new(&path).step(&node);
            match (e.kind, slash, step) {
                (_, _, Step::Done(Target::NotFound)) if hidden => {}
                (EntryKind::Dir, false, Step::Done(Target::AddSlash)) => {}
                (EntryKind::Dir, true, Step::Need(h)) => assert_eq!(h, e.hash),
                (EntryKind::File, false, Step::Done(Target::File(f))) => {
                    assert_eq!((&*f.name, f.hash, f.size), (e.name, e.hash, e.size));
                    for w in f.siblings.windows(2) {
                        assert!(w[0].0 < w[1].0, "siblings in coding order, one each");
                    }
                    assert!(f.siblings.iter().all(|s| s.0 < edge::route::CODINGS.len()));
                }
                (EntryKind::File, true, Step::Done(Target::NotFound)) => {}
                (kind, slash, step) => {
                    panic!("{:?} {kind:?} slash={slash}: {step:?}", e.name)
                }
            }
        }
    }
    let root = edge::path::parse("/").expect("root");
    let _ = Walk::new(&root).step(&node);
    let _ = edge::route::not_found_page(&node);
});
