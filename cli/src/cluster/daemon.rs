//! The cluster daemon's loop: the membership driver (its own real-time thread, see
//! `ha_membership::driver`) delivers events; this loop places resources on every agreed view, keeps
//! VIP leases renewed, answers the control socket, and speaks systemd's notify/watchdog protocol. See
//! the module doc of [`crate::cluster`] for the lifecycle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use ha_membership::driver::{self, ClusterHandle, DriverConfig};
use ha_membership::{Event, Member};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::resources::{LocalResources, ResourceSetup};
use crate::control::{self, Request};
use crate::service;

/// Everything the daemon needs, resolved from the config file.
pub struct Setup {
    /// Membership: node list, timings, quorum, link addresses, key.
    pub driver: DriverConfig,
    /// Resources; `None` for a vote-only witness.
    pub resources: Option<ResourceSetup>,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// Node names by id, for status output.
    pub names: BTreeMap<u32, String>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(setup: Setup) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(serve(setup))
}

/// How often the loop wakes when nothing happens: lease renewals, handovers and the self-check for a
/// frozen process are driven from this tick.
const TICK: Duration = Duration::from_millis(10);

async fn serve(setup: Setup) -> anyhow::Result<()> {
    let Setup { driver: dcfg, resources, control_socket, names } = setup;
    let local = dcfg.params.local;
    let late_after = dcfg.params.timing.suspect_timeout * 2 + TICK;
    let mut local_rs = match resources {
        Some(rs) => Some(LocalResources::start(local.0, rs).await?),
        None => None,
    };
    let (mut handle, mut events) = driver::spawn(dcfg.clone()).context("starting membership")?;

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Request, oneshot::Sender<String>)>(16);
    let _control = control::serve(control_socket.clone(), ctl_tx)
        .with_context(|| format!("control socket {}", control_socket.display()))?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let watchdog = service::watchdog_interval();
    let mut next_watchdog = watchdog.map(|w| Instant::now() + w);
    let renew_every = local_rs.as_ref().map(|r| r.renew_every()).unwrap_or(Duration::from_secs(3600));
    let mut next_renew = Instant::now() + renew_every;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut view: Option<(u64, Vec<Member>)> = None;
    let mut quorate = false;
    let mut had_quorum = false;
    let mut last_wake = Instant::now();
    service::ready("joining the cluster");
    info!(node = local.0, "cluster daemon started");

    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {}
            ev = events.recv() => {
                let Some(ev) = ev else { anyhow::bail!("the membership thread stopped") };
                // A frozen process (SIGSTOP, a stalled VM) may have been declared failed and its VIP
                // moved: check that before acting on anything queued while it slept.
                let stale = fence_if_late(&mut last_wake, late_after, &mut local_rs).await;
                if stale || on_event(ev, &mut view, &mut quorate, &mut had_quorum) {
                    (handle, events) = rejoin(handle, &dcfg, &mut local_rs).await?;
                    (view, quorate, had_quorum) = (None, false, false);
                    continue;
                }
                if let Some(rs) = local_rs.as_mut() {
                    match (&view, quorate) {
                        (Some((epoch, members)), true) => rs.apply_view(*epoch, members, true).await,
                        _ => rs.release_all().await,
                    }
                }
            }
            Some((req, reply)) = ctl_rx.recv() => {
                let _ = reply.send(control::answer(&req, &handle.status(), local_rs.as_ref(), &names));
            }
        }
        if fence_if_late(&mut last_wake, late_after, &mut local_rs).await {
            (handle, events) = rejoin(handle, &dcfg, &mut local_rs).await?;
            (view, quorate, had_quorum) = (None, false, false);
            continue;
        }
        let now = Instant::now();
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
    let _ = handle.leave().await;
    let _ = std::fs::remove_file(&control_socket);
    Ok(())
}

/// Updates the daemon's picture from one membership event; true when this node must rejoin as a
/// new member.
fn on_event(ev: Event, view: &mut Option<(u64, Vec<Member>)>, quorate: &mut bool, had_quorum: &mut bool) -> bool {
    match ev {
        Event::ViewInstalled { view: id, members } => {
            info!(epoch = id.epoch, coordinator = id.coordinator.0, members = ?members.iter().map(|m| m.node.0).collect::<Vec<_>>(), "view installed");
            *view = Some((id.epoch, members));
        }
        Event::QuorumGained { view: id } => {
            info!(epoch = id.epoch, "quorum gained");
            *quorate = true;
            *had_quorum = true;
        }
        Event::QuorumLost => {
            warn!("quorum lost");
            *quorate = false;
            // Out of the quorate view: come back as a new life, so this node counts as the newest
            // member and takes nothing back from the node that served meanwhile.
            return *had_quorum;
        }
        Event::LinkUp { node, link } => info!(peer = node.0, link, "link up"),
        Event::LinkDown { node, link } => warn!(peer = node.0, link, "link down"),
        Event::PeerSuspected { node } => info!(peer = node.0, "peer suspected"),
        Event::PeerFailed { node } => warn!(peer = node.0, "peer declared failed"),
        // Nothing is replicated over the ordered channel by this daemon yet.
        Event::Delivered { .. } => {}
    }
    false
}

/// True (and every VIP released) when the loop woke far later than its tick allows: the process was
/// frozen long enough for the others to have declared it failed.
async fn fence_if_late(last_wake: &mut Instant, late_after: Duration, rs: &mut Option<LocalResources>) -> bool {
    let now = Instant::now();
    let gap = now.saturating_duration_since(*last_wake);
    *last_wake = now;
    if gap <= late_after {
        return false;
    }
    warn!(gap_ms = gap.as_millis() as u64, "this process was frozen: releasing VIPs and rejoining as a new member");
    if let Some(rs) = rs.as_mut() {
        rs.release_all().await;
    }
    true
}

/// Stops the membership thread without a Leave (the others already judged this node) and starts a
/// new one with a new boot epoch.
async fn rejoin(
    handle: ClusterHandle,
    dcfg: &DriverConfig,
    rs: &mut Option<LocalResources>,
) -> anyhow::Result<(ClusterHandle, mpsc::UnboundedReceiver<Event>)> {
    if let Some(rs) = rs.as_mut() {
        rs.release_all().await;
    }
    let _ = handle.halt().await;
    info!("rejoining the cluster as a new member");
    driver::spawn(dcfg.clone()).context("restarting membership")
}
