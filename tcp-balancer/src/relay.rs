//! Full-duplex byte relay between two TCP sockets: copy through a per-thread scratch buffer for
//! small transfers, zero-copy `splice(2)` through a pipe for bulk ones (HAProxy's splice-auto),
//! or either one only.
//!
//! Lifecycle of one direction (a "pump"):
//! - **copying** (start): wait for the source to be readable → read into the thread's scratch
//!   buffer → write it to the destination at once. Bytes the destination does not take are kept
//!   in a per-session buffer (allocated then, freed once drained), so an idle session holds no
//!   buffer. A read that leaves the buffer partly empty drained the socket: readiness is cleared
//!   without the extra read that would only say EAGAIN.
//! - **splicing** ([`RelayMode::Auto`]: once a read filled the scratch buffer, i.e. a bulk
//!   transfer; [`RelayMode::Splice`]: always): source → pipe → destination. The pipe comes from a
//!   per-thread pool and goes back to it as soon as it is empty and the source has nothing more
//!   (EAGAIN) or sent a short chunk (Auto goes back to copying then), so idle sessions hold no
//!   pipe and a burst costs no pipe2(2).
//! - **done**: the source's FIN is forwarded (shutdown of the destination's write side) once
//!   every byte before it was delivered.
//!
//! The relay is over when both pumps finished, one failed, a side stayed idle past its timeout
//! (one timer per session, re-armed only when it fires, not on every chunk), or its stop signal
//! was raised (kill, handover).

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// Copy small transfers, splice(2) bulk ones (a read filled the copy buffer), as HAProxy's
    /// `option splice-auto`: fewest syscalls for small exchanges, zero-copy for large ones.
    #[default]
    Auto,
    /// Always splice(2) through a pipe (zero-copy), falling back to copy if a pipe cannot be made.
    Splice,
    /// read/write through a user-space buffer.
    Copy,
}

/// Inactivity timeouts of one relayed session (HAProxy's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// `timeout client`: the client side neither sent nor accepted data for this long.
    pub client: Duration,
    /// `timeout server`: same for the server side.
    pub server: Duration,
    /// `timeout tunnel`: replaces both once the session is relaying, when set.
    pub tunnel: Option<Duration>,
    /// `timeout client-fin`: the client side's timeout once one direction is shut.
    pub client_fin: Option<Duration>,
    /// `timeout server-fin`: the server side's timeout once one direction is shut.
    pub server_fin: Option<Duration>,
}

/// Which side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (downstream) connection.
    Client,
    /// The server (upstream) connection.
    Server,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions finished with a FIN.
    Closed,
    /// A side was idle past its timeout.
    Timeout(Side),
    /// An I/O error on a side (reset, broken pipe).
    Error(Side, io::Error),
    /// The session was killed (server marked down with shutdown-sessions, or hard stop).
    Killed,
    /// Stopped for a handover: the relay state is intact and can be frozen.
    HandOver,
}

/// Byte counters a relay adds to as it goes (shared atomics, no allocation per chunk).
pub trait ByteSink: Sync {
    /// `n` bytes went from the client to the server.
    fn client_to_server(&self, n: u64);
    /// `n` bytes went from the server to the client.
    fn server_to_client(&self, n: u64);
}

/// Bytes moved by splice(2) since start, over all sessions (zero-copy share of the traffic).
static SPLICED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Pipes currently held by sessions (pooled ones not included).
static PIPES_IN_USE: AtomicU64 = AtomicU64::new(0);

/// Bytes relayed with splice(2) since start (a Prometheus counter).
pub fn spliced_bytes() -> u64 {
    SPLICED_BYTES.load(Ordering::Relaxed)
}

/// Splice pipes held right now (two per active spliced session at most).
pub fn pipes_in_use() -> u64 {
    PIPES_IN_USE.load(Ordering::Relaxed)
}

/// Largest chunk moved per splice.
const CHUNK: usize = 256 * 1024;
/// The per-thread copy buffer; a read that fills it marks a bulk transfer (Auto splices then).
/// At most this much is ever kept per direction of a session, so it always fits a pipe when a
/// session is frozen for a handover.
const SCRATCH: usize = 32 * 1024;
/// Empty pipes kept per thread for the next bulk burst.
const POOL_MAX: usize = 64;

