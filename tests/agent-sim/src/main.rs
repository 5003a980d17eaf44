//! `agent-sim`: runs the agent + relay simulator (and, once merged, the fake AWS API) for
//! end-to-end tests of the plugin. Prints one JSON line with the URLs, then runs until SIGTERM,
//! SIGINT or EOF on stdin.

use std::time::Duration;

use agent_sim::{DirFaults, Faults, Limits, SimConfig, Simulator};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Simulator of the SSM agent and the Session Manager relay service"
)]
struct Args {
    /// AgentVersion announced in the handshake (<= 3.0.196.0: no smux, basic port forwarding).
    #[arg(long, default_value = "3.3.987.0")]
    agent_version: String,
    /// Also serve wss:// with a generated certificate (its CA goes to cert_file).
    #[arg(long)]
    tls: bool,
    /// KMS key id the agent asks for (turns on encryption for non-Port sessions).
    #[arg(long)]
    kms_key_id: Option<String>,
    /// Refuse clients that do not acknowledge the KMS random challenge.
    #[arg(long)]
    require_kms_challenge: bool,
    /// Encrypt port sessions too (the real agent never does; for testing a plugin's encryption).
    #[arg(long)]
    kms_for_port_sessions: bool,
    /// aws:ssm:TargetId in the agent's KMS context (default: the session's target).
    #[arg(long)]
    agent_instance_id: Option<String>,
    /// Shell for Standard_Stream sessions.
    #[arg(long, default_value = "sh")]
    shell: String,
    /// Milliseconds before the PTY output starts (agent: 1000).
    #[arg(long, default_value_t = 1000)]
    pty_start_delay_ms: u64,
    /// Agent handshake timeout, milliseconds (agent: 15000).
    #[arg(long, default_value_t = 15_000)]
    handshake_timeout_ms: u64,
    /// Agent drain wait at close, milliseconds (agent: 2000).
    #[arg(long, default_value_t = 2000)]
    close_drain_ms: u64,
    /// Seconds a dropped session waits for a resume.
    #[arg(long, default_value_t = 60)]
    resume_window_secs: u64,
    /// NonInteractiveCommands separateOutputStream default (AWS's document: false).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    separate_output_stream: bool,
    /// Do not queue agent frames while no client is connected.
    #[arg(long)]
    no_queue: bool,
    /// On a client smux FIN only shut down writing (the agent closes the connection).
    #[arg(long)]
    mux_half_close: bool,
    /// No 1 ms pacing of port reads.
    #[arg(long)]
    no_port_pacing: bool,
    /// Client data frames per second before throttling; 0 disables.
    #[arg(long, default_value_t = 1000)]
    frame_rate_limit: u32,
    /// Seconds the rate must stay above the limit.
    #[arg(long, default_value_t = 2)]
    frame_rate_window_secs: u64,
    /// Close client websockets with 1000 "Bye" after this many seconds.
    #[arg(long)]
    ws_lifetime_secs: Option<u64>,
    /// smux receive buffer in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    smux_receive_buffer: usize,
    /// smux keep-alive interval and timeout, seconds.
    #[arg(long, default_value_t = 10)]
    smux_keepalive_interval_secs: u64,
    #[arg(long, default_value_t = 30)]
    smux_keepalive_timeout_secs: u64,
    /// Fault generator seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Faults towards the client: drop,duplicate,reorder,corrupt,malformed rates and delay ms,
    /// as `drop=0.1,duplicate=0.05,delay=20`.
    #[arg(long, default_value = "")]
    faults_to_client: String,
    /// Faults towards the agent, same syntax.
    #[arg(long, default_value = "")]
    faults_to_agent: String,
    /// Accept websockets and never answer.
    #[arg(long)]
    stall: bool,
    /// Also serve the fake AWS API (SSM/ECS/KMS) on 127.0.0.1 (the value is ignored; the port is
    /// ephemeral and printed in `api_url`).
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
    api: Option<String>,
    /// Access key id the fake API accepts (SigV4 checked); without it signatures are not checked.
    #[arg(long)]
    api_access_key_id: Option<String>,
    /// Secret access key for `--api-access-key-id`.
    #[arg(long)]
    api_secret_access_key: Option<String>,
    /// Check SigV4 on websocket upgrades against the `--api-access-key-id` pair (403 when wrong).
    #[arg(long)]
    verify_ws_signatures: bool,
    /// Refuse unsigned websocket upgrades (with `--verify-ws-signatures`).
    #[arg(long)]
    require_signed_upgrade: bool,
}

