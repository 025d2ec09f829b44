use std::time::{Duration, Instant};

use super::*;
use crate::model::VipSpec;

fn cfg(local: u32, size: usize) -> EngineConfig {
    let vip = ResourceDef::new(
        "vip",
        ResourceKind::Vip(VipSpec { address: "198.18.0.10".parse().unwrap(), prefix_len: 24, interface: "eth0".into() }),
    );
    EngineConfig {
        local: NodeId(local),
        cluster_size: size,
        resources: vec![vip],
        constraints: vec![],
        policy: ClusterPolicy::default(),
        monitor_interval: Duration::from_secs(1),
        monitor_timeout: Duration::from_millis(500),
        tick_every: Duration::from_secs(1),
        stall_confirm: EngineConfig::DEFAULT_STALL_CONFIRM,
    }
}

/// Loops a single engine's broadcasts back to it and completes every action; returns executed actions.
fn settle(e: &mut Engine, now: Instant) -> Vec<Action> {
    let mut executed = Vec::new();
    for _ in 0..1000 {
        let Some(o) = e.poll_output() else { return executed };
        match o {
            Output::Broadcast(m) => {
                let m = Msg::decode(&m.encode()).expect("round trip");
                e.deliver(m, now, Timestamp(1));
            }
            Output::Execute { ticket, action } => {
                executed.push(action);
                e.action_finished(ticket, true, now, Timestamp(1));
            }
            Output::RunMonitor(_) => {}
        }
    }
    panic!("engine did not settle");
}

#[test]
fn single_node_cluster_starts_and_stops_its_vip() {
    let now = Instant::now();
    let mut e = Engine::new(cfg(1, 1));
    e.view_installed(View { epoch: 1, members: vec![NodeId(1)], quorate: true }, now, Timestamp(1));
    let acts = settle(&mut e, now);
    assert!(matches!(acts[..], [Action::AddVip { .. }, Action::SendGarp { .. }]), "{acts:?}");
    assert_eq!(e.local_resources().get(&ResourceId::new("vip")), Some(&RunState::Running));
    e.operator(OperatorCmd::Standby(NodeId(1)), Timestamp(2));
    let acts = settle(&mut e, now);
    assert!(matches!(acts[..], [Action::RemoveVip { .. }]), "{acts:?}");
    assert!(e.idle());
    assert_eq!(e.status().operator.version, 1);
}

#[test]
fn quorum_loss_releases_without_any_message() {
    let now = Instant::now();
    let mut e = Engine::new(cfg(1, 1));
    e.view_installed(View { epoch: 1, members: vec![NodeId(1)], quorate: true }, now, Timestamp(1));
    settle(&mut e, now);
    // Now the node thinks it is in a 3-node cluster that lost quorum: release comes first.
    e.cfg.cluster_size = 3;
    e.view_installed(View { epoch: 2, members: vec![NodeId(1)], quorate: false }, now, Timestamp(2));
    match e.poll_output() {
        Some(Output::Execute { action: Action::RemoveVip { .. }, .. }) => {}
        other => panic!("expected an immediate RemoveVip, got {other:?}"),
    }
}

#[test]
fn stale_views_and_claims_are_ignored() {
    let now = Instant::now();
    let mut e = Engine::new(cfg(1, 1));
    e.view_installed(View { epoch: 5, members: vec![NodeId(1)], quorate: true }, now, Timestamp(1));
    settle(&mut e, now);
    e.view_installed(View { epoch: 4, members: vec![NodeId(1)], quorate: false }, now, Timestamp(1));
    assert!(e.poll_output().is_none(), "an older view changes nothing");
    e.deliver(Msg::Claim { from: NodeId(1), generation: Generation { epoch: 1, n: 1 }, step: 0, at: Timestamp(1) }, now, Timestamp(1));
    assert!(e.poll_output().is_none());
}

