//! Real clients against the real server in network namespaces: busybox udhcpc (hostname option,
//! option 121) and ISC dhclient (DORA, release) obtain leases from dhcp-dns, and `dig` from the
//! client namespace resolves the names at once, forward and reverse, over UDP and TCP.
//! Needs root, iproute2, udhcpc, dhclient and dig; outside root it skips (and fails when CI=true).
//! Addresses: 198.18.0.0/24 inside namespaces this test creates and deletes.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "HASTACK_NETNS_SERVER_CHILD";

fn effective_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}

fn have(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Namespaces and the server child; removed on drop, whatever happened.
struct Lab {
    srv: String,
    cli: String,
    child: Option<Child>,
    dhclient_pid: Option<std::path::PathBuf>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A dhclient we started may still run in the background: stop it by its pid file.
        if let Some(pid) = self.dhclient_pid.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|s| s.trim().parse::<i32>().ok()) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        for ns in [&self.cli, &self.srv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().expect("run");
    assert!(st.success(), "{args:?} failed");
}

/// Run a command in a namespace with a time bound; output goes through a file, not a pipe, so a
/// client that daemonizes (dhclient) cannot keep us waiting for EOF.
fn in_ns(ns: &str, args: &[&str], timeout_s: u32) -> String {
    let mut full = vec!["timeout".to_string(), timeout_s.to_string(), "ip".into(), "netns".into(), "exec".into(), ns.into()];
    full.extend(args.iter().map(|s| s.to_string()));
    let log = tempfile::NamedTempFile::new().expect("tempfile");
    let f = log.reopen().expect("reopen");
    let f2 = f.try_clone().expect("clone");
    let _ = Command::new(&full[0]).args(&full[1..]).stdin(Stdio::null()).stdout(f).stderr(f2).status().expect("run in netns");
    std::fs::read_to_string(log.path()).unwrap_or_default()
}

/// The server side, run by the parent inside the server namespace.
#[test]
fn netns_server_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        use dhcp_dns::dhcp::{DhcpConfig, Reservation, Subnet};
        use dhcp_dns::dns::ZoneConfig;
        use dhcp_dns::leases::commit::CompactionPolicy;
        use dhcp_dns::runtime::{DhcpDnsOptions, DhcpRuntime, DnsRuntime, start};
        use dhcp_dns::server::{DhcpDriverConfig, DnsServerConfig};
        let sid = Ipv4Addr::new(198, 18, 0, 1);
        let mut s = Subnet::new("198.18.0.0/24".parse().expect("net"), sid);
        s.ranges = vec![(Ipv4Addr::new(198, 18, 0, 100), Ipv4Addr::new(198, 18, 0, 150))];
        s.routers = vec![sid];
        s.dns_servers = vec![sid];
        s.classless_routes = vec![("198.19.0.0/16".parse().expect("net"), sid)];
        let opts = DhcpDnsOptions {
            lease_file: std::path::Path::new(&dir).join("leases.log"),
            compaction: CompactionPolicy::default(),
            import_dnsmasq_leases: None,
            dhcp: Some(DhcpRuntime {
                core: DhcpConfig {
                    domain: Some("cluster.test".into()),
                    subnets: vec![s],
                    reservations: vec![Reservation {
                        hwaddr: Some(vec![0x52, 0x54, 0, 0xee, 0, 1]),
                        client_id: None,
                        addr: Ipv4Addr::new(198, 18, 0, 50),
                        hostname: Some("reserved-vm".into()),
                        lease_secs: None,
                    }],
                    ..DhcpConfig::default()
                },
                drivers: vec![DhcpDriverConfig {
                    interface: Some("s0".into()),
                    local_addr: Some(sid),
                    bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
                    ..DhcpDriverConfig::default()
                }],
                probe_timeout: Duration::from_millis(200),
                replication: None,
                follow_vip: None,
                probe_methods: vec![],
            }),
            dns: Some(DnsRuntime {
                zone: ZoneConfig::new("cluster.test"),
                server: DnsServerConfig {
                    udp: vec!["198.18.0.1:53".parse().expect("addr")],
                    tcp: vec!["198.18.0.1:53".parse().expect("addr")],
                    ..DnsServerConfig::default()
                },
                hosts_files: vec![],
                expand_hosts: false,
                hosts: vec![],
                records: vec![],
                wildcards: vec![],
            }),
        };
        let run = start(opts).await.expect("start");
        println!("READY");
        // Until the parent closes our stdin (or kills us); bounded either way.
        let _ = tokio::time::timeout(
            Duration::from_secs(90),
            tokio::task::spawn_blocking(|| {
                let mut s = String::new();
                let _ = std::io::stdin().read_line(&mut s);
            }),
        )
        .await;
        run.shutdown().await;
    });
}

