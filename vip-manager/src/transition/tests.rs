use proptest::prelude::*;

use super::*;
use crate::model::{FailCounts, Timestamp};
use crate::placement::place;
use crate::score::Score;

fn n(i: u32) -> NodeId {
    NodeId(i)
}
fn r(s: &str) -> ResourceId {
    ResourceId::new(s)
}
fn view(members: &[u32]) -> View {
    View { epoch: 3, members: members.iter().map(|i| NodeId(*i)).collect(), quorate: true }
}
fn vip_def(id: &str, last: u8) -> ResourceDef {
    ResourceDef::new(
        id,
        ResourceKind::Vip(VipSpec {
            address: format!("198.18.0.{last}").parse().unwrap(),
            prefix_len: 24,
            interface: "eth0".into(),
        }),
    )
}
fn agent(id: &str) -> ResourceDef {
    ResourceDef::new(id, ResourceKind::Agent)
}
fn order(first: &str, then: &str) -> Constraint {
    Constraint::Order { first: r(first), then: r(then), kind: OrderKind::Mandatory }
}

fn plan_for(
    v: &View,
    policy: &ClusterPolicy,
    rs: &[ResourceDef],
    cs: &[Constraint],
    cur: &CurrentPlacement,
) -> Plan {
    let p = place(v, policy, rs, cs, &FailCounts::new(), cur, Timestamp(0));
    plan(v, &p, rs, cs, cur)
}

fn kinds(p: &Plan) -> Vec<String> {
    p.steps
        .iter()
        .map(|s| {
            let a = &s.action;
            let k = match a {
                Action::AddVip { .. } => "add",
                Action::RemoveVip { .. } => "remove",
                Action::SendGarp { .. } => "garp",
                Action::StartResource { .. } => "start",
                Action::StopResource { .. } => "stop",
                Action::Monitor { .. } => "monitor",
            };
            format!("{k} {} {} after {:?}", a.rsc(), a.node(), s.after)
        })
        .collect()
}

#[test]
fn vip_move_with_live_old_holder_releases_first() {
    let rs = vec![vip_def("vip", 10)];
    let cs = vec![Constraint::Move { rsc: r("vip"), node: n(2) }];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("vip"), n(1), RunState::Running);
    let p = plan_for(&view(&[1, 2, 3]), &ClusterPolicy::default(), &rs, &cs, &cur);
    assert_eq!(
        kinds(&p),
        vec![
            "remove vip node1 after []",
            "add vip node2 after [0]",
            "garp vip node2 after [1]",
            "monitor vip node2 after [1]",
        ]
    );
    assert!(p.unreachable.is_empty());
}

#[test]
fn vip_takeover_from_dead_holder_is_immediate() {
    let rs = vec![vip_def("vip", 10)];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("vip"), n(1), RunState::Running);
    let p = plan_for(&view(&[2, 3]), &ClusterPolicy::default(), &rs, &[], &cur);
    assert_eq!(kinds(&p)[0], "add vip node2 after []");
    assert_eq!(p.unreachable, vec![(r("vip"), n(1))]);
}

#[test]
fn graceful_stop_hands_over_in_one_round_trip() {
    let rs = vec![vip_def("vip", 10)];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("vip"), n(1), RunState::Running);
    let policy = ClusterPolicy { standby: [n(1)].into_iter().collect(), ..Default::default() };
    let p = plan_for(&view(&[1, 2]), &policy, &rs, &[], &cur);
    let waves = p.waves();
    assert_eq!(waves.len(), 3);
    assert!(matches!(waves[0][..], [Action::RemoveVip { node: NodeId(1), .. }]));
    assert!(matches!(waves[1][..], [Action::AddVip { node: NodeId(2), .. }]));
}

#[test]
fn order_constraints_start_forward_and_stop_in_reverse() {
    let rs = vec![agent("db"), agent("app"), agent("web")];
    let cs = vec![order("db", "app"), order("app", "web")];
    let p = plan_for(&view(&[1]), &ClusterPolicy::default(), &rs, &cs, &CurrentPlacement::new());
    let starts: Vec<_> = p.steps.iter().filter(|s| s.action.is_start()).map(|s| s.action.rsc().0.clone()).collect();
    assert_eq!(starts, vec!["db", "app", "web"]);
    let w = p.waves();
    assert!(w.len() >= 3, "three sequential starts: {:?}", kinds(&p));

    // Stopping all (quorum lost): web, then app, then db.
    let mut cur = CurrentPlacement::new();
    for x in ["db", "app", "web"] {
        cur.set(&r(x), n(1), RunState::Running);
    }
    let mut v = view(&[1]);
    v.quorate = false;
    let p = plan_for(&v, &ClusterPolicy::default(), &rs, &cs, &cur);
    assert_eq!(
        kinds(&p),
        vec!["stop web node1 after []", "stop app node1 after [0]", "stop db node1 after [1]"]
    );
}

