//! The link: the first connection (a few attempts), losing it, and resuming within the budget.
//! ResumeSession answers are sorted here, once.

use std::time::Instant;

use super::liveness::{Liveness, Verdict};

use super::{
    Event, Exit, Link, Mode, Outcome, Phase, Report, ResumeFailure, Session, CONNECT_ATTEMPTS,
    DRAIN_TIMEOUT, RESUME_WHILE_ENDING, RETRY_FIRST_DELAY, RETRY_MAX_DELAY, STABLE_LINK,
};

impl Session {
    /// Time passed; acts on every deadline at or before `now` (early calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Ended => return,
            Phase::Closing { deadline, outcome } => {
                if now >= *deadline {
                    tracing::debug!("the session handler did not finish in time");
                    let outcome = outcome.clone();
                    self.finish(outcome);
                }
                return;
            }
            _ => {}
        }
        self.ch.handle_timeout(now);
        if !self.wants_input() {
            // We are the ones not reading (a slow stdout holds the agent's data back): silence
            // on the link is ours, not the service's.
            if let Some(l) = &mut self.live {
                l.heard(now);
            }
        }
        let verdict = match (&self.link, &mut self.live) {
            (Link::Up { .. }, Some(l)) => l.handle_timeout(now),
            _ => Verdict::Alive,
        };
        match verdict {
            Verdict::Alive => {}
            Verdict::Ping => self.events.push_back(Event::Ping),
            Verdict::Dead(silent) => {
                tracing::info!(
                    "no answer from the service for {} s: the link is dead",
                    silent.as_secs()
                );
                // Handled as a cut: drop the silent socket, resume on a new one.
                self.events.push_back(Event::DropLink);
                self.transport_lost(
                    now,
                    &format!("no answer from Session Manager for {} s", silent.as_secs()),
                    false,
                );
                return;
            }
        }
        match &mut self.link {
            Link::Connecting { retry_at, .. } if retry_at.is_some_and(|r| now >= r) => {
                *retry_at = None;
                self.events.push_back(Event::Connect);
            }
            Link::Down {
                deadline,
                reason,
                last_error,
                ..
            } if now >= *deadline => {
                let text = format!(
                    "the connection to the Session Manager service was lost ({reason}) and could not be resumed within {} s: {last_error}\nCheck your network and AWS credentials (they must allow ssm:ResumeSession), or allow more time with {}=<seconds>.",
                    self.cfg.reconnect_timeout.as_secs(),
                    crate::config::ENV_RECONNECT_TIMEOUT
                );
                self.link = Link::Gone;
                self.events.push_back(Event::DropLink);
                if let Phase::Ending(_) = self.phase {
                    // Already leaving: the ending decides (it stops waiting for acks).
                } else {
                    self.close(now, Outcome::error(Exit::Unavailable, text).lost());
                    return;
                }
            }
            Link::Down { retry_at, .. } if retry_at.is_some_and(|r| now >= r) => {
                *retry_at = None;
                self.events.push_back(Event::Resume);
            }
            _ => {}
        }
        if matches!(self.phase, Phase::AwaitingType | Phase::Handshake { .. })
            && now >= self.type_deadline
        {
            self.begin_end(
                now,
                Mode::Tell,
                Outcome::error(
                    Exit::Unavailable,
                    format!(
                        "the agent did not start the session within {} seconds; check that the target is online and its SSM Agent is running (aws ssm describe-instance-information)",
                        self.cfg.start_timeout.as_secs()
                    ),
                ),
            );
        }
        self.pump(now);
    }

    /// The websocket opened (first connection or a resume).
    pub fn transport_restored(&mut self, now: Instant) {
        let was_down = matches!(self.link, Link::Down { .. });
        if !self.wants_link() {
            // Nobody waits for this link any more.
            self.events.push_back(Event::DropLink);
            return;
        }
        self.link = Link::Up {
            opened: now,
            confirmed: false,
        };
        self.live = self.cfg.liveness.map(|c| Liveness::new(c, now));
        if was_down {
            self.ch.transport_restored(now);
            tracing::info!("session resumed");
            self.events
                .push_back(Event::Notice("Session resumed.".into()));
        }
        self.pump(now);
    }

    /// The first connection could not be opened. `usage` marks a failure that no retry can
    /// mend (a StreamUrl that is not a websocket URL).
    pub fn connect_failed(&mut self, now: Instant, error: String, usage: bool) {
        let Link::Connecting {
            attempt,
            delay,
            since,
            ..
        } = &mut self.link
        else {
            return;
        };
        if usage {
            self.link = Link::Gone;
            self.close(now, Outcome::error(Exit::Usage, error));
            return;
        }
        if *attempt >= CONNECT_ATTEMPTS {
            let waited = now.saturating_duration_since(*since);
            let error = format!(
                "{error} (gave up after {attempt} tries in {:.1} s)",
                waited.as_secs_f32()
            );
            self.link = Link::Gone;
            self.close(now, Outcome::error(Exit::Unavailable, error));
            return;
        }
        tracing::debug!("connection attempt {attempt} failed: {error}; retrying");
        *attempt += 1;
        let retry_at = now + *delay;
        *delay *= 2;
        self.link = Link::Connecting {
            attempt: *attempt,
            retry_at: Some(retry_at),
            delay: *delay,
            since: *since,
        };
    }

    /// The websocket was lost. `refused`: the service closed it with 1008 (policy), i.e. it
    /// turned our token or the session away.
    pub fn transport_lost(&mut self, now: Instant, reason: &str, refused: bool) {
        if matches!(self.phase, Phase::Ended | Phase::Closing { .. }) {
            self.link = Link::Gone;
            return;
        }
        if self.closed_by_service || matches!(self.link, Link::Gone) {
            // The session is over; what is left is delivering its last events.
            self.link = Link::Gone;
            self.pump(now);
            return;
        }
        if refused && !self.ever_confirmed {
            self.link = Link::Gone;
            self.close(now, Outcome::error(
                Exit::Unavailable,
                format!("the Session Manager service refused the connection: {reason}; the session token may be expired or already used: start a new session"),
            ));
            return;
        }
        self.ch.transport_lost(now);
        self.live = None;
        let previous = std::mem::replace(&mut self.link, Link::Gone);
        if let Phase::Ending(e) = &self.phase {
            let idle = self.is_idle();
            if e.mode == Mode::Tell || idle {
                tracing::info!("connection lost while ending the session ({reason}); not resuming");
                self.pump(now);
                return;
            }
        }
        // A link that delivered nothing and lived briefly continues the outage it ended.
        let since = match previous {
            Link::Up { opened, confirmed } if !confirmed && now < opened + STABLE_LINK => {
                self.outage_start.unwrap_or(now)
            }
            _ => now,
        };
        self.outage_start = Some(since);
        let mut deadline = since + self.cfg.reconnect_timeout;
        if let Phase::Ending(e) = &self.phase {
            let left = (e.progress_at + DRAIN_TIMEOUT).saturating_duration_since(now);
            deadline = deadline.min(now + left.max(RESUME_WHILE_ENDING));
        }
        self.events.push_back(Event::Notice(format!(
            "\nConnection lost ({reason}); resuming session..."
        )));
        self.events.push_back(Event::Resume);
        self.link = Link::Down {
            deadline,
            reason: reason.to_owned(),
            retry_at: None,
            delay: RETRY_FIRST_DELAY / 2,
            last_error: String::new(),
        };
        self.pump(now);
    }

    /// A resume attempt failed.
    pub fn resume_failed(&mut self, now: Instant, failure: &ResumeFailure) {
        let Link::Down {
            deadline,
            reason,
            retry_at,
            delay,
            last_error,
            ..
        } = &mut self.link
        else {
            return;
        };
        if retry_at.is_some() {
            return;
        }
        match classify_resume(failure) {
            ResumeVerdict::Expired => {
                let text = format!("Session: {} timed out.", self.cfg.session_id);
                self.link = Link::Gone;
                self.close(
                    now,
                    Outcome {
                        lost: true,
                        exit: Exit::Unavailable,
                        report: Report::Plain(text),
                    },
                );
            }
            ResumeVerdict::Final(e) => {
                let text = format!(
                    "the connection to the Session Manager service was lost ({reason}) and the session cannot be resumed: {e}"
                );
                self.link = Link::Gone;
                self.close(now, Outcome::error(Exit::Unavailable, text).lost());
            }
            ResumeVerdict::Retry(e) => {
                if e != *last_error {
                    tracing::warn!("resuming the session: {e}");
                }
                *last_error = e;
                let next = now + *delay;
                if next >= *deadline {
                    // Let the deadline say it; retrying past it is pointless.
                    *retry_at = Some(*deadline);
                } else {
                    *retry_at = Some(next);
                }
                *delay = (*delay * 2).min(RETRY_MAX_DELAY);
            }
        }
    }
}

