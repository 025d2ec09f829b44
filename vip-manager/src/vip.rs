//! The `vip` resource agent: adds and removes a VIP through rtnetlink, on a lease the kernel
//! enforces.
//!
//! Lease: every VIP is added with `valid_lft = preferred_lft = Lease::lifetime` and re-added with
//! NLM_F_REPLACE every `Lease::renew_every`, which resets the kernel's lifetime clock. If the daemon
//! dies (even kill -9) or stops renewing, the kernel removes the address by itself. **Bound:** a VIP
//! outlives its last renewal by at most `lifetime` plus the kernel's lifetime-check granularity
//! (address lifetimes are checked on a timer rounded to whole seconds, so up to about 1 s more).
//! With the default 2 s lease renewed every 500 ms, a dead daemon's VIP is gone within ~3 s.
//!
//! Ownership marks, used to find stale VIPs at start-up (before joining the cluster):
//! - every VIP is added with `IFA_PROTO = ADDR_PROTO` (Linux ≥ 6.3 stores it for IPv4 and IPv6;
//!   older kernels ignore it);
//! - IPv4 VIPs also carry the label `<ifname>:hs` (when the name fits in IFNAMSIZ), which older
//!   kernels keep;
//! - and any address equal to a configured VIP is stale too, whatever its marks (the daemon holds
//!   nothing before it joins, so such an address can only be a leftover).
//!
//! IPv6 VIPs are added with IFA_F_NODAD: the cluster, not duplicate address detection, guarantees
//! a single holder, and DAD would delay the takeover by a second or more.

use std::net::IpAddr;
use std::time::Duration;

use futures::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, CacheInfo,
};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::AddressFamily;
use thiserror::Error;

use crate::model::VipSpec;

/// IFA_PROTO value marking addresses added by hastack ('H').
pub const ADDR_PROTO: u8 = 0x48;
/// Suffix of the IPv4 label marking addresses added by hastack.
pub const LABEL_SUFFIX: &str = ":hs";
const IFNAMSIZ: usize = 16;
const EADDRNOTAVAIL: i32 = 99;
const ENODEV: i32 = 19;

/// How long an address lives without renewal, and how often it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// valid_lft = preferred_lft.
    pub lifetime: Duration,
    /// Renewal period; must leave room for at least two renewals per lifetime.
    pub renew_every: Duration,
}

impl Default for Lease {
    fn default() -> Self {
        Lease { lifetime: Duration::from_secs(2), renew_every: Duration::from_millis(500) }
    }
}

impl Lease {
    /// A lease of `lifetime` renewed four times per lifetime.
    pub fn new(lifetime: Duration) -> Self {
        Lease { lifetime, renew_every: lifetime / 4 }
    }

    /// Checks that the kernel can express the lifetime and that renewals come in time.
    pub fn validate(&self) -> Result<(), VipError> {
        let secs = self.lifetime.as_secs();
        if secs < 1 || secs >= u64::from(u32::MAX) || self.lifetime.subsec_nanos() != 0 {
            return Err(VipError::InvalidLease("lifetime must be whole seconds, at least 1 s"));
        }
        if self.renew_every.is_zero() || self.renew_every * 2 > self.lifetime {
            return Err(VipError::InvalidLease("renew_every must be at most half the lifetime"));
        }
        Ok(())
    }

    /// Lifetime in whole seconds, as the kernel takes it.
    fn seconds(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX - 1)
    }
}

/// Errors of the VIP agent. `retry` says whether trying again may help.
#[derive(Debug, Error)]
pub enum VipError {
    /// The netlink socket could not be opened (host problem; no retry).
    #[error("opening the netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    /// The interface does not exist on this node (config or host problem).
    #[error("no interface named {0:?}")]
    NoSuchInterface(String),
    /// The kernel refused a request.
    #[error("netlink {op} {address}: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// The address concerned.
        address: String,
        /// The kernel's (or the library's) error.
        source: rtnetlink::Error,
    },
    /// The lease settings cannot work.
    #[error("invalid lease: {0}")]
    InvalidLease(&'static str),
}

