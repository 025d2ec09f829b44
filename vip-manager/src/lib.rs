//! vip-manager: a Pacemaker-style resource engine that places resources by constraints and scores
//! and moves virtual IP addresses with gratuitous ARP / unsolicited neighbour advertisements.
//!
//! Layout: `model` and `score` are the plain inputs; `placement` (where things run) and
//! `transition` (in which order to get there) are pure; `monitor` schedules health checks
//! sans-IO; `vip`, `garp`, `exec` and `systemd` are the I/O resource agents.

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
