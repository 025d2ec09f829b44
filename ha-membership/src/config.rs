//! Serde types of the `[cluster]` and `[quorum]` sections (owned by the config work).
//!
//! ```toml
//! [cluster]
//! name = "gw"
//! authkey = "/etc/hastack/authkey"
//! port = 5405
//!
//! [[cluster.node]]
//! id = 1
//! name = "gw1"
//! links = ["198.18.0.11/24", "198.19.0.11/24"]   # link 0, link 1 (like knet links)
//!
//! [cluster.timing]
//! heartbeat_interval = "10ms"
//!
//! [quorum]
//! two_node = false
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use hastack_common::{
    Cidr, HostPort, HumanDuration, KeyPath, Problem, Problems, check_unique, names::check_name,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The UDP port cluster traffic uses unless `[cluster] port` says otherwise (Corosync's).
pub const DEFAULT_PORT: u16 = 5405;
/// The UDP port a witness listens on unless its address says otherwise.
pub const DEFAULT_WITNESS_PORT: u16 = 5406;
/// Where the shared key is read from unless `[cluster] authkey` says otherwise.
pub const DEFAULT_AUTHKEY: &str = "/etc/hastack/authkey";

/// `[cluster]`: who the members are and how they talk.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name; peers with another name are ignored.
    pub name: String,
    /// The UDP port of every link (default 5405).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The shared key file (default /etc/hastack/authkey); must not be group/world-readable.
    #[serde(default = "default_authkey")]
    pub authkey: PathBuf,
    /// Failure-detection and view-change timing.
    #[serde(default)]
    pub timing: TimingConfig,
    /// The static node list, `[[cluster.node]]`.
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeConfig>,
    /// An optional vote-only witness (the role of corosync-qnetd), `[cluster.witness]`.
    #[serde(default)]
    pub witness: Option<WitnessConfig>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

fn default_authkey() -> PathBuf {
    PathBuf::from(DEFAULT_AUTHKEY)
}

/// One `[[cluster.node]]`: a member of the static node list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique, non-zero node id (lower ids win ties).
    pub id: u32,
    /// Unique node name, used by constraints, standby and the CLI.
    pub name: String,
    /// The node's link addresses with their prefix, link 0 first; every node lists the same number.
    pub links: Vec<Cidr>,
    /// Votes this node brings to quorum (default 1; 0 makes it a non-voting member).
    #[serde(default = "default_votes")]
    pub votes: u32,
}

fn default_votes() -> u32 {
    1
}

/// `[cluster.witness]`: a vote-only tie-breaker reachable by every node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Where `hastack witness` listens (port defaults to 5406).
    pub address: HostPort,
    /// Votes the witness gives to the partition it sides with (default 1).
    #[serde(default = "default_votes")]
    pub votes: u32,
}

/// `[cluster.timing]`: heartbeat failure detection with indirect probes (SWIM/Lifeguard style).
/// Defaults aim at sub-100 ms detection on a LAN.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    /// How often each node sends a heartbeat on every link.
    pub heartbeat_interval: HumanDuration,
    /// Silence after which a peer is suspected and indirect probes start.
    pub suspect_timeout: HumanDuration,
    /// How many other members are asked whether they still see a suspect.
    pub indirect_probes: u32,
    /// How long the indirect probes and the vote may take before the suspect is declared failed.
    pub confirm_timeout: HumanDuration,
    /// Upper bound of the local-health multiplier: a late node stretches its timeouts up to this.
    pub max_health_multiplier: u32,
    /// How long a proposed view may wait for every member's acknowledgement.
    pub view_commit_timeout: HumanDuration,
    /// How often a node outside the view asks to join.
    pub join_interval: HumanDuration,
    /// How long a peer may go without a direct datagram (on any link) before it is left out of
    /// views although others still vouch for it (default 4 x suspect_timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_timeout: Option<HumanDuration>,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: HumanDuration::from_millis(10),
            suspect_timeout: HumanDuration::from_millis(30),
            indirect_probes: 2,
            confirm_timeout: HumanDuration::from_millis(20),
            max_health_multiplier: 8,
            view_commit_timeout: HumanDuration::from_millis(100),
            join_interval: HumanDuration::from_millis(50),
            partition_timeout: None,
        }
    }
}