impl VipError {
    /// Whether retrying the same request may succeed.
    pub fn retry(&self) -> bool {
        matches!(self, VipError::Netlink { .. })
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// An interface's index and hardware address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// ifindex.
    pub index: u32,
    /// Ethernet address, when the link has one.
    pub mac: Option<[u8; 6]>,
}

/// An address found on the host that hastack owns (or that equals a configured VIP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundAddress {
    /// ifindex.
    pub index: u32,
    /// Address.
    pub address: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// IPv4 label, if any.
    pub label: Option<String>,
    /// IFA_PROTO, if any.
    pub protocol: Option<u8>,
    /// Remaining valid lifetime in seconds (u32::MAX = forever).
    pub valid_lft: Option<u32>,
}

impl FoundAddress {
    /// True when the address carries one of hastack's marks.
    pub fn is_marked(&self) -> bool {
        self.protocol == Some(ADDR_PROTO)
            || self.label.as_deref().is_some_and(|l| l.ends_with(LABEL_SUFFIX))
    }
}

/// The VIP agent's netlink client. Bound to the network namespace of the thread that created it.
pub struct NetlinkVips {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for NetlinkVips {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl NetlinkVips {
    /// Opens a netlink route socket; must be called inside a tokio runtime (spawns its reader).
    pub fn connect() -> Result<Self, VipError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(VipError::Connect)?;
        let connection = tokio::spawn(conn);
        Ok(NetlinkVips { handle, connection })
    }

