//! Health checks with HAProxy's semantics, as a sans-IO core.
//!
//! Two pure pieces live here; [`crate::checker`] is the tokio driver that does the I/O.
//!
//! ## [`HealthCheck`]: one server's health state machine
//!
//! States: **up** or **down**, each with a counter of consecutive results against it (failures
//! while up, successes while down). A server is *fully up* (no failure counted), *fully down* (no
//! success counted) or *transitioning* (counter non-zero).
//!
//! Events in: `handle_timeout(now)` (a timer fired), `on_result(now, ok)` (a probe finished),
//! `set_enabled` (maintenance stops checks). Events out ([`HealthEvent`], via `poll_event`):
//! `StartCheck` (run one probe now), `ServerUp`, `ServerDown { shutdown_sessions }`,
//! `WeightChanged` (slowstart ramp).
//!
//! Transitions:
//! - up, failure: `failures += 1`; when it reaches `fall` → down, emit `ServerDown`.
//! - up, success: `failures = 0`.
//! - down, success: `successes += 1`; when it reaches `rise` → up, emit `ServerUp` (after a
//!   `WeightChanged` to the first slowstart step when slowstart is set).
//! - down, failure: `successes = 0`.
//!
//! The next probe is scheduled when a result arrives: `inter` when fully up, `downinter` when
//! fully down, `fastinter` while transitioning (each defaults to `inter`, as in HAProxy). The
//! initial state follows HAProxy's `init-state`: the default `up` counts `fall - 1` failures
//! already, so the first failed check marks the server down.
//!
//! ## [`Conversation`]: what one probe sends and expects
//!
//! Each check kind is a list of [`Step`]s (send bytes, expect a reply matching a rule) run over a
//! fresh connection: `option httpchk`, `http-check send/expect`, `option ssl-hello-chk`,
//! `option mysql-check` and `tcp-check send/expect` are all such lists; a plain TCP check is the
//! empty list (the connect is the check).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

/// HAProxy's `init-state`: how a server is considered before its first check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitState {
    /// Up; needs `fall` failed checks to go down.
    FullyUp,
    /// Up; the first failed check marks it down (HAProxy's default).
    #[default]
    Up,
    /// Down; the first successful check marks it up.
    Down,
    /// Down; needs `rise` successful checks.
    FullyDown,
}

/// Timing and threshold parameters of a server's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthParams {
    /// Interval between checks while fully up.
    pub inter: Duration,
    /// Interval while transitioning (defaults to `inter`).
    pub fastinter: Option<Duration>,
    /// Interval while fully down (defaults to `inter`).
    pub downinter: Option<Duration>,
    /// Consecutive successes to go up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
    /// State before the first check.
    pub init: InitState,
    /// Weight ramp duration after recovery; `None` gives full weight at once.
    pub slowstart: Option<Duration>,
    /// The server's configured weight (the slowstart ramp target).
    pub weight: u32,
    /// `on-marked-down shutdown-sessions`: close the server's sessions when it goes down.
    pub shutdown_sessions: bool,
}

impl Default for HealthParams {
    /// HAProxy's defaults: inter 2s, rise 2, fall 3, weight 1.
    fn default() -> Self {
        Self {
            inter: Duration::from_secs(2),
            fastinter: None,
            downinter: None,
            rise: 2,
            fall: 3,
            init: InitState::Up,
            slowstart: None,
            weight: 1,
            shutdown_sessions: false,
        }
    }
}

/// What the health state machine asks its driver to do or tells it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// Run one probe now and report it with [`HealthCheck::on_result`].
    StartCheck,
    /// The server became up.
    ServerUp,
    /// The server became down; close its sessions when `shutdown_sessions`.
    ServerDown {
        /// Whether established sessions must be shut.
        shutdown_sessions: bool,
    },
    /// The effective weight changed (slowstart ramp).
    WeightChanged(u32),
}

/// One server's health-check state machine (see the module doc for the lifecycle).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    params: HealthParams,
    up: bool,
    /// Consecutive failures while up, or consecutive successes while down.
    against: u32,
    enabled: bool,
    in_flight: bool,
    next_check: Instant,
    /// Start of the slowstart ramp, while one is running.
    ramp_since: Option<Instant>,
    weight: u32,
    events: VecDeque<HealthEvent>,
}

