//! Serde types of the `[balancer]` section (owned by the config work), with HAProxy's meaning.
//!
//! ```toml
//! [balancer]
//! maxconn = 20000
//! [balancer.timeouts]
//! connect = "5s"
//! [[balancer.frontend]]
//! name = "kube-apiserver"
//! bind = ["198.18.0.100:6443"]
//! freebind = true
//! backend = "apiservers"
//! [[balancer.backend]]
//! name = "apiservers"
//! balance = "roundrobin"
//! check = { type = "https", uri = "/readyz", expect_status = ["200"], verify = "none" }
//! [[balancer.backend.server]]
//! name = "api1"
//! address = "198.18.0.21:6443"
//! ```
//!
//! This module does not depend on the proxy's own types: the daemon maps these onto them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use hastack_common::{
    HostPort, HumanDuration, KeyPath, Problem, Problems, SockAddr, check_unique, names::check_name,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Highest server weight (HAProxy's).
pub const MAX_WEIGHT: u32 = 256;

/// `[balancer]`: global settings, timeouts, frontends and backends.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConfig {
    /// Most concurrent client connections over all frontends (default 20000).
    #[serde(default = "default_maxconn")]
    pub maxconn: u32,
    /// Worker threads (default: one per core).
    pub threads: Option<u32>,
    /// Relay tcp-mode bytes with splice(2) (zero-copy) when possible (default true).
    #[serde(default = "default_true")]
    pub splice: bool,
    /// After a reload, the longest an old process may keep connections it could not hand over.
    pub hard_stop_after: Option<HumanDuration>,
    /// Refuse to start when the descriptor limit cannot be raised to what `maxconn` needs
    /// (HAProxy's `strict-limits`); otherwise a warning says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict_limits: bool,
    /// Session timeouts, `[balancer.timeouts]`.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// TCP keepalive and TCP_USER_TIMEOUT on both legs, `[balancer.keepalive]`.
    #[serde(default)]
    pub keepalive: Keepalive,
    /// `[[balancer.frontend]]`.
    #[serde(rename = "frontend", default)]
    pub frontends: Vec<Frontend>,
    /// `[[balancer.backend]]`.
    #[serde(rename = "backend", default)]
    pub backends: Vec<Backend>,
}

fn default_maxconn() -> u32 {
    20_000
}
fn default_true() -> bool {
    true
}

/// `[balancer.timeouts]`: HAProxy's `timeout` keywords.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a server (default 5s).
    pub connect: HumanDuration,
    /// Client inactivity (default 20s).
    pub client: HumanDuration,
    /// Server inactivity (default 20s).
    pub server: HumanDuration,
    /// Inactivity once both sides are connected, replacing client/server (watches, exec, WebSocket).
    pub tunnel: Option<HumanDuration>,
    /// Waiting in a queue for a free server slot (default: `connect`).
    pub queue: Option<HumanDuration>,
    /// Client inactivity after one side closed (default: `client`).
    pub client_fin: Option<HumanDuration>,
    /// Server inactivity after one side closed (default: `server`).
    pub server_fin: Option<HumanDuration>,
    /// A whole HTTP request header must arrive within this (http mode; default 10s).
    pub http_request: HumanDuration,
    /// Idle time between requests of a keep-alive client connection (http mode; default 10s).
    pub http_keep_alive: HumanDuration,
    /// One health check, connect included (default: the check's `inter`).
    pub check: Option<HumanDuration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: HumanDuration::from_secs(5),
            client: HumanDuration::from_secs(20),
            server: HumanDuration::from_secs(20),
            tunnel: None,
            queue: None,
            client_fin: None,
            server_fin: None,
            http_request: HumanDuration::from_secs(10),
            http_keep_alive: HumanDuration::from_secs(10),
            check: None,
        }
    }
}

/// `[balancer.keepalive]`: so that a dead peer on either leg is noticed (watch clients hang otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    /// Enable SO_KEEPALIVE on both legs (default true).
    pub enabled: bool,
    /// Idle time before the first probe (default 30s).
    pub idle: HumanDuration,
    /// Time between probes (default 10s).
    pub interval: HumanDuration,
    /// Probes before the connection is dropped (default 3).
    pub count: u32,
    /// TCP_USER_TIMEOUT: longest time sent data may stay unacknowledged (default 60s; 0s = off).
    pub user_timeout: HumanDuration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            enabled: true,
            idle: HumanDuration::from_secs(30),
            interval: HumanDuration::from_secs(10),
            count: 3,
            user_timeout: HumanDuration::from_secs(60),
        }
    }
}

