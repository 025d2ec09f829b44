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
//! every voter). With `T_q` = the suspect timeout (30 ms by default), ε = 1/16 and
//! `G` = [`engine::report_grace`] (= `confirm_min`, 10 ms by default):
//!
//! - Every heartbeat carries the sender's round number and, per recipient, an *echo*: the latest
//!   round received from the recipient. A node that receives the echo of its round `n` from a peer
//!   that announces the node's own view counts that peer's vote until `sent(n) + T_q` (its own
//!   clock; no clock sync is needed, the round was sent before the peer received it).
//! - A node echoes (grants its vote) only to members of its installed view, only while it has
//!   acked no proposal (its channel is not blocked), and only after its quiet period. It remembers,
//!   per peer, until when the leases it granted may run: arrival of the echoed round + `T_q·(1+ε)`.
//! - A heartbeat is marked *urgent* when the sender's lease from the recipient ends within a
//!   heartbeat interval (its echoes were lost); the recipient, if it grants, answers at once (at
//!   most once per half interval per peer). Under 5 % loss this cuts lease lapses ~25-fold and
//!   bounds them to a few milliseconds (`lapse_statistics` in the simulator prints the figures).
//! - On installing a view V', the quiet period runs until every lease it granted to a node *not in
//!   V'* has run out, plus `G·(1+ε)`; until then it neither counts its own vote nor grants it. A
//!   node that said Leave needs no quiet period (it counts nothing any more); a starting node waits
//!   `T_q·(1+ε) + G·(1+ε)` (leases of its previous life). Leases are void on every install.
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
//! # The reported quorum and which signal to use
//!
//! The *reported* flag ([`Engine::quorate`], events `QuorumGained`/`QuorumLost`, the driver's
//! status and `hastack quorum`) is gained only with the strict quorum, kept while the strict
//! quorum lapsed less than `G` ago, and lost after that (or on leaving; every install is followed
//! by exactly one decision, `QuorumGained` for that view or `QuorumLost`). A lapse is a lease
//! renewed late because heartbeats were lost; it is not a failure, and it is not reported.
//!
//! Guarantee: while node A reports quorum in view V, no node holds the strict quorum in a view A
//! is not a member of. Proof sketch: when A's strict quorum last held it carried leases from a
//! majority S; a quorum in V' ∌ A needs a voter P ∈ S to count in V', which P's quiet period
//! delays until its leases to A ran out plus `G·(1+ε)`, i.e. past the moment A's flag dropped.
//! Consequently, of two nodes that report quorum in different views, the one whose strict quorum
//! ended first (it acked the other's view, or lapsed) is a member of the other's view, so a
//! hand-over between them is ordered through that view (vip-manager's planner releases on the old
//! holder before adding on the new one, and the old holder acts only once it installed it). The
//! simulator checks both after every step.
//!
//! Which signal a consumer must use:
//! - Holding something exclusive (the VIP, a lease-owning service): act on `QuorumGained` /
//!   `QuorumLost` (the reported flag). Release on `QuorumLost` (and on a view that moves the
//!   resource); acquire only after `QuorumGained` for the view that places it here. vip-manager
//!   does exactly this (cli/src/cluster/channel.rs hands each view over with its decision).
//! - Renewing something that outlives the process (the VIP's kernel address lifetime): renew only
//!   while [`Engine::quorum_lease`] / `ClusterHandle::vote_lease_valid()` holds; a lapse then only
//!   skips a renewal. vip-manager's renewals do this.
//! - Both flags are evaluated by the membership thread: a stalled process (SIGSTOP, a frozen VM)
//!   reports nothing until it runs again; vip-manager's stall fencing covers that case.
//!
//! Crash failover costs nothing: a crashed node's leases end `T_q·(1+ε)` after the others last heard
//! it, before it can be declared failed (`suspect_timeout + confirm_min`), so with `G = confirm_min`
//! the quiet period is over (or within ~2 ms of over) by the time the new view is installed.
//!
//! # Cuts that spare a third party
//!
//! Views need direct two-way contact: a peer from which no datagram arrived directly, on any link,
//! for `partition_timeout` (default 4 × suspect timeout, stretched only by this node's own late
//! timers) is left out of the views this node proposes even while others vouch for it (indirect
//! probes only delay a failure declaration). When nodes 1 and 2 lose their link but both reach a
//! third party (the witness, or node 3), the lowest id's side wins, as with corosync-qnetd's
//! ffsplit tie-breaker: node 1 proposes a view without 2, the third party acks it (it refuses a
//! proposal that drops a lower member it still hears, so it never sides with 2 while it hears 1),
//! and node 2 does not propose while a lower node it cannot hear is vouched for by others. Node 2
//! stays in its old view, its leases run out, and it reports `QuorumLost`; the winning view's
//! channel works (every member reaches its sequencer). A one-way cut where 1 cannot hear 2 ends
//! the same way. One where only 2 cannot hear 1 keeps one view (1 still hears 2, and 2 fetches
//! what the sequencer sends it from the third party) until some view change needs 2's ack, after
//! which 2 stays out until two-way contact returns; either way one quorate view holds 1.
//! Limit: with non-transitive connectivity in larger clusters, the lowest id's side wins even
//! when it is the smaller one; if it lacks quorum, the rest keep their old view (quorate only on
//! their own leases) until the cut heals.

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
