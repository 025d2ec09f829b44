//! Unit tests of the DHCP core, one per client state / transition (RFC 2131 §4.3).

use super::*;
use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
use dhcproto::{Decodable, Encodable};

const T0: UnixTime = 1_700_000_000;
const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xb];
const SID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn subnet() -> Subnet {
    let mut s = Subnet::new(net("198.18.0.0/24"), SID);
    s.ranges = vec![(Ipv4Addr::new(198, 18, 0, 100), Ipv4Addr::new(198, 18, 0, 109))];
    s.routers = vec![SID];
    s.dns_servers = vec![SID];
    s.ntp_servers = vec![Ipv4Addr::new(198, 18, 0, 2)];
    s.mtu = Some(1450);
    s.lease_secs = 3600;
    s.classless_routes = vec![(net("198.19.0.0/16"), Ipv4Addr::new(198, 18, 0, 3))];
    s.options = vec![(224, b"hello".to_vec())];
    s
}

fn relayed_subnet() -> Subnet {
    let mut s = Subnet::new(net("198.19.5.0/24"), Ipv4Addr::new(198, 19, 5, 1));
    s.ranges = vec![(Ipv4Addr::new(198, 19, 5, 50), Ipv4Addr::new(198, 19, 5, 59))];
    s
}

fn cfg() -> DhcpConfig {
    DhcpConfig {
        authoritative: true,
        domain: Some("cluster.test".into()),
        subnets: vec![subnet(), relayed_subnet()],
        reservations: vec![
            Reservation {
                hwaddr: Some(vec![0x52, 0x54, 0, 0, 0, 0xee]),
                client_id: None,
                addr: Ipv4Addr::new(198, 18, 0, 50),
                hostname: Some("gateway-reserved".into()),
                lease_secs: None,
            },
            Reservation {
                hwaddr: None,
                client_id: Some(vec![0xff, 1, 2, 3]),
                addr: Ipv4Addr::new(198, 18, 0, 51),
                hostname: None,
                lease_secs: Some(120),
            },
        ],
        offer_hold_secs: 30,
        decline_quarantine_secs: 600,
        conflict_check: false,
        expired_retention_secs: 86_400,
    }
}

fn direct() -> RecvMeta {
    RecvMeta { src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT), local_addr: Some(SID) }
}

