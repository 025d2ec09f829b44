//! The sans-IO DHCPv4 server core (RFC 2131/2132): datagrams and `now` in, [`Action`]s out.
//!
//! # Lifecycle of an address, as this server sees it
//! ```text
//!            DISCOVER                 REQUEST (selecting / init-reboot / renew / rebind)
//!   free ─────────────▶ offered ──────────────────────────────▶ leased (Active) ──┐
//!    ▲    (held offer_hold s)  │ timeout / other server chosen   │   │   │        │ REQUEST
//!    │◀────────────────────────┘                                 │   │   └────────┘ (extend)
//!    │◀──────────── RELEASE (Released) ─────────────────────────┘   │
//!    │◀──────────── expiry (Expired; the record stays, remembered for the same client) ◀┘
//!    │◀──────────── DECLINE → quarantined (Declined until now + decline_quarantine) ──────
//! ```
//! Client states (RFC 2131 §4.3.2) are recognised from the REQUEST's fields: *selecting* has a
//! server identifier; *init-reboot* has a requested address and no ciaddr; *renewing* (unicast)
//! and *rebinding* (broadcast) have ciaddr.
//!
//! # Actions
//! A granted lease comes out as [`Action::PersistLease`] carrying the ACK: the driver makes the
//! record durable and only then sends the reply. [`Action::LeaseChanged`] tells DNS at once.

pub mod table;
pub mod wire;

#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::fqdn::{ClientFQDN, FqdnFlags};
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};
use hashbrown::{HashMap, HashSet};
pub use ipnet::Ipv4Net;

use crate::leases::{Lease, LeaseState, LogRecord, RevClock, UnixTime};
pub use table::{ClientKey, LeaseTable};

/// Server-side UDP port.
pub const SERVER_PORT: u16 = 67;
/// Client-side UDP port.
pub const CLIENT_PORT: u16 = 68;

/// One subnet the server hands out addresses on.
#[derive(Debug, Clone)]
pub struct Subnet {
    /// The network (e.g. 198.18.0.0/24).
    pub network: Ipv4Net,
    /// Dynamic pool ranges, inclusive.
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// This server's address on the subnet (option 54).
    pub server_id: Ipv4Addr,
    /// Lease time granted (option 51), seconds.
    pub lease_secs: u32,
    /// T1 (option 58); default 50% of the lease.
    pub renew_secs: Option<u32>,
    /// T2 (option 59); default 87.5% of the lease.
    pub rebind_secs: Option<u32>,
    /// Routers (option 3).
    pub routers: Vec<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns_servers: Vec<Ipv4Addr>,
    /// NTP servers (option 42).
    pub ntp_servers: Vec<Ipv4Addr>,
    /// Domain name (option 15) and the domain lease names are published under; falls back to
    /// [`DhcpConfig::domain`].
    pub domain: Option<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Classless static routes (option 121, RFC 3442). The default route via the first router is
    /// added to them, because clients that take 121 ignore option 3.
    pub classless_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Arbitrary numbered options (code, raw value); they override the built-in ones.
    pub options: Vec<(u8, Vec<u8>)>,
    /// Probe new addresses before offering them here (None: [`DhcpConfig::conflict_check`]).
    pub conflict_check: Option<bool>,
}

impl Subnet {
    /// A subnet with defaults: 1-hour leases, no options.
    pub fn new(network: Ipv4Net, server_id: Ipv4Addr) -> Subnet {
        Subnet {
            network,
            ranges: Vec::new(),
            server_id,
            lease_secs: 3600,
            renew_secs: None,
            rebind_secs: None,
            routers: Vec::new(),
            dns_servers: Vec::new(),
            ntp_servers: Vec::new(),
            domain: None,
            mtu: None,
            classless_routes: Vec::new(),
            options: Vec::new(),
            conflict_check: None,
        }
    }

    fn in_pool(&self, a: Ipv4Addr) -> bool {
        self.ranges.iter().any(|(lo, hi)| *lo <= a && a <= *hi)
    }

    fn pool_size(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(lo, hi)| u64::from(u32::from(*hi)).saturating_sub(u64::from(u32::from(*lo))) + 1)
            .sum()
    }

    /// The n-th pool address (n < pool_size).
    fn pool_nth(&self, mut n: u64) -> Option<Ipv4Addr> {
        for (lo, hi) in &self.ranges {
            let size = u64::from(u32::from(*hi)).saturating_sub(u64::from(u32::from(*lo))) + 1;
            if n < size {
                return Some(Ipv4Addr::from(u32::from(*lo) + n as u32));
            }
            n -= size;
        }
        None
    }
}

/// A fixed address (and name) for one client.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// Match by hardware address.
    pub hwaddr: Option<Vec<u8>>,
    /// Match by client identifier.
    pub client_id: Option<Vec<u8>>,
    /// The address always given to it.
    pub addr: Ipv4Addr,
    /// Its name; wins over what the client asks for.
    pub hostname: Option<String>,
    /// Its lease time, seconds, instead of the subnet's.
    pub lease_secs: Option<u32>,
}

