//! One client connection in http mode.
//!
//! Connection lifecycle:
//! 1. **wait** for a request: the first within `timeout http-request` (else 408), the next ones
//!    within `timeout http-keep-alive` (else a silent close); a drain closes an idle connection,
//!    a reload hands an idle plain one to the new process (its socket only: nothing is buffered).
//! 2. **head**: read until the head is complete, within `timeout http-request` from its first
//!    byte (slowloris is cut with a 408); a malformed head is answered 400 and the connection closed.
//! 3. **monitor-uri** is answered here (200, or 503 when no backend server is usable).
//! 4. **route** by host and path; **lease** a server slot with a reused idle connection or a new
//!    one (503 when none can be had).
//! 5. **exchange**: the request body streams to the server while the response is awaited;
//!    interim 1xx answers are passed on; the response body streams back (`timeout server`
//!    between pieces; 504 if no response head in time, 502 if it is invalid). A reused server
//!    connection that dies before answering a bodyless request is replaced once.
//! 6. **keep-alive**: the server connection goes back to the idle pool when both sides allow,
//!    and the loop waits for the next request; or **tunnel** after a 101 (WebSocket, SPDY):
//!    the splice relay (plain client) or a copying tunnel (TLS client) until either side ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::answer::Answer;
use super::frontend::{ConnSignal, Front, conn_event};
use super::head::{Framing, Request, RequestRewrite, ResponseContext, parse_request, parse_response};
use super::chunked::ChunkedScanner;
use super::io::{BodyError, Buf, Client, TunnelEnd, copy_tunnel, forward_body, take_buffered};
use super::route;
use crate::proxy::{Lease, LeaseError};
use crate::relay::{ByteSink, IdleTimeouts, RelayEnd, relay};

/// What the connection does after one exchange.
enum Next {
    KeepAlive,
    Close,
    Tunnel(TcpStream, Buf, Lease),
}

/// What ended the wait for a request.
enum Wait {
    Read(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
    /// A reload or a drain: the idle connection leaves.
    Leave,
}

/// Serves one client connection until it closes, times out, the frontend stops, or (reload) it
/// goes to the new process while idle. `fresh`: no request was read from it yet.
pub(crate) async fn serve(fe: Arc<Front>, mut client: Client, peer: SocketAddr, local: SocketAddr, early: Vec<u8>, fresh: bool) {
    let mut cbuf = Buf::new();
    let mut first = fresh;
    let plain = matches!(client, Client::Plain(_));
    let conn = fe.register_conn();
    let sig = &*conn.signal;
    // An idle plain connection leaves on a reload (to the new process) or a drain; a TLS one
    // only on a drain.
    let leave = if plain { conn_event::HANDOVER | conn_event::STOP } else { conn_event::STOP };
    if !early.is_empty() {
        // Bytes read past a PROXY header: the start of the first request.
        let mut e = &early[..];
        let _ = cbuf.fill(&mut e).await;
    }
    let t = fe.cfg.timeouts;
    // Routes on the TLS server name hold for the whole connection.
    let sni = if fe.cfg.routes.iter().any(|r| r.sni.is_some()) { client.server_name() } else { None };
    loop {
        let start = Instant::now();
        if cbuf.is_empty() {
            // An idle keep-alive connection holds no buffer (10k idle clients cost little).
            cbuf = Buf::new();
            let wait = if first { t.http_request } else { t.http_keep_alive };
            let w = tokio::select! {
                biased;
                _ = sig.wait(leave) => Wait::Leave,
                r = tokio::time::timeout(wait, cbuf.fill(&mut client)) => Wait::Read(r),
            };
            let r = match w {
                Wait::Read(r) => r,
                // Reload: nothing read, nothing owed: the socket alone carries the connection.
                Wait::Leave => {
                    if let Client::Plain(sock) = client {
                        let _ = fe.hand_over(sock, peer, local, first);
                    }
                    return;
                }
            };
            match r {
                Err(_) => {
                    if first {
                        fe.counters.request_timeouts.fetch_add(1, Ordering::Relaxed);
                        answer(&fe, &mut client, Answer::RequestTimeout).await;
                    }
                    return;
                }
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
            }
        }
        let deadline = if first { start + t.http_request } else { Instant::now() + t.http_request };
        first = false;
        let rw = RequestRewrite { forwarded_for: fe.cfg.forwarded_for.then_some(peer.ip()) };
        let mut head = Vec::new();
        let req = loop {
            head.clear();
            match parse_request(cbuf.data(), rw, &mut head) {
                Ok(Some(r)) => break r,
                Ok(None) => match tokio::time::timeout_at(deadline, cbuf.fill(&mut client)).await {
                    Err(_) => {
                        fe.counters.request_timeouts.fetch_add(1, Ordering::Relaxed);
                        answer(&fe, &mut client, Answer::RequestTimeout).await;
                        return;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(_)) => {}
                },
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad request");
                    fe.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                    answer(&fe, &mut client, Answer::BadRequest).await;
                    return;
                }
            }
        };
        fe.counters.requests.fetch_add(1, Ordering::Relaxed);
        let keep = req.keep_alive && sig.keeps_clients(plain);
        let data = cbuf.data();
        if fe.cfg.monitor_uri.as_deref().is_some_and(|m| m == req.path(data)) {
            fe.counters.monitor.fetch_add(1, Ordering::Relaxed);
            let ok = fe.monitor_ok();
            // The body of a monitor request is not read: close rather than misparse it.
            let close = !keep || req.framing != Framing::Empty;
            cbuf.consume(req.head_len);
            let a = if ok { Answer::MonitorOk } else { Answer::ServiceUnavailable };
            if write_client(&fe, &mut client, &a.render(close)).await.is_err() || close {
                return;
            }
            continue;
        }
        let target = route::pick(&fe.cfg.routes, fe.cfg.default, sni.as_deref(), req.host_name(data), req.path(data));
        let Some(bi) = target else {
            fe.counters.no_route.fetch_add(1, Ordering::Relaxed);
            answer(&fe, &mut client, Answer::ServiceUnavailable).await;
            return;
        };
        cbuf.consume(req.head_len);
        match exchange(&fe, sig, bi, &mut client, &mut cbuf, &req, &head, peer, local, keep).await {
            Next::KeepAlive => continue,
            Next::Close => return,
            Next::Tunnel(server, sbuf, lease) => {
                tunnel(&fe, sig, client, cbuf, server, sbuf, lease).await;
                return;
            }
        }
    }
}