fn msg(mt: MessageType, mac: &[u8]) -> Message {
    let mut m = Message::new_with_id(0x1234, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, mac);
    m.opts_mut().insert(DhcpOption::MessageType(mt));
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

fn replies(actions: &[Action]) -> Vec<(ReplyTarget, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(r) => Some(r.clone()),
            Action::PersistLease { reply: Some(r), .. } => Some(r.clone()),
            Action::Probe { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .map(|r| (r.to.clone(), Message::from_bytes(&r.packet).unwrap()))
        .collect()
}

fn one_reply(actions: &[Action]) -> (ReplyTarget, Message) {
    let r = replies(actions);
    assert_eq!(r.len(), 1, "expected one reply in {actions:?}");
    r.into_iter().next().unwrap()
}

fn mtype(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

fn changes(actions: &[Action]) -> Vec<LeaseChange> {
    actions.iter().filter_map(|a| if let Action::LeaseChanged(c) = a { Some(c.clone()) } else { None }).collect()
}

/// Run DISCOVER + REQUEST (selecting) for `mac`; returns the address.
fn dora(s: &mut DhcpServer, now: UnixTime, mac: &[u8], host: Option<&str>) -> Ipv4Addr {
    let mut d = msg(MessageType::Discover, mac);
    if let Some(h) = host {
        d.opts_mut().insert(DhcpOption::Hostname(h.into()));
    }
    let (_, offer) = one_reply(&s.handle_packet(now, &bytes(&d), direct()));
    assert_eq!(mtype(&offer), MessageType::Offer);
    let mut r = msg(MessageType::Request, mac);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    if let Some(h) = host {
        r.opts_mut().insert(DhcpOption::Hostname(h.into()));
    }
    let acts = s.handle_packet(now, &bytes(&r), direct());
    let (_, ack) = one_reply(&acts);
    assert_eq!(mtype(&ack), MessageType::Ack);
    ack.yiaddr()
}

#[test]
fn selecting_discover_offer_request_ack() {
    let mut s = DhcpServer::new(cfg());
    let mut d = msg(MessageType::Discover, &MAC_A);
    d.opts_mut().insert(DhcpOption::Hostname("Worker_1.example".into()));
    let acts = s.handle_packet(T0, &bytes(&d), direct());
    let (to, offer) = one_reply(&acts);
    assert_eq!(mtype(&offer), MessageType::Offer);
    let a = offer.yiaddr();
    assert!(subnet().in_pool(a));
    // No broadcast bit, no ciaddr: unicast to yiaddr at chaddr without ARP.
    assert_eq!(to, ReplyTarget::Hardware { ip: a, hwaddr: MAC_A.to_vec() });
    assert_eq!(offer.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(3600)));
    assert_eq!(offer.opts().get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(offer.opts().get(OptionCode::Rebinding), Some(&DhcpOption::Rebinding(3150)));
    assert_eq!(offer.opts().get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(SID)));
    assert!(!acts.iter().any(|a| matches!(a, Action::PersistLease { .. })), "an offer is not persisted");

    let mut r = msg(MessageType::Request, &MAC_A);
    r.set_flags(Flags::default().set_broadcast());
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    r.opts_mut().insert(DhcpOption::Hostname("Worker_1.example".into()));
    let acts = s.handle_packet(T0 + 1, &bytes(&r), direct());
    // The ACK rides on the PersistLease: it is sent only once the lease is durable.
    let Some(Action::PersistLease { record: LogRecord::Upsert(l), reply: Some(reply) }) = acts.last() else {
        panic!("expected PersistLease with reply, got {acts:?}");
    };
    assert_eq!(reply.to, ReplyTarget::Broadcast);
    assert_eq!(l.addr, a);
    assert_eq!(l.hostname.as_deref(), Some("worker-1"));
    assert_eq!(l.fqdn.as_deref(), Some("worker-1.cluster.test"));
    assert_eq!(l.expiry, T0 + 1 + 3600);
    assert_eq!(changes(&acts), vec![LeaseChange { addr: a, old_name: None, new_name: Some("worker-1.cluster.test".into()) }]);
    assert_eq!(s.counters().acks, 1);
}

#[test]
fn selecting_another_server_releases_our_offer() {
    let mut s = DhcpServer::new(cfg());
    let d = msg(MessageType::Discover, &MAC_A);
    let (_, offer) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    let mut r = msg(MessageType::Request, &MAC_A);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(198, 18, 0, 254)));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    assert!(s.handle_packet(T0, &bytes(&r), direct()).is_empty());
    assert_eq!(s.counters().other_server, 1);
    // The held address is free again for another client asking for it.
    let mut d = msg(MessageType::Discover, &MAC_B);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    let (_, offer_b) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    assert_eq!(offer_b.yiaddr(), offer.yiaddr());
}

#[test]
fn offer_is_held_for_its_client_then_lapses() {
    let mut s = DhcpServer::new(cfg());
    let (_, oa) = one_reply(&s.handle_packet(T0, &bytes(&msg(MessageType::Discover, &MAC_A)), direct()));
    let mut d = msg(MessageType::Discover, &MAC_B);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(oa.yiaddr()));
    let (_, ob) = one_reply(&s.handle_packet(T0 + 1, &bytes(&d), direct()));
    assert_ne!(oa.yiaddr(), ob.yiaddr(), "held offer not given to another client");
    // A's repeated DISCOVER gets the same offer.
    let (_, oa2) = one_reply(&s.handle_packet(T0 + 2, &bytes(&msg(MessageType::Discover, &MAC_A)), direct()));
    assert_eq!(oa.yiaddr(), oa2.yiaddr());
    s.handle_timeout(T0 + 100);
    let mut d = msg(MessageType::Discover, &[9, 9, 9, 9, 9, 9]);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(oa.yiaddr()));
    let (_, oc) = one_reply(&s.handle_packet(T0 + 100, &bytes(&d), direct()));
    assert_eq!(oc.yiaddr(), oa.yiaddr(), "after the hold the address is free");
}

#[test]
fn selecting_request_for_someone_elses_address_is_naked() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, None);
    let mut r = msg(MessageType::Request, &MAC_B);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    let (to, nak) = one_reply(&s.handle_packet(T0, &bytes(&r), direct()));
    assert_eq!(mtype(&nak), MessageType::Nak);
    assert_eq!(to, ReplyTarget::Broadcast);
    assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
}

fn init_reboot(mac: &[u8], addr: Ipv4Addr) -> Message {
    let mut r = msg(MessageType::Request, mac);
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
    r
}