/// Proxy mode of a frontend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Layer-4 relay, zero-copy where possible (default).
    #[default]
    Tcp,
    /// HTTP/1.1 with keep-alive, routing by host and path, Upgrade passed through.
    Http,
}

/// `tls = { cert, key }` on a frontend: terminate TLS with this certificate.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// ALPN protocols offered (default none).
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Further certificates, chosen by the server name (SNI) the client asks for: the first
    /// whose names (subjectAltName, wildcards included) cover it; `cert` serves the rest
    /// (HAProxy's several `crt` / crt-list on one bind).
    #[serde(default)]
    pub sni_certs: Vec<CertKey>,
}

/// A certificate chain and its private key (PEM files; the same file may hold both).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One `[[balancer.frontend.route]]`: which backend serves a matching connection or request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Matches the HTTP Host header, port ignored (http mode); `*.example.com` matches subdomains.
    pub host: Option<String>,
    /// Matches requests whose path starts with this (http mode).
    pub path_prefix: Option<String>,
    /// Matches the TLS SNI of the ClientHello (tcp mode: TLS passthrough).
    pub sni: Option<String>,
    /// The backend to use.
    pub backend: String,
}

/// One `[[balancer.frontend]]`: where clients connect.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Frontend {
    /// Unique frontend name.
    pub name: String,
    /// Listening addresses with ports, IPv4 and IPv6.
    pub bind: Vec<SockAddr>,
    /// IP_FREEBIND: listen on an address that is not local yet (a VIP held by another node).
    #[serde(default)]
    pub freebind: bool,
    /// tcp (default) or http.
    #[serde(default)]
    pub mode: Mode,
    /// Expect a PROXY protocol v1/v2 header from clients (a balancer in front of this one).
    #[serde(default)]
    pub accept_proxy: bool,
    /// Most concurrent connections on this frontend (default: the global maxconn).
    pub maxconn: Option<u32>,
    /// listen(2) backlog (default 1024).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// The backend for connections no route matches.
    pub backend: Option<String>,
    /// Terminate TLS on this frontend.
    pub tls: Option<FrontendTls>,
    /// Routes, tried in order.
    #[serde(rename = "route", default)]
    pub routes: Vec<Route>,
    /// http mode: answer 200 on this path without forwarding (HAProxy's monitor-uri).
    pub monitor_uri: Option<String>,
    /// http mode: add X-Forwarded-For (HAProxy's option forwardfor).
    #[serde(default)]
    pub forwarded_for: bool,
}

fn default_backlog() -> u32 {
    1024
}

/// A balancing algorithm (HAProxy's `balance`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted round robin, dynamic weights (default).
    #[default]
    Roundrobin,
    /// Weighted round robin with static weights.
    StaticRr,
    /// Fewest sessions per unit of weight.
    Leastconn,
    /// First server with a free slot.
    First,
    /// Consistent hash of the client address.
    Source,
    /// Random with `random_draws` choices (power of two choices).
    Random,
}

/// Health check conversation type (HAProxy's check options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckType {
    /// TCP connect only (default).
    #[default]
    Tcp,
    /// `option httpchk` over plain TCP.
    Http,
    /// `option httpchk` + `check-ssl`.
    Https,
    /// `option ssl-hello-chk`.
    SslHello,
    /// `option mysql-check`.
    Mysql,
}

/// Certificate verification of TLS checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// `verify none`: any certificate is accepted (default; kube-apiservers use a private CA).
    #[default]
    None,
    /// The chain must lead to a CA in `ca_file`.
    Required,
}

/// An HTTP status matcher: `"200"`, `"2xx"` or `"200-399"`, stored as an inclusive range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatusRange(pub u16, pub u16);

impl std::str::FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not a status, like \"200\", \"2xx\" or \"200-399\"");
        let t = s.trim();
        let code = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(bad)
        };
        if let Some(d) = t.strip_suffix("xx") {
            let c = d
                .parse::<u16>()
                .ok()
                .filter(|c| (1..=5).contains(c))
                .ok_or_else(bad)?;
            return Ok(Self(c * 100, c * 100 + 99));
        }
        if let Some((a, b)) = t.split_once('-') {
            let (a, b) = (code(a)?, code(b)?);
            return if a <= b { Ok(Self(a, b)) } else { Err(bad()) };
        }
        let c = code(t)?;
        Ok(Self(c, c))
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status like 200, \"2xx\" or \"200-399\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// State a server is considered in before its first check (HAProxy's `init-state`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InitState {
    /// Up; needs `fall` failures to go down.
    FullyUp,
    /// Up; the first failure marks it down (default).
    #[default]
    Up,
    /// Down; the first success marks it up.
    Down,
    /// Down; needs `rise` successes.
    FullyDown,
}

