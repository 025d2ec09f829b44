//! Root test of the whole node stack in a network namespace: the tokio driver runs the engine of
//! a single-node cluster (loopback channel) with a VIP and an exec resource. Start-up removes a
//! stale copy of the VIP; the VIP comes up with its lease after the resource it depends on and is
//! renewed past its lifetime; a killed resource is detected by its monitor and restarted; a
//! graceful shutdown removes everything. Skips when not root, unless CI=true.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vip_manager::driver::{Driver, DriverConfig, LoopbackChannel};
use vip_manager::engine::EngineConfig;
use vip_manager::exec::{ExecAgent, Operation};
use vip_manager::garp::AnnounceSchedule;
use vip_manager::vip::Lease;
use vip_manager::{
    ClusterPolicy, Constraint, NodeId, OrderKind, ResourceDef, ResourceId, ResourceKind, Score, VipSpec,
};

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn driver_runs_a_single_node_cluster() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root (CI=true: failing, not skipping)");
        eprintln!("SKIP driver_runs_a_single_node_cluster: needs root");
        return;
    }
    let ns = Netns(format!("hsvipdrv{}", std::process::id()));
    run(&["ip", "netns", "add", &ns.0]);
    let ip = |args: &[&str]| {
        let mut v = vec!["ip", "-n", ns.0.as_str()];
        v.extend_from_slice(args);
        run(&v)
    };
    ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]);
    ip(&["addr", "add", "198.18.0.1/24", "dev", "veth0"]);
    ip(&["link", "set", "veth0", "up"]);
    ip(&["link", "set", "veth1", "up"]);
    // A leftover of a previous life, unmarked: start-up must remove it.
    ip(&["addr", "add", "198.18.0.10/24", "dev", "veth0"]);

    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("lb.running");
    let p = pidfile.display().to_string();
    let t = Duration::from_secs(5);
    let agent = ExecAgent {
        instance: "lb".into(),
        start: Operation::new(["/bin/sh", "-c", &format!("touch {p}")], t),
        stop: Operation::new(["/bin/sh", "-c", &format!("rm -f {p}")], t),
        monitor: Operation::new(["/bin/sh", "-c", &format!("[ -e {p} ] || exit 7")], t),
        env: BTreeMap::new(),
        not_running_codes: vec![7],
        workdir: None,
    };
    let vip_spec = VipSpec { address: "198.18.0.10".parse().unwrap(), prefix_len: 24, interface: "veth0".into() };
    let resources = vec![ResourceDef::new("vip", ResourceKind::Vip(vip_spec)), ResourceDef::new("lb", ResourceKind::Agent)];
    let r = ResourceId::new;
    let constraints = vec![
        Constraint::Colocation { rsc: r("vip"), with: r("lb"), score: Score::INFINITY },
        Constraint::Order { first: r("lb"), then: r("vip"), kind: OrderKind::Mandatory },
    ];
    let engine_cfg = EngineConfig {
        local: NodeId(1),
        cluster_size: 1,
        resources,
        constraints,
        policy: ClusterPolicy::default(),
        monitor_interval: Duration::from_millis(200),
        monitor_timeout: Duration::from_secs(2),
        tick_every: Duration::from_secs(1),
        stall_confirm: EngineConfig::DEFAULT_STALL_CONFIRM,
    };
    let cfg = DriverConfig {
        lease: Lease::new(Duration::from_secs(2)),
        announce: AnnounceSchedule { repeat_after: None, ..AnnounceSchedule::default() },
        ..DriverConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let path = format!("/run/netns/{}", ns.0);
    let daemon = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut agents = BTreeMap::new();
            agents.insert(ResourceId::new("lb"), agent);
            let d = Driver::start(engine_cfg, agents, LoopbackChannel::new(NodeId(1)), cfg).await.expect("start");
            d.run(stop_rx).await
        })
    });

    let shows_vip = || {
        let out = ip(&["-4", "addr", "show", "dev", "veth0"]);
        out.lines().skip_while(|l| !l.contains("198.18.0.10/24")).nth(1).map(str::to_string)
    };
    // The stale copy had an infinite lifetime; ours carries the lease.
    wait_for("the VIP with its lease", Duration::from_secs(5), || {
        shows_vip().is_some_and(|l| l.contains("valid_lft 2sec") || l.contains("valid_lft 1sec"))
    });
    assert!(Path::new(&pidfile).exists(), "lb started before the VIP");
    // Renewal keeps it beyond its lifetime.
    std::thread::sleep(Duration::from_millis(3000));
    assert!(shows_vip().is_some(), "VIP expired although renewed");

    // The balancer dies; its monitor notices, the engine restarts it (VIP restarted after it).
    std::fs::remove_file(&pidfile).unwrap();
    wait_for("lb restarted", Duration::from_secs(5), || Path::new(&pidfile).exists());
    wait_for("VIP back", Duration::from_secs(5), || shows_vip().is_some());

    // Graceful stop: everything goes away, in reverse order.
    stop_tx.send(true).unwrap();
    let res = daemon.join().expect("daemon thread");
    assert!(res.is_ok(), "{res:?}");
    assert!(shows_vip().is_none(), "VIP left behind");
    assert!(!Path::new(&pidfile).exists(), "lb left running");
}
