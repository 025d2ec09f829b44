//! Maps the `[balancer]` config section onto the runtime's plain structs: one
//! [`ProxyConfig`] per tcp-mode frontend (all its bind addresses share one backend instance).
//!
//! http-mode frontends map onto an [`HttpFrontendConfig`] (several backends, routes by SNI, host
//! and path), tcp-mode frontends with `tls` onto a [`TlsTcpConfig`] (routes by SNI after the
//! handshake); certificates are loaded here so a bad PEM file is reported before anything
//! starts. Every copy of a backend (one per frontend using it) gets the same
//! [`BackendChecks`]. Features the runtime does not have are refused with
//! [`MapError::Unsupported`] rather than silently ignored.

use std::time::Duration;

use thiserror::Error;

use crate::balance::Algorithm;
use crate::checker::{BackendChecks, CheckSpec, CheckTls, TlsVerify};
use crate::config::{self, BalancerConfig, Balance, CheckType};
use crate::health::{CheckKind, Expect, HealthParams, HttpCheck, InitState, StatusMatch, Step};
use crate::proxy::{BackendConfig, FrontendConfig, Keepalive, ProxyConfig, Rebalance, Redispatch, ServerConfig, Timeouts};
use crate::proxy_protocol::Version;
use crate::relay::{IdleTimeouts, RelayMode};
use crate::router::SniRoute;
use crate::http::{HttpFrontendConfig, HttpRoute, HttpTimeouts};
use crate::tls::{TlsTcpConfig, server_config_sni};

/// Why a config cannot be run by this runtime.
#[derive(Debug, Error)]
pub enum MapError {
    /// The frontend names no default backend.
    #[error("frontend {0}: no backend")]
    NoBackend(String),
    /// The frontend names a backend that does not exist.
    #[error("frontend {frontend}: unknown backend {backend}")]
    UnknownBackend {
        /// Frontend name.
        frontend: String,
        /// Backend name.
        backend: String,
    },
    /// The frontend has no bind address.
    #[error("frontend {0}: no bind address")]
    NoBind(String),
    /// The frontend's TLS certificate or key cannot be used.
    #[error("frontend {frontend}: {reason}")]
    Tls {
        /// Frontend name.
        frontend: String,
        /// Why (file and cause).
        reason: String,
    },
    /// A server's health check cannot be prepared (unreadable CA file).
    #[error("backend {backend}: {source}")]
    Check {
        /// Backend name.
        backend: String,
        /// Which server and why.
        source: std::sync::Arc<crate::checker::CheckSetupError>,
    },
    /// A feature the tcp-mode runtime does not implement yet.
    #[error("{place}: {feature} is not supported by the tcp-mode runtime yet")]
    Unsupported {
        /// Where (frontend or backend name).
        place: String,
        /// What.
        feature: &'static str,
    },
}

/// Every tcp-mode frontend as a runnable [`ProxyConfig`] (frontends with routes refused).
pub fn tcp_proxies(cfg: &BalancerConfig) -> Result<Vec<ProxyConfig>, MapError> {
    let mut v: Vec<ProxyConfig> = cfg.frontends.iter().map(|fe| tcp_proxy(cfg, fe)).collect::<Result<_, _>>()?;
    share_checks(v.iter_mut())?;
    Ok(v)
}

/// Gives every copy of a backend (one per frontend using it) the same [`BackendChecks`]: one
/// checker per server, one state, whatever the number of frontends.
fn share_checks<'a>(proxies: impl Iterator<Item = &'a mut ProxyConfig>) -> Result<(), MapError> {
    let mut by_name: std::collections::HashMap<String, std::sync::Arc<BackendChecks>> = std::collections::HashMap::new();
    for p in proxies {
        let be = &mut p.backend;
        let checks = match by_name.get(&be.name) {
            Some(c) => c.clone(),
            None => {
                let c = BackendChecks::new(&be.name, be.servers.iter().map(|s| (s.name.as_str(), s.addr, s.check.as_ref())))
                    .map_err(|e| MapError::Check { backend: be.name.clone(), source: std::sync::Arc::new(e) })?;
                let c = std::sync::Arc::new(c);
                by_name.insert(be.name.clone(), c.clone());
                c
            }
        };
        be.checks = Some(checks);
    }
    Ok(())
}

