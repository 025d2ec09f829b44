//! `hastack balancer`: the TCP balancer daemon (every `[balancer]` frontend), and its runtime API on
//! a Unix socket in HAProxy's shape, so operators can keep using `socat` as with a stats socket:
//! `show stat`, `show sess`, `show servers state`, `set server BACKEND/SERVER state
//! ready|drain|maint`, `shutdown sessions server BACKEND/SERVER`, `show metrics` (Prometheus text),
//! and `reload`.
//!
//! Daemon lifecycle: **serving** → (SIGTERM/SIGINT) **draining** → exit; or **serving** →
//! (SIGHUP, `reload` on the runtime API, i.e. `hastack balancer reload` / systemd's ExecReload)
//! **checking** the config → on a bad config back to **serving** with the reason, nothing changed;
//! else **starting the successor** (same binary path, same arguments, the handover socket's fd
//! in `HASTACK_BALANCER_HANDOVER_FD`) → it took the listeners and reported ready → `MAINPID=` to
//! systemd → **handing over** every established session → exit once none is left (bounded by
//! `hard_stop_after`). A successor that fails before it is ready leaves this process serving.
//! See `tcp_balancer::handover` for the protocol and why a new process rather than a re-exec.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use tcp_balancer::balance::AdminState;
use tcp_balancer::config::BalancerConfig;
use tcp_balancer::handover::{self, HandedSession, Message, Outgoing};
use tcp_balancer::proxy::Proxy;
use tcp_balancer::runtime::Balancer;
use tcp_balancer::stats;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::service;

/// How long a stopping balancer lets established sessions finish before closing them.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// After a reload, how long sessions that could not be handed over may keep the old process
/// (when `hard_stop_after` is not set).
const DEFAULT_HARD_STOP_AFTER: Duration = Duration::from_secs(30);
/// Longest a successor may take to start serving before the reload is called failed.
const SUCCESSOR_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The environment variable naming the handover socket's descriptor in a successor.
pub const HANDOVER_FD_ENV: &str = "HASTACK_BALANCER_HANDOVER_FD";

/// True while sessions are still arriving from the predecessor.
static ADOPTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A reload request from the runtime API, answered with the text to print.
type ReloadRequest = oneshot::Sender<String>;

/// The process that took over from this one.
struct Successor {
    pid: u32,
    sock: UnixStream,
}

