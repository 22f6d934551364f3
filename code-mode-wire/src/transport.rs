//! The transport seam: any framed byte stream (a local socket, TCP with TLS) becomes a
//! typed reader and an [`Outbox`] that writes frames in order.
//!
//! Both ends of the wire use it: the runtime process (`code-mode-bin`) and the host
//! (`code-mode-host`). Framed reads are not cancel-safe inside `select!`, so the reader is
//! polled by one loop. Writes never wait: a send whose frame finds nothing queued and the
//! stream writable writes it at once, from the sender (no task hop on the way out);
//! anything else is queued, and the writer task writes the queue
//! in order once the stream takes more, flushing whenever the queue runs dry. Both go
//! through one lock around the write half, so frames never interleave or overtake.
//!
//! A frame nobody waits for may ride instead ([`Outbox::send_riding`]): it goes out in the
//! same write as the next frame sent, ahead of it, so it costs neither side a wake-up of
//! its own; if no frame comes within [`RIDE_WITHIN`], the writer task writes it alone.
//!
//! The queue is bounded in bytes ([`MAX_QUEUED_BYTES`]): a peer that stops reading cannot
//! make this side buffer without limit. A send that would pass the bound fails with
//! [`FrameError::Backlog`] and cancels the transport's `stalled` token, on which the
//! connection's owner ends the connection.

pub use super::codec::MAX_QUEUED_BYTES;
use super::codec::{FrameCodec, FrameError, encode_frame};
use bytes::{Bytes, BytesMut};
use code_mode_internal::sync::lock;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// The typed read side of a transport: decodes `In` messages (and refuses to decode `Out`).
pub type FrameReader<S, In, Out> = FramedRead<ReadHalf<S>, FrameCodec<In, Out>>;

/// At most this many queued frames go to the stream in one vectored write.
const FRAMES_PER_WRITE: usize = 64;

/// The longest a riding frame waits for a frame to ride with before it goes alone: frames
/// of busy traffic come closer than this, so a rider goes with one of them; past it the
/// connection is quiet, and the rider goes then, not at the start of the next exchange
/// (where its reading would compete with that exchange).
pub const RIDE_WITHIN: Duration = Duration::from_millis(3);

/// An `M` encoded as a frame ahead of its sending ([`Outbox::encode`]), so that sending it
/// ([`Outbox::send_behind`]) costs its sender only the queueing.
pub struct EncodedFrame<M> {
    bytes: Bytes,
    message: PhantomData<fn(&M)>,
}

impl<M> std::fmt::Debug for EncodedFrame<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedFrame")
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Sends encoded `M` frames. Cloning it is cheap; the writer task ends once every clone is
/// gone and the queue is written.
pub struct Outbox<M> {
    senders: Arc<Senders>,
    message: PhantomData<fn(&M)>,
}

/// What the clones of one outbox share; its drop (the last clone's) lets the writer task
/// finish.
struct Senders {
    sink: Arc<dyn FrameSink>,
    /// Bytes queued and not yet written, shared with the writer.
    queued: Arc<AtomicUsize>,
    stalled: CancellationToken,
}

impl Drop for Senders {
    fn drop(&mut self) {
        self.sink.senders_gone();
    }
}

impl<M> Clone for Outbox<M> {
    fn clone(&self) -> Self {
        Self {
            senders: Arc::clone(&self.senders),
            message: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Outbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("closed", &self.senders.sink.is_closed())
            .finish()
    }
}

impl<M: Serialize> Outbox<M> {
    /// Encodes and writes (or queues) a message. Fails if the message is too large for a
    /// frame, or if the peer has not read what is queued for it ([`FrameError::Backlog`];
    /// the transport is then stalled). Messages sent after the writer stopped are dropped:
    /// the connection is over.
    pub fn send(&self, message: &M) -> Result<(), FrameError> {
        let frame = self.encode_counted(message)?;
        self.senders.sink.push(frame, true);
        Ok(())
    }

    /// `message` as a frame, to be sent later with [`Self::send_behind`]: a word known
    /// before the moment it must go (it fails as [`Self::send`] would for a message too
    /// large for a frame).
    pub fn encode(message: &M) -> Result<EncodedFrame<M>, FrameError> {
        let mut buffer = BytesMut::new();
        encode_frame(message, &mut buffer)?;
        Ok(EncodedFrame {
            bytes: buffer.freeze(),
            message: PhantomData,
        })
    }

    /// [`Self::send`] for a word nobody waits on (about an answer being given), encoded
    /// ahead: always queued for the writer task, never written on the caller's thread, so
    /// the caller's answer waits neither for the encoding, nor for the write, nor for the
    /// peer it wakes. Fails as [`Self::send`] does on a backlog.
    pub fn send_behind(&self, frame: EncodedFrame<M>) -> Result<(), FrameError> {
        let frame = self.counted(frame.bytes)?;
        self.senders.sink.push(frame, false);
        Ok(())
    }