/// A tcp-mode frontend as the runtime runs it.
#[derive(Debug, Clone)]
pub enum TcpFrontend {
    /// One backend behind the listener.
    Proxy(ProxyConfig),
    /// Mode http: routes by host and path over several backends, TLS terminated or not.
    Http(Box<HttpFrontendConfig>),
    /// Mode tcp with TLS terminated on the frontend.
    TlsTcp(Box<TlsTcpConfig>),
    /// TLS passthrough routed by SNI.
    Router {
        /// The listening side.
        frontend: FrontendConfig,
        /// Routes in order.
        routes: Vec<SniRoute>,
        /// Backend for unmatched or non-TLS connections.
        default: Option<ProxyConfig>,
        /// Longest wait for the ClientHello (`timeout client`).
        hello_timeout: Duration,
    },
}

/// Every tcp-mode frontend, routed ones included; copies of one backend share its health checks.
pub fn tcp_frontends(cfg: &BalancerConfig) -> Result<Vec<TcpFrontend>, MapError> {
    let mut v = cfg.frontends.iter().map(|fe| map_frontend(cfg, fe)).collect::<Result<Vec<_>, _>>()?;
    share_checks(v.iter_mut().flat_map(|f| -> Box<dyn Iterator<Item = &mut ProxyConfig>> {
        match f {
            TcpFrontend::Proxy(p) => Box::new(std::iter::once(p)),
            TcpFrontend::Http(h) => Box::new(h.backends.iter_mut()),
            TcpFrontend::TlsTcp(t) => Box::new(t.routes.iter_mut().map(|r| &mut r.backend).chain(t.default.as_mut())),
            TcpFrontend::Router { routes, default, .. } => {
                Box::new(routes.iter_mut().map(|r| &mut r.backend).chain(default.as_mut()))
            }
        }
    }))?;
    Ok(v)
}

fn map_frontend(cfg: &BalancerConfig, fe: &config::Frontend) -> Result<TcpFrontend, MapError> {
    if fe.mode == config::Mode::Http {
        return http_frontend(cfg, fe).map(|h| TcpFrontend::Http(Box::new(h)));
    }
    if fe.tls.is_none() && fe.routes.is_empty() {
        return tcp_proxy(cfg, fe).map(TcpFrontend::Proxy);
    }
    let plain = config::Frontend { routes: Vec::new(), backend: None, tls: None, ..fe.clone() };
    // Checks common to every backend (mode, binds) through the route-less mapping.
    let with = |backend: &str| -> Result<ProxyConfig, MapError> {
        tcp_proxy(cfg, &config::Frontend { backend: Some(backend.to_string()), ..plain.clone() })
    };
    if fe.tls.is_none() && fe.accept_proxy {
        return Err(unsupported(&fe.name, "accept_proxy with SNI routes (TLS passthrough)"));
    }
    let mut routes = Vec::with_capacity(fe.routes.len());
    for r in &fe.routes {
        if r.host.is_some() || r.path_prefix.is_some() {
            return Err(unsupported(&fe.name, "host/path routes (http mode)"));
        }
        let Some(sni) = &r.sni else {
            return Err(unsupported(&fe.name, "a tcp-mode route without sni"));
        };
        routes.push(SniRoute { pattern: sni.clone(), backend: with(&r.backend)? });
    }
    let default = fe.backend.as_deref().map(with).transpose()?;
    let frontend = frontend_config(cfg, fe)?;
    if default.is_none() && routes.is_empty() {
        return Err(MapError::NoBackend(fe.name.clone()));
    }
    if let Some(tls) = &fe.tls {
        // TLS terminated here: certificate and route both chosen by the client's SNI.
        let tls = load_tls(&fe.name, tls, &[])?;
        return Ok(TcpFrontend::TlsTcp(Box::new(TlsTcpConfig { frontend, routes, default, tls })));
    }
    Ok(TcpFrontend::Router { frontend, routes, default, hello_timeout: cfg.timeouts.client.get() })
}

