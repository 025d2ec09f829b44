//! `hastack bench membership`: failure detection and false view changes of hastack's membership
//! against Corosync 3 (knet), side by side in the same three-node namespace lab.
//!
//! For every stack (hastack `cluster` daemons; corosync at its defaults; corosync at the lowest
//! token found stable at 5 % loss) the same sequence runs on one lab:
//! 1. start one daemon per node and wait until all three hold one three-member view;
//! 2. `runs` times: SIGKILL one node's daemon (rotating), and measure from the kill to the moment
//!    the last survivor committed a view without it (each daemon's own log timestamps: hastack's
//!    "view installed", corosync's "A new membership (..) was formed"); restart it, wait for rejoin;
//! 3. drop 5 %, then 10 % of the cluster's UDP packets (nftables, every pair, both ways) for
//!    `loss_secs` each, and count the views committed meanwhile (a correct detector commits none);
//! 4. load every core with busy threads at normal priority for `hog_secs`, count views again.
//!
//! The token search runs corosync with `token_coefficient: 0` (so the token is what the config
//! says) at each candidate token in descending order under 5 % loss, and stops at the first token
//! that showed a view change: the lowest stable token is the one before it.
//!
//! Everything is bounded (timeouts on every wait, fixed windows) and the lab removes its
//! namespaces and kills its processes when dropped, also on error.

use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hastack_lab::{Lab, Proc};
use nix::sys::signal::Signal;

/// The cluster UDP port of both stacks (hastack's default, corosync's default knet port).
const PORT: u16 = 5405;
/// Nodes in the lab.
const NODES: usize = 3;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kill -9 runs per stack.
    pub runs: usize,
    /// Length of each loss window (5 % and 10 %).
    pub loss_secs: u64,
    /// Length of the CPU hog window.
    pub hog_secs: u64,
    /// Run corosync too.
    pub corosync: bool,
    /// Run hastack (off: corosync only, e.g. to repeat the token search).
    pub hastack: bool,
    /// Candidate tokens (ms) for the lowest-stable-token search, tried in descending order.
    pub tokens: Vec<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            runs: 10,
            loss_secs: 20,
            hog_secs: 20,
            corosync: true,
            hastack: true,
            tokens: vec![3000, 2000, 1000, 500, 300, 200, 100],
        }
    }
}

/// Which membership stack runs in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `hastack cluster` on every node with the default timings.
    Hastack,
    /// corosync 3 with knet; `None` = its defaults (token 3000 + token_coefficient 650 for 3
    /// nodes), `Some(t)` = token `t` ms with token_coefficient 0.
    Corosync(Option<u32>),
}

impl Stack {
    /// A label for the report.
    pub fn label(&self) -> String {
        match self {
            Stack::Hastack => "hastack (defaults)".into(),
            Stack::Corosync(None) => "corosync defaults (token 3000, coefficient 650)".into(),
            Stack::Corosync(Some(t)) => format!("corosync token {t} (coefficient 0)"),
        }
    }
}

/// The figures of one stack.
#[derive(Debug, Clone)]
pub struct StackResult {
    /// Which stack.
    pub stack: Stack,
    /// Kill → last survivor committed the view without the victim, per run.
    pub detection: Vec<Duration>,
    /// Runs in which no such view appeared within the timeout.
    pub detection_timeouts: usize,
    /// Kill → last survivor had that view with quorum (hastack: the resource engine got the view
    /// flagged quorate, i.e. the survivors' vote leases in it came back), per run; empty for corosync.
    pub quorate: Vec<Duration>,
    /// Views committed during the 5 % loss window (None: not measured).
    pub loss5: Option<Window>,
    /// Views committed during the 10 % loss window.
    pub loss10: Option<Window>,
    /// Views committed during the CPU hog window.
    pub cpu: Option<Window>,
}