thread_local! {
    /// Where copied bytes pass between read and write; never held across a wait.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
    /// Empty pipes, ready for the next burst without pipe2(2) and fcntl(2).
    static PIPE_POOL: RefCell<Vec<(OwnedFd, OwnedFd)>> = const { RefCell::new(Vec::new()) };
}

/// An empty pipe from this thread's pool, or a new one.
fn take_pipe() -> Option<Pipe> {
    match PIPE_POOL.with_borrow_mut(Vec::pop) {
        Some(fds) => Some(Pipe::from_fds(fds)),
        None => Pipe::new().ok(),
    }
}

/// Gives an empty pipe back to this thread's pool (closed if the pool is full).
fn put_pipe(p: Pipe) {
    let fds = p.into_fds();
    PIPE_POOL.with_borrow_mut(|pool| {
        if pool.len() < POOL_MAX {
            pool.push(fds);
        }
    });
}

struct Activity {
    start: Instant,
    client_ms: AtomicU64,
    server_ms: AtomicU64,
    half_closed: AtomicBool,
}

impl Activity {
    /// Activity as if the client side was last active `client_idle` ago and the server side
    /// `server_idle` ago (a session resumed after a handover keeps its idle clocks).
    fn resumed(client_idle: Duration, server_idle: Duration, half_closed: bool) -> Self {
        let now = Instant::now();
        let oldest = client_idle.max(server_idle);
        let start = now.checked_sub(oldest).unwrap_or(now);
        let since = |idle: Duration| (now.saturating_duration_since(start).saturating_sub(idle)).as_millis() as u64;
        Activity {
            start,
            client_ms: AtomicU64::new(since(client_idle)),
            server_ms: AtomicU64::new(since(server_idle)),
            half_closed: AtomicBool::new(half_closed),
        }
    }

    fn touch(&self, side: Side) {
        let ms = self.start.elapsed().as_millis() as u64;
        match side {
            Side::Client => self.client_ms.store(ms, Ordering::Relaxed),
            Side::Server => self.server_ms.store(ms, Ordering::Relaxed),
        }
    }

    /// Both sides active now (a chunk read from one was written to the other at once).
    fn touch_both(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.client_ms.store(ms, Ordering::Relaxed);
        self.server_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self, side: Side) -> Duration {
        let ms = match side {
            Side::Client => self.client_ms.load(Ordering::Relaxed),
            Side::Server => self.server_ms.load(Ordering::Relaxed),
        };
        self.start.elapsed().saturating_sub(Duration::from_millis(ms))
    }
}

/// Where one direction of a relay stands. It lives outside the relay future, so when a relay is
/// stopped for a handover nothing in flight is lost: bytes already taken from the source sit in
/// the pipe (counted in `pending`) or in `stash`.
#[derive(Default)]
struct Direction {
    /// The splice pipe while a burst is spliced; back in the pool once empty.
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written to the destination.
    pending: usize,
    /// Copied bytes the destination has not taken yet (from `sent` on); no allocation when empty.
    stash: Vec<u8>,
    sent: usize,
    /// Auto mode: the last read filled its buffer (a bulk transfer), so the next one splices.
    bulk: bool,
    /// The source's FIN was seen and forwarded to the destination.
    done: bool,
    /// Bytes delivered to the destination in this direction.
    bytes: u64,
}

/// The state of one relayed session: both directions and the idle clocks. Kept by the caller
/// of [`relay_state`] so that a relay stopped with [`Stop::HandOver`] can be frozen
/// ([`RelayState::freeze`]) and resumed in another process ([`RelayState::thaw`]).
pub struct RelayState {
    up: Direction,
    down: Direction,
    act: Activity,
}

impl Default for RelayState {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RelayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayState")
            .field("up_bytes", &self.up.bytes)
            .field("down_bytes", &self.down.bytes)
            .field("up_done", &self.up.done)
            .field("down_done", &self.down.done)
            .finish_non_exhaustive()
    }
}

/// One direction of a frozen relay.
#[derive(Debug, Default)]
pub struct FrozenDirection {
    /// Read and write ends of a pipe holding `pending` bytes still owed to the destination.
    pub pipe: Option<(OwnedFd, OwnedFd)>,
    /// Bytes in `pipe`.
    pub pending: usize,
    /// The source's FIN was already forwarded (half-closed direction).
    pub done: bool,
    /// Bytes delivered so far in this direction.
    pub bytes: u64,
}