fn unsupported(place: &str, feature: &'static str) -> MapError {
    MapError::Unsupported { place: place.to_string(), feature }
}

/// One frontend with its default backend.
pub fn tcp_proxy(cfg: &BalancerConfig, fe: &config::Frontend) -> Result<ProxyConfig, MapError> {
    if fe.mode != config::Mode::Tcp {
        return Err(unsupported(&fe.name, "mode http"));
    }
    if fe.tls.is_some() {
        return Err(unsupported(&fe.name, "TLS termination"));
    }
    if !fe.routes.is_empty() {
        return Err(unsupported(&fe.name, "routes here (use tcp_frontends)"));
    }
    map_proxy(cfg, fe)
}

/// Loads a frontend's certificate and key; http mode offers ALPN http/1.1 unless told otherwise.
fn load_tls(
    frontend: &str,
    tls: &config::FrontendTls,
    default_alpn: &[&str],
) -> Result<std::sync::Arc<rustls::ServerConfig>, MapError> {
    let alpn: Vec<String> = if tls.alpn.is_empty() {
        default_alpn.iter().map(|s| s.to_string()).collect()
    } else {
        tls.alpn.clone()
    };
    let sni: Vec<(&std::path::Path, &std::path::Path)> = tls.sni_certs.iter().map(|c| (c.cert.as_path(), c.key.as_path())).collect();
    server_config_sni(&tls.cert, &tls.key, &sni, &alpn).map_err(|e| MapError::Tls { frontend: frontend.to_string(), reason: e.to_string() })
}

/// An http-mode frontend: every backend it names (default first), its routes and TLS. A
/// frontend with a `monitor_uri` and no backend at all (kubespray's `healthz` frontend) is a
/// monitor-only frontend: it answers the monitor URI and 503 to anything else.
pub fn http_frontend(cfg: &BalancerConfig, fe: &config::Frontend) -> Result<HttpFrontendConfig, MapError> {
    let mut names: Vec<String> = Vec::new();
    let mut index = |n: &str| match names.iter().position(|x| x == n) {
        Some(i) => i,
        None => {
            names.push(n.to_string());
            names.len() - 1
        }
    };
    let default = fe.backend.as_deref().map(&mut index);
    let mut routes = Vec::with_capacity(fe.routes.len());
    for r in &fe.routes {
        if r.sni.is_some() && fe.tls.is_none() {
            return Err(unsupported(&fe.name, "sni routes in http mode without tls (route by host)"));
        }
        routes.push(HttpRoute {
            sni: r.sni.clone(),
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
            backend: index(&r.backend),
        });
    }
    if names.is_empty() && fe.monitor_uri.is_none() {
        return Err(MapError::NoBackend(fe.name.clone()));
    }
    let backends = names
        .iter()
        .map(|n| map_proxy(cfg, &config::Frontend { backend: Some(n.clone()), routes: Vec::new(), ..fe.clone() }))
        .collect::<Result<Vec<_>, _>>()?;
    let t = &cfg.timeouts;
    Ok(HttpFrontendConfig {
        frontend: frontend_config(cfg, fe)?,
        routes,
        default,
        monitor_uri: fe.monitor_uri.clone(),
        forwarded_for: fe.forwarded_for,
        timeouts: HttpTimeouts {
            http_request: t.http_request.get(),
            http_keep_alive: t.http_keep_alive.get(),
            client: t.client.get(),
            server: t.server.get(),
            tunnel: t.tunnel.map(|x| x.get()),
        },
        keepalive: keepalive(cfg),
        relay: relay_mode(cfg),
        tls: fe.tls.as_ref().map(|tls| load_tls(&fe.name, tls, &["http/1.1"])).transpose()?,
        backends,
    })
}

