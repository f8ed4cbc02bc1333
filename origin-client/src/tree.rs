//! The canonical, versioned encoding of directory nodes.
//!
//! ```text
//! node     = magic "EDGT" | version u8 | v1 | v2
//! v1       = count u32le | entry*count                                  (version 1)
//! v2       = flags u8 | [rules hash [u8; 32], when flags = 1] | count u32le | entry2*count
//! entry    = name_len u16le | name (UTF-8) | kind u8 (1 file, 2 dir) | size u64le | hash [u8; 32]
//! entry2   = entry | variant_count u8 | variant*variant_count
//! variant  = coding u8 (1 br, 2 zstd, 3 gzip) | size u64le | hash [u8; 32]
//! ```
//!
//! Entries are sorted by the bytes of their names, strictly (so names are unique). Names are
//! non-empty UTF-8 of at most [`MAX_NAME_LEN`] bytes, never `.` or `..`, and contain neither
//! `/` nor NUL. For a file, `size` is the blob's length; for a directory, the length of the
//! child node's encoding.
//!
//! Version 2 adds what publishing derives from the files: a file's compressed variants
//! (ordinary blobs, each smaller than the file, codings in ascending order, at most one each;
//! directories have none) and, on a deploy's root, the hash of its compiled site rules
//! (`_redirects`, `_headers`). A node with neither is encoded as version 1, and a version 2
//! node that has neither is refused: the decoder accepts exactly the encoder's output and
//! nothing else, so one tree has one hash. This module does no I/O.

use bytes::{BufMut, Bytes, BytesMut};
use std::cmp::Ordering;

use crate::Hash;

pub const MAGIC: &[u8; 4] = b"EDGT";
/// The version of a node with neither variants nor rules.
pub const VERSION: u8 = 1;
/// The version of a node with compressed variants or a rules reference.
pub const VERSION_2: u8 = 2;
/// Longest entry name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Most entries in one directory node.
pub const MAX_ENTRIES: usize = 4_000_000;

const HEADER_LEN: usize = 4 + 1 + 4;
/// Fixed part of an entry: name_len + kind + size + hash.
const ENTRY_FIXED: usize = 2 + 1 + 8 + 32;
/// One variant: coding + size + hash.
const VARIANT_LEN: usize = 1 + 8 + 32;

/// A content coding a compressed variant is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    /// Every coding, in the order of their codes (and of preference on ties).
    pub const ALL: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    pub fn code(self) -> u8 {
        match self {
            Coding::Br => 1,
            Coding::Zstd => 2,
            Coding::Gzip => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<Coding> {
        Coding::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }
}

/// A compressed form of a file: an ordinary blob, smaller than the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Variant {
    pub coding: Coding,
    pub size: u64,
    pub hash: Hash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
}

impl EntryKind {
    fn code(self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
        }
    }
}

/// Why bytes are not a canonical tree node, or why entries cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    #[error("not a tree node: bad magic")]
    BadMagic,
    #[error("unknown tree node version {0}")]
    UnknownVersion(u8),
    #[error("tree node truncated at byte {0}")]
    Truncated(usize),
    #[error("tree node has {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("tree node has {0} entries, more than the limit")]
    TooManyEntries(u64),
    #[error("entry {index}: empty name")]
    EmptyName { index: usize },
    #[error("entry {index}: name is `.` or `..`")]
    DotName { index: usize },
    #[error("entry {index}: name contains `/`")]
    NameHasSlash { index: usize },
    #[error("entry {index}: name contains NUL")]
    NameHasNul { index: usize },
    #[error("entry {index}: name is not UTF-8")]
    NameNotUtf8 { index: usize },
    #[error("entry {index}: name is {len} bytes, more than {MAX_NAME_LEN}")]
    NameTooLong { index: usize, len: usize },
    #[error("entry {index}: names not sorted")]
    Unsorted { index: usize },
    #[error("entry {index}: duplicate name {name:?}")]
    Duplicate { index: usize, name: String },
    #[error("entry {index}: unknown kind {kind}")]
    UnknownKind { index: usize, kind: u8 },
    #[error("unknown tree node flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("version 2 node with neither variants nor rules (must be version 1)")]
    NeedlessVersion2,
    #[error("entry {index}: unknown content coding {code}")]
    UnknownCoding { index: usize, code: u8 },
    #[error("entry {index}: variants not in coding order, or repeated")]
    VariantsUnsorted { index: usize },
    #[error("entry {index}: a variant is not smaller than the file")]
    VariantNotSmaller { index: usize },
    #[error("entry {index}: a folder has variants")]
    FolderVariants { index: usize },
}

