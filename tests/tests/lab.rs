//! End-to-end tests of the network-namespace lab itself (issue 2, "Done when"): real namespaces,
//! bridges, veths and nftables rules on this machine. Each test first checks it runs as root with
//! the tools installed (SKIP otherwise, FAIL under CI=true).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hastack_tests::lab::netns;
use hastack_tests::{HostId, Lab, poll_until, require_lab};

type TestResult = anyhow::Result<()>;

/// Tests that plant or crash namespaces take this exclusively, so no other test of this binary
/// builds a lab (whose crash cleanup would race with the planting) at the same time.
static GATE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    GATE.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    GATE.write().unwrap_or_else(|p| p.into_inner())
}

/// A ping that must fail (one probe, 500 ms wait).
fn unreachable(lab: &Lab, from: impl Into<HostId>, to: IpAddr) -> bool {
    lab.host(from).ping_fails(to)
}

/// True when a process no longer runs (gone, or a zombie waiting for its reaper).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        }
    }
}

fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

fn seed() -> u64 {
    let seed = std::env::var("HSLAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed {seed} (rerun with HSLAB_SEED={seed})");
    seed
}

/// xorshift64*: enough randomness for choosing test parameters, reproducible from the seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Sends `count` UDP datagrams from host `from` to `to`:`port` and returns how many arrived.
/// Only the lab's rules may lose datagrams: the receive buffer is forced large, and the receiver
/// stops only after the sender has finished and the socket stayed quiet for 200 ms.
fn udp_delivered(
    lab: &Lab,
    from: HostId,
    to: HostId,
    port: u16,
    count: usize,
) -> anyhow::Result<usize> {
    let dst = SocketAddr::new(IpAddr::V4(lab.host(to).addr(0)), port);
    let rx = lab.host(to).run_in(|| UdpSocket::bind(dst))??;
    nix::sys::socket::setsockopt(&rx, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20))?;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sent = Arc::new(AtomicBool::new(false));
    let counter = {
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            let (mut got, mut buf) = (0usize, [0u8; 64]);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match rx.recv(&mut buf) {
                    Ok(_) => got += 1,
                    Err(_) if sent.load(Ordering::SeqCst) || Instant::now() > deadline => {
                        break got;
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let send = lab.host(from).run_in(|| -> std::io::Result<()> {
        let tx = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..count {
            tx.send_to(&(i as u32).to_be_bytes(), dst)?;
        }
        Ok(())
    });
    sent.store(true, Ordering::SeqCst);
    let got = counter
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    send??;
    Ok(got)
}

#[test]
fn three_namespaces_ping_each_other_v4_and_v6() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let lab = Lab::builder().nodes(3).ipv6(true).build()?;
    for a in 1..=3 {
        for b in (1..=3).filter(|b| *b != a) {
            let (v4, v6) = (lab.node(b).addr(0), lab.node(b).addr6(0));
            assert!(lab.node(a).ping(v4), "n{a} -> n{b} {v4}");
            assert!(lab.node(a).ping(v6), "n{a} -> n{b} {v6}");
        }
    }
    assert_eq!(lab.node(2).addr(0).to_string(), "198.18.0.12");
    assert_eq!(lab.node(3).addr6(0).to_string(), "fd00:198:18::13");
    let addrs = lab
        .node(1)
        .exec_ok(&["ip", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(
        addrs.contains("198.18.0.11/24") && addrs.contains("fd00:198:18::11/64"),
        "{addrs}"
    );
    assert!(!addrs.contains("tentative"), "DAD must be off: {addrs}");

    // Each host has its own resolv.conf; the machine's stays untouched.
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    lab.node(1).set_resolv_conf("nameserver 198.18.0.12\n")?;
    assert_eq!(
        lab.node(1).exec_ok(&["cat", "/etc/resolv.conf"])?,
        "nameserver 198.18.0.12\n"
    );
    let other = lab.node(2).exec_ok(&["cat", "/etc/resolv.conf"])?;
    assert!(
        other.starts_with("# resolv.conf of lab namespace"),
        "{other}"
    );
    assert_eq!(std::fs::read("/etc/resolv.conf").ok(), host_resolv);
    Ok(())
}

#[test]
fn partition_blocks_exactly_the_pair_and_heal_restores() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let lab = Lab::builder().nodes(3).build()?;
    let a = |i: usize| IpAddr::V4(lab.node(i).addr(0));
    let a6 = |i: usize| IpAddr::V6(lab.node(i).addr6(0));
    lab.partition(1, 2)?;
    let rules = lab.ruleset(1)?;
    assert!(
        unreachable(&lab, 1, a(2)),
        "n1 reached n2 across the partition\n{rules}"
    );
    assert!(
        unreachable(&lab, 2, a(1)),
        "n2 reached n1 across the partition"
    );
    assert!(
        unreachable(&lab, 1, a6(2)),
        "n1 reached n2 over IPv6 across the partition"
    );
    for (x, y) in [(1, 3), (3, 1), (2, 3), (3, 2)] {
        assert!(lab.node(x).ping(a(y)), "n{x} -> n{y} must still work");
    }
    assert!(lab.node(1).ping(a6(3)));

    // heal_pair removes only that pair's rules.
    lab.partition(1, 3)?;
    assert!(unreachable(&lab, 1, a(3)));
    lab.heal_pair(1, 2)?;
    assert!(
        lab.node(1).ping(a(2)),
        "heal_pair(1,2) must restore n1 <-> n2"
    );
    assert!(
        unreachable(&lab, 3, a(1)),
        "heal_pair(1,2) must leave 1 | 3 in place"
    );
    lab.heal()?;
    for (x, y) in [(1, 2), (2, 1), (1, 3), (3, 1)] {
        assert!(lab.node(x).ping(a(y)), "after heal n{x} -> n{y}");
    }
    assert!(lab.node(2).ping(a6(1)));
    assert!(
        !lab.ruleset(1)?.contains("hslab"),
        "heal leaves no table behind"
    );
    Ok(())
}

#[test]
fn one_way_partition_blocks_one_direction_only() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let lab = Lab::builder().nodes(2).build()?;
    assert!(lab.node(1).ping(lab.node(2).addr(0)), "warm-up (ARP)");
    lab.partition_one_way(1, 2)?;
    let (n1, n2) = (HostId::Node(1), HostId::Node(2));
    assert_eq!(
        udp_delivered(&lab, n1, n2, 7001, 20)?,
        0,
        "1 -> 2 must be cut"
    );
    assert_eq!(
        udp_delivered(&lab, n2, n1, 7001, 20)?,
        20,
        "2 -> 1 must flow"
    );
    // A ping needs both directions, so it fails either way.
    assert!(unreachable(&lab, 2, IpAddr::V4(lab.node(1).addr(0))));
    lab.heal()?;
    assert_eq!(udp_delivered(&lab, n1, n2, 7001, 20)?, 20, "healed");
    Ok(())
}

#[test]
fn loss_drops_roughly_the_given_share() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let mut rng = seed();
    let pct = 20 + (next(&mut rng) % 21) as u8; // 20..=40 %
    let count = 200 + (next(&mut rng) % 101) as u32; // 200..=300 probes
    let lab = Lab::builder().nodes(2).build()?;
    let to = IpAddr::V4(lab.node(2).addr(0));
    assert!(lab.node(1).ping(to), "warm-up (ARP)");

    // Requests 1 -> 2 dropped with probability p, replies untouched: received ~ count·(1-p).
    lab.loss_one_way(1, 2, pct, None)?;
    let (tx, rx) = lab.node(1).ping_stats(to, count, 0.002, 1.0)?;
    assert_eq!(tx, count);
    let p = f64::from(pct) / 100.0;
    let expect = f64::from(count) * (1.0 - p);
    let sigma = (f64::from(count) * p * (1.0 - p)).sqrt();
    assert!(
        (f64::from(rx) - expect).abs() <= 5.0 * sigma + 3.0,
        "loss {pct}%: {rx}/{tx} answered, expected about {expect:.0} (sigma {sigma:.1})"
    );

    // Limited to one UDP port: pings pass untouched, that port loses, another port does not.
    lab.heal()?;
    lab.loss_udp(1, 2, 50, 7002)?;
    let (tx, rx) = lab.node(1).ping_stats(to, 50, 0.002, 1.0)?;
    assert_eq!(rx, tx, "pings are not UDP {tx} sent {rx} received");
    let (n1, n2) = (HostId::Node(1), HostId::Node(2));
    let got = udp_delivered(&lab, n1, n2, 7002, 400)?;
    assert!(
        (120..=280).contains(&got),
        "UDP to the lossy port: {got}/400 arrived, expected ~200"
    );
    assert_eq!(
        udp_delivered(&lab, n1, n2, 7003, 100)?,
        100,
        "other ports are untouched"
    );
    Ok(())
}

