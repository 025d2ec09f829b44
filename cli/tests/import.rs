//! `hastack import`: real-world corosync.conf, haproxy.cfg and dnsmasq.conf files convert to the
//! expected TOML (exact) with the expected unconverted lines; the result validates; random line
//! soup never panics and whatever it produces validates; the binary's exit codes.
//!
//! `HASTACK_UPDATE_FIXTURES=1 cargo test -p hastack --test import` rewrites the expected files
//! (review the diff before committing it).

use std::path::{Path, PathBuf};
use std::process::Command;

use hastack::import::{self, Import, Kind};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/import")
}

/// The unconverted lines as `hastack import` prints them (without the file name).
fn listing(r: &Import) -> String {
    r.unconverted.iter().map(|u| format!("{}: not converted: {} ({})\n", u.line, u.text, u.reason)).collect()
}

fn check_fixture(name: &str, kind: Kind) {
    let dir = fixtures();
    let input = std::fs::read_to_string(dir.join(name)).expect("fixture");
    assert_eq!(import::detect(Path::new(name), &input), Some(kind), "{name}: kind detection");
    let r = import::convert(kind, &input);
    if let Err(d) = import::validate(&r.toml) {
        panic!("{name}: the conversion does not validate:\n{d}\n{}", r.toml);
    }
    let toml_path = dir.join(format!("{name}.toml"));
    let list_path = dir.join(format!("{name}.unconverted"));
    if std::env::var_os("HASTACK_UPDATE_FIXTURES").is_some() {
        std::fs::write(&toml_path, &r.toml).expect("write");
        std::fs::write(&list_path, listing(&r)).expect("write");
        return;
    }
    let want_toml = std::fs::read_to_string(&toml_path).expect("expected toml");
    let want_list = std::fs::read_to_string(&list_path).expect("expected listing");
    assert_eq!(r.toml, want_toml, "{name}: converted TOML differs from {}", toml_path.display());
    assert_eq!(listing(&r), want_list, "{name}: unconverted lines differ from {}", list_path.display());
    // The listing names real input lines, as written.
    let lines: Vec<&str> = input.lines().collect();
    for u in &r.unconverted {
        assert_eq!(lines[u.line - 1].trim(), u.text, "{name}:{}", u.line);
    }
}

#[test]
fn corosync_two_node() {
    check_fixture("corosync-two-node.conf", Kind::Corosync);
}

#[test]
fn corosync_three_node_knet_two_rings() {
    check_fixture("corosync-three-node-knet.conf", Kind::Corosync);
}

#[test]
fn haproxy_kubeadm_ha_guide() {
    check_fixture("haproxy-kubeadm.cfg", Kind::Haproxy);
}

#[test]
fn haproxy_kubespray() {
    check_fixture("haproxy-kubespray.cfg", Kind::Haproxy);
}

#[test]
fn haproxy_mysql_with_mysql_check() {
    check_fixture("haproxy-mysql.cfg", Kind::Haproxy);
}

#[test]
fn dnsmasq_gateway() {
    check_fixture("dnsmasq-gateway.conf", Kind::Dnsmasq);
}

/// The balancer runtime accepts what the haproxy importer writes (its mapping onto the proxies'
/// own structs refuses features it does not have).
#[test]
fn imported_balancers_map_onto_the_runtime() {
    for name in ["haproxy-kubeadm.cfg", "haproxy-kubespray.cfg", "haproxy-mysql.cfg"] {
        let text = std::fs::read_to_string(fixtures().join(format!("{name}.toml"))).expect("expected toml");
        let c = hastack::config::Config::from_str_named(name, &text).unwrap_or_else(|d| panic!("{d}"));
        let b = c.balancer.expect("a [balancer]");
        let fronts = tcp_balancer::from_config::tcp_frontends(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fronts.len(), b.frontends.len(), "{name}");
    }
}

