//! VIP announcements: gratuitous ARP (request and reply forms) for IPv4 and unsolicited neighbour
//! advertisements (override flag, to ff02::1) for IPv6, sent on a raw AF_PACKET socket.
//!
//! The frames are built and parsed here (parse is used by tests and by the lab's capture); the
//! [`AnnounceSchedule`] says when to send: a burst (default at 0, 20 and 50 ms) so that a lost
//! frame does not cost a client a whole ARP timeout, then the same burst again after a delay for
//! switches and hosts that were busy during the takeover.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use thiserror::Error;

/// Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_HDR: usize = 14;
/// Length of a gratuitous ARP frame (without padding).
pub const ARP_FRAME_LEN: usize = ETH_HDR + 28;
/// Length of an unsolicited NA frame with a target link-layer address option.
pub const NA_FRAME_LEN: usize = ETH_HDR + 40 + 24 + 8;
const ICMPV6_NA: u8 = 136;
const ND_OPT_TLLA: u8 = 2;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const NA_FLAG_SOLICITED: u8 = 0x40;
const NA_FLAG_ROUTER: u8 = 0x80;

/// Which gratuitous ARP form to send; both are sent because hosts differ in which they honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpForm {
    /// ARP request for our own address (sender = target = VIP, target MAC zero).
    Request,
    /// ARP reply, broadcast, sender = target = VIP and target MAC = sender MAC.
    Reply,
}

/// A frame that is not what it claims to be.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its headers.
    #[error("frame truncated")]
    Truncated,
    /// Not the protocol asked for.
    #[error("not a {0}")]
    WrongProtocol(&'static str),
    /// ICMPv6 checksum mismatch.
    #[error("bad ICMPv6 checksum")]
    BadChecksum,
}

/// A parsed Ethernet/IPv4 ARP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpFrame {
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// 1 request, 2 reply.
    pub op: u16,
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: [u8; 6],
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

impl ArpFrame {
    /// True for a gratuitous ARP (sender and target address equal).
    pub fn is_gratuitous(&self) -> bool {
        self.spa == self.tpa
    }

    /// Builds the gratuitous ARP of `ip` at `mac` in the given form.
    pub fn announcement(mac: [u8; 6], ip: Ipv4Addr, form: ArpForm) -> Self {
        let (op, tha) = match form {
            ArpForm::Request => (1, [0; 6]),
            // Linux treats a reply as gratuitous (and lets it override a fresh entry) only when
            // the target hardware address equals the sender's.
            ArpForm::Reply => (2, mac),
        };
        ArpFrame { eth_dst: BROADCAST, eth_src: mac, op, sha: mac, spa: ip, tha, tpa: ip }
    }

