//! Thin tokio drivers for the DHCP core and the DNS answerer.
//!
//! # DHCP driver lifecycle
//! One OS thread with a current-thread runtime owns the core and the sockets, so socket
//! wake-ups, the core and commit completions never hop between threads per packet.
//! `receiving` — when a socket is readable, everything it has queued (up to a batch) is read
//! into one reused buffer and each datagram goes to [`DhcpServer::handle_packet`] with the
//! wall-clock `now`;
//! each [`Action`] is applied: `Reply` is sent at once, `LeaseChanged` updates the zone at once,
//! `PersistLease` goes to the [`GroupCommitter`] (and, with replication, to the peers) and its
//! reply is `held` until the record is durable (and, in sync mode, the peers answered), then
//! `sent`. The records persisted during one turn (a batch of requests) go to the committer as one
//! group, so a burst costs one `fdatasync` per batch. `Probe` runs a conflict check in its own task: free → the offer is sent; in use →
//! [`DhcpServer::conflict_detected`] and the same DISCOVER is handled again (at most
//! `MAX_PROBES` times). Records from peers enter through [`ReplicaInput`]. A timer drives
//! [`DhcpServer::handle_timeout`] and publishes [`DhcpStatus`]. On shutdown the loop stops
//! receiving and waits for held replies and probes to finish.
//!
//! # DNS servers
//! UDP: one thread per socket running the batched loop of [`crate::dns::udp`] (several
//! `SO_REUSEPORT` sockets spread load over cores).
//! TCP: [`default_tcp_threads`] threads (one per core), each a current-thread runtime accepting
//! from the shared listener; one task per connection on the thread that accepted it (no process
//! per connection), RFC 7766
//! length framing; every query already received is answered (in order) into one buffer that
//! leaves in one write; an idle timeout and a connection cap.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::dhcp::{Action, DhcpServer, RecvMeta, Reply, ReplyTarget};
use crate::dns::answer::forwarded_response;
use crate::dns::forward::{CacheKey, has_rebind_answer, matches_query};
use crate::dns::zone::norm;
use crate::dns::{AnswerStats, DnsCache, ForwardConfig, Outcome, RateLimitConfig, RateLimiter, SharedZone, Transport, answer_or_forward};
use hickory_proto::op::{Edns, Message as DnsMessage, ResponseCode};
use crate::leases::{GroupCommitter, LogRecord, UnixTime};

