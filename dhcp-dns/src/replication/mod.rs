//! Lease replication between gateways over the cluster's process group "leases" (see
//! [`crate::group`]): a sans-IO core ([`ReplicationCore`]) and its tokio driver
//! ([`spawn`] → [`ReplicationHandle`], whose [`ClusterReplicator`] is the DHCP driver's
//! [`LeaseReplicator`]).
//!
//! # Protocol (messages multicast in the group, delivered in one total order to every member)
//! - `Record{seq, record}`: a lease change made by the origin. Every other member persists it
//!   (fdatasync) and then multicasts `Ack{to: origin, seq}`, addressed to the origin alone (the
//!   daemons deliver it to the origin only, when they all can). The records delivered within
//!   [`CoreConfig::gather`] of the first (`[dhcp] replication_gather`, default 3 ms) are
//!   persisted as one group commit and acknowledged with one message per origin, written by the
//!   thread that made them durable; the origin gathers its own records for as long before it
//!   multicasts them as one message. A sync ACK waits at most twice that much longer; in
//!   exchange, at a steady rate the channel messages, the peers' fdatasyncs, wake-ups and acks
//!   are shared by the leases of a window.
//! - The origin waits for an `Ack` from every *other* member of the group as it knows it when it
//!   sends the record (a record is not delivered back to its origin when the daemons can avoid
//!   it; when it does come back, the wait is set again to the members at that point of the
//!   order, which precedes every ack); a member that leaves the view (its node failed, its
//!   process stopped) is no longer waited for. A member that joins while the record is in flight
//!   gets it after its join and persists it, unwaited for. All acks in → the lease is
//!   replicated; the deadline passes first → it is reported as failed (counted, served anyway).
//! - State transfer: when a member joins, the lowest-id member that was already in the group
//!   (the donor) multicasts `Snapshot{to: joiner}` chunks of its table — leases *and tombstones*
//!   — as it stood at the join's point in the order. The joiner adopts each snapshot entry unless
//!   it holds a newer one for that address or a `Record` for it already arrived after its join
//!   (newer by the order). After the last chunk it settles conflicts the merge can create (one
//!   client or one name on two addresses: the newest decision keeps it, the other lease is
//!   released or loses the name), multicasts what it holds newer, so the others learn it too, and
//!   it is `synced`. Records the joiner gets while it loads the snapshot are persisted and acked
//!   as they come, not after the snapshot, so no origin waits out its deadline for a joiner.
//!
//! # Versions and tombstones (why a deleted lease does not come back)
//! Every record carries a revision ([`crate::leases::Rev`], a hybrid logical clock stamped by the
//! gateway that decided). Everywhere two records about one address meet — a member's table, a
//! snapshot merge, the DHCP core applying a peer's record — the higher revision wins
//! ([`LogRecord::newer_than`]), never the order they happen to arrive in. A removed address keeps
//! a tombstone (a `Remove` with its revision) in the table, the lease log (compaction keeps it)
//! and snapshots, so a gateway that was cut off and rejoins with an old copy of a lease that was
//! released, expired and collected, declined, renamed or removed meanwhile loses to the newer
//! decision instead of resurrecting it. Tombstones are never dropped while the address is not
//! leased again: there is at most one entry per address, so they are bounded by the pools and a
//! partition of any length is covered. Decisions derived from a record (collecting an old
//! lease, ending a quarantine) rank just above that record, so a decision a peer made meanwhile
//! still wins.
//!
//! # Lifecycle
//! ```text
//!  disconnected --connected(me)--> joining --first view: alone--> synced
//!                                          --first view: others--> awaiting snapshot
//!  awaiting snapshot --last chunk | donor gone | snapshot_wait passed--> synced
//!  any --disconnected--> disconnected (every pending record fails at once)
//! ```
//! While not connected, local records fail at once (the DHCP driver counts them and serves on).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashbrown::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::group::{self, GroupEvent, MAX_MESSAGE, MemberId};
use crate::leases::{GroupCommitter, Lease, LogRecord};
use crate::server::{LeaseReplicator, ReplicaInput};

const MSG_RECORD: u8 = 1;
const MSG_ACK: u8 = 2;
const MSG_SNAPSHOT: u8 = 3;

/// One message of the lease group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupMsg {
    /// Lease changes by the sender; record `i` has sequence number `seq + i` (for acks).
    Record {
        /// The first record's sequence number.
        seq: u64,
        /// The changes, in order.
        records: Vec<LogRecord>,
    },
    /// Records durable at the sender: (origin of the record, its sequence number).
    Ack {
        /// The acknowledged records.
        acks: Vec<(MemberId, u64)>,
    },
    /// Part of the lease table, for a joining member.
    Snapshot {
        /// The joiner.
        to: MemberId,
        /// The last chunk.
        last: bool,
        /// Leases (as upserts).
        records: Vec<LogRecord>,
    },
}

fn put_member(out: &mut Vec<u8>, m: MemberId) {
    out.extend_from_slice(&m.node.to_be_bytes());
    out.extend_from_slice(&m.member.to_be_bytes());
}

fn get_member(b: &[u8]) -> Option<MemberId> {
    Some(MemberId { node: u32::from_be_bytes(b.get(0..4)?.try_into().ok()?), member: u64::from_be_bytes(b.get(4..12)?.try_into().ok()?) })
}

impl GroupMsg {
    /// Encode (`None` when a record cannot be framed).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        match self {
            GroupMsg::Record { seq, records } => {
                out.push(MSG_RECORD);
                out.extend_from_slice(&seq.to_be_bytes());
                for r in records {
                    r.encode(&mut out).ok()?;
                }
            }
            GroupMsg::Ack { acks } => {
                out.push(MSG_ACK);
                for (to, seq) in acks {
                    put_member(&mut out, *to);
                    out.extend_from_slice(&seq.to_be_bytes());
                }
            }
            GroupMsg::Snapshot { to, last, records } => {
                out.push(MSG_SNAPSHOT);
                put_member(&mut out, *to);
                out.push(u8::from(*last));
                for r in records {
                    r.encode(&mut out).ok()?;
                }
            }
        }
        Some(out)
    }

    /// Decode; `None` for anything malformed (dropped and counted by the caller).
    pub fn decode(b: &[u8]) -> Option<GroupMsg> {
        match *b.first()? {
            MSG_RECORD => {
                let seq = u64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
                let mut off = 9;
                let mut records = Vec::new();
                while off < b.len() {
                    let (r, used) = LogRecord::decode(&b[off..])?;
                    records.push(r);
                    off += used;
                }
                (!records.is_empty()).then_some(GroupMsg::Record { seq, records })
            }
            MSG_ACK => {
                let body = b.get(1..)?;
                if body.is_empty() || body.len() % 20 != 0 {
                    return None;
                }
                let acks = body
                    .chunks(20)
                    .map(|c| Some((get_member(c)?, u64::from_be_bytes(c[12..20].try_into().ok()?))))
                    .collect::<Option<Vec<_>>>()?;
                Some(GroupMsg::Ack { acks })
            }
            MSG_SNAPSHOT => {
                let to = get_member(b.get(1..)?)?;
                let last = match *b.get(13)? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                let mut off = 14;
                let mut records = Vec::new();
                while off < b.len() {
                    let (r, used) = LogRecord::decode(&b[off..])?;
                    records.push(r);
                    off += used;
                }
                Some(GroupMsg::Snapshot { to, last, records })
            }
            _ => None,
        }
    }
}