/// Which node keeps quorum on an even split when `auto_tie_breaker` is on (votequorum's
/// `auto_tie_breaker_node`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TieBreaker {
    /// The partition holding the lowest node id wins (default).
    #[default]
    Lowest,
    /// The partition holding the highest node id wins.
    Highest,
    /// The partition holding the first listed node that is alive wins.
    Nodes(Vec<u32>),
}

impl<'de> Deserialize<'de> for TieBreaker {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TieBreaker;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"lowest\", \"highest\" or a list of node ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TieBreaker, E> {
                match v {
                    "lowest" => Ok(TieBreaker::Lowest),
                    "highest" => Ok(TieBreaker::Highest),
                    _ => Err(E::custom(format!(
                        "auto_tie_breaker_node \"{v}\": expected \"lowest\", \"highest\" or a list of node ids"
                    ))),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<TieBreaker, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<u32>()? {
                    ids.push(id);
                }
                Ok(TieBreaker::Nodes(ids))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for TieBreaker {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TieBreaker::Lowest => s.serialize_str("lowest"),
            TieBreaker::Highest => s.serialize_str("highest"),
            TieBreaker::Nodes(ids) => ids.serialize(s),
        }
    }
}

/// `[quorum]`: votequorum's options, with its meaning.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuorumConfig {
    /// Votes expected in a complete cluster; default the sum of node (and witness) votes.
    pub expected_votes: Option<u32>,
    /// Two-node mode: one vote is quorate once both nodes have been seen (implies wait_for_all).
    pub two_node: bool,
    /// Wait until every node has been seen once before becoming quorate the first time.
    /// Default: the value of `two_node`.
    pub wait_for_all: Option<bool>,
    /// Recompute expected votes downward after nodes have been gone for `last_man_standing_window`.
    pub last_man_standing: bool,
    /// How long a smaller membership must be stable before expected votes are lowered.
    pub last_man_standing_window: HumanDuration,
    /// On an even split, the partition holding `auto_tie_breaker_node` keeps quorum.
    pub auto_tie_breaker: bool,
    /// Which node breaks ties: "lowest" (default), "highest" or a list of node ids.
    pub auto_tie_breaker_node: TieBreaker,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        Self {
            expected_votes: None,
            two_node: false,
            wait_for_all: None,
            last_man_standing: false,
            last_man_standing_window: HumanDuration::from_secs(10),
            auto_tie_breaker: false,
            auto_tie_breaker_node: TieBreaker::Lowest,
        }
    }
}

impl QuorumConfig {
    /// Whether wait_for_all is in effect (explicit value, else implied by two_node).
    pub fn wait_for_all(&self) -> bool {
        self.wait_for_all.unwrap_or(self.two_node)
    }

    /// Expected votes in effect: the configured value, else the sum of configured votes.
    pub fn effective_expected_votes(&self, cluster: &ClusterConfig) -> u32 {
        self.expected_votes.unwrap_or_else(|| cluster.total_votes())
    }

    /// Reports every problem of `[quorum]`, including those that depend on `[cluster]`.
    pub fn validate(&self, cluster: Option<&ClusterConfig>, problems: &mut Problems) {
        let base = KeyPath::new("quorum");
        if self.two_node && self.wait_for_all == Some(false) {
            problems.add(
                base.key("wait_for_all"),
                "two_node implies wait_for_all: with wait_for_all = false each node of a fresh two-node cluster would become quorate alone",
            );
        }
        if self.expected_votes == Some(0) {
            problems.add(
                base.key("expected_votes"),
                "expected_votes must be at least 1",
            );
        }
        if self.last_man_standing && self.last_man_standing_window.is_zero() {
            problems.add(
                base.key("last_man_standing_window"),
                "last_man_standing_window must be longer than 0s",
            );
        }
        let Some(cluster) = cluster else {
            return;
        };
        let voters = cluster.nodes.len();
        if self.two_node && voters != 2 {
            problems.add(
                base.key("two_node"),
                format!("two_node = true needs exactly 2 nodes, [cluster] lists {voters}"),
            );
        }
        if self.two_node && cluster.witness.is_some() {
            problems.push(
                Problem::new(base.key("two_node"), "two_node cannot be combined with a witness: the witness is the tie-breaking vote")
                    .with_related(KeyPath::new("cluster.witness")),
            );
        }
        if voters == 2 && !self.two_node && cluster.witness.is_none() && !self.auto_tie_breaker {
            problems.add(
                base.clone(),
                "a two-node cluster loses quorum when either node fails: set two_node = true, auto_tie_breaker = true or add a [cluster.witness]",
            );
        }
        let total = cluster.total_votes();
        if let Some(expected) = self.expected_votes
            && expected != 0
            && expected < total
        {
            problems.add(
                    base.key("expected_votes"),
                    format!("expected_votes {expected} is less than the {total} votes configured: two partitions could both be quorate"),
                );
        }
        if let TieBreaker::Nodes(ids) = &self.auto_tie_breaker_node {
            let known: HashSet<u32> = cluster.nodes.iter().map(|n| n.id).collect();
            if ids.is_empty() {
                problems.add(
                    base.key("auto_tie_breaker_node"),
                    "auto_tie_breaker_node lists no node",
                );
            }
            for (i, id) in ids.iter().enumerate() {
                if !known.contains(id) {
                    problems.add(
                        base.key("auto_tie_breaker_node").index(i),
                        format!("node id {id} is not in [cluster]"),
                    );
                }
            }
        }
    }
}

