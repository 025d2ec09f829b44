//! Map the operator's `[dhcp]` / `[dns]` config sections (already validated by
//! [`crate::config`]) onto the runtime's plain settings ([`DhcpDnsOptions`]).
//!
//! What the config leaves implicit is settled here: a subnet's server identifier defaults to this
//! host's address inside the subnet (else the served interface's address), DNS listens on UDP and
//! TCP at every `listen` address, `/etc/hosts` is read first when asked, and upstreams use port 53
//! unless given.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::config::{DhcpConfig as DhcpSection, DnsConfig as DnsSection};
use crate::dhcp::{DhcpConfig, Reservation, Subnet};
use crate::dns::zone::{norm, parse_rdata};
use crate::dns::{ForwardConfig, RateLimitConfig, ZoneConfig};
use crate::leases::commit::CompactionPolicy;
use crate::replication::CoreConfig;
use crate::runtime::{ClusterReplication, DhcpDnsOptions, DhcpRuntime, DnsRuntime, LEASE_GROUP};
use crate::server::{DhcpDriverConfig, DnsServerConfig, ProbeMethod, ReplicationMode};

/// The cluster daemon's control socket when neither `[dhcp] replication_socket` nor
/// `[control] socket` says otherwise.
pub const DEFAULT_CLUSTER_SOCKET: &str = "/run/hastack/cluster.sock";

/// An IPv4 address of this host: interface name, address, prefix length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddr {
    /// Interface name.
    pub interface: String,
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// This host's IPv4 addresses (getifaddrs).
pub fn local_ipv4_addrs() -> Vec<LocalAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list returned by getifaddrs, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr from getifaddrs; family checked before the cast.
        let fam = unsafe { (*ifa.ifa_addr).sa_family };
        if i32::from(fam) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        let prefix = if ifa.ifa_netmask.is_null() {
            32
        } else {
            // SAFETY: the netmask of an AF_INET address is a sockaddr_in.
            let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
            u32::from_be(m.sin_addr.s_addr).count_ones() as u8
        };
        // SAFETY: ifa_name is a NUL-terminated C string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        out.push(LocalAddr { interface: name, addr, prefix });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

fn secs(d: &hastack_common::HumanDuration) -> u32 {
    u32::try_from(d.0.as_secs()).unwrap_or(u32::MAX)
}

/// Build the runtime settings. `local` is this host's addresses (see [`local_ipv4_addrs`]);
/// problems that validation cannot see (no address to use as server identifier) are returned.
pub fn options_from_config(
    dhcp: Option<&DhcpSection>,
    dns: Option<&DnsSection>,
    local: &[LocalAddr],
) -> Result<DhcpDnsOptions, Vec<String>> {
    let mut problems = Vec::new();
    let dhcp_rt = dhcp.map(|d| dhcp_runtime(d, local, &mut problems));
    let dns_rt = dns.map(|d| dns_runtime(d, dhcp, &mut problems));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(DhcpDnsOptions {
        lease_file: dhcp.map(|d| d.lease_file.clone()).unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_LEASE_FILE)),
        compaction: CompactionPolicy::default(),
        import_dnsmasq_leases: None,
        dhcp: dhcp_rt,
        dns: dns_rt,
    })
}

