//! Datagram authentication and replay rejection.
//!
//! Every datagram ends with a 32-byte BLAKE3 keyed hash of everything before it. The 32-byte MAC key is
//! derived from the authkey file's contents with `blake3::derive_key`, so any file length above the
//! minimum works and the raw file bytes are never used as a key directly. Comparison is constant-time
//! (`blake3::Hash`'s `PartialEq`). After the MAC, a per-sender sliding window over `(boot, seq)` drops
//! replays and datagrams of an older boot of the sender. Nothing here panics on peer input: every
//! problem is a [`DropReason`], counted by [`DropCounters`].

use crate::wire::{self, Header, MAC_LEN, MAX_DATAGRAM, Message, NodeId, WireError};
use bytes::{BufMut, Bytes};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Context string for key derivation (BLAKE3 requires a hard-coded, globally unique context).
const KEY_CONTEXT: &str = "hastack 2026-01 ha-membership datagram MAC key v1";
/// Shortest authkey file accepted, in bytes.
pub const MIN_AUTHKEY_LEN: usize = 32;
/// Longest authkey file accepted, in bytes (a larger file is surely not a key).
pub const MAX_AUTHKEY_LEN: usize = 4096;
/// Size of a key written by [`keygen`], in bytes.
pub const KEYGEN_LEN: usize = 128;
/// How many sequence numbers behind the newest one a datagram may arrive and still be accepted.
pub const REPLAY_WINDOW: u64 = 64;

/// Why the authkey file cannot be used. None of these is retryable without operator action.
#[derive(Debug, thiserror::Error)]
pub enum AuthKeyError {
    /// The file does not exist.
    #[error("authkey {path} does not exist; create one with `hastack keygen`")]
    Missing { path: PathBuf },
    /// The file exists but could not be read or written.
    #[error("authkey {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not a regular file.
    #[error("authkey {path} is not a regular file")]
    NotAFile { path: PathBuf },
    /// Group or others may read or write the file.
    #[error("authkey {path} has mode {mode:04o}; it must not be accessible by group or others (chmod 0600)")]
    Permissions { path: PathBuf, mode: u32 },
    /// Too short (or absurdly long) to be a key.
    #[error("authkey {path} is {len} bytes; it must be between {MIN_AUTHKEY_LEN} and {MAX_AUTHKEY_LEN} bytes")]
    BadLength { path: PathBuf, len: usize },
    /// `keygen` refuses to overwrite an existing key.
    #[error("authkey {path} already exists; refusing to overwrite it")]
    Exists { path: PathBuf },
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Larger than the maximum datagram size.
    #[error("oversized datagram ({0} bytes)")]
    Oversized(usize),
    /// Too short to hold a header and a MAC, or failed to parse after authenticating.
    #[error("malformed datagram: {0}")]
    Malformed(WireError),
    /// The MAC does not match: wrong key or tampered bytes.
    #[error("forged datagram (MAC mismatch)")]
    Forged,
    /// Authenticated, but for another cluster id.
    #[error("datagram for cluster {0}")]
    WrongCluster(u32),
    /// Authenticated, but from a node id not in the node list.
    #[error("datagram from unknown node {0}")]
    UnknownSender(NodeId),
    /// Already seen, too old for the window, or from an older boot of the sender.
    #[error("replayed datagram from node {0}")]
    Replayed(NodeId),
}

/// Counters of dropped datagrams, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropCounters {
    /// Oversized datagrams.
    pub oversized: u64,
    /// Malformed datagrams.
    pub malformed: u64,
    /// Datagrams with a bad MAC.
    pub forged: u64,
    /// Datagrams for another cluster id.
    pub wrong_cluster: u64,
    /// Datagrams from node ids not in the node list.
    pub unknown_sender: u64,
    /// Replayed or stale datagrams.
    pub replayed: u64,
}

impl DropCounters {
    /// Count one drop.
    pub fn record(&mut self, reason: &DropReason) {
        match reason {
            DropReason::Oversized(_) => self.oversized += 1,
            DropReason::Malformed(_) => self.malformed += 1,
            DropReason::Forged => self.forged += 1,
            DropReason::WrongCluster(_) => self.wrong_cluster += 1,
            DropReason::UnknownSender(_) => self.unknown_sender += 1,
            DropReason::Replayed(_) => self.replayed += 1,
        }
    }

