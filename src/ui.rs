//! User-facing lines: the status lines scripts parse (byte-identical to AWS's plugin), and
//! warnings and notices on stderr. A leaf shared by `main`, the session driver and handlers.

use std::io::{IsTerminal, Write};

/// Where user-visible status lines go.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    /// Status lines on stderr instead of stdout (`SESSION_MANAGER_PLUGIN_MESSAGES=stderr`).
    pub to_stderr: bool,
}

impl Ui {
    /// Prints a status line such as `Starting session with SessionId: X`, byte-identical to the
    /// reference, where scripts look for it.
    pub fn status(&self, text: &str) {
        if self.to_stderr {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(text.as_bytes());
            let _ = e.flush();
        } else {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(text.as_bytes());
            let _ = o.flush();
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
