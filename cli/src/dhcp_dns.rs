//! `hastack dhcp-dns`: the DHCP and DNS daemon from the `[dhcp]` and `[dns]` sections. With
//! `[dhcp] replication = "sync" | "async"` it joins the cluster daemon's process group "leases"
//! (through its control socket) and replicates every lease to the other gateways.

use std::path::Path;

use anyhow::Context;
use dhcp_dns::config::{DhcpConfig, DnsConfig};
use dhcp_dns::from_config::{local_ipv4_addrs, options_from_config};
use tracing::info;

use crate::service;

/// Runs DHCP and/or DNS until SIGTERM/SIGINT; every acknowledged lease is durable before the ACK.
/// Lease replication joins the cluster at `[dhcp] replication_socket` (else the default socket).
pub fn run(dhcp: Option<&DhcpConfig>, dns: Option<&DnsConfig>) -> anyhow::Result<()> {
    run_with_cluster_socket(dhcp, dns, None, None)
}

/// [`run`], with the cluster daemon's control socket (`[control] socket`) as the lease group's
/// socket unless `[dhcp] replication_socket` names one.
/// With `metrics`, Prometheus `GET /metrics` is served there (`[control] metrics_dhcp_dns`).
pub fn run_with_cluster_socket(
    dhcp: Option<&DhcpConfig>,
    dns: Option<&DnsConfig>,
    cluster_socket: Option<&Path>,
    metrics: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    if dhcp.is_none() && dns.is_none() {
        anyhow::bail!("the config has neither a [dhcp] nor a [dns] section");
    }
    let mut opts = options_from_config(dhcp, dns, &local_ipv4_addrs())
        .map_err(|p| anyhow::anyhow!("cannot serve this config on this host:\n  {}", p.join("\n  ")))?;
    if let (Some(sock), Some(rep)) = (cluster_socket, opts.dhcp.as_mut().and_then(|d| d.replication.as_mut())) {
        if dhcp.is_some_and(|d| d.replication_socket.is_none()) {
            rep.socket = sock.to_path_buf();
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let running = dhcp_dns::runtime::start(opts).await.context("starting dhcp-dns")?;
        info!(
            dhcp = running.dhcp.is_some(),
            dns = running.dns.is_some(),
            replication = running.replication.is_some(),
            "dhcp-dns serving"
        );
        let scrape = match metrics {
            Some(addr) => {
                let counters = Counters::of(&running);
                let render: crate::metrics::Render = std::sync::Arc::new(move || Some(counters.prometheus()));
                let (addr, task) = crate::metrics::serve(addr, render).with_context(|| format!("metrics endpoint {addr}"))?;
                info!(%addr, "Prometheus metrics at /metrics");
                Some(task)
            }
            None => None,
        };
        service::serve_until_stopped("serving").await?;
        if let Some(t) = scrape {
            t.abort();
        }
        running.shutdown().await;
        info!("dhcp-dns stopped");
        Ok(())
    })
}

/// The counters of a running DHCP/DNS daemon, shared with the metrics endpoint.
struct Counters {
    dhcp: Option<std::sync::Arc<dhcp_dns::server::DhcpDriverStats>>,
    dns: Option<(std::sync::Arc<dhcp_dns::dns::answer::AnswerStats>, std::sync::Arc<dhcp_dns::server::DnsTransportStats>)>,
    forwarder: Option<std::sync::Arc<dhcp_dns::server::Forwarder>>,
}

impl Counters {
    fn of(r: &dhcp_dns::runtime::Running) -> Self {
        Counters {
            dhcp: r.dhcp.as_ref().map(|d| d.stats.clone()),
            dns: r.dns.as_ref().map(|d| (d.stats.clone(), d.transport.clone())),
            forwarder: r.dns.as_ref().and_then(|d| d.forwarder.clone()),
        }
    }

