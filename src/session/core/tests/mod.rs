//! The session machine as a specification: each test drives a [`Session`] with simulated time
//! and a scripted agent, and asserts what it asks the driver to do and how it ends. No sockets,
//! no sleeps.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::channel::Priority;
use crate::exit::Exit;
use crate::session::handler::{HandlerExit, LocalEnd};
use crate::wire::{FlagValue, PayloadType};

mod liveness;
mod world;
use world::{secs, signal_ended, World};

#[test]
fn a_clean_remote_exit_ends_with_zero_after_the_output() {
    let mut w = World::shell();
    w.agent(PayloadType::OUTPUT, b"bye\r\n");
    w.channel_closed(br#"{"Output":""}"#);
    assert_eq!(
        w.delivered,
        vec![(PayloadType::OUTPUT, Bytes::from_static(b"bye\r\n"))]
    );
    assert_eq!(
        w.outcome(),
        Some(Outcome {
            lost: false,
            exit: Exit::Normal,
            report: Report::Exiting
        })
    );
    assert_eq!(w.s.poll_timeout(), None, "an ended session has no timers");
}

#[test]
fn the_remote_exit_code_becomes_ours() {
    let mut w = World::connected();
    w.handshake("NonInteractiveCommands", "3.3.0.0", None);
    w.agent(PayloadType::EXIT_CODE, b"EXIT_CODE: 3");
    w.channel_closed(br#"{"Output":""}"#);
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Remote(3)));
}

#[test]
fn a_service_message_on_close_exits_one_with_the_message() {
    let mut w = World::shell();
    w.channel_closed(br#"{"Output":"Session terminated by admin"}"#);
    assert_eq!(
        w.outcome(),
        Some(Outcome {
            lost: false,
            exit: Exit::ClosedWithError,
            report: Report::ServiceMessage("Session terminated by admin".into())
        })
    );
}

#[test]
fn an_unreadable_channel_closed_is_a_protocol_error_not_a_clean_exit() {
    let mut w = World::shell();
    w.channel_closed(b"not json");
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Protocol));
}

#[test]
fn agent_never_sends_a_type_error_after_sixty_seconds() {
    let mut w = World::connected();
    w.advance(secs(59));
    assert_eq!(w.outcome(), None);
    w.advance(secs(1));
    // No agent version: nobody can take the flag, so the API is asked, bounded.
    assert!(w.asked_api());
    w.advance(TERMINATE_TIMEOUT);
    let o = w.outcome().expect("ended");
    assert_eq!(o.exit, Exit::Unavailable);
    assert!(
        matches!(&o.report, Report::Error(t) if t.contains("did not start the session within 60 seconds")),
        "{o:?}"
    );
}

#[test]
fn escape_ends_a_shell_through_the_api_which_shells_act_on() {
    let mut w = World::shell();
    w.local(Local::End(LocalEnd::Escape));
    assert!(
        !w.sent_flag(FlagValue::TerminateSession),
        "shell plugins ignore flags"
    );
    assert!(w.asked_api());
    assert_eq!(w.outcome(), None, "waits (bounded) for the API");
    w.s.terminate_done(w.now);
    w.settle();
    assert_eq!(
        w.outcome(),
        Some(Outcome {
            lost: false,
            exit: Exit::Normal,
            report: Report::Exiting
        })
    );
}

#[test]
fn a_port_session_ends_with_the_flag_once_acknowledged() {
    let mut w = World::port();
    w.local(Local::End(LocalEnd::Escape));
    assert!(w.sent_flag(FlagValue::TerminateSession));
    assert!(!w.asked_api(), "the agent acknowledged the flag");
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Normal));
}

#[test]
fn an_unacknowledged_flag_falls_back_to_the_api_within_the_bounds() {
    let mut w = World::port();
    w.acks = false;
    w.local(Local::End(LocalEnd::Escape));
    assert!(w.sent_flag(FlagValue::TerminateSession));
    w.advance(TERMINATE_TIMEOUT);
    assert!(w.asked_api());
    w.advance(TERMINATE_TIMEOUT);
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Normal));
}

#[test]
fn escape_during_an_outage_ends_the_session_at_once_through_the_api() {
    let mut w = World::shell();
    w.s.transport_lost(w.now, "read failed", false);
    w.settle();
    assert!(w.took(|e| matches!(e, Event::Resume)));
    // ResumeSession keeps failing with a 500.
    let five_hundred = ResumeFailure::Service {
        status: Some(500),
        code: Some("InternalServerError".into()),
        message: "ResumeSession failed: 500".into(),
    };
    w.s.resume_failed(w.now, &five_hundred);
    w.advance(secs(1));
    assert!(w.took(|e| matches!(e, Event::Resume)), "retried");
    w.local(Local::End(LocalEnd::Escape));
    assert!(w.took(|e| matches!(e, Event::DropLink)), "stops resuming");
    assert!(!w.s.wants_link());
    assert!(w.asked_api(), "no link for the flag: the API");
    w.s.terminate_done(w.now);
    w.settle();
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Normal));
}