/// Wall-clock seconds since the Unix epoch.
pub fn unix_now() -> UnixTime {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bind_udp(addr: SocketAddr, reuse_port: bool, device: Option<&str>, broadcast: bool) -> io::Result<UdpSocket> {
    UdpSocket::from_std(bind_udp_std(addr, reuse_port, device, broadcast)?)
}

/// A bound non-blocking UDP socket, not yet registered with a runtime.
fn bind_udp_std(addr: SocketAddr, reuse_port: bool, device: Option<&str>, broadcast: bool) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if broadcast {
        s.set_broadcast(true)?;
    }
    if let Some(dev) = device {
        s.bind_device(Some(dev.as_bytes()))?;
    }
    freebind(&s, addr)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A listener on a specific address may bind before the address exists (a VIP that arrives
/// later with a failover), as with `ip_nonlocal_bind`; replies then leave from that address.
fn freebind(s: &Socket, addr: SocketAddr) -> io::Result<()> {
    match addr {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => s.set_freebind_v4(true),
        SocketAddr::V6(a) if !a.ip().is_unspecified() => s.set_freebind_v6(true),
        _ => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------------
// DNS

/// Where and how the DNS server listens.
#[derive(Debug, Clone)]
pub struct DnsServerConfig {
    /// UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// UDP sockets per address (SO_REUSEPORT), to use several cores.
    pub udp_sockets_per_addr: usize,
    /// Coalescing window of the UDP loop under load (zero: off; see [`crate::dns::udp`]).
    pub udp_coalesce: Duration,
    /// Close a TCP connection idle this long (RFC 7766 §6.2.3).
    pub tcp_idle: Duration,
    /// Most concurrent TCP connections; more are closed at accept.
    pub tcp_max_connections: usize,
    /// Threads serving TCP, each with its own current-thread runtime (None: one per core this
    /// process may run on, see [`default_tcp_threads`]).
    pub tcp_threads: Option<usize>,
    /// SO_BINDTODEVICE for every socket.
    pub device: Option<String>,
    /// Forward names outside our zones (None: answer REFUSED).
    pub forward: Option<ForwardConfig>,
    /// Per-client UDP rate limit (None: unlimited).
    pub rate_limit: Option<RateLimitConfig>,
}

impl Default for DnsServerConfig {
    fn default() -> Self {
        DnsServerConfig {
            udp: Vec::new(),
            tcp: Vec::new(),
            udp_sockets_per_addr: 1,
            udp_coalesce: DEFAULT_UDP_COALESCE,
            tcp_idle: Duration::from_secs(10),
            tcp_max_connections: 4096,
            tcp_threads: None,
            device: None,
            forward: None,
            rate_limit: None,
        }
    }
}

/// Default coalescing window of the UDP loop: off. Measured (docs/bench/dhcp-dns.md, session 4):
/// under dnsperf load the loop's `recvmmsg` batches are already mostly full without it (no CPU
/// saved per query), while a client asking one query after another waited a window per query
/// (57 µs → 179 µs round trip with 100us).
pub const DEFAULT_UDP_COALESCE: Duration = Duration::ZERO;

/// Counters of the DNS transport layer.
#[derive(Debug, Default)]
pub struct DnsTransportStats {
    /// TCP connections accepted.
    pub tcp_accepted: AtomicU64,
    /// TCP connections refused over the cap.
    pub tcp_rejected: AtomicU64,
    /// TCP connections closed for idleness.
    pub tcp_idle_closed: AtomicU64,
    /// Send errors.
    pub send_errors: AtomicU64,
    /// UDP queries dropped by the per-client rate limit.
    pub rate_limited: AtomicU64,
}

/// A running DNS server.
pub struct DnsHandle {
    /// Bound UDP addresses (port 0 resolved).
    pub udp_addrs: Vec<SocketAddr>,
    /// Bound TCP addresses.
    pub tcp_addrs: Vec<SocketAddr>,
    /// Answer counters.
    pub stats: Arc<AnswerStats>,
    /// Transport counters.
    pub transport: Arc<DnsTransportStats>,
    /// The forwarder, when forwarding is configured.
    pub forwarder: Option<Arc<Forwarder>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsHandle {
    /// Stop all listeners and connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Bind and start the DNS server answering from `zone`.
pub async fn start_dns(cfg: DnsServerConfig, zone: SharedZone) -> io::Result<DnsHandle> {
    let stats = Arc::new(AnswerStats::default());
    let transport = Arc::new(DnsTransportStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut udp_addrs = Vec::new();
    let mut tcp_addrs = Vec::new();
    let forwarder = cfg.forward.clone().map(|f| Arc::new(Forwarder::new(f)));
    let limiter = cfg.rate_limit.map(|r| Arc::new(std::sync::Mutex::new(RateLimiter::new(r, 65_536))));
    for addr in &cfg.udp {
        let n = cfg.udp_sockets_per_addr.max(1);
        let first = bind_udp(*addr, n > 1, cfg.device.as_deref(), false)?;
        let bound = first.local_addr()?;
        udp_addrs.push(bound);
        let mut socks = vec![first];
        for _ in 1..n {
            socks.push(bind_udp(bound, true, cfg.device.as_deref(), false)?);
        }
        for s in socks {
            let ctx = DnsCtx { zone: zone.clone(), stats: stats.clone(), transport: transport.clone(), forwarder: forwarder.clone() };
            tasks.push(dns_udp_loop(s, ctx, limiter.clone(), cfg.udp_coalesce, stop_rx.clone())?);
        }
    }
    let tcp_threads = cfg.tcp_threads.unwrap_or_else(default_tcp_threads).max(1);
    let live = Arc::new(AtomicUsize::new(0));
    for addr in &cfg.tcp {
        let s = Socket::new(Domain::for_address(*addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if let Some(dev) = &cfg.device {
            s.bind_device(Some(dev.as_bytes()))?;
        }
        freebind(&s, *addr)?;
        s.set_nonblocking(true)?;
        s.bind(&(*addr).into())?;
        s.listen(1024)?;
        let l: std::net::TcpListener = s.into();
        tcp_addrs.push(l.local_addr()?);
        // Every TCP thread accepts from the same listening socket (no SO_REUSEPORT: a second
        // server on the same port still fails to bind instead of silently sharing it).
        for _ in 0..tcp_threads {
            let ctx = DnsCtx { zone: zone.clone(), stats: stats.clone(), transport: transport.clone(), forwarder: forwarder.clone() };
            tasks.push(dns_tcp_thread(l.try_clone()?, ctx, cfg.clone(), live.clone(), stop_rx.clone())?);
        }
    }
    Ok(DnsHandle { udp_addrs, tcp_addrs, stats, transport, forwarder, stop, tasks })
}

/// What every DNS task shares.
#[derive(Clone)]
struct DnsCtx {
    zone: SharedZone,
    stats: Arc<AnswerStats>,
    transport: Arc<DnsTransportStats>,
    forwarder: Option<Arc<Forwarder>>,
}

impl DnsCtx {
    /// Answer from the zone; `Err` carries a query to forward.
    fn local(&self, q: &[u8], t: Transport) -> Result<Option<Vec<u8>>, Box<DnsMessage>> {
        let out = match self.zone.read() {
            Ok(z) => answer_or_forward(&z, q, t, &self.stats),
            Err(_) => return Ok(None),
        };
        match out {
            Outcome::Respond(b) => Ok(Some(b)),
            Outcome::Drop => Ok(None),
            Outcome::Forward(req) => match &self.forwarder {
                Some(f) => match f.cached_response(&req, t, &self.stats) {
                    Some(b) => Ok(Some(b)),
                    None => Err(req),
                },
                None => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    Ok(forwarded_response(&req, ResponseCode::Refused, Vec::new(), Vec::new(), t, &self.stats))
                }
            },
        }
    }
}

/// Start the batched UDP loop ([`crate::dns::udp`]) for `sock` on its own thread: plain queries
/// are answered there without allocating; the rest go through [`DnsCtx::local`], and forwarded
/// ones run on the runtime and send their answer themselves. The returned task stops and joins
/// the thread when `stop` fires.
fn dns_udp_loop(
    sock: UdpSocket,
    ctx: DnsCtx,
    limiter: Option<Arc<std::sync::Mutex<RateLimiter>>>,
    coalesce: Duration,
    mut stop: watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    let sock = Arc::new(sock.into_std()?);
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Handle::current();
    let (slow_ctx, slow_sock) = (ctx.clone(), sock.clone());
    // Plain local and cached queries never get here: the loop answers them itself.
    let slow: crate::dns::udp::SlowPath = Box::new(move |q, peer, out| {
        match slow_ctx.local(q, Transport::Udp) {
            Ok(Some(r)) => {
                out.extend_from_slice(&r);
                true
            }
            Ok(None) => false,
            Err(req) => {
                // Forwarded queries run concurrently; the loop keeps answering local names.
                let (sock, ctx) = (slow_sock.clone(), slow_ctx.clone());
                rt.spawn(async move {
                    let Some(f) = &ctx.forwarder else { return };
                    if let Some(r) = f.resolve(&req, Transport::Udp, &ctx.stats).await {
                        if crate::dns::udp::send_late(&sock, &r, peer).is_err() {
                            ctx.transport.send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                false
            }
        }
    });
    let cfg = crate::dns::udp::UdpLoop {
        sock,
        zone: ctx.zone.clone(),
        stats: ctx.stats.clone(),
        limiter,
        loop_stats: Arc::default(),
        transport: ctx.transport.clone(),
        stop: flag.clone(),
        coalesce,
        forwarder: ctx.forwarder.clone(),
    };
    let th = std::thread::Builder::new().name("dns-udp".into()).spawn(move || crate::dns::udp::serve(cfg, slow))?;
    Ok(tokio::spawn(async move {
        let _ = stop.changed().await;
        flag.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || th.join()).await;
    }))
}

/// Threads serving DNS over TCP by default: one per core this process may run on (its CPU
/// affinity, so a server pinned to one core gets one thread), at most 8.
pub fn default_tcp_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}

/// One DNS TCP thread: a current-thread runtime accepting from `l` and serving the connections
/// it accepted (a connection stays on the thread that accepted it, so its wake-ups never hop
/// between threads, unlike tasks on a shared multi-thread runtime). The returned task joins the
/// thread after `stop`; open connections end with the thread's runtime.
fn dns_tcp_thread(
    l: std::net::TcpListener,
    ctx: DnsCtx,
    cfg: DnsServerConfig,
    live: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
) -> io::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let th = std::thread::Builder::new().name("dns-tcp".into()).spawn(move || {
        rt.block_on(async move {
            match TcpListener::from_std(l) {
                Ok(l) => dns_tcp_accept(l, ctx, cfg, live, stop).await,
                Err(e) => tracing::error!(error = %e, "dns tcp listener; thread not started"),
            }
        });
    })?;
    Ok(tokio::spawn(async move {
        let _ = tokio::task::spawn_blocking(move || th.join()).await;
    }))
}

async fn dns_tcp_accept(l: TcpListener, ctx: DnsCtx, cfg: DnsServerConfig, live: Arc<AtomicUsize>, mut stop: watch::Receiver<bool>) {
    loop {
        let (conn, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "dns tcp accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if live.load(Ordering::Relaxed) >= cfg.tcp_max_connections {
            ctx.transport.tcp_rejected.fetch_add(1, Ordering::Relaxed);
            drop(conn);
            continue;
        }
        ctx.transport.tcp_accepted.fetch_add(1, Ordering::Relaxed);
        live.fetch_add(1, Ordering::Relaxed);
        let (ctx, live, stop) = (ctx.clone(), live.clone(), stop.clone());
        let idle = cfg.tcp_idle;
        tokio::spawn(async move {
            let _ = conn.set_nodelay(true);
            if let Err(e) = dns_tcp_conn(conn, &ctx, idle, stop).await {
                tracing::debug!(%peer, error = %e, "dns tcp connection ended");
            }
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Largest read from a TCP connection at once (many pipelined queries).
const TCP_READ: usize = 16 * 1024;

/// One DNS-over-TCP connection (RFC 7766): every complete query already received is answered in
/// order into one output buffer, which leaves in one write; then the next read. Plain and cached
/// queries are answered without allocating; forwarded ones wait for their upstream (answers stay
/// in order). The idle timer is one per connection, pushed back lazily (no timer work per query).
async fn dns_tcp_conn(mut conn: TcpStream, ctx: &DnsCtx, idle: Duration, mut stop: watch::Receiver<bool>) -> io::Result<()> {
    let mut inbuf: Vec<u8> = Vec::with_capacity(TCP_READ);
    let mut out: Vec<u8> = Vec::with_capacity(TCP_READ);
    let mut ans: Vec<u8> = Vec::with_capacity(512);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let mut last_read = tokio::time::Instant::now();
    loop {
        // Answer every complete frame in the buffer: the plain and cached ones under one zone
        // lock and one clock reading per read; a query they decline goes to the general path
        // (which may await an upstream) with the lock released, then the fast pass resumes.
        let mut at = 0;
        let now = std::time::Instant::now();
        loop {
            let (declined, next) = tcp_answer_frames(ctx, &inbuf, at, now, &mut ans, &mut out);
            at = next;
            let Some(q) = declined else { break };
            if tcp_answer_slow(ctx, &inbuf[q], &mut ans).await {
                push_frame(&mut out, &ans);
            }
        }
        inbuf.drain(..at);
        if !out.is_empty() {
            conn.write_all(&out).await?;
            out.clear();
        }
        // Room for the rest of a frame (up to 64 KiB) or a fresh chunk; read into spare capacity.
        inbuf.reserve(TCP_READ);
        let n = loop {
            tokio::select! {
                biased;
                r = conn.read_buf(&mut inbuf) => break r?,
                _ = &mut stopped => return Ok(()),
                _ = &mut idle_timer => {
                    let deadline = last_read + idle;
                    if tokio::time::Instant::now() >= deadline {
                        ctx.transport.tcp_idle_closed.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    idle_timer.as_mut().reset(deadline);
                }
            }
        };
        if n == 0 {
            return Ok(());
        }
        last_read = tokio::time::Instant::now();
    }
}

/// Append `ans` to `out` as one RFC 7766 frame (length prefix); an answer too long to frame is
/// not sent (the general path truncates long answers, so this does not happen in practice).
fn push_frame(out: &mut Vec<u8>, ans: &[u8]) {
    if let Ok(n) = u16::try_from(ans.len()) {
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(ans);
    }
}

/// Answer the complete frames of `inbuf` from `at` on with the allocation-free paths (local plain
/// queries, then cached forwards in wire form), appending framed answers to `out`, with the zone
/// read lock taken once. Stops at the first query these paths decline and returns its byte range
/// (for [`tcp_answer_slow`]) and the offset after it; `None` and the offset of the first
/// incomplete frame when every complete frame was answered.
fn tcp_answer_frames(
    ctx: &DnsCtx,
    inbuf: &[u8],
    mut at: usize,
    now: std::time::Instant,
    ans: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> (Option<std::ops::Range<usize>>, usize) {
    use crate::dns::fast::{WireAnswer, answer_wire_into};
    let zone = ctx.zone.read().ok();
    let cache = ctx.forwarder.as_deref().map(|f| &f.cache);
    let mut hits = 0u64;
    let mut declined = None;
    while let Some(hdr) = inbuf.get(at..at + 2) {
        let len = usize::from(u16::from_be_bytes([hdr[0], hdr[1]]));
        let Some(q) = inbuf.get(at + 2..at + 2 + len) else { break };
        let range = at + 2..at + 2 + len;
        at += 2 + len;
        let answered = match &zone {
            Some(z) => answer_wire_into(z, cache, q, Transport::Tcp, &ctx.stats, now, ans),
            None => WireAnswer::Declined,
        };
        match answered {
            WireAnswer::Local => push_frame(out, ans),
            WireAnswer::Cached => {
                hits += 1;
                push_frame(out, ans);
            }
            WireAnswer::Declined => {
                declined = Some(range);
                break;
            }
        }
    }
    if let (Some(f), true) = (&ctx.forwarder, hits > 0) {
        f.stats.cache_hits.fetch_add(hits, Ordering::Relaxed);
    }
    (declined, at)
}

/// Answer one TCP query the fast paths declined into `ans` (general answerer, cache, upstream);
/// `false`: nothing to send (dropped, or no upstream answer).
async fn tcp_answer_slow(ctx: &DnsCtx, q: &[u8], ans: &mut Vec<u8>) -> bool {
    let resp = match ctx.local(q, Transport::Tcp) {
        Ok(r) => r,
        Err(req) => match &ctx.forwarder {
            Some(f) => f.resolve(&req, Transport::Tcp, &ctx.stats).await,
            None => None,
        },
    };
    ans.clear();
    match resp {
        Some(r) => {
            ans.extend_from_slice(&r);
            true
        }
        None => false,
    }
}

/// Counters of the forwarder.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Queries sent upstream.
    pub forwarded: AtomicU64,
    /// Answers served from the cache.
    pub cache_hits: AtomicU64,
    /// Upstream attempts that timed out or failed.
    pub upstream_failures: AtomicU64,
    /// Packets from upstream that did not match the query (id/question), ignored.
    pub mismatched: AtomicU64,
    /// Answers refused by rebinding protection.
    pub rebind_blocked: AtomicU64,
    /// Queries answered SERVFAIL (all upstreams failed, or too many in flight).
    pub servfail: AtomicU64,
    /// Queries that joined an identical one already in flight.
    pub coalesced: AtomicU64,
}

/// Forwarding state shared by all DNS tasks: settings, cache, in-flight count.
pub struct Forwarder {
    cfg: ForwardConfig,
    pub(crate) cache: std::sync::Mutex<DnsCache>,
    in_flight: AtomicUsize,
    /// Identical questions already on their way upstream: later askers wait for that answer.
    pending: std::sync::Mutex<hashbrown::HashMap<CacheKey, Vec<tokio::sync::oneshot::Sender<Option<Arc<DnsMessage>>>>>>,
    /// Counters.
    pub stats: ForwardStats,
}

impl Forwarder {
    /// A forwarder with an empty cache.
    pub fn new(cfg: ForwardConfig) -> Forwarder {
        let cache = DnsCache::new(cfg.cache_size, cfg.max_ttl, cfg.max_negative_ttl).with_negative_ttl_without_soa(cfg.negative_ttl_without_soa);
        Forwarder {
            cfg,
            cache: std::sync::Mutex::new(cache),
            in_flight: AtomicUsize::new(0),
            pending: std::sync::Mutex::new(hashbrown::HashMap::new()),
            stats: ForwardStats::default(),
        }
    }

    /// Cache counters and size.
    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The answer cache (shared by every transport; inspection, preloading).
    pub fn cache(&self) -> &std::sync::Mutex<DnsCache> {
        &self.cache
    }

    /// The cached response to `req`, if fresh.
    fn cached_response(&self, req: &DnsMessage, t: Transport, stats: &AnswerStats) -> Option<Vec<u8>> {
        let key = CacheKey::of(req)?;
        let hit = self.cache.lock().ok()?.get(&key, std::time::Instant::now())?;
        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        forwarded_response(req, hit.rcode, hit.answers, hit.authorities, t, stats)
    }

    /// Resolve `req` upstream (trying each server in turn) and build the client's response.
    pub async fn resolve(&self, req: &DnsMessage, t: Transport, stats: &AnswerStats) -> Option<Vec<u8>> {
        let fail = |rcode| forwarded_response(req, rcode, Vec::new(), Vec::new(), t, stats);
        let q = req.queries.first()?;
        let name = norm(&q.name().to_ascii());
        if self.cfg.upstreams_for(&name).is_empty() {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return fail(ResponseCode::Refused);
        }
        let key = CacheKey::of(req)?;
        // Coalesce: if the same question is already upstream, wait for its answer.
        let waiter = {
            let mut p = self.pending.lock().ok()?;
            match p.get_mut(&key) {
                Some(list) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    list.push(tx);
                    Some(rx)
                }
                None => {
                    p.insert(key.clone(), Vec::new());
                    None
                }
            }
        };
        if let Some(rx) = waiter {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            return match rx.await.ok().flatten() {
                Some(resp) => {
                    forwarded_response(req, resp.metadata.response_code, resp.answers.clone(), resp.authorities.clone(), t, stats)
                }
                None => fail(ResponseCode::ServFail),
            };
        }
        let outcome = self.resolve_upstream(req, &name).await;
        let shared = outcome.as_ref().ok().map(|m| Arc::new(m.clone()));
        if let Some(list) = self.pending.lock().ok().and_then(|mut p| p.remove(&key)) {
            for tx in list {
                let _ = tx.send(shared.clone());
            }
        }
        match outcome {
            Ok(resp) => {
                let rc = resp.metadata.response_code;
                forwarded_response(req, rc, resp.answers, resp.authorities, t, stats)
            }
            Err(rcode) => fail(rcode),
        }
    }

    /// Ask the upstreams (in order); the answer is checked for rebinding and cached. `Err` is the
    /// response code to give the client.
    async fn resolve_upstream(&self, req: &DnsMessage, name: &str) -> Result<DnsMessage, ResponseCode> {
        let ups = self.cfg.upstreams_for(name).to_vec();
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.cfg.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.stats.servfail.fetch_add(1, Ordering::Relaxed);
            return Err(ResponseCode::ServFail);
        }
        let mut result = None;
        for up in ups {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            match query_upstream(up, req, self.cfg.timeout, &self.stats).await {
                Ok(resp) => {
                    let rc = resp.metadata.response_code;
                    let done = rc == ResponseCode::NoError || rc == ResponseCode::NXDomain;
                    // SERVFAIL/REFUSED from this one: another upstream may do better.
                    result = Some(resp);
                    if done {
                        break;
                    }
                }
                Err(e) => {
                    self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(upstream = %up, error = %e, "upstream failed");
                }
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let Some(resp) = result else {
            self.stats.servfail.fetch_add(1, Ordering::Relaxed);
            return Err(ResponseCode::ServFail);
        };
        if !self.cfg.rebind_allowed(name) && has_rebind_answer(&resp) {
            self.stats.rebind_blocked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%name, "possible DNS rebinding: upstream answer points into private space; refused");
            return Err(ResponseCode::Refused);
        }
        if let (Some(key), Ok(mut c)) = (CacheKey::of(req), self.cache.lock()) {
            c.insert(key, &resp, std::time::Instant::now());
        }
        Ok(resp)
    }
}

/// One query to one upstream: a fresh socket (random source port from the kernel), a random id,
/// answers accepted only from that server with the same id and question; TCP when truncated.
async fn query_upstream(up: SocketAddr, req: &DnsMessage, timeout: Duration, stats: &ForwardStats) -> io::Result<DnsMessage> {
    let mut q = DnsMessage::query();
    q.metadata.id = rand::random::<u16>();
    q.metadata.recursion_desired = true;
    q.add_queries(req.queries.iter().cloned());
    let mut e = Edns::new();
    e.set_max_payload(crate::dns::answer::OUR_UDP_PAYLOAD);
    q.set_edns(e);
    let bytes = q.to_vec().map_err(io::Error::other)?;
    let bind: SocketAddr = if up.is_ipv4() { "0.0.0.0:0".parse().map_err(io::Error::other)? } else { "[::]:0".parse().map_err(io::Error::other)? };
    let sock = UdpSocket::bind(bind).await?;
    // connect(): the kernel drops datagrams from any other source.
    sock.connect(up).await?;
    sock.send(&bytes).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "upstream timeout")),
        };
        let Ok(resp) = DnsMessage::from_vec(&buf[..n]) else {
            stats.mismatched.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if !matches_query(&q, &resp) {
            stats.mismatched.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if resp.metadata.truncation {
            return tokio::time::timeout_at(deadline, query_upstream_tcp(up, &q, &bytes))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream tcp timeout"))?;
        }
        return Ok(resp);
    }
}

async fn query_upstream_tcp(up: SocketAddr, q: &DnsMessage, bytes: &[u8]) -> io::Result<DnsMessage> {
    let mut c = TcpStream::connect(up).await?;
    let len = u16::try_from(bytes.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    c.write_all(&out).await?;
    let n = c.read_u16().await? as usize;
    let mut b = vec![0u8; n];
    c.read_exact(&mut b).await?;
    let resp = DnsMessage::from_vec(&b).map_err(io::Error::other)?;
    if !matches_query(q, &resp) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "upstream tcp answer does not match the query"));
    }
    Ok(resp)
}

// ------------------------------------------------------------------------------------------------
// DHCP

/// Where and how the DHCP driver listens and replies.
#[derive(Debug, Clone)]
pub struct DhcpDriverConfig {
    /// Listen address (normally 0.0.0.0:67).
    pub bind: SocketAddrV4,
    /// SO_BINDTODEVICE interface; also used to prime the neighbour table for ARP-less unicast.
    pub interface: Option<String>,
    /// This server's address on the served link (selects the subnet of direct clients).
    pub local_addr: Option<Ipv4Addr>,
    /// Client port replies go to (68).
    pub client_port: u16,
    /// Relay port replies to giaddr go to (67).
    pub relay_port: u16,
    /// Broadcast address for broadcast replies (255.255.255.255).
    pub broadcast: Ipv4Addr,
}

impl Default for DhcpDriverConfig {
    fn default() -> Self {
        DhcpDriverConfig {
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, crate::dhcp::SERVER_PORT),
            interface: None,
            local_addr: None,
            client_port: crate::dhcp::CLIENT_PORT,
            relay_port: crate::dhcp::SERVER_PORT,
            broadcast: Ipv4Addr::BROADCAST,
        }
    }
}

/// What the DHCP core looked like at its last timer tick (for status and metrics).
#[derive(Debug, Default, Clone)]
pub struct DhcpStatus {
    /// The core's counters.
    pub counters: crate::dhcp::DhcpCounters,
    /// Lease records held (any state).
    pub lease_records: usize,
    /// Leases active now.
    pub active_leases: usize,
}

/// Counters of the DHCP driver.
#[derive(Debug, Default)]
pub struct DhcpDriverStats {
    /// Replies sent.
    pub sent: AtomicU64,
    /// Replies dropped because their lease could not be made durable.
    pub not_durable: AtomicU64,
    /// Send errors.
    pub send_errors: AtomicU64,
    /// The core's state, refreshed at least once a second.
    pub status: std::sync::Mutex<DhcpStatus>,
    /// Leases whose replication to the peers failed (served anyway).
    pub replication_failures: AtomicU64,
    /// Requests ignored while standing by (following a VIP held elsewhere).
    pub standby_dropped: AtomicU64,
}

/// Where granted leases go for the other gateways (the cluster channel implements this).
pub trait LeaseReplicator: Send + Sync + 'static {
    /// Deliver `record` to the peers; call `done` once they hold it durably (or it failed).
    fn replicate(&self, record: &LogRecord, done: Box<dyn FnOnce(Result<(), String>) + Send>);
}

/// When the ACK waits for the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationMode {
    /// The ACK waits until the peers have the lease (or reported failure): after a failover the
    /// standby knows every acknowledged lease while the peers were reachable.
    Sync,
    /// The ACK waits only for the local log; peers get the lease in the background.
    Async,
}

/// Lease replication settings of a DHCP driver.
#[derive(Clone)]
pub struct Replication {
    /// Where records go.
    pub sink: Arc<dyn LeaseReplicator>,
    /// Whether the ACK waits for it.
    pub mode: ReplicationMode,
}

/// Feeds records received from peer gateways into a running driver.
#[derive(Clone)]
pub struct ReplicaInput {
    tx: mpsc::Sender<(Vec<LogRecord>, Option<ReplicaDone>)>,
}

/// Told when a replicated record is durable here.
pub type ReplicaDone = Box<dyn FnOnce(Result<(), String>) + Send>;

impl ReplicaInput {
    /// Apply `record` from a peer; `done` is called once it is durable in our log.
    pub async fn apply(&self, record: LogRecord, done: Option<ReplicaDone>) -> Result<(), LogRecord> {
        self.apply_batch(vec![record], done).await.map_err(|mut v| v.remove(0))
    }

    /// Apply a peer's records in one turn of the driver: one group commit for all of them, and
    /// `done` (called from the committer) once they are all durable in our log.
    pub async fn apply_batch(&self, records: Vec<LogRecord>, done: Option<ReplicaDone>) -> Result<(), Vec<LogRecord>> {
        self.tx.send((records, done)).await.map_err(|e| e.0.0)
    }
}

/// A running DHCP driver.
pub struct DhcpHandle {
    /// The bound addresses, one per socket (port 0 resolved).
    pub locals: Vec<SocketAddr>,
    /// Driver counters.
    pub stats: Arc<DhcpDriverStats>,
    replica: ReplicaInput,
    stop: watch::Sender<bool>,
    /// The core, handed back when the driver thread ends.
    task: tokio::sync::oneshot::Receiver<DhcpServer>,
    thread: Option<std::thread::JoinHandle<()>>,
    readers: Vec<JoinHandle<()>>,
}

impl DhcpHandle {
    /// Where peer gateways' lease records enter this driver.
    pub fn replica_input(&self) -> ReplicaInput {
        self.replica.clone()
    }

    /// Stop receiving, wait for pending durable replies, and return the core (for inspection).
    pub async fn shutdown(self) -> Option<DhcpServer> {
        let _ = self.stop.send(true);
        for r in self.readers {
            r.abort();
        }
        let core = self.task.await.ok();
        if let Some(t) = self.thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        core
    }
}

/// Bind one DHCP socket per entry of `cfgs` (e.g. one per served interface) and run the core on
/// all of them; each reply leaves through the socket its request came in on.
pub async fn start_dhcp(
    cfgs: Vec<DhcpDriverConfig>,
    core: DhcpServer,
    committer: Arc<GroupCommitter>,
    zone: Option<SharedZone>,
) -> io::Result<DhcpHandle> {
    start_dhcp_replicated(cfgs, core, committer, zone, None).await
}

/// [`start_dhcp`] with lease replication to peer gateways.
pub async fn start_dhcp_replicated(
    cfgs: Vec<DhcpDriverConfig>,
    core: DhcpServer,
    committer: Arc<GroupCommitter>,
    zone: Option<SharedZone>,
    replication: Option<Replication>,
) -> io::Result<DhcpHandle> {
    start_dhcp_with(cfgs, core, committer, zone, DriverExtras { replication, prober: None, follow_vip: None }).await
}

/// Checks whether an address is already in use before it is offered.
pub trait AddressProber: Send + Sync + 'static {
    /// `Ok(true)` if something answered for `addr`; errors count as "free" (never stall).
    fn probe(&self, addr: Ipv4Addr) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<bool>> + Send>>;
}

/// ICMP echo prober (unprivileged ping socket; works as root or within `ping_group_range`).
pub struct IcmpProber {
    /// How long to wait for an echo reply.
    pub timeout: Duration,
}

impl AddressProber for IcmpProber {
    fn probe(&self, addr: Ipv4Addr) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<bool>> + Send>> {
        let timeout = self.timeout;
        Box::pin(async move {
            // An unprivileged ping socket if allowed, else a raw socket (root / CAP_NET_RAW).
            let (s, raw) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
                Ok(s) => (s, false),
                Err(_) => (Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?, true),
            };
            s.set_nonblocking(true)?;
            let sock = UdpSocket::from_std(std::net::UdpSocket::from(std::os::fd::OwnedFd::from(s)))?;
            sock.connect(SocketAddr::V4(SocketAddrV4::new(addr, 0))).await?;
            let id: u16 = rand::random();
            let seq: u16 = rand::random();
            let mut pkt = vec![8u8, 0, 0, 0];
            pkt.extend_from_slice(&id.to_be_bytes());
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(b"hastack-dhcp-probe");
            let ck = icmp_checksum(&pkt);
            pkt[2..4].copy_from_slice(&ck.to_be_bytes());
            sock.send(&pkt).await?;
            let mut buf = [0u8; 1500];
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Err(_) => return Ok(false),
                    Ok(r) => r?,
                };
                // Raw sockets deliver the IP header too; ping sockets rewrite the identifier.
                let off = if raw { usize::from(buf[0] & 0x0f) * 4 } else { 0 };
                let Some(icmp) = buf.get(off..n) else { continue };
                if icmp.len() >= 8 && icmp[0] == 0 && icmp[6..8] == seq.to_be_bytes() && (!raw || icmp[4..6] == id.to_be_bytes()) {
                    return Ok(true);
                }
            }
        })
    }
}

/// How a subnet's addresses are probed before an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMethod {
    /// ARP probe on the link (RFC 5227; direct clients only).
    Arp,
    /// ICMP echo (works through relays).
    Icmp,
}

/// Probes each address with its subnet's method (addresses outside every listed network: free).
pub struct SubnetProber {
    /// How long a probe waits for an answer.
    pub timeout: Duration,
    /// Networks and their method.
    pub methods: Vec<(ipnet::Ipv4Net, ProbeMethod)>,
}

impl AddressProber for SubnetProber {
    fn probe(&self, addr: Ipv4Addr) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<bool>> + Send>> {
        match self.methods.iter().find(|(n, _)| n.contains(&addr)).map(|(_, m)| *m) {
            Some(ProbeMethod::Arp) => crate::arp::ArpProber { timeout: self.timeout }.probe(addr),
            Some(ProbeMethod::Icmp) => IcmpProber { timeout: self.timeout }.probe(addr),
            None => Box::pin(async { Ok(false) }),
        }
    }
}

fn icmp_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Optional parts of a DHCP driver.
#[derive(Clone, Default)]
pub struct DriverExtras {
    /// Lease replication to peer gateways.
    pub replication: Option<Replication>,
    /// Conflict check before offers (used when the core emits [`Action::Probe`]).
    pub prober: Option<Arc<dyn AddressProber>>,
    /// Answer DHCP only while this host holds this address (the VIP): the standby gateway keeps
    /// its replicated leases current and starts answering the moment the VIP moves to it.
    pub follow_vip: Option<Ipv4Addr>,
}

/// How often the VIP's presence is checked when following it.
const FOLLOW_VIP_EVERY: Duration = Duration::from_millis(100);

/// [`start_dhcp`] with replication and/or a conflict prober.
pub async fn start_dhcp_with(
    cfgs: Vec<DhcpDriverConfig>,
    core: DhcpServer,
    committer: Arc<GroupCommitter>,
    zone: Option<SharedZone>,
    extras: DriverExtras,
) -> io::Result<DhcpHandle> {
    let DriverExtras { replication, prober, follow_vip } = extras;
    let mut std_socks = Vec::new();
    let mut locals = Vec::new();
    for c in &cfgs {
        let s = bind_udp_std(SocketAddr::V4(c.bind), false, c.interface.as_deref(), true)?;
        locals.push(s.local_addr()?);
        std_socks.push(s);
    }
    let stats = Arc::new(DhcpDriverStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let active = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut follower = None;
    if let Some(vip) = follow_vip {
        let holds = move || crate::from_config::local_ipv4_addrs().iter().any(|a| a.addr == vip);
        active.store(holds(), Ordering::Relaxed);
        let (active, mut stop) = (active.clone(), stop_rx.clone());
        follower = Some(tokio::spawn(async move {
            let mut was = active.load(Ordering::Relaxed);
            tracing::info!(%vip, active = was, "DHCP follows the VIP");
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_VIP_EVERY) => {}
                    _ = stop.changed() => return,
                }
                let now = tokio::task::spawn_blocking(holds).await.unwrap_or(was);
                if now != was {
                    tracing::info!(%vip, active = now, "DHCP {} (VIP {})", if now { "answering" } else { "standing by" }, if now { "here" } else { "gone" });
                    was = now;
                }
                active.store(now, Ordering::Relaxed);
            }
        }));
    }
    // The driver runs on its own thread with a current-thread runtime: the socket wake-ups, the
    // core and the commit completions stay on one thread (no hand-off between workers per packet).
    let (rt, socks) = driver_runtime(std_socks)?;
    let (rep_tx, rep_rx) = mpsc::channel(4096);
    let io = DhcpIo { cfgs, socks, committer, zone, stats: stats.clone(), replication, prober, active };
    let (core_tx, core_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new().name("dhcp".into()).spawn(move || {
        let core = rt.block_on(dhcp_loop(io, rep_rx, core, stop_rx));
        let _ = core_tx.send(core);
    })?;
    Ok(DhcpHandle { locals, stats, replica: ReplicaInput { tx: rep_tx }, stop, task: core_rx, thread: Some(thread), readers: follower.into_iter().collect() })
}

