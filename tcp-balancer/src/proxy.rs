//! Mode tcp: one frontend (a listening address) in front of one backend (a server table).
//!
//! Session lifecycle:
//! 1. **accept** — only while the frontend is below its `maxconn` (otherwise connections wait in
//!    the kernel's backlog, as with HAProxy).
//! 2. **assign** — the balancer picks a server; when every eligible server is at its `maxconn`
//!    the session waits in the backend's bounded FIFO queue until a slot frees or
//!    `timeout queue` passes (then the client is closed). No eligible server: closed.
//! 3. **connect** — with `timeout connect`; on failure retried up to `retries` times, after a
//!    turn-around delay on the same server, or on another server when the redispatch policy
//!    says so (HAProxy's `option redispatch <interval>`).
//! 4. **relay** — zero-copy full-duplex relay ([`crate::relay`]) with half-close forwarded and
//!    client/server/tunnel/fin inactivity timeouts; killed when its server is marked down with
//!    `on-marked-down shutdown-sessions`, or at the end of a graceful drain.
//! 5. **close** — counters updated, the server's slot freed and the queue's head served.
//!
//! On a reload ([`Proxy::hand_over_sessions`]) a relaying session stops at a syscall boundary
//! and leaves this process with its sockets, pipes and state ([`crate::handover`]); a session
//! still connecting does the same once it reaches the relay. The new process resumes it in
//! step 4 ([`Proxy::adopt`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::balance::{AdminState, Algorithm, BalanceError, Decision, ServerSpec, ServerTable, hash_addr};
use crate::checker::{BackendChecks, CheckSpec, TlsConfigError, follow};
use crate::health::{HealthEvent, HealthParams};
use crate::proxy_protocol::{self, Header, Version as ProxyVersion};
use crate::handover::{HandedSession, Outgoing};
use crate::runtime::{InFlight, spawn_session_in};
use crate::relay::{ByteSink, IdleTimeouts, RelayEnd, RelayMode, RelayState, Side, Stop, StopSignal, relay_signal};

// Server legs for sessions relayed elsewhere (http mode, TLS termination); a child module so it
// shares the backend's private state.
#[path = "http/lease.rs"]
mod lease;
pub(crate) use lease::{read_proxy, read_proxy_exact};
pub use lease::{KillSignal, Lease, LeaseError, tune_client};

/// Session timeouts (HAProxy's `timeout` keywords).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `timeout connect`.
    pub connect: Duration,
    /// `timeout queue`; HAProxy uses `timeout connect` when unset.
    pub queue: Option<Duration>,
    /// Inactivity timeouts while relaying.
    pub idle: IdleTimeouts,
}

impl Default for Timeouts {
    /// kubeadm's HAProxy guide values: connect 5s, client/server 20s, tunnel unset.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            queue: None,
            idle: IdleTimeouts {
                client: Duration::from_secs(20),
                server: Duration::from_secs(20),
                tunnel: None,
                client_fin: None,
                server_fin: None,
            },
        }
    }
}

/// TCP keepalive and `TCP_USER_TIMEOUT`, applied to both legs so a dead peer is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Probes before the connection is dropped.
    pub count: u32,
    /// Longest time sent data may stay unacknowledged.
    pub user_timeout: Option<Duration>,
}

impl Default for Keepalive {
    /// Detects a dead peer in about a minute (30s + 3×10s), unacked data in 60s.
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
            user_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// When a failed connect is retried on another server (`option redispatch <interval>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redispatch {
    /// Always retry the same server.
    Off,
    /// Redispatch on every Nth retry (`option redispatch N`, N > 0).
    Every(u32),
    /// Redispatch on the Nth retry before the last (`option redispatch -N`; plain `option
    /// redispatch` is `BeforeLast(1)`: the last retry).
    BeforeLast(u32),
}

impl Redispatch {
    fn applies(self, retry: u32, retries: u32) -> bool {
        match self {
            Redispatch::Off => false,
            Redispatch::Every(n) => n > 0 && retry.is_multiple_of(n),
            Redispatch::BeforeLast(n) => retry + n.saturating_sub(1) == retries,
        }
    }
}

/// One server of the backend.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name, unique in the backend.
    pub name: String,
    /// Address the balancer connects to.
    pub addr: SocketAddr,
    /// Weight 0..=256.
    pub weight: u32,
    /// Backup server.
    pub backup: bool,
    /// Most concurrent sessions (`maxconn`); `None` is unlimited.
    pub maxconn: Option<u32>,
    /// `maxqueue`: with `source`, most sessions waiting for this server when it is at its
    /// maxconn; past it they are redispatched. `None` or 0: no per-server queue.
    pub maxqueue: Option<u32>,
    /// Health check (`check`) with its timing; `None` keeps the server always up.
    pub check: Option<(CheckSpec, HealthParams)>,
    /// `send-proxy` / `send-proxy-v2`: announce the client's address with a PROXY header.
    pub send_proxy: Option<ProxyVersion>,
}

/// The backend: servers, algorithm, queueing and retries.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Name.
    pub name: String,
    /// Balancing algorithm.
    pub algorithm: Algorithm,
    /// Servers.
    pub servers: Vec<ServerConfig>,
    /// Connect retries after the first failure (HAProxy default 3).
    pub retries: u32,
    /// Redispatch policy.
    pub redispatch: Redispatch,
    /// Delay before retrying the same server (HAProxy: min(timeout connect, 1s)).
    pub retry_delay: Duration,
    /// Most sessions waiting for a free server slot; 0 closes a session at once when every
    /// server is full.
    pub maxqueue: usize,
    /// Seed of the `random` algorithm.
    pub seed: u64,
    /// Long-lived connection rebalancing when a server comes back (opt-in).
    pub rebalance: Option<Rebalance>,
    /// The backend's health checks when shared with other frontends using it (built by
    /// [`crate::from_config`]); `None`: this proxy runs its own.
    pub checks: Option<Arc<crate::checker::BackendChecks>>,
}

/// Shed sessions piled on some servers so their clients reconnect evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebalance {
    /// Most sessions closed per second.
    pub rate_per_sec: u32,
    /// Only sessions at least this old are shed (short ones end by themselves).
    pub min_age: Duration,
}

