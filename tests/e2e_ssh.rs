//! SSH over Session Manager with the real tools: OpenSSH's `ssh` and `scp` use
//! `aws ssm start-session --document-name AWS-StartSSHSession` as their ProxyCommand, the AWS
//! CLI runs our plugin from PATH, and the simulated agent forwards to a throwaway `sshd` on
//! 127.0.0.1. scripts/ensure-test-deps.sh installs OpenSSH.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use support::*;

struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn key(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn sftp_server() -> &'static str {
    [
        "/usr/lib/openssh/sftp-server",
        "/usr/libexec/openssh/sftp-server",
        "/usr/lib/ssh/sftp-server",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("internal-sftp")
}

/// Starts sshd on 127.0.0.1 accepting one generated key for the current user.
async fn start_sshd() -> Sshd {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "sshd is missing: run scripts/ensure-test-deps.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(d.join("host_key")));
    run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(d.join("id_ed25519")));
    std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).unwrap();
    // Privilege separation needs this directory when sshd runs as root.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let config = format!(
        "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
         StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\nSubsystem sftp {sftp}\nLogLevel ERROR\n",
        hk = d.join("host_key").display(),
        ak = d.join("authorized_keys").display(),
        pid = d.join("sshd.pid").display(),
        sftp = sftp_server(),
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    let child = std::process::Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sshd starts");
    // Wait (bounded) until it listens.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Sshd { dir, port, child }
}

fn user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let out = std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
}

/// ssh/scp options: our key, no host key prompts, and the AWS CLI as ProxyCommand.
fn ssh_options(w: &World, sshd: &Sshd) -> Vec<String> {
    let aws = aws_cli();
    let proxy = format!(
        "{aws} ssm start-session --target %h --document-name AWS-StartSSHSession --parameters portNumber=%p --endpoint-url {url} --region us-east-1",
        aws = aws.display(),
        url = w.api.url()
    );
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        sshd.key().display().to_string(),
        "-o".into(),
        "StrictHostKeyChecking=no".into(),
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-o".into(),
        format!("ProxyCommand={proxy}"),
    ]
}

fn tool(w: &World, program: &str) -> tokio::process::Command {
    let plugin_dir = plugin_bin().parent().unwrap().to_path_buf();
    let mut c = tokio::process::Command::new(program);
    c.env_clear()
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("HOME", w.home.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn finish(mut c: tokio::process::Command, limit: Duration) -> Finished {
    let out = tokio::time::timeout(limit, c.output())
        .await
        .expect("finishes in time")
        .expect("runs");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn ssh_and_scp_through_the_aws_cli_and_our_plugin() {
    let w = world(fast_config()).await;
    let sshd = start_sshd().await;
    let opts = ssh_options(&w, &sshd);

    // A remote command, its output and its exit status.
    let mut c = tool(&w, "ssh");
    c.args(&opts)
        .args(["-p", &sshd.port.to_string()])
        .arg(format!("{}@i-0123456789abcdef0", user()))
        .arg("echo ssh-over-ssm-$((6*7)); exit 5");
    let out = finish(c, Duration::from_secs(60)).await;
    assert!(
        out.stdout.contains("ssh-over-ssm-42"),
        "stdout:{}\nstderr:{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.status.code(), Some(5), "stderr:{}", out.stderr);

    // scp of 16 MiB of random data, compared byte for byte.
    let src = w.home.path().join("payload.bin");
    let mut data = vec![0u8; 16 * 1024 * 1024];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&src, &data).unwrap();
    let dst = w.home.path().join("copied.bin");
    let mut c = tool(&w, "scp");
    c.args(&opts)
        .args(["-q", "-P", &sshd.port.to_string()])
        .arg(&src)
        .arg(format!("{}@i-0123456789abcdef0:{}", user(), dst.display()));
    let out = finish(c, Duration::from_secs(240)).await;
    assert!(out.status.success(), "scp failed: {}", out.stderr);
    let copied = std::fs::read(&dst).expect("the copy exists");
    assert!(
        copied == data,
        "the copied file differs ({} bytes vs {})",
        copied.len(),
        data.len()
    );
}