impl HealthCheck {
    /// A state machine whose first check is due at `first_check` (spread starts to avoid bursts).
    pub fn new(params: HealthParams, first_check: Instant) -> Self {
        let rise = params.rise.max(1);
        let fall = params.fall.max(1);
        let (up, against) = match params.init {
            InitState::FullyUp => (true, 0),
            InitState::Up => (true, fall - 1),
            InitState::Down => (false, rise - 1),
            InitState::FullyDown => (false, 0),
        };
        let weight = params.weight;
        Self {
            params: HealthParams { rise, fall, ..params },
            up,
            against,
            enabled: true,
            in_flight: false,
            next_check: first_check,
            ramp_since: None,
            weight,
            events: VecDeque::new(),
        }
    }

    /// Whether the server is considered up.
    pub fn is_up(&self) -> bool {
        self.up
    }
    /// Current effective weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }
    /// Whether a probe is running.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }
    /// The parameters in force.
    pub fn params(&self) -> &HealthParams {
        &self.params
    }
    /// Consecutive results against the current state (HAProxy's health counter distance).
    pub fn counter(&self) -> u32 {
        self.against
    }

    /// The interval to wait before the next probe, by HAProxy's rules.
    pub fn interval(&self) -> Duration {
        let p = &self.params;
        if self.against == 0 {
            if self.up { p.inter } else { p.downinter.unwrap_or(p.inter) }
        } else {
            p.fastinter.unwrap_or(p.inter)
        }
    }

    /// Pauses (maintenance) or resumes checks; resuming schedules a check at `now`.
    pub fn set_enabled(&mut self, now: Instant, enabled: bool) {
        if enabled && !self.enabled {
            self.next_check = now;
        }
        self.enabled = enabled;
    }

    /// When the driver must call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let check = (self.enabled && !self.in_flight).then_some(self.next_check);
        let ramp = self.next_ramp_step();
        match (check, ramp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances timers: starts a due check and moves the slowstart ramp.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.enabled && !self.in_flight && now >= self.next_check {
            self.in_flight = true;
            self.events.push_back(HealthEvent::StartCheck);
        }
        self.update_ramp(now);
    }

    /// Records the result of the probe started by the last `StartCheck`.
    pub fn on_result(&mut self, now: Instant, ok: bool) {
        self.in_flight = false;
        match (self.up, ok) {
            (true, true) | (false, false) => self.against = 0,
            (true, false) => {
                self.against += 1;
                if self.against >= self.params.fall {
                    self.up = false;
                    self.against = 0;
                    self.ramp_since = None;
                    self.events.push_back(HealthEvent::ServerDown {
                        shutdown_sessions: self.params.shutdown_sessions,
                    });
                }
            }
            (false, true) => {
                self.against += 1;
                if self.against >= self.params.rise {
                    self.up = true;
                    self.against = 0;
                    if self.params.slowstart.is_some_and(|d| !d.is_zero()) && self.params.weight > 0 {
                        self.ramp_since = Some(now);
                        self.weight = 0; // forces the first WeightChanged below
                        self.update_ramp(now);
                    }
                    self.events.push_back(HealthEvent::ServerUp);
                }
            }
        }
        self.next_check = now + self.interval();
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<HealthEvent> {
        self.events.pop_front()
    }

    /// The slowstart weight at `now`: `ceil(weight * elapsed / slowstart)`, at least 1.
    fn ramp_weight(&self, since: Instant, now: Instant) -> u32 {
        let Some(ss) = self.params.slowstart else { return self.params.weight };
        let elapsed = now.saturating_duration_since(since).as_nanos();
        let total = ss.as_nanos().max(1);
        if elapsed >= total {
            return self.params.weight;
        }
        let w = u128::from(self.params.weight);
        ((w * elapsed).div_ceil(total) as u32).clamp(1, self.params.weight)
    }

    fn update_ramp(&mut self, now: Instant) {
        let Some(since) = self.ramp_since else { return };
        let w = self.ramp_weight(since, now);
        if w != self.weight {
            self.weight = w;
            self.events.push_back(HealthEvent::WeightChanged(w));
        }
        if w >= self.params.weight {
            self.ramp_since = None;
        }
    }

    /// When the ramp next reaches a higher weight.
    fn next_ramp_step(&self) -> Option<Instant> {
        let since = self.ramp_since?;
        let ss = self.params.slowstart?.as_nanos();
        let w = u128::from(self.params.weight.max(1));
        // weight reaches cur+1 once elapsed > ss * cur / w.
        let at = (ss * u128::from(self.weight)) / w + 1;
        Some(since + Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX)))
    }
}

/// Which HTTP status codes pass an HTTP check (inclusive ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMatch(pub Vec<(u16, u16)>);

