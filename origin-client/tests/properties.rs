//! Property tests: arbitrary folders publish into a local store and read back byte-exact
//! through the tree; publishing is deterministic; the decoder rejects every non-canonical
//! node with the matching error.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use origin_client::publish::{DEFAULT_SKIPPED, PublishOptions, publish};
use origin_client::store::LocalStore;
use origin_client::tree::{self, OwnedEntry};
use origin_client::{Access, EntryKind, Hash, Store, TreeError, TreeNode};
use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use support::{Listing, join, read_body, read_deploy, read_folder, resolve, runtime};
use unicode_normalization::UnicodeNormalization;

/// Longest name most Linux filesystems accept (NAME_MAX).
const NAME_MAX: usize = 255;

const EMOJI: &[&str] = &["😀", "🚀", "👩‍💻", "🇯🇵", "❤️", "🎉", "🧪"];
/// Characters with a canonical decomposition, so their NFC and NFD forms differ in bytes.
const COMPOSABLE: &[&str] = &["é", "ñ", "Å", "ö", "ç", "ệ", "한", "ǖ"];
/// Units for exactly-255-byte names: 1, 2, 3 and 4 bytes of UTF-8.
const LONG_UNITS: &[&str] = &["a", "%", " ", "é", "€", "😀", "+#?~"];

fn publishable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !DEFAULT_SKIPPED.contains(&name)
}

/// A name exactly 255 bytes long: a unit repeated, padded with `x`.
fn long_name() -> impl Strategy<Value = String> {
    select(LONG_UNITS).prop_map(|unit| {
        let mut s = String::new();
        while s.len() + unit.len() <= NAME_MAX {
            s.push_str(unit);
        }
        while s.len() < NAME_MAX {
            s.push('x');
        }
        s
    })
}

fn emoji_name() -> impl Strategy<Value = String> {
    (vec(select(EMOJI), 1..4), "(\\.[a-z]{1,4}){0,2}")
        .prop_map(|(parts, ext)| format!("{}{ext}", parts.concat()))
}

/// File and folder names: plain, full of dots, spaces and URL-special characters, any
/// UTF-8, emoji, and 255-byte names.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9]{1,8}",
        3 => "[a-zA-Z0-9 .%+#?~_-]{1,16}",
        2 => "\\.{0,2}[a-z]{0,3}\\.{1,3}[a-z %+#?~]{0,5}",
        2 => "[^/\\x00]{1,12}",
        2 => emoji_name(),
        1 => long_name(),
    ]
    .prop_filter("not publishable", |n| publishable(n))
}

/// A string and its NFC and NFD forms, which differ in bytes.
fn nfc_nfd_pair() -> impl Strategy<Value = (String, String)> {
    ("[a-z]{0,3}", vec(select(COMPOSABLE), 1..4), "[a-z.]{0,3}").prop_map(|(pre, chars, post)| {
        let s = format!("{pre}{}{post}", chars.concat());
        (s.nfc().collect(), s.nfd().collect())
    })
}

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>),
    Dir(BTreeMap<String, Node>),
}

/// A folder: nested sub-folders (some empty), files of 0 to 300 bytes, and NFC/NFD sibling
/// pairs both at the top and two levels down.
fn folder() -> impl Strategy<Value = BTreeMap<String, Node>> {
    let file = vec(any::<u8>(), 0..300).prop_map(Node::File);
    let node = file.prop_recursive(3, 40, 5, |inner| {
        btree_map(name(), inner, 0..5).prop_map(Node::Dir)
    });
    (btree_map(name(), node, 1..8), vec(nfc_nfd_pair(), 1..3)).prop_map(|(mut root, pairs)| {
        let mut deep = BTreeMap::new();
        for (nfc, nfd) in pairs {
            assert_ne!(nfc.as_bytes(), nfd.as_bytes());
            let (a, b) = (format!("nfc {nfc}"), format!("nfd {nfd}"));
            root.insert(nfc.clone(), Node::File(a.clone().into_bytes()));
            root.insert(nfd.clone(), Node::File(b.clone().into_bytes()));
            deep.insert(nfc, Node::File(a.into_bytes()));
            deep.insert(nfd, Node::File(b.into_bytes()));
        }
        let mid = BTreeMap::from([("deeper".to_owned(), Node::Dir(deep))]);
        root.insert("nfc-nfd".to_owned(), Node::Dir(mid));
        root
    })
}

fn write_folder(dir: &Path, entries: &BTreeMap<String, Node>) {
    for (name, node) in entries {
        let path = dir.join(name);
        match node {
            Node::File(data) => std::fs::write(&path, data).unwrap(),
            Node::Dir(sub) => {
                std::fs::create_dir(&path).unwrap();
                write_folder(&path, sub);
            }
        }
    }
}

