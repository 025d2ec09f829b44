//! Deterministic simulation of a three-node cluster of resource engines over an idealised
//! membership layer: random partitions, heals, node crashes, daemon kill -9 / restart, SIGSTOP /
//! SIGCONT, graceful stops and resource failures, over many seeds.
//!
//! Invariants checked after every event:
//! - never two holders of a VIP among running daemons that share an installed view;
//! - a daemon in a non-quorate view holds no VIP beyond the release latency;
//! - after faults stop and everything heals: each VIP is held exactly once, where every engine's
//!   placement says, colocated with the balancer it depends on.
//!
//! The membership layer is idealised (views computed from the true topology after a detection
//! delay, one total order of messages); the real one is ha-membership's.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::cmp::Reverse;
use std::time::{Duration, Instant};

use vip_manager::engine::{Engine, EngineConfig, Msg, Output, Ticket};
use vip_manager::monitor::MonitorOutcome;
use vip_manager::transition::Action;
use vip_manager::{
    ClusterPolicy, Constraint, NodeId, OrderKind, ResourceDef, ResourceId, ResourceKind, Score,
    Timestamp, VipSpec, View,
};

const LEASE_MS: u64 = 2000;
const RELEASE_BOUND_MS: u64 = 10;
/// A daemon whose timers fire this late knows it was stopped (below the detection delay).
const STALL_THRESHOLD_MS: u64 = 15;
/// How long a resumed daemon keeps its VIPs while its view is confirmed.
const STALL_CONFIRM_MS: u64 = 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn resources() -> Vec<ResourceDef> {
    let vip = |id: &str, a: &str| {
        ResourceDef::new(
            id,
            ResourceKind::Vip(VipSpec { address: a.parse().unwrap(), prefix_len: 24, interface: "eth0".into() }),
        )
    };
    let mut lb = ResourceDef::new("lb", ResourceKind::Agent);
    lb.migration_threshold = Some(2);
    lb.failure_timeout = Some(Duration::from_secs(3));
    vec![vip("vip", "198.18.0.10"), vip("vip2", "198.18.0.11"), lb]
}

