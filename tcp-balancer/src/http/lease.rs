//! Server legs for sessions the caller relays itself (http mode, TLS termination): the backend's
//! balancing decision, queue, connect retries and redispatch, as in tcp mode, but handing the
//! connected server stream to the caller. Compiled as a child of [`crate::proxy`] so it shares
//! the backend's private state without widening its API.
//!
//! Lease lifecycle: **assign** (a server slot, waiting in the backend queue when every server
//! is at its maxconn) → **reuse** an idle connection the caller offers for that server, or
//! **connect** (retries, redispatch, PROXY header) → **registered** (counted in the server's
//! sessions and `show sess`, killable by shutdown-sessions and hard stop) → **dropped** (slot
//! freed, the queue's head served). In http mode one lease covers one request, so the server
//! slot is held only while a request is in flight and idle keep-alive connections hold none.

use super::*;

/// Why no server leg could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LeaseError {
    /// No server is eligible (all down, in maintenance or draining).
    #[error("no server is available")]
    NoServer,
    /// Every server is full and the queue too.
    #[error("the backend queue is full")]
    QueueFull,
    /// Waited `timeout queue` for a server slot.
    #[error("timed out in the backend queue")]
    QueueTimeout,
    /// Every connect attempt (retries and redispatch included) failed.
    #[error("every connect attempt failed")]
    ConnectFailed,
}

/// One server slot held by a caller-relayed session; dropping it frees the slot.
pub struct Lease {
    sh: Arc<Shared>,
    idx: usize,
    held: bool,
    registered: bool,
    id: u64,
    /// Raised through the session table by every cause (server down with shutdown-sessions,
    /// `shutdown sessions`, rebalancing, end of drain): one wake source per request instead of
    /// a subscription per cause.
    signal: Arc<StopSignal>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("server", &self.sh.servers[self.idx].name).field("id", &self.id).finish()
    }
}

impl Lease {
    /// Index of the server in its backend.
    pub fn server(&self) -> usize {
        self.idx
    }

    /// Name of the server.
    pub fn server_name(&self) -> &str {
        &self.sh.servers[self.idx].name
    }

    /// The server sends a PROXY header first: its connections belong to one client and are
    /// not reused for another.
    pub fn sends_proxy(&self) -> bool {
        self.sh.cfg.backend.servers[self.idx].send_proxy.is_some()
    }

    /// What ends the session early: see [`KillSignal::wait`].
    pub fn kill_signal(&self) -> KillSignal {
        KillSignal(self.signal.clone())
    }

