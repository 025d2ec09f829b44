//! Full-duplex byte relay between two TCP sockets: zero-copy `splice(2)` through a pipe per
//! direction on Linux, or a plain copy through a buffer.
//!
//! Lifecycle of one direction (a "pump"): wait for the source to be readable → move a chunk
//! into the pipe (or buffer) → drain it to the destination → repeat; on the source's FIN, shut
//! the destination's write side (half-close is forwarded) and finish. The relay is over when
//! both pumps finished, one failed, a side stayed idle past its timeout, or it was killed.
//! The pipe is created on the first readable event, so idle connections hold no pipe.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayMode {
    /// splice(2) through a pipe (zero-copy), falling back to copy if a pipe cannot be made.
    #[default]
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
/// Pipes currently held by sessions.
static PIPES_IN_USE: AtomicU64 = AtomicU64::new(0);

/// Bytes relayed with splice(2) since start (a Prometheus counter).
pub fn spliced_bytes() -> u64 {
    SPLICED_BYTES.load(Ordering::Relaxed)
}

/// Splice pipes held right now (two per active spliced session at most).
pub fn pipes_in_use() -> u64 {
    PIPES_IN_USE.load(Ordering::Relaxed)
}

/// Largest chunk moved per splice/read.
const CHUNK: usize = 256 * 1024;
/// Copy-mode buffer size per direction.
const COPY_BUF: usize = 32 * 1024;

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
/// the pipe (or the copy buffer) and are counted in `pending`.
#[derive(Default)]
struct Direction {
    /// The splice pipe; made on the first data, so an idle session holds none.
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet written to the destination.
    pending: usize,
    /// Copy mode: the buffer and its unsent range.
    buf: Vec<u8>,
    start: usize,
    end: usize,
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

    /// Detaches the state from this process: pipes are kept as they are (their bytes travel with
    /// them); bytes pending in a copy buffer are written into a fresh pipe.
    pub fn freeze(self) -> io::Result<Frozen> {
        fn dir(d: Direction) -> io::Result<FrozenDirection> {
            let (pipe, pending) = if d.end > d.start {
                let p = Pipe::new()?;
                let mut off = d.start;
                while off < d.end {
                    // SAFETY: write(2) from a live buffer range into a pipe we own.
                    let n = unsafe { libc::write(p.w.as_raw_fd(), d.buf[off..d.end].as_ptr().cast(), d.end - off) };
                    if n <= 0 {
                        return Err(io::Error::other("copy buffer does not fit a pipe"));
                    }
                    off += n as usize;
                }
                (Some(p), d.end - d.start)
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
///
/// One hand-written poll loop drives both directions and the idle watchdog: no sub-future per
/// await point, so an idle session's relay is small (it holds its state, a timer and the stop
/// future) and a wake-up costs one poll of each direction.
pub async fn relay_state<K: std::future::Future<Output = Stop>>(
    client: &TcpStream,
    server: &TcpStream,
    mode: RelayMode,
    timeouts: IdleTimeouts,
    counters: &dyn ByteSink,
    stop: K,
    state: &mut RelayState,
) -> RelayEnd {
    let RelayState { up, down, act } = state;
    let act = &*act;
    let mut stop = std::pin::pin!(stop);
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(watch_deadline(act, &timeouts).0));
    std::future::poll_fn(|cx| {
        // Stop first: a handover must find the state between two syscalls, which it always is
        // here, before any more bytes move.
        if let Poll::Ready(s) = stop.as_mut().poll(cx) {
            return Poll::Ready(match s {
                Stop::Kill => RelayEnd::Killed,
                Stop::HandOver => RelayEnd::HandOver,
            });
        }
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
        // Activity or a half-close may have moved the deadline since the timer was set.
        loop {
            let (deadline, side) = watch_deadline(act, &timeouts);
            if Instant::now() >= deadline {
                return Poll::Ready(RelayEnd::Timeout(side));
            }
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await
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
    let count = |n: usize| match from {
        Side::Client => counters.client_to_server(n as u64),
        Side::Server => counters.server_to_client(n as u64),
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
                    dir.bytes += m as u64;
                    count(m);
                    SPLICED_BYTES.fetch_add(m as u64, Ordering::Relaxed);
                    act.touch(to);
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Poll::Ready(Err((to, e))),
            }
            continue;
        }
        if dir.start < dir.end {
            ready!(dst.poll_write_ready(cx)).map_err(|e| (to, e))?;
            match dst.try_write(&dir.buf[dir.start..dir.end]) {
                Ok(0) => return Poll::Ready(Err((to, io::ErrorKind::WriteZero.into()))),
                Ok(m) => {
                    dir.start += m;
                    dir.bytes += m as u64;
                    count(m);
                    act.touch(to);
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Poll::Ready(Err((to, e))),
            }
            continue;
        }
        if dir.pipe.is_none() && dir.buf.is_empty() {
            // Lazily made: an idle connection holds no pipe and no buffer. A one-byte peek (not
            // mere readiness, which can be spurious) waits for data or a FIN.
            let mut one = [0u8; 1];
            let mut rb = tokio::io::ReadBuf::new(&mut one);
            ready!(src.poll_peek(cx, &mut rb)).map_err(|e| (from, e))?;
            if mode == RelayMode::Splice {
                dir.pipe = Pipe::new().ok();
            }
            if dir.pipe.is_none() {
                dir.buf = vec![0u8; COPY_BUF];
            }
        }
        ready!(src.poll_read_ready(cx)).map_err(|e| (from, e))?;
        let r = match &dir.pipe {
            Some(pipe) => src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe.w.as_raw_fd(), CHUNK)),
            None => src.try_read(&mut dir.buf),
        };
        match r {
            Ok(0) => break,
            Ok(n) => {
                if dir.pipe.is_some() {
                    dir.pending = n;
                } else {
                    dir.start = 0;
                    dir.end = n;
                }
                act.touch(from);
            }
            Err(e) if would_block(&e) => {}
            Err(e) => return Poll::Ready(Err((from, e))),
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
        for mode in [RelayMode::Splice, RelayMode::Copy] {
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
