//! One host of the lab (a cluster node or a client): its namespace, interfaces and addresses, and
//! running things inside it.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::cmd;
use super::error::{LabError, Result};
use super::neigh::{MacAddr, Neighbour, parse_neigh_json};
use super::netns;
use super::proc::{Proc, Registry};

/// Which host of a lab: node i (1-based, as in 198.18.0.(10+i)) or client j (1-based).
/// A plain `usize` converts to a node id, so `lab.partition(1, 2)` means nodes 1 and 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostId {
    /// Cluster node i, 1-based.
    Node(usize),
    /// Client host j, 1-based, in the order `add_client` created them.
    Client(usize),
}

impl From<usize> for HostId {
    fn from(i: usize) -> Self {
        HostId::Node(i)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostId::Node(i) => write!(f, "n{i}"),
            HostId::Client(j) => write!(f, "c{j}"),
        }
    }
}

/// One interface of a host, attached to one lab link (bridge).
#[derive(Clone, Debug)]
pub struct HostLink {
    /// Link (bridge) number, 0-based.
    pub link: usize,
    /// Interface name inside the host's namespace (`eth0`, `eth1`).
    pub ifname: String,
    /// Name of the other veth end, enslaved to the bridge in the switch namespace.
    pub port: String,
    /// The interface's MAC (fixed by the lab: `02:5a:<kind>:<link>:<hi>:<lo>`).
    pub mac: MacAddr,
    /// IPv4 address (prefix length `v4_prefix`), None for an unconfigured client.
    pub v4: Option<Ipv4Addr>,
    /// IPv4 prefix length.
    pub v4_prefix: u8,
    /// IPv6 address (/64), None without IPv6 or for an unconfigured client.
    pub v6: Option<Ipv6Addr>,
}

/// What every host of a lab shares with the lab itself.
pub(crate) struct Shared {
    pub procs: Arc<Registry>,
    pub dir: PathBuf,
    pub log_counter: AtomicUsize,
}

/// A node or client of the lab: a network namespace with one interface per link it is on.
pub struct Host {
    pub(crate) id: HostId,
    pub(crate) ns: String,
    pub(crate) switch_ns: String,
    pub(crate) links: Vec<HostLink>,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.id)
            .field("ns", &self.ns)
            .field("links", &self.links)
            .finish()
    }
}

impl Host {
    /// Which host this is.
    pub fn id(&self) -> HostId {
        self.id
    }

    /// Name of the network namespace (for `ip netns exec`, `ip -n`).
    pub fn ns_name(&self) -> &str {
        &self.ns
    }

    /// The host's interfaces, by link.
    pub fn links(&self) -> &[HostLink] {
        &self.links
    }

    fn link(&self, link: usize) -> &HostLink {
        self.links.get(link).unwrap_or_else(|| {
            panic!(
                "{} has no link {link} (it has {})",
                self.id,
                self.links.len()
            )
        })
    }

    /// IPv4 address on `link`. Panics if the host has no such link or no address there.
    pub fn addr(&self, link: usize) -> Ipv4Addr {
        self.link(link)
            .v4
            .unwrap_or_else(|| panic!("{} has no IPv4 address on link {link}", self.id))
    }

    /// IPv6 address on `link`. Panics if the lab was built without IPv6 or the host has none.
    pub fn addr6(&self, link: usize) -> Ipv6Addr {
        self.link(link)
            .v6
            .unwrap_or_else(|| panic!("{} has no IPv6 address on link {link}", self.id))
    }

    /// MAC of the interface on `link`.
    pub fn mac(&self, link: usize) -> MacAddr {
        self.link(link).mac
    }

    /// Interface name on `link` (`eth0`, ...).
    pub fn ifname(&self, link: usize) -> &str {
        &self.link(link).ifname
    }

