//! Group commit: many lease changes, one `fdatasync`.
//!
//! A single committer thread owns the [`LeaseLog`]. Lifecycle of one batch:
//! `waiting` (blocks for the first request) → `gathering` (drains every request that queued up
//! while the previous sync ran) → `writing` (one `write`) → `syncing` (one `fdatasync`) →
//! `acknowledging` (each request's callback gets `Ok` only now; the DHCP reply waits for it).
//! Throughput therefore rises with load: the longer a sync takes, the bigger the next batch.
//!
//! Compaction runs beside it: `idle` → (log has many more records than live leases) `snapshotting`
//! — the table is cloned at a batch boundary and a helper thread writes + fsyncs the snapshot while
//! batches keep going to the old log and are remembered as the tail → `installing` (at a batch
//! boundary: tail appended to the snapshot, fsync, rename, fsync dir) → `idle`.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::log::write_snapshot;
use super::{LeaseError, LeaseLog, LogRecord};

/// Callback told whether a submitted batch is durable.
pub type Done = Box<dyn FnOnce(Result<(), LeaseError>) + Send + 'static>;

/// When to compact in the background.
#[derive(Debug, Clone, Copy)]
pub struct CompactionPolicy {
    /// Never compact a log with fewer records than this.
    pub min_records: usize,
    /// Compact when records exceed `ratio` × live leases.
    pub ratio: usize,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        CompactionPolicy { min_records: 20_000, ratio: 4 }
    }
}

/// Counters of the committer, readable while it runs.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// `fdatasync` calls made for batches.
    pub syncs: AtomicU64,
    /// Records made durable.
    pub records: AtomicU64,
    /// Requests acknowledged (each may hold several records).
    pub requests: AtomicU64,
    /// Compactions installed.
    pub compactions: AtomicU64,
    /// Batches that failed to become durable.
    pub failures: AtomicU64,
}

/// A look at the log from the committer thread.
type Read = Box<dyn FnOnce(&LeaseLog) + Send + 'static>;

enum Msg {
    Commit(Vec<LogRecord>, Done),
    Compact(Done),
    Read(Read),
}

/// Handle to the committer thread. Dropping it stops the thread after the queued work is done.
pub struct GroupCommitter {
    tx: Option<mpsc::Sender<Msg>>,
    thread: Option<JoinHandle<LeaseLog>>,
    stats: Arc<CommitStats>,
}

/// Most records written in one batch (bounds latency of the first request in a huge burst).
const MAX_BATCH: usize = 8192;

impl GroupCommitter {
    /// Start the committer thread owning `log`.
    pub fn start(log: LeaseLog, policy: CompactionPolicy) -> GroupCommitter {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(CommitStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("lease-commit".into())
            .spawn(move || run(log, policy, rx, st))
            .ok();
        GroupCommitter { tx: Some(tx), thread, stats }
    }

    /// Queue `records`; `done` is called from the committer thread once they are durable (or failed).
    pub fn submit(&self, records: Vec<LogRecord>, done: Done) {
        match &self.tx {
            Some(tx) if self.thread.is_some() => {
                if let Err(mpsc::SendError(Msg::Commit(_, done))) = tx.send(Msg::Commit(records, done)) {
                    done(Err(LeaseError::CommitterStopped));
                }
            }
            _ => done(Err(LeaseError::CommitterStopped)),
        }
    }

    /// Queue `records` and wait until they are durable.
    pub fn commit(&self, records: Vec<LogRecord>) -> Result<(), LeaseError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(records, Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv().unwrap_or(Err(LeaseError::CommitterStopped))
    }

    /// Start a compaction now and wait until it is installed.
    pub fn compact(&self) -> Result<(), LeaseError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let done: Done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        match &self.tx {
            Some(t) => {
                if let Err(mpsc::SendError(Msg::Compact(done))) = t.send(Msg::Compact(done)) {
                    done(Err(LeaseError::CommitterStopped));
                }
            }
            None => done(Err(LeaseError::CommitterStopped)),
        }
        rx.recv().unwrap_or(Err(LeaseError::CommitterStopped))
    }

