//! The failover measurement behind `hastack demo` and `hastack bench failover`: a lab of three LB
//! nodes and a client in network namespaces, a real `hastack cluster` daemon on each node holding a
//! VIP, a TCP service on every node, and a client that opens a connection to the VIP every few
//! milliseconds. A fault hits the node that holds the VIP; the outage is what the client saw: from
//! its last answered probe before the fault to its first probe answered by the new holder.
//!
//! The same lab also builds the two-node gateway pair with a vote-only witness
//! ([`LabCluster::start_two_node_witness`]): `hastack witness` runs in its own namespace on the
//! bridge ([`WITNESS_ADDR`]), and the config is what an operator writes for that shape
//! (`[cluster.witness]`, `wait_for_all`).
//!
//! Faults: `crash` (daemon killed and the node's link cut at once: a dead machine), `kill` (the
//! daemon alone killed with SIGKILL: the node stays up), `stop` (SIGSTOP: a frozen daemon), and
//! `graceful` (SIGTERM: a planned handover). Every run is bounded in time and count and cleans up
//! after itself (the lab removes its namespaces and processes on drop, also on panic).

use std::collections::BTreeMap;
use std::io::Write;

use tokio::io::AsyncReadExt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hastack_lab::{Lab, Proc};
use nix::sys::signal::Signal;

/// The VIP of the lab cluster.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The IPv6 VIP of a lab cluster built with [`LabCluster::start_v6`].
pub const VIP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0x198, 0x18, 0, 0, 0, 0, 0x100);
/// The TCP port every node serves behind the VIP.
pub const SERVICE_PORT: u16 = 8080;
/// How often the client opens a connection to the VIP: the resolution of every outage figure.
pub const PROBE_EVERY: Duration = Duration::from_millis(2);
/// Where the vote-only witness of a two-node lab cluster runs (its own namespace on the bridge,
/// like the third machine corosync-qnetd runs on).
pub const WITNESS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);
/// How long a daemon may take to exit after its signal before a restart gives up on it: a graceful
/// stop hands over within the daemon's 3 s stop deadline; a SIGKILLed one exits at once.
const EXIT_WAIT: Duration = Duration::from_secs(6);

/// A fault injected on the VIP holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Daemon SIGKILLed and link cut: the machine is gone.
    Crash,
    /// Daemon SIGKILLed; the node stays up.
    Kill,
    /// Daemon SIGSTOPped (frozen), then SIGCONTed after the measurement.
    Stop,
    /// Daemon SIGTERMed: a planned handover.
    Graceful,
}

impl Fault {
    /// Parses `crash`, `kill`, `stop`, `graceful`.
    pub fn parse(s: &str) -> anyhow::Result<Fault> {
        Ok(match s {
            "crash" => Fault::Crash,
            "kill" => Fault::Kill,
            "stop" => Fault::Stop,
            "graceful" => Fault::Graceful,
            _ => bail!("unknown fault \"{s}\" (crash, kill, stop, graceful)"),
        })
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::Graceful => "graceful",
        }
    }
}

/// What holds the VIP in the lab: hastack, or keepalived (VRRP) as the reference peer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stack {
    /// `hastack cluster` on every node.
    Hastack,
    /// keepalived on every node: VRRPv2 at a whole-second advert, VRRPv3 below a second; equal
    /// priorities and `nopreempt`, so a recovered node takes nothing back (like hastack's stickiness).
    Keepalived {
        /// advert_int.
        advert: Duration,
    },
}

impl Stack {
    /// A short label for reports.
    pub fn label(&self) -> String {
        match self {
            Stack::Hastack => "hastack".into(),
            Stack::Keepalived { advert } => format!("keepalived advert {}s", advert.as_secs_f64()),
        }
    }
}

/// One measured failover.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What was done.
    pub fault: Fault,
    /// Node that held the VIP before.
    pub from: usize,
    /// Node that answered for the VIP after.
    pub to: usize,
    /// Client-observed outage.
    pub outage: Duration,
    /// Longest time two live daemons' nodes held the VIP at once (should be zero).
    pub double_holder: Duration,
    /// `kill` only: how long the killed daemon's node kept the VIP (None: still held after 10 s).
    pub stale: Option<Duration>,
}

