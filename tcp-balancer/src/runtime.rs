//! The balancer daemon's core: every tcp-mode frontend of a `[balancer]` config running, with
//! the runtime API the control socket needs (`show stat`, `show sess`, `set server state`).

use std::time::Duration;

use thiserror::Error;

use crate::balance::AdminState;
use crate::config::BalancerConfig;
use crate::from_config::{MapError, TcpFrontend, tcp_frontends};
use crate::proxy::{Proxy, ProxyError, SessionInfo, Stats};
use crate::router::SniRouter;
use crate::http::HttpFrontend;
use crate::tls::TlsTcpFrontend;

/// Where tcp-mode and http-mode sessions run. By default on the runtime that accepted them; after
/// [`start_session_workers`], on one of N current-thread runtimes, each alone on its thread
/// (HAProxy's nbthread model): a session's wake-ups never cross threads and no idle worker is
/// woken to steal work, which a multi-thread scheduler pays in futex wake-ups on every burst.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    next: std::sync::atomic::AtomicUsize,
}

static WORKERS: std::sync::OnceLock<Workers> = std::sync::OnceLock::new();

thread_local! {
    /// This thread's session worker index (0 on any other thread).
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The session worker running the calling thread (0 off the workers): per-worker state such as
/// http mode's idle server connections is indexed by it, so a session only ever touches sockets
/// registered with its own thread's reactor.
pub(crate) fn worker_index() -> usize {
    WORKER_INDEX.with(std::cell::Cell::get)
}

/// Starts `n` session worker threads (at least one), each driving its own current-thread
/// runtime for the life of the process; every tcp-mode session accepted or adopted from then
/// on runs on one of them (round robin). Call once, before the balancer starts.
pub fn start_session_workers(n: usize) -> std::io::Result<usize> {
    let n = n.max(1);
    let mut handles = Vec::with_capacity(n);
    let mut runtimes = Vec::with_capacity(n);
    for _ in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        handles.push(rt.handle().clone());
        runtimes.push(rt);
    }
    WORKERS
        .set(Workers { handles, next: std::sync::atomic::AtomicUsize::new(0) })
        .map_err(|_| std::io::Error::other("session workers already started"))?;
    for (i, rt) in runtimes.into_iter().enumerate() {
        std::thread::Builder::new().name(format!("balancer-{i}")).spawn(move || {
            WORKER_INDEX.with(|w| w.set(i));
            rt.block_on(std::future::pending::<()>())
        })?;
    }
    Ok(n)
}

/// Session worker threads running (0 before [`start_session_workers`]).
pub fn session_workers() -> usize {
    WORKERS.get().map_or(0, |w| w.handles.len())
}

/// Runs a session on the next worker, or on the current runtime when none were started.
/// Sockets the future registers (see [`InFlight::arrive`]) are driven by that runtime.
pub(crate) fn spawn_session<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    spawn_on_worker(f)
}

/// [`spawn_session`] inside `span`, or without a span when it is disabled (debug logging off),
/// so a session's every wake-up does not enter and leave a span that records nothing.
pub(crate) fn spawn_session_in<F: std::future::Future<Output = ()> + Send + 'static>(span: tracing::Span, f: F) {
    if span.is_none() { spawn_on_worker(f) } else { spawn_on_worker(tracing::Instrument::instrument(f, span)) }
}

fn spawn_on_worker<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    match WORKERS.get() {
        Some(w) => {
            let i = w.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % w.handles.len();
            w.handles[i].spawn(f);
        }
        None => {
            tokio::spawn(f);
        }
    }
}

/// A connected socket on its way to the runtime that will drive it: taken off this runtime's
/// reactor only when sessions run on workers.
pub(crate) enum InFlight {
    Here(tokio::net::TcpStream),
    Moving(std::net::TcpStream),
}

impl InFlight {
    /// Prepares `s` for [`spawn_session`].
    pub(crate) fn new(s: tokio::net::TcpStream) -> std::io::Result<Self> {
        if WORKERS.get().is_some() { s.into_std().map(InFlight::Moving) } else { Ok(InFlight::Here(s)) }
    }

    /// A descriptor received from another process (non-blocking from here on).
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd) -> std::io::Result<Self> {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        Ok(InFlight::Moving(s))
    }

    /// The socket on the current runtime's reactor (call inside the spawned session).
    pub(crate) fn arrive(self) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            InFlight::Here(s) => Ok(s),
            InFlight::Moving(s) => tokio::net::TcpStream::from_std(s),
        }
    }
}

/// Why the balancer could not start or an admin command failed.
#[derive(Debug, Error)]
pub enum BalancerError {
    /// The config uses something the runtime cannot run.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A frontend could not start.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// No frontend uses a backend of that name.
    #[error("no running backend named {0}")]
    UnknownBackend(String),
}

/// All running frontends of one config.
#[derive(Debug)]
pub struct Balancer {
    proxies: Vec<Proxy>,
    routers: Vec<SniRouter>,
    http: Vec<HttpFrontend>,
    tls_tcp: Vec<TlsTcpFrontend>,
}

impl Balancer {
    /// Starts every frontend; if one fails, the ones already started are stopped.
    pub async fn start(cfg: &BalancerConfig) -> Result<Self, BalancerError> {
        Self::start_inheriting(cfg, &mut Vec::new()).await
    }

