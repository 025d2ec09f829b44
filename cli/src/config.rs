//! The whole hastack.toml: each crate's section, assembled and validated before anything is applied.
//!
//! Loading is three passes over one span-preserving parse:
//! 1. syntax: every TOML syntax error, located (nothing else is checked after one);
//! 2. types: each top-level section (and each element of its arrays of tables) is deserialized on
//!    its own, so a type error or an unknown key in `[dhcp]` does not hide one in `[cluster]`;
//! 3. meaning: every section's `validate()` and the checks that span sections (a VIP outside every
//!    node's link subnets, a standby node that does not exist, a frontend on a VIP without freebind).
//!
//! Every problem is reported as `file:line:column: reason`, sorted by position.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dhcp_dns::config::{DhcpConfig, DnsConfig, Replication, is_within};
use ha_membership::config::{ClusterConfig, NodeConfig, QuorumConfig};
use hastack_common::{Diagnostics, KeyPath, Problem, Problems, SockAddr, SourceFile};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tcp_balancer::config::BalancerConfig;
use vip_manager::config::{
    Constraint, Policy, Resource, ResourceDefaults, ResourceKind, ResourcesConfig,
};

/// The default path of the config file.
pub const DEFAULT_PATH: &str = "/etc/hastack/hastack.toml";
/// The default control socket of the cluster daemon.
pub const DEFAULT_CLUSTER_SOCKET: &str = "/run/hastack/cluster.sock";

/// The top-level keys a file may have.
pub const SECTIONS: [&str; 11] = [
    "logging",
    "control",
    "cluster",
    "quorum",
    "resource",
    "constraint",
    "resource_defaults",
    "policy",
    "balancer",
    "dhcp",
    "dns",
];

/// `[logging]`: where and how much the daemons log (RUST_LOG overrides `level`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A tracing filter: `info`, `debug`, `info,ha_membership=debug` (default info).
    #[serde(default = "default_level")]
    pub level: String,
    /// journald (syslog priority prefixes), text or json; default journald when stderr is not a terminal.
    pub format: Option<LogFormat>,
}

fn default_level() -> String {
    "info".to_string()
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `<6>target: message`, which journald turns into priorities.
    Journald,
    /// Human-readable with timestamps.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[control]`: the daemons' local control sockets and metrics endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Control socket of the cluster daemon (default /run/hastack/cluster.sock).
    #[serde(default = "default_cluster_socket")]
    pub socket: PathBuf,
    /// Control socket of the balancer (default /run/hastack/balancer.sock).
    #[serde(default = "default_balancer_socket")]
    pub balancer_socket: PathBuf,
    /// Control socket of the DHCP/DNS daemon (default /run/hastack/dhcp-dns.sock).
    #[serde(default = "default_dhcp_dns_socket")]
    pub dhcp_dns_socket: PathBuf,
    /// Group allowed to use the sockets besides root.
    pub group: Option<String>,
    /// Prometheus endpoint of the cluster daemon.
    pub metrics_cluster: Option<SockAddr>,
    /// Prometheus endpoint of the balancer.
    pub metrics_balancer: Option<SockAddr>,
    /// Prometheus endpoint of the DHCP/DNS daemon.
    pub metrics_dhcp_dns: Option<SockAddr>,
}

fn default_cluster_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CLUSTER_SOCKET)
}
fn default_balancer_socket() -> PathBuf {
    PathBuf::from("/run/hastack/balancer.sock")
}
fn default_dhcp_dns_socket() -> PathBuf {
    PathBuf::from("/run/hastack/dhcp-dns.sock")
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: default_cluster_socket(),
            balancer_socket: default_balancer_socket(),
            dhcp_dns_socket: default_dhcp_dns_socket(),
            group: None,
            metrics_cluster: None,
            metrics_balancer: None,
            metrics_dhcp_dns: None,
        }
    }
}

