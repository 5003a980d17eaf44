//! The `-D` SOCKS5 proxy (RFC 1928, CONNECT only, no authentication). Each destination gets
//! its own remote-host forwarding session, started on its first connection and reused by later
//! ones; a session without connections for the idle time is closed. Names are not resolved
//! here: the agent connects to them, so `curl --socks5-hostname` reaches names only the
//! target's network knows.
//!
//! The success reply waits until the destination is known to be reached, as far as the
//! protocol can tell: see [`confirm`].
//!
//! Written here rather than taken from a crate: the maintained SOCKS crates are clients or
//! full servers that dial the destination themselves; what is needed is only the handshake, a
//! few dozen lines, before the connection is handed to a session.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use super::spec::DynamicForward;
use super::AwsOptions;
use crate::aws::Aws;
use crate::config;
use crate::exit::Exit;
use crate::session::port::{Listener, LocalConn};
use crate::session::{self, signals::Signals};
use crate::ui::Ui;

/// How long a client has for its greeting and request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection waits for its destination's session to start (and, once started, to
/// take the connection).
const START_WAIT: Duration = Duration::from_secs(60);
/// How long after its stream opens a connection is granted without word from the destination
/// (see [`confirm`]): a refused dial comes back within a round trip to the agent.
const CONFIRM_WAIT: Duration = Duration::from_millis(200);

/// Reply codes (RFC 1928 section 6).
const REP_OK: u8 = 0;
const REP_FAILURE: u8 = 1;
const REP_REFUSED: u8 = 5;
const REP_COMMAND: u8 = 7;
const REP_ADDRESS: u8 = 8;

/// What a SOCKS5 client asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    /// A name or an address, as the client gave it.
    pub host: String,
    pub port: u16,
}

/// A handshake that cannot go on: the reply code to send (if any) and why.
#[derive(Debug)]
pub struct Refused {
    pub reply: Option<u8>,
    pub why: String,
}

fn refused(reply: Option<u8>, why: impl Into<String>) -> Refused {
    Refused {
        reply,
        why: why.into(),
    }
}

/// Reads the greeting and the CONNECT request; answers the greeting. The caller sends the
/// request's reply ([`reply`]) once it knows the outcome.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> Result<Destination, Refused> {
    let io = |e: io::Error| refused(None, format!("the client went away: {e}"));
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 5 {
        return Err(refused(
            None,
            format!("not SOCKS5 (version byte {})", head[0]),
        ));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&0) {
        let _ = s.write_all(&[5, 0xff]).await;
        return Err(refused(
            None,
            "the client offers no method without authentication",
        ));
    }
    s.write_all(&[5, 0]).await.map_err(io)?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await.map_err(io)?;
    if req[0] != 5 {
        return Err(refused(Some(REP_FAILURE), "bad request version"));
    }
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await.map_err(io)?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(io)?;
            let mut name = vec![0u8; usize::from(len[0])];
            s.read_exact(&mut name).await.map_err(io)?;
            String::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| refused(Some(REP_ADDRESS), "the host name is empty or not UTF-8"))?
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await.map_err(io)?;
            std::net::Ipv6Addr::from(a).to_string()
        }
        t => return Err(refused(Some(REP_ADDRESS), format!("address type {t}"))),
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await.map_err(io)?;
    if req[1] != 1 {
        return Err(refused(
            Some(REP_COMMAND),
            format!("command {} (only CONNECT is supported)", req[1]),
        ));
    }
    Ok(Destination {
        host,
        port: u16::from_be_bytes(port),
    })
}

