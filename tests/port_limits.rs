//! Port forwarding with the service's limits on (the agent's 1 KiB + 1 ms read pacing, the
//! relay's frame-rate limit that ends a session): the session must stay alive, in both modes.
//!
//! A test binary of its own, so these rate-bound transfers never share the machine with the
//! CPU-bound unlimited ones: a starved simulator reads a backlog of frames at once and counts
//! them as a burst, which is not what we are testing here.

mod port_common;

use port_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_echo_with_service_limits_keeps_the_session_alive() {
    basic_echo_session(true, limited_mib()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mux_echo_with_service_limits_keeps_the_session_alive() {
    mux_echo_session(true, limited_mib()).await;
}
