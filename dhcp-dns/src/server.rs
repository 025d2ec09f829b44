//! Thin tokio drivers for the DHCP core and the DNS answerer.
//!
//! # DHCP driver lifecycle
//! `receiving` — a datagram goes to [`DhcpServer::handle_packet`] with the wall-clock `now`;
//! each [`Action`] is applied: `Reply` is sent at once, `LeaseChanged` updates the zone at once,
//! `PersistLease` goes to the [`GroupCommitter`] and its reply waits in `pending` until the
//! committer says the record is durable (then `sending`). A timer drives
//! [`DhcpServer::handle_timeout`]. On shutdown the loop stops receiving and waits for the
//! committer to finish what it accepted.
//!
//! # DNS servers
//! UDP: one task per socket (several `SO_REUSEPORT` sockets spread load over cores).
//! TCP: one task per connection in the same runtime (no process per connection), RFC 7766
//! length framing, pipelined queries answered in order, an idle timeout and a connection cap.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::dhcp::{Action, DhcpServer, RecvMeta, Reply, ReplyTarget};
use crate::dns::{AnswerStats, SharedZone, Transport, answer};
use crate::leases::{GroupCommitter, LeaseError, UnixTime};

/// Wall-clock seconds since the Unix epoch.
pub fn unix_now() -> UnixTime {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bind_udp(addr: SocketAddr, reuse_port: bool, device: Option<&str>, broadcast: bool) -> io::Result<UdpSocket> {
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
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
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
    /// Close a TCP connection idle this long (RFC 7766 §6.2.3).
    pub tcp_idle: Duration,
    /// Most concurrent TCP connections; more are closed at accept.
    pub tcp_max_connections: usize,
    /// SO_BINDTODEVICE for every socket.
    pub device: Option<String>,
}

impl Default for DnsServerConfig {
    fn default() -> Self {
        DnsServerConfig {
            udp: Vec::new(),
            tcp: Vec::new(),
            udp_sockets_per_addr: 1,
            tcp_idle: Duration::from_secs(10),
            tcp_max_connections: 4096,
            device: None,
        }
    }
}

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
            tasks.push(tokio::spawn(dns_udp_loop(s, zone.clone(), stats.clone(), transport.clone(), stop_rx.clone())));
        }
    }
    for addr in &cfg.tcp {
        let s = Socket::new(Domain::for_address(*addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if let Some(dev) = &cfg.device {
            s.bind_device(Some(dev.as_bytes()))?;
        }
        s.set_nonblocking(true)?;
        s.bind(&(*addr).into())?;
        s.listen(1024)?;
        let l = TcpListener::from_std(s.into())?;
        tcp_addrs.push(l.local_addr()?);
        tasks.push(tokio::spawn(dns_tcp_accept(l, zone.clone(), stats.clone(), transport.clone(), cfg.clone(), stop_rx.clone())));
    }
    Ok(DnsHandle { udp_addrs, tcp_addrs, stats, transport, stop, tasks })
}

async fn dns_udp_loop(
    sock: UdpSocket,
    zone: SharedZone,
    stats: Arc<AnswerStats>,
    transport: Arc<DnsTransportStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    tracing::debug!(error = %e, "dns udp recv");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let resp = match zone.read() {
            Ok(z) => answer(&z, &buf[..n], Transport::Udp, &stats),
            Err(_) => return,
        };
        if let Some(r) = resp {
            if sock.send_to(&r, peer).await.is_err() {
                transport.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn dns_tcp_accept(
    l: TcpListener,
    zone: SharedZone,
    stats: Arc<AnswerStats>,
    transport: Arc<DnsTransportStats>,
    cfg: DnsServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let live = Arc::new(AtomicUsize::new(0));
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
            transport.tcp_rejected.fetch_add(1, Ordering::Relaxed);
            drop(conn);
            continue;
        }
        transport.tcp_accepted.fetch_add(1, Ordering::Relaxed);
        live.fetch_add(1, Ordering::Relaxed);
        let (zone, stats, transport, live, stop) = (zone.clone(), stats.clone(), transport.clone(), live.clone(), stop.clone());
        let idle = cfg.tcp_idle;
        tokio::spawn(async move {
            let _ = conn.set_nodelay(true);
            if let Err(e) = dns_tcp_conn(conn, zone, stats, &transport, idle, stop).await {
                tracing::debug!(%peer, error = %e, "dns tcp connection ended");
            }
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn dns_tcp_conn(
    conn: TcpStream,
    zone: SharedZone,
    stats: Arc<AnswerStats>,
    transport: &DnsTransportStats,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (r, w) = conn.into_split();
    let mut r = BufReader::new(r);
    let mut w = BufWriter::new(w);
    let mut msg = Vec::with_capacity(512);
    loop {
        // Flush answers only when no further pipelined query is already buffered.
        if r.buffer().is_empty() {
            w.flush().await?;
        }
        let len = tokio::select! {
            res = tokio::time::timeout(idle, r.read_u16()) => match res {
                Ok(Ok(n)) => n as usize,
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    transport.tcp_idle_closed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        msg.resize(len, 0);
        match tokio::time::timeout(idle, r.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let resp = match zone.read() {
            Ok(z) => answer(&z, &msg, Transport::Tcp, &stats),
            Err(_) => return Ok(()),
        };
        if let Some(resp) = resp {
            let Ok(n) = u16::try_from(resp.len()) else { continue };
            w.write_u16(n).await?;
            w.write_all(&resp).await?;
        }
    }
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

/// Counters of the DHCP driver.
#[derive(Debug, Default)]
pub struct DhcpDriverStats {
    /// Replies sent.
    pub sent: AtomicU64,
    /// Replies dropped because their lease could not be made durable.
    pub not_durable: AtomicU64,
    /// Send errors.
    pub send_errors: AtomicU64,
}

/// A running DHCP driver.
pub struct DhcpHandle {
    /// The bound address.
    pub local: SocketAddr,
    /// Driver counters.
    pub stats: Arc<DhcpDriverStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<DhcpServer>,
}

impl DhcpHandle {
    /// Stop receiving, wait for pending durable replies, and return the core (for inspection).
    pub async fn shutdown(self) -> Option<DhcpServer> {
        let _ = self.stop.send(true);
        self.task.await.ok()
    }
}

/// Bind the DHCP socket and run the core on it.
pub async fn start_dhcp(
    cfg: DhcpDriverConfig,
    core: DhcpServer,
    committer: Arc<GroupCommitter>,
    zone: Option<SharedZone>,
) -> io::Result<DhcpHandle> {
    let sock = bind_udp(SocketAddr::V4(cfg.bind), false, cfg.interface.as_deref(), true)?;
    let local = sock.local_addr()?;
    let stats = Arc::new(DhcpDriverStats::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(dhcp_loop(cfg, sock, core, committer, zone, stats.clone(), stop_rx));
    Ok(DhcpHandle { local, stats, stop, task })
}

async fn dhcp_loop(
    cfg: DhcpDriverConfig,
    sock: UdpSocket,
    mut core: DhcpServer,
    committer: Arc<GroupCommitter>,
    zone: Option<SharedZone>,
    stats: Arc<DhcpDriverStats>,
    mut stop: watch::Receiver<bool>,
) -> DhcpServer {
    let (durable_tx, mut durable_rx) = mpsc::unbounded_channel::<(Option<Reply>, Result<(), LeaseError>)>();
    let mut pending = 0usize;
    let mut buf = vec![0u8; 4096];
    let mut stopping = false;
    loop {
        if stopping && pending == 0 {
            return core;
        }
        let now = unix_now();
        let wake = core.poll_timeout().map_or(Duration::from_secs(1), |t| Duration::from_secs(t.saturating_sub(now)).min(Duration::from_secs(1)));
        let actions = tokio::select! {
            r = sock.recv_from(&mut buf), if !stopping => match r {
                Ok((n, SocketAddr::V4(src))) => {
                    let meta = RecvMeta { src, local_addr: cfg.local_addr };
                    core.handle_packet(unix_now(), &buf[..n], meta)
                }
                Ok(_) => Vec::new(),
                Err(e) => {
                    tracing::debug!(error = %e, "dhcp recv");
                    Vec::new()
                }
            },
            Some((reply, res)) = durable_rx.recv() => {
                pending -= 1;
                match res {
                    Ok(()) => {
                        if let Some(r) = reply {
                            send_reply(&sock, &cfg, &stats, r).await;
                        }
                    }
                    Err(e) => {
                        stats.not_durable.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "lease not durable: reply withheld");
                    }
                }
                Vec::new()
            }
            _ = tokio::time::sleep(wake) => core.handle_timeout(unix_now()),
            _ = stop.changed(), if !stopping => {
                stopping = true;
                Vec::new()
            }
        };
        for a in actions {
            match a {
                Action::Reply(r) => send_reply(&sock, &cfg, &stats, r).await,
                Action::LeaseChanged(ch) => {
                    if let Some(z) = &zone {
                        if let Ok(mut z) = z.write() {
                            z.apply_lease(&ch);
                        }
                    }
                }
                Action::PersistLease { record, reply } => {
                    pending += 1;
                    let tx = durable_tx.clone();
                    committer.submit(vec![record], Box::new(move |res| {
                        let _ = tx.send((reply, res));
                    }));
                }
            }
        }
    }
}

async fn send_reply(sock: &UdpSocket, cfg: &DhcpDriverConfig, stats: &DhcpDriverStats, r: Reply) {
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
    match sock.send_to(&r.packet, dest).await {
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
