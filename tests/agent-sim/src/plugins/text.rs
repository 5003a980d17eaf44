//! Output chunking shared by the shell and command plugins.

/// `shell.go: processStdoutData`: emits every complete UTF-8 character of `pending`; bytes
/// that do not decode are held back when they are within the last 3 bytes (an incomplete
/// character that the next read may complete) and passed through one by one otherwise.
pub(crate) fn take_utf8(pending: &mut Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(pending.len());
    let mut i = 0;
    while i < pending.len() {
        match std::str::from_utf8(&pending[i..]) {
            Ok(_) => {
                out.extend_from_slice(&pending[i..]);
                i = pending.len();
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.extend_from_slice(&pending[i..i + good]);
                i += good;
                if i >= pending.len() {
                    break;
                }
                if pending.len() - i < 4 {
                    break;
                }
                out.push(pending[i]);
                i += 1;
            }
        }
    }
    pending.drain(..i);
    out
}

/// POSIX-shell-like word splitting, as the agent's `shlex.Split` of the NonInteractiveCommands
/// command: whitespace separates words; single quotes are literal; double quotes allow `\`
/// escapes of `"`, `\`, `$` and backquote; a backslash outside quotes escapes the next char.
pub(crate) fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("EOF found when expecting closing quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("EOF found after escape character".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("EOF found when expecting closing quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err("EOF found after escape character".into()),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_holdback() {
        let mut p = "aé".as_bytes().to_vec();
        p.push(0xe2); // first byte of a 3-byte character
        assert_eq!(take_utf8(&mut p), "aé".as_bytes());
        assert_eq!(p, vec![0xe2]);
        p.extend_from_slice(&[0x82, 0xac]);
        assert_eq!(take_utf8(&mut p), "€".as_bytes());
        assert!(p.is_empty());
        // an invalid byte far from the end passes through
        let mut p = vec![b'x', 0xff, b'a', b'b', b'c', b'd'];
        assert_eq!(take_utf8(&mut p), vec![b'x', 0xff, b'a', b'b', b'c', b'd']);
    }

    #[test]
    fn split() {
        assert_eq!(
            shell_split(r#"sh -c 'echo "a b"; exit 3' x\ y "q\"z""#).unwrap(),
            vec!["sh", "-c", "echo \"a b\"; exit 3", "x y", "q\"z"]
        );
        assert!(shell_split("'open").is_err());
        assert_eq!(shell_split("  ").unwrap(), Vec::<String>::new());
    }
}