/// `check = { ... }` / `[balancer.backend.check]`: health checks with HAProxy's semantics.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// tcp (default), http, https, ssl-hello or mysql.
    #[serde(rename = "type", default)]
    pub kind: CheckType,
    /// Interval while the server is fully up or down (default 2s).
    #[serde(default = "default_inter")]
    pub inter: HumanDuration,
    /// Interval while a server is changing state (default: `inter`).
    pub fastinter: Option<HumanDuration>,
    /// Interval while the server is down (default: `inter`).
    pub downinter: Option<HumanDuration>,
    /// Consecutive successes to mark a server up (default 2).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures to mark a server down (default 3).
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Probe this port instead of the server's.
    pub port: Option<u16>,
    /// HTTP method (default OPTIONS, as a bare `option httpchk`).
    pub method: Option<String>,
    /// HTTP URI (default /).
    pub uri: Option<String>,
    /// HTTP version string (default HTTP/1.0; HTTP/1.1 sends `Host` from `host`).
    pub version: Option<String>,
    /// Host header of HTTP checks.
    pub host: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Passing statuses (default 2xx and 3xx).
    #[serde(default)]
    pub expect_status: Vec<StatusRange>,
    /// The response must contain this string.
    pub expect_string: Option<String>,
    /// SNI sent by https and ssl-hello checks.
    pub sni: Option<String>,
    /// Certificate verification of https checks: none (default) or required.
    #[serde(default)]
    pub verify: Verify,
    /// CA bundle for `verify = "required"`.
    pub ca_file: Option<PathBuf>,
    /// mysql checks: log in as this user (no password), else only the greeting is checked.
    pub mysql_user: Option<String>,
}

fn default_inter() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// PROXY protocol version sent to servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyVersion {
    /// Text header (send-proxy).
    V1,
    /// Binary header (send-proxy-v2).
    V2,
}

/// What happens to a server's sessions when it is marked down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMarkedDown {
    /// Leave established sessions alone (HAProxy's default).
    #[default]
    None,
    /// Close them, so clients (apiserver watches) reconnect to a live server.
    ShutdownSessions,
}

/// Server settings that `[balancer.backend.default_server]` sets for every server of a backend
/// and a server may override.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerDefaults {
    /// Weight 0..=256 (default 1).
    pub weight: Option<u32>,
    /// Most concurrent sessions (default unlimited).
    pub maxconn: Option<u32>,
    /// Most sessions queued for this server (default unlimited).
    pub maxqueue: Option<u32>,
    /// Ramp the weight up over this long after recovery.
    pub slowstart: Option<HumanDuration>,
    /// Send a PROXY protocol header: v1 or v2.
    pub send_proxy: Option<ProxyVersion>,
    /// none (default) or shutdown_sessions.
    pub on_marked_down: Option<OnMarkedDown>,
    /// Health-check this server (default true when the backend has a `check`).
    pub check: Option<bool>,
    /// State before the first check (default up).
    pub init_state: Option<InitState>,
}

/// One `[[balancer.backend.server]]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Unique name in the backend.
    pub name: String,
    /// Address and port, e.g. `198.18.0.21:6443`.
    pub address: HostPort,
    /// Used only when no other server is up.
    #[serde(default)]
    pub backup: bool,
    /// Weight 0..=256.
    pub weight: Option<u32>,
    /// Most concurrent sessions.
    pub maxconn: Option<u32>,
    /// Most sessions queued for this server.
    pub maxqueue: Option<u32>,
    /// Weight ramp after recovery.
    pub slowstart: Option<HumanDuration>,
    /// PROXY protocol v1 or v2 towards this server.
    pub send_proxy: Option<ProxyVersion>,
    /// none or shutdown_sessions.
    pub on_marked_down: Option<OnMarkedDown>,
    /// Health-check this server.
    pub check: Option<bool>,
    /// State before the first check.
    pub init_state: Option<InitState>,
}

/// A server with its backend's `default_server` applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveServer {
    /// Name.
    pub name: String,
    /// Address (port required by validation; 0 if it is missing).
    pub address: std::net::SocketAddr,
    /// Backup server.
    pub backup: bool,
    /// Weight.
    pub weight: u32,
    /// maxconn; `None` = unlimited.
    pub maxconn: Option<u32>,
    /// maxqueue; `None` = unlimited.
    pub maxqueue: Option<u32>,
    /// slowstart; `None` = full weight at once.
    pub slowstart: Option<std::time::Duration>,
    /// PROXY protocol towards the server.
    pub send_proxy: Option<ProxyVersion>,
    /// Close sessions on mark-down.
    pub shutdown_sessions: bool,
    /// Health-checked.
    pub check: bool,
    /// Initial state.
    pub init_state: InitState,
}

