//! OpenSSH through the plugin's stdio mode, as `ProxyCommand`: scp of 16 MiB to a throwaway
//! sshd on 127.0.0.1 and back through `ssh cat`, byte for byte. Needs ssh, scp and sshd
//! (`scripts/ensure-openssh.sh` installs them when missing).

mod port_common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use port_common::*;
use sha2::{Digest, Sha256};

const AGENT: &str = "3.3.987.0";

fn sha_file(p: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(p).unwrap()).into()
}

struct Sshd(std::process::Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the files one ProxyCommand run needs: a fresh session's response and request.
fn session_files(sim: &agent_sim::SimHandle, dir: &Path, name: &str, sshd_port: u16) -> String {
    let (st, req) = start(
        sim,
        "AWS-StartSSHSession",
        &[("portNumber", &sshd_port.to_string())],
    );
    let resp = serde_json::json!({
        "SessionId": st.session_id, "TokenValue": st.token_value, "StreamUrl": st.stream_url,
    });
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("response.json"), resp.to_string()).unwrap();
    std::fs::write(d.join("request.json"), req).unwrap();
    d.to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_and_scp_through_proxycommand() {
    let ensure = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-openssh.sh");
    run(&mut std::process::Command::new(ensure));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for k in ["hostkey", "userkey"] {
        run(std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(k)));
    }
    std::fs::copy(d.join("userkey.pub"), d.join("authorized_keys")).unwrap();
    let port = free_port();
    let user = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/hostkey\nAuthorizedKeysFile {0}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PidFile {0}/sshd.pid\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n",
            d.display()
        ),
    )
    .unwrap();
    let _sshd = Sshd(
        std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts"),
    );
    connect("127.0.0.1", port).await;
    // The ProxyCommand: the plugin started as the AWS CLI does (response in the environment).
    let proxy = d.join("proxy.sh");
    std::fs::write(
        &proxy,
        format!(
            "#!/bin/sh\nAWS_SSM_START_SESSION_RESPONSE=\"$(cat \"$1/response.json\")\" \
             HOME=\"$1\" AWS_EC2_METADATA_DISABLED=true SESSION_MANAGER_PLUGIN_MAX_FRAME_RATE=0 \
             exec {} AWS_SSM_START_SESSION_RESPONSE us-east-1 StartSession '' \"$(cat \"$1/request.json\")\" '' 2>>\"$1/plugin.err\"\n",
            env!("CARGO_BIN_EXE_session-manager-plugin")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&proxy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sim = sim(sim_config(false, AGENT)).await;
    let ssh_opts = |session: &str| -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            d.join("userkey").to_str().unwrap().into(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-o".into(),
            format!("ProxyCommand={} {session}", proxy.display()),
        ]
    };
    // Upload with scp.
    let len = 16 * MIB;
    let mut data = vec![0u8; len];
    Gen::new(61).fill(&mut data);
    let src = d.join("up.bin");
    std::fs::write(&src, &data).unwrap();
    let remote = d.join("remote.bin");
    let s1 = session_files(&sim, d, "s1", port);
    let scp = tokio::process::Command::new("scp")
        .args(ssh_opts(&s1))
        .arg(&src)
        .arg(format!("{user}@i-0123456789abcdef0:{}", remote.display()))
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), scp)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "scp: {}; plugin: {:?}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(format!("{s1}/plugin.err"))
    );
    assert_eq!(sha_file(&remote), sha_file(&src), "uploaded file differs");
    // Download with ssh cat.
    let s2 = session_files(&sim, d, "s2", port);
    let ssh = tokio::process::Command::new("ssh")
        .args(ssh_opts(&s2))
        .arg(format!("{user}@i-0123456789abcdef0"))
        .arg(format!("cat {}", remote.display()))
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), ssh)
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), len);
    assert_eq!(
        Sha256::digest(&out.stdout).as_slice(),
        sha_file(&src).as_slice()
    );
    sim.shutdown();
}
