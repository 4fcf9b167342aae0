//! The data-plane frame codec.
//!
//! Every frame starts with a fixed 12-byte header:
//!
//! ```text
//! 0      1      2             4                  8                  12
//! +------+------+-------------+------------------+------------------+
//! | ver  | type | flags (0)   | request id (BE)  | payload len (BE) |
//! +------+------+-------------+------------------+------------------+
//! ```
//!
//! followed by `payload len` bytes whose layout depends on the type. Integers are big-endian;
//! strings are a `u16` length and UTF-8 bytes.
//!
//! A client sends [`Frame::Read`] or [`Frame::Stat`] under a request id of its choosing; the server
//! answers under the same id, frames of different requests interleaving freely:
//!
//! - `Stat` → one [`Frame::StatOk`] or one [`Frame::Error`];
//! - `Read` → one [`Frame::ReadStart`] (the pinned object version and the exact range), then
//!   [`Frame::Data`] chunks in order until `length` bytes were sent; or a [`Frame::Error`] at any
//!   point, which ends the request.
//!
//! Each data chunk carries the CRC32C of its bytes; the receiver checks it. The decoder never
//! trusts a length: the payload limit is checked before anything is buffered, and every field is
//! bounds-checked, so arbitrary bytes yield an error, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version carried in every header.
pub const VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 12;
/// Longest path a request may name (dataset, `/`, key).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest string field other than a path (etags, error messages).
pub const MAX_STRING_LEN: usize = 16 * 1024;
/// Largest payload of a request frame a server accepts.
pub const MAX_REQUEST_PAYLOAD: usize = 64 * 1024;
/// Largest data chunk: the biggest block size a dataset may be configured with.
pub const MAX_DATA_CHUNK: usize = 64 * 1024 * 1024;
/// Largest payload a client accepts (one data chunk plus its fixed fields).
pub const MAX_RESPONSE_PAYLOAD: usize = MAX_DATA_CHUNK + 64;

const T_READ: u8 = 0x01;
const T_STAT: u8 = 0x02;
const T_STAT_OK: u8 = 0x81;
const T_READ_START: u8 = 0x82;
const T_DATA: u8 = 0x83;
const T_ERROR: u8 = 0xFF;
// Local shared-memory path (Unix socket only).
const T_REGISTER: u8 = 0x03;
const T_READ_INTO: u8 = 0x04;
const T_REGISTERED: u8 = 0x84;
const T_PLACED: u8 = 0x86;
// Prefetch hints.
const T_PREFETCH: u8 = 0x05;
const T_PREFETCHED: u8 = 0x87;
// Cluster: requests between members.
const T_PEER_BLOCK: u8 = 0x06;
const T_PING: u8 = 0x07;
const T_PONG: u8 = 0x88;
const T_BLOCK_STATE: u8 = 0x89;
// Who a data-plane endpoint is (clients find the control plane of the same server).
const T_HELLO: u8 = 0x08;
const T_SERVER_INFO: u8 = 0x8A;
/// Most paths one prefetch frame may name.
pub const MAX_PREFETCH_PATHS: usize = 256;
/// Most nodes ahead of a receiver in a chain ([`PeerBlock::upstream`]).
pub const MAX_CHAIN_UPSTREAM: usize = 256;
/// Largest address in a chain.
const MAX_ADDR_LEN: usize = 256;

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

