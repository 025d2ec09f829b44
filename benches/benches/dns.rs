//! The DNS answer path (dhcp-dns's hot path per query): a plain A / PTR / NXDOMAIN query against a
//! zone of 1000 hosts-file names through the wire fast path (reused buffer, as the UDP loop calls
//! it) and through the general hickory path (the reference), and a cached forward answered from
//! the cache in wire form versus decode + cache lookup + encode.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use dhcp_dns::dns::answer::{AnswerStats, Transport, answer_general, forwarded_response};
use dhcp_dns::dns::fast::{WireAnswer, answer_cached_into, answer_fast_into, answer_wire_into};
use dhcp_dns::dns::forward::{CacheKey, DnsCache};
use dhcp_dns::dns::hosts::HostsEntry;
use dhcp_dns::dns::zone::{Zone, ZoneConfig};
use hickory_proto::op::{Edns, Message, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn zone() -> Zone {
    let mut c = ZoneConfig::new("bench.test");
    c.ttl = 10;
    c.negative_ttl = 10;
    c.reverse_networks = vec!["198.18.0.0/16".parse().expect("net")];
    let mut z = Zone::new(c);
    let entries: Vec<HostsEntry> = (0..1000u32)
        .map(|i| HostsEntry {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250 + 1) as u8)),
            names: vec![format!("host-{i}.bench.test")],
        })
        .collect();
    z.add_hosts(&entries, false);
    z
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().expect("encode")
}

fn bench_answer(c: &mut Criterion) {
    let z = zone();
    let stats = AnswerStats::default();
    let cases = [
        ("local A", query("host-517.bench.test.", RecordType::A)),
        ("local PTR", query("18.2.18.198.in-addr.arpa.", RecordType::PTR)),
        ("NXDOMAIN", query("nx-1.bench.test.", RecordType::A)),
    ];
    let mut g = c.benchmark_group("dns/answer");
    for (name, q) in &cases {
        let mut out = Vec::with_capacity(1536);
        assert!(answer_fast_into(&z, q, Transport::Udp, &stats, &mut out), "{name} takes the fast path");
        g.bench_function(format!("{name}/fast"), |b| b.iter(|| answer_fast_into(&z, black_box(q), Transport::Udp, &stats, &mut out)));
        g.bench_function(format!("{name}/general"), |b| b.iter(|| answer_general(&z, black_box(q), Transport::Udp, &stats)));
    }
    g.finish();
}

fn bench_cached_forward(c: &mut Criterion) {
    let z = zone();
    let stats = AnswerStats::default();
    let cache = Mutex::new(DnsCache::new(10_000, 86_400, 3600));
    let q = query("fwd-7.up.test.", RecordType::A);
    let req = Message::from_vec(&q).expect("decode");
    let mut resp = Message::response(1, OpCode::Query);
    resp.add_query(req.queries[0].clone());
    resp.add_answer(Record::from_rdata(Name::from_ascii("fwd-7.up.test.").expect("name"), 3600, RData::A(A(Ipv4Addr::new(198, 19, 0, 8)))));
    cache.lock().expect("lock").insert(CacheKey::of(&req).expect("key"), &resp, Instant::now());
    let mut out = Vec::with_capacity(1536);
    assert!(answer_cached_into(&z, &cache, &q, Transport::Udp, &stats, &mut out));
    let mut g = c.benchmark_group("dns/cached-forward");
    g.bench_function("wire", |b| b.iter(|| answer_cached_into(&z, &cache, black_box(&q), Transport::Udp, &stats, &mut out)));
    // What the UDP loop pays per cached forward: one pass (session 4) vs the zone fast path
    // declining it first, then the cache path parsing it again (session 3).
    let now = Instant::now();
    assert_eq!(answer_wire_into(&z, Some(&cache), &q, Transport::Udp, &stats, now, &mut out), WireAnswer::Cached);
    g.bench_function("loop/one-pass", |b| {
        b.iter(|| answer_wire_into(&z, Some(&cache), black_box(&q), Transport::Udp, &stats, now, &mut out))
    });
    g.bench_function("loop/fast-then-cache", |b| {
        b.iter(|| {
            answer_fast_into(&z, black_box(&q), Transport::Udp, &stats, &mut out)
                || answer_cached_into(&z, &cache, black_box(&q), Transport::Udp, &stats, &mut out)
        })
    });
    g.bench_function("decode+records+encode", |b| {
        b.iter(|| {
            let req = Message::from_vec(black_box(&q)).expect("decode");
            let key = CacheKey::of(&req).expect("key");
            let hit = cache.lock().expect("lock").get(&key, Instant::now()).expect("cached");
            forwarded_response(&req, hit.rcode, hit.answers, hit.authorities, Transport::Udp, &stats)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_answer, bench_cached_forward);
criterion_main!(benches);