/// The messages acknowledging `acks`: one per origin (and per [`MAX_MESSAGE`] bytes), each for
/// its origin only.
fn ack_messages(acks: &mut [(MemberId, u64)]) -> Vec<RepAction> {
    // Stable: each origin's acks stay in its sequence order.
    acks.sort_by_key(|(to, _)| *to);
    let mut out = Vec::new();
    for per_origin in acks.chunk_by(|a, b| a.0 == b.0) {
        let to = per_origin[0].0;
        for c in per_origin.chunks((MAX_MESSAGE - 1) / 20) {
            if let Some(payload) = (GroupMsg::Ack { acks: c.to_vec() }).encode() {
                out.push(RepAction::SendTo { to, payload });
            }
        }
    }
    out
}

/// Connected: the acks' frames, encoded now, to be written by the thread that makes the records
/// durable (the committer) rather than handed back to the replication thread first.
fn direct_acks(out: Option<&group::GroupWriter>, acks: &[(MemberId, u64)]) -> Option<(group::FrameSender, Vec<u8>)> {
    let w = out?;
    if acks.is_empty() {
        return None;
    }
    let msgs: Vec<group::Outgoing> = ack_messages(&mut acks.to_vec())
        .into_iter()
        .filter_map(|a| match a {
            RepAction::SendTo { to, payload } => Some(group::Outgoing { to: vec![to], not_self: false, payload }),
            _ => None,
        })
        .collect();
    let mut frames = Vec::new();
    w.encode(&msgs, &mut frames).ok().map(|()| (w.frame_sender(), frames))
}

/// Why a record was not replicated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepFailure {
    /// No connection to the cluster daemon.
    #[error("not connected to the cluster (lease kept locally only)")]
    NotConnected,
    /// The deadline passed before every peer acknowledged it.
    #[error("peers {0:?} did not acknowledge the lease within the deadline")]
    Timeout(Vec<MemberId>),
    /// The connection to the cluster daemon was lost with the record in flight.
    #[error("cluster connection lost with the lease in flight")]
    Disconnected,
    /// The record could not be encoded.
    #[error("lease record cannot be encoded")]
    Encode,
}

/// Settings of the core.
#[derive(Debug, Clone, Copy)]
pub struct CoreConfig {
    /// How long a record may wait for the peers' acks before it is reported failed (sync mode:
    /// the longest an ACK is held; async mode: the replication window).
    pub ack_deadline: Duration,
    /// How long a joiner waits for its snapshot before serving with what it has.
    pub snapshot_wait: Duration,
    /// How long a member gathers its own records before it multicasts them as one message, and
    /// peers' records after the first one arrives before it persists them as one group commit
    /// acknowledged with one message per origin (zero: each at once). A sync ACK waits at most
    /// twice this much longer; in exchange, at a steady rate the channel messages, the peers'
    /// fdatasyncs, wake-ups and acks are shared by every lease of the window.
    pub gather: Duration,
}

/// Default of [`CoreConfig::gather`].
pub const DEFAULT_GATHER: Duration = Duration::from_millis(3);

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig { ack_deadline: Duration::from_millis(500), snapshot_wait: Duration::from_secs(5), gather: DEFAULT_GATHER }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepAction {
    /// Multicast this payload to the group.
    Multicast(Vec<u8>),
    /// Multicast this payload to every member but this one (it may come back here too: the
    /// core then treats it as the point in the order the record took).
    MulticastOthers(Vec<u8>),
    /// Multicast this payload in the group's order for `to` only (the others may get it too and
    /// ignore it: acks and snapshots name who they are for).
    SendTo {
        /// The member it is for.
        to: MemberId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Persist and publish a peer's record; then, if `ack` is set, call
    /// [`ReplicationCore::applied`] with it.
    Apply {
        /// The record.
        record: LogRecord,
        /// Who to acknowledge: origin and its sequence number.
        ack: Option<(MemberId, u64)>,
    },
    /// The local record `token` is replicated (or failed).
    Complete {
        /// The caller's token.
        token: u64,
        /// Outcome.
        result: Result<(), RepFailure>,
    },
    /// State transfer done: this member may serve.
    Synced {
        /// Leases adopted from the donor.
        adopted: usize,
    },
}

/// Where a state transfer stands at the joiner.
#[derive(Debug, Default)]
struct Transfer {
    /// Addresses a `Record` delivered after the join changed (newer than any snapshot entry).
    touched: HashSet<Ipv4Addr>,
    /// Addresses the snapshot covered so far.
    covered: HashSet<Ipv4Addr>,
    /// Addresses where our entry is newer than the snapshot's.
    newer_here: HashSet<Ipv4Addr>,
    /// Snapshot entries adopted.
    adopted: usize,
}

#[derive(Debug)]
enum SyncState {
    Disconnected,
    Joining,
    Awaiting { since: Instant, donor: MemberId, transfer: Transfer },
    Synced,
}

#[derive(Debug)]
struct Pending {
    token: u64,
    /// `None` until our own record is delivered back (then: the others we wait for).
    waiting: Option<BTreeSet<MemberId>>,
    deadline: Instant,
}

/// Counters of the replication core.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepCounters {
    /// Local records multicast.
    pub sent: u64,
    /// Local records every peer acknowledged.
    pub replicated: u64,
    /// Local records that failed (timeout, disconnected, not connected).
    pub failed: u64,
    /// Peer records applied here.
    pub applied: u64,
    /// Snapshots sent to joiners.
    pub snapshots_sent: u64,
    /// Leases adopted from snapshots.
    pub adopted: u64,
    /// Malformed group messages dropped.
    pub malformed: u64,
    /// Joins that served without a complete snapshot (donor gone or too slow).
    pub snapshot_timeouts: u64,
    /// Records (from peers or snapshots) older than what was held, not applied.
    pub stale: u64,
    /// Leases released or renamed when a merge found one client or one name on two addresses.
    pub conflicts: u64,
}

