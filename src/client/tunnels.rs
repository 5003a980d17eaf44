//! The config file of the standalone commands: named tunnels and target aliases, with
//! `include` of files and directories so a team can share them.
//!
//! ```toml
//! include = ["team.toml", "conf.d"]   # relative to this file; a directory: every *.toml in it
//!
//! [aliases]
//! bastion = "tag:Role=bastion"
//!
//! [tunnels.db]
//! target = "bastion"
//! forward = ["5432:db.internal:5432"]
//! socks = ["1080"]
//! profile = "prod"
//! region = "eu-west-1"
//! ```
//!
//! A file's own entries win over those it includes; later includes win over earlier ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::{DynamicForward, LocalForward};

/// Nested includes deeper than this are a loop.
const MAX_DEPTH: usize = 8;

/// One named tunnel.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tunnel {
    /// TARGET, as on the command line (an alias, id, Name tag or `tag:KEY=VALUE`).
    pub target: String,
    /// `-L` specifications.
    #[serde(default)]
    pub forward: Vec<String>,
    /// `-D` specifications.
    #[serde(default)]
    pub socks: Vec<String>,
    /// AWS profile.
    pub profile: Option<String>,
    /// AWS region.
    pub region: Option<String>,
    /// SSM endpoint.
    pub endpoint_url: Option<String>,
}

impl Tunnel {
    /// The forwards, checked.
    pub fn forwards(&self) -> Result<(Vec<LocalForward>, Vec<DynamicForward>), String> {
        let l = self
            .forward
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<_>, _>>()?;
        let d = self
            .socks
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<_>, _>>()?;
        if l.is_empty() && d.is_empty() {
            return Err("it has neither `forward` nor `socks` entries".into());
        }
        Ok((l, d))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    #[serde(default)]
    tunnels: BTreeMap<String, Tunnel>,
}

/// Everything the config files say.
#[derive(Debug, Default, Clone)]
pub struct Config {
    /// Alias → TARGET.
    pub aliases: BTreeMap<String, String>,
    /// Name → tunnel.
    pub tunnels: BTreeMap<String, Tunnel>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// `$XDG_CONFIG_HOME/session-manager-plugin/config.toml`, else `~/.config/...`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("session-manager-plugin").join("config.toml"))
}

impl Config {
    /// Reads `path` and its includes. A missing default file is an empty config; a missing
    /// file the user named is an error.
    pub fn load(path: &Path, required: bool) -> Result<Self, String> {
        let mut c = Config::default();
        if !required && !path.exists() {
            return Ok(c);
        }
        c.read(path, 0)?;
        Ok(c)
    }

