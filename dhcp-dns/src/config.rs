//! Serde types of the `[dhcp]` and `[dns]` sections (owned by the config work), with dnsmasq's
//! (and Kea's, for replication) meaning.
//!
//! ```toml
//! [dhcp]
//! interfaces = ["eth1"]
//! replication = "sync"
//! [[dhcp.subnet]]
//! subnet = "198.18.0.0/24"
//! pool = ["198.18.0.150-198.18.0.199"]
//! routers = ["198.18.0.1"]
//! [[dhcp.host]]
//! mac = "52:54:00:00:00:31"
//! address = "198.18.0.31"
//! hostname = "worker1"
//!
//! [dns]
//! listen = ["198.18.0.100:53"]
//! domain = "lab.example"
//! servers = ["198.18.0.1"]
//! ```
//!
//! This module does not depend on the servers' own types: the daemon maps these onto them.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use hastack_common::names::{check_domain, check_hostname, is_domain};
use hastack_common::{
    Cidr, HexBytes, HostPort, HumanDuration, Ipv4Range, KeyPath, MacAddr, Problem, Problems,
    SockAddr, check_unique,
};
use serde::{Deserialize, Serialize};

/// Where leases are logged unless `[dhcp] lease_file` says otherwise.
pub const DEFAULT_LEASE_FILE: &str = "/var/lib/hastack/leases.log";

/// `[dhcp]`: the DHCPv4 server.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// Interfaces the server listens on.
    pub interfaces: Vec<String>,
    /// NAK requests for unknown leases and re-grant free addresses (default true; needed right
    /// after a failover).
    #[serde(default = "default_true")]
    pub authoritative: bool,
    /// The lease log (default /var/lib/hastack/leases.log).
    #[serde(default = "default_lease_file")]
    pub lease_file: PathBuf,
    /// Probe an address before offering it: off (default), arp or icmp.
    #[serde(default)]
    pub conflict_check: ConflictCheck,
    /// How long a conflict probe waits for an answer (default 200ms; never delays other clients).
    #[serde(default = "default_conflict_timeout")]
    pub conflict_check_timeout: HumanDuration,
    /// Lease replication to the other gateways: none (default), sync (before the ACK) or async.
    #[serde(default)]
    pub replication: Replication,
    /// async replication: the longest an acknowledged lease may stay unreplicated (default 100ms).
    #[serde(default = "default_replication_window")]
    pub replication_window: HumanDuration,
    /// sync replication: the longest an ACK waits for the peers before it is sent anyway (and the
    /// lease counted as not replicated); default 500ms.
    #[serde(default = "default_replication_timeout")]
    pub replication_timeout: HumanDuration,
    /// How long a gateway gathers its own lease records before multicasting them as one
    /// message, and the other gateways' records before persisting them as one group commit
    /// acknowledged with one message (default 3ms; 0s: each at once). A sync ACK waits at most
    /// twice this much longer.
    #[serde(default = "default_replication_gather")]
    pub replication_gather: HumanDuration,
    /// The cluster daemon's control socket the lease group is joined through (default: the
    /// `[control] socket`, else /run/hastack/cluster.sock).
    #[serde(default)]
    pub replication_socket: Option<PathBuf>,
    /// Answer DHCP only while this host holds this address (the gateways' VIP); with replication
    /// both gateways run, the one holding the VIP answers, the other keeps its leases current.
    #[serde(default)]
    pub follow_vip: Option<Ipv4Addr>,
    /// Domain for option 15 and lease names, unless a subnet sets its own.
    pub domain: Option<String>,
    /// How long an offered address is held for the client (default 30s).
    #[serde(default = "default_offer_hold")]
    pub offer_hold: HumanDuration,
    /// How long a declined address is kept out of the pool (default 10m).
    #[serde(default = "default_quarantine")]
    pub decline_quarantine: HumanDuration,
    /// `[[dhcp.subnet]]`.
    #[serde(rename = "subnet", default)]
    pub subnets: Vec<Subnet>,
    /// `[[dhcp.host]]` reservations.
    #[serde(rename = "host", default)]
    pub hosts: Vec<HostReservation>,
}

fn default_true() -> bool {
    true
}
fn default_lease_file() -> PathBuf {
    PathBuf::from(DEFAULT_LEASE_FILE)
}
fn default_conflict_timeout() -> HumanDuration {
    HumanDuration::from_millis(200)
}
fn default_replication_window() -> HumanDuration {
    HumanDuration::from_millis(100)
}
fn default_replication_timeout() -> HumanDuration {
    HumanDuration::from_millis(500)
}
fn default_replication_gather() -> HumanDuration {
    HumanDuration::from_millis(3)
}
fn default_offer_hold() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_quarantine() -> HumanDuration {
    HumanDuration::from_secs(600)
}

/// How an address is probed before it is offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictCheck {
    /// No probe (default).
    #[default]
    Off,
    /// ARP request on the client's link.
    Arp,
    /// ICMP echo (works through relays).
    Icmp,
}