/// A resume failure, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeVerdict {
    /// The session is over.
    Expired,
    /// Retrying cannot help.
    Final(String),
    /// Worth another try within the budget.
    Retry(String),
}

/// Sorts a ResumeSession failure once: the session does not exist or ended, access denied, and
/// any other 4xx except throttling are final; network errors, throttling and 5xx are retried.
pub fn classify_resume(f: &ResumeFailure) -> ResumeVerdict {
    match f {
        ResumeFailure::Expired => ResumeVerdict::Expired,
        ResumeFailure::Network(m) => ResumeVerdict::Retry(m.clone()),
        ResumeFailure::Unusable(m) => ResumeVerdict::Final(m.clone()),
        ResumeFailure::Service {
            status,
            code,
            message,
        } => {
            let code = code.as_deref().unwrap_or("");
            let throttled = code.contains("Throttl")
                || code == "TooManyRequestsException"
                || code == "RequestLimitExceeded"
                || *status == Some(429);
            let final_code = matches!(
                code,
                "DoesNotExistException"
                    | "ValidationException"
                    | "InvalidParameterException"
                    | "AccessDeniedException"
                    | "AccessDenied"
                    | "UnrecognizedClientException"
                    | "InvalidClientTokenId"
                    | "ExpiredTokenException"
            );
            match status {
                _ if throttled => ResumeVerdict::Retry(message.clone()),
                _ if final_code => ResumeVerdict::Final(message.clone()),
                Some(s) if (400..500).contains(s) => ResumeVerdict::Final(message.clone()),
                _ => ResumeVerdict::Retry(message.clone()),
            }
        }
    }
}
