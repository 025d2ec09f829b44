//! The resource engine of one node, sans-IO: agreed views and ordered cluster messages in,
//! actions and cluster messages out.
//!
//! Every node runs the same engine on the same totally ordered message stream (the membership
//! channel), so all members compute the same placement and plan; each executes only its own steps.
//!
//! Lifecycle (per installed view):
//! 1. `view_installed` — a newer view: the generation becomes `(epoch, 0)` and the plan is dropped.
//!    If the view is not quorate, or this node sees no peer, local VIPs are removed at once
//!    (no waiting for anybody). The node then sends a `Snapshot` of what it runs and its failure
//!    records at once; a resource with an action still running is reported Failed, so the plan
//!    stops it first (local actions on one resource run one at a time, in order).
//! 2. Syncing — once the snapshots of all members are delivered, the replicated state is rebuilt
//!    from them (members only; operator state from the highest version) and the node is synced.
//!    VIPs held here are re-announced when the view gained members (a healed partition).
//! 3. Planning — when something changed (sync, a failure, an operator command, a completed plan,
//!    a failure expiring at an agreed `Tick`) and no claimed step is still running anywhere, every
//!    node computes placement and plan at the same point of the message order: generation n+1.
//! 4. Executing — a node broadcasts `Claim` for its runnable steps and runs a step only when its
//!    own claim is delivered in the same generation with no replan pending (so a step is either
//!    seen in flight by every node, or run by none). Its `Done` updates everybody's state.
//!
//! 5. Fenced — after a stall (the driver's loop woke far too late) or a quorum loss inside the
//!    view: the node renews no lease and claims nothing, but keeps following the replicated state
//!    (claims, plans, generations) exactly like everybody else, so it stays in step. It sends
//!    `Alive`; every node tracks every member's probe and sees at the same point of the order when
//!    all other members answered (`AliveAck`). Then the node unfences and runs the steps it
//!    claimed meanwhile. After a stall its VIPs stay until `stall_confirm` runs out unconfirmed, or
//!    a view that does not directly continue its own is installed; after a quorum loss they go at
//!    once.
//!
//! Time: `now: Instant` drives local timers (monitors, ticks); `wall: Timestamp` stamps messages.
//! Placement uses the largest stamp delivered so far (`agreed_now`), identical on every node.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::model::{
    operator, ClusterPolicy, Constraint, CurrentPlacement, FailCounts, FailRecord, Monitoring, NoQuorumPolicy,
    NodeId, OnFail, ResourceDef, ResourceId, ResourceKind, RunState, Timestamp, View,
};
use crate::monitor::{MonitorEvent, MonitorOutcome, MonitorRequest, MonitorScheduler};
use crate::placement::{place, Placement};
use crate::transition::{self, Action, Plan};

/// A plan generation: the view's epoch and the plan number within the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Generation {
    /// View epoch.
    pub epoch: u64,
    /// Plan number within the view.
    pub n: u32,
}

/// Identifies one execution of an action, for the driver to report back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Ticket {
    /// Step `step` of plan generation `generation`.
    Plan { generation: Generation, step: usize },
    /// An action this node decided alone (isolation release, re-announcement).
    Local(u64),
}

/// Operator commands (pcs/crm shaped).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OperatorCmd {
    /// `resource move NAME NODE`.
    Move { rsc: ResourceId, node: NodeId },
    /// `resource ban NAME NODE`.
    Ban { rsc: ResourceId, node: NodeId },
    /// `resource clear NAME [NODE]`.
    Clear { rsc: ResourceId, node: Option<NodeId> },
    /// `resource cleanup NAME [NODE]`: forget failures.
    Cleanup { rsc: ResourceId, node: Option<NodeId> },
    /// `node standby NODE`.
    Standby(NodeId),
    /// `node online NODE`.
    Online(NodeId),
    /// `property maintenance-mode=true|false`.
    Maintenance(bool),
    /// A node is stopping gracefully: move everything off it (dropped when it leaves the view).
    Shutdown(NodeId),
}

/// Cluster-wide operator state, replicated with a version.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct OperatorState {
    /// Bumped by every operator command.
    pub version: u64,
    /// Ban/move constraints.
    pub constraints: Vec<Constraint>,
    /// Standby nodes.
    pub standby: BTreeSet<NodeId>,
    /// Maintenance mode.
    pub maintenance: bool,
    /// Nodes shutting down gracefully.
    pub shutting_down: BTreeSet<NodeId>,
}

/// Messages on the ordered cluster channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Msg {
    /// What `from` runs and its failure records, sent once per view.
    Snapshot {
        from: NodeId,
        epoch: u64,
        resources: Vec<(ResourceId, RunState)>,
        failures: Vec<(ResourceId, FailRecord)>,
        operator: OperatorState,
        at: Timestamp,
    },
    /// `from` wants to run step `step` of `generation`.
    Claim { from: NodeId, generation: Generation, step: usize, at: Timestamp },
    /// `from` finished an action.
    Done { from: NodeId, ticket: Ticket, action: Action, ok: bool, at: Timestamp },
    /// A monitor found `rsc` failed on `from`.
    Failure { from: NodeId, rsc: ResourceId, at: Timestamp },
    /// An operator command.
    Operator { from: NodeId, cmd: OperatorCmd, at: Timestamp },
    /// Periodic agreed time (sent by the lowest member) so failure timeouts expire everywhere at once.
    Tick { from: NodeId, at: Timestamp },
    /// Sent by a node that woke from a stall. Every other member answers with `AliveAck`; once all of
    /// them did in the same view, the view demonstrably survived the stall (messages queued before
    /// it, or delivered by a node that alone still believes in a dead view, prove nothing).
    Alive { from: NodeId, probe: u64, at: Timestamp },
    /// A member's answer to `Alive`.
    AliveAck { from: NodeId, to: NodeId, probe: u64, at: Timestamp },
}