/// Checks one entry name against the canonical rules.
pub fn validate_name(name: &[u8], index: usize) -> Result<&str, TreeError> {
    if name.is_empty() {
        return Err(TreeError::EmptyName { index });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(TreeError::NameTooLong {
            index,
            len: name.len(),
        });
    }
    if name == b"." || name == b".." {
        return Err(TreeError::DotName { index });
    }
    if name.contains(&b'/') {
        return Err(TreeError::NameHasSlash { index });
    }
    if name.contains(&0) {
        return Err(TreeError::NameHasNul { index });
    }
    std::str::from_utf8(name).map_err(|_| TreeError::NameNotUtf8 { index })
}

/// One entry, borrowed from a decoded node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub kind: EntryKind,
    pub size: u64,
    pub hash: Hash,
}

/// An owned entry, for building nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEntry {
    pub name: String,
    pub kind: EntryKind,
    pub size: u64,
    pub hash: Hash,
}

/// Encodes entries canonically (sorting them first), as version 1. Fails on an invalid or
/// duplicate name.
pub fn encode(entries: Vec<OwnedEntry>) -> Result<Bytes, TreeError> {
    encode_node(entries.into_iter().map(|e| (e, Vec::new())).collect(), None)
}

/// Encodes entries with their compressed variants and, for a deploy's root, the hash of its
/// compiled rules: version 2 when there is any of either, else version 1. Variants are put in
/// coding order; a variant not smaller than its file, a repeated coding, or variants on a
/// folder are refused.
pub fn encode_node(
    mut entries: Vec<(OwnedEntry, Vec<Variant>)>,
    rules: Option<Hash>,
) -> Result<Bytes, TreeError> {
    if entries.len() > MAX_ENTRIES {
        return Err(TreeError::TooManyEntries(entries.len() as u64));
    }
    entries.sort_unstable_by(|a, b| a.0.name.as_bytes().cmp(b.0.name.as_bytes()));
    let v2 = rules.is_some() || entries.iter().any(|(_, v)| !v.is_empty());
    let total: usize = HEADER_LEN
        + 33
        + entries
            .iter()
            .map(|(e, v)| ENTRY_FIXED + 1 + e.name.len() + VARIANT_LEN * v.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(total);
    out.put_slice(MAGIC);
    if v2 {
        out.put_u8(VERSION_2);
        match rules {
            Some(h) => {
                out.put_u8(1);
                out.put_slice(h.as_bytes());
            }
            None => out.put_u8(0),
        }
    } else {
        out.put_u8(VERSION);
    }
    out.put_u32_le(entries.len() as u32);
    for index in 0..entries.len() {
        let (e, variants) = &entries[index];
        validate_name(e.name.as_bytes(), index)?;
        if index > 0 && entries[index - 1].0.name == e.name {
            return Err(TreeError::Duplicate {
                index,
                name: e.name.clone(),
            });
        }
        out.put_u16_le(e.name.len() as u16);
        out.put_slice(e.name.as_bytes());
        out.put_u8(e.kind.code());
        out.put_u64_le(e.size);
        out.put_slice(e.hash.as_bytes());
        if v2 {
            if e.kind == EntryKind::Dir && !variants.is_empty() {
                return Err(TreeError::FolderVariants { index });
            }
            let mut sorted = variants.clone();
            sorted.sort_by_key(|v| v.coding);
            if sorted.windows(2).any(|w| w[0].coding == w[1].coding) {
                return Err(TreeError::VariantsUnsorted { index });
            }
            if sorted.iter().any(|v| v.size >= e.size) {
                return Err(TreeError::VariantNotSmaller { index });
            }
            out.put_u8(sorted.len() as u8);
            for v in &sorted {
                out.put_u8(v.coding.code());
                out.put_u64_le(v.size);
                out.put_slice(v.hash.as_bytes());
            }
        }
    }
    Ok(out.freeze())
}

/// A decoded, verified-canonical directory node. Cheap to clone; lookups are binary searches
/// over the original bytes, so a node costs its encoding plus four bytes per entry.
#[derive(Clone)]
pub struct TreeNode {
    bytes: Bytes,
    offsets: std::sync::Arc<[u32]>,
    /// Version 2: entries carry a variant count.
    v2: bool,
    rules: Option<Hash>,
}

impl std::fmt::Debug for TreeNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeNode")
            .field("entries", &self.len())
            .field("bytes", &self.bytes.len())
            .field("rules", &self.rules)
            .finish()
    }
}

