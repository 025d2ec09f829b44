//! Query in, response out: a pure function over the zone (RFC 1035, 2308, 6891).
//!
//! - Not a query (QR=1), or shorter than a header: dropped (counted).
//! - Undecodable: FORMERR echoing the id (counted). More than one question: FORMERR.
//! - Opcode other than QUERY: NOTIMP. EDNS version > 0: BADVERS.
//! - Ours: AA answers; NXDOMAIN / NODATA carry the zone SOA in authority, its TTL capped by the
//!   SOA minimum (RFC 2308 §3). Not ours: REFUSED (until the forwarder lands).
//! - UDP: the response is limited to 512 bytes, or the client's EDNS size capped by ours; over
//!   that it is sent truncated (TC=1, question only) so the client retries over TCP.

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use super::zone::{Lookup, Zone, norm};

/// Largest UDP response we send to EDNS clients (DNS flag day 2020 value).
pub const OUR_UDP_PAYLOAD: u16 = 1232;
/// UDP limit without EDNS (RFC 1035).
pub const CLASSIC_UDP: usize = 512;

/// How the query arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: size-limited, may be truncated.
    Udp,
    /// TCP: up to 65535 bytes.
    Tcp,
}

/// Counters of the answering path (shared by all server tasks).
#[derive(Debug, Default)]
pub struct AnswerStats {
    /// Queries seen.
    pub queries: AtomicU64,
    /// Answered with records.
    pub answered: AtomicU64,
    /// NXDOMAIN.
    pub nxdomain: AtomicU64,
    /// NOERROR without records.
    pub nodata: AtomicU64,
    /// REFUSED (not ours).
    pub refused: AtomicU64,
    /// FORMERR (malformed).
    pub formerr: AtomicU64,
    /// NOTIMP / BADVERS.
    pub notimp: AtomicU64,
    /// Dropped without a response (not a query, too short).
    pub dropped: AtomicU64,
    /// Sent truncated.
    pub truncated: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A bare error response built from the raw header (for queries hickory cannot decode).
fn raw_error(query: &[u8], rcode: u8) -> Vec<u8> {
    let mut r = vec![0u8; 12];
    r[0] = query[0];
    r[1] = query[1];
    // QR=1, keep opcode and RD.
    r[2] = 0x80 | (query[2] & 0x79);
    r[3] = rcode & 0x0f;
    r
}

/// What to do with a query.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes.
    Respond(Vec<u8>),
    /// Send nothing.
    Drop,
    /// Not ours: forward the decoded query (only from [`answer_or_forward`]).
    Forward(Box<Message>),
}

/// Answer one DNS query from `zone`. `None` means: send nothing. Names outside the zone: REFUSED.
pub fn answer(zone: &Zone, query: &[u8], transport: Transport, stats: &AnswerStats) -> Option<Vec<u8>> {
    match answer_inner(zone, query, transport, stats, false) {
        Outcome::Respond(b) => Some(b),
        _ => None,
    }
}

/// Like [`answer`], but names outside our zones come back as [`Outcome::Forward`].
pub fn answer_or_forward(zone: &Zone, query: &[u8], transport: Transport, stats: &AnswerStats) -> Outcome {
    answer_inner(zone, query, transport, stats, true)
}

/// The UDP size limit the client of `req` accepts.
pub fn udp_limit(req: &Message) -> usize {
    match &req.edns {
        Some(e) => usize::from(e.max_payload().clamp(512, OUR_UDP_PAYLOAD)),
        None => CLASSIC_UDP,
    }
}

/// A response to `req` carrying a forwarded (or cached) answer.
pub fn forwarded_response(
    req: &Message,
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    transport: Transport,
    stats: &AnswerStats,
) -> Option<Vec<u8>> {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.metadata.response_code = rcode;
    resp.add_queries(req.queries.iter().cloned());
    resp.insert_answers(answers);
    resp.insert_authorities(authorities);
    if req.edns.is_some() {
        let mut ours = Edns::new();
        ours.set_max_payload(OUR_UDP_PAYLOAD);
        resp.set_edns(ours);
    }
    finish(resp, transport, udp_limit(req), stats)
}

/// The general path alone (no fast path): the reference the fast path is tested against.
pub fn answer_general(zone: &Zone, query: &[u8], transport: Transport, stats: &AnswerStats) -> Option<Vec<u8>> {
    match answer_msg(zone, query, transport, stats, false) {
        Ok(b) => b,
        Err(_) => None,
    }
}