/// What one fault window produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// Distinct views (ring ids) committed by any node.
    pub views: usize,
    /// Of those, views whose member list differs from the committing node's previous view
    /// (a node declared failed or readmitted); the rest re-formed the same members (corosync
    /// re-forms its ring after a lost token).
    pub member_changes: usize,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.views, self.member_changes)
    }
}

/// One step of the token search.
#[derive(Debug, Clone)]
pub struct SearchStep {
    /// Token tried (ms).
    pub token: u32,
    /// Views committed under 5 % loss (None: the cluster did not form).
    pub views: Option<Window>,
}

/// Everything measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Options used.
    pub options: Options,
    /// One entry per stack.
    pub stacks: Vec<StackResult>,
    /// The token search, in the order tried.
    pub search: Vec<SearchStep>,
    /// The lowest token with zero member changes at 5 % loss.
    pub lowest_stable: Option<u32>,
    /// Wall time of the whole benchmark.
    pub took: Duration,
}

/// A committed view as a daemon logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoggedView {
    at: SystemTime,
    id: String,
    /// Members if the log says (hastack always; corosync from the following QUORUM line).
    members: Option<Vec<u32>>,
    /// Nodes that left (corosync's "Members left:").
    left: Vec<u32>,
    /// Whether the member list changed, when the log says so (corosync names joined/left nodes;
    /// a ring re-formed with the same members names none).
    changed: Option<bool>,
}

/// The lab plus whatever stack runs in it.
struct Bench {
    lab: Lab,
    binary: PathBuf,
    stack: Stack,
    procs: Vec<Option<Proc>>,
    /// Every log file of every daemon life, per node (index 0 unused).
    logs: Vec<Vec<PathBuf>>,
    starts: usize,
}

/// Runs the whole benchmark and returns the figures (progress on stderr).
pub fn run(binary: &Path, opts: &Options) -> anyhow::Result<Report> {
    if !hastack_lab::require_lab().context("lab prerequisites")? {
        bail!("the benchmark lab needs root and ip, nft and ping");
    }
    let t0 = Instant::now();
    let lab = Lab::builder().nodes(NODES).links(1).ipv6(false).build().context("building the lab")?;
    let key = lab.dir().join("authkey");
    ha_membership::auth::keygen(&key).context("writing the hastack key")?;
    write_corosync_key(&lab.dir().join("corosync-authkey"))?;
    let mut b = Bench {
        lab,
        binary: binary.to_path_buf(),
        stack: Stack::Hastack,
        procs: (0..=NODES).map(|_| None).collect(),
        logs: vec![Vec::new(); NODES + 1],
        starts: 0,
    };
    let mut report =
        Report { options: opts.clone(), stacks: Vec::new(), search: Vec::new(), lowest_stable: None, took: Duration::ZERO };
    if opts.hastack {
        report.stacks.push(b.measure(Stack::Hastack, opts)?);
    }
    if opts.corosync {
        if !hastack_lab::require_tools(&["corosync"]).context("corosync")? {
            bail!("corosync is not installed (Debian package corosync); or pass --no-corosync");
        }
        report.stacks.push(b.measure(Stack::Corosync(None), opts)?);
        let mut tokens = opts.tokens.clone();
        tokens.sort_unstable_by(|a, b| b.cmp(a));
        tokens.dedup();
        for t in tokens {
            let views = b.search_step(t, opts.loss_secs)?;
            eprintln!("token search: token {t} ms: {}", views.map_or("did not form".into(), |v| format!("{v} view(s) under 5% loss")));
            report.search.push(SearchStep { token: t, views });
            // Stable = no member change (a node falsely declared failed); corosync re-forms its
            // ring with the same members after a lost token, counted but not disqualifying.
            if views.is_none_or(|v| v.member_changes > 0) {
                break;
            }
            report.lowest_stable = Some(t);
        }
        if let Some(t) = report.lowest_stable {
            report.stacks.push(b.measure(Stack::Corosync(Some(t)), opts)?);
        }
    }
    report.took = t0.elapsed();
    Ok(report)
}

