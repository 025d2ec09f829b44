//! Plain input types of the resource engine: nodes, views, resources, constraints, time.
//!
//! These are the engine's own types; the daemon maps ha-membership's agreed view and the config
//! section onto them, so the placement core depends on neither.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::score::Score;

/// A cluster node's id (the same id ha-membership uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}

/// A resource's name, unique in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ResourceId(pub String);

impl ResourceId {
    /// A resource id from a name.
    pub fn new(s: impl Into<String>) -> Self {
        ResourceId(s.into())
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Cluster time in milliseconds since an epoch all nodes agree on (failure records are replicated
/// with these stamps, so expiry is decided identically everywhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This time plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// An agreed membership view, as ha-membership installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// View number (ring id); grows with every installed view.
    pub epoch: u64,
    /// Members of the view (any order; duplicates ignored).
    pub members: Vec<NodeId>,
    /// Whether this view holds quorum.
    pub quorate: bool,
}

impl View {
    /// Members sorted and deduplicated.
    pub fn member_set(&self) -> BTreeSet<NodeId> {
        self.members.iter().copied().collect()
    }
}

/// What the cluster does without quorum (Pacemaker's `no-quorum-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoQuorumPolicy {
    /// Stop every resource in the partition (default).
    #[default]
    Stop,
    /// Keep running resources where they run, start nothing (resources marked
    /// `release_without_quorum`, such as VIPs, are still stopped).
    Freeze,
    /// Behave as if quorate (unsafe; for tests and single-node setups).
    Ignore,
}

/// Cluster-wide settings that placement reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterPolicy {
    /// no-quorum-policy.
    pub no_quorum_policy: NoQuorumPolicy,
    /// Maintenance mode: nothing is started or stopped.
    pub maintenance: bool,
    /// Nodes in standby: they run nothing.
    pub standby: BTreeSet<NodeId>,
    /// Default resource-stickiness (rsc_defaults), used when a resource has none.
    pub default_stickiness: Score,
}

/// What to do when an operation of a resource fails (Pacemaker's `on-fail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFail {
    /// Restart in place; failures count toward migration-threshold (default).
    #[default]
    Restart,
    /// Move away at once: any unexpired failure bans the resource from that node.
    Move,
    /// Pretend the failure did not happen.
    Ignore,
    /// Stop the resource everywhere until its failures are cleared or expire.
    Stop,
}

/// A virtual IP address on a named interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VipSpec {
    /// The address.
    pub address: IpAddr,
    /// Prefix length of the address on the interface.
    pub prefix_len: u8,
    /// Interface name (the same on every node).
    pub interface: String,
}

/// How a resource is run; placement does not care, transitions do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// A VIP: AddVip/RemoveVip + gratuitous ARP / unsolicited NA.
    Vip(VipSpec),
    /// Any other agent (exec, systemd, balancer, dhcp-dns): StartResource/StopResource.
    Agent,
}

/// How a resource is monitored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Monitoring {
    /// With the engine's default interval and timeout.
    #[default]
    Default,
    /// With its own interval and timeout.
    Every {
        /// Time between two monitors.
        interval: Duration,
        /// A monitor taking longer is a failure.
        timeout: Duration,
    },
    /// Not monitored (only start/stop failures count).
    Off,
}

/// A resource as placement and transitions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// Name.
    pub id: ResourceId,
    /// How it is run.
    pub kind: ResourceKind,
    /// target-role: false means Stopped.
    pub enabled: bool,
    /// Allocation priority: higher-priority resources are placed first.
    pub priority: i32,
    /// resource-stickiness; `None` uses the cluster default.
    pub stickiness: Option<Score>,
    /// migration-threshold: a node with this many unexpired failures is banned; `None` = never
    /// (Pacemaker's default is INFINITY, which only fatal failures reach).
    pub migration_threshold: Option<u32>,
    /// failure-timeout: failures older than this are forgotten; `None` = never.
    pub failure_timeout: Option<Duration>,
    /// on-fail.
    pub on_fail: OnFail,
    /// Stopped when quorum is lost even under no-quorum-policy=freeze (true for VIPs: two holders
    /// of an address is the failure that must never happen).
    pub release_without_quorum: bool,
    /// Monitoring of the running instance.
    pub monitoring: Monitoring,
}

impl ResourceDef {
    /// A resource with Pacemaker's defaults.
    pub fn new(id: impl Into<String>, kind: ResourceKind) -> Self {
        let release = matches!(kind, ResourceKind::Vip(_));
        ResourceDef {
            id: ResourceId::new(id),
            kind,
            enabled: true,
            priority: 0,
            stickiness: None,
            migration_threshold: Some(FATAL_FAIL_COUNT),
            failure_timeout: None,
            on_fail: OnFail::Restart,
            release_without_quorum: release,
            monitoring: Monitoring::Default,
        }
    }
}

