//! `ocsp::check` on arbitrary OCSP responses against arbitrary leaf certificates: never a
//! panic, and a response it accepts is current at the time it was checked for.
#![no_main]

use std::time::{Duration, SystemTime};

use edge::listen::ocsp::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 2 bytes are the leaf's length (little-endian), then the leaf (DER), then
    // the response (DER).
    let (leaf, response) = match data {
        [a, b, rest @ ..] => {
            rest.split_at(usize::from(u16::from_le_bytes([*a, *b])).min(rest.len()))
        }
        _ => (data, data),
    };
    let now = SystemTime::now();
    for at in [now, now + Duration::from_secs(86_400 * 365)] {
        if let Ok(staple) = check(response, leaf, at) {
            assert!(
                staple.current(at),
                "accepted a response not current at {at:?}"
            );
        }
    }
    let _ = check(data, data, now);
});
