//! The packages of `packaging/build.sh`, built from the debug binary the test command already has
//! (a release build takes minutes): the binary unpacked from the .deb, the .rpm and the .tar.gz
//! runs and prints the version; the .deb and .rpm put it where AWS's packages do, linked from
//! /usr/local/bin, and declare that they replace AWS's `session-manager-plugin`; the .deb
//! replaces a stand-in for AWS's package and uninstalls without a trace (dpkg in a scratch root).
//!
//! The packages carry the maintainer, homepage and release address the publisher gives
//! build.sh, and a real description; without them nothing claims a made-up address.
//! packaging/install.sh is run with a stand-in `cargo` (no release build).
//!
//! The packages are built with dpkg-deb and rpmbuild (packaging/rpm/session-manager-plugin-rs.spec).
//! The tools come from `scripts/ensure-packaging-tools.sh` (run by `scripts/test.sh`; apt
//! packages, seconds to install); a missing tool fails the test with that advice, never skips it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const WIRE_VERSION: &str = "1.2.764.0";
const BIN_PATH: &str = "usr/local/sessionmanagerplugin/bin/session-manager-plugin";
const LINK_PATH: &str = "usr/local/bin/session-manager-plugin";
// What a publisher passes to packaging/build.sh (dist()).
const MAINTAINER: &str = "Test Packager <packager@test.invalid>";
const HOMEPAGE: &str = "https://test.invalid/session-manager-plugin";
const RELEASE_URL: &str = "https://test.invalid/session-manager-plugin/v1/src.tar.gz?a=1&b=2";

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
    let tools: [(&str, &[&str]); 5] = [
        ("dpkg-deb", &["dpkg-deb", "--version"]),
        ("rpmbuild", &["rpmbuild", "--version"]),
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

/// packaging/build.sh packaging the test build's binary into `out`, without the publisher's
/// settings of the caller's environment.
fn build_sh(out: &Path) -> Command {
    let _ = std::fs::remove_dir_all(out);
    let mut cmd = Command::new(repo().join("packaging/build.sh"));
    cmd.arg("--binary")
        .arg(env!("CARGO_BIN_EXE_session-manager-plugin"))
        .arg("--out")
        .arg(out)
        .args(["--fast", "--no-install"])
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("MAINTAINER")
        .env_remove("HOMEPAGE")
        .env_remove("RELEASE_URL");
    cmd
}

/// Runs packaging/build.sh once for all tests of this file, as a publisher does (MAINTAINER,
/// HOMEPAGE, RELEASE_URL); returns the output directory.
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        require_tools();
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-dist");
        run(build_sh(&out)
            .env("MAINTAINER", MAINTAINER)
            .env("HOMEPAGE", HOMEPAGE)
            .env("RELEASE_URL", RELEASE_URL));
        out
    })
}

fn rpm_query(rpm: &Path, format: &str) -> String {
    stdout(
        Command::new("rpm")
            .arg("-qp")
            .args(["--qf", format])
            .arg(rpm),
    )
}

