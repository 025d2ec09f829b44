//! The balancing decision (tcp-balancer's hot path per new session): one pick plus the session
//! accounting around it, per algorithm, for a kubeadm-sized backend (3 servers) and a large one.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tcp_balancer::balance::{Algorithm, Decision, ServerSpec, ServerTable, hash_addr};

fn table(alg: Algorithm, n: usize) -> ServerTable {
    let specs = (0..n)
        .map(|i| ServerSpec { name: format!("srv{i}"), weight: 1 + (i as u32 % 4), backup: false, maxconn: None })
        .collect();
    ServerTable::new(alg, specs, 42).expect("valid table")
}

fn bench_pick(c: &mut Criterion) {
    let algs = [
        ("roundrobin", Algorithm::RoundRobin),
        ("static-rr", Algorithm::StaticRr),
        ("leastconn", Algorithm::LeastConn),
        ("first", Algorithm::First),
        ("source", Algorithm::Source),
        ("random2", Algorithm::Random { draws: 2 }),
    ];
    let mut g = c.benchmark_group("balance/pick");
    for n in [3usize, 64] {
        for (name, alg) in algs {
            let mut t = table(alg, n);
            let mut k: u32 = 0;
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let h = hash_addr(std::net::IpAddr::from(k.to_be_bytes()));
                    if let Decision::Server(i) = t.pick(black_box(h)) {
                        // Open and close, as a short session does, so leastconn/random see load.
                        t.session_started(i);
                        t.session_ended(i);
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
