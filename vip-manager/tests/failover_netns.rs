//! Root end-to-end test: three nodes, each a real `Driver` in its own network namespace, joined by
//! a bridge with a client namespace. Membership is an in-process hub (views and a total order
//! handed to the drivers as the real channel would). The client's neighbour table must follow the
//! IPv4 and IPv6 VIPs through a partition (VIP only on the quorate side) and its heal (the holder
//! announces again), a node crash (daemon gone + link cut), a graceful stop; quorum loss must
//! release the VIPs. Skips when not root, unless CI=true.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vip_manager::driver::{ChannelError, ChannelEvent, ClusterChannel, Driver, DriverConfig};
use vip_manager::engine::{EngineConfig, Msg};
use vip_manager::garp::AnnounceSchedule;
use vip_manager::vip::Lease;
use vip_manager::{ClusterPolicy, NodeId, ResourceDef, ResourceKind, Score, VipSpec, View};

const VIP: &str = "198.18.1.10";
const VIP6: &str = "fd00:198:18:1::10";

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Ns(String);
impl Ns {
    fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", self.0.as_str()];
        v.extend_from_slice(args);
        run(&v)
    }
    fn mac(&self, dev: &str) -> String {
        let out = self.ip(&["link", "show", dev]);
        let i = out.find("link/ether ").expect("ether") + 11;
        out[i..i + 17].to_string()
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Views and total order for the drivers, as the membership layer would provide them.
#[derive(Default)]
struct Hub {
    state: Mutex<HubState>,
}
#[derive(Default)]
struct HubState {
    epoch: u64,
    view: BTreeMap<NodeId, BTreeSet<NodeId>>,
    senders: BTreeMap<NodeId, mpsc::UnboundedSender<ChannelEvent>>,
}

impl Hub {
    /// Installs a view per group (a partition is several groups).
    fn install(&self, groups: &[&[u32]]) {
        let mut st = self.state.lock().unwrap();
        for g in groups {
            st.epoch += 1;
            let members: BTreeSet<NodeId> = g.iter().map(|i| NodeId(*i)).collect();
            let view = View { epoch: st.epoch, members: members.iter().copied().collect(), quorate: members.len() * 2 > 3 };
            for m in &members {
                st.view.insert(*m, members.clone());
                if let Some(tx) = st.senders.get(m) {
                    let _ = tx.send(ChannelEvent::View(view.clone()));
                }
            }
        }
    }
}

struct HubChannel {
    id: NodeId,
    hub: Arc<Hub>,
    rx: mpsc::UnboundedReceiver<ChannelEvent>,
}

impl ClusterChannel for HubChannel {
    fn recv(&mut self) -> impl Future<Output = Option<ChannelEvent>> + Send {
        self.rx.recv()
    }
    fn broadcast(&mut self, msg: &Msg) -> Result<(), ChannelError> {
        let st = self.hub.state.lock().unwrap();
        // Safe delivery: only members of the sender's current view, in one order for all.
        let Some(members) = st.view.get(&self.id) else { return Ok(()) };
        for m in members {
            if st.view.get(m) == Some(members) {
                if let Some(tx) = st.senders.get(m) {
                    let _ = tx.send(ChannelEvent::Deliver(Msg::decode(&msg.encode()).expect("codec")));
                }
            }
        }
        Ok(())
    }
}

enum Stop {
    Graceful,
    Kill,
}

struct NodeHandle {
    stop: Option<tokio::sync::mpsc::UnboundedSender<Stop>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn start_node(id: u32, ns: &str, hub: &Arc<Hub>) -> NodeHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    hub.state.lock().unwrap().senders.insert(NodeId(id), tx);
    let chan = HubChannel { id: NodeId(id), hub: hub.clone(), rx };
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel();
    let path = format!("/run/netns/{ns}");
    let thread = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut vip = ResourceDef::new(
                "vip",
                ResourceKind::Vip(VipSpec { address: VIP.parse().unwrap(), prefix_len: 24, interface: "eth0".into() }),
            );
            vip.stickiness = Some(Score::new(100));
            let mut vip6 = ResourceDef::new(
                "vip6",
                ResourceKind::Vip(VipSpec { address: VIP6.parse().unwrap(), prefix_len: 64, interface: "eth0".into() }),
            );
            vip6.stickiness = Some(Score::new(100));
            let engine = EngineConfig {
                local: NodeId(id),
                cluster_size: 3,
                resources: vec![vip, vip6],
                constraints: vec![],
                policy: ClusterPolicy::default(),
                monitor_interval: Duration::from_millis(500),
                monitor_timeout: Duration::from_secs(2),
                tick_every: Duration::from_secs(1),
                stall_confirm: EngineConfig::DEFAULT_STALL_CONFIRM,
            };
            let cfg = DriverConfig {
                lease: Lease::new(Duration::from_secs(2)),
                announce: AnnounceSchedule { repeat_after: None, ..AnnounceSchedule::default() },
                ..DriverConfig::default()
            };
            let d = Driver::start(engine, BTreeMap::new(), chan, cfg).await.expect("driver start");
            let (sd_tx, sd_rx) = tokio::sync::watch::channel(false);
            let run = d.run(sd_rx);
            tokio::pin!(run);
            loop {
                tokio::select! {
                    r = &mut run => { r.expect("driver run"); return; }
                    s = stop_rx.recv() => match s {
                        Some(Stop::Graceful) => { let _ = sd_tx.send(true); }
                        // kill -9: the driver vanishes without cleaning up.
                        Some(Stop::Kill) | None => return,
                    }
                }
            }
        });
    });
    NodeHandle { stop: Some(stop_tx), thread: Some(thread) }
}

