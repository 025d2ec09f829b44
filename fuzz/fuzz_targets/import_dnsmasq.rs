//! Fuzz the dnsmasq importer (`hastack import`): any text converts without a panic, every listed
//! line is inside the input, and the TOML it produces passes `hastack config check`.
#![no_main]

use hastack::import::{Kind, convert, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let r = convert(Kind::Dnsmasq, &text);
    let lines = text.lines().count();
    for u in &r.unconverted {
        assert!(u.line >= 1 && u.line <= lines, "line {} outside the input", u.line);
    }
    if let Err(d) = validate(&r.toml) {
        panic!("the conversion does not validate:\n{d}\n{}", r.toml);
    }
});