/// A message that could not be decoded (dropped and counted by the channel user).
#[derive(Debug, thiserror::Error)]
#[error("undecodable cluster message: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl Msg {
    /// Encodes for the cluster channel.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain data with derived impls cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a message from the cluster channel.
    pub fn decode(b: &[u8]) -> Result<Msg, DecodeError> {
        Ok(serde_json::from_slice(b)?)
    }

    /// The sender's wall-clock stamp.
    pub fn at(&self) -> Timestamp {
        match self {
            Msg::Snapshot { at, .. }
            | Msg::Claim { at, .. }
            | Msg::Done { at, .. }
            | Msg::Failure { at, .. }
            | Msg::Operator { at, .. }
            | Msg::Tick { at, .. }
            | Msg::Alive { at, .. }
            | Msg::AliveAck { at, .. } => *at,
        }
    }
}

/// What the engine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send on the ordered cluster channel (to all members, this node included).
    Broadcast(Msg),
    /// Run an action on this node, then call [`Engine::action_finished`] with the ticket.
    Execute { ticket: Ticket, action: Action },
    /// Run a monitor, then call [`Engine::monitor_result`].
    RunMonitor(MonitorRequest),
}

/// Static settings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node.
    pub local: NodeId,
    /// Configured number of nodes (to tell "alone" from "single-node cluster").
    pub cluster_size: usize,
    /// Resources.
    pub resources: Vec<ResourceDef>,
    /// Configured constraints.
    pub constraints: Vec<Constraint>,
    /// Configured policy (operator standby/maintenance are added to it).
    pub policy: ClusterPolicy,
    /// Monitor interval of resources with `Monitoring::Default`.
    pub monitor_interval: Duration,
    /// Monitor timeout of resources with `Monitoring::Default`.
    pub monitor_timeout: Duration,
    /// Agreed-time tick period.
    pub tick_every: Duration,
    /// How long a node that woke from a stall keeps its VIPs while it asks every member to confirm
    /// that its view survived (see [`Engine::resumed_after_stall`]); unconfirmed by then, it releases.
    pub stall_confirm: Duration,
}

impl EngineConfig {
    /// The default of [`EngineConfig::stall_confirm`]: a few round trips of the ordered channel on a
    /// loaded machine, far below any VIP lease.
    pub const DEFAULT_STALL_CONFIRM: Duration = Duration::from_millis(100);
}

/// A read-only view for `hastack status`.
#[derive(Debug, Clone)]
pub struct EngineStatus {
    /// Installed view.
    pub view: Option<View>,
    /// Whether the replicated state is rebuilt for this view.
    pub synced: bool,
    /// Last placement.
    pub placement: Option<Placement>,
    /// What runs where.
    pub current: CurrentPlacement,
    /// Failure records.
    pub fails: FailCounts,
    /// Operator state.
    pub operator: OperatorState,
    /// (done, total) steps of the current plan.
    pub progress: (usize, usize),
    /// The last failed operation seen: what, where, when.
    pub last_failure: Option<FailedOp>,
    /// The plan generation (identical on every synced member of a view at the same point of the
    /// message order).
    pub generation: Generation,
    /// Whether this node is fenced after a stall or quorum loss (runs nothing until confirmed).
    pub fenced: bool,
}

/// A failed operation, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedOp {
    /// Resource.
    pub rsc: ResourceId,
    /// Node it failed on.
    pub node: NodeId,
    /// Operation (start, stop, monitor).
    pub op: &'static str,
    /// Sender's stamp.
    pub at: Timestamp,
}

/// What one member's snapshot carries: its resources, its failure records, its operator state.
type SnapshotData = (Vec<(ResourceId, RunState)>, Vec<(ResourceId, FailRecord)>, OperatorState);

/// The engine of one node.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    view: Option<View>,
    prev_members: BTreeSet<NodeId>,
    synced: bool,
    snapshots: BTreeMap<NodeId, SnapshotData>,
    snapshot_sent: bool,
    current: CurrentPlacement,
    fails: FailCounts,
    operator: OperatorState,
    agreed_now: Timestamp,
    generation: Generation,
    plan: Plan,
    done: Vec<bool>,
    claimed: Vec<bool>,
    claim_sent: BTreeSet<usize>,
    in_flight: BTreeSet<(Generation, usize)>,
    replan_pending: bool,
    placement: Option<Placement>,
    local_state: BTreeMap<ResourceId, RunState>,
    local_running: BTreeMap<Ticket, Action>,
    /// Actions waiting for an earlier action on the same resource to finish (one at a time per
    /// resource, so a release never overtakes the add it must undo).
    queued: VecDeque<(Ticket, Action)>,
    next_local: u64,
    monitors: MonitorScheduler,
    next_tick: Option<Instant>,
    stalled: bool,
    /// The probe this node sent after its stall, and when its VIPs go if nobody confirmed it by then.
    stall_probe: Option<(u64, Option<Instant>)>,
    /// Every member's outstanding Alive probe and who answered it: replicated (all nodes see the
    /// same Alive/AliveAck order), so every node learns at the same point that a probe completed.
    probes: BTreeMap<NodeId, (u64, BTreeSet<NodeId>)>,
    /// This node's own claims delivered while it was fenced: run once the probe completes.
    deferred_claims: Vec<(Generation, usize)>,
    /// VIPs this node released on its own whose Done it has not yet seen delivered: it claims no
    /// plan step removing them (that Done completes such a step for everybody).
    own_releases: BTreeSet<ResourceId>,
    last_failure: Option<FailedOp>,
    out: VecDeque<Output>,
}