/// Whether an order constraint forces the second resource down with the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub enum OrderKind {
    /// `then` may run only while `first` runs (Pacemaker kind=Mandatory).
    #[default]
    Mandatory,
    /// Only sequences actions that happen in the same transition.
    Optional,
}

/// A constraint, from the config or from an operator command.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Constraint {
    /// Location preference: add `score` to `rsc` on `node`.
    Location { rsc: ResourceId, node: NodeId, score: Score },
    /// Place `rsc` relative to `with` (`with` is placed first); +INFINITY = same node,
    /// -INFINITY = never the same node.
    Colocation { rsc: ResourceId, with: ResourceId, score: Score },
    /// Start `first` before `then`; stop in reverse.
    Order { first: ResourceId, then: ResourceId, kind: OrderKind },
    /// Operator `resource ban`: -INFINITY on that node.
    Ban { rsc: ResourceId, node: NodeId },
    /// Operator `resource move`: +INFINITY on that node.
    Move { rsc: ResourceId, node: NodeId },
}

impl Constraint {
    /// True for constraints created by operator commands (removed by `clear`).
    pub fn is_operator(&self) -> bool {
        matches!(self, Constraint::Ban { .. } | Constraint::Move { .. })
    }
}

/// Operator commands on constraints, with pcs/crm meaning.
pub mod operator {
    use super::{Constraint, NodeId, ResourceId};

    /// `resource move NAME NODE`: replaces earlier moves of the resource.
    pub fn move_to(cs: &mut Vec<Constraint>, rsc: &ResourceId, node: NodeId) {
        cs.retain(|c| !matches!(c, Constraint::Move { rsc: r, .. } if r == rsc));
        cs.retain(|c| !matches!(c, Constraint::Ban { rsc: r, node: n } if r == rsc && *n == node));
        cs.push(Constraint::Move { rsc: rsc.clone(), node });
    }

    /// `resource ban NAME NODE`.
    pub fn ban(cs: &mut Vec<Constraint>, rsc: &ResourceId, node: NodeId) {
        cs.retain(|c| !matches!(c, Constraint::Move { rsc: r, node: n } if r == rsc && *n == node));
        if !cs.iter().any(|c| matches!(c, Constraint::Ban { rsc: r, node: n } if r == rsc && *n == node)) {
            cs.push(Constraint::Ban { rsc: rsc.clone(), node });
        }
    }

    /// `resource clear NAME [NODE]`: drops operator bans/moves of the resource (on that node only,
    /// when given). Returns how many were removed.
    pub fn clear(cs: &mut Vec<Constraint>, rsc: &ResourceId, node: Option<NodeId>) -> usize {
        let before = cs.len();
        cs.retain(|c| match c {
            Constraint::Ban { rsc: r, node: n } | Constraint::Move { rsc: r, node: n } => {
                !(r == rsc && node.is_none_or(|want| want == *n))
            }
            _ => true,
        });
        before - cs.len()
    }
}

/// Fail count of a fatal failure (Pacemaker's INFINITY); reaches any migration-threshold.
pub const FATAL_FAIL_COUNT: u32 = 1_000_000;

/// One node's unexpired failure history for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailRecord {
    /// Failures counted.
    pub count: u32,
    /// Time of the last failure.
    pub last_failure: Timestamp,
}

/// Fail counts per (resource, node), replicated to all nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailCounts {
    records: BTreeMap<(ResourceId, NodeId), FailRecord>,
}

impl FailCounts {
    /// No failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one failure of `rsc` on `node` at `now`.
    pub fn record_failure(&mut self, rsc: &ResourceId, node: NodeId, now: Timestamp) {
        let e = self
            .records
            .entry((rsc.clone(), node))
            .or_insert(FailRecord { count: 0, last_failure: now });
        e.count = e.count.saturating_add(1);
        e.last_failure = e.last_failure.max(now);
    }

    /// Counts a failure that bans the node at once (Pacemaker's start-failure-is-fatal: the fail
    /// count becomes INFINITY).
    pub fn record_fatal(&mut self, rsc: &ResourceId, node: NodeId, now: Timestamp) {
        let e = self
            .records
            .entry((rsc.clone(), node))
            .or_insert(FailRecord { count: 0, last_failure: now });
        e.count = e.count.max(FATAL_FAIL_COUNT);
        e.last_failure = e.last_failure.max(now);
    }