/// The replication state machine (no I/O; time passed in).
#[derive(Debug)]
pub struct ReplicationCore {
    cfg: CoreConfig,
    me: Option<MemberId>,
    members: Vec<MemberId>,
    /// The newest record per address: a lease or a tombstone.
    table: HashMap<Ipv4Addr, LogRecord>,
    state: SyncState,
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    counters: RepCounters,
}

impl ReplicationCore {
    /// A core whose table starts as `records` (what the local log holds: leases and tombstones,
    /// see [`crate::leases::LeaseLog::snapshot_records`]).
    pub fn new(cfg: CoreConfig, records: impl IntoIterator<Item = LogRecord>) -> Self {
        let mut table: HashMap<Ipv4Addr, LogRecord> = HashMap::new();
        for r in records {
            if table.get(&r.addr()).is_none_or(|cur| r.newer_than(cur)) {
                table.insert(r.addr(), r);
            }
        }
        ReplicationCore {
            cfg,
            me: None,
            members: Vec::new(),
            table,
            state: SyncState::Disconnected,
            next_seq: 1,
            pending: BTreeMap::new(),
            counters: RepCounters::default(),
        }
    }

    /// Counters.
    pub fn counters(&self) -> &RepCounters {
        &self.counters
    }

    /// True once state transfer is over (or was not needed).
    pub fn is_synced(&self) -> bool {
        matches!(self.state, SyncState::Synced)
    }

    /// The group's members as last delivered.
    pub fn members(&self) -> &[MemberId] {
        &self.members
    }

    /// Leases known to the replication layer (local and replicated).
    pub fn table_len(&self) -> usize {
        self.table.values().filter(|r| matches!(r, LogRecord::Upsert(_))).count()
    }

    /// Tombstones held (addresses forgotten and not leased since).
    pub fn tombstones(&self) -> usize {
        self.table.len() - self.table_len()
    }

    /// The newest record held for `addr`.
    pub fn entry(&self, addr: Ipv4Addr) -> Option<&LogRecord> {
        self.table.get(&addr)
    }

    /// Joined the group as `me` (the first view follows).
    pub fn connected(&mut self, me: MemberId) {
        self.me = Some(me);
        self.members.clear();
        self.state = SyncState::Joining;
    }

    /// The connection to the cluster daemon is gone: every record in flight fails.
    pub fn disconnected(&mut self) -> Vec<RepAction> {
        self.me = None;
        self.members.clear();
        self.state = SyncState::Disconnected;
        let out: Vec<RepAction> = std::mem::take(&mut self.pending)
            .into_values()
            .map(|p| RepAction::Complete { token: p.token, result: Err(RepFailure::Disconnected) })
            .collect();
        self.counters.failed += out.len() as u64;
        out
    }

    /// Keep `rec` if it is newer than what the table holds for its address; true if kept.
    fn mirror(&mut self, rec: &LogRecord) -> bool {
        if self.table.get(&rec.addr()).is_some_and(|cur| !rec.newer_than(cur)) {
            return false;
        }
        self.table.insert(rec.addr(), rec.clone());
        true
    }

    /// A lease change made here (already submitted to the local log): multicast it; `token`
    /// completes when the peers hold it durably, or fails.
    pub fn local_record(&mut self, token: u64, rec: LogRecord, now: Instant) -> Vec<RepAction> {
        self.local_records(vec![(token, rec)], now)
    }

    /// Several local changes at once (one message per [`MAX_MESSAGE`] bytes: under load the
    /// channel carries batches, not one message per lease). Records are encoded straight into
    /// the message.
    pub fn local_records(&mut self, batch: Vec<(u64, LogRecord)>, now: Instant) -> Vec<RepAction> {
        let joined = self.me.is_some() && !matches!(self.state, SyncState::Disconnected | SyncState::Joining);
        let mut out = Vec::new();
        let mut msg: Vec<u8> = Vec::new();
        let mut tokens: Vec<u64> = Vec::new();
        for (token, rec) in batch {
            // Kept or not (a peer's newer record may have overtaken it), it goes out: every
            // member compares revisions, so a stale one changes nothing anywhere.
            self.mirror(&rec);
            if !joined {
                self.counters.failed += 1;
                out.push(RepAction::Complete { token, result: Err(RepFailure::NotConnected) });
                continue;
            }
            if msg.is_empty() {
                msg.reserve(MAX_MESSAGE);
                msg.push(MSG_RECORD);
                msg.extend_from_slice(&[0; 8]);
            }
            let before = msg.len();
            if rec.encode(&mut msg).is_err() || msg.len() - before + 9 > MAX_MESSAGE {
                msg.truncate(before);
                self.counters.failed += 1;
                out.push(RepAction::Complete { token, result: Err(RepFailure::Encode) });
                continue;
            }
            if msg.len() > MAX_MESSAGE {
                // Full: this record starts the next message.
                let tail = msg.split_off(before);
                self.send_chunk(&mut msg, &mut tokens, now, &mut out);
                msg.reserve(MAX_MESSAGE);
                msg.push(MSG_RECORD);
                msg.extend_from_slice(&[0; 8]);
                msg.extend_from_slice(&tail);
            }
            tokens.push(token);
        }
        self.send_chunk(&mut msg, &mut tokens, now, &mut out);
        out
    }

    /// Number the records of `msg` (one per token), remember them as pending and send it.
    fn send_chunk(&mut self, msg: &mut Vec<u8>, tokens: &mut Vec<u64>, now: Instant, out: &mut Vec<RepAction>) {
        if tokens.is_empty() {
            msg.clear();
            return;
        }
        let seq = self.next_seq;
        msg[1..9].copy_from_slice(&seq.to_be_bytes());
        let me = self.me;
        let others: BTreeSet<MemberId> = self.members.iter().filter(|m| Some(**m) != me).copied().collect();
        out.push(RepAction::MulticastOthers(std::mem::take(msg)));
        for (i, token) in tokens.drain(..).enumerate() {
            self.counters.sent += 1;
            self.pending.insert(seq + i as u64, Pending { token, waiting: Some(others.clone()), deadline: now + self.cfg.ack_deadline });
            self.next_seq += 1;
            // Nobody else in the group: durable everywhere it has to be.
            self.complete_if_done(seq + i as u64, out);
        }
    }