/// The reply to a request; the bound address is not meaningful here and is sent as zeros.
pub async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: u8) -> io::Result<()> {
    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

/// A bound proxy.
pub struct Proxy {
    listener: TcpListener,
}

/// What a proxy needs to start sessions.
pub(crate) struct Context {
    pub env: config::Env,
    pub aws: AwsOptions,
    pub api: Arc<Aws>,
    pub target: String,
    pub idle: Duration,
    pub reason: Option<String>,
    pub ui: Ui,
}

/// One destination's session, as the proxy sees it.
struct Dest {
    /// Hands connections to the session; dropping it ends the session.
    tx: mpsc::Sender<LocalConn>,
    /// Whether the session started (None: not yet).
    ready: watch::Receiver<Option<Result<(), String>>>,
    /// One clone per live connection half.
    live: Arc<()>,
    /// Last connection handed over.
    last: Instant,
    /// Tells this entry from a newer one for the same destination.
    generation: u64,
}

type Dests = Rc<RefCell<HashMap<Destination, Dest>>>;

impl Proxy {
    /// Binds the proxy's listener (loopback unless the spec names an address).
    pub async fn bind(spec: &DynamicForward) -> Result<Self, String> {
        let host = spec.bind.as_deref().unwrap_or("127.0.0.1");
        let listener = TcpListener::bind((host, spec.port))
            .await
            .map_err(|e| format!("cannot listen on {host}:{} for SOCKS5: {e}", spec.port))?;
        Ok(Self { listener })
    }

    /// `ADDRESS:PORT` it listens on.
    pub fn address(&self) -> String {
        self.listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into())
    }

    /// Serves until SIGINT/SIGTERM/SIGHUP, then waits for the destinations' sessions to end
    /// (they see the signal too and tell the agent).
    pub(crate) async fn run(self, ctx: Context) -> Exit {
        let ctx = Rc::new(ctx);
        let dests: Dests = Rc::default();
        let sessions = tokio::task::LocalSet::new();
        let mut signals = Signals::install();
        let mut reap = tokio::time::interval(
            (ctx.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10)),
        );
        let mut generation = 0u64;
        let mut clients = tokio::task::JoinSet::new();
        let exit = sessions
            .run_until(async {
                loop {
                    tokio::select! {
                        sig = signals.recv() => {
                            tracing::debug!(?sig, "SOCKS5 proxy stops");
                            return sig.leaving_exit();
                        }
                        _ = reap.tick() => reap_idle(&dests, ctx.idle),
                        accepted = self.listener.accept() => match accepted {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                generation += 1;
                                let ctx = ctx.clone();
                                let dests = dests.clone();
                                let g = generation;
                                clients.spawn_local(async move {
                                    if let Err(e) = serve(stream, &ctx, &dests, g).await {
                                        tracing::info!(%peer, "SOCKS5 client: {e}");
                                    }
                                });
                            }
                            Err(e) => {
                                tracing::warn!("SOCKS5 accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                        Some(_) = clients.join_next(), if !clients.is_empty() => {}
                    }
                }
            })
            .await;
        // Stop handing out connections; the sessions end (they got the signal themselves).
        clients.shutdown().await;
        dests.borrow_mut().clear();
        sessions.await;
        exit
    }
}

/// Ends the sessions of destinations with no live connection for `idle`.
fn reap_idle(dests: &Dests, idle: Duration) {
    dests.borrow_mut().retain(|d, e| {
        let keep = Arc::strong_count(&e.live) > 1 || e.last.elapsed() < idle;
        if !keep {
            tracing::info!("closing the idle session for {}:{}", d.host, d.port);
        }
        keep
    });
}

/// One client: handshake, the destination's session (started if needed), hand-over.
async fn serve(
    mut stream: TcpStream,
    ctx: &Rc<Context>,
    dests: &Dests,
    generation: u64,
) -> Result<(), String> {
    let dest = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut stream)).await {
        Err(_) => return Err("no SOCKS5 request within 10 s".into()),
        Ok(Err(r)) => {
            if let Some(code) = r.reply {
                let _ = reply(&mut stream, code).await;
            }
            return Err(r.why);
        }
        Ok(Ok(d)) => d,
    };
    // Twice: a session that ended since we looked is replaced once.
    for _ in 0..2 {
        let (tx, mut ready, live) = {
            let mut map = dests.borrow_mut();
            let e = map
                .entry(dest.clone())
                .or_insert_with(|| start_dest(ctx, dests, &dest, generation));
            e.last = Instant::now();
            (e.tx.clone(), e.ready.clone(), e.live.clone())
        };
        let started = tokio::time::timeout(START_WAIT, ready.wait_for(Option::is_some)).await;
        let outcome = match started {
            Ok(Ok(v)) => v.clone().unwrap_or(Ok(())),
            Ok(Err(_)) => Err("the session ended".into()),
            Err(_) => Err(format!(
                "the session did not start within {} s",
                START_WAIT.as_secs()
            )),
        };
        if let Err(e) = outcome {
            let _ = reply(&mut stream, REP_FAILURE).await;
            return Err(format!("{}:{}: {e}", dest.host, dest.port));
        }
        if tx.is_closed() {
            dests.borrow_mut().remove(&dest);
            continue;
        }
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (r, mut w) = stream.into_split();
        let probe = Arc::new(Probe::default());
        let (mut give, held) = oneshot::channel();
        let conn = LocalConn {
            read: Box::pin(Tracked {
                inner: Opening {
                    inner: r,
                    probe: Some(probe.clone()),
                },
                _live: live.clone(),
            }),
            write: Box::pin(Tracked {
                inner: Held {
                    inner: None,
                    held,
                    probe: Some(probe.clone()),
                },
                _live: live,
            }),
            peer,
        };
        if tx.send(conn).await.is_err() {
            let _ = reply(&mut w, REP_FAILURE).await;
            return Err(format!(
                "the session for {}:{} ended as the connection arrived",
                dest.host, dest.port
            ));
        }
        let code = confirm(&probe, &mut give, &tx).await;
        let sent = reply(&mut w, code).await;
        if code != REP_OK {
            // Dropping `give` fails the session's writes, so it closes the stream too.
            let _ = w.shutdown().await;
            let why = match code {
                REP_REFUSED => "the agent could not connect to it",
                _ => "its session ended or did not take the connection",
            };
            return Err(format!("{}:{}: {why}", dest.host, dest.port));
        }
        sent.map_err(|e| format!("the client went away: {e}"))?;
        // Fails only if the session already dropped the connection: nothing left to do.
        let _ = give.send(w);
        return Ok(());
    }
    let _ = reply(&mut stream, REP_FAILURE).await;
    Err(format!("no session for {}:{}", dest.host, dest.port))
}