/// One `[[balancer.backend]]`: a set of servers and how to choose among them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Unique backend name.
    pub name: String,
    /// Algorithm (default roundrobin).
    #[serde(default)]
    pub balance: Balance,
    /// Servers drawn per decision by `random` (default 2).
    #[serde(default = "default_draws")]
    pub random_draws: u8,
    /// Connect retries after the first failure (default 3).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Retry on another server: true (on the last retry, default), false, or every Nth retry.
    #[serde(default = "default_redispatch")]
    pub redispatch: Redispatch,
    /// Most sessions waiting for a free server slot in this backend (default 1024).
    #[serde(default = "default_maxqueue")]
    pub maxqueue: u32,
    /// Health checks for the servers (none: servers are always up).
    pub check: Option<Check>,
    /// Settings for every server, `[balancer.backend.default_server]`.
    #[serde(default)]
    pub default_server: ServerDefaults,
    /// When a server recovers, close a share of the long-lived connections piled on the others.
    #[serde(default)]
    pub rebalance: bool,
    /// Most connections closed per second by rebalancing (default 10).
    #[serde(default = "default_rebalance_rate")]
    pub rebalance_rate: u32,
    /// `[[balancer.backend.server]]`.
    #[serde(rename = "server", default)]
    pub servers: Vec<Server>,
}

fn default_draws() -> u8 {
    2
}
fn default_retries() -> u32 {
    3
}
fn default_redispatch() -> Redispatch {
    Redispatch(-1)
}
fn default_maxqueue() -> u32 {
    1024
}
fn default_rebalance_rate() -> u32 {
    10
}

/// HAProxy's `option redispatch <n>`: 0 = never, N > 0 = every Nth retry, -N = the Nth retry
/// before the last. Written as `true` (-1), `false` (0) or an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Redispatch(pub i32);

impl<'de> Deserialize<'de> for Redispatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Redispatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or an integer")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Redispatch, E> {
                Ok(Redispatch(if v { -1 } else { 0 }))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Redispatch, E> {
                i32::try_from(v)
                    .map(Redispatch)
                    .map_err(|_| E::custom("redispatch interval out of range"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Redispatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            -1 => s.serialize_bool(true),
            0 => s.serialize_bool(false),
            n => s.serialize_i32(n),
        }
    }
}

impl Default for Check {
    /// A TCP connect check with HAProxy's timing (inter 2s, rise 2, fall 3).
    fn default() -> Self {
        Self {
            kind: CheckType::Tcp,
            inter: default_inter(),
            fastinter: None,
            downinter: None,
            rise: default_rise(),
            fall: default_fall(),
            port: None,
            method: None,
            uri: None,
            version: None,
            host: None,
            headers: BTreeMap::new(),
            expect_status: Vec::new(),
            expect_string: None,
            sni: None,
            verify: Verify::None,
            ca_file: None,
            mysql_user: None,
        }
    }
}

impl Default for BalancerConfig {
    /// No frontend or backend; every global setting at its default.
    fn default() -> Self {
        Self {
            maxconn: default_maxconn(),
            threads: None,
            splice: true,
            hard_stop_after: None,
            strict_limits: false,
            timeouts: Timeouts::default(),
            keepalive: Keepalive::default(),
            frontends: Vec::new(),
            backends: Vec::new(),
        }
    }
}

impl Frontend {
    /// A tcp-mode frontend on `bind` with every other key at its default (for importers).
    pub fn new(name: impl Into<String>, bind: Vec<SockAddr>) -> Self {
        Self {
            name: name.into(),
            bind,
            freebind: false,
            mode: Mode::Tcp,
            accept_proxy: false,
            maxconn: None,
            backlog: default_backlog(),
            backend: None,
            tls: None,
            routes: Vec::new(),
            monitor_uri: None,
            forwarded_for: false,
        }
    }
}

impl Server {
    /// A server with every optional key unset (for importers).
    pub fn new(name: impl Into<String>, address: HostPort) -> Self {
        Self {
            name: name.into(),
            address,
            backup: false,
            weight: None,
            maxconn: None,
            maxqueue: None,
            slowstart: None,
            send_proxy: None,
            on_marked_down: None,
            check: None,
            init_state: None,
        }
    }
}

