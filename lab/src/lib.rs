//! The network-namespace lab: a throw-away L2 network of namespaces for end-to-end tests.
//!
//! ```text
//!         switch namespace hsl<pid>x<n>sw: one Linux bridge per link, nothing of the host attached
//!    +--------------------------------------------------------------------+
//!    |   br0 = link 0                          br1 = link 1               |
//!    |   n1l0   n2l0   n3l0   c1l0             n1l1   n2l1   n3l1        |
//!    +----|------|------|------|----------------|------|------|-----------+
//!         |      |      |      |   veth pairs   |      |      |
//!       eth0   eth0   eth0   eth0             eth1   eth1   eth1
//!      node 1 node 2 node 3 client 1         node 1 node 2 node 3
//!
//!    node i = namespace hsl<pid>x<n>n<i> (its eth0 and eth1), client j = hsl<pid>x<n>c<j>
//!    link 0: 198.18.0.(10+i)/24   fd00:198:18:0::(10+i)/64
//!    link 1: 198.19.0.(10+i)/24   fd00:198:18:1::(10+i)/64
//! ```
//!
//! * The bridges live inside their own "switch" namespace, so nothing is ever attached to the host's
//!   real interfaces; veths are created directly inside the namespaces, never in the host's.
//! * Node i (1-based) has `eth<L>` on link L with MAC `02:5a:00:<L>:00:<i>`; clients (`add_client`)
//!   sit on link 0 with MAC `02:5a:01:00:00:<j>`. IPv6 addresses carry the same digits as the IPv4
//!   host part and are usable at once (DAD off, `keep_addr_on_down` so `link_down` keeps them).
//! * Faults are nftables rules in each receiving namespace (see [`fault`]): `partition`,
//!   `partition_one_way`, `isolate`, `loss`, `heal`, `heal_pair`; interface faults with
//!   `link_down`/`link_up` (admin down inside the node) and `Host::cable_cut` (carrier loss).
//! * Everything is removed on drop, also while a test panics: tracked processes are killed by PID,
//!   any other process left inside a lab namespace is killed by PID, then the namespaces are
//!   deleted (their veths, bridges and nft tables go with them). Building a lab first deletes the
//!   namespaces of earlier test processes that died without cleaning up (owner pid in the name).
//! * Each host has its own `/etc/resolv.conf` (bind-mounted by `ip netns exec` from
//!   `/etc/netns/<ns>/`), so a DHCP client script never rewrites the machine's; each lab has a
//!   scratch directory ([`Lab::dir`]) for configs and the logs of spawned processes.
//!
//! ```no_run
//! use hastack_lab::{Lab, require_lab};
//! # fn main() -> anyhow::Result<()> {
//! if !require_lab()? {
//!     return Ok(()); // printed "SKIP: ..." (panics instead under CI=true)
//! }
//! let mut lab = Lab::builder().nodes(3).links(2).ipv6(true).build()?;
//! let client = lab.add_client(std::net::Ipv4Addr::new(198, 18, 0, 100))?;
//! let cfg = lab.write_file("hastack.toml", "# ...")?;
//! let daemon = lab.node(1).spawn(&["/path/to/hastack", "cluster", "--config", cfg.to_str().unwrap()])?;
//! lab.partition(1, 2)?; // nodes 1 and 2 no longer hear each other; 3 hears both
//! assert!(lab.host(client).ping(lab.node(3).addr(0)));
//! lab.heal()?;
//! drop(daemon); // SIGKILL + reap; the lab would do it on drop anyway
//! # Ok(()) }
//! ```
//!
//! Lifecycle of a lab: `build()` → (faults applied / healed, clients added, processes spawned) →
//! drop. A failed `build()` or `add_client()` cleans up what it had created before returning.

mod bin;
mod cmd;
mod error;
pub mod fault;
mod host;
mod neigh;
pub mod netns;
mod proc;
mod require;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use bin::hastack_bin;
pub use cmd::find_tool;
pub use error::{LabError, Result};
pub use host::{Host, HostId, HostLink};
pub use neigh::{MacAddr, Neighbour, parse_neigh_json};
pub use netns::cleanup_stale;
pub use proc::Proc;
pub use require::{in_ci, require_lab, require_root, require_tools};

use fault::Fault;
use host::Shared;

