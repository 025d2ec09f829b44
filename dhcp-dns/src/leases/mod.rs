//! Leases: the record of which client holds which address, made durable by an append-only log.
//!
//! - [`Lease`] is one lease as the DHCP core and the log see it.
//! - [`record`] frames a [`LogRecord`] with a length and a CRC32 so a torn tail is detectable.
//! - [`log::LeaseLog`] is the file: open (recover, truncating a torn tail), append, sync, compact.
//! - [`commit::GroupCommitter`] batches appends from many clients into one `fdatasync` and compacts in
//!   the background.
//! - [`dnsmasq`] imports a dnsmasq lease file.
//!
//! Lifecycle of a lease record: `Active` (granted, until `expiry`) → `Released` (client said so) or
//! `Expired` (time passed) or `Declined` (client found the address in use: quarantined until `expiry`).
//! A `Remove` record forgets an address entirely (used when a lease is garbage-collected); the
//! address keeps a *tombstone* (its revision) so a stale copy of the lease cannot come back.
//!
//! Every record carries a [`Rev`]: which of two decisions about one address is newer. Revisions
//! are what lease replication merges by when gateways that were apart meet again (see
//! [`crate::replication`]).

pub mod commit;
pub mod dnsmasq;
pub mod log;
pub mod record;

use std::net::Ipv4Addr;

pub use commit::GroupCommitter;
pub use log::{LeaseLog, Recovery};
pub use record::LogRecord;

/// Seconds since the Unix epoch; leases outlive the process, so they use wall-clock time.
pub type UnixTime = u64;

/// Expiry value of a lease that never expires (dnsmasq writes 0 for these).
pub const INFINITE: UnixTime = u64::MAX;

/// A record's revision: a hybrid logical clock value. The high bits are the deciding gateway's
/// Unix seconds (`secs << REV_SHIFT`), the low bits count decisions within a second, and a
/// gateway's clock steps past every revision it has seen, so a decision made after seeing another
/// has the higher revision whatever the gateways' clocks say; concurrent decisions (gateways
/// apart) are ordered by wall-clock time.
pub type Rev = u64;

/// Bits of a [`Rev`] below the seconds.
pub const REV_SHIFT: u32 = 20;

/// The revision the seconds `t` start at.
pub fn rev_at(t: UnixTime) -> Rev {
    t.saturating_mul(1 << REV_SHIFT)
}

/// Stamps a node's decisions with increasing [`Rev`]s (a hybrid logical clock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RevClock {
    last: Rev,
}

impl RevClock {
    /// The revision of a decision made now: above every revision stamped or seen before.
    pub fn next(&mut self, now: UnixTime) -> Rev {
        self.last = self.last.saturating_add(1).max(rev_at(now));
        self.last
    }

    /// A revision made elsewhere was seen: later decisions here must rank above it.
    pub fn observe(&mut self, rev: Rev) {
        self.last = self.last.max(rev);
    }
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseState {
    /// Granted and valid until `expiry`.
    Active = 1,
    /// Given back by the client (DHCPRELEASE).
    Released = 2,
    /// Passed its expiry without renewal.
    Expired = 3,
    /// Declined by the client (address in use); quarantined until `expiry`.
    Declined = 4,
}

impl LeaseState {
    /// Decode the on-disk byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Active,
            2 => Self::Released,
            3 => Self::Expired,
            4 => Self::Declined,
            _ => return None,
        })
    }
}

/// One lease: an address bound to a client, with the name it resolves by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The leased address.
    pub addr: Ipv4Addr,
    /// Client hardware address (chaddr, `hlen` bytes; 6 for Ethernet).
    pub hwaddr: Vec<u8>,
    /// DHCP client identifier (option 61), when the client sent one.
    pub client_id: Option<Vec<u8>>,
    /// Host label (no domain), lowercase, as published in DNS.
    pub hostname: Option<String>,
    /// Fully qualified name as published in DNS (no trailing dot).
    pub fqdn: Option<String>,
    /// When the lease was (last) granted.
    pub start: UnixTime,
    /// When it ends; [`INFINITE`] for never.
    pub expiry: UnixTime,
    /// Where the lease is in its life.
    pub state: LeaseState,
    /// Revision of the decision this record carries (see [`Rev`]).
    pub rev: Rev,
}

impl Lease {
    /// True when the lease holds its address at `now`.
    pub fn is_active(&self, now: UnixTime) -> bool {
        self.state == LeaseState::Active && self.expiry > now
    }
}

/// Errors of the lease store. `retry` says whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The file system failed (disk full, I/O error); the lease is NOT durable.
    #[error("lease log {path}: {op}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a lease log (bad magic) — refusing to touch it.
    #[error("lease log {path}: not a hastack lease log (bad header)")]
    BadHeader {
        /// The file involved.
        path: String,
    },
    /// A lease record is too large to be written (names/ids beyond protocol limits).
    #[error("lease record too large ({0} bytes)")]
    RecordTooLarge(usize),
    /// The committer thread is gone (shut down or panicked); the lease is NOT durable.
    #[error("lease committer stopped")]
    CommitterStopped,
}

impl LeaseError {
    /// Whether a retry of the same operation may succeed.
    pub fn retry(&self) -> bool {
        matches!(self, LeaseError::Io { .. })
    }

    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Self {
        LeaseError::Io { path: path.display().to_string(), op, source }
    }
}

/// Colon-separated lowercase hex (`52:54:00:12:34:56`).
pub fn hex_colon(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// A table of leases for `hastack leases`: address, hardware address, name, state, time left.
pub fn render_table(leases: &[Lease], now: UnixTime) -> String {
    let mut rows = vec![["ADDRESS".to_string(), "HWADDR".into(), "NAME".into(), "STATE".into(), "EXPIRES".into()]];
    let mut sorted: Vec<&Lease> = leases.iter().collect();
    sorted.sort_by_key(|l| l.addr);
    for l in sorted {
        let state = match l.state {
            LeaseState::Active if l.expiry <= now => "expired",
            LeaseState::Active => "active",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
            LeaseState::Declined => "declined",
        };
        let expires = if l.expiry == INFINITE {
            "never".to_string()
        } else if l.expiry > now {
            let left = l.expiry - now;
            format!("in {}h{:02}m{:02}s", left / 3600, (left % 3600) / 60, left % 60)
        } else {
            format!("{}s ago", now - l.expiry)
        };
        let name = l.fqdn.clone().or_else(|| l.hostname.clone()).unwrap_or_else(|| "-".into());
        rows.push([l.addr.to_string(), hex_colon(&l.hwaddr), name, state.into(), expires]);
    }
    let widths: Vec<usize> = (0..5).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn renders_leases_sorted_with_state_and_time_left() {
        let l = |a: u8, st, exp| Lease {
            addr: Ipv4Addr::new(198, 18, 0, a),
            hwaddr: vec![0x52, 0x54, 0, 0, 0, a],
            client_id: None,
            hostname: Some(format!("h{a}")),
            fqdn: Some(format!("h{a}.cluster.test")),
            start: 0,
            expiry: exp,
            state: st,
            rev: 0,
        };
        let t = render_table(&[l(9, LeaseState::Active, 1000 + 3725), l(2, LeaseState::Released, 900), l(5, LeaseState::Active, INFINITE)], 1000);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ADDRESS"));
        assert!(lines[1].starts_with("198.18.0.2") && lines[1].contains("released") && lines[1].contains("100s ago"));
        assert!(lines[2].contains("never"));
        assert!(lines[3].contains("52:54:00:00:00:09") && lines[3].contains("h9.cluster.test") && lines[3].contains("in 1h02m05s"));
    }
}