/// The listening side.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Name.
    pub name: String,
    /// Listening address (IPv4 or IPv6).
    pub bind: SocketAddr,
    /// Further listening addresses sharing this frontend (e.g. the IPv6 twin of `bind`).
    pub extra_binds: Vec<SocketAddr>,
    /// Most concurrent sessions.
    pub maxconn: usize,
    /// listen(2) backlog.
    pub backlog: u32,
    /// IP_FREEBIND: bind even if the address is not (yet) local, e.g. a VIP held elsewhere.
    pub freebind: bool,
    /// SO_REUSEPORT: let a new process bind beside this one during a reload.
    pub reuseport: bool,
    /// `accept-proxy`: clients start with a PROXY header (v1 or v2) giving the real client.
    pub accept_proxy: bool,
}

/// A complete tcp-mode proxy (`listen` section).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Frontend.
    pub frontend: FrontendConfig,
    /// Backend.
    pub backend: BackendConfig,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Keepalive on both legs; `None` leaves the system defaults.
    pub keepalive: Option<Keepalive>,
    /// Splice or copy.
    pub relay: RelayMode,
}

impl ProxyConfig {
    /// A config with HAProxy-like defaults for the given listener and servers (roundrobin).
    pub fn simple(bind: SocketAddr, servers: Vec<(String, SocketAddr)>) -> Self {
        Self {
            frontend: FrontendConfig {
                name: "fe".into(),
                bind,
                extra_binds: Vec::new(),
                maxconn: 10_000,
                backlog: 1024,
                freebind: false,
                reuseport: false,
                accept_proxy: false,
            },
            backend: BackendConfig {
                name: "be".into(),
                algorithm: Algorithm::RoundRobin,
                servers: servers
                    .into_iter()
                    .map(|(name, addr)| ServerConfig {
                        name,
                        addr,
                        weight: 1,
                        backup: false,
                        maxconn: None,
                        maxqueue: None,
                        check: None,
                        send_proxy: None,
                    })
                    .collect(),
                retries: 3,
                redispatch: Redispatch::BeforeLast(1),
                retry_delay: Duration::from_secs(1),
                maxqueue: 1024,
                seed: 0,
                rebalance: None,
                checks: None,
            },
            timeouts: Timeouts::default(),
            keepalive: Some(Keepalive::default()),
            relay: RelayMode::Auto,
        }
    }
}

/// Why a proxy could not start or an admin command failed.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The listener could not be set up.
    #[error("frontend {frontend}: bind {addr}: {source}")]
    Bind {
        /// Frontend name.
        frontend: String,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The server table is invalid.
    #[error("backend {backend}: {source}")]
    Backend {
        /// Backend name.
        backend: String,
        /// Why.
        source: BalanceError,
    },
    /// A server's TLS check setup is invalid.
    #[error("server {server}: check: {source}")]
    Check {
        /// Server name.
        server: String,
        /// Why.
        source: TlsConfigError,
    },
    /// An admin command named an unknown server.
    #[error("no server named {0}")]
    UnknownServer(String),
}

/// Counters of the frontend or of one server (`show stat` columns).
#[derive(Debug, Default)]
pub struct Counters {
    cur: AtomicU32,
    max: AtomicU32,
    total: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connect_errors: AtomicU64,
    retries: AtomicU64,
    redispatches: AtomicU64,
    killed: AtomicU64,
    timeouts: AtomicU64,
    rebalanced: AtomicU64,
    http: crate::http::HttpCounters,
}

impl Counters {
    fn open(&self) {
        let c = self.cur.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(c, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }
    fn close(&self) {
        self.cur.fetch_sub(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> CounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            current: self.cur.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
            total: g(&self.total),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            connect_errors: g(&self.connect_errors),
            retries: g(&self.retries),
            redispatches: g(&self.redispatches),
            killed: g(&self.killed),
            timeouts: g(&self.timeouts),
            rebalanced: g(&self.rebalanced),
            http: self.http.snapshot(),
        }
    }
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    /// Current sessions.
    pub current: u32,
    /// Highest concurrent sessions seen.
    pub max: u32,
    /// Sessions since start.
    pub total: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
    /// Failed connects to servers.
    pub connect_errors: u64,
    /// Connect retries.
    pub retries: u64,
    /// Retries moved to another server.
    pub redispatches: u64,
    /// Sessions shut by the balancer (shutdown-sessions, hard stop).
    pub killed: u64,
    /// Sessions ended by an inactivity timeout.
    pub timeouts: u64,
    /// Sessions shed by long-lived connection rebalancing.
    pub rebalanced: u64,
    /// HTTP requests and responses by class (http mode).
    pub http: crate::http::HttpSnapshot,
}

/// Backend-level queue and failure counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendSnapshot {
    /// Sessions waiting in the queue now.
    pub queue_current: usize,
    /// Longest the queue has been.
    pub queue_max: usize,
    /// Sessions closed after `timeout queue`.
    pub queue_timeouts: u64,
    /// Sessions refused because the queue was full.
    pub queue_full: u64,
    /// Sessions closed because no server was eligible.
    pub no_server: u64,
    /// Sessions closed because every connect attempt failed.
    pub connect_failed: u64,
    /// Frontend connections closed for a missing or malformed PROXY header (`accept-proxy`).
    pub bad_proxy_header: u64,
}

/// One server's line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// Name.
    pub name: String,
    /// Address.
    pub addr: SocketAddr,
    /// `UP`, `DOWN`, `DRAIN` or `MAINT`.
    pub status: &'static str,
    /// Effective weight.
    pub weight: u32,
    /// Backup flag.
    pub backup: bool,
    /// Counters.
    pub counters: CounterSnapshot,
}

/// A `show stat`-like snapshot of the whole proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Frontend name.
    pub frontend: String,
    /// Frontend counters.
    pub frontend_counters: CounterSnapshot,
    /// Backend name.
    pub backend: String,
    /// Backend counters.
    pub backend_counters: BackendSnapshot,
    /// Servers in id order.
    pub servers: Vec<ServerStats>,
}

/// One established session (`show sess`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id.
    pub id: u64,
    /// Client address.
    pub client: SocketAddr,
    /// Server name.
    pub server: String,
    /// Time since the session was accepted.
    pub age: Duration,
}

struct Waiter {
    hash: u64,
    tx: oneshot::Sender<usize>,
}

struct BackendState {
    table: ServerTable,
    queue: VecDeque<Waiter>,
    /// Per-server queues (`maxqueue`), served before the backend's queue when a slot frees.
    server_queues: Vec<VecDeque<Waiter>>,
}

struct SessionEntry {
    client: SocketAddr,
    server: usize,
    since: Instant,
    /// Stops this one session (rebalancing, shutdown-sessions, hard stop, handover).
    kill: SessionKill,
}

