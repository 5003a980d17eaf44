use super::frame::{self, Cmd, Frame};
use super::*;
use proptest::prelude::*;

/// Any base instant will do: the Mux only ever compares instants it is given. The one place the
/// tests read the clock, so a lint against `Instant::now` in this module can allow it here.
#[allow(clippy::disallowed_methods)]
fn t0() -> Instant {
    Instant::now()
}

fn client(now: Instant) -> Mux {
    Mux::new(MuxConfig::new(Role::Client, None), now)
}

fn server(now: Instant) -> Mux {
    Mux::new(MuxConfig::new(Role::Server, None), now)
}

/// Everything queued for the peer, decoded.
fn frames(m: &mut Mux) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    while let Some(b) = m.poll_output() {
        buf.extend_from_slice(&b);
    }
    let mut out = Vec::new();
    while let Some(f) = frame::decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "output ends mid-frame");
    out
}

fn events(m: &mut Mux) -> Vec<MuxEvent> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn wire(cmd: Cmd, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    frame::encode(
        &Frame {
            version: 1,
            cmd,
            stream_id: sid,
            data: Bytes::copy_from_slice(data),
        },
        &mut b,
    )
    .unwrap();
    b.to_vec()
}

fn summary(fs: &[Frame]) -> Vec<(Cmd, u32, usize)> {
    fs.iter()
        .map(|f| (f.cmd, f.stream_id, f.data.len()))
        .collect()
}

#[test]
fn client_ids_are_odd_from_3_and_each_open_sends_one_syn() {
    let now = t0();
    let mut m = client(now);
    assert_eq!(m.open_stream(), Ok(3));
    assert_eq!(m.open_stream(), Ok(5));
    assert_eq!(m.open_stream(), Ok(7));
    assert_eq!(
        summary(&frames(&mut m)),
        vec![(Cmd::Syn, 3, 0), (Cmd::Syn, 5, 0), (Cmd::Syn, 7, 0)]
    );
    assert_eq!(m.stream_count(), 3);
}

#[test]
fn server_ids_are_even_from_2() {
    let mut m = server(t0());
    assert_eq!(m.open_stream(), Ok(2));
    assert_eq!(m.open_stream(), Ok(4));
    assert_eq!(m.open_stream(), Ok(6));
}

#[test]
fn stream_ids_run_out_without_wrapping() {
    let mut m = client(t0());
    m.last_stream_id = u32::MAX - 2;
    assert_eq!(m.open_stream(), Ok(u32::MAX));
    assert_eq!(m.open_stream(), Err(MuxError::StreamIdsExhausted));
}

#[test]
fn writes_split_at_max_frame_size() {
    let mut m = client(t0());
    let id = m.open_stream().unwrap();
    let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    m.write(id, &data).unwrap();
    m.write(id, &[]).unwrap(); // nothing, as xtaci
    let fs = frames(&mut m);
    assert_eq!(
        summary(&fs),
        vec![
            (Cmd::Syn, 3, 0),
            (Cmd::Psh, 3, 32768),
            (Cmd::Psh, 3, 32768),
            (Cmd::Psh, 3, 70_000 - 65536)
        ]
    );
    let joined: Vec<u8> = fs.iter().flat_map(|f| f.data.to_vec()).collect();
    assert_eq!(joined, data);
}

#[test]
fn configured_frame_size_is_used_and_clamped() {
    let mut cfg = MuxConfig::new(Role::Client, None);
    cfg.max_frame_size = 1000;
    let mut m = Mux::new(cfg.clone(), t0());
    let id = m.open_stream().unwrap();
    m.write(id, &[7; 2500]).unwrap();
    let lens: Vec<usize> = frames(&mut m).iter().map(|f| f.data.len()).collect();
    assert_eq!(lens, vec![0, 1000, 1000, 500]);

    cfg.max_frame_size = 1 << 20;
    let mut m = Mux::new(cfg, t0());
    let id = m.open_stream().unwrap();
    m.write(id, &vec![7; 70_000]).unwrap();
    let lens: Vec<usize> = frames(&mut m).iter().map(|f| f.data.len()).collect();
    assert_eq!(lens, vec![0, 65535, 70_000 - 65535]);
}

#[test]
fn commands_on_unknown_streams_fail() {
    let mut m = client(t0());
    assert_eq!(m.write(3, b"x"), Err(MuxError::UnknownStream(3)));
    assert_eq!(m.close_write(3), Err(MuxError::UnknownStream(3)));
    assert_eq!(m.close(3), Err(MuxError::UnknownStream(3)));
    assert!(m.poll_output().is_none());
}

