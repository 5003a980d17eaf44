//! README.md stays true to the code: every `SESSION_MANAGER_PLUGIN_*` variable the code reads
//! has a row in the "Environment variables" table, and every exit status of `src/exit.rs` has a
//! row in the "Exit codes" table.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn sources(dir: &Path, out: &mut String) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
}

/// The section of README.md under `## title`, up to the next `## `.
fn section<'a>(readme: &'a str, title: &str) -> &'a str {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("README.md has no '## {title}'"));
    let rest = &readme[start + 4..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn every_variable_the_code_reads_is_in_the_environment_table() {
    let mut src = String::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut src);
    let readme = read("README.md");
    let table = section(&readme, "Environment variables");
    let mut names: Vec<String> = src
        .match_indices("\"SESSION_MANAGER_PLUGIN_")
        .map(|(i, _)| {
            src[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !table.contains(&format!("`{n}")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in README's environment table: {missing:?}"
    );
}

#[test]
fn every_exit_status_is_in_the_exit_code_table() {
    use ssm_plugin::exit::Exit;
    let readme = read("README.md");
    let table = section(&readme, "Exit codes");
    for e in [
        Exit::Normal,
        Exit::ClosedWithError,
        Exit::Usage,
        Exit::Unavailable,
        Exit::Software,
        Exit::Io,
        Exit::Protocol,
        Exit::NoPerm,
        Exit::Interrupted,
        Exit::Signal(1),
        Exit::Signal(15),
    ] {
        let code = e.code().to_string();
        assert!(
            table.lines().any(|l| l.starts_with(&format!("| {code} "))
                || l.starts_with(&format!("| {code},"))
                || l.contains(&format!(", {code} |"))),
            "{e:?} ({code}) has no row in README's exit-code table"
        );
    }
}