/// How leases reach the other gateways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Replication {
    /// Leases stay on this node (default).
    #[default]
    None,
    /// Every lease is delivered to the cluster before the ACK is sent.
    Sync,
    /// Leases are delivered after the ACK, within `replication_window`.
    Async,
}

/// One `[[dhcp.subnet]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    /// The network, host bits zero: `198.18.0.0/24`.
    pub subnet: Cidr,
    /// Dynamic ranges, `"198.18.0.150-198.18.0.199"`; none = reservations only.
    #[serde(default)]
    pub pool: Vec<Ipv4Range>,
    /// Server identifier (option 54); default this node's address on the subnet (use the VIP in HA).
    pub server_id: Option<Ipv4Addr>,
    /// Probe before offering in this subnet: off, arp or icmp (default `[dhcp] conflict_check`).
    #[serde(default)]
    pub conflict_check: Option<ConflictCheck>,
    /// Lease time (default 1h).
    #[serde(default = "default_lease_time")]
    pub lease_time: HumanDuration,
    /// T1 (default 50% of the lease).
    pub renew_time: Option<HumanDuration>,
    /// T2 (default 87.5% of the lease).
    pub rebind_time: Option<HumanDuration>,
    /// Routers (option 3; the first also becomes the default route in option 121).
    #[serde(default)]
    pub routers: Vec<Ipv4Addr>,
    /// DNS servers (option 6).
    #[serde(default)]
    pub dns_servers: Vec<Ipv4Addr>,
    /// Domain (option 15) and where lease names are published; default `[dhcp] domain`.
    pub domain: Option<String>,
    /// NTP servers (option 42).
    #[serde(default)]
    pub ntp_servers: Vec<Ipv4Addr>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Classless static routes (option 121).
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
    /// Other options by number, `[[dhcp.subnet.option]]`.
    #[serde(rename = "option", default)]
    pub options: Vec<DhcpOption>,
}

fn default_lease_time() -> HumanDuration {
    HumanDuration::from_secs(3600)
}

/// `{ destination = "10.0.0.0/8", gateway = "198.18.0.1" }`: one classless static route.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// Destination network.
    pub destination: Cidr,
    /// Next hop, inside the subnet.
    pub gateway: Ipv4Addr,
}

/// `[[dhcp.subnet.option]]`: a numbered option with exactly one typed value.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpOption {
    /// Option code, 1-254.
    pub code: u8,
    /// A string value.
    pub text: Option<String>,
    /// One IPv4 address.
    pub ip: Option<Ipv4Addr>,
    /// A list of IPv4 addresses.
    pub ips: Option<Vec<Ipv4Addr>>,
    /// A one-byte integer.
    pub u8: Option<u8>,
    /// A two-byte integer.
    pub u16: Option<u16>,
    /// A four-byte integer.
    pub u32: Option<u32>,
    /// A boolean (one byte, 0 or 1).
    pub bool: Option<bool>,
    /// Raw bytes in hex.
    pub hex: Option<HexBytes>,
}

impl DhcpOption {
    /// The option's payload bytes; `None` unless exactly one value is given.
    pub fn payload(&self) -> Option<Vec<u8>> {
        let mut values: Vec<Vec<u8>> = Vec::new();
        if let Some(t) = &self.text {
            values.push(t.as_bytes().to_vec());
        }
        if let Some(a) = self.ip {
            values.push(a.octets().to_vec());
        }
        if let Some(v) = &self.ips {
            values.push(v.iter().flat_map(|a| a.octets()).collect());
        }
        if let Some(x) = self.u8 {
            values.push(vec![x]);
        }
        if let Some(x) = self.u16 {
            values.push(x.to_be_bytes().to_vec());
        }
        if let Some(x) = self.u32 {
            values.push(x.to_be_bytes().to_vec());
        }
        if let Some(x) = self.bool {
            values.push(vec![u8::from(x)]);
        }
        if let Some(h) = &self.hex {
            values.push(h.0.clone());
        }
        if values.len() == 1 {
            values.pop()
        } else {
            None
        }
    }
}

/// Options that have their own key and may not also be set by number.
const STRUCTURED_OPTIONS: [(u8, &str); 11] = [
    (1, "the subnet's prefix"),
    (3, "routers"),
    (6, "dns_servers"),
    (15, "domain"),
    (26, "mtu"),
    (42, "ntp_servers"),
    (51, "lease_time"),
    (54, "server_id"),
    (58, "renew_time"),
    (59, "rebind_time"),
    (121, "routes"),
];

/// One `[[dhcp.host]]`: a fixed address (and name) for one client.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostReservation {
    /// Match by hardware address.
    pub mac: Option<MacAddr>,
    /// Match by client identifier (option 61), in hex.
    pub client_id: Option<HexBytes>,
    /// The address always given to it.
    pub address: Ipv4Addr,
    /// Its name; wins over the name the client sends.
    pub hostname: Option<String>,
    /// Lease time for this client (default: its subnet's).
    pub lease_time: Option<HumanDuration>,
}

