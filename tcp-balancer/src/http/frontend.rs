//! An http-mode frontend: listeners, TLS termination, routing to several backends, the idle
//! server connection pools, counters and drain.
//!
//! Frontend lifecycle: **start** (every backend started without a listener, health checks
//! running; listeners bound or inherited) → **serving** (accept below maxconn; each connection
//! is [`super::session::serve`]d) → **drain** (stop accepting, idle keep-alive connections
//! close at once, in-flight exchanges finish within the grace, the rest are killed, backends
//! stopped); or, on reload, **handing over** (idle plain keep-alive connections go to the new
//! process as they become idle, the rest drain as above). A new process **adopts** them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::answer::Answer;
use super::io::{Client, tls_accept};
use super::route::HttpRoute;
use crate::proxy::{
    FrontendConfig, Keepalive, Proxy, ProxyConfig, ProxyError, Stats, next_connection, read_proxy, read_proxy_exact, tune_client,
};
use crate::handover::{HandedHttpClient, Outgoing};
use crate::proxy_protocol::Header;
use crate::relay::RelayMode;
use crate::runtime::{InFlight, spawn_session_in};

/// Timeouts of an http frontend (HAProxy's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// `timeout http-request`: a whole request head must arrive within this.
    pub http_request: Duration,
    /// `timeout http-keep-alive`: longest wait for the next request on a kept connection.
    pub http_keep_alive: Duration,
    /// `timeout client`: client inactivity while a body or response is passed.
    pub client: Duration,
    /// `timeout server`: server inactivity, including the wait for a response head.
    pub server: Duration,
    /// `timeout tunnel`: inactivity of an upgraded connection (default: the larger of client/server).
    pub tunnel: Option<Duration>,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            http_request: Duration::from_secs(10),
            http_keep_alive: Duration::from_secs(10),
            client: Duration::from_secs(20),
            server: Duration::from_secs(20),
            tunnel: None,
        }
    }
}

/// An http-mode frontend with its backends.
#[derive(Debug, Clone)]
pub struct HttpFrontendConfig {
    /// Listening side (name, binds, maxconn, accept-proxy).
    pub frontend: FrontendConfig,
    /// Backends; their frontend part only names them in stats (it is not bound).
    pub backends: Vec<ProxyConfig>,
    /// Routes in order, indexing `backends`.
    pub routes: Vec<HttpRoute>,
    /// Backend of requests no route matches (`None`: 503).
    pub default: Option<usize>,
    /// Path answered locally: 200 when the default backend (or else any) has a usable server, or
    /// always when the frontend has no backend (monitor-only).
    pub monitor_uri: Option<String>,
    /// Add `X-Forwarded-For` with the client's address.
    pub forwarded_for: bool,
    /// Timeouts.
    pub timeouts: HttpTimeouts,
    /// Keepalive on client legs.
    pub keepalive: Option<Keepalive>,
    /// Splice or copy for upgraded connections.
    pub relay: RelayMode,
    /// Terminate TLS with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl HttpFrontendConfig {
    /// One backend of `servers` behind `bind`, HAProxy-like defaults, no TLS (for tests and tools).
    pub fn simple(bind: SocketAddr, servers: Vec<(String, SocketAddr)>) -> Self {
        let backend = ProxyConfig::simple(bind, servers);
        Self {
            frontend: backend.frontend.clone(),
            backends: vec![backend],
            routes: Vec::new(),
            default: Some(0),
            monitor_uri: None,
            forwarded_for: false,
            timeouts: HttpTimeouts::default(),
            keepalive: None,
            relay: RelayMode::Splice,
            tls: None,
        }
    }
}

/// Most idle connections kept per server.
const MAX_IDLE_PER_SERVER: usize = 64;

/// One worker's idle connections, per server: each with the time it became idle.
type IdleLists = Vec<Vec<(TcpStream, Instant)>>;

