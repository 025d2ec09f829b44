//! The fast path: plain A/AAAA/PTR queries answered straight from the wire bytes, without building
//! hickory messages. Anything unusual (several questions, EDNS options other than a bare OPT,
//! compression in the question, CNAMEs, wildcards, negative answers, size limits) returns `None`
//! and goes to the general path in [`mod@super::answer`], which is the reference: a test checks both
//! give the same answer.

use std::sync::atomic::Ordering;
use std::time::Instant;

use hickory_proto::rr::RecordType;

use super::answer::{AnswerStats, CLASSIC_UDP, OUR_UDP_PAYLOAD, Transport};
use super::forward::{CacheKeyRef, DnsCache};
use super::zone::{FastRec, Lookup, Zone};

const MAX_NAME: usize = 255;

/// Answer `q` if it is a plain query the fast path handles.
pub fn answer_fast(zone: &Zone, q: &[u8], transport: Transport, stats: &AnswerStats) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(q.len() + 64);
    answer_fast_into(zone, q, transport, stats, &mut out).then_some(out)
}

/// [`answer_fast`] writing into a reused buffer (cleared first): no allocation once `out` has
/// grown to the usual answer size. `false`: not handled here (then `out` holds nothing useful).
pub fn answer_fast_into(zone: &Zone, q: &[u8], transport: Transport, stats: &AnswerStats, out: &mut Vec<u8>) -> bool {
    out.clear();
    match parse_question(q) {
        Some(qs) => fast_into(zone, &qs, q, transport, stats, out).is_some(),
        None => false,
    }
}

/// What [`answer_wire_into`] did with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireAnswer {
    /// Answered from the zone.
    Local,
    /// Answered from the forwarder's cache.
    Cached,
    /// Not handled here (unusual query, not cached, too big): the general path decides.
    Declined,
}

/// The whole wire fast path in one pass over the query: the question is parsed once, then a name
/// we answer for goes to the zone ([`answer_fast_into`]'s answer), any other name to `cache`
/// ([`answer_cached_into`]'s answer) when forwarding is on. `now` is the caller's clock (one
/// reading per batch of queries). The answer is written into `out` (cleared first).
pub fn answer_wire_into(
    zone: &Zone,
    cache: Option<&std::sync::Mutex<DnsCache>>,
    q: &[u8],
    transport: Transport,
    stats: &AnswerStats,
    now: Instant,
    out: &mut Vec<u8>,
) -> WireAnswer {
    out.clear();
    let Some(qs) = parse_question(q) else { return WireAnswer::Declined };
    let ours = match (cache, qs.name()) {
        (Some(_), Some(name)) => zone.answers_for(name),
        _ => true,
    };
    let done = match (ours, cache) {
        (false, Some(c)) => cached_into(c, &qs, q, transport, stats, now, out).map(|_| WireAnswer::Cached),
        _ => fast_into(zone, &qs, q, transport, stats, out).map(|_| WireAnswer::Local),
    };
    done.unwrap_or(WireAnswer::Declined)
}

/// The header and single question of a plain query, parsed from the wire without allocating.
struct Question {
    /// Lowercase dotted QNAME without the trailing dot.
    key: [u8; MAX_NAME],
    klen: usize,
    qtype: u16,
    qclass: u16,
    /// End of the question section.
    qend: usize,
    /// The client's EDNS UDP size, when it sent a bare OPT.
    client_size: Option<u16>,
}

impl Question {
    fn name(&self) -> Option<&str> {
        std::str::from_utf8(&self.key[..self.klen]).ok()
    }
}