impl NodeHandle {
    fn stop(&mut self, how: Stop) {
        // The sender stays alive until the thread ends: dropping it means kill.
        let s = self.stop.take();
        if let Some(s) = &s {
            let _ = s.send(how);
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("node thread");
        }
        drop(s);
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop(Stop::Kill);
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

#[test]
fn vip_follows_crash_graceful_stop_and_quorum_loss() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root (CI=true: failing, not skipping)");
        eprintln!("SKIP vip_follows_crash_graceful_stop_and_quorum_loss: needs root");
        return;
    }
    let tag = std::process::id();
    let mk = |n: &str| {
        let name = format!("hsvipfo{tag}{n}");
        run(&["ip", "netns", "add", &name]);
        Ns(name)
    };
    let sw = mk("sw");
    let client = mk("c");
    let nodes: Vec<Ns> = (1..=3).map(|i| mk(&format!("n{i}"))).collect();
    sw.ip(&["link", "add", "br0", "type", "bridge"]);
    sw.ip(&["link", "set", "br0", "up"]);
    let attach = |ns: &Ns, port: &str, addr: &str, addr6: &str| {
        sw.ip(&["link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0]);
        sw.ip(&["link", "set", port, "master", "br0", "up"]);
        ns.ip(&["addr", "add", addr, "dev", "eth0"]);
        ns.ip(&["-6", "addr", "add", addr6, "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
    };
    attach(&client, "pc", "198.18.1.100/24", "fd00:198:18:1::100/64");
    for (i, n) in nodes.iter().enumerate() {
        attach(n, &format!("p{}", i + 1), &format!("198.18.1.{}/24", i + 1), &format!("fd00:198:18:1::{}/64", i + 1));
    }
    // The client takes unsolicited NAs only once IPv6 is up on its link (ff00::/8 route).
    wait_for("client IPv6", Duration::from_secs(5), || {
        client.ip(&["-6", "route", "show", "table", "local", "dev", "eth0"]).contains("ff00::/8")
    });
    run(&["ip", "netns", "exec", &client.0, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.arp_accept=1"]);
    let macs: Vec<String> = nodes.iter().map(|n| n.mac("eth0")).collect();
    let client_sees = |mac: &str| client.ip(&["neigh", "show", VIP]).contains(mac);
    let client_sees6 = |mac: &str| client.ip(&["-6", "neigh", "show", VIP6]).contains(mac);
    let holds = |i: usize| nodes[i].ip(&["-4", "addr", "show", "dev", "eth0"]).contains(&format!("{VIP}/24"));
    let holds6 = |i: usize| nodes[i].ip(&["-6", "addr", "show", "dev", "eth0"]).contains(&format!("{VIP6}/64"));

    let hub = Arc::new(Hub::default());
    let mut handles: Vec<NodeHandle> =
        nodes.iter().enumerate().map(|(i, n)| start_node(i as u32 + 1, &n.0, &hub)).collect();
    hub.install(&[&[1, 2, 3]]);
    wait_for("node1 to hold the VIP", Duration::from_secs(5), || holds(0));
    // The client reaches the VIP and learns node1's MAC.
    run(&["ip", "netns", "exec", &client.0, "ping", "-c", "1", "-W", "2", VIP]);
    assert!(client_sees(&macs[0]), "client neighbour table: {}", client.ip(&["neigh"]));
    wait_for("node1 to hold the IPv6 VIP", Duration::from_secs(5), || holds6(0));
    run(&["ip", "netns", "exec", &client.0, "ping", "-6", "-c", "1", "-W", "2", VIP6]);
    assert!(client_sees6(&macs[0]), "client IPv6 neighbours: {}", client.ip(&["-6", "neigh"]));

    // Partition {3} | {1, 2}: the VIP stays on the quorate side. The client's entry goes stale
    // (as after a split brain elsewhere); the heal makes the holder announce again.
    hub.install(&[&[1, 2], &[3]]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(holds(0) && !holds(2), "VIP only on the quorate side");
    client.ip(&["neigh", "replace", VIP, "lladdr", &macs[2], "dev", "eth0", "nud", "stale"]);
    hub.install(&[&[1, 2, 3]]);
    wait_for("the heal to re-announce node1's MAC", Duration::from_secs(2), || client_sees(&macs[0]));

    // Node crash: daemon gone and link cut at once; the survivors get a new view.
    handles[0].stop(Stop::Kill);
    nodes[0].ip(&["link", "set", "eth0", "down"]);
    let t0 = Instant::now();
    hub.install(&[&[2, 3]]);
    wait_for("client to see node2's MAC", Duration::from_secs(2), || client_sees(&macs[1]));
    let takeover = t0.elapsed();
    assert!(holds(1) && !holds(2));
    run(&["ip", "netns", "exec", &client.0, "ping", "-c", "1", "-W", "2", VIP]);
    wait_for("client to see node2's MAC for the IPv6 VIP", Duration::from_secs(2), || client_sees6(&macs[1]));
    run(&["ip", "netns", "exec", &client.0, "ping", "-6", "-c", "1", "-W", "2", VIP6]);
    // The crashed node's kernel drops the VIP once the lease runs out.
    wait_for("the dead daemon's VIPs to expire", Duration::from_millis(3500), || !holds(0) && !holds6(0));

    // Graceful stop of node2: handed over to node3.
    let t1 = Instant::now();
    handles[1].stop(Stop::Graceful);
    let t = Instant::now();
    while !client_sees(&macs[2]) {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "client never saw node3's MAC {}: holders {:?}, client: {}",
            macs[2],
            (holds(0), holds(1), holds(2)),
            client.ip(&["neigh", "show", VIP])
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let handover = t1.elapsed();
    assert!(!holds(1) && holds(2));
    wait_for("client to see node3's MAC for the IPv6 VIP", Duration::from_secs(2), || client_sees6(&macs[2]));

    // Node3 alone in a three-node cluster: no quorum, the VIP goes at once.
    let t2 = Instant::now();
    hub.install(&[&[3]]);
    wait_for("node3 to release without quorum", Duration::from_secs(1), || !holds(2) && !holds6(2));
    let release = t2.elapsed();
    eprintln!("takeover after crash {takeover:?}, graceful handover {handover:?}, quorum-loss release {release:?}");
    drop(handles);
}
