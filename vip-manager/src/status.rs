//! `hastack status` for resources: a crm_mon-like text rendering of an engine's status.

use std::fmt::Write;

use crate::engine::EngineStatus;
use crate::model::RunState;

/// Renders members, quorum, each resource with where it runs (and should run), failure counts
/// and the last failed action.
pub fn render(st: &EngineStatus, now: crate::model::Timestamp) -> String {
    let mut s = String::new();
    match &st.view {
        Some(v) => {
            let members: Vec<String> = v.member_set().iter().map(|m| m.to_string()).collect();
            let _ = writeln!(
                s,
                "View {}: {} member(s) [{}], {}{}",
                v.epoch,
                members.len(),
                members.join(" "),
                if v.quorate { "quorate" } else { "NO QUORUM" },
                if st.synced { "" } else { " (syncing)" }
            );
        }
        None => s.push_str("No view yet (not joined)\n"),
    }
    if st.fenced {
        s.push_str("*** Fenced after a stall: runs nothing until every member confirms the view ***\n");
    }
    let o = &st.operator;
    if o.maintenance {
        s.push_str("*** Maintenance mode: nothing is started or stopped ***\n");
    }
    if !o.standby.is_empty() {
        let l: Vec<String> = o.standby.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(s, "Standby: {}", l.join(" "));
    }
    if !o.shutting_down.is_empty() {
        let l: Vec<String> = o.shutting_down.iter().map(|n| n.to_string()).collect();
        let _ = writeln!(s, "Shutting down: {}", l.join(" "));
    }
    s.push_str("\nResources:\n");
    if let Some(p) = &st.placement {
        for (rsc, d) in &p.decisions {
            let running: Vec<String> = st
                .current
                .nodes(rsc)
                .map(|(n, state)| match state {
                    RunState::Running => n.to_string(),
                    RunState::Failed => format!("{n} (FAILED)"),
                })
                .collect();
            let now_on = if running.is_empty() { "Stopped".to_string() } else { format!("Started {}", running.join(", ")) };
            let target = match (d.node, &d.reason) {
                (Some(n), _) if running.len() == 1 && running[0] == n.to_string() => String::new(),
                (Some(n), _) => format!(" -> {n}"),
                (None, Some(r)) if !running.is_empty() => format!(" -> stop ({r:?})"),
                (None, Some(r)) => format!(" ({r:?})"),
                (None, None) => String::new(),
            };
            let _ = writeln!(s, "  * {rsc}\t{now_on}{target}");
        }
    }
    for c in &o.constraints {
        let _ = writeln!(s, "  operator constraint: {c:?}");
    }
    let fails: Vec<String> = st
        .fails
        .iter()
        .map(|(r, n, f)| format!("  * {r} on {n}: fail-count={} last-failure={}s ago", f.count, now.since(f.last_failure).as_secs()))
        .collect();
    if !fails.is_empty() {
        s.push_str("\nFailures:\n");
        for f in fails {
            s.push_str(&f);
            s.push('\n');
        }
    }
    if let Some(f) = &st.last_failure {
        let _ = writeln!(s, "\nLast failed action: {} {} on {} ({}s ago)", f.rsc, f.op, f.node, now.since(f.at).as_secs());
    }
    let (done, total) = st.progress;
    if done < total {
        let _ = writeln!(s, "\nTransition in progress: {done}/{total} actions done");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineConfig, Msg, Output};
    use crate::model::{ClusterPolicy, NodeId, ResourceDef, ResourceId, ResourceKind, Timestamp, View};
    use std::time::{Duration, Instant};

    #[test]
    fn renders_members_resources_and_failures() {
        let cfg = EngineConfig {
            local: NodeId(1),
            cluster_size: 1,
            resources: vec![ResourceDef::new("web", ResourceKind::Agent)],
            constraints: vec![],
            policy: ClusterPolicy::default(),
            monitor_interval: Duration::from_secs(10),
            monitor_timeout: Duration::from_secs(10),
            tick_every: Duration::from_secs(1),
            stall_confirm: EngineConfig::DEFAULT_STALL_CONFIRM,
        };
        let mut e = Engine::new(cfg);
        let now = Instant::now();
        e.view_installed(View { epoch: 3, members: vec![NodeId(1)], quorate: true }, now, Timestamp(1000));
        for _ in 0..100 {
            match e.poll_output() {
                Some(Output::Broadcast(m)) => e.deliver(m, now, Timestamp(1000)),
                Some(Output::Execute { ticket, .. }) => e.action_finished(ticket, true, now, Timestamp(1000)),
                Some(_) => {}
                None => break,
            }
        }
        e.deliver(Msg::Failure { from: NodeId(1), rsc: ResourceId::new("web"), at: Timestamp(2000) }, now, Timestamp(2000));
        let out = render(&e.status(), Timestamp(5000));
        assert!(out.contains("View 3: 1 member(s) [node1], quorate"), "{out}");
        assert!(out.contains("* web"), "{out}");
        assert!(out.contains("fail-count=1 last-failure=3s ago"), "{out}");
        assert!(out.contains("Last failed action: web monitor on node1"), "{out}");
    }
}