/// `[dns]`: the DNS server: authoritative for the cluster domain, caching forwarder for the rest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Addresses to serve on, UDP and TCP.
    pub listen: Vec<SockAddr>,
    /// The cluster domain this server is authoritative for (leases, hosts, records).
    pub domain: Option<String>,
    /// TTL of local answers (default 10s; dnsmasq's 0 defeats client caches).
    #[serde(default = "default_local_ttl")]
    pub local_ttl: HumanDuration,
    /// TTL of negative answers from the local zone, and of upstream negative answers without SOA
    /// (default 10s).
    #[serde(default = "default_neg_ttl")]
    pub neg_ttl: HumanDuration,
    /// Read /etc/hosts (default true).
    #[serde(default = "default_true")]
    pub read_etc_hosts: bool,
    /// More hosts files (dnsmasq's addn-hosts).
    #[serde(default)]
    pub hosts_files: Vec<PathBuf>,
    /// Add `domain` to plain names from hosts files (dnsmasq's expand-hosts).
    #[serde(default)]
    pub expand_hosts: bool,
    /// Networks whose reverse names (PTR) are answered locally; default the DHCP subnets.
    #[serde(default)]
    pub reverse_networks: Vec<Cidr>,
    /// Static records, `[[dns.record]]`.
    #[serde(rename = "record", default)]
    pub records: Vec<DnsRecord>,
    /// A domain and all its subdomains answer fixed addresses, `[[dns.wildcard]]`.
    #[serde(rename = "wildcard", default)]
    pub wildcards: Vec<Wildcard>,
    /// Upstream servers for everything not local (port 53 unless given).
    #[serde(default)]
    pub servers: Vec<HostPort>,
    /// Upstreams for particular domains, `[[dns.forward]]`.
    #[serde(rename = "forward", default)]
    pub forwards: Vec<Forward>,
    /// How long one upstream query may take before another upstream is tried (default 2s).
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout: HumanDuration,
    /// Most queries forwarded at once (default 65536; not dnsmasq's 150).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u32,
    /// Cache entries (default 10000; 0 disables the cache).
    #[serde(default = "default_cache_size")]
    pub cache_size: u32,
    /// Drop upstream answers that put private addresses under public names (default true).
    #[serde(default = "default_true")]
    pub rebind_protection: bool,
    /// Domains allowed to answer private addresses despite rebind protection.
    #[serde(default)]
    pub rebind_allow: Vec<String>,
    /// Per-client rate limit (none by default).
    pub rate_limit: Option<RateLimit>,
    /// Under load, how long a UDP answer may wait so queries share a wake-up (default 0s: off).
    #[serde(default = "default_udp_coalesce")]
    pub udp_coalesce: HumanDuration,
}

fn default_udp_coalesce() -> HumanDuration {
    HumanDuration(crate::server::DEFAULT_UDP_COALESCE)
}

fn default_local_ttl() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_neg_ttl() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_forward_timeout() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_max_inflight() -> u32 {
    65_536
}
fn default_cache_size() -> u32 {
    10_000
}

/// A static record type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Alias: `target.example.`.
    Cname,
    /// Reverse pointer.
    Ptr,
    /// Text.
    Txt,
    /// Mail exchanger: `"10 mail.example."`.
    Mx,
    /// Service: `"priority weight port target"`.
    Srv,
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Ptr => "PTR",
            RecordType::Txt => "TXT",
            RecordType::Mx => "MX",
            RecordType::Srv => "SRV",
        })
    }
}

/// One `[[dns.record]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    /// Name: a plain name is under `[dns] domain`; a name ending in `.` is absolute.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub kind: RecordType,
    /// Record data in zone-file form.
    pub value: String,
    /// TTL (default `local_ttl`).
    pub ttl: Option<HumanDuration>,
}

/// One `[[dns.wildcard]]`: dnsmasq's `address=/domain/ip`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Wildcard {
    /// The domain; it and every name below it match.
    pub domain: String,
    /// Addresses answered (A and AAAA by family).
    pub addresses: Vec<IpAddr>,
}

/// One `[[dns.forward]]`: dnsmasq's `server=/domain/ip`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// The domain whose names go to these servers.
    pub domain: String,
    /// Upstreams (port 53 unless given).
    pub servers: Vec<HostPort>,
}

/// `rate_limit = { queries_per_second, burst }`: a token bucket per client address.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained queries per second per client.
    pub queries_per_second: u32,
    /// Bucket size (default twice the rate).
    pub burst: Option<u32>,
}

