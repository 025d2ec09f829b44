//! http mode and TLS termination against real backends on loopback: keep-alive reuse, chunked
//! bodies byte-exact, a watch streaming, a WebSocket upgrade, X-Forwarded-For, host/path routing,
//! monitor-uri (a monitor-only frontend too), slowloris, a backend dying mid-run, the balancer's
//! own error answers, TLS termination in http and tcp mode with the certificate and the route
//! chosen by SNI, accept-proxy in front of TLS, and health checks shared by the frontends of one
//! backend. Every test is bounded in time; everything binds 127.0.0.1.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Pattern, eventually, tls_server};
use tcp_balancer::balance::AdminState;
use tcp_balancer::checker::{CheckSpec, CheckTls, TlsVerify};
use tcp_balancer::health::{CheckKind, HealthParams, HttpCheck, InitState, StatusMatch};
use tcp_balancer::http::{HttpFrontend, HttpFrontendConfig, HttpRoute, HttpTimeouts};
use tcp_balancer::proxy::{ProxyConfig, Redispatch};
use tcp_balancer::tls::{TlsTcpConfig, TlsTcpFrontend, server_config};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Starts the session workers the including test crate asks for: none for this file alone
/// (sessions on the test's runtime); `http_workers.rs` runs the same suite on two workers, as
/// `hastack balancer` runs it.
#[allow(dead_code)]
fn setup() {}

async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, f: F) {
    crate::setup();
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test exceeded its time bound");
}

// ---------------------------------------------------------------- the apiserver stand-in

/// A keep-alive HTTP/1.1 server: `/name`, `/healthz`, `/readyz`, `/echo` (POST; chunked or
/// content-length bodies, echoed back chunked), `/watch` (chunked events), `/ws` (upgrade, then
/// echo), `/garbage`, `/silent`. Optionally a TLS listener for health checks (`/readyz`).
struct Api {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// TCP connections accepted on the plain port.
    conns: Arc<AtomicU64>,
    /// Requests served.
    requests: Arc<AtomicU64>,
    /// Status of /healthz and /readyz.
    health: Arc<AtomicU16>,
    /// Watch events sent so far.
    events: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl Api {
    async fn start(name: &'static str) -> Api {
        Self::start_with(name, false).await
    }

    async fn start_with(name: &'static str, https_health: bool) -> Api {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let api = Api {
            addr,
            tls_addr: None,
            conns: Arc::default(),
            requests: Arc::default(),
            health: Arc::new(AtomicU16::new(200)),
            events: Arc::default(),
            stop,
        };
        let st = State { name, requests: api.requests.clone(), health: api.health.clone(), events: api.events.clone() };
        spawn_listener(l, st.clone(), api.conns.clone(), rx.clone(), None);
        let mut api = api;
        if https_health {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            api.tls_addr = Some(l.local_addr().unwrap());
            let (cfg, _) = tls_server(&["kubernetes"]);
            spawn_listener(l, st, Arc::default(), rx, Some(cfg));
        }
        api
    }

    /// The process dies: listeners closed and every connection dropped.
    fn kill(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone)]
struct State {
    name: &'static str,
    requests: Arc<AtomicU64>,
    health: Arc<AtomicU16>,
    events: Arc<AtomicU64>,
}

fn spawn_listener(l: TcpListener, st: State, conns: Arc<AtomicU64>, mut stop: watch::Receiver<bool>, tls: Option<Arc<rustls::ServerConfig>>) {
    tokio::spawn(async move {
        loop {
            let (s, _) = tokio::select! {
                r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                _ = stop.wait_for(|s| *s) => return,
            };
            let id = conns.fetch_add(1, Ordering::Relaxed) + 1;
            let st = st.clone();
            let mut stop = stop.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let conn = async {
                    match tls {
                        Some(cfg) => {
                            if let Ok(t) = tokio_rustls::TlsAcceptor::from(cfg).accept(s).await {
                                serve_http(t, st, id).await;
                            }
                        }
                        None => serve_http(s, st, id).await,
                    }
                };
                tokio::select! {
                    _ = conn => {},
                    _ = stop.wait_for(|s| *s) => {},
                }
            });
        }
    });
}

/// Reads one head (up to the blank line) into `buf`; returns its length.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, want: usize) -> Option<()> {
    let mut chunk = [0u8; 16384];
    while buf.len() < want {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

struct Head {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut h = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut h);
    r.parse(bytes).ok()?;
    Some(Head {
        method: r.method?.to_string(),
        path: r.path?.to_string(),
        headers: header_map(r.headers),
    })
}