#[test]
fn link_down_on_one_link_leaves_the_other_working() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let lab = Lab::builder().nodes(3).links(2).build()?;
    let n1 = lab.node(1);
    assert_eq!(n1.addr(1).to_string(), "198.19.0.11");
    assert_eq!(n1.addr6(1).to_string(), "fd00:198:18:1::11");
    assert!(lab.node(2).ping(n1.addr(0)) && lab.node(2).ping(n1.addr(1)));

    lab.link_down(1, 0)?;
    assert!(
        unreachable(&lab, 2, IpAddr::V4(n1.addr(0))),
        "link 0 of n1 is down"
    );
    assert!(lab.node(2).ping(n1.addr(1)), "link 1 must still work");
    assert!(
        lab.node(2).ping(n1.addr6(1)),
        "link 1 must still work over IPv6"
    );
    lab.link_up(1, 0)?;
    let back = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lab.node(2).ping(n1.addr(0))
    });
    assert!(back, "link 0 back up");
    assert!(
        lab.node(2).ping(n1.addr6(0)),
        "IPv6 address kept across link down/up"
    );

    // Cable pull on the switch side: the node sees carrier loss, link 0 keeps working.
    let n3 = lab.node(3);
    n3.cable_cut(1)?;
    let link = n3.exec_ok(&["ip", "link", "show", "eth1"])?;
    assert!(link.contains("NO-CARRIER"), "{link}");
    assert!(unreachable(&lab, 1, IpAddr::V4(n3.addr(1))));
    assert!(lab.node(1).ping(n3.addr(0)));
    n3.cable_restore(1)?;
    assert!(poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || lab.node(1).ping(n3.addr(1))
    ));
    Ok(())
}

