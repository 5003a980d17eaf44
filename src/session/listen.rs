//! Local listeners for port forwarding: TCP on loopback (or the address the user chose), or a
//! unix socket only the user can use.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use super::port::params::Endpoint;

/// The read side of an accepted local connection.
pub type LocalRead = Pin<Box<dyn AsyncRead + Send>>;
/// The write side of an accepted local connection (dropping it half-closes the connection).
pub type LocalWrite = Pin<Box<dyn AsyncWrite + Send>>;

/// An accepted local connection, split.
pub struct LocalConn {
    /// Bytes from the local client.
    pub read: LocalRead,
    /// Bytes to the local client.
    pub write: LocalWrite,
    /// Who connected, for logs.
    pub peer: String,
}

/// A bound listener, or a queue of connections another part of the process accepted (the
/// SOCKS5 proxy hands each destination's connections to that destination's session).
pub struct Listener {
    kind: Kind,
}

/// A listener shared beyond one session: a port forward that is restarted in a new session
/// keeps accepting on the same socket ([`crate::session::run_forwarding`]).
pub type ListenerSlot = std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<Listener>>>>;

/// Why a listener could not be opened: the user's setting is unusable, or the system said no.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A bind address that is no address (exit 64).
    #[error("{0}")]
    Usage(String),
    /// Binding failed: the port is taken, no permission (exit 74).
    #[error("{0}")]
    Io(String),
}

impl OpenError {
    /// Whether the message mentions `s` (tests).
    #[cfg(test)]
    fn contains(&self, s: &str) -> bool {
        self.to_string().contains(s)
    }
}

enum Kind {
    Tcp {
        listeners: Vec<TcpListener>,
        port: u16,
    },
    Unix {
        listener: UnixListener,
        file: SocketFile,
    },
    Handed {
        rx: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<LocalConn>>,
        label: String,
    },
}

impl Listener {
    /// Binds `endpoint`. `bind` is the user's bind address or host name (None: loopback).
    pub async fn open(endpoint: &Endpoint, bind: Option<&str>) -> Result<Self, OpenError> {
        match endpoint {
            Endpoint::Tcp(port) => {
                let addrs = bind_addresses(bind).await.map_err(OpenError::Usage)?;
                let (listeners, port) = bind_tcp(&addrs, *port).map_err(OpenError::Io)?;
                Ok(Self {
                    kind: Kind::Tcp { listeners, port },
                })
            }
            Endpoint::Unix(path) => {
                let (listener, file) = bind_unix(path).map_err(OpenError::Io)?;
                Ok(Self {
                    kind: Kind::Unix { listener, file },
                })
            }
        }
    }

    /// Connections accepted elsewhere and sent on `rx`; `label` names them in the status line.
    /// When every sender is gone the session is no longer needed.
    pub fn handed(label: String, rx: tokio::sync::mpsc::Receiver<LocalConn>) -> Self {
        Self {
            kind: Kind::Handed {
                rx: tokio::sync::Mutex::new(rx),
                label,
            },
        }
    }

    /// Where it listens, for status lines: `ADDRESS:PORT`, a socket path or the label.
    pub fn address(&self) -> String {
        match &self.kind {
            Kind::Tcp { listeners, port } => listeners
                .first()
                .and_then(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .unwrap_or_else(|| format!("port {port}")),
            Kind::Unix { file, .. } => file.path.display().to_string(),
            Kind::Handed { label, .. } => label.clone(),
        }
    }

    /// The reference's announcement, without its line ending: `Port <p> opened for sessionId
    /// <id>.` or `Unix socket <path> opened for sessionId <id>.`
    pub fn opened_line(&self, session_id: &str) -> String {
        match &self.kind {
            Kind::Tcp { port, .. } => format!("Port {port} opened for sessionId {session_id}."),
            Kind::Unix { file, .. } => format!(
                "Unix socket {} opened for sessionId {session_id}.",
                file.path.display()
            ),
            Kind::Handed { label, .. } => format!("{label} ready for sessionId {session_id}."),
        }
    }

    /// Waits for the next local client on any bound address. `Ok(None)`: no connection will
    /// ever come again (the proxy that handed them no longer needs this session).
    pub async fn accept(&self) -> io::Result<Option<LocalConn>> {
        match &self.kind {
            Kind::Tcp { listeners, .. } => {
                let (stream, peer) = poll_fn(|cx| {
                    for l in listeners {
                        if let Poll::Ready(r) = l.poll_accept(cx) {
                            return Poll::Ready(r);
                        }
                    }
                    Poll::Pending
                })
                .await?;
                // Interactive protocols (SSH, databases) want small writes out at once.
                let _ = stream.set_nodelay(true);
                let (r, w) = stream.into_split();
                Ok(Some(LocalConn {
                    read: Box::pin(r),
                    write: Box::pin(w),
                    peer: peer.to_string(),
                }))
            }
            Kind::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                let (r, w) = stream.into_split();
                Ok(Some(LocalConn {
                    read: Box::pin(r),
                    write: Box::pin(w),
                    peer: "unix socket client".into(),
                }))
            }
            Kind::Handed { rx, .. } => Ok(rx.lock().await.recv().await),
        }
    }
}