    /// [`Self::send`] for a message nobody waits on and that may come late (spans handed
    /// back): it rides ahead of the next frame sent, in the same write, or goes alone
    /// within [`RIDE_WITHIN`]. Frames still arrive in the order they were sent.
    pub fn send_riding(&self, message: &M) -> Result<(), FrameError> {
        let frame = self.encode_counted(message)?;
        self.senders.sink.ride(frame);
        Ok(())
    }

    /// Encodes `message` as a frame and counts it as queued, unless the queue is full.
    fn encode_counted(&self, message: &M) -> Result<Bytes, FrameError> {
        self.counted(Self::encode(message)?.bytes)
    }

    /// `frame`, counted as queued, unless the queue is full.
    fn counted(&self, frame: Bytes) -> Result<Bytes, FrameError> {
        let bytes = frame.len();
        let queued = &self.senders.queued;
        let before = queued.fetch_add(bytes, Ordering::SeqCst);
        if before > 0 && before + bytes > MAX_QUEUED_BYTES {
            queued.fetch_sub(bytes, Ordering::SeqCst);
            self.senders.stalled.cancel();
            return Err(FrameError::Backlog {
                queued: before as u64,
            });
        }
        Ok(frame)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.senders.queued.load(Ordering::SeqCst)
    }
}

impl<M> Outbox<M> {
    /// Cancelled once a send found the queue full: the peer is not reading.
    pub fn stalled(&self) -> &CancellationToken {
        &self.senders.stalled
    }

    /// Whether the writer has stopped (the connection is over).
    pub fn is_closed(&self) -> bool {
        self.senders.sink.is_closed()
    }
}

/// The write side as the outbox sees it, whatever the stream.
trait FrameSink: Send + Sync {
    /// Writes `frame` now if it can go at once (and `at_once`), else queues it for the
    /// writer task.
    fn push(&self, frame: Bytes, at_once: bool);
    /// Keeps `frame` to go ahead of the next frame pushed, or alone within [`RIDE_WITHIN`].
    fn ride(&self, frame: Bytes);
    /// Every sender is gone: the writer task writes what is queued, then ends.
    fn senders_gone(&self);
    fn is_closed(&self) -> bool;
}

/// The write half and its queue, shared by the senders and the writer task.
struct Writer<W> {
    state: Mutex<WriteState<W>>,
    /// Wakes the writer task: a frame was queued, or the senders are gone.
    work: Notify,
    queued: Arc<AtomicUsize>,
}

struct WriteState<W> {
    stream: W,
    /// Frames to write, in order.
    frames: VecDeque<Bytes>,
    /// Bytes of the first frame already written.
    written: usize,
    /// Bytes written since the last flush.
    unflushed: bool,
    /// Frames riding with the next frame pushed (ahead of it), in order.
    riders: Vec<Bytes>,
    /// When the writer task writes the riders alone if no frame took them: set by the
    /// first rider after the last deadline passed (the task is woken to wait for it),
    /// kept while later riders come and go with frames, so a stream of riders costs the
    /// task one wake-up per [`RIDE_WITHIN`], not one each.
    ride_deadline: Option<tokio::time::Instant>,
    senders_gone: bool,
    /// The writer task has stopped: frames sent later are dropped.
    closed: bool,
}

impl<W: AsyncWrite + Unpin + Send> FrameSink for Writer<W> {
    fn push(&self, frame: Bytes, at_once: bool) {
        let mut state = lock(&self.state);
        if state.closed {
            self.queued.fetch_sub(frame.len(), Ordering::SeqCst);
            return;
        }
        let frame = state.with_riders_ahead(frame);
        if at_once && state.frames.is_empty() && !state.unflushed {
            // Nothing ahead of this frame: try to write it from here. A waker that does
            // nothing is enough, because whatever does not go now is the writer task's,
            // which polls again with its own.
            let mut cx = Context::from_waker(Waker::noop());
            let mut written = 0;
            while written < frame.len() {
                match Pin::new(&mut state.stream).poll_write(&mut cx, &frame[written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => written += n,
                    // Full, or an error the writer task meets and reports.
                    _ => break,
                }
            }
            if written == frame.len() {
                self.queued.fetch_sub(frame.len(), Ordering::SeqCst);
                if let Poll::Ready(Ok(())) = Pin::new(&mut state.stream).poll_flush(&mut cx) {
                    code_mode_internal::hop!("the frame is written");
                    return;
                }
                state.unflushed = true;
                drop(state);
                self.work.notify_one();
                return;
            }
            state.written = written;
            state.unflushed |= written > 0;
        }
        state.frames.push_back(frame);
        drop(state);
        self.work.notify_one();
    }

    fn ride(&self, frame: Bytes) {
        let mut state = lock(&self.state);
        if state.closed {
            self.queued.fetch_sub(frame.len(), Ordering::SeqCst);
            return;
        }
        state.riders.push(frame);
        if state.ride_deadline.is_none() {
            state.ride_deadline = Some(tokio::time::Instant::now() + RIDE_WITHIN);
            drop(state);
            self.work.notify_one();
        }
    }

    fn senders_gone(&self) {
        lock(&self.state).senders_gone = true;
        self.work.notify_one();
    }

    fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }
}

impl<W> WriteState<W> {
    /// `frame` with the riders ahead of it, in one piece (one write), the riders gone.
    fn with_riders_ahead(&mut self, frame: Bytes) -> Bytes {
        if self.riders.is_empty() {
            return frame;
        }
        let riding: usize = self.riders.iter().map(Bytes::len).sum();
        let mut joined = BytesMut::with_capacity(riding + frame.len());
        for rider in self.riders.drain(..) {
            joined.extend_from_slice(&rider);
        }
        joined.extend_from_slice(&frame);
        joined.freeze()
    }

