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
    let cfg = dir.path().join("hastack.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[dns]
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
    let st = stop_with_sigterm(&mut daemon, Duration::from_secs(15));
    assert!(st.success(), "dhcp-dns exit {st:?}");
}
