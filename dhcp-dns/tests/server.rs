//! End-to-end tests of the tokio drivers on loopback (high ports; no traffic leaves the host).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use dhcp_dns::dhcp::{DhcpConfig, DhcpServer, Ipv4Net, LeaseChange, Reservation, Subnet};
use dhcp_dns::dns::{Zone, ZoneConfig};
use dhcp_dns::leases::commit::CompactionPolicy;
use dhcp_dns::leases::{GroupCommitter, LeaseLog, LogRecord, log::MAGIC};
use dhcp_dns::server::{DhcpDriverConfig, DnsServerConfig, start_dhcp, start_dns};
use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use hickory_proto::op::{Message as DnsMessage, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{Name, RData, RecordType};

fn dns_query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = DnsMessage::query();
    m.metadata.id = id;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn udp_ask(server: SocketAddr, q: &[u8]) -> DnsMessage {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(q, server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).unwrap();
    DnsMessage::from_vec(&buf[..n]).unwrap()
}

fn test_zone() -> Zone {
    let mut c = ZoneConfig::new("cluster.test");
    c.ttl = 7;
    c.reverse_networks = vec!["127.77.0.0/16".parse().unwrap()];
    let mut z = Zone::new(c);
    z.add_host("api.cluster.test", "127.77.0.10".parse().unwrap());
    z
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_udp_and_tcp_follows_lease_changes() {
    let zone = test_zone().shared();
    let cfg = DnsServerConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        udp_sockets_per_addr: 2,
        tcp_idle: Duration::from_millis(300),
        ..DnsServerConfig::default()
    };
    let h = start_dns(cfg, zone.clone()).await.unwrap();
    let udp = h.udp_addrs[0];
    let tcp = h.tcp_addrs[0];

    let r = tokio::task::spawn_blocking(move || udp_ask(udp, &dns_query(1, "api.cluster.test.", RecordType::A))).await.unwrap();
    assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(127, 77, 0, 10))));
    assert_eq!(r.answers[0].ttl, 7);

    let r = tokio::task::spawn_blocking(move || udp_ask(udp, &dns_query(2, "node-1.cluster.test.", RecordType::A))).await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // A lease is granted: the name resolves at once.
    zone.write().unwrap().apply_lease(&LeaseChange {
        addr: Ipv4Addr::new(127, 77, 1, 5),
        old_name: None,
        new_name: Some("node-1.cluster.test".into()),
    });
    let r = tokio::task::spawn_blocking(move || udp_ask(udp, &dns_query(3, "node-1.cluster.test.", RecordType::A))).await.unwrap();
    assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(127, 77, 1, 5))));

    // TCP: three pipelined queries in one write, three answers in order.
    let answers = tokio::task::spawn_blocking(move || {
        let mut c = TcpStream::connect(tcp).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        for (id, name, t) in [(10u16, "api.cluster.test.", RecordType::A), (11, "5.1.77.127.in-addr.arpa.", RecordType::PTR), (12, "nope.cluster.test.", RecordType::A)] {
            let q = dns_query(id, name, t);
            out.extend_from_slice(&(q.len() as u16).to_be_bytes());
            out.extend_from_slice(&q);
        }
        c.write_all(&out).unwrap();
        let mut msgs = Vec::new();
        for _ in 0..3 {
            let mut len = [0u8; 2];
            c.read_exact(&mut len).unwrap();
            let mut b = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut b).unwrap();
            msgs.push(DnsMessage::from_vec(&b).unwrap());
        }
        // Idle timeout: the server closes the connection (read returns EOF).
        let mut one = [0u8; 1];
        let eof = c.read(&mut one).unwrap();
        (msgs, eof)
    })
    .await
    .unwrap();
    let (msgs, eof) = answers;
    assert_eq!(msgs.iter().map(|m| m.metadata.id).collect::<Vec<_>>(), vec![10, 11, 12]);
    assert_eq!(msgs[1].answers[0].data, RData::PTR(PTR(Name::from_ascii("node-1.cluster.test.").unwrap())));
    assert_eq!(msgs[2].metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(eof, 0, "idle connection closed by the server");
    assert!(h.transport.tcp_idle_closed.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // Garbage over UDP: no crash, counted, server keeps answering.
    tokio::task::spawn_blocking(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&[0u8; 5], udp).unwrap();
        s.send_to(&[0xde, 0xad, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], udp).unwrap();
    })
    .await
    .unwrap();
    let r = tokio::task::spawn_blocking(move || udp_ask(udp, &dns_query(4, "api.cluster.test.", RecordType::A))).await.unwrap();
    assert_eq!(r.metadata.id, 4);
    // With two SO_REUSEPORT sockets the garbage may be handled by the other task: wait (bounded).
    let counted = || {
        h.stats.dropped.load(std::sync::atomic::Ordering::Relaxed) >= 1 && h.stats.formerr.load(std::sync::atomic::Ordering::Relaxed) >= 1
    };
    for _ in 0..50 {
        if counted() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted(), "malformed queries dropped/FORMERR'd and counted");

    // dig, when installed, agrees.
    if let Ok(out) = std::process::Command::new("dig")
        .args(["@127.0.0.1", "-p", &udp.port().to_string(), "+short", "+time=2", "+tries=1", "node-1.cluster.test", "A"])
        .output()
    {
        let s = String::from_utf8_lossy(&out.stdout);
        assert_eq!(s.trim(), "127.77.1.5", "dig said: {s}");
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &udp.port().to_string(), "+short", "+time=2", "+tries=1", "-x", "127.77.1.5"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "node-1.cluster.test.");
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &tcp.port().to_string(), "+tcp", "+short", "+time=2", "+tries=1", "api.cluster.test"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.77.0.10");
    } else {
        eprintln!("dig not installed: skipped the dig cross-check");
    }
    h.shutdown().await;
}

