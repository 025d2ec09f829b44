//! Processes started inside lab namespaces: tracked by PID, killed and reaped on drop.
//!
//! Lifecycle of a tracked process: `running` → (`exited`, still a zombie we own) → `reaped`.
//! The `Child` stays in the shared registry until it is reaped, and it is only ever reaped through
//! the registry, so a signal sent by PID always reaches our own process (an unreaped zombie keeps
//! its PID), never a stranger that reused the number. Each child leads its own process group, so a
//! kill also reaches what it forked (shell wrappers, helpers).

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::error::{LabError, Result};

/// The processes of one lab.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<Vec<Option<Child>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Vec<Option<Child>>> {
        // A panic while holding the lock leaves the Vec consistent; keep going (we may be cleaning up).
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add(self: &Arc<Self>, child: Child, log: Option<PathBuf>) -> Proc {
        let pid = child.id();
        let mut slots = self.lock();
        slots.push(Some(child));
        Proc {
            slot: slots.len() - 1,
            pid,
            registry: Arc::clone(self),
            log,
        }
    }

    /// Kills and reaps every process still tracked; returns their pids.
    pub(crate) fn kill_all(&self) -> Vec<u32> {
        let mut slots = self.lock();
        let mut pids = Vec::new();
        for slot in slots.iter_mut() {
            if let Some(child) = slot.take() {
                pids.push(child.id());
                kill_and_reap(child);
            }
        }
        pids
    }
}

fn kill_and_reap(mut child: Child) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        // Exited already; still signal the group in case it left children behind.
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        return Some(st);
    }
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.kill();
    child.wait().ok()
}

/// A process started in a lab namespace. Dropping it kills (SIGKILL, whole process group) and reaps it.
#[must_use = "dropping a Proc kills the process at once"]
pub struct Proc {
    slot: usize,
    pid: u32,
    registry: Arc<Registry>,
    log: Option<PathBuf>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.pid)
            .field("log", &self.log)
            .finish()
    }
}

impl Proc {
    /// The process id (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// File holding the process's stdout and stderr, if it was started with `Host::spawn`.
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// The log's current content ("" if none); handy in assertion messages.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    fn with_child<T>(&self, f: impl FnOnce(&mut Child) -> T) -> Option<T> {
        let mut slots = self.registry.lock();
        slots.get_mut(self.slot).and_then(|s| s.as_mut()).map(f)
    }

    /// Sends `sig` to the process group; an error if the process was already reaped.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.with_child(|c| {
            killpg(Pid::from_raw(c.id() as i32), sig)
                .map_err(|e| LabError::io(format!("signal {sig} to {}", c.id()), e.into()))
        })
        .unwrap_or_else(|| {
            Err(LabError::Invalid(format!(
                "process {} already reaped",
                self.pid
            )))
        })
    }

    /// Non-blocking: the exit status if the process has exited (it is then reaped).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut slots = self.registry.lock();
        let Some(slot) = slots.get_mut(self.slot) else {
            return Ok(None);
        };
        let Some(child) = slot.as_mut() else {
            return Err(LabError::Invalid(format!(
                "process {} already reaped",
                self.pid
            )));
        };
        match child.try_wait() {
            Ok(Some(st)) => {
                *slot = None;
                Ok(Some(st))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(LabError::io(format!("waiting for {}", self.pid), e)),
        }
    }

    /// Waits up to `timeout` for the process to exit (polling every 10 ms).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs the process group and reaps the process; returns its exit status if it could be read.
    pub fn kill(&self) -> Option<ExitStatus> {
        let mut slots = self.registry.lock();
        slots
            .get_mut(self.slot)
            .and_then(Option::take)
            .and_then(kill_and_reap)
    }

    /// Takes the stdout pipe (only if the command was spawned with `Stdio::piped()`).
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.with_child(|c| c.stdout.take()).flatten()
    }

    /// Takes the stderr pipe (only if the command was spawned with `Stdio::piped()`).
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.with_child(|c| c.stderr.take()).flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
