//! Start the whole dhcp-dns service from plain settings: open (or import) the lease log, restore
//! the leases into the DHCP core and the zone, start the group committer, the DHCP driver and the
//! DNS servers. This is what the `hastack dhcp-dns` subcommand calls.
//!
//! Lifecycle: `opening` (log recovered, torn tail cut) → `restoring` (active lease names into the
//! zone) → `serving` → `stopping` (listeners closed, durable replies drained, committer joined).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::RData;
use ipnet::IpNet;

use crate::dhcp::{Action, DhcpConfig, DhcpServer};
use crate::dns::hosts;
use crate::dns::{SharedZone, Zone, ZoneConfig};
use crate::leases::commit::CompactionPolicy;
use crate::leases::log::MAGIC;
use crate::leases::{GroupCommitter, Lease, LeaseError, LeaseLog, LogRecord, dnsmasq};
use crate::replication::{self, CoreConfig, ReplicationHandle};
use crate::server::{
    ReplicationMode, AddressProber, ProbeMethod, SubnetProber, DhcpDriverConfig, DhcpHandle, DnsHandle, DnsServerConfig, DriverExtras, IcmpProber, Replication, start_dhcp_with,
    start_dns, unix_now,
};

/// DHCP part of the service.
#[derive(Debug, Clone)]
pub struct DhcpRuntime {
    /// The core's settings.
    pub core: DhcpConfig,
    /// Sockets, one per served interface.
    pub drivers: Vec<DhcpDriverConfig>,
    /// ICMP conflict probe timeout, when `core.conflict_check` is on.
    pub probe_timeout: std::time::Duration,
    /// Lease replication through the cluster daemon's process group (None: leases stay here).
    pub replication: Option<ClusterReplication>,
    /// Answer DHCP only while this host holds this address (see [`DriverExtras::follow_vip`]).
    pub follow_vip: Option<std::net::Ipv4Addr>,
    /// Conflict-check method per subnet (empty: ICMP wherever `core.conflict_check` is on).
    pub probe_methods: Vec<(ipnet::Ipv4Net, ProbeMethod)>,
}

/// Lease replication to the other gateways through the cluster daemon (see the crate docs).
#[derive(Debug, Clone)]
pub struct ClusterReplication {
    /// The cluster daemon's control socket.
    pub socket: PathBuf,
    /// The process group (normally [`LEASE_GROUP`]).
    pub group: String,
    /// Whether the ACK waits for the peers.
    pub mode: ReplicationMode,
    /// Ack deadline (sync: timeout; async: window) and snapshot wait.
    pub core: CoreConfig,
    /// How long start-up waits for the lease state transfer before serving anyway.
    pub sync_wait: std::time::Duration,
}

/// The process group gateways replicate leases in.
pub const LEASE_GROUP: &str = "leases";

/// DNS part of the service.
#[derive(Debug, Clone)]
pub struct DnsRuntime {
    /// Zone settings.
    pub zone: ZoneConfig,
    /// Sockets.
    pub server: DnsServerConfig,
    /// `/etc/hosts`-format files to load.
    pub hosts_files: Vec<PathBuf>,
    /// Bare names in hosts files also get `.<domain>`.
    pub expand_hosts: bool,
    /// Static host records.
    pub hosts: Vec<(String, IpAddr)>,
    /// Static records of any type: owner (absolute), data, TTL (`None`: local TTL).
    pub records: Vec<(String, RData, Option<u32>)>,
    /// Wildcard address records (domain and everything under it).
    pub wildcards: Vec<(String, IpAddr)>,
}

