//! The synthetic site: which paths exist and how large each file is, as pure functions of the
//! size mix and the file index, so `loadtest gen-site` (which writes the files) and
//! `loadtest run --synthetic` (which only needs the paths) agree without sharing a manifest.
//!
//! Layout: `DIR/index.html`, and `DIR/<mix>/<index:05>.<ext>` for each file, e.g.
//! `small/00042.css`. Writing a second mix into the same folder adds its subfolder, so one
//! folder can hold both.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How file sizes are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SizeMix {
    /// 512 B to 8 KiB each: the cache-hit request-rate case.
    Small,
    /// 70% 1-16 KiB, 25% 32-512 KiB, 5% 1-3 MiB: the throughput case. Every file stays below the
    /// edge's default 4 MiB memory-tier object limit.
    Mixed,
    /// A PoP-sized site: 75% 1-16 KiB, 24% 32-512 KiB and every hundredth file 4-16 MiB (above
    /// the memory tier's object limit), four levels deep (`large/3/4/00345.bin`). 2,150 files
    /// make about 375 MiB, more than the edge's default 256 MiB memory tier.
    Large,
    /// 2-8 KiB files four levels deep (`cold/1/2/01234.bin`), each requested once: misses.
    Cold,
    /// 13.6 MiB files (`burst/03.bin`), each requested by a burst of clients at once.
    Burst,
}

impl SizeMix {
    pub fn as_str(self) -> &'static str {
        match self {
            SizeMix::Small => "small",
            SizeMix::Mixed => "mixed",
            SizeMix::Large => "large",
            SizeMix::Cold => "cold",
            SizeMix::Burst => "burst",
        }
    }
}

/// The largest file count `gen-site` writes.
pub const MAX_FILES: usize = 1_000_000;

const SMALL_EXTS: [&str; 5] = ["css", "js", "txt", "svg", "json"];
const MIXED_EXTS: [&str; 3] = ["jpg", "png", "bin"];

/// SplitMix64: a fixed, well-mixed hash of the index, so sizes look random but never change.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn salt(mix: SizeMix) -> u64 {
    match mix {
        SizeMix::Small => 0x5A11,
        SizeMix::Mixed => 0x313D,
        SizeMix::Large => 0x1A26,
        SizeMix::Cold => 0xC01D,
        SizeMix::Burst => 0xB025,
    }
}

/// The size of every [`SizeMix::Burst`] file: 13.6 MiB.
pub const BURST_SIZE: u64 = 14_260_634;

/// The URL path of file `index` (with a leading `/`).
pub fn file_path(mix: SizeMix, index: usize) -> String {
    match mix {
        SizeMix::Small => format!("/small/{index:05}.{}", SMALL_EXTS[index % SMALL_EXTS.len()]),
        SizeMix::Mixed => format!("/mixed/{index:05}.{}", MIXED_EXTS[index % MIXED_EXTS.len()]),
        SizeMix::Large => format!(
            "/large/{}/{}/{index:05}.{}",
            index / 100 % 10,
            index / 10 % 10,
            MIXED_EXTS[index % MIXED_EXTS.len()]
        ),
        SizeMix::Cold => format!("/cold/{}/{}/{index:05}.bin", index / 1000, index / 100 % 10),
        SizeMix::Burst => format!("/burst/{index:02}.bin"),
    }
}

/// The size in bytes of file `index`.
pub fn file_size(mix: SizeMix, index: usize) -> u64 {
    let h = mix64(index as u64 ^ salt(mix));
    let pick = |lo: u64, hi: u64, r: u64| lo + r % (hi - lo + 1);
    match mix {
        SizeMix::Small => pick(512, 8 * 1024, h >> 8),
        SizeMix::Mixed => match h % 100 {
            0..70 => pick(1024, 16 * 1024, h >> 8),
            70..95 => pick(32 * 1024, 512 * 1024, h >> 8),
            _ => pick(1024 * 1024, 3 * 1024 * 1024, h >> 8),
        },
        SizeMix::Large if index.is_multiple_of(100) => pick(4 << 20, 16 << 20, h >> 8),
        SizeMix::Large => match h % 100 {
            0..75 => pick(1024, 16 * 1024, h >> 8),
            _ => pick(32 * 1024, 512 * 1024, h >> 8),
        },
        SizeMix::Cold => pick(2 * 1024, 8 * 1024, h >> 8),
        SizeMix::Burst => BURST_SIZE,
    }
}

/// The paths of a site of `files` files.
pub fn paths(mix: SizeMix, files: usize) -> Vec<String> {
    (0..files).map(|i| file_path(mix, i)).collect()
}