    /// Looks up an interface by name.
    pub async fn interface(&self, name: &str) -> Result<Interface, VipError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(VipError::NoSuchInterface(name.to_string())),
            Err(e) if errno(&e) == Some(ENODEV) => return Err(VipError::NoSuchInterface(name.to_string())),
            Err(source) => return Err(VipError::Netlink { op: "get link", address: name.to_string(), source }),
        };
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                Some(m)
            }
            _ => None,
        });
        Ok(Interface { index: msg.header.index, mac })
    }

    /// Adds the VIP, or renews its lease if it is already there.
    pub async fn add(&self, vip: &VipSpec, lease: &Lease) -> Result<(), VipError> {
        lease.validate()?;
        let ifc = self.interface(&vip.interface).await?;
        let mut req = self.handle.address().add(ifc.index, vip.address, vip.prefix_len).replace();
        let msg = req.message_mut();
        let mut ci = CacheInfo::default();
        ci.ifa_valid = lease.seconds();
        ci.ifa_preferred = lease.seconds();
        msg.attributes.push(AddressAttribute::CacheInfo(ci));
        msg.attributes.push(AddressAttribute::Protocol(AddressProtocol::Other(ADDR_PROTO)));
        match vip.address {
            IpAddr::V4(_) => {
                let label = format!("{}{}", vip.interface, LABEL_SUFFIX);
                if label.len() < IFNAMSIZ {
                    msg.attributes.push(AddressAttribute::Label(label));
                }
            }
            IpAddr::V6(_) => {
                msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        req.execute().await.map_err(|source| VipError::Netlink {
            op: "add address",
            address: vip.address.to_string(),
            source,
        })
    }

    /// Removes the VIP; `Ok(false)` when it was not there.
    pub async fn remove(&self, vip: &VipSpec) -> Result<bool, VipError> {
        let ifc = self.interface(&vip.interface).await?;
        self.remove_raw(ifc.index, vip.address, vip.prefix_len).await
    }

    async fn remove_raw(&self, index: u32, address: IpAddr, prefix_len: u8) -> Result<bool, VipError> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = prefix_len;
        msg.header.family = match address {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.attributes.push(AddressAttribute::Local(address));
        msg.attributes.push(AddressAttribute::Address(address));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => Ok(false),
            Err(source) => Err(VipError::Netlink { op: "delete address", address: address.to_string(), source }),
        }
    }

    /// All addresses on the host, as [`FoundAddress`].
    pub async fn addresses(&self) -> Result<Vec<FoundAddress>, VipError> {
        let mut out = Vec::new();
        let mut dump = self.handle.address().get().execute();
        loop {
            let msg = match dump.try_next().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(source) => return Err(VipError::Netlink { op: "dump addresses", address: "*".into(), source }),
            };
            let mut f = FoundAddress {
                index: msg.header.index,
                address: IpAddr::from([0, 0, 0, 0]),
                prefix_len: msg.header.prefix_len,
                label: None,
                protocol: None,
                valid_lft: None,
            };
            let mut local = None;
            let mut addr = None;
            for a in &msg.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => addr = Some(*ip),
                    AddressAttribute::Label(l) => f.label = Some(l.clone()),
                    AddressAttribute::Protocol(p) => f.protocol = Some(u8::from(*p)),
                    AddressAttribute::CacheInfo(c) => f.valid_lft = Some(c.ifa_valid),
                    _ => {}
                }
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
            let Some(ip) = local.or(addr) else { continue };
            f.address = ip;
            out.push(f);
        }
        Ok(out)
    }

    /// Whether the VIP is present on its interface.
    pub async fn has(&self, vip: &VipSpec) -> Result<bool, VipError> {
        let ifc = self.interface(&vip.interface).await?;
        Ok(self
            .addresses()
            .await?
            .iter()
            .any(|a| a.index == ifc.index && a.address == vip.address))
    }

    /// Start-up cleanup: removes every marked address and every address equal to a configured
    /// VIP, on any interface. Returns what was removed.
    pub async fn remove_stale(&self, configured: &[VipSpec]) -> Result<Vec<FoundAddress>, VipError> {
        let mut removed = Vec::new();
        for a in self.addresses().await? {
            if (a.is_marked() || configured.iter().any(|v| v.address == a.address))
                && self.remove_raw(a.index, a.address, a.prefix_len).await?
            {
                tracing::info!(address = %a.address, "removed stale VIP");
                removed.push(a);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_validation() {
        assert!(Lease::default().validate().is_ok());
        assert!(Lease::new(Duration::from_secs(4)).validate().is_ok());
        assert!(Lease::new(Duration::from_millis(1500)).validate().is_err(), "whole seconds");
        assert!(Lease::new(Duration::ZERO).validate().is_err());
        let l = Lease { lifetime: Duration::from_secs(2), renew_every: Duration::from_millis(1500) };
        assert!(l.validate().is_err(), "renewal too slow");
    }

    #[test]
    fn marks() {
        let mut a = FoundAddress {
            index: 1,
            address: "198.18.0.1".parse().unwrap(),
            prefix_len: 24,
            label: Some("eth0".into()),
            protocol: None,
            valid_lft: None,
        };
        assert!(!a.is_marked());
        a.label = Some("eth0:hs".into());
        assert!(a.is_marked());
        a.label = None;
        a.protocol = Some(ADDR_PROTO);
        assert!(a.is_marked());
    }
}

/// Lease renewal bookkeeping, sans-IO: which held VIPs to renew, and which must be given up.
///
/// Lifecycle of one VIP: `added` → held, renewed every `renew_every` while renewals are allowed
/// (the node is in a quorate view and not stalled). Once `last_renewed + lifetime - guard` has
/// passed, the address may already be gone from the kernel, and a "renewal" (an add with
/// NLM_F_REPLACE, which the kernel treats as a create when the address is missing) would bring
/// it back behind the cluster's back: the VIP is reported lost instead and never renewed again.
#[derive(Debug)]
pub struct LeaseKeeper {
    held: std::collections::BTreeMap<crate::model::ResourceId, (VipSpec, Lease, std::time::Instant)>,
    allowed: bool,
}

/// What the driver must do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LeasePoll {
    /// Renew these with their lease (then call [`LeaseKeeper::renewed`]).
    pub renew: Vec<(crate::model::ResourceId, VipSpec, Lease)>,
    /// These may have expired: remove them and report them lost.
    pub lost: Vec<(crate::model::ResourceId, VipSpec)>,
}

impl LeaseKeeper {
    /// An empty keeper; renewals start disallowed.
    pub fn new() -> Self {
        LeaseKeeper { held: Default::default(), allowed: false }
    }

    fn guard(lease: &Lease) -> Duration {
        lease.renew_every.min(lease.lifetime / 4)
    }

    /// A VIP was just added with `lease` (which starts now).
    pub fn added(&mut self, rsc: &crate::model::ResourceId, vip: &VipSpec, lease: Lease, now: std::time::Instant) {
        self.held.insert(rsc.clone(), (vip.clone(), lease, now));
    }

    /// A VIP was removed.
    pub fn removed(&mut self, rsc: &crate::model::ResourceId) {
        self.held.remove(rsc);
    }

    /// A renewal went through at `now`.
    pub fn renewed(&mut self, rsc: &crate::model::ResourceId, now: std::time::Instant) {
        if let Some((_, _, t)) = self.held.get_mut(rsc) {
            *t = (*t).max(now);
        }
    }

    /// Whether renewals may happen (quorate view, not stalled).
    pub fn set_allowed(&mut self, allowed: bool) {
        self.allowed = allowed;
    }

    /// Due renewals and lost leases at `now`. Lost entries are forgotten.
    pub fn poll(&mut self, now: std::time::Instant) -> LeasePoll {
        let mut out = LeasePoll::default();
        self.held.retain(|rsc, (vip, lease, last)| {
            let (life, guard, every) = (lease.lifetime, Self::guard(lease), lease.renew_every);
            if now >= *last + life - guard {
                out.lost.push((rsc.clone(), vip.clone()));
                false
            } else {
                if now >= *last + every {
                    out.renew.push((rsc.clone(), vip.clone(), *lease));
                }
                true
            }
        });
        if !self.allowed {
            out.renew.clear();
        }
        out
    }

    /// Next time [`LeaseKeeper::poll`] has something to say.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.held
            .values()
            .map(|(_, lease, last)| {
                if self.allowed { *last + lease.renew_every } else { *last + lease.lifetime - Self::guard(lease) }
            })
            .min()
    }

    /// VIPs currently held.
    pub fn held(&self) -> impl Iterator<Item = (&crate::model::ResourceId, &VipSpec)> {
        self.held.iter().map(|(r, (v, _, _))| (r, v))
    }
}

