//! Namespace naming, entering a namespace from a thread, finding the processes inside one, and
//! crash cleanup of namespaces left behind by a test process that died.
//!
//! Names: every namespace of a lab is called `hsl<pid>x<n><role>`: `hsl` marks it as ours, `<pid>` is
//! the process that owns it (so a later run can tell a live lab from a crashed one), `<n>` a counter
//! unique inside that process, `<role>` is `sw` (the switch), `n<i>` (node i) or `c<j>` (client j).
//! With pid_max ≤ 4194304 and a counter below 1000 this stays ≤ 15 characters, so the same string
//! could even serve as an interface name.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cmd;
use super::error::{LabError, Result};

/// Prefix of every namespace and temp directory the lab creates.
pub const PREFIX: &str = "hsl";
/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Where `ip netns exec` finds per-namespace files to bind-mount over /etc.
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// Gives namespace `name` its own /etc/resolv.conf (see `Host::resolv_conf_path`).
pub fn create_etc(name: &str) -> Result<()> {
    let dir = Path::new(ETC_NETNS_DIR).join(name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let file = dir.join("resolv.conf");
    std::fs::write(&file, format!("# resolv.conf of lab namespace {name}\n"))
        .map_err(|e| LabError::io(format!("writing {}", file.display()), e))
}

/// Removes what `create_etc` made (no error if it is not there).
pub fn remove_etc(name: &str) {
    let dir = Path::new(ETC_NETNS_DIR).join(name);
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("lab: removing {}: {e}", dir.display());
    }
}

/// Owner pid encoded in a lab namespace or directory name, or None if the name is not the lab's.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = split_digits(rest)?;
    let rest = rest.strip_prefix('x')?;
    let (_counter, role) = split_digits(rest)?;
    let role_ok = role.is_empty()
        || role == "sw"
        || role
            .strip_prefix('n')
            .or_else(|| role.strip_prefix('c'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !role_ok {
        return None;
    }
    pid.parse().ok().filter(|p| *p > 0)
}

fn split_digits(s: &str) -> Option<(&str, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

/// The lab id (`hsl<pid>x<n>`) a lab namespace or directory name belongs to.
pub fn lab_id(name: &str) -> Option<&str> {
    owner_pid(name)?;
    let after_x = name.find('x')? + 1;
    let digits = name[after_x..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    Some(&name[..after_x + digits])
}

/// Start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses) start at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Name of the file, in a lab's scratch directory, recording its owner's start time.
pub const OWNER_FILE: &str = "owner";

/// Content of the owner file for this process: `<pid> <start time>`.
pub fn owner_record() -> String {
    let pid = std::process::id() as i32;
    format!("{pid} {}\n", process_start_time(pid).unwrap_or(0))
}

/// True if the process that created the lab named `name` is gone: its pid is dead, or the pid
/// now belongs to a different process (start time differs from the owner file in the lab's
/// scratch directory; pids are reused quickly where pid_max is small).
pub fn owner_dead(name: &str) -> bool {
    let Some(pid) = owner_pid(name) else {
        return false;
    };
    if pid == std::process::id() as i32 {
        return false;
    }
    if !pid_alive(pid) {
        return true;
    }
    let recorded = lab_id(name)
        .and_then(|id| std::fs::read_to_string(std::env::temp_dir().join(id).join(OWNER_FILE)).ok())
        .and_then(|r| {
            r.split_whitespace()
                .nth(1)
                .and_then(|t| t.parse::<u64>().ok())
        });
    match (recorded, process_start_time(pid)) {
        (Some(rec), Some(now)) => rec != 0 && rec != now,
        _ => false,
    }
}

/// True if a process with this pid exists (EPERM still means it exists).
pub fn pid_alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Names of all named network namespaces (entries of /run/netns).
pub fn list_netns() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// True if a named namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Pids of the processes whose network namespace is the named namespace `name` (what
/// `ip netns pids` prints), excluding this process. Empty if the namespace does not exist.
pub fn pids_in_netns(name: &str) -> Vec<i32> {
    let Ok(ns) = std::fs::metadata(Path::new(NETNS_DIR).join(name)) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.dev() == ns.dev() && m.ino() == ns.ino())
                .unwrap_or(false)
        })
        .collect()
}