/// Runs the balancer until SIGTERM/SIGINT (then drains) or until a reload handed everything to
/// a successor. `config_path` is re-read on reload.
pub fn run(config_path: &Path, cfg: &BalancerConfig, socket: PathBuf, metrics: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    // Descriptors for maxconn, as HAProxy sizes its ulimit-n (an error only with strict_limits).
    let fds = tcp_balancer::from_config::raise_fd_limit(cfg)?;
    if !fds.enough() {
        warn!(
            limit = fds.soft,
            needed = fds.needed,
            maxconn = cfg.maxconn,
            "descriptor limit too low for maxconn: connections beyond about half the limit will be refused; \
             raise LimitNOFILE= (or ulimit -n) or lower maxconn (strict_limits = true makes this an error)"
        );
    }
    // `threads` (default: one per core).
    let threads = cfg.threads.map(|t| t as usize).unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    // tcp-mode sessions run on `threads` current-thread runtimes, one per thread (nbthread): no
    // cross-thread wake-ups per burst. The main runtime accepts, checks, serves http mode and
    // the runtime API.
    tcp_balancer::runtime::start_session_workers(threads)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()?;
    rt.block_on(async {
        let predecessor = match std::env::var(HANDOVER_FD_ENV) {
            Ok(v) => Some(handover_socket(&v)?),
            Err(_) => None,
        };
        let bal = match &predecessor {
            Some(sock) => {
                let mut inherited = handover::recv_listeners(sock).context("receiving the listeners")?;
                let bal = Balancer::start_inheriting(cfg, &mut inherited).await.context("starting the balancer")?;
                // Listeners of frontends this config no longer has close here.
                drop(inherited);
                bal
            }
            None => Balancer::start(cfg).await.context("starting the balancer")?,
        };
        let bal = Arc::new(bal);
        for p in bal.proxies() {
            info!(addr = %p.local_addr(), "frontend listening");
        }
        let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
        let ctl = serve_runtime_api(&socket, Arc::downgrade(&bal), reload_tx)?;
        let scrape = match metrics {
            Some(addr) => {
                let weak = Arc::downgrade(&bal);
                let render: crate::metrics::Render = Arc::new(move || weak.upgrade().map(|b| prometheus_text(&b)));
                let (addr, task) = crate::metrics::serve(addr, render).with_context(|| format!("metrics endpoint {addr}"))?;
                info!(%addr, "Prometheus metrics at /metrics");
                Some(task)
            }
            None => None,
        };
        match predecessor {
            Some(sock) => take_over(sock, &bal)?,
            None => service::ready("balancing"),
        }
        let mut signals = service::StopSignals::new()?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let mut watchdog = service::watchdog_timer();
        let successor = loop {
            let reply = tokio::select! {
                _ = signals.recv() => break None,
                _ = watchdog.tick() => { service::watchdog_ping(); continue }
                _ = hup.recv() => None,
                Some(r) = reload_rx.recv() => Some(r),
            };
            // Sessions still arriving from our own predecessor could not follow us yet.
            let started = if ADOPTING.load(std::sync::atomic::Ordering::Acquire) {
                Err(anyhow::anyhow!("the previous reload is still handing sessions over; try again in a moment"))
            } else {
                start_successor(config_path, &bal).await
            };
            match started {
                Ok(s) => {
                    let text = format!("reload: new process {} serving; established sessions are being handed over", s.pid);
                    info!(pid = s.pid, "reload: successor serving, handing over");
                    if let Some(r) = reply {
                        let _ = r.send(text);
                    }
                    break Some(s);
                }
                Err(e) => {
                    warn!(reason = %e, "reload failed; nothing was changed");
                    if let Some(r) = reply {
                        let _ = r.send(format!("reload failed: {e}\nnothing was changed"));
                    }
                }
            }
        };
        ctl.abort();
        let _ = ctl.await;
        if let Some(t) = scrape {
            t.abort();
            let _ = t.await;
        }
        let bal = own(bal).await;
        match successor {
            None => {
                service::stopping();
                let _ = std::fs::remove_file(&socket);
                match bal {
                    Ok(b) => {
                        let forced = b.drain(DRAIN_GRACE).await;
                        info!(forced, "balancer stopped");
                    }
                    Err(_) => info!("balancer stopped without draining (still referenced)"),
                }
            }
            Some(s) => {
                // The runtime API socket file is the successor's now, and so is systemd's
                // attention: no STOPPING=1 from here.
                let hard_stop = cfg.hard_stop_after.map(|d| d.0).unwrap_or(DEFAULT_HARD_STOP_AFTER);
                retire(bal, s, hard_stop).await?;
            }
        }
        Ok(())
    })
}

/// The balancer by value (for drain), once the runtime API tasks let go of it.
async fn own(bal: Arc<Balancer>) -> Result<Balancer, Arc<Balancer>> {
    let mut bal = bal;
    // A runtime API command running right now holds a strong reference for a moment.
    for _ in 0..200 {
        match Arc::try_unwrap(bal) {
            Ok(b) => return Ok(b),
            Err(b) => bal = b,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(bal)
}

/// Every tcp-mode proxy: single-backend frontends and the SNI routers' backends.
fn all_proxies(bal: &Balancer) -> Vec<&Proxy> {
    bal.proxies().iter().chain(bal.routers().iter().flat_map(|r| r.proxies().iter().map(|p| &**p))).collect()
}

/// The successor's end of the handover socket, from the environment.
fn handover_socket(v: &str) -> anyhow::Result<UnixStream> {
    let fd: i32 = v.trim().parse().with_context(|| format!("{HANDOVER_FD_ENV}={v} is not a descriptor"))?;
    // SAFETY: our predecessor started us with this descriptor open for exactly this purpose; we
    // check it is a socket before using it and own it from here on.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    socket2::SockRef::from(&owned).r#type().with_context(|| format!("{HANDOVER_FD_ENV}={fd} is not a socket"))?;
    // Children we start later must not inherit it.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(UnixStream::from(owned))
}

/// Successor side, once serving: tells the predecessor, then adopts the sessions it sends.
fn take_over(sock: UnixStream, bal: &Arc<Balancer>) -> anyhow::Result<()> {
    handover::send_control(&sock, &Message::Ready).context("telling the old process we serve")?;
    let (tx, mut rx) = mpsc::channel::<HandedSession>(handover::MAX_SESSIONS_PER_BATCH * 4);
    let (http_tx, mut http_rx) = mpsc::channel::<handover::HandedHttpClient>(handover::MAX_HTTP_CLIENTS_PER_BATCH * 2);
    ADOPTING.store(true, std::sync::atomic::Ordering::Release);
    std::thread::Builder::new().name("handover-rx".into()).spawn(move || {
        let mut adopted = 0usize;
        loop {
            match handover::recv_message(&sock) {
                Ok(Some(Message::Main)) => service::ready("balancing (took over)"),
                Ok(Some(Message::Sessions(v))) => {
                    adopted += v.len();
                    for s in v {
                        if tx.blocking_send(s).is_err() {
                            return;
                        }
                    }
                }
                Ok(Some(Message::HttpClients(v))) => {
                    adopted += v.len();
                    for c in v {
                        if http_tx.blocking_send(c).is_err() {
                            return;
                        }
                    }
                }
                Ok(Some(Message::Ready)) => {}
                Ok(Some(Message::Done)) | Ok(None) => break,
                Err(e) => {
                    // A malformed message is dropped (its descriptors close); the rest go on.
                    warn!(error = %e, "bad handover message dropped");
                    if e.kind() != std::io::ErrorKind::InvalidData {
                        break;
                    }
                }
            }
        }
        info!(sessions = adopted, "handover from the old process complete");
        ADOPTING.store(false, std::sync::atomic::Ordering::Release);
    })?;
    let weak = Arc::downgrade(bal);
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            let Some(bal) = weak.upgrade() else { return };
            adopt(&bal, s);
        }
    });
    // Idle http keep-alive connections resume in the http frontend of the same name.
    let weak = Arc::downgrade(bal);
    tokio::spawn(async move {
        while let Some(c) = http_rx.recv().await {
            let Some(bal) = weak.upgrade() else { return };
            match bal.http_frontends().iter().find(|h| h.name() == c.frontend) {
                Some(h) => h.adopt(c),
                None => warn!(frontend = %c.frontend, "http frontend gone after reload: handed-over connection closed"),
            }
        }
    });
    Ok(())
}

