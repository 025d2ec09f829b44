//! Value types shared by every config section, each with an error message that tells the operator
//! what to write instead: human durations, addresses with a prefix length, socket addresses,
//! MAC addresses, IPv4 ranges and hex byte strings.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Implements `Deserialize` (from a TOML string, through `FromStr`) and `Serialize` (through
/// `Display`) for a value type; `$expecting` completes "expected ...".
macro_rules! string_serde {
    ($ty:ty, $expecting:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(FromStrVisitor::<$ty>(PhantomData, $expecting))
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

struct FromStrVisitor<T>(PhantomData<T>, &'static str);

impl<T: FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Err(E::custom(format!(
            "expected {}, found the number {v} (write it as a quoted string)",
            self.1
        )))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_i64(v as i64)
    }
}

/// A duration written the human way: `"10ms"`, `"3s"`, `"1m"`, `"1h 30m"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub std::time::Duration);

impl HumanDuration {
    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    /// The std duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// True for a zero duration (often "disabled").
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<HumanDuration> for std::time::Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "duration \"{s}\" has no unit: write \"{t}s\" or \"{t}ms\""
            ));
        }
        humantime::parse_duration(t)
            .map(Self)
            .map_err(|e| format!("invalid duration \"{s}\" ({e}): write a number and a unit, like \"500ms\", \"3s\" or \"1m\""))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

string_serde!(HumanDuration, "a duration like \"500ms\", \"3s\" or \"1m\"");

/// An IP address with a prefix length, `198.18.0.11/24` or `fd00:198:18::11/64`: an interface
/// address (host bits set) or a subnet (host bits zero; see [`Cidr::is_network`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub IpNet);

impl Cidr {
    /// The address part.
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// The subnet this address is in (host bits cleared).
    pub fn network(&self) -> IpNet {
        self.0.trunc()
    }

    /// True when the host bits are zero (a subnet, not an interface address).
    pub fn is_network(&self) -> bool {
        self.0.trunc() == self.0
    }

    /// True when `ip` is inside this address's subnet.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }

    /// True for an IPv4 address.
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !t.contains('/') {
            let example = match t.parse::<IpAddr>() {
                Ok(IpAddr::V4(_)) => format!("{t}/24"),
                Ok(IpAddr::V6(_)) => format!("{t}/64"),
                Err(_) => {
                    return Err(format!(
                        "\"{s}\" is not an IP address with a prefix length, like 198.18.0.11/24"
                    ));
                }
            };
            return Err(format!(
                "\"{s}\" has no prefix length: write it like {example}"
            ));
        }
        t.parse::<IpNet>()
            .map(Self)
            .map_err(|_| format!("\"{s}\" is not an IP address with a prefix length, like 198.18.0.11/24 or fd00:198:18::11/64"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_serde!(
    Cidr,
    "an IP address with a prefix length, like \"198.18.0.11/24\""
);

/// An IP address and port that must both be given: `198.18.0.100:6443`, `[fd00:198:18::100]:6443`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddr(pub SocketAddr);

impl SockAddr {
    /// The std socket address.
    pub fn get(&self) -> SocketAddr {
        self.0
    }
}

impl FromStr for SockAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match HostPort::from_str(s)? {
            HostPort {
                ip,
                port: Some(port),
            } => Ok(Self(SocketAddr::new(ip, port))),
            HostPort { ip, port: None } => Err(format!(
                "\"{s}\" has no port: write it like {}",
                HostPort::example(ip)
            )),
        }
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_serde!(
    SockAddr,
    "an address and port, like \"198.18.0.100:6443\" or \"[fd00:198:18::100]:6443\""
);

/// An IP address with an optional port: `198.18.0.21:6443`, `198.18.0.21`, `[fd00::1]:53`,
/// `fd00::1`. Sections decide whether a missing port is a default or a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// The address.
    pub ip: IpAddr,
    /// The port, if one was written.
    pub port: Option<u16>,
}

impl HostPort {
    /// The socket address, using `default_port` when none was written.
    pub fn with_default_port(&self, default_port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(default_port))
    }

    /// The socket address, if a port was written.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.port.map(|p| SocketAddr::new(self.ip, p))
    }

