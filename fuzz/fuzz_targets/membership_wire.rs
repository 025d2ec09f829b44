//! Fuzz the membership datagram parser and the authenticated receive path: never panic, and
//! whatever parses must re-emit to the same bytes.
#![no_main]

use ha_membership::auth::{Authenticator, ReplayGuard};
use ha_membership::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, msg)) = wire::parse(data) {
        let again = wire::emit(&header, &msg).expect("a parsed message re-emits");
        assert_eq!(&again[..], data);
    }
    let auth = Authenticator::from_key_material(b"fuzz key material, 32 bytes long!");
    let mut guard = ReplayGuard::default();
    let _ = auth.open(data, 0, &mut guard);
});
