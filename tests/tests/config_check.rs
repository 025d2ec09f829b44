//! `hastack config check` end to end through the library: every example passes, and every broken
//! fixture reports exactly the `file:line:column: reason` lines listed in its `.expected` file.

use std::path::{Path, PathBuf};

use hastack::config::{Config, check_files, load};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
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
    assert!(
        examples.len() >= 2,
        "expected the three-node and two-node examples, found {examples:?}"
    );
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
    assert!(
        three.resources.iter().any(|r| r.vip.is_some()),
        "a VIP resource"
    );
    let balancer = three.balancer.as_ref().expect("a balancer");
    assert_eq!(
        balancer.backends[0].servers.len(),
        3,
        "three kube-apiservers"
    );
    assert!(three.dhcp.is_some() && three.dns.is_some(), "DHCP and DNS");

    let two = load(&root().join("examples/two-node.toml")).expect("two-node loads");
    let cluster = two.cluster.as_ref().expect("two-node has [cluster]");
    assert_eq!(cluster.nodes.len(), 2);
    let quorum = two.quorum.clone().unwrap_or_default();
    assert!(
        cluster.witness.is_some() || quorum.two_node || quorum.auto_tie_breaker,
        "a tie-breaker"
    );
}

#[test]
fn every_broken_fixture_reports_exactly_its_expected_lines() {
    let dir = root().join("tests/fixtures/configs");
    let fixtures = files(&dir, "broken-", ".toml");
    assert!(fixtures.len() >= 5, "fixtures missing in {}", dir.display());
    let mut failures = Vec::new();
    for path in &fixtures {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
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
            failures.push(format!(
                "{name}\n  expected:\n    {}\n  got:\n    {}",
                expected.join("\n    "),
                got.join("\n    ")
            ));
        }
        assert!(
            !expected.is_empty(),
            "{name}: a broken fixture must expect at least one problem"
        );
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

#[test]
fn absurd_durations_are_refused_or_accepted_without_overflow() {
    let huge = "\"18000000000000000000s\"";
    let text = format!(
        "[cluster]\nname = \"c\"\nauthkey = \"/k\"\n[cluster.timing]\nheartbeat_interval = {huge}\n\
         [[cluster.node]]\nid = 1\nname = \"a\"\nlinks = [\"198.18.0.11/24\"]\n\
         [[resource]]\nname = \"x\"\nmonitor_interval = {huge}\nmonitor_timeout = {huge}\n\
         [resource.exec]\nstart = \"true\"\nstop = \"true\"\n\
         [dhcp]\ninterfaces = [\"eth0\"]\n[[dhcp.subnet]]\nsubnet = \"198.18.0.0/24\"\nlease_time = {huge}\n"
    );
    // Whatever the verdict, it must be a verdict, not a panic.
    let _ = Config::from_str_named("huge.toml", &text);
}

/// A small seeded generator, so the mutation test needs no extra dependency and every failure
/// names the seed that reproduces it.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_configs_never_panic_and_every_problem_is_inside_the_file() {
    let seed: u64 = std::env::var("HASTACK_CONFIG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0ff_ee15_2026);
    let mut rng = XorShift(seed);
    const JUNK: [&str; 12] = [
        "=",
        "[",
        "]]",
        "\"",
        "{",
        "x = 1",
        "[[resource]]",
        "-INFINITY",
        "\n",
        "1.5",
        "\"198.18.0\"",
        "é",
    ];
    let mut inputs: Vec<(String, usize)> = vec![
        ("examples/three-node.toml".into(), 300),
        ("examples/two-node.toml".into(), 300),
    ];
    for f in files(&root().join("tests/fixtures/configs"), "broken-", ".toml") {
        let rel = f
            .strip_prefix(root())
            .expect("fixture under the root")
            .display()
            .to_string();
        inputs.push((rel, 60));
    }
    for (name, rounds) in &inputs {
        let name = name.as_str();
        let original = std::fs::read_to_string(root().join(name)).expect("input readable");
        for round in 0..*rounds {
            let mut text = original.clone();
            for _ in 0..1 + rng.below(3) {
                let mut at = rng.below(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match rng.below(3) {
                    0 => {
                        let mut end = (at + rng.below(40)).min(text.len());
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.replace_range(at..end, "");
                    }
                    1 => text.insert_str(at, JUNK[rng.below(JUNK.len())]),
                    _ => {
                        // Swap a line for another line of the file: right syntax, wrong place.
                        let lines: Vec<&str> = original.lines().collect();
                        let other = lines[rng.below(lines.len())];
                        text.insert_str(at, &format!("\n{other}\n"));
                    }
                }
            }
            let lines = text.lines().count() + 1;
            let result = std::panic::catch_unwind(|| Config::from_str_named(name, &text));
            let outcome =
                result.unwrap_or_else(|_| panic!("seed {seed} round {round}: panicked on\n{text}"));
            if let Err(d) = outcome {
                assert!(
                    !d.items.is_empty(),
                    "seed {seed} round {round}: an error without a problem"
                );
                for p in &d.items {
                    assert!(
                        p.line >= 1 && p.line <= lines && p.column >= 1,
                        "seed {seed} round {round}: {p} is outside the file\n{text}"
                    );
                }
            }
        }
    }
}
