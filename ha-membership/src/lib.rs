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
//!
//! # Vote leases: at most one quorate partition, strictly
//!
//! Quorum is computed from the agreed view (votequorum's rules), but a vote only counts while its
//! holder has a fresh lease on it *in that view* (corosync-qnetd's witness vote, generalised to
//! every voter). With `T_q` = the suspect timeout (30 ms by default) and ε = 1/16:
//!
//! - Every heartbeat carries the sender's round number and, per recipient, an *echo*: the latest
//!   round received from the recipient. A node that receives the echo of its round `n` from a peer
//!   that announces the node's own view counts that peer's vote until `sent(n) + T_q` (its own
//!   clock; no clock sync is needed, the round was sent before the peer received it).
//! - A node echoes (grants its vote) only to members of its installed view, only while it has
//!   acked no proposal (its channel is not blocked), and only after its quiet period. It remembers,
//!   per peer, until when the leases it granted may run: arrival of the echoed round + `T_q·(1+ε)`.
//! - On installing a view V', the quiet period runs until every lease it granted to a node *not in
//!   V'* has run out; until then it neither counts its own vote nor grants it. A node that said
//!   Leave needs no quiet period (it counts nothing any more); a starting node waits one full
//!   `T_q·(1+ε)` (leases of its previous life). Leases are void on every install.
//! - A node that acks (or makes) a proposal stops counting itself quorate in its view at once, and
//!   grants nothing, until it installs a view at least as new as the one it acked.
//!
//! The strict quorum, [`Engine::quorate_at`]`(now)`, holds when these leases (own vote included)
//! carry votequorum's threshold. Claim: at any instant, every node for which it holds is in the same
//! view. Two nodes quorate in views V1 ≠ V2 would hold leases from a common voter P (majorities
//! intersect; the tie-breaker's vote must be held too). P was in V1, then in V2 (views only move
//! forward). If A (in V1) is not in V2, P granted nothing in V2 before A's lease ran out. If A is in
//! V2, V2 was installed only after A acked it, and from then A withholds its quorum until it installs
//! a view at least as new as V2 (installing an older view it had also acked does not count), so it is
//! not quorate in V1. Exempt by design: `two_node` without a witness (votequorum relies on
//! fencing there). The simulator checks this after every step of every suite.
//!
//! Crash failover costs nothing: a crashed node's leases end `T_q·(1+ε)` after the others last heard
//! it, before it can be declared failed (`suspect_timeout + confirm_min`). With a shared witness, the
//! side the witness joins first (the lowest-id coordinator's, which the witness's promise favours)
//! becomes quorate; the other side's lease ran out before.
//!
//! Two quorum notions are exposed: the strict one above ([`Engine::quorate_at`],
//! [`Engine::quorum_lease`]: until when it lasts unrenewed), and the reported flag
//! ([`Engine::quorate`], events `QuorumGained`/`QuorumLost`), which is *gained* only with the strict
//! quorum but *kept* while the view's members are heard and have not moved to a view this node never
//! acked, so a lease lapse of a few milliseconds under loss changes nothing. After every
//! `ViewInstalled` exactly one quorum decision follows (`QuorumGained` for that view or `QuorumLost`).

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

pub use engine::{Engine, EngineParams, Event, LeaseStatus, NodeSpec, Status, Timing, Transmit, VoteStatus};
pub use quorum::{QuorumSettings, QuorumStatus, TieBreaker};
pub use wire::{Member, NodeId, ViewId};
