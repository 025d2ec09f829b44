//! The UDP DNS loop allocates nothing per query once warm: local A and PTR answers, NXDOMAIN
//! with the SOA, and cached forwarded answers (served in wire form by the loop itself, never the
//! slow path) are all written into the loop's preallocated buffers. A counting global allocator sees every allocation of every thread
//! of this test binary while a burst of queries is answered.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dhcp_dns::dns::forward::{CacheKey, ForwardConfig};
use dhcp_dns::dns::udp::{SlowPath, UdpLoop, UdpLoopStats, serve};
use dhcp_dns::dns::{AnswerStats, Zone, ZoneConfig};
use dhcp_dns::server::{DnsTransportStats, Forwarder};
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

#[test]
fn udp_loop_answers_without_allocating_per_query() {
    let mut c = ZoneConfig::new("cluster.test");
    c.reverse_networks = vec!["198.18.0.0/16".parse().unwrap()];
    let mut z = Zone::new(c);
    for i in 0..100u8 {
        z.add_host(&format!("host-{i}.cluster.test"), std::net::IpAddr::from([198, 18, 0, i + 1]));
    }
    // A forwarded answer in the forwarder's cache: the loop serves it itself, in wire form.
    let fwd_state = Arc::new(Forwarder::new(ForwardConfig::default()));
    let fwd = Name::from_ascii("www.example.org.").unwrap();
    let mut resp = Message::response(1, OpCode::Query);
    resp.add_query(Query::query(fwd.clone(), RecordType::A));
    resp.add_answer(Record::from_rdata(fwd, 300, RData::A(A("192.0.2.1".parse().unwrap()))));
    let req = Message::from_vec(&query(1, "www.example.org.", RecordType::A)).unwrap();
    fwd_state.cache().lock().unwrap().insert(CacheKey::of(&req).unwrap(), &resp, Instant::now());

    let zone = z.shared();
    let stats = Arc::new(AnswerStats::default());
    // Every query here is plain: none may reach the slow path.
    let slow_calls = Arc::new(AtomicU64::new(0));
    let sc = slow_calls.clone();
    let slow: SlowPath = Box::new(move |_q: &[u8], _peer, _out: &mut Vec<u8>| {
        sc.fetch_add(1, Ordering::Relaxed);
        false
    });
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let addr = sock.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let loop_stats = Arc::new(UdpLoopStats::default());
    let cfg = UdpLoop {
        sock,
        zone,
        stats: stats.clone(),
        limiter: None,
        loop_stats: loop_stats.clone(),
        transport: Arc::new(DnsTransportStats::default()),
        stop: stop.clone(),
        coalesce: Duration::from_micros(100),
        forwarder: Some(fwd_state.clone()),
    };
    let th = std::thread::spawn(move || serve(cfg, slow));

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let queries: Vec<Vec<u8>> = (0..400u16)
        .map(|i| match i % 4 {
            0 => query(i, &format!("host-{}.cluster.test.", i % 100), RecordType::A),
            1 => query(i, &format!("{}.0.18.198.in-addr.arpa.", i % 100 + 1), RecordType::PTR),
            2 => query(i, &format!("nx-{i}.cluster.test."), RecordType::A),
            _ => query(i, "www.example.org.", RecordType::A),
        })
        .collect();
    let mut buf = [0u8; 1500];
    let mut burst = |kind: usize| {
        for chunk in queries.chunks(40) {
            for q in chunk.iter().filter(|q| usize::from(u16::from_be_bytes([q[0], q[1]])) % 4 == kind) {
                client.send_to(q, addr).unwrap();
            }
            for _ in 0..10 {
                let n = client.recv(&mut buf).unwrap_or_else(|e| panic!("kind {kind}: no answer: {e}"));
                assert!(n > 12 && buf[2] & 0x80 != 0, "kind {kind}: not a response");
                let rcode = buf[3] & 0x0f;
                assert!(rcode == 0 || rcode == 3, "kind {kind}: rcode {rcode}");
            }
        }
    };
    let mut counts = Vec::new();
    for kind in 0..4 {
        // Warm-up: buffers grow to their working size.
        burst(kind);
        let before = ALLOCS.load(Ordering::Relaxed);
        burst(kind);
        counts.push(ALLOCS.load(Ordering::Relaxed) - before);
    }
    stop.store(true, Ordering::Relaxed);
    th.join().unwrap();
    assert_eq!(loop_stats.received.load(Ordering::Relaxed), 800);
    assert_eq!(counts, [0, 0, 0, 0], "allocations per 100 queries: A, PTR, NXDOMAIN, cached forward");
    assert_eq!(slow_calls.load(Ordering::Relaxed), 0, "the loop answered every query itself");
    assert_eq!(fwd_state.stats.cache_hits.load(Ordering::Relaxed), 200);
}