    fn example(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => format!("{v4}:PORT"),
            IpAddr::V6(v6) => format!("[{v6}]:PORT"),
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(sa) = t.parse::<SocketAddr>() {
            return Ok(Self {
                ip: sa.ip(),
                port: Some(sa.port()),
            });
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Self { ip, port: None });
        }
        if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
            && let Ok(ip) = inner.parse::<IpAddr>()
        {
            return Ok(Self { ip, port: None });
        }
        if let Some((host, port)) = t.rsplit_once(':') {
            if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
                return Err(format!("\"{s}\" has an invalid port \"{port}\" (1-65535)"));
            }
            if host.contains(':') {
                return Err(format!(
                    "\"{s}\": write an IPv6 address with a port in brackets, like [fd00:198:18::1]:{port}"
                ));
            }
            return Err(format!(
                "\"{s}\" is not an IP address (host names are not resolved): write it like 198.18.0.21:{port}"
            ));
        }
        Err(format!(
            "\"{s}\" is not an IP address (host names are not resolved)"
        ))
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, Some(port)) => SocketAddr::new(ip, port).fmt(f),
            (ip, None) => ip.fmt(f),
        }
    }
}

string_serde!(
    HostPort,
    "an IP address with an optional port, like \"198.18.0.21:6443\""
);

/// A MAC address, `52:54:00:12:34:56` (`-` separators accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not a MAC address, like 52:54:00:12:34:56");
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

string_serde!(MacAddr, "a MAC address like \"52:54:00:12:34:56\"");

/// Bytes written in hex, `01:52:54:00:12:34:56` or `0152540012`: DHCP client ids and raw options.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexBytes(pub Vec<u8>);

impl FromStr for HexBytes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let digits: String = s
            .trim()
            .chars()
            .filter(|c| *c != ':' && *c != '-')
            .collect();
        if digits.is_empty()
            || !digits.len().is_multiple_of(2)
            || !digits.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(format!(
                "\"{s}\" is not hex bytes, like \"01:52:54:00:12:34:56\""
            ));
        }
        let bytes = (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

string_serde!(HexBytes, "hex bytes like \"01:52:54:00:12:34:56\"");

/// An inclusive range of IPv4 addresses, `198.18.0.50-198.18.0.99`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Range {
    /// First address of the range.
    pub start: Ipv4Addr,
    /// Last address of the range (inclusive).
    pub end: Ipv4Addr,
}

