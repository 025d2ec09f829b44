//! The replication core driven by a deterministic total-order bus (the cluster channel's
//! contract: one order of messages and views for every member), with time moved by hand.

use std::collections::{BTreeMap, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::leases::LeaseState;

fn lease(last: u8, start: u64, name: &str) -> Lease {
    Lease {
        addr: Ipv4Addr::new(198, 18, 0, last),
        hwaddr: vec![0x52, 0x54, 0, 0, 0, last],
        client_id: None,
        hostname: Some(name.into()),
        fqdn: Some(format!("{name}.lab.test")),
        start,
        expiry: start + 3600,
        state: LeaseState::Active,
        rev: start,
    }
}

fn m(node: u32) -> MemberId {
    MemberId { node, member: 1 }
}

/// Who a message is for.
#[derive(Clone, Copy)]
enum Dest {
    All,
    Others,
    To(MemberId),
}

#[derive(Clone)]
enum Item {
    /// From, for, payload.
    Msg(MemberId, Dest, Vec<u8>),
    View(Vec<MemberId>),
}

struct Node {
    core: ReplicationCore,
    applied: Vec<LogRecord>,
    done: Vec<(u64, Result<(), RepFailure>)>,
    synced: bool,
    /// Acknowledge peers' records (false: a peer whose disk never answers).
    acks: bool,
}

struct Bus {
    nodes: BTreeMap<MemberId, Node>,
    queue: VecDeque<Item>,
    group: Vec<MemberId>,
    /// The group after every queued view (joins and crashes queue their view).
    target: Vec<MemberId>,
    now: Instant,
    cfg: CoreConfig,
    /// Targeted messages reach their target only (false: every member, as with older daemons).
    targeted: bool,
}

impl Bus {
    fn new() -> Bus {
        Bus { nodes: BTreeMap::new(), queue: VecDeque::new(), group: Vec::new(), target: Vec::new(), now: Instant::now(), cfg: CoreConfig::default(), targeted: true }
    }

    fn join(&mut self, who: MemberId, leases: Vec<Lease>) {
        let mut core = ReplicationCore::new(self.cfg, leases.into_iter().map(LogRecord::Upsert));
        core.connected(who);
        self.nodes.insert(who, Node { core, applied: Vec::new(), done: Vec::new(), synced: false, acks: true });
        self.target.push(who);
        self.target.sort();
        self.queue.push_back(Item::View(self.target.clone()));
    }

    fn crash(&mut self, who: MemberId) {
        self.nodes.remove(&who);
        self.target.retain(|x| *x != who);
        self.queue.push_back(Item::View(self.target.clone()));
    }

    fn act(&mut self, who: MemberId, acts: Vec<RepAction>) {
        for a in acts {
            match a {
                RepAction::Multicast(b) => self.queue.push_back(Item::Msg(who, Dest::All, b)),
                RepAction::MulticastOthers(b) => self.queue.push_back(Item::Msg(who, Dest::Others, b)),
                RepAction::SendTo { to, payload } => self.queue.push_back(Item::Msg(who, Dest::To(to), payload)),
                RepAction::Apply { record, ack } => {
                    let Some(n) = self.nodes.get_mut(&who) else { return };
                    n.applied.push(record);
                    if let (Some((to, seq)), true) = (ack, n.acks) {
                        let more = n.core.applied(to, seq);
                        self.act(who, more);
                    }
                }
                RepAction::Complete { token, result } => {
                    if let Some(n) = self.nodes.get_mut(&who) {
                        n.done.push((token, result));
                    }
                }
                RepAction::Synced { .. } => {
                    if let Some(n) = self.nodes.get_mut(&who) {
                        n.synced = true;
                    }
                }
            }
        }
    }

    /// Deliver one queued item to the members at that point of the order.
    fn step(&mut self) -> bool {
        let Some(item) = self.queue.pop_front() else { return false };
        let now = self.now;
        match item {
            Item::View(v) => {
                self.group = v.clone();
                for who in v.clone() {
                    let acts = match self.nodes.get_mut(&who) {
                        Some(n) => n.core.on_view(v.clone(), now),
                        None => continue,
                    };
                    self.act(who, acts);
                }
            }
            Item::Msg(from, to, b) => {
                for who in self.group.clone() {
                    let skip = match to {
                        Dest::All => false,
                        Dest::Others => who == from,
                        Dest::To(t) => t != who,
                    };
                    if self.targeted && skip {
                        continue;
                    }
                    let acts = match self.nodes.get_mut(&who) {
                        Some(n) => n.core.on_deliver(from, &b, now),
                        None => continue,
                    };
                    self.act(who, acts);
                }
            }
        }
        true
    }

    fn run(&mut self) {
        let mut n = 0;
        while self.step() {
            n += 1;
            assert!(n < 10_000, "bus did not settle");
        }
    }

    fn local(&mut self, who: MemberId, token: u64, rec: LogRecord) {
        let now = self.now;
        let acts = self.nodes.get_mut(&who).expect("node").core.local_record(token, rec, now);
        self.act(who, acts);
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for who in self.nodes.keys().copied().collect::<Vec<_>>() {
            let acts = self.nodes.get_mut(&who).expect("node").core.tick(now);
            self.act(who, acts);
        }
    }

    fn node(&self, who: MemberId) -> &Node {
        &self.nodes[&who]
    }

    /// `who` is cut off: its node loses quorum (its daemon reports the group without it) and the
    /// others see it leave.
    fn cut_off(&mut self, who: MemberId) {
        let now = self.now;
        self.target.retain(|x| *x != who);
        let view = self.target.clone();
        let acts = self.nodes.get_mut(&who).expect("node").core.on_view(view.clone(), now);
        self.act(who, acts);
        self.queue.push_back(Item::View(view));
        self.run();
    }

    /// The cut healed: `who` is in the group again and takes the table (state transfer).
    fn heal(&mut self, who: MemberId) {
        self.nodes.get_mut(&who).expect("node").synced = false;
        self.target.push(who);
        self.target.sort();
        self.queue.push_back(Item::View(self.target.clone()));
        self.run();
        assert!(self.node(who).synced, "{who} synced after the heal");
    }

    /// A decision taken by `who` while it is cut off (its multicasts reach nobody).
    fn local_apart(&mut self, who: MemberId, rec: LogRecord) {
        let now = self.now;
        let _ = self.nodes.get_mut(&who).expect("node").core.local_record(u64::MAX - 1, rec, now);
    }

    /// While `cut` is cut off, gateway 1 decides `recs` (tokens 1, 2, ...); then the cut heals.
    fn decide_then_heal(&mut self, cut: MemberId, recs: &[LogRecord]) {
        for (i, r) in recs.iter().enumerate() {
            self.local(m(1), i as u64 + 1, r.clone());
        }
        self.run();
        self.heal(cut);
    }

    fn entry(&self, who: MemberId, addr: Ipv4Addr) -> Option<LogRecord> {
        self.node(who).core.entry(addr).cloned()
    }
}

/// Three gateways that all hold `leases`, then gateway 2 is cut off.
fn three_then_cut(leases: Vec<Lease>) -> Bus {
    let mut bus = Bus::new();
    for i in 1..=3 {
        bus.join(m(i), leases.clone());
    }
    bus.run();
    assert!(bus.nodes.values().all(|n| n.synced));
    bus.cut_off(m(2));
    bus
}

/// After the heal every gateway holds `expect` for its address, and no gateway was handed the
/// stale copy `old` by the rejoining one.
fn converged_on(bus: &Bus, expect: &LogRecord, old: &LogRecord) {
    for i in 1..=3 {
        assert_eq!(bus.entry(m(i), expect.addr()).as_ref(), Some(expect), "gateway {i}");
    }
    for i in [1, 3] {
        assert!(!bus.node(m(i)).applied.contains(old), "gateway {i} got the stale copy back: {:?}", bus.node(m(i)).applied);
    }
}

#[test]
fn sync_record_completes_only_after_every_peer_acknowledged() {
    let mut bus = Bus::new();
    bus.join(m(1), vec![]);
    bus.run();
    bus.join(m(2), vec![]);
    bus.join(m(3), vec![]);
    bus.run();
    assert!(bus.nodes.values().all(|n| n.synced));
    bus.local(m(1), 7, LogRecord::Upsert(lease(10, 100, "a")));
    // The record itself is delivered: the others persist it and queue their acks.
    bus.step();
    assert!(bus.node(m(1)).done.is_empty(), "not complete before the acks are delivered");
    bus.step();
    assert!(bus.node(m(1)).done.is_empty(), "one of two acks is not enough");
    bus.run();
    assert_eq!(bus.node(m(1)).done, vec![(7, Ok(()))]);
    for p in [m(2), m(3)] {
        assert_eq!(bus.node(p).applied, vec![LogRecord::Upsert(lease(10, 100, "a"))]);
    }
    assert_eq!(bus.node(m(1)).core.counters().replicated, 1);
}

#[test]
fn a_lone_member_completes_at_once_and_a_peer_that_dies_is_not_waited_for() {
    let mut bus = Bus::new();
    bus.join(m(1), vec![]);
    bus.run();
    bus.local(m(1), 1, LogRecord::Upsert(lease(10, 100, "a")));
    bus.run();
    assert_eq!(bus.node(m(1)).done, vec![(1, Ok(()))]);

    bus.join(m(2), vec![]);
    bus.run();
    bus.nodes.get_mut(&m(2)).unwrap().acks = false;
    bus.local(m(1), 2, LogRecord::Upsert(lease(11, 100, "b")));
    bus.run();
    assert_eq!(bus.node(m(1)).done.len(), 1, "still waiting for the silent peer");
    bus.crash(m(2));
    bus.run();
    assert_eq!(bus.node(m(1)).done[1], (2, Ok(())), "durable on every member of the view");
}

#[test]
fn a_peer_that_never_acks_fails_the_record_at_the_deadline() {
    let mut bus = Bus::new();
    bus.join(m(1), vec![]);
    bus.join(m(2), vec![]);
    bus.run();
    bus.nodes.get_mut(&m(2)).unwrap().acks = false;
    bus.local(m(1), 5, LogRecord::Upsert(lease(10, 100, "a")));
    bus.run();
    bus.tick(CoreConfig::default().ack_deadline - Duration::from_millis(1));
    assert!(bus.node(m(1)).done.is_empty());
    bus.tick(Duration::from_millis(1));
    assert_eq!(bus.node(m(1)).done, vec![(5, Err(RepFailure::Timeout(vec![m(2)])))]);
    assert_eq!(bus.node(m(1)).core.counters().failed, 1);
}

#[test]
fn not_connected_fails_at_once_and_disconnect_fails_what_is_in_flight() {
    let mut core = ReplicationCore::new(CoreConfig::default(), vec![]);
    let now = Instant::now();
    assert_eq!(
        core.local_record(1, LogRecord::Remove(Ipv4Addr::new(198, 18, 0, 1), 1), now),
        vec![RepAction::Complete { token: 1, result: Err(RepFailure::NotConnected) }]
    );
    core.connected(m(1));
    assert_eq!(core.on_view(vec![m(1), m(2)], now), vec![]);
    assert!(!core.is_synced());
    let acts = core.local_record(2, LogRecord::Remove(Ipv4Addr::new(198, 18, 0, 1), 1), now);
    assert!(matches!(acts[..], [RepAction::MulticastOthers(_)]));
    assert_eq!(core.disconnected(), vec![RepAction::Complete { token: 2, result: Err(RepFailure::Disconnected) }]);
}

#[test]
fn a_joiner_gets_the_table_and_gives_back_what_it_holds_newer() {
    let mut bus = Bus::new();
    // Gateway 1 has served alone: three leases.
    bus.join(m(1), vec![lease(10, 100, "a"), lease(11, 100, "b"), lease(12, 100, "c")]);
    bus.run();
    bus.local(m(1), 1, LogRecord::Remove(Ipv4Addr::new(198, 18, 0, 12), 101));
    bus.run();
    // Gateway 2 comes back with an old copy of "a" and a lease it granted while cut off.
    bus.join(m(2), vec![lease(10, 50, "a-old"), lease(20, 150, "d")]);
    bus.run();
    let n2 = bus.node(m(2));
    assert!(n2.synced);
    let got: Vec<&LogRecord> = n2.applied.iter().collect();
    assert!(got.contains(&&LogRecord::Upsert(lease(10, 100, "a"))));
    assert!(got.contains(&&LogRecord::Upsert(lease(11, 100, "b"))));
    assert!(!got.iter().any(|r| matches!(r, LogRecord::Upsert(l) if l.addr == Ipv4Addr::new(198, 18, 0, 12))), "removed lease not transferred");
    assert_eq!(n2.core.table_len(), 3);
    // Gateway 1 learns "d" from the joiner.
    assert!(bus.node(m(1)).applied.contains(&LogRecord::Upsert(lease(20, 150, "d"))));
    assert_eq!(bus.node(m(1)).core.table_len(), 3);
}

#[test]
fn a_record_after_the_join_wins_over_the_snapshot() {
    let now = Instant::now();
    let mut core = ReplicationCore::new(CoreConfig::default(), vec![]);
    core.connected(m(2));
    core.on_view(vec![m(1), m(2), m(3)], now);
    let newer = LogRecord::Upsert(lease(10, 200, "new"));
    let acts = core.on_deliver(m(3), &(GroupMsg::Record { seq: 1, records: vec![newer.clone()] }).encode().unwrap(), now);
    assert!(matches!(&acts[..], [RepAction::Apply { ack: Some((who, 1)), .. }] if *who == m(3)));
    let snap = GroupMsg::Snapshot { to: m(2), last: true, records: vec![LogRecord::Upsert(lease(10, 100, "old")), LogRecord::Upsert(lease(11, 100, "b"))] };
    let acts = core.on_deliver(m(1), &snap.encode().unwrap(), now);
    assert_eq!(acts, vec![RepAction::Apply { record: LogRecord::Upsert(lease(11, 100, "b")), ack: None }, RepAction::Synced { adopted: 1 }]);
    assert!(core.is_synced());
}

#[test]
fn the_joiner_serves_when_the_donor_dies_or_the_snapshot_never_comes() {
    let now = Instant::now();
    let mut core = ReplicationCore::new(CoreConfig::default(), vec![]);
    core.connected(m(2));
    core.on_view(vec![m(1), m(2)], now);
    assert_eq!(core.on_view(vec![m(2)], now), vec![RepAction::Synced { adopted: 0 }]);

    let mut core = ReplicationCore::new(CoreConfig::default(), vec![]);
    core.connected(m(2));
    core.on_view(vec![m(1), m(2)], now);
    assert_eq!(core.poll_timeout(), Some(now + CoreConfig::default().snapshot_wait));
    assert_eq!(core.tick(now + CoreConfig::default().snapshot_wait), vec![RepAction::Synced { adopted: 0 }]);
    assert_eq!(core.counters().snapshot_timeouts, 1);
}

#[test]
fn a_member_back_in_the_group_takes_the_table_again() {
    let mut bus = Bus::new();
    bus.join(m(1), vec![]);
    bus.join(m(2), vec![]);
    bus.run();
    // Member 2's node loses quorum: its daemon reports the group without it.
    let now = bus.now;
    let n2 = bus.nodes.get_mut(&m(2)).unwrap();
    assert!(n2.core.on_view(vec![m(1)], now).is_empty());
    // Meanwhile member 1 grants a lease member 2 never sees.
    bus.target = vec![m(1)];
    bus.queue.push_back(Item::View(vec![m(1)]));
    bus.run();
    bus.local(m(1), 1, LogRecord::Upsert(lease(10, 100, "while-apart")));
    bus.run();
    // The partition heals: both see the group with both again; member 1 (the donor) sends its
    // table and member 2 adopts the lease.
    bus.nodes.get_mut(&m(2)).unwrap().synced = false;
    bus.target = vec![m(1), m(2)];
    bus.queue.push_back(Item::View(vec![m(1), m(2)]));
    bus.run();
    let n2 = bus.node(m(2));
    assert!(n2.synced, "state transfer after the heal");
    assert!(n2.applied.contains(&LogRecord::Upsert(lease(10, 100, "while-apart"))));
}

#[test]
fn a_large_table_is_sent_in_chunks_that_fit_one_message() {
    let mut bus = Bus::new();
    let leases: Vec<Lease> = (1..=250u8).map(|i| lease(i, 100, &format!("host-with-a-longish-name-{i}"))).collect();
    bus.join(m(1), leases);
    bus.run();
    bus.join(m(2), vec![]);
    let mut max = 0;
    while let Some(item) = bus.queue.front() {
        if let Item::Msg(_, _, b) = item {
            max = max.max(b.len());
        }
        bus.step();
    }
    assert!(max <= MAX_MESSAGE, "chunk of {max} bytes");
    assert_eq!(bus.node(m(2)).core.table_len(), 250);
    assert!(bus.node(m(2)).synced);
}

#[test]
fn a_batch_is_one_message_and_every_record_in_it_completes() {
    let mut bus = Bus::new();
    bus.join(m(1), vec![]);
    bus.join(m(2), vec![]);
    bus.run();
    let now = bus.now;
    let batch: Vec<(u64, LogRecord)> = (0..40u8).map(|i| (u64::from(i), LogRecord::Upsert(lease(i + 1, 100, &format!("h{i}"))))).collect();
    let acts = bus.nodes.get_mut(&m(1)).unwrap().core.local_records(batch, now);
    assert_eq!(acts.iter().filter(|a| matches!(a, RepAction::MulticastOthers(_))).count(), 3, "40 records of ~65 bytes fit in three messages");
    bus.act(m(1), acts);
    bus.run();
    let mut done: Vec<u64> = bus.node(m(1)).done.iter().filter(|(_, r)| r.is_ok()).map(|(t, _)| *t).collect();
    done.sort();
    assert_eq!(done, (0..40).collect::<Vec<u64>>());
    assert_eq!(bus.node(m(2)).applied.len(), 40);
}

#[test]
fn acks_go_to_their_origin_only_one_message_per_origin() {
    let mut core = ReplicationCore::new(CoreConfig::default(), vec![]);
    let now = Instant::now();
    core.connected(m(3));
    core.on_view(vec![m(1), m(2), m(3)], now);
    let acts = core.applied_many(vec![(m(1), 5), (m(2), 9), (m(1), 6), (m(2), 10), (m(1), 7)]);
    let expect = |to: MemberId, seqs: &[u64]| RepAction::SendTo { to, payload: (GroupMsg::Ack { acks: seqs.iter().map(|s| (to, *s)).collect() }).encode().unwrap() };
    assert_eq!(acts, vec![expect(m(1), &[5, 6, 7]), expect(m(2), &[9, 10])]);
}

#[test]
fn with_daemons_that_deliver_acks_to_everyone_only_the_origin_counts_them() {
    let mut bus = Bus::new();
    bus.targeted = false;
    for i in 1..=3 {
        bus.join(m(i), vec![]);
        bus.run();
    }
    bus.local(m(1), 1, LogRecord::Upsert(lease(10, 100, "a")));
    bus.local(m(2), 2, LogRecord::Upsert(lease(11, 100, "b")));
    bus.run();
    assert_eq!(bus.node(m(1)).done, vec![(1, Ok(()))]);
    assert_eq!(bus.node(m(2)).done, vec![(2, Ok(()))]);
    assert!(bus.node(m(3)).done.is_empty());
    for i in 1..=3 {
        assert_eq!(bus.node(m(i)).core.counters().malformed, 0);
        assert_eq!(bus.node(m(i)).core.table_len(), 2);
    }
}

#[test]
fn malformed_messages_are_dropped_and_counted() {
    let now = Instant::now();
    let mut core = ReplicationCore::new(CoreConfig::default(), vec![]);
    core.connected(m(1));
    core.on_view(vec![m(1)], now);
    for bad in [&b""[..], b"\x01", b"\x02\x00", b"\x03\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x05", b"\x09"] {
        assert!(core.on_deliver(m(2), bad, now).is_empty());
    }
    assert_eq!(core.counters().malformed, 5);
}

#[test]
fn a_lease_released_while_a_gateway_was_cut_off_stays_released_after_the_heal() {
    let a = lease(10, 100, "a");
    let mut bus = three_then_cut(vec![a.clone()]);
    let mut rel = a.clone();
    rel.state = LeaseState::Released;
    rel.expiry = 150;
    rel.rev = 150;
    bus.local(m(1), 1, LogRecord::Upsert(rel.clone()));
    bus.run();
    assert_eq!(bus.node(m(1)).done, vec![(1, Ok(()))], "gateway 3 acknowledged; the cut gateway is not waited for");
    bus.heal(m(2));
    converged_on(&bus, &LogRecord::Upsert(rel.clone()), &LogRecord::Upsert(a));
    assert!(bus.node(m(2)).applied.contains(&LogRecord::Upsert(rel)), "the rejoining gateway's DHCP core and DNS learn the release");
}

#[test]
fn a_lease_released_and_collected_while_a_gateway_was_cut_off_does_not_come_back() {
    // The donor holds only a tombstone for the address; the rejoining gateway holds the lease.
    let a = lease(10, 100, "a");
    let mut bus = three_then_cut(vec![a.clone()]);
    let mut rel = a.clone();
    rel.state = LeaseState::Released;
    rel.rev = 150;
    bus.decide_then_heal(m(2), &[LogRecord::Upsert(rel.clone()), LogRecord::Remove(a.addr, rel.rev + 1)]);
    assert_eq!(bus.node(m(1)).core.tombstones(), 1);
    converged_on(&bus, &LogRecord::Remove(a.addr, 151), &LogRecord::Upsert(a.clone()));
    assert!(bus.node(m(2)).applied.contains(&LogRecord::Remove(a.addr, 151)), "the rejoining gateway forgets the lease too");
    assert_eq!(bus.node(m(2)).core.table_len(), 0);
}

#[test]
fn a_lease_that_expired_and_was_collected_while_a_gateway_was_cut_off_does_not_come_back() {
    // Expiry writes nothing; collecting the expired lease is a decision derived from it (it ranks
    // just above the lease), and it still beats the rejoining gateway's copy.
    let a = lease(10, 100, "a");
    let mut bus = three_then_cut(vec![a.clone()]);
    bus.decide_then_heal(m(2), &[LogRecord::Remove(a.addr, a.rev + 1)]);
    converged_on(&bus, &LogRecord::Remove(a.addr, a.rev + 1), &LogRecord::Upsert(a));
}

#[test]
fn a_lease_declined_while_a_gateway_was_cut_off_stays_quarantined_then_gone() {
    let a = lease(10, 100, "a");
    let mut bus = three_then_cut(vec![a.clone()]);
    let q = Lease { hwaddr: Vec::new(), client_id: None, hostname: None, fqdn: None, start: 200, expiry: 800, state: LeaseState::Declined, rev: 200, ..a.clone() };
    bus.decide_then_heal(m(2), &[LogRecord::Upsert(q.clone())]);
    converged_on(&bus, &LogRecord::Upsert(q.clone()), &LogRecord::Upsert(a.clone()));
    // Cut again; the quarantine ends (the address is forgotten) while it is away.
    bus.nodes.values_mut().for_each(|n| n.applied.clear());
    bus.cut_off(m(2));
    bus.decide_then_heal(m(2), &[LogRecord::Remove(a.addr, q.rev + 1)]);
    converged_on(&bus, &LogRecord::Remove(a.addr, q.rev + 1), &LogRecord::Upsert(q));
}

#[test]
fn a_rename_while_a_gateway_was_cut_off_wins_over_its_old_names() {
    // Client a renamed itself, then client b took the name a had before (a lost it).
    let a = lease(10, 100, "a");
    let b = lease(11, 100, "b");
    let mut bus = three_then_cut(vec![a.clone(), b.clone()]);
    let a2 = Lease { hostname: Some("a2".into()), fqdn: Some("a2.lab.test".into()), start: 200, rev: 200, ..a.clone() };
    let b2 = Lease { hostname: Some("a".into()), fqdn: Some("a.lab.test".into()), start: 210, rev: 210, ..b.clone() };
    bus.decide_then_heal(m(2), &[LogRecord::Upsert(a2.clone()), LogRecord::Upsert(b2.clone())]);
    converged_on(&bus, &LogRecord::Upsert(a2), &LogRecord::Upsert(a));
    converged_on(&bus, &LogRecord::Upsert(b2), &LogRecord::Upsert(b));
}

#[test]
fn a_client_given_addresses_on_both_sides_of_a_cut_keeps_the_newest() {
    // Both sides decided while apart (gateway 2 served though cut off): the newest decision
    // for the client wins, the other address is released everywhere.
    let mut bus = three_then_cut(vec![]);
    let apart = lease(20, 250, "x");
    let here = Lease { hwaddr: apart.hwaddr.clone(), start: 240, rev: 240, ..lease(30, 240, "x") };
    bus.local_apart(m(2), LogRecord::Upsert(apart.clone()));
    bus.decide_then_heal(m(2), &[LogRecord::Upsert(here.clone())]);
    let released = Lease { state: LeaseState::Released, hostname: None, fqdn: None, rev: 251, ..here };
    for i in 1..=3 {
        assert_eq!(bus.entry(m(i), apart.addr), Some(LogRecord::Upsert(apart.clone())), "gateway {i}");
        assert_eq!(bus.entry(m(i), released.addr), Some(LogRecord::Upsert(released.clone())), "gateway {i}");
    }
    assert!(bus.node(m(2)).applied.contains(&LogRecord::Upsert(released)), "the joiner's own DHCP core learns the release");
    assert_eq!(bus.node(m(2)).core.counters().conflicts, 1);
}

#[test]
fn a_name_given_on_both_sides_of_a_cut_stays_with_the_newest_lease() {
    let mut bus = three_then_cut(vec![]);
    let apart = lease(20, 250, "web");
    let here = lease(30, 260, "web");
    bus.local_apart(m(2), LogRecord::Upsert(apart.clone()));
    bus.decide_then_heal(m(2), &[LogRecord::Upsert(here.clone())]);
    let unnamed = Lease { hostname: None, fqdn: None, rev: 261, ..apart };
    for i in 1..=3 {
        assert_eq!(bus.entry(m(i), here.addr), Some(LogRecord::Upsert(here.clone())), "gateway {i}");
        assert_eq!(bus.entry(m(i), unnamed.addr), Some(LogRecord::Upsert(unnamed.clone())), "gateway {i}: still leased, without the name");
    }
}

#[test]
fn an_older_decision_delivered_later_changes_nothing_and_is_acked_at_once() {
    // Gateway 2 collects a lease it believes old while gateway 1 grants it again: the grant has
    // the higher revision, so the order they arrive in does not matter.
    let a = lease(10, 100, "a");
    let mut bus = Bus::new();
    bus.join(m(1), vec![a.clone()]);
    bus.join(m(2), vec![a.clone()]);
    bus.run();
    let renewed = Lease { start: 300, expiry: 3900, rev: 300, ..a.clone() };
    bus.local(m(1), 1, LogRecord::Upsert(renewed.clone()));
    bus.local(m(2), 2, LogRecord::Remove(a.addr, a.rev + 1));
    bus.run();
    for i in 1..=2 {
        assert_eq!(bus.entry(m(i), a.addr), Some(LogRecord::Upsert(renewed.clone())), "gateway {i}");
    }
    assert!(!bus.node(m(1)).applied.iter().any(|r| matches!(r, LogRecord::Remove(..))));
    assert_eq!(bus.node(m(2)).done, vec![(2, Ok(()))], "a stale record is acknowledged, not left to time out");
    assert_eq!(bus.node(m(1)).core.counters().stale, 1);
}

#[test]
fn a_joiner_acks_records_while_it_loads_the_snapshot_and_nobody_waits_out_the_deadline() {
    // Gateway 3 joins with a big table on its way (several snapshot chunks); a lease granted by
    // gateway 2 right after the join is delivered between the chunks.
    let mut bus = Bus::new();
    let leases: Vec<Lease> = (1..=200u8).map(|i| lease(i, 100, &format!("host-with-a-longish-name-{i}"))).collect();
    bus.join(m(1), leases.clone());
    bus.join(m(2), leases);
    bus.run();
    bus.join(m(3), vec![]);
    bus.step(); // the view with gateway 3: gateway 1 (the donor) queues the snapshot chunks
    let chunks: Vec<Item> = bus.queue.drain(..).collect();
    assert!(chunks.len() >= 3, "a snapshot in several chunks ({})", chunks.len());
    let (first, rest) = chunks.split_at(1);
    bus.queue.extend(first.iter().cloned());
    let fresh = lease(250, 300, "fresh");
    bus.local(m(2), 9, LogRecord::Upsert(fresh.clone()));
    // Deliver the first chunk, the record and the acks it causes: gateway 3 is still loading.
    while bus.node(m(2)).done.is_empty() {
        assert!(bus.step(), "ran out of messages before the record completed");
    }
    assert!(!bus.node(m(3)).synced, "the record completed while gateway 3 was still loading the snapshot");
    assert_eq!(bus.node(m(2)).done, vec![(9, Ok(()))], "gateway 3 acknowledged it when applied, no timeout");
    bus.queue.extend(rest.iter().cloned());
    bus.run();
    assert!(bus.node(m(3)).synced);
    assert_eq!(bus.node(m(3)).core.table_len(), 201);
    assert_eq!(bus.entry(m(3), fresh.addr), Some(LogRecord::Upsert(fresh)));
}

proptest! {
    #[test]
    fn group_messages_round_trip(last in any::<u8>(), start in 0u64..1 << 40, seq in any::<u64>(), node in any::<u32>(), member in any::<u64>()) {
        let to = MemberId { node, member };
        let msgs = [
            GroupMsg::Record { seq, records: vec![LogRecord::Upsert(lease(last, start, "x"))] },
            GroupMsg::Record { seq, records: vec![LogRecord::Remove(Ipv4Addr::new(198, 18, 1, last), start), LogRecord::Upsert(lease(last, start, "z"))] },
            GroupMsg::Ack { acks: vec![(to, seq), (to, seq.wrapping_add(1))] },
            GroupMsg::Snapshot { to, last: last % 2 == 0, records: vec![LogRecord::Upsert(lease(last, start, "y")); (last % 4) as usize] },
        ];
        for msg in msgs {
            let b = msg.encode().unwrap();
            prop_assert_eq!(GroupMsg::decode(&b), Some(msg));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = GroupMsg::decode(&b);
    }
}

#[tokio::test]
async fn without_a_cluster_daemon_records_fail_at_once_and_after_shutdown_too() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = crate::leases::LeaseLog::open(dir.path().join("leases.log")).unwrap();
    let committer = Arc::new(GroupCommitter::start(log, Default::default()));
    let h = spawn(dir.path().join("no-such.sock"), "leases".into(), CoreConfig::default(), committer);
    let sink = h.sink();
    let (tx, rx) = tokio::sync::oneshot::channel();
    sink.replicate(&LogRecord::Upsert(lease(10, 100, "a")), Box::new(move |r| {
        let _ = tx.send(r);
    }));
    let r = tokio::time::timeout(Duration::from_secs(2), rx).await.expect("answered").expect("called");
    assert!(r.is_err(), "not connected: {r:?}");
    h.shutdown().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    sink.replicate(&LogRecord::Upsert(lease(11, 100, "b")), Box::new(move |r| {
        let _ = tx.send(r);
    }));
    assert!(tokio::time::timeout(Duration::from_secs(2), rx).await.expect("answered").expect("called").is_err());
}

/// A replication driver joined to a stand-in cluster daemon (this test's end of the group
/// socket), its lease log and committer in a temporary directory.
struct StandIn {
    _dir: tempfile::TempDir,
    committer: Arc<GroupCommitter>,
    h: ReplicationHandle,
    r: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl StandIn {
    /// Starts the driver with `cfg`, takes its join request for group "leases" and answers it
    /// with `answer` (one JSON line).
    async fn joined(cfg: CoreConfig, answer: &[u8]) -> StandIn {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cluster.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (log, _) = crate::leases::LeaseLog::open(dir.path().join("leases.log")).unwrap();
        let committer = Arc::new(GroupCommitter::start(log, Default::default()));
        let h = spawn(sock.clone(), "leases".into(), cfg, committer.clone());
        let (conn, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("joined").unwrap();
        let (r, mut w) = conn.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.contains("group-join") && line.contains("leases"), "{line}");
        w.write_all(answer).await.unwrap();
        StandIn { _dir: dir, committer, h, r, w }
    }
}

/// The driver, against a stand-in cluster daemon: a gateway starting up (no DHCP driver attached
/// yet, snapshot not arrived) persists a peer's record and acknowledges it at once.
#[tokio::test]
async fn a_starting_gateway_persists_and_acks_records_before_its_snapshot_arrives() {
    use tokio::io::AsyncWriteExt;
    let within = Duration::from_secs(5);
    let StandIn { _dir, committer, mut h, mut r, mut w } =
        StandIn::joined(CoreConfig::default(), b"{\"ok\":true,\"node\":3,\"member\":1}\n").await;
    let (donor, me) = (m(1), m(3));
    w.write_all(&group::view_frame(&[donor, me])).await.unwrap();
    let rec = LogRecord::Upsert(lease(10, 100, "a"));
    let msg = (GroupMsg::Record { seq: 5, records: vec![rec.clone()] }).encode().unwrap();
    w.write_all(&group::deliver_frame(donor, &msg)).await.unwrap();
    let (kind, body) = tokio::time::timeout(within, group::read_frame(&mut r)).await.expect("acked before any snapshot").unwrap().expect("frame");
    assert_eq!((kind, GroupMsg::decode(&body)), (group::KIND_MCAST, Some(GroupMsg::Ack { acks: vec![(donor, 5)] })));
    assert!(!h.wait_synced(Duration::ZERO).await, "still waiting for the snapshot");
    let c = committer.clone();
    let in_log = tokio::task::spawn_blocking(move || c.snapshot_records()).await.unwrap().unwrap();
    assert_eq!(in_log, vec![rec.clone()], "durable before it was acknowledged");
    // The snapshot ends the transfer; what came meanwhile is handed over for the DHCP core.
    let b = LogRecord::Upsert(lease(11, 100, "b"));
    let snap = (GroupMsg::Snapshot { to: me, last: true, records: vec![LogRecord::Upsert(lease(10, 50, "old")), b.clone()] }).encode().unwrap();
    w.write_all(&group::deliver_frame(donor, &snap)).await.unwrap();
    assert!(h.wait_synced(within).await);
    assert_eq!(h.take_buffered().await, vec![rec, b]);
    assert_eq!(h.stats.adopted.load(Ordering::Relaxed), 1);
    h.shutdown().await;
}

/// The driver, against a stand-in cluster daemon: once synced, records delivered one by one
/// within the gather window are persisted as one group and acknowledged with one message, not
/// before they are in the log, and not later than the window (plus scheduling) after the first.
#[tokio::test]
async fn records_delivered_within_the_gather_window_share_one_commit_and_one_ack() {
    use tokio::io::AsyncWriteExt;
    let within = Duration::from_secs(5);
    let gather = Duration::from_millis(200);
    let cfg = CoreConfig { gather, ..CoreConfig::default() };
    let StandIn { _dir, committer, mut h, mut r, mut w } =
        StandIn::joined(cfg, b"{\"ok\":true,\"node\":3,\"member\":1,\"targeted\":true,\"others\":true}\n").await;
    let (donor, me) = (m(1), m(3));
    w.write_all(&group::view_frame(&[donor, me])).await.unwrap();
    let snap = (GroupMsg::Snapshot { to: me, last: true, records: vec![] }).encode().unwrap();
    w.write_all(&group::deliver_frame(donor, &snap)).await.unwrap();
    assert!(h.wait_synced(within).await);
    let commits_before = committer.stats().syncs.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    let recs: Vec<LogRecord> = (20..23).map(|i| LogRecord::Upsert(lease(i, 100, &format!("h{i}")))).collect();
    for (i, rec) in recs.iter().enumerate() {
        let msg = (GroupMsg::Record { seq: 7 + i as u64, records: vec![rec.clone()] }).encode().unwrap();
        w.write_all(&group::deliver_frame(donor, &msg)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (kind, body) = tokio::time::timeout(within, group::read_frame(&mut r)).await.expect("acked").unwrap().expect("frame");
    let waited = t0.elapsed();
    eprintln!("first ack after {waited:?}");
    assert_eq!(kind, group::KIND_MCAST_TO);
    let (to, payload) = group::parse_mcast_to(&body).expect("targeted ack");
    assert_eq!((to, GroupMsg::decode(payload)), (vec![donor], Some(GroupMsg::Ack { acks: vec![(donor, 7), (donor, 8), (donor, 9)] })));
    assert!(waited >= gather - Duration::from_millis(5), "acked after {waited:?}, before the window ended");
    let c = committer.clone();
    let in_log = tokio::task::spawn_blocking(move || c.snapshot_records()).await.unwrap().unwrap();
    for rec in &recs {
        assert!(in_log.contains(rec), "durable before it was acknowledged");
    }
    assert_eq!(committer.stats().syncs.load(Ordering::Relaxed) - commits_before, 1, "one group commit");
    h.shutdown().await;
}