/// A current-thread runtime for the DHCP driver and its sockets registered with it.
fn driver_runtime(std_socks: Vec<std::net::UdpSocket>) -> io::Result<(tokio::runtime::Runtime, Vec<Arc<UdpSocket>>)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let socks = {
        let _in = rt.enter();
        std_socks.into_iter().map(|s| UdpSocket::from_std(s).map(Arc::new)).collect::<io::Result<Vec<_>>>()?
    };
    Ok((rt, socks))
}

struct DhcpIo {
    cfgs: Vec<DhcpDriverConfig>,
    socks: Vec<Arc<UdpSocket>>,
    committer: Arc<GroupCommitter>,
    zone: Option<SharedZone>,
    stats: Arc<DhcpDriverStats>,
    replication: Option<Replication>,
    prober: Option<Arc<dyn AddressProber>>,
    /// False while following a VIP held elsewhere: requests are dropped.
    active: Arc<std::sync::atomic::AtomicBool>,
}

/// A probe's outcome, with what is needed to act on it.
struct Probed {
    idx: usize,
    addr: Ipv4Addr,
    reply: Reply,
    request: Arc<Vec<u8>>,
    meta: RecvMeta,
    attempt: u8,
    in_use: bool,
}

/// Most probes for one DISCOVER before the offer goes out unprobed (availability first).
const MAX_PROBES: u8 = 3;

