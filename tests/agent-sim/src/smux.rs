//! Our own minimal server side of smux protocol v1 (the multiplexer inside Port sessions with
//! mux-capable clients; the agent runs xtaci/smux as the server, `plugins/port/port_mux.go`).
//!
//! Frame: `ver(1) cmd(1) len(u16 LE) sid(u32 LE)` then `len` bytes. Commands: SYN 0, FIN 1,
//! PSH 2, NOP 3. The client opens streams (odd ids from 3); the server never answers a SYN;
//! each stream gets one TCP connection to the destination. As in the agent, the channel side
//! is a byte pipe: client Output payloads are written into it whatever their boundaries, and
//! the server's frames are read back out of it in chunks of at most 1024 bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ssm_plugin::wire::{FlagValue, PayloadType};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Mutex, Notify};

use crate::datachannel::{DataChannel, HandlerFut, InputHandler};

pub(crate) const CMD_SYN: u8 = 0;
pub(crate) const CMD_FIN: u8 = 1;
pub(crate) const CMD_PSH: u8 = 2;
pub(crate) const CMD_NOP: u8 = 3;
/// smux `DefaultConfig().MaxFrameSize`.
const MAX_FRAME: usize = 32 * 1024;

/// Encodes one smux v1 frame.
pub fn frame(cmd: u8, sid: u32, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.push(1);
    f.push(cmd);
    f.extend_from_slice(&(data.len() as u16).to_le_bytes());
    f.extend_from_slice(&sid.to_le_bytes());
    f.extend_from_slice(data);
    f
}

struct MuxHandler {
    dc: Arc<DataChannel>,
    pipe: Mutex<WriteHalf<DuplexStream>>,
}