impl StatusMatch {
    /// HAProxy's default for `option httpchk` without `http-check expect`: 2xx and 3xx.
    pub fn default_ok() -> Self {
        Self(vec![(200, 399)])
    }
    /// Exactly one status code (`http-check expect status 200`).
    pub fn exactly(code: u16) -> Self {
        Self(vec![(code, code)])
    }
    fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

/// An HTTP check request (`option httpchk` / `http-check send`) and its expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Request method.
    pub method: String,
    /// Request URI.
    pub uri: String,
    /// Protocol version string, e.g. `HTTP/1.0`.
    pub version: String,
    /// Extra request headers (`hdr <name> <value>`).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// Passing status codes.
    pub expect: StatusMatch,
}

impl HttpCheck {
    /// A bare `option httpchk`: `OPTIONS / HTTP/1.0`, 2xx/3xx pass.
    pub fn bare() -> Self {
        Self {
            method: "OPTIONS".into(),
            uri: "/".into(),
            version: "HTTP/1.0".into(),
            headers: Vec::new(),
            body: Vec::new(),
            expect: StatusMatch::default_ok(),
        }
    }

    /// `http-check send meth <m> uri <u>` + `expect status <code>`.
    pub fn get(uri: &str, status: u16) -> Self {
        Self { method: "GET".into(), uri: uri.into(), expect: StatusMatch::exactly(status), ..Self::bare() }
    }

    /// The request bytes; HTTP/1.1 requests close the connection after the answer.
    pub fn request_bytes(&self) -> Vec<u8> {
        let mut r = format!("{} {} {}\r\n", self.method, self.uri, self.version).into_bytes();
        for (k, v) in &self.headers {
            r.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if self.version == "HTTP/1.1" && !self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("connection")) {
            r.extend_from_slice(b"Connection: close\r\n");
        }
        if !self.body.is_empty() {
            r.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(&self.body);
        r
    }
}

/// What a reply must look like for an expect step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// An HTTP response whose status matches.
    HttpStatus(StatusMatch),
    /// The reply contains these bytes (`tcp-check expect string|binary`).
    Contains(Vec<u8>),
    /// The connection is closed without these bytes (`tcp-check expect ! string`).
    NotContains(Vec<u8>),
    /// A TLS handshake record carrying a ServerHello.
    TlsServerHello,
    /// A MySQL initial handshake packet (protocol 10).
    MysqlHandshake,
    /// A MySQL OK packet after the login.
    MysqlOk,
}

/// One step of a check conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Read until the reply matches or fails the rule.
    Expect(Expect),
}

/// The kind of health check (the last check-type option in a backend wins, as in HAProxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connect (the default `check`).
    TcpConnect,
    /// `option httpchk` / `http-check`.
    Http(HttpCheck),
    /// `option ssl-hello-chk`: a TLS ClientHello must get a ServerHello.
    SslHello,
    /// `option mysql-check [user <name>]`.
    Mysql {
        /// With a user, a login is attempted and must be accepted.
        user: Option<String>,
    },
    /// `tcp-check send/expect` rules.
    TcpCheck(Vec<Step>),
}

impl CheckKind {
    /// The conversation this kind of check holds with a server.
    pub fn steps(&self, sni: Option<&str>) -> Vec<Step> {
        match self {
            CheckKind::TcpConnect => vec![],
            CheckKind::Http(h) => vec![Step::Send(h.request_bytes()), Step::Expect(Expect::HttpStatus(h.expect.clone()))],
            CheckKind::SslHello => vec![Step::Send(client_hello(sni)), Step::Expect(Expect::TlsServerHello)],
            CheckKind::Mysql { user: None } => vec![Step::Expect(Expect::MysqlHandshake)],
            CheckKind::Mysql { user: Some(u) } => vec![
                Step::Expect(Expect::MysqlHandshake),
                Step::Send(mysql_login(u)),
                Step::Expect(Expect::MysqlOk),
                // COM_QUIT so the server does not log an aborted connection.
                Step::Send(vec![1, 0, 0, 0, 1]),
            ],
            CheckKind::TcpCheck(steps) => steps.clone(),
        }
    }
}

/// Why a probe failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The reply did not match the expectation.
    #[error("unexpected reply: {0}")]
    Mismatch(String),
    /// The server closed before the expectation was met.
    #[error("connection closed before the expected reply")]
    ClosedEarly,
    /// The reply grew past the buffer limit without a verdict.
    #[error("reply larger than {0} bytes without a verdict")]
    TooLarge(usize),
}