    /// The riders join the queue, to be written alone.
    fn release_riders(&mut self) {
        self.frames.extend(self.riders.drain(..));
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// When the riders are due, if a deadline is set.
    fn ride_deadline(&self) -> Option<tokio::time::Instant> {
        lock(&self.state).ride_deadline
    }

    /// The ride deadline passed: the riders no frame took go alone, and the next rider
    /// sets a new deadline.
    fn riders_due(&self) {
        let mut state = lock(&self.state);
        state.ride_deadline = None;
        state.release_riders();
    }

    /// Writes the queue and flushes. Ready with whether the writer is done (every sender
    /// gone and everything written).
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.senders_gone {
            // Nothing will come for them to ride with.
            state.release_riders();
        }
        while !state.frames.is_empty() {
            code_mode_internal::hop!("the writer task has the frame");
            let mut slices = Vec::with_capacity(state.frames.len().min(FRAMES_PER_WRITE));
            for (index, frame) in state.frames.iter().take(FRAMES_PER_WRITE).enumerate() {
                let skip = if index == 0 { state.written } else { 0 };
                slices.push(IoSlice::new(&frame[skip..]));
            }
            let mut n = ready!(Pin::new(&mut state.stream).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            state.unflushed = true;
            // Advance over what was written: whole frames leave the queue.
            while n > 0 {
                let Some(front) = state.frames.front() else {
                    break;
                };
                let left = front.len() - state.written;
                if n < left {
                    state.written += n;
                    break;
                }
                n -= left;
                self.queued.fetch_sub(front.len(), Ordering::SeqCst);
                state.frames.pop_front();
                state.written = 0;
            }
        }
        if state.unflushed {
            ready!(Pin::new(&mut state.stream).poll_flush(cx))?;
            state.unflushed = false;
            code_mode_internal::hop!("the frame is written");
        }
        Poll::Ready(Ok(state.senders_gone))
    }

    fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut lock(&self.state).stream).poll_shutdown(cx)
    }

    /// The writer task has stopped; later frames are dropped, queued ones uncounted.
    fn close(&self) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        state.closed = true;
        let dropped: usize = state
            .frames
            .drain(..)
            .chain(state.riders.drain(..))
            .map(|frame| frame.len())
            .sum();
        self.queued.fetch_sub(dropped, Ordering::SeqCst);
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
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = Arc::new(Writer {
        state: Mutex::new(WriteState {
            stream: write_half,
            frames: VecDeque::new(),
            written: 0,
            unflushed: false,
            riders: Vec::new(),
            ride_deadline: None,
            senders_gone: false,
            closed: false,
        }),
        work: Notify::new(),
        queued: Arc::clone(&queued),
    });
    let sink: Arc<dyn FrameSink> = Arc::clone(&writer) as Arc<Writer<WriteHalf<S>>>;
    let task = tokio::spawn(write_frames(writer));
    Transport {
        reader: FramedRead::new(read_half, FrameCodec::new()),
        outbox: Outbox {
            senders: Arc::new(Senders {
                sink,
                queued,
                stalled: CancellationToken::new(),
            }),
            message: PhantomData,
        },
        writer: task,
    }
}

/// The writer task: writes what the senders queued whenever there is some, and shuts the
/// write side down when every sender is gone and the queue is written. Stops at the first
/// I/O error.
async fn write_frames<W: AsyncWrite + Unpin>(writer: Arc<Writer<W>>) -> std::io::Result<()> {
    // Closed however the task ends, an abort included: later frames are dropped then.
    let writer = CloseOnDrop(writer);
    loop {
        let done = std::future::poll_fn(|cx| writer.0.poll_drain(cx)).await?;
        if done {
            return std::future::poll_fn(|cx| writer.0.poll_shutdown(cx)).await;
        }
        // A send or the last sender's drop after the drain above left a permit; a rider
        // that set a deadline, too.
        match writer.0.ride_deadline() {
            None => writer.0.work.notified().await,
            Some(deadline) => {
                tokio::select! {
                    () = writer.0.work.notified() => {}
                    () = tokio::time::sleep_until(deadline) => writer.0.riders_due(),
                }
            }
        }
    }
}

/// Closes the writer when the writer task ends.
struct CloseOnDrop<W: AsyncWrite + Unpin>(Arc<Writer<W>>);

impl<W: AsyncWrite + Unpin> Drop for CloseOnDrop<W> {
    fn drop(&mut self) {
        self.0.close();
    }
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
        while !outbox.is_closed() {
            ticks.tick().await;
            nonce += 1;
            // A full queue stalls the transport; its owner ends the connection.
            let _ = outbox.send(&ping(nonce));
        }
    })
}
