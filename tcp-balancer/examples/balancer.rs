//! Runs the balancer runtime from the `[balancer]` section of a TOML file until Ctrl-C (for
//! benchmarks of the library without the `hastack` binary):
//! `cargo run --release -p tcp-balancer --example balancer -- bench.toml`.

use std::time::Duration;

#[derive(serde::Deserialize)]
struct Root {
    balancer: tcp_balancer::config::BalancerConfig,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: balancer <config.toml>")?;
    let text = std::fs::read_to_string(&path)?;
    let cfg = toml::from_str::<Root>(&text)?.balancer;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.unwrap_or(1) as usize)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let bal = tcp_balancer::runtime::Balancer::start(&cfg).await?;
        eprintln!("balancer running from {path}");
        let _ = tokio::signal::ctrl_c().await;
        bal.drain(Duration::from_secs(1)).await;
        Ok(())
    })
}