/// A running lab cluster.
pub struct LabCluster {
    /// The lab (dropped last: it removes namespaces and kills what runs in them).
    pub lab: Lab,
    binary: PathBuf,
    config: PathBuf,
    stack: Stack,
    /// Daemon starts so far (fresh pid-file names: a killed, not yet reaped daemon still has a pid).
    starts: usize,
    daemons: BTreeMap<usize, Proc>,
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
    holders: Arc<Mutex<HolderLog>>,
    /// Per node, the intervals during which it certainly held the VIP (see [`watch_vip`]).
    held: Arc<Mutex<Held>>,
    nodes: usize,
    vip: IpAddr,
    /// The witness's host and its `hastack witness` process, in a two-node lab cluster.
    witness: Option<Witness>,
}

/// The vote-only witness of a two-node lab cluster.
struct Witness {
    host: hastack_lab::HostId,
    daemon: Option<Proc>,
}

/// Which nodes (by index) held the VIP, after each change seen by a watcher.
type HolderLog = Vec<(Instant, [bool; 8])>;

/// Certain holding intervals per node: from the first sample that saw the address to the last
/// sample that still saw it. Sampling can only shorten them, so an overlap of two is a real
/// double holder, never an artefact of the sampling interval.
#[derive(Debug, Default)]
struct Held {
    closed: Vec<(usize, Instant, Instant)>,
    /// Node -> (first seen, last seen) of the interval still open.
    open: BTreeMap<usize, (Instant, Instant)>,
}

impl Held {
    fn intervals(&self, node: usize) -> impl Iterator<Item = (Instant, Instant)> + '_ {
        self.closed
            .iter()
            .filter(move |(n, _, _)| *n == node)
            .map(|(_, a, b)| (*a, *b))
            .chain(self.open.get(&node).copied())
    }
}

/// A disturbance under which nothing should move: the VIP must stay where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disturbance {
    /// This percentage of every packet between every pair of cluster nodes dropped (nftables).
    Loss(u8),
    /// Busy threads at normal priority on every core (one more than there are cores).
    CpuHog,
}

impl Disturbance {
    /// A label for reports.
    pub fn label(&self) -> String {
        match self {
            Disturbance::Loss(p) => format!("{p}% loss"),
            Disturbance::CpuHog => "CPU hog".into(),
        }
    }
}

/// What a quiet window saw.
#[derive(Debug, Clone)]
pub struct Quiet {
    /// The disturbance.
    pub what: Disturbance,
    /// How long it lasted.
    pub duration: Duration,
    /// VIP moves or releases with no fault injected (should be zero).
    pub false_failovers: usize,
    /// Time two nodes certainly held the VIP at once (should be zero).
    pub double_holder: Duration,
    /// Client probes that failed during the window, out of all probes.
    pub failed_probes: (usize, usize),
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    at: Instant,
    /// Which node answered (1-based), None = failed.
    node: Option<usize>,
}

impl Drop for LabCluster {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Where every lab node's cluster daemon serves Prometheus metrics (inside its namespace).
pub const LAB_METRICS: &str = "127.0.0.1:9650";

/// The config the three-node lab cluster runs with.
pub fn lab_config(nodes: usize, links: usize, authkey: &Path) -> String {
    lab_config_for(nodes, links, authkey, IpAddr::V4(VIP))
}

/// The lab cluster's config with `vip` (the IPv4 or the IPv6 lab VIP) as its one VIP resource.
pub fn lab_config_for(nodes: usize, links: usize, authkey: &Path, vip: IpAddr) -> String {
    lab_config_spec(&LabSpec { nodes, links, ..LabSpec::new(nodes) }, authkey, vip)
}

/// The config of a lab cluster built from `spec`, as an operator would write it: the node list,
/// with a witness its `[cluster.witness]` and `wait_for_all` (a cold-started pair waits until both
/// nodes were seen once, like examples/two-node.toml), stickiness, and one VIP resource.
pub fn lab_config_spec(spec: &LabSpec, authkey: &Path, vip: IpAddr) -> String {
    // Each node has its own loopback, so every node serves its metrics at the same address.
    let mut s = format!(
        "[control]\nmetrics_cluster = \"{LAB_METRICS}\"\n\n[cluster]\nname = \"hastack-lab\"\nauthkey = \"{}\"\n\n",
        authkey.display()
    );
    for i in 1..=spec.nodes {
        let mut addrs = vec![format!("\"198.18.0.{}/24\"", 10 + i)];
        if spec.links > 1 {
            addrs.push(format!("\"198.19.0.{}/24\"", 10 + i));
        }
        s += &format!("[[cluster.node]]\nid = {i}\nname = \"lb{i}\"\nlinks = [{}]\n\n", addrs.join(", "));
    }
    if spec.witness {
        s += &format!(
            "# A vote-only tie-breaker on a third machine (`hastack witness`).\n[cluster.witness]\naddress = \"{WITNESS_ADDR}:{}\"\nvotes = 1\n\n",
            ha_membership::config::DEFAULT_WITNESS_PORT
        );
        s += "[quorum]\n# After a cold start, wait until both nodes have been seen once.\nwait_for_all = true\n\n";
    }
    s += "[resource_defaults]\n# Keep the VIP where it runs: a recovered node takes nothing back.\nstickiness = 100\n\n";
    let prefix = if vip.is_ipv4() { 24 } else { 64 };
    s += &format!("[[resource]]\nname = \"vip\"\n[resource.vip]\naddress = \"{vip}/{prefix}\"\ninterface = \"eth0\"\nlease = \"2s\"\n");
    s
}

/// How a lab cluster is built.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// LB nodes (1 to 8).
    pub nodes: usize,
    /// Cluster links per node (1 or 2).
    pub links: usize,
    /// What holds the VIP.
    pub stack: Stack,
    /// IPv6 VIP ([`VIP6`]) instead of [`VIP`].
    pub v6: bool,
    /// A vote-only witness (`hastack witness` at [`WITNESS_ADDR`], in its own namespace).
    pub witness: bool,
    /// Appended to the config (more resources and constraints; `{dir}` becomes the lab's directory).
    pub extra: String,
}

