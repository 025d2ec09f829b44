//! The thin tokio driver: UDP sockets (one per link) around the sans-IO [`Engine`].
//!
//! The engine runs on its own OS thread with a current-thread runtime, so load elsewhere in the
//! process cannot delay heartbeats, and the thread asks for SCHED_FIFO real-time priority (ignored
//! when not permitted). Received datagrams are handled before due timers, so a briefly stalled
//! thread first learns what its peers said before it judges their silence.
//!
//! Lifecycle: `spawn` → Running (datagrams, timers, commands) → `leave` or handle dropped → Leaving
//! (Leave sent on every link) → thread exits.

use crate::auth::{AuthKeyError, Authenticator};
use crate::channel::ChannelError;
use crate::engine::{Engine, EngineParams, Event, ParamsError, Status, Timing};
use crate::wire::{MAX_DATAGRAM, NodeId};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Where the authkey comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Read and check this file (mode 0600, at least 32 bytes).
    File(PathBuf),
    /// Use this key material directly (tests, or a key the caller already loaded).
    Material(Vec<u8>),
}

/// Everything needed to run one node's membership.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Engine parameters (node list, timings, quorum).
    pub params: EngineParams,
    /// Each node's address on each link (index = link number).
    pub addrs: BTreeMap<NodeId, Vec<SocketAddr>>,
    /// The shared key.
    pub key: KeySource,
    /// SCHED_FIFO priority for the membership thread (1..=99); `None` keeps the default scheduler.
    pub realtime_priority: Option<i32>,
    /// File remembering the last boot epoch, so a clock stepped backwards cannot make a restarted
    /// node look older than its previous life (peers would drop it as a replay). `None`: clock only.
    pub boot_state: Option<PathBuf>,
}

/// Why the driver could not start or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The authkey is unusable (operator must fix it; not retryable).
    #[error(transparent)]
    AuthKey(#[from] AuthKeyError),
    /// The parameters are inconsistent (not retryable).
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// The local node has no address for a link it is configured with.
    #[error("no address for node {node} link {link}")]
    MissingAddress { node: NodeId, link: usize },
    /// Binding a link socket failed (address in use or not configured on this host; retryable).
    #[error("cannot bind link {link} to {addr}: {source}")]
    Bind { link: usize, addr: SocketAddr, source: std::io::Error },
    /// The runtime or thread could not be created.
    #[error("cannot start the membership thread: {0}")]
    Thread(std::io::Error),
    /// The channel refused the message.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The membership thread is gone.
    #[error("membership thread stopped")]
    Stopped,
    /// The boot-epoch state file could not be read or written.
    #[error("boot state {path}: {source}")]
    BootState { path: PathBuf, source: std::io::Error },
}

enum Command {
    Broadcast(Bytes, oneshot::Sender<Result<u64, ChannelError>>),
    Leave(oneshot::Sender<()>),
    Halt(oneshot::Sender<()>),
    Timing(Timing, oneshot::Sender<Result<(), ParamsError>>),
}

/// A running membership node.
pub struct ClusterHandle {
    cmds: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Arc<Status>>,
    /// Until when the strict quorum lasts unrenewed ([`Engine::quorum_lease`]), after the latest step.
    lease: Arc<std::sync::Mutex<Option<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClusterHandle {
    /// The latest status snapshot (refreshed at least every heartbeat interval).
    pub fn status(&self) -> Arc<Status> {
        self.status.borrow().clone()
    }

    /// Until when this node's strict quorum (vote leases, [`Engine::quorate_at`]) lasts if no lease
    /// is renewed; `None` when it does not hold. Updated after every step of the membership thread.
    pub fn quorum_lease(&self) -> Option<Instant> {
        self.lease.lock().map(|l| *l).unwrap_or(None)
    }

    /// Whether this node holds the strict quorum right now (a fresh majority of vote leases).
    pub fn vote_lease_valid(&self) -> bool {
        self.quorum_lease().is_some_and(|t| Instant::now() < t)
    }

    /// A receiver that sees each new status snapshot.
    pub fn watch_status(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    /// Queue a message on the ordered cluster channel.
    pub async fn broadcast(&self, payload: Bytes) -> Result<u64, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Command::Broadcast(payload, tx)).map_err(|_| DriverError::Stopped)?;
        Ok(rx.await.map_err(|_| DriverError::Stopped)??)
    }

