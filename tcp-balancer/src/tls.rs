//! TLS termination on a frontend, with rustls: the server config from PEM files (ALPN
//! `http/1.1` by default in http mode), and the tcp-mode frontend that decrypts and relays the
//! plaintext to its backend (http mode terminates in [`crate::http`]).
//!
//! The certificate is chosen by the client's server name (SNI) among the frontend's certificates
//! ([`server_config_sni`]); in tcp mode the connection is then routed by that name too.
//!
//! Connection lifecycle (tcp mode): accept (below maxconn) → with accept-proxy, the PROXY header
//! read exactly (its client address is the session's) → TLS handshake within `timeout
//! client` (certificate by SNI) → first SNI route matching the handshake's server name, else the
//! default backend, else close → lease a server from that backend (queue, retries, redispatch, PROXY header) →
//! copying tunnel (splice cannot read TLS) with `timeout tunnel` (or the larger of client and
//! server) as inactivity limit → close, or kill on shutdown-sessions / drain.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::http::io::{TunnelEnd, copy_tunnel, tls_accept};
use crate::proxy::{FrontendConfig, Proxy, ProxyConfig, ProxyError, Stats, next_connection, read_proxy_exact, tune_client};
use crate::proxy_protocol::Header;
use crate::router::SniRoute;
use crate::sni::sni_matches;

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
    server_config_sni(cert, key, &[], alpn)
}

fn certified_key(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert { path: cert.to_path_buf(), reason };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate in file".into()));
    }
    if let Err(e) = ParsedCertificate::try_from(&chain[0]) {
        return Err(cert_err(format!("unusable certificate: {e}")));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_path_buf(), reason: e.to_string() })?;
    let ck = CertifiedKey::from_der(chain, key_der, provider)?;
    // A key that does not match its certificate would fail every handshake: refuse it now.
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(e) => Err(TlsError::Key { path: key.to_path_buf(), reason: format!("does not match {}: {e}", cert.display()) }),
    }
}

