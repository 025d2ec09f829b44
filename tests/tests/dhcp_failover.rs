//! End-to-end: DHCP/DNS failover between gateways in the namespace lab. Three gateway nodes run
//! `hastack cluster` (holding the VIP 198.18.0.100) and `hastack dhcp-dns` with synchronous lease
//! replication through the cluster's process group "leases"; every dhcp-dns follows the VIP
//! (`follow_vip`: only the VIP holder answers DHCP, the others keep replicated leases) and uses the
//! VIP as its server identifier, so renewals and DNS queries go wherever the VIP is.
//!
//! Why active/standby behind the VIP rather than every gateway answering: two servers allocating
//! from one pool at once could give the same free address to two clients in the same instant
//! (offers are not replicated, and waiting for the peers on every OFFER would halve the rate);
//! with one answering server per VIP, allocation stays single-writer and replication only has to
//! carry the result.
//!
//! A real ISC dhclient in a client namespace gets a lease with a hostname; the VIP holder is
//! crashed (both daemons SIGKILLed and its cable cut, at once, right after the ACK); the survivors'
//! lease logs hold the lease already (the ACK waited for them); the client renews or rebinds with
//! the new VIP holder and keeps its address; `dig @VIP name` answers from the survivor.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hastack_tests::dhclient::Dhclient;
use hastack_tests::{Lab, Proc, hastack_bin, require_lab, require_tools};
use nix::sys::signal::Signal;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const NODES: usize = 3;

fn config(i: usize, dir: &Path, key: &Path) -> String {
    let mut s = format!("[cluster]\nname = \"hastack-dhcp-lab\"\nauthkey = \"{}\"\n\n", key.display());
    for n in 1..=NODES {
        s += &format!("[[cluster.node]]\nid = {n}\nname = \"gw{n}\"\nlinks = [\"198.18.0.{}/24\"]\n\n", 10 + n);
    }
    s += "[resource_defaults]\nstickiness = 100\n\n";
    s += &format!("[[resource]]\nname = \"vip\"\n[resource.vip]\naddress = \"{VIP}/24\"\ninterface = \"eth0\"\nlease = \"2s\"\n\n");
    s += &format!(
        r#"[dhcp]
interfaces = ["eth0"]
lease_file = "{dir}/gw{i}/leases.log"
replication = "sync"
replication_timeout = "2s"
replication_socket = "{dir}/gw{i}.sock"
follow_vip = "{VIP}"
domain = "lab.test"

[[dhcp.subnet]]
subnet = "198.18.0.0/24"
pool = ["198.18.0.150-198.18.0.199"]
server_id = "{VIP}"
routers = ["198.18.0.1"]
dns_servers = ["{VIP}"]
lease_time = "12s"
renew_time = "3s"

[dns]
listen = ["{VIP}:53"]
domain = "lab.test"
"#,
        dir = dir.display()
    );
    s
}

struct Gateways {
    lab: Lab,
    bin: PathBuf,
    configs: Vec<PathBuf>,
    cluster: Vec<Option<Proc>>,
    dhcp: Vec<Option<Proc>>,
}

