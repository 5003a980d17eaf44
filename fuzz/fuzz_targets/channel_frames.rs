//! Fuzzes `Channel` with frames (raw and well-formed), time, sends and link losses: it must
//! never panic. The same driver runs on stable, bounded, in `tests/fuzz_stable.rs`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ssm_plugin::fuzzing::channel_frames(data));
