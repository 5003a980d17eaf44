//! Fuzzes the session lifecycle machine with frames, time, link and resume events, signals and
//! handler ends: it must never panic, and must end within its timers after SIGTERM. The same
//! driver runs on stable, bounded, in `tests/fuzz_stable.rs`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ssm_plugin::fuzzing::session_machine(data);
});
