//! Fuzzes the smux demultiplexer with arbitrary peer bytes: it must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ssm_plugin::smux::{Mux, MuxConfig, Role};

fuzz_target!(|data: &[u8]| {
    let now = std::time::Instant::now();
    let mut mux = Mux::new(MuxConfig::new(Role::Server, None), now);
    let _ = mux.handle_input(now, data);
    while mux.poll_event().is_some() {}
    while mux.poll_output().is_some() {}
});