fn relay_request(xid: u32, mac: &[u8], mt: MessageType, giaddr: Ipv4Addr, extra: Vec<DhcpOption>) -> Vec<u8> {
    let mut m = Message::new_with_id(xid, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, giaddr, mac);
    m.set_hops(1);
    m.opts_mut().insert(DhcpOption::MessageType(mt));
    for o in extra {
        m.opts_mut().insert(o);
    }
    m.to_vec().unwrap()
}

/// Records durably in the log file right now (read without modifying it).
fn durable_records(path: &std::path::Path) -> Vec<LogRecord> {
    let b = std::fs::read(path).unwrap();
    assert!(b.starts_with(MAGIC));
    let mut off = MAGIC.len();
    let mut out = Vec::new();
    while let Some((r, used)) = LogRecord::decode(&b[off..]) {
        out.push(r);
        off += used;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_dora_on_loopback_persists_before_ack_and_publishes_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.log");
    let (log, _) = LeaseLog::open(&path).unwrap();
    let committer = Arc::new(GroupCommitter::start(log, CompactionPolicy::default()));
    let giaddr = Ipv4Addr::new(127, 77, 0, 1);
    let sid = Ipv4Addr::new(127, 0, 0, 1);
    let mut s = Subnet::new("127.77.0.0/16".parse::<Ipv4Net>().unwrap(), sid);
    s.ranges = vec![(Ipv4Addr::new(127, 77, 1, 10), Ipv4Addr::new(127, 77, 1, 20))];
    s.routers = vec![giaddr];
    let core = DhcpServer::new(DhcpConfig {
        domain: Some("cluster.test".into()),
        subnets: vec![s],
        reservations: vec![Reservation {
            hwaddr: Some(vec![2, 0, 0, 0, 0, 0x99]),
            client_id: None,
            addr: Ipv4Addr::new(127, 77, 2, 1),
            hostname: Some("fixed".into()),
            lease_secs: None,
        }],
        ..DhcpConfig::default()
    });
    let zone = test_zone().shared();
    // The "relay agent": a socket on giaddr; the server sends replies to giaddr:relay_port.
    let relay = UdpSocket::bind(SocketAddrV4::new(giaddr, 0)).unwrap();
    relay.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let dcfg = DhcpDriverConfig {
        bind: SocketAddrV4::new(sid, 0),
        relay_port,
        client_port: relay_port,
        broadcast: Ipv4Addr::new(127, 255, 255, 255),
        ..DhcpDriverConfig::default()
    };
    let h = start_dhcp(vec![dcfg], core, committer.clone(), Some(zone.clone())).await.unwrap();
    let server = h.locals[0];
    let dns = start_dns(
        DnsServerConfig { udp: vec!["127.0.0.1:0".parse().unwrap()], ..DnsServerConfig::default() },
        zone.clone(),
    )
    .await
    .unwrap();
    let dns_addr = dns.udp_addrs[0];
    let path2 = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1500];
        for (i, mac) in [[2u8, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 0x99]].iter().enumerate() {
            let host = format!("worker-{i}");
            let xid = 0x5000 + i as u32;
            relay.send_to(&relay_request(xid, mac, MessageType::Discover, giaddr, vec![DhcpOption::Hostname(host.clone())]), server).unwrap();
            let (n, _) = relay.recv_from(&mut buf).unwrap();
            let offer = Message::from_bytes(&buf[..n]).unwrap();
            assert_eq!(offer.xid(), xid);
            assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
            let a = offer.yiaddr();
            relay
                .send_to(
                    &relay_request(xid, mac, MessageType::Request, giaddr, vec![
                        DhcpOption::Hostname(host.clone()),
                        DhcpOption::ServerIdentifier(sid),
                        DhcpOption::RequestedIpAddress(a),
                    ]),
                    server,
                )
                .unwrap();
            let (n, _) = relay.recv_from(&mut buf).unwrap();
            let ack = Message::from_bytes(&buf[..n]).unwrap();
            assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
            assert_eq!(ack.yiaddr(), a);
            assert_eq!(ack.opts().get(OptionCode::Router), Some(&DhcpOption::Router(vec![giaddr])));
            // The ACK was sent only after the lease was durable: it is in the file already.
            let recs = durable_records(&path2);
            assert!(
                recs.iter().any(|r| matches!(r, LogRecord::Upsert(l) if l.addr == a && l.hwaddr == mac.to_vec())),
                "lease {a} not durable when its ACK arrived"
            );
            // And its name resolves right away.
            let name = if mac[5] == 0x99 { "fixed".to_string() } else { host.clone() };
            let r = udp_ask(dns_addr, &dns_query(100 + i as u16, &format!("{name}.cluster.test."), RecordType::A));
            assert_eq!(r.answers.first().map(|r| r.data.clone()), Some(RData::A(A(a))), "{name}");
            if mac[5] == 0x99 {
                assert_eq!(a, Ipv4Addr::new(127, 77, 2, 1), "reservation");
            }
        }
    })
    .await
    .unwrap();
    // The driver publishes the core's counters at its timer ticks (at least once a second).
    let mut published = 0;
    for _ in 0..30 {
        published = h.stats.status.lock().unwrap().counters.acks;
        if published == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, 3);
    assert_eq!(h.stats.status.lock().unwrap().active_leases, 3);
    let core = h.shutdown().await.unwrap();
    assert_eq!(core.counters().acks, 3);
    dns.shutdown().await;
    let committer = Arc::try_unwrap(committer).ok().expect("sole owner");
    drop(committer.shutdown());
    let (log, rec) = LeaseLog::open(&path).unwrap();
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(log.table().len(), 3);
    let mut names: Vec<_> = log.table().values().filter_map(|l| l.fqdn.clone()).collect();
    names.sort();
    assert_eq!(names, vec!["fixed.cluster.test", "worker-0.cluster.test", "worker-1.cluster.test"]);
}

