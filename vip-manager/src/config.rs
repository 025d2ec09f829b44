//! Serde types of the resource sections (owned by the config work): `[[resource]]`,
//! `[[constraint]]`, `[resource_defaults]` and `[policy]`, with Pacemaker's meaning.
//!
//! A resource names its kind by the one sub-table it has, so every key keeps its own line and
//! column in diagnostics:
//!
//! ```toml
//! [[resource]]
//! name = "api-vip"
//! stickiness = 100
//! [resource.vip]
//! address = "198.18.0.100/24"
//! interface = "eth0"
//!
//! [[constraint]]
//! colocation = { resource = "balancer", with = "api-vip", score = "INFINITY" }
//! ```
//!
//! This module does not depend on the engine's model: the daemon maps these types onto it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use hastack_common::{
    Cidr, HumanDuration, KeyPath, Problem, Problems, check_unique, names::check_name,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Pacemaker's INFINITY score.
pub const INFINITY: i64 = 1_000_000;

/// A score as written in the config: an integer or `"INFINITY"`, `"+INFINITY"`, `"-INFINITY"`;
/// clamped to ±1,000,000 like Pacemaker does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScoreValue(pub i64);

impl ScoreValue {
    /// +INFINITY.
    pub const INFINITY: ScoreValue = ScoreValue(INFINITY);
    /// -INFINITY.
    pub const MINUS_INFINITY: ScoreValue = ScoreValue(-INFINITY);

    /// A clamped score.
    pub fn new(v: i64) -> Self {
        Self(v.clamp(-INFINITY, INFINITY))
    }
}

impl fmt::Display for ScoreValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            INFINITY => f.write_str("INFINITY"),
            v if v == -INFINITY => f.write_str("-INFINITY"),
            v => write!(f, "{v}"),
        }
    }
}

impl<'de> Deserialize<'de> for ScoreValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScoreValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer score or \"INFINITY\" / \"-INFINITY\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScoreValue, E> {
                Ok(ScoreValue::new(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScoreValue, E> {
                Ok(ScoreValue::new(i64::try_from(v).unwrap_or(INFINITY)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScoreValue, E> {
                match v.trim().to_ascii_uppercase().as_str() {
                    "INFINITY" | "+INFINITY" | "INF" | "+INF" => Ok(ScoreValue::INFINITY),
                    "-INFINITY" | "-INF" => Ok(ScoreValue::MINUS_INFINITY),
                    other => other.parse::<i64>().map(ScoreValue::new).map_err(|_| {
                        E::custom(format!(
                            "score \"{v}\": expected an integer, \"INFINITY\" or \"-INFINITY\""
                        ))
                    }),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ScoreValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            INFINITY => s.serialize_str("INFINITY"),
            v if v == -INFINITY => s.serialize_str("-INFINITY"),
            v => s.serialize_i64(v),
        }
    }
}

/// What to do when an operation of a resource fails (Pacemaker's `on-fail`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Restart in place; failures count toward migration_threshold (default).
    #[default]
    Restart,
    /// Move to another node at once.
    Move,
    /// Pretend the failure did not happen.
    Ignore,
    /// Stop the resource until its failures are cleared or expire.
    Stop,
}

/// The meta attributes every resource has (Pacemaker's `meta` / `op monitor`). On a resource each
/// is optional and falls back to `[resource_defaults]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceMeta {
    /// resource-stickiness: preference for staying where it runs.
    pub stickiness: Option<ScoreValue>,
    /// migration-threshold: failures on a node before it is banned there (0 = never).
    pub migration_threshold: Option<u32>,
    /// failure-timeout: failures older than this are forgotten (0s = never).
    pub failure_timeout: Option<HumanDuration>,
    /// on-fail: restart, move, ignore or stop.
    pub on_fail: Option<OnFail>,
    /// How often the monitor runs.
    pub monitor_interval: Option<HumanDuration>,
    /// How long one monitor may take before it counts as a failure.
    pub monitor_timeout: Option<HumanDuration>,
    /// How long a start or stop may take before it counts as a failure.
    pub op_timeout: Option<HumanDuration>,
    /// Allocation priority: higher-priority resources are placed first.
    pub priority: Option<i32>,
}

/// Meta attributes with every default applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveMeta {
    /// resource-stickiness.
    pub stickiness: ScoreValue,
    /// migration-threshold; `None` = never ban.
    pub migration_threshold: Option<u32>,
    /// failure-timeout; `None` = never forget.
    pub failure_timeout: Option<std::time::Duration>,
    /// on-fail.
    pub on_fail: OnFail,
    /// Monitor interval.
    pub monitor_interval: std::time::Duration,
    /// Monitor timeout.
    pub monitor_timeout: std::time::Duration,
    /// Start/stop timeout.
    pub op_timeout: std::time::Duration,
    /// Allocation priority.
    pub priority: i32,
}

/// `[resource_defaults]`: meta attributes for every resource that does not set its own
/// (Pacemaker's rsc_defaults / op_defaults).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceDefaults {
    /// Default stickiness (0).
    pub stickiness: ScoreValue,
    /// Default migration threshold (0 = never ban; Pacemaker's INFINITY default).
    pub migration_threshold: u32,
    /// Default failure timeout (0s = never forget).
    pub failure_timeout: HumanDuration,
    /// Default on-fail (restart).
    pub on_fail: OnFail,
    /// Default monitor interval (10s).
    pub monitor_interval: HumanDuration,
    /// Default monitor timeout (20s).
    pub monitor_timeout: HumanDuration,
    /// Default start/stop timeout (20s).
    pub op_timeout: HumanDuration,
    /// Default priority (0).
    pub priority: i32,
}