fn write_corosync_key(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 256];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)).context("reading /dev/urandom")?;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    std::io::Write::write_all(&mut f, &key)?;
    Ok(())
}

impl Bench {
    fn addr(&self, i: usize) -> Ipv4Addr {
        self.lab.node(i).addr(0)
    }

    fn hastack_config(&self) -> String {
        let mut s = format!(
            "[logging]\nformat = \"text\"\n\n[cluster]\nname = \"membership-bench\"\nauthkey = \"{}\"\nport = {PORT}\n\n",
            self.lab.dir().join("authkey").display()
        );
        for i in 1..=NODES {
            s += &format!("[[cluster.node]]\nid = {i}\nname = \"lb{i}\"\nlinks = [\"{}/24\"]\n\n", self.addr(i));
        }
        s
    }

    fn corosync_dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("corosync-n{i}"))
    }

    fn corosync_config(&self, i: usize, token: Option<u32>) -> String {
        let dir = self.corosync_dir(i);
        let mut totem = String::new();
        if let Some(t) = token {
            totem += &format!("  token: {t}\n  token_coefficient: 0\n");
        }
        let mut nodes = String::new();
        for j in 1..=NODES {
            nodes += &format!("  node {{\n    ring0_addr: {}\n    nodeid: {j}\n    name: n{j}\n  }}\n", self.addr(j));
        }
        format!(
            "totem {{\n  version: 2\n  cluster_name: membership-bench\n  transport: knet\n  crypto_cipher: aes256\n  crypto_hash: sha256\n  keyfile: {key}\n{totem}}}\n\
             nodelist {{\n{nodes}}}\n\
             quorum {{\n  provider: corosync_votequorum\n}}\n\
             logging {{\n  to_logfile: yes\n  logfile: {log}\n  to_syslog: no\n  to_stderr: no\n  timestamp: hires\n}}\n\
             system {{\n  state_dir: {state}\n}}\n",
            key = self.lab.dir().join("corosync-authkey").display(),
            log = dir.join("corosync.log").display(),
            state = dir.join("state").display(),
        )
    }

    /// Starts the daemon of the current stack on node i.
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        self.starts += 1;
        let p = match self.stack {
            Stack::Hastack => {
                let config = self.lab.dir().join("membership-bench.toml");
                if !config.exists() {
                    std::fs::write(&config, self.hastack_config())?;
                }
                let p = self.lab.node(i).spawn(&[
                    self.binary.as_os_str(),
                    "cluster".as_ref(),
                    "--config".as_ref(),
                    config.as_os_str(),
                    "--node".as_ref(),
                    format!("lb{i}").as_ref(),
                    "--socket".as_ref(),
                    self.lab.dir().join(format!("bench-lb{i}.sock")).as_os_str(),
                    "--state-dir".as_ref(),
                    self.lab.dir().join(format!("bench-lb{i}")).as_os_str(),
                ])?;
                if let Some(l) = p.log_path() {
                    self.logs[i].push(l.to_path_buf());
                }
                p
            }
            Stack::Corosync(token) => {
                let dir = self.corosync_dir(i);
                for sub in ["run", "state"] {
                    std::fs::create_dir_all(dir.join(sub))?;
                }
                let conf = dir.join("corosync.conf");
                std::fs::write(&conf, self.corosync_config(i, token))?;
                let log = dir.join("corosync.log");
                if !self.logs[i].contains(&log) {
                    self.logs[i].push(log);
                }
                // corosync locks the fixed path /var/run/corosync.pid: give each node its own /run
                // (`ip netns exec` already runs it in a private mount namespace).
                let script = format!(
                    "mount --bind '{}' /run && exec corosync -f -c '{}'",
                    dir.join("run").display(),
                    conf.display()
                );
                self.lab.node(i).spawn(&["sh", "-c", &script])?
            }
        };
        self.procs[i] = Some(p);
        Ok(())
    }

    /// SIGKILLs and reaps node i's daemon.
    fn kill(&mut self, i: usize) {
        if let Some(p) = self.procs[i].take() {
            p.kill();
        }
    }

    fn stop_all(&mut self) {
        for i in 1..=NODES {
            self.kill(i);
        }
        // The kernel releases the UDP port with the process; give stragglers a moment.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Every view node i logged (all lives), in log order.
    fn views(&self, i: usize) -> Vec<LoggedView> {
        let mut out = Vec::new();
        for path in &self.logs[i] {
            let Ok(text) = std::fs::read_to_string(path) else { continue };
            match self.stack {
                Stack::Hastack => out.extend(text.lines().filter_map(parse_hastack_line)),
                Stack::Corosync(_) => out.extend(parse_corosync_log(&text, now_year())),
            }
        }
        out
    }

    /// Whether all nodes' latest views are the same full view.
    fn formed(&self) -> bool {
        let last: Vec<Option<LoggedView>> = (1..=NODES).map(|i| self.views(i).pop()).collect();
        let full: Vec<u32> = (1..=NODES as u32).collect();
        last.iter().all(|v| v.as_ref().is_some_and(|v| v.members.as_ref() == Some(&full)))
            && last.windows(2).all(|w| w[0].as_ref().map(|v| &v.id) == w[1].as_ref().map(|v| &v.id))
    }

    fn wait_formed(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.formed() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.formed()
    }

    fn start_all(&mut self, stack: Stack) -> anyhow::Result<bool> {
        self.stop_all();
        self.stack = stack;
        if let Stack::Corosync(_) = stack {
            for i in 1..=NODES {
                // A fresh log per stack run: views of an earlier run must not count.
                let _ = std::fs::remove_file(self.corosync_dir(i).join("corosync.log"));
            }
        }
        self.logs = vec![Vec::new(); NODES + 1];
        for i in 1..=NODES {
            self.start(i)?;
        }
        let ok = self.wait_formed(Duration::from_secs(30));
        // Let link latency probes and start-up transients pass before measuring.
        std::thread::sleep(Duration::from_secs(1));
        Ok(ok)
    }

    /// Distinct views committed by any node in [from, to] (each printed on stderr).
    fn views_between(&self, from: SystemTime, to: SystemTime) -> Window {
        let mut ids: Vec<String> = Vec::new();
        let mut changed: Vec<String> = Vec::new();
        for i in 1..=NODES {
            let all = self.views(i);
            for (k, v) in all.iter().enumerate() {
                if v.at < from || v.at > to {
                    continue;
                }
                let prev = k.checked_sub(1).and_then(|p| all[p].members.clone());
                let change = v.changed.unwrap_or(prev.is_none() || v.members != prev);
                let ms = v.at.duration_since(from).unwrap_or_default().as_millis();
                eprintln!("    node {i}: view {} at +{ms} ms, members {:?} (before {:?})", v.id, v.members, prev);
                ids.push(v.id.clone());
                if change {
                    changed.push(v.id.clone());
                }
            }
        }
        for l in [&mut ids, &mut changed] {
            l.sort();
            l.dedup();
        }
        Window { views: ids.len(), member_changes: changed.len() }
    }

    /// Kill node `victim`; the time until every survivor logged a view without it, and (hastack)
    /// until every survivor's resource engine got that view flagged quorate.
    fn detect_once(&mut self, victim: usize, timeout: Duration) -> anyhow::Result<(Option<Duration>, Option<Duration>)> {
        let Some(p) = self.procs[victim].as_ref() else { bail!("node {victim} has no daemon") };
        let killed = SystemTime::now();
        p.signal(Signal::SIGKILL)?;
        let deadline = Instant::now() + timeout;
        let v = victim as u32;
        let result = loop {
            let mut worst = Some(Duration::ZERO);
            for i in (1..=NODES).filter(|i| *i != victim) {
                let seen = self.views(i).into_iter().find(|lv| {
                    lv.at >= killed && (lv.left.contains(&v) || lv.members.as_ref().is_some_and(|m| !m.contains(&v)))
                });
                worst = match (worst, seen) {
                    (Some(w), Some(lv)) => Some(w.max(lv.at.duration_since(killed).unwrap_or_default())),
                    _ => None,
                };
            }
            if worst.is_some() || Instant::now() >= deadline {
                break worst;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let quorate = match (self.stack, result) {
            (Stack::Hastack, Some(_)) => loop {
                let mut worst = Some(Duration::ZERO);
                for i in (1..=NODES).filter(|i| *i != victim) {
                    let seen = self.quorate_views(i).into_iter().find(|(at, m)| *at >= killed && !m.contains(&v));
                    worst = match (worst, seen) {
                        (Some(w), Some((at, _))) => Some(w.max(at.duration_since(killed).unwrap_or_default())),
                        _ => None,
                    };
                }
                if worst.is_some() || Instant::now() >= deadline {
                    break worst;
                }
                std::thread::sleep(Duration::from_millis(20));
            },
            _ => None,
        };
        self.kill(victim);
        Ok((result, quorate))
    }

    /// hastack: every view node i's resource engine received flagged quorate, (when, members).
    fn quorate_views(&self, i: usize) -> Vec<(SystemTime, Vec<u32>)> {
        let mut out = Vec::new();
        for path in &self.logs[i] {
            let Ok(text) = std::fs::read_to_string(path) else { continue };
            out.extend(text.lines().filter_map(parse_hastack_quorate_line));
        }
        out
    }

    /// Views committed while `pct` % of the cluster packets between every pair are dropped.
    fn loss_window(&mut self, pct: u8, secs: u64) -> anyhow::Result<Window> {
        let from = SystemTime::now();
        for (a, b) in [(1, 2), (1, 3), (2, 3)] {
            self.lab.loss_udp(a, b, pct, PORT)?;
        }
        std::thread::sleep(Duration::from_secs(secs));
        self.lab.heal()?;
        // A change caused during the window may commit just after it.
        std::thread::sleep(Duration::from_secs(2));
        Ok(self.views_between(from, SystemTime::now()))
    }

    /// Views committed while busy threads (one per core, plus one) load the machine.
    fn hog_window(&mut self, secs: u64) -> Window {
        let from = SystemTime::now();
        let end = Instant::now() + Duration::from_secs(secs);
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
        std::thread::sleep(Duration::from_secs(2));
        self.views_between(from, SystemTime::now())
    }

    fn measure(&mut self, stack: Stack, opts: &Options) -> anyhow::Result<StackResult> {
        eprintln!("== {}", stack.label());
        let mut r =
            StackResult { stack, detection: Vec::new(), detection_timeouts: 0, quorate: Vec::new(), loss5: None, loss10: None, cpu: None };
        if !self.start_all(stack)? {
            bail!("{}: no three-node view within 30 s", stack.label());
        }
        let timeout = match stack {
            Stack::Hastack => Duration::from_secs(5),
            Stack::Corosync(_) => Duration::from_secs(30),
        };
        for run in 0..opts.runs {
            // Rotate the victim: the coordinator (lowest id) and the others fail differently.
            let victim = NODES - run % NODES;
            match self.detect_once(victim, timeout)? {
                (Some(d), q) => {
                    let qs = q.map(|q| format!(", quorate after {:.1} ms", q.as_secs_f64() * 1e3)).unwrap_or_default();
                    eprintln!("  run {}: kill -9 node {victim}: new view after {:.1} ms{qs}", run + 1, d.as_secs_f64() * 1e3);
                    r.detection.push(d);
                    r.quorate.extend(q);
                }
                (None, _) => {
                    eprintln!("  run {}: kill -9 node {victim}: no new view within {timeout:?}", run + 1);
                    r.detection_timeouts += 1;
                }
            }
            self.start(victim)?;
            if !self.wait_formed(Duration::from_secs(30)) {
                bail!("{}: node {victim} did not rejoin within 30 s", stack.label());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        for (pct, slot) in [(5u8, &mut r.loss5), (10u8, &mut r.loss10)] {
            let n = self.loss_window(pct, opts.loss_secs)?;
            eprintln!("  {pct}% loss for {} s: {n} view(s)", opts.loss_secs);
            *slot = Some(n);
            // A false failure leaves a node outside or rejoining: start the next window from a full view.
            if !self.wait_formed(Duration::from_secs(30)) {
                bail!("{}: no full view after {pct}% loss", stack.label());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let n = self.hog_window(opts.hog_secs);
        eprintln!("  CPU hog for {} s: {n} view(s)", opts.hog_secs);
        r.cpu = Some(n);
        self.stop_all();
        Ok(r)
    }

    fn search_step(&mut self, token: u32, secs: u64) -> anyhow::Result<Option<Window>> {
        if !self.start_all(Stack::Corosync(Some(token)))? {
            self.stop_all();
            return Ok(None);
        }
        let n = self.loss_window(5, secs)?;
        self.stop_all();
        Ok(Some(n))
    }
}

/// Min, median, max.
fn stats(d: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut d = d.to_vec();
    if d.is_empty() {
        return None;
    }
    d.sort();
    Some((d[0], d[d.len() / 2], d[d.len() - 1]))
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms >= 1000.0 { format!("{ms:.0}") } else { format!("{ms:.1}") }
}

/// The report as Markdown: one row per stack, ratios against hastack, the token search.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let o = &r.options;
    let _ = writeln!(
        s,
        "kill -9 runs per stack: {}; loss windows: {} s each (UDP port {PORT}, every pair, both ways); CPU hog: {} s, {} busy threads; took {:.0} s\n",
        o.runs,
        o.loss_secs,
        o.hog_secs,
        std::thread::available_parallelism().map(|n| n.get() + 1).unwrap_or(3),
        r.took.as_secs_f64()
    );
    let _ = writeln!(s, "Views are distinct view (ring) ids committed during the window; in brackets those whose members differed from the node's previous view.\n");
    let _ = writeln!(s, "| stack | detection min / median / max (ms) | median vs hastack | kill → quorate view min / median / max (ms) | views at 5% loss | views at 10% loss | views under CPU hog |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let base = r.stacks.iter().find(|x| x.stack == Stack::Hastack).and_then(|x| stats(&x.detection)).map(|s| s.1);
    let opt = |v: Option<Window>| v.map_or("-".into(), |v| v.to_string());
    for x in &r.stacks {
        let det = match stats(&x.detection) {
            Some((a, m, z)) => format!("{} / {} / {}", ms(a), ms(m), ms(z)),
            None => "-".into(),
        };
        let det = if x.detection_timeouts > 0 { format!("{det} ({} timed out)", x.detection_timeouts) } else { det };
        let ratio = match (stats(&x.detection), base) {
            (Some((_, m, _)), Some(b)) if !b.is_zero() => format!("{:.0}×", m.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        let quorate = match stats(&x.quorate) {
            Some((a, m, z)) => format!("{} / {} / {}", ms(a), ms(m), ms(z)),
            None => "-".into(),
        };
        let _ = writeln!(s, "| {} | {det} | {ratio} | {quorate} | {} | {} | {} |", x.stack.label(), opt(x.loss5), opt(x.loss10), opt(x.cpu));
    }
    if !r.search.is_empty() {
        let _ = writeln!(s, "\nCorosync token search (token_coefficient 0, 5% loss for {} s each, descending, stop at the first member change):\n", o.loss_secs);
        let _ = writeln!(s, "| token (ms) | views at 5% loss |");
        let _ = writeln!(s, "|---|---|");
        for st in &r.search {
            let _ = writeln!(s, "| {} | {} |", st.token, st.views.map_or("did not form".into(), |v| v.to_string()));
        }
        let _ = writeln!(
            s,
            "\nLowest stable token: {}",
            r.lowest_stable.map_or("none of the candidates".into(), |t| format!("{t} ms"))
        );
    }
    s
}

// ---- log parsing -------------------------------------------------------------------------------

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn now_year() -> i64 {
    let days = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64 / 86400).unwrap_or(0);
    // Inverse of days_from_civil, year only.
    let z = days + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

fn at(days: i64, h: u32, mi: u32, s: u32, nanos: u32) -> Option<SystemTime> {
    let secs = days * 86400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s);
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `HH:MM:SS[.frac]` → (h, m, s, nanos).
fn parse_clock(t: &str) -> Option<(u32, u32, u32, u32)> {
    let (hms, frac) = t.split_once('.').unwrap_or((t, ""));
    let mut it = hms.split(':');
    let h = it.next()?.parse().ok()?;
    let m = it.next()?.parse().ok()?;
    let s = it.next()?.parse().ok()?;
    if it.next().is_some() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if frac.is_empty() { 0 } else { frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32) };
    Some((h, m, s, nanos))
}

/// The leading `2026-11-25T15:40:00.123456Z` of a hastack text log line.
fn hastack_timestamp(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, clock) = ts.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da) = (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    let (h, mi, s, ns) = parse_clock(clock)?;
    at(days_from_civil(y, mo, da), h, mi, s, ns)
}

/// `2026-11-25T15:40:00.125Z  INFO hastack::cluster::channel: view installed epoch=5 members=[NodeId(1), NodeId(2)] quorate=true`
/// (the view as the resource engine receives it, after its quorum decision): when and members.
fn parse_hastack_quorate_line(line: &str) -> Option<(SystemTime, Vec<u32>)> {
    if !line.contains("view installed") || !line.contains(" epoch=") || !line.contains("quorate=true") {
        return None;
    }
    let at = hastack_timestamp(line)?;
    let list = line.split_once("members=[")?.1.split_once(']')?.0;
    // The resource engine's node ids print as `NodeId(1)`.
    let id = |x: &str| x.trim().trim_start_matches("NodeId(").trim_end_matches(')').parse().ok();
    let members = list.split(',').filter(|x| !x.trim().is_empty()).map(id).collect::<Option<Vec<u32>>>()?;
    Some((at, members))
}

/// `2026-11-25T15:40:00.123456Z  INFO ha_membership::engine: view installed view=1.5 members=[1, 2]`
fn parse_hastack_line(line: &str) -> Option<LoggedView> {
    if !line.contains("view installed") {
        return None;
    }
    let at = hastack_timestamp(line)?;
    let id = line.split_once(" view=")?.1.split_whitespace().next()?.to_string();
    let list = line.split_once("members=[")?.1.split_once(']')?.0;
    let members = list.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| x.parse().ok()).collect::<Option<Vec<u32>>>()?;
    Some(LoggedView { at, id, members: Some(members), left: Vec::new(), changed: None })
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `Nov 25 15:40:09.399 [19529] vm corosync notice  [TOTEM ] A new membership (1.d) was formed. Members left: 3`
/// followed by `... [QUORUM] Members[2]: 1 2`.
fn parse_corosync_log(text: &str, year: i64) -> Vec<LoggedView> {
    let mut out: Vec<LoggedView> = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(mon), Some(day), Some(clock)) = (w.next(), w.next(), w.next()) else { continue };
        let Some(m) = MONTHS.iter().position(|x| *x == mon) else { continue };
        let (Ok(day), Some((h, mi, s, ns))) = (day.parse::<u32>(), parse_clock(clock)) else { continue };
        let Some(at) = at(days_from_civil(year, m as u32 + 1, day), h, mi, s, ns) else { continue };
        if let Some(rest) = line.split_once("A new membership (").map(|x| x.1) {
            let Some((id, tail)) = rest.split_once(')') else { continue };
            // "Members joined: 1 2 left: 3", either part optional.
            let (mut joined, mut left, mut into) = (Vec::new(), Vec::new(), 0u8);
            for w in tail.split_once("Members").map_or("", |x| x.1).split_whitespace() {
                match w {
                    "joined:" => into = 1,
                    "left:" => into = 2,
                    n => match (into, n.parse::<u32>()) {
                        (1, Ok(n)) => joined.push(n),
                        (2, Ok(n)) => left.push(n),
                        _ => {}
                    },
                }
            }
            let changed = Some(!joined.is_empty() || !left.is_empty());
            out.push(LoggedView { at, id: id.to_string(), members: None, left, changed });
        } else if let Some(rest) = line.split_once("[QUORUM] Members[").map(|x| x.1)
            && let Some((_, list)) = rest.split_once("]:")
            && let Some(last) = out.last_mut()
            && last.members.is_none()
        {
            last.members = Some(list.split_whitespace().filter_map(|n| n.parse().ok()).collect());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hastack_quorate_lines_parse() {
        let l = "2026-11-25T15:40:00.125000Z  INFO hastack::cluster::channel: view installed epoch=5 members=[NodeId(1), NodeId(2)] quorate=true";
        let (_, m) = parse_hastack_quorate_line(l).unwrap();
        assert_eq!(m, vec![1, 2]);
        assert!(parse_hastack_quorate_line(&l.replace("quorate=true", "quorate=false")).is_none());
        assert!(parse_hastack_line(l).is_none(), "the resource engine's line is not a membership view");
    }

    #[test]
    fn hastack_log_lines_parse() {
        let l = "2026-11-25T15:40:00.123456Z  INFO ha_membership::engine: view installed view=1.5 members=[1, 2]";
        let v = parse_hastack_line(l).unwrap();
        assert_eq!(v.id, "1.5");
        assert_eq!(v.members, Some(vec![1, 2]));
        let secs = v.at.duration_since(UNIX_EPOCH).unwrap();
        // 2026-11-25 is day 20782 since the epoch.
        assert_eq!(secs, Duration::new(20782 * 86400 + 15 * 3600 + 40 * 60, 123_456_000));
        assert!(parse_hastack_line("2026-11-25T15:40:00Z INFO other").is_none());
    }

    #[test]
    fn corosync_log_parses_views_with_members() {
        let text = "Nov 25 15:39:55.851 [1] vm corosync notice  [TOTEM ] A new membership (1.9) was formed. Members joined: 2 3\n\
                    Nov 25 15:39:55.859 [1] vm corosync notice  [QUORUM] Members[3]: 1 2 3\n\
                    Nov 25 15:40:09.399 [1] vm corosync notice  [TOTEM ] A new membership (1.d) was formed. Members left: 3\n\
                    Nov 25 15:40:09.403 [1] vm corosync notice  [QUORUM] Members[2]: 1 2\n";
        let v = parse_corosync_log(text, 2026);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].members, Some(vec![1, 2, 3]));
        assert_eq!((v[1].id.as_str(), v[1].left.clone()), ("1.d", vec![3]));
        assert_eq!((v[0].changed, v[1].changed), (Some(true), Some(true)));
        let same = "Nov 25 15:41:00.000 [1] vm corosync notice  [TOTEM ] A new membership (1.1f) was formed. Members\n";
        assert_eq!(parse_corosync_log(same, 2026)[0].changed, Some(false));
        let both = "Nov 25 15:41:00.000 [1] vm corosync notice  [TOTEM ] A new membership (1.20) was formed. Members joined: 1 left: 3\n";
        assert_eq!(parse_corosync_log(both, 2026)[0].left, vec![3]);
        let d = v[1].at.duration_since(v[0].at).unwrap();
        assert_eq!(d, Duration::from_millis(13_548));
    }

    #[test]
    fn year_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert!(now_year() >= 2024);
    }
}