/// What [`write_site`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SiteSummary {
    pub files: usize,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    #[error("--files must be between 1 and {MAX_FILES}, not {0}")]
    Files(usize),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes `files` files of `mix` under `dir` (creating it) plus `dir/index.html`. Blocking:
/// call from a blocking context. Content is deterministic; text types get printable bytes,
/// the rest incompressible ones.
pub fn write_site(dir: &Path, files: usize, mix: SizeMix) -> Result<SiteSummary, SiteError> {
    if files == 0 || files > MAX_FILES {
        return Err(SiteError::Files(files));
    }
    let sub = dir.join(mix.as_str());
    fs::create_dir_all(&sub).map_err(|source| SiteError::Write {
        path: sub.clone(),
        source,
    })?;
    let index = dir.join("index.html");
    if !index.exists() {
        fs::write(
            &index,
            b"<!doctype html><title>loadtest site</title><h1>loadtest</h1>\n",
        )
        .map_err(|source| SiteError::Write {
            path: index.clone(),
            source,
        })?;
    }
    let mut bytes = 0;
    let mut buf = Vec::new();
    for i in 0..files {
        let rel = file_path(mix, i);
        let path = dir.join(rel.trim_start_matches('/'));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| SiteError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let size = file_size(mix, i);
        fill(&mut buf, mix, i, size as usize);
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&path)?;
            f.write_all(&buf)?;
            Ok(())
        };
        write().map_err(|source| SiteError::Write {
            path: path.clone(),
            source,
        })?;
        bytes += size;
    }
    Ok(SiteSummary { files, bytes })
}

fn fill(buf: &mut Vec<u8>, mix: SizeMix, index: usize, len: usize) {
    const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n";
    let mut rng = fastrand::Rng::with_seed(mix64(index as u64 ^ salt(mix) ^ 0xC0FFEE));
    buf.clear();
    buf.resize(len, 0);
    match mix {
        SizeMix::Small => buf
            .iter_mut()
            .for_each(|b| *b = TEXT[rng.usize(..TEXT.len())]),
        SizeMix::Mixed | SizeMix::Large | SizeMix::Cold | SizeMix::Burst => rng.fill(buf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_stable_and_distinct() {
        assert_eq!(file_path(SizeMix::Small, 42), "/small/00042.txt");
        assert_eq!(file_path(SizeMix::Mixed, 3), "/mixed/00003.jpg");
        let p = paths(SizeMix::Small, 1000);
        let mut sorted = p.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
    }

    #[test]
    fn sizes_stay_in_their_classes() {
        for i in 0..2000 {
            let s = file_size(SizeMix::Small, i);
            assert!((512..=8192).contains(&s));
            let m = file_size(SizeMix::Mixed, i);
            assert!((1024..=3 * 1024 * 1024).contains(&m));
        }
        let large = (0..2000)
            .filter(|&i| file_size(SizeMix::Mixed, i) >= 1024 * 1024)
            .count();
        assert!((50..150).contains(&large), "{large} large files of 2000");
        let total: u64 = (0..2150).map(|i| file_size(SizeMix::Large, i)).sum();
        let big = (0..2150)
            .filter(|&i| file_size(SizeMix::Large, i) > 4 << 20)
            .count();
        assert_eq!(big, 22);
        assert!(
            (300 << 20..450 << 20).contains(&total),
            "the large site is {} MiB",
            total >> 20
        );
        assert_eq!(file_path(SizeMix::Large, 345), "/large/3/4/00345.jpg");
        assert_eq!(file_path(SizeMix::Cold, 1234), "/cold/1/2/01234.bin");
        assert_eq!(file_size(SizeMix::Burst, 3), BURST_SIZE);
    }

    #[test]
    fn writes_what_the_functions_say() {
        let dir = tempfile::tempdir().unwrap();
        let s = write_site(dir.path(), 20, SizeMix::Small).unwrap();
        let m = write_site(dir.path(), 5, SizeMix::Mixed).unwrap();
        assert_eq!(s.files, 20);
        assert_eq!(m.files, 5);
        let c = write_site(dir.path(), 3, SizeMix::Cold).unwrap();
        assert_eq!(c.files, 3);
        assert_eq!(
            fs::metadata(dir.path().join("cold/0/0/00002.bin"))
                .unwrap()
                .len(),
            file_size(SizeMix::Cold, 2)
        );
        for i in 0..20 {
            let p = dir
                .path()
                .join(file_path(SizeMix::Small, i).trim_start_matches('/'));
            assert_eq!(fs::metadata(p).unwrap().len(), file_size(SizeMix::Small, i));
        }
        assert!(dir.path().join("index.html").is_file());
        assert!(matches!(
            write_site(dir.path(), 0, SizeMix::Small),
            Err(SiteError::Files(0))
        ));
    }
}
