//! The cluster daemon's I/O loop: UDP sockets per link feeding the sans-IO membership engine, its
//! events driving [`LocalResources`], a control socket for the operator commands, and systemd's
//! notify/watchdog protocol. See the module doc of [`crate::cluster`] for the lifecycle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ha_membership::auth::Authenticator;
use ha_membership::{Engine, EngineParams, Event, Member, NodeId};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::resources::{LocalResources, ResourceSetup};
use crate::control::{self, Request};
use crate::service;

/// Everything the daemon needs, resolved from the config file.
pub struct Setup {
    /// Membership parameters (node list, timings, quorum).
    pub params: EngineParams,
    /// The cluster key.
    pub auth: Authenticator,
    /// This node's address on each link (bound for receiving and sending).
    pub local_links: Vec<SocketAddr>,
    /// Every peer's address on each link.
    pub peers: BTreeMap<NodeId, Vec<SocketAddr>>,
    /// Resources; `None` for a vote-only witness.
    pub resources: Option<ResourceSetup>,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// Node names by id, for status output.
    pub names: BTreeMap<u32, String>,
}

/// Runs the daemon until SIGTERM/SIGINT. The protocol loop gets its own thread and runtime.
pub fn run(setup: Setup) -> anyhow::Result<()> {
    let handle = std::thread::Builder::new()
        .name("hastack-cluster".into())
        .spawn(move || {
            raise_priority();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(serve(setup))
        })
        .context("starting the protocol thread")?;
    handle.join().map_err(|_| anyhow::anyhow!("the protocol thread panicked"))?
}

/// SCHED_FIFO for the protocol thread where the system allows it (CAP_SYS_NICE / LimitRTPRIO):
/// failure detection must not starve under load. Without it, the Local Health Multiplier still
/// stretches timeouts instead of accusing healthy peers.
fn raise_priority() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter struct.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        info!("real-time priority not allowed here ({}); running at normal priority", std::io::Error::last_os_error());
    }
}

fn boot_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1)
}

