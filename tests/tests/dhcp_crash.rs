//! End-to-end with real clients in the namespace lab, against the `hastack dhcp-dns` daemon:
//!
//! 1. kill -9 in the middle of a burst: four client namespaces run busybox udhcpc in a loop, each
//!    run on a new MAC address, and record every lease they saw acknowledged; the server is killed
//!    with SIGKILL mid-burst and restarted; every acknowledged lease is in its lease log.
//! 2. renew and rebind with ISC dhclient: the server identifier is a secondary address of the
//!    server; while it is there the client renews by unicast (RENEW); once it is removed the
//!    unicast renewals go unanswered and the client rebinds by broadcast (REBIND) — same address
//!    throughout. (Release is covered by dhcp-dns/tests/netns_clients.rs.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hastack_tests::dhclient::Dhclient;
use hastack_tests::{Lab, Proc, hastack_bin, require_lab, require_tools};
use nix::sys::signal::Signal;

const CLIENTS: usize = 4;
const RUNS_PER_CLIENT: usize = 60;
/// The server identifier: a secondary address of the server node, removed to force a rebind.
const SERVER_ID: &str = "198.18.0.99";

fn config(dir: &Path) -> String {
    format!(
        r#"[dhcp]
interfaces = ["eth0"]
lease_file = "{dir}/leases.log"
domain = "lab.test"

[[dhcp.subnet]]
subnet = "198.18.0.0/24"
pool = ["198.18.0.20-198.18.0.250"]
server_id = "{SERVER_ID}"
routers = ["198.18.0.11"]
lease_time = "30s"
renew_time = "2s"
rebind_time = "6s"
"#,
        dir = dir.display()
    )
}

fn wait(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect()
}

/// address → hwaddr of the server's lease log, read through `hastack leases --json`.
fn leases(bin: &Path, cfg: &Path) -> BTreeMap<String, String> {
    let out = std::process::Command::new(bin).args(["leases", "--json", "--config"]).arg(cfg).output().expect("hastack leases");
    assert!(out.status.success(), "hastack leases: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("leases json");
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["address"].as_str()?.to_string(), l["hwaddr"].as_str()?.to_string())))
        .collect()
}

fn start_server(lab: &Lab, bin: &Path, cfg: &Path) -> Proc {
    lab.node(1).spawn(&[bin.as_os_str(), "dhcp-dns".as_ref(), "--config".as_ref(), cfg.as_os_str()]).expect("dhcp-dns")
}

