//! Compressed variants of a deploy's files, made once at publish time.
//!
//! Each compressible file (by content type, from its name: text, JS, JSON, SVG, XML, wasm,
//! uncompressed fonts; never images, video, archives or already-compressed fonts) is
//! compressed with brotli, zstd and gzip. A variant is kept only when it is smaller than the
//! file. Variants are ordinary content-addressed blobs, uploaded like any other and recorded
//! next to their file in its tree node (format version 2, see [`crate::tree`]), so the edge
//! caches, verifies and deduplicates them like any blob. A re-publish reuses the variants the
//! previous deploy recorded for the same content hash: it recompresses nothing that did not
//! change. Compression runs on the blocking pool, a bounded number of files at a time.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};

use crate::Hash;
use crate::publish::PublishError;
use crate::store::Store;
use crate::tree::{Coding, EntryKind, TreeNode, Variant};

/// Compression levels. [`Levels::PUBLISH`] for `edge publish`, [`Levels::FAST`] for preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    /// Brotli quality, 0-11.
    pub br: u32,
    /// Zstandard level, 1-22.
    pub zstd: i32,
    /// Gzip (deflate) level, 0-9.
    pub gzip: u32,
}

impl Levels {
    /// The smallest output the formats offer: brotli 11, zstd 19, gzip 9.
    pub const PUBLISH: Levels = Levels {
        br: 11,
        zstd: 19,
        gzip: 9,
    };
    /// Quick levels for a preview that rebuilds on every save.
    pub const FAST: Levels = Levels {
        br: 4,
        zstd: 3,
        gzip: 6,
    };
}

/// Files larger than this are served as they are (brotli 11 runs at about 1 MB/s).
pub const MAX_INPUT: u64 = 32 << 20;

/// Extensions of the content types worth compressing: text, scripts, data, vector images,
/// wasm, and fonts that are not compressed already (`woff`/`woff2` are).
const COMPRESSIBLE: &[&str] = &[
    "html",
    "htm",
    "xhtml",
    "css",
    "js",
    "mjs",
    "cjs",
    "json",
    "map",
    "jsonld",
    "webmanifest",
    "txt",
    "md",
    "csv",
    "tsv",
    "xml",
    "rss",
    "atom",
    "svg",
    "wasm",
    "ttf",
    "otf",
    "yaml",
    "yml",
    "toml",
    "ics",
    "vtt",
    "srt",
];

