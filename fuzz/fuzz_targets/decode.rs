//! Fuzzes the ClientMessage decoder: it must never panic, and whatever it accepts must
//! re-encode to the same bytes. Run: `cargo +nightly fuzz run decode` (seeds: fuzz/corpus/decode).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ssm_plugin::wire::ClientMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ClientMessage::decode(data) {
        // The only non-canonical field is the message type's padding (NULs or spaces).
        let again = ClientMessage::decode(&m.encode()).expect("re-encoded frames decode");
        assert_eq!(again, m);
    }
});
