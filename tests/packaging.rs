//! The packages of `packaging/build.sh`, built from the debug binary the test command already has
//! (a release build takes minutes): the binary unpacked from the .deb, the .rpm and the .tar.gz
//! runs and prints the version; the .deb and .rpm put it where AWS's packages do, linked from
//! /usr/local/bin, and declare that they replace AWS's `session-manager-plugin`; the .deb
//! replaces a stand-in for AWS's package and uninstalls without a trace (dpkg in a scratch root).
//!
//! The tools come from `scripts/ensure-packaging-tools.sh` (run by `scripts/test.sh`); a missing
//! tool fails the test with that advice, never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const WIRE_VERSION: &str = "1.2.764.0";
const BIN_PATH: &str = "usr/local/sessionmanagerplugin/bin/session-manager-plugin";
const LINK_PATH: &str = "usr/local/bin/session-manager-plugin";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

fn require_tools() {
    let tools: [(&str, &[&str]); 6] = [
        ("cargo-deb", &["cargo", "deb", "--version"]),
        (
            "cargo-generate-rpm",
            &["cargo", "generate-rpm", "--version"],
        ),
        ("dpkg-deb", &["dpkg-deb", "--version"]),
        ("rpm", &["rpm", "--version"]),
        ("rpm2cpio", &["sh", "-c", "command -v rpm2cpio"]),
        ("cpio", &["cpio", "--version"]),
    ];
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(_, argv)| {
            !Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(name, _)| *name)
        .collect();
    assert!(
        missing.is_empty(),
        "packaging tools missing: {missing:?}; run scripts/ensure-packaging-tools.sh \
         (scripts/test.sh does, before the tests)"
    );
}

/// Runs packaging/build.sh once for all tests of this file; returns the output directory.
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        require_tools();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-dist");
        let _ = std::fs::remove_dir_all(&out);
        run(Command::new(repo().join("packaging/build.sh"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_session-manager-plugin"))
            .arg("--out")
            .arg(&out)
            .args(["--fast", "--no-install"])
            .env("CARGO_NET_OFFLINE", "true"));
        out
    })
}

/// The one file in `dir` whose name ends with `suffix`.
fn artifact(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(found.len(), 1, "one *{suffix} in {dir:?}: {found:?}");
    found.into_iter().next().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("packaging-scratch")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The unpacked binary prints the wire version for `--version` and this crate's in `--help`.
fn assert_runs(bin: &Path) {
    let v = stdout(Command::new(bin).arg("--version"));
    assert_eq!(v.trim(), WIRE_VERSION, "{bin:?} --version");
    let help = stdout(Command::new(bin).arg("--help"));
    assert!(
        help.starts_with(&format!("session-manager-plugin {VERSION} ")),
        "{bin:?} --help: {help}"
    );
}

/// `root/usr/local/bin/session-manager-plugin` is a link (absolute or relative) to the binary.
fn assert_link(root: &Path) {
    let link = root.join(LINK_PATH);
    let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{link:?}: {e}"));
    let mut resolved = PathBuf::from("/");
    if target.is_relative() {
        resolved.push(Path::new(LINK_PATH).parent().unwrap());
    }
    for c in target.components() {
        match c {
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            std::path::Component::Normal(n) => resolved.push(n),
            _ => {}
        }
    }
    assert_eq!(
        resolved,
        Path::new("/").join(BIN_PATH),
        "{link:?} -> {target:?}"
    );
}

#[test]
fn the_deb_installs_the_binary_where_aws_does_and_replaces_aws_package() {
    let deb = artifact(dist(), ".deb");
    let field = |f: &str| {
        stdout(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "session-manager-plugin-rs");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Conflicts"), "session-manager-plugin");
    assert_eq!(field("Replaces"), "session-manager-plugin");
    assert_eq!(
        field("Provides"),
        format!("session-manager-plugin (= {WIRE_VERSION})")
    );

    let root = scratch("deb");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert_runs(&root.join(BIN_PATH));
    assert_link(&root);
    for f in [
        "usr/share/man/man1/session-manager-plugin.1.gz",
        "usr/share/doc/session-manager-plugin-rs/README.md",
        "usr/share/doc/session-manager-plugin-rs/CHANGELOG.md",
        "usr/share/doc/session-manager-plugin-rs/copyright",
    ] {
        assert!(root.join(f).is_file(), "{f} is not in the .deb");
    }
}

#[test]
fn the_rpm_installs_the_binary_where_aws_does_and_obsoletes_aws_package() {
    let rpm = artifact(dist(), ".rpm");
    let query = |what: &[&str]| stdout(Command::new("rpm").arg("-qp").args(what).arg(&rpm));
    assert_eq!(
        query(&["--qf", "%{NAME} %{VERSION}"]),
        format!("session-manager-plugin-rs {VERSION}")
    );
    assert!(
        query(&["--obsoletes"])
            .lines()
            .any(|l| l.trim() == "session-manager-plugin"),
        "{}",
        query(&["--obsoletes"])
    );
    assert!(
        query(&["--provides"])
            .lines()
            .any(|l| l.trim() == format!("session-manager-plugin = {WIRE_VERSION}")),
        "{}",
        query(&["--provides"])
    );
    // The link is made by a scriptlet (after the whole transaction) and removed on erase.
    let scripts = query(&["--scripts"]);
    assert!(
        scripts.contains("posttrans") && scripts.contains("ln -sfn /usr/local/sessionmanagerplugin/bin/session-manager-plugin /usr/local/bin/session-manager-plugin"),
        "{scripts}"
    );
    assert!(
        scripts.contains("postuninstall")
            && scripts.contains("rm -f /usr/local/bin/session-manager-plugin"),
        "{scripts}"
    );
    assert_eq!(
        query(&["--qf", "%{PAYLOADCOMPRESSOR}"]),
        "gzip",
        "gzip payload, readable by older rpm releases"
    );

    let root = scratch("rpm");
    run(Command::new("sh")
        .arg("-c")
        .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
        .arg("sh")
        .arg(&rpm)
        .current_dir(&root));
    assert_runs(&root.join(BIN_PATH));
    assert!(root
        .join("usr/share/man/man1/session-manager-plugin.1")
        .is_file());
}

#[test]
fn the_tarball_holds_the_binary_docs_licence_and_man_page_and_the_sums_match() {
    let dist = dist();
    let tgz = artifact(dist, "-linux.tar.gz");
    let root = scratch("tgz");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&root));
    let top = root.join(
        tgz.file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".tar.gz"),
    );
    for f in [
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "session-manager-plugin.1",
    ] {
        assert!(top.join(f).is_file(), "{f} is not in the tarball");
    }
    assert_runs(&top.join("session-manager-plugin"));

    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    for suffix in [".deb", ".rpm", "-linux.tar.gz"] {
        assert!(
            sums.lines().any(|l| l.ends_with(suffix)),
            "no *{suffix} in SHA256SUMS:\n{sums}"
        );
    }
    run(Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(dist));
}

