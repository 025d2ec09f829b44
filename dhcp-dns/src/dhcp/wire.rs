//! DHCPv4 wire format: decoding that never panics, on top of dhcproto.
//!
//! dhcproto parses well-formed packets but has `debug_assert!`s and length arithmetic that panic
//! on a few malformed options, and `Message::chaddr()` indexes by the untrusted `hlen`. This module
//! checks those preconditions before handing the bytes to dhcproto, so a malformed packet is an
//! error to count, never a crash.

use std::net::Ipv4Addr;

use dhcproto::v4::Message;
use dhcproto::{Decodable, Encodable};

/// The BOOTP header length (fixed part before the magic cookie).
pub const BOOTP_HEADER: usize = 236;
/// The DHCP magic cookie (RFC 2131 §3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Why a datagram is not a DHCP message we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a BOOTP header plus cookie.
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    /// The magic cookie is not 99.130.83.99.
    #[error("bad magic cookie")]
    BadCookie,
    /// `hlen` larger than the 16-byte chaddr field.
    #[error("hardware address length {0} > 16")]
    BadHlen(u8),
    /// An option whose length is impossible for its code.
    #[error("option {code} has invalid length {len}")]
    BadOptionLength {
        /// Option code.
        code: u8,
        /// Its (concatenated) length.
        len: usize,
    },
    /// dhcproto refused the packet.
    #[error("undecodable DHCP message")]
    Undecodable,
}

/// Decode a DHCPv4 message, rejecting anything malformed without panicking.
pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
    if buf.len() < BOOTP_HEADER + 4 {
        return Err(WireError::TooShort(buf.len()));
    }
    if buf[BOOTP_HEADER..BOOTP_HEADER + 4] != MAGIC_COOKIE {
        return Err(WireError::BadCookie);
    }
    if buf[2] > 16 {
        return Err(WireError::BadHlen(buf[2]));
    }
    validate_options(&buf[BOOTP_HEADER + 4..])?;
    // Belt and braces: dhcproto is pure, so a panic inside it cannot leave shared state broken.
    match std::panic::catch_unwind(|| Message::from_bytes(buf)) {
        Ok(Ok(m)) => Ok(m),
        _ => Err(WireError::Undecodable),
    }
}

/// Encode a message to bytes.
pub fn encode(msg: &Message) -> Option<Vec<u8>> {
    msg.to_vec().ok()
}

/// Walk the options the way dhcproto will (consecutive same-code options concatenated, RFC 3396)
/// and reject lengths that its decoder would trip over.
fn validate_options(mut b: &[u8]) -> Result<(), WireError> {
    let mut run: Option<(u8, usize)> = None;
    let check = |code: u8, len: usize| -> Result<(), WireError> {
        let ok = match code {
            80 => len == 0,          // rapid commit
            81 => len >= 3,          // client FQDN: flags, rcode1, rcode2
            94 => len == 3,          // client network interface id
            151 => len >= 1,         // bulk leasequery status code
            152..=155 => len == 4,   // bulk leasequery times
            _ => true,
        };
        if ok { Ok(()) } else { Err(WireError::BadOptionLength { code, len }) }
    };
    while let Some(&code) = b.first() {
        match code {
            0 => {
                b = &b[1..];
                continue;
            }
            255 => break,
            _ => {}
        }
        let Some(&len) = b.get(1) else { break };
        let len = len as usize;
        if b.len() < 2 + len {
            // Truncated option: dhcproto stops parsing here; nothing after it is read.
            break;
        }
        run = match run {
            Some((c, l)) if c == code => Some((c, l + len)),
            Some((c, l)) => {
                check(c, l)?;
                Some((code, len))
            }
            None => Some((code, len)),
        };
        b = &b[2 + len..];
    }
    if let Some((c, l)) = run {
        check(c, l)?;
    }
    Ok(())
}

/// The client hardware address: the first `hlen` bytes of chaddr (hlen already validated ≤ 16).
pub fn chaddr(msg: &Message) -> Vec<u8> {
    msg.chaddr().to_vec()
}

/// True when `a` is 0.0.0.0.
pub fn unset(a: Ipv4Addr) -> bool {
    a.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_HEADER];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b.extend_from_slice(&MAGIC_COOKIE);
        b
    }

    #[test]
    fn short_fqdn_option_is_rejected_not_panicking() {
        let mut b = base();
        b.extend_from_slice(&[53, 1, 1, 81, 1, 0, 255]);
        assert_eq!(decode(&b), Err(WireError::BadOptionLength { code: 81, len: 1 }));
    }

    #[test]
    fn huge_hlen_is_rejected() {
        let mut b = base();
        b[2] = 200;
        b.extend_from_slice(&[53, 1, 1, 255]);
        assert_eq!(decode(&b), Err(WireError::BadHlen(200)));
    }

    #[test]
    fn bad_cookie_and_short() {
        assert_eq!(decode(&[1, 2, 3]), Err(WireError::TooShort(3)));
        let mut b = base();
        b[BOOTP_HEADER] = 0;
        assert_eq!(decode(&b), Err(WireError::BadCookie));
    }

    proptest! {
        #[test]
        fn decode_never_panics(opts in proptest::collection::vec(any::<u8>(), 0..400), hlen in any::<u8>()) {
            let mut b = base();
            b[2] = hlen;
            b.extend_from_slice(&opts);
            if let Ok(m) = decode(&b) {
                let _ = chaddr(&m);
                let _ = encode(&m);
            }
        }

        #[test]
        fn decode_never_panics_structured(
            opts in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20)), 0..12)
        ) {
            let mut b = base();
            for (code, data) in opts {
                b.push(code);
                b.push(data.len() as u8);
                b.extend_from_slice(&data);
            }
            if let Ok(m) = decode(&b) {
                let _ = encode(&m);
            }
        }
    }
}
