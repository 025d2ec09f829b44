//! Importer for haproxy.cfg: the subset kubeadm's HA guide, kubespray and MySQL-fronting configs use
//! becomes `[balancer]` (and `[control] balancer_socket` from `stats socket`).
//!
//! The file is split into sections (`global`, `defaults`, `frontend`, `backend`, `listen`, others),
//! each line into words with HAProxy's quoting (`"..."` with backslash escapes, `'...'` literal,
//! `\ ` outside quotes, `#` comments). A proxy inherits the last `defaults` section before it, as in
//! HAProxy. HAProxy sets health-check parameters per server and hastack per backend: servers that
//! disagree with the first checked server of their backend are listed. Timeouts are per proxy in
//! HAProxy and global in hastack: the first value of each wins and a different later one is listed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hastack_common::{HostPort, HumanDuration, KeyPath, SockAddr};
use tcp_balancer::config::{
    Backend, BalancerConfig, Balance, Check, CheckType, Frontend, Mode, OnMarkedDown, ProxyVersion, Redispatch,
    Route, Server, StatusRange, Verify,
};

use super::{Draft, Import, Kind};

/// Converts a haproxy config into hastack TOML.
pub fn convert(text: &str) -> Import {
    let mut draft = Draft::new(text, |l| !l.is_empty() && !l.starts_with('#'));
    let sections = split(text, &mut draft);
    let mut c = Conv::new(draft);
    c.run(&sections);
    let mut r = c.finish();
    runtime_check(&mut r, &sections);
    r
}

/// The schema has a few settings the balancer runtime does not run yet; when the converted config
/// uses one, say so at the top (the daemon would refuse to start with this message).
fn runtime_check(r: &mut Import, sections: &[Section]) {
    let Ok(config) = crate::config::Config::from_str_named("<imported>", &r.toml) else {
        return;
    };
    let Some(b) = &config.balancer else {
        return;
    };
    if let Err(e) = tcp_balancer::from_config::tcp_frontends(b) {
        let text = format!("hastack balancer refuses this today: {e}");
        let place = match &e {
            tcp_balancer::from_config::MapError::Unsupported { place, .. } => Some(place.clone()),
            tcp_balancer::from_config::MapError::NoBackend(p) | tcp_balancer::from_config::MapError::NoBind(p) => Some(p.clone()),
            tcp_balancer::from_config::MapError::UnknownBackend { frontend, .. } => Some(frontend.clone()),
            tcp_balancer::from_config::MapError::Tls { frontend, .. } => Some(frontend.clone()),
            tcp_balancer::from_config::MapError::Check { backend, .. } => Some(backend.clone()),
        };
        let line = sections
            .iter()
            .find(|s| place.as_deref().is_some_and(|p| s.header.words.get(1).is_some_and(|w| w == p)))
            .map_or(1, |s| s.header.n);
        let comment = format!("# line {line}: {text}\n");
        match r.toml.find('\n') {
            Some(i) => r.toml.insert_str(i + 1, &comment),
            None => r.toml.push_str(&comment),
        }
        r.notes.push(super::Note { line, text });
    }
}

/// One keyword line: its number and words.
#[derive(Debug, Clone)]
struct Line {
    n: usize,
    words: Vec<String>,
}

impl Line {
    fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }
}

/// A section: its header and keyword lines.
#[derive(Debug)]
struct Section {
    header: Line,
    lines: Vec<Line>,
}

const PROXY_SECTIONS: [&str; 5] = ["global", "defaults", "frontend", "backend", "listen"];
const OTHER_SECTIONS: [&str; 12] = [
    "userlist", "peers", "resolvers", "mailers", "program", "http-errors", "ring", "cache", "fcgi-app", "crt-store",
    "traces", "log-forward",
];

/// Splits HAProxy's quoting: returns the words, or why the line cannot be read.
fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => cur.push(c),
            (Some('"'), '"') => quote = None,
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (_, '\\') => {
                in_word = true;
                match chars.next() {
                    Some('r') => cur.push('\r'),
                    Some('n') => cur.push('\n'),
                    Some('t') => cur.push('\t'),
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        match u8::from_str_radix(&hex, 16) {
                            Ok(b) if b.is_ascii() => cur.push(char::from(b)),
                            _ => return Err(format!("unsupported escape \\x{hex}")),
                        }
                    }
                    Some(other) => cur.push(other),
                    None => return Err("a backslash ends the line".into()),
                }
            }
            (Some(_), '$') | (None, '$') if chars.peek() == Some(&'{') => {
                return Err("environment variables (${...}) are not expanded".into());
            }
            (Some(_), _) => cur.push(c),
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn split(text: &str, draft: &mut Draft) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let words = match tokenize(raw) {
            Ok(w) if w.is_empty() => continue,
            Ok(w) => w,
            Err(e) => {
                if !raw.trim().is_empty() {
                    draft.skip(n, e);
                }
                continue;
            }
        };
        let line = Line { n, words };
        let kw = line.word(0);
        if PROXY_SECTIONS.contains(&kw) || OTHER_SECTIONS.contains(&kw) {
            sections.push(Section { header: line, lines: Vec::new() });
        } else if let Some(s) = sections.last_mut() {
            s.lines.push(line);
        } else {
            draft.skip(n, "a keyword before any section");
        }
    }
    sections
}

/// Parses HAProxy's time format: a number with an optional unit (us, ms, s, m, h, d; default ms).
fn time(s: &str) -> Option<HumanDuration> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let v: u64 = num.parse().ok()?;
    let d = match unit {
        "" | "ms" => Duration::from_millis(v),
        "us" => Duration::from_micros(v),
        "s" => Duration::from_secs(v),
        "m" => Duration::from_secs(v.checked_mul(60)?),
        "h" => Duration::from_secs(v.checked_mul(3600)?),
        "d" => Duration::from_secs(v.checked_mul(86_400)?),
        _ => return None,
    };
    // Beyond a year is a typo or "forever"; keep what humantime renders and reads back.
    (d <= Duration::from_secs(366 * 86_400)).then_some(HumanDuration(d))
}

fn number(s: &str) -> Option<u32> {
    s.parse().ok()
}

/// The health-check type chosen by the last check option (`option httpchk`, ...).
#[derive(Debug, Clone, PartialEq)]
enum CheckOpt {
    Tcp,
    Http { method: Option<String>, uri: Option<String>, version: Option<String>, headers: Vec<(String, String)> },
    SslHello,
    Mysql { user: Option<String> },
}

/// Server keywords that hastack has (from `server` and `default-server` lines).
#[derive(Debug, Clone, Default, PartialEq)]
struct ServerOpts {
    check: Option<bool>,
    check_ssl: Option<bool>,
    verify: Option<Verify>,
    ca_file: Option<PathBuf>,
    sni: Option<String>,
    port: Option<u16>,
    inter: Option<HumanDuration>,
    fastinter: Option<HumanDuration>,
    downinter: Option<HumanDuration>,
    rise: Option<u32>,
    fall: Option<u32>,
    weight: Option<u32>,
    maxconn: Option<u32>,
    maxqueue: Option<u32>,
    slowstart: Option<HumanDuration>,
    backup: Option<bool>,
    send_proxy: Option<ProxyVersion>,
    on_marked_down: Option<OnMarkedDown>,
}

impl ServerOpts {
    fn overlay(&mut self, o: &ServerOpts) {
        macro_rules! take {
            ($($f:ident),*) => { $( if o.$f.is_some() { self.$f = o.$f.clone(); } )* };
        }
        take!(check, check_ssl, verify, ca_file, sni, port, inter, fastinter, downinter, rise, fall, weight, maxconn,
            maxqueue, slowstart, backup, send_proxy, on_marked_down);
    }

    /// The settings that belong to the backend's check in hastack.
    fn check_params(&self) -> (Option<bool>, Option<Verify>, Option<PathBuf>, Option<String>, Option<u16>, [Option<HumanDuration>; 3], [Option<u32>; 2]) {
        (
            self.check_ssl,
            self.verify,
            self.ca_file.clone(),
            self.sni.clone(),
            self.port,
            [self.inter, self.fastinter, self.downinter],
            [self.rise, self.fall],
        )
    }
}