    /// Apply new timings (config reload) without restarting.
    pub async fn update_timing(&self, timing: Timing) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Command::Timing(timing, tx)).map_err(|_| DriverError::Stopped)?;
        Ok(rx.await.map_err(|_| DriverError::Stopped)??)
    }

    /// Stop at once without telling anyone, as a crash would (peers detect the silence). For tests
    /// and for fencing drills; a normal stop is [`ClusterHandle::leave`].
    pub async fn halt(mut self) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Command::Halt(tx)).map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(())
    }

    /// Leave the cluster gracefully and stop the thread.
    pub async fn leave(mut self) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Command::Leave(tx)).map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?;
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(())
    }
}

/// Sends on the ordered channel from tasks running on the membership thread itself (see
/// [`spawn_with`]): a message handed to it reaches the engine without crossing threads. It holds
/// the command queue weakly, so it never keeps a node running after its [`ClusterHandle`] is gone.
#[derive(Clone)]
pub struct ChannelSender {
    cmds: mpsc::WeakUnboundedSender<Command>,
}

impl ChannelSender {
    /// Queue a message on the ordered cluster channel (as [`ClusterHandle::broadcast`]).
    pub async fn broadcast(&self, payload: Bytes) -> Result<u64, DriverError> {
        let cmds = self.cmds.upgrade().ok_or(DriverError::Stopped)?;
        let (tx, rx) = oneshot::channel();
        cmds.send(Command::Broadcast(payload, tx)).map_err(|_| DriverError::Stopped)?;
        drop(cmds);
        Ok(rx.await.map_err(|_| DriverError::Stopped)??)
    }
}

/// A boot epoch from the wall clock (microseconds since the Unix epoch).
pub fn boot_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

/// A boot epoch larger than the clock's and than the one stored in `path`, which is then updated
/// (written to a temporary file and renamed, so a crash leaves the old or the new value).
pub fn next_boot_epoch(path: &std::path::Path) -> Result<u64, DriverError> {
    let err = |source| DriverError::BootState { path: path.into(), source };
    let prev = match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(e)),
    };
    let next = boot_epoch().max(prev.saturating_add(1));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{next}\n")).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(next)
}

fn set_realtime(priority: i32) {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: plain syscall on the calling thread with a valid, initialised parameter struct.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        tracing::info!(%err, "SCHED_FIFO not available; membership runs with the default scheduler");
    }
}

/// Start the membership thread: binds the link sockets, then runs until `leave` or the handle drops.
/// Events (views, quorum, links, channel deliveries) arrive on the returned receiver, in order.
pub fn spawn(cfg: DriverConfig) -> Result<(ClusterHandle, mpsc::UnboundedReceiver<Event>), DriverError> {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let handle = start(cfg, ev_tx, Box::new(|_| {}))?;
    Ok((handle, ev_rx))
}

/// [`spawn`], with the events handed to `on_thread`, which is called once on the membership
/// thread, inside its runtime, before the engine's loop starts: tasks it spawns (`tokio::spawn`)
/// run on that thread beside the engine, so a consumer of the channel can take deliveries and
/// send messages ([`ChannelSender`]) without a thread hop per message. They are dropped when the
/// membership thread ends (after a leave or halt). Keep them short per wake-up: they share the
/// thread (and its real-time priority) with failure detection.
pub fn spawn_with<F>(cfg: DriverConfig, on_thread: F) -> Result<ClusterHandle, DriverError>
where
    F: FnOnce(mpsc::UnboundedReceiver<Event>, ChannelSender) + Send + 'static,
{
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    start(cfg, ev_tx, Box::new(move |sender| on_thread(ev_rx, sender)))
}

type OnThread = Box<dyn FnOnce(ChannelSender) + Send>;

