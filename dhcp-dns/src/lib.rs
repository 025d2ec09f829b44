//! dhcp-dns: the dnsmasq replacement — a DHCPv4 server whose leases are durable (append-only,
//! group-committed log) and an authoritative DNS server whose names follow the leases.
//!
//! - [`leases`]: the durable lease store (log, group commit, compaction, dnsmasq import).
//! - [`dhcp`]: the sans-IO DHCPv4 server core (packets + `now` in, actions out).
//! - [`dns`]: the authoritative zone and the pure query-answering function.
//! - [`server`]: thin tokio drivers for both.
//! - [`runtime`]: starts the whole service; [`from_config`] maps the `[dhcp]`/`[dns]` sections.
//!
//! # Durability guarantee (single node)
//! A DHCPACK is sent only after the lease record is in the lease log and `fdatasync` returned
//! ([`dhcp::Action::PersistLease`] carries the held reply). Records are length-framed and
//! CRC-checked; after a crash (kill -9, power loss) the log is read up to the last intact record
//! and the torn tail is cut, so every acknowledged lease survives and the file stays readable.
//! Many clients share one `fdatasync` (group commit); compaction rewrites the log in the
//! background (snapshot, fsync, rename, fsync of the directory), never per change.
//!
//! # Replication (high availability)
//! The DHCP driver hands every lease change to a [`server::LeaseReplicator`] (the cluster channel
//! will implement it). In [`server::ReplicationMode::Sync`] the ACK waits until the local log is
//! durable *and* the peers reported the record durable in theirs (or failed, which is counted and
//! logged: a lone gateway keeps serving), so after a failover the standby answers for every lease
//! the old active acknowledged while the peers were reachable, names included. In `Async` the ACK
//! waits only for the local log. Peers' records enter through [`server::ReplicaInput`] and are
//! persisted and published in DNS like local ones. Without replication the standby relies on
//! authoritative mode (it re-grants a free address a client asks for).
//!
//! # DNS
//! Authoritative for the cluster domain and the reverse zones of the served networks: lease
//! names appear and disappear the moment the DHCP core decides, alongside static records, hosts
//! files and wildcard records. Other names are forwarded (per-domain upstreams, bounded cache with
//! negative caching, rebinding protection) or REFUSED when no upstream is configured.

pub mod config;
pub mod leases;
pub mod dhcp;
pub mod dns;
pub mod server;
pub mod group;
pub mod replication;
pub mod runtime;
pub mod from_config;
