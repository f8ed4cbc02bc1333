//! The routing rules of a static host, as a sans-I/O walk over a deploy's tree.
//!
//! [`Walk`] takes one decoded directory node at a time and answers either
//! [`Step::Need`] (the hash of the next node to fetch) or [`Step::Done`] with the target.
//! The caller does the fetching (memory, disk, origin), so the rules themselves are a pure
//! function of the path and the nodes, tested by a table with no runtime and no I/O.
//!
//! The rules: `/dir/` serves `dir/index.html`; `/dir` (a folder) asks for the trailing slash;
//! `/about` serves `about.html` when there is no `about`; a file with a trailing slash, or a
//! path through a file, is not found. The deploy's `404.html` is [`not_found_page`]. When the
//! deploy has site rules, its root `_redirects` and `_headers` are not served (they were
//! compiled at publish; the rules themselves are matched by `origin_client::rules`).
//!
//! A file's compressed forms are the variants publishing recorded in its tree entry and any
//! precompressed siblings (`x.br`, `x.zst`, `x.gz`) the deploy holds; for each coding the
//! smaller one is offered.

use origin_client::rules::{HEADERS, REDIRECTS};
use origin_client::tree::Coding;
use origin_client::{EntryKind, Hash, TreeNode};

use crate::path::RequestPath;

/// Precompressed siblings a file may have: (content coding, file-name suffix), in order of
/// preference when a client accepts several equally.
pub const CODINGS: &[(&str, &str)] = &[("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")];

/// What a path resolves to in a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    File(FileEntry),
    /// A folder requested without its trailing slash.
    AddSlash,
    NotFound,
}

/// A file a path resolved to, with its compressed forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: Box<str>,
    pub hash: Hash,
    pub size: u64,
    /// `(index into CODINGS, hash, size)`, in CODINGS order, one per coding: the smaller of
    /// the recorded variant and the precompressed sibling.
    pub siblings: Vec<(usize, Hash, u64)>,
}

/// The index into [`CODINGS`] of a recorded variant's coding.
pub fn rank(coding: Coding) -> usize {
    CODINGS
        .iter()
        .position(|(token, _)| *token == coding.token())
        .unwrap_or(CODINGS.len())
}

impl FileEntry {
    fn in_dir(dir: &TreeNode, name: &str, hash: Hash, size: u64) -> FileEntry {
        // Siblings sort right after `name`: one search and a short scan.
        let mut siblings: Vec<(usize, Hash, u64)> = dir
            .extensions(name)
            .filter(|e| e.kind == EntryKind::File)
            .filter_map(|e| {
                let suffix = &e.name[name.len()..];
                let rank = CODINGS.iter().position(|(_, s)| *s == suffix)?;
                Some((rank, e.hash, e.size))
            })
            .collect();
        if let Ok(i) = dir.position(name) {
            for v in dir.variants(i) {
                let r = rank(v.coding);
                match siblings.iter_mut().find(|(s, _, _)| *s == r) {
                    Some(s) if s.2 <= v.size => {}
                    Some(s) => *s = (r, v.hash, v.size),
                    None if r < CODINGS.len() => siblings.push((r, v.hash, v.size)),
                    None => {}
                }
            }
        }
        siblings.sort_by_key(|(rank, _, _)| *rank);
        FileEntry {
            name: name.into(),
            hash,
            size,
            siblings,
        }
    }
}

/// Is this the root `_redirects` or `_headers` of a deploy that compiled them? They are not
/// served.
pub fn is_rules_file(path: &RequestPath<'_>, root: &TreeNode) -> bool {
    root.rules().is_some()
        && matches!(path.segments.as_slice(), [one] if one == REDIRECTS || one == HEADERS)
}

/// The next thing a walk needs, or where it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Fetch this node and pass it to [`Walk::step`].
    Need(Hash),
    Done(Target),
}

/// A walk of one path; feed it the root node first, then each node it asks for.
#[derive(Debug)]
pub struct Walk<'p, 'a> {
    path: &'p RequestPath<'a>,
    /// Segments already consumed (the node passed next is the folder they name).
    next: usize,
}

impl<'p, 'a> Walk<'p, 'a> {
    pub fn new(path: &'p RequestPath<'a>) -> Self {
        Walk { path, next: 0 }
    }

