//! End-to-end: real `hastack cluster` daemons in the namespace lab (three LB nodes and a client, a
//! VIP, a TCP service on every node). Membership, quorum and the VIP are checked through what the
//! daemons report on their control sockets, the addresses the kernel holds in each namespace, and the
//! client's own neighbour table. Bounds here are generous correctness limits, not performance targets
//! (those are in docs/BENCHMARKS.md).

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use hastack::failover::{Fault, LabCluster, VIP};
use hastack_tests::{HostId, hastack_bin, require_lab};
use nix::sys::signal::Signal;

const WITHIN: Duration = Duration::from_secs(5);

fn cluster() -> Option<LabCluster> {
    if !require_lab().expect("lab prerequisites") {
        return None;
    }
    let bin = hastack_bin().expect("hastack binary");
    let c = LabCluster::start(&bin, 3).expect("lab cluster");
    let ok = c.wait(Duration::from_secs(15), |c| (1..=3).all(|i| c.view_members(i).is_some_and(|m| m.len() == 3)));
    assert!(ok, "no three-node view formed:\n{}", c.daemon_log(1));
    Some(c)
}

#[test]
fn kill_9_commits_a_new_view_and_the_node_rejoins() {
    let Some(mut c) = cluster() else { return };
    let epoch_before = c.status(1).unwrap()["membership"]["view"]["id"]["epoch"].as_u64().unwrap();
    c.daemon(3).unwrap().signal(Signal::SIGKILL).unwrap();
    assert!(
        c.wait(WITHIN, |c| c.view_members(1) == Some(vec![1, 2]) && c.view_members(2) == Some(vec![1, 2])),
        "survivors did not agree on [1, 2]: {:?} {:?}",
        c.view_members(1),
        c.view_members(2)
    );
    // Both survivors hold the same view id.
    let id1 = c.status(1).unwrap()["membership"]["view"]["id"].clone();
    let id2 = c.status(2).unwrap()["membership"]["view"]["id"].clone();
    assert_eq!(id1, id2);
    assert!(id1["epoch"].as_u64().unwrap() > epoch_before);
    // Quorum in the new view follows it by a round trip (the survivors' vote leases in it).
    assert!(c.wait(WITHIN, |c| c.quorate(1) == Some(true) && c.quorate(2) == Some(true)), "survivors not quorate");
    // The strict quorum: node 1 holds node 2's vote lease in the new view.
    let holds = |c: &LabCluster| {
        c.status(1).is_some_and(|s| {
            let v = &s["membership"]["vote"];
            v["lease_quorate"] == serde_json::json!(true) && v["held"].as_array().is_some_and(|h| h.iter().any(|l| l["node"] == 2))
        })
    };
    assert!(c.wait(WITHIN, holds), "node 1 holds no vote lease from node 2: {}", c.status(1).unwrap()["membership"]["vote"]);
    c.start_daemon(3).unwrap();
    assert!(
        c.wait(WITHIN, |c| (1..=3).all(|i| c.view_members(i) == Some(vec![1, 2, 3]))),
        "node 3 did not rejoin: {:?}",
        c.view_members(3)
    );
}

#[test]
fn vip_moves_on_node_crash_and_the_client_learns_the_new_mac() {
    let Some(mut c) = cluster() else { return };
    let from = c.wait_for_holder(WITHIN).unwrap();
    let t0 = Instant::now();
    let s = c
        .failover(Fault::Crash, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("failover after a node crash: {e:#}\n{}", logs(&c)));
    assert_ne!(s.to, from);
    assert!(s.outage < Duration::from_secs(2), "outage {:?}", s.outage);
    // Never two holders among nodes that can talk (the crashed node is cut off).
    assert_eq!(c.double_holders_since(t0, Some(from)), Duration::ZERO);
    // The client's neighbour table maps the VIP to the new holder's MAC (gratuitous ARP).
    let want = c.lab.node(s.to).mac(0);
    let neigh = c.lab.neighbours(HostId::Client(1)).unwrap();
    let entry = neigh.iter().find(|n| n.ip == IpAddr::V4(VIP)).expect("client has a neighbour entry for the VIP");
    assert_eq!(entry.mac, Some(want), "client neighbour entry {entry:?}");
}

