//! The tokio driver of the engine: applies its outputs with real I/O (rtnetlink, AF_PACKET,
//! agents), feeds back completions, renews VIP leases and detects stalls.
//!
//! Lifecycle: `Driver::start` removes stale VIPs (before joining anything), then `run` loops over
//! four sources — the cluster channel (views and ordered messages), completions of spawned
//! actions and monitors, a periodic tick (engine timers, lease renewals, stall detection) and a
//! shutdown signal (graceful stop: resources move away, then `run` returns).
//!
//! Stall detection: if the loop wakes more than `stall_threshold` after its previous wake (SIGSTOP,
//! a starved CPU, a stalled VM), the engine is fenced before the waking event is handled: it renews
//! no lease and runs nothing until every member confirms the view survived, and releases its VIPs
//! if that takes longer than `EngineConfig::stall_confirm` (see `Engine::resumed_after_stall`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tokio::sync::mpsc;

use crate::engine::{Engine, EngineConfig, EngineStatus, Msg, OperatorCmd, Output, Ticket};
use crate::exec::ExecAgent;
use crate::garp::{announce, announcement_frames, AnnounceSchedule, PacketSocket};
use crate::model::{ResourceId, ResourceKind, Timestamp, VipSpec, View};
use crate::monitor::MonitorOutcome;
use crate::transition::Action;
use crate::vip::{Lease, LeaseKeeper, NetlinkVips, VipError};

/// What the cluster channel hands the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// A new agreed view.
    View(View),
    /// A message delivered in total order (safe delivery: only while the view is intact).
    Deliver(Msg),
    /// Quorum was lost inside the current view (before the next view is agreed).
    QuorumLost,
}

/// The membership layer's ordered channel as the driver needs it.
pub trait ClusterChannel {
    /// The next event; `None` when the channel is closed for good.
    fn recv(&mut self) -> impl Future<Output = Option<ChannelEvent>> + Send;
    /// Sends a message to every member of the current view (this node included).
    fn broadcast(&mut self, msg: &Msg) -> Result<(), ChannelError>;
    /// Whether this node holds a fresh vote lease (the membership layer's strict quorum) right now.
    /// VIP lease renewals are skipped while it does not; a brief lapse only delays a renewal (the
    /// VIP is released on `QuorumLost`, a new view, or when its address lease runs out).
    fn vote_lease_valid(&self) -> bool {
        true
    }
}

/// The channel refused a message.
#[derive(Debug, Error)]
#[error("cluster channel: {0}")]
pub struct ChannelError(pub String);

/// Driver failures.
#[derive(Debug, Error)]
pub enum DriverError {
    /// Netlink setup or the start-up cleanup failed.
    #[error(transparent)]
    Vip(#[from] VipError),
    /// The channel closed.
    #[error("cluster channel closed")]
    ChannelClosed,
    /// The channel refused a message.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Lease and announcements of one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSettings {
    /// Address lease.
    pub lease: Lease,
    /// Announcement schedule after a takeover.
    pub announce: AnnounceSchedule,
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Default VIP lease.
    pub lease: Lease,
    /// Default announcement schedule after a takeover.
    pub announce: AnnounceSchedule,
    /// Per-VIP lease and announcements (others use the defaults).
    pub vips: BTreeMap<ResourceId, VipSettings>,
    /// Tick period (engine timers, renewals).
    pub tick: Duration,
    /// A tick this late means the process was stopped or starved.
    pub stall_threshold: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            lease: Lease::default(),
            announce: AnnounceSchedule::default(),
            vips: BTreeMap::new(),
            tick: Duration::from_millis(10),
            stall_threshold: Duration::from_millis(500),
        }
    }
}

enum Completion {
    Action { ticket: Ticket, action: Action, ok: bool, issued: Instant },
    Monitor { rsc: ResourceId, outcome: MonitorOutcome },
    Renewed { rsc: ResourceId, issued: Instant, ok: bool },
    Lost { rsc: ResourceId },
}

