//! `/etc/hosts`-format files: `address name [alias...]`, `#` starts a comment.

use std::net::IpAddr;

/// One usable hosts line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    /// The address.
    pub addr: IpAddr,
    /// Canonical name first, then aliases (lowercase, no trailing dot).
    pub names: Vec<String>,
}

/// A line that was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct HostsError {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: &'static str,
}

/// Parse a hosts file; bad lines are reported and skipped, never fatal.
pub fn parse(text: &str) -> (Vec<HostsEntry>, Vec<HostsError>) {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut f = line.split_ascii_whitespace();
        let Some(a) = f.next() else { continue };
        // Link-local v6 with a zone id (fe80::1%eth0) cannot be served: skip it.
        let Ok(addr) = a.parse::<IpAddr>() else {
            errs.push(HostsError { line: i + 1, reason: "not an IP address" });
            continue;
        };
        let names: Vec<String> = f
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .filter(|n| valid_name(n))
            .collect();
        if names.is_empty() {
            errs.push(HostsError { line: i + 1, reason: "no valid host name" });
            continue;
        }
        out.push(HostsEntry { addr, names });
    }
    (out, errs)
}

/// Letters, digits, hyphen, underscore, dots between non-empty labels of ≤ 63 bytes.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_lines() {
        let (e, errs) = parse(
            "# comment\n127.0.0.1 localhost\n198.18.0.5  API.Cluster.test api  # the api\n\
             fd00:198:18::5 api6\nnot-an-ip foo\n198.18.0.6 bad..name\n\n",
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].names, vec!["api.cluster.test".to_string(), "api".to_string()]);
        assert_eq!(e[2].addr, "fd00:198:18::5".parse::<IpAddr>().unwrap());
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), vec![5, 6]);
    }
}