impl LabSpec {
    /// `nodes` hastack nodes on one link, IPv4 VIP, no witness.
    pub fn new(nodes: usize) -> LabSpec {
        LabSpec { nodes, links: 1, stack: Stack::Hastack, v6: false, witness: false, extra: String::new() }
    }

    /// Two hastack nodes and a vote-only witness: the two-node gateway pair of examples/two-node.toml.
    pub fn two_node_witness() -> LabSpec {
        LabSpec { witness: true, ..LabSpec::new(2) }
    }
}

impl LabCluster {
    /// Builds the lab, writes the config and key, starts a daemon and a TCP service per node, and
    /// the client's probe loop. `binary` is the `hastack` executable.
    pub fn start(binary: &Path, nodes: usize) -> anyhow::Result<LabCluster> {
        Self::start_spec(binary, &LabSpec::new(nodes))
    }

    /// Like [`LabCluster::start`], with the VIP held by `stack`.
    pub fn start_stack(binary: &Path, nodes: usize, stack: Stack) -> anyhow::Result<LabCluster> {
        Self::start_spec(binary, &LabSpec { stack, ..LabSpec::new(nodes) })
    }

    /// Like [`LabCluster::start_stack`], with `links` cluster links (1 or 2) per node.
    pub fn start_with(binary: &Path, nodes: usize, links: usize, stack: Stack) -> anyhow::Result<LabCluster> {
        Self::start_spec(binary, &LabSpec { links, stack, ..LabSpec::new(nodes) })
    }

    /// A hastack lab cluster whose VIP is the IPv6 address [`VIP6`] (the lab then has IPv6 on every
    /// link, cluster traffic stays on IPv4); the client probes `[VIP6]:8080`.
    pub fn start_v6(binary: &Path, nodes: usize) -> anyhow::Result<LabCluster> {
        Self::start_spec(binary, &LabSpec { v6: true, ..LabSpec::new(nodes) })
    }

    /// Like [`LabCluster::start`], with `extra` appended to the config (more resources and
    /// constraints; `{dir}` in it is replaced by the lab's directory).
    pub fn start_with_config(binary: &Path, nodes: usize, extra: &str) -> anyhow::Result<LabCluster> {
        Self::start_spec(binary, &LabSpec { extra: extra.into(), ..LabSpec::new(nodes) })
    }

    /// Two nodes and a vote-only witness in its own namespace ([`LabSpec::two_node_witness`]).
    pub fn start_two_node_witness(binary: &Path) -> anyhow::Result<LabCluster> {
        Self::start_spec(binary, &LabSpec::two_node_witness())
    }

