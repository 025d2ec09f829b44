//! The PROXY protocol (HAProxy's spec, versions 1 and 2): parse on frontends with
//! `accept-proxy`, emit towards servers with `send-proxy` / `send-proxy-v2`.
//!
//! Only the address block is interpreted; v2 TLVs are skipped (their length is honoured).
//! Parsing is incremental: [`parse`] says how many bytes it needs, never reads past the header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The v2 signature.
pub const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (spec: 107).
pub const V1_MAX: usize = 107;
/// Longest v2 header this parser accepts (16-byte fixed part + address block + TLVs).
pub const V2_MAX: usize = 16 + 4096;

/// Protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Text form.
    V1,
    /// Binary form.
    V2,
}

/// What a PROXY header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection from `src` to `dst`.
    Tcp {
        /// The original client.
        src: SocketAddr,
        /// The address the client connected to.
        dst: SocketAddr,
    },
    /// No address information (v1 `UNKNOWN`, v2 `LOCAL` or an unsupported family): use the
    /// connection's own addresses.
    Local,
}

/// Why bytes are not a valid PROXY header.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Neither signature matches: the peer does not speak the PROXY protocol.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// The header is longer than allowed.
    #[error("PROXY header too long")]
    TooLong,
    /// The header is malformed.
    #[error("malformed PROXY header: {0}")]
    Invalid(&'static str),
}