#[test]
fn vip_moves_on_daemon_kill_and_the_dead_daemons_vip_expires() {
    let Some(c) = cluster() else { return };
    let from = c.wait_for_holder(WITHIN).unwrap();
    // kill -9 the daemon alone: the node stays up, its VIP must go away by its lease (2 s + ~1 s).
    c.daemon(from).unwrap().signal(Signal::SIGKILL).unwrap();
    assert!(c.wait(WITHIN, |c| c.holders().iter().any(|h| *h != from)), "nobody took over");
    assert!(
        c.wait(Duration::from_secs(4), |c| !c.holders().contains(&from)),
        "the killed daemon's VIP outlived its lease"
    );
}

#[test]
fn sigstop_releases_on_wakeup_and_graceful_stop_hands_over() {
    let Some(mut c) = cluster() else { return };
    let t0 = Instant::now();
    let s = c
        .failover(Fault::Stop, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("failover after SIGSTOP: {e:#}\n{}", logs(&c)));
    // After SIGCONT (done by failover's restore) the frozen node holds nothing.
    assert!(
        !c.holders().contains(&s.from),
        "woken node still holds the VIP (holders {:?}):\n{}",
        c.holders(),
        logs(&c)
    );
    let t1 = Instant::now();
    let g = c.failover(Fault::Graceful, Duration::from_secs(10)).expect("graceful handover");
    assert_eq!(
        c.double_holders_since(t1, None),
        Duration::ZERO,
        "graceful handover overlapped ({g:?}):\n{}",
        logs(&c)
    );
    assert!(g.outage < Duration::from_secs(1), "graceful outage {:?}:\n{}", g.outage, logs(&c));
    let _ = t0;
}

#[test]
fn partition_one_against_two_keeps_quorum_on_the_pair_only() {
    let Some(c) = cluster() else { return };
    let holder = c.wait_for_holder(WITHIN).unwrap();
    // Cut the holder off from both peers (the client still reaches everyone).
    let others: Vec<usize> = (1..=3).filter(|i| *i != holder).collect();
    for &o in &others {
        c.lab.partition(holder, o).unwrap();
    }
    assert!(c.wait(WITHIN, |c| c.quorate(holder) == Some(false)), "isolated node kept quorum");
    assert!(c.wait(WITHIN, |c| others.iter().all(|o| c.quorate(*o) == Some(true))), "pair lost quorum");
    assert!(
        c.wait(WITHIN, |c| { let h = c.holders(); h.len() == 1 && others.contains(&h[0]) }),
        "VIP not on the quorate side only: {:?}",
        c.holders()
    );
    // Heal: one view again, still one holder, and the holder re-announces (client follows).
    c.lab.heal().unwrap();
    assert!(c.wait(Duration::from_secs(8), |c| (1..=3).all(|i| c.view_members(i) == Some(vec![1, 2, 3]))), "no single view after heal");
    assert_eq!(c.holders().len(), 1);
}

