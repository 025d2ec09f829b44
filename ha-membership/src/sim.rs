//! Deterministic whole-cluster simulator for the membership engine.
//!
//! N engines exchange real sealed datagrams over a simulated network with seeded loss, duplication,
//! reordering (jitter), delay spikes, one-way and two-way cuts per link, crashes and restarts, graceful
//! leaves and slow nodes (their timers fire late). Time never passes by itself: the loop jumps to the
//! next delivery or wake-up. Invariants are checked after every step; a failure names the seed, and
//! `HASTACK_SIM_SEEDS=5000` runs more seeds (`HASTACK_SIM_SEED=n` replays one).

use crate::auth::Authenticator;
use crate::engine::{Engine, EngineParams, Event, NodeSpec, Timing};
use crate::quorum::QuorumSettings;
use crate::wire::{Member, NodeId, ViewId};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

/// SplitMix64: tiny, seedable, good enough for fault injection.
#[derive(Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.f64() < p
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    fn dur(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.f64())
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    order: u64,
    to: NodeId,
    link: usize,
    bytes: Bytes,
}

/// Network fault knobs.
#[derive(Clone, Debug, Default)]
pub(crate) struct NetFaults {
    pub loss: f64,
    pub dup: f64,
    pub base_delay: Duration,
    pub jitter: Duration,
    pub spike_prob: f64,
    pub spike: Duration,
    /// Directed cuts: (from, to, link); link `usize::MAX` cuts every link.
    pub cuts: BTreeSet<(NodeId, NodeId, usize)>,
}

struct SimNode {
    engine: Option<Engine>,
    boot: u64,
    deadline: Option<Instant>,
    wake: Option<Instant>,
    /// Timers fire up to this much late (an overloaded node).
    slow: Duration,
    left: bool,
    /// Ordered-channel bookkeeping of the current life.
    cur_view: Option<ViewId>,
    /// (seq, message id) delivered in the current view.
    cur_list: Vec<(u64, u64)>,
    seen: std::collections::HashSet<u64>,
    sent: Vec<u64>,
}

/// A simulated cluster.
pub(crate) struct Sim {
    pub seed: u64,
    rng: Rng,
    pub now: Instant,
    pub t0: Instant,
    params: EngineParams,
    key: Authenticator,
    nodes: BTreeMap<NodeId, SimNode>,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    pub net: NetFaults,
    history: HashMap<ViewId, Vec<Member>>,
    pub failures_declared: u64,
    pub views_installed: u64,
    pub quorum_losses: u64,
    pub link_downs: u64,
    pub log: Vec<String>,
    pub datagrams: u64,
    /// Total order of each view's channel messages (by payload id), as first delivered anywhere.
    total_order: HashMap<ViewId, BTreeMap<u64, u64>>,
    /// What was delivered in a view by members that then installed a given next view.
    #[allow(clippy::type_complexity)]
    transitions: HashMap<(ViewId, ViewId), Vec<(NodeId, BTreeMap<u64, u64>, std::collections::HashSet<u64>)>>,
    next_msg: u64,
    pub delivered: u64,
    /// Since when each node has been without the strict quorum it held before (same view).
    lapse_since: BTreeMap<NodeId, (ViewId, Instant)>,
    /// Lengths of strict-quorum lapses that ended in the same view (vote leases renewed late).
    pub lapses: Vec<Duration>,
}

impl Sim {
    pub(crate) fn new(seed: u64, nodes: Vec<NodeSpec>, quorum: QuorumSettings) -> Self {
        let t0 = Instant::now();
        let params = EngineParams {
            cluster_id: 42,
            local: nodes[0].id,
            nodes: nodes.clone(),
            timing: Timing::default(),
            quorum,
        };
        let mut sim = Sim {
            seed,
            rng: Rng::new(seed),
            now: t0,
            t0,
            params,
            key: Authenticator::from_key_material(b"simulated cluster authkey, 32+ bytes"),
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            order: 0,
            net: NetFaults { base_delay: Duration::from_micros(200), ..Default::default() },
            history: HashMap::new(),
            failures_declared: 0,
            views_installed: 0,
            quorum_losses: 0,
            link_downs: 0,
            log: Vec::new(),
            datagrams: 0,
            total_order: HashMap::new(),
            transitions: HashMap::new(),
            next_msg: 1,
            delivered: 0,
            lapse_since: BTreeMap::new(),
            lapses: Vec::new(),
        };
        for n in &nodes {
            sim.nodes.insert(
                n.id,
                SimNode {
                    engine: None,
                    boot: 0,
                    deadline: None,
                    wake: None,
                    slow: Duration::ZERO,
                    left: false,
                    cur_view: None,
                    cur_list: Vec::new(),
                    seen: Default::default(),
                    sent: Vec::new(),
                },
            );
            // Stagger start-up a little, as real daemons do.
            let at = t0 + sim.rng.dur(Duration::from_millis(5));
            sim.start(n.id, at);
        }
        sim
    }

    fn note(&mut self, s: String) {
        if self.log.len() >= 400 {
            self.log.drain(..200);
        }
        let ms = self.now.duration_since(self.t0).as_secs_f64() * 1000.0;
        self.log.push(format!("{ms:9.3}ms {s}"));
    }

    /// Start (or restart) a node with a fresh, larger boot epoch.
    pub(crate) fn start(&mut self, id: NodeId, at: Instant) {
        let mut params = self.params.clone();
        params.local = id;
        let Some(n) = self.nodes.get_mut(&id) else { return };
        n.boot += 1000;
        let boot = n.boot;
        n.left = false;
        n.cur_view = None;
        n.cur_list.clear();
        n.seen.clear();
        n.sent.clear();
        n.deadline = None;
        n.wake = None;
        match Engine::new(params, self.key.clone(), boot, at) {
            Ok(e) => n.engine = Some(e),
            Err(e) => panic!("seed {}: bad params: {e}", self.seed),
        }
        self.note(format!("node {id} started boot {boot}"));
        self.flush(id);
    }