fn answer_inner(zone: &Zone, query: &[u8], transport: Transport, stats: &AnswerStats, forward: bool) -> Outcome {
    if let Some(b) = super::fast::answer_fast(zone, query, transport, stats) {
        return Outcome::Respond(b);
    }
    match answer_msg(zone, query, transport, stats, forward) {
        Ok(Some(b)) => Outcome::Respond(b),
        Ok(None) => Outcome::Drop,
        Err(req) => Outcome::Forward(req),
    }
}

fn answer_msg(
    zone: &Zone,
    query: &[u8],
    transport: Transport,
    stats: &AnswerStats,
    forward: bool,
) -> Result<Option<Vec<u8>>, Box<Message>> {
    bump(&stats.queries);
    if query.len() < 12 || query[2] & 0x80 != 0 {
        bump(&stats.dropped);
        return Ok(None);
    }
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            bump(&stats.formerr);
            return Ok(Some(raw_error(query, 1)));
        }
    };
    if req.metadata.message_type != MessageType::Query {
        bump(&stats.dropped);
        return Ok(None);
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.add_queries(req.queries.iter().cloned());
    let udp_limit = udp_limit(&req);
    if let Some(e) = &req.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(OUR_UDP_PAYLOAD);
        ours.set_version(0);
        resp.set_edns(ours);
        if e.version() > 0 {
            bump(&stats.notimp);
            resp.metadata.response_code = ResponseCode::BADVERS;
            return Ok(finish(resp, transport, udp_limit, stats));
        }
    }
    if req.metadata.op_code != OpCode::Query {
        bump(&stats.notimp);
        resp.metadata.response_code = ResponseCode::NotImp;
        return Ok(finish(resp, transport, udp_limit, stats));
    }
    if req.queries.len() != 1 {
        bump(&stats.formerr);
        resp.metadata.response_code = ResponseCode::FormErr;
        return Ok(finish(resp, transport, udp_limit, stats));
    }
    let q = &req.queries[0];
    if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY {
        bump(&stats.refused);
        resp.metadata.response_code = ResponseCode::Refused;
        return Ok(finish(resp, transport, udp_limit, stats));
    }
    let qname = q.name().clone();
    let name = norm(&qname.to_ascii());
    let qtype = q.query_type();
    let ttl = zone.config().ttl;
    let mut lookup = zone.lookup_type(&name, qtype);
    // Follow CNAMEs inside our data (bounded: loops and long chains stop).
    let mut owner = qname.clone();
    let mut target_name = name.clone();
    for _ in 0..8 {
        let Lookup::Cname(rec, target) = lookup else { break };
        resp.metadata.authoritative = true;
        resp.add_answer(Record::from_rdata(owner.clone(), rec.ttl.unwrap_or(ttl), rec.rdata));
        let Ok(t) = Name::from_ascii(format!("{target}.")) else {
            lookup = Lookup::NoData;
            break;
        };
        owner = t;
        target_name = target;
        lookup = zone.lookup_type(&target_name, qtype);
        if matches!(lookup, Lookup::NotAuthoritative) {
            // The target is elsewhere: the client's resolver chases it.
            lookup = Lookup::Records(Vec::new());
        }
    }
    if matches!(lookup, Lookup::Cname(..)) {
        lookup = Lookup::Records(Vec::new());
    }
    let name = target_name;
    match lookup {
        Lookup::Records(recs) => {
            resp.metadata.authoritative = true;
            bump(&stats.answered);
            for r in recs {
                resp.add_answer(Record::from_rdata(owner.clone(), r.ttl.unwrap_or(ttl), r.rdata));
            }
        }
        Lookup::Cname(..) => {}
        Lookup::Soa => {
            resp.metadata.authoritative = true;
            bump(&stats.answered);
            if let Some(r) = soa_record(zone, &name) {
                resp.add_answer(r);
            }
        }
        Lookup::NoData => {
            resp.metadata.authoritative = true;
            bump(&stats.nodata);
            if let Some(r) = soa_record(zone, &name) {
                resp.add_authority(r);
            }
        }
        Lookup::NxDomain => {
            resp.metadata.authoritative = true;
            resp.metadata.response_code = ResponseCode::NXDomain;
            bump(&stats.nxdomain);
            if let Some(r) = soa_record(zone, &name) {
                resp.add_authority(r);
            }
        }
        Lookup::NotAuthoritative if forward => return Err(Box::new(req)),
        Lookup::NotAuthoritative => {
            bump(&stats.refused);
            resp.metadata.response_code = ResponseCode::Refused;
        }
    }
    Ok(finish(resp, transport, udp_limit, stats))
}

