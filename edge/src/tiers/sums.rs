//! Block checksums of disk-tier files: a CRC-32 (IEEE, `crc32fast`, SIMD) of every
//! [`SUM_BLOCK`]-byte block, computed from bytes that had just passed blake3 (at fill,
//! or by a whole-file check after a restart) and kept in memory with the tier's index
//! (4 bytes per 32 KiB: 128 KiB per GiB cached).
//!
//! Trust: blake3 is checked where bytes cross into this node (origin, parent); a block read
//! back from this node's own disk is checked against its CRC before any byte of it is sent,
//! whole-file and range reads alike. A CRC catches the damage a disk does (flipped bits,
//! torn or zeroed blocks, a truncated file), at a cost per byte far below blake3's.

use std::sync::Arc;

/// The bytes one checksum covers; reads of a checked file never cross a block boundary.
pub const SUM_BLOCK: u64 = 32 << 10;

/// The checksums of one file, block by block.
pub type Sums = Arc<[u32]>;

/// Builds [`Sums`] from a file's bytes in order, in pieces of any size.
#[derive(Default)]
pub struct SumsBuilder {
    current: crc32fast::Hasher,
    in_block: u64,
    sums: Vec<u32>,
}

impl SumsBuilder {
    pub fn with_len(len: u64) -> SumsBuilder {
        SumsBuilder {
            sums: Vec::with_capacity(len.div_ceil(SUM_BLOCK) as usize),
            ..SumsBuilder::default()
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (SUM_BLOCK - self.in_block) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current.update(now);
            self.in_block += now.len() as u64;
            if self.in_block == SUM_BLOCK {
                let done = std::mem::take(&mut self.current);
                self.sums.push(done.finalize());
                self.in_block = 0;
            }
            data = rest;
        }
    }

    pub fn finish(mut self) -> Sums {
        if self.in_block > 0 {
            self.sums.push(self.current.finalize());
        }
        self.sums.into()
    }
}

/// The checksums of `data`, whole.
pub fn of(data: &[u8]) -> Sums {
    let mut b = SumsBuilder::with_len(data.len() as u64);
    b.update(data);
    b.finish()
}

/// The block `pos` falls in: its index and its byte range in a file of `len` bytes.
pub fn block_of(pos: u64, len: u64) -> (usize, u64, u64) {
    let i = pos / SUM_BLOCK;
    let start = i * SUM_BLOCK;
    (i as usize, start, (start + SUM_BLOCK).min(len))
}

/// Whether `block` (all of block `i`'s bytes) matches its checksum.
pub fn block_ok(sums: &[u32], i: usize, block: &[u8]) -> bool {
    sums.get(i) == Some(&crc32fast::hash(block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_do_not_depend_on_how_the_bytes_arrive() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 300) as u8).collect();
        let whole = of(&data);
        assert_eq!(
            whole.len(),
            4,
            "100,000 bytes: three full blocks and a short one"
        );
        for piece in [1, 777, 32 << 10, 40_000, 100_000] {
            let mut b = SumsBuilder::with_len(data.len() as u64);
            for c in data.chunks(piece) {
                b.update(c);
            }
            assert_eq!(b.finish(), whole, "pieces of {piece}");
        }
        for (i, block) in data.chunks(SUM_BLOCK as usize).enumerate() {
            assert!(block_ok(&whole, i, block));
            let mut bad = block.to_vec();
            bad[block.len() / 2] ^= 1;
            assert!(!block_ok(&whole, i, &bad), "a flipped bit in block {i}");
        }
        assert!(!block_ok(&whole, 4, b""), "no block past the end");
        assert_eq!(block_of(0, 100_000), (0, 0, 32 << 10));
        assert_eq!(block_of(99_999, 100_000), (3, 3 * (32 << 10), 100_000));
        assert_eq!(of(b"").len(), 0);
    }
}