/// The listening side of a frontend.
fn frontend_config(cfg: &BalancerConfig, fe: &config::Frontend) -> Result<FrontendConfig, MapError> {
    let mut binds = fe.bind.iter().map(|b| b.get());
    let bind = binds.next().ok_or_else(|| MapError::NoBind(fe.name.clone()))?;
    Ok(FrontendConfig {
        name: fe.name.clone(),
        bind,
        extra_binds: binds.collect(),
        maxconn: fe.maxconn.unwrap_or(cfg.maxconn) as usize,
        backlog: fe.backlog,
        freebind: fe.freebind,
        // A reload starts the new process beside the old one on the same ports.
        reuseport: true,
        accept_proxy: fe.accept_proxy,
    })
}

fn keepalive(cfg: &BalancerConfig) -> Option<Keepalive> {
    let k = &cfg.keepalive;
    k.enabled.then(|| Keepalive {
        idle: k.idle.get(),
        interval: k.interval.get(),
        count: k.count,
        user_timeout: (!k.user_timeout.is_zero()).then(|| k.user_timeout.get()),
    })
}

fn relay_mode(cfg: &BalancerConfig) -> RelayMode {
    // splice = true: HAProxy's splice-auto (copy small transfers, splice bulk ones).
    if cfg.splice { RelayMode::Auto } else { RelayMode::Copy }
}

/// A frontend with its default backend, whatever its mode (checks are the caller's).
fn map_proxy(cfg: &BalancerConfig, fe: &config::Frontend) -> Result<ProxyConfig, MapError> {
    let bname = fe.backend.as_ref().ok_or_else(|| MapError::NoBackend(fe.name.clone()))?;
    let be = cfg.backend(bname).ok_or_else(|| MapError::UnknownBackend {
        frontend: fe.name.clone(),
        backend: bname.clone(),
    })?;
    let t = &cfg.timeouts;
    let timeouts = Timeouts {
        connect: t.connect.get(),
        queue: t.queue.map(|q| q.get()),
        idle: IdleTimeouts {
            client: t.client.get(),
            server: t.server.get(),
            tunnel: t.tunnel.map(|x| x.get()),
            client_fin: t.client_fin.map(|x| x.get()),
            server_fin: t.server_fin.map(|x| x.get()),
        },
    };
    Ok(ProxyConfig {
        frontend: frontend_config(cfg, fe)?,
        backend: backend(cfg, be)?,
        timeouts,
        keepalive: keepalive(cfg),
        relay: relay_mode(cfg),
    })
}

fn backend(cfg: &BalancerConfig, be: &config::Backend) -> Result<BackendConfig, MapError> {
    let algorithm = match be.balance {
        Balance::Roundrobin => Algorithm::RoundRobin,
        Balance::StaticRr => Algorithm::StaticRr,
        Balance::Leastconn => Algorithm::LeastConn,
        Balance::First => Algorithm::First,
        Balance::Source => Algorithm::Source,
        Balance::Random => Algorithm::Random { draws: be.random_draws.max(1) },
    };
    let redispatch = match be.redispatch.0 {
        0 => Redispatch::Off,
        n if n > 0 => Redispatch::Every(n.unsigned_abs()),
        n => Redispatch::BeforeLast(n.unsigned_abs()),
    };
    let mut servers = Vec::with_capacity(be.servers.len());
    for s in be.effective_servers() {
        let check = match (&be.check, s.check) {
            (Some(c), true) => Some(check(cfg, be, c, &s)?),
            _ => None,
        };
        servers.push(ServerConfig {
            name: s.name.clone(),
            addr: s.address,
            weight: s.weight,
            backup: s.backup,
            maxconn: s.maxconn,
            maxqueue: s.maxqueue,
            check,
            send_proxy: s.send_proxy.map(|v| match v {
                config::ProxyVersion::V1 => Version::V1,
                config::ProxyVersion::V2 => Version::V2,
            }),
        });
    }
    Ok(BackendConfig {
        name: be.name.clone(),
        algorithm,
        servers,
        retries: be.retries,
        redispatch,
        retry_delay: cfg.timeouts.connect.get().min(Duration::from_secs(1)),
        maxqueue: be.maxqueue as usize,
        // Stable per backend so `random` decisions are reproducible from the config.
        seed: be.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)),
        rebalance: be.rebalance.then_some(Rebalance { rate_per_sec: be.rebalance_rate.max(1), min_age: Duration::ZERO }),
        // Shared between the frontends using this backend by `share_checks`.
        checks: None,
    })
}