#[test]
fn neighbour_table_shows_the_peer_mac_after_a_ping() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let lab = Lab::builder().nodes(2).build()?;
    let peer = lab.node(2);
    assert!(lab.node(1).ping(peer.addr(0)) && lab.node(1).ping(peer.addr6(0)));
    let neigh = lab.neighbours(1)?;
    for ip in [IpAddr::V4(peer.addr(0)), IpAddr::V6(peer.addr6(0))] {
        let e = neigh
            .iter()
            .find(|n| n.ip == ip)
            .unwrap_or_else(|| panic!("no entry for {ip} in {neigh:?}"));
        assert_eq!(e.mac, Some(peer.mac(0)), "{e:?}");
        assert!(e.is_resolved() && e.dev == "eth0", "{e:?}");
    }
    assert_eq!(peer.mac(0).to_string(), "02:5a:00:00:00:02");

    // A VIP-like extra address: who holds it, and whose MAC the other side learns for it.
    let vip: IpAddr = "198.18.0.50".parse()?;
    assert!(!peer.has_addr(vip)?);
    peer.exec_ok(&["ip", "addr", "add", "198.18.0.50/24", "dev", "eth0"])?;
    assert!(peer.has_addr(vip)? && !lab.node(1).has_addr(vip)?);
    assert!(lab.node(1).ping(vip));
    assert!(
        lab.node(1)
            .wait_for_neighbour(vip, peer.mac(0), Duration::from_secs(2))
    );
    assert!(
        !lab.node(1)
            .wait_for_neighbour(vip, lab.node(1).mac(0), Duration::from_millis(100))
    );
    Ok(())
}

