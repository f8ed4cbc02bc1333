//! The origin's JSON records (`hosts/<host>`, `sites/<site>/current`,
//! `sites/<site>/deploys/<id>`) on arbitrary bytes, as a store reads them: parse, validate,
//! and for a valid record, names that make store keys of plain segments, and a JSON round
//! trip to the same record. Also the store's host index and a deploy's publish index
//! (`origin_client::reuse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use origin_client::records::{self, HostIndex, utc_compact, utc_display};
use origin_client::reuse;
use origin_client::store::layout;
use origin_client::{CurrentPointer, DeployRecord, HostRecord};
use serde::{Serialize, de::DeserializeOwned};

/// A store key built from validated names: plain segments only.
fn check_key(key: &str) {
    for seg in key.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{key:?}");
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(r: &T) {
    let json = serde_json::to_vec(r).expect("a record serializes");
    let back: T = serde_json::from_slice(&json).expect("a serialized record parses");
    assert_eq!(&back, r);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = serde_json::from_slice::<HostRecord>(data) {
        if h.validate().is_ok() {
            check_key(&layout::host(&h.host));
            assert_eq!(records::normalize_host(&h.host).as_deref(), Ok(&*h.host));
            round_trip(&h);
        }
    }
    if let Ok(d) = serde_json::from_slice::<DeployRecord>(data) {
        if d.validate().is_ok() {
            check_key(&layout::deploy(&d.site, &d.id));
            round_trip(&d);
        }
        // Listings show the times of whatever the store holds.
        let _ = (utc_display(d.created), utc_compact(d.created));
    }
    if let Ok(c) = serde_json::from_slice::<CurrentPointer>(data) {
        if c.validate().is_ok() {
            check_key(&layout::current(&c.site));
            check_key(&layout::deploy(&c.site, &c.deploy));
            round_trip(&c);
        }
        let _ = utc_display(c.updated);
    }
    // The store's host index: every host it names is a valid record of its own.
    if let Ok(ix) = serde_json::from_slice::<HostIndex>(data) {
        if ix.validate().is_ok() {
            for (host, site) in &ix.hosts {
                let r = HostRecord {
                    host: host.clone(),
                    site: site.clone(),
                };
                assert!(r.validate().is_ok(), "{r:?}");
                check_key(&layout::host(host));
            }
            round_trip(&ix);
        }
    }
    // A deploy's publish index (a hint the next publish reads back).
    if let Ok(ix) = reuse::Index::decode(data) {
        assert_eq!(reuse::Index::decode(&ix.encode()).ok().as_ref(), Some(&ix));
        let dirs = ix.dirs.clone();
        let l = reuse::Lookup::new(ix);
        for d in &dirs {
            assert!(l.same_content(&d.plain).is_some() && l.at_path(&d.path).is_some());
        }
    }
    // The name checks themselves, on the raw text.
    if let Ok(s) = std::str::from_utf8(data) {
        if records::validate_site(s).is_ok() {
            check_key(&layout::current(s));
        }
        if records::validate_deploy_id(s).is_ok() {
            check_key(&layout::deploy("s", s));
        }
        if let Ok(h) = records::normalize_host(s) {
            check_key(&layout::host(&h));
            assert_eq!(
                records::normalize_host(&h).as_deref(),
                Ok(&*h),
                "idempotent"
            );
        }
    }
});