/// SIGKILLs every process inside namespace `name` until none is left (bounded: ~2 s).
/// Returns the pids that were signalled.
pub fn kill_all_in(name: &str) -> Vec<i32> {
    let mut killed = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids_in_netns(name);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed.into_iter().collect()
}

/// Deletes the named namespaces (`ip -force -batch` so one failure does not stop the others).
pub fn delete_netns(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    let mut c = std::process::Command::new(cmd::ip());
    c.args(["-force", "-batch", "-"]);
    cmd::checked(c, Some(&script)).map(drop)
}

/// Runs `f` on a fresh thread whose network namespace is `name`; sockets created by `f` live there.
/// A panic in `f` is propagated to the caller.
pub fn run_in<F, R>(name: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let file = open_netns(name)?;
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<R> {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::io(format!("setns into {name}"), e.into()))?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Starts a long-lived thread inside namespace `name` (for an in-process daemon under test).
/// The namespace stays alive while the thread runs, even after the lab deleted its name.
pub fn thread_in<F, R>(name: &str, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let file = open_netns(name)?;
    let name = name.to_owned();
    std::thread::Builder::new()
        .name(format!("in-{name}"))
        .spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|e| LabError::io(format!("setns into {name}"), e.into()))?;
            Ok(f())
        })
        .map_err(|e| LabError::io("spawning a namespace thread", e))
}

fn open_netns(name: &str) -> Result<File> {
    let path = Path::new(NETNS_DIR).join(name);
    File::open(&path).map_err(|e| LabError::io(format!("opening {}", path.display()), e))
}

/// Writes sysctls (`("net/ipv6/conf/all/accept_dad", "0")`) inside namespace `name`.
pub fn write_sysctls(name: &str, values: &[(&str, &str)]) -> Result<()> {
    run_in(name, || -> Result<()> {
        for (key, value) in values {
            let path = PathBuf::from("/proc/sys").join(key);
            std::fs::write(&path, value)
                .map_err(|e| LabError::io(format!("writing {} in {name}", path.display()), e))?;
        }
        Ok(())
    })?
}

/// Crash cleanup: deletes every lab namespace (and temp directory) whose owner process is dead,
/// after SIGKILLing the processes still inside it. Returns the deleted namespace names.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let stale: Vec<String> = list_netns().into_iter().filter(|n| owner_dead(n)).collect();
    for ns in &stale {
        kill_all_in(ns);
    }
    // Another test process may be cleaning the same names right now: its deletions make ours
    // fail, which is fine as long as the namespaces end up gone.
    let _ = delete_netns(&stale);
    let gone: Vec<String> = stale.into_iter().filter(|n| !netns_exists(n)).collect();
    // Per-namespace /etc files of dead owners, whether or not their namespace still existed.
    if let Ok(rd) = std::fs::read_dir(ETC_NETNS_DIR) {
        for e in rd.filter_map(|e| e.ok()) {
            if let Some(name) = e.file_name().to_str()
                && owner_dead(name)
                && !netns_exists(name)
            {
                remove_etc(name);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            // The directory goes last: owner_dead() of the namespaces above reads it.
            if owner_dead(name) && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("hsl1234x0sw"), Some(1234));
        assert_eq!(owner_pid("hsl1234x17n3"), Some(1234));
        assert_eq!(owner_pid("hsl99x2c10"), Some(99));
        assert_eq!(owner_pid("hsl99x2"), Some(99));
        assert_eq!(owner_pid("hsl99x2n"), None);
        assert_eq!(owner_pid("hsl99x2zz"), None);
        assert_eq!(owner_pid("hslx2sw"), None);
        assert_eq!(owner_pid("hsl0x2sw"), None);
        assert_eq!(owner_pid("hsl12sw"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("hsl12x"), None);
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!owner_dead(&format!("hsl{}x0sw", std::process::id())));
        assert!(process_start_time(std::process::id() as i32).is_some_and(|t| t > 0));
        assert!(owner_record().starts_with(&format!("{} ", std::process::id())));
    }

    #[test]
    fn lab_id_strips_the_role() {
        assert_eq!(lab_id("hsl123x45sw"), Some("hsl123x45"));
        assert_eq!(lab_id("hsl123x45n12"), Some("hsl123x45"));
        assert_eq!(lab_id("hsl123x45"), Some("hsl123x45"));
        assert_eq!(lab_id("hslab"), None);
    }
}