impl Subnet {
    /// A subnet with no pool or options, every key at its default (for importers).
    pub fn new(subnet: Cidr) -> Self {
        Self {
            subnet,
            pool: Vec::new(),
            server_id: None,
            conflict_check: None,
            lease_time: default_lease_time(),
            renew_time: None,
            rebind_time: None,
            routers: Vec::new(),
            dns_servers: Vec::new(),
            domain: None,
            ntp_servers: Vec::new(),
            mtu: None,
            routes: Vec::new(),
            options: Vec::new(),
        }
    }
}

impl DnsConfig {
    /// A DNS server on `listen` with every other key at its default (for importers).
    pub fn new(listen: Vec<SockAddr>) -> Self {
        Self {
            listen,
            domain: None,
            local_ttl: default_local_ttl(),
            neg_ttl: default_neg_ttl(),
            read_etc_hosts: true,
            hosts_files: Vec::new(),
            expand_hosts: false,
            reverse_networks: Vec::new(),
            records: Vec::new(),
            wildcards: Vec::new(),
            servers: Vec::new(),
            forwards: Vec::new(),
            forward_timeout: default_forward_timeout(),
            max_inflight: default_max_inflight(),
            cache_size: default_cache_size(),
            rebind_protection: true,
            rebind_allow: Vec::new(),
            rate_limit: None,
            udp_coalesce: default_udp_coalesce(),
        }
    }
}

impl DhcpConfig {
    /// A DHCP server on `interfaces` without subnets, every key at its default (for importers).
    pub fn new(interfaces: Vec<String>) -> Self {
        Self {
            interfaces,
            authoritative: true,
            lease_file: default_lease_file(),
            conflict_check: ConflictCheck::Off,
            conflict_check_timeout: default_conflict_timeout(),
            replication: Replication::None,
            replication_window: default_replication_window(),
            replication_timeout: default_replication_timeout(),
            replication_gather: default_replication_gather(),
            replication_socket: None,
            follow_vip: None,
            domain: None,
            offer_hold: default_offer_hold(),
            decline_quarantine: default_quarantine(),
            subnets: Vec::new(),
            hosts: Vec::new(),
        }
    }

    /// The domain lease names of `subnet` are published under.
    pub fn domain_of<'a>(&'a self, subnet: &'a Subnet) -> Option<&'a str> {
        subnet.domain.as_deref().or(self.domain.as_deref())
    }

    /// Reports every problem of `[dhcp]`.
    pub fn validate(&self, problems: &mut Problems) {
        let base = KeyPath::new("dhcp");
        if self.interfaces.is_empty() {
            problems.add(
                base.key("interfaces"),
                "interfaces is empty: name the interfaces to serve DHCP on",
            );
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                problems.add(
                    base.key("interfaces").index(i),
                    format!("\"{name}\" is not a Linux interface name"),
                );
            }
        }
        if !self.lease_file.is_absolute() {
            problems.add(
                base.key("lease_file"),
                "lease_file must be an absolute path",
            );
        }
        if self.conflict_check != ConflictCheck::Off && self.conflict_check_timeout.is_zero() {
            problems.add(
                base.key("conflict_check_timeout"),
                "conflict_check_timeout must be longer than 0s",
            );
        }
        let bound = match self.replication {
            Replication::None => None,
            Replication::Sync => Some(("replication_timeout", self.replication_timeout.0)),
            _ => Some(("replication_window", self.replication_window.0)),
        };
        if let Some((key, _)) = bound.filter(|(_, b)| !b.is_zero() && self.replication_gather.0 * 4 > *b) {
            problems.add(
                base.key("replication_gather"),
                format!("replication_gather must be at most a quarter of {key} (the acks would come too late)"),
            );
        }
        if self.replication == Replication::Async && self.replication_window.is_zero() {
            problems.add(
                base.key("replication_window"),
                "replication_window must be longer than 0s with async replication",
            );
        }
        if self.replication == Replication::Sync && self.replication_timeout.is_zero() {
            problems.add(
                base.key("replication_timeout"),
                "replication_timeout must be longer than 0s with sync replication",
            );
        }
        if self.replication_socket.as_ref().is_some_and(|p| !p.is_absolute()) {
            problems.add(base.key("replication_socket"), "replication_socket must be an absolute path");
        }
        if let Some(d) = &self.domain {
            check_domain(problems, base.key("domain"), d);
        }
        if self.subnets.is_empty() {
            problems.add(base.clone(), "[dhcp] has no subnet: add a [[dhcp.subnet]]");
        }
        let sp = base.key("subnet");
        let mut pools: Vec<(KeyPath, Ipv4Range)> = Vec::new();
        for (i, s) in self.subnets.iter().enumerate() {
            validate_subnet(s, sp.index(i), &mut pools, problems);
        }
        for (i, a) in self.subnets.iter().enumerate() {
            for b in &self.subnets[..i] {
                if a.subnet.0.contains(&b.subnet.network().network())
                    || b.subnet.0.contains(&a.subnet.network().network())
                {
                    problems.add(
                        sp.index(i).key("subnet"),
                        format!("subnet {} overlaps subnet {}", a.subnet, b.subnet),
                    );
                    break;
                }
            }
        }
        for (i, (path, range)) in pools.iter().enumerate() {
            if let Some((first, other)) = pools[..i].iter().find(|(_, r)| r.overlaps(range)) {
                problems.push(
                    Problem::new(
                        path.clone(),
                        format!("range {range} overlaps range {other}"),
                    )
                    .with_related(first.clone()),
                );
            }
        }
        self.validate_hosts(problems);
    }

    fn validate_hosts(&self, problems: &mut Problems) {
        let hp = KeyPath::new("dhcp.host");
        let at = |i: usize, k: &str| hp.index(i).key(k);
        check_unique(
            problems,
            self.hosts
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.mac.as_ref().map(|m| (at(i, "mac"), m))),
            "reservation for MAC",
        );
        check_unique(
            problems,
            self.hosts
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.client_id.as_ref().map(|c| (at(i, "client_id"), c))),
            "reservation for client id",
        );
        check_unique(
            problems,
            self.hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (at(i, "address"), &h.address)),
            "reserved address",
        );
        check_unique(
            problems,
            self.hosts
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.hostname.as_ref().map(|n| (at(i, "hostname"), n))),
            "reserved host name",
        );
        for (i, h) in self.hosts.iter().enumerate() {
            if h.mac.is_none() && h.client_id.is_none() {
                problems.add(
                    hp.index(i),
                    "a reservation needs a mac or a client_id to match the client",
                );
            }
            if let Some(n) = &h.hostname {
                check_hostname(problems, at(i, "hostname"), n);
            }
            let ip = IpAddr::V4(h.address);
            match self.subnets.iter().find(|s| s.subnet.contains(&ip)) {
                None => problems.add(
                    at(i, "address"),
                    format!("reserved address {} is in no [[dhcp.subnet]]", h.address),
                ),
                Some(s) => {
                    if is_network_or_broadcast(s, h.address) {
                        problems.add(
                            at(i, "address"),
                            format!(
                                "{} is the network or broadcast address of {}",
                                h.address, s.subnet
                            ),
                        );
                    }
                }
            }
            if let Some(t) = h.lease_time
                && t.get().as_secs() < 10
            {
                problems.add(at(i, "lease_time"), "lease_time must be at least 10s");
            }
        }
    }
}

