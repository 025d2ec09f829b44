//! Hitless reload: the running process hands its listening sockets AND its established tcp-mode
//! sessions to a new process over a Unix socket (SCM_RIGHTS), so no connection attempt is refused
//! and no established stream is cut or left lingering in an old process.
//!
//! Lifecycle of a reload (old process O, new process N, one `SOCK_SEQPACKET` socket pair, so
//! every message keeps its boundaries and its descriptors):
//! 1. O checks the new config (a bad one is rejected, nothing changes), makes the pair and
//!    starts N (the same binary path, so an upgraded binary is picked up) with its end.
//! 2. O → N: listeners ([`send_listeners`]). N starts every frontend on them (both processes now
//!    accept from the same sockets, so nothing is refused), binds the runtime API, then
//!    N → O: [`Message::Ready`]. If N fails first, O sees the socket close and keeps serving:
//!    the reload failed and changed nothing.
//! 3. O tells systemd `MAINPID=<N>` (O is still the main process, so this works with
//!    `NotifyAccess=main`), then O → N: [`Message::Main`]; N sends READY=1 and feeds the watchdog
//!    from then on. We chose a new process over re-exec in place because sessions that cannot be
//!    handed over (an http-mode request in flight) must keep running in O until they end or
//!    `hard-stop-after` passes, while N serves everything else; a re-exec would have to stop them.
//! 4. O stops accepting; every relaying session stops at a syscall boundary (its bytes in flight
//!    stay in its splice pipes, copy buffers are poured into a pipe), and its client and server
//!    sockets, pipes and state (names, client address, age, timeouts, byte counters,
//!    half-closed directions, idle clocks) go to N in batches of at most
//!    [`MAX_SESSIONS_PER_BATCH`] ([`Message::Sessions`]). Sessions still connecting are handed
//!    over as soon as they reach the relay. N resumes each one where it stopped, owed pipe bytes
//!    first.
//! 5. When O has no session left (or `hard-stop-after` passed and it closed the rest) it sends
//!    [`Message::Done`] and exits at once: no lingering process.
//!
//! Wire format: the listeners message is a big-endian u32 length and one address per line, the
//! descriptors in the same order. Every later message is a tag byte, a big-endian u32 length and
//! a body; a sessions body is a u16 count and, per session, its fields in a fixed binary layout
//! (see [`HandedSession`]); its descriptors follow in session order: client, server, then the
//! read and write ends of each direction's pipe that is present.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::relay::{Frozen, FrozenDirection, IdleTimeouts};

/// Most listeners in one handover (below the kernel's SCM_MAX_FD of 253).
pub const MAX_LISTENERS: usize = 200;
/// Largest payload accepted.
const MAX_PAYLOAD: usize = 256 * 1024;
/// Most sessions in one message: up to six descriptors each stays below SCM_MAX_FD (253).
pub const MAX_SESSIONS_PER_BATCH: usize = 40;
/// Most descriptors in one message.
const MAX_FDS: usize = 250;

fn invalid(m: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, m.to_string())
}

/// Sends listeners (address, descriptor) to the new process.
pub fn send_listeners(sock: &UnixStream, listeners: &[(SocketAddr, BorrowedFd<'_>)]) -> io::Result<()> {
    if listeners.is_empty() || listeners.len() > MAX_LISTENERS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "0 or too many listeners"));
    }
    let mut text = String::new();
    for (a, _) in listeners {
        text.push_str(&a.to_string());
        text.push('\n');
    }
    let fds: Vec<RawFd> = listeners.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    let len = (text.len() as u32).to_be_bytes();
    let iov = [IoSlice::new(&len), IoSlice::new(text.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)?;
    if sent != 4 + text.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short handover write"));
    }
    Ok(())
}