/// A relay's state with its descriptors, ready to cross a process boundary.
#[derive(Debug, Default)]
pub struct Frozen {
    /// Client to server.
    pub up: FrozenDirection,
    /// Server to client.
    pub down: FrozenDirection,
    /// Time since the client side was last active.
    pub client_idle: Duration,
    /// Time since the server side was last active.
    pub server_idle: Duration,
}

impl RelayState {
    /// A fresh session: nothing moved yet.
    pub fn new() -> Self {
        RelayState { up: Direction::default(), down: Direction::default(), act: Activity::resumed(Duration::ZERO, Duration::ZERO, false) }
    }

    /// Bytes delivered (client to server, server to client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.up.bytes, self.down.bytes)
    }

    /// Detaches the state from this process: pipes with bytes are kept as they are (their bytes
    /// travel with them); bytes kept in a copy stash are written into a fresh pipe.
    pub fn freeze(self) -> io::Result<Frozen> {
        fn dir(d: Direction) -> io::Result<FrozenDirection> {
            // Never both: a direction reads (and so fills a pipe) only once its stash is empty.
            let (pipe, pending) = if d.sent < d.stash.len() {
                let p = Pipe::new()?;
                let mut off = d.sent;
                while off < d.stash.len() {
                    // SAFETY: write(2) from a live buffer range into a pipe we own.
                    let n = unsafe { libc::write(p.w.as_raw_fd(), d.stash[off..].as_ptr().cast(), d.stash.len() - off) };
                    if n <= 0 {
                        return Err(io::Error::other("copy buffer does not fit a pipe"));
                    }
                    off += n as usize;
                }
                (Some(p), d.stash.len() - d.sent)
            } else if d.pending > 0 {
                (d.pipe, d.pending)
            } else {
                (None, 0)
            };
            Ok(FrozenDirection { pipe: pipe.map(Pipe::into_fds), pending, done: d.done, bytes: d.bytes })
        }
        let client_idle = self.act.idle(Side::Client);
        let server_idle = self.act.idle(Side::Server);
        Ok(Frozen { up: dir(self.up)?, down: dir(self.down)?, client_idle, server_idle })
    }

    /// Resumes a frozen state in this process; the pipes' pending bytes are sent first.
    pub fn thaw(f: Frozen) -> Self {
        fn dir(d: FrozenDirection) -> Direction {
            let pending = if d.pipe.is_some() { d.pending } else { 0 };
            Direction { pipe: d.pipe.map(Pipe::from_fds), pending, done: d.done, bytes: d.bytes, ..Direction::default() }
        }
        let half = f.up.done || f.down.done;
        RelayState { act: Activity::resumed(f.client_idle, f.server_idle, half), up: dir(f.up), down: dir(f.down) }
    }
}

/// Why a relay is asked to stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Close the session (server marked down with shutdown-sessions, rebalancing, hard stop).
    Kill,
    /// Stop moving bytes and keep the state intact, to hand the session to another process.
    HandOver,
}

/// A session's stop request, raised from any thread and seen by its relay at once: the one wake
/// source a relay needs besides its two sockets and its timer, instead of a subscription per
/// cause (server down, hard stop, rebalancing, handover).
#[derive(Debug, Default)]
pub struct StopSignal {
    /// 0: none; 1: [`Stop::Kill`]; 2: [`Stop::HandOver`].
    state: AtomicU8,
    waker: AtomicWaker,
}

impl StopSignal {
    /// Not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the relay to stop; the first request wins (a session handed over is not then killed
    /// here, and a killed one is not handed over).
    pub fn raise(&self, why: Stop) {
        let v = match why {
            Stop::Kill => 1,
            Stop::HandOver => 2,
        };
        if self.state.compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.waker.wake();
        }
    }

    /// Ready with the request once one is raised; otherwise the task is woken when it is.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<Stop> {
        let mut me = self;
        me.poll_stop(cx)
    }

    /// The request, if one was raised.
    pub fn raised(&self) -> Option<Stop> {
        match self.state.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Stop::Kill),
            _ => Some(Stop::HandOver),
        }
    }
}

