//! Transition planning: from (current, target placement) to an ordered graph of actions.
//!
//! Like Pacemaker's transition graph, a [`Plan`] is a list of actions, each with the actions it must
//! wait for. A driver runs an action on its node once every action it waits for has been confirmed
//! (over the cluster channel when the other action ran on another node). Actions are data.
//!
//! Ordering rules:
//! - A start of R waits for every stop of R (recover in place = stop then start; a move = stop on
//!   the old node, then start on the new one). So the old VIP holder removes the address before the
//!   new holder adds it whenever the old holder is alive and in the view. Actions are only planned
//!   for nodes in the view: a holder that is not in the view cannot be asked, and it releases on its
//!   own when it loses quorum or its address lease runs out ([`Plan::unreachable`] lists them).
//! - A start of R waits for stops of resources anti-colocated (negative colocation) with R.
//! - Order `first` → `then`: start(then) waits for start(first); stop(first) waits for stop(then).
//!   A mandatory order restarts `then` when `first` is stopped or restarted.
//! - AddVip is followed by SendGarp; every start is followed by a Monitor.
//! - Graceful stop: the leaving node goes to standby; its RemoveVip has no prerequisite and the new
//!   holder's AddVip waits only for it, so the handover costs one confirmation round trip.
//! - Maintenance (a frozen placement) plans nothing.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    ClusterPolicy, Constraint, CurrentPlacement, NoQuorumPolicy, NodeId, OrderKind, ResourceDef,
    ResourceId, ResourceKind, RunState, VipSpec, View,
};
use crate::placement::Placement;

/// One thing for one node to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    /// Add the VIP address (with its lease) on `node`.
    AddVip { node: NodeId, rsc: ResourceId, vip: VipSpec },
    /// Remove the VIP address on `node`.
    RemoveVip { node: NodeId, rsc: ResourceId, vip: VipSpec },
    /// Announce the VIP from `node` (gratuitous ARP / unsolicited NA burst).
    SendGarp { node: NodeId, rsc: ResourceId, vip: VipSpec },
    /// Start an agent resource on `node`.
    StartResource { node: NodeId, rsc: ResourceId },
    /// Stop an agent resource on `node`.
    StopResource { node: NodeId, rsc: ResourceId },
    /// Begin the recurring monitor of `rsc` on `node`.
    Monitor { node: NodeId, rsc: ResourceId },
}

impl Action {
    /// The node that executes this action.
    pub fn node(&self) -> NodeId {
        match self {
            Action::AddVip { node, .. }
            | Action::RemoveVip { node, .. }
            | Action::SendGarp { node, .. }
            | Action::StartResource { node, .. }
            | Action::StopResource { node, .. }
            | Action::Monitor { node, .. } => *node,
        }
    }

    /// The resource this action is about.
    pub fn rsc(&self) -> &ResourceId {
        match self {
            Action::AddVip { rsc, .. }
            | Action::RemoveVip { rsc, .. }
            | Action::SendGarp { rsc, .. }
            | Action::StartResource { rsc, .. }
            | Action::StopResource { rsc, .. }
            | Action::Monitor { rsc, .. } => rsc,
        }
    }

    /// True for RemoveVip / StopResource.
    pub fn is_stop(&self) -> bool {
        matches!(self, Action::RemoveVip { .. } | Action::StopResource { .. })
    }

    /// True for AddVip / StartResource.
    pub fn is_start(&self) -> bool {
        matches!(self, Action::AddVip { .. } | Action::StartResource { .. })
    }
}

/// An action and the plan indices it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What to do.
    pub action: Action,
    /// Indices (into [`Plan::steps`]) that must complete first; always smaller than this index.
    pub after: Vec<usize>,
}

/// An ordered action graph for one placement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// View the plan belongs to; a driver drops a plan when a newer view is installed.
    pub epoch: u64,
    /// Actions in a topological order.
    pub steps: Vec<Step>,
    /// (resource, node) active on a node outside the view: not stoppable from here.
    pub unreachable: Vec<(ResourceId, NodeId)>,
}

impl Plan {
    /// Actions grouped in waves: every action of wave k depends only on earlier waves.
    pub fn waves(&self) -> Vec<Vec<&Action>> {
        let mut level = vec![0usize; self.steps.len()];
        for (i, s) in self.steps.iter().enumerate() {
            level[i] = s.after.iter().map(|j| level[*j] + 1).max().unwrap_or(0);
        }
        let depth = level.iter().max().map_or(0, |m| m + 1);
        let mut waves = vec![Vec::new(); depth];
        for (i, s) in self.steps.iter().enumerate() {
            waves[level[i]].push(&s.action);
        }
        waves
    }

    /// The actions of one node, in order.
    pub fn for_node(&self, node: NodeId) -> impl Iterator<Item = (usize, &Step)> {
        self.steps.iter().enumerate().filter(move |(_, s)| s.action.node() == node)
    }
}