#[test]
fn init_reboot_known_lease_is_acked() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, Some("node-a"));
    let acts = s.handle_packet(T0 + 100, &bytes(&init_reboot(&MAC_A, a)), direct());
    let (_, ack) = one_reply(&acts);
    assert_eq!(mtype(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), a);
    // Same name as before: no DNS change.
    assert!(changes(&acts).is_empty());
}

#[test]
fn init_reboot_wrong_subnet_nak_when_authoritative_ignored_otherwise() {
    let wrong = Ipv4Addr::new(198, 18, 9, 9);
    let mut s = DhcpServer::new(cfg());
    let (_, nak) = one_reply(&s.handle_packet(T0, &bytes(&init_reboot(&MAC_A, wrong)), direct()));
    assert_eq!(mtype(&nak), MessageType::Nak);
    let mut c = cfg();
    c.authoritative = false;
    let mut s = DhcpServer::new(c);
    assert!(s.handle_packet(T0, &bytes(&init_reboot(&MAC_A, wrong)), direct()).is_empty());
    assert_eq!(s.counters().ignored, 1);
}

#[test]
fn init_reboot_unknown_lease_regranted_when_authoritative() {
    // Right after a failover: the client holds .105, we never heard of it, it is free.
    let a = Ipv4Addr::new(198, 18, 0, 105);
    let mut s = DhcpServer::new(cfg());
    let acts = s.handle_packet(T0, &bytes(&init_reboot(&MAC_A, a)), direct());
    let (_, ack) = one_reply(&acts);
    assert_eq!(mtype(&ack), MessageType::Ack);
    assert!(matches!(acts.last(), Some(Action::PersistLease { .. })));
    // Non-authoritative: silence, leaving it to the server that knows.
    let mut c = cfg();
    c.authoritative = false;
    let mut s = DhcpServer::new(c);
    assert!(s.handle_packet(T0, &bytes(&init_reboot(&MAC_A, a)), direct()).is_empty());
}

#[test]
fn init_reboot_for_address_held_by_other_client_is_naked() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, None);
    let (_, nak) = one_reply(&s.handle_packet(T0, &bytes(&init_reboot(&MAC_B, a)), direct()));
    assert_eq!(mtype(&nak), MessageType::Nak);
}

#[test]
fn renewing_unicast_and_rebinding_broadcast_extend_the_lease() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, Some("node-a"));
    for (dt, broadcast) in [(1800, false), (3200, true)] {
        let mut r = msg(MessageType::Request, &MAC_A);
        r.set_ciaddr(a);
        if broadcast {
            r.set_flags(Flags::default().set_broadcast());
        }
        let acts = s.handle_packet(T0 + dt, &bytes(&r), RecvMeta { src: SocketAddrV4::new(a, 68), local_addr: Some(SID) });
        let (to, ack) = one_reply(&acts);
        assert_eq!(mtype(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), a);
        // ciaddr set: the reply is unicast to it even when the broadcast bit is set.
        assert_eq!(to, ReplyTarget::Unicast(SocketAddrV4::new(a, CLIENT_PORT)));
        assert_eq!(s.leases().get(a).unwrap().expiry, T0 + dt + 3600);
        assert_eq!(s.leases().get(a).unwrap().fqdn.as_deref(), Some("node-a.cluster.test"), "name kept on renew");
    }
}

#[test]
fn release_frees_the_address_and_the_name() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, Some("node-a"));
    let mut r = msg(MessageType::Release, &MAC_A);
    r.set_ciaddr(a);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    let acts = s.handle_packet(T0 + 10, &bytes(&r), direct());
    assert!(replies(&acts).is_empty(), "RELEASE has no reply");
    assert!(matches!(&acts[0], Action::PersistLease { record: LogRecord::Upsert(l), reply: None } if l.state == LeaseState::Released));
    assert_eq!(changes(&acts), vec![LeaseChange { addr: a, old_name: Some("node-a.cluster.test".into()), new_name: None }]);
    // Another client may now have it.
    let mut d = msg(MessageType::Discover, &MAC_B);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    let (_, o) = one_reply(&s.handle_packet(T0 + 11, &bytes(&d), direct()));
    assert_eq!(o.yiaddr(), a);
}

#[test]
fn release_by_another_client_is_ignored() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, None);
    let mut r = msg(MessageType::Release, &MAC_B);
    r.set_ciaddr(a);
    assert!(s.handle_packet(T0, &bytes(&r), direct()).is_empty());
    assert!(s.leases().get(a).unwrap().is_active(T0));
}