    /// A peer's record `seq` from `to` is durable here: acknowledge it.
    pub fn applied(&mut self, to: MemberId, seq: u64) -> Vec<RepAction> {
        self.applied_many(vec![(to, seq)])
    }

    /// Several peer records durable here: acknowledge them, one message per origin (and per
    /// [`MAX_MESSAGE`] bytes), each for its origin only.
    pub fn applied_many(&mut self, mut acks: Vec<(MemberId, u64)>) -> Vec<RepAction> {
        if self.me.is_none() {
            return Vec::new();
        }
        ack_messages(&mut acks)
    }

    fn complete_if_done(&mut self, seq: u64, out: &mut Vec<RepAction>) {
        if let Some(p) = self.pending.get(&seq) {
            if p.waiting.as_ref().is_some_and(|w| w.is_empty()) {
                let token = p.token;
                self.pending.remove(&seq);
                self.counters.replicated += 1;
                out.push(RepAction::Complete { token, result: Ok(()) });
            }
        }
    }

    /// A new group view (sorted members).
    pub fn on_view(&mut self, mut members: Vec<MemberId>, now: Instant) -> Vec<RepAction> {
        members.sort();
        members.dedup();
        let Some(me) = self.me else { return Vec::new() };
        let old = std::mem::replace(&mut self.members, members.clone());
        let mut out = Vec::new();
        if matches!(self.state, SyncState::Joining) {
            if !members.contains(&me) {
                // Views before our own join reached us: keep waiting for the one with us.
                return out;
            }
            match members.iter().copied().find(|m| *m != me) {
                None => {
                    self.state = SyncState::Synced;
                    out.push(RepAction::Synced { adopted: 0 });
                }
                Some(donor) => {
                    self.state = SyncState::Awaiting { since: now, donor, transfer: Transfer::default() };
                }
            }
            return out;
        }
        if !old.contains(&me) && members.contains(&me) {
            // Back in the group after being out of it (our node lost quorum, a partition
            // healed): what the others granted meanwhile comes by state transfer, as on a join.
            if let Some(donor) = members.iter().copied().find(|m| *m != me) {
                tracing::info!(%donor, "back in the lease group; taking the lease table again");
                self.state = SyncState::Awaiting { since: now, donor, transfer: Transfer::default() };
                return out;
            }
        }
        let gone: BTreeSet<MemberId> = old.iter().filter(|m| !members.contains(m)).copied().collect();
        if !gone.is_empty() {
            let seqs: Vec<u64> = self.pending.keys().copied().collect();
            for seq in seqs {
                if let Some(w) = self.pending.get_mut(&seq).and_then(|p| p.waiting.as_mut()) {
                    w.retain(|m| !gone.contains(m));
                }
                self.complete_if_done(seq, &mut out);
            }
        }
        if let SyncState::Awaiting { donor, .. } = &self.state {
            if gone.contains(donor) {
                // Our donor vanished mid-transfer: serve with what we have (and what we got).
                tracing::warn!(%donor, "lease snapshot donor left before the transfer ended; serving with the leases held");
                self.counters.snapshot_timeouts += 1;
                out.extend(self.finish_sync(now));
            }
        }
        let joined: Vec<MemberId> = members.iter().filter(|m| !old.contains(m) && **m != me).copied().collect();
        let donor = members.iter().find(|m| old.contains(m)).copied();
        if !joined.is_empty() && donor == Some(me) && self.is_synced() {
            for j in joined {
                out.extend(self.snapshot_for(j));
            }
        }
        out
    }

    fn snapshot_for(&mut self, to: MemberId) -> Vec<RepAction> {
        self.counters.snapshots_sent += 1;
        let mut entries: Vec<&LogRecord> = self.table.values().collect();
        entries.sort_by_key(|r| r.addr());
        let mut out = Vec::new();
        let mut chunk: Vec<LogRecord> = Vec::new();
        let mut size = 14;
        for rec in entries {
            let rec = rec.clone();
            let mut b = Vec::new();
            if rec.encode(&mut b).is_err() || 14 + b.len() > MAX_MESSAGE {
                continue;
            }
            if size + b.len() > MAX_MESSAGE {
                if let Some(payload) = (GroupMsg::Snapshot { to, last: false, records: std::mem::take(&mut chunk) }).encode() {
                    out.push(RepAction::SendTo { to, payload });
                }
                size = 14;
            }
            size += b.len();
            chunk.push(rec);
        }
        if let Some(payload) = (GroupMsg::Snapshot { to, last: true, records: chunk }).encode() {
            out.push(RepAction::SendTo { to, payload });
        }
        out
    }

    fn finish_sync(&mut self, now: Instant) -> Vec<RepAction> {
        let SyncState::Awaiting { transfer, .. } = std::mem::replace(&mut self.state, SyncState::Synced) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        // The merge may leave one client, or one name, on two addresses (both sides decided
        // while apart): the newest decision keeps it. Applied here and sent like our own changes.
        let settled = self.settle_conflicts();
        for r in &settled {
            self.counters.conflicts += 1;
            out.push(RepAction::Apply { record: r.clone(), ack: None });
        }
        // What we hold that the donor did not give us, or hold newer: tell the group. (Sending
        // more than needed is harmless: every member keeps the newer record by revision.)
        let settled_addrs: HashSet<Ipv4Addr> = settled.iter().map(LogRecord::addr).collect();
        let mut mine: Vec<LogRecord> = self
            .table
            .values()
            .filter(|r| {
                let a = r.addr();
                !settled_addrs.contains(&a)
                    && !transfer.touched.contains(&a)
                    && (transfer.newer_here.contains(&a) || !transfer.covered.contains(&a))
            })
            .cloned()
            .collect();
        mine.extend(settled);
        mine.sort_by_key(LogRecord::addr);
        // Sent like local changes, without anyone waiting for them (tokens are the driver's;
        // u64::MAX marks "nobody to tell").
        let batch: Vec<(u64, LogRecord)> = mine.into_iter().map(|r| (u64::MAX, r)).collect();
        self.state = SyncState::Synced;
        for a in self.local_records(batch, now) {
            if let RepAction::MulticastOthers(_) = a {
                out.push(a);
            }
        }
        self.pending.retain(|_, p| p.token != u64::MAX);
        out.push(RepAction::Synced { adopted: transfer.adopted });
        out
    }

