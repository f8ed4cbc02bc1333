//! `parse_range` on arbitrary `Range` values against arbitrary lengths: a range it returns
//! is never empty and lies within the representation, and parsing depends on the length
//! only for satisfiability.
#![no_main]

use edge::http::headers::{RangeSpec, parse_range};
use libfuzzer_sys::fuzz_target;

fn check(header: &str, len: u64) -> RangeSpec {
    let r = parse_range(header, len);
    if let RangeSpec::Single(start, end) = r {
        assert!(
            start < end && end <= len,
            "{header:?} len {len}: {start}..{end}"
        );
    }
    r
}

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes are the length (little-endian), the rest the header value.
    let (len, header) = if data.len() >= 8 {
        let (l, h) = data.split_at(8);
        (u64::from_le_bytes(l.try_into().expect("8 bytes")), h)
    } else {
        (0, data)
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let lens = [len, len >> 32, len & 0xffff, 0, 1, u64::MAX];
    let results = lens.map(|l| check(header, l));
    // Syntax does not depend on the length: a header malformed for one length is malformed
    // for every length, and one ignored (another unit, several ranges) likewise.
    let malformed = results.map(|r| r == RangeSpec::Malformed);
    assert!(
        malformed.iter().all(|&m| m == malformed[0]),
        "{header:?}: {results:?}"
    );
});
