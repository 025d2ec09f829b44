//! `exec` resources: OCF-shaped start/stop/monitor commands with timeouts and OCF exit codes.
//!
//! Each operation is an argv (no shell) run with `OCF_RESOURCE_INSTANCE` set, stdin closed, in its
//! own process group so that a timeout kills the whole tree. Exit codes follow OCF: 0 success,
//! 7 not running, anything else failed. A stop that finds the resource already stopped (7) is a
//! successful stop.

use std::collections::BTreeMap;
use std::io;
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;

use crate::monitor::MonitorOutcome;

/// One operation: the command to run and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Program and arguments (run directly, not through a shell).
    pub argv: Vec<String>,
    /// Kill the operation and report `TimedOut` after this long.
    pub timeout: Duration,
}

impl Operation {
    /// An operation from an argv.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>, timeout: Duration) -> Self {
        Operation { argv: argv.into_iter().map(Into::into).collect(), timeout }
    }
}

/// Result of an operation with OCF's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcfStatus {
    /// 0.
    Success,
    /// 7 (or the flavour's "not running" codes).
    NotRunning,
    /// Any other exit code.
    Failed(i32),
    /// Killed by a signal we did not send.
    Signalled(i32),
    /// Did not finish within its timeout; the process group was killed.
    TimedOut,
}

impl OcfStatus {
    /// Whether a start succeeded.
    pub fn start_ok(self) -> bool {
        self == OcfStatus::Success
    }

    /// Whether a stop succeeded (already stopped counts).
    pub fn stop_ok(self) -> bool {
        matches!(self, OcfStatus::Success | OcfStatus::NotRunning)
    }

    /// The monitor outcome this status means.
    pub fn as_monitor(self) -> MonitorOutcome {
        match self {
            OcfStatus::Success => MonitorOutcome::Running,
            OcfStatus::NotRunning => MonitorOutcome::NotRunning,
            OcfStatus::Failed(c) => MonitorOutcome::Failed(c),
            OcfStatus::Signalled(s) => MonitorOutcome::Failed(128 + s),
            OcfStatus::TimedOut => MonitorOutcome::TimedOut,
        }
    }
}

/// Why an operation could not be run at all (the agent is misconfigured or the host is broken).
#[derive(Debug, Error)]
pub enum ExecError {
    /// The operation has no program.
    #[error("{op}: empty command")]
    EmptyCommand {
        /// Operation name.
        op: &'static str,
    },
    /// The program could not be started (missing, not executable); retrying will not help until
    /// the host is fixed.
    #[error("{op}: cannot run {program}: {source}")]
    Spawn {
        /// Operation name.
        op: &'static str,
        /// Program path.
        program: String,
        /// OS error.
        source: io::Error,
    },
    /// Waiting for the child failed.
    #[error("{op}: waiting for {program}: {source}")]
    Wait {
        /// Operation name.
        op: &'static str,
        /// Program path.
        program: String,
        /// OS error.
        source: io::Error,
    },
}

/// An agent driven by start/stop/monitor commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecAgent {
    /// Resource instance name, passed as `OCF_RESOURCE_INSTANCE`.
    pub instance: String,
    /// Start operation.
    pub start: Operation,
    /// Stop operation.
    pub stop: Operation,
    /// Monitor operation.
    pub monitor: Operation,
    /// Extra environment (OCF_RESKEY_* parameters, for instance).
    pub env: BTreeMap<String, String>,
    /// Exit codes that mean "not running" (OCF: 7; systemctl is-active: 3).
    pub not_running_codes: Vec<i32>,
    /// Working directory of the commands (`None` = the daemon's, normally /).
    pub workdir: Option<std::path::PathBuf>,
}

impl ExecAgent {
    /// An OCF agent script: `<path> start|stop|monitor`.
    pub fn ocf(instance: impl Into<String>, path: impl Into<String>, timeout: Duration) -> Self {
        let path = path.into();
        let op = |a: &str| Operation::new([path.clone(), a.to_string()], timeout);
        ExecAgent {
            instance: instance.into(),
            start: op("start"),
            stop: op("stop"),
            monitor: op("monitor"),
            env: BTreeMap::new(),
            not_running_codes: vec![7],
            workdir: None,
        }
    }

    /// Runs the start operation.
    pub async fn start(&self) -> Result<OcfStatus, ExecError> {
        self.run("start", &self.start).await
    }

    /// Runs the stop operation.
    pub async fn stop(&self) -> Result<OcfStatus, ExecError> {
        self.run("stop", &self.stop).await
    }

    /// Runs the monitor operation.
    pub async fn monitor(&self) -> Result<MonitorOutcome, ExecError> {
        Ok(self.run("monitor", &self.monitor).await?.as_monitor())
    }