#[test]
fn sigint_in_a_port_session_during_an_outage_ends_it() {
    let mut w = World::port();
    w.s.transport_lost(w.now, "read failed", false);
    w.settle();
    w.local(Local::Signal(Signal::Interrupt));
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, Event::Status(t) if t == TERMINATE_LINE)));
    w.advance(TERMINATE_TIMEOUT);
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Normal));
}

#[test]
fn sighup_tells_the_agent_then_ends_with_129() {
    let mut w = World::shell();
    w.local(Local::Signal(Signal::HangUp));
    assert!(w.asked_api());
    assert_eq!(w.outcome(), None);
    w.advance(TERMINATE_TIMEOUT);
    assert_eq!(
        w.outcome(),
        Some(signal_ended(1)),
        "bounded even when the API does not answer"
    );
}

#[test]
fn sigterm_in_a_port_session_exits_143() {
    let mut w = World::port();
    w.local(Local::Signal(Signal::Terminate));
    assert!(w.sent_flag(FlagValue::TerminateSession));
    assert_eq!(w.outcome(), Some(signal_ended(15)));
}

#[test]
fn sigint_in_a_shell_is_ctrl_c_for_the_remote() {
    let mut w = World::shell();
    w.local(Local::Signal(Signal::Interrupt));
    assert!(w
        .sent
        .iter()
        .any(|m| m.payload_type == PayloadType::OUTPUT && m.payload[..] == [0x03]));
    assert_eq!(w.outcome(), None);
}

#[test]
fn sigint_before_the_session_started_gives_up_waiting() {
    let mut w = World::connected();
    w.local(Local::Signal(Signal::Interrupt));
    w.advance(TERMINATE_TIMEOUT);
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Interrupted));
}

#[test]
fn sigquit_before_the_session_started_gives_up_with_131() {
    let mut w = World::connected();
    w.local(Local::Signal(Signal::Quit));
    w.advance(TERMINATE_TIMEOUT);
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Signal(3)));
    assert_eq!(Exit::Signal(3).code(), 131);
}

#[test]
fn sigquit_in_a_port_session_ends_it_as_ctrl_c_does() {
    for sig in [Signal::Interrupt, Signal::Quit] {
        let mut w = World::port();
        w.local(Local::Signal(sig));
        w.advance(TERMINATE_TIMEOUT);
        assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Normal), "{sig:?}");
    }
}

#[test]
fn a_second_sigterm_while_ending_leaves_at_once() {
    let mut w = World::shell();
    w.acks = false;
    w.local(Local::Signal(Signal::Terminate));
    assert_eq!(w.outcome(), None, "waiting for the flag's ack");
    w.local(Local::Signal(Signal::Terminate));
    assert_eq!(w.outcome(), Some(signal_ended(15)));
}

#[test]
fn a_broken_pipe_on_stdout_is_a_quiet_end_that_tells_the_agent() {
    let mut w = World::shell();
    w.local(Local::HandlerEnded(HandlerExit::OutputClosed));
    assert!(w.asked_api());
    w.s.terminate_done(w.now);
    w.settle();
    assert_eq!(
        w.outcome(),
        Some(Outcome {
            lost: false,
            exit: Exit::Normal,
            report: Report::Quiet
        })
    );
}

#[test]
fn a_local_write_error_ends_the_session_and_tells_the_agent() {
    let mut w = World::connected();
    w.handshake("NonInteractiveCommands", "3.3.0.0", None);
    w.local(Local::HandlerEnded(HandlerExit::OutputFailed(
        "No space left on device".into(),
    )));
    assert!(w.asked_api());
    w.s.terminate_done(w.now);
    w.settle();
    let o = w.outcome().expect("ended");
    assert_eq!(o.exit, Exit::Io);
    assert!(matches!(&o.report, Report::Failed(t) if t.contains("No space left on device")));
}