impl Default for ResourceDefaults {
    fn default() -> Self {
        Self {
            stickiness: ScoreValue(0),
            migration_threshold: 0,
            failure_timeout: HumanDuration::from_secs(0),
            on_fail: OnFail::Restart,
            monitor_interval: HumanDuration::from_secs(10),
            monitor_timeout: HumanDuration::from_secs(20),
            op_timeout: HumanDuration::from_secs(20),
            priority: 0,
        }
    }
}

/// A command run by an `exec` resource: a string run by `/bin/sh -c`, or an argv list run as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run through `/bin/sh -c`.
    Shell(String),
    /// Run directly: program and arguments.
    Argv(Vec<String>),
}

impl Command {
    /// True when there is nothing to run.
    pub fn is_empty(&self) -> bool {
        match self {
            Command::Shell(s) => s.trim().is_empty(),
            Command::Argv(v) => v.first().is_none_or(|p| p.trim().is_empty()),
        }
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a shell command string or a list of program and arguments")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Command, E> {
                Ok(Command::Shell(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                let mut argv = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    argv.push(a);
                }
                Ok(Command::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Command::Shell(c) => s.serialize_str(c),
            Command::Argv(v) => v.serialize(s),
        }
    }
}

/// `[resource.vip]`: a virtual IP address held on a kernel-enforced lease.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VipResource {
    /// The address with its prefix length, e.g. `198.18.0.100/24` or `fd00:198:18::100/64`.
    pub address: Cidr,
    /// The interface that carries it (same name on every node).
    pub interface: String,
    /// Address lifetime (valid_lft) renewed by the daemon: a dead daemon's VIP disappears within it.
    /// Whole seconds, at least 1s (default 3s).
    #[serde(default = "default_lease")]
    pub lease: HumanDuration,
    /// Gratuitous ARPs / unsolicited NAs sent on takeover (default 5).
    #[serde(default = "default_announce_count")]
    pub announce_count: u32,
    /// Gap between announcements of one burst (default 20ms).
    #[serde(default = "default_announce_interval")]
    pub announce_interval: HumanDuration,
    /// A second burst this long after takeover (0s = none; default 5s, as keepalived repeats).
    #[serde(default = "default_announce_repeat")]
    pub announce_repeat_after: HumanDuration,
}

fn default_lease() -> HumanDuration {
    HumanDuration::from_secs(3)
}
fn default_announce_count() -> u32 {
    5
}
fn default_announce_interval() -> HumanDuration {
    HumanDuration::from_millis(20)
}
fn default_announce_repeat() -> HumanDuration {
    HumanDuration::from_secs(5)
}

