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
//! daemon: {"ok":true,"node":N,"member":M}\n        (or {"error":"..."}\n and close)
//! then frames both ways:  len:u32be kind:u8 body[len-1]
//!   client -> daemon  kind 1 MCAST   body = payload (at most MAX_MESSAGE bytes)
//!   daemon -> client  kind 2 DELIVER body = node:u32be member:u64be payload
//!                     kind 3 VIEW    body = count:u16be (node:u32be member:u64be)*count
//! ```
//! The first VIEW a client gets is the one that contains it. Members are sorted.
//!
//! # Client lifecycle
//! `connecting` → `joined` (first VIEW with itself) → events until the socket closes (the cluster
//! daemon stopped) → the owner reconnects and joins again as a new member.

use std::io;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

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

/// A joined member's receiving half.
pub struct GroupReader {
    r: BufReader<OwnedReadHalf>,
    path: String,
}

/// A joined member's sending half.
pub struct GroupWriter {
    w: OwnedWriteHalf,
    path: String,
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
    Ok((me, GroupReader { r, path: path.clone() }, GroupWriter { w, path }))
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
    /// The next event; `Ok(None)` when the daemon closed the connection.
    pub async fn next(&mut self) -> Result<Option<GroupEvent>, GroupError> {
        let f = read_frame(&mut self.r).await.map_err(|source| GroupError::Io { path: self.path.clone(), source })?;
        let Some((kind, body)) = f else { return Ok(None) };
        match decode_event(kind, &body) {
            Some(e) => Ok(Some(e)),
            None => Err(GroupError::Protocol(format!("bad frame kind {kind} of {} bytes", body.len()))),
        }
    }
}

impl GroupWriter {
    /// Multicast `payload` to the group (delivered to every member, this one included).
    pub async fn multicast(&mut self, payload: &[u8]) -> Result<(), GroupError> {
        self.multicast_many(std::slice::from_ref(&payload)).await
    }

    /// Multicast several payloads, in order, with one write to the daemon (one wake-up there).
    pub async fn multicast_many<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<(), GroupError> {
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| 5 + p.as_ref().len()).sum());
        for p in payloads {
            let p = p.as_ref();
            if p.len() > MAX_MESSAGE {
                return Err(GroupError::TooLarge(p.len()));
            }
            buf.extend_from_slice(&frame(KIND_MCAST, p));
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.w.write_all(&buf).await.map_err(|source| GroupError::Io { path: self.path.clone(), source })
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