    fn read(&mut self, path: &Path, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "{}: includes nest deeper than {MAX_DEPTH} (a loop?)",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        let file = parse_file(&text).map_err(|e| format!("{}:{e}", path.display()))?;
        self.files.push(path.to_owned());
        let dir = path.parent().unwrap_or(Path::new("."));
        for inc in &file.include {
            let p = dir.join(inc);
            if p.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)
                    .map_err(|e| format!("cannot read the directory {}: {e}", p.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect();
                entries.sort();
                for e in entries {
                    self.read(&e, depth + 1)?;
                }
            } else {
                self.read(&p, depth + 1)?;
            }
        }
        self.aliases.extend(file.aliases);
        for (name, t) in file.tunnels {
            t.forwards()
                .map_err(|e| format!("{}: tunnel {name:?}: {e}", path.display()))?;
            self.tunnels.insert(name, t);
        }
        Ok(())
    }
}

/// The keys a file and a tunnel may have.
const FILE_KEYS: &[&str] = &["include", "aliases", "tunnels"];
const TUNNEL_KEYS: &[&str] = &[
    "target",
    "forward",
    "socks",
    "profile",
    "region",
    "endpoint_url",
];

/// One file, or one line: `LINE:COL: what` (serde's unknown-field error names only the first
/// key and the toml crate's errors are five-line drawings, so keys are checked here first).
fn parse_file(text: &str) -> Result<File, String> {
    let at = |e: &toml::de::Error| {
        let (line, col) = e
            .span()
            .map(|r| {
                let before = &text[..r.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (line, col)
            })
            .unwrap_or((1, 1));
        format!(
            "{line}:{col}: {}",
            e.message().trim_end().replace('\n', "; ")
        )
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| at(&e))?;
    let mut unknown: Vec<String> = table
        .keys()
        .filter(|k| !FILE_KEYS.contains(&k.as_str()))
        .map(|k| format!("`{k}`"))
        .collect();
    if let Some(toml::Value::Table(tunnels)) = table.get("tunnels") {
        for (name, t) in tunnels {
            if let toml::Value::Table(t) = t {
                unknown.extend(
                    t.keys()
                        .filter(|k| !TUNNEL_KEYS.contains(&k.as_str()))
                        .map(|k| format!("`{k}` in tunnel {name:?}")),
                );
            }
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            " unknown {}: {} (a file has {}; a tunnel has {})",
            if unknown.len() == 1 { "key" } else { "keys" },
            unknown.join(", "),
            FILE_KEYS.join(", "),
            TUNNEL_KEYS.join(", ")
        ));
    }
    toml::from_str(text).map_err(|e| at(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_files_and_directories_and_the_own_file_wins() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("conf.d")).unwrap();
        std::fs::write(
            d.path().join("conf.d/a.toml"),
            "[tunnels.db]\ntarget = \"i-00000000\"\nforward = [\"1:2\"]\n[aliases]\nweb = \"tag:Role=web\"\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("team.toml"),
            "[tunnels.web]\ntarget = \"web\"\nsocks = [\"1080\"]\n",
        )
        .unwrap();
        let main = d.path().join("config.toml");
        std::fs::write(
            &main,
            "include = [\"team.toml\", \"conf.d\"]\n[tunnels.db]\ntarget = \"bastion\"\nforward = [\"5432:db:5432\"]\nprofile = \"prod\"\n",
        )
        .unwrap();
        let c = Config::load(&main, true).unwrap();
        assert_eq!(c.files.len(), 3);
        assert_eq!(c.tunnels["db"].target, "bastion");
        assert_eq!(c.tunnels["db"].profile.as_deref(), Some("prod"));
        assert_eq!(c.tunnels["web"].socks, vec!["1080".to_owned()]);
        assert_eq!(c.aliases["web"], "tag:Role=web");
    }

    #[test]
    fn mistakes_name_the_file_and_the_tunnel() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.toml");
        std::fs::write(
            &p,
            "[tunnels.x]\ntarget = \"i-00000000\"\nforward = [\"nope\"]\n",
        )
        .unwrap();
        let e = Config::load(&p, true).unwrap_err();
        assert!(e.contains("c.toml") && e.contains("\"x\""), "{e}");
        std::fs::write(&p, "[tunnels.x]\ntarget = \"i-0\"\nfrwd = []\nsox = []\n").unwrap();
        let e = Config::load(&p, true).unwrap_err();
        assert!(
            e.contains("`frwd` in tunnel \"x\"") && e.contains("`sox` in tunnel \"x\""),
            "every unknown key is named: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        std::fs::write(&p, "[tunnels.x]\ntarget = \"i-0\"\nforward = [\"1:2\"\n").unwrap();
        let e = Config::load(&p, true).unwrap_err();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.contains("c.toml:3:"), "{e}");
        std::fs::write(&p, "[tunnels.x]\ntarget = 5\nforward = [\"1:2\"]\n").unwrap();
        let e = Config::load(&p, true).unwrap_err();
        assert!(e.contains("c.toml:2:") && e.lines().count() == 1, "{e}");
        std::fs::write(&p, "include = [\"c.toml\"]\n").unwrap();
        assert!(Config::load(&p, true).unwrap_err().contains("loop"));
        assert!(Config::load(&d.path().join("missing.toml"), true).is_err());
        assert!(Config::load(&d.path().join("missing.toml"), false)
            .unwrap()
            .tunnels
            .is_empty());
    }
}