/// `[resource.exec]`: commands in the shape of an OCF agent (exit 0 = running / success,
/// 7 = not running for monitor).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExecResource {
    /// Starts the resource.
    pub start: Command,
    /// Stops the resource; must succeed when it is already stopped.
    pub stop: Command,
    /// Checks the resource (optional: without it only start/stop failures count).
    pub monitor: Option<Command>,
    /// Extra environment for the three commands.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default /).
    pub workdir: Option<PathBuf>,
}

/// `[resource.systemd]`: a systemd unit started and stopped through systemd.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdResource {
    /// The unit, e.g. `nginx.service`.
    pub unit: String,
}

/// `[resource.balancer]` / `[resource.dhcp_dns]`: one of hastack's own daemons as a resource.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonResource {
    /// The unit that runs the daemon (default `hastack-balancer.service` / `hastack-dhcp-dns.service`).
    pub unit: Option<String>,
}

/// Default unit of a `balancer` resource.
pub const BALANCER_UNIT: &str = "hastack-balancer.service";
/// Default unit of a `dhcp_dns` resource.
pub const DHCP_DNS_UNIT: &str = "hastack-dhcp-dns.service";

/// One `[[resource]]`: a name, its meta attributes, and exactly one kind sub-table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Unique resource name.
    pub name: String,
    /// Pacemaker's target-role: false keeps it stopped (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// resource-stickiness (falls back to `[resource_defaults]`).
    pub stickiness: Option<ScoreValue>,
    /// migration-threshold (0 = never).
    pub migration_threshold: Option<u32>,
    /// failure-timeout (0s = never).
    pub failure_timeout: Option<HumanDuration>,
    /// on-fail.
    pub on_fail: Option<OnFail>,
    /// Monitor interval.
    pub monitor_interval: Option<HumanDuration>,
    /// Monitor timeout.
    pub monitor_timeout: Option<HumanDuration>,
    /// Start/stop timeout.
    pub op_timeout: Option<HumanDuration>,
    /// Allocation priority.
    pub priority: Option<i32>,
    /// A virtual IP address.
    pub vip: Option<VipResource>,
    /// Start/stop/monitor commands.
    pub exec: Option<ExecResource>,
    /// A systemd unit.
    pub systemd: Option<SystemdResource>,
    /// The hastack balancer daemon.
    pub balancer: Option<DaemonResource>,
    /// The hastack DHCP/DNS daemon.
    pub dhcp_dns: Option<DaemonResource>,
}

fn default_true() -> bool {
    true
}

