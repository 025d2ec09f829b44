//! The http-mode header scan (tcp-balancer's per-request hot path): parse a request head and
//! write its rewrite for the server (X-Forwarded-For added), and the same for a response head,
//! for a kubectl-sized request and a browser-sized one; plus the chunked-body scanner.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tcp_balancer::http::chunked::ChunkedScanner;
use tcp_balancer::http::head::{Method, RequestRewrite, ResponseContext, parse_request, parse_response};

const KUBECTL: &[u8] = b"GET /api/v1/namespaces/kube-system/pods?limit=500 HTTP/1.1\r\n\
Host: 198.18.0.100:6443\r\n\
User-Agent: kubectl/v1.31.0 (linux/amd64) kubernetes/abcdef0\r\n\
Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json\r\n\
Authorization: Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMzQ1Njc4OTAifQ.eyJpc3MiOiJrdWJlcm5ldGVzL3NlcnZpY2VhY2NvdW50In0.c2lnbmF0dXJl\r\n\
Kubectl-Command: kubectl get\r\n\
Kubectl-Session: 0a1b2c3d-4e5f-6789-abcd-ef0123456789\r\n\
Accept-Encoding: gzip\r\n\r\n";

const BROWSER: &[u8] = b"GET /static/app.3f2a1b.js?v=42 HTTP/1.1\r\n\
Host: www.example.com\r\n\
Connection: keep-alive\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36\r\n\
Accept: */*\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Dest: script\r\n\
Referer: https://www.example.com/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; consent=1\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Audit-Id: 8c1b2f3e-1111-2222-3333-444455556666\r\n\
Cache-Control: no-cache, private\r\n\
Content-Type: application/json\r\n\
X-Kubernetes-Pf-Flowschema-Uid: 5d9a1c2e-aaaa-bbbb-cccc-ddddeeeeffff\r\n\
X-Kubernetes-Pf-Prioritylevel-Uid: 6e0b2d3f-aaaa-bbbb-cccc-ddddeeeeffff\r\n\
Date: Wed, 25 Nov 2026 16:00:00 GMT\r\n\
Content-Length: 18234\r\n\r\n";

fn bench_heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("http/head");
    let rw = RequestRewrite { forwarded_for: Some("198.18.0.7".parse().unwrap()) };
    let mut out = Vec::with_capacity(4096);
    for (name, head) in [("request-kubectl", KUBECTL), ("request-browser", BROWSER)] {
        g.throughput(Throughput::Bytes(head.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                let r = parse_request(black_box(head), rw, &mut out).unwrap().unwrap();
                black_box((r.head_len, out.len()))
            })
        });
    }
    let cx = ResponseContext { method: Method::Other, upgrade: false, client_keep_alive: true, client_minor: 1 };
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    g.bench_function("response-apiserver", |b| {
        b.iter(|| {
            out.clear();
            let r = parse_response(black_box(RESPONSE), cx, &mut out).unwrap().unwrap();
            black_box((r.head_len, out.len()))
        })
    });
    g.finish();
}

fn bench_chunked(c: &mut Criterion) {
    // A watch stream: 200 events of ~300 bytes each, as chunks.
    let mut body = Vec::new();
    for i in 0..200 {
        let ev = format!("{{\"type\":\"MODIFIED\",\"object\":{{\"kind\":\"Pod\",\"n\":{i},\"pad\":\"{}\"}}}}\n", "x".repeat(240));
        body.extend_from_slice(format!("{:x}\r\n", ev.len()).as_bytes());
        body.extend_from_slice(ev.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("http/chunked");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("watch-200-events", |b| {
        b.iter(|| {
            let mut s = ChunkedScanner::new();
            let n = s.feed(black_box(&body)).unwrap();
            assert!(s.is_done());
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_heads, bench_chunked);
criterion_main!(benches);