#[test]
fn mandatory_order_restarts_then_when_first_recovers() {
    let rs = vec![agent("db"), agent("app")];
    let cs = vec![order("db", "app")];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("db"), n(1), RunState::Failed);
    cur.set(&r("app"), n(1), RunState::Running);
    let p = plan_for(&view(&[1]), &ClusterPolicy::default(), &rs, &cs, &cur);
    assert_eq!(
        kinds(&p),
        vec![
            "stop app node1 after []",
            "stop db node1 after [0]",
            "start db node1 after [1]",
            "monitor db node1 after [2]",
            "start app node1 after [0, 2]",
            "monitor app node1 after [4]",
        ]
    );
}

#[test]
fn failed_resource_recovers_in_place() {
    let rs = vec![agent("a")];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("a"), n(1), RunState::Failed);
    let mut policy = ClusterPolicy::default();
    policy.default_stickiness = Score::new(0);
    let p = plan_for(&view(&[1, 2]), &policy, &rs, &[], &cur);
    assert_eq!(
        kinds(&p),
        vec!["stop a node1 after []", "start a node1 after [0]", "monitor a node1 after [1]"]
    );
}

#[test]
fn start_waits_for_stop_of_anti_colocated_resource() {
    let rs = vec![agent("a"), agent("b")];
    // a must run on 1; b must not share a node with a; b currently on 1.
    let cs = vec![
        Constraint::Location { rsc: r("a"), node: n(1), score: Score::INFINITY },
        Constraint::Colocation { rsc: r("b"), with: r("a"), score: Score::MINUS_INFINITY },
    ];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("b"), n(1), RunState::Running);
    let p = plan_for(&view(&[1, 2]), &ClusterPolicy::default(), &rs, &cs, &cur);
    let k = kinds(&p);
    assert_eq!(k[0], "stop b node1 after []");
    assert!(k.contains(&"start a node1 after [0]".to_string()), "{k:?}");
}

#[test]
fn maintenance_plans_nothing() {
    let rs = vec![vip_def("vip", 10)];
    let policy = ClusterPolicy { maintenance: true, ..Default::default() };
    let p = plan_for(&view(&[1, 2]), &policy, &rs, &[], &CurrentPlacement::new());
    assert!(p.steps.is_empty());
}

#[test]
fn nothing_to_do_when_placement_holds() {
    let rs = vec![vip_def("vip", 10)];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("vip"), n(1), RunState::Running);
    let p = plan_for(&view(&[1, 2]), &ClusterPolicy::default(), &rs, &[], &cur);
    assert!(p.steps.is_empty(), "{:?}", kinds(&p));
}

#[test]
fn isolation_releases_vips_at_once() {
    let rs = vec![vip_def("vip", 10), agent("lb")];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("vip"), n(1), RunState::Running);
    cur.set(&r("lb"), n(1), RunState::Running);
    let policy = ClusterPolicy::default();
    let mut v = view(&[1, 2]);
    assert!(release_on_isolation(n(1), &v, 3, &policy, &rs, &cur).is_empty());
    v.quorate = false;
    let a = release_on_isolation(n(1), &v, 3, &policy, &rs, &cur);
    assert!(matches!(&a[..], [Action::RemoveVip { node: NodeId(1), .. }]));
    // Sees no peer, even if a (misconfigured) view claims quorum.
    let alone = View { epoch: 4, members: vec![n(1)], quorate: true };
    assert_eq!(release_on_isolation(n(1), &alone, 3, &policy, &rs, &cur).len(), 1);
    assert!(release_on_isolation(n(1), &alone, 1, &policy, &rs, &cur).is_empty(), "single-node cluster");
    assert!(
        release_on_isolation(n(1), &alone, 2, &policy, &rs, &cur).is_empty(),
        "two-node cluster: the survivor keeps the VIP when membership says quorate (two_node + tie-breaker)"
    );
    let ignore = ClusterPolicy { no_quorum_policy: NoQuorumPolicy::Ignore, ..Default::default() };
    assert!(release_on_isolation(n(1), &v, 3, &ignore, &rs, &cur).is_empty());
}