impl ClusterConfig {
    /// A cluster without nodes, every other key at its default (for importers).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            port: DEFAULT_PORT,
            authkey: default_authkey(),
            timing: TimingConfig::default(),
            nodes: Vec::new(),
            witness: None,
        }
    }

    /// Sum of the votes of every node and the witness.
    pub fn total_votes(&self) -> u32 {
        let nodes: u32 = self
            .nodes
            .iter()
            .map(|n| n.votes)
            .fold(0, u32::saturating_add);
        nodes.saturating_add(self.witness.as_ref().map_or(0, |w| w.votes))
    }

    /// The node with this name.
    pub fn node_by_name(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node with this id.
    pub fn node_by_id(&self, id: u32) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node owning one of these local addresses (how a daemon finds out which node it is).
    pub fn node_with_address(&self, local: &[IpAddr]) -> Option<&NodeConfig> {
        self.nodes
            .iter()
            .find(|n| n.links.iter().any(|l| local.contains(&l.addr())))
    }

    /// Reports every problem of `[cluster]`.
    pub fn validate(&self, problems: &mut Problems) {
        let base = KeyPath::new("cluster");
        check_name(problems, base.key("name"), &self.name, "cluster name");
        if self.port == 0 {
            problems.add(base.key("port"), "port must be between 1 and 65535");
        }
        if self.authkey.as_os_str().is_empty() {
            problems.add(
                base.key("authkey"),
                "authkey is empty: give the path of the shared key file",
            );
        } else if !self.authkey.is_absolute() {
            problems.add(
                base.key("authkey"),
                format!(
                    "authkey \"{}\" must be an absolute path",
                    self.authkey.display()
                ),
            );
        }
        self.timing.validate(problems);

        let nodes = base.key("node");
        if self.nodes.is_empty() {
            problems.add(
                base.clone(),
                "[cluster] lists no node: add at least one [[cluster.node]]",
            );
        }
        let at = |i: usize, key: &str| nodes.index(i).key(key);
        check_unique(
            problems,
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (at(i, "id"), &n.id)),
            "node id",
        );
        check_unique(
            problems,
            self.nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (at(i, "name"), &n.name)),
            "node name",
        );
        let addrs: Vec<(KeyPath, IpAddr)> = self
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| {
                let links = nodes.index(i).key("links");
                n.links
                    .iter()
                    .enumerate()
                    .map(move |(j, l)| (links.index(j), l.addr()))
            })
            .collect();
        check_unique(
            problems,
            addrs.iter().map(|(p, a)| (p.clone(), a)),
            "link address",
        );

        let link_count = self.nodes.first().map_or(0, |n| n.links.len());
        for (i, node) in self.nodes.iter().enumerate() {
            if node.id == 0 {
                problems.add(at(i, "id"), "node id 0 is reserved: ids start at 1");
            } else if node.id == u32::MAX {
                problems.add(
                    at(i, "id"),
                    format!("node id {} is reserved for the witness", u32::MAX),
                );
            }
            check_name(problems, at(i, "name"), &node.name, "node name");
            if node.links.is_empty() {
                problems.add(
                    at(i, "links"),
                    format!("node {} has no link address", node.name),
                );
            } else if node.links.len() != link_count {
                problems.push(
                    Problem::new(
                        at(i, "links"),
                        format!("node {} has {} links but the first node has {link_count}: every node lists the same links", node.name, node.links.len()),
                    )
                    .with_related(at(0, "links")),
                );
            }
            if node.links.len() > 8 {
                problems.add(at(i, "links"), "at most 8 links per node");
            }
            for (j, link) in node.links.iter().enumerate() {
                let path = nodes.index(i).key("links").index(j);
                if link.is_network() && link.prefix_len() < if link.is_ipv4() { 32 } else { 128 } {
                    problems.add(
                        path.clone(),
                        format!("{link} is a subnet address, not a node address"),
                    );
                }
                if let (Some(first), true) =
                    (self.nodes.first().and_then(|n| n.links.get(j)), i > 0)
                    && first.is_ipv4() != link.is_ipv4()
                {
                    problems.push(
                        Problem::new(path, format!("link {j} mixes IPv4 and IPv6 across nodes"))
                            .with_related(nodes.index(0).key("links").index(j)),
                    );
                }
            }
            if node.votes > 255 {
                problems.add(at(i, "votes"), "votes must be at most 255");
            }
        }
        if !self.nodes.is_empty() && self.total_votes() == 0 {
            problems.add(
                nodes.clone(),
                "no node has a vote: the cluster could never be quorate",
            );
        }
        if let Some(w) = &self.witness {
            let wp = base.key("witness");
            if w.votes == 0 {
                problems.add(
                    wp.key("votes"),
                    "a witness with 0 votes breaks no tie: give it 1 vote",
                );
            }
            if w.address.port == Some(0) {
                problems.add(
                    wp.key("address"),
                    "witness port must be between 1 and 65535",
                );
            }
            if let Some((p, _)) = addrs.iter().find(|(_, a)| *a == w.address.ip) {
                problems.push(
                    Problem::new(
                        wp.key("address"),
                        "the witness must not run on a cluster node: it has to survive that node",
                    )
                    .with_related(p.clone()),
                );
            }
        }
    }
}