#[test]
fn server_sees_open_data_fin_and_does_not_answer_syn() {
    let now = t0();
    let mut s = server(now);
    let mut input = wire(Cmd::Syn, 3, &[]);
    input.extend(wire(Cmd::Psh, 3, b"hello"));
    input.extend(wire(Cmd::Fin, 3, &[]));
    s.handle_input(now, &input).unwrap();
    assert_eq!(
        events(&mut s),
        vec![
            MuxEvent::Opened(3),
            MuxEvent::Data(3, Bytes::from_static(b"hello")),
            MuxEvent::Fin(3)
        ]
    );
    assert!(s.poll_output().is_none(), "the server does not answer SYN");
    assert_eq!(s.stream_count(), 1, "still open for writing");
    s.write(3, b"bye").unwrap();
    s.close_write(3).unwrap();
    assert_eq!(events(&mut s), vec![MuxEvent::Closed(3)]);
    assert_eq!(
        summary(&frames(&mut s)),
        vec![(Cmd::Psh, 3, 3), (Cmd::Fin, 3, 0)]
    );
    assert_eq!(s.stream_count(), 0);
}

#[test]
fn half_close_local_first_still_receives() {
    let now = t0();
    let mut c = client(now);
    let id = c.open_stream().unwrap();
    c.write(id, b"req").unwrap();
    c.close_write(id).unwrap();
    c.close_write(id).unwrap(); // idempotent, no second FIN
    assert_eq!(c.write(id, b"more"), Err(MuxError::StreamWriteClosed(id)));
    assert_eq!(
        summary(&frames(&mut c)),
        vec![(Cmd::Syn, 3, 0), (Cmd::Psh, 3, 3), (Cmd::Fin, 3, 0)]
    );
    assert_eq!(c.stream_count(), 1);

    let mut input = wire(Cmd::Psh, id, b"resp");
    input.extend(wire(Cmd::Fin, id, &[]));
    c.handle_input(now, &input).unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            MuxEvent::Data(id, Bytes::from_static(b"resp")),
            MuxEvent::Fin(id),
            MuxEvent::Closed(id)
        ]
    );
    assert_eq!(c.stream_count(), 0);
    assert_eq!(c.write(id, b"x"), Err(MuxError::UnknownStream(id)));
}

#[test]
fn half_close_peer_first_drops_later_peer_data() {
    let now = t0();
    let mut c = client(now);
    let id = c.open_stream().unwrap();
    frames(&mut c);
    let mut input = wire(Cmd::Psh, id, b"a");
    input.extend(wire(Cmd::Fin, id, &[]));
    input.extend(wire(Cmd::Psh, id, b"after fin")); // a broken peer
    input.extend(wire(Cmd::Fin, id, &[])); // repeated
    c.handle_input(now, &input).unwrap();
    assert_eq!(
        events(&mut c),
        vec![
            MuxEvent::Data(id, Bytes::from_static(b"a")),
            MuxEvent::Fin(id)
        ]
    );
    // We may still write.
    c.write(id, b"tail").unwrap();
    c.close_write(id).unwrap();
    assert_eq!(events(&mut c), vec![MuxEvent::Closed(id)]);
    assert_eq!(
        summary(&frames(&mut c)),
        vec![(Cmd::Psh, 3, 4), (Cmd::Fin, 3, 0)]
    );
}

#[test]
fn full_close_forgets_the_stream_like_xtaci() {
    let now = t0();
    let mut c = client(now);
    let id = c.open_stream().unwrap();
    c.close(id).unwrap();
    assert_eq!(
        summary(&frames(&mut c)),
        vec![(Cmd::Syn, 3, 0), (Cmd::Fin, 3, 0)]
    );
    let mut input = wire(Cmd::Psh, id, b"late");
    input.extend(wire(Cmd::Fin, id, &[]));
    c.handle_input(now, &input).unwrap();
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(c.stream_count(), 0);

    // After a half-close, close() sends no second FIN.
    let id = c.open_stream().unwrap();
    c.close_write(id).unwrap();
    c.close(id).unwrap();
    assert_eq!(
        summary(&frames(&mut c)),
        vec![(Cmd::Syn, 5, 0), (Cmd::Fin, 5, 0)]
    );
}

