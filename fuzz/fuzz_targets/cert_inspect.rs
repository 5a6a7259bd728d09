//! Certificate bundles come from Vault and from disk: inspecting them must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pki_ops::parse_bundle(text, "fuzz");
        let _ = pki_ops::CertInfo::from_pem(text);
    }
    let _ = pki_ops::CertInfo::from_der(data, "fuzz");
});