/// Milliseconds since the Unix epoch, the cluster's message stamp.
pub fn wall_clock() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// The engine with its I/O.
pub struct Driver<C> {
    engine: Engine,
    channel: C,
    vips: Arc<NetlinkVips>,
    agents: Arc<BTreeMap<ResourceId, ExecAgent>>,
    leases: LeaseKeeper,
    cfg: DriverConfig,
    tx: mpsc::UnboundedSender<Completion>,
    rx: mpsc::UnboundedReceiver<Completion>,
    ops_tx: mpsc::UnboundedSender<OperatorCmd>,
    ops_rx: mpsc::UnboundedReceiver<OperatorCmd>,
    status: tokio::sync::watch::Sender<Arc<EngineStatus>>,
}

enum Wake {
    Operator(OperatorCmd),
    Channel(Option<ChannelEvent>),
    Done(Option<Completion>),
    Tick,
    Shutdown,
}

impl<C: ClusterChannel> Driver<C> {
    /// Connects netlink and removes stale VIPs (any marked address, and any address equal to a
    /// configured VIP) before the node joins. Must run inside a tokio runtime.
    pub async fn start(
        engine_cfg: EngineConfig,
        agents: BTreeMap<ResourceId, ExecAgent>,
        channel: C,
        cfg: DriverConfig,
    ) -> Result<Self, DriverError> {
        cfg.lease.validate()?;
        for s in cfg.vips.values() {
            s.lease.validate()?;
        }
        let vips = NetlinkVips::connect()?;
        let configured: Vec<VipSpec> = engine_cfg
            .resources
            .iter()
            .filter_map(|d| match &d.kind {
                ResourceKind::Vip(v) => Some(v.clone()),
                ResourceKind::Agent => None,
            })
            .collect();
        let removed = vips.remove_stale(&configured).await?;
        if !removed.is_empty() {
            tracing::warn!(count = removed.len(), "removed stale VIPs at start-up");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let engine = Engine::new(engine_cfg);
        let (status, _) = tokio::sync::watch::channel(Arc::new(engine.status()));
        Ok(Driver {
            engine,
            ops_tx,
            ops_rx,
            status,
            channel,
            vips: Arc::new(vips),
            agents: Arc::new(agents),
            leases: LeaseKeeper::new(),
            cfg,
            tx,
            rx,
        })
    }

    /// The engine (for status).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Snapshots of the engine's status, refreshed after every event while `run` runs.
    pub fn status_watch(&self) -> tokio::sync::watch::Receiver<Arc<EngineStatus>> {
        self.status.subscribe()
    }

    /// Where operator commands (move, ban, standby, …) go while `run` runs.
    pub fn operator_sender(&self) -> mpsc::UnboundedSender<OperatorCmd> {
        self.ops_tx.clone()
    }

    /// Runs until the shutdown signal turns true and this node holds nothing, or the channel
    /// closes. On return, every VIP this node added has been removed or handed over.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), DriverError> {
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The loop wakes at least every tick; a longer gap between two wakes means the process
        // did not run (SIGSTOP, starvation, a stalled machine).
        let mut last_wake = Instant::now();
        let mut shutting = false;
        loop {
            self.flush()?;
            if shutting && self.engine.handed_over() {
                return Ok(());
            }
            self.status.send_replace(Arc::new(self.engine.status()));
            let wake = tokio::select! {
                Some(cmd) = self.ops_rx.recv() => Wake::Operator(cmd),
                ev = self.channel.recv() => Wake::Channel(ev),
                c = self.rx.recv() => Wake::Done(c),
                _ = ticker.tick() => Wake::Tick,
                r = shutdown.changed(), if !shutting => {
                    if r.is_err() || *shutdown.borrow() { Wake::Shutdown } else { continue }
                }
            };
            let (now, wall) = (Instant::now(), wall_clock());
            // Judged before the event that woke us: a view or message queued during the stall must
            // find the node already fenced.
            let gap = now.duration_since(last_wake);
            last_wake = now;
            if gap > self.cfg.stall_threshold {
                tracing::warn!(late = ?gap, "stalled; fenced until every member confirms the view");
                self.engine.resumed_after_stall(now, wall);
            }
            match wake {
                Wake::Channel(None) => {
                    // Without the channel nothing is safe to hold.
                    self.release_all().await;
                    return Err(DriverError::ChannelClosed);
                }
                Wake::Channel(Some(ChannelEvent::View(v))) => self.engine.view_installed(v, now, wall),
                Wake::Channel(Some(ChannelEvent::Deliver(m))) => {
                    tracing::debug!(msg = ?m, "delivered");
                    self.engine.deliver(m, now, wall)
                }
                Wake::Channel(Some(ChannelEvent::QuorumLost)) => {
                    tracing::warn!("quorum lost; releasing VIPs");
                    self.engine.quorum_lost(now, wall);
                }
                Wake::Operator(cmd) => self.engine.operator(cmd, wall),
                Wake::Done(None) => {}
                Wake::Done(Some(c)) => self.completed(c, now, wall),
                Wake::Tick => {
                    self.engine.handle_timeout(now, wall);
                    self.leases.set_allowed(self.engine.renewals_allowed() && self.channel.vote_lease_valid());
                    self.poll_leases(now);
                }
                Wake::Shutdown => {
                    shutting = true;
                    self.engine.begin_shutdown(wall);
                }
            }
        }
    }

