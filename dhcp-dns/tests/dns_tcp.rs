//! DNS over TCP on several TCP threads (each a current-thread runtime accepting from the one
//! shared listener): many connections at once, pipelined queries answered in order on each (the
//! wire fast path and the general answerer interleaved),
//! cached forwards answered from the wire path, a second server on the same port refused, and
//! shutdown joining every thread promptly. Loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use dhcp_dns::dns::forward::{CacheKey, ForwardConfig};
use dhcp_dns::dns::{Zone, ZoneConfig};
use dhcp_dns::server::{DnsServerConfig, start_dns};
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// A query for `name`'s A records, or its MX records when written `mx:<name>` (a type the wire
/// fast path declines: the general answerer takes it, in the middle of a pipeline).
fn query(id: u16, name: &str) -> Vec<u8> {
    let (name, t) = match name.strip_prefix("mx:") {
        Some(n) => (n, RecordType::MX),
        None => (name, RecordType::A),
    };
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// Send `ids.len()` queries in one write, then read as many framed answers (in order).
fn pipeline(addr: SocketAddr, names: &[String], first_id: u16) -> Vec<Message> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    for (k, n) in names.iter().enumerate() {
        let q = query(first_id + k as u16, n);
        out.extend_from_slice(&(q.len() as u16).to_be_bytes());
        out.extend_from_slice(&q);
    }
    c.write_all(&out).unwrap();
    let mut answers = Vec::new();
    for _ in names {
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut body).unwrap();
        answers.push(Message::from_vec(&body).unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_over_several_tcp_threads_answer_in_order() {
    let mut z = Zone::new(ZoneConfig::new("cluster.test"));
    for i in 0..50u8 {
        z.add_host(&format!("h{i}.cluster.test"), std::net::IpAddr::from([198, 18, 0, i + 1]));
    }
    // No upstream is reachable: the forwarded name must come from the cache (wire path).
    let cfg = DnsServerConfig {
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_threads: Some(3),
        forward: Some(ForwardConfig { upstreams: vec!["127.0.0.1:9".parse().unwrap()], timeout: Duration::from_millis(200), ..ForwardConfig::default() }),
        ..DnsServerConfig::default()
    };
    let h = start_dns(cfg, z.shared()).await.unwrap();
    let addr = h.tcp_addrs[0];
    let f = h.forwarder.clone().unwrap();
    let fwd = Name::from_ascii("www.example.org.").unwrap();
    let mut resp = Message::response(1, OpCode::Query);
    resp.add_query(Query::query(fwd.clone(), RecordType::A));
    resp.add_answer(Record::from_rdata(fwd, 300, RData::A(A("192.0.2.1".parse().unwrap()))));
    let req = Message::from_vec(&query(1, "www.example.org.")).unwrap();
    f.cache().lock().unwrap().insert(CacheKey::of(&req).unwrap(), &resp, Instant::now());

    // A second server cannot take the same port (no SO_REUSEPORT on the TCP listener).
    let dup = DnsServerConfig { tcp: vec![addr], tcp_threads: Some(2), ..DnsServerConfig::default() };
    assert!(start_dns(dup, Zone::new(ZoneConfig::new("x.test")).shared()).await.is_err());

    let clients: Vec<_> = (0..12u16)
        .map(|c| {
            tokio::task::spawn_blocking(move || {
                let names: Vec<String> = (0..60u16)
                    .map(|k| match k % 6 {
                        5 => "www.example.org.".to_string(),
                        3 => format!("mx:h{}.cluster.test.", (c * 7 + k) % 50),
                        _ => format!("h{}.cluster.test.", (c * 7 + k) % 50),
                    })
                    .collect();
                let answers = pipeline(addr, &names, c * 1000);
                for (k, (a, n)) in answers.iter().zip(&names).enumerate() {
                    assert_eq!(a.metadata.id, c * 1000 + k as u16, "connection {c}: answers in order");
                    match n.strip_prefix("mx:") {
                        // NODATA from the general path: no answer, the zone's SOA.
                        Some(n) => {
                            assert!(a.answers.is_empty(), "connection {c}: {n} MX");
                            assert_eq!(a.authorities.len(), 1, "connection {c}: {n} MX");
                            assert_eq!(a.queries[0].name().to_ascii().to_ascii_lowercase(), n.to_ascii_lowercase());
                        }
                        None => {
                            assert_eq!(a.answers.len(), 1, "connection {c}: {n}");
                            assert_eq!(a.queries[0].name().to_ascii().to_ascii_lowercase(), n.to_ascii_lowercase());
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(h.transport.tcp_accepted.load(std::sync::atomic::Ordering::Relaxed), 12);
    assert_eq!(f.stats.cache_hits.load(std::sync::atomic::Ordering::Relaxed), 12 * 10);
    assert_eq!(f.stats.forwarded.load(std::sync::atomic::Ordering::Relaxed), 0);

    // An idle connection stays open; shutdown still joins every TCP thread promptly.
    let idle = TcpStream::connect(addr).unwrap();
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), h.shutdown()).await.expect("shutdown joins the TCP threads");
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(idle);
    // The port is free again.
    assert!(std::net::TcpListener::bind(addr).is_ok());
}
