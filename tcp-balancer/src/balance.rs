//! Balancing algorithms as pure code over a server table.
//!
//! A [`ServerTable`] holds one backend's servers with their runtime state (health, admin state,
//! effective weight, current sessions) and picks a server for a new session with one of HAProxy's
//! algorithms. No I/O, no clock, no allocation per decision: the consistent-hash ring used by
//! `source` is rebuilt only when the server list is built.
//!
//! Eligibility follows HAProxy: a server is a candidate when its health check says up, its admin
//! state is `ready` (not `drain` nor `maint`) and its effective weight is not zero (weight-less
//! algorithms `first` and `source` use the configured weight only to exclude weight-0 servers).
//! Backup servers are used only when no active server is eligible, and then only the first backup
//! in id order (HAProxy with `option allbackups` off). A server at its `maxconn` is skipped; when
//! every eligible server is full the decision is [`Decision::AllFull`] and the caller queues.

use std::net::IpAddr;

use thiserror::Error;

/// Highest weight a server may have (HAProxy's limit).
pub const MAX_WEIGHT: u32 = 256;

/// Points each unit of weight places on the `source` consistent-hash ring.
const POINTS_PER_WEIGHT: u32 = 16;

/// A balancing algorithm (HAProxy's `balance` keyword).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin; honours weight changes at run time (slowstart).
    RoundRobin,
    /// Weighted round robin with the configured weights only (changes have no effect).
    StaticRr,
    /// Fewest current sessions per unit of weight; ties are broken round robin.
    LeastConn,
    /// First server in id order that still has a free slot below its maxconn.
    First,
    /// Consistent hash of the client address: a server going down moves only its own clients.
    Source,
    /// Draw `draws` servers at random by weight and keep the least loaded (power of two choices).
    Random {
        /// How many servers to draw (HAProxy's `random(<draws>)`, default 2).
        draws: u8,
    },
}

/// Administrative state of a server, set by the operator (`set server state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdminState {
    /// Takes new sessions.
    #[default]
    Ready,
    /// Keeps its sessions but takes no new ones.
    Drain,
    /// Out of service: no new sessions and no health checks.
    Maint,
}

/// What the balancer needs to know about one configured server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Server name, unique in the backend; it also seeds the server's points on the hash ring.
    pub name: String,
    /// Configured weight, 0..=256.
    pub weight: u32,
    /// Used only when no active server is eligible.
    pub backup: bool,
    /// Most concurrent sessions this server takes; `None` is unlimited.
    pub maxconn: Option<u32>,
}

/// The outcome of one balancing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Use the server at this index.
    Server(usize),
    /// Servers are eligible but every one is at its maxconn: queue the session.
    AllFull,
    /// No server is eligible (all down, in maintenance, draining or weight 0).
    NoServer,
}

/// Why a server table could not be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BalanceError {
    /// A server's weight is above [`MAX_WEIGHT`].
    #[error("server {name}: weight {weight} is above the maximum {MAX_WEIGHT}")]
    WeightTooHigh {
        /// Server name.
        name: String,
        /// The offending weight.
        weight: u32,
    },
    /// Two servers share a name.
    #[error("server name {0} is used twice in the backend")]
    DuplicateName(String),
    /// `random` with zero draws.
    #[error("random needs at least one draw")]
    ZeroDraws,
}

/// Runtime state of one server as the balancer sees it.
#[derive(Debug, Clone)]
pub struct ServerSlot {
    spec: ServerSpec,
    up: bool,
    admin: AdminState,
    /// Effective weight: the configured weight, lowered during slowstart.
    eweight: u32,
    /// Sessions currently assigned to this server.
    cur: u32,
    /// Smooth-WRR running score.
    swrr_current: i64,
}

impl ServerSlot {
    /// Configuration the slot was built from.
    pub fn spec(&self) -> &ServerSpec {
        &self.spec
    }
    /// Whether the health check considers the server up.
    pub fn is_up(&self) -> bool {
        self.up
    }
    /// Administrative state.
    pub fn admin(&self) -> AdminState {
        self.admin
    }
    /// Effective weight (slowstart ramp applied).
    pub fn eweight(&self) -> u32 {
        self.eweight
    }
    /// Current sessions.
    pub fn current(&self) -> u32 {
        self.cur
    }
    fn has_room(&self) -> bool {
        self.spec.maxconn.is_none_or(|m| self.cur < m)
    }
    /// Eligible ignoring room; `dynamic` says whether the effective weight counts.
    fn usable(&self, dynamic: bool) -> bool {
        let w = if dynamic { self.eweight } else { self.spec.weight };
        self.up && self.admin == AdminState::Ready && w > 0
    }
}

