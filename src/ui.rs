//! User-facing lines: the status lines scripts parse (byte-identical to AWS's plugin), and
//! warnings and notices on stderr. A leaf shared by `main`, the session driver and handlers.

use std::io::{IsTerminal, Write};

/// Where user-visible status lines go.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    /// Status lines on stderr instead of stdout (`SESSION_MANAGER_PLUGIN_MESSAGES=stderr`).
    pub to_stderr: bool,
    /// Reconnection notices on stderr: on a terminal, or when `SESSION_MANAGER_PLUGIN_MESSAGES`
    /// has `notices`. Tools that drive the plugin read stderr, and some (Ansible's aws_ssm
    /// connection) take any byte there during a session for a failure and run the task again:
    /// a resume the user never needed to know about must not say a word to them.
    pub notices: bool,
}

impl Ui {
    /// The settings of `env`, status lines on stderr when `to_stderr`.
    pub fn new(to_stderr: bool, env: &crate::config::Env) -> Self {
        Self {
            to_stderr,
            notices: env.notices || std::io::stderr().is_terminal(),
        }
    }

    /// Prints a status line such as `Starting session with SessionId: X`, byte-identical to the
    /// reference, where scripts look for it. The error is the caller's to act on where the line
    /// matters (a port session's `Port N opened`): see [`crate::session::handler::output_error`].
    pub fn status(&self, text: &str) -> std::io::Result<()> {
        if self.to_stderr {
            let mut e = std::io::stderr().lock();
            e.write_all(text.as_bytes())?;
            e.flush()
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(text.as_bytes())?;
            o.flush()
        }
    }

    /// Prints a warning or error for the user on stderr.
    pub fn warn(&self, text: &str) {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{text}");
        let _ = e.flush();
    }

    /// A notice on stderr while a session runs. A shell may have the terminal in raw mode,
    /// where a bare `\n` does not return the cursor, so lines end with `\r\n` on a terminal.
    pub fn notice(&self, text: &str) {
        if !self.notices {
            tracing::info!("{}", text.trim());
            return;
        }
        let mut e = std::io::stderr().lock();
        let text = if e.is_terminal() {
            format!("{}\r\n", text.replace('\n', "\r\n"))
        } else {
            format!("{text}\n")
        };
        let _ = e.write_all(text.as_bytes());
        let _ = e.flush();
    }
}

/// Writes `text` to stdout outside a session (`--version`, `--help`, the banner, completions,
/// `tunnels --list`) and says how that went: a reader that went away (`| head -c1`) is a quiet
/// success, as in sessions; any other error (a full disk) is one line on stderr and 74.
pub fn print_stdout(text: &[u8]) -> crate::exit::Exit {
    let mut o = std::io::stdout().lock();
    match o.write_all(text).and_then(|()| o.flush()) {
        Ok(()) => crate::exit::Exit::Normal,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => crate::exit::Exit::Normal,
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "session-manager-plugin: cannot write to stdout: {e}");
            crate::exit::Exit::Io
        }
    }
}