async fn serve(setup: Setup) -> anyhow::Result<()> {
    let Setup { params, auth, local_links, peers, resources, control_socket, names } = setup;
    let local = params.local;
    let suspect_timeout = params.timing.suspect_timeout;
    let mut engine = Engine::new(params.clone(), auth.clone(), boot_epoch(), Instant::now()).context("membership parameters")?;

    let mut sockets = Vec::with_capacity(local_links.len());
    for addr in &local_links {
        let s = bind_link(*addr).with_context(|| format!("binding cluster link {addr}"))?;
        sockets.push(Arc::new(s));
    }
    let mut local_rs = match resources {
        Some(rs) => Some(LocalResources::start(local.0, rs).await?),
        None => None,
    };

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Request, oneshot::Sender<String>)>(16);
    let _control = control::serve(control_socket.clone(), ctl_tx).with_context(|| format!("control socket {}", control_socket.display()))?;

    // One receive task per link, all feeding one queue: the engine stays single-threaded.
    let (rx_tx, mut rx_rx) = mpsc::channel::<(usize, Vec<u8>)>(1024);
    for (link, s) in sockets.iter().enumerate() {
        let s = s.clone();
        let tx = rx_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((n, _)) => {
                        if tx.send((link, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(link, error = %e, "cluster link receive error"),
                }
            }
        });
    }

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let watchdog = service::watchdog_interval();
    let mut next_watchdog = watchdog.map(|w| Instant::now() + w);
    let renew_every = local_rs.as_ref().map(|r| r.renew_every()).unwrap_or(Duration::from_secs(3600));
    let mut next_renew = Instant::now() + renew_every;
    let mut view: Option<(u64, Vec<Member>)> = None;
    let mut fenced = false;
    // Set when this node was out of the quorate view (quorum lost, or its loop froze): it comes back
    // as a new life (a new boot epoch), so it counts as the newest member and takes nothing back
    // from the node that served meanwhile.
    let mut reincarnate = false;
    let mut had_quorum = false;
    let mut last_tick = Instant::now();
    service::ready("joining the cluster");
    info!(node = local.0, links = ?local_links, "cluster daemon started");

    loop {
        flush(&mut engine, &sockets, &peers).await;
        // Events change what this node holds.
        while let Some(ev) = engine.poll_event() {
            match ev {
                Event::ViewInstalled { view: id, members } => {
                    info!(epoch = id.epoch, coordinator = id.coordinator.0, members = ?members.iter().map(|m| m.node.0).collect::<Vec<_>>(), "view installed");
                    fenced = false;
                    view = Some((id.epoch, members));
                }
                Event::QuorumGained { view: id } => {
                    info!(epoch = id.epoch, "quorum gained");
                    had_quorum = true;
                }
                Event::QuorumLost => {
                    warn!("quorum lost");
                    if had_quorum {
                        reincarnate = true;
                    }
                }
                Event::LinkUp { node, link } => info!(peer = node.0, link, "link up"),
                Event::LinkDown { node, link } => warn!(peer = node.0, link, "link down"),
                Event::PeerSuspected { node } => info!(peer = node.0, "peer suspected"),
                Event::PeerFailed { node } => warn!(peer = node.0, "peer declared failed"),
                // Nothing is replicated over the ordered channel by this daemon yet.
                Event::Delivered { .. } => continue,
            }
            if let Some(rs) = local_rs.as_mut() {
                match (&view, engine.quorate() && !fenced) {
                    (Some((epoch, members)), true) => rs.apply_view(*epoch, members, true).await,
                    _ => rs.release_all().await,
                }
            }
        }
        let pending = local_rs.as_ref().and_then(|r| r.next_pending()).map(|t| t.into_std());
        let deadline = [engine.poll_timeout(), Some(next_renew), next_watchdog, pending]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some((link, datagram)) = rx_rx.recv() => {
                engine.handle_datagram(Instant::now(), link, &datagram);
            }
            Some((req, reply)) = ctl_rx.recv() => {
                let _ = reply.send(control::answer(&req, &engine, local_rs.as_ref(), &names));
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let now = Instant::now();
        // A loop that ran far later than asked (SIGSTOP, a frozen VM, starvation) may have been
        // declared failed by the others, who may have moved the VIP: hold nothing until a newer
        // view says otherwise.
        if now.saturating_duration_since(last_tick.max(deadline)) > suspect_timeout * 2 && !fenced {
            if let Some(rs) = local_rs.as_mut() {
                if !rs.held().is_empty() {
                    warn!(late_ms = now.saturating_duration_since(deadline).as_millis() as u64, "own loop ran late: releasing VIPs until a new view");
                    rs.release_all().await;
                    fenced = true;
                }
            }
            reincarnate = true;
        }
        if reincarnate {
            reincarnate = false;
            had_quorum = false;
            view = None;
            if let Some(rs) = local_rs.as_mut() {
                rs.release_all().await;
            }
            info!("rejoining the cluster as a new member");
            last_tick = now;
            engine = Engine::new(params.clone(), auth.clone(), boot_epoch(), now).context("membership parameters")?;
            continue;
        }
        last_tick = now;
        if engine.poll_timeout().is_some_and(|t| t <= now) {
            engine.handle_timeout(now);
        }
        if let Some(rs) = local_rs.as_mut() {
            rs.run_pending().await;
            if now >= next_renew {
                rs.renew().await;
                next_renew = now + renew_every;
            }
        }
        if let (Some(w), Some(t)) = (watchdog, next_watchdog) {
            if now >= t {
                service::watchdog_ping();
                next_watchdog = Some(now + w);
            }
        }
    }

    // Graceful stop: release first, then say Leave, so the next holder can add at once.
    service::stopping();
    info!("stopping: releasing resources and leaving the cluster");
    if let Some(rs) = local_rs.as_mut() {
        rs.release_all().await;
    }
    engine.leave(Instant::now());
    flush(&mut engine, &sockets, &peers).await;
    let _ = std::fs::remove_file(&control_socket);
    Ok(())
}

async fn flush(engine: &mut Engine, sockets: &[Arc<UdpSocket>], peers: &BTreeMap<NodeId, Vec<SocketAddr>>) {
    while let Some(t) = engine.poll_transmit() {
        let (Some(sock), Some(addr)) = (sockets.get(t.link), peers.get(&t.to).and_then(|a| a.get(t.link))) else {
            continue;
        };
        if let Err(e) = sock.send_to(&t.payload, addr).await {
            // A down link is normal (redundant links); the engine sees it through silence.
            tracing::debug!(peer = t.to.0, link = t.link, error = %e, "send failed");
        }
    }
}

fn bind_link(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_address(true)?;
    // Bind even when the link's address is not up yet (a node booting with its interface down).
    let _ = s.set_freebind_v4(true);
    // High priority for cluster traffic in qdiscs.
    let _ = s.set_tos_v4(0xb8);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    let std: std::net::UdpSocket = s.into();
    UdpSocket::from_std(std)
}
