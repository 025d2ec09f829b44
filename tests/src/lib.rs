//! Cross-crate and end-to-end tests live in `tests/`; this library re-exports the namespace lab
//! (crate `hastack-lab`, also used by `hastack demo` and `hastack bench failover`) under the names
//! the tests use.
//!
//! Start every end-to-end test with `if !require_lab()? { return Ok(()); }`, then build a
//! [`Lab`]; see the [`lab`] module for the topology and what it offers.

pub use hastack_lab as lab;

pub use hastack_lab::{
    Host, HostId, HostLink, Lab, LabBuilder, LabError, MacAddr, Neighbour, Proc, cleanup_stale,
    hastack_bin, in_ci, poll_until, require_lab, require_root, require_tools,
};
