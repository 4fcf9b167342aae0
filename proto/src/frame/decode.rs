//! Decoding: header checks before anything is buffered, every frame type's payload with each
//! field bounds-checked, and data chunks without copying their bytes.

use bytes::{Buf, Bytes, BytesMut};

use super::{
    Auth, AuthOk, BlockState, DATA_FIELDS_LEN, DataChunk, ErrorCode, ErrorFrame, Frame, Framed,
    HEADER_LEN, Hello, MAX_ADDR_LEN, MAX_AUTH_DATASETS, MAX_CHAIN_UPSTREAM, MAX_DATA_CHUNK,
    MAX_PATH_LEN, MAX_PREFETCH_PATHS, MAX_STRING_LEN, MAX_TOKEN_LEN, ObjectInfo, PEER_AUTH_LEN,
    PeerAuth, PeerBlock, PeerMode, Ping, Placed, Pong, Prefetch, Prefetched, ReadInto, ReadRequest,
    ReadStart, Register, Registered, ServerInfo, StatRequest, T_AUTH, T_AUTH_OK, T_BLOCK_STATE,
    T_DATA, T_ERROR, T_HELLO, T_PEER_AUTH, T_PEER_BLOCK, T_PEER_CHALLENGE, T_PING, T_PLACED,
    T_PONG, T_PREFETCH, T_PREFETCHED, T_READ, T_READ_INTO, T_READ_START, T_REGISTER, T_REGISTERED,
    T_SERVER_INFO, T_STAT, T_STAT_OK, VERSION,
};

/// Why a byte sequence could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not enough bytes yet; `needed` more are required before decoding can go on.
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete { needed: usize },
    #[error("unsupported protocol version {version}")]
    Version { version: u8 },
    #[error("unknown frame type {kind:#04x}")]
    UnknownType { kind: u8 },
    #[error("frame payload of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
}

impl DecodeError {
    /// True when the error only means "wait for more bytes".
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Incomplete { .. })
    }
}

