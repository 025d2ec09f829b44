//! The UDP DNS loop with batched system calls: one OS thread per socket takes up to [`BATCH`]
//! queries with one `recvmmsg`, answers them, and sends every answer with one `sendmmsg`. Plain
//! queries are answered from the zone straight into preallocated buffers (no allocation per
//! packet); the rest go to a caller-supplied slow path (general answerer, cache, forwarding).
//!
//! Lifecycle: `waiting` (a blocking `recvmmsg` with `MSG_WAITFORONE`: it sleeps until a datagram
//! arrives, then takes what is queued, up to a batch; a receive timeout of [`STOP_CHECK`] lets
//! it notice a stop) → `answering` (zone read lock held once per batch for the fast path; released
//! before the slow path, which may take it again) → `sending` (`sendmmsg`; a datagram the kernel
//! refuses is counted and skipped, never retried in a loop) → `waiting`. Two system calls per
//! batch, however many queries it holds. A set stop flag ends the loop at the next wake-up.
//!
//! Coalescing (`UdpLoop::coalesce`, like a NIC's interrupt moderation): while queries keep
//! arriving (the last wake-up took more than one, or came within two windows of the one before),
//! the loop sleeps out the rest of a short window after answering instead of blocking at once, so
//! the queries that arrive meanwhile cost one wake-up and two system calls together rather than
//! a wake-up each. Light traffic (a query now and then) never waits; under load an answer waits at
//! most one window. A full batch never waits.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::answer::{AnswerStats, Transport};
use super::fast::{WireAnswer, answer_wire_into};
use super::ratelimit::RateLimiter;
use super::zone::SharedZone;
use crate::server::{DnsTransportStats, Forwarder};

/// Most datagrams taken and answered per system call.
pub const BATCH: usize = 64;
/// Largest query accepted (bigger ones are truncated by the kernel and dropped).
const RX_SIZE: usize = 4096;
/// Receive buffer asked for each socket.
const RCVBUF: usize = 4 << 20;
/// How often a waiting loop checks its stop flag.
pub const STOP_CHECK: Duration = Duration::from_millis(100);

/// The slow path: writes a response into `out` and returns `true`, or returns `false` when
/// nothing is to be sent now (dropped, or handed to a task that sends the answer itself).
pub type SlowPath = Box<dyn FnMut(&[u8], SocketAddr, &mut Vec<u8>) -> bool + Send>;

/// Counters of the loop (beside the answer counters in [`AnswerStats`]).
#[derive(Debug, Default)]
pub struct UdpLoopStats {
    /// `recvmmsg` calls that returned datagrams.
    pub batches: AtomicU64,
    /// Datagrams received.
    pub received: AtomicU64,
    /// Oversized or unreadable datagrams dropped.
    pub dropped: AtomicU64,
    /// Coalescing waits taken (the loop slept out a window before receiving again).
    pub coalesced_waits: AtomicU64,
    /// Wake-ups by how many datagrams one `recvmmsg` took: 1, 2–3, 4–7, 8–15, 16–31, 32–63,
    /// 64 (a full batch). Says whether the loop is paying a wake-up per query or per batch.
    pub batch_sizes: [AtomicU64; 7],
}

impl UdpLoopStats {
    /// Count one wake-up that took `n` (≥ 1) datagrams.
    fn record_batch(&self, n: usize) {
        let bucket = (usize::BITS - 1 - n.max(1).leading_zeros()) as usize;
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        self.batch_sizes[bucket.min(6)].fetch_add(1, Ordering::Relaxed);
    }

    /// The batch-size histogram as plain numbers (see [`UdpLoopStats::batch_sizes`]).
    pub fn batch_histogram(&self) -> [u64; 7] {
        std::array::from_fn(|i| self.batch_sizes[i].load(Ordering::Relaxed))
    }
}