/// Everything needed to run dhcp-dns.
#[derive(Debug, Clone)]
pub struct DhcpDnsOptions {
    /// The durable lease log (opened only when DHCP is served).
    pub lease_file: PathBuf,
    /// When to compact it.
    pub compaction: CompactionPolicy,
    /// A dnsmasq lease file imported when the log holds no lease yet.
    pub import_dnsmasq_leases: Option<PathBuf>,
    /// DHCP, if served.
    pub dhcp: Option<DhcpRuntime>,
    /// DNS, if served.
    pub dns: Option<DnsRuntime>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The lease log could not be opened or written.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A file could not be read or a socket bound.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The running service.
pub struct Running {
    /// The zone (shared with the DHCP driver).
    pub zone: SharedZone,
    /// The DHCP driver, if started.
    pub dhcp: Option<DhcpHandle>,
    /// The DNS server, if started.
    pub dns: Option<DnsHandle>,
    /// The lease committer (when DHCP is served).
    pub committer: Option<Arc<GroupCommitter>>,
    /// Lease replication (when configured).
    pub replication: Option<ReplicationHandle>,
}

impl Running {
    /// Stop everything in order: DHCP (drains durable replies), DNS, then the committer.
    pub async fn shutdown(self) {
        if let Some(d) = self.dhcp {
            let _ = d.shutdown().await;
        }
        if let Some(r) = self.replication {
            r.shutdown().await;
        }
        if let Some(d) = self.dns {
            d.shutdown().await;
        }
        if let Some(Ok(c)) = self.committer.map(Arc::try_unwrap) {
            let _ = tokio::task::spawn_blocking(move || c.shutdown()).await;
        }
    }
}

/// Start the service.
pub async fn start(opts: DhcpDnsOptions) -> Result<Running, RuntimeError> {
    start_replicated(opts, None).await
}

/// Start the service, replicating granted leases to peer gateways through `replication` (records
/// from peers enter through `Running::dhcp`'s [`DhcpHandle::replica_input`]).
pub async fn start_replicated(opts: DhcpDnsOptions, replication: Option<Replication>) -> Result<Running, RuntimeError> {
    let now = unix_now();
    let (mut leases, rev_floor, committer) = if opts.dhcp.is_some() {
        let (leases, floor, c) = open_leases(&opts, now).await?;
        (leases, floor, Some(c))
    } else {
        (Vec::new(), 0, None)
    };
    // Replication through the cluster: join the lease group and take the current lease table
    // (state transfer) before serving; bounded, so a gateway without its cluster still serves.
    let mut replication = replication;
    let mut rep_handle = None;
    if let (Some(c), Some(committer), None) = (opts.dhcp.as_ref().and_then(|d| d.replication.as_ref()), &committer, &replication) {
        let mut h = replication::spawn(c.socket.clone(), c.group.clone(), c.core, committer.clone());
        if !h.wait_synced(c.sync_wait).await {
            tracing::warn!(
                wait = ?c.sync_wait,
                "lease state transfer not done; serving with the local leases (the transfer completes when the cluster answers)"
            );
        }
        // What the transfer brought is in the log already (persisted and acked as it came).
        let buffered = h.take_buffered().await;
        if !buffered.is_empty() {
            let mut table: hashbrown::HashMap<std::net::Ipv4Addr, Lease> = leases.into_iter().map(|l| (l.addr, l)).collect();
            for r in buffered {
                crate::leases::log::apply(&mut table, r);
            }
            leases = table.into_values().collect();
            leases.sort_by_key(|l| l.addr);
        }
        replication = Some(Replication { sink: h.sink(), mode: c.mode });
        rep_handle = Some(h);
    }

    let zone_cfg = match &opts.dns {
        Some(d) => {
            let mut z = d.zone.clone();
            if z.reverse_networks.is_empty() {
                if let Some(dh) = &opts.dhcp {
                    z.reverse_networks = dh.core.subnets.iter().map(|s| IpNet::V4(s.network)).collect();
                }
            }
            z
        }
        None => ZoneConfig::new(opts.dhcp.as_ref().and_then(|d| d.core.domain.as_deref()).unwrap_or("")),
    };
    let mut zone = Zone::new(zone_cfg);
    if let Some(d) = &opts.dns {
        for f in &d.hosts_files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| RuntimeError::Io { what: format!("read hosts file {}", f.display()), source: e })?;
            let (entries, errors) = hosts::parse(&text);
            for e in &errors {
                tracing::warn!(file = %f.display(), error = %e, "hosts line skipped");
            }
            zone.add_hosts(&entries, d.expand_hosts);
        }
        for (n, a) in &d.hosts {
            zone.add_host(n, *a);
        }
        for (n, a) in &d.wildcards {
            zone.add_wildcard(n, *a);
        }
        for (n, r, ttl) in &d.records {
            zone.add_record(n, r.clone(), *ttl);
        }
    }
    let zone = zone.shared();

    let dhcp = match (&opts.dhcp, &committer) {
        (Some(d), Some(committer)) => {
            let mut core = DhcpServer::new(d.core.clone());
            // New decisions must rank above the log's tombstones too (a peer's clock may be ahead).
            core.observe_rev(rev_floor);
            for a in core.restore(leases, now) {
                if let Action::LeaseChanged(ch) = a {
                    if let Ok(mut z) = zone.write() {
                        z.apply_lease(&ch);
                    }
                }
            }
            let prober: Option<Arc<dyn AddressProber>> = if !d.probe_methods.is_empty() {
                Some(Arc::new(SubnetProber { timeout: d.probe_timeout, methods: d.probe_methods.clone() }))
            } else {
                d.core.conflict_check.then(|| Arc::new(IcmpProber { timeout: d.probe_timeout }) as Arc<dyn AddressProber>)
            };
            Some(
                start_dhcp_with(d.drivers.clone(), core, committer.clone(), Some(zone.clone()), DriverExtras { replication, prober, follow_vip: d.follow_vip })
                    .await
                    .map_err(|e| RuntimeError::Io { what: "bind DHCP sockets".into(), source: e })?,
            )
        }
        _ => None,
    };
    if let (Some(h), Some(d)) = (&rep_handle, &dhcp) {
        h.attach(d.replica_input());
    }
    let dns = match &opts.dns {
        Some(d) => Some(
            start_dns(d.server.clone(), zone.clone())
                .await
                .map_err(|e| RuntimeError::Io { what: "bind DNS".into(), source: e })?,
        ),
        None => None,
    };
    Ok(Running { zone, dhcp, dns, committer, replication: rep_handle })
}