#[test]
fn forged_and_garbage_datagrams_change_nothing_and_are_counted() {
    let Some(c) = cluster() else { return };
    let before = c.status(1).unwrap();
    let id_before = before["membership"]["view"]["id"].clone();
    let drops_before = total_drops(&before);
    // From the client namespace: garbage, a truncated header, and a well-formed-looking datagram
    // with a wrong MAC, at node 1's cluster port.
    c.lab
        .client(1)
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            let to = (Ipv4Addr::new(198, 18, 0, 11), 5405);
            for i in 0..50u8 {
                let _ = s.send_to(&[i; 7], to);
                let mut forged = vec![0u8; 120];
                forged[0] = 1;
                forged[1] = i;
                let _ = s.send_to(&forged, to);
                let _ = s.send_to(&vec![0xffu8; 1400], to);
            }
        })
        .unwrap();
    assert!(
        c.wait(WITHIN, |c| c.status(1).is_some_and(|s| total_drops(&s) >= drops_before + 150)),
        "drops not counted: {}",
        c.status(1).unwrap()["membership"]["drops"]
    );
    let after = c.status(1).unwrap();
    assert_eq!(after["membership"]["view"]["id"], id_before, "view changed");
    // The same counters on the Prometheus endpoint ([control] metrics_cluster, inside node 1).
    let scrape = c
        .lab
        .node(1)
        .run_in(|| {
            use std::io::{Read, Write};
            let mut m = std::net::TcpStream::connect(hastack::failover::LAB_METRICS).unwrap();
            m.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut s = String::new();
            m.read_to_string(&mut s).unwrap();
            s
        })
        .unwrap();
    let dropped: u64 = scrape
        .lines()
        .filter(|l| l.starts_with("hastack_cluster_datagrams_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped >= 150, "metrics count the dropped datagrams: {scrape}");
    assert!(scrape.lines().any(|l| l == "hastack_cluster_quorate 1"), "{scrape}");
    assert!(scrape.lines().any(|l| l == "hastack_cluster_vote_lease_quorate 1"), "{scrape}");
}

fn total_drops(s: &serde_json::Value) -> u64 {
    s["membership"]["drops"].as_object().map(|o| o.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0)
}

/// Captures one cluster datagram from node 1 to node 2 on node 2's interface (AF_PACKET, so the
/// daemon's own socket is not disturbed) and returns its UDP payload.
fn capture_cluster_datagram() -> Vec<u8> {
    // SAFETY: plain socket(2); checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, (libc::ETH_P_IP as u16).to_be() as i32) };
    assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: valid fd and option struct.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 2048];
    let found = loop {
        assert!(Instant::now() < deadline, "no cluster datagram from node 1 seen on node 2");
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 28 {
            continue;
        }
        let p = &buf[..n as usize];
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if p[9] != 17 || p[12..16] != [198, 18, 0, 11] || p.len() < ihl + 8 {
            continue;
        }
        let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
        if dport == 5405 {
            break p[ihl + 8..].to_vec();
        }
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    found
}

#[test]
fn a_replayed_datagram_changes_nothing_and_is_counted() {
    let Some(c) = cluster() else { return };
    let datagram = c.lab.node(2).run_in(capture_cluster_datagram).unwrap();
    let before = c.status(2).unwrap();
    let replayed_before = before["membership"]["drops"]["replayed"].as_u64().unwrap_or(0);
    let id_before = before["membership"]["view"]["id"].clone();
    c.lab
        .client(1)
        .run_in(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..20 {
                s.send_to(&datagram, (Ipv4Addr::new(198, 18, 0, 12), 5405)).unwrap();
            }
        })
        .unwrap();
    assert!(
        c.wait(WITHIN, |c| c.status(2).is_some_and(|s| s["membership"]["drops"]["replayed"].as_u64().unwrap_or(0) >= replayed_before + 20)),
        "replays not counted: {}",
        c.status(2).unwrap()["membership"]["drops"]
    );
    assert_eq!(c.status(2).unwrap()["membership"]["view"]["id"], id_before);
}

/// Every node's daemon log, for failure messages.
fn logs(c: &LabCluster) -> String {
    (1..=3).map(|i| format!("--- lb{i} ---\n{}", c.daemon_log(i))).collect::<Vec<_>>().join("\n")
}

