//! End-to-end on loopback: the `hastack balancer` daemon from a config file, real backends, the
//! HAProxy-shaped runtime API through `hastack balancer ctl`, and a clean stop on SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hastack_tests::balancer::{BalancerToml, free_port, lower_nofile_soft, max_open_files};
use hastack_tests::{KillOnDrop, hastack_bin, stop_with_sigterm};

/// A backend that answers every connection with its name, in a thread (bounded by the test).
fn backend(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(1000) {
            if let Ok(mut s) = s {
                let _ = s.write_all(name.as_bytes());
            }
        }
    });
    port
}

#[test]
fn balancer_daemon_serves_reports_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, front, metrics) = (backend("a"), backend("b"), free_port(), free_port());
    let socket = dir.path().join("balancer.sock");
    let cfg = dir.path().join("hastack.toml");
    BalancerToml::new(&socket)
        .metrics(metrics)
        .frontend("api", front, "tcp", "apis")
        .backend_with("apis", &["balance = \"roundrobin\""], &[("a", a), ("b", b)])
        .write(&cfg)
        .unwrap();
    let bin = hastack_bin().unwrap();
    let check = Command::new(&bin).args(["config", "check"]).arg(&cfg).output().unwrap();
    assert!(check.status.success(), "config check: {}", String::from_utf8_lossy(&check.stderr));
    let mut daemon = KillOnDrop(Command::new(&bin).args(["balancer", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", front)).is_err() {
        assert!(Instant::now() < deadline, "balancer did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut seen = String::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(("127.0.0.1", front)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        seen += &r;
    }
    // Both servers take sessions (the readiness probe above took a pick too, and concurrent
    // accept workers interleave, so the exact rotation is not asserted here; balance.rs tests it).
    assert!(seen.contains('a') && seen.contains('b'), "roundrobin through the daemon: {seen}");
    let ctl = |words: &[&str]| {
        let out = Command::new(&bin).args(["balancer", "--config"]).arg(&cfg).arg("ctl").args(words).output().unwrap();
        assert!(out.status.success(), "ctl {words:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let stat = ctl(&["show", "stat"]);
    assert!(stat.starts_with("# pxname") && stat.contains("apis"), "show stat: {stat}");
    assert_eq!(ctl(&["set", "server", "apis/a", "state", "maint"]).trim(), "");
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", front)).unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        assert_eq!(r, "b", "a server in maint takes no new session");
    }
    assert!(ctl(&["show", "servers", "state"]).contains("MAINT"));
    // The Prometheus endpoint ([control] metrics_balancer) counts the sessions just served.
    let mut m = TcpStream::connect(("127.0.0.1", metrics)).unwrap();
    m.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut scrape = String::new();
    m.read_to_string(&mut scrape).unwrap();
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "scrape: {scrape}");
    let served_by_b: f64 = scrape
        .lines()
        .find(|l| l.starts_with("hastack_balancer_server_sessions_total") && l.contains("server=\"b\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sessions_total for server b in: {scrape}"));
    assert!(served_by_b >= 3.0, "server b took at least the 3 sessions while a was in maint: {scrape}");
    // SIGTERM: drains and exits cleanly.
    let st = stop_with_sigterm(&mut daemon, Duration::from_secs(15));
    assert!(st.success(), "balancer exit {st:?}");
}

/// Like HAProxy sizing `ulimit-n` from `maxconn`, the daemon raises its own descriptor limit to
/// what its maxconn needs (two per connection plus pipes, listeners and a reserve), here from a
/// soft limit of 1024 as a service manager might leave it.
#[test]
fn balancer_daemon_raises_its_descriptor_limit_for_maxconn() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("balancer.sock");
    let cfg = dir.path().join("hastack.toml");
    let front = free_port();
    BalancerToml::new(&socket).global("maxconn = 3000").frontend("api", front, "tcp", "apis").backend("apis", &[("a", backend("a"))]).write(&cfg).unwrap();
    let bin = hastack_bin().unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args(["balancer", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null());
    lower_nofile_soft(&mut cmd, 1024);
    let mut daemon = KillOnDrop(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", front)).is_err() {
        assert!(Instant::now() < deadline, "balancer did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (soft, hard) = max_open_files(daemon.id()).expect("/proc/<pid>/limits");
    // 2 × 3000 + 3000 / 4 × 2 + 1 listener + 64 = 7565 (or the hard limit, if lower).
    assert!(soft >= 7565.min(hard), "descriptor limit {soft} (hard {hard}) not raised for maxconn 3000");
    let st = stop_with_sigterm(&mut daemon, Duration::from_secs(15));
    assert!(st.success(), "balancer exit {st:?}");
}
