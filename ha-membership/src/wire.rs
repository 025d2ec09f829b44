//! The membership datagram format: one fixed header, one typed body, then the MAC (see `auth`).
//!
//! ```text
//!  0      2   3    4          8         12              20              28
//!  +------+---+----+----------+---------+---------------+---------------+-------- ... --------+--------+
//!  | "HS" |ver|type|cluster id| sender  | sender boot   | sender seq    | body (by type)       | MAC 32 |
//!  +------+---+----+----------+---------+---------------+---------------+-------- ... --------+--------+
//! ```
//!
//! All integers are big-endian. `boot` is the sender's boot epoch (strictly larger after every restart);
//! `seq` counts the sender's datagrams within that boot. Together they let a receiver drop replays.
//! Parsing is explicit and bounded: every length is checked against the remaining bytes and against
//! [`MAX_DATAGRAM`], and no input can make it panic or allocate more than the datagram's size.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Two magic bytes that open every hastack membership datagram.
pub const MAGIC: [u8; 2] = *b"HS";
/// The wire format version this code speaks.
pub const VERSION: u8 = 3;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 28;
/// Size of the trailing MAC in bytes.
pub const MAC_LEN: usize = 32;
/// Largest datagram sent or accepted (fits one Ethernet frame with IPv6 + UDP headers).
pub const MAX_DATAGRAM: usize = 1400;
/// Largest member list a view message may carry.
pub const MAX_MEMBERS: usize = 32;
/// Largest number of flush cuts a view install may carry (one per previous view of its members).
pub const MAX_CUTS: usize = 16;
/// Largest ordered-channel payload that still fits a datagram.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN - MAC_LEN - 20 - 8 - 4 - 8 - 2;

/// A node's id from the static node list (Corosync's `nodeid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Delegate so width and alignment flags work in tables.
        fmt::Display::fmt(&self.0, f)
    }
}

/// The identity of an agreed view (Corosync's ring id): unique for ever, ordered by epoch.
///
/// The coordinator's boot epoch is part of the id so that a coordinator that restarts and reuses an
/// epoch number can never create a second, different view under an id some stale node still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct ViewId {
    /// Monotonic view number; a member only ever installs views with a larger epoch.
    pub epoch: u64,
    /// The node that proposed and installed this view.
    pub coordinator: NodeId,
    /// The coordinator's boot epoch when it proposed the view.
    pub coordinator_boot: u64,
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.coordinator, self.epoch)
    }
}

/// One member of a view: a node in one particular life (boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Member {
    /// The node's id.
    pub node: NodeId,
    /// The node's boot epoch; a restarted node is a different member.
    pub boot: u64,
}

/// The fixed part every datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Which cluster the sender belongs to (datagrams of other clusters are dropped).
    pub cluster_id: u32,
    /// The sending node.
    pub sender: NodeId,
    /// The sender's boot epoch.
    pub boot: u64,
    /// The sender's datagram counter within its boot.
    pub seq: u64,
}

/// Where the members coming from one previous view must stop delivering before the next view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cut {
    /// The previous view.
    pub view: ViewId,
    /// Deliver its messages up to and including this sequence number, no further.
    pub seq: u64,
    /// A member that delivered up to `seq` and can retransmit what others miss.
    pub donor: NodeId,
}