/// Decides the reply to a connection handed to its session, before any destination byte reaches
/// the client.
///
/// Nothing in the protocol says "connected": the session opens an smux stream and the agent
/// dials the destination. Only a failed dial is reported: the agent sends `ConnectToPortError`
/// and closes the stream, which the session turns into dropping our write half unwritten (or
/// shutting it, if the FIN overtook the flag). The flag carries no reason, so a failed dial is
/// 0x05 (refused), never 0x04. Success is therefore inferred, at the first of:
/// - the session writes to the client (the destination sent a byte): it is connected;
/// - [`CONFIRM_WAIT`] passes after the session took the connection (its reader started, so the
///   stream is open) without a failure: many protocols have the client speak first, and the
///   client waits for this reply, so waiting for data alone could wait forever.
///
/// A dial slower than [`CONFIRM_WAIT`] that then fails still gets success and then a close.
/// Basic mode (older agents) dials when the session starts and ends the session if that fails:
/// the reason does not reach here, so that is 0x01 (general failure); later connections there
/// are dialled on the client's first bytes, after the reply.
async fn confirm(
    probe: &Probe,
    give: &mut oneshot::Sender<OwnedWriteHalf>,
    tx: &mpsc::Sender<LocalConn>,
) -> u8 {
    let opened = async {
        if tokio::time::timeout(START_WAIT, probe.opened.notified())
            .await
            .is_err()
        {
            return REP_FAILURE;
        }
        tokio::time::sleep(CONFIRM_WAIT).await;
        REP_OK
    };
    tokio::select! {
        biased;
        // The session dropped the connection unwritten: a failed dial, unless the whole session
        // is gone.
        _ = give.closed() => if tx.is_closed() { REP_FAILURE } else { REP_REFUSED },
        _ = probe.wants.notified() => {
            if probe.fin_first.load(Ordering::SeqCst) {
                REP_REFUSED
            } else {
                REP_OK
            }
        }
        code = opened => code,
    }
}

/// What the session did with a connection whose reply is not sent yet.
#[derive(Default)]
struct Probe {
    /// The session started reading the client: it opened the connection's stream.
    opened: Notify,
    /// The session has something to write to the client (destination bytes or a FIN).
    wants: Notify,
    /// ... and it was a FIN, before any byte: the destination did not take the connection.
    fin_first: AtomicBool,
}

/// The read half: tells the probe when the session first reads it.
struct Opening<R> {
    inner: R,
    probe: Option<Arc<Probe>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Opening<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(p) = self.probe.take() {
            p.opened.notify_one();
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The write half, held by [`serve`] until the reply is sent: the session's first write (or
/// shutdown) tells the probe and waits for it. Dropping it unwritten tells [`confirm`] too.
struct Held {
    inner: Option<OwnedWriteHalf>,
    held: oneshot::Receiver<OwnedWriteHalf>,
    probe: Option<Arc<Probe>>,
}

impl Held {
    /// The write half, once [`serve`] gives it (after a success reply).
    fn poll_half(
        &mut self,
        cx: &mut TaskContext<'_>,
        fin: bool,
    ) -> Poll<io::Result<&mut OwnedWriteHalf>> {
        let w = match self.inner.take() {
            Some(w) => w,
            None => {
                if let Some(p) = self.probe.take() {
                    p.fin_first.store(fin, Ordering::SeqCst);
                    p.wants.notify_one();
                }
                match std::task::ready!(Pin::new(&mut self.held).poll(cx)) {
                    Ok(w) => w,
                    Err(_) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            "the SOCKS5 connection was not granted",
                        )))
                    }
                }
            }
        };
        Poll::Ready(Ok(self.inner.insert(w)))
    }
}

