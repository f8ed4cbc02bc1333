//! OCSP stapling: `DIR/<host>.ocsp` beside `<host>.crt`, a DER OCSP response as `openssl
//! ocsp -respout` or certbot writes it, is sent in the handshake while it is current.
//!
//! What is checked before a response is stapled: it is a successful basic OCSP response,
//! one of its single responses names the leaf certificate's serial number with status
//! `good`, its `thisUpdate` is not in the future (5 minutes' skew allowed) and its
//! `nextUpdate`, when present, has not passed. Its signature is not checked here: the client
//! checks it against the issuer, and a wrong staple costs that one client a failed check,
//! not a wrong byte. A response that passes is stapled until its `nextUpdate` (checked at
//! every handshake, so an expired staple stops being sent without a reload).
//!
//! The DER reader below reads only what that needs (single-byte tags, definite lengths);
//! anything else is an error naming what was wrong, never a panic (fuzzed as `ocsp`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `id-pkix-ocsp-basic`, 1.3.6.1.5.5.7.48.1.1, as DER content bytes.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

/// How far in the future a `thisUpdate` may be (clock skew between responder and node).
const SKEW: Duration = Duration::from_secs(300);

/// A response that may be stapled, with the time it stops being current (`None`: the
/// responder gave no `nextUpdate`, "newer information is always available").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    pub next_update: Option<SystemTime>,
}