fn dhcp_runtime(d: &DhcpSection, local: &[LocalAddr], problems: &mut Vec<String>) -> DhcpRuntime {
    let ifaces: Vec<Option<String>> = if d.interfaces.is_empty() { vec![None] } else { d.interfaces.iter().cloned().map(Some).collect() };
    let on_iface: Vec<&LocalAddr> =
        local.iter().filter(|l| d.interfaces.is_empty() || d.interfaces.iter().any(|i| *i == l.interface)).collect();
    let mut subnets = Vec::new();
    let mut probe_methods = Vec::new();
    for (i, s) in d.subnets.iter().enumerate() {
        let IpNet::V4(net) = s.subnet.0 else {
            problems.push(format!("dhcp.subnet[{i}].subnet: DHCPv4 needs an IPv4 network"));
            continue;
        };
        let net = net.trunc();
        let sid = s
            .server_id
            .or_else(|| on_iface.iter().find(|l| net.contains(&l.addr)).map(|l| l.addr))
            .or_else(|| local.iter().find(|l| net.contains(&l.addr)).map(|l| l.addr))
            .or_else(|| on_iface.iter().find(|l| !l.addr.is_loopback()).map(|l| l.addr));
        let Some(sid) = sid else {
            problems.push(format!("dhcp.subnet[{i}].server_id: no address of this host to use; set server_id"));
            continue;
        };
        let mut sub = Subnet::new(net, sid);
        let method = s.conflict_check.unwrap_or(d.conflict_check);
        sub.conflict_check = Some(method != crate::config::ConflictCheck::Off);
        match method {
            crate::config::ConflictCheck::Off => {}
            crate::config::ConflictCheck::Arp => probe_methods.push((net, ProbeMethod::Arp)),
            crate::config::ConflictCheck::Icmp => probe_methods.push((net, ProbeMethod::Icmp)),
        }
        sub.ranges = s.pool.iter().map(|r| (r.start, r.end)).collect();
        sub.lease_secs = secs(&s.lease_time);
        sub.renew_secs = s.renew_time.as_ref().map(secs);
        sub.rebind_secs = s.rebind_time.as_ref().map(secs);
        sub.routers = s.routers.clone();
        sub.dns_servers = s.dns_servers.clone();
        sub.ntp_servers = s.ntp_servers.clone();
        sub.domain = d.domain_of(s).map(str::to_string);
        sub.mtu = s.mtu;
        for r in &s.routes {
            match r.destination.0 {
                IpNet::V4(n) => sub.classless_routes.push((n.trunc(), r.gateway)),
                IpNet::V6(_) => problems.push(format!("dhcp.subnet[{i}].routes: {} is not IPv4", r.destination.0)),
            }
        }
        for o in &s.options {
            match o.payload() {
                Some(p) => sub.options.push((o.code, p)),
                None => problems.push(format!("dhcp.subnet[{i}].option {}: exactly one value is needed", o.code)),
            }
        }
        subnets.push(sub);
    }
    let reservations = d
        .hosts
        .iter()
        .map(|h| Reservation {
            hwaddr: h.mac.as_ref().map(|m| m.0.to_vec()),
            client_id: h.client_id.as_ref().map(|c| c.0.clone()),
            addr: h.address,
            hostname: h.hostname.clone(),
            lease_secs: h.lease_time.as_ref().map(secs),
        })
        .collect();
    let conflict_check = d.conflict_check != crate::config::ConflictCheck::Off;
    let core = DhcpConfig {
        authoritative: d.authoritative,
        conflict_check,
        domain: d.domain.clone(),
        subnets,
        reservations,
        offer_hold_secs: d.offer_hold.0.as_secs(),
        decline_quarantine_secs: d.decline_quarantine.0.as_secs(),
        ..DhcpConfig::default()
    };
    let drivers = ifaces
        .into_iter()
        .map(|iface| DhcpDriverConfig {
            local_addr: local
                .iter()
                .filter(|l| iface.as_deref().is_none_or(|i| l.interface == i) && !l.addr.is_loopback())
                .map(|l| l.addr)
                .next(),
            interface: iface,
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, crate::dhcp::SERVER_PORT),
            ..DhcpDriverConfig::default()
        })
        .collect();
    let replication = match d.replication {
        crate::config::Replication::None => None,
        mode => {
            let (mode, deadline) = match mode {
                crate::config::Replication::Sync => (ReplicationMode::Sync, d.replication_timeout.0),
                _ => (ReplicationMode::Async, d.replication_window.0),
            };
            Some(ClusterReplication {
                socket: d.replication_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CLUSTER_SOCKET)),
                group: LEASE_GROUP.to_string(),
                mode,
                core: CoreConfig { ack_deadline: deadline, gather: d.replication_gather.0, ..CoreConfig::default() },
                sync_wait: std::time::Duration::from_secs(10),
            })
        }
    };
    DhcpRuntime { core, drivers, probe_timeout: d.conflict_check_timeout.0, replication, follow_vip: d.follow_vip, probe_methods }
}

