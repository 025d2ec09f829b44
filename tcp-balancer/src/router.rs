//! TLS passthrough with routing by SNI (tcp mode): a listening frontend that reads the client's
//! ClientHello without terminating TLS, picks a backend by the server name, and hands the
//! connection, hello bytes included, to that backend's [`Proxy`].
//!
//! Connection lifecycle: accept (below the frontend's maxconn) → read until the ClientHello's
//! SNI is known (`timeout client`, at most [`crate::sni::MAX_HELLO`] bytes) → first route whose
//! pattern matches, else the default backend, else close → the backend's session lifecycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::proxy::{FrontendConfig, Proxy, ProxyConfig, ProxyError, Stats, next_connection};
use crate::sni::{MAX_HELLO, Sni, client_hello_sni, sni_matches};

/// One route: connections whose SNI matches `pattern` go to `backend`.
#[derive(Debug, Clone)]
pub struct SniRoute {
    /// Exact name or `*.suffix`.
    pub pattern: String,
    /// The backend (its frontend part is unused: the router listens).
    pub backend: ProxyConfig,
}

/// A running SNI router.
pub struct SniRouter {
    frontend: FrontendConfig,
    locals: Vec<SocketAddr>,
    /// Route patterns, each with the index of its proxy.
    routes: Vec<(String, usize)>,
    default: Option<usize>,
    proxies: Vec<Arc<Proxy>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    unrouted: Arc<AtomicU64>,
    /// Duplicates of the listening sockets for a reload handover.
    handover: Vec<(SocketAddr, std::os::fd::OwnedFd)>,
}

impl std::fmt::Debug for SniRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniRouter").field("frontend", &self.frontend.name).field("locals", &self.locals).finish_non_exhaustive()
    }
}

struct Table {
    routes: Vec<(String, usize)>,
    default: Option<usize>,
    proxies: Vec<Arc<Proxy>>,
    hello_timeout: Duration,
    unrouted: Arc<AtomicU64>,
}

impl SniRouter {
    /// Binds the frontend and starts every backend.
    pub async fn start(
        frontend: FrontendConfig,
        routes: Vec<SniRoute>,
        default: Option<ProxyConfig>,
        hello_timeout: Duration,
    ) -> Result<Self, ProxyError> {
        Self::start_inheriting(frontend, routes, default, hello_timeout, &mut Vec::new())
    }

    /// Like [`SniRouter::start`], on listeners handed over by the previous process where the
    /// address matches (taken out of `inherited`).
    pub fn start_inheriting(
        frontend: FrontendConfig,
        routes: Vec<SniRoute>,
        default: Option<ProxyConfig>,
        hello_timeout: Duration,
        inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> Result<Self, ProxyError> {
        let mut proxies = Vec::new();
        let mut table = Vec::new();
        for r in routes {
            let p = Proxy::start_with_listeners(r.backend, Vec::new())?;
            table.push((r.pattern, proxies.len()));
            proxies.push(Arc::new(p));
        }
        let default = match default {
            Some(cfg) => {
                proxies.push(Arc::new(Proxy::start_with_listeners(cfg, Vec::new())?));
                Some(proxies.len() - 1)
            }
            None => None,
        };
        let (listeners, locals, handover) = crate::handover::listen(&frontend, inherited)?;
        let (stop, _) = watch::channel(false);
        let unrouted = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Table {
            routes: table.clone(),
            default,
            proxies: proxies.clone(),
            hello_timeout,
            unrouted: unrouted.clone(),
        });
        let sem = Arc::new(Semaphore::new(frontend.maxconn.max(1)));
        let tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept(l, shared.clone(), sem.clone(), stop.subscribe())))
            .collect();
        Ok(Self { frontend, locals, routes: table, default, proxies, stop, tasks, unrouted, handover })
    }

    /// Every bound address, `bind` first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// The backend proxies, in route order then the default.
    pub fn proxies(&self) -> &[Arc<Proxy>] {
        &self.proxies
    }

    /// One snapshot per backend, in route order then the default.
    pub fn stats(&self) -> Vec<Stats> {
        self.proxies.iter().map(|p| p.stats()).collect()
    }

    /// Connections closed because no route matched and there is no default backend (or the
    /// client sent no ClientHello in time).
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }

    /// The backend proxy serving `name`, if any (for admin commands).
    pub fn proxy_for(&self, name: &str) -> Option<&Proxy> {
        self.routes
            .iter()
            .find(|(p, _)| sni_matches(p, name))
            .map(|&(_, i)| i)
            .or(self.default)
            .map(|i| &*self.proxies[i])
    }

    /// The listening sockets to hand to a new process.
    pub fn listener_fds(&self) -> Vec<(SocketAddr, std::os::fd::BorrowedFd<'_>)> {
        self.handover.iter().map(|(a, fd)| (*a, std::os::fd::AsFd::as_fd(fd))).collect()
    }

    /// Stops accepting, then drains every backend for up to `grace`.
    pub async fn drain(mut self, grace: Duration) -> usize {
        self.stop.send_replace(true);
        self.handover.clear();
        for t in &self.tasks {
            t.abort();
        }
        let mut forced = 0;
        for p in &self.proxies {
            forced += p.drain(grace).await;
        }
        forced
    }
}

async fn accept(l: TcpListener, t: Arc<Table>, sem: Arc<Semaphore>, mut stop: watch::Receiver<bool>) {
    while let Some((permit, sock, peer)) = next_connection(&l, &sem, &mut stop).await {
        let t = t.clone();
        tokio::spawn(async move {
            route(t, sock, peer, permit).await;
        });
    }
}


async fn read_hello(sock: &mut TcpStream) -> Option<(Sni, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        match client_hello_sni(&buf) {
            Ok(Sni::NeedMore) if buf.len() <= MAX_HELLO + 64 => continue,
            Ok(Sni::NeedMore) => return None,
            Ok(sni) => return Some((sni, buf)),
            // Not TLS or malformed: only the default backend may take it.
            Err(_) => return Some((Sni::Absent, buf)),
        }
    }
}

async fn route(t: Arc<Table>, mut sock: TcpStream, peer: SocketAddr, permit: tokio::sync::OwnedSemaphorePermit) {
    let Ok(Some((sni, early))) = tokio::time::timeout(t.hello_timeout, read_hello(&mut sock)).await else {
        t.unrouted.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let target = match &sni {
        Sni::Name(n) => t.routes.iter().find(|(p, _)| sni_matches(p, n)).map(|&(_, i)| i).or(t.default),
        _ => t.default,
    };
    match target {
        Some(i) => t.proxies[i].handle(sock, peer, early, permit),
        None => {
            tracing::debug!(%peer, ?sni, "no route");
            t.unrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
}
