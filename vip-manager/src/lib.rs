//! vip-manager: a Pacemaker-style resource engine that places resources by constraints and scores
//! and moves virtual IP addresses with gratuitous ARP / unsolicited neighbour advertisements.
//!
//! Layout: `model` and `score` are the plain inputs; `placement` (where things run) and
//! `transition` (in which order to get there) are pure; `monitor` schedules health checks
//! sans-IO; `vip`, `garp`, `exec` and `systemd` are the I/O resource agents.
//!
//! # Safety bounds
//! - Among nodes that share an agreed view, a VIP has at most one holder: placement and plan are
//!   replicated on the ordered channel, a removal always precedes the add elsewhere, and a step
//!   runs only after its claim was delivered to everybody.
//! - A node that loses quorum, or sees no peer, removes its VIPs at once (no message needed).
//! - A daemon that dies (kill -9, crash) loses its VIPs within their lease (`valid_lft`, renewed
//!   by the daemon) plus the kernel's lifetime-check granularity (IPv4 checks lifetimes from a
//!   timer rounded up to whole seconds, at least a second apart: up to ~2 s more, later still on a
//!   starved machine; measured median 1.7 s, max 4.1 s with a 2 s lease under heavy load); stale
//!   VIPs are removed at start-up before the node joins.
//! - A daemon that was stopped or starved (its loop woke later than the stall threshold, derived
//!   from membership's suspect timeout) is fenced before it handles anything else: no lease
//!   renewal, no step. It keeps its VIPs only if every member of its view confirms, on the ordered
//!   channel, that the view survived within `stall_confirm` (100 ms by default); otherwise, or when
//!   a view that does not directly continue its own is installed, it removes them. So a node whose
//!   peers may have declared it dead answers for a VIP at most `stall_confirm` after it resumes,
//!   and never beyond its lease; a stall of the whole machine (peers stalled too, the view intact)
//!   moves nothing.
//! - A graceful stop releases first and hands over in two channel latencies; it leaves after the
//!   handover plan finished, or after the daemon's stop deadline (3 s) at worst.

pub mod config;
pub mod driver;
pub mod engine;
pub mod exec;
pub mod from_config;
pub mod garp;
pub mod model;
pub mod monitor;
pub mod placement;
pub mod score;
pub mod status;
pub mod systemd;
pub mod transition;
pub mod vip;

pub use model::{
    ClusterPolicy, Constraint, CurrentPlacement, FailCounts, Monitoring, NoQuorumPolicy, NodeId, OnFail,
    OrderKind, ResourceDef, ResourceId, ResourceKind, RunState, Timestamp, VipSpec, View,
};
pub use placement::{place, Placement};
pub use score::Score;
pub use transition::{plan, Action, Plan};