/// Open the lease log (recovering a torn tail), import dnsmasq leases into an empty one, and start
/// the group committer on it.
/// Returns the leases, the highest tombstone revision and the committer.
async fn open_leases(opts: &DhcpDnsOptions, now: u64) -> Result<(Vec<Lease>, crate::leases::Rev, Arc<GroupCommitter>), RuntimeError> {
    let path = opts.lease_file.clone();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::Io { what: format!("create {}", dir.display()), source: e })?;
    }
    let (mut log, rec) = tokio::task::spawn_blocking(move || LeaseLog::open(path))
        .await
        .map_err(|e| RuntimeError::Io { what: "lease log open task".into(), source: std::io::Error::other(e) })??;
    if rec.truncated_bytes > 0 {
        tracing::warn!(bytes = rec.truncated_bytes, "lease log had a torn tail (crash); truncated");
    }
    if log.table().is_empty() {
        if let Some(p) = &opts.import_dnsmasq_leases {
            let text = std::fs::read_to_string(p)
                .map_err(|e| RuntimeError::Io { what: format!("read {}", p.display()), source: e })?;
            let domain = opts.dhcp.as_ref().and_then(|d| d.core.domain.clone());
            let (leases, errors) = dnsmasq::import(&text, domain.as_deref(), now);
            for e in &errors {
                tracing::warn!(file = %p.display(), error = %e, "dnsmasq lease line skipped");
            }
            let recs: Vec<LogRecord> = leases.into_iter().map(LogRecord::Upsert).collect();
            tracing::info!(count = recs.len(), "imported dnsmasq leases");
            log.append(&recs)?;
            log.sync()?;
        }
    }
    let leases = log.leases();
    let floor = log.tombstones().values().copied().max().unwrap_or(0);
    Ok((leases, floor, Arc::new(GroupCommitter::start(log, opts.compaction))))
}