fn is_network_or_broadcast(s: &Subnet, a: Ipv4Addr) -> bool {
    match s.subnet.0 {
        ipnet::IpNet::V4(n) if n.prefix_len() < 31 => a == n.network() || a == n.broadcast(),
        _ => false,
    }
}

fn validate_subnet(
    s: &Subnet,
    base: KeyPath,
    pools: &mut Vec<(KeyPath, Ipv4Range)>,
    problems: &mut Problems,
) {
    let sub = s.subnet;
    if !sub.is_ipv4() {
        problems.add(
            base.key("subnet"),
            format!("{sub} is not IPv4: the DHCP server speaks DHCPv4 only"),
        );
        return;
    }
    if !sub.is_network() {
        problems.add(
            base.key("subnet"),
            format!("{sub} has host bits set: did you mean {}?", sub.network()),
        );
    }
    let inside = |a: Ipv4Addr| sub.contains(&IpAddr::V4(a));
    for (j, r) in s.pool.iter().enumerate() {
        let p = base.key("pool").index(j);
        if !inside(r.start) || !inside(r.end) {
            problems.add(
                p.clone(),
                format!("range {r} is outside subnet {}", sub.network()),
            );
        } else if is_network_or_broadcast(s, r.start) || is_network_or_broadcast(s, r.end) {
            problems.add(
                p.clone(),
                format!(
                    "range {r} includes the network or broadcast address of {}",
                    sub.network()
                ),
            );
        }
        pools.push((p, *r));
    }
    for (j, r) in s.routers.iter().enumerate() {
        if !inside(*r) {
            problems.add(
                base.key("routers").index(j),
                format!("router {r} is outside subnet {}", sub.network()),
            );
        }
    }
    if let Some(id) = s.server_id
        && (id.is_unspecified() || id.is_broadcast())
    {
        problems.add(
            base.key("server_id"),
            format!("{id} cannot be a server identifier"),
        );
    }
    let lease = s.lease_time.get();
    if lease.as_secs() < 10 {
        problems.add(base.key("lease_time"), "lease_time must be at least 10s");
    }
    let t1 = s.renew_time.map(|d| d.get()).unwrap_or(lease / 2);
    let t2 = s.rebind_time.map(|d| d.get()).unwrap_or(lease / 8 * 7);
    if s.renew_time.is_some() && t1 >= t2 {
        problems.add(
            base.key("renew_time"),
            "renew_time (T1) must be shorter than rebind_time (T2)",
        );
    }
    if s.rebind_time.is_some() && t2 >= lease {
        problems.add(
            base.key("rebind_time"),
            "rebind_time (T2) must be shorter than lease_time",
        );
    }
    if let Some(d) = &s.domain {
        check_domain(problems, base.key("domain"), d);
    }
    if let Some(m) = s.mtu
        && m < 68
    {
        problems.add(base.key("mtu"), "mtu must be at least 68 (RFC 2132)");
    }
    for (j, r) in s.routes.iter().enumerate() {
        let p = base.key("routes").index(j);
        if !r.destination.is_ipv4() {
            problems.add(p.key("destination"), "route destination must be IPv4");
        } else if !r.destination.is_network() {
            problems.add(
                p.key("destination"),
                format!(
                    "{} has host bits set: did you mean {}?",
                    r.destination,
                    r.destination.network()
                ),
            );
        }
        if !inside(r.gateway) {
            problems.add(
                p.key("gateway"),
                format!("gateway {} is outside subnet {}", r.gateway, sub.network()),
            );
        }
    }
    let mut codes = HashSet::new();
    for (j, o) in s.options.iter().enumerate() {
        let p = base.key("option").index(j);
        if o.code == 0 || o.code == 255 {
            problems.add(
                p.key("code"),
                format!("option code {} is reserved (pad/end)", o.code),
            );
        } else if let Some((_, key)) = STRUCTURED_OPTIONS.iter().find(|(c, _)| *c == o.code) {
            problems.add(
                p.key("code"),
                format!("option {} is set with {key}, not by number", o.code),
            );
        }
        if !codes.insert(o.code) {
            problems.add(p.key("code"), format!("option {} is given twice", o.code));
        }
        match o.payload() {
            None => problems.add(
                p.clone(),
                "an option needs exactly one of text, ip, ips, u8, u16, u32, bool or hex",
            ),
            Some(v) if v.len() > 255 => {
                problems.add(p.clone(), "an option value is at most 255 bytes")
            }
            Some(_) => {}
        }
    }
}