fn start(cfg: DriverConfig, ev_tx: mpsc::UnboundedSender<Event>, on_thread: OnThread) -> Result<ClusterHandle, DriverError> {
    let auth = match &cfg.key {
        KeySource::File(p) => Authenticator::load(p)?,
        KeySource::Material(m) => Authenticator::from_key_material(m),
    };
    let local = cfg.params.local;
    let links = cfg
        .params
        .nodes
        .iter()
        .find(|n| n.id == local)
        .map(|n| n.links)
        .ok_or(ParamsError::LocalNotListed(local))?;
    let mut binds = Vec::with_capacity(links);
    for link in 0..links {
        let addr = cfg
            .addrs
            .get(&local)
            .and_then(|a| a.get(link))
            .copied()
            .ok_or(DriverError::MissingAddress { node: local, link })?;
        let sock = std::net::UdpSocket::bind(addr).map_err(|source| DriverError::Bind { link, addr, source })?;
        sock.set_nonblocking(true).map_err(|source| DriverError::Bind { link, addr, source })?;
        binds.push(sock);
    }
    let boot = match &cfg.boot_state {
        Some(p) => next_boot_epoch(p)?,
        None => boot_epoch(),
    };
    let engine = Engine::new(cfg.params.clone(), auth, boot, Instant::now())?;
    let (status_tx, status_rx) = watch::channel(Arc::new(engine.status()));
    let lease = Arc::new(std::sync::Mutex::new(None));
    let lease_w = lease.clone();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let addrs = cfg.addrs.clone();
    let prio = cfg.realtime_priority;
    let sender = ChannelSender { cmds: cmd_tx.downgrade() };
    let thread = std::thread::Builder::new()
        .name(format!("hastack-membership-{local}"))
        .spawn(move || {
            if let Some(p) = prio {
                set_realtime(p);
            }
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the membership runtime");
                    return;
                }
            };
            rt.block_on(async move {
                on_thread(sender);
                run(engine, binds, addrs, cmd_rx, ev_tx, status_tx, lease_w).await
            });
        })
        .map_err(DriverError::Thread)?;
    Ok(ClusterHandle { cmds: cmd_tx, status: status_rx, lease, thread: Some(thread) })
}

async fn run(
    mut engine: Engine,
    binds: Vec<std::net::UdpSocket>,
    addrs: BTreeMap<NodeId, Vec<SocketAddr>>,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    status: watch::Sender<Arc<Status>>,
    lease: Arc<std::sync::Mutex<Option<Instant>>>,
) {
    let mut socks = Vec::new();
    for s in binds {
        match UdpSocket::from_std(s) {
            Ok(s) => socks.push(Arc::new(s)),
            Err(e) => {
                tracing::error!(error = %e, "cannot register link socket");
                return;
            }
        }
    }
    // One receive task per link feeds a single queue, so the engine sees datagrams in arrival order.
    let (rx_tx, mut rx) = mpsc::channel::<(usize, Bytes)>(4096);
    let mut readers = Vec::new();
    for (link, s) in socks.iter().enumerate() {
        let s = s.clone();
        let tx = rx_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM + 512];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, _from)) => {
                        if tx.send((link, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // ICMP errors (peer port closed) surface here on Linux; they are not fatal.
                        tracing::trace!(link, error = %e, "link receive error");
                        tokio::task::yield_now().await;
                    }
                }
            }
        }));
    }
    drop(rx_tx);
    let mut last_status = Instant::now();
    let mut leave_ack: Option<oneshot::Sender<()>> = None;
    loop {
        let changed = flush(&mut engine, &socks, &addrs, &events).await;
        let now = Instant::now();
        if let Ok(mut l) = lease.lock() {
            *l = engine.quorum_lease(now);
        }
        // Refresh on every state change, and at least every 10 ms for link and counter updates.
        if changed || now.duration_since(last_status) >= Duration::from_millis(10) {
            last_status = now;
            status.send_replace(Arc::new(engine.status()));
        }
        if engine.has_left() {
            break;
        }
        let deadline = engine.poll_timeout().unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            biased;
            Some((link, d)) = rx.recv() => {
                engine.handle_datagram(Instant::now(), link, &d);
                // Drain what else is queued before timers run.
                while let Ok((link, d)) = rx.try_recv() {
                    engine.handle_datagram(Instant::now(), link, &d);
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Command::Broadcast(p, reply)) => {
                    let _ = reply.send(engine.broadcast(Instant::now(), p));
                }
                Some(Command::Leave(reply)) => {
                    engine.leave(Instant::now());
                    leave_ack = Some(reply);
                }
                Some(Command::Timing(t, reply)) => {
                    let _ = reply.send(engine.update_timing(t));
                }
                Some(Command::Halt(reply)) => {
                    for r in &readers {
                        r.abort();
                    }
                    if let Ok(mut l) = lease.lock() {
                        *l = None;
                    }
                    let _ = reply.send(());
                    return;
                }
                None => engine.leave(Instant::now()),
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                engine.handle_timeout(Instant::now());
            }
        }
    }
    let _ = flush(&mut engine, &socks, &addrs, &events).await;
    status.send_replace(Arc::new(engine.status()));
    if let Ok(mut l) = lease.lock() {
        *l = None;
    }
    for r in readers {
        r.abort();
    }
    if let Some(a) = leave_ack {
        let _ = a.send(());
    }
}