/// Most links a lab can have (each has its own /24 in 198.18.0.0/15).
pub const MAX_LINKS: usize = 2;
/// Most nodes a lab can have (198.18.0.(10+i) must stay below the clients' usual range).
pub const MAX_NODES: usize = 50;

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Builder of a [`Lab`]: `Lab::builder().nodes(3).links(2).ipv6(true).build()?`.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    nodes: usize,
    links: usize,
    ipv6: bool,
}

impl Default for LabBuilder {
    fn default() -> Self {
        LabBuilder {
            nodes: 3,
            links: 1,
            ipv6: true,
        }
    }
}

impl LabBuilder {
    /// Number of cluster nodes (1..=50; default 3).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Number of links, i.e. bridges every node is attached to (1..=2; default 1).
    pub fn links(mut self, n: usize) -> Self {
        self.links = n;
        self
    }

    /// Whether hosts get IPv6 addresses (default true); without it IPv6 is disabled in the hosts.
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Creates the namespaces, bridges, veths and addresses.
    pub fn build(self) -> Result<Lab> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(LabError::Invalid(format!(
                "nodes must be 1..={MAX_NODES}, not {}",
                self.nodes
            )));
        }
        if self.links == 0 || self.links > MAX_LINKS {
            return Err(LabError::Invalid(format!(
                "links must be 1..={MAX_LINKS}, not {}",
                self.links
            )));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(LabError::NotRoot);
        }
        // Crash cleanup of earlier runs; a failure here must not stop this test.
        if let Err(e) = cleanup_stale() {
            eprintln!("lab: crash cleanup failed: {e}");
        }
        let id = format!(
            "{}{}x{}",
            netns::PREFIX,
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        // Lets a later run tell this lab's namespaces from those of a dead process with our pid.
        let owner = dir.join(netns::OWNER_FILE);
        std::fs::write(&owner, netns::owner_record())
            .map_err(|e| LabError::io(format!("writing {}", owner.display()), e))?;
        let mut lab = Lab {
            switch_ns: format!("{id}sw"),
            id,
            links: self.links,
            ipv6: self.ipv6,
            nodes: Vec::new(),
            clients: Vec::new(),
            namespaces: Vec::new(),
            shared: Arc::new(Shared {
                procs: Arc::default(),
                dir,
                log_counter: AtomicUsize::new(0),
            }),
            faults: Mutex::new(FaultState::default()),
        };
        // From here on an error drops `lab`, which removes whatever was already created.
        let node_ns: Vec<String> = (1..=self.nodes)
            .map(|i| format!("{}n{i}", lab.id))
            .collect();
        let mut all = vec![lab.switch_ns.clone()];
        all.extend(node_ns.iter().cloned());
        lab.create_namespaces(&all)?;
        netns::write_sysctls(
            &lab.switch_ns,
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ],
        )?;
        for ns in &node_ns {
            netns::write_sysctls(ns, lab.host_sysctls())?;
        }
        let mut switch_script = String::new();
        for l in 0..self.links {
            switch_script.push_str(&format!(
                "link add br{l} type bridge stp_state 0 forward_delay 0 mcast_snooping 0\nlink set br{l} up\n"
            ));
        }
        let mut hosts = Vec::new();
        for (idx, ns) in node_ns.iter().enumerate() {
            let i = idx + 1;
            let links = (0..self.links)
                .map(|l| {
                    let v4 = Ipv4Addr::new(198, 18 + l as u8, 0, (10 + i) as u8);
                    HostLink {
                        link: l,
                        ifname: format!("eth{l}"),
                        port: format!("n{i}l{l}"),
                        mac: MacAddr([0x02, 0x5a, 0x00, l as u8, (i >> 8) as u8, i as u8]),
                        v4: Some(v4),
                        v4_prefix: 24,
                        v6: self.ipv6.then(|| lab_v6(l, v4)),
                    }
                })
                .collect::<Vec<_>>();
            for hl in &links {
                switch_script.push_str(&switch_port_script(hl, ns));
            }
            hosts.push(Host {
                id: HostId::Node(i),
                ns: ns.clone(),
                switch_ns: lab.switch_ns.clone(),
                links,
                shared: Arc::clone(&lab.shared),
            });
        }
        cmd::ip_batch(Some(&lab.switch_ns), &switch_script)?;
        for h in &hosts {
            cmd::ip_batch(Some(&h.ns), &host_script(h))?;
        }
        lab.nodes = hosts;
        Ok(lab)
    }
}

