//! Publishing and tree-codec throughput.
//!
//! ```text
//! cargo run --release -p origin-client --example bench_publish
//! ```
//!
//! Generates a 2,000-file folder of about 350 MiB (mixed sizes, nested folders) in a temporary
//! directory, publishes it into a fresh local store (cold store, warm page cache: the folder
//! was just written), re-publishes it unchanged, then times encoding, decoding and 1,000,000
//! lookups on a 100,000-entry directory node.

use std::hint::black_box;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use origin_client::publish::{PublishOptions, publish};
use origin_client::store::LocalStore;
use origin_client::tree::{self, OwnedEntry};
use origin_client::{Access, EntryKind, Hash, TreeNode};

const FILES: usize = 2_000;
const MIB: f64 = 1024.0 * 1024.0;
const TREE_ENTRIES: usize = 100_000;
const LOOKUPS: usize = 1_000_000;
const ROUNDS: usize = 5;

/// xorshift64*: deterministic sizes and lookup orders without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Per 100 files: 2 large (4-6 MiB), 23 medium (64-512 KiB), 75 small (1-32 KiB); for
/// 2,000 files that is 40 + 460 + 1,500, about 350 MiB.
fn file_size(i: usize, rng: &mut Rng) -> u64 {
    const KIB: u64 = 1024;
    match i % 100 {
        0 | 50 => rng.range(4 * 1024 * KIB, 6 * 1024 * KIB),
        1..=23 => rng.range(64 * KIB, 512 * KIB),
        _ => rng.range(KIB, 32 * KIB),
    }
}

fn generate(dir: &Path) -> u64 {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0;
    let mut buf = Vec::new();
    for i in 0..FILES {
        let size = file_size(i, &mut rng);
        let rel = match i % 4 {
            0 => format!("file-{i:04}.html"),
            1 => format!("section-{}/file-{i:04}.css", i % 9),
            2 => format!("section-{}/group-{}/file-{i:04}.js", i % 9, i % 5),
            _ => format!("assets/{}/{}/file-{i:04}.bin", i % 13, i % 3),
        };
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        buf.resize(size as usize, 0);
        blake3::Hasher::new()
            .update(&(i as u64).to_le_bytes())
            .finalize_xof()
            .read_exact(&mut buf)
            .expect("xof");
        std::fs::write(&path, &buf).expect("write");
        total += size;
    }
    total
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn bench_publish() {
    let site = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let bytes = generate(site.path());
    println!(
        "generated {FILES} files, {:.1} MiB in {:.2} s",
        bytes as f64 / MIB,
        secs(t.elapsed())
    );

    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(store_dir.path(), Access::Write).expect("store");
    let opts = PublishOptions::default();

    let t = Instant::now();
    let cold = publish(&store, site.path(), "bench", &opts)
        .await
        .expect("publish");
    let took = t.elapsed();
    println!(
        "cold publish: {:.2} s, {:.0} files/s, {:.1} MiB/s ({} blobs, {} trees written)",
        secs(took),
        FILES as f64 / secs(took),
        bytes as f64 / MIB / secs(took),
        cold.new_blobs,
        cold.new_trees
    );

    let t = Instant::now();
    let warm = publish(&store, site.path(), "bench", &opts)
        .await
        .expect("re-publish");
    let took = t.elapsed();
    assert_eq!(warm.deploy.root, cold.deploy.root);
    println!(
        "unchanged re-publish: {:.3} s ({} new objects)",
        secs(took),
        warm.new_objects()
    );
}

fn bench_tree() {
    let entries: Vec<OwnedEntry> = (0..TREE_ENTRIES)
        .map(|i| {
            let name = format!("file-{i:06}.html");
            OwnedEntry {
                hash: Hash::of(name.as_bytes()),
                name,
                kind: EntryKind::File,
                size: i as u64,
            }
        })
        .collect();

    let mut encode_times = Vec::new();
    let mut encoded = None;
    for _ in 0..ROUNDS {
        let input = entries.clone();
        let t = Instant::now();
        let bytes = tree::encode(black_box(input)).expect("encode");
        encode_times.push(t.elapsed());
        encoded = Some(bytes);
    }
    let encoded = encoded.expect("at least one round");

    let mut decode_times = Vec::new();
    let mut node = None;
    for _ in 0..ROUNDS {
        let input = encoded.clone();
        let t = Instant::now();
        let n = TreeNode::decode(black_box(input)).expect("decode");
        decode_times.push(t.elapsed());
        node = Some(n);
    }
    let node = node.expect("at least one round");

    // 9 in 10 lookups hit, in a random order.
    let mut names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    names.extend((0..TREE_ENTRIES / 9).map(|i| format!("missing-{i:06}.html")));
    let mut rng = Rng(42);
    let order: Vec<usize> = (0..LOOKUPS)
        .map(|_| (rng.next() % names.len() as u64) as usize)
        .collect();
    let mut lookup_times = Vec::new();
    let mut hits = 0;
    for _ in 0..ROUNDS {
        hits = 0;
        let t = Instant::now();
        for &i in &order {
            if black_box(&node).lookup(&names[i]).is_some() {
                hits += 1;
            }
        }
        lookup_times.push(t.elapsed());
    }

    println!(
        "tree node: {TREE_ENTRIES} entries, {:.2} MiB encoded",
        encoded.len() as f64 / MIB
    );
    println!(
        "  encode: median {} (best {}) of {ROUNDS}",
        ms(median(encode_times.clone())),
        ms(*encode_times.iter().min().expect("rounds"))
    );
    println!(
        "  decode: median {} (best {}) of {ROUNDS}",
        ms(median(decode_times.clone())),
        ms(*decode_times.iter().min().expect("rounds"))
    );
    let m = median(lookup_times.clone());
    println!(
        "  {LOOKUPS} lookups ({hits} hits): median {} (best {}), {:.0} ns/lookup",
        ms(m),
        ms(*lookup_times.iter().min().expect("rounds")),
        m.as_secs_f64() * 1e9 / LOOKUPS as f64
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench_publish());
    bench_tree();
}