impl AsyncWrite for Held {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let w = std::task::ready!(self.poll_half(cx, false))?;
        Pin::new(w).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(w) => Pin::new(w).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let w = std::task::ready!(self.poll_half(cx, true))?;
        Pin::new(w).poll_shutdown(cx)
    }
}

/// Starts the session of a new destination in the background.
fn start_dest(ctx: &Rc<Context>, dests: &Dests, dest: &Destination, generation: u64) -> Dest {
    let (tx, rx) = mpsc::channel(16);
    let (ready_tx, ready) = watch::channel(None);
    let label = format!("SOCKS5 destination {}:{}", dest.host, dest.port);
    let listener = Arc::new(Listener::handed(label, rx));
    let request =
        super::spec::request(&ctx.target, Some(&dest.host), dest.port, ctx.reason.clone());
    let ctx2 = ctx.clone();
    let dests2 = dests.clone();
    let d = dest.clone();
    tokio::task::spawn_local(async move {
        let ctx = ctx2;
        let settings = super::start(&ctx.env, &ctx.aws, &ctx.api, request, ctx.ui).await;
        let settings = match settings {
            Ok(s) => s,
            Err(f) => {
                let _ = ready_tx.send(Some(Err(f.message.clone())));
                ctx.ui
                    .warn(&format!("SOCKS5 {}:{}: {}", d.host, d.port, f.message));
                remove_if(&dests2, &d, generation);
                return;
            }
        };
        ctx.ui.warn(&format!(
            "SOCKS5 -> {}:{} via {} (session {})",
            d.host, d.port, ctx.target, settings.args.response.session_id
        ));
        *settings.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(listener);
        let _ = ready_tx.send(Some(Ok(())));
        let (outcome, id) = session::run_forwarding(settings, ctx.env.port_restarts).await;
        session::print_end(ctx.ui, &id, &outcome);
        remove_if(&dests2, &d, generation);
    });
    Dest {
        tx,
        ready,
        live: Arc::new(()),
        last: Instant::now(),
        generation,
    }
}

/// Forgets a destination's session, unless a newer one took its place.
fn remove_if(dests: &Dests, d: &Destination, generation: u64) {
    let mut map = dests.borrow_mut();
    if map.get(d).is_some_and(|e| e.generation == generation) {
        map.remove(d);
    }
}

/// A connection half that keeps its destination's session from counting as idle.
struct Tracked<T> {
    inner: T,
    _live: Arc<()>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(client_bytes: &[u8]) -> (Result<Destination, Refused>, Vec<u8>) {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(client_bytes).await.unwrap();
        drop(a.shutdown().await);
        let r = handshake(&mut b).await;
        drop(b);
        let mut answer = Vec::new();
        let _ = a.read_to_end(&mut answer).await;
        (r, answer)
    }

    #[tokio::test]
    async fn a_connect_by_name_ip4_or_ip6() {
        let mut req = vec![5, 1, 0, 5, 1, 0, 3, 11];
        req.extend_from_slice(b"db.internal");
        req.extend_from_slice(&5432u16.to_be_bytes());
        let (r, answer) = run(&req).await;
        assert_eq!(
            r.unwrap(),
            Destination {
                host: "db.internal".into(),
                port: 5432
            }
        );
        assert_eq!(answer, [5, 0]);
        let (r, _) = run(&[5, 2, 2, 0, 5, 1, 0, 1, 10, 0, 0, 5, 0, 80]).await;
        assert_eq!(r.unwrap().host, "10.0.0.5");
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 22]);
        assert_eq!(run(&v6).await.0.unwrap().host, "::1");
    }

    #[tokio::test]
    async fn what_is_not_supported_is_refused_with_the_right_code() {
        // Only username/password offered.
        let (r, answer) = run(&[5, 1, 2]).await;
        assert!(r.is_err());
        assert_eq!(answer, [5, 0xff]);
        // BIND.
        let (r, _) = run(&[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80]).await;
        assert_eq!(r.unwrap_err().reply, Some(REP_COMMAND));
        // SOCKS4.
        let (r, _) = run(&[4, 1, 0, 80]).await;
        assert!(r.unwrap_err().why.contains("not SOCKS5"));
        // Cut short.
        let (r, _) = run(&[5, 1, 0, 5, 1, 0, 3, 20, b'a']).await;
        assert!(r.unwrap_err().why.contains("went away"));
    }
}
