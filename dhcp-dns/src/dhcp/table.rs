//! The in-memory lease table with its indexes (by address, hardware address, client-id, name).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use hashbrown::HashMap;

use crate::leases::{Lease, LeaseState, UnixTime};

/// Who a client is: its client identifier when it sent one, else its hardware address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Option 61.
    pub client_id: Option<Vec<u8>>,
    /// chaddr (hlen bytes).
    pub hwaddr: Vec<u8>,
}

impl ClientKey {
    /// Does `lease` belong to this client? Client-id decides when both sides have one
    /// (RFC 2131 §4.2); otherwise the hardware address does.
    pub fn owns(&self, lease: &Lease) -> bool {
        match (&self.client_id, &lease.client_id) {
            (Some(a), Some(b)) => a == b,
            _ => self.hwaddr == lease.hwaddr,
        }
    }

    /// A single byte string naming the client (for maps of pending offers).
    pub fn token(&self) -> Vec<u8> {
        match &self.client_id {
            Some(c) => {
                let mut v = Vec::with_capacity(c.len() + 1);
                v.push(0);
                v.extend_from_slice(c);
                v
            }
            None => {
                let mut v = Vec::with_capacity(self.hwaddr.len() + 1);
                v.push(1);
                v.extend_from_slice(&self.hwaddr);
                v
            }
        }
    }
}

/// All leases known to the server, indexed.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_addr: HashMap<Ipv4Addr, Lease>,
    by_hw: HashMap<Vec<u8>, Ipv4Addr>,
    by_cid: HashMap<Vec<u8>, Ipv4Addr>,
    by_name: HashMap<String, Ipv4Addr>,
    /// Active leases by expiry, for timers.
    expiries: BTreeSet<(UnixTime, Ipv4Addr)>,
}

impl LeaseTable {
    /// Number of lease records (any state).
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// True when there are no lease records.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The lease record for `addr`.
    pub fn get(&self, addr: Ipv4Addr) -> Option<&Lease> {
        self.by_addr.get(&addr)
    }

    /// Every lease record.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_addr.values()
    }

    /// The most recent lease record of `client`.
    pub fn find_client(&self, client: &ClientKey) -> Option<&Lease> {
        if let Some(cid) = &client.client_id {
            if let Some(l) = self.by_cid.get(cid).and_then(|a| self.by_addr.get(a)) {
                if client.owns(l) {
                    return Some(l);
                }
            }
        }
        self.by_hw
            .get(&client.hwaddr)
            .and_then(|a| self.by_addr.get(a))
            .filter(|l| client.owns(l))
    }

    /// The address holding DNS name `fqdn` (lowercase).
    pub fn by_name(&self, fqdn: &str) -> Option<&Lease> {
        self.by_name.get(fqdn).and_then(|a| self.by_addr.get(a))
    }

    /// Insert or replace the record for `lease.addr`; returns the previous one.
    pub fn insert(&mut self, lease: Lease) -> Option<Lease> {
        let old = self.remove(lease.addr);
        self.by_hw.insert(lease.hwaddr.clone(), lease.addr);
        if let Some(c) = &lease.client_id {
            self.by_cid.insert(c.clone(), lease.addr);
        }
        if let Some(n) = &lease.fqdn {
            if lease.state == LeaseState::Active {
                self.by_name.insert(n.clone(), lease.addr);
            }
        }
        if lease.state == LeaseState::Active || lease.state == LeaseState::Declined {
            self.expiries.insert((lease.expiry, lease.addr));
        }
        self.by_addr.insert(lease.addr, lease);
        old
    }

    /// Forget `addr`; returns its record.
    pub fn remove(&mut self, addr: Ipv4Addr) -> Option<Lease> {
        let old = self.by_addr.remove(&addr)?;
        if self.by_hw.get(&old.hwaddr) == Some(&addr) {
            self.by_hw.remove(&old.hwaddr);
        }
        if let Some(c) = &old.client_id {
            if self.by_cid.get(c) == Some(&addr) {
                self.by_cid.remove(c);
            }
        }
        if let Some(n) = &old.fqdn {
            if self.by_name.get(n) == Some(&addr) {
                self.by_name.remove(n);
            }
        }
        self.expiries.remove(&(old.expiry, addr));
        Some(old)
    }

    /// Earliest expiry among active or quarantined leases.
    pub fn next_expiry(&self) -> Option<UnixTime> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Addresses whose lease (or quarantine) has ended at `now`.
    pub fn due(&self, now: UnixTime) -> Vec<Ipv4Addr> {
        self.expiries.range(..=(now, Ipv4Addr::BROADCAST)).map(|(_, a)| *a).collect()
    }
}
