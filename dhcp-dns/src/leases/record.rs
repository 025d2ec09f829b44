//! On-disk framing of one lease-log record (the same bytes travel in replication messages).
//!
//! ```text
//! record  = len:u32le crc:u32le payload[len]      crc = CRC32 (IEEE) of payload
//! payload = version:u8(=2) kind:u8 addr:[4] rev:u64le
//!           kind 1 (upsert): state:u8 start:u64le expiry:u64le
//!                            hw:bytes8 client_id:opt16 hostname:opt8 fqdn:opt16
//!           kind 2 (remove): nothing more (a tombstone: the address was forgotten at `rev`)
//! bytes8  = len:u8 data    opt8 = 0 | 1 len:u8 data    opt16 = 0 | 1 len:u16le data
//! ```
//! Version 1 payloads (logs written before revisions existed) have no `rev`; they read with the
//! revision their `start` second begins (upserts) or 0 (removes).
//!
//! A record whose length is implausible, whose CRC fails or whose payload does not parse ends the
//! readable log: everything from there on is a torn or corrupt tail.

use std::net::Ipv4Addr;

use super::{Lease, LeaseError, LeaseState, Rev, rev_at};

/// Bytes of framing before each payload.
pub const HEADER_LEN: usize = 8;
/// Largest payload accepted; anything bigger is corruption (real records are < 600 bytes).
pub const MAX_PAYLOAD: usize = 4096;
const VERSION: u8 = 2;
const VERSION_NO_REV: u8 = 1;
const KIND_UPSERT: u8 = 1;
const KIND_REMOVE: u8 = 2;

/// One change to the lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// Insert or replace the lease for `lease.addr`.
    Upsert(Lease),
    /// Forget the address (leaving a tombstone at this revision).
    Remove(Ipv4Addr, Rev),
}

impl LogRecord {
    /// The address this record is about.
    pub fn addr(&self) -> Ipv4Addr {
        match self {
            LogRecord::Upsert(l) => l.addr,
            LogRecord::Remove(a, _) => *a,
        }
    }

    /// The revision of the decision this record carries.
    pub fn rev(&self) -> Rev {
        match self {
            LogRecord::Upsert(l) => l.rev,
            LogRecord::Remove(_, r) => *r,
        }
    }

    /// Does this record supersede `other` (a record about the same address)? The higher revision
    /// wins; equal revisions (two gateways deciding apart in the same instant) are ordered by the
    /// records' bytes, so every gateway picks the same one. A record does not supersede itself.
    pub fn newer_than(&self, other: &LogRecord) -> bool {
        match self.rev().cmp(&other.rev()) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                // An unencodable record never wins a tie.
                self.encode(&mut a).is_ok() && (other.encode(&mut b).is_err() || a > b)
            }
        }
    }

    /// Append the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), LeaseError> {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        out.push(VERSION);
        match self {
            LogRecord::Remove(a, rev) => {
                out.push(KIND_REMOVE);
                out.extend_from_slice(&a.octets());
                out.extend_from_slice(&rev.to_le_bytes());
            }
            LogRecord::Upsert(l) => {
                out.push(KIND_UPSERT);
                out.extend_from_slice(&l.addr.octets());
                out.extend_from_slice(&l.rev.to_le_bytes());
                out.push(l.state as u8);
                out.extend_from_slice(&l.start.to_le_bytes());
                out.extend_from_slice(&l.expiry.to_le_bytes());
                let res = (|| {
                    put_bytes8(out, &l.hwaddr)?;
                    put_opt16(out, l.client_id.as_deref())?;
                    put_opt8(out, l.hostname.as_deref().map(str::as_bytes))?;
                    put_opt16(out, l.fqdn.as_deref().map(str::as_bytes))
                })();
                if let Err(e) = res {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        let len = out.len() - start - HEADER_LEN;
        if len > MAX_PAYLOAD {
            out.truncate(start);
            return Err(LeaseError::RecordTooLarge(len));
        }
        let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
        out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Decode one framed record at the start of `buf`.
    /// Returns the record and the bytes it used, or `None` when `buf` does not start with a
    /// complete, intact record (torn write, corruption, or end of data).
    pub fn decode(buf: &[u8]) -> Option<(LogRecord, usize)> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
        if len > MAX_PAYLOAD || buf.len() < HEADER_LEN + len {
            return None;
        }
        let payload = &buf[HEADER_LEN..HEADER_LEN + len];
        if crc32fast::hash(payload) != crc {
            return None;
        }
        let rec = parse_payload(payload)?;
        Some((rec, HEADER_LEN + len))
    }
}

fn put_bytes8(out: &mut Vec<u8>, b: &[u8]) -> Result<(), LeaseError> {
    let n = u8::try_from(b.len()).map_err(|_| LeaseError::RecordTooLarge(b.len()))?;
    out.push(n);
    out.extend_from_slice(b);
    Ok(())
}

fn put_opt8(out: &mut Vec<u8>, b: Option<&[u8]>) -> Result<(), LeaseError> {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes8(out, b)?;
        }
    }
    Ok(())
}