/// Most datagrams taken from one socket per wake-up before the other sources get a turn.
const DHCP_BATCH: usize = 64;

/// Completion of one part of held replies.
enum Part {
    /// The local log made these records durable (or failed: the error's text).
    Local(Vec<u64>, Result<(), String>),
    /// The peers answered for this record.
    Peers(u64, Result<(), String>),
    /// Both parts of a sync-replicated record, told by whichever completed last.
    Both(u64, Result<(), String>, Result<(), String>),
}

/// The two completions of a sync-replicated record meet here, so the driver wakes once per
/// record (when the second arrives), not once per part.
#[derive(Default)]
struct PartJoin(std::sync::Mutex<(Option<PartOutcome>, Option<PartOutcome>)>);

/// One part's outcome (the error's text).
type PartOutcome = Result<(), String>;

impl PartJoin {
    /// Records the local outcome; the peers' if they answered already.
    fn local(&self, r: Result<(), String>) -> Option<Result<(), String>> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = Some(r);
        g.1.clone()
    }

    /// Records the peers' outcome; the local one if it is known already.
    fn peers(&self, r: Result<(), String>) -> Option<Result<(), String>> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = Some(r);
        g.0.clone()
    }
}

/// A reply waiting for its lease to be durable (and, in sync mode, replicated).
struct Held {
    idx: usize,
    reply: Option<Reply>,
    local: Option<Result<(), String>>,
    peers_done: bool,
}