    /// Builds the lab cluster `spec` describes and starts everything in it (the witness first, so
    /// the nodes find their tie-breaker at once).
    pub fn start_spec(binary: &Path, spec: &LabSpec) -> anyhow::Result<LabCluster> {
        let (nodes, links, stack, v6) = (spec.nodes, spec.links, spec.stack, spec.v6);
        if nodes == 0 || nodes > 8 {
            bail!("1 to 8 nodes");
        }
        if v6 && stack != Stack::Hastack {
            bail!("the IPv6 lab runs hastack only");
        }
        if spec.witness && (stack != Stack::Hastack || nodes != 2) {
            bail!("a witness lab is two hastack nodes");
        }
        let vip = if v6 { IpAddr::V6(VIP6) } else { IpAddr::V4(VIP) };
        let mut lab = Lab::builder().nodes(nodes).links(links).ipv6(v6).build().context("building the lab")?;
        lab.add_client(Ipv4Addr::new(198, 18, 0, 200)).context("adding the client")?;
        let witness = match spec.witness {
            true => Some(Witness { host: lab.add_client(WITNESS_ADDR).context("adding the witness host")?, daemon: None }),
            false => None,
        };
        let dir = lab.dir().to_path_buf();
        let key = dir.join("authkey");
        ha_membership::auth::keygen(&key).context("writing the cluster key")?;
        let config = dir.join("hastack.toml");
        let extra = spec.extra.replace("{dir}", &dir.display().to_string());
        std::fs::write(&config, lab_config_spec(spec, &key, vip) + "\n" + &extra)?;
        let stop = Arc::new(AtomicBool::new(false));
        for i in 1..=nodes {
            let stop = stop.clone();
            lab.node(i).thread_in(move || serve_node(i, &stop, v6))?;
        }
        let mut c = LabCluster {
            lab,
            binary: binary.to_path_buf(),
            config,
            stack,
            starts: 0,
            daemons: BTreeMap::new(),
            stop,
            probes: Arc::new(Mutex::new(Vec::new())),
            holders: Arc::new(Mutex::new(Vec::new())),
            held: Arc::new(Mutex::new(Held::default())),
            nodes,
            vip,
            witness,
        };
        if c.witness.is_some() {
            c.start_witness()?;
        }
        for i in 1..=nodes {
            c.start_daemon(i)?;
        }
        let (stop, probes) = (c.stop.clone(), c.probes.clone());
        c.lab.client(1).thread_in(move || probe_loop(&stop, probes, vip))?;
        for i in 1..=nodes {
            let (stop, holders, held) = (c.stop.clone(), c.holders.clone(), c.held.clone());
            c.lab.node(i).thread_in(move || watch_vip(i, &stop, &holders, &held, vip))?;
        }
        Ok(c)
    }

    /// Number of LB nodes.
    pub fn node_count(&self) -> usize {
        self.nodes
    }

    /// The witness's control socket (a two-node lab cluster only).
    pub fn witness_socket(&self) -> Option<PathBuf> {
        self.witness.as_ref().map(|_| self.lab.dir().join("witness.sock"))
    }

    /// The witness's host in the lab, e.g. to cut it off with nftables (a two-node lab only).
    pub fn witness_host(&self) -> Option<hastack_lab::HostId> {
        self.witness.as_ref().map(|w| w.host)
    }

    /// The running witness process, if any.
    pub fn witness_daemon(&self) -> Option<&Proc> {
        self.witness.as_ref().and_then(|w| w.daemon.as_ref())
    }

    /// Starts (or restarts, once the previous one has exited) `hastack witness` on its host.
    pub fn start_witness(&mut self) -> anyhow::Result<()> {
        let socket = self.witness_socket().context("this lab cluster has no witness")?;
        let (binary, config, state) = (self.binary.clone(), self.config.clone(), self.lab.dir().join("witness"));
        let w = self.witness.as_mut().context("this lab cluster has no witness")?;
        if let Some(old) = w.daemon.take() {
            reap_before_restart(&old, "the witness")?;
        }
        let p = self.lab.host(w.host).spawn(&[
            binary.as_os_str(),
            "witness".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "--state-dir".as_ref(),
            state.as_os_str(),
        ])?;
        w.daemon = Some(p);
        Ok(())
    }

    /// SIGKILLs the witness and reaps it (its vote is gone; the nodes keep 2 of 3 votes).
    pub fn kill_witness(&mut self) -> anyhow::Result<()> {
        let w = self.witness.as_mut().context("this lab cluster has no witness")?;
        if let Some(p) = w.daemon.take() {
            p.kill();
        }
        Ok(())
    }

    /// The witness's status answer (None if it does not answer or there is no witness).
    pub fn witness_status(&self) -> Option<serde_json::Value> {
        crate::control::query(&self.witness_socket()?, &crate::control::Request::Status).ok()
    }

    /// The witness's log (for error reports).
    pub fn witness_log(&self) -> String {
        self.witness_daemon().map(|p| p.log()).unwrap_or_default()
    }