/// The SOA of the zone holding `name`; TTL = negative TTL (RFC 2308 §3: min of SOA TTL and MINIMUM).
fn soa_record(zone: &Zone, name: &str) -> Option<Record> {
    let cfg = zone.config();
    let apex = zone.apex_of(name);
    let owner = Name::from_ascii(format!("{apex}.")).ok()?;
    let mname = cfg.mname.clone().unwrap_or_else(|| format!("ns.{}", cfg.domain));
    let rname = cfg.rname.clone().unwrap_or_else(|| format!("hostmaster.{}", cfg.domain));
    let soa = SOA::new(
        Name::from_ascii(format!("{}.", norm(&mname))).ok()?,
        Name::from_ascii(format!("{}.", norm(&rname))).ok()?,
        zone.serial(),
        3600,
        600,
        86400,
        cfg.negative_ttl,
    );
    Some(Record::from_rdata(owner, cfg.negative_ttl, RData::SOA(soa)))
}

pub(crate) fn finish(resp: Message, transport: Transport, udp_limit: usize, stats: &AnswerStats) -> Option<Vec<u8>> {
    let bytes = match resp.to_vec() {
        Ok(b) => b,
        Err(_) => {
            let mut m = Message::error_msg(resp.metadata.id, resp.metadata.op_code, ResponseCode::ServFail);
            m.add_queries(resp.queries.iter().cloned());
            return m.to_vec().ok();
        }
    };
    let limit = match transport {
        Transport::Udp => udp_limit,
        Transport::Tcp => usize::from(u16::MAX),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    bump(&stats.truncated);
    let mut t = resp.truncate();
    t.metadata.authoritative = resp.metadata.authoritative;
    t.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::LeaseChange;
    use crate::dns::zone::ZoneConfig;
    use hickory_proto::op::Query;
    use hickory_proto::rr::RecordType;
    use hickory_proto::rr::rdata::{A, CNAME, PTR};
    use std::net::{IpAddr, Ipv4Addr};

    fn zone() -> Zone {
        let mut c = ZoneConfig::new("cluster.test");
        c.ttl = 5;
        c.negative_ttl = 30;
        c.reverse_networks = vec!["198.18.0.0/24".parse().unwrap()];
        let mut z = Zone::new(c);
        z.add_host("api.cluster.test", "198.18.0.10".parse().unwrap());
        for i in 0..200u32 {
            z.add_host("many.cluster.test", IpAddr::V4(Ipv4Addr::from(0xC612_0100 + i)));
        }
        z.apply_lease(&LeaseChange { addr: Ipv4Addr::new(198, 18, 0, 77), old_name: None, new_name: Some("node-77.cluster.test".into()) });
        z
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0xbeef;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn ask(z: &Zone, q: &[u8], t: Transport) -> Message {
        let s = AnswerStats::default();
        Message::from_vec(&answer(z, q, t, &s).expect("a response")).unwrap()
    }

    #[test]
    fn lease_name_a_and_ptr() {
        let z = zone();
        let r = ask(&z, &query("Node-77.Cluster.Test.", RecordType::A, None), Transport::Udp);
        assert_eq!(r.metadata.id, 0xbeef);
        assert!(r.metadata.authoritative && r.metadata.recursion_desired);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(198, 18, 0, 77))));
        assert_eq!(r.answers[0].ttl, 5);
        let r = ask(&z, &query("77.0.18.198.in-addr.arpa.", RecordType::PTR, None), Transport::Udp);
        assert_eq!(r.answers[0].data, RData::PTR(PTR(Name::from_ascii("node-77.cluster.test.").unwrap())));
    }

    #[test]
    fn cname_is_chased_inside_the_zone_and_loops_stop() {
        let mut z = zone();
        let d = "cluster.test";
        z.add_record("www.cluster.test", crate::dns::zone::parse_rdata("CNAME", "api", d).unwrap(), None);
        z.add_record("ext.cluster.test", crate::dns::zone::parse_rdata("CNAME", "www.example.org.", d).unwrap(), None);
        z.add_record("loop1.cluster.test", crate::dns::zone::parse_rdata("CNAME", "loop2", d).unwrap(), None);
        z.add_record("loop2.cluster.test", crate::dns::zone::parse_rdata("CNAME", "loop1", d).unwrap(), None);
        z.add_record("dangling.cluster.test", crate::dns::zone::parse_rdata("CNAME", "gone", d).unwrap(), None);
        let r = ask(&z, &query("www.cluster.test.", RecordType::A, None), Transport::Udp);
        assert_eq!(r.answers.len(), 2);
        assert_eq!(r.answers[0].data, RData::CNAME(CNAME(Name::from_ascii("api.cluster.test.").unwrap())));
        assert_eq!(r.answers[1].name, Name::from_ascii("api.cluster.test.").unwrap());
        assert_eq!(r.answers[1].data, RData::A(A(Ipv4Addr::new(198, 18, 0, 10))));
        let r = ask(&z, &query("ext.cluster.test.", RecordType::A, None), Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        let r = ask(&z, &query("loop1.cluster.test.", RecordType::A, None), Transport::Udp);
        assert!(r.answers.len() <= 8);
        // RFC 6604: the rcode is the one of the last name in the chain.
        let r = ask(&z, &query("dangling.cluster.test.", RecordType::A, None), Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.answers.len(), 1);
    }

    #[test]
    fn nxdomain_and_nodata_carry_the_soa() {
        let z = zone();
        let r = ask(&z, &query("nope.cluster.test.", RecordType::A, None), Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities.len(), 1);
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(r.authorities[0].name, Name::from_ascii("cluster.test.").unwrap());
        assert_eq!(r.authorities[0].ttl, 30);
        let r = ask(&z, &query("api.cluster.test.", RecordType::AAAA, None), Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
        // Reverse zone's own SOA owner.
        let r = ask(&z, &query("9.0.18.198.in-addr.arpa.", RecordType::PTR, None), Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(r.authorities[0].name, Name::from_ascii("0.18.198.in-addr.arpa.").unwrap());
    }

    #[test]
    fn outside_the_zone_is_refused() {
        let r = ask(&zone(), &query("example.org.", RecordType::A, None), Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(!r.metadata.authoritative);
    }

    #[test]
    fn udp_truncation_and_edns_size() {
        let z = zone();
        // 200 A records ≈ 3.2 kB: over 512 and over 1232.
        let r = ask(&z, &query("many.cluster.test.", RecordType::A, None), Transport::Udp);
        assert!(r.metadata.truncation && r.answers.is_empty());
        assert_eq!(r.queries.len(), 1);
        let raw = answer(&z, &query("many.cluster.test.", RecordType::A, Some(4096)), Transport::Udp, &AnswerStats::default()).unwrap();
        assert!(raw.len() <= OUR_UDP_PAYLOAD as usize);
        let r = Message::from_vec(&raw).unwrap();
        assert!(r.metadata.truncation);
        assert_eq!(r.edns.as_ref().map(|e| e.max_payload()), Some(OUR_UDP_PAYLOAD));
        // TCP carries it whole.
        let r = ask(&z, &query("many.cluster.test.", RecordType::A, Some(4096)), Transport::Tcp);
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 200);
        // A small answer with EDNS echoes an OPT record.
        let r = ask(&z, &query("api.cluster.test.", RecordType::A, Some(1400)), Transport::Udp);
        assert!(r.edns.is_some() && !r.metadata.truncation);
    }

    #[test]
    fn edns_version_1_is_badvers() {
        let mut m = Message::from_vec(&query("api.cluster.test.", RecordType::A, Some(1232))).unwrap();
        if let Some(e) = m.edns.as_mut() {
            e.set_version(1);
        }
        let r = ask(&zone(), &m.to_vec().unwrap(), Transport::Udp);
        // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
        assert_eq!(u16::from(r.metadata.response_code), 16);
    }

    #[test]
    fn malformed_queries_formerr_or_drop() {
        let z = zone();
        let s = AnswerStats::default();
        assert!(answer(&z, &[1, 2, 3], Transport::Udp, &s).is_none());
        let mut resp = query("api.cluster.test.", RecordType::A, None);
        resp[2] |= 0x80; // a response: never answer it (reflection loops)
        assert!(answer(&z, &resp, Transport::Udp, &s).is_none());
        let mut bad = query("api.cluster.test.", RecordType::A, None);
        bad.truncate(bad.len() - 3);
        let r = answer(&z, &bad, Transport::Udp, &s).unwrap();
        assert_eq!(&r[..2], &[0xbe, 0xef]);
        assert_eq!(r[3] & 0x0f, 1, "FORMERR");
        assert_eq!(s.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(s.formerr.load(Ordering::Relaxed), 1);
        // Two questions: FORMERR.
        let mut m = Message::from_vec(&query("api.cluster.test.", RecordType::A, None)).unwrap();
        m.add_query(Query::query(Name::from_ascii("x.cluster.test.").unwrap(), RecordType::A));
        let r = ask(&z, &m.to_vec().unwrap(), Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let z = zone();
            let _ = answer(&z, &bytes, Transport::Udp, &AnswerStats::default());
        }
    }
}
