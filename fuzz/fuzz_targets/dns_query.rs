//! Fuzz the DNS receive path: any datagram, over UDP or TCP, through the wire fast path, the
//! general (hickory) path and the cached-forward wire path must never panic; every response must
//! decode, and when the fast path answers, the general path gives the same answer.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Instant;

use dhcp_dns::dhcp::LeaseChange;
use dhcp_dns::dns::answer::{AnswerStats, Outcome, Transport, answer_general, answer_or_forward};
use dhcp_dns::dns::fast::{answer_cached_into, answer_fast};
use dhcp_dns::dns::forward::{CacheKey, DnsCache};
use dhcp_dns::dns::zone::{Zone, ZoneConfig, parse_rdata};
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use libfuzzer_sys::fuzz_target;

fn zone() -> Zone {
    let mut c = ZoneConfig::new("cluster.test");
    c.ttl = 10;
    c.negative_ttl = 30;
    c.reverse_networks = vec!["198.18.0.0/16".parse().expect("net")];
    let mut z = Zone::new(c);
    z.add_host("api.cluster.test", "198.18.0.10".parse().expect("ip"));
    z.add_host("api.cluster.test", "fd00:198:18::10".parse().expect("ip"));
    z.add_record("www.cluster.test", parse_rdata("CNAME", "api", "cluster.test").expect("rdata"), None);
    z.add_wildcard("apps.cluster.test", "198.18.0.20".parse().expect("ip"));
    z.apply_lease(&LeaseChange { addr: Ipv4Addr::new(198, 18, 1, 7), old_name: None, new_name: Some("node-7.cluster.test".into()) });
    z
}

fn cache() -> Mutex<DnsCache> {
    let c = Mutex::new(DnsCache::new(16, 86_400, 3600));
    let name = Name::from_ascii("example.org.").expect("name");
    let mut req = Message::query();
    req.add_query(Query::query(name.clone(), RecordType::A));
    let mut resp = Message::response(1, OpCode::Query);
    resp.add_query(req.queries[0].clone());
    resp.add_answer(Record::from_rdata(name, 300, RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))));
    if let (Some(k), Ok(mut g)) = (CacheKey::of(&req), c.lock()) {
        g.insert(k, &resp, Instant::now());
    }
    c
}

fuzz_target!(|data: &[u8]| {
    let z = zone();
    let c = cache();
    let s = AnswerStats::default();
    for t in [Transport::Udp, Transport::Tcp] {
        if let Some(fast) = answer_fast(&z, data, t, &s) {
            let f = Message::from_vec(&fast).expect("fast answer decodes");
            let g = answer_general(&z, data, t, &s).expect("general path answers what the fast path answers");
            let g = Message::from_vec(&g).expect("general answer decodes");
            assert_eq!(f.answers, g.answers);
            assert_eq!(f.metadata.response_code, g.metadata.response_code);
        }
        match answer_or_forward(&z, data, t, &s) {
            Outcome::Respond(b) => {
                assert!(Message::from_vec(&b).is_ok() || b.len() == 12, "response decodes (or is a bare error header)");
            }
            Outcome::Drop | Outcome::Forward(_) => {}
        }
        let mut out = Vec::new();
        if answer_cached_into(&z, &c, data, t, &s, &mut out) {
            assert!(Message::from_vec(&out).is_ok(), "cached answer decodes");
        }
    }
});