/// Decode one frame from the front of `buf`, consuming it on success.
///
/// On [`DecodeError::Incomplete`] nothing is consumed. Any other error means the stream is
/// corrupt or hostile and the connection should be closed. `max_payload` bounds what the caller
/// will buffer: a header announcing more is rejected before its payload arrives.
pub fn decode(buf: &mut BytesMut, max_payload: usize) -> Result<Framed, DecodeError> {
    let header = peek_header(buf, max_payload)?;
    if buf.len() < HEADER_LEN + header.payload_len {
        return Err(DecodeError::Incomplete {
            needed: HEADER_LEN + header.payload_len - buf.len(),
        });
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(header.payload_len);
    let frame = decode_payload(header.kind, payload)?;
    Ok(Framed {
        request_id: header.request_id,
        frame,
    })
}

fn decode_payload(kind: u8, payload: BytesMut) -> Result<Frame, DecodeError> {
    let name = kind_name(kind);
    let mut r = Reader { name, buf: payload };
    let frame = match kind {
        T_READ => {
            let offset = r.u64()?;
            let length = match r.u64()? {
                u64::MAX => None,
                n => Some(n),
            };
            let path = r.string(MAX_PATH_LEN)?;
            let etag = r.string(MAX_STRING_LEN)?;
            let has_etag = r.u8()? != 0;
            Frame::Read(ReadRequest {
                path,
                offset,
                length,
                if_match: has_etag.then_some(etag),
            })
        }
        T_STAT => Frame::Stat(StatRequest {
            path: r.string(MAX_PATH_LEN)?,
        }),
        T_STAT_OK => Frame::StatOk(r.info()?),
        T_READ_START => {
            let info = r.info()?;
            let offset = r.u64()?;
            let length = r.u64()?;
            Frame::ReadStart(ReadStart {
                info,
                offset,
                length,
            })
        }
        T_DATA => {
            return decode_data_payload(std::mem::take(&mut r.buf).freeze()).map(Frame::Data);
        }
        T_REGISTER => Frame::Register(Register { size: r.u64()? }),
        T_PREFETCH => {
            let n = r.u16()? as usize;
            if n > MAX_PREFETCH_PATHS {
                return Err(r.malformed(format!("{n} paths exceed {MAX_PREFETCH_PATHS}")));
            }
            let mut paths = Vec::with_capacity(n);
            for _ in 0..n {
                paths.push(r.string(MAX_PATH_LEN)?);
            }
            Frame::Prefetch(Prefetch { paths })
        }
        T_PREFETCHED => Frame::Prefetched(Prefetched { accepted: r.u32()? }),
        T_PEER_BLOCK => {
            let size = r.u64()?;
            let last_modified_ms = r.i64()?;
            let block_size = r.u32()?;
            let index = r.u64()?;
            let m = r.u8()?;
            let Some(mode) = PeerMode::from_u8(m) else {
                return Err(r.malformed(format!("unknown mode {m}")));
            };
            let mut b = PeerBlock {
                path: r.string(MAX_PATH_LEN)?,
                etag: r.string(MAX_STRING_LEN)?,
                size,
                last_modified_ms,
                block_size,
                index,
                mode,
                chunk_size: 0,
                offset: 0,
                upstream: Vec::new(),
            };
            if b.is_chain() {
                b.chunk_size = r.u32()?;
                b.offset = r.u64()?;
                let n = r.u16()? as usize;
                if n > MAX_CHAIN_UPSTREAM {
                    return Err(
                        r.malformed(format!("{n} upstream nodes exceed {MAX_CHAIN_UPSTREAM}"))
                    );
                }
                for _ in 0..n {
                    b.upstream.push(r.string(MAX_ADDR_LEN)?);
                }
            }
            Frame::PeerBlock(b)
        }
        T_BLOCK_STATE => {
            let flags = r.u8()?;
            if flags > 3 {
                return Err(r.malformed(format!("unknown flags {flags:#x}")));
            }
            Frame::BlockState(BlockState {
                was_present: flags & 1 != 0,
                present: flags & 2 != 0,
                len: r.u64()?,
                crc32c: r.u32()?,
            })
        }
        T_PING => Frame::Ping(Ping {
            from: r.string(MAX_STRING_LEN)?,
        }),
        T_HELLO => Frame::Hello(Hello {
            client: r.string(MAX_STRING_LEN)?,
        }),
        T_PEER_AUTH | T_PEER_CHALLENGE => {
            let node_id = r.string(MAX_STRING_LEN)?;
            let part = |r: &mut Reader| -> Result<Vec<u8>, DecodeError> {
                let n = usize::from(r.u8()?);
                if n != 0 && n != PEER_AUTH_LEN {
                    return Err(r.malformed(format!("a nonce or proof of {n} bytes")));
                }
                r.bytes(n)
            };
            let nonce = part(&mut r)?;
            let proof = part(&mut r)?;
            let auth = PeerAuth {
                node_id,
                nonce,
                proof,
            };
            if kind == T_PEER_AUTH {
                Frame::PeerAuth(auth)
            } else {
                Frame::PeerChallenge(auth)
            }
        }
        T_AUTH => Frame::Auth(Auth {
            token: r.string(MAX_TOKEN_LEN)?,
        }),
        T_AUTH_OK => {
            let n = usize::from(r.u16()?);
            if n > MAX_AUTH_DATASETS {
                return Err(r.malformed(format!("{n} datasets")));
            }
            let mut datasets = Vec::with_capacity(n);
            for _ in 0..n {
                datasets.push(r.string(MAX_PATH_LEN)?);
            }
            Frame::AuthOk(AuthOk { datasets })
        }
        T_SERVER_INFO => {
            let instance = r.u64()?;
            Frame::ServerInfo(ServerInfo {
                instance,
                node_id: r.string(MAX_STRING_LEN)?,
                version: r.string(MAX_STRING_LEN)?,
                control: r.string(MAX_ADDR_LEN)?,
            })
        }
        T_PONG => {
            let instance = r.u64()?;
            let weight = r.u32()?;
            let (ram_used, ram_capacity) = (r.u64()?, r.u64()?);
            let (disk_used, disk_capacity) = (r.u64()?, r.u64()?);
            Frame::Pong(Pong {
                node_id: r.string(MAX_STRING_LEN)?,
                instance,
                weight,
                ram_used,
                ram_capacity,
                disk_used,
                disk_capacity,
            })
        }
        T_READ_INTO => {
            let region_offset = r.u64()?;
            match decode_payload(T_READ, std::mem::take(&mut r.buf))? {
                Frame::Read(read) => {
                    return Ok(Frame::ReadInto(ReadInto {
                        read,
                        region_offset,
                    }));
                }
                _ => return Err(r.malformed("not a read".into())),
            }
        }
        T_REGISTERED => Frame::Registered(Registered {
            size: r.u64()?,
            max_region: r.u64()?,
        }),
        T_PLACED => Frame::Placed(Placed {
            offset: r.u64()?,
            region_offset: r.u64()?,
            len: r.u64()?,
            crc32c: r.u32()?,
        }),
        T_ERROR => {
            let code = ErrorCode::from_u16(r.u16()?);
            let message = r.string(MAX_STRING_LEN)?;
            Frame::Error(ErrorFrame { code, message })
        }
        other => return Err(DecodeError::UnknownType { kind: other }),
    };
    if !r.buf.is_empty() {
        return Err(r.malformed(format!("{} trailing bytes", r.buf.len())));
    }
    Ok(frame)
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        T_READ => "read",
        T_STAT => "stat",
        T_STAT_OK => "stat-ok",
        T_READ_START => "read-start",
        T_DATA => "data",
        T_ERROR => "error",
        T_REGISTER => "register",
        T_REGISTERED => "registered",
        T_READ_INTO => "read-into",
        T_PLACED => "placed",
        T_PREFETCH => "prefetch",
        T_PREFETCHED => "prefetched",
        T_PEER_BLOCK => "peer-block",
        T_PING => "ping",
        T_PONG => "pong",
        T_BLOCK_STATE => "block-state",
        T_HELLO => "hello",
        T_SERVER_INFO => "server-info",
        T_AUTH => "auth",
        T_PEER_AUTH => "peer-auth",
        T_PEER_CHALLENGE => "peer-challenge",
        T_AUTH_OK => "auth-ok",
        _ => "unknown",
    }
}

