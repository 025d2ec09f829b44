//! Importer for corosync.conf (Corosync 2 and 3): `totem`, `nodelist` and `quorum` become
//! `[cluster]` and `[quorum]`.
//!
//! The file is parsed into its nested `name { key: value }` blocks first (corosync's own grammar:
//! one item per line, `#` comments at the start of a line, `key: value` or `key = value`), then each
//! block is mapped. What does not map (corosync's token timing, multicast, logging targets) is
//! listed with the reason; hastack's failure detection is its own (`[cluster.timing]`).

use std::net::IpAddr;

use ha_membership::config::{ClusterConfig, NodeConfig, QuorumConfig, TieBreaker, WitnessConfig};
use hastack_common::{Cidr, HostPort, HumanDuration, KeyPath};

use super::{Draft, Import, Kind, is_comment_or_blank};

/// One parsed item of a corosync.conf.
#[derive(Debug)]
enum Item {
    /// `key: value` on `line`.
    Pair { key: String, value: String, line: usize },
    /// `name { ... }` opened on `line`.
    Block { name: String, line: usize, items: Vec<Item> },
}

/// Converts a corosync config into hastack TOML.
pub fn convert(text: &str) -> Import {
    let mut draft = Draft::new(text, |l| !is_comment_or_blank(l));
    let items = parse(text, &mut draft);
    let mut c = Converter { draft, name: None, nodes: Vec::new(), port: None, quorum: None, witness: None, key_noted: false, structure: Vec::new() };
    for item in &items {
        match item {
            Item::Block { name, line, items } => match name.as_str() {
                "totem" => c.totem(*line, items),
                "nodelist" => c.nodelist(*line, items),
                "quorum" => c.quorum(*line, items),
                "logging" => c.logging(*line, items),
                "system" | "resources" | "nozzle" | "qb" => {
                    skip_block(&mut c.draft, *line, items, &format!("corosync's {name} section has no hastack equivalent"))
                }
                _ => skip_block(&mut c.draft, *line, items, &format!("unknown corosync section {name}")),
            },
            Item::Pair { key, line, .. } => c.draft.skip(*line, format!("{key} outside a section is not a corosync setting")),
        }
    }
    c.build()
}

/// Parses the block structure; malformed lines are listed and left out.
fn parse(text: &str, draft: &mut Draft) -> Vec<Item> {
    // A stack of open blocks; the bottom one is the file itself.
    let mut stack: Vec<(String, usize, Vec<Item>)> = vec![(String::new(), 0, Vec::new())];
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if is_comment_or_blank(line) {
            continue;
        }
        if line == "}" {
            if stack.len() > 1 {
                let (name, at, items) = stack.pop().unwrap_or_default();
                draft.consumed(n);
                if let Some(top) = stack.last_mut() {
                    top.2.push(Item::Block { name, line: at, items });
                }
            } else {
                draft.skip(n, "a closing brace without an open section");
            }
            continue;
        }
        if let Some(head) = line.strip_suffix('{') {
            let name = head.trim();
            if name.is_empty() || name.contains(char::is_whitespace) || name.contains(['{', '}', ':', '=']) {
                draft.skip(n, "not a corosync section header (name {)");
                // Still open a block so its closing brace matches; its contents are listed unknown.
                stack.push(("?".into(), n, Vec::new()));
            } else {
                stack.push((name.to_string(), n, Vec::new()));
            }
            continue;
        }
        let split = line.find(':').or_else(|| line.find('='));
        let Some(at) = split else {
            draft.skip(n, "not a corosync line (key: value, name { or })");
            continue;
        };
        let key = line[..at].trim();
        let mut value = line[at + 1..].trim();
        if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            value = &value[1..value.len() - 1];
        }
        if key.is_empty() || key.contains(char::is_whitespace) || line.contains(['{', '}']) {
            draft.skip(n, "not a corosync line (key: value, name { or })");
            continue;
        }
        if let Some(top) = stack.last_mut() {
            top.2.push(Item::Pair { key: key.to_string(), value: value.to_string(), line: n });
        }
    }
    // Sections left open at the end of the file: corosync refuses the file; convert what is there.
    while stack.len() > 1 {
        let (name, at, items) = stack.pop().unwrap_or_default();
        draft.note(at, format!("section {name} is not closed (corosync would refuse this file)"));
        if let Some(top) = stack.last_mut() {
            top.2.push(Item::Block { name, line: at, items });
        }
    }
    stack.pop().map(|s| s.2).unwrap_or_default()
}