    /// Find active leases that share a client or a name and supersede the older ones: an older
    /// lease of a client is released (and loses its name), an older holder of a name loses it.
    /// The new records rank just above both (derived decisions). Returns them, already in the
    /// table.
    fn settle_conflicts(&mut self) -> Vec<LogRecord> {
        use crate::leases::LeaseState;
        let mut active: Vec<Lease> = self
            .table
            .values()
            .filter_map(|r| match r {
                LogRecord::Upsert(l) if l.state == LeaseState::Active => Some(l.clone()),
                _ => None,
            })
            .collect();
        active.sort_by_key(|l| l.addr);
        let mut changed: Vec<LogRecord> = Vec::new();
        // One lease per client: client-id when the client sent one, else the hardware address.
        let client = |l: &Lease| match (&l.client_id, l.hwaddr.is_empty()) {
            (Some(c), _) => Some([&[0u8][..], c].concat()),
            (None, false) => Some([&[1u8][..], &l.hwaddr].concat()),
            (None, true) => None,
        };
        let release = |l: &mut Lease| {
            l.state = LeaseState::Released;
            l.fqdn = None;
            l.hostname = None;
        };
        let still_active = newest_per_key(active, client, release, &mut changed);
        // One address per name, among the leases still active after that.
        let name = |l: &Lease| l.fqdn.as_ref().map(|n| n.to_ascii_lowercase());
        let unname = |l: &mut Lease| {
            l.fqdn = None;
            l.hostname = None;
        };
        newest_per_key(still_active, name, unname, &mut changed);
        for r in &changed {
            self.table.insert(r.addr(), r.clone());
        }
        changed
    }

    /// A group message in the total order.
    pub fn on_deliver(&mut self, from: MemberId, payload: &[u8], now: Instant) -> Vec<RepAction> {
        let Some(me) = self.me else { return Vec::new() };
        let Some(msg) = GroupMsg::decode(payload) else {
            self.counters.malformed += 1;
            return Vec::new();
        };
        let mut out = Vec::new();
        match msg {
            GroupMsg::Record { seq, records } => {
                if from == me {
                    let others: BTreeSet<MemberId> = self.members.iter().filter(|m| **m != me).copied().collect();
                    for i in 0..records.len() as u64 {
                        if let Some(p) = self.pending.get_mut(&(seq + i)) {
                            // Our record came back (a daemon that cannot leave us out): this is
                            // its point in the order. Acks may only come after it, so none is lost.
                            p.waiting = Some(others.clone());
                        }
                        self.complete_if_done(seq + i, &mut out);
                    }
                } else {
                    let mut stale = Vec::new();
                    for (i, record) in records.into_iter().enumerate() {
                        let ack = (from, seq + i as u64);
                        if let SyncState::Awaiting { transfer, .. } = &mut self.state {
                            transfer.touched.insert(record.addr());
                        }
                        if self.mirror(&record) {
                            self.counters.applied += 1;
                            out.push(RepAction::Apply { record, ack: Some(ack) });
                        } else {
                            // We hold a newer decision for that address: nothing to persist,
                            // and the origin need not wait for us.
                            self.counters.stale += 1;
                            stale.push(ack);
                        }
                    }
                    if !stale.is_empty() {
                        out.extend(self.applied_many(stale));
                    }
                }
            }
            GroupMsg::Ack { acks } => {
                for (to, seq) in acks {
                    if to != me {
                        continue;
                    }
                    if let Some(w) = self.pending.get_mut(&seq).and_then(|p| p.waiting.as_mut()) {
                        w.remove(&from);
                    }
                    self.complete_if_done(seq, &mut out);
                }
            }
            GroupMsg::Snapshot { to, last, records } => {
                if to != me {
                    return out;
                }
                let SyncState::Awaiting { transfer, .. } = &mut self.state else { return out };
                let mut apply = Vec::new();
                for r in records {
                    let a = r.addr();
                    transfer.covered.insert(a);
                    if transfer.touched.contains(&a) {
                        continue;
                    }
                    match self.table.get(&a) {
                        Some(cur) if cur == &r => {}
                        Some(cur) if cur.newer_than(&r) => {
                            transfer.newer_here.insert(a);
                            self.counters.stale += 1;
                        }
                        _ => {
                            transfer.adopted += 1;
                            apply.push(r);
                        }
                    }
                }
                for r in apply {
                    self.table.insert(r.addr(), r.clone());
                    self.counters.adopted += 1;
                    out.push(RepAction::Apply { record: r, ack: None });
                }
                if last {
                    out.extend(self.finish_sync(now));
                }
            }
        }
        out
    }

    /// Time passed: records past their deadline fail; a snapshot that never came ends the wait.
    pub fn tick(&mut self, now: Instant) -> Vec<RepAction> {
        let mut out = Vec::new();
        let expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(s, _)| *s).collect();
        for seq in expired {
            if let Some(p) = self.pending.remove(&seq) {
                let missing = p.waiting.map(|w| w.into_iter().collect()).unwrap_or_default();
                self.counters.failed += 1;
                out.push(RepAction::Complete { token: p.token, result: Err(RepFailure::Timeout(missing)) });
            }
        }
        if let SyncState::Awaiting { since, .. } = &self.state {
            if now.duration_since(*since) >= self.cfg.snapshot_wait {
                tracing::warn!("no lease snapshot within {:?}; serving with the leases held", self.cfg.snapshot_wait);
                self.counters.snapshot_timeouts += 1;
                out.extend(self.finish_sync(now));
            }
        }
        out
    }

    /// When [`ReplicationCore::tick`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let p = self.pending.values().map(|p| p.deadline).min();
        let s = match &self.state {
            SyncState::Awaiting { since, .. } => Some(*since + self.cfg.snapshot_wait),
            _ => None,
        };
        match (p, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Keep the newest of the leases (sorted by address) that share a key; each older one is
/// changed by `demote`, ranked just above both (a decision derived from them), and pushed to
/// `changed`. Returns the leases kept (those without a key too), sorted by address.
fn newest_per_key<K: std::hash::Hash + Eq>(
    leases: Vec<Lease>,
    key: impl Fn(&Lease) -> Option<K>,
    demote: impl Fn(&mut Lease),
    changed: &mut Vec<LogRecord>,
) -> Vec<Lease> {
    let mut best: HashMap<K, Lease> = HashMap::new();
    let mut kept = Vec::new();
    for l in leases {
        let Some(k) = key(&l) else {
            kept.push(l);
            continue;
        };
        let Some(other) = best.remove(&k) else {
            best.insert(k, l);
            continue;
        };
        let (win, mut lose) = if LogRecord::Upsert(l.clone()).newer_than(&LogRecord::Upsert(other.clone())) { (l, other) } else { (other, l) };
        lose.rev = lose.rev.max(win.rev).saturating_add(1);
        demote(&mut lose);
        changed.push(LogRecord::Upsert(lose));
        best.insert(k, win);
    }
    kept.extend(best.into_values());
    kept.sort_by_key(|l| l.addr);
    kept
}

// ------------------------------------------------------------------------------------------------
// tokio driver

/// Counters of a running replication driver (shared; read by status).
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// Local records every peer acknowledged.
    pub replicated: AtomicU64,
    /// Local records whose replication failed (served anyway).
    pub failed: AtomicU64,
    /// Peer records applied here.
    pub applied: AtomicU64,
    /// Connections (joins) made to the cluster daemon.
    pub joins: AtomicU64,
    /// Leases adopted by state transfer.
    pub adopted: AtomicU64,
    /// Group members in the current view (0 when not connected).
    pub members: AtomicU64,
}