struct Reader {
    name: &'static str,
    buf: BytesMut,
}

impl Reader {
    fn malformed(&self, reason: String) -> DecodeError {
        DecodeError::Malformed {
            kind: self.name,
            reason,
        }
    }

    fn need(&self, n: usize, what: &str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(self.malformed(format!("truncated {what}")));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1, "u8")?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2, "u16")?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4, "u32")?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8, "u64")?;
        Ok(self.buf.get_u64())
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.need(8, "i64")?;
        Ok(self.buf.get_i64())
    }

    fn string(&mut self, max: usize) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        if len > max {
            return Err(self.malformed(format!("string of {len} bytes exceeds {max}")));
        }
        self.need(len, "string")?;
        let raw = self.buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| self.malformed("string is not utf-8".into()))
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, DecodeError> {
        self.need(n, "bytes")?;
        Ok(self.buf.split_to(n).to_vec())
    }

    fn info(&mut self) -> Result<ObjectInfo, DecodeError> {
        Ok(ObjectInfo {
            size: self.u64()?,
            etag: self.string(MAX_STRING_LEN)?,
            last_modified_ms: self.i64()?,
            block_size: self.u32()?,
        })
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub request_id: u32,
    pub payload_len: usize,
}

impl Header {
    /// Whether this header starts a data chunk.
    pub fn is_data(&self) -> bool {
        self.kind == T_DATA
    }
}

/// Check the header at the front of `buf` without consuming anything, with the same checks as
/// [`decode`]. Lets a receiver read a large payload straight into a buffer of its choosing.
pub fn peek_header(buf: &[u8], max_payload: usize) -> Result<Header, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    }
    if buf[0] != VERSION {
        return Err(DecodeError::Version { version: buf[0] });
    }
    let kind = buf[1];
    if !matches!(
        kind,
        T_READ
            | T_STAT
            | T_STAT_OK
            | T_READ_START
            | T_DATA
            | T_ERROR
            | T_REGISTER
            | T_REGISTERED
            | T_READ_INTO
            | T_PLACED
            | T_PREFETCH
            | T_PREFETCHED
            | T_PEER_BLOCK
            | T_PING
            | T_PONG
            | T_BLOCK_STATE
            | T_HELLO
            | T_SERVER_INFO
            | T_AUTH
            | T_AUTH_OK
            | T_PEER_AUTH
            | T_PEER_CHALLENGE
    ) {
        return Err(DecodeError::UnknownType { kind });
    }
    let request_id = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let payload_len = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if payload_len > max_payload {
        return Err(DecodeError::TooLarge {
            len: payload_len,
            limit: max_payload,
        });
    }
    Ok(Header {
        kind,
        request_id,
        payload_len,
    })
}

/// A data chunk from the complete payload of a data frame (fields and bytes), without copying
/// the bytes.
pub fn decode_data_payload(payload: Bytes) -> Result<DataChunk, DecodeError> {
    if payload.len() < DATA_FIELDS_LEN {
        return Err(DecodeError::Malformed {
            kind: "data",
            reason: "truncated fields".into(),
        });
    }
    let mut fields = &payload[..DATA_FIELDS_LEN];
    let offset = fields.get_u64();
    let crc32c = fields.get_u32();
    let data = payload.slice(DATA_FIELDS_LEN..);
    if data.len() > MAX_DATA_CHUNK {
        return Err(DecodeError::Malformed {
            kind: "data",
            reason: format!("data chunk of {} bytes", data.len()),
        });
    }
    Ok(DataChunk {
        offset,
        crc32c,
        data,
    })
}
