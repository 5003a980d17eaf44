//! Starting and controlling the simulator; the [`SessionBackend`] implementation.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use rand::{RngCore, SeedableRng};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::backend::{BackendError, DataKeyResolver, SessionBackend, SessionSpec, Started};
use crate::config::SimConfig;
use crate::session::{lock, AgentInput, Kind, Link, Session, Shared, Stats, WsCmd};

/// Entry point.
pub struct Simulator;

impl Simulator {
    /// Starts the relay listeners (ws, and wss when `config.tls`) on 127.0.0.1. Must be called
    /// inside a tokio runtime; sessions run on it.
    pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
        Self::start_with_resolver(config, None).await
    }

    /// As [`Simulator::start`], with the fake KMS the agent uses to recover data keys.
    pub async fn start_with_resolver(
        config: SimConfig,
        resolver: Option<Arc<dyn DataKeyResolver>>,
    ) -> anyhow::Result<SimHandle> {
        let ws_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1")?;
        let ws_base = format!("ws://{}", ws_listener.local_addr()?);
        let (shutdown, _) = watch::channel(false);
        let mut tls_parts = None;
        if config.tls {
            let (acceptor, ca_pem) = tls_acceptor()?;
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let base = format!("wss://{}", l.local_addr()?);
            let dir = std::env::temp_dir().join(format!(
                "agent-sim-{}-{:08x}",
                std::process::id(),
                rand::rng().next_u32()
            ));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join("ca.pem");
            std::fs::write(&path, &ca_pem)
                .with_context(|| format!("cannot write {}", path.display()))?;
            tls_parts = Some((acceptor, l, base, path, ca_pem));
        }
        let shared = Arc::new(Shared {
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(config.faults.seed)),
            cfg: RwLock::new(config),
            sessions: Mutex::new(HashMap::new()),
            resolver: RwLock::new(resolver),
            ws_base: ws_base.clone(),
            wss_base: tls_parts.as_ref().map(|t| t.2.clone()),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(crate::relay::serve(
            shared.clone(),
            ws_listener,
            None,
            shutdown.subscribe(),
        ));
        let (mut wss_url, mut cert_file, mut ca_pem) = (None, None, None);
        if let Some((acceptor, l, base, path, pem)) = tls_parts {
            tokio::spawn(crate::relay::serve(
                shared.clone(),
                l,
                Some(acceptor),
                shutdown.subscribe(),
            ));
            wss_url = Some(base);
            cert_file = Some(path);
            ca_pem = Some(pem);
        }
        tracing::info!(ws = %ws_base, wss = ?wss_url, "agent simulator listening");
        Ok(SimHandle {
            ws_url: ws_base,
            wss_url,
            cert_file,
            ca_pem,
            backend: SimBackend {
                shared: shared.clone(),
            },
            shared,
            shutdown,
        })
    }
}

/// A CA (whose PEM tests trust through SSL_CERT_FILE) and a leaf for localhost/127.0.0.1.
/// Public for tests that put TLS in front of other servers (the fake API).
pub fn tls_acceptor() -> anyhow::Result<(tokio_rustls::TlsAcceptor, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agent-sim test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca.pem()))
}