#[test]
fn decline_quarantines_the_address() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, Some("node-a"));
    let mut d = msg(MessageType::Decline, &MAC_A);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    d.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    let acts = s.handle_packet(T0 + 1, &bytes(&d), direct());
    assert!(matches!(&acts[0], Action::PersistLease { record: LogRecord::Upsert(l), .. } if l.state == LeaseState::Declined));
    assert_eq!(s.counters().declines, 1);
    // Client restarts: gets a different address, even asking for the declined one.
    let mut dd = msg(MessageType::Discover, &MAC_A);
    dd.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    let (_, o) = one_reply(&s.handle_packet(T0 + 2, &bytes(&dd), direct()));
    assert_ne!(o.yiaddr(), a);
    // After the quarantine the address is forgotten (a Remove record) and usable again.
    let acts = s.handle_timeout(T0 + 1 + 600);
    assert!(acts.iter().any(|x| matches!(x, Action::PersistLease { record: LogRecord::Remove(r, _), reply: None } if *r == a)));
    let mut d = msg(MessageType::Discover, &MAC_B);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(a));
    let (_, o) = one_reply(&s.handle_packet(T0 + 700, &bytes(&d), direct()));
    assert_eq!(o.yiaddr(), a);
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut s = DhcpServer::new(cfg());
    let mut m = msg(MessageType::Inform, &MAC_A);
    let ci = Ipv4Addr::new(198, 18, 0, 7);
    m.set_ciaddr(ci);
    let acts = s.handle_packet(T0, &bytes(&m), direct());
    let (to, ack) = one_reply(&acts);
    assert_eq!(mtype(&ack), MessageType::Ack);
    assert_eq!(to, ReplyTarget::Unicast(SocketAddrV4::new(ci, CLIENT_PORT)));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::Router).is_some());
    assert!(!acts.iter().any(|a| matches!(a, Action::PersistLease { .. })));
}

#[test]
fn reservation_by_mac_gets_fixed_address_and_its_name_wins() {
    let mut s = DhcpServer::new(cfg());
    let mac = [0x52, 0x54, 0, 0, 0, 0xee];
    let mut d = msg(MessageType::Discover, &mac);
    d.opts_mut().insert(DhcpOption::Hostname("client-says-this".into()));
    let (_, o) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    assert_eq!(o.yiaddr(), Ipv4Addr::new(198, 18, 0, 50));
    let mut r = msg(MessageType::Request, &mac);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(o.yiaddr()));
    r.opts_mut().insert(DhcpOption::Hostname("client-says-this".into()));
    let acts = s.handle_packet(T0, &bytes(&r), direct());
    assert_eq!(changes(&acts)[0].new_name.as_deref(), Some("gateway-reserved.cluster.test"));
    // Nobody else can take the reserved address, even asking for it.
    let mut d = msg(MessageType::Discover, &MAC_B);
    d.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(198, 18, 0, 51)));
    let (_, o) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    assert_ne!(o.yiaddr(), Ipv4Addr::new(198, 18, 0, 51));
}

#[test]
fn reservation_by_client_id() {
    let mut s = DhcpServer::new(cfg());
    let mut d = msg(MessageType::Discover, &MAC_B);
    d.opts_mut().insert(DhcpOption::ClientIdentifier(vec![0xff, 1, 2, 3]));
    let (_, o) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    assert_eq!(o.yiaddr(), Ipv4Addr::new(198, 18, 0, 51));
    assert_eq!(o.opts().get(OptionCode::AddressLeaseTime), Some(&DhcpOption::AddressLeaseTime(120)), "reservation's lease time");
    // RFC 6842: client-id echoed.
    assert_eq!(o.opts().get(OptionCode::ClientIdentifier), Some(&DhcpOption::ClientIdentifier(vec![0xff, 1, 2, 3])));
}

