//! Importer for dnsmasq.conf: DHCP ranges, reservations and options become `[dhcp]`; the DNS
//! options (domain, local, address, server, hosts files, cache) become `[dns]`.
//!
//! Each line is `option`, `option=value` or `--option=value`; values are comma lists, some with
//! `/domain/` parts. Tags (`tag:`, `set:` used as a condition) select options per client class in
//! dnsmasq; hastack has no client classes, so tagged options are listed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use dhcp_dns::config::{DhcpConfig, DhcpOption, DnsConfig, DnsRecord, Forward, HostReservation, RecordType, StaticRoute, Subnet, Wildcard};
use hastack_common::{Cidr, HexBytes, HostPort, HumanDuration, Ipv4Range, KeyPath, MacAddr, SockAddr};

use super::{Draft, Import, Kind};

/// Converts a dnsmasq config into hastack TOML.
pub fn convert(text: &str) -> Import {
    let draft = Draft::new(text, |l| !l.is_empty() && !l.starts_with('#'));
    let mut c = Conv { draft, ..Conv::default() };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("--").unwrap_or(line);
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        c.line(i + 1, key, value);
    }
    c.finish()
}

/// dnsmasq's time: seconds, or a number with s/m/h/d/w.
fn time(s: &str) -> Option<HumanDuration> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let v: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    let secs = v.checked_mul(mult)?;
    (secs <= 366 * 86_400).then(|| HumanDuration(Duration::from_secs(secs)))
}

/// Where a value goes in a subnet, by DHCP option.
enum OptValue {
    Routers(Vec<Ipv4Addr>),
    Dns(Vec<Ipv4Addr>),
    Domain(String),
    Ntp(Vec<Ipv4Addr>),
    Mtu(u16),
    Routes(Vec<StaticRoute>),
    ServerId(Ipv4Addr),
    Numbered(DhcpOption),
    /// `dhcp-option=3` with no value: send no router (hastack sends none unless told).
    Nothing,
}

