//! The local terminal: detection, input raw mode, window size, and the restore that must
//! happen on every way out of the process (normal end, error, panic, SIGTERM, SIGHUP).
//!
//! The saved settings live in one process-wide slot so that code which knows nothing about
//! the session (the panic hook, the signal thread, `main` after the runtime returns) can put
//! the terminal back. Restoring is idempotent.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Mutex, MutexGuard, Once};

use crate::wire::SizeData;

/// The size the reference plugin reports when it cannot read one (no terminal).
pub const FALLBACK_SIZE: SizeData = SizeData {
    cols: 300,
    rows: 100,
};

struct Saved {
    fd: RawFd,
    original: libc::termios,
    raw: libc::termios,
}

/// `Some` while our raw mode is applied.
static SAVED: Mutex<Option<Saved>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

fn saved() -> MutexGuard<'static, Option<Saved>> {
    // A poisoned lock still holds valid termios values; restoring matters more than the panic.
    SAVED.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// True when stdin or stdout is a terminal: the user sits at one, so the remote pty should
/// get its size.
pub fn has_terminal() -> bool {
    is_tty(libc::STDIN_FILENO) || is_tty(libc::STDOUT_FILENO)
}

/// The window size of the terminal on stdout, else stdin, else stderr; `None` without one
/// (or when it reports 0x0, as a pty nobody sized does).
pub fn window_size() -> Option<SizeData> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO, libc::STDERR_FILENO]
        .into_iter()
        .filter(|fd| is_tty(*fd))
        .find_map(|fd| {
            // SAFETY: winsize is plain data; TIOCGWINSZ writes exactly one winsize.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
            (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some(SizeData {
                cols: u32::from(ws.ws_col),
                rows: u32::from(ws.ws_row),
            })
        })
}

/// What the remote pty should be sized to now: the local size, or the reference's fallback
/// without a terminal.
pub fn remote_size() -> SizeData {
    window_size().unwrap_or(FALLBACK_SIZE)
}

/// The input half of raw mode: every byte, Enter as CR, Ctrl-C/Ctrl-\/Ctrl-Z/Ctrl-S as plain
/// bytes for the remote, no local echo. Output processing (OPOST) stays on, as the reference's
/// `stty cbreak` leaves it: remote ptys already send CR LF, and the bare LF of command output
/// (NonInteractiveCommands has no remote pty) and of our own messages still starts a new line.
fn make_raw(t: &mut libc::termios) {
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON);
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    t.c_cflag &= !(libc::CSIZE | libc::PARENB);
    t.c_cflag |= libc::CS8;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
}

/// Raw input mode on a terminal for as long as the guard lives (and no longer than the
/// process: see [`restore`]).
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Switches `fd` (a terminal) to raw input. Typed-ahead input is kept.
    pub fn enter(fd: RawFd) -> io::Result<Self> {
        install_panic_hook();
        let mut slot = saved();
        if slot.is_some() {
            return Ok(Self(()));
        }
        // SAFETY: termios is plain data, filled by tcgetattr before use.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = original;
        make_raw(&mut raw);
        // SAFETY: a valid termios for a terminal descriptor.
        if unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = Some(Saved { fd, original, raw });
        Ok(Self(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back as it was before [`RawMode::enter`]. Safe to call from any thread,
/// any number of times, with or without raw mode.
pub fn restore() {
    if let Some(s) = saved().take() {
        // SAFETY: the termios we read from this descriptor.
        unsafe {
            libc::tcsetattr(s.fd, libc::TCSADRAIN, &s.original);
        }
    }
}

/// Applies raw mode again if it is on: after SIGCONT a job-control shell may have reset the
/// terminal while we were stopped.
pub fn reapply() {
    if let Some(s) = saved().as_ref() {
        // SAFETY: as in `enter`.
        unsafe {
            libc::tcsetattr(s.fd, libc::TCSADRAIN, &s.raw);
        }
    }
}

/// A panic must not leave the user's terminal raw: restore first, then let the usual hook
/// print the message on a terminal that can show it.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_input_keeps_output_processing() {
        // SAFETY: plain data.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        t.c_iflag = libc::ICRNL | libc::IXON | libc::BRKINT | libc::IUTF8;
        t.c_oflag = libc::OPOST | libc::ONLCR;
        t.c_lflag = libc::ECHO | libc::ICANON | libc::ISIG | libc::IEXTEN | libc::ECHOE;
        t.c_cflag = libc::CS7 | libc::PARENB | libc::CREAD;
        make_raw(&mut t);
        assert_eq!(t.c_iflag, libc::IUTF8);
        assert_eq!(t.c_oflag, libc::OPOST | libc::ONLCR);
        assert_eq!(t.c_lflag, libc::ECHOE);
        assert_eq!(t.c_cflag, libc::CS8 | libc::CREAD);
        assert_eq!((t.c_cc[libc::VMIN], t.c_cc[libc::VTIME]), (1, 0));
    }

    fn modes(fd: RawFd) -> (libc::tcflag_t, libc::tcflag_t, libc::tcflag_t) {
        // SAFETY: plain data filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
        (t.c_iflag, t.c_oflag, t.c_lflag)
    }

    /// Raw mode on a real pty, left by a panic: the hook restores the settings. (The only test
    /// here that touches the process-wide slot, so no other test can restore in between.)
    #[test]
    fn a_panic_restores_the_terminal() {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors; the other pointers may be null.
        let r = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", io::Error::last_os_error());
        let before = modes(slave);
        let guard = RawMode::enter(slave).expect("raw mode on a pty");
        assert_ne!(modes(slave), before);
        std::mem::forget(guard); // only the hook can restore now
        let result = std::panic::catch_unwind(|| panic!("test panic"));
        assert!(result.is_err());
        assert_eq!(modes(slave), before);
        // Restoring again, or re-applying without raw mode, changes nothing.
        restore();
        reapply();
        assert_eq!(modes(slave), before);
        // SAFETY: our own descriptors.
        unsafe {
            libc::close(slave);
            libc::close(master);
        }
    }
}
