//! The `hastack` binary's library half: the whole-file config (assembled from each crate's section),
//! and the operator commands, so integration tests can call them directly.

pub mod config;