    /// Total number of dropped datagrams.
    pub fn total(&self) -> u64 {
        self.oversized
            + self.malformed
            + self.forged
            + self.wrong_cluster
            + self.unknown_sender
            + self.replayed
    }
}

/// Seals outgoing and opens incoming datagrams with the cluster key.
#[derive(Clone)]
pub struct Authenticator {
    key: [u8; 32],
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { key: <redacted> }")
    }
}

impl Authenticator {
    /// Derive the MAC key from authkey bytes (any length; the file loader enforces the minimum).
    pub fn from_key_material(material: &[u8]) -> Self {
        Authenticator { key: blake3::derive_key(KEY_CONTEXT, material) }
    }

    /// Load and check the authkey file: it must exist, be a regular file of sane length, and be
    /// readable by its owner only.
    pub fn load(path: &Path) -> Result<Self, AuthKeyError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AuthKeyError::Missing { path: path.into() });
            }
            Err(source) => return Err(AuthKeyError::Io { path: path.into(), source }),
        };
        if !meta.is_file() {
            return Err(AuthKeyError::NotAFile { path: path.into() });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(AuthKeyError::Permissions { path: path.into(), mode });
        }
        let len = meta.len() as usize;
        if !(MIN_AUTHKEY_LEN..=MAX_AUTHKEY_LEN).contains(&len) {
            return Err(AuthKeyError::BadLength { path: path.into(), len });
        }
        let bytes =
            std::fs::read(path).map_err(|source| AuthKeyError::Io { path: path.into(), source })?;
        if !(MIN_AUTHKEY_LEN..=MAX_AUTHKEY_LEN).contains(&bytes.len()) {
            return Err(AuthKeyError::BadLength { path: path.into(), len: bytes.len() });
        }
        Ok(Self::from_key_material(&bytes))
    }

    fn mac(&self, bytes: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.key, bytes)
    }

    /// Emit `msg` and append its MAC: the datagram ready to send.
    pub fn seal(&self, header: &Header, msg: &Message) -> Result<Bytes, WireError> {
        let mut b = wire::emit(header, msg)?;
        let mac = self.mac(&b);
        b.put_slice(mac.as_bytes());
        Ok(b.freeze())
    }

    /// Check size, MAC, cluster id and replay window, then parse. The window is only advanced for a
    /// datagram that passed every other check, so a forged datagram cannot poison it.
    pub fn open(
        &self,
        datagram: &[u8],
        cluster_id: u32,
        guard: &mut ReplayGuard,
    ) -> Result<(Header, Message), DropReason> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(DropReason::Oversized(datagram.len()));
        }
        if datagram.len() < wire::HEADER_LEN + MAC_LEN {
            return Err(DropReason::Malformed(WireError::Truncated {
                offset: datagram.len(),
                needed: wire::HEADER_LEN + MAC_LEN - datagram.len(),
            }));
        }
        let (body, tag) = datagram.split_at(datagram.len() - MAC_LEN);
        let mut tag_bytes = [0u8; MAC_LEN];
        tag_bytes.copy_from_slice(tag);
        // blake3::Hash's equality is constant-time.
        if self.mac(body) != blake3::Hash::from_bytes(tag_bytes) {
            return Err(DropReason::Forged);
        }
        let (header, msg) = wire::parse(body).map_err(DropReason::Malformed)?;
        if header.cluster_id != cluster_id {
            return Err(DropReason::WrongCluster(header.cluster_id));
        }
        guard.check_and_record(header.sender, header.boot, header.seq)?;
        Ok((header, msg))
    }
}