fn description() -> String {
    std::fs::read_to_string(repo().join("packaging/description.txt"))
        .unwrap()
        .trim()
        .to_owned()
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
    assert_eq!(field("Section"), "admin");
    assert_eq!(field("Priority"), "optional");
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    // The shared libraries the binary links, at the versions of the symbols it uses (a static
    // binary would depend on nothing).
    let depends = field("Depends");
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(depends.starts_with("libc6 (>= 2."), "Depends: {depends}");
    }

    let root = scratch("deb");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    assert_runs(&root.join(BIN_PATH));
    assert_link(&root);
    let bin_kib = std::fs::metadata(root.join(BIN_PATH)).unwrap().len() / 1024;
    let size: u64 = field("Installed-Size").parse().unwrap();
    assert!(
        (bin_kib..bin_kib + 1024).contains(&size),
        "Installed-Size {size} KiB, the binary {bin_kib} KiB"
    );
    // Every file is root's; dpkg checks the md5sums (dpkg --verify, below).
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for line in listing.lines() {
        assert!(
            line.split_whitespace().nth(1) == Some("root/root"),
            "not root's: {line}"
        );
    }
    let md5sums = stdout(
        Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --ctrl-tarfile \"$1\" | tar -xO ./md5sums")
            .arg("sh")
            .arg(&deb),
    );
    assert!(
        md5sums
            .lines()
            .any(|l| l.ends_with(&format!("  {BIN_PATH}"))),
        "md5sums:\n{md5sums}"
    );
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
    assert_eq!(query(&["--qf", "%{RELEASE} %{LICENSE}"]), "1 Apache-2.0");
    // Exactly these files (and the package's own doc and licence directories): no build-id
    // links, no debuginfo, the man page as it is.
    let files = query(&["-l"]);
    assert_eq!(
        files.lines().collect::<Vec<_>>(),
        [
            "/usr/local/sessionmanagerplugin/bin/session-manager-plugin",
            "/usr/share/doc/session-manager-plugin-rs",
            "/usr/share/doc/session-manager-plugin-rs/CHANGELOG.md",
            "/usr/share/doc/session-manager-plugin-rs/README.md",
            "/usr/share/licenses/session-manager-plugin-rs",
            "/usr/share/licenses/session-manager-plugin-rs/LICENSE",
            "/usr/share/man/man1/session-manager-plugin.1",
        ],
        "rpm -qpl"
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
    // The installed files match the package's md5sums.
    dpkg(&["--verify", "session-manager-plugin-rs"], None);

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

/// A stand-in `cargo` for packaging/install.sh: it logs its arguments and "builds" the debug
/// binary into `$CARGO_TARGET_DIR/release` (a release build takes minutes). Returns the
/// directory to put first on PATH, the log, and the target directory.
fn fake_cargo(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let bin_dir = dir.join("fake-bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let log = dir.join("cargo.log");
    let target = dir.join("target");
    let cargo = bin_dir.join("cargo");
    std::fs::write(
        &cargo,
        format!(
            "#!/bin/sh\nset -e\necho \"$*\" >>'{}'\nmkdir -p \"$CARGO_TARGET_DIR/release\"\n\
             cp '{}' \"$CARGO_TARGET_DIR/release/session-manager-plugin\"\n",
            log.display(),
            env!("CARGO_BIN_EXE_session-manager-plugin")
        ),
    )
    .unwrap();
    run(Command::new("chmod").arg("0755").arg(&cargo));
    (bin_dir, log, target)
}

fn install_sh(dir: &Path, bin_dir: &Path, target: &Path) -> Command {
    let mut cmd = Command::new(repo().join("packaging/install.sh"));
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.current_dir(dir)
        .env("PATH", format!("{}:{path}", bin_dir.display()))
        .env("CARGO_TARGET_DIR", target)
        .env_remove("PREFIX");
    cmd
}

#[test]
fn install_sh_takes_a_relative_prefix_relative_to_the_current_directory() {
    let dir = scratch("install-relative");
    let (bin_dir, log, target) = fake_cargo(&dir);
    let caller = dir.join("caller");
    std::fs::create_dir_all(&caller).unwrap();
    let name = "install-sh-relative-prefix";
    let in_clone = repo().join(name);
    assert!(!in_clone.exists(), "{in_clone:?} exists before the test");

    let out =
        String::from_utf8(run(install_sh(&caller, &bin_dir, &target).arg(name)).stdout).unwrap();
    let created_in_clone = in_clone.exists();
    let _ = std::fs::remove_dir_all(&in_clone);
    assert!(
        !created_in_clone,
        "installed into the clone ({in_clone:?}):\n{out}"
    );
    let cargo_args = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        cargo_args.trim(),
        "build --release --locked -p session-manager-plugin"
    );

    let prefix = caller.join(name);
    let bin = prefix.join("bin/session-manager-plugin");
    assert_runs(&bin);
    assert!(prefix
        .join("share/man/man1/session-manager-plugin.1")
        .is_file());
    // The package's version, and the wire version said as what it is.
    let installed = format!(
        "installed {}: session-manager-plugin {VERSION} (speaks AWS plugin protocol {WIRE_VERSION})",
        bin.display()
    );
    assert!(
        out.lines().any(|l| l == installed),
        "no line {installed:?} in:\n{out}"
    );

    // --uninstall takes the same relative PREFIX.
    let out = String::from_utf8(
        run(install_sh(&caller, &bin_dir, &target).args(["--uninstall", name])).stdout,
    )
    .unwrap();
    assert!(
        out.lines()
            .any(|l| l == format!("removed {}", bin.display())),
        "{out}"
    );
    assert!(!bin.exists(), "{bin:?} is left after --uninstall");
}

#[test]
fn install_sh_help_prints_usage_and_builds_nothing_and_unknown_options_fail() {
    let dir = scratch("install-help");
    let (bin_dir, log, target) = fake_cargo(&dir);
    for help in ["--help", "-h"] {
        let out = run(install_sh(&dir, &bin_dir, &target).arg(help));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("Usage: packaging/install.sh [PREFIX]"),
            "install.sh {help}:\n{text}"
        );
        assert!(out.stderr.is_empty(), "install.sh {help}: {:?}", out.stderr);
    }
    for bad in [
        &["--bogus"][..],
        &["-x", "prefix"],
        &["--uninstall", "--prefix=x"],
    ] {
        let out = install_sh(&dir, &bin_dir, &target)
            .args(bad)
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "install.sh {bad:?} succeeded");
        assert_eq!(
            err.lines().count(),
            1,
            "install.sh {bad:?}: one line:\n{err}"
        );
        assert!(err.contains("unknown option"), "install.sh {bad:?}: {err}");
    }
    assert!(
        !log.exists(),
        "install.sh ran cargo: {:?}",
        std::fs::read_to_string(&log)
    );
    assert!(!target.exists(), "install.sh built something");
    assert!(
        std::fs::read_dir(&dir)
            .unwrap()
            .all(|e| e.unwrap().file_name() == "fake-bin"),
        "install.sh made files in {dir:?}"
    );
}