/// Read the leases in a log without modifying it (for `hastack leases` while the daemon runs):
/// a torn tail is ignored, not truncated.
pub fn read_leases(path: &Path) -> Result<Vec<Lease>, LeaseError> {
    let bytes = std::fs::read(path).map_err(|e| LeaseError::io(path, "read", e))?;
    if !bytes.starts_with(MAGIC) {
        return Err(LeaseError::BadHeader { path: path.display().to_string() });
    }
    let mut table = hashbrown::HashMap::new();
    let mut off = MAGIC.len();
    while let Some((r, used)) = LogRecord::decode(&bytes[off..]) {
        crate::leases::log::apply(&mut table, r);
        off += used;
    }
    let mut v: Vec<Lease> = table.into_values().collect();
    v.sort_by_key(|l| l.addr);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::Subnet;
    use std::net::{Ipv4Addr, SocketAddrV4};

    #[tokio::test]
    async fn start_imports_dnsmasq_leases_and_publishes_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let dm = dir.path().join("dnsmasq.leases");
        let far = unix_now() + 3600;
        std::fs::write(&dm, format!("{far} 52:54:00:00:00:01 127.77.1.10 imported *\n")).unwrap();
        let hosts_file = dir.path().join("hosts");
        std::fs::write(&hosts_file, "127.77.0.2 gw\n").unwrap();
        let mut s = Subnet::new("127.77.0.0/16".parse().unwrap(), Ipv4Addr::new(127, 0, 0, 1));
        s.ranges = vec![(Ipv4Addr::new(127, 77, 1, 10), Ipv4Addr::new(127, 77, 1, 20))];
        let opts = DhcpDnsOptions {
            lease_file: dir.path().join("leases.log"),
            compaction: CompactionPolicy::default(),
            import_dnsmasq_leases: Some(dm),
            dhcp: Some(DhcpRuntime {
                core: DhcpConfig { domain: Some("cluster.test".into()), subnets: vec![s], ..DhcpConfig::default() },
                drivers: vec![DhcpDriverConfig { bind: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), ..DhcpDriverConfig::default() }],
                probe_timeout: std::time::Duration::from_millis(200),
                replication: None,
                follow_vip: None,
                probe_methods: vec![],
            }),
            dns: Some(DnsRuntime {
                zone: ZoneConfig::new("cluster.test"),
                server: DnsServerConfig { udp: vec!["127.0.0.1:0".parse().unwrap()], ..DnsServerConfig::default() },
                hosts_files: vec![hosts_file],
                expand_hosts: true,
                hosts: vec![],
                records: vec![("www.cluster.test".into(), crate::dns::zone::parse_rdata("CNAME", "gw", "cluster.test").unwrap(), None)],
                wildcards: vec![("apps.cluster.test".into(), "127.77.0.3".parse().unwrap())],
            }),
        };
        let run = start(opts).await.unwrap();
        {
            let z = run.zone.read().unwrap();
            use crate::dns::zone::{Kind, Lookup};
            assert_eq!(z.lookup("imported.cluster.test", Kind::A).addrs(), vec!["127.77.1.10".parse::<std::net::IpAddr>().unwrap()]);
            assert_eq!(z.lookup("gw.cluster.test", Kind::A).addrs(), vec!["127.77.0.2".parse::<std::net::IpAddr>().unwrap()]);
            assert_eq!(z.lookup("x.apps.cluster.test", Kind::A).addrs(), vec!["127.77.0.3".parse::<std::net::IpAddr>().unwrap()]);
            // Reverse zone defaults to the DHCP subnets.
            assert_eq!(z.lookup("99.1.77.127.in-addr.arpa", Kind::Ptr), Lookup::NxDomain);
        }
        run.shutdown().await;
        let leases = read_leases(&dir.path().join("leases.log")).unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].fqdn.as_deref(), Some("imported.cluster.test"));
    }

    #[tokio::test]
    async fn dns_only_needs_no_lease_log() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DhcpDnsOptions {
            lease_file: dir.path().join("never-created.log"),
            compaction: CompactionPolicy::default(),
            import_dnsmasq_leases: None,
            dhcp: None,
            dns: Some(DnsRuntime {
                zone: ZoneConfig::new("cluster.test"),
                server: DnsServerConfig { udp: vec!["127.0.0.1:0".parse().unwrap()], tcp: vec!["127.0.0.1:0".parse().unwrap()], ..DnsServerConfig::default() },
                hosts_files: vec![],
                expand_hosts: false,
                hosts: vec![("api.cluster.test".into(), "127.77.0.10".parse().unwrap())],
                records: vec![],
                wildcards: vec![],
            }),
        };
        let run = start(opts).await.unwrap();
        assert!(run.dhcp.is_none() && run.committer.is_none());
        assert_eq!(run.dns.as_ref().map(|d| d.tcp_addrs.len()), Some(1));
        run.shutdown().await;
        assert!(!dir.path().join("never-created.log").exists());
    }
}
