//! MAC addresses and the neighbour table (`ip -j neigh show`) of a namespace.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::error::LabError;

/// An Ethernet MAC address, printed as `02:5a:00:00:00:01`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LabError::Parse {
            what: "MAC address",
            detail: format!("{s:?}"),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// One entry of a neighbour (ARP / NDP) table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Interface the entry belongs to.
    pub dev: String,
    /// Link-layer address; None while INCOMPLETE or FAILED.
    pub mac: Option<MacAddr>,
    /// Kernel NUD states, e.g. `["REACHABLE"]` or `["STALE"]`.
    pub state: Vec<String>,
}

impl Neighbour {
    /// True if the entry carries a usable MAC (not INCOMPLETE / FAILED).
    pub fn is_resolved(&self) -> bool {
        self.mac.is_some()
            && !self
                .state
                .iter()
                .any(|s| s == "FAILED" || s == "INCOMPLETE")
    }
}

/// Parses the JSON printed by `ip -j neigh show`.
pub fn parse_neigh_json(json: &str) -> Result<Vec<Neighbour>, LabError> {
    let bad = |detail: String| LabError::Parse {
        what: "ip -j neigh",
        detail,
    };
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let entries = value
        .as_array()
        .ok_or_else(|| bad("not a JSON array".into()))?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let dst = e
            .get("dst")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("entry without dst: {e}")))?;
        let ip: IpAddr = dst.parse().map_err(|_| bad(format!("bad dst {dst:?}")))?;
        let dev = e
            .get("dev")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let mac = match e.get("lladdr").and_then(|v| v.as_str()) {
            Some(s) => Some(s.parse::<MacAddr>()?),
            None => None,
        };
        let state = match e.get("state") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        out.push(Neighbour {
            ip,
            dev,
            mac,
            state,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_rejects_garbage() {
        let m: MacAddr = "02:5a:00:01:00:0a".parse().unwrap();
        assert_eq!(m.0, [2, 0x5a, 0, 1, 0, 10]);
        assert_eq!(m.to_string(), "02:5a:00:01:00:0a");
        for bad in [
            "",
            "02:5a:00:01:00",
            "02:5a:00:01:00:0a:00",
            "02:5a:00:01:00:zz",
            "002:5a:00:01:00:0a",
            "02::00:01:00:0a",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parses_ip_json_neigh() {
        let json = r#"[{"dst":"198.18.0.12","dev":"eth0","lladdr":"02:5a:00:00:00:02","state":["REACHABLE"]},
            {"dst":"198.18.0.99","dev":"eth0","state":["FAILED"]},
            {"dst":"fd00:198:18::12","dev":"eth0","lladdr":"02:5a:00:00:00:02","router":null,"state":["STALE"]}]"#;
        let n = parse_neigh_json(json).unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].ip, "198.18.0.12".parse::<IpAddr>().unwrap());
        assert_eq!(n[0].mac, Some(MacAddr([2, 0x5a, 0, 0, 0, 2])));
        assert!(n[0].is_resolved());
        assert_eq!(n[1].mac, None);
        assert!(!n[1].is_resolved());
        assert_eq!(n[2].state, vec!["STALE".to_string()]);
        assert!(parse_neigh_json("").unwrap().is_empty());
        assert!(parse_neigh_json("{}").is_err());
        assert!(parse_neigh_json(r#"[{"dev":"eth0"}]"#).is_err());
    }
}