    /// Serialises the frame.
    pub fn emit(&self) -> [u8; ARP_FRAME_LEN] {
        let mut f = [0u8; ARP_FRAME_LEN];
        f[0..6].copy_from_slice(&self.eth_dst);
        f[6..12].copy_from_slice(&self.eth_src);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        let a = &mut f[ETH_HDR..];
        a[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
        a[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
        a[4] = 6;
        a[5] = 4;
        a[6..8].copy_from_slice(&self.op.to_be_bytes());
        a[8..14].copy_from_slice(&self.sha);
        a[14..18].copy_from_slice(&self.spa.octets());
        a[18..24].copy_from_slice(&self.tha);
        a[24..28].copy_from_slice(&self.tpa.octets());
        f
    }

    /// Parses an Ethernet frame carrying Ethernet/IPv4 ARP.
    pub fn parse(f: &[u8]) -> Result<Self, WireError> {
        if f.len() < ARP_FRAME_LEN {
            return Err(WireError::Truncated);
        }
        let a = &f[ETH_HDR..];
        if f[12..14] != ETH_P_ARP.to_be_bytes()
            || a[0..2] != [0, 1]
            || a[2..4] != [8, 0]
            || a[4] != 6
            || a[5] != 4
        {
            return Err(WireError::WrongProtocol("Ethernet/IPv4 ARP frame"));
        }
        let mac = |s: &[u8]| -> [u8; 6] { [s[0], s[1], s[2], s[3], s[4], s[5]] };
        Ok(ArpFrame {
            eth_dst: mac(&f[0..6]),
            eth_src: mac(&f[6..12]),
            op: u16::from_be_bytes([a[6], a[7]]),
            sha: mac(&a[8..14]),
            spa: Ipv4Addr::new(a[14], a[15], a[16], a[17]),
            tha: mac(&a[18..24]),
            tpa: Ipv4Addr::new(a[24], a[25], a[26], a[27]),
        })
    }
}

/// A parsed neighbour advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighbourAdvert {
    /// Ethernet destination.
    pub eth_dst: [u8; 6],
    /// Ethernet source.
    pub eth_src: [u8; 6],
    /// IPv6 source.
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// Hop limit (must be 255).
    pub hop_limit: u8,
    /// Router flag.
    pub router: bool,
    /// Solicited flag.
    pub solicited: bool,
    /// Override flag.
    pub override_flag: bool,
    /// Target address.
    pub target: Ipv6Addr,
    /// Target link-layer address option.
    pub tlla: Option<[u8; 6]>,
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

impl NeighbourAdvert {
    /// The unsolicited NA announcing `ip` at `mac`: override set, solicited clear, to ff02::1.
    pub fn unsolicited(mac: [u8; 6], ip: Ipv6Addr) -> Self {
        NeighbourAdvert {
            eth_dst: [0x33, 0x33, 0, 0, 0, 1],
            eth_src: mac,
            src: ip,
            dst: ALL_NODES,
            hop_limit: 255,
            router: false,
            solicited: false,
            override_flag: true,
            target: ip,
            tlla: Some(mac),
        }
    }

    /// Serialises the frame (with the TLLA option when present), checksum included.
    pub fn emit(&self) -> Vec<u8> {
        let icmp_len: usize = 24 + if self.tlla.is_some() { 8 } else { 0 };
        let mut f = vec![0u8; ETH_HDR + 40 + icmp_len];
        f[0..6].copy_from_slice(&self.eth_dst);
        f[6..12].copy_from_slice(&self.eth_src);
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        let ip = &mut f[ETH_HDR..ETH_HDR + 40];
        ip[0] = 0x60;
        // icmp_len is at most 32, so the cast cannot truncate.
        ip[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
        ip[6] = 58;
        ip[7] = self.hop_limit;
        ip[8..24].copy_from_slice(&self.src.octets());
        ip[24..40].copy_from_slice(&self.dst.octets());
        let m = &mut f[ETH_HDR + 40..];
        m[0] = ICMPV6_NA;
        m[4] = (if self.router { NA_FLAG_ROUTER } else { 0 })
            | (if self.solicited { NA_FLAG_SOLICITED } else { 0 })
            | (if self.override_flag { NA_FLAG_OVERRIDE } else { 0 });
        m[8..24].copy_from_slice(&self.target.octets());
        if let Some(mac) = self.tlla {
            m[24] = ND_OPT_TLLA;
            m[25] = 1;
            m[26..32].copy_from_slice(&mac);
        }
        let ck = icmpv6_checksum(&self.src, &self.dst, m);
        m[2..4].copy_from_slice(&ck.to_be_bytes());
        f
    }

    /// Parses an Ethernet frame carrying an ICMPv6 neighbour advertisement (checksum verified).
    pub fn parse(f: &[u8]) -> Result<Self, WireError> {
        if f.len() < ETH_HDR + 40 + 24 {
            return Err(WireError::Truncated);
        }
        if f[12..14] != ETH_P_IPV6.to_be_bytes() {
            return Err(WireError::WrongProtocol("IPv6 frame"));
        }
        let ip = &f[ETH_HDR..ETH_HDR + 40];
        if ip[0] >> 4 != 6 || ip[6] != 58 {
            return Err(WireError::WrongProtocol("ICMPv6 packet"));
        }
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let m = f.get(ETH_HDR + 40..ETH_HDR + 40 + plen).ok_or(WireError::Truncated)?;
        if m.len() < 24 || m[0] != ICMPV6_NA {
            return Err(WireError::WrongProtocol("neighbour advertisement"));
        }
        let v6 = |s: &[u8]| -> Ipv6Addr {
            let mut o = [0u8; 16];
            o.copy_from_slice(s);
            Ipv6Addr::from(o)
        };
        let src = v6(&ip[8..24]);
        let dst = v6(&ip[24..40]);
        if icmpv6_checksum(&src, &dst, m) != 0 {
            return Err(WireError::BadChecksum);
        }
        let mut tlla = None;
        let mut opts = &m[24..];
        while opts.len() >= 8 {
            let len = usize::from(opts[1]) * 8;
            if len == 0 || len > opts.len() {
                return Err(WireError::Truncated);
            }
            if opts[0] == ND_OPT_TLLA && len == 8 {
                tlla = Some([opts[2], opts[3], opts[4], opts[5], opts[6], opts[7]]);
            }
            opts = &opts[len..];
        }
        let mac = |s: &[u8]| -> [u8; 6] { [s[0], s[1], s[2], s[3], s[4], s[5]] };
        Ok(NeighbourAdvert {
            eth_dst: mac(&f[0..6]),
            eth_src: mac(&f[6..12]),
            src,
            dst,
            hop_limit: ip[7],
            router: m[4] & NA_FLAG_ROUTER != 0,
            solicited: m[4] & NA_FLAG_SOLICITED != 0,
            override_flag: m[4] & NA_FLAG_OVERRIDE != 0,
            target: v6(&m[8..24]),
            tlla,
        })
    }
}

/// The ICMPv6 checksum over the pseudo-header and `msg`; 0 when `msg` already holds a valid one.
fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
            sum = sum.wrapping_add(u32::from(w));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The frames that announce `ip` at `mac`.
pub fn announcement_frames(mac: [u8; 6], ip: IpAddr) -> Vec<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) => vec![
            ArpFrame::announcement(mac, v4, ArpForm::Request).emit().to_vec(),
            ArpFrame::announcement(mac, v4, ArpForm::Reply).emit().to_vec(),
        ],
        IpAddr::V6(v6) => vec![NeighbourAdvert::unsolicited(mac, v6).emit()],
    }
}