/// Resumes one handed-over session in the frontend it came from (by frontend and backend name,
/// else any frontend of the same backend). When the new config has no such backend or server
/// the session is closed, as a server removed from the config loses its sessions.
fn adopt(bal: &Balancer, s: HandedSession) {
    let proxies = all_proxies(bal);
    let target = proxies
        .iter()
        .find(|p| p.frontend_name() == s.frontend && p.backend_name() == s.backend)
        .or_else(|| proxies.iter().find(|p| p.backend_name() == s.backend));
    let Some(p) = target else {
        warn!(frontend = %s.frontend, backend = %s.backend, "backend gone after reload: handed-over session closed");
        return;
    };
    if let Err(s) = p.adopt(s) {
        warn!(backend = %s.backend, server = %s.server, "server gone after reload: handed-over session closed");
    }
}

/// Checks the config, starts the successor on our listeners and waits until it serves.
async fn start_successor(config_path: &Path, bal: &Balancer) -> anyhow::Result<Successor> {
    let cfg = crate::config::load(config_path).map_err(|d| anyhow::anyhow!("{}", d.to_string().trim_end()))?;
    let bc = cfg.balancer.as_ref().context("the config has no [balancer] section")?;
    tcp_balancer::from_config::tcp_frontends(bc)?;
    let (mine, theirs) = handover::channel()?;
    // SAFETY: fcntl on a descriptor we own: this one end must survive exec.
    unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) };
    let exe = std::env::current_exe().context("finding our own binary")?;
    // After an upgrade the running binary is deleted: start the one now at the same path.
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(p) => PathBuf::from(p),
        None => exe,
    };
    let mut child = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(HANDOVER_FD_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    drop(theirs);
    let pid = child.id();
    let fail = |child: &mut std::process::Child, why: String| {
        let _ = child.kill();
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        anyhow::anyhow!("{why} (new process {pid}: {status}; its log says why)")
    };
    if let Err(e) = bal.hand_over_listeners(&mine) {
        return Err(fail(&mut child, format!("cannot hand over the listeners: {e}")));
    }
    mine.set_read_timeout(Some(SUCCESSOR_READY_TIMEOUT))?;
    let probe = mine.try_clone()?;
    let ready = tokio::task::spawn_blocking(move || handover::recv_message(&probe)).await?;
    match ready {
        Ok(Some(Message::Ready)) => {}
        Ok(None) => return Err(fail(&mut child, "the new process exited before serving".into())),
        Ok(Some(m)) => return Err(fail(&mut child, format!("unexpected handover message {m:?}"))),
        Err(e) => return Err(fail(&mut child, format!("the new process did not start serving: {e}"))),
    }
    mine.set_read_timeout(None)?;
    // We are still the main process: systemd takes this from us with NotifyAccess=main.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::MainPid(pid)]);
    handover::send_control(&mine, &Message::Main)?;
    // The successor outlives us; nobody waits for it here (init reaps it once we are gone).
    drop(child);
    Ok(Successor { pid, sock: mine })
}