fn stop_action(def: Option<&ResourceDef>, rsc: &ResourceId, node: NodeId) -> Action {
    match def.map(|d| &d.kind) {
        Some(ResourceKind::Vip(v)) => Action::RemoveVip { node, rsc: rsc.clone(), vip: v.clone() },
        _ => Action::StopResource { node, rsc: rsc.clone() },
    }
}

fn start_action(def: &ResourceDef, node: NodeId) -> Action {
    match &def.kind {
        ResourceKind::Vip(v) => Action::AddVip { node, rsc: def.id.clone(), vip: v.clone() },
        ResourceKind::Agent => Action::StartResource { node, rsc: def.id.clone() },
    }
}

/// Plans the actions that take the cluster from `current` to `placement`.
pub fn plan(
    view: &View,
    placement: &Placement,
    resources: &[ResourceDef],
    constraints: &[Constraint],
    current: &CurrentPlacement,
) -> Plan {
    let mut out = Plan { epoch: view.epoch, ..Plan::default() };
    if placement.frozen {
        return out;
    }
    let alive = view.member_set();
    let defs: BTreeMap<&ResourceId, &ResourceDef> = resources.iter().map(|d| (&d.id, d)).collect();
    let mut cons: Vec<&Constraint> = constraints.iter().collect();
    cons.sort();

    // Which instances stop, and which resources start where.
    let mut stops: BTreeSet<(ResourceId, NodeId)> = BTreeSet::new();
    let mut starts: BTreeMap<ResourceId, NodeId> = BTreeMap::new();
    for (rsc, node, state) in current.iter() {
        let target = placement.target(rsc);
        if target != Some(node) || state == RunState::Failed {
            if alive.contains(&node) {
                stops.insert((rsc.clone(), node));
            } else {
                out.unreachable.push((rsc.clone(), node));
            }
        }
    }
    for (rsc, node) in placement.targets() {
        if defs.contains_key(rsc) && current.state(rsc, node) != Some(RunState::Running) {
            starts.insert(rsc.clone(), node);
        }
    }
    // A mandatory order restarts `then` when `first` stops anywhere (fixpoint: chains cascade).
    loop {
        let mut grew = false;
        for c in &cons {
            if let Constraint::Order { first, then, kind: OrderKind::Mandatory } = c {
                if first == then || !stops.iter().any(|(r, _)| r == first) {
                    continue;
                }
                for (n, s) in current.nodes(then) {
                    if s == RunState::Running && alive.contains(&n) && stops.insert((then.clone(), n)) {
                        grew = true;
                        if placement.target(then) == Some(n) && defs.contains_key(then) {
                            starts.insert(then.clone(), n);
                        }
                    }
                }
            }
        }
        if !grew {
            break;
        }
    }

    // Dependencies between resources.
    let mut anti: BTreeMap<&ResourceId, BTreeSet<&ResourceId>> = BTreeMap::new();
    let mut order_after: BTreeMap<&ResourceId, BTreeSet<&ResourceId>> = BTreeMap::new();
    for c in &cons {
        match c {
            Constraint::Colocation { rsc, with, score } if score.value() < 0 && rsc != with => {
                anti.entry(rsc).or_default().insert(with);
                anti.entry(with).or_default().insert(rsc);
            }
            Constraint::Order { first, then, .. } if first != then => {
                order_after.entry(then).or_default().insert(first);
            }
            _ => {}
        }
    }

    // Stops: emitted in an order where `then` precedes `first` (reverse order constraints).
    // Dependencies are recorded by index; cycles in order constraints are broken by only ever
    // pointing backwards (an edge to a not-yet-emitted action is dropped).
    let mut stop_idx: BTreeMap<ResourceId, Vec<usize>> = BTreeMap::new();
    let stop_list: Vec<(ResourceId, NodeId)> = stop_sequence(&stops, &order_after);
    for (rsc, node) in stop_list {
        // stop(first) waits for stop(then) for every `then` ordered after this resource.
        let mut after = Vec::new();
        for (then, firsts) in &order_after {
            if firsts.contains(&rsc)
                && let Some(ix) = stop_idx.get(*then)
            {
                after.extend(ix);
            }
        }
        after.sort_unstable();
        after.dedup();
        let i = out.steps.len();
        out.steps.push(Step { action: stop_action(defs.get(&rsc).copied(), &rsc, node), after });
        stop_idx.entry(rsc).or_default().push(i);
    }

    // Starts, in order-constraint order.
    let mut start_idx: BTreeMap<ResourceId, usize> = BTreeMap::new();
    for rsc in start_sequence(&starts, &order_after) {
        let node = starts[&rsc];
        let Some(def) = defs.get(&rsc) else { continue };
        let mut after: Vec<usize> = stop_idx.get(&rsc).cloned().unwrap_or_default();
        if let Some(others) = anti.get(&rsc) {
            for o in others {
                if let Some(ix) = stop_idx.get(*o) {
                    after.extend(ix);
                }
            }
        }
        if let Some(firsts) = order_after.get(&rsc) {
            for f in firsts {
                if let Some(ix) = start_idx.get(*f) {
                    after.push(*ix);
                }
            }
        }
        after.sort_unstable();
        after.dedup();
        let i = out.steps.len();
        out.steps.push(Step { action: start_action(def, node), after });
        start_idx.insert(rsc.clone(), i);
        if let ResourceKind::Vip(v) = &def.kind {
            out.steps.push(Step {
                action: Action::SendGarp { node, rsc: rsc.clone(), vip: v.clone() },
                after: vec![i],
            });
        }
        out.steps.push(Step { action: Action::Monitor { node, rsc: rsc.clone() }, after: vec![i] });
    }
    out
}