/// Parses server keywords from `words`; unknown or unsupported ones are an error.
fn server_opts(words: &[String]) -> Result<ServerOpts, String> {
    let mut o = ServerOpts::default();
    let mut i = 0;
    let arg = |i: usize, kw: &str| -> Result<&String, String> { words.get(i + 1).ok_or_else(|| format!("{kw} needs a value")) };
    while i < words.len() {
        let kw = words[i].as_str();
        let mut used = 1;
        match kw {
            "check" => o.check = Some(true),
            "no-check" => o.check = Some(false),
            "check-ssl" => o.check_ssl = Some(true),
            "no-check-ssl" => o.check_ssl = Some(false),
            "verify" => {
                o.verify = Some(match arg(i, kw)?.as_str() {
                    "none" => Verify::None,
                    "required" => Verify::Required,
                    v => return Err(format!("unsupported value verify {v}")),
                });
                used = 2;
            }
            "ca-file" => {
                o.ca_file = Some(PathBuf::from(arg(i, kw)?));
                used = 2;
            }
            "check-sni" | "sni" => {
                let v = arg(i, kw)?;
                // `sni` takes a sample expression; only a constant string is a check SNI.
                let name = if kw == "sni" {
                    v.strip_prefix("str(").and_then(|s| s.strip_suffix(')')).ok_or_else(|| format!("unsupported value sni {v}: only str(NAME) converts"))?
                } else {
                    v.as_str()
                };
                o.sni = Some(name.to_string());
                used = 2;
            }
            "port" => {
                o.port = Some(arg(i, kw)?.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("unsupported value port {}", words[i + 1]))?);
                used = 2;
            }
            "inter" | "fastinter" | "downinter" | "slowstart" => {
                let v = arg(i, kw)?;
                let t = time(v).ok_or_else(|| format!("unsupported value {kw} {v}"))?;
                match kw {
                    "inter" => o.inter = Some(t),
                    "fastinter" => o.fastinter = Some(t),
                    "downinter" => o.downinter = Some(t),
                    _ => o.slowstart = Some(t),
                }
                used = 2;
            }
            "rise" | "fall" | "weight" | "maxconn" | "maxqueue" => {
                let v = arg(i, kw)?;
                let n = number(v).ok_or_else(|| format!("unsupported value {kw} {v}"))?;
                match kw {
                    "rise" => o.rise = Some(n),
                    "fall" => o.fall = Some(n),
                    "weight" => o.weight = Some(n),
                    "maxconn" => o.maxconn = Some(n),
                    _ => o.maxqueue = Some(n),
                }
                used = 2;
            }
            "backup" => o.backup = Some(true),
            "no-backup" => o.backup = Some(false),
            "send-proxy" => o.send_proxy = Some(ProxyVersion::V1),
            "send-proxy-v2" => o.send_proxy = Some(ProxyVersion::V2),
            "on-marked-down" => {
                match arg(i, kw)?.as_str() {
                    "shutdown-sessions" => o.on_marked_down = Some(OnMarkedDown::ShutdownSessions),
                    v => return Err(format!("unsupported value on-marked-down {v}")),
                }
                used = 2;
            }
            "ssl" => return Err("ssl towards servers is not supported (hastack relays TCP; TLS to servers is only for checks)".into()),
            "resolvers" | "init-addr" | "resolve-prefer" => return Err(format!("{kw}: host names are not resolved")),
            "agent-check" | "agent-port" | "agent-inter" | "agent-send" => return Err(format!("{kw}: agent checks are not supported")),
            "cookie" => return Err("cookie persistence is not supported".into()),
            "disabled" => return Err("disabled servers: leave the line out, or use hastack balancer ctl set server state maint".into()),
            _ => return Err(format!("unsupported server keyword {kw}")),
        }
        i += used;
    }
    Ok(o)
}

/// Settings a `defaults` section hands down, each with the line it came from.
#[derive(Debug, Clone, Default)]
struct Settings {
    mode: Option<(Mode, usize)>,
    balance: Option<(Balance, u8, usize)>,
    hash_consistent: Option<usize>,
    check: Option<(CheckOpt, usize)>,
    /// `http-check` lines, already parsed: (connect ssl, sni, port, send, expect) parts.
    http_check: Vec<(HttpCheck, usize)>,
    timeouts: Vec<(String, HumanDuration, usize)>,
    retries: Option<(u32, usize)>,
    redispatch: Option<(i32, usize)>,
    maxconn: Option<(u32, usize)>,
    forwardfor: Option<usize>,
    /// Lines converted in every proxy without a key of their own (splice, tcpka options).
    noops: Vec<usize>,
    /// http-mode-only lines with no hastack equivalent: (line, reason).
    http_only: Vec<(usize, String)>,
    default_server: Vec<(ServerOpts, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
enum HttpCheck {
    Connect { ssl: bool, sni: Option<String>, port: Option<u16> },
    Send { method: Option<String>, uri: Option<String>, version: Option<String>, headers: Vec<(String, String)> },
    ExpectStatus(Vec<StatusRange>),
    ExpectString(String),
}

fn parse_http_check(words: &[String]) -> Result<HttpCheck, String> {
    let rest = &words[2.min(words.len())..];
    let pairs = |kws: &[&str]| -> Result<BTreeMap<String, Vec<String>>, String> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut i = 0;
        while i < rest.len() {
            let k = rest[i].as_str();
            if k == "ssl" && kws.contains(&"ssl") {
                out.entry("ssl".into()).or_default();
                i += 1;
                continue;
            }
            if k == "hdr" && kws.contains(&"hdr") {
                let (Some(n), Some(v)) = (rest.get(i + 1), rest.get(i + 2)) else {
                    return Err("hdr needs a name and a value".into());
                };
                out.entry("hdr".into()).or_default().push(format!("{n}\n{v}"));
                i += 3;
                continue;
            }
            if !kws.contains(&k) {
                return Err(format!("unsupported http-check {} parameter {k}", words[1]));
            }
            let v = rest.get(i + 1).ok_or_else(|| format!("{k} needs a value"))?;
            out.entry(k.to_string()).or_default().push(v.clone());
            i += 2;
        }
        Ok(out)
    };
    match words.get(1).map(String::as_str) {
        Some("connect") => {
            let p = pairs(&["ssl", "sni", "port"])?;
            let port = match p.get("port").and_then(|v| v.first()) {
                Some(v) => Some(v.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("unsupported value port {v}"))?),
                None => None,
            };
            Ok(HttpCheck::Connect { ssl: p.contains_key("ssl"), sni: p.get("sni").and_then(|v| v.first().cloned()), port })
        }
        Some("send") => {
            let p = pairs(&["meth", "uri", "ver", "hdr"])?;
            let one = |k: &str| p.get(k).and_then(|v| v.last().cloned());
            let headers = p
                .get("hdr")
                .map(|hs| hs.iter().filter_map(|h| h.split_once('\n')).map(|(a, b)| (a.to_string(), b.to_string())).collect())
                .unwrap_or_default();
            Ok(HttpCheck::Send { method: one("meth"), uri: one("uri"), version: one("ver"), headers })
        }
        Some("expect") => match (words.get(2).map(String::as_str), words.get(3), words.len()) {
            (Some("status"), Some(v), 4) => v
                .split(',')
                .map(|s| s.parse::<StatusRange>())
                .collect::<Result<Vec<_>, _>>()
                .map(HttpCheck::ExpectStatus),
            (Some("string"), Some(v), 4) => Ok(HttpCheck::ExpectString(v.clone())),
            _ => Err("only http-check expect status CODES and expect string TEXT convert".into()),
        },
        Some(other) => Err(format!("http-check {other} has no hastack equivalent")),
        None => Err("http-check needs a rule".into()),
    }
}

/// `option httpchk [method] [uri] [version[\r\nheaders]]`.
fn parse_httpchk(args: &[String]) -> CheckOpt {
    let (method, uri, version) = match args {
        [] => (None, None, None),
        [uri] => (None, Some(uri.clone()), None),
        [m, uri] => (Some(m.clone()), Some(uri.clone()), None),
        [m, uri, v, ..] => (Some(m.clone()), Some(uri.clone()), Some(v.clone())),
    };
    let mut headers = Vec::new();
    let version = version.map(|v| {
        let mut parts = v.split("\r\n");
        let ver = parts.next().unwrap_or_default().to_string();
        for h in parts.filter(|h| !h.is_empty()) {
            if let Some((name, value)) = h.split_once(':') {
                headers.push((name.trim().to_string(), value.trim().to_string()));
            }
        }
        ver
    });
    CheckOpt::Http { method, uri, version, headers }
}

/// A timeout keyword: its hastack key and whether it belongs to frontends, backends or both.
fn timeout_key(name: &str) -> Option<(&'static str, bool, bool)> {
    Some(match name {
        "client" => ("client", true, false),
        "client-fin" => ("client_fin", true, false),
        "http-request" => ("http_request", true, false),
        "http-keep-alive" => ("http_keep_alive", true, true),
        "connect" => ("connect", false, true),
        "server" => ("server", false, true),
        "server-fin" => ("server_fin", false, true),
        "queue" => ("queue", false, true),
        "tunnel" => ("tunnel", false, true),
        "check" => ("check", false, true),
        _ => return None,
    })
}

/// Per-server queues are in the schema but not in the balancer runtime yet: the line is converted
/// without them, and listed so the operator knows.
/// Likewise for matching a string in an http check's response.
const RUNTIME_EXPECT_STRING: &str = "http-check expect string is not supported by the balancer runtime yet; the check expects a 2xx or 3xx status";

const LOGGING: &str = "hastack logs through tracing ([logging]); HAProxy's log settings have no equivalent";

struct Conv {
    draft: Draft,
    balancer: BalancerConfig,
    balancer_lines: Vec<usize>,
    socket: Option<(PathBuf, usize)>,
    /// Global timeouts: the first value of each and its line.
    timeouts: BTreeMap<&'static str, (HumanDuration, usize)>,
    /// Lines of every defaults section, to list the ones no proxy used.
    defaults_lines: Vec<usize>,
    /// Lines given a place (origin) or consumed.
    used: BTreeSet<usize>,
    verify_default: Verify,
}

impl Conv {
    fn new(draft: Draft) -> Self {
        Self {
            draft,
            balancer: BalancerConfig::default(),
            balancer_lines: Vec::new(),
            socket: None,
            timeouts: BTreeMap::new(),
            defaults_lines: Vec::new(),
            used: BTreeSet::new(),
            verify_default: Verify::None,
        }
    }

