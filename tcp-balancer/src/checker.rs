//! The tokio driver of health checks: runs [`health::Conversation`]s over TCP or TLS and feeds
//! their results to a [`health::HealthCheck`] state machine.
//!
//! Checks belong to the backend, as in HAProxy: [`BackendChecks`] runs one checker per checked
//! server, however many frontends use the backend, and publishes each server's state
//! ([`ServerHealth`]) on a watch channel. Every frontend's copy of the backend follows it
//! ([`follow`]), so the servers see one check per interval and every frontend agrees on the
//! state.
//!
//! Lifecycle of a [`BackendChecks`]: **built** (probers prepared, CA files read: a bad one is a
//! config error; initial states from `init-state`) → **running** from the first
//! [`BackendChecks::subscribe`] inside a tokio runtime (one task per checked server, first checks
//! spread over one interval) → **stopped** when the last handle is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::health::{CheckKind, Conversation, HealthCheck, HealthEvent, HealthParams, Next, ProbeFailure};

/// How the server certificate of an HTTPS/TLS check is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsVerify {
    /// `verify none`: any certificate is accepted (the handshake itself is still checked).
    None,
    /// `ca-file <path>`: the chain must lead to a CA in this PEM file.
    CaFile(PathBuf),
}

/// `check-ssl`: run the check conversation inside TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTls {
    /// SNI and name to verify; `None` uses the server address (and sends no SNI).
    pub sni: Option<String>,
    /// Certificate verification.
    pub verify: TlsVerify,
}

/// Everything needed to probe one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// The conversation kind.
    pub kind: CheckKind,
    /// `port`: probe this port instead of the server's.
    pub port: Option<u16>,
    /// `check-ssl` settings.
    pub tls: Option<CheckTls>,
    /// `timeout check`: connect plus conversation; HAProxy uses `inter` when unset.
    pub timeout: Duration,
}

/// Why a probe failed, by stage.
#[derive(Debug, Error)]
pub enum CheckError {
    /// TCP connect failed.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// TLS handshake failed.
    #[error("tls handshake: {0}")]
    Tls(std::io::Error),
    /// I/O failed during the conversation.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The reply did not pass.
    #[error("{0}")]
    Probe(#[from] ProbeFailure),
    /// The check took longer than its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Why a TLS client config could not be built.
#[derive(Debug, Error)]
pub enum TlsConfigError {
    /// The CA file could not be read or holds no certificate.
    #[error("ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client config used for TLS checks.
pub fn tls_client_config(verify: &TlsVerify) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let prov = provider();
    let builder = ClientConfig::builder_with_provider(prov.clone()).with_safe_default_protocol_versions()?;
    let cfg = match verify {
        TlsVerify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(prov.signature_verification_algorithms)))
            .with_no_client_auth(),
        TlsVerify::CaFile(path) => {
            let err = |reason: String| TlsConfigError::CaFile { path: path.clone(), reason };
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no certificate in file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(cfg))
}

/// `verify none`: accepts any certificate but still checks handshake signatures, so the peer
/// must hold the key of the certificate it shows.
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A prepared probe: the spec plus its TLS config built once.
#[derive(Debug, Clone)]
pub struct Prober {
    spec: CheckSpec,
    tls: Option<Arc<ClientConfig>>,
}

impl Prober {
    /// Prepares a prober; fails only on a bad TLS setup (unreadable CA file).
    pub fn new(spec: CheckSpec) -> Result<Self, TlsConfigError> {
        let tls = spec.tls.as_ref().map(|t| tls_client_config(&t.verify)).transpose()?;
        Ok(Self { spec, tls })
    }

    /// The spec this prober runs.
    pub fn spec(&self) -> &CheckSpec {
        &self.spec
    }

    /// Runs one probe against `server` (its port is replaced by the check `port` if set).
    pub async fn probe(&self, server: SocketAddr) -> Result<(), CheckError> {
        let t = self.spec.timeout;
        match tokio::time::timeout(t, self.probe_inner(server)).await {
            Ok(r) => r,
            Err(_) => Err(CheckError::Timeout(t)),
        }
    }

