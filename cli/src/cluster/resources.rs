//! This node's side of placement: which VIPs it must hold for an agreed view, and the netlink / raw
//! socket work to hold or release them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ha_membership::Member;
use tracing::{info, warn};
use vip_manager::garp::{self, AnnounceSchedule, PacketSocket};
use vip_manager::vip::{Lease, NetlinkVips};
use vip_manager::{
    place, ClusterPolicy, Constraint, CurrentPlacement, FailCounts, NodeId, Placement, ResourceDef,
    ResourceId, ResourceKind, RunState, Timestamp, View, VipSpec,
};

/// The resource configuration every node holds identically.
#[derive(Debug, Clone, Default)]
pub struct ResourceSetup {
    /// Resources (only VIPs are actuated by this daemon for now; agents are placed and reported).
    pub resources: Vec<ResourceDef>,
    /// Constraints from the config.
    pub constraints: Vec<Constraint>,
    /// Cluster policy.
    pub policy: ClusterPolicy,
    /// Lease on which VIPs are held.
    pub lease: Lease,
    /// When announcements go out after a takeover.
    pub announce: AnnounceSchedule,
    /// How long a new holder waits when the previous holder is still a member (so it released first).
    pub handover_delay: Duration,
    /// Node ids that are vote-only witnesses (never run resources).
    pub witnesses: BTreeSet<u32>,
}

/// The incumbent of every resource derived from the view: the longest-running eligible member.
pub fn derived_current(members: &[Member], setup: &ResourceSetup) -> CurrentPlacement {
    let mut current = CurrentPlacement::new();
    let eligible = members
        .iter()
        .filter(|m| !setup.witnesses.contains(&m.node.0))
        .filter(|m| !setup.policy.standby.contains(&NodeId(m.node.0)))
        .min_by_key(|m| (m.boot, m.node));
    if let Some(m) = eligible {
        for r in &setup.resources {
            current.set(&r.id, NodeId(m.node.0), RunState::Running);
        }
    }
    current
}

/// Placement for an agreed view, as every member computes it.
pub fn compute(epoch: u64, members: &[Member], quorate: bool, setup: &ResourceSetup) -> (Placement, CurrentPlacement) {
    let view = View {
        epoch,
        members: members
            .iter()
            .filter(|m| !setup.witnesses.contains(&m.node.0))
            .map(|m| NodeId(m.node.0))
            .collect(),
        quorate,
    };
    let current = derived_current(members, setup);
    let placement = place(
        &view,
        &setup.policy,
        &setup.resources,
        &setup.constraints,
        &FailCounts::new(),
        &current,
        Timestamp(0),
    );
    (placement, current)
}

/// A VIP this node holds.
#[derive(Debug)]
struct Held {
    vip: VipSpec,
}

/// The VIPs of this node and the machinery to hold them.
pub struct LocalResources {
    local: NodeId,
    setup: ResourceSetup,
    netlink: NetlinkVips,
    held: BTreeMap<ResourceId, Held>,
    /// VIPs to add once the handover delay has passed: (resource, due).
    pending: BTreeMap<ResourceId, tokio::time::Instant>,
    /// Last placement, for status.
    pub last: Option<Placement>,
    /// Announcement tasks in flight (aborted when the VIP is released).
    announcers: BTreeMap<ResourceId, tokio::task::JoinHandle<()>>,
}

impl LocalResources {
    /// Opens netlink and removes stale VIPs (ours from an earlier life, or any configured VIP
    /// address): the daemon holds nothing before it joins.
    pub async fn start(local: u32, setup: ResourceSetup) -> anyhow::Result<Self> {
        let netlink = NetlinkVips::connect()?;
        let vips: Vec<VipSpec> = setup.resources.iter().filter_map(vip_of).cloned().collect();
        for a in netlink.remove_stale(&vips).await? {
            info!(address = ?a, "removed a stale VIP at start-up");
        }
        Ok(LocalResources {
            local: NodeId(local),
            setup,
            netlink,
            held: BTreeMap::new(),
            pending: BTreeMap::new(),
            last: None,
            announcers: BTreeMap::new(),
        })
    }

