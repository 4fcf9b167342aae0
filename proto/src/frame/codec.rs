//! [`FrameCodec`]: frames out of a byte stream that arrives in pieces.

use bytes::{Buf, BytesMut};

use super::{DecodeError, Framed, HEADER_LEN, Header, decode, peek_header};

/// Stateful decoder for a byte stream: feed bytes in, take frames out.
#[derive(Debug)]
pub struct FrameCodec {
    buf: BytesMut,
    max_payload: usize,
}

impl FrameCodec {
    /// A codec that rejects frames with payloads over `max_payload` bytes.
    pub fn new(max_payload: usize) -> FrameCodec {
        FrameCodec {
            buf: BytesMut::with_capacity(64 * 1024),
            max_payload,
        }
    }

    /// The buffer to read socket bytes into.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The header of the next frame, if its 12 bytes have arrived.
    pub fn peek_header(&self) -> Result<Option<Header>, DecodeError> {
        match peek_header(&self.buf, self.max_payload) {
            Ok(h) => Ok(Some(h)),
            Err(DecodeError::Incomplete { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove the next frame's header and up to `max` of its payload bytes already buffered,
    /// returning the payload part (the caller reads the rest of the payload itself).
    pub fn take_frame_start(&mut self, max: usize) -> BytesMut {
        self.buf.advance(HEADER_LEN.min(self.buf.len()));
        let n = max.min(self.buf.len());
        self.buf.split_to(n)
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Framed>, DecodeError> {
        match decode(&mut self.buf, self.max_payload) {
            Ok(frame) => Ok(Some(frame)),
            Err(DecodeError::Incomplete { needed }) => {
                // Reserve room for the rest of a large frame in one step, up to the limit the
                // header check already enforced.
                self.buf.reserve(needed.min(self.max_payload + HEADER_LEN));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
