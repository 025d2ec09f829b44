//! Authoritative DNS for the cluster domain: a zone fed by static records, hosts files and the
//! DHCP leases, and a pure function answering queries from it.
//!
//! - [`zone`]: the records (static, wildcard, lease-driven) and the lookup.
//! - [`hosts`]: `/etc/hosts`-format parsing.
//! - [`answer`]: wire query in, wire response out (hickory-proto for the format).

pub mod answer;
pub mod hosts;
pub mod zone;

pub use answer::{AnswerStats, Transport, answer};
pub use zone::{SharedZone, Zone, ZoneConfig};
