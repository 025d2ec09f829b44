//! Skip-or-fail gates for tests that need root or external tools.
//!
//! Outside CI a missing prerequisite prints `SKIP: ...` and the test returns early; under
//! `CI=true` the same situation panics, so CI can never pass by skipping the end-to-end tests.

use super::cmd::find_tool;
use super::error::Result;

/// True if the environment says this is a CI run (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn skip(reason: &str) -> Result<bool> {
    if in_ci() {
        panic!("CI=true, so this end-to-end test must not skip, but: {reason}");
    }
    eprintln!("SKIP: {reason}");
    Ok(false)
}

/// Ok(true) when running as root; otherwise prints `SKIP: ...` and returns Ok(false) (panics under CI).
pub fn require_root() -> Result<bool> {
    if nix::unistd::geteuid().is_root() {
        Ok(true)
    } else {
        skip("not running as root (the network lab needs CAP_NET_ADMIN and CAP_SYS_ADMIN)")
    }
}

/// Ok(true) when every tool is installed (on `$PATH` or in an sbin directory); otherwise prints
/// `SKIP: ...` naming the missing ones and returns Ok(false) (panics under CI).
pub fn require_tools(tools: &[&str]) -> Result<bool> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if missing.is_empty() {
        Ok(true)
    } else {
        skip(&format!(
            "missing tool(s): {} (install the Debian packages the README lists)",
            missing.join(", ")
        ))
    }
}

/// Root plus what the lab itself uses (`ip`, `nft`, `ping`): the first call of a lab test.
pub fn require_lab() -> Result<bool> {
    Ok(require_root()? && require_tools(&["ip", "nft", "ping"])?)
}
