//! Process groups over the cluster channel (Corosync CPG's contract), seen from a local process:
//! the wire format of the Unix-socket protocol `hastack cluster` serves, and a small tokio client.
//!
//! A process joins a named group through the cluster daemon's control socket; from then on every
//! message any member multicasts to the group is delivered to every member in the same total
//! order (the membership channel's), and group view changes (members joining, leaving, or lost
//! with their node) are delivered at the same point of that order to every member.
//!
//! # Socket protocol
//! ```text
//! client: {"cmd":"group-join","group":"leases"}\n
//! daemon: {"ok":true,"node":N,"member":M,"targeted":true,"others":true}\n  (or {"error":"..."}\n and close)
//! then frames both ways:  len:u32be kind:u8 body[len-1]
//!   client -> daemon  kind 1 MCAST    body = payload (at most MAX_MESSAGE bytes)
//!                     kind 4 MCAST_TO body = count:u8 (node:u32be member:u64be)*count payload
//!                     kind 5 MCAST_OTHERS body = payload (every member but the sender)
//!   daemon -> client  kind 2 DELIVER  body = node:u32be member:u64be payload
//!                     kind 3 VIEW     body = count:u16be (node:u32be member:u64be)*count
//! ```
//! The first VIEW a client gets is the one that contains it. Members are sorted.
//!
//! `MCAST_TO` is a multicast in the same total order that the daemons deliver only to the listed
//! members (an acknowledgement concerns its origin alone: the others need not wake up for it);
//! `MCAST_OTHERS` one they deliver to every member but its sender (a member that joins while it
//! is in flight included). A daemon that offers them says `"targeted":true` (`"others":true`) in
//! its join answer; a client sends them only then. Delivery to the others is allowed (a daemon in a cluster with older daemons delivers
//! it to everyone), so a receiver still checks who a message is for.
//!
//! # Client lifecycle
//! `connecting` → `joined` (first VIEW with itself) → events until the socket closes (the cluster
//! daemon stopped) → the owner reconnects and joins again as a new member.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;

/// Largest payload a member may multicast (what fits in one cluster-channel datagram with the
/// group header).
pub const MAX_MESSAGE: usize = 1200;
/// Longest group name.
pub const MAX_GROUP_NAME: usize = 32;
/// Largest frame accepted on the socket (a VIEW of many members is the biggest).
pub const MAX_FRAME: usize = 64 * 1024;

/// Frame kinds.
pub const KIND_MCAST: u8 = 1;
/// A delivered message.
pub const KIND_DELIVER: u8 = 2;
/// A group view.
pub const KIND_VIEW: u8 = 3;
/// A multicast for some members only.
pub const KIND_MCAST_TO: u8 = 4;
/// A multicast for every member but the sender.
pub const KIND_MCAST_OTHERS: u8 = 5;
/// Most targets of one `MCAST_TO`.
pub const MAX_TARGETS: usize = 16;

/// One member of a group: the node it runs on and its id there (unique within the node's life).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    /// Cluster node id.
    pub node: u32,
    /// Member id assigned by that node's cluster daemon.
    pub member: u64,
}

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.member)
    }
}

/// What the daemon tells a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    /// A message, in the group's total order.
    Deliver {
        /// Who multicast it.
        from: MemberId,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// The group's members now (sorted).
    View(Vec<MemberId>),
}

/// Why the group client failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The socket could not be reached or broke; retrying later may help.
    #[error("cluster socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The OS error.
        source: io::Error,
    },
    /// The daemon refused the join (bad group name); retrying will not help.
    #[error("cluster daemon refused the join: {0}")]
    Refused(String),
    /// The daemon sent something that is not this protocol.
    #[error("cluster daemon protocol error: {0}")]
    Protocol(String),
    /// A payload larger than [`MAX_MESSAGE`].
    #[error("group message of {0} bytes exceeds {MAX_MESSAGE}")]
    TooLarge(usize),
}

