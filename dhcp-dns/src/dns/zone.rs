//! The authoritative data: static host records, hosts files, wildcard address records and the
//! names of DHCP leases, with a lookup that says answer / no data / no such name / not ours.
//!
//! Names are kept lowercase without the trailing dot. The zone is shared as
//! [`SharedZone`] (`Arc<RwLock<Zone>>`): queries take the read lock for a few hash lookups; a
//! lease change takes the write lock for one insert.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use hashbrown::HashMap;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, RecordType};
use ipnet::IpNet;

use super::hosts::HostsEntry;
use crate::dhcp::LeaseChange;

/// The zone shared by the DNS servers and the DHCP driver.
pub type SharedZone = Arc<RwLock<Zone>>;

/// Plain settings of the zone.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The cluster domain this server is authoritative for (e.g. `cluster.test`).
    pub domain: String,
    /// TTL of local answers (dnsmasq's `local-ttl`; its default is 0).
    pub ttl: u32,
    /// TTL of negative answers (SOA minimum, RFC 2308).
    pub negative_ttl: u32,
    /// SOA primary name server; default `ns.<domain>`.
    pub mname: Option<String>,
    /// SOA mailbox; default `hostmaster.<domain>`.
    pub rname: Option<String>,
    /// Networks whose reverse (PTR) names this server is authoritative for.
    pub reverse_networks: Vec<IpNet>,
}

impl ZoneConfig {
    /// Defaults for `domain`.
    pub fn new(domain: &str) -> ZoneConfig {
        ZoneConfig {
            domain: norm(domain),
            ttl: 0,
            negative_ttl: 0,
            mname: None,
            rname: None,
            reverse_networks: Vec::new(),
        }
    }
}

/// A record handed out by the fast path, borrowed from the zone.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FastRec<'a> {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// PTR target as a hickory name.
    PtrName(&'a Name),
    /// PTR target as a normalised string (lease names).
    PtrStr(&'a str),
}

/// One record of an answer: data and TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    /// The record data.
    pub rdata: RData,
    /// Its TTL; `None` means the zone's local TTL.
    pub ttl: Option<u32>,
}

impl Rec {
    fn new(rdata: RData) -> Rec {
        Rec { rdata, ttl: None }
    }
}

/// Result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records of the asked type.
    Records(Vec<Rec>),
    /// The name is an alias: answer this CNAME, then look the target up.
    Cname(Rec, String),
    /// The SOA of the zone apex.
    Soa,
    /// The name exists, but has no records of that type.
    NoData,
    /// The name does not exist in a zone we are authoritative for.
    NxDomain,
    /// Not ours to answer.
    NotAuthoritative,
}