/// Parse a plain query: QR=0, opcode QUERY, TC=0, one question with an uncompressed name,
/// nothing else but at most one bare OPT (version 0; its options are ignored, none echoed).
fn parse_question(q: &[u8]) -> Option<Question> {
    if q.len() < 12 {
        return None;
    }
    if q[2] & 0xFA != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    // QNAME → lowercase dotted key on the stack.
    let mut key = [0u8; MAX_NAME];
    let mut klen = 0usize;
    let mut i = 12;
    loop {
        let l = *q.get(i)? as usize;
        i += 1;
        if l == 0 {
            break;
        }
        if l > 63 || klen + l + 1 > MAX_NAME {
            return None; // compression pointer or oversize: general path
        }
        let label = q.get(i..i + l)?;
        if klen > 0 {
            key[klen] = b'.';
            klen += 1;
        }
        for &b in label {
            if b == b'.' || !b.is_ascii_graphic() {
                return None;
            }
            key[klen] = b.to_ascii_lowercase();
            klen += 1;
        }
        i += l;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*q.get(i + 2)?, *q.get(i + 3)?]);
    let qend = i + 4;
    let mut client_size = None;
    if count(10) == 1 {
        let o = q.get(qend..)?;
        if o.len() < 11 || o[0] != 0 || o[1..3] != [0, 41] || o[6] != 0 {
            return None;
        }
        let rdlen = u16::from_be_bytes([o[9], o[10]]) as usize;
        if o.len() != 11 + rdlen {
            return None;
        }
        client_size = Some(u16::from_be_bytes([o[3], o[4]]));
    } else if q.len() != qend {
        return None;
    }
    Some(Question { key, klen, qtype, qclass, qend, client_size })
}

/// Append our OPT (when the client sent one) and return the UDP size limit of the answer.
fn put_opt(out: &mut Vec<u8>, client_size: Option<u16>) -> usize {
    match client_size {
        Some(sz) => {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&OUR_UDP_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            usize::from(sz.clamp(512, OUR_UDP_PAYLOAD))
        }
        None => CLASSIC_UDP,
    }
}

/// Answer a query for a forwarded name from the forwarder's cache, in wire form: the question
/// is copied, the cached records appended with their TTLs reduced by their age. `false`: not a
/// plain query, a name of ours, not cached (or stale), or too big for UDP — the general path
/// answers (and truncates) then. Same bytes as the general path's cached answer (tested).
pub fn answer_cached_into(
    zone: &Zone,
    cache: &std::sync::Mutex<DnsCache>,
    q: &[u8],
    transport: Transport,
    stats: &AnswerStats,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    match parse_question(q) {
        Some(qs) if qs.name().is_some_and(|n| !zone.answers_for(n)) => {
            cached_into(cache, &qs, q, transport, stats, Instant::now(), out).is_some()
        }
        _ => false,
    }
}

/// The cache part of [`answer_cached_into`] for a parsed question (the caller checked that the
/// name is not one of ours).
fn cached_into(
    cache: &std::sync::Mutex<DnsCache>,
    qs: &Question,
    q: &[u8],
    transport: Transport,
    stats: &AnswerStats,
    now: Instant,
    out: &mut Vec<u8>,
) -> Option<()> {
    let name = qs.name()?;
    if qs.qclass != 1 {
        return None;
    }
    let mut cache = cache.lock().ok()?;
    let hit = cache.get_wire(&CacheKeyRef { name, qtype: qs.qtype, qclass: qs.qclass }, now)?;
    out.extend_from_slice(&q[..qs.qend]);
    let base = out.len();
    out.extend_from_slice(hit.bytes);
    for &at in hit.ttl_at {
        let t = out.get(base + at..base + at + 4)?;
        let ttl = u32::from_be_bytes([t[0], t[1], t[2], t[3]]).saturating_sub(hit.age);
        out[base + at..base + at + 4].copy_from_slice(&ttl.to_be_bytes());
    }
    // Header: QR=1, keep opcode (0) and RD; RA=1, keep CD; the cached RCODE.
    out[2] = 0x80 | (q[2] & 0x01);
    out[3] = 0x80 | (q[3] & 0x10) | (u16::from(hit.rcode) & 0x0F) as u8;
    out[6..8].copy_from_slice(&hit.answers.to_be_bytes());
    out[8..10].copy_from_slice(&hit.authorities.to_be_bytes());
    drop(cache);
    out[10..12].copy_from_slice(&u16::from(qs.client_size.is_some()).to_be_bytes());
    let limit = put_opt(out, qs.client_size);
    if transport == Transport::Udp && out.len() > limit {
        return None;
    }
    stats.queries.fetch_add(1, Ordering::Relaxed);
    Some(())
}

