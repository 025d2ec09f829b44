//! The lease log file: a header, then framed [`LogRecord`]s, appended and never rewritten in place.
//!
//! Crash safety: a record is durable once [`LeaseLog::sync`] returned after it was appended.
//! On open the file is read record by record; the first record that is torn or corrupt ends the
//! log and the file is truncated there (and synced), so later appends never follow garbage.
//!
//! Besides the leases, the log remembers a tombstone (address and revision) for every address a
//! `Remove` forgot and nothing has leased since: replication needs it to tell "forgotten here"
//! from "never heard of" when a gateway that was cut off comes back with an old copy. There is
//! at most one entry (lease or tombstone) per address, so tombstones are bounded by the pools.
//!
//! Compaction writes a snapshot (one `Upsert` per lease, one `Remove` per tombstone) to `<log>.compact`, syncs it,
//! renames it over the log and syncs the directory: at every instant the path names either the
//! complete old log or the complete new one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use hashbrown::HashMap;

use super::{Lease, LeaseError, LogRecord, Rev};

/// First bytes of every lease log.
pub const MAGIC: &[u8; 8] = b"HSLEASE1";

/// What opening the log found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Records read intact.
    pub records: usize,
    /// Bytes cut off the end (a torn or corrupt tail); 0 after a clean shutdown.
    pub truncated_bytes: u64,
}

/// An open, append-only lease log and the table its records add up to.
#[derive(Debug)]
pub struct LeaseLog {
    path: PathBuf,
    file: File,
    /// Bytes in the file (all intact records).
    size: u64,
    /// Records in the file since the last compaction.
    records: usize,
    table: HashMap<Ipv4Addr, Lease>,
    tombstones: HashMap<Ipv4Addr, Rev>,
}