/// The kind of a resource, borrowed from its one sub-table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind<'a> {
    /// `[resource.vip]`.
    Vip(&'a VipResource),
    /// `[resource.exec]`.
    Exec(&'a ExecResource),
    /// `[resource.systemd]`.
    Systemd(&'a SystemdResource),
    /// `[resource.balancer]`.
    Balancer(&'a DaemonResource),
    /// `[resource.dhcp_dns]`.
    DhcpDns(&'a DaemonResource),
}

impl Resource {
    /// The resource's kind; `None` when it has none or several (validation reports both).
    pub fn kind(&self) -> Option<ResourceKind<'_>> {
        let kinds = self.kinds();
        if kinds.len() == 1 {
            kinds.into_iter().next()
        } else {
            None
        }
    }

    fn kinds(&self) -> Vec<ResourceKind<'_>> {
        let mut v = Vec::new();
        if let Some(x) = &self.vip {
            v.push(ResourceKind::Vip(x));
        }
        if let Some(x) = &self.exec {
            v.push(ResourceKind::Exec(x));
        }
        if let Some(x) = &self.systemd {
            v.push(ResourceKind::Systemd(x));
        }
        if let Some(x) = &self.balancer {
            v.push(ResourceKind::Balancer(x));
        }
        if let Some(x) = &self.dhcp_dns {
            v.push(ResourceKind::DhcpDns(x));
        }
        v
    }

    /// This resource's meta attributes as written (without defaults).
    pub fn meta(&self) -> ResourceMeta {
        ResourceMeta {
            stickiness: self.stickiness,
            migration_threshold: self.migration_threshold,
            failure_timeout: self.failure_timeout,
            on_fail: self.on_fail,
            monitor_interval: self.monitor_interval,
            monitor_timeout: self.monitor_timeout,
            op_timeout: self.op_timeout,
            priority: self.priority,
        }
    }

    /// Meta attributes with `[resource_defaults]` applied.
    pub fn effective_meta(&self, d: &ResourceDefaults) -> EffectiveMeta {
        let nonzero = |x: std::time::Duration| (!x.is_zero()).then_some(x);
        EffectiveMeta {
            stickiness: self.stickiness.unwrap_or(d.stickiness),
            migration_threshold: Some(self.migration_threshold.unwrap_or(d.migration_threshold))
                .filter(|t| *t > 0),
            failure_timeout: nonzero(self.failure_timeout.unwrap_or(d.failure_timeout).get()),
            on_fail: self.on_fail.unwrap_or(d.on_fail),
            monitor_interval: self.monitor_interval.unwrap_or(d.monitor_interval).get(),
            monitor_timeout: self.monitor_timeout.unwrap_or(d.monitor_timeout).get(),
            op_timeout: self.op_timeout.unwrap_or(d.op_timeout).get(),
            priority: self.priority.unwrap_or(d.priority),
        }
    }
}

/// `colocation = { resource, with, score }`: place `resource` relative to `with`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Colocation {
    /// The dependent resource (placed after `with`).
    pub resource: String,
    /// The resource it follows.
    pub with: String,
    /// +INFINITY (default) = same node, -INFINITY = never the same node, finite = preference.
    #[serde(default = "infinity")]
    pub score: ScoreValue,
}

fn infinity() -> ScoreValue {
    ScoreValue::INFINITY
}

/// Whether an order constraint is binding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderKind {
    /// `then` runs only while `first` runs (default).
    #[default]
    Mandatory,
    /// Only sequences actions that happen in the same transition.
    Optional,
}

/// `order = { first, then, kind, symmetrical }`: start `first` before `then`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Started first.
    pub first: String,
    /// Started after `first` is running.
    pub then: String,
    /// mandatory (default) or optional.
    #[serde(default)]
    pub kind: OrderKind,
    /// Stop in the reverse order (default true).
    #[serde(default = "default_true")]
    pub symmetrical: bool,
}

/// `location = { resource, node, score }`: a node preference (negative = avoid).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// The resource.
    pub resource: String,
    /// The node name, as in `[[cluster.node]]`.
    pub node: String,
    /// Preference added on that node.
    pub score: ScoreValue,
}

/// One `[[constraint]]`: exactly one of `colocation`, `order` or `location`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    /// A colocation constraint.
    pub colocation: Option<Colocation>,
    /// An order constraint.
    pub order: Option<Order>,
    /// A location constraint.
    pub location: Option<Location>,
}

/// `[policy]`: cluster-wide behaviour (Pacemaker's cluster properties).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// What a partition without quorum does: stop (default), freeze or ignore.
    pub no_quorum_policy: NoQuorumPolicy,
    /// Maintenance mode: nothing is started, stopped or monitored.
    pub maintenance: bool,
    /// Nodes (by name) that run nothing.
    pub standby: Vec<String>,
}

/// Pacemaker's no-quorum-policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoQuorumPolicy {
    /// Stop every resource of the partition (default).
    #[default]
    Stop,
    /// Keep what runs (VIPs are still released), start nothing.
    Freeze,
    /// Behave as if quorate (unsafe outside single-node and test setups).
    Ignore,
}

/// Every resource section of the file, assembled by the `hastack` config loader.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourcesConfig {
    /// `[[resource]]`.
    pub resources: Vec<Resource>,
    /// `[[constraint]]`.
    pub constraints: Vec<Constraint>,
    /// `[resource_defaults]`.
    pub defaults: ResourceDefaults,
    /// `[policy]`.
    pub policy: Policy,
}