/// Error codes carried by [`Frame::Error`]. Unknown codes from a newer peer decode as
/// [`ErrorCode::Other`], so old clients still see the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request itself is malformed (empty path, bad field).
    BadRequest,
    /// The dataset is not configured on this server.
    UnknownDataset,
    /// The object does not exist at the origin.
    NotFound,
    /// The key breaks the key rules (`..`, empty segment, NUL, too long).
    InvalidKey,
    /// The range starts past the end of the object.
    RangeNotSatisfiable,
    /// The object is not (or no longer) at the version the request pinned.
    PreconditionFailed,
    /// The origin failed or timed out after bounded retries.
    OriginUnavailable,
    /// The server is at a configured limit; retry later.
    Busy,
    /// The request exceeds a size limit.
    TooLarge,
    /// The server failed in a way that is not the request's fault.
    Internal,
    /// A probe for a block found no copy on that member (cluster, not an error to clients).
    NotCached,
    /// The request is not allowed from this sender (peer-only requests from a non-member).
    Forbidden,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::UnknownDataset => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::InvalidKey => 4,
            ErrorCode::RangeNotSatisfiable => 5,
            ErrorCode::PreconditionFailed => 6,
            ErrorCode::OriginUnavailable => 7,
            ErrorCode::Busy => 8,
            ErrorCode::TooLarge => 9,
            ErrorCode::Internal => 10,
            ErrorCode::NotCached => 11,
            ErrorCode::Forbidden => 12,
            ErrorCode::Other(code) => code,
        }
    }

    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::BadRequest,
            2 => ErrorCode::UnknownDataset,
            3 => ErrorCode::NotFound,
            4 => ErrorCode::InvalidKey,
            5 => ErrorCode::RangeNotSatisfiable,
            6 => ErrorCode::PreconditionFailed,
            7 => ErrorCode::OriginUnavailable,
            8 => ErrorCode::Busy,
            9 => ErrorCode::TooLarge,
            10 => ErrorCode::Internal,
            11 => ErrorCode::NotCached,
            12 => ErrorCode::Forbidden,
            other => ErrorCode::Other(other),
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Busy | ErrorCode::OriginUnavailable | ErrorCode::PreconditionFailed
        )
    }
}

/// Version and shape of an object, as pinned by the server for one read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectInfo {
    pub size: u64,
    /// ETag (or version id) at the origin; empty when the origin has none.
    pub etag: String,
    /// Last modification, milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
    /// Block size the server caches this object in.
    pub block_size: u32,
}

/// Read `length` bytes (to the end of the object when `None`) starting at `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub path: String,
    pub offset: u64,
    pub length: Option<u64>,
    /// Only serve this version (ETag); otherwise answer [`ErrorCode::PreconditionFailed`].
    pub if_match: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRequest {
    pub path: String,
}

/// First answer to a read: the version served and the exact range that follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadStart {
    pub info: ObjectInfo,
    pub offset: u64,
    pub length: u64,
}

/// A run of bytes of the object at `offset`, with the CRC32C of exactly these bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChunk {
    pub offset: u64,
    pub crc32c: u32,
    pub data: Bytes,
}

impl DataChunk {
    /// A chunk whose checksum is computed here.
    pub fn new(offset: u64, data: Bytes) -> DataChunk {
        DataChunk {
            offset,
            crc32c: crc32c::crc32c(&data),
            data,
        }
    }

    /// Whether the bytes match the checksum they travelled with.
    pub fn verify(&self) -> bool {
        crc32c::crc32c(&self.data) == self.crc32c
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

/// Local path: the first frame on a Unix-socket connection, sent together with the region's
/// file descriptor (SCM_RIGHTS): a shared-memory region of `size` bytes the server may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register {
    pub size: u64,
}

/// Local path: the server mapped the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub size: u64,
    /// Largest region the server accepts.
    pub max_region: u64,
}

/// Local path: read like [`ReadRequest`], placing the bytes in the registered region at
/// `region_offset` instead of sending them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadInto {
    pub read: ReadRequest,
    pub region_offset: u64,
}

/// Local path: `len` bytes of the object at `offset` are now in the region at `region_offset`,
/// with the CRC32C they had in the cache. Replaces [`Frame::Data`] on the local path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub offset: u64,
    pub region_offset: u64,
    pub len: u64,
    pub crc32c: u32,
}

/// A hint: these objects will be read next, in this order (a data loader's upcoming shards).
/// The server may load them into its cache in the background; it answers at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefetch {
    pub paths: Vec<String>,
}

/// The answer to [`Prefetch`]: how many of the paths the server queued (0 when it is busy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetched {
    pub accepted: u32,
}

