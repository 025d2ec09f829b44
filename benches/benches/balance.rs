//! The balancing decision (tcp-balancer's hot path per new session): one pick plus the session
//! accounting around it, per algorithm, for a kubeadm-sized backend (3 servers) and a large one;
//! and http mode's whole per-request decision: the header scan (parse + rewrite with
//! X-Forwarded-For) followed by routing on host and path prefix and the server pick. The header
//! scan alone, per head size, and the chunked scanner are in `http.rs`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tcp_balancer::balance::{Algorithm, Decision, ServerSpec, ServerTable, hash_addr};
use tcp_balancer::http::HttpRoute;
use tcp_balancer::http::head::{RequestRewrite, parse_request};
use tcp_balancer::http::route;

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

/// A kubectl request through a frontend routing the API paths of two hosts to three backends.
const KUBECTL: &[u8] = b"GET /api/v1/namespaces/kube-system/pods?limit=500 HTTP/1.1\r\n\
Host: api.cluster.example:6443\r\n\
User-Agent: kubectl/v1.31.0 (linux/amd64) kubernetes/abcdef0\r\n\
Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json\r\n\
Authorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMzQ1Njc4OTAifQ.c2lnbmF0dXJl\r\n\
Accept-Encoding: gzip\r\n\r\n";

fn bench_http_request(c: &mut Criterion) {
    let r = |host: Option<&str>, prefix: Option<&str>, backend| HttpRoute {
        sni: None,
        host: host.map(str::to_string),
        path_prefix: prefix.map(str::to_string),
        backend,
    };
    let routes = vec![
        r(Some("*.apps.cluster.example"), None, 2),
        r(Some("api.cluster.example"), Some("/apis/metrics.k8s.io"), 1),
        r(Some("api.cluster.example"), Some("/api"), 0),
    ];
    let mut tables = [table(Algorithm::RoundRobin, 3), table(Algorithm::LeastConn, 3), table(Algorithm::RoundRobin, 3)];
    let rw = RequestRewrite { forwarded_for: Some(std::net::IpAddr::from([198, 18, 0, 7])) };
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("balance/http-request");
    g.bench_function("scan+route+pick", |b| {
        b.iter(|| {
            out.clear();
            let req = parse_request(black_box(KUBECTL), rw, &mut out).expect("valid").expect("complete");
            let bi = route::pick(&routes, None, None, req.host_name(KUBECTL), req.path(KUBECTL)).expect("routed");
            let t = &mut tables[bi];
            if let Decision::Server(i) = t.pick(hash_addr(std::net::IpAddr::from([198, 18, 0, 7]))) {
                t.session_started(i);
                t.session_ended(i);
            }
            black_box(bi)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_pick, bench_http_request);
criterion_main!(benches);
