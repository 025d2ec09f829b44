//! Resource placement with Pacemaker's semantics, as a pure deterministic function.
//!
//! `place(view, policy, resources, constraints, fail_counts, current, now)` returns where each
//! resource should run. Every node runs it on the same agreed inputs and gets the same answer:
//! inputs are normalised (members, resources and constraints sorted), scores are summed
//! order-independently ([`ScoreSum`]) and ties go to the lowest node id.
//!
//! Rules, in the order they apply:
//! 1. Maintenance mode: the result is the current placement, marked `frozen` (no action at all).
//! 2. No quorum: `stop` places nothing; `freeze` keeps running instances where they are and starts
//!    nothing (except `release_without_quorum` resources, which stop); `ignore` goes on as normal.
//! 3. A resource with target-role Stopped, or with on-fail=stop and an unexpired failure, stops.
//! 4. Candidate nodes are the view's members that are not in standby, each starting at score 0
//!    (a symmetric cluster). Location/ban/move constraints add their scores; the node where the
//!    resource runs now (also when it failed there) adds resource-stickiness; a node whose unexpired fail count
//!    reaches migration-threshold (or any unexpired failure with on-fail=move) gets -INFINITY.
//! 5. Colocation: dependents are placed after the resource they are colocated with (in colocation
//!    topological order, then priority, then id). `rsc with W score s` adds `s` to W's node; with
//!    +INFINITY all other nodes get -INFINITY; +INFINITY with a stopped W stops `rsc`. In a
//!    colocation cycle the edge into a not-yet-placed resource is ignored.
//! 6. The node with the highest score wins, ties to the lowest id; a best score below 0 means the
//!    resource cannot run anywhere.
//! 7. Mandatory order: if `first` is not placed, `then` is stopped too (iterated to a fixpoint; the
//!    blocked set only grows, so this ends after at most one round per resource).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    ClusterPolicy, Constraint, CurrentPlacement, FailCounts, NoQuorumPolicy, OnFail, OrderKind,
    ResourceDef, ResourceId, RunState, Timestamp, View,
};
use crate::score::{Score, ScoreSum};
use crate::model::NodeId;

/// Why a resource is not placed anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// target-role is Stopped.
    Disabled,
    /// The partition has no quorum.
    NoQuorum,
    /// on-fail=stop after a failure.
    FailedOnFailStop,
    /// Every candidate node scored below zero (or no node is available).
    NoAllowedNode,
    /// Mandatory colocation with a resource that is stopped.
    ColocatedWithStopped(ResourceId),
    /// Mandatory order after a resource that is stopped.
    OrderedAfterStopped(ResourceId),
}

/// The decision for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Node to run on, `None` = stopped.
    pub node: Option<NodeId>,
    /// Why it is stopped, when it is.
    pub reason: Option<StopReason>,
    /// Final scores per candidate node (for `hastack status` and debugging).
    pub scores: BTreeMap<NodeId, Score>,
}

/// The result of placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// View this placement was computed for.
    pub epoch: u64,
    /// Maintenance mode: nothing may be started or stopped, whatever `targets` says.
    pub frozen: bool,
    /// Decision per resource, by id.
    pub decisions: BTreeMap<ResourceId, Decision>,
}

impl Placement {
    /// Target node of `rsc` (`None` = stopped or unknown resource).
    pub fn target(&self, rsc: &ResourceId) -> Option<NodeId> {
        self.decisions.get(rsc).and_then(|d| d.node)
    }

    /// (resource, target) for every placed resource.
    pub fn targets(&self) -> impl Iterator<Item = (&ResourceId, NodeId)> {
        self.decisions.iter().filter_map(|(r, d)| d.node.map(|n| (r, n)))
    }
}

fn stopped(reason: StopReason) -> Decision {
    Decision { node: None, reason: Some(reason), scores: BTreeMap::new() }
}