/// Receives listeners sent by [`send_listeners`].
pub fn recv_listeners(sock: &UnixStream) -> io::Result<Vec<(SocketAddr, std::net::TcpListener)>> {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    // Owned descriptors close themselves on any error below.
    if n < 4 {
        return Err(invalid("handover message too short"));
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if 4 + len != n {
        return Err(invalid("handover message length mismatch"));
    }
    let text = std::str::from_utf8(&buf[4..n]).map_err(|_| invalid("handover addresses are not text"))?;
    let addrs: Vec<SocketAddr> = text
        .lines()
        .map(|l| l.parse().map_err(|_| invalid("bad address in handover")))
        .collect::<Result<_, _>>()?;
    if addrs.len() != fds.len() {
        return Err(invalid("address and descriptor counts differ"));
    }
    addrs
        .into_iter()
        .zip(fds)
        .map(|(a, fd)| {
            let l = std::net::TcpListener::from(fd);
            // The descriptor must be what it claims: a listening socket on that address.
            if l.local_addr()? != a {
                return Err(invalid("descriptor does not match its address"));
            }
            l.set_nonblocking(true)?;
            Ok((a, l))
        })
        .collect()
}

/// Takes from `inherited` the listeners for these addresses, binding afresh with `bind` where
/// none was inherited (a new frontend or a changed port).
pub fn take_or_bind(
    addrs: &[SocketAddr],
    inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
    mut bind: impl FnMut(SocketAddr) -> io::Result<tokio::net::TcpListener>,
) -> io::Result<Vec<tokio::net::TcpListener>> {
    addrs
        .iter()
        .map(|&a| match inherited.iter().position(|(x, _)| *x == a) {
            Some(i) => tokio::net::TcpListener::from_std(inherited.swap_remove(i).1),
            None => bind(a),
        })
        .collect()
}

/// A frontend's listening side, ready to accept: the listeners, their bound addresses (`bind`
/// first), and duplicates of their descriptors kept to hand over on the next reload.
pub(crate) type Listening = (Vec<tokio::net::TcpListener>, Vec<SocketAddr>, Vec<(SocketAddr, OwnedFd)>);

/// Every address of `fe` listening: inherited from the previous process where the address
/// matches (taken out of `inherited`), bound afresh otherwise.
pub(crate) fn listen(
    fe: &crate::proxy::FrontendConfig,
    inherited: &mut Vec<(SocketAddr, std::net::TcpListener)>,
) -> Result<Listening, crate::proxy::ProxyError> {
    let addrs: Vec<SocketAddr> = std::iter::once(fe.bind).chain(fe.extra_binds.iter().copied()).collect();
    let listeners = take_or_bind(&addrs, inherited, |a| crate::proxy::bind_addr(fe, a))
        .map_err(|source| crate::proxy::ProxyError::Bind { frontend: fe.name.clone(), addr: fe.bind, source })?;
    let locals: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let dups = listeners
        .iter()
        .zip(&locals)
        .filter_map(|(l, &a)| std::os::fd::AsFd::as_fd(l).try_clone_to_owned().ok().map(|fd| (a, fd)))
        .collect();
    Ok((listeners, locals, dups))
}

/// Makes the socket pair a reload talks over (`SOCK_SEQPACKET`, close-on-exec; the caller clears
/// close-on-exec on the end it gives the new process).
pub fn channel() -> io::Result<(UnixStream, UnixStream)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
        .map_err(io::Error::from)?;
    // A UnixStream is only a typed fd here: every call below is sendmsg/recvmsg, which keep the
    // seqpacket boundaries.
    Ok((UnixStream::from(a), UnixStream::from(b)))
}

/// One established session as it crosses to the new process.
#[derive(Debug)]
pub struct HandedSession {
    /// Frontend name.
    pub frontend: String,
    /// Backend name.
    pub backend: String,
    /// Server name in the backend.
    pub server: String,
    /// The client's address (from the PROXY header when the frontend accepts one).
    pub peer: SocketAddr,
    /// Time since the session was accepted.
    pub age: Duration,
    /// The session's inactivity timeouts (kept across the reload).
    pub timeouts: IdleTimeouts,
    /// The client socket.
    pub client: OwnedFd,
    /// The server socket.
    pub server_fd: OwnedFd,
    /// The relay: pipes with bytes in flight, counters, half-closed directions, idle clocks.
    pub relay: Frozen,
}

/// An idle http-mode keep-alive client connection crossing to the new process: between two
/// requests, nothing read from it and nothing owed to it, so the socket alone carries it (bytes
/// of a next request the client already sent wait in the kernel for the new process).
#[derive(Debug)]
pub struct HandedHttpClient {
    /// Frontend name.
    pub frontend: String,
    /// The client's address (from the PROXY header when the frontend accepts one).
    pub peer: SocketAddr,
    /// The address the client reached.
    pub local: SocketAddr,
    /// No request was read from it yet (its first one gets `timeout http-request`).
    pub fresh: bool,
    /// The client socket.
    pub client: OwnedFd,
}