impl Backend {
    /// A roundrobin backend without servers or checks, every key at its default (for importers).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            balance: Balance::Roundrobin,
            random_draws: default_draws(),
            retries: default_retries(),
            redispatch: default_redispatch(),
            maxqueue: default_maxqueue(),
            check: None,
            default_server: ServerDefaults::default(),
            rebalance: false,
            rebalance_rate: default_rebalance_rate(),
            servers: Vec::new(),
        }
    }

    /// Every server with `default_server` applied.
    pub fn effective_servers(&self) -> Vec<EffectiveServer> {
        let d = &self.default_server;
        self.servers
            .iter()
            .map(|s| EffectiveServer {
                name: s.name.clone(),
                address: s.address.with_default_port(0),
                backup: s.backup,
                weight: s.weight.or(d.weight).unwrap_or(1),
                maxconn: s.maxconn.or(d.maxconn),
                maxqueue: s.maxqueue.or(d.maxqueue),
                slowstart: s
                    .slowstart
                    .or(d.slowstart)
                    .map(|x| x.get())
                    .filter(|x| !x.is_zero()),
                send_proxy: s.send_proxy.or(d.send_proxy),
                shutdown_sessions: s.on_marked_down.or(d.on_marked_down)
                    == Some(OnMarkedDown::ShutdownSessions),
                check: self.check.is_some() && s.check.or(d.check).unwrap_or(true),
                init_state: s.init_state.or(d.init_state).unwrap_or_default(),
            })
            .collect()
    }
}

