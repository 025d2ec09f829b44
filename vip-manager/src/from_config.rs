//! Maps the resource sections of the config (`[[resource]]`, `[[constraint]]`,
//! `[resource_defaults]`, `[policy]`) onto the engine's model, its agents and VIP settings.
//!
//! Node names become ids through the cluster section's name → id map. Pacemaker's default
//! migration-threshold (INFINITY) is kept when the config says 0/none, so a failed start still
//! bans the node (start-failure-is-fatal) while monitor failures never do. `symmetrical = false`
//! on an order is not supported yet: stops always run in reverse order.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use crate::config::{self, ResourcesConfig};
use crate::driver::VipSettings;
use crate::engine::EngineConfig;
use crate::exec::{ExecAgent, Operation};
use crate::garp::AnnounceSchedule;
use crate::model::{
    ClusterPolicy, Constraint, Monitoring, NoQuorumPolicy, NodeId, OnFail, OrderKind, ResourceDef,
    ResourceId, ResourceKind, VipSpec, FATAL_FAIL_COUNT,
};
use crate::score::Score;
use crate::systemd::{unit_agent, InvalidUnit, SYSTEMCTL};
use crate::vip::{Lease, VipError};

/// Everything one node needs to run the resource engine.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    /// Engine configuration.
    pub engine: EngineConfig,
    /// Agents of exec/systemd/balancer/dhcp_dns resources.
    pub agents: BTreeMap<ResourceId, ExecAgent>,
    /// Lease and announcements per VIP.
    pub vips: BTreeMap<ResourceId, VipSettings>,
}

/// A config that validation should have rejected, found while mapping (the config file is wrong).
#[derive(Debug, Error)]
pub enum MappingError {
    /// A node name that is not in the cluster section.
    #[error("{what}: unknown node {node:?}")]
    UnknownNode {
        /// Where it was used.
        what: String,
        /// The name.
        node: String,
    },
    /// A resource with no kind or several.
    #[error("resource {0:?} must have exactly one kind")]
    NoKind(String),
    /// A bad systemd unit name.
    #[error("resource {rsc:?}: {source}")]
    Unit {
        /// Resource.
        rsc: String,
        /// Why.
        source: InvalidUnit,
    },
    /// A lease the kernel cannot enforce.
    #[error("resource {rsc:?}: {reason}")]
    Lease {
        /// Resource.
        rsc: String,
        /// Why.
        reason: String,
    },
}

fn argv(c: &config::Command) -> Vec<String> {
    match c {
        config::Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        config::Command::Argv(v) => v.clone(),
    }
}

