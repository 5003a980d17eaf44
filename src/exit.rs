//! The one table of exit statuses. The session machine decides an [`Exit`]; `main` turns it
//! into a process status with [`Exit::code`] and nothing else picks a number. README.md's
//! "Exit codes" table is this enum, row for row (a test runs the binary through each row).

/// How the process ends, as the user (or a script) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: the session ended normally (remote `exit`, `~.`, Ctrl-C in a port session, the reader
    /// of stdout went away).
    Normal,
    /// N: the remote command's own exit status (NonInteractiveCommands), reported as a shell
    /// would (the low 8 bits).
    Remote(i32),
    /// 1: the service closed the session with an error message.
    ClosedWithError,
    /// 64: wrong arguments, an unusable session response or unusable port parameters (sysexits
    /// EX_USAGE).
    Usage,
    /// 69: the service could not be reached or refused us, the connection was lost for good,
    /// or the agent never started the session (EX_UNAVAILABLE).
    Unavailable,
    /// 70: an internal error (EX_SOFTWARE).
    Software,
    /// 74: a local I/O error: terminal, socket, stdout (EX_IOERR).
    Io,
    /// 76: the agent or service broke the protocol (EX_PROTOCOL).
    Protocol,
    /// 77: session encryption (KMS) was refused or failed (EX_NOPERM).
    NoPerm,
    /// 130: Ctrl-C before the session had started.
    Interrupted,
    /// 128 + N: ended by signal N (SIGHUP 129, SIGQUIT before the session started 131,
    /// SIGTERM 143), after telling the agent.
    Signal(i32),
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Remote(n) => (n & 0xff) as u8,
            Self::ClosedWithError => 1,
            Self::Usage => 64,
            Self::Unavailable => 69,
            Self::Software => 70,
            Self::Io => 74,
            Self::Protocol => 76,
            Self::NoPerm => 77,
            Self::Interrupted => 130,
            Self::Signal(n) => (128 + n).clamp(0, 255) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(Exit::Normal.code(), 0);
        assert_eq!(Exit::Remote(3).code(), 3);
        assert_eq!(Exit::Remote(256 + 7).code(), 7);
        assert_eq!(Exit::Remote(-1).code(), 255);
        assert_eq!(Exit::ClosedWithError.code(), 1);
        assert_eq!(Exit::Usage.code(), 64);
        assert_eq!(Exit::Unavailable.code(), 69);
        assert_eq!(Exit::Io.code(), 74);
        assert_eq!(Exit::Protocol.code(), 76);
        assert_eq!(Exit::NoPerm.code(), 77);
        assert_eq!(Exit::Interrupted.code(), 130);
        assert_eq!(Exit::Signal(1).code(), 129);
        assert_eq!(Exit::Signal(15).code(), 143);
    }
}