/// Most http clients in one message (one descriptor each).
pub const MAX_HTTP_CLIENTS_PER_BATCH: usize = 200;

/// A message after the listeners.
#[derive(Debug)]
pub enum Message {
    /// N → O: the new process serves (its frontends and runtime API are up).
    Ready,
    /// O → N: systemd was told the new process is the main one.
    Main,
    /// O → N: established sessions.
    Sessions(Vec<HandedSession>),
    /// O → N: idle http-mode keep-alive client connections.
    HttpClients(Vec<HandedHttpClient>),
    /// O → N: no session left; the old process exits.
    Done,
}

const TAG_READY: u8 = b'R';
const TAG_MAIN: u8 = b'M';
const TAG_SESSIONS: u8 = b'S';
const TAG_DONE: u8 = b'D';
const TAG_HTTP: u8 = b'H';

fn send_tagged(sock: &UnixStream, tag: u8, body: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&(body.len() as u32).to_be_bytes());
    let iov = [IoSlice::new(&head), IoSlice::new(body)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).map_err(io::Error::from)?;
    if sent != head.len() + body.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short handover write"));
    }
    Ok(())
}

/// Sends a message without descriptors ([`Message::Ready`], [`Message::Main`], [`Message::Done`]).
pub fn send_control(sock: &UnixStream, m: &Message) -> io::Result<()> {
    let tag = match m {
        Message::Ready => TAG_READY,
        Message::Main => TAG_MAIN,
        Message::Done => TAG_DONE,
        Message::Sessions(_) | Message::HttpClients(_) => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "use send_sessions or send_http_clients"));
        }
    };
    send_tagged(sock, tag, &[], &[])
}

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn dur(&mut self, d: Duration) {
        self.u64(d.as_micros().min(u64::MAX as u128) as u64);
    }
    fn opt_dur(&mut self, d: Option<Duration>) {
        // u64::MAX stands for "unset": no real timeout is half a million years long.
        self.u64(d.map_or(u64::MAX, |d| d.as_micros().min(u64::MAX as u128 - 1) as u64));
    }
    fn str(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.0.extend_from_slice(&(b.len() as u16).to_be_bytes());
        self.0.extend_from_slice(b);
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(invalid("truncated session record"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn dur(&mut self) -> io::Result<Duration> {
        Ok(Duration::from_micros(self.u64()?))
    }
    fn opt_dur(&mut self) -> io::Result<Option<Duration>> {
        let v = self.u64()?;
        Ok(if v == u64::MAX { None } else { Some(Duration::from_micros(v)) })
    }
    fn str(&mut self) -> io::Result<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| invalid("name is not UTF-8"))
    }
}

const F_UP_DONE: u8 = 1;
const F_DOWN_DONE: u8 = 2;
const F_UP_PIPE: u8 = 4;
const F_DOWN_PIPE: u8 = 8;

/// Sends up to [`MAX_SESSIONS_PER_BATCH`] sessions in one message. The descriptors are only
/// duplicated into the receiver: the caller closes its own after this returns.
pub fn send_sessions(sock: &UnixStream, batch: &[HandedSession]) -> io::Result<()> {
    if batch.is_empty() || batch.len() > MAX_SESSIONS_PER_BATCH {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "0 or too many sessions in a batch"));
    }
    let mut e = Enc(Vec::with_capacity(batch.len() * 160));
    e.0.extend_from_slice(&(batch.len() as u16).to_be_bytes());
    let mut fds: Vec<RawFd> = Vec::with_capacity(batch.len() * 6);
    for s in batch {
        e.str(&s.frontend);
        e.str(&s.backend);
        e.str(&s.server);
        e.str(&s.peer.to_string());
        e.dur(s.age);
        e.dur(s.timeouts.client);
        e.dur(s.timeouts.server);
        e.opt_dur(s.timeouts.tunnel);
        e.opt_dur(s.timeouts.client_fin);
        e.opt_dur(s.timeouts.server_fin);
        e.dur(s.relay.client_idle);
        e.dur(s.relay.server_idle);
        let (up, down) = (&s.relay.up, &s.relay.down);
        let mut flags = 0;
        if up.done {
            flags |= F_UP_DONE;
        }
        if down.done {
            flags |= F_DOWN_DONE;
        }
        if up.pipe.is_some() {
            flags |= F_UP_PIPE;
        }
        if down.pipe.is_some() {
            flags |= F_DOWN_PIPE;
        }
        e.u8(flags);
        e.u64(up.pending as u64);
        e.u64(down.pending as u64);
        e.u64(up.bytes);
        e.u64(down.bytes);
        fds.push(s.client.as_raw_fd());
        fds.push(s.server_fd.as_raw_fd());
        for p in [&up.pipe, &down.pipe].into_iter().flatten() {
            fds.push(p.0.as_raw_fd());
            fds.push(p.1.as_raw_fd());
        }
    }
    send_tagged(sock, TAG_SESSIONS, &e.0, &fds)
}

