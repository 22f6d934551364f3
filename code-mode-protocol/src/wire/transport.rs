//! The transport seam: any framed byte stream (a local socket today, anything that reads
//! and writes bytes tomorrow) becomes a typed reader and an [`Outbox`] whose writer task
//! owns the write half.
//!
//! Both ends of the wire use it: the runtime process (`code-mode-bin`) and the host
//! (`code-mode-host`). Reading and writing each live in a task of their own, because framed
//! reads and writes are not cancel-safe inside `select!`: the reader is polled by one loop,
//! and every sender only queues encoded frames, which the writer task writes in order,
//! flushing whenever the queue runs dry.
//!
//! The queue is bounded in bytes ([`MAX_QUEUED_BYTES`]): a peer that stops reading cannot
//! make this side buffer without limit. A send that would pass the bound fails with
//! [`FrameError::Backlog`] and cancels the transport's `stalled` token, on which the
//! connection's owner ends the connection.

pub use super::codec::MAX_QUEUED_BYTES;
use super::codec::{FrameCodec, FrameError, encode_frame};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// The typed read side of a transport: decodes `In` messages (and refuses to decode `Out`).
pub type FrameReader<S, In, Out> = FramedRead<ReadHalf<S>, FrameCodec<In, Out>>;

/// Encoded `M` frames on their way to the writer task. Cloning it is cheap; the writer task
/// ends once every clone is gone and the queue is written.
pub struct Outbox<M> {
    frames: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued and not yet written, shared with the writer task.
    queued: Arc<AtomicUsize>,
    stalled: CancellationToken,
    message: PhantomData<fn(&M)>,
}

impl<M> Clone for Outbox<M> {
    fn clone(&self) -> Self {
        Self {
            frames: self.frames.clone(),
            queued: Arc::clone(&self.queued),
            stalled: self.stalled.clone(),
            message: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Outbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("closed", &self.frames.is_closed())
            .finish()
    }
}

impl<M: Serialize> Outbox<M> {
    /// Encodes and queues a message. Fails if the message is too large for a frame, or if
    /// the peer has not read what is queued for it ([`FrameError::Backlog`]; the transport
    /// is then stalled). Messages queued after the writer stopped are dropped: the
    /// connection is over.
    pub fn send(&self, message: &M) -> Result<(), FrameError> {
        let mut buffer = BytesMut::new();
        encode_frame(message, &mut buffer)?;
        let bytes = buffer.len();
        let before = self.queued.fetch_add(bytes, Ordering::SeqCst);
        if before > 0 && before + bytes > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
            self.stalled.cancel();
            return Err(FrameError::Backlog {
                queued: before as u64,
            });
        }
        if self.frames.send(buffer.freeze()).is_err() {
            self.queued.fetch_sub(bytes, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

impl<M> Outbox<M> {
    /// Cancelled once a send found the queue full: the peer is not reading.
    pub fn stalled(&self) -> &CancellationToken {
        &self.stalled
    }
}

/// One side of a connection: its reader, its outbox, and the writer task (which reports
/// the write side's I/O error, if any, when it ends).
pub struct Transport<S, In, Out> {
    pub reader: FrameReader<S, In, Out>,
    pub outbox: Outbox<Out>,
    pub writer: JoinHandle<std::io::Result<()>>,
}

/// Splits a byte stream into a [`Transport`] reading `In` and writing `Out`, and starts its
/// writer task on the current tokio runtime.
pub fn split<S, In, Out>(stream: S) -> Transport<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(stream);
    let (frames, receiver) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_frames(write_half, receiver, Arc::clone(&queued)));
    Transport {
        reader: FramedRead::new(read_half, FrameCodec::new()),
        outbox: Outbox {
            frames,
            queued,
            stalled: CancellationToken::new(),
            message: PhantomData,
        },
        writer,
    }
}

/// The writer task: writes queued frames, flushing whenever the queue runs dry, and shuts
/// the write side down when every sender is gone. Stops at the first I/O error.
async fn write_frames<W: AsyncWrite + Unpin>(
    writer: W,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut writer = tokio::io::BufWriter::new(writer);
    while let Some(frame) = frames.recv().await {
        crate::hop!("the writer task has the frame");
        writer.write_all(&frame).await?;
        queued.fetch_sub(frame.len(), Ordering::SeqCst);
        while let Ok(frame) = frames.try_recv() {
            writer.write_all(&frame).await?;
            queued.fetch_sub(frame.len(), Ordering::SeqCst);
        }
        writer.flush().await?;
        crate::hop!("the frame is written");
    }
    writer.shutdown().await
}

/// Starts a task that queues `ping(n)` (n = 1, 2, ...) every `interval` until the writer
/// task has stopped. The task holds a clone of the outbox, so its owner aborts it when the
/// connection ends.
pub fn spawn_pinger<M>(outbox: Outbox<M>, interval: Duration, ping: fn(u64) -> M) -> JoinHandle<()>
where
    M: Serialize + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut nonce = 0u64;
        while !outbox.frames.is_closed() {
            ticks.tick().await;
            nonce += 1;
            // A full queue stalls the transport; its owner ends the connection.
            let _ = outbox.send(&ping(nonce));
        }
    })
}