    /// Prometheus text exposition of every counter.
    fn prometheus(&self) -> String {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP hastack_{name} {help}\n# TYPE hastack_{name} {kind}\nhastack_{name} {v}");
        };
        if let Some(d) = &self.dhcp {
            let st = d.status.lock().map(|s| s.clone()).unwrap_or_else(|p| p.into_inner().clone());
            let c = &st.counters;
            for (name, help, v) in [
                ("received", "DHCP datagrams handed to the core.", c.received),
                ("malformed", "DHCP datagrams dropped as malformed.", c.malformed),
                ("no_subnet", "DHCP requests dropped: no subnet matches.", c.no_subnet),
                ("pool_exhausted", "DHCP requests dropped: no free address.", c.pool_exhausted),
                ("offers", "DHCPOFFERs sent.", c.offers),
                ("acks", "DHCPACKs sent (leases and INFORM).", c.acks),
                ("naks", "DHCPNAKs sent.", c.naks),
                ("releases", "DHCPRELEASEs processed.", c.releases),
                ("declines", "DHCPDECLINEs processed.", c.declines),
                ("expired", "Leases that expired.", c.expired),
                ("conflicts", "Addresses found in use by a conflict probe.", c.conflicts),
            ] {
                one(&format!("dhcp_{name}_total"), "counter", help, v);
            }
            one("dhcp_active_leases", "gauge", "Leases active now.", st.active_leases as u64);
            one("dhcp_lease_records", "gauge", "Lease records held (any state).", st.lease_records as u64);
            for (name, help, v) in [
                ("replies_sent", "DHCP replies sent.", &d.sent),
                ("not_durable", "Replies dropped because their lease could not be made durable.", &d.not_durable),
                ("send_errors", "DHCP send errors.", &d.send_errors),
                ("replication_failures", "Leases whose replication to the peers failed (served anyway).", &d.replication_failures),
                ("standby_dropped", "Requests ignored while standing by (VIP held elsewhere).", &d.standby_dropped),
            ] {
                one(&format!("dhcp_{name}_total"), "counter", help, v.load(Relaxed));
            }
        }
        if let Some((a, t)) = &self.dns {
            for (name, help, v) in [
                ("queries", "DNS queries seen.", &a.queries),
                ("answered", "DNS queries answered with records.", &a.answered),
                ("nxdomain", "NXDOMAIN answers.", &a.nxdomain),
                ("nodata", "NOERROR answers without records.", &a.nodata),
                ("refused", "REFUSED answers.", &a.refused),
                ("formerr", "FORMERR answers (malformed queries).", &a.formerr),
                ("notimp", "NOTIMP / BADVERS answers.", &a.notimp),
                ("dropped", "DNS datagrams dropped without an answer.", &a.dropped),
                ("truncated", "Answers sent truncated.", &a.truncated),
                ("tcp_accepted", "DNS TCP connections accepted.", &t.tcp_accepted),
                ("tcp_rejected", "DNS TCP connections refused over the cap.", &t.tcp_rejected),
                ("tcp_idle_closed", "DNS TCP connections closed for idleness.", &t.tcp_idle_closed),
                ("send_errors", "DNS send errors.", &t.send_errors),
                ("rate_limited", "DNS queries dropped by the per-client rate limit.", &t.rate_limited),
            ] {
                one(&format!("dns_{name}_total"), "counter", help, v.load(Relaxed));
            }
        }
        if let Some(f) = &self.forwarder {
            let s = &f.stats;
            for (name, help, v) in [
                ("forwarded", "Queries sent upstream.", &s.forwarded),
                ("cache_hits", "Forwarded answers served from the cache.", &s.cache_hits),
                ("upstream_failures", "Upstream attempts that timed out or failed.", &s.upstream_failures),
                ("mismatched", "Upstream packets that did not match a query.", &s.mismatched),
                ("rebind_blocked", "Answers refused by rebinding protection.", &s.rebind_blocked),
                ("servfail", "Queries answered SERVFAIL.", &s.servfail),
                ("coalesced", "Queries that joined an identical one in flight.", &s.coalesced),
            ] {
                one(&format!("dns_forward_{name}_total"), "counter", help, v.load(Relaxed));
            }
        }
        out
    }
}