/// Is a file with this name worth compressing (by the content type its extension gives)?
pub fn compressible(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    COMPRESSIBLE.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// Whether a publish compresses this file: a compressible name, at most [`MAX_INPUT`] bytes.
pub fn eligible(path: &Path, size: u64) -> bool {
    size <= MAX_INPUT && name_of(path).is_some_and(compressible)
}

/// Compresses `data` in each coding; keeps only the outputs smaller than `data`. CPU-bound.
pub fn compress(data: &[u8], levels: Levels) -> Vec<(Coding, Vec<u8>)> {
    let mut out = Vec::with_capacity(3);
    for coding in Coding::ALL {
        let packed = match coding {
            Coding::Br => {
                // A window no larger than the input: the same output for small files, made
                // in a fraction of the time.
                let bits = usize::BITS - data.len().max(1).leading_zeros();
                let lgwin = bits.clamp(10, 24);
                let mut w = brotli::CompressorWriter::new(Vec::new(), 64 * 1024, levels.br, lgwin);
                w.write_all(data).map(|()| w.into_inner())
            }
            Coding::Zstd => zstd::bulk::compress(data, levels.zstd),
            Coding::Gzip => {
                let mut w = flate2::write::GzEncoder::new(
                    Vec::new(),
                    flate2::Compression::new(levels.gzip),
                );
                w.write_all(data).and_then(|()| w.finish())
            }
        };
        // Writing to memory fails only on allocation; the file is then served as it is.
        if let Ok(packed) = packed
            && packed.len() < data.len()
        {
            out.push((coding, packed));
        }
    }
    out
}

/// The variants recorded in the deploy under `root` (the previous deploy of the site), by the
/// hash of the file they compress. Best effort: a node that cannot be read is skipped, and its
/// files are compressed again. Reads every node of the deploy: what a publish does when the
/// previous deploy has no usable index ([`crate::reuse`]).
pub async fn recorded(store: &dyn Store, root: Hash) -> HashMap<Hash, Vec<Variant>> {
    let mut out = HashMap::new();
    let mut stack = vec![root];
    let mut seen = std::collections::HashSet::new();
    while let Some(h) = stack.pop() {
        if !seen.insert(h) {
            continue;
        }
        if let Some(node) = read_node(store, h).await {
            stack.extend(node_variants(&node, &mut out));
        }
    }
    out
}

/// The variants recorded in these nodes alone (not their sub-folders), read `concurrency`
/// at a time. Best effort, as [`recorded`].
pub async fn recorded_in(
    store: &dyn Store,
    nodes: &[Hash],
    concurrency: usize,
) -> HashMap<Hash, Vec<Variant>> {
    let read: Vec<Option<TreeNode>> = futures_util::stream::iter(nodes.iter().copied())
        .map(|h| read_node(store, h))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut out = HashMap::new();
    for node in read.iter().flatten() {
        node_variants(node, &mut out);
    }
    out
}

async fn read_node(store: &dyn Store, h: Hash) -> Option<TreeNode> {
    match store.get_object(&h).await {
        Ok(Some(b)) if Hash::of(&b) == h => TreeNode::decode(b).ok(),
        _ => None,
    }
}

/// Adds the variants `node` records to `out`; returns its sub-folders.
fn node_variants(node: &TreeNode, out: &mut HashMap<Hash, Vec<Variant>>) -> Vec<Hash> {
    let mut dirs = Vec::new();
    for i in 0..node.len() {
        let e = node.entry(i);
        match e.kind {
            EntryKind::Dir => dirs.push(e.hash),
            EntryKind::File => {
                let v: Vec<Variant> = node.variants(i).collect();
                if !v.is_empty() {
                    out.insert(e.hash, v);
                }
            }
        }
    }
    dirs
}

/// What [`make`] did.
#[derive(Debug, Default, Clone)]
pub struct Made {
    /// Variants by the hash of the file they compress.
    pub variants: HashMap<Hash, Vec<Variant>>,
    /// Files compressed in this run.
    pub compressed: u64,
    /// Files whose variants came from the previous deploy.
    pub reused: u64,
    /// Variant blobs the store did not have.
    pub new_blobs: u64,
    /// Distinct variant blobs.
    pub blobs: u64,
}

/// Makes (or reuses from `known`) the variants of every compressible file of `which`,
/// uploading new ones to `store`; at most `concurrency` files at a time. `files[i]` has hash
/// and size `hashes[i]`; a file whose bytes no longer match its hash is refused (it changed
/// during the publish).
pub async fn make(
    store: &dyn Store,
    files: &[PathBuf],
    hashes: &[(Hash, u64)],
    which: &[usize],
    known: HashMap<Hash, Vec<Variant>>,
    levels: Levels,
    concurrency: usize,
) -> Result<Made, PublishError> {
    let mut made = Made::default();
    let mut todo: Vec<usize> = Vec::new();
    let mut queued = std::collections::HashSet::new();
    for &i in which {
        let (path, (hash, size)) = (&files[i], hashes[i]);
        if !eligible(path, size) {
            continue;
        }
        if made.variants.contains_key(&hash) || !queued.insert(hash) {
            continue;
        }
        match known.get(&hash) {
            Some(v) => {
                made.variants.insert(hash, v.clone());
                made.reused += 1;
            }
            None => todo.push(i),
        }
    }
    let results: Vec<(Hash, Vec<Variant>, u64)> = futures_util::stream::iter(todo)
        .map(|i| {
            let (path, (hash, _)) = (files[i].clone(), hashes[i]);
            async move {
                let shown = path.clone();
                let packed =
                    tokio::task::spawn_blocking(move || read_and_compress(&path, hash, levels))
                        .await
                        .map_err(|e| PublishError::Io {
                            path: shown,
                            source: std::io::Error::other(e),
                        })??;
                let mut variants = Vec::with_capacity(packed.len());
                let mut new = 0;
                for (coding, bytes) in packed {
                    let v = Variant {
                        coding,
                        size: bytes.len() as u64,
                        hash: Hash::of(&bytes),
                    };
                    // Small variants are sent without asking first, as small files are.
                    let ask = bytes.len() as u64 > crate::publish::DIRECT_PUT_MAX;
                    if !(ask && store.has_object(&v.hash).await?)
                        && store.put_object(&v.hash, Bytes::from(bytes)).await?
                    {
                        new += 1;
                    }
                    variants.push(v);
                }
                Ok::<_, PublishError>((hash, variants, new))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    for (hash, variants, new) in results {
        made.compressed += 1;
        made.new_blobs += new;
        if !variants.is_empty() {
            made.variants.insert(hash, variants);
        }
    }
    let distinct: std::collections::HashSet<Hash> =
        made.variants.values().flatten().map(|v| v.hash).collect();
    made.blobs = distinct.len() as u64;
    Ok(made)
}

fn name_of(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

/// Reads a file, checks it still has the hash it was published under, and compresses it.
fn read_and_compress(
    path: &Path,
    hash: Hash,
    levels: Levels,
) -> Result<Vec<(Coding, Vec<u8>)>, PublishError> {
    let data = std::fs::read(path).map_err(|source| PublishError::Io {
        path: path.to_owned(),
        source,
    })?;
    if Hash::of(&data) != hash {
        return Err(PublishError::Source {
            path: path.to_owned(),
            why: "changed while being published".into(),
        });
    }
    Ok(compress(&data, levels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn what_is_compressible() {
        for name in [
            "a.html",
            "A.CSS",
            "app.min.js",
            "x.mjs",
            "d.json",
            "i.svg",
            "m.wasm",
            "f.ttf",
            "s.js.map",
        ] {
            assert!(compressible(name), "{name}");
        }
        for name in [
            "a.png", "b.jpg", "c.webp", "v.mp4", "f.woff2", "f.woff", "a.zip", "a.gz", "a.br",
            "README",
        ] {
            assert!(!compressible(name), "{name}");
        }
    }

    #[test]
    fn variants_decode_to_the_original_and_are_smaller() {
        let text: Vec<u8> = (0..2000)
            .flat_map(|i| format!("<p class=\"row\">line {i}</p>\n").into_bytes())
            .collect();
        for levels in [Levels::PUBLISH, Levels::FAST] {
            let out = compress(&text, levels);
            let codings: Vec<_> = out.iter().map(|(c, _)| *c).collect();
            assert_eq!(codings, Coding::ALL);
            for (coding, packed) in out {
                assert!(packed.len() < text.len() / 3, "{coding:?}");
                let mut back = Vec::new();
                match coding {
                    Coding::Br => {
                        brotli::Decompressor::new(&packed[..], 4096)
                            .read_to_end(&mut back)
                            .unwrap();
                    }
                    Coding::Zstd => back = zstd::stream::decode_all(&packed[..]).unwrap(),
                    Coding::Gzip => {
                        flate2::read::GzDecoder::new(&packed[..])
                            .read_to_end(&mut back)
                            .unwrap();
                    }
                }
                assert_eq!(back, text, "{coding:?}");
            }
        }
        // Random bytes do not get smaller: nothing is kept.
        let noise: Vec<u8> = (0..128u32)
            .flat_map(|i| *Hash::of(&i.to_le_bytes()).as_bytes())
            .collect();
        assert!(compress(&noise, Levels::PUBLISH).is_empty());
        assert!(compress(b"", Levels::PUBLISH).is_empty());
        assert!(compress(b"ab", Levels::PUBLISH).is_empty());
    }

    #[test]
    fn output_is_deterministic() {
        let text = b"body { color: red; } body { color: red; } body { color: red; }".repeat(20);
        assert_eq!(
            compress(&text, Levels::PUBLISH),
            compress(&text, Levels::PUBLISH)
        );
    }

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// Publishing records variants for text files only; a re-publish compresses only the
    /// files that changed; `compress: None` records none.
    #[tokio::test]
    async fn publish_records_variants_and_reuses_them() {
        use crate::publish::{PublishOptions, publish};
        use crate::store::MemoryStore;
        let dir = tempfile::tempdir().unwrap();
        let css = b"body { margin: 0; padding: 0; } ".repeat(50);
        write(dir.path(), "index.html", &b"<p>hello</p>".repeat(100));
        write(dir.path(), "css/site.css", &css);
        write(dir.path(), "css/copy.css", &css);
        write(dir.path(), "img/a.png", &b"\x89PNG....".repeat(100));
        let store = MemoryStore::new();
        let opts = PublishOptions::default();
        let r1 = publish(&store, dir.path(), "s", &opts).await.unwrap();
        assert_eq!(
            r1.compressed, 2,
            "index.html and one of the two identical css files"
        );
        assert_eq!(r1.reused_variants, 0);
        assert_eq!(r1.new_variants, 6);
        let root =
            TreeNode::decode(store.get_object(&r1.deploy.root).await.unwrap().unwrap()).unwrap();
        let i = root.position("index.html").unwrap();
        assert_eq!(root.variants(i).len(), 3);
        let img = store
            .get_object(&root.lookup("img").unwrap().hash)
            .await
            .unwrap()
            .unwrap();
        let img = TreeNode::decode(img).unwrap();
        assert_eq!(img.variants(0).len(), 0, "images are not compressed");
        for v in root.variants(i) {
            let blob = store.get_object(&v.hash).await.unwrap().unwrap();
            assert_eq!(blob.len() as u64, v.size);
        }

        write(dir.path(), "index.html", &b"<p>changed</p>".repeat(100));
        let r2 = publish(&store, dir.path(), "s", &opts).await.unwrap();
        assert_eq!((r2.compressed, r2.reused_variants), (1, 1));

        let plain = PublishOptions {
            compress: None,
            ..PublishOptions::default()
        };
        let r3 = publish(&store, dir.path(), "s", &plain).await.unwrap();
        assert_eq!((r3.compressed, r3.new_variants), (0, 0));
        let root =
            TreeNode::decode(store.get_object(&r3.deploy.root).await.unwrap().unwrap()).unwrap();
        assert_eq!(
            root.bytes()[4],
            crate::tree::VERSION,
            "nothing version 2 about it"
        );
    }
}