    /// Names of the resources this node holds now.
    pub fn held(&self) -> Vec<String> {
        self.held.keys().map(|r| r.0.clone()).collect()
    }

    /// The lease renewal period.
    pub fn renew_every(&self) -> Duration {
        self.setup.lease.renew_every
    }

    /// The earliest pending handover, if any.
    pub fn next_pending(&self) -> Option<tokio::time::Instant> {
        self.pending.values().min().copied()
    }

    /// Applies the placement of an agreed view: releases at once what must go, adds what comes here
    /// (after the handover delay when the previous holder is still a member).
    pub async fn apply_view(&mut self, epoch: u64, members: &[Member], quorate: bool) {
        let (placement, current) = compute(epoch, members, quorate, &self.setup);
        let member_ids: BTreeSet<u32> = members.iter().map(|m| m.node.0).collect();
        let mut want: BTreeMap<ResourceId, (VipSpec, bool)> = BTreeMap::new();
        for r in &self.setup.resources {
            let Some(vip) = vip_of(r) else { continue };
            if placement.target(&r.id) == Some(self.local) {
                // Someone else (still a member) was the incumbent: let it release first.
                let incumbent_elsewhere = current
                    .nodes(&r.id)
                    .any(|(n, _)| n != self.local && member_ids.contains(&n.0));
                want.insert(r.id.clone(), (vip.clone(), incumbent_elsewhere));
            }
        }
        let release: Vec<ResourceId> = self.held.keys().filter(|r| !want.contains_key(*r)).cloned().collect();
        for r in release {
            self.release(&r).await;
        }
        self.pending.retain(|r, _| want.contains_key(r));
        let now = tokio::time::Instant::now();
        for (r, (vip, wait)) in want {
            if self.held.contains_key(&r) {
                // Still ours: re-announce when the view changed, since a healed partition's side may
                // hold a stale neighbour entry.
                self.announce(&r, &vip).await;
                continue;
            }
            if wait && !self.setup.handover_delay.is_zero() {
                self.pending.entry(r).or_insert(now + self.setup.handover_delay);
            } else {
                self.take(&r, vip).await;
            }
        }
        self.last = Some(placement);
    }

    /// Adds the VIPs whose handover delay has passed.
    pub async fn run_pending(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<ResourceId> = self.pending.iter().filter(|(_, t)| **t <= now).map(|(r, _)| r.clone()).collect();
        for r in due {
            self.pending.remove(&r);
            if let Some(vip) = self.setup.resources.iter().find(|d| d.id == r).and_then(vip_of).cloned() {
                self.take(&r, vip).await;
            }
        }
    }

    async fn take(&mut self, r: &ResourceId, vip: VipSpec) {
        match self.netlink.add(&vip, &self.setup.lease).await {
            Ok(()) => {
                info!(resource = %r.0, address = %vip.address, interface = %vip.interface, "VIP added");
                self.held.insert(r.clone(), Held { vip: vip.clone() });
                self.announce(r, &vip).await;
            }
            Err(e) => warn!(resource = %r.0, error = %e, "adding VIP failed"),
        }
    }

    async fn announce(&mut self, r: &ResourceId, vip: &VipSpec) {
        let ifc = match self.netlink.interface(&vip.interface).await {
            Ok(i) => i,
            Err(e) => return warn!(resource = %r.0, error = %e, "no interface to announce on"),
        };
        let Some(mac) = ifc.mac else {
            return warn!(resource = %r.0, "interface has no MAC; no announcement sent");
        };
        let sock = match PacketSocket::open(ifc.index) {
            Ok(s) => s,
            Err(e) => return warn!(resource = %r.0, error = %e, "opening a packet socket"),
        };
        let frames = garp::announcement_frames(mac, vip.address);
        let schedule = self.setup.announce.clone();
        if let Some(old) = self.announcers.remove(r) {
            old.abort();
        }
        let task = tokio::spawn(async move {
            garp::announce(&sock, &frames, &schedule).await;
        });
        self.announcers.insert(r.clone(), task);
    }

