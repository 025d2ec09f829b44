//! The cluster daemon: the membership driver (its own real-time thread, see
//! `ha_membership::driver`) carries agreed views and the ordered channel; vip-manager's resource
//! driver runs on top of it and places, starts, stops and moves resources (VIPs on kernel leases,
//! with gratuitous ARP / unsolicited NA). This loop owns signals, the control socket and systemd's
//! notify/watchdog protocol. See the module doc of [`crate::cluster`] for the lifecycle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ha_membership::driver::{self, DriverConfig};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use vip_manager::driver::{Driver as ResourceDriver, DriverConfig as ResourceDriverConfig};
use vip_manager::engine::EngineStatus;
use vip_manager::from_config::NodeSetup;
use vip_manager::RunState;

use super::channel::MembershipChannel;
use crate::control::{self, Request};
use crate::service;

/// The resource side of a full node.
pub struct Resources {
    /// Engine config, agents and per-VIP settings.
    pub node: NodeSetup,
    /// Driver settings (tick, stall threshold, default lease and announcements).
    pub driver: ResourceDriverConfig,
}

/// Everything the daemon needs, resolved from the config file.
pub struct Setup {
    /// Membership: node list, timings, quorum, link addresses, key.
    pub driver: DriverConfig,
    /// Resources; `None` for a vote-only witness.
    pub resources: Option<Resources>,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// Node names by id, for status output.
    pub names: BTreeMap<u32, String>,
    /// Where Prometheus `GET /metrics` is served (`[control] metrics_cluster`).
    pub metrics: Option<std::net::SocketAddr>,
}

/// How long a graceful stop may take to hand everything over before the daemon leaves anyway
/// (the others then take over on the view change, and this node's VIP ends with its lease). A
/// handover normally takes one round of the channel, milliseconds.
const STOP_DEADLINE: Duration = Duration::from_secs(3);

/// SCHED_FIFO priority of the resource loop: below the membership thread's, above any normal
/// workload, so a busy gateway cannot starve it into a false "stalled, releasing the VIP".
const RESOURCE_LOOP_PRIORITY: i32 = 40;

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(setup: Setup) -> anyhow::Result<()> {
    raise_priority(RESOURCE_LOOP_PRIORITY);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(serve(setup))
}

/// Real-time priority for the calling thread where allowed (root, CAP_SYS_NICE or LimitRTPRIO);
/// otherwise the daemon runs at normal priority and says so.
fn raise_priority(priority: i32) {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid parameter struct.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        info!(err = %std::io::Error::last_os_error(), "SCHED_FIFO not available; the resource loop runs at normal priority");
    }
}