impl LeaseLog {
    /// Open (creating if missing) the log at `path`, recovering from a torn tail.
    pub fn open(path: impl AsRef<Path>) -> Result<(LeaseLog, Recovery), LeaseError> {
        let path = path.as_ref().to_path_buf();
        let io = |op, e| LeaseError::io(&path, op, e);
        // A leftover compaction file is from a compaction that never got renamed in: discard it.
        let _ = std::fs::remove_file(compact_path(&path));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|e| io("read", e))?;
        let mut rec = Recovery::default();
        let mut table = HashMap::new();
        let mut tombstones = HashMap::new();
        let good_end;
        if buf.len() < MAGIC.len() {
            // New file, or a crash before the header was complete: a prefix of MAGIC is ours.
            if !MAGIC.starts_with(&buf) {
                return Err(LeaseError::BadHeader { path: path.display().to_string() });
            }
            rec.truncated_bytes = buf.len() as u64;
            file.set_len(0).map_err(|e| io("truncate", e))?;
            file.seek(SeekFrom::Start(0)).map_err(|e| io("seek", e))?;
            file.write_all(MAGIC).map_err(|e| io("write header", e))?;
            file.sync_all().map_err(|e| io("fsync", e))?;
            if let Some(dir) = path.parent() {
                sync_dir(dir).map_err(|e| io("fsync dir", e))?;
            }
            good_end = MAGIC.len();
        } else {
            if &buf[..MAGIC.len()] != MAGIC {
                return Err(LeaseError::BadHeader { path: path.display().to_string() });
            }
            let mut off = MAGIC.len();
            while let Some((r, used)) = LogRecord::decode(&buf[off..]) {
                apply_with_tombstones(&mut table, &mut tombstones, r);
                off += used;
                rec.records += 1;
            }
            good_end = off;
            if off < buf.len() {
                rec.truncated_bytes = (buf.len() - off) as u64;
                tracing::warn!(path = %path.display(), at = off, cut = rec.truncated_bytes,
                    "lease log: torn or corrupt tail truncated");
                file.set_len(off as u64).map_err(|e| io("truncate", e))?;
                file.sync_all().map_err(|e| io("fsync", e))?;
            }
        }
        file.seek(SeekFrom::Start(good_end as u64)).map_err(|e| io("seek", e))?;
        let log = LeaseLog { path, file, size: good_end as u64, records: rec.records, table, tombstones };
        Ok((log, rec))
    }

    /// The path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Records appended since the log was last compacted (or opened, counting those read).
    pub fn records(&self) -> usize {
        self.records
    }

    /// The lease table all records add up to (latest record per address).
    pub fn table(&self) -> &HashMap<Ipv4Addr, Lease> {
        &self.table
    }

    /// The leases, in no particular order.
    pub fn leases(&self) -> Vec<Lease> {
        self.table.values().cloned().collect()
    }

    /// Forgotten addresses and the revision they were forgotten at.
    pub fn tombstones(&self) -> &HashMap<Ipv4Addr, Rev> {
        &self.tombstones
    }

    /// Everything the log adds up to, as records: an `Upsert` per lease and a `Remove` per
    /// tombstone (what a compacted log holds; what replication starts from).
    pub fn snapshot_records(&self) -> Vec<LogRecord> {
        let mut out: Vec<LogRecord> = self.table.values().cloned().map(LogRecord::Upsert).collect();
        out.extend(self.tombstones.iter().map(|(a, r)| LogRecord::Remove(*a, *r)));
        out
    }

    /// Addresses with a lease or a tombstone (what a compaction keeps).
    pub fn live(&self) -> usize {
        self.table.len() + self.tombstones.len()
    }

    /// Append records (not yet durable: call [`sync`](Self::sync)).
    pub fn append(&mut self, recs: &[LogRecord]) -> Result<(), LeaseError> {
        let mut buf = Vec::with_capacity(recs.len() * 96);
        for r in recs {
            r.encode(&mut buf)?;
        }
        self.append_encoded(&buf)?;
        for r in recs {
            apply_with_tombstones(&mut self.table, &mut self.tombstones, r.clone());
        }
        self.records += recs.len();
        Ok(())
    }

    fn append_encoded(&mut self, buf: &[u8]) -> Result<(), LeaseError> {
        if let Err(e) = self.file.write_all(buf) {
            // Do not leave a partial record for the next append to follow: cut back to the last
            // good end. If even that fails, reopen will truncate it.
            let _ = self.file.set_len(self.size);
            let _ = self.file.seek(SeekFrom::Start(self.size));
            return Err(LeaseError::io(&self.path, "append", e));
        }
        self.size += buf.len() as u64;
        Ok(())
    }

    /// Make everything appended so far durable (`fdatasync`).
    pub fn sync(&mut self) -> Result<(), LeaseError> {
        self.file.sync_data().map_err(|e| LeaseError::io(&self.path, "fdatasync", e))
    }

    /// Compact in the foreground: snapshot the table, then swap it in atomically.
    pub fn compact(&mut self) -> Result<(), LeaseError> {
        let snap = self.snapshot_records();
        let (file, size) = write_snapshot(&self.path, &snap)?;
        self.install_snapshot(file, size, snap.len(), &[])
    }

    /// Append `tail` (records that arrived while the snapshot was written) to the snapshot file,
    /// sync it, rename it over the log and sync the directory; then continue appending to it.
    pub(crate) fn install_snapshot(
        &mut self,
        mut file: File,
        mut size: u64,
        snap_records: usize,
        tail: &[LogRecord],
    ) -> Result<(), LeaseError> {
        let cpath = compact_path(&self.path);
        let io = |op, e| LeaseError::io(&cpath, op, e);
        if !tail.is_empty() {
            let mut buf = Vec::new();
            for r in tail {
                r.encode(&mut buf)?;
            }
            file.write_all(&buf).map_err(|e| io("append tail", e))?;
            size += buf.len() as u64;
            file.sync_data().map_err(|e| io("fdatasync", e))?;
        }
        std::fs::rename(&cpath, &self.path).map_err(|e| io("rename", e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir).map_err(|e| io("fsync dir", e))?;
        }
        self.file = file;
        self.size = size;
        self.records = snap_records + tail.len();
        Ok(())
    }
}