/// The whole config file; every section is optional, each daemon checks for the ones it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `[logging]`.
    pub logging: Option<LoggingConfig>,
    /// `[control]`.
    pub control: Option<ControlConfig>,
    /// `[cluster]` (ha-membership).
    pub cluster: Option<ClusterConfig>,
    /// `[quorum]` (ha-membership).
    pub quorum: Option<QuorumConfig>,
    /// `[[resource]]` (vip-manager).
    pub resources: Vec<Resource>,
    /// `[[constraint]]` (vip-manager).
    pub constraints: Vec<Constraint>,
    /// `[resource_defaults]` (vip-manager).
    pub resource_defaults: Option<ResourceDefaults>,
    /// `[policy]` (vip-manager).
    pub policy: Option<Policy>,
    /// `[balancer]` (tcp-balancer).
    pub balancer: Option<BalancerConfig>,
    /// `[dhcp]` (dhcp-dns).
    pub dhcp: Option<DhcpConfig>,
    /// `[dns]` (dhcp-dns).
    pub dns: Option<DnsConfig>,
}

impl Config {
    /// Parses and fully validates `text`, naming it `name` in diagnostics.
    pub fn from_str_named(name: &str, text: &str) -> Result<Config, Diagnostics> {
        let file = SourceFile::parse(name, text)?;
        let mut diags = Diagnostics::default();
        let config = assemble(&file, &mut diags);
        // Validate whatever loaded, even when some section failed its types, so one run shows as
        // much as possible. A section that is in the file but failed to load counts as present:
        // "X needs a [Y] section" must not be claimed about a [Y] that is merely broken.
        let present = |key: &str| file.get(&KeyPath::new(key)).is_some();
        let mut problems = Problems::new();
        config.validate_sections(&mut problems);
        config.validate_across(&present, &mut problems);
        for p in problems.iter() {
            diags.push(file.locate(p));
        }
        diags.finish();
        if diags.is_empty() {
            Ok(config)
        } else {
            Err(diags)
        }
    }