fn dns_runtime(d: &DnsSection, dhcp: Option<&DhcpSection>, problems: &mut Vec<String>) -> DnsRuntime {
    let domain = d.domain.as_deref().map(norm).unwrap_or_default();
    let mut zone = ZoneConfig::new(&domain);
    zone.ttl = secs(&d.local_ttl);
    zone.negative_ttl = secs(&d.neg_ttl);
    zone.reverse_networks = d.reverse_networks.iter().map(|c| c.0.trunc()).collect();
    if zone.reverse_networks.is_empty() {
        if let Some(dh) = dhcp {
            zone.reverse_networks = dh.subnets.iter().map(|s| s.subnet.0.trunc()).collect();
        }
    }
    let listen: Vec<SocketAddr> = d.listen.iter().map(|l| l.0).collect();
    let server = DnsServerConfig {
        udp: listen.clone(),
        tcp: listen,
        udp_sockets_per_addr: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4),
        udp_coalesce: d.udp_coalesce.get(),
        forward: (!d.servers.is_empty() || !d.forwards.is_empty()).then(|| ForwardConfig {
            upstreams: d.servers.iter().map(|h| SocketAddr::new(h.ip, h.port.unwrap_or(53))).collect(),
            domains: d
                .forwards
                .iter()
                .map(|f| (norm(&f.domain), f.servers.iter().map(|h| SocketAddr::new(h.ip, h.port.unwrap_or(53))).collect()))
                .collect(),
            cache_size: d.cache_size as usize,
            timeout: d.forward_timeout.0,
            rebind_protection: d.rebind_protection,
            rebind_allow: d.rebind_allow.clone(),
            max_in_flight: d.max_inflight as usize,
            negative_ttl_without_soa: secs(&d.neg_ttl),
            ..ForwardConfig::default()
        }),
        rate_limit: d.rate_limit.as_ref().map(|r| RateLimitConfig {
            queries_per_second: r.queries_per_second,
            burst: r.burst.unwrap_or(r.queries_per_second.saturating_mul(2)),
        }),
        ..DnsServerConfig::default()
    };
    let mut hosts_files = Vec::new();
    if d.read_etc_hosts {
        hosts_files.push(PathBuf::from("/etc/hosts"));
    }
    hosts_files.extend(d.hosts_files.iter().cloned());
    let mut records = Vec::new();
    for (i, r) in d.records.iter().enumerate() {
        let owner = if r.name.ends_with('.') || domain.is_empty() { norm(&r.name) } else { format!("{}.{domain}", norm(&r.name)) };
        match parse_rdata(&r.kind.to_string(), &r.value, &domain) {
            Ok(rd) => records.push((owner, rd, r.ttl.as_ref().map(secs))),
            Err(e) => problems.push(format!("dns.record[{i}].value: {e}")),
        }
    }
    let wildcards: Vec<(String, IpAddr)> =
        d.wildcards.iter().flat_map(|w| w.addresses.iter().map(move |a| (norm(&w.domain), *a))).collect();
    DnsRuntime { zone, server, hosts_files, expand_hosts: d.expand_hosts, hosts: Vec::new(), records, wildcards }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[dhcp]
interfaces = ["eth1"]
domain = "lab.example"
[[dhcp.subnet]]
subnet = "198.18.0.0/24"
pool = ["198.18.0.150-198.18.0.199"]
routers = ["198.18.0.1"]
lease_time = "2h"
routes = [{ destination = "198.19.0.0/16", gateway = "198.18.0.2" }]
[[dhcp.subnet.option]]
code = 252
text = "http://wpad/"
[[dhcp.host]]
mac = "52:54:00:00:00:31"
address = "198.18.0.31"
hostname = "worker1"

