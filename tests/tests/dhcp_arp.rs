//! End-to-end: the ARP conflict check of `hastack dhcp-dns` against a squatter. The pool has two
//! addresses; a host in the lab holds the first one statically without a lease. Real udhcpc
//! clients ask for leases: whichever order the server picks addresses in, the squatter's address
//! answers the ARP probe, is quarantined (declined) and never handed out; the free one is.

use std::path::Path;
use std::time::{Duration, Instant};

use hastack_tests::{Lab, hastack_bin, require_lab, require_tools};

const SQUATTED: &str = "198.18.0.20";
const FREE: &str = "198.18.0.21";

fn leases(bin: &Path, cfg: &Path) -> Vec<(String, String)> {
    let out = std::process::Command::new(bin).args(["leases", "--json", "--config"]).arg(cfg).output().expect("hastack leases");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["address"].as_str()?.to_string(), l["state"].as_str()?.to_string())))
        .collect()
}

#[test]
fn arp_probe_skips_a_squatted_address() {
    if !require_lab().expect("lab prerequisites") || !require_tools(&["udhcpc"]).expect("tools") {
        return;
    }
    let bin = hastack_bin().expect("hastack binary");
    let mut lab = Lab::builder().nodes(1).links(1).ipv6(false).build().expect("lab");
    lab.add_client(SQUATTED.parse::<std::net::Ipv4Addr>().expect("addr")).expect("squatter");
    lab.add_client(None).expect("dhcp client");
    let dir = lab.dir().to_path_buf();
    let cfg = dir.join("hastack.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[dhcp]
interfaces = ["eth0"]
lease_file = "{dir}/leases.log"
conflict_check_timeout = "300ms"

[[dhcp.subnet]]
subnet = "198.18.0.0/24"
pool = ["{SQUATTED}-{FREE}"]
conflict_check = "arp"
"#,
            dir = dir.display()
        ),
    )
    .expect("config");
    let server = lab.node(1).spawn(&[bin.as_os_str(), "dhcp-dns".as_ref(), "--config".as_ref(), cfg.as_os_str()]).expect("dhcp-dns");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("dhcp-dns serving") {
        assert!(Instant::now() < deadline, "server did not start:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = dir.join("udhcpc.sh");
    std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && echo \"BOUND $ip\"\nexit 0\n").expect("script");
    std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
    let client = lab.client(2);
    let mut got = Vec::new();
    for k in 1..=2 {
        client.exec_ok(&["ip", "link", "set", "eth0", "address", &format!("02:cc:00:00:00:{k:02x}")]).expect("mac");
        let t0 = Instant::now();
        let out = client
            .exec(&["udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "2", "-T", "1", "-s", script.to_str().expect("path")])
            .expect("udhcpc");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(ip) = text.lines().find_map(|l| l.strip_prefix("BOUND ")) {
            println!("client {k}: {ip} in {:?}", t0.elapsed());
            got.push(ip.trim().to_string());
        }
    }
    assert_eq!(got, vec![FREE.to_string()], "only the free address is leased (once):\n{}", server.log());
    let table = leases(&bin, &cfg);
    assert!(
        table.iter().any(|(a, st)| a == SQUATTED && st == "Declined"),
        "the squatted address was found by ARP and quarantined: {table:?}\n{}",
        server.log()
    );
    assert!(server.log().contains("answered a probe"), "conflict logged:\n{}", server.log());
}