/// Header names lowercased, values as text.
fn header_map(headers: &[httparse::Header<'_>]) -> HashMap<String, String> {
    headers.iter().map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned())).collect()
}

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, st: State, conn: u64) {
    let mut buf = Vec::new();
    loop {
        let Some(n) = read_head(&mut s, &mut buf).await else { return };
        let Some(h) = parse_head(&buf[..n]) else { return };
        buf.drain(..n);
        st.requests.fetch_add(1, Ordering::Relaxed);
        let xff = h.headers.get("x-forwarded-for").cloned().unwrap_or_default();
        let common = format!("X-Server: {}\r\nX-Conn: {conn}\r\nX-Saw-XFF: {xff}\r\n", st.name);
        match h.path.as_str() {
            "/healthz" | "/readyz" => {
                let code = st.health.load(Ordering::Relaxed);
                let r = format!("HTTP/1.1 {code} X\r\n{common}Content-Length: 2\r\n\r\nok");
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
            }
            "/echo" => {
                let body = if h.headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                    match read_chunked(&mut s, &mut buf).await {
                        Some(b) => b,
                        None => return,
                    }
                } else {
                    let len: usize = h.headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                    if fill(&mut s, &mut buf, len).await.is_none() {
                        return;
                    }
                    buf.drain(..len).collect()
                };
                // Echo back chunked, in uneven chunks.
                let mut out = format!("HTTP/1.1 200 OK\r\n{common}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
                for (i, c) in body.chunks(7919).enumerate() {
                    out.extend_from_slice(format!("{:x};i={i}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\nX-Trailer: done\r\n\r\n");
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
            "/watch" => {
                let r = format!("HTTP/1.1 200 OK\r\n{common}Transfer-Encoding: chunked\r\n\r\n");
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
                // Events until the client goes away (bounded: 600 × 50 ms).
                for i in 0..600u64 {
                    let ev = format!("{{\"type\":\"ADDED\",\"n\":{i}}}\n");
                    let c = format!("{:x}\r\n{ev}\r\n", ev.len());
                    if s.write_all(c.as_bytes()).await.is_err() {
                        return;
                    }
                    st.events.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return;
            }
            "/ws" => {
                let r = format!("HTTP/1.1 101 Switching Protocols\r\n{common}Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
                if !buf.is_empty() && s.write_all(&buf).await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown().await;
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            "/garbage" => {
                let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
                return;
            }
            "/silent" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            _ => {
                let body = st.name;
                let r = format!("HTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\n\r\n{body}", body.len());
                if s.write_all(r.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        let _ = h.method;
    }
}

// ---------------------------------------------------------------- a small HTTP client

struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, n: &str) -> &str {
        self.headers.get(n).map(String::as_str).unwrap_or("")
    }
}

struct Client<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(s: S) -> Self {
        Self { s, buf: Vec::new() }
    }

    async fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.s.write_all(raw).await?;
        self.s.flush().await
    }

    /// Reads one response (body decoded); `None` if the connection ended first.
    async fn response(&mut self) -> Option<Resp> {
        let n = read_head(&mut self.s, &mut self.buf).await?;
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut h);
        r.parse(&self.buf[..n]).ok()?;
        let status = r.code?;
        let headers = header_map(r.headers);
        self.buf.drain(..n);
        let body = if status == 101 || status == 204 || status == 304 {
            Vec::new()
        } else if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            read_chunked(&mut self.s, &mut self.buf).await?
        } else if let Some(len) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            fill(&mut self.s, &mut self.buf, len).await?;
            self.buf.drain(..len).collect()
        } else {
            let mut rest = std::mem::take(&mut self.buf);
            self.s.read_to_end(&mut rest).await.ok()?;
            rest
        };
        Some(Resp { status, headers, body })
    }

    async fn get(&mut self, path: &str) -> Option<Resp> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: api.example\r\n\r\n").as_bytes()).await.ok()?;
        self.response().await
    }
}

/// Decodes a chunked body from `buf` + `s`, skipping trailer lines; leaves the bytes after it in
/// `buf`.
async fn read_chunked<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let l = buf.len();
            fill(s, buf, l + 1).await?;
        };
        let line = std::str::from_utf8(&buf[..line_end]).ok()?.to_string();
        buf.drain(..line_end + 2);
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    let l = buf.len();
                    fill(s, buf, l + 1).await?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        fill(s, buf, size + 2).await?;
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    Client::new(TcpStream::connect(addr).await.expect("connect to the balancer"))
}

// ---------------------------------------------------------------- balancer configs

fn backend(name: &str, servers: &[(&str, SocketAddr)]) -> ProxyConfig {
    let mut c = ProxyConfig::simple("127.0.0.1:0".parse().unwrap(), servers.iter().map(|(n, a)| (n.to_string(), *a)).collect());
    c.frontend.name = "fe".into();
    c.backend.name = name.into();
    c.timeouts.connect = Duration::from_millis(500);
    c.timeouts.idle.client = Duration::from_secs(5);
    c.timeouts.idle.server = Duration::from_secs(5);
    c.backend.retry_delay = Duration::from_millis(10);
    c.backend.redispatch = Redispatch::BeforeLast(1);
    c
}

