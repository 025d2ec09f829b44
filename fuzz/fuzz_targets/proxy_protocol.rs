//! Fuzz the PROXY protocol parser (tcp-balancer `accept-proxy`): any bytes must parse or be
//! refused without a panic, a header never claims more bytes than it was given, and what parses
//! re-emits to a header that parses to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_balancer::proxy_protocol::{Header, Version, emit, parse};

fuzz_target!(|data: &[u8]| {
    // Every prefix is either incomplete, a header or an error; never a panic.
    for cut in [data.len() / 2, data.len()] {
        let _ = parse(&data[..cut]);
    }
    if let Ok(Some((h, len))) = parse(data) {
        assert!(len <= data.len());
        for v in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            emit(&h, v, &mut out);
            let (again, n) = parse(&out).expect("emitted header parses").expect("complete");
            assert_eq!(n, out.len());
            match (h, again) {
                (Header::Local, Header::Local) => {}
                (Header::Tcp { src: a, dst: b }, Header::Tcp { src: c, dst: d }) => {
                    assert_eq!(a.port(), c.port());
                    assert_eq!(b.port(), d.port());
                }
                (x, y) => panic!("{x:?} re-parsed as {y:?}"),
            }
        }
    }
});