#[test]
fn parameter_request_list_is_respected_and_121_carries_the_default_route() {
    let mut s = DhcpServer::new(cfg());
    let mut d = msg(MessageType::Discover, &MAC_A);
    d.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::ClasslessStaticRoute,
        OptionCode::InterfaceMtu,
    ]));
    let (_, o) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    assert!(o.opts().get(OptionCode::DomainNameServer).is_none(), "not requested");
    assert!(o.opts().get(OptionCode::NtpServers).is_none(), "not requested");
    assert!(o.opts().get(OptionCode::Unknown(224)).is_none(), "not requested");
    assert_eq!(o.opts().get(OptionCode::Router), Some(&DhcpOption::Router(vec![SID])));
    assert_eq!(o.opts().get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(1450)));
    let Some(DhcpOption::ClasslessStaticRoute(routes)) = o.opts().get(OptionCode::ClasslessStaticRoute) else {
        panic!("121 missing")
    };
    assert!(routes.contains(&(net("198.19.0.0/16"), Ipv4Addr::new(198, 18, 0, 3))));
    assert!(routes.contains(&(net("0.0.0.0/0"), SID)), "default route also inside 121: {routes:?}");

    // No PRL: everything configured except 121 (RFC 3442: only when asked).
    let (_, o) = one_reply(&s.handle_packet(T0, &bytes(&msg(MessageType::Discover, &MAC_B)), direct()));
    assert!(o.opts().get(OptionCode::DomainNameServer).is_some());
    assert!(o.opts().get(OptionCode::NtpServers).is_some());
    assert_eq!(o.opts().get(OptionCode::DomainName), Some(&DhcpOption::DomainName("cluster.test".into())));
    assert!(o.opts().get(OptionCode::ClasslessStaticRoute).is_none());
    let Some(DhcpOption::Unknown(u)) = o.opts().get(OptionCode::Unknown(224)) else { panic!("224 missing") };
    assert_eq!(u.data(), b"hello");
}

#[test]
fn fqdn_option_81_sets_the_name_and_the_server_update_flags() {
    let mut s = DhcpServer::new(cfg());
    let mut d = msg(MessageType::Discover, &MAC_A);
    let name = dhcproto::Name::from_ascii("web-7.other.example.").unwrap();
    // Client asks to do the A update itself (S=0): we override (O=1).
    d.opts_mut().insert(DhcpOption::ClientFQDN(ClientFQDN::new(FqdnFlags::new(0).set_e(true), name.clone())));
    let (_, o) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    let mut r = msg(MessageType::Request, &MAC_A);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(o.yiaddr()));
    r.opts_mut().insert(DhcpOption::ClientFQDN(ClientFQDN::new(FqdnFlags::new(0).set_e(true).set_s(true), name)));
    let acts = s.handle_packet(T0, &bytes(&r), direct());
    let (_, ack) = one_reply(&acts);
    let Some(DhcpOption::ClientFQDN(f)) = ack.opts().get(OptionCode::ClientFQDN) else { panic!("81 missing") };
    assert!(f.flags().s() && !f.flags().o() && !f.flags().n());
    assert_eq!(f.domain().to_ascii(), "web-7.cluster.test.");
    assert_eq!(changes(&acts)[0].new_name.as_deref(), Some("web-7.cluster.test"));
    let Some(DhcpOption::ClientFQDN(f)) = o.opts().get(OptionCode::ClientFQDN) else { panic!("81 missing in offer") };
    assert!(f.flags().s() && f.flags().o());
}

#[test]
fn relayed_request_uses_giaddr_subnet_replies_to_relay_and_echoes_82() {
    let mut s = DhcpServer::new(cfg());
    let gi = Ipv4Addr::new(198, 19, 5, 1);
    let mut d = msg(MessageType::Discover, &MAC_A);
    d.set_giaddr(gi);
    let mut info = RelayAgentInformation::default();
    info.insert(RelayInfo::AgentCircuitId(b"eth7".to_vec()));
    d.opts_mut().insert(DhcpOption::RelayAgentInformation(info.clone()));
    let meta = RecvMeta { src: SocketAddrV4::new(gi, 67), local_addr: Some(SID) };
    let (to, o) = one_reply(&s.handle_packet(T0, &bytes(&d), meta));
    assert_eq!(to, ReplyTarget::Relay(SocketAddrV4::new(gi, 67)));
    assert!(relayed_subnet().in_pool(o.yiaddr()), "subnet picked by giaddr, not the receiving interface");
    assert_eq!(o.giaddr(), gi);
    assert_eq!(o.opts().get(OptionCode::RelayAgentInformation), Some(&DhcpOption::RelayAgentInformation(info)));
    // A NAK through a relay carries the broadcast bit so the relay broadcasts it.
    let mut r = init_reboot(&MAC_B, Ipv4Addr::new(198, 18, 0, 100));
    r.set_giaddr(gi);
    let (to, nak) = one_reply(&s.handle_packet(T0, &bytes(&r), meta));
    assert_eq!(mtype(&nak), MessageType::Nak);
    assert_eq!(to, ReplyTarget::Relay(SocketAddrV4::new(gi, 67)));
    assert!(nak.flags().broadcast());
}