/// The membership driver and the DHCP/DNS runtime accept what the other importers write.
#[test]
fn imported_cluster_and_dhcp_dns_map_onto_their_runtimes() {
    for name in ["corosync-two-node.conf", "corosync-three-node-knet.conf"] {
        let text = std::fs::read_to_string(fixtures().join(format!("{name}.toml"))).expect("expected toml");
        let c = hastack::config::Config::from_str_named(name, &text).unwrap_or_else(|d| panic!("{d}"));
        let (cluster, quorum) = (c.cluster.expect("[cluster]"), c.quorum.unwrap_or_default());
        for n in &cluster.nodes {
            ha_membership::from_config::node_driver_config(&cluster, &quorum, n.id).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let name = "dnsmasq-gateway.conf";
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.toml"))).expect("expected toml");
    let c = hastack::config::Config::from_str_named(name, &text).unwrap_or_else(|d| panic!("{d}"));
    // The gateway's own address on eth1, as getifaddrs would report it.
    let local = [dhcp_dns::from_config::LocalAddr { interface: "eth1".into(), addr: [198, 18, 0, 1].into(), prefix: 24 }];
    dhcp_dns::from_config::options_from_config(c.dhcp.as_ref(), c.dns.as_ref(), &local).unwrap_or_else(|e| panic!("{name}: {e:?}"));
}

fn hastack() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hastack"))
}

#[test]
fn the_binary_converts_a_fixture_and_strict_exits_3() {
    let file = fixtures().join("haproxy-kubeadm.cfg");
    let out = hastack().arg("import").arg(&file).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let want = std::fs::read_to_string(fixtures().join("haproxy-kubeadm.cfg.toml")).expect("expected");
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want_list = std::fs::read_to_string(fixtures().join("haproxy-kubeadm.cfg.unconverted")).expect("expected");
    for l in want_list.lines() {
        let printed = format!("{}:{l}", file.display());
        assert!(stderr.contains(&printed), "missing {printed:?} in\n{stderr}");
    }

    let out = hastack().arg("import").arg("--strict").arg(&file).output().expect("runs");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));

    // -o writes a file that `hastack config check` accepts.
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = dir.path().join("hastack.toml");
    let out = hastack().arg("import").arg(&file).arg("-o").arg(&toml).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = hastack().arg("config").arg("check").arg(&toml).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_binary_strict_exits_0_when_everything_converts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("corosync.conf");
    std::fs::write(
        &file,
        "totem {\n cluster_name: c\n transport: knet\n}\nnodelist {\n node {\n  ring0_addr: 198.18.0.11\n  nodeid: 1\n  name: a\n }\n node {\n  ring0_addr: 198.18.0.12\n  nodeid: 2\n  name: b\n }\n node {\n  ring0_addr: 198.18.0.13\n  nodeid: 3\n  name: c\n }\n}\nquorum {\n provider: corosync_votequorum\n}\n",
    )
    .expect("write");
    let out = hastack().arg("import").arg("--strict").arg(&file).output().expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[[cluster.node]]"));
}

#[test]
fn the_binary_refuses_an_unknown_kind_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("mystery.txt");
    std::fs::write(&file, "hello world\n").expect("write");
    let out = hastack().arg("import").arg(&file).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

// ---- property tests: random line soup --------------------------------------------------------

/// Lines of words that reach deep into each importer, mixed with junk.
fn soup(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    const ODD: &[&str] = &[
        "198.18.0.11", "198.18.0.12:6443", "fd00:198:18::1", "*:80", "10s", "0", "300", "{", "}", ",", "\"", "'",
        "\\", "#", "=", ":", "/x/", "255.255.255.0", "52:54:00:00:00:01",
    ];
    let word = prop_oneof![
        4 => proptest::sample::select(words).prop_map(str::to_string),
        1 => "[ -~]{0,12}",
        1 => proptest::sample::select(ODD).prop_map(str::to_string),
    ];
    let line = proptest::collection::vec(word, 0..7).prop_map(|w| w.join(" "));
    proptest::collection::vec(line, 0..40).prop_map(|l| l.join("\n"))
}

fn check_soup(kind: Kind, text: &str) -> Result<(), TestCaseError> {
    let r = import::convert(kind, text);
    let n = text.lines().count();
    for u in &r.unconverted {
        prop_assert!(u.line >= 1 && u.line <= n, "line {} outside 1..={n}", u.line);
        // The importers' safety net: a line no branch handled is a bug in the importer.
        prop_assert!(!u.reason.contains("not understood by the importer"), "unhandled line {}: {}\n--- input\n{text}", u.line, u.text);
    }
    for w in r.unconverted.windows(2) {
        prop_assert!(w[0].line < w[1].line, "unconverted lines out of order or repeated");
    }
    if let Err(d) = import::validate(&r.toml) {
        return Err(TestCaseError::fail(format!("does not validate:\n{d}\n--- toml\n{}\n--- input\n{text}", r.toml)));
    }
    Ok(())
}