/// Builds the engine, agents and VIP settings of node `local` in a cluster of `cluster_size`.
pub fn node_setup(
    cfg: &ResourcesConfig,
    local: NodeId,
    cluster_size: usize,
    nodes: &BTreeMap<String, NodeId>,
) -> Result<NodeSetup, MappingError> {
    let node = |what: String, name: &str| {
        nodes.get(name).copied().ok_or_else(|| MappingError::UnknownNode { what, node: name.to_string() })
    };
    let mut resources = Vec::new();
    let mut agents = BTreeMap::new();
    let mut vips = BTreeMap::new();
    for r in &cfg.resources {
        let kind = r.kind().ok_or_else(|| MappingError::NoKind(r.name.clone()))?;
        let meta = r.effective_meta(&cfg.defaults);
        let id = ResourceId::new(r.name.clone());
        let mut monitoring = Monitoring::Every { interval: meta.monitor_interval, timeout: meta.monitor_timeout };
        let unit = |unit: &str| {
            unit_agent(r.name.clone(), unit, SYSTEMCTL, meta.op_timeout, meta.op_timeout, meta.monitor_timeout)
                .map_err(|source| MappingError::Unit { rsc: r.name.clone(), source })
        };
        let rkind = match kind {
            config::ResourceKind::Vip(v) => {
                let lease = Lease::new(v.lease.get());
                lease
                    .validate()
                    .map_err(|e: VipError| MappingError::Lease { rsc: r.name.clone(), reason: e.to_string() })?;
                let repeat = Some(v.announce_repeat_after.get());
                vips.insert(
                    id.clone(),
                    VipSettings {
                        lease,
                        announce: AnnounceSchedule::evenly(v.announce_count, v.announce_interval.get(), repeat),
                    },
                );
                ResourceKind::Vip(VipSpec {
                    address: v.address.addr(),
                    prefix_len: v.address.prefix_len(),
                    interface: v.interface.clone(),
                })
            }
            config::ResourceKind::Exec(e) => {
                let monitor = match &e.monitor {
                    Some(m) => Operation::new(argv(m), meta.monitor_timeout),
                    None => {
                        monitoring = Monitoring::Off;
                        Operation::new(Vec::<String>::new(), meta.monitor_timeout)
                    }
                };
                agents.insert(
                    id.clone(),
                    ExecAgent {
                        instance: r.name.clone(),
                        start: Operation::new(argv(&e.start), meta.op_timeout),
                        stop: Operation::new(argv(&e.stop), meta.op_timeout),
                        monitor,
                        env: e.env.clone(),
                        not_running_codes: vec![7],
                        workdir: e.workdir.clone(),
                    },
                );
                ResourceKind::Agent
            }
            config::ResourceKind::Systemd(s) => {
                agents.insert(id.clone(), unit(&s.unit)?);
                ResourceKind::Agent
            }
            config::ResourceKind::Balancer(d) => {
                agents.insert(id.clone(), unit(d.unit.as_deref().unwrap_or(config::BALANCER_UNIT))?);
                ResourceKind::Agent
            }
            config::ResourceKind::DhcpDns(d) => {
                agents.insert(id.clone(), unit(d.unit.as_deref().unwrap_or(config::DHCP_DNS_UNIT))?);
                ResourceKind::Agent
            }
        };
        let mut def = ResourceDef::new(r.name.clone(), rkind);
        def.enabled = r.enabled;
        def.priority = meta.priority;
        def.stickiness = Some(Score::new(meta.stickiness.0));
        def.migration_threshold = Some(meta.migration_threshold.unwrap_or(FATAL_FAIL_COUNT));
        def.failure_timeout = meta.failure_timeout;
        def.on_fail = match meta.on_fail {
            config::OnFail::Restart => OnFail::Restart,
            config::OnFail::Move => OnFail::Move,
            config::OnFail::Ignore => OnFail::Ignore,
            config::OnFail::Stop => OnFail::Stop,
        };
        def.monitoring = monitoring;
        resources.push(def);
    }

    let mut constraints = Vec::new();
    for (i, c) in cfg.constraints.iter().enumerate() {
        if let Some(x) = &c.colocation {
            constraints.push(Constraint::Colocation {
                rsc: ResourceId::new(x.resource.clone()),
                with: ResourceId::new(x.with.clone()),
                score: Score::new(x.score.0),
            });
        }
        if let Some(x) = &c.order {
            constraints.push(Constraint::Order {
                first: ResourceId::new(x.first.clone()),
                then: ResourceId::new(x.then.clone()),
                kind: match x.kind {
                    config::OrderKind::Mandatory => OrderKind::Mandatory,
                    config::OrderKind::Optional => OrderKind::Optional,
                },
            });
        }
        if let Some(x) = &c.location {
            constraints.push(Constraint::Location {
                rsc: ResourceId::new(x.resource.clone()),
                node: node(format!("constraint[{i}].location"), &x.node)?,
                score: Score::new(x.score.0),
            });
        }
    }

    let mut policy = ClusterPolicy {
        no_quorum_policy: match cfg.policy.no_quorum_policy {
            config::NoQuorumPolicy::Stop => NoQuorumPolicy::Stop,
            config::NoQuorumPolicy::Freeze => NoQuorumPolicy::Freeze,
            config::NoQuorumPolicy::Ignore => NoQuorumPolicy::Ignore,
        },
        maintenance: cfg.policy.maintenance,
        default_stickiness: Score::new(cfg.defaults.stickiness.0),
        ..ClusterPolicy::default()
    };
    for (i, n) in cfg.policy.standby.iter().enumerate() {
        policy.standby.insert(node(format!("policy.standby[{i}]"), n)?);
    }

    Ok(NodeSetup {
        engine: EngineConfig {
            local,
            cluster_size,
            resources,
            constraints,
            policy,
            monitor_interval: cfg.defaults.monitor_interval.get(),
            monitor_timeout: cfg.defaults.monitor_timeout.get(),
            tick_every: Duration::from_secs(1),
            stall_confirm: EngineConfig::DEFAULT_STALL_CONFIRM,
        },
        agents,
        vips,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct File {
        resource: Vec<config::Resource>,
        #[serde(default)]
        constraint: Vec<config::Constraint>,
        #[serde(default)]
        policy: config::Policy,
    }

    const TOML: &str = r#"
[[resource]]
name = "api-vip"
[resource.vip]
address = "198.18.0.100/24"
interface = "eth0"
lease = "2s"
announce_count = 3

[[resource]]
name = "balancer"
migration_threshold = 3
failure_timeout = "60s"
[resource.balancer]

[[resource]]
name = "hook"
on_fail = "ignore"
[resource.exec]
start = "touch /run/hook"
stop = ["/bin/rm", "-f", "/run/hook"]

[[constraint]]
colocation = { resource = "api-vip", with = "balancer", score = "INFINITY" }
[[constraint]]
order = { first = "balancer", then = "api-vip" }
[[constraint]]
location = { resource = "balancer", node = "lb2", score = 50 }

[policy]
no_quorum_policy = "freeze"
standby = ["lb3"]
"#;

    fn nodes() -> BTreeMap<String, NodeId> {
        [("lb1", 1), ("lb2", 2), ("lb3", 3)].into_iter().map(|(n, i)| (n.to_string(), NodeId(i))).collect()
    }

    fn load() -> ResourcesConfig {
        let f: File = toml::from_str(TOML).expect("toml");
        ResourcesConfig { resources: f.resource, constraints: f.constraint, policy: f.policy, ..Default::default() }
    }

    #[test]
    fn maps_resources_constraints_and_policy() {
        let s = node_setup(&load(), NodeId(1), 3, &nodes()).unwrap();
        let e = &s.engine;
        assert_eq!(e.resources.len(), 3);
        let vip = &e.resources[0];
        assert!(matches!(&vip.kind, ResourceKind::Vip(v) if v.prefix_len == 24 && v.interface == "eth0"));
        assert!(vip.release_without_quorum);
        assert_eq!(s.vips[&vip.id].lease.lifetime, Duration::from_secs(2));
        assert_eq!(s.vips[&vip.id].announce.times().len(), 6, "3 now + 3 after the default 5s");
        let lb = &e.resources[1];
        assert_eq!(lb.migration_threshold, Some(3));
        assert_eq!(lb.failure_timeout, Some(Duration::from_secs(60)));
        assert!(s.agents[&lb.id].start.argv.contains(&config::BALANCER_UNIT.to_string()));
        let hook = &e.resources[2];
        assert_eq!(hook.on_fail, OnFail::Ignore);
        assert_eq!(hook.monitoring, Monitoring::Off, "no monitor command");
        assert_eq!(hook.migration_threshold, Some(FATAL_FAIL_COUNT));
        assert_eq!(s.agents[&hook.id].start.argv, vec!["/bin/sh", "-c", "touch /run/hook"]);
        assert_eq!(e.constraints.len(), 3);
        assert!(e.constraints.contains(&Constraint::Location {
            rsc: ResourceId::new("balancer"),
            node: NodeId(2),
            score: Score::new(50)
        }));
        assert_eq!(e.policy.no_quorum_policy, NoQuorumPolicy::Freeze);
        assert!(e.policy.standby.contains(&NodeId(3)));
    }

    #[test]
    fn mapped_config_places_as_expected() {
        let s = node_setup(&load(), NodeId(1), 3, &nodes()).unwrap();
        let e = &s.engine;
        let view = crate::model::View { epoch: 1, members: vec![NodeId(1), NodeId(2), NodeId(3)], quorate: true };
        let p = crate::placement::place(
            &view,
            &e.policy,
            &e.resources,
            &e.constraints,
            &crate::model::FailCounts::new(),
            &crate::model::CurrentPlacement::new(),
            crate::model::Timestamp(0),
        );
        assert_eq!(p.target(&ResourceId::new("balancer")), Some(NodeId(2)));
        assert_eq!(p.target(&ResourceId::new("api-vip")), Some(NodeId(2)));
    }

    #[test]
    fn unknown_node_is_an_error() {
        let mut c = load();
        c.policy.standby.push("nope".into());
        assert!(matches!(node_setup(&c, NodeId(1), 3, &nodes()), Err(MappingError::UnknownNode { .. })));
    }
}