    fn place(&mut self, line: usize, path: &KeyPath) {
        self.used.insert(line);
        self.draft.origin(line, path);
    }

    fn consume(&mut self, line: usize) {
        self.used.insert(line);
        self.draft.consumed(line);
    }

    fn skip(&mut self, line: usize, reason: impl Into<String>) {
        self.used.insert(line);
        self.draft.skip(line, reason);
    }

    fn run(&mut self, sections: &[Section]) {
        let mut defaults = Settings::default();
        let mut defaults_header: Option<usize> = None;
        for s in sections {
            let kw = s.header.word(0).to_string();
            match kw.as_str() {
                "global" => self.global(s),
                "defaults" => {
                    if s.header.words.len() > 2 || s.header.words.get(1).is_some_and(|w| w == "from") {
                        self.skip(s.header.n, "named defaults with from are not supported");
                    }
                    defaults = self.settings(s, true, &mut Vec::new());
                    defaults_header = Some(s.header.n);
                    self.defaults_lines.push(s.header.n);
                    self.defaults_lines.extend(s.lines.iter().map(|l| l.n));
                }
                "frontend" | "backend" | "listen" => {
                    if let Some(h) = defaults_header {
                        self.place_later(h);
                    }
                    self.proxy(s, &defaults);
                }
                other => {
                    let reason = format!("HAProxy's {other} section has no hastack equivalent");
                    self.skip(s.header.n, reason.clone());
                    for l in &s.lines {
                        self.skip(l.n, reason.clone());
                    }
                }
            }
        }
    }

    /// A defaults header counts as converted once a proxy uses it.
    fn place_later(&mut self, header: usize) {
        self.consume(header);
    }

    fn global(&mut self, s: &Section) {
        self.consume(s.header.n);
        let base = KeyPath::new("balancer");
        for l in &s.lines {
            let n = l.n;
            let args = &l.words[1..];
            match (l.word(0), args.len()) {
                ("maxconn", 1) => match number(&args[0]) {
                    Some(v) => {
                        self.balancer.maxconn = v;
                        self.place(n, &base.key("maxconn"));
                        self.balancer_lines.push(n);
                    }
                    None => self.skip(n, format!("unsupported value {}", args[0])),
                },
                ("nbthread", 1) => match number(&args[0]) {
                    Some(v) => {
                        self.balancer.threads = Some(v);
                        self.place(n, &base.key("threads"));
                        self.balancer_lines.push(n);
                    }
                    None => self.skip(n, format!("unsupported value {}", args[0])),
                },
                ("hard-stop-after", 1) => match time(&args[0]) {
                    Some(t) => {
                        self.balancer.hard_stop_after = Some(t);
                        self.place(n, &base.key("hard_stop_after"));
                        self.balancer_lines.push(n);
                    }
                    None => self.skip(n, format!("unsupported value {}", args[0])),
                },
                ("strict-limits", 0) => {
                    self.balancer.strict_limits = true;
                    self.place(n, &base.key("strict_limits"));
                    self.balancer_lines.push(n);
                }
                ("nbproc", 1) if args[0] == "1" => self.consume(n),
                ("stats", _) if l.word(1) == "socket" => self.stats_socket(l),
                ("stats", _) => self.skip(n, "the runtime API is [control] balancer_socket; its timeouts and limits are fixed"),
                ("ssl-server-verify", 1) if args[0] == "none" || args[0] == "required" => {
                    self.verify_default = if args[0] == "none" { Verify::None } else { Verify::Required };
                    self.consume(n);
                }
                ("log" | "log-tag" | "log-send-hostname" | "log-format", _) => self.skip(n, LOGGING),
                ("ulimit-n", _) => self.skip(n, "the balancer sizes its descriptor limit from maxconn itself (strict_limits makes a shortfall an error); a lower cap is systemd's LimitNOFILE="),
                ("daemon" | "master-worker" | "user" | "group" | "uid" | "gid" | "chroot" | "pidfile" | "node"
                | "description", _) => self.skip(n, "process settings are systemd's (dist/hastack-balancer.service)"),
                (kw, _) if kw.starts_with("ssl-") || kw.starts_with("tune.") || kw.starts_with("ca-base") || kw.starts_with("crt-base") => {
                    self.skip(n, "no hastack equivalent")
                }
                (kw, _) => self.skip(n, format!("global {kw} has no hastack equivalent")),
            }
        }
    }

    fn stats_socket(&mut self, l: &Line) {
        let path = l.word(2);
        if path.is_empty() || !path.starts_with('/') {
            self.skip(l.n, "the runtime API listens on a Unix socket path only ([control] balancer_socket)");
            return;
        }
        let mut i = 3;
        while i < l.words.len() {
            match l.word(i) {
                "mode" | "level" | "user" | "group" | "uid" | "gid" | "expose-fd" => i += 2,
                other => {
                    self.skip(l.n, format!("unsupported stats socket parameter {other}"));
                    return;
                }
            }
        }
        self.socket = Some((PathBuf::from(path), l.n));
        self.draft.note(l.n, "hastack's runtime API (show stat, set server state, ...) is always admin level and readable by root and [control] group");
    }

    /// Reads the proxy keywords of a section into settings (defaults) or applies them to a proxy.
    /// Lines that are not settings are returned in `rest`.
    fn settings(&mut self, s: &Section, is_defaults: bool, rest: &mut Vec<Line>) -> Settings {
        let mut st = Settings::default();
        for l in &s.lines {
            let n = l.n;
            let args = &l.words[1..];
            let no = l.word(0) == "no" && l.word(1) == "option";
            let (kw, opt) = if l.word(0) == "option" || no { ("option", l.word(if no { 2 } else { 1 })) } else { (l.word(0), "") };
            let opt_args: &[String] = if kw == "option" { &l.words[if no { 3 } else { 2 }.min(l.words.len())..] } else { &[] };
            match (kw, opt) {
                ("mode", _) => match args.first().map(String::as_str) {
                    Some(m @ ("tcp" | "http")) if args.len() == 1 => {
                        let m = if m == "tcp" { Mode::Tcp } else { Mode::Http };
                        if let Some((_, prev)) = st.mode.replace((m, n)) {
                            self.consume(prev);
                        }
                    }
                    _ => self.skip(n, format!("unsupported value {}", args.join(" "))),
                },
                ("balance", _) => {
                    let b = match args.first().map(String::as_str) {
                        Some("roundrobin") => Some((Balance::Roundrobin, 2)),
                        Some("static-rr") => Some((Balance::StaticRr, 2)),
                        Some("leastconn") => Some((Balance::Leastconn, 2)),
                        Some("first") => Some((Balance::First, 2)),
                        Some("source") => Some((Balance::Source, 2)),
                        Some("random") => Some((Balance::Random, 2)),
                        Some(r) => r
                            .strip_prefix("random(")
                            .and_then(|x| x.strip_suffix(')'))
                            .and_then(|x| x.parse::<u8>().ok())
                            .filter(|d| *d > 0)
                            .map(|d| (Balance::Random, d)),
                        None => None,
                    };
                    match b {
                        Some((b, d)) if args.len() == 1 => {
                            if let Some((_, _, prev)) = st.balance.replace((b, d, n)) {
                                self.consume(prev);
                            }
                        }
                        _ => self.skip(n, format!("unsupported value balance {}: hastack has roundrobin, static-rr, leastconn, first, source and random", args.join(" "))),
                    }
                }
                ("hash-type", _) => match args.first().map(String::as_str) {
                    Some("consistent") => st.hash_consistent = Some(n),
                    _ => self.skip(n, "hastack's source hash is always consistent"),
                },
                ("timeout", _) => {
                    let name = l.word(1);
                    match (timeout_key(name), args.get(1).and_then(|v| time(v)), args.len()) {
                        (Some(_), Some(t), 2) => {
                            // A later line for the same timeout replaces the earlier one.
                            if let Some(i) = st.timeouts.iter().position(|x| x.0 == name) {
                                let (_, _, prev) = st.timeouts.remove(i);
                                self.consume(prev);
                            }
                            st.timeouts.push((name.to_string(), t, n));
                        }
                        (Some(_), _, _) => self.skip(n, format!("unsupported value {}", args[1..].join(" "))),
                        (None, _, _) if name == "tarpit" => self.skip(n, "tarpit has no hastack equivalent"),
                        (None, _, _) => self.skip(n, format!("unknown timeout {name}")),
                    }
                }
                ("contimeout" | "clitimeout" | "srvtimeout", _) => {
                    self.skip(n, "obsolete keyword: write timeout connect/client/server")
                }
                ("retries", _) => match args.first().and_then(|v| number(v)) {
                    Some(r) if args.len() == 1 => {
                        if let Some((_, prev)) = st.retries.replace((r, n)) {
                            self.consume(prev);
                        }
                    }
                    _ => self.skip(n, format!("unsupported value {}", args.join(" "))),
                },
                ("maxconn", _) => match args.first().and_then(|v| number(v)) {
                    Some(m) if args.len() == 1 => {
                        if let Some((_, prev)) = st.maxconn.replace((m, n)) {
                            self.consume(prev);
                        }
                    }
                    _ => self.skip(n, format!("unsupported value {}", args.join(" "))),
                },
                ("default-server", _) => match server_opts(args) {
                    Ok(o) => st.default_server.push((o, n)),
                    Err(e) => self.skip(n, e),
                },
                ("option", "redispatch") => {
                    let v = match (no, opt_args) {
                        (true, []) => Some(0),
                        (false, []) => Some(-1),
                        (false, [x]) => x.parse::<i32>().ok(),
                        _ => None,
                    };
                    match v {
                        Some(v) => {
                            if let Some((_, prev)) = st.redispatch.replace((v, n)) {
                                self.consume(prev);
                            }
                        }
                        None => self.skip(n, format!("unsupported value {}", opt_args.join(" "))),
                    }
                }
                ("option", "httpchk") if !no => self.set_check(&mut st, (parse_httpchk(opt_args), n)),
                ("option", "ssl-hello-chk") if !no && opt_args.is_empty() => self.set_check(&mut st, (CheckOpt::SslHello, n)),
                ("option", "tcp-check") if !no && opt_args.is_empty() => self.set_check(&mut st, (CheckOpt::Tcp, n)),
                ("option", "mysql-check") if !no => match opt_args {
                    [] => self.set_check(&mut st, (CheckOpt::Mysql { user: None }, n)),
                    [u, name] | [u, name, _] if u == "user" => {
                        if opt_args.get(2).is_some_and(|v| v != "post-41") {
                            self.skip(n, "only the post-41 MySQL protocol is supported");
                        } else {
                            self.set_check(&mut st, (CheckOpt::Mysql { user: Some(name.clone()) }, n));
                        }
                    }
                    _ => self.skip(n, format!("unsupported value {}", opt_args.join(" "))),
                },
                ("option", "pgsql-check" | "redis-check" | "smtpchk" | "ldap-check" | "spop-check" | "external-check") => {
                    self.skip(n, format!("{opt}: hastack checks are tcp, http(s), ssl-hello and mysql"))
                }
                ("http-check", _) => match parse_http_check(&l.words) {
                    Ok(h) => st.http_check.push((h, n)),
                    Err(e) => self.skip(n, e),
                },
                ("tcp-check", _) => {
                    if l.words.len() == 2 && l.word(1) == "connect" {
                        st.noops.push(n);
                    } else {
                        self.skip(n, "tcp-check rules are not supported: hastack's tcp check only connects")
                    }
                }
                ("option", "forwardfor") if !no => {
                    if opt_args.is_empty() {
                        st.forwardfor = Some(n);
                    } else {
                        st.http_only.push((n, format!("option forwardfor {}: hastack always adds X-Forwarded-For (no except/header/if-none)", opt_args.join(" "))));
                    }
                }
                ("option", "splice-auto" | "splice-request" | "splice-response") if !no => st.noops.push(n),
                ("option", "tcpka" | "clitcpka" | "srvtcpka") if !no => st.noops.push(n),
                ("option", "httplog" | "tcplog" | "dontlognull" | "dontlog-normal" | "log-separate-errors" | "logasap" | "log-health-checks") => {
                    self.skip(n, LOGGING)
                }
                ("log" | "log-format" | "log-tag" | "error-log-format" | "log-format-sd", _) => self.skip(n, LOGGING),
                ("option", "http-server-close" | "httpclose" | "http-keep-alive" | "http-pretend-keepalive" | "http-no-delay"
                | "http-buffer-request" | "http-use-htx") => st.http_only.push((n, format!("option {opt}: hastack keeps connections alive on both sides; there is no such option"))),
                ("errorfile" | "errorloc" | "errorloc302" | "errorloc303" | "compression" | "http-reuse", _) => {
                    st.http_only.push((n, format!("{kw} has no hastack equivalent")))
                }
                _ if is_defaults => self.skip(n, format!("{} has no hastack equivalent", l.words.join(" "))),
                _ => rest.push(l.clone()),
            }
        }
        st
    }

