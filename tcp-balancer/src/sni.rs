//! The server name (SNI) of a TLS ClientHello, read without terminating TLS: the building block
//! of TLS passthrough with routing by SNI in tcp mode (`[[balancer.frontend.route]] sni = ...`).
//!
//! Parsing is incremental and bounded: [`client_hello_sni`] says when it needs more bytes, and
//! a ClientHello may span several TLS records (large post-quantum key shares do that).

use thiserror::Error;

/// Largest ClientHello accepted (handshake message, all records together).
pub const MAX_HELLO: usize = 16 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// Not enough bytes yet.
    NeedMore,
    /// A ClientHello without a server name.
    Absent,
    /// A ClientHello naming this host (ASCII lowercased).
    Name(String),
}

/// Why the bytes are not a usable ClientHello.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SniError {
    /// The first record is not a TLS handshake record: not TLS.
    #[error("not a TLS handshake")]
    NotTls,
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is not a ClientHello")]
    NotClientHello,
    /// The ClientHello is larger than [`MAX_HELLO`].
    #[error("ClientHello too large")]
    TooLarge,
    /// The ClientHello is malformed.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Reads the SNI from the start of a client's byte stream.
pub fn client_hello_sni(buf: &[u8]) -> Result<Sni, SniError> {
    // Gather the handshake bytes from consecutive handshake records.
    let mut hs: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut need: Option<usize> = None;
    loop {
        if need.is_some_and(|n| hs.len() >= n) {
            break;
        }
        let Some(hdr) = buf.get(pos..pos + 5) else {
            return if buf.len() > pos || pos == 0 { check_prefix(&buf[pos..]).map(|_| Sni::NeedMore) } else { Ok(Sni::NeedMore) };
        };
        if hdr[0] != 0x16 || hdr[1] != 3 {
            return Err(SniError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 {
            return Err(SniError::Malformed("empty record"));
        }
        let Some(frag) = buf.get(pos + 5..pos + 5 + len) else {
            return Ok(Sni::NeedMore);
        };
        hs.extend_from_slice(frag);
        pos += 5 + len;
        if need.is_none() && hs.len() >= 4 {
            if hs[0] != 1 {
                return Err(SniError::NotClientHello);
            }
            let n = 4 + (usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]));
            if n > MAX_HELLO {
                return Err(SniError::TooLarge);
            }
            need = Some(n);
        }
        if hs.len() > MAX_HELLO + 5 {
            return Err(SniError::TooLarge);
        }
    }
    let n = need.unwrap_or(hs.len());
    parse_hello(&hs[4..n])
}

/// A partial first record header must still look like TLS, so a plain-text client is refused
/// at once instead of waiting for five bytes.
fn check_prefix(b: &[u8]) -> Result<(), SniError> {
    match b {
        [] => Ok(()),
        [0x16] | [0x16, 3, ..] => Ok(()),
        _ => Err(SniError::NotTls),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SniError> {
        if self.0.len() < n {
            return Err(SniError::Malformed("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<usize, SniError> {
        Ok(usize::from(self.take(1)?[0]))
    }
    fn u16(&mut self) -> Result<usize, SniError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

fn parse_hello(body: &[u8]) -> Result<Sni, SniError> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.0.is_empty() {
        return Ok(Sni::Absent); // no extensions at all
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut d = Reader(data);
        let list_len = d.u16()?;
        let mut list = Reader(d.take(list_len)?);
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let n = list.u16()?;
            let name = list.take(n)?;
            if kind == 0 {
                if name.is_empty() || name.len() > 255 || !name.iter().all(|&c| c.is_ascii_graphic()) {
                    return Err(SniError::Malformed("server name"));
                }
                return Ok(Sni::Name(String::from_utf8_lossy(name).to_ascii_lowercase()));
            }
        }
        return Ok(Sni::Absent);
    }
    Ok(Sni::Absent)
}

/// Whether a route's `sni` pattern matches a name: exact (case-insensitive) or `*.suffix`
/// matching any name strictly below `suffix`.
pub fn sni_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::client_hello;
    use proptest::prelude::*;

    #[test]
    fn reads_the_name_and_needs_more_until_complete() {
        let h = client_hello(Some("Api.Cluster.Local"));
        assert_eq!(client_hello_sni(&h), Ok(Sni::Name("api.cluster.local".into())));
        for cut in 0..h.len() {
            assert_eq!(client_hello_sni(&h[..cut]), Ok(Sni::NeedMore), "cut {cut}");
        }
        assert_eq!(client_hello_sni(&client_hello(None)), Ok(Sni::Absent));
    }

    #[test]
    fn hello_split_over_two_records() {
        let h = client_hello(Some("etcd.test"));
        let hs = &h[5..];
        let (a, b) = hs.split_at(40);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 3, 1]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(client_hello_sni(&two), Ok(Sni::Name("etcd.test".into())));
        assert_eq!(client_hello_sni(&two[..50]), Ok(Sni::NeedMore));
    }

    #[test]
    fn refuses_non_tls_at_once() {
        assert_eq!(client_hello_sni(b"G"), Err(SniError::NotTls));
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Err(SniError::NotTls));
        assert_eq!(client_hello_sni(b"PROXY TCP4"), Err(SniError::NotTls));
        // A ServerHello (type 2) is no ClientHello.
        let mut h = client_hello(None);
        h[5] = 2;
        assert_eq!(client_hello_sni(&h), Err(SniError::NotClientHello));
    }

    #[test]
    fn wildcard_patterns() {
        assert!(sni_matches("*.apps.example.com", "web.apps.example.com"));
        assert!(sni_matches("*.apps.example.com", "A.B.apps.EXAMPLE.com"));
        assert!(!sni_matches("*.apps.example.com", "apps.example.com"));
        assert!(!sni_matches("*.apps.example.com", "xapps.example.com"));
        assert!(sni_matches("kubernetes", "KUBERNETES"));
        assert!(!sni_matches("kubernetes", "kubernetes.default"));
    }

    proptest! {
        #[test]
        fn any_name_round_trips(name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}") {
            prop_assume!(name.parse::<std::net::IpAddr>().is_err());
            let h = client_hello(Some(&name));
            prop_assert_eq!(client_hello_sni(&h), Ok(Sni::Name(name)));
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600), tls in any::<bool>()) {
            let mut b = if tls { vec![0x16, 3, 1, (bytes.len() >> 8) as u8, bytes.len() as u8, 1] } else { vec![] };
            b.extend_from_slice(&bytes);
            let _ = client_hello_sni(&b);
        }
    }
}
