//! dhcp-dns: the dnsmasq replacement — a DHCPv4 server whose leases are durable (append-only,
//! group-committed log) and an authoritative DNS server whose names follow the leases.
//!
//! - [`leases`]: the durable lease store (log, group commit, compaction, dnsmasq import).
//! - [`dhcp`]: the sans-IO DHCPv4 server core (packets + `now` in, actions out).
//! - [`dns`]: the authoritative zone and the pure query-answering function.
//! - [`server`]: thin tokio drivers for both.
//! - [`group`] and [`replication`]: leases replicated to the other gateways (below).
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
//! Gateways replicate leases through the cluster daemon's process group `"leases"`
//! ([`group`]: Corosync CPG's contract over the membership's ordered channel: every member gets
//! every message and every group view change in one total order). [`replication`] implements the
//! DHCP driver's [`server::LeaseReplicator`] on it: each lease change is multicast, every other
//! member persists it (`fdatasync`) and acknowledges it. A burst of records delivered together
//! is applied by the DHCP driver in one turn and made durable by one group commit, then
//! acknowledged with one message per origin, addressed to the origin alone (the cluster
//! daemons hand it to no other member once every node of the view supports targeted
//! messages; see [`group`]); a record is not delivered back to its origin. The replication
//! driver runs on its own thread.
//!
//! - `replication = "sync"`: the DHCPACK is sent only after the lease is durable in the local log
//!   **and** every other member of the group (as this gateway knew it when it sent the record) has
//!   acknowledged it durable in its own log. A member that leaves the view (node failed, process
//!   stopped) is not waited for; one that joins while the record is in flight receives it after
//!   its join and persists it (it is loading its state then, not serving), unwaited for. If the acks do not arrive within `replication_timeout` (default
//!   500 ms), or the cluster daemon is unreachable, the ACK is sent anyway and the lease is
//!   counted in `replication_failures` and logged: availability first, a lone gateway serves.
//!   **Guarantee:** after a failover the new active gateway holds every lease the old one
//!   acknowledged while they were in one view and the acks arrived in time, names included.
//! - `replication = "async"`: the ACK waits only for the local log; the record is multicast at
//!   once and must be acknowledged by every peer within `replication_window` (default 100 ms),
//!   else it is counted as failed. **Guarantee:** only leases acknowledged within the last
//!   `replication_window` before a crash (plus any counted failure) can be missing on the standby.
//! - State transfer: a gateway that (re)joins the group gets the donor's lease table (the
//!   lowest-id member already in the group) before it serves (bounded wait, 10 s); it keeps a
//!   lease of its own when it is newer (it granted it while cut off) and multicasts those back, so
//!   after a partition heals every gateway converges on the newest decision per address. Peer
//!   records that arrive while a starting gateway loads the snapshot are persisted and
//!   acknowledged as they come, so a sync-mode ACK elsewhere never waits for a snapshot. The
//!   group is joined only while the node is in a quorate view, so a restarting gateway does not
//!   serve a group of its own before it has merged with the cluster.
//! - Versions and tombstones: every lease record carries a revision (a hybrid logical clock
//!   stamped by the DHCP core that decided: above every revision it has seen, else wall-clock
//!   time), and a forgotten address keeps a tombstone (in memory, in the lease log across
//!   compactions, and in snapshots; one entry per address, so bounded by the pools and kept for
//!   as long as a partition lasts). Wherever two records about one address meet, the higher
//!   revision wins, so a lease **released, expired and collected, declined, renamed or removed
//!   while a gateway was cut off does not come back** when that gateway rejoins with its old
//!   copy, and its name stops resolving there too. If both sides of a partition granted leases
//!   (a cut-off gateway serving without `follow_vip`), the merge also keeps one lease per client
//!   and one address per name: the newest decision wins, the other lease is released (or loses
//!   the name) on every gateway. Logs written before revisions existed read with the revision
//!   of each lease's start time.
//! - With `follow_vip`, only the gateway holding the VIP answers DHCP (single writer for the
//!   pool: two servers offering from one pool could give one free address to two clients); the
//!   others keep replicated leases and DNS names current and take over the moment the VIP moves.
//!   Subnets use the VIP as `server_id`, so renewals follow it.
//!
//! Without replication the standby relies on authoritative mode (it re-grants a free address a
//! client asks for).
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
pub mod arp;
pub mod replication;
pub mod runtime;
pub mod from_config;
