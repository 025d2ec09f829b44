//! Cross-crate and end-to-end tests live in `tests/`; this library re-exports the namespace lab
//! (crate `hastack-lab`, also used by `hastack demo` and `hastack bench failover`) under the names
//! the tests use.
//!
//! Start every end-to-end test with `if !require_lab()? { return Ok(()); }`, then build a
//! [`Lab`]; see the [`lab`] module for the topology and what it offers.

pub use hastack_lab as lab;

pub mod balancer;
pub mod dhclient;

pub use hastack_lab::{
    Host, HostId, HostLink, Lab, LabBuilder, LabError, MacAddr, Neighbour, Proc, cleanup_stale,
    hastack_bin, in_ci, poll_until, require_lab, require_root, require_tools,
};

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; kills it and panics if it
/// does not stop in time. Returns its exit status.
pub fn stop_with_sigterm(child: &mut std::process::Child, within: std::time::Duration) -> std::process::ExitStatus {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {pid} did not stop within {within:?} of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves no daemon
/// behind. Dereferences to the `Child`.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
