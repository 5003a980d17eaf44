//! The remote exit status of a command whose document does not report one, printed by the
//! node behind a marker at the very end of the output and taken out of it here.
//!
//! Only `AWS-StartNonInteractiveCommand` with `separateOutputStream` sends the status
//! (EXIT_CODE); other documents (interactive commands, ECS targets, custom documents) do not.
//! `exec` then wraps the command so that its last output is `\n<marker><status>\n` (`\r\n` on a
//! terminal), with a marker no output can contain by chance (a random nonce). The tail of the
//! output that could be the start of that line is held back until the session closes, when it
//! is parsed: the status is taken, the line removed, and every other byte delivered as sent.

use bytes::{Bytes, BytesMut};

/// Holds back the end of the output until it is known not to be the status line.
#[derive(Debug)]
pub struct StatusTail {
    marker: Vec<u8>,
    held: BytesMut,
}

impl StatusTail {
    /// For `marker` (e.g. `__SSM_EXIT_0123abcd__:`).
    pub fn new(marker: &str) -> Self {
        Self {
            marker: marker.as_bytes().to_vec(),
            held: BytesMut::new(),
        }
    }

    /// The longest status line: CR LF, the marker, a sign and 10 digits, CR LF.
    fn keep(&self) -> usize {
        self.marker.len() + 15
    }

    /// Output arrived: what may be delivered now (possibly nothing).
    pub fn push(&mut self, payload: &[u8]) -> Option<Bytes> {
        self.held.extend_from_slice(payload);
        let keep = self.keep();
        if self.held.len() <= keep {
            return None;
        }
        let out = self.held.split_to(self.held.len() - keep).freeze();
        Some(out)
    }

    /// The output ended: the rest to deliver, and the status if the line was there.
    pub fn finish(&mut self) -> (Bytes, Option<i32>) {
        let held = std::mem::take(&mut self.held).freeze();
        match self.parse(&held) {
            Some((at, status)) => (held.slice(..at), Some(status)),
            None => (held, None),
        }
    }

    /// Where the status line starts in `tail`, and the status.
    fn parse(&self, tail: &[u8]) -> Option<(usize, i32)> {
        let body = tail
            .strip_suffix(b"\r\n")
            .or_else(|| tail.strip_suffix(b"\n"))?;
        let m = body
            .windows(self.marker.len())
            .rposition(|w| w == self.marker.as_slice())?;
        let digits = std::str::from_utf8(&body[m + self.marker.len()..]).ok()?;
        let status: i32 = digits.parse().ok()?;
        let before = &body[..m];
        let start = if before.ends_with(b"\r\n") {
            m - 2
        } else if before.ends_with(b"\n") {
            m - 1
        } else {
            return None;
        };
        Some((start, status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "__SSM_EXIT_00112233aabbccdd__:";

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<i32>) {
        let mut t = StatusTail::new(M);
        let mut out = Vec::new();
        for c in chunks {
            if let Some(b) = t.push(c) {
                out.extend_from_slice(&b);
            }
        }
        let (rest, status) = t.finish();
        out.extend_from_slice(&rest);
        (out, status)
    }

    #[test]
    fn the_status_line_is_taken_out_and_everything_else_kept() {
        let line = format!("\n{M}3\n");
        assert_eq!(
            run(&[b"hello\n", line.as_bytes()]),
            (b"hello\n".to_vec(), Some(3))
        );
        // Output without a final newline keeps exactly its bytes.
        let line = format!("\n{M}0\n");
        assert_eq!(
            run(&[b"no newline", line.as_bytes()]),
            (b"no newline".to_vec(), Some(0))
        );
        // Split anywhere, on a terminal (CR LF), negative (killed).
        let all = format!("a lot of output\r\n\r\n{M}-1\r\n");
        let bytes = all.as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        assert_eq!(run(&chunks), (b"a lot of output\r\n".to_vec(), Some(-1)));
    }

    #[test]
    fn output_without_the_line_is_delivered_whole() {
        let big = vec![b'x'; 10_000];
        assert_eq!(run(&[&big]), (big.clone(), None));
        // A marker that is not at the end is output.
        let mid = format!("\n{M}5\nmore\n");
        assert_eq!(run(&[mid.as_bytes()]), (mid.as_bytes().to_vec(), None));
        assert_eq!(run(&[]), (Vec::new(), None));
    }

    #[test]
    fn little_is_held_back() {
        let mut t = StatusTail::new(M);
        let out = t.push(&[b'y'; 1000]).unwrap();
        assert_eq!(out.len(), 1000 - (M.len() + 15));
    }
}
