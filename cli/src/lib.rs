//! The `hastack` binary's library half: the whole-file config (assembled from each crate's section),
//! the daemons, the control socket, logging and the systemd protocol, so integration tests can call
//! them directly.

pub mod balancer;
pub mod bench_membership;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod dhcp_dns;
pub mod failover;
pub mod import;
pub mod logging;
pub mod metrics;
pub mod service;