    fn poll_leases(&mut self, now: Instant) {
        let p = self.leases.poll(now);
        for (rsc, vip, lease) in p.renew {
            let (vips, tx) = (self.vips.clone(), self.tx.clone());
            tokio::spawn(async move {
                let ok = vips.add(&vip, &lease).await.is_ok();
                let _ = tx.send(Completion::Renewed { rsc, issued: now, ok });
            });
        }
        for (rsc, vip) in p.lost {
            tracing::error!(%rsc, "VIP lease may have run out; giving it up");
            let (vips, tx) = (self.vips.clone(), self.tx.clone());
            tokio::spawn(async move {
                let _ = vips.remove(&vip).await;
                let _ = tx.send(Completion::Lost { rsc });
            });
        }
    }

    async fn release_all(&mut self) {
        let held: Vec<VipSpec> = self.leases.held().map(|(_, v)| v.clone()).collect();
        for v in held {
            if let Err(e) = self.vips.remove(&v).await {
                tracing::error!(error = %e, address = %v.address, "removing VIP");
            }
        }
    }

    fn completed(&mut self, c: Completion, now: Instant, wall: Timestamp) {
        match c {
            Completion::Action { ticket, action, ok, issued } => {
                tracing::info!(?ticket, rsc = %action.rsc(), ok, "action finished");
                match &action {
                    // The lease started when the request left, not when it was acknowledged.
                    Action::AddVip { rsc, vip, .. } if ok => {
                        let lease = self.settings(rsc).lease;
                        self.leases.added(rsc, vip, lease, issued)
                    }
                    _ => {}
                }
                self.engine.action_finished(ticket, ok, now, wall);
            }
            Completion::Monitor { rsc, outcome } => self.engine.monitor_result(&rsc, outcome, now, wall),
            Completion::Renewed { rsc, issued, ok } => {
                if ok {
                    self.leases.renewed(&rsc, issued);
                }
            }
            Completion::Lost { rsc } => self.engine.resource_lost(&rsc, wall),
        }
    }