#[derive(Default)]
struct Conv {
    draft: Draft,
    interfaces: Vec<(String, usize)>,
    listen: Vec<(IpAddr, usize)>,
    port: Option<(u16, usize)>,
    /// Subnets in order of first mention, each with the lines that fed it.
    subnets: Vec<(Subnet, Vec<(usize, &'static str)>)>,
    /// Options without a tag, applied to every subnet: (value, line).
    options: Vec<(OptValue, usize)>,
    hosts: Vec<(HostReservation, usize)>,
    authoritative: Option<usize>,
    domain: Option<(String, usize)>,
    locals: Vec<(String, usize)>,
    reverse: Vec<(Cidr, usize)>,
    wildcards: BTreeMap<String, (Vec<IpAddr>, Vec<usize>)>,
    servers: Vec<(HostPort, usize)>,
    forwards: Vec<(String, Vec<HostPort>, Vec<usize>)>,
    hosts_files: Vec<(PathBuf, usize)>,
    expand_hosts: Option<usize>,
    cache_size: Option<(u32, usize)>,
    neg_ttl: Option<(HumanDuration, usize)>,
    local_ttl: Option<(HumanDuration, usize)>,
    no_hosts: Option<usize>,
    records: Vec<(DnsRecord, usize)>,
    rebind_allow: Vec<(String, usize)>,
    first_range: Option<usize>,
    /// `domain=NAME,SUBNET`: the domain of the leases of one subnet.
    subnet_domains: Vec<(String, Cidr, usize)>,
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.trim().parse().ok()
}

fn ipv4_list(values: &[&str]) -> Option<Vec<Ipv4Addr>> {
    values.iter().map(|v| ipv4(v)).collect::<Option<Vec<_>>>().filter(|v| !v.is_empty())
}

/// Mask 255.255.255.0 → 24, only for contiguous masks.
fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let p = m.leading_ones();
    (m.checked_shl(p).unwrap_or(0) == 0).then_some(p as u8)
}

fn network(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
    let n = ipnet_network(addr, prefix)?;
    format!("{n}/{prefix}").parse().ok()
}

fn ipnet_network(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix > 32 {
        return None;
    }
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    Some(Ipv4Addr::from(u32::from(addr) & mask))
}

/// `/a/b/rest` → (["a", "b"], "rest").
fn domains(value: &str) -> Option<(Vec<String>, String)> {
    let rest = value.strip_prefix('/')?;
    let end = rest.rfind('/')?;
    let names = rest[..end].split('/').map(|d| d.trim_end_matches('.').to_ascii_lowercase()).collect();
    Some((names, rest[end + 1..].to_string()))
}

/// `ip[#port]` → a HostPort.
fn upstream(s: &str) -> Option<HostPort> {
    let (ip, port) = match s.split_once('#') {
        Some((ip, p)) => (ip, Some(p.parse::<u16>().ok().filter(|p| *p > 0)?)),
        None => (s, None),
    };
    Some(HostPort { ip: ip.parse().ok()?, port })
}

/// A later line for a single-valued option replaces the earlier one, which counts as converted.
fn set<T>(draft: &mut Draft, slot: &mut Option<(T, usize)>, value: (T, usize)) {
    if let Some((_, prev)) = slot.replace(value) {
        draft.consumed(prev);
    }
}

/// A flag given twice: the repeat changes nothing.
fn flag(draft: &mut Draft, slot: &mut Option<usize>, n: usize) {
    match slot {
        Some(_) => draft.consumed(n),
        None => *slot = Some(n),
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(hastack_common::names::is_label)
}

impl Conv {
    fn line(&mut self, n: usize, key: &str, value: Option<&str>) {
        let v = value.unwrap_or("");
        let needs_value = |c: &mut Self| {
            if value.is_none() {
                c.draft.skip(n, format!("{key} needs a value"));
                true
            } else {
                false
            }
        };
        match key {
            "interface" => {
                if needs_value(self) {
                    return;
                }
                for i in v.split(',') {
                    self.interfaces.push((i.trim().to_string(), n));
                }
            }
            "listen-address" => {
                if needs_value(self) {
                    return;
                }
                match v.split(',').map(|a| a.trim().parse::<IpAddr>().ok()).collect::<Option<Vec<_>>>() {
                    Some(ips) => self.listen.extend(ips.into_iter().map(|ip| (ip, n))),
                    None => self.draft.skip(n, format!("unsupported value {v}")),
                }
            }
            "port" => match v.parse::<u16>() {
                Ok(p) => set(&mut self.draft, &mut self.port, (p, n)),
                Err(_) => self.draft.skip(n, format!("unsupported value {v}")),
            },
            "bind-interfaces" | "bind-dynamic" | "no-resolv" | "no-ping" | "no-negcache" if value.is_none() => {
                self.draft.consumed(n)
            }
            "dhcp-range" => {
                if !needs_value(self) {
                    self.range(n, v)
                }
            }
            "dhcp-host" => {
                if !needs_value(self) {
                    self.host(n, v)
                }
            }
            "dhcp-option" => {
                if !needs_value(self) {
                    self.option(n, v)
                }
            }
            "dhcp-authoritative" if value.is_none() => flag(&mut self.draft, &mut self.authoritative, n),
            "domain" => {
                if needs_value(self) {
                    return;
                }
                let parts: Vec<&str> = v.split(',').map(str::trim).collect();
                match parts.as_slice() {
                    [d] if is_hostname(d) => set(&mut self.draft, &mut self.domain, (d.trim_end_matches('.').to_ascii_lowercase(), n)),
                    [d, net] | [d, net, "local"] if is_hostname(d) && net.parse::<Cidr>().is_ok_and(|c| c.is_network()) => {
                        let d = d.trim_end_matches('.').to_ascii_lowercase();
                        if parts.len() == 3 {
                            self.local(d.clone(), n);
                        }
                        if let Ok(c) = net.parse::<Cidr>() {
                            self.subnet_domains.push((d, c, n));
                        }
                    }
                    [d, ..] if is_hostname(d) => {
                        self.draft.skip(n, "a domain per address range: write it per subnet (domain=NAME,SUBNET/PREFIX)")
                    }
                    _ => self.draft.skip(n, format!("unsupported value {v}")),
                }
            }
            "local" | "server" | "rev-server" if v.starts_with('/') && key != "rev-server" => match domains(v) {
                Some((names, rest)) if rest.is_empty() => {
                    for d in names {
                        self.local(d, n);
                    }
                }
                Some((names, rest)) if key == "server" => match upstream(&rest) {
                    Some(up) if !names.iter().any(|d| d.is_empty() || d == "#") => {
                        for d in names {
                            match self.forwards.iter_mut().find(|f| f.0 == d) {
                                Some(f) => {
                                    f.1.push(up);
                                    f.2.push(n);
                                }
                                None => self.forwards.push((d, vec![up], vec![n])),
                            }
                        }
                    }
                    _ => self.draft.skip(n, format!("unsupported value {v}: write server=/domain/IP[#port]")),
                },
                _ => self.draft.skip(n, format!("unsupported value {v}")),
            },
            "server" => match upstream(v) {
                Some(up) => self.servers.push((up, n)),
                None => self.draft.skip(n, format!("unsupported value {v}: upstreams are IP[#port] (no @interface, no host names)")),
            },
            "address" => match domains(v) {
                Some((names, ip)) => match ip.parse::<IpAddr>() {
                    Ok(ip) if !names.iter().any(|d| d.is_empty() || d == "#") => {
                        for d in names {
                            let e = self.wildcards.entry(d).or_default();
                            e.0.push(ip);
                            e.1.push(n);
                        }
                    }
                    Ok(_) => self.draft.skip(n, "address=/#/ for every name has no hastack equivalent"),
                    Err(_) => self.draft.skip(n, format!("unsupported value {v}: only address=/domain/IP converts (not NXDOMAIN or #)")),
                },
                None => self.draft.skip(n, format!("unsupported value {v}")),
            },
            "addn-hosts" => {
                if !needs_value(self) {
                    self.hosts_files.push((PathBuf::from(v), n))
                }
            }
            "expand-hosts" if value.is_none() => flag(&mut self.draft, &mut self.expand_hosts, n),
            "no-hosts" if value.is_none() => flag(&mut self.draft, &mut self.no_hosts, n),
            "cache-size" => match v.parse::<u32>() {
                Ok(c) => set(&mut self.draft, &mut self.cache_size, (c, n)),
                Err(_) => self.draft.skip(n, format!("unsupported value {v}")),
            },
            "neg-ttl" | "local-ttl" => match v.parse::<u64>() {
                Ok(s) => {
                    let t = (HumanDuration::from_secs(s), n);
                    if key == "neg-ttl" {
                        set(&mut self.draft, &mut self.neg_ttl, t)
                    } else {
                        set(&mut self.draft, &mut self.local_ttl, t)
                    }
                }
                Err(_) => self.draft.skip(n, format!("unsupported value {v}: seconds")),
            },
            "stop-dns-rebind" if value.is_none() => self.draft.consumed(n),
            "rebind-domain-ok" => match domains(v) {
                Some((names, rest)) if rest.is_empty() => {
                    for d in names {
                        self.rebind_allow.push((d, n));
                    }
                }
                _ => self.draft.skip(n, format!("unsupported value {v}")),
            },
            "host-record" => self.host_record(n, v),
            "cname" => {
                let parts: Vec<&str> = v.split(',').map(str::trim).collect();
                match parts.as_slice() {
                    [alias, target] if is_hostname(alias) && is_hostname(target) => self.records.push((
                        DnsRecord { name: format!("{alias}."), kind: RecordType::Cname, value: format!("{target}."), ttl: None },
                        n,
                    )),
                    _ => self.draft.skip(n, format!("unsupported value {v}: only cname=ALIAS,TARGET converts")),
                }
            }
            "log-queries" | "log-dhcp" | "log-facility" | "log-async" => {
                self.draft.skip(n, "hastack logs through tracing ([logging]); dnsmasq's log settings have no equivalent")
            }
            "user" | "group" | "pid-file" | "keep-in-foreground" | "no-daemon" => {
                self.draft.skip(n, "process settings are systemd's (dist/hastack-dhcp-dns.service)")
            }
            "conf-file" | "conf-dir" | "servers-file" | "resolv-file" | "dhcp-hostsfile" | "dhcp-optsfile" => {
                self.draft.skip(n, "other files are not read: import them on their own")
            }
            "dhcp-leasefile" | "dhcp-lease-file" => {
                self.draft.skip(n, "hastack keeps its own lease log ([dhcp] lease_file); dnsmasq's lease file is not reused")
            }
            "enable-ra" | "dhcp-range6" | "ra-param" => self.draft.skip(n, "DHCPv6 and router advertisements are not supported"),
            _ if key.starts_with("tftp") || key.starts_with("dhcp-boot") || key.starts_with("pxe") => {
                self.draft.skip(n, "network boot (TFTP/PXE) is not supported")
            }
            _ => self.draft.skip(n, format!("{key} has no hastack equivalent")),
        }
    }

    fn local(&mut self, d: String, n: usize) {
        if let Some(net) = reverse_zone(&d) {
            self.reverse.push((net, n));
        } else {
            self.locals.push((d, n));
        }
    }

    /// The index of the subnet `cidr` (added if new).
    fn subnet(&mut self, cidr: Cidr) -> usize {
        match self.subnets.iter().position(|(s, _)| s.subnet == cidr) {
            Some(i) => i,
            None => {
                self.subnets.push((Subnet::new(cidr), Vec::new()));
                self.subnets.len() - 1
            }
        }
    }

    fn range(&mut self, n: usize, v: &str) {
        let mut parts: Vec<&str> = v.split(',').map(str::trim).collect();
        while let Some(p) = parts.first() {
            if p.starts_with("set:") || p.starts_with("net:") {
                parts.remove(0);
            } else if p.starts_with("tag:") || p.starts_with("interface:") {
                self.draft.skip(n, "tag-based ranges are not supported");
                return;
            } else {
                break;
            }
        }
        let Some(start) = parts.first().and_then(|s| ipv4(s)) else {
            self.draft.skip(n, if v.contains(':') && !v.contains("set:") { "DHCPv6 ranges are not supported".to_string() } else { format!("unsupported value {v}") });
            return;
        };
        let mut rest = &parts[1..];
        let mut end = None;
        let mut is_static = false;
        match rest.first() {
            Some(&"static") => {
                is_static = true;
                rest = &rest[1..];
            }
            Some(s) if ipv4(s).is_some() => {
                end = ipv4(s);
                rest = &rest[1..];
            }
            _ => {}
        }
        if let Some(&m) = rest.first()
            && (m == "static" || m == "proxy")
        {
            if m == "proxy" {
                self.draft.skip(n, "proxy DHCP is not supported");
                return;
            }
            is_static = true;
            rest = &rest[1..];
        }
        let mut mask = None;
        if let Some(m) = rest.first().and_then(|s| ipv4(s)) {
            mask = Some(m);
            rest = &rest[1..];
            if rest.first().and_then(|s| ipv4(s)).is_some() {
                rest = &rest[1..]; // broadcast: derived from the subnet
            }
        }
        let mut lease = None;
        if let Some(l) = rest.first() {
            if *l == "infinite" {
                self.draft.skip(n, "infinite leases are not supported: give a lease time");
                return;
            }
            match time(l) {
                Some(t) => lease = Some(t),
                None => {
                    self.draft.skip(n, format!("unsupported value {l}"));
                    return;
                }
            }
            rest = &rest[1..];
        }
        if !rest.is_empty() {
            self.draft.skip(n, format!("unsupported value {}", rest.join(",")));
            return;
        }
        let end_addr = end.unwrap_or(start);
        let prefix = match mask {
            Some(m) => match prefix_of(m) {
                Some(p) => p,
                None => {
                    self.draft.skip(n, format!("unsupported value {m}: not a netmask"));
                    return;
                }
            },
            None => {
                // The smallest subnet holding both ends, at most /24: dnsmasq takes the netmask
                // from the interface, which a config file does not say.
                let diff = u32::from(start) ^ u32::from(end_addr);
                let p = (diff.leading_zeros() as u8).min(24);
                self.draft.note(n, format!("no netmask given: /{p} assumed (dnsmasq takes it from the interface); correct [[dhcp.subnet]] subnet if it differs"));
                p
            }
        };
        let Some(cidr) = network(start, prefix) else {
            self.draft.skip(n, format!("unsupported value {v}"));
            return;
        };
        self.first_range.get_or_insert(n);
        let i = self.subnet(cidr);
        let (s, lines) = &mut self.subnets[i];
        lines.push((n, "subnet"));
        if let Some(t) = lease {
            s.lease_time = t;
            lines.push((n, "lease_time"));
        }
        if !is_static {
            if end.is_none() {
                self.draft.skip(n, "a dynamic range needs a start and an end address");
                return;
            }
            s.pool.push(Ipv4Range { start, end: end_addr });
            lines.push((n, "pool"));
        }
    }

    fn host(&mut self, n: usize, v: &str) {
        let mut h = HostReservation { mac: None, client_id: None, address: Ipv4Addr::UNSPECIFIED, hostname: None, lease_time: None };
        let mut address = None;
        for p in v.split(',').map(str::trim) {
            if p.starts_with("set:") || p.starts_with("tag:") {
                self.draft.skip(n, "tag-based reservations are not supported");
                return;
            }
            if let Some(id) = p.strip_prefix("id:") {
                let parsed = id.parse::<HexBytes>().ok().or_else(|| (!id.is_empty() && id != "*").then(|| HexBytes(id.as_bytes().to_vec())));
                match parsed {
                    Some(c) if h.client_id.is_none() => h.client_id = Some(c),
                    _ => {
                        self.draft.skip(n, format!("unsupported value {p}"));
                        return;
                    }
                }
            } else if let Ok(mac) = p.parse::<MacAddr>() {
                if h.mac.is_some() {
                    self.draft.skip(n, "more than one MAC per reservation is not supported");
                    return;
                }
                h.mac = Some(mac);
            } else if let Some(ip) = ipv4(p) {
                if address.is_some() {
                    self.draft.skip(n, format!("unsupported value {p}: a second address"));
                    return;
                }
                address = Some(ip);
            } else if p == "infinite" {
                self.draft.skip(n, "infinite leases are not supported: give a lease time");
                return;
            } else if p == "ignore" {
                self.draft.skip(n, "ignoring a client has no hastack equivalent");
                return;
            } else if let Some(t) = time(p) {
                h.lease_time = Some(t);
            } else if is_hostname(p) && h.hostname.is_none() {
                h.hostname = Some(p.to_string());
            } else {
                self.draft.skip(n, format!("unsupported value {p}"));
                return;
            }
        }
        match address {
            Some(a) => {
                h.address = a;
                self.hosts.push((h, n));
            }
            None => self.draft.skip(n, "a reservation without an address (name only) is not supported: hastack reserves addresses"),
        }
    }

    fn option(&mut self, n: usize, v: &str) {
        let parts: Vec<&str> = v.split(',').map(str::trim).collect();
        let Some(first) = parts.first() else {
            return;
        };
        if first.starts_with("tag:") || first.starts_with("set:") {
            self.draft.skip(n, "tag-based options are not supported");
            return;
        }
        if first.starts_with("option6:") || first.starts_with("encap:") || first.starts_with("vi-encap:") || first.starts_with("vendor:") {
            self.draft.skip(n, "DHCPv6, encapsulated and vendor options are not supported");
            return;
        }
        let code = match first.strip_prefix("option:") {
            Some(name) => match name {
                "netmask" => 1,
                "router" => 3,
                "dns-server" => 6,
                "log-server" => 7,
                "hostname" => 12,
                "domain-name" => 15,
                "mtu" => 26,
                "broadcast" => 28,
                "ntp-server" => 42,
                "netbios-ns" => 44,
                "lease-time" => 51,
                "server-identifier" => 54,
                "T1" => 58,
                "T2" => 59,
                "tftp-server" => 66,
                "bootfile-name" => 67,
                "domain-search" => 119,
                "classless-static-route" => 121,
                _ => {
                    self.draft.skip(n, format!("unsupported option name {name}: write it by number"));
                    return;
                }
            },
            None => match first.parse::<u8>() {
                Ok(c) => c,
                Err(_) => {
                    self.draft.skip(n, format!("unsupported value {first}"));
                    return;
                }
            },
        };
        let vals = &parts[1..];
        let bad = |c: &mut Self| c.draft.skip(n, format!("unsupported value {}", vals.join(",")));
        let value = match code {
            3 if vals.is_empty() => OptValue::Nothing,
            3 | 6 | 42 => match ipv4_list(vals) {
                Some(ips) if !ips.iter().any(|ip| ip.is_unspecified()) => match code {
                    3 => OptValue::Routers(ips),
                    6 => OptValue::Dns(ips),
                    _ => OptValue::Ntp(ips),
                },
                Some(_) => {
                    self.draft.skip(n, "0.0.0.0 (this server's own address) has no hastack equivalent: write the address");
                    return;
                }
                None => return bad(self),
            },
            15 => match vals {
                [d] if is_hostname(d) => OptValue::Domain(d.trim_end_matches('.').to_ascii_lowercase()),
                _ => return bad(self),
            },
            26 => match vals {
                [m] => match m.parse::<u16>() {
                    Ok(m) => OptValue::Mtu(m),
                    Err(_) => return bad(self),
                },
                _ => return bad(self),
            },
            54 => match vals {
                [a] => match ipv4(a) {
                    Some(a) => OptValue::ServerId(a),
                    None => return bad(self),
                },
                _ => return bad(self),
            },
            121 => {
                let mut routes = Vec::new();
                for pair in vals.chunks(2) {
                    let route = match pair {
                        [dest, gw] => dest.parse::<Cidr>().ok().zip(ipv4(gw)),
                        _ => None,
                    };
                    match route {
                        Some((destination, gateway)) => routes.push(StaticRoute { destination, gateway }),
                        None => return bad(self),
                    }
                }
                if routes.is_empty() {
                    return bad(self);
                }
                OptValue::Routes(routes)
            }
            1 | 28 => {
                self.draft.skip(n, "netmask and broadcast follow from the [[dhcp.subnet]] subnet");
                return;
            }
            51 | 58 | 59 => {
                self.draft.skip(n, "lease times are lease_time, renew_time and rebind_time of [[dhcp.subnet]]");
                return;
            }
            0 | 255 => return bad(self),
            _ => {
                let mut o = DhcpOption { code, text: None, ip: None, ips: None, u8: None, u16: None, u32: None, bool: None, hex: None };
                if let Some(ips) = ipv4_list(vals) {
                    if ips.len() == 1 {
                        o.ip = ips.first().copied();
                    } else {
                        o.ips = Some(ips);
                    }
                } else if let [t] = vals
                    && t.len() >= 2
                    && t.starts_with('"')
                    && t.ends_with('"')
                {
                    o.text = Some(t[1..t.len() - 1].to_string());
                } else if let [t] = vals
                    && t.contains(':')
                    && let Ok(h) = t.parse::<HexBytes>()
                {
                    o.hex = Some(h);
                } else if let [t] = vals
                    && !t.is_empty()
                    && t.parse::<u64>().is_err()
                {
                    o.text = Some(t.to_string());
                } else {
                    self.draft.skip(n, format!("unsupported value {}: dnsmasq picks the integer width from the option; write [[dhcp.subnet.option]] with u8/u16/u32", vals.join(",")));
                    return;
                }
                OptValue::Numbered(o)
            }
        };
        self.options.push((value, n));
    }

    fn host_record(&mut self, n: usize, v: &str) {
        let parts: Vec<&str> = v.split(',').map(str::trim).collect();
        let names: Vec<&str> = parts.iter().copied().take_while(|p| p.parse::<IpAddr>().is_err()).collect();
        let addrs: Vec<IpAddr> = parts[names.len()..].iter().filter_map(|p| p.parse().ok()).collect();
        if names.is_empty() || addrs.is_empty() || names.len() + addrs.len() != parts.len() || !names.iter().all(|n| is_hostname(n)) {
            self.draft.skip(n, format!("unsupported value {v}: only host-record=NAME[,NAME],IP[,IP] converts"));
            return;
        }
        for name in &names {
            for a in &addrs {
                let kind = if a.is_ipv4() { RecordType::A } else { RecordType::Aaaa };
                self.records.push((DnsRecord { name: format!("{name}."), kind, value: a.to_string(), ttl: None }, n));
            }
        }
    }

    fn finish(mut self) -> Import {
        let first_line = 1;
        // [dhcp]
        if !self.subnets.is_empty() || !self.hosts.is_empty() {
            let mut d = DhcpConfig::new(self.interfaces.iter().map(|(i, _)| i.clone()).collect());
            let dp = KeyPath::new("dhcp");
            for (j, (_, l)) in self.interfaces.iter().enumerate() {
                self.draft.origin(*l, &dp.key("interfaces").index(j));
            }
            match self.authoritative {
                Some(l) => self.draft.origin(l, &dp.key("authoritative")),
                None => {
                    d.authoritative = false;
                    let at = self.first_range.unwrap_or(first_line);
                    self.draft.note(at, "dnsmasq is not authoritative without dhcp-authoritative: authoritative = false kept; set it to true for a gateway pair");
                }
            }
            if let Some((dom, l)) = &self.domain {
                d.domain = Some(dom.clone());
                self.draft.origin(*l, &dp.key("domain"));
            }
            let mut has_router = false;
            let mut has_dns = false;
            for (i, (mut s, lines)) in std::mem::take(&mut self.subnets).into_iter().enumerate() {
                let sp = dp.key("subnet").index(i);
                for (l, key) in &lines {
                    self.draft.origin(*l, &sp.key(*key));
                }
                for (opt, l) in &self.options {
                    let key = match opt {
                        OptValue::Routers(r) => {
                            has_router = true;
                            // A router outside this subnet belongs to another one.
                            let ip = IpAddr::V4(r[0]);
                            if !s.subnet.contains(&ip) {
                                continue;
                            }
                            s.routers = r.clone();
                            "routers"
                        }
                        OptValue::Dns(r) => {
                            has_dns = true;
                            s.dns_servers = r.clone();
                            "dns_servers"
                        }
                        OptValue::Ntp(r) => {
                            s.ntp_servers = r.clone();
                            "ntp_servers"
                        }
                        OptValue::Domain(dom) => {
                            s.domain = Some(dom.clone());
                            "domain"
                        }
                        OptValue::Mtu(m) => {
                            s.mtu = Some(*m);
                            "mtu"
                        }
                        OptValue::Routes(r) => {
                            if !r.iter().all(|x| s.subnet.contains(&IpAddr::V4(x.gateway))) {
                                continue;
                            }
                            s.routes = r.clone();
                            "routes"
                        }
                        OptValue::ServerId(a) => {
                            s.server_id = Some(*a);
                            "server_id"
                        }
                        OptValue::Numbered(o) => {
                            s.options.retain(|x| x.code != o.code);
                            s.options.push(o.clone());
                            let j = s.options.len() - 1;
                            self.draft.origin(*l, &sp.key("option").index(j));
                            continue;
                        }
                        OptValue::Nothing => {
                            has_router = true;
                            self.draft.consumed(*l);
                            continue;
                        }
                    };
                    self.draft.origin(*l, &sp.key(key));
                }
                for (dom, net, l) in &self.subnet_domains {
                    if *net == s.subnet {
                        s.domain = Some(dom.clone());
                        self.draft.origin(*l, &sp.key("domain"));
                    }
                }
                d.subnets.push(s);
            }
            for (_, net, l) in &self.subnet_domains {
                if !self.draft.is_placed(*l) {
                    self.draft.skip(*l, format!("no dhcp-range in {net}"));
                }
            }
            let no_subnet = d.subnets.is_empty();
            for (opt, l) in &self.options {
                if self.draft.is_placed(*l) {
                    continue;
                }
                match opt {
                    _ if no_subnet => self.draft.skip(*l, "no dhcp-range: there is no subnet to send the option on"),
                    OptValue::Nothing => {}
                    _ => self.draft.skip(*l, "the gateway is inside no dhcp-range subnet"),
                }
            }
            if !has_router && !d.subnets.is_empty() {
                let at = self.first_range.unwrap_or(first_line);
                self.draft.note(at, "dnsmasq sends its own address as router (option 3) unless told otherwise: set routers in [[dhcp.subnet]]");
            }
            if !has_dns && !d.subnets.is_empty() {
                let at = self.first_range.unwrap_or(first_line);
                self.draft.note(at, "dnsmasq sends its own address as DNS server (option 6) unless told otherwise: set dns_servers in [[dhcp.subnet]]");
            }
            for (j, (h, l)) in std::mem::take(&mut self.hosts).into_iter().enumerate() {
                d.hosts.push(h);
                self.draft.origin(l, &dp.key("host").index(j));
            }
            self.draft.config.dhcp = Some(d);
        } else {
            for (_, l) in &self.interfaces {
                self.draft.consumed(*l);
            }
            if let Some(l) = self.authoritative {
                self.draft.skip(l, "no dhcp-range or dhcp-host: there is no DHCP server to make authoritative");
            }
            for (_, l) in &self.options {
                self.draft.skip(*l, "no dhcp-range: there is no subnet to send the option on");
            }
            for (_, net, l) in &self.subnet_domains {
                if !self.draft.is_placed(*l) {
                    self.draft.skip(*l, format!("no dhcp-range in {net}"));
                }
            }
        }
        // [dns], unless port=0 turned DNS off.
        let dns_port = self.port.map_or(53, |p| p.0);
        if dns_port == 0 {
            if let Some((_, l)) = self.port {
                self.draft.consumed(l);
            }
            let off = "DNS is off (port=0)";
            let lines: Vec<usize> = self
                .locals
                .iter()
                .map(|x| x.1)
                .chain(self.servers.iter().map(|x| x.1))
                .chain(self.forwards.iter().flat_map(|x| x.2.clone()))
                .chain(self.hosts_files.iter().map(|x| x.1))
                .chain(self.wildcards.values().flat_map(|w| w.1.clone()))
                .chain(self.records.iter().map(|x| x.1))
                .chain(self.listen.iter().map(|x| x.1))
                .chain(self.reverse.iter().map(|x| x.1))
                .chain(self.rebind_allow.iter().map(|x| x.1))
                .chain(self.domain.iter().map(|x| x.1).filter(|l| !self.draft.is_placed(*l)))
                .chain([self.expand_hosts, self.cache_size.map(|x| x.1), self.neg_ttl.map(|x| x.1), self.local_ttl.map(|x| x.1), self.no_hosts].into_iter().flatten())
                .collect();
            for l in lines {
                self.draft.skip(l, off);
            }
        } else {
            let listen: Vec<SockAddr> = if self.listen.is_empty() {
                let at = self.port.map_or(first_line, |p| p.1);
                self.draft.note(at, format!("dnsmasq answers DNS on every interface: listen = 0.0.0.0:{dns_port} and [::]:{dns_port}; narrow it to the gateway's addresses"));
                vec![
                    SockAddr(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), dns_port)),
                    SockAddr(SocketAddr::new(IpAddr::from([0u16; 8]), dns_port)),
                ]
            } else {
                self.listen.iter().map(|(ip, _)| SockAddr(SocketAddr::new(*ip, dns_port))).collect()
            };
            let mut dns = DnsConfig::new(listen);
            let np = KeyPath::new("dns");
            for (j, (_, l)) in self.listen.iter().enumerate() {
                self.draft.origin(*l, &np.key("listen").index(j));
            }
            if let Some((_, l)) = self.port {
                self.draft.origin(l, &np.key("listen"));
            }
            let dom = self.domain.clone().map(|d| d.0).or_else(|| self.locals.first().map(|l| l.0.clone()));
            if let Some(dom) = &dom {
                dns.domain = Some(dom.clone());
                if let Some((_, l)) = &self.domain {
                    self.draft.origin(*l, &np.key("domain"));
                }
            }
            for (d, l) in &self.locals {
                if Some(d) == dom.as_ref() {
                    self.draft.origin(*l, &np.key("domain"));
                } else {
                    self.draft.skip(*l, format!("hastack answers one local domain ([dns] domain = {}); forward {d} to a server or add records", dom.clone().unwrap_or_default()));
                }
            }
            for (j, (net, l)) in self.reverse.iter().enumerate() {
                dns.reverse_networks.push(*net);
                self.draft.origin(*l, &np.key("reverse_networks").index(j));
            }
            for (j, (s, l)) in self.servers.iter().enumerate() {
                dns.servers.push(*s);
                self.draft.origin(*l, &np.key("servers").index(j));
            }
            for (j, (d, ups, lines)) in self.forwards.iter().enumerate() {
                dns.forwards.push(Forward { domain: d.clone(), servers: ups.clone() });
                for l in lines {
                    self.draft.origin(*l, &np.key("forward").index(j));
                }
            }
            for (j, (d, (addrs, lines))) in self.wildcards.iter().enumerate() {
                dns.wildcards.push(Wildcard { domain: d.clone(), addresses: addrs.clone() });
                for l in lines {
                    self.draft.origin(*l, &np.key("wildcard").index(j));
                }
            }
            for (j, (p, l)) in self.hosts_files.iter().enumerate() {
                dns.hosts_files.push(p.clone());
                self.draft.origin(*l, &np.key("hosts_files").index(j));
            }
            for (j, (r, l)) in self.records.iter().enumerate() {
                dns.records.push(r.clone());
                self.draft.origin(*l, &np.key("record").index(j));
            }
            for (j, (d, l)) in self.rebind_allow.iter().enumerate() {
                dns.rebind_allow.push(d.clone());
                self.draft.origin(*l, &np.key("rebind_allow").index(j));
            }
            if let Some(l) = self.expand_hosts {
                dns.expand_hosts = true;
                self.draft.origin(l, &np.key("expand_hosts"));
            }
            if let Some(l) = self.no_hosts {
                dns.read_etc_hosts = false;
                self.draft.origin(l, &np.key("read_etc_hosts"));
            }
            if let Some((c, l)) = self.cache_size {
                dns.cache_size = c;
                self.draft.origin(l, &np.key("cache_size"));
            }
            if let Some((t, l)) = self.neg_ttl {
                dns.neg_ttl = t;
                self.draft.origin(l, &np.key("neg_ttl"));
            }
            if let Some((t, l)) = self.local_ttl {
                dns.local_ttl = t;
                self.draft.origin(l, &np.key("local_ttl"));
            }
            self.draft.config.dns = Some(dns);
        }
        self.draft.finish(Kind::Dnsmasq)
    }
}

