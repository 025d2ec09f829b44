//! The one error type of the lab library.

use std::io;

/// Why a lab operation failed; every variant says which step and whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An external command (`ip`, `nft`, `ping`, ...) ran but exited non-zero.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the test log.
        cmd: String,
        /// Exit status as printed by std.
        status: String,
        /// What the command wrote to stderr (trimmed).
        stderr: String,
    },
    /// An OS call failed (spawn, open, setns, write to /proc/sys...).
    #[error("{what}: {source}")]
    Io {
        /// What the lab was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The caller asked for something the lab cannot build (bad index, address outside the lab, ...).
    #[error("invalid lab request: {0}")]
    Invalid(String),
    /// Output of a tool could not be understood (a tool version the lab does not know).
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// Which output.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// The lab needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN); call `require_root()` first to skip.
    #[error(
        "the network lab needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); use require_root() to skip"
    )]
    NotRoot,
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result alias of the lab library.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