impl DnsConfig {
    /// Reports every problem of `[dns]`.
    pub fn validate(&self, problems: &mut Problems) {
        let base = KeyPath::new("dns");
        if self.listen.is_empty() {
            problems.add(
                base.key("listen"),
                "listen is empty: give the addresses to serve DNS on",
            );
        }
        check_unique(
            problems,
            self.listen
                .iter()
                .enumerate()
                .map(|(i, a)| (base.key("listen").index(i), a)),
            "listen address",
        );
        for (i, a) in self.listen.iter().enumerate() {
            if a.0.port() == 0 {
                problems.add(
                    base.key("listen").index(i),
                    "listen port must be between 1 and 65535",
                );
            }
        }
        if let Some(d) = &self.domain {
            check_domain(problems, base.key("domain"), d);
        }
        for (i, f) in self.hosts_files.iter().enumerate() {
            if !f.is_absolute() {
                problems.add(
                    base.key("hosts_files").index(i),
                    "hosts files must be absolute paths",
                );
            }
        }
        if self.expand_hosts && self.domain.is_none() {
            problems.add(base.key("expand_hosts"), "expand_hosts needs a domain");
        }
        for (i, r) in self.reverse_networks.iter().enumerate() {
            if !r.is_network() {
                problems.add(
                    base.key("reverse_networks").index(i),
                    format!("{r} has host bits set: did you mean {}?", r.network()),
                );
            }
        }
        for (i, r) in self.records.iter().enumerate() {
            self.validate_record(r, base.key("record").index(i), problems);
        }
        for (i, w) in self.wildcards.iter().enumerate() {
            let p = base.key("wildcard").index(i);
            check_domain(problems, p.key("domain"), &w.domain);
            if w.addresses.is_empty() {
                problems.add(p.key("addresses"), "a wildcard needs at least one address");
            }
        }
        check_unique(
            problems,
            self.wildcards
                .iter()
                .enumerate()
                .map(|(i, w)| (base.key("wildcard").index(i).key("domain"), &w.domain)),
            "wildcard domain",
        );
        check_servers(problems, base.key("servers"), &self.servers);
        for (i, f) in self.forwards.iter().enumerate() {
            let p = base.key("forward").index(i);
            check_domain(problems, p.key("domain"), &f.domain);
            if f.servers.is_empty() {
                problems.add(
                    p.key("servers"),
                    format!("no upstream server for {}", f.domain),
                );
            }
            check_servers(problems, p.key("servers"), &f.servers);
            if self
                .domain
                .as_deref()
                .is_some_and(|d| same_name(d, &f.domain))
            {
                problems.add(
                    p.key("domain"),
                    format!(
                        "{} is the local domain: it is answered here, never forwarded",
                        f.domain
                    ),
                );
            }
        }
        check_unique(
            problems,
            self.forwards
                .iter()
                .enumerate()
                .map(|(i, f)| (base.key("forward").index(i).key("domain"), &f.domain)),
            "forward domain",
        );
        for (i, d) in self.rebind_allow.iter().enumerate() {
            check_domain(problems, base.key("rebind_allow").index(i), d);
        }
        if self.forward_timeout.is_zero() {
            problems.add(
                base.key("forward_timeout"),
                "forward_timeout must be longer than 0s",
            );
        }
        if self.max_inflight == 0 {
            problems.add(base.key("max_inflight"), "max_inflight must be at least 1");
        }
        if self.udp_coalesce.get() > std::time::Duration::from_millis(10) {
            problems.add(base.key("udp_coalesce"), "udp_coalesce is at most 10ms (it delays answers under load)");
        }
        if self.cache_size > 10_000_000 {
            problems.add(
                base.key("cache_size"),
                "cache_size is at most 10000000 entries",
            );
        }
        if let Some(rl) = &self.rate_limit {
            let p = base.key("rate_limit");
            if rl.queries_per_second == 0 {
                problems.add(
                    p.key("queries_per_second"),
                    "queries_per_second must be at least 1 (remove rate_limit to disable it)",
                );
            }
            if rl.burst.is_some_and(|b| b < rl.queries_per_second.max(1)) {
                problems.add(p.key("burst"), "burst must be at least queries_per_second");
            }
        }
    }

