//! End-to-end: the two-node gateway pair with a vote-only witness (examples/two-node.toml's
//! shape), real daemons in the namespace lab: `hastack cluster` on lb1 and lb2, `hastack witness`
//! in its own namespace on the same bridge (198.18.0.5), a client probing the VIP.
//!
//! What votequorum + corosync-qnetd promise for this shape, checked through the daemons' control
//! sockets, `hastack quorum --json`, and the addresses the kernel holds in each namespace:
//! - the pair forms with the witness's vote (3 of 3) and one node holds the VIP;
//! - kill -9 of the VIP holder: the survivor is quorate with the witness (2 of 3) and holds the VIP
//!   at once; the restarted node rejoins and takes nothing back;
//! - the witness dies: both nodes keep quorum (2 of 3), the VIP does not move;
//! - the two nodes lose their direct path while both still reach the witness: exactly one side is
//!   quorate and holds the VIP, never both at once; the heal gives one view again.
//!
//! Bounds are generous correctness limits for a loaded 2-core machine, not performance targets.

use std::time::{Duration, Instant};

use hastack::failover::LabCluster;
use hastack_tests::{HostId, hastack_bin, require_lab};
use nix::sys::signal::Signal;

/// The witness's node id (ha-membership reserves the highest id for it).
const WITNESS: u64 = u32::MAX as u64;
const WITHIN: Duration = Duration::from_secs(5);

/// A formed two-node + witness cluster: every daemon in the view [1, 2, witness], both nodes
/// quorate, one VIP holder.
fn pair() -> Option<LabCluster> {
    if !require_lab().expect("lab prerequisites") {
        return None;
    }
    let bin = hastack_bin().expect("hastack binary");
    let c = LabCluster::start_two_node_witness(&bin).expect("two-node lab cluster with a witness");
    let full = |c: &LabCluster| (1..=2).all(|i| c.view_members(i) == Some(vec![1, 2, WITNESS]) && c.quorate(i) == Some(true));
    assert!(c.wait(Duration::from_secs(15), full), "the pair did not form with the witness:\n{}", logs(&c));
    Some(c)
}

