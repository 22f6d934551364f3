//! Framing: a 4-byte little-endian length, then one bincode 2 (serde) message.
//!
//! The length is checked against [`MAX_FRAME_BYTES`] before anything is allocated; an
//! oversized, undecodable or truncated frame is a [`FrameError`], after which the peer must
//! be dropped (a frame is never skipped). A clean end of input at a frame boundary is the
//! end of the stream.

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use tokio_util::codec::{Decoder, Encoder};

/// Largest message body, in bytes (64 MiB): room for a large tool result, small enough that
/// a hostile length prefix cannot make a peer allocate without bound.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Most bytes an outbox queues for its writer at once (two of the largest frames): past
/// it the peer is taken to be stuck (see `transport`). A frame is always accepted into an
/// empty queue.
pub const MAX_QUEUED_BYTES: usize = 2 * MAX_FRAME_BYTES;

/// Most buffer space reserved ahead of a frame's bytes, in bytes: a declared length is
/// trusted only as far as the bytes that actually arrive, so a bare prefix claiming
/// 64 MiB does not make the peer allocate 64 MiB.
const READ_RESERVE_BYTES: usize = 64 * 1024;

/// Size of the length prefix, in bytes.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// The one bincode configuration of the wire: little-endian, variable-length integers, and
/// a decoding limit equal to the frame cap.
pub fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_FRAME_BYTES>()
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {bytes} bytes exceeds the maximum of {max} bytes", max = MAX_FRAME_BYTES)]
    TooLarge { bytes: u64 },
    #[error("the stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("frame body has {extra} bytes after its message")]
    TrailingBytes { extra: usize },
    #[error("unencodable message: {0}")]
    Encode(String),
    #[error(
        "the peer is not reading: {queued} bytes are already queued for it (at most {max})",
        max = MAX_QUEUED_BYTES
    )]
    Backlog { queued: u64 },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes one message as a complete frame (prefix included) at the end of `dst`.
/// On error `dst` is left as it was.
pub fn encode_frame<T: Serialize>(message: &T, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32_le(0);
    let mut writer = dst.writer();
    let encoded = bincode::serde::encode_into_std_write(message, &mut writer, bincode_config());
    let dst = writer.into_inner();
    let body = match encoded {
        Ok(body) => body,
        Err(error) => {
            dst.truncate(start);
            return Err(FrameError::Encode(error.to_string()));
        }
    };
    if body > MAX_FRAME_BYTES {
        dst.truncate(start);
        return Err(FrameError::TooLarge { bytes: body as u64 });
    }
    let prefix = u32::try_from(body).map_err(|_| FrameError::TooLarge { bytes: body as u64 })?;
    dst[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_le_bytes());
    Ok(())
}

/// Decodes one message body (without its prefix). The whole body must be one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (message, used) = bincode::serde::decode_from_slice(body, bincode_config())
        .map_err(|error| FrameError::Decode(error.to_string()))?;
    if used != body.len() {
        return Err(FrameError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    Ok(message)
}

/// A tokio codec for one message type in each direction: `In` is decoded, `Out` encoded.
#[derive(Debug)]
pub struct FrameCodec<In, Out> {
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> FrameCodec<In, Out> {
    pub fn new() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        let Some(prefix) = src.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if length > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge {
                bytes: length as u64,
            });
        }
        let frame = LENGTH_PREFIX_BYTES + length;
        if src.len() < frame {
            src.reserve((frame - src.len()).min(READ_RESERVE_BYTES));
            return Ok(None);
        }
        let message = decode_body(&src[LENGTH_PREFIX_BYTES..frame]);
        src.advance(frame);
        message.map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&message, dst)
    }
}