    /// What the log adds up to now, as records (leases and tombstones, see
    /// [`LeaseLog::snapshot_records`]), after everything submitted before this call. Blocks.
    pub fn snapshot_records(&self) -> Result<Vec<LogRecord>, LeaseError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let read: Read = Box::new(move |log| {
            let _ = tx.send(log.snapshot_records());
        });
        match &self.tx {
            Some(t) if self.thread.is_some() => t.send(Msg::Read(read)).map_err(|_| LeaseError::CommitterStopped)?,
            _ => return Err(LeaseError::CommitterStopped),
        }
        rx.recv().map_err(|_| LeaseError::CommitterStopped)
    }

    /// The committer's counters.
    pub fn stats(&self) -> &Arc<CommitStats> {
        &self.stats
    }

    /// Finish queued work, stop the thread and give the log back.
    pub fn shutdown(mut self) -> Option<LeaseLog> {
        self.tx.take();
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for GroupCommitter {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Compaction {
    writer: JoinHandle<Result<(File, u64), LeaseError>>,
    snap_len: usize,
    tail: Vec<LogRecord>,
    waiters: Vec<Done>,
}

fn copy_err(e: &LeaseError) -> LeaseError {
    match e {
        LeaseError::Io { path, op, source } => LeaseError::Io {
            path: path.clone(),
            op,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        LeaseError::BadHeader { path } => LeaseError::BadHeader { path: path.clone() },
        LeaseError::RecordTooLarge(n) => LeaseError::RecordTooLarge(*n),
        LeaseError::CommitterStopped => LeaseError::CommitterStopped,
    }
}

fn run(mut log: LeaseLog, policy: CompactionPolicy, rx: mpsc::Receiver<Msg>, stats: Arc<CommitStats>) -> LeaseLog {
    let mut compaction: Option<Compaction> = None;
    let mut compact_waiters: Vec<Done> = Vec::new();
    let mut closed = false;
    loop {
        // Wait for work; while a snapshot is being written, wake up to install it when done.
        let first = if compaction.is_some() {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closed = true;
                    None
                }
            }
        } else if closed {
            return log;
        } else {
            match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return log,
            }
        };
        let mut records = Vec::new();
        let mut dones = Vec::new();
        let mut reads: Vec<Read> = Vec::new();
        let mut push = |m: Msg, records: &mut Vec<LogRecord>, dones: &mut Vec<Done>| match m {
            Msg::Commit(r, d) => {
                records.extend(r);
                dones.push(d);
            }
            Msg::Compact(d) => compact_waiters.push(d),
            // Answered after this batch is written: a read sees what was submitted before it.
            Msg::Read(f) => reads.push(f),
        };
        if let Some(m) = first {
            push(m, &mut records, &mut dones);
            while records.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => push(m, &mut records, &mut dones),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        if !dones.is_empty() {
            let res = log.append(&records).and_then(|()| log.sync());
            match &res {
                Ok(()) => {
                    stats.syncs.fetch_add(1, Ordering::Relaxed);
                    stats.records.fetch_add(records.len() as u64, Ordering::Relaxed);
                    stats.requests.fetch_add(dones.len() as u64, Ordering::Relaxed);
                    if let Some(c) = compaction.as_mut() {
                        c.tail.extend(records);
                    }
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "lease batch not durable");
                }
            }
            for d in dones {
                d(match &res {
                    Ok(()) => Ok(()),
                    Err(e) => Err(copy_err(e)),
                });
            }
        }
        for f in reads {
            f(&log);
        }
        // Compaction state machine, advanced only at batch boundaries.
        if compaction.as_ref().is_some_and(|c| c.writer.is_finished()) {
            if let Some(c) = compaction.take() {
                let res = match c.writer.join() {
                    Ok(Ok((file, size))) => log.install_snapshot(file, size, c.snap_len, &c.tail),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(LeaseError::CommitterStopped),
                };
                match &res {
                    Ok(()) => {
                        stats.compactions.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(size = log.size(), records = log.records(), "lease log compacted");
                    }
                    Err(e) => tracing::warn!(error = %e, "lease log compaction failed; old log kept"),
                }
                for d in c.waiters {
                    d(match &res {
                        Ok(()) => Ok(()),
                        Err(e) => Err(copy_err(e)),
                    });
                }
            }
        }
        let live = log.live();
        let wanted = !compact_waiters.is_empty()
            || (log.records() >= policy.min_records && log.records() > policy.ratio.saturating_mul(live.max(1)));
        if compaction.is_none() && wanted {
            let snap = log.snapshot_records();
            let snap_len = snap.len();
            let path = log.path().to_path_buf();
            match std::thread::Builder::new()
                .name("lease-compact".into())
                .spawn(move || write_snapshot(&path, &snap))
            {
                Ok(writer) => {
                    compaction = Some(Compaction {
                        writer,
                        snap_len,
                        tail: Vec::new(),
                        waiters: std::mem::take(&mut compact_waiters),
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start lease compaction");
                    for d in compact_waiters.drain(..) {
                        d(Err(LeaseError::CommitterStopped));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::{Lease, LeaseState};
    use std::net::Ipv4Addr;

    fn lease(i: u32, generation: u64) -> Lease {
        Lease {
            addr: Ipv4Addr::from(0xC612_0000 + i),
            hwaddr: vec![2, 0, 0, 0, (i >> 8) as u8, i as u8],
            client_id: None,
            hostname: Some(format!("h{i}")),
            fqdn: None,
            start: generation,
            expiry: generation + 3600,
            state: LeaseState::Active,
            rev: generation,
        }
    }

    #[test]
    fn concurrent_submits_are_batched_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.log");
        let (log, _) = LeaseLog::open(&p).unwrap();
        let c = Arc::new(GroupCommitter::start(log, CompactionPolicy::default()));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..50u32 {
                        c.commit(vec![LogRecord::Upsert(lease(t * 1000 + i, 1))]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = c.stats().clone();
        assert_eq!(stats.records.load(Ordering::Relaxed), 400);
        assert!(stats.syncs.load(Ordering::Relaxed) <= 400);
        let c = Arc::try_unwrap(c).ok().unwrap();
        drop(c.shutdown());
        let (log, _) = LeaseLog::open(&p).unwrap();
        assert_eq!(log.table().len(), 400);
    }

    #[test]
    fn background_compaction_keeps_every_record_including_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.log");
        let (log, _) = LeaseLog::open(&p).unwrap();
        let c = GroupCommitter::start(log, CompactionPolicy { min_records: 200, ratio: 2 });
        for generation in 0..30u64 {
            let recs = (0..20).map(|i| LogRecord::Upsert(lease(i, generation))).collect();
            c.commit(recs).unwrap();
        }
        c.compact().unwrap();
        // Records submitted while (or after) compaction ran are still there.
        c.commit(vec![LogRecord::Upsert(lease(77, 99))]).unwrap();
        assert!(c.stats().compactions.load(Ordering::Relaxed) >= 1);
        let log = c.shutdown().unwrap();
        let expect = log.table().clone();
        assert_eq!(expect.len(), 21);
        assert!(log.size() < 30 * 20 * 40);
        drop(log);
        let (log, r) = LeaseLog::open(&p).unwrap();
        assert_eq!(r.truncated_bytes, 0);
        assert_eq!(log.table(), &expect);
        assert_eq!(log.table()[&lease(3, 0).addr].start, 29);
    }
}
