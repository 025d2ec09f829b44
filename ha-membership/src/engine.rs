//! The sans-IO membership engine: failure detection, agreed views and quorum.
//!
//! Events in: [`Engine::handle_datagram`] (authenticated bytes from a link), [`Engine::handle_timeout`]
//! (the time asked for by [`Engine::poll_timeout`] has come) and [`Engine::leave`]. Actions out:
//! [`Engine::poll_transmit`] (datagrams to send on a link) and [`Engine::poll_event`] (notifications).
//! The engine never reads a clock: `now` is always passed in.
//!
//! # Lifecycle of a peer (failure detection, SWIM/Lifeguard style)
//! ```text
//!  Unknown --any datagram--> Alive --silent > suspect_timeout*LHM--> Suspect --deadline--> Failed
//!                              ^    (PingReq to the others; Suspect    |  deadline shrinks as the
//!                              |     sent to everyone incl. target)    |  others confirm (their
//!                              +---- datagram / Alive refute / --------+  Suspect or "not seen" votes)
//!                                    "seen recently" vote
//!  Failed --any datagram--> Alive;   any --Leave--> Left;   any --datagram with a newer boot--> Alive (new life)
//! ```
//! Heartbeats go to every configured node on every link (all-to-all suits small clusters and is the
//! fastest detector). A peer is alive if any link is; links have their own up/down state, reported as
//! events, and never cause a view change on their own. The Local Health Multiplier (LHM, 0..=max) goes up
//! when this node's own timer fired late, when it is suspected, or when its suspicion is refuted, and
//! multiplies its timeouts: an overloaded node stretches its patience instead of accusing healthy peers.
//!
//! # Lifecycle of a view (coordinator-based GMS, as in JGroups/Totem)
//! ```text
//!  NoView --join_delay--> (coordinator duty) --propose(E+1, R)--> Proposing --all acked--> Install
//!                                                         |  resend to non-ackers each heartbeat;
//!                                                         +-- deadline: exclude non-ackers, re-propose
//! ```
//! The reachable set R is this node plus every peer not Failed/Left/Unknown/excluded. The node with
//! the lowest id in its own R is coordinator: when R differs from the installed view's members (ids and
//! boots), or a peer in R has held a different view for longer than `view_timeout`, it proposes view
//! `(max epoch seen + 1, me, my boot)` with members R. A member acks a proposal that contains it (with
//! its current boot), whose epoch is above its installed one, unless it already promised a proposal of
//! a lower-id coordinator. The coordinator installs when every member acked; members install a
//! `ViewInstall` that contains them and is newer than their view. View ids are unique for ever (a
//! coordinator never proposes the same epoch twice in one boot, and its boot is part of the id), so
//! every member of a view holds it identically. Partitions heal because the coordinators of the two
//! sides hear each other's heartbeats and the lower one proposes the union.
//!
//! # Lifecycle of a vote (leases; see the crate docs, "Vote leases")
//! ```text
//!  quiet (start, or after installing a view without a node it granted to) --T_q(1+e) after the
//!  last grant to such a node--> granting (heartbeats echo members' rounds) --ack/propose a newer
//!  view--> withheld (no grants, not quorate, heartbeat says blocked) --install a view at least
//!  that new--> quiet or granting
//! ```
//! Quorum is reported (QuorumGained) only once the leases held in the installed view carry it
//! ([`Engine::quorate_at`], the strict test), and reported lost (QuorumLost) once they have not
//! carried it for [`report_grace`] (`G`); quiet periods include `G` so nobody is quorate without a
//! node before that node's flag is down. A lease about to run out asks for an urgent echo.
//! ```text
//!  reported off --strict quorum in the installed view--> reported on --strict lapses--> grace
//!  grace --leases renewed--> reported on;  grace --G passed / leave--> reported off (QuorumLost)
//!  any --install--> reported off until the view's decision (QuorumGained for it, or QuorumLost)
//! ```
//!
//! One-way cuts: a member that never acked a proposal stays out of R (`needs_contact`) until it
//! answers a probe sent after that (two-way contact); a lower-id peer stuck in a view nobody else
//! shares is passed over the same way; a member refuses a proposal that drops a lower member it
//! hears clearly; and peers that moved to a newer view without us stop counting for our quorum.
//!
//! Cuts that spare a third party: a peer not heard *directly* for `partition_timeout` leaves R
//! even while others vouch for it; a node does not coordinate while a lower peer is vouched for
//! but not heard directly (that peer's side wins); consecutive refused proposals back off.

use crate::auth::{Authenticator, DropCounters, ReplayGuard};
use crate::channel::{Channel, ChannelError, Out};
use crate::quorum::{Quorum, QuorumSettings, QuorumStatus};
use crate::wire::{Cut, Header, MAX_CUTS, Member, Message, NodeId, ViewId};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// One node of the static node list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeSpec {
    /// The node's id.
    pub id: NodeId,
    /// Its votes (1 by default; a witness usually has 1 too).
    pub votes: u32,
    /// How many links (networks) it has; link i is the same network on every node.
    pub links: usize,
    /// A vote-only member (the role of corosync-qnetd): takes part in views and quorum, runs nothing.
    pub witness: bool,
}

/// Failure-detection and view timings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Timing {
    /// Heartbeat period per link.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer (or a link) is suspected.
    pub suspect_timeout: Duration,
    /// Suspicion timeout once enough independent confirmations arrived.
    pub confirm_min: Duration,
    /// Suspicion timeout with no confirmation.
    pub confirm_max: Duration,
    /// How long a coordinator waits for acks before re-proposing without the silent members.
    pub view_timeout: Duration,
    /// How long a starting node listens before it may propose a view.
    pub join_delay: Duration,
    /// Upper bound of the Local Health Multiplier (timeouts are multiplied by 1 + LHM).
    pub max_lhm: u32,
    /// How many other members an indirect probe asks (0 means all).
    pub indirect_probes: usize,
    /// A peer from which no datagram arrived directly (on any link) for this long is left out of
    /// views even while others vouch for it: a view needs direct two-way contact among its
    /// members (Corosync's totem does too). Stretched only by this node's own late timers.
    pub partition_timeout: Duration,
}

impl Default for Timing {
    /// LAN defaults aimed at sub-100 ms failure detection.
    fn default() -> Self {
        Timing {
            heartbeat_interval: Duration::from_millis(10),
            suspect_timeout: Duration::from_millis(30),
            confirm_min: Duration::from_millis(10),
            confirm_max: Duration::from_millis(40),
            view_timeout: Duration::from_millis(50),
            join_delay: Duration::from_millis(40),
            max_lhm: 8,
            indirect_probes: 0,
            partition_timeout: Duration::from_millis(120),
        }
    }
}

/// Everything the engine needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct EngineParams {
    /// Cluster id carried in every datagram.
    pub cluster_id: u32,
    /// This node.
    pub local: NodeId,
    /// The static node list, including this node.
    pub nodes: Vec<NodeSpec>,
    /// Timings.
    pub timing: Timing,
    /// votequorum options.
    pub quorum: QuorumSettings,
}

/// Why the parameters cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// The local node is not in the node list.
    #[error("local node {0} is not in the node list")]
    LocalNotListed(NodeId),
    /// A node id appears twice.
    #[error("node {0} is listed twice")]
    Duplicate(NodeId),
    /// A node has no link.
    #[error("node {0} has no link")]
    NoLinks(NodeId),
    /// Too many nodes for one view datagram.
    #[error("{0} nodes exceed the maximum of {max}", max = crate::wire::MAX_MEMBERS)]
    TooManyNodes(usize),
    /// A timing is zero or inconsistent.
    #[error("invalid timing: {0}")]
    Timing(&'static str),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination node.
    pub to: NodeId,
    /// Link index to send it on.
    pub link: usize,
    /// The sealed datagram.
    pub payload: Bytes,
}

/// Notifications for the rest of the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new agreed view is installed here.
    ViewInstalled { view: ViewId, members: Vec<Member> },
    /// This node's partition is quorate in `view`: emitted when quorum is gained, and again after
    /// each newly installed view that is quorate.
    QuorumGained { view: ViewId },
    /// This node's partition lost quorum: the view lacks votes, this node no longer hears enough of
    /// it, or this node left. Release anything that needs quorum at once.
    QuorumLost,
    /// A link to a peer started working.
    LinkUp { node: NodeId, link: usize },
    /// A link to a peer stopped working (the peer may still be alive over another link).
    LinkDown { node: NodeId, link: usize },
    /// A peer is suspected (informational; no view change yet).
    PeerSuspected { node: NodeId },
    /// A peer was declared failed by this node.
    PeerFailed { node: NodeId },
    /// An ordered-channel message, delivered in the view's total order (before the next
    /// `ViewInstalled`).
    Delivered { view: ViewId, seq: u64, origin: NodeId, origin_seq: u64, payload: Bytes },
}

/// What this node thinks of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum PeerState {
    /// Never heard in its current life.
    Unknown,
    /// Heard recently (directly or vouched for by others).
    Alive,
    /// Silent; confirmation pending.
    Suspect,
    /// Declared failed by this node.
    Failed,
    /// Said it was leaving.
    Left,
}

