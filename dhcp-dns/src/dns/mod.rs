//! Authoritative DNS for the cluster domain: a zone fed by static records, hosts files and the
//! DHCP leases, and a pure function answering queries from it.
//!
//! - [`zone`]: the records (static, wildcard, lease-driven) and the lookup.
//! - [`hosts`]: `/etc/hosts`-format parsing.
//! - [`mod@answer`]: wire query in, wire response out (hickory-proto for the format).
//! - [`forward`]: upstream choice, cache, response checks for names that are not ours.
//! - [`udp`]: the batched (recvmmsg/sendmmsg) UDP loop answering plain queries without allocating.

pub mod answer;
pub mod fast;
pub mod forward;
pub mod hosts;
pub mod ratelimit;
pub mod udp;
pub mod zone;

pub use answer::{AnswerStats, Outcome, Transport, answer, answer_or_forward};
pub use forward::{DnsCache, ForwardConfig};
pub use ratelimit::{RateLimitConfig, RateLimiter};
pub use zone::{SharedZone, Zone, ZoneConfig};