    async fn release(&mut self, r: &ResourceId) {
        if let Some(task) = self.announcers.remove(r) {
            task.abort();
        }
        if let Some(h) = self.held.remove(r) {
            match self.netlink.remove(&h.vip).await {
                Ok(_) => info!(resource = %r.0, address = %h.vip.address, "VIP released"),
                Err(e) => warn!(resource = %r.0, error = %e, "removing VIP failed; its lease ends it"),
            }
        }
    }

    /// Releases every VIP at once (quorum lost, fenced, or stopping).
    pub async fn release_all(&mut self) {
        self.pending.clear();
        let all: Vec<ResourceId> = self.held.keys().cloned().collect();
        for r in all {
            self.release(&r).await;
        }
    }

    /// Renews the lease of every held VIP (re-add with NLM_F_REPLACE resets valid_lft).
    pub async fn renew(&mut self) {
        for (r, h) in &self.held {
            if let Err(e) = self.netlink.add(&h.vip, &self.setup.lease).await {
                warn!(resource = %r.0, error = %e, "renewing VIP lease failed");
            }
        }
    }
}

fn vip_of(r: &ResourceDef) -> Option<&VipSpec> {
    match &r.kind {
        ResourceKind::Vip(v) => Some(v),
        ResourceKind::Agent => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn setup() -> ResourceSetup {
        let vip = VipSpec { address: "198.18.0.100".parse::<IpAddr>().unwrap(), prefix_len: 24, interface: "eth0".into() };
        let mut def = ResourceDef::new("vip", ResourceKind::Vip(vip));
        def.stickiness = Some(vip_manager::Score::new(100));
        ResourceSetup { resources: vec![def], ..Default::default() }
    }

    fn m(node: u32, boot: u64) -> Member {
        Member { node: ha_membership::NodeId(node), boot }
    }

    #[test]
    fn the_longest_running_member_keeps_the_vip() {
        let s = setup();
        // Node 1 restarted (newest boot): node 2, the oldest, keeps the VIP.
        let (p, _) = compute(7, &[m(1, 300), m(2, 100), m(3, 200)], true, &s);
        assert_eq!(p.target(&ResourceId::new("vip")), Some(NodeId(2)));
        // Member order does not matter.
        let (q, _) = compute(7, &[m(3, 200), m(1, 300), m(2, 100)], true, &s);
        assert_eq!(p, q);
    }

    #[test]
    fn without_stickiness_the_vip_fails_back_to_the_lowest_id() {
        // Pacemaker's default stickiness is 0: the scores tie and the lowest node id wins.
        let mut s = setup();
        s.resources[0].stickiness = Some(vip_manager::Score::new(0));
        let (p, _) = compute(7, &[m(1, 300), m(2, 100), m(3, 200)], true, &s);
        assert_eq!(p.target(&ResourceId::new("vip")), Some(NodeId(1)));
    }

    #[test]
    fn no_quorum_no_vip() {
        let s = setup();
        let (p, _) = compute(3, &[m(1, 1)], false, &s);
        assert_eq!(p.target(&ResourceId::new("vip")), None);
    }

    #[test]
    fn witnesses_and_standby_nodes_never_hold() {
        let mut s = setup();
        s.witnesses.insert(9);
        s.policy.standby.insert(NodeId(1));
        let (p, _) = compute(4, &[m(9, 1), m(1, 2), m(2, 3)], true, &s);
        assert_eq!(p.target(&ResourceId::new("vip")), Some(NodeId(2)));
    }
}