/// The request that produced some actions (needed again when a probe finds its address in use).
enum Request<'a> {
    /// From the socket: copied only if a probe needs it.
    Wire(&'a [u8], RecvMeta, u8),
    /// Already copied for an earlier probe.
    Shared(Arc<Vec<u8>>, RecvMeta, u8),
}

/// What the driver loop keeps between turns.
struct LoopState {
    held: hashbrown::HashMap<u64, Held>,
    next_id: u64,
    probing: usize,
    part_tx: mpsc::UnboundedSender<Part>,
    probe_tx: mpsc::UnboundedSender<Probed>,
    /// Records persisted during this turn, committed together at its end (one group).
    to_commit: Vec<LogRecord>,
    to_commit_ids: Vec<(u64, Option<Arc<PartJoin>>)>,
    /// Peers' records in this turn's group wait only for it: told from the committer.
    to_commit_replicas: Vec<ReplicaDone>,
}

impl LoopState {
    /// Carry out the core's actions for a request that came in on socket `idx`.
    /// `from_peer`: the actions apply peers' records (persisted, never sent back to them);
    /// `replica_done` is told once this turn's group commit holds them.
    fn apply(&mut self, io: &DhcpIo, idx: usize, actions: Vec<Action>, request: Option<Request<'_>>, from_peer: bool, replica_done: Option<ReplicaDone>) {
        let mut peer_persisted = false;
        for a in actions {
            match a {
                Action::Reply(r) => send_reply(&io.socks[idx], &io.cfgs[idx], &io.stats, r),
                Action::Probe { addr, reply } => {
                    let req = match &request {
                        Some(Request::Wire(b, meta, attempt)) if *attempt < MAX_PROBES => Some((Arc::new(b.to_vec()), *meta, *attempt)),
                        Some(Request::Shared(b, meta, attempt)) if *attempt < MAX_PROBES => Some((b.clone(), *meta, *attempt)),
                        _ => None,
                    };
                    match (&io.prober, req) {
                        (Some(prober), Some((req, meta, attempt))) => {
                            self.probing += 1;
                            let (prober, tx) = (prober.clone(), self.probe_tx.clone());
                            tokio::spawn(async move {
                                let in_use = match prober.probe(addr).await {
                                    Ok(b) => b,
                                    Err(e) => {
                                        tracing::debug!(%addr, error = %e, "probe failed; treating the address as free");
                                        false
                                    }
                                };
                                let _ = tx.send(Probed { idx, addr, reply, request: req, meta, attempt, in_use });
                            });
                        }
                        _ => send_reply(&io.socks[idx], &io.cfgs[idx], &io.stats, reply),
                    }
                }
                Action::LeaseChanged(ch) => {
                    if let Some(z) = &io.zone {
                        if let Ok(mut z) = z.write() {
                            z.apply_lease(&ch);
                        }
                    }
                }
                Action::PersistLease { record, reply } if from_peer && reply.is_none() => {
                    self.to_commit.push(record);
                    peer_persisted = true;
                }
                Action::PersistLease { record, reply } => {
                    let id = self.next_id;
                    self.next_id += 1;
                    // Records from peers are not sent back to them; our own changes are.
                    let (sync, join) = match (&io.replication, from_peer) {
                        (Some(rep), false) => {
                            let tx = self.part_tx.clone();
                            let sync = rep.mode == ReplicationMode::Sync && reply.is_some();
                            let join = sync.then(|| Arc::new(PartJoin::default()));
                            let j = join.clone();
                            rep.sink.replicate(&record, Box::new(move |r| {
                                let _ = match &j {
                                    Some(j) => match j.peers(r.clone()) {
                                        Some(local) => tx.send(Part::Both(id, local, r)),
                                        None => Ok(()),
                                    },
                                    None => tx.send(Part::Peers(id, r)),
                                };
                            }));
                            (sync, join)
                        }
                        _ => (false, None),
                    };
                    self.held.insert(id, Held { idx, reply, local: None, peers_done: !sync });
                    self.to_commit.push(record);
                    self.to_commit_ids.push((id, join));
                }
            }
        }
        if let Some(done) = replica_done {
            if peer_persisted {
                self.to_commit_replicas.push(done);
            } else {
                // A replica that changed nothing here is already as durable as it needs to be.
                done(Ok(()));
            }
        }
    }