#[derive(Debug, Clone)]
struct Link {
    last_heard: Option<Instant>,
    up: bool,
    /// Outstanding latency probe on this link: (probe number, sent at).
    ping: Option<(u32, Instant)>,
    /// Last measured round-trip time on this link.
    rtt: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Suspicion {
    since: Instant,
    confirmations: BTreeSet<NodeId>,
    probe: u32,
}

#[derive(Debug, Clone)]
struct Peer {
    spec: NodeSpec,
    boot: Option<u64>,
    incarnation: u32,
    last_heard: Option<Instant>,
    /// Latest time another member heard this peer, as reported in a probe vote.
    vouched: Option<Instant>,
    links: Vec<Link>,
    state: PeerState,
    suspicion: Option<Suspicion>,
    /// The view this peer last announced in a heartbeat.
    view: Option<ViewId>,
    view_mismatch_since: Option<Instant>,
    /// Since when this peer announces it is blocked waiting for a view install.
    blocked_since: Option<Instant>,
    excluded_until: Option<Instant>,
    /// Left out of a proposal it never acknowledged: it stays out of views until a latency probe
    /// sent to it after that is answered (two-way contact proven), so a one-way cut settles instead
    /// of making the coordinator propose, time out and re-propose for ever.
    needs_contact: bool,
    /// Latest heartbeat round received from this peer (this life), and when it arrived.
    round: u64,
    round_at: Option<Instant>,
    /// The vote lease this node holds from the peer in the installed view: its vote counts until then.
    lease_until: Option<Instant>,
    /// Until when a vote lease this node granted the peer may still run anywhere (the arrival of
    /// the echoed round + `T_q·(1+ε)`): this node's vote counts in no view without the peer before.
    granted_until: Option<Instant>,
    /// When this node last answered an urgent heartbeat of the peer at once (rate limit).
    urgent_answered: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Pending {
    view: ViewId,
    members: Vec<Member>,
    /// Acks so far: each member's previous view and how far it delivered it.
    acks: BTreeMap<NodeId, (Option<ViewId>, u64)>,
    deadline: Instant,
}

/// An installed view.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct View {
    /// Its id.
    pub id: ViewId,
    /// Its members, ascending by node id.
    pub members: Vec<Member>,
    /// The flush cuts it was installed with (resent to members that missed the install).
    #[serde(skip)]
    pub cuts: Vec<Cut>,
}

/// Counters for metrics and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    /// Views installed here.
    pub views_installed: u64,
    /// Views proposed here.
    pub views_proposed: u64,
    /// Suspicions started here.
    pub suspicions: u64,
    /// Suspicions cleared by evidence (datagram, refutation or vote).
    pub suspicions_cleared: u64,
    /// Peers declared failed here.
    pub failures_declared: u64,
    /// Times this node refuted a suspicion about itself.
    pub refutations: u64,
    /// Times this node's timer fired late.
    pub late_timers: u64,
}

/// Per-peer status for `hastack members`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    /// The peer.
    pub node: NodeId,
    /// Its state as seen here.
    pub state: PeerState,
    /// Up/down per link.
    pub links: Vec<bool>,
    /// Last round-trip time per link in microseconds (measured about once a second).
    pub rtt_us: Vec<Option<u64>>,
    /// Its boot epoch, if known.
    pub boot: Option<u64>,
    /// Its votes.
    pub votes: u32,
    /// Whether it is a vote-only witness.
    pub witness: bool,
}

/// Snapshot for `hastack members` / `hastack quorum`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// This node.
    pub local: NodeId,
    /// This node's boot epoch.
    pub boot: u64,
    /// This node's votes.
    pub votes: u32,
    /// Whether this node is a vote-only witness.
    pub witness: bool,
    /// The installed view, if any.
    pub view: Option<View>,
    /// Every other configured node.
    pub peers: Vec<PeerStatus>,
    /// Quorum state.
    pub quorum: QuorumStatus,
    /// Current Local Health Multiplier.
    pub local_health: u32,
    /// Dropped-datagram counters.
    pub drops: DropCounters,
    /// Protocol counters.
    pub stats: EngineStats,
    /// Whether this node has left.
    pub left: bool,
    /// Highest ordered-channel sequence number delivered in the current view.
    pub channel_delivered: u64,
    /// Messages waiting to be ordered.
    pub channel_outbox: usize,
    /// Whether the channel is blocked for a view change.
    pub channel_blocked: bool,
    /// Vote leases: the strict quorum and where this node's vote is granted.
    pub vote: VoteStatus,
}

/// One vote lease, seen from this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseStatus {
    /// The other end.
    pub node: NodeId,
    /// Milliseconds left.
    pub ms_left: u64,
}

/// Vote-lease state for `hastack quorum` (the role of corosync-quorumtool's Qdevice flags).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VoteStatus {
    /// The strict quorum holds now: enough fresh votes in the installed view.
    pub lease_quorate: bool,
    /// How long it lasts without renewal, in milliseconds.
    pub lease_ms: Option<u64>,
    /// Peers whose vote this node holds in its view, with the time left.
    pub held: Vec<LeaseStatus>,
    /// The view this node's own vote counts in now (None: in a quiet period or blocked by a proposal).
    pub granted_view: Option<ViewId>,
    /// Milliseconds of quiet period left before this node's vote counts in its view.
    pub quiet_ms: u64,
    /// Leases this node granted that may still run, with the time left.
    pub granted: Vec<LeaseStatus>,
    /// The vote lease `T_q` in milliseconds.
    pub lease_span_ms: u64,
}

fn check_timing(t: &Timing) -> Result<(), ParamsError> {
    if t.heartbeat_interval.is_zero() || t.suspect_timeout <= t.heartbeat_interval {
        return Err(ParamsError::Timing("suspect_timeout must exceed heartbeat_interval > 0"));
    }
    if t.confirm_min > t.confirm_max || t.view_timeout.is_zero() {
        return Err(ParamsError::Timing("confirm_min <= confirm_max and view_timeout > 0 required"));
    }
    if t.partition_timeout <= t.suspect_timeout {
        return Err(ParamsError::Timing("partition_timeout must exceed suspect_timeout"));
    }
    Ok(())
}

/// `T_q`, the vote lease: a vote echoed in a heartbeat counts for this long after the echoed round
/// was sent. It equals the (unstretched) suspect timeout, which is below the shortest failure
/// detection (`suspect_timeout + confirm_min`), so a crashed node's leases have run out before anyone
/// commits a view without it and crash failover waits for nothing.
pub fn vote_lease(t: &Timing) -> Duration {
    t.suspect_timeout
}

/// How long a lease granted on a round that arrived at `t` may run, seen from the granter:
/// `T_q·(1+ε)` with ε = 1/16, far above any clock-rate difference between two hosts' monotonic clocks.
fn lease_span(t: &Timing) -> Duration {
    let q = vote_lease(t);
    q + q / 16
}

/// `G`, the grace of the reported quorum: the reported flag ([`Engine::quorate`]) survives a lapse
/// of the strict quorum this long (lost heartbeats), and a node's vote counts in a view without a
/// peer only `G·(1+ε)` after every lease it granted that peer ran out, so that peer's reported flag
/// is down before anyone holds a quorum without it. It equals `confirm_min`, the least time failure
/// detection adds after a lease has run out, so crash failover waits for nothing extra.
pub fn report_grace(t: &Timing) -> Duration {
    t.confirm_min
}

/// The quiet period a granter adds for [`report_grace`]: `G·(1+ε)`.
fn grace_span(t: &Timing) -> Duration {
    let g = report_grace(t);
    g + g / 16
}

/// Rounds remembered for lease look-ups at most (a lease on an older round has run out anyway).
const MAX_ROUNDS: usize = 1024;

/// The membership engine of one node.
#[derive(Debug)]
pub struct Engine {
    params: EngineParams,
    auth: Authenticator,
    guard: ReplayGuard,
    boot: u64,
    seq: u64,
    incarnation: u32,
    peers: BTreeMap<NodeId, Peer>,
    view: Option<View>,
    max_epoch: u64,
    pending: Option<Pending>,
    promise: Option<(ViewId, Instant)>,
    next_heartbeat: Instant,
    propose_not_before: Instant,
    lhm: u32,
    /// The part of the health multiplier earned by this node's own late timers (not by refuted
    /// suspicions): it alone stretches how long a silent member still counts for the view quorum.
    late_lhm: u32,
    on_time_ticks: u32,
    /// Heartbeat ticks since start; every 100th also measures link latency.
    ticks: u64,
    left: bool,
    next_probe: u32,
    quorum: Quorum,
    chan: Channel,
    /// A proposal was made: some view must be installed even if membership looks unchanged,
    /// because members that acked are blocked until then.
    must_install: bool,
    /// The quorate flag last reported (view quorate and enough of it heard).
    effective_quorate: bool,
    /// Proposals acked (or made) since the last install, with the (view, delivered) reported. Only
    /// these may be installed: an install is only safe from the state its cuts were computed from.
    acked: BTreeMap<ViewId, (Option<ViewId>, u64)>,
    /// Cuts of the install being applied (kept with the view for resends).
    pending_cuts: Vec<Cut>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    drops: DropCounters,
    stats: EngineStats,
    /// Heartbeat rounds sent, (round, when), oldest first; pruned once a lease from them is over.
    rounds: VecDeque<(u64, Instant)>,
    round: u64,
    /// This node's vote (its own count and the leases it grants) is held back until then: the
    /// quiet period after which no lease it granted to a node outside its view can still run.
    vote_free_at: Instant,
    /// Heartbeats to the view's members are due at `vote_free_at` (the quiet period ended).
    grant_wake: bool,
    /// A quorum decision for the installed view is still owed, at the latest then.
    decision_due: Option<Instant>,
    /// The latest `now` seen (status snapshots report time left relative to it).
    last_now: Instant,
    /// The newest view this node acked or proposed (its vote left every older view then).
    max_acked_epoch: u64,
    /// Until when the strict quorum in the installed view lasts (predicted while it holds, the
    /// instant it ended once it did not): the reported flag holds until `report_grace` after it.
    strict_until: Option<Instant>,
    /// Proposals of this node refused in a row since its last install (backs re-proposals off).
    refusals: u32,
    /// When a peer this node held failed (or had not heard) was last heard again: merges wait for
    /// the rest of its side (see `coordinator_duty`).
    last_return: Option<Instant>,
}

