//! Guards the shape: the sans-IO cores (`wire`, `channel`, `smux`, `session::core`) never touch
//! tokio, sockets, threads, files, the terminal or the clock. Time comes in as `now`; everything
//! that waits lives in the drivers. (clippy's `disallowed-methods` is crate-wide, so this check
//! reads the sources of those modules instead; their unit tests, after `#[cfg(test)]`, may read
//! the clock once.)

use std::path::{Path, PathBuf};

const CORES: &[&str] = &["src/wire", "src/channel", "src/smux", "src/session/core"];

/// What a sans-IO module must not name.
const FORBIDDEN: &[&str] = &[
    "tokio",
    "Instant::now",
    "SystemTime::now",
    "std::net",
    "std::thread",
    "std::fs",
    "std::io::stdin",
    "std::io::stdout",
    "std::io::stderr",
    "libc::",
    "signal_hook",
    "tungstenite",
    "crate::aws::Aws",
    "crate::transport",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn sans_io_cores_do_no_io_and_read_no_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for c in CORES {
        rust_files(&root.join(c), &mut files);
    }
    assert!(files.len() >= 10, "found only {files:?}");
    let mut offences = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        let rel = f.strip_prefix(root).unwrap_or(f);
        let in_tests = rel.components().any(|c| c.as_os_str() == "tests");
        if name == "tests.rs" || name.ends_with("_tests.rs") || in_tests {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for bad in FORBIDDEN {
                if code.contains(bad) {
                    offences.push(format!("{}:{}: {bad}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "I/O in a sans-IO core:\n{}",
        offences.join("\n")
    );
}
