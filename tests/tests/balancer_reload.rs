//! End-to-end on loopback: hitless reload of the `hastack balancer` daemon, and memory with 10k
//! idle connections.
//!
//! - A reload under a bounded `wrk` run loses no request; long-lived streams opened before it
//!   (idle, half-closed, and one pushing 64 MiB through the splice pipes) keep flowing byte-exact
//!   after it, served by the new process, and the old process has exited.
//! - In http mode, idle keep-alive connections are handed to the new process: clients reusing
//!   them are served, a bounded wrk run sees no error, the old process exits at once.
//! - A reload with a bad config is refused with file:line:reason and changes nothing.
//! - 10k idle client connections through the balancer cost it a bounded amount of memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hastack_tests::balancer::{BalancerToml, free_port, max_open_files};
use hastack_tests::{KillOnDrop, hastack_bin, in_ci, poll_until, stop_with_sigterm};

/// A skip that fails under CI=true.
fn skip(reason: &str) {
    assert!(!in_ci(), "CI=true, so this test must not skip, but: {reason}");
    eprintln!("SKIP: {reason}");
}

/// An echo backend: every connection echoes what it reads until the client's FIN, then closes.
/// Bounded: at most `max` connections, each in its own thread.
fn echo_backend(max: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(max).flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// A minimal HTTP/1.1 keep-alive backend for wrk: `200 OK` with a 2-byte body per request.
fn http_backend(max: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(max).flatten() {
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                loop {
                    // One request: lines up to the empty one (wrk sends no body).
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A backend that, per connection, reads an 8-byte big-endian length and sends that many bytes
/// of a pattern (byte i is `i % 251`), then closes.
fn pusher_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(4).flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut len = [0u8; 8];
                if s.read_exact(&mut len).is_err() {
                    return;
                }
                let total = u64::from_be_bytes(len) as usize;
                let chunk: Vec<u8> = (0..251 * 1024).map(|i| (i % 251) as u8).collect();
                let mut sent = 0;
                while sent < total {
                    let n = (total - sent).min(chunk.len());
                    if s.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    sent += n;
                }
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

struct Setup {
    _dir: tempfile::TempDir,
    cfg: PathBuf,
    socket: PathBuf,
    front: u16,
    stream_front: u16,
    push_front: u16,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("balancer.sock");
    let cfg = dir.path().join("hastack.toml");
    let (front, stream_front, push_front) = (free_port(), free_port(), free_port());
    BalancerToml::new(&socket)
        .global("hard_stop_after = \"10s\"")
        .frontend("web", front, "tcp", "webs")
        .frontend("streams", stream_front, "tcp", "echo")
        .frontend("bulk", push_front, "tcp", "push")
        .backend("webs", &[("w1", http_backend(2000))])
        .backend("echo", &[("e1", echo_backend(200))])
        .backend("push", &[("p1", pusher_backend())])
        .write(&cfg)
        .unwrap();
    Setup { _dir: dir, cfg, socket, front, stream_front, push_front }
}

fn start_daemon(bin: &Path, s: &Setup) -> KillOnDrop {
    let child = Command::new(bin)
        .args(["balancer", "--config"])
        .arg(&s.cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let ok = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
        TcpStream::connect(("127.0.0.1", s.front)).is_ok() && s.socket.exists()
    });
    assert!(ok, "balancer did not start listening");
    KillOnDrop(child)
}

fn ctl(bin: &Path, s: &Setup, words: &[&str]) -> std::process::Output {
    Command::new(bin).args(["balancer", "--config"]).arg(&s.cfg).args(words).output().unwrap()
}

fn pid_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => !st.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// Stops a process that is not our child (the successor): SIGTERM, then SIGKILL.
struct StopPid(u32);

impl Drop for StopPid {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if !poll_until(Duration::from_secs(15), Duration::from_millis(50), || !pid_alive(self.0)) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

/// Writes `msg` and reads its echo back, byte-exact.
fn echo_round(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
}

/// `hastack balancer reload`: must succeed; returns the new process's pid.
fn reload(bin: &Path, s: &Setup) -> u32 {
    let out = ctl(bin, s, &["reload"]);
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "reload: {answer} {}", String::from_utf8_lossy(&out.stderr));
    answer
        .split_whitespace()
        .skip_while(|w| *w != "process")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {answer:?}"))
}

/// Waits for a bounded wrk run and checks it saw no error of any kind and made over 1000
/// requests; returns its report.
fn wrk_clean(mut wrk: KillOnDrop, what: &str) -> String {
    let status = wrk.0.wait().unwrap();
    let mut report = String::new();
    wrk.0.stdout.take().unwrap().read_to_string(&mut report).unwrap();
    eprintln!("wrk {what}:\n{report}");
    assert!(status.success(), "wrk failed: {report}");
    let requests: u64 = report
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {report}"));
    assert!(requests > 1000, "wrk made only {requests} requests: {report}");
    assert!(!report.contains("Socket errors"), "wrk saw socket errors {what}:\n{report}");
    assert!(!report.contains("Non-2xx"), "wrk saw failed responses {what}:\n{report}");
    report
}

fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

#[test]
fn reload_under_load_loses_nothing_and_keeps_streams() {
    if !wrk_available() {
        return skip("wrk is not installed (Debian package wrk)");
    }
    let bin = hastack_bin().unwrap();
    let s = setup();
    let mut old = start_daemon(&bin, &s);
    let old_pid = old.id();

    // Long-lived streams opened before the reload.
    let mut streams: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut c = TcpStream::connect(("127.0.0.1", s.stream_front)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            echo_round(&mut c, format!("hello {i} before").as_bytes());
            c
        })
        .collect();
    // One half-closed: the client has sent everything and shut its side; the echo of what it
    // sent arrives, then the server's FIN, both after the reload.
    let mut half = TcpStream::connect(("127.0.0.1", s.stream_front)).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    echo_round(&mut half, b"half before");
    // A bulk download in flight across the reload: the client reads slowly, so bytes sit in the
    // socket buffers and the balancer's pipes when the handover happens.
    const BULK: u64 = 64 << 20;
    let mut bulk = TcpStream::connect(("127.0.0.1", s.push_front)).unwrap();
    bulk.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    bulk.write_all(&BULK.to_be_bytes()).unwrap();
    let reading = Arc::new(AtomicBool::new(false));
    let bulk_reader = {
        let reading = reading.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut off: u64 = 0;
            let start = Instant::now();
            loop {
                let n = bulk.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                for (k, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, ((off + k as u64) % 251) as u8, "bulk byte {} corrupted", off + k as u64);
                }
                off += n as u64;
                reading.store(true, Ordering::Relaxed);
                // Slow for the first 2 s (about 16 MiB/s), then full speed.
                if start.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_millis(4));
                }
            }
            off
        })
    };
    assert!(poll_until(Duration::from_secs(5), Duration::from_millis(10), || reading.load(Ordering::Relaxed)));

    // A bounded wrk run with the reload in its middle.
    let url = format!("http://127.0.0.1:{}/", s.front);
    let wrk = Command::new("wrk").args(["-t1", "-c20", "-d4s", "--latency", &url]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let wrk = KillOnDrop(wrk);
    std::thread::sleep(Duration::from_millis(1200));
    half.shutdown(Shutdown::Write).unwrap();
    let new_pid = reload(&bin, &s);
    let _stop_new = StopPid(new_pid);
    assert_ne!(new_pid, old_pid);

    // The old process hands everything over and exits on its own, cleanly.
    let exited = poll_until(Duration::from_secs(10), Duration::from_millis(20), || matches!(old.try_wait(), Ok(Some(_))));
    assert!(exited, "old balancer {old_pid} still running after the reload");
    let st = old.try_wait().unwrap().unwrap();
    assert!(st.success(), "old balancer exit {st:?}");
    assert!(pid_alive(new_pid));

    // wrk: no error of any kind.
    wrk_clean(wrk, "across the reload");

    // Streams opened before the reload keep flowing through the new process.
    for (i, c) in streams.iter_mut().enumerate() {
        echo_round(c, format!("hello {i} after the reload, served by {new_pid}").as_bytes());
    }
    let mut rest = Vec::new();
    half.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "half-closed stream: unexpected bytes {rest:?}");
    let got = bulk_reader.join().unwrap();
    assert_eq!(got, BULK, "bulk download cut short");

    // The new process counts them as its own sessions.
    let stat = String::from_utf8(ctl(&bin, &s, &["ctl", "show", "sess"]).stdout).unwrap();
    assert!(stat.lines().filter(|l| l.starts_with("streams ")).count() >= 20, "show sess after reload: {stat}");
    for mut c in streams {
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}

