//! tcp-balancer: the L4 data path of hastack's HAProxy replacement.
//!
//! - [`balance`]: balancing algorithms over a server table (pure code).
//! - [`handover`]: listening sockets passed to a new process on reload (SCM_RIGHTS).
//! - [`http`]: mode http (HTTP/1.1 keep-alive, chunked, Upgrade, routing by host/path, monitor-uri).
//! - [`tls`]: TLS termination on a frontend (http mode and tcp mode).
//! - [`health`]: HAProxy-style health-check state machine (sans-IO) and check conversations.
//! - [`checker`]: the tokio task that runs health checks (TCP, HTTP, HTTPS, TLS hello, MySQL).
//! - [`from_config`]: maps the `[balancer]` config section onto the runtime's structs.
//! - [`proxy`]: tcp-mode frontends: listener, balancing, queueing, retries, counters, drain.
//! - [`proxy_protocol`]: PROXY protocol v1/v2 parse and emit (accept-proxy, send-proxy).
//! - [`relay`]: the zero-copy (splice) or copy full-duplex relay with half-close and timeouts.
//! - [`sni`]: the server name of a TLS ClientHello, for SNI routing of TLS passthrough.
//! - [`stats`]: `show stat` CSV and Prometheus renderings of the counters.
//! - [`router`]: TLS passthrough with routing by SNI in tcp mode.
//! - [`runtime`]: every frontend of a config running, with the admin API (`show stat`, ...).

pub mod balance;
pub mod config;
pub mod from_config;
pub mod checker;
pub mod handover;
pub mod health;
pub mod http;
pub mod proxy;
pub mod proxy_protocol;
pub mod relay;
pub mod router;
pub mod runtime;
pub mod sni;
pub mod stats;
pub mod tls;
