//! The VM configuration parser on arbitrary input: it must return (never panic, never
//! hang) and every error must be a single printable line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = model::config::parse(&text) {
        let msg = e.to_string();
        assert!(
            !msg.contains('\n') && !msg.contains('\r'),
            "multi-line error: {msg:?}"
        );
    }
});
