//! Maps the `[cluster]` and `[quorum]` config sections onto the engine's and driver's parameters.
//!
//! The witness of `[cluster.witness]` (the role of corosync-qnetd) becomes a vote-only member with
//! node id [`WITNESS_NODE_ID`] and a single link (link 0 of the nodes reaches it).

use crate::config::{ClusterConfig, DEFAULT_WITNESS_PORT, QuorumConfig, TieBreaker as ConfigTieBreaker, TimingConfig};
use crate::driver::{DriverConfig, KeySource};
use crate::engine::{EngineParams, NodeSpec, Timing};
use crate::quorum::{QuorumSettings, TieBreaker};
use crate::wire::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The node id the witness uses on the wire (above every configurable node id's typical range).
pub const WITNESS_NODE_ID: NodeId = NodeId(u32::MAX);
/// Where the last boot epoch is remembered.
pub const BOOT_STATE: &str = "/var/lib/hastack/membership-boot";
/// SCHED_FIFO priority asked for the membership thread.
pub const REALTIME_PRIORITY: i32 = 50;

/// Why the config cannot be mapped (a validated config never fails here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromConfigError {
    /// The local node id is not in `[[cluster.node]]`.
    #[error("node id {0} is not in [[cluster.node]]")]
    UnknownLocal(u32),
    /// No witness is configured but the witness role was asked for.
    #[error("no [cluster.witness] is configured")]
    NoWitness,
}

impl From<&TimingConfig> for Timing {
    fn from(t: &TimingConfig) -> Self {
        let confirm = t.confirm_timeout.get();
        Timing {
            heartbeat_interval: t.heartbeat_interval.get(),
            suspect_timeout: t.suspect_timeout.get(),
            // confirm_timeout is the typical (one confirmation) wait: no confirmation doubles it,
            // full confirmation halves it (Lifeguard's bounds).
            confirm_min: confirm / 2,
            confirm_max: confirm * 2,
            view_timeout: t.view_commit_timeout.get(),
            join_delay: t.join_interval.get(),
            max_lhm: t.max_health_multiplier,
            indirect_probes: t.indirect_probes as usize,
            partition_timeout: t.partition_timeout(),
        }
    }
}

impl From<&QuorumConfig> for QuorumSettings {
    fn from(q: &QuorumConfig) -> Self {
        QuorumSettings {
            expected_votes: q.expected_votes,
            two_node: q.two_node,
            wait_for_all: q.wait_for_all(),
            last_man_standing: q.last_man_standing,
            lms_window: q.last_man_standing_window.get(),
            auto_tie_breaker: q.auto_tie_breaker,
            tie_breaker: match &q.auto_tie_breaker_node {
                ConfigTieBreaker::Lowest => TieBreaker::Lowest,
                ConfigTieBreaker::Highest => TieBreaker::Highest,
                ConfigTieBreaker::Nodes(ids) => TieBreaker::Nodes(ids.iter().map(|&i| NodeId(i)).collect()),
            },
        }
    }
}

/// A stable cluster id from the cluster name (datagrams of another cluster are dropped).
pub fn cluster_id(name: &str) -> u32 {
    let h = blake3::hash(name.as_bytes());
    let b = h.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn build(cluster: &ClusterConfig, quorum: &QuorumConfig, local: NodeId) -> DriverConfig {
    let mut nodes = Vec::new();
    let mut addrs = BTreeMap::new();
    for n in &cluster.nodes {
        nodes.push(NodeSpec { id: NodeId(n.id), votes: n.votes, links: n.links.len(), witness: false });
        let a: Vec<SocketAddr> = n.links.iter().map(|l| SocketAddr::new(l.addr(), cluster.port)).collect();
        addrs.insert(NodeId(n.id), a);
    }
    if let Some(w) = &cluster.witness {
        nodes.push(NodeSpec { id: WITNESS_NODE_ID, votes: w.votes, links: 1, witness: true });
        addrs.insert(WITNESS_NODE_ID, vec![w.address.with_default_port(DEFAULT_WITNESS_PORT)]);
    }
    DriverConfig {
        params: EngineParams {
            cluster_id: cluster_id(&cluster.name),
            local,
            nodes,
            timing: Timing::from(&cluster.timing),
            quorum: QuorumSettings::from(quorum),
        },
        addrs,
        key: KeySource::File(cluster.authkey.clone()),
        realtime_priority: Some(REALTIME_PRIORITY),
        boot_state: Some(std::path::PathBuf::from(BOOT_STATE)),
    }
}

/// Driver configuration for the cluster node `local` (`hastack cluster`).
pub fn node_driver_config(
    cluster: &ClusterConfig,
    quorum: &QuorumConfig,
    local: u32,
) -> Result<DriverConfig, FromConfigError> {
    if cluster.node_by_id(local).is_none() {
        return Err(FromConfigError::UnknownLocal(local));
    }
    Ok(build(cluster, quorum, NodeId(local)))
}

/// Driver configuration for the vote-only witness (`hastack witness`).
pub fn witness_driver_config(cluster: &ClusterConfig, quorum: &QuorumConfig) -> Result<DriverConfig, FromConfigError> {
    if cluster.witness.is_none() {
        return Err(FromConfigError::NoWitness);
    }
    Ok(build(cluster, quorum, WITNESS_NODE_ID))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
name = "gw"
authkey = "/tmp/none"
[[node]]
id = 1
name = "gw1"
links = ["198.18.0.11/24", "198.19.0.11/24"]
[[node]]
id = 2
name = "gw2"
links = ["198.18.0.12/24", "198.19.0.12/24"]
[witness]
address = "198.18.0.99"
votes = 1
"#;

    #[test]
    fn maps_nodes_links_witness_and_timing() {
        let cluster: ClusterConfig = toml::from_str(TOML).unwrap();
        let quorum = QuorumConfig::default();
        let d = node_driver_config(&cluster, &quorum, 2).unwrap();
        assert_eq!(d.params.local, NodeId(2));
        assert_eq!(d.params.nodes.len(), 3);
        assert_eq!(d.addrs[&NodeId(1)][1], "198.19.0.11:5405".parse().unwrap());
        assert_eq!(d.addrs[&WITNESS_NODE_ID], vec!["198.18.0.99:5406".parse().unwrap()]);
        assert!(d.params.nodes.iter().any(|n| n.id == WITNESS_NODE_ID && n.witness && n.links == 1));
        assert_eq!(d.params.timing.heartbeat_interval, std::time::Duration::from_millis(10));
        assert_eq!(d.params.cluster_id, cluster_id("gw"));
        assert_ne!(cluster_id("gw"), cluster_id("gw2"));
        assert_eq!(node_driver_config(&cluster, &quorum, 7).unwrap_err(), FromConfigError::UnknownLocal(7));
        let w = witness_driver_config(&cluster, &quorum).unwrap();
        assert_eq!(w.params.local, WITNESS_NODE_ID);
        // The mapped parameters are accepted by the engine.
        let e = crate::engine::Engine::new(
            d.params,
            crate::auth::Authenticator::from_key_material(b"k"),
            1,
            std::time::Instant::now(),
        );
        assert!(e.is_ok());
    }
}