#[test]
fn kill_9_mid_burst_of_real_clients_then_renew_and_rebind() {
    if !require_lab().expect("lab prerequisites") || !require_tools(&["udhcpc", "dhclient"]).expect("tools") {
        return;
    }
    let bin = hastack_bin().expect("hastack binary");
    let mut lab = Lab::builder().nodes(1).links(1).ipv6(false).build().expect("lab");
    for _ in 0..CLIENTS {
        lab.add_client(None).expect("client");
    }
    let dir = lab.dir().to_path_buf();
    lab.node(1).exec_ok(&["ip", "addr", "add", &format!("{SERVER_ID}/24"), "dev", "eth0"]).expect("server id address");
    let cfg = dir.join("hastack.toml");
    std::fs::write(&cfg, config(&dir)).expect("config");
    let server = start_server(&lab, &bin, &cfg);
    assert!(wait(Duration::from_secs(10), || server.log().contains("dhcp-dns serving")), "server did not start:\n{}", server.log());

    // The burst: each client loops over fresh MACs; the script records each acknowledged lease.
    let script = dir.join("udhcpc.sh");
    std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip $(cat /sys/class/net/$interface/address)\" >> \"$ACKS\"\nexit 0\n")
        .expect("script");
    std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
    let mut loops = Vec::new();
    let mut acks: Vec<PathBuf> = Vec::new();
    for j in 1..=CLIENTS {
        let file = dir.join(format!("acks-{j}"));
        let sh = format!(
            "for k in $(seq 1 {RUNS_PER_CLIENT}); do \
               ip link set eth0 address 02:aa:00:00:{j:02x}:$(printf %02x $k); \
               udhcpc -i eth0 -n -q -f -t 2 -T 1 -A 1 -s {script} >/dev/null 2>&1; \
             done",
            script = script.display()
        );
        let mut cmd = lab.client(j).command("sh");
        cmd.arg("-c").arg(sh).env("ACKS", &file);
        loops.push(lab.client(j).spawn_command(cmd).expect("client loop"));
        acks.push(file);
    }
    let total = |acks: &[PathBuf]| acks.iter().map(|f| lines(f).len()).sum::<usize>();
    assert!(wait(Duration::from_secs(30), || total(&acks) >= 40), "burst too slow: {} acks\n{}", total(&acks), server.log());
    server.signal(Signal::SIGKILL).expect("kill -9");
    let _ = server.wait_timeout(Duration::from_secs(5));
    // Whatever the clients still do now cannot be acknowledged; stop them.
    for l in &loops {
        let _ = l.signal(Signal::SIGKILL);
    }
    drop(loops);
    let acked: Vec<(String, String)> = acks
        .iter()
        .flat_map(|f| lines(f))
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let server = start_server(&lab, &bin, &cfg);
    assert!(wait(Duration::from_secs(10), || server.log().contains("dhcp-dns serving")), "restart failed:\n{}", server.log());
    let table = leases(&bin, &cfg);
    let missing: Vec<&(String, String)> = acked.iter().filter(|(ip, mac)| table.get(ip) != Some(mac)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged leases lost by kill -9: {missing:?}", missing.len(), acked.len());
    println!("kill -9 mid-burst: {} acknowledged leases, all in the log after restart", acked.len());

    // Renew (unicast to the server identifier), then rebind (broadcast) once it is gone.
    let c1 = lab.client(1);
    c1.exec_ok(&["ip", "link", "set", "eth0", "address", "02:bb:00:00:00:01"]).expect("mac");
    let dhclient = Dhclient::start(c1, &dir, "dhclient", "send host-name \"renewer\";\n").expect("dhclient");
    let ev = || dhclient.events();
    assert!(wait(Duration::from_secs(15), || ev().iter().any(|(r, _)| r == "BOUND")), "no lease: {:?}\n{}", ev(), dhclient.log());
    let ip = ev().into_iter().find(|(r, _)| r == "BOUND").map(|(_, a)| a).expect("ip");
    assert!(wait(Duration::from_secs(10), || ev().iter().any(|(r, _)| r == "RENEW")), "no unicast renewal: {:?}\n{}", ev(), dhclient.log());
    lab.node(1).exec_ok(&["ip", "addr", "del", &format!("{SERVER_ID}/24"), "dev", "eth0"]).expect("remove server id");
    // dhclient reports a rebind's ACK to its script as RENEW or REBIND depending on its timers;
    // its log says how the request went: to the broadcast address, answered.
    let base = dhclient.log().len();
    let rebound = wait(Duration::from_secs(25), || {
        let log = dhclient.log();
        let tail = log.get(base..).unwrap_or("");
        tail.find("to 255.255.255.255 port 67").is_some_and(|i| tail[i..].contains(&format!("DHCPACK of {ip}")))
    });
    assert!(rebound, "no answered broadcast rebind once the server identifier was unreachable: {:?}\n{}\n{}", ev(), dhclient.log(), server.log());
    assert!(!ev().iter().any(|(r, _)| r == "EXPIRE"), "lease expired: {:?}", ev());
    for (r, a) in ev() {
        assert!(!["BOUND", "RENEW", "REBIND"].contains(&r.as_str()) || a == ip, "address changed ({r} {a}, first {ip})");
    }
    drop(dhclient);
}
