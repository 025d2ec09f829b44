//! ISC dhclient as a lab client (shared by the DHCP end-to-end tests): a hook script that records
//! every event as a "REASON address" line and configures the bound address, the dhclient command
//! line with its own lease, pid and config files, and readers for what it recorded.

use std::path::{Path, PathBuf};

use hastack_lab::{Host, LabError, Proc};

/// A running `dhclient -d` in a lab host, with the files of its run.
pub struct Dhclient {
    /// The dhclient process (killed when dropped).
    pub proc: Proc,
    events: PathBuf,
    args: Vec<PathBuf>,
}

/// The hook script: one "REASON address" line per event into `events`; the address is put on
/// the interface on every event that grants one (dhclient leaves that to its script).
pub fn event_script(events: &Path) -> String {
    format!(
        "#!/bin/sh\necho \"$reason $new_ip_address\" >> {ev}\n\
         case \"$reason\" in BOUND|RENEW|REBIND|REBOOT) ip addr replace $new_ip_address/24 dev $interface ;; esac\nexit 0\n",
        ev = events.display()
    )
}

impl Dhclient {
    /// Start dhclient on `host`'s eth0 with `conf` as its dhclient.conf; its files are
    /// `dir/<name>.{sh,conf,leases,pid,events}`.
    pub fn start(host: &Host, dir: &Path, name: &str, conf: &str) -> Result<Dhclient, LabError> {
        let file = |ext: &str| dir.join(format!("{name}.{ext}"));
        let io = |e| LabError::Io { what: format!("dhclient files in {}", dir.display()), source: e };
        let (script, events) = (file("sh"), file("events"));
        std::fs::write(&script, event_script(&events)).map_err(io)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
        std::fs::write(file("conf"), conf).map_err(io)?;
        let args = vec![PathBuf::from("-cf"), file("conf"), "-lf".into(), file("leases"), "-pf".into(), file("pid"), "-sf".into(), script];
        let mut cmd: Vec<&std::ffi::OsStr> = vec!["dhclient".as_ref(), "-d".as_ref()];
        cmd.extend(args.iter().map(|a| a.as_os_str()));
        cmd.push("eth0".as_ref());
        let proc = host.spawn(&cmd)?;
        Ok(Dhclient { proc, events, args })
    }

    /// Every event so far: (reason, address).
    pub fn events(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.trim().to_string())))
            .collect()
    }

    /// The address of the first BOUND event.
    pub fn bound(&self) -> Option<String> {
        self.events().into_iter().find(|(r, _)| r == "BOUND").map(|(_, a)| a)
    }

    /// dhclient's own output.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// `dhclient -r` with the same files: send a DHCPRELEASE for the lease and stop the running
    /// client (through its pid file).
    pub fn release(&self, host: &Host) -> Result<String, LabError> {
        let mut cmd: Vec<&std::ffi::OsStr> = vec!["dhclient".as_ref(), "-r".as_ref()];
        cmd.extend(self.args.iter().map(|a| a.as_os_str()));
        cmd.push("eth0".as_ref());
        host.exec_ok(&cmd)
    }
}