/// What one UDP loop serves from. The loop makes the socket blocking (with a receive timeout);
/// others sending on it must use [`send_late`].
pub struct UdpLoop {
    /// The socket (non-blocking; shared with forwarding tasks that send late answers on it).
    pub sock: Arc<std::net::UdpSocket>,
    /// The zone.
    pub zone: SharedZone,
    /// Answer counters.
    pub stats: Arc<AnswerStats>,
    /// Per-client rate limit, when configured.
    pub limiter: Option<Arc<Mutex<RateLimiter>>>,
    /// Loop counters.
    pub loop_stats: Arc<UdpLoopStats>,
    /// Transport counters shared with the TCP side (send errors, rate-limited queries).
    pub transport: Arc<DnsTransportStats>,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
    /// Coalescing window under load (zero: off): see the module docs.
    pub coalesce: Duration,
    /// The forwarder, when forwarding is on: its cached answers are served by the loop itself
    /// in wire form ([`answer_wire_into`]), like local ones.
    pub forwarder: Option<Arc<Forwarder>>,
}

/// Buffers and kernel message headers for one batch, allocated once. The headers point into the
/// buffers, so this lives in a `Box` and is never moved after [`Batch::new`].
struct Batch {
    rx: Vec<[u8; RX_SIZE]>,
    names: Vec<libc::sockaddr_storage>,
    rx_iov: Vec<libc::iovec>,
    rx_hdr: Vec<libc::mmsghdr>,
    tx: Vec<Vec<u8>>,
    tx_iov: Vec<libc::iovec>,
    tx_hdr: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside the headers point only into this struct's own heap buffers,
// which move with it between threads.
unsafe impl Send for Batch {}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs; all-zero is valid.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let zero_iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let mut b = Box::new(Batch {
            rx: vec![[0u8; RX_SIZE]; BATCH],
            names: vec![zero_name; BATCH],
            rx_iov: vec![zero_iov; BATCH],
            rx_hdr: vec![zero_hdr; BATCH],
            tx: (0..BATCH).map(|_| Vec::with_capacity(1536)).collect(),
            tx_iov: vec![zero_iov; BATCH],
            tx_hdr: vec![zero_hdr; BATCH],
        });
        for i in 0..BATCH {
            b.rx_iov[i] = libc::iovec { iov_base: b.rx[i].as_mut_ptr().cast(), iov_len: RX_SIZE };
        }
        b
    }

    /// Re-arm the receive headers (the kernel overwrites lengths and flags).
    fn arm_rx(&mut self) {
        for i in 0..BATCH {
            let h = &mut self.rx_hdr[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.rx_iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.rx_hdr[i].msg_len = 0;
        }
    }
}