fn http_config(backends: Vec<ProxyConfig>) -> HttpFrontendConfig {
    let mut c = HttpFrontendConfig::simple("127.0.0.1:0".parse().unwrap(), Vec::new());
    c.frontend.name = "fe".into();
    c.backends = backends;
    c.default = Some(0);
    c.timeouts = HttpTimeouts {
        http_request: Duration::from_secs(2),
        http_keep_alive: Duration::from_secs(2),
        client: Duration::from_secs(5),
        server: Duration::from_secs(5),
        tunnel: None,
    };
    c
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_on_both_sides_reuses_server_connections() {
    bounded(20, async {
        let api = Api::start("a").await;
        let fe = HttpFrontend::start(http_config(vec![backend("be", &[("a", api.addr)])])).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        for i in 0..20 {
            let r = c.get(&format!("/name?{i}")).await.expect("response");
            assert_eq!((r.status, r.body.as_slice()), (200, &b"a"[..]));
            assert_eq!(r.header("connection"), "", "a keep-alive answer carries no Connection: close");
        }
        // A second client connection reuses the idle server connection too.
        let mut c2 = connect(fe.local_addr()).await;
        assert_eq!(c2.get("/name").await.unwrap().status, 200);
        // Idle server connections are kept per session worker: the second client reuses one
        // only if it runs on the first one's worker.
        let conns = api.conns.load(Ordering::Relaxed);
        if tcp_balancer::runtime::session_workers() > 1 {
            assert!((1..=2).contains(&conns), "{conns} server connections for 21 requests on two clients");
        } else {
            assert_eq!(conns, 1, "one server connection for 21 requests");
        }
        assert_eq!(api.requests.load(Ordering::Relaxed), 21);
        let st = fe.http_stats();
        assert_eq!(st.requests, 21);
        assert_eq!(st.reused, 21 - conns);
        let s = &fe.stats()[0];
        assert_eq!(s.servers[0].counters.http.requests, 21);
        assert_eq!(s.servers[0].counters.http.responses[1], 21, "21 2xx");
        // HTTP/1.0 without keep-alive: answered with Connection: close, then closed.
        c2.send(b"GET /name HTTP/1.0\r\n\r\n").await.unwrap();
        let r = c2.response().await.unwrap();
        assert_eq!(r.header("connection"), "close");
        let mut rest = Vec::new();
        assert_eq!(c2.s.read_to_end(&mut rest).await.unwrap(), 0);
        // Pipelined requests are answered in order.
        c.send(b"GET /name?1 HTTP/1.1\r\nHost: x\r\n\r\nGET /name?2 HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(c.response().await.unwrap().status, 200);
        assert_eq!(c.response().await.unwrap().status, 200);
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_length_bodies_are_byte_exact_both_ways() {
    bounded(30, async {
        let api = Api::start("a").await;
        let fe = HttpFrontend::start(http_config(vec![backend("be", &[("a", api.addr)])])).await.unwrap();
        let seed = 0x5eed_0001u64;
        let pat = Pattern::new(seed);
        let (a, b) = pat.block(0);
        let body: Vec<u8> = a.iter().chain(b).copied().take(3 << 19).collect();
        let mut c = connect(fe.local_addr()).await;
        // Chunked upload in uneven chunk sizes, with an extension.
        let mut req = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let mut off = 0;
        let mut k = 1usize;
        while off < body.len() {
            let n = (k * 7717 % 65_000 + 1).min(body.len() - off);
            req.extend_from_slice(format!("{n:x};k={k}\r\n").as_bytes());
            req.extend_from_slice(&body[off..off + n]);
            req.extend_from_slice(b"\r\n");
            off += n;
            k += 1;
        }
        req.extend_from_slice(b"0\r\n\r\n");
        // The server reads the whole body before answering: no need to read while writing.
        c.send(&req).await.unwrap();
        let r = c.response().await.expect("echo response");
        assert_eq!(r.status, 200);
        assert!(r.body == body, "chunked echo differs (seed {seed:#x}, {} vs {} bytes)", r.body.len(), body.len());
        // Content-Length upload on the same connection.
        let mut req = format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(&body[..100_000]);
        req.extend_from_slice(&body[100_000..]);
        c.send(&req).await.unwrap();
        let r = c.response().await.unwrap();
        assert!(r.body == body, "length echo differs (seed {seed:#x})");
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_streams_events_as_they_happen() {
    bounded(20, async {
        let api = Api::start("a").await;
        let fe = HttpFrontend::start(http_config(vec![backend("be", &[("a", api.addr)])])).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        c.send(b"GET /watch HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let n = read_head(&mut c.s, &mut c.buf).await.unwrap();
        let head = String::from_utf8_lossy(&c.buf[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("Transfer-Encoding: chunked"), "{head}");
        c.buf.drain(..n);
        // Each event arrives while the server is still producing (not buffered to the end: the
        // server sends 600, one per 50 ms). The slack of 10 events (500 ms) is for a loaded
        // machine's scheduling stalls, not for buffering.
        for i in 0..5 {
            let ev = read_one_chunk(&mut c).await;
            assert!(ev.contains(&format!("\"n\":{i}")), "event {i}: {ev}");
            let sent = api.events.load(Ordering::Relaxed);
            assert!(sent <= i + 10, "event {i} delivered only after {sent} were sent");
        }
        drop(c);
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

async fn read_one_chunk(c: &mut Client<TcpStream>) -> String {
    let line_end = loop {
        if let Some(i) = c.buf.windows(2).position(|w| w == b"\r\n") {
            break i;
        }
        let l = c.buf.len();
        fill(&mut c.s, &mut c.buf, l + 1).await.expect("stream open");
    };
    let size = usize::from_str_radix(std::str::from_utf8(&c.buf[..line_end]).unwrap(), 16).unwrap();
    c.buf.drain(..line_end + 2);
    fill(&mut c.s, &mut c.buf, size + 2).await.unwrap();
    let ev = String::from_utf8_lossy(&c.buf[..size]).into_owned();
    c.buf.drain(..size + 2);
    ev
}

async fn websocket_echo<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Client<S>) {
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let r = c.response().await.expect("101");
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), "websocket");
    for i in 0..50u32 {
        let msg = format!("frame {i} {}", "x".repeat(i as usize * 100));
        c.send(msg.as_bytes()).await.unwrap();
        fill(&mut c.s, &mut c.buf, msg.len()).await.expect("echo");
        assert_eq!(&c.buf[..msg.len()], msg.as_bytes());
        c.buf.drain(..msg.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_switches_to_the_relay() {
    bounded(20, async {
        let api = Api::start("a").await;
        let fe = HttpFrontend::start(http_config(vec![backend("be", &[("a", api.addr)])])).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        // A normal request first, then the upgrade on the same connection.
        assert_eq!(c.get("/name").await.unwrap().status, 200);
        websocket_echo(&mut c).await;
        assert_eq!(fe.http_stats().upgrades, 1);
        // Half-close is passed through the tunnel: the server closes back.
        c.s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwardfor_adds_the_client_address() {
    bounded(10, async {
        let api = Api::start("a").await;
        let mut cfg = http_config(vec![backend("be", &[("a", api.addr)])]);
        cfg.forwarded_for = true;
        let fe = HttpFrontend::start(cfg).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        assert_eq!(c.get("/name").await.unwrap().header("x-saw-xff"), "127.0.0.1");
        fe.drain(Duration::from_secs(1)).await;
        let fe = HttpFrontend::start(http_config(vec![backend("be", &[("a", api.addr)])])).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        assert_eq!(c.get("/name").await.unwrap().header("x-saw-xff"), "", "off by default");
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_prefix_then_default() {
    bounded(10, async {
        let (a, b, c_) = (Api::start("a").await, Api::start("b").await, Api::start("c").await);
        let mut cfg = http_config(vec![
            backend("be-a", &[("a", a.addr)]),
            backend("be-b", &[("b", b.addr)]),
            backend("be-c", &[("c", c_.addr)]),
        ]);
        cfg.routes = vec![
            HttpRoute { sni: None, host: Some("b.example".into()), path_prefix: None, backend: 1 },
            HttpRoute { sni: None, host: None, path_prefix: Some("/static/".into()), backend: 2 },
            HttpRoute { sni: None, host: Some("*.apps.example".into()), path_prefix: Some("/v2".into()), backend: 2 },
        ];
        let fe = HttpFrontend::start(cfg).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        let mut get = async |host: &str, path: &str| {
            c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
            String::from_utf8(c.response().await.unwrap().body).unwrap()
        };
        assert_eq!(get("B.example:8443", "/x").await, "b");
        assert_eq!(get("a.example", "/static/app.js").await, "c");
        assert_eq!(get("x.apps.example", "/v2/y").await, "c");
        assert_eq!(get("x.apps.example", "/v1/y").await, "a");
        assert_eq!(get("a.example", "/").await, "a");
        // Without a default backend an unmatched request is answered 503.
        let mut cfg = http_config(vec![backend("be-b", &[("b", b.addr)])]);
        cfg.default = None;
        cfg.routes = vec![HttpRoute { sni: None, host: Some("b.example".into()), path_prefix: None, backend: 0 }];
        let fe2 = HttpFrontend::start(cfg).await.unwrap();
        let mut c = connect(fe2.local_addr()).await;
        let r = c.get("/").await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(fe2.http_stats().no_route, 1);
        fe.drain(Duration::from_secs(1)).await;
        fe2.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_uri_answers_locally_200_or_503() {
    bounded(10, async {
        let api = Api::start("a").await;
        let mut cfg = http_config(vec![backend("be", &[("a", api.addr)])]);
        cfg.monitor_uri = Some("/haproxy_check".into());
        let fe = HttpFrontend::start(cfg).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        let r = c.get("/haproxy_check").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(api.requests.load(Ordering::Relaxed), 0, "not forwarded");
        fe.backends()[0].set_server_state("a", AdminState::Maint).unwrap();
        let r = c.get("/haproxy_check").await.unwrap();
        assert_eq!(r.status, 503);
        assert!(String::from_utf8_lossy(&r.body).contains("503 Service Unavailable"));
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_with_408_while_others_are_served() {
    bounded(20, async {
        let api = Api::start("a").await;
        let mut cfg = http_config(vec![backend("be", &[("a", api.addr)])]);
        cfg.timeouts.http_request = Duration::from_millis(400);
        let fe = HttpFrontend::start(cfg).await.unwrap();
        let addr = fe.local_addr();
        // 20 slow clients: one header byte every 100 ms, never finishing.
        let slow: Vec<_> = (0..20)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let started = Instant::now();
                    let req = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                    let mut got = Vec::new();
                    for b in req {
                        if s.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::select! {
                            r = s.read_to_end(&mut got) => { let _ = r; break; }
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                    (started.elapsed(), String::from_utf8_lossy(&got).into_owned())
                })
            })
            .collect();
        // Meanwhile fast clients are served.
        for _ in 0..30 {
            let mut c = connect(addr).await;
            assert_eq!(c.get("/name").await.unwrap().status, 200);
        }
        for s in slow {
            let (took, got) = s.await.unwrap();
            assert!(got.starts_with("HTTP/1.1 408"), "slow client got {got:?}");
            assert!(took < Duration::from_millis(2000), "cut after {took:?}");
        }
        // An idle keep-alive connection is closed silently after http-keep-alive.
        let st = fe.http_stats();
        assert_eq!(st.request_timeouts, 20);
        assert_eq!(st.generated[1], 20);
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_answers_400_502_503_504_like_haproxy() {
    bounded(20, async {
        let api = Api::start("a").await;
        let mut be = backend("be", &[("a", api.addr)]);
        be.timeouts.idle.server = Duration::from_millis(300);
        let fe = HttpFrontend::start(http_config(vec![be])).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!((r.status, r.header("connection")), (400, "close"));
        let mut c = connect(fe.local_addr()).await;
        assert_eq!(c.get("/garbage").await.unwrap().status, 502);
        let mut c = connect(fe.local_addr()).await;
        assert_eq!(c.get("/silent").await.unwrap().status, 504);
        // No server at all: 503.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let fe2 = HttpFrontend::start(http_config(vec![backend("be", &[("dead", dead)])])).await.unwrap();
        let mut c = connect(fe2.local_addr()).await;
        assert_eq!(c.get("/").await.unwrap().status, 503);
        let st = fe.http_stats();
        assert_eq!((st.generated[0], st.generated[2], st.generated[4]), (1, 1, 1));
        assert_eq!(fe2.http_stats().generated[3], 1);
        fe.drain(Duration::from_secs(1)).await;
        fe2.drain(Duration::from_secs(1)).await;
    })
    .await;
}

fn https_readyz(api: &Api) -> Option<(CheckSpec, HealthParams)> {
    let mut http = HttpCheck::bare();
    http.method = "GET".into();
    http.uri = "/readyz".into();
    http.expect = StatusMatch(vec![(200, 200)]);
    Some((
        CheckSpec {
            kind: CheckKind::Http(http),
            port: api.tls_addr.map(|a| a.port()),
            tls: Some(CheckTls { sni: Some("kubernetes".into()), verify: TlsVerify::None }),
            timeout: Duration::from_millis(300),
        },
        HealthParams {
            inter: Duration::from_millis(100),
            fastinter: Some(Duration::from_millis(50)),
            downinter: Some(Duration::from_millis(100)),
            rise: 2,
            fall: 2,
            init: InitState::FullyUp,
            shutdown_sessions: true,
            ..HealthParams::default()
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_run_fails_no_new_request_after_the_fall() {
    bounded(30, async {
        // apiserver stand-ins: plain HTTP traffic, HTTPS /readyz checks on a second port.
        let a = Api::start_with("a", true).await;
        let b = Api::start_with("b", true).await;
        let mut be = backend("be", &[("a", a.addr), ("b", b.addr)]);
        be.backend.servers[0].check = https_readyz(&a);
        be.backend.servers[1].check = https_readyz(&b);
        let fe = HttpFrontend::start(http_config(vec![be])).await.unwrap();
        let addr = fe.local_addr();
        // A watch on each server; the one on `a` must be shut when `a` is marked down.
        let mut watches = Vec::new();
        for _ in 0..2 {
            let mut c = connect(addr).await;
            c.send(b"GET /watch HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
            let n = read_head(&mut c.s, &mut c.buf).await.unwrap();
            let server = parse_head_resp_server(&c.buf[..n]);
            c.buf.drain(..n);
            watches.push((server, c));
        }
        assert!(watches.iter().any(|(s, _)| s == "a") && watches.iter().any(|(s, _)| s == "b"));
        let ok = Arc::new(AtomicU64::new(0));
        let failed_after_fall = Arc::new(AtomicU64::new(0));
        let killed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let fall_bound = Duration::from_millis(800);
        let mut clients = Vec::new();
        for k in 0..4 {
            let (ok, failed, killed_at) = (ok.clone(), failed_after_fall.clone(), killed_at.clone());
            clients.push(tokio::spawn(async move {
                let end = Instant::now() + Duration::from_secs(3);
                let mut c = connect(addr).await;
                let mut i = 0;
                while Instant::now() < end {
                    i += 1;
                    // Every 5th request on a new connection, the rest keep-alive.
                    if i % 5 == 0 {
                        c = connect(addr).await;
                    }
                    let r = c.get(&format!("/name?{k}-{i}")).await;
                    if matches!(&r, Some(r) if r.status == 200) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let k = *killed_at.lock().unwrap();
                        if k.is_some_and(|t| t.elapsed() > fall_bound) {
                            eprintln!(
                                "request failed {:?} after the kill: {:?}",
                                k.map(|t| t.elapsed()),
                                r.as_ref().map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))
                            );
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        c = connect(addr).await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        a.kill();
        *killed_at.lock().unwrap() = Some(Instant::now());
        // The watch on `a` ends (shutdown-sessions), the one on `b` keeps streaming.
        for (server, c) in &mut watches {
            let mut chunk = [0u8; 4096];
            let gone = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match c.s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) if server == "b" => return false,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            match server.as_str() {
                "a" => assert_eq!(gone, Ok(true), "the watch on the dead server is shut"),
                _ => assert_eq!(gone, Ok(false), "the watch on the live server streams on"),
            }
        }
        for c in clients {
            c.await.unwrap();
        }
        assert!(ok.load(Ordering::Relaxed) > 50, "too few requests served: {}", ok.load(Ordering::Relaxed));
        assert_eq!(failed_after_fall.load(Ordering::Relaxed), 0, "requests failed after the fall threshold");
        let st = fe.stats();
        assert_eq!(st[0].servers[0].status, "DOWN");
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

fn parse_head_resp_server(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(head);
    text.lines()
        .find_map(|l| l.strip_prefix("X-Server: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// A certificate for `localhost` written as PEM files, and a client config trusting it.
fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("fe.pem");
    let key = dir.join("fe.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (cert, key, Arc::new(cfg))
}

async fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.expect("TLS handshake with the balancer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_in_http_mode_with_alpn_http11() {
    bounded(20, async {
        let dir = std::env::temp_dir().join(format!("hastack-http-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, client_cfg) = tls_files(&dir);
        let api = Api::start("a").await;
        let mut cfg = http_config(vec![backend("be", &[("a", api.addr)])]);
        cfg.tls = Some(server_config(&cert, &key, &["http/1.1".to_string()]).unwrap());
        let fe = HttpFrontend::start(cfg).await.unwrap();
        let s = tls_connect(fe.local_addr(), client_cfg.clone()).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut c = Client::new(s);
        for _ in 0..5 {
            let r = c.get("/name").await.unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, &b"a"[..]));
        }
        // An upgrade over TLS goes through the copying tunnel.
        websocket_echo(&mut c).await;
        // Plain text on a TLS port is refused.
        let mut p = connect(fe.local_addr()).await;
        p.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        assert!(p.response().await.is_none());
        assert!(eventually(Duration::from_secs(2), || fe.http_stats().tls_failed == 1).await);
        fe.drain(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_terminated_in_tcp_mode() {
    bounded(20, async {
        let dir = std::env::temp_dir().join(format!("hastack-tcp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, client_cfg) = tls_files(&dir);
        let echo = support::Backend::start(support::Kind::Echo).await;
        let proxy = backend("be", &[("echo", echo.addr)]);
        let fe = TlsTcpFrontend::start(TlsTcpConfig::single(proxy, server_config(&cert, &key, &[]).unwrap())).await.unwrap();
        let mut s = tls_connect(fe.local_addrs()[0], client_cfg).await;
        let pat = Pattern::new(7);
        let (a, _) = pat.block(1);
        let payload = &a[..200_000];
        let (mut r, mut w) = tokio::io::split(&mut s);
        let (_, got) = tokio::join!(
            async {
                w.write_all(payload).await.unwrap();
                w.flush().await.unwrap();
            },
            async {
                let mut got = vec![0u8; payload.len()];
                r.read_exact(&mut got).await.unwrap();
                got
            }
        );
        assert!(got == payload, "echo through TLS termination differs");
        assert_eq!(fe.stats()[0].servers[0].counters.total, 1);
        assert_eq!(fe.stats()[0].servers[0].counters.bytes_in, payload.len() as u64);
        fe.drain(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_runs_http_and_tls_frontends_from_the_config() {
    bounded(20, async {
        let dir = std::env::temp_dir().join(format!("hastack-http-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, client_cfg) = tls_files(&dir);
        let (a, b) = (Api::start("a").await, Api::start("b").await);
        let text = format!(
            r#"
[balancer]
[[balancer.frontend]]
name = "web"
bind = ["127.0.0.1:0"]
mode = "http"
backend = "be-a"
monitor_uri = "/monitor"
forwarded_for = true
tls = {{ cert = "{}", key = "{}" }}
[[balancer.frontend.route]]
path_prefix = "/b/"
backend = "be-b"
[[balancer.frontend]]
name = "raw"
bind = ["127.0.0.1:0"]
tls = {{ cert = "{}", key = "{}" }}
backend = "be-b"
[[balancer.backend]]
name = "be-a"
[[balancer.backend.server]]
name = "a"
address = "{}"
[[balancer.backend]]
name = "be-b"
[[balancer.backend.server]]
name = "b"
address = "{}"
"#,
            cert.display(),
            key.display(),
            cert.display(),
            key.display(),
            a.addr,
            b.addr
        );
        #[derive(serde::Deserialize)]
        struct Root {
            balancer: tcp_balancer::config::BalancerConfig,
        }
        let cfg = toml::from_str::<Root>(&text).unwrap().balancer;
        let bal = tcp_balancer::runtime::Balancer::start(&cfg).await.unwrap();
        let web = bal.http_frontends()[0].local_addr();
        let mut c = Client::new(tls_connect(web, client_cfg.clone()).await);
        let r = c.get("/x").await.unwrap();
        assert_eq!((r.body.as_slice(), r.header("x-saw-xff")), (&b"a"[..], "127.0.0.1"));
        assert_eq!(c.get("/b/x").await.unwrap().body, b"b");
        assert_eq!(c.get("/monitor").await.unwrap().status, 200);
        bal.set_server_state("be-a", "a", AdminState::Maint).unwrap();
        assert_eq!(c.get("/monitor").await.unwrap().status, 503);
        // The tcp-mode TLS frontend relays the decrypted bytes to the HTTP server.
        let raw = bal.tls_tcp_frontends()[0].local_addrs()[0];
        let mut c = Client::new(tls_connect(raw, client_cfg).await);
        assert_eq!(c.get("/x").await.unwrap().body, b"b");
        // Both frontends' backends are in show stat.
        let names: Vec<String> = bal.stats().iter().map(|s| format!("{}/{}", s.frontend, s.backend)).collect();
        assert_eq!(names, ["web/be-a", "web/be-b", "raw/be-b"]);
        bal.drain(Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_queues_up_to_maxqueue_then_redispatches() {
    bounded(20, async {
        let (a, b) = (Api::start("a").await, Api::start("b").await);
        let mut be = backend("be", &[("a", a.addr), ("b", b.addr)]);
        be.backend.algorithm = tcp_balancer::balance::Algorithm::Source;
        for s in &mut be.backend.servers {
            s.maxconn = Some(1);
            s.maxqueue = Some(1);
        }
        be.timeouts.queue = Some(Duration::from_secs(5));
        let fe = HttpFrontend::start(http_config(vec![be])).await.unwrap();
        let addr = fe.local_addr();
        // A watch holds the only slot of the server this client hashes to.
        let mut watch = connect(addr).await;
        watch.send(b"GET /watch HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let n = read_head(&mut watch.s, &mut watch.buf).await.unwrap();
        let home = parse_head_resp_server(&watch.buf[..n]);
        let other = if home == "a" { "b" } else { "a" };
        // The next request waits for that server...
        let waiting = tokio::spawn(async move {
            let mut c = connect(addr).await;
            let r = c.get("/name").await.unwrap();
            (r.status, r.header("x-server").to_string())
        });
        assert!(eventually(Duration::from_secs(2), || fe.stats()[0].backend_counters.queue_current == 1).await);
        // ...and once its queue is full, the next is redispatched to the other server.
        let mut c = connect(addr).await;
        let r = c.get("/name").await.unwrap();
        assert_eq!((r.status, r.header("x-server")), (200, other));
        assert!(!waiting.is_finished(), "the queued request waits for its server");
        // The watch ends: its slot goes to the queued request.
        drop(watch);
        let (status, server) = waiting.await.unwrap();
        assert_eq!((status, server.as_str()), (200, home.as_str()));
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_gives_the_real_client_to_forwardfor() {
    bounded(10, async {
        let api = Api::start("a").await;
        let mut cfg = http_config(vec![backend("be", &[("a", api.addr)])]);
        cfg.frontend.accept_proxy = true;
        cfg.forwarded_for = true;
        let fe = HttpFrontend::start(cfg).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        // The PROXY header and the first request in one segment.
        c.send(b"PROXY TCP4 198.18.0.55 198.18.0.100 40000 80\r\nGET /name HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let r = c.response().await.unwrap();
        assert_eq!((r.status, r.header("x-saw-xff")), (200, "198.18.0.55"));
        // Without a header the connection is dropped and counted.
        let mut c = connect(fe.local_addr()).await;
        c.send(b"GET /name HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        assert!(c.response().await.is_none());
        assert!(eventually(Duration::from_secs(2), || fe.http_stats().bad_proxy_header == 1).await);
        fe.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_idle_connections_and_lets_exchanges_finish() {
    bounded(15, async {
        let api = Api::start("a").await;
        let fe = Arc::new(HttpFrontend::start(http_config(vec![backend("be", &[("a", api.addr)])])).await.unwrap());
        let addr = fe.local_addr();
        let mut idle = connect(addr).await;
        assert_eq!(idle.get("/name").await.unwrap().status, 200);
        // An exchange in flight when the drain starts: a chunked upload sent in two parts.
        let mut busy = connect(addr).await;
        busy.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fe2 = fe.clone();
        let drain = tokio::spawn(async move { fe2.drain(Duration::from_secs(5)).await });
        // The idle keep-alive connection is closed at once.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), idle.s.read_to_end(&mut rest)).await;
        assert!(matches!(n, Ok(Ok(0))), "idle connection not closed: {n:?}");
        // The busy one completes, told to close.
        busy.send(b"0\r\n\r\n").await.unwrap();
        let r = busy.response().await.expect("the in-flight exchange finishes");
        assert_eq!((r.status, r.body.as_slice(), r.header("connection")), (200, &b"hello"[..], "close"));
        assert_eq!(drain.await.unwrap(), 0, "nothing closed by force");
        assert!(TcpStream::connect(addr).await.is_err(), "no longer listening");
    })
    .await;
}

/// What a [`one_answer_server`] connection does once it has answered its one request.
#[derive(Clone, Copy, PartialEq)]
enum AfterAnswer {
    /// Wait for the next request head, then drop the connection without an answer.
    DropOnNextRequest,
    /// Close the connection at once.
    Close,
}

/// A server that answers one request per connection (`200 ok`, keep-alive), then ends the
/// connection as `after` says; returns its address, its count of accepted connections and its task.
async fn one_answer_server(after: AfterAnswer) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicU64::new(0));
    let c2 = conns.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            c2.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(n) = read_head(&mut s, &mut buf).await else { return };
                buf.drain(..n);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                if after == AfterAnswer::DropOnNextRequest {
                    let _ = read_head(&mut s, &mut buf).await;
                }
            });
        }
    });
    (addr, conns, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_by_the_server_is_replaced_transparently() {
    bounded(10, async {
        // Answers one request per connection with keep-alive, then drops the connection when the
        // next request arrives (an idle timeout racing the balancer's reuse).
        let (addr, conns, server) = one_answer_server(AfterAnswer::DropOnNextRequest).await;
        let fe = HttpFrontend::start(http_config(vec![backend("be", &[("s", addr)])])).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        for i in 0..5 {
            let r = c.get(&format!("/x{i}")).await.expect("answered");
            assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "request {i}");
        }
        assert_eq!(conns.load(Ordering::Relaxed), 5, "each request ends on its own server connection");
        assert_eq!(fe.http_stats().generated, [0; 5], "no error answered");
        fe.drain(Duration::from_secs(1)).await;
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_connection_closed_by_the_server_is_not_reused() {
    bounded(10, async {
        // Answers one request with keep-alive, then closes the connection at once: the pooled
        // connection has seen a FIN by the time the next request comes.
        let (addr, conns, server) = one_answer_server(AfterAnswer::Close).await;
        let fe = HttpFrontend::start(http_config(vec![backend("be", &[("s", addr)])])).await.unwrap();
        let mut c = connect(fe.local_addr()).await;
        for i in 0..5 {
            let r = c.get(&format!("/x{i}")).await.expect("answered");
            assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "request {i}");
            // Time for the FIN to reach the balancer's reactor.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(conns.load(Ordering::Relaxed), 5);
        let st = fe.http_stats();
        assert_eq!(st.reused, 0, "a connection the server closed was offered for reuse");
        assert_eq!(st.generated, [0; 5], "no error answered");
        fe.drain(Duration::from_secs(1)).await;
        server.abort();
    })
    .await;
}

// ---------------------------------------------------------------- SNI, several certificates, accept-proxy + TLS

/// Parses a `[balancer]` section.
fn balancer_config(text: &str) -> tcp_balancer::config::BalancerConfig {
    #[derive(serde::Deserialize)]
    struct Root {
        balancer: tcp_balancer::config::BalancerConfig,
    }
    toml::from_str::<Root>(text).expect("valid balancer config").balancer
}

/// Self-signed certificates written as PEM files (one per name list, cert and key in one file),
/// and a client config trusting all of them.
struct Certs {
    dir: std::path::PathBuf,
    files: Vec<std::path::PathBuf>,
    ders: Vec<Vec<u8>>,
    client: Arc<rustls::ClientConfig>,
}

impl Certs {
    fn new(tag: &str, names: &[&[&str]]) -> Certs {
        let dir = std::env::temp_dir().join(format!("hastack-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let (mut files, mut ders) = (Vec::new(), Vec::new());
        for (i, n) in names.iter().enumerate() {
            let ck = rcgen::generate_simple_self_signed(n.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            let f = dir.join(format!("c{i}.pem"));
            std::fs::write(&f, format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem())).unwrap();
            roots.add(ck.cert.der().clone()).unwrap();
            files.push(f);
            ders.push(ck.cert.der().to_vec());
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Certs { dir, files, ders, client: Arc::new(client) }
    }

    /// `tls = {...}` with the first certificate as default and the others chosen by SNI.
    fn toml(&self) -> String {
        let more: Vec<String> =
            self.files[1..].iter().map(|f| format!("{{ cert = \"{0}\", key = \"{0}\" }}", f.display())).collect();
        format!("tls = {{ cert = \"{0}\", key = \"{0}\", sni_certs = [{1}] }}", self.files[0].display(), more.join(", "))
    }

    /// A TLS connection asking for `name` (a DNS name sends SNI, an IP address does not), with
    /// `prefix` written before the ClientHello; returns it with the index of the certificate
    /// the balancer showed.
    async fn connect(&self, addr: SocketAddr, name: &str, prefix: &[u8]) -> (tokio_rustls::client::TlsStream<TcpStream>, usize) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(prefix).await.unwrap();
        let sn = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let s = tokio_rustls::TlsConnector::from(self.client.clone()).connect(sn, tcp).await.expect("TLS handshake");
        let shown = s.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
        let i = self.ders.iter().position(|d| *d == shown).expect("one of our certificates");
        (s, i)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three backends `be-a`, `be-b`, `be-d` (servers named a, b, d) as TOML.
fn three_backends(a: &Api, b: &Api, d: &Api) -> String {
    [("be-a", "a", a.addr), ("be-b", "b", b.addr), ("be-d", "d", d.addr)]
        .iter()
        .map(|(be, sv, addr)| {
            format!("[[balancer.backend]]\nname = \"{be}\"\n[[balancer.backend.server]]\nname = \"{sv}\"\naddress = \"{addr}\"\n")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mode_tls_picks_certificate_and_backend_by_sni() {
    bounded(20, async {
        let certs = Certs::new("sni-tcp", &[&["127.0.0.1", "x.test"], &["a.test"], &["*.b.test"]]);
        let (a, b, d) = (Api::start("a").await, Api::start("b").await, Api::start("d").await);
        let cfg = balancer_config(&format!(
            "[balancer]\n[[balancer.frontend]]\nname = \"tls\"\nbind = [\"127.0.0.1:0\"]\nbackend = \"be-d\"\n{}\n\
             [[balancer.frontend.route]]\nsni = \"a.test\"\nbackend = \"be-a\"\n\
             [[balancer.frontend.route]]\nsni = \"*.b.test\"\nbackend = \"be-b\"\n{}",
            certs.toml(),
            three_backends(&a, &b, &d)
        ));
        let bal = tcp_balancer::runtime::Balancer::start(&cfg).await.unwrap();
        let addr = bal.tls_tcp_frontends()[0].local_addrs()[0];
        // (server name asked for, certificate shown, backend that answers)
        for (name, cert, server) in [("a.test", 1, "a"), ("web.b.test", 2, "b"), ("x.test", 0, "d"), ("127.0.0.1", 0, "d")] {
            let (s, shown) = certs.connect(addr, name, b"").await;
            assert_eq!(shown, cert, "certificate for {name}");
            let mut c = Client::new(s);
            let r = c.get("/name").await.unwrap();
            assert_eq!(String::from_utf8_lossy(&r.body), server, "backend for {name}");
        }
        bal.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_tls_routes_by_sni_before_host() {
    bounded(20, async {
        let certs = Certs::new("sni-http", &[&["127.0.0.1"], &["a.test"], &["*.b.test"]]);
        let (a, b, d) = (Api::start("a").await, Api::start("b").await, Api::start("d").await);
        let cfg = balancer_config(&format!(
            "[balancer]\n[[balancer.frontend]]\nname = \"web\"\nmode = \"http\"\nbind = [\"127.0.0.1:0\"]\nbackend = \"be-d\"\n{}\n\
             [[balancer.frontend.route]]\nsni = \"a.test\"\nbackend = \"be-a\"\n\
             [[balancer.frontend.route]]\nsni = \"*.b.test\"\npath_prefix = \"/b/\"\nbackend = \"be-b\"\n{}",
            certs.toml(),
            three_backends(&a, &b, &d)
        ));
        let bal = tcp_balancer::runtime::Balancer::start(&cfg).await.unwrap();
        let addr = bal.http_frontends()[0].local_addr();
        let (s, shown) = certs.connect(addr, "a.test", b"").await;
        assert_eq!(shown, 1);
        let mut c = Client::new(s);
        // The Host header (api.example) is not what routes: the server name is.
        for _ in 0..3 {
            assert_eq!(c.get("/name").await.unwrap().body, b"a");
        }
        let (s, shown) = certs.connect(addr, "x.b.test", b"").await;
        assert_eq!(shown, 2);
        let mut c = Client::new(s);
        assert_eq!(c.get("/b/name").await.unwrap().body, b"b");
        assert_eq!(c.get("/name").await.unwrap().body, b"d", "path condition of the sni route");
        let (s, shown) = certs.connect(addr, "127.0.0.1", b"").await;
        assert_eq!(shown, 0);
        assert_eq!(Client::new(s).get("/b/name").await.unwrap().body, b"d", "no SNI: default backend");
        bal.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_proxy_before_tls_gives_the_real_client() {
    bounded(20, async {
        let certs = Certs::new("proxy-tls", &[&["127.0.0.1", "api.test"]]);
        let (a, b, d) = (Api::start("a").await, Api::start("b").await, Api::start("d").await);
        let cfg = balancer_config(&format!(
            "[balancer]\n[[balancer.frontend]]\nname = \"web\"\nmode = \"http\"\nbind = [\"127.0.0.1:0\"]\nbackend = \"be-a\"\n\
             accept_proxy = true\nforwarded_for = true\n{}\n\
             [[balancer.frontend]]\nname = \"raw\"\nbind = [\"127.0.0.1:0\"]\nbackend = \"be-b\"\naccept_proxy = true\n\
             [balancer.frontend.tls]\ncert = \"{1}\"\nkey = \"{1}\"\n{2}",
            certs.toml(),
            certs.files[0].display(),
            three_backends(&a, &b, &d)
        ));
        let bal = tcp_balancer::runtime::Balancer::start(&cfg).await.unwrap();
        let web = bal.http_frontends()[0].local_addr();
        // v1 and v2 headers, each followed at once by the ClientHello.
        let v1 = b"PROXY TCP4 198.18.0.55 198.18.0.100 40000 443\r\n".to_vec();
        let mut v2 = Vec::new();
        let h = tcp_balancer::proxy_protocol::Header::Tcp {
            src: "[fd00:198:18::77]:40001".parse().unwrap(),
            dst: "[fd00:198:18::100]:443".parse().unwrap(),
        };
        tcp_balancer::proxy_protocol::emit(&h, tcp_balancer::proxy_protocol::Version::V2, &mut v2);
        for (hdr, client) in [(v1, "198.18.0.55"), (v2, "fd00:198:18::77")] {
            let (s, _) = certs.connect(web, "api.test", &hdr).await;
            let mut c = Client::new(s);
            for _ in 0..2 {
                let r = c.get("/name").await.unwrap();
                assert_eq!((r.status, r.header("x-saw-xff")), (200, client));
            }
        }
        // No header: no handshake, counted.
        let tcp = TcpStream::connect(web).await.unwrap();
        let sn = rustls::pki_types::ServerName::try_from("api.test").unwrap();
        let hs = tokio_rustls::TlsConnector::from(certs.client.clone()).connect(sn, tcp).await;
        assert!(hs.is_err(), "a TLS client without a PROXY header was served");
        assert!(eventually(Duration::from_secs(2), || bal.http_stats()[0].1.bad_proxy_header == 1).await);
        // tcp mode with TLS: the PROXY header's client reaches the backend's sessions.
        let raw = bal.tls_tcp_frontends()[0].local_addrs()[0];
        let (s, _) = certs.connect(raw, "api.test", b"PROXY TCP4 198.18.0.66 198.18.0.100 40002 443\r\n").await;
        let mut c = Client::new(s);
        assert_eq!(c.get("/name").await.unwrap().body, b"b");
        let sess = bal.sessions();
        assert!(sess.iter().any(|(fe, s)| fe == "raw" && s.client.ip().to_string() == "198.18.0.66"), "{sess:?}");
        bal.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_only_frontend_needs_no_backend() {
    bounded(10, async {
        let cfg = balancer_config(
            "[balancer]\n[[balancer.frontend]]\nname = \"healthz\"\nmode = \"http\"\nbind = [\"127.0.0.1:0\"]\nmonitor_uri = \"/healthz\"\n",
        );
        let bal = tcp_balancer::runtime::Balancer::start(&cfg).await.unwrap();
        let mut c = connect(bal.http_frontends()[0].local_addr()).await;
        assert_eq!(c.get("/healthz").await.unwrap().status, 200);
        assert_eq!(c.get("/healthz").await.unwrap().status, 200, "kept alive");
        assert_eq!(c.get("/other").await.unwrap().status, 503);
        bal.drain(Duration::from_secs(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontends_sharing_a_backend_share_its_health_checks() {
    bounded(20, async {
        let api = Api::start("a").await;
        let ports = || "bind = [\"127.0.0.1:0\"]\nbackend = \"be\"\n".to_string();
        let cfg = balancer_config(&format!(
            "[balancer]\n[[balancer.frontend]]\nname = \"one\"\n{0}[[balancer.frontend]]\nname = \"two\"\n{0}\
             [[balancer.frontend]]\nname = \"web\"\nmode = \"http\"\n{0}\
             [[balancer.backend]]\nname = \"be\"\ncheck = {{ type = \"tcp\", inter = \"100ms\", rise = 1, fall = 1 }}\n\
             [[balancer.backend.server]]\nname = \"a\"\naddress = \"{1}\"\n",
            ports(),
            api.addr
        ));
        let bal = tcp_balancer::runtime::Balancer::start(&cfg).await.unwrap();
        let before = api.conns.load(Ordering::Relaxed);
        let window = Duration::from_millis(1500);
        tokio::time::sleep(window).await;
        let checks = api.conns.load(Ordering::Relaxed) - before;
        // One checker at 100 ms: about 15 in the window; three (one per frontend) would be ~45.
        // (A loaded machine runs timers late: the lower bound only says checks do run.)
        assert!((4..=24).contains(&checks), "{checks} checks in {window:?} at inter 100ms");
        // One state: the server goes down once for every frontend.
        api.kill();
        assert!(
            eventually(Duration::from_secs(3), || bal.stats().iter().all(|s| s.servers[0].status == "DOWN")).await,
            "every frontend sees the server down"
        );
        let state = tcp_balancer::stats::servers_state(&bal.stats());
        let lines: Vec<&str> = state.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines.len(), 1, "one line for the one server of the one backend: {state}");
        assert!(lines[0].starts_with("be a DOWN "), "{state}");
        bal.drain(Duration::from_secs(1)).await;
    })
    .await;
}