impl TreeNode {
    /// Decodes and checks every canonical rule. Accepts exactly what [`encode_node`] produces.
    pub fn decode(bytes: Bytes) -> Result<TreeNode, TreeError> {
        let b = &bytes[..];
        if b.len() < 5 || &b[..4] != MAGIC {
            if b.len() < 4 || &b[..4] == MAGIC {
                return Err(TreeError::Truncated(b.len()));
            }
            return Err(TreeError::BadMagic);
        }
        let v2 = match b[4] {
            VERSION => false,
            VERSION_2 => true,
            v => return Err(TreeError::UnknownVersion(v)),
        };
        let mut pos = 5;
        let mut rules = None;
        if v2 {
            let flags = *b.get(pos).ok_or(TreeError::Truncated(b.len()))?;
            pos += 1;
            match flags {
                0 => {}
                1 => {
                    let h = b.get(pos..pos + 32).ok_or(TreeError::Truncated(b.len()))?;
                    let mut arr = [0u8; 32];
                    arr.copy_from_slice(h);
                    rules = Some(Hash::from_bytes(arr));
                    pos += 32;
                }
                f => return Err(TreeError::UnknownFlags(f)),
            }
        }
        if b.len() < pos + 4 {
            return Err(TreeError::Truncated(b.len()));
        }
        let count = u32::from_le_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]) as usize;
        pos += 4;
        if count > MAX_ENTRIES {
            return Err(TreeError::TooManyEntries(count as u64));
        }
        // Every entry takes at least ENTRY_FIXED bytes: refuse absurd counts before
        // allocating for them.
        if count > (b.len() - pos) / ENTRY_FIXED {
            return Err(TreeError::Truncated(b.len()));
        }
        if b.len() > u32::MAX as usize {
            return Err(TreeError::TooManyEntries(count as u64));
        }
        let mut offsets = Vec::with_capacity(count);
        let mut prev: Option<&[u8]> = None;
        let mut any_variant = false;
        for index in 0..count {
            if b.len() < pos + 2 {
                return Err(TreeError::Truncated(b.len()));
            }
            let name_len = u16::from_le_bytes([b[pos], b[pos + 1]]) as usize;
            let mut end = pos + ENTRY_FIXED + name_len;
            if b.len() < end {
                return Err(TreeError::Truncated(b.len()));
            }
            let name = &b[pos + 2..pos + 2 + name_len];
            validate_name(name, index)?;
            if let Some(prev) = prev {
                match prev.cmp(name) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        return Err(TreeError::Duplicate {
                            index,
                            name: String::from_utf8_lossy(name).into_owned(),
                        });
                    }
                    Ordering::Greater => return Err(TreeError::Unsorted { index }),
                }
            }
            let kind = b[pos + 2 + name_len];
            if kind != 1 && kind != 2 {
                return Err(TreeError::UnknownKind { index, kind });
            }
            if v2 {
                let n = *b.get(end).ok_or(TreeError::Truncated(b.len()))? as usize;
                end += 1;
                if n > 0 && kind != 1 {
                    return Err(TreeError::FolderVariants { index });
                }
                if b.len() < end + n * VARIANT_LEN {
                    return Err(TreeError::Truncated(b.len()));
                }
                let size = read_u64(b, pos + 3 + name_len);
                let mut last = 0u8;
                for k in 0..n {
                    let at = end + k * VARIANT_LEN;
                    let code = b[at];
                    if Coding::from_code(code).is_none() {
                        return Err(TreeError::UnknownCoding { index, code });
                    }
                    if code <= last {
                        return Err(TreeError::VariantsUnsorted { index });
                    }
                    last = code;
                    if read_u64(b, at + 1) >= size {
                        return Err(TreeError::VariantNotSmaller { index });
                    }
                }
                any_variant |= n > 0;
                end += n * VARIANT_LEN;
            }
            offsets.push(pos as u32);
            prev = Some(name);
            pos = end;
        }
        if pos != b.len() {
            return Err(TreeError::TrailingBytes(b.len() - pos));
        }
        if v2 && rules.is_none() && !any_variant {
            return Err(TreeError::NeedlessVersion2);
        }
        Ok(TreeNode {
            bytes,
            offsets: offsets.into(),
            v2,
            rules,
        })
    }

    /// The hash of the deploy's compiled rules, recorded on its root node.
    pub fn rules(&self) -> Option<Hash> {
        self.rules
    }

    /// The compressed variants of the `i`th entry, in coding order. Panics when `i >= len()`.
    pub fn variants(&self, i: usize) -> impl ExactSizeIterator<Item = Variant> + '_ {
        let b = &self.bytes[..];
        let pos = self.offsets[i] as usize;
        let len = u16::from_le_bytes([b[pos], b[pos + 1]]) as usize;
        let at = pos + ENTRY_FIXED + len;
        // Checked by `decode`: the count and the variants fit, and codings are known.
        let n = if self.v2 { b[at] as usize } else { 0 };
        (0..n).map(move |k| {
            let v = at + 1 + k * VARIANT_LEN;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&b[v + 9..v + 41]);
            Variant {
                coding: Coding::from_code(b[v]).unwrap_or(Coding::Gzip),
                size: read_u64(b, v + 1),
                hash: Hash::from_bytes(hash),
            }
        })
    }

    /// Every object this node refers to: its entries' blobs and child nodes, their variants,
    /// and its rules. (What a garbage collector marks, or a preview keeps.)
    pub fn references(&self) -> impl Iterator<Item = (Hash, EntryKind)> + '_ {
        let rules = self.rules.map(|h| (h, EntryKind::File));
        (0..self.len())
            .flat_map(move |i| {
                let e = self.entry(i);
                std::iter::once((e.hash, e.kind))
                    .chain(self.variants(i).map(|v| (v.hash, EntryKind::File)))
            })
            .chain(rules)
    }

    /// The canonical encoding this node was decoded from.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn hash(&self) -> Hash {
        Hash::of(&self.bytes)
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Approximate memory held, for cache weighing.
    pub fn weight(&self) -> usize {
        self.bytes.len() + self.offsets.len() * 4 + 64
    }

    fn name_at(&self, i: usize) -> &[u8] {
        let pos = self.offsets[i] as usize;
        let len = u16::from_le_bytes([self.bytes[pos], self.bytes[pos + 1]]) as usize;
        &self.bytes[pos + 2..pos + 2 + len]
    }

    /// The `i`th entry in name order. Panics when `i >= len()`.
    pub fn entry(&self, i: usize) -> Entry<'_> {
        let pos = self.offsets[i] as usize;
        let b = &self.bytes[..];
        let len = u16::from_le_bytes([b[pos], b[pos + 1]]) as usize;
        let name_end = pos + 2 + len;
        // Checked by `decode`: names are UTF-8, kinds are 1 or 2, and the fixed part fits.
        let name = std::str::from_utf8(&b[pos + 2..name_end]).unwrap_or_default();
        let kind = if b[name_end] == 1 {
            EntryKind::File
        } else {
            EntryKind::Dir
        };
        let mut size = [0u8; 8];
        size.copy_from_slice(&b[name_end + 1..name_end + 9]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[name_end + 9..name_end + 41]);
        Entry {
            name,
            kind,
            size: u64::from_le_bytes(size),
            hash: Hash::from_bytes(hash),
        }
    }

    /// Finds an entry by exact name: a binary search, O(log n).
    pub fn lookup(&self, name: &str) -> Option<Entry<'_>> {
        self.position(name).ok().map(|i| self.entry(i))
    }

    /// Where `name` is (`Ok`), or where it would go (`Err`): a binary search.
    pub fn position(&self, name: &str) -> Result<usize, usize> {
        let needle = name.as_bytes();
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name_at(mid).cmp(needle) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// The entries whose names extend `name` (`name` + more bytes), in order. They sit right
    /// after `name` in the sorted node, so this is one search and a short scan.
    pub fn extensions<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Entry<'a>> + 'a {
        let start = match self.position(name) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        (start..self.len())
            .take_while(move |&i| self.name_at(i).starts_with(name.as_bytes()))
            .map(move |i| self.entry(i))
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Entry<'_>> + '_ {
        (0..self.len()).map(move |i| self.entry(i))
    }
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, data: &[u8]) -> OwnedEntry {
        OwnedEntry {
            name: name.into(),
            kind: EntryKind::File,
            size: data.len() as u64,
            hash: Hash::of(data),
        }
    }

    fn raw(entries: &[(&[u8], u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for (name, kind) in entries {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
            out.push(*kind);
            out.extend_from_slice(&7u64.to_le_bytes());
            out.extend_from_slice(&[9u8; 32]);
        }
        out
    }

    #[test]
    fn encode_decode_lookup() {
        let bytes = encode(vec![file("b.txt", b"b"), file("a.txt", b"a")]).unwrap();
        let node = TreeNode::decode(bytes.clone()).unwrap();
        assert_eq!(node.len(), 2);
        assert_eq!(node.entry(0).name, "a.txt");
        let b = node.lookup("b.txt").unwrap();
        assert_eq!(b.hash, Hash::of(b"b"));
        assert_eq!(b.size, 1);
        assert!(node.lookup("c.txt").is_none());
        assert!(node.lookup("").is_none());
        assert_eq!(node.hash(), Hash::of(&bytes));
    }

    #[test]
    fn extensions_are_the_names_that_extend_a_name() {
        let node = TreeNode::decode(
            encode(vec![
                file("app.js", b"1"),
                file("app.js.br", b"2"),
                file("app.js.gz", b"3"),
                file("app.jsx", b"4"),
                file("app.j", b"5"),
                file("b", b"6"),
            ])
            .unwrap(),
        )
        .unwrap();
        let names: Vec<_> = node.extensions("app.js").map(|e| e.name).collect();
        assert_eq!(names, ["app.js.br", "app.js.gz", "app.jsx"]);
        let names: Vec<_> = node.extensions("zzz").map(|e| e.name).collect();
        assert!(names.is_empty());
    }

    /// Found by the `tree_decode` fuzz target (a wrong assumption of its own, not a decoder
    /// bug): names may hold control characters, all but NUL, so `x\u{1}` is a name that
    /// extends `x`, while `x\0` is never one and is where a search past `x` lands.
    #[test]
    fn names_may_hold_control_characters_but_not_nul() {
        let bytes = encode(vec![file("about\u{1}", b"1"), file("about", b"2")]).unwrap();
        let node = TreeNode::decode(bytes.clone()).unwrap();
        assert_eq!(node.position("about"), Ok(0));
        assert_eq!(node.position("about\u{1}"), Ok(1));
        assert_eq!(node.position("about\0"), Err(1));
        let names: Vec<_> = node.extensions("about").map(|e| e.name).collect();
        assert_eq!(names, ["about\u{1}"]);
        let entries = node
            .iter()
            .map(|e| (e.name.to_owned(), e.kind, e.size, e.hash));
        let again = encode(
            entries
                .map(|(name, kind, size, hash)| OwnedEntry {
                    name,
                    kind,
                    size,
                    hash,
                })
                .collect(),
        )
        .unwrap();
        assert_eq!(again, bytes);
        assert!(encode(vec![file("about\0", b"3")]).is_err());
    }

    #[test]
    fn empty_directory_round_trips() {
        let node = TreeNode::decode(encode(vec![]).unwrap()).unwrap();
        assert!(node.is_empty());
        assert!(node.lookup("x").is_none());
    }

    #[test]
    fn raw_helper_matches_encoder() {
        let ours = raw(&[(b"a", 1), (b"b", 2)]);
        let e = |n: &str, k| OwnedEntry {
            name: n.into(),
            kind: k,
            size: 7,
            hash: Hash::from_bytes([9; 32]),
        };
        let enc = encode(vec![e("b", EntryKind::Dir), e("a", EntryKind::File)]).unwrap();
        assert_eq!(&enc[..], &ours[..]);
        TreeNode::decode(Bytes::from(ours)).unwrap();
    }

    #[test]
    fn decoder_rejects_each_non_canonical_form() {
        let d = |v: Vec<u8>| TreeNode::decode(Bytes::from(v)).unwrap_err();
        assert_eq!(
            d(raw(&[(b"b", 1), (b"a", 1)])),
            TreeError::Unsorted { index: 1 }
        );
        assert!(matches!(
            d(raw(&[(b"a", 1), (b"a", 2)])),
            TreeError::Duplicate { index: 1, .. }
        ));
        assert_eq!(d(raw(&[(b"", 1)])), TreeError::EmptyName { index: 0 });
        assert_eq!(d(raw(&[(b".", 1)])), TreeError::DotName { index: 0 });
        assert_eq!(d(raw(&[(b"..", 2)])), TreeError::DotName { index: 0 });
        assert_eq!(d(raw(&[(b"a/b", 1)])), TreeError::NameHasSlash { index: 0 });
        assert_eq!(d(raw(&[(b"a\0b", 1)])), TreeError::NameHasNul { index: 0 });
        assert_eq!(d(raw(&[(b"\xff", 1)])), TreeError::NameNotUtf8 { index: 0 });
        assert_eq!(
            d(raw(&[(b"a", 3)])),
            TreeError::UnknownKind { index: 0, kind: 3 }
        );
        let long = vec![b'x'; MAX_NAME_LEN + 1];
        assert!(matches!(
            d(raw(&[(&long, 1)])),
            TreeError::NameTooLong { .. }
        ));
        let mut v = raw(&[(b"a", 1)]);
        v[4] = 3;
        assert_eq!(d(v), TreeError::UnknownVersion(3));
        let mut v = raw(&[(b"a", 1)]);
        v[0] = b'X';
        assert_eq!(d(v), TreeError::BadMagic);
        let mut v = raw(&[(b"a", 1)]);
        v.push(0);
        assert_eq!(d(v), TreeError::TrailingBytes(1));
        let v = raw(&[(b"a", 1)]);
        for cut in 0..v.len() {
            assert!(
                matches!(
                    TreeNode::decode(Bytes::copy_from_slice(&v[..cut])),
                    Err(TreeError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        // A count that claims more entries than the bytes can hold.
        let mut v = raw(&[(b"a", 1)]);
        v[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(TreeNode::decode(Bytes::from(v)).is_err());
    }

    #[test]
    fn encoder_rejects_bad_names() {
        assert!(matches!(
            encode(vec![file("a", b"1"), file("a", b"2")]),
            Err(TreeError::Duplicate { .. })
        ));
        assert!(encode(vec![file("..", b"")]).is_err());
        assert!(encode(vec![file("x/y", b"")]).is_err());
        assert!(encode(vec![file("", b"")]).is_err());
    }

    fn v(coding: Coding, size: u64) -> Variant {
        Variant {
            coding,
            size,
            hash: Hash::of(&size.to_le_bytes()),
        }
    }

    #[test]
    fn version_2_round_trips_variants_and_rules() {
        let page = file("index.html", &[b'x'; 100]);
        let rules = Hash::of(b"rules");
        // Given in any order, stored in coding order.
        let bytes = encode_node(
            vec![
                (page, vec![v(Coding::Gzip, 30), v(Coding::Br, 20)]),
                (file("a.png", b"png"), vec![]),
            ],
            Some(rules),
        )
        .unwrap();
        assert_eq!(bytes[4], VERSION_2);
        let node = TreeNode::decode(bytes).unwrap();
        assert_eq!(node.rules(), Some(rules));
        let i = node.position("index.html").unwrap();
        let got: Vec<_> = node.variants(i).collect();
        assert_eq!(got, [v(Coding::Br, 20), v(Coding::Gzip, 30)]);
        assert_eq!(node.variants(node.position("a.png").unwrap()).len(), 0);
        assert_eq!(node.lookup("index.html").unwrap().size, 100);
        assert_eq!(node.references().count(), 2 + 2 + 1);
        // Variants alone make version 2 too; neither keeps version 1 (and its old hashes).
        let only = encode_node(vec![(file("a", &[0; 9]), vec![v(Coding::Zstd, 3)])], None);
        let node = TreeNode::decode(only.unwrap()).unwrap();
        assert_eq!(node.rules(), None);
        assert_eq!(node.variants(0).len(), 1);
        let plain = encode_node(vec![(file("a", b"1"), vec![])], None).unwrap();
        assert_eq!(plain, encode(vec![file("a", b"1")]).unwrap());
        assert_eq!(plain[4], VERSION);
        assert_eq!(TreeNode::decode(plain).unwrap().variants(0).len(), 0);
    }

    #[test]
    fn version_2_decoder_is_strict() {
        let d = |v: Vec<u8>| TreeNode::decode(Bytes::from(v)).unwrap_err();
        let good = encode_node(
            vec![(
                file("a", &[0; 50]),
                vec![v(Coding::Br, 10), v(Coding::Gzip, 20)],
            )],
            None,
        )
        .unwrap()
        .to_vec();
        TreeNode::decode(Bytes::from(good.clone())).unwrap();
        // header: magic 4, version, flags = 6; entry: 2 + 1 + 1 + 8 + 32 = 44 -> count at 50
        let count_at = 6 + 4 + 2 + 1 + 1 + 8 + 32;
        let first = count_at + 1;
        let second = first + VARIANT_LEN;
        let mut swapped = good.clone();
        swapped[first] = 3;
        swapped[second] = 1;
        assert_eq!(d(swapped), TreeError::VariantsUnsorted { index: 0 });
        let mut repeated = good.clone();
        repeated[second] = 1;
        assert_eq!(d(repeated), TreeError::VariantsUnsorted { index: 0 });
        let mut unknown = good.clone();
        unknown[second] = 9;
        assert_eq!(d(unknown), TreeError::UnknownCoding { index: 0, code: 9 });
        let mut bigger = good.clone();
        bigger[second + 1..second + 9].copy_from_slice(&50u64.to_le_bytes());
        assert_eq!(d(bigger), TreeError::VariantNotSmaller { index: 0 });
        let mut flags = good.clone();
        flags[5] = 2;
        assert_eq!(d(flags), TreeError::UnknownFlags(2));
        // A version 2 node with nothing version 2 about it is not canonical.
        let mut needless = good[..count_at].to_vec();
        needless.push(0);
        assert_eq!(d(needless), TreeError::NeedlessVersion2);
        // Variants on a folder.
        let mut dir = good.clone();
        dir[6 + 4 + 2 + 1] = 2;
        assert_eq!(d(dir), TreeError::FolderVariants { index: 0 });
        for cut in 0..good.len() {
            assert!(
                matches!(
                    TreeNode::decode(Bytes::copy_from_slice(&good[..cut])),
                    Err(TreeError::Truncated(_))
                ),
                "cut at {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(d(trailing), TreeError::TrailingBytes(1));
        // The encoder refuses what the decoder would.
        let e = |vs| encode_node(vec![(file("a", &[0; 50]), vs)], None).unwrap_err();
        assert_eq!(
            e(vec![v(Coding::Br, 50)]),
            TreeError::VariantNotSmaller { index: 0 }
        );
        assert_eq!(
            e(vec![v(Coding::Br, 5), v(Coding::Br, 6)]),
            TreeError::VariantsUnsorted { index: 0 }
        );
    }

    /// Canonical: any single-byte change to a version 2 node either fails to decode or
    /// decodes to a node that encodes back to exactly those bytes.
    #[test]
    fn every_mutation_is_refused_or_canonical() {
        let good = encode_node(
            vec![
                (
                    file("a.css", &[1; 90]),
                    vec![v(Coding::Br, 10), v(Coding::Zstd, 11)],
                ),
                (file("b.png", &[2; 9]), vec![]),
                (
                    OwnedEntry {
                        name: "dir".into(),
                        kind: EntryKind::Dir,
                        size: 44,
                        hash: Hash::of(b"d"),
                    },
                    vec![],
                ),
            ],
            Some(Hash::of(b"r")),
        )
        .unwrap();
        let reencode = |n: &TreeNode| {
            let entries = (0..n.len())
                .map(|i| {
                    let e = n.entry(i);
                    let owned = OwnedEntry {
                        name: e.name.into(),
                        kind: e.kind,
                        size: e.size,
                        hash: e.hash,
                    };
                    (owned, n.variants(i).collect())
                })
                .collect();
            encode_node(entries, n.rules()).unwrap()
        };
        assert_eq!(reencode(&TreeNode::decode(good.clone()).unwrap()), good);
        let mut accepted = 0;
        for at in 0..good.len() {
            for delta in [1u8, 0x80, 0xff] {
                let mut m = good.to_vec();
                m[at] = m[at].wrapping_add(delta);
                if let Ok(n) = TreeNode::decode(Bytes::from(m.clone())) {
                    accepted += 1;
                    assert_eq!(&reencode(&n)[..], &m[..], "byte {at} + {delta}");
                }
            }
        }
        // Hashes, sizes and names' letters may change and stay canonical; structure may not.
        assert!(accepted > 0);
    }

    #[test]
    fn hundred_thousand_entries() {
        let entries: Vec<_> = (0..100_000)
            .map(|i| file(&format!("file-{i:06}.html"), &[]))
            .collect();
        let node = TreeNode::decode(encode(entries).unwrap()).unwrap();
        assert_eq!(node.len(), 100_000);
        for i in (0..100_000).step_by(997) {
            let name = format!("file-{i:06}.html");
            assert_eq!(node.lookup(&name).unwrap().name, name);
        }
        assert!(node.lookup("file-100000.html").is_none());
    }
}