impl ResourcesConfig {
    /// The resource with this name.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// Every node name the section refers to, with its path (for the cross-section check that
    /// they exist in `[cluster]`).
    pub fn node_references(&self) -> Vec<(KeyPath, &str)> {
        let mut refs: Vec<(KeyPath, &str)> = self
            .policy
            .standby
            .iter()
            .enumerate()
            .map(|(i, n)| (KeyPath::new("policy.standby").index(i), n.as_str()))
            .collect();
        for (i, c) in self.constraints.iter().enumerate() {
            if let Some(l) = &c.location {
                refs.push((
                    KeyPath::new("constraint")
                        .index(i)
                        .key("location")
                        .key("node"),
                    l.node.as_str(),
                ));
            }
        }
        refs
    }

    /// Reports every problem of the resource sections.
    pub fn validate(&self, problems: &mut Problems) {
        validate_defaults(&self.defaults, problems);
        let res = KeyPath::new("resource");
        check_unique(
            problems,
            self.resources
                .iter()
                .enumerate()
                .map(|(i, r)| (res.index(i).key("name"), &r.name)),
            "resource name",
        );
        for (i, r) in self.resources.iter().enumerate() {
            validate_resource(r, res.index(i), &self.defaults, problems);
        }
        let names: HashMap<&str, usize> = self
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_str(), i))
            .collect();
        let known = |problems: &mut Problems, path: KeyPath, name: &str| {
            if !names.contains_key(name) {
                problems.add(path, format!("unknown resource \"{name}\""));
            }
        };
        let cons = KeyPath::new("constraint");
        let mut order_edges: Vec<(&str, &str, KeyPath)> = Vec::new();
        for (i, c) in self.constraints.iter().enumerate() {
            let base = cons.index(i);
            let count = [
                c.colocation.is_some(),
                c.order.is_some(),
                c.location.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if count != 1 {
                problems.add(
                    base.clone(),
                    format!("a constraint has exactly one of colocation, order or location; this one has {count}"),
                );
            }
            if let Some(col) = &c.colocation {
                let p = base.key("colocation");
                known(problems, p.key("resource"), &col.resource);
                known(problems, p.key("with"), &col.with);
                if col.resource == col.with {
                    problems.add(
                        p.key("with"),
                        format!("resource \"{}\" is colocated with itself", col.resource),
                    );
                }
            }
            if let Some(o) = &c.order {
                let p = base.key("order");
                known(problems, p.key("first"), &o.first);
                known(problems, p.key("then"), &o.then);
                if o.first == o.then {
                    problems.add(
                        p.key("then"),
                        format!("resource \"{}\" is ordered after itself", o.first),
                    );
                } else if o.kind == OrderKind::Mandatory {
                    order_edges.push((o.first.as_str(), o.then.as_str(), p));
                }
            }
            if let Some(l) = &c.location {
                known(problems, base.key("location").key("resource"), &l.resource);
            }
        }
        if let Some(path) = find_order_cycle(&order_edges) {
            problems.add(path, "mandatory order constraints form a cycle: none of these resources could ever start");
        }
        for (i, n) in self.policy.standby.iter().enumerate() {
            if n.is_empty() {
                problems.add(KeyPath::new("policy.standby").index(i), "empty node name");
            }
        }
    }
}

/// Returns the path of one order constraint that closes a cycle, if the mandatory orders have one.
fn find_order_cycle(edges: &[(&str, &str, KeyPath)]) -> Option<KeyPath> {
    let mut adj: HashMap<&str, Vec<(&str, &KeyPath)>> = HashMap::new();
    for (a, b, p) in edges {
        adj.entry(a).or_default().push((b, p));
    }
    // Iterative DFS with colours; the edge that reaches a grey node closes a cycle.
    let mut colour: HashMap<&str, u8> = HashMap::new();
    let mut starts: Vec<&str> = adj.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        if colour.get(start).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        colour.insert(start, 1);
        while let Some((node, next)) = stack.pop() {
            let out = adj.get(node).map(|v| v.as_slice()).unwrap_or(&[]);
            if let Some((to, path)) = out.get(next) {
                stack.push((node, next + 1));
                match colour.get(to).copied().unwrap_or(0) {
                    1 => return Some((*path).clone()),
                    0 => {
                        colour.insert(to, 1);
                        stack.push((to, 0));
                    }
                    _ => {}
                }
            } else {
                colour.insert(node, 2);
            }
        }
    }
    None
}

