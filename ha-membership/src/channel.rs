//! The ordered cluster channel (Corosync CPG's contract): every member of a view delivers the view's
//! messages in the same order, and a view change is delivered at the same point of that order by
//! every member that moves to the same next view.
//!
//! # Lifecycle
//! ```text
//!  Open --ack a proposal / propose--> Blocked --install (cut reached)--> Open in the new view
//!                                        |
//!                                        +--install, behind the cut--> Flushing --delivered to cut--> Open
//! ```
//! - Open: `broadcast` puts a message in the outbox; it is submitted to the view's sequencer (the
//!   coordinator), which numbers it, delivers it and sends it to every member. Members deliver in
//!   number order, buffer what comes early and nack gaps (they learn the sequencer's top from its
//!   heartbeat). Submissions are resent until the origin delivers its own message, and the sequencer
//!   keeps per-origin FIFO order.
//! - Blocked: a member that acks a view proposal reports how far it delivered and stops delivering and
//!   sequencing, so that report stays true. It never unblocks on its own, only by installing a view.
//! - Flushing: the install carries, for each previous view of the new members, a cut (the highest
//!   delivered among them) and a donor that has it; a member behind its cut fetches the rest from the
//!   donor, delivers exactly up to the cut, then installs. Messages above every survivor's cut were
//!   delivered by nobody who moves on; their origins resubmit them in the new view.
//! - Exactly once: an origin resubmits what it has not delivered itself, so a member on the other
//!   side of a partition may see a message again in a later view; each node delivers a given
//!   (origin, origin boot, origin_seq) at most once and silently skips the repeat (its sequence
//!   number is then absent from that node's deliveries). Origins submit in FIFO order, so the
//!   highest origin_seq delivered per origin life is enough to recognise repeats.

use crate::engine::Event;
use crate::wire::{Cut, MAX_PAYLOAD, Member, Message, NodeId, ViewId};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Most messages waiting in one node's outbox.
pub const MAX_OUTBOX: usize = 1024;
/// Most delivered messages kept for retransmission in one view.
pub const MAX_LOG: usize = 8192;
/// Most messages retransmitted for one nack.
const MAX_RETRANSMIT: u64 = 64;

/// Why a message cannot be broadcast now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Larger than one datagram can carry; retrying will not help.
    #[error("message of {0} bytes exceeds the channel maximum of {MAX_PAYLOAD}")]
    TooLarge(usize),
    /// The outbox is full; retry after some messages are delivered.
    #[error("channel outbox full ({MAX_OUTBOX} messages); retry later")]
    Full,
    /// This node has left the cluster.
    #[error("this node has left the cluster")]
    Left,
}

#[derive(Debug, Clone)]
struct Logged {
    origin: NodeId,
    origin_seq: u64,
    payload: Bytes,
}

#[derive(Debug, Clone)]
struct Flush {
    view: ViewId,
    members: Vec<Member>,
    cut: u64,
    donor: NodeId,
}

#[derive(Debug, Clone)]
struct Outgoing {
    payload: Bytes,
    last_sent: Option<Instant>,
}

/// Messages to send and events to emit, collected by the channel for the engine.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub sends: Vec<(NodeId, Message)>,
    pub events: Vec<Event>,
}

/// Channel state of one node.
#[derive(Debug, Default)]
pub(crate) struct Channel {
    view: Option<ViewId>,
    members: Vec<NodeId>,
    me: NodeId,
    delivered: u64,
    log: BTreeMap<u64, Logged>,
    ahead: BTreeMap<u64, Logged>,
    prev: Option<(ViewId, BTreeMap<u64, Logged>)>,
    blocked: bool,
    origin_last: BTreeMap<NodeId, u64>,
    next_origin_seq: u64,
    outbox: BTreeMap<u64, Outgoing>,
    flush: Option<Flush>,
    flush_done: Option<(ViewId, Vec<Member>)>,
    sequencer_top: u64,
    peer_delivered: BTreeMap<NodeId, u64>,
    /// Boot of each member of the current view (identifies the origin's life).
    member_boots: BTreeMap<NodeId, u64>,
    /// Highest origin_seq delivered here per origin, with the origin's boot.
    origin_delivered: BTreeMap<NodeId, (u64, u64)>,
    /// Nacks sent, to alternate their target.
    nack_round: u64,
}