/// Lists a whole block (header and everything inside) as not converted.
fn skip_block(draft: &mut Draft, line: usize, items: &[Item], reason: &str) {
    draft.skip(line, reason);
    for item in items {
        match item {
            Item::Pair { line, .. } => draft.skip(*line, reason),
            Item::Block { line, items, .. } => skip_block(draft, *line, items, reason),
        }
    }
}

fn boolean(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "on" | "true" => Some(true),
        "0" | "no" | "off" | "false" => Some(false),
        _ => None,
    }
}

/// A node gathered from `nodelist { node { ... } }`.
struct NodeDraft {
    line: usize,
    id: Option<(u32, usize)>,
    name: Option<(String, usize)>,
    votes: Option<(u32, usize)>,
    /// (ring number, address, line).
    rings: Vec<(u32, Cidr, usize)>,
}

struct Converter {
    draft: Draft,
    name: Option<(String, usize)>,
    nodes: Vec<NodeDraft>,
    port: Option<(u16, usize)>,
    /// The quorum section, with the lines of each key: (key, line).
    quorum: Option<(QuorumConfig, usize, Vec<(&'static str, usize)>)>,
    witness: Option<(WitnessConfig, Vec<usize>)>,
    /// Whether the note about the authkey was written.
    key_noted: bool,
    /// Lines that shape `[cluster]` without a key of their own (section headers, transport).
    structure: Vec<usize>,
}

impl Converter {
    fn totem(&mut self, line: usize, items: &[Item]) {
        self.structure.push(line);
        let timing = "corosync's token protocol timing does not map onto hastack's heartbeat failure detection: [cluster.timing] defaults detect a failure in under 100 ms";
        for item in items {
            match item {
                Item::Block { name, line, items } if name == "interface" => self.interface(*line, items),
                Item::Block { name, line, items } => {
                    skip_block(&mut self.draft, *line, items, &format!("totem {name} has no hastack equivalent"))
                }
                Item::Pair { key, value, line } => {
                    let line = *line;
                    match key.as_str() {
                        "cluster_name" => self.name = Some((value.clone(), line)),
                        "version" if value == "2" => self.structure.push(line),
                        "transport" => match value.as_str() {
                            "knet" | "udpu" => self.structure.push(line),
                            "udp" => {
                                self.structure.push(line);
                                self.draft.note(line, "multicast is not used: hastack sends to every node's link addresses");
                            }
                            _ => self.draft.skip(line, format!("unsupported value {value}")),
                        },
                        "crypto_cipher" | "crypto_hash" | "secauth" | "crypto_model" => {
                            self.structure.push(line);
                            if !std::mem::replace(&mut self.key_noted, true) {
                                self.draft.note(line, "every hastack datagram is authenticated: create /etc/hastack/authkey with `hastack keygen` (corosync's authkey is not reused)");
                            }
                        }
                        "ip_version" => self.structure.push(line),
                        "keyfile" | "key" => self.draft.skip(line, "corosync's key is not reused: create /etc/hastack/authkey with `hastack keygen`"),
                        "token" | "token_coefficient" | "token_retransmit" | "token_retransmits_before_loss_const" | "consensus"
                        | "join" | "merge" | "downcheck" | "fail_recv_const" | "seqno_unchanged_const" | "send_join"
                        | "hold" | "heartbeat_failures_allowed" | "max_network_delay" | "miss_count_const"
                        | "knet_pmtud_interval" | "knet_mtu" => self.draft.skip(line, timing),
                        "window_size" | "max_messages" | "netmtu" | "rrp_problem_count_timeout" | "rrp_problem_count_threshold"
                        | "rrp_token_expired_timeout" | "knet_compression_model" | "knet_compression_threshold"
                        | "knet_compression_level" | "clear_node_high_bit" | "block_unlisted_ips" | "cancel_token_hold_on_retransmit" => {
                            self.draft.skip(line, "no hastack equivalent")
                        }
                        "link_mode" | "rrp_mode" => self.draft.skip(line, "hastack uses every link at once; there is no link mode"),
                        "nodeid" => self.draft.skip(line, "totem nodeid is obsolete: give nodeid in the nodelist"),
                        _ => self.draft.skip(line, format!("unknown totem key {key}")),
                    }
                }
            }
        }
    }

    fn interface(&mut self, line: usize, items: &[Item]) {
        self.structure.push(line);
        for item in items {
            match item {
                Item::Block { line, items, name } => {
                    skip_block(&mut self.draft, *line, items, &format!("interface {name} has no hastack equivalent"))
                }
                Item::Pair { key, value, line } => {
                    let line = *line;
                    match key.as_str() {
                        "linknumber" | "ringnumber" => match value.parse::<u8>() {
                            Ok(_) => self.structure.push(line),
                            Err(_) => self.draft.skip(line, format!("unsupported value {value}")),
                        },
                        // Corosync 3 takes addresses from the nodelist; so does hastack.
                        "bindnetaddr" | "broadcast" => self.structure.push(line),
                        "mcastport" => match value.parse::<u16>() {
                            Ok(p) if p > 0 => match self.port {
                                None => {
                                    self.port = Some((p, line));
                                }
                                Some((q, _)) if q == p => self.structure.push(line),
                                Some((q, first)) => self.draft.skip(
                                    line,
                                    format!("hastack uses one port for every link: {q} (line {first}) is kept"),
                                ),
                            },
                            _ => self.draft.skip(line, format!("unsupported value {value}")),
                        },
                        "knet_transport" if value == "udp" => self.structure.push(line),
                        "knet_transport" => self.draft.skip(line, format!("unsupported value {value}: hastack links are UDP")),
                        "mcastaddr" | "ttl" => self.draft.skip(line, "multicast is not used: hastack sends to every node's link addresses"),
                        "knet_link_priority" => self.draft.skip(line, "hastack uses every link at once; links have no priority"),
                        "knet_ping_interval" | "knet_ping_timeout" | "knet_ping_precision" | "knet_pong_count" => self.draft.skip(
                            line,
                            "link state follows hastack's heartbeats ([cluster.timing]); knet ping timing does not map",
                        ),
                        _ => self.draft.skip(line, format!("unknown interface key {key}")),
                    }
                }
            }
        }
    }

    fn nodelist(&mut self, line: usize, items: &[Item]) {
        self.structure.push(line);
        for item in items {
            match item {
                Item::Block { name, line, items } if name == "node" => self.node(*line, items),
                Item::Block { name, line, items } => {
                    skip_block(&mut self.draft, *line, items, &format!("unknown nodelist section {name}"))
                }
                Item::Pair { key, line, .. } => self.draft.skip(*line, format!("unknown nodelist key {key}")),
            }
        }
    }

    fn node(&mut self, line: usize, items: &[Item]) {
        let mut n = NodeDraft { line, id: None, name: None, votes: None, rings: Vec::new() };
        for item in items {
            match item {
                Item::Block { name, line, items } => {
                    skip_block(&mut self.draft, *line, items, &format!("unknown node section {name}"))
                }
                Item::Pair { key, value, line } => {
                    let line = *line;
                    let ring = key.strip_prefix("ring").and_then(|r| r.strip_suffix("_addr")).and_then(|r| r.parse::<u32>().ok());
                    match (key.as_str(), ring) {
                        (_, Some(r)) => match value.parse::<IpAddr>() {
                            Ok(ip) => {
                                let (prefix, family) = if ip.is_ipv4() { (24, "IPv4") } else { (64, "IPv6") };
                                match format!("{ip}/{prefix}").parse::<Cidr>() {
                                    Ok(c) => {
                                        self.draft.note(line, format!("{key} {ip}: corosync.conf gives no prefix length, /{prefix} assumed for {family}; correct it to the link's subnet"));
                                        n.rings.push((r, c, line));
                                    }
                                    Err(e) => self.draft.skip(line, format!("unsupported value {value}: {e}")),
                                }
                            }
                            Err(_) => self.draft.skip(line, format!("unsupported value {value}: host names are not resolved; write the link address")),
                        },
                        ("nodeid", _) => match value.parse::<u32>() {
                            Ok(id) => n.id = Some((id, line)),
                            Err(_) => self.draft.skip(line, format!("unsupported value {value}")),
                        },
                        ("name", _) => n.name = Some((value.clone(), line)),
                        ("quorum_votes", _) => match value.parse::<u32>() {
                            Ok(v) => n.votes = Some((v, line)),
                            Err(_) => self.draft.skip(line, format!("unsupported value {value}")),
                        },
                        _ => self.draft.skip(line, format!("unknown node key {key}")),
                    }
                }
            }
        }
        self.nodes.push(n);
    }

    fn quorum(&mut self, line: usize, items: &[Item]) {
        let mut q = QuorumConfig::default();
        let mut keys: Vec<(&'static str, usize)> = Vec::new();
        let mut provider = false;
        for item in items {
            match item {
                Item::Block { name, line, items } if name == "device" => self.device(*line, items),
                Item::Block { name, line, items } => {
                    skip_block(&mut self.draft, *line, items, &format!("unknown quorum section {name}"))
                }
                Item::Pair { key, value, line } => {
                    let line = *line;
                    let flag = |draft: &mut Draft| {
                        let b = boolean(value);
                        if b.is_none() {
                            draft.skip(line, format!("unsupported value {value}: expected 0 or 1"));
                        }
                        b
                    };
                    match key.as_str() {
                        "provider" if value == "corosync_votequorum" => {
                            provider = true;
                            self.draft.consumed(line);
                        }
                        "provider" => self.draft.skip(line, format!("unsupported value {value}: hastack's quorum is votequorum's")),
                        "expected_votes" => match value.parse::<u32>() {
                            Ok(v) => {
                                q.expected_votes = Some(v);
                                keys.push(("expected_votes", line));
                            }
                            Err(_) => self.draft.skip(line, format!("unsupported value {value}")),
                        },
                        "two_node" => {
                            if let Some(b) = flag(&mut self.draft) {
                                q.two_node = b;
                                keys.push(("two_node", line));
                            }
                        }
                        "wait_for_all" => {
                            if let Some(b) = flag(&mut self.draft) {
                                q.wait_for_all = Some(b);
                                keys.push(("wait_for_all", line));
                            }
                        }
                        "last_man_standing" => {
                            if let Some(b) = flag(&mut self.draft) {
                                q.last_man_standing = b;
                                keys.push(("last_man_standing", line));
                            }
                        }
                        "last_man_standing_window" => match value.parse::<u64>() {
                            Ok(ms) => {
                                q.last_man_standing_window = HumanDuration::from_millis(ms);
                                keys.push(("last_man_standing_window", line));
                            }
                            Err(_) => self.draft.skip(line, format!("unsupported value {value}: expected milliseconds")),
                        },
                        "auto_tie_breaker" => {
                            if let Some(b) = flag(&mut self.draft) {
                                q.auto_tie_breaker = b;
                                keys.push(("auto_tie_breaker", line));
                            }
                        }
                        "auto_tie_breaker_node" => {
                            let parsed = match value.as_str() {
                                "lowest" => Some(TieBreaker::Lowest),
                                "highest" => Some(TieBreaker::Highest),
                                list => list
                                    .split_whitespace()
                                    .map(|id| id.parse::<u32>().ok())
                                    .collect::<Option<Vec<u32>>>()
                                    .filter(|ids| !ids.is_empty())
                                    .map(TieBreaker::Nodes),
                            };
                            match parsed {
                                Some(t) => {
                                    q.auto_tie_breaker_node = t;
                                    keys.push(("auto_tie_breaker_node", line));
                                }
                                None => self.draft.skip(line, format!("unsupported value {value}")),
                            }
                        }
                        "allow_downscale" | "expected_votes_tracking" | "ev_tracking" => {
                            self.draft.skip(line, "no hastack equivalent")
                        }
                        _ => self.draft.skip(line, format!("unknown quorum key {key}")),
                    }
                }
            }
        }
        if !provider {
            self.draft.note(line, "no provider: corosync_votequorum in this quorum section; votequorum's semantics are used");
        }
        self.quorum = Some((q, line, keys));
    }

    /// `quorum { device { model: net; net { host: ... } } }`: corosync-qnetd's role is hastack's
    /// witness (`hastack witness` on that host).
    fn device(&mut self, line: usize, items: &[Item]) {
        let mut votes: Option<(u32, usize)> = None;
        let mut host: Option<(HostPort, usize)> = None;
        let mut used = vec![line];
        let mut model_ok = false;
        for item in items {
            match item {
                Item::Pair { key, value, line } if key == "model" => {
                    if value == "net" {
                        model_ok = true;
                        used.push(*line);
                    } else {
                        self.draft.skip(*line, format!("unsupported value {value}: only model net (a witness) has a hastack equivalent"));
                    }
                }
                Item::Pair { key, value, line } if key == "votes" => match value.parse::<u32>() {
                    Ok(v) => votes = Some((v, *line)),
                    Err(_) => self.draft.skip(*line, format!("unsupported value {value}")),
                },
                Item::Pair { key, line, .. } => {
                    let reason = match key.as_str() {
                        "timeout" | "sync_timeout" => "the witness follows hastack's own timing",
                        _ => "no hastack equivalent",
                    };
                    self.draft.skip(*line, reason);
                }
                Item::Block { name, line: bl, items } if name == "net" => {
                    used.push(*bl);
                    for it in items {
                        match it {
                            Item::Pair { key, value, line } if key == "host" => match value.parse::<IpAddr>() {
                                Ok(ip) => host = Some((HostPort { ip, port: None }, *line)),
                                Err(_) => self.draft.skip(*line, format!("unsupported value {value}: host names are not resolved; write the witness address")),
                            },
                            Item::Pair { key, value, line } if key == "algorithm" => {
                                if value == "ffsplit" {
                                    used.push(*line);
                                } else {
                                    self.draft.skip(*line, format!("unsupported value {value}: the hastack witness decides like ffsplit"));
                                }
                            }
                            Item::Pair { key, value, line } if key == "port" => {
                                self.draft.skip(*line, format!("port {value} is corosync-qnetd's; `hastack witness` listens on 5406 unless [cluster.witness] address says otherwise"));
                            }
                            Item::Pair { line, key, .. } => {
                                let reason = match key.as_str() {
                                    "tls" => "the witness is authenticated with the cluster authkey, not TLS",
                                    "tie_breaker" => "set [quorum] auto_tie_breaker_node instead",
                                    _ => "no hastack equivalent",
                                };
                                self.draft.skip(*line, reason);
                            }
                            Item::Block { line, items, name } => {
                                skip_block(&mut self.draft, *line, items, &format!("unknown net section {name}"))
                            }
                        }
                    }
                }
                Item::Block { line, items, name } => {
                    skip_block(&mut self.draft, *line, items, &format!("device {name} has no hastack equivalent"))
                }
            }
        }
        match (host, model_ok) {
            (Some((address, hl)), true) => {
                used.push(hl);
                let mut w = WitnessConfig { address, votes: 1 };
                if let Some((v, vl)) = votes {
                    w.votes = v;
                    used.push(vl);
                }
                self.draft.note(hl, "run `hastack witness` on this host in place of corosync-qnetd (port 5406)");
                self.witness = Some((w, used));
            }
            _ => {
                for l in used {
                    self.draft.skip(l, "a quorum device converts to a witness only with model: net and a host address");
                }
                if let Some((_, vl)) = votes {
                    self.draft.skip(vl, "a quorum device converts to a witness only with model: net and a host address");
                }
            }
        }
    }

    fn logging(&mut self, line: usize, items: &[Item]) {
        let mut level: Option<usize> = None;
        let targets = "hastack logs to stderr (journald under systemd); see [logging] format";
        for item in items {
            match item {
                Item::Pair { key, value, line } if key == "debug" => match value.as_str() {
                    "on" => level = Some(*line),
                    "off" => self.draft.consumed(*line),
                    _ => self.draft.skip(*line, format!("unsupported value {value}")),
                },
                Item::Pair { key, line, .. } => {
                    let reason = match key.as_str() {
                        "to_syslog" | "to_stderr" | "to_logfile" | "logfile" | "syslog_facility" | "syslog_priority"
                        | "logfile_priority" | "timestamp" | "fileline" | "function_name" | "blackbox" => targets,
                        _ => "no hastack equivalent",
                    };
                    self.draft.skip(*line, reason);
                }
                Item::Block { line, items, .. } => {
                    skip_block(&mut self.draft, *line, items, "per-subsystem logging: use [logging] level filters like \"info,ha_membership=debug\"")
                }
            }
        }
        match level {
            Some(l) => {
                self.draft.config.logging = Some(crate::config::LoggingConfig { level: "debug".into(), format: None });
                self.draft.origin(l, &KeyPath::new("logging.level"));
                self.draft.origin(line, &KeyPath::new("logging"));
            }
            None => self.draft.skip(line, targets),
        }
    }

    fn build(mut self) -> Import {
        let cluster = KeyPath::new("cluster");
        if !self.nodes.is_empty() {
            let name = match &self.name {
                Some((n, l)) => {
                    self.draft.origin(*l, &cluster.key("name"));
                    n.clone()
                }
                None => {
                    let at = self.nodes.first().map_or(1, |n| n.line);
                    self.draft.note(at, "no totem cluster_name: the cluster is named \"cluster\"");
                    "cluster".to_string()
                }
            };
            let mut cfg = ClusterConfig::new(name);
            if let Some((p, l)) = self.port {
                cfg.port = p;
                self.draft.origin(l, &cluster.key("port"));
            }
            for n in std::mem::take(&mut self.nodes) {
                let i = cfg.nodes.len();
                let at = cluster.key("node").index(i);
                let Some((id, id_line)) = n.id else {
                    self.draft.skip(n.line, "a node without nodeid: corosync 3 needs one and hastack too");
                    for (_, _, l) in &n.rings {
                        self.draft.skip(*l, "its node has no nodeid");
                    }
                    for l in [n.name.as_ref().map(|x| x.1), n.votes.map(|x| x.1)].into_iter().flatten() {
                        self.draft.skip(l, "its node has no nodeid");
                    }
                    continue;
                };
                let mut rings = n.rings;
                rings.sort_by_key(|r| r.0);
                let name = n.name.as_ref().map_or_else(|| format!("node{id}"), |x| x.0.clone());
                let mut node = NodeConfig { id, name, links: Vec::new(), votes: 1 };
                self.draft.origin(n.line, &at);
                self.draft.origin(id_line, &at.key("id"));
                match &n.name {
                    Some((_, l)) => self.draft.origin(*l, &at.key("name")),
                    None => self.draft.note(n.line, format!("node {id} has no name: named node{id}")),
                }
                if let Some((v, l)) = n.votes {
                    node.votes = v;
                    self.draft.origin(l, &at.key("votes"));
                }
                for (j, (_, addr, l)) in rings.iter().enumerate() {
                    node.links.push(*addr);
                    self.draft.origin(*l, &at.key("links").index(j));
                }
                cfg.nodes.push(node);
            }
            if let Some((w, lines)) = self.witness.take() {
                cfg.witness = Some(w);
                for l in lines {
                    self.draft.origin(l, &cluster.key("witness"));
                }
            }
            for l in std::mem::take(&mut self.structure) {
                self.draft.origin(l, &cluster);
            }
            self.draft.config.cluster = Some(cfg);
        } else {
            for l in std::mem::take(&mut self.structure) {
                self.draft.skip(l, "no nodelist: hastack needs the static node list");
            }
            if let Some((_, l)) = self.name {
                self.draft.skip(l, "no nodelist: hastack needs the static node list");
            }
            if let Some((_, l)) = self.port {
                self.draft.skip(l, "no nodelist: hastack needs the static node list");
            }
            if let Some((_, lines)) = self.witness.take() {
                for l in lines {
                    self.draft.skip(l, "no nodelist: hastack needs the static node list");
                }
            }
        }
        if let Some((q, line, keys)) = self.quorum.take() {
            let base = KeyPath::new("quorum");
            self.draft.origin(line, &base);
            for (k, l) in keys {
                self.draft.origin(l, &base.key(k));
            }
            self.draft.config.quorum = Some(q);
        }
        self.draft.finish(Kind::Corosync)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn run(text: &str) -> (Config, Vec<(usize, String)>, String) {
        let r = convert(text);
        let c = Config::from_str_named("t.toml", &r.toml).unwrap_or_else(|d| panic!("{d}\n{}", r.toml));
        (c, r.unconverted.into_iter().map(|u| (u.line, u.reason)).collect(), r.toml)
    }

    const THREE: &str = "nodelist {\n node {\n  ring0_addr: 198.18.0.11\n  nodeid: 1\n }\n node {\n  ring0_addr: 198.18.0.12\n  nodeid: 2\n }\n node {\n  ring0_addr: 198.18.0.13\n  nodeid: 3\n }\n}\n";

    #[test]
    fn nested_blocks_parse_with_either_separator_and_names_default() {
        let (c, un, toml) = run(&format!("totem {{\n cluster_name = lab\n interface {{\n  mcastport: 5999\n }}\n}}\n{THREE}"));
        assert!(un.is_empty(), "{un:?}");
        let cl = c.cluster.unwrap();
        assert_eq!((cl.name.as_str(), cl.port), ("lab", 5999));
        assert_eq!(cl.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node1", "node2", "node3"]);
        assert!(toml.contains(": node 1 has no name: named node1"), "{toml}");
    }

    #[test]
    fn malformed_lines_are_listed_and_do_not_stop_the_rest() {
        let (c, un, toml) = run(&format!("}}\ngarbage line\n{THREE}totem {{\n"));
        assert_eq!(c.cluster.unwrap().nodes.len(), 3);
        assert_eq!(un[0], (1, "a closing brace without an open section".to_string()));
        assert!(un[1].1.starts_with("not a corosync line"), "{un:?}");
        assert!(toml.contains("section totem is not closed"), "{toml}");
    }

    #[test]
    fn a_quorum_device_becomes_the_witness() {
        let text = format!("{}quorum {{\n provider: corosync_votequorum\n device {{\n  model: net\n  votes: 1\n  net {{\n   host: 198.18.0.9\n   algorithm: ffsplit\n  }}\n }}\n}}\n", THREE.replace(" node {\n  ring0_addr: 198.18.0.13\n  nodeid: 3\n }\n", ""));
        let (c, un, _) = run(&text);
        assert!(un.is_empty(), "{un:?}");
        let w = c.cluster.unwrap().witness.unwrap();
        assert_eq!(w.address.to_string(), "198.18.0.9");
        assert!(!c.quorum.unwrap().two_node);
    }

    #[test]
    fn a_two_node_cluster_without_tie_breaker_is_taken_out_with_the_reason() {
        let two = THREE.replace(" node {\n  ring0_addr: 198.18.0.13\n  nodeid: 3\n }\n", "");
        let (c, un, _) = run(&format!("{two}quorum {{\n provider: corosync_votequorum\n}}\n"));
        assert!(c.cluster.is_none() && c.quorum.is_none());
        assert!(un.iter().any(|(_, r)| r.contains("a two-node cluster loses quorum")), "{un:?}");
        // Every node line is listed.
        for line in [1, 2, 3, 4, 6, 7, 8] {
            assert!(un.iter().any(|(l, _)| *l == line), "line {line} missing in {un:?}");
        }
    }

    #[test]
    fn nodes_without_id_and_host_names_are_listed() {
        let text = THREE.replace("  nodeid: 3\n", "").replace("198.18.0.12", "gw2.example");
        let (c, un, _) = run(&text);
        // Node 3 without nodeid is listed; node 2 lost its only link, so validation takes it out.
        assert!(c.cluster.is_some_and(|cl| cl.nodes.len() == 1));
        assert!(un.iter().any(|(_, r)| r.contains("host names are not resolved")), "{un:?}");
        assert!(un.iter().any(|(_, r)| r.contains("without nodeid")), "{un:?}");
    }
}
