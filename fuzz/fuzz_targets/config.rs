//! Fuzz the config loader (`hastack config check`): any text is accepted or refused with located
//! diagnostics, never a panic; what is accepted writes back (Config::to_toml) to an equal config.
#![no_main]

use hastack::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = Config::from_str_named("fuzz.toml", &text) {
        let again = c.to_toml().expect("an accepted config serializes");
        let back = Config::from_str_named("again.toml", &again).expect("written config loads");
        assert_eq!(back, c, "round trip changed the config:\n{again}");
    }
});
