//! Root test in real network namespaces: the VIP agent adds an address with a kernel lease through
//! rtnetlink, announces it with gratuitous ARP / unsolicited NA that a peer namespace sees, renews
//! it, lets it expire, and removes stale VIPs.
//!
//! Two namespaces joined by a veth pair, addresses in 198.18.0.0/15 and fd00:198:18::/48 only.
//! Skips when not root, unless CI=true (then it fails).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vip_manager::garp::{announcement_frames, announce, AnnounceSchedule, ArpFrame, NeighbourAdvert, PacketSocket};
use vip_manager::vip::{Lease, NetlinkVips};
use vip_manager::VipSpec;

fn root_or_skip(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (CI=true, so this is a failure, not a skip)");
    }
    eprintln!("SKIP {test}: needs root for network namespaces");
    false
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("hsvip{}{}{}", std::process::id(), tag, N.fetch_add(1, Ordering::Relaxed));
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    fn sysctl(&self, key: &str, value: &str) {
        run(&["ip", "netns", "exec", &self.name, "sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Holder namespace `a` (veth0) and peer namespace `b` (veth1).
struct Lab {
    a: Netns,
    b: Netns,
}

fn lab() -> Lab {
    let a = Netns::new("a");
    let b = Netns::new("b");
    a.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &b.name]);
    a.ip(&["addr", "add", "198.18.0.1/24", "dev", "veth0"]);
    b.ip(&["addr", "add", "198.18.0.2/24", "dev", "veth1"]);
    a.ip(&["-6", "addr", "add", "fd00:198:18::1/64", "dev", "veth0", "nodad"]);
    b.ip(&["-6", "addr", "add", "fd00:198:18::2/64", "dev", "veth1", "nodad"]);
    b.sysctl("net.ipv4.conf.veth1.arp_accept", "1");
    b.sysctl("net.ipv6.conf.veth1.accept_untracked_na", "1");
    a.ip(&["link", "set", "veth0", "up"]);
    b.ip(&["link", "set", "veth1", "up"]);
    // IPv6 on the peer accepts multicast (ff02::1) only once the link is up and addrconf has added
    // the ff00::/8 route; before that NAs are dropped as "no route".
    let t0 = Instant::now();
    while !b.ip(&["-6", "route", "show", "table", "local", "dev", "veth1"]).contains("ff00::/8") {
        assert!(t0.elapsed() < Duration::from_secs(5), "peer IPv6 never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Lab { a, b }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Captures every frame on the namespace's interfaces for `window`; signals readiness first.
fn capture(ns: &Netns, window: Duration) -> (mpsc::Receiver<()>, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    let (tx, rx) = mpsc::channel();
    let h = ns.run_in(move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2); checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "capture socket: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptor owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
        // SAFETY: valid pointer and length.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        tx.send(()).expect("ready");
        let end = Instant::now() + window;
        let mut frames = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    });
    (rx, h)
}

fn vip(addr: &str, prefix: u8) -> VipSpec {
    VipSpec { address: addr.parse().unwrap(), prefix_len: prefix, interface: "veth0".into() }
}

/// The full cycle for one address family.
fn lease_announce_expire(addr: &str, prefix: u8) {
    let lab = lab();
    let spec = vip(addr, prefix);
    // The peer still points the VIP at a previous holder; the announcement must override that.
    lab.b.ip(&["neigh", "add", addr, "lladdr", "02:00:00:00:00:99", "dev", "veth1", "nud", "stale"]);
    let (ready, cap) = capture(&lab.b, Duration::from_millis(1500));
    ready.recv().expect("capture ready");

    // Add with a 2 s lease and announce; report the holder's MAC.
    let s = spec.clone();
    let mac = lab
        .a
        .run_in(move || {
            rt().block_on(async {
                let nl = NetlinkVips::connect().expect("netlink");
                let lease = Lease::new(Duration::from_secs(2));
                nl.add(&s, &lease).await.expect("add vip");
                let ifc = nl.interface("veth0").await.expect("interface");
                let mac = ifc.mac.expect("veth has a MAC");
                let sock = PacketSocket::open(ifc.index).expect("packet socket");
                let sched = AnnounceSchedule { repeat_after: None, ..AnnounceSchedule::default() };
                let sent = announce(&sock, &announcement_frames(mac, s.address), &sched).await;
                assert!(sent >= 3, "sent {sent} frames");
                mac
            })
        })
        .join()
        .expect("holder thread");

    let fam = if spec.address.is_ipv4() { "-4" } else { "-6" };
    let shown = lab.a.ip(&[fam, "addr", "show", "dev", "veth0"]);
    let line = shown
        .lines()
        .skip_while(|l| !l.contains(&format!("{addr}/{prefix}")))
        .nth(1)
        .unwrap_or_else(|| panic!("VIP not shown:\n{shown}"));
    assert!(
        line.contains("valid_lft 2sec") || line.contains("valid_lft 1sec"),
        "lease not applied: {line:?}\n{shown}"
    );

    // The peer saw announcements carrying the holder's MAC.
    let frames = cap.join().expect("capture thread");
    match spec.address {
        IpAddr::V4(v4) => {
            let garps: Vec<ArpFrame> = frames
                .iter()
                .filter_map(|f| ArpFrame::parse(f).ok())
                .filter(|a| a.is_gratuitous() && a.spa == v4 && a.sha == mac)
                .collect();
            assert!(garps.iter().any(|a| a.op == 1), "no gratuitous ARP request: {garps:?}");
            assert!(garps.iter().any(|a| a.op == 2), "no gratuitous ARP reply: {garps:?}");
        }
        IpAddr::V6(v6) => {
            let nas: Vec<NeighbourAdvert> = frames
                .iter()
                .filter_map(|f| NeighbourAdvert::parse(f).ok())
                .filter(|n| n.target == v6 && n.tlla == Some(mac))
                .collect();
            assert!(nas.iter().any(|n| n.override_flag && !n.solicited), "no unsolicited NA: {nas:?}");
        }
    }
    let mac_s = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let neigh = lab.b.ip(&[fam, "neigh", "show", addr]);
    if !neigh.contains(&mac_s) {
        let snmp = run(&["ip", "netns", "exec", &lab.b.name, "cat", "/proc/net/snmp6"]);
        eprintln!("peer ICMPv6 counters:\n{}", snmp.lines().filter(|l| l.starts_with("Icmp6") || l.starts_with("Ip6In")).collect::<Vec<_>>().join("\n"));
    }
    assert!(neigh.contains(&mac_s), "peer neighbour table lacks {mac_s}: {neigh:?}");
    assert!(!neigh.contains("02:00:00:00:00:99"), "stale holder kept: {neigh:?}");

    // Renewal keeps it beyond its lifetime; then, not renewed, the kernel drops it.
    let s = spec.clone();
    let (present_after_renewals, gone_after) = lab
        .a
        .run_in(move || {
            rt().block_on(async {
                let nl = NetlinkVips::connect().expect("netlink");
                let lease = Lease::new(Duration::from_secs(2));
                let t0 = tokio::time::Instant::now();
                while t0.elapsed() < Duration::from_millis(2600) {
                    tokio::time::sleep(lease.renew_every).await;
                    nl.add(&s, &lease).await.expect("renew");
                }
                let present = nl.has(&s).await.expect("query");
                let stop = Instant::now();
                loop {
                    if !nl.has(&s).await.expect("query") {
                        break (present, Some(stop.elapsed()));
                    }
                    if stop.elapsed() > Duration::from_secs(5) {
                        break (present, None);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .join()
        .expect("renew thread");
    assert!(present_after_renewals, "renewed VIP vanished");
    let gone = gone_after.expect("kernel did not remove the unrenewed VIP within 5 s");
    // Documented bound: lifetime + ~1 s of kernel timer rounding.
    assert!(gone <= Duration::from_millis(3300), "took {gone:?}");
}

#[test]
fn ipv4_vip_lease_garp_and_expiry() {
    if root_or_skip("ipv4_vip_lease_garp_and_expiry") {
        lease_announce_expire("198.18.0.10", 24);
    }
}

#[test]
fn ipv6_vip_lease_na_and_expiry() {
    if root_or_skip("ipv6_vip_lease_na_and_expiry") {
        lease_announce_expire("fd00:198:18::10", 64);
    }
}

#[test]
fn stale_vips_are_removed_at_startup() {
    if !root_or_skip("stale_vips_are_removed_at_startup") {
        return;
    }
    let lab = lab();
    // A leftover of a previous run (marked, long lease), a configured VIP added by hand (unmarked),
    // and an unrelated address that must survive.
    let marked = vip("198.18.0.20", 24);
    let marked6 = vip("fd00:198:18::20", 64);
    lab.a.ip(&["addr", "add", "198.18.0.21/24", "dev", "veth0"]);
    lab.a.ip(&["addr", "add", "198.18.0.22/24", "dev", "veth0"]);
    let configured = vec![vip("198.18.0.21", 24)];
    let (m4, m6) = (marked.clone(), marked6.clone());
    let removed = lab
        .a
        .run_in(move || {
            rt().block_on(async {
                let nl = NetlinkVips::connect().expect("netlink");
                let lease = Lease::new(Duration::from_secs(60));
                nl.add(&m4, &lease).await.expect("add");
                nl.add(&m6, &lease).await.expect("add v6");
                let found = nl.addresses().await.expect("dump");
                let f4 = found.iter().find(|a| a.address == m4.address).expect("marked v4 listed");
                assert!(f4.is_marked(), "{f4:?}");
                let mut removed: Vec<IpAddr> =
                    nl.remove_stale(&configured).await.expect("cleanup").iter().map(|a| a.address).collect();
                removed.sort();
                assert!(!nl.remove(&m4).await.expect("remove absent"), "already gone");
                removed
            })
        })
        .join()
        .expect("thread");
    let want: Vec<IpAddr> =
        vec!["198.18.0.20".parse().unwrap(), "198.18.0.21".parse().unwrap(), "fd00:198:18::20".parse().unwrap()];
    assert_eq!(removed, want);
    let left = lab.a.ip(&["addr", "show", "dev", "veth0"]);
    assert!(left.contains("198.18.0.22/24") && left.contains("198.18.0.1/24"), "{left}");
    assert!(!left.contains("198.18.0.20/") && !left.contains("198.18.0.21/"), "{left}");
}