/// Sends up to [`MAX_HTTP_CLIENTS_PER_BATCH`] idle http clients in one message (descriptors
/// duplicated into the receiver; the caller closes its own after this returns).
pub fn send_http_clients(sock: &UnixStream, batch: &[HandedHttpClient]) -> io::Result<()> {
    if batch.is_empty() || batch.len() > MAX_HTTP_CLIENTS_PER_BATCH {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "0 or too many http clients in a batch"));
    }
    let mut e = Enc(Vec::with_capacity(batch.len() * 64));
    e.0.extend_from_slice(&(batch.len() as u16).to_be_bytes());
    for c in batch {
        e.str(&c.frontend);
        e.str(&c.peer.to_string());
        e.str(&c.local.to_string());
        e.u8(u8::from(c.fresh));
    }
    let fds: Vec<RawFd> = batch.iter().map(|c| c.client.as_raw_fd()).collect();
    send_tagged(sock, TAG_HTTP, &e.0, &fds)
}

fn decode_http_clients(body: &[u8], fds: Vec<OwnedFd>) -> io::Result<Vec<HandedHttpClient>> {
    let mut d = Dec(body);
    let n = d.u16()? as usize;
    if n == 0 || n > MAX_HTTP_CLIENTS_PER_BATCH || n != fds.len() {
        return Err(invalid("bad http client count"));
    }
    let mut out = Vec::with_capacity(n);
    for client in fds {
        let frontend = d.str()?;
        let peer: SocketAddr = d.str()?.parse().map_err(|_| invalid("bad client address"))?;
        let local: SocketAddr = d.str()?.parse().map_err(|_| invalid("bad local address"))?;
        let fresh = d.u8()? != 0;
        if !is_stream_socket(&client) {
            return Err(invalid("an http client descriptor is not a stream socket"));
        }
        out.push(HandedHttpClient { frontend, peer, local, fresh, client });
    }
    if !d.0.is_empty() {
        return Err(invalid("trailing bytes in an http clients message"));
    }
    Ok(out)
}