/// When announcements are sent, relative to the takeover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceSchedule {
    /// Offsets of the first burst.
    pub burst: Vec<Duration>,
    /// The burst is sent again this long after the first one started (`None` = once).
    pub repeat_after: Option<Duration>,
}

impl Default for AnnounceSchedule {
    fn default() -> Self {
        AnnounceSchedule {
            burst: vec![Duration::ZERO, Duration::from_millis(20), Duration::from_millis(50)],
            repeat_after: Some(Duration::from_secs(2)),
        }
    }
}

impl AnnounceSchedule {
    /// `count` announcements `interval` apart, repeated once after `repeat_after` if given.
    pub fn evenly(count: u32, interval: Duration, repeat_after: Option<Duration>) -> Self {
        AnnounceSchedule {
            burst: (0..count.max(1)).map(|i| interval * i).collect(),
            repeat_after: repeat_after.filter(|d| !d.is_zero()),
        }
    }

    /// Every send time, sorted, relative to the start.
    pub fn times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.burst.clone();
        if let Some(r) = self.repeat_after {
            t.extend(self.burst.iter().map(|b| r + *b));
        }
        t.sort();
        t
    }
}

/// A raw AF_PACKET socket bound to one interface, for sending whole Ethernet frames.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens a send-only raw socket on `ifindex` (protocol 0: it receives nothing).
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket { fd, ifindex })
    }

    /// Sends one Ethernet frame (destination taken from the frame).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < ETH_HDR {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[0..6]);
        // SAFETY: buffer and address pointers are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// Sends `frames` at every time of `schedule`; returns how many frames went out. Send errors are