/// A completion callback of the DHCP driver.
type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A completion that reports failure if it is dropped uncalled (the driver stopped or panicked),
/// so a DHCP reply held for replication is never held forever.
struct DoneGuard(Option<Done>);

impl DoneGuard {
    fn call(mut self, r: Result<(), String>) {
        if let Some(d) = self.0.take() {
            d(r);
        }
    }
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d(Err("replication stopped".into()));
        }
    }
}

enum Cmd {
    Local(LogRecord, Done),
    Attach(ReplicaInput),
    TakeBuffered(oneshot::Sender<Vec<LogRecord>>),
    /// Peers' records durable here: (origin, sequence number) to acknowledge.
    Applied(Vec<(MemberId, u64)>),
    Stop,
}

/// The DHCP driver's [`LeaseReplicator`] backed by the lease group.
pub struct ClusterReplicator {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl LeaseReplicator for ClusterReplicator {
    fn replicate(&self, record: &LogRecord, done: Box<dyn FnOnce(Result<(), String>) + Send>) {
        if let Err(mpsc::error::SendError(Cmd::Local(_, done))) = self.tx.send(Cmd::Local(record.clone(), done)) {
            done(Err("replication stopped".into()));
        }
    }
}

/// A running replication driver.
pub struct ReplicationHandle {
    replicator: Arc<ClusterReplicator>,
    synced: watch::Receiver<bool>,
    /// Counters.
    pub stats: Arc<ReplicationStats>,
    task: Driver,
}

/// Where the driver runs: its own thread (normally) or a task of the caller's runtime.
enum Driver {
    Thread(oneshot::Receiver<()>),
    Task(JoinHandle<()>),
}

impl ReplicationHandle {
    /// The replicator to give the DHCP driver.
    pub fn sink(&self) -> Arc<dyn LeaseReplicator> {
        self.replicator.clone()
    }

    /// Wait until state transfer is over, at most `within`; false if it is not.
    pub async fn wait_synced(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.synced.wait_for(|s| *s)).await.is_ok_and(|r| r.is_ok())
    }