    /// The VIP the cluster holds ([`VIP`], or [`VIP6`] for [`LabCluster::start_v6`]).
    pub fn vip(&self) -> IpAddr {
        self.vip
    }

    /// The control socket of node i.
    pub fn socket(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("lb{i}.sock"))
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The daemon process of node i, if one was started.
    pub fn daemon(&self, i: usize) -> Option<&Proc> {
        self.daemons.get(&i)
    }

    /// The status answer of node i's daemon (None if it does not answer).
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        crate::control::query(&self.socket(i), &crate::control::Request::Status).ok()
    }

    /// Node ids in node i's current view (None without a view or an answer).
    pub fn view_members(&self, i: usize) -> Option<Vec<u64>> {
        let v = self.status(i)?;
        let members = v["membership"]["view"]["members"].as_array()?;
        Some(members.iter().filter_map(|m| m["node"].as_u64()).collect())
    }

    /// Whether node i's partition is quorate (None if it does not answer).
    pub fn quorate(&self, i: usize) -> Option<bool> {
        self.status(i)?["membership"]["quorum"]["quorate"].as_bool()
    }

    /// Node i's answer to `hastack quorum --json` (None if it does not answer).
    pub fn quorum_json(&self, i: usize) -> Option<serde_json::Value> {
        crate::control::query(&self.socket(i), &crate::control::Request::Quorum).ok()
    }

    /// Node i's view id as (coordinator, epoch) (None without a view or an answer).
    pub fn view_id(&self, i: usize) -> Option<(u64, u64)> {
        let v = self.status(i)?;
        let id = &v["membership"]["view"]["id"];
        Some((id["coordinator"].as_u64()?, id["epoch"].as_u64()?))
    }

    /// Waits until `f` holds, polling every 20 ms; false after `within`.
    pub fn wait(&self, within: Duration, mut f: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f(self)
    }

    /// Starts (or restarts) the daemon of node i. A previous daemon of node i must have been
    /// signalled to stop: it is waited for and reaped first, because until it has exited it still
    /// owns the node's cluster UDP port and control socket (a graceful stop may still be handing
    /// over and leaving; a SIGKILLed one may not have finished exiting on a loaded machine), and the
    /// new daemon would fail with "Address already in use" or lose its socket file to the old
    /// one's exit.
    /// Returns how the previous daemon ended, if there was one and it had not been reaped yet.
    pub fn start_daemon(&mut self, i: usize) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let previous = match self.daemons.remove(&i) {
            Some(old) => reap_before_restart(&old, &format!("lb{i}'s daemon"))?,
            None => None,
        };
        self.starts += 1;
        let n = self.starts;
        let p = match self.stack {
            Stack::Hastack => self.lab.node(i).spawn(&[
                self.binary.as_os_str(),
                "cluster".as_ref(),
                "--config".as_ref(),
                self.config.as_os_str(),
                "--node".as_ref(),
                format!("lb{i}").as_ref(),
                "--socket".as_ref(),
                self.socket(i).as_os_str(),
                "--state-dir".as_ref(),
                self.lab.dir().join(format!("lb{i}")).as_os_str(),
            ])?,
            Stack::Keepalived { advert } => {
                let dir = self.lab.dir().to_path_buf();
                let conf = dir.join(format!("keepalived-lb{i}.conf"));
                std::fs::write(&conf, keepalived_config(i, advert))?;
                let pid = dir.join(format!("keepalived-lb{i}-{n}.pid"));
                let vrrp_pid = dir.join(format!("keepalived-lb{i}-{n}-vrrp.pid"));
                self.lab.node(i).spawn(&[
                    "keepalived".as_ref(),
                    "--dont-fork".as_ref(),
                    "--log-console".as_ref(),
                    "--vrrp".as_ref(),
                    "--use-file".as_ref(),
                    conf.as_os_str(),
                    "--pid".as_ref(),
                    pid.as_os_str(),
                    "--vrrp_pid".as_ref(),
                    vrrp_pid.as_os_str(),
                ])?
            }
        };
        self.daemons.insert(i, p);
        Ok(previous)
    }

    /// Total time, since `t`, during which two nodes other than `except` certainly held the VIP
    /// at once (overlaps of the watchers' certain holding intervals).
    pub fn double_holders_since(&self, t: Instant, except: Option<usize>) -> Duration {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let nodes: Vec<usize> = (1..=self.nodes).filter(|i| Some(*i) != except).collect();
        let mut total = Duration::ZERO;
        for (k, a) in nodes.iter().enumerate() {
            for b in &nodes[k + 1..] {
                for (a0, a1) in held.intervals(*a) {
                    for (b0, b1) in held.intervals(*b) {
                        let (from, to) = (a0.max(b0).max(t), a1.min(b1));
                        total += to.saturating_duration_since(from);
                    }
                }
            }
        }
        total
    }

    /// Holding intervals that started or ended inside `[from, to]`: every release or takeover.
    pub fn vip_changes_between(&self, from: Instant, to: Instant) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let starts = (1..=self.nodes).flat_map(|i| held.intervals(i).map(|(a, _)| a).collect::<Vec<_>>());
        let ends = held.closed.iter().map(|(_, _, b)| *b);
        starts.chain(ends).filter(|x| *x >= from && *x <= to).count()
    }

    /// Runs `what` on the whole cluster for `duration` (bounded: at most ten minutes) and counts
    /// what moved: with no fault injected, nothing should. Waits for one reachable holder before,
    /// and lets the cluster settle for two seconds after, counting that too.
    pub fn quiet_window(&mut self, what: Disturbance, duration: Duration) -> anyhow::Result<Quiet> {
        let duration = duration.min(Duration::from_secs(600));
        self.wait_for_holder(Duration::from_secs(15))?;
        let t0 = Instant::now();
        match what {
            Disturbance::Loss(pct) => {
                for a in 1..=self.nodes {
                    for b in a + 1..=self.nodes {
                        self.lab.loss(a, b, pct)?;
                    }
                }
                std::thread::sleep(duration);
                self.lab.heal()?;
            }
            Disturbance::CpuHog => {
                let end = Instant::now() + duration;
                let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
                let hogs: Vec<_> = (0..=cores)
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
                    let _ = h.join();
                }
            }
        }
        // A change caused during the window may show just after it.
        std::thread::sleep(Duration::from_secs(2));
        let t1 = Instant::now();
        let probes = self.probes_since(t0);
        let failed = probes.iter().filter(|p| p.at <= t1 && p.node.is_none()).count();
        Ok(Quiet {
            what,
            duration,
            false_failovers: self.vip_changes_between(t0, t1),
            double_holder: self.double_holders_since(t0, None),
            failed_probes: (failed, probes.len()),
        })
    }

    /// When node i last stopped holding the VIP after `t`.
    fn vip_dropped_at(&self, i: usize, t: Instant) -> Option<Instant> {
        let h = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().filter(|(at, set)| *at >= t && !set[i - 1]).map(|(at, _)| *at).next()
    }

    /// Which nodes hold the VIP right now (from the watchers).
    pub fn holders(&self) -> Vec<usize> {
        let h = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        h.last().map(|(_, set)| (1..=self.nodes).filter(|i| set[*i - 1]).collect()).unwrap_or_default()
    }

    /// Waits until exactly one node holds the VIP and the client reaches it; returns that node.
    pub fn wait_for_holder(&self, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let h = self.holders();
            if h.len() == 1 {
                let since = Instant::now();
                std::thread::sleep(Duration::from_millis(50));
                if self.probes_since(since).iter().any(|p| p.node == Some(h[0])) {
                    return Ok(h[0]);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("no single VIP holder reachable by the client within {within:?} (holders: {:?})", self.holders())
    }

    fn probes_since(&self, t: Instant) -> Vec<Probe> {
        let p = self.probes.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().filter(|x| x.at >= t).copied().collect()
    }

    /// Runs `fault` on the current holder, measures the outage, then restores the node and waits
    /// until it has rejoined.
    pub fn failover(&mut self, fault: Fault, timeout: Duration) -> anyhow::Result<Sample> {
        let from = self.wait_for_holder(Duration::from_secs(10))?;
        let daemon = self.daemons.get(&from).context("no daemon on the holder")?;
        let t0 = Instant::now();
        match fault {
            Fault::Crash => {
                daemon.signal(Signal::SIGKILL)?;
                self.lab.link_down(from, 0)?;
            }
            Fault::Kill => daemon.signal(Signal::SIGKILL)?,
            Fault::Stop => daemon.signal(Signal::SIGSTOP)?,
            Fault::Graceful => daemon.signal(Signal::SIGTERM)?,
        }
        // First probe answered by another node. Probes run concurrently and finish out of order:
        // once one succeeded, wait out the probe deadline and take the earliest start.
        let deadline = t0 + timeout;
        loop {
            if Instant::now() > deadline {
                self.restore(fault, from)?;
                bail!("{}: no other node answered for the VIP within {timeout:?}", fault.name());
            }
            if self.probes_since(t0).iter().any(|p| p.node.is_some_and(|n| n != from)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(250));
        let (to, first_ok) = self
            .probes_since(t0)
            .iter()
            .filter(|p| p.node.is_some_and(|n| n != from))
            .min_by_key(|p| p.at)
            .map(|p| (p.node.unwrap_or(0), p.at))
            .context("probe vanished")?;
        let last_ok = {
            let p = self.probes.lock().unwrap_or_else(|e| e.into_inner());
            p.iter().filter(|x| x.at < t0 && x.node.is_some()).map(|x| x.at).max().unwrap_or(t0)
        };
        let double_holder = self.double_holder_time(t0, fault, from);
        let stale = if fault == Fault::Kill {
            // A process crash is not a node crash: the VIP must not outlive the daemon for long.
            let gone = self.wait(Duration::from_secs(10), |c| !c.holders().contains(&from));
            gone.then(|| self.vip_dropped_at(from, t0).map(|d| d.saturating_duration_since(t0)).unwrap_or_default())
        } else {
            None
        };
        self.restore(fault, from)?;
        Ok(Sample { fault, from, to, outage: first_ok.saturating_duration_since(last_ok), double_holder, stale })
    }

    /// Time during which two nodes held the VIP, counting the faulted node only where it still
    /// runs a live daemon and can talk (graceful stop): a killed or frozen daemon's VIP is bounded by
    /// its lease instead.
    fn double_holder_time(&self, since: Instant, fault: Fault, faulted: usize) -> Duration {
        let except = (fault != Fault::Graceful).then_some(faulted);
        self.double_holders_since(since, except)
    }

    fn restore(&mut self, fault: Fault, node: usize) -> anyhow::Result<()> {
        match fault {
            Fault::Crash => {
                self.lab.link_up(node, 0)?;
                self.start_daemon(node)?;
            }
            Fault::Kill => {
                self.start_daemon(node)?;
            }
            Fault::Graceful => {
                // A graceful stop ends with a clean exit of its own (after handing over and leaving).
                let log = self.daemon_log(node);
                if let Some(st) = self.start_daemon(node)?.filter(|st| !st.success()) {
                    bail!("the gracefully stopped daemon of lb{node} ended with {st}:\n{log}");
                }
            }
            Fault::Stop => {
                if let Some(d) = self.daemons.get(&node) {
                    d.signal(Signal::SIGCONT)?;
                }
            }
        }
        // The restored node must be back in the view (and hold nothing) before the next fault.
        let deadline = Instant::now() + Duration::from_secs(15);
        if let Stack::Keepalived { advert } = self.stack {
            // VRRP has no view to ask: give the restarted instance a few adverts to settle as backup.
            std::thread::sleep(advert * 4 + Duration::from_millis(500));
        }
        loop {
            let rejoined = match self.stack {
                // Every node in the restored node's view (a witness is a member too).
                Stack::Hastack => {
                    self.view_members(node).is_some_and(|m| (1..=self.nodes as u64).all(|n| m.contains(&n)))
                }
                Stack::Keepalived { .. } => true,
            };
            // The restarted daemon itself must be running (a status answer could only come from it,
            // but a daemon that failed at start-up should say why at once, not after 15 s).
            if let Some(d) = self.daemons.get(&node).filter(|d| fault != Fault::Stop && d.try_wait().ok().flatten().is_some()) {
                bail!("the restarted daemon of lb{node} exited after {}:\n{}", fault.name(), d.log());
            }
            if rejoined && self.holders().len() == 1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node lb{node} did not rejoin within 15 s after {}", fault.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `hastack status` of node i, as text.
    pub fn status_text(&self, i: usize) -> String {
        match crate::control::query(&self.socket(i), &crate::control::Request::Status) {
            Ok(v) => crate::cluster::status_text(&v),
            Err(e) => format!("(status unavailable: {e})\n"),
        }
    }

    /// The daemon log of node i (for error reports).
    pub fn daemon_log(&self, i: usize) -> String {
        self.daemons.get(&i).map(|p| p.log()).unwrap_or_default()
    }
}

/// Waits (bounded by [`EXIT_WAIT`]) for a daemon that was told to stop and reaps it, so that its
/// sockets are closed before its successor binds the same addresses: the kernel closes a process's
/// descriptors when its last thread exits, which `waitpid` reporting the exit guarantees.
/// Returns its exit status (None if it had been reaped already).
fn reap_before_restart(old: &Proc, what: &str) -> anyhow::Result<Option<std::process::ExitStatus>> {
    match old.wait_timeout(EXIT_WAIT) {
        Ok(Some(st)) => Ok(Some(st)),
        // Reaped already (e.g. killed through the lab): nothing left to wait for.
        Err(hastack_lab::LabError::Invalid(_)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("waiting for {what} (pid {}) to exit", old.pid())),
        Ok(None) => bail!(
            "{what} (pid {}) was not stopped or is still running {EXIT_WAIT:?} after its signal; not starting a second one beside it",
            old.pid()
        ),
    }
}

/// keepalived's config for node i: one VRRP instance for the VIP, all nodes equal, no preemption.
pub fn keepalived_config(i: usize, advert: Duration) -> String {
    let v3 = advert < Duration::from_secs(1) || advert.subsec_nanos() != 0;
    format!(
        "global_defs {{\n  router_id lb{i}\n  {}\n}}\n\nvrrp_instance VI_1 {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n  priority 100\n  advert_int {}\n  virtual_ipaddress {{\n    {VIP}/24 dev eth0\n  }}\n}}\n",
        if v3 { "vrrp_version 3" } else { "vrrp_version 2" },
        advert.as_secs_f64()
    )
}

/// The service behind the VIP: answers every connection with its node number.
fn serve_node(i: usize, stop: &AtomicBool, v6: bool) -> anyhow::Result<()> {
    let any = if v6 { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
    let l = std::net::TcpListener::bind(SocketAddr::new(any, SERVICE_PORT))?;
    l.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(&[i as u8]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    Ok(())
}

/// Every 2 ms, a new connection to the VIP (each with its own 200 ms deadline, so a lost SYN does
/// not delay the next probe; results are recorded with the time the probe started). Bounded: it stops
/// with the lab cluster, and after one hour at most.
fn probe_loop(stop: &AtomicBool, probes: Arc<Mutex<Vec<Probe>>>, vip: IpAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let end = Instant::now() + Duration::from_secs(3600);
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            tick.tick().await;
            let at = Instant::now();
            let probes = probes.clone();
            tokio::spawn(async move {
                let node = tokio::time::timeout(Duration::from_millis(200), async {
                    let mut s = tokio::net::TcpStream::connect(SocketAddr::new(vip, SERVICE_PORT)).await.ok()?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.ok()?;
                    Some(b[0] as usize)
                })
                .await
                .ok()
                .flatten();
                let mut p = probes.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded memory: an hour of probes at most.
                if p.len() < 1_000_000 {
                    p.push(Probe { at, node });
                }
            });
        }
    });
    Ok(())
}

/// Samples every 2 ms whether node i holds the VIP (read through netlink in its namespace): the
/// latest state for [`LabCluster::holders`], and certain holding intervals (first sample with the
/// address to last sample with it) for the double-holder count.
fn watch_vip(
    i: usize,
    stop: &AtomicBool,
    holders: &Mutex<HolderLog>,
    held: &Mutex<Held>,
    vip: IpAddr,
) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(3600);
    let mut last: Option<bool> = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let has = nix::ifaddrs::getifaddrs()
            .map(|mut a| {
                a.any(|x| {
                    let v4 = x.address.and_then(|s| s.as_sockaddr_in().map(|v| IpAddr::V4(v.ip())));
                    let v6 = x.address.and_then(|s| s.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())));
                    v4.or(v6) == Some(vip)
                })
            })
            .unwrap_or(false);
        let now = Instant::now();
        {
            let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
            match (has, h.open.get(&i).copied()) {
                (true, Some((first, _))) => {
                    h.open.insert(i, (first, now));
                }
                (true, None) => {
                    h.open.insert(i, (now, now));
                }
                (false, Some((first, last_seen))) => {
                    h.open.remove(&i);
                    h.closed.push((i, first, last_seen));
                }
                (false, None) => {}
            }
        }
        if last != Some(has) {
            let mut h = holders.lock().unwrap_or_else(|e| e.into_inner());
            let mut set = h.last().map(|x| x.1).unwrap_or([false; 8]);
            set[i - 1] = has;
            h.push((now, set));
            last = Some(has);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// Summary figures of a list of durations.
pub fn summarize(mut d: Vec<Duration>) -> Option<(Duration, Duration, Duration, Duration)> {
    if d.is_empty() {
        return None;
    }
    d.sort();
    let pct = |p: f64| d[((d.len() - 1) as f64 * p).round() as usize];
    Some((d[0], pct(0.5), pct(0.99), d[d.len() - 1]))
}