    /// The last check-type option wins, as in HAProxy: an earlier one in the same section is
    /// overridden (converted, with no effect of its own).
    fn set_check(&mut self, st: &mut Settings, check: (CheckOpt, usize)) {
        if let Some((_, prev)) = st.check.replace(check) {
            self.consume(prev);
        }
    }

    fn proxy(&mut self, s: &Section, defaults: &Settings) {
        let kind = s.header.word(0).to_string();
        let Some(name) = s.header.words.get(1).cloned() else {
            self.skip(s.header.n, format!("{kind} without a name"));
            for l in &s.lines {
                self.skip(l.n, format!("its {kind} has no name"));
            }
            return;
        };
        let mut rest = Vec::new();
        let own = self.settings(s, false, &mut rest);
        let mut st = defaults.clone();
        // The proxy's own settings win over its defaults, key by key.
        macro_rules! over {
            ($($f:ident),*) => { $( if own.$f.is_some() { st.$f = own.$f.clone(); } )* };
        }
        over!(mode, balance, hash_consistent, check, retries, redispatch, maxconn, forwardfor);
        if !own.http_check.is_empty() {
            st.http_check = own.http_check.clone();
        }
        st.timeouts.retain(|d| !own.timeouts.iter().any(|o| o.0 == d.0));
        st.timeouts.extend(own.timeouts.iter().cloned());
        st.noops.extend(own.noops.iter().copied());
        st.http_only.extend(own.http_only.iter().cloned());
        st.default_server.extend(own.default_server.iter().cloned());
        let own_lines: BTreeSet<usize> = s.lines.iter().map(|l| l.n).collect();

        let is_front = kind != "backend";
        let is_back = kind != "frontend";
        let mode = st.mode.as_ref().map_or(Mode::Tcp, |m| m.0);
        let header_bind: Vec<String> = if kind == "listen" { s.header.words[2..].to_vec() } else { Vec::new() };
        if kind != "listen" && s.header.words.len() > 2 {
            self.skip(s.header.n, format!("unexpected words after the {kind} name"));
        }

        let (fi, bi) = (self.balancer.frontends.len(), self.balancer.backends.len());
        let fpath = KeyPath::new("balancer.frontend").index(fi);
        let bpath = KeyPath::new("balancer.backend").index(bi);
        let mut frontend = is_front.then(|| Frontend::new(name.clone(), Vec::new()));
        let mut backend = is_back.then(|| {
            let mut b = Backend::new(name.clone());
            b.redispatch = Redispatch(0); // HAProxy does not redispatch unless told to
            b
        });
        if let Some(f) = &mut frontend {
            f.mode = mode;
            if kind == "listen" {
                f.backend = Some(name.clone());
            }
            self.place(s.header.n, &fpath);
            if let Some((_, l)) = st.mode {
                self.place(l, &fpath.key("mode"));
            }
            if !header_bind.is_empty() {
                let words: Vec<String> = header_bind.clone();
                if let Err(e) = self.bind(f, &fpath, &words, s.header.n) {
                    self.skip(s.header.n, e);
                }
            }
            if let Some((m, l)) = st.maxconn {
                f.maxconn = Some(m);
                self.place(l, &fpath.key("maxconn"));
            }
            if let Some(l) = st.forwardfor {
                if mode == Mode::Http {
                    f.forwarded_for = true;
                    self.place(l, &fpath.key("forwarded_for"));
                } else if own_lines.contains(&l) {
                    self.skip(l, "option forwardfor needs mode http");
                }
            }
        }
        if let Some(b) = &mut backend {
            self.place(s.header.n, &bpath);
            if let Some((_, l)) = st.mode {
                self.place(l, &bpath);
            }
            if let Some((bal, draws, l)) = st.balance {
                b.balance = bal;
                b.random_draws = draws;
                self.place(l, &bpath.key("balance"));
            }
            if let Some(l) = st.hash_consistent {
                if b.balance == Balance::Source {
                    self.place(l, &bpath.key("balance"));
                } else if own_lines.contains(&l) {
                    self.skip(l, "hash-type only matters with balance source here");
                }
            }
            if let Some((r, l)) = st.retries {
                b.retries = r;
                self.place(l, &bpath.key("retries"));
            }
            if let Some((r, l)) = st.redispatch {
                b.redispatch = Redispatch(r);
                self.place(l, &bpath.key("redispatch"));
            }
        } else {
            // A frontend: backend-only settings of its own section do nothing in HAProxy either.
            for l in [st.balance.map(|b| b.2), st.retries.map(|r| r.1), st.redispatch.map(|r| r.1), st.check.as_ref().map(|c| c.1)]
                .into_iter()
                .flatten()
                .filter(|l| own_lines.contains(l))
            {
                self.skip(l, format!("a backend keyword in frontend {name}"));
            }
        }
        for (line, reason) in &st.http_only {
            if mode == Mode::Http || own_lines.contains(line) {
                self.skip(*line, reason.clone());
            }
        }
        for l in st.noops.clone() {
            if is_back || !own_lines.contains(&l) {
                self.place(l, &KeyPath::new("balancer"));
            }
        }
        // Timeouts go to the global table; those that do not apply to this kind of proxy are
        // ignored by HAProxy too (and listed when written in this very section).
        for (tname, value, l) in st.timeouts.clone() {
            let Some((key, front, back)) = timeout_key(&tname) else { continue };
            if !((front && is_front) || (back && is_back)) {
                if own_lines.contains(&l) {
                    self.skip(l, format!("timeout {tname} has no effect in a {kind}"));
                }
                continue;
            }
            self.timeout(key, value, l);
        }

        // The rest: frontend- and backend-only keywords.
        let mut servers: Vec<(String, HostPort, ServerOpts, usize)> = Vec::new();
        let rest = match &mut frontend {
            Some(f) => self.routes(f, &fpath, rest),
            None => rest,
        };
        for l in &rest {
            let n = l.n;
            match (l.word(0), &mut frontend, &mut backend) {
                ("bind", Some(f), _) => {
                    let words = l.words[1..].to_vec();
                    if let Err(e) = self.bind(f, &fpath, &words, n) {
                        self.skip(n, e);
                    }
                }
                ("default_backend", Some(f), _) if l.words.len() == 2 => {
                    f.backend = Some(l.words[1].clone());
                    self.place(n, &fpath.key("backend"));
                }
                ("monitor-uri", Some(f), _) if l.words.len() == 2 => {
                    f.monitor_uri = Some(l.words[1].clone());
                    self.place(n, &fpath.key("monitor_uri"));
                }
                ("backlog", Some(f), _) => match l.words.get(1).and_then(|v| number(v)) {
                    Some(b) if l.words.len() == 2 => {
                        f.backlog = b;
                        self.place(n, &fpath.key("backlog"));
                    }
                    _ => self.skip(n, "unsupported value"),
                },
                ("use_backend", Some(_), _) => {
                    self.skip(n, "ACL-based routing is not converted: write [[balancer.frontend.route]] (host, path_prefix or sni)")
                }
                ("server", _, Some(_)) => match parse_server(&l.words) {
                    Ok((sname, addr, opts)) => servers.push((sname, addr, opts, n)),
                    Err(e) => self.skip(n, e),
                },
                ("acl" | "tcp-request" | "http-request" | "http-response" | "redirect" | "use-server" | "tcp-response", _, _) => {
                    self.skip(n, format!("{}: ACLs and request rules are not supported", l.word(0)))
                }
                ("stats", _, _) => self.skip(n, "the stats page has no hastack equivalent: use hastack balancer ctl show stat or the Prometheus metrics"),
                ("cookie" | "stick-table" | "stick" | "persist", _, _) => self.skip(n, "session persistence is not supported"),
                ("option", _, _) => self.skip(n, format!("option {} has no hastack equivalent", l.words[1..].join(" "))),
                (kw, _, _) => self.skip(n, format!("{kw} has no hastack equivalent in a {kind}")),
            }
        }

        if let Some(b) = &mut backend {
            self.servers(b, &bpath, &st, servers, &own_lines);
        } else {
            for (_, (o, l)) in st.default_server.iter().enumerate() {
                if own_lines.contains(l) {
                    let _ = o;
                    self.skip(*l, format!("default-server has no effect in frontend {name}"));
                }
            }
            for (_, l) in &st.http_check {
                if own_lines.contains(l) {
                    self.skip(*l, format!("http-check has no effect in frontend {name}"));
                }
            }
        }
        if let Some(f) = frontend {
            self.balancer.frontends.push(f);
        }
        if let Some(b) = backend {
            self.balancer.backends.push(b);
        }
    }