#[test]
fn clients_join_link_zero_and_isolate_cuts_a_node_off() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let mut lab = Lab::builder().nodes(2).links(2).build()?;
    lab.isolate(1)?;
    let c = lab.add_client(std::net::Ipv4Addr::new(198, 18, 0, 100))?;
    assert!(
        lab.add_client(std::net::Ipv4Addr::new(198, 18, 0, 11))
            .is_err(),
        "address of node 1"
    );
    assert!(
        lab.add_client(std::net::Ipv4Addr::new(10, 0, 0, 1))
            .is_err(),
        "outside the lab"
    );
    let bare = lab.add_client(None)?;
    let client = lab.host(c);
    assert_eq!(client.addr6(0).to_string(), "fd00:198:18::100");
    assert!(client.ping(lab.node(2).addr(0)));
    assert!(client.ping(lab.node(2).addr6(0)));
    // isolate() was in force before the client existed and must cover it too.
    assert!(unreachable(&lab, c, IpAddr::V4(lab.node(1).addr(0))));
    assert!(
        unreachable(&lab, 2, IpAddr::V4(lab.node(1).addr(1))),
        "isolation covers every link"
    );
    lab.heal_host(1)?;
    assert!(client.ping(lab.node(1).addr(0)));
    let bare_addrs = lab
        .host(bare)
        .exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(
        bare_addrs.trim().is_empty(),
        "unconfigured client has no IPv4 address: {bare_addrs}"
    );
    Ok(())
}

#[test]
fn ipv6_off_means_no_ipv6() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let lab = Lab::builder().nodes(2).ipv6(false).build()?;
    assert!(lab.node(1).links()[0].v6.is_none());
    let out = lab.node(1).exec_ok(&["ip", "-6", "-o", "addr"])?;
    assert!(out.trim().is_empty(), "IPv6 should be disabled: {out}");
    assert!(lab.node(1).ping(lab.node(2).addr(0)));
    Ok(())
}

/// What a lab had, for checking it is all gone.
#[derive(Default, Debug)]
struct Footprint {
    namespaces: Vec<String>,
    pids: Vec<i32>,
    link_names: Vec<String>,
    dir: std::path::PathBuf,
}

fn footprint_of(lab: &Lab) -> anyhow::Result<Footprint> {
    let sleeper = lab.node(1).spawn(&["sleep", "30"])?;
    // An untracked daemon-like process: only the namespace sweep can find it.
    lab.node(2)
        .exec_ok(&["sh", "-c", "setsid sleep 30 </dev/null >/dev/null 2>&1 &"])?;
    lab.partition(1, 2)?;
    let mut fp = Footprint {
        namespaces: lab.namespaces().to_vec(),
        dir: lab.dir().to_path_buf(),
        ..Footprint::default()
    };
    assert!(poll_until(
        Duration::from_secs(2),
        Duration::from_millis(10),
        || !netns::pids_in_netns(lab.node(2).ns_name()).is_empty()
    ));
    for ns in &fp.namespaces {
        fp.pids.extend(netns::pids_in_netns(ns));
    }
    assert!(
        fp.pids.contains(&(sleeper.pid() as i32)),
        "{:?} lacks {}",
        fp.pids,
        sleeper.pid()
    );
    std::mem::forget(sleeper); // leaked on purpose: the lab must still kill it
    for h in lab.nodes() {
        for l in h.links() {
            fp.link_names.push(l.port.clone());
        }
    }
    Ok(fp)
}