    /// Adds `n` bytes relayed from the client to the server.
    pub fn count_in(&self, n: u64) {
        self.sh.frontend.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.sh.servers[self.idx].counters.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `n` bytes relayed from the server to the client.
    pub fn count_out(&self, n: u64) {
        self.sh.frontend.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.sh.servers[self.idx].counters.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a response of the server by status class.
    pub fn count_response(&self, status: u16) {
        self.sh.frontend.http.response(status);
        self.sh.servers[self.idx].counters.http.response(status);
    }

    /// Counts the session as ended by an inactivity timeout.
    pub fn count_timeout(&self) {
        self.sh.servers[self.idx].counters.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the session as shut by the balancer.
    pub fn count_killed(&self) {
        self.sh.servers[self.idx].counters.killed.fetch_add(1, Ordering::Relaxed);
    }

    fn register(&mut self, peer: SocketAddr) {
        let srv = &self.sh.servers[self.idx];
        srv.counters.open();
        srv.counters.http.requests.fetch_add(1, Ordering::Relaxed);
        self.sh.frontend.open();
        self.sh.frontend.http.requests.fetch_add(1, Ordering::Relaxed);
        let (gen_srv, gen_all) = (*srv.kill.borrow(), *self.sh.kill_all.borrow());
        self.sh.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(
            self.id,
            SessionEntry { client: peer, server: self.idx, since: Instant::now(), kill: SessionKill::Lease(self.signal.clone()) },
        );
        self.registered = true;
        // A kill raised between reading the generations and the insertion missed the table.
        if *srv.kill.borrow() != gen_srv || *self.sh.kill_all.borrow() != gen_all {
            self.signal.raise(Stop::Kill);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.registered {
            self.sh.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
            self.sh.servers[self.idx].counters.close();
            self.sh.frontend.close();
        }
        if self.held {
            self.sh.release(self.idx);
        }
        if self.sh.alive.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sh.idle.notify_waiters();
        }
    }
}

/// The balancer's reasons to end one leased session.
#[derive(Debug)]
pub struct KillSignal(Arc<StopSignal>);

impl KillSignal {
    /// Resolves when the session must end: its server was marked down with shutdown-sessions,
    /// an operator shut its sessions, rebalancing shed it, or the backend is stopping hard.
    pub async fn wait(&mut self) {
        std::future::poll_fn(|cx| self.0.poll_raised(cx)).await;
    }
}

impl Proxy {
    /// A server slot for a client at `peer` that reached `local`, with a server connection:
    /// `reuse(server)` may offer an idle connection to the chosen server (`true` is returned
    /// with it), otherwise one is opened with the backend's retries, redispatch and PROXY header.
    pub async fn lease_connected(
        &self,
        peer: SocketAddr,
        local: SocketAddr,
        reuse: impl FnOnce(usize) -> Option<TcpStream>,
    ) -> Result<(Lease, TcpStream, bool), LeaseError> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let hash = hash_addr(peer.ip());
        let assigned = |e: AssignError| {
            let (c, err) = match e {
                AssignError::NoServer => (&sh.backend.no_server, LeaseError::NoServer),
                AssignError::QueueFull => (&sh.backend.queue_full, LeaseError::QueueFull),
                AssignError::QueueTimeout => (&sh.backend.queue_timeouts, LeaseError::QueueTimeout),
            };
            c.fetch_add(1, Ordering::Relaxed);
            err
        };
        let idx = assign(sh, hash, None).await.map_err(assigned)?;
        sh.alive.fetch_add(1, Ordering::AcqRel);
        let mut lease = Lease {
            sh: sh.clone(),
            idx,
            held: true,
            registered: false,
            id: sh.next_id.fetch_add(1, Ordering::Relaxed),
            signal: Arc::new(StopSignal::new()),
        };
        if let Some(s) = reuse(idx) {
            lease.register(peer);
            return Ok((lease, s, true));
        }
        let be = &cfg.backend;
        let ka = cfg.keepalive.as_ref();
        let mut retry = 0u32;
        let mut server = loop {
            let srv = &sh.servers[lease.idx];
            match connect(srv.addr, cfg.timeouts.connect, ka).await {
                Ok(s) => break s,
                Err(e) => {
                    srv.counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(server = %srv.name, error = %e, retry, "connect failed");
                    if retry >= be.retries {
                        sh.backend.connect_failed.fetch_add(1, Ordering::Relaxed);
                        return Err(LeaseError::ConnectFailed);
                    }
                    retry += 1;
                    srv.counters.retries.fetch_add(1, Ordering::Relaxed);
                    if be.redispatch.applies(retry, be.retries) {
                        let failed = lease.idx;
                        // Free the slot first so a full server can be re-picked if it is the only one.
                        lease.held = false;
                        sh.release(failed);
                        match assign(sh, hash, Some(failed)).await {
                            Ok(i) => {
                                lease.idx = i;
                                lease.held = true;
                            }
                            Err(_) => {
                                sh.backend.connect_failed.fetch_add(1, Ordering::Relaxed);
                                return Err(LeaseError::ConnectFailed);
                            }
                        }
                        if lease.idx != failed {
                            sh.servers[lease.idx].counters.redispatches.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        tokio::time::sleep(be.retry_delay.min(cfg.timeouts.connect)).await;
                    }
                }
            }
        };
        tune(SockRef::from(&server), ka);
        if let Some(v) = be.servers[lease.idx].send_proxy {
            let mut first = Vec::new();
            proxy_protocol::emit(&Header::Tcp { src: peer, dst: local }, v, &mut first);
            let w = tokio::time::timeout(cfg.timeouts.idle.server, server.write_all(&first)).await;
            if !matches!(w, Ok(Ok(()))) {
                sh.backend.connect_failed.fetch_add(1, Ordering::Relaxed);
                return Err(LeaseError::ConnectFailed);
            }
        }
        lease.register(peer);
        Ok((lease, server, false))
    }

    /// Whether the server at `idx` may take new requests (up, ready): idle connections to any
    /// other server are not reused.
    pub fn server_usable(&self, idx: usize) -> bool {
        let st = self.shared.lock();
        st.table.server(idx).is_some_and(|s| s.is_up() && s.admin() == AdminState::Ready)
    }

    /// Whether any server may take new requests (monitor-uri's answer).
    pub fn has_usable_server(&self) -> bool {
        let st = self.shared.lock();
        st.table.servers().iter().any(|s| s.is_up() && s.admin() == AdminState::Ready && s.eweight() > 0)
    }

    /// Session timeouts of this backend.
    pub fn timeouts(&self) -> Timeouts {
        self.shared.cfg.timeouts
    }

    /// Keepalive settings of both legs.
    pub fn keepalive(&self) -> Option<Keepalive> {
        self.shared.cfg.keepalive
    }

    /// Splice or copy.
    pub fn relay_mode(&self) -> RelayMode {
        self.shared.cfg.relay
    }

    /// Number of servers in the backend.
    pub fn server_count(&self) -> usize {
        self.shared.servers.len()
    }
}

/// Sets TCP_NODELAY and keepalive on a client socket accepted by another frontend type.
pub fn tune_client(sock: &TcpStream, ka: Option<&Keepalive>) {
    tune(SockRef::from(sock), ka);
}

/// Reads a PROXY header (accept-proxy) from a client accepted by another frontend type;
/// returns it with any bytes read past it.
pub(crate) async fn read_proxy(client: &mut TcpStream) -> std::io::Result<(Header, Vec<u8>)> {
    read_proxy_header(client, Vec::new()).await
}

/// Reads a PROXY header and not one byte more, so what follows (a TLS ClientHello: HAProxy's
/// `bind ... accept-proxy ssl`) stays in the socket for the next reader. v2 headers are read in
/// two exact reads; a v1 line byte by byte after its first 15 bytes (at most 107 in all).
pub(crate) async fn read_proxy_exact(client: &mut TcpStream) -> std::io::Result<Header> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    // 15 bytes: the shortest v1 header ("PROXY UNKNOWN\r\n") and less than a v2 fixed header.
    let mut buf = vec![0u8; 15];
    client.read_exact(&mut buf).await?;
    loop {
        match proxy_protocol::parse(&buf) {
            Ok(Some((h, len))) if len == buf.len() => return Ok(h),
            Ok(Some(_)) => return Err(bad("PROXY header shorter than what was read".into())),
            Ok(None) => {}
            Err(e) => return Err(bad(e.to_string())),
        }
        let want = if buf.starts_with(&proxy_protocol::V2_SIG) && buf.len() >= 16 {
            (16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]))).saturating_sub(buf.len()).max(1)
        } else {
            1
        };
        if buf.len() + want > proxy_protocol::V2_MAX.max(proxy_protocol::V1_MAX) {
            return Err(bad("PROXY header too long".into()));
        }
        let start = buf.len();
        buf.resize(start + want, 0);
        client.read_exact(&mut buf[start..]).await?;
    }
}