/// Encode one frame.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Append one frame to `out` (no allocation of its own).
pub fn frame_into(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

/// Append an `MCAST_TO` frame for `to` carrying `payload` to `out`.
pub fn mcast_to_frame_into(out: &mut Vec<u8>, to: &[MemberId], payload: &[u8]) {
    let n = to.len().min(MAX_TARGETS);
    out.extend_from_slice(&((2 + 12 * n + payload.len()) as u32).to_be_bytes());
    out.push(KIND_MCAST_TO);
    out.push(n as u8);
    for m in &to[..n] {
        out.extend_from_slice(&m.node.to_be_bytes());
        out.extend_from_slice(&m.member.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Split an `MCAST_TO` body into its targets and payload (`None`: malformed).
pub fn parse_mcast_to(body: &[u8]) -> Option<(Vec<MemberId>, &[u8])> {
    let n = usize::from(*body.first()?);
    if n == 0 || n > MAX_TARGETS {
        return None;
    }
    let to = (0..n).map(|i| member_at(body.get(1 + 12 * i..)?)).collect::<Option<Vec<_>>>()?;
    Some((to, body.get(1 + 12 * n..)?))
}

/// Encode a DELIVER frame.
pub fn deliver_frame(from: MemberId, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + payload.len());
    body.extend_from_slice(&from.node.to_be_bytes());
    body.extend_from_slice(&from.member.to_be_bytes());
    body.extend_from_slice(payload);
    frame(KIND_DELIVER, &body)
}

/// Encode a VIEW frame.
pub fn view_frame(members: &[MemberId]) -> Vec<u8> {
    let n = members.len().min(usize::from(u16::MAX));
    let mut body = Vec::with_capacity(2 + 12 * n);
    body.extend_from_slice(&(n as u16).to_be_bytes());
    for m in &members[..n] {
        body.extend_from_slice(&m.node.to_be_bytes());
        body.extend_from_slice(&m.member.to_be_bytes());
    }
    frame(KIND_VIEW, &body)
}

fn member_at(b: &[u8]) -> Option<MemberId> {
    let node = u32::from_be_bytes(b.get(0..4)?.try_into().ok()?);
    let member = u64::from_be_bytes(b.get(4..12)?.try_into().ok()?);
    Some(MemberId { node, member })
}

/// Decode a daemon→client frame body of `kind`.
pub fn decode_event(kind: u8, body: &[u8]) -> Option<GroupEvent> {
    match kind {
        KIND_DELIVER => Some(GroupEvent::Deliver { from: member_at(body)?, payload: body.get(12..)?.to_vec() }),
        KIND_VIEW => {
            let n = usize::from(u16::from_be_bytes(body.get(0..2)?.try_into().ok()?));
            if body.len() != 2 + 12 * n {
                return None;
            }
            let mut v: Vec<MemberId> = (0..n).filter_map(|i| member_at(&body[2 + 12 * i..])).collect();
            v.sort();
            Some(GroupEvent::View(v))
        }
        _ => None,
    }
}

/// Read one frame: `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame length {len}")));
    }
    let mut b = vec![0u8; len];
    r.read_exact(&mut b).await?;
    let kind = b[0];
    b.remove(0);
    Ok(Some((kind, b)))
}

/// Check a group name: 1..=32 bytes of `[A-Za-z0-9._-]`.
pub fn valid_group_name(g: &str) -> bool {
    !g.is_empty() && g.len() <= MAX_GROUP_NAME && g.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A joined member's receiving half. Reading is cancel-safe (bytes read are kept in its buffer
/// until a whole frame is there), so it can sit in a `select!` without a task of its own.
pub struct GroupReader {
    r: OwnedReadHalf,
    /// Bytes read; frames start at `head`.
    buf: Vec<u8>,
    head: usize,
    path: String,
}

/// A joined member's sending half.
pub struct GroupWriter {
    shared: Arc<SharedOut>,
    path: String,
    /// The daemon delivers `MCAST_TO` to its targets only.
    targeted: bool,
    /// The daemon takes `MCAST_OTHERS`.
    others: bool,
    /// Reused for each burst of frames.
    out: Vec<u8>,
}

/// The socket's writing half and the bytes queued for it, shared by the [`GroupWriter`] and its
/// [`FrameSender`]s: whoever holds the lock appends whole frames and writes from the front of
/// the queue, so frames from several threads reach the daemon whole and in the order they were
/// queued.
struct SharedOut {
    w: OwnedWriteHalf,
    q: Mutex<OutQueue>,
    /// Told when bytes were left queued by a thread that cannot wait for the socket.
    kick: Notify,
}

#[derive(Default)]
struct OutQueue {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    head: usize,
    /// A write failed for good: the connection is gone (the reader sees it too).
    broken: bool,
}

impl OutQueue {
    /// Write what the socket takes now without waiting; `Ok(true)` when nothing is left.
    fn write_now(&mut self, w: &OwnedWriteHalf) -> io::Result<bool> {
        while self.head < self.buf.len() {
            match w.try_write(&self.buf[self.head..]) {
                Ok(0) => {
                    self.broken = true;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => self.head += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        self.buf.clear();
        self.head = 0;
        // Keep a buffer of a usual burst's size, not the largest ever (a snapshot).
        if self.buf.capacity() > 256 * 1024 {
            self.buf = Vec::new();
        }
        Ok(true)
    }
}

/// Sends whole frames to the daemon from any thread (e.g. acknowledgements from the thread
/// that made the records durable), without waiting: what the socket does not take at once is
/// written by the [`GroupWriter`]'s owner when it next runs [`GroupWriter::drain`] (it is
/// woken for it through [`GroupWriter::kicked`]).
#[derive(Clone)]
pub struct FrameSender {
    shared: Arc<SharedOut>,
}

impl FrameSender {
    /// Queue `frames` (complete frames, see [`GroupWriter::encode`]) behind everything queued
    /// before and write what the socket takes now. Dropped silently once the connection broke
    /// (the member rejoins as a new member; what it acknowledged is durable here anyway).
    pub fn send(&self, frames: &[u8]) {
        if frames.is_empty() {
            return;
        }
        let Ok(mut q) = self.shared.q.lock() else { return };
        if q.broken {
            return;
        }
        q.buf.extend_from_slice(frames);
        if let Ok(false) = q.write_now(&self.shared.w) {
            self.shared.kick.notify_one();
        }
    }
}

/// Join `group` through the cluster daemon at `socket`; returns this member's id and the halves.
pub async fn join(socket: &Path, group: &str) -> Result<(MemberId, GroupReader, GroupWriter), GroupError> {
    let path = socket.display().to_string();
    let io_err = |source| GroupError::Io { path: path.clone(), source };
    let s = UnixStream::connect(socket).await.map_err(io_err)?;
    let (r, mut w) = s.into_split();
    let req = serde_json_line(group);
    w.write_all(req.as_bytes()).await.map_err(io_err)?;
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.map_err(io_err)?;
    let me = parse_join_answer(&line)?;
    let targeted = line.contains("\"targeted\":true");
    let others = line.contains("\"others\":true");
    // Frames the daemon sent right after the answer may already sit in the line reader's buffer.
    let buf = r.buffer().to_vec();
    let r = r.into_inner();
    Ok((me, GroupReader { r, buf, head: 0, path: path.clone() }, GroupWriter { shared: Arc::new(SharedOut { w, q: Mutex::new(OutQueue::default()), kick: Notify::new() }), path, targeted, others, out: Vec::new() }))
}

fn serde_json_line(group: &str) -> String {
    // The group name is checked by the caller's config; escape quotes anyway.
    format!("{{\"cmd\":\"group-join\",\"group\":\"{}\"}}\n", group.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Parse the daemon's JSON answer to a join (a tiny fixed shape; no JSON dependency here).
fn parse_join_answer(line: &str) -> Result<MemberId, GroupError> {
    let line = line.trim();
    if line.is_empty() {
        return Err(GroupError::Protocol("connection closed before the join answer".into()));
    }
    if line.contains("\"error\"") {
        return Err(GroupError::Refused(line.to_string()));
    }
    let num = |key: &str| -> Option<u64> {
        let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
        let digits: String = line[at..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    match (num("node").and_then(|n| u32::try_from(n).ok()), num("member")) {
        (Some(node), Some(member)) => Ok(MemberId { node, member }),
        _ => Err(GroupError::Protocol(format!("unexpected join answer: {line}"))),
    }
}

impl GroupReader {
    /// Take one complete frame out of the buffer, decoded (`Ok(None)`: none complete yet).
    fn pop_event(&mut self) -> Result<Option<GroupEvent>, GroupError> {
        let b = &self.buf[self.head..];
        let Some(len) = b.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else { return Ok(None) };
        if len == 0 || len > MAX_FRAME {
            return Err(GroupError::Protocol(format!("frame length {len}")));
        }
        if b.len() < 4 + len {
            return Ok(None);
        }
        let kind = b[4];
        let ev = decode_event(kind, &b[5..4 + len]);
        self.head += 4 + len;
        ev.map(Some).ok_or_else(|| GroupError::Protocol(format!("bad frame kind {kind} of {} bytes", len - 1)))
    }

    /// Read what the socket has; false at the end of the stream. Cancel-safe: bytes read stay
    /// in the buffer.
    async fn fill(&mut self) -> Result<bool, GroupError> {
        // Drop the frames already taken (a partial one moves to the front).
        if self.head > 0 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = self.r.read_buf(&mut self.buf).await.map_err(|source| GroupError::Io { path: self.path.clone(), source })?;
        Ok(n > 0)
    }

    /// Wait for events and append every one that has arrived to `out` (at least one);
    /// `Ok(false)` when the daemon closed the connection. Cancel-safe.
    pub async fn next_batch(&mut self, out: &mut Vec<GroupEvent>) -> Result<bool, GroupError> {
        let start = out.len();
        loop {
            while let Some(e) = self.pop_event()? {
                out.push(e);
            }
            if out.len() > start {
                return Ok(true);
            }
            if !self.fill().await? {
                return Ok(false);
            }
        }
    }

    /// The next event; `Ok(None)` when the daemon closed the connection. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<GroupEvent>, GroupError> {
        loop {
            if let Some(e) = self.pop_event()? {
                return Ok(Some(e));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

/// One message to send: to the whole group (`to` empty) or to some members only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The members it is for (empty: everyone).
    pub to: Vec<MemberId>,
    /// Not for the sender itself (with `to` empty).
    pub not_self: bool,
    /// The payload.
    pub payload: Vec<u8>,
}

impl GroupWriter {
    /// Whether the daemon delivers targeted messages to their targets only.
    pub fn targeted(&self) -> bool {
        self.targeted
    }

    /// Multicast `payload` to the group (delivered to every member, this one included).
    pub async fn multicast(&mut self, payload: &[u8]) -> Result<(), GroupError> {
        self.multicast_many(std::slice::from_ref(&payload)).await
    }

    /// Multicast several payloads, in order, with one write to the daemon (one wake-up there).
    pub async fn multicast_many<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<(), GroupError> {
        self.out.clear();
        for p in payloads {
            let p = p.as_ref();
            if p.len() > MAX_MESSAGE {
                return Err(GroupError::TooLarge(p.len()));
            }
            frame_into(&mut self.out, KIND_MCAST, p);
        }
        self.flush().await
    }

    /// Send several messages, in order, with one write: targeted ones as `MCAST_TO` when the
    /// daemon offers it, else to everyone.
    pub async fn send_many(&mut self, msgs: &[Outgoing]) -> Result<(), GroupError> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let r = self.encode(msgs, &mut out);
        self.out = out;
        r?;
        self.flush().await
    }

    /// The frames for `msgs`, appended to `out`, as [`GroupWriter::send_many`] sends them (for
    /// a [`FrameSender`]).
    pub fn encode(&self, msgs: &[Outgoing], out: &mut Vec<u8>) -> Result<(), GroupError> {
        for m in msgs {
            if m.payload.len() > MAX_MESSAGE {
                return Err(GroupError::TooLarge(m.payload.len()));
            }
            if self.targeted && !m.to.is_empty() && m.to.len() <= MAX_TARGETS {
                mcast_to_frame_into(out, &m.to, &m.payload);
            } else if self.others && m.to.is_empty() && m.not_self {
                frame_into(out, KIND_MCAST_OTHERS, &m.payload);
            } else {
                frame_into(out, KIND_MCAST, &m.payload);
            }
        }
        Ok(())
    }

    /// A sender of frames on this connection usable from any thread.
    pub fn frame_sender(&self) -> FrameSender {
        FrameSender { shared: self.shared.clone() }
    }

    /// Resolves when a [`FrameSender`] left bytes queued that only [`GroupWriter::drain`] can
    /// finish writing. Cancel-safe.
    pub async fn kicked(&self) {
        self.shared.kick.notified().await
    }

    fn io_err(&self, source: io::Error) -> GroupError {
        GroupError::Io { path: self.path.clone(), source }
    }

    fn queue(&self, frames: &[u8]) -> Result<(), GroupError> {
        let mut q = self.shared.q.lock().map_err(|_| self.io_err(io::Error::other("writer lock poisoned")))?;
        if q.broken {
            return Err(self.io_err(io::ErrorKind::BrokenPipe.into()));
        }
        q.buf.extend_from_slice(frames);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), GroupError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.queue(&self.out)?;
        self.out.clear();
        self.drain().await
    }

    /// Write everything queued (by this writer or a [`FrameSender`]), waiting for the socket.
    pub async fn drain(&self) -> Result<(), GroupError> {
        loop {
            {
                let mut q = self.shared.q.lock().map_err(|_| self.io_err(io::Error::other("writer lock poisoned")))?;
                if q.broken {
                    return Err(self.io_err(io::ErrorKind::BrokenPipe.into()));
                }
                if q.write_now(&self.shared.w).map_err(|e| self.io_err(e))? {
                    return Ok(());
                }
            }
            self.shared.w.writable().await.map_err(|e| self.io_err(e))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn join_answer_parses_and_errors_are_refusals() {
        assert_eq!(parse_join_answer("{\"ok\":true,\"node\":2,\"member\":17}\n").unwrap(), MemberId { node: 2, member: 17 });
        assert!(matches!(parse_join_answer("{\"error\":\"bad group\"}"), Err(GroupError::Refused(_))));
        assert!(matches!(parse_join_answer(""), Err(GroupError::Protocol(_))));
    }

    #[test]
    fn group_names() {
        assert!(valid_group_name("leases"));
        assert!(!valid_group_name(""));
        assert!(!valid_group_name("a b"));
        assert!(!valid_group_name(&"x".repeat(33)));
    }

    #[test]
    fn mcast_to_frames_parse_and_garbage_is_rejected() {
        let to = vec![MemberId { node: 1, member: 7 }, MemberId { node: 3, member: 2 }];
        let mut f = Vec::new();
        mcast_to_frame_into(&mut f, &to, b"ack");
        assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        assert_eq!(f[4], KIND_MCAST_TO);
        assert_eq!(parse_mcast_to(&f[5..]), Some((to, &b"ack"[..])));
        assert_eq!(parse_mcast_to(&[0]), None, "no target");
        assert_eq!(parse_mcast_to(&[1, 0, 0]), None, "short target");
        assert_eq!(parse_mcast_to(&[MAX_TARGETS as u8 + 1]), None);
    }

    /// Frames split at every byte boundary, read by a reader whose reads are cancelled between
    /// bytes, come out whole and in order.
    #[tokio::test]
    async fn the_reader_is_cancel_safe_and_batches_what_arrived() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (r, _w) = a.into_split();
        let mut reader = GroupReader { r, buf: Vec::new(), head: 0, path: "test".into() };
        let (_r2, mut w) = b.into_split();
        let evs: Vec<GroupEvent> = (0..20u8)
            .map(|i| if i % 5 == 0 { GroupEvent::View(vec![MemberId { node: 1, member: u64::from(i) }]) } else { GroupEvent::Deliver { from: MemberId { node: 2, member: 1 }, payload: vec![i; usize::from(i) * 50] } })
            .collect();
        let mut wire = Vec::new();
        for e in &evs {
            match e {
                GroupEvent::Deliver { from, payload } => wire.extend(deliver_frame(*from, payload)),
                GroupEvent::View(v) => wire.extend(view_frame(v)),
            }
        }
        let mut got = Vec::new();
        for byte in wire {
            w.write_all(&[byte]).await.unwrap();
            // A read that is abandoned must not lose what it took.
            let _ = tokio::time::timeout(std::time::Duration::from_micros(1), reader.next_batch(&mut got)).await;
        }
        while got.len() < evs.len() {
            assert!(reader.next_batch(&mut got).await.unwrap());
        }
        assert_eq!(got, evs);
        // Several frames already there come out in one call.
        let mut wire = Vec::new();
        for i in 0..3u8 {
            wire.extend(deliver_frame(MemberId { node: 9, member: 9 }, &[i]));
        }
        w.write_all(&wire).await.unwrap();
        let mut batch = Vec::new();
        assert!(reader.next_batch(&mut batch).await.unwrap());
        while batch.len() < 3 {
            assert!(reader.next_batch(&mut batch).await.unwrap());
        }
        assert_eq!(batch.len(), 3);
        drop(w);
        drop(_r2);
        assert!(!reader.next_batch(&mut batch).await.unwrap(), "end of stream");
    }

    /// Frames queued from another thread (acks from the committer) and from the writer's owner
    /// reach the daemon whole, each thread's in its order, also when the socket buffer fills
    /// and the owner has to finish what the other thread left queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_another_thread_arrive_whole_and_in_order() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_ra, w) = a.into_split();
        let mut writer = GroupWriter {
            shared: Arc::new(SharedOut { w, q: Mutex::new(OutQueue::default()), kick: Notify::new() }),
            path: "test".into(),
            targeted: false,
            others: false,
            out: Vec::new(),
        };
        let sender = writer.frame_sender();
        const N: u32 = 3000;
        let other = std::thread::spawn(move || {
            for i in 0..N {
                let mut f = Vec::new();
                frame_into(&mut f, KIND_MCAST, &[&[1u8][..], &i.to_be_bytes(), &[7u8; 300]].concat());
                sender.send(&f);
            }
        });
        // The daemon side reads slowly at first, so both writers meet a full socket buffer.
        let reader = tokio::spawn(async move {
            let (mut r, _w) = b.into_split();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let (mut next, mut seen) = ([0u32; 2], 0u32);
            while seen < 2 * N {
                let (kind, body) = read_frame(&mut r).await.unwrap().expect("stream ended early");
                assert_eq!(kind, KIND_MCAST);
                let who = usize::from(body[0] - 1);
                let i = u32::from_be_bytes(body[1..5].try_into().unwrap());
                assert_eq!(i, next[who], "writer {who} out of order");
                assert_eq!(body.len(), 305, "frame cut");
                next[who] += 1;
                seen += 1;
            }
        });
        for i in 0..N {
            // Each send also finishes what the other thread left queued.
            writer.multicast(&[&[2u8][..], &i.to_be_bytes(), &[9u8; 300]].concat()).await.unwrap();
        }
        tokio::task::spawn_blocking(move || other.join().unwrap()).await.unwrap();
        // The other thread's last frames may wait for the owner: it is told so.
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                writer.drain().await.unwrap();
                if writer.shared.q.lock().unwrap().buf.is_empty() {
                    break;
                }
                writer.kicked().await;
            }
        })
        .await
        .expect("queued frames never written");
        tokio::time::timeout(std::time::Duration::from_secs(10), reader).await.expect("frames missing").unwrap();
    }

    proptest! {
        #[test]
        fn deliver_and_view_round_trip(node in any::<u32>(), member in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
                                       ms in proptest::collection::vec((any::<u32>(), any::<u64>()), 0..10)) {
            let from = MemberId { node, member };
            let f = deliver_frame(from, &payload);
            prop_assert_eq!(decode_event(f[4], &f[5..]), Some(GroupEvent::Deliver { from, payload: payload.clone() }));
            let mut v: Vec<MemberId> = ms.iter().map(|(n, m)| MemberId { node: *n, member: *m }).collect();
            v.sort();
            let f = view_frame(&v);
            prop_assert_eq!(decode_event(f[4], &f[5..]), Some(GroupEvent::View(v)));
        }

        #[test]
        fn garbage_frames_never_panic(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_event(kind, &body);
        }
    }
}
