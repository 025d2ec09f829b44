//! Fuzz the DHCPv4 receive path: any datagram into the server core must never panic; a malformed
//! one is dropped and counted, and every reply the core emits must itself decode.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcp_dns::dhcp::{Action, DhcpConfig, DhcpServer, RecvMeta, Reservation, Subnet, wire};
use libfuzzer_sys::fuzz_target;

fn server() -> DhcpServer {
    let sid = Ipv4Addr::new(198, 18, 0, 1);
    let mut s = Subnet::new("198.18.0.0/24".parse().expect("net"), sid);
    s.ranges = vec![(Ipv4Addr::new(198, 18, 0, 100), Ipv4Addr::new(198, 18, 0, 120))];
    s.routers = vec![sid];
    s.classless_routes = vec![("198.19.0.0/16".parse().expect("net"), sid)];
    s.options = vec![(224, vec![1, 2, 3])];
    DhcpServer::new(DhcpConfig {
        domain: Some("cluster.test".into()),
        subnets: vec![s],
        reservations: vec![Reservation {
            hwaddr: Some(vec![0x52, 0x54, 0, 0, 0, 1]),
            client_id: None,
            addr: Ipv4Addr::new(198, 18, 0, 50),
            hostname: Some("fixed".into()),
            lease_secs: None,
        }],
        ..DhcpConfig::default()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = server();
    let meta = RecvMeta { src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68), local_addr: Some(Ipv4Addr::new(198, 18, 0, 1)) };
    // Twice, so a DISCOVER-then-REQUEST-shaped input exercises state.
    for now in [1_700_000_000u64, 1_700_000_001] {
        for a in s.handle_packet(now, data, meta) {
            let reply = match a {
                Action::Reply(r) => Some(r),
                Action::PersistLease { reply, .. } => reply,
                Action::Probe { reply, .. } => Some(reply),
                Action::LeaseChanged(_) => None,
            };
            if let Some(r) = reply {
                assert!(wire::decode(&r.packet).is_ok(), "the server's own reply must decode");
            }
        }
    }
    let _ = s.handle_timeout(1_700_100_000);
    let c = s.counters();
    assert!(c.malformed <= c.received);
});