async fn serve(setup: Setup) -> anyhow::Result<()> {
    let Setup { driver: dcfg, resources, control_socket, names, metrics } = setup;
    let local = dcfg.params.local;
    // Process groups (lease replication) ride the same ordered channel on full nodes, served on
    // the membership thread itself; other events pass through. A vote-only witness runs no
    // processes and has no groups.
    let (handle, events, group_conns, groups) = if resources.is_some() {
        let (handle, events, conns, groups) = super::groups::spawn(dcfg, local.0).context("starting membership")?;
        (handle, events, Some(conns), Some(groups))
    } else {
        let (handle, events) = driver::spawn(dcfg).context("starting membership")?;
        (handle, events, None, None)
    };
    let handle = Arc::new(handle);
    let scrape = match metrics {
        Some(addr) => {
            // Weak: a scrape in flight must not keep the membership handle (and so the leave) alive.
            let weak = Arc::downgrade(&handle);
            let render: crate::metrics::Render =
                Arc::new(move || weak.upgrade().map(|h| ha_membership::status::render_prometheus(&h.status())));
            let (addr, task) = crate::metrics::serve(addr, render).with_context(|| format!("metrics endpoint {addr}"))?;
            info!(%addr, "Prometheus metrics at /metrics");
            Some(task)
        }
        None => None,
    };
    let mut events = events;

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<(Request, oneshot::Sender<String>)>(16);
    let _control = control::serve_with_groups(control_socket.clone(), ctl_tx, group_conns)
        .with_context(|| format!("control socket {}", control_socket.display()))?;
    let mut signals = service::StopSignals::new()?;
    let mut watchdog = service::watchdog_timer();

    match resources {
        None => {
            // A vote-only witness: membership and quorum, nothing to run.
            service::ready("witness running");
            info!(node = local.0, "witness started");
            loop {
                tokio::select! {
                    _ = signals.recv() => break,
                    _ = watchdog.tick() => service::watchdog_ping(),
                    ev = events.recv() => if ev.is_none() { anyhow::bail!("the membership thread stopped") },
                    Some((req, reply)) = ctl_rx.recv() => {
                        let _ = reply.send(control::answer(&req, &handle.status(), None, &names));
                    }
                }
            }
        }
        Some(rs) => {
            let channel = MembershipChannel::new(handle.clone(), events);
            let drv = ResourceDriver::start(rs.node.engine, rs.node.agents, channel, rs.driver)
                .await
                .context("starting the resource engine")?;
            let status = drv.status_watch();
            let operator = drv.operator_sender();
            let (stop_tx, stop_rx) = watch::channel(false);
            let run = drv.run(stop_rx);
            tokio::pin!(run);
            service::ready("joining the cluster");
            info!(node = local.0, "cluster daemon started");
            let mut stopping: Option<tokio::time::Instant> = None;
            loop {
                let deadline = stopping.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
                tokio::select! {
                    r = &mut run => {
                        r.context("resource engine")?;
                        break;
                    }
                    _ = signals.recv(), if stopping.is_none() => {
                        info!("stopping: handing resources over before leaving");
                        service::stopping();
                        let _ = stop_tx.send(true);
                        stopping = Some(tokio::time::Instant::now() + STOP_DEADLINE);
                    }
                    _ = tokio::time::sleep_until(deadline), if stopping.is_some() => {
                        warn!("resources not handed over within {STOP_DEADLINE:?}; leaving anyway (VIP leases end them)");
                        break;
                    }
                    _ = watchdog.tick() => service::watchdog_ping(),
                    Some((req, reply)) = ctl_rx.recv() => {
                        let answer = match req {
                            Request::Operator { op } => {
                                info!(?op, "operator command");
                                match operator.send(op) {
                                    Ok(()) => serde_json::json!({ "ok": true }).to_string(),
                                    Err(_) => serde_json::json!({ "error": "resource engine stopped" }).to_string(),
                                }
                            }
                            req => {
                                let st = status.borrow().clone();
                                let a = control::answer(&req, &handle.status(), Some(&st), &names);
                                match (&req, &groups) {
                                    (Request::Status, Some(g)) => g.add_to_status(a),
                                    _ => a,
                                }
                            }
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
        }
    }
    // Leave: peers commit the new view at once. The handle is shared with the channel's forwarding
    // task, which ends with the resource driver, and with the group service, stopped here;
    // dropping the last handle leaves too.
    if let Some(g) = groups {
        g.shutdown().await;
    }
    if let Some(t) = scrape {
        t.abort();
        let _ = t.await;
    }
    match Arc::try_unwrap(handle) {
        Ok(h) => {
            let _ = h.leave().await;
        }
        Err(h) => drop(h),
    }
    let _ = std::fs::remove_file(&control_socket);
    Ok(())
}

/// What `hastack status` shows of the resources: where each runs, from the engine's status.
pub fn placement_json(st: &EngineStatus) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(p) = &st.placement {
        for r in p.decisions.keys() {
            m.insert(r.to_string(), serde_json::Value::Null);
        }
    }
    for (r, node, state) in st.current.iter() {
        if state == RunState::Running {
            m.insert(r.to_string(), serde_json::json!(node.0));
        }
    }
    serde_json::Value::Object(m)
}