fn flatten(prefix: &str, entries: &BTreeMap<String, Node>, out: &mut Listing) {
    for (name, node) in entries {
        let rel = join(prefix, name);
        match node {
            Node::File(data) => {
                out.files.insert(rel, data.clone());
            }
            Node::Dir(sub) => {
                out.dirs.insert(rel.clone());
                flatten(&rel, sub, out);
            }
        }
    }
}

async fn check_paths(store: &LocalStore, root: &Hash, expected: &Listing) {
    for (path, data) in &expected.files {
        let got = resolve(store, root, path)
            .await
            .unwrap_or_else(|| panic!("{path:?} does not resolve"));
        assert_eq!(got.kind, EntryKind::File, "{path:?}");
        assert_eq!(got.size, data.len() as u64, "{path:?}");
        assert_eq!(got.hash, Hash::of(data), "{path:?}");
        let whole = store.get_object(&got.hash).await.unwrap().unwrap();
        assert_eq!(&whole[..], &data[..], "{path:?} through get_object");
        let body = store.open_object(&got.hash).await.unwrap().unwrap();
        assert_eq!(body.len, Some(data.len() as u64), "{path:?}");
        assert_eq!(read_body(body).await, *data, "{path:?} through open_object");
    }
    for dir in &expected.dirs {
        let got = resolve(store, root, dir).await;
        assert_eq!(got.map(|r| r.kind), Some(EntryKind::Dir), "{dir:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn arbitrary_folders_read_back_byte_identical(model in folder()) {
        let mut expected = Listing::default();
        flatten("", &model, &mut expected);
        let site = tempfile::tempdir().unwrap();
        write_folder(site.path(), &model);
        // The filesystem kept every name byte for byte (no normalisation), so the folder on
        // disk is exactly the model.
        prop_assert_eq!(&read_folder(site.path()), &expected);
        let total: u64 = expected.files.values().map(|d| d.len() as u64).sum();

        runtime().block_on(async {
            let opts = PublishOptions::default();
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open(dir.path(), Access::Write).unwrap();
            let first = publish(&store, site.path(), "props", &opts).await.unwrap();
            assert_eq!(first.deploy.files, expected.files.len() as u64);
            assert_eq!(first.deploy.bytes, total);
            assert_eq!(first.previous_seq, None);
            let root = first.deploy.root;
            check_paths(&store, &root, &expected).await;
            // And nothing else: a full walk finds exactly the model.
            assert_eq!(read_deploy(&store, &root).await, expected);
            assert_eq!(support::verify_objects(dir.path()) as u64, first.objects);

            let again = publish(&store, site.path(), "props", &opts).await.unwrap();
            assert_eq!(again.deploy.root, root, "same folder, same store");
            assert_eq!((again.new_blobs, again.new_trees), (0, 0));
            assert_eq!(again.previous_seq, Some(1));
            let current = store.get_current("props").await.unwrap().unwrap();
            assert_eq!((current.deploy, current.seq), (again.deploy.id, 2));

            let fresh_dir = tempfile::tempdir().unwrap();
            let fresh = LocalStore::open(fresh_dir.path(), Access::Write).unwrap();
            let other = publish(&fresh, site.path(), "props", &opts).await.unwrap();
            assert_eq!(other.deploy.root, root, "same folder, fresh store");
            assert_eq!(other.new_objects(), first.new_objects());
            assert_eq!(
                support::object_files(fresh_dir.path()),
                support::object_files(dir.path())
                    .iter()
                    .map(|p| fresh_dir.path().join(p.strip_prefix(dir.path()).unwrap()))
                    .collect::<Vec<_>>()
            );
        });
    }
}

/// One entry as raw fields, encoded by this test's own reading of the format.
#[derive(Debug, Clone)]
struct RawEntry {
    name: Vec<u8>,
    kind: u8,
    size: u64,
    hash: [u8; 32],
}

fn raw_node(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = b"EDGT".to_vec();
    out.push(1);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&e.name);
        out.push(e.kind);
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.hash);
    }
    out
}

