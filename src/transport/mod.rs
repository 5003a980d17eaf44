//! The websocket to the Session Manager service: TCP, an optional HTTP(S) proxy, TLS, and the
//! websocket upgrade, each step bounded in time with an error that says what to check.
//!
//! The Go plugin dials with no timeout of its own and hangs when the service cannot be reached;
//! every wait here has a limit. The upgrade request is built as an `http::Request` so that a
//! signer can add headers (SigV4 for `ssmmessages`) before it is sent.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

pub mod allow;
pub mod link;

/// The websocket type the session driver uses.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long each connection step may take.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect (per address tried) and the proxy's CONNECT answer.
    pub connect: Duration,
    /// TLS handshake.
    pub tls: Duration,
    /// Websocket upgrade request and response.
    pub upgrade: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            tls: Duration::from_secs(10),
            upgrade: Duration::from_secs(15),
        }
    }
}

/// Why the websocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The StreamUrl is not a ws:// or wss:// URL.
    #[error("the session's StreamUrl is not a valid ws:// or wss:// URL ({0})")]
    BadUrl(String),
    /// DNS failed.
    #[error("cannot resolve {host}: {source}; check your network and DNS")]
    Resolve {
        /// host name
        host: String,
        /// cause
        source: std::io::Error,
    },
    /// TCP connect failed or timed out.
    #[error("cannot connect to {addr}: {reason}; check your network, firewall or proxy settings (HTTPS_PROXY, NO_PROXY)")]
    Connect {
        /// where
        addr: String,
        /// what happened
        reason: String,
    },
    /// The proxy refused or garbled the CONNECT.
    #[error(
        "the proxy {proxy} refused the tunnel: {reason}; check HTTPS_PROXY/HTTP_PROXY and NO_PROXY"
    )]
    Proxy {
        /// proxy URL without credentials
        proxy: String,
        /// what happened
        reason: String,
    },
    /// TLS failed.
    #[error("TLS handshake with {host} failed: {reason}{}", tls_hint(reason))]
    Tls {
        /// host
        host: String,
        /// cause
        reason: String,
    },
    /// The StreamUrl names a host that is not a Session Manager endpoint (see [`allow`]).
    #[error("{0}")]
    NotAllowed(String),
    /// The credentials the session must be signed with cannot be had (a profile named on the
    /// command line that does not exist).
    #[error("{0}")]
    Credentials(String),
    /// The service answered the upgrade with an error.
    #[error("the Session Manager service refused the connection: {0}")]
    Upgrade(String),
    /// The service did not answer the upgrade (or take the token) in time.
    #[error("the Session Manager service did not answer the websocket upgrade within {:.1} s; check your network and proxy settings", .0.as_secs_f32())]
    NoAnswer(Duration),
}

/// The `SSL_CERT_FILE` hint, for certificate errors only (of the websocket and of AWS calls).
pub(crate) fn tls_hint(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("certificate") || r.contains("issuer") || r.contains("cert") {
        "; if you are behind a TLS-inspecting proxy, point SSL_CERT_FILE at its CA bundle"
    } else {
        ""
    }
}

/// A proxy to tunnel through, from the environment.
#[derive(Debug, Clone)]
pub struct Proxy {
    /// host:port of the proxy
    pub addr: String,
    /// `Basic ...` credentials from the proxy URL, if any.
    pub authorization: Option<String>,
    /// The proxy URL without credentials, for messages.
    pub display: String,
}