/// IPv6 twin of a lab IPv4 address: `fd00:198:18:<link>::<last octet, same digits>`.
fn lab_v6(link: usize, v4: Ipv4Addr) -> Ipv6Addr {
    let octet = v4.octets()[3];
    // The decimal digits read as hex, so 198.18.0.11 pairs with fd00:198:18:0::11.
    let host = u16::from_str_radix(&octet.to_string(), 16).unwrap_or(u16::from(octet));
    Ipv6Addr::new(0xfd00, 0x198, 0x18, link as u16, 0, 0, 0, host)
}

fn switch_port_script(hl: &HostLink, host_ns: &str) -> String {
    format!(
        "link add {port} type veth peer name {ifname} address {mac} netns {host_ns}\n\
         link set {port} master br{l}\nlink set {port} up\n",
        port = hl.port,
        ifname = hl.ifname,
        mac = hl.mac,
        l = hl.link
    )
}

fn host_script(h: &Host) -> String {
    let mut s = String::from("link set lo up\n");
    for hl in &h.links {
        if let Some(v4) = hl.v4 {
            s.push_str(&format!(
                "addr add {v4}/{} dev {}\n",
                hl.v4_prefix, hl.ifname
            ));
        }
        if let Some(v6) = hl.v6 {
            s.push_str(&format!("addr add {v6}/64 dev {} nodad\n", hl.ifname));
        }
        s.push_str(&format!("link set {} up\n", hl.ifname));
    }
    s
}

#[derive(Default)]
struct FaultState {
    faults: Vec<Fault>,
    /// Last ruleset loaded into each namespace, to skip unchanged ones.
    applied: HashMap<String, String>,
}

