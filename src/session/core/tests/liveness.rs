//! The link's liveness in the session, in simulated time: a silent link is resumed like a cut,
//! an idle one whose service answers pings stays up, a wake checks at once.

use std::time::Duration;

use bytes::Bytes;

use super::super::*;
use super::world::{secs, World};
use crate::channel::Priority;
use crate::wire::PayloadType;

fn pings(w: &World) -> usize {
    w.events.iter().filter(|e| matches!(e, Event::Ping)).count()
}

fn resumes(w: &World) -> usize {
    w.events
        .iter()
        .filter(|e| matches!(e, Event::Resume))
        .count()
}

#[test]
fn an_idle_shell_whose_service_answers_pings_stays_up_for_hours() {
    let mut w = World::live_shell();
    for _ in 0..(4 * 60) {
        w.advance(secs(60));
    }
    assert_eq!(resumes(&w), 0);
    assert_eq!(w.outcome(), None);
    // A ping every 10 s: client-to-server bytes for idle middleboxes.
    let n = pings(&w);
    assert!(
        (4 * 3600 / 10 - 2..=4 * 3600 / 10).contains(&n),
        "{n} pings"
    );
}

#[test]
fn a_silent_link_is_resumed_at_the_deadline_keeping_its_state() {
    let mut w = World::live_shell();
    w.pongs = false;
    let t0 = w.now;
    w.advance(secs(17));
    assert_eq!(resumes(&w), 0, "not before the deadline");
    w.advance(secs(1));
    assert_eq!(resumes(&w), 1, "dead at 10 s + 8 s");
    let notice = w.events.iter().find_map(|e| match e {
        Event::Notice(t) => Some(t.clone()),
        _ => None,
    });
    assert!(
        notice
            .as_deref()
            .is_some_and(|t| t.contains("no answer from Session Manager for 18 s")),
        "{notice:?}"
    );
    // The silent socket is dropped before the resume starts.
    let drop_at = w.events.iter().position(|e| matches!(e, Event::DropLink));
    let resume_at = w.events.iter().position(|e| matches!(e, Event::Resume));
    assert!(drop_at < resume_at && drop_at.is_some());
    // Typed during the outage, delivered after it, in order, with the sequence going on.
    let before = w.sent.iter().map(|m| m.sequence_number).max().unwrap_or(-1);
    w.local(Local::Send {
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from_static(b"typed while frozen\r"),
        priority: Priority::Data,
    });
    assert!(w
        .sent
        .iter()
        .all(|m| &m.payload[..] != b"typed while frozen\r"));
    w.pongs = true;
    w.restore();
    let typed = w
        .sent
        .iter()
        .find(|m| &m.payload[..] == b"typed while frozen\r")
        .expect("sent after the resume");
    assert_eq!(typed.sequence_number, before + 1);
    assert!(w.now - t0 < secs(30));
    assert_eq!(w.outcome(), None);
}

#[test]
fn a_frame_arriving_just_before_the_deadline_keeps_the_link() {
    let mut w = World::live_shell();
    w.pongs = false;
    w.advance(secs(10) + Duration::from_millis(7_990));
    w.agent(PayloadType::OUTPUT, b"late but alive");
    w.advance(Duration::from_millis(500));
    assert_eq!(resumes(&w), 0);
    // The deadline starts again from the next ping.
    w.advance(secs(18));
    assert_eq!(resumes(&w), 1);
}

#[test]
fn a_wake_checks_the_link_at_once() {
    let mut w = World::live_shell();
    w.advance(secs(3));
    let before = pings(&w);
    w.pongs = false;
    w.s.woke(w.now, secs(3600));
    w.settle();
    assert_eq!(pings(&w), before + 1, "a ping right away");
    w.advance(secs(3));
    assert_eq!(resumes(&w), 1, "dead within the wake deadline, not 18 s");
}

#[test]
fn a_wake_with_a_working_link_changes_nothing() {
    let mut w = World::live_shell();
    w.advance(secs(3));
    w.s.woke(w.now, secs(3600));
    w.settle();
    w.advance(secs(60));
    assert_eq!(resumes(&w), 0);
}

#[test]
fn keepalive_cadence_while_only_the_agent_talks() {
    let mut w = World::live_shell();
    let before = pings(&w);
    for _ in 0..60 {
        w.agent(PayloadType::OUTPUT, b"tick\r\n");
        w.advance(secs(1));
    }
    // Our acks are client-to-server bytes too: they count as sending.
    let n = pings(&w) - before;
    assert!(n <= 6, "{n} pings in 60 s");
    assert_eq!(resumes(&w), 0);
}

#[test]
fn off_means_no_pings_and_no_deadline() {
    let mut w = World::shell();
    w.pongs = false;
    w.advance(secs(3600));
    assert_eq!(pings(&w), 0);
    assert_eq!(resumes(&w), 0);
}
