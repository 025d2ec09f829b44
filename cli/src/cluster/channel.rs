//! The membership driver seen as vip-manager's cluster channel: agreed views (with their quorum
//! flag), messages in the view's total order, and quorum lost inside a view. Messages go out through
//! one forwarding task, so the order in which the resource engine broadcasts is the order in which
//! the membership sequencer receives them.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

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
    /// Weak: the channel must not keep the membership handle (and so the leave) alive.
    handle: Weak<ClusterHandle>,
}

impl MembershipChannel {
    /// Wraps a running membership node; its handle is shared with the daemon (status).
    pub fn new(handle: Arc<ClusterHandle>, events: mpsc::UnboundedReceiver<Event>) -> Self {
        let (outgoing, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let keep = Arc::downgrade(&handle);
        tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                if let Err(e) = handle.broadcast(payload).await {
                    warn!(error = %e, "cluster channel refused a message");
                }
            }
        });
        MembershipChannel { events, ahead: VecDeque::new(), outgoing, quorate: false, handle: keep }
    }

    /// The quorum decision that follows the view at the front of `ahead`, waiting for it without
    /// taking the view off the queue: `recv` runs inside the resource driver's `select!` and may be
    /// cancelled at any await, so nothing may be held only in a local across one (the mpsc
    /// receiver's own `recv` is cancel-safe). `Some(None)`: superseded by the next view first.
    async fn decision(&mut self, view: ha_membership::ViewId) -> Option<bool> {
        loop {
            while let Ok(e) = self.events.try_recv() {
                self.ahead.push_back(e);
            }
            let decided = self.ahead.iter().skip(1).find_map(|e| match e {
                Event::QuorumGained { view: v } if v.epoch == view.epoch => Some(Some(true)),
                Event::QuorumLost => Some(Some(false)),
                Event::ViewInstalled { .. } => Some(None),
                _ => None,
            });
            if let Some(q) = decided {
                return q;
            }
            match self.events.recv().await {
                Some(e) => self.ahead.push_back(e),
                None => return Some(false),
            }
        }
    }
}

impl ClusterChannel for MembershipChannel {
    async fn recv(&mut self) -> Option<ChannelEvent> {
        loop {
            if self.ahead.is_empty() {
                let e = self.events.recv().await?;
                self.ahead.push_back(e);
            }
            // Exactly one quorum decision follows every install: QuorumGained for this view once
            // its vote leases came back (a round trip; longer only while a quiet period runs), or
            // QuorumLost. The view waits at the front of the queue for it, with what comes meanwhile
            // held behind it in order, so it reaches the resource engine with the right flag.
            let decided = match self.ahead.front() {
                Some(Event::ViewInstalled { view, .. }) => {
                    let view = *view;
                    Some(self.decision(view).await)
                }
                _ => None,
            };
            let Some(ev) = self.ahead.pop_front() else { continue };
            match ev {
                Event::ViewInstalled { view, members } => {
                    let Some(quorate) = decided.flatten() else {
                        // Superseded before its quorum was decided (two views installed back to
                        // back, as when a healed partition merges in two steps): the resource
                        // engine skips it, and the messages delivered in it, rather than taking
                        // a view that is only undecided for a non-quorate one and releasing.
                        info!(epoch = view.epoch, "view superseded before its quorum decision; skipped");
                        self.ahead.retain(|e| !matches!(e, Event::Delivered { view: v, .. } if *v == view));
                        continue;
                    };
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

    fn vote_lease_valid(&self) -> bool {
        self.handle.upgrade().is_some_and(|h| h.vote_lease_valid())
    }

    fn broadcast(&mut self, msg: &Msg) -> Result<(), ChannelError> {
        self.outgoing.send(Bytes::from(msg.encode())).map_err(|_| ChannelError("membership stopped".into()))
    }
}
