//! Running the external tools the lab drives (`ip`, `nft`, `ping`) and finding them on disk.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::error::{LabError, Result};

/// Directories searched after `$PATH`: a test runner's PATH often lacks the sbin directories
/// where `ip` and `nft` live.
const EXTRA_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
];

/// Full path of `tool` if an executable of that name exists on `$PATH` or in the sbin directories.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        let p = Path::new(tool);
        return is_executable(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Path of `ip`, resolved once (falls back to the bare name so the error names the tool).
pub(crate) fn ip() -> &'static Path {
    static IP: OnceLock<PathBuf> = OnceLock::new();
    IP.get_or_init(|| find_tool("ip").unwrap_or_else(|| PathBuf::from("ip")))
}

/// Path of `nft`, resolved once.
pub(crate) fn nft() -> &'static Path {
    static NFT: OnceLock<PathBuf> = OnceLock::new();
    NFT.get_or_init(|| find_tool("nft").unwrap_or_else(|| PathBuf::from("nft")))
}

/// A printable command line for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, feeding `stdin` if given; returns its output whatever the status.
pub(crate) fn output(mut cmd: Command, stdin: Option<&str>) -> Result<Output> {
    let line = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("spawning `{line}`"), e))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes its stdin; its exit status then tells what went wrong.
        let _ = pipe.write_all(text.as_bytes());
    }
    child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("waiting for `{line}`"), e))
}

/// Runs `cmd`; a non-zero exit is an error carrying stderr; returns stdout.
pub(crate) fn checked(cmd: Command, stdin: Option<&str>) -> Result<String> {
    let line = describe(&cmd);
    let out = output(cmd, stdin)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if let Some(input) = stdin {
            stderr.push_str("\ninput was:\n");
            stderr.push_str(input);
        }
        Err(LabError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// `ip ARGS...` checked.
pub(crate) fn ip_ok<S: AsRef<OsStr>>(args: &[S]) -> Result<String> {
    let mut c = Command::new(ip());
    c.args(args);
    checked(c, None)
}

/// `ip [-n NS] -batch -` with `script` as input (one `ip` process for many changes).
pub(crate) fn ip_batch(ns: Option<&str>, script: &str) -> Result<String> {
    let mut c = Command::new(ip());
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(["-batch", "-"]);
    checked(c, Some(script))
}
