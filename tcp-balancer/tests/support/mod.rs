//! Loopback stand-ins for backends (echo, named, HTTP health endpoints, TLS, MySQL greeting)
//! and helpers shared by the integration tests. Everything binds 127.0.0.1 or ::1 only.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use tcp_balancer::proxy::{ProxyConfig, Redispatch};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a stand-in backend answers a connection.
#[derive(Clone)]
pub enum Kind {
    /// Echo every byte; FIN answered with FIN.
    Echo,
    /// Write the name, close.
    Name(&'static str),
    /// Read until the client's FIN, then answer "got N" and close.
    ReplyAfterEof,
    /// HTTP/1.x: `/healthz` answers the status held in the cell, other paths 200 with the name.
    Http(&'static str, Arc<AtomicU16>),
    /// Like `Http` but inside TLS.
    Https(&'static str, Arc<AtomicU16>, Arc<rustls::ServerConfig>),
    /// Send a MySQL protocol-10 greeting and wait.
    MysqlGreeting,
    /// Accept and hold, sending nothing.
    Silent,
    /// Read until the client's FIN, then keep the connection open and silent (a hung server).
    HoldAfterEof,
    /// Expect a PROXY header; answer "src dst|" then echo the rest until FIN.
    ProxyEcho,
}

/// A running stand-in backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
    kill: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(kind: Kind) -> Backend {
        Self::start_on("127.0.0.1:0".parse().unwrap(), kind).await
    }

    pub async fn start_on(addr: SocketAddr, kind: Kind) -> Backend {
        let l = TcpListener::bind(addr).await.expect("bind backend");
        let addr = l.local_addr().unwrap();
        let (kill, rx) = watch::channel(false);
        let accepted = Arc::new(AtomicU64::new(0));
        let acc = accepted.clone();
        let task = tokio::spawn(async move {
            let mut rx_l = rx.clone();
            loop {
                let (s, _) = tokio::select! {
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = rx_l.changed() => return,
                };
                acc.fetch_add(1, Ordering::Relaxed);
                let kind = kind.clone();
                let mut rx_c = rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(s, kind) => {},
                        _ = rx_c.changed() => {},
                    }
                });
            }
        });
        Backend { addr, accepted, kill, task }
    }

    /// Stops listening and drops every connection (as if the process died).
    pub fn kill(&self) {
        let _ = self.kill.send(true);
        self.task.abort();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(mut s: TcpStream, kind: Kind) {
    match kind {
        Kind::Echo => {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
        Kind::Name(n) => {
            let _ = s.write_all(n.as_bytes()).await;
            let _ = s.shutdown().await;
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Kind::ReplyAfterEof => {
            let mut n = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(_) => return,
                }
            }
            let _ = s.write_all(format!("got {n}").as_bytes()).await;
            let _ = s.shutdown().await;
        }
        Kind::Http(name, status) => http(s, name, status).await,
        Kind::Https(name, status, cfg) => {
            if let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                http(tls, name, status).await;
            }
        }
        Kind::MysqlGreeting => {
            let payload = b"\x0a8.0.36-standin\0\x2a\0\0\0abcdefgh\0\xff\xf7\x08\x02\0";
            let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
            p.push(0);
            p.extend_from_slice(payload);
            let _ = s.write_all(&p).await;
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Kind::ProxyEcho => {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let (h, len) = loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                match tcp_balancer::proxy_protocol::parse(&buf) {
                    Ok(Some(x)) => break x,
                    Ok(None) => continue,
                    Err(_) => return,
                }
            };
            let head = match h {
                tcp_balancer::proxy_protocol::Header::Tcp { src, dst } => format!("{src} {dst}|"),
                tcp_balancer::proxy_protocol::Header::Local => "local|".to_string(),
            };
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&buf[len..]).await;
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        }
        Kind::HoldAfterEof => {
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Kind::Silent => {
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, name: &str, status: Arc<AtomicU16>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 16 * 1024 {
            return;
        }
    }
    let line = String::from_utf8_lossy(&req);
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (code, body) = if path == "/healthz" || path == "/readyz" {
        (status.load(Ordering::Relaxed), "ok".to_string())
    } else {
        (200, name.to_string())
    };
    let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// A port on 127.0.0.1 with nothing listening (connects are refused).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A test proxy config: 127.0.0.1:0, short timeouts, fast retries.
pub fn config(servers: &[(&str, SocketAddr)]) -> ProxyConfig {
    let mut c = ProxyConfig::simple(
        "127.0.0.1:0".parse().unwrap(),
        servers.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
    );
    c.timeouts.connect = Duration::from_millis(500);
    c.timeouts.idle.client = Duration::from_secs(10);
    c.timeouts.idle.server = Duration::from_secs(10);
    c.backend.retry_delay = Duration::from_millis(10);
    c.backend.redispatch = Redispatch::BeforeLast(1);
    c
}

/// Connect, send `payload`, half-close, read everything back (bounded by 5 s).
pub async fn roundtrip(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(payload).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Deterministic test stream: byte `p` of the stream, built from a seeded 1 MiB block.
pub struct Pattern {
    block: Vec<u8>,
}

pub const BLOCK: usize = 1 << 20;

impl Pattern {
    pub fn new(seed: u64) -> Self {
        let mut x = seed | 1;
        let block = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Self { block }
    }
    /// Block `i` of the stream: the base block rotated, so no two neighbouring blocks repeat.
    pub fn block(&self, i: usize) -> (&[u8], &[u8]) {
        let r = (i * 4099) % BLOCK;
        (&self.block[r..], &self.block[..r])
    }
    /// Checks `data` found at stream offset `pos`.
    pub fn matches(&self, pos: usize, data: &[u8]) -> bool {
        let mut off = 0;
        while off < data.len() {
            let p = pos + off;
            let (i, within) = (p / BLOCK, p % BLOCK);
            let r = (i * 4099) % BLOCK;
            let n = (BLOCK - within).min(data.len() - off);
            // Byte `within` of the rotated block is base[(r + within) % BLOCK].
            let mut k = 0;
            while k < n {
                let start = (r + within + k) % BLOCK;
                let run = (BLOCK - start).min(n - k);
                if self.block[start..start + run] != data[off + k..off + k + run] {
                    return false;
                }
                k += run;
            }
            off += n;
        }
        true
    }
}

/// Whether tests that need an environment feature must fail instead of skipping (CI=true).
pub fn must_not_skip() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Waits until `f` holds, polling every 10 ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// A self-signed certificate for `names`, as a rustls server config and the PEM of the cert.
pub fn tls_server(names: &[&str]) -> (Arc<rustls::ServerConfig>, String) {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("rcgen");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    (Arc::new(cfg), ck.cert.pem())
}