fn check(
    cfg: &BalancerConfig,
    be: &config::Backend,
    c: &config::Check,
    s: &config::EffectiveServer,
) -> Result<(CheckSpec, HealthParams), MapError> {
    let http = || {
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(h) = &c.host {
            headers.push(("Host".into(), h.clone()));
        }
        headers.extend(c.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        HttpCheck {
            method: c.method.clone().unwrap_or_else(|| "OPTIONS".into()),
            uri: c.uri.clone().unwrap_or_else(|| "/".into()),
            version: c.version.clone().unwrap_or_else(|| "HTTP/1.0".into()),
            headers,
            body: Vec::new(),
            expect: if c.expect_status.is_empty() {
                StatusMatch::default_ok()
            } else {
                StatusMatch(c.expect_status.iter().map(|r| (r.0, r.1)).collect())
            },
        }
    };
    let (kind, tls) = match c.kind {
        CheckType::Tcp => match &c.expect_string {
            Some(x) => (CheckKind::TcpCheck(vec![Step::Expect(Expect::Contains(x.as_bytes().to_vec()))]), None),
            None => (CheckKind::TcpConnect, None),
        },
        CheckType::Http | CheckType::Https => {
            if c.expect_string.is_some() {
                return Err(unsupported(&be.name, "expect_string with http checks"));
            }
            let tls = (c.kind == CheckType::Https).then(|| CheckTls {
                sni: c.sni.clone(),
                verify: match (c.verify, &c.ca_file) {
                    (config::Verify::Required, Some(f)) => TlsVerify::CaFile(f.clone()),
                    _ => TlsVerify::None,
                },
            });
            (CheckKind::Http(http()), tls)
        }
        CheckType::SslHello => (CheckKind::SslHello, None),
        CheckType::Mysql => (CheckKind::Mysql { user: c.mysql_user.clone() }, None),
    };
    let spec = CheckSpec {
        kind,
        port: c.port,
        tls,
        timeout: cfg.timeouts.check.map(|t| t.get()).unwrap_or(c.inter.get()),
    };
    let params = HealthParams {
        inter: c.inter.get(),
        fastinter: c.fastinter.map(|x| x.get()),
        downinter: c.downinter.map(|x| x.get()),
        rise: c.rise,
        fall: c.fall,
        init: match s.init_state {
            config::InitState::FullyUp => InitState::FullyUp,
            config::InitState::Up => InitState::Up,
            config::InitState::Down => InitState::Down,
            config::InitState::FullyDown => InitState::FullyDown,
        },
        slowstart: s.slowstart,
        weight: s.weight,
        shutdown_sessions: s.shutdown_sessions,
    };
    Ok((spec, params))
}

/// The process's descriptor limit against what the config needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// Descriptors the config needs at full load ([`fds_needed`]).
    pub needed: u64,
    /// RLIMIT_NOFILE soft limit now.
    pub soft: u64,
    /// RLIMIT_NOFILE hard limit now.
    pub hard: u64,
}

impl FdLimit {
    /// The soft limit covers the need.
    pub fn enough(&self) -> bool {
        self.soft >= self.needed
    }
}