/// What the driver does next in a [`Conversation`].
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    /// Write these bytes, then call [`Conversation::sent`].
    Send(&'a [u8]),
    /// Read and call [`Conversation::received`] (or [`Conversation::closed`] on EOF).
    Receive,
    /// The probe is over.
    Done(Result<(), ProbeFailure>),
}

/// Most bytes buffered while waiting for an expectation.
pub const MAX_REPLY: usize = 16 * 1024;

/// One probe's conversation: steps, position and reply buffer (sans-IO).
#[derive(Debug, Clone)]
pub struct Conversation {
    steps: Vec<Step>,
    pos: usize,
    buf: Vec<u8>,
    failed: Option<ProbeFailure>,
}

impl Conversation {
    /// A conversation over these steps.
    pub fn new(steps: Vec<Step>) -> Self {
        Self { steps, pos: 0, buf: Vec::new(), failed: None }
    }

    /// What to do next.
    pub fn next(&self) -> Next<'_> {
        if let Some(f) = &self.failed {
            return Next::Done(Err(f.clone()));
        }
        match self.steps.get(self.pos) {
            None => Next::Done(Ok(())),
            Some(Step::Send(b)) => Next::Send(b),
            Some(Step::Expect(_)) => Next::Receive,
        }
    }

    /// The pending send step was written.
    pub fn sent(&mut self) {
        if matches!(self.steps.get(self.pos), Some(Step::Send(_))) {
            self.pos += 1;
            // A reply that arrived early (pipelined) may already satisfy the next expect.
            if !self.buf.is_empty() {
                self.evaluate_buffered();
            }
        }
    }

    /// Bytes arrived from the server.
    pub fn received(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.buf.extend_from_slice(data);
        self.evaluate_buffered();
    }

    fn evaluate_buffered(&mut self) {
        // Several expect steps may be satisfied by one read.
        while let Some(Step::Expect(e)) = self.steps.get(self.pos) {
            match evaluate(e, &self.buf, false) {
                Verdict::NeedMore if self.buf.len() > MAX_REPLY => {
                    self.failed = Some(ProbeFailure::TooLarge(MAX_REPLY));
                    return;
                }
                Verdict::NeedMore => return,
                Verdict::Pass(consumed) => {
                    self.buf.drain(..consumed.min(self.buf.len()));
                    self.pos += 1;
                }
                Verdict::Fail(f) => {
                    self.failed = Some(f);
                    return;
                }
            }
        }
    }

    /// The server closed its side.
    pub fn closed(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Some(Step::Expect(e)) = self.steps.get(self.pos) {
            match evaluate(e, &self.buf, true) {
                Verdict::Pass(_) => self.pos += 1,
                Verdict::Fail(f) => self.failed = Some(f),
                Verdict::NeedMore => self.failed = Some(ProbeFailure::ClosedEarly),
            }
        }
        // Anything after a close that still needs the peer cannot happen.
        if matches!(self.steps.get(self.pos), Some(Step::Expect(_))) && self.failed.is_none() {
            self.failed = Some(ProbeFailure::ClosedEarly);
        }
    }
}