    /// Hand this turn's records to the committer as one group.
    fn flush_commits(&mut self, io: &DhcpIo) {
        if self.to_commit.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.to_commit_ids);
        let replicas = std::mem::take(&mut self.to_commit_replicas);
        let tx = self.part_tx.clone();
        let stats = io.stats.clone();
        io.committer.submit(std::mem::take(&mut self.to_commit), Box::new(move |res| {
            let res = res.map_err(|e| e.to_string());
            if !replicas.is_empty() {
                if let Err(e) = &res {
                    stats.not_durable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "peer's lease records not durable here: not acknowledged");
                }
                for done in replicas {
                    done(res.clone());
                }
            }
            // A sync-replicated record wakes the driver only once both parts are in.
            let mut now = Vec::with_capacity(ids.len());
            for (id, join) in ids {
                match join {
                    None => now.push(id),
                    Some(j) => {
                        if let Some(peers) = j.local(res.clone()) {
                            let _ = tx.send(Part::Both(id, res.clone(), peers));
                        }
                    }
                }
            }
            if !now.is_empty() {
                let _ = tx.send(Part::Local(now, res));
            }
        }));
    }

    /// Record a completion; replies whose parts are all done go out.
    fn complete(&mut self, io: &DhcpIo, part: Part) {
        let (ids, local, peers) = match part {
            Part::Local(ids, r) => (ids, Some(r), None),
            Part::Peers(id, r) => (vec![id], None, Some(r)),
            Part::Both(id, l, r) => (vec![id], Some(l), Some(r)),
        };
        if let Some(Err(e)) = &peers {
            io.stats.replication_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "lease not replicated to peers; serving on");
        }
        for id in ids {
            let Some(h) = self.held.get_mut(&id) else { continue };
            if let Some(r) = &local {
                h.local = Some(r.clone());
            }
            if peers.is_some() {
                h.peers_done = true;
            }
            if h.local.is_some() && h.peers_done {
                if let Some(h) = self.held.remove(&id) {
                    release_held(io, h);
                }
            }
        }
    }
}