/// Idle keep-alive connections to the servers of one backend, newest reused first, kept per
/// session worker: a connection is registered with the reactor of the worker whose session
/// used it, so only sessions on that worker reuse it (no cross-thread wake-ups, no lock
/// contention between workers).
pub(crate) struct Pool {
    per_worker: Vec<Mutex<IdleLists>>,
    max_age: Duration,
    reused: AtomicU64,
}

impl Pool {
    fn new(servers: usize, max_age: Duration) -> Self {
        let workers = crate::runtime::session_workers().max(1);
        let per_worker = (0..workers).map(|_| Mutex::new((0..servers).map(|_| Vec::new()).collect())).collect();
        Self { per_worker, max_age, reused: AtomicU64::new(0) }
    }

    /// The calling worker's share.
    fn mine(&self) -> std::sync::MutexGuard<'_, IdleLists> {
        let i = crate::runtime::worker_index() % self.per_worker.len();
        self.per_worker[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live idle connection to server `idx`, if one is kept.
    pub(crate) fn take(&self, idx: usize) -> Option<TcpStream> {
        let mut idle = self.mine();
        let list = idle.get_mut(idx)?;
        while let Some((s, since)) = list.pop() {
            if since.elapsed() >= self.max_age {
                continue;
            }
            if quiet(&s) {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Some(s);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly.
    pub(crate) fn put(&self, idx: usize, s: TcpStream) {
        let mut idle = self.mine();
        let Some(list) = idle.get_mut(idx) else { return };
        let max_age = self.max_age;
        list.retain(|(_, since)| since.elapsed() < max_age);
        if list.len() >= MAX_IDLE_PER_SERVER {
            list.remove(0);
        }
        list.push((s, Instant::now()));
    }

    fn clear(&self) {
        for w in &self.per_worker {
            w.lock().unwrap_or_else(|p| p.into_inner()).iter_mut().for_each(Vec::clear);
        }
    }

    fn len(&self) -> usize {
        self.per_worker.iter().map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).iter().map(Vec::len).sum::<usize>()).sum()
    }
}

/// Whether an idle server connection is alive and silent (a FIN, a reset or stray bytes
/// disqualify it). The reactor already knows when nothing arrived since the connection's last
/// read drained it (its read readiness is clear): then no probe is needed, saving a recv(2)
/// that would only say EAGAIN on every reuse. Otherwise one non-blocking read decides.
fn quiet(s: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if s.poll_read_ready(&mut cx).is_pending() {
        return true;
    }
    let mut probe = [0u8; 1];
    matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Frontend-level HTTP counters.
#[derive(Debug, Default)]
pub(crate) struct FrontCounters {
    pub(crate) connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) request_timeouts: AtomicU64,
    pub(crate) no_route: AtomicU64,
    pub(crate) monitor: AtomicU64,
    pub(crate) upgrades: AtomicU64,
    pub(crate) reused: AtomicU64,
    pub(crate) connect_failed: AtomicU64,
    pub(crate) tls_failed: AtomicU64,
    pub(crate) bad_proxy_header: AtomicU64,
    answers: [AtomicU64; 6],
}

impl FrontCounters {
    pub(crate) fn generated(&self, a: Answer) {
        let i = match a {
            Answer::MonitorOk => return,
            Answer::BadRequest => 0,
            Answer::RequestTimeout => 1,
            Answer::BadGateway => 2,
            Answer::ServiceUnavailable => 3,
            Answer::GatewayTimeout => 4,
        };
        self.answers[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A point-in-time copy of an http frontend's own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpFrontendStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Request heads received (monitor-uri and rejected ones included).
    pub requests: u64,
    /// Malformed requests (answered 400).
    pub bad_requests: u64,
    /// Requests cut by `timeout http-request` (answered 408).
    pub request_timeouts: u64,
    /// Requests no route matched, with no default backend (503).
    pub no_route: u64,
    /// monitor-uri requests answered.
    pub monitor: u64,
    /// Connections upgraded to a tunnel (WebSocket, SPDY).
    pub upgrades: u64,
    /// Requests sent on a reused idle server connection.
    pub reused: u64,
    /// Requests for which no server connection could be made (503).
    pub connect_failed: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: u64,
    /// Missing or malformed PROXY headers (accept-proxy).
    pub bad_proxy_header: u64,
    /// Answers generated by the balancer: 400, 408, 502, 503, 504.
    pub generated: [u64; 5],
    /// Idle server connections kept now.
    pub idle_server_connections: usize,
}

/// Shared state of a running http frontend.
pub(crate) struct Front {
    pub(crate) cfg: HttpFrontendConfig,
    pub(crate) backends: Vec<Arc<Proxy>>,
    pub(crate) pools: Vec<Pool>,
    pub(crate) counters: FrontCounters,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) kill: watch::Sender<u64>,
    pub(crate) relay_mode: RelayMode,
    /// Reload: idle plain keep-alive connections go to this sender (the new process).
    pub(crate) handover: watch::Sender<Option<std::sync::mpsc::Sender<Outgoing>>>,
    /// Connections handed to a new process, and adopted from an old one.
    pub(crate) handed_over: AtomicU64,
    adopted: AtomicU64,
    /// maxconn over every listener (adopted connections take a slot too).
    sem: Arc<Semaphore>,
    alive: AtomicUsize,
    idle: Notify,
    /// Every client connection's signal, raised by the frontend-wide events (reload, drain,
    /// end of drain): a connection waits on its own signal, never on a channel shared by all.
    conns: Mutex<HashMap<u64, Arc<ConnSignal>>>,
    next_conn: AtomicU64,
}

/// Frontend-wide events a client connection reacts to (bits of [`ConnSignal`]).
pub(crate) mod conn_event {
    /// Reload: idle plain connections go to the new process.
    pub(crate) const HANDOVER: u8 = 1;
    /// Drain: idle connections close, the others after their exchange.
    pub(crate) const STOP: u8 = 2;
    /// End of the drain: every connection ends now.
    pub(crate) const KILL: u8 = 4;
}

/// One client connection's view of the frontend-wide events: sticky bits and the waker of the
/// connection's task. Raising it touches only this connection's memory, and waiting on it
/// costs no lock and no registration on state every connection shares (a watch channel per
/// cause cost two or three such registrations per request).
#[derive(Default)]
pub(crate) struct ConnSignal {
    bits: std::sync::atomic::AtomicU8,
    waker: futures::task::AtomicWaker,
}

impl ConnSignal {
    fn raise(&self, bits: u8) {
        if self.bits.fetch_or(bits, Ordering::AcqRel) & bits != bits {
            self.waker.wake();
        }
    }

    /// The events raised so far.
    pub(crate) fn get(&self) -> u8 {
        self.bits.load(Ordering::Acquire)
    }

    /// Resolves with the events raised once one of `mask` is.
    pub(crate) async fn wait(&self, mask: u8) -> u8 {
        std::future::poll_fn(|cx| {
            let b = self.get();
            if b & mask != 0 {
                return std::task::Poll::Ready(b);
            }
            self.waker.register(cx.waker());
            let b = self.get();
            if b & mask != 0 { std::task::Poll::Ready(b) } else { std::task::Poll::Pending }
        })
        .await
    }

    /// Whether the connection may stay open after its current exchange: the frontend is not
    /// stopping, or it is reloading and a plain connection can go to the new process.
    pub(crate) fn keeps_clients(&self, plain: bool) -> bool {
        let b = self.get();
        b & conn_event::STOP == 0 || (plain && b & conn_event::HANDOVER != 0)
    }
}

/// A connection's registration in [`Front::conns`], removed on drop.
pub(crate) struct ConnGuard<'a> {
    fe: &'a Front,
    id: u64,
    /// The connection's signal.
    pub(crate) signal: Arc<ConnSignal>,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.fe.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl Front {
    /// Registers a client connection for the frontend-wide events (those already raised are
    /// set on it at once).
    pub(crate) fn register_conn(&self) -> ConnGuard<'_> {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let signal = Arc::new(ConnSignal::default());
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(id, signal.clone());
        // An event raised before the insertion missed the table.
        let mut bits = 0;
        if self.handover.borrow().is_some() {
            bits |= conn_event::HANDOVER;
        }
        if *self.stop.borrow() {
            bits |= conn_event::STOP;
        }
        if *self.kill.borrow() != 0 {
            bits |= conn_event::KILL;
        }
        if bits != 0 {
            signal.raise(bits);
        }
        ConnGuard { fe: self, id, signal }
    }

    /// Raises `bits` on every registered connection.
    fn raise_all(&self, bits: u8) {
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).values() {
            c.raise(bits);
        }
    }

    /// Reload: hands an idle plain client connection (nothing buffered, nothing owed) to the new
    /// process. Returns the connection when there is no handover to give it to.
    pub(crate) fn hand_over(&self, sock: TcpStream, peer: SocketAddr, local: SocketAddr, fresh: bool) -> Result<(), TcpStream> {
        let Some(tx) = self.handover.borrow().clone() else { return Err(sock) };
        let fd = match sock.into_std() {
            Ok(s) => std::os::fd::OwnedFd::from(s),
            // Not registered any more: nothing to hand over, the connection closes.
            Err(_) => return Ok(()),
        };
        let c = HandedHttpClient { frontend: self.cfg.frontend.name.clone(), peer, local, fresh, client: fd };
        if tx.send(Outgoing::HttpClient(Box::new(c))).is_ok() {
            self.handed_over.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// monitor-uri: the default backend (or, without one, any backend) has a usable server; a
    /// monitor-only frontend (no backend at all) answers 200 while the process serves, as
    /// HAProxy's `monitor-uri` does.
    pub(crate) fn monitor_ok(&self) -> bool {
        if self.backends.is_empty() {
            return true;
        }
        match self.cfg.default {
            Some(i) => self.backends[i].has_usable_server(),
            None => self.backends.iter().any(|b| b.has_usable_server()),
        }
    }
}

/// A running http-mode frontend.
pub struct HttpFrontend {
    front: Arc<Front>,
    locals: Vec<SocketAddr>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    handover: Mutex<Vec<(SocketAddr, std::os::fd::OwnedFd)>>,
}

impl std::fmt::Debug for HttpFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFrontend").field("name", &self.front.cfg.frontend.name).field("locals", &self.locals).finish_non_exhaustive()
    }
}

impl Drop for HttpFrontend {
    fn drop(&mut self) {
        self.front.stop.send_replace(true);
        self.front.raise_all(conn_event::STOP);
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl HttpFrontend {
    /// Binds the listeners and starts every backend.
    pub async fn start(cfg: HttpFrontendConfig) -> Result<Self, ProxyError> {
        Self::start_inheriting(cfg, &mut Vec::new())
    }

    /// Like [`HttpFrontend::start`], on listeners handed over by the previous process where the
    /// address matches (taken out of `inherited`).
    pub fn start_inheriting(
        mut cfg: HttpFrontendConfig,
        inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> Result<Self, ProxyError> {
        let mut backends = Vec::with_capacity(cfg.backends.len());
        let mut pools = Vec::with_capacity(cfg.backends.len());
        let max_age = cfg.timeouts.http_keep_alive.max(Duration::from_millis(100));
        for b in std::mem::take(&mut cfg.backends) {
            let p = Proxy::start_with_listeners(b, Vec::new())?;
            pools.push(Pool::new(p.server_count(), max_age));
            backends.push(Arc::new(p));
        }
        let fe = cfg.frontend.clone();
        let (listeners, locals, handover) = crate::handover::listen(&fe, inherited)?;
        let relay_mode = cfg.relay;
        let front = Arc::new(Front {
            cfg,
            backends,
            pools,
            counters: FrontCounters::default(),
            stop: watch::channel(false).0,
            kill: watch::channel(0).0,
            relay_mode,
            handover: watch::channel(None).0,
            handed_over: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
            sem: Arc::new(Semaphore::new(fe.maxconn.max(1))),
            alive: AtomicUsize::new(0),
            idle: Notify::new(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        // The end of a drain (`kill` bumped by `wait_then_kill`) reaches every connection.
        let mut kill = front.kill.subscribe();
        let weak = Arc::downgrade(&front);
        tokio::spawn(async move {
            while kill.changed().await.is_ok() {
                match weak.upgrade() {
                    Some(fe) => fe.raise_all(conn_event::KILL),
                    None => return,
                }
            }
        });
        let tasks = listeners.into_iter().map(|l| tokio::spawn(accept_loop(front.clone(), l))).collect();
        Ok(Self { front, locals, tasks: Mutex::new(tasks), handover: Mutex::new(handover) })
    }

    /// Every bound address, `bind` first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// The first bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.locals.first().copied().unwrap_or(self.front.cfg.frontend.bind)
    }

    /// Frontend name.
    pub fn name(&self) -> &str {
        &self.front.cfg.frontend.name
    }

    /// Reload, old side: every idle plain keep-alive connection (now, and each one that becomes
    /// idle from now on) is sent to `to` as an [`Outgoing::HttpClient`] instead of being closed
    /// by the drain; exchanges in flight finish first, upgraded and TLS connections drain. Pair
    /// with [`HttpFrontend::drain`].
    pub fn hand_over_idle(&self, to: std::sync::mpsc::Sender<Outgoing>) {
        self.front.handover.send_replace(Some(to));
        self.front.raise_all(conn_event::HANDOVER);
    }

    /// Reload, new side: serves an idle client connection handed over by the old process.
    pub fn adopt(&self, c: HandedHttpClient) {
        let sock = match InFlight::from_fd(c.client) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot resume a handed-over http connection");
                return;
            }
        };
        let fe = self.front.clone();
        fe.adopted.fetch_add(1, Ordering::Relaxed);
        // Over maxconn it is served anyway: refusing would cut a connection the client holds.
        let permit = fe.sem.clone().try_acquire_owned().ok();
        let (peer, local, fresh) = (c.peer, c.local, c.fresh);
        spawn_connection(&fe, peer, permit, move |fe| async move {
            let Ok(sock) = sock.arrive() else { return };
            tune_client(&sock, fe.cfg.keepalive.as_ref());
            super::session::serve(fe, Client::Plain(sock), peer, local, Vec::new(), fresh).await;
        });
    }

    /// Idle connections handed to a new process, and adopted from an old one.
    pub fn handover_counts(&self) -> (u64, u64) {
        (self.front.handed_over.load(Ordering::Relaxed), self.front.adopted.load(Ordering::Relaxed))
    }

    /// The backends, in config order (for admin commands and stats).
    pub fn backends(&self) -> &[Arc<Proxy>] {
        &self.front.backends
    }

    /// One `show stat` snapshot per backend (request and response counters included).
    pub fn stats(&self) -> Vec<Stats> {
        self.front.backends.iter().map(|b| b.stats()).collect()
    }

    /// This frontend's own HTTP counters.
    pub fn http_stats(&self) -> HttpFrontendStats {
        let c = &self.front.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HttpFrontendStats {
            connections: g(&c.connections),
            requests: g(&c.requests),
            bad_requests: g(&c.bad_requests),
            request_timeouts: g(&c.request_timeouts),
            no_route: g(&c.no_route),
            monitor: g(&c.monitor),
            upgrades: g(&c.upgrades),
            reused: g(&c.reused),
            connect_failed: g(&c.connect_failed),
            tls_failed: g(&c.tls_failed),
            bad_proxy_header: g(&c.bad_proxy_header),
            generated: [0, 1, 2, 3, 4].map(|i| g(&c.answers[i])),
            idle_server_connections: self.front.pools.iter().map(Pool::len).sum(),
        }
    }

    /// Duplicates of the listening sockets (to hand over on reload).
    pub fn dup_listener_fds(&self) -> Vec<(SocketAddr, std::os::fd::OwnedFd)> {
        let h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().filter_map(|(a, fd)| fd.try_clone().ok().map(|d| (*a, d))).collect()
    }

    /// Graceful drain: stop accepting, close idle connections, let exchanges and tunnels finish
    /// for up to `grace`, then close the rest and stop the backends. Returns how many client
    /// connections were closed by force.
    pub async fn drain(&self, grace: Duration) -> usize {
        let fe = self.front.clone();
        fe.stop.send_replace(true);
        fe.raise_all(conn_event::STOP);
        self.handover.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        let forced = crate::proxy::wait_then_kill(&fe.alive, &fe.idle, &fe.kill, grace).await;
        for p in &fe.pools {
            p.clear();
        }
        for b in &fe.backends {
            b.drain(Duration::ZERO).await;
        }
        forced
    }
}

async fn accept_loop(fe: Arc<Front>, listener: TcpListener) {
    let mut stop = fe.stop.subscribe();
    let tls = fe.cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    while let Some((permit, sock, peer)) = next_connection(&listener, &fe.sem, &mut stop).await {
        fe.counters.connections.fetch_add(1, Ordering::Relaxed);
        let sock = match InFlight::new(sock) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot move the connection to a session worker");
                continue;
            }
        };
        let tls = tls.clone();
        spawn_connection(&fe, peer, Some(permit), move |fe| async move {
            if let Ok(sock) = sock.arrive() {
                connection(&fe, sock, peer, tls).await;
            }
        });
    }
}

/// Runs one client connection on its own task on a session worker (see
/// [`crate::runtime::spawn_session`]), counted for drain, holding its maxconn slot.
fn spawn_connection<F, Fut>(fe: &Arc<Front>, peer: SocketAddr, permit: Option<tokio::sync::OwnedSemaphorePermit>, f: F)
where
    F: FnOnce(Arc<Front>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    fe.alive.fetch_add(1, Ordering::AcqRel);
    let fe = fe.clone();
    let span = tracing::debug_span!("http", frontend = %fe.cfg.frontend.name, %peer);
    spawn_session_in(
        span,
        async move {
            f(fe.clone()).await;
            drop(permit);
            if fe.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
                fe.idle.notify_waiters();
            }
        },
    );
}

async fn connection(fe: &Arc<Front>, mut sock: TcpStream, peer: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) {
    tune_client(&sock, fe.cfg.keepalive.as_ref());
    let mut local = sock.local_addr().unwrap_or(fe.cfg.frontend.bind);
    let mut peer = peer;
    let mut early = Vec::new();
    let t = fe.cfg.timeouts.http_request;
    if fe.cfg.frontend.accept_proxy {
        // Behind TLS the header must be read exactly: the ClientHello follows it.
        let header = if tls.is_some() {
            tokio::time::timeout(t, read_proxy_exact(&mut sock)).await.map(|r| r.map(|h| (h, Vec::new())))
        } else {
            tokio::time::timeout(t, read_proxy(&mut sock)).await
        };
        match header {
            Ok(Ok((Header::Tcp { src, dst }, rest))) => {
                (peer, local, early) = (src, dst, rest);
            }
            Ok(Ok((Header::Local, rest))) => early = rest,
            _ => {
                fe.counters.bad_proxy_header.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let client = match tls {
        None => Client::Plain(sock),
        Some(acceptor) => match tls_accept(&acceptor, sock, t, &fe.counters.tls_failed, peer).await {
            Some(c) => c,
            None => return,
        },
    };
    super::session::serve(fe.clone(), client, peer, local, early, true).await;
}
