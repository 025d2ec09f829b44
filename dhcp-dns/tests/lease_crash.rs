//! Real crash test: a child process appends leases through the group committer and reports each
//! acknowledgement to the parent through a pipe; the parent kills it with SIGKILL mid-burst and
//! checks that every acknowledged lease is in the reopened log.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhcp_dns::leases::commit::CompactionPolicy;
use dhcp_dns::leases::{GroupCommitter, Lease, LeaseLog, LeaseState, LogRecord};

const CHILD_ENV: &str = "HASTACK_LEASE_CRASH_CHILD";

fn lease(i: u32) -> Lease {
    Lease {
        addr: Ipv4Addr::from(0xC612_0000u32 + i),
        hwaddr: vec![2, 0, (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8],
        client_id: Some(vec![1, 2, 3, i as u8]),
        hostname: Some(format!("crash-{i}")),
        fqdn: Some(format!("crash-{i}.cluster.test")),
        start: 1_700_000_000,
        expiry: 1_700_003_600 + u64::from(i),
        state: LeaseState::Active,
        rev: u64::from(i),
    }
}

/// The child side: runs only when re-executed by the parent.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else { return };
    let (log, _) = LeaseLog::open(&path).expect("open");
    // Small compaction thresholds so a kill can also land during a compaction.
    let c = Arc::new(GroupCommitter::start(log, CompactionPolicy { min_records: 500, ratio: 2 }));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    // Bounded: the parent kills us long before this ends.
    for i in 0..200_000u32 {
        let out = out.clone();
        // Rewrite a small set of addresses repeatedly so compaction triggers too.
        let rec = LogRecord::Upsert(lease(i));
        c.submit(vec![rec], Box::new(move |r| {
            if r.is_ok() {
                if let Ok(mut o) = out.lock() {
                    let _ = writeln!(o, "ACK {i}");
                    let _ = o.flush();
                }
            }
        }));
        if i % 64 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn kill_9_mid_burst_loses_no_acknowledged_lease() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("leases.log");
    for round in 0..3 {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut acked = Vec::new();
        let mut line = String::new();
        let kill_after = 300 + round * 700;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.len() < kill_after && Instant::now() < deadline {
            line.clear();
            if reader.read_line(&mut line).expect("read") == 0 {
                break;
            }
            if let Some(n) = line.trim().strip_prefix("ACK ") {
                acked.push(n.parse::<u32>().expect("ack number"));
            }
        }
        // SIGKILL by PID (the child we spawned), mid-burst.
        child.kill().expect("kill");
        let _ = child.wait();
        // Acks already in the pipe were also sent before the kill: they count too.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(n) = line.trim().strip_prefix("ACK ") {
                        if let Ok(n) = n.parse::<u32>() {
                            acked.push(n);
                        }
                    }
                }
            }
        }
        assert!(acked.len() >= kill_after, "round {round}: child acked only {}", acked.len());
        let (log, rec) = LeaseLog::open(&path).expect("reopen after kill");
        for i in &acked {
            assert_eq!(
                log.table().get(&lease(*i).addr),
                Some(&lease(*i)),
                "round {round}: acked lease {i} missing after kill -9 (recovery {rec:?})"
            );
        }
    }
}
