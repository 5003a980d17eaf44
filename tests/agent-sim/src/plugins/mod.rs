//! The agent's session plugins and the per-session driver (`sessionplugin.go: Execute`).

mod command;
mod port;
mod shell;
pub(crate) mod text;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::datachannel::DataChannel;
use crate::session::{AgentInput, Kind, Session};

/// Runs one session's agent from start to the relay's channel_closed.
pub(crate) async fn run_agent(sess: Arc<Session>, rx: mpsc::Receiver<AgentInput>) {
    let dc = DataChannel::new(sess.clone());
    dc.start(rx);
    sess.agent_state("Connected");
    let output = execute(&dc).await;
    // The deferred PrepareToCloseChannel + Close of sessionplugin.go.
    dc.prepare_to_close().await;
    sess.finish(output);
}

async fn execute(dc: &Arc<DataChannel>) -> String {
    let sess = dc.sess.clone();
    let is_port = matches!(sess.kind, Kind::Port { .. });
    // isEncryptionEnabled: a KMS key and not Port.
    let kms = if is_port && !sess.cfg.kms_for_port_sessions {
        None
    } else {
        sess.kms_key.clone()
    };
    // RequireHandshake is true for Port and NonInteractiveCommands only.
    let requires = matches!(sess.kind, Kind::Port { .. } | Kind::NonInteractive { .. });
    if requires || kms.is_some() {
        let properties = match &sess.kind {
            Kind::Port { properties, .. } => serde_json::Value::Object(properties.clone()),
            _ => serde_json::Value::Null,
        };
        if let Kind::NonInteractive { separate, .. } = &sess.kind {
            dc.set_separate_output(*separate);
        }
        if let Err(e) = dc
            .perform_handshake(sess.kind.plugin_name(), properties, kms.as_deref())
            .await
        {
            tracing::warn!(session = %sess.id, "handshake failed: {e}");
            return format!("Encountered error while initiating handshake. {e}");
        }
    } else {
        dc.skip_handshake();
    }
    if dc.is_cancelled() {
        return String::new();
    }
    match &sess.kind {
        Kind::StandardStream => {
            shell::run_pty(dc.clone(), vec![sess.cfg.shell.clone()], true).await
        }
        Kind::Interactive { command } => {
            shell::run_pty(
                dc.clone(),
                vec!["sh".into(), "-c".into(), command.clone()],
                false,
            )
            .await
        }
        Kind::NonInteractive { command, separate } => {
            command::run(dc.clone(), command, *separate).await
        }
        Kind::Port {
            host,
            port,
            port_type,
            ..
        } => port::run(dc.clone(), host.clone(), port.clone(), port_type.clone()).await,
    }
}

pub(crate) use port::dial as dial_port;