/// How a session in the table is told to stop: through its own [`StopSignal`], raised by every
/// cause through the table. A tcp-mode relay may also be handed over; a leased session (http
/// mode, TLS termination: the caller relays) is only ever killed.
#[derive(Clone)]
enum SessionKill {
    Relay(Arc<StopSignal>),
    Lease(Arc<StopSignal>),
}

impl SessionKill {
    /// Rebalancing: close this one session.
    fn kill(&self) {
        self.raise(Stop::Kill);
    }

    /// Stops the session for `why` (a leased session ignores a handover: it is not frozen).
    fn raise(&self, why: Stop) {
        match (self, why) {
            (SessionKill::Relay(s), _) | (SessionKill::Lease(s), Stop::Kill) => s.raise(why),
            (SessionKill::Lease(_), Stop::HandOver) => {}
        }
    }
}

struct ServerRt {
    name: String,
    addr: SocketAddr,
    counters: Counters,
    /// Bumped to shut every session on this server.
    kill: watch::Sender<u64>,
}

#[derive(Default)]
struct BackendCounters {
    queue_max: AtomicUsize,
    queue_timeouts: AtomicU64,
    queue_full: AtomicU64,
    no_server: AtomicU64,
    connect_failed: AtomicU64,
    bad_proxy_header: AtomicU64,
}

struct Shared {
    cfg: ProxyConfig,
    state: Mutex<BackendState>,
    servers: Vec<ServerRt>,
    frontend: Counters,
    backend: BackendCounters,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    /// Wakes the rebalancer (a server came back).
    rebalance_kick: Notify,
    next_id: AtomicU64,
    /// Sessions alive (accepted, not yet closed), for drain.
    alive: AtomicUsize,
    idle: Notify,
    /// Stops accepting and health checks.
    stop: watch::Sender<bool>,
    /// Kills every session (end of drain).
    kill_all: watch::Sender<u64>,
    /// Set on reload: relaying sessions stop and go to this sender thread.
    handover: watch::Sender<Option<std::sync::mpsc::Sender<Outgoing>>>,
    /// Sessions handed to a new process, and sessions adopted from an old one.
    handed_over: AtomicU64,
    adopted: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BackendState> {
        // A panic while holding the lock would be a bug; the state stays usable either way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands free server slots to queued sessions, in FIFO order.
    fn dispatch(&self, st: &mut BackendState) {
        dispatch_server_queues(st);
        while let Some(w) = st.queue.front() {
            if w.tx.is_closed() {
                st.queue.pop_front();
                continue;
            }
            match st.table.pick(w.hash) {
                Decision::Server(i) => {
                    st.table.session_started(i);
                    let Some(w) = st.queue.pop_front() else { break };
                    if w.tx.send(i).is_err() {
                        st.table.session_ended(i);
                    }
                }
                Decision::AllFull => break,
                // Nothing can serve them: dropping the senders closes those clients now.
                Decision::NoServer => st.queue.clear(),
            }
        }
    }

    /// Raises `why` on every tcp-mode relay in the table that `pick` selects.
    fn stop_sessions(&self, why: Stop, pick: impl Fn(&SessionEntry) -> bool) {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for e in s.values().filter(|e| pick(e)) {
            e.kill.raise(why);
        }
    }

    /// Shuts every session on server `idx` (the watch tells sessions about to register).
    fn kill_server(&self, idx: usize) {
        self.servers[idx].kill.send_modify(|g| *g += 1);
        self.stop_sessions(Stop::Kill, |e| e.server == idx);
    }

    fn release(&self, idx: usize) {
        let mut st = self.lock();
        st.table.session_ended(idx);
        self.dispatch(&mut st);
    }

    fn on_health(&self, idx: usize, ev: HealthEvent) {
        let name = &self.servers[idx].name;
        match ev {
            HealthEvent::StartCheck => {}
            HealthEvent::ServerUp => {
                tracing::info!(backend = %self.cfg.backend.name, server = %name, "server is UP");
                let mut st = self.lock();
                st.table.set_up(idx, true);
                self.dispatch(&mut st);
                self.rebalance_kick.notify_one();
            }
            HealthEvent::ServerDown { shutdown_sessions } => {
                tracing::warn!(backend = %self.cfg.backend.name, server = %name, shutdown_sessions, "server is DOWN");
                {
                    let mut st = self.lock();
                    st.table.set_up(idx, false);
                    self.dispatch(&mut st);
                }
                if shutdown_sessions {
                    self.kill_server(idx);
                }
            }
            HealthEvent::WeightChanged(w) => {
                let mut st = self.lock();
                st.table.set_eweight(idx, w);
                self.dispatch(&mut st);
            }
        }
    }
}

/// A running tcp-mode proxy. Dropping it stops accepting and health checks (established
/// sessions run to their end); [`Proxy::drain`] also waits for them.
pub struct Proxy {
    shared: Arc<Shared>,
    local: SocketAddr,
    locals: Vec<SocketAddr>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Duplicates of the listening sockets, kept to hand over on reload; closed by drain.
    handover: Mutex<Vec<(SocketAddr, std::os::fd::OwnedFd)>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("local", &self.local).finish_non_exhaustive()
    }
}

/// Builds the listening socket: reuseaddr, optional reuseport and freebind, v6-only for v6.
pub fn bind_listener(fe: &FrontendConfig) -> std::io::Result<TcpListener> {
    bind_addr(fe, fe.bind)
}

