//! End to end with the real Ansible `amazon.aws.aws_ssm` connection (issue #22): ansible-playbook
//! -> boto3 StartSession on the fake SSM API -> our plugin -> the agent simulator, whose shell
//! runs on this machine, with moto_server as the S3 bucket aws_ssm moves modules through
//! (presigned URLs fetched with curl by the "node"). The simulator closes every websocket with
//! 1000 "Bye" two seconds after it opens, so a task that sleeps 4 s sees the plugin resume under
//! it. Ansible reads any byte the plugin writes to stderr during a command as a failure and runs
//! the task again in a new session, so a resume must be silent there: the task must run once.
//!
//! Needs scripts/.venv-ansible (scripts/ensure-ansible.sh, which scripts/ensure-test-deps.sh
//! runs); without it the test is skipped, except under CI, where it installs it.
//! `SESSION_MANAGER_PLUGIN_MESSAGES` is passed on to the plugin when set, so
//! `SESSION_MANAGER_PLUGIN_MESSAGES=notices cargo test --test e2e_ansible` shows what Ansible
//! does with resume notices on stderr.

mod aws_support;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_support::*;

const BUCKET: &str = "ansible-ssm-e2e";
/// The whole ansible-playbook run.
const PLAYBOOK_LIMIT: Duration = Duration::from_secs(120);
/// moto_server answering.
const MOTO_LIMIT: Duration = Duration::from_secs(30);