impl Default for LeaseKeeper {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;
    use crate::model::ResourceId;
    use std::time::Instant;

    fn spec() -> VipSpec {
        VipSpec { address: "198.18.0.10".parse().unwrap(), prefix_len: 24, interface: "eth0".into() }
    }

    #[test]
    fn renews_on_schedule_while_allowed() {
        let t0 = Instant::now();
        let r = ResourceId::new("vip");
        let mut k = LeaseKeeper::new();
        k.set_allowed(true);
        k.added(&r, &spec(), Lease::default(), t0);
        assert_eq!(k.poll(t0 + Duration::from_millis(100)), LeasePoll::default());
        assert_eq!(k.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        let p = k.poll(t0 + Duration::from_millis(500));
        assert_eq!(p.renew.len(), 1);
        k.renewed(&r, t0 + Duration::from_millis(500));
        assert!(k.poll(t0 + Duration::from_millis(900)).renew.is_empty());
    }

    #[test]
    fn a_lease_past_its_guard_is_lost_not_renewed() {
        let t0 = Instant::now();
        let r = ResourceId::new("vip");
        let mut k = LeaseKeeper::new();
        k.set_allowed(true);
        k.added(&r, &spec(), Lease::default(), t0);
        // Stopped for 1.6 s (guard is 500 ms of a 2 s lease): too close to expiry to renew.
        let p = k.poll(t0 + Duration::from_millis(1600));
        assert!(p.renew.is_empty());
        assert_eq!(p.lost.len(), 1);
        assert_eq!(k.held().count(), 0);
    }

    #[test]
    fn no_renewal_while_disallowed() {
        let t0 = Instant::now();
        let r = ResourceId::new("vip");
        let mut k = LeaseKeeper::new();
        k.added(&r, &spec(), Lease::default(), t0);
        assert!(k.poll(t0 + Duration::from_millis(700)).renew.is_empty());
        assert_eq!(k.poll_timeout(), Some(t0 + Duration::from_millis(1500)));
        k.set_allowed(true);
        assert_eq!(k.poll(t0 + Duration::from_millis(700)).renew.len(), 1);
    }
}