/// A fake upstream DNS server on loopback; answers a few fixed names, counts queries, and first
/// sends a spoofed answer (wrong id) to check that the forwarder ignores it. Bounded in time.
fn fake_upstream(answer_ip: Ipv4Addr) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicBool>) {
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::Record;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let addr = s.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, st2) = (count.clone(), stop.clone());
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 1500];
        while !st2.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            let Ok((n, peer)) = s.recv_from(&mut buf) else { continue };
            let Ok(q) = DnsMessage::from_vec(&buf[..n]) else { continue };
            c2.fetch_add(1, Ordering::Relaxed);
            let name = q.queries[0].name().clone();
            let mut r = DnsMessage::response(q.metadata.id, q.metadata.op_code);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.iter().cloned());
            let lname = name.to_ascii().to_ascii_lowercase();
            if lname.starts_with("slow.") {
                // Bounded delay so concurrent identical questions overlap.
                std::thread::sleep(Duration::from_millis(300));
            }
            if lname.starts_with("nx.") {
                r.metadata.response_code = ResponseCode::NXDomain;
                let soa = SOA::new(Name::from_ascii("ns.example.org.").unwrap(), Name::from_ascii("h.example.org.").unwrap(), 1, 1, 1, 1, 60);
                r.add_authority(Record::from_rdata(Name::from_ascii("example.org.").unwrap(), 300, RData::SOA(soa)));
            } else if lname.starts_with("evil.") {
                r.add_answer(Record::from_rdata(name, 300, RData::A(A(Ipv4Addr::new(10, 0, 0, 5)))));
            } else {
                r.add_answer(Record::from_rdata(name, 300, RData::A(A(answer_ip))));
            }
            let mut spoof = r.clone();
            spoof.metadata.id = q.metadata.id.wrapping_add(1);
            let _ = s.send_to(&spoof.to_vec().unwrap(), peer);
            let _ = s.send_to(&r.to_vec().unwrap(), peer);
        }
    });
    (addr, count, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_caching_negative_caching_rebind_and_per_domain_upstreams() {
    use dhcp_dns::dns::ForwardConfig;
    use std::sync::atomic::Ordering;
    let (up1, count1, stop1) = fake_upstream(Ipv4Addr::new(203, 0, 113, 7));
    let (up2, count2, stop2) = fake_upstream(Ipv4Addr::new(203, 0, 113, 99));
    let cfg = DnsServerConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        forward: Some(ForwardConfig {
            upstreams: vec![up1],
            domains: vec![("corp.test".into(), vec![up2])],
            timeout: Duration::from_secs(2),
            ..ForwardConfig::default()
        }),
        ..DnsServerConfig::default()
    };
    let h = start_dns(cfg, test_zone().shared()).await.unwrap();
    let udp = h.udp_addrs[0];
    let tcp = h.tcp_addrs[0];
    let fw = h.forwarder.clone().unwrap();
    let count1_after = count1.clone();
    tokio::task::spawn_blocking(move || {
        let r = udp_ask(udp, &dns_query(21, "www.example.org.", RecordType::A));
        assert_eq!(r.metadata.id, 21);
        assert!(r.metadata.recursion_available);
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(203, 0, 113, 7))));
        let r = udp_ask(udp, &dns_query(22, "WWW.example.org.", RecordType::A));
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(203, 0, 113, 7))));
        assert!(r.answers[0].ttl <= 300);
        assert_eq!(count1.load(Ordering::Relaxed), 1, "second answer from the cache");

        for id in [23, 24] {
            let r = udp_ask(udp, &dns_query(id, "nx.example.org.", RecordType::A));
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
            assert_eq!(r.authorities.len(), 1);
        }
        assert_eq!(count1.load(Ordering::Relaxed), 2, "NXDOMAIN cached (RFC 2308)");

        let r = udp_ask(udp, &dns_query(25, "evil.example.org.", RecordType::A));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused, "rebinding protection");

        let r = udp_ask(udp, &dns_query(26, "host.corp.test.", RecordType::A));
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(203, 0, 113, 99))));
        assert_eq!(count2.load(Ordering::Relaxed), 1, "per-domain upstream");

        // Local names are still answered locally, authoritative.
        let r = udp_ask(udp, &dns_query(27, "api.cluster.test.", RecordType::A));
        assert!(r.metadata.authoritative);

        // Forwarding over TCP too.
        let mut c = TcpStream::connect(tcp).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let q = dns_query(28, "tcp.example.org.", RecordType::A);
        c.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        c.write_all(&q).unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut b = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut b).unwrap();
        let r = DnsMessage::from_vec(&b).unwrap();
        assert_eq!(r.metadata.id, 28);
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(203, 0, 113, 7))));
    })
    .await
    .unwrap();
    // Twenty clients ask the same uncached name at once: one upstream query.
    let before = count1_after.load(Ordering::Relaxed);
    let askers: Vec<_> = (0..20u16)
        .map(|i| tokio::task::spawn_blocking(move || udp_ask(udp, &dns_query(200 + i, "slow.example.org.", RecordType::A))))
        .collect();
    for a in askers {
        let r = a.await.unwrap();
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(203, 0, 113, 7))));
    }
    assert_eq!(count1_after.load(Ordering::Relaxed) - before, 1, "identical questions coalesced");
    assert!(fw.stats.coalesced.load(Ordering::Relaxed) >= 1);
    assert!(fw.stats.mismatched.load(Ordering::Relaxed) >= 1, "spoofed answers (wrong id) ignored");
    assert!(fw.stats.rebind_blocked.load(Ordering::Relaxed) == 1);
    assert!(fw.stats.cache_hits.load(Ordering::Relaxed) >= 2);
    stop1.store(true, Ordering::Relaxed);
    stop2.store(true, Ordering::Relaxed);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_to_a_dead_upstream_gives_servfail_in_bounded_time() {
    use dhcp_dns::dns::ForwardConfig;
    // A bound socket that never answers: the upstream is "down".
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = DnsServerConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        forward: Some(ForwardConfig { upstreams: vec![silent.local_addr().unwrap()], timeout: Duration::from_millis(200), ..ForwardConfig::default() }),
        ..DnsServerConfig::default()
    };
    let h = start_dns(cfg, test_zone().shared()).await.unwrap();
    let udp = h.udp_addrs[0];
    let t0 = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || udp_ask(udp, &dns_query(31, "www.example.org.", RecordType::A))).await.unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(t0.elapsed() < Duration::from_secs(3));
    drop(silent);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_rate_limit_per_client() {
    use dhcp_dns::dns::RateLimitConfig;
    let cfg = DnsServerConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        rate_limit: Some(RateLimitConfig { queries_per_second: 1, burst: 5 }),
        ..DnsServerConfig::default()
    };
    let h = start_dns(cfg, test_zone().shared()).await.unwrap();
    let udp = h.udp_addrs[0];
    let answered = tokio::task::spawn_blocking(move || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        for i in 0..20u16 {
            s.send_to(&dns_query(i, "api.cluster.test.", RecordType::A), udp).unwrap();
        }
        let mut buf = [0u8; 1500];
        let mut n = 0;
        while s.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    })
    .await
    .unwrap();
    assert!((5..=7).contains(&answered), "answered {answered} of 20 with burst 5");
    assert!(h.transport.rate_limited.load(std::sync::atomic::Ordering::Relaxed) >= 13);
    h.shutdown().await;
}