/// What a member asking another for a block wants it to do on a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerMode {
    /// The receiver is the block's owner: serve it from its tiers, its neighbours or the origin.
    Fill,
    /// Serve it only if held in RAM or on disk; otherwise answer [`ErrorCode::NotCached`].
    Probe,
    /// Make sure the receiver holds it (filling it like `Fill` when missing) and answer with a
    /// [`BlockState`] instead of the bytes: warming.
    Load,
    /// Answer with a [`BlockState`]: whether the receiver holds it. Nothing is filled.
    Check,
    /// Drop it from the receiver's tiers; the [`BlockState`] says whether it was there.
    Evict,
    /// Chain distribution: make sure the receiver holds it, taking it chunk by chunk from the
    /// last node of [`PeerBlock::upstream`] (earlier ones if that one fails, the origin when
    /// the list is empty or all fail), and answer with a [`BlockState`].
    Chain,
    /// Chain distribution, from a node to the one before it: send the block from
    /// [`PeerBlock::offset`] as [`Frame::Data`] chunks of [`PeerBlock::chunk_size`] while they
    /// arrive (filling it like `Chain` with the given upstream if it is not here yet). Each chunk
    /// carries the CRC32C it had when it entered the chain, so damage anywhere is caught.
    Stream,
}

impl PeerMode {
    fn to_u8(self) -> u8 {
        match self {
            PeerMode::Fill => 0,
            PeerMode::Probe => 1,
            PeerMode::Load => 2,
            PeerMode::Check => 3,
            PeerMode::Evict => 4,
            PeerMode::Chain => 5,
            PeerMode::Stream => 6,
        }
    }

    fn from_u8(m: u8) -> Option<PeerMode> {
        Some(match m {
            0 => PeerMode::Fill,
            1 => PeerMode::Probe,
            2 => PeerMode::Load,
            3 => PeerMode::Check,
            4 => PeerMode::Evict,
            5 => PeerMode::Chain,
            6 => PeerMode::Stream,
            _ => return None,
        })
    }
}

/// The answer to a `Load`, `Check` or `Evict` [`PeerBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockState {
    /// Held before this request (`Load`: so nothing was fetched; `Evict`: so it was dropped).
    pub was_present: bool,
    /// Held after this request.
    pub present: bool,
    pub len: u64,
    /// `Load` and `Chain`: CRC32C of the block now held; 0 otherwise.
    pub crc32c: u32,
}

/// Cluster: block `index` of one version of an object, asked by one member of another. The
/// answer is one [`Frame::Data`] with the whole block (offset `index * block_size`), a
/// [`BlockState`], a run of chunks (`Stream`), or an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBlock {
    /// `DATASET/KEY`.
    pub path: String,
    pub etag: String,
    pub size: u64,
    pub last_modified_ms: i64,
    /// Block size the asker uses; members must agree.
    pub block_size: u32,
    pub index: u64,
    pub mode: PeerMode,
    /// `Chain` and `Stream` only (not sent otherwise): the chunk size of the stream.
    pub chunk_size: u32,
    /// `Stream`: the offset in the block to send from (a receiver resuming after a failure).
    pub offset: u64,
    /// `Chain` and `Stream`: the data-plane addresses of the nodes ahead of the receiver, the
    /// chain's head first.
    pub upstream: Vec<String>,
}

impl PeerBlock {
    fn is_chain(&self) -> bool {
        matches!(self.mode, PeerMode::Chain | PeerMode::Stream)
    }
}

/// Cluster: a liveness probe. Anyone may send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The sender's node id (for logs; not trusted).
    pub from: String,
}

/// Who is this server? Answered with [`ServerInfo`] by any server, member or not.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// The client's name and version (for logs).
    pub client: String,
}

/// The answer to [`Hello`]: the server's identity and where its other planes listen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    pub node_id: String,
    /// Random per process start: the same value on the control plane's `Health` proves two
    /// addresses reach the same server process.
    pub instance: u64,
    /// The server's version.
    pub version: String,
    /// The control plane's address as bound (`host:port`), empty when it is off. An
    /// unspecified host (`0.0.0.0`) means "the host this endpoint was reached at".
    pub control: String,
}