    /// Advances through `dir`, the folder named by the segments consumed so far.
    pub fn step(&mut self, dir: &TreeNode) -> Step {
        let segs = &self.path.segments;
        let slash = self.path.trailing_slash;
        let Some(seg) = segs.get(self.next) else {
            return Step::Done(file_in(dir, "index.html"));
        };
        if self.next == 0 && is_rules_file(self.path, dir) {
            return Step::Done(Target::NotFound);
        }
        let last = self.next + 1 == segs.len();
        let Some(e) = dir.lookup(seg) else {
            if last && !slash {
                return Step::Done(file_in(dir, &format!("{seg}.html")));
            }
            return Step::Done(Target::NotFound);
        };
        match (e.kind, last) {
            (EntryKind::Dir, true) if !slash => Step::Done(Target::AddSlash),
            (EntryKind::Dir, _) => {
                self.next += 1;
                Step::Need(e.hash)
            }
            (EntryKind::File, true) if !slash => {
                Step::Done(Target::File(FileEntry::in_dir(dir, e.name, e.hash, e.size)))
            }
            (EntryKind::File, _) => Step::Done(Target::NotFound),
        }
    }
}

/// The deploy's own 404 page, given its root node.
pub fn not_found_page(root: &TreeNode) -> Target {
    file_in(root, "404.html")
}