impl InputHandler for MuxHandler {
    fn handle(&self, payload_type: PayloadType, payload: Bytes) -> HandlerFut<'_> {
        Box::pin(async move {
            match payload_type {
                PayloadType::OUTPUT => {
                    // Blocks while smux is not reading (receive buffer full): the agent's
                    // websocket reader blocks the same way.
                    self.pipe
                        .lock()
                        .await
                        .write_all(&payload)
                        .await
                        .map_err(|e| {
                            crate::datachannel::HandleError::Failed(format!(
                                "Unable to write to port, err: {e}."
                            ))
                        })
                }
                PayloadType::FLAG => {
                    // Mux sessions act only on TerminateSession.
                    if FlagValue::from_payload(&payload) == Some(FlagValue::TerminateSession) {
                        self.dc.cancel();
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}

enum ToDest {
    Data(Bytes),
    Fin,
}

/// Receive-buffer accounting shared by all streams (smux's session-wide bucket).
struct Bucket {
    used: AtomicUsize,
    freed: Notify,
}

pub(crate) async fn run(dc: Arc<DataChannel>, dest: String, keepalive: bool) -> String {
    let sess = dc.sess.clone();
    let (mgs_side, mux_side) = tokio::io::duplex(64 * 1024);
    let (mut mgs_read, mgs_write) = tokio::io::split(mgs_side);
    let (mux_read, mut mux_write) = tokio::io::split(mux_side);
    dc.set_handler(Arc::new(MuxHandler {
        dc: dc.clone(),
        pipe: Mutex::new(mgs_write),
    }));

    // Frame writer: every server frame goes through here into the pipe.
    let (ftx, mut frx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = async move {
        while let Some(f) = frx.recv().await {
            if mux_write.write_all(&f).await.is_err() {
                break;
            }
        }
    };

    // transferDataToMgs: pipe -> Output messages of at most 1024 bytes, 1 ms apart.
    let pacing = sess.shared.cfg().limits.port_pacing;
    let dc2 = dc.clone();
    let pump = async move {
        let mut buf = vec![0u8; 1024];
        loop {
            dc2.wait_active().await;
            match mgs_read.read(&mut buf).await {
                Ok(0) | Err(_) => return "Unable to read from connection: EOF".to_owned(),
                Ok(n) => dc2.send_stream(PayloadType::OUTPUT, &buf[..n]),
            }
            if pacing {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };

    let activity = Arc::new(AtomicBool::new(false));
    let bucket = Arc::new(Bucket {
        used: AtomicUsize::new(0),
        freed: Notify::new(),
    });
    let server = serve(
        dc.clone(),
        dest,
        mux_read,
        ftx.clone(),
        activity.clone(),
        bucket.clone(),
    );

    let limits = sess.cfg.limits.clone();
    let receive_buffer = limits.smux_receive_buffer;
    let ka_tx = ftx.clone();
    let sess2 = sess.clone();
    let keepalive_task = async move {
        if !keepalive {
            return std::future::pending::<String>().await;
        }
        let mut ping = tokio::time::interval(limits.smux_keepalive_interval);
        let mut check = tokio::time::interval(limits.smux_keepalive_timeout);
        ping.tick().await;
        check.tick().await;
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    sess2.stats().smux_nops_out += 1;
                    let _ = ka_tx.send(frame(CMD_NOP, 0, &[]));
                }
                _ = check.tick() => {
                    // smux `keepalive`: no frame for a whole timeout closes the session,
                    // unless the reader is parked on a full receive buffer (then the silence
                    // is ours, not the client's).
                    let blocked = bucket.used.load(Ordering::SeqCst) >= receive_buffer;
                    if !activity.swap(false, Ordering::SeqCst) && !blocked {
                        return "smux: keep-alive timeout, closing the session".to_owned();
                    }
                }
            }
        }
    };

    tokio::select! {
        _ = writer => "smux: pipe closed".to_owned(),
        e = pump => e,
        e = server => e,
        e = keepalive_task => e,
        _ = dc.cancelled() => String::new(),
    }
}

/// smux `recvLoop` + the agent's `handleServerConnections`.
async fn serve(
    dc: Arc<DataChannel>,
    dest: String,
    mut r: ReadHalf<DuplexStream>,
    ftx: mpsc::UnboundedSender<Vec<u8>>,
    activity: Arc<AtomicBool>,
    bucket: Arc<Bucket>,
) -> String {
    let sess = dc.sess.clone();
    let limit = sess.cfg.limits.smux_receive_buffer;
    let half_close = sess.cfg.mux_half_close;
    let mut streams: HashMap<u32, mpsc::UnboundedSender<ToDest>> = HashMap::new();
    loop {
        // Stop reading while the receive buffer is full.
        while bucket.used.load(Ordering::SeqCst) >= limit {
            let notified = bucket.freed.notified();
            if bucket.used.load(Ordering::SeqCst) < limit {
                break;
            }
            notified.await;
        }
        let mut hdr = [0u8; 8];
        if r.read_exact(&mut hdr).await.is_err() {
            return "smux: broken pipe".into();
        }
        activity.store(true, Ordering::SeqCst);
        let (ver, cmd) = (hdr[0], hdr[1]);
        let len = u16::from_le_bytes([hdr[2], hdr[3]]) as usize;
        let sid = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        if ver != 1 || cmd > CMD_NOP {
            return format!("smux: invalid protocol (version {ver}, command {cmd})");
        }
        sess.stats().smux_frames_in[cmd as usize] += 1;
        let mut data = vec![0u8; len];
        if r.read_exact(&mut data).await.is_err() {
            return "smux: broken pipe".into();
        }
        match cmd {
            CMD_SYN => {
                if streams.contains_key(&sid) {
                    continue;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                streams.insert(sid, tx);
                tokio::spawn(stream_task(
                    dc.clone(),
                    sid,
                    dest.clone(),
                    rx,
                    ftx.clone(),
                    bucket.clone(),
                    half_close,
                ));
            }
            CMD_PSH => {
                if let Some(tx) = streams.get(&sid) {
                    bucket.used.fetch_add(len, Ordering::SeqCst);
                    if tx.send(ToDest::Data(Bytes::from(data))).is_err() {
                        bucket.used.fetch_sub(len, Ordering::SeqCst);
                    }
                }
            }
            CMD_FIN => {
                if let Some(tx) = streams.remove(&sid) {
                    let _ = tx.send(ToDest::Fin);
                }
            }
            _ => {} // NOP
        }
    }
}

/// One stream: dial the destination, then copy both ways (`port_mux.go: handleDataTransfer`).
async fn stream_task(
    dc: Arc<DataChannel>,
    sid: u32,
    dest: String,
    mut rx: mpsc::UnboundedReceiver<ToDest>,
    ftx: mpsc::UnboundedSender<Vec<u8>>,
    bucket: Arc<Bucket>,
    half_close: bool,
) {
    let sess = dc.sess.clone();
    let release = |n: usize| {
        bucket.used.fetch_sub(n, Ordering::SeqCst);
        bucket.freed.notify_waiters();
    };
    let conn = match crate::plugins::dial_port(&dest).await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(session = %sess.id, sid, "unable to dial {dest}: {e}");
            dc.send_stream(
                PayloadType::FLAG,
                &FlagValue::ConnectToPortError.to_payload(),
            );
            let _ = ftx.send(frame(CMD_FIN, sid, &[]));
            while let Some(m) = rx.recv().await {
                if let ToDest::Data(d) = m {
                    release(d.len());
                }
            }
            return;
        }
    };
    let (mut cr, mut cw) = conn.into_split();
    let fin_sent = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::new(Notify::new());
    // destination -> client
    let reader = {
        let ftx = ftx.clone();
        let fin_sent = fin_sent.clone();
        let stop = stop_reader.clone();
        let sess = sess.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_FRAME];
            loop {
                let n = tokio::select! {
                    r = cr.read(&mut buf) => r.unwrap_or(0),
                    _ = stop.notified() => 0,
                };
                if n == 0 {
                    break;
                }
                sess.stats().bytes_from_destination += n as u64;
                if ftx.send(frame(CMD_PSH, sid, &buf[..n])).is_err() {
                    return;
                }
            }
            if !fin_sent.swap(true, Ordering::SeqCst) {
                let _ = ftx.send(frame(CMD_FIN, sid, &[]));
            }
        })
    };
    // client -> destination
    while let Some(m) = rx.recv().await {
        match m {
            ToDest::Data(d) => {
                let ok = cw.write_all(&d).await.is_ok();
                release(d.len());
                if ok {
                    sess.stats().bytes_to_destination += d.len() as u64;
                }
            }
            ToDest::Fin => {
                if half_close {
                    let _ = cw.shutdown().await;
                } else {
                    // The agent closes the whole destination connection once the client's
                    // stream reaches EOF; its reader then ends and FINs the stream.
                    stop_reader.notify_one();
                }
                break;
            }
        }
    }
    // Anything still queued after FIN is dropped; give its budget back.
    rx.close();
    while let Ok(m) = rx.try_recv() {
        if let ToDest::Data(d) = m {
            release(d.len());
        }
    }
    let _ = reader.await;
    drop(cw);
}