#[test]
fn the_man_page_carries_this_version() {
    let page = std::fs::read_to_string(repo().join("packaging/session-manager-plugin.1")).unwrap();
    let th = page.lines().find(|l| l.starts_with(".TH ")).unwrap();
    assert!(
        th.contains(&format!("\"session-manager-plugin {VERSION}\"")),
        "update the .TH line of packaging/session-manager-plugin.1 to {VERSION}: {th}"
    );
}

/// A stand-in for AWS's package: same name, same binary path, a link made by its postinst and
/// removed by its postrm (the worst case for us: after our files are unpacked).
fn stand_in_for_aws_package(dir: &Path, arch: &str) -> PathBuf {
    let pkg = dir.join("aws-pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/local/sessionmanagerplugin/bin")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: session-manager-plugin\nVersion: {WIRE_VERSION}-1\nArchitecture: {arch}\n\
             Maintainer: test <test@example.invalid>\nDescription: stand-in for AWS's package\n"
        ),
    )
    .unwrap();
    let script = |name: &str, body: &str| {
        let p = pkg.join("DEBIAN").join(name);
        std::fs::write(&p, format!("#!/bin/sh\nset -e\n{body}\nexit 0\n")).unwrap();
        run(Command::new("chmod").arg("0755").arg(&p));
    };
    script(
        "postinst",
        "mkdir -p \"$DPKG_ROOT/usr/local/bin\"\n\
         ln -sf /usr/local/sessionmanagerplugin/bin/session-manager-plugin \"$DPKG_ROOT/usr/local/bin/session-manager-plugin\"",
    );
    script(
        "postrm",
        "if [ \"$1\" = remove ]; then rm -f \"$DPKG_ROOT/usr/local/bin/session-manager-plugin\"; fi",
    );
    let bin = pkg.join(BIN_PATH);
    std::fs::write(&bin, "#!/bin/sh\necho aws\n").unwrap();
    run(Command::new("chmod").arg("0755").arg(&bin));
    let deb = dir.join("aws.deb");
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&pkg)
        .arg(&deb));
    deb
}

#[test]
fn the_deb_replaces_aws_package_and_uninstalls_without_a_trace() {
    let deb = artifact(dist(), ".deb");
    let dir = scratch("dpkg-root");
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_owned();
    let aws = stand_in_for_aws_package(&dir, &arch);
    let root = dir.join("root");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // Maintainer scripts run on this machine (not chrooted) with DPKG_ROOT set to the scratch
    // root; our libc dependency is not in the scratch database.
    let dpkg = |args: &[&str], pkg: Option<&Path>| {
        let mut cmd = Command::new("dpkg");
        cmd.arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--force-not-root",
                "--log=/dev/null",
            ])
            .args(args);
        if let Some(p) = pkg {
            cmd.arg(p);
        }
        run(&mut cmd);
    };
    let installed = |name: &str| {
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Status}", name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
            .unwrap_or(false)
    };

    dpkg(&["-i"], Some(&aws));
    assert!(installed("session-manager-plugin"));
    assert_link(&root);

    dpkg(&["-i"], Some(&deb));
    assert!(installed("session-manager-plugin-rs"));
    assert!(
        !installed("session-manager-plugin"),
        "AWS's package was not removed"
    );
    assert_runs(&root.join(BIN_PATH));
    assert_link(&root);

    dpkg(&["--purge", "session-manager-plugin-rs"], None);
    assert!(!installed("session-manager-plugin-rs"));
    for gone in [
        LINK_PATH,
        "usr/local/sessionmanagerplugin",
        "usr/share/man/man1/session-manager-plugin.1.gz",
        "usr/share/doc/session-manager-plugin-rs",
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(gone)).is_err(),
            "{gone} is left after purge"
        );
    }
}