impl BalancerConfig {
    /// The backend with this name.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// Reports every problem of `[balancer]`.
    pub fn validate(&self, problems: &mut Problems) {
        let base = KeyPath::new("balancer");
        if self.maxconn == 0 {
            problems.add(base.key("maxconn"), "maxconn must be at least 1");
        }
        if self.threads == Some(0) {
            problems.add(base.key("threads"), "threads must be at least 1");
        }
        self.validate_timeouts(problems);
        let fr = base.key("frontend");
        let be = base.key("backend");
        check_unique(
            problems,
            self.frontends
                .iter()
                .enumerate()
                .map(|(i, f)| (fr.index(i).key("name"), &f.name)),
            "frontend name",
        );
        check_unique(
            problems,
            self.backends
                .iter()
                .enumerate()
                .map(|(i, b)| (be.index(i).key("name"), &b.name)),
            "backend name",
        );
        let binds: Vec<(KeyPath, SockAddr)> = self
            .frontends
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                let p = fr.index(i).key("bind");
                f.bind
                    .iter()
                    .enumerate()
                    .map(move |(j, a)| (p.index(j), *a))
            })
            .collect();
        check_unique(
            problems,
            binds.iter().map(|(p, a)| (p.clone(), a)),
            "bind address",
        );
        let backends: HashMap<&str, usize> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.as_str(), i))
            .collect();
        for (i, f) in self.frontends.iter().enumerate() {
            self.validate_frontend(f, fr.index(i), &backends, problems);
        }
        for (i, b) in self.backends.iter().enumerate() {
            validate_backend(b, be.index(i), problems);
        }
        if self.frontends.is_empty() {
            problems.add(
                base.clone(),
                "[balancer] has no frontend: add a [[balancer.frontend]]",
            );
        }
    }

    fn validate_timeouts(&self, problems: &mut Problems) {
        let base = KeyPath::new("balancer.timeouts");
        let t = &self.timeouts;
        let required = [
            ("connect", t.connect),
            ("client", t.client),
            ("server", t.server),
            ("http_request", t.http_request),
            ("http_keep_alive", t.http_keep_alive),
        ];
        for (key, v) in required {
            if v.is_zero() {
                problems.add(
                    base.key(key),
                    format!("timeout {key} must be longer than 0s"),
                );
            }
        }
        let optional = [
            ("tunnel", t.tunnel),
            ("queue", t.queue),
            ("client_fin", t.client_fin),
            ("server_fin", t.server_fin),
            ("check", t.check),
        ];
        for (key, v) in optional {
            if v.is_some_and(|d| d.is_zero()) {
                problems.add(
                    base.key(key),
                    format!("timeout {key} must be longer than 0s (remove it to use the default)"),
                );
            }
        }
        let k = &self.keepalive;
        let kp = KeyPath::new("balancer.keepalive");
        if k.enabled {
            if k.idle.get().as_secs() == 0 {
                problems.add(
                    kp.key("idle"),
                    "keepalive idle must be at least 1s (the kernel counts it in seconds)",
                );
            }
            if k.interval.get().as_secs() == 0 {
                problems.add(
                    kp.key("interval"),
                    "keepalive interval must be at least 1s (the kernel counts it in seconds)",
                );
            }
            if k.count == 0 {
                problems.add(kp.key("count"), "keepalive count must be at least 1");
            }
        }
    }

    fn validate_frontend(
        &self,
        f: &Frontend,
        base: KeyPath,
        backends: &HashMap<&str, usize>,
        problems: &mut Problems,
    ) {
        check_name(problems, base.key("name"), &f.name, "frontend name");
        if f.bind.is_empty() {
            problems.add(
                base.key("bind"),
                format!("frontend {} binds no address", f.name),
            );
        }
        for (j, a) in f.bind.iter().enumerate() {
            if a.0.port() == 0 {
                problems.add(
                    base.key("bind").index(j),
                    "bind port must be between 1 and 65535",
                );
            }
        }
        if let Some(m) = f.maxconn {
            if m == 0 {
                problems.add(base.key("maxconn"), "maxconn must be at least 1");
            } else if m > self.maxconn {
                problems.add(
                    base.key("maxconn"),
                    format!(
                        "frontend maxconn {m} is above the global maxconn {}",
                        self.maxconn
                    ),
                );
            }
        }
        if f.backlog == 0 {
            problems.add(base.key("backlog"), "backlog must be at least 1");
        }
        let known = |problems: &mut Problems, path: KeyPath, name: &str| {
            if !backends.contains_key(name) {
                problems.add(path, format!("unknown backend \"{name}\""));
            }
        };
        match &f.backend {
            Some(b) => known(problems, base.key("backend"), b),
            // A monitor-only http frontend (kubespray's healthz) needs no backend.
            None if f.routes.is_empty() && !(f.mode == Mode::Http && f.monitor_uri.is_some()) => {
                problems.add(
                    base.clone(),
                    format!("frontend {} has neither a backend nor routes (nor, in http mode, a monitor_uri)", f.name),
                );
            }
            None => {}
        }
        if let Some(tls) = &f.tls {
            let tp = base.key("tls");
            if tls.cert.as_os_str().is_empty() {
                problems.add(tp.key("cert"), "tls cert path is empty");
            }
            if tls.key.as_os_str().is_empty() {
                problems.add(tp.key("key"), "tls key path is empty");
            }
            for (j, c) in tls.sni_certs.iter().enumerate() {
                if c.cert.as_os_str().is_empty() || c.key.as_os_str().is_empty() {
                    problems.add(tp.key("sni_certs").index(j), "tls cert and key paths must not be empty");
                }
            }
        }
        if f.mode == Mode::Tcp {
            if f.monitor_uri.is_some() {
                problems.add(base.key("monitor_uri"), "monitor_uri needs mode = \"http\"");
            }
            if f.forwarded_for {
                problems.add(
                    base.key("forwarded_for"),
                    "forwarded_for needs mode = \"http\"",
                );
            }
        }
        if let Some(u) = &f.monitor_uri
            && !u.starts_with('/')
        {
            problems.add(base.key("monitor_uri"), "monitor_uri must start with '/'");
        }
        for (i, r) in f.routes.iter().enumerate() {
            let rp = base.key("route").index(i);
            known(problems, rp.key("backend"), &r.backend);
            if r.host.is_none() && r.path_prefix.is_none() && r.sni.is_none() {
                problems.add(
                    rp.clone(),
                    "route matches nothing: give host, path_prefix or sni",
                );
            }
            if f.mode == Mode::Tcp {
                if r.host.is_some() {
                    problems.add(
                        rp.key("host"),
                        "routing by host needs mode = \"http\" (use sni in tcp mode)",
                    );
                }
                if r.path_prefix.is_some() {
                    problems.add(
                        rp.key("path_prefix"),
                        "routing by path needs mode = \"http\"",
                    );
                }
            } else if r.sni.is_some() && f.tls.is_none() {
                problems.add(
                    rp.key("sni"),
                    "routing by sni in http mode needs tls on the frontend",
                );
            }
            if let Some(p) = &r.path_prefix
                && !p.starts_with('/')
            {
                problems.add(rp.key("path_prefix"), "path_prefix must start with '/'");
            }
        }
    }
}

