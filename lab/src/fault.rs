//! Fault injection as nftables rules inside the namespaces.
//!
//! Every fault becomes "drop at the receiver": a rule in the receiving host's own table
//! `table netdev hslab`, in a chain on the ingress hook of its lab interfaces, matching the sender by
//! its source MAC. Matching MACs rather than IPs also catches traffic to and from addresses the test
//! adds later (a VIP) and ARP/NDP, so a partition is a real L2 cut. There is no netem on the test
//! kernels, so loss is `numgen random mod 100 < pct` (the kernel's own PRNG; not seedable).
//!
//! The lab keeps the list of active faults and renders each host's whole table from it; a change
//! is loaded with one `nft -f` transaction per affected host (delete table + recreate = atomic).

use std::fmt::Write;

use super::host::HostId;
use super::neigh::MacAddr;

/// One active fault, as requested by the test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Nothing passes between `from` and `to` in the direction from → to.
    OneWay { from: HostId, to: HostId },
    /// The host hears nobody and nobody hears it.
    Isolate(HostId),
    /// `pct` % of frames from → to are dropped, only UDP to `udp_port` if given.
    Loss {
        from: HostId,
        to: HostId,
        pct: u8,
        udp_port: Option<u16>,
    },
}

impl Fault {
    /// True if the fault is between exactly hosts `a` and `b` (either direction).
    pub(crate) fn between(&self, a: HostId, b: HostId) -> bool {
        match *self {
            Fault::OneWay { from, to } | Fault::Loss { from, to, .. } => {
                (from == a && to == b) || (from == b && to == a)
            }
            Fault::Isolate(_) => false,
        }
    }

    /// True if the fault concerns host `h` at all.
    pub(crate) fn involves(&self, h: HostId) -> bool {
        match *self {
            Fault::OneWay { from, to } | Fault::Loss { from, to, .. } => from == h || to == h,
            Fault::Isolate(x) => x == h,
        }
    }
}

/// One drop rule on a host's ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Sender whose frames match; None = every frame.
    pub from: Option<HostId>,
    /// Share dropped, 1..=100.
    pub pct: u8,
    /// Only UDP datagrams to this port.
    pub udp_port: Option<u16>,
}

/// The drop rules host `me` must apply, given every host of the lab and the active faults.
pub(crate) fn rules_for(me: HostId, hosts: &[HostId], faults: &[Fault]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for f in faults {
        match *f {
            Fault::OneWay { from, to } if to == me && from != me => rules.push(Rule {
                from: Some(from),
                pct: 100,
                udp_port: None,
            }),
            Fault::Loss {
                from,
                to,
                pct,
                udp_port,
            } if to == me && from != me && pct > 0 => rules.push(Rule {
                from: Some(from),
                pct: pct.min(100),
                udp_port,
            }),
            Fault::Isolate(x) if x == me => rules.push(Rule {
                from: None,
                pct: 100,
                udp_port: None,
            }),
            Fault::Isolate(x) if hosts.contains(&x) => rules.push(Rule {
                from: Some(x),
                pct: 100,
                udp_port: None,
            }),
            _ => {}
        }
    }
    rules.dedup();
    rules
}

/// Table name used in every namespace.
pub(crate) const TABLE: &str = "hslab";

/// The `nft -f` script that makes host's table hold exactly `rules` (and removes it if empty).
pub(crate) fn render(
    devices: &[String],
    rules: &[Rule],
    macs_of: impl Fn(HostId) -> Vec<MacAddr>,
) -> String {
    // "table" first creates it if missing, so "delete" cannot fail; both run in one transaction.
    let mut s = format!("table netdev {TABLE}\ndelete table netdev {TABLE}\n");
    if rules.is_empty() || devices.is_empty() {
        return s;
    }
    let _ = writeln!(s, "table netdev {TABLE} {{");
    let _ = writeln!(s, "  chain ingress {{");
    let _ = writeln!(
        s,
        "    type filter hook ingress devices = {{ {} }} priority -500; policy accept;",
        devices.join(", ")
    );
    for r in rules {
        let mut line = String::from("    ");
        if let Some(h) = r.from {
            let macs: Vec<String> = macs_of(h).iter().map(|m| m.to_string()).collect();
            if macs.is_empty() {
                continue;
            }
            let _ = write!(line, "ether saddr {{ {} }} ", macs.join(", "));
        }
        if let Some(port) = r.udp_port {
            let _ = write!(line, "udp dport {port} ");
        }
        if r.pct < 100 {
            let _ = write!(line, "numgen random mod 100 < {} ", r.pct);
        }
        line.push_str("drop");
        let _ = writeln!(s, "{line}");
    }
    s.push_str("  }\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HostId = HostId::Node(1);
    const B: HostId = HostId::Node(2);
    const C: HostId = HostId::Node(3);
    const ALL: &[HostId] = &[A, B, C];

    fn macs(h: HostId) -> Vec<MacAddr> {
        match h {
            HostId::Node(i) => vec![MacAddr([2, 0x5a, 0, 0, 0, i as u8])],
            HostId::Client(_) => vec![],
        }
    }

    #[test]
    fn one_way_drops_only_at_receiver() {
        let f = [Fault::OneWay { from: A, to: B }];
        assert!(rules_for(A, ALL, &f).is_empty());
        assert_eq!(
            rules_for(B, ALL, &f),
            vec![Rule {
                from: Some(A),
                pct: 100,
                udp_port: None
            }]
        );
        assert!(rules_for(C, ALL, &f).is_empty());
    }

    #[test]
    fn isolate_drops_everything_at_host_and_its_frames_elsewhere() {
        let f = [Fault::Isolate(C)];
        assert_eq!(
            rules_for(C, ALL, &f),
            vec![Rule {
                from: None,
                pct: 100,
                udp_port: None
            }]
        );
        assert_eq!(
            rules_for(A, ALL, &f),
            vec![Rule {
                from: Some(C),
                pct: 100,
                udp_port: None
            }]
        );
    }

    #[test]
    fn loss_zero_is_no_rule_and_pair_matching_is_symmetric() {
        let f = Fault::Loss {
            from: A,
            to: B,
            pct: 0,
            udp_port: None,
        };
        assert!(rules_for(B, ALL, std::slice::from_ref(&f)).is_empty());
        assert!(f.between(B, A) && f.between(A, B) && !f.between(A, C));
        assert!(f.involves(A) && !f.involves(C));
        assert!(!Fault::Isolate(A).between(A, B));
    }

    #[test]
    fn render_empty_deletes_table() {
        let s = render(&["eth0".into()], &[], macs);
        assert_eq!(s, "table netdev hslab\ndelete table netdev hslab\n");
    }

    #[test]
    fn render_rules() {
        let rules = [
            Rule {
                from: Some(A),
                pct: 100,
                udp_port: None,
            },
            Rule {
                from: Some(B),
                pct: 30,
                udp_port: Some(5405),
            },
            Rule {
                from: None,
                pct: 100,
                udp_port: None,
            },
        ];
        let s = render(&["eth0".into(), "eth1".into()], &rules, macs);
        assert!(s.contains("devices = { eth0, eth1 }"), "{s}");
        assert!(
            s.contains("    ether saddr { 02:5a:00:00:00:01 } drop\n"),
            "{s}"
        );
        assert!(s.contains("    ether saddr { 02:5a:00:00:00:02 } udp dport 5405 numgen random mod 100 < 30 drop\n"), "{s}");
        assert!(s.contains("\n    drop\n"), "{s}");
    }
}