/// The answer to [`Ping`]: who answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pong {
    pub node_id: String,
    /// Random per process start: tells a node its own address apart, and a restart from a stall.
    pub instance: u64,
    pub weight: u32,
    /// Tier usage and budgets in bytes, as of the answer.
    pub ram_used: u64,
    pub ram_capacity: u64,
    pub disk_used: u64,
    pub disk_capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Read(ReadRequest),
    Stat(StatRequest),
    StatOk(ObjectInfo),
    ReadStart(ReadStart),
    Data(DataChunk),
    Error(ErrorFrame),
    Register(Register),
    Registered(Registered),
    ReadInto(ReadInto),
    Placed(Placed),
    Prefetch(Prefetch),
    Prefetched(Prefetched),
    PeerBlock(PeerBlock),
    Ping(Ping),
    Pong(Pong),
    BlockState(BlockState),
    Hello(Hello),
    ServerInfo(ServerInfo),
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Read(_) => T_READ,
            Frame::Stat(_) => T_STAT,
            Frame::StatOk(_) => T_STAT_OK,
            Frame::ReadStart(_) => T_READ_START,
            Frame::Data(_) => T_DATA,
            Frame::Error(_) => T_ERROR,
            Frame::Register(_) => T_REGISTER,
            Frame::Registered(_) => T_REGISTERED,
            Frame::ReadInto(_) => T_READ_INTO,
            Frame::Placed(_) => T_PLACED,
            Frame::Prefetch(_) => T_PREFETCH,
            Frame::Prefetched(_) => T_PREFETCHED,
            Frame::PeerBlock(_) => T_PEER_BLOCK,
            Frame::Ping(_) => T_PING,
            Frame::Pong(_) => T_PONG,
            Frame::BlockState(_) => T_BLOCK_STATE,
            Frame::Hello(_) => T_HELLO,
            Frame::ServerInfo(_) => T_SERVER_INFO,
        }
    }

    /// Whether this frame is a request (client to server).
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Frame::Read(_)
                | Frame::Stat(_)
                | Frame::ReadInto(_)
                | Frame::Register(_)
                | Frame::Prefetch(_)
                | Frame::PeerBlock(_)
                | Frame::Ping(_)
                | Frame::Hello(_)
        )
    }
}

/// A frame with the id of the request it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub request_id: u32,
    pub frame: Frame,
}

/// An encoded frame as two buffers, so a data chunk leaves in one vectored write without being
/// copied next to its header.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Header and fixed fields.
    pub head: Bytes,
    /// Data bytes of a [`Frame::Data`]; empty otherwise.
    pub body: Bytes,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Both parts copied into one buffer (tests, small frames).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.body);
        out
    }
}

