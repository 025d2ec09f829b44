//! Process groups (Corosync CPG's contract) for local processes, carried on the membership's
//! ordered channel: `hastack dhcp-dns` joins group "leases" through the control socket and gets
//! every group message and group view change in the view's total order, the same order at every
//! member. The socket protocol is [`dhcp_dns::group`]'s.
//!
//! On the channel a group message is `TAG kind group_len group member:u64be [payload]`; the tag
//! cannot start a JSON document, so the resource engine's messages (JSON) are told apart by their
//! first byte and reach it untouched, in their own order.
//!
//! # Lifecycle of a group member (as this daemon sees it)
//! ```text
//!  connected --JOIN broadcast--> joining --own JOIN delivered--> joined (first VIEW with itself)
//!  joined --MCAST from the process--> broadcast; every delivered MCAST of the group --> DELIVER
//!  joined --socket closed--> LEAVE broadcast (delivered: every member gets a VIEW without it)
//! ```
//! Group tables change only on delivered JOIN/LEAVE and on installed views (members of nodes that
//! left the view are dropped), so every daemon computes the same group views at the same points
//! of the order. After each view every daemon re-announces its local members (a JOIN for a known
//! member changes nothing), which is how a node that joins the cluster learns the groups. Local
//! processes are announced only while this node is in a quorate view (see `Router::quorate`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dhcp_dns::group::{self, MAX_MESSAGE, MemberId, deliver_frame, valid_group_name, view_frame};
use ha_membership::Event;
use ha_membership::driver::ClusterHandle;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// First bytes of a group message on the cluster channel.
const TAG: &[u8; 4] = b"\0HSG";
const JOIN: u8 = 1;
const LEAVE: u8 = 2;
const MCAST: u8 = 3;

/// A control-socket connection that asked to join a group.
pub struct GroupConn {
    /// The group.
    pub group: String,
    /// The socket's reading half (nothing buffered past the request line).
    pub reader: BufReader<OwnedReadHalf>,
    /// Its writing half.
    pub writer: OwnedWriteHalf,
}

/// The join request line (`{"cmd":"group-join","group":"leases"}`).
#[derive(serde::Deserialize)]
pub struct JoinRequest {
    /// Must be "group-join".
    pub cmd: String,
    /// The group.
    pub group: String,
}

impl JoinRequest {
    /// The group named by `line`, if it is a join request.
    pub fn parse(line: &str) -> Option<String> {
        serde_json::from_str::<JoinRequest>(line).ok().filter(|r| r.cmd == "group-join").map(|r| r.group)
    }
}

/// The running group service.
pub struct Groups {
    router: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl Groups {
    /// Stop routing and drop the membership handle this service holds (so the daemon can leave).
    pub async fn shutdown(self) {
        self.router.abort();
        let _ = self.router.await;
        // The sender ends once the router's queue is gone; bounded anyway.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sender).await;
    }
}

/// Splits the membership events: group messages are consumed here; every other event (views
/// included) comes out of the returned receiver unchanged, in order. Joining connections go
/// into the returned sender.
pub fn start(
    mut events: mpsc::UnboundedReceiver<Event>,
    handle: Arc<ClusterHandle>,
    local: u32,
) -> (mpsc::UnboundedReceiver<Event>, mpsc::UnboundedSender<GroupConn>, Groups) {
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<GroupConn>();
    let (bcast_tx, mut bcast_rx) = mpsc::unbounded_channel::<Bytes>();
    // One sender task keeps this node's group messages in FIFO order on the channel.
    let sender = tokio::spawn(async move {
        while let Some(p) = bcast_rx.recv().await {
            let mut tries = 0;
            loop {
                match handle.broadcast(p.clone()).await {
                    Ok(_) => break,
                    Err(e) if tries < 200 => {
                        // Outbox full (or between views): the channel drains in milliseconds.
                        tries += 1;
                        debug!(error = %e, "group message not accepted yet; retrying");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "group message dropped by the cluster channel");
                        break;
                    }
                }
            }
        }
    });
    let router = tokio::spawn(async move {
        let (local_tx, mut local_rx) = mpsc::unbounded_channel::<FromLocal>();
        let mut r = Router { local, quorate: false, groups: BTreeMap::new(), locals: HashMap::new(), next_member: 1, bcast: bcast_tx, local_tx };
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    None => return,
                    Some(Event::Delivered { origin, payload, .. }) if payload.starts_with(TAG) => r.on_delivered(origin.0, &payload),
                    Some(ev) => {
                        match &ev {
                            Event::ViewInstalled { members, .. } => r.on_view(members.iter().map(|m| m.node.0).collect()),
                            Event::QuorumGained { .. } => {
                                r.quorate = true;
                                r.announce();
                            }
                            Event::QuorumLost => r.quorate = false,
                            _ => {}
                        }
                        if out_tx.send(ev).is_err() {
                            return;
                        }
                    }
                },
                Some(c) = conn_rx.recv() => r.on_conn(c),
                Some(m) = local_rx.recv() => r.on_local(m),
            }
        }
    });
    (out_rx, conn_tx, Groups { router, sender })
}

