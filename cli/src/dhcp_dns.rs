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
    run_with_cluster_socket(dhcp, dns, None)
}

/// [`run`], with the cluster daemon's control socket (`[control] socket`) as the lease group's
/// socket unless `[dhcp] replication_socket` names one.
pub fn run_with_cluster_socket(dhcp: Option<&DhcpConfig>, dns: Option<&DnsConfig>, cluster_socket: Option<&Path>) -> anyhow::Result<()> {
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
        service::serve_until_stopped("serving").await?;
        running.shutdown().await;
        info!("dhcp-dns stopped");
        Ok(())
    })
}
