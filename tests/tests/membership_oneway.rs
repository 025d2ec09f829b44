//! End-to-end: one-way cuts between real `hastack cluster` daemons in the namespace lab settle
//! instead of making views churn. A node nobody hears (mute), and then a node that hears nobody
//! (deaf, the coordinator), end up outside the majority's view, not quorate, and the views stop
//! changing; after the heal the three nodes are in one view again. nftables drops frames by source
//! MAC at the receiver, so a one-way rule is one-way at L2 (ARP included: after a few seconds the
//! kernel may also stop sending the other way, which must not matter).

use std::time::Duration;

use hastack::failover::LabCluster;
use hastack_tests::{hastack_bin, require_lab};

const WITHIN: Duration = Duration::from_secs(5);
/// How long views must stay unchanged once settled.
const QUIET: Duration = Duration::from_secs(3);

fn epoch_of(c: &LabCluster, i: usize) -> Option<u64> {
    c.status(i)?["membership"]["view"]["id"]["epoch"].as_u64()
}

fn logs(c: &LabCluster) -> String {
    (1..=3).map(|i| format!("--- lb{i} ---\n{}", c.daemon_log(i))).collect::<Vec<_>>().join("\n")
}

/// `odd` is cut off one way; the other two must agree on a view without it, stay quorate, and
/// nobody's view may change for `QUIET` afterwards.
fn settles_without(c: &LabCluster, odd: usize, what: &str) {
    let pair: Vec<usize> = (1..=3).filter(|i| *i != odd).collect();
    let want: Vec<u64> = pair.iter().map(|i| *i as u64).collect();
    assert!(
        c.wait(WITHIN, |c| pair.iter().all(|i| c.view_members(*i).as_ref() == Some(&want) && c.quorate(*i) == Some(true))),
        "{what}: the pair did not settle on {want:?}: {:?} {:?}\n{}",
        c.view_members(pair[0]),
        c.view_members(pair[1]),
        logs(c)
    );
    assert!(c.wait(WITHIN, |c| c.quorate(odd) == Some(false)), "{what}: node {odd} still quorate\n{}", logs(c));
    // Settled: give stragglers (the odd node's own singleton view) a moment, then nothing moves.
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(c, i)).collect();
    std::thread::sleep(QUIET);
    let after: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(c, i)).collect();
    assert_eq!(before, after, "{what}: views kept changing\n{}", logs(c));
    assert_eq!(c.quorate(odd), Some(false), "{what}: node {odd} became quorate");
}

fn heals(c: &LabCluster, what: &str) {
    c.lab.heal().unwrap();
    assert!(
        c.wait(Duration::from_secs(10), |c| (1..=3).all(|i| c.view_members(i) == Some(vec![1, 2, 3]))),
        "{what}: no single view after the heal: {:?} {:?} {:?}\n{}",
        c.view_members(1),
        c.view_members(2),
        c.view_members(3),
        logs(c)
    );
    assert!(c.wait(WITHIN, |c| (1..=3).all(|i| c.quorate(i) == Some(true))), "{what}: not all quorate after heal");
}

#[test]
fn one_way_cuts_settle_and_heal() {
    if !require_lab().expect("lab prerequisites") {
        return;
    }
    let bin = hastack_bin().expect("hastack binary");
    let c = LabCluster::start(&bin, 3).expect("lab cluster");
    assert!(
        c.wait(Duration::from_secs(15), |c| (1..=3).all(|i| c.view_members(i).is_some_and(|m| m.len() == 3))),
        "no three-node view formed:\n{}",
        logs(&c)
    );
    // Mute node 3: it hears both peers, neither hears it.
    c.lab.partition_one_way(3, 1).unwrap();
    c.lab.partition_one_way(3, 2).unwrap();
    settles_without(&c, 3, "mute node 3");
    heals(&c, "mute node 3");
    // Deaf coordinator: node 1 hears nobody, both peers hear it (and its stale view).
    c.lab.partition_one_way(2, 1).unwrap();
    c.lab.partition_one_way(3, 1).unwrap();
    settles_without(&c, 1, "deaf node 1");
    heals(&c, "deaf node 1");
}
