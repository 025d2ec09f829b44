//! Text renderings of a [`Status`] in the shape operators know from `corosync-quorumtool -s` and
//! `corosync-cfgtool -s`. JSON output is `serde_json::to_string(&status)` (every status type is
//! `Serialize`).

use crate::engine::{PeerState, Status};
use crate::wire::NodeId;
use std::collections::BTreeMap;
use std::fmt::Write;

fn name(names: &BTreeMap<NodeId, String>, id: NodeId) -> String {
    names.get(&id).cloned().unwrap_or_else(|| format!("node{id}"))
}

/// `hastack quorum`: quorum, votequorum and membership information, with each member's vote as
/// this node sees it (corosync-quorumtool's Qdevice flags): `A` alive / `NA` not heard, `V` its
/// vote counts here now (a fresh vote lease, or this node's own vote) / `NV` not.
pub fn render_quorum(s: &Status, names: &BTreeMap<NodeId, String>) -> String {
    let mut o = String::new();
    let q = &s.quorum;
    let v = &s.vote;
    let members = s.view.as_ref().map(|v| v.members.len()).unwrap_or(0);
    let ring = s.view.as_ref().map(|v| v.id.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(o, "Quorum information\n------------------");
    let _ = writeln!(o, "Quorum provider:  hastack votequorum");
    let _ = writeln!(o, "Nodes:            {members}");
    let _ = writeln!(o, "Node ID:          {}", s.local);
    let _ = writeln!(o, "Ring ID:          {ring}");
    let _ = writeln!(o, "Quorate:          {}", if q.quorate { "Yes" } else { "No" });
    let _ = writeln!(o, "\nVotequorum information\n----------------------");
    let _ = writeln!(o, "Expected votes:   {}", q.expected_votes);
    let _ = writeln!(o, "Total votes:      {}", q.total_votes);
    let _ = writeln!(o, "Quorum:           {}{}", q.quorum, if q.quorate { "" } else { " Activity blocked" });
    let _ = writeln!(o, "Flags:            {}", q.flags.join(" "));
    let leases = match v.lease_ms {
        Some(ms) => format!("held, {ms} ms left unrenewed (lease {} ms)", v.lease_span_ms),
        None => format!("not held (lease {} ms)", v.lease_span_ms),
    };
    let _ = writeln!(o, "Vote leases:      {leases}");
    let own = match (&v.granted_view, s.view.is_some()) {
        (Some(view), _) => format!("counts in ring {view}"),
        (None, true) if v.quiet_ms > 0 => format!("quiet period, {} ms left", v.quiet_ms),
        (None, true) => "withheld (view change under way)".to_string(),
        (None, false) => "no view".to_string(),
    };
    let _ = writeln!(o, "Own vote:         {own}");
    if s.witness {
        // The witness's vote is what decides a two-node split: say where it goes.
        let granted: Vec<String> = v.granted.iter().map(|l| format!("{} {} ms", name(names, l.node), l.ms_left)).collect();
        let _ = writeln!(
            o,
            "Witness vote:     {}; leases running: {}",
            v.granted_view.map(|r| format!("granted to ring {r}")).unwrap_or_else(|| "not granted".into()),
            if granted.is_empty() { "none".to_string() } else { granted.join(", ") }
        );
    } else if let Some(w) = s.peers.iter().find(|p| p.witness) {
        let held = v.held.iter().find(|l| l.node == w.node);
        let _ = writeln!(
            o,
            "Witness vote:     {}",
            match held {
                Some(l) => format!("held from {} ({} ms left)", name(names, w.node), l.ms_left),
                None => format!("not held from {}", name(names, w.node)),
            }
        );
    }
    let _ = writeln!(o, "\nMembership information\n----------------------");
    let _ = writeln!(o, "    Nodeid      Votes   Vote Name");
    if let Some(view) = &s.view {
        for m in &view.members {
            let (votes, alive, counts) = if m.node == s.local {
                (s.votes, true, v.granted_view.is_some())
            } else {
                let p = s.peers.iter().find(|p| p.node == m.node);
                (
                    p.map(|p| p.votes).unwrap_or(0),
                    p.is_some_and(|p| p.state == PeerState::Alive),
                    v.held.iter().any(|l| l.node == m.node),
                )
            };
            let witness = if m.node == s.local { s.witness } else { s.peers.iter().any(|p| p.node == m.node && p.witness) };
            let flags = format!("{},{}", if alive { "A" } else { "NA" }, if counts { "V" } else { "NV" });
            let _ = writeln!(
                o,
                "{:>10} {:>10} {:>6} {}{}{}",
                m.node,
                votes,
                flags,
                name(names, m.node),
                if m.node == s.local { " (local)" } else { "" },
                if witness { " (witness)" } else { "" }
            );
        }
    }
    o
}

/// `hastack members`: the local node, then each peer's state and per-link status.
pub fn render_members(s: &Status, names: &BTreeMap<NodeId, String>) -> String {
    let mut o = String::new();
    let ring = s.view.as_ref().map(|v| v.id.to_string()).unwrap_or_else(|| "-".into());
    let _ = writeln!(o, "Local node ID {} ({}), ring ID {ring}, local health {}", s.local, name(names, s.local), s.local_health);
    let in_view = |id: NodeId| s.view.as_ref().is_some_and(|v| v.members.iter().any(|m| m.node == id));
    for p in &s.peers {
        let state = match p.state {
            PeerState::Unknown => "unknown",
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Failed => "failed",
            PeerState::Left => "left",
        };
        let links: Vec<String> = p
            .links
            .iter()
            .enumerate()
            .map(|(i, up)| {
                let rtt = match p.rtt_us.get(i).copied().flatten() {
                    Some(us) if *up => format!(" (rtt {:.2} ms)", us as f64 / 1000.0),
                    _ => String::new(),
                };
                format!("link {i} {}{rtt}", if *up { "connected" } else { "disconnected" })
            })
            .collect();
        let _ = writeln!(
            o,
            "  nodeid {:>4} {:<16} {:<8} {:<10} {}",
            p.node,
            name(names, p.node),
            state,
            if in_view(p.node) { "member" } else { "not member" },
            links.join(", ")
        );
    }
    let d = &s.drops;
    let _ = writeln!(
        o,
        "Dropped datagrams: {} malformed, {} forged, {} replayed, {} oversized, {} wrong cluster, {} unknown sender",
        d.malformed, d.forged, d.replayed, d.oversized, d.wrong_cluster, d.unknown_sender
    );
    o
}

/// Prometheus text exposition of a [`Status`] (the cluster daemon's `GET /metrics`): quorum,
/// view, local health, every peer's state, links and round trips, dropped datagrams by reason,
/// and the protocol counters.
pub fn render_prometheus(s: &Status) -> String {
    let mut o = String::new();
    let head = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP hastack_cluster_{name} {help}\n# TYPE hastack_cluster_{name} {kind}");
    };
    let q = &s.quorum;
    for (name, help, v) in [
        ("quorate", "1 when this node's partition is quorate.", u64::from(q.quorate)),
        ("votes_total", "Votes of the current view's members.", u64::from(q.total_votes)),
        ("votes_expected", "Expected votes.", u64::from(q.expected_votes)),
        ("votes_quorum", "Votes needed for quorum.", u64::from(q.quorum)),
        ("view_members", "Members of the installed view.", s.view.as_ref().map_or(0, |v| v.members.len() as u64)),
        ("local_health", "Local health multiplier (Lifeguard; 0 = healthy).", u64::from(s.local_health)),
        ("channel_delivered", "Highest ordered-channel sequence delivered in this view.", s.channel_delivered),
        ("channel_outbox", "Channel messages waiting to be ordered.", s.channel_outbox as u64),
        ("channel_blocked", "1 while the channel is blocked for a view change.", u64::from(s.channel_blocked)),
        ("vote_lease_quorate", "1 while this node holds vote leases carrying quorum (strict quorum).", u64::from(s.vote.lease_quorate)),
        ("vote_leases_held", "Peers whose vote lease this node holds in its view.", s.vote.held.len() as u64),
    ] {
        head(&mut o, name, "gauge", help);
        let _ = writeln!(o, "hastack_cluster_{name} {v}");
    }
    let st = &s.stats;
    for (name, help, v) in [
        ("views_installed_total", "Views installed.", st.views_installed),
        ("views_proposed_total", "Views proposed as coordinator.", st.views_proposed),
        ("suspicions_total", "Peers suspected.", st.suspicions),
        ("suspicions_cleared_total", "Suspicions cleared (refuted or heard again).", st.suspicions_cleared),
        ("failures_declared_total", "Peers declared failed.", st.failures_declared),
        ("refutations_total", "Suspicions of this node it refuted.", st.refutations),
        ("late_timers_total", "Timers that fired late (this node was slow).", st.late_timers),
    ] {
        head(&mut o, name, "counter", help);
        let _ = writeln!(o, "hastack_cluster_{name} {v}");
    }
    let d = &s.drops;
    head(&mut o, "datagrams_dropped_total", "counter", "Datagrams dropped before they could change anything, by reason.");
    for (reason, v) in [
        ("oversized", d.oversized),
        ("malformed", d.malformed),
        ("forged", d.forged),
        ("wrong_cluster", d.wrong_cluster),
        ("unknown_sender", d.unknown_sender),
        ("replayed", d.replayed),
    ] {
        let _ = writeln!(o, "hastack_cluster_datagrams_dropped_total{{reason=\"{reason}\"}} {v}");
    }
    head(&mut o, "peer_state", "gauge", "1 for each peer's current state as this node sees it.");
    for p in &s.peers {
        let state = match p.state {
            PeerState::Unknown => "unknown",
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Failed => "failed",
            PeerState::Left => "left",
        };
        let _ = writeln!(o, "hastack_cluster_peer_state{{node=\"{}\",state=\"{state}\"}} 1", p.node);
    }
    head(&mut o, "peer_link_up", "gauge", "1 when the link to the peer is up.");
    for p in &s.peers {
        for (i, up) in p.links.iter().enumerate() {
            let _ = writeln!(o, "hastack_cluster_peer_link_up{{node=\"{}\",link=\"{i}\"}} {}", p.node, u8::from(*up));
        }
    }
    head(&mut o, "peer_rtt_seconds", "gauge", "Last round trip to the peer on each link.");
    for p in &s.peers {
        for (i, rtt) in p.rtt_us.iter().enumerate() {
            if let Some(us) = rtt {
                let _ = writeln!(o, "hastack_cluster_peer_rtt_seconds{{node=\"{}\",link=\"{i}\"}} {}", p.node, *us as f64 / 1e6);
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Shape, Sim, specs};
    use std::time::Duration;

    #[test]
    fn renders_like_corosync_tools() {
        let (nodes, q) = specs(Shape::TwoNodesWitness, 2);
        let mut sim = Sim::new(5, nodes, q);
        sim.run_until(Duration::from_millis(500), Sim::converged).unwrap();
        // Quorum is reported once the vote leases of the new view came back.
        sim.run_for(Duration::from_millis(20));
        let st = sim.engine(NodeId(1)).unwrap().status();
        let names: BTreeMap<NodeId, String> = [(NodeId(1), "gw-a".to_string())].into();
        let q = render_quorum(&st, &names);
        assert!(q.contains("Quorate:          Yes"), "{q}");
        assert!(q.contains("Expected votes:   3"), "{q}");
        assert!(q.contains("         1          1    A,V gw-a (local)"), "{q}");
        assert!(q.contains("         3          1    A,V node3 (witness)"), "{q}");
        assert!(q.contains("Vote leases:      held, "), "{q}");
        assert!(q.contains("Own vote:         counts in ring 1.1"), "{q}");
        assert!(q.contains("Witness vote:     held from node3 ("), "{q}");
        // The witness says where its vote is granted.
        let w = render_quorum(&sim.engine(NodeId(3)).unwrap().status(), &names);
        assert!(w.contains("Witness vote:     granted to ring 1.1; leases running: gw-a "), "{w}");
        // Cut node 2 off: node 1 stops holding its vote at once (no renewal), and says so.
        for (a, b) in [(1, 2), (2, 1), (3, 2), (2, 3)] {
            sim.net.cuts.insert((NodeId(a), NodeId(b), usize::MAX));
        }
        sim.run_for(Duration::from_millis(35));
        let q = render_quorum(&sim.engine(NodeId(1)).unwrap().status(), &names);
        assert!(q.contains(",NV node2"), "{q}");
        assert!(q.contains("Quorate:          Yes"), "{q}");
        let m = render_members(&st, &names);
        assert!(m.contains("link 0 connected (rtt 0.40 ms), link 1 connected (rtt 0.40 ms)"), "{m}");
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"quorate\":true"), "{json}");
        assert!(json.contains("\"vote\":{\"lease_quorate\":true"), "{json}");
    }

    #[test]
    fn prometheus_exposition_follows_the_status() {
        let (nodes, q) = specs(Shape::TwoNodesWitness, 2);
        let mut sim = Sim::new(7, nodes, q);
        sim.run_until(Duration::from_millis(500), Sim::converged).unwrap();
        sim.run_for(Duration::from_millis(20));
        let st = sim.engine(NodeId(1)).unwrap().status();
        let text = render_prometheus(&st);
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("hastack_cluster_quorate 1"), "{text}");
        assert!(has("hastack_cluster_vote_lease_quorate 1"), "{text}");
        assert!(has("hastack_cluster_vote_leases_held 2"), "{text}");
        assert!(has("hastack_cluster_votes_expected 3"), "{text}");
        assert!(has("hastack_cluster_view_members 3"), "{text}");
        assert!(has("hastack_cluster_peer_state{node=\"2\",state=\"alive\"} 1"), "{text}");
        assert!(has("hastack_cluster_peer_link_up{node=\"2\",link=\"1\"} 1"), "{text}");
        assert!(has("hastack_cluster_datagrams_dropped_total{reason=\"forged\"} 0"), "{text}");
        assert!(text.contains("hastack_cluster_peer_rtt_seconds{node=\"2\",link=\"0\"} 0.0004"), "{text}");
        // Every sample line belongs to a declared metric family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let family = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {family} ")), "undeclared {family}");
        }
    }
}
