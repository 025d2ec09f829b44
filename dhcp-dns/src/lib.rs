//! dhcp-dns: the dnsmasq replacement — a DHCPv4 server whose leases are durable (append-only,
//! group-committed log) and an authoritative DNS server whose names follow the leases.
//!
//! - [`leases`]: the durable lease store (log, group commit, compaction, dnsmasq import).
//! - [`dhcp`]: the sans-IO DHCPv4 server core (packets + `now` in, actions out).
//! - [`dns`]: the authoritative zone and the pure query-answering function.
//! - [`server`]: thin tokio drivers for both.

pub mod config;
pub mod leases;
pub mod dhcp;
pub mod dns;
pub mod server;
pub mod runtime;
pub mod from_config;