[dns]
listen = ["198.18.0.100:53"]
domain = "lab.example"
servers = ["198.18.0.1"]
read_etc_hosts = false
[[dns.record]]
name = "api"
type = "A"
value = "198.18.0.10"
[[dns.record]]
name = "www"
type = "CNAME"
value = "api"
[[dns.forward]]
domain = "corp.example"
servers = ["198.18.0.9:5353"]
"#;

    #[derive(serde::Deserialize)]
    struct Doc {
        dhcp: DhcpSection,
        dns: DnsSection,
    }

    #[test]
    fn maps_the_documented_example() {
        let doc: Doc = toml::from_str(TOML).expect("parses");
        let local = vec![LocalAddr { interface: "eth1".into(), addr: "198.18.0.100".parse().unwrap(), prefix: 24 }];
        let o = options_from_config(Some(&doc.dhcp), Some(&doc.dns), &local).expect("maps");
        let d = o.dhcp.expect("dhcp");
        let s = &d.core.subnets[0];
        assert_eq!(s.server_id, "198.18.0.100".parse::<Ipv4Addr>().unwrap(), "server id from the interface address");
        assert_eq!(s.ranges, vec![("198.18.0.150".parse().unwrap(), "198.18.0.199".parse().unwrap())]);
        assert_eq!(s.lease_secs, 7200);
        assert_eq!(s.domain.as_deref(), Some("lab.example"));
        assert_eq!(s.options, vec![(252, b"http://wpad/".to_vec())]);
        assert_eq!(s.classless_routes.len(), 1);
        assert_eq!(d.core.reservations[0].hwaddr.as_deref(), Some(&[0x52, 0x54, 0, 0, 0, 0x31][..]));
        assert_eq!(d.drivers.len(), 1);
        assert_eq!(d.drivers[0].interface.as_deref(), Some("eth1"));
        assert_eq!(d.drivers[0].local_addr, Some("198.18.0.100".parse().unwrap()));
        let n = o.dns.expect("dns");
        assert_eq!(n.server.udp, vec!["198.18.0.100:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(n.server.tcp, n.server.udp);
        assert_eq!(n.records.len(), 2);
        assert_eq!(n.records[0].0, "api.lab.example");
        let f = n.server.forward.expect("forwarding");
        assert_eq!(f.upstreams, vec!["198.18.0.1:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(f.upstreams_for("x.corp.example"), &["198.18.0.9:5353".parse::<SocketAddr>().unwrap()]);
        assert_eq!(n.zone.reverse_networks, vec!["198.18.0.0/24".parse::<IpNet>().unwrap()]);
        assert!(n.hosts_files.is_empty());
    }

    #[test]
    fn replication_follow_vip_and_per_subnet_probes_are_mapped() {
        let text = TOML
            .replace("domain = \"lab.example\"\n[[dhcp.subnet]]", "domain = \"lab.example\"\nreplication = \"async\"\nreplication_window = \"250ms\"\nfollow_vip = \"198.18.0.100\"\nconflict_check = \"icmp\"\n[[dhcp.subnet]]")
            .replace("lease_time = \"2h\"", "lease_time = \"2h\"\nconflict_check = \"arp\"");
        let doc: Doc = toml::from_str(&text).expect("parses");
        let local = vec![LocalAddr { interface: "eth1".into(), addr: "198.18.0.100".parse().unwrap(), prefix: 24 }];
        let d = options_from_config(Some(&doc.dhcp), None, &local).expect("maps").dhcp.expect("dhcp");
        let r = d.replication.expect("replication");
        assert_eq!((r.mode, r.core.ack_deadline, r.group.as_str()), (ReplicationMode::Async, std::time::Duration::from_millis(250), LEASE_GROUP));
        assert_eq!(r.socket, PathBuf::from(DEFAULT_CLUSTER_SOCKET));
        assert_eq!(d.follow_vip, Some("198.18.0.100".parse().unwrap()));
        assert_eq!(d.probe_methods, vec![("198.18.0.0/24".parse().unwrap(), ProbeMethod::Arp)], "the subnet's method wins");
        assert_eq!(d.core.subnets[0].conflict_check, Some(true));
    }

    #[test]
    fn missing_server_id_is_reported() {
        let doc: Doc = toml::from_str(TOML).expect("parses");
        let err = options_from_config(Some(&doc.dhcp), None, &[]).unwrap_err();
        assert!(err[0].contains("server_id"), "{err:?}");
    }

    #[test]
    fn local_addresses_include_loopback() {
        assert!(local_ipv4_addrs().iter().any(|l| l.addr == Ipv4Addr::LOCALHOST));
    }
}