impl Engine {
    /// Start an engine. `boot` must be larger than any boot this node used before (e.g. wall-clock µs).
    pub fn new(
        params: EngineParams,
        auth: Authenticator,
        boot: u64,
        now: Instant,
    ) -> Result<Self, ParamsError> {
        let mut seen = BTreeSet::new();
        for n in &params.nodes {
            if !seen.insert(n.id) {
                return Err(ParamsError::Duplicate(n.id));
            }
            if n.links == 0 {
                return Err(ParamsError::NoLinks(n.id));
            }
        }
        if params.nodes.len() > crate::wire::MAX_MEMBERS {
            return Err(ParamsError::TooManyNodes(params.nodes.len()));
        }
        let local = params
            .nodes
            .iter()
            .find(|n| n.id == params.local)
            .ok_or(ParamsError::LocalNotListed(params.local))?
            .clone();
        check_timing(&params.timing)?;
        let peers: BTreeMap<NodeId, Peer> = params
            .nodes
            .iter()
            .filter(|n| n.id != params.local)
            .map(|n| {
                let links = n.links.min(local.links);
                (
                    n.id,
                    Peer {
                        spec: n.clone(),
                        boot: None,
                        incarnation: 0,
                        last_heard: None,
                        vouched: None,
                        links: vec![Link { last_heard: None, up: false, ping: None, rtt: None }; links],
                        state: PeerState::Unknown,
                        suspicion: None,
                        view: None,
                        view_mismatch_since: None,
                        blocked_since: None,
                        excluded_until: None,
                        needs_contact: false,
                        round: 0,
                        round_at: None,
                        lease_until: None,
                        granted_until: None,
                        urgent_answered: None,
                    },
                )
            })
            .collect();
        let guard = ReplayGuard::for_nodes(peers.keys().copied());
        let mut quorum = Quorum::new(params.quorum.clone(), params.nodes.iter().map(|n| (n.id, n.votes)));
        quorum.exclude_from_tie_break(params.nodes.iter().filter(|n| n.witness).map(|n| n.id));
        let mut e = Engine {
            auth,
            guard,
            boot,
            seq: 0,
            incarnation: 0,
            peers,
            view: None,
            max_epoch: 0,
            pending: None,
            promise: None,
            next_heartbeat: now,
            propose_not_before: now + params.timing.join_delay,
            lhm: 0,
            late_lhm: 0,
            on_time_ticks: 0,
            ticks: 0,
            left: false,
            next_probe: 1,
            quorum,
            chan: Channel::new(params.local),
            must_install: false,
            effective_quorate: false,
            acked: BTreeMap::new(),
            pending_cuts: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            stats: EngineStats::default(),
            rounds: VecDeque::new(),
            round: 0,
            // A restarted node may have granted leases in its previous life just before it died: it
            // grants nothing and counts itself nowhere until they (and the grace of the quorum they
            // carried) have surely run out.
            vote_free_at: now + lease_span(&params.timing) + grace_span(&params.timing),
            grant_wake: false,
            decision_due: None,
            last_now: now,
            max_acked_epoch: 0,
            strict_until: None,
            refusals: 0,
            last_return: None,
            params,
        };
        let ids: Vec<NodeId> = e.peers.keys().copied().collect();
        for p in ids {
            e.send(p, &Message::Join { incarnation: 0 });
        }
        Ok(e)
    }

    /// Apply new timings at once (config reload); the node list and quorum options need a restart.
    pub fn update_timing(&mut self, timing: Timing) -> Result<(), ParamsError> {
        check_timing(&timing)?;
        self.params.timing = timing;
        Ok(())
    }

    /// This node's id.
    pub fn local(&self) -> NodeId {
        self.params.local
    }

    /// The installed view, if any.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// The reported quorum flag (what `QuorumGained`/`QuorumLost` announce): gained with the strict
    /// quorum ([`Self::quorate_at`]) in the installed view, kept while the strict quorum lapsed less
    /// than [`report_grace`] ago (a few lost heartbeats), lost after that, on leaving, or when a
    /// new view is installed until its own decision. While it is set here, no node holds the
    /// strict quorum in a view this node is not a member of (crate docs, "The reported quorum").
    pub fn quorate(&self) -> bool {
        self.effective_quorate
    }

    /// The reported flag as this node would hold it at `now` with timers that fire on time (the
    /// simulator checks its invariants with it for nodes whose timers are late).
    #[cfg(test)]
    pub(crate) fn quorate_reported_at(&self, now: Instant) -> bool {
        self.effective_quorate && self.reported_holds(now)
    }

    /// Whether a reported quorum may be kept at `now`: the strict quorum holds, or lapsed less
    /// than the grace ago.
    fn reported_holds(&self, now: Instant) -> bool {
        let grace = report_grace(&self.params.timing);
        !self.left
            && self.view.is_some()
            && (self.quorate_at(now) || self.strict_until.is_some_and(|u| now < u + grace))
    }

    /// Whether the installed view could still be quorate: the members this node hears, and that
    /// have not moved on to a view without it, carry its quorum. It only decides when the quorum
    /// decision owed after an install can be given up (`QuorumLost` at once rather than waiting
    /// for the view's vote leases); the flag itself follows the leases.
    fn view_quorum_holds(&self, now: Instant) -> bool {
        let Some(view) = &self.view else { return false };
        if self.left {
            return false;
        }
        let mut present = vec![self.params.local];
        // A peer announcing a newer view that this node never acked has installed it without
        // this node (one-way cut, or a partition that shares a witness): it no longer counts here.
        // A newer view this node acked is on its way here too; the peer keeps counting for a
        // grace period of 2 x view_timeout (not stretched by the health multiplier: members install
        // within a round trip or two, and a node only vouched for by others raises its multiplier).
        let mine = view.id.epoch;
        let grace = self.params.timing.view_timeout * 2;
        let moved_on = |p: &Peer| {
            p.view.is_some_and(|v| {
                v.epoch > mine
                    && (!self.acked.contains_key(&v)
                        || p.view_mismatch_since.is_some_and(|s| now.saturating_duration_since(s) >= grace))
            })
        };
        // Only peers heard directly count: one that others vouch for but we cannot hear may well be
        // on the other side of a partition, holding its own quorum with a shared witness. The
        // silence allowed is stretched only by this node's own lateness, not by suspicions of it
        // that were refuted: those say nothing about this node being slow, and a multiplier raised
        // by them (a peer it cannot hear, vouched for by others) must not keep it quorate for up to
        // 9 x suspect_timeout after a partition while the other side takes over in ~45 ms.
        let timeout = self.params.timing.suspect_timeout * (1 + self.late_lhm);
        let heard = |p: &Peer| p.last_heard.is_some_and(|h| now.saturating_duration_since(h) <= timeout);
        present.extend(
            self.peers
                .values()
                .filter(|p| p.state == PeerState::Alive && heard(p) && !moved_on(p))
                .map(|p| p.spec.id),
        );
        self.quorum.quorate_with(&present)
    }

    /// Strict quorum at `now`: this node holds, in its installed view, fresh vote leases (its own
    /// vote included) that carry votequorum's threshold, and it has acked no proposal for another
    /// view. At any instant, every node for which this holds is in the same view (crate docs,
    /// "Vote leases"); under loss it can lapse for a moment without any view change.
    pub fn quorate_at(&self, now: Instant) -> bool {
        !self.left && !self.vote_withheld() && self.quorum.quorate_with(&self.lease_voters(now))
    }

    /// Voters whose vote this node may count at `now`: itself once its quiet period is over, and
    /// every peer whose vote lease in the installed view is still running.
    fn lease_voters(&self, now: Instant) -> Vec<NodeId> {
        let mut v = Vec::new();
        if now >= self.vote_free_at {
            v.push(self.params.local);
        }
        v.extend(self.peers.values().filter(|p| p.lease_until.is_some_and(|u| u > now)).map(|p| p.spec.id));
        v
    }

    /// Until when the strict quorum ([`Self::quorate_at`]) lasts if no lease is renewed; `None` when
    /// it does not hold at `now`. Renewed by every heartbeat round trip.
    pub fn quorum_lease(&self, now: Instant) -> Option<Instant> {
        if !self.quorate_at(now) {
            return None;
        }
        let mut ends: Vec<Instant> =
            self.peers.values().filter_map(|p| p.lease_until).filter(|u| *u > now).collect();
        ends.sort();
        for t in ends {
            if !self.quorate_at(t) {
                return Some(t);
            }
        }
        // Quorate on this node's own vote (a single-node view): promise one lease at a time.
        Some(now + vote_lease(&self.params.timing))
    }

    /// Emit QuorumGained/QuorumLost when the reported flag changes, and the decision owed after an
    /// install. The flag is gained only with a strict quorum ([`Self::quorate_at`]) and kept while
    /// the strict quorum lapsed less than [`report_grace`] ago, so a brief lease lapse under loss
    /// changes nothing.
    fn update_quorate(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        let strict = self.quorate_at(now);
        if strict {
            self.strict_until = self.quorum_lease(now);
        } else if self.strict_until.is_some_and(|u| u > now) {
            // Ended before its leases ran out: an ack withholds this node's vote at once.
            self.strict_until = Some(now);
        }
        let q = if self.effective_quorate { self.reported_holds(now) } else { strict };
        if q != self.effective_quorate {
            self.effective_quorate = q;
            self.decision_due = None;
            match (q, &self.view) {
                (true, Some(v)) => self.events.push_back(Event::QuorumGained { view: v.id }),
                _ => self.events.push_back(Event::QuorumLost),
            }
        } else if !q && self.decision_due.is_some_and(|due| now >= due || !self.view_quorum_holds(now)) {
            // The view's quorum decision was owed: not quorate (the view lacks votes, or its
            // leases did not come in time; a lease that comes later still emits QuorumGained).
            self.decision_due = None;
            self.events.push_back(Event::QuorumLost);
        }
    }