impl Ipv4Range {
    /// How many addresses the range holds.
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1
    }

    /// Never true: a range holds at least its start.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }

    /// True when the two ranges share an address.
    pub fn overlaps(&self, other: &Ipv4Range) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl FromStr for Ipv4Range {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((a, b)) = s.split_once('-') else {
            return Err(format!(
                "\"{s}\" is not an address range: write it like 198.18.0.50-198.18.0.99"
            ));
        };
        let parse = |x: &str| {
            x.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("\"{}\" in range \"{s}\" is not an IPv4 address", x.trim()))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if start > end {
            return Err(format!("range \"{s}\" starts after it ends"));
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

string_serde!(
    Ipv4Range,
    "an address range like \"198.18.0.50-198.18.0.99\""
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_the_human_way_and_explain_mistakes() {
        assert_eq!(
            "10ms".parse::<HumanDuration>().unwrap(),
            HumanDuration::from_millis(10)
        );
        assert_eq!(
            "3s".parse::<HumanDuration>().unwrap(),
            HumanDuration::from_secs(3)
        );
        assert_eq!(
            "1m".parse::<HumanDuration>().unwrap(),
            HumanDuration::from_secs(60)
        );
        assert_eq!(
            "1h 30m".parse::<HumanDuration>().unwrap(),
            HumanDuration::from_secs(5400)
        );
        assert_eq!(
            "5".parse::<HumanDuration>().unwrap_err(),
            "duration \"5\" has no unit: write \"5s\" or \"5ms\""
        );
        assert!(
            "fast"
                .parse::<HumanDuration>()
                .unwrap_err()
                .contains("like \"500ms\"")
        );
        assert_eq!(HumanDuration::default().to_string(), "0s");
    }

    #[test]
    fn addresses_explain_what_is_missing() {
        assert_eq!(
            "198.18.0.11".parse::<Cidr>().unwrap_err(),
            "\"198.18.0.11\" has no prefix length: write it like 198.18.0.11/24"
        );
        assert!(
            "198.18.0.11/24"
                .parse::<Cidr>()
                .unwrap()
                .contains(&"198.18.0.200".parse().unwrap())
        );
        assert!(!"198.18.0.11/24".parse::<Cidr>().unwrap().is_network());
        assert_eq!(
            "198.18.0.21".parse::<SockAddr>().unwrap_err(),
            "\"198.18.0.21\" has no port: write it like 198.18.0.21:PORT"
        );
        assert_eq!("[fd00::1]:53".parse::<SockAddr>().unwrap().0.port(), 53);
        assert!("fd00::1:53".parse::<HostPort>().unwrap().port.is_none()); // a valid IPv6 address
        assert!(
            "api.lab:6443"
                .parse::<HostPort>()
                .unwrap_err()
                .contains("host names are not resolved")
        );
        assert!(
            "198.18.0.1:99999"
                .parse::<HostPort>()
                .unwrap_err()
                .contains("invalid port")
        );
        assert_eq!(
            "198.18.0.21"
                .parse::<HostPort>()
                .unwrap()
                .with_default_port(53)
                .port(),
            53
        );
    }

    #[test]
    fn macs_hex_and_ranges() {
        assert_eq!(
            "52-54-00-AA-bb-01".parse::<MacAddr>().unwrap().to_string(),
            "52:54:00:aa:bb:01"
        );
        assert!("52:54:00:aa:bb".parse::<MacAddr>().is_err());
        assert_eq!("0102ff".parse::<HexBytes>().unwrap().0, vec![1, 2, 255]);
        assert!("012".parse::<HexBytes>().is_err());
        let r: Ipv4Range = "198.18.0.50 - 198.18.0.99".parse().unwrap();
        assert_eq!(r.len(), 50);
        assert!(
            "198.18.0.99-198.18.0.50"
                .parse::<Ipv4Range>()
                .unwrap_err()
                .contains("starts after it ends")
        );
    }

    #[test]
    fn integers_are_refused_with_a_hint() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            d: HumanDuration,
        }
        let e = toml::from_str::<T>("d = 5").unwrap_err();
        assert!(
            e.message().contains("found the number 5"),
            "{}",
            e.message()
        );
    }

    proptest! {
        #[test]
        fn duration_round_trips_through_its_text(ms in 0u64..10_000_000_000u64, ns in 0u32..1_000_000u32) {
            let d = HumanDuration(std::time::Duration::from_millis(ms) + std::time::Duration::from_nanos(u64::from(ns)));
            let text = d.to_string();
            prop_assert_eq!(text.parse::<HumanDuration>().unwrap(), d, "text {}", text);
        }

        #[test]
        fn cidr_round_trips(a in any::<u32>(), p in 0u8..=32) {
            let c = Cidr(IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(a), p).unwrap()));
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        }

        #[test]
        fn host_port_round_trips(a in any::<u128>(), port in proptest::option::of(any::<u16>())) {
            let hp = HostPort { ip: IpAddr::V6(a.into()), port };
            prop_assert_eq!(hp.to_string().parse::<HostPort>().unwrap(), hp);
        }

        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = s.parse::<HumanDuration>();
            let _ = s.parse::<Cidr>();
            let _ = s.parse::<HostPort>();
            let _ = s.parse::<MacAddr>();
            let _ = s.parse::<HexBytes>();
            let _ = s.parse::<Ipv4Range>();
        }
    }
}
