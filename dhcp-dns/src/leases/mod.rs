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
//! A `Remove` record forgets an address entirely (used when a lease is garbage-collected).

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
