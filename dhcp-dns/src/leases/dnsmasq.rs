//! Import of dnsmasq's lease file (`/var/lib/misc/dnsmasq.leases`).
//!
//! Each IPv4 line is `expiry mac ip hostname client-id`: expiry in Unix seconds (0 = infinite),
//! hostname and client-id `*` when absent, client-id as colon-separated hex. DHCPv6 lines (after a
//! `duid` line) are skipped: this server is DHCPv4 only.

use std::net::Ipv4Addr;

use super::{INFINITE, Lease, LeaseState, UnixTime};

/// A line that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ImportError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub reason: String,
}

/// Parse colon-separated hex (`aa:bb:cc`, also `aa-bb-cc`) into bytes.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    s.split([':', '-'])
        .map(|b| if b.len() <= 2 && !b.is_empty() { u8::from_str_radix(b, 16).ok() } else { None })
        .collect()
}

/// Parse a dnsmasq lease file. Good lines become leases (start = `now`); bad lines are reported.
pub fn import(text: &str, domain: Option<&str>, now: UnixTime) -> (Vec<Lease>, Vec<ImportError>) {
    let mut leases = Vec::new();
    let mut errors = Vec::new();
    let mut in_v6 = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f[0] == "duid" {
            in_v6 = true;
            continue;
        }
        if in_v6 {
            continue;
        }
        let err = |reason: &str| ImportError { line: i + 1, reason: reason.to_string() };
        if f.len() < 4 {
            errors.push(err("expected `expiry mac ip hostname [client-id]`"));
            continue;
        }
        let Ok(expiry) = f[0].parse::<u64>() else {
            errors.push(err("expiry is not a number"));
            continue;
        };
        let Some(hw) = parse_hex(f[1]) else {
            errors.push(err("bad hardware address"));
            continue;
        };
        // dnsmasq writes `htype-aa:bb:..` for non-Ethernet; keep only the address bytes.
        let hw = if hw.len() > 16 { hw[hw.len() - 16..].to_vec() } else { hw };
        let Ok(addr) = f[2].parse::<Ipv4Addr>() else {
            errors.push(err("bad IPv4 address"));
            continue;
        };
        let hostname = (f[3] != "*").then(|| f[3].to_ascii_lowercase());
        let client_id = match f.get(4) {
            None | Some(&"*") => None,
            Some(c) => match parse_hex(c) {
                Some(b) => Some(b),
                None => {
                    errors.push(err("bad client-id"));
                    continue;
                }
            },
        };
        let fqdn = match (&hostname, domain) {
            (Some(h), _) if h.contains('.') => Some(h.clone()),
            (Some(h), Some(d)) => Some(format!("{h}.{}", d.trim_end_matches('.'))),
            _ => None,
        };
        let hostname = hostname.map(|h| h.split('.').next().unwrap_or_default().to_string());
        leases.push(Lease {
            addr,
            hwaddr: hw,
            client_id,
            hostname,
            fqdn,
            start: now,
            expiry: if expiry == 0 { INFINITE } else { expiry },
            state: if expiry == 0 || expiry > now { LeaseState::Active } else { LeaseState::Expired },
            rev: super::rev_at(now),
        });
    }
    (leases, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_dnsmasq_lines() {
        let text = "\
1700003600 52:54:00:12:34:56 198.18.0.10 worker-1 01:52:54:00:12:34:56
0 52:54:00:12:34:57 198.18.0.11 * *
1600000000 52:54:00:12:34:58 198.18.0.12 old *
bogus line
1700003600 zz:54 198.18.0.13 x *
duid 00:01:00:01:2c:2f:11:22:52:54:00:00:00:01
1700003600 1234 fd00:198:18::5 v6host 00:01
";
        let (leases, errors) = import(text, Some("cluster.test"), 1_700_000_000);
        assert_eq!(leases.len(), 3);
        assert_eq!(leases[0].addr, Ipv4Addr::new(198, 18, 0, 10));
        assert_eq!(leases[0].hwaddr, vec![0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(leases[0].client_id.as_deref(), Some(&[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56][..]));
        assert_eq!(leases[0].hostname.as_deref(), Some("worker-1"));
        assert_eq!(leases[0].fqdn.as_deref(), Some("worker-1.cluster.test"));
        assert_eq!(leases[1].expiry, INFINITE);
        assert!(leases[1].hostname.is_none() && leases[1].client_id.is_none());
        assert_eq!(leases[2].state, LeaseState::Expired);
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), vec![4, 5]);
    }
}