    fn validate_record(&self, r: &DnsRecord, base: KeyPath, problems: &mut Problems) {
        let absolute = r.name.ends_with('.');
        if !is_owner_name(&r.name) {
            problems.add(
                base.key("name"),
                format!("\"{}\" is not a valid DNS name", r.name),
            );
        }
        if !absolute && self.domain.is_none() {
            problems.add(
                base.key("name"),
                format!(
                    "\"{}\" is relative but [dns] has no domain: end it with '.'",
                    r.name
                ),
            );
        }
        let v = r.value.trim();
        let bad = |problems: &mut Problems, what: &str| {
            problems.add(
                base.key("value"),
                format!("\"{}\" is not {what} for a {} record", r.value, r.kind),
            )
        };
        match r.kind {
            RecordType::A => {
                if v.parse::<Ipv4Addr>().is_err() {
                    bad(problems, "an IPv4 address");
                }
            }
            RecordType::Aaaa => {
                if v.parse::<Ipv6Addr>().is_err() {
                    bad(problems, "an IPv6 address");
                }
            }
            RecordType::Cname | RecordType::Ptr => {
                if !is_domain(v) {
                    bad(problems, "a domain name");
                }
            }
            RecordType::Txt => {
                if v.len() > 255 {
                    bad(problems, "text of at most 255 bytes");
                }
            }
            RecordType::Mx => {
                let parts: Vec<&str> = v.split_whitespace().collect();
                if parts.len() != 2 || parts[0].parse::<u16>().is_err() || !is_domain(parts[1]) {
                    bad(
                        problems,
                        "\"preference exchange\" (like \"10 mail.lab.example.\")",
                    );
                }
            }
            RecordType::Srv => {
                let parts: Vec<&str> = v.split_whitespace().collect();
                let nums = parts.len() == 4 && parts[..3].iter().all(|p| p.parse::<u16>().is_ok());
                if !nums || !is_domain(parts[3]) {
                    bad(problems, "\"priority weight port target\"");
                }
            }
        }
    }
}

fn check_servers(problems: &mut Problems, base: KeyPath, servers: &[HostPort]) {
    for (i, s) in servers.iter().enumerate() {
        if s.port == Some(0) {
            problems.add(base.index(i), "upstream port must be between 1 and 65535");
        }
        if s.ip.is_unspecified() {
            problems.add(
                base.index(i),
                format!("{} is not an upstream server address", s.ip),
            );
        }
    }
}

