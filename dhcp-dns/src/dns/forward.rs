//! Forwarding of names we are not authoritative for: upstream choice (per-domain servers, then
//! the defaults), a bounded TTL-respecting cache with RFC 2308 negative caching, response
//! validation (source, id, question) and DNS-rebinding protection. The socket work is in
//! [`crate::server`]; everything here is pure and takes `now`.
//!
//! Cache entry lifecycle: `absent` → (upstream answer with TTL > 0, or a negative answer with an
//! SOA) `fresh` → (age ≥ TTL) `expired` (removed on the next lookup or when space is needed).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hashbrown::{Equivalent, HashMap};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::zone::norm;

/// Forwarding settings.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Default upstream servers, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Upstreams for a domain and everything under it (dnsmasq `server=/domain/addr`).
    pub domains: Vec<(String, Vec<SocketAddr>)>,
    /// Most cached answers (dnsmasq `cache-size`); 0 disables the cache.
    pub cache_size: usize,
    /// Longest time a positive answer is kept, seconds.
    pub max_ttl: u32,
    /// Longest time a negative answer is kept, seconds (dnsmasq `neg-ttl` cap).
    pub max_negative_ttl: u32,
    /// Time to wait for one upstream before trying the next.
    pub timeout: Duration,
    /// Refuse upstream answers pointing into private/loopback/link-local space.
    pub rebind_protection: bool,
    /// Domains exempt from rebinding protection.
    pub rebind_allow: Vec<String>,
    /// Most forwarded queries in flight; beyond it queries get SERVFAIL (no small fixed cap).
    pub max_in_flight: usize,
    /// How long a negative upstream answer without an SOA is cached (dnsmasq `neg-ttl`); 0: not.
    pub negative_ttl_without_soa: u32,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            upstreams: Vec::new(),
            domains: Vec::new(),
            cache_size: 10_000,
            max_ttl: 86_400,
            max_negative_ttl: 3600,
            timeout: Duration::from_secs(2),
            rebind_protection: true,
            rebind_allow: Vec::new(),
            max_in_flight: 16_384,
            negative_ttl_without_soa: 0,
        }
    }
}

fn under(name: &str, suffix: &str) -> bool {
    name == suffix || (name.len() > suffix.len() && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
}

impl ForwardConfig {
    /// The servers for `name` (normalised): the longest matching domain's, else the defaults.
    pub fn upstreams_for(&self, name: &str) -> &[SocketAddr] {
        self.domains
            .iter()
            .filter(|(d, _)| under(name, &norm(d)))
            .max_by_key(|(d, _)| d.len())
            .map(|(_, u)| u.as_slice())
            .unwrap_or(&self.upstreams)
    }

    /// Is `name` exempt from rebinding protection?
    pub fn rebind_allowed(&self, name: &str) -> bool {
        !self.rebind_protection || self.rebind_allow.iter().any(|d| under(name, &norm(d)))
    }
}

/// An address a public name should never resolve to (RFC 1918, CGNAT, loopback, link-local,
/// unspecified, ULA).
pub fn is_rebind_target(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => {
            let o = v.octets();
            v.is_private() || v.is_loopback() || v.is_link_local() || v.is_unspecified() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v) => {
            let s = v.segments();
            v.is_loopback() || v.is_unspecified() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
                || v.to_ipv4_mapped().is_some_and(|m| is_rebind_target(IpAddr::V4(m)))
        }
    }
}

/// Does this upstream answer try to point a public name into our networks?
pub fn has_rebind_answer(resp: &Message) -> bool {
    resp.answers.iter().any(|r| match &r.data {
        RData::A(a) => is_rebind_target(IpAddr::V4(a.0)),
        RData::AAAA(a) => is_rebind_target(IpAddr::V6(a.0)),
        _ => false,
    })
}

/// Is `resp` the answer to `sent` (same id and question)? Guards against spoofed/stray packets.
pub fn matches_query(sent: &Message, resp: &Message) -> bool {
    resp.metadata.id == sent.metadata.id
        && resp.queries.len() == sent.queries.len()
        && resp.queries.iter().zip(&sent.queries).all(|(a, b)| {
            a.query_type() == b.query_type()
                && a.query_class() == b.query_class()
                && norm(&a.name().to_ascii()) == norm(&b.name().to_ascii())
        })
}

/// Cache key: lowercase name, type, class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    name: String,
    qtype: u16,
    qclass: u16,
}