/// The typed body of a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Periodic liveness signal sent on every link: the sender's view, SWIM incarnation, and how far it
    /// delivered (or, for the sequencer, numbered) that view's ordered channel.
    /// `blocked` says the sender acked a view proposal and waits for its install. `round` numbers
    /// the sender's heartbeat rounds (one per interval, the same on every link and to every peer);
    /// `echo`, when not 0, is the latest round the sender received from the recipient and grants the
    /// recipient the sender's vote in `view` for a vote lease counted from when that round was sent
    /// (see the engine's "Vote leases"). `urgent` asks the recipient to echo this round at once
    /// (the sender's lease from it is about to run out: its regular echoes were lost). On the wire
    /// `blocked` and `urgent` share one flags byte (bit 0, bit 1; other bits must be 0).
    Heartbeat {
        view: Option<ViewId>,
        incarnation: u32,
        delivered: u64,
        blocked: bool,
        urgent: bool,
        round: u64,
        echo: u64,
    },
    /// A direct probe, answered by `Ack`.
    Ping { probe: u32 },
    /// Answer to `Ping`.
    Ack { probe: u32 },
    /// "Do you still see `target`?" — the indirect probe sent to the other members.
    PingReq { target: NodeId, probe: u32 },
    /// Answer to `PingReq`: the voter's own observation of `target`.
    ProbeVote { target: NodeId, probe: u32, alive: bool, heard_ago_ms: u32 },
    /// "I suspect `target` (in life `boot`, incarnation `incarnation`) has failed."
    Suspect { target: NodeId, boot: u64, incarnation: u32 },
    /// The sender refutes a suspicion about itself with a larger incarnation.
    Alive { incarnation: u32 },
    /// A coordinator proposes view `view` with `members`.
    ViewPropose { view: ViewId, members: Vec<Member> },
    /// A member's answer to a proposal; a refusal tells the coordinator the largest epoch it knows.
    /// An acceptance says which view the member is in and how far it delivered it (it then stops).
    ViewAck { view: ViewId, accept: bool, max_epoch: u64, prev: Option<ViewId>, delivered: u64 },
    /// The coordinator commits the proposed view: every listed member flushes its previous view to
    /// that view's cut, then installs this one.
    ViewInstall { view: ViewId, members: Vec<Member>, cuts: Vec<Cut> },
    /// The sender is leaving on purpose; the others commit a view without it at once.
    Leave,
    /// The sender has (re)started and wants to be in the view.
    Join { incarnation: u32 },
    /// An ordered-channel message, numbered `seq` by the view's sequencer.
    Data { view: ViewId, seq: u64, origin: NodeId, origin_seq: u64, payload: Bytes },
    /// Ask the sequencer (or a flush donor) to retransmit ordered-channel messages `from..=to` of `view`.
    Nack { view: ViewId, from: u64, to: u64 },
    /// A member hands a message to the view's sequencer; `oldest` is its oldest unsequenced one.
    Submit { view: ViewId, origin_seq: u64, oldest: u64, payload: Bytes },
}

/// Numeric message types on the wire.
mod ty {
    pub const HEARTBEAT: u8 = 1;
    pub const PING: u8 = 2;
    pub const ACK: u8 = 3;
    pub const PING_REQ: u8 = 4;
    pub const PROBE_VOTE: u8 = 5;
    pub const SUSPECT: u8 = 6;
    pub const ALIVE: u8 = 7;
    pub const VIEW_PROPOSE: u8 = 8;
    pub const VIEW_ACK: u8 = 9;
    pub const VIEW_INSTALL: u8 = 10;
    pub const LEAVE: u8 = 11;
    pub const JOIN: u8 = 12;
    pub const DATA: u8 = 13;
    pub const NACK: u8 = 14;
    pub const SUBMIT: u8 = 15;
}

impl Message {
    /// Short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat { .. } => "heartbeat",
            Message::Ping { .. } => "ping",
            Message::Ack { .. } => "ack",
            Message::PingReq { .. } => "ping-req",
            Message::ProbeVote { .. } => "probe-vote",
            Message::Suspect { .. } => "suspect",
            Message::Alive { .. } => "alive",
            Message::ViewPropose { .. } => "view-propose",
            Message::ViewAck { .. } => "view-ack",
            Message::ViewInstall { .. } => "view-install",
            Message::Leave => "leave",
            Message::Join { .. } => "join",
            Message::Data { .. } => "data",
            Message::Nack { .. } => "nack",
            Message::Submit { .. } => "submit",
        }
    }

    fn type_byte(&self) -> u8 {
        match self {
            Message::Heartbeat { .. } => ty::HEARTBEAT,
            Message::Ping { .. } => ty::PING,
            Message::Ack { .. } => ty::ACK,
            Message::PingReq { .. } => ty::PING_REQ,
            Message::ProbeVote { .. } => ty::PROBE_VOTE,
            Message::Suspect { .. } => ty::SUSPECT,
            Message::Alive { .. } => ty::ALIVE,
            Message::ViewPropose { .. } => ty::VIEW_PROPOSE,
            Message::ViewAck { .. } => ty::VIEW_ACK,
            Message::ViewInstall { .. } => ty::VIEW_INSTALL,
            Message::Leave => ty::LEAVE,
            Message::Join { .. } => ty::JOIN,
            Message::Data { .. } => ty::DATA,
            Message::Nack { .. } => ty::NACK,
            Message::Submit { .. } => ty::SUBMIT,
        }
    }
}