    fn flush(&mut self) -> Result<(), DriverError> {
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Broadcast(m) => {
                    tracing::debug!(msg = ?m, "broadcast");
                    self.channel.broadcast(&m)?
                }
                Output::Execute { ticket, action } => self.execute(ticket, action),
                Output::RunMonitor(req) => {
                    let tx = self.tx.clone();
                    let rsc = req.rsc.clone();
                    let vip = self.engine.resources().iter().find(|d| d.id == rsc).and_then(|d| match &d.kind {
                        ResourceKind::Vip(v) => Some(v.clone()),
                        ResourceKind::Agent => None,
                    });
                    let (vips, agents) = (self.vips.clone(), self.agents.clone());
                    tokio::spawn(async move {
                        let outcome = match (vip, agents.get(&rsc)) {
                            (Some(v), _) => match vips.has(&v).await {
                                Ok(true) => MonitorOutcome::Running,
                                Ok(false) => MonitorOutcome::NotRunning,
                                Err(_) => MonitorOutcome::Failed(1),
                            },
                            (None, Some(a)) => a.monitor().await.unwrap_or(MonitorOutcome::Failed(1)),
                            (None, None) => MonitorOutcome::Failed(1),
                        };
                        let _ = tx.send(Completion::Monitor { rsc, outcome });
                    });
                }
            }
        }
        Ok(())
    }

    fn settings(&self, rsc: &ResourceId) -> VipSettings {
        self.cfg
            .vips
            .get(rsc)
            .cloned()
            .unwrap_or_else(|| VipSettings { lease: self.cfg.lease, announce: self.cfg.announce.clone() })
    }

    fn execute(&mut self, ticket: Ticket, action: Action) {
        tracing::info!(?ticket, ?action, "executing");
        let issued = Instant::now();
        let (tx, vips, agents) = (self.tx.clone(), self.vips.clone(), self.agents.clone());
        let VipSettings { lease, announce: schedule } = self.settings(action.rsc());
        if let Action::RemoveVip { rsc, .. } = &action {
            // Stop renewing before removing, so a renewal cannot re-create it.
            self.leases.removed(rsc);
        }
        tokio::spawn(async move {
            let ok = match &action {
                Action::AddVip { vip, .. } => match vips.add(vip, &lease).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "adding VIP");
                        false
                    }
                },
                Action::RemoveVip { vip, .. } => match vips.remove(vip).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "removing VIP");
                        false
                    }
                },
                Action::SendGarp { vip, .. } => {
                    // Reported done at once; the burst and its repeat go on in the background.
                    match vips.interface(&vip.interface).await {
                        Ok(ifc) => match (ifc.mac, PacketSocket::open(ifc.index)) {
                            (Some(mac), Ok(sock)) => {
                                let frames = announcement_frames(mac, vip.address);
                                tokio::spawn(async move {
                                    announce(&sock, &frames, &schedule).await;
                                });
                            }
                            (_, Err(e)) => tracing::warn!(error = %e, "announcement socket"),
                            (None, _) => tracing::warn!(iface = %vip.interface, "no MAC to announce"),
                        },
                        Err(e) => tracing::warn!(error = %e, "announcing VIP"),
                    }
                    true
                }
                Action::StartResource { rsc, .. } => match agents.get(rsc) {
                    Some(a) => a.start().await.is_ok_and(|s| s.start_ok()),
                    None => false,
                },
                Action::StopResource { rsc, .. } => match agents.get(rsc) {
                    Some(a) => a.stop().await.is_ok_and(|s| s.stop_ok()),
                    None => true,
                },
                Action::Monitor { .. } => true,
            };
            let _ = tx.send(Completion::Action { ticket, action, ok, issued });
        });
    }
}

/// A channel for a single-node cluster: one quorate view, messages looped back in order.
pub struct LoopbackChannel {
    view: Option<View>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
}

impl LoopbackChannel {
    /// A loopback channel whose only view is `{local}`, quorate.
    pub fn new(local: crate::model::NodeId) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        LoopbackChannel { view: Some(View { epoch: 1, members: vec![local], quorate: true }), tx, rx }
    }
}

impl ClusterChannel for LoopbackChannel {
    fn recv(&mut self) -> impl Future<Output = Option<ChannelEvent>> + Send {
        // Taken inside the future, so a recv cancelled by select! loses nothing.
        let (view, rx) = (&mut self.view, &mut self.rx);
        async move {
            if let Some(v) = view.take() {
                return Some(ChannelEvent::View(v));
            }
            rx.recv().await.map(ChannelEvent::Deliver)
        }
    }

    fn broadcast(&mut self, msg: &Msg) -> Result<(), ChannelError> {
        self.tx.send(msg.clone()).map_err(|e| ChannelError(e.to_string()))
    }
}
