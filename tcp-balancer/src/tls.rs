//! TLS termination on a frontend, with rustls: the server config from PEM files (ALPN
//! `http/1.1` by default in http mode), and the tcp-mode frontend that decrypts and relays the
//! plaintext to its backend (http mode terminates in [`crate::http`]).
//!
//! Connection lifecycle (tcp mode): accept (below maxconn) → TLS handshake within `timeout
//! client` → lease a server from the backend (queue, retries, redispatch, PROXY header) →
//! copying tunnel (splice cannot read TLS) with `timeout tunnel` (or the larger of client and
//! server) as inactivity limit → close, or kill on shutdown-sessions / drain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::http::io::{Client, TunnelEnd, copy_tunnel};
use crate::proxy::{FrontendConfig, Proxy, ProxyConfig, ProxyError, Stats, bind_addr, next_connection, tune_client};

/// Why a TLS certificate or key could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("tls cert {path}: {reason}")]
    Cert {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is unreadable or holds no private key.
    #[error("tls key {path}: {reason}")]
    Key {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (key does not match, unsupported algorithm).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A rustls server config from a PEM certificate chain and a PEM private key, offering `alpn`.
pub fn server_config(cert: &Path, key: &Path, alpn: &[String]) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Cert { path: cert.to_path_buf(), reason };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate in file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_path_buf(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A tcp-mode frontend terminating TLS in front of one backend.
#[derive(Debug, Clone)]
pub struct TlsTcpConfig {
    /// The backend; its frontend part gives the listening side.
    pub proxy: ProxyConfig,
    /// The TLS server config.
    pub tls: Arc<ServerConfig>,
}

struct Shared {
    backend: Arc<Proxy>,
    stop: watch::Sender<bool>,
    kill: watch::Sender<u64>,
    alive: AtomicUsize,
    idle: Notify,
    handshake_failed: AtomicU64,
}

/// A running tcp-mode TLS-terminating frontend.
pub struct TlsTcpFrontend {
    shared: Arc<Shared>,
    frontend: FrontendConfig,
    locals: Vec<SocketAddr>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    handover: Mutex<Vec<(SocketAddr, std::os::fd::OwnedFd)>>,
}

impl std::fmt::Debug for TlsTcpFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTcpFrontend").field("name", &self.frontend.name).field("locals", &self.locals).finish_non_exhaustive()
    }
}

impl Drop for TlsTcpFrontend {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl TlsTcpFrontend {
    /// Binds (or inherits) the listeners and starts the backend.
    pub fn start_inheriting(
        cfg: TlsTcpConfig,
        inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> Result<Self, ProxyError> {
        let frontend = cfg.proxy.frontend.clone();
        let backend = Arc::new(Proxy::start_with_listeners(cfg.proxy, Vec::new())?);
        let addrs: Vec<SocketAddr> = std::iter::once(frontend.bind).chain(frontend.extra_binds.iter().copied()).collect();
        let listeners = crate::handover::take_or_bind(&addrs, inherited, |a| bind_addr(&frontend, a))
            .map_err(|source| ProxyError::Bind { frontend: frontend.name.clone(), addr: frontend.bind, source })?;
        let locals: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
        let handover = listeners
            .iter()
            .zip(&locals)
            .filter_map(|(l, &a)| std::os::fd::AsFd::as_fd(l).try_clone_to_owned().ok().map(|fd| (a, fd)))
            .collect();
        let shared = Arc::new(Shared {
            backend,
            stop: watch::channel(false).0,
            kill: watch::channel(0).0,
            alive: AtomicUsize::new(0),
            idle: Notify::new(),
            handshake_failed: AtomicU64::new(0),
        });
        let sem = Arc::new(Semaphore::new(frontend.maxconn.max(1)));
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.tls);
        let tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(shared.clone(), l, sem.clone(), acceptor.clone())))
            .collect();
        Ok(Self { shared, frontend, locals, tasks: Mutex::new(tasks), handover: Mutex::new(handover) })
    }

    /// Binds the listeners and starts the backend.
    pub async fn start(cfg: TlsTcpConfig) -> Result<Self, ProxyError> {
        Self::start_inheriting(cfg, &mut Vec::new())
    }

    /// Every bound address, `bind` first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// The backend (admin commands).
    pub fn backend(&self) -> &Arc<Proxy> {
        &self.shared.backend
    }

    /// `show stat` snapshot of the backend.
    pub fn stats(&self) -> Stats {
        self.shared.backend.stats()
    }

    /// TLS handshakes that failed or timed out.
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failed.load(Ordering::Relaxed)
    }

    /// Duplicates of the listening sockets (to hand over on reload).
    pub fn dup_listener_fds(&self) -> Vec<(SocketAddr, std::os::fd::OwnedFd)> {
        let h = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().filter_map(|(a, fd)| fd.try_clone().ok().map(|d| (*a, d))).collect()
    }

    /// Stop accepting, let sessions end for up to `grace`, then close the rest; returns how many
    /// were closed by force.
    pub async fn drain(&self, grace: Duration) -> usize {
        let sh = self.shared.clone();
        sh.stop.send_replace(true);
        self.handover.lock().unwrap_or_else(|p| p.into_inner()).clear();
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        let forced = crate::proxy::wait_then_kill(&sh.alive, &sh.idle, &sh.kill, grace).await;
        sh.backend.drain(Duration::ZERO).await;
        forced
    }
}

async fn accept_loop(sh: Arc<Shared>, l: TcpListener, sem: Arc<Semaphore>, acceptor: tokio_rustls::TlsAcceptor) {
    let mut stop = sh.stop.subscribe();
    while let Some((permit, sock, peer)) = next_connection(&l, &sem, &mut stop).await {
        sh.alive.fetch_add(1, Ordering::AcqRel);
        let sh2 = sh.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            session(&sh2, sock, peer, acceptor).await;
            drop(permit);
            if sh2.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
                sh2.idle.notify_waiters();
            }
        });
    }
}

async fn session(sh: &Shared, sock: TcpStream, peer: SocketAddr, acceptor: tokio_rustls::TlsAcceptor) {
    let be = &sh.backend;
    let t = be.timeouts();
    tune_client(&sock, be.keepalive().as_ref());
    let local = sock.local_addr().unwrap_or(peer);
    let mut client = match tokio::time::timeout(t.idle.client, acceptor.accept(sock)).await {
        Ok(Ok(s)) => Client::Tls(Box::new(s)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            sh.handshake_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            sh.handshake_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let Ok((lease, mut server, _)) = be.lease_connected(peer, local, |_| None).await else {
        return;
    };
    let idle = t.idle.tunnel.unwrap_or(t.idle.client.max(t.idle.server));
    let mut kill = lease.kill_signal();
    let mut fe_kill = sh.kill.subscribe();
    let kill_fut = async {
        tokio::select! {
            _ = kill.wait() => {},
            _ = fe_kill.changed() => {},
        }
    };
    let up = |n| lease.count_in(n);
    let down = |n| lease.count_out(n);
    match copy_tunnel(&mut client, &mut server, idle, &up, &down, kill_fut).await {
        TunnelEnd::Timeout => lease.count_timeout(),
        TunnelEnd::Killed => {
            lease.count_killed();
            let _ = socket2::SockRef::from(client.tcp()).set_linger(Some(Duration::ZERO));
            let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
        }
        TunnelEnd::Closed | TunnelEnd::Error => {}
    }
}