#[test]
fn unknown_relay_subnet_is_dropped_and_counted() {
    let mut s = DhcpServer::new(cfg());
    let mut d = msg(MessageType::Discover, &MAC_A);
    d.set_giaddr(Ipv4Addr::new(198, 18, 200, 1));
    assert!(s.handle_packet(T0, &bytes(&d), direct()).is_empty());
    assert_eq!(s.counters().no_subnet, 1);
}

#[test]
fn lease_expiry_removes_the_name_and_keeps_the_address_for_the_client() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, Some("node-a"));
    assert_eq!(s.poll_timeout(), Some(T0 + 3600));
    assert!(s.handle_timeout(T0 + 3599).is_empty());
    let acts = s.handle_timeout(T0 + 3600);
    assert_eq!(changes(&acts), vec![LeaseChange { addr: a, old_name: Some("node-a.cluster.test".into()), new_name: None }]);
    assert_eq!(s.counters().expired, 1);
    // The same client comes back later and gets the same address.
    let b = dora(&mut s, T0 + 5000, &MAC_A, Some("node-a"));
    assert_eq!(a, b);
}

#[test]
fn pool_exhaustion_is_counted_and_expired_addresses_are_reused() {
    let mut s = DhcpServer::new(cfg());
    for i in 0..10u8 {
        dora(&mut s, T0, &[2, 0, 0, 0, 1, i], None);
    }
    assert!(s.handle_packet(T0, &bytes(&msg(MessageType::Discover, &MAC_B)), direct()).is_empty());
    assert_eq!(s.counters().pool_exhausted, 1);
    s.handle_timeout(T0 + 3600);
    let a = dora(&mut s, T0 + 3600, &MAC_B, None);
    assert!(subnet().in_pool(a));
}

#[test]
fn newest_holder_of_a_name_wins_it() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, Some("dup"));
    let mut d = msg(MessageType::Discover, &MAC_B);
    d.opts_mut().insert(DhcpOption::Hostname("dup".into()));
    let (_, o) = one_reply(&s.handle_packet(T0, &bytes(&d), direct()));
    let mut r = msg(MessageType::Request, &MAC_B);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(o.yiaddr()));
    r.opts_mut().insert(DhcpOption::Hostname("dup".into()));
    let acts = s.handle_packet(T0, &bytes(&r), direct());
    let ch = changes(&acts);
    assert!(ch.contains(&LeaseChange { addr: a, old_name: Some("dup.cluster.test".into()), new_name: None }));
    assert!(ch.contains(&LeaseChange { addr: o.yiaddr(), old_name: None, new_name: Some("dup.cluster.test".into()) }));
    assert_eq!(s.leases().by_name("dup.cluster.test").map(|l| l.addr), Some(o.yiaddr()));
}

#[test]
fn malformed_packets_are_dropped_and_counted() {
    let mut s = DhcpServer::new(cfg());
    assert!(s.handle_packet(T0, &[1, 2, 3], direct()).is_empty());
    let mut reply = msg(MessageType::Offer, &MAC_A);
    reply.set_opcode(Opcode::BootReply);
    assert!(s.handle_packet(T0, &bytes(&reply), direct()).is_empty());
    let mut no_type = msg(MessageType::Discover, &MAC_A);
    no_type.opts_mut().remove(OptionCode::MessageType);
    assert!(s.handle_packet(T0, &bytes(&no_type), direct()).is_empty());
    assert_eq!(s.counters().malformed, 3);
    assert_eq!(s.counters().received, 3);
}

#[test]
fn restore_publishes_active_names() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, Some("node-a"));
    let leases: Vec<Lease> = s.leases().iter().cloned().collect();
    let mut s2 = DhcpServer::new(cfg());
    let acts = s2.restore(leases, T0 + 10);
    assert_eq!(changes(&acts), vec![LeaseChange { addr: a, old_name: None, new_name: Some("node-a.cluster.test".into()) }]);
    // The restored server renews the lease as known.
    let (_, ack) = one_reply(&s2.handle_packet(T0 + 20, &bytes(&init_reboot(&MAC_A, a)), direct()));
    assert_eq!(mtype(&ack), MessageType::Ack);
}