pub(crate) fn bind_addr(fe: &FrontendConfig, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if fe.reuseport {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // A v6 listener must not grab the v4 port too: v4 has its own bind lines.
        sock.set_only_v6(true)?;
    }
    if fe.freebind {
        match addr {
            SocketAddr::V4(_) => sock.set_freebind_v4(true)?,
            SocketAddr::V6(_) => sock.set_freebind_v6(true)?,
        }
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(fe.backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(std::net::TcpListener::from(sock))
}

fn tune(sock: SockRef<'_>, ka: Option<&Keepalive>) {
    let _ = sock.set_tcp_nodelay(true);
    if let Some(ka) = ka {
        let params = TcpKeepalive::new().with_time(ka.idle).with_interval(ka.interval).with_retries(ka.count);
        if let Err(e) = sock.set_tcp_keepalive(&params) {
            tracing::debug!(error = %e, "cannot set TCP keepalive");
        }
        if let Err(e) = sock.set_tcp_user_timeout(ka.user_timeout) {
            tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
        }
    }
}

impl Proxy {
    /// Binds the frontend, starts health checks and the accept loop.
    pub async fn start(cfg: ProxyConfig) -> Result<Proxy, ProxyError> {
        let fe = &cfg.frontend;
        let mut listeners = Vec::with_capacity(1 + fe.extra_binds.len());
        for &addr in std::iter::once(&fe.bind).chain(&fe.extra_binds) {
            let l = bind_addr(fe, addr).map_err(|source| ProxyError::Bind { frontend: fe.name.clone(), addr, source })?;
            listeners.push(l);
        }
        Self::start_with_listeners(cfg, listeners)
    }

    /// Starts on already bound listeners (sockets handed over by a previous process); the
    /// first one's address is [`Proxy::local_addr`].
    pub fn start_with_listeners(cfg: ProxyConfig, listeners: Vec<TcpListener>) -> Result<Proxy, ProxyError> {
        let be = &cfg.backend;
        let specs = be
            .servers
            .iter()
            .map(|s| ServerSpec { name: s.name.clone(), weight: s.weight, backup: s.backup, maxconn: s.maxconn })
            .collect();
        let table = ServerTable::new(be.algorithm, specs, be.seed)
            .map_err(|source| ProxyError::Backend { backend: be.name.clone(), source })?;
        let checks = match &be.checks {
            Some(c) => c.clone(),
            None => Arc::new(
                BackendChecks::new(&be.name, be.servers.iter().map(|s| (s.name.as_str(), s.addr, s.check.as_ref())))
                    .map_err(|e| ProxyError::Check { server: e.server, source: e.source })?,
            ),
        };
        let locals = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ProxyError::Bind { frontend: cfg.frontend.name.clone(), addr: cfg.frontend.bind, source })?;
        let handover = listeners
            .iter()
            .zip(&locals)
            .filter_map(|(l, &a)| std::os::fd::AsFd::as_fd(l).try_clone_to_owned().ok().map(|fd| (a, fd)))
            .collect();
        // Without listeners (behind an SNI router) the configured address stands in.
        let local = locals.first().copied().unwrap_or(cfg.frontend.bind);
        let servers = be
            .servers
            .iter()
            .map(|s| ServerRt {
                name: s.name.clone(),
                addr: s.addr,
                counters: Counters::default(),
                kill: watch::channel(0).0,
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(BackendState { table, queue: VecDeque::new(), server_queues: Vec::new() }),
            servers,
            frontend: Counters::default(),
            backend: BackendCounters::default(),
            sessions: Mutex::new(HashMap::new()),
            rebalance_kick: Notify::new(),
            next_id: AtomicU64::new(1),
            alive: AtomicUsize::new(0),
            idle: Notify::new(),
            stop: watch::channel(false).0,
            kill_all: watch::channel(0).0,
            handover: watch::channel(None).0,
            handed_over: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
            // The proxy keeps the checks running as long as it lives.
            cfg: ProxyConfig { backend: BackendConfig { checks: Some(checks.clone()), ..cfg.backend }, ..cfg },
        });
        let mut tasks = Vec::new();
        // The backend's checks (shared with the other frontends using it) drive this table.
        for i in 0..shared.servers.len() {
            let Some(rx) = checks.subscribe(i) else { continue };
            let now = *rx.borrow();
            {
                let mut st = shared.lock();
                st.table.set_up(i, now.up);
                st.table.set_eweight(i, now.weight);
            }
            let sh = shared.clone();
            tasks.push(tokio::spawn(follow(rx, now, shared.stop.subscribe(), move |ev| sh.on_health(i, ev))));
        }
        // One frontend-wide maxconn over all its listeners.
        let sem = Arc::new(Semaphore::new(shared.cfg.frontend.maxconn.max(1)));
        for l in listeners {
            tasks.push(tokio::spawn(accept_loop(shared.clone(), l, sem.clone())));
        }
        if let Some(r) = shared.cfg.backend.rebalance {
            tasks.push(tokio::spawn(rebalancer(shared.clone(), r)));
        }
        tasks.push(tokio::spawn(kill_all_relays(shared.clone(), shared.kill_all.subscribe())));
        Ok(Proxy { shared, local, locals, tasks: Mutex::new(tasks), handover: Mutex::new(handover) })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Name of the backend this frontend uses.
    pub fn backend_name(&self) -> &str {
        &self.shared.cfg.backend.name
    }

    /// Starts on listeners handed over by the previous process where their address matches
    /// (taken out of `inherited`), binding the others.
    pub fn start_inheriting(
        cfg: ProxyConfig,
        inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> Result<Proxy, ProxyError> {
        let fe = cfg.frontend.clone();
        let addrs: Vec<SocketAddr> = std::iter::once(fe.bind).chain(fe.extra_binds.iter().copied()).collect();
        let listeners = crate::handover::take_or_bind(&addrs, inherited, |a| bind_addr(&fe, a))
            .map_err(|source| ProxyError::Bind { frontend: fe.name.clone(), addr: fe.bind, source })?;
        Self::start_with_listeners(cfg, listeners)
    }

    /// Sends this frontend's listening sockets to a new process (see [`crate::handover`]).
    pub fn hand_over_listeners(&self, to: &std::os::unix::net::UnixStream) -> std::io::Result<()> {
        self.with_listener_fds(|fds| crate::handover::send_listeners(to, fds))
    }

    /// Runs `f` over this frontend's listening sockets.
    fn with_listener_fds<R>(&self, f: impl FnOnce(&[(SocketAddr, std::os::fd::BorrowedFd<'_>)]) -> R) -> R {
        let h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        let fds: Vec<_> = h.iter().map(|(a, fd)| (*a, std::os::fd::AsFd::as_fd(fd))).collect();
        f(&fds)
    }

    /// Duplicates of the listening sockets (to gather several frontends' in one handover).
    pub fn dup_listener_fds(&self) -> Vec<(SocketAddr, std::os::fd::OwnedFd)> {
        let h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().filter_map(|(a, fd)| fd.try_clone().ok().map(|d| (*a, d))).collect()
    }

    /// Every bound address, `bind` first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// A `show stat`-like snapshot.
    pub fn stats(&self) -> Stats {
        let sh = &self.shared;
        let st = sh.lock();
        let servers = sh
            .servers
            .iter()
            .zip(st.table.servers())
            .map(|(rt, slot)| ServerStats {
                name: rt.name.clone(),
                addr: rt.addr,
                status: match (slot.admin(), slot.is_up()) {
                    (AdminState::Maint, _) => "MAINT",
                    (_, false) => "DOWN",
                    (AdminState::Drain, true) => "DRAIN",
                    (AdminState::Ready, true) => "UP",
                },
                weight: slot.eweight(),
                backup: slot.spec().backup,
                counters: rt.counters.snapshot(),
            })
            .collect();
        let b = &sh.backend;
        Stats {
            frontend: sh.cfg.frontend.name.clone(),
            frontend_counters: sh.frontend.snapshot(),
            backend: sh.cfg.backend.name.clone(),
            backend_counters: BackendSnapshot {
                queue_current: st.queue.iter().chain(st.server_queues.iter().flatten()).filter(|w| !w.tx.is_closed()).count(),
                queue_max: b.queue_max.load(Ordering::Relaxed),
                queue_timeouts: b.queue_timeouts.load(Ordering::Relaxed),
                queue_full: b.queue_full.load(Ordering::Relaxed),
                no_server: b.no_server.load(Ordering::Relaxed),
                connect_failed: b.connect_failed.load(Ordering::Relaxed),
                bad_proxy_header: b.bad_proxy_header.load(Ordering::Relaxed),
            },
            servers,
        }
    }

    /// Established sessions (`show sess`).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let s = self.shared.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<SessionInfo> = s
            .iter()
            .map(|(&id, e)| SessionInfo {
                id,
                client: e.client,
                server: self.shared.servers[e.server].name.clone(),
                age: e.since.elapsed(),
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    fn server_index(&self, name: &str) -> Result<usize, ProxyError> {
        self.shared
            .servers
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| ProxyError::UnknownServer(name.to_string()))
    }

    /// `set server <b>/<s> state ready|drain|maint`.
    pub fn set_server_state(&self, server: &str, state: AdminState) -> Result<(), ProxyError> {
        let i = self.server_index(server)?;
        let mut st = self.shared.lock();
        st.table.set_admin(i, state);
        self.shared.dispatch(&mut st);
        if state == AdminState::Ready {
            self.shared.rebalance_kick.notify_one();
        }
        Ok(())
    }

    /// `shutdown sessions server <b>/<s>`: closes every session on that server.
    pub fn shutdown_server_sessions(&self, server: &str) -> Result<(), ProxyError> {
        let i = self.server_index(server)?;
        self.shared.kill_server(i);
        Ok(())
    }

    /// Graceful drain: stop accepting and health checks, let sessions finish for up to `grace`,
    /// then close the rest. Returns how many were closed by force.
    pub async fn drain(&self, grace: Duration) -> usize {
        let sh = self.shared.clone();
        sh.stop.send_replace(true);
        self.handover.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let forced = wait_then_kill(&sh.alive, &sh.idle, &sh.kill_all, grace).await;
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        forced
    }

    /// Reload, old side: every relaying session (now, and each one that reaches the relay from
    /// now on) stops and is sent to `to` as an [`Outgoing::Session`] instead of being relayed
    /// here. Pair with [`Proxy::drain`], which stops accepting and waits for them to leave.
    pub fn hand_over_sessions(&self, to: std::sync::mpsc::Sender<Outgoing>) {
        self.shared.handover.send_replace(Some(to));
        // Sessions reaching the relay from now on see the watch; these are told here.
        self.shared.stop_sessions(Stop::HandOver, |_| true);
    }

    /// Reload, new side: resumes a session handed over by the old process. Fails (giving the
    /// session back) when this frontend's backend has no server of that name any more.
    pub fn adopt(&self, s: HandedSession) -> Result<(), Box<HandedSession>> {
        let sh = self.shared.clone();
        let Some(idx) = sh.servers.iter().position(|x| x.name == s.server) else { return Err(Box::new(s)) };
        let HandedSession { peer, age, timeouts, client, server_fd, relay, .. } = s;
        let (client, server) = match (InFlight::from_fd(client), InFlight::from_fd(server_fd)) {
            (Ok(c), Ok(s)) => (c, s),
            (c, s) => {
                tracing::warn!(client = ?c.err(), server = ?s.err(), "cannot resume a handed-over session");
                return Ok(());
            }
        };
        let alive = Alive::new(&sh);
        sh.adopted.fetch_add(1, Ordering::Relaxed);
        sh.frontend.open();
        sh.lock().table.session_started(idx);
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        let state = RelayState::thaw(relay);
        let span = tracing::debug_span!("session", frontend = %sh.cfg.frontend.name, %peer, adopted = true);
        spawn_session_in(
            span,
            async move {
                let sh = &alive.0;
                let slot = SlotGuard { sh, idx };
                match (client.arrive(), server.arrive()) {
                    (Ok(client), Ok(server)) => relay_phase(sh, id, client, server, peer, slot, since, timeouts, state).await,
                    (c, s) => {
                        tracing::warn!(client = ?c.err(), server = ?s.err(), "cannot resume a handed-over session");
                        sh.frontend.close();
                    }
                }
            },
        );
        Ok(())
    }

    /// Name of this frontend.
    pub fn frontend_name(&self) -> &str {
        &self.shared.cfg.frontend.name
    }

    /// Sessions handed to a new process, and sessions adopted from an old one.
    pub fn handover_counts(&self) -> (u64, u64) {
        (self.shared.handed_over.load(Ordering::Relaxed), self.shared.adopted.load(Ordering::Relaxed))
    }

    /// Serves a connection accepted elsewhere (an SNI router): `early` holds bytes already read
    /// from the client, sent to the server first; `guard` is dropped when the session ends.
    pub fn handle<G: Send + 'static>(&self, stream: TcpStream, peer: SocketAddr, early: Vec<u8>, guard: G) {
        let alive = Alive::new(&self.shared);
        let span = tracing::debug_span!("session", frontend = %self.shared.cfg.frontend.name, %peer);
        let stream = match InFlight::new(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot move the connection to a session worker");
                return;
            }
        };
        spawn_session_in(
            span,
            async move {
                if let Ok(stream) = stream.arrive() {
                    session(&alive.0, stream, peer, early).await;
                }
                drop(guard);
                drop(alive);
            },
        );
    }

    /// Immediate stop: closes the listener and every session.
    pub async fn stop(self) {
        self.drain(Duration::ZERO).await;
    }
}

/// Sheds sessions from the most overloaded server, one at a time at the configured rate, each
/// time a server comes back, until the spread is even.
async fn rebalancer(sh: Arc<Shared>, r: Rebalance) {
    let pause = Duration::from_secs(1) / r.rate_per_sec.max(1);
    let mut stop = sh.stop.subscribe();
    loop {
        tokio::select! {
            _ = sh.rebalance_kick.notified() => {},
            _ = stopped(&mut stop) => return,
        }
        loop {
            let target = {
                let st = sh.lock();
                crate::balance::most_overloaded(&st.table)
            };
            let Some(idx) = target else { break };
            // The oldest long-lived session there: the one most likely to have piled up.
            let victim = {
                let s = sh.sessions.lock().unwrap_or_else(|p| p.into_inner());
                s.values()
                    .filter(|e| e.server == idx && e.since.elapsed() >= r.min_age)
                    .min_by_key(|e| e.since)
                    .map(|e| e.kill.clone())
            };
            let Some(kill) = victim else { break };
            kill.kill();
            sh.servers[idx].counters.rebalanced.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {},
                _ = stopped(&mut stop) => return,
            }
        }
    }
}

/// Fans the end of a drain (`kill_all`, bumped by [`wait_then_kill`]) out to every relay.
async fn kill_all_relays(sh: Arc<Shared>, mut rx: watch::Receiver<u64>) {
    while rx.changed().await.is_ok() {
        sh.stop_sessions(Stop::Kill, |_| true);
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The next accepted connection with its maxconn permit: waits for a free slot first (so over
/// maxconn, connections wait in the kernel backlog), backs off briefly on accept errors (EMFILE and
/// friends) instead of spinning; `None` once `stop` turns true.
pub(crate) async fn next_connection(
    listener: &TcpListener,
    sem: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::sync::OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    loop {
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => p.ok()?,
            _ = stopped(stop) => return None,
        };
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => return Some((permit, sock, peer)),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = stopped(stop) => return None,
        }
    }
}

async fn accept_loop(sh: Arc<Shared>, listener: TcpListener, sem: Arc<Semaphore>) {
    let mut stop = sh.stop.subscribe();
    while let Some((permit, sock, peer)) = next_connection(&listener, &sem, &mut stop).await {
        let alive = Alive::new(&sh);
        let span = tracing::debug_span!("session", frontend = %sh.cfg.frontend.name, %peer);
        let sock = match InFlight::new(sock) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot move the connection to a session worker");
                continue;
            }
        };
        spawn_session_in(
            span,
            async move {
                if let Ok(sock) = sock.arrive() {
                    session(&alive.0, sock, peer, Vec::new()).await;
                }
                drop(permit);
                drop(alive);
            },
        );
    }
}

/// Counts a session in `alive` for as long as it lives (drain waits for the count to reach 0).
struct Alive(Arc<Shared>);

impl Alive {
    fn new(sh: &Arc<Shared>) -> Self {
        sh.alive.fetch_add(1, Ordering::AcqRel);
        Alive(sh.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if self.0.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Why a session could not get a server slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AssignError {
    NoServer,
    QueueFull,
    QueueTimeout,
}

async fn assign(sh: &Shared, hash: u64, exclude: Option<usize>) -> Result<usize, AssignError> {
    let mut rx = 'wait: {
        let mut st = sh.lock();
        if exclude.is_none()
            && let Some(i) = st.table.affine_full(hash)
            && let Some(rx) = enqueue_on_server(sh, &mut st, i, hash)
        {
            break 'wait rx;
        }
        match st.table.pick_excluding(hash, exclude) {
            Decision::Server(i) => {
                st.table.session_started(i);
                return Ok(i);
            }
            Decision::NoServer => return Err(AssignError::NoServer),
            Decision::AllFull => {
                // Waiters that gave up (queue timeout, client gone) hold no place.
                st.queue.retain(|w| !w.tx.is_closed());
                if st.queue.len() >= sh.cfg.backend.maxqueue {
                    return Err(AssignError::QueueFull);
                }
                let (tx, rx) = oneshot::channel();
                st.queue.push_back(Waiter { hash, tx });
                sh.backend.queue_max.fetch_max(st.queue.len(), Ordering::Relaxed);
                rx
            }
        }
    };
    let t = sh.cfg.timeouts.queue.unwrap_or(sh.cfg.timeouts.connect);
    match tokio::time::timeout(t, &mut rx).await {
        Ok(Ok(i)) => Ok(i),
        Ok(Err(_)) => Err(AssignError::NoServer),
        Err(_) => {
            // A slot may have been handed over just as the timer fired: keep it rather than leak it.
            rx.close();
            match rx.try_recv() {
                Ok(i) => Ok(i),
                Err(_) => Err(AssignError::QueueTimeout),
            }
        }
    }
}

async fn connect(addr: SocketAddr, t: Duration, ka: Option<&Keepalive>) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    tune(SockRef::from(&sock), ka);
    match tokio::time::timeout(t, sock.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Adds relayed bytes to the frontend's and the server's counters.
struct Sink<'a> {
    fe: &'a Counters,
    srv: &'a Counters,
}

impl ByteSink for Sink<'_> {
    fn client_to_server(&self, n: u64) {
        self.fe.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.srv.bytes_in.fetch_add(n, Ordering::Relaxed);
    }
    fn server_to_client(&self, n: u64) {
        self.fe.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.srv.bytes_out.fetch_add(n, Ordering::Relaxed);
    }
}

/// Frees the server slot however the session ends (including a panic or a kill).
struct SlotGuard<'a> {
    sh: &'a Shared,
    idx: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.sh.release(self.idx);
    }
}

/// Reads a PROXY header from a client; returns it with any bytes read past it.
async fn read_proxy_header(client: &mut TcpStream, mut buf: Vec<u8>) -> Result<(Header, Vec<u8>), std::io::Error> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut chunk = [0u8; 512];
    loop {
        match proxy_protocol::parse(&buf) {
            Ok(Some((h, len))) => return Ok((h, buf.split_off(len))),
            Ok(None) => {}
            Err(e) => return Err(bad(e.to_string())),
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn session(sh: &Shared, client: TcpStream, peer: SocketAddr, early_in: Vec<u8>) {
    // The setup's futures (PROXY header, queue, connect with retries, first bytes) are large and
    // short-lived. Boxed, they are freed before the relay starts, so a long-lived idle session
    // holds only the relay's state, not the largest setup step's.
    let Some((id, client, server, peer, slot)) = Box::pin(setup(sh, client, peer, early_in)).await else { return };
    relay_phase(sh, id, client, server, peer, slot, Instant::now(), sh.cfg.timeouts.idle, RelayState::new()).await;
}

/// Steps 1-3 of a session: the server connection ready for the relay, or `None` (counted and
/// closed).
async fn setup<'a>(
    sh: &'a Shared,
    mut client: TcpStream,
    peer: SocketAddr,
    early_in: Vec<u8>,
) -> Option<(u64, TcpStream, TcpStream, SocketAddr, SlotGuard<'a>)> {
    let cfg = &sh.cfg;
    sh.frontend.open();
    let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
    let ka = cfg.keepalive.as_ref();
    tune(SockRef::from(&client), ka);
    let local = client.local_addr().unwrap_or(cfg.frontend.bind);
    // The real client and the address it reached: from the PROXY header when one is expected.
    let (peer, local, early) = if cfg.frontend.accept_proxy {
        match tokio::time::timeout(cfg.timeouts.idle.client, read_proxy_header(&mut client, early_in)).await {
            Ok(Ok((Header::Tcp { src, dst }, rest))) => (src, dst, rest),
            Ok(Ok((Header::Local, rest))) => (peer, local, rest),
            Ok(Err(e)) => {
                tracing::debug!(id, %peer, error = %e, "bad PROXY header");
                sh.backend.bad_proxy_header.fetch_add(1, Ordering::Relaxed);
                sh.frontend.close();
                return None;
            }
            Err(_) => {
                sh.backend.bad_proxy_header.fetch_add(1, Ordering::Relaxed);
                sh.frontend.close();
                return None;
            }
        }
    } else {
        (peer, local, early_in)
    };
    let hash = hash_addr(peer.ip());

    let mut slot = match assign(sh, hash, None).await {
        Ok(i) => SlotGuard { sh, idx: i },
        Err(e) => {
            let c = match e {
                AssignError::NoServer => &sh.backend.no_server,
                AssignError::QueueFull => &sh.backend.queue_full,
                AssignError::QueueTimeout => &sh.backend.queue_timeouts,
            };
            c.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id, %peer, reason = ?e, "no server for session");
            sh.frontend.close();
            return None;
        }
    };
    let be = &cfg.backend;
    let mut retry = 0u32;
    let server = loop {
        let srv = &sh.servers[slot.idx];
        match connect(srv.addr, cfg.timeouts.connect, ka).await {
            Ok(s) => break s,
            Err(e) => {
                srv.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id, server = %srv.name, error = %e, retry, "connect failed");
                if retry >= be.retries {
                    sh.backend.connect_failed.fetch_add(1, Ordering::Relaxed);
                    sh.frontend.close();
                    return None;
                }
                retry += 1;
                srv.counters.retries.fetch_add(1, Ordering::Relaxed);
                if be.redispatch.applies(retry, be.retries) {
                    let failed = slot.idx;
                    // Free the slot first so a full server can be re-picked if it is the only one.
                    drop(slot);
                    match assign(sh, hash, Some(failed)).await {
                        Ok(i) => slot = SlotGuard { sh, idx: i },
                        Err(_) => {
                            sh.backend.connect_failed.fetch_add(1, Ordering::Relaxed);
                            sh.frontend.close();
                            return None;
                        }
                    }
                    if slot.idx != failed {
                        sh.servers[slot.idx].counters.redispatches.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    tokio::time::sleep(be.retry_delay.min(cfg.timeouts.connect)).await;
                }
            }
        }
    };
    let mut server = server;
    let srv = &sh.servers[slot.idx];
    tune(SockRef::from(&server), ka);
    // PROXY header first, then whatever the client sent along with its own header.
    let mut first = Vec::new();
    if let Some(v) = cfg.backend.servers[slot.idx].send_proxy {
        proxy_protocol::emit(&Header::Tcp { src: peer, dst: local }, v, &mut first);
    }
    first.extend_from_slice(&early);
    if !first.is_empty() {
        let w = tokio::time::timeout(cfg.timeouts.idle.server, server.write_all(&first)).await;
        if !matches!(w, Ok(Ok(()))) {
            tracing::debug!(id, server = %srv.name, "cannot send the first bytes to the server");
            sh.frontend.close();
            return None;
        }
        sh.frontend.bytes_in.fetch_add(early.len() as u64, Ordering::Relaxed);
        srv.counters.bytes_in.fetch_add(early.len() as u64, Ordering::Relaxed);
    }
    Some((id, client, server, peer, slot))
}

/// Step 4 and 5 of a session (fresh, or adopted after a handover).
#[allow(clippy::too_many_arguments)]
async fn relay_phase(
    sh: &Shared,
    id: u64,
    client: TcpStream,
    server: TcpStream,
    peer: SocketAddr,
    slot: SlotGuard<'_>,
    since: Instant,
    timeouts: IdleTimeouts,
    mut state: RelayState,
) {
    let srv = &sh.servers[slot.idx];
    srv.counters.open();
    // One stop signal, raised through the session table by every cause: an idle session waits
    // on its two sockets, its timer and this, nothing else.
    let signal = Arc::new(StopSignal::new());
    let (gen_srv, gen_all) = (*srv.kill.borrow(), *sh.kill_all.borrow());
    sh.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(
        id,
        SessionEntry { client: peer, server: slot.idx, since, kill: SessionKill::Relay(signal.clone()) },
    );
    // A cause raised between reading the generations and the insertion missed the table.
    if sh.handover.borrow().is_some() {
        signal.raise(Stop::HandOver);
    } else if *srv.kill.borrow() != gen_srv || *sh.kill_all.borrow() != gen_all {
        signal.raise(Stop::Kill);
    }
    let sink = Sink { fe: &sh.frontend, srv: &srv.counters };
    let end = relay_signal(&client, &server, sh.cfg.relay, timeouts, &sink, &signal, &mut state).await;
    if matches!(end, RelayEnd::HandOver) {
        let tx = sh.handover.borrow().clone();
        let (c_fd, s_fd) = (client.into_std().map(std::os::fd::OwnedFd::from), server.into_std().map(std::os::fd::OwnedFd::from));
        let sent = match (tx, c_fd, s_fd, state.freeze()) {
            (Some(tx), Ok(client), Ok(server_fd), Ok(relay)) => {
                let s = HandedSession {
                    frontend: sh.cfg.frontend.name.clone(),
                    backend: sh.cfg.backend.name.clone(),
                    server: srv.name.clone(),
                    peer,
                    age: since.elapsed(),
                    timeouts,
                    client,
                    server_fd,
                    relay,
                };
                tx.send(Outgoing::Session(Box::new(s))).is_ok()
            }
            _ => false,
        };
        if sent {
            sh.handed_over.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id, "session handed over");
        } else {
            // The sockets (if any survived) close as they drop here.
            tracing::warn!(id, "session could not be handed over; closed");
            srv.counters.killed.fetch_add(1, Ordering::Relaxed);
        }
        sh.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        srv.counters.close();
        sh.frontend.close();
        drop(slot);
        return;
    }
    match &end {
        RelayEnd::Closed | RelayEnd::HandOver => {}
        RelayEnd::Timeout(side) => {
            srv.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id, side = ?side, "session timed out");
        }
        RelayEnd::Killed => {
            srv.counters.killed.fetch_add(1, Ordering::Relaxed);
        }
        RelayEnd::Error(side, e) => {
            let side = match side {
                Side::Client => "client",
                Side::Server => "server",
            };
            tracing::debug!(id, side, error = %e, "session aborted");
        }
    }
    // Abortive close on a kill so both peers see the end at once (a watch client reconnects
    // immediately) rather than after lingering data.
    if matches!(end, RelayEnd::Killed) {
        let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
        let _ = SockRef::from(&server).set_linger(Some(Duration::ZERO));
    }
    sh.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    srv.counters.close();
    sh.frontend.close();
    drop(slot);
}

