//! The config parser must never panic, whatever the file holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rotate_cli::Config::parse(text, std::path::Path::new("/fuzz/rotate.toml"));
    }
});