#[test]
fn sanitize_labels() {
    assert_eq!(sanitize_label("My_Host.example.com").as_deref(), Some("my-host"));
    assert_eq!(sanitize_label("--").as_deref(), None);
    assert_eq!(sanitize_label(&"a".repeat(64)), None);
    assert_eq!(sanitize_label("ok\u{0}é").as_deref(), Some("ok"));
}

#[test]
fn old_released_and_expired_records_are_collected_after_retention() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, None);
    let b = dora(&mut s, T0, &MAC_B, None);
    let mut r = msg(MessageType::Release, &MAC_B);
    r.set_ciaddr(b);
    s.handle_packet(T0 + 10, &bytes(&r), direct());
    s.handle_timeout(T0 + 3600); // a expires
    assert_eq!(s.leases().len(), 2, "remembered during retention");
    let acts = s.handle_timeout(T0 + 10 + 86_400 + GC_INTERVAL);
    assert!(acts.iter().any(|x| matches!(x, Action::PersistLease { record: LogRecord::Remove(r, _), reply: None } if *r == b)));
    assert!(s.leases().get(a).is_some(), "a ended later: still kept");
    let acts = s.handle_timeout(T0 + 3600 + 86_400 + 2 * GC_INTERVAL);
    assert!(acts.iter().any(|x| matches!(x, Action::PersistLease { record: LogRecord::Remove(r, _), reply: None } if *r == a)));
    assert!(s.leases().is_empty());
    assert_eq!(s.counters().collected, 2);
}

proptest::proptest! {
    /// The fuzz target's property, run in CI: any mutation of a valid request through the core
    /// never panics, and every reply it emits decodes.
    #[test]
    fn mutated_requests_never_panic_and_replies_decode(
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..12),
        cut in proptest::prelude::any::<usize>(),
        kind in 0u8..5,
    ) {
        let mt = [MessageType::Discover, MessageType::Request, MessageType::Release, MessageType::Decline, MessageType::Inform][kind as usize];
        let mut m = msg(mt, &MAC_A);
        m.opts_mut().insert(DhcpOption::Hostname("fuzz".into()));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(198, 18, 0, 101)));
        m.opts_mut().insert(DhcpOption::ClientFQDN(ClientFQDN::new(FqdnFlags::new(0), dhcproto::Name::from_ascii("a.b.").unwrap())));
        m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![OptionCode::ClasslessStaticRoute, OptionCode::Router]));
        let mut b = bytes(&m);
        for (pos, val) in flips {
            let i = pos % b.len();
            b[i] = val;
        }
        b.truncate(cut % (b.len() + 1));
        let mut s = DhcpServer::new(cfg());
        for now in [T0, T0 + 1] {
            for r in replies(&s.handle_packet(now, &b, direct())).into_iter().map(|(_, m)| m) {
                proptest::prop_assert!(wire::decode(&r.to_vec().unwrap()).is_ok());
            }
        }
        let _ = s.handle_timeout(T0 + 100_000);
    }
}

#[test]
fn replicated_lease_is_served_by_the_standby_with_its_name() {
    let mut primary = DhcpServer::new(cfg());
    let mut standby = DhcpServer::new(cfg());
    let mut d = msg(MessageType::Discover, &MAC_A);
    d.opts_mut().insert(DhcpOption::Hostname("node-a".into()));
    let (_, offer) = one_reply(&primary.handle_packet(T0, &bytes(&d), direct()));
    let mut r = msg(MessageType::Request, &MAC_A);
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    r.opts_mut().insert(DhcpOption::Hostname("node-a".into()));
    let acts = primary.handle_packet(T0, &bytes(&r), direct());
    let Some(Action::PersistLease { record, .. }) = acts.last() else { panic!() };
    // The standby held an offer of that address to someone else: withdrawn by the replica.
    let mut d2 = msg(MessageType::Discover, &MAC_B);
    d2.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    let (_, ob) = one_reply(&standby.handle_packet(T0, &bytes(&d2), direct()));
    assert_eq!(ob.yiaddr(), offer.yiaddr());
    let acts = standby.apply_replicated(record.clone(), T0);
    assert!(changes(&acts).contains(&LeaseChange { addr: offer.yiaddr(), old_name: None, new_name: Some("node-a.cluster.test".into()) }));
    assert!(matches!(acts.last(), Some(Action::PersistLease { reply: None, .. })));
    // Failover: the client renews with the standby, which knows the lease.
    let (_, ack) = one_reply(&standby.handle_packet(T0 + 1800, &bytes(&init_reboot(&MAC_A, offer.yiaddr())), direct()));
    assert_eq!(mtype(&ack), MessageType::Ack);
    // And MAC_B cannot take it there any more.
    let mut rb = msg(MessageType::Request, &MAC_B);
    rb.opts_mut().insert(DhcpOption::ServerIdentifier(SID));
    rb.opts_mut().insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    let (_, nak) = one_reply(&standby.handle_packet(T0 + 1, &bytes(&rb), direct()));
    assert_eq!(mtype(&nak), MessageType::Nak);
}