fn is_stream_socket(fd: &OwnedFd) -> bool {
    matches!(socket2::SockRef::from(fd).r#type(), Ok(t) if t == socket2::Type::STREAM)
}

fn is_pipe(fd: &OwnedFd) -> bool {
    // SAFETY: fstat fills the struct for an fd we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    rc == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
}

fn decode_sessions(body: &[u8], fds: Vec<OwnedFd>) -> io::Result<Vec<HandedSession>> {
    let mut d = Dec(body);
    let n = d.u16()? as usize;
    if n == 0 || n > MAX_SESSIONS_PER_BATCH {
        return Err(invalid("bad session count"));
    }
    let mut fds = fds.into_iter();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let frontend = d.str()?;
        let backend = d.str()?;
        let server = d.str()?;
        let peer: SocketAddr = d.str()?.parse().map_err(|_| invalid("bad client address"))?;
        let age = d.dur()?;
        let timeouts = IdleTimeouts {
            client: d.dur()?,
            server: d.dur()?,
            tunnel: d.opt_dur()?,
            client_fin: d.opt_dur()?,
            server_fin: d.opt_dur()?,
        };
        let client_idle = d.dur()?;
        let server_idle = d.dur()?;
        let flags = d.u8()?;
        let (up_pending, down_pending) = (d.u64()? as usize, d.u64()? as usize);
        let (up_bytes, down_bytes) = (d.u64()?, d.u64()?);
        let mut next = || fds.next().ok_or_else(|| invalid("fewer descriptors than sessions need"));
        let client = next()?;
        let server_fd = next()?;
        if !is_stream_socket(&client) || !is_stream_socket(&server_fd) {
            return Err(invalid("a session descriptor is not a stream socket"));
        }
        let mut pipe = |present: bool| -> io::Result<Option<(OwnedFd, OwnedFd)>> {
            if !present {
                return Ok(None);
            }
            let (r, w) = (next()?, next()?);
            if !is_pipe(&r) || !is_pipe(&w) {
                return Err(invalid("a session's pipe descriptor is not a pipe"));
            }
            Ok(Some((r, w)))
        };
        let up_pipe = pipe(flags & F_UP_PIPE != 0)?;
        let down_pipe = pipe(flags & F_DOWN_PIPE != 0)?;
        // The pipe itself says how many bytes it holds: trust that over the record.
        let held = |p: &Option<(OwnedFd, OwnedFd)>, said: usize| match p {
            Some((r, _)) => crate::relay::readable_bytes(r.as_raw_fd()).unwrap_or(said),
            None => 0,
        };
        let up = FrozenDirection { pending: held(&up_pipe, up_pending), pipe: up_pipe, done: flags & F_UP_DONE != 0, bytes: up_bytes };
        let down =
            FrozenDirection { pending: held(&down_pipe, down_pending), pipe: down_pipe, done: flags & F_DOWN_DONE != 0, bytes: down_bytes };
        out.push(HandedSession {
            frontend,
            backend,
            server,
            peer,
            age,
            timeouts,
            client,
            server_fd,
            relay: Frozen { up, down, client_idle, server_idle },
        });
    }
    if !d.0.is_empty() || fds.next().is_some() {
        return Err(invalid("trailing bytes or descriptors in a sessions message"));
    }
    Ok(out)
}

/// Receives the next message after the listeners; `Ok(None)` when the peer closed the socket.
pub fn recv_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(v) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds, msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC))
    };
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(invalid("handover message truncated"));
    }
    if n < 5 {
        return Err(invalid("handover message too short"));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if 5 + len != n {
        return Err(invalid("handover message length mismatch"));
    }
    let body = &buf[5..n];
    let no_fds = |m: Message| if fds.is_empty() { Ok(Some(m)) } else { Err(invalid("unexpected descriptors")) };
    match buf[0] {
        TAG_READY => no_fds(Message::Ready),
        TAG_MAIN => no_fds(Message::Main),
        TAG_DONE => no_fds(Message::Done),
        TAG_SESSIONS => Ok(Some(Message::Sessions(decode_sessions(body, fds)?))),
        TAG_HTTP => Ok(Some(Message::HttpClients(decode_http_clients(body, fds)?))),
        _ => Err(invalid("unknown handover message")),
    }
}

/// What the old process's session tasks give the sender thread.
#[derive(Debug)]
pub enum Outgoing {
    /// A session stopped for the handover.
    Session(Box<HandedSession>),
    /// An idle http-mode client connection.
    HttpClient(Box<HandedHttpClient>),
    /// Every session is gone: send [`Message::Done`] and stop.
    Finish,
}