    /// The config as TOML that loads back to an equal `Config` (what `hastack import` writes).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            logging: Option<&'a LoggingConfig>,
            #[serde(skip_serializing_if = "Option::is_none")]
            control: Option<&'a ControlConfig>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cluster: Option<&'a ClusterConfig>,
            #[serde(skip_serializing_if = "Option::is_none")]
            quorum: Option<&'a QuorumConfig>,
            #[serde(skip_serializing_if = "Option::is_none")]
            resource_defaults: Option<&'a ResourceDefaults>,
            #[serde(skip_serializing_if = "Option::is_none")]
            policy: Option<&'a Policy>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            resource: &'a [Resource],
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            constraint: &'a [Constraint],
            #[serde(skip_serializing_if = "Option::is_none")]
            balancer: Option<&'a BalancerConfig>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dhcp: Option<&'a DhcpConfig>,
            #[serde(skip_serializing_if = "Option::is_none")]
            dns: Option<&'a DnsConfig>,
        }
        toml::to_string(&Out {
            logging: self.logging.as_ref(),
            control: self.control.as_ref(),
            cluster: self.cluster.as_ref(),
            quorum: self.quorum.as_ref(),
            resource_defaults: self.resource_defaults.as_ref(),
            policy: self.policy.as_ref(),
            resource: &self.resources,
            constraint: &self.constraints,
            balancer: self.balancer.as_ref(),
            dhcp: self.dhcp.as_ref(),
            dns: self.dns.as_ref(),
        })
    }

    /// The control socket of the cluster daemon, when `[control]` is present.
    pub fn control_socket(&self) -> Option<PathBuf> {
        self.control.as_ref().map(|c| c.socket.clone())
    }

    /// `[logging] level`, when present.
    pub fn log_level(&self) -> Option<&str> {
        self.logging.as_ref().map(|l| l.level.as_str())
    }

    /// `[logging] format`, when present.
    pub fn log_format(&self) -> Option<LogFormat> {
        self.logging.as_ref().and_then(|l| l.format)
    }

    /// The resource sections together, when the file has any of them.
    pub fn resources_config(&self) -> Option<ResourcesConfig> {
        let any = !self.resources.is_empty()
            || !self.constraints.is_empty()
            || self.resource_defaults.is_some()
            || self.policy.is_some();
        any.then(|| ResourcesConfig {
            resources: self.resources.clone(),
            constraints: self.constraints.clone(),
            defaults: self.resource_defaults.clone().unwrap_or_default(),
            policy: self.policy.clone().unwrap_or_default(),
        })
    }

    /// Runs every section's own validation and every cross-section check.
    pub fn validate(&self, problems: &mut Problems) {
        self.validate_sections(problems);
        let present = |key: &str| match key {
            "cluster" => self.cluster.is_some(),
            "balancer" => self.balancer.is_some(),
            "dhcp" => self.dhcp.is_some(),
            "dns" => self.dns.is_some(),
            _ => true,
        };
        self.validate_across(&present, problems);
    }

    fn validate_sections(&self, problems: &mut Problems) {
        if let Some(l) = &self.logging
            && let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&l.level)
        {
            problems.add(
                KeyPath::new("logging.level"),
                format!(
                    "\"{}\" is not a log filter like \"info\" or \"info,ha_membership=debug\": {e}",
                    l.level
                ),
            );
        }
        if let Some(c) = &self.control {
            let base = KeyPath::new("control");
            for (key, path) in [
                ("socket", &c.socket),
                ("balancer_socket", &c.balancer_socket),
                ("dhcp_dns_socket", &c.dhcp_dns_socket),
            ] {
                if !path.is_absolute() {
                    problems.add(base.key(key), format!("{key} must be an absolute path"));
                }
            }
            let metrics: Vec<(KeyPath, SockAddr)> = [
                ("metrics_cluster", c.metrics_cluster),
                ("metrics_balancer", c.metrics_balancer),
                ("metrics_dhcp_dns", c.metrics_dhcp_dns),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (base.key(k), v)))
            .collect();
            hastack_common::check_unique(
                problems,
                metrics.iter().map(|(p, v)| (p.clone(), v)),
                "metrics address",
            );
            let sockets = [
                (base.key("socket"), Shown(&c.socket)),
                (base.key("balancer_socket"), Shown(&c.balancer_socket)),
                (base.key("dhcp_dns_socket"), Shown(&c.dhcp_dns_socket)),
            ];
            hastack_common::check_unique(
                problems,
                sockets.iter().map(|(k, p)| (k.clone(), p)),
                "control socket",
            );
        }
        if let Some(c) = &self.cluster {
            c.validate(problems);
        }
        if let Some(q) = &self.quorum {
            q.validate(self.cluster.as_ref(), problems);
        } else if let Some(c) = &self.cluster {
            // No [quorum]: the defaults still have to suit the node list; point at [cluster],
            // since there is no [quorum] line to show.
            let mut defaults = Problems::new();
            QuorumConfig::default().validate(Some(c), &mut defaults);
            for p in defaults {
                let message = format!("{} (no [quorum] section: its defaults apply)", p.message);
                problems.push(Problem::new(KeyPath::new("cluster"), message));
            }
        }
        if let Some(rc) = self.resources_config() {
            rc.validate(problems);
        }
        if let Some(b) = &self.balancer {
            b.validate(problems);
        }
        if let Some(d) = &self.dhcp {
            d.validate(problems);
        }
        if let Some(d) = &self.dns {
            d.validate(problems);
        }
    }

    /// Checks that span sections; `present` says whether the file has a section at all (loaded
    /// or not), for the checks that complain about a missing one.
    fn validate_across(&self, present: &dyn Fn(&str) -> bool, problems: &mut Problems) {
        if self.quorum.is_some() && !present("cluster") {
            problems.add(
                KeyPath::new("quorum"),
                "[quorum] has no effect without a [cluster] section",
            );
        }
        let rc = self.resources_config();
        if let Some(rc) = &rc {
            self.check_resources_against_cluster(rc, present, problems);
        }
        let vips: Vec<(KeyPath, IpAddr)> = self
            .resources
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.vip.as_ref().map(|v| {
                    (
                        KeyPath::new("resource").index(i).key("vip").key("address"),
                        v.address.addr(),
                    )
                })
            })
            .collect();
        if let Some(b) = &self.balancer {
            check_binds_on_vips(b, &vips, problems);
        }
        if let Some(d) = &self.dhcp {
            if d.replication != Replication::None && !present("cluster") {
                problems.add(
                    KeyPath::new("dhcp.replication"),
                    "lease replication needs a [cluster] section to replicate over",
                );
            }
            if let Some(dns) = &self.dns
                && let Some(zone) = &dns.domain
            {
                let mut domains: Vec<(KeyPath, &str)> = Vec::new();
                if let Some(dd) = &d.domain {
                    domains.push((KeyPath::new("dhcp.domain"), dd));
                }
                for (i, s) in d.subnets.iter().enumerate() {
                    if let Some(sd) = &s.domain {
                        domains.push((KeyPath::new("dhcp.subnet").index(i).key("domain"), sd));
                    }
                }
                for (path, dom) in domains {
                    if !is_within(dom, zone) {
                        problems.push(
                                Problem::new(path, format!("lease names under {dom} would not resolve: [dns] is authoritative for {zone} only"))
                                    .with_related(KeyPath::new("dns.domain")),
                            );
                    }
                }
            }
        }
    }

    fn check_resources_against_cluster(
        &self,
        rc: &ResourcesConfig,
        present: &dyn Fn(&str) -> bool,
        problems: &mut Problems,
    ) {
        let Some(cluster) = &self.cluster else {
            if !rc.resources.is_empty() && !present("cluster") {
                problems.add(
                    KeyPath::new("resource").index(0),
                    "resources need a [cluster] section: nothing would run them",
                );
            }
            return;
        };
        for (path, name) in rc.node_references() {
            if cluster.node_by_name(name).is_none() {
                problems.add(
                    path,
                    format!("unknown node \"{name}\" (not in [[cluster.node]])"),
                );
            }
        }
        for (i, r) in rc.resources.iter().enumerate() {
            let base = KeyPath::new("resource").index(i);
            match r.kind() {
                Some(ResourceKind::Vip(v)) => {
                    let ip = v.address.addr();
                    check_vip_subnet(cluster, ip, base.key("vip").key("address"), problems);
                    if let Some((j, n)) = cluster
                        .nodes
                        .iter()
                        .enumerate()
                        .find(|(_, n)| n.links.iter().any(|l| l.addr() == ip))
                    {
                        problems.push(
                            Problem::new(
                                base.key("vip").key("address"),
                                format!("VIP {ip} is node {}'s own link address", n.name),
                            )
                            .with_related(KeyPath::new("cluster.node").index(j)),
                        );
                    }
                }
                Some(ResourceKind::Balancer(_)) if !present("balancer") => {
                    problems.add(
                        base.key("balancer"),
                        "a balancer resource needs a [balancer] section",
                    );
                }
                Some(ResourceKind::DhcpDns(_)) if !present("dhcp") && !present("dns") => {
                    problems.add(
                        base.key("dhcp_dns"),
                        "a dhcp_dns resource needs a [dhcp] or [dns] section",
                    );
                }
                _ => {}
            }
        }
    }
}