/// Control of a running simulator. Dropping it does not stop it; call [`SimHandle::shutdown`].
pub struct SimHandle {
    /// `ws://127.0.0.1:P`.
    pub ws_url: String,
    /// `wss://127.0.0.1:Q` when TLS is on.
    pub wss_url: Option<String>,
    /// PEM file of the CA that signed the wss certificate (for SSL_CERT_FILE).
    pub cert_file: Option<PathBuf>,
    /// The same CA, PEM text.
    pub ca_pem: Option<String>,
    backend: SimBackend,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl SimHandle {
    /// The backend the fake API calls.
    pub fn backend(&self) -> SimBackend {
        self.backend.clone()
    }

    /// Drops the session's client websocket abruptly (no close frame): the session waits for
    /// a resume. False if no client is connected.
    pub fn cut(&self, session_id: &str) -> bool {
        self.with(session_id, |s| s.ws_cmd(WsCmd::Cut))
    }

    /// Closes the session's client websocket with 1000 "Bye", as the service does hourly.
    pub fn close_bye(&self, session_id: &str) -> bool {
        self.with(session_id, |s| s.ws_cmd(WsCmd::Close(1000, "Bye".into())))
    }

    /// Counters of one session.
    pub fn stats(&self, session_id: &str) -> Option<Stats> {
        self.shared.session(session_id).map(|s| s.stats().clone())
    }

    /// The ids of all sessions started so far.
    pub fn session_ids(&self) -> Vec<String> {
        lock(&self.shared.sessions).keys().cloned().collect()
    }

    /// Waits until the session has ended; returns its channel_closed Output.
    pub async fn wait_ended(&self, session_id: &str, timeout: Duration) -> Option<String> {
        let s = self.shared.session(session_id)?;
        let mut rx = s.ended.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|e| e.is_some()))
            .await
            .ok()?
            .ok()?
            .clone();
        r
    }

    /// The current configuration.
    pub fn config(&self) -> SimConfig {
        self.shared.cfg()
    }

    /// Replaces the configuration (faults and limits apply at once; see [`SimConfig`]).
    pub fn set_config(&self, config: SimConfig) {
        *self.shared.cfg.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Sets the fake KMS the agent uses for data keys.
    pub fn set_resolver(&self, resolver: Arc<dyn DataKeyResolver>) {
        *self
            .shared
            .resolver
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(resolver);
    }

    /// Stops listening, terminates every session and removes the certificate file.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
        for s in lock(&self.shared.sessions).values() {
            let _ = s.agent_tx.try_send(AgentInput::Terminate);
        }
        if let Some(p) = &self.cert_file {
            let _ = std::fs::remove_file(p);
            if let Some(d) = p.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }

    fn with(&self, id: &str, f: impl FnOnce(&Arc<Session>) -> bool) -> bool {
        self.shared.session(id).map(|s| f(&s)).unwrap_or(false)
    }
}

/// The simulator's [`SessionBackend`].
#[derive(Clone)]
pub struct SimBackend {
    shared: Arc<Shared>,
}

