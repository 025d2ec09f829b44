//! From the checked config to what the cluster daemon runs: the membership parameters, the peers'
//! link addresses, and the resource model of vip-manager.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ha_membership::config::{ClusterConfig, QuorumConfig};
use ha_membership::from_config::{node_driver_config, witness_driver_config, WITNESS_NODE_ID};
use vip_manager::config::{self as rcfg, ResourcesConfig};
use vip_manager::garp::AnnounceSchedule;
use vip_manager::vip::Lease;
use vip_manager::{ClusterPolicy, Constraint, NoQuorumPolicy, OnFail, OrderKind, ResourceDef, ResourceId, ResourceKind, Score, VipSpec};

use super::daemon::Setup;
use super::resources::ResourceSetup;

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
    let resources = match (role, resources) {
        (Role::Witness, _) => None,
        (Role::Node(_), Some(r)) => Some(resource_setup(cluster, r)?),
        (Role::Node(_), None) => Some(ResourceSetup::default()),
    };
    Ok(Setup { driver, resources, control_socket, names })
}

/// The vip-manager model of the `[[resource]]`, `[[constraint]]` and `[policy]` sections.
pub fn resource_setup(cluster: &ClusterConfig, rc: &ResourcesConfig) -> anyhow::Result<ResourceSetup> {
    let node_id = |name: &str| -> anyhow::Result<vip_manager::NodeId> {
        cluster
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| vip_manager::NodeId(n.id))
            .with_context(|| format!("unknown node \"{name}\""))
    };
    let mut resources = Vec::new();
    let mut lease: Option<Duration> = None;
    let mut announce = AnnounceSchedule::default();
    for r in &rc.resources {
        let meta = r.effective_meta(&rc.defaults);
        let kind = match r.kind() {
            Some(rcfg::ResourceKind::Vip(v)) => {
                let l = v.lease.get();
                lease = Some(lease.map_or(l, |x: Duration| x.min(l)));
                let gap = v.announce_interval.get();
                announce.burst = (0..v.announce_count.max(1)).map(|i| gap * i).collect();
                announce.repeat_after = (!v.announce_repeat_after.get().is_zero()).then(|| v.announce_repeat_after.get());
                ResourceKind::Vip(VipSpec { address: v.address.addr(), prefix_len: v.address.prefix_len(), interface: v.interface.clone() })
            }
            Some(_) => ResourceKind::Agent,
            None => bail!("resource \"{}\" has no single kind", r.name),
        };
        let mut def = ResourceDef::new(r.name.clone(), kind);
        def.enabled = r.enabled;
        def.priority = meta.priority;
        def.stickiness = Some(Score::new(meta.stickiness.0));
        def.migration_threshold = meta.migration_threshold;
        def.failure_timeout = meta.failure_timeout;
        def.on_fail = match meta.on_fail {
            rcfg::OnFail::Restart => OnFail::Restart,
            rcfg::OnFail::Move => OnFail::Move,
            rcfg::OnFail::Ignore => OnFail::Ignore,
            rcfg::OnFail::Stop => OnFail::Stop,
        };
        resources.push(def);
    }
    let mut constraints = Vec::new();
    for c in &rc.constraints {
        if let Some(co) = &c.colocation {
            constraints.push(Constraint::Colocation {
                rsc: ResourceId::new(co.resource.clone()),
                with: ResourceId::new(co.with.clone()),
                score: Score::new(co.score.0),
            });
        }
        if let Some(o) = &c.order {
            constraints.push(Constraint::Order {
                first: ResourceId::new(o.first.clone()),
                then: ResourceId::new(o.then.clone()),
                kind: match o.kind {
                    rcfg::OrderKind::Mandatory => OrderKind::Mandatory,
                    rcfg::OrderKind::Optional => OrderKind::Optional,
                },
            });
        }
        if let Some(l) = &c.location {
            constraints.push(Constraint::Location {
                rsc: ResourceId::new(l.resource.clone()),
                node: node_id(&l.node)?,
                score: Score::new(l.score.0),
            });
        }
    }
    let policy = ClusterPolicy {
        no_quorum_policy: match rc.policy.no_quorum_policy {
            rcfg::NoQuorumPolicy::Stop => NoQuorumPolicy::Stop,
            rcfg::NoQuorumPolicy::Freeze => NoQuorumPolicy::Freeze,
            rcfg::NoQuorumPolicy::Ignore => NoQuorumPolicy::Ignore,
        },
        maintenance: rc.policy.maintenance,
        standby: rc.policy.standby.iter().map(|n| node_id(n)).collect::<anyhow::Result<_>>()?,
        default_stickiness: Score::new(rc.defaults.stickiness.0),
    };
    let heartbeat = cluster.timing.heartbeat_interval.get();
    Ok(ResourceSetup {
        resources,
        constraints,
        policy,
        lease: lease.map(Lease::new).unwrap_or_default(),
        announce,
        handover_delay: heartbeat * 3,
        witnesses: [WITNESS_NODE_ID.0].into_iter().collect(),
    })
}
