//! Per-client rate limit for UDP queries: a token bucket per source address.
//!
//! Bucket lifecycle: `absent` → first query creates it full (`burst` tokens) → each query takes
//! one token, tokens refill at `rate` per second up to `burst` → when the table is over its bound,
//! buckets that have refilled completely (idle clients) are forgotten. TCP is not limited: a TCP
//! client has proved its address, and the limit exists against spoofed-source floods.

use std::net::IpAddr;
use std::time::Instant;

use hashbrown::HashMap;

/// Rate-limit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained queries per second per client.
    pub queries_per_second: u32,
    /// Bucket size (queries allowed in a burst).
    pub burst: u32,
}

/// Token buckets by client address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// Queries refused so far.
    pub limited: u64,
}

impl RateLimiter {
    /// A limiter remembering at most `max_clients` addresses.
    pub fn new(cfg: RateLimitConfig, max_clients: usize) -> RateLimiter {
        RateLimiter {
            rate: f64::from(cfg.queries_per_second.max(1)),
            burst: f64::from(cfg.burst.max(1)),
            max_clients: max_clients.max(1),
            buckets: HashMap::new(),
            limited: 0,
        }
    }

    /// May `ip` send a query at `now`?
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= self.max_clients && !self.buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, last)| *tokens + now.saturating_duration_since(*last).as_secs_f64() * rate < burst);
            if self.buckets.len() >= self.max_clients {
                // Every tracked client is busy: fail open rather than grow without bound.
                self.buckets.clear();
            }
        }
        let (tokens, last) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.limited += 1;
            false
        }
    }

    /// Addresses currently tracked.
    pub fn clients(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(RateLimitConfig { queries_per_second: 10, burst: 20 }, 100);
        let ip: IpAddr = "127.0.0.5".parse().unwrap();
        let other: IpAddr = "127.0.0.6".parse().unwrap();
        assert_eq!((0..30).filter(|_| r.allow(ip, t0)).count(), 20);
        assert!(r.allow(other, t0), "other clients are not affected");
        // One second later: 10 more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..30).filter(|_| r.allow(ip, t1)).count(), 10);
        assert_eq!(r.limited, 30);
    }

    #[test]
    fn table_is_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(RateLimitConfig { queries_per_second: 1, burst: 5 }, 64);
        for i in 0..10_000u32 {
            r.allow(IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + i)), t0 + Duration::from_millis(u64::from(i)));
            assert!(r.clients() <= 64);
        }
    }
}
