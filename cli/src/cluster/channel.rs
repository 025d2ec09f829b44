//! The membership driver seen as vip-manager's cluster channel: agreed views (with their quorum
//! flag), messages in the view's total order, and quorum lost inside a view. Messages go out through
//! one forwarding task, so the order in which the resource engine broadcasts is the order in which
//! the membership sequencer receives them.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use ha_membership::driver::ClusterHandle;
use ha_membership::from_config::WITNESS_NODE_ID;
use ha_membership::Event;
use tokio::sync::mpsc;
use tracing::{info, warn};
use vip_manager::driver::{ChannelError, ChannelEvent, ClusterChannel};
use vip_manager::engine::Msg;
use vip_manager::{NodeId, View};

/// vip-manager's channel over the membership driver.
pub struct MembershipChannel {
    events: mpsc::UnboundedReceiver<Event>,
    /// Events read ahead while looking for the quorum decision that follows a view.
    ahead: VecDeque<Event>,
    outgoing: mpsc::UnboundedSender<Bytes>,
    quorate: bool,
}

impl MembershipChannel {
    /// Wraps a running membership node; its handle is shared with the daemon (status).
    pub fn new(handle: Arc<ClusterHandle>, events: mpsc::UnboundedReceiver<Event>) -> Self {
        let (outgoing, mut rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                if let Err(e) = handle.broadcast(payload).await {
                    warn!(error = %e, "cluster channel refused a message");
                }
            }
        });
        MembershipChannel { events, ahead: VecDeque::new(), outgoing, quorate: false }
    }

    async fn next(&mut self) -> Option<Event> {
        match self.ahead.pop_front() {
            Some(e) => Some(e),
            None => self.events.recv().await,
        }
    }
}

impl ClusterChannel for MembershipChannel {
    async fn recv(&mut self) -> Option<ChannelEvent> {
        loop {
            match self.next().await? {
                Event::ViewInstalled { view, members } => {
                    // The engine decides quorum for the new view in the same step and queues the
                    // decision right behind it: read it now, so the view carries the right flag.
                    while let Ok(e) = self.events.try_recv() {
                        self.ahead.push_back(e);
                    }
                    let mut quorate = self.quorate;
                    for e in &self.ahead {
                        match e {
                            Event::QuorumGained { view: v } if v.epoch == view.epoch => quorate = true,
                            Event::QuorumLost => quorate = false,
                            Event::ViewInstalled { .. } => break,
                            _ => {}
                        }
                    }
                    self.quorate = quorate;
                    let ids: Vec<NodeId> =
                        members.iter().filter(|m| m.node != WITNESS_NODE_ID).map(|m| NodeId(m.node.0)).collect();
                    info!(epoch = view.epoch, members = ?ids, quorate, "view installed");
                    return Some(ChannelEvent::View(View { epoch: view.epoch, members: ids, quorate }));
                }
                Event::QuorumGained { view } => {
                    info!(epoch = view.epoch, "quorum gained");
                    self.quorate = true;
                }
                Event::QuorumLost => {
                    let was = std::mem::replace(&mut self.quorate, false);
                    warn!("quorum lost");
                    if was {
                        return Some(ChannelEvent::QuorumLost);
                    }
                }
                Event::Delivered { payload, origin, .. } => match Msg::decode(&payload) {
                    Ok(m) => return Some(ChannelEvent::Deliver(m)),
                    Err(e) => warn!(origin = origin.0, error = %e, "undecodable cluster message dropped"),
                },
                Event::LinkUp { node, link } => info!(peer = node.0, link, "link up"),
                Event::LinkDown { node, link } => warn!(peer = node.0, link, "link down"),
                Event::PeerSuspected { node } => info!(peer = node.0, "peer suspected"),
                Event::PeerFailed { node } => warn!(peer = node.0, "peer declared failed"),
            }
        }
    }

    fn broadcast(&mut self, msg: &Msg) -> Result<(), ChannelError> {
        self.outgoing.send(Bytes::from(msg.encode())).map_err(|_| ChannelError("membership stopped".into()))
    }
}
