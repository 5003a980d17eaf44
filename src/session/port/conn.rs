//! One task per direction of a local connection, talking to the mode's loop through bounded
//! queues: the reader only reads when its queue has room (so a full data channel stops reading
//! the socket and TCP pushes back on the client), the writer holds a few chunks at most (so a
//! slow client stops the mode's loop from taking more agent data, and thus our acks).

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::session::listen::{LocalRead, LocalWrite};

/// Identifies a local connection within one session (the smux stream id in mux mode).
pub type ConnId = u32;

/// What a reader reports, in order.
#[derive(Debug)]
pub enum ReadEvent {
    /// Bytes from the client.
    Data(ConnId, Bytes),
    /// The client half-closed (EOF).
    Eof(ConnId),
    /// Reading failed (reset); the connection is gone.
    Failed(ConnId, io::Error),
}

/// What a writer is asked to do.
#[derive(Debug)]
pub enum WriteCmd {
    /// Bytes for the client.
    Data(Bytes),
    /// No more bytes: half-close the connection towards the client.
    Fin,
}

/// A writer that ended: `Ok` after a `Fin`, `Err` when the client is gone.
pub type WriterDone = (ConnId, io::Result<()>);

/// Aborts its task when dropped.
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the client in chunks of at most `chunk` bytes until EOF or an error.
pub fn spawn_reader(
    id: ConnId,
    mut read: LocalRead,
    chunk: usize,
    tx: mpsc::Sender<ReadEvent>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut buf = BytesMut::new();
        loop {
            // Read only once the event can be queued: no read is ever held in memory waiting.
            let Ok(permit) = tx.reserve().await else {
                return;
            };
            buf.reserve(chunk);
            let mut limited = (&mut read).take(chunk as u64);
            match limited.read_buf(&mut buf).await {
                Ok(0) => {
                    permit.send(ReadEvent::Eof(id));
                    return;
                }
                Ok(_) => permit.send(ReadEvent::Data(id, buf.split().freeze())),
                Err(e) => {
                    permit.send(ReadEvent::Failed(id, e));
                    return;
                }
            }
        }
    }))
}

/// Writes what it is given until `Fin` (then half-closes), a write error, or until its queue is
/// dropped (then the connection's write side is dropped, which also half-closes it). It is not
/// aborted on purpose: queued bytes still reach the client after the stream is forgotten.
pub fn spawn_writer(
    id: ConnId,
    mut write: LocalWrite,
    mut rx: mpsc::Receiver<WriteCmd>,
    done: mpsc::UnboundedSender<WriterDone>,
) {
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            let r = match cmd {
                WriteCmd::Data(b) => write.write_all(&b).await,
                WriteCmd::Fin => {
                    let r = write.shutdown().await;
                    let _ = done.send((id, r));
                    return;
                }
            };
            if let Err(e) = r {
                let _ = done.send((id, Err(e)));
                return;
            }
        }
    });
}