/// The addresses to listen on: the user's choice, or the loopback addresses `localhost` names
/// (IPv4 first, as the reference's Go resolver prefers), or 127.0.0.1.
async fn bind_addresses(bind: Option<&str>) -> Result<Vec<IpAddr>, String> {
    let mut addrs: Vec<IpAddr> = match bind {
        Some(b) => {
            let b = b.trim().trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = b.parse::<IpAddr>() {
                vec![ip]
            } else {
                tokio::net::lookup_host((b, 0))
                    .await
                    .map_err(|e| {
                        format!(
                            "the bind address {b:?} ({} / {}) is neither an IP address nor a resolvable host name ({e}); use e.g. 127.0.0.1, 0.0.0.0 or ::",
                            crate::config::ENV_BIND_ADDRESS,
                            crate::config::ENV_BIND_ADDRESS_AWS
                        )
                    })?
                    .map(|a| a.ip())
                    .collect()
            }
        }
        None => match tokio::net::lookup_host(("localhost", 0)).await {
            Ok(it) => it.map(|a| a.ip()).filter(|ip| ip.is_loopback()).collect(),
            Err(_) => Vec::new(),
        },
    };
    addrs.sort_by_key(|ip| ip.is_ipv6());
    addrs.dedup();
    if addrs.is_empty() {
        if bind.is_some() {
            return Err(format!(
                "the bind address {:?} resolves to no address",
                bind.unwrap_or_default()
            ));
        }
        addrs.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    Ok(addrs)
}

/// Binds the first address on `port` (0: any free port), then the others on the same port;
/// the others are best effort (an IPv6 loopback may not exist in a container).
fn bind_tcp(addrs: &[IpAddr], port: u16) -> Result<(Vec<TcpListener>, u16), String> {
    let mut listeners = Vec::new();
    let mut port = port;
    for (i, ip) in addrs.iter().enumerate() {
        let addr = SocketAddr::new(*ip, port);
        match std_bind(addr) {
            Ok(l) => {
                if i == 0 {
                    port = l.local_addr().map(|a| a.port()).unwrap_or(port);
                }
                listeners.push(l);
            }
            Err(e) if i == 0 => {
                let hint = if e.kind() == io::ErrorKind::AddrInUse {
                    "; another program uses that port: choose another local port (localPortNumber, or -L's LOCAL_PORT; 0 for any free port)"
                } else if e.kind() == io::ErrorKind::PermissionDenied {
                    "; ports below 1024 need privileges: choose a port above 1023"
                } else {
                    ""
                };
                return Err(format!("cannot listen on {addr}: {e}{hint}"));
            }
            Err(e) => tracing::debug!("not listening on {addr} as well: {e}"),
        }
    }
    Ok((listeners, port))
}

fn std_bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

/// The socket file we created; removed when dropped, if it is still ours.
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Creates the unix socket with mode 0600, replacing a stale socket file nobody listens on.
fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile), String> {
    let shown = path.display();
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!(
                "{shown} exists and is not a socket; remove it or choose another localUnixSocket"
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(format!(
                    "another program listens on {shown}; choose another localUnixSocket"
                ))
            }
            Err(_) => {
                // A leftover of an earlier session: nobody accepts on it.
                std::fs::remove_file(path)
                    .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?;
            }
        }
    }
    // The socket must never be reachable by others, not even between bind and chmod: create it
    // under a umask that leaves only the owner's read/write bits. umask is process-wide; at worst
    // a file another thread creates meanwhile is also private.
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| format!("cannot create the unix socket {shown}: {e}"))?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect the unix socket {shown}: {e}"))?;
    let file = SocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make the unix socket {shown} private: {e}"))?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_by_default_and_ephemeral_port() {
        let l = Listener::open(&Endpoint::Tcp(0), None).await.unwrap();
        let Kind::Tcp { listeners, port } = &l.kind else {
            panic!("tcp")
        };
        assert_ne!(*port, 0);
        for x in listeners {
            assert!(x.local_addr().unwrap().ip().is_loopback());
            assert_eq!(x.local_addr().unwrap().port(), *port);
        }
        assert_eq!(
            l.opened_line("s-1"),
            format!("Port {port} opened for sessionId s-1.")
        );
    }

    #[tokio::test]
    async fn bind_address_errors_say_what_to_do() {
        let e = bind_addresses(Some("no such host.invalid"))
            .await
            .unwrap_err();
        assert!(e.contains("0.0.0.0"), "{e}");
        assert_eq!(
            bind_addresses(Some("[::1]")).await.unwrap(),
            vec!["::1".parse::<IpAddr>().unwrap()]
        );
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let e = Listener::open(&Endpoint::Tcp(port), Some("127.0.0.1"))
            .await
            .err()
            .unwrap();
        assert!(e.contains("localPortNumber"), "{e}");
    }

    #[tokio::test]
    async fn unix_socket_is_private_replaces_stale_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A stale socket from an earlier run.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let l = Listener::open(&Endpoint::Unix(path.clone()), None)
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A live one is refused.
        let e = Listener::open(&Endpoint::Unix(path.clone()), None)
            .await
            .err()
            .unwrap();
        assert!(e.contains("another program"), "{e}");
        drop(l);
        assert!(!path.exists());
        std::fs::write(&path, b"x").unwrap();
        let e = Listener::open(&Endpoint::Unix(path.clone()), None)
            .await
            .err()
            .unwrap();
        assert!(e.contains("not a socket"), "{e}");
    }
}
