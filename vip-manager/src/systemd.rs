//! `systemd` unit resources: an exec flavour running `systemctl start|stop|is-active UNIT`.
//!
//! `systemctl is-active` exits 0 for an active unit and 3 for an inactive or failed one, so 3 is
//! this flavour's "not running". Unit names are checked so that a config value can never be read
//! by systemctl as an option.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use crate::exec::{ExecAgent, Operation};

/// The systemctl binary used by default.
pub const SYSTEMCTL: &str = "systemctl";

/// A unit name that systemd would not accept or that could be taken as an option.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid systemd unit name {0:?}")]
pub struct InvalidUnit(pub String);

/// Checks a unit name (`name.service`, `foo@bar.socket`, ...).
pub fn validate_unit(unit: &str) -> Result<(), InvalidUnit> {
    let ok = !unit.is_empty()
        && unit.len() <= 255
        && !unit.starts_with('-')
        && unit.contains('.')
        && unit.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    if ok { Ok(()) } else { Err(InvalidUnit(unit.to_string())) }
}

/// Builds the agent for `unit`, with `systemctl` at `systemctl` (a path, for tests and odd hosts).
pub fn unit_agent(
    instance: impl Into<String>,
    unit: &str,
    systemctl: &str,
    start_timeout: Duration,
    stop_timeout: Duration,
    monitor_timeout: Duration,
) -> Result<ExecAgent, InvalidUnit> {
    validate_unit(unit)?;
    let op = |verb: &str, t| Operation::new([systemctl, verb, "--", unit], t);
    Ok(ExecAgent {
        instance: instance.into(),
        start: op("start", start_timeout),
        stop: op("stop", stop_timeout),
        monitor: Operation::new([systemctl, "is-active", "--quiet", "--", unit], monitor_timeout),
        env: BTreeMap::new(),
        not_running_codes: vec![3],
        workdir: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::MonitorOutcome;

    #[test]
    fn unit_names_are_checked() {
        assert!(validate_unit("hastack-balancer.service").is_ok());
        assert!(validate_unit("getty@tty1.service").is_ok());
        assert!(validate_unit("--now").is_err());
        assert!(validate_unit("a b.service").is_err());
        assert!(validate_unit("noext").is_err());
        assert!(validate_unit("").is_err());
    }

    #[test]
    fn runs_systemctl_verbs_and_maps_is_active() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let state = dir.path().join("active");
        let fake = dir.path().join("systemctl");
        // A fake systemctl: records its argv; start/stop flip a state file; is-active reads it.
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> {log}\ncase \"$1\" in\n start) touch {st};;\n stop) rm -f {st};;\n is-active) [ -e {st} ] || exit 3;;\nesac\n",
                log = log.display(),
                st = state.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = Duration::from_secs(5);
        let a = unit_agent("lb", "hastack-balancer.service", &fake.display().to_string(), t, t, t).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            assert_eq!(a.monitor().await.unwrap(), MonitorOutcome::NotRunning);
            assert!(a.start().await.unwrap().start_ok());
            assert_eq!(a.monitor().await.unwrap(), MonitorOutcome::Running);
            assert!(a.stop().await.unwrap().stop_ok());
            assert_eq!(a.monitor().await.unwrap(), MonitorOutcome::NotRunning);
        });
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.contains("start -- hastack-balancer.service"), "{calls}");
        assert!(calls.contains("is-active --quiet -- hastack-balancer.service"), "{calls}");
    }
}