/// Wait until one of `socks` has a datagram to read.
async fn recv_ready(socks: &[Arc<UdpSocket>]) {
    std::future::poll_fn(|cx| {
        for s in socks {
            if s.poll_recv_ready(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Take what every socket has queued (up to [`DHCP_BATCH`] each) and hand each request to the
/// core; the buffer is reused, nothing is copied per packet.
fn drain(io: &DhcpIo, core: &mut DhcpServer, st: &mut LoopState, buf: &mut [u8]) {
    for (i, s) in io.socks.iter().enumerate() {
        for _ in 0..DHCP_BATCH {
            match s.try_recv_from(buf) {
                Ok((_, SocketAddr::V4(_))) if !io.active.load(Ordering::Relaxed) => {
                    io.stats.standby_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok((n, SocketAddr::V4(src))) => {
                    let meta = RecvMeta { src, local_addr: io.cfgs[i].local_addr };
                    let acts = core.handle_packet(unix_now(), &buf[..n], meta);
                    st.apply(io, i, acts, Some(Request::Wire(&buf[..n], meta, 0)), false, None);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; the socket is still readable.
                    tracing::debug!(error = %e, "dhcp recv");
                }
            }
        }
    }
}

async fn dhcp_loop(
    io: DhcpIo,
    mut replicas: mpsc::Receiver<(Vec<LogRecord>, Option<ReplicaDone>)>,
    mut core: DhcpServer,
    mut stop: watch::Receiver<bool>,
) -> DhcpServer {
    let (part_tx, mut part_rx) = mpsc::unbounded_channel::<Part>();
    let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<Probed>();
    let mut st = LoopState {
        held: hashbrown::HashMap::new(),
        next_id: 0,
        probing: 0,
        part_tx,
        probe_tx,
        to_commit: Vec::new(),
        to_commit_ids: Vec::new(),
        to_commit_replicas: Vec::new(),
    };
    let mut buf = vec![0u8; 4096];
    let mut stopping = false;
    // One timer, reset only when it fires (the core's timeouts have second granularity).
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        if stopping && st.held.is_empty() && st.probing == 0 {
            return core;
        }
        tokio::select! {
            _ = recv_ready(&io.socks), if !stopping => drain(&io, &mut core, &mut st, &mut buf),
            Some(p) = probe_rx.recv() => {
                st.probing -= 1;
                if !p.in_use {
                    send_reply(&io.socks[p.idx], &io.cfgs[p.idx], &io.stats, p.reply);
                } else {
                    let now = unix_now();
                    let mut acts = core.conflict_detected(p.addr, now);
                    let mut request = None;
                    if !stopping {
                        // Same DISCOVER again: the core picks another address.
                        acts.extend(core.handle_packet(now, &p.request, p.meta));
                        request = Some(Request::Shared(p.request.clone(), p.meta, p.attempt + 1));
                    }
                    st.apply(&io, p.idx, acts, request, false, None);
                }
            },
            Some((recs, done)) = replicas.recv(), if !stopping => {
                let now = unix_now();
                let mut acts = Vec::new();
                for rec in recs {
                    acts.extend(core.apply_replicated(rec, now));
                }
                st.apply(&io, 0, acts, None, true, done);
            },
            Some(part) = part_rx.recv() => {
                st.complete(&io, part);
                while let Ok(part) = part_rx.try_recv() {
                    st.complete(&io, part);
                }
            }
            _ = &mut timer => {
                let now = unix_now();
                let acts = core.handle_timeout(now);
                if let Ok(mut s) = io.stats.status.lock() {
                    s.counters = core.counters().clone();
                    s.lease_records = core.leases().len();
                    s.active_leases = core.leases().iter().filter(|l| l.is_active(now)).count();
                }
                st.apply(&io, 0, acts, None, false, None);
                let wake = core.poll_timeout().map_or(Duration::from_secs(1), |t| Duration::from_secs(t.saturating_sub(now)).min(Duration::from_secs(1)));
                timer.as_mut().reset(tokio::time::Instant::now() + wake.max(Duration::from_millis(10)));
            }
            _ = stop.changed(), if !stopping => stopping = true,
        }
        st.flush_commits(&io);
    }
}

fn release_held(io: &DhcpIo, h: Held) {
    match h.local {
        Some(Ok(())) => {
            if let Some(r) = h.reply {
                send_reply(&io.socks[h.idx], &io.cfgs[h.idx], &io.stats, r);
            }
        }
        Some(Err(e)) => {
            io.stats.not_durable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "lease not durable: reply withheld");
        }
        None => {}
    }
}

/// Send a reply now (never waits: a full socket buffer counts as a send error).
fn send_reply(sock: &UdpSocket, cfg: &DhcpDriverConfig, stats: &DhcpDriverStats, r: Reply) {
    let dest = match &r.to {
        ReplyTarget::Relay(a) => SocketAddrV4::new(*a.ip(), cfg.relay_port),
        ReplyTarget::Unicast(a) => SocketAddrV4::new(*a.ip(), cfg.client_port),
        ReplyTarget::Broadcast => SocketAddrV4::new(cfg.broadcast, cfg.client_port),
        ReplyTarget::Hardware { ip, hwaddr } => {
            // The client cannot answer ARP yet: put its address in the neighbour table first
            // (what dnsmasq does); without an interface to do it on, broadcast instead.
            match cfg.interface.as_deref() {
                Some(dev) if prime_neighbour(sock, dev, *ip, hwaddr).is_ok() => SocketAddrV4::new(*ip, cfg.client_port),
                _ => SocketAddrV4::new(cfg.broadcast, cfg.client_port),
            }
        }
    };
    match sock.try_send_to(&r.packet, SocketAddr::V4(dest)) {
        Ok(_) => {
            stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.send_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%dest, error = %e, "dhcp reply send failed");
        }
    }
}

/// Add `ip` → `hwaddr` to `dev`'s ARP table (SIOCSARP) so a unicast to a client without an
/// address needs no ARP.
fn prime_neighbour(sock: &UdpSocket, dev: &str, ip: Ipv4Addr, hwaddr: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if hwaddr.len() != 6 || dev.len() >= 16 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an Ethernet address or device name too long"));
    }
    // SAFETY: arpreq is plain old data; zeroed is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let pa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in sockaddr (both 16 bytes); we copy its bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            &pa as *const libc::sockaddr_in as *const u8,
            &mut req.arp_pa as *mut libc::sockaddr as *mut u8,
            std::mem::size_of::<libc::sockaddr_in>(),
        );
    }
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (i, b) in hwaddr.iter().enumerate() {
        req.arp_ha.sa_data[i] = *b as libc::c_char;
    }
    const ATF_COM: libc::c_int = 0x02;
    req.arp_flags = ATF_COM;
    for (i, b) in dev.bytes().enumerate() {
        req.arp_dev[i] = b as libc::c_char;
    }
    // SAFETY: valid fd, valid pointer to an initialised arpreq for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSARP, &req as *const libc::arpreq) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