/// `hastack quorum --json` of node i, through the real command line.
fn quorum_cli(c: &LabCluster, i: usize) -> serde_json::Value {
    let bin = hastack_bin().expect("hastack binary");
    let out = std::process::Command::new(&bin)
        .args(["quorum", "--json", "--config"])
        .arg(c.config())
        .arg("--socket")
        .arg(c.socket(i))
        .output()
        .expect("running hastack quorum");
    assert!(out.status.success(), "hastack quorum --json on lb{i}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("hastack quorum --json prints JSON")
}

fn members_of(q: &serde_json::Value) -> Vec<u64> {
    q["view"]["members"].as_array().into_iter().flatten().filter_map(|m| m["node"].as_u64()).collect()
}

/// Whether node i holds the witness's vote lease in its view (status `membership.vote.held`).
fn holds_witness_vote(c: &LabCluster, i: usize) -> bool {
    c.status(i).is_some_and(|s| s["membership"]["vote"]["held"].as_array().is_some_and(|h| h.iter().any(|l| l["node"] == WITNESS)))
}

fn logs(c: &LabCluster) -> String {
    let mut s: String = (1..=2).map(|i| format!("--- lb{i} ---\n{}\n", tail(&c.daemon_log(i), 60))).collect();
    s += &format!("--- witness ---\n{}", tail(&c.witness_log(), 40));
    s
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn other(i: usize) -> usize {
    3 - i
}

#[test]
fn forms_with_the_witness_vote_and_a_killed_holder_fails_over_to_the_survivor() {
    let Some(mut c) = pair() else { return };
    let t_formed = Instant::now();
    // a) Both nodes are quorate with the witness's vote, as `hastack quorum --json` shows it.
    for i in 1..=2 {
        let q = quorum_cli(&c, i);
        assert_eq!(q["quorum"]["quorate"], true, "lb{i}: {q}");
        assert_eq!(q["quorum"]["total_votes"], 3, "lb{i}: {q}");
        assert_eq!(q["quorum"]["expected_votes"], 3, "lb{i}: {q}");
        assert_eq!(q["quorum"]["quorum"], 2, "lb{i}: {q}");
        assert_eq!(members_of(&q), vec![1, 2, WITNESS], "lb{i}: {q}");
        assert!(q["text"].as_str().is_some_and(|t| t.contains("Witness vote:")), "lb{i}: {q}");
    }
    assert!(c.wait(WITHIN, |c| (1..=2).all(|i| holds_witness_vote(c, i))), "a node holds no witness vote lease:\n{}", logs(&c));
    // The witness runs no resources and sides with the view it granted its vote to.
    let w = c.witness_status().expect("witness answers on its control socket");
    assert_eq!(w["membership"]["witness"], true, "{w}");
    let from = c.wait_for_holder(WITHIN).unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&c)));
    let to = other(from);
    assert_eq!(c.double_holders_since(t_formed, None), Duration::ZERO, "two holders while formed");

    // b) kill -9 the holder's daemon (the node stays up): the survivor, with the witness's vote,
    // is quorate in [survivor, witness] and holds the VIP within about a second.
    let t0 = Instant::now();
    c.daemon(from).expect("holder daemon").signal(Signal::SIGKILL).unwrap();
    let took_over = c.wait(Duration::from_secs(3), |c| c.holders().contains(&to));
    let took = t0.elapsed();
    assert!(took_over, "lb{to} did not take the VIP after lb{from} was killed:\n{}", logs(&c));
    assert!(took <= Duration::from_millis(1500), "takeover took {took:?} (expected about 1 s at most):\n{}", logs(&c));
    assert!(
        c.wait(WITHIN, |c| c.view_members(to) == Some(vec![to as u64, WITNESS]) && c.quorate(to) == Some(true)),
        "survivor lb{to} not quorate in [lb{to}, witness]: {:?}\n{}",
        c.status(to).map(|s| s["membership"]["quorum"].clone()),
        logs(&c)
    );
    let q = quorum_cli(&c, to);
    assert_eq!((q["quorum"]["quorate"].as_bool(), q["quorum"]["total_votes"].as_u64()), (Some(true), Some(2)), "{q}");
    assert!(holds_witness_vote(&c, to), "survivor does not hold the witness's vote");
    // The dead daemon's VIP ends with its kernel lease (2 s, plus the kernel's sweep); until then
    // the address lingers on a node whose daemon is gone, which is the documented bound.
    assert!(
        c.wait(Duration::from_secs(5), |c| c.holders() == vec![to]),
        "the killed daemon's VIP outlived its lease: holders {:?}",
        c.holders()
    );

    // Restart: the node rejoins [1, 2, witness] and takes nothing back (stickiness): one holder,
    // never two while both daemons run.
    let t_restart = Instant::now();
    c.start_daemon(from).expect("restart the killed daemon");
    assert!(
        c.wait(Duration::from_secs(10), |c| (1..=2).all(|i| c.view_members(i) == Some(vec![1, 2, WITNESS]) && c.quorate(i) == Some(true))),
        "lb{from} did not rejoin: {:?} {:?}\n{}",
        c.view_members(1),
        c.view_members(2),
        logs(&c)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.holders(), vec![to], "the VIP moved after the rejoin");
    assert_eq!(c.double_holders_since(t_restart, None), Duration::ZERO, "two holders after the restart:\n{}", logs(&c));
}

