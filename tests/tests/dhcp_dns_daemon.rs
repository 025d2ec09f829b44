//! End-to-end on loopback: the `hastack dhcp-dns` daemon serving DNS from a config file, asked by the
//! real `dig`; a clean stop on SIGTERM.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hastack_tests::{KillOnDrop, hastack_bin, require_tools, stop_with_sigterm};

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn dns_daemon_answers_dig_for_static_and_wildcard_names() {
    if !require_tools(&["dig"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.path().join("hastack.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[control]
metrics_dhcp_dns = "127.0.0.1:{metrics}"

[dns]
listen = ["127.0.0.1:{port}"]
domain = "lab.example"
local_ttl = "10s"

[[dns.record]]
name = "api"
type = "A"
value = "198.18.0.100"

[[dns.wildcard]]
domain = "apps.lab.example"
addresses = ["198.18.0.101"]
"#
        ),
    )
    .unwrap();
    let bin = hastack_bin().unwrap();
    let mut daemon = KillOnDrop(Command::new(&bin).args(["dhcp-dns", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
    let dig = |name: &str, tcp: bool| -> String {
        let mut c = Command::new("dig");
        c.args(["+short", "+time=1", "+tries=1", "-p", &port.to_string(), "@127.0.0.1", name]);
        if tcp {
            c.arg("+tcp");
        }
        String::from_utf8(c.output().unwrap().stdout).unwrap().trim().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while dig("api.lab.example", false) != "198.18.0.100" {
        assert!(Instant::now() < deadline, "no answer from the daemon");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(dig("api.lab.example", true), "198.18.0.100", "over TCP");
    assert_eq!(dig("web.apps.lab.example", false), "198.18.0.101", "wildcard");
    assert_eq!(dig("nothing.lab.example", false), "", "NXDOMAIN has no answer");
    // The Prometheus endpoint ([control] metrics_dhcp_dns) counts what dig just saw.
    let scrape = {
        use std::io::{Read, Write};
        let mut m = std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap();
        m.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        m.read_to_string(&mut s).unwrap();
        s
    };
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "scrape: {scrape}");
    let counter = |name: &str| -> u64 {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in: {scrape}"))
    };
    assert!(counter("hastack_dns_nxdomain_total") >= 1, "the NXDOMAIN above is counted: {scrape}");
    assert!(counter("hastack_dns_tcp_accepted_total") >= 1, "the TCP query above is counted: {scrape}");
    assert!(counter("hastack_dns_queries_total") >= 4, "{scrape}");
    let st = stop_with_sigterm(&mut daemon, Duration::from_secs(15));
    assert!(st.success(), "dhcp-dns exit {st:?}");
}
