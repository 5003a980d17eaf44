//! The fuzz targets' drivers (`fuzz/`, cargo-fuzz needs nightly) on stable, with a bounded
//! number of random cases, so CI runs them on every change. A crash found by the fuzzer becomes
//! a case in `regressions` below.

use proptest::prelude::*;
use ssm_plugin::fuzzing::{channel_frames, session_machine};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_channel_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        channel_frames(&data);
    }

    #[test]
    fn the_session_machine_never_panics_and_always_ends(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let took = session_machine(&data);
        prop_assert!(took <= std::time::Duration::from_secs(30));
    }
}

#[test]
fn regressions() {
    // Tapes that once mattered; kept as they are.
    for tape in [
        &b""[..],
        &[0u8; 64],
        &[255u8; 64],
        b"\x05\x06\x05\x06\x08\x03",
    ] {
        channel_frames(tape);
        session_machine(tape);
    }
}