impl Lookup {
    /// The addresses in a `Records` answer (for tests and status output).
    pub fn addrs(&self) -> Vec<IpAddr> {
        match self {
            Lookup::Records(v) => v
                .iter()
                .filter_map(|r| match &r.rdata {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The target names in a `Records` answer of PTRs.
    pub fn names(&self) -> Vec<String> {
        match self {
            Lookup::Records(v) => v
                .iter()
                .filter_map(|r| match &r.rdata {
                    RData::PTR(p) => Some(norm(&p.0.to_ascii())),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn abs_name(n: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", norm(n))).ok()
}

fn addr_rdata(a: IpAddr) -> RData {
    match a {
        IpAddr::V4(v) => RData::A(A(v)),
        IpAddr::V6(v) => RData::AAAA(AAAA(v)),
    }
}

/// Parse zone-file record data (`value`) of type `kind` (A, AAAA, CNAME, PTR, TXT, MX, SRV).
/// Names without a trailing dot are relative to `domain`.
pub fn parse_rdata(kind: &str, value: &str, domain: &str) -> Result<RData, String> {
    let name = |s: &str| -> Result<Name, String> {
        let full = if s.ends_with('.') || domain.is_empty() { s.to_string() } else { format!("{s}.{domain}") };
        abs_name(&full).ok_or_else(|| format!("\"{s}\" is not a valid DNS name"))
    };
    let v = value.trim();
    let num = |s: Option<&str>, what: &str| -> Result<u16, String> {
        s.and_then(|x| x.parse().ok()).ok_or_else(|| format!("\"{v}\": bad {what}"))
    };
    Ok(match kind.to_ascii_uppercase().as_str() {
        "A" => RData::A(A(v.parse().map_err(|_| format!("\"{v}\" is not an IPv4 address"))?)),
        "AAAA" => RData::AAAA(AAAA(v.parse().map_err(|_| format!("\"{v}\" is not an IPv6 address"))?)),
        "CNAME" => RData::CNAME(CNAME(name(v)?)),
        "PTR" => RData::PTR(PTR(name(v)?)),
        "TXT" => {
            let t = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(v);
            // A TXT character-string holds at most 255 bytes: split longer text.
            let chunks: Vec<String> = t.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
            RData::TXT(TXT::new(if chunks.is_empty() { vec![String::new()] } else { chunks }))
        }
        "MX" => {
            let mut f = v.split_ascii_whitespace();
            let pref = num(f.next(), "preference")?;
            RData::MX(MX::new(pref, name(f.next().ok_or("MX needs \"preference exchange\"")?)?))
        }
        "SRV" => {
            let mut f = v.split_ascii_whitespace();
            let (p, w, port) = (num(f.next(), "priority")?, num(f.next(), "weight")?, num(f.next(), "port")?);
            RData::SRV(SRV::new(p, w, port, name(f.next().ok_or("SRV needs \"priority weight port target\"")?)?))
        }
        other => return Err(format!("record type {other} is not supported")),
    })
}

/// What kind of record is asked (kept for callers that do not have a hickory type at hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A.
    A,
    /// AAAA.
    Aaaa,
    /// PTR.
    Ptr,
    /// SOA.
    Soa,
    /// ANY.
    Any,
    /// Anything else.
    Other,
}

impl Kind {
    fn rtype(self) -> RecordType {
        match self {
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
            Kind::Ptr => RecordType::PTR,
            Kind::Soa => RecordType::SOA,
            Kind::Any => RecordType::ANY,
            Kind::Other => RecordType::NULL,
        }
    }
}

/// The authoritative data.
#[derive(Debug)]
pub struct Zone {
    cfg: ZoneConfig,
    /// Static records by owner name (reverse names included, for PTRs).
    records: HashMap<String, Vec<Rec>>,
    lease_fwd: HashMap<String, Ipv4Addr>,
    lease_ptr: HashMap<Ipv4Addr, String>,
    /// (suffix, addresses): the suffix and every name under it.
    wildcards: Vec<(String, Vec<IpAddr>)>,
    /// For each ancestor of a name we hold, how many held names lie below it: an ancestor with no
    /// records of its own is an empty non-terminal (NODATA, not NXDOMAIN), found in O(1).
    interior: HashMap<String, usize>,
    /// Reverse zone names of `reverse_networks`, computed once.
    reverse_zones: Vec<String>,
    serial: u32,
}

/// The proper ancestors of `name`, nearest first (`a.b.c` → `b.c`, `c`).
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map(move |(i, _)| &name[i + 1..])
}

/// Lowercase, no trailing dot.
pub fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn under(name: &str, suffix: &str) -> bool {
    suffix.is_empty()
        || name == suffix
        || (name.len() > suffix.len()
            && name.ends_with(suffix)
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
}

/// The address a reverse name stands for (`5.0.18.198.in-addr.arpa` → 198.18.0.5).
pub fn parse_reverse(name: &str) -> Option<IpAddr> {
    if let Some(rest) = name.strip_suffix(".in-addr.arpa") {
        // Labels are the octets in reverse order; no allocation (the DNS fast path calls this).
        let mut o = [0u8; 4];
        let mut k = 0;
        for p in rest.rsplit('.') {
            *o.get_mut(k)? = p.parse().ok()?;
            k += 1;
        }
        if k != 4 {
            return None;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    if let Some(rest) = name.strip_suffix(".ip6.arpa") {
        let mut v: u128 = 0;
        let mut k = 0;
        for n in rest.rsplit('.') {
            if n.len() != 1 || k == 32 {
                return None;
            }
            v = (v << 4) | u128::from(u8::from_str_radix(n, 16).ok()?);
            k += 1;
        }
        if k != 32 {
            return None;
        }
        return Some(IpAddr::V6(Ipv6Addr::from(v)));
    }
    None
}

/// The reverse name of an address (no trailing dot).
pub fn reverse_name(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v) => {
            let mut s = String::with_capacity(72);
            for b in v.octets().iter().rev() {
                s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The reverse zone name covering `net`, rounded out to a label boundary.
pub fn reverse_zone(net: IpNet) -> String {
    match net {
        IpNet::V4(n) => {
            let o = n.network().octets();
            let k = usize::from(n.prefix_len() / 8);
            let mut labels: Vec<String> = o[..k].iter().rev().map(|b| b.to_string()).collect();
            labels.push("in-addr.arpa".into());
            labels.join(".")
        }
        IpNet::V6(n) => {
            let full = reverse_name(IpAddr::V6(n.network()));
            let k = usize::from(n.prefix_len() / 4);
            // 32 nibble labels of 2 bytes each precede "ip6.arpa".
            full[(32 - k) * 2..].to_string()
        }
    }
}

impl Zone {
    /// An empty zone.
    pub fn new(cfg: ZoneConfig) -> Zone {
        let reverse_zones = cfg.reverse_networks.iter().map(|n| reverse_zone(*n)).collect();
        Zone {
            interior: HashMap::new(),
            reverse_zones,
            cfg,
            records: HashMap::new(),
            lease_fwd: HashMap::new(),
            lease_ptr: HashMap::new(),
            wildcards: Vec::new(),
            serial: 1,
        }
    }

    /// Wrap for sharing.
    pub fn shared(self) -> SharedZone {
        Arc::new(RwLock::new(self))
    }

    /// The settings.
    pub fn config(&self) -> &ZoneConfig {
        &self.cfg
    }

    /// SOA serial; bumped by every change.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn bump(&mut self) {
        self.serial = self.serial.wrapping_add(1).max(1);
    }

    /// Add a static address record (and its PTR).
    pub fn add_host(&mut self, name: &str, addr: IpAddr) {
        let n = norm(name);
        self.add_record(&n, addr_rdata(addr), None);
        if let Some(target) = abs_name(&n) {
            self.add_record(&reverse_name(addr), RData::PTR(PTR(target)), None);
        }
    }

    /// Add a static record at `name` (absolute, normalised here); duplicates are ignored.
    pub fn add_record(&mut self, name: &str, rdata: RData, ttl: Option<u32>) {
        let n = norm(name);
        if !self.records.contains_key(&n) {
            self.mark_interior(&n, true);
        }
        let v = self.records.entry(n).or_default();
        if !v.iter().any(|r| r.rdata == rdata) {
            v.push(Rec { rdata, ttl });
        }
        self.bump();
    }

    /// Add hosts-file entries; with `expand`, bare names also get `.<domain>` (dnsmasq
    /// `expand-hosts`).
    pub fn add_hosts(&mut self, entries: &[HostsEntry], expand: bool) {
        for e in entries {
            for n in &e.names {
                if expand && !n.contains('.') && !self.cfg.domain.is_empty() {
                    let full = format!("{n}.{}", self.cfg.domain);
                    self.add_host(&full, e.addr);
                }
                self.add_host(n, e.addr);
            }
        }
    }

    /// Answer `addr` for `domain` and every name under it (dnsmasq `address=/domain/addr`).
    pub fn add_wildcard(&mut self, domain: &str, addr: IpAddr) {
        let d = norm(domain);
        match self.wildcards.iter_mut().find(|(s, _)| *s == d) {
            Some((_, v)) => v.push(addr),
            None => self.wildcards.push((d, vec![addr])),
        }
        // Longest suffix first, so the most specific wins.
        self.wildcards.sort_by(|a, b| b.0.len().cmp(&a.0.len()));
        self.bump();
    }

    fn mark_interior(&mut self, name: &str, add: bool) {
        for a in ancestors(name) {
            if add {
                *self.interior.entry(a.to_string()).or_default() += 1;
            } else if let Some(c) = self.interior.get_mut(a) {
                *c -= 1;
                if *c == 0 {
                    self.interior.remove(a);
                }
            }
        }
    }

    /// Apply a lease's name change (called the moment the DHCP core decides it).
    pub fn apply_lease(&mut self, ch: &LeaseChange) {
        if let Some(old) = &ch.old_name {
            if self.lease_fwd.get(old) == Some(&ch.addr) {
                self.lease_fwd.remove(old);
                self.mark_interior(old, false);
            }
        }
        if self.lease_ptr.get(&ch.addr).is_some_and(|n| Some(n) == ch.old_name.as_ref() || ch.new_name.is_some()) {
            self.lease_ptr.remove(&ch.addr);
        }
        if let Some(new) = &ch.new_name {
            let n = norm(new);
            // A name moving to a new address drops its old PTR.
            match self.lease_fwd.insert(n.clone(), ch.addr) {
                Some(prev) => {
                    if prev != ch.addr && self.lease_ptr.get(&prev) == Some(&n) {
                        self.lease_ptr.remove(&prev);
                    }
                }
                None => self.mark_interior(&n, true),
            }
            self.lease_ptr.insert(ch.addr, n);
        }
        self.bump();
    }

    /// Number of names from leases.
    pub fn lease_names(&self) -> usize {
        self.lease_fwd.len()
    }

    /// Is `name` (normalised) inside a zone we are authoritative for?
    pub fn is_authoritative(&self, name: &str) -> bool {
        if under(name, &self.cfg.domain) && !self.cfg.domain.is_empty() {
            return true;
        }
        if let Some(ip) = parse_reverse(name) {
            return self.cfg.reverse_networks.iter().any(|n| n.contains(&ip));
        }
        // A reverse zone apex or intermediate name of ours.
        self.reverse_zones.iter().any(|z| under(name, z))
    }

    /// Is `name` (normalised) answered from our data — a zone of ours, or records, a lease or a
    /// wildcard at it? `false` means it is forwarded. Allocates nothing (cache fast path).
    pub(crate) fn answers_for(&self, name: &str) -> bool {
        self.is_authoritative(name)
            || self.records.contains_key(name)
            || self.lease_fwd.contains_key(name)
            || self.wildcards.iter().any(|(s, _)| under(name, s))
            || (name.ends_with(".in-addr.arpa")
                && matches!(parse_reverse(name), Some(IpAddr::V4(ip)) if self.lease_ptr.contains_key(&ip)))
    }

    /// The apex (zone name) that holds `name`, for the SOA of negative answers.
    pub fn apex_of(&self, name: &str) -> &str {
        if under(name, &self.cfg.domain) {
            return &self.cfg.domain;
        }
        self.reverse_zones
            .iter()
            .filter(|z| under(name, z))
            .max_by_key(|z| z.len())
            .map_or(&self.cfg.domain, |z| z)
    }

    /// Every record at `name`: static ones, then the lease's A or PTR, else wildcard addresses.
    fn records_at(&self, name: &str) -> Vec<Rec> {
        let mut v: Vec<Rec> = self.records.get(name).cloned().unwrap_or_default();
        if let Some(a) = self.lease_fwd.get(name) {
            let r = RData::A(A(*a));
            if !v.iter().any(|x| x.rdata == r) {
                v.push(Rec::new(r));
            }
        }
        if let Some(IpAddr::V4(ip)) = parse_reverse(name) {
            if let Some(target) = self.lease_ptr.get(&ip).and_then(|n| abs_name(n)) {
                let r = RData::PTR(PTR(target));
                if !v.iter().any(|x| x.rdata == r) {
                    v.push(Rec::new(r));
                }
            }
        }
        if v.is_empty() {
            if let Some((_, w)) = self.wildcards.iter().find(|(s, _)| under(name, s)) {
                v = w.iter().map(|a| Rec::new(addr_rdata(*a))).collect();
            }
        }
        v
    }

    /// Fast-path lookup for A/AAAA/PTR without cloning: calls `f` for each record of `qtype` at
    /// `name`. `None` means the general path must answer (CNAME present, wildcard, nothing found).
    pub(crate) fn visit(&self, name: &str, qtype: RecordType, f: &mut dyn FnMut(FastRec<'_>, u32)) -> Option<usize> {
        let ttl = self.cfg.ttl;
        let mut n = 0;
        if let Some(v) = self.records.get(name) {
            for r in v {
                let t = r.ttl.unwrap_or(ttl);
                match (&r.rdata, qtype) {
                    (RData::CNAME(_), _) => return None,
                    (RData::A(a), RecordType::A) => f(FastRec::A(a.0), t),
                    (RData::AAAA(a), RecordType::AAAA) => f(FastRec::Aaaa(a.0), t),
                    (RData::PTR(p), RecordType::PTR) => f(FastRec::PtrName(&p.0), t),
                    _ => continue,
                }
                n += 1;
            }
        }
        match qtype {
            RecordType::A => {
                if let Some(a) = self.lease_fwd.get(name) {
                    let dup = self.records.get(name).is_some_and(|v| v.iter().any(|r| r.rdata == RData::A(A(*a))));
                    if !dup {
                        f(FastRec::A(*a), ttl);
                        n += 1;
                    }
                }
            }
            RecordType::PTR => {
                if let Some(IpAddr::V4(ip)) = parse_reverse(name) {
                    if let Some(target) = self.lease_ptr.get(&ip) {
                        let dup = self.records.get(name).is_some_and(|v| {
                            v.iter().any(|r| matches!(&r.rdata, RData::PTR(p) if norm(&p.0.to_ascii()) == *target))
                        });
                        if !dup {
                            f(FastRec::PtrStr(target), ttl);
                            n += 1;
                        }
                    }
                }
            }
            _ => {}
        }
        (n > 0).then_some(n)
    }

    /// Look `name` (normalised) up for records of type `qtype`.
    pub fn lookup_type(&self, name: &str, qtype: RecordType) -> Lookup {
        let auth = self.is_authoritative(name);
        let apex = auth && name == self.apex_of(name);
        if qtype == RecordType::SOA && apex {
            return Lookup::Soa;
        }
        let all = self.records_at(name);
        if all.is_empty() {
            return if apex || (auth && self.has_descendant(name)) {
                Lookup::NoData
            } else if auth {
                Lookup::NxDomain
            } else {
                Lookup::NotAuthoritative
            };
        }
        if qtype != RecordType::CNAME && qtype != RecordType::ANY {
            if let Some(c) = all.iter().find(|r| matches!(r.rdata, RData::CNAME(_))) {
                if let RData::CNAME(t) = &c.rdata {
                    return Lookup::Cname(c.clone(), norm(&t.0.to_ascii()));
                }
            }
        }
        let pick: Vec<Rec> = if qtype == RecordType::ANY {
            all
        } else {
            all.into_iter().filter(|r| r.rdata.record_type() == qtype).collect()
        };
        if pick.is_empty() { Lookup::NoData } else { Lookup::Records(pick) }
    }

    /// Look `name` (normalised) up for `kind`.
    pub fn lookup(&self, name: &str, kind: Kind) -> Lookup {
        self.lookup_type(name, kind.rtype())
    }

    /// An empty non-terminal (e.g. `test` when `a.test` exists) exists: NODATA, not NXDOMAIN.
    fn has_descendant(&self, name: &str) -> bool {
        self.interior.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut c = ZoneConfig::new("Cluster.Test.");
        c.reverse_networks = vec!["198.18.0.0/24".parse().unwrap()];
        Zone::new(c)
    }

    #[test]
    fn reverse_names_round_trip() {
        for a in ["198.18.0.5", "fd00:198:18::5", "::1", "255.255.255.255"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(parse_reverse(&reverse_name(ip)), Some(ip), "{a}");
        }
        assert_eq!(reverse_zone("198.18.0.0/24".parse().unwrap()), "0.18.198.in-addr.arpa");
        assert_eq!(reverse_zone("198.18.0.0/15".parse().unwrap()), "198.in-addr.arpa");
        assert_eq!(reverse_zone("fd00:198:18::/48".parse().unwrap()), "8.1.0.0.8.9.1.0.0.0.d.f.ip6.arpa");
        assert_eq!(parse_reverse("1.2.3.in-addr.arpa"), None);
    }

    fn a(s: &str) -> Vec<IpAddr> {
        vec![s.parse().unwrap()]
    }

    #[test]
    fn lease_names_follow_grant_rename_and_release() {
        let mut z = zone();
        let ad = Ipv4Addr::new(198, 18, 0, 5);
        z.apply_lease(&LeaseChange { addr: ad, old_name: None, new_name: Some("n1.cluster.test".into()) });
        assert_eq!(z.lookup("n1.cluster.test", Kind::A).addrs(), a("198.18.0.5"));
        assert_eq!(z.lookup("5.0.18.198.in-addr.arpa", Kind::Ptr).names(), vec!["n1.cluster.test".to_string()]);
        z.apply_lease(&LeaseChange { addr: ad, old_name: Some("n1.cluster.test".into()), new_name: Some("n2.cluster.test".into()) });
        assert_eq!(z.lookup("n1.cluster.test", Kind::A), Lookup::NxDomain);
        assert_eq!(z.lookup("5.0.18.198.in-addr.arpa", Kind::Ptr).names(), vec!["n2.cluster.test".to_string()]);
        z.apply_lease(&LeaseChange { addr: ad, old_name: Some("n2.cluster.test".into()), new_name: None });
        assert_eq!(z.lookup("n2.cluster.test", Kind::A), Lookup::NxDomain);
        assert_eq!(z.lookup("5.0.18.198.in-addr.arpa", Kind::Ptr), Lookup::NxDomain);
        assert_eq!(z.lookup("5.0.19.198.in-addr.arpa", Kind::Ptr), Lookup::NotAuthoritative);
    }

    #[test]
    fn static_wildcard_nodata_and_not_ours() {
        let mut z = zone();
        z.add_host("api.cluster.test", "198.18.0.10".parse().unwrap());
        z.add_host("api.cluster.test", "fd00:198:18::10".parse().unwrap());
        z.add_wildcard("apps.cluster.test", "198.18.0.20".parse().unwrap());
        assert_eq!(z.lookup("api.cluster.test", Kind::Aaaa).addrs(), a("fd00:198:18::10"));
        assert_eq!(z.lookup("x.y.apps.cluster.test", Kind::A).addrs(), a("198.18.0.20"));
        assert_eq!(z.lookup("apps.cluster.test", Kind::A).addrs(), a("198.18.0.20"));
        assert_eq!(z.lookup("xapps.cluster.test", Kind::A), Lookup::NxDomain);
        assert_eq!(z.lookup("x.apps.cluster.test", Kind::Aaaa), Lookup::NoData);
        assert_eq!(z.lookup("cluster.test", Kind::A), Lookup::NoData);
        assert_eq!(z.lookup("cluster.test", Kind::Soa), Lookup::Soa);
        assert_eq!(z.lookup("example.org", Kind::A), Lookup::NotAuthoritative);
        assert_eq!(z.lookup("api.cluster.test", Kind::Other), Lookup::NoData);
        // Empty non-terminals: NODATA; they vanish with the last name below them.
        z.apply_lease(&LeaseChange { addr: Ipv4Addr::new(198, 18, 0, 9), old_name: None, new_name: Some("n.rack1.cluster.test".into()) });
        assert_eq!(z.lookup("rack1.cluster.test", Kind::A), Lookup::NoData);
        z.apply_lease(&LeaseChange { addr: Ipv4Addr::new(198, 18, 0, 9), old_name: Some("n.rack1.cluster.test".into()), new_name: None });
        assert_eq!(z.lookup("rack1.cluster.test", Kind::A), Lookup::NxDomain);
        assert_eq!(z.lookup("0.18.198.in-addr.arpa", Kind::Ptr), Lookup::NoData, "reverse apex");
    }

    #[test]
    fn hosts_with_expand() {
        let mut z = zone();
        let (e, _) = crate::dns::hosts::parse("198.18.0.7 db\n");
        z.add_hosts(&e, true);
        assert_eq!(z.lookup("db", Kind::A).addrs(), a("198.18.0.7"));
        assert_eq!(z.lookup("db.cluster.test", Kind::A).addrs(), a("198.18.0.7"));
        assert_eq!(z.lookup("7.0.18.198.in-addr.arpa", Kind::Ptr).names(), vec!["db.cluster.test".to_string(), "db".to_string()]);
    }

    #[test]
    fn other_record_types_and_cname() {
        let mut z = zone();
        let d = "cluster.test";
        for (name, kind, value) in [
            ("www.cluster.test", "CNAME", "api"),
            ("api.cluster.test", "A", "198.18.0.10"),
            ("cluster.test", "MX", "10 mail.cluster.test."),
            ("_kube._tcp.cluster.test", "SRV", "0 5 6443 api"),
            ("cluster.test", "TXT", "\"v=spf1 -all\""),
        ] {
            z.add_record(name, parse_rdata(kind, value, d).unwrap(), Some(42));
        }
        match z.lookup_type("www.cluster.test", RecordType::A) {
            Lookup::Cname(r, target) => {
                assert_eq!(target, "api.cluster.test");
                assert_eq!(r.ttl, Some(42));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(z.lookup_type("www.cluster.test", RecordType::CNAME), Lookup::Records(_)));
        assert!(matches!(z.lookup_type("cluster.test", RecordType::MX), Lookup::Records(v) if v.len() == 1));
        assert!(matches!(z.lookup_type("_kube._tcp.cluster.test", RecordType::SRV), Lookup::Records(_)));
        assert!(matches!(z.lookup_type("cluster.test", RecordType::TXT), Lookup::Records(_)));
        assert_eq!(z.lookup_type("cluster.test", RecordType::SOA), Lookup::Soa);
        assert!(parse_rdata("A", "nope", d).is_err());
        assert!(parse_rdata("MX", "x mail", d).is_err());
        assert!(parse_rdata("SRV", "1 2", d).is_err());
        assert!(parse_rdata("HINFO", "x", d).is_err());
    }
}