#[test]
fn a_stall_confirmed_by_the_view_keeps_the_vip() {
    let now = Instant::now();
    let mut e = Engine::new(cfg(1, 1));
    e.view_installed(View { epoch: 1, members: vec![NodeId(1)], quorate: true }, now, Timestamp(1));
    settle(&mut e, now);
    e.resumed_after_stall(now, Timestamp(5));
    assert!(e.status().fenced);
    assert!(!e.renewals_allowed(), "no renewal while fenced");
    // Its own Alive comes back in the intact view (no other member to ask): confirmed.
    let acts = settle(&mut e, now);
    assert!(acts.is_empty(), "nothing released or re-added: {acts:?}");
    assert!(!e.status().fenced);
    assert!(e.renewals_allowed());
}

#[test]
fn an_unconfirmed_stall_releases_at_the_deadline() {
    let now = Instant::now();
    let mut e = Engine::new(cfg(1, 3));
    e.view_installed(View { epoch: 1, members: vec![NodeId(1), NodeId(2)], quorate: true }, now, Timestamp(1));
    // Node 2 holds nothing and answers nothing; make node 1 the holder by hand.
    while e.poll_output().is_some() {}
    e.local_state.insert(ResourceId::new("vip"), RunState::Running);
    e.resumed_after_stall(now, Timestamp(5));
    assert!(matches!(e.poll_output(), Some(Output::Broadcast(Msg::Alive { .. }))));
    assert!(e.poll_output().is_none(), "kept while asking");
    let deadline = e.poll_timeout().expect("a release deadline");
    assert_eq!(deadline, now + EngineConfig::DEFAULT_STALL_CONFIRM);
    e.handle_timeout(deadline, Timestamp(6));
    assert!(matches!(e.poll_output(), Some(Output::Execute { action: Action::RemoveVip { .. }, .. })));
}

#[test]
fn a_view_change_during_an_unconfirmed_stall_releases_unless_it_continues_the_view() {
    let now = Instant::now();
    let two = vec![NodeId(1), NodeId(2)];
    let three = vec![NodeId(1), NodeId(2), NodeId(3)];
    for (next, releases) in [(View { epoch: 2, members: three.clone(), quorate: true }, false),
                             (View { epoch: 3, members: three.clone(), quorate: true }, true)] {
        let mut e = Engine::new(cfg(1, 3));
        e.view_installed(View { epoch: 1, members: two.clone(), quorate: true }, now, Timestamp(1));
        e.local_state.insert(ResourceId::new("vip"), RunState::Running);
        e.resumed_after_stall(now, Timestamp(5));
        while e.poll_output().is_some() {}
        e.view_installed(next.clone(), now, Timestamp(6));
        let released = std::iter::from_fn(|| e.poll_output())
            .any(|o| matches!(o, Output::Execute { action: Action::RemoveVip { .. }, .. }));
        assert_eq!(released, releases, "{next:?}");
    }
}

#[test]
fn garbage_does_not_decode() {
    assert!(Msg::decode(b"{not json").is_err());
    assert!(Msg::decode(b"{\"Tick\":{\"from\":1}}").is_err());
}

#[test]
fn a_graceful_stop_releases_at_once_unless_something_running_is_ordered_after_the_vip() {
    let now = Instant::now();
    for (ordered, at_once) in [(false, true), (true, false)] {
        let mut c = cfg(1, 1);
        let mut svc = ResourceDef::new("svc", ResourceKind::Agent);
        svc.monitoring = Monitoring::Off;
        c.resources.push(svc);
        if ordered {
            c.constraints.push(Constraint::Order {
                first: ResourceId::new("vip"),
                then: ResourceId::new("svc"),
                kind: crate::model::OrderKind::Mandatory,
            });
        }
        let mut e = Engine::new(c);
        e.view_installed(View { epoch: 1, members: vec![NodeId(1)], quorate: true }, now, Timestamp(1));
        settle(&mut e, now);
        assert_eq!(e.local_resources().len(), 2);
        e.begin_shutdown(Timestamp(2));
        let released = std::iter::from_fn(|| e.poll_output())
            .any(|o| matches!(o, Output::Execute { action: Action::RemoveVip { .. }, .. }));
        assert_eq!(released, at_once, "ordered={ordered}");
    }
}