impl Channel {
    pub(crate) fn new(me: NodeId) -> Self {
        Channel { me, next_origin_seq: 1, ..Default::default() }
    }

    fn sequencer(&self) -> Option<NodeId> {
        self.view.map(|v| v.coordinator)
    }

    fn is_sequencer(&self) -> bool {
        self.sequencer() == Some(self.me)
    }

    /// Highest sequence number delivered in the current view.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Messages waiting in the outbox.
    pub(crate) fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Whether delivery is stopped for a view change.
    pub(crate) fn blocked(&self) -> bool {
        self.blocked
    }

    /// Queue a message; returns its per-origin number.
    pub(crate) fn broadcast(&mut self, payload: Bytes) -> Result<u64, ChannelError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(ChannelError::TooLarge(payload.len()));
        }
        if self.outbox.len() >= MAX_OUTBOX {
            return Err(ChannelError::Full);
        }
        let n = self.next_origin_seq;
        self.next_origin_seq += 1;
        self.outbox.insert(n, Outgoing { payload, last_sent: None });
        Ok(n)
    }

    /// Stop delivering and sequencing: this node acked (or made) a view proposal.
    pub(crate) fn block(&mut self) {
        self.blocked = true;
    }

    /// What an ack reports: the current view and how far it was delivered.
    pub(crate) fn ack_info(&self) -> (Option<ViewId>, u64) {
        (self.view, self.delivered)
    }

    fn deliver(&mut self, seq: u64, m: Logged, out: &mut Out) {
        let Some(view) = self.view else { return };
        self.delivered = seq;
        if m.origin == self.me {
            self.outbox.remove(&m.origin_seq);
        }
        let boot = self.member_boots.get(&m.origin).copied().unwrap_or(0);
        let repeat = self
            .origin_delivered
            .get(&m.origin)
            .is_some_and(|&(b, max)| b == boot && m.origin_seq <= max);
        if repeat {
            self.log.insert(seq, m);
            return;
        }
        self.origin_delivered.insert(m.origin, (boot, m.origin_seq));
        out.events.push(Event::Delivered {
            view,
            seq,
            origin: m.origin,
            origin_seq: m.origin_seq,
            payload: m.payload.clone(),
        });
        self.log.insert(seq, m);
    }

    fn limit(&self) -> u64 {
        match &self.flush {
            Some(f) => f.cut,
            None if self.blocked => self.delivered,
            None => u64::MAX,
        }
    }

    fn try_deliver(&mut self, out: &mut Out) {
        let limit = self.limit();
        while self.delivered < limit {
            let next = self.delivered + 1;
            let Some(m) = self.ahead.remove(&next) else { break };
            self.deliver(next, m, out);
        }
        // Drop anything the limit makes undeliverable in this view, and stale entries.
        let d = self.delivered;
        self.ahead.retain(|&s, _| s > d);
        if let Some(f) = &self.flush
            && self.delivered >= f.cut
        {
            self.flush_done = Some((f.view, f.members.clone()));
            self.flush = None;
        }
    }

    /// Number a message as sequencer, deliver it here and send it to the members.
    fn sequence(&mut self, origin: NodeId, origin_seq: u64, payload: Bytes, out: &mut Out) -> bool {
        let Some(view) = self.view else { return false };
        if self.blocked || !self.is_sequencer() || self.log.len() >= MAX_LOG {
            return false;
        }
        let seq = self.delivered + 1;
        self.origin_last.insert(origin, origin_seq);
        for &m in &self.members {
            if m != self.me {
                out.sends.push((
                    m,
                    Message::Data { view, seq, origin, origin_seq, payload: payload.clone() },
                ));
            }
        }
        self.deliver(seq, Logged { origin, origin_seq, payload }, out);
        true
    }

    /// Submit (or, as sequencer, number) what the outbox holds.
    pub(crate) fn pump(&mut self, now: Instant, resend_after: Duration, out: &mut Out) {
        let (Some(view), Some(seq_node)) = (self.view, self.sequencer()) else { return };
        if self.blocked {
            return;
        }
        if self.is_sequencer() {
            let ready: Vec<(u64, Bytes)> =
                self.outbox.iter().map(|(n, o)| (*n, o.payload.clone())).collect();
            for (n, p) in ready {
                if !self.sequence(self.me, n, p, out) {
                    break;
                }
            }
            return;
        }
        let Some(&oldest) = self.outbox.keys().next() else { return };
        let mut sent = 0;
        for (n, o) in self.outbox.iter_mut() {
            if sent >= 64 {
                break;
            }
            if o.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= resend_after) {
                o.last_sent = Some(now);
                sent += 1;
                out.sends.push((
                    seq_node,
                    Message::Submit { view, origin_seq: *n, oldest, payload: o.payload.clone() },
                ));
            }
        }
    }

    pub(crate) fn on_submit(
        &mut self,
        from: NodeId,
        view: ViewId,
        origin_seq: u64,
        oldest: u64,
        payload: Bytes,
        out: &mut Out,
    ) {
        if self.view != Some(view) || !self.is_sequencer() || !self.members.contains(&from) {
            return;
        }
        let last = *self.origin_last.entry(from).or_insert(oldest.saturating_sub(1));
        if Some(origin_seq) == last.checked_add(1) {
            self.sequence(from, origin_seq, payload, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_data(
        &mut self,
        view: ViewId,
        seq: u64,
        origin: NodeId,
        origin_seq: u64,
        payload: Bytes,
        out: &mut Out,
    ) {
        if self.view != Some(view) || seq <= self.delivered || seq == 0 {
            return;
        }
        if self.ahead.len() >= MAX_LOG && !self.ahead.contains_key(&seq) {
            return;
        }
        self.ahead.insert(seq, Logged { origin, origin_seq, payload });
        self.sequencer_top = self.sequencer_top.max(seq);
        self.try_deliver(out);
    }

    pub(crate) fn on_nack(&mut self, from: NodeId, view: ViewId, lo: u64, hi: u64, out: &mut Out) {
        let log = if self.view == Some(view) {
            &self.log
        } else if let Some((_, log)) = self.prev.as_ref().filter(|(v, _)| *v == view) {
            log
        } else {
            return;
        };
        let hi = hi.min(lo.saturating_add(MAX_RETRANSMIT - 1));
        for (&seq, m) in log.range(lo..=hi) {
            out.sends.push((
                from,
                Message::Data {
                    view,
                    seq,
                    origin: m.origin,
                    origin_seq: m.origin_seq,
                    payload: m.payload.clone(),
                },
            ));
        }
    }

    /// A heartbeat told how far `from` got in `view` (for any member, a lower bound of the
    /// sequencer's top: this node may be cut off from the sequencer but not from the others).
    pub(crate) fn on_heartbeat(&mut self, from: NodeId, view: Option<ViewId>, delivered: u64) {
        if view.is_none() || view != self.view || !self.members.contains(&from) {
            return;
        }
        self.peer_delivered.insert(from, delivered);
        self.sequencer_top = self.sequencer_top.max(delivered);
    }

    /// Periodic work: nack gaps, resubmit, trim the log to what every member delivered.
    pub(crate) fn tick(&mut self, now: Instant, resend_after: Duration, out: &mut Out) {
        let Some(view) = self.view else { return };
        let limit = self.limit();
        let top = self.sequencer_top.max(self.ahead.keys().next_back().copied().unwrap_or(0));
        let want = top.min(limit);
        if want > self.delivered {
            self.nack_round = self.nack_round.wrapping_add(1);
            // Every other nack goes to the member that got furthest, in case the path from the
            // sequencer to this node is what is broken.
            let ahead = self
                .peer_delivered
                .iter()
                .filter(|(n, d)| **n != self.me && **d > self.delivered)
                .max_by_key(|(_, d)| **d)
                .map(|(n, _)| *n);
            let source = match &self.flush {
                Some(f) => Some(f.donor),
                None if self.nack_round & 1 == 0 && ahead.is_some() => ahead,
                None => self.sequencer(),
            };
            if let Some(s) = source.filter(|s| *s != self.me) {
                out.sends.push((s, Message::Nack { view, from: self.delivered + 1, to: want }));
            }
        }
        self.pump(now, resend_after, out);
        let stable = self
            .members
            .iter()
            .filter(|m| **m != self.me)
            .map(|m| self.peer_delivered.get(m).copied().unwrap_or(0))
            .min()
            .unwrap_or(self.delivered)
            .min(self.delivered);
        while self.log.first_key_value().is_some_and(|(s, _)| *s <= stable) {
            self.log.pop_first();
        }
    }

    /// An install arrived: the cut for our current view, or `None` when this view needs no flush.
    /// Returns true when the new view can be installed at once.
    pub(crate) fn begin_install(
        &mut self,
        view: ViewId,
        members: &[Member],
        cuts: &[Cut],
        out: &mut Out,
    ) -> bool {
        let Some(cur) = self.view else { return true };
        let Some(cut) = cuts.iter().find(|c| c.view == cur) else { return true };
        if cut.seq <= self.delivered {
            if cut.seq < self.delivered {
                tracing::error!(%cur, cut = cut.seq, delivered = self.delivered, "delivered past the flush cut");
            }
            return true;
        }
        self.blocked = true;
        self.flush = Some(Flush { view, members: members.to_vec(), cut: cut.seq, donor: cut.donor });
        self.flush_done = None;
        self.try_deliver(out);
        if self.flush_done.take().is_some() {
            return true;
        }
        if cut.donor != self.me {
            out.sends.push((cut.donor, Message::Nack { view: cur, from: self.delivered + 1, to: cut.seq }));
        }
        false
    }

    /// The view a flush in progress leads to.
    pub(crate) fn flush_target(&self) -> Option<ViewId> {
        self.flush.as_ref().map(|f| f.view)
    }

    /// Give up a flush (its install became void); stay blocked where delivery stopped.
    pub(crate) fn cancel_flush(&mut self) {
        self.flush = None;
        self.flush_done = None;
    }

    /// A flush finished: the view to install now.
    pub(crate) fn take_flush_done(&mut self) -> Option<(ViewId, Vec<Member>)> {
        self.flush_done.take()
    }

    /// Switch to a newly installed view.
    pub(crate) fn installed(&mut self, view: ViewId, members: &[Member]) {
        if let Some(cur) = self.view {
            self.prev = Some((cur, std::mem::take(&mut self.log)));
        }
        self.view = Some(view);
        self.members = members.iter().map(|m| m.node).collect();
        self.member_boots = members.iter().map(|m| (m.node, m.boot)).collect();
        self.delivered = 0;
        self.ahead.clear();
        self.blocked = false;
        self.flush = None;
        self.flush_done = None;
        self.origin_last.clear();
        self.sequencer_top = 0;
        self.peer_delivered.clear();
        for o in self.outbox.values_mut() {
            o.last_sent = None;
        }
    }

    /// Cuts for a new view from the members' acks: per previous view, the highest delivered and who has it.
    pub(crate) fn cuts(acks: &BTreeMap<NodeId, (Option<ViewId>, u64)>) -> Vec<Cut> {
        let mut best: BTreeMap<ViewId, (u64, NodeId)> = BTreeMap::new();
        for (&node, &(prev, delivered)) in acks {
            let Some(v) = prev else { continue };
            let e = best.entry(v).or_insert((delivered, node));
            if delivered > e.0 {
                *e = (delivered, node);
            }
        }
        best.into_iter()
            .filter(|(_, (seq, _))| *seq > 0)
            .map(|(view, (seq, donor))| Cut { view, seq, donor })
            .collect()
    }
}