    /// Whether this node has left.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next notification.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn mult(&self) -> u32 {
        1 + self.lhm
    }

    fn suspect_timeout(&self) -> Duration {
        self.params.timing.suspect_timeout * self.mult()
    }

    fn lhm_up(&mut self) {
        self.lhm = (self.lhm + 1).min(self.params.timing.max_lhm);
        self.on_time_ticks = 0;
    }

    /// The suspicion timeout given `c` confirmations (Lifeguard's logarithmic shrink).
    fn suspicion_timeout(&self, target: NodeId, c: usize) -> Duration {
        let t = &self.params.timing;
        let k = self
            .peers
            .values()
            .filter(|p| p.spec.id != target && p.state == PeerState::Alive)
            .count()
            .min(3);
        let base = if k == 0 {
            t.confirm_max
        } else {
            let frac = ((c.min(k) + 1) as f64).ln() / ((k + 1) as f64).ln();
            let span = t.confirm_max.saturating_sub(t.confirm_min);
            t.confirm_max.saturating_sub(span.mul_f64(frac.clamp(0.0, 1.0))).max(t.confirm_min)
        };
        base * self.mult()
    }

    fn suspicion_deadline(&self, p: &Peer) -> Option<Instant> {
        let s = p.suspicion.as_ref()?;
        Some(s.since + self.suspicion_timeout(p.spec.id, s.confirmations.len()))
    }

    /// When `handle_timeout` must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let mut t = self.next_heartbeat;
        for p in self.peers.values() {
            if let Some(d) = self.suspicion_deadline(p) {
                t = t.min(d);
            }
        }
        if let Some(p) = &self.pending {
            t = t.min(p.deadline);
        }
        if let Some(q) = self.quorum.poll_timeout() {
            t = t.min(q);
        }
        if self.grant_wake {
            t = t.min(self.vote_free_at);
        }
        if let Some(d) = self.decision_due {
            t = t.min(d);
        }
        if self.effective_quorate
            && let Some(u) = self.strict_until
        {
            // The reported flag drops exactly when the grace after the strict quorum runs out.
            t = t.min(u + report_grace(&self.params.timing));
        }
        Some(t)
    }

    fn seal(&mut self, msg: &Message) -> Option<Bytes> {
        self.seq += 1;
        let h = Header {
            cluster_id: self.params.cluster_id,
            sender: self.params.local,
            boot: self.boot,
            seq: self.seq,
        };
        match self.auth.seal(&h, msg) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(kind = msg.kind(), error = %e, "cannot emit membership message");
                None
            }
        }
    }

    /// Send one sealed copy on every working link to `to` (all links if none is known to work); the
    /// receiver's replay window drops the duplicates.
    fn send(&mut self, to: NodeId, msg: &Message) {
        let Some(payload) = self.seal(msg) else { return };
        let Some(p) = self.peers.get(&to) else { return };
        let up: Vec<usize> = (0..p.links.len()).filter(|&l| p.links[l].up).collect();
        let links = if up.is_empty() { (0..p.links.len()).collect() } else { up };
        for link in links {
            self.transmits.push_back(Transmit { to, link, payload: payload.clone() });
        }
    }

    /// Send on one given link only.
    fn send_on(&mut self, to: NodeId, link: usize, msg: &Message) {
        if self.peers.get(&to).is_some_and(|p| link < p.links.len())
            && let Some(payload) = self.seal(msg)
        {
            self.transmits.push_back(Transmit { to, link, payload });
        }
    }

    /// One latency probe per peer and link.
    fn send_pings(&mut self, now: Instant) {
        let targets: Vec<(NodeId, usize)> =
            self.peers.values().flat_map(|p| (0..p.links.len()).map(move |l| (p.spec.id, l))).collect();
        for (to, link) in targets {
            let probe = self.next_probe;
            self.next_probe = self.next_probe.wrapping_add(1);
            if let Some(l) = self.peers.get_mut(&to).and_then(|p| p.links.get_mut(link)) {
                l.ping = Some((probe, now));
            }
            self.send_on(to, link, &Message::Ping { probe });
        }
    }

    /// Number a new heartbeat round sent at `now`.
    fn new_round(&mut self, now: Instant) -> u64 {
        let keep = vote_lease(&self.params.timing);
        while self.rounds.len() >= MAX_ROUNDS
            || self.rounds.front().is_some_and(|(_, at)| now.saturating_duration_since(*at) > keep)
        {
            self.rounds.pop_front();
        }
        self.round += 1;
        self.rounds.push_back((self.round, now));
        self.round
    }

    /// When round `round` was sent, if a lease counted from it can still be running.
    fn round_sent(&self, round: u64) -> Option<Instant> {
        self.rounds.binary_search_by_key(&round, |(r, _)| *r).ok().map(|i| self.rounds[i].1)
    }

    /// Whether `p` (in its known life) is a member of the installed view.
    fn is_member(&self, p: &Peer) -> bool {
        self.view.as_ref().is_some_and(|v| v.members.iter().any(|m| m.node == p.spec.id && Some(m.boot) == p.boot))
    }

    /// Whether this node grants its vote to `to` now (see `heartbeat_for`).
    fn grants_to(&self, now: Instant, to: NodeId) -> bool {
        !self.left
            && now >= self.vote_free_at
            && !self.vote_withheld()
            && self.peers.get(&to).is_some_and(|p| self.is_member(p))
    }

    /// The heartbeat for `to`: it echoes `to`'s latest round, granting `to` this node's vote in
    /// the installed view, when `to` is a member of it, this node acked no other proposal, and its
    /// quiet period is over. Every grant is remembered (`granted_until`) for the next quiet period.
    /// It is marked urgent when `to` announces this node's view, votes, and the lease this node
    /// holds from it ends within a heartbeat interval (its regular echoes were lost): `to` then
    /// echoes at once instead of at its next round.
    fn heartbeat_for(&mut self, now: Instant, to: NodeId, round: u64) -> Message {
        let view = self.view.as_ref().map(|v| v.id);
        let span = lease_span(&self.params.timing);
        let fresh = vote_lease(&self.params.timing);
        let hb = self.params.timing.heartbeat_interval;
        let grant = self.grants_to(now, to);
        let urgent = !self.left
            && view.is_some()
            && self.peers.get(&to).is_some_and(|p| {
                p.spec.votes > 0
                    && p.view == view
                    && self.is_member(p)
                    && p.lease_until.is_none_or(|u| u <= now + hb)
            });
        let mut echo = 0;
        if grant
            && let Some(p) = self.peers.get_mut(&to)
            && let Some(at) = p.round_at
            && p.round > 0
            && now.saturating_duration_since(at) < fresh
        {
            echo = p.round;
            p.granted_until = Some(p.granted_until.map_or(at + span, |g| g.max(at + span)));
        }
        Message::Heartbeat {
            view,
            incarnation: self.incarnation,
            delivered: self.chan.delivered(),
            // Also while its vote is withheld from its view because it acked a newer one that was
            // not installed here: the coordinator then proposes a view newer than both.
            blocked: self.chan.blocked() || self.view.as_ref().is_some_and(|v| self.max_acked_epoch > v.id.epoch),
            urgent,
            round,
            echo,
        }
    }

    fn send_heartbeats(&mut self, now: Instant) {
        let round = self.new_round(now);
        let targets: Vec<(NodeId, usize)> =
            self.peers.values().map(|p| (p.spec.id, p.links.len())).collect();
        for (to, links) in targets {
            let msg = self.heartbeat_for(now, to, round);
            for link in 0..links {
                // One datagram per link: each link must prove itself.
                if let Some(payload) = self.seal(&msg) {
                    self.transmits.push_back(Transmit { to, link, payload });
                }
            }
        }
    }

    /// A heartbeat to `to` right away (a view was installed, or `to` just joined this node's view),
    /// so vote leases in a new view need no wait for the next heartbeat round.
    fn send_heartbeat_now(&mut self, now: Instant, to: NodeId) {
        let Some(links) = self.peers.get(&to).map(|p| p.links.len()) else { return };
        let round = self.new_round(now);
        let msg = self.heartbeat_for(now, to, round);
        for link in 0..links {
            if let Some(payload) = self.seal(&msg) {
                self.transmits.push_back(Transmit { to, link, payload });
            }
        }
    }

    /// Heartbeats right away to every other member of the installed view.
    fn heartbeat_members_now(&mut self, now: Instant) {
        let Some(v) = &self.view else { return };
        let me = self.params.local;
        let ids: Vec<NodeId> = v.members.iter().map(|m| m.node).filter(|n| *n != me).collect();
        for id in ids {
            self.send_heartbeat_now(now, id);
        }
    }

    /// A heartbeat's vote-lease part: remember the sender's round (to echo it), and take the lease
    /// its echo grants when the sender holds this node's view.
    fn on_heartbeat_lease(&mut self, now: Instant, from: NodeId, boot: u64, view: Option<ViewId>, round: u64, echo: u64) {
        let mine = self.view.as_ref().filter(|v| v.members.contains(&Member { node: from, boot })).map(|v| v.id);
        let sent = if echo != 0 && view.is_some() && view == mine { self.round_sent(echo) } else { None };
        let lease = vote_lease(&self.params.timing);
        let Some(p) = self.peers.get_mut(&from) else { return };
        if round > p.round {
            p.round = round;
            p.round_at = Some(now);
        }
        if let Some(sent) = sent {
            let until = sent + lease;
            p.lease_until = Some(p.lease_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Whether to answer an urgent heartbeat from `from` at once: only with a grant (an answer
    /// without one renews nothing), and at most once per half heartbeat interval per peer (the
    /// same round arrives once per link, and a peer may not make this node send at its rate).
    fn answer_urgent(&mut self, now: Instant, from: NodeId) -> bool {
        let gap = self.params.timing.heartbeat_interval / 2;
        if !self.grants_to(now, from) {
            return false;
        }
        let Some(p) = self.peers.get_mut(&from) else { return false };
        if p.urgent_answered.is_some_and(|t| now.saturating_duration_since(t) < gap) {
            return false;
        }
        p.urgent_answered = Some(now);
        true
    }

    /// Leave the cluster on purpose: tell every peer (twice, for loss) and stop.
    pub fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for _ in 0..2 {
            for &p in &ids {
                self.send(p, &Message::Leave);
            }
        }
        self.left = true;
        self.pending = None;
        self.view = None;
        let _ = self.quorum.clear();
        self.update_quorate(now);
    }

    /// Process one received datagram that arrived on `link`. Anything invalid is dropped and counted.
    pub fn handle_datagram(&mut self, now: Instant, link: usize, datagram: &[u8]) {
        if self.left {
            return;
        }
        let (header, msg) = match self.auth.open(datagram, self.params.cluster_id, &mut self.guard) {
            Ok(x) => x,
            Err(reason) => {
                tracing::debug!(%reason, "dropped membership datagram");
                self.drops.record(&reason);
                return;
            }
        };
        let from = header.sender;
        self.heard(now, from, header.boot, link);
        match msg {
            Message::Heartbeat { view, incarnation, delivered, blocked, urgent, round, echo } => {
                self.note_incarnation(from, incarnation);
                self.on_heartbeat_lease(now, from, header.boot, view, round, echo);
                let joined = self.note_peer_view(now, from, view, blocked);
                if joined || (urgent && self.answer_urgent(now, from)) {
                    self.send_heartbeat_now(now, from);
                }
                self.chan.on_heartbeat(from, view, delivered);
            }
            Message::Join { incarnation } | Message::Alive { incarnation } => {
                self.note_incarnation(from, incarnation);
            }
            // Latency probes are answered on the link they came in on.
            Message::Ping { probe } => self.send_on(from, link, &Message::Ack { probe }),
            Message::Ack { probe } => {
                if let Some(p) = self.peers.get_mut(&from)
                    && let Some(l) = p.links.get_mut(link)
                    && let Some((want, sent)) = l.ping
                    && want == probe
                {
                    l.rtt = Some(now.saturating_duration_since(sent));
                    l.ping = None;
                    if p.needs_contact {
                        // It heard a probe sent after it was left out, and we heard its answer.
                        p.needs_contact = false;
                        tracing::debug!(node = %from, "two-way contact again; eligible for views");
                    }
                }
            }
            Message::PingReq { target, probe } => self.on_ping_req(now, from, target, probe),
            Message::ProbeVote { target, probe, alive, heard_ago_ms } => {
                self.on_vote(now, from, target, probe, alive, heard_ago_ms)
            }
            Message::Suspect { target, boot, incarnation } => {
                self.on_suspect(now, from, target, boot, incarnation)
            }
            Message::ViewPropose { view, members } => {
                self.on_propose(now, from, header.boot, view, members)
            }
            Message::ViewAck { view, accept, max_epoch, prev, delivered } => {
                self.on_ack(now, from, view, accept, max_epoch, prev, delivered)
            }
            Message::ViewInstall { view, members, cuts } => {
                if view.coordinator == from && view.coordinator_boot == header.boot {
                    self.install(now, view, members, cuts);
                }
            }
            Message::Leave => self.on_leave(from),
            Message::Data { view, seq, origin, origin_seq, payload } => {
                let mut out = Out::default();
                self.chan.on_data(view, seq, origin, origin_seq, payload, &mut out);
                self.apply(now, out);
            }
            Message::Nack { view, from: lo, to: hi } => {
                let mut out = Out::default();
                self.chan.on_nack(from, view, lo, hi, &mut out);
                self.apply(now, out);
            }
            Message::Submit { view, origin_seq, oldest, payload } => {
                let mut out = Out::default();
                self.chan.on_submit(from, view, origin_seq, oldest, payload, &mut out);
                self.apply(now, out);
            }
        }
        self.coordinator_duty(now);
        self.update_quorate(now);
    }

    fn heard(&mut self, now: Instant, from: NodeId, boot: u64, link: usize) {
        let mut returned = false;
        let Some(p) = self.peers.get_mut(&from) else { return };
        if p.boot.is_some_and(|b| boot > b) {
            // A new life of this node: the old one is gone.
            p.incarnation = 0;
            p.state = PeerState::Unknown;
            p.suspicion = None;
            p.view = None;
            p.excluded_until = None;
            p.needs_contact = false;
            p.round = 0;
            p.round_at = None;
            p.lease_until = None;
        }
        p.boot = Some(boot);
        if p.state == PeerState::Left {
            return;
        }
        p.last_heard = Some(now);
        if let Some(l) = p.links.get_mut(link) {
            l.last_heard = Some(now);
            if !l.up {
                l.up = true;
                self.events.push_back(Event::LinkUp { node: from, link });
            }
        }
        if p.state != PeerState::Alive {
            if p.state == PeerState::Suspect {
                self.stats.suspicions_cleared += 1;
            } else {
                // Heard again after it was failed (a healed cut): how long it has announced another
                // view counts from now, or `distrust_stuck_coordinators` would take the time it spent
                // cut off for a stuck coordinator and leave it out of the merge.
                p.view_mismatch_since = None;
                returned = true;
            }
            p.state = PeerState::Alive;
            p.suspicion = None;
        }
        if returned {
            self.last_return = Some(now);
        }
    }

    fn note_incarnation(&mut self, from: NodeId, incarnation: u32) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.incarnation = p.incarnation.max(incarnation);
        }
    }

    /// Send what the channel produced, emit its events, and finish a flush that completed.
    fn apply(&mut self, now: Instant, out: Out) {
        for (to, msg) in out.sends {
            self.send(to, &msg);
        }
        self.events.extend(out.events);
        if let Some((view, members)) = self.chan.take_flush_done() {
            self.complete_install(now, view, members);
        }
    }

    /// Queue `payload` for ordered delivery to every member of the view (this node included);
    /// returns its per-origin number.
    pub fn broadcast(&mut self, now: Instant, payload: Bytes) -> Result<u64, ChannelError> {
        if self.left {
            return Err(ChannelError::Left);
        }
        let n = self.chan.broadcast(payload)?;
        let mut out = Out::default();
        self.chan.pump(now, self.params.timing.heartbeat_interval * 3, &mut out);
        self.apply(now, out);
        Ok(n)
    }

    /// Record the view a peer announces; true when it has just come to announce this node's view
    /// (answer it at once, so both ends hold vote leases in the view without waiting a round).
    fn note_peer_view(&mut self, now: Instant, from: NodeId, view: Option<ViewId>, blocked: bool) -> bool {
        if let Some(v) = view {
            self.max_epoch = self.max_epoch.max(v.epoch);
        }
        let mine = self.view.as_ref().map(|v| v.id);
        let Some(p) = self.peers.get_mut(&from) else { return false };
        p.view = view;
        if !blocked {
            p.blocked_since = None;
        } else if p.blocked_since.is_none() {
            p.blocked_since = Some(now);
        }
        if view == mine {
            let joined = p.view_mismatch_since.is_some() && mine.is_some();
            p.view_mismatch_since = None;
            joined
        } else {
            if p.view_mismatch_since.is_none() {
                p.view_mismatch_since = Some(now);
            }
            false
        }
    }

    fn on_ping_req(&mut self, now: Instant, from: NodeId, target: NodeId, probe: u32) {
        let (alive, heard_ago_ms) = match self.peers.get(&target) {
            Some(t) => match t.last_heard {
                Some(h) if t.state != PeerState::Left => {
                    let ago = now.saturating_duration_since(h);
                    (ago < self.suspect_timeout(), ago.as_millis().min(u32::MAX as u128) as u32)
                }
                _ => (false, u32::MAX),
            },
            None => (false, u32::MAX),
        };
        self.send(from, &Message::ProbeVote { target, probe, alive, heard_ago_ms });
    }

    fn silence(p: &Peer, now: Instant) -> Option<Duration> {
        let last = match (p.last_heard, p.vouched) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        last.map(|l| now.saturating_duration_since(l))
    }

    fn on_vote(
        &mut self,
        now: Instant,
        from: NodeId,
        target: NodeId,
        probe: u32,
        alive: bool,
        ago_ms: u32,
    ) {
        let hb = self.params.timing.heartbeat_interval;
        let Some(p) = self.peers.get_mut(&target) else { return };
        // Only votes answering the current suspicion's probe count.
        if p.suspicion.as_ref().is_none_or(|s| s.probe != probe) {
            return;
        }
        let ago = Duration::from_millis(ago_ms as u64);
        let my_silence = Self::silence(p, now).unwrap_or(Duration::MAX);
        if alive && ago + hb < my_silence {
            // Someone heard it clearly more recently than I did: my own path is the problem.
            p.vouched = now.checked_sub(ago);
            p.state = PeerState::Alive;
            p.suspicion = None;
            self.stats.suspicions_cleared += 1;
            self.lhm_up();
        } else if let Some(s) = p.suspicion.as_mut() {
            s.confirmations.insert(from);
        }
    }

    fn on_suspect(&mut self, now: Instant, from: NodeId, target: NodeId, boot: u64, inc: u32) {
        if target == self.params.local {
            if boot == self.boot && inc >= self.incarnation {
                self.incarnation = inc.saturating_add(1);
                self.stats.refutations += 1;
                self.lhm_up();
                let ids: Vec<NodeId> = self.peers.keys().copied().collect();
                let msg = Message::Alive { incarnation: self.incarnation };
                for p in ids {
                    self.send(p, &msg);
                }
            }
            return;
        }
        let _ = now;
        if let Some(p) = self.peers.get_mut(&target)
            && p.boot == Some(boot)
            && inc >= p.incarnation
            && let Some(s) = p.suspicion.as_mut()
        {
            s.confirmations.insert(from);
        }
    }

    fn on_leave(&mut self, from: NodeId) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.state = PeerState::Left;
            p.suspicion = None;
            // A node that left counts no quorum any more (it stopped before saying so): the
            // leases granted to it need no quiet period, so a graceful leave commits at once.
            p.granted_until = None;
            p.lease_until = None;
            for (link, l) in p.links.iter_mut().enumerate() {
                if l.up {
                    l.up = false;
                    self.events.push_back(Event::LinkDown { node: from, link });
                }
            }
        }
    }

    fn my_member(&self) -> Member {
        Member { node: self.params.local, boot: self.boot }
    }

    /// How long a peer may go without a direct datagram before it is left out of views
    /// (`partition_timeout`, stretched only by this node's own late timers: refuted suspicions of a
    /// peer that others vouch for must not stretch it).
    fn partition_timeout(&self) -> Duration {
        self.params.timing.partition_timeout * (1 + self.late_lhm)
    }

    /// Alive only by others' word: another member vouched for it after this node last heard it
    /// directly (on any link), and that was the partition timeout ago or more. A peer merely not
    /// heard while this node itself was stalled is not partitioned (nobody vouched for it since).
    fn partitioned(&self, p: &Peer, now: Instant) -> bool {
        p.vouched.is_some_and(|v| p.last_heard.is_none_or(|h| v > h))
            && p.last_heard.is_none_or(|h| now.saturating_duration_since(h) >= self.partition_timeout())
    }

    /// Whether `p` may be in a view this node proposes (before the direct-contact rule).
    fn eligible(p: &Peer, now: Instant) -> bool {
        matches!(p.state, PeerState::Alive | PeerState::Suspect)
            && p.excluded_until.is_none_or(|t| now >= t)
            && !p.needs_contact
    }

    fn reachable(&self, now: Instant) -> Vec<Member> {
        let mut r = vec![self.my_member()];
        for p in self.peers.values() {
            let ok = Self::eligible(p, now) && !self.partitioned(p, now);
            if let (true, Some(boot)) = (ok, p.boot) {
                r.push(Member { node: p.spec.id, boot });
            }
        }
        r.sort();
        r
    }

    /// A lower-id peer that should coordinate but has announced another view for a long time cannot
    /// reach us (a one-way cut: we hear it, it does not hear us). Leave it out until it answers a
    /// probe, so the next node in line can form a view instead of everyone waiting for ever.
    fn distrust_stuck_coordinators(&mut self, now: Instant) {
        let Some(mine) = self.view.as_ref().map(|v| v.id) else { return };
        let patience = self.params.timing.view_timeout * 4 * self.mult();
        let local = self.params.local;
        // Views that some working peer shares: a lower node coordinating such a view is not stuck,
        // it has left *us* out (we are the one cut off) and we must not fight it.
        let shared: Vec<(NodeId, ViewId)> = self
            .peers
            .values()
            .filter(|p| p.state == PeerState::Alive && !p.needs_contact)
            .filter_map(|p| p.view.map(|v| (p.spec.id, v)))
            .collect();
        for p in self.peers.values_mut() {
            let others_share = p.view.is_some_and(|pv| shared.iter().any(|(n, v)| *n != p.spec.id && *v == pv));
            let stuck = p.spec.id < local
                && !others_share
                && !p.needs_contact
                && matches!(p.state, PeerState::Alive | PeerState::Suspect)
                && p.view.is_some_and(|v| v != mine)
                && p.view_mismatch_since.is_some_and(|s| now.saturating_duration_since(s) >= patience);
            if stuck {
                p.needs_contact = true;
                for l in &mut p.links {
                    l.ping = None;
                }
                tracing::debug!(node = %p.spec.id, "lower node stuck in another view; excluded until two-way contact");
            }
        }
    }

    fn coordinator_duty(&mut self, now: Instant) {
        if self.left || self.pending.is_some() || now < self.propose_not_before {
            return;
        }
        self.distrust_stuck_coordinators(now);
        let r = self.reachable(now);
        if r[0].node != self.params.local {
            return;
        }
        // A lower node that the others still vouch for but this node has not heard directly for
        // the partition timeout is on the other side of a cut that spares the third parties: it
        // forms the view (without this node, if it cannot hear it either), and the third parties
        // side with it, so the lowest id's side wins (corosync-qnetd's ffsplit tie-breaker). This
        // node does not fight it with a view of its own; it stays out, not quorate.
        let local = self.params.local;
        if self.peers.values().any(|p| p.spec.id < local && Self::eligible(p, now) && self.partitioned(p, now)) {
            return;
        }
        let vt = self.params.timing.view_timeout;
        let same = self.view.as_ref().is_some_and(|v| v.members == r);
        let older = |s: Option<Instant>| s.is_some_and(|s| now.saturating_duration_since(s) >= vt);
        // A peer in another view, or blocked by a proposal that never completed, needs a new view.
        let stale_peer = r.iter().skip(1).any(|m| {
            self.peers
                .get(&m.node)
                .is_some_and(|p| older(p.view_mismatch_since) || older(p.blocked_since))
        });
        if same && !stale_peer && !self.must_install {
            return;
        }
        // A merge waits until no peer has come back for two heartbeat intervals: the first
        // heartbeat across a healed cut comes from one node of the other side, and a view of just
        // that node would pull it out of its side's quorate view, then the rest would follow one
        // view at a time, the majority losing quorum meanwhile. Crash failover adds nobody, so it
        // never waits here.
        let hb2 = self.params.timing.heartbeat_interval * 2;
        let adds = self.view.as_ref().is_some_and(|v| r.iter().any(|m| !v.members.contains(m)));
        if adds && self.last_return.is_some_and(|t| now < t + hb2) {
            return;
        }
        self.propose(now, r);
    }

    fn propose(&mut self, now: Instant, members: Vec<Member>) {
        self.max_epoch = self.max_epoch.saturating_add(1);
        let view = ViewId {
            epoch: self.max_epoch,
            coordinator: self.params.local,
            coordinator_boot: self.boot,
        };
        self.stats.views_proposed += 1;
        tracing::debug!(%view, n = members.len(), "proposing view");
        self.chan.block();
        self.must_install = true;
        self.record_ack(view);
        let mut acks = BTreeMap::new();
        acks.insert(self.params.local, self.chan.ack_info());
        self.pending = Some(Pending {
            view,
            members: members.clone(),
            acks,
            deadline: now + self.params.timing.view_timeout,
        });
        self.promise = Some((view, now + self.params.timing.view_timeout));
        if members.len() == 1 {
            self.finish_pending(now);
            return;
        }
        let msg = Message::ViewPropose { view, members: members.clone() };
        let me = self.params.local;
        for m in members.iter().filter(|m| m.node != me) {
            self.send(m.node, &msg);
        }
    }

    /// Remember that `view` was acked from the current channel state; earlier acks made from another
    /// state (before a flush advanced it) become void, and so does a flush toward one of them.
    fn record_ack(&mut self, view: ViewId) {
        let info = self.chan.ack_info();
        self.acked.retain(|_, v| *v == info);
        if self.chan.flush_target().is_some_and(|t| !self.acked.contains_key(&t)) {
            self.chan.cancel_flush();
        }
        self.acked.insert(view, info);
        self.max_acked_epoch = self.max_acked_epoch.max(view.epoch);
    }

    /// Whether this node's vote is withheld from its installed view: it acked (or proposed) a newer
    /// view, and stays out of quorum in the old one until it installs a view at least that new
    /// (installing an older view it had also acked does not release it), or it is blocked.
    fn vote_withheld(&self) -> bool {
        self.chan.blocked() || self.view.as_ref().is_none_or(|v| self.max_acked_epoch > v.id.epoch)
    }

    fn finish_pending(&mut self, now: Instant) {
        let Some(p) = self.pending.take() else { return };
        let cuts = Channel::cuts(&p.acks);
        if cuts.len() > MAX_CUTS {
            // Too many previous views to flush in one install: leave the members of the extra ones
            // out for now; they join in a following view.
            let keep: Vec<ViewId> = cuts.iter().take(MAX_CUTS).map(|c| c.view).collect();
            let until = now + self.params.timing.view_timeout * 2;
            for (n, (prev, _)) in &p.acks {
                if prev.is_some_and(|v| !keep.contains(&v))
                    && let Some(peer) = self.peers.get_mut(n)
                {
                    peer.excluded_until = Some(until);
                }
            }
            return;
        }
        let msg = Message::ViewInstall { view: p.view, members: p.members.clone(), cuts: cuts.clone() };
        let me = self.params.local;
        for m in p.members.iter().filter(|m| m.node != me) {
            self.send(m.node, &msg);
        }
        self.install(now, p.view, p.members, cuts);
    }

    fn on_propose(&mut self, now: Instant, from: NodeId, boot: u64, view: ViewId, members: Vec<Member>) {
        self.max_epoch = self.max_epoch.max(view.epoch);
        if view.coordinator != from || view.coordinator_boot != boot {
            return;
        }
        let accept = self.should_accept(now, from, &view, &members);
        if accept {
            if self.pending.is_some() {
                // A lower-id coordinator wins; our own proposal is abandoned.
                self.pending = None;
            }
            self.promise = Some((view, now + self.params.timing.view_timeout * 2));
            // Report how far we delivered, and stop there until a view is installed.
            self.chan.block();
            self.record_ack(view);
        }
        let (prev, delivered) = self.chan.ack_info();
        self.send(from, &Message::ViewAck { view, accept, max_epoch: self.max_epoch, prev, delivered });
    }

    fn should_accept(&self, now: Instant, from: NodeId, view: &ViewId, members: &[Member]) -> bool {
        if !members.contains(&self.my_member()) || !members.iter().any(|m| m.node == from) {
            return false;
        }
        if self.view.as_ref().is_some_and(|v| view.epoch <= v.id.epoch) {
            return false;
        }
        // Installing a view older than one already acked would leave this node's vote withheld
        // (see `vote_withheld`): refuse, so the proposer learns the epoch and proposes above it.
        if view.epoch < self.max_acked_epoch {
            return false;
        }
        if self.pending.is_some() && self.params.local < from {
            return false;
        }
        if let Some((pv, until)) = self.promise
            && now < until
            && pv != *view
            && pv.coordinator < from
        {
            return false;
        }
        // Do not follow a coordinator that leaves out a lower member of my view which I hear clearly
        // (it is the rightful coordinator; the proposer merely cannot reach it one way). A crashed
        // member is silent by the time anyone proposes without it, so this never delays a failover.
        let clear = self.params.timing.heartbeat_interval * 2;
        if let Some(v) = &self.view {
            let shunned = v.members.iter().any(|m| {
                m.node < from
                    && m.node != self.params.local
                    && !members.iter().any(|x| x.node == m.node)
                    && self.peers.get(&m.node).is_some_and(|p| {
                        p.state == PeerState::Alive
                            && !p.needs_contact
                            && p.boot == Some(m.boot)
                            && p.last_heard.is_some_and(|h| now.saturating_duration_since(h) <= clear)
                    })
            });
            if shunned {
                return false;
            }
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn on_ack(
        &mut self,
        now: Instant,
        from: NodeId,
        view: ViewId,
        accept: bool,
        max_epoch: u64,
        prev: Option<ViewId>,
        delivered: u64,
    ) {
        self.max_epoch = self.max_epoch.max(max_epoch);
        let Some(p) = self.pending.as_mut() else { return };
        if p.view != view {
            return;
        }
        if !accept {
            self.pending = None;
            // Retry at once above the epoch learnt; consecutive refusals (a member that follows
            // a lower coordinator this node cannot hear) back off up to 4 x view_timeout.
            let t = &self.params.timing;
            let backoff = t.heartbeat_interval.saturating_mul(1u32 << self.refusals.min(16)).min(t.view_timeout.saturating_mul(4));
            self.refusals = self.refusals.saturating_add(1);
            self.propose_not_before = now + backoff;
            return;
        }
        if p.members.iter().any(|m| m.node == from) {
            p.acks.insert(from, (prev, delivered));
        }
        if p.acks.len() == p.members.len() {
            self.finish_pending(now);
        }
    }

    fn install(&mut self, now: Instant, id: ViewId, members: Vec<Member>, cuts: Vec<Cut>) {
        if !members.contains(&self.my_member()) {
            return;
        }
        if self.view.as_ref().is_some_and(|v| id.epoch <= v.id.epoch) {
            return;
        }
        self.max_epoch = self.max_epoch.max(id.epoch);
        if !self.acked.contains_key(&id) {
            // Acked from an earlier state, or never: its cuts do not describe us.
            return;
        }
        self.pending_cuts = cuts.clone();
        let mut out = Out::default();
        let ready = self.chan.begin_install(id, &members, &cuts, &mut out);
        self.apply(now, out);
        if ready && self.view.as_ref().is_none_or(|v| v.id.epoch < id.epoch) {
            self.complete_install(now, id, members);
        }
    }

    fn complete_install(&mut self, now: Instant, id: ViewId, members: Vec<Member>) {
        if self.view.as_ref().is_some_and(|v| id.epoch <= v.id.epoch) {
            return;
        }
        if self.pending.as_ref().is_some_and(|p| p.view.epoch <= id.epoch && p.view != id) {
            self.pending = None;
        }
        self.promise = None;
        if id.coordinator != self.params.local
            && let Some(c) = self.peers.get_mut(&id.coordinator)
            && c.boot == Some(id.coordinator_boot)
        {
            // Two-way contact proven: it had our ack, we have its install.
            c.needs_contact = false;
        }
        for p in self.peers.values_mut() {
            p.view_mismatch_since = if p.view == Some(id) { None } else { Some(now) };
            // Members unblock by installing this view; their next heartbeat says so.
            p.blocked_since = None;
        }
        tracing::info!(view = %id, members = ?members.iter().map(|m| m.node.0).collect::<Vec<_>>(), "view installed");
        self.stats.views_installed += 1;
        let ids: Vec<NodeId> = members.iter().map(|m| m.node).collect();
        let cuts = std::mem::take(&mut self.pending_cuts);
        self.chan.installed(id, &members);
        self.must_install = false;
        self.refusals = 0;
        self.acked.clear();
        self.view = Some(View { id, members: members.clone(), cuts });
        self.events.push_back(Event::ViewInstalled { view: id, members });
        let _ = self.quorum.on_view(now, &ids);
        // Vote leases belong to one view: the old ones are void, and this node's vote counts in
        // the new view only once every lease it granted to a node outside it has run out.
        // The grace is added so that such a node's reported flag is down first too.
        let quiet = self.peers.values().filter(|p| !ids.contains(&p.spec.id)).filter_map(|p| p.granted_until).max();
        if let Some(t) = quiet {
            self.vote_free_at = self.vote_free_at.max(t + grace_span(&self.params.timing));
        }
        for p in self.peers.values_mut() {
            p.lease_until = None;
        }
        self.strict_until = None;
        self.grant_wake = self.vote_free_at > now;
        // A new view is a new quorum decision even if the flag stays the same: exactly one of
        // QuorumGained (for this view) or QuorumLost follows. Normally within a round trip (the
        // members' leases in the view), or at once when the view quorum does not hold; the
        // deadline is only a backstop (members heard but never granting would be cut one way and
        // leave the view soon), generous so that a loaded host is not judged non-quorate for the
        // whole view because its leases came late.
        let t = &self.params.timing;
        self.decision_due = Some(now + lease_span(t) + t.view_timeout * 20 * self.mult());
        self.effective_quorate = false;
        self.update_quorate(now);
        self.heartbeat_members_now(now);
        let mut out = Out::default();
        self.chan.pump(now, self.params.timing.heartbeat_interval * 3, &mut out);
        self.apply(now, out);
    }

    /// Run the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.left {
            return;
        }
        let hb = self.params.timing.heartbeat_interval;
        let mut late = false;
        if now >= self.next_heartbeat {
            // Fired more than one period late: this node was stalled, so the silence it measures is
            // partly its own; stretch timeouts and accuse nobody this round.
            late = now > self.next_heartbeat + hb;
            if late {
                self.stats.late_timers += 1;
                self.lhm_up();
                self.late_lhm = (self.late_lhm + 1).min(self.params.timing.max_lhm);
            } else {
                self.on_time_ticks += 1;
                if self.on_time_ticks >= 32 {
                    self.on_time_ticks = 0;
                    self.lhm = self.lhm.saturating_sub(1);
                    self.late_lhm = self.late_lhm.saturating_sub(1).min(self.lhm);
                }
            }
            self.next_heartbeat = now + hb;
            self.send_heartbeats(now);
            self.ticks += 1;
            if self.ticks % 100 == 1 {
                self.send_pings(now);
            }
            self.send_contact_probes(now);
            self.check_links(now);
            if !late {
                self.start_suspicions(now);
            }
            self.resend_pending(now);
            self.resend_installs(now);
            let mut out = Out::default();
            self.chan.tick(now, hb * 3, &mut out);
            self.apply(now, out);
        }
        if !late {
            self.expire_suspicions(now);
        }
        if self.grant_wake && now >= self.vote_free_at {
            // The quiet period is over: grant this node's vote in the view at once.
            self.grant_wake = false;
            self.heartbeat_members_now(now);
        }
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            self.pending_timed_out(now);
        }
        let _ = self.quorum.on_timeout(now);
        self.coordinator_duty(now);
        self.update_quorate(now);
    }

    fn check_links(&mut self, now: Instant) {
        let timeout = self.suspect_timeout();
        for p in self.peers.values_mut() {
            for (i, l) in p.links.iter_mut().enumerate() {
                if l.up && l.last_heard.is_none_or(|h| now.saturating_duration_since(h) > timeout) {
                    l.up = false;
                    self.events.push_back(Event::LinkDown { node: p.spec.id, link: i });
                }
            }
        }
    }

    fn start_suspicions(&mut self, now: Instant) {
        let timeout = self.suspect_timeout();
        let mut new = Vec::new();
        for p in self.peers.values() {
            if p.state == PeerState::Alive && Self::silence(p, now).is_some_and(|s| s > timeout) {
                new.push(p.spec.id);
            }
        }
        for target in new {
            let probe = self.next_probe;
            self.next_probe = self.next_probe.wrapping_add(1);
            let (boot, incarnation) = {
                let Some(p) = self.peers.get_mut(&target) else { continue };
                p.state = PeerState::Suspect;
                p.suspicion = Some(Suspicion { since: now, confirmations: BTreeSet::new(), probe });
                (p.boot.unwrap_or(0), p.incarnation)
            };
            self.stats.suspicions += 1;
            self.events.push_back(Event::PeerSuspected { node: target });
            tracing::debug!(node = %target, "peer suspected");
            let others: Vec<NodeId> = self
                .peers
                .values()
                .filter(|p| p.spec.id != target && p.state == PeerState::Alive)
                .map(|p| p.spec.id)
                .collect();
            // Ask up to `indirect_probes` of them, rotating so every member gets asked over time.
            let k = match self.params.timing.indirect_probes {
                0 => others.len(),
                k => k.min(others.len()),
            };
            let start = if others.is_empty() { 0 } else { probe as usize % others.len() };
            for i in 0..k {
                self.send(others[(start + i) % others.len()], &Message::PingReq { target, probe });
            }
            for o in others {
                self.send(o, &Message::Suspect { target, boot, incarnation });
            }
            // Tell the suspect so it can refute.
            self.send(target, &Message::Suspect { target, boot, incarnation });
        }
    }

    fn expire_suspicions(&mut self, now: Instant) {
        let due: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| self.suspicion_deadline(p).is_some_and(|d| now >= d))
            .map(|p| p.spec.id)
            .collect();
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                p.state = PeerState::Failed;
                p.suspicion = None;
                self.stats.failures_declared += 1;
                self.events.push_back(Event::PeerFailed { node: id });
                tracing::info!(node = %id, "peer declared failed");
            }
        }
    }

    fn resend_pending(&mut self, _now: Instant) {
        let Some(p) = &self.pending else { return };
        let msg = Message::ViewPropose { view: p.view, members: p.members.clone() };
        let missing: Vec<NodeId> =
            p.members.iter().map(|m| m.node).filter(|n| !p.acks.contains_key(n)).collect();
        for n in missing {
            self.send(n, &msg);
        }
    }

    /// Members of my view (as its coordinator) still announcing an older view missed the install.
    fn resend_installs(&mut self, now: Instant) {
        let Some(v) = &self.view else { return };
        if v.id.coordinator != self.params.local {
            return;
        }
        let hb = self.params.timing.heartbeat_interval;
        let lagging: Vec<NodeId> = v
            .members
            .iter()
            .filter_map(|m| self.peers.get(&m.node))
            .filter(|p| {
                p.view.is_none_or(|pv| pv.epoch < v.id.epoch)
                    && p.view_mismatch_since.is_some_and(|s| now.saturating_duration_since(s) >= hb * 2)
            })
            .map(|p| p.spec.id)
            .collect();
        let msg = Message::ViewInstall { view: v.id, members: v.members.clone(), cuts: v.cuts.clone() };
        for n in lagging {
            self.send(n, &msg);
        }
    }

    fn pending_timed_out(&mut self, now: Instant) {
        let Some(p) = self.pending.take() else { return };
        let _ = now;
        for m in &p.members {
            if !p.acks.contains_key(&m.node)
                && let Some(peer) = self.peers.get_mut(&m.node)
            {
                // Out until it answers a probe sent from now on (see `needs_contact`).
                peer.needs_contact = true;
                for l in &mut peer.links {
                    l.ping = None;
                }
                tracing::debug!(node = %m.node, view = %p.view, "no ack; excluded until two-way contact");
            }
        }
        tracing::debug!(view = %p.view, "proposal timed out; re-proposing without silent members");
    }

    /// Probe peers waiting to prove two-way contact (one outstanding probe per link, renewed when
    /// older than the suspect timeout, so a slow answer still counts).
    fn send_contact_probes(&mut self, now: Instant) {
        let renew = self.suspect_timeout();
        let targets: Vec<(NodeId, usize)> = self
            .peers
            .values()
            .filter(|p| p.needs_contact && matches!(p.state, PeerState::Alive | PeerState::Suspect))
            .flat_map(|p| {
                p.links
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.ping.is_none_or(|(_, at)| now.saturating_duration_since(at) >= renew))
                    .map(move |(i, _)| (p.spec.id, i))
            })
            .collect();
        for (to, link) in targets {
            let probe = self.next_probe;
            self.next_probe = self.next_probe.wrapping_add(1);
            if let Some(l) = self.peers.get_mut(&to).and_then(|p| p.links.get_mut(link)) {
                l.ping = Some((probe, now));
            }
            self.send_on(to, link, &Message::Ping { probe });
        }
    }

    /// A status snapshot for the operator commands.
    pub fn status(&self) -> Status {
        Status {
            local: self.params.local,
            boot: self.boot,
            votes: self
                .params
                .nodes
                .iter()
                .find(|n| n.id == self.params.local)
                .map(|n| n.votes)
                .unwrap_or(0),
            witness: self.params.nodes.iter().any(|n| n.id == self.params.local && n.witness),
            view: self.view.clone(),
            peers: self
                .peers
                .values()
                .map(|p| PeerStatus {
                    node: p.spec.id,
                    state: p.state,
                    links: p.links.iter().map(|l| l.up).collect(),
                    rtt_us: p.links.iter().map(|l| l.rtt.map(|d| d.as_micros() as u64)).collect(),
                    boot: p.boot,
                    votes: p.spec.votes,
                    witness: p.spec.witness,
                })
                .collect(),
            quorum: {
                let mut q = self.quorum.status();
                q.quorate = self.effective_quorate;
                q.flags.retain(|f| *f != "Quorate");
                if q.quorate {
                    q.flags.insert(0, "Quorate");
                }
                q
            },
            local_health: self.lhm,
            drops: self.drops,
            stats: self.stats,
            left: self.left,
            channel_delivered: self.chan.delivered(),
            channel_outbox: self.chan.outbox_len(),
            channel_blocked: self.chan.blocked(),
            vote: self.vote_status(self.last_now),
        }
    }

    /// The vote-lease part of the status at `now`.
    pub fn vote_status(&self, now: Instant) -> VoteStatus {
        let ms = |t: Instant| t.saturating_duration_since(now).as_millis().min(u64::MAX as u128) as u64;
        let own = !self.left && !self.vote_withheld() && now >= self.vote_free_at;
        VoteStatus {
            lease_quorate: self.quorate_at(now),
            lease_ms: self.quorum_lease(now).map(ms),
            held: self
                .peers
                .values()
                .filter_map(|p| p.lease_until.filter(|u| *u > now).map(|u| LeaseStatus { node: p.spec.id, ms_left: ms(u) }))
                .collect(),
            granted_view: self.view.as_ref().filter(|_| own).map(|v| v.id),
            quiet_ms: ms(self.vote_free_at),
            granted: self
                .peers
                .values()
                .filter_map(|p| p.granted_until.filter(|u| *u > now).map(|u| LeaseStatus { node: p.spec.id, ms_left: ms(u) }))
                .collect(),
            lease_span_ms: vote_lease(&self.params.timing).as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"engine unit test key material 32b";

    fn params(local: u32, n: u32) -> EngineParams {
        EngineParams {
            cluster_id: 9,
            local: NodeId(local),
            nodes: (1..=n).map(|i| NodeSpec { id: NodeId(i), votes: 1, links: 1, witness: false }).collect(),
            timing: Timing::default(),
            quorum: QuorumSettings::default(),
        }
    }

    fn engine(local: u32, n: u32, now: Instant) -> Engine {
        let mut e = Engine::new(params(local, n), Authenticator::from_key_material(KEY), 100, now).unwrap();
        while e.poll_transmit().is_some() {}
        e
    }

    /// A datagram as peer `from` would send it.
    fn from_peer(from: u32, seq: u64, msg: Message) -> Bytes {
        let h = Header { cluster_id: 9, sender: NodeId(from), boot: 50, seq };
        Authenticator::from_key_material(KEY).seal(&h, &msg).unwrap()
    }

    fn heartbeat(from: u32, seq: u64) -> Bytes {
        from_peer(
            from,
            seq,
            Message::Heartbeat { view: None, incarnation: 0, delivered: 0, blocked: false, urgent: false, round: seq, echo: 0 },
        )
    }

    fn sent(e: &mut Engine) -> Vec<(NodeId, Message)> {
        std::iter::from_fn(|| e.poll_transmit())
            .map(|t| {
                let (_, m) = crate::wire::parse(&t.payload[..t.payload.len() - crate::wire::MAC_LEN]).unwrap();
                (t.to, m)
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// A peer holding the key but sending nonsense (any message, any field values) never makes
        /// the engine panic, and never makes it hold a view without itself.
        #[test]
        fn authenticated_nonsense_never_panics(
            msgs in proptest::collection::vec(
                (2u32..=3, 0u64..30, crate::wire::tests::arb_message()),
                1..60,
            )
        ) {
            let t = Instant::now();
            let mut e = engine(1, 3, t);
            let mut now = t;
            for (i, (from, step_ms, msg)) in msgs.into_iter().enumerate() {
                now += Duration::from_millis(step_ms);
                e.handle_datagram(now, i % 2, &from_peer(from, i as u64 + 1, msg));
                if e.poll_timeout().is_some_and(|d| d <= now) {
                    e.handle_timeout(now);
                }
                let _ = e.broadcast(now, Bytes::from_static(b"x"));
                while e.poll_transmit().is_some() {}
                while e.poll_event().is_some() {}
                if let Some(v) = e.view() {
                    proptest::prop_assert!(v.members.iter().any(|m| m.node == NodeId(1)));
                }
            }
        }
    }

    #[test]
    fn params_are_checked() {
        let t = Instant::now();
        let a = || Authenticator::from_key_material(KEY);
        let mut p = params(4, 3);
        assert_eq!(Engine::new(p.clone(), a(), 1, t).unwrap_err(), ParamsError::LocalNotListed(NodeId(4)));
        p.local = NodeId(1);
        p.nodes.push(p.nodes[0].clone());
        assert_eq!(Engine::new(p, a(), 1, t).unwrap_err(), ParamsError::Duplicate(NodeId(1)));
        let mut p = params(1, 3);
        p.timing.suspect_timeout = p.timing.heartbeat_interval;
        assert!(matches!(Engine::new(p, a(), 1, t), Err(ParamsError::Timing(_))));
    }

    #[test]
    fn timing_reload_is_checked_and_applied() {
        let t = Instant::now();
        let mut e = engine(1, 3, t);
        let mut bad = Timing::default();
        bad.confirm_min = bad.confirm_max * 2;
        assert!(e.update_timing(bad).is_err());
        let slower = Timing { heartbeat_interval: Duration::from_millis(50), ..Timing::default() };
        assert!(e.update_timing(slower.clone()).is_err(), "suspect_timeout must exceed the heartbeat");
        let ok = Timing { suspect_timeout: Duration::from_millis(150), ..slower.clone() };
        assert!(e.update_timing(ok.clone()).is_err(), "partition_timeout must exceed suspect_timeout");
        let ok = Timing { partition_timeout: Duration::from_millis(600), ..ok };
        e.update_timing(ok).unwrap();
        e.handle_timeout(t);
        assert_eq!(e.poll_timeout(), Some(t + Duration::from_millis(50)));
    }

    #[test]
    fn a_suspect_refutes_with_a_larger_incarnation() {
        let t = Instant::now();
        let mut e = engine(1, 3, t);
        e.handle_datagram(t, 0, &from_peer(2, 1, Message::Suspect { target: NodeId(1), boot: 100, incarnation: 0 }));
        let out = sent(&mut e);
        assert!(out.contains(&(NodeId(2), Message::Alive { incarnation: 1 })));
        assert!(out.contains(&(NodeId(3), Message::Alive { incarnation: 1 })));
        let st = e.status();
        assert_eq!(st.stats.refutations, 1);
        assert_eq!(st.local_health, 1, "being suspected raises the local health multiplier");
        // A suspicion about an older life of this node is ignored.
        e.handle_datagram(t, 0, &from_peer(2, 2, Message::Suspect { target: NodeId(1), boot: 99, incarnation: 5 }));
        assert_eq!(e.status().stats.refutations, 1);
    }

    #[test]
    fn a_late_timer_stretches_instead_of_accusing() {
        let t = Instant::now();
        let mut e = engine(1, 3, t);
        e.handle_timeout(t);
        e.handle_datagram(t, 0, &heartbeat(2, 1));
        e.handle_datagram(t, 0, &heartbeat(3, 1));
        // The node stalls for 200 ms: far past every timeout, but it was the one asleep.
        let late = t + Duration::from_millis(200);
        e.handle_timeout(late);
        let st = e.status();
        assert_eq!(st.stats.late_timers, 1);
        assert_eq!(st.stats.suspicions, 0);
        assert_eq!(st.local_health, 1);
        // Its peers speak again at once: nothing happened.
        e.handle_datagram(late, 0, &heartbeat(2, 2));
        e.handle_datagram(late, 0, &heartbeat(3, 2));
        e.handle_timeout(late + Duration::from_millis(10));
        assert_eq!(e.status().stats.suspicions, 0);
    }

    #[test]
    fn silence_leads_to_probes_and_an_alive_vote_clears_it() {
        let t = Instant::now();
        let mut e = engine(1, 3, t);
        e.handle_timeout(t);
        e.handle_datagram(t, 0, &heartbeat(2, 1));
        e.handle_datagram(t, 0, &heartbeat(3, 1));
        let mut now = t;
        let mut seq = 2;
        // Node 3 keeps talking; node 2 goes quiet.
        while e.status().stats.suspicions == 0 {
            now += Duration::from_millis(10);
            e.handle_datagram(now, 0, &heartbeat(3, seq));
            seq += 1;
            e.handle_timeout(now);
            assert!(now - t < Duration::from_millis(60), "no suspicion after {:?}", now - t);
        }
        let out = sent(&mut e);
        let probe = out
            .iter()
            .find_map(|(to, m)| match m {
                Message::PingReq { target, probe } if *to == NodeId(3) && *target == NodeId(2) => Some(*probe),
                _ => None,
            })
            .expect("indirect probe sent to the other member");
        assert!(out.iter().any(|(to, m)| *to == NodeId(2) && matches!(m, Message::Suspect { .. })), "suspect told");
        // Node 3 still hears node 2: my path to it is the problem, not node 2.
        let vote = Message::ProbeVote { target: NodeId(2), probe, alive: true, heard_ago_ms: 1 };
        e.handle_datagram(now, 0, &from_peer(3, seq, vote));
        let st = e.status();
        assert_eq!(st.stats.suspicions_cleared, 1);
        assert_eq!(st.peers[0].state, PeerState::Alive);
        assert_eq!(st.stats.failures_declared, 0);
    }

    #[test]
    fn confirmed_silence_is_declared_failed() {
        let t = Instant::now();
        let mut e = engine(1, 3, t);
        e.handle_datagram(t, 0, &heartbeat(2, 1));
        e.handle_datagram(t, 0, &heartbeat(3, 1));
        let mut now = t;
        let mut seq = 2;
        let mut confirmed = false;
        while e.status().stats.failures_declared == 0 {
            now = e.poll_timeout().unwrap().max(now);
            e.handle_datagram(now, 0, &heartbeat(3, seq));
            seq += 1;
            e.handle_timeout(now);
            if !confirmed && e.status().stats.suspicions == 1 {
                confirmed = true;
                let c = Message::Suspect { target: NodeId(2), boot: 50, incarnation: 0 };
                e.handle_datagram(now, 0, &from_peer(3, seq, c));
                seq += 1;
            }
            assert!(now - t < Duration::from_millis(200));
        }
        // 30 ms of silence (+ up to one heartbeat) then the confirmed suspicion timeout of 10 ms.
        assert!(now - t <= Duration::from_millis(55), "declared after {:?}", now - t);
        assert_eq!(e.status().peers[0].state, PeerState::Failed);
    }
}