enum FromLocal {
    Mcast(u64, Vec<u8>),
    Closed(u64),
}

struct Local {
    group: String,
    joined: bool,
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

struct Router {
    local: u32,
    /// Local processes join only in a quorate view: a gateway that restarts must not see a group
    /// of its own (and serve without the others' leases) before its node merged with the cluster.
    quorate: bool,
    groups: BTreeMap<String, BTreeSet<MemberId>>,
    locals: HashMap<u64, Local>,
    next_member: u64,
    bcast: mpsc::UnboundedSender<Bytes>,
    local_tx: mpsc::UnboundedSender<FromLocal>,
}

fn encode(kind: u8, group: &str, member: u64, payload: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(TAG.len() + 10 + group.len() + payload.len());
    b.extend_from_slice(TAG);
    b.push(kind);
    b.push(group.len() as u8);
    b.extend_from_slice(group.as_bytes());
    b.extend_from_slice(&member.to_be_bytes());
    b.extend_from_slice(payload);
    Bytes::from(b)
}

fn decode(b: &[u8]) -> Option<(u8, &str, u64, &[u8])> {
    let b = b.strip_prefix(TAG)?;
    let kind = *b.first()?;
    let glen = usize::from(*b.get(1)?);
    let group = std::str::from_utf8(b.get(2..2 + glen)?).ok()?;
    let member = u64::from_be_bytes(b.get(2 + glen..10 + glen)?.try_into().ok()?);
    Some((kind, group, member, &b[10 + glen..]))
}

impl Router {
    fn on_conn(&mut self, c: GroupConn) {
        let GroupConn { group, mut reader, mut writer } = c;
        if !valid_group_name(&group) {
            tokio::spawn(async move {
                let _ = writer.write_all(b"{\"error\":\"group names are 1-32 characters of [A-Za-z0-9._-]\"}\n").await;
            });
            return;
        }
        let id = self.next_member;
        self.next_member += 1;
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let hello = format!("{{\"ok\":true,\"node\":{},\"member\":{id}}}\n", self.local);
        tokio::spawn(async move {
            if writer.write_all(hello.as_bytes()).await.is_err() {
                return;
            }
            while let Some(f) = rx.recv().await {
                if writer.write_all(&f).await.is_err() {
                    return;
                }
            }
        });
        let to_router = self.local_tx.clone();
        tokio::spawn(async move {
            loop {
                match group::read_frame(&mut reader).await {
                    Ok(Some((group::KIND_MCAST, body))) => {
                        if to_router.send(FromLocal::Mcast(id, body)).is_err() {
                            return;
                        }
                    }
                    Ok(Some((kind, _))) => {
                        warn!(member = id, kind, "unexpected frame from a group member; closing it");
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        debug!(member = id, error = %e, "group member connection");
                        break;
                    }
                }
            }
            let _ = to_router.send(FromLocal::Closed(id));
        });
        info!(%group, member = id, quorate = self.quorate, "local process joining group");
        if self.quorate {
            let _ = self.bcast.send(encode(JOIN, &group, id, &[]));
        }
        self.locals.insert(id, Local { group, joined: false, tx });
    }