/// The descriptor limit is below what `maxconn` needs and `strict_limits` is set.
#[derive(Debug, Error)]
#[error(
    "descriptor limit {} is too low for maxconn {maxconn}: {} needed (two per connection, splice pipes, listeners, checks); \
     raise it (systemd LimitNOFILE=, ulimit -n, or give the process CAP_SYS_RESOURCE) or lower maxconn",
    limit.soft,
    limit.needed
)]
pub struct FdLimitError {
    /// The global maxconn.
    pub maxconn: u32,
    /// What was reached.
    pub limit: FdLimit,
}

/// Descriptors the balancer needs at full load, computed as HAProxy computes its `ulimit-n`
/// from `maxconn`: a client and a server socket per connection, a pipe pair (two descriptors)
/// for a quarter of them (HAProxy's default `maxpipes`; idle sessions hold none), every listener,
/// one probe socket per checked server, and a reserve for the runtime (control socket, epoll,
/// log, reload handover).
pub fn fds_needed(cfg: &BalancerConfig) -> u64 {
    let maxconn = u64::from(cfg.maxconn);
    let listeners: u64 = cfg.frontends.iter().map(|f| f.bind.len() as u64).sum();
    let checks: u64 = cfg.backends.iter().map(|b| if b.check.is_some() { b.servers.len() as u64 } else { 0 }).sum();
    2 * maxconn + 2 * (maxconn / 4) + listeners + checks + 64
}

