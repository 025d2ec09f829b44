//! `hastack balancer`: the TCP balancer daemon (every `[balancer]` frontend), and its runtime API on
//! a Unix socket in HAProxy's shape, so operators can keep using `socat` as with a stats socket:
//! `show stat`, `show sess`, `show servers state`, `set server BACKEND/SERVER state
//! ready|drain|maint`, `shutdown sessions server BACKEND/SERVER`, `show metrics` (Prometheus text).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tcp_balancer::balance::AdminState;
use tcp_balancer::config::BalancerConfig;
use tcp_balancer::runtime::Balancer;
use tcp_balancer::stats;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tracing::info;

use crate::service;

/// How long a stopping balancer lets established sessions finish before closing them.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Runs the balancer until SIGTERM/SIGINT, then drains.
pub fn run(cfg: &BalancerConfig, socket: PathBuf) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let bal = Arc::new(Balancer::start(cfg).await.context("starting the balancer")?);
        for p in bal.proxies() {
            info!(addr = %p.local_addr(), "frontend listening");
        }
        let ctl = serve_runtime_api(&socket, bal.clone())?;
        service::serve_until_stopped("balancing").await?;
        ctl.abort();
        let _ = std::fs::remove_file(&socket);
        match Arc::try_unwrap(bal) {
            Ok(b) => {
                let forced = b.drain(DRAIN_GRACE).await;
                info!(forced, "balancer stopped");
            }
            Err(_) => info!("balancer stopped without draining (still referenced)"),
        }
        Ok(())
    })
}

fn serve_runtime_api(path: &Path, bal: Arc<Balancer>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("runtime API socket {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let bal = bal.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut out = runtime_command(&bal, line.trim());
                    out.push('\n');
                    if w.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    }))
}

/// One runtime API command, answered as text (HAProxy's wording where it has one).
pub fn runtime_command(bal: &Balancer, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["show", "stat"] => stats::show_stat(&bal.stats()),
        ["show", "metrics"] => {
            let mut s = String::new();
            stats::prometheus(&bal.stats(), &mut s);
            s
        }
        ["show", "sess"] => bal.sessions().iter().map(|(fe, s)| format!("{fe} {s:?}\n")).collect(),
        ["show", "servers", "state"] => {
            let mut s = String::from("# backend server status weight sessions\n");
            for st in bal.stats() {
                for sv in &st.servers {
                    s += &format!("{} {} {} {} {}\n", st.backend, sv.name, sv.status, sv.weight, sv.counters.current);
                }
            }
            s
        }
        ["set", "server", target, "state", state] => {
            let Some((backend, server)) = target.split_once('/') else {
                return "Require 'backend/server'.".into();
            };
            let st = match *state {
                "ready" => AdminState::Ready,
                "drain" => AdminState::Drain,
                "maint" => AdminState::Maint,
                _ => return "'set server <srv> state' expects 'ready', 'drain' and 'maint'.".into(),
            };
            match bal.set_server_state(backend, server, st) {
                Ok(()) => String::new(),
                Err(e) => e.to_string(),
            }
        }
        ["shutdown", "sessions", "server", target] => {
            let Some((backend, server)) = target.split_once('/') else {
                return "Require 'backend/server'.".into();
            };
            match bal.shutdown_server_sessions(backend, server) {
                Ok(()) => String::new(),
                Err(e) => e.to_string(),
            }
        }
        ["help"] | [] => "show stat | show metrics | show sess | show servers state | set server <backend>/<server> state ready|drain|maint | shutdown sessions server <backend>/<server>".into(),
        _ => format!("Unknown command '{line}'. Try 'help'."),
    }
}

/// Sends one runtime API command to a running balancer and returns its answer.
pub fn query(socket: &Path, command: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot reach the balancer at {}: {e} (is it running?)", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{command}")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    for line in std::io::BufReader::new(s).lines() {
        out.push_str(&line?);
        out.push('\n');
    }
    Ok(out)
}
