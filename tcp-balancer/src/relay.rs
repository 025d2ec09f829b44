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
    /// Wakes the watchdog when a direction shuts: fin timeouts may be shorter than the others.
    fin: tokio::sync::Notify,
}

impl Activity {
    fn touch(&self, side: Side) {
        let ms = self.start.elapsed().as_millis() as u64;
        match side {
            Side::Client => self.client_ms.store(ms, Ordering::Relaxed),
            Side::Server => self.server_ms.store(ms, Ordering::Relaxed),
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
    let act = Activity {
        start: Instant::now(),
        client_ms: AtomicU64::new(0),
        server_ms: AtomicU64::new(0),
        half_closed: AtomicBool::new(false),
        fin: tokio::sync::Notify::new(),
    };
    let up = pump(client, server, Side::Client, mode, &act, counters);
    let down = pump(server, client, Side::Server, mode, &act, counters);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => RelayEnd::Closed,
            Err((side, e)) => RelayEnd::Error(side, e),
        },
        side = watchdog(&act, timeouts) => RelayEnd::Timeout(side),
        _ = kill => RelayEnd::Killed,
    }
}

async fn watchdog(act: &Activity, t: IdleTimeouts) -> Side {
    loop {
        let fin = act.half_closed.load(Ordering::Relaxed);
        let client_t = if fin { t.client_fin.or(t.tunnel) } else { t.tunnel }.unwrap_or(t.client);
        let server_t = if fin { t.server_fin.or(t.tunnel) } else { t.tunnel }.unwrap_or(t.server);
        let c = act.start + Duration::from_millis(act.client_ms.load(Ordering::Relaxed)) + client_t;
        let s = act.start + Duration::from_millis(act.server_ms.load(Ordering::Relaxed)) + server_t;
        let (deadline, side) = if c <= s { (c, Side::Client) } else { (s, Side::Server) };
        if Instant::now() >= deadline {
            return side;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {},
            _ = act.fin.notified() => {},
        }
        // Loop: activity or a half-close may have moved the deadline while we slept.
    }
}

/// Moves bytes from `src` (side `from`) to `dst` until `src`'s FIN; errors carry the failing side.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    from: Side,
    mode: RelayMode,
    act: &Activity,
    counters: &dyn ByteSink,
) -> Result<(), (Side, io::Error)> {
    let to = match from {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    };
    // Lazily made: an idle connection holds no pipe and no buffer. A one-byte peek (not mere
    // readiness, which can be spurious) waits for data or a FIN.
    src.peek(&mut [0u8; 1]).await.map_err(|e| (from, e))?;
    let pipe = match mode {
        RelayMode::Splice => Pipe::new().ok(),
        RelayMode::Copy => None,
    };
    let count = |n: usize| match from {
        Side::Client => counters.client_to_server(n as u64),
        Side::Server => counters.server_to_client(n as u64),
    };
    match pipe {
        Some(pipe) => loop {
            let n = src
                .async_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe.w.as_raw_fd(), CHUNK))
                .await
                .map_err(|e| (from, e))?;
            if n == 0 {
                break;
            }
            act.touch(from);
            let mut left = n;
            while left > 0 {
                let m = dst
                    .async_io(Interest::WRITABLE, || splice(pipe.r.as_raw_fd(), dst.as_raw_fd(), left))
                    .await
                    .map_err(|e| (to, e))?;
                if m == 0 {
                    return Err((to, io::ErrorKind::WriteZero.into()));
                }
                left -= m;
                count(m);
                SPLICED_BYTES.fetch_add(m as u64, Ordering::Relaxed);
                act.touch(to);
            }
        },
        None => {
            let mut buf = vec![0u8; COPY_BUF];
            loop {
                let n = match src.try_read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        src.readable().await.map_err(|e| (from, e))?;
                        continue;
                    }
                    Err(e) => return Err((from, e)),
                };
                if n == 0 {
                    break;
                }
                act.touch(from);
                let mut off = 0;
                while off < n {
                    match dst.try_write(&buf[off..n]) {
                        Ok(0) => return Err((to, io::ErrorKind::WriteZero.into())),
                        Ok(m) => {
                            off += m;
                            count(m);
                            act.touch(to);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            dst.writable().await.map_err(|e| (to, e))?;
                        }
                        Err(e) => return Err((to, e)),
                    }
                }
            }
        }
    }
    // FIN from src: forward the half-close. A peer that already reset makes this fail; the
    // other direction will report that error if it matters.
    let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
    act.half_closed.store(true, Ordering::Relaxed);
    act.touch(from);
    act.fin.notify_one();
    Ok(())
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
        PIPES_IN_USE.fetch_add(1, Ordering::Relaxed);
        Ok(Self { r, w })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES_IN_USE.fetch_sub(1, Ordering::Relaxed);
    }
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
