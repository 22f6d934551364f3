//! A reader that refuses a line longer than a cap. MCP over stdio is one JSON-RPC message
//! per line; rmcp drops an oversized line and keeps waiting, which leaves the call it
//! answered hanging until its timeout. Under this reader the same line ends the stream at
//! once instead, and the flag tells the caller why.
//!
//! It can also watch for a byte string and count it the moment it passes, before
//! anything read after it is parsed: the MCP client uses it to know about a
//! `tools/list_changed` before it sees the answer to the call that caused it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Wraps `inner`; a line (the bytes since the last `\n`) longer than `cap` bytes fails the
/// read with `InvalidData` and sets `tripped`.
pub struct LineCap<R> {
    inner: R,
    cap: usize,
    line: usize,
    tripped: Arc<AtomicBool>,
    watch: Option<Watch>,
}

/// A byte string to watch for, the counter it bumps, and the end of the bytes before the
/// current read (so that a match split between two reads is still seen).
struct Watch {
    pattern: &'static [u8],
    seen: Arc<AtomicU64>,
    carry: Vec<u8>,
}

impl Watch {
    fn scan(&mut self, bytes: &[u8]) {
        self.carry.extend_from_slice(bytes);
        let matches = self
            .carry
            .windows(self.pattern.len())
            .filter(|window| *window == self.pattern)
            .count();
        if matches > 0 {
            self.seen.fetch_add(matches as u64, Ordering::SeqCst);
        }
        let keep = self.pattern.len().saturating_sub(1);
        let drop = self.carry.len().saturating_sub(keep);
        self.carry.drain(..drop);
    }
}

impl<R> LineCap<R> {
    pub fn new(inner: R, cap: usize, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            cap,
            line: 0,
            tripped,
            watch: None,
        }
    }

    /// Adds one to `seen` whenever `pattern` passes through.
    pub fn watching(mut self, pattern: &'static [u8], seen: Arc<AtomicU64>) -> Self {
        self.watch = Some(Watch {
            pattern,
            seen,
            carry: Vec::new(),
        });
        self
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LineCap<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(Err(oversized(self.cap)));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                // Every line this read ended, and the one it leaves open, must fit.
                let mut longest = 0;
                for (index, segment) in buf.filled()[before..]
                    .split(|&byte| byte == b'\n')
                    .enumerate()
                {
                    this.line = if index == 0 {
                        this.line.saturating_add(segment.len())
                    } else {
                        segment.len()
                    };
                    longest = longest.max(this.line);
                }
                if longest > this.cap {
                    this.tripped.store(true, Ordering::Relaxed);
                    buf.set_filled(before);
                    return Poll::Ready(Err(oversized(this.cap)));
                }
                if let Some(watch) = &mut this.watch {
                    watch.scan(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

fn oversized(cap: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("an MCP message longer than {cap} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(input: &[u8], cap: usize) -> (io::Result<Vec<u8>>, bool) {
        let tripped = Arc::new(AtomicBool::new(false));
        let mut reader = LineCap::new(input, cap, Arc::clone(&tripped));
        let mut out = Vec::new();
        let result = reader.read_to_end(&mut out).await.map(|_| out);
        (result, tripped.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn lines_up_to_the_cap_pass_through() {
        let input = b"12345\n1234\n\n12345";
        let (result, tripped) = read_all(input, 5).await;
        assert_eq!(result.unwrap(), input);
        assert!(!tripped);
    }

    #[tokio::test]
    async fn a_longer_line_fails_the_read_and_trips_the_flag() {
        let (result, tripped) = read_all(b"ok\n123456\n", 5).await;
        let error = result.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(tripped);
    }

    #[tokio::test]
    async fn a_watched_pattern_is_seen_even_split_between_reads() {
        for (input, expected) in [
            (
                &b"{\"method\":\"notifications/tools/list_changed\"}\n"[..],
                1,
            ),
            (b"{\"method\":\"notifications/tools/list_chang", 0),
            (b"{\"result\":{}}\n", 0),
            (
                b"notifications/tools/list_changed\nnotifications/tools/list_changed\n",
                2,
            ),
        ] {
            let seen = Arc::new(AtomicU64::new(0));
            let mut reader = LineCap::new(OneByte(input), 100, Arc::new(AtomicBool::new(false)))
                .watching(b"notifications/tools/list_changed", Arc::clone(&seen));
            let mut out = Vec::new();
            reader.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, input);
            assert_eq!(seen.load(Ordering::SeqCst), expected, "{input:?}");
        }
    }

    /// Hands out one byte per read.
    struct OneByte<'a>(&'a [u8]);

    impl AsyncRead for OneByte<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some((&first, rest)) = self.0.split_first() {
                buf.put_slice(&[first]);
                self.0 = rest;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_line_counts_across_reads() {
        // Each read of a `&[u8]` through `read_to_end` may be one chunk; a reader that
        // hands out a byte at a time shows the count carries over.
        let tripped = Arc::new(AtomicBool::new(false));
        let mut reader = LineCap::new(OneByte(b"abc\nabcdef"), 4, Arc::clone(&tripped));
        let mut out = Vec::new();
        assert!(reader.read_to_end(&mut out).await.is_err());
        assert_eq!(out, b"abc\nabcd");
        assert!(tripped.load(Ordering::Relaxed));
    }
}
