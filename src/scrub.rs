//! Takes the session token and AWS secrets out of what other processes can read about us.
//!
//! `/proc/PID/environ` and `/proc/PID/cmdline` (and so `ps e`, `ps -f`) show the bytes of the
//! environment and argv blocks the kernel laid out at exec, whatever the process does with its
//! own copies later: `std::env::remove_var` hides a variable from children only. So the values
//! are overwritten in place, in the original blocks, once they have been read:
//!
//! - the StartSession response variable (`AWS_SSM_START_SESSION_RESPONSE*`, the AWS CLI's way of
//!   handing it over) is blanked and removed;
//! - a response passed in argv (older CLIs, direct callers) has its TokenValue blanked;
//! - `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` are blanked in the original block after
//!   being copied into the process's own (heap) environment, where the AWS SDK still finds them
//!   and `/proc` does not show them.
//!
//! The original blocks are found the way the standard library finds argv on Linux: glibc hands
//! `argc`, `argv` and `envp` to every function in `.init_array`. No maintained crate offers
//! this (crates that set the process title rewrite argv wholesale), hence the few unsafe lines
//! here. Elsewhere (musl, macOS, Windows) the capture does not happen and this is a no-op that
//! only removes the response variable; README.md says so.

/// Which variables hold AWS secrets that are blanked in the original environment block.
pub const SECRET_VARIABLES: &[&str] = &["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// Blanks the secrets. Call once, at the start of `main`, after argv and the response were read
/// and before any other thread exists (it changes the process environment).
pub fn secrets(response_variable: Option<&str>) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    imp::blank(response_variable);
    if let Some(name) = response_variable {
        // SAFETY (of the std call's contract): still single-threaded, nothing reads the
        // environment concurrently.
        std::env::remove_var(name);
    }
}

/// Replaces the value of every `"TokenValue"` member (any case) of a JSON text with `*`, in
/// place and at the same length.
pub fn blank_token_in_json(bytes: &mut [u8]) {
    const KEY: &[u8] = b"\"tokenvalue\"";
    let mut i = 0;
    while i + KEY.len() <= bytes.len() {
        if !bytes[i..i + KEY.len()].eq_ignore_ascii_case(KEY) {
            i += 1;
            continue;
        }
        let mut j = i + KEY.len();
        while j < bytes.len() && matches!(bytes[j], b' ' | b'\t' | b'\n' | b'\r' | b':') {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'"' {
            j += 1;
            let mut escaped = false;
            while j < bytes.len() {
                let b = bytes[j];
                if !escaped && b == b'"' {
                    break;
                }
                escaped = !escaped && b == b'\\';
                bytes[j] = b'*';
                j += 1;
            }
        }
        i = j.max(i + 1);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    use std::ffi::{c_char, c_int, CStr};
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    static ARGC: AtomicUsize = AtomicUsize::new(0);
    static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());
    static ENVP: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

    /// Run by glibc before `main` with the process's original blocks.
    extern "C" fn capture(argc: c_int, argv: *mut *mut c_char, envp: *mut *mut c_char) {
        ARGC.store(usize::try_from(argc).unwrap_or(0), Ordering::Relaxed);
        ARGV.store(argv, Ordering::Relaxed);
        ENVP.store(envp, Ordering::Relaxed);
    }

    #[used]
    #[link_section = ".init_array.00099"]
    static CAPTURE: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) = capture;

    /// The bytes of one C string of the original blocks, for overwriting in place.
    ///
    /// SAFETY: `p` must point to a NUL-terminated string that stays valid and that nothing else
    /// accesses meanwhile (the exec-time blocks live as long as the process; we are single
    /// threaded here).
    unsafe fn bytes_mut<'a>(p: *mut c_char) -> &'a mut [u8] {
        let len = CStr::from_ptr(p).to_bytes().len();
        std::slice::from_raw_parts_mut(p.cast::<u8>(), len)
    }

    pub(super) fn blank(response_variable: Option<&str>) {
        let argv = ARGV.load(Ordering::Relaxed);
        let argc = ARGC.load(Ordering::Relaxed);
        if !argv.is_null() {
            for i in 1..argc {
                // SAFETY: argv holds argc valid pointers (the exec-time argv block).
                let p = unsafe { *argv.add(i) };
                if !p.is_null() {
                    // SAFETY: see `bytes_mut`.
                    super::blank_token_in_json(unsafe { bytes_mut(p) });
                }
            }
        }
        let envp = ENVP.load(Ordering::Relaxed);
        if envp.is_null() {
            return;
        }
        let mut i = 0;
        loop {
            // SAFETY: envp is the exec-time, NULL-terminated environment pointer array.
            let p = unsafe { *envp.add(i) };
            if p.is_null() {
                break;
            }
            i += 1;
            // SAFETY: see `bytes_mut`.
            let entry = unsafe { bytes_mut(p) };
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = String::from_utf8_lossy(&entry[..eq]).into_owned();
            let is_response = response_variable == Some(name.as_str());
            let is_secret = super::SECRET_VARIABLES.contains(&name.as_str());
            if !is_response && !is_secret {
                continue;
            }
            if is_secret {
                // Keep the value for the SDK in the process's own environment: set_var copies
                // it to the heap, which /proc does not show.
                let value = String::from_utf8_lossy(&entry[eq + 1..]).into_owned();
                std::env::set_var(&name, value);
            }
            for b in &mut entry[eq + 1..] {
                *b = b'*';
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::blank_token_in_json;

    #[test]
    fn blanks_the_token_value_in_any_case_and_keeps_the_length() {
        let text = r#"{"SessionId":"s","TokenValue":"abc\"def","StreamUrl":"wss://x"}"#;
        let mut b = text.as_bytes().to_vec();
        blank_token_in_json(&mut b);
        let out = String::from_utf8(b).unwrap();
        assert_eq!(out.len(), text.len());
        assert_eq!(
            out,
            r#"{"SessionId":"s","TokenValue":"********","StreamUrl":"wss://x"}"#
        );
        let mut b = br#"{"tokenValue" : "zz", "sessionId":"s"}"#.to_vec();
        blank_token_in_json(&mut b);
        assert_eq!(&b[..], br#"{"tokenValue" : "**", "sessionId":"s"}"#);
        let mut b = b"no json here".to_vec();
        blank_token_in_json(&mut b);
        assert_eq!(&b[..], b"no json here");
    }
}