impl Engine {
    /// A fresh engine: holds nothing, knows no view. (Stale VIPs must already be removed.)
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            view: None,
            prev_members: BTreeSet::new(),
            synced: false,
            snapshots: BTreeMap::new(),
            snapshot_sent: false,
            current: CurrentPlacement::new(),
            fails: FailCounts::new(),
            operator: OperatorState::default(),
            agreed_now: Timestamp(0),
            generation: Generation::default(),
            plan: Plan::default(),
            done: Vec::new(),
            claimed: Vec::new(),
            claim_sent: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            replan_pending: false,
            placement: None,
            local_state: BTreeMap::new(),
            local_running: BTreeMap::new(),
            queued: VecDeque::new(),
            next_local: 0,
            monitors: MonitorScheduler::new(),
            next_tick: None,
            stalled: false,
            stall_probe: None,
            probes: BTreeMap::new(),
            deferred_claims: Vec::new(),
            own_releases: BTreeSet::new(),
            last_failure: None,
            out: VecDeque::new(),
        }
    }

    /// This node's id.
    pub fn local(&self) -> NodeId {
        self.cfg.local
    }

    /// Next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Resources this node runs (its own truth, updated as its actions finish).
    pub fn local_resources(&self) -> &BTreeMap<ResourceId, RunState> {
        &self.local_state
    }

    /// Whether VIP leases may be renewed now: a quorate view (or no-quorum-policy=ignore) with
    /// a peer in sight when the cluster has several nodes, and no stall since the last delivery.
    pub fn renewals_allowed(&self) -> bool {
        let Some(v) = &self.view else { return false };
        let alone = transition::alone(self.cfg.cluster_size, v);
        let ignore = self.cfg.policy.no_quorum_policy == NoQuorumPolicy::Ignore;
        !self.stalled && (ignore || (v.quorate && !alone))
    }

    /// The resource definitions this engine was built with.
    pub fn resources(&self) -> &[ResourceDef] {
        &self.cfg.resources
    }

    /// True when this node runs nothing and has no action under way.
    pub fn idle(&self) -> bool {
        self.local_state.is_empty() && self.local_running.is_empty() && self.queued.is_empty()
    }

    /// True once a graceful stop ([`Engine::begin_shutdown`]) is complete: this node runs nothing,
    /// its Shutdown was delivered, and the plan that moves its resources elsewhere has finished (or
    /// there is no synced view to finish it in). Leaving earlier would change the view under the
    /// new holder's claim and cost a resynchronisation before it could add the VIP.
    pub fn handed_over(&self) -> bool {
        let settled = !self.synced
            || (self.operator.shutting_down.contains(&self.cfg.local)
                && !self.replan_pending
                && self.in_flight.is_empty()
                && self.done.iter().all(|d| *d));
        self.idle() && settled
    }

    /// Status snapshot.
    pub fn status(&self) -> EngineStatus {
        EngineStatus {
            view: self.view.clone(),
            synced: self.synced,
            placement: self.placement.clone(),
            current: self.current.clone(),
            fails: self.fails.clone(),
            operator: self.operator.clone(),
            progress: (self.done.iter().filter(|d| **d).count(), self.done.len()),
            last_failure: self.last_failure.clone(),
            generation: self.generation,
            fenced: self.stalled,
        }
    }

    fn def(&self, rsc: &ResourceId) -> Option<&ResourceDef> {
        self.cfg.resources.iter().find(|d| &d.id == rsc)
    }

    fn broadcast(&mut self, m: Msg) {
        self.out.push_back(Output::Broadcast(m));
    }

    /// A new agreed view was installed.
    pub fn view_installed(&mut self, view: View, now: Instant, wall: Timestamp) {
        if self.view.as_ref().is_some_and(|v| v.epoch >= view.epoch) {
            return;
        }
        // A node that woke from a stall and still holds its VIPs unconfirmed keeps them across this
        // view change only if the view directly follows its own and lost nobody: then no view
        // without this node was installed in between, so nobody else can have taken them over.
        let unconfirmed = matches!(self.stall_probe, Some((_, Some(_))));
        let continues = self.view.as_ref().is_some_and(|old| {
            view.epoch == old.epoch + 1 && old.member_set().is_subset(&view.member_set())
        });
        if let Some(v) = &self.view {
            self.prev_members = v.member_set();
        }
        self.generation = Generation { epoch: view.epoch, n: 0 };
        self.view = Some(view.clone());
        self.synced = false;
        self.snapshots.clear();
        self.snapshot_sent = false;
        self.plan = Plan { epoch: view.epoch, ..Plan::default() };
        self.done.clear();
        self.claimed.clear();
        self.claim_sent.clear();
        self.replan_pending = true;
        self.stalled = false;
        self.stall_probe = None;
        self.probes.clear();
        self.deferred_claims.clear();
        self.own_releases.clear();
        if unconfirmed && !continues {
            self.release_vips();
        }

        // Safety first: a node without quorum, or alone, drops its VIPs before anything else.
        let mut mine = CurrentPlacement::new();
        for (r, s) in &self.local_state {
            mine.set(r, self.cfg.local, *s);
        }
        let releasing = self.releasing();
        let policy = self.effective_policy();
        for a in transition::release_on_isolation(
            self.cfg.local,
            &view,
            self.cfg.cluster_size,
            &policy,
            &self.cfg.resources,
            &mine,
        ) {
            if !releasing.contains(a.rsc()) {
                self.run_local(a);
            }
        }
        self.try_send_snapshot(wall);
        self.progress(now, wall);
    }

    /// Whether `action` removes a VIP this node already released on its own (its Done completes
    /// the step for everybody, so no claim is sent for it).
    fn own_release_pending(&self, action: &Action) -> bool {
        matches!(action, Action::RemoveVip { .. }) && self.own_releases.contains(action.rsc())
    }

    /// Resources with a VIP removal running or queued here.
    fn releasing(&self) -> BTreeSet<ResourceId> {
        self.local_running
            .values()
            .chain(self.queued.iter().map(|(_, a)| a))
            .filter(|a| matches!(a, Action::RemoveVip { .. }))
            .map(|a| a.rsc().clone())
            .collect()
    }

    /// Removes every VIP this node holds (those not already being removed), each as a local action.
    fn release_vips(&mut self) {
        self.release_vips_except(&BTreeSet::new());
    }

    fn release_vips_except(&mut self, keep: &BTreeSet<ResourceId>) {
        let mut releasing = self.releasing();
        releasing.extend(keep.iter().cloned());
        let vips: Vec<Action> = self
            .cfg
            .resources
            .iter()
            .filter(|d| self.local_state.contains_key(&d.id) && !releasing.contains(&d.id))
            .filter_map(|d| match &d.kind {
                ResourceKind::Vip(v) => {
                    Some(Action::RemoveVip { node: self.cfg.local, rsc: d.id.clone(), vip: v.clone() })
                }
                ResourceKind::Agent => None,
            })
            .collect();
        for a in vips {
            self.own_releases.insert(a.rsc().clone());
            self.run_local(a);
        }
    }

    /// The driver noticed this process was stopped or starved (its timers fired far too late, as
    /// after SIGSTOP/SIGCONT, or a whole machine that stalled): the cluster may have moved on
    /// without it. The node is fenced at once: it renews no lease and runs no step (it still
    /// follows the replicated state, so it stays in step with the others). It asks every member of
    /// its view to confirm, on the ordered channel, that the view survived (`Alive`, answered by
    /// `AliveAck`). Confirmed by all of them within [`EngineConfig::stall_confirm`], it keeps its
    /// VIPs: nobody can have taken them over in a view that never changed, and a stall of the
    /// whole machine (peers included) then costs no failover. Otherwise, or if the view changes
    /// under it, it releases them. The channel must deliver only in an intact view (safe delivery),
    /// or a resumed node could take a dead view's echo for a confirmation.
    ///
    /// Bound: a node that was stopped keeps answering for its VIPs (the kernel does, the process is
    /// frozen) at most until `stall_confirm` after it resumes, and never beyond its lease.
    pub fn resumed_after_stall(&mut self, now: Instant, wall: Timestamp) {
        self.monitors.stalled(now);
        self.fence(Some(now + self.cfg.stall_confirm), wall);
    }

    /// The membership layer reports quorum lost inside the current view (peers went silent; the
    /// next view is on its way). Local VIPs go at once, and nothing else runs until a new view is
    /// installed or every member confirms the view still works.
    pub fn quorum_lost(&mut self, now: Instant, wall: Timestamp) {
        self.release_vips();
        self.fence(None, wall);
        let _ = now;
    }

    /// Fences this node and sends a fresh probe; `release_at`: when to release the VIPs still held
    /// if the probe is not answered by then (None: already released).
    fn fence(&mut self, release_at: Option<Instant>, wall: Timestamp) {
        // A second stall while the first is unconfirmed keeps the earlier deadline; once
        // released, there is nothing left to release.
        let release_at = match self.stall_probe {
            Some((_, None)) => None,
            Some((_, Some(old))) => release_at.map(|new| new.min(old)),
            None => release_at,
        };
        self.stalled = true;
        // Only a message sent now and answered by every member in this view proves it survived
        // (anything queued before the stall may be from a dead view).
        self.next_local += 1;
        let probe = self.next_local;
        self.stall_probe = Some((probe, release_at));
        self.broadcast(Msg::Alive { from: self.cfg.local, probe, at: wall });
    }

    /// Marks a probe complete once every other member of the view answered it. Every node runs
    /// this at the same point of the message order; the probing node unfences and runs the steps
    /// it claimed while fenced.
    fn check_probe(&mut self, node: NodeId, now: Instant, wall: Timestamp) {
        let Some(v) = &self.view else { return };
        let Some((probe, acks)) = self.probes.get(&node) else { return };
        let all = v.member_set().iter().filter(|m| **m != node).all(|m| acks.contains(m));
        if !all {
            return;
        }
        let probe = *probe;
        self.probes.remove(&node);
        if node == self.cfg.local && self.stall_probe.is_some_and(|(p, _)| p == probe) {
            self.stalled = false;
            self.stall_probe = None;
            for (generation, step) in std::mem::take(&mut self.deferred_claims) {
                if generation == self.generation && self.in_flight.contains(&(generation, step)) {
                    self.execute(step, now, wall);
                }
            }
        }
    }

    fn run_local(&mut self, action: Action) {
        self.next_local += 1;
        let ticket = Ticket::Local(self.next_local);
        self.dispatch(ticket, action);
    }

    /// Hands an action to the driver, or queues it behind a running action on the same resource.
    fn dispatch(&mut self, ticket: Ticket, action: Action) {
        let busy = self.local_running.values().any(|a| a.rsc() == action.rsc())
            || self.queued.iter().any(|(_, a)| a.rsc() == action.rsc());
        if busy {
            self.queued.push_back((ticket, action));
        } else {
            self.local_running.insert(ticket, action.clone());
            self.out.push_back(Output::Execute { ticket, action });
        }
    }

    /// Dispatches queued actions whose resource became free, in queue order.
    fn dispatch_queued(&mut self) {
        let mut waiting = VecDeque::new();
        while let Some((t, a)) = self.queued.pop_front() {
            let busy = self.local_running.values().any(|x| x.rsc() == a.rsc())
                || waiting.iter().any(|(_, x): &(Ticket, Action)| x.rsc() == a.rsc());
            if busy {
                waiting.push_back((t, a));
            } else {
                self.local_running.insert(t, a.clone());
                self.out.push_back(Output::Execute { ticket: t, action: a });
            }
        }
        self.queued = waiting;
    }

    fn try_send_snapshot(&mut self, wall: Timestamp) {
        let Some(v) = &self.view else { return };
        if self.snapshot_sent {
            return;
        }
        let local = self.cfg.local;
        // Sent at once, even with actions still running (a slow agent must not hold up a
        // failover): a resource with a start or stop under way is reported Failed, so the plan
        // stops it here before it may run anywhere else, and that stop queues behind it.
        let mut resources: BTreeMap<ResourceId, RunState> = self.local_state.clone();
        for a in self.local_running.values().chain(self.queued.iter().map(|(_, a)| a)) {
            if a.is_start() || a.is_stop() {
                resources.insert(a.rsc().clone(), RunState::Failed);
            }
        }
        let msg = Msg::Snapshot {
            from: local,
            epoch: v.epoch,
            resources: resources.into_iter().collect(),
            failures: self
                .fails
                .iter()
                .filter(|(_, n, _)| *n == local)
                .map(|(r, _, f)| (r.clone(), f))
                .collect(),
            operator: self.operator.clone(),
            at: wall,
        };
        self.snapshot_sent = true;
        self.broadcast(msg);
    }

    /// A message delivered by the ordered channel (including this node's own).
    pub fn deliver(&mut self, msg: Msg, now: Instant, wall: Timestamp) {
        self.agreed_now = self.agreed_now.max(msg.at());
        match msg {
            Msg::Alive { from, probe, .. } => {
                if self.view.as_ref().is_some_and(|v| v.members.contains(&from)) {
                    self.probes.insert(from, (probe, BTreeSet::new()));
                }
                if from != self.cfg.local {
                    self.broadcast(Msg::AliveAck { from: self.cfg.local, to: from, probe, at: wall });
                }
                self.check_probe(from, now, wall);
            }
            Msg::AliveAck { from, to, probe, .. } => {
                if let Some((p, acks)) = self.probes.get_mut(&to)
                    && *p == probe
                {
                    acks.insert(from);
                }
                self.check_probe(to, now, wall);
            }
            Msg::Snapshot { from, epoch, resources, failures, operator, .. } => {
                let Some(v) = &self.view else { return };
                if v.epoch != epoch || self.synced || !v.members.contains(&from) {
                    return;
                }
                self.snapshots.insert(from, (resources, failures, operator));
                if v.member_set().iter().all(|m| self.snapshots.contains_key(m)) {
                    self.sync(now, wall);
                }
            }
            Msg::Claim { from, generation, step, .. } => {
                // Judged the same way on every node, fenced or not, so all stay in step.
                let valid = self.synced
                    && generation == self.generation
                    && !self.replan_pending
                    && step < self.plan.steps.len()
                    && !self.claimed[step]
                    && !self.done[step]
                    && self.plan.steps[step].action.node() == from
                    && self.plan.steps[step].after.iter().all(|j| self.done[*j]);
                if valid {
                    self.claimed[step] = true;
                    self.in_flight.insert((generation, step));
                    if from == self.cfg.local {
                        if self.stalled {
                            // Claimed before the stall was noticed: run it once the view is confirmed
                            // (a new view drops it, and everybody's plan with it).
                            self.deferred_claims.push((generation, step));
                        } else {
                            self.execute(step, now, wall);
                        }
                    }
                }
            }
            Msg::Done { from, ticket, action, ok, at } => {
                self.apply_effect(from, &action, ok, at);
                if from == self.cfg.local && matches!(action, Action::RemoveVip { .. }) {
                    self.own_releases.remove(action.rsc());
                }
                if let Ticket::Local(_) = ticket {
                    // A release taken alone that the plan also asks for (a graceful stop releases
                    // at once) completes that step: nobody waits for a second removal. Any other
                    // decision taken alone changed the state behind the plan's back.
                    let step = (0..self.plan.steps.len()).find(|j| {
                        ok && !self.replan_pending
                            && matches!(action, Action::RemoveVip { .. })
                            && self.plan.steps[*j].action == action
                            && !self.done[*j]
                            && !self.claimed[*j]
                    });
                    match step {
                        Some(j) => {
                            self.done[j] = true;
                            if self.done.iter().all(|d| *d) {
                                self.replan_pending = true;
                            }
                        }
                        None => self.replan_pending = true,
                    }
                }
                if let Ticket::Plan { generation, step } = ticket {
                    self.in_flight.remove(&(generation, step));
                    if generation == self.generation && step < self.done.len() {
                        self.done[step] = true;
                        if !self.done.is_empty() && self.done.iter().all(|d| *d) {
                            self.replan_pending = true;
                        }
                    }
                }
                if !ok {
                    let op = if action.is_start() { "start" } else { "stop" };
                    self.last_failure = Some(FailedOp { rsc: action.rsc().clone(), node: from, op, at });
                    self.replan_pending = true;
                }
            }
            Msg::Failure { from, rsc, at } => {
                self.last_failure = Some(FailedOp { rsc: rsc.clone(), node: from, op: "monitor", at });
                let ignore = self.def(&rsc).is_none_or(|d| d.on_fail == OnFail::Ignore);
                if !ignore {
                    self.fails.record_failure(&rsc, from, at);
                    if self.current.state(&rsc, from) == Some(RunState::Running) {
                        self.current.set(&rsc, from, RunState::Failed);
                    }
                    if from == self.cfg.local {
                        self.monitors.stop(&rsc, from);
                        if let Some(s) = self.local_state.get_mut(&rsc) {
                            *s = RunState::Failed;
                        }
                    }
                    self.replan_pending = true;
                }
            }
            Msg::Operator { cmd, .. } => {
                self.apply_operator(cmd);
                self.operator.version += 1;
                self.replan_pending = true;
            }
            Msg::Tick { .. } => {
                // Failure timeouts are judged at agreed time (identical on every node at this point
                // of the order): expired records are forgotten everywhere at once, as Pacemaker
                // clears an expired fail-count. Replan only if the answer changed.
                let defs = &self.cfg.resources;
                let timeout_of = |r: &ResourceId| defs.iter().find(|d| &d.id == r).and_then(|d| d.failure_timeout);
                self.fails.expire(timeout_of, self.agreed_now);
                if self.synced && !self.replan_pending {
                    let p = self.compute_placement();
                    let changed = self.placement.as_ref().is_none_or(|old| {
                        old.targets().collect::<Vec<_>>() != p.targets().collect::<Vec<_>>()
                    });
                    if changed {
                        self.replan_pending = true;
                    }
                }
            }
        }
        self.progress(now, wall);
    }

    fn apply_operator(&mut self, cmd: OperatorCmd) {
        let o = &mut self.operator;
        match cmd {
            OperatorCmd::Move { rsc, node } => operator::move_to(&mut o.constraints, &rsc, node),
            OperatorCmd::Ban { rsc, node } => operator::ban(&mut o.constraints, &rsc, node),
            OperatorCmd::Clear { rsc, node } => {
                operator::clear(&mut o.constraints, &rsc, node);
            }
            OperatorCmd::Cleanup { rsc, node } => self.fails.clear(&rsc, node),
            OperatorCmd::Standby(n) => {
                o.standby.insert(n);
            }
            OperatorCmd::Online(n) => {
                o.standby.remove(&n);
            }
            OperatorCmd::Maintenance(m) => o.maintenance = m,
            OperatorCmd::Shutdown(n) => {
                o.shutting_down.insert(n);
            }
        }
    }

    fn apply_effect(&mut self, from: NodeId, action: &Action, ok: bool, at: Timestamp) {
        let rsc = action.rsc().clone();
        match (action.is_start(), action.is_stop(), ok) {
            (true, _, true) => self.current.set(&rsc, from, RunState::Running),
            (true, _, false) => {
                self.current.set(&rsc, from, RunState::Failed);
                self.fails.record_fatal(&rsc, from, at);
            }
            (_, true, true) => self.current.remove(&rsc, from),
            (_, true, false) => {
                self.current.set(&rsc, from, RunState::Failed);
                self.fails.record_failure(&rsc, from, at);
            }
            _ => {}
        }
    }

    fn sync(&mut self, now: Instant, wall: Timestamp) {
        let Some(v) = self.view.clone() else { return };
        let members = v.member_set();
        self.current = CurrentPlacement::new();
        self.fails = FailCounts::new();
        let mut best: Option<(u64, NodeId)> = None;
        for (node, (rs, fs, op)) in &self.snapshots {
            for (r, s) in rs {
                self.current.set(r, *node, *s);
            }
            for (r, f) in fs {
                self.fails.insert(r, *node, *f);
            }
            // Highest version wins; ties go to the lowest node id (iteration is ascending).
            if best.is_none_or(|(ver, _)| op.version > ver) {
                best = Some((op.version, *node));
            }
        }
        if let Some((_, n)) = best
            && let Some((_, _, op)) = self.snapshots.get(&n)
        {
            self.operator = op.clone();
        }
        self.operator.shutting_down.retain(|n| members.contains(n));
        self.snapshots.clear();
        self.synced = true;
        self.in_flight.clear();
        self.replan_pending = true;
        // A view that gained members may be a healed partition: announce our VIPs again.
        let joined = members.iter().any(|m| !self.prev_members.contains(m));
        if joined && !self.prev_members.is_empty() {
            let mut mine = CurrentPlacement::new();
            for (r, s) in &self.local_state {
                mine.set(r, self.cfg.local, *s);
            }
            for a in transition::reannounce(self.cfg.local, &self.cfg.resources, &mine) {
                self.run_local(a);
            }
        }
        let _ = (now, wall);
    }

    fn effective_policy(&self) -> ClusterPolicy {
        let mut p = self.cfg.policy.clone();
        p.standby.extend(self.operator.standby.iter().copied());
        p.standby.extend(self.operator.shutting_down.iter().copied());
        p.maintenance |= self.operator.maintenance;
        p
    }

    fn constraints(&self) -> Vec<Constraint> {
        let mut c = self.cfg.constraints.clone();
        c.extend(self.operator.constraints.iter().cloned());
        c
    }

    fn compute_placement(&self) -> Placement {
        let view = self.view.clone().unwrap_or(View { epoch: 0, members: vec![], quorate: false });
        place(
            &view,
            &self.effective_policy(),
            &self.cfg.resources,
            &self.constraints(),
            &self.fails,
            &self.current,
            self.agreed_now,
        )
    }

    fn progress(&mut self, now: Instant, wall: Timestamp) {
        // Planning is replicated and pure, so a fenced node plans too (it must stay at the same
        // generation as everybody else); it only claims nothing until it is confirmed.
        if self.synced && self.replan_pending && self.in_flight.is_empty() {
            let Some(view) = self.view.clone() else { return };
            let placement = self.compute_placement();
            let plan = transition::plan(&view, &placement, &self.cfg.resources, &self.constraints(), &self.current);
            self.generation.n += 1;
            self.done = vec![false; plan.steps.len()];
            self.claimed = vec![false; plan.steps.len()];
            self.claim_sent.clear();
            self.plan = plan;
            self.placement = Some(placement);
            self.replan_pending = false;
        }
        if !self.synced || self.replan_pending || self.stalled {
            return;
        }
        let local = self.cfg.local;
        let generation = self.generation;
        let runnable: Vec<usize> = (0..self.plan.steps.len())
            .filter(|i| {
                let s = &self.plan.steps[*i];
                s.action.node() == local
                    && !self.done[*i]
                    && !self.claimed[*i]
                    && !self.claim_sent.contains(i)
                    && !self.own_release_pending(&s.action)
                    && s.after.iter().all(|j| self.done[*j])
            })
            .collect();
        for step in runnable {
            self.claim_sent.insert(step);
            self.broadcast(Msg::Claim { from: local, generation, step, at: wall });
        }
        let _ = now;
    }

    fn execute(&mut self, step: usize, now: Instant, wall: Timestamp) {
        let action = self.plan.steps[step].action.clone();
        let ticket = Ticket::Plan { generation: self.generation, step };
        if let Action::Monitor { rsc, node } = &action {
            // Monitors are the engine's own business: schedule and confirm at once.
            let monitoring = self.def(rsc).map(|d| d.monitoring).unwrap_or_default();
            let every = match monitoring {
                Monitoring::Default => Some((self.cfg.monitor_interval, self.cfg.monitor_timeout)),
                Monitoring::Every { interval, timeout } => Some((interval, timeout)),
                Monitoring::Off => None,
            };
            if let Some((interval, timeout)) = every {
                self.monitors.start(rsc, *node, interval, timeout, now);
            }
            self.broadcast(Msg::Done { from: self.cfg.local, ticket, action, ok: true, at: wall });
            return;
        }
        self.dispatch(ticket, action);
    }

    /// The driver finished an action it was asked to execute.
    pub fn action_finished(&mut self, ticket: Ticket, ok: bool, now: Instant, wall: Timestamp) {
        let Some(action) = self.local_running.remove(&ticket) else { return };
        let rsc = action.rsc().clone();
        if action.is_start() {
            self.local_state.insert(rsc.clone(), if ok { RunState::Running } else { RunState::Failed });
        } else if action.is_stop() {
            self.monitors.stop(&rsc, self.cfg.local);
            if ok {
                self.local_state.remove(&rsc);
            } else {
                self.local_state.insert(rsc.clone(), RunState::Failed);
            }
        }
        if ok && matches!(action, Action::AddVip { .. }) {
            self.announce_now(ticket);
        }
        self.broadcast(Msg::Done { from: self.cfg.local, ticket, action, ok, at: wall });
        self.dispatch_queued();
        self.try_send_snapshot(wall);
        self.progress(now, wall);
    }

    /// Runs the announcement steps that wait only for the VIP add `ticket` at once, without a claim
    /// round trip: clients reach the new holder one round trip sooner, and an announcement changes
    /// no state anybody must see in flight (its Done completes the step everywhere as usual).
    fn announce_now(&mut self, ticket: Ticket) {
        let Ticket::Plan { generation, step } = ticket else { return };
        if generation != self.generation || self.stalled {
            return;
        }
        let local = self.cfg.local;
        let garps: Vec<(usize, Action)> = (0..self.plan.steps.len())
            .filter(|j| {
                let s = &self.plan.steps[*j];
                matches!(s.action, Action::SendGarp { .. })
                    && s.action.node() == local
                    && s.after == [step]
                    && !self.done[*j]
                    && !self.claimed[*j]
                    && !self.claim_sent.contains(j)
            })
            .map(|j| (j, self.plan.steps[j].action.clone()))
            .collect();
        for (j, action) in garps {
            self.claim_sent.insert(j);
            self.dispatch(Ticket::Plan { generation, step: j }, action);
        }
    }

    /// The driver finished a monitor.
    pub fn monitor_result(&mut self, rsc: &ResourceId, outcome: MonitorOutcome, now: Instant, wall: Timestamp) {
        if let Some(MonitorEvent::Failed { rsc, node, .. }) = self.monitors.on_result(rsc, self.cfg.local, outcome, now) {
            self.broadcast(Msg::Failure { from: node, rsc, at: wall });
        }
    }

    /// The driver found a resource gone that this node should be running (a VIP whose lease ran
    /// out while the daemon was stopped, for instance): it is reported as failed.
    pub fn resource_lost(&mut self, rsc: &ResourceId, wall: Timestamp) {
        if let Some(s) = self.local_state.get_mut(rsc) {
            *s = RunState::Failed;
            self.monitors.stop(rsc, self.cfg.local);
            self.broadcast(Msg::Failure { from: self.cfg.local, rsc: rsc.clone(), at: wall });
        }
    }

    /// Queues an operator command for the cluster.
    pub fn operator(&mut self, cmd: OperatorCmd, wall: Timestamp) {
        self.broadcast(Msg::Operator { from: self.cfg.local, cmd, at: wall });
    }

    /// Begins a graceful stop of this node: its resources move away (the VIP in one round trip);
    /// the daemon may exit once [`Engine::handed_over`] is true.
    pub fn begin_shutdown(&mut self, wall: Timestamp) {
        self.operator(OperatorCmd::Shutdown(self.cfg.local), wall);
        // Releasing is always safe, so the VIPs go at once instead of one claim round trip later:
        // the Done of this removal reaches the others right behind the Shutdown, and the plan that
        // follows has the new holder add the address with no step left to wait for. (Maintenance
        // mode touches nothing.)
        if !self.effective_policy().maintenance {
            // Except a VIP that a resource still running here is ordered after (`order vip then
            // svc`: svc stops first, as the plan will have it).
            let constraints = self.constraints();
            let needed: BTreeSet<ResourceId> = constraints
                .iter()
                .filter_map(|c| match c {
                    Constraint::Order { first, then, .. } if self.local_state.contains_key(then) => Some(first.clone()),
                    _ => None,
                })
                .collect();
            self.release_vips_except(&needed);
        }
    }

    /// When the driver should call [`Engine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tick = if self.is_ticker() { self.next_tick } else { None };
        let release = self.stall_probe.and_then(|(_, at)| at);
        [self.monitors.poll_timeout(), tick, release].into_iter().flatten().min()
    }

    fn is_ticker(&self) -> bool {
        self.synced
            && self.view.as_ref().and_then(|v| v.member_set().first().copied()) == Some(self.cfg.local)
    }

    /// Timers: due monitors, monitor timeouts, agreed-time ticks.
    pub fn handle_timeout(&mut self, now: Instant, wall: Timestamp) {
        if let Some((probe, Some(at))) = self.stall_probe
            && now >= at
        {
            // Nobody confirmed the view in time: it may be dead, and the VIPs taken over.
            self.release_vips();
            self.stall_probe = Some((probe, None));
        }
        for req in self.monitors.poll_due(now) {
            self.out.push_back(Output::RunMonitor(req));
        }
        for MonitorEvent::Failed { rsc, node, .. } in self.monitors.handle_timeout(now) {
            self.broadcast(Msg::Failure { from: node, rsc, at: wall });
        }
        if self.is_ticker() {
            match self.next_tick {
                Some(t) if t > now => {}
                Some(_) => {
                    self.broadcast(Msg::Tick { from: self.cfg.local, at: wall });
                    self.next_tick = Some(now + self.cfg.tick_every);
                }
                None => self.next_tick = Some(now + self.cfg.tick_every),
            }
        }
    }

    /// Whether the VIP resources' kind and the no-quorum policy make this node release on
    /// isolation (for drivers that want to log the decision).
    pub fn releases_on_isolation(&self) -> bool {
        self.cfg.policy.no_quorum_policy != NoQuorumPolicy::Ignore
            && self.cfg.resources.iter().any(|d| matches!(d.kind, ResourceKind::Vip(_)))
    }
}

#[cfg(test)]
mod tests;
