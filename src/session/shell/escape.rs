//! ssh-style escapes typed on the local terminal: at the start of a line (or of the session),
//! `~.` ends the session, `~?` lists the escapes, `~~` sends one `~` and `~-` turns escapes off
//! for the rest of the session (for a remote program that needs `~` at line starts, as AWS's
//! plugin added in 1.2.835.0). A `~` followed by anything else is sent as typed. A line starts
//! after CR as well as LF. This is the way out of a session whose remote side hangs
//! or ignores input. Pure: bytes in, actions out.

/// The escape character.
pub const ESCAPE: u8 = b'~';

/// The list `~?` prints (CR LF: the terminal is in raw input mode, and `\r\n` is right in
/// any output mode).
pub const HELP: &str = "Supported escape sequences:\r\n  ~.  - end the session\r\n  ~?  - this message\r\n  ~~  - send the escape character by typing it twice\r\n  ~-  - turn escapes off for the rest of the session\r\n(Escapes are recognized at the start of a line: after Enter, or at the start of the session.)\r\n";

/// What the typed bytes mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the remote side.
    Send(Vec<u8>),
    /// Show [`HELP`].
    Help,
    /// End the session; input after it is dropped.
    Terminate,
}

/// The escape recognizer's state across reads.
#[derive(Debug, Clone)]
pub struct Escapes {
    at_line_start: bool,
    tilde_held: bool,
    off: bool,
}

impl Default for Escapes {
    fn default() -> Self {
        Self::new()
    }
}

fn is_newline(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

impl Escapes {
    /// At the start of the session, which counts as the start of a line.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            tilde_held: false,
            off: false,
        }
    }

    /// Interprets one read of keyboard input.
    pub fn feed(&mut self, input: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut data = Vec::with_capacity(input.len() + 1);
        for &b in input {
            if self.off {
                data.push(b);
                continue;
            }
            if self.tilde_held {
                self.tilde_held = false;
                match b {
                    b'.' => {
                        if !data.is_empty() {
                            actions.push(Action::Send(data));
                        }
                        actions.push(Action::Terminate);
                        return actions;
                    }
                    b'?' => {
                        if !data.is_empty() {
                            actions.push(Action::Send(std::mem::take(&mut data)));
                        }
                        actions.push(Action::Help);
                        // Nothing reached the remote line: another escape may follow.
                        self.at_line_start = true;
                    }
                    ESCAPE => {
                        data.push(ESCAPE);
                        self.at_line_start = false;
                    }
                    b'-' => self.off = true,
                    other => {
                        data.extend_from_slice(&[ESCAPE, other]);
                        self.at_line_start = is_newline(other);
                    }
                }
                continue;
            }
            if self.at_line_start && b == ESCAPE {
                // Held until the next key says whether it is an escape.
                self.tilde_held = true;
                continue;
            }
            data.push(b);
            self.at_line_start = is_newline(b);
        }
        if !data.is_empty() {
            actions.push(Action::Send(data));
        }
        actions
    }

    /// At end of input: a held `~` was meant literally.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.tilde_held).then(|| vec![ESCAPE])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<Action> {
        let mut e = Escapes::new();
        chunks.iter().flat_map(|c| e.feed(c)).collect()
    }

    fn send(b: &[u8]) -> Action {
        Action::Send(b.to_vec())
    }

    #[test]
    fn plain_input_passes_unchanged() {
        assert_eq!(run(&[b"ls -l\r"]), vec![send(b"ls -l\r")]);
        assert_eq!(run(&[b"a~.b"]), vec![send(b"a~.b")]);
    }

    #[test]
    fn terminate_at_start_and_after_newlines() {
        assert_eq!(run(&[b"~."]), vec![Action::Terminate]);
        assert_eq!(
            run(&[b"echo\r~.ignored"]),
            vec![send(b"echo\r"), Action::Terminate]
        );
        assert_eq!(
            run(&[b"x\n", b"~", b"."]),
            vec![send(b"x\n"), Action::Terminate]
        );
    }

    #[test]
    fn tilde_tilde_sends_one_and_others_pass() {
        assert_eq!(run(&[b"~~.\r"]), vec![send(b"~.\r")]);
        assert_eq!(run(&[b"~x"]), vec![send(b"~x")]);
        // split across reads
        assert_eq!(run(&[b"~", b"~"]), vec![send(b"~")]);
        // a tilde followed by Enter: both sent, and the next line starts fresh
        assert_eq!(run(&[b"~\r~."]), vec![send(b"~\r"), Action::Terminate]);
    }

    #[test]
    fn help_then_another_escape() {
        assert_eq!(
            run(&[b"\r~?~."]),
            vec![send(b"\r"), Action::Help, Action::Terminate]
        );
    }

    #[test]
    fn tilde_minus_turns_escapes_off_for_good() {
        assert_eq!(
            run(&[b"~-", b"~.\r", b"~."]),
            vec![send(b"~.\r"), send(b"~.")]
        );
        assert_eq!(run(&[b"a\r~-~?"]), vec![send(b"a\r~?")]);
    }

    #[test]
    fn held_tilde_flushes_at_eof() {
        let mut e = Escapes::new();
        assert_eq!(e.feed(b"~"), vec![]);
        assert_eq!(e.flush(), Some(b"~".to_vec()));
        assert_eq!(e.flush(), None);
    }
}