/// What a relay polls to learn it must stop.
trait StopSource {
    fn poll_stop(&mut self, cx: &mut Context<'_>) -> Poll<Stop>;
}

impl<K: std::future::Future<Output = Stop>> StopSource for Pin<&mut K> {
    fn poll_stop(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        self.as_mut().poll(cx)
    }
}

impl StopSource for &StopSignal {
    fn poll_stop(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        if let Some(s) = self.raised() {
            return Poll::Ready(s);
        }
        self.waker.register(cx.waker());
        match self.raised() {
            Some(s) => Poll::Ready(s),
            None => Poll::Pending,
        }
    }
}

/// Relays until done; `kill` resolves to end the session early.
pub async fn relay<K: std::future::Future<Output = ()>>(
    client: &TcpStream,
    server: &TcpStream,
    mode: RelayMode,
    timeouts: IdleTimeouts,
    counters: &dyn ByteSink,
    kill: K,
) -> RelayEnd {
    let mut state = RelayState::new();
    relay_state(client, server, mode, timeouts, counters, async { kill.await; Stop::Kill }, &mut state).await
}

/// Relays with the state kept by the caller (fresh, or thawed after a handover) until done,
/// or until `stop` resolves: [`Stop::HandOver`] leaves `state` consistent for
/// [`RelayState::freeze`] and returns [`RelayEnd::HandOver`].
pub async fn relay_state<K: std::future::Future<Output = Stop>>(
    client: &TcpStream,
    server: &TcpStream,
    mode: RelayMode,
    timeouts: IdleTimeouts,
    counters: &dyn ByteSink,
    stop: K,
    state: &mut RelayState,
) -> RelayEnd {
    let stop = std::pin::pin!(stop);
    Run::new(client, server, mode, timeouts, counters, stop, state).await
}

/// [`relay_state`] with a [`StopSignal`] as the stop source: the smallest relay (a plain future
/// of a few pointers, its timeouts and a boxed timer), for sessions that may stay idle by the
/// thousand.
pub fn relay_signal<'a>(
    client: &'a TcpStream,
    server: &'a TcpStream,
    mode: RelayMode,
    timeouts: IdleTimeouts,
    counters: &'a dyn ByteSink,
    stop: &'a StopSignal,
    state: &'a mut RelayState,
) -> impl std::future::Future<Output = RelayEnd> + 'a {
    Run::new(client, server, mode, timeouts, counters, stop, state)
}

/// One hand-written future drives both directions, the stop source and the idle watchdog: no
/// sub-future per await point, so an idle session's relay is small, and a wake-up costs one
/// poll of each direction. The timer is armed for the earliest idle deadline and only re-armed
/// when it fires (activity only moves deadlines later) or a half-close shortens the timeouts.
struct Run<'a, S> {
    client: &'a TcpStream,
    server: &'a TcpStream,
    counters: &'a dyn ByteSink,
    state: &'a mut RelayState,
    stop: S,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeouts: IdleTimeouts,
    mode: RelayMode,
    armed_half: bool,
}

impl<'a, S: StopSource + Unpin> Run<'a, S> {
    fn new(
        client: &'a TcpStream,
        server: &'a TcpStream,
        mode: RelayMode,
        timeouts: IdleTimeouts,
        counters: &'a dyn ByteSink,
        stop: S,
        state: &'a mut RelayState,
    ) -> Self {
        let sleep = Box::pin(tokio::time::sleep_until(watch_deadline(&state.act, &timeouts).0));
        let armed_half = state.act.half_closed.load(Ordering::Relaxed);
        Run { client, server, counters, state, stop, sleep, timeouts, mode, armed_half }
    }
}

impl<S: StopSource + Unpin> std::future::Future for Run<'_, S> {
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let me = self.get_mut();
        // Stop first: a handover must find the state between two syscalls, which it always is
        // here, before any more bytes move.
        if let Poll::Ready(s) = me.stop.poll_stop(cx) {
            return Poll::Ready(match s {
                Stop::Kill => RelayEnd::Killed,
                Stop::HandOver => RelayEnd::HandOver,
            });
        }
        let RelayState { up, down, act } = &mut *me.state;
        let (client, server, mode, counters) = (me.client, me.server, me.mode, me.counters);
        if !up.done
            && let Poll::Ready(Err((side, e))) = poll_pump(cx, client, server, Side::Client, mode, act, counters, up)
        {
            return Poll::Ready(RelayEnd::Error(side, e));
        }
        if !down.done
            && let Poll::Ready(Err((side, e))) = poll_pump(cx, server, client, Side::Server, mode, act, counters, down)
        {
            return Poll::Ready(RelayEnd::Error(side, e));
        }
        if up.done && down.done {
            return Poll::Ready(RelayEnd::Closed);
        }
        let half = act.half_closed.load(Ordering::Relaxed);
        if half != me.armed_half {
            // The fin timeouts may be shorter than the deadline armed before the half-close.
            me.armed_half = half;
            let (deadline, _) = watch_deadline(act, &me.timeouts);
            if deadline < me.sleep.deadline() {
                me.sleep.as_mut().reset(deadline);
            }
        }
        loop {
            if me.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (deadline, side) = watch_deadline(act, &me.timeouts);
            if Instant::now() >= deadline {
                return Poll::Ready(RelayEnd::Timeout(side));
            }
            me.sleep.as_mut().reset(deadline);
        }
    }
}