    async fn run(&self, name: &'static str, op: &Operation) -> Result<OcfStatus, ExecError> {
        let Some((program, args)) = op.argv.split_first() else {
            return Err(ExecError::EmptyCommand { op: name });
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .envs(&self.env)
            .env("OCF_RESOURCE_INSTANCE", &self.instance)
            .env("__OCF_ACTION", name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(d) = &self.workdir {
            cmd.current_dir(d);
        }
        let mut child = cmd
            .spawn()
            .map_err(|source| ExecError::Spawn { op: name, program: program.clone(), source })?;
        let pid = child.id();
        match tokio::time::timeout(op.timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(self.map_status(status)),
            Ok(Err(source)) => Err(ExecError::Wait { op: name, program: program.clone(), source }),
            Err(_) => {
                // Kill the whole group: OCF agents often fork helpers that would outlive the shell.
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.wait().await;
                tracing::warn!(instance = %self.instance, op = name, "operation timed out");
                Ok(OcfStatus::TimedOut)
            }
        }
    }

    fn map_status(&self, status: std::process::ExitStatus) -> OcfStatus {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(0), _) => OcfStatus::Success,
            (Some(c), _) if self.not_running_codes.contains(&c) => OcfStatus::NotRunning,
            (Some(c), _) => OcfStatus::Failed(c),
            (None, Some(s)) => OcfStatus::Signalled(s),
            (None, None) => OcfStatus::Failed(-1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> Operation {
        Operation::new(["/bin/sh", "-c", script], timeout)
    }

    fn agent(start: &str, stop: &str, monitor: &str) -> ExecAgent {
        let t = Duration::from_secs(5);
        ExecAgent {
            instance: "web".into(),
            start: sh(start, t),
            stop: sh(stop, t),
            monitor: sh(monitor, t),
            env: BTreeMap::new(),
            not_running_codes: vec![7],
            workdir: None,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn exit_codes_map_to_ocf() {
        rt().block_on(async {
            let a = agent("exit 0", "exit 7", "exit 1");
            assert_eq!(a.start().await.unwrap(), OcfStatus::Success);
            let stop = a.stop().await.unwrap();
            assert_eq!(stop, OcfStatus::NotRunning);
            assert!(stop.stop_ok());
            assert_eq!(a.monitor().await.unwrap(), MonitorOutcome::Failed(1));
            let a = agent("exit 7", "exit 2", "exit 7");
            assert!(!a.start().await.unwrap().start_ok());
            assert!(!a.stop().await.unwrap().stop_ok());
            assert_eq!(a.monitor().await.unwrap(), MonitorOutcome::NotRunning);
        });
    }

    #[test]
    fn instance_and_env_are_passed() {
        rt().block_on(async {
            let mut a = agent(
                r#"[ "$OCF_RESOURCE_INSTANCE" = web ] && [ "$OCF_RESKEY_port" = 80 ]"#,
                "exit 0",
                "exit 0",
            );
            a.env.insert("OCF_RESKEY_port".into(), "80".into());
            assert_eq!(a.start().await.unwrap(), OcfStatus::Success);
        });
    }

    #[test]
    fn timeout_kills_the_process_group() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let marker = dir.path().join("survived");
            // The child forks a grandchild that would write the marker after 1 s if not killed.
            let script = format!("(sleep 1; touch {}) & sleep 10", marker.display());
            let mut a = agent("exit 0", "exit 0", "exit 0");
            a.monitor = sh(&script, Duration::from_millis(150));
            let t = std::time::Instant::now();
            assert_eq!(a.monitor().await.unwrap(), MonitorOutcome::TimedOut);
            assert!(t.elapsed() < Duration::from_secs(3));
            std::thread::sleep(Duration::from_millis(1300));
            assert!(!marker.exists(), "grandchild outlived the timeout");
        });
    }

    #[test]
    fn missing_program_is_an_error() {
        rt().block_on(async {
            let mut a = agent("exit 0", "exit 0", "exit 0");
            a.start = Operation::new(["/nonexistent/agent", "start"], Duration::from_secs(1));
            assert!(matches!(a.start().await, Err(ExecError::Spawn { .. })));
            a.start = Operation::new(Vec::<String>::new(), Duration::from_secs(1));
            assert!(matches!(a.start().await, Err(ExecError::EmptyCommand { .. })));
        });
    }

    #[test]
    fn ocf_agent_gets_action_argument() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent");
            std::fs::write(&path, "#!/bin/sh\ncase \"$1\" in start) exit 0;; stop) exit 0;; monitor) exit 7;; *) exit 3;; esac\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            let a = ExecAgent::ocf("x", path.display().to_string(), Duration::from_secs(5));
            assert_eq!(a.start().await.unwrap(), OcfStatus::Success);
            assert_eq!(a.monitor().await.unwrap(), MonitorOutcome::NotRunning);
        });
    }
}