#[test]
fn real_udhcpc_and_dhclient_get_leases_and_names_resolve_at_once() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let missing: Vec<&str> = ["ip", "udhcpc", "dhclient", "dig"].into_iter().filter(|t| !have(t)).collect();
    if effective_uid() != 0 || !missing.is_empty() {
        let why = format!("needs root and ip/udhcpc/dhclient/dig (uid {}, missing {missing:?})", effective_uid());
        assert!(!ci, "CI=true: {why}");
        eprintln!("SKIP real_udhcpc_and_dhclient: {why}");
        return;
    }
    let tag = std::process::id() % 100_000;
    let mut lab = Lab { srv: format!("hsdd{tag}s"), cli: format!("hsdd{tag}c"), child: None, dhclient_pid: None };
    let (vs, vc) = (format!("hsdd{tag}a"), format!("hsdd{tag}b"));
    sh(&["ip", "netns", "add", &lab.srv]);
    sh(&["ip", "netns", "add", &lab.cli]);
    sh(&["ip", "link", "add", &vs, "type", "veth", "peer", "name", &vc]);
    sh(&["ip", "link", "set", &vs, "netns", &lab.srv]);
    sh(&["ip", "link", "set", &vc, "netns", &lab.cli]);
    sh(&["ip", "-n", &lab.srv, "link", "set", &vs, "name", "s0"]);
    sh(&["ip", "-n", &lab.cli, "link", "set", &vc, "name", "c0"]);
    sh(&["ip", "-n", &lab.srv, "addr", "add", "198.18.0.1/24", "dev", "s0"]);
    for (ns, dev) in [(&lab.srv, "s0"), (&lab.cli, "c0"), (&lab.srv, "lo"), (&lab.cli, "lo")] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.srv])
        .arg(&exe)
        .args(["--exact", "netns_server_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    lab.child = Some(child);
    // Read the child's output on a thread so a silent child cannot block us past the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            // libtest prints "test netns_server_child ... " first, on the same line.
            Ok(l) if l.contains("READY") => {
                ready = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(ready, "server child did not start");

    // busybox udhcpc: hostname option, asks for option 121.
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"EVENT $1 ip=$ip router=$router domain=$domain staticroutes=$staticroutes\"\n\
         [ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface\nexit 0\n",
    )
    .expect("script");
    sh(&["chmod", "+x", script.to_str().expect("path")]);
    let u = in_ns(&lab.cli, &["udhcpc", "-i", "c0", "-n", "-q", "-f", "-t", "4", "-T", "2", "-x", "hostname:udhcpc-vm", "-O", "staticroutes", "-s", script.to_str().expect("path")], 30);
    let bound = u.lines().find(|l| l.starts_with("EVENT bound")).unwrap_or_else(|| panic!("udhcpc got no lease:\n{u}"));
    let ip: Ipv4Addr = bound.split("ip=").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|s| s.parse().ok()).expect("leased ip");
    assert!(bound.contains("router=198.18.0.1") && bound.contains("domain=cluster.test"), "{bound}");
    assert!(bound.contains("0.0.0.0/0 198.18.0.1") && bound.contains("198.19.0.0/16 198.18.0.1"), "option 121 with the default route: {bound}");
    // Right after the lease: forward and reverse, UDP and TCP.
    let a = in_ns(&lab.cli, &["dig", "@198.18.0.1", "+short", "+time=2", "+tries=2", "udhcpc-vm.cluster.test"], 10);
    assert_eq!(a.trim(), ip.to_string());
    let ptr = in_ns(&lab.cli, &["dig", "@198.18.0.1", "+short", "+time=2", "+tries=2", "-x", &ip.to_string()], 10);
    assert_eq!(ptr.trim(), "udhcpc-vm.cluster.test.");
    let t = in_ns(&lab.cli, &["dig", "@198.18.0.1", "+tcp", "+short", "+time=2", "+tries=2", "udhcpc-vm.cluster.test"], 10);
    assert_eq!(t.trim(), ip.to_string());

    // ISC dhclient on the reserved MAC: fixed address, the reservation's name wins.
    sh(&["ip", "-n", &lab.cli, "link", "set", "c0", "address", "52:54:00:ee:00:01"]);
    let conf = dir.path().join("dhclient.conf");
    std::fs::write(&conf, "send host-name \"client-says\";\nrequest subnet-mask, routers, domain-name-servers, domain-name;\n").expect("conf");
    let dscript = dir.path().join("dhclient.sh");
    std::fs::write(&dscript, "#!/bin/sh\necho \"REASON $reason ip=$new_ip_address\"\nexit 0\n").expect("script");
    sh(&["chmod", "+x", dscript.to_str().expect("path")]);
    let lf = dir.path().join("dh.leases");
    let pf = dir.path().join("dh.pid");
    lab.dhclient_pid = Some(pf.clone());
    let dh_args = |release: bool| {
        let mut v = vec!["dhclient".to_string()];
        v.push(if release { "-r".into() } else { "-1".into() });
        for (f, p) in [("-cf", &conf), ("-lf", &lf), ("-pf", &pf), ("-sf", &dscript)] {
            v.push(f.into());
            v.push(p.to_string_lossy().into_owned());
        }
        v.push("c0".into());
        v
    };
    let args = dh_args(false);
    let d = in_ns(&lab.cli, &args.iter().map(String::as_str).collect::<Vec<_>>(), 30);
    assert!(d.contains("REASON BOUND ip=198.18.0.50"), "dhclient bound to the reserved address:\n{d}");
    let a = in_ns(&lab.cli, &["dig", "@198.18.0.1", "+short", "+time=2", "+tries=2", "reserved-vm.cluster.test"], 10);
    assert_eq!(a.trim(), "198.18.0.50");
    let args = dh_args(true);
    let r = in_ns(&lab.cli, &args.iter().map(String::as_str).collect::<Vec<_>>(), 30);
    assert!(r.contains("REASON RELEASE"), "{r}");
    // The release removes the name (bounded wait for the server to process it).
    let mut status = String::new();
    for _ in 0..20 {
        status = in_ns(&lab.cli, &["dig", "@198.18.0.1", "+time=2", "+tries=1", "reserved-vm.cluster.test"], 10);
        if status.contains("NXDOMAIN") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(status.contains("NXDOMAIN"), "name gone after DHCPRELEASE:\n{status}");
    drop(lab);
}