/// Write a fresh random authkey to `path` with mode 0600; refuses to overwrite an existing file.
pub fn keygen(path: &Path) -> Result<(), AuthKeyError> {
    let mut key = [0u8; KEYGEN_LEN];
    // rand's thread RNG is a CSPRNG seeded from the OS.
    rand::fill(&mut key[..]);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                AuthKeyError::Exists { path: path.into() }
            } else {
                AuthKeyError::Io { path: path.into(), source }
            }
        })?;
    f.write_all(&key)
        .and_then(|()| f.sync_all())
        .map_err(|source| AuthKeyError::Io { path: path.into(), source })
}

#[derive(Debug, Clone, Copy)]
struct Window {
    boot: u64,
    top: u64,
    /// Bit i set: `top - i` was seen.
    seen: u64,
}

/// Per-sender replay windows: `(boot, seq)` must be new, and `boot` never older than the newest seen.
#[derive(Debug, Default, Clone)]
pub struct ReplayGuard {
    allowed: Option<HashSet<NodeId>>,
    windows: HashMap<NodeId, Window>,
}

impl ReplayGuard {
    /// A guard that accepts only the given senders (the node list).
    pub fn for_nodes(nodes: impl IntoIterator<Item = NodeId>) -> Self {
        ReplayGuard { allowed: Some(nodes.into_iter().collect()), windows: HashMap::new() }
    }

    /// Accept `(boot, seq)` from `sender` once; anything seen before or too old is refused.
    pub fn check_and_record(&mut self, sender: NodeId, boot: u64, seq: u64) -> Result<(), DropReason> {
        if let Some(allowed) = &self.allowed {
            if !allowed.contains(&sender) {
                return Err(DropReason::UnknownSender(sender));
            }
        } else if self.windows.len() >= 4096 && !self.windows.contains_key(&sender) {
            return Err(DropReason::UnknownSender(sender));
        }
        let w = self.windows.entry(sender).or_insert(Window { boot, top: seq, seen: 0 });
        if boot < w.boot {
            return Err(DropReason::Replayed(sender));
        }
        if boot > w.boot {
            *w = Window { boot, top: seq, seen: 1 };
            return Ok(());
        }
        if w.seen == 0 {
            // First datagram of this sender.
            w.top = seq;
            w.seen = 1;
            return Ok(());
        }
        if seq > w.top {
            let shift = seq - w.top;
            w.seen = if shift >= REPLAY_WINDOW { 1 } else { (w.seen << shift) | 1 };
            w.top = seq;
            return Ok(());
        }
        let back = w.top - seq;
        if back >= REPLAY_WINDOW || w.seen & (1u64 << back) != 0 {
            return Err(DropReason::Replayed(sender));
        }
        w.seen |= 1u64 << back;
        Ok(())
    }

