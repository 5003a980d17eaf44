//! Port sessions (`plugins/port/port.go`, `port_basic.go`; mux in `crate::smux`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ssm_plugin::wire::{FlagValue, PayloadType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex, Notify};

use crate::datachannel::{DataChannel, HandleError, HandlerFut, InputHandler};
use crate::version::compare;

/// `config.go: LocalPortForwarding`.
pub(crate) const LOCAL_PORT_FORWARDING: &str = "LocalPortForwarding";
/// `port.go: muxSupportedClientVersion`.
const MUX_SUPPORTED_CLIENT_VERSION: &str = "1.1.70";
/// `port.go: muxKeepAliveDisabledAfterThisClientVersion`.
const MUX_KEEPALIVE_DISABLED_AFTER: &str = "1.2.331.0";
/// The last agent version without smux (the plugin's own gate is "> 3.0.196.0").
const LAST_AGENT_WITHOUT_MUX: &str = "3.0.196.0";

/// The destination, restricted to loopback: the simulator must never reach another host.
fn destination(host: &Option<String>, port: &str) -> Result<String, String> {
    match host.as_deref() {
        None | Some("") => Ok(format!("localhost:{port}")),
        Some("localhost") => Ok(format!("localhost:{port}")),
        Some(h) => match h.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => Ok(if ip.is_ipv6() {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }),
            _ => Err(format!("Forwarding to IP address {h} is forbidden.")),
        },
    }
}

pub(crate) async fn dial(dest: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(dest).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

pub(crate) async fn run(
    dc: Arc<DataChannel>,
    host: Option<String>,
    port: String,
    port_type: Option<String>,
) -> String {
    let sess = dc.sess.clone();
    if port.is_empty() {
        return "Port number is empty in session properties.".into();
    }
    let dest = match destination(&host, &port) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let client_version = dc.client_version();
    let lpf = port_type.as_deref() == Some(LOCAL_PORT_FORWARDING);
    let old_agent =
        compare(&sess.cfg.agent_version, LAST_AGENT_WITHOUT_MUX) != std::cmp::Ordering::Greater;
    let mux = lpf && !old_agent && compare(&client_version, MUX_SUPPORTED_CLIENT_VERSION).is_ge();
    sess.stats().port_mode = if mux { "mux" } else { "basic" }.into();
    if mux {
        let keepalive = compare(&client_version, MUX_KEEPALIVE_DISABLED_AFTER).is_le();
        crate::smux::run(dc, dest, keepalive).await
    } else {
        run_basic(dc, dest, lpf).await
    }
}

struct BasicState {
    writer: Option<OwnedWriteHalf>,
    reconnect: bool,
}

struct BasicHandler {
    dc: Arc<DataChannel>,
    dest: String,
    state: Mutex<BasicState>,
    disconnect: Notify,
    new_reader: mpsc::UnboundedSender<Result<OwnedReadHalf, String>>,
}

impl InputHandler for BasicHandler {
    fn handle(&self, payload_type: PayloadType, payload: Bytes) -> HandlerFut<'_> {
        Box::pin(async move {
            match payload_type {
                PayloadType::OUTPUT => {
                    let mut st = self.state.lock().await;
                    if st.reconnect {
                        match dial(&self.dest).await {
                            Ok(s) => {
                                let (r, w) = s.into_split();
                                st.writer = Some(w);
                                st.reconnect = false;
                                let _ = self.new_reader.send(Ok(r));
                            }
                            Err(e) => {
                                let msg = format!("Unable to connect to specified port: {e}");
                                let _ = self.new_reader.send(Err(msg.clone()));
                                return Err(HandleError::Failed(msg));
                            }
                        }
                    }
                    let Some(w) = st.writer.as_mut() else {
                        return Err(HandleError::Failed(
                            "connection to the port is closed".into(),
                        ));
                    };
                    w.write_all(&payload).await.map_err(|e| {
                        HandleError::Failed(format!("Unable to write to port, err: {e}."))
                    })?;
                    self.dc.sess.stats().bytes_to_destination += payload.len() as u64;
                    Ok(())
                }
                PayloadType::FLAG => {
                    match FlagValue::from_payload(&payload) {
                        Some(FlagValue::DisconnectToPort) => {
                            // Stop(): close the destination connection; the reader notices.
                            self.state.lock().await.writer = None;
                            self.disconnect.notify_one();
                        }
                        Some(FlagValue::TerminateSession) => self.dc.cancel(),
                        _ => {}
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}

/// `BasicPortSession`: one destination connection, dialled at start; for
/// LocalPortForwarding a lost connection is re-dialled on the client's next data, otherwise
/// (SSH) destination EOF ends the session successfully.
async fn run_basic(dc: Arc<DataChannel>, dest: String, lpf: bool) -> String {
    let sess = dc.sess.clone();
    let stream = match dial(&dest).await {
        Ok(s) => s,
        Err(e) => return format!("Unable to connect to specified port: {e}"),
    };
    let (mut reader, w) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = Arc::new(BasicHandler {
        dc: dc.clone(),
        dest,
        state: Mutex::new(BasicState {
            writer: Some(w),
            reconnect: false,
        }),
        disconnect: Notify::new(),
        new_reader: tx,
    });
    dc.set_handler(handler.clone());
    let pacing = sess.shared.cfg().limits.port_pacing;
    let mut buf = vec![0u8; 1024];
    loop {
        tokio::select! {
            _ = dc.wait_active() => {}
            _ = dc.cancelled() => return String::new(),
        }
        let read = tokio::select! {
            r = reader.read(&mut buf) => r,
            _ = handler.disconnect.notified() => Err(std::io::ErrorKind::ConnectionAborted.into()),
            _ = dc.cancelled() => return String::new(),
        };
        match read {
            Ok(n) if n > 0 => {
                sess.stats().bytes_from_destination += n as u64;
                dc.send_stream(PayloadType::OUTPUT, &buf[..n]);
            }
            other => {
                if !lpf {
                    // handleSSHDPortError: EOF is success, any other error a failure.
                    return match other {
                        Ok(_) => String::new(),
                        Err(e) => format!("Failed to read from port: {e}"),
                    };
                }
                // handlePortError: close, and wait for the re-dial that client data triggers.
                {
                    let mut st = handler.state.lock().await;
                    st.writer = None;
                    st.reconnect = true;
                }
                let next = tokio::select! {
                    n = rx.recv() => n,
                    _ = dc.cancelled() => return String::new(),
                };
                match next {
                    Some(Ok(r)) => reader = r,
                    Some(Err(e)) => return e,
                    None => return String::new(),
                }
            }
        }
        if pacing {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback() {
        assert_eq!(super::destination(&None, "80").unwrap(), "localhost:80");
        assert_eq!(
            super::destination(&Some("127.0.0.1".into()), "80").unwrap(),
            "127.0.0.1:80"
        );
        assert_eq!(
            super::destination(&Some("::1".into()), "80").unwrap(),
            "[::1]:80"
        );
        assert!(super::destination(&Some("169.254.169.254".into()), "80").is_err());
        assert!(super::destination(&Some("example.com".into()), "80").is_err());
    }
}
