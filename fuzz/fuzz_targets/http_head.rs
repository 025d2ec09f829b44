//! Fuzz the http-mode request/response head path (tcp-balancer mode http): any bytes must parse,
//! wait for more, or be refused without a panic; a head never claims more bytes than it was
//! given; a rewritten request head parses again to the same framing and is a fixed point of the
//! rewrite; the chunked-body scanner never consumes more than it was fed, split or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_balancer::http::chunked::ChunkedScanner;
use tcp_balancer::http::head::{Method, RequestRewrite, ResponseContext, parse_request, parse_response};

fuzz_target!(|data: &[u8]| {
    let rw = RequestRewrite { forwarded_for: Some("198.18.0.7".parse().unwrap()) };
    let mut out = Vec::new();
    if let Ok(Some(r)) = parse_request(data, rw, &mut out) {
        assert!(r.head_len <= data.len());
        assert!(r.path.end <= data.len());
        let mut again = Vec::new();
        let r2 = parse_request(&out, RequestRewrite::default(), &mut again)
            .expect("a rewritten head parses")
            .expect("and is complete");
        assert_eq!(r2.head_len, out.len());
        assert_eq!(r2.framing, r.framing);
        assert_eq!(r2.upgrade, r.upgrade);
        let mut third = Vec::new();
        parse_request(&again, RequestRewrite::default(), &mut third).unwrap();
        assert_eq!(third, again, "the rewrite is a fixed point");
    }
    for upgrade in [false, true] {
        let cx = ResponseContext { method: Method::Other, upgrade, client_keep_alive: true, client_minor: 1 };
        let mut out = Vec::new();
        if let Ok(Some(r)) = parse_response(data, cx, &mut out) {
            assert!(r.head_len <= data.len());
        }
    }
    let mut whole = ChunkedScanner::new();
    let n = whole.feed(data).map(|n| (n, whole.is_done()));
    // Fed in two pieces the scanner ends at the same place.
    let mut split = ChunkedScanner::new();
    let cut = data.len() / 3;
    let m = split.feed(&data[..cut]).and_then(|a| {
        if split.is_done() { Ok(a) } else { split.feed(&data[cut..]).map(|b| a + b) }
    });
    if let (Ok((n, done)), Ok(m)) = (n, m) {
        assert!(n <= data.len());
        assert_eq!(n, m);
        assert_eq!(done, split.is_done());
    }
});