#[test]
fn a_write_error_while_flushing_the_end_beats_the_remote_status() {
    let mut w = World::connected();
    w.handshake("NonInteractiveCommands", "3.3.0.0", None);
    w.agent(PayloadType::EXIT_CODE, b"EXIT_CODE: 3");
    w.channel_closed(br#"{"Output":""}"#);
    assert!(w.asked_to_stop_handler());
    w.local(Local::HandlerEnded(HandlerExit::OutputFailed(
        "No space left on device".into(),
    )));
    let o = w.outcome().expect("ended");
    assert_eq!(o.exit, Exit::Io);
}

#[test]
fn kms_refused_tells_the_agent_and_exits_77() {
    let mut w = World::connected();
    let req = serde_json::json!({
        "AgentVersion": "3.3.0.0",
        "RequestedClientActions": [
            {"ActionType": "KMSEncryption", "ActionParameters": {"KMSKeyId": "alias/k"}},
            {"ActionType": "SessionType", "ActionParameters": {"SessionType": "Standard_Stream", "Properties": null}},
        ],
    });
    w.agent(PayloadType::HANDSHAKE_REQUEST, req.to_string().as_bytes());
    assert!(w.took(|e| matches!(e, Event::NeedDataKey { key_id, .. } if key_id == "alias/k")));
    w.s.data_key(w.now, Err("AccessDeniedException: no".into()));
    w.settle();
    let answer = w
        .sent
        .iter()
        .find(|m| m.payload_type == PayloadType::HANDSHAKE_RESPONSE)
        .expect("the agent is told");
    assert!(String::from_utf8_lossy(&answer.payload).contains("AccessDeniedException"));
    let o = w.outcome().expect("ended once the answer was acknowledged");
    assert_eq!(o.exit, Exit::NoPerm);
}

#[test]
fn resume_budget_runs_out_error_with_the_reconnect_figures() {
    let mut w = World::shell();
    w.s.transport_lost(w.now, "read failed", false);
    w.settle();
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, Event::Notice(t) if t.contains("resuming session"))));
    let mut attempts = 0;
    for _ in 0..1000 {
        if w.took(|e| matches!(e, Event::Resume)) {
            attempts += 1;
            w.s.resume_failed(w.now, &ResumeFailure::Network("connect timed out".into()));
            w.settle();
        }
        if w.outcome().is_some() {
            break;
        }
        w.advance(Duration::from_millis(500));
    }
    let o = w.outcome().expect("gave up");
    assert_eq!(o.exit, Exit::Unavailable);
    assert!(
        matches!(&o.report, Report::Failed(t) if t.contains("within 120 s") && t.contains("connect timed out") && t.contains("SESSION_MANAGER_PLUGIN_RECONNECT_TIMEOUT")),
        "{o:?}"
    );
    assert!(o.lost);
    assert!(attempts > 10, "retried with backoff: {attempts}");
}

#[test]
fn a_final_resume_answer_ends_the_outage_at_once() {
    let mut w = World::shell();
    w.s.transport_lost(w.now, "read failed", false);
    w.settle();
    w.s.resume_failed(
        w.now,
        &ResumeFailure::Service {
            status: Some(400),
            code: Some("SomethingNew".into()),
            message: "ResumeSession failed: SomethingNew".into(),
        },
    );
    w.settle();
    let o = w.outcome().expect("ended at once");
    assert_eq!(o.exit, Exit::Unavailable);
    assert!(matches!(&o.report, Report::Failed(t) if t.contains("cannot be resumed")));
    assert!(o.lost, "a port forward may carry on in a new session");
}

#[test]
fn only_a_connection_lost_for_good_marks_the_outcome_lost() {
    // The user leaving during an outage is not a lost session: nothing may restart it.
    let mut w = World::shell();
    w.s.transport_lost(w.now, "read failed", false);
    w.settle();
    w.local(Local::End(LocalEnd::Escape));
    assert!(w.asked_api());
    w.s.terminate_done(w.now);
    w.settle();
    let o = w.outcome().expect("ended");
    assert!(!o.lost, "{o:?}");
}

#[test]
fn resume_answers_are_sorted_once() {
    let svc = |status: u16, code: &str| ResumeFailure::Service {
        status: Some(status),
        code: Some(code.into()),
        message: code.into(),
    };
    assert!(matches!(
        classify_resume(&svc(400, "DoesNotExistException")),
        ResumeVerdict::Final(_)
    ));
    assert!(matches!(
        classify_resume(&svc(403, "AccessDeniedException")),
        ResumeVerdict::Final(_)
    ));
    assert!(matches!(
        classify_resume(&svc(400, "Other")),
        ResumeVerdict::Final(_)
    ));
    assert!(matches!(
        classify_resume(&svc(400, "ThrottlingException")),
        ResumeVerdict::Retry(_)
    ));
    assert!(matches!(
        classify_resume(&svc(429, "")),
        ResumeVerdict::Retry(_)
    ));
    assert!(matches!(
        classify_resume(&svc(503, "ServiceUnavailable")),
        ResumeVerdict::Retry(_)
    ));
    assert!(matches!(
        classify_resume(&ResumeFailure::Network("x".into())),
        ResumeVerdict::Retry(_)
    ));
    assert_eq!(
        classify_resume(&ResumeFailure::Expired),
        ResumeVerdict::Expired
    );
}

