//! From the checked config to what the cluster daemon runs: the membership parameters, the peers'
//! link addresses, and the resource model of vip-manager.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ha_membership::config::{ClusterConfig, QuorumConfig};
use ha_membership::from_config::{node_driver_config, witness_driver_config, WITNESS_NODE_ID};
use vip_manager::config::ResourcesConfig;
use vip_manager::driver::DriverConfig as ResourceDriverConfig;
use vip_manager::from_config::node_setup;

use super::daemon::{Resources, Setup};

/// Which role this process plays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A full node, found by name (or by its link addresses when `None`).
    Node(Option<String>),
    /// The vote-only witness.
    Witness,
}

/// Finds the local node: by name, or by a link address that is configured on this host.
pub fn find_local(cluster: &ClusterConfig, name: Option<&str>) -> anyhow::Result<u32> {
    if let Some(name) = name {
        return cluster
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.id)
            .with_context(|| format!("node \"{name}\" is not in [cluster] node list"));
    }
    let local: BTreeSet<IpAddr> = nix::ifaddrs::getifaddrs()
        .context("listing local addresses")?
        .filter_map(|i| i.address)
        .filter_map(|a| {
            a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect();
    let found: Vec<u32> = cluster
        .nodes
        .iter()
        .filter(|n| n.links.iter().any(|l| local.contains(&l.addr())))
        .map(|n| n.id)
        .collect();
    match found.as_slice() {
        [id] => Ok(*id),
        [] => bail!("no [cluster] node has a link address configured on this host; pass --node NAME"),
        _ => bail!("several nodes' link addresses are on this host ({found:?}); pass --node NAME"),
    }
}

/// Builds the daemon's setup for `role` from the config sections. `state_dir` keeps the membership
/// boot epoch (so a restarted node is always a newer life, whatever the clock does).
pub fn build(
    cluster: &ClusterConfig,
    quorum: &QuorumConfig,
    resources: Option<&ResourcesConfig>,
    role: &Role,
    control_socket: PathBuf,
    state_dir: Option<&Path>,
) -> anyhow::Result<Setup> {
    let mut driver = match role {
        Role::Node(name) => node_driver_config(cluster, quorum, find_local(cluster, name.as_deref())?)?,
        Role::Witness => witness_driver_config(cluster, quorum)?,
    };
    driver.boot_state = state_dir.map(|d| d.join(format!("membership-boot-{}", driver.params.local.0)));
    if let Some(d) = state_dir {
        std::fs::create_dir_all(d).with_context(|| format!("state directory {}", d.display()))?;
    }
    let mut names: BTreeMap<u32, String> = cluster.nodes.iter().map(|n| (n.id, n.name.clone())).collect();
    if cluster.witness.is_some() {
        names.insert(WITNESS_NODE_ID.0, "witness".into());
    }
    let resources = match role {
        Role::Witness => None,
        Role::Node(_) => {
            let empty = ResourcesConfig::default();
            Some(self::resources(cluster, resources.unwrap_or(&empty), driver.params.local.0)?)
        }
    };
    Ok(Setup { driver, resources, control_socket, names, metrics: None })
}

/// The resource side of node `local`: vip-manager's engine setup from the config sections, and the
/// resource driver's timing derived from membership's (a process frozen for longer than the others
/// need to declare it failed must release its VIPs on waking).
pub fn resources(cluster: &ClusterConfig, rc: &ResourcesConfig, local: u32) -> anyhow::Result<Resources> {
    let nodes: BTreeMap<String, vip_manager::NodeId> =
        cluster.nodes.iter().map(|n| (n.name.clone(), vip_manager::NodeId(n.id))).collect();
    let node = node_setup(rc, vip_manager::NodeId(local), cluster.nodes.len(), &nodes)?;
    let suspect = cluster.timing.suspect_timeout.get();
    let tick = Duration::from_millis(10);
    let driver = ResourceDriverConfig {
        vips: node.vips.clone(),
        tick,
        stall_threshold: suspect * 2 + tick,
        ..ResourceDriverConfig::default()
    };
    Ok(Resources { node, driver })
}