/// Parses a header at the start of `buf`: `Ok(None)` means more bytes are needed,
/// `Ok(Some((header, len)))` that the header is the first `len` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] == V2_SIG[..n] {
        return if n < V2_SIG.len() { Ok(None) } else { parse_v2(buf) };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(buf) };
    }
    Err(ParseError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX { Err(ParseError::TooLong) } else { Ok(None) };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(ParseError::Invalid("v1 line must end with CRLF"));
    }
    let line = std::str::from_utf8(&buf[6..end - 1]).map_err(|_| ParseError::Invalid("v1 line is not text"))?;
    let mut parts = line.split(' ');
    let proto = parts.next().ok_or(ParseError::Invalid("v1 protocol missing"))?;
    if proto == "UNKNOWN" {
        // The rest of the line is to be ignored.
        return Ok(Some((Header::Local, end + 1)));
    }
    let v6 = match proto {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ParseError::Invalid("v1 protocol must be TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = || parts.next().ok_or(ParseError::Invalid("v1 field missing"));
    let (sa, da, sp, dp) = (next()?, next()?, next()?, next()?);
    if parts.next().is_some() {
        return Err(ParseError::Invalid("v1 trailing fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, ParseError> {
        let ip: IpAddr = s.parse().map_err(|_| ParseError::Invalid("v1 address"))?;
        if ip.is_ipv6() != v6 {
            return Err(ParseError::Invalid("v1 address family does not match"));
        }
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, ParseError> {
        // The spec forbids leading zeros and signs.
        if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::Invalid("v1 port"));
        }
        s.parse().map_err(|_| ParseError::Invalid("v1 port"))
    };
    let src = SocketAddr::new(ip(sa)?, port(sp)?);
    let dst = SocketAddr::new(ip(da)?, port(dp)?);
    Ok(Some((Header::Tcp { src, dst }, end + 1)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ParseError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ParseError::Invalid("v2 version must be 2"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > V2_MAX {
        return Err(ParseError::TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let total = 16 + len;
    let body = &buf[16..total];
    match ver_cmd & 0x0f {
        0 => return Ok(Some((Header::Local, total))),
        1 => {}
        _ => return Err(ParseError::Invalid("v2 command must be LOCAL or PROXY")),
    }
    let fam = buf[13];
    let header = match fam {
        // TCP over IPv4.
        0x11 => {
            if body.len() < 12 {
                return Err(ParseError::Invalid("v2 IPv4 block too short"));
            }
            let s = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let d = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            let sp = u16::from_be_bytes([body[8], body[9]]);
            let dp = u16::from_be_bytes([body[10], body[11]]);
            Header::Tcp { src: SocketAddr::new(s.into(), sp), dst: SocketAddr::new(d.into(), dp) }
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(ParseError::Invalid("v2 IPv6 block too short"));
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&body[..16]);
            d.copy_from_slice(&body[16..32]);
            let sp = u16::from_be_bytes([body[32], body[33]]);
            let dp = u16::from_be_bytes([body[34], body[35]]);
            Header::Tcp {
                src: SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                dst: SocketAddr::new(Ipv6Addr::from(d).into(), dp),
            }
        }
        // UNSPEC, UDP, unix sockets: the spec says to accept and use the real addresses.
        _ => Header::Local,
    };
    Ok(Some((header, total)))
}

/// Appends the header in the given version to `out`. Mixed address families are sent as
/// IPv6 (IPv4-mapped), since both ends of one header must share a family.
pub fn emit(h: &Header, v: Version, out: &mut Vec<u8>) {
    let addrs = match *h {
        Header::Tcp { src, dst } => Some(same_family(src, dst)),
        Header::Local => None,
    };
    match (v, addrs) {
        (Version::V1, None) => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
        (Version::V1, Some((s, d))) => {
            let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
            out.extend_from_slice(format!("PROXY {fam} {} {} {} {}\r\n", s.ip(), d.ip(), s.port(), d.port()).as_bytes());
        }
        (Version::V2, None) => {
            out.extend_from_slice(&V2_SIG);
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        }
        (Version::V2, Some((s, d))) => {
            out.extend_from_slice(&V2_SIG);
            out.push(0x21);
            match (s.ip(), d.ip()) {
                (IpAddr::V4(si), IpAddr::V4(di)) => {
                    out.extend_from_slice(&[0x11, 0, 12]);
                    out.extend_from_slice(&si.octets());
                    out.extend_from_slice(&di.octets());
                }
                (si, di) => {
                    out.extend_from_slice(&[0x21, 0, 36]);
                    out.extend_from_slice(&to_v6(si).octets());
                    out.extend_from_slice(&to_v6(di).octets());
                }
            }
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn same_family(s: SocketAddr, d: SocketAddr) -> (SocketAddr, SocketAddr) {
    if s.is_ipv4() == d.is_ipv4() {
        (s, d)
    } else {
        (SocketAddr::new(to_v6(s.ip()).into(), s.port()), SocketAddr::new(to_v6(d.ip()).into(), d.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_examples_from_the_spec() {
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let (hdr, len) = parse(h).unwrap().unwrap();
        assert_eq!(hdr, Header::Tcp { src: sa("192.168.0.1:56324"), dst: sa("192.168.0.11:443") });
        assert_eq!(&h[len..], b"GET / HTTP/1.1\r\n");
        let (hdr, _) = parse(b"PROXY TCP6 fd00:198:18::1 fd00:198:18::2 1 65535\r\n").unwrap().unwrap();
        assert_eq!(hdr, Header::Tcp { src: sa("[fd00:198:18::1]:1"), dst: sa("[fd00:198:18::2]:65535") });
        assert_eq!(parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap().unwrap().0, Header::Local);
    }

    #[test]
    fn v1_rejects_malformed_lines() {
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"[..],
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Invalid(_))), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(&[b'x'; 200]), Err(ParseError::NotProxy));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.extend_from_slice(&[b'a'; 120]);
        assert_eq!(parse(&long), Err(ParseError::TooLong));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
    }

    #[test]
    fn needs_more_bytes_until_complete() {
        let mut v2 = Vec::new();
        emit(&Header::Tcp { src: sa("198.18.0.1:1000"), dst: sa("198.18.0.2:6443") }, Version::V2, &mut v2);
        for full in [b"PROXY TCP4 198.18.0.1 198.18.0.2 1000 6443\r\n".to_vec(), v2] {
            for cut in 0..full.len() {
                assert_eq!(parse(&full[..cut]), Ok(None), "cut {cut}");
            }
            assert_eq!(parse(&full).unwrap().unwrap().1, full.len());
        }
    }

    #[test]
    fn v2_local_tlvs_and_unknown_families() {
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&b), Ok(Some((Header::Local, 16))));
        // PROXY over IPv4 with a 5-byte TLV after the addresses (skipped).
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0, 17, 198, 18, 0, 1, 198, 18, 0, 2, 0x03, 0xe8, 0x19, 0x2b]);
        b.extend_from_slice(&[0x04, 0, 2, 0xab, 0xcd, 0xff]);
        let (h, len) = parse(&b).unwrap().unwrap();
        assert_eq!(h, Header::Tcp { src: sa("198.18.0.1:1000"), dst: sa("198.18.0.2:6443") });
        assert_eq!(len, 33);
        // Unix sockets: accepted as LOCAL.
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x31, 0, 216]);
        b.extend_from_slice(&[0; 216]);
        assert_eq!(parse(&b).unwrap().unwrap().0, Header::Local);
        // Bad version and command, short address block, too long.
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x11, 0x11, 0, 12]);
        assert!(parse(&b).is_err());
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x22, 0x11, 0, 0]);
        assert!(parse(&b).is_err());
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&b).is_err());
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&b), Err(ParseError::TooLong));
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let h = Header::Tcp { src: sa("198.18.0.1:5"), dst: sa("[fd00:198:18::1]:6") };
        for v in [Version::V1, Version::V2] {
            let mut b = Vec::new();
            emit(&h, v, &mut b);
            let (got, _) = parse(&b).unwrap().unwrap();
            assert_eq!(got, Header::Tcp { src: sa("[::ffff:198.18.0.1]:5"), dst: sa("[fd00:198:18::1]:6") });
        }
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(Ipv4Addr::from(ip).into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(Ipv6Addr::from(ip).into(), p)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(v4 in any::<bool>(), a in addr(), b in addr(), v2 in any::<bool>(), local in any::<bool>(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
            let (src, dst) = if v4 {
                // Force a same-family pair to check exact round trips.
                (SocketAddr::new(Ipv4Addr::from(a.port() as u32 * 7919).into(), a.port()), SocketAddr::new(Ipv4Addr::from(b.port() as u32).into(), b.port()))
            } else {
                (SocketAddr::new(to_v6(a.ip()).into(), a.port()), SocketAddr::new(to_v6(b.ip()).into(), b.port()))
            };
            let h = if local { Header::Local } else { Header::Tcp { src, dst } };
            let v = if v2 { Version::V2 } else { Version::V1 };
            let mut buf = Vec::new();
            emit(&h, v, &mut buf);
            let hlen = buf.len();
            buf.extend_from_slice(&tail);
            let (got, len) = parse(&buf).unwrap().unwrap();
            prop_assert_eq!(got, h);
            prop_assert_eq!(len, hlen);
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), prefix in 0u8..3) {
            let mut b = match prefix { 0 => V2_SIG.to_vec(), 1 => b"PROXY ".to_vec(), _ => vec![] };
            b.extend_from_slice(&bytes);
            if let Ok(Some((_, len))) = parse(&b) {
                prop_assert!(len <= b.len());
            }
        }
    }
}