/// Picks the proxy for `url` from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY` (either
/// case), as Go's `ProxyFromEnvironment` does: wss uses HTTPS_PROXY, ws uses HTTP_PROXY, and
/// loopback destinations are never proxied.
pub fn proxy_for(url: &Url, getenv: impl Fn(&str) -> Option<String>) -> Option<Proxy> {
    let env = |name: &str| {
        getenv(name)
            .or_else(|| getenv(&name.to_ascii_lowercase()))
            .filter(|v| !v.is_empty())
    };
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    {
        return None;
    }
    if let Some(no) = env("NO_PROXY") {
        for pat in no.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if pat == "*" {
                return None;
            }
            let pat_host = pat.split(':').next().unwrap_or(pat);
            let bare = pat_host.trim_start_matches("*.").trim_start_matches('.');
            if host.eq_ignore_ascii_case(bare)
                || host
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", bare.to_ascii_lowercase()))
            {
                return None;
            }
        }
    }
    let raw = match url.scheme() {
        "wss" => env("HTTPS_PROXY").or_else(|| env("ALL_PROXY")),
        _ => env("HTTP_PROXY").or_else(|| env("ALL_PROXY")),
    }?;
    let with_scheme = if raw.contains("://") {
        raw
    } else {
        format!("http://{raw}")
    };
    let p = Url::parse(&with_scheme).ok()?;
    let phost = p.host_str()?.to_owned();
    let port = p.port_or_known_default().unwrap_or(80);
    let authorization = (!p.username().is_empty()).then(|| {
        use base64::Engine;
        let user = percent_decode(p.username());
        let pass = percent_decode(p.password().unwrap_or(""));
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    });
    Some(Proxy {
        addr: format!("{phost}:{port}"),
        authorization,
        display: format!("{}://{phost}:{port}", p.scheme()),
    })
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("a={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// TLS settings for wss://, built on first use. Loading the platform's roots reads and parses
/// every certificate under /etc/ssl (about 3 ms and 100 KiB of heap on Debian); a `ws://`
/// StreamUrl (the simulator, a local relay) never needs them. Clones share one configuration,
/// so reconnections load nothing again.
#[derive(Clone, Default)]
pub struct TlsConfig(Arc<std::sync::OnceLock<Arc<rustls::ClientConfig>>>);

impl TlsConfig {
    /// The configuration, loading the roots now if this is the first wss:// connection.
    pub fn get(&self) -> Arc<rustls::ClientConfig> {
        self.0.get_or_init(load_tls_config).clone()
    }

    /// Whether the roots have been loaded (for tests).
    pub fn is_loaded(&self) -> bool {
        self.0.get().is_some()
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

/// The TLS settings for wss://, loaded lazily (see [`TlsConfig`]).
pub fn tls_config() -> TlsConfig {
    TlsConfig::default()
}

/// Builds the TLS configuration: the platform's roots, which include `SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set (as the Go plugin honours them).
fn load_tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!("while loading the platform's root certificates: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!("TLS roots: {added} loaded, {ignored} unusable");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider supports the default protocol versions.
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Everything needed to open the websocket.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Step limits.
    pub timeouts: Timeouts,
    /// Proxy, if any (see [`proxy_for`]).
    pub proxy: Option<Proxy>,
    /// TLS settings for wss:// (loaded on the first wss:// connection).
    pub tls: TlsConfig,
    /// Headers added to the upgrade request (e.g. SigV4).
    pub extra_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Builds the upgrade request for `url` with `extra` headers; exposed so a signer can see the
/// exact request it signs.
pub fn upgrade_request(
    url: &str,
    extra: &[(HeaderName, HeaderValue)],
) -> Result<Request<()>, TransportError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url
        .into_client_request()
        .map_err(|e| TransportError::BadUrl(e.to_string()))?;
    for (k, v) in extra {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    Ok(req)
}

async fn tcp_connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let addrs: Vec<_> = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| TransportError::Resolve {
            host: host.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
        })?
        .map_err(|source| TransportError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .collect();
    let mut last = String::from("no addresses");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("timed out after {}s", timeout.as_secs()),
        }
    }
    Err(TransportError::Connect {
        addr: format!("{host}:{port}"),
        reason: last,
    })
}

async fn proxy_connect(
    proxy: &Proxy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, TransportError> {
    let (phost, pport) = proxy
        .addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or_else(|| TransportError::Proxy {
            proxy: proxy.display.clone(),
            reason: "bad proxy address".into(),
        })?;
    let mut s = tcp_connect(&phost, pport, timeout).await?;
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = &proxy.authorization {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    let err = |reason: String| TransportError::Proxy {
        proxy: proxy.display.clone(),
        reason,
    };
    let exchange = async {
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| err(e.to_string()))?;
        // Read the answer byte by byte up to the blank line, so no tunnelled byte is consumed.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 * 1024 {
                return Err(err("answer header too large".into()));
            }
            let b = s.read_u8().await.map_err(|e| err(e.to_string()))?;
            head.push(b);
        }
        let status_line = String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let ok = status_line
            .split_whitespace()
            .nth(1)
            .is_some_and(|c| c.starts_with('2'));
        if ok {
            Ok(())
        } else {
            Err(err(status_line))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| err("no answer in time".into()))??;
    Ok(s)
}

/// Bytes read from the socket at a time: a few dozen agent frames.
const READ_BUFFER: usize = 32 * 1024;

/// Opens the websocket to `url` with the given options.
pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Ws, TransportError> {
    let parsed = Url::parse(url).map_err(|e| TransportError::BadUrl(e.to_string()))?;
    let secure = match parsed.scheme() {
        "wss" => true,
        "ws" => false,
        other => return Err(TransportError::BadUrl(format!("scheme {other}"))),
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| TransportError::BadUrl("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    // The first wss:// connection loads the TLS roots on a blocking thread while the TCP
    // connection (and proxy tunnel) is being set up, so the load costs no time of its own.
    let roots = (secure && !opts.tls.is_loaded()).then(|| {
        let tls = opts.tls.clone();
        tokio::task::spawn_blocking(move || tls.get())
    });
    let tcp = match &opts.proxy {
        Some(p) => proxy_connect(p, &host, port, opts.timeouts.connect).await?,
        None => tcp_connect(&host, port, opts.timeouts.connect).await?,
    };
    let stream = if secure {
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| TransportError::BadUrl(e.to_string()))?;
        let config = match roots {
            Some(loading) => loading.await.unwrap_or_else(|_| opts.tls.get()),
            None => opts.tls.get(),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(opts.timeouts.tls, connector.connect(name, tcp))
            .await
            .map_err(|_| TransportError::Tls {
                host: host.clone(),
                reason: "timed out".into(),
            })?
            .map_err(|e| TransportError::Tls {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let request = upgrade_request(url, &opts.extra_headers)?;
    let mut config = WebSocketConfig::default();
    // Frames are at most about 1.2 KiB each way; tungstenite's default 128 KiB read buffer
    // (allocated up front, grown to 256 KiB in use) is most of the heap of a port session.
    config.read_buffer_size = READ_BUFFER;
    config.max_message_size = Some(crate::wire::MAX_PAYLOAD_LEN + 4096);
    config.max_frame_size = Some(crate::wire::MAX_PAYLOAD_LEN + 4096);
    let (ws, _resp) = tokio::time::timeout(
        opts.timeouts.upgrade,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    .map_err(|_| TransportError::NoAnswer(opts.timeouts.upgrade))?
    .map_err(|e| TransportError::Upgrade(describe_ws_error(&e)))?;
    Ok(ws)
}

fn describe_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(resp) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .chars()
                        .take(300)
                        .collect::<String>()
                })
                .unwrap_or_default();
            format!("HTTP {} {}", resp.status(), body.trim())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn proxy_selection() {
        let u = Url::parse("wss://ssmmessages.us-east-1.amazonaws.com/v1/data-channel/s").unwrap();
        let p = proxy_for(
            &u,
            env(&[("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:3128")]),
        )
        .unwrap();
        assert_eq!(p.addr, "proxy.corp:3128");
        assert!(p.authorization.as_deref().unwrap().starts_with("Basic "));
        assert!(!p.display.contains("p%40ss"));
        assert!(proxy_for(
            &u,
            env(&[("https_proxy", "proxy:1"), ("NO_PROXY", ".amazonaws.com")])
        )
        .is_none());
        assert!(proxy_for(&u, env(&[("HTTP_PROXY", "proxy:1")])).is_none());
        let local = Url::parse("ws://127.0.0.1:9/x").unwrap();
        assert!(proxy_for(&local, env(&[("HTTP_PROXY", "proxy:1")])).is_none());
    }

    #[tokio::test]
    async fn unreachable_port_fails_fast_with_a_clear_error() {
        // Bind then drop to get a port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let opts = ConnectOptions {
            timeouts: Timeouts::default(),
            proxy: None,
            tls: tls_config(),
            extra_headers: vec![],
        };
        let e = connect(&format!("ws://127.0.0.1:{port}/v1/data-channel/s"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, TransportError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let keep = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let opts = ConnectOptions {
            timeouts: Timeouts {
                upgrade: Duration::from_millis(300),
                ..Timeouts::default()
            },
            proxy: None,
            tls: tls_config(),
            extra_headers: vec![],
        };
        let e = connect(&format!("ws://127.0.0.1:{port}/x"), &opts)
            .await
            .unwrap_err();
        assert!(matches!(e, TransportError::NoAnswer(_)), "{e}");
        assert!(e.to_string().contains("did not answer"), "{e}");
        keep.abort();
        // A ws:// connection never needed the certificate store.
        assert!(!opts.tls.is_loaded());
    }

    #[test]
    fn the_tls_roots_load_once_on_first_use_and_clones_share_them() {
        let tls = tls_config();
        let clone = tls.clone();
        assert!(!tls.is_loaded());
        let a = tls.get();
        assert!(clone.is_loaded());
        assert!(Arc::ptr_eq(&a, &clone.get()));
    }

    #[test]
    fn the_certificate_hint_only_for_certificate_errors() {
        assert!(tls_hint("invalid peer certificate: UnknownIssuer").contains("SSL_CERT_FILE"));
        assert_eq!(tls_hint("connection reset by peer"), "");
    }
}