fn constraints() -> Vec<Constraint> {
    let r = ResourceId::new;
    vec![
        Constraint::Colocation { rsc: r("vip"), with: r("lb"), score: Score::INFINITY },
        Constraint::Order { first: r("lb"), then: r("vip"), kind: OrderKind::Mandatory },
        Constraint::Location { rsc: r("vip2"), node: NodeId(3), score: Score::new(50) },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Up,
    Frozen,
    Down,
}

struct Node {
    engine: Option<Engine>,
    daemon: Daemon,
    group: u32,
    /// Installed view epoch and when.
    view: Option<(View, u64)>,
    shutting_down: bool,
    lb_broken: bool,
    timer_at: Option<u64>,
    deferred: Vec<(Ticket, bool)>,
    frozen_at: u64,
}

#[derive(Debug)]
enum Ev {
    Deliver { to: NodeId, from: NodeId, epoch: u64, msg: Msg },
    ActionDone { node: NodeId, ticket: Ticket, action: Action, incarnation: u64 },
    MonitorDone { node: NodeId, rsc: ResourceId, incarnation: u64 },
    Timer { node: NodeId },
    ViewChange,
    Fault,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    base: Instant,
    nodes: BTreeMap<NodeId, Node>,
    incarnation: BTreeMap<NodeId, u64>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Ev>>,
    seq: u64,
    last_delivery: u64,
    epoch: u64,
    /// VIP -> node -> lease expiry (u64::MAX while renewed).
    holders: BTreeMap<ResourceId, BTreeMap<NodeId, u64>>,
    faults_left: u32,
    n_nodes: u32,
    settling: bool,
    log: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Self::with_nodes(seed, 3)
    }

    fn with_nodes(seed: u64, n_nodes: u32) -> Sim {
        let mut s = Sim {
            seed,
            rng: Rng(seed),
            now: 0,
            base: Instant::now(),
            nodes: BTreeMap::new(),
            incarnation: BTreeMap::new(),
            queue: BinaryHeap::new(),
            events: Vec::new(),
            seq: 0,
            last_delivery: 0,
            epoch: 0,
            holders: BTreeMap::new(),
            faults_left: 40,
            n_nodes,
            settling: false,
            log: Vec::new(),
        };
        for i in 1..=n_nodes {
            let id = NodeId(i);
            s.nodes.insert(
                id,
                Node {
                    engine: None,
                    daemon: Daemon::Down,
                    group: 0,
                    view: None,
                    shutting_down: false,
                    lb_broken: false,
                    timer_at: None,
                    deferred: Vec::new(),
                    frozen_at: 0,
                },
            );
            s.start_daemon(id);
        }
        s.schedule(5, Ev::ViewChange);
        s.schedule(300, Ev::Fault);
        s
    }

    fn cfg(id: NodeId, n_nodes: u32) -> EngineConfig {
        EngineConfig {
            local: id,
            cluster_size: n_nodes as usize,
            resources: resources(),
            constraints: constraints(),
            policy: ClusterPolicy::default(),
            monitor_interval: Duration::from_millis(200),
            monitor_timeout: Duration::from_millis(100),
            tick_every: Duration::from_millis(500),
            stall_confirm: Duration::from_millis(STALL_CONFIRM_MS),
        }
    }

    fn start_daemon(&mut self, id: NodeId) {
        // Start-up: stale VIPs are removed before joining.
        for h in self.holders.values_mut() {
            h.remove(&id);
        }
        *self.incarnation.entry(id).or_default() += 1;
        let n = self.nodes.get_mut(&id).unwrap();
        n.engine = Some(Engine::new(Self::cfg(id, self.n_nodes)));
        n.daemon = Daemon::Up;
        n.view = None;
        n.shutting_down = false;
        n.timer_at = None;
        n.deferred.clear();
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue.push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    fn inst(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn wall(&self) -> Timestamp {
        Timestamp(self.now)
    }

    fn can_talk(&self, a: NodeId, b: NodeId) -> bool {
        let (x, y) = (&self.nodes[&a], &self.nodes[&b]);
        x.daemon == Daemon::Up && y.daemon == Daemon::Up && x.group == y.group
    }

    /// Drains an engine's outputs into the world.
    fn pump(&mut self, id: NodeId) {
        loop {
            let Some(out) = self.nodes.get_mut(&id).and_then(|n| n.engine.as_mut()).and_then(|e| e.poll_output())
            else {
                break;
            };
            match out {
                Output::Broadcast(msg) => {
                    let lat = 1 + self.rng.below(2);
                    let at = (self.now + lat).max(self.last_delivery);
                    self.last_delivery = at;
                    // Delivered (at delivery time) only to members of the sender's view, and only
                    // while that view is intact: safe delivery of a virtually synchronous channel.
                    let Some((view, _)) = self.nodes[&id].view.clone() else { continue };
                    for to in view.members.clone() {
                        self.schedule(at, Ev::Deliver { to, from: id, epoch: view.epoch, msg: msg.clone() });
                    }
                }
                Output::Execute { ticket, action } => {
                    let inc = self.incarnation[&id];
                    let lat = match &action {
                        Action::AddVip { rsc, .. } => {
                            // Conservative: the address answers from the start of the add.
                            self.holders.entry(rsc.clone()).or_default().insert(id, u64::MAX);
                            1
                        }
                        Action::RemoveVip { .. } => 1,
                        // Agents are sometimes slow, so view changes land mid-action.
                        Action::StartResource { .. } | Action::StopResource { .. } => {
                            if self.rng.below(5) == 0 { 50 + self.rng.below(350) } else { 3 }
                        }
                        _ => 0,
                    };
                    self.log.push(format!("{} {id} exec {action:?}", self.now));
                    self.schedule(self.now + lat, Ev::ActionDone { node: id, ticket, action, incarnation: inc });
                }
                Output::RunMonitor(req) => {
                    let inc = self.incarnation[&id];
                    self.schedule(self.now + 1, Ev::MonitorDone { node: id, rsc: req.rsc, incarnation: inc });
                }
            }
        }
        // Timer.
        let want = self.nodes[&id].engine.as_ref().and_then(|e| e.poll_timeout()).map(|t| {
            let ms = t.saturating_duration_since(self.base).as_millis() as u64;
            ms.max(self.now)
        });
        if let Some(t) = want {
            if self.nodes[&id].timer_at != Some(t) {
                self.nodes.get_mut(&id).unwrap().timer_at = Some(t);
                self.schedule(t, Ev::Timer { node: id });
            }
        }
    }

    fn install_views(&mut self) {
        // Components of running daemons by partition group.
        let mut comps: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
        for (id, n) in &self.nodes {
            if n.daemon == Daemon::Up {
                comps.entry(n.group).or_default().push(*id);
            }
        }
        for members in comps.values() {
            let same = members.iter().all(|m| {
                self.nodes[m].view.as_ref().is_some_and(|(v, _)| {
                    let set: BTreeSet<NodeId> = v.members.iter().copied().collect();
                    set == members.iter().copied().collect()
                })
            });
            if same {
                continue;
            }
            self.epoch += 1;
            let view = View {
                epoch: self.epoch,
                members: members.clone(),
                quorate: members.len() * 2 > self.n_nodes as usize,
            };
            self.log.push(format!("{} view {view:?}", self.now));
            for m in members {
                let (now, wall) = (self.inst(), self.wall());
                let n = self.nodes.get_mut(m).unwrap();
                n.view = Some((view.clone(), self.now));
                if view.quorate {
                    // Renewals resume only under a quorate view.
                    for h in self.holders.values_mut() {
                        if let Some(e) = h.get_mut(m) {
                            if *e > self.now {
                                *e = u64::MAX;
                            }
                        }
                    }
                }
                let n = self.nodes.get_mut(m).unwrap();
                if let Some(e) = n.engine.as_mut() {
                    e.view_installed(view.clone(), now, wall);
                }
                self.pump(*m);
            }
        }
    }

    fn fault(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let id = ids[self.rng.below(ids.len() as u64) as usize];
        let kind = self.rng.below(9);
        let n = &self.nodes[&id];
        let desc;
        match (kind, n.daemon) {
            (0, _) => {
                // Random partition.
                for i in &ids {
                    let g = self.rng.below(if self.n_nodes > 3 { 3 } else { 2 }) as u32;
                    self.nodes.get_mut(i).unwrap().group = g;
                }
                desc = "partition".to_string();
            }
            (1, _) => {
                for i in &ids {
                    self.nodes.get_mut(i).unwrap().group = 0;
                }
                desc = "heal".to_string();
            }
            (2, Daemon::Up) | (2, Daemon::Frozen) => {
                // Node crash: daemon gone and the node cut off; on reboot its addresses are gone.
                self.kill(id);
                for h in self.holders.values_mut() {
                    h.remove(&id);
                }
                desc = format!("crash {id}");
            }
            (3, Daemon::Up) => {
                self.kill(id);
                desc = format!("kill -9 {id}");
            }
            (4, Daemon::Down) => {
                self.start_daemon(id);
                desc = format!("restart {id}");
            }
            (5, Daemon::Up) => {
                self.freeze(id);
                desc = format!("SIGSTOP {id}");
            }
            (6, Daemon::Frozen) => {
                self.thaw(id);
                desc = format!("SIGCONT {id}");
            }
            (7, Daemon::Up) if !n.shutting_down => {
                let wall = self.wall();
                let n = self.nodes.get_mut(&id).unwrap();
                n.shutting_down = true;
                n.engine.as_mut().unwrap().begin_shutdown(wall);
                self.pump(id);
                desc = format!("graceful stop {id}");
            }
            (8, Daemon::Up) => {
                self.nodes.get_mut(&id).unwrap().lb_broken = true;
                desc = format!("lb breaks on {id}");
            }
            _ => return,
        }
        self.log.push(format!("{} FAULT {desc}", self.now));
        let delay = 20 + self.rng.below(60);
        self.schedule(self.now + delay, Ev::ViewChange);
    }

    fn expire_renewals(&mut self, id: NodeId) {
        let until = self.now + LEASE_MS;
        for h in self.holders.values_mut() {
            if let Some(e) = h.get_mut(&id) {
                *e = (*e).min(until);
            }
        }
    }

    fn kill(&mut self, id: NodeId) {
        self.expire_renewals(id);
        let n = self.nodes.get_mut(&id).unwrap();
        n.engine = None;
        n.daemon = Daemon::Down;
        n.view = None;
        n.shutting_down = false;
    }

    fn freeze(&mut self, id: NodeId) {
        self.expire_renewals(id);
        let n = self.nodes.get_mut(&id).unwrap();
        n.daemon = Daemon::Frozen;
        n.frozen_at = self.now;
    }

    fn thaw(&mut self, id: NodeId) {
        let now = self.now;
        // The driver's lease keeper: a lease that ran out is lost, never re-added; one still
        // running is not renewed before a quorate view is installed again.
        let mut lost = Vec::new();
        for (rsc, h) in self.holders.iter_mut() {
            match h.get(&id).copied() {
                Some(e) if e <= now => {
                    h.remove(&id);
                    lost.push(rsc.clone());
                }
                Some(_) => {}
                None => lost.push(rsc.clone()),
            }
        }
        let wall = self.wall();
        let n = self.nodes.get_mut(&id).unwrap();
        n.daemon = Daemon::Up;
        let stalled = now - n.frozen_at > STALL_THRESHOLD_MS;
        let quorate_view = n.view.as_ref().is_some_and(|(v, _)| v.quorate);
        let deferred = std::mem::take(&mut n.deferred);
        if !stalled && quorate_view {
            for h in self.holders.values_mut() {
                if let Some(e) = h.get_mut(&id) {
                    *e = u64::MAX;
                }
            }
        }
        let n = self.nodes.get_mut(&id).unwrap();
        if let Some(e) = n.engine.as_mut() {
            // The driver sees its timers fire late: it was stopped; drop VIPs, wait for the view.
            if stalled {
                e.resumed_after_stall(self.base + Duration::from_millis(now), Timestamp(now));
            }
            let held: Vec<ResourceId> = e.local_resources().keys().cloned().collect();
            for r in held {
                if lost.contains(&r) {
                    e.resource_lost(&r, wall);
                }
            }
        }
        let inst = self.inst();
        for (t, ok) in deferred {
            if let Some(e) = self.nodes.get_mut(&id).unwrap().engine.as_mut() {
                e.action_finished(t, ok, inst, wall);
            }
        }
        self.pump(id);
    }

    fn step(&mut self) -> bool {
        let Some(Reverse((at, _, ix))) = self.queue.pop() else { return false };
        self.now = at;
        let ev = self.events[ix].take().unwrap();
        let (inst, wall) = (self.inst(), self.wall());
        match ev {
            Ev::Deliver { to, from, epoch, msg } => {
                let in_view = |n: &Node| n.view.as_ref().is_some_and(|(v, _)| v.epoch == epoch);
                let intact = self.nodes[&from].view.as_ref().is_some_and(|(v, _)| {
                    v.epoch == epoch
                        && v.members.iter().all(|m| self.can_talk(from, *m) && in_view(&self.nodes[m]))
                });
                if intact && self.nodes[&to].daemon == Daemon::Up {
                    if let Some(e) = self.nodes.get_mut(&to).unwrap().engine.as_mut() {
                        e.deliver(msg, inst, wall);
                    }
                    self.pump(to);
                }
            }
            Ev::ActionDone { node, ticket, action, incarnation } => {
                if self.incarnation[&node] != incarnation || self.nodes[&node].engine.is_none() {
                    return true;
                }
                if let Action::RemoveVip { rsc, .. } = &action {
                    if let Some(h) = self.holders.get_mut(rsc) {
                        h.remove(&node);
                    }
                }
                if let Action::StartResource { .. } = &action {
                    self.nodes.get_mut(&node).unwrap().lb_broken = false;
                }
                if self.nodes[&node].daemon == Daemon::Frozen {
                    self.nodes.get_mut(&node).unwrap().deferred.push((ticket, true));
                    return true;
                }
                self.nodes.get_mut(&node).unwrap().engine.as_mut().unwrap().action_finished(ticket, true, inst, wall);
                self.pump(node);
            }
            Ev::MonitorDone { node, rsc, incarnation } => {
                if self.incarnation[&node] != incarnation || self.nodes[&node].daemon == Daemon::Down {
                    return true;
                }
                if self.nodes[&node].daemon == Daemon::Frozen {
                    // The result waits in the frozen daemon's queue.
                    self.schedule(self.now + 5, Ev::MonitorDone { node, rsc, incarnation });
                    return true;
                }
                let outcome = if self.nodes[&node].lb_broken && rsc.0 == "lb" {
                    MonitorOutcome::NotRunning
                } else {
                    MonitorOutcome::Running
                };
                if let Some(e) = self.nodes.get_mut(&node).unwrap().engine.as_mut() {
                    e.monitor_result(&rsc, outcome, inst, wall);
                }
                self.pump(node);
            }
            Ev::Timer { node } => {
                let n = self.nodes.get_mut(&node).unwrap();
                if n.timer_at == Some(at) {
                    n.timer_at = None;
                }
                if n.daemon == Daemon::Up {
                    if let Some(e) = n.engine.as_mut() {
                        e.handle_timeout(inst, wall);
                    }
                    self.pump(node);
                } else if n.daemon == Daemon::Frozen {
                    n.timer_at = None;
                }
            }
            Ev::ViewChange => self.install_views(),
            Ev::Fault => {
                if self.faults_left > 0 {
                    self.faults_left -= 1;
                    self.fault();
                    let next = self.now + 50 + self.rng.below(1200);
                    self.schedule(next, Ev::Fault);
                }
            }
        }
        self.renew_leases();
        // Graceful stops finish when the node holds nothing.
        let done: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.shutting_down && n.daemon == Daemon::Up && n.engine.as_ref().is_some_and(|e| e.handed_over()))
            .map(|(i, _)| *i)
            .collect();
        for id in done {
            self.log.push(format!("{} {id} stopped gracefully", self.now));
            self.kill(id);
            if self.settling {
                self.start_daemon(id);
            }
            self.schedule(self.now + 20, Ev::ViewChange);
        }
        self.check();
        true
    }

    /// The driver's lease keeper: a running daemon renews its VIPs' leases while its engine allows
    /// it, stops renewing when it does not, and reports a lease that ran out as a lost resource.
    fn renew_leases(&mut self) {
        let now = self.now;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let n = &self.nodes[&id];
            if n.daemon != Daemon::Up {
                continue;
            }
            let Some(e) = n.engine.as_ref() else { continue };
            let allowed = e.renewals_allowed();
            let mut lost = Vec::new();
            for (rsc, h) in self.holders.iter_mut() {
                match h.get(&id).copied() {
                    Some(x) if x <= now => {
                        h.remove(&id);
                        lost.push(rsc.clone());
                    }
                    Some(x) if allowed => {
                        let _ = x;
                        h.insert(id, u64::MAX);
                    }
                    Some(u64::MAX) => {
                        h.insert(id, now + LEASE_MS);
                    }
                    _ => {}
                }
            }
            if lost.is_empty() {
                continue;
            }
            let wall = self.wall();
            if let Some(e) = self.nodes.get_mut(&id).unwrap().engine.as_mut() {
                for r in &lost {
                    e.resource_lost(r, wall);
                }
            }
            self.pump(id);
        }
    }

    fn fail(&self, what: String) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("seed {}: t={} {what}\n{}", self.seed, self.now, tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"));
    }

    fn live_holders(&self, rsc: &ResourceId) -> Vec<NodeId> {
        self.holders
            .get(rsc)
            .map(|h| h.iter().filter(|(_, e)| **e > self.now).map(|(n, _)| *n).collect())
            .unwrap_or_default()
    }

    fn check(&self) {
        for rsc in ["vip", "vip2"].map(ResourceId::new) {
            let holders = self.live_holders(&rsc);
            // Never two holders among running daemons that share an installed view.
            let mut by_epoch: BTreeMap<u64, Vec<NodeId>> = BTreeMap::new();
            for h in &holders {
                let n = &self.nodes[h];
                if n.daemon == Daemon::Up {
                    // A node installing a view that does not continue its own (it was frozen while
                    // the others moved on) releases as it installs it: allow the removal's latency.
                    if let Some((v, since)) = &n.view
                        && self.now > since + RELEASE_BOUND_MS.min(1)
                    {
                        by_epoch.entry(v.epoch).or_default().push(*h);
                    }
                }
            }
            for (e, hs) in &by_epoch {
                if hs.len() > 1 {
                    self.fail(format!("{rsc} held by {hs:?} in view {e}"));
                }
            }
            // No VIP on a non-quorate daemon beyond the release latency.
            for h in &holders {
                let n = &self.nodes[h];
                if let (Daemon::Up, Some((v, since))) = (n.daemon, &n.view) {
                    if !v.quorate && self.now > since + RELEASE_BOUND_MS {
                        self.fail(format!("{rsc} still on {h} in non-quorate view {} since {since}", v.epoch));
                    }
                }
            }
        }
    }

    fn run(&mut self) {
        let mut steps = 0u64;
        while self.step() {
            steps += 1;
            assert!(steps < 5_000_000, "seed {}: runaway simulation", self.seed);
            if self.faults_left == 0 {
                break;
            }
        }
        // Heal everything and let it settle.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.nodes.get_mut(id).unwrap().group = 0;
            match self.nodes[id].daemon {
                Daemon::Frozen => self.thaw(*id),
                Daemon::Down => self.start_daemon(*id),
                Daemon::Up => {}
            }
            self.nodes.get_mut(id).unwrap().lb_broken = false;
        }
        self.log.push(format!("{} SETTLE", self.now));
        self.settling = true;
        let settle_end = self.now + 8000;
        self.schedule(self.now + 30, Ev::ViewChange);
        while self.now < settle_end && self.step() {
            steps += 1;
            assert!(steps < 5_000_000, "seed {}: runaway simulation", self.seed);
        }
        self.check_steady();
    }

    fn check_steady(&self) {
        let engines: Vec<&Engine> = self.nodes.values().filter_map(|n| n.engine.as_ref()).collect();
        if engines.len() != self.n_nodes as usize {
            self.fail(format!("{} daemons running after settling", engines.len()));
        }
        let placements: Vec<_> = engines.iter().map(|e| e.status().placement).collect();
        for p in &placements[1..] {
            if p.as_ref().map(|p| p.targets().map(|(r, n)| (r.clone(), n)).collect::<Vec<_>>())
                != placements[0].as_ref().map(|p| p.targets().map(|(r, n)| (r.clone(), n)).collect::<Vec<_>>())
            {
                self.fail(format!("placements differ: {placements:?}"));
            }
        }
        let p = placements[0].clone().unwrap_or_else(|| self.fail("no placement".into()));
        for rsc in ["vip", "vip2"].map(ResourceId::new) {
            let holders = self.live_holders(&rsc);
            let target = p.target(&rsc);
            if holders != target.into_iter().collect::<Vec<_>>() || target.is_none() {
                self.fail(format!("{rsc}: holders {holders:?}, placement {target:?}"));
            }
        }
        // Every engine is at the same point of the same plan (a node that fell out of step would
        // ignore the others' claims and stall every handover that needs it).
        let generations: Vec<_> = engines.iter().map(|e| e.status().generation).collect();
        if generations.iter().any(|g| *g != generations[0]) {
            self.fail(format!("plan generations differ: {generations:?}"));
        }
        if let Some(e) = engines.iter().find(|e| e.status().fenced) {
            self.fail(format!("node {} still fenced after settling", e.local()));
        }
        let st = engines[0].status();
        let lb: Vec<NodeId> = st.current.nodes(&ResourceId::new("lb")).map(|(n, _)| n).collect();
        if lb != vec![p.target(&ResourceId::new("vip")).unwrap()] {
            self.fail(format!("vip not with lb: lb on {lb:?}, {p:?}"));
        }
    }
}

