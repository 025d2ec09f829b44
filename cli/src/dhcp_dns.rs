//! `hastack dhcp-dns`: the DHCP and DNS daemon from the `[dhcp]` and `[dns]` sections.

use anyhow::Context;
use dhcp_dns::config::{DhcpConfig, DnsConfig};
use dhcp_dns::from_config::{local_ipv4_addrs, options_from_config};
use tracing::info;

use crate::service;

/// Runs DHCP and/or DNS until SIGTERM/SIGINT; every acknowledged lease is durable before the ACK.
pub fn run(dhcp: Option<&DhcpConfig>, dns: Option<&DnsConfig>) -> anyhow::Result<()> {
    if dhcp.is_none() && dns.is_none() {
        anyhow::bail!("the config has neither a [dhcp] nor a [dns] section");
    }
    let opts = options_from_config(dhcp, dns, &local_ipv4_addrs())
        .map_err(|p| anyhow::anyhow!("cannot serve this config on this host:\n  {}", p.join("\n  ")))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let running = dhcp_dns::runtime::start(opts).await.context("starting dhcp-dns")?;
        info!(dhcp = running.dhcp.is_some(), dns = running.dns.is_some(), "dhcp-dns serving");
        service::serve_until_stopped("serving").await?;
        running.shutdown().await;
        info!("dhcp-dns stopped");
        Ok(())
    })
}
