//! ha-membership: who is in the cluster, agreed by all members; quorum; authenticated datagrams.
//!
//! - [`wire`]: the datagram format (parse/emit, bounded, never panics).
//! - [`auth`]: BLAKE3 keyed MAC, replay windows, authkey loading and `keygen`.

pub mod auth;
pub mod config;
pub mod wire;