    fn on_local(&mut self, m: FromLocal) {
        match m {
            FromLocal::Mcast(id, payload) => {
                let Some(l) = self.locals.get(&id) else { return };
                if payload.len() > MAX_MESSAGE {
                    warn!(member = id, len = payload.len(), "group message too large; dropped");
                    return;
                }
                let _ = self.bcast.send(encode(MCAST, &l.group, id, &payload));
            }
            FromLocal::Closed(id) => {
                if let Some(l) = self.locals.remove(&id) {
                    info!(group = %l.group, member = id, "local process left group");
                    let _ = self.bcast.send(encode(LEAVE, &l.group, id, &[]));
                }
            }
        }
    }

    fn notify(&mut self, group: &str) {
        let members: Vec<MemberId> = self.groups.get(group).map(|s| s.iter().copied().collect()).unwrap_or_default();
        let frame = view_frame(&members);
        for (id, l) in self.locals.iter_mut() {
            if l.group != group {
                continue;
            }
            if !l.joined && members.contains(&MemberId { node: self.local, member: *id }) {
                l.joined = true;
            }
            if l.joined {
                let _ = l.tx.send(frame.clone());
            }
        }
    }

    fn on_delivered(&mut self, origin: u32, payload: &[u8]) {
        let Some((kind, group, member, body)) = decode(payload) else {
            warn!(origin, "undecodable group message dropped");
            return;
        };
        let who = MemberId { node: origin, member };
        match kind {
            JOIN => {
                if self.groups.entry(group.to_string()).or_default().insert(who) {
                    self.notify(group);
                }
            }
            LEAVE => {
                if self.groups.get_mut(group).is_some_and(|s| s.remove(&who)) {
                    self.notify(group);
                }
            }
            MCAST => {
                let frame = deliver_frame(who, body);
                for l in self.locals.values() {
                    if l.joined && l.group == group {
                        let _ = l.tx.send(frame.clone());
                    }
                }
            }
            _ => warn!(origin, kind, "unknown group message kind dropped"),
        }
    }

    fn on_view(&mut self, nodes: BTreeSet<u32>) {
        let changed: Vec<String> = self
            .groups
            .iter_mut()
            .filter_map(|(g, s)| {
                let before = s.len();
                s.retain(|m| nodes.contains(&m.node));
                (s.len() != before).then(|| g.clone())
            })
            .collect();
        for g in changed {
            self.notify(&g);
        }
        if self.quorate {
            self.announce();
        }
    }

    /// (Re-)announce every local member: new members of the view learn our groups from this,
    /// and members waiting for quorum join.
    fn announce(&self) {
        for (id, l) in &self.locals {
            let _ = self.bcast.send(encode(JOIN, &l.group, *id, &[]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_encoding_round_trips_and_never_looks_like_json() {
        let b = encode(MCAST, "leases", 42, b"payload");
        assert_eq!(decode(&b), Some((MCAST, "leases", 42, &b"payload"[..])));
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_err());
        assert_eq!(decode(b"{\"claim\":1}"), None);
        assert_eq!(decode(&b[..8]), None);
    }

    #[test]
    fn join_request_is_recognised() {
        assert_eq!(JoinRequest::parse(r#"{"cmd":"group-join","group":"leases"}"#).as_deref(), Some("leases"));
        assert_eq!(JoinRequest::parse(r#"{"cmd":"status"}"#), None);
    }
}