/// Displays a path; lets `check_unique` compare paths.
#[derive(PartialEq, Eq, Hash)]
struct Shown<'a>(&'a PathBuf);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

/// Reports a VIP that no node (or only some nodes) could hold on-link. Only links of the VIP's
/// family say where it can live: with none (an IPv6 VIP on IPv4-only cluster links) the
/// interface's own addresses decide at run time and there is nothing to check here.
fn check_vip_subnet(cluster: &ClusterConfig, ip: IpAddr, path: KeyPath, problems: &mut Problems) {
    let same_family = cluster
        .nodes
        .iter()
        .any(|n| n.links.iter().any(|l| l.addr().is_ipv4() == ip.is_ipv4()));
    if !same_family {
        return;
    }
    let missing: Vec<&str> = cluster
        .nodes
        .iter()
        .filter(|n| !node_has_subnet_for(n, &ip))
        .map(|n| n.name.as_str())
        .collect();
    if missing.len() == cluster.nodes.len() {
        let subnets = link_subnets(&cluster.nodes, ip.is_ipv4());
        problems.add(
            path,
            format!(
                "VIP {ip} is outside every node link subnet ({})",
                subnets.join(", ")
            ),
        );
    } else if !missing.is_empty() {
        problems.add(
            path,
            format!(
                "VIP {ip} is outside the link subnets of node(s) {}: they could hold it but not reach it",
                missing.join(", ")
            ),
        );
    }
}

fn node_has_subnet_for(n: &NodeConfig, ip: &IpAddr) -> bool {
    n.links.iter().any(|l| l.contains(ip))
}

fn link_subnets(nodes: &[NodeConfig], ipv4: bool) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in nodes {
        for l in n.links.iter().filter(|l| l.is_ipv4() == ipv4) {
            let s = l.network().to_string();
            if seen.insert(s.clone()) {
                out.push(s);
            }
        }
    }
    out
}