/// `0.18.198.in-addr.arpa` → 198.18.0.0/24 (whole octets only).
fn reverse_zone(d: &str) -> Option<Cidr> {
    let labels = d.strip_suffix(".in-addr.arpa")?;
    let mut octets: Vec<u8> = labels.split('.').map(|o| o.parse().ok()).collect::<Option<Vec<u8>>>()?;
    if octets.is_empty() || octets.len() > 4 {
        return None;
    }
    octets.reverse();
    let prefix = octets.len() * 8;
    octets.resize(4, 0);
    format!("{}.{}.{}.{}/{prefix}", octets[0], octets[1], octets[2], octets[3]).parse().ok()
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

    #[test]
    fn ranges_without_a_netmask_assume_a_subnet_and_say_so() {
        let (c, un, toml) = run("interface=eth1\ndhcp-range=198.18.0.150,198.18.0.199,1h\ndhcp-range=198.18.0.10,198.18.0.20\ndhcp-authoritative\n");
        assert!(un.is_empty(), "{un:?}");
        let d = c.dhcp.unwrap();
        assert!(d.authoritative);
        assert_eq!(d.subnets.len(), 1);
        assert_eq!(d.subnets[0].subnet.to_string(), "198.18.0.0/24");
        assert_eq!(d.subnets[0].pool.len(), 2);
        assert!(toml.contains("# line 2: no netmask given: /24 assumed"), "{toml}");
        assert!(toml.contains("sends its own address as router"), "{toml}");
    }

    #[test]
    fn tags_are_listed_with_the_reason() {
        let (_, un, _) = run("interface=eth1\ndhcp-range=set:lan,198.18.0.10,198.18.0.20,255.255.255.0\ndhcp-option=tag:lan,3,198.18.0.1\ndhcp-range=tag:x,198.18.1.10,198.18.1.20\ndhcp-host=set:a,52:54:00:00:00:01,198.18.0.5\n");
        assert_eq!(un.iter().map(|u| u.0).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(un.iter().all(|(_, r)| r.starts_with("tag-based")), "{un:?}");
    }

    #[test]
    fn without_an_interface_dhcp_is_taken_out_with_the_checker_reason() {
        let (c, un, _) = run("dhcp-range=198.18.0.10,198.18.0.20,255.255.255.0\n");
        assert!(c.dhcp.is_none() && c.dns.is_some());
        assert_eq!(un.len(), 1);
        assert!(un[0].1.contains("interfaces is empty"), "{un:?}");
    }

    #[test]
    fn port_zero_turns_dns_off_and_lists_the_dns_lines() {
        let (c, un, _) = run("port=0\nserver=198.18.0.53\ncache-size=10\n");
        assert!(c.dns.is_none());
        assert_eq!(un, vec![(2, "DNS is off (port=0)".to_string()), (3, "DNS is off (port=0)".to_string())]);
    }

    #[test]
    fn dns_options_map_onto_dns_keys() {
        let (c, un, _) = run("listen-address=127.0.0.1,::1\nport=5353\nserver=/corp.example/198.18.1.53#5353\nserver=/corp.example/198.18.1.54\nlocal=/lab.example/\nlocal=/other.example/\naddress=/apps.lab.example/198.18.0.100\naddress=/apps.lab.example/fd00:198:18::100\nrebind-domain-ok=/corp.example/\nno-hosts\n");
        let d = c.dns.unwrap();
        assert_eq!(d.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(), ["127.0.0.1:5353", "[::1]:5353"]);
        assert_eq!(d.forwards.len(), 1);
        assert_eq!(d.forwards[0].servers.len(), 2);
        assert_eq!(d.domain.as_deref(), Some("lab.example"));
        assert_eq!(d.wildcards[0].addresses.len(), 2);
        assert!(!d.read_etc_hosts);
        assert_eq!(d.rebind_allow, ["corp.example"]);
        assert_eq!(un.len(), 1, "{un:?}");
        assert_eq!(un[0].0, 6);
    }

    #[test]
    fn numbered_options_take_their_type_from_the_value() {
        let (c, un, _) = run("interface=eth1\ndhcp-range=198.18.0.10,198.18.0.20,255.255.255.0\ndhcp-option=66,198.18.0.2\ndhcp-option=67,pxelinux.0\ndhcp-option=43,01:02:03\ndhcp-option=23,64\ndhcp-option=3\n");
        let s = &c.dhcp.unwrap().subnets[0];
        assert_eq!(s.options.len(), 3);
        assert!(s.routers.is_empty());
        assert_eq!(un.len(), 1, "{un:?}");
        assert!(un[0].1.contains("integer width"), "{un:?}");
    }

    #[test]
    fn a_domain_per_subnet_goes_to_that_subnet() {
        let (c, un, _) = run("interface=eth1\ndomain=lab.example\ndomain=nodes.lab.example,198.18.0.0/24\ndomain=x.lab.example,198.19.0.0/24\ndhcp-range=198.18.0.10,198.18.0.20,255.255.255.0\n");
        assert_eq!(c.dhcp.unwrap().subnets[0].domain.as_deref(), Some("nodes.lab.example"));
        assert_eq!(un, vec![(4, "no dhcp-range in 198.19.0.0/24".to_string())]);
    }

    #[test]
    fn reverse_zones_become_reverse_networks() {
        assert_eq!(reverse_zone("0.18.198.in-addr.arpa").unwrap().to_string(), "198.18.0.0/24");
        assert_eq!(reverse_zone("198.in-addr.arpa").unwrap().to_string(), "198.0.0.0/8");
        assert!(reverse_zone("x.in-addr.arpa").is_none());
        assert!(reverse_zone("lab.example").is_none());
    }
}
