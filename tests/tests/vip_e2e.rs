//! End-to-end checks of the resource side of `hastack cluster` in the namespace lab (three LB nodes
//! and a client, real daemons): the IPv6 VIP follows crashes and graceful stops with unsolicited
//! neighbour advertisements; a partition leaves the VIP on the quorate side only and the heal
//! re-announces it (gratuitous ARP captured at the client); an exec resource's monitor failures
//! drive on-fail=restart, migration-threshold and failure-timeout, and `hastack status` shows the
//! failure counts and the last failed action.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hastack::failover::{Fault, LabCluster, SERVICE_PORT, VIP, VIP6};
use hastack_tests::{HostId, Lab, hastack_bin, require_lab};

const WITHIN: Duration = Duration::from_secs(5);

fn formed(c: &LabCluster) {
    let ok = c.wait(Duration::from_secs(15), |c| (1..=3).all(|i| c.view_members(i).is_some_and(|m| m.len() == 3)));
    assert!(ok, "no three-node view formed:\n{}", logs(c));
}

fn logs(c: &LabCluster) -> String {
    (1..=3).map(|i| format!("--- lb{i} ---\n{}", c.daemon_log(i))).collect::<Vec<_>>().join("\n")
}

/// Which node answers a fresh TCP connection from the client to `vip` (None: no answer).
fn answered_by(lab: &Lab, vip: IpAddr) -> Option<usize> {
    lab.client(1)
        .thread_in(move || {
            let mut s = TcpStream::connect_timeout(&SocketAddr::new(vip, SERVICE_PORT), Duration::from_secs(1)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).ok()?;
            Some(usize::from(b[0]))
        })
        .ok()?
        .join()
        .ok()?
        .ok()?
}

/// Asserts the client's neighbour entry for `vip` carries node `to`'s MAC.
fn client_follows(c: &LabCluster, vip: IpAddr, to: usize) {
    let want = c.lab.node(to).mac(0);
    let ok = c.wait(Duration::from_secs(2), |c| {
        c.lab.neighbours(HostId::Client(1)).unwrap_or_default().iter().any(|n| n.ip == vip && n.mac == Some(want))
    });
    let neigh = c.lab.neighbours(HostId::Client(1)).unwrap_or_default();
    assert!(ok, "client's neighbour entry for {vip} is not lb{to}'s MAC {want}: {neigh:?}");
}

#[test]
fn ipv6_vip_moves_on_crash_and_graceful_stop_and_the_client_follows() {
    if !require_lab().expect("lab prerequisites") {
        return;
    }
    let bin = hastack_bin().expect("hastack binary");
    let mut c = LabCluster::start_v6(&bin, 3).expect("IPv6 lab cluster");
    formed(&c);
    let vip = IpAddr::V6(VIP6);
    assert_eq!(c.vip(), vip);
    let first = c.wait_for_holder(WITHIN).expect("a holder of the IPv6 VIP");
    assert_eq!(answered_by(&c.lab, vip), Some(first), "TCP through [{VIP6}]:{SERVICE_PORT}");

    for fault in [Fault::Crash, Fault::Graceful] {
        let t0 = Instant::now();
        let s = c.failover(fault, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{fault:?}: {e:#}\n{}", logs(&c)));
        assert_ne!(s.to, s.from, "{fault:?}");
        assert!(s.outage < Duration::from_secs(2), "{fault:?}: outage {:?}", s.outage);
        // The crashed node is cut off; a gracefully stopped one must never overlap.
        let except = (fault == Fault::Crash).then_some(s.from);
        assert_eq!(c.double_holders_since(t0, except), Duration::ZERO, "{fault:?}: two holders");
        // Unsolicited NA: the client's neighbour cache moved to the new holder's MAC, and a fresh
        // connection through the VIP reaches it.
        client_follows(&c, vip, s.to);
        let now_holder = c.wait_for_holder(WITHIN).expect("one holder after the failover");
        assert_eq!(answered_by(&c.lab, vip), Some(now_holder), "{fault:?}: TCP through the IPv6 VIP");
    }
}

/// Gratuitous ARPs seen: when, and the sender's MAC.
type Garps = Vec<(Instant, [u8; 6])>;

/// Collects the gratuitous ARPs for `vip` the client receives during `window`, as (when, sender
/// MAC); signals once the capture socket is open.
fn capture_garps(lab: &Lab, vip: std::net::Ipv4Addr, window: Duration) -> (mpsc::Receiver<()>, std::thread::JoinHandle<Garps>) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (tx, rx) = mpsc::channel();
    let h = lab
        .client(1)
        .thread_in(move || {
            let proto = (libc::ETH_P_ARP as u16).to_be();
            // SAFETY: socket(2) with constant arguments; the result is checked.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            assert!(fd >= 0, "capture socket: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh descriptor, owned from here on.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
            // SAFETY: valid pointer and length for SO_RCVTIMEO.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            let _ = tx.send(());
            let end = Instant::now() + window;
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            while Instant::now() < end {
                // SAFETY: buf is valid for its length.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                let f = &buf[..n];
                // Ethernet + ARP for IPv4: sender IP at 28..32, target IP at 38..42.
                if n >= 42 && f[12..14] == [0x08, 0x06] && f[28..32] == vip.octets() && f[38..42] == vip.octets() {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&f[22..28]);
                    seen.push((Instant::now(), mac));
                }
            }
            seen
        })
        .expect("capture thread");
    let h = std::thread::spawn(move || h.join().expect("capture thread panicked").expect("capture in the client namespace"));
    (rx, h)
}