/// The old process's sender: gathers sessions into batches (as many as are waiting, up to
/// [`MAX_SESSIONS_PER_BATCH`]) and sends them, then [`Message::Done`] on [`Outgoing::Finish`]
/// (or when every sender is gone). Returns how many sessions were handed over. A session that
/// cannot be sent (the new process died) is closed by dropping it.
pub fn run_sender(sock: &UnixStream, rx: std::sync::mpsc::Receiver<Outgoing>) -> io::Result<usize> {
    let mut sent = 0;
    let mut batch = Vec::with_capacity(MAX_SESSIONS_PER_BATCH);
    let mut http = Vec::new();
    let mut finish = false;
    let take = |o: Outgoing, batch: &mut Vec<HandedSession>, http: &mut Vec<HandedHttpClient>| match o {
        Outgoing::Session(s) => {
            batch.push(*s);
            false
        }
        Outgoing::HttpClient(c) => {
            http.push(*c);
            false
        }
        Outgoing::Finish => true,
    };
    while !finish {
        match rx.recv() {
            Ok(o) => finish = take(o, &mut batch, &mut http),
            Err(_) => finish = true,
        }
        while batch.len() < MAX_SESSIONS_PER_BATCH && http.len() < MAX_HTTP_CLIENTS_PER_BATCH && !finish {
            match rx.try_recv() {
                Ok(o) => finish = take(o, &mut batch, &mut http),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => finish = true,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
            }
        }
        if !batch.is_empty() {
            send_sessions(sock, &batch)?;
            sent += batch.len();
            batch.clear();
        }
        if !http.is_empty() {
            send_http_clients(sock, &http)?;
            sent += http.len();
            http.clear();
        }
    }
    send_control(sock, &Message::Done)?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn idle_http_clients_cross_with_their_addresses() {
        let (old, new) = channel().unwrap();
        let (mut far, near) = tcp_pair();
        let c = HandedHttpClient {
            frontend: "web".into(),
            peer: "198.18.0.55:40000".parse().unwrap(),
            local: "[fd00:198:18::100]:80".parse().unwrap(),
            fresh: true,
            client: OwnedFd::from(near),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(Outgoing::HttpClient(Box::new(c))).unwrap();
        tx.send(Outgoing::Finish).unwrap();
        assert_eq!(run_sender(&old, rx).unwrap(), 1);
        let Some(Message::HttpClients(v)) = recv_message(&new).unwrap() else { panic!("no http clients message") };
        assert_eq!(v.len(), 1);
        let got = &v[0];
        assert_eq!((got.frontend.as_str(), got.fresh), ("web", true));
        assert_eq!(got.peer.to_string(), "198.18.0.55:40000");
        assert_eq!(got.local.to_string(), "[fd00:198:18::100]:80");
        // The descriptor is the same connection.
        let mut s = std::net::TcpStream::from(v.into_iter().next().unwrap().client);
        far.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n");
        assert!(matches!(recv_message(&new).unwrap(), Some(Message::Done)));
        // A count that disagrees with the descriptors is refused.
        let mut e = Enc(Vec::new());
        e.0.extend_from_slice(&2u16.to_be_bytes());
        assert!(decode_http_clients(&e.0, Vec::new()).is_err());
    }

    #[test]
    fn sessions_cross_with_state_and_pipe_bytes() {
        let (old, new) = channel().unwrap();
        let (mut c_far, c_near) = tcp_pair();
        let (s_near, mut s_far) = tcp_pair();
        // Bytes in flight in the up pipe.
        let mut fds = [0 as RawFd; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }, 0);
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        assert_eq!(unsafe { libc::write(w.as_raw_fd(), b"inflight".as_ptr().cast(), 8) }, 8);
        let t = IdleTimeouts {
            client: Duration::from_secs(20),
            server: Duration::from_millis(1500),
            tunnel: Some(Duration::from_secs(3600)),
            client_fin: None,
            server_fin: Some(Duration::from_secs(1)),
        };
        let s = HandedSession {
            frontend: "api fe".into(),
            backend: "apis".into(),
            server: "a".into(),
            peer: "[fd00::1]:4242".parse().unwrap(),
            age: Duration::from_secs(99),
            timeouts: t,
            client: OwnedFd::from(c_near),
            server_fd: OwnedFd::from(s_near),
            relay: Frozen {
                up: FrozenDirection { pipe: Some((r, w)), pending: 8, done: false, bytes: 1000 },
                down: FrozenDirection { pipe: None, pending: 0, done: true, bytes: 7 },
                client_idle: Duration::from_millis(250),
                server_idle: Duration::from_secs(2),
            },
        };
        send_sessions(&old, std::slice::from_ref(&s)).unwrap();
        drop(s); // the sender's copies close; the receiver's keep the connections open
        send_control(&old, &Message::Done).unwrap();
        let Some(Message::Sessions(v)) = recv_message(&new).unwrap() else { panic!("no sessions") };
        assert_eq!(v.len(), 1);
        let g = &v[0];
        assert_eq!((g.frontend.as_str(), g.backend.as_str(), g.server.as_str()), ("api fe", "apis", "a"));
        assert_eq!(g.peer, "[fd00::1]:4242".parse().unwrap());
        assert_eq!(g.age, Duration::from_secs(99));
        assert_eq!(g.timeouts, t);
        assert_eq!((g.relay.client_idle, g.relay.server_idle), (Duration::from_millis(250), Duration::from_secs(2)));
        assert_eq!((g.relay.up.pending, g.relay.up.done, g.relay.up.bytes), (8, false, 1000));
        assert_eq!((g.relay.down.pending, g.relay.down.done, g.relay.down.bytes), (0, true, 7));
        let mut got = [0u8; 8];
        let (pr, _) = g.relay.up.pipe.as_ref().unwrap();
        assert_eq!(unsafe { libc::read(pr.as_raw_fd(), got.as_mut_ptr().cast(), 8) }, 8);
        assert_eq!(&got, b"inflight");
        // The received sockets are the same connections.
        let mut c = std::net::TcpStream::from(g.client.try_clone().unwrap());
        c.write_all(b"to client").unwrap();
        let mut buf = [0u8; 9];
        c_far.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"to client");
        let mut sv = std::net::TcpStream::from(g.server_fd.try_clone().unwrap());
        s_far.write_all(b"srv").unwrap();
        let mut buf = [0u8; 3];
        sv.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"srv");
        assert!(matches!(recv_message(&new).unwrap(), Some(Message::Done)));
        drop(old);
        assert!(recv_message(&new).unwrap().is_none());
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let (a, b) = channel().unwrap();
        send_tagged(&a, b'X', &[], &[]).unwrap();
        assert!(recv_message(&b).is_err());
        send_tagged(&a, TAG_SESSIONS, &[0, 1, 0, 3], &[]).unwrap();
        assert!(recv_message(&b).is_err());
        // A "socket" that is really a pipe end is refused.
        let (x, y) = tcp_pair();
        let mut fds = [0 as RawFd; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let s = HandedSession {
            frontend: "f".into(),
            backend: "b".into(),
            server: "s".into(),
            peer: "127.0.0.1:1".parse().unwrap(),
            age: Duration::ZERO,
            timeouts: IdleTimeouts { client: Duration::ZERO, server: Duration::ZERO, tunnel: None, client_fin: None, server_fin: None },
            client: r,
            server_fd: OwnedFd::from(x),
            relay: Frozen::default(),
        };
        send_sessions(&a, std::slice::from_ref(&s)).unwrap();
        assert!(recv_message(&b).is_err());
        drop((w, y));
    }

    #[test]
    fn sender_batches_and_finishes() {
        let (a, b) = channel().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut keep = Vec::new();
        for i in 0..(MAX_SESSIONS_PER_BATCH + 5) {
            let (x, y) = tcp_pair();
            keep.push(y);
            let (p, q) = tcp_pair();
            keep.push(q);
            tx.send(Outgoing::Session(Box::new(HandedSession {
                frontend: "f".into(),
                backend: "b".into(),
                server: format!("s{i}"),
                peer: "127.0.0.1:1".parse().unwrap(),
                age: Duration::ZERO,
                timeouts: IdleTimeouts { client: Duration::ZERO, server: Duration::ZERO, tunnel: None, client_fin: None, server_fin: None },
                client: OwnedFd::from(x),
                server_fd: OwnedFd::from(p),
                relay: Frozen::default(),
            })))
            .unwrap();
        }
        tx.send(Outgoing::Finish).unwrap();
        let sent = std::thread::scope(|s| {
            let h = s.spawn(|| run_sender(&a, rx));
            let mut got = Vec::new();
            loop {
                match recv_message(&b).unwrap() {
                    Some(Message::Sessions(v)) => {
                        assert!(v.len() <= MAX_SESSIONS_PER_BATCH);
                        got.extend(v.into_iter().map(|s| s.server));
                    }
                    Some(Message::Done) => break,
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(got, (0..MAX_SESSIONS_PER_BATCH + 5).map(|i| format!("s{i}")).collect::<Vec<_>>());
            h.join().unwrap().unwrap()
        });
        assert_eq!(sent, MAX_SESSIONS_PER_BATCH + 5);
    }
}