#[test]
fn operator_move_ban_and_standby_place_the_vip() {
    let Some(c) = cluster() else { return };
    let bin = hastack_bin().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .arg("--config")
            .arg(c.config())
            .arg("--socket")
            .arg(c.socket(1))
            .output()
            .unwrap();
        assert!(out.status.success(), "hastack {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let first = c.wait_for_holder(WITHIN).unwrap();
    let target = if first == 3 { 2 } else { 3 };
    run(&["resource", "move", "vip", &format!("lb{target}")]);
    assert!(c.wait(WITHIN, |c| c.holders() == vec![target]), "move: holders {:?}", c.holders());
    // Standby of the node it was moved to wins over the move (a standby node runs nothing).
    run(&["node", "standby", &format!("lb{target}")]);
    assert!(c.wait(WITHIN, |c| { let h = c.holders(); h.len() == 1 && h[0] != target }), "standby: holders {:?}", c.holders());
    run(&["node", "online", &format!("lb{target}")]);
    run(&["resource", "clear", "vip"]);
    let now = c.wait_for_holder(WITHIN).unwrap();
    run(&["resource", "ban", "vip", &format!("lb{now}")]);
    assert!(c.wait(WITHIN, |c| { let h = c.holders(); h.len() == 1 && h[0] != now }), "ban: holders {:?}", c.holders());
    // The status text shows where it runs.
    let st = std::process::Command::new(&bin)
        .args(["status", "--config"])
        .arg(c.config())
        .arg("--socket")
        .arg(c.socket(2))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(text.contains("vip"), "status: {text}");
}

fn epoch_of(c: &LabCluster, i: usize) -> Option<u64> {
    c.status(i)?["membership"]["view"]["id"]["epoch"].as_u64()
}

#[test]
fn five_percent_loss_for_a_bounded_period_changes_no_view() {
    let Some(c) = cluster() else { return };
    let before: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(&c, i)).collect();
    // 5% of every packet between every pair of nodes, both ways, for 8 s.
    for (a, b) in [(1, 2), (1, 3), (2, 3)] {
        c.lab.loss(a, b, 5).unwrap();
    }
    std::thread::sleep(Duration::from_secs(8));
    c.lab.heal().unwrap();
    let after: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(&c, i)).collect();
    assert_eq!(before, after, "a view changed under 5% loss:\n{}", logs(&c));
    assert_eq!(c.holders().len(), 1);
}

#[test]
fn both_cores_fully_loaded_for_a_bounded_period_changes_no_view() {
    let Some(c) = cluster() else { return };
    let holder = c.wait_for_holder(WITHIN).expect("a holder before the load");
    let t0 = Instant::now();
    let before: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(&c, i)).collect();
    // A bounded CPU hog: one busy thread per core (and one more) for 8 s, at normal priority, as
    // any other workload on the gateway would be.
    let end = Instant::now() + Duration::from_secs(8);
    let hogs: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < end {
                    for i in 0..10_000u64 {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
                    }
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    for h in hogs {
        h.join().unwrap();
    }
    let after: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(&c, i)).collect();
    assert_eq!(before, after, "a view changed under CPU load:\n{}", logs(&c));
    // Nothing moved: not even a release and re-add by the stall detector when the whole machine was
    // descheduled (every member then confirms the view at once, so the holder keeps the VIP).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.holders(), vec![holder], "holders after load:\n{}", logs(&c));
    assert_eq!(c.vip_changes_between(t0, Instant::now()), 0, "the VIP moved or was released under load:\n{}", logs(&c));
}

#[test]
fn losing_one_of_two_links_changes_no_view() {
    if !require_lab().expect("lab prerequisites") {
        return;
    }
    let bin = hastack_bin().expect("hastack binary");
    let c = LabCluster::start_with(&bin, 3, 2, hastack::failover::Stack::Hastack).expect("lab cluster");
    assert!(c.wait(Duration::from_secs(15), |c| (1..=3).all(|i| c.view_members(i).is_some_and(|m| m.len() == 3))));
    let before: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(&c, i)).collect();
    // Link 1 of node 3 goes down: node 3 is still reachable on link 0.
    c.lab.link_down(3, 1).unwrap();
    assert!(
        c.wait(WITHIN, |c| c.status(1).is_some_and(|s| {
            s["membership"]["peers"].as_array().into_iter().flatten().any(|p| p["node"] == 3 && p["links"][1] == false)
        })),
        "link down not reported: {}",
        c.status(1).unwrap()["membership"]["peers"]
    );
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<Option<u64>> = (1..=3).map(|i| epoch_of(&c, i)).collect();
    assert_eq!(before, after, "a view changed when one of two links went down:\n{}", logs(&c));
    c.lab.link_up(3, 1).unwrap();
}