    /// `acl` + `use_backend ... if ...` lines that say "this host / path prefix / SNI goes to that
    /// backend" become routes; the other lines are returned.
    fn routes(&mut self, f: &mut Frontend, fpath: &KeyPath, lines: Vec<Line>) -> Vec<Line> {
        let mut acls: BTreeMap<String, (Vec<(Match, usize)>, bool)> = BTreeMap::new();
        let mut rest = Vec::new();
        for l in &lines {
            if l.word(0) == "acl" && l.words.len() >= 3 {
                match parse_match(&l.words[2..]) {
                    Ok(m) => acls.entry(l.words[1].clone()).or_default().0.push((m, l.n)),
                    // An ACL hastack cannot express poisons every route that uses it.
                    Err(e) => {
                        acls.entry(l.words[1].clone()).or_default().1 = true;
                        self.skip(l.n, e);
                    }
                }
            }
        }
        let mut hello_rules = Vec::new();
        for l in lines {
            match l.word(0) {
                "acl" if l.words.len() >= 3 => {}
                "use_backend" => match self.route(&l, &acls) {
                    Ok((route, used)) => {
                        let i = f.routes.len();
                        f.routes.push(route);
                        let path = fpath.key("route").index(i);
                        self.place(l.n, &path);
                        for u in used {
                            self.place(u, &path);
                        }
                    }
                    Err(e) => self.skip(l.n, e),
                },
                // Waiting for the ClientHello before routing by SNI: hastack's SNI router does that.
                "tcp-request"
                    if (l.word(1) == "inspect-delay" && l.words.len() == 3)
                        || (l.words[1..].join(" ").starts_with("content accept if")
                            && l.words[1..].join(" ").contains("ssl_hello_type 1")) =>
                {
                    hello_rules.push(l.n)
                }
                _ => rest.push(l),
            }
        }
        let sni = f.routes.iter().any(|r| r.sni.is_some());
        for n in hello_rules {
            if sni {
                self.place(n, &fpath.key("route"));
            } else {
                self.skip(n, "waiting for a TLS ClientHello only matters for routing by SNI");
            }
        }
        for (name, (ms, _)) in &acls {
            for (_, n) in ms {
                if !self.used.contains(n) {
                    self.skip(*n, format!("acl {name} is only converted as the condition of a use_backend route"));
                }
            }
        }
        rest
    }

    /// `use_backend NAME if COND...` where every condition is an ACL name or `{ fetch value }`.
    fn route(&self, l: &Line, acls: &BTreeMap<String, (Vec<(Match, usize)>, bool)>) -> Result<(Route, Vec<usize>), String> {
        let unsupported = "only use_backend NAME if CONDITION converts, each condition a host (hdr(host), hdr_end(host)), path_beg or req.ssl_sni match; no unless, or, !";
        let (Some(backend), Some("if")) = (l.words.get(1), l.words.get(2).map(String::as_str)) else {
            return Err(unsupported.into());
        };
        let mut matches: Vec<(Match, Option<usize>)> = Vec::new();
        let mut words = l.words[3..].iter();
        while let Some(w) = words.next() {
            if w == "{" {
                let inner: Vec<String> = words.by_ref().take_while(|x| *x != "}").cloned().collect();
                matches.push((parse_match(&inner)?, None));
            } else if w == "!" || w == "||" || w == "or" || w.starts_with('!') {
                return Err(unsupported.into());
            } else {
                match acls.get(w.as_str()) {
                    Some((ms, false)) if ms.len() == 1 => matches.extend(ms.iter().map(|(m, n)| (m.clone(), Some(*n)))),
                    Some((_, false)) => return Err(format!("acl {w} is defined more than once (an OR): not converted")),
                    Some((_, true)) => return Err(format!("acl {w} does not convert")),
                    None => return Err(format!("acl {w} is not defined in this frontend")),
                }
            }
        }
        if matches.is_empty() {
            return Err(unsupported.into());
        }
        let mut r = Route { host: None, path_prefix: None, sni: None, backend: backend.clone() };
        let mut used = Vec::new();
        for (m, n) in matches {
            let slot = match &m {
                Match::Host(_) => &mut r.host,
                Match::Path(_) => &mut r.path_prefix,
                Match::Sni(_) => &mut r.sni,
            };
            if slot.is_some() {
                return Err("two conditions on the same thing: not converted".into());
            }
            *slot = Some(match m {
                Match::Host(v) | Match::Path(v) | Match::Sni(v) => v,
            });
            used.extend(n);
        }
        Ok((r, used))
    }

    fn timeout(&mut self, key: &'static str, value: HumanDuration, line: usize) {
        let path = KeyPath::new("balancer.timeouts").key(key);
        match self.timeouts.get(key) {
            None => {
                self.timeouts.insert(key, (value, line));
                self.place(line, &path);
            }
            Some((v, _)) if *v == value => self.place(line, &path),
            Some((v, first)) => {
                let first = *first;
                let v = *v;
                self.skip(line, format!("hastack has one {key} timeout for every proxy: {v} from line {first} is kept"));
            }
        }
    }