/// Everything the DHCP core needs to know, as plain data.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// NAK requests for unknown leases or the wrong subnet (and re-grant free addresses);
    /// when false such requests are ignored, leaving them to another server.
    pub authoritative: bool,
    /// Default domain for option 15 and lease names.
    pub domain: Option<String>,
    /// Subnets served.
    pub subnets: Vec<Subnet>,
    /// Static reservations.
    pub reservations: Vec<Reservation>,
    /// How long an offered address is held for the client, seconds.
    pub offer_hold_secs: u64,
    /// How long a declined address is kept out of the pool, seconds.
    pub decline_quarantine_secs: u64,
    /// Probe a new address before offering it (dnsmasq's ping check, but without stalling).
    pub conflict_check: bool,
    /// How long a released or expired lease is remembered (so its client gets the same address
    /// back) before its record is removed, seconds.
    pub expired_retention_secs: u64,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            authoritative: true,
            domain: None,
            subnets: Vec::new(),
            reservations: Vec::new(),
            offer_hold_secs: 30,
            decline_quarantine_secs: 600,
            conflict_check: false,
            expired_retention_secs: 86_400,
        }
    }
}

/// Where the driver must send a reply (RFC 2131 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTarget {
    /// To the relay agent at giaddr, server port 67.
    Relay(SocketAddrV4),
    /// To the client's configured address (ciaddr), client port 68.
    Unicast(SocketAddrV4),
    /// To 255.255.255.255:68.
    Broadcast,
    /// To `ip`:68 at link address `hwaddr`, without ARP (the client has no address yet): the
    /// driver sends it raw or primes the neighbour table first.
    Hardware {
        /// yiaddr.
        ip: Ipv4Addr,
        /// chaddr.
        hwaddr: Vec<u8>,
    },
}

/// A DHCP reply ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Where to send it.
    pub to: ReplyTarget,
    /// The encoded packet.
    pub packet: Vec<u8>,
}

/// A name/address change for DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseChange {
    /// The leased address.
    pub addr: Ipv4Addr,
    /// The name it had (FQDN, lowercase, no trailing dot).
    pub old_name: Option<String>,
    /// The name it has now; `None` when the lease ended or lost its name.
    pub new_name: Option<String>,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply now.
    Reply(Reply),
    /// Make `record` durable, then send `reply` (if any). Never send it before.
    PersistLease {
        /// The lease change.
        record: LogRecord,
        /// The reply held until the record is durable.
        reply: Option<Reply>,
    },
    /// Update DNS.
    LeaseChanged(LeaseChange),
    /// Check that nobody already uses `addr` (ARP/ICMP) before sending this offer; report the
    /// outcome with [`DhcpServer::conflict_detected`] (then handle the request again) or just
    /// send the reply. Other clients are never held up by a probe.
    Probe {
        /// The address about to be offered.
        addr: Ipv4Addr,
        /// The offer, sent if the address is free.
        reply: Reply,
    },
}

/// Counters of the core (exported as metrics by the driver).
#[derive(Debug, Default, Clone)]
pub struct DhcpCounters {
    /// Datagrams handed to the core.
    pub received: u64,
    /// Dropped as malformed (not DHCP, undecodable, missing message type).
    pub malformed: u64,
    /// Dropped: no subnet matches the request.
    pub no_subnet: u64,
    /// Dropped: no free address.
    pub pool_exhausted: u64,
    /// Requests addressed to another server (selecting) — ignored.
    pub other_server: u64,
    /// Requests ignored because not authoritative.
    pub ignored: u64,
    /// Offers sent.
    pub offers: u64,
    /// ACKs sent (leases and INFORM).
    pub acks: u64,
    /// NAKs sent.
    pub naks: u64,
    /// RELEASEs processed.
    pub releases: u64,
    /// DECLINEs processed.
    pub declines: u64,
    /// INFORMs answered.
    pub informs: u64,
    /// Leases that expired.
    pub expired: u64,
    /// Old released/expired records forgotten.
    pub collected: u64,
    /// Addresses found in use by a probe (quarantined).
    pub conflicts: u64,
}

/// Transport facts the driver knows about a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Address of the interface it arrived on, when known (selects the subnet of direct clients).
    pub local_addr: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
struct Offer {
    addr: Ipv4Addr,
    expires: UnixTime,
}

/// The DHCP server state machine.
#[derive(Debug)]
pub struct DhcpServer {
    cfg: DhcpConfig,
    leases: LeaseTable,
    offers: HashMap<Vec<u8>, Offer>,
    offered: HashMap<Ipv4Addr, Vec<u8>>,
    res_by_hw: HashMap<Vec<u8>, usize>,
    res_by_cid: HashMap<Vec<u8>, usize>,
    res_by_addr: HashMap<Ipv4Addr, usize>,
    server_ids: HashSet<Ipv4Addr>,
    cursors: Vec<u64>,
    next_gc: Option<UnixTime>,
    counters: DhcpCounters,
    /// Stamps every lease decision with its revision (what replication merges by).
    clock: RevClock,
}

/// How often old released/expired records are swept, seconds.
const GC_INTERVAL: u64 = 60;

/// RFC 3396 / 2131 minimum a client must accept.
const MIN_DHCP_SIZE: usize = 576;

impl DhcpServer {
    /// A server with no leases yet.
    pub fn new(cfg: DhcpConfig) -> DhcpServer {
        let mut res_by_hw = HashMap::new();
        let mut res_by_cid = HashMap::new();
        let mut res_by_addr = HashMap::new();
        for (i, r) in cfg.reservations.iter().enumerate() {
            if let Some(h) = &r.hwaddr {
                res_by_hw.insert(h.clone(), i);
            }
            if let Some(c) = &r.client_id {
                res_by_cid.insert(c.clone(), i);
            }
            res_by_addr.insert(r.addr, i);
        }
        let server_ids = cfg.subnets.iter().map(|s| s.server_id).collect();
        let cursors = vec![0; cfg.subnets.len()];
        DhcpServer {
            cfg,
            leases: LeaseTable::default(),
            offers: HashMap::new(),
            offered: HashMap::new(),
            res_by_hw,
            res_by_cid,
            res_by_addr,
            server_ids,
            cursors,
            next_gc: None,
            counters: DhcpCounters::default(),
            clock: RevClock::default(),
        }
    }

