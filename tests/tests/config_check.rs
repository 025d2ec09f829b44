//! `hastack config check` end to end through the library: every example passes, and every broken
//! fixture reports exactly the `file:line:column: reason` lines listed in its `.expected` file.

use std::path::{Path, PathBuf};

use hastack::config::{Config, check_files, load};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

fn files(dir: &Path, prefix: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(prefix) && name.ends_with(ext)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_passes() {
    let examples = files(&root().join("examples"), "", ".toml");
    assert!(examples.len() >= 2, "expected the three-node and two-node examples, found {examples:?}");
    for path in &examples {
        if let Err(d) = load(path) {
            panic!("{} should be valid:\n{d}", path.display());
        }
    }
    assert_eq!(check_files(&examples), 0);
}

#[test]
fn examples_say_what_the_issue_asks_for() {
    let three = load(&root().join("examples/three-node.toml")).expect("three-node loads");
    let cluster = three.cluster.as_ref().expect("three-node has [cluster]");
    assert_eq!(cluster.nodes.len(), 3);
    assert!(three.resources.iter().any(|r| r.vip.is_some()), "a VIP resource");
    let balancer = three.balancer.as_ref().expect("a balancer");
    assert_eq!(balancer.backends[0].servers.len(), 3, "three kube-apiservers");
    assert!(three.dhcp.is_some() && three.dns.is_some(), "DHCP and DNS");

    let two = load(&root().join("examples/two-node.toml")).expect("two-node loads");
    let cluster = two.cluster.as_ref().expect("two-node has [cluster]");
    assert_eq!(cluster.nodes.len(), 2);
    let quorum = two.quorum.clone().unwrap_or_default();
    assert!(cluster.witness.is_some() || quorum.two_node || quorum.auto_tie_breaker, "a tie-breaker");
}

#[test]
fn every_broken_fixture_reports_exactly_its_expected_lines() {
    let dir = root().join("tests/fixtures/configs");
    let fixtures = files(&dir, "broken-", ".toml");
    assert!(fixtures.len() >= 5, "fixtures missing in {}", dir.display());
    let mut failures = Vec::new();
    for path in &fixtures {
        let name = path.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string();
        let text = std::fs::read_to_string(path).expect("fixture readable");
        let expected_path = path.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{} needs {}: {e}", name, expected_path.display()));
        let expected: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
        let got: Vec<String> = match Config::from_str_named(&name, &text) {
            Ok(_) => Vec::new(),
            Err(d) => d.items.iter().map(|l| l.to_string()).collect(),
        };
        if got != expected {
            failures.push(format!("{name}\n  expected:\n    {}\n  got:\n    {}", expected.join("\n    "), got.join("\n    ")));
        }
        assert!(!expected.is_empty(), "{name}: a broken fixture must expect at least one problem");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_files_exits_one_on_problems_and_two_on_unreadable() {
    let dir = root().join("tests/fixtures/configs");
    assert_eq!(check_files(&[dir.join("broken-cluster.toml")]), 1);
    assert_eq!(check_files(&[dir.join("does-not-exist.toml")]), 2);
    assert_eq!(check_files(&[root().join("examples/two-node.toml")]), 0);
}

#[test]
fn load_names_the_file_as_given() {
    let path = root().join("tests/fixtures/configs/broken-two-node.toml");
    let d = load(&path).expect_err("broken");
    let first = d.items.first().expect("at least one problem");
    assert_eq!(first.file, path.display().to_string());
    assert!(first.line > 0 && first.column > 0);
}