#[test]
fn unknown_streams_nop_upd_and_empty_psh_are_ignored() {
    let now = t0();
    let mut c = client(now);
    let mut input = wire(Cmd::Psh, 9, b"nobody");
    input.extend(wire(Cmd::Fin, 9, &[]));
    input.extend(wire(Cmd::Nop, 0, &[]));
    input.extend(wire(Cmd::Upd, 9, &[0; 8]));
    input.extend(wire(Cmd::Syn, 2, &[])); // the client accepts no streams
    input.extend(wire(Cmd::Psh, 2, b"x"));
    c.handle_input(now, &input).unwrap();
    let id = c.open_stream().unwrap();
    c.handle_input(now, &wire(Cmd::Psh, id, &[])).unwrap();
    assert_eq!(events(&mut c), vec![]);
    assert_eq!(c.stream_count(), 1);
}

#[test]
fn server_ignores_duplicate_and_wrong_parity_syn() {
    let now = t0();
    let mut s = server(now);
    let mut input = wire(Cmd::Syn, 3, &[]);
    input.extend(wire(Cmd::Syn, 3, &[]));
    input.extend(wire(Cmd::Syn, 4, &[]));
    s.handle_input(now, &input).unwrap();
    assert_eq!(events(&mut s), vec![MuxEvent::Opened(3)]);
    assert_eq!(s.open_stream(), Ok(2));
    assert_eq!(s.open_stream(), Ok(4));
}

#[test]
fn byte_at_a_time_input_is_reassembled() {
    let now = t0();
    let mut s = server(now);
    let mut input = wire(Cmd::Syn, 3, &[]);
    input.extend(wire(Cmd::Psh, 3, &[42; 1000]));
    input.extend(wire(Cmd::Fin, 3, &[]));
    for b in &input {
        s.handle_input(now, std::slice::from_ref(b)).unwrap();
        assert!(s.input.len() <= 8 + 1000);
    }
    assert_eq!(
        events(&mut s),
        vec![
            MuxEvent::Opened(3),
            MuxEvent::Data(3, Bytes::from(vec![42; 1000])),
            MuxEvent::Fin(3)
        ]
    );
}

#[test]
fn bad_version_and_unknown_command_kill_the_session() {
    let now = t0();
    for bad in [
        vec![2u8, 3, 0, 0, 0, 0, 0, 0],
        vec![1u8, 9, 0, 0, 0, 0, 0, 0],
    ] {
        let mut s = server(now);
        let mut input = wire(Cmd::Syn, 3, &[]);
        input.extend(&bad);
        input.extend(wire(Cmd::Psh, 3, b"never"));
        let err = s.handle_input(now, &input).unwrap_err();
        assert!(matches!(
            err,
            MuxError::UnsupportedVersion(2) | MuxError::Frame(FrameError::UnknownCommand(9))
        ));
        assert_eq!(events(&mut s), vec![MuxEvent::Opened(3)]);
        assert!(s.is_closed());
        assert_eq!(s.stream_count(), 0);
        assert_eq!(s.handle_input(now, b"x"), Err(MuxError::Closed));
        assert_eq!(s.write(3, b"x"), Err(MuxError::Closed));
        assert_eq!(s.open_stream(), Err(MuxError::Closed));
    }
}

#[test]
fn frames_over_the_buffer_limit_are_refused() {
    let now = t0();
    let mut cfg = MuxConfig::new(Role::Server, None);
    cfg.max_frame_buffer_bytes = 100;
    let mut s = Mux::new(cfg, now);
    s.handle_input(now, &wire(Cmd::Psh, 3, &[0; 92])).unwrap();
    let header = &wire(Cmd::Psh, 3, &[0; 93])[..8];
    assert_eq!(
        s.handle_input(now, header),
        Err(MuxError::FrameTooLarge { len: 101, max: 100 })
    );
}

fn keep_alive_client(now: Instant) -> Mux {
    Mux::new(MuxConfig::new(Role::Client, Some(KeepAlive::DEFAULT)), now)
}

#[test]
fn keep_alive_sends_nop_every_interval() {
    let t0 = t0();
    let s = Duration::from_secs;
    let mut m = keep_alive_client(t0);
    assert_eq!(m.poll_timeout(), Some(t0 + s(10)));
    m.handle_timeout(t0 + s(9));
    assert!(m.poll_output().is_none(), "spurious wake-up does nothing");
    m.handle_timeout(t0 + s(10));
    assert_eq!(summary(&frames(&mut m)), vec![(Cmd::Nop, 0, 0)]);
    assert_eq!(m.poll_timeout(), Some(t0 + s(20)));
    // A late wake-up sends one NOP and keeps the phase.
    m.handle_input(t0 + s(25), &wire(Cmd::Nop, 0, &[])).unwrap();
    m.handle_timeout(t0 + s(27));
    assert_eq!(summary(&frames(&mut m)), vec![(Cmd::Nop, 0, 0)]);
    assert_eq!(m.poll_timeout(), Some(t0 + s(30)));
}