    /// `ip netns exec NS program`: a Command that runs `program` inside this host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(cmd::ip());
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    fn command_args<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Command> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Invalid("empty command line".into()))?;
        let mut c = self.command(program);
        c.args(rest);
        Ok(c)
    }

    /// Runs `args` inside the host and returns its output whatever the exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        cmd::output(self.command_args(args)?, None)
    }

    /// Runs `args` inside the host; a non-zero exit is an error (with stderr); returns stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        cmd::checked(self.command_args(args)?, None)
    }

    /// Starts `args` inside the host in the background, stdout and stderr to a log file in the
    /// lab directory (see `Proc::log`). The process is killed when the `Proc` or the lab drops.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Proc> {
        let mut c = self.command_args(args)?;
        let n = self.shared.log_counter.fetch_add(1, Ordering::Relaxed);
        let prog = args
            .first()
            .map(|p| {
                let p = p.as_ref().to_string_lossy();
                p.rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect::<String>()
            })
            .unwrap_or_default();
        let path = self.shared.dir.join(format!("{}-{prog}-{n}.log", self.id));
        let out = File::create(&path)
            .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| LabError::io("duplicating the log fd", e))?;
        c.stdin(Stdio::null()).stdout(out).stderr(err);
        self.spawn_tracked(c, Some(path))
    }

    /// Starts a Command (usually from `command()`, set up as the test likes) and tracks it like
    /// `spawn` does.
    pub fn spawn_command(&self, cmd: Command) -> Result<Proc> {
        self.spawn_tracked(cmd, None)
    }

    fn spawn_tracked(&self, mut c: Command, log: Option<PathBuf>) -> Result<Proc> {
        // Own process group: the kill on drop reaches whatever the process forks.
        c.process_group(0);
        let line = cmd::describe(&c);
        let child = c
            .spawn()
            .map_err(|e| LabError::io(format!("spawning `{line}`"), e))?;
        Ok(self.shared.procs.add(child, log))
    }

    /// Runs `f` on a thread inside this host's namespace (sockets it opens belong to the host).
    pub fn run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        netns::run_in(&self.ns, f)
    }

    /// Starts a background thread inside this host's namespace, e.g. a tokio runtime running a
    /// daemon in-process. The test must make it finish (the lab cannot kill a thread).
    pub fn thread_in<F, R>(&self, f: F) -> Result<std::thread::JoinHandle<Result<R>>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        netns::thread_in(&self.ns, f)
    }

    /// True if `to` answers a ping within 3 s (one probe every 200 ms until the first reply),
    /// so a busy machine does not turn a working path into a failure.
    pub fn ping(&self, to: impl Into<IpAddr>) -> bool {
        let to = to.into().to_string();
        self.exec(&["ping", "-n", "-q", "-c", "1", "-i", "0.2", "-w", "3", &to])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// True if one ping to `to` gets no answer within 500 ms (for asserting a cut path; a lab
    /// round trip takes well under a millisecond). Also true if there is no route at all.
    pub fn ping_fails(&self, to: impl Into<IpAddr>) -> bool {
        match self.ping_stats(to, 1, 0.2, 0.5) {
            Ok((_, rx)) => rx == 0,
            // No summary: "Network is unreachable" and the like; no reply either way.
            Err(_) => true,
        }
    }

    /// Sends `count` pings `interval` seconds apart and waits at most `wait` s for each reply;
    /// returns (transmitted, received).
    pub fn ping_stats(
        &self,
        to: impl Into<IpAddr>,
        count: u32,
        interval: f64,
        wait: f64,
    ) -> Result<(u32, u32)> {
        let to = to.into().to_string();
        let (count, interval, wait) = (count.to_string(), format!("{interval}"), format!("{wait}"));
        let out = self.exec(&[
            "ping", "-n", "-q", "-c", &count, "-i", &interval, "-W", &wait, &to,
        ])?;
        parse_ping_summary(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| LabError::Parse {
            what: "ping summary",
            detail: format!(
                "stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// Path of the host's own resolv.conf: `ip netns exec` bind-mounts it over /etc/resolv.conf
    /// for every process of the host, so a DHCP client script or a test never rewrites the
    /// machine's real one.
    pub fn resolv_conf_path(&self) -> PathBuf {
        PathBuf::from(netns::ETC_NETNS_DIR)
            .join(&self.ns)
            .join("resolv.conf")
    }

    /// Replaces the host's resolv.conf (e.g. `"nameserver 198.18.0.11\n"`); seen by processes
    /// started afterwards.
    pub fn set_resolv_conf(&self, content: &str) -> Result<()> {
        let p = self.resolv_conf_path();
        std::fs::write(&p, content).map_err(|e| LabError::io(format!("writing {}", p.display()), e))
    }

    /// The host's neighbour (ARP and NDP) table.
    pub fn neighbours(&self) -> Result<Vec<Neighbour>> {
        let json = cmd::ip_ok(&["-n", &self.ns, "-j", "neigh", "show"])?;
        parse_neigh_json(&json)
    }

    /// Waits up to `timeout` until the neighbour table maps `ip` to `mac` (e.g. after a
    /// gratuitous ARP or unsolicited NA moved a VIP); returns whether it did.
    pub fn wait_for_neighbour(
        &self,
        ip: impl Into<IpAddr>,
        mac: MacAddr,
        timeout: std::time::Duration,
    ) -> bool {
        let ip = ip.into();
        crate::poll_until(timeout, std::time::Duration::from_millis(20), || {
            self.neighbours()
                .map(|n| {
                    n.iter()
                        .any(|e| e.ip == ip && e.mac == Some(mac) && e.is_resolved())
                })
                .unwrap_or(false)
        })
    }

    /// Every address configured in the host (`ip -j addr`), with prefix length and interface.
    pub fn addresses(&self) -> Result<Vec<(IpAddr, u8, String)>> {
        let json = cmd::ip_ok(&["-n", &self.ns, "-j", "addr", "show"])?;
        parse_addr_json(&json)
    }

    /// True if `ip` is configured on any interface of the host (e.g. "who holds the VIP").
    pub fn has_addr(&self, ip: impl Into<IpAddr>) -> Result<bool> {
        let ip = ip.into();
        Ok(self.addresses()?.iter().any(|(a, _, _)| *a == ip))
    }

    /// Sets the host-side interface of `link` administratively down (`ip link set ethL down`).
    pub fn link_down(&self, link: usize) -> Result<()> {
        cmd::ip_ok(&["-n", &self.ns, "link", "set", self.ifname(link), "down"]).map(drop)
    }

    /// Brings the host-side interface of `link` back up (addresses are kept while down).
    pub fn link_up(&self, link: usize) -> Result<()> {
        cmd::ip_ok(&["-n", &self.ns, "link", "set", self.ifname(link), "up"]).map(drop)
    }

    /// Cable pull: sets the switch-side port of `link` down, so the host sees carrier loss
    /// (NO-CARRIER) while its interface stays administratively up.
    pub fn cable_cut(&self, link: usize) -> Result<()> {
        cmd::ip_ok(&[
            "-n",
            &self.switch_ns,
            "link",
            "set",
            &self.link(link).port,
            "down",
        ])
        .map(drop)
    }

    /// Plugs the cable back in (switch-side port up).
    pub fn cable_restore(&self, link: usize) -> Result<()> {
        cmd::ip_ok(&[
            "-n",
            &self.switch_ns,
            "link",
            "set",
            &self.link(link).port,
            "up",
        ])
        .map(drop)
    }
}

/// Parses `ip -j addr show` into (address, prefix length, interface).
pub(crate) fn parse_addr_json(json: &str) -> Result<Vec<(IpAddr, u8, String)>> {
    let bad = |detail: String| LabError::Parse {
        what: "ip -j addr",
        detail,
    };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let links = value
        .as_array()
        .ok_or_else(|| bad("not a JSON array".into()))?;
    let mut out = Vec::new();
    for link in links {
        let dev = link
            .get("ifname")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let Some(infos) = link.get("addr_info").and_then(|v| v.as_array()) else {
            continue;
        };
        for info in infos {
            let Some(local) = info.get("local").and_then(|v| v.as_str()) else {
                continue;
            };
            let ip: IpAddr = local
                .parse()
                .map_err(|_| bad(format!("bad address {local:?}")))?;
            let prefix = info.get("prefixlen").and_then(|v| v.as_u64()).unwrap_or(0);
            out.push((ip, u8::try_from(prefix).unwrap_or(u8::MAX), dev.to_owned()));
        }
    }
    Ok(out)
}

/// (transmitted, received) from ping's summary line.
pub(crate) fn parse_ping_summary(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = line.split(',');
    let tx = parts.next()?.split_whitespace().next()?.parse().ok()?;
    let rx = parts.next()?.split_whitespace().next()?.parse().ok()?;
    Some((tx, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary() {
        let out = "PING 198.18.0.12 (198.18.0.12) 56(84) bytes of data.\n\n--- 198.18.0.12 ping statistics ---\n\
                   200 packets transmitted, 143 received, 28.5% packet loss, time 1040ms\n";
        assert_eq!(parse_ping_summary(out), Some((200, 143)));
        let out = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2030ms\n";
        assert_eq!(parse_ping_summary(out), Some((3, 0)));
        assert_eq!(
            parse_ping_summary("connect: Network is unreachable\n"),
            None
        );
    }

    #[test]
    fn addr_json() {
        let json = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.0.11","prefixlen":24},
            {"family":"inet6","local":"fd00:198:18::11","prefixlen":64}]},{"ifindex":3,"ifname":"eth1"}]"#;
        let a = parse_addr_json(json).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(
            a[1],
            ("198.18.0.11".parse().unwrap(), 24, "eth0".to_string())
        );
        assert_eq!(a[2].0, "fd00:198:18::11".parse::<IpAddr>().unwrap());
        assert!(parse_addr_json("nope").is_err());
        assert!(parse_addr_json(r#"[{"ifname":"x","addr_info":[{"local":"1.2.3"}]}]"#).is_err());
    }

    #[test]
    fn host_id_from_usize_is_node() {
        assert_eq!(HostId::from(3), HostId::Node(3));
        assert_eq!(HostId::Client(2).to_string(), "c2");
    }
}