#[test]
fn reannounce_lists_held_vips() {
    let rs = vec![vip_def("a", 10), vip_def("b", 11)];
    let mut cur = CurrentPlacement::new();
    cur.set(&r("b"), n(2), RunState::Running);
    let a = reannounce(n(2), &rs, &cur);
    assert!(matches!(&a[..], [Action::SendGarp { node: NodeId(2), .. }]));
    assert_eq!(a[0].rsc(), &r("b"));
}

// ----- property: executing any plan never gives a VIP two live holders -----

fn any_view() -> impl Strategy<Value = (Vec<u32>, bool)> {
    (proptest::collection::vec(1u32..5, 1..5), prop_oneof![3 => Just(true), 1 => Just(false)])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn plans_never_double_hold_a_vip(
        (members, quorate) in any_view(),
        holders in proptest::collection::vec((0usize..3, 1u32..5, any::<bool>()), 0..4),
        moves in proptest::collection::vec((0usize..3, 1u32..5), 0..3),
        standby in proptest::collection::vec(1u32..5, 0..2),
        seed in any::<u64>(),
    ) {
        let rs = vec![vip_def("v0", 10), vip_def("v1", 11), agent("lb")];
        let cs: Vec<Constraint> = moves.iter().map(|(i, node)| Constraint::Move { rsc: rs[*i].id.clone(), node: NodeId(*node) })
            .chain([Constraint::Colocation { rsc: r("v0"), with: r("lb"), score: Score::INFINITY }, order("lb", "v0")])
            .collect();
        let v = View { epoch: 9, members: members.iter().map(|m| NodeId(*m)).collect(), quorate };
        let alive = v.member_set();
        // Start from a state with at most one live holder per VIP (the invariant being kept).
        let mut cur = CurrentPlacement::new();
        for (i, node, ok) in &holders {
            let id = &rs[*i].id;
            let live_holder = cur.nodes(id).any(|(x, _)| alive.contains(&x));
            if alive.contains(&NodeId(*node)) && live_holder { continue; }
            cur.set(id, NodeId(*node), if *ok { RunState::Running } else { RunState::Failed });
        }
        let policy = ClusterPolicy { standby: standby.iter().map(|s| NodeId(*s)).collect(), ..Default::default() };
        let pl = place(&v, &policy, &rs, &cs, &FailCounts::new(), &cur, Timestamp(0));
        let p = plan(&v, &pl, &rs, &cs, &cur);
        for (i, s) in p.steps.iter().enumerate() {
            prop_assert!(s.after.iter().all(|j| *j < i), "dependencies point backwards");
            prop_assert!(alive.contains(&s.action.node()), "actions only for live nodes");
        }
        // Execute as an adversarial scheduler: any ready action may run; prefer starts (worst case).
        let mut done = vec![false; p.steps.len()];
        let mut held: BTreeMap<ResourceId, BTreeSet<NodeId>> = BTreeMap::new();
        for (rid, node, _) in cur.iter() {
            held.entry(rid.clone()).or_default().insert(node);
        }
        let mut rng = seed;
        loop {
            let ready: Vec<usize> = (0..p.steps.len()).filter(|i| !done[*i] && p.steps[*i].after.iter().all(|j| done[*j])).collect();
            if ready.is_empty() { break; }
            let starts: Vec<usize> = ready.iter().copied().filter(|i| p.steps[*i].action.is_start()).collect();
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let pick = if !starts.is_empty() { starts[(rng >> 33) as usize % starts.len()] } else { ready[(rng >> 33) as usize % ready.len()] };
            done[pick] = true;
            let a = &p.steps[pick].action;
            if a.is_start() { held.entry(a.rsc().clone()).or_default().insert(a.node()); }
            if a.is_stop() { held.entry(a.rsc().clone()).or_default().remove(&a.node()); }
            for d in &rs {
                if matches!(d.kind, ResourceKind::Vip(_)) {
                    let live = held.get(&d.id).map_or(0, |h| h.iter().filter(|x| alive.contains(x)).count());
                    prop_assert!(live <= 1, "{} held by {:?} (seed {seed})", d.id, held.get(&d.id));
                }
            }
        }
        prop_assert!(done.iter().all(|d| *d), "every step becomes runnable");
        // After the plan, live holders match the placement.
        for d in &rs {
            let live: Vec<NodeId> = held.get(&d.id).map(|h| h.iter().copied().filter(|x| alive.contains(x)).collect()).unwrap_or_default();
            prop_assert_eq!(live, pl.target(&d.id).into_iter().collect::<Vec<_>>(), "{}", d.id);
        }
    }
}