/// True for a record owner name: like a host name, but `_` is allowed (`_kube._tcp` for SRV) and
/// a leading `*` label makes a wildcard.
fn is_owner_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// True when two DNS names are the same (case and trailing dot ignored).
pub fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// True when `name` is `domain` or below it.
pub fn is_within(name: &str, domain: &str) -> bool {
    let (n, d) = (
        name.trim_end_matches('.').to_ascii_lowercase(),
        domain.trim_end_matches('.').to_ascii_lowercase(),
    );
    n == d || n.ends_with(&format!(".{d}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DHCP: &str = r#"
interfaces = ["eth1"]
replication = "sync"
domain = "lab.example"
[[subnet]]
subnet = "198.18.0.0/24"
pool = ["198.18.0.150-198.18.0.199"]
routers = ["198.18.0.1"]
dns_servers = ["198.18.0.100"]
routes = [{ destination = "10.96.0.0/12", gateway = "198.18.0.1" }]
[[subnet.option]]
code = 252
text = "http://198.18.0.100/wpad.dat"
[[host]]
mac = "52:54:00:00:00:31"
address = "198.18.0.31"
hostname = "worker1"
"#;

    fn dhcp_problems(text: &str) -> Vec<String> {
        let c: DhcpConfig = toml::from_str(text).expect("test dhcp parses");
        let mut p = Problems::new();
        c.validate(&mut p);
        p.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn constructors_match_the_serde_defaults() {
        assert_eq!(
            toml::from_str::<DhcpConfig>("interfaces = [\"eth1\"]").unwrap(),
            DhcpConfig::new(vec!["eth1".into()])
        );
        assert_eq!(
            toml::from_str::<Subnet>("subnet = \"198.18.0.0/24\"").unwrap(),
            Subnet::new("198.18.0.0/24".parse().unwrap())
        );
        assert_eq!(
            toml::from_str::<DnsConfig>("listen = [\"127.0.0.1:53\"]").unwrap(),
            DnsConfig::new(vec!["127.0.0.1:53".parse().unwrap()])
        );
    }

    #[test]
    fn a_good_dhcp_section_has_no_problem() {
        assert_eq!(dhcp_problems(DHCP), Vec::<String>::new());
        let c: DhcpConfig = toml::from_str(DHCP).unwrap();
        assert_eq!(c.subnets[0].options[0].payload().map(|v| v.len()), Some(28));
        assert_eq!(c.domain_of(&c.subnets[0]), Some("lab.example"));
    }

    #[test]
    fn replication_keys_are_checked() {
        let text = DHCP.replace(
            "replication = \"sync\"",
            "replication = \"sync\"\nreplication_timeout = \"0s\"\nreplication_socket = \"run/cluster.sock\"\nfollow_vip = \"198.18.0.100\"",
        );
        let p = dhcp_problems(&text);
        assert!(p.iter().any(|m| m.starts_with("dhcp.replication_timeout:")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("dhcp.replication_socket:")), "{p:?}");
        assert_eq!(p.len(), 2, "{p:?}");
        let c: DhcpConfig = toml::from_str(&text.replace("\"0s\"", "\"1s\"").replace("run/cluster.sock", "/run/c.sock")).unwrap();
        assert_eq!(c.follow_vip, Some(Ipv4Addr::new(198, 18, 0, 100)));
        assert_eq!(c.replication_gather.0, std::time::Duration::from_millis(3), "the default");
        let p = dhcp_problems(&text.replace("\"0s\"", "\"100ms\"").replace("run/cluster.sock", "/run/c.sock"));
        assert!(p.is_empty(), "{p:?}");
        let slow = text.replace("\"0s\"", "\"100ms\"").replace("run/cluster.sock", "/run/c.sock").replace("replication = \"sync\"", "replication = \"sync\"\nreplication_gather = \"30ms\"");
        let p = dhcp_problems(&slow);
        assert_eq!(p, vec!["dhcp.replication_gather: replication_gather must be at most a quarter of replication_timeout (the acks would come too late)".to_string()]);
        let per_subnet = DHCP.replace("routers = [\"198.18.0.1\"]", "routers = [\"198.18.0.1\"]\nconflict_check = \"arp\"");
        let c: DhcpConfig = toml::from_str(&per_subnet).unwrap();
        assert_eq!(c.subnets[0].conflict_check, Some(ConflictCheck::Arp));
        assert!(toml::from_str::<DhcpConfig>(&DHCP.replace("replication = \"sync\"", "replication_sockt = \"/x\"")).is_err());
    }

    #[test]
    fn ranges_outside_their_subnet_and_bad_reservations_are_reported() {
        let text = DHCP
            .replace("198.18.0.150-198.18.0.199", "198.18.1.50-198.18.1.99")
            .replace("address = \"198.18.0.31\"", "address = \"198.19.0.31\"")
            .replace("code = 252", "code = 3");
        let p = dhcp_problems(&text);
        assert!(p.iter().any(|m| m.starts_with("dhcp.subnet[0].pool[0]: range 198.18.1.50-198.18.1.99 is outside subnet 198.18.0.0/24")), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("dhcp.host[0].address: reserved address 198.19.0.31 is in no")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("dhcp.subnet[0].option[0].code: option 3 is set with routers")),
            "{p:?}"
        );
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn dns_records_are_checked_by_type() {
        let text = r#"
listen = ["127.0.0.1:53"]
domain = "lab.example"
servers = ["198.18.0.1", "[fd00:198:18::1]:5353"]
[[record]]
name = "api"
type = "A"
value = "198.18.0.100"
[[record]]
name = "_kube._tcp"
type = "SRV"
value = "0 0 6443 api.lab.example."
[[record]]
name = "bad"
type = "AAAA"
value = "198.18.0.100"
[[forward]]
domain = "corp.example"
servers = ["198.18.0.2"]
"#;
        let c: DnsConfig = toml::from_str(text).expect("dns parses");
        let mut p = Problems::new();
        c.validate(&mut p);
        let v: Vec<String> = p.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            v,
            vec![
                "dns.record[2].value: \"198.18.0.100\" is not an IPv6 address for a AAAA record"
                    .to_string()
            ]
        );
        assert!(is_within("a.lab.example.", "LAB.example"));
        assert!(!is_within("alab.example", "lab.example"));
    }
}