fn param(spec: &SessionSpec, key: &str) -> Option<String> {
    spec.parameters
        .get(key)
        .and_then(|v| v.first())
        .filter(|s| !s.is_empty())
        .cloned()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn new_token() -> String {
    let mut b = [0u8; 96];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The session plugin and its properties for a document, as the public AWS documents define
/// them. Properties are written with sorted keys: the agent marshals the document's
/// `properties` map with Go's encoding/json, which sorts map keys.
fn kind_for(spec: &SessionSpec, cfg: &SimConfig) -> Result<Kind, BackendError> {
    let doc = spec
        .document_name
        .as_deref()
        .unwrap_or("SSM-SessionManagerRunShell");
    let required = |k: &str| {
        param(spec, k).ok_or_else(|| {
            BackendError::new(
                "InvalidParameters",
                format!("Document {doc} requires parameter {k}."),
            )
        })
    };
    let port_props = |with_host: bool, port: &str| -> Map<String, Value> {
        let mut m = Map::new();
        if with_host {
            if let Some(h) = param(spec, "host") {
                m.insert("host".into(), Value::String(h));
            }
        }
        if let Some(l) = param(spec, "localPortNumber") {
            m.insert("localPortNumber".into(), Value::String(l));
        }
        m.insert("portNumber".into(), Value::String(port.to_owned()));
        m.insert("type".into(), Value::String("LocalPortForwarding".into()));
        m
    };
    Ok(match doc {
        "SSM-SessionManagerRunShell" => Kind::StandardStream,
        "AWS-StartInteractiveCommand" => Kind::Interactive {
            command: required("command")?,
        },
        "AWS-StartNonInteractiveCommand" => Kind::NonInteractive {
            command: required("command")?,
            separate: match param(spec, "separateOutputStream").as_deref() {
                Some(v) => v.eq_ignore_ascii_case("true"),
                None => cfg.separate_output_stream,
            },
        },
        "AWS-StartPortForwardingSession" => {
            let port = param(spec, "portNumber").unwrap_or_else(|| "80".into());
            Kind::Port {
                properties: port_props(false, &port),
                host: None,
                port,
                port_type: Some("LocalPortForwarding".into()),
            }
        }
        "AWS-StartPortForwardingSessionToRemoteHost" => {
            let port = param(spec, "portNumber").unwrap_or_else(|| "80".into());
            let host = required("host")?;
            Kind::Port {
                properties: port_props(true, &port),
                host: Some(host),
                port,
                port_type: Some("LocalPortForwarding".into()),
            }
        }
        "AWS-StartSSHSession" => {
            let port = param(spec, "portNumber").unwrap_or_else(|| "22".into());
            let mut properties = Map::new();
            properties.insert("portNumber".into(), Value::String(port.clone()));
            Kind::Port {
                properties,
                host: None,
                port,
                port_type: None,
            }
        }
        other => {
            return Err(BackendError::new(
                "InvalidDocument",
                format!("Document with name {other} does not exist."),
            ))
        }
    })
}

impl SimBackend {
    fn started(&self, s: &Session, token: String) -> Started {
        Started {
            session_id: s.id.clone(),
            token_value: token,
            stream_url: s.stream_url.clone(),
        }
    }
}

impl SessionBackend for SimBackend {
    fn start_session(&self, spec: SessionSpec) -> Result<Started, BackendError> {
        let cfg = self.shared.cfg();
        if spec.target.is_empty() {
            return Err(BackendError::new("InvalidTarget", "Target is required."));
        }
        let kind = kind_for(&spec, &cfg)?;
        let id = format!("sim-{}", &random_hex(9)[..17]);
        let base = match (&self.shared.wss_base, cfg.tls) {
            (Some(b), true) => b.clone(),
            _ => self.shared.ws_base.clone(),
        };
        let stream_url = format!(
            "{base}/v1/data-channel/{id}?role=publish_subscribe&cell-number={}",
            random_hex(16)
        );
        let token = new_token();
        let (agent_tx, agent_rx) = mpsc::channel(256);
        let session = Arc::new(Session {
            id: id.clone(),
            target: spec.target.clone(),
            kind,
            kms_key: cfg.kms_key_id.clone(),
            cfg,
            shared: self.shared.clone(),
            token: Mutex::new(token.clone()),
            stream_url,
            link: Mutex::new(Link::default()),
            agent_tx,
            stats: Mutex::new(Stats::default()),
            ended: watch::Sender::new(None),
            open_client_version: Mutex::new(String::new()),
            delay_line: Mutex::new(None),
            farewell: Mutex::new(None),
            abandoned: Default::default(),
        });
        lock(&self.shared.sessions).insert(id.clone(), session.clone());
        tracing::info!(session = %id, plugin = session.kind.plugin_name(), target = %spec.target, "session started");
        self.shared
            .runtime
            .spawn(crate::plugins::run_agent(session.clone(), agent_rx));
        Ok(self.started(&session, token))
    }

    fn resume_session(&self, session_id: &str) -> Result<Started, BackendError> {
        let s = self.shared.session(session_id).ok_or_else(|| {
            BackendError::new(
                "DoesNotExistException",
                format!("Session {session_id} does not exist."),
            )
        })?;
        if s.is_ended() && s.pending_farewell().is_none() {
            return Err(BackendError::new(
                "TargetNotConnected",
                format!("Session {session_id} has ended and cannot be resumed."),
            ));
        }
        let token = new_token();
        *lock(&s.token) = token.clone();
        Ok(self.started(&s, token))
    }

    fn terminate_session(&self, session_id: &str) -> Result<(), BackendError> {
        let s = self.shared.session(session_id).ok_or_else(|| {
            BackendError::new(
                "DoesNotExistException",
                format!("Session {session_id} does not exist."),
            )
        })?;
        if !s.is_ended() {
            let tx = s.agent_tx.clone();
            self.shared.runtime.spawn(async move {
                let _ = tx.send(AgentInput::Terminate).await;
            });
        }
        Ok(())
    }

    fn kms_key_for(&self, session_id: &str) -> Option<String> {
        let s = self.shared.session(session_id)?;
        match s.kind {
            Kind::Port { .. } if !s.cfg.kms_for_port_sessions => None,
            _ => s.kms_key.clone(),
        }
    }
}

/// Parameters as the API receives them, for callers building a [`SessionSpec`] by hand.
pub fn parameters(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
        .collect()
}