/// A running lab; dropping it removes every namespace, link, rule and process it made.
pub struct Lab {
    id: String,
    switch_ns: String,
    links: usize,
    ipv6: bool,
    nodes: Vec<Host>,
    clients: Vec<Host>,
    /// Every namespace created (or being created), switch first, in creation order.
    namespaces: Vec<String>,
    shared: Arc<Shared>,
    faults: Mutex<FaultState>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.id)
            .field("nodes", &self.nodes)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// A builder with the defaults (3 nodes, 1 link, IPv6 on).
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// Unique id of this lab (`hsl<pid>x<n>`), the prefix of all its namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Name of the switch namespace holding the bridges.
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// Every namespace of the lab (switch, nodes, clients).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Scratch directory for this lab (process logs, configs, lease files); removed on drop
    /// unless the test is panicking, so the logs of a failed test stay for reading.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Writes `content` to `name` inside the lab directory and returns the full path (for
    /// configs, key files and scripts the processes under test read).
    pub fn write_file(&self, name: &str, content: impl AsRef<[u8]>) -> Result<PathBuf> {
        if name.contains('/') || name.is_empty() || name == ".." {
            return Err(LabError::Invalid(format!(
                "lab file name {name:?} must be a plain file name"
            )));
        }
        let p = self.shared.dir.join(name);
        std::fs::write(&p, content)
            .map_err(|e| LabError::io(format!("writing {}", p.display()), e))?;
        Ok(p)
    }

    /// Number of links (bridges).
    pub fn link_count(&self) -> usize {
        self.links
    }

    /// Whether hosts have IPv6 addresses.
    pub fn has_ipv6(&self) -> bool {
        self.ipv6
    }

    /// The nodes, node 1 first.
    pub fn nodes(&self) -> &[Host] {
        &self.nodes
    }

    /// The clients, client 1 first.
    pub fn clients(&self) -> &[Host] {
        &self.clients
    }

    /// Node i (1-based). Panics if there is no such node.
    pub fn node(&self, i: usize) -> &Host {
        self.try_host(HostId::Node(i))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Client j (1-based). Panics if there is no such client.
    pub fn client(&self, j: usize) -> &Host {
        self.try_host(HostId::Client(j))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Any host by id. Panics if there is no such host.
    pub fn host(&self, id: impl Into<HostId>) -> &Host {
        self.try_host(id.into()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Any host by id, or an error naming what exists.
    pub fn try_host(&self, id: HostId) -> Result<&Host> {
        let (list, k) = match id {
            HostId::Node(i) => (&self.nodes, i),
            HostId::Client(j) => (&self.clients, j),
        };
        k.checked_sub(1).and_then(|k| list.get(k)).ok_or_else(|| {
            LabError::Invalid(format!(
                "no host {id} in lab {} ({} nodes, {} clients)",
                self.id,
                self.nodes.len(),
                self.clients.len()
            ))
        })
    }

    fn all_hosts(&self) -> impl Iterator<Item = &Host> {
        self.nodes.iter().chain(self.clients.iter())
    }

    fn host_sysctls(&self) -> &'static [(&'static str, &'static str)] {
        if self.ipv6 {
            &[
                ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/all/keep_addr_on_down", "1"),
                ("net/ipv6/conf/default/keep_addr_on_down", "1"),
            ]
        } else {
            &[
                ("net/ipv6/conf/all/disable_ipv6", "1"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ]
        }
    }

    fn create_namespaces(&mut self, names: &[String]) -> Result<()> {
        for n in names {
            // Our pid + counter are unique among live processes, so an existing namespace with
            // this name was left by a dead process that had our pid: it is stale.
            if netns::netns_exists(n) {
                netns::kill_all_in(n);
                netns::delete_netns(std::slice::from_ref(n))?;
            }
        }
        // Record first: if the batch fails halfway, drop still deletes those that were made.
        self.namespaces.extend(names.iter().cloned());
        for n in names {
            netns::create_etc(n)?;
        }
        let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        cmd::ip_batch(None, &script).map(drop)
    }

    /// Adds a client host on link 0 with IPv4 `addr` (in 198.18.0.0/24; plus its IPv6 twin
    /// `fd00:198:18:0::<same digits>` when the lab has IPv6), or with no address (`None`, e.g. for
    /// a DHCP client). Returns its id (`HostId::Client(j)`).
    pub fn add_client(&mut self, addr: impl Into<Option<Ipv4Addr>>) -> Result<HostId> {
        let addr = addr.into();
        if let Some(a) = addr {
            let o = a.octets();
            if o[..3] != [198, 18, 0] || o[3] == 0 || o[3] == 255 {
                return Err(LabError::Invalid(format!(
                    "client address {a} is not a host of 198.18.0.0/24"
                )));
            }
            if let Some(h) = self
                .all_hosts()
                .find(|h| h.links.first().and_then(|l| l.v4) == Some(a))
            {
                return Err(LabError::Invalid(format!(
                    "client address {a} is already used by {}",
                    h.id
                )));
            }
        }
        let j = self.clients.len() + 1;
        if j > 0xffff {
            return Err(LabError::Invalid("too many clients".into()));
        }
        let ns = format!("{}c{j}", self.id);
        self.create_namespaces(std::slice::from_ref(&ns))?;
        netns::write_sysctls(&ns, self.host_sysctls())?;
        let hl = HostLink {
            link: 0,
            ifname: "eth0".into(),
            port: format!("c{j}l0"),
            mac: MacAddr([0x02, 0x5a, 0x01, 0x00, (j >> 8) as u8, j as u8]),
            v4: addr,
            v4_prefix: 24,
            v6: addr.filter(|_| self.ipv6).map(|a| lab_v6(0, a)),
        };
        cmd::ip_batch(Some(&self.switch_ns), &switch_port_script(&hl, &ns))?;
        let host = Host {
            id: HostId::Client(j),
            ns,
            switch_ns: self.switch_ns.clone(),
            links: vec![hl],
            shared: Arc::clone(&self.shared),
        };
        cmd::ip_batch(Some(&host.ns), &host_script(&host))?;
        self.clients.push(host);
        // An active isolate() must also cover the newcomer.
        self.apply_faults(|_| {})?;
        Ok(HostId::Client(j))
    }

    /// The neighbour table of node i.
    pub fn neighbours(&self, i: impl Into<HostId>) -> Result<Vec<Neighbour>> {
        self.try_host(i.into())?.neighbours()
    }

    /// Sets node i's interface on `link` administratively down.
    pub fn link_down(&self, i: impl Into<HostId>, link: usize) -> Result<()> {
        let h = self.try_host(i.into())?;
        self.check_link(h, link)?;
        h.link_down(link)
    }

    /// Brings node i's interface on `link` back up.
    pub fn link_up(&self, i: impl Into<HostId>, link: usize) -> Result<()> {
        let h = self.try_host(i.into())?;
        self.check_link(h, link)?;
        h.link_up(link)
    }

    fn check_link(&self, h: &Host, link: usize) -> Result<()> {
        if link < h.links.len() {
            Ok(())
        } else {
            Err(LabError::Invalid(format!("{} has no link {link}", h.id)))
        }
    }

    fn pair(&self, a: HostId, b: HostId) -> Result<()> {
        self.try_host(a)?;
        self.try_host(b)?;
        if a == b {
            return Err(LabError::Invalid(format!(
                "a fault needs two different hosts, got {a} twice"
            )));
        }
        Ok(())
    }

    /// Drops all traffic in both directions between exactly hosts `a` and `b`.
    pub fn partition(&self, a: impl Into<HostId>, b: impl Into<HostId>) -> Result<()> {
        let (a, b) = (a.into(), b.into());
        self.pair(a, b)?;
        self.apply_faults(|f| {
            for (from, to) in [(a, b), (b, a)] {
                let fault = Fault::OneWay { from, to };
                if !f.contains(&fault) {
                    f.push(fault);
                }
            }
        })
    }

    /// Drops traffic from `from` to `to` only; `to` → `from` still flows.
    pub fn partition_one_way(&self, from: impl Into<HostId>, to: impl Into<HostId>) -> Result<()> {
        let (from, to) = (from.into(), to.into());
        self.pair(from, to)?;
        let fault = Fault::OneWay { from, to };
        self.apply_faults(|f| {
            if !f.contains(&fault) {
                f.push(fault)
            }
        })
    }

    /// Cuts host `h` off from every other host (nodes and clients) on every link.
    pub fn isolate(&self, h: impl Into<HostId>) -> Result<()> {
        let h = h.into();
        self.try_host(h)?;
        self.apply_faults(|f| {
            if !f.contains(&Fault::Isolate(h)) {
                f.push(Fault::Isolate(h))
            }
        })
    }

    /// Drops `pct` % of the frames between `a` and `b`, in each direction independently
    /// (a round trip then survives with probability (1 - pct/100)²).
    pub fn loss(&self, a: impl Into<HostId>, b: impl Into<HostId>, pct: u8) -> Result<()> {
        let (a, b) = (a.into(), b.into());
        self.loss_one_way(a, b, pct, None)?;
        self.loss_one_way(b, a, pct, None)
    }

    /// Like `loss`, but only UDP datagrams to `port` are dropped.
    pub fn loss_udp(
        &self,
        a: impl Into<HostId>,
        b: impl Into<HostId>,
        pct: u8,
        port: u16,
    ) -> Result<()> {
        let (a, b) = (a.into(), b.into());
        self.loss_one_way(a, b, pct, Some(port))?;
        self.loss_one_way(b, a, pct, Some(port))
    }

    /// Drops `pct` % of the frames from `from` to `to` (only UDP to `udp_port` if given); replaces
    /// an earlier loss rule of the same direction and port.
    pub fn loss_one_way(
        &self,
        from: impl Into<HostId>,
        to: impl Into<HostId>,
        pct: u8,
        udp_port: Option<u16>,
    ) -> Result<()> {
        let (from, to) = (from.into(), to.into());
        self.pair(from, to)?;
        if pct > 100 {
            return Err(LabError::Invalid(format!("loss of {pct} %")));
        }
        self.apply_faults(|f| {
            f.retain(|x| {
                !matches!(x, Fault::Loss { from: xf, to: xt, udp_port: xp, .. }
                if *xf == from && *xt == to && *xp == udp_port)
            });
            f.push(Fault::Loss {
                from,
                to,
                pct,
                udp_port,
            });
        })
    }

    /// Removes every fault (partitions, isolation, loss) of the lab.
    pub fn heal(&self) -> Result<()> {
        self.apply_faults(|f| f.clear())
    }

    /// Removes the faults between exactly `a` and `b` (both directions); others stay.
    pub fn heal_pair(&self, a: impl Into<HostId>, b: impl Into<HostId>) -> Result<()> {
        let (a, b) = (a.into(), b.into());
        self.pair(a, b)?;
        self.apply_faults(|f| f.retain(|x| !x.between(a, b)))
    }

    /// Removes every fault that concerns host `h` (its isolation and its pair faults).
    pub fn heal_host(&self, h: impl Into<HostId>) -> Result<()> {
        let h = h.into();
        self.try_host(h)?;
        self.apply_faults(|f| f.retain(|x| !x.involves(h)))
    }

    /// Changes the fault list with `change`, then loads each host's resulting ruleset (only where
    /// it differs from what is loaded). On failure the change is still recorded, so a later call
    /// retries loading it.
    fn apply_faults(&self, change: impl FnOnce(&mut Vec<Fault>)) -> Result<()> {
        let mut st = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut st.faults);
        let ids: Vec<HostId> = self.all_hosts().map(|h| h.id).collect();
        let macs_of = |id: HostId| -> Vec<MacAddr> {
            self.try_host(id)
                .map(|h| h.links.iter().map(|l| l.mac).collect())
                .unwrap_or_default()
        };
        for h in self.all_hosts() {
            let rules = fault::rules_for(h.id, &ids, &st.faults);
            let devices: Vec<String> = h.links.iter().map(|l| l.ifname.clone()).collect();
            let script = fault::render(&devices, &rules, macs_of);
            // A host never loaded has no table: the same as the empty script.
            let current = st
                .applied
                .get(&h.ns)
                .cloned()
                .unwrap_or_else(|| fault::render(&devices, &[], macs_of));
            if current == script {
                continue;
            }
            let mut c = h.command(cmd::nft());
            c.args(["-f", "-"]);
            cmd::checked(c, Some(&script))?;
            st.applied.insert(h.ns.clone(), script);
        }
        Ok(())
    }

    /// The nft ruleset currently loaded in host `h` (`nft list ruleset`), for assertion messages.
    pub fn ruleset(&self, h: impl Into<HostId>) -> Result<String> {
        let h = self.try_host(h.into())?;
        h.exec_ok(&[cmd::nft().as_os_str(), "list".as_ref(), "ruleset".as_ref()])
    }

    /// All IP addresses (v4 and v6) of host `h`, for building probes in tests.
    pub fn addrs(&self, h: impl Into<HostId>) -> Result<Vec<IpAddr>> {
        let h = self.try_host(h.into())?;
        Ok(h.links
            .iter()
            .flat_map(|l| l.v4.map(IpAddr::V4).into_iter().chain(l.v6.map(IpAddr::V6)))
            .collect())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Order matters: a namespace whose name is deleted while a process still runs in it
        // lives on unnamed and invisible, so first every process goes, then the names.
        self.shared.procs.kill_all();
        for ns in &self.namespaces {
            netns::kill_all_in(ns);
        }
        if let Err(e) = netns::delete_netns(&self.namespaces) {
            eprintln!("lab {}: deleting namespaces: {e}", self.id);
        }
        for ns in &self.namespaces {
            netns::remove_etc(ns);
        }
        let left: Vec<&String> = self
            .namespaces
            .iter()
            .filter(|n| netns::netns_exists(n))
            .collect();
        if !left.is_empty() {
            eprintln!("lab {}: namespaces left behind: {left:?}", self.id);
        }
        let dir: PathBuf = self.shared.dir.clone();
        if std::thread::panicking() {
            eprintln!(
                "lab {}: test failed; process logs kept in {}",
                self.id,
                dir.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("lab {}: removing {}: {e}", self.id, dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_twin_uses_same_digits() {
        assert_eq!(
            lab_v6(0, Ipv4Addr::new(198, 18, 0, 11)),
            "fd00:198:18::11".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            lab_v6(1, Ipv4Addr::new(198, 19, 0, 200)),
            "fd00:198:18:1::200".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn builder_rejects_bad_shapes_before_touching_the_system() {
        assert!(matches!(
            Lab::builder().nodes(0).build(),
            Err(LabError::Invalid(_))
        ));
        assert!(matches!(
            Lab::builder().links(3).build(),
            Err(LabError::Invalid(_))
        ));
    }

    #[test]
    fn scripts() {
        let hl = HostLink {
            link: 1,
            ifname: "eth1".into(),
            port: "n2l1".into(),
            mac: MacAddr([2, 0x5a, 0, 1, 0, 2]),
            v4: Some(Ipv4Addr::new(198, 19, 0, 12)),
            v4_prefix: 24,
            v6: Some(lab_v6(1, Ipv4Addr::new(198, 19, 0, 12))),
        };
        let s = switch_port_script(&hl, "hsl1x0n2");
        assert_eq!(
            s,
            "link add n2l1 type veth peer name eth1 address 02:5a:00:01:00:02 netns hsl1x0n2\n\
             link set n2l1 master br1\nlink set n2l1 up\n"
        );
    }
}

/// Calls `f` every `interval` until it returns true or `timeout` passes; returns whether it did.
/// For waiting on real network state in end-to-end tests (never in logic tests, which drive time).
pub fn poll_until(
    timeout: std::time::Duration,
    interval: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
