//! Mode http: an HTTP/1.1 reverse proxy in front of the kube-apiservers (and any HTTP service).
//!
//! Heads are parsed with httparse rather than hyper: the balancer never needs a decoded body
//! or an HTTP client/server stack, only where each message starts and ends, a few headers
//! (Host, Connection, Content-Length, Transfer-Encoding, Upgrade) and a rewrite of the
//! connection headers. httparse is a zero-copy, allocation-free scanner, so one request costs one
//! parse and one copy of its head, bodies pass through untouched (chunked included), and after
//! an Upgrade the connection can be handed to the same splice relay as tcp mode, which hyper's
//! connection ownership would not allow.
//!
//! - [`head`]: request/response head parse and rewrite (framing, keep-alive, X-Forwarded-For).
//! - [`chunked`]: where a chunked body ends, without decoding it.
//! - [`answer`]: the 200/400/408/502/503/504 answers the balancer writes itself.
//! - [`route`]: routing by host and path prefix.
//! - [`io`]: client stream (plain/TLS), bounded buffer, body streaming, copying tunnel.
//! - `session`: one client connection's lifecycle (keep-alive loop, exchange, upgrade).
//! - [`frontend`]: listeners, backends, idle server connection pools, counters, drain.

pub mod answer;
pub mod chunked;
pub mod frontend;
pub mod head;
pub mod io;
pub mod route;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};

pub use frontend::{HttpFrontend, HttpFrontendConfig, HttpFrontendStats, HttpTimeouts};
pub use route::HttpRoute;

/// Per-server (and per-backend-frontend) HTTP counters, kept beside the session counters.
#[derive(Debug, Default)]
pub struct HttpCounters {
    pub(crate) requests: AtomicU64,
    responses: [AtomicU64; 6],
}

impl HttpCounters {
    /// Counts a response by status class (1xx..5xx, other).
    pub(crate) fn response(&self, status: u16) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.responses[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> HttpSnapshot {
        HttpSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            responses: [0, 1, 2, 3, 4, 5].map(|i| self.responses[i].load(Ordering::Relaxed)),
        }
    }
}

/// HTTP request and response counts (HAProxy's `req_tot`, `hrsp_1xx` … `hrsp_other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpSnapshot {
    /// Requests sent to servers.
    pub requests: u64,
    /// Responses by class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
    pub responses: [u64; 6],
}
