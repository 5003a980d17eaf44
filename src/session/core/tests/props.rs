//! Random input sequences: the machine never panics and always ends within its timers.
use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Agent(u8),
    Close,
    Garbage(Vec<u8>),
    Tick(u16),
    Lost,
    Restored,
    ResumeFails(u8),
    Signal(u8),
    Escape,
    Send(u8),
    InputEnded,
    HandlerEnded(u8),
    Terminated,
    ToggleAcks,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<u8>().prop_map(Step::Agent),
        Just(Step::Close),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Step::Garbage),
        any::<u16>().prop_map(Step::Tick),
        Just(Step::Lost),
        Just(Step::Restored),
        any::<u8>().prop_map(Step::ResumeFails),
        any::<u8>().prop_map(Step::Signal),
        Just(Step::Escape),
        any::<u8>().prop_map(Step::Send),
        Just(Step::InputEnded),
        any::<u8>().prop_map(Step::HandlerEnded),
        Just(Step::Terminated),
        Just(Step::ToggleAcks),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn never_panics_and_always_ends(steps in proptest::collection::vec(step(), 0..60)) {
        let mut w = World::connected();
        for s in steps {
            match s {
                Step::Agent(n) => {
                    let kinds = [PayloadType::OUTPUT, PayloadType::HANDSHAKE_REQUEST, PayloadType::HANDSHAKE_COMPLETE, PayloadType::EXIT_CODE, PayloadType::FLAG, PayloadType::STDERR];
                    let t = kinds[n as usize % kinds.len()];
                    let body: &[u8] = match t {
                        PayloadType::HANDSHAKE_REQUEST => br#"{"AgentVersion":"3.3.0.0","RequestedClientActions":[{"ActionType":"SessionType","ActionParameters":{"SessionType":"Port","Properties":{"type":"LocalPortForwarding"}}}]}"#,
                        PayloadType::HANDSHAKE_COMPLETE => br#"{"HandshakeTimeToComplete":1,"CustomerMessage":""}"#,
                        PayloadType::EXIT_CODE => b"EXIT_CODE: 4",
                        _ => b"x",
                    };
                    w.agent(t, body);
                }
                Step::Close => w.channel_closed(br#"{"Output":""}"#),
                Step::Garbage(g) => { w.s.handle_frame(w.now, &g); w.settle(); }
                Step::Tick(ms) => w.advance(Duration::from_millis(u64::from(ms) * 4)),
                Step::Lost => { w.s.transport_lost(w.now, "lost", false); w.settle(); }
                Step::Restored => { w.s.transport_restored(w.now); w.settle(); }
                Step::ResumeFails(n) => {
                    let f = match n % 3 {
                        0 => ResumeFailure::Network("x".into()),
                        1 => ResumeFailure::Service { status: Some(500), code: None, message: "x".into() },
                        _ => ResumeFailure::Service { status: Some(400), code: None, message: "x".into() },
                    };
                    w.s.resume_failed(w.now, &f);
                    w.settle();
                }
                Step::Signal(n) => {
                    let sigs = [Signal::Interrupt, Signal::Quit, Signal::Suspend, Signal::Terminate, Signal::HangUp];
                    w.local(Local::Signal(sigs[n as usize % sigs.len()]));
                }
                Step::Escape => w.local(Local::End(LocalEnd::Escape)),
                Step::Send(n) => w.local(Local::Send { payload_type: PayloadType::OUTPUT, payload: Bytes::from(vec![n; 10]), priority: Priority::Data }),
                Step::InputEnded => w.local(Local::InputEnded),
                Step::HandlerEnded(n) => {
                    let e = match n % 3 { 0 => HandlerExit::Done, 1 => HandlerExit::OutputClosed, _ => HandlerExit::OutputFailed("x".into()) };
                    w.local(Local::HandlerEnded(e));
                }
                Step::Terminated => { w.s.terminate_done(w.now); w.settle(); }
                Step::ToggleAcks => w.acks = !w.acks,
            }
        }
        // Whatever happened, a user who leaves (SIGTERM) gets out within the timers, even
        // with an agent that went silent and a handler that never returns.
        w.acks = false;
        w.local(Local::Signal(Signal::Terminate));
        let mut waited = Duration::ZERO;
        while !w.s.is_ended() {
            prop_assert!(waited <= secs(30), "still not ended after {waited:?}: {:?}", w.events.last());
            match w.s.poll_timeout() {
                Some(t) => {
                    let d = t.saturating_duration_since(w.now).max(Duration::from_millis(1));
                    waited += d;
                    w.advance(d);
                }
                None => prop_assert!(false, "no timer and not ended"),
            }
        }
        prop_assert!(w.s.poll_timeout().is_none());
    }
}
