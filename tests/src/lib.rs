//! The network-namespace lab and helpers shared by the end-to-end tests.
//!
//! Start every end-to-end test with `if !require_lab()? { return Ok(()); }`, then build a
//! [`Lab`]; see the [`lab`] module for the topology and what it offers.

pub mod lab;

pub use lab::{
    Host, HostId, HostLink, Lab, LabBuilder, LabError, MacAddr, Neighbour, Proc, cleanup_stale,
    hastack_bin, in_ci, require_lab, require_root, require_tools,
};

use std::time::{Duration, Instant};

/// Calls `f` every `interval` until it returns true or `timeout` passes; returns whether it did.
/// For waiting on real network state in end-to-end tests (never in logic tests, which drive time).
pub fn poll_until(timeout: Duration, interval: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
