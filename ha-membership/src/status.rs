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

/// `hastack quorum`: quorum, votequorum and membership information.
pub fn render_quorum(s: &Status, names: &BTreeMap<NodeId, String>) -> String {
    let mut o = String::new();
    let q = &s.quorum;
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
    let _ = writeln!(o, "\nMembership information\n----------------------");
    let _ = writeln!(o, "    Nodeid      Votes Name");
    if let Some(v) = &s.view {
        for m in &v.members {
            let votes = if m.node == s.local {
                s.votes
            } else {
                s.peers.iter().find(|p| p.node == m.node).map(|p| p.votes).unwrap_or(0)
            };
            let witness = s.peers.iter().any(|p| p.node == m.node && p.witness);
            let _ = writeln!(
                o,
                "{:>10} {:>10} {}{}{}",
                m.node,
                votes,
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
        let st = sim.engine(NodeId(1)).unwrap().status();
        let names: BTreeMap<NodeId, String> = [(NodeId(1), "gw-a".to_string())].into();
        let q = render_quorum(&st, &names);
        assert!(q.contains("Quorate:          Yes"), "{q}");
        assert!(q.contains("Expected votes:   3"), "{q}");
        assert!(q.contains("         1          1 gw-a (local)"), "{q}");
        assert!(q.contains("node3 (witness)"), "{q}");
        let m = render_members(&st, &names);
        assert!(m.contains("link 0 connected (rtt 0.40 ms), link 1 connected (rtt 0.40 ms)"), "{m}");
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"quorate\":true"), "{json}");
    }
}