/// Stops sorted so that for an order `first` → `then`, `then` comes first; ties by (id, node).
fn stop_sequence(
    stops: &BTreeSet<(ResourceId, NodeId)>,
    order_after: &BTreeMap<&ResourceId, BTreeSet<&ResourceId>>,
) -> Vec<(ResourceId, NodeId)> {
    let rscs: BTreeSet<ResourceId> = stops.iter().map(|(r, _)| r.clone()).collect();
    // Reverse edges: first must wait for then => then before first.
    let mut must_precede: BTreeMap<&ResourceId, BTreeSet<&ResourceId>> = BTreeMap::new();
    for (then, firsts) in order_after {
        for f in firsts {
            must_precede.entry(*f).or_default().insert(*then);
        }
    }
    let seq = topo(&rscs, |r| must_precede.get(r).map(|s| s.iter().map(|x| (*x).clone()).collect()));
    seq.into_iter()
        .flat_map(|r| stops.iter().filter(move |(x, _)| *x == r).cloned().collect::<Vec<_>>())
        .collect()
}

/// Resources to start, `first` before `then`; ties by id.
fn start_sequence(
    starts: &BTreeMap<ResourceId, NodeId>,
    order_after: &BTreeMap<&ResourceId, BTreeSet<&ResourceId>>,
) -> Vec<ResourceId> {
    let rscs: BTreeSet<ResourceId> = starts.keys().cloned().collect();
    topo(&rscs, |r| order_after.get(r).map(|s| s.iter().map(|x| (*x).clone()).collect()))
}

/// Topological order of `items` where `preds(x)` must come before x (only preds inside `items`
/// count); ready items taken in id order; a cycle is broken at its smallest id.
fn topo(
    items: &BTreeSet<ResourceId>,
    preds: impl Fn(&ResourceId) -> Option<BTreeSet<ResourceId>>,
) -> Vec<ResourceId> {
    let mut remaining: Vec<ResourceId> = items.iter().cloned().collect();
    let mut done: BTreeSet<ResourceId> = BTreeSet::new();
    let mut out = Vec::with_capacity(remaining.len());
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|r| {
            preds(r).is_none_or(|p| p.iter().all(|x| done.contains(x) || !items.contains(x)))
        });
        let r = remaining.remove(ready.unwrap_or(0));
        done.insert(r.clone());
        out.push(r);
    }
    out
}

/// Whether a view leaves its node without any peer in a way quorum must not paper over. In a
/// two-node cluster the survivor's quorum comes from votequorum's two_node/wait_for_all and a
/// tie-breaker, which the membership layer folds into `quorate`, so only clusters of three or
/// more count a lone member as isolated whatever the view says.
pub fn alone(cluster_size: usize, view: &View) -> bool {
    cluster_size > 2 && view.member_set().len() <= 1
}

/// What `local` must do at once, without waiting for any plan, when its view says it has lost
/// quorum or sees no peer in a cluster of `cluster_size` nodes: remove every VIP it holds (unless
/// no-quorum-policy=ignore). The VIP is never kept by a node that cannot prove it is alone in
/// holding it.
pub fn release_on_isolation(
    local: NodeId,
    view: &View,
    cluster_size: usize,
    policy: &ClusterPolicy,
    resources: &[ResourceDef],
    current: &CurrentPlacement,
) -> Vec<Action> {
    let alone = alone(cluster_size, view);
    if policy.no_quorum_policy == NoQuorumPolicy::Ignore || (view.quorate && !alone) {
        return Vec::new();
    }
    let mut defs: Vec<&ResourceDef> = resources.iter().collect();
    defs.sort_by(|a, b| a.id.cmp(&b.id));
    defs.iter()
        .filter_map(|d| match &d.kind {
            ResourceKind::Vip(v) if current.state(&d.id, local).is_some() => {
                Some(Action::RemoveVip { node: local, rsc: d.id.clone(), vip: v.clone() })
            }
            _ => None,
        })
        .collect()
}

/// Announcements `local` sends again for the VIPs it holds, when a view grows (a partition healed
/// or a node joined): the other side may still have a stale neighbour entry for the address.
pub fn reannounce(local: NodeId, resources: &[ResourceDef], current: &CurrentPlacement) -> Vec<Action> {
    let mut defs: Vec<&ResourceDef> = resources.iter().collect();
    defs.sort_by(|a, b| a.id.cmp(&b.id));
    defs.iter()
        .filter_map(|d| match &d.kind {
            ResourceKind::Vip(v) if current.state(&d.id, local) == Some(RunState::Running) => {
                Some(Action::SendGarp { node: local, rsc: d.id.clone(), vip: v.clone() })
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;