/// Encode a frame. Panics only on caller bugs that no input can cause: strings longer than
/// `u16::MAX` bytes are truncated at a character boundary instead.
pub fn encode(framed: &Framed) -> Encoded {
    let mut fields = BytesMut::with_capacity(64);
    let mut body = Bytes::new();
    match &framed.frame {
        Frame::Read(r) => put_read(&mut fields, r),
        Frame::ReadInto(r) => {
            fields.put_u64(r.region_offset);
            put_read(&mut fields, &r.read);
        }
        Frame::Register(r) => fields.put_u64(r.size),
        Frame::Registered(r) => {
            fields.put_u64(r.size);
            fields.put_u64(r.max_region);
        }
        Frame::Prefetch(p) => {
            fields.put_u16(p.paths.len().min(MAX_PREFETCH_PATHS) as u16);
            for path in p.paths.iter().take(MAX_PREFETCH_PATHS) {
                put_str(&mut fields, path);
            }
        }
        Frame::Prefetched(p) => fields.put_u32(p.accepted),
        Frame::PeerBlock(b) => {
            fields.put_u64(b.size);
            fields.put_i64(b.last_modified_ms);
            fields.put_u32(b.block_size);
            fields.put_u64(b.index);
            fields.put_u8(b.mode.to_u8());
            put_str(&mut fields, &b.path);
            put_str(&mut fields, &b.etag);
            if b.is_chain() {
                fields.put_u32(b.chunk_size);
                fields.put_u64(b.offset);
                let n = b.upstream.len().min(MAX_CHAIN_UPSTREAM);
                fields.put_u16(n as u16);
                for addr in b.upstream.iter().take(n) {
                    put_str(&mut fields, addr);
                }
            }
        }
        Frame::Ping(p) => put_str(&mut fields, &p.from),
        Frame::Hello(h) => put_str(&mut fields, &h.client),
        Frame::ServerInfo(i) => {
            fields.put_u64(i.instance);
            put_str(&mut fields, &i.node_id);
            put_str(&mut fields, &i.version);
            put_str(&mut fields, &i.control);
        }
        Frame::BlockState(b) => {
            fields.put_u8(u8::from(b.was_present) | (u8::from(b.present) << 1));
            fields.put_u64(b.len);
            fields.put_u32(b.crc32c);
        }
        Frame::Pong(p) => {
            fields.put_u64(p.instance);
            fields.put_u32(p.weight);
            for n in [p.ram_used, p.ram_capacity, p.disk_used, p.disk_capacity] {
                fields.put_u64(n);
            }
            put_str(&mut fields, &p.node_id);
        }
        Frame::Placed(p) => {
            fields.put_u64(p.offset);
            fields.put_u64(p.region_offset);
            fields.put_u64(p.len);
            fields.put_u32(p.crc32c);
        }
        Frame::Stat(s) => put_str(&mut fields, &s.path),
        Frame::StatOk(info) => put_info(&mut fields, info),
        Frame::ReadStart(s) => {
            put_info(&mut fields, &s.info);
            fields.put_u64(s.offset);
            fields.put_u64(s.length);
        }
        Frame::Data(d) => {
            fields.put_u64(d.offset);
            fields.put_u32(d.crc32c);
            body = d.data.clone();
        }
        Frame::Error(e) => {
            fields.put_u16(e.code.as_u16());
            put_str(&mut fields, &e.message);
        }
    }
    let payload_len = fields.len() + body.len();
    let mut head = BytesMut::with_capacity(HEADER_LEN + fields.len());
    head.put_u8(VERSION);
    head.put_u8(framed.frame.kind());
    head.put_u16(0);
    head.put_u32(framed.request_id);
    head.put_u32(u32::try_from(payload_len).unwrap_or(u32::MAX));
    head.extend_from_slice(&fields);
    Encoded {
        head: head.freeze(),
        body,
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
        _ => "unknown",
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.put_u16(end as u16);
    buf.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_read(buf: &mut BytesMut, r: &ReadRequest) {
    buf.put_u64(r.offset);
    buf.put_u64(r.length.unwrap_or(u64::MAX));
    put_str(buf, &r.path);
    put_str(buf, r.if_match.as_deref().unwrap_or(""));
    buf.put_u8(u8::from(r.if_match.is_some()));
}

fn put_info(buf: &mut BytesMut, info: &ObjectInfo) {
    buf.put_u64(info.size);
    put_str(buf, &info.etag);
    buf.put_i64(info.last_modified_ms);
    buf.put_u32(info.block_size);
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

/// Length of a data frame's fixed fields (offset and CRC) before its bytes.
pub const DATA_FIELDS_LEN: usize = 12;

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(framed: Framed) {
        let enc = encode(&framed);
        let mut buf = BytesMut::from(&enc.to_vec()[..]);
        let got = decode(&mut buf, MAX_RESPONSE_PAYLOAD).expect("decodes");
        assert_eq!(got, framed);
        assert!(buf.is_empty());
    }

    fn arb_info() -> impl Strategy<Value = ObjectInfo> {
        (any::<u64>(), ".{0,40}", any::<i64>(), any::<u32>()).prop_map(
            |(size, etag, last_modified_ms, block_size)| ObjectInfo {
                size,
                etag,
                last_modified_ms,
                block_size,
            },
        )
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                ".{0,200}",
                any::<u64>(),
                proptest::option::of(0..u64::MAX),
                proptest::option::of(".{0,40}")
            )
                .prop_map(|(path, offset, length, if_match)| Frame::Read(
                    ReadRequest {
                        path,
                        offset,
                        length,
                        if_match
                    }
                )),
            ".{0,200}".prop_map(|path| Frame::Stat(StatRequest { path })),
            arb_info().prop_map(Frame::StatOk),
            (arb_info(), any::<u64>(), any::<u64>()).prop_map(|(info, offset, length)| {
                Frame::ReadStart(ReadStart {
                    info,
                    offset,
                    length,
                })
            }),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..4096)
            )
                .prop_map(|(offset, data)| Frame::Data(DataChunk::new(offset, Bytes::from(data)))),
            any::<u64>().prop_map(|size| Frame::Register(Register { size })),
            proptest::collection::vec(".{0,40}", 0..10)
                .prop_map(|paths| Frame::Prefetch(Prefetch { paths })),
            any::<u32>().prop_map(|accepted| Frame::Prefetched(Prefetched { accepted })),
            (
                ".{0,100}",
                ".{0,40}",
                any::<u64>(),
                any::<i64>(),
                any::<u32>(),
                any::<u64>(),
                0u8..7,
                (
                    any::<u32>(),
                    any::<u64>(),
                    proptest::collection::vec("[a-z0-9.:]{1,30}", 0..5)
                )
            )
                .prop_map(
                    |(path, etag, size, last_modified_ms, block_size, index, probe, chain)| {
                        let mode = PeerMode::from_u8(probe).expect("mode in range");
                        let (chunk_size, offset, upstream) =
                            if matches!(mode, PeerMode::Chain | PeerMode::Stream) {
                                chain
                            } else {
                                (0, 0, Vec::new())
                            };
                        Frame::PeerBlock(PeerBlock {
                            path,
                            etag,
                            size,
                            last_modified_ms,
                            block_size,
                            index,
                            mode,
                            chunk_size,
                            offset,
                            upstream,
                        })
                    }
                ),
            ".{0,40}".prop_map(|from| Frame::Ping(Ping { from })),
            ".{0,40}".prop_map(|client| Frame::Hello(Hello { client })),
            (".{0,40}", any::<u64>(), ".{0,20}", ".{0,60}").prop_map(
                |(node_id, instance, version, control)| Frame::ServerInfo(ServerInfo {
                    node_id,
                    instance,
                    version,
                    control
                })
            ),
            (any::<bool>(), any::<bool>(), any::<u64>(), any::<u32>()).prop_map(
                |(was_present, present, len, crc32c)| Frame::BlockState(BlockState {
                    was_present,
                    present,
                    len,
                    crc32c
                })
            ),
            (".{0,40}", any::<u64>(), any::<u32>()).prop_map(|(node_id, instance, weight)| {
                Frame::Pong(Pong {
                    node_id,
                    instance,
                    weight,
                    ram_used: instance / 3,
                    disk_capacity: u64::from(weight),
                    ..Pong::default()
                })
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(size, max_region)| Frame::Registered(Registered { size, max_region })),
            (".{0,100}", any::<u64>(), any::<u64>()).prop_map(|(path, offset, region_offset)| {
                Frame::ReadInto(ReadInto {
                    read: ReadRequest {
                        path,
                        offset,
                        length: Some(7),
                        if_match: None,
                    },
                    region_offset,
                })
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
                |(offset, region_offset, len, crc32c)| Frame::Placed(Placed {
                    offset,
                    region_offset,
                    len,
                    crc32c
                })
            ),
            (any::<u16>(), ".{0,200}").prop_map(|(code, message)| Frame::Error(ErrorFrame {
                code: ErrorCode::from_u16(code),
                message
            })),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_roundtrips(request_id in any::<u32>(), frame in arb_frame()) {
            roundtrip(Framed { request_id, frame });
        }

        #[test]
        fn frames_split_anywhere_reassemble(frames in proptest::collection::vec(arb_frame(), 1..8), cut in any::<prop::sample::Index>()) {
            let mut wire = Vec::new();
            for (i, frame) in frames.iter().enumerate() {
                wire.extend(encode(&Framed { request_id: i as u32, frame: frame.clone() }).to_vec());
            }
            let cut = cut.index(wire.len() + 1);
            let mut codec = FrameCodec::new(MAX_RESPONSE_PAYLOAD);
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                codec.buffer_mut().extend_from_slice(part);
                while let Some(f) = codec.next_frame().expect("valid stream") {
                    got.push(f.frame);
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(codec.buffered(), 0);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = FrameCodec::new(MAX_REQUEST_PAYLOAD);
            codec.buffer_mut().extend_from_slice(&bytes);
            // Either frames, an incomplete tail, or an error: never a panic or a hang.
            for _ in 0..bytes.len() + 1 {
                match codec.next_frame() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn random_payloads_behind_valid_headers_never_panic(kind in prop::sample::select(vec![T_READ, T_STAT, T_STAT_OK, T_READ_START, T_DATA, T_ERROR, T_REGISTER, T_REGISTERED, T_READ_INTO, T_PLACED, T_PREFETCH, T_PREFETCHED, T_PEER_BLOCK, T_PING, T_PONG, T_BLOCK_STATE, T_HELLO, T_SERVER_INFO]), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::new();
            buf.put_u8(VERSION);
            buf.put_u8(kind);
            buf.put_u16(0);
            buf.put_u32(7);
            buf.put_u32(payload.len() as u32);
            buf.extend_from_slice(&payload);
            let _ = decode(&mut buf, MAX_REQUEST_PAYLOAD);
        }
    }

    #[test]
    fn oversized_header_is_rejected_before_payload_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u8(VERSION);
        buf.put_u8(T_READ);
        buf.put_u16(0);
        buf.put_u32(1);
        buf.put_u32(u32::MAX);
        assert_eq!(
            decode(&mut buf, MAX_REQUEST_PAYLOAD),
            Err(DecodeError::TooLarge {
                len: u32::MAX as usize,
                limit: MAX_REQUEST_PAYLOAD
            })
        );
    }

    #[test]
    fn incomplete_consumes_nothing() {
        let enc = encode(&Framed {
            request_id: 3,
            frame: Frame::Stat(StatRequest {
                path: "ds/key".into(),
            }),
        })
        .to_vec();
        for cut in 0..enc.len() {
            let mut buf = BytesMut::from(&enc[..cut]);
            let err = decode(&mut buf, MAX_REQUEST_PAYLOAD).unwrap_err();
            assert!(err.is_incomplete(), "cut {cut}: {err}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn wrong_version_and_type_are_errors() {
        let mut enc = encode(&Framed {
            request_id: 3,
            frame: Frame::Stat(StatRequest {
                path: "ds/key".into(),
            }),
        })
        .to_vec();
        enc[0] = 9;
        assert_eq!(
            decode(&mut BytesMut::from(&enc[..]), MAX_REQUEST_PAYLOAD),
            Err(DecodeError::Version { version: 9 })
        );
        enc[0] = VERSION;
        enc[1] = 0x55;
        assert_eq!(
            decode(&mut BytesMut::from(&enc[..]), MAX_REQUEST_PAYLOAD),
            Err(DecodeError::UnknownType { kind: 0x55 })
        );
    }

    #[test]
    fn chain_fields_travel_only_with_chain_modes_and_are_bounded() {
        let block = |mode, upstream: Vec<String>| PeerBlock {
            path: "ds/k".into(),
            etag: "e".into(),
            size: 10,
            last_modified_ms: 0,
            block_size: 4,
            index: 1,
            mode,
            chunk_size: 2,
            offset: 1,
            upstream,
        };
        let len = |b: PeerBlock| {
            encode(&Framed {
                request_id: 1,
                frame: Frame::PeerBlock(b),
            })
            .to_vec()
            .len()
        };
        // A fill carries no chain fields (the frame older members send and expect).
        let plain = len(block(PeerMode::Fill, Vec::new()));
        assert_eq!(len(block(PeerMode::Stream, Vec::new())), plain + 4 + 8 + 2);
        roundtrip(Framed {
            request_id: 1,
            frame: Frame::PeerBlock(block(PeerMode::Chain, vec!["10.0.0.1:7070".into(); 3])),
        });
        // Too many nodes ahead: refused, not allocated.
        let mut enc = encode(&Framed {
            request_id: 1,
            frame: Frame::PeerBlock(block(PeerMode::Chain, Vec::new())),
        })
        .to_vec();
        let n = enc.len();
        enc[n - 2..].copy_from_slice(&(MAX_CHAIN_UPSTREAM as u16 + 1).to_be_bytes());
        assert!(matches!(
            decode(&mut BytesMut::from(&enc[..]), MAX_REQUEST_PAYLOAD),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn data_checksum_detects_a_flipped_bit() {
        let mut chunk = DataChunk::new(0, Bytes::from_static(b"training shard bytes"));
        assert!(chunk.verify());
        let mut raw = chunk.data.to_vec();
        raw[3] ^= 0x10;
        chunk.data = Bytes::from(raw);
        assert!(!chunk.verify());
    }
}