/// A rustls server config whose certificate is chosen by the client's server name (SNI): the
/// first of `sni_certs` whose names cover it, else the default `cert`/`key` (also for clients
/// that send no SNI).
pub fn server_config_sni(
    cert: &Path,
    key: &Path,
    sni_certs: &[(&Path, &Path)],
    alpn: &[String],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = Arc::new(certified_key(cert, key, &provider)?);
    let by_name = sni_certs
        .iter()
        .map(|(c, k)| certified_key(c, k, &provider).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { default, by_name }));
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Picks the certificate for a handshake by SNI (HAProxy's crt-list semantics, names taken from
/// each certificate itself).
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.and_then(|n| ServerName::try_from(n.to_string()).ok()) else {
            return self.default.clone();
        };
        self.by_name
            .iter()
            .find(|ck| {
                ck.end_entity_cert()
                    .ok()
                    .and_then(|c| ParsedCertificate::try_from(c).ok())
                    .is_some_and(|p| rustls::client::verify_server_name(&p, &name).is_ok())
            })
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// A tcp-mode frontend terminating TLS in front of its backends, routed by the client's SNI.
#[derive(Debug, Clone)]
pub struct TlsTcpConfig {
    /// The listening side.
    pub frontend: FrontendConfig,
    /// Routes by TLS server name, tried in order (their frontend part is unused).
    pub routes: Vec<SniRoute>,
    /// The backend of connections no route matches (`None`: they are closed).
    pub default: Option<ProxyConfig>,
    /// The TLS server config.
    pub tls: Arc<ServerConfig>,
}

impl TlsTcpConfig {
    /// One backend behind TLS (no SNI routes).
    pub fn single(proxy: ProxyConfig, tls: Arc<ServerConfig>) -> Self {
        Self { frontend: proxy.frontend.clone(), routes: Vec::new(), default: Some(proxy), tls }
    }
}

struct Shared {
    /// Route backends in order, then the default.
    backends: Vec<Arc<Proxy>>,
    /// Route patterns with the index of their backend.
    routes: Vec<(String, usize)>,
    default: Option<usize>,
    unrouted: AtomicU64,
    /// `accept-proxy`: a PROXY header precedes the ClientHello.
    accept_proxy: bool,
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
        let frontend = cfg.frontend.clone();
        let mut backends = Vec::new();
        let mut routes = Vec::new();
        for r in cfg.routes {
            routes.push((r.pattern, backends.len()));
            backends.push(Arc::new(Proxy::start_with_listeners(r.backend, Vec::new())?));
        }
        let default = match cfg.default {
            Some(p) => {
                backends.push(Arc::new(Proxy::start_with_listeners(p, Vec::new())?));
                Some(backends.len() - 1)
            }
            None => None,
        };
        let (listeners, locals, handover) = crate::handover::listen(&frontend, inherited)?;
        let shared = Arc::new(Shared {
            backends,
            routes,
            default,
            unrouted: AtomicU64::new(0),
            accept_proxy: frontend.accept_proxy,
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

    /// The backends, route order then the default (admin commands).
    pub fn backends(&self) -> &[Arc<Proxy>] {
        &self.shared.backends
    }

    /// One `show stat` snapshot per backend, route order then the default.
    pub fn stats(&self) -> Vec<Stats> {
        self.shared.backends.iter().map(|b| b.stats()).collect()
    }

    /// Connections closed because no route matched their server name and there is no default.
    pub fn unrouted(&self) -> u64 {
        self.shared.unrouted.load(Ordering::Relaxed)
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
        for b in &sh.backends {
            b.drain(Duration::ZERO).await;
        }
        forced
    }
}

async fn accept_loop(sh: Arc<Shared>, l: TcpListener, sem: Arc<Semaphore>, acceptor: tokio_rustls::TlsAcceptor) {
    let mut stop = sh.stop.subscribe();
    while let Some((permit, sock, peer)) = next_connection(&l, &sem, &mut stop).await {
        sh.alive.fetch_add(1, Ordering::AcqRel);
        let sh2 = sh.clone();
        let acceptor = acceptor.clone();
        // On a session worker, as tcp mode's sessions (see `crate::runtime::spawn_session`).
        let sock = match crate::runtime::InFlight::new(sock) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot move the connection to a session worker");
                drop(permit);
                if sh.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
                    sh.idle.notify_waiters();
                }
                continue;
            }
        };
        crate::runtime::spawn_session(async move {
            if let Ok(sock) = sock.arrive() {
                session(&sh2, sock, peer, acceptor).await;
            }
            drop(permit);
            if sh2.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
                sh2.idle.notify_waiters();
            }
        });
    }
}

async fn session(sh: &Shared, mut sock: TcpStream, mut peer: SocketAddr, acceptor: tokio_rustls::TlsAcceptor) {
    // Handshake limits come from the default backend's timeouts (all backends share them).
    let Some(first) = sh.backends.first() else { return };
    let t = first.timeouts();
    tune_client(&sock, first.keepalive().as_ref());
    let mut local = sock.local_addr().unwrap_or(peer);
    if sh.accept_proxy {
        // Exactly the header: the ClientHello that follows is the TLS acceptor's.
        match tokio::time::timeout(t.idle.client, read_proxy_exact(&mut sock)).await {
            Ok(Ok(Header::Tcp { src, dst })) => (peer, local) = (src, dst),
            Ok(Ok(Header::Local)) => {}
            other => {
                tracing::debug!(%peer, error = ?other.map_err(|_| "timeout"), "bad PROXY header");
                sh.handshake_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let Some(mut client) = tls_accept(&acceptor, sock, t.idle.client, &sh.handshake_failed, peer).await else { return };
    // Route by the server name the handshake was made for.
    let name = client.server_name();
    let target = match &name {
        Some(n) => sh.routes.iter().find(|(p, _)| sni_matches(p, n)).map(|&(_, i)| i).or(sh.default),
        None => sh.default,
    };
    let Some(be) = target.map(|i| &sh.backends[i]) else {
        tracing::debug!(%peer, sni = ?name, "no route");
        sh.unrouted.fetch_add(1, Ordering::Relaxed);
        return;
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