/// A backend's servers, their state and the algorithm's running state.
#[derive(Debug, Clone)]
pub struct ServerTable {
    algorithm: Algorithm,
    servers: Vec<ServerSlot>,
    /// Next index to consider for static-rr / leastconn tie breaking.
    cursor: usize,
    /// Interleaved WRR state for static-rr: position and current weight threshold.
    static_pos: usize,
    static_cw: i64,
    static_gcd: i64,
    static_max: i64,
    /// Consistent-hash ring: (point, server index), sorted by point.
    ring: Vec<(u64, u32)>,
    rng: SplitMix64,
}

impl ServerTable {
    /// Builds a table; every server starts up, ready, at full weight.
    pub fn new(algorithm: Algorithm, specs: Vec<ServerSpec>, seed: u64) -> Result<Self, BalanceError> {
        if let Algorithm::Random { draws: 0 } = algorithm {
            return Err(BalanceError::ZeroDraws);
        }
        for (i, s) in specs.iter().enumerate() {
            if s.weight > MAX_WEIGHT {
                return Err(BalanceError::WeightTooHigh { name: s.name.clone(), weight: s.weight });
            }
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(BalanceError::DuplicateName(s.name.clone()));
            }
        }
        let servers: Vec<ServerSlot> = specs
            .into_iter()
            .map(|spec| ServerSlot {
                eweight: spec.weight,
                spec,
                up: true,
                admin: AdminState::Ready,
                cur: 0,
                swrr_current: 0,
            })
            .collect();
        let mut ring = Vec::new();
        if algorithm == Algorithm::Source {
            for (idx, s) in servers.iter().enumerate() {
                let base = hash_bytes(s.spec.name.as_bytes());
                for p in 0..s.spec.weight * POINTS_PER_WEIGHT {
                    ring.push((mix64(base ^ mix64(u64::from(p) + 1)), idx as u32));
                }
            }
            ring.sort_unstable();
        }
        let weights = servers.iter().map(|s| i64::from(s.spec.weight)).filter(|w| *w > 0);
        let static_gcd = weights.clone().fold(0, gcd).max(1);
        let static_max = weights.max().unwrap_or(0);
        let n_servers = servers.len();
        Ok(Self {
            algorithm,
            servers,
            cursor: 0,
            // One before the first server, so the first step lands on server 0 with cw = max.
            static_pos: n_servers.saturating_sub(1),
            static_cw: 0,
            static_gcd,
            static_max,
            ring,
            rng: SplitMix64(seed),
        })
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }
    /// True when the backend has no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
    /// The server at `idx`.
    pub fn server(&self, idx: usize) -> Option<&ServerSlot> {
        self.servers.get(idx)
    }
    /// All servers in id order.
    pub fn servers(&self) -> &[ServerSlot] {
        &self.servers
    }
    /// Index of the server with this name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.spec.name == name)
    }

    /// Records the health check's verdict.
    pub fn set_up(&mut self, idx: usize, up: bool) {
        if let Some(s) = self.servers.get_mut(idx) {
            s.up = up;
            s.swrr_current = 0;
        }
    }
    /// Sets the operator's admin state.
    pub fn set_admin(&mut self, idx: usize, admin: AdminState) {
        if let Some(s) = self.servers.get_mut(idx) {
            s.admin = admin;
        }
    }
    /// Sets the effective weight (slowstart); clamped to the configured weight.
    pub fn set_eweight(&mut self, idx: usize, w: u32) {
        if let Some(s) = self.servers.get_mut(idx) {
            s.eweight = w.min(s.spec.weight);
        }
    }
    /// Counts a session started on `idx` (call after [`Decision::Server`] once it is used).
    pub fn session_started(&mut self, idx: usize) {
        if let Some(s) = self.servers.get_mut(idx) {
            s.cur = s.cur.saturating_add(1);
        }
    }
    /// Counts a session on `idx` as ended.
    pub fn session_ended(&mut self, idx: usize) {
        if let Some(s) = self.servers.get_mut(idx) {
            s.cur = s.cur.saturating_sub(1);
        }
    }

    /// With a client-affine algorithm (`source`), the server this client belongs to when it is
    /// usable but at its maxconn: the session may wait for that server (its `maxqueue`) rather
    /// than move to another one. `None` with other algorithms or when the server has room.
    pub fn affine_full(&self, client_hash: u64) -> Option<usize> {
        if self.algorithm != Algorithm::Source || self.ring.is_empty() {
            return None;
        }
        let h = mix64(client_hash);
        let start = self.ring.partition_point(|(p, _)| *p < h);
        let len = self.ring.len();
        let i = (0..len)
            .map(|k| self.ring[(start + k) % len].1 as usize)
            .find(|&i| !self.servers[i].spec.backup && self.servers[i].usable(false))?;
        (!self.servers[i].has_room()).then_some(i)
    }

    /// Whether server `idx` can take a session now (usable and below its maxconn).
    pub fn has_room(&self, idx: usize) -> bool {
        let dynamic = matches!(self.algorithm, Algorithm::RoundRobin | Algorithm::LeastConn | Algorithm::Random { .. });
        self.servers.get(idx).is_some_and(|s| s.usable(dynamic) && s.has_room())
    }

    /// Picks a server for a client whose address hashes to `client_hash` (see [`hash_addr`]).
    pub fn pick(&mut self, client_hash: u64) -> Decision {
        self.pick_excluding(client_hash, None)
    }

    /// Picks a server other than `exclude` when another one is available (redispatch after a
    /// failed connect); falls back to `exclude` itself when it is the only candidate.
    pub fn pick_excluding(&mut self, client_hash: u64, exclude: Option<usize>) -> Decision {
        let dynamic = matches!(
            self.algorithm,
            Algorithm::RoundRobin | Algorithm::LeastConn | Algorithm::Random { .. }
        );
        // Backups only when no active server is usable; then only the first usable backup.
        let any_active = self.servers.iter().any(|s| !s.spec.backup && s.usable(dynamic));
        if !any_active {
            return match self.servers.iter().position(|s| s.spec.backup && s.usable(dynamic)) {
                Some(i) if self.servers[i].has_room() => Decision::Server(i),
                Some(_) => Decision::AllFull,
                None => Decision::NoServer,
            };
        }
        let first = self.pick_among(client_hash, exclude, dynamic);
        match (first, exclude) {
            (Decision::AllFull | Decision::NoServer, Some(x))
                if self.servers.get(x).is_some_and(|s| !s.spec.backup && s.usable(dynamic) && s.has_room()) =>
            {
                Decision::Server(x)
            }
            (d, _) => d,
        }
    }

    /// Candidate filter: an active, usable server with room, not excluded.
    fn candidate(&self, i: usize, exclude: Option<usize>, dynamic: bool) -> bool {
        let s = &self.servers[i];
        !s.spec.backup && Some(i) != exclude && s.usable(dynamic) && s.has_room()
    }

    fn pick_among(&mut self, client_hash: u64, exclude: Option<usize>, dynamic: bool) -> Decision {
        let n = self.servers.len();
        let found = match self.algorithm {
            Algorithm::RoundRobin => self.pick_swrr(exclude),
            Algorithm::StaticRr => self.pick_static(exclude),
            Algorithm::LeastConn => self.pick_leastconn(exclude),
            Algorithm::First => (0..n).find(|&i| self.candidate(i, exclude, false)),
            Algorithm::Source => self.pick_ring(client_hash, exclude),
            Algorithm::Random { draws } => self.pick_random(draws, exclude),
        };
        match found {
            Some(i) => Decision::Server(i),
            // Usable servers exist (checked by the caller) but none had room or all were excluded.
            None if (0..n).any(|i| {
                let s = &self.servers[i];
                !s.spec.backup && s.usable(dynamic) && Some(i) != exclude
            }) =>
            {
                Decision::AllFull
            }
            None => Decision::NoServer,
        }
    }

    /// Smooth weighted round robin (nginx's): spreads picks evenly in time, honours eweight.
    fn pick_swrr(&mut self, exclude: Option<usize>) -> Option<usize> {
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for i in 0..self.servers.len() {
            if !self.candidate(i, exclude, true) {
                continue;
            }
            let w = i64::from(self.servers[i].eweight);
            self.servers[i].swrr_current += w;
            total += w;
            let cur = self.servers[i].swrr_current;
            if best.is_none_or(|b| cur > self.servers[b].swrr_current) {
                best = Some(i);
            }
        }
        let b = best?;
        self.servers[b].swrr_current -= total;
        Some(b)
    }

    /// Interleaved weighted round robin over configured weights (LVS's wrr walk).
    fn pick_static(&mut self, exclude: Option<usize>) -> Option<usize> {
        let n = self.servers.len();
        if n == 0 || self.static_max == 0 {
            return None;
        }
        // Each full cycle of cw from max down to gcd visits every server; two cycles are enough
        // to find any candidate, so the walk is bounded.
        let steps = 2 * n * (self.static_max / self.static_gcd).max(1) as usize;
        for _ in 0..steps {
            self.static_pos = (self.static_pos + 1) % n;
            if self.static_pos == 0 {
                self.static_cw -= self.static_gcd;
                if self.static_cw <= 0 {
                    self.static_cw = self.static_max;
                }
            }
            let i = self.static_pos;
            if i64::from(self.servers[i].spec.weight) >= self.static_cw && self.candidate(i, exclude, false) {
                return Some(i);
            }
        }
        None
    }

    /// Least sessions per weight; scanning starts after the last pick so ties rotate.
    fn pick_leastconn(&mut self, exclude: Option<usize>) -> Option<usize> {
        let n = self.servers.len();
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if !self.candidate(i, exclude, true) {
                continue;
            }
            best = match best {
                None => Some(i),
                Some(b) => {
                    let (s, o) = (&self.servers[i], &self.servers[b]);
                    // s.cur / s.w < o.cur / o.w, compared without division; +1 counts the new one.
                    let lhs = u64::from(s.cur + 1) * u64::from(o.eweight);
                    let rhs = u64::from(o.cur + 1) * u64::from(s.eweight);
                    if lhs < rhs { Some(i) } else { Some(b) }
                }
            };
        }
        if let Some(b) = best {
            self.cursor = (b + 1) % n.max(1);
        }
        best
    }

    /// Walks the ring clockwise from the client's point to the first candidate.
    fn pick_ring(&self, client_hash: u64, exclude: Option<usize>) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = mix64(client_hash);
        let start = self.ring.partition_point(|(p, _)| *p < h);
        let len = self.ring.len();
        (0..len)
            .map(|k| self.ring[(start + k) % len].1 as usize)
            .find(|&i| self.candidate(i, exclude, false))
    }

    /// Weighted random draws, keeping the one with the lowest load per weight.
    fn pick_random(&mut self, draws: u8, exclude: Option<usize>) -> Option<usize> {
        let total: u64 = (0..self.servers.len())
            .filter(|&i| self.candidate(i, exclude, true))
            .map(|i| u64::from(self.servers[i].eweight))
            .sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<usize> = None;
        for _ in 0..draws.max(1) {
            let mut r = self.rng.next() % total;
            let mut drawn = None;
            for i in 0..self.servers.len() {
                if !self.candidate(i, exclude, true) {
                    continue;
                }
                let w = u64::from(self.servers[i].eweight);
                if r < w {
                    drawn = Some(i);
                    break;
                }
                r -= w;
            }
            let Some(d) = drawn else { continue };
            best = match best {
                None => Some(d),
                Some(b) => {
                    let (s, o) = (&self.servers[d], &self.servers[b]);
                    let lhs = u64::from(s.cur) * u64::from(o.eweight);
                    let rhs = u64::from(o.cur) * u64::from(s.eweight);
                    if lhs < rhs { Some(d) } else { Some(b) }
                }
            };
        }
        best
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A small seeded generator (SplitMix64): reproducible picks for `random` without a dependency.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
}