    /// Starts every frontend on the listeners handed over by the previous process where the
    /// addresses match (see [`crate::handover::recv_listeners`]); the rest are bound afresh and
    /// unused inherited listeners are left in `inherited` (the caller closes them).
    pub async fn start_inheriting(
        cfg: &BalancerConfig,
        inherited: &mut Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    ) -> Result<Self, BalancerError> {
        let mut me = Self { proxies: Vec::new(), routers: Vec::new(), http: Vec::new(), tls_tcp: Vec::new() };
        for f in tcp_frontends(cfg)? {
            let started = match f {
                TcpFrontend::Proxy(c) => Proxy::start_inheriting(c, inherited).map(|p| me.proxies.push(p)),
                TcpFrontend::Router { frontend, routes, default, hello_timeout } => {
                    SniRouter::start_inheriting(frontend, routes, default, hello_timeout, inherited)
                        .map(|r| me.routers.push(r))
                }
                TcpFrontend::Http(c) => HttpFrontend::start_inheriting(*c, inherited).map(|h| me.http.push(h)),
                TcpFrontend::TlsTcp(c) => TlsTcpFrontend::start_inheriting(*c, inherited).map(|t| me.tls_tcp.push(t)),
            };
            if let Err(e) = started {
                me.drain(Duration::ZERO).await;
                return Err(e.into());
            }
        }
        Ok(me)
    }

    /// The running single-backend frontends, in config order.
    pub fn proxies(&self) -> &[Proxy] {
        &self.proxies
    }

    /// The running SNI-routed frontends, in config order.
    pub fn routers(&self) -> &[SniRouter] {
        &self.routers
    }

    /// The running http-mode frontends, in config order.
    pub fn http_frontends(&self) -> &[HttpFrontend] {
        &self.http
    }

    /// Each http-mode frontend's own counters, by frontend name (see [`crate::stats::prometheus_http`]).
    pub fn http_stats(&self) -> Vec<(String, crate::http::HttpFrontendStats)> {
        self.http.iter().map(|h| (h.name().to_string(), h.http_stats())).collect()
    }

    /// The running tcp-mode frontends that terminate TLS, in config order.
    pub fn tls_tcp_frontends(&self) -> &[TlsTcpFrontend] {
        &self.tls_tcp
    }

    fn all(&self) -> impl Iterator<Item = &Proxy> {
        self.proxies
            .iter()
            .chain(self.routers.iter().flat_map(|r| r.proxies().iter().map(|p| &**p)))
            .chain(self.http.iter().flat_map(|h| h.backends().iter().map(|p| &**p)))
            .chain(self.tls_tcp.iter().flat_map(|t| t.backends().iter().map(|p| &**p)))
    }

    /// Sends every listening socket to the new process in one message (reload).
    pub fn hand_over_listeners(&self, to: &std::os::unix::net::UnixStream) -> std::io::Result<()> {
        let mut all: Vec<(std::net::SocketAddr, std::os::fd::BorrowedFd<'_>)> = Vec::new();
        for r in &self.routers {
            all.extend(r.listener_fds());
        }
        // Proxies lend duplicates: nothing a concurrent drain closes can be borrowed here.
        let owned: Vec<(std::net::SocketAddr, std::os::fd::OwnedFd)> = self
            .proxies
            .iter()
            .flat_map(|p| p.dup_listener_fds())
            .chain(self.http.iter().flat_map(|h| h.dup_listener_fds()))
            .chain(self.tls_tcp.iter().flat_map(|t| t.dup_listener_fds()))
            .collect();
        all.extend(owned.iter().map(|(a, fd)| (*a, std::os::fd::AsFd::as_fd(fd))));
        crate::handover::send_listeners(to, &all)
    }

    /// `show stat`: one snapshot per frontend.
    pub fn stats(&self) -> Vec<Stats> {
        self.all().map(Proxy::stats).collect()
    }

    /// `show sess`: (frontend name, session) pairs.
    pub fn sessions(&self) -> Vec<(String, SessionInfo)> {
        self.all()
            .flat_map(|p| {
                let fe = p.stats().frontend;
                p.sessions().into_iter().map(move |s| (fe.clone(), s))
            })
            .collect()
    }

    fn with_backend(&self, backend: &str, mut f: impl FnMut(&Proxy) -> Result<(), ProxyError>) -> Result<(), BalancerError> {
        let mut found = false;
        for p in self.all() {
            if p.backend_name() == backend {
                found = true;
                f(p)?;
            }
        }
        if found { Ok(()) } else { Err(BalancerError::UnknownBackend(backend.to_string())) }
    }

    /// `set server <backend>/<server> state ready|drain|maint`, on every frontend using it.
    pub fn set_server_state(&self, backend: &str, server: &str, state: AdminState) -> Result<(), BalancerError> {
        self.with_backend(backend, |p| p.set_server_state(server, state))
    }

    /// `shutdown sessions server <backend>/<server>`.
    pub fn shutdown_server_sessions(&self, backend: &str, server: &str) -> Result<(), BalancerError> {
        self.with_backend(backend, |p| p.shutdown_server_sessions(server))
    }

    /// Graceful stop of every frontend; returns the sessions closed by force.
    pub async fn drain(self, grace: Duration) -> usize {
        // All frontends drain at once: one shared grace period, not one per frontend.
        let mut waits: Vec<_> =
            self.proxies.into_iter().map(|p| tokio::spawn(async move { p.drain(grace).await })).collect();
        waits.extend(self.routers.into_iter().map(|r| tokio::spawn(r.drain(grace))));
        waits.extend(self.http.into_iter().map(|h| tokio::spawn(async move { h.drain(grace).await })));
        waits.extend(self.tls_tcp.into_iter().map(|t| tokio::spawn(async move { t.drain(grace).await })));
        let mut forced = 0;
        for w in waits {
            forced += w.await.unwrap_or(0);
        }
        forced
    }
}