#[test]
fn the_packages_carry_the_publishers_maintainer_and_homepage_and_a_real_description() {
    let dist = dist();
    let deb = artifact(dist, ".deb");
    let field = |f: &str| {
        stdout(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Maintainer"), MAINTAINER);
    let deb_description = field("Description");
    let text = description();
    let first_words: String = text
        .split_whitespace()
        .take(12)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        deb_description
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .contains(&first_words),
        "the .deb's Description is not packaging/description.txt:\n{deb_description}"
    );

    let rpm = artifact(dist, ".rpm");
    assert_eq!(rpm_query(&rpm, "%{URL}"), HOMEPAGE);
    let summary = rpm_query(&rpm, "%{SUMMARY}");
    assert!(!summary.contains('\n') && summary.len() < 80, "{summary:?}");
    let rpm_description = rpm_query(&rpm, "%{DESCRIPTION}");
    assert_eq!(rpm_description.trim(), text, "the .rpm's Description");
    let words = rpm_description
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        words.matches(". ").count() >= 3,
        "a few sentences, not the summary: {rpm_description}"
    );
    // rpm checks the package's digests.
    let checked = stdout(Command::new("rpm").arg("-K").arg(&rpm));
    assert!(
        checked.trim_end().ends_with("digests OK"),
        "rpm -K: {checked}"
    );
    assert_eq!(
        rpm_query(&rpm, "%{NAME} %{VERSION}"),
        format!("session-manager-plugin-rs {VERSION}")
    );
}

#[test]
fn the_homebrew_formula_is_filled_in_and_the_template_says_it_is_one() {
    let dist = dist();
    let formula = std::fs::read_to_string(dist.join("session-manager-plugin.rb")).unwrap();
    let src = artifact(dist, ".src.tar.gz");
    let src_sum = stdout(Command::new("sha256sum").arg(&src));
    let src_sum = src_sum.split_whitespace().next().unwrap();
    for line in [
        format!("  homepage \"{HOMEPAGE}\""),
        format!("  url \"{RELEASE_URL}\""),
        format!("  version \"{VERSION}\""),
        format!("  sha256 \"{src_sum}\""),
    ] {
        assert!(
            formula.lines().any(|l| l == line),
            "no line {line:?} in the formula:\n{formula}"
        );
    }
    for placeholder in ["@HOMEPAGE@", "@RELEASE_URL@", "TEMPLATE", "OWNER"] {
        assert!(
            !formula.contains(placeholder),
            "{placeholder} in:\n{formula}"
        );
    }
    let sums = std::fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    assert!(
        sums.lines()
            .any(|l| l.ends_with(" session-manager-plugin.rb")),
        "{sums}"
    );

    let template =
        std::fs::read_to_string(repo().join("packaging/session-manager-plugin.rb")).unwrap();
    assert!(
        template.contains("# TEMPLATE, not a usable formula"),
        "{template}"
    );
    for line in ["  homepage \"@HOMEPAGE@\"", "  url \"@RELEASE_URL@\""] {
        assert!(
            template.lines().any(|l| l == line),
            "no {line:?} in the template"
        );
    }
    assert!(!template.contains("OWNER"));
}

#[test]
fn without_the_publishers_settings_nothing_claims_a_made_up_address() {
    require_tools();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packaging-dist-defaults");
    let built = run(&mut build_sh(&out));
    let notes = String::from_utf8_lossy(&built.stderr);
    assert!(notes.contains("MAINTAINER is not set"), "{notes}");
    assert!(notes.contains("no Homebrew formula"), "{notes}");

    let deb = artifact(&out, ".deb");
    let control = stdout(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(
        control
            .lines()
            .any(|l| l == "Maintainer: session-manager-plugin maintainers"),
        "{control}"
    );
    assert!(
        !control.contains('@') && !control.contains(".example") && !control.contains("Homepage"),
        "{control}"
    );
    let rpm = artifact(&out, ".rpm");
    assert_eq!(rpm_query(&rpm, "%{URL}"), "(none)");
    assert_eq!(rpm_query(&rpm, "%{DESCRIPTION}").trim(), description());
    assert!(
        !out.join("session-manager-plugin.rb").exists(),
        "a formula with placeholders was written"
    );
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert!(!sums.contains(".rb"), "{sums}");
}

#[test]
fn build_sh_without_a_packaging_tool_says_which_in_one_line() {
    // A PATH with what build.sh runs before it looks for the tools, and dpkg-deb, but no
    // rpmbuild.
    let dir = scratch("no-rpmbuild");
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    for tool in ["bash", "awk", "uname", "dirname", "dpkg-deb"] {
        let path = stdout(
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}")),
        );
        std::os::unix::fs::symlink(path.trim(), bin_dir.join(tool)).unwrap();
    }
    let out = build_sh(&dir.join("out"))
        .env("PATH", &bin_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "build.sh succeeded without rpmbuild:\n{err}"
    );
    let last: Vec<&str> = err.lines().filter(|l| !l.contains("note:")).collect();
    assert_eq!(last.len(), 1, "one line:\n{err}");
    assert!(
        last[0].starts_with("build.sh: rpmbuild is not installed")
            && last[0].contains("scripts/ensure-packaging-tools.sh"),
        "{err}"
    );
}