/// The peer address in a received header.
fn peer_of(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family AF_INET and length checked: the storage holds a sockaddr_in.
            let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(u32::from_be(a.sin_addr.s_addr).into(), u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family AF_INET6 and length checked: the storage holds a sockaddr_in6.
            let a = unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(a.sin6_addr.s6_addr.into(), u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Send a late answer (from a forwarding task) on a loop's socket without ever blocking: the
/// loop keeps the socket blocking for its own receives.
pub fn send_late(sock: &std::net::UdpSocket, buf: &[u8], peer: SocketAddr) -> io::Result<usize> {
    socket2::SockRef::from(sock).send_to_with_flags(buf, &peer.into(), libc::MSG_DONTWAIT)
}

/// Run the loop on the calling thread until `stop` is set. Errors other than a closed socket
/// are logged and the loop goes on.
pub fn serve(cfg: UdpLoop, mut slow: SlowPath) {
    let fd = cfg.sock.as_raw_fd();
    let mut b = Batch::new();
    // Indices of queries the fast path declined, and which tx slot got which query.
    let mut declined: Vec<usize> = Vec::with_capacity(BATCH);
    let mut reply_of: Vec<usize> = Vec::with_capacity(BATCH);
    let mut allowed = [true; BATCH];
    // One blocking recvmmsg per wake-up (MSG_WAITFORONE: sleep until a datagram arrives, then take
    // what is queued without waiting for more); the receive timeout lets the loop see `stop`.
    if let Err(e) = cfg.sock.set_nonblocking(false).and_then(|_| cfg.sock.set_read_timeout(Some(STOP_CHECK))) {
        tracing::error!(error = %e, "dns udp socket setup; loop not started");
        return;
    }
    // A deeper receive queue absorbs bursts while this thread waits for the CPU (best effort: the
    // kernel caps it at net.core.rmem_max).
    let _ = socket2::SockRef::from(&*cfg.sock).set_recv_buffer_size(RCVBUF);
    let mut last_wake: Option<Instant> = None;
    while !cfg.stop.load(Ordering::Relaxed) {
        b.arm_rx();
        // SAFETY: rx_hdr holds BATCH armed headers pointing into b's buffers, alive and unmoved.
        let n = unsafe { libc::recvmmsg(fd, b.rx_hdr.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if n <= 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {}
                // ICMP errors from earlier sends surface here on Linux; keep serving.
                _ => tracing::debug!(error = %e, "dns udp recvmmsg"),
            }
            continue;
        }
        let n = n as usize;
        let woke = Instant::now();
        cfg.loop_stats.record_batch(n);
        declined.clear();
        reply_of.clear();
        if let Some(l) = &cfg.limiter {
            let now = woke;
            let mut l = l.lock().unwrap_or_else(|p| p.into_inner());
            for i in 0..n {
                let peer = peer_of(&b.names[i], b.rx_hdr[i].msg_hdr.msg_namelen);
                allowed[i] = peer.is_some_and(|p| l.allow(p.ip(), now));
                if !allowed[i] {
                    cfg.transport.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            allowed[..n].fill(true);
        }
        // Fast path (zone, then cached forwards) with the zone read lock taken once per batch.
        {
            let cache = cfg.forwarder.as_deref().map(|f| &f.cache);
            let mut hits = 0u64;
            let zone = cfg.zone.read().ok();
            for i in 0..n {
                if !allowed[i] {
                    continue;
                }
                let len = b.rx_hdr[i].msg_len as usize;
                if b.rx_hdr[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > RX_SIZE {
                    cfg.loop_stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let slot = reply_of.len();
                let answered = match &zone {
                    Some(z) => answer_wire_into(z, cache, &b.rx[i][..len], Transport::Udp, &cfg.stats, woke, &mut b.tx[slot]),
                    None => WireAnswer::Declined,
                };
                match answered {
                    WireAnswer::Local => reply_of.push(i),
                    WireAnswer::Cached => {
                        hits += 1;
                        reply_of.push(i);
                    }
                    WireAnswer::Declined => declined.push(i),
                }
            }
            if let (Some(f), true) = (&cfg.forwarder, hits > 0) {
                f.stats.cache_hits.fetch_add(hits, Ordering::Relaxed);
            }
        }
        for &i in &declined {
            let len = b.rx_hdr[i].msg_len as usize;
            let Some(peer) = peer_of(&b.names[i], b.rx_hdr[i].msg_hdr.msg_namelen) else {
                cfg.loop_stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let slot = reply_of.len();
            b.tx[slot].clear();
            if slow(&b.rx[i][..len], peer, &mut b.tx[slot]) {
                reply_of.push(i);
            }
        }
        send_all(fd, &mut b, &reply_of, &cfg.transport);
        if let Some(wait) = coalesce_wait(cfg.coalesce, n, woke, last_wake, Instant::now()) {
            cfg.loop_stats.coalesced_waits.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait);
        }
        last_wake = Some(woke);
    }
    let st = &cfg.loop_stats;
    tracing::info!(
        batches = st.batches.load(Ordering::Relaxed),
        received = st.received.load(Ordering::Relaxed),
        coalesced_waits = st.coalesced_waits.load(Ordering::Relaxed),
        batch_sizes = ?st.batch_histogram(),
        "dns udp loop stopped (batch sizes: 1, 2-3, 4-7, 8-15, 16-31, 32-63, 64)"
    );
}

/// How long to wait before the next receive: the rest of the window opened at `woke`, when the
/// loop is under load (`n` > 1 queries taken, or this wake-up came within two windows of the
/// previous one) and the batch was not full. `None`: receive (and block) at once.
fn coalesce_wait(window: Duration, n: usize, woke: Instant, prev: Option<Instant>, now: Instant) -> Option<Duration> {
    if window.is_zero() || n >= BATCH {
        return None;
    }
    let busy = n > 1 || prev.is_some_and(|p| woke.saturating_duration_since(p) < window * 2);
    if !busy {
        return None;
    }
    let rest = (woke + window).saturating_duration_since(now);
    (!rest.is_zero()).then_some(rest)
}

/// Send the answers in tx slots `0..reply_of.len()` to the peers of the queries `reply_of[slot]`.
fn send_all(fd: i32, b: &mut Batch, reply_of: &[usize], stats: &DnsTransportStats) {
    let m = reply_of.len();
    for (slot, &i) in reply_of.iter().enumerate() {
        b.tx_iov[slot] = libc::iovec { iov_base: b.tx[slot].as_mut_ptr().cast(), iov_len: b.tx[slot].len() };
        let h = &mut b.tx_hdr[slot].msg_hdr;
        h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = b.rx_hdr[i].msg_hdr.msg_namelen;
        h.msg_iov = &mut b.tx_iov[slot];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }
    let mut done = 0;
    while done < m {
        // SAFETY: tx_hdr[done..m] are filled headers pointing into b's live buffers.
        let rc = unsafe { libc::sendmmsg(fd, b.tx_hdr[done..].as_mut_ptr(), (m - done) as libc::c_uint, libc::MSG_DONTWAIT) };
        if rc <= 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first unsent datagram failed (buffer full, peer unreachable): skip it.
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
            tracing::trace!(error = %e, "dns udp sendmmsg");
            done += 1;
        } else {
            done += rc as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::zone::{Zone, ZoneConfig};
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[test]
    fn answers_a_burst_in_batches_and_hands_the_rest_to_the_slow_path() {
        let mut z = Zone::new(ZoneConfig::new("cluster.test"));
        z.add_host("api.cluster.test", "198.18.0.10".parse().unwrap());
        let sock = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let loop_stats = Arc::new(UdpLoopStats::default());
        let cfg = UdpLoop {
            sock,
            zone: z.shared(),
            stats: Arc::new(AnswerStats::default()),
            limiter: None,
            loop_stats: loop_stats.clone(),
            transport: Arc::new(DnsTransportStats::default()),
            stop: stop.clone(),
            coalesce: Duration::from_micros(200),
            forwarder: None,
        };
        // The slow path answers "other." with a fixed marker and drops everything else.
        let slow: SlowPath = Box::new(|q: &[u8], _peer, out: &mut Vec<u8>| {
            if Message::from_vec(q).is_ok_and(|m| m.queries[0].name().to_ascii() == "other.") {
                out.extend_from_slice(&q[..2]);
                out.extend_from_slice(b"slow");
                true
            } else {
                false
            }
        });
        let th = std::thread::spawn(move || serve(cfg, slow));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // More than one batch in flight at once.
        let total = 3 * BATCH as u16;
        for id in 0..total {
            let name = match id % 3 {
                0 | 1 => "api.cluster.test.",
                _ => "other.",
            };
            client.send_to(&query(id, name), addr).unwrap();
        }
        let mut seen = vec![false; total as usize];
        let mut buf = [0u8; 1500];
        for _ in 0..total {
            let n = client.recv(&mut buf).expect("every query answered");
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            if id % 3 == 2 {
                assert_eq!(&buf[2..n], b"slow");
            } else {
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(m.answers.len(), 1, "id {id}");
            }
            assert!(!seen[id as usize], "duplicate answer {id}");
            seen[id as usize] = true;
        }
        // A datagram the slow path drops gets no answer; a malformed one neither, no panic.
        client.send_to(&query(9999, "dropped."), addr).unwrap();
        client.send_to(&[1, 2, 3], addr).unwrap();
        client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        assert!(client.recv(&mut buf).is_err());
        stop.store(true, Ordering::Relaxed);
        th.join().unwrap();
        assert_eq!(loop_stats.received.load(Ordering::Relaxed), u64::from(total) + 2);
        assert!(loop_stats.batches.load(Ordering::Relaxed) <= u64::from(total) + 2);
    }

    #[test]
    fn batch_sizes_fall_in_power_of_two_buckets() {
        let st = UdpLoopStats::default();
        for n in [1, 2, 3, 4, 7, 8, 16, 31, 32, 63, 64] {
            st.record_batch(n);
        }
        assert_eq!(st.batch_histogram(), [1, 2, 2, 1, 2, 2, 1]);
        assert_eq!(st.batches.load(Ordering::Relaxed), 11);
        assert_eq!(st.received.load(Ordering::Relaxed), 231);
    }

    #[test]
    fn coalescing_waits_only_under_load_and_at_most_one_window() {
        let w = Duration::from_micros(100);
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        // Off, or a full batch: never wait.
        assert_eq!(coalesce_wait(Duration::ZERO, 5, at(0), Some(at(0)), at(1)), None);
        assert_eq!(coalesce_wait(w, BATCH, at(1000), Some(at(990)), at(1001)), None);
        // A lone query after a quiet spell: answered and back to blocking at once.
        assert_eq!(coalesce_wait(w, 1, at(1000), None, at(1010)), None);
        assert_eq!(coalesce_wait(w, 1, at(1000), Some(at(500)), at(1010)), None);
        // Several queries in one wake-up, or wake-ups close together: wait out the window.
        assert_eq!(coalesce_wait(w, 3, at(1000), None, at(1010)), Some(Duration::from_micros(90)));
        assert_eq!(coalesce_wait(w, 1, at(1000), Some(at(850)), at(1030)), Some(Duration::from_micros(70)));
        // Answering took the whole window already: no wait.
        assert_eq!(coalesce_wait(w, 3, at(1000), None, at(1200)), None);
    }

    #[test]
    fn coalescing_loop_answers_a_steady_stream_in_fewer_wake_ups() {
        let mut z = Zone::new(ZoneConfig::new("cluster.test"));
        z.add_host("api.cluster.test", "198.18.0.10".parse().unwrap());
        let sock = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let loop_stats = Arc::new(UdpLoopStats::default());
        let cfg = UdpLoop {
            sock,
            zone: z.shared(),
            stats: Arc::new(AnswerStats::default()),
            limiter: None,
            loop_stats: loop_stats.clone(),
            transport: Arc::new(DnsTransportStats::default()),
            stop: stop.clone(),
            coalesce: Duration::from_millis(2),
            forwarder: None,
        };
        let th = std::thread::spawn(move || serve(cfg, Box::new(|_: &[u8], _, _: &mut Vec<u8>| false)));
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Pairs of queries 200 µs apart: far more often than one per window, so the loop coalesces.
        let total = 40u16;
        for id in 0..total {
            client.send_to(&query(id, "api.cluster.test."), addr).unwrap();
            if id % 2 == 1 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let mut buf = [0u8; 1500];
        for _ in 0..total {
            client.recv(&mut buf).expect("every query answered");
        }
        stop.store(true, Ordering::Relaxed);
        th.join().unwrap();
        let batches = loop_stats.batches.load(Ordering::Relaxed);
        assert!(loop_stats.coalesced_waits.load(Ordering::Relaxed) > 0);
        assert!(batches < u64::from(total) / 2, "{batches} wake-ups for {total} queries");
    }
}