    /// Sets a record as replicated from its node.
    pub fn insert(&mut self, rsc: &ResourceId, node: NodeId, rec: FailRecord) {
        self.records.insert((rsc.clone(), node), rec);
    }

    /// `resource cleanup`: forgets failures of `rsc` (on `node` only, when given).
    pub fn clear(&mut self, rsc: &ResourceId, node: Option<NodeId>) {
        self.records
            .retain(|(r, n), _| !(r == rsc && node.is_none_or(|want| want == *n)));
    }

    /// Raw record (expired or not).
    pub fn record(&self, rsc: &ResourceId, node: NodeId) -> Option<FailRecord> {
        self.records.get(&(rsc.clone(), node)).copied()
    }

    /// Failures that still count at `now` under `failure_timeout` (Pacemaker expires the whole
    /// count once the last failure is older than the timeout).
    pub fn effective(
        &self,
        rsc: &ResourceId,
        node: NodeId,
        failure_timeout: Option<std::time::Duration>,
        now: Timestamp,
    ) -> u32 {
        match self.records.get(&(rsc.clone(), node)) {
            None => 0,
            Some(r) => match failure_timeout {
                Some(t) if r.last_failure.plus(t) <= now => 0,
                _ => r.count,
            },
        }
    }

    /// Forgets every record whose failures no longer count at `now` (its resource's failure
    /// timeout, from `timeout_of`, has passed since the last failure), as Pacemaker clears an
    /// expired fail-count. Returns whether anything was forgotten.
    pub fn expire(&mut self, timeout_of: impl Fn(&ResourceId) -> Option<std::time::Duration>, now: Timestamp) -> bool {
        let before = self.records.len();
        self.records.retain(|(r, _), f| match timeout_of(r) {
            Some(t) if !t.is_zero() => f.last_failure.plus(t) > now,
            _ => true,
        });
        self.records.len() != before
    }

    /// All records, for status output.
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceId, NodeId, FailRecord)> {
        self.records.iter().map(|((r, n), f)| (r, *n, *f))
    }
}

/// Where a resource instance is in its life on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum RunState {
    /// Started and its last monitor passed.
    Running,
    /// Its last operation failed; it must be stopped (recovered) before it runs again.
    Failed,
}

/// What runs where right now, as reported by the nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CurrentPlacement {
    states: BTreeMap<ResourceId, BTreeMap<NodeId, RunState>>,
}

impl CurrentPlacement {
    /// Nothing runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the state of `rsc` on `node`.
    pub fn set(&mut self, rsc: &ResourceId, node: NodeId, state: RunState) {
        self.states.entry(rsc.clone()).or_default().insert(node, state);
    }

    /// Records that `rsc` is stopped on `node`.
    pub fn remove(&mut self, rsc: &ResourceId, node: NodeId) {
        if let Some(m) = self.states.get_mut(rsc) {
            m.remove(&node);
            if m.is_empty() {
                self.states.remove(rsc);
            }
        }
    }

    /// Nodes where `rsc` is active (running or failed), in node order.
    pub fn nodes(&self, rsc: &ResourceId) -> impl Iterator<Item = (NodeId, RunState)> + '_ {
        self.states.get(rsc).into_iter().flat_map(|m| m.iter().map(|(n, s)| (*n, *s)))
    }

    /// State of `rsc` on `node`.
    pub fn state(&self, rsc: &ResourceId, node: NodeId) -> Option<RunState> {
        self.states.get(rsc).and_then(|m| m.get(&node)).copied()
    }

    /// Every (resource, node, state).
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceId, NodeId, RunState)> {
        self.states
            .iter()
            .flat_map(|(r, m)| m.iter().map(move |(n, s)| (r, *n, *s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_failure_records_are_forgotten_and_the_others_kept() {
        let mut f = FailCounts::new();
        let (svc, web) = (ResourceId::new("svc"), ResourceId::new("web"));
        f.record_failure(&svc, NodeId(1), Timestamp(1_000));
        f.record_failure(&web, NodeId(1), Timestamp(1_000));
        let timeout = |r: &ResourceId| (r.0 == "svc").then_some(Duration::from_secs(3));
        assert!(!f.expire(timeout, Timestamp(3_999)), "not yet");
        assert!(f.expire(timeout, Timestamp(4_000)));
        assert_eq!(f.record(&svc, NodeId(1)), None);
        assert_eq!(f.record(&web, NodeId(1)).map(|r| r.count), Some(1), "no timeout: kept");
    }
}