impl TimingConfig {
    /// `partition_timeout`, or its default of 4 x `suspect_timeout`.
    pub fn partition_timeout(&self) -> std::time::Duration {
        self.partition_timeout.map_or_else(|| self.suspect_timeout.get().saturating_mul(4), |d| d.get())
    }

    /// Reports timings that cannot work together.
    pub fn validate(&self, problems: &mut Problems) {
        let base = KeyPath::new("cluster.timing");
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("suspect_timeout", self.suspect_timeout),
            ("confirm_timeout", self.confirm_timeout),
            ("view_commit_timeout", self.view_commit_timeout),
            ("join_interval", self.join_interval),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                problems.add(base.key(key), format!("{key} must be longer than 0s"));
            }
        }
        if !self.heartbeat_interval.is_zero()
            && self.suspect_timeout.get() < self.heartbeat_interval.get().saturating_mul(2)
        {
            problems.add(
                base.key("suspect_timeout"),
                format!(
                    "suspect_timeout {} is less than two heartbeat intervals ({}): one lost heartbeat would raise a suspicion",
                    self.suspect_timeout, self.heartbeat_interval
                ),
            );
        }
        if let Some(p) = self.partition_timeout
            && p.get() <= self.suspect_timeout.get()
        {
            problems.add(
                base.key("partition_timeout"),
                format!(
                    "partition_timeout {p} must be longer than suspect_timeout ({}): a peer only one link-silence away would be cut out of views before it is even suspected",
                    self.suspect_timeout
                ),
            );
        }
        if self.max_health_multiplier == 0 {
            problems.add(
                base.key("max_health_multiplier"),
                "max_health_multiplier must be at least 1",
            );
        }
        if self.indirect_probes > 16 {
            problems.add(
                base.key("indirect_probes"),
                "indirect_probes must be at most 16",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(text: &str) -> ClusterConfig {
        toml::from_str(text).expect("test cluster parses")
    }

    const THREE: &str = r#"
name = "gw"
[[node]]
id = 1
name = "gw1"
links = ["198.18.0.11/24"]
[[node]]
id = 2
name = "gw2"
links = ["198.18.0.12/24"]
[[node]]
id = 3
name = "gw3"
links = ["198.18.0.13/24"]
"#;

    #[test]
    fn a_good_three_node_cluster_has_no_problem() {
        let c = cluster(THREE);
        let mut p = Problems::new();
        c.validate(&mut p);
        QuorumConfig::default().validate(Some(&c), &mut p);
        assert!(p.is_empty(), "{:?}", p);
        assert_eq!(c.total_votes(), 3);
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(
            c.node_with_address(&["198.18.0.12".parse().unwrap()])
                .map(|n| n.id),
            Some(2)
        );
    }

    #[test]
    fn duplicates_are_each_reported() {
        let text = THREE
            .replace("id = 2", "id = 1")
            .replace("\"gw3\"", "\"gw1\"")
            .replace("0.13/", "0.11/");
        let mut p = Problems::new();
        cluster(&text).validate(&mut p);
        let msgs: Vec<String> = p.iter().map(|x| x.to_string()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("cluster.node[1].id: duplicate node id 1")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("cluster.node[2].name: duplicate node name gw1")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("cluster.node[2].links[0]: duplicate link address")),
            "{msgs:?}"
        );
    }

    #[test]
    fn quorum_rules_follow_votequorum() {
        let two = cluster(&THREE[..THREE.find("[[node]]\nid = 3").unwrap()]);
        let mut p = Problems::new();
        QuorumConfig::default().validate(Some(&two), &mut p);
        assert_eq!(p.len(), 1, "a bare two-node cluster needs a tie-breaker");
        let q = QuorumConfig {
            two_node: true,
            ..Default::default()
        };
        assert!(q.wait_for_all());
        let mut p = Problems::new();
        q.validate(Some(&two), &mut p);
        assert!(p.is_empty(), "{p:?}");
        let q = QuorumConfig {
            two_node: true,
            wait_for_all: Some(false),
            expected_votes: Some(1),
            ..Default::default()
        };
        let mut p = Problems::new();
        q.validate(Some(&cluster(THREE)), &mut p);
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn constructors_match_the_serde_defaults() {
        assert_eq!(cluster("name = \"gw\""), ClusterConfig::new("gw"));
        assert_eq!(
            toml::from_str::<QuorumConfig>("").unwrap(),
            QuorumConfig::default()
        );
        assert_eq!(
            toml::from_str::<TimingConfig>("").unwrap(),
            TimingConfig::default()
        );
    }

    #[test]
    fn tie_breaker_accepts_names_and_lists() {
        #[derive(Deserialize)]
        struct T {
            t: TieBreaker,
        }
        assert_eq!(
            toml::from_str::<T>("t = \"highest\"").unwrap().t,
            TieBreaker::Highest
        );
        assert_eq!(
            toml::from_str::<T>("t = [3, 1]").unwrap().t,
            TieBreaker::Nodes(vec![3, 1])
        );
        assert!(toml::from_str::<T>("t = \"middle\"").is_err());
    }

    #[test]
    fn timing_that_would_suspect_on_one_lost_heartbeat_is_refused() {
        let t = TimingConfig {
            suspect_timeout: HumanDuration::from_millis(15),
            ..Default::default()
        };
        let mut p = Problems::new();
        t.validate(&mut p);
        assert_eq!(p.len(), 1);
        let mut p = Problems::new();
        TimingConfig::default().validate(&mut p);
        assert!(p.is_empty());
    }

    #[test]
    fn partition_timeout_defaults_to_four_suspect_timeouts_and_must_exceed_it() {
        #[derive(Deserialize)]
        struct T {
            timing: TimingConfig,
        }
        let t = toml::from_str::<T>("[timing]\nsuspect_timeout = \"50ms\"").unwrap().timing;
        assert_eq!(t.partition_timeout(), std::time::Duration::from_millis(200));
        let t = toml::from_str::<T>("[timing]\npartition_timeout = \"300ms\"").unwrap().timing;
        assert_eq!(t.partition_timeout(), std::time::Duration::from_millis(300));
        let mut p = Problems::new();
        t.validate(&mut p);
        assert!(p.is_empty());
        let t = toml::from_str::<T>("[timing]\npartition_timeout = \"30ms\"").unwrap().timing;
        let mut p = Problems::new();
        t.validate(&mut p);
        assert_eq!(p.len(), 1);
    }
}