fn validate_defaults(d: &ResourceDefaults, problems: &mut Problems) {
    let base = KeyPath::new("resource_defaults");
    if d.monitor_interval.is_zero() {
        problems.add(
            base.key("monitor_interval"),
            "monitor_interval must be longer than 0s",
        );
    }
    if d.monitor_timeout.is_zero() {
        problems.add(
            base.key("monitor_timeout"),
            "monitor_timeout must be longer than 0s",
        );
    }
    if d.op_timeout.is_zero() {
        problems.add(base.key("op_timeout"), "op_timeout must be longer than 0s");
    }
}

fn validate_resource(
    r: &Resource,
    base: KeyPath,
    defaults: &ResourceDefaults,
    problems: &mut Problems,
) {
    check_name(problems, base.key("name"), &r.name, "resource name");
    let kinds = r.kinds();
    match kinds.len() {
        0 => problems.add(
            base.clone(),
            format!("resource \"{}\" has no kind: add one of [resource.vip], [resource.exec], [resource.systemd], [resource.balancer], [resource.dhcp_dns]", r.name),
        ),
        1 => {}
        n => problems.add(base.clone(), format!("resource \"{}\" has {n} kinds; give it exactly one", r.name)),
    }
    for (key, v) in [
        ("monitor_interval", r.monitor_interval),
        ("monitor_timeout", r.monitor_timeout),
        ("op_timeout", r.op_timeout),
    ] {
        if v.is_some_and(|d| d.is_zero()) {
            problems.add(base.key(key), format!("{key} must be longer than 0s"));
        }
    }
    let meta = r.effective_meta(defaults);
    if meta.monitor_timeout > meta.monitor_interval.saturating_mul(10)
        && r.monitor_timeout.is_some()
    {
        problems.add(base.key("monitor_timeout"), "monitor_timeout is more than ten monitor intervals: a hung monitor would hide failures for that long");
    }
    for k in kinds {
        match k {
            ResourceKind::Vip(v) => {
                let p = base.key("vip");
                if v.address.is_network()
                    && v.address.prefix_len() < if v.address.is_ipv4() { 32 } else { 128 }
                {
                    problems.add(
                        p.key("address"),
                        format!("{} is a subnet address, not a host address", v.address),
                    );
                }
                if v.interface.is_empty()
                    || v.interface.len() > 15
                    || v.interface.contains(['/', ' '])
                {
                    problems.add(p.key("interface"), format!("\"{}\" is not a Linux interface name (1-15 characters, no '/' or space)", v.interface));
                }
                let lease = v.lease.get();
                if lease.as_secs() == 0 || lease.subsec_nanos() != 0 {
                    problems.add(p.key("lease"), "lease must be a whole number of seconds, at least 1s (the kernel counts address lifetimes in seconds)");
                }
                if v.announce_count == 0 {
                    problems.add(
                        p.key("announce_count"),
                        "announce_count must be at least 1: neighbours must learn the new holder",
                    );
                }
                if v.announce_count > 1 && v.announce_interval.is_zero() {
                    problems.add(
                        p.key("announce_interval"),
                        "announce_interval must be longer than 0s",
                    );
                }
            }
            ResourceKind::Exec(e) => {
                let p = base.key("exec");
                if e.start.is_empty() {
                    problems.add(p.key("start"), "start command is empty");
                }
                if e.stop.is_empty() {
                    problems.add(p.key("stop"), "stop command is empty");
                }
                if e.monitor.as_ref().is_some_and(Command::is_empty) {
                    problems.add(p.key("monitor"), "monitor command is empty");
                }
                if let Some(w) = &e.workdir
                    && !w.is_absolute()
                {
                    problems.add(p.key("workdir"), "workdir must be an absolute path");
                }
            }
            ResourceKind::Systemd(s) => {
                check_unit(problems, base.key("systemd").key("unit"), &s.unit)
            }
            ResourceKind::Balancer(d) => {
                if let Some(u) = &d.unit {
                    check_unit(problems, base.key("balancer").key("unit"), u);
                }
            }
            ResourceKind::DhcpDns(d) => {
                if let Some(u) = &d.unit {
                    check_unit(problems, base.key("dhcp_dns").key("unit"), u);
                }
            }
        }
    }
}