/// Raises RLIMIT_NOFILE towards [`fds_needed`], as HAProxy does at start: the soft limit up to
/// the hard one, and the hard one too when the process may (root with CAP_SYS_RESOURCE, up to
/// `fs.nr_open`). Never lowers a limit. Falling short is an error only with `strict_limits`; the
/// caller warns otherwise.
pub fn raise_fd_limit(cfg: &BalancerConfig) -> Result<FdLimit, FdLimitError> {
    let needed = fds_needed(cfg);
    let get = || {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0;
        // rlim_t is not u64 on every target.
        #[allow(clippy::unnecessary_cast)]
        let v = (r.rlim_cur as u64, r.rlim_max as u64);
        ok.then_some(v)
    };
    let set = |soft: u64, hard: u64| {
        let r = libc::rlimit { rlim_cur: soft as libc::rlim_t, rlim_max: hard as libc::rlim_t };
        // SAFETY: setrlimit reads the struct we own.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 }
    };
    let (soft, hard) = get().unwrap_or((0, 0));
    if soft < needed {
        // The kernel refuses a hard limit above fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse::<u64>().ok());
        let target = nr_open.map_or(needed, |n| needed.min(n));
        if !(hard < target && set(target, target)) {
            let _ = set(target.min(hard), hard);
        }
    }
    let (soft, hard) = get().unwrap_or((soft, hard));
    let limit = FdLimit { needed, soft, hard };
    if !limit.enough() && cfg.strict_limits {
        return Err(FdLimitError { maxconn: cfg.maxconn, limit });
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> BalancerConfig {
        #[derive(serde::Deserialize)]
        struct Root {
            balancer: BalancerConfig,
        }
        toml::from_str::<Root>(toml_text).expect("valid config").balancer
    }

    #[test]
    fn descriptors_needed_follow_maxconn_like_haproxy() {
        let cfg = parse(
            r#"
[balancer]
maxconn = 1000
[[balancer.frontend]]
name = "f"
bind = ["198.18.0.100:6443", "[fd00:198:18::100]:6443"]
backend = "b"
[[balancer.backend]]
name = "b"
check = { type = "tcp" }
[[balancer.backend.server]]
name = "s1"
address = "198.18.0.21:6443"
[[balancer.backend.server]]
name = "s2"
address = "198.18.0.22:6443"
"#,
        );
        assert_eq!(fds_needed(&cfg), 2000 + 500 + 2 + 2 + 64);
        // This process's limit already covers a small need: nothing to raise, never lowered.
        let small = BalancerConfig { maxconn: 1, ..cfg.clone() };
        let before = raise_fd_limit(&small).expect("not strict");
        assert!(before.enough(), "{before:?}");
        let after = raise_fd_limit(&small).unwrap();
        assert_eq!((after.soft, after.hard), (before.soft, before.hard));
        // An impossible need: refused with strict_limits, a plain report without.
        let huge = BalancerConfig { maxconn: u32::MAX / 4, strict_limits: true, ..cfg };
        let e = raise_fd_limit(&huge).expect_err("no process may hold 2^31 descriptors");
        assert!(e.to_string().contains("too low for maxconn"), "{e}");
        assert!(!raise_fd_limit(&BalancerConfig { strict_limits: false, ..huge }).unwrap().enough());
    }

    #[test]
    fn kubeadm_style_config_maps_onto_the_runtime() {
        let cfg = parse(
            r#"
[balancer]
maxconn = 5000
[balancer.timeouts]
connect = "3s"
tunnel = "1h"
[[balancer.frontend]]
name = "kube-apiserver"
bind = ["198.18.0.100:6443", "[fd00:198:18::100]:6443"]
freebind = true
backend = "apiservers"
[[balancer.backend]]
name = "apiservers"
balance = "leastconn"
redispatch = 2
check = { type = "https", uri = "/readyz", method = "GET", expect_status = ["200"], sni = "kubernetes", inter = "1s", fall = 2 }
[balancer.backend.default_server]
on_marked_down = "shutdown_sessions"
slowstart = "30s"
[[balancer.backend.server]]
name = "api1"
address = "198.18.0.21:6443"
[[balancer.backend.server]]
name = "api2"
address = "198.18.0.22:6443"
send_proxy = "v2"
check = false
"#,
        );
        let p = tcp_proxies(&cfg).unwrap();
        assert_eq!(p.len(), 1);
        let p = &p[0];
        assert_eq!(p.frontend.bind.to_string(), "198.18.0.100:6443");
        assert_eq!(p.frontend.extra_binds.len(), 1);
        assert!(p.frontend.freebind && p.frontend.reuseport);
        assert_eq!(p.frontend.maxconn, 5000);
        assert_eq!(p.timeouts.connect, Duration::from_secs(3));
        assert_eq!(p.timeouts.idle.tunnel, Some(Duration::from_secs(3600)));
        assert_eq!(p.backend.algorithm, Algorithm::LeastConn);
        assert_eq!(p.backend.redispatch, Redispatch::Every(2));
        assert_eq!(p.backend.retry_delay, Duration::from_secs(1));
        let (spec, params) = p.backend.servers[0].check.clone().expect("api1 is checked");
        assert_eq!(
            spec.kind,
            CheckKind::Http(HttpCheck {
                method: "GET".into(),
                uri: "/readyz".into(),
                version: "HTTP/1.0".into(),
                headers: vec![],
                body: vec![],
                expect: StatusMatch::exactly(200),
            })
        );
        assert_eq!(spec.tls, Some(CheckTls { sni: Some("kubernetes".into()), verify: TlsVerify::None }));
        assert_eq!(spec.timeout, Duration::from_secs(1));
        assert_eq!((params.fall, params.rise), (2, 2));
        assert!(params.shutdown_sessions);
        assert_eq!(params.slowstart, Some(Duration::from_secs(30)));
        assert!(p.backend.servers[1].check.is_none());
        assert_eq!(p.backend.servers[1].send_proxy, Some(Version::V2));
    }

    #[test]
    fn sni_routes_map_onto_a_router() {
        let cfg = parse(
            r#"
[balancer]
[[balancer.frontend]]
name = "tls"
bind = ["198.18.0.100:443"]
backend = "fallback"
[[balancer.frontend.route]]
sni = "*.apps.test"
backend = "ingress"
[[balancer.frontend.route]]
sni = "api.test"
backend = "apiservers"
[[balancer.backend]]
name = "ingress"
[[balancer.backend.server]]
name = "i1"
address = "198.18.0.31:443"
[[balancer.backend]]
name = "apiservers"
[[balancer.backend.server]]
name = "a1"
address = "198.18.0.21:6443"
[[balancer.backend]]
name = "fallback"
"#,
        );
        let f = tcp_frontends(&cfg).unwrap();
        let TcpFrontend::Router { frontend, routes, default, .. } = &f[0] else { panic!("{f:?}") };
        assert_eq!(frontend.name, "tls");
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].pattern, "*.apps.test");
        assert_eq!(routes[0].backend.backend.name, "ingress");
        assert_eq!(routes[1].backend.backend.servers[0].name, "a1");
        assert_eq!(default.as_ref().map(|d| d.backend.name.as_str()), Some("fallback"));
        assert!(tcp_proxies(&cfg).is_err(), "the single-backend mapping refuses routes");
    }

    #[test]
    fn unsupported_features_are_refused() {
        let cfg = parse(
            r#"
[balancer]
[[balancer.frontend]]
name = "web"
bind = ["198.18.0.100:80"]
mode = "http"
backend = "b"
[[balancer.backend]]
name = "b"
"#,
        );
        assert!(matches!(tcp_proxies(&cfg), Err(MapError::Unsupported { place, feature: "mode http" }) if place == "web"));
        let cfg = parse(
            r#"
[balancer]
[[balancer.frontend]]
name = "fe"
bind = ["198.18.0.100:80"]
backend = "missing"
"#,
        );
        assert!(matches!(tcp_proxies(&cfg), Err(MapError::UnknownBackend { .. })));
    }

    #[test]
    fn http_frontends_map_routes_onto_their_backends() {
        let cfg = parse(
            r#"
[balancer]
[balancer.timeouts]
http_request = "3s"
http_keep_alive = "4s"
[[balancer.frontend]]
name = "web"
bind = ["198.18.0.100:80"]
mode = "http"
backend = "a"
monitor_uri = "/healthz"
forwarded_for = true
[[balancer.frontend.route]]
host = "b.example"
backend = "b"
[[balancer.frontend.route]]
path_prefix = "/a/"
backend = "a"
[[balancer.backend]]
name = "a"
[[balancer.backend.server]]
name = "a1"
address = "198.18.0.21:80"
[[balancer.backend]]
name = "b"
[[balancer.backend.server]]
name = "b1"
address = "198.18.0.22:80"
"#,
        );
        let fes = tcp_frontends(&cfg).unwrap();
        let TcpFrontend::Http(h) = &fes[0] else { panic!("not an http frontend") };
        let names: Vec<&str> = h.backends.iter().map(|b| b.backend.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(h.default, Some(0));
        assert_eq!(h.routes[0], HttpRoute { sni: None, host: Some("b.example".into()), path_prefix: None, backend: 1 });
        assert_eq!(h.routes[1].backend, 0);
        assert_eq!(h.monitor_uri.as_deref(), Some("/healthz"));
        assert!(h.forwarded_for && h.tls.is_none());
        assert_eq!(h.timeouts.http_request, Duration::from_secs(3));
        assert_eq!(h.timeouts.http_keep_alive, Duration::from_secs(4));
        assert_eq!(h.frontend.name, "web");
    }

    #[test]
    fn tls_termination_needs_readable_pem_files() {
        let cfg = parse(
            r#"
[balancer]
[[balancer.frontend]]
name = "tls"
bind = ["198.18.0.100:443"]
backend = "b"
tls = { cert = "/nonexistent/cert.pem", key = "/nonexistent/key.pem" }
[[balancer.backend]]
name = "b"
[[balancer.backend.server]]
name = "b1"
address = "198.18.0.22:80"
"#,
        );
        match tcp_frontends(&cfg) {
            Err(MapError::Tls { frontend, reason }) => {
                assert_eq!(frontend, "tls");
                assert!(reason.contains("/nonexistent/cert.pem"), "{reason}");
            }
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }
}
