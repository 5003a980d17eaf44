//! Ending a session: what each signal, escape and handler end means in each phase, telling the
//! agent (flag or API, bounded), draining, and the one outcome.

use std::time::Instant;

use bytes::Bytes;

use super::{
    channel, port_params, Api, Ending, Event, Exit, FlagValue, HandlerExit, Link, Local, Mode,
    Outcome, PayloadType, Phase, PortParameters, Priority, Report, Session, Signal, DRAIN_TIMEOUT,
    TERMINATE_LINE, TERMINATE_TIMEOUT,
};

impl Session {
    /// Something happened on our side.
    pub fn handle_local(&mut self, now: Instant, input: Local) {
        if self.is_ended() {
            return;
        }
        match input {
            Local::Send {
                payload_type,
                payload,
                priority,
            } => {
                if matches!(self.phase, Phase::Ending(_) | Phase::Closing { .. }) {
                    tracing::debug!("local data after the session began to end, dropped");
                    return;
                }
                let direct = priority == Priority::Control || self.held.is_empty();
                if !direct
                    || self
                        .ch
                        .send(now, payload_type, payload.clone(), priority)
                        .is_err()
                {
                    self.held.push_back((payload_type, payload));
                }
            }
            Local::Flag(f) => {
                let _ = self.ch.send(
                    now,
                    PayloadType::FLAG,
                    Bytes::copy_from_slice(&f.to_payload()),
                    Priority::Control,
                );
            }
            Local::InputEnded => {
                if matches!(self.phase, Phase::Running) {
                    tracing::debug!(stats = ?self.ch.stats(), "local input ended");
                    self.begin_end(
                        now,
                        Mode::Drain,
                        Outcome {
                            lost: false,
                            exit: Exit::Normal,
                            report: Report::Exiting,
                        },
                    );
                }
            }
            Local::End(why) => {
                tracing::debug!(?why, "the user ends the session");
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        lost: false,
                        exit: Exit::Normal,
                        report: Report::Exiting,
                    },
                );
            }
            Local::Signal(sig) => self.on_signal(now, sig),
            Local::HandlerEnded(exit) => self.on_handler_ended(now, exit),
        }
        self.pump(now);
    }

    /// The TerminateSession API call finished (either way) or was abandoned.
    pub fn terminate_done(&mut self, now: Instant) {
        if let Phase::Ending(e) = &mut self.phase {
            e.api = Api::Answered;
        }
        self.pump(now);
    }

    pub(super) fn protocol_error(&mut self, now: Instant, text: String) {
        self.begin_end(now, Mode::Tell, Outcome::error(Exit::Protocol, text));
    }

    pub(super) fn on_channel_failed(&mut self, now: Instant, e: channel::Error) {
        match e {
            channel::Error::TimedOut { .. } => {
                // The agent stopped acknowledging: the flag would not arrive either. End the
                // session on the service side with the API, as the reference does.
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome::error(Exit::Unavailable, e.to_string()),
                );
                if let Phase::Ending(end) = &mut self.phase {
                    end.flag_deadline = None;
                    if matches!(end.api, Api::NotAsked) {
                        end.api = Api::Asked(now + TERMINATE_TIMEOUT);
                        self.events.push_back(Event::TerminateApi);
                    }
                }
            }
            // The service has already ended the session: nobody left to tell.
            channel::Error::BadClose => {
                self.link = Link::Gone;
                self.events.push_back(Event::DropLink);
                self.close(now, Outcome::error(Exit::Protocol, e.to_string()));
            }
            _ => self.begin_end(
                now,
                Mode::Tell,
                Outcome::error(Exit::Protocol, e.to_string()),
            ),
        }
    }

    /// The service's channel_closed reached the front of the inbox: everything before it was
    /// delivered.
    pub(super) fn on_closed(&mut self, _now: Instant, output: String) {
        self.link = Link::Gone;
        self.events.push_back(Event::DropLink);
        let outcome = match &self.phase {
            // We were leaving anyway: our reason stands.
            Phase::Ending(e) => e.outcome.clone(),
            _ if output.is_empty() => Outcome {
                lost: false,
                exit: self.remote_exit.map_or(Exit::Normal, Exit::Remote),
                report: Report::Exiting,
            },
            _ => Outcome {
                lost: false,
                exit: self.remote_exit.map_or(Exit::ClosedWithError, Exit::Remote),
                report: Report::ServiceMessage(output),
            },
        };
        self.close(_now, outcome);
    }

    pub(super) fn on_signal(&mut self, now: Instant, sig: Signal) {
        let in_shell = matches!(self.phase, Phase::Running) && !self.is_port();
        match (&self.phase, sig) {
            (
                Phase::Closing { outcome, .. },
                Signal::Terminate | Signal::HangUp | Signal::Interrupt,
            ) => {
                // The user insists: stop waiting for the handler.
                let outcome = outcome.clone();
                self.finish(outcome);
            }
            (Phase::Ending(e), Signal::Terminate | Signal::HangUp | Signal::Interrupt) => {
                let mut outcome = e.outcome.clone();
                if matches!(sig, Signal::Terminate | Signal::HangUp) && outcome.exit == Exit::Normal
                {
                    outcome.exit = Exit::Signal(sig.number());
                }
                self.close(now, outcome);
            }
            (Phase::Ending(_) | Phase::Closing { .. } | Phase::Ended, _) => {}
            (_, Signal::Interrupt | Signal::Quit | Signal::Suspend) if in_shell => {
                // The AWS CLI leaves these ignored; `kill` can still send them. As in the
                // reference they become Ctrl-C, Ctrl-\ and Ctrl-Z for the remote.
                let byte = match sig {
                    Signal::Interrupt => 0x03,
                    Signal::Quit => 0x1c,
                    _ => 0x1a,
                };
                let _ = self.ch.send(
                    now,
                    PayloadType::OUTPUT,
                    Bytes::copy_from_slice(&[byte]),
                    Priority::Control,
                );
            }
            (_, Signal::Suspend) => {}
            (Phase::Running, Signal::Interrupt | Signal::Quit) => {
                self.terminate_line();
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        lost: false,
                        exit: Exit::Normal,
                        report: Report::Exiting,
                    },
                );
            }
            (_, Signal::Interrupt | Signal::Quit) => {
                // Before the session started: the user gives up waiting. Ctrl-C's status is
                // 130; SIGQUIT's is its own, 131, as a shell reports it.
                let exit = match sig {
                    Signal::Quit => Exit::Signal(sig.number()),
                    _ => Exit::Interrupted,
                };
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        lost: false,
                        exit,
                        report: Report::Exiting,
                    },
                );
            }
            (_, Signal::Terminate | Signal::HangUp) => {
                if self.is_port() {
                    self.terminate_line();
                }
                self.begin_end(
                    now,
                    Mode::Tell,
                    Outcome {
                        lost: false,
                        exit: Exit::Signal(sig.number()),
                        report: Report::Exiting,
                    },
                );
            }
        }
    }

    /// The reference's line for a port session ended by a signal: a status line, or stderr
    /// when stdout carries the tunnel.
    pub(super) fn terminate_line(&mut self) {
        let stdio = port_params::choose(
            &PortParameters::from_value(&self.properties),
            &self.agent_version,
        ) == port_params::Mode::Stdio;
        self.events.push_back(if stdio {
            Event::Warn(TERMINATE_LINE.trim_end().to_owned())
        } else {
            Event::Status(TERMINATE_LINE.to_owned())
        });
    }

    pub(super) fn on_handler_ended(&mut self, now: Instant, exit: HandlerExit) {
        self.handler_running = false;
        if let Phase::Closing { outcome, .. } = &self.phase {
            let mut outcome = outcome.clone();
            if let HandlerExit::OutputFailed(e) = &exit {
                // The session's output was lost: that beats a clean end.
                if matches!(
                    outcome.exit,
                    Exit::Normal | Exit::Remote(_) | Exit::ClosedWithError
                ) {
                    outcome = output_failed(e);
                }
            }
            return self.finish(outcome);
        }
        let (mode, outcome) = match exit {
            HandlerExit::Done => (
                Mode::Drain,
                Outcome {
                    lost: false,
                    exit: Exit::Normal,
                    report: Report::Exiting,
                },
            ),
            HandlerExit::OutputClosed => (
                Mode::Tell,
                Outcome {
                    lost: false,
                    exit: Exit::Normal,
                    report: Report::Quiet,
                },
            ),
            HandlerExit::OutputFailed(e) => (Mode::Tell, output_failed(&e)),
            HandlerExit::Failed { exit, message } => (
                Mode::Tell,
                Outcome {
                    lost: false,
                    exit,
                    report: Report::Plain(message),
                },
            ),
        };
        self.begin_end(now, mode, outcome);
    }

    /// Starts leaving (once; a later reason does not replace the first).
    pub(super) fn begin_end(&mut self, now: Instant, mode: Mode, outcome: Outcome) {
        if matches!(
            self.phase,
            Phase::Ending(_) | Phase::Closing { .. } | Phase::Ended
        ) {
            return;
        }
        tracing::debug!(?mode, ?outcome, stats = ?self.ch.stats(), "ending the session");
        let mut ending = Ending {
            outcome,
            mode,
            progress_at: now,
            acked: self.ch.stats().acked,
            flag_deadline: None,
            api: Api::NotAsked,
        };
        if mode == Mode::Tell {
            self.held.clear();
            if self.closed_by_service {
                // Nothing to tell.
            } else if matches!(self.link, Link::Up { .. }) && self.flag_supported() {
                let _ = self.ch.send(
                    now,
                    PayloadType::FLAG,
                    Bytes::copy_from_slice(&FlagValue::TerminateSession.to_payload()),
                    Priority::Control,
                );
                ending.flag_deadline = Some(now + TERMINATE_TIMEOUT);
            } else {
                // Agents without the flag, sessions whose agent sent no handshake, and no link
                // to send it on: the API, as the reference does for old agents.
                ending.api = Api::Asked(now + TERMINATE_TIMEOUT);
                self.events.push_back(Event::TerminateApi);
            }
            if matches!(self.link, Link::Down { .. } | Link::Connecting { .. }) {
                // Stop resuming: we are leaving.
                self.link = Link::Gone;
                self.events.push_back(Event::DropLink);
            }
        }
        self.phase = Phase::Ending(ending);
        self.check_ending(now);
    }

    pub(super) fn check_ending(&mut self, now: Instant) {
        let idle = self.is_idle();
        let link_up = matches!(self.link, Link::Up { .. });
        let link_gone = matches!(self.link, Link::Gone);
        let closed = self.closed_by_service;
        let acked = self.ch.stats().acked;
        let Phase::Ending(e) = &mut self.phase else {
            return;
        };
        if acked != e.acked {
            e.acked = acked;
            e.progress_at = e.progress_at.max(now);
        }
        let done = match e.mode {
            Mode::Drain => {
                if idle || closed {
                    true
                } else if link_gone || now >= e.progress_at + DRAIN_TIMEOUT {
                    self.events.push_back(Event::Warn(
                        "Warning: the agent did not acknowledge the last data in time; exiting anyway."
                            .into(),
                    ));
                    true
                } else {
                    false
                }
            }
            Mode::Tell => {
                if closed || matches!(e.api, Api::Answered) {
                    true
                } else if let Api::Asked(d) = e.api {
                    now >= d
                } else if e.flag_deadline.is_some() && idle {
                    // The agent acknowledged everything, the flag included.
                    true
                } else if e.flag_deadline.is_some_and(|d| now >= d) || !link_up {
                    // The flag may not have reached the agent: the API instead.
                    e.flag_deadline = None;
                    e.api = Api::Asked(now + TERMINATE_TIMEOUT);
                    self.events.push_back(Event::TerminateApi);
                    false
                } else {
                    false
                }
            }
        };
        if done {
            let outcome = e.outcome.clone();
            self.close(now, outcome);
        }
    }

    /// The outcome is decided: let the handler flush, then end.
    pub(super) fn close(&mut self, now: Instant, outcome: Outcome) {
        if matches!(self.phase, Phase::Closing { .. } | Phase::Ended) {
            return;
        }
        if self.handler_running {
            self.events.push_back(Event::StopHandler);
            self.phase = Phase::Closing {
                outcome,
                deadline: now + DRAIN_TIMEOUT,
            };
        } else {
            self.finish(outcome);
        }
    }

    pub(super) fn finish(&mut self, mut outcome: Outcome) {
        // An error after the agent started the session is no failure to start it.
        if self.kind.is_some() {
            if let Report::Error(text) = outcome.report {
                outcome.report = Report::Failed(text);
            }
        }
        self.phase = Phase::Ended;
        self.link = Link::Gone;
        self.held.clear();
        self.inbox.clear();
        self.events.push_back(Event::DropLink);
        self.events.push_back(Event::Ended(outcome));
    }
}

fn output_failed(e: &str) -> Outcome {
    Outcome::error(
        Exit::Io,
        format!("cannot write the session's output ({e}); the rest of it is lost. Check where stdout goes (a full disk, a closed file)."),
    )
}