fn put_opt16(out: &mut Vec<u8>, b: Option<&[u8]>) -> Result<(), LeaseError> {
    match b {
        None => out.push(0),
        Some(b) => {
            let n = u16::try_from(b.len()).map_err(|_| LeaseError::RecordTooLarge(b.len()))?;
            out.push(1);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(b);
        }
    }
    Ok(())
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn addr(&mut self) -> Option<Ipv4Addr> {
        let b = self.take(4)?;
        Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    }
    fn bytes8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn opt8(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.bytes8()?)),
            _ => None,
        }
    }
    fn opt16(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            1 => {
                let n = self.u16()? as usize;
                Some(Some(self.take(n)?))
            }
            _ => None,
        }
    }
}

fn parse_payload(p: &[u8]) -> Option<LogRecord> {
    let mut c = Cursor(p);
    let version = c.u8()?;
    if version != VERSION && version != VERSION_NO_REV {
        return None;
    }
    let kind = c.u8()?;
    let addr = c.addr()?;
    let rev = if version == VERSION { Some(c.u64()?) } else { None };
    let rec = match kind {
        KIND_REMOVE => LogRecord::Remove(addr, rev.unwrap_or(0)),
        KIND_UPSERT => {
            let state = LeaseState::from_u8(c.u8()?)?;
            let start = c.u64()?;
            let expiry = c.u64()?;
            let hwaddr = c.bytes8()?.to_vec();
            let client_id = c.opt16()?.map(<[u8]>::to_vec);
            let hostname = match c.opt8()? {
                None => None,
                Some(b) => Some(String::from_utf8(b.to_vec()).ok()?),
            };
            let fqdn = match c.opt16()? {
                None => None,
                Some(b) => Some(String::from_utf8(b.to_vec()).ok()?),
            };
            let rev = rev.unwrap_or_else(|| rev_at(start));
            LogRecord::Upsert(Lease { addr, hwaddr, client_id, hostname, fqdn, start, expiry, state, rev })
        }
        _ => return None,
    };
    // Trailing bytes inside a CRC-valid payload mean a writer we do not understand.
    if !c.0.is_empty() {
        return None;
    }
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_lease() -> impl Strategy<Value = Lease> {
        (
            any::<[u8; 4]>(),
            proptest::collection::vec(any::<u8>(), 0..=16),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::option::of("[a-z0-9-]{1,63}"),
            proptest::option::of("[a-z0-9.-]{1,200}"),
            any::<u64>(),
            any::<u64>(),
            1u8..=4,
            any::<u64>(),
        )
            .prop_map(|(a, hw, cid, h, f, s, e, st, rev)| Lease {
                addr: Ipv4Addr::from(a),
                hwaddr: hw,
                client_id: cid,
                hostname: h,
                fqdn: f,
                start: s,
                expiry: e,
                state: LeaseState::from_u8(st).unwrap_or(LeaseState::Active),
                rev,
            })
    }

    fn arb_record() -> impl Strategy<Value = LogRecord> {
        prop_oneof![
            arb_lease().prop_map(LogRecord::Upsert),
            (any::<[u8; 4]>(), any::<u64>()).prop_map(|(a, r)| LogRecord::Remove(Ipv4Addr::from(a), r)),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(recs in proptest::collection::vec(arb_record(), 1..8)) {
            let mut buf = Vec::new();
            for r in &recs {
                r.encode(&mut buf).unwrap();
            }
            let mut off = 0;
            for r in &recs {
                let (got, used) = LogRecord::decode(&buf[off..]).expect("decodes");
                prop_assert_eq!(&got, r);
                off += used;
            }
            prop_assert_eq!(off, buf.len());
        }

        #[test]
        fn decode_never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = LogRecord::decode(&buf);
        }

        #[test]
        fn any_single_bit_flip_is_detected(rec in arb_record(), bit in any::<usize>()) {
            let mut buf = Vec::new();
            rec.encode(&mut buf).unwrap();
            let bit = bit % (buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            // A flip may make the record unreadable; it must never yield a different record.
            if let Some((got, _)) = LogRecord::decode(&buf) {
                prop_assert_eq!(got, rec);
            }
        }
    }

    #[test]
    fn oversized_fields_are_refused_not_truncated() {
        let l = Lease {
            addr: Ipv4Addr::new(198, 18, 0, 10),
            hwaddr: vec![0; 300],
            client_id: None,
            hostname: None,
            fqdn: None,
            start: 0,
            expiry: 1,
            state: LeaseState::Active,
            rev: 1,
        };
        let mut buf = vec![7u8];
        assert!(LogRecord::Upsert(l).encode(&mut buf).is_err());
        assert_eq!(buf, vec![7u8], "a failed encode leaves the buffer as it was");
    }

    #[test]
    fn version_1_records_read_with_a_revision_from_their_start() {
        // An upsert and a remove as a session-2 log holds them (no revision field).
        let mut payload = vec![1u8, KIND_UPSERT, 198, 18, 0, 9, LeaseState::Active as u8];
        payload.extend_from_slice(&1_700_000_000u64.to_le_bytes());
        payload.extend_from_slice(&1_700_003_600u64.to_le_bytes());
        payload.extend_from_slice(&[6, 2, 0, 0, 0, 0, 9, 0, 1, 2, b'h', b'9', 0]);
        let remove = [1u8, KIND_REMOVE, 198, 18, 0, 8];
        let mut buf = Vec::new();
        for p in [&payload[..], &remove[..]] {
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            buf.extend_from_slice(p);
        }
        let (up, used) = LogRecord::decode(&buf).expect("v1 upsert");
        let LogRecord::Upsert(l) = up else { panic!("{up:?}") };
        assert_eq!((l.addr, l.hostname.as_deref(), l.rev), (Ipv4Addr::new(198, 18, 0, 9), Some("h9"), rev_at(1_700_000_000)));
        assert_eq!(LogRecord::decode(&buf[used..]).map(|r| r.0), Some(LogRecord::Remove(Ipv4Addr::new(198, 18, 0, 8), 0)));
    }

    proptest! {
        #[test]
        fn newer_than_is_a_strict_total_order(a in arb_record(), b in arb_record()) {
            // Antisymmetric and irreflexive: two gateways comparing the same two records agree.
            prop_assert!(!a.newer_than(&a));
            if a != b {
                prop_assert!(a.newer_than(&b) != b.newer_than(&a), "{a:?} vs {b:?}");
            }
            if a.rev() > b.rev() {
                prop_assert!(a.newer_than(&b));
            }
        }
    }
}