fn validate_backend(b: &Backend, base: KeyPath, problems: &mut Problems) {
    check_name(problems, base.key("name"), &b.name, "backend name");
    if b.servers.is_empty() {
        problems.add(base.clone(), format!("backend {} has no server", b.name));
    }
    if b.balance == Balance::Random && b.random_draws == 0 {
        problems.add(base.key("random_draws"), "random_draws must be at least 1");
    }
    if b.rebalance && b.rebalance_rate == 0 {
        problems.add(
            base.key("rebalance_rate"),
            "rebalance_rate must be at least 1 with rebalance = true",
        );
    }
    if let Some(w) = b.default_server.weight
        && w > MAX_WEIGHT
    {
        problems.add(
            base.key("default_server").key("weight"),
            format!("weight {w} is above the maximum {MAX_WEIGHT}"),
        );
    }
    let sp = base.key("server");
    check_unique(
        problems,
        b.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (sp.index(i).key("name"), &s.name)),
        "server name",
    );
    check_unique(
        problems,
        b.servers
            .iter()
            .enumerate()
            .map(|(i, s)| (sp.index(i).key("address"), &s.address)),
        "server address",
    );
    for (i, s) in b.servers.iter().enumerate() {
        let p = sp.index(i);
        check_name(problems, p.key("name"), &s.name, "server name");
        match s.address.port {
            None => problems.push(Problem::new(
                p.key("address"),
                format!(
                    "server {} has no port: write it like {}",
                    s.name,
                    match s.address.ip {
                        std::net::IpAddr::V4(a) => format!("{a}:6443"),
                        std::net::IpAddr::V6(a) => format!("[{a}]:6443"),
                    }
                ),
            )),
            Some(0) => problems.add(p.key("address"), format!("server {} has port 0", s.name)),
            Some(_) => {}
        }
        if let Some(w) = s.weight
            && w > MAX_WEIGHT
        {
            problems.add(
                p.key("weight"),
                format!("weight {w} is above the maximum {MAX_WEIGHT}"),
            );
        }
        if s.maxconn == Some(0) {
            problems.add(
                p.key("maxconn"),
                "maxconn must be at least 1 (remove it for unlimited)",
            );
        }
        if s.check == Some(true) && b.check.is_none() {
            problems.add(
                p.key("check"),
                format!(
                    "server {} asks for checks but backend {} has no check",
                    s.name, b.name
                ),
            );
        }
    }
    if b.default_server.check == Some(true) && b.check.is_none() {
        problems.add(
            base.key("default_server").key("check"),
            format!(
                "default_server asks for checks but backend {} has no check",
                b.name
            ),
        );
    }
    if let Some(c) = &b.check {
        validate_check(c, base.key("check"), problems);
    }
}

fn validate_check(c: &Check, base: KeyPath, problems: &mut Problems) {
    if c.inter.is_zero() {
        problems.add(base.key("inter"), "inter must be longer than 0s");
    }
    for (key, v) in [("fastinter", c.fastinter), ("downinter", c.downinter)] {
        if v.is_some_and(|d| d.is_zero()) {
            problems.add(base.key(key), format!("{key} must be longer than 0s"));
        }
    }
    if c.rise == 0 {
        problems.add(base.key("rise"), "rise must be at least 1");
    }
    if c.fall == 0 {
        problems.add(base.key("fall"), "fall must be at least 1");
    }
    if c.port == Some(0) {
        problems.add(base.key("port"), "check port must be between 1 and 65535");
    }
    let http = matches!(c.kind, CheckType::Http | CheckType::Https);
    let kind = serde_name(c.kind);
    if !http {
        let http_only = [
            ("method", c.method.is_some()),
            ("uri", c.uri.is_some()),
            ("version", c.version.is_some()),
            ("host", c.host.is_some()),
            ("headers", !c.headers.is_empty()),
            ("expect_status", !c.expect_status.is_empty()),
        ];
        for (key, set) in http_only {
            if set {
                problems.add(
                    base.key(key),
                    format!("{key} only applies to http and https checks, not {kind}"),
                );
            }
        }
    }
    if c.expect_string.is_some() && !matches!(c.kind, CheckType::Http | CheckType::Https) {
        problems.add(
            base.key("expect_string"),
            format!("expect_string only applies to http and https checks, not {kind}"),
        );
    }
    if let Some(u) = &c.uri
        && !u.starts_with('/')
        && u != "*"
    {
        problems.add(base.key("uri"), "uri must start with '/'");
    }
    if let Some(m) = &c.method
        && (m.is_empty() || !m.chars().all(|ch| ch.is_ascii_uppercase()))
    {
        problems.add(
            base.key("method"),
            format!("\"{m}\" is not an HTTP method like GET or OPTIONS"),
        );
    }
    if let Some(v) = &c.version
        && v != "HTTP/1.0"
        && v != "HTTP/1.1"
    {
        problems.add(
            base.key("version"),
            "version must be \"HTTP/1.0\" or \"HTTP/1.1\"",
        );
    }
    let tls = matches!(c.kind, CheckType::Https | CheckType::SslHello);
    if c.sni.is_some() && !tls {
        problems.add(
            base.key("sni"),
            format!("sni only applies to https and ssl-hello checks, not {kind}"),
        );
    }
    if c.kind != CheckType::Https && c.verify == Verify::Required {
        problems.add(
            base.key("verify"),
            format!("verify only applies to https checks, not {kind}"),
        );
    }
    match (c.verify, &c.ca_file) {
        (Verify::Required, None) if c.kind == CheckType::Https => {
            problems.add(base.key("verify"), "verify = \"required\" needs ca_file");
        }
        (Verify::None, Some(_)) => problems.add(
            base.key("ca_file"),
            "ca_file is only used with verify = \"required\"",
        ),
        _ => {}
    }
    if c.mysql_user.is_some() && c.kind != CheckType::Mysql {
        problems.add(
            base.key("mysql_user"),
            format!("mysql_user only applies to mysql checks, not {kind}"),
        );
    }
}

