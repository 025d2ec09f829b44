//! Hitless reload, listener part: the running process hands its listening sockets to the new one
//! over a Unix socket (SCM_RIGHTS), so no connection attempt is refused while they swap; the old
//! process then drains. (Handing over established connections is the next step.)
//!
//! Wire format of one message: the text payload has one line per descriptor, the listener's
//! local address (`198.18.0.100:6443`, `[fd00::1]:6443`); the descriptors travel in the same
//! order as one SCM_RIGHTS control message.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// Most listeners in one handover (below the kernel's SCM_MAX_FD of 253).
pub const MAX_LISTENERS: usize = 200;
/// Largest payload accepted.
const MAX_PAYLOAD: usize = 64 * 1024;

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
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_LISTENERS]);
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