#[test]
fn random_faults_never_double_hold_and_converge() {
    let seeds: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let first: u64 = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for seed in first..first + seeds {
        Sim::new(seed).run();
    }
}

#[test]
fn five_nodes_with_three_way_partitions() {
    let seeds: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200) / 2;
    let first: u64 = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for seed in first..first + seeds {
        Sim::with_nodes(seed, 5).run();
    }
}

#[test]
fn graceful_stop_hands_over_within_one_round_trip() {
    // No faults: start, settle, then stop the holder of the standalone VIP gracefully and time the
    // gap between its release and the new holder's add (simulated messages take 1-2 ms).
    for seed in 1..=20 {
        let mut s = Sim::new(seed);
        s.faults_left = 0;
        s.queue.retain(|Reverse((_, _, ix))| !matches!(s.events[*ix], Some(Ev::Fault)));
        while s.now < 2000 && s.step() {}
        let vip = ResourceId::new("vip2");
        let old = s.live_holders(&vip);
        assert_eq!(old.len(), 1, "seed {seed}: settled holder");
        let old = old[0];
        let wall = s.wall();
        s.nodes.get_mut(&old).unwrap().shutting_down = true;
        s.nodes.get_mut(&old).unwrap().engine.as_mut().unwrap().begin_shutdown(wall);
        s.pump(old);
        let t0 = s.now;
        let mut released = None;
        let mut taken = None;
        while s.now < t0 + 1000 && s.step() {
            let h = s.live_holders(&vip);
            if released.is_none() && !h.contains(&old) {
                released = Some(s.now);
            }
            if taken.is_none() && h.iter().any(|n| *n != old) {
                taken = Some(s.now);
            }
        }
        let (r, t) = (released.expect("released"), taken.expect("taken over"));
        assert!(r <= t, "seed {seed}: old holder released at {r}, new took at {t}");
        // Released at once; then the Shutdown and the release's Done (one delivery), the new
        // holder's claim (one more), and the add: two message latencies of at most 2 ms + 1 ms.
        assert!(r - t0 <= 1, "seed {seed}: released {} ms after the stop began", r - t0);
        assert!(t - r <= 5, "seed {seed}: VIP absent for {} ms of simulated time\n{}", t - r, s.log.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n"));
    }
}

impl Sim {
    /// A three-node cluster without random faults, settled with one VIP holder.
    fn settled(seed: u64) -> (Sim, NodeId) {
        let mut s = Sim::new(seed);
        s.faults_left = 0;
        s.queue.retain(|Reverse((_, _, ix))| !matches!(s.events[*ix], Some(Ev::Fault)));
        while s.now < 2000 && s.step() {}
        let old = s.live_holders(&ResourceId::new("vip"));
        assert_eq!(old.len(), 1, "seed {seed}: settled holder");
        (s, old[0])
    }

    fn run_until(&mut self, t: u64) {
        while self.now < t && self.step() {}
        // Nothing left to happen (every daemon frozen): time still passes.
        self.now = self.now.max(t);
    }

    /// Advances to `t`, recording every node that held `rsc` at some point.
    fn run_watching(&mut self, t: u64, rsc: &ResourceId) -> BTreeSet<NodeId> {
        let mut seen = BTreeSet::new();
        while self.now < t && self.step() {
            seen.extend(self.live_holders(rsc));
        }
        seen
    }

    /// Stops `node` gracefully; returns how long until another node held the VIP (None: not
    /// within a second).
    fn graceful_handover(&mut self, node: NodeId) -> Option<u64> {
        let vip = ResourceId::new("vip");
        let wall = self.wall();
        let n = self.nodes.get_mut(&node).unwrap();
        n.shutting_down = true;
        n.engine.as_mut().unwrap().begin_shutdown(wall);
        self.pump(node);
        let t0 = self.now;
        while self.now < t0 + 1000 && self.step() {
            if self.live_holders(&vip).iter().any(|n| *n != node) {
                return Some(self.now - t0);
            }
        }
        None
    }
}

/// Regression (bench: `stop,graceful`, ~1 cycle in 10 handed over only after the 3 s stop
/// deadline): a node that noticed a stall while its view stayed intact ignored the claims it saw
/// while fenced and replanned alone when its probe was answered, so its plan generation ran one
/// ahead of everybody else's; every later handover that needed a step of it stalled until the next
/// view change.
#[test]
fn a_short_stall_leaves_every_node_in_step() {
    for seed in 1..=20 {
        for stalled in [1, 2, 3].map(NodeId) {
            let (mut s, holder) = Sim::settled(seed);
            // Frozen for longer than the stall threshold, thawed before any view change.
            s.freeze(stalled);
            let t = s.now + STALL_THRESHOLD_MS + 5;
            s.run_until(t);
            s.thaw(stalled);
            s.run_until(t + 100);
            let gens: Vec<_> = s.nodes.values().filter_map(|n| n.engine.as_ref()).map(|e| e.status().generation).collect();
            assert!(gens.iter().all(|g| *g == gens[0]), "seed {seed}, {stalled} stalled: generations {gens:?}");
            assert!(s.nodes.values().all(|n| !n.engine.as_ref().unwrap().status().fenced), "seed {seed}: still fenced");
            let took = s.graceful_handover(holder);
            // Agents are sometimes slow in this simulation (up to 400 ms per step); stuck is None.
            assert!(
                took.is_some(),
                "seed {seed}, {stalled} stalled, {holder} stopped: handover took {took:?} ms\n{}",
                s.log.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// The bench sequence: the holder is stopped long enough to be replaced, thawed (it rejoins), and
/// then the new holder is stopped gracefully, which needs the thawed node in every plan.
#[test]
fn graceful_stop_after_a_stop_cont_cycle_hands_over() {
    for seed in 1..=20 {
        let (mut s, first) = Sim::settled(seed);
        let vip = ResourceId::new("vip");
        s.freeze(first);
        let t = s.now + 30;
        s.schedule(t, Ev::ViewChange);
        s.run_until(t + 600);
        let second = s.live_holders(&vip).into_iter().find(|n| *n != first).expect("taken over");
        s.thaw(first);
        let t = s.now + 20;
        s.schedule(t, Ev::ViewChange);
        s.run_until(t + 300);
        let took = s.graceful_handover(second);
        assert!(took.is_some(), "seed {seed}: no handover within a second");
    }
}

/// A stall of the whole machine (every daemon frozen at once for 1.1 s, membership included, so
/// no view changes): every node notices the stall, but the view is confirmed at once and nobody
/// releases or moves anything.
#[test]
fn a_whole_machine_stall_moves_nothing() {
    for seed in 1..=20 {
        let (mut s, holder) = Sim::settled(seed);
        let vip = ResourceId::new("vip");
        let ids: Vec<NodeId> = s.nodes.keys().copied().collect();
        for id in &ids {
            s.freeze(*id);
        }
        let t = s.now + 1100;
        s.run_until(t);
        let log_from = s.log.len();
        for id in &ids {
            s.thaw(*id);
        }
        let seen = s.run_watching(s.now + 3000, &vip);
        assert_eq!(seen, BTreeSet::from([holder]), "seed {seed}: holders during recovery");
        let released: Vec<&String> = s.log[log_from..].iter().filter(|l| l.contains("RemoveVip")).collect();
        assert!(released.is_empty(), "seed {seed}: released after a whole-machine stall: {released:?}");
        assert_eq!(s.live_holders(&vip), vec![holder], "seed {seed}: lease renewed after the stall");
    }
}

/// The holder alone was frozen and replaced: on waking it gets no confirmation (its view is
/// dead) and releases within the confirmation window; it never holds the VIP in the view that
/// follows.
#[test]
fn a_replaced_holder_releases_within_the_confirmation_window() {
    for seed in 1..=20 {
        let (mut s, holder) = Sim::settled(seed);
        let vip = ResourceId::new("vip");
        s.freeze(holder);
        let t = s.now + 30;
        s.schedule(t, Ev::ViewChange);
        s.run_until(t + 200);
        // Thawed while the others' view (without it) is still installed: nothing confirms its view.
        s.thaw(holder);
        let woke = s.now;
        let mut released_at = None;
        while s.now < woke + 200 && s.step() {
            if released_at.is_none() && !s.live_holders(&vip).contains(&holder) {
                released_at = Some(s.now);
            }
        }
        let r = released_at.expect("released");
        assert!(r - woke <= STALL_CONFIRM_MS + 2, "seed {seed}: released {} ms after waking", r - woke);
    }
}