/// The earliest idle deadline and its side.
fn watch_deadline(act: &Activity, t: &IdleTimeouts) -> (Instant, Side) {
    let fin = act.half_closed.load(Ordering::Relaxed);
    let client_t = if fin { t.client_fin.or(t.tunnel) } else { t.tunnel }.unwrap_or(t.client);
    let server_t = if fin { t.server_fin.or(t.tunnel) } else { t.tunnel }.unwrap_or(t.server);
    let c = act.start + Duration::from_millis(act.client_ms.load(Ordering::Relaxed)) + client_t;
    let s = act.start + Duration::from_millis(act.server_ms.load(Ordering::Relaxed)) + server_t;
    if c <= s { (c, Side::Client) } else { (s, Side::Server) }
}

/// Outcome of one copy step.
enum Copied {
    /// No data (readiness cleared, or spurious).
    Nothing,
    /// The source's FIN.
    Fin,
    /// `read` bytes read, `written` of them delivered at once (the rest stashed).
    Data { read: usize, written: usize },
}

/// Moves bytes from `src` (side `from`) to `dst`: `Ready(Ok)` once `src`'s FIN was forwarded,
/// `Ready(Err)` with the failing side, `Pending` when waiting for readiness (wakers registered).
///
/// Every syscall's result is recorded in `dir` at once, so `dir` always says exactly which bytes
/// were taken from `src` but not yet given to `dst` (what a handover carries). Tokio's
/// cooperative budget (spent by the readiness polls) keeps a busy direction from starving
/// other sessions.
#[allow(clippy::too_many_arguments)]
fn poll_pump(
    cx: &mut Context<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    mode: RelayMode,
    act: &Activity,
    counters: &dyn ByteSink,
    dir: &mut Direction,
) -> Poll<Result<(), (Side, io::Error)>> {
    let to = match from {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    let delivered = |dir: &mut Direction, n: usize| {
        dir.bytes += n as u64;
        match from {
            Side::Client => counters.client_to_server(n as u64),
            Side::Server => counters.server_to_client(n as u64),
        }
        act.touch(to);
    };
    let would_block = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
    loop {
        // Owed bytes first (after a handover, or left by a previous turn).
        if dir.pending > 0
            && let Some(pipe) = &dir.pipe
        {
            ready!(dst.poll_write_ready(cx)).map_err(|e| (to, e))?;
            match dst.try_io(Interest::WRITABLE, || splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), dir.pending)) {
                Ok(0) => return Poll::Ready(Err((to, io::ErrorKind::WriteZero.into()))),
                Ok(m) => {
                    dir.pending -= m;
                    SPLICED_BYTES.fetch_add(m as u64, Ordering::Relaxed);
                    delivered(dir, m);
                    // A short burst is over once delivered: back to copying (Auto).
                    if dir.pending == 0 && !dir.bulk && mode == RelayMode::Auto
                        && let Some(p) = dir.pipe.take()
                    {
                        put_pipe(p);
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Poll::Ready(Err((to, e))),
            }
            continue;
        }
        if dir.sent < dir.stash.len() {
            ready!(dst.poll_write_ready(cx)).map_err(|e| (to, e))?;
            match dst.try_write(&dir.stash[dir.sent..]) {
                Ok(0) => return Poll::Ready(Err((to, io::ErrorKind::WriteZero.into()))),
                Ok(m) => {
                    dir.sent += m;
                    delivered(dir, m);
                    if dir.sent == dir.stash.len() {
                        // Drained: an idle session keeps no buffer.
                        dir.stash = Vec::new();
                        dir.sent = 0;
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Poll::Ready(Err((to, e))),
            }
            continue;
        }
        ready!(src.poll_read_ready(cx)).map_err(|e| (from, e))?;
        let splicing = match mode {
            RelayMode::Copy => false,
            RelayMode::Splice => true,
            RelayMode::Auto => dir.bulk,
        };
        if splicing && dir.pipe.is_none() {
            dir.pipe = take_pipe();
        }
        if let Some(pipe) = &dir.pipe {
            match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe.w.as_raw_fd(), CHUNK)) {
                Ok(0) => {
                    if let Some(p) = dir.pipe.take() {
                        put_pipe(p);
                    }
                    break;
                }
                Ok(n) => {
                    dir.pending = n;
                    dir.bulk = n >= SCRATCH;
                    act.touch(from);
                }
                Err(e) if would_block(&e) => {
                    // Nothing more for now: an empty pipe goes back to the pool, so a session
                    // that turns idle holds none.
                    if let Some(p) = dir.pipe.take() {
                        put_pipe(p);
                    }
                }
                Err(e) => return Poll::Ready(Err((from, e))),
            }
            continue;
        }
        match copy_step(src, dst, from, to, dir)? {
            Copied::Nothing => {}
            Copied::Fin => break,
            Copied::Data { read, written } => {
                dir.bulk = read == SCRATCH;
                if written > 0 {
                    // One clock read for both sides: the read and the write were one step.
                    dir.bytes += written as u64;
                    match from {
                        Side::Client => counters.client_to_server(written as u64),
                        Side::Server => counters.server_to_client(written as u64),
                    }
                    act.touch_both();
                } else {
                    act.touch(from);
                }
            }
        }
    }
    // FIN from src: forward the half-close. A peer that already reset makes this fail; the
    // other direction will report that error if it matters.
    let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
    dir.done = true;
    act.half_closed.store(true, Ordering::Relaxed);
    act.touch(from);
    Poll::Ready(Ok(()))
}

/// Reads once into the thread's scratch buffer and writes what came straight to `dst`; what
/// `dst` does not take is stashed in `dir`. A read that leaves the buffer partly empty drained
/// the socket (as tokio's own reads assume), so its readiness is cleared then and the next
/// read waits for the next edge instead of costing an EAGAIN.
fn copy_step(src: &TcpStream, dst: &TcpStream, from: Side, to: Side, dir: &mut Direction) -> Result<Copied, (Side, io::Error)> {
    SCRATCH_BUF.with_borrow_mut(|buf| {
        let mut short = 0usize;
        let r = src.try_io(Interest::READABLE, || {
            // SAFETY: recv(2) into a live buffer of buf.len() bytes.
            let n = unsafe { libc::recv(src.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n > 0 && n < buf.len() {
                short = n;
                // Reported as WouldBlock so that tokio clears the readiness it saw.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match r {
            Ok(0) => return Ok(Copied::Fin),
            Ok(n) => n,
            Err(_) if short > 0 => short,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Copied::Nothing),
            Err(e) => return Err((from, e)),
        };
        let m = match dst.try_write(&buf[..n]) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err((to, e)),
        };
        if m < n {
            dir.stash = buf[m..n].to_vec();
            dir.sent = 0;
        }
        Ok(Copied::Data { read: n, written: m })
    })
}

/// A non-blocking pipe used as the splice intermediary.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array on success.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe moves more per syscall; the default (64 KiB) is kept if refused.
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Self::from_fds((r, w)))
    }

    /// Adopts a pipe's two ends (made here or received in a handover).
    fn from_fds((r, w): (OwnedFd, OwnedFd)) -> Self {
        PIPES_IN_USE.fetch_add(1, Ordering::Relaxed);
        Self { r, w }
    }

    fn into_fds(self) -> (OwnedFd, OwnedFd) {
        let me = std::mem::ManuallyDrop::new(self);
        PIPES_IN_USE.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `me` is never dropped, so each fd is moved out exactly once.
        unsafe { (std::ptr::read(&me.r), std::ptr::read(&me.w)) }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES_IN_USE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes readable from a pipe or socket right now (FIONREAD).
pub fn readable_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(n.max(0) as usize) }
}