fn check_binds_on_vips(b: &BalancerConfig, vips: &[(KeyPath, IpAddr)], problems: &mut Problems) {
    for (i, f) in b.frontends.iter().enumerate() {
        if f.freebind {
            continue;
        }
        for (j, a) in f.bind.iter().enumerate() {
            if let Some((vp, _)) = vips.iter().find(|(_, v)| *v == a.0.ip()) {
                problems.push(
                    Problem::new(
                        KeyPath::new("balancer.frontend").index(i).key("bind").index(j),
                        format!("{} is a VIP, local on one node at a time: set freebind = true on frontend {}", a.0.ip(), f.name),
                    )
                    .with_related(vp.clone()),
                );
            }
        }
    }
}

/// Deserializes every section on its own; problems go to `diags`, the sections that loaded are kept.
fn assemble(file: &SourceFile<'_>, diags: &mut Diagnostics) -> Config {
    for (key, span) in file.top_level_keys() {
        if !SECTIONS.contains(&key.as_str()) {
            diags.push(file.at(
                span.start,
                format!(
                    "unknown section `{key}`, expected one of: {}",
                    SECTIONS.join(", ")
                ),
            ));
        }
    }
    let mut cfg = Config {
        logging: section(file, "logging", diags),
        control: section(file, "control", diags),
        cluster: section(file, "cluster", diags),
        quorum: section(file, "quorum", diags),
        resource_defaults: section(file, "resource_defaults", diags),
        policy: section(file, "policy", diags),
        balancer: section(file, "balancer", diags),
        dhcp: section(file, "dhcp", diags),
        dns: section(file, "dns", diags),
        ..Config::default()
    };
    // Resources and constraints: one element at a time. The four resource sections are only kept
    // together: without a resource that failed to load, every constraint naming it would look wrong.
    let resources = array_section::<Resource>(file, "resource", diags);
    let constraints = array_section::<Constraint>(file, "constraint", diags);
    let loaded = |key: &str, present: bool| present || file.get(&KeyPath::new(key)).is_none();
    let group_ok = loaded("resource_defaults", cfg.resource_defaults.is_some())
        && loaded("policy", cfg.policy.is_some());
    match (resources, constraints) {
        (Some(r), Some(c)) if group_ok => {
            cfg.resources = r;
            cfg.constraints = c;
        }
        _ => {
            cfg.resource_defaults = None;
            cfg.policy = None;
        }
    }
    cfg
}

fn section<T: DeserializeOwned>(
    file: &SourceFile<'_>,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    match file.deserialize::<T>(&KeyPath::new(key)) {
        Ok(v) => v,
        Err(errors) => {
            errors.into_iter().for_each(|e| diags.push(e));
            None
        }
    }
}