/// The end of every drain: waits up to `grace` for the `alive` sessions to end (each end notifies
/// `idle`), then tells the rest to stop through `kill` and waits (bounded) for them to go.
/// Returns how many were still alive at the deadline, i.e. closed by force.
pub(crate) async fn wait_then_kill(alive: &AtomicUsize, idle: &Notify, kill: &watch::Sender<u64>, grace: Duration) -> usize {
    let deadline = Instant::now() + grace;
    while alive.load(Ordering::Acquire) > 0 {
        let notified = idle.notified();
        if alive.load(Ordering::Acquire) == 0 || tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
    }
    let forced = alive.load(Ordering::Acquire);
    if forced > 0 {
        kill.send_modify(|g| *g += 1);
        // Killed sessions finish promptly; bounded anyway.
        let end = Instant::now() + Duration::from_secs(2);
        while alive.load(Ordering::Acquire) > 0 && Instant::now() < end {
            let _ = tokio::time::timeout(Duration::from_millis(20), idle.notified()).await;
        }
    }
    forced
}

/// Queues a session for server `i` (full, client-affine) when its `maxqueue` allows; `None`
/// when the server has no queue or it is full (the caller redispatches).
fn enqueue_on_server(sh: &Shared, st: &mut BackendState, i: usize, hash: u64) -> Option<oneshot::Receiver<usize>> {
    let cap = sh.cfg.backend.servers.get(i)?.maxqueue.filter(|&m| m > 0)? as usize;
    if st.server_queues.len() <= i {
        st.server_queues.resize_with(sh.servers.len(), VecDeque::new);
    }
    let q = &mut st.server_queues[i];
    q.retain(|w| !w.tx.is_closed());
    if q.len() >= cap {
        return None;
    }
    let (tx, rx) = oneshot::channel();
    q.push_back(Waiter { hash, tx });
    Some(rx)
}