impl Gateways {
    fn socket(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("gw{i}.sock"))
    }

    fn holders(&self) -> Vec<usize> {
        (1..=NODES).filter(|i| self.cluster[*i].is_some() && self.lab.node(*i).has_addr(VIP).unwrap_or(false)).collect()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=NODES {
            for (what, p) in [("cluster", &self.cluster[i]), ("dhcp-dns", &self.dhcp[i])] {
                if let Some(p) = p {
                    let log = p.log();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    out += &format!("--- gw{i} {what} (last lines)\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
        }
        out
    }

    fn leases(&self, i: usize) -> String {
        let out = std::process::Command::new(&self.bin).args(["leases", "--config"]).arg(&self.configs[i]).output().expect("hastack leases");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Gateways {
    /// The lab (three gateways, `clients` clients without an address), `hastack cluster` on every
    /// gateway until one holds the VIP, then `hastack dhcp-dns` on every gateway until each has
    /// joined the lease group and taken the table.
    fn start(clients: usize) -> Gateways {
        let bin = hastack_bin().expect("hastack binary");
        let mut lab = Lab::builder().nodes(NODES).links(1).ipv6(false).build().expect("lab");
        for _ in 0..clients {
            lab.add_client(None).expect("client");
        }
        let dir = lab.dir().to_path_buf();
        let key = dir.join("authkey");
        let keygen = std::process::Command::new(&bin).args(["keygen"]).arg(&key).output().expect("keygen");
        assert!(keygen.status.success(), "keygen: {}", String::from_utf8_lossy(&keygen.stderr));
        let mut configs = vec![PathBuf::new()];
        for i in 1..=NODES {
            std::fs::create_dir_all(dir.join(format!("gw{i}"))).expect("state dir");
            let p = dir.join(format!("gw{i}.toml"));
            std::fs::write(&p, config(i, &dir, &key)).expect("config");
            configs.push(p);
        }
        let mut g = Gateways { lab, bin, configs, cluster: (0..=NODES).map(|_| None).collect(), dhcp: (0..=NODES).map(|_| None).collect() };
        for i in 1..=NODES {
            g.start_cluster(i);
        }
        assert!(wait(Duration::from_secs(15), || g.holders().len() == 1), "no VIP holder:\n{}", g.logs());
        for i in 1..=NODES {
            g.start_dhcp(i);
        }
        let all_synced = wait(Duration::from_secs(15), || {
            (1..=NODES).all(|i| g.dhcp[i].as_ref().is_some_and(|p| p.log().contains("lease state transfer done")))
        });
        assert!(all_synced, "dhcp-dns did not join the lease group:\n{}", g.logs());
        g
    }

    fn start_cluster(&mut self, i: usize) {
        let (sock, state) = (self.socket(i), self.lab.dir().join(format!("gw{i}")));
        let p = self
            .lab
            .node(i)
            .spawn(&[
                self.bin.as_os_str(),
                "cluster".as_ref(),
                "--config".as_ref(),
                self.configs[i].as_os_str(),
                "--node".as_ref(),
                format!("gw{i}").as_ref(),
                "--socket".as_ref(),
                sock.as_os_str(),
                "--state-dir".as_ref(),
                state.as_os_str(),
            ])
            .expect("cluster daemon");
        self.cluster[i] = Some(p);
    }

    fn start_dhcp(&mut self, i: usize) {
        let p = self.lab.node(i).spawn(&[self.bin.as_os_str(), "dhcp-dns".as_ref(), "--config".as_ref(), self.configs[i].as_os_str()]).expect("dhcp-dns");
        self.dhcp[i] = Some(p);
    }

    /// Crash gateway `i`: both daemons SIGKILLed and its cable cut, at once.
    fn crash(&mut self, i: usize) {
        for p in [self.dhcp[i].take(), self.cluster[i].take()].into_iter().flatten() {
            p.signal(Signal::SIGKILL).expect("kill");
        }
        self.lab.node(i).cable_cut(0).expect("cable cut");
    }

    /// address → hwaddr in gateway `i`'s lease log.
    fn lease_macs(&self, i: usize) -> std::collections::BTreeMap<String, String> {
        self.lease_field(i, "hwaddr")
    }

    /// address → `field` of every lease in gateway `i`'s lease log (`hastack leases --json`).
    fn lease_field(&self, i: usize, field: &str) -> std::collections::BTreeMap<String, String> {
        let out = std::process::Command::new(&self.bin).args(["leases", "--json", "--config"]).arg(&self.configs[i]).output().expect("hastack leases");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some((l["address"].as_str()?.to_string(), l[field].as_str()?.to_string())))
            .collect()
    }

    /// Cut gateway `i` off from the other gateways and wait until its dhcp-dns is out of the
    /// lease group (its node lost quorum).
    fn cut_off(&self, i: usize) {
        for o in (1..=NODES).filter(|o| *o != i) {
            self.lab.partition(i, o).expect("partition");
        }
        let out = wait(Duration::from_secs(10), || {
            self.dhcp[i].as_ref().is_some_and(|p| p.log().lines().any(|l| l.contains("lease group view") && !l.contains(&format!("\"{i}/"))))
        });
        assert!(out, "gw{i} never left the lease group:\n{}", self.logs());
    }

    /// `hastack <args> --config gw<i>.toml --socket gw<i>.sock`, which must succeed.
    fn admin(&self, i: usize, args: &[&str]) {
        let out = std::process::Command::new(&self.bin).args(args).arg("--config").arg(&self.configs[i]).arg("--socket").arg(self.socket(i)).output().expect("hastack");
        assert!(out.status.success(), "hastack {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
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
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// dhclient.conf of the lab's client: a hostname, so the lease gets a name.
const CLIENT_CONF: &str = "send host-name \"vm1\";\nrequest subnet-mask, routers, domain-name-servers, domain-name;\n";

#[test]
fn dhcp_failover_keeps_the_clients_address_and_name() {
    if !require_lab().expect("lab prerequisites") || !require_tools(&["dhclient", "dig"]).expect("tools") {
        return;
    }
    let mut g = Gateways::start(1);
    let dir = g.lab.dir().to_path_buf();
    let holder = g.holders()[0];
    // `hastack status` shows the lease group with the three gateways' dhcp-dns.
    let st = std::process::Command::new(&g.bin).args(["status", "--config"]).arg(&g.configs[1]).arg("--socket").arg(g.socket(1)).output().expect("status");
    let text = String::from_utf8_lossy(&st.stdout).into_owned();
    assert!(text.contains("Process groups:") && text.contains("1/1, 2/1, 3/1"), "status:\n{text}{}", String::from_utf8_lossy(&st.stderr));

    // A real client with a hostname; its script records each event and configures the address.
    let dhclient = Dhclient::start(g.lab.client(1), &dir, "dhclient", CLIENT_CONF).expect("dhclient");
    assert!(
        wait(Duration::from_secs(20), || dhclient.bound().is_some()),
        "dhclient got no lease: {:?}\n{}\n{}",
        dhclient.events(),
        dhclient.log(),
        g.logs()
    );
    let ip = dhclient.bound().expect("bound ip");

    // Crash the VIP holder at once: both daemons SIGKILLed, its cable cut.
    g.crash(holder);
    let t_crash = Instant::now();

    // Every survivor's lease log already holds the acknowledged lease, name included.
    let survivors: Vec<usize> = (1..=NODES).filter(|i| *i != holder).collect();
    for &s in &survivors {
        let l = g.leases(s);
        assert!(l.contains(&ip) && l.contains("vm1"), "gw{s} lacks the lease {ip} vm1 the old holder acknowledged:\n{l}\n{}", g.logs());
    }

    // The VIP moves; the client keeps its address through a renewal or rebind with the new holder.
    assert!(wait(Duration::from_secs(10), || g.holders().len() == 1), "VIP did not move:\n{}", g.logs());
    let new_holder = g.holders()[0];
    assert_ne!(new_holder, holder);
    let seen = dhclient.events().len();
    let renewed = wait(Duration::from_secs(25), || dhclient.events().iter().skip(seen).any(|(r, _)| r == "RENEW" || r == "REBIND"));
    let evs = dhclient.events();
    assert!(renewed, "no renewal after the failover: {evs:?}\n{}\n{}", dhclient.log(), g.logs());
    for (r, a) in evs.iter().skip(seen) {
        assert!(!["BOUND", "RENEW", "REBIND", "REBOOT"].contains(&r.as_str()) || *a == ip, "client moved from {ip} to {a} ({r}): {evs:?}");
    }
    println!("failover: VIP gw{holder} -> gw{new_holder}, client {ip} renewed {:?} after the crash", t_crash.elapsed());

    // The name still resolves, answered by the survivor behind the VIP.
    let at = format!("@{VIP}");
    let dig = g.lab.client(1).exec_ok(&["dig", "+short", "+time=2", "+tries=2", at.as_str(), "vm1.lab.test"]).unwrap_or_default();
    assert_eq!(dig.trim(), ip, "dig @VIP vm1.lab.test after the failover");
    let ptr = g.lab.client(1).exec_ok(&["dig", "+short", "+time=2", "+tries=2", at.as_str(), "-x", ip.as_str()]).unwrap_or_default();
    assert_eq!(ptr.trim(), "vm1.lab.test.");
    let dh_new = g.dhcp[new_holder].as_ref().map(|p| p.log()).unwrap_or_default();
    assert!(dh_new.contains("answering"), "the new holder's dhcp-dns did not take over:\n{dh_new}");

    // The crashed gateway comes back with an empty disk: it gets the lease table (state
    // transfer) before it serves, and stands by (the VIP stays where it is).
    std::fs::remove_file(dir.join(format!("gw{holder}/leases.log"))).expect("wipe the old holder's lease log");
    g.lab.node(holder).cable_restore(0).expect("cable restore");
    g.start_cluster(holder);
    g.start_dhcp(holder);
    let back = wait(Duration::from_secs(20), || {
        g.dhcp[holder].as_ref().is_some_and(|p| p.log().contains("lease state transfer done") && p.log().contains("dhcp-dns serving"))
    });
    assert!(back, "restarted gateway did not take the lease table:\n{}", g.logs());
    let log = g.dhcp[holder].as_ref().map(|p| p.log()).unwrap_or_default();
    let adopted: usize = log
        .lines()
        .find_map(|l| l.contains("lease state transfer done").then(|| l.split("adopted=").nth(1)?.split_whitespace().next()?.parse().ok()).flatten())
        .unwrap_or(0);
    assert!(adopted >= 1, "the lease came by state transfer, not only by a later renewal:\n{log}");
    let l = g.leases(holder);
    assert!(l.contains(&ip) && l.contains("vm1"), "restarted gw{holder} did not get the lease by state transfer:\n{l}\n{}", g.logs());
    assert_eq!(g.holders(), vec![new_holder], "the VIP stays with the running holder");
    drop(dhclient);
}

#[test]
fn every_lease_acknowledged_in_a_burst_survives_a_crash_of_the_vip_holder() {
    if !require_lab().expect("lab prerequisites") || !require_tools(&["udhcpc"]).expect("tools") {
        return;
    }
    const CLIENTS: usize = 3;
    let mut g = Gateways::start(CLIENTS);
    let dir = g.lab.dir().to_path_buf();
    let holder = g.holders()[0];
    // First a standby's cluster daemon dies and comes back: its dhcp-dns reconnects, joins the
    // lease group again and takes part in the burst below.
    let standby = (1..=NODES).find(|i| *i != holder).expect("a standby");
    if let Some(p) = g.cluster[standby].take() {
        p.signal(Signal::SIGKILL).expect("kill");
    }
    g.start_cluster(standby);
    let rejoined = wait(Duration::from_secs(20), || {
        g.dhcp[standby].as_ref().is_some_and(|p| p.log().matches("lease state transfer done").count() >= 2)
    });
    assert!(rejoined, "gw{standby}'s dhcp-dns did not rejoin the lease group:\n{}", g.logs());
    let script = dir.join("udhcpc.sh");
    std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip $(cat /sys/class/net/$interface/address)\" >> \"$ACKS\"\nexit 0\n")
        .expect("script");
    std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
    let mut loops = Vec::new();
    let mut acks = Vec::new();
    for j in 1..=CLIENTS {
        let file = dir.join(format!("acks-{j}"));
        let sh = format!(
            "for k in $(seq 1 60); do ip link set eth0 address 02:dd:00:00:{j:02x}:$(printf %02x $k); \
             udhcpc -i eth0 -n -q -f -t 2 -T 1 -A 1 -s {script} >/dev/null 2>&1; done",
            script = script.display()
        );
        let mut cmd = g.lab.client(j).command("sh");
        cmd.arg("-c").arg(sh).env("ACKS", &file);
        loops.push(g.lab.client(j).spawn_command(cmd).expect("client loop"));
        acks.push(file);
    }
    let count = |acks: &[PathBuf]| acks.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().count()).sum::<usize>();
    assert!(wait(Duration::from_secs(30), || count(&acks) >= 30), "burst too slow: {} acks\n{}", count(&acks), g.logs());
    g.crash(holder);
    for l in &loops {
        let _ = l.signal(Signal::SIGKILL);
    }
    let acked: Vec<(String, String)> = acks
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    for s in (1..=NODES).filter(|i| *i != holder) {
        let table = g.lease_macs(s);
        let missing: Vec<&(String, String)> = acked.iter().filter(|(ip, mac)| table.get(ip) != Some(mac)).collect();
        assert!(missing.is_empty(), "gw{s} lacks {} of {} leases gw{holder} acknowledged: {missing:?}\n{}", missing.len(), acked.len(), g.logs());
    }
    println!("{} leases acknowledged by gw{holder} before its crash, all on both survivors", acked.len());
}

#[test]
fn a_gateway_cut_off_by_a_partition_gets_the_leases_granted_meanwhile() {
    if !require_lab().expect("lab prerequisites") || !require_tools(&["udhcpc"]).expect("tools") {
        return;
    }
    let g = Gateways::start(1);
    let dir = g.lab.dir().to_path_buf();
    let holder = g.holders()[0];
    let cut = (1..=NODES).find(|i| *i != holder).expect("a standby");
    // The cut-off node loses quorum; its daemon takes its dhcp-dns out of the group.
    g.cut_off(cut);
    let script = dir.join("udhcpc.sh");
    std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && echo \"BOUND $ip\"\nexit 0\n").expect("script");
    std::process::Command::new("chmod").arg("+x").arg(&script).status().expect("chmod");
    let o = g
        .lab
        .client(1)
        .exec(&["udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "3", "-T", "1", "-x", "hostname:apart", "-s", script.to_str().expect("path")])
        .expect("udhcpc");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let ip = text.lines().find_map(|l| l.strip_prefix("BOUND ")).map(|s| s.trim().to_string());
    let ip = ip.unwrap_or_else(|| panic!("no lease during the partition: {text}\n{}", g.logs()));
    assert!(!g.lease_macs(cut).contains_key(&ip), "gw{cut} cannot have heard of {ip} while cut off");
    g.lab.heal().expect("heal");
    let back = wait(Duration::from_secs(20), || g.lease_macs(cut).contains_key(&ip));
    assert!(back, "gw{cut} did not get {ip} by state transfer after the heal:\n{}", g.logs());
    assert!(g.dhcp[cut].as_ref().is_some_and(|p| p.log().contains("back in the lease group")), "{}", g.logs());
    // The majority never left the group: the heal's view change must not make its gateways
    // see themselves out and back (they took the lease table again from the cut-off node once).
    for s in (1..=NODES).filter(|i| *i != cut) {
        assert!(
            g.dhcp[s].as_ref().is_some_and(|p| !p.log().contains("back in the lease group")),
            "gw{s} left the lease group although its side kept quorum:\n{}",
            g.logs()
        );
    }
}

#[test]
fn a_lease_released_while_a_gateway_was_cut_off_stays_released_when_it_takes_over() {
    if !require_lab().expect("lab prerequisites") || !require_tools(&["dhclient", "dig"]).expect("tools") {
        return;
    }
    let g = Gateways::start(1);
    let dir = g.lab.dir().to_path_buf();
    let holder = g.holders()[0];
    let dhclient = Dhclient::start(g.lab.client(1), &dir, "dhclient", CLIENT_CONF).expect("dhclient");
    assert!(wait(Duration::from_secs(20), || dhclient.bound().is_some()), "no lease: {:?}\n{}\n{}", dhclient.events(), dhclient.log(), g.logs());
    let ip = dhclient.bound().expect("bound ip");
    let at = format!("@{VIP}");
    let dig = |args: &[&str]| -> String {
        let mut a = vec!["dig", "+short", "+time=2", "+tries=2", at.as_str()];
        a.extend_from_slice(args);
        g.lab.client(1).exec_ok(&a).unwrap_or_default().trim().to_string()
    };
    assert_eq!(dig(&["vm1.lab.test"]), ip);

    // A standby is cut off; meanwhile the client gives its lease back to the VIP holder.
    let cut = (1..=NODES).find(|i| *i != holder).expect("a standby");
    g.cut_off(cut);
    dhclient.release(g.lab.client(1)).expect("dhclient -r");
    let released = |i: usize| g.lease_field(i, "state").get(&ip).is_some_and(|s| s == "Released");
    assert!(wait(Duration::from_secs(10), || released(holder)), "gw{holder} did not record the release:\n{}", g.logs());
    assert_eq!(dig(&["vm1.lab.test"]), "", "the name went with the release");
    assert_eq!(g.lease_field(cut, "state").get(&ip).map(String::as_str), Some("Active"), "gw{cut} cannot have heard of the release while cut off");

    // Heal: the cut gateway comes back with its old copy of the lease; the release wins.
    g.lab.heal().expect("heal");
    assert!(wait(Duration::from_secs(20), || released(cut)), "gw{cut} kept its stale lease after the heal:\n{}", g.logs());
    for i in 1..=NODES {
        assert!(released(i), "gw{i}: {:?}", g.lease_field(i, "state"));
    }

    // Fail over to the gateway that was cut off: it does not resurrect the lease or the name.
    g.admin(holder, &["resource", "move", "vip", &format!("gw{cut}")]);
    assert!(wait(Duration::from_secs(15), || g.holders() == vec![cut]), "VIP did not move to gw{cut}: {:?}\n{}", g.holders(), g.logs());
    let answering = wait(Duration::from_secs(10), || g.dhcp[cut].as_ref().is_some_and(|p| p.log().contains("answering")));
    assert!(answering, "gw{cut}'s dhcp-dns did not take over:\n{}", g.logs());
    assert_eq!(dig(&["vm1.lab.test"]), "", "the released name resolves again after the failover");
    assert_eq!(dig(&["-x", ip.as_str()]), "", "the released address resolves again after the failover");
    for i in 1..=NODES {
        assert!(released(i), "gw{i} after the failover: {:?}", g.lease_field(i, "state"));
    }
    println!("lease {ip} released while gw{cut} was cut off: released on every gateway after the heal and the move to gw{cut}");
}