    /// Adds a bind line's addresses and parameters to `f`.
    fn bind(&mut self, f: &mut Frontend, fpath: &KeyPath, words: &[String], n: usize) -> Result<(), String> {
        let Some(list) = words.first() else {
            return Err("bind needs an address".into());
        };
        let mut addrs = Vec::new();
        for a in list.split(',') {
            addrs.push(bind_addr(a)?);
        }
        let mut accept_proxy = false;
        let mut freebind = false;
        let mut backlog = None;
        let mut ssl = false;
        let mut crts: Vec<PathBuf> = Vec::new();
        let mut alpn: Vec<String> = Vec::new();
        let mut i = 1;
        while i < words.len() {
            match words[i].as_str() {
                "accept-proxy" => accept_proxy = true,
                "transparent" | "freebind" => freebind = true,
                "name" | "id" => i += 1,
                "backlog" => {
                    backlog = Some(words.get(i + 1).and_then(|v| number(v)).ok_or("unsupported value backlog")?);
                    i += 1;
                }
                "ssl" => ssl = true,
                "crt" => {
                    let path = words.get(i + 1).ok_or("crt needs a file")?;
                    if path.ends_with('/') || !path.starts_with('/') {
                        return Err(format!("unsupported value crt {path}: give the absolute path of one PEM file (list a directory's files as crt lines)"));
                    }
                    // Several crt: the first is the default, the others are chosen by SNI.
                    crts.push(PathBuf::from(path));
                    i += 1;
                }
                "alpn" => {
                    alpn = words.get(i + 1).ok_or("alpn needs a list")?.split(',').map(str::to_string).collect();
                    i += 1;
                }
                other => return Err(format!("unsupported bind parameter {other}")),
            }
            i += 1;
        }
        let several = crts.len() > 1;
        let tls = match (ssl, crts.split_first()) {
            (false, None) if alpn.is_empty() => None,
            (true, Some((pem, more))) => Some(tcp_balancer::config::FrontendTls {
                cert: pem.clone(),
                key: pem.clone(),
                alpn,
                sni_certs: more.iter().map(|p| tcp_balancer::config::CertKey { cert: p.clone(), key: p.clone() }).collect(),
            }),
            _ => return Err("TLS termination needs ssl and crt together".into()),
        };
        if let Some(t) = tls {
            match &f.tls {
                Some(have) if *have != t => return Err("a second bind with another certificate: hastack has one certificate per frontend".into()),
                _ => {}
            }
            f.tls = Some(t);
            self.place(n, &fpath.key("tls"));
            self.draft.note(n, "crt holds the chain and the key in one PEM file: tls cert and key both name it");
            if several {
                self.draft.note(n, "the first crt is the default certificate; the others (tls sni_certs) are chosen by the client's SNI against their names");
            }
        }
        let start = f.bind.len();
        for (j, a) in addrs.into_iter().enumerate() {
            f.bind.push(a);
            self.place(n, &fpath.key("bind").index(start + j));
        }
        if accept_proxy {
            f.accept_proxy = true;
            self.place(n, &fpath.key("accept_proxy"));
        }
        if freebind {
            f.freebind = true;
            self.place(n, &fpath.key("freebind"));
        }
        if let Some(b) = backlog {
            f.backlog = b;
            self.place(n, &fpath.key("backlog"));
        }
        Ok(())
    }

    /// Servers, default-server and the check of a backend.
    fn servers(&mut self, b: &mut Backend, bpath: &KeyPath, st: &Settings, servers: Vec<(String, HostPort, ServerOpts, usize)>, own: &BTreeSet<usize>) {
        let mut dflt = ServerOpts::default();
        for (o, _) in &st.default_server {
            dflt.overlay(o);
        }
        let ds = &mut b.default_server;
        ds.weight = dflt.weight;
        ds.maxconn = dflt.maxconn;
        ds.maxqueue = dflt.maxqueue;
        ds.slowstart = dflt.slowstart;
        ds.send_proxy = dflt.send_proxy;
        ds.on_marked_down = dflt.on_marked_down;
        for (_, l) in &st.default_server {
            self.place(*l, &bpath.key("default_server"));
        }
        // Effective server settings: default-server, then the server's own keywords.
        let eff: Vec<ServerOpts> = servers
            .iter()
            .map(|(_, _, o, _)| {
                let mut e = dflt.clone();
                e.overlay(o);
                e
            })
            .collect();
        let checked: Vec<usize> = (0..servers.len()).filter(|i| eff[*i].check == Some(true)).collect();
        let reference = checked.first().map(|i| eff[*i].check_params());
        let mut check: Option<Check> = None;
        if let Some(params) = &reference {
            let (check_ssl, verify, ca_file, sni, port, [inter, fastinter, downinter], [rise, fall]) = params.clone();
            let mut c = Check::default();
            let mut connect_ssl = false;
            match st.check.as_ref().map(|x| &x.0) {
                None | Some(CheckOpt::Tcp) => c.kind = CheckType::Tcp,
                Some(CheckOpt::SslHello) => c.kind = CheckType::SslHello,
                Some(CheckOpt::Mysql { user }) => {
                    c.kind = CheckType::Mysql;
                    c.mysql_user = user.clone();
                }
                Some(CheckOpt::Http { method, uri, version, headers }) => {
                    c.kind = CheckType::Http;
                    c.method = method.clone();
                    c.uri = uri.clone();
                    c.version = version.clone();
                    c.headers = headers.iter().cloned().collect();
                }
            }
            let http = c.kind == CheckType::Http;
            if let Some((_, l)) = &st.check {
                self.place(*l, &bpath.key("check"));
            }
            for (rule, l) in &st.http_check {
                let ok = match rule {
                    _ if !http => Err("http-check rules need option httpchk".to_string()),
                    HttpCheck::Connect { ssl, sni: csni, port: cport } => {
                        connect_ssl |= *ssl;
                        if csni.is_some() {
                            c.sni = csni.clone();
                        }
                        if cport.is_some() {
                            c.port = *cport;
                        }
                        Ok(())
                    }
                    HttpCheck::Send { method, uri, version, headers } => {
                        c.method = method.clone().or(c.method.take());
                        c.uri = uri.clone().or(c.uri.take());
                        c.version = version.clone().or(c.version.take());
                        c.headers.extend(headers.iter().cloned());
                        Ok(())
                    }
                    HttpCheck::ExpectStatus(s) if c.expect_status.is_empty() && c.expect_string.is_none() => {
                        c.expect_status = s.clone();
                        Ok(())
                    }
                    HttpCheck::ExpectString(_) => Err(RUNTIME_EXPECT_STRING.to_string()),
                    _ => Err("only one http-check expect rule converts".to_string()),
                };
                match ok {
                    Ok(()) => self.place(*l, &bpath.key("check")),
                    Err(e) if own.contains(l) || !http => self.skip(*l, e),
                    Err(_) => {}
                }
            }
            // HTTP/1.1 checks send Host from the headers in hastack's schema.
            if let Some(h) = c.headers.remove("Host").or_else(|| c.headers.remove("host")) {
                c.host = Some(h);
            }
            let tls = check_ssl == Some(true) || connect_ssl;
            match (c.kind, tls) {
                (CheckType::Http, true) => c.kind = CheckType::Https,
                (CheckType::Tcp, true) => {
                    c.kind = CheckType::SslHello;
                    self.draft.note(servers[checked[0]].3, "check-ssl on a connect check: converted to an ssl-hello check (a TLS ClientHello answered by a ServerHello)");
                }
                _ => {}
            }
            if matches!(c.kind, CheckType::Https | CheckType::SslHello) {
                c.sni = sni.or(c.sni.take());
                if c.kind == CheckType::Https {
                    c.verify = verify.unwrap_or(if ca_file.is_some() { Verify::Required } else { self.verify_default });
                    if c.verify == Verify::Required {
                        c.ca_file = ca_file;
                    }
                }
            }
            if let Some(p) = port {
                c.port = Some(p);
            }
            if let Some(t) = inter {
                c.inter = t;
            }
            c.fastinter = fastinter;
            c.downinter = downinter;
            if let Some(r) = rise {
                c.rise = r;
            }
            if let Some(f) = fall {
                c.fall = f;
            }
            check = Some(c);
        } else {
            let reason = format!("has no effect: no server of backend {} has check (HAProxy does not check them either)", b.name);
            if let Some((_, l)) = &st.check
                && own.contains(l)
            {
                self.skip(*l, reason.clone());
            }
            for (_, l) in &st.http_check {
                if own.contains(l) {
                    self.skip(*l, reason.clone());
                }
            }
        }
        b.check = check;
        let first_name = checked.first().map(|i| servers[*i].0.clone()).unwrap_or_default();
        for (i, (name, addr, o, n)) in servers.into_iter().enumerate() {
            let e = &eff[i];
            if e.check == Some(true) && reference.as_ref() != Some(&e.check_params()) {
                self.skip(n, format!("its check settings differ from server {first_name}'s: hastack checks every server of a backend the same way"));
                continue;
            }
            let j = b.servers.len();
            let spath = bpath.key("server").index(j);
            let mut s = Server::new(name, addr);
            s.backup = o.backup.or(dflt.backup).unwrap_or(false);
            s.weight = o.weight;
            s.maxconn = o.maxconn;
            s.maxqueue = o.maxqueue;
            s.slowstart = o.slowstart;
            s.send_proxy = o.send_proxy;
            s.on_marked_down = o.on_marked_down;
            if b.check.is_some() && e.check != Some(true) {
                s.check = Some(false);
            }
            b.servers.push(s);
            self.place(n, &spath);
            if e.check == Some(true) {
                self.place(n, &bpath.key("check"));
            }
        }
    }