fn valid_entries() -> impl Strategy<Value = Vec<RawEntry>> {
    btree_set(name(), 2..8).prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names),
            vec((1u8..=2, any::<u64>(), any::<[u8; 32]>()), n),
        )
            .prop_map(|(names, fields)| {
                names
                    .into_iter()
                    .zip(fields)
                    .map(|(name, (kind, size, hash))| RawEntry {
                        name: name.into_bytes(),
                        kind,
                        size,
                        hash,
                    })
                    .collect()
            })
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Swap entries i and i+1.
    Unsorted(Index),
    /// Give entry i+1 the name of entry i.
    Duplicate(Index),
    EmptyName(Index),
    DotName(Index, bool),
    /// Insert `/` into a name at a byte position.
    Slash(Index, Index),
    Nul(Index, Index),
    Version(u8),
    Trailing(Vec<u8>),
    Truncate(Index),
    Kind(Index, u8),
    Magic(Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Unsorted),
        any::<Index>().prop_map(Mutation::Duplicate),
        any::<Index>().prop_map(Mutation::EmptyName),
        (any::<Index>(), any::<bool>()).prop_map(|(i, two)| Mutation::DotName(i, two)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Mutation::Slash(i, p)),
        (any::<Index>(), any::<Index>()).prop_map(|(i, p)| Mutation::Nul(i, p)),
        any::<u8>()
            .prop_filter("the known version", |v| *v != 1)
            .prop_map(Mutation::Version),
        vec(any::<u8>(), 1..64).prop_map(Mutation::Trailing),
        any::<Index>().prop_map(Mutation::Truncate),
        (
            any::<Index>(),
            any::<u8>().prop_filter("a known kind", |k| *k != 1 && *k != 2)
        )
            .prop_map(|(i, k)| Mutation::Kind(i, k)),
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Magic(i, x)),
    ]
}

/// Applies `m` to a valid node's entries; returns the bytes and the error the decoder must
/// give.
fn apply(mut entries: Vec<RawEntry>, m: &Mutation) -> (Vec<u8>, TreeError) {
    let n = entries.len();
    match m {
        Mutation::Unsorted(i) => {
            let i = i.index(n - 1);
            entries.swap(i, i + 1);
            (raw_node(&entries), TreeError::Unsorted { index: i + 1 })
        }
        Mutation::Duplicate(i) => {
            let i = i.index(n - 1);
            entries[i + 1].name = entries[i].name.clone();
            let name = String::from_utf8(entries[i].name.clone()).unwrap();
            (
                raw_node(&entries),
                TreeError::Duplicate { index: i + 1, name },
            )
        }
        Mutation::EmptyName(i) => {
            let i = i.index(n);
            entries[i].name.clear();
            (raw_node(&entries), TreeError::EmptyName { index: i })
        }
        Mutation::DotName(i, two) => {
            let i = i.index(n);
            entries[i].name = if *two { b"..".to_vec() } else { b".".to_vec() };
            (raw_node(&entries), TreeError::DotName { index: i })
        }
        Mutation::Slash(i, p) => {
            let i = i.index(n);
            let at = p.index(entries[i].name.len() + 1);
            entries[i].name.insert(at, b'/');
            (raw_node(&entries), TreeError::NameHasSlash { index: i })
        }
        Mutation::Nul(i, p) => {
            let i = i.index(n);
            let at = p.index(entries[i].name.len() + 1);
            entries[i].name.insert(at, 0);
            (raw_node(&entries), TreeError::NameHasNul { index: i })
        }
        Mutation::Version(v) => {
            let mut b = raw_node(&entries);
            b[4] = *v;
            (b, TreeError::UnknownVersion(*v))
        }
        Mutation::Trailing(extra) => {
            let mut b = raw_node(&entries);
            b.extend_from_slice(extra);
            (b, TreeError::TrailingBytes(extra.len()))
        }
        Mutation::Truncate(cut) => {
            let mut b = raw_node(&entries);
            let cut = cut.index(b.len());
            b.truncate(cut);
            (b, TreeError::Truncated(cut))
        }
        Mutation::Kind(i, kind) => {
            let i = i.index(n);
            entries[i].kind = *kind;
            (
                raw_node(&entries),
                TreeError::UnknownKind {
                    index: i,
                    kind: *kind,
                },
            )
        }
        Mutation::Magic(i, x) => {
            let mut b = raw_node(&entries);
            b[i.index(4)] ^= x;
            (b, TreeError::BadMagic)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decoder_rejects_every_mutation_with_its_error(
        entries in valid_entries(),
        m in mutation(),
    ) {
        // The untouched node is canonical: the encoder produces the same bytes and the
        // decoder accepts them.
        let owned: Vec<OwnedEntry> = entries
            .iter()
            .map(|e| OwnedEntry {
                name: String::from_utf8(e.name.clone()).unwrap(),
                kind: if e.kind == 1 { EntryKind::File } else { EntryKind::Dir },
                size: e.size,
                hash: Hash::from_bytes(e.hash),
            })
            .collect();
        let valid = raw_node(&entries);
        prop_assert_eq!(&tree::encode(owned).unwrap()[..], &valid[..]);
        let node = TreeNode::decode(valid.into()).unwrap();
        prop_assert_eq!(node.len(), entries.len());

        let (bytes, want) = apply(entries, &m);
        let got = TreeNode::decode(bytes.into()).map(|n| n.len());
        prop_assert_eq!(got, Err(want), "mutation {:?}", m);
    }
}