    /// Peer records (and snapshot entries) received before a DHCP driver was attached, in
    /// order. They are already in the lease log and acknowledged (the driver persists them as
    /// they come): the caller only merges them into the table it starts the DHCP core with.
    pub async fn take_buffered(&self) -> Vec<LogRecord> {
        let (tx, rx) = oneshot::channel();
        if self.replicator.tx.send(Cmd::TakeBuffered(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// From now on peer records go to `input` (the ones received since `take_buffered` first).
    pub fn attach(&self, input: ReplicaInput) {
        let _ = self.replicator.tx.send(Cmd::Attach(input));
    }

    /// Stop the driver (leaves the group).
    pub async fn shutdown(self) {
        let _ = self.replicator.tx.send(Cmd::Stop);
        match self.task {
            Driver::Thread(ended) => {
                let _ = ended.await;
            }
            Driver::Task(t) => {
                let _ = t.await;
            }
        }
    }
}

/// Most commands taken in one burst (bounds the latency of the first one).
const MAX_BURST: usize = 512;

/// How often a lost cluster connection is retried.
const RECONNECT: Duration = Duration::from_secs(1);

/// Start replicating through the cluster daemon at `socket`, group `group`. The initial table is
/// what the lease log behind `committer` holds (leases and tombstones); until a DHCP driver is
/// attached, peer records are persisted through `committer` and acknowledged as they come.
pub fn spawn(socket: PathBuf, group: String, cfg: CoreConfig, committer: Arc<GroupCommitter>) -> ReplicationHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (synced_tx, synced) = watch::channel(false);
    let stats = Arc::new(ReplicationStats::default());
    let replicator = Arc::new(ClusterReplicator { tx: tx.clone() });
    let task_stats = stats.clone();
    let driver = async move {
        let c = committer.clone();
        let records = match tokio::task::spawn_blocking(move || c.snapshot_records()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the lease log for replication; starting from an empty table");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease log read task failed; starting from an empty table");
                Vec::new()
            }
        };
        let core = ReplicationCore::new(cfg, records);
        let io = Io {
            done: Default::default(),
            next_token: 0,
            input: None,
            buffered: Vec::new(),
            committer,
            cmd_tx: tx,
            synced: synced_tx,
            stats: task_stats,
            gather_for: cfg.gather,
            gathered: None,
            local_gathered: None,
        };
        run(socket, group, core, rx, io).await
    };
    // Its own thread with a current-thread runtime (as the DHCP driver): every wake-up of the
    // replication path (a local record, a delivered burst, a commit's ack) lands on one thread,
    // not on whichever worker of the shared runtime is free, which then wakes another to steal.
    let (ended_tx, ended_rx) = oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let task = match rt {
        Ok(rt) => {
            let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(driver)));
            let on_thread = slot.clone();
            let spawned = std::thread::Builder::new().name("lease-repl".into()).spawn(move || {
                if let Some(d) = on_thread.lock().ok().and_then(|mut s| s.take()) {
                    rt.block_on(d);
                }
                let _ = ended_tx.send(());
            });
            match spawned {
                Ok(_) => Driver::Thread(ended_rx),
                Err(e) => {
                    tracing::warn!(error = %e, "no thread for lease replication; running it on the shared runtime");
                    match slot.lock().ok().and_then(|mut s| s.take()) {
                        Some(d) => Driver::Task(tokio::spawn(d)),
                        None => Driver::Thread(ended_rx),
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no runtime for lease replication's thread; running it on the shared runtime");
            Driver::Task(tokio::spawn(driver))
        }
    };
    ReplicationHandle { replicator, synced, stats, task }
}

struct Io {
    done: std::collections::HashMap<u64, DoneGuard>,
    next_token: u64,
    input: Option<ReplicaInput>,
    /// Peer records persisted (and acked) before a DHCP driver was attached.
    buffered: Vec<LogRecord>,
    committer: Arc<GroupCommitter>,
    cmd_tx: mpsc::UnboundedSender<Cmd>,
    synced: watch::Sender<bool>,
    stats: Arc<ReplicationStats>,
    /// [`CoreConfig::gather`].
    gather_for: Duration,
    /// Peers' records (and their acks) waiting for the gather window to end.
    gathered: Option<Gathered>,
    /// Local records (with their tokens) waiting for the gather window to end.
    local_gathered: Option<(tokio::time::Instant, Vec<(u64, LogRecord)>)>,
}

/// Peers' records gathered for one group commit.
struct Gathered {
    until: tokio::time::Instant,
    records: Vec<LogRecord>,
    acks: Vec<(MemberId, u64)>,
}

/// Most peer records gathered before they are persisted without waiting for the window's end.
const GATHER_MAX: usize = 1024;

impl Io {
    /// When the gathered records (peers' or local) are due (`None`: nothing gathered).
    fn gather_due(&self) -> Option<tokio::time::Instant> {
        match (self.gathered.as_ref().map(|g| g.until), self.local_gathered.as_ref().map(|g| g.0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Send the gathered local records now (`w` None: the connection is gone; they are pending
    /// and fail with it).
    async fn flush_local(&mut self, core: &mut ReplicationCore, w: Option<&mut group::GroupWriter>) -> Result<(), group::GroupError> {
        if let Some((_, batch)) = self.local_gathered.take() {
            let acts = core.local_records(batch, Instant::now());
            self.apply(acts, w).await?;
        }
        Ok(())
    }

    /// Persist the gathered records now; acks go out on `out` from the committing thread.
    async fn flush_gathered(&mut self, out: Option<&group::GroupWriter>) {
        if let Some(g) = self.gathered.take() {
            let direct = direct_acks(out, &g.acks);
            self.persist(g.records, g.acks, direct).await;
        }
    }

    /// Apply actions; messages go to `out` (None: not connected, dropped). The peers' records
    /// among them go to the DHCP driver as one batch (one group commit, one acknowledgement per
    /// origin once it is durable).
    async fn apply(&mut self, acts: Vec<RepAction>, out: Option<&mut group::GroupWriter>) -> Result<(), group::GroupError> {
        let was_synced = *self.synced.borrow();
        // Messages leave in one write after the rest is done (their order among themselves
        // is kept; nothing else here depends on them having been sent).
        let mut msgs: Vec<group::Outgoing> = Vec::new();
        let mut records: Vec<LogRecord> = Vec::new();
        let mut acks: Vec<(MemberId, u64)> = Vec::new();
        for a in acts {
            match a {
                RepAction::Multicast(payload) => msgs.push(group::Outgoing { to: Vec::new(), not_self: false, payload }),
                RepAction::MulticastOthers(payload) => msgs.push(group::Outgoing { to: Vec::new(), not_self: true, payload }),
                RepAction::SendTo { to, payload } => msgs.push(group::Outgoing { to: vec![to], not_self: false, payload }),
                RepAction::Apply { record, ack } => {
                    records.push(record);
                    acks.extend(ack);
                }
                RepAction::Complete { token, result } => {
                    match &result {
                        Ok(()) => self.stats.replicated.fetch_add(1, Ordering::Relaxed),
                        Err(_) => self.stats.failed.fetch_add(1, Ordering::Relaxed),
                    };
                    if let Some(d) = self.done.remove(&token) {
                        d.call(result.map_err(|e| e.to_string()));
                    }
                }
                RepAction::Synced { adopted } => {
                    self.stats.adopted.fetch_add(adopted as u64, Ordering::Relaxed);
                    tracing::info!(adopted, "lease state transfer done");
                    let _ = self.synced.send(true);
                }
            }
        }
        if !records.is_empty() {
            // Only once synced: during a state transfer records are persisted as they come, so
            // it ends with all of them in the log.
            match (&out, self.gather_for.is_zero() || !was_synced) {
                (Some(_), false) => {
                    // Gathered for up to `gather_for` (see CoreConfig::gather); the run loop
                    // persists them when the window ends.
                    let g = self.gathered.get_or_insert_with(|| Gathered {
                        until: tokio::time::Instant::now() + self.gather_for,
                        records: Vec::new(),
                        acks: Vec::new(),
                    });
                    g.records.extend(records);
                    g.acks.extend(acks);
                    if g.records.len() >= GATHER_MAX {
                        self.flush_gathered(out.as_deref()).await;
                    }
                }
                _ => {
                    let direct = direct_acks(out.as_deref(), &acks);
                    self.persist(records, acks, direct).await;
                }
            }
        }
        match out {
            Some(w) => w.send_many(&msgs).await,
            None => Ok(()),
        }
    }

    /// Persist peers' records (through the DHCP driver once attached, so its table and the DNS
    /// follow) and acknowledge `acks` once they are durable: with `direct` (the acks' frames
    /// and the connection), written by whichever thread completes the commit; else through this
    /// driver.
    async fn persist(&mut self, records: Vec<LogRecord>, acks: Vec<(MemberId, u64)>, direct: Option<(group::FrameSender, Vec<u8>)>) {
        self.stats.applied.fetch_add(records.len() as u64, Ordering::Relaxed);
        let tx = self.cmd_tx.clone();
        let ack = move |r: Result<(), String>| match r {
            Ok(()) => match direct {
                Some((sender, frames)) => sender.send(&frames),
                None if !acks.is_empty() => {
                    let _ = tx.send(Cmd::Applied(acks));
                }
                None => {}
            },
            Err(e) => tracing::error!(error = %e, "replicated leases not durable here; not acknowledged"),
        };
        match &self.input {
            Some(input) => {
                if input.apply_batch(records, Some(Box::new(ack))).await.is_err() {
                    tracing::warn!("DHCP driver stopped; replicated leases dropped");
                }
            }
            None => {
                // No DHCP driver yet (start-up state transfer): persist them here and ack them
                // as soon as they are durable, not after the whole snapshot.
                self.committer.submit(records.clone(), Box::new(move |r| ack(r.map_err(|e| e.to_string()))));
                self.buffered.extend(records);
            }
        }
    }

    /// A burst of commands: local records go out as one batch and acks as one message (a busy
    /// server's group commit completes many at once); returns true on Stop.
    async fn commands(&mut self, core: &mut ReplicationCore, cmds: Vec<Cmd>, mut w: Option<&mut group::GroupWriter>) -> Result<bool, group::GroupError> {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut stop = false;
        for c in cmds {
            match c {
                Cmd::Local(rec, done) => {
                    let token = self.next_token;
                    self.next_token += 1;
                    self.done.insert(token, DoneGuard(Some(done)));
                    batch.push((token, rec));
                }
                Cmd::Applied(a) => acks.extend(a),
                other => stop |= self.command(core, other, w.as_deref_mut()).await?,
            }
        }
        if !batch.is_empty() {
            if w.is_some() && !self.gather_for.is_zero() && core.is_synced() {
                // Gathered like the peers' records (CoreConfig::gather): the run loop sends
                // them as one message when the window ends.
                let g = self.local_gathered.get_or_insert_with(|| (tokio::time::Instant::now() + self.gather_for, Vec::new()));
                g.1.extend(batch);
                if g.1.len() >= GATHER_MAX {
                    self.flush_local(core, w.as_deref_mut()).await?;
                }
            } else {
                let acts = core.local_records(batch, Instant::now());
                self.apply(acts, w.as_deref_mut()).await?;
            }
        }
        if !acks.is_empty() {
            let acts = core.applied_many(acks);
            self.apply(acts, w).await?;
        }
        Ok(stop)
    }

    /// Commands that need no connection; returns true on Stop.
    async fn command(&mut self, core: &mut ReplicationCore, cmd: Cmd, w: Option<&mut group::GroupWriter>) -> Result<bool, group::GroupError> {
        match cmd {
            Cmd::Local(rec, done) => {
                let token = self.next_token;
                self.next_token += 1;
                self.done.insert(token, DoneGuard(Some(done)));
                let acts = core.local_record(token, rec, Instant::now());
                self.apply(acts, w).await?;
            }
            Cmd::Applied(acks) => {
                let acts = core.applied_many(acks);
                self.apply(acts, w).await?;
            }
            Cmd::Attach(input) => {
                // Received after the caller took the buffer: the DHCP core has not seen them
                // (they are durable and acked already).
                let buffered = std::mem::take(&mut self.buffered);
                if !buffered.is_empty() {
                    let _ = input.apply_batch(buffered, None).await;
                }
                self.input = Some(input);
            }
            Cmd::TakeBuffered(tx) => {
                let _ = tx.send(std::mem::take(&mut self.buffered));
            }
            Cmd::Stop => return Ok(true),
        }
        Ok(false)
    }
}

async fn run(
    socket: PathBuf,
    group_name: String,
    mut core: ReplicationCore,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    mut io: Io,
) {
    let mut warned = false;
    loop {
        let (me, mut reader, mut writer) = match group::join(&socket, &group_name).await {
            Ok(x) => x,
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "cannot join the lease group; leases stay local until the cluster daemon answers");
                    warned = true;
                }
                let retry = tokio::time::sleep(RECONNECT);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = &mut retry => break,
                        c = rx.recv() => match c {
                            None => return,
                            Some(c) => if let Ok(true) = io.command(&mut core, c, None).await { return },
                        },
                    }
                }
                continue;
            }
        };
        warned = false;
        io.stats.joins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(member = %me, group = %group_name, "joined the lease group");
        core.connected(me);
        let mut events: Vec<GroupEvent> = Vec::new();
        let res: Result<bool, group::GroupError> = async {
            loop {
                let wake = core.poll_timeout().map(tokio::time::Instant::from_std);
                tokio::select! {
                    // Cancel-safe: a half-read frame stays in the reader's buffer. Everything
                    // that arrived is handled in one turn: the peers' records of the whole burst
                    // become one batch for the DHCP driver, the replies one write.
                    more = reader.next_batch(&mut events) => {
                        if !more? {
                            return Ok(false);
                        }
                        let now = Instant::now();
                        let mut acts = Vec::new();
                        for ev in events.drain(..) {
                            match ev {
                                GroupEvent::View(m) => {
                                    io.stats.members.store(m.len() as u64, Ordering::Relaxed);
                                    tracing::info!(members = ?m.iter().map(|x| x.to_string()).collect::<Vec<_>>(), "lease group view");
                                    acts.extend(core.on_view(m, now));
                                }
                                GroupEvent::Deliver { from, payload } => acts.extend(core.on_deliver(from, &payload, now)),
                            }
                        }
                        io.apply(acts, Some(&mut writer)).await?;
                    }
                    c = rx.recv() => match c {
                        None => return Ok(true),
                        Some(c) => {
                            let mut cmds = vec![c];
                            while cmds.len() < MAX_BURST {
                                match rx.try_recv() {
                                    Ok(c) => cmds.push(c),
                                    Err(_) => break,
                                }
                            }
                            if io.commands(&mut core, cmds, Some(&mut writer)).await? { return Ok(true) }
                        }
                    },
                    _ = sleep_until_opt(wake) => {
                        let acts = core.tick(Instant::now());
                        io.apply(acts, Some(&mut writer)).await?;
                    }
                    // Acks another thread queued and the socket did not take at once.
                    _ = writer.kicked() => writer.drain().await?,
                    // The gather window of peers' records ended.
                    _ = sleep_until_opt(io.gather_due()) => {
                        io.flush_gathered(Some(&writer)).await;
                        io.flush_local(&mut core, Some(&mut writer)).await?;
                    }
                }
            }
        }
        .await;
        io.stats.members.store(0, Ordering::Relaxed);
        // Records gathered but not yet persisted are persisted all the same (the table holds
        // them already); their acks go nowhere (this member left the group).
        io.flush_gathered(None).await;
        // Gathered local records become pending and fail with the connection, as sent ones do.
        let _ = io.flush_local(&mut core, None).await;
        let acts = core.disconnected();
        let _ = io.apply(acts, None).await;
        match res {
            Ok(true) => return,
            Ok(false) => tracing::warn!("cluster daemon closed the lease group connection; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "lease group connection failed; reconnecting"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
