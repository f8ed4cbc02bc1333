//! The publish index: what a re-publish with compression reuses from the deploy before it.
//!
//! With compression on, a folder's tree node names the variants of its files, so its hash
//! is not known before those variants are, and the top-down diff cannot start until they
//! are: a re-publish would read every node of the previous deploy to find the variants it
//! can reuse (one store request per folder, about 1,000 for 100,000 files). Instead every
//! deploy published with compression stores an **index** object (content-addressed, named by
//! its [`DeployRecord`](crate::DeployRecord)) listing, for every folder, the hash of its
//! *plain* node (the node `--no-compress` would write: no variants, sub-folders named by
//! their plain hashes, the rules hash on the root) and of its real node.
//!
//! A re-publish computes the plain hashes locally, with no request. A folder whose plain
//! hash the previous index lists has exactly the content it had then, so its real node (and
//! its whole subtree) is reused as it is, without reading it. Only the folders that changed
//! are built again; for the variants of their unchanged files, the previous deploy's node at
//! the same path is read (one request per changed folder). An unchanged re-publish reads the
//! index and asks the store for the root: a handful of requests, whatever the size.
//!
//! The index is a hint, never trusted for bytes: one that is missing, corrupt or made with
//! other compression levels is ignored (the previous deploy's tree is read instead), and a
//! reused node the store no longer has makes the publish build everything again.

use serde::{Deserialize, Serialize};

use crate::Hash;
use crate::compress::Levels;

/// Bumped when what a plain node is, or how variants are chosen, changes.
pub const FORMAT: u32 = 1;

/// One deploy's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    /// The compression levels the variants were made with (brotli, zstd, gzip).
    pub levels: (u32, i32, u32),
    pub dirs: Vec<IndexedDir>,
}

/// One folder of a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedDir {
    /// From the root: `""` for the root, `a/b` below it.
    pub path: String,
    /// The hash of the folder's plain node.
    pub plain: Hash,
    /// The hash and length of its real node.
    pub real: Hash,
    pub size: u64,
    /// For each entry of the node, in order, how many variants it records (`0` to `3`):
    /// what a publish that reuses the folder needs to count the deploy's objects.
    pub variants: String,
}

impl Index {
    pub fn new(levels: Levels, dirs: Vec<IndexedDir>) -> Index {
        Index {
            format: FORMAT,
            levels: (levels.br, levels.zstd, levels.gzip),
            dirs,
        }
    }

    /// Whether a publish at `levels` may reuse what this index lists.
    pub fn usable_at(&self, levels: Levels) -> bool {
        self.format == FORMAT && self.levels == (levels.br, levels.zstd, levels.gzip)
    }

    pub fn encode(&self) -> bytes::Bytes {
        // Serialising plain data to memory cannot fail.
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(bytes: &[u8]) -> Result<Index, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// An [`Index`] looked up by plain hash and by path.
#[derive(Debug, Default)]
pub struct Lookup {
    by_plain: std::collections::HashMap<Hash, usize>,
    by_path: std::collections::HashMap<String, usize>,
    dirs: Vec<IndexedDir>,
}

impl Lookup {
    pub fn new(index: Index) -> Lookup {
        let mut l = Lookup::default();
        for (i, d) in index.dirs.iter().enumerate() {
            l.by_plain.entry(d.plain).or_insert(i);
            l.by_path.entry(d.path.clone()).or_insert(i);
        }
        l.dirs = index.dirs;
        l
    }

    /// The folder of the previous deploy with this content, if any.
    pub fn same_content(&self, plain: &Hash) -> Option<&IndexedDir> {
        self.by_plain.get(plain).map(|&i| &self.dirs[i])
    }

    /// The folder the previous deploy had at this path, if any.
    pub fn at_path(&self, path: &str) -> Option<&IndexedDir> {
        self.by_path.get(path).map(|&i| &self.dirs[i])
    }
}

/// `a` joined with `b` as an index path.
pub fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}/{b}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_levels() {
        let d = IndexedDir {
            path: "a/b".into(),
            plain: Hash::of(b"p"),
            real: Hash::of(b"r"),
            size: 99,
            variants: "3020".into(),
        };
        let ix = Index::new(Levels::PUBLISH, vec![d.clone()]);
        let back = Index::decode(&ix.encode()).unwrap();
        assert_eq!(back, ix);
        assert!(back.usable_at(Levels::PUBLISH));
        assert!(!back.usable_at(Levels::FAST));
        let l = Lookup::new(back);
        assert_eq!(l.same_content(&Hash::of(b"p")), Some(&d));
        assert_eq!(l.at_path("a/b"), Some(&d));
        assert_eq!(l.at_path("a"), None);
        assert!(Index::decode(b"{\"format\":1}").is_err());
        assert_eq!(join("", "x"), "x");
        assert_eq!(join("x", "y"), "x/y");
    }
}