    pub(crate) fn crash(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.engine = None;
            n.wake = None;
            n.deadline = None;
        }
        self.note(format!("node {id} crashed"));
    }

    pub(crate) fn leave(&mut self, id: NodeId) {
        let now = self.now;
        if let Some(e) = self.nodes.get_mut(&id).and_then(|n| n.engine.as_mut()) {
            e.leave(now);
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.left = true;
        }
        self.note(format!("node {id} leaves"));
        self.flush(id);
    }

    pub(crate) fn set_slow(&mut self, id: NodeId, lag: Duration) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.slow = lag;
            n.deadline = None;
        }
        self.flush(id);
    }

    pub(crate) fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Nodes running and not left.
    pub(crate) fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.engine.is_some() && !n.left)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn crashed_or_left(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.engine.is_none() || n.left)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn engine(&self, id: NodeId) -> Option<&Engine> {
        self.nodes.get(&id).and_then(|n| n.engine.as_ref())
    }

    /// Move datagrams and events out of a node, and recompute when it wants to wake.
    fn flush(&mut self, id: NodeId) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        {
            let Some(n) = self.nodes.get_mut(&id) else { return };
            let Some(e) = n.engine.as_mut() else { return };
            while let Some(t) = e.poll_transmit() {
                out.push(t);
            }
            while let Some(ev) = e.poll_event() {
                events.push(ev);
            }
            let d = e.poll_timeout();
            if d != n.deadline {
                n.deadline = d;
                let lag = if n.slow.is_zero() { Duration::ZERO } else { self.rng.dur(n.slow) };
                n.wake = d.map(|d| d + lag);
            }
        }
        for t in out {
            self.transmit(id, t.to, t.link, t.payload);
        }
        for ev in events {
            match &ev {
                Event::Delivered { view, seq, payload, .. } => self.on_delivered(id, *view, *seq, payload),
                Event::ViewInstalled { view, members } => {
                    self.on_view_change(id, *view);
                    self.views_installed += 1;
                    let ids: Vec<u32> = members.iter().map(|m| m.node.0).collect();
                    self.note(format!("node {id} installed {view} {ids:?}"));
                    if let Some(prev) = self.history.get(view) {
                        assert_eq!(
                            prev, members,
                            "seed {}: view {view} installed with two member lists\n{}",
                            self.seed,
                            self.log.join("\n")
                        );
                    } else {
                        self.history.insert(*view, members.clone());
                    }
                }
                Event::PeerFailed { node } => {
                    self.failures_declared += 1;
                    self.note(format!("node {id} declared {node} failed"));
                }
                Event::PeerSuspected { node } => self.note(format!("node {id} suspects {node}")),
                Event::QuorumGained { view } => self.note(format!("node {id} quorate in {view}")),
                Event::QuorumLost => {
                    self.quorum_losses += 1;
                    self.note(format!("node {id} lost quorum"));
                }
                Event::LinkDown { node, link } => {
                    self.link_downs += 1;
                    self.note(format!("node {id}: link {link} to {node} down"));
                }
                Event::LinkUp { .. } => {}
            }
        }
    }

    /// Total order: the k-th message a node delivers in a view is the k-th anyone delivered there.
    fn on_delivered(&mut self, id: NodeId, view: ViewId, seq: u64, payload: &Bytes) {
        self.delivered += 1;
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[..8]);
        let msg = u64::from_be_bytes(b);
        let seed = self.seed;
        self.note(format!("node {id} delivered msg {msg} as #{seq} of {view}"));
        let problem = match self.nodes.get(&id) {
            Some(n) if n.cur_view != Some(view) => Some(format!("delivered in {view} while in {:?}", n.cur_view)),
            Some(n) if n.cur_list.last().is_some_and(|&(s, _)| s >= seq) => Some("delivered out of order".to_string()),
            Some(n) if n.seen.contains(&msg) => Some(format!("delivered message {msg} twice")),
            _ => None,
        };
        if let Some(p) = problem {
            panic!("{}", self.fail(&format!("node {id} {p}")));
        }
        let Some(n) = self.nodes.get_mut(&id) else { return };
        n.seen.insert(msg);
        n.cur_list.push((seq, msg));
        let order = self.total_order.entry(view).or_default();
        match order.get(&seq) {
            Some(&other) if other != msg => {
                let log = self.log.join("\n");
                panic!("seed {seed}: node {id} delivered {msg} as #{seq} of {view}, others delivered {other}\n{log}");
            }
            Some(_) => {}
            None => {
                order.insert(seq, msg);
            }
        }
    }

    /// Virtual synchrony: members moving from view A to view B delivered the same messages in A.
    fn on_view_change(&mut self, id: NodeId, new: ViewId) {
        let seed = self.seed;
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if let Some(old) = n.cur_view {
            let mine: BTreeMap<u64, u64> = std::mem::take(&mut n.cur_list).into_iter().collect();
            let others = self.transitions.entry((old, new)).or_default();
            // Members moving together from `old` to `new` delivered the same messages there, except
            // repeats one of them had already delivered in an earlier view and rightly skipped.
            for (other, theirs, their_seen) in others.iter() {
                let missing: Vec<u64> =
                    theirs.iter().filter(|(s, m)| !mine.contains_key(s) && !n.seen.contains(m)).map(|(_, m)| *m).collect();
                let extra: Vec<u64> =
                    mine.iter().filter(|(s, m)| !theirs.contains_key(s) && !their_seen.contains(m)).map(|(_, m)| *m).collect();
                if !missing.is_empty() || !extra.is_empty() {
                    let log = self.log.join("\n");
                    panic!("seed {seed}: nodes {id} and {other} moved {old} -> {new}; {id} lacks {missing:?}, {other} lacks {extra:?}\n{log}");
                }
            }
            others.push((id, mine, n.seen.clone()));
        }
        n.cur_list.clear();
        n.cur_view = Some(new);
    }

    /// Broadcast a uniquely numbered message from `id`.
    pub(crate) fn broadcast(&mut self, id: NodeId) -> Option<u64> {
        let msg = self.next_msg;
        let now = self.now;
        let mut payload = msg.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0xAB; 24]);
        let n = self.nodes.get_mut(&id)?;
        let e = n.engine.as_mut()?;
        if n.left {
            return None;
        }
        e.broadcast(now, Bytes::from(payload)).ok()?;
        n.sent.push(msg);
        self.next_msg += 1;
        self.note(format!("node {id} broadcasts msg {msg}"));
        self.flush(id);
        Some(msg)
    }

    /// Every live node delivered its own messages, and every message in `all` was delivered by every live node.
    pub(crate) fn channel_settled(&self, all: &[u64]) -> bool {
        self.live().iter().all(|id| {
            let n = &self.nodes[id];
            n.sent.iter().all(|m| n.seen.contains(m)) && all.iter().all(|m| n.seen.contains(m))
        })
    }

    fn transmit(&mut self, from: NodeId, to: NodeId, link: usize, bytes: Bytes) {
        self.datagrams += 1;
        if self.net.cuts.contains(&(from, to, link)) || self.net.cuts.contains(&(from, to, usize::MAX)) {
            return;
        }
        if self.rng.chance(self.net.loss) {
            return;
        }
        let copies = if self.rng.chance(self.net.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut delay = self.net.base_delay + self.rng.dur(self.net.jitter);
            if self.rng.chance(self.net.spike_prob) {
                delay += self.rng.dur(self.net.spike);
            }
            self.order += 1;
            self.queue.push(Reverse(InFlight {
                at: self.now + delay,
                order: self.order,
                to,
                link,
                bytes: bytes.clone(),
            }));
        }
    }

    /// Advance to the next delivery or wake-up, no further than `limit`. Returns false at the limit.
    pub(crate) fn step(&mut self, limit: Instant) -> bool {
        let next_msg = self.queue.peek().map(|Reverse(m)| m.at);
        let next_wake = self.nodes.values().filter_map(|n| n.wake).min();
        let t = match (next_msg, next_wake) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(t) => t,
                None => {
                    self.now = limit;
                    return false;
                }
            },
        };
        if t > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        let mut touched = BTreeSet::new();
        while self.queue.peek().is_some_and(|Reverse(m)| m.at <= now) {
            let Some(Reverse(m)) = self.queue.pop() else { break };
            if let Some(e) = self.nodes.get_mut(&m.to).and_then(|n| n.engine.as_mut()) {
                e.handle_datagram(now, m.link, &m.bytes);
                touched.insert(m.to);
            }
        }
        let due: Vec<NodeId> =
            self.nodes.iter().filter(|(_, n)| n.wake.is_some_and(|w| w <= now)).map(|(id, _)| *id).collect();
        for id in due {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.deadline = None; // force a fresh lag draw
                if let Some(e) = n.engine.as_mut() {
                    e.handle_timeout(now);
                }
            }
            touched.insert(id);
        }
        for id in touched {
            self.flush(id);
        }
        self.check_invariants();
        self.track_lapses();
        true
    }

    /// Record how long strict-quorum lapses inside one view last.
    fn track_lapses(&mut self) {
        let now = self.now;
        for (id, n) in &self.nodes {
            let Some(e) = &n.engine else {
                self.lapse_since.remove(id);
                continue;
            };
            let view = e.view().map(|v| v.id);
            let strict = e.quorate_at(now);
            match (self.lapse_since.get(id).copied(), view) {
                (Some((v, since)), Some(cur)) if v == cur => {
                    if strict {
                        self.lapses.push(now - since);
                        self.lapse_since.remove(id);
                    }
                }
                (_, Some(cur)) if !strict && e.quorate() => {
                    self.lapse_since.insert(*id, (cur, now));
                }
                _ => {
                    self.lapse_since.remove(id);
                }
            }
        }
    }

    pub(crate) fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
    }

    /// Run until `pred` holds (checked after each step) or `d` passes; returns the time it took.
    pub(crate) fn run_until(&mut self, d: Duration, mut pred: impl FnMut(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        let limit = self.now + d;
        loop {
            if pred(self) {
                return Some(self.now.duration_since(start));
            }
            if !self.step(limit) {
                return pred(self).then(|| self.now.duration_since(start));
            }
        }
    }

    /// Every live node holds the same view, whose members are exactly the live nodes.
    pub(crate) fn converged(&self) -> bool {
        let live = self.live();
        let mut ids = None;
        for id in &live {
            let Some(v) = self.engine(*id).and_then(|e| e.view()) else { return false };
            let members: Vec<NodeId> = v.members.iter().map(|m| m.node).collect();
            if members != live {
                return false;
            }
            match ids {
                None => ids = Some(v.id),
                Some(x) if x != v.id => return false,
                _ => {}
            }
        }
        true
    }

    /// Converged, every live node sees every other live node alive, and no view change is under way.
    pub(crate) fn settled(&self) -> bool {
        let live = self.live();
        self.converged()
            && live.iter().all(|id| {
                self.engine(*id).is_some_and(|e| {
                    let st = e.status();
                    // Not blocked: no view proposal under way.
                    !st.channel_blocked
                        && st
                            .peers
                            .iter()
                            .filter(|p| live.contains(&p.node))
                            .all(|p| p.state == crate::engine::PeerState::Alive)
                })
            })
    }

    /// Safety, checked after every step.
    fn check_invariants(&self) {
        // 1. Same view id, same members (also checked against all history when installed).
        let mut held: HashMap<ViewId, &Vec<Member>> = HashMap::new();
        let mut quorate: Vec<(NodeId, ViewId, BTreeSet<NodeId>)> = Vec::new();
        let mut strict: Vec<(NodeId, ViewId)> = Vec::new();
        let mut strict_members: Vec<(NodeId, ViewId, BTreeSet<NodeId>)> = Vec::new();
        for (id, n) in &self.nodes {
            let Some(e) = &n.engine else { continue };
            let Some(v) = e.view() else { continue };
            if let Some(m) = held.insert(v.id, &v.members) {
                assert_eq!(m, &v.members, "seed {}: view {} differs between holders", self.seed, v.id);
            }
            assert!(
                v.members.iter().any(|m| m.node == *id),
                "seed {}: node {id} holds view {} without being in it",
                self.seed,
                v.id
            );
            if e.quorate_reported_at(self.now) {
                quorate.push((*id, v.id, v.members.iter().map(|m| m.node).collect()));
            }
            if e.quorate_at(self.now) {
                strict.push((*id, v.id));
                strict_members.push((*id, v.id, v.members.iter().map(|m| m.node).collect()));
            }
            // The witness is vote-only: it never coordinates (nor sequences) a view with a node in it.
            let witness = |n: NodeId| self.params.nodes.iter().any(|s| s.id == n && s.witness);
            if witness(v.id.coordinator) && v.members.iter().any(|m| !witness(m.node)) {
                panic!("{}", self.fail(&format!("witness {} coordinates view {} with nodes in it", v.id.coordinator, v.id)));
            }
        }
        // 2. At most one quorate partition, strictly: at this instant, every node that holds the
        //    strict quorum (fresh vote leases carrying votequorum's threshold in its installed
        //    view, `Engine::quorate_at(now)`, evaluated at `now` even for a node whose timers are
        //    late) holds the same view. Exempt by design: votequorum's two_node mode (one vote of
        //    two is quorate on both sides of a split; votequorum relies on fencing there), which no
        //    chaos suite uses.
        let two_node = self.params.quorum.two_node && self.params.nodes.iter().map(|n| n.votes).sum::<u32>() == 2;
        if !two_node
            && let Some((first, v0)) = strict.first()
            && let Some((other, v)) = strict.iter().find(|(_, v)| v != v0)
        {
            panic!(
                "{}",
                self.fail(&format!(
                    "two quorate partitions: node {first} quorate in view {v0}, node {other} quorate in view {v}: {strict:?}"
                ))
            );
        }
        // 3. The reported flag (`Engine::quorate`, what QuorumGained/QuorumLost announce, kept
        //    through brief lapses of the strict quorum; evaluated at `now` as the node's timers
        //    would if they fired on time): a node reporting quorum is a member of every view in
        //    which another node holds the strict quorum (a consumer never acts on a quorum that
        //    excludes a node which still believes itself quorate), and of two nodes reporting
        //    quorum in different views one is a member of the other's (the one whose strict
        //    quorum ended first, on its way to that view; a hand-over goes through it).
        if !two_node {
            for a in &quorate {
                for b in strict_members.iter().filter(|b| b.0 != a.0 && b.1 != a.1) {
                    if !b.2.contains(&a.0) {
                        panic!(
                            "{}",
                            self.fail(&format!(
                                "node {} reports quorum in {} {:?} while node {} holds the strict quorum in {} {:?} without it",
                                a.0, a.1, a.2, b.0, b.1, b.2
                            ))
                        );
                    }
                }
            }
            for (i, a) in quorate.iter().enumerate() {
                for b in quorate[i + 1..].iter().filter(|b| b.1 != a.1) {
                    if !b.2.contains(&a.0) && !a.2.contains(&b.0) {
                        panic!(
                            "{}",
                            self.fail(&format!(
                                "nodes {} and {} report quorum in {} {:?} and {} {:?}, neither in the other's view",
                                a.0, b.0, a.1, a.2, b.1, b.2
                            ))
                        );
                    }
                }
            }
        }
    }

    pub(crate) fn heal(&mut self) {
        self.net = NetFaults { base_delay: Duration::from_micros(200), ..Default::default() };
        for id in self.ids() {
            self.set_slow(id, Duration::ZERO);
        }
        self.note("network healed".into());
    }

    pub(crate) fn fail(&self, what: &str) -> String {
        format!("seed {}: {what}\nlast events:\n{}", self.seed, self.log.join("\n"))
    }
}