/// In-process stand-in for the cluster channel: hands each record to the standby's driver and
/// reports success once the standby has it durable.
struct ToStandby {
    input: dhcp_dns::server::ReplicaInput,
    rt: tokio::runtime::Handle,
}

impl dhcp_dns::server::LeaseReplicator for ToStandby {
    fn replicate(&self, record: &LogRecord, done: Box<dyn FnOnce(Result<(), String>) + Send>) {
        let input = self.input.clone();
        let record = record.clone();
        self.rt.spawn(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let ok: dhcp_dns::server::ReplicaDone = Box::new(move |r| {
                let _ = tx.send(r);
            });
            if input.apply(record, Some(ok)).await.is_err() {
                done(Err("standby gone".into()));
                return;
            }
            done(rx.await.unwrap_or_else(|_| Err("standby dropped the record".into())));
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replication_puts_the_lease_and_name_on_the_standby_before_the_ack() {
    use dhcp_dns::server::{Replication, ReplicationMode, start_dhcp_replicated};
    let dir = tempfile::tempdir().unwrap();
    let sid = Ipv4Addr::new(127, 0, 0, 1);
    let giaddr = Ipv4Addr::new(127, 79, 0, 1);
    let core_cfg = || {
        let mut s = Subnet::new("127.79.0.0/16".parse::<Ipv4Net>().unwrap(), sid);
        s.ranges = vec![(Ipv4Addr::new(127, 79, 1, 10), Ipv4Addr::new(127, 79, 1, 20))];
        DhcpConfig { domain: Some("cluster.test".into()), subnets: vec![s], ..DhcpConfig::default() }
    };
    let relay = UdpSocket::bind(SocketAddrV4::new(giaddr, 0)).unwrap();
    relay.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let dcfg = || DhcpDriverConfig { bind: SocketAddrV4::new(sid, 0), relay_port, client_port: relay_port, broadcast: Ipv4Addr::new(127, 255, 255, 255), ..DhcpDriverConfig::default() };

    // Standby: its own log, zone and driver.
    let standby_log = dir.path().join("standby.log");
    let (log, _) = LeaseLog::open(&standby_log).unwrap();
    let standby_commit = Arc::new(GroupCommitter::start(log, CompactionPolicy::default()));
    let standby_zone = test_zone().shared();
    let standby = start_dhcp(vec![dcfg()], DhcpServer::new(core_cfg()), standby_commit.clone(), Some(standby_zone.clone())).await.unwrap();

    // Primary replicates synchronously to it.
    let (log, _) = LeaseLog::open(dir.path().join("primary.log")).unwrap();
    let primary_commit = Arc::new(GroupCommitter::start(log, CompactionPolicy::default()));
    let rep = Replication { sink: Arc::new(ToStandby { input: standby.replica_input(), rt: tokio::runtime::Handle::current() }), mode: ReplicationMode::Sync };
    let primary = start_dhcp_replicated(vec![dcfg()], DhcpServer::new(core_cfg()), primary_commit.clone(), None, Some(rep)).await.unwrap();
    let server = primary.locals[0];

    let sl = standby_log.clone();
    let addr = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1500];
        let mac = [2u8, 0, 0, 0, 7, 7];
        relay.send_to(&relay_request(9, &mac, MessageType::Discover, giaddr, vec![DhcpOption::Hostname("ha-node".into())]), server).unwrap();
        let (n, _) = relay.recv_from(&mut buf).unwrap();
        let a = Message::from_bytes(&buf[..n]).unwrap().yiaddr();
        relay
            .send_to(&relay_request(9, &mac, MessageType::Request, giaddr, vec![
                DhcpOption::Hostname("ha-node".into()),
                DhcpOption::ServerIdentifier(sid),
                DhcpOption::RequestedIpAddress(a),
            ]), server)
            .unwrap();
        let (n, _) = relay.recv_from(&mut buf).unwrap();
        assert_eq!(Message::from_bytes(&buf[..n]).unwrap().opts().msg_type(), Some(MessageType::Ack));
        // Sync mode: the standby had the lease durable before the client saw the ACK.
        assert!(durable_records(&sl).iter().any(|r| matches!(r, LogRecord::Upsert(l) if l.addr == a)));
        a
    })
    .await
    .unwrap();
    // The standby's DNS already answers the name.
    {
        use dhcp_dns::dns::zone::Kind;
        let z = standby_zone.read().unwrap();
        assert_eq!(z.lookup("ha-node.cluster.test", Kind::A).addrs(), vec![std::net::IpAddr::V4(addr)]);
    }
    let p = primary.shutdown().await.unwrap();
    assert_eq!(p.counters().acks, 1);
    let s = standby.shutdown().await.unwrap();
    assert!(s.leases().get(addr).is_some_and(|l| l.fqdn.as_deref() == Some("ha-node.cluster.test")));
}