fn check_unit(problems: &mut Problems, path: KeyPath, unit: &str) {
    const SUFFIXES: [&str; 6] = [
        ".service", ".socket", ".target", ".timer", ".mount", ".path",
    ];
    if !SUFFIXES
        .iter()
        .any(|s| unit.len() > s.len() && unit.ends_with(s))
        || unit.contains('/')
    {
        problems.push(Problem::new(
            path,
            format!("\"{unit}\" is not a systemd unit name like nginx.service"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        resource: Vec<Resource>,
        #[serde(default)]
        constraint: Vec<Constraint>,
    }

    fn load(text: &str) -> ResourcesConfig {
        let d: Doc = toml::from_str(text).expect("test doc parses");
        ResourcesConfig {
            resources: d.resource,
            constraints: d.constraint,
            ..Default::default()
        }
    }

    fn problems(c: &ResourcesConfig) -> Vec<String> {
        let mut p = Problems::new();
        c.validate(&mut p);
        p.iter().map(|x| x.to_string()).collect()
    }

    const GOOD: &str = r#"
[[resource]]
name = "api-vip"
stickiness = "INFINITY"
[resource.vip]
address = "198.18.0.100/24"
interface = "eth0"

[[resource]]
name = "lb"
[resource.balancer]

[[resource]]
name = "hook"
monitor_interval = "5s"
[resource.exec]
start = "/usr/local/bin/hook start"
stop = ["/usr/local/bin/hook", "stop"]

[[constraint]]
colocation = { resource = "lb", with = "api-vip" }
[[constraint]]
order = { first = "api-vip", then = "lb" }
[[constraint]]
location = { resource = "api-vip", node = "gw1", score = -100 }
"#;

    #[test]
    fn a_good_resource_set_has_no_problem() {
        let c = load(GOOD);
        assert_eq!(problems(&c), Vec::<String>::new());
        assert!(matches!(c.resources[0].kind(), Some(ResourceKind::Vip(_))));
        assert_eq!(
            c.resources[0].effective_meta(&c.defaults).stickiness,
            ScoreValue::INFINITY
        );
        assert_eq!(
            c.constraints[0].colocation.as_ref().map(|x| x.score),
            Some(ScoreValue::INFINITY)
        );
        assert_eq!(
            c.resources[2]
                .effective_meta(&c.defaults)
                .migration_threshold,
            None
        );
        assert_eq!(c.node_references().len(), 1);
    }

    #[test]
    fn unknown_references_cycles_and_kindless_resources_are_reported() {
        let text = format!(
            "{GOOD}\n[[constraint]]\norder = {{ first = \"lb\", then = \"api-vip\" }}\n[[constraint]]\ncolocation = {{ resource = \"nope\", with = \"lb\" }}\n[[resource]]\nname = \"empty\"\n"
        );
        let p = problems(&load(&text));
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("constraint[4].colocation.resource: unknown resource \"nope\"")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("form a cycle")), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("resource[3]: resource \"empty\" has no kind")),
            "{p:?}"
        );
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn scores_accept_pacemaker_spellings() {
        #[derive(Deserialize)]
        struct T {
            s: ScoreValue,
        }
        let s = |t: &str| toml::from_str::<T>(t).map(|x| x.s);
        assert_eq!(s("s = \"-INFINITY\"").unwrap(), ScoreValue::MINUS_INFINITY);
        assert_eq!(s("s = 5000000").unwrap(), ScoreValue::INFINITY);
        assert_eq!(s("s = \"-20\"").unwrap(), ScoreValue(-20));
        assert!(s("s = \"lots\"").is_err());
    }

    #[test]
    fn vip_leases_are_whole_seconds() {
        let text = GOOD.replace(
            "interface = \"eth0\"",
            "interface = \"eth0\"\nlease = \"1500ms\"",
        );
        let p = problems(&load(&text));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("resource[0].vip.lease"));
    }
}