fn fast_into(zone: &Zone, qs: &Question, q: &[u8], transport: Transport, stats: &AnswerStats, out: &mut Vec<u8>) -> Option<()> {
    let (qtype, qend) = (qs.qtype, qs.qend);
    if qs.qclass != 1 {
        return None;
    }
    let rtype = match qtype {
        1 => RecordType::A,
        28 => RecordType::AAAA,
        12 => RecordType::PTR,
        _ => return None,
    };
    let name = qs.name()?;
    out.extend_from_slice(&q[..qend]);
    let mut failed = false;
    let mut rcode = 0u8;
    let mut authority = 0u16;
    let visited = zone.visit(name, rtype, &mut |rec, ttl| {
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        match rec {
            FastRec::A(a) => {
                out.extend_from_slice(&[0, 4]);
                out.extend_from_slice(&a.octets());
            }
            FastRec::Aaaa(a) => {
                out.extend_from_slice(&[0, 16]);
                out.extend_from_slice(&a.octets());
            }
            FastRec::PtrName(n) => {
                let at = out.len();
                out.extend_from_slice(&[0, 0]);
                for l in n.iter() {
                    if l.is_empty() || l.len() > 63 {
                        failed = true;
                        return;
                    }
                    out.push(l.len() as u8);
                    out.extend_from_slice(l);
                }
                out.push(0);
                let len = (out.len() - at - 2) as u16;
                out[at..at + 2].copy_from_slice(&len.to_be_bytes());
            }
            FastRec::PtrStr(s) => {
                let at = out.len();
                out.extend_from_slice(&[0, 0]);
                for l in s.split('.') {
                    if l.is_empty() || l.len() > 63 {
                        failed = true;
                        return;
                    }
                    out.push(l.len() as u8);
                    out.extend_from_slice(l.as_bytes());
                }
                out.push(0);
                let len = (out.len() - at - 2) as u16;
                out[at..at + 2].copy_from_slice(&len.to_be_bytes());
            }
        }
    });
    if failed {
        return None;
    }
    let n = match visited {
        Some(n) => n,
        None => {
            // Negative answers (RFC 2308): NXDOMAIN or NODATA with the zone's SOA in authority.
            let code = match zone.lookup_type(name, rtype) {
                Lookup::NxDomain => 3,
                Lookup::NoData => 0,
                _ => return None,
            };
            put_soa(zone, name, out)?;
            rcode = code;
            authority = 1;
            0
        }
    };
    // Header: QR=1, AA=1, keep RD (and opcode 0); RA=0, keep CD, RCODE=0.
    out[2] = 0x80 | 0x04 | (q[2] & 0x01);
    out[3] = (q[3] & 0x10) | rcode;
    out[6..8].copy_from_slice(&(n as u16).to_be_bytes());
    out[8..10].copy_from_slice(&authority.to_be_bytes());
    out[10..12].copy_from_slice(&u16::from(qs.client_size.is_some()).to_be_bytes());
    let limit = put_opt(out, qs.client_size);
    if transport == Transport::Udp && out.len() > limit {
        return None; // the general path truncates properly
    }
    stats.queries.fetch_add(1, Ordering::Relaxed);
    let counter = match (authority, rcode) {
        (0, _) => &stats.answered,
        (_, 3) => &stats.nxdomain,
        _ => &stats.nodata,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    Some(())
}

/// Append `name` (dotted; a trailing dot is ignored, letters are lowercased as `zone::norm` does) in
/// wire form; `None` if a label is invalid.
fn put_name(out: &mut Vec<u8>, name: &str) -> Option<()> {
    let name = name.trim_end_matches('.');
    if !name.is_empty() {
        for l in name.split('.') {
            put_label(out, l)?;
        }
    }
    out.push(0);
    Some(())
}

/// Append one label, lowercased; `None` if empty or longer than 63 bytes.
fn put_label(out: &mut Vec<u8>, l: &str) -> Option<()> {
    if l.is_empty() || l.len() > 63 {
        return None;
    }
    out.push(l.len() as u8);
    out.extend(l.bytes().map(|b| b.to_ascii_lowercase()));
    Some(())
}

/// Append the SOA of the zone holding `name` (same data as the general path's).
fn put_soa(zone: &Zone, name: &str, out: &mut Vec<u8>) -> Option<()> {
    let cfg = zone.config();
    put_name(out, zone.apex_of(name))?;
    out.extend_from_slice(&[0, 6, 0, 1]);
    out.extend_from_slice(&cfg.negative_ttl.to_be_bytes());
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    // Written label by label (normalised on the way): no allocation per answer.
    match &cfg.mname {
        Some(m) => put_name(out, m)?,
        None => {
            put_label(out, "ns")?;
            put_name(out, &cfg.domain)?;
        }
    }
    match &cfg.rname {
        Some(r) => put_name(out, r)?,
        None => {
            put_label(out, "hostmaster")?;
            put_name(out, &cfg.domain)?;
        }
    }
    for v in [zone.serial(), 3600, 600, 86400, cfg.negative_ttl] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let len = u16::try_from(out.len() - at - 2).ok()?;
    out[at..at + 2].copy_from_slice(&len.to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::LeaseChange;
    use crate::dns::answer::answer_general;
    use crate::dns::zone::ZoneConfig;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::Name;
    use std::net::Ipv4Addr;

    fn zone() -> Zone {
        let mut c = ZoneConfig::new("cluster.test");
        c.ttl = 9;
        c.reverse_networks = vec!["198.18.0.0/16".parse().unwrap()];
        let mut z = Zone::new(c);
        z.add_host("api.cluster.test", "198.18.0.10".parse().unwrap());
        z.add_host("api.cluster.test", "fd00:198:18::10".parse().unwrap());
        z.add_host("two.cluster.test", "198.18.0.11".parse().unwrap());
        z.add_host("two.cluster.test", "198.18.0.12".parse().unwrap());
        z.add_record("www.cluster.test", crate::dns::zone::parse_rdata("CNAME", "api", "cluster.test").unwrap(), None);
        z.apply_lease(&LeaseChange { addr: Ipv4Addr::new(198, 18, 1, 7), old_name: None, new_name: Some("node-7.cluster.test".into()) });
        // The zone's inline A index: more A records than it holds inline, a name too long for it,
        // records with their own TTL, a name with no A record, and lease names that repeat (or
        // not) a static address of the same name.
        for i in 1..=3 {
            z.add_host("three.cluster.test", std::net::IpAddr::from([198, 18, 0, 20 + i]));
        }
        for i in 1..=2 {
            z.add_host("a-name-longer-than-thirty-bytes.cluster.test", std::net::IpAddr::from([198, 18, 0, 30 + i]));
        }
        z.add_record("ttl.cluster.test", crate::dns::zone::parse_rdata("A", "198.18.0.40", "cluster.test").unwrap(), Some(77));
        z.add_record("ttl.cluster.test", crate::dns::zone::parse_rdata("A", "198.18.0.41", "cluster.test").unwrap(), None);
        z.add_record("mx.cluster.test", crate::dns::zone::parse_rdata("MX", "10 api", "cluster.test").unwrap(), None);
        z.add_host("leased.cluster.test", "198.18.1.8".parse().unwrap());
        z.apply_lease(&LeaseChange { addr: Ipv4Addr::new(198, 18, 1, 8), old_name: None, new_name: Some("leased.cluster.test".into()) });
        z.add_host("moved.cluster.test", "198.18.1.9".parse().unwrap());
        z.apply_lease(&LeaseChange { addr: Ipv4Addr::new(198, 18, 1, 10), old_name: None, new_name: Some("moved.cluster.test".into()) });
        z
    }

    fn query(name: &str, t: RecordType, edns: bool, rd: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = rd;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn fast_and_general_paths_agree() {
        let z = zone();
        let s = AnswerStats::default();
        let cases = [
            ("api.cluster.test.", RecordType::A),
            ("API.Cluster.Test.", RecordType::AAAA),
            ("two.cluster.test.", RecordType::A),
            ("node-7.cluster.test.", RecordType::A),
            ("10.0.18.198.in-addr.arpa.", RecordType::PTR),
            ("7.1.18.198.in-addr.arpa.", RecordType::PTR),
            ("nope.cluster.test.", RecordType::A),
            ("api.cluster.test.", RecordType::PTR),
            ("99.9.18.198.in-addr.arpa.", RecordType::PTR),
            ("cluster.test.", RecordType::A),
            ("three.cluster.test.", RecordType::A),
            ("a-name-longer-than-thirty-bytes.cluster.test.", RecordType::A),
            ("ttl.cluster.test.", RecordType::A),
            ("mx.cluster.test.", RecordType::A),
            ("leased.cluster.test.", RecordType::A),
            ("moved.cluster.test.", RecordType::A),
        ];
        for (name, t) in cases {
            for edns in [false, true] {
                for rd in [false, true] {
                    let q = query(name, t, edns, rd);
                    let fast = answer_fast(&z, &q, Transport::Udp, &s).unwrap_or_else(|| panic!("fast path declined {name} {t:?}"));
                    let slow = answer_general(&z, &q, Transport::Udp, &s).unwrap();
                    let (f, g) = (Message::from_vec(&fast).unwrap(), Message::from_vec(&slow).unwrap());
                    assert_eq!(f.metadata, g.metadata, "{name} {t:?} edns={edns}");
                    assert_eq!(f.queries, g.queries);
                    assert_eq!(f.answers, g.answers, "{name} {t:?}");
                    // Record equality ignores TTLs: compare them too.
                    let ttls = |m: &Message| m.answers.iter().chain(&m.authorities).map(|r| r.ttl).collect::<Vec<_>>();
                    assert_eq!(ttls(&f), ttls(&g), "{name} {t:?} TTLs");
                    assert_eq!(f.authorities, g.authorities, "{name} {t:?}");
                    assert_eq!(f.edns.as_ref().map(|e| e.max_payload()), g.edns.as_ref().map(|e| e.max_payload()));
                }
            }
        }
    }

    #[test]
    fn unusual_queries_go_to_the_general_path() {
        let z = zone();
        let s = AnswerStats::default();
        for (name, t) in [
            ("www.cluster.test.", RecordType::A),     // CNAME
            ("api.cluster.test.", RecordType::MX),    // other type
            ("example.org.", RecordType::A),          // not ours
        ] {
            assert!(answer_fast(&z, &query(name, t, false, true), Transport::Udp, &s).is_none(), "{name}");
        }
        let mut resp = query("api.cluster.test.", RecordType::A, false, true);
        resp[2] |= 0x80;
        assert!(answer_fast(&z, &resp, Transport::Udp, &s).is_none());
    }

    #[test]
    fn cached_wire_answers_match_the_general_cached_answers() {
        use crate::dns::answer::forwarded_response;
        use crate::dns::forward::CacheKey;
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::rdata::{A, CNAME, SOA};
        use hickory_proto::rr::{RData, Record};
        let z = zone();
        let s = AnswerStats::default();
        let cache = std::sync::Mutex::new(DnsCache::new(100, 86_400, 3600));
        let stored = std::time::Instant::now().checked_sub(std::time::Duration::from_secs(7)).unwrap();
        let n = |x: &str| Name::from_ascii(x).unwrap();
        // Positive: a CNAME chain (names that would compress) and two addresses.
        let mut pos = Message::response(1, hickory_proto::op::OpCode::Query);
        pos.add_query(Query::query(n("www.example.org."), RecordType::A));
        pos.add_answer(Record::from_rdata(n("www.example.org."), 300, RData::CNAME(CNAME(n("web.example.org.")))));
        pos.add_answer(Record::from_rdata(n("web.example.org."), 300, RData::A(A("192.0.2.1".parse().unwrap()))));
        pos.add_answer(Record::from_rdata(n("web.example.org."), 60, RData::A(A("192.0.2.2".parse().unwrap()))));
        // Negative: NXDOMAIN with the SOA in authority.
        let mut neg = Message::response(2, hickory_proto::op::OpCode::Query);
        neg.metadata.response_code = ResponseCode::NXDomain;
        neg.add_query(Query::query(n("nx.example.org."), RecordType::AAAA));
        let soa = SOA::new(n("ns.example.org."), n("admin.example.org."), 7, 3600, 600, 86400, 120);
        neg.add_authority(Record::from_rdata(n("example.org."), 300, RData::SOA(soa)));
        for (m, qname, t) in [(&pos, "WWW.Example.ORG.", RecordType::A), (&neg, "nx.example.org.", RecordType::AAAA)] {
            let req0 = Message::from_vec(&query(qname, t, false, true)).unwrap();
            cache.lock().unwrap().insert(CacheKey::of(&req0).unwrap(), m, stored);
            for edns in [false, true] {
                for rd in [false, true] {
                    let q = query(qname, t, edns, rd);
                    let mut out = Vec::new();
                    assert!(answer_cached_into(&z, &cache, &q, Transport::Udp, &s, &mut out), "{qname} edns={edns}");
                    let req = Message::from_vec(&q).unwrap();
                    let hit = cache.lock().unwrap().get(&CacheKey::of(&req).unwrap(), std::time::Instant::now()).unwrap();
                    let general = forwarded_response(&req, hit.rcode, hit.answers, hit.authorities, Transport::Udp, &s).unwrap();
                    let (f, g) = (Message::from_vec(&out).unwrap(), Message::from_vec(&general).unwrap());
                    assert_eq!(f.metadata, g.metadata, "{qname} edns={edns} rd={rd}");
                    assert_eq!(f.queries, g.queries);
                    assert_eq!(f.answers, g.answers);
                    assert_eq!(f.authorities, g.authorities);
                    assert_eq!(f.edns.as_ref().map(|e| e.max_payload()), g.edns.as_ref().map(|e| e.max_payload()));
                    // TTLs went down by the age.
                    assert!(f.answers.iter().chain(&f.authorities).all(|r| r.ttl <= 300 - 7));
                }
            }
        }
        // Names of ours and names not cached are not answered from the cache.
        let mut out = Vec::new();
        assert!(!answer_cached_into(&z, &cache, &query("api.cluster.test.", RecordType::A, false, true), Transport::Udp, &s, &mut out));
        assert!(!answer_cached_into(&z, &cache, &query("other.example.org.", RecordType::A, false, true), Transport::Udp, &s, &mut out));
    }

    #[test]
    fn one_pass_wire_path_matches_the_separate_paths() {
        use crate::dns::forward::CacheKey;
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};
        let z = zone();
        let s = AnswerStats::default();
        let cache = std::sync::Mutex::new(DnsCache::new(100, 86_400, 3600));
        let n = Name::from_ascii("www.example.org.").unwrap();
        let mut resp = Message::response(1, hickory_proto::op::OpCode::Query);
        resp.add_query(Query::query(n.clone(), RecordType::A));
        resp.add_answer(Record::from_rdata(n, 300, RData::A(A("192.0.2.1".parse().unwrap()))));
        let req = Message::from_vec(&query("www.example.org.", RecordType::A, false, true)).unwrap();
        let now = std::time::Instant::now();
        cache.lock().unwrap().insert(CacheKey::of(&req).unwrap(), &resp, now);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (name, t, want) in [
            ("api.cluster.test.", RecordType::A, WireAnswer::Local),
            ("7.1.18.198.in-addr.arpa.", RecordType::PTR, WireAnswer::Local),
            ("nope.cluster.test.", RecordType::A, WireAnswer::Local),
            ("WWW.example.ORG.", RecordType::A, WireAnswer::Cached),
            ("other.example.org.", RecordType::A, WireAnswer::Declined),
            ("www.cluster.test.", RecordType::A, WireAnswer::Declined),
        ] {
            for edns in [false, true] {
                let q = query(name, t, edns, true);
                assert_eq!(answer_wire_into(&z, Some(&cache), &q, Transport::Udp, &s, now, &mut a), want, "{name}");
                let separate = answer_fast_into(&z, &q, Transport::Udp, &s, &mut b)
                    || answer_cached_into(&z, &cache, &q, Transport::Udp, &s, &mut b);
                assert_eq!(separate, want != WireAnswer::Declined, "{name}");
                if separate {
                    assert_eq!(a, b, "{name} edns={edns}");
                }
            }
        }
        // Without a forwarder, names not ours are declined (the general path refuses them).
        let q = query("www.example.org.", RecordType::A, false, true);
        assert_eq!(answer_wire_into(&z, None, &q, Transport::Udp, &s, now, &mut a), WireAnswer::Declined);
        // An expired entry is not served (the general path removes it and forwards again).
        let later = now + std::time::Duration::from_secs(300);
        assert_eq!(answer_wire_into(&z, Some(&cache), &q, Transport::Udp, &s, later, &mut a), WireAnswer::Declined);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), flips in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>()), 0..6)) {
            let z = zone();
            let s = AnswerStats::default();
            let _ = answer_fast(&z, &bytes, Transport::Udp, &s);
            let mut q = query("api.cluster.test.", RecordType::A, true, true);
            for (i, v) in flips {
                let i = i % q.len();
                q[i] = v;
            }
            if let Some(r) = answer_fast(&z, &q, Transport::Udp, &s) {
                proptest::prop_assert!(Message::from_vec(&r).is_ok());
            }
        }
    }
}
