//! Shared by the `fuzz/` targets (which include this file by path) and the property tests:
//! feeding arbitrary bytes to every decoder, and generating inputs (random bytes behind
//! plausible lengths, and mutations of valid frames). Not part of the crate's API: it uses
//! only what any user of the codec could.
//!
//! Decoding may succeed, wait for more bytes, or fail; it must never panic, hang, or
//! allocate beyond the frame cap.

#![expect(
    dead_code,
    reason = "each includer uses a part: the fuzz targets one decoder each, the tests the generator"
)]

use bytes::BytesMut;
use code_mode_wire::codec::{FrameCodec, decode_body, encode_frame};
use code_mode_wire::{ClientMessage, ServerMessage};
use tokio_util::codec::Decoder;

/// Feeds `bytes` to the frame codec (as a stream, then at end of input) for both message
/// types, and to both body decoders.
pub fn exercise_decoders(bytes: &[u8]) {
    exercise_stream::<ClientMessage>(bytes);
    exercise_stream::<ServerMessage>(bytes);
    let _ = decode_body::<ClientMessage>(bytes);
    let _ = decode_body::<ServerMessage>(bytes);
}

/// Feeds `bytes` to the client-message body decoder alone.
pub fn exercise_client_message(bytes: &[u8]) {
    let _ = decode_body::<ClientMessage>(bytes);
}

/// Feeds `bytes` to the server-message body decoder alone.
pub fn exercise_server_message(bytes: &[u8]) {
    let _ = decode_body::<ServerMessage>(bytes);
}

fn exercise_stream<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
    let mut codec = FrameCodec::<T, T>::new();
    let mut buffer = BytesMut::from(bytes);
    while let Ok(Some(_)) = codec.decode(&mut buffer) {}
    let _ = codec.decode_eof(&mut buffer);
}

/// A small deterministic generator (xorshift64*), so failures reproduce from the seed.
#[derive(Debug, Clone)]
pub struct InputGenerator {
    state: u64,
    valid: Vec<Vec<u8>>,
}

impl InputGenerator {
    /// A generator that mutates the frames of `samples`.
    pub fn new(seed: u64, client: &[ClientMessage], server: &[ServerMessage]) -> Self {
        let mut valid = Vec::new();
        for message in client {
            let mut frame = BytesMut::new();
            if encode_frame(message, &mut frame).is_ok() {
                valid.push(frame.to_vec());
            }
        }
        for message in server {
            let mut frame = BytesMut::new();
            if encode_frame(message, &mut frame).is_ok() {
                valid.push(frame.to_vec());
            }
        }
        Self {
            state: seed.max(1),
            valid,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    /// The next input: alternately arbitrary bytes behind a plausible length prefix, and a
    /// valid frame with a few bytes flipped, cut or inserted.
    pub fn input(&mut self) -> Vec<u8> {
        if self.valid.is_empty() || self.next().is_multiple_of(2) {
            let length = self.below(48) as usize;
            let mut bytes = (length as u32).to_le_bytes().to_vec();
            bytes.extend((0..length).map(|_| self.next() as u8));
            return bytes;
        }
        let index = self.below(self.valid.len() as u64) as usize;
        let mut bytes = self.valid[index].clone();
        for _ in 0..=self.below(3) {
            let at = self.below(bytes.len() as u64) as usize;
            match self.below(3) {
                0 => bytes[at] ^= 1 << self.below(8),
                1 => bytes.truncate(at.max(1)),
                _ => {
                    let byte = self.next() as u8;
                    bytes.insert(at, byte);
                }
            }
        }
        bytes
    }
}
