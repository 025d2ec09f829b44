//! ha-membership: who is in the cluster, agreed by all members; quorum; authenticated datagrams.
//!
//! - [`wire`]: the datagram format (parse/emit, bounded, never panics).
//! - [`auth`]: BLAKE3 keyed MAC, replay windows, authkey loading and `keygen`.
//! - [`engine`]: the sans-IO core (failure detection, agreed views), see its lifecycle note.
//! - [`channel`]: the ordered cluster channel (CPG contract), driven by the engine.
//! - [`driver`]: the tokio UDP driver (one socket per link, own real-time thread).
//! - [`from_config`]: `[cluster]`/`[quorum]` config → engine and driver parameters.
//! - [`quorum`]: votequorum semantics computed from the agreed view.
//! - [`status`]: `hastack members` / `hastack quorum` text renderings.

pub mod auth;
pub mod channel;
pub mod config;
pub mod driver;
pub mod engine;
pub mod from_config;
pub mod quorum;
pub mod status;
pub mod wire;

#[cfg(test)]
mod sim;

pub use engine::{Engine, EngineParams, Event, NodeSpec, Status, Timing, Transmit};
pub use quorum::{QuorumSettings, QuorumStatus, TieBreaker};
pub use wire::{Member, NodeId, ViewId};