fn parse_faults(s: &str) -> anyhow::Result<DirFaults> {
    let mut f = DirFaults::default();
    for item in s.split(',').filter(|i| !i.trim().is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("fault `{item}` must be key=value"))?;
        let x: f64 = v.trim().parse()?;
        match k.trim() {
            "drop" => f.drop = x,
            "duplicate" => f.duplicate = x,
            "reorder" => f.reorder = x,
            "corrupt" => f.corrupt_digest = x,
            "malformed" => f.malformed = x,
            "delay" => f.delay = Duration::from_millis(x as u64),
            "reorder_delay" => f.reorder_delay = Duration::from_millis(x as u64),
            other => anyhow::bail!("unknown fault `{other}` (drop, duplicate, reorder, corrupt, malformed, delay, reorder_delay)"),
        }
    }
    Ok(f)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "agent_sim=info".into()),
        )
        .init();
    let a = Args::parse();
    let config = SimConfig {
        agent_version: a.agent_version,
        tls: a.tls,
        kms_key_id: a.kms_key_id,
        require_kms_challenge: a.require_kms_challenge,
        kms_for_port_sessions: a.kms_for_port_sessions,
        agent_instance_id: a.agent_instance_id,
        shell: a.shell,
        pty_start_delay: Duration::from_millis(a.pty_start_delay_ms),
        handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
        close_drain_timeout: Duration::from_millis(a.close_drain_ms),
        resume_window: Duration::from_secs(a.resume_window_secs),
        separate_output_stream: a.separate_output_stream,
        queue_while_disconnected: !a.no_queue,
        mux_half_close: a.mux_half_close,
        ws_credentials: match (&a.api_access_key_id, &a.api_secret_access_key) {
            (Some(id), Some(secret)) if a.verify_ws_signatures => {
                std::collections::BTreeMap::from([(id.clone(), secret.clone())])
            }
            _ => Default::default(),
        },
        require_signed_upgrade: a.require_signed_upgrade,
        limits: Limits {
            port_pacing: !a.no_port_pacing,
            frame_rate_limit: (a.frame_rate_limit > 0).then_some(a.frame_rate_limit),
            frame_rate_window: Duration::from_secs(a.frame_rate_window_secs),
            ws_lifetime: a.ws_lifetime_secs.map(Duration::from_secs),
            smux_receive_buffer: a.smux_receive_buffer,
            smux_keepalive_interval: Duration::from_secs(a.smux_keepalive_interval_secs),
            smux_keepalive_timeout: Duration::from_secs(a.smux_keepalive_timeout_secs),
        },
        faults: Faults {
            seed: a.seed,
            to_client: parse_faults(&a.faults_to_client)?,
            to_agent: parse_faults(&a.faults_to_agent)?,
            stall: a.stall,
        },
    };
    // One KMS store shared by the fake KMS (which hands out data keys) and the simulated agent
    // (which recovers them from the ciphertext the plugin sends back).
    let kms = std::sync::Arc::new(agent_sim::api::KmsStore::new());
    let sim = Simulator::start_with_resolver(config, Some(kms.clone())).await?;
    let mut _api_handle = None;
    let api_url: Option<String> = match &a.api {
        Some(_) => {
            let mut opts = agent_sim::api::ApiOptions {
                kms: Some(kms.clone()),
                ..Default::default()
            };
            if let (Some(id), Some(secret)) = (&a.api_access_key_id, &a.api_secret_access_key) {
                opts.credentials.insert(id.clone(), secret.clone());
            } else {
                opts.verify_signatures = false;
            }
            let handle = agent_sim::api::serve(std::sync::Arc::new(sim.backend()), opts).await?;
            let url = handle.url();
            _api_handle = Some(handle);
            Some(url)
        }
        None => None,
    };
    let line = serde_json::json!({
        "ws_url": sim.wss_url.clone().unwrap_or_else(|| sim.ws_url.clone()),
        "plain_ws_url": sim.ws_url,
        "api_url": api_url,
        "cert_file": sim.cert_file.as_ref().map(|p| p.display().to_string()),
    });
    println!("{line}");

    let stdin_eof = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_eof => {}
    }
    sim.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