fn assert_gone(fp: &Footprint, before_links: &BTreeSet<String>) {
    for ns in &fp.namespaces {
        assert!(!netns::netns_exists(ns), "namespace {ns} left behind");
        assert!(
            !std::path::Path::new(netns::ETC_NETNS_DIR).join(ns).exists(),
            "/etc/netns/{ns} left behind"
        );
    }
    let all_gone = poll_until(Duration::from_secs(2), Duration::from_millis(10), || {
        fp.pids.iter().all(|p| process_gone(*p))
    });
    assert!(
        all_gone,
        "processes left: {:?}",
        fp.pids
            .iter()
            .filter(|p| !process_gone(**p))
            .collect::<Vec<_>>()
    );
    let after = host_links();
    for name in after.difference(before_links) {
        assert!(
            !fp.link_names.contains(name) && !name.starts_with("br"),
            "link {name} appeared on the host"
        );
    }
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("hslab"),
        "nft table on the host"
    );
}

#[test]
fn drop_leaves_no_namespace_link_table_or_process() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let before = host_links();
    let lab = Lab::builder().nodes(2).links(2).build()?;
    let fp = footprint_of(&lab)?;
    assert_eq!(fp.pids.len(), 2, "{fp:?}");
    drop(lab);
    assert_gone(&fp, &before);
    assert!(!fp.dir.exists(), "lab dir {} left behind", fp.dir.display());
    Ok(())
}

#[test]
fn a_panicking_test_still_cleans_up() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = shared();
    let before = host_links();
    let seen: Mutex<Option<Footprint>> = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::builder().nodes(2).build().expect("lab");
        *seen.lock().unwrap() = Some(footprint_of(&lab).expect("footprint"));
        panic!("deliberate panic inside a lab test body");
    }));
    assert!(result.is_err(), "the body must have panicked");
    let fp = seen
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .expect("body ran");
    assert_gone(&fp, &before);
    // A failing test keeps its logs for reading; this one failed on purpose, so tidy up.
    assert!(fp.dir.exists(), "logs of a failed test are kept");
    std::fs::remove_dir_all(&fp.dir)?;
    Ok(())
}

/// A pid that certainly belongs to no running process right now.
fn dead_pid() -> anyhow::Result<i32> {
    let mut c = Command::new("true").spawn()?;
    let pid = c.id() as i32;
    c.wait()?;
    anyhow::ensure!(!netns::pid_alive(pid), "pid {pid} reused already");
    Ok(pid)
}

#[test]
fn crash_cleanup_removes_namespaces_of_dead_owners() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = exclusive();
    let name = format!("{}{}x7sw", netns::PREFIX, dead_pid()?);
    // A process in a fresh network namespace, then named: as if a crashed run left it running.
    let mut squatter = sleeper_in_own_netns()?;
    let attach = Command::new("ip")
        .args(["netns", "attach", &name, &squatter.id().to_string()])
        .output()?;
    anyhow::ensure!(
        attach.status.success(),
        "ip netns attach: {}",
        String::from_utf8_lossy(&attach.stderr)
    );
    assert!(netns::netns_exists(&name));
    assert_eq!(netns::pids_in_netns(&name), vec![squatter.id() as i32]);

    let lab = Lab::builder().nodes(1).build()?;
    assert!(
        !netns::netns_exists(&name),
        "stale namespace {name} survived a new lab"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(st) = squatter.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = squatter.kill();
            let _ = squatter.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        status.is_some(),
        "the process inside the stale namespace was not killed"
    );
    assert!(
        netns::netns_exists(lab.switch_ns()),
        "our own live lab is untouched"
    );
    Ok(())
}

/// Plants a namespace named after live process `owner` (a sleeping child of ours, attached as
/// the namespace's only process) with an owner file saying start time `start`.
fn plant(
    owner: &std::process::Child,
    counter: u32,
    start: u64,
) -> anyhow::Result<(String, std::path::PathBuf)> {
    let id = format!("{}{}x{counter}", netns::PREFIX, owner.id());
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(netns::OWNER_FILE),
        format!("{} {start}\n", owner.id()),
    )?;
    let ns = format!("{id}sw");
    let out = Command::new("ip")
        .args(["netns", "attach", &ns, &owner.id().to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip netns attach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((ns, dir))
}

fn sleeper_in_own_netns() -> anyhow::Result<std::process::Child> {
    let mut cmd = Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null());
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
        });
    }
    Ok(cmd.spawn()?)
}