/// Serves per-server queues from their own server's free slots; a server that can no longer
/// serve (down, maintenance) hands its waiters to the backend queue.
fn dispatch_server_queues(st: &mut BackendState) {
    for i in 0..st.server_queues.len() {
        while let Some(w) = st.server_queues[i].front() {
            if w.tx.is_closed() {
                st.server_queues[i].pop_front();
                continue;
            }
            let usable = st.table.server(i).is_some_and(|s| s.is_up() && s.admin() == AdminState::Ready);
            if !usable {
                let moved: Vec<Waiter> = st.server_queues[i].drain(..).collect();
                st.queue.extend(moved);
                break;
            }
            if !st.table.has_room(i) {
                break;
            }
            let Some(w) = st.server_queues[i].pop_front() else { break };
            st.table.session_started(i);
            if w.tx.send(i).is_err() {
                st.table.session_ended(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_legs_get_keepalive_and_user_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ka = Keepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            count: 4,
            user_timeout: Some(Duration::from_millis(9500)),
        };
        // The server leg is tuned before connect, the client leg after accept: check both.
        let sock = TcpSocket::new_v4().unwrap();
        tune(SockRef::from(&sock), Some(&ka));
        let out = sock.connect(l.local_addr().unwrap()).await.unwrap();
        let (inc, _) = l.accept().await.unwrap();
        tune(SockRef::from(&inc), Some(&ka));
        for s in [SockRef::from(&out), SockRef::from(&inc)] {
            assert!(s.keepalive().unwrap());
            assert_eq!(s.tcp_keepalive_time().unwrap(), ka.idle);
            assert_eq!(s.tcp_keepalive_interval().unwrap(), ka.interval);
            assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
            assert_eq!(s.tcp_user_timeout().unwrap(), ka.user_timeout);
            assert!(s.tcp_nodelay().unwrap());
        }
    }

    #[test]
    fn redispatch_policies() {
        // option redispatch (-1): the last retry only.
        let r = Redispatch::BeforeLast(1);
        assert_eq!((1..=3).map(|k| r.applies(k, 3)).collect::<Vec<_>>(), [false, false, true]);
        let r = Redispatch::BeforeLast(2);
        assert_eq!((1..=3).map(|k| r.applies(k, 3)).collect::<Vec<_>>(), [false, true, false]);
        let r = Redispatch::Every(2);
        assert_eq!((1..=4).map(|k| r.applies(k, 4)).collect::<Vec<_>>(), [false, true, false, true]);
        assert!(!(1..=3).any(|k| Redispatch::Off.applies(k, 3)));
        assert!(!Redispatch::Every(0).applies(1, 3));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// An idle session costs its task: the relay phase's future must stay small (the setup's
    /// larger futures are boxed and freed before it).
    #[tokio::test]
    async fn an_idle_session_holds_a_small_future() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = Proxy::start(ProxyConfig::simple("127.0.0.1:0".parse().unwrap(), vec![("a".into(), l.local_addr().unwrap())]))
            .await
            .unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (d, peer) = l.accept().await.unwrap();
        let f = session(&p.shared, c, peer, Vec::new());
        let session_size = std::mem::size_of_val(&f);
        drop(f);
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let slot = SlotGuard { sh: &p.shared, idx: 0 };
        let f = relay_phase(&p.shared, 1, c, d, peer, slot, Instant::now(), p.shared.cfg.timeouts.idle, RelayState::new());
        let relay_size = std::mem::size_of_val(&f);
        drop(f);
        eprintln!("session future {session_size} bytes, relay phase {relay_size} bytes");
        assert!(session_size <= relay_size + 256, "session {session_size} vs relay phase {relay_size}");
        // 2.4 KB before the relay became one plain future with one stop signal (1.0 KB in a debug build).
        assert!(relay_size < 1536, "relay phase future is {relay_size} bytes");
    }
}