#[test]
fn losing_the_witness_keeps_both_nodes_quorate_and_the_vip_in_place() {
    let Some(mut c) = pair() else { return };
    let holder = c.wait_for_holder(WITHIN).unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&c)));
    let t0 = Instant::now();
    c.kill_witness().unwrap();
    // The nodes commit [1, 2] (the witness failed) and keep quorum all along: 2 of 3 votes.
    let mut lost = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut settled = false;
    while Instant::now() < deadline {
        for i in 1..=2 {
            if c.quorate(i) == Some(false) {
                lost.push((i, t0.elapsed()));
            }
        }
        settled = (1..=2).all(|i| c.view_members(i) == Some(vec![1, 2]));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(settled, "the nodes did not commit [1, 2] without the witness: {:?} {:?}\n{}", c.view_members(1), c.view_members(2), logs(&c));
    assert!(lost.is_empty(), "a node reported no quorum after the witness died (node, time): {lost:?}\n{}", logs(&c));
    for i in 1..=2 {
        let q = quorum_cli(&c, i);
        assert_eq!((q["quorum"]["quorate"].as_bool(), q["quorum"]["total_votes"].as_u64(), q["quorum"]["expected_votes"].as_u64()), (Some(true), Some(2), Some(3)), "lb{i}: {q}");
    }
    assert_eq!(c.holders(), vec![holder], "the VIP moved when the witness died:\n{}", logs(&c));
    assert_eq!(c.vip_changes_between(t0, Instant::now()), 0, "the VIP was released or re-added:\n{}", logs(&c));
    // The witness comes back: the view includes it again, nothing moves.
    c.start_witness().unwrap();
    assert!(
        c.wait(Duration::from_secs(10), |c| (1..=2).all(|i| c.view_members(i) == Some(vec![1, 2, WITNESS]))),
        "the witness did not rejoin: {:?}\n{}",
        c.view_members(1),
        logs(&c)
    );
    assert_eq!(c.holders(), vec![holder]);
    assert_eq!(c.vip_changes_between(t0, Instant::now()), 0, "the VIP moved when the witness came back:\n{}", logs(&c));
}

/// One sample of both nodes' quorum, node 1 asked twice around node 2 so that "both quorate at
/// once" is only concluded when node 1 was quorate in the same view before and after node 2 said so.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    q1: Option<(bool, Option<(u64, u64)>)>,
    q2: Option<(bool, Option<(u64, u64)>)>,
    q1_after: Option<(bool, Option<(u64, u64)>)>,
}

fn quorum_and_view(c: &LabCluster, i: usize) -> Option<(bool, Option<(u64, u64)>)> {
    let s = c.status(i)?;
    let q = s["membership"]["quorum"]["quorate"].as_bool()?;
    let id = &s["membership"]["view"]["id"];
    Some((q, id["coordinator"].as_u64().zip(id["epoch"].as_u64())))
}

impl Sample {
    /// Both nodes certainly quorate at once, in different views.
    fn both_quorate(&self) -> bool {
        match (self.q1, self.q2, self.q1_after) {
            (Some((true, v1)), Some((true, v2)), Some((true, v1b))) => v1 == v1b && v1 != v2,
            _ => false,
        }
    }
}