    async fn probe_inner(&self, mut server: SocketAddr) -> Result<(), CheckError> {
        if let Some(p) = self.spec.port {
            server.set_port(p);
        }
        let tcp = TcpStream::connect(server).await.map_err(CheckError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let sni = self.spec.tls.as_ref().and_then(|t| t.sni.clone());
        let steps = self.spec.kind.steps(sni.as_deref());
        match (&self.tls, &self.spec.tls) {
            (Some(cfg), Some(t)) => {
                let name = match &t.sni {
                    Some(n) => ServerName::try_from(n.clone())
                        .map_err(|e| CheckError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?,
                    None => ServerName::IpAddress(server.ip().into()),
                };
                let conn = tokio_rustls::TlsConnector::from(cfg.clone());
                let tls = conn.connect(name, tcp).await.map_err(CheckError::Tls)?;
                converse(tls, steps).await
            }
            _ => converse(tcp, steps).await,
        }
    }
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, steps: Vec<crate::health::Step>) -> Result<(), CheckError> {
    let mut conv = Conversation::new(steps);
    let mut buf = [0u8; 4096];
    loop {
        match conv.next() {
            Next::Send(b) => {
                s.write_all(b).await.map_err(CheckError::Io)?;
                s.flush().await.map_err(CheckError::Io)?;
                conv.sent();
            }
            Next::Receive => {
                let n = s.read(&mut buf).await.map_err(CheckError::Io)?;
                if n == 0 {
                    conv.closed();
                } else {
                    conv.received(&buf[..n]);
                }
            }
            Next::Done(r) => {
                // Close politely; the verdict is already known.
                let _ = s.shutdown().await;
                return r.map_err(CheckError::Probe);
            }
        }
    }
}

/// Drives a health state machine with real probes until `stop` turns true (or its sender goes).
/// Every event other than `StartCheck` is handed to `on_event`, with the last probe error for
/// `ServerDown`.
pub async fn run_health_loop<F>(
    server: SocketAddr,
    prober: Prober,
    mut machine: HealthCheck,
    mut stop: watch::Receiver<bool>,
    mut on_event: F,
) where
    F: FnMut(HealthEvent, Option<&CheckError>) + Send,
{
    let mut last_err: Option<CheckError> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let now = tokio::time::Instant::now().into_std();
        machine.handle_timeout(now);
        let mut start = false;
        while let Some(ev) = machine.poll_event() {
            match ev {
                HealthEvent::StartCheck => start = true,
                other => on_event(other, last_err.as_ref()),
            }
        }
        if start {
            let r = tokio::select! {
                r = prober.probe(server) => r,
                _ = stop.changed() => return,
            };
            if let Err(e) = &r {
                tracing::debug!(%server, error = %e, "health check failed");
            }
            last_err = r.err();
            machine.on_result(tokio::time::Instant::now().into_std(), last_err.is_none());
            while let Some(ev) = machine.poll_event() {
                on_event(ev, last_err.as_ref());
            }
            continue;
        }
        let wake = machine.poll_timeout();
        tokio::select! {
            _ = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            } => {}
            r = stop.changed() => if r.is_err() { return },
        }
    }
}

/// What a server's (shared) health check says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHealth {
    /// The server passes its check (or is assumed up by `init-state`).
    pub up: bool,
    /// Effective weight (slowstart ramps it up).
    pub weight: u32,
    /// Bumped each time the server went down with `on-marked-down shutdown-sessions`.
    pub shutdowns: u64,
}

impl ServerHealth {
    /// The events that take a follower from `self` to `next`, in the order the state machine
    /// emits them (state change first, then the weight).
    pub fn events_to(self, next: ServerHealth) -> Vec<HealthEvent> {
        let mut ev = Vec::new();
        if next.up != self.up {
            ev.push(if next.up {
                HealthEvent::ServerUp
            } else {
                HealthEvent::ServerDown { shutdown_sessions: next.shutdowns != self.shutdowns }
            });
        } else if next.shutdowns != self.shutdowns {
            // Down and up again between two looks: the sessions still have to go.
            ev.push(HealthEvent::ServerDown { shutdown_sessions: true });
            ev.push(HealthEvent::ServerUp);
        }
        if next.weight != self.weight {
            ev.push(HealthEvent::WeightChanged(next.weight));
        }
        ev
    }
}

/// One server's checker, before it runs.
struct ServerCheck {
    name: String,
    addr: SocketAddr,
    prober: Prober,
    params: HealthParams,
    state: watch::Sender<ServerHealth>,
}

/// The health checks of one backend, shared by every frontend that uses it.
pub struct BackendChecks {
    backend: String,
    /// Indexed like the backend's servers; `None` for a server without `check`.
    servers: Vec<Option<watch::Receiver<ServerHealth>>>,
    /// Taken by the first subscriber, which starts the checkers.
    pending: std::sync::Mutex<Option<Vec<ServerCheck>>>,
    /// Dropped with the last handle: the checkers stop.
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for BackendChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendChecks").field("backend", &self.backend).field("checked", &self.checked()).finish_non_exhaustive()
    }
}