/// The venv's bin directory, installing it under CI; `None`: skip.
fn ansible_bin() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = root.join("scripts/.venv-ansible/bin");
    let ready = ["ansible-playbook", "moto_server", "python"]
        .iter()
        .all(|b| bin.join(b).exists());
    if ready {
        return Some(bin);
    }
    if std::env::var_os("CI").is_none() {
        eprintln!(
            "SKIPPED e2e_ansible: {} is missing; run scripts/ensure-ansible.sh \
             (or scripts/ensure-test-deps.sh) to install Ansible, boto3 and moto",
            bin.display()
        );
        return None;
    }
    let out = Command::new(root.join("scripts/ensure-ansible.sh"))
        .output()
        .expect("scripts/ensure-ansible.sh runs");
    assert!(
        out.status.success(),
        "installing Ansible failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A child killed (with its process group) when dropped.
struct Child {
    child: std::process::Child,
}

impl Child {
    fn spawn(mut cmd: Command) -> Self {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        Self {
            child: cmd.spawn().expect("spawn"),
        }
    }

    fn kill(&mut self) {
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Waits up to `limit`; `None` when it had to be killed.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        None
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Environment every Python process of the test gets: no AWS files, no metadata service, the
/// fake API's keys, and both endpoints on 127.0.0.1.
fn aws_env(cmd: &mut Command, home: &Path, ssm: &str, s3: &str) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("LC_ALL", "C.UTF-8")
        .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", REGION)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_ENDPOINT_URL_SSM", ssm)
        .env("AWS_ENDPOINT_URL_S3", s3)
        .env("NO_PROXY", "*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ansible_task_runs_once_across_a_bye() {
    let Some(bin) = ansible_bin() else { return };
    let t0 = Instant::now();

    let mut cfg = signed_config();
    // Every websocket is closed with 1000 "Bye" 2 s after it opens: during the task's sleep 4.
    cfg.limits.ws_lifetime = Some(Duration::from_secs(2));
    let world = World::start(cfg).await;
    let ssm_url = world.api.url();

    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path();

    // moto_server as S3.
    let moto_port = free_port();
    let s3_url = format!("http://127.0.0.1:{moto_port}");
    let moto_log = home.join("moto.log");
    let mut moto_cmd = Command::new(bin.join("moto_server"));
    aws_env(&mut moto_cmd, home, &ssm_url, &s3_url);
    moto_cmd
        .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&moto_log).unwrap())
        .stderr(std::fs::File::create(home.join("moto.err")).unwrap());
    let _moto = Child::spawn(moto_cmd);
    let end = Instant::now() + MOTO_LIMIT;
    while TcpStream::connect(("127.0.0.1", moto_port)).is_err() {
        assert!(
            Instant::now() < end,
            "moto_server did not listen on {moto_port} within {MOTO_LIMIT:?}:\n{}\n{}",
            read(&moto_log),
            read(&home.join("moto.err"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let moto_ready = t0.elapsed();

    let mut mb = Command::new(bin.join("python"));
    aws_env(&mut mb, home, &ssm_url, &s3_url);
    let out = mb
        .args([
            "-c",
            "import boto3,sys; boto3.client('s3').create_bucket(Bucket=sys.argv[1])",
            BUCKET,
        ])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "creating the bucket failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bucket_ready = t0.elapsed();

    // Inventory, playbook, ansible.cfg.
    let marker = home.join("marker.txt");
    let plugin_log = home.join("plugin.log");
    let plugin = env!("CARGO_BIN_EXE_session-manager-plugin");
    let python = bin.join("python");
    std::fs::write(
        home.join("inventory.yml"),
        format!(
            "all:\n  hosts:\n    {TARGET}:\n      ansible_connection: amazon.aws.aws_ssm\n      \
             ansible_aws_ssm_plugin: \"{plugin}\"\n      ansible_aws_ssm_region: {REGION}\n      \
             ansible_aws_ssm_bucket_name: {BUCKET}\n      \
             ansible_aws_ssm_bucket_endpoint_url: \"{s3_url}\"\n      \
             ansible_aws_ssm_s3_addressing_style: path\n      \
             ansible_aws_ssm_timeout: 60\n      ansible_aws_ssm_retries: 3\n      \
             ansible_python_interpreter: \"{}\"\n      marker_file: \"{}\"\n",
            python.display(),
            marker.display()
        ),
    )
    .unwrap();
    std::fs::write(
        home.join("playbook.yml"),
        "- hosts: all\n  gather_facts: false\n  tasks:\n    - name: sleep across the Bye\n      \
         ansible.builtin.shell: sleep 4; echo after-the-bye >> {{ marker_file }}\n",
    )
    .unwrap();
    std::fs::write(
        home.join("ansible.cfg"),
        format!(
            "[defaults]\nlocal_tmp = {h}/ansible-local\nremote_tmp = {h}/ansible-remote\n\
             retry_files_enabled = false\nhost_key_checking = false\n\
             interpreter_python = {py}\nnocolor = true\ndeprecation_warnings = false\n",
            h = home.display(),
            py = python.display()
        ),
    )
    .unwrap();

    let ansible_out = home.join("ansible.out");
    let mut cmd = Command::new(bin.join("ansible-playbook"));
    aws_env(&mut cmd, home, &ssm_url, &s3_url);
    cmd.env("ANSIBLE_CONFIG", home.join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("SESSION_MANAGER_PLUGIN_LOG", "debug")
        .env("SESSION_MANAGER_PLUGIN_LOG_FILE", &plugin_log)
        .current_dir(home)
        .args(["-vvvv", "-i", "inventory.yml", "playbook.yml"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&ansible_out).unwrap())
        .stderr(Stdio::from(
            std::fs::File::options()
                .append(true)
                .open(&ansible_out)
                .unwrap(),
        ));
    if let Some(m) = std::env::var_os("SESSION_MANAGER_PLUGIN_MESSAGES") {
        cmd.env("SESSION_MANAGER_PLUGIN_MESSAGES", m);
    }
    let started = Instant::now();
    let mut ansible = Child::spawn(cmd);
    let status = tokio::task::block_in_place(|| ansible.wait(PLAYBOOK_LIMIT));
    let playbook_time = started.elapsed();

    let output = read(&ansible_out);
    let marks = read(&marker);
    let runs = marks.lines().filter(|l| *l == "after-the-bye").count();
    let starts = world.calls("StartSession").len();
    let resumes = world.calls("ResumeSession").len();
    let timings = format!(
        "timings: moto listening {moto_ready:?}, bucket {bucket_ready:?}, ansible-playbook \
         {playbook_time:?}, total {:?}; StartSession {starts}, ResumeSession {resumes}, \
         task ran {runs} time(s)",
        t0.elapsed()
    );
    eprintln!("{timings}");
    let report = || {
        // The lines that tell what happened, then the end of the output and the plugin log.
        let telling: Vec<&str> = output
            .lines()
            .filter(|l| {
                l.contains("stderr line")
                    || l.contains("ssm_retry")
                    || l.contains("fatal")
                    || l.contains("FAILED")
                    || l.contains("ESTABLISH SSM")
                    || l.contains("PLAY RECAP")
                    || l.contains("ok=")
            })
            .collect();
        format!(
            "{timings}\n--- marker file\n{marks}\n--- telling lines of ansible-playbook -vvvv\n{}\n\
             --- ansible-playbook output (tail)\n{}\n--- plugin log (tail)\n{}",
            telling.join("\n"),
            tail(&output, 60),
            tail(&read(&plugin_log), 40)
        )
    };

    let status = status.unwrap_or_else(|| {
        panic!(
            "ansible-playbook did not finish within {PLAYBOOK_LIMIT:?}\n{}",
            report()
        )
    });
    assert!(
        status.success(),
        "ansible-playbook failed: {status}\n{}",
        report()
    );
    assert_eq!(
        runs,
        1,
        "the task must run exactly once (Ansible reruns it when the plugin writes to stderr)\n{}",
        report()
    );
    assert!(
        resumes >= 1,
        "the websocket was never closed under the task: no ResumeSession\n{}",
        report()
    );
}