#[test]
fn a_cut_between_the_nodes_leaves_exactly_one_quorate_holder() {
    let Some(c) = pair() else { return };
    let holder = c.wait_for_holder(WITHIN).unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&c)));
    let t_cut = Instant::now();
    // lb1 <-> lb2 cut both ways; both still reach the witness and the client.
    c.lab.partition(HostId::Node(1), HostId::Node(2)).unwrap();
    let mut samples = Vec::new();
    let settled_for = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(8);
    // Settled: exactly one node quorate and holding the VIP, the other neither, for 2 s running.
    let mut settled_since: Option<(Instant, usize)> = None;
    let winner = loop {
        let q1 = quorum_and_view(&c, 1);
        let q2 = quorum_and_view(&c, 2);
        let q1_after = quorum_and_view(&c, 1);
        samples.push(Sample { at: t_cut.elapsed(), q1, q2, q1_after });
        let quorate: Vec<usize> = (1..=2).filter(|i| [q1, q2][i - 1].is_some_and(|(q, _)| q)).collect();
        let holders = c.holders();
        let one = match (quorate.as_slice(), holders.as_slice()) {
            ([w], [h]) if w == h => Some(*w),
            _ => None,
        };
        settled_since = match (settled_since, one) {
            (Some((t, w)), Some(n)) if w == n => Some((t, w)),
            (_, Some(n)) => Some((Instant::now(), n)),
            (_, None) => None,
        };
        if let Some((_, w)) = settled_since.filter(|(t, _)| t.elapsed() >= settled_for) {
            break Some(w);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The timeline (printed with a failure): every change of either node's quorum or view.
    let mut prev = None;
    for s in &samples {
        let key = (s.q1, s.q2);
        if prev != Some(key) {
            eprintln!("{:>8.1} ms  lb1 {:?}  lb2 {:?}", s.at.as_secs_f64() * 1e3, s.q1, s.q2);
            prev = Some(key);
        }
    }
    let both: Vec<&Sample> = samples.iter().filter(|s| s.both_quorate()).collect();
    let last = samples.last().cloned();
    assert!(
        winner.is_some(),
        "no single quorate holder within 8 s of the cut (holder before: lb{holder}; last sample {last:?}; holders {:?}):\n{}",
        c.holders(),
        logs(&c)
    );
    let winner = winner.unwrap_or_default();
    assert!(
        both.is_empty(),
        "both nodes quorate at once in different views, {} samples, first at {:?} after the cut: {:?}\n{}",
        both.len(),
        both[0].at,
        &both[..both.len().min(5)],
        logs(&c)
    );
    assert_eq!(c.double_holders_since(t_cut, None), Duration::ZERO, "two nodes held the VIP at once after the cut:\n{}", logs(&c));
    let loser = other(winner);
    assert_eq!(c.quorate(loser), Some(false), "lb{loser} still quorate");
    assert!(!c.holders().contains(&loser), "lb{loser} holds the VIP without quorum");
    assert!(holds_witness_vote(&c, winner), "lb{winner} is quorate without the witness's vote");

    // Heal: one view [1, 2, witness] again, both quorate, one holder, never two.
    c.lab.heal().unwrap();
    assert!(
        c.wait(Duration::from_secs(10), |c| {
            (1..=2).all(|i| c.view_members(i) == Some(vec![1, 2, WITNESS]) && c.quorate(i) == Some(true)) && c.view_id(1) == c.view_id(2)
        }),
        "no single view after the heal: {:?} {:?}\n{}",
        c.view_members(1),
        c.view_members(2),
        logs(&c)
    );
    assert!(c.wait(WITHIN, |c| c.holders().len() == 1), "holders after the heal: {:?}", c.holders());
    assert_eq!(c.double_holders_since(t_cut, None), Duration::ZERO, "two holders around the heal:\n{}", logs(&c));
}


#[test]
fn a_daemon_restarted_right_after_a_graceful_stop_binds_and_rejoins() {
    let Some(mut c) = pair() else { return };
    let holder = c.wait_for_holder(WITHIN).unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&c)));
    // SIGTERM and restart at once, as `hastack bench failover` does after a graceful handover: the
    // stopping daemon still owns its cluster port and control socket while it hands over and
    // leaves, so the restart must wait for its exit (it used to race it: "Address already in use",
    // and the status check then talked to the old daemon).
    let victim = other(holder);
    c.daemon(victim).expect("daemon").signal(Signal::SIGTERM).unwrap();
    let previous = c.start_daemon(victim).expect("restart after a graceful stop");
    // The old daemon finished its leave and exited by itself (it used to be SIGKILLed by the
    // restart, racing the new daemon's bind).
    assert!(previous.is_some_and(|st| st.success()), "the stopping daemon did not exit cleanly: {previous:?}");
    assert!(
        c.wait(Duration::from_secs(10), |c| (1..=2).all(|i| c.view_members(i) == Some(vec![1, 2, WITNESS]) && c.quorate(i) == Some(true))),
        "lb{victim} did not rejoin after its restart: {:?}\n{}",
        c.view_members(victim),
        logs(&c)
    );
    let d = c.daemon(victim).expect("restarted daemon");
    assert_eq!(d.try_wait().ok(), Some(None), "the restarted daemon exited:\n{}", d.log());
    assert!(!d.log().contains("Address already in use"), "{}", d.log());
    assert_eq!(c.holders(), vec![holder], "the VIP moved");
}