/// A server's check could not be prepared.
#[derive(Debug, Error)]
#[error("server {server}: check: {source}")]
pub struct CheckSetupError {
    /// The server.
    pub server: String,
    /// Why.
    #[source]
    pub source: TlsConfigError,
}

impl BackendChecks {
    /// Prepares the checks of `servers` (name, address, check); nothing runs yet.
    pub fn new<'a>(
        backend: &str,
        servers: impl IntoIterator<Item = (&'a str, SocketAddr, Option<&'a (CheckSpec, HealthParams)>)>,
    ) -> Result<Self, CheckSetupError> {
        let mut rxs = Vec::new();
        let mut pending = Vec::new();
        for (name, addr, check) in servers {
            let Some((spec, params)) = check else {
                rxs.push(None);
                continue;
            };
            let prober = Prober::new(spec.clone()).map_err(|source| CheckSetupError { server: name.to_string(), source })?;
            let m = HealthCheck::new(params.clone(), std::time::Instant::now());
            let (tx, rx) = watch::channel(ServerHealth { up: m.is_up(), weight: m.weight(), shutdowns: 0 });
            rxs.push(Some(rx));
            pending.push(ServerCheck { name: name.to_string(), addr, prober, params: params.clone(), state: tx });
        }
        Ok(Self { backend: backend.to_string(), servers: rxs, pending: std::sync::Mutex::new(Some(pending)), stop: watch::channel(false).0 })
    }

    /// How many servers are checked.
    pub fn checked(&self) -> usize {
        self.servers.iter().flatten().count()
    }

    /// Follows server `idx`'s state (`None`: not checked). The first call starts every checker
    /// of the backend; it must run inside a tokio runtime.
    pub fn subscribe(&self, idx: usize) -> Option<watch::Receiver<ServerHealth>> {
        let rx = self.servers.get(idx)?.clone()?;
        self.start();
        Some(rx)
    }

    fn start(&self) {
        let Some(pending) = self.pending.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let n = pending.len().max(1) as u32;
        for (k, c) in pending.into_iter().enumerate() {
            // Spread first checks over one interval so servers are not probed in a burst.
            let first = tokio::time::Instant::now().into_std() + c.params.inter / n * k as u32;
            let machine = HealthCheck::new(c.params, first);
            let (backend, name, state) = (self.backend.clone(), c.name, c.state);
            tokio::spawn(run_health_loop(c.addr, c.prober, machine, self.stop.subscribe(), move |ev, err| {
                if let (HealthEvent::ServerDown { .. }, Some(e)) = (ev, err) {
                    tracing::warn!(%backend, server = %name, reason = %e, "last check failed");
                }
                state.send_modify(|h| match ev {
                    HealthEvent::ServerUp => h.up = true,
                    HealthEvent::ServerDown { shutdown_sessions } => {
                        h.up = false;
                        if shutdown_sessions {
                            h.shutdowns += 1;
                        }
                    }
                    HealthEvent::WeightChanged(w) => h.weight = w,
                    HealthEvent::StartCheck => {}
                });
            }));
        }
    }
}

/// Feeds a server's shared state to one follower as events, from the state it last applied
/// (`applied`), until `stop` turns true or the checks stop.
pub async fn follow<F>(mut rx: watch::Receiver<ServerHealth>, mut applied: ServerHealth, mut stop: watch::Receiver<bool>, mut on_event: F)
where
    F: FnMut(HealthEvent) + Send,
{
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            r = stop.changed() => if r.is_err() { return } else { continue },
        }
        let now = *rx.borrow_and_update();
        for ev in applied.events_to(now) {
            on_event(ev);
        }
        applied = now;
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    #[test]
    fn events_replay_every_transition_a_follower_missed() {
        let h = |up, weight, shutdowns| ServerHealth { up, weight, shutdowns };
        assert!(h(true, 10, 0).events_to(h(true, 10, 0)).is_empty());
        assert_eq!(h(true, 10, 0).events_to(h(false, 10, 1)), vec![HealthEvent::ServerDown { shutdown_sessions: true }]);
        assert_eq!(h(true, 10, 0).events_to(h(false, 10, 0)), vec![HealthEvent::ServerDown { shutdown_sessions: false }]);
        assert_eq!(h(false, 10, 1).events_to(h(true, 1, 1)), vec![HealthEvent::ServerUp, HealthEvent::WeightChanged(1)]);
        // Down (with shutdown-sessions) and back up between two looks.
        assert_eq!(
            h(true, 10, 0).events_to(h(true, 10, 1)),
            vec![HealthEvent::ServerDown { shutdown_sessions: true }, HealthEvent::ServerUp]
        );
    }
}