#[test]
fn crash_cleanup_sees_through_pid_reuse() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = exclusive();
    // "reused": the owner pid is alive but its start time is not the recorded one.
    let mut reused = sleeper_in_own_netns()?;
    let real = netns::process_start_time(reused.id() as i32).expect("start time");
    let (reused_ns, reused_dir) = plant(&reused, 901, real + 1)?;
    // "live": pid and start time match, so this lab's owner is still running: keep it.
    let mut live = sleeper_in_own_netns()?;
    let start = netns::process_start_time(live.id() as i32).expect("start time");
    let (live_ns, live_dir) = plant(&live, 902, start)?;

    let lab = Lab::builder().nodes(1).build();
    let reused_gone = !netns::netns_exists(&reused_ns) && !reused_dir.exists();
    let live_kept = netns::netns_exists(&live_ns) && live_dir.exists();
    // Tidy up whatever is left before asserting.
    let _ = netns::delete_netns(&[reused_ns.clone(), live_ns.clone()]);
    let _ = std::fs::remove_dir_all(&reused_dir);
    let _ = std::fs::remove_dir_all(&live_dir);
    for child in [&mut reused, &mut live] {
        let _ = child.kill();
        let _ = child.wait();
    }
    lab?;
    assert!(
        reused_gone,
        "namespace {reused_ns} of a reused owner pid survived"
    );
    assert!(live_kept, "namespace {live_ns} of a live owner was deleted");
    Ok(())
}

/// Child half of `a_crashed_test_process_is_cleaned_up_by_the_next_lab`: builds a lab, starts a
/// process in it, prints the names and dies without unwinding. Does nothing unless asked to.
#[test]
#[ignore = "run only as a child of a_crashed_test_process_is_cleaned_up_by_the_next_lab"]
fn crash_child_body() {
    if std::env::var("HSLAB_CRASH_CHILD").as_deref() != Ok("1") {
        return;
    }
    let lab = Lab::builder().nodes(2).build().expect("lab");
    let p = lab.node(1).spawn(&["sleep", "30"]).expect("spawn");
    // A crashed run's processes are long settled in their namespace; wait until this one is.
    let settled = poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
        netns::pids_in_netns(lab.node(1).ns_name()).contains(&(p.pid() as i32))
    });
    assert!(settled, "sleep never entered its namespace");
    for ns in lab.namespaces() {
        println!("NS {ns}");
    }
    println!("PID {}", p.pid());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::abort();
}

#[test]
fn a_crashed_test_process_is_cleaned_up_by_the_next_lab() -> TestResult {
    if !require_lab()? {
        return Ok(());
    }
    let _g = exclusive();
    let out = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "crash_child_body",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HSLAB_CRASH_CHILD", "1")
        .env_remove("CI")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    assert!(!out.status.success(), "the child must have aborted");
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.rsplit_once("NS "))
        .map(|(_, n)| n.trim().to_owned())
        .collect();
    let pid: i32 = text
        .lines()
        .find_map(|l| l.rsplit_once("PID ").map(|(_, p)| p))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("child printed no PID: {text}"))?;
    assert_eq!(names.len(), 3, "{text}");
    for ns in &names {
        assert!(
            netns::netns_exists(ns),
            "the crash must have left {ns} behind"
        );
    }
    assert!(
        !process_gone(pid),
        "the child's process must still run after the crash"
    );

    let _lab = Lab::builder().nodes(1).build()?;
    for ns in &names {
        assert!(!netns::netns_exists(ns), "{ns} survived the crash cleanup");
        assert!(
            !std::path::Path::new(netns::ETC_NETNS_DIR).join(ns).exists(),
            "/etc/netns/{ns} survived"
        );
    }
    assert!(
        poll_until(Duration::from_secs(2), Duration::from_millis(10), || {
            process_gone(pid)
        }),
        "pid {pid} survived"
    );
    Ok(())
}