/// One keep-alive request on `c`: the backend's 2-byte answer, or the error.
fn http_get(c: &mut TcpStream) -> std::io::Result<String> {
    c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"\r\n\r\nok") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// http mode: idle keep-alive client connections go to the new process on reload (their socket
/// only: nothing is buffered between requests), so a client reusing its connection after the
/// reload is served, wrk sees no error, and the old process exits at once instead of lingering
/// until `hard_stop_after` (HAProxy closes them, and clients racing a request see a reset).
#[test]
fn reload_hands_idle_http_keep_alive_connections_over() {
    if !wrk_available() {
        return skip("wrk is not installed (Debian package wrk)");
    }
    let bin = hastack_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Setup {
        cfg: dir.path().join("hastack.toml"),
        socket: dir.path().join("balancer.sock"),
        front: free_port(),
        stream_front: free_port(),
        push_front: free_port(),
        _dir: dir,
    };
    BalancerToml::new(&s.socket)
        .global("hard_stop_after = \"20s\"")
        .frontend("web", s.front, "http", "webs")
        .backend("webs", &[("w1", http_backend(2000))])
        .write(&s.cfg)
        .unwrap();
    let mut old = start_daemon(&bin, &s);
    let old_pid = old.id();
    // Idle keep-alive connections opened before the reload, each served once.
    let mut idle: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", s.front)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            http_get(&mut c).unwrap();
            c
        })
        .collect();
    let url = format!("http://127.0.0.1:{}/", s.front);
    let wrk = Command::new("wrk").args(["-t1", "-c20", "-d4s", &url]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let wrk = KillOnDrop(wrk);
    std::thread::sleep(Duration::from_millis(1500));
    let new_pid = reload(&bin, &s);
    let _stop_new = StopPid(new_pid);
    let reloaded = Instant::now();
    // No connection is left in the old process: it exits well before hard_stop_after (20 s).
    let exited = poll_until(Duration::from_secs(8), Duration::from_millis(20), || matches!(old.try_wait(), Ok(Some(_))));
    assert!(exited, "old balancer {old_pid} still running {:?} after the reload", reloaded.elapsed());
    assert!(old.try_wait().unwrap().unwrap().success());
    // The idle connections are served on, by the new process (the old one is gone).
    for (i, c) in idle.iter_mut().enumerate() {
        let r = http_get(c).unwrap_or_else(|e| panic!("idle connection {i} after the reload: {e}"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    wrk_clean(wrk, "(http mode) across the reload");
}

#[test]
fn bad_config_reload_changes_nothing() {
    let bin = hastack_bin().unwrap();
    let s = setup();
    let mut daemon = start_daemon(&bin, &s);
    let pid = daemon.id();
    let mut c = TcpStream::connect(("127.0.0.1", s.stream_front)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo_round(&mut c, b"before");
    let good = std::fs::read_to_string(&s.cfg).unwrap();
    // An unknown key on line 5.
    let bad = good.replacen("hard_stop_after = \"10s\"", "hard_stop_after = \"10s\"\nhard_stop_afterr = \"1s\"", 1);
    std::fs::write(&s.cfg, &bad).unwrap();
    let out = ctl(&bin, &s, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad config was accepted: {}", String::from_utf8_lossy(&out.stdout));
    let cfg_name = s.cfg.display().to_string();
    assert!(err.contains(&format!("{cfg_name}:6")), "no file:line in {err}");
    assert!(err.contains("nothing was changed"), "{err}");
    // The same process still serves the same session and new ones; same sockets.
    assert!(matches!(daemon.try_wait(), Ok(None)));
    echo_round(&mut c, b"after a bad reload");
    let mut d = TcpStream::connect(("127.0.0.1", s.stream_front)).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    echo_round(&mut d, b"new session");
    // SIGHUP with the bad config: refused inside the daemon too.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(daemon.try_wait(), Ok(None)), "SIGHUP with a bad config stopped the balancer");
    echo_round(&mut c, b"after SIGHUP");
    // (`ctl` finds the runtime API socket through the config: put the good one back first.)
    std::fs::write(&s.cfg, &good).unwrap();
    let sess = String::from_utf8(ctl(&bin, &s, &["ctl", "show", "sess"]).stdout).unwrap();
    assert_eq!(sess.lines().filter(|l| l.starts_with("streams ")).count(), 2, "{sess}");
    drop((c, d));
    let st = stop_with_sigterm(&mut daemon, Duration::from_secs(15));
    assert!(st.success());
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Per idle connection the balancer holds two sockets (kernel memory, not in its RSS), one
/// session task (the relay phase's future, under 3 KiB by a unit test, holding the relay state)
/// with two reactor registrations, and a session-table entry; no pipe and no buffer until data
/// flows. Measured here: about 3.8 KB with the debug binary the tests run; HAProxy 2.6 adds
/// about 3.3 KB per idle connection (docs/bench/balancer.md). The bound leaves the debug build
/// some room and still catches any per-connection buffer (16 KiB or more) or a fat future.
const MAX_RSS_PER_IDLE_CONN: u64 = 5 * 1024;

#[test]
fn idle_backend_holder() {
    if std::env::var_os("BALANCER_RELOAD_HOLDER").is_none() {
        return;
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("PORT {}", l.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    l.set_nonblocking(true).unwrap();
    let stdin_closed = Arc::new(AtomicBool::new(false));
    {
        let closed = stdin_closed.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            closed.store(true, Ordering::Relaxed);
        });
    }
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stdin_closed.load(Ordering::Relaxed) && Instant::now() < deadline {
        match l.accept() {
            Ok((c, _)) => held.push(c),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Raises the soft descriptor limit as far as the hard one allows; returns the new soft limit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Root with CAP_SYS_RESOURCE may go past the hard limit; a container may not.
    if setrlimit(Resource::RLIMIT_NOFILE, 65_536, hard.max(65_536)).is_ok() {
        return 65_536;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() { hard } else { soft }
}

#[test]
fn ten_thousand_idle_connections_keep_rss_bounded() {
    // This process and the backend holder each hold one descriptor per connection; the
    // balancer holds two (client and server side) and raises its own limit for its maxconn
    // (20000: 50k descriptors). Where the hard limit cannot be raised (a container without
    // CAP_SYS_RESOURCE caps it) the test runs with as many connections as the balancer's limit
    // fits and says so.
    let limit = raise_nofile();
    let bin = hastack_bin().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("balancer.sock");
    let cfg = dir.path().join("hastack.toml");
    let mut holder = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "idle_backend_holder", "--nocapture", "--test-threads=1"])
            .env("BALANCER_RELOAD_HOLDER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(holder.0.stdout.take().unwrap());
    let bport: u16 = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "backend holder did not start");
        // libtest may print "test idle_backend_holder ... " on the same line first.
        if let Some(i) = line.find("PORT ") {
            break line[i + 5..].trim().parse().unwrap();
        }
    };
    let front = free_port();
    BalancerToml::new(&socket)
        .global("maxconn = 20000")
        .timeout("client", "5m")
        .timeout("server", "5m")
        .frontend("idle", front, "tcp", "b")
        .backend("b", &[("s", bport)])
        .write(&cfg)
        .unwrap();
    let mut daemon = KillOnDrop(
        Command::new(&bin).args(["balancer", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap(),
    );
    let pid = daemon.id();
    assert!(poll_until(Duration::from_secs(10), Duration::from_millis(20), || socket.exists()));
    let (dsoft, dhard) = max_open_files(pid).expect("/proc/<pid>/limits");
    assert!(dsoft >= 50_064.min(dhard), "the balancer did not raise its descriptor limit: {dsoft} (hard {dhard})");
    let n = 10_000usize.min((dsoft as usize).saturating_sub(200) / 2).min((limit as usize).saturating_sub(200));
    if n < 2_000 {
        return skip(&format!("RLIMIT_NOFILE {dsoft} leaves room for only {n} connections"));
    }
    if n < 10_000 {
        eprintln!(
            "NOTE: the balancer's descriptor limit is {dsoft} (hard limit {dhard}, not raisable without CAP_SYS_RESOURCE): \
             {n} idle connections instead of 10000"
        );
    }
    let q = |w: &[&str]| String::from_utf8(Command::new(&bin).args(["balancer", "--config"]).arg(&cfg).args(w).output().unwrap().stdout).unwrap();
    // Warm up: a few sessions through, so lazily built state (runtime, tables) is counted before.
    let warm: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(("127.0.0.1", front)).unwrap()).collect();
    assert!(poll_until(Duration::from_secs(5), Duration::from_millis(20), || q(&["ctl", "show", "sess"]).lines().filter(|l| l.starts_with("idle ")).count() == warm.len()));
    let before = rss_kib(pid);
    let start = Instant::now();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(TcpStream::connect(("127.0.0.1", front)).unwrap());
    }
    let all = n + warm.len();
    let established = poll_until(Duration::from_secs(20), Duration::from_millis(100), || q(&["ctl", "show", "sess"]).lines().filter(|l| l.starts_with("idle ")).count() == all);
    assert!(established, "not every connection reached the backend: {} of {all}", q(&["ctl", "show", "sess"]).lines().filter(|l| l.starts_with("idle ")).count());
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before) * 1024) / n as u64;
    eprintln!(
        "{n} idle connections: balancer RSS {before} KiB -> {after} KiB, {per_conn} bytes per connection (set up in {:?})",
        start.elapsed()
    );
    assert!(per_conn <= MAX_RSS_PER_IDLE_CONN, "{per_conn} bytes of RSS per idle connection (bound {MAX_RSS_PER_IDLE_CONN})");
    drop((clients, warm));
    let st = stop_with_sigterm(&mut daemon, Duration::from_secs(20));
    assert!(st.success());
    drop(holder.0.stdin.take());
    let _ = holder.0.wait();
}