/// Computes where every resource should run. Pure and deterministic; see the module doc.
pub fn place(
    view: &View,
    policy: &ClusterPolicy,
    resources: &[ResourceDef],
    constraints: &[Constraint],
    fail_counts: &FailCounts,
    current: &CurrentPlacement,
    now: Timestamp,
) -> Placement {
    // Normalise: resources by id (first definition of a duplicated id wins after sorting by the
    // whole definition, so input order cannot matter), constraints sorted.
    let mut defs: Vec<&ResourceDef> = resources.iter().collect();
    defs.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| format!("{a:?}").cmp(&format!("{b:?}"))));
    defs.dedup_by(|a, b| a.id == b.id);
    let mut cons: Vec<&Constraint> = constraints.iter().collect();
    cons.sort();
    let members = view.member_set();

    if policy.maintenance {
        return maintenance(view, &defs, current);
    }

    let mut decisions: BTreeMap<ResourceId, Decision> = BTreeMap::new();
    let quorum_effective = view.quorate || policy.no_quorum_policy == NoQuorumPolicy::Ignore;
    if !quorum_effective {
        for d in &defs {
            let keep = match policy.no_quorum_policy {
                NoQuorumPolicy::Freeze if !d.release_without_quorum => current
                    .nodes(&d.id)
                    .find(|(n, s)| *s == RunState::Running && members.contains(n))
                    .map(|(n, _)| n),
                _ => None,
            };
            let dec = match keep {
                Some(n) => Decision { node: Some(n), reason: None, scores: BTreeMap::new() },
                None => stopped(StopReason::NoQuorum),
            };
            decisions.insert(d.id.clone(), dec);
        }
        return Placement { epoch: view.epoch, frozen: false, decisions };
    }

    let candidates: BTreeSet<NodeId> =
        members.iter().copied().filter(|n| !policy.standby.contains(n)).collect();
    let order = allocation_order(&defs, &cons);
    let by_id: BTreeMap<&ResourceId, &ResourceDef> = defs.iter().map(|d| (&d.id, *d)).collect();

    let mut blocked: BTreeMap<ResourceId, StopReason> = BTreeMap::new();
    loop {
        decisions = allocate(
            &order, &by_id, &cons, &candidates, policy, fail_counts, current, now, &blocked,
        );
        let mut grew = false;
        for c in &cons {
            if let Constraint::Order { first, then, kind: OrderKind::Mandatory } = c {
                let first_placed = decisions.get(first).is_some_and(|d| d.node.is_some());
                // An order naming an unknown resource constrains nothing.
                if by_id.contains_key(first)
                    && !first_placed
                    && decisions.get(then).is_some_and(|d| d.node.is_some())
                    && !blocked.contains_key(then)
                {
                    blocked.insert(then.clone(), StopReason::OrderedAfterStopped(first.clone()));
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    Placement { epoch: view.epoch, frozen: false, decisions }
}

fn maintenance(view: &View, defs: &[&ResourceDef], current: &CurrentPlacement) -> Placement {
    let decisions = defs
        .iter()
        .map(|d| {
            let node = current.nodes(&d.id).map(|(n, _)| n).next();
            (d.id.clone(), Decision { node, reason: None, scores: BTreeMap::new() })
        })
        .collect();
    Placement { epoch: view.epoch, frozen: true, decisions }
}

/// Colocation-topological order (a resource after the resources it is colocated with), ready
/// resources taken by priority (high first) then id; cycle members appended in the same order.
fn allocation_order<'a>(defs: &[&'a ResourceDef], cons: &[&Constraint]) -> Vec<&'a ResourceDef> {
    let ids: BTreeSet<&ResourceId> = defs.iter().map(|d| &d.id).collect();
    let mut deps: BTreeMap<&ResourceId, BTreeSet<&ResourceId>> = BTreeMap::new();
    for c in cons {
        if let Constraint::Colocation { rsc, with, .. } = c
            && ids.contains(rsc)
            && ids.contains(with)
            && rsc != with
        {
            deps.entry(rsc).or_default().insert(with);
        }
    }
    let key = |d: &&ResourceDef| (std::cmp::Reverse(d.priority), d.id.clone());
    let mut remaining: Vec<&'a ResourceDef> = defs.to_vec();
    remaining.sort_by_key(key);
    let mut placed: BTreeSet<&ResourceId> = BTreeSet::new();
    let mut out = Vec::with_capacity(defs.len());
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|d| {
            deps.get(&d.id).is_none_or(|w| w.iter().all(|x| placed.contains(x)))
        });
        // A cycle: take the first remaining one in priority/id order.
        let i = ready.unwrap_or(0);
        let d = remaining.remove(i);
        placed.insert(&d.id);
        out.push(d);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn allocate(
    order: &[&ResourceDef],
    by_id: &BTreeMap<&ResourceId, &ResourceDef>,
    cons: &[&Constraint],
    candidates: &BTreeSet<NodeId>,
    policy: &ClusterPolicy,
    fail_counts: &FailCounts,
    current: &CurrentPlacement,
    now: Timestamp,
    blocked: &BTreeMap<ResourceId, StopReason>,
) -> BTreeMap<ResourceId, Decision> {
    let mut out: BTreeMap<ResourceId, Decision> = BTreeMap::new();
    for d in order {
        let dec = decide(d, by_id, cons, candidates, policy, fail_counts, current, now, blocked, &out);
        out.insert(d.id.clone(), dec);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn decide(
    d: &ResourceDef,
    by_id: &BTreeMap<&ResourceId, &ResourceDef>,
    cons: &[&Constraint],
    candidates: &BTreeSet<NodeId>,
    policy: &ClusterPolicy,
    fail_counts: &FailCounts,
    current: &CurrentPlacement,
    now: Timestamp,
    blocked: &BTreeMap<ResourceId, StopReason>,
    placed: &BTreeMap<ResourceId, Decision>,
) -> Decision {
    if let Some(r) = blocked.get(&d.id) {
        return stopped(r.clone());
    }
    if !d.enabled {
        return stopped(StopReason::Disabled);
    }
    // Failures on any node that ever reported them (members or not).
    let failed_somewhere = || {
        fail_counts
            .iter()
            .any(|(r, n, _)| r == &d.id && fail_counts.effective(r, n, d.failure_timeout, now) > 0)
    };
    if d.on_fail == OnFail::Stop && failed_somewhere() {
        return stopped(StopReason::FailedOnFailStop);
    }

    let mut sums: BTreeMap<NodeId, ScoreSum> =
        candidates.iter().map(|n| (*n, ScoreSum::default())).collect();
    let add = |node: NodeId, s: Score, sums: &mut BTreeMap<NodeId, ScoreSum>| {
        if let Some(x) = sums.get_mut(&node) {
            x.add(s);
        }
    };

    for c in cons {
        match c {
            Constraint::Location { rsc, node, score } if rsc == &d.id => add(*node, *score, &mut sums),
            Constraint::Ban { rsc, node } if rsc == &d.id => {
                add(*node, Score::MINUS_INFINITY, &mut sums)
            }
            Constraint::Move { rsc, node } if rsc == &d.id => add(*node, Score::INFINITY, &mut sums),
            Constraint::Colocation { rsc, with, score } if rsc == &d.id && with != rsc => {
                if !by_id.contains_key(with) {
                    continue;
                }
                match placed.get(with) {
                    // `with` not placed yet: a colocation cycle; ignored (see module doc).
                    None => {}
                    Some(Decision { node: Some(m), .. }) => {
                        add(*m, *score, &mut sums);
                        if score.is_plus_infinity() {
                            for n in candidates.iter().filter(|n| *n != m) {
                                add(*n, Score::MINUS_INFINITY, &mut sums);
                            }
                        }
                    }
                    Some(Decision { node: None, .. }) if score.is_plus_infinity() => {
                        return stopped(StopReason::ColocatedWithStopped(with.clone()));
                    }
                    Some(Decision { node: None, .. }) => {}
                }
            }
            _ => {}
        }
    }

    // A failed instance keeps its stickiness, as in Pacemaker: on-fail=restart recovers it in
    // place while its node is still allowed (fail count below migration-threshold).
    let stickiness = d.stickiness.unwrap_or(policy.default_stickiness);
    for (n, _) in current.nodes(&d.id) {
        add(n, stickiness, &mut sums);
    }

    if d.on_fail != OnFail::Ignore {
        for n in candidates {
            let fails = fail_counts.effective(&d.id, *n, d.failure_timeout, now);
            let banned = match d.on_fail {
                OnFail::Move => fails > 0,
                _ => d.migration_threshold.is_some_and(|t| t > 0 && fails >= t),
            };
            if banned {
                add(*n, Score::MINUS_INFINITY, &mut sums);
            }
        }
    }

    let scores: BTreeMap<NodeId, Score> = sums.iter().map(|(n, s)| (*n, s.total())).collect();
    // Highest score, ties to the lowest id: iterate ascending and replace only on strictly greater.
    let mut best: Option<(NodeId, Score)> = None;
    for (n, s) in &scores {
        if best.is_none_or(|(_, b)| *s > b) {
            best = Some((*n, *s));
        }
    }
    match best {
        Some((n, s)) if s >= Score::ZERO => Decision { node: Some(n), reason: None, scores },
        _ => Decision { node: None, reason: Some(StopReason::NoAllowedNode), scores },
    }
}

#[cfg(test)]
mod tests;