async fn write_client(fe: &Front, client: &mut Client, bytes: &[u8]) -> std::io::Result<()> {
    let t = fe.cfg.timeouts.client;
    match tokio::time::timeout(t, async {
        client.write_all(bytes).await?;
        client.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Writes a generated answer (which always closes the connection) and counts it.
async fn answer(fe: &Front, client: &mut Client, a: Answer) {
    fe.counters.generated(a);
    if write_client(fe, client, &a.render(true)).await.is_ok() {
        // A clean close: the client reads the answer before it sees the FIN.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    }
}

/// How the response side of one exchange ended.
enum Down {
    /// The response is complete.
    Done { server_keep_alive: bool, close_client: bool },
    /// 101 (or 2xx to CONNECT) passed on: tunnel from here.
    Tunnel,
    /// The server closed or reset before sending anything.
    NoResponse,
    /// No response head within `timeout server`.
    Timeout { started: bool },
    /// The response head or body framing is invalid, or the body was cut.
    Broken { started: bool },
    /// The client went away or stopped reading.
    ClientGone,
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    fe: &Front,
    sig: &ConnSignal,
    bi: usize,
    client: &mut Client,
    cbuf: &mut Buf,
    req: &Request,
    head: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
    keep: bool,
) -> Next {
    let be = &fe.backends[bi];
    let pool = &fe.pools[bi];
    let t = be.timeouts();
    for attempt in 0..2 {
        let offer = |idx: usize| if attempt == 0 && be.server_usable(idx) { pool.take(idx) } else { None };
        let (lease, mut server, reused) = match be.lease_connected(peer, local, offer).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%peer, backend = be.backend_name(), error = %e, "no server for request");
                if e == LeaseError::ConnectFailed {
                    fe.counters.connect_failed.fetch_add(1, Ordering::Relaxed);
                }
                answer(fe, client, Answer::ServiceUnavailable).await;
                return Next::Close;
            }
        };
        if reused {
            fe.counters.reused.fetch_add(1, Ordering::Relaxed);
        }
        let retryable = reused && attempt == 0 && req.framing == Framing::Empty;
        let sent = tokio::time::timeout(t.idle.server, server.write_all(head)).await;
        if !matches!(sent, Ok(Ok(()))) {
            if retryable {
                continue;
            }
            answer(fe, client, Answer::BadGateway).await;
            return Next::Close;
        }
        lease.count_in(head.len() as u64);
        let mut sbuf = Buf::new();
        let cx = ResponseContext { method: req.method, upgrade: req.upgrade, client_keep_alive: keep, client_minor: req.minor };
        let (down, upload_done) = transfer(sig, client, cbuf, &mut server, &mut sbuf, req.framing, cx, &lease, t.idle).await;
        match down {
            Down::Done { server_keep_alive, close_client } => {
                if server_keep_alive && upload_done && sbuf.is_empty() && !lease.sends_proxy() {
                    pool.put(lease.server(), server);
                }
                return if close_client || !upload_done { Next::Close } else { Next::KeepAlive };
            }
            Down::Tunnel if upload_done => {
                fe.counters.upgrades.fetch_add(1, Ordering::Relaxed);
                return Next::Tunnel(server, sbuf, lease);
            }
            Down::Tunnel => return Next::Close,
            Down::NoResponse if retryable => {
                tracing::debug!(server = lease.server_name(), "reused connection closed before answering; retrying");
                continue;
            }
            Down::NoResponse | Down::Broken { started: false } => {
                answer(fe, client, Answer::BadGateway).await;
                return Next::Close;
            }
            Down::Timeout { started: false } => {
                lease.count_timeout();
                answer(fe, client, Answer::GatewayTimeout).await;
                return Next::Close;
            }
            Down::Timeout { started: true } => {
                lease.count_timeout();
                return Next::Close;
            }
            Down::Broken { started: true } | Down::ClientGone => return Next::Close,
        }
    }
    answer(fe, client, Answer::BadGateway).await;
    Next::Close
}

/// Streams the request body up while the response comes down. Returns how the response ended
/// and whether the whole request body was passed on.
#[allow(clippy::too_many_arguments)]
async fn transfer(
    sig: &ConnSignal,
    client: &mut Client,
    cbuf: &mut Buf,
    server: &mut TcpStream,
    sbuf: &mut Buf,
    framing: Framing,
    cx: ResponseContext,
    lease: &Lease,
    idle: IdleTimeouts,
) -> (Down, bool) {
    let plain = matches!(client, Client::Plain(_));
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = server.split();
    let count_in = |n| lease.count_in(n);
    let count_out = |n| lease.count_out(n);
    let up = forward_body(&mut cr, cbuf, &mut sw, framing, ChunkedScanner::new(), idle.client, idle.server, &count_in);
    let down = async {
        let mut out = Vec::new();
        let mut started = false;
        loop {
            out.clear();
            let resp = loop {
                // A drain that began while the server worked still closes this client after its answer.
                let cx = ResponseContext { client_keep_alive: cx.client_keep_alive && sig.keeps_clients(plain), ..cx };
                out.clear();
                match parse_response(sbuf.data(), cx, &mut out) {
                    Ok(Some(r)) => break r,
                    Ok(None) => match tokio::time::timeout(idle.server, sbuf.fill(&mut sr)).await {
                        Err(_) => return Down::Timeout { started },
                        Ok(Ok(0)) | Ok(Err(_)) if sbuf.is_empty() && !started => return Down::NoResponse,
                        Ok(Ok(0)) | Ok(Err(_)) => return Down::Broken { started },
                        Ok(Ok(_)) => {}
                    },
                    Err(e) => {
                        tracing::debug!(server = lease.server_name(), error = %e, "bad response");
                        return Down::Broken { started };
                    }
                }
            };
            sbuf.consume(resp.head_len);
            let head_len = out.len() as u64;
            let body_start = out.len();
            // The head leaves with whatever part of the body is already here (one write).
            let (rest, chunks) = match take_buffered(sbuf, resp.framing, &mut out) {
                Ok(x) => x,
                Err(_) => return Down::Broken { started },
            };
            let early_body = (out.len() - body_start) as u64;
            // Counted as received, before the client can see it (stats read right after a
            // response arrived include it).
            if !resp.interim {
                lease.count_response(resp.status);
            }
            if write_all_flush(&mut cw, &out, idle.client).await.is_err() {
                return Down::ClientGone;
            }
            started = true;
            lease.count_out(head_len + early_body);
            if resp.interim {
                continue;
            }
            if resp.tunnel {
                return Down::Tunnel;
            }
            // A response body may be a watch, silent for long stretches: `timeout tunnel`, when
            // longer, is its inactivity limit (HAProxy would use `timeout server`).
            let body_idle = idle.tunnel.map_or(idle.server, |t| t.max(idle.server));
            return match forward_body(&mut sr, sbuf, &mut cw, rest, chunks, body_idle, idle.client, &count_out).await {
                Ok(()) => Down::Done { server_keep_alive: resp.server_keep_alive, close_client: resp.close_client },
                Err(BodyError::ReadTimeout) => Down::Timeout { started },
                Err(BodyError::Write) => Down::ClientGone,
                Err(BodyError::ReadClosed | BodyError::Chunked(_)) => Down::Broken { started },
            };
        }
    };
    tokio::pin!(up, down);
    let mut kill = lease.kill_signal();
    let mut up_done: Option<bool> = None;
    loop {
        tokio::select! {
            // The upload first: a bodyless request is done at once, before a fast answer is seen.
            biased;
            r = &mut up, if up_done.is_none() => {
                match r {
                    Ok(()) => up_done = Some(true),
                    // The server stopped reading: its answer (e.g. 413) may still come.
                    Err(BodyError::Write) => up_done = Some(false),
                    Err(e) => {
                        tracing::debug!(error = ?e, "request body not passed on");
                        return (Down::ClientGone, false);
                    }
                }
            }
            d = &mut down => {
                if up_done.is_none() {
                    // The answer came first; the rest of the body may already be buffered.
                    if let Ok(r) = tokio::time::timeout(Duration::ZERO, &mut up).await {
                        up_done = Some(r.is_ok());
                    }
                }
                return (d, up_done == Some(true));
            }
            _ = kill.wait() => {
                lease.count_killed();
                return (Down::ClientGone, false);
            }
            _ = sig.wait(conn_event::KILL) => {
                lease.count_killed();
                return (Down::ClientGone, false);
            }
        }
    }
}

async fn write_all_flush<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, bytes: &[u8], t: Duration) -> std::io::Result<()> {
    match tokio::time::timeout(t, async {
        w.write_all(bytes).await?;
        w.flush().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

struct LeaseSink<'a>(&'a Lease);

impl ByteSink for LeaseSink<'_> {
    fn client_to_server(&self, n: u64) {
        self.0.count_in(n);
    }
    fn server_to_client(&self, n: u64) {
        self.0.count_out(n);
    }
}

/// After a 101: bytes already read on either side first, then a relay until either side ends.
async fn tunnel(fe: &Front, sig: &ConnSignal, mut client: Client, cbuf: Buf, mut server: TcpStream, sbuf: Buf, lease: Lease) {
    let idle = fe.cfg.timeouts;
    let tunnel_idle = idle.tunnel.unwrap_or(idle.client.max(idle.server));
    if !sbuf.is_empty() {
        if write_all_flush(&mut client, sbuf.data(), idle.client).await.is_err() {
            return;
        }
        lease.count_out(sbuf.data().len() as u64);
    }
    if !cbuf.is_empty() {
        if write_all_flush(&mut server, cbuf.data(), idle.server).await.is_err() {
            return;
        }
        lease.count_in(cbuf.data().len() as u64);
    }
    let mut kill = lease.kill_signal();
    let kill_fut = async {
        tokio::select! {
            _ = kill.wait() => {},
            _ = sig.wait(conn_event::KILL) => {},
        }
    };
    let killed = match &mut client {
        Client::Plain(tcp) => {
            let t = IdleTimeouts {
                client: idle.client,
                server: idle.server,
                tunnel: Some(tunnel_idle),
                client_fin: None,
                server_fin: None,
            };
            let end = relay(tcp, &server, fe.relay_mode, t, &LeaseSink(&lease), kill_fut).await;
            if matches!(end, RelayEnd::Timeout(_)) {
                lease.count_timeout();
            }
            matches!(end, RelayEnd::Killed)
        }
        Client::Tls(_) => {
            let a_to_b = |n| lease.count_in(n);
            let b_to_a = |n| lease.count_out(n);
            let end = copy_tunnel(&mut client, &mut server, tunnel_idle, &a_to_b, &b_to_a, kill_fut).await;
            if end == TunnelEnd::Timeout {
                lease.count_timeout();
            }
            end == TunnelEnd::Killed
        }
    };
    if killed {
        lease.count_killed();
        // Abortive close so both ends see the end at once (clients reconnect to a live server).
        let _ = socket2::SockRef::from(client.tcp()).set_linger(Some(Duration::ZERO));
        let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
    }
}