/// SplitMix64's finaliser: a bijective mix that spreads nearby inputs over the ring.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over bytes: stable across processes and versions (unlike std's RandomState), so every
/// balancer node and every restart maps a client to the same server.
fn hash_bytes(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Stable hash of a client address for the `source` algorithm (the port is not part of it).
pub fn hash_addr(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_bytes(&v4.octets()),
            None => hash_bytes(&v6.octets()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn specs(weights: &[u32]) -> Vec<ServerSpec> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| ServerSpec { name: format!("s{i}"), weight: w, backup: false, maxconn: None })
            .collect()
    }

    fn counts(t: &mut ServerTable, n: usize, hash: impl Fn(usize) -> u64) -> Vec<usize> {
        let mut c = vec![0; t.len()];
        for k in 0..n {
            match t.pick(hash(k)) {
                Decision::Server(i) => c[i] += 1,
                d => panic!("unexpected {d:?}"),
            }
        }
        c
    }

    #[test]
    fn smooth_wrr_is_exact_and_interleaved() {
        let mut t = ServerTable::new(Algorithm::RoundRobin, specs(&[5, 1, 1]), 1).unwrap();
        let seq: Vec<usize> = (0..7)
            .map(|_| match t.pick(0) {
                Decision::Server(i) => i,
                d => panic!("{d:?}"),
            })
            .collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn wrr_follows_eweight_changes() {
        let mut t = ServerTable::new(Algorithm::RoundRobin, specs(&[10, 10]), 1).unwrap();
        t.set_eweight(1, 1);
        let c = counts(&mut t, 1100, |_| 0);
        assert_eq!(c, vec![1000, 100]);
    }

    #[test]
    fn static_rr_uses_configured_weights() {
        let mut t = ServerTable::new(Algorithm::StaticRr, specs(&[3, 1, 2]), 1).unwrap();
        t.set_eweight(0, 1); // ignored by static-rr
        let c = counts(&mut t, 600, |_| 0);
        assert_eq!(c, vec![300, 100, 200]);
    }

    #[test]
    fn leastconn_prefers_fewest_per_weight_and_rotates_ties() {
        let mut t = ServerTable::new(Algorithm::LeastConn, specs(&[1, 1, 2]), 1).unwrap();
        // Hold every picked session open: the weight-2 server should get twice as many.
        let mut c = [0usize; 3];
        for _ in 0..40 {
            let Decision::Server(i) = t.pick(0) else { panic!() };
            t.session_started(i);
            c[i] += 1;
        }
        assert_eq!(c, [10, 10, 20]);
        // With sessions closed right away every pick is a tie: it must rotate.
        let mut t = ServerTable::new(Algorithm::LeastConn, specs(&[1, 1, 1]), 1).unwrap();
        let seq: Vec<_> = (0..6).map(|_| t.pick(0)).collect();
        let expect: Vec<_> = [0, 1, 2, 0, 1, 2].iter().map(|&i| Decision::Server(i)).collect();
        assert_eq!(seq, expect);
    }

    #[test]
    fn first_fills_by_maxconn_in_id_order() {
        let mut sp = specs(&[1, 1, 1]);
        for s in &mut sp {
            s.maxconn = Some(2);
        }
        let mut t = ServerTable::new(Algorithm::First, sp, 1).unwrap();
        let mut order = vec![];
        for _ in 0..6 {
            let Decision::Server(i) = t.pick(0) else { panic!() };
            t.session_started(i);
            order.push(i);
        }
        assert_eq!(order, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(t.pick(0), Decision::AllFull);
        t.session_ended(1);
        assert_eq!(t.pick(0), Decision::Server(1));
    }

    #[test]
    fn backups_only_when_no_active_and_first_backup_only() {
        let mut sp = specs(&[1, 1, 1, 1]);
        sp[2].backup = true;
        sp[3].backup = true;
        let mut t = ServerTable::new(Algorithm::RoundRobin, sp, 1).unwrap();
        for _ in 0..10 {
            assert!(matches!(t.pick(0), Decision::Server(0 | 1)));
        }
        t.set_up(0, false);
        t.set_admin(1, AdminState::Maint);
        for _ in 0..10 {
            assert_eq!(t.pick(0), Decision::Server(2));
        }
        t.set_up(2, false);
        assert_eq!(t.pick(0), Decision::Server(3));
        t.set_up(3, false);
        assert_eq!(t.pick(0), Decision::NoServer);
    }

    #[test]
    fn drain_and_maint_get_no_new_sessions() {
        let mut t = ServerTable::new(Algorithm::LeastConn, specs(&[1, 1, 1]), 1).unwrap();
        t.set_admin(0, AdminState::Drain);
        t.set_admin(2, AdminState::Maint);
        for _ in 0..10 {
            assert_eq!(t.pick(0), Decision::Server(1));
        }
    }

    #[test]
    fn redispatch_avoids_the_failed_server() {
        for alg in [
            Algorithm::RoundRobin,
            Algorithm::StaticRr,
            Algorithm::LeastConn,
            Algorithm::First,
            Algorithm::Source,
            Algorithm::Random { draws: 2 },
        ] {
            let mut t = ServerTable::new(alg, specs(&[1, 1, 1]), 7).unwrap();
            for k in 0..50u64 {
                let Decision::Server(i) = t.pick_excluding(k, Some(1)) else { panic!() };
                assert_ne!(i, 1, "{alg:?}");
            }
            // Alone, the excluded server is still used.
            t.set_up(0, false);
            t.set_up(2, false);
            assert_eq!(t.pick_excluding(3, Some(1)), Decision::Server(1), "{alg:?}");
        }
    }

    #[test]
    fn source_is_sticky() {
        let mut t = ServerTable::new(Algorithm::Source, specs(&[1, 1, 1]), 1).unwrap();
        let h = hash_addr("198.18.0.9".parse().unwrap());
        let first = t.pick(h);
        for _ in 0..10 {
            assert_eq!(t.pick(h), first);
        }
        // IPv4-mapped IPv6 hashes like the IPv4 address.
        assert_eq!(hash_addr("::ffff:198.18.0.9".parse().unwrap()), h);
    }

    #[test]
    fn random_is_reproducible_by_seed() {
        let run = |seed| {
            let mut t = ServerTable::new(Algorithm::Random { draws: 2 }, specs(&[1, 1, 1, 1]), seed).unwrap();
            (0..32).map(|_| t.pick(0)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
    }

    #[test]
    fn p2c_balances_held_sessions() {
        let mut t = ServerTable::new(Algorithm::Random { draws: 2 }, specs(&[1, 1, 1, 1]), 3).unwrap();
        for _ in 0..400 {
            let Decision::Server(i) = t.pick(0) else { panic!() };
            t.session_started(i);
        }
        let cur: Vec<u32> = t.servers().iter().map(|s| s.current()).collect();
        let (min, max) = (cur.iter().min().unwrap(), cur.iter().max().unwrap());
        // Two choices keep the spread tiny (one choice would leave ~±20).
        assert!(max - min <= 4, "{cur:?}");
    }

    #[test]
    fn config_errors() {
        assert!(matches!(
            ServerTable::new(Algorithm::RoundRobin, specs(&[257]), 0),
            Err(BalanceError::WeightTooHigh { .. })
        ));
        let mut sp = specs(&[1, 1]);
        sp[1].name = "s0".into();
        assert!(matches!(ServerTable::new(Algorithm::RoundRobin, sp, 0), Err(BalanceError::DuplicateName(_))));
        assert_eq!(
            ServerTable::new(Algorithm::Random { draws: 0 }, specs(&[1]), 0).err(),
            Some(BalanceError::ZeroDraws)
        );
        let mut empty = ServerTable::new(Algorithm::StaticRr, vec![], 0).unwrap();
        assert_eq!(empty.pick(0), Decision::NoServer);
    }

    fn algorithms() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::RoundRobin),
            Just(Algorithm::StaticRr),
            Just(Algorithm::LeastConn),
            Just(Algorithm::First),
            Just(Algorithm::Source),
            (1u8..4).prop_map(|draws| Algorithm::Random { draws }),
        ]
    }

    proptest! {
        #[test]
        fn never_picks_an_ineligible_server(
            alg in algorithms(),
            servers in prop::collection::vec((0u32..8, any::<bool>(), 0u8..4, any::<bool>(), prop::option::of(1u32..3)), 1..8),
            seed in any::<u64>(),
            hashes in prop::collection::vec(any::<u64>(), 1..50),
        ) {
            let sp: Vec<ServerSpec> = servers.iter().enumerate().map(|(i, &(w, backup, _, _, maxconn))| ServerSpec {
                name: format!("s{i}"), weight: w, backup, maxconn,
            }).collect();
            let mut t = ServerTable::new(alg, sp, seed).unwrap();
            for (i, &(_, _, admin, up, _)) in servers.iter().enumerate() {
                t.set_up(i, up);
                t.set_admin(i, match admin { 0 | 3 => AdminState::Ready, 1 => AdminState::Drain, _ => AdminState::Maint });
            }
            for h in hashes {
                match t.pick(h) {
                    Decision::Server(i) => {
                        let s = t.server(i).unwrap();
                        prop_assert!(s.is_up() && s.admin() == AdminState::Ready && s.spec().weight > 0, "seed {seed}");
                        prop_assert!(s.has_room());
                        if s.spec().backup {
                            prop_assert!(!t.servers().iter().any(|o| !o.spec().backup && o.usable(true)));
                        }
                        t.session_started(i);
                    }
                    Decision::AllFull => prop_assert!(t.servers().iter().any(|s| s.usable(false))),
                    Decision::NoServer => prop_assert!(!t.servers().iter().any(|s| s.usable(true) && s.has_room())),
                }
            }
        }

        #[test]
        fn distribution_follows_weight(
            alg in prop_oneof![Just(Algorithm::RoundRobin), Just(Algorithm::StaticRr), Just(Algorithm::Random { draws: 1 })],
            weights in prop::collection::vec(1u32..10, 2..6),
            seed in any::<u64>(),
        ) {
            let total: u32 = weights.iter().sum();
            let n = 2000 * weights.len();
            let mut t = ServerTable::new(alg, specs(&weights), seed).unwrap();
            let c = counts(&mut t, n, |_| 0);
            for (i, &w) in weights.iter().enumerate() {
                let expect = n as f64 * f64::from(w) / f64::from(total);
                // Deterministic RR is exact to one cycle; random within 5 sigma.
                let tol = if matches!(alg, Algorithm::Random { .. }) { 5.0 * expect.sqrt() + 1.0 } else { f64::from(total) };
                prop_assert!((c[i] as f64 - expect).abs() <= tol, "seed {seed} alg {alg:?} server {i}: {} vs {expect}", c[i]);
            }
        }

        #[test]
        fn source_moves_only_the_removed_servers_clients(
            weights in prop::collection::vec(1u32..6, 2..7),
            down in any::<prop::sample::Index>(),
            clients in prop::collection::vec(any::<u64>(), 50..200),
        ) {
            let mut t = ServerTable::new(Algorithm::Source, specs(&weights), 0).unwrap();
            let before: Vec<Decision> = clients.iter().map(|&c| t.pick(c)).collect();
            let d = down.index(weights.len());
            t.set_up(d, false);
            for (&c, &b) in clients.iter().zip(&before) {
                let after = t.pick(c);
                if b == Decision::Server(d) {
                    prop_assert_ne!(after, Decision::Server(d));
                } else {
                    prop_assert_eq!(after, b);
                }
            }
            // And back up: every client returns to its original server.
            t.set_up(d, true);
            for (&c, &b) in clients.iter().zip(&before) {
                prop_assert_eq!(t.pick(c), b);
            }
        }
    }

    #[test]
    fn source_spreads_by_weight() {
        let mut t = ServerTable::new(Algorithm::Source, specs(&[1, 1, 2]), 0).unwrap();
        let c = counts(&mut t, 20_000, |k| hash_addr(IpAddr::from([198, 18, (k >> 8) as u8, k as u8])));
        let share = |i: usize| c[i] as f64 / 20_000.0;
        assert!((share(2) - 0.5).abs() < 0.1, "{c:?}");
        assert!((share(0) - 0.25).abs() < 0.1, "{c:?}");
    }
}

/// Long-lived connection rebalancing: the server holding the most sessions above its fair share
/// (current sessions spread by effective weight over the eligible active servers), if any holds
/// at least one more than its rounded-up share. Shedding one session there and repeating, at a
/// bounded rate, evens out connections piled on the survivors after a server comes back.
pub fn most_overloaded(t: &ServerTable) -> Option<usize> {
    let eligible = |s: &ServerSlot| !s.spec.backup && s.usable(true);
    let (total, wsum) = t
        .servers
        .iter()
        .filter(|s| eligible(s))
        .fold((0u64, 0u64), |(c, w), s| (c + u64::from(s.cur), w + u64::from(s.eweight)));
    if wsum == 0 {
        return None;
    }
    t.servers
        .iter()
        .enumerate()
        .filter(|(_, s)| eligible(s))
        .map(|(i, s)| {
            let share = (total * u64::from(s.eweight)).div_ceil(wsum);
            (i, u64::from(s.cur).saturating_sub(share))
        })
        .filter(|&(_, excess)| excess > 0)
        .max_by_key(|&(i, excess)| (excess, std::cmp::Reverse(i)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod rebalance_tests {
    use super::*;

    #[test]
    fn sheds_from_the_pile_until_even() {
        let specs = (0..3).map(|i| ServerSpec { name: format!("s{i}"), weight: 1, backup: false, maxconn: None }).collect();
        let mut t = ServerTable::new(Algorithm::LeastConn, specs, 0).unwrap();
        // s2 was down: 12 watches piled on s0 and s1.
        t.set_up(2, false);
        for _ in 0..12 {
            let Decision::Server(i) = t.pick(0) else { panic!() };
            t.session_started(i);
        }
        assert_eq!(most_overloaded(&t), None, "balanced among the survivors");
        t.set_up(2, true);
        let mut shed = 0;
        while let Some(i) = most_overloaded(&t) {
            assert_ne!(i, 2);
            t.session_ended(i);
            // The client reconnects and the balancer places it.
            let Decision::Server(j) = t.pick(0) else { panic!() };
            t.session_started(j);
            shed += 1;
            assert!(shed <= 12, "rebalancing does not converge");
        }
        let cur: Vec<u32> = t.servers().iter().map(|s| s.current()).collect();
        assert_eq!(cur, vec![4, 4, 4]);
        assert_eq!(shed, 4);
    }

    #[test]
    fn weights_and_ineligible_servers() {
        let specs = vec![
            ServerSpec { name: "a".into(), weight: 3, backup: false, maxconn: None },
            ServerSpec { name: "b".into(), weight: 1, backup: false, maxconn: None },
            ServerSpec { name: "c".into(), weight: 1, backup: true, maxconn: None },
        ];
        let mut t = ServerTable::new(Algorithm::RoundRobin, specs, 0).unwrap();
        for _ in 0..6 {
            t.session_started(0);
        }
        for _ in 0..2 {
            t.session_started(1);
        }
        // 8 sessions, shares 6 and 2: balanced.
        assert_eq!(most_overloaded(&t), None);
        t.session_started(1);
        t.session_started(1);
        assert_eq!(most_overloaded(&t), Some(1));
        // A draining server is not a target and its sessions are not counted.
        t.set_admin(1, AdminState::Drain);
        assert_eq!(most_overloaded(&t), None);
    }

    #[test]
    fn a_full_affine_server_is_reported_for_source_only() {
        let specs = (0..3).map(|i| ServerSpec { name: format!("s{i}"), weight: 1, backup: false, maxconn: Some(1) }).collect();
        let mut t = ServerTable::new(Algorithm::Source, specs, 1).unwrap();
        let h = hash_addr("198.18.0.9".parse().unwrap());
        let Decision::Server(i) = t.pick(h) else { panic!("no server") };
        assert_eq!(t.affine_full(h), None, "room left");
        t.session_started(i);
        assert_eq!(t.affine_full(h), Some(i));
        assert!(!t.has_room(i));
        // The plain pick moves the client to another server on the ring.
        assert!(matches!(t.pick(h), Decision::Server(j) if j != i));
        t.set_up(i, false);
        assert_eq!(t.affine_full(h), None, "a down server is nobody's");
        let specs = (0..2).map(|i| ServerSpec { name: format!("s{i}"), weight: 1, backup: false, maxconn: Some(0) }).collect();
        let t = ServerTable::new(Algorithm::RoundRobin, specs, 1).unwrap();
        assert_eq!(t.affine_full(h), None);
    }
}