/// logged and counted as not sent (a link flap must not abort the takeover).
pub async fn announce(sock: &PacketSocket, frames: &[Vec<u8>], schedule: &AnnounceSchedule) -> usize {
    let start = tokio::time::Instant::now();
    let mut sent = 0;
    for t in schedule.times() {
        tokio::time::sleep_until(start + t).await;
        for f in frames {
            match sock.send(f) {
                Ok(()) => sent += 1,
                Err(e) => tracing::warn!(error = %e, "sending VIP announcement"),
            }
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: [u8; 6] = [0x02, 0, 0x5e, 0x10, 0x20, 0x30];

    #[test]
    fn arp_forms() {
        let ip = Ipv4Addr::new(198, 18, 0, 10);
        let req = ArpFrame::parse(&ArpFrame::announcement(MAC, ip, ArpForm::Request).emit()).unwrap();
        assert_eq!((req.op, req.eth_dst, req.sha, req.tha), (1, BROADCAST, MAC, [0; 6]));
        assert!(req.is_gratuitous());
        let rep = ArpFrame::parse(&ArpFrame::announcement(MAC, ip, ArpForm::Reply).emit()).unwrap();
        assert_eq!((rep.op, rep.spa, rep.tpa), (2, ip, ip));
    }

    #[test]
    fn na_has_override_and_valid_checksum() {
        let ip: Ipv6Addr = "fd00:198:18::10".parse().unwrap();
        let f = NeighbourAdvert::unsolicited(MAC, ip).emit();
        assert_eq!(f.len(), NA_FRAME_LEN);
        let na = NeighbourAdvert::parse(&f).unwrap();
        assert!(na.override_flag && !na.solicited && !na.router);
        assert_eq!((na.dst, na.hop_limit, na.tlla, na.target), (ALL_NODES, 255, Some(MAC), ip));
        let mut bad = f.clone();
        bad[ETH_HDR + 40 + 10] ^= 1;
        assert_eq!(NeighbourAdvert::parse(&bad), Err(WireError::BadChecksum));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert_eq!(ArpFrame::parse(&[0u8; 10]), Err(WireError::Truncated));
        assert!(ArpFrame::parse(&[0u8; 60]).is_err());
        assert!(NeighbourAdvert::parse(&[0u8; 20]).is_err());
    }

    #[test]
    fn schedule_repeats_burst() {
        let s = AnnounceSchedule::default();
        let ms: Vec<u128> = s.times().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 20, 50, 2000, 2020, 2050]);
        let once = AnnounceSchedule { repeat_after: None, ..s };
        assert_eq!(once.times().len(), 3);
    }

    proptest! {
        #[test]
        fn arp_round_trip(mac in any::<[u8; 6]>(), ip in any::<[u8; 4]>(), reply in any::<bool>()) {
            let form = if reply { ArpForm::Reply } else { ArpForm::Request };
            let a = ArpFrame::announcement(mac, Ipv4Addr::from(ip), form);
            prop_assert_eq!(ArpFrame::parse(&a.emit()).unwrap(), a);
        }

        #[test]
        fn na_round_trip(mac in any::<[u8; 6]>(), ip in any::<[u8; 16]>(), r in any::<bool>(), s in any::<bool>(), o in any::<bool>()) {
            let mut na = NeighbourAdvert::unsolicited(mac, Ipv6Addr::from(ip));
            na.router = r; na.solicited = s; na.override_flag = o;
            prop_assert_eq!(NeighbourAdvert::parse(&na.emit()).unwrap(), na);
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = ArpFrame::parse(&data);
            let _ = NeighbourAdvert::parse(&data);
        }
    }
}
