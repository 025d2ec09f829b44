//! ARP conflict check before an offer (RFC 5227 probe): "who has A? tell 0.0.0.0" from our MAC on
//! the interface whose network holds A; any ARP reply for A within the timeout means a host
//! already uses it (a squatter, a static address inside the pool). Each probe runs in its own
//! task (a blocking packet socket with a receive timeout on the blocking pool), so a slow probe
//! never holds up other clients; errors count as "free" (availability first).
//!
//! ```text
//! ARP (Ethernet/IPv4), 28 bytes: htype=1 ptype=0x0800 hlen=6 plen=4 oper:u16 sha[6] spa[4] tha[6] tpa[4]
//! ```

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::server::AddressProber;

const ETH_P_ARP: u16 = 0x0806;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;

/// One Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    /// 1 request, 2 reply.
    pub oper: u16,
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: [u8; 6],
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

impl ArpPacket {
    /// The RFC 5227 probe for `addr` from `mac` (sender address 0.0.0.0, so no cache is touched).
    pub fn probe(mac: [u8; 6], addr: Ipv4Addr) -> ArpPacket {
        ArpPacket { oper: OP_REQUEST, sha: mac, spa: Ipv4Addr::UNSPECIFIED, tha: [0; 6], tpa: addr }
    }

    /// Wire bytes.
    pub fn emit(&self) -> [u8; ARP_LEN] {
        let mut b = [0u8; ARP_LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&self.oper.to_be_bytes());
        b[8..14].copy_from_slice(&self.sha);
        b[14..18].copy_from_slice(&self.spa.octets());
        b[18..24].copy_from_slice(&self.tha);
        b[24..28].copy_from_slice(&self.tpa.octets());
        b
    }

    /// Parse an Ethernet/IPv4 ARP packet (anything else: `None`).
    pub fn parse(b: &[u8]) -> Option<ArpPacket> {
        if b.len() < ARP_LEN || b[0..2] != [0, 1] || b[2..4] != [8, 0] || b[4] != 6 || b[5] != 4 {
            return None;
        }
        let mut sha = [0u8; 6];
        sha.copy_from_slice(&b[8..14]);
        let mut tha = [0u8; 6];
        tha.copy_from_slice(&b[18..24]);
        Some(ArpPacket {
            oper: u16::from_be_bytes([b[6], b[7]]),
            sha,
            spa: Ipv4Addr::new(b[14], b[15], b[16], b[17]),
            tha,
            tpa: Ipv4Addr::new(b[24], b[25], b[26], b[27]),
        })
    }

    /// True when this packet shows that `addr` is in use by someone other than `mac`: a reply
    /// from `addr`, or someone else's request announcing it as its own.
    pub fn claims(&self, addr: Ipv4Addr, mac: [u8; 6]) -> bool {
        self.sha != mac && self.spa == addr && (self.oper == OP_REPLY || self.oper == OP_REQUEST)
    }
}

/// The ARP prober.
pub struct ArpProber {
    /// How long to wait for a reply.
    pub timeout: Duration,
}

impl AddressProber for ArpProber {
    fn probe(&self, addr: Ipv4Addr) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<bool>> + Send>> {
        let timeout = self.timeout;
        Box::pin(async move { tokio::task::spawn_blocking(move || probe_blocking(addr, timeout)).await.map_err(io::Error::other)? })
    }
}

/// The interface whose network holds `addr` (not loopback).
fn interface_for(addr: Ipv4Addr) -> Option<String> {
    crate::from_config::local_ipv4_addrs().into_iter().find_map(|l| {
        let mask = if l.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(l.prefix.min(32))) };
        (!l.addr.is_loopback() && u32::from(l.addr) & mask == u32::from(addr) & mask).then_some(l.interface)
    })
}

fn interface_mac(ifname: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    let v: Vec<u8> = text.trim().split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    v.try_into().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not an Ethernet interface"))
}

/// An AF_PACKET datagram socket for ARP, closed on drop.
struct PacketSocket(libc::c_int);

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn probe_blocking(addr: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
    let Some(ifname) = interface_for(addr) else {
        tracing::debug!(%addr, "no local interface on the address's network; ARP probe skipped");
        return Ok(false);
    };
    let mac = interface_mac(&ifname)?;
    let cname = std::ffi::CString::new(ifname.clone()).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2) call; the descriptor is owned by PacketSocket.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(ETH_P_ARP.to_be())) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = PacketSocket(fd);
    // SAFETY: sockaddr_ll is plain old data; zeroed is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as i32;
    let sll_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: valid fd and a properly sized sockaddr_ll.
    if unsafe { libc::bind(sock.0, &sll as *const libc::sockaddr_ll as *const libc::sockaddr, sll_len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let pkt = ArpPacket::probe(mac, addr).emit();
    // SAFETY: valid fd, buffer and destination address for the duration of the call.
    let sent = unsafe {
        libc::sendto(sock.0, pkt.as_ptr().cast(), pkt.len(), 0, &sll as *const libc::sockaddr_ll as *const libc::sockaddr, sll_len)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 128];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { return Ok(false) };
        let tv = libc::timeval { tv_sec: left.as_secs() as libc::time_t, tv_usec: left.subsec_micros().max(1) as libc::suseconds_t };
        // SAFETY: valid fd and a timeval of the right size.
        unsafe {
            libc::setsockopt(
                sock.0,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(sock.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) {
                continue;
            }
            return Err(e);
        }
        if let Some(p) = ArpPacket::parse(&buf[..n as usize]) {
            if p.claims(addr, mac) {
                tracing::info!(%addr, by = ?p.sha, "ARP probe answered: address in use");
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_reply_from_the_address_claims_it_our_own_probe_does_not() {
        let me = [2, 0, 0, 0, 0, 1];
        let a = Ipv4Addr::new(198, 18, 0, 20);
        let reply = ArpPacket { oper: OP_REPLY, sha: [2, 0, 0, 0, 0, 9], spa: a, tha: me, tpa: Ipv4Addr::UNSPECIFIED };
        assert!(reply.claims(a, me));
        assert!(!ArpPacket::probe(me, a).claims(a, me));
        assert!(!ArpPacket::probe([2, 0, 0, 0, 0, 9], a).claims(a, me), "another prober (spa 0) does not hold it");
        assert!(!reply.claims(Ipv4Addr::new(198, 18, 0, 21), me));
    }

    proptest! {
        #[test]
        fn arp_round_trips(oper in 1u16..3, sha in any::<[u8; 6]>(), spa in any::<u32>(), tha in any::<[u8; 6]>(), tpa in any::<u32>()) {
            let p = ArpPacket { oper, sha, spa: Ipv4Addr::from(spa), tha, tpa: Ipv4Addr::from(tpa) };
            prop_assert_eq!(ArpPacket::parse(&p.emit()), Some(p));
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ArpPacket::parse(&b);
        }
    }
}
