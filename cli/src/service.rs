//! What a daemon owes systemd: READY=1 once it serves (Type=notify), WATCHDOG=1 pings at half of
//! WatchdogSec, STOPPING=1 on the way out. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is up and serving.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping on purpose.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// The interval at which the watchdog must be fed, if systemd asked for one (half of WatchdogSec).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Feeds the watchdog from the daemon's own protocol loop, so a stuck loop is restarted by systemd.
pub fn watchdog_ping() {
    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
}

/// Serves until SIGTERM or SIGINT, feeding the watchdog meanwhile; then tells systemd the daemon
/// is stopping. For daemons whose work runs in their own tasks (balancer, dhcp-dns).
pub async fn serve_until_stopped(status: &str) -> std::io::Result<()> {
    ready(status);
    let mut signals = StopSignals::new()?;
    let mut watchdog = watchdog_timer();
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = watchdog.tick() => watchdog_ping(),
        }
    }
    stopping();
    Ok(())
}

/// SIGTERM (systemd's stop) and SIGINT (Ctrl-C), as one source of "stop now".
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; needs a tokio runtime.
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// A timer at the watchdog interval (hourly, harmlessly, when systemd asked for no watchdog).
pub fn watchdog_timer() -> tokio::time::Interval {
    tokio::time::interval(watchdog_interval().unwrap_or(Duration::from_secs(3600)))
}