impl CacheKey {
    /// Key of the (single) question of `m`.
    pub fn of(m: &Message) -> Option<CacheKey> {
        let q = m.queries.first()?;
        Some(CacheKey { name: norm(&q.name().to_ascii()), qtype: u16::from(q.query_type()), qclass: u16::from(q.query_class()) })
    }
}

/// A borrowed [`CacheKey`] (same hash), so the wire fast path looks up without allocating.
#[derive(Hash)]
pub(crate) struct CacheKeyRef<'a> {
    /// Lowercase name without the trailing dot.
    pub name: &'a str,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
}

impl Equivalent<CacheKey> for CacheKeyRef<'_> {
    fn equivalent(&self, k: &CacheKey) -> bool {
        self.name == k.name && self.qtype == k.qtype && self.qclass == k.qclass
    }
}

#[derive(Debug, Clone)]
struct Entry {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    stored: Instant,
    ttl: u32,
    /// The answer and authority sections in wire form, names uncompressed (so they can be copied
    /// after any question), with the offset of each record's TTL; `None` if encoding failed.
    wire: Option<WireSections>,
}

#[derive(Debug, Clone)]
struct WireSections {
    bytes: Vec<u8>,
    ttl_at: Vec<usize>,
    answers: u16,
    authorities: u16,
}

impl WireSections {
    fn encode(answers: &[Record], authorities: &[Record]) -> Option<WireSections> {
        let mut bytes = Vec::new();
        let mut starts = Vec::with_capacity(answers.len() + authorities.len());
        {
            let mut enc = BinEncoder::new(&mut bytes);
            enc.set_name_encoding(NameEncoding::Uncompressed);
            for r in answers.iter().chain(authorities) {
                starts.push(enc.offset());
                r.emit(&mut enc).ok()?;
            }
        }
        // TTL: after the owner name, type (2) and class (2).
        let mut ttl_at = Vec::with_capacity(starts.len());
        for s in starts {
            let mut i = s;
            loop {
                let l = usize::from(*bytes.get(i)?);
                if l & 0xC0 != 0 {
                    return None; // a compression pointer after all: not position-independent
                }
                i += 1 + l;
                if l == 0 {
                    break;
                }
            }
            ttl_at.push(i + 4);
        }
        Some(WireSections { bytes, ttl_at, answers: u16::try_from(answers.len()).ok()?, authorities: u16::try_from(authorities.len()).ok()? })
    }
}

/// A cached answer in wire form, borrowed from the cache ([`DnsCache::get_wire`]).
pub(crate) struct WireHit<'a> {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// Answer records in `bytes`.
    pub answers: u16,
    /// Authority records after them.
    pub authorities: u16,
    /// The records, TTLs as stored.
    pub bytes: &'a [u8],
    /// Offsets of the TTLs in `bytes`.
    pub ttl_at: &'a [usize],
    /// Seconds to take off every TTL.
    pub age: u32,
}

/// A cached answer, TTLs already reduced by its age.
#[derive(Debug, Clone)]
pub struct Cached {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the SOA of negative answers).
    pub authorities: Vec<Record>,
}

/// Counters of the cache.
#[derive(Debug, Default, Clone)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups not in the cache.
    pub misses: u64,
    /// Entries pushed out for space.
    pub evictions: u64,
    /// Negative answers stored.
    pub negative_stored: u64,
}

/// The bounded answer cache.
#[derive(Debug)]
pub struct DnsCache {
    map: HashMap<CacheKey, Entry>,
    cap: usize,
    max_ttl: u32,
    max_negative_ttl: u32,
    negative_ttl_without_soa: u32,
    stats: CacheStats,
}

impl DnsCache {
    /// A cache of at most `cap` answers.
    pub fn new(cap: usize, max_ttl: u32, max_negative_ttl: u32) -> DnsCache {
        DnsCache { map: HashMap::new(), cap, max_ttl, max_negative_ttl, negative_ttl_without_soa: 0, stats: CacheStats::default() }
    }

    /// Also cache negative answers that carry no SOA, for `ttl` seconds (0: never).
    pub fn with_negative_ttl_without_soa(mut self, ttl: u32) -> DnsCache {
        self.negative_ttl_without_soa = ttl;
        self
    }

    /// Number of entries (fresh or not yet collected).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// A fresh answer for `key` at `now`.
    pub fn get(&mut self, key: &CacheKey, now: Instant) -> Option<Cached> {
        let Some(e) = self.map.get(key) else {
            self.stats.misses += 1;
            return None;
        };
        let age = now.saturating_duration_since(e.stored).as_secs();
        if age >= u64::from(e.ttl) {
            self.map.remove(key);
            self.stats.misses += 1;
            return None;
        }
        self.stats.hits += 1;
        let age = age as u32;
        let dec = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        Some(Cached { rcode: e.rcode, answers: dec(&e.answers), authorities: dec(&e.authorities) })
    }