impl Staple {
    pub fn current(&self, now: SystemTime) -> bool {
        self.next_update.is_none_or(|t| now < t)
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OcspError {
    #[error("not DER: {0}")]
    Der(&'static str),
    #[error("OCSP response status {0} (not successful)")]
    Status(u8),
    #[error("not a basic OCSP response")]
    NotBasic,
    #[error("no single response for this certificate (serial number not found)")]
    OtherCertificate,
    #[error("certificate status is {0}, not good")]
    NotGood(&'static str),
    #[error("thisUpdate is in the future")]
    NotYetValid,
    #[error("nextUpdate has passed")]
    Expired,
}

/// Checks `response` (DER) for the certificate `leaf` (DER) at `now`.
pub fn check(response: &[u8], leaf: &[u8], now: SystemTime) -> Result<Staple, OcspError> {
    let serial = leaf_serial(leaf)?;
    let mut top = Der::new(response).seq()?;
    let status = top.expect(0x0a)?;
    match status {
        [0] => {}
        [s] => return Err(OcspError::Status(*s)),
        _ => return Err(OcspError::Der("responseStatus is not one byte")),
    }
    let mut bytes = Der::new(top.expect(0xa0)?).seq()?;
    if bytes.expect(0x06)? != OCSP_BASIC {
        return Err(OcspError::NotBasic);
    }
    let basic = bytes.expect(0x04)?;
    let mut basic = Der::new(basic).seq()?;
    let mut data = Der::new(basic.expect(0x30)?);
    if data.peek() == Some(0xa0) {
        data.next()?; // version
    }
    let (responder, _) = data.next()?; // responderID: [1] byName or [2] byKey
    if responder != 0xa1 && responder != 0xa2 {
        return Err(OcspError::Der("responderID is not [1] or [2]"));
    }
    data.expect(0x18)?; // producedAt
    let mut responses = Der::new(data.expect(0x30)?);
    let mut found = None;
    while !responses.is_empty() {
        let mut single = Der::new(responses.expect(0x30)?);
        let mut cert_id = Der::new(single.expect(0x30)?);
        cert_id.expect(0x30)?; // hashAlgorithm
        cert_id.expect(0x04)?; // issuerNameHash
        cert_id.expect(0x04)?; // issuerKeyHash
        if cert_id.expect(0x02)? == serial {
            found = Some(single);
            break;
        }
    }
    let mut single = found.ok_or(OcspError::OtherCertificate)?;
    match single.next()?.0 {
        0x80 => {}
        0xa1 => return Err(OcspError::NotGood("revoked")),
        0x82 => return Err(OcspError::NotGood("unknown")),
        _ => return Err(OcspError::Der("certStatus is not good, revoked or unknown")),
    }
    let this_update = generalized_time(single.expect(0x18)?)?;
    let next_update = match single.peek() {
        Some(0xa0) => Some(generalized_time(
            Der::new(single.expect(0xa0)?).expect(0x18)?,
        )?),
        _ => None,
    };
    if this_update > now + SKEW {
        return Err(OcspError::NotYetValid);
    }
    let staple = Staple { next_update };
    if !staple.current(now) {
        return Err(OcspError::Expired);
    }
    Ok(staple)
}

/// The serial number (INTEGER content bytes) of a DER certificate.
fn leaf_serial(cert: &[u8]) -> Result<&[u8], OcspError> {
    let mut c = Der::new(cert).seq()?;
    let mut tbs = Der::new(c.expect(0x30)?);
    if tbs.peek() == Some(0xa0) {
        tbs.next()?; // version
    }
    tbs.expect(0x02)
        .map_err(|_| OcspError::Der("certificate has no serial number"))
}

/// `YYYYMMDDHHMMSS[.fff]Z` (RFC 5280 4.1.2.5.2, as OCSP responders write it).
fn generalized_time(v: &[u8]) -> Result<SystemTime, OcspError> {
    let bad = OcspError::Der("GeneralizedTime is not YYYYMMDDHHMMSS[.f]Z");
    let s = std::str::from_utf8(v).map_err(|_| bad.clone())?;
    let s = s.strip_suffix('Z').ok_or(bad.clone())?;
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (w, Some(f)),
        Some(_) => return Err(bad),
        None => (s, None),
    };
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    let n = |r: std::ops::Range<usize>| whole[r].parse::<i64>().unwrap_or(0);
    let (y, mo, d, h, mi, sec) = (n(0..4), n(4..6), n(6..8), n(8..10), n(10..12), n(12..14));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(bad);
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3_600 + mi * 60 + sec;
    let secs = u64::try_from(secs).map_err(|_| OcspError::Der("GeneralizedTime before 1970"))?;
    let mut t = UNIX_EPOCH + Duration::from_secs(secs);
    if let Some(f) = frac {
        let f = &f[..f.len().min(9)];
        let nanos: u32 = f.parse().unwrap_or(0);
        t += Duration::from_nanos(u64::from(nanos) * 10u64.pow(9 - f.len() as u32));
    }
    Ok(t)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A cursor over DER TLVs.
struct Der<'a> {
    buf: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(buf: &'a [u8]) -> Der<'a> {
        Der { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }

    /// The next TLV: its tag and content.
    fn next(&mut self) -> Result<(u8, &'a [u8]), OcspError> {
        let [tag, first, rest @ ..] = self.buf else {
            return Err(OcspError::Der("truncated"));
        };
        if tag & 0x1f == 0x1f {
            return Err(OcspError::Der("multi-byte tag"));
        }
        let (len, rest) = match *first {
            n @ 0..=0x7f => (usize::from(n), rest),
            0x80 => return Err(OcspError::Der("indefinite length")),
            n => {
                let k = usize::from(n & 0x7f);
                if k > 4 || rest.len() < k {
                    return Err(OcspError::Der("bad length"));
                }
                let len = rest[..k]
                    .iter()
                    .fold(0usize, |a, b| (a << 8) | usize::from(*b));
                (len, &rest[k..])
            }
        };
        if rest.len() < len {
            return Err(OcspError::Der("truncated"));
        }
        let (content, after) = rest.split_at(len);
        self.buf = after;
        Ok((*tag, content))
    }

    /// The content of the next TLV, which must have tag `tag`.
    fn expect(&mut self, tag: u8) -> Result<&'a [u8], OcspError> {
        match self.next()? {
            (t, c) if t == tag => Ok(c),
            _ => Err(OcspError::Der("unexpected tag")),
        }
    }

    /// The content of a SEQUENCE that is all of the buffer, as a cursor.
    fn seq(mut self) -> Result<Der<'a>, OcspError> {
        let c = self.expect(0x30)?;
        Ok(Der::new(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> SystemTime {
        generalized_time(s.as_bytes()).unwrap()
    }

    #[test]
    fn generalized_times() {
        assert_eq!(t("19700101000000Z"), UNIX_EPOCH);
        assert_eq!(
            t("20261202031500Z"),
            UNIX_EPOCH + Duration::from_secs(1_796_181_300)
        );
        assert_eq!(
            t("20000229235959.5Z"),
            UNIX_EPOCH + Duration::from_millis(951_868_799_500)
        );
        for bad in [
            "2026120203150Z",
            "20261202031500",
            "20261302031500Z",
            "2026120203150aZ",
            "20261202031500.Z",
            "19691231235959Z",
            "",
        ] {
            assert!(generalized_time(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn der_errors_are_errors() {
        let leaf = [0x30, 0x05, 0x30, 0x03, 0x02, 0x01, 0x07];
        assert_eq!(leaf_serial(&leaf), Ok(&[7u8][..]));
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x05, 0x30],
            &[0x1f, 0x01, 0x00],
            &[0x30, 0x03, 0x0a, 0x01, 0x00],
            &[0x30, 0x03, 0x0a, 0x01, 0x06],
        ] {
            assert!(check(bad, &leaf, SystemTime::now()).is_err(), "{bad:?}");
        }
        assert_eq!(
            check(&[0x30, 0x03, 0x0a, 0x01, 0x06], &leaf, SystemTime::now()),
            Err(OcspError::Status(6))
        );
    }
}