#[test]
fn conflict_check_probes_new_addresses_and_skips_ones_in_use() {
    let mut c = cfg();
    c.conflict_check = true;
    let mut s = DhcpServer::new(c);
    let d = bytes(&msg(MessageType::Discover, &MAC_A));
    let acts = s.handle_packet(T0, &d, direct());
    let [Action::Probe { addr: first, .. }] = acts.as_slice() else { panic!("{acts:?}") };
    let first = *first;
    // Someone answered: quarantined, and the same DISCOVER now gets another address.
    let acts = s.conflict_detected(first, T0);
    assert!(matches!(&acts[0], Action::PersistLease { record: LogRecord::Upsert(l), .. } if l.state == LeaseState::Declined));
    let acts = s.handle_packet(T0, &d, direct());
    let [Action::Probe { addr: second, reply }] = acts.as_slice() else { panic!("{acts:?}") };
    assert_ne!(*second, first);
    assert_eq!(Message::from_bytes(&reply.packet).unwrap().yiaddr(), *second);
    assert_eq!(s.counters().conflicts, 1);
    // A client's own lease is not probed again (it would answer the ping itself).
    let a = dora(&mut DhcpServer::new(cfg()), T0, &MAC_B, None);
    let mut s2 = DhcpServer::new(DhcpConfig { conflict_check: true, ..cfg() });
    let mut l = Lease { addr: a, hwaddr: MAC_B.to_vec(), client_id: None, hostname: None, fqdn: None, start: T0, expiry: T0 + 3600, state: LeaseState::Active, rev: 1 };
    l.start = T0;
    s2.restore([l], T0);
    let acts = s2.handle_packet(T0 + 5, &bytes(&msg(MessageType::Discover, &MAC_B)), direct());
    assert!(matches!(acts.as_slice(), [Action::Reply(_)]), "{acts:?}");
}

#[test]
fn decisions_carry_increasing_revisions_and_an_older_replica_changes_nothing() {
    let mut s = DhcpServer::new(cfg());
    let a = dora(&mut s, T0, &MAC_A, None);
    let granted = s.leases().get(a).cloned().expect("lease");
    assert!(granted.rev >= crate::leases::rev_at(T0));
    let mut r = msg(MessageType::Release, &MAC_A);
    r.set_ciaddr(a);
    let acts = s.handle_packet(T0 + 10, &bytes(&r), direct());
    let Some(Action::PersistLease { record: LogRecord::Upsert(released), .. }) = acts.first() else { panic!("{acts:?}") };
    assert!(released.rev > granted.rev, "a release ranks above the grant it ends");
    // A peer's stale copy of the grant (a gateway that did not see the release) changes nothing.
    assert!(s.apply_replicated(LogRecord::Upsert(granted.clone()), T0 + 11).is_empty());
    assert_eq!(s.leases().get(a).map(|l| l.state), Some(LeaseState::Released));
    // A peer's later decision applies, and this server's next decision ranks above it even
    // though its own clock is behind.
    let peer = Lease { state: LeaseState::Active, start: T0 + 12, expiry: T0 + 3600, rev: released.rev + 5_000_000, ..granted.clone() };
    assert!(!s.apply_replicated(LogRecord::Upsert(peer.clone()), T0 + 12).is_empty());
    let mut r = msg(MessageType::Release, &MAC_A);
    r.set_ciaddr(a);
    let acts = s.handle_packet(T0 + 13, &bytes(&r), direct());
    let Some(Action::PersistLease { record: LogRecord::Upsert(again), .. }) = acts.first() else { panic!("{acts:?}") };
    assert!(again.rev > peer.rev);
    // Collecting it later is derived from the record it forgets: just above it.
    s.handle_timeout(T0 + 14);
    let acts = s.handle_timeout(T0 + 13 + 86_400 + 2 * GC_INTERVAL);
    assert!(acts.iter().any(|x| matches!(x, Action::PersistLease { record: LogRecord::Remove(ra, rev), .. } if *ra == a && *rev == again.rev + 1)), "{acts:?}");
}