    fn finish(mut self) -> Import {
        // Defaults lines that reached no converted proxy.
        for l in std::mem::take(&mut self.defaults_lines) {
            if !self.used.contains(&l) {
                self.draft.skip(l, "has no effect on any converted proxy (no proxy uses it, or each overrides it)");
            }
        }
        let t = &mut self.balancer.timeouts;
        for (key, (v, _)) in &self.timeouts {
            match *key {
                "connect" => t.connect = *v,
                "client" => t.client = *v,
                "server" => t.server = *v,
                "http_request" => t.http_request = *v,
                "http_keep_alive" => t.http_keep_alive = *v,
                "tunnel" => t.tunnel = Some(*v),
                "queue" => t.queue = Some(*v),
                "client_fin" => t.client_fin = Some(*v),
                "server_fin" => t.server_fin = Some(*v),
                "check" => t.check = Some(*v),
                _ => {}
            }
        }
        let has_proxies = !self.balancer.frontends.is_empty() || !self.balancer.backends.is_empty();
        if has_proxies {
            self.draft.config.balancer = Some(self.balancer);
        } else {
            for l in self.balancer_lines {
                self.draft.skip(l, "no frontend, backend or listen section to apply it to");
            }
        }
        if let Some((path, n)) = self.socket {
            let control = crate::config::ControlConfig { balancer_socket: path, ..Default::default() };
            self.draft.config.control = Some(control);
            self.draft.origin(n, &KeyPath::new("control.balancer_socket"));
        }
        self.draft.finish(Kind::Haproxy)
    }
}

/// What an ACL hastack can route on matches.
#[derive(Debug, Clone, PartialEq)]
enum Match {
    Host(String),
    Path(String),
    Sni(String),
}

/// `fetch [-i] [-m str] value`: the fetches hastack routes on, with one value.
fn parse_match(words: &[String]) -> Result<Match, String> {
    let Some((fetch, rest)) = words.split_first() else {
        return Err("an empty condition".into());
    };
    let mut icase = false;
    let mut values = Vec::new();
    let mut it = rest.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "-i" => icase = true,
            "-m" if it.next().is_some_and(|m| m == "str") => {}
            f if f.starts_with('-') => return Err(format!("ACL flag {f} is not supported")),
            v => values.push(v.to_string()),
        }
    }
    let [value] = values.as_slice() else {
        return Err("only ACLs with one value convert".into());
    };
    let host = |v: &str| v.to_ascii_lowercase();
    match fetch.as_str() {
        "hdr(host)" | "req.hdr(host)" if !value.contains('*') => Ok(Match::Host(host(value))),
        "hdr_end(host)" | "req.hdr_end(host)" if value.starts_with('.') => Ok(Match::Host(format!("*{}", host(value)))),
        "req_ssl_sni" | "req.ssl_sni" if !value.contains('*') => Ok(Match::Sni(host(value))),
        "path_beg" | "req.path_beg" if value.starts_with('/') && !icase => Ok(Match::Path(value.clone())),
        "path_beg" | "req.path_beg" => Err("path_beg converts case-sensitive and starting with /".into()),
        other => Err(format!("ACL fetch {other} is not supported (host, path_beg and req.ssl_sni are)")),
    }
}