    /// A fresh answer for `key` at `now` in wire form (no allocation, one hash lookup); `None`
    /// when absent, expired or not encodable. An expired entry stays until the forwarded answer
    /// replaces it or space is needed (the wire path only reads).
    pub(crate) fn get_wire(&mut self, key: &CacheKeyRef<'_>, now: Instant) -> Option<WireHit<'_>> {
        let stats = &mut self.stats;
        let Some(e) = self.map.get(key) else {
            stats.misses += 1;
            return None;
        };
        let age = now.saturating_duration_since(e.stored).as_secs();
        if age >= u64::from(e.ttl) {
            stats.misses += 1;
            return None;
        }
        stats.hits += 1;
        let w = e.wire.as_ref()?;
        Some(WireHit {
            rcode: e.rcode,
            answers: w.answers,
            authorities: w.authorities,
            bytes: &w.bytes,
            ttl_at: &w.ttl_at,
            age: age as u32,
        })
    }

    /// Store an upstream response (if cacheable).
    pub fn insert(&mut self, key: CacheKey, resp: &Message, now: Instant) {
        if self.cap == 0 || resp.metadata.truncation {
            return;
        }
        let rcode = resp.metadata.response_code;
        let negative = rcode == ResponseCode::NXDomain || (rcode == ResponseCode::NoError && resp.answers.is_empty());
        let ttl = if negative {
            // RFC 2308 §5: negative TTL = min(SOA TTL, SOA MINIMUM); no SOA, no caching.
            let soa = resp.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                _ => None,
            });
            match soa {
                Some(t) => t.min(self.max_negative_ttl),
                None if self.negative_ttl_without_soa > 0 => self.negative_ttl_without_soa.min(self.max_negative_ttl),
                None => return,
            }
        } else if rcode == ResponseCode::NoError {
            resp.answers.iter().map(|r| r.ttl).min().unwrap_or(0).min(self.max_ttl)
        } else {
            return;
        };
        if ttl == 0 {
            return;
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.make_room(now);
        }
        if negative {
            self.stats.negative_stored += 1;
        }
        let clip = |rs: &[Record]| -> Vec<Record> {
            rs.iter()
                .filter(|r| r.record_type() != RecordType::OPT)
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.min(if negative { ttl } else { self.max_ttl });
                    r
                })
                .collect()
        };
        let (answers, authorities) = (clip(&resp.answers), clip(&resp.authorities));
        let wire = WireSections::encode(&answers, &authorities);
        let e = Entry { rcode, answers, authorities, stored: now, ttl, wire };
        self.map.insert(key, e);
    }

    fn make_room(&mut self, now: Instant) {
        let before = self.map.len();
        self.map.retain(|_, e| now.saturating_duration_since(e.stored).as_secs() < u64::from(e.ttl));
        if self.map.len() >= self.cap {
            // Still full of fresh entries: drop the eighth closest to expiry.
            let mut left: Vec<(u64, CacheKey)> = self
                .map
                .iter()
                .map(|(k, e)| (u64::from(e.ttl).saturating_sub(now.saturating_duration_since(e.stored).as_secs()), k.clone()))
                .collect();
            left.sort_by_key(|(t, _)| *t);
            for (_, k) in left.into_iter().take((self.cap / 8).max(1)) {
                self.map.remove(&k);
            }
        }
        self.stats.evictions += (before - self.map.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Name;
    use std::net::Ipv4Addr;

    fn resp(name: &str, rcode: ResponseCode, a_ttl: Option<u32>, soa: Option<(u32, u32)>) -> Message {
        let n = Name::from_ascii(name).unwrap();
        let mut m = Message::response(7, hickory_proto::op::OpCode::Query);
        m.add_query(Query::query(n.clone(), RecordType::A));
        m.metadata.response_code = rcode;
        if let Some(t) = a_ttl {
            m.add_answer(Record::from_rdata(n.clone(), t, RData::A(A(Ipv4Addr::new(203, 0, 113, 5)))));
        }
        if let Some((ttl, min)) = soa {
            let s = SOA::new(Name::from_ascii("ns.example.").unwrap(), Name::from_ascii("h.example.").unwrap(), 1, 1, 1, 1, min);
            m.add_authority(Record::from_rdata(Name::from_ascii("example.").unwrap(), ttl, RData::SOA(s)));
        }
        m
    }

    #[test]
    fn positive_answers_expire_with_their_ttl() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(10, 86400, 3600);
        let m = resp("www.example.", ResponseCode::NoError, Some(60), None);
        let k = CacheKey::of(&m).unwrap();
        c.insert(k.clone(), &m, t0);
        let hit = c.get(&k, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!(hit.answers[0].ttl, 40);
        assert!(c.get(&k, t0 + Duration::from_secs(60)).is_none());
        assert_eq!(c.stats().hits, 1);
        // Case-insensitive key.
        let m2 = resp("WWW.Example.", ResponseCode::NoError, Some(60), None);
        assert_eq!(CacheKey::of(&m2), Some(k));
    }

    #[test]
    fn negative_answers_use_soa_minimum_and_are_capped() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(10, 86400, 100);
        let m = resp("nx.example.", ResponseCode::NXDomain, None, Some((300, 50)));
        let k = CacheKey::of(&m).unwrap();
        c.insert(k.clone(), &m, t0);
        assert_eq!(c.get(&k, t0 + Duration::from_secs(49)).unwrap().rcode, ResponseCode::NXDomain);
        assert!(c.get(&k, t0 + Duration::from_secs(50)).is_none());
        let m = resp("nx2.example.", ResponseCode::NXDomain, None, Some((3000, 5000)));
        let k = CacheKey::of(&m).unwrap();
        c.insert(k.clone(), &m, t0);
        assert!(c.get(&k, t0 + Duration::from_secs(99)).is_some());
        assert!(c.get(&k, t0 + Duration::from_secs(100)).is_none(), "capped by max_negative_ttl");
        // Without an SOA a negative answer is not cached (RFC 2308 §5).
        let m = resp("nx3.example.", ResponseCode::NXDomain, None, None);
        let k = CacheKey::of(&m).unwrap();
        c.insert(k.clone(), &m, t0);
        assert!(c.get(&k, t0).is_none());
        // ... unless configured (dnsmasq neg-ttl).
        let mut c2 = DnsCache::new(10, 86400, 100).with_negative_ttl_without_soa(10);
        c2.insert(k.clone(), &m, t0);
        assert!(c2.get(&k, t0 + Duration::from_secs(9)).is_some());
        assert!(c2.get(&k, t0 + Duration::from_secs(10)).is_none());
        // SERVFAIL is never cached.
        let m = resp("sf.example.", ResponseCode::ServFail, None, Some((300, 300)));
        let k = CacheKey::of(&m).unwrap();
        c.insert(k.clone(), &m, t0);
        assert!(c.get(&k, t0).is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let t0 = Instant::now();
        let mut c = DnsCache::new(64, 86400, 3600);
        for i in 0..1000 {
            let m = resp(&format!("h{i}.example."), ResponseCode::NoError, Some(100 + i), None);
            c.insert(CacheKey::of(&m).unwrap(), &m, t0);
            assert!(c.len() <= 64);
        }
        assert!(c.stats().evictions > 0);
    }

    #[test]
    fn upstream_choice_and_rebind() {
        let cfg = ForwardConfig {
            upstreams: vec!["127.0.0.1:53".parse().unwrap()],
            domains: vec![("corp.example".into(), vec!["127.0.0.2:53".parse().unwrap()]), ("x.corp.example".into(), vec!["127.0.0.3:53".parse().unwrap()])],
            rebind_allow: vec!["lan.example".into()],
            ..ForwardConfig::default()
        };
        assert_eq!(cfg.upstreams_for("a.corp.example")[0].ip().to_string(), "127.0.0.2");
        assert_eq!(cfg.upstreams_for("a.x.corp.example")[0].ip().to_string(), "127.0.0.3");
        assert_eq!(cfg.upstreams_for("notcorp.example")[0].ip().to_string(), "127.0.0.1");
        assert!(cfg.rebind_allowed("nas.lan.example") && !cfg.rebind_allowed("evil.example"));
        for a in ["10.1.2.3", "192.168.1.1", "127.0.0.1", "169.254.1.1", "100.64.0.1", "fd00::1", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(is_rebind_target(a.parse().unwrap()), "{a}");
        }
        for a in ["203.0.113.5", "8.8.8.8", "2001:db8::1"] {
            assert!(!is_rebind_target(a.parse().unwrap()), "{a}");
        }
    }
}