fn file_in(dir: &TreeNode, name: &str) -> Target {
    match dir.lookup(name) {
        Some(e) if e.kind == EntryKind::File => {
            Target::File(FileEntry::in_dir(dir, name, e.hash, e.size))
        }
        _ => Target::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use origin_client::tree::{OwnedEntry, encode};
    use std::collections::HashMap;

    /// Builds a tree from `(path, contents)` pairs; returns the root and every node by hash.
    fn tree(files: &[&str]) -> (Hash, HashMap<Hash, TreeNode>) {
        fn build(prefix: &str, files: &[&str], nodes: &mut HashMap<Hash, TreeNode>) -> Hash {
            let mut entries: Vec<OwnedEntry> = Vec::new();
            let mut dirs: Vec<&str> = Vec::new();
            for f in files {
                let Some(rest) = f.strip_prefix(prefix) else {
                    continue;
                };
                match rest.split_once('/') {
                    Some((d, _)) => {
                        if !dirs.contains(&d) {
                            dirs.push(d);
                        }
                    }
                    None => entries.push(OwnedEntry {
                        name: rest.into(),
                        kind: EntryKind::File,
                        size: f.len() as u64,
                        hash: Hash::of(f.as_bytes()),
                    }),
                }
            }
            for d in dirs {
                let h = build(&format!("{prefix}{d}/"), files, nodes);
                entries.push(OwnedEntry {
                    name: d.into(),
                    kind: EntryKind::Dir,
                    size: 0,
                    hash: h,
                });
            }
            let bytes = encode(entries).unwrap();
            let node = TreeNode::decode(bytes).unwrap();
            let h = node.hash();
            nodes.insert(h, node);
            h
        }
        let mut nodes = HashMap::new();
        let root = build("", files, &mut nodes);
        (root, nodes)
    }

    /// Runs a walk to its end, counting the nodes it asked for.
    fn run(root: Hash, nodes: &HashMap<Hash, TreeNode>, raw: &str) -> (String, usize) {
        let path = crate::path::parse(raw).unwrap();
        let mut walk = Walk::new(&path);
        let mut node = &nodes[&root];
        let mut fetched = 1;
        loop {
            match walk.step(node) {
                Step::Need(h) => {
                    node = &nodes[&h];
                    fetched += 1;
                }
                Step::Done(Target::File(f)) => {
                    let codings: Vec<&str> =
                        f.siblings.iter().map(|(r, _, _)| CODINGS[*r].0).collect();
                    let out = if codings.is_empty() {
                        format!("file {}", f.name)
                    } else {
                        format!("file {} +{}", f.name, codings.join(","))
                    };
                    return (out, fetched);
                }
                Step::Done(Target::AddSlash) => return ("add slash".into(), fetched),
                Step::Done(Target::NotFound) => return ("not found".into(), fetched),
            }
        }
    }

    #[test]
    fn static_host_routing_table() {
        let (root, nodes) = tree(&[
            "index.html",
            "about.html",
            "404.html",
            "docs/index.html",
            "docs/a.txt",
            "docs/a.txt.gz",
            "docs/a.txt.br",
            "docs/a.txt.bak",
            "docs/deep/er/x.css",
            "blog/post.html",
            "blog/post/image.png",
            "empty/readme.md",
            "name with spaces.txt",
            "ünï.txt",
            "a.b.c.tar.gz",
        ]);
        // (request path, expected target, nodes the walk needed including the root)
        let table: &[(&str, &str, usize)] = &[
            ("/", "file index.html", 1),
            ("/index.html", "file index.html", 1),
            ("/about", "file about.html", 1),
            ("/about.html", "file about.html", 1),
            ("/about/", "not found", 1),
            ("/docs", "add slash", 1),
            ("/docs/", "file index.html", 2),
            ("//docs//", "file index.html", 2),
            ("/docs/a.txt", "file a.txt +br,gzip", 2),
            ("/docs/a.txt.gz", "file a.txt.gz", 2),
            ("/docs/a.txt/", "not found", 2),
            ("/docs/a.txt/x", "not found", 2),
            ("/docs/deep/er/x.css", "file x.css", 4),
            ("/docs/deep", "add slash", 2),
            ("/docs/deep/", "not found", 3),
            ("/blog/post", "add slash", 2),
            ("/blog/post/", "not found", 3),
            ("/blog/post/image.png", "file image.png", 3),
            ("/empty/", "not found", 2),
            ("/nope", "not found", 1),
            ("/nope/", "not found", 1),
            ("/nope/deeper", "not found", 1),
            ("/name%20with%20spaces.txt", "file name with spaces.txt", 1),
            ("/%C3%BCn%C3%AF.txt", "file ünï.txt", 1),
            ("/a.b.c.tar.gz", "file a.b.c.tar.gz", 1),
            ("/a.b.c.tar", "not found", 1),
        ];
        for (raw, want, fetched) in table {
            let (got, n) = run(root, &nodes, raw);
            assert_eq!((got.as_str(), n), (*want, *fetched), "{raw}");
        }
        assert!(matches!(not_found_page(&nodes[&root]), Target::File(f) if &*f.name == "404.html"));
        let (_, sub) = tree(&["x.html"]);
        let only = sub.values().next().unwrap();
        assert_eq!(not_found_page(only), Target::NotFound);
    }

    /// Recorded variants are offered like siblings; where both exist the smaller wins; the
    /// rules files of a deploy with rules are not served.
    #[test]
    fn recorded_variants_and_rules_files() {
        use origin_client::tree::{Variant, encode_node};
        let f = |name: &str, size: u64| OwnedEntry {
            name: name.into(),
            kind: EntryKind::File,
            size,
            hash: Hash::of(name.as_bytes()),
        };
        let v = |coding, size: u64| Variant {
            coding,
            size,
            hash: Hash::of(&size.to_le_bytes()),
        };
        let bytes = encode_node(
            vec![
                (
                    f("app.js", 100),
                    vec![v(Coding::Br, 20), v(Coding::Gzip, 30)],
                ),
                (f("app.js.br", 15), vec![]),
                (f("app.js.zst", 40), vec![]),
                (f("plain.txt", 10), vec![]),
                (f("_redirects", 10), vec![]),
                (f("_headers", 10), vec![]),
            ],
            Some(Hash::of(b"rules")),
        )
        .unwrap();
        let root = TreeNode::decode(bytes).unwrap();
        let mut nodes = HashMap::new();
        let h = root.hash();
        nodes.insert(h, root);
        let table: &[(&str, &str)] = &[
            ("/app.js", "file app.js +br,zstd,gzip"),
            ("/plain.txt", "file plain.txt"),
            ("/_redirects", "not found"),
            ("/_headers", "not found"),
            ("/_redirects/", "not found"),
        ];
        for (raw, want) in table {
            assert_eq!(run(h, &nodes, raw).0, *want, "{raw}");
        }
        let path = crate::path::parse("/app.js").unwrap();
        let Step::Done(Target::File(file)) = Walk::new(&path).step(&nodes[&h]) else {
            panic!("a file")
        };
        // br: the sibling (15) beats the variant (20); zstd: only the sibling; gzip: variant.
        let sizes: Vec<u64> = file.siblings.iter().map(|s| s.2).collect();
        assert_eq!(sizes, [15, 40, 30]);
        // Without rules, the files are ordinary files.
        let (plain, nodes) = tree(&["_redirects", "_headers"]);
        assert_eq!(run(plain, &nodes, "/_redirects").0, "file _redirects");
    }

    /// `/about` prefers a folder or file named exactly `about` over `about.html`.
    #[test]
    fn exact_names_win_over_pretty_urls() {
        let (root, nodes) = tree(&["about", "about.html", "guide/index.html", "guide.html"]);
        assert_eq!(run(root, &nodes, "/about").0, "file about");
        assert_eq!(run(root, &nodes, "/guide").0, "add slash");
        assert_eq!(run(root, &nodes, "/guide.html").0, "file guide.html");
    }
}
