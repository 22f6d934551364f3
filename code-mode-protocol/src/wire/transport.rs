//! The transport seam: any framed byte stream (a local socket today, anything that reads
//! and writes bytes tomorrow) becomes a typed reader and an [`Outbox`] whose writer task
//! owns the write half.
//!
//! Both ends of the wire use it: the runtime process (`code-mode-bin`) and the host
//! (`code-mode-host`). Reading and writing each live in a task of their own, because framed
//! reads and writes are not cancel-safe inside `select!`: the reader is polled by one loop,
//! and every sender only queues encoded frames, which the writer task writes in order,
//! flushing whenever the queue runs dry.

use super::codec::{FrameCodec, FrameError, encode_frame};
use bytes::{Bytes, BytesMut};
use serde::Serialize;
use std::marker::PhantomData;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

/// The typed read side of a transport: decodes `In` messages (and refuses to decode `Out`).
pub type FrameReader<S, In, Out> = FramedRead<ReadHalf<S>, FrameCodec<In, Out>>;

/// Encoded `M` frames on their way to the writer task. Cloning it is cheap; the writer task
/// ends once every clone is gone and the queue is written.
pub struct Outbox<M> {
    frames: mpsc::UnboundedSender<Bytes>,
    message: PhantomData<fn(&M)>,
}

impl<M> Clone for Outbox<M> {
    fn clone(&self) -> Self {
        Self {
            frames: self.frames.clone(),
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
    /// Encodes and queues a message. Fails only if the message is too large for a frame.
    /// Messages queued after the writer stopped are dropped: the connection is over.
    pub fn send(&self, message: &M) -> Result<(), FrameError> {
        let mut buffer = BytesMut::new();
        encode_frame(message, &mut buffer)?;
        let _ = self.frames.send(buffer.freeze());
        Ok(())
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
    let (frames, queued) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(write_half, queued));
    Transport {
        reader: FramedRead::new(read_half, FrameCodec::new()),
        outbox: Outbox {
            frames,
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
) -> std::io::Result<()> {
    let mut writer = tokio::io::BufWriter::new(writer);
    while let Some(frame) = frames.recv().await {
        writer.write_all(&frame).await?;
        while let Ok(frame) = frames.try_recv() {
            writer.write_all(&frame).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}