fn splice(fd_in: RawFd, fd_out: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on fds owned by the caller; null offsets mean "current position".
    let r = unsafe {
        libc::splice(
            fd_in,
            std::ptr::null_mut(),
            fd_out,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct NoCount;
    impl ByteSink for NoCount {
        fn client_to_server(&self, _: u64) {}
        fn server_to_client(&self, _: u64) {}
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn timeouts() -> IdleTimeouts {
        IdleTimeouts {
            client: Duration::from_secs(5),
            server: Duration::from_secs(5),
            tunnel: None,
            client_fin: None,
            server_fin: None,
        }
    }

    #[tokio::test]
    async fn relays_both_ways_and_forwards_half_close() {
        for mode in [RelayMode::Auto, RelayMode::Splice, RelayMode::Copy] {
            // client <-> (c_far | proxy | s_far) <-> server
            let (mut client, c_far) = pair().await;
            let (s_far, mut server) = pair().await;
            let fut = relay(&c_far, &s_far, mode, timeouts(), &NoCount, std::future::pending::<()>());
            // Idle sessions are many: the relay's own state must stay small.
            assert!(std::mem::size_of_val(&fut) < 4096, "relay future is {} bytes", std::mem::size_of_val(&fut));
            let task = async {
                client.write_all(b"request").await.unwrap();
                client.shutdown().await.unwrap();
                let mut req = Vec::new();
                server.read_to_end(&mut req).await.unwrap();
                assert_eq!(req, b"request");
                server.write_all(b"reply after FIN").await.unwrap();
                server.shutdown().await.unwrap();
                let mut rep = Vec::new();
                client.read_to_end(&mut rep).await.unwrap();
                assert_eq!(rep, b"reply after FIN");
            };
            let (end, ()) = tokio::join!(fut, task);
            assert!(matches!(end, RelayEnd::Closed), "{mode:?}: {end:?}");
        }
    }

    /// A deterministic byte pattern: byte `i` of the stream.
    fn pat(i: usize) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 11)) as u8
    }

    /// Small and bulk bursts in a row go through byte-exact in every mode, and once the source
    /// is quiet the session holds neither a pipe nor a buffer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mixed_bursts_are_byte_exact_and_leave_nothing_held() {
        for mode in [RelayMode::Auto, RelayMode::Splice, RelayMode::Copy] {
            let (mut client, c_far) = pair().await;
            let (s_far, mut server) = pair().await;
            let bursts = [100usize, 1 << 20, 50, 300 << 10, 7, 2 << 20, 1];
            let total: usize = bursts.iter().sum();
            let (quiet_tx, quiet_rx) = tokio::sync::oneshot::channel::<()>();
            let relay = async {
                let mut state = RelayState::new();
                let stop = async {
                    let _ = quiet_rx.await;
                    Stop::HandOver
                };
                let end = relay_state(&c_far, &s_far, mode, timeouts(), &NoCount, stop, &mut state).await;
                (end, state)
            };
            let traffic = async {
                let mut off = 0;
                let mut got = 0;
                let mut buf = vec![0u8; 64 << 10];
                for &b in &bursts {
                    let chunk: Vec<u8> = (off..off + b).map(pat).collect();
                    let w = async { client.write_all(&chunk).await.unwrap() };
                    let r = async {
                        while got < off + b {
                            let n = server.read(&mut buf).await.unwrap();
                            assert!(n > 0, "{mode:?}: EOF at {got}");
                            assert!(buf[..n].iter().enumerate().all(|(k, &x)| x == pat(got + k)), "{mode:?}: mismatch near {got}");
                            got += n;
                        }
                    };
                    tokio::join!(w, r);
                    off += b;
                }
                // Let the relay see the quiet socket (its next read says EAGAIN).
                tokio::time::sleep(Duration::from_millis(50)).await;
                quiet_tx.send(()).unwrap();
            };
            let ((end, state), ()) = tokio::join!(relay, traffic);
            assert!(matches!(end, RelayEnd::HandOver), "{mode:?}: {end:?}");
            assert_eq!(state.bytes(), (total as u64, 0), "{mode:?}");
            assert!(state.up.pipe.is_none() && state.up.pending == 0, "{mode:?}: a quiet session holds a pipe");
            assert!(state.up.stash.capacity() == 0, "{mode:?}: a quiet session holds a buffer");
        }
    }

    /// A relay stopped while the destination is not reading keeps the bytes it already took
    /// (stash or pipe); frozen and thawed, they are delivered first and the stream stays exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handover_carries_stashed_and_piped_bytes() {
        for mode in [RelayMode::Auto, RelayMode::Splice, RelayMode::Copy] {
            let (mut client, c_far) = pair().await;
            let (s_far, mut server) = pair().await;
            const TOTAL: usize = 8 << 20;
            let data: Vec<u8> = (0..TOTAL).map(pat).collect();
            let writer = {
                let data = data.clone();
                tokio::spawn(async move {
                    client.write_all(&data).await.unwrap();
                    client.shutdown().await.unwrap();
                    client
                })
            };
            // First relay: runs until the server's buffers are full, then is stopped.
            let mut state = RelayState::new();
            let stop = tokio::time::sleep(Duration::from_millis(300));
            let end = relay_state(&c_far, &s_far, mode, timeouts(), &NoCount, async { stop.await; Stop::HandOver }, &mut state).await;
            assert!(matches!(end, RelayEnd::HandOver), "{mode:?}: {end:?}");
            let delivered = state.bytes().0;
            let frozen = state.freeze().unwrap();
            assert!(frozen.up.pending > 0, "{mode:?}: nothing in flight ({delivered} delivered)");
            // Second relay (as in the new process): owed bytes first, then the rest.
            let mut state = RelayState::thaw(frozen);
            let relay = relay_state(&c_far, &s_far, mode, timeouts(), &NoCount, std::future::pending(), &mut state);
            let reader = async {
                let mut got = Vec::with_capacity(TOTAL);
                server.read_to_end(&mut got).await.unwrap();
                assert!(got == data, "{mode:?}: stream differs after the handover ({} bytes)", got.len());
                server.shutdown().await.unwrap();
            };
            let (end, ()) = tokio::join!(relay, reader);
            assert!(matches!(end, RelayEnd::Closed), "{mode:?}: {end:?}");
            assert_eq!(state.bytes().0, TOTAL as u64);
            drop(writer.await.unwrap());
        }
    }

    /// The idle timer is armed once and re-armed only when it fires: steady activity keeps the
    /// session, silence ends it one timeout after the last byte.
    #[tokio::test(start_paused = true)]
    async fn idle_timeout_follows_the_last_activity() {
        let (mut client, c_far) = pair().await;
        let (s_far, mut server) = pair().await;
        let t = IdleTimeouts { client: Duration::from_millis(250), server: Duration::from_millis(250), ..timeouts() };
        let relay = relay(&c_far, &s_far, RelayMode::Auto, t, &NoCount, std::future::pending::<()>());
        let traffic = async {
            let mut b = [0u8; 1];
            for _ in 0..10 {
                client.write_all(b"x").await.unwrap();
                server.read_exact(&mut b).await.unwrap();
                server.write_all(b"y").await.unwrap();
                client.read_exact(&mut b).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Instant::now()
        };
        let start = Instant::now();
        // Bounded: a timer that never fires fails here (virtual time) instead of hanging.
        let (end, last) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(relay, traffic) })
            .await
            .expect("the idle timeout never fired");
        assert!(matches!(end, RelayEnd::Timeout(_)), "{end:?}");
        let idle = Instant::now() - last;
        assert!(last - start >= Duration::from_millis(900), "timed out during activity");
        assert!(idle <= Duration::from_millis(200), "ended {idle:?} after the last sleep (timeout 250 ms from the last byte)");
    }

    #[tokio::test]
    async fn a_raised_signal_stops_an_idle_relay() {
        let (_client, c_far) = pair().await;
        let (s_far, _server) = pair().await;
        let signal = StopSignal::new();
        let mut state = RelayState::new();
        let relay = relay_signal(&c_far, &s_far, RelayMode::Auto, timeouts(), &NoCount, &signal, &mut state);
        let raise = async {
            tokio::task::yield_now().await;
            signal.raise(Stop::HandOver);
            signal.raise(Stop::Kill);
        };
        let (end, ()) = tokio::join!(relay, raise);
        assert!(matches!(end, RelayEnd::HandOver), "{end:?}: the first request wins");
    }

    #[tokio::test]
    async fn reset_is_reported_with_its_side() {
        let (client, c_far) = pair().await;
        let (s_far, server) = pair().await;
        // An abortive close of the server leg.
        socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO)).unwrap();
        drop(server);
        let end = relay(&c_far, &s_far, RelayMode::Splice, timeouts(), &NoCount, std::future::pending::<()>());
        match tokio::time::timeout(Duration::from_secs(5), end).await.unwrap() {
            RelayEnd::Error(Side::Server, _) => {}
            other => panic!("{other:?}"),
        }
        drop(client);
    }
}