const COROSYNC: &[&str] = &[
    "totem {", "nodelist {", "node {", "quorum {", "logging {", "interface {", "device {", "net {", "}", "ring0_addr:",
    "ring1_addr:", "nodeid:", "name:", "cluster_name:", "two_node:", "1", "expected_votes:", "wait_for_all:",
    "auto_tie_breaker:", "auto_tie_breaker_node:", "lowest", "quorum_votes:", "mcastport:", "host:", "model:", "net",
    "provider:", "corosync_votequorum", "last_man_standing:", "debug:", "on", "198.18.0.13", "198.19.0.11",
];
const HAPROXY: &[&str] = &[
    "global", "defaults", "frontend", "backend", "listen", "fe", "be", "bind", "mode", "tcp", "http", "balance",
    "roundrobin", "leastconn", "random(3)", "server", "s1", "s2", "check", "check-ssl", "verify", "none", "required",
    "option", "httpchk", "GET", "/healthz", "ssl-hello-chk", "mysql-check", "user", "tcp-check", "http-check",
    "connect", "ssl", "send", "meth", "uri", "expect", "status", "200", "timeout", "client", "server", "connect",
    "tunnel", "default-server", "inter", "fastinter", "rise", "fall", "weight", "backup", "slowstart", "maxconn",
    "maxqueue", "on-marked-down", "shutdown-sessions", "send-proxy", "send-proxy-v2", "default_backend", "retries",
    "redispatch", "stats", "socket", "/run/x.sock", "nbthread", "hard-stop-after", "monitor-uri", "forwardfor",
    "accept-proxy", "transparent", "sni", "port", "198.18.0.21:6443", "127.0.0.1:6443",
];
const DNSMASQ: &[&str] = &[
    "dhcp-range=198.18.0.10,198.18.0.20", "dhcp-range=198.18.0.0,static", ",12h", ",255.255.255.0",
    "dhcp-host=52:54:00:00:00:02,198.18.0.5,h", "dhcp-option=3,198.18.0.1", "dhcp-option=option:dns-server,198.18.0.1",
    "dhcp-option=121,10.0.0.0/8,198.18.0.1", "dhcp-option=tag:x,3,1.2.3.4", "dhcp-authoritative", "domain=lab.example",
    "local=/lab.example/", "address=/a.lab.example/198.18.0.9", "server=198.18.0.53", "server=/corp/198.18.0.54",
    "addn-hosts=/etc/h", "expand-hosts", "cache-size=100", "neg-ttl=5", "interface=eth1", "listen-address=127.0.0.1",
    "port=0", "port=5353", "host-record=x,198.18.0.7", "cname=a,b", "domain=other.example",
    "domain=n.lab.example,198.18.0.0/24", "domain=n.lab.example,198.18.0.0/24,local",
];

/// A fixed seed so CI is reproducible; `PROPTEST_RNG_SEED=N` explores others (failures print the
/// shrunk input, which reproduces them under any seed).
fn config() -> ProptestConfig {
    let mut c = ProptestConfig { cases: 160, failure_persistence: None, ..ProptestConfig::default() };
    if c.rng_seed == proptest::test_runner::RngSeed::Random {
        c.rng_seed = proptest::test_runner::RngSeed::Fixed(20_261_125);
    }
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn corosync_soup_never_panics_and_validates(text in soup(COROSYNC)) {
        check_soup(Kind::Corosync, &text)?;
    }

    #[test]
    fn haproxy_soup_never_panics_and_validates(text in soup(HAPROXY)) {
        check_soup(Kind::Haproxy, &text)?;
    }

    #[test]
    fn dnsmasq_soup_never_panics_and_validates(text in soup(DNSMASQ)) {
        check_soup(Kind::Dnsmasq, &text)?;
    }

    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        for kind in [Kind::Corosync, Kind::Haproxy, Kind::Dnsmasq] {
            check_soup(kind, &text)?;
        }
    }
}