/// A top-level array of tables, element by element; `None` when any element failed.
fn array_section<T: DeserializeOwned>(
    file: &SourceFile<'_>,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<Vec<T>> {
    let path = KeyPath::new(key);
    let Some(n) = file.array_len(&path) else {
        if file.get(&path).is_none() {
            return Some(Vec::new());
        }
        // Present but not an array (`[resource]` instead of `[[resource]]`): serde says so.
        return section::<Vec<T>>(file, key, diags);
    };
    let mut out = Vec::with_capacity(n);
    let mut ok = true;
    for i in 0..n {
        match file.deserialize::<T>(&path.index(i)) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => ok = false,
            Err(errors) => {
                errors.into_iter().for_each(|e| diags.push(e));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Reads, parses and fully validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, Diagnostics> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics::unreadable(&name, e))?;
    Config::from_str_named(&name, &text)
}

/// `hastack config check FILE...`: prints every problem to stderr and `FILE: ok` to stdout.
/// Returns the exit code: 0 all good, 1 problems found, 2 a file could not be read.
pub fn check_files(paths: &[PathBuf]) -> i32 {
    let mut code = 0;
    for path in paths {
        match load(path) {
            Ok(_) => println!("{}: ok", path.display()),
            Err(d) => {
                eprint!("{d}");
                if d.unreadable {
                    code = 2;
                } else {
                    let n = d.items.len();
                    eprintln!(
                        "{}: {n} problem{}",
                        path.display(),
                        if n == 1 { "" } else { "s" }
                    );
                    code = code.max(1);
                }
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match Config::from_str_named("t.toml", text) {
            Ok(_) => Vec::new(),
            Err(d) => d.items.iter().map(|l| l.to_string()).collect(),
        }
    }

    #[test]
    fn an_empty_file_is_a_valid_config() {
        let c = Config::from_str_named("e.toml", "").unwrap();
        assert!(c.cluster.is_none() && c.resources_config().is_none());
    }

    #[test]
    fn unknown_sections_and_keys_are_located() {
        let p = problems("[logging]\nlevle = \"debug\"\n\n[clutser]\nname = \"x\"\n");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:2:1: unknown field `levle`"),
            "{p:?}"
        );
        assert!(
            p[1].starts_with("t.toml:4:2: unknown section `clutser`"),
            "{p:?}"
        );
    }

    #[test]
    fn a_type_error_in_one_section_does_not_hide_another() {
        let text = "[dhcp]\ninterfaces = \"eth1\"\n\n[logging]\nlevel = 3\n";
        let p = problems(text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("t.toml:2:14: "), "{p:?}");
        assert!(p[1].starts_with("t.toml:5:9: "), "{p:?}");
    }

    #[test]
    fn examples_round_trip_through_to_toml() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for name in ["three-node.toml", "two-node.toml"] {
            let original = load(&root.join(name)).unwrap_or_else(|d| panic!("{name}:\n{d}"));
            let text = original.to_toml().expect("serializes");
            let again = Config::from_str_named(name, &text)
                .unwrap_or_else(|d| panic!("{name} re-read:\n{d}\n{text}"));
            assert_eq!(again, original, "{name} changed in a round trip:\n{text}");
        }
    }

    #[test]
    fn a_resource_that_failed_to_load_does_not_make_its_constraints_look_wrong() {
        let text = "[[resource]]\nname = \"vip\"\nstickyness = 5\n[resource.vip]\naddress = \"198.18.0.100/24\"\ninterface = \"eth0\"\n\n[[constraint]]\nlocation = { resource = \"vip\", node = \"gw1\", score = 10 }\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:3:1: unknown field `stickyness`"),
            "{p:?}"
        );
    }

    #[test]
    fn a_table_where_an_array_of_tables_belongs_is_reported() {
        let p = problems("[resource]\nname = \"vip\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:1:1: invalid type: map, expected a sequence"),
            "{p:?}"
        );
    }

    #[test]
    fn quorum_defaults_are_checked_against_the_cluster_when_quorum_is_absent() {
        let text = "# pair\n[cluster]\nname = \"p\"\nauthkey = \"/k\"\n[[cluster.node]]\nid = 1\nname = \"a\"\nlinks = [\"198.18.0.11/24\"]\n[[cluster.node]]\nid = 2\nname = \"b\"\nlinks = [\"198.18.0.12/24\"]\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("t.toml:2:1: a two-node cluster loses quorum"),
            "{p:?}"
        );
        assert!(
            p[0].ends_with("(no [quorum] section: its defaults apply)"),
            "{p:?}"
        );
    }

    #[test]
    fn vips_are_checked_against_links_of_their_own_family() {
        let base = "[cluster]\nname = \"c\"\nauthkey = \"/k\"\n[[cluster.node]]\nid = 1\nname = \"a\"\nlinks = [\"198.18.0.11/24\"]\n[[resource]]\nname = \"v\"\n[resource.vip]\ninterface = \"eth0\"\n";
        assert_eq!(
            problems(&format!("{base}address = \"fd00:198:18::100/64\"\n")),
            Vec::<String>::new()
        );
        assert_eq!(
            problems(&format!("{base}address = \"198.18.0.100/24\"\n")),
            Vec::<String>::new()
        );
        let p = problems(&format!("{base}address = \"198.19.0.100/24\"\n"));
        assert_eq!(
            p,
            vec![
                "t.toml:12:11: VIP 198.19.0.100 is outside every node link subnet (198.18.0.0/24)"
                    .to_string()
            ]
        );
    }

    #[test]
    fn check_files_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&good, "[logging]\nlevel = \"debug\"\n").unwrap();
        std::fs::write(&bad, "[logging]\nlevel = \"debug\"\ncolour = true\n").unwrap();
        assert_eq!(check_files(std::slice::from_ref(&good)), 0);
        assert_eq!(check_files(&[good.clone(), bad]), 1);
        assert_eq!(check_files(&[good, dir.path().join("missing.toml")]), 2);
    }
}