fn serde_name(k: CheckType) -> &'static str {
    match k {
        CheckType::Tcp => "tcp",
        CheckType::Http => "http",
        CheckType::Https => "https",
        CheckType::SslHello => "ssl-hello",
        CheckType::Mysql => "mysql",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[timeouts]
tunnel = "1h"
[[frontend]]
name = "api"
bind = ["198.18.0.100:6443", "[fd00:198:18::100]:6443"]
freebind = true
backend = "apiservers"
[[frontend]]
name = "web"
mode = "http"
bind = ["127.0.0.1:8080"]
monitor_uri = "/healthz"
[[frontend.route]]
host = "app.lab.example"
path_prefix = "/api"
backend = "apiservers"
[[backend]]
name = "apiservers"
balance = "leastconn"
check = { type = "https", uri = "/readyz", method = "GET", expect_status = [200, "2xx"], sni = "kubernetes" }
[backend.default_server]
on_marked_down = "shutdown_sessions"
send_proxy = "v2"
[[backend.server]]
name = "api1"
address = "198.18.0.21:6443"
[[backend.server]]
name = "api2"
address = "198.18.0.22:6443"
weight = 10
backup = true
"#;

    fn problems(text: &str) -> Vec<String> {
        let c: BalancerConfig = toml::from_str(text).expect("test config parses");
        let mut p = Problems::new();
        c.validate(&mut p);
        p.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_good_balancer_has_no_problem_and_resolves_defaults() {
        assert_eq!(problems(GOOD), Vec::<String>::new());
        let c: BalancerConfig = toml::from_str(GOOD).unwrap();
        let s = c.backends[0].effective_servers();
        assert!(s[0].shutdown_sessions && s[0].check);
        assert_eq!((s[0].weight, s[1].weight), (1, 10));
        assert_eq!(s[1].send_proxy, Some(ProxyVersion::V2));
        assert_eq!(
            c.backends[0].check.as_ref().unwrap().expect_status,
            vec![StatusRange(200, 200), StatusRange(200, 299)]
        );
        assert_eq!(c.backends[0].redispatch, Redispatch(-1));
    }

    #[test]
    fn missing_ports_unknown_backends_and_misplaced_options_are_reported() {
        let text = GOOD
            .replace("198.18.0.22:6443", "198.18.0.22")
            .replace(
                "backend = \"apiservers\"\n[[frontend]]",
                "backend = \"apiserver\"\n[[frontend]]",
            )
            .replace("type = \"https\"", "type = \"tcp\"");
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("balancer.backend[0].server[1].address: server api2 has no port")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("balancer.frontend[0].backend: unknown backend \"apiserver\"")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("balancer.backend[0].check.uri: uri only applies")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("balancer.backend[0].check.sni")),
            "{p:?}"
        );
    }

    #[test]
    fn host_routes_need_http_mode() {
        let text = GOOD
            .replace("mode = \"http\"\n", "")
            .replace("monitor_uri = \"/healthz\"\n", "");
        let p = problems(&text);
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn constructors_match_the_serde_defaults() {
        assert_eq!(toml::from_str::<Check>("").unwrap(), Check::default());
        assert_eq!(
            toml::from_str::<BalancerConfig>("").unwrap(),
            BalancerConfig::default()
        );
        assert_eq!(
            toml::from_str::<Backend>("name = \"b\"").unwrap(),
            Backend::new("b")
        );
        let f = Frontend::new("f", vec!["127.0.0.1:80".parse().unwrap()]);
        assert_eq!(
            toml::from_str::<Frontend>("name = \"f\"\nbind = [\"127.0.0.1:80\"]").unwrap(),
            f
        );
        let s = Server::new("s", "127.0.0.1:81".parse().unwrap());
        assert_eq!(
            toml::from_str::<Server>("name = \"s\"\naddress = \"127.0.0.1:81\"").unwrap(),
            s
        );
    }

    #[test]
    fn status_ranges() {
        assert_eq!("3xx".parse::<StatusRange>().unwrap(), StatusRange(300, 399));
        assert_eq!(
            "200-204".parse::<StatusRange>().unwrap(),
            StatusRange(200, 204)
        );
        assert!("700".parse::<StatusRange>().is_err());
        assert!("204-200".parse::<StatusRange>().is_err());
    }
}