    /// A revision decided elsewhere (a tombstone in the log, a peer's record): this server's
    /// next decisions rank above it.
    pub fn observe_rev(&mut self, rev: crate::leases::Rev) {
        self.clock.observe(rev);
    }

    /// Load leases recovered from the log; returns the DNS changes for the ones still active.
    pub fn restore(&mut self, leases: impl IntoIterator<Item = Lease>, now: UnixTime) -> Vec<Action> {
        let mut out = Vec::new();
        for l in leases {
            self.clock.observe(l.rev);
            if l.is_active(now) && l.fqdn.is_some() {
                out.push(Action::LeaseChanged(LeaseChange { addr: l.addr, old_name: None, new_name: l.fqdn.clone() }));
            }
            self.leases.insert(l);
        }
        out
    }

    /// Apply a lease change made by a peer gateway (replication): the record replaces ours for
    /// that address, is persisted here too, and DNS follows. Offers we hold for that address are
    /// withdrawn, since the peer has given it away. A record older than ours (by revision: we
    /// decided after it, or a stale copy) changes nothing.
    pub fn apply_replicated(&mut self, rec: LogRecord, now: UnixTime) -> Vec<Action> {
        let addr = rec.addr();
        self.clock.observe(rec.rev());
        if self.leases.get(addr).is_some_and(|cur| !rec.newer_than(&LogRecord::Upsert(cur.clone()))) {
            return Vec::new();
        }
        let old_name = self.leases.get(addr).filter(|l| l.is_active(now)).and_then(|l| l.fqdn.clone());
        let new_name = match &rec {
            LogRecord::Upsert(l) if l.is_active(now) => l.fqdn.clone(),
            _ => None,
        };
        // A name the peer gave to this address leaves any other address that had it here.
        let mut out = Vec::new();
        if let Some(n) = &new_name {
            if let Some(other) = self.leases.by_name(n).filter(|l| l.addr != addr).cloned() {
                let mut other = other;
                out.push(Action::LeaseChanged(LeaseChange { addr: other.addr, old_name: other.fqdn.clone(), new_name: None }));
                other.fqdn = None;
                other.hostname = None;
                self.leases.insert(other);
            }
        }
        match &rec {
            LogRecord::Upsert(l) => {
                self.leases.insert(l.clone());
            }
            LogRecord::Remove(a, _) => {
                self.leases.remove(*a);
            }
        }
        if let Some(tok) = self.offered.remove(&addr) {
            self.offers.remove(&tok);
        }
        if old_name != new_name {
            out.push(Action::LeaseChanged(LeaseChange { addr, old_name, new_name }));
        }
        out.push(Action::PersistLease { record: rec, reply: None });
        out
    }

    /// The lease table.
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// The counters.
    pub fn counters(&self) -> &DhcpCounters {
        &self.counters
    }

    /// The configuration in force.
    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Option<UnixTime> {
        let offers = self.offers.values().map(|o| o.expires).min();
        let gc = self.next_gc.filter(|_| !self.leases.is_empty());
        [self.leases.next_expiry(), offers, gc].into_iter().flatten().min()
    }

    /// Advance time: expire leases, end quarantines, drop stale offers.
    pub fn handle_timeout(&mut self, now: UnixTime) -> Vec<Action> {
        let mut out = Vec::new();
        self.offers.retain(|_, o| o.expires > now);
        let offers = &self.offers;
        self.offered.retain(|_, tok| offers.contains_key(tok));
        for addr in self.leases.due(now) {
            let Some(mut l) = self.leases.get(addr).cloned() else { continue };
            match l.state {
                LeaseState::Active => {
                    self.counters.expired += 1;
                    if l.fqdn.is_some() {
                        out.push(Action::LeaseChanged(LeaseChange { addr, old_name: l.fqdn.clone(), new_name: None }));
                    }
                    // The record's expiry already says it ended: no write needed; kept in memory
                    // so the same client gets the same address back.
                    l.state = LeaseState::Expired;
                    self.leases.insert(l);
                }
                LeaseState::Declined => {
                    // Quarantine over: forget the address. The tombstone ranks just above the
                    // quarantine, not at "now": a decision a peer made meanwhile still wins.
                    self.leases.remove(addr);
                    out.push(Action::PersistLease { record: LogRecord::Remove(addr, l.rev.saturating_add(1)), reply: None });
                }
                _ => {}
            }
        }
        match self.next_gc {
            None => self.next_gc = Some(now + GC_INTERVAL),
            Some(t) if now >= t => {
                self.next_gc = Some(now + GC_INTERVAL);
                let keep = self.cfg.expired_retention_secs;
                let old: Vec<(Ipv4Addr, u64)> = self
                    .leases
                    .iter()
                    .filter(|l| matches!(l.state, LeaseState::Released | LeaseState::Expired))
                    .filter(|l| l.expiry.saturating_add(keep) <= now)
                    .map(|l| (l.addr, l.rev))
                    .collect();
                for (addr, rev) in old {
                    self.leases.remove(addr);
                    self.counters.collected += 1;
                    // Derived from the record it forgets (see the quarantine above).
                    out.push(Action::PersistLease { record: LogRecord::Remove(addr, rev.saturating_add(1)), reply: None });
                }
            }
            Some(_) => {}
        }
        out
    }