#[test]
fn an_expired_session_says_so_in_the_references_words() {
    let mut w = World::shell();
    w.s.transport_lost(w.now, "closed by the service: 1000 Bye", false);
    w.settle();
    w.s.resume_failed(w.now, &ResumeFailure::Expired);
    w.settle();
    assert_eq!(
        w.outcome(),
        Some(Outcome {
            lost: true,
            exit: Exit::Unavailable,
            report: Report::Plain("Session: sess-1 timed out.".into())
        })
    );
}

#[test]
fn a_resumed_link_resends_what_was_not_acknowledged() {
    let mut w = World::shell();
    w.acks = false;
    w.local(Local::Send {
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from_static(b"ls\r"),
        priority: Priority::Data,
    });
    let first = w
        .sent
        .iter()
        .filter(|m| m.payload[..] == b"ls\r"[..])
        .count();
    assert_eq!(first, 1);
    w.s.transport_lost(w.now, "read failed", false);
    w.settle();
    assert!(w.took(|e| matches!(e, Event::Resume)));
    w.advance(Duration::from_millis(300));
    w.s.transport_restored(w.now);
    w.settle();
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, Event::Notice(t) if t == "Session resumed.")));
    let again = w
        .sent
        .iter()
        .filter(|m| m.payload[..] == b"ls\r"[..])
        .count();
    assert_eq!(again, 2, "resent on the new link");
    assert_eq!(w.outcome(), None);
}

#[test]
fn the_first_connection_is_retried_then_fails_with_69() {
    let mut w = World::new();
    w.settle();
    for _ in 0..3 {
        assert!(w.took(|e| matches!(e, Event::Connect)));
        w.s.connect_failed(w.now, "cannot connect to 127.0.0.1:1".into(), false);
        w.settle();
        w.advance(secs(2));
    }
    let o = w.outcome().expect("ended");
    assert_eq!(o.exit, Exit::Unavailable);
    // The whole wait and the tries, not only the last try's own limit.
    let text = format!("{:?}", o.report);
    assert!(text.contains("gave up after 3 tries in 4.0 s"), "{text}");
}

#[test]
fn a_stream_url_that_is_no_websocket_url_is_a_usage_error_at_once() {
    let mut w = World::new();
    w.settle();
    w.s.connect_failed(w.now, "not a ws URL".into(), true);
    w.settle();
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Usage));
}

#[test]
fn a_refused_first_connection_is_not_resumed() {
    let mut w = World::connected();
    w.s.transport_lost(w.now, "closed by the service: 1008 token", true);
    w.settle();
    assert!(!w.events.iter().any(|e| matches!(e, Event::Resume)));
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Unavailable));
}

#[test]
fn input_end_drains_then_exits_zero() {
    let mut w = World::port();
    w.acks = false;
    w.local(Local::Send {
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from_static(b"tail"),
        priority: Priority::Data,
    });
    w.local(Local::InputEnded);
    assert_eq!(w.outcome(), None, "waits for the ack");
    w.advance(DRAIN_TIMEOUT + secs(1));
    let o = w.outcome().expect("gave up waiting");
    assert_eq!(o.exit, Exit::Normal);
    assert!(w
        .events
        .iter()
        .any(|e| matches!(e, Event::Warn(t) if t.contains("did not acknowledge"))));
}

#[test]
fn a_handler_that_cannot_start_decides_the_status() {
    let mut w = World::port();
    w.local(Local::HandlerEnded(HandlerExit::Failed {
        exit: Exit::Usage,
        message: "bad localPortNumber".into(),
    }));
    assert!(w.sent_flag(FlagValue::TerminateSession));
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Usage));
}

#[test]
fn an_old_agent_is_ended_with_the_api() {
    let mut w = World::connected();
    w.handshake("Standard_Stream", "2.3.0.0", None);
    w.local(Local::End(LocalEnd::Escape));
    assert!(!w.sent_flag(FlagValue::TerminateSession));
    assert!(w.asked_api());
    w.s.terminate_done(w.now);
    w.settle();
    assert_eq!(w.outcome().map(|o| o.exit), Some(Exit::Normal));
}

#[test]
fn a_handler_that_does_not_flush_in_time_is_not_waited_for() {
    let mut w = World::shell();
    w.channel_closed(br#"{"Output":""}"#);
    assert!(w.asked_to_stop_handler());
    w.advance(DRAIN_TIMEOUT);
    assert!(w.events.iter().any(|e| matches!(e, Event::Ended(_))));
}

mod props;