/// Old side after a successful reload: stop accepting, hand every session over, exit.
async fn retire(bal: Result<Balancer, Arc<Balancer>>, s: Successor, hard_stop: Duration) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<Outgoing>();
    let sock = s.sock;
    let sender = std::thread::Builder::new().name("handover-tx".into()).spawn(move || handover::run_sender(&sock, rx))?;
    let forced = match bal {
        Ok(b) => {
            for p in all_proxies(&b) {
                p.hand_over_sessions(tx.clone());
            }
            // Idle http keep-alive connections follow as they become idle.
            for h in b.http_frontends() {
                h.hand_over_idle(tx.clone());
            }
            // Stops accepting; handed-over sessions leave at once, the rest get `hard_stop`.
            b.drain(hard_stop).await
        }
        Err(b) => {
            warn!("balancer still referenced: handing over without stopping the SNI routers");
            let mut forced = 0;
            for p in all_proxies(&b) {
                p.hand_over_sessions(tx.clone());
            }
            for h in b.http_frontends() {
                h.hand_over_idle(tx.clone());
            }
            for p in all_proxies(&b) {
                forced += p.drain(hard_stop).await;
            }
            for h in b.http_frontends() {
                forced += h.drain(hard_stop).await;
            }
            forced
        }
    };
    let _ = tx.send(Outgoing::Finish);
    drop(tx);
    let handed = tokio::task::spawn_blocking(move || sender.join()).await?;
    match handed {
        Ok(Ok(n)) => info!(handed_over = n, closed_at_hard_stop = forced, successor = s.pid, "reload complete; old process exits"),
        Ok(Err(e)) => warn!(error = %e, successor = s.pid, "handover to the new process failed; its sessions were closed"),
        Err(_) => warn!("handover thread panicked"),
    }
    Ok(())
}

fn serve_runtime_api(
    path: &Path,
    bal: Weak<Balancer>,
    reload: mpsc::Sender<ReloadRequest>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).with_context(|| format!("runtime API socket {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            // Weak: a connection left open must not keep the balancer from draining.
            let bal = bal.clone();
            let reload = reload.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut out = if line.trim() == "reload" {
                        let (tx, rx) = oneshot::channel();
                        if reload.send(tx).await.is_err() {
                            "reload failed: the balancer is stopping".to_string()
                        } else {
                            rx.await.unwrap_or_else(|_| "reload failed: the balancer is stopping".into())
                        }
                    } else {
                        match bal.upgrade() {
                            Some(b) => runtime_command(&b, line.trim()),
                            None => "the balancer is stopping".into(),
                        }
                    };
                    out.push('\n');
                    if w.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    }))
}

/// Every counter in Prometheus text: backends and servers, then the http frontends' own.
pub fn prometheus_text(bal: &Balancer) -> String {
    let mut s = String::new();
    stats::prometheus(&bal.stats(), &mut s);
    stats::prometheus_http(&bal.http_stats(), &mut s);
    s
}

/// One runtime API command, answered as text (HAProxy's wording where it has one).
pub fn runtime_command(bal: &Balancer, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["show", "stat"] => stats::show_stat(&bal.stats()),
        ["show", "metrics"] => prometheus_text(bal),
        ["show", "sess"] => bal.sessions().iter().map(|(fe, s)| format!("{fe} {s:?}\n")).collect(),
        ["show", "servers", "state"] => stats::servers_state(&bal.stats()),
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
        ["help"] | [] => "show stat | show metrics | show sess | show servers state | set server <backend>/<server> state ready|drain|maint | shutdown sessions server <backend>/<server> | reload".into(),
        _ => format!("Unknown command '{line}'. Try 'help'."),
    }
}

/// Sends one runtime API command to a running balancer and returns its answer.
pub fn query(socket: &Path, command: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot reach the balancer at {}: {e} (is it running?)", socket.display()))?;
    // A reload waits for the new process to serve.
    s.set_read_timeout(Some(if command.trim() == "reload" { SUCCESSOR_READY_TIMEOUT + Duration::from_secs(5) } else { Duration::from_secs(5) }))?;
    writeln!(s, "{command}")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    for line in std::io::BufReader::new(s).lines() {
        out.push_str(&line?);
        out.push('\n');
    }
    Ok(out)
}