#[test]
fn keep_alive_times_out_after_a_silent_period() {
    let t0 = t0();
    let s = Duration::from_secs;
    let mut m = keep_alive_client(t0);
    let id = m.open_stream().unwrap();
    for t in [10, 20] {
        m.handle_timeout(t0 + s(t));
    }
    // Input during the first period keeps the session alive at the first check.
    m.handle_input(t0 + s(29), &wire(Cmd::Nop, 0, &[])).unwrap();
    m.handle_timeout(t0 + s(30));
    assert!(!m.is_closed());
    assert_eq!(events(&mut m), vec![]);
    // Nothing in (30, 60]: dead at 60, not before.
    for t in [40, 50] {
        m.handle_timeout(t0 + s(t));
        assert!(!m.is_closed());
    }
    assert_eq!(m.poll_timeout(), Some(t0 + s(60)));
    m.handle_timeout(t0 + s(60));
    assert!(m.is_closed());
    assert_eq!(events(&mut m), vec![MuxEvent::KeepAliveTimeout]);
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(m.stream_count(), 0);
    assert_eq!(m.write(id, b"x"), Err(MuxError::Closed));
    m.handle_timeout(t0 + s(90));
    assert_eq!(events(&mut m), vec![], "dies once");
}

#[test]
fn keep_alive_first_check_needs_input_since_start() {
    let t0 = t0();
    let mut m = keep_alive_client(t0);
    m.handle_timeout(t0 + Duration::from_secs(30));
    assert_eq!(events(&mut m), vec![MuxEvent::KeepAliveTimeout]);
}

#[test]
fn keep_alive_disabled_means_no_timer_and_no_nop() {
    let t0 = t0();
    let mut m = client(t0);
    assert_eq!(m.poll_timeout(), None);
    m.handle_timeout(t0 + Duration::from_secs(3600));
    assert!(m.poll_output().is_none());
    assert_eq!(events(&mut m), vec![]);
    assert!(!m.is_closed());
}

#[test]
fn zero_keep_alive_periods_do_not_spin() {
    let t0 = t0();
    let ka = KeepAlive {
        interval: Duration::ZERO,
        timeout: Duration::ZERO,
    };
    let mut m = Mux::new(MuxConfig::new(Role::Client, Some(ka)), t0);
    m.handle_input(t0, &wire(Cmd::Nop, 0, &[])).unwrap();
    m.handle_timeout(t0 + Duration::from_secs(1));
    assert!(m.poll_timeout().unwrap() > t0 + Duration::from_secs(1));
}

proptest! {
    #[test]
    fn hostile_input_never_panics(
        server_role: bool,
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..32),
    ) {
        let now = t0();
        let role = if server_role { Role::Server } else { Role::Client };
        let mut cfg = MuxConfig::new(role, Some(KeepAlive::DEFAULT));
        cfg.max_frame_buffer_bytes = 300;
        let mut m = Mux::new(cfg, now);
        for c in &chunks {
            let _ = m.handle_input(now, c);
            while m.poll_event().is_some() {}
            m.handle_timeout(now + Duration::from_secs(31));
        }
        let _ = m.poll_output();
    }

    /// Mostly-valid frames (version 1, small commands) reach deeper states than pure noise.
    #[test]
    fn plausible_frames_never_panic(
        server_role: bool,
        frames in prop::collection::vec((0u8..6, 0u32..8, prop::collection::vec(any::<u8>(), 0..20)), 0..40),
        cut in 1usize..50,
    ) {
        let now = t0();
        let role = if server_role { Role::Server } else { Role::Client };
        let mut m = Mux::new(MuxConfig::new(role, None), now);
        let mut bytes = Vec::new();
        for (cmd, sid, data) in &frames {
            bytes.extend([1, *cmd]);
            bytes.extend((data.len() as u16).to_le_bytes());
            bytes.extend(sid.to_le_bytes());
            bytes.extend(data);
        }
        for c in bytes.chunks(cut) {
            if m.handle_input(now, c).is_err() {
                break;
            }
            while let Some(ev) = m.poll_event() {
                if let MuxEvent::Opened(id) | MuxEvent::Fin(id) = ev {
                    let _ = m.write(id, b"x");
                    let _ = m.close_write(id);
                }
            }
        }
    }
}
