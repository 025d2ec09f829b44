//! Finding the `hastack` binary that end-to-end tests run inside the namespaces.

use std::path::PathBuf;

use super::error::{LabError, Result};

/// Path of the `hastack` binary to test: `$HASTACK_BIN` if set, else `hastack` in the same
/// target directory and profile as the running test (`target/debug/deps/x` → `target/debug/hastack`).
/// Tests cannot build it themselves (cargo holds the build-directory lock while tests run), so the
/// test command runs `cargo build -p hastack` before `cargo test`.
pub fn hastack_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HASTACK_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LabError::Invalid(format!(
                "HASTACK_BIN={} is not a file",
                p.display()
            )))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| LabError::io("locating the test executable", e))?;
    // deps/ holds test executables; the binaries sit one level up.
    let profile_dir = exe
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(|d| d.parent())
        .or_else(|| exe.parent())
        .ok_or_else(|| LabError::Invalid(format!("no target directory above {}", exe.display())))?;
    let bin = profile_dir.join("hastack");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(LabError::Invalid(format!(
            "{} not found: run `cargo build -p hastack` (same profile and target dir) before the tests, \
             or set HASTACK_BIN",
            bin.display()
        )))
    }
}