async fn flush(
    engine: &mut Engine,
    socks: &[Arc<UdpSocket>],
    addrs: &BTreeMap<NodeId, Vec<SocketAddr>>,
    events: &mpsc::UnboundedSender<Event>,
) -> bool {
    while let Some(t) = engine.poll_transmit() {
        let (Some(sock), Some(addr)) = (socks.get(t.link), addrs.get(&t.to).and_then(|a| a.get(t.link))) else {
            continue;
        };
        if let Err(e) = sock.send_to(&t.payload, addr).await {
            tracing::trace!(to = %t.to, link = t.link, error = %e, "send failed");
        }
    }
    let mut changed = false;
    while let Some(ev) = engine.poll_event() {
        changed |= !matches!(ev, Event::Delivered { .. });
        // The receiver may be gone during shutdown; events are then irrelevant.
        let _ = events.send(ev);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::NodeSpec;
    use crate::quorum::QuorumSettings;

    fn free_ports(n: usize) -> Vec<SocketAddr> {
        // Bind to port 0 to let the kernel choose, then release: fine for a loopback test.
        (0..n)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.local_addr().unwrap()
            })
            .collect()
    }

    fn cfg(local: u32, addrs: &BTreeMap<NodeId, Vec<SocketAddr>>) -> DriverConfig {
        let nodes = (1..=3).map(|i| NodeSpec { id: NodeId(i), votes: 1, links: 2, witness: false }).collect();
        DriverConfig {
            params: EngineParams {
                cluster_id: 7,
                local: NodeId(local),
                nodes,
                timing: Timing::default(),
                quorum: QuorumSettings::default(),
            },
            addrs: addrs.clone(),
            key: KeySource::Material(b"driver test key material, 32 bytes+".to_vec()),
            realtime_priority: Some(10),
            boot_state: None,
        }
    }

    /// Skips events until the next delivery, which must be `payload` from `origin` (5 s at most).
    async fn wait_delivered(rx: &mut mpsc::UnboundedReceiver<Event>, payload: &[u8], origin: NodeId) {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Event::Delivered { payload: p, origin: o, .. })) => {
                    assert_eq!((&p[..], o), (payload, origin));
                    return;
                }
                Ok(Some(_)) => {}
                other => panic!("not delivered: {other:?}"),
            }
        }
    }

    async fn wait_view(rx: &mut mpsc::UnboundedReceiver<Event>, n: usize) -> crate::wire::ViewId {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(Event::ViewInstalled { view, members })) if members.len() == n => return view,
                Ok(Some(_)) => {}
                other => panic!("no view of {n} members: {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_nodes_on_loopback_form_order_and_leave() {
        let ports = free_ports(6);
        let addrs: BTreeMap<NodeId, Vec<SocketAddr>> =
            (1..=3u32).map(|i| (NodeId(i), vec![ports[(i as usize - 1) * 2], ports[(i as usize - 1) * 2 + 1]])).collect();
        let (h1, mut e1) = spawn(cfg(1, &addrs)).unwrap();
        let (h2, mut e2) = spawn(cfg(2, &addrs)).unwrap();
        let (h3, mut e3) = spawn(cfg(3, &addrs)).unwrap();
        let v = wait_view(&mut e1, 3).await;
        assert_eq!(wait_view(&mut e2, 3).await, v);
        assert_eq!(wait_view(&mut e3, 3).await, v);

        h2.broadcast(Bytes::from_static(b"hello")).await.unwrap();
        for rx in [&mut e1, &mut e3] {
            wait_delivered(rx, b"hello", NodeId(2)).await;
        }
        let st = h1.status();
        assert!(st.quorum.quorate);
        h1.update_timing(Timing::default()).await.unwrap();
        let bad = Timing { suspect_timeout: Duration::from_millis(1), ..Timing::default() };
        assert!(matches!(h1.update_timing(bad).await, Err(DriverError::Params(_))));

        let t = Instant::now();
        h3.leave().await.unwrap();
        wait_view(&mut e1, 2).await;
        assert!(t.elapsed() < Duration::from_secs(1), "leave committed in {:?}", t.elapsed());
        assert_eq!(h1.status().stats.failures_declared, 0, "a leave is not a failure");
        h1.leave().await.unwrap();
        h2.leave().await.unwrap();
    }

    /// Real sockets, real time: a silent crash is committed quickly, and forged, replayed and
    /// malformed datagrams on the wire change nothing but the counters.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_detection_and_hostile_datagrams_on_loopback() {
        let ports = free_ports(6);
        let addrs: BTreeMap<NodeId, Vec<SocketAddr>> =
            (1..=3u32).map(|i| (NodeId(i), vec![ports[(i as usize - 1) * 2], ports[(i as usize - 1) * 2 + 1]])).collect();
        let (h1, mut e1) = spawn(cfg(1, &addrs)).unwrap();
        let (h2, mut e2) = spawn(cfg(2, &addrs)).unwrap();
        let (h3, mut e3) = spawn(cfg(3, &addrs)).unwrap();
        let v = wait_view(&mut e1, 3).await;
        assert_eq!(wait_view(&mut e2, 3).await, v);
        wait_view(&mut e3, 3).await;

        // Hostile traffic at node 1's link 0: garbage, a datagram sealed with another key, an
        // oversized one, and a replay of a genuine datagram captured from node 2's engine output.
        let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = addrs[&NodeId(1)][0];
        let before = h1.status().drops;
        attacker.send_to(b"not a membership datagram", target).unwrap();
        let other = Authenticator::from_key_material(b"some other cluster's key material!!");
        let hdr = crate::wire::Header { cluster_id: 7, sender: NodeId(2), boot: 1, seq: 1 };
        attacker.send_to(&other.seal(&hdr, &crate::wire::Message::Leave).unwrap(), target).unwrap();
        attacker.send_to(&vec![0u8; MAX_DATAGRAM + 100], target).unwrap();
        let genuine = Authenticator::from_key_material(b"driver test key material, 32 bytes+");
        // Boot 1 is older than node 2's real boot: dropped as a replay of an old life.
        attacker.send_to(&genuine.seal(&hdr, &crate::wire::Message::Leave).unwrap(), target).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let d = h1.status().drops;
            if d.malformed > before.malformed
                && d.forged > before.forged
                && d.oversized > before.oversized
                && d.replayed > before.replayed
            {
                break;
            }
            assert!(Instant::now() < deadline, "drops not counted: {d:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = h1.status();
        assert_eq!(st.view.as_ref().map(|v| v.id), Some(v), "hostile datagrams changed the view");
        assert_eq!(st.stats.failures_declared, 0);

        // kill -9 of node 3's membership: the others commit a view without it.
        let t = Instant::now();
        h3.halt().await.unwrap();
        wait_view(&mut e1, 2).await;
        let took = t.elapsed();
        eprintln!("loopback: crash committed after {took:?}");
        // Generous for a loaded CI machine; the simulator checks the ~50 ms budget precisely.
        assert!(took < Duration::from_secs(2), "crash committed after {took:?}");
        h1.leave().await.unwrap();
        h2.leave().await.unwrap();
    }

    /// `spawn_with`: the consumer runs on the membership thread, sends with a `ChannelSender`
    /// from there, and the sender does not keep a node alive once its handle is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_on_the_membership_thread_send_and_receive() {
        let ports = free_ports(6);
        let addrs: BTreeMap<NodeId, Vec<SocketAddr>> =
            (1..=3u32).map(|i| (NodeId(i), vec![ports[(i as usize - 1) * 2], ports[(i as usize - 1) * 2 + 1]])).collect();
        // Its own cluster id: the other loopback tests run at the same time, and a port the
        // kernel hands out again must not join two tests' nodes into one cluster.
        let cfg = |n: u32, addrs: &BTreeMap<NodeId, Vec<SocketAddr>>| {
            let mut c = cfg(n, addrs);
            c.params.cluster_id = 8;
            c
        };
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, Bytes)>();
        let (sender_tx, sender_rx) = std::sync::mpsc::channel::<ChannelSender>();
        let h1 = spawn_with(cfg(1, &addrs), move |mut events, sender| {
            let _ = sender_tx.send(sender.clone());
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    match ev {
                        // Installed with three members: say so on the channel, from this thread.
                        Event::ViewInstalled { members, .. } if members.len() == 3 => {
                            let _ = sender.broadcast(Bytes::from_static(b"from the membership thread")).await;
                        }
                        Event::Delivered { payload, .. } => {
                            let name = std::thread::current().name().unwrap_or("").to_string();
                            let _ = seen_tx.send((name, payload));
                        }
                        _ => {}
                    }
                }
            });
        })
        .unwrap();
        let (h2, mut e2) = spawn(cfg(2, &addrs)).unwrap();
        let (h3, _e3) = spawn(cfg(3, &addrs)).unwrap();
        wait_delivered(&mut e2, b"from the membership thread", NodeId(1)).await;
        h2.broadcast(Bytes::from_static(b"to node 1")).await.unwrap();
        loop {
            let (thread, payload) = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.expect("delivered").unwrap();
            if &payload[..] == b"to node 1" {
                assert_eq!(thread, "hastack-membership-1", "consumed on the membership thread");
                break;
            }
        }
        let sender = sender_rx.recv().unwrap();
        h1.leave().await.unwrap();
        assert!(matches!(sender.broadcast(Bytes::from_static(b"late")).await, Err(DriverError::Stopped)));
        h2.leave().await.unwrap();
        h3.leave().await.unwrap();
    }

    #[test]
    fn boot_epoch_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot");
        let a = next_boot_epoch(&p).unwrap();
        // A stored value ahead of the clock (the clock was stepped back) still moves forward.
        std::fs::write(&p, format!("{}\n", a + 10_000_000_000)).unwrap();
        let b = next_boot_epoch(&p).unwrap();
        assert_eq!(b, a + 10_000_000_001);
        assert!(next_boot_epoch(&p).unwrap() > b);
    }

    #[test]
    fn refuses_world_readable_authkey() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("authkey");
        std::fs::write(&p, [7u8; 64]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let ports = free_ports(6);
        let addrs: BTreeMap<NodeId, Vec<SocketAddr>> =
            (1..=3u32).map(|i| (NodeId(i), vec![ports[(i as usize - 1) * 2], ports[(i as usize - 1) * 2 + 1]])).collect();
        let mut c = cfg(1, &addrs);
        c.key = KeySource::File(p);
        match spawn(c) {
            Err(DriverError::AuthKey(AuthKeyError::Permissions { .. })) => {}
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started with a world-readable authkey"),
        }
    }
}