/// Says "in use" for the first `busy` addresses it is asked about, then "free".
struct FirstBusy {
    busy: std::sync::Mutex<usize>,
    asked: std::sync::Mutex<Vec<Ipv4Addr>>,
}

impl dhcp_dns::server::AddressProber for FirstBusy {
    fn probe(&self, addr: Ipv4Addr) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<bool>> + Send>> {
        self.asked.lock().unwrap().push(addr);
        let mut b = self.busy.lock().unwrap();
        let in_use = *b > 0;
        *b = b.saturating_sub(1);
        Box::pin(async move { Ok(in_use) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_probe_skips_an_address_in_use_without_stalling() {
    use dhcp_dns::server::{DriverExtras, start_dhcp_with};
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = LeaseLog::open(dir.path().join("l.log")).unwrap();
    let committer = Arc::new(GroupCommitter::start(log, CompactionPolicy::default()));
    let sid = Ipv4Addr::new(127, 0, 0, 1);
    let giaddr = Ipv4Addr::new(127, 81, 0, 1);
    let mut s = Subnet::new("127.81.0.0/16".parse::<Ipv4Net>().unwrap(), sid);
    s.ranges = vec![(Ipv4Addr::new(127, 81, 1, 10), Ipv4Addr::new(127, 81, 1, 20))];
    let core = DhcpServer::new(DhcpConfig { subnets: vec![s], conflict_check: true, ..DhcpConfig::default() });
    let relay = UdpSocket::bind(SocketAddrV4::new(giaddr, 0)).unwrap();
    relay.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = relay.local_addr().unwrap().port();
    let prober = Arc::new(FirstBusy { busy: std::sync::Mutex::new(1), asked: std::sync::Mutex::new(Vec::new()) });
    let h = start_dhcp_with(
        vec![DhcpDriverConfig { bind: SocketAddrV4::new(sid, 0), relay_port: port, client_port: port, broadcast: Ipv4Addr::new(127, 255, 255, 255), ..DhcpDriverConfig::default() }],
        core,
        committer,
        None,
        DriverExtras { replication: None, prober: Some(prober.clone()), follow_vip: None },
    )
    .await
    .unwrap();
    let server = h.locals[0];
    let offered = tokio::task::spawn_blocking(move || {
        relay.send_to(&relay_request(1, &[2, 0, 0, 0, 9, 9], MessageType::Discover, giaddr, vec![]), server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = relay.recv_from(&mut buf).unwrap();
        Message::from_bytes(&buf[..n]).unwrap().yiaddr()
    })
    .await
    .unwrap();
    let asked = prober.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "first address busy, second probed free: {asked:?}");
    assert_eq!(offered, asked[1]);
    assert_ne!(asked[0], asked[1]);
    let core = h.shutdown().await.unwrap();
    assert_eq!(core.counters().conflicts, 1);
}

#[tokio::test]
async fn icmp_prober_sees_a_live_loopback_address() {
    use dhcp_dns::server::{AddressProber, IcmpProber};
    if effective_uid() != 0 {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true: this test needs root (raw ICMP socket)");
        eprintln!("SKIP icmp_prober_sees_a_live_loopback_address: needs root");
        return;
    }
    let p = IcmpProber { timeout: Duration::from_secs(2) };
    assert!(p.probe(Ipv4Addr::LOCALHOST).await.unwrap(), "127.0.0.1 answers echo requests");
}

fn effective_uid() -> u32 {
    // Read from /proc to avoid a libc dependency in the test.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}