    /// Handle one received datagram.
    pub fn handle_packet(&mut self, now: UnixTime, bytes: &[u8], meta: RecvMeta) -> Vec<Action> {
        self.counters.received += 1;
        let msg = match wire::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed += 1;
                tracing::debug!(src = %meta.src, error = %e, "malformed DHCP packet dropped");
                return Vec::new();
            }
        };
        if msg.opcode() != Opcode::BootRequest {
            self.counters.malformed += 1;
            return Vec::new();
        }
        let Some(mt) = msg.opts().msg_type() else {
            self.counters.malformed += 1;
            return Vec::new();
        };
        let client = ClientKey {
            client_id: match msg.opts().get(OptionCode::ClientIdentifier) {
                Some(DhcpOption::ClientIdentifier(c)) if !c.is_empty() => Some(c.clone()),
                _ => None,
            },
            hwaddr: wire::chaddr(&msg),
        };
        match mt {
            MessageType::Discover => self.discover(now, &msg, &client, meta),
            MessageType::Request => self.request(now, &msg, &client, meta),
            MessageType::Release => self.release(now, &msg, &client),
            MessageType::Decline => self.decline(now, &msg, &client),
            MessageType::Inform => self.inform(&msg, meta),
            _ => {
                self.counters.malformed += 1;
                Vec::new()
            }
        }
    }

    // ----- subnet and address choice -----

    fn subnet_of(&self, a: Ipv4Addr) -> Option<usize> {
        self.cfg.subnets.iter().position(|s| s.network.contains(&a))
    }

    /// RFC 2131 §4.3.1: the subnet is giaddr's if relayed, else the receiving interface's.
    fn select_subnet(&self, msg: &Message, meta: RecvMeta) -> Option<usize> {
        if !msg.giaddr().is_unspecified() {
            return self.subnet_of(msg.giaddr());
        }
        if let Some(l) = meta.local_addr {
            if let Some(i) = self.subnet_of(l) {
                return Some(i);
            }
        }
        if !msg.ciaddr().is_unspecified() {
            if let Some(i) = self.subnet_of(msg.ciaddr()) {
                return Some(i);
            }
        }
        (self.cfg.subnets.len() == 1).then_some(0)
    }

    fn reservation_of(&self, client: &ClientKey) -> Option<&Reservation> {
        let by_cid = client.client_id.as_ref().and_then(|c| self.res_by_cid.get(c));
        let idx = by_cid.or_else(|| self.res_by_hw.get(&client.hwaddr))?;
        self.cfg.reservations.get(*idx)
    }

    /// May `addr` be leased to `client` on subnet `si` at `now`?
    fn available(&self, addr: Ipv4Addr, client: &ClientKey, si: usize, now: UnixTime) -> bool {
        let s = &self.cfg.subnets[si];
        if !s.network.contains(&addr)
            || addr == s.network.network()
            || addr == s.network.broadcast()
            || self.server_ids.contains(&addr)
        {
            return false;
        }
        let reserved_for_me = self.reservation_of(client).is_some_and(|r| r.addr == addr);
        if !reserved_for_me {
            if self.res_by_addr.contains_key(&addr) || !s.in_pool(addr) {
                return false;
            }
        }
        if let Some(l) = self.leases.get(addr) {
            let busy = match l.state {
                LeaseState::Active => l.expiry > now,
                LeaseState::Declined => l.expiry > now,
                _ => false,
            };
            if l.state == LeaseState::Declined && busy {
                return false;
            }
            if busy && !client.owns(l) {
                return false;
            }
        }
        if let Some(tok) = self.offered.get(&addr) {
            if *tok != client.token() && self.offers.get(tok).is_some_and(|o| o.expires > now) {
                return false;
            }
        }
        true
    }

    fn choose_addr(&mut self, now: UnixTime, msg: &Message, client: &ClientKey, si: usize) -> Option<Ipv4Addr> {
        if let Some(r) = self.reservation_of(client) {
            let a = r.addr;
            if self.cfg.subnets[si].network.contains(&a) && self.available(a, client, si, now) {
                return Some(a);
            }
        }
        if let Some(l) = self.leases.find_client(client) {
            let a = l.addr;
            if l.state != LeaseState::Declined && self.available(a, client, si, now) {
                return Some(a);
            }
        }
        if let Some(o) = self.offers.get(&client.token()) {
            let a = o.addr;
            if self.available(a, client, si, now) {
                return Some(a);
            }
        }
        if let Some(DhcpOption::RequestedIpAddress(a)) = msg.opts().get(OptionCode::RequestedIpAddress) {
            let a = *a;
            if self.available(a, client, si, now) && self.leases.get(a).is_none_or(|l| client.owns(l) || l.state == LeaseState::Released) {
                return Some(a);
            }
        }
        // Rotate through the pool: first addresses nobody ever had, then ones others let lapse.
        let size = self.cfg.subnets[si].pool_size();
        if size == 0 {
            return None;
        }
        for pass in 0..2 {
            let start = self.cursors[si] % size;
            for k in 0..size {
                let n = (start + k) % size;
                let Some(a) = self.cfg.subnets[si].pool_nth(n) else { break };
                if pass == 0 && self.leases.get(a).is_some() {
                    continue;
                }
                if self.available(a, client, si, now) {
                    self.cursors[si] = n + 1;
                    return Some(a);
                }
            }
        }
        None
    }

    fn is_ours(&self, msg: &Message) -> Option<bool> {
        match msg.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => Some(self.server_ids.contains(s)),
            _ => None,
        }
    }

    // ----- message handlers -----

    fn discover(&mut self, now: UnixTime, msg: &Message, client: &ClientKey, meta: RecvMeta) -> Vec<Action> {
        let Some(si) = self.select_subnet(msg, meta) else {
            self.counters.no_subnet += 1;
            return Vec::new();
        };
        let Some(addr) = self.choose_addr(now, msg, client, si) else {
            self.counters.pool_exhausted += 1;
            tracing::warn!(subnet = %self.cfg.subnets[si].network, "DHCP pool exhausted");
            return Vec::new();
        };
        let tok = client.token();
        if let Some(old) = self.offers.insert(tok.clone(), Offer { addr, expires: now + self.cfg.offer_hold_secs }) {
            if old.addr != addr {
                self.offered.remove(&old.addr);
            }
        }
        self.offered.insert(addr, tok);
        let names = self.names_for(msg, client, si, None);
        let lease_secs = self.lease_secs(msg, client, si);
        let reply = self.build_reply(msg, MessageType::Offer, addr, si, Some(lease_secs), names.as_ref());
        self.counters.offers += 1;
        // Only an address new to this client is probed: its own lease or reservation answering
        // a ping is the client itself.
        let known = self.leases.get(addr).is_some_and(|l| client.owns(l))
            || self.reservation_of(client).is_some_and(|r| r.addr == addr);
        match reply {
            Some(reply) if self.cfg.subnets[si].conflict_check.unwrap_or(self.cfg.conflict_check) && !known => {
                vec![Action::Probe { addr, reply }]
            }
            Some(reply) => vec![Action::Reply(reply)],
            None => Vec::new(),
        }
    }

    /// A probe found `addr` in use: quarantine it (like a DECLINE) and withdraw its offer. The
    /// driver then handles the client's DISCOVER again, which picks another address.
    pub fn conflict_detected(&mut self, addr: Ipv4Addr, now: UnixTime) -> Vec<Action> {
        self.counters.conflicts += 1;
        tracing::warn!(%addr, "address answered a probe: in use by someone else; quarantined");
        if let Some(tok) = self.offered.remove(&addr) {
            self.offers.remove(&tok);
        }
        let q = Lease {
            addr,
            hwaddr: Vec::new(),
            client_id: None,
            hostname: None,
            fqdn: None,
            start: now,
            expiry: now + self.cfg.decline_quarantine_secs,
            state: LeaseState::Declined,
            rev: self.clock.next(now),
        };
        self.leases.insert(q.clone());
        vec![Action::PersistLease { record: LogRecord::Upsert(q), reply: None }]
    }

    fn request(&mut self, now: UnixTime, msg: &Message, client: &ClientKey, meta: RecvMeta) -> Vec<Action> {
        let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(a)) => Some(*a),
            _ => None,
        };
        let ciaddr = msg.ciaddr();
        match self.is_ours(msg) {
            Some(false) => {
                // SELECTING, and the client chose another server: release our offer.
                self.counters.other_server += 1;
                if let Some(o) = self.offers.remove(&client.token()) {
                    self.offered.remove(&o.addr);
                }
                Vec::new()
            }
            Some(true) => {
                // SELECTING: requested-ip must be what we can give this client.
                let Some(si) = self.select_subnet(msg, meta) else {
                    self.counters.no_subnet += 1;
                    return Vec::new();
                };
                let Some(addr) = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) else {
                    self.counters.malformed += 1;
                    return Vec::new();
                };
                if self.available(addr, client, si, now) {
                    self.grant(now, msg, client, si, addr)
                } else {
                    self.nak(msg, si)
                }
            }
            None if ciaddr.is_unspecified() => {
                // INIT-REBOOT: the client checks an address it remembers.
                let Some(addr) = requested else {
                    self.counters.malformed += 1;
                    return Vec::new();
                };
                self.confirm(now, msg, client, meta, addr)
            }
            None => {
                // RENEWING (unicast) or REBINDING (broadcast): extend ciaddr.
                self.confirm(now, msg, client, meta, ciaddr)
            }
        }
    }

    /// Init-reboot / renew / rebind: ACK a lease we know, NAK one we know is wrong, and for
    /// unknown leases follow the authoritative setting.
    fn confirm(&mut self, now: UnixTime, msg: &Message, client: &ClientKey, meta: RecvMeta, addr: Ipv4Addr) -> Vec<Action> {
        let si = self.select_subnet(msg, meta);
        let on_link = si.is_some_and(|si| self.cfg.subnets[si].network.contains(&addr));
        let Some(si) = si.filter(|_| on_link) else {
            // The client's notion of its network is wrong (moved to another subnet).
            return match (self.cfg.authoritative, si) {
                (true, Some(si)) => self.nak(msg, si),
                (true, None) => self.nak_nosubnet(msg),
                _ => {
                    self.counters.ignored += 1;
                    Vec::new()
                }
            };
        };
        let known = self.leases.get(addr).filter(|l| client.owns(l)).cloned();
        let mine = self.leases.find_client(client).map(|l| l.addr);
        match known {
            Some(_) if self.available(addr, client, si, now) => self.grant(now, msg, client, si, addr),
            Some(_) => self.nak(msg, si),
            None if mine.is_some_and(|m| m != addr) && self.leases.get(mine.unwrap_or(addr)).is_some_and(|l| l.is_active(now)) => {
                // We know this client holds another address.
                self.nak(msg, si)
            }
            None if self.cfg.authoritative => {
                // Unknown lease (e.g. right after a failover without replication): re-grant it if
                // the address is free for this client, else NAK so it restarts DISCOVER.
                if self.available(addr, client, si, now) {
                    self.grant(now, msg, client, si, addr)
                } else {
                    self.nak(msg, si)
                }
            }
            None => {
                self.counters.ignored += 1;
                Vec::new()
            }
        }
    }

    fn release(&mut self, now: UnixTime, msg: &Message, client: &ClientKey) -> Vec<Action> {
        if self.is_ours(msg) == Some(false) {
            self.counters.other_server += 1;
            return Vec::new();
        }
        let addr = msg.ciaddr();
        let Some(mut l) = self.leases.get(addr).filter(|l| client.owns(l) && l.state == LeaseState::Active).cloned() else {
            self.counters.ignored += 1;
            return Vec::new();
        };
        self.counters.releases += 1;
        let old_name = l.fqdn.clone();
        l.state = LeaseState::Released;
        l.expiry = now;
        l.rev = self.clock.next(now);
        self.leases.insert(l.clone());
        let mut out = vec![Action::PersistLease { record: LogRecord::Upsert(l), reply: None }];
        if old_name.is_some() {
            out.push(Action::LeaseChanged(LeaseChange { addr, old_name, new_name: None }));
        }
        out
    }

    fn decline(&mut self, now: UnixTime, msg: &Message, client: &ClientKey) -> Vec<Action> {
        if self.is_ours(msg) == Some(false) {
            self.counters.other_server += 1;
            return Vec::new();
        }
        let Some(DhcpOption::RequestedIpAddress(addr)) = msg.opts().get(OptionCode::RequestedIpAddress) else {
            self.counters.malformed += 1;
            return Vec::new();
        };
        let addr = *addr;
        let owned = self.leases.get(addr).is_some_and(|l| client.owns(l));
        let offered = self.offers.get(&client.token()).is_some_and(|o| o.addr == addr);
        if !owned && !offered {
            self.counters.ignored += 1;
            return Vec::new();
        }
        self.counters.declines += 1;
        tracing::warn!(%addr, "address declined by client (in use?): quarantined");
        if let Some(o) = self.offers.remove(&client.token()) {
            self.offered.remove(&o.addr);
        }
        let old_name = self.leases.get(addr).and_then(|l| l.fqdn.clone());
        // The quarantine is a lease record nobody owns, so it survives a restart.
        let q = Lease {
            addr,
            hwaddr: Vec::new(),
            client_id: None,
            hostname: None,
            fqdn: None,
            start: now,
            expiry: now + self.cfg.decline_quarantine_secs,
            state: LeaseState::Declined,
            rev: self.clock.next(now),
        };
        self.leases.insert(q.clone());
        let mut out = vec![Action::PersistLease { record: LogRecord::Upsert(q), reply: None }];
        if old_name.is_some() {
            out.push(Action::LeaseChanged(LeaseChange { addr, old_name, new_name: None }));
        }
        out
    }

    fn inform(&mut self, msg: &Message, meta: RecvMeta) -> Vec<Action> {
        let si = if msg.giaddr().is_unspecified() { self.subnet_of(msg.ciaddr()) } else { self.select_subnet(msg, meta) };
        let Some(si) = si.or_else(|| self.select_subnet(msg, meta)) else {
            self.counters.no_subnet += 1;
            return Vec::new();
        };
        self.counters.informs += 1;
        self.counters.acks += 1;
        self.build_reply(msg, MessageType::Ack, Ipv4Addr::UNSPECIFIED, si, None, None)
            .map(Action::Reply)
            .into_iter()
            .collect()
    }

    fn grant(&mut self, now: UnixTime, msg: &Message, client: &ClientKey, si: usize, addr: Ipv4Addr) -> Vec<Action> {
        let mut out = Vec::new();
        let prev = self.leases.get(addr).cloned();
        // A client moving to a new address gives up its old one.
        if let Some(old) = self.leases.find_client(client).filter(|l| l.addr != addr && l.state == LeaseState::Active).cloned() {
            let mut old = old;
            if old.fqdn.is_some() {
                out.push(Action::LeaseChanged(LeaseChange { addr: old.addr, old_name: old.fqdn.clone(), new_name: None }));
            }
            old.state = LeaseState::Released;
            old.expiry = now;
            old.fqdn = None;
            old.rev = self.clock.next(now);
            self.leases.insert(old.clone());
            out.push(Action::PersistLease { record: LogRecord::Upsert(old), reply: None });
        }
        let names = self.names_for(msg, client, si, prev.as_ref().filter(|l| client.owns(l)));
        let (hostname, fqdn) = match &names {
            Some((h, f)) => (Some(h.clone()), Some(f.clone())),
            None => (None, None),
        };
        // Newest holder of a name wins it, unless it is another client's reserved name.
        if let Some(f) = &fqdn {
            if let Some(other) = self.leases.by_name(f).filter(|l| l.addr != addr).cloned() {
                let mut other = other;
                out.push(Action::LeaseChanged(LeaseChange { addr: other.addr, old_name: other.fqdn.clone(), new_name: None }));
                other.fqdn = None;
                other.hostname = None;
                other.rev = self.clock.next(now);
                self.leases.insert(other.clone());
                out.push(Action::PersistLease { record: LogRecord::Upsert(other), reply: None });
            }
        }
        let lease_secs = self.lease_secs(msg, client, si);
        let lease = Lease {
            addr,
            hwaddr: client.hwaddr.clone(),
            client_id: client.client_id.clone(),
            hostname,
            fqdn: fqdn.clone(),
            start: now,
            expiry: now + u64::from(lease_secs),
            state: LeaseState::Active,
            rev: self.clock.next(now),
        };
        let old_name = prev.as_ref().filter(|l| l.state == LeaseState::Active && l.expiry > now).and_then(|l| l.fqdn.clone());
        if old_name != fqdn {
            out.push(Action::LeaseChanged(LeaseChange { addr, old_name, new_name: fqdn }));
        }
        self.leases.insert(lease.clone());
        if let Some(o) = self.offers.remove(&client.token()) {
            self.offered.remove(&o.addr);
        }
        let reply = self.build_reply(msg, MessageType::Ack, addr, si, Some(lease_secs), names.as_ref());
        self.counters.acks += 1;
        out.push(Action::PersistLease { record: LogRecord::Upsert(lease), reply });
        out
    }

    fn nak(&mut self, msg: &Message, si: usize) -> Vec<Action> {
        self.counters.naks += 1;
        self.build_reply(msg, MessageType::Nak, Ipv4Addr::UNSPECIFIED, si, None, None)
            .map(Action::Reply)
            .into_iter()
            .collect()
    }

    fn nak_nosubnet(&mut self, msg: &Message) -> Vec<Action> {
        // A NAK still needs a server id: use the first subnet's (only reached when authoritative).
        if self.cfg.subnets.is_empty() {
            self.counters.no_subnet += 1;
            return Vec::new();
        }
        self.nak(msg, 0)
    }

    // ----- names -----

    fn domain(&self, si: usize) -> Option<&str> {
        self.cfg.subnets[si].domain.as_deref().or(self.cfg.domain.as_deref()).map(|d| d.trim_end_matches('.'))
    }

    /// The (host label, FQDN) for this client: reservation name, else option 81, else option 12,
    /// else the name its lease already had.
    fn names_for(&self, msg: &Message, client: &ClientKey, si: usize, prev: Option<&Lease>) -> Option<(String, String)> {
        let reserved = self.reservation_of(client).and_then(|r| r.hostname.clone());
        let asked = match msg.opts().get(OptionCode::ClientFQDN) {
            Some(DhcpOption::ClientFQDN(f)) => f.domain().iter().next().map(|l| String::from_utf8_lossy(l).into_owned()),
            _ => None,
        }
        .or_else(|| match msg.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.clone()),
            _ => None,
        });
        let label = reserved
            .as_deref()
            .and_then(sanitize_label)
            .or_else(|| asked.as_deref().and_then(sanitize_label))
            .or_else(|| prev.and_then(|l| l.hostname.clone()))?;
        let fqdn = match self.domain(si) {
            Some(d) if !d.is_empty() => format!("{label}.{}", d.to_ascii_lowercase()),
            _ => label.clone(),
        };
        Some((label, fqdn))
    }

    fn lease_secs(&self, msg: &Message, client: &ClientKey, si: usize) -> u32 {
        let max = self.reservation_of(client).and_then(|r| r.lease_secs).unwrap_or(self.cfg.subnets[si].lease_secs);
        match msg.opts().get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(t)) => (*t).clamp(60.min(max), max),
            _ => max,
        }
    }

    // ----- replies -----

    fn build_reply(
        &self,
        req: &Message,
        mt: MessageType,
        yiaddr: Ipv4Addr,
        si: usize,
        lease_secs: Option<u32>,
        names: Option<&(String, String)>,
    ) -> Option<Reply> {
        let s = &self.cfg.subnets[si];
        let mut m = Message::new_with_id(req.xid(), Ipv4Addr::UNSPECIFIED, yiaddr, Ipv4Addr::UNSPECIFIED, req.giaddr(), req.chaddr());
        m.set_opcode(Opcode::BootReply).set_htype(req.htype()).set_flags(req.flags());
        if mt == MessageType::Ack && lease_secs.is_none() {
            m.set_ciaddr(req.ciaddr()); // INFORM
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(mt));
        o.insert(DhcpOption::ServerIdentifier(s.server_id));
        if let Some(DhcpOption::ClientIdentifier(c)) = req.opts().get(OptionCode::ClientIdentifier) {
            o.insert(DhcpOption::ClientIdentifier(c.clone())); // RFC 6842
        }
        if let Some(r @ DhcpOption::RelayAgentInformation(_)) = req.opts().get(OptionCode::RelayAgentInformation) {
            o.insert(r.clone()); // RFC 3046: echo option 82
        }
        if mt == MessageType::Nak {
            o.insert(DhcpOption::Message("address not valid for this client on this network".into()));
            return Some(self.finish(req, m, mt, Ipv4Addr::UNSPECIFIED));
        }
        let prl: Option<Vec<OptionCode>> = match req.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(l)) => Some(l.clone()),
            _ => None,
        };
        let wants = |c: OptionCode| prl.as_ref().is_none_or(|l| l.contains(&c));
        if let Some(t) = lease_secs {
            o.insert(DhcpOption::AddressLeaseTime(t));
            let t1 = s.renew_secs.unwrap_or(t / 2).min(t);
            let t2 = s.rebind_secs.unwrap_or(((u64::from(t) * 7) / 8) as u32).min(t).max(t1);
            o.insert(DhcpOption::Renewal(t1));
            o.insert(DhcpOption::Rebinding(t2));
        }
        o.insert(DhcpOption::SubnetMask(s.network.netmask()));
        if wants(OptionCode::BroadcastAddr) {
            o.insert(DhcpOption::BroadcastAddr(s.network.broadcast()));
        }
        if !s.routers.is_empty() && wants(OptionCode::Router) {
            o.insert(DhcpOption::Router(s.routers.clone()));
        }
        if !s.dns_servers.is_empty() && wants(OptionCode::DomainNameServer) {
            o.insert(DhcpOption::DomainNameServer(s.dns_servers.clone()));
        }
        if let Some(d) = self.domain(si) {
            if wants(OptionCode::DomainName) {
                o.insert(DhcpOption::DomainName(d.to_string()));
            }
        }
        if !s.ntp_servers.is_empty() && wants(OptionCode::NtpServers) {
            o.insert(DhcpOption::NtpServers(s.ntp_servers.clone()));
        }
        if let Some(mtu) = s.mtu {
            if wants(OptionCode::InterfaceMtu) {
                o.insert(DhcpOption::InterfaceMtu(mtu));
            }
        }
        // RFC 3442: only to clients that ask for 121; they then ignore option 3, so the default
        // route travels inside 121 too.
        let asked_121 = prl.as_ref().is_some_and(|l| l.contains(&OptionCode::ClasslessStaticRoute));
        if !s.classless_routes.is_empty() && asked_121 {
            let mut routes = s.classless_routes.clone();
            if let Some(gw) = s.routers.first() {
                if !routes.iter().any(|(n, _)| n.prefix_len() == 0) {
                    routes.push((Ipv4Net::default(), *gw));
                }
            }
            o.insert(DhcpOption::ClasslessStaticRoute(routes));
        }
        if let Some((label, fqdn)) = names {
            if prl.as_ref().is_some_and(|l| l.contains(&OptionCode::Hostname)) {
                o.insert(DhcpOption::Hostname(label.clone()));
            }
            if let Some(DhcpOption::ClientFQDN(cf)) = req.opts().get(OptionCode::ClientFQDN) {
                // RFC 4702 §3.1: S=1 (we publish the A record), O=1 if that overrides the client's
                // wish, E=1 (canonical wire encoding), N=0.
                let cflags = cf.flags();
                let flags = FqdnFlags::new(0).set_s(true).set_e(true).set_o(!cflags.s() || cflags.n());
                if let Ok(name) = dhcproto::Name::from_ascii(format!("{fqdn}.")) {
                    let mut f = ClientFQDN::new(flags, name);
                    f.set_r1(255).set_r2(255);
                    o.insert(DhcpOption::ClientFQDN(f));
                }
            }
        }
        for (code, data) in &s.options {
            if wants(OptionCode::from(*code)) {
                o.insert(DhcpOption::Unknown(UnknownOption::new(OptionCode::from(*code), data.clone())));
            }
        }
        Some(self.finish(req, m, mt, yiaddr))
    }

    /// Address the reply (RFC 2131 §4.1) and encode it within the client's size limit.
    fn finish(&self, req: &Message, mut m: Message, mt: MessageType, yiaddr: Ipv4Addr) -> Reply {
        let giaddr = req.giaddr();
        let to = if !giaddr.is_unspecified() {
            if mt == MessageType::Nak {
                m.set_flags(Flags::default().set_broadcast());
            }
            ReplyTarget::Relay(SocketAddrV4::new(giaddr, SERVER_PORT))
        } else if mt == MessageType::Nak {
            ReplyTarget::Broadcast
        } else if !req.ciaddr().is_unspecified() {
            ReplyTarget::Unicast(SocketAddrV4::new(req.ciaddr(), CLIENT_PORT))
        } else if req.flags().broadcast() || yiaddr.is_unspecified() {
            ReplyTarget::Broadcast
        } else {
            ReplyTarget::Hardware { ip: yiaddr, hwaddr: req.chaddr().to_vec() }
        };
        let limit = match req.opts().get(OptionCode::MaxMessageSize) {
            Some(DhcpOption::MaxMessageSize(n)) => usize::from(*n).max(MIN_DHCP_SIZE),
            _ => MIN_DHCP_SIZE,
        } - 28; // IP + UDP headers
        let mut packet = wire::encode(&m).unwrap_or_default();
        if packet.len() > limit {
            // Shed the optional extras first, keeping what the client needs to configure itself.
            let extras: Vec<OptionCode> = m
                .opts()
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| matches!(c, OptionCode::Unknown(_) | OptionCode::NtpServers | OptionCode::ClasslessStaticRoute))
                .collect();
            for c in extras {
                m.opts_mut().remove(c);
                packet = wire::encode(&m).unwrap_or_default();
                if packet.len() <= limit {
                    break;
                }
            }
        }
        Reply { to, packet }
    }
}

/// A DNS label from a client-supplied name: first label, lowercase, `[a-z0-9-]`, ≤ 63 bytes.
pub fn sanitize_label(name: &str) -> Option<String> {
    let first = name.split('.').next()?.trim();
    let label: String = first
        .chars()
        .filter_map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' {
                Some(c)
            } else if c == '_' || c == ' ' {
                Some('-')
            } else {
                None
            }
        })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() || label.len() > 63 {
        return None;
    }
    Some(label.to_string())
}