enum Verdict {
    NeedMore,
    /// Passed; this many buffered bytes are consumed.
    Pass(usize),
    Fail(ProbeFailure),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn evaluate(e: &Expect, buf: &[u8], eof: bool) -> Verdict {
    match e {
        Expect::HttpStatus(m) => {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = resp.parse(buf);
            // The status line is enough for a verdict; the rest of the reply is not needed.
            let code = resp.code;
            match (parsed, code) {
                (_, Some(c)) if m.matches(c) => Verdict::Pass(buf.len()),
                (_, Some(c)) => Verdict::Fail(ProbeFailure::Mismatch(format!("HTTP status {c}"))),
                (Ok(httparse::Status::Partial), None) if !eof => Verdict::NeedMore,
                (Ok(_), None) => Verdict::Fail(ProbeFailure::ClosedEarly),
                (Err(e), None) => Verdict::Fail(ProbeFailure::Mismatch(format!("invalid HTTP response: {e}"))),
            }
        }
        Expect::Contains(n) => match find(buf, n) {
            Some(p) => Verdict::Pass(p + n.len()),
            None if eof => Verdict::Fail(ProbeFailure::ClosedEarly),
            None => Verdict::NeedMore,
        },
        Expect::NotContains(n) => match find(buf, n) {
            Some(_) => Verdict::Fail(ProbeFailure::Mismatch("forbidden pattern in reply".into())),
            None if eof => Verdict::Pass(buf.len()),
            None => Verdict::NeedMore,
        },
        Expect::TlsServerHello => {
            if buf.len() < 6 {
                return if eof { Verdict::Fail(ProbeFailure::ClosedEarly) } else { Verdict::NeedMore };
            }
            match (buf[0], buf[1], buf[5]) {
                (0x16, 3, 2) => Verdict::Pass(buf.len()),
                (0x15, 3, _) => Verdict::Fail(ProbeFailure::Mismatch(format!("TLS alert {}", buf.get(6).copied().unwrap_or(0)))),
                _ => Verdict::Fail(ProbeFailure::Mismatch("not a TLS ServerHello".into())),
            }
        }
        Expect::MysqlHandshake | Expect::MysqlOk => {
            if buf.len() < 5 {
                return if eof { Verdict::Fail(ProbeFailure::ClosedEarly) } else { Verdict::NeedMore };
            }
            let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
            if buf.len() < 4 + len {
                return if eof { Verdict::Fail(ProbeFailure::ClosedEarly) } else { Verdict::NeedMore };
            }
            let payload = &buf[4..4 + len];
            let want = if matches!(e, Expect::MysqlHandshake) { 0x0a } else { 0x00 };
            match payload.first() {
                Some(&b) if b == want => Verdict::Pass(4 + len),
                Some(0xff) => {
                    // Error packet: 0xff, code (2), then optionally '#' + sqlstate (5), message.
                    let code = payload.get(1..3).map(|c| u16::from_le_bytes([c[0], c[1]])).unwrap_or(0);
                    let msg = payload.get(3..).unwrap_or_default();
                    let msg = if msg.first() == Some(&b'#') { msg.get(6..).unwrap_or_default() } else { msg };
                    Verdict::Fail(ProbeFailure::Mismatch(format!(
                        "MySQL error {code}: {}",
                        String::from_utf8_lossy(msg)
                    )))
                }
                _ => Verdict::Fail(ProbeFailure::Mismatch("not a MySQL packet".into())),
            }
        }
    }
}

/// A MySQL 4.1 login packet for `user` with no password (HAProxy's mysql-check login).
fn mysql_login(user: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    // CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION
    p.extend_from_slice(&0x0000_8201u32.to_le_bytes());
    p.extend_from_slice(&0x0100_0000u32.to_le_bytes()); // max packet size
    p.push(0x08); // latin1
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(0); // empty auth response
    let len = p.len() as u32;
    let mut pkt = Vec::with_capacity(p.len() + 4);
    pkt.extend_from_slice(&len.to_le_bytes()[..3]);
    pkt.push(1); // sequence id: reply to the server's packet 0
    pkt.extend_from_slice(&p);
    pkt
}

/// A TLS ClientHello offering TLS 1.2 and 1.3 with an empty key share, so any modern server
/// answers with a ServerHello (a TLS 1.3 server with a HelloRetryRequest, which is one too).
pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
    fn u16be(v: &mut Vec<u8>, x: usize) {
        v.extend_from_slice(&(x as u16).to_be_bytes());
    }
    fn ext(v: &mut Vec<u8>, ty: u16, body: &[u8]) {
        v.extend_from_slice(&ty.to_be_bytes());
        u16be(v, body.len());
        v.extend_from_slice(body);
    }
    let mut exts = Vec::with_capacity(256);
    if let Some(name) = sni.filter(|n| !n.is_empty() && n.len() < 256 && n.parse::<std::net::IpAddr>().is_err()) {
        let mut b = Vec::new();
        u16be(&mut b, name.len() + 3);
        b.push(0); // host_name
        u16be(&mut b, name.len());
        b.extend_from_slice(name.as_bytes());
        ext(&mut exts, 0x0000, &b);
    }
    ext(&mut exts, 0x000a, &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]); // x25519, P-256, P-384
    ext(&mut exts, 0x000b, &[1, 0]); // uncompressed points
    let sigs: [u16; 9] = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0807];
    let mut b = Vec::new();
    u16be(&mut b, sigs.len() * 2);
    for s in sigs {
        b.extend_from_slice(&s.to_be_bytes());
    }
    ext(&mut exts, 0x000d, &b);
    ext(&mut exts, 0x002b, &[4, 0x03, 0x04, 0x03, 0x03]); // TLS 1.3, 1.2
    ext(&mut exts, 0x0033, &[0, 0]); // empty key_share list
    ext(&mut exts, 0xff01, &[0]); // renegotiation_info

    let suites: [u16; 12] =
        [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0x009c, 0x002f, 0x0035];
    let mut hello = Vec::with_capacity(512);
    hello.extend_from_slice(&[0x03, 0x03]);
    // Fixed "random": a probe needs no secrecy, and a stable hello keeps captures comparable.
    hello.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    hello.push(0); // session id
    u16be(&mut hello, suites.len() * 2);
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // null compression
    u16be(&mut hello, exts.len());
    hello.extend_from_slice(&exts);

    let mut hs = Vec::with_capacity(hello.len() + 4);
    hs.push(1); // client_hello
    hs.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&hello);

    let mut rec = Vec::with_capacity(hs.len() + 5);
    rec.extend_from_slice(&[0x16, 0x03, 0x01]);
    u16be(&mut rec, hs.len());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn params() -> HealthParams {
        HealthParams {
            inter: ms(1000),
            fastinter: Some(ms(100)),
            downinter: Some(ms(5000)),
            rise: 2,
            fall: 3,
            init: InitState::FullyUp,
            slowstart: None,
            weight: 10,
            shutdown_sessions: true,
        }
    }

    /// Runs one check at the machine's next wake-up with the given result; returns the events.
    fn step(h: &mut HealthCheck, now: &mut Instant, ok: bool) -> Vec<HealthEvent> {
        *now = h.poll_timeout().expect("a check is scheduled").max(*now);
        h.handle_timeout(*now);
        let mut ev = vec![];
        while let Some(e) = h.poll_event() {
            ev.push(e);
        }
        assert_eq!(ev.first(), Some(&HealthEvent::StartCheck), "{ev:?}");
        ev.remove(0);
        h.on_result(*now, ok);
        while let Some(e) = h.poll_event() {
            ev.push(e);
        }
        ev
    }

    #[test]
    fn fall_then_rise_with_haproxy_intervals() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut h = HealthCheck::new(params(), t0);
        assert!(step(&mut h, &mut now, true).is_empty());
        assert_eq!(h.interval(), ms(1000)); // fully up: inter
        assert!(step(&mut h, &mut now, false).is_empty());
        assert_eq!(h.interval(), ms(100)); // going down: fastinter
        assert!(step(&mut h, &mut now, false).is_empty());
        assert_eq!(step(&mut h, &mut now, false), vec![HealthEvent::ServerDown { shutdown_sessions: true }]);
        assert!(!h.is_up());
        assert_eq!(h.interval(), ms(5000)); // fully down: downinter
        assert!(step(&mut h, &mut now, true).is_empty());
        assert_eq!(h.interval(), ms(100)); // going up: fastinter
        assert_eq!(step(&mut h, &mut now, true), vec![HealthEvent::ServerUp]);
        assert!(h.is_up());
        // Time moved by exactly the intervals chosen.
        assert_eq!(now - t0, ms(1000 + 100 + 100 + 5000 + 100));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut now = Instant::now();
        let mut h = HealthCheck::new(params(), now);
        for _ in 0..10 {
            assert!(step(&mut h, &mut now, false).is_empty());
            assert!(step(&mut h, &mut now, false).is_empty());
            assert!(step(&mut h, &mut now, true).is_empty());
        }
        assert!(h.is_up());
    }

    #[test]
    fn init_states() {
        let now = Instant::now();
        for (init, fails_to_down, succ_to_up) in
            [(InitState::FullyUp, 3, 0), (InitState::Up, 1, 0), (InitState::Down, 0, 1), (InitState::FullyDown, 0, 2)]
        {
            let mut t = now;
            let mut h = HealthCheck::new(HealthParams { init, ..params() }, now);
            if fails_to_down > 0 {
                assert!(h.is_up());
                for _ in 1..fails_to_down {
                    assert!(step(&mut h, &mut t, false).is_empty(), "{init:?}");
                }
                assert!(matches!(step(&mut h, &mut t, false)[..], [HealthEvent::ServerDown { .. }]), "{init:?}");
            } else {
                assert!(!h.is_up());
                for _ in 1..succ_to_up {
                    assert!(step(&mut h, &mut t, true).is_empty(), "{init:?}");
                }
                assert_eq!(step(&mut h, &mut t, true), vec![HealthEvent::ServerUp], "{init:?}");
            }
        }
    }

    #[test]
    fn no_second_check_while_one_runs_and_maint_pauses() {
        let now = Instant::now();
        let mut h = HealthCheck::new(params(), now);
        h.handle_timeout(now);
        assert_eq!(h.poll_event(), Some(HealthEvent::StartCheck));
        h.handle_timeout(now + ms(10_000));
        assert_eq!(h.poll_event(), None);
        assert_eq!(h.poll_timeout(), None);
        h.on_result(now + ms(10), true);
        h.set_enabled(now + ms(20), false);
        assert_eq!(h.poll_timeout(), None);
        h.set_enabled(now + ms(30), true);
        assert_eq!(h.poll_timeout(), Some(now + ms(30)));
    }

    #[test]
    fn slowstart_ramps_weight_after_recovery_only() {
        let t0 = Instant::now();
        let mut now = t0;
        let p = HealthParams { slowstart: Some(ms(10_000)), rise: 1, fall: 1, ..params() };
        let mut h = HealthCheck::new(p, t0);
        assert_eq!(h.weight(), 10); // not at start-up
        step(&mut h, &mut now, false);
        let ev = step(&mut h, &mut now, true);
        assert_eq!(ev, vec![HealthEvent::WeightChanged(1), HealthEvent::ServerUp]);
        let up_at = now;
        // Drive only the ramp: the weight grows one step at a time up to 10 at 10 s.
        let mut seen = vec![1];
        let mut last_t = up_at;
        while h.weight() < 10 {
            let t = h.poll_timeout().unwrap();
            h.handle_timeout(t);
            while let Some(e) = h.poll_event() {
                match e {
                    HealthEvent::WeightChanged(w) => {
                        seen.push(w);
                        last_t = t;
                    }
                    HealthEvent::StartCheck => h.on_result(t, true),
                    other => panic!("{other:?}"),
                }
            }
            assert!(t - up_at <= ms(10_001));
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        assert!(last_t - up_at > ms(9000) && last_t - up_at <= ms(9001), "{:?}", last_t - up_at);
    }

    fn run(steps: Vec<Step>, replies: &[&[u8]], close: bool) -> (Vec<Vec<u8>>, Result<(), ProbeFailure>) {
        let mut c = Conversation::new(steps);
        let mut sent = vec![];
        let mut replies = replies.iter();
        loop {
            match c.next() {
                Next::Send(b) => {
                    sent.push(b.to_vec());
                    c.sent();
                }
                Next::Receive => match replies.next() {
                    Some(r) => c.received(r),
                    None if close => c.closed(),
                    None => panic!("conversation waits for more"),
                },
                Next::Done(r) => return (sent, r),
            }
        }
    }

    #[test]
    fn bare_httpchk_sends_options_http10() {
        let steps = CheckKind::Http(HttpCheck::bare()).steps(None);
        let (sent, r) = run(steps, &[b"HTTP/1.0 200 OK\r\n\r\n"], false);
        assert_eq!(sent, vec![b"OPTIONS / HTTP/1.0\r\n\r\n".to_vec()]);
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn http_get_healthz_expects_status() {
        let k = CheckKind::Http(HttpCheck::get("/healthz", 200));
        let (sent, r) = run(k.steps(None), &[b"HTTP/1.1 20", b"0 OK\r\nContent-Length: 2\r\n\r\nok"], false);
        assert_eq!(sent, vec![b"GET /healthz HTTP/1.0\r\n\r\n".to_vec()]);
        assert_eq!(r, Ok(()));
        let (_, r) = run(k.steps(None), &[b"HTTP/1.1 503 Service Unavailable\r\n\r\n"], false);
        assert_eq!(r, Err(ProbeFailure::Mismatch("HTTP status 503".into())));
        let (_, r) = run(k.steps(None), &[b"HTTP/1.1 200"], true);
        assert_eq!(r, Ok(()), "the status line decides");
        let (_, r) = run(k.steps(None), &[b"HTTP/1.1 2"], true);
        assert_eq!(r, Err(ProbeFailure::ClosedEarly));
        let (_, r) = run(k.steps(None), &[b"SSH-2.0-OpenSSH\r\n"], false);
        assert!(matches!(r, Err(ProbeFailure::Mismatch(_))));
        // 3xx passes the default expectation, not `expect status 200`.
        let (_, r) = run(CheckKind::Http(HttpCheck::bare()).steps(None), &[b"HTTP/1.0 302 Found\r\n\r\n"], false);
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn http11_request_has_connection_close() {
        let h = HttpCheck {
            version: "HTTP/1.1".into(),
            headers: vec![("Host".into(), "api".into())],
            ..HttpCheck::get("/readyz", 200)
        };
        assert_eq!(h.request_bytes(), b"GET /readyz HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n".to_vec());
    }

    #[test]
    fn tcp_check_send_expect_sequence() {
        let steps = vec![
            Step::Send(b"PING\r\n".to_vec()),
            Step::Expect(Expect::Contains(b"+PONG".to_vec())),
            Step::Send(b"INFO replication\r\n".to_vec()),
            Step::Expect(Expect::Contains(b"role:master".to_vec())),
            Step::Send(b"QUIT\r\n".to_vec()),
            Step::Expect(Expect::Contains(b"+OK".to_vec())),
        ];
        let (sent, r) = run(steps.clone(), &[b"+PO", b"NG\r\n", b"$10\r\nrole:master\r\n+OK\r\n"], false);
        assert_eq!(sent.len(), 3);
        assert_eq!(r, Ok(()));
        let (_, r) = run(steps, &[b"+PONG\r\n", b"role:slave\r\n"], true);
        assert_eq!(r, Err(ProbeFailure::ClosedEarly));
        let neg = vec![Step::Expect(Expect::NotContains(b"ERR".to_vec()))];
        assert_eq!(run(neg.clone(), &[b"fine"], true).1, Ok(()));
        assert!(run(neg, &[b"-ERR"], true).1.is_err());
    }

    #[test]
    fn reply_size_is_bounded() {
        let steps = vec![Step::Expect(Expect::Contains(b"never".to_vec()))];
        let big = vec![b'x'; MAX_REPLY + 1];
        assert_eq!(run(steps, &[&big], false).1, Err(ProbeFailure::TooLarge(MAX_REPLY)));
    }

    #[test]
    fn ssl_hello_accepts_server_hello_only() {
        let steps = CheckKind::SslHello.steps(Some("api.cluster.local"));
        let Step::Send(hello) = &steps[0] else { panic!() };
        assert_eq!(&hello[..3], &[0x16, 3, 1]);
        assert_eq!(usize::from(u16::from_be_bytes([hello[3], hello[4]])), hello.len() - 5);
        assert!(find(hello, b"api.cluster.local").is_some());
        assert_eq!(run(steps.clone(), &[&[0x16, 3, 3, 0, 50, 2, 0]], false).1, Ok(()));
        assert!(run(steps.clone(), &[&[0x15, 3, 3, 0, 2, 2, 40]], false).1.is_err());
        assert!(run(steps.clone(), &[b"HTTP/1.1 400 Bad"], false).1.is_err());
        assert_eq!(run(steps, &[&[0x16, 3]], true).1, Err(ProbeFailure::ClosedEarly));
        // An IP literal is never sent as SNI.
        let Step::Send(h) = &CheckKind::SslHello.steps(Some("198.18.0.1"))[0] else { panic!() };
        assert!(find(h, b"198.18.0.1").is_none());
    }

    fn mysql_packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn mysql_handshake_and_login() {
        let greeting = mysql_packet(0, b"\x0a8.0.36\0\x01\0\0\0abcdefgh\0");
        let k = CheckKind::Mysql { user: None };
        assert_eq!(run(k.steps(None), &[&greeting[..7], &greeting[7..]], false).1, Ok(()));
        let blocked = mysql_packet(0, b"\xff\x69\x04Host is blocked");
        assert_eq!(
            run(k.steps(None), &[&blocked], false).1,
            Err(ProbeFailure::Mismatch("MySQL error 1129: Host is blocked".into()))
        );
        let k = CheckKind::Mysql { user: Some("haproxy".into()) };
        let ok = mysql_packet(2, &[0, 0, 0, 2, 0, 0, 0]);
        let (sent, r) = run(k.steps(None), &[&greeting, &ok], false);
        assert_eq!(r, Ok(()));
        let login = &sent[0];
        assert_eq!(login[3], 1, "sequence id");
        assert_eq!(usize::from(login[0]), login.len() - 4);
        assert!(find(login, b"haproxy\0").is_some());
        assert_eq!(sent[1], vec![1, 0, 0, 0, 1]);
        let denied = mysql_packet(2, b"\xff\x15\x04#28000Access denied");
        assert_eq!(
            run(k.steps(None), &[&greeting, &denied], false).1,
            Err(ProbeFailure::Mismatch("MySQL error 1045: Access denied".into()))
        );
    }

    #[test]
    fn tcp_connect_is_an_empty_conversation() {
        assert_eq!(run(CheckKind::TcpConnect.steps(None), &[], false).1, Ok(()));
    }
}