/// `*:6443`, `:6443`, `0.0.0.0:6443`, `:::6443`, `[::]:6443`, `ipv4@...`, `ipv6@...`.
fn bind_addr(a: &str) -> Result<SockAddr, String> {
    let a = a.strip_prefix("ipv4@").or_else(|| a.strip_prefix("ipv6@")).unwrap_or(a);
    if a.starts_with('/') || a.contains('@') {
        return Err(format!("unsupported bind address {a}: hastack listens on IP addresses"));
    }
    let (host, port) = a.rsplit_once(':').ok_or_else(|| format!("bind address {a} has no port"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("unsupported value {a}: one port 1-65535 (no ranges)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = match host {
        "" | "*" => IpAddr::from([0, 0, 0, 0]),
        "::" => IpAddr::from([0u16; 8]),
        h => h.parse().map_err(|_| format!("unsupported value {a}: host names are not resolved"))?,
    };
    Ok(SockAddr(SocketAddr::new(ip, port)))
}

/// `server NAME ADDR[:PORT] [keywords]`.
fn parse_server(words: &[String]) -> Result<(String, HostPort, ServerOpts), String> {
    let (Some(name), Some(addr)) = (words.get(1), words.get(2)) else {
        return Err("server needs a name and an address".into());
    };
    let a = addr.strip_prefix("ipv4@").or_else(|| addr.strip_prefix("ipv6@")).unwrap_or(addr);
    let hp = if let Ok(sa) = a.parse::<SocketAddr>() {
        HostPort { ip: sa.ip(), port: Some(sa.port()) }
    } else if a.parse::<IpAddr>().is_ok() && !a.contains('.') && a.matches(':').count() >= 2 {
        // HAProxy reads the last colon of a bare IPv6 address as the port separator.
        let (h, p) = a.rsplit_once(':').unwrap_or((a, ""));
        match (h.parse::<IpAddr>(), p.parse::<u16>()) {
            (Ok(ip), Ok(port)) if port > 0 => HostPort { ip, port: Some(port) },
            _ => return Err(format!("unsupported value {addr}: write the port after the address")),
        }
    } else if a.parse::<IpAddr>().is_ok() {
        return Err(format!("server {name} has no port: HAProxy would use the client's destination port, hastack needs one"));
    } else {
        return Err(format!("unsupported value {addr}: host names are not resolved; write IP:port"));
    };
    let opts = server_opts(&words[3..])?;
    Ok((name.clone(), hp, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn run(text: &str) -> (Config, Vec<(usize, String)>) {
        let r = convert(text);
        let c = Config::from_str_named("t.toml", &r.toml).unwrap_or_else(|d| panic!("{d}\n{}", r.toml));
        (c, r.unconverted.into_iter().map(|u| (u.line, u.reason)).collect())
    }

    fn backend<'a>(c: &'a Config, name: &str) -> &'a Backend {
        c.balancer.as_ref().and_then(|b| b.backend(name)).unwrap_or_else(|| panic!("no backend {name}"))
    }

    #[test]
    fn words_follow_haproxy_quoting() {
        let w = tokenize(r#"a "b c" 'd\e' f\ g "h\"i" # comment"#).unwrap();
        assert_eq!(w, ["a", "b c", r"d\e", "f g", "h\"i"]);
        assert_eq!(tokenize(r"x\r\ny").unwrap(), ["x\r\ny"]);
        assert!(tokenize("a \"b").unwrap_err().contains("unterminated"));
        assert!(tokenize("bind ${VIP}:6443").unwrap_err().contains("environment"));
        assert_eq!(tokenize("   # only a comment").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn times_default_to_milliseconds() {
        assert_eq!(time("2000"), Some(HumanDuration::from_secs(2)));
        assert_eq!(time("500ms"), Some(HumanDuration::from_millis(500)));
        assert_eq!(time("5m"), Some(HumanDuration::from_secs(300)));
        assert_eq!(time("1h"), Some(HumanDuration::from_secs(3600)));
        assert_eq!(time("10x"), None);
        assert_eq!(time("99999999999999999999d"), None);
    }

    #[test]
    fn bind_addresses_in_haproxy_forms() {
        let ok = |a: &str| bind_addr(a).map(|s| s.to_string());
        assert_eq!(ok("*:80").unwrap(), "0.0.0.0:80");
        assert_eq!(ok(":80").unwrap(), "0.0.0.0:80");
        assert_eq!(ok(":::80").unwrap(), "[::]:80");
        assert_eq!(ok("[::1]:6443").unwrap(), "[::1]:6443");
        assert_eq!(ok("ipv4@198.18.0.100:6443").unwrap(), "198.18.0.100:6443");
        assert!(ok("/run/x.sock").is_err());
        assert!(ok("*:80-81").is_err());
        assert!(ok("api.example:80").unwrap_err().contains("host names"));
    }

    #[test]
    fn the_last_check_option_wins_and_the_earlier_one_counts_as_converted() {
        let (c, un) = run("backend b\n option httpchk GET /x\n option mysql-check user probe\n server s1 198.18.0.21:3306 check\nfrontend f\n bind :3306\n default_backend b\n");
        let ch = backend(&c, "b").check.clone().unwrap();
        assert_eq!(ch.kind, CheckType::Mysql);
        assert_eq!(ch.mysql_user.as_deref(), Some("probe"));
        assert_eq!(ch.uri, None);
        assert!(un.is_empty(), "{un:?}");
    }

    #[test]
    fn http_check_rules_and_check_ssl_make_an_https_check() {
        let text = "backend api\n option httpchk\n http-check connect ssl sni kubernetes\n http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host api\n http-check expect status 200-399\n server a 198.18.0.21:6443 check verify none inter 3s\n server b 198.18.0.22:6443 check verify none inter 3s\nfrontend f\n bind :6443\n default_backend api\n";
        let (c, un) = run(text);
        assert!(un.is_empty(), "{un:?}");
        let ch = backend(&c, "api").check.clone().unwrap();
        assert_eq!(ch.kind, CheckType::Https);
        assert_eq!((ch.method.as_deref(), ch.uri.as_deref(), ch.version.as_deref()), (Some("GET"), Some("/readyz"), Some("HTTP/1.1")));
        assert_eq!(ch.host.as_deref(), Some("api"));
        assert_eq!(ch.sni.as_deref(), Some("kubernetes"));
        assert_eq!(ch.expect_status, vec![StatusRange(200, 399)]);
        assert_eq!(ch.inter, HumanDuration::from_secs(3));
        // The old form: option httpchk with the version and headers in one word.
        let (c, _) = run("backend b\n option httpchk GET /healthz \"HTTP/1.1\\r\\nHost: api\"\n server a 198.18.0.21:6443 check check-ssl\nfrontend f\n bind :1\n default_backend b\n");
        let ch = backend(&c, "b").check.clone().unwrap();
        assert_eq!((ch.kind, ch.version.as_deref(), ch.host.as_deref()), (CheckType::Https, Some("HTTP/1.1"), Some("api")));
    }

    #[test]
    fn a_server_checked_differently_from_the_others_is_listed() {
        let (c, un) = run("backend b\n server a 198.18.0.21:80 check inter 2s\n server b 198.18.0.22:80 check inter 5s\n server c 198.18.0.23:80\nfrontend f\n bind :80\n default_backend b\n");
        let b = backend(&c, "b");
        assert_eq!(b.servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(b.servers[1].check, Some(false), "an unchecked server stays unchecked");
        assert_eq!(un.len(), 1);
        assert_eq!(un[0].0, 3);
        assert!(un[0].1.contains("differ from server a's"), "{un:?}");
    }

    #[test]
    fn without_a_checked_server_the_check_options_are_listed() {
        let (c, un) = run("backend b\n option httpchk\n server a 198.18.0.21:80\nfrontend f\n bind :80\n default_backend b\n");
        assert!(backend(&c, "b").check.is_none());
        assert_eq!(un.len(), 1);
        assert!(un[0].1.contains("no server of backend b has check"), "{un:?}");
    }

    #[test]
    fn one_timeout_per_kind_the_first_wins() {
        let (c, un) = run("defaults\n timeout server 30s\nbackend a\n server s 198.18.0.21:80\nbackend b\n timeout server 1m\n server s 198.18.0.21:80\nfrontend f\n bind :80\n timeout server 5s\n default_backend a\n");
        assert_eq!(c.balancer.as_ref().unwrap().timeouts.server, HumanDuration::from_secs(30));
        let lines: Vec<usize> = un.iter().map(|u| u.0).collect();
        assert_eq!(lines, [6, 10], "{un:?}");
        assert!(un[0].1.contains("from line 2 is kept"), "{un:?}");
        assert!(un[1].1.contains("no effect in a frontend"), "{un:?}");
    }

    #[test]
    fn servers_with_host_names_or_without_ports_are_listed() {
        let (c, un) = run("backend b\n server a api.example:6443 check\n server b 198.18.0.22 check\n server c 198.18.0.23:6443 check\nfrontend f\n bind :6443\n default_backend b\n");
        assert_eq!(backend(&c, "b").servers.len(), 1);
        assert!(un[0].1.contains("host names are not resolved"), "{un:?}");
        assert!(un[1].1.contains("has no port"), "{un:?}");
    }

    #[test]
    fn validation_takes_out_what_hastack_refuses_and_says_why() {
        // frontend maxconn above the global one; a frontend whose backend has no server.
        let (c, un) = run("global\n maxconn 100\nfrontend f\n bind :80\n maxconn 500\n default_backend b\nfrontend g\n bind :81\n default_backend empty\nbackend b\n server s 198.18.0.21:80\nbackend empty\n");
        let bal = c.balancer.unwrap();
        assert_eq!(bal.frontends.len(), 1);
        assert_eq!(bal.frontends[0].maxconn, None);
        let by_line: BTreeMap<usize, String> = un.into_iter().collect();
        assert!(by_line[&5].contains("above the global maxconn 100"), "{by_line:?}");
        assert!(by_line[&12].contains("backend empty has no server"), "{by_line:?}");
        assert!(by_line.contains_key(&7) && by_line.contains_key(&8) && by_line.contains_key(&9), "{by_line:?}");
    }

    #[test]
    fn listen_sections_stats_socket_and_global_settings() {
        let (c, un) = run("global\n nbthread 4\n hard-stop-after 1m\n stats socket /run/haproxy/admin.sock mode 660 level admin\nlisten db 198.18.0.100:3306\n bind 198.18.0.100:3307 accept-proxy\n server s 198.18.0.31:3306 send-proxy on-marked-down shutdown-sessions slowstart 10s\n");
        assert!(un.is_empty(), "{un:?}");
        let bal = c.balancer.unwrap();
        assert_eq!(bal.threads, Some(4));
        assert_eq!(bal.hard_stop_after, Some(HumanDuration::from_secs(60)));
        let f = &bal.frontends[0];
        assert_eq!(f.bind.len(), 2);
        assert!(f.accept_proxy);
        assert_eq!(f.backend.as_deref(), Some("db"));
        let s = &bal.backends[0].servers[0];
        assert_eq!((s.send_proxy, s.on_marked_down), (Some(ProxyVersion::V1), Some(OnMarkedDown::ShutdownSessions)));
        assert_eq!(c.control.unwrap().balancer_socket, PathBuf::from("/run/haproxy/admin.sock"));
    }

    #[test]
    fn use_backend_with_host_path_and_sni_conditions_become_routes() {
        let text = "frontend tls\n bind :443\n tcp-request inspect-delay 5s\n tcp-request content accept if { req_ssl_hello_type 1 }\n use_backend api if { req_ssl_sni -i API.lab.example }\n default_backend web\nfrontend web\n bind :80\n mode http\n acl is_app hdr(host) -i app.lab.example\n acl is_static path_beg /static\n acl any_sub hdr_end(host) .apps.lab.example\n acl odd src 10.0.0.0/8\n use_backend api if is_app is_static\n use_backend web if any_sub\n use_backend api if odd\n use_backend web unless is_app\n default_backend web\nbackend api\n server a 198.18.0.21:443\nbackend web\n server w 198.18.0.22:80\n";
        let (c, un) = run(text);
        let bal = c.balancer.unwrap();
        let tls = &bal.frontends[0];
        assert_eq!(tls.routes, vec![Route { host: None, path_prefix: None, sni: Some("api.lab.example".into()), backend: "api".into() }]);
        let web = &bal.frontends[1];
        assert_eq!(web.routes.len(), 2);
        assert_eq!((web.routes[0].host.as_deref(), web.routes[0].path_prefix.as_deref()), (Some("app.lab.example"), Some("/static")));
        assert_eq!(web.routes[1].host.as_deref(), Some("*.apps.lab.example"));
        let lines: Vec<usize> = un.iter().map(|u| u.0).collect();
        assert_eq!(lines, [13, 16, 17], "{un:?}");
        assert!(un[0].1.contains("ACL fetch src is not supported"), "{un:?}");
        assert!(un[1].1.contains("does not convert"), "{un:?}");
    }

    #[test]
    fn ssl_binds_terminate_tls_with_the_combined_pem() {
        let (c, un) = run("frontend web\n mode http\n bind :443 ssl crt /etc/haproxy/site.pem alpn h2,http/1.1\n bind :8443 ssl crt /etc/haproxy/other.pem\n default_backend b\nbackend b\n server s 198.18.0.21:80\n");
        let f = &c.balancer.unwrap().frontends[0];
        let tls = f.tls.clone().unwrap();
        assert_eq!((tls.cert.clone(), tls.key.clone()), (PathBuf::from("/etc/haproxy/site.pem"), PathBuf::from("/etc/haproxy/site.pem")));
        assert_eq!(tls.alpn, ["h2", "http/1.1"]);
        assert_eq!(un.len(), 1);
        assert!(un[0].1.contains("one certificate per frontend"), "{un:?}");
    }

    #[test]
    fn strict_limits_is_converted_and_ulimit_n_explained() {
        let (c, un) = run("global\n maxconn 100\n strict-limits\n ulimit-n 4096\nlisten l\n bind :80\n server s 198.18.0.21:80\n");
        assert!(c.balancer.unwrap().strict_limits);
        assert_eq!(un.len(), 1, "{un:?}");
        assert!(un[0].0 == 4 && un[0].1.contains("descriptor limit from maxconn"), "{un:?}");
    }

    #[test]
    fn several_crt_on_a_bind_become_certificates_chosen_by_sni() {
        let (c, un) = run("frontend web\n mode http\n bind :443 ssl crt /etc/haproxy/default.pem crt /etc/haproxy/a.pem crt /etc/haproxy/b.pem\n default_backend b\nbackend b\n server s 198.18.0.21:80\n");
        assert!(un.is_empty(), "{un:?}");
        let tls = c.balancer.unwrap().frontends[0].tls.clone().unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/haproxy/default.pem"));
        let more: Vec<&std::path::Path> = tls.sni_certs.iter().map(|c| c.cert.as_path()).collect();
        assert_eq!(more, [std::path::Path::new("/etc/haproxy/a.pem"), std::path::Path::new("/etc/haproxy/b.pem")]);
        assert!(tls.sni_certs.iter().all(|c| c.cert == c.key));
    }

    #[test]
    fn what_the_runtime_refuses_is_said_at_the_top() {
        let r = convert("frontend f\n bind :443 accept-proxy\n use_backend a if { req_ssl_sni -i a.example }\n default_backend a\nbackend a\n server s 198.18.0.21:443\n");
        assert!(r.toml.contains("# line 1: hastack balancer refuses this today: f: accept_proxy with SNI routes"), "{}", r.toml);
        assert!(crate::config::Config::from_str_named("t", &r.toml).is_ok());
    }

    #[test]
    fn unknown_sections_and_stray_lines_are_listed() {
        let (_, un) = run("maxconn 5\nuserlist admins\n user a password x\n");
        assert_eq!(un.iter().map(|u| u.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(un[1].1.contains("userlist section has no hastack equivalent"));
    }
}
