//! The signals a session acts on, read by the driver and handed to the session machine, which
//! decides what each means in the current phase (a control byte for a remote shell, the end of
//! a port session, telling the agent before a SIGTERM/SIGHUP exit).
//!
//! Registering a handler replaces the "ignore" the AWS CLI leaves for SIGINT, SIGQUIT and
//! SIGTSTP. SIGTSTP is taken only once a shell runs: a port session keeps the default (Ctrl-Z
//! suspends it, as with AWS's plugin).

use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGTSTP};

use super::core::Signal;

/// The process's signal stream.
pub(crate) struct Signals(Option<signal_hook_tokio::Signals>);

impl Signals {
    /// Registers SIGINT, SIGQUIT, SIGTERM and SIGHUP.
    pub(crate) fn install() -> Self {
        match signal_hook_tokio::Signals::new([SIGINT, SIGQUIT, SIGTERM, SIGHUP]) {
            Ok(s) => Self(Some(s)),
            Err(e) => {
                tracing::warn!("cannot install signal handlers ({e}); signals will end the plugin without telling the agent");
                Self(None)
            }
        }
    }

    /// Also takes SIGTSTP (for a shell, where it becomes Ctrl-Z for the remote).
    pub(crate) fn add_suspend(&self) {
        if let Some(s) = &self.0 {
            if let Err(e) = s.handle().add_signal(SIGTSTP) {
                tracing::debug!("cannot handle SIGTSTP: {e}");
            }
        }
    }

    /// The next signal (never, when none could be installed).
    pub(crate) async fn recv(&mut self) -> Signal {
        loop {
            let Some(s) = self.0.as_mut() else {
                return std::future::pending().await;
            };
            match s.next().await {
                Some(SIGINT) => return Signal::Interrupt,
                Some(SIGQUIT) => return Signal::Quit,
                Some(SIGTSTP) => return Signal::Suspend,
                Some(SIGTERM) => return Signal::Terminate,
                Some(SIGHUP) => return Signal::HangUp,
                Some(_) => {}
                None => return std::future::pending().await,
            }
        }
    }
}