/// Cluster shapes the issue asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    TwoNodesWitness,
    Three,
    Five,
}

pub(crate) fn specs(shape: Shape, links: usize) -> (Vec<NodeSpec>, QuorumSettings) {
    let node = |id: u32, witness: bool| NodeSpec { id: NodeId(id), votes: 1, links, witness };
    match shape {
        Shape::TwoNodesWitness => (vec![node(1, false), node(2, false), node(3, true)], QuorumSettings::default()),
        Shape::Three => ((1..=3).map(|i| node(i, false)).collect(), QuorumSettings::default()),
        Shape::Five => ((1..=5).map(|i| node(i, false)).collect(), QuorumSettings::default()),
    }
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("HASTACK_SIM_SEED")
        && let Ok(n) = s.parse()
    {
        return vec![n];
    }
    let n = std::env::var("HASTACK_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (0..n).collect()
}

const FORM_WITHIN: Duration = Duration::from_millis(500);
const CONVERGE_WITHIN: Duration = Duration::from_secs(2);

fn form(sim: &mut Sim) {
    if sim.run_until(FORM_WITHIN, Sim::converged).is_none() {
        panic!("{}", sim.fail("cluster did not form"));
    }
}

/// Random faults for a while, then heal; every live node must end in one view.
fn chaos(seed: u64, shape: Shape) {
    let mut rng = Rng::new(seed.wrapping_mul(7919));
    let links = 1 + rng.below(2) as usize;
    let (nodes, q) = specs(shape, links);
    let mut sim = Sim::new(seed, nodes, q);
    form(&mut sim);
    let rounds = 4 + rng.below(5);
    for _ in 0..rounds {
        let ids = sim.ids();
        let pick = |rng: &mut Rng| ids[rng.below(ids.len() as u64) as usize];
        match rng.below(11) {
            0 => {
                // Two-way partition into a random side and the rest.
                let side: Vec<NodeId> = ids.iter().copied().filter(|_| rng.chance(0.5)).collect();
                for a in &ids {
                    for b in &ids {
                        if side.contains(a) != side.contains(b) {
                            sim.net.cuts.insert((*a, *b, usize::MAX));
                        }
                    }
                }
                sim.note(format!("partition {side:?} | rest"));
            }
            1 => {
                let (a, b) = (pick(&mut rng), pick(&mut rng));
                sim.net.cuts.insert((a, b, usize::MAX));
                sim.note(format!("one-way cut {a}->{b}"));
            }
            2 => {
                let (a, b, l) = (pick(&mut rng), pick(&mut rng), rng.below(links as u64) as usize);
                sim.net.cuts.insert((a, b, l));
                sim.net.cuts.insert((b, a, l));
                sim.note(format!("link {l} cut {a}<->{b}"));
            }
            3 => {
                sim.net.loss = rng.f64() * 0.4;
                sim.note(format!("loss {:.2}", sim.net.loss));
            }
            4 => {
                sim.net.dup = rng.f64() * 0.3;
                sim.net.jitter = rng.dur(Duration::from_millis(20));
                sim.note("duplication + reordering".into());
            }
            5 => {
                sim.net.spike_prob = rng.f64() * 0.1;
                sim.net.spike = Duration::from_millis(100);
                sim.note("delay spikes".into());
            }
            6 | 7 => {
                let live = sim.live();
                if live.len() > 1 {
                    let v = live[rng.below(live.len() as u64) as usize];
                    sim.crash(v);
                }
            }
            8 => {
                let down = sim.crashed_or_left();
                if let Some(&v) = down.first() {
                    let now = sim.now;
                    sim.start(v, now);
                }
            }
            9 => {
                let v = pick(&mut rng);
                let lag = rng.dur(Duration::from_millis(80));
                sim.set_slow(v, lag);
                sim.note(format!("node {v} slow (timers up to {lag:?} late)"));
            }
            _ => {
                let live = sim.live();
                if live.len() > 1 {
                    let v = live[rng.below(live.len() as u64) as usize];
                    sim.leave(v);
                }
            }
        }
        for _ in 0..rng.below(6) {
            let live = sim.live();
            if !live.is_empty() {
                sim.broadcast(live[rng.below(live.len() as u64) as usize]);
            }
        }
        let d = Duration::from_millis(50 + rng.below(250));
        sim.run_for(d);
    }
    sim.heal();
    let now = sim.now;
    for id in sim.crashed_or_left() {
        sim.crash(id);
        sim.start(id, now);
    }
    if sim.run_until(CONVERGE_WITHIN, Sim::settled).is_none() {
        panic!("{}", sim.fail(&format!("no single view {CONVERGE_WITHIN:?} after heal")));
    }
    // Quorate once each node hears the members of the view (a restarted node may be in the view
    // before it heard everyone's heartbeat).
    let all_quorate =
        |s: &Sim| s.live().iter().all(|id| s.engine(*id).is_some_and(|e| e.quorate() && e.quorate_at(s.now)));
    if sim.run_until(Duration::from_millis(100), all_quorate).is_none() || !sim.converged() {
        panic!("{}", sim.fail("not every node quorate in one view 100 ms after convergence"));
    }
    // The channel works again: every origin delivers its own messages, and new ones reach everyone.
    let fresh: Vec<u64> = sim.live().into_iter().filter_map(|id| sim.broadcast(id)).collect();
    if sim.run_until(CONVERGE_WITHIN, |s| s.channel_settled(&fresh)).is_none() {
        panic!("{}", sim.fail("channel did not settle after heal"));
    }
    if std::env::var_os("HASTACK_SIM_VERBOSE").is_some() {
        eprintln!(
            "seed {seed} {shape:?} links {links}: {} views, {} delivered, {} failures declared, {} datagrams, {:?} simulated",
            sim.views_installed,
            sim.delivered,
            sim.failures_declared,
            sim.datagrams,
            sim.now.duration_since(sim.t0)
        );
        if std::env::var_os("HASTACK_SIM_VERBOSE").is_some_and(|v| v == "2") {
            eprintln!("{}", sim.log.join("\n"));
        }
    }
}

/// Faults below tolerance: no failure may be declared and no view may change.
fn calm(seed: u64, shape: Shape) {
    if let Err(e) = calm_with(seed, shape, 0.05) {
        panic!("{e}");
    }
}

/// One calm run at `loss`; the strict-quorum lapses seen, or what went wrong.
fn calm_with(seed: u64, shape: Shape, loss: f64) -> Result<Vec<Duration>, String> {
    let mut rng = Rng::new(seed.wrapping_mul(104_729));
    let links = 1 + rng.below(2) as usize;
    let (nodes, q) = specs(shape, links);
    let mut sim = Sim::new(seed, nodes, q);
    form(&mut sim);
    let views_before = sim.views_installed;
    let failures_before = sim.failures_declared;
    let losses_before = sim.quorum_losses;
    sim.net.loss = loss;
    sim.net.dup = 0.02;
    sim.net.jitter = Duration::from_millis(3);
    let slow = sim.ids()[rng.below(sim.ids().len() as u64) as usize];
    sim.set_slow(slow, Duration::from_millis(8));
    if links == 2 {
        // Losing one of two links changes nothing.
        let ids = sim.ids();
        sim.net.cuts.insert((ids[0], ids[1], 0));
        sim.net.cuts.insert((ids[1], ids[0], 0));
    }
    let downs_before = sim.link_downs;
    sim.lapses.clear();
    sim.run_for(Duration::from_millis(1500));
    if links == 2 && sim.link_downs < downs_before + 2 {
        return Err(sim.fail("the cut link was not reported down at both ends"));
    }
    if sim.failures_declared != failures_before
        || sim.views_installed != views_before
        || sim.quorum_losses != losses_before
    {
        return Err(sim.fail(&format!(
            "false failure under tolerable faults ({:.0}% loss): {} failures, {} views, {} quorum losses",
            loss * 100.0,
            sim.failures_declared - failures_before,
            sim.views_installed - views_before,
            sim.quorum_losses - losses_before
        )));
    }
    Ok(std::mem::take(&mut sim.lapses))
}

/// Statistics, not a check: how often and how long the strict quorum lapses under loss (vote
/// leases renewed late). `HASTACK_SIM_SEEDS` seeds per shape; run with `--ignored --nocapture`.
#[test]
#[ignore]
fn lapse_statistics() {
    for loss in [0.05, 0.10, 0.15] {
        let mut all = Vec::new();
        let mut failed = 0;
        let n = seeds(200).len();
        for s in seeds(200) {
            for (i, shape) in [Shape::Three, Shape::Five, Shape::TwoNodesWitness].into_iter().enumerate() {
                match calm_with(3_000_000 + 1_000_000 * i as u64 + s, shape, loss) {
                    Ok(l) => all.extend(l),
                    Err(_) => failed += 1,
                }
            }
        }
        all.sort();
        let pick = |q: f64| all.get(((all.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
        eprintln!(
            "loss {:.0}%: {} runs, {failed} with a reported loss or view change; {} lapses, p50 {:?} p90 {:?} p99 {:?} max {:?}",
            loss * 100.0,
            3 * n,
            all.len(),
            pick(0.5),
            pick(0.9),
            pick(0.99),
            all.last().copied().unwrap_or_default()
        );
    }
}

#[test]
fn chaos_two_nodes_and_witness() {
    for s in seeds(100) {
        chaos(s, Shape::TwoNodesWitness);
    }
}

#[test]
fn chaos_three_nodes() {
    for s in seeds(100) {
        chaos(1_000_000 + s, Shape::Three);
    }
}

#[test]
fn chaos_five_nodes() {
    for s in seeds(40) {
        chaos(2_000_000 + s, Shape::Five);
    }
}

#[test]
fn calm_no_false_failures() {
    for s in seeds(12) {
        calm(3_000_000 + s, Shape::Three);
        calm(4_000_000 + s, Shape::Five);
        calm(5_000_000 + s, Shape::TwoNodesWitness);
    }
}

/// A crash is committed within the detection time, and the survivors hold the strict quorum in the
/// new view right after: the crashed node's vote leases ran out before it was declared failed, so
/// the quiet period costs nothing.
#[test]
fn crash_detected_and_committed_quickly() {
    let mut times = Vec::new();
    let mut quorum_after = Vec::new();
    let mut failover = Vec::new();
    for s in seeds(20) {
        let shape = if s % 2 == 0 { Shape::Three } else { Shape::TwoNodesWitness };
        let (nodes, q) = specs(shape, 1);
        let mut sim = Sim::new(6_000_000 + s, nodes, q);
        form(&mut sim);
        sim.run_for(Duration::from_millis(100 + s % 10));
        let victim = NodeId(1 + (s % 2) as u32 + if matches!(shape, Shape::Three) { (s % 3 == 0) as u32 } else { 0 });
        sim.crash(victim);
        let t = sim
            .run_until(Duration::from_millis(500), Sim::converged)
            .unwrap_or_else(|| panic!("{}", sim.fail("crash not committed within 500 ms")));
        times.push(t);
        let strict = |s: &Sim| s.live().iter().all(|id| s.engine(*id).is_some_and(|e| e.quorate_at(s.now) && e.quorate()));
        let q = sim
            .run_until(Duration::from_millis(100), strict)
            .unwrap_or_else(|| panic!("{}", sim.fail("survivors not quorate in the new view")));
        // At most the grace's part of the quiet period: the crashed node's leases themselves ran
        // out before it was declared failed.
        assert!(q <= Duration::from_millis(12), "{}", sim.fail(&format!("quorum {q:?} after the new view")));
        quorum_after.push(q);
        failover.push(t + q);
    }
    times.sort();
    quorum_after.sort();
    failover.sort();
    eprintln!("detection+commit times after a crash: {times:?}; then strict quorum after {quorum_after:?}");
    let median = times[times.len() / 2];
    assert!(median <= Duration::from_millis(100), "median detection {median:?} ({times:?})");
    let median = failover[failover.len() / 2];
    eprintln!("crash -> quorate new view: median {median:?}, all {failover:?}");
    assert!(median <= Duration::from_millis(50), "median crash -> quorate new view {median:?} ({failover:?})");
}

#[test]
fn graceful_leave_commits_at_once() {
    let (nodes, q) = specs(Shape::Five, 1);
    let mut sim = Sim::new(7, nodes, q);
    form(&mut sim);
    sim.leave(NodeId(1));
    let t = sim
        .run_until(Duration::from_millis(500), Sim::converged)
        .unwrap_or_else(|| panic!("{}", sim.fail("leave not committed")));
    assert!(t < Duration::from_millis(15), "leave took {t:?}, should not wait for failure detection");
    assert_eq!(sim.failures_declared, 0);
    // No quiet period for a node that said it left: the rest hold the strict quorum at once.
    let strict = |s: &Sim| s.live().iter().all(|id| s.engine(*id).is_some_and(|e| e.quorate_at(s.now) && e.quorate()));
    let q = sim.run_until(Duration::from_millis(100), strict).unwrap_or_else(|| panic!("{}", sim.fail("no quorum after leave")));
    assert!(q <= Duration::from_millis(2), "quorum {q:?} after the leave's view");
}

#[test]
fn partition_one_two_keeps_majority_quorate() {
    let (nodes, q) = specs(Shape::Three, 1);
    let mut sim = Sim::new(8, nodes, q);
    form(&mut sim);
    for b in [2, 3] {
        sim.net.cuts.insert((NodeId(1), NodeId(b), usize::MAX));
        sim.net.cuts.insert((NodeId(b), NodeId(1), usize::MAX));
    }
    sim.run_for(Duration::from_millis(300));
    assert!(!sim.engine(NodeId(1)).unwrap().quorate(), "{}", sim.fail("single node still quorate"));
    assert!(sim.engine(NodeId(2)).unwrap().quorate());
    assert!(sim.engine(NodeId(3)).unwrap().quorate());
    let v1 = sim.engine(NodeId(1)).unwrap().view().unwrap().members.len();
    assert_eq!(v1, 1);
    let losses = sim.quorum_losses;
    let majority_quorate = |s: &Sim| [2, 3].iter().all(|n| s.engine(NodeId(*n)).is_some_and(|e| e.quorate()));
    sim.heal();
    let mut dropped = None;
    sim.run_until(CONVERGE_WITHIN, |s| {
        if dropped.is_none() && !majority_quorate(s) {
            dropped = Some(s.now);
        }
        false
    });
    assert!(sim.converged(), "{}", sim.fail("no heal"));
    assert!(dropped.is_none() && sim.quorum_losses == losses, "{}", sim.fail("the majority lost quorum while the cut-off node rejoined"));
}

/// The cut-off node loses the strict quorum, and then its reported flag (the grace later), before
/// the majority gains the strict quorum in a view without it: the two sides are never quorate in
/// different views at the same time, by either signal (guaranteed by the vote leases and the
/// grace added to the majority's quiet period).
#[test]
fn isolated_node_drops_quorum_before_the_majority_moves_on() {
    let mut margins = Vec::new();
    let mut reported = Vec::new();
    for s in seeds(20) {
        let (nodes, q) = specs(Shape::Three, 1);
        let mut sim = Sim::new(12_000_000 + s, nodes, q);
        form(&mut sim);
        sim.run_for(Duration::from_micros(100 + 997 * s));
        for b in [2, 3] {
            sim.net.cuts.insert((NodeId(1), NodeId(b), usize::MAX));
            sim.net.cuts.insert((NodeId(b), NodeId(1), usize::MAX));
        }
        let start = sim.now;
        let (mut lost, mut flag_lost, mut moved, mut gained) = (None, None, None, None);
        sim.run_until(Duration::from_millis(500), |sim| {
            let e1 = sim.engine(NodeId(1));
            if lost.is_none() && !e1.is_some_and(|e| e.quorate_at(sim.now)) {
                lost = Some(sim.now - start);
            }
            if flag_lost.is_none() && !e1.is_some_and(|e| e.quorate_reported_at(sim.now)) {
                flag_lost = Some(sim.now - start);
            }
            let two = |id| sim.engine(NodeId(id)).and_then(|e| e.view()).is_some_and(|v| v.members.len() == 2);
            let strict = |id| two(id) && sim.engine(NodeId(id)).is_some_and(|e| e.quorate_at(sim.now));
            if moved.is_none() && (two(2) || two(3)) {
                moved = Some(sim.now - start);
            }
            if gained.is_none() && (strict(2) || strict(3)) {
                gained = Some(sim.now - start);
            }
            lost.is_some() && flag_lost.is_some() && gained.is_some()
        })
        .unwrap_or_else(|| panic!("{}", sim.fail("partition not handled")));
        let (lost, gained) = (lost.unwrap(), gained.unwrap());
        assert!(lost < gained, "{}", sim.fail(&format!("isolated node quorate until {lost:?}, majority quorate at {gained:?}")));
        if let Some(f) = flag_lost {
            assert!(f <= gained, "{}", sim.fail(&format!("isolated node reported quorum until {f:?}, majority quorate at {gained:?}")));
        }
        margins.push(gained - lost);
        if let (Some(f), Some(m)) = (flag_lost, moved) {
            reported.push(m.as_secs_f64() * 1e3 - f.as_secs_f64() * 1e3);
        }
    }
    margins.sort();
    reported.sort_by(f64::total_cmp);
    eprintln!("majority's strict quorum minus isolated node's strict quorum loss: {margins:?}");
    eprintln!("majority's view minus isolated node's reported quorum loss (ms): {reported:?}");
}

#[test]
fn restarted_node_rejoins_with_new_boot() {
    let (nodes, q) = specs(Shape::Three, 2);
    let mut sim = Sim::new(9, nodes, q);
    form(&mut sim);
    sim.crash(NodeId(2));
    sim.run_until(Duration::from_millis(500), Sim::converged).unwrap();
    let now = sim.now;
    sim.start(NodeId(2), now);
    sim.run_until(Duration::from_millis(500), Sim::converged).unwrap_or_else(|| panic!("{}", sim.fail("no rejoin")));
    let v = sim.engine(NodeId(1)).unwrap().view().unwrap().clone();
    assert_eq!(v.members.len(), 3);
    assert_eq!(v.members[1].boot, 2000, "member entry carries the new boot");
}

#[test]
fn forged_and_replayed_datagrams_change_nothing() {
    let (nodes, q) = specs(Shape::Three, 1);
    let mut sim = Sim::new(10, nodes, q);
    form(&mut sim);
    // Capture a genuine datagram from node 2 to node 1 by running one heartbeat round by hand.
    let mut e2 = {
        let mut p = sim.params.clone();
        p.local = NodeId(2);
        Engine::new(p, sim.key.clone(), 1, sim.now).unwrap()
    };
    let genuine = std::iter::from_fn(|| e2.poll_transmit()).find(|t| t.to == NodeId(1)).unwrap();
    let now = sim.now;
    let before = sim.engine(NodeId(1)).unwrap().status();
    let n1 = sim.nodes.get_mut(&NodeId(1)).unwrap().engine.as_mut().unwrap();
    // Boot 1 is older than node 2's current boot (1000): stale.
    n1.handle_datagram(now, 0, &genuine.payload);
    let mut forged = genuine.payload.to_vec();
    forged[30] ^= 1;
    n1.handle_datagram(now, 0, &forged);
    n1.handle_datagram(now, 0, &[0u8; 3]);
    n1.handle_datagram(now, 0, &vec![0u8; 2000]);
    let after = n1.status();
    assert_eq!(after.drops.replayed, before.drops.replayed + 1);
    assert_eq!(after.drops.forged, before.drops.forged + 1);
    assert_eq!(after.drops.malformed, before.drops.malformed + 1);
    assert_eq!(after.drops.oversized, before.drops.oversized + 1);
    assert_eq!(after.view, before.view);
    assert_eq!(after.peers, before.peers);
    assert!(sim.converged());
}

/// votequorum's two_node: nobody is quorate alone at first start (wait_for_all); once both were
/// seen, the survivor of a crash stays quorate with one vote of two.
#[test]
fn two_node_mode_waits_for_all_then_survives_a_crash() {
    let node = |id: u32| NodeSpec { id: NodeId(id), votes: 1, links: 2, witness: false };
    let q = QuorumSettings { two_node: true, ..Default::default() };
    let mut sim = Sim::new(21, vec![node(1), node(2)], q);
    // Node 2 is cut off from the start: node 1 forms a view alone but must not be quorate.
    sim.net.cuts.insert((NodeId(1), NodeId(2), usize::MAX));
    sim.net.cuts.insert((NodeId(2), NodeId(1), usize::MAX));
    sim.run_for(Duration::from_millis(300));
    assert_eq!(sim.engine(NodeId(1)).unwrap().view().map(|v| v.members.len()), Some(1));
    assert!(!sim.engine(NodeId(1)).unwrap().quorate(), "quorate alone before seeing the peer");
    sim.heal();
    sim.run_until(Duration::from_millis(500), Sim::settled).unwrap_or_else(|| panic!("{}", sim.fail("no view")));
    sim.run_for(Duration::from_millis(20));
    assert!(sim.engine(NodeId(1)).unwrap().quorate() && sim.engine(NodeId(2)).unwrap().quorate());
    sim.crash(NodeId(2));
    sim.run_until(Duration::from_millis(500), Sim::converged).unwrap_or_else(|| panic!("{}", sim.fail("no commit")));
    let st = sim.engine(NodeId(1)).unwrap().status();
    assert!(st.quorum.quorate, "two_node survivor keeps quorum");
    assert_eq!(st.quorum.flags, vec!["Quorate", "WaitForAll", "2Node"]);
}

/// A one-way cut from the sequencer to a member changes no view (the others vouch for the
/// sequencer) and does not starve that member's channel: it fetches what it misses from another member.
#[test]
fn one_way_cut_from_the_sequencer_does_not_starve_a_member() {
    let (nodes, q) = specs(Shape::Three, 1);
    let mut sim = Sim::new(31, nodes, q);
    form(&mut sim);
    let views = sim.views_installed;
    sim.net.cuts.insert((NodeId(1), NodeId(3), usize::MAX));
    sim.run_for(Duration::from_millis(100));
    let msgs: Vec<u64> = (0..5).filter_map(|_| sim.broadcast(NodeId(2))).collect();
    if sim.run_until(Duration::from_secs(1), |s| s.channel_settled(&msgs)).is_none() {
        panic!("{}", sim.fail("node 3 never got the messages"));
    }
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.views_installed, views, "{}", sim.fail("a one-way cut changed the view"));
    assert_eq!(sim.failures_declared, 0);
}

/// Same seed, same run: the simulator is a reproducer.
#[test]
fn a_seed_replays_exactly() {
    let run = || {
        let (nodes, q) = specs(Shape::Five, 2);
        let mut sim = Sim::new(77, nodes, q);
        form(&mut sim);
        sim.net.loss = 0.2;
        sim.net.jitter = Duration::from_millis(5);
        sim.broadcast(NodeId(2));
        sim.crash(NodeId(1));
        sim.run_for(Duration::from_millis(300));
        sim.broadcast(NodeId(3));
        sim.run_for(Duration::from_millis(300));
        let t = sim.now - sim.t0;
        (sim.datagrams, sim.views_installed, sim.delivered, sim.failures_declared, t, sim.log.clone())
    };
    let a = run();
    let b = run();
    assert!(a.1 > 1, "the run should include view changes");
    assert_eq!(a, b);
}

#[test]
fn steady_state_is_heartbeats_only() {
    let (nodes, q) = specs(Shape::Three, 2);
    let mut sim = Sim::new(11, nodes, q);
    form(&mut sim);
    sim.run_for(Duration::from_millis(200));
    let (d0, v0) = (sim.datagrams, sim.views_installed);
    sim.run_for(Duration::from_millis(1000));
    // 3 nodes x 2 peers x 2 links x 100 heartbeats per second, plus one latency probe and its
    // answer per link and second; nothing else.
    let n = sim.datagrams - d0;
    assert!((1188 + 24..=1212 + 24).contains(&n), "{n} datagrams in a quiet second");
    let st = sim.engine(NodeId(1)).unwrap().status();
    assert_eq!(st.peers[0].rtt_us, vec![Some(400), Some(400)], "two 200 us hops");
    assert_eq!(sim.views_installed, v0);
    let st = sim.engine(NodeId(1)).unwrap().status();
    assert!(st.peers.iter().all(|p| p.links == vec![true, true]));
    assert_eq!(st.quorum.flags, vec!["Quorate"]);
    assert_eq!((st.quorum.total_votes, st.quorum.expected_votes, st.quorum.quorum), (3, 3, 2));
}

/// A one-way fault of the kinds that made views churn.
#[derive(Clone, Debug)]
pub(crate) enum OneWay {
    /// Nothing from `a` reaches `b`; `b` → `a` works.
    Cut(NodeId, NodeId),
    /// Nobody hears the node; it hears everyone.
    Mute(NodeId),
    /// The node hears nobody; everyone hears it.
    Deaf(NodeId),
    /// A random set of directed cuts.
    Random(Vec<(NodeId, NodeId)>),
}

const ONE_WAY_SETTLE: Duration = Duration::from_secs(1);
const ONE_WAY_OBSERVE: Duration = Duration::from_secs(2);
/// Arbitrary cut sets can drive the local health multiplier to its maximum (every timeout × 9).
const ONE_WAY_SETTLE_RANDOM: Duration = Duration::from_secs(4);

fn views_per_node(sim: &Sim) -> Vec<(NodeId, u64)> {
    sim.live().into_iter().filter_map(|id| sim.engine(id).map(|e| (id, e.status().stats.views_installed))).collect()
}

/// Apply a one-way fault; after `ONE_WAY_SETTLE` no node may install another view for
/// `ONE_WAY_OBSERVE`; after heal, one view of all within `CONVERGE_WITHIN`. Returns the views
/// installed (all nodes) while settling.
fn one_way(seed: u64, shape: Shape, fault: OneWay, settle: Duration) -> u64 {
    let (nodes, q) = specs(shape, 1);
    let mut sim = Sim::new(seed, nodes, q);
    form(&mut sim);
    let mut rng = Rng::new(seed.wrapping_mul(31337));
    sim.run_for(Duration::from_micros(rng.below(20_000)));
    let ids = sim.ids();
    let cuts: Vec<(NodeId, NodeId)> = match &fault {
        OneWay::Cut(a, b) => vec![(*a, *b)],
        OneWay::Mute(k) => ids.iter().filter(|o| *o != k).map(|o| (*k, *o)).collect(),
        OneWay::Deaf(k) => ids.iter().filter(|o| *o != k).map(|o| (*o, *k)).collect(),
        OneWay::Random(c) => c.clone(),
    };
    for (a, b) in &cuts {
        sim.net.cuts.insert((*a, *b, usize::MAX));
    }
    sim.note(format!("one-way fault {fault:?}"));
    let v0: u64 = views_per_node(&sim).iter().map(|x| x.1).sum();
    sim.run_for(settle);
    let before = views_per_node(&sim);
    sim.run_for(ONE_WAY_OBSERVE);
    let after = views_per_node(&sim);
    if before != after {
        panic!("{}", sim.fail(&format!("views still changing {settle:?} after {fault:?}: {before:?} -> {after:?}")));
    }
    if let OneWay::Mute(k) | OneWay::Deaf(k) = fault {
        // The node nobody hears (or that hears nobody) is out; the others stay quorate without it.
        for id in sim.live() {
            let e = sim.engine(id).expect("live");
            if id == k {
                if e.quorate() {
                    panic!("{}", sim.fail(&format!("one-way cut-off node {k} is quorate")));
                }
            } else if !e.quorate() || e.view().is_none_or(|v| v.members.iter().any(|m| m.node == k)) {
                panic!("{}", sim.fail(&format!("node {id} not quorate without {k}")));
            }
        }
    }
    let settling = after.iter().map(|x| x.1).sum::<u64>() - v0;
    sim.heal();
    if sim.run_until(CONVERGE_WITHIN, Sim::settled).is_none() {
        panic!("{}", sim.fail("no single view after the one-way fault healed"));
    }
    settling
}

fn one_way_faults(shape: Shape) -> Vec<OneWay> {
    let (nodes, _) = specs(shape, 1);
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    let mut f = Vec::new();
    for a in &ids {
        f.push(OneWay::Mute(*a));
        f.push(OneWay::Deaf(*a));
        for b in &ids {
            if a != b {
                f.push(OneWay::Cut(*a, *b));
            }
        }
    }
    f
}

#[test]
fn one_way_faults_settle() {
    for shape in [Shape::Three, Shape::Five, Shape::TwoNodesWitness] {
        for (i, fault) in one_way_faults(shape).into_iter().enumerate() {
            for s in seeds(1) {
                let seed = 20_000_000 + s * 1000 + i as u64;
                let n = one_way(seed, shape, fault.clone(), ONE_WAY_SETTLE);
                if std::env::var_os("HASTACK_SIM_VERBOSE").is_some() {
                    eprintln!("seed {seed} {shape:?} {fault:?}: {n} views while settling");
                }
            }
        }
    }
}

#[test]
fn random_one_way_cuts_settle() {
    for s in seeds(30) {
        let seed = 21_000_000 + s;
        let mut rng = Rng::new(seed);
        let shape = if s % 2 == 0 { Shape::Three } else { Shape::Five };
        let (nodes, _) = specs(shape, 1);
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let mut cuts = Vec::new();
        for a in &ids {
            for b in &ids {
                if a != b && rng.chance(0.25) {
                    cuts.push((*a, *b));
                }
            }
        }
        one_way(seed, shape, OneWay::Random(cuts), ONE_WAY_SETTLE_RANDOM);
    }
}

/// Whether every node in `ids` delivered every message in `msgs`.
fn delivered_at(sim: &Sim, ids: &[NodeId], msgs: &[u64]) -> bool {
    ids.iter().all(|id| sim.nodes.get(id).is_some_and(|n| msgs.iter().all(|m| n.seen.contains(m))))
}

/// How the direct link between nodes 1 and 2 is cut while both still reach the third party.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PairCut {
    /// Both directions.
    Both,
    /// Only 1 -> 2 (node 2 cannot hear node 1).
    OneToTwo,
    /// Only 2 -> 1 (node 1 cannot hear node 2).
    TwoToOne,
}

/// Nodes 1 and 2 lose their direct link while both still reach the third party (the witness of
/// 2+witness, node 3 of three nodes), optionally under loss. Checked:
/// - at every step (simulator invariants): at most one strict quorum, and never a node reporting
///   quorum in a view while another is quorate in a view without it; here also never both nodes
///   reporting quorum in different views;
/// - two-way cut: node 1 (the lowest id) and the third party form a view without node 2 within
///   `partition_timeout` + a view change, that view is quorate and its channel delivers, node 2 is
///   not quorate; one-way cuts: views stop changing and exactly one quorate view remains;
/// - heal: one view of all three.
///
/// Returns the time from the cut to the strict quorum in the new view (two-way cuts).
fn pair_cut(seed: u64, shape: Shape, cut: PairCut, loss: f64) -> Option<Duration> {
    let (nodes, q) = specs(shape, 1);
    let third = nodes[2].id;
    let mut sim = Sim::new(seed, nodes, q);
    form(&mut sim);
    let all_strict = |sim: &Sim| sim.ids().iter().all(|n| sim.engine(*n).is_some_and(|e| e.quorate_at(sim.now)));
    if sim.run_until(Duration::from_millis(100), all_strict).is_none() {
        panic!("{}", sim.fail("not every node holds the strict quorum after forming"));
    }
    sim.run_for(Duration::from_micros(100 + 997 * (seed % 20)));
    let (n1, n2) = (NodeId(1), NodeId(2));
    if cut != PairCut::TwoToOne {
        sim.net.cuts.insert((n1, n2, usize::MAX));
    }
    if cut != PairCut::OneToTwo {
        sim.net.cuts.insert((n2, n1, usize::MAX));
    }
    sim.net.loss = loss;
    sim.note(format!("cut {cut:?} between 1 and 2, both reach {third}, loss {loss:.2}"));
    let start = sim.now;
    let old = sim.engine(n1).and_then(|e| e.view()).map(|v| v.id);
    let mut gained = None;
    let mut watch = |sim: &Sim| {
        let view = |n: NodeId| sim.engine(n).and_then(|e| e.view()).map(|v| v.id);
        let flag = |n: NodeId| sim.engine(n).is_some_and(|e| e.quorate_reported_at(sim.now));
        if flag(n1) && flag(n2) && view(n1) != view(n2) {
            panic!("{}", sim.fail("both nodes report quorum in different views"));
        }
        if gained.is_none() && view(n1) != old && sim.engine(n1).is_some_and(|e| e.quorate_at(sim.now)) {
            gained = Some(sim.now - start);
        }
        false
    };
    // Under loss, whatever happens meanwhile must stay safe (invariants); then the loss ends (the
    // cut stays) and the outcome must settle.
    sim.run_until(Duration::from_millis(if loss > 0.0 { 700 } else { 400 }), &mut watch);
    sim.net.loss = 0.0;
    sim.run_until(Duration::from_millis(600), &mut watch);
    let before = views_per_node(&sim);
    sim.run_until(Duration::from_millis(400), &mut watch);
    if before != views_per_node(&sim) {
        panic!("{}", sim.fail(&format!("views still changing after the {cut:?} cut")));
    }
    let view = |n: NodeId| sim.engine(n).and_then(|e| e.view()).cloned();
    let flag = |n: NodeId| sim.engine(n).is_some_and(|e| e.quorate() && e.quorate_at(sim.now));
    if std::env::var_os("HASTACK_SIM_VERBOSE").is_some() {
        let state: Vec<String> = sim
            .ids()
            .into_iter()
            .map(|n| {
                let v = view(n).map(|v| format!("{} {:?}", v.id, v.members.iter().map(|m| m.node.0).collect::<Vec<_>>()));
                format!("node {n}: {} quorate {}", v.unwrap_or_default(), flag(n))
            })
            .collect();
        eprintln!("seed {seed} {shape:?} {cut:?} loss {loss:.2}: {}", state.join("; "));
    }
    match cut {
        PairCut::Both => {
            // The lowest id's side wins: node 1 and the third party, without node 2.
            let v1 = view(n1).expect("node 1 has a view");
            let ids: Vec<NodeId> = v1.members.iter().map(|m| m.node).collect();
            if ids != vec![n1, third] || !flag(n1) || !flag(third) || view(third).map(|v| v.id) != Some(v1.id) {
                panic!("{}", sim.fail(&format!("after the two-way cut node 1 holds {ids:?}, quorate {}", flag(n1))));
            }
            if sim.engine(n2).is_some_and(|e| e.quorate() || e.quorate_at(sim.now)) {
                panic!("{}", sim.fail("node 2 is quorate without node 1"));
            }
            // The channel works in the winning view.
            let msgs: Vec<u64> = [n1, third].iter().filter_map(|n| sim.broadcast(*n)).collect();
            if msgs.len() != 2 || sim.run_until(Duration::from_millis(200), |s| delivered_at(s, &[n1, third], &msgs)).is_none() {
                panic!("{}", sim.fail("the channel does not deliver in the winning view"));
            }
        }
        PairCut::OneToTwo | PairCut::TwoToOne => {
            // Exactly one quorate view, holding node 1 (the lowest id) and the third party.
            let quorate: Vec<NodeId> = sim.ids().into_iter().filter(|n| flag(*n)).collect();
            let views: BTreeSet<ViewId> = quorate.iter().filter_map(|n| view(*n).map(|v| v.id)).collect();
            if views.len() != 1 || !quorate.contains(&n1) || !quorate.contains(&third) {
                panic!("{}", sim.fail(&format!("after the {cut:?} cut quorate nodes {quorate:?} in views {views:?}")));
            }
        }
    }
    sim.heal();
    if sim.run_until(CONVERGE_WITHIN, Sim::settled).is_none() {
        panic!("{}", sim.fail("no single view after the cut healed"));
    }
    let msgs: Vec<u64> = sim.live().into_iter().filter_map(|id| sim.broadcast(id)).collect();
    if sim.run_until(CONVERGE_WITHIN, |s| s.channel_settled(&msgs)).is_none() {
        panic!("{}", sim.fail("channel did not settle after the cut healed"));
    }
    if cut == PairCut::Both && gained.is_none() {
        panic!("{}", sim.fail("two-way cut: node 1 never held the strict quorum in a new view"));
    }
    gained
}

fn pair_cut_suite(base: u64, shape: Shape) {
    let mut handovers = Vec::new();
    for s in seeds(200) {
        // Half the seeds also lose datagrams everywhere (to and from the third party too).
        let loss = if s % 2 == 1 { 0.05 + 0.3 * ((s / 2) % 8) as f64 / 8.0 } else { 0.0 };
        if let Some(t) = pair_cut(base + s, shape, PairCut::Both, loss)
            && loss == 0.0
        {
            handovers.push(t);
        }
        // One-way variants on every other seed (with and without loss, both directions).
        if s % 4 >= 2 {
            let one_way = if s % 8 < 4 { PairCut::OneToTwo } else { PairCut::TwoToOne };
            pair_cut(base + 500_000 + s, shape, one_way, loss);
        }
    }
    handovers.sort();
    if let (Some(first), Some(last)) = (handovers.first(), handovers.last()) {
        eprintln!(
            "{shape:?}: two-way 1<->2 cut -> node 1's new view strictly quorate: min {first:?} median {:?} max {last:?}",
            handovers[handovers.len() / 2]
        );
    }
}

/// Two nodes and a witness; the nodes lose their direct link (both ways, or one way), both still
/// reach the witness. The witness's vote goes to node 1's side only.
#[test]
fn witness_split_gives_quorum_to_one_side() {
    pair_cut_suite(22_000_000, Shape::TwoNodesWitness);
}

/// Three nodes; 1 and 2 lose their direct link, both still reach node 3, which sides with node 1.
#[test]
fn three_nodes_pair_cut_gives_quorum_to_one_side() {
    pair_cut_suite(23_000_000, Shape::Three);
}