#[test]
fn partition_keeps_the_vip_on_the_quorate_side_and_the_heal_reannounces_it() {
    if !require_lab().expect("lab prerequisites") {
        return;
    }
    let bin = hastack_bin().expect("hastack binary");
    let c = LabCluster::start(&bin, 3).expect("lab cluster");
    formed(&c);
    let holder = c.wait_for_holder(WITHIN).unwrap();
    let others: Vec<usize> = (1..=3).filter(|i| *i != holder).collect();
    let t0 = Instant::now();
    for &o in &others {
        c.lab.partition(holder, o).unwrap();
    }
    assert!(c.wait(WITHIN, |c| c.quorate(holder) == Some(false)), "the isolated node kept quorum");
    assert!(
        c.wait(WITHIN, |c| {
            let h = c.holders();
            h.len() == 1 && others.contains(&h[0])
        }),
        "VIP not on the quorate side only: {:?}\n{}",
        c.holders(),
        logs(&c)
    );
    let new = c.holders()[0];
    // Both sides could talk to the client all along: never two holders.
    assert_eq!(c.double_holders_since(t0, None), Duration::ZERO, "two holders during the partition");
    // Let the takeover's own repeated burst (lab config: 2 s after) pass, so what the capture sees
    // after the heal is the heal's re-announcement.
    std::thread::sleep(Duration::from_millis(2500));
    let (ready, cap) = capture_garps(&c.lab, VIP, Duration::from_secs(3));
    ready.recv().expect("capture ready");
    let healed_at = Instant::now();
    c.lab.heal().unwrap();
    assert!(
        c.wait(Duration::from_secs(8), |c| (1..=3).all(|i| c.view_members(i) == Some(vec![1, 2, 3]))),
        "no single view after the heal"
    );
    let garps = cap.join().expect("capture");
    let mac = c.lab.node(new).mac(0).0;
    assert!(
        garps.iter().any(|(at, m)| *at >= healed_at && *m == mac),
        "no gratuitous ARP from the holder lb{new} after the heal (seen: {garps:?})\n{}",
        logs(&c)
    );
    assert_eq!(c.holders(), vec![new], "the heal moved or doubled the VIP");
}

/// Status JSON → the node an exec resource runs on.
fn runs_on(c: &LabCluster, rsc: &str) -> Option<usize> {
    (1..=3).find_map(|i| c.status(i)?["placement"][rsc].as_u64()).and_then(|n| usize::try_from(n).ok())
}

fn status_text(c: &LabCluster) -> String {
    (1..=3).find_map(|i| c.status(i)?["resources_text"].as_str().map(str::to_string)).unwrap_or_default()
}

#[test]
fn exec_resource_failures_restart_then_move_then_expire_and_status_shows_them() {
    if !require_lab().expect("lab prerequisites") {
        return;
    }
    // The marker file is per network namespace: the agent runs inside its node's namespace.
    let marker = "{dir}/svc-$(readlink /proc/self/ns/net | tr -dc 0-9)";
    let extra = format!(
        "[[resource]]\nname = \"svc\"\nmonitor_interval = \"200ms\"\nmonitor_timeout = \"2s\"\n\
         on_fail = \"restart\"\nmigration_threshold = 2\nfailure_timeout = \"3s\"\n\
         [resource.exec]\nstart = \"touch {marker}\"\nstop = \"rm -f {marker}\"\n\
         monitor = \"test -e {marker} || exit 7\"\n"
    );
    let bin = hastack_bin().expect("hastack binary");
    let c = LabCluster::start_with_config(&bin, 3, &extra).expect("lab cluster with an exec resource");
    formed(&c);
    let dir = c.lab.dir().to_path_buf();
    let break_it = || {
        for e in std::fs::read_dir(&dir).expect("lab dir").flatten() {
            if e.file_name().to_string_lossy().starts_with("svc-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    };
    assert!(c.wait(WITHIN, |c| runs_on(c, "svc").is_some()), "svc never started:\n{}", logs(&c));
    let first = runs_on(&c, "svc").unwrap();

    // One monitor failure: on_fail=restart restarts it in place and status counts it.
    break_it();
    let last_failed = format!("Last failed action: svc monitor on node{first}");
    let restarted = c.wait(WITHIN, |c| {
        let text = status_text(c);
        text.contains(&format!("svc on node{first}: fail-count=1")) && text.contains(&last_failed) && runs_on(c, "svc") == Some(first)
    });
    assert!(restarted, "no restart in place after one failure:\n{}\n{}", status_text(&c), logs(&c));
    assert!(c.wait(WITHIN, |_| dir.read_dir().is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("svc-"))))), "not restarted");

    // A second failure reaches migration-threshold=2: it moves elsewhere.
    break_it();
    assert!(
        c.wait(WITHIN, |c| runs_on(c, "svc").is_some_and(|n| n != first)),
        "svc did not move after reaching the migration threshold:\n{}\n{}",
        status_text(&c),
        logs(&c)
    );
    let text = status_text(&c);
    assert!(text.contains(&format!("svc on node{first}: fail-count=2")), "{text}");

    // failure-timeout=3s: the failures on the first node are forgotten (checked at agreed time).
    assert!(
        c.wait(Duration::from_secs(8), |c| !status_text(c).contains(&format!("svc on node{first}"))),
        "failures never expired:\n{}",
        status_text(&c)
    );
}