/// Why a datagram could not be parsed or emitted. Every variant means "drop it"; none is retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The datagram ended before a field it announced.
    #[error("datagram truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    /// Not a hastack membership datagram.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not speak.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes exceeds the maximum of {MAX_DATAGRAM}")]
    Oversized(usize),
    /// A field holds a value outside its domain (e.g. a boolean of 7, too many members).
    #[error("invalid field {0}")]
    InvalidField(&'static str),
    /// Bytes left over after the body.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
}

/// A bounds-checked reader; every getter fails instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let rest = self.buf.len() - self.pos;
        if rest < n {
            return Err(WireError::Truncated { offset: self.pos, needed: n - rest });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::InvalidField(field)),
        }
    }
    fn node(&mut self) -> Result<NodeId, WireError> {
        Ok(NodeId(self.u32()?))
    }
    fn view(&mut self) -> Result<ViewId, WireError> {
        Ok(ViewId { epoch: self.u64()?, coordinator: self.node()?, coordinator_boot: self.u64()? })
    }
    fn members(&mut self) -> Result<Vec<Member>, WireError> {
        let n = self.u8()? as usize;
        if n == 0 || n > MAX_MEMBERS {
            return Err(WireError::InvalidField("member count"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(Member { node: self.node()?, boot: self.u64()? });
        }
        // Canonical form: strictly ascending node ids, so equal views compare equal byte for byte.
        if v.windows(2).any(|w| w[0].node >= w[1].node) {
            return Err(WireError::InvalidField("member order"));
        }
        Ok(v)
    }
    fn cuts(&mut self) -> Result<Vec<Cut>, WireError> {
        let n = self.u8()? as usize;
        if n > MAX_CUTS {
            return Err(WireError::InvalidField("cut count"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(Cut { view: self.view()?, seq: self.u64()?, donor: self.node()? });
        }
        Ok(v)
    }
    fn payload(&mut self) -> Result<Bytes, WireError> {
        let len = self.u16()? as usize;
        if len > MAX_PAYLOAD {
            return Err(WireError::Oversized(len));
        }
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
    fn opt_view(&mut self) -> Result<Option<ViewId>, WireError> {
        Ok(if self.bool("view present")? { Some(self.view()?) } else { None })
    }
}

fn put_opt_view(b: &mut BytesMut, v: &Option<ViewId>) {
    match v {
        Some(v) => {
            b.put_u8(1);
            put_view(b, v);
        }
        None => b.put_u8(0),
    }
}

fn put_payload(b: &mut BytesMut, p: &Bytes) -> Result<(), WireError> {
    if p.len() > MAX_PAYLOAD {
        return Err(WireError::Oversized(p.len()));
    }
    b.put_u16(p.len() as u16);
    b.put_slice(p);
    Ok(())
}

fn put_view(b: &mut BytesMut, v: &ViewId) {
    b.put_u64(v.epoch);
    b.put_u32(v.coordinator.0);
    b.put_u64(v.coordinator_boot);
}

fn put_members(b: &mut BytesMut, m: &[Member]) -> Result<(), WireError> {
    if m.is_empty() || m.len() > MAX_MEMBERS {
        return Err(WireError::InvalidField("member count"));
    }
    if m.windows(2).any(|w| w[0].node >= w[1].node) {
        return Err(WireError::InvalidField("member order"));
    }
    b.put_u8(m.len() as u8);
    for x in m {
        b.put_u32(x.node.0);
        b.put_u64(x.boot);
    }
    Ok(())
}

/// Write header and body (without MAC) into a fresh buffer with room for the MAC.
pub fn emit(header: &Header, msg: &Message) -> Result<BytesMut, WireError> {
    let mut b = BytesMut::with_capacity(128);
    b.put_slice(&MAGIC);
    b.put_u8(VERSION);
    b.put_u8(msg.type_byte());
    b.put_u32(header.cluster_id);
    b.put_u32(header.sender.0);
    b.put_u64(header.boot);
    b.put_u64(header.seq);
    match msg {
        Message::Heartbeat { view, incarnation, delivered, blocked, urgent, round, echo } => {
            put_opt_view(&mut b, view);
            b.put_u32(*incarnation);
            b.put_u64(*delivered);
            b.put_u8(u8::from(*blocked) | (u8::from(*urgent) << 1));
            b.put_u64(*round);
            b.put_u64(*echo);
        }
        Message::Ping { probe } | Message::Ack { probe } => b.put_u32(*probe),
        Message::PingReq { target, probe } => {
            b.put_u32(target.0);
            b.put_u32(*probe);
        }
        Message::ProbeVote { target, probe, alive, heard_ago_ms } => {
            b.put_u32(target.0);
            b.put_u32(*probe);
            b.put_u8(u8::from(*alive));
            b.put_u32(*heard_ago_ms);
        }
        Message::Suspect { target, boot, incarnation } => {
            b.put_u32(target.0);
            b.put_u64(*boot);
            b.put_u32(*incarnation);
        }
        Message::Alive { incarnation } | Message::Join { incarnation } => b.put_u32(*incarnation),
        Message::ViewPropose { view, members } => {
            put_view(&mut b, view);
            put_members(&mut b, members)?;
        }
        Message::ViewInstall { view, members, cuts } => {
            put_view(&mut b, view);
            put_members(&mut b, members)?;
            if cuts.len() > MAX_CUTS {
                return Err(WireError::InvalidField("cut count"));
            }
            b.put_u8(cuts.len() as u8);
            for c in cuts {
                put_view(&mut b, &c.view);
                b.put_u64(c.seq);
                b.put_u32(c.donor.0);
            }
        }
        Message::ViewAck { view, accept, max_epoch, prev, delivered } => {
            put_view(&mut b, view);
            b.put_u8(u8::from(*accept));
            b.put_u64(*max_epoch);
            put_opt_view(&mut b, prev);
            b.put_u64(*delivered);
        }
        Message::Leave => {}
        Message::Data { view, seq, origin, origin_seq, payload } => {
            put_view(&mut b, view);
            b.put_u64(*seq);
            b.put_u32(origin.0);
            b.put_u64(*origin_seq);
            put_payload(&mut b, payload)?;
        }
        Message::Submit { view, origin_seq, oldest, payload } => {
            put_view(&mut b, view);
            b.put_u64(*origin_seq);
            b.put_u64(*oldest);
            put_payload(&mut b, payload)?;
        }
        Message::Nack { view, from, to } => {
            if from > to {
                return Err(WireError::InvalidField("nack range"));
            }
            put_view(&mut b, view);
            b.put_u64(*from);
            b.put_u64(*to);
        }
    }
    if b.len() + MAC_LEN > MAX_DATAGRAM {
        return Err(WireError::Oversized(b.len() + MAC_LEN));
    }
    Ok(b)
}

/// Parse only the header (used by `auth` to find the sender before the body is trusted).
pub fn parse_header(buf: &[u8]) -> Result<Header, WireError> {
    if buf.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized(buf.len()));
    }
    let mut r = Reader { buf, pos: 0 };
    if r.take(2)? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(WireError::UnsupportedVersion(v));
    }
    let _ty = r.u8()?;
    Ok(Header { cluster_id: r.u32()?, sender: r.node()?, boot: r.u64()?, seq: r.u64()? })
}

/// Parse header and body of a datagram whose MAC has already been stripped.
pub fn parse(buf: &[u8]) -> Result<(Header, Message), WireError> {
    let header = parse_header(buf)?;
    let t = buf[3];
    let mut r = Reader { buf, pos: HEADER_LEN };
    let msg = match t {
        ty::HEARTBEAT => {
            let (view, incarnation, delivered) = (r.opt_view()?, r.u32()?, r.u64()?);
            let flags = r.u8()?;
            if flags & !0b11 != 0 {
                return Err(WireError::InvalidField("heartbeat flags"));
            }
            Message::Heartbeat {
                view,
                incarnation,
                delivered,
                blocked: flags & 1 != 0,
                urgent: flags & 2 != 0,
                round: r.u64()?,
                echo: r.u64()?,
            }
        }
        ty::PING => Message::Ping { probe: r.u32()? },
        ty::ACK => Message::Ack { probe: r.u32()? },
        ty::PING_REQ => Message::PingReq { target: r.node()?, probe: r.u32()? },
        ty::PROBE_VOTE => Message::ProbeVote {
            target: r.node()?,
            probe: r.u32()?,
            alive: r.bool("alive")?,
            heard_ago_ms: r.u32()?,
        },
        ty::SUSPECT => Message::Suspect { target: r.node()?, boot: r.u64()?, incarnation: r.u32()? },
        ty::ALIVE => Message::Alive { incarnation: r.u32()? },
        ty::VIEW_PROPOSE => Message::ViewPropose { view: r.view()?, members: r.members()? },
        ty::VIEW_ACK => Message::ViewAck {
            view: r.view()?,
            accept: r.bool("accept")?,
            max_epoch: r.u64()?,
            prev: r.opt_view()?,
            delivered: r.u64()?,
        },
        ty::VIEW_INSTALL => {
            Message::ViewInstall { view: r.view()?, members: r.members()?, cuts: r.cuts()? }
        }
        ty::LEAVE => Message::Leave,
        ty::JOIN => Message::Join { incarnation: r.u32()? },
        ty::DATA => Message::Data {
            view: r.view()?,
            seq: r.u64()?,
            origin: r.node()?,
            origin_seq: r.u64()?,
            payload: r.payload()?,
        },
        ty::SUBMIT => Message::Submit {
            view: r.view()?,
            origin_seq: r.u64()?,
            oldest: r.u64()?,
            payload: r.payload()?,
        },
        ty::NACK => {
            let view = r.view()?;
            let from = r.u64()?;
            let to = r.u64()?;
            if from > to {
                return Err(WireError::InvalidField("nack range"));
            }
            Message::Nack { view, from, to }
        }
        other => return Err(WireError::UnknownType(other)),
    };
    if r.pos != buf.len() {
        return Err(WireError::TrailingBytes(buf.len() - r.pos));
    }
    Ok((header, msg))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_view() -> impl Strategy<Value = ViewId> {
        (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(e, c, b)| ViewId {
            epoch: e,
            coordinator: NodeId(c),
            coordinator_boot: b,
        })
    }

    fn arb_cut() -> impl Strategy<Value = Cut> {
        (arb_view(), any::<u64>(), any::<u32>()).prop_map(|(view, seq, d)| Cut { view, seq, donor: NodeId(d) })
    }

    fn arb_members() -> impl Strategy<Value = Vec<Member>> {
        proptest::collection::btree_map(any::<u32>(), any::<u64>(), 1..=MAX_MEMBERS).prop_map(|m| {
            m.into_iter().map(|(n, b)| Member { node: NodeId(n), boot: b }).collect()
        })
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                proptest::option::of(arb_view()),
                any::<u32>(),
                any::<u64>(),
                any::<bool>(),
                any::<bool>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(view, incarnation, delivered, blocked, urgent, round, echo)| Message::Heartbeat {
                    view,
                    incarnation,
                    delivered,
                    blocked,
                    urgent,
                    round,
                    echo
                }),
            any::<u32>().prop_map(|probe| Message::Ping { probe }),
            any::<u32>().prop_map(|probe| Message::Ack { probe }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(t, probe)| Message::PingReq { target: NodeId(t), probe }),
            (any::<u32>(), any::<u32>(), any::<bool>(), any::<u32>()).prop_map(|(t, p, a, h)| {
                Message::ProbeVote { target: NodeId(t), probe: p, alive: a, heard_ago_ms: h }
            }),
            (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(t, boot, incarnation)| {
                Message::Suspect { target: NodeId(t), boot, incarnation }
            }),
            any::<u32>().prop_map(|incarnation| Message::Alive { incarnation }),
            (arb_view(), arb_members())
                .prop_map(|(view, members)| Message::ViewPropose { view, members }),
            (arb_view(), any::<bool>(), any::<u64>(), proptest::option::of(arb_view()), any::<u64>())
                .prop_map(|(view, accept, max_epoch, prev, delivered)| Message::ViewAck {
                    view,
                    accept,
                    max_epoch,
                    prev,
                    delivered
                }),
            (arb_view(), arb_members(), proptest::collection::vec(arb_cut(), 0..=MAX_CUTS))
                .prop_map(|(view, members, cuts)| Message::ViewInstall { view, members, cuts }),
            Just(Message::Leave),
            any::<u32>().prop_map(|incarnation| Message::Join { incarnation }),
            (
                arb_view(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD)
            )
                .prop_map(|(view, seq, o, os, p)| Message::Data {
                    view,
                    seq,
                    origin: NodeId(o),
                    origin_seq: os,
                    payload: Bytes::from(p)
                }),
            (arb_view(), any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD))
                .prop_map(|(view, origin_seq, oldest, p)| Message::Submit {
                    view,
                    origin_seq,
                    oldest,
                    payload: Bytes::from(p)
                }),
            (arb_view(), any::<u64>(), any::<u64>()).prop_map(|(view, a, b)| Message::Nack {
                view,
                from: a.min(b),
                to: a.max(b)
            }),
        ]
    }

    fn arb_header() -> impl Strategy<Value = Header> {
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(c, s, b, q)| Header {
            cluster_id: c,
            sender: NodeId(s),
            boot: b,
            seq: q,
        })
    }

    proptest! {
        #[test]
        fn round_trip(h in arb_header(), m in arb_message()) {
            let bytes = emit(&h, &m).expect("every generated message fits");
            prop_assert!(bytes.len() + MAC_LEN <= MAX_DATAGRAM);
            let (h2, m2) = parse(&bytes).expect("own output parses");
            prop_assert_eq!(h, h2);
            prop_assert_eq!(m, m2);
        }

        #[test]
        fn every_truncation_is_an_error(h in arb_header(), m in arb_message()) {
            let bytes = emit(&h, &m).expect("fits");
            for cut in 0..bytes.len() {
                prop_assert!(parse(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = parse(&data);
        }
    }

    #[test]
    fn unknown_heartbeat_flags_rejected() {
        let h = Header { cluster_id: 1, sender: NodeId(2), boot: 3, seq: 4 };
        let m = Message::Heartbeat {
            view: None,
            incarnation: 0,
            delivered: 0,
            blocked: true,
            urgent: true,
            round: 5,
            echo: 6,
        };
        let mut b = emit(&h, &m).unwrap();
        assert_eq!(parse(&b).unwrap().1, m);
        // view tag (1) + incarnation (4) + delivered (8), then the flags byte.
        let flags = HEADER_LEN + 1 + 4 + 8;
        assert_eq!(b[flags], 0b11);
        b[flags] = 0b111;
        assert_eq!(parse(&b).unwrap_err(), WireError::InvalidField("heartbeat flags"));
    }

    #[test]
    fn trailing_bytes_rejected() {
        let h = Header { cluster_id: 1, sender: NodeId(2), boot: 3, seq: 4 };
        let mut b = emit(&h, &Message::Leave).unwrap();
        b.put_u8(0);
        assert_eq!(parse(&b), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn unsorted_members_rejected() {
        let h = Header { cluster_id: 1, sender: NodeId(2), boot: 3, seq: 4 };
        let m = vec![Member { node: NodeId(2), boot: 0 }, Member { node: NodeId(1), boot: 0 }];
        assert!(
            emit(&h, &Message::ViewInstall { view: ViewId::default(), members: m, cuts: vec![] })
                .is_err()
        );
    }

    #[test]
    fn oversized_rejected() {
        let big = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(parse_header(&big), Err(WireError::Oversized(MAX_DATAGRAM + 1)));
    }
}