    /// Forget a sender (e.g. after it left), so its next boot starts a fresh window.
    pub fn forget(&mut self, sender: NodeId) {
        self.windows.remove(&sender);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hdr(seq: u64) -> Header {
        Header { cluster_id: 7, sender: NodeId(1), boot: 100, seq }
    }

    #[test]
    fn seal_open_round_trip() {
        let a = Authenticator::from_key_material(b"0123456789abcdef0123456789abcdef");
        let mut g = ReplayGuard::for_nodes([NodeId(1)]);
        let d = a.seal(&hdr(1), &Message::Ping { probe: 9 }).unwrap();
        let (h, m) = a.open(&d, 7, &mut g).unwrap();
        assert_eq!(h, hdr(1));
        assert_eq!(m, Message::Ping { probe: 9 });
        // The same bytes again are a replay.
        assert_eq!(a.open(&d, 7, &mut g), Err(DropReason::Replayed(NodeId(1))));
    }

    #[test]
    fn wrong_key_and_tampering_are_forged() {
        let a = Authenticator::from_key_material(b"0123456789abcdef0123456789abcdef");
        let b = Authenticator::from_key_material(b"0123456789abcdef0123456789abcdeX");
        let mut g = ReplayGuard::default();
        let d = a.seal(&hdr(1), &Message::Leave).unwrap();
        assert_eq!(b.open(&d, 7, &mut g), Err(DropReason::Forged));
        for i in 0..d.len() {
            let mut t = d.to_vec();
            t[i] ^= 0x40;
            assert_eq!(a.open(&t, 7, &mut g), Err(DropReason::Forged), "flipped byte {i}");
        }
        // Forged datagrams did not advance the window: the genuine one is still fresh.
        assert!(a.open(&d, 7, &mut g).is_ok());
    }

    #[test]
    fn wrong_cluster_and_unknown_sender() {
        let a = Authenticator::from_key_material(b"0123456789abcdef0123456789abcdef");
        let mut g = ReplayGuard::for_nodes([NodeId(2)]);
        let d = a.seal(&hdr(1), &Message::Leave).unwrap();
        assert_eq!(a.open(&d, 8, &mut g), Err(DropReason::WrongCluster(7)));
        assert_eq!(a.open(&d, 7, &mut g), Err(DropReason::UnknownSender(NodeId(1))));
    }

    #[test]
    fn short_and_oversized() {
        let a = Authenticator::from_key_material(b"k");
        let mut g = ReplayGuard::default();
        assert!(matches!(a.open(&[0u8; 10], 7, &mut g), Err(DropReason::Malformed(_))));
        let big = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(a.open(&big, 7, &mut g), Err(DropReason::Oversized(MAX_DATAGRAM + 1)));
        let mut c = DropCounters::default();
        c.record(&DropReason::Forged);
        c.record(&DropReason::Replayed(NodeId(1)));
        assert_eq!((c.forged, c.replayed, c.total()), (1, 1, 2));
    }

    #[test]
    fn window_semantics() {
        let mut g = ReplayGuard::default();
        let n = NodeId(1);
        assert!(g.check_and_record(n, 5, 10).is_ok());
        assert!(g.check_and_record(n, 5, 12).is_ok());
        assert!(g.check_and_record(n, 5, 11).is_ok(), "reordered within the window");
        assert!(g.check_and_record(n, 5, 11).is_err(), "duplicate");
        assert!(g.check_and_record(n, 5, 12 + REPLAY_WINDOW).is_ok());
        assert!(g.check_and_record(n, 5, 12).is_err(), "fell out of the window");
        assert!(g.check_and_record(n, 4, 1000).is_err(), "older boot");
        assert!(g.check_and_record(n, 6, 0).is_ok(), "new boot resets the window");
        assert!(g.check_and_record(n, 5, 5000).is_err(), "old boot after restart");
    }

    proptest! {
        /// Against a model (a set of seen seqs): accept iff unseen and within the window of the max.
        #[test]
        fn window_matches_model(seqs in proptest::collection::vec(0u64..300, 1..400)) {
            let mut g = ReplayGuard::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut top: Option<u64> = None;
            for s in seqs {
                let expect = !seen.contains(&s) && top.is_none_or(|t| s > t || t - s < REPLAY_WINDOW);
                let got = g.check_and_record(NodeId(3), 1, s).is_ok();
                prop_assert_eq!(got, expect, "seq {}", s);
                if got {
                    seen.insert(s);
                    top = Some(top.map_or(s, |t| t.max(s)));
                }
            }
        }
    }

    #[test]
    fn authkey_file_checks_and_keygen() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("authkey");
        assert!(matches!(Authenticator::load(&p), Err(AuthKeyError::Missing { .. })));
        keygen(&p).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len() as usize, KEYGEN_LEN);
        assert!(matches!(keygen(&p), Err(AuthKeyError::Exists { .. })));
        let a = Authenticator::load(&p).unwrap();
        let b = Authenticator::from_key_material(&std::fs::read(&p).unwrap());
        let d = a.seal(&hdr(1), &Message::Leave).unwrap();
        assert!(b.open(&d, 7, &mut ReplayGuard::default()).is_ok());

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(Authenticator::load(&p), Err(AuthKeyError::Permissions { mode: 0o640, .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(matches!(Authenticator::load(&p), Err(AuthKeyError::Permissions { .. })));

        let short = dir.path().join("short");
        std::fs::write(&short, b"too short").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Authenticator::load(&short), Err(AuthKeyError::BadLength { len: 9, .. })));
        assert!(matches!(Authenticator::load(dir.path()), Err(AuthKeyError::NotAFile { .. })));
    }
}