/// Write a snapshot (`records`: see [`LeaseLog::snapshot_records`]) to `<log>.compact` and fsync
/// it; returns the open file (positioned at its end) and its size.
pub(crate) fn write_snapshot(log_path: &Path, records: &[LogRecord]) -> Result<(File, u64), LeaseError> {
    let cpath = compact_path(log_path);
    let io = |op, e| LeaseError::io(&cpath, op, e);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&cpath)
        .map_err(|e| io("create", e))?;
    let mut buf = Vec::with_capacity(MAGIC.len() + records.len() * 96);
    buf.extend_from_slice(MAGIC);
    for r in records {
        r.encode(&mut buf)?;
    }
    file.write_all(&buf).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    Ok((file, buf.len() as u64))
}

pub(crate) fn compact_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".compact");
    PathBuf::from(p)
}

/// Apply one record to a lease table (tombstones not kept).
pub(crate) fn apply(table: &mut HashMap<Ipv4Addr, Lease>, r: LogRecord) {
    match r {
        LogRecord::Upsert(l) => {
            table.insert(l.addr, l);
        }
        LogRecord::Remove(a, _) => {
            table.remove(&a);
        }
    }
}

/// Apply one record in log order: a lease replaces the address's entry, a remove leaves a
/// tombstone (a version-1 remove, without a revision, ranks just above the lease it forgot).
fn apply_with_tombstones(table: &mut HashMap<Ipv4Addr, Lease>, tombstones: &mut HashMap<Ipv4Addr, Rev>, r: LogRecord) {
    match r {
        LogRecord::Upsert(l) => {
            tombstones.remove(&l.addr);
            table.insert(l.addr, l);
        }
        LogRecord::Remove(a, rev) => {
            let prior = table.remove(&a).map(|l| l.rev.saturating_add(1));
            tombstones.insert(a, if rev == 0 { prior.unwrap_or(0) } else { rev });
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leases::LeaseState;

    pub(crate) fn lease(i: u32) -> Lease {
        Lease {
            addr: Ipv4Addr::from(0xC612_0000 + i),
            hwaddr: vec![2, 0, 0, 0, (i >> 8) as u8, i as u8],
            client_id: if i % 2 == 0 { Some(vec![1, 2, 0, 0, 0, i as u8]) } else { None },
            hostname: Some(format!("node-{i}")),
            fqdn: Some(format!("node-{i}.cluster.test")),
            start: 1_700_000_000 + u64::from(i),
            expiry: 1_700_003_600 + u64::from(i),
            state: LeaseState::Active,
            rev: crate::leases::rev_at(1_700_000_000 + u64::from(i)),
        }
    }

    #[test]
    fn reopen_returns_what_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.log");
        let (mut log, r) = LeaseLog::open(&p).unwrap();
        assert_eq!(r.records, 0);
        log.append(&[LogRecord::Upsert(lease(1)), LogRecord::Upsert(lease(2))]).unwrap();
        log.append(&[LogRecord::Remove(lease(1).addr, lease(1).rev + 1)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (log, r) = LeaseLog::open(&p).unwrap();
        assert_eq!(r.records, 3);
        assert_eq!(r.truncated_bytes, 0);
        assert_eq!(log.leases(), vec![lease(2)]);
        assert_eq!(log.tombstones().get(&lease(1).addr), Some(&(lease(1).rev + 1)), "the removal is remembered");
    }

    #[test]
    fn torn_tail_truncated_at_every_offset_of_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.log");
        let (mut log, _) = LeaseLog::open(&p).unwrap();
        for i in 0..5 {
            log.append(&[LogRecord::Upsert(lease(i))]).unwrap();
        }
        log.sync().unwrap();
        let before_last = log.size();
        log.append(&[LogRecord::Upsert(lease(99))]).unwrap();
        log.sync().unwrap();
        let full = log.size();
        drop(log);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len() as u64, full);
        for cut in before_last..full {
            let q = dir.path().join(format!("cut-{cut}.log"));
            std::fs::write(&q, &bytes[..cut as usize]).unwrap();
            let (mut log, r) = LeaseLog::open(&q).unwrap();
            assert_eq!(r.records, 5, "cut at {cut}");
            assert_eq!(r.truncated_bytes, cut - before_last, "cut at {cut}");
            for i in 0..5 {
                assert_eq!(log.table().get(&lease(i).addr), Some(&lease(i)), "cut at {cut}");
            }
            assert!(log.table().get(&lease(99).addr).is_none());
            // Appending after recovery continues a clean log.
            log.append(&[LogRecord::Upsert(lease(7))]).unwrap();
            log.sync().unwrap();
            drop(log);
            let (log, r) = LeaseLog::open(&q).unwrap();
            assert_eq!(r.truncated_bytes, 0);
            assert_eq!(log.table().len(), 6);
        }
    }

    #[test]
    fn corrupt_byte_in_middle_keeps_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.log");
        let (mut log, _) = LeaseLog::open(&p).unwrap();
        log.append(&[LogRecord::Upsert(lease(1))]).unwrap();
        let mid = log.size();
        log.append(&[LogRecord::Upsert(lease(2)), LogRecord::Upsert(lease(3))]).unwrap();
        log.sync().unwrap();
        drop(log);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[mid as usize + 12] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let (log, r) = LeaseLog::open(&p).unwrap();
        assert_eq!(r.records, 1);
        assert_eq!(log.leases(), vec![lease(1)]);
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.log");
        std::fs::write(&p, b"1700000000 aa:bb:cc:dd:ee:ff 198.18.0.5 host *\n").unwrap();
        assert!(matches!(LeaseLog::open(&p), Err(LeaseError::BadHeader { .. })));
        // And it was left untouched.
        assert!(std::fs::read(&p).unwrap().starts_with(b"1700000000"));
    }

    #[test]
    fn compaction_is_equivalent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("leases.log");
        let (mut log, _) = LeaseLog::open(&p).unwrap();
        for round in 0..20u64 {
            for i in 0..50 {
                let mut l = lease(i);
                l.expiry += round;
                log.append(&[LogRecord::Upsert(l)]).unwrap();
            }
            log.append(&[LogRecord::Remove(lease(round as u32).addr, 7 + round)]).unwrap();
        }
        for i in 30..40 {
            log.append(&[LogRecord::Remove(lease(i).addr, 1000 + u64::from(i))]).unwrap();
        }
        // A removed address leased again loses its tombstone.
        log.append(&[LogRecord::Upsert(lease(39))]).unwrap();
        log.sync().unwrap();
        let before: HashMap<_, _> = log.table().clone();
        let graves: HashMap<_, _> = log.tombstones().clone();
        assert_eq!(graves.len(), 10, "19 (removed in the last round), 30..=38");
        let size_before = log.size();
        log.compact().unwrap();
        assert!(log.size() < size_before / 10, "{} vs {}", log.size(), size_before);
        assert_eq!(log.table(), &before);
        // Appends after compaction land in the new file.
        log.append(&[LogRecord::Upsert(lease(500))]).unwrap();
        log.sync().unwrap();
        drop(log);
        let (log, r) = LeaseLog::open(&p).unwrap();
        assert_eq!(r.truncated_bytes, 0);
        let mut expect = before;
        expect.insert(lease(500).addr, lease(500));
        assert_eq!(log.table(), &expect);
        assert_eq!(log.tombstones(), &graves, "tombstones survive compaction");
        assert!(!compact_path(&p).exists());
    }
}
