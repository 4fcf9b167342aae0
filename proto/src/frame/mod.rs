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

use bytes::Bytes;

mod codec;
mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub use codec::FrameCodec;
pub use decode::{DecodeError, Header, decode, decode_data_payload, peek_header};
pub use encode::{Encoded, encode};

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
/// Length of a data frame's fixed fields (offset and CRC) before its bytes.
pub const DATA_FIELDS_LEN: usize = 12;

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
// Data-plane authentication: a bearer token, once per connection.
const T_AUTH: u8 = 0x09;
const T_AUTH_OK: u8 = 0x8B;
// Cluster: a member proving it holds the cluster secret (challenge–response).
const T_PEER_AUTH: u8 = 0x0A;
const T_PEER_CHALLENGE: u8 = 0x8C;
/// Length of a peer-authentication nonce and of an HMAC-SHA256 proof.
pub const PEER_AUTH_LEN: usize = 32;
/// Longest bearer token.
pub const MAX_TOKEN_LEN: usize = 1024;
/// Most datasets an [`AuthOk`] names.
pub const MAX_AUTH_DATASETS: usize = 1024;
/// Most paths one prefetch frame may name.
pub const MAX_PREFETCH_PATHS: usize = 256;
/// Most nodes ahead of a receiver in a chain ([`PeerBlock::upstream`]).
pub const MAX_CHAIN_UPSTREAM: usize = 256;
/// Largest address in a chain.
const MAX_ADDR_LEN: usize = 256;

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
    /// The request is not allowed from this sender (peer-only requests from a non-member, a
    /// dataset the connection's token does not grant).
    Forbidden,
    /// The server requires a bearer token ([`Frame::Auth`]) and none, or an unknown one, was
    /// given.
    Unauthenticated,
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
            ErrorCode::Unauthenticated => 13,
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
            13 => ErrorCode::Unauthenticated,
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

/// Data-plane authentication: the bearer token of an `--access-tokens` file. Sent once, as the
/// first request of a connection (after the local socket's `Register`); the server answers
/// [`AuthOk`], or an [`ErrorCode::Unauthenticated`] error and closes the connection. Over QUIC
/// it authenticates the whole connection, not only its stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Auth {
    pub token: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The answer to [`Auth`]: the datasets the token grants (`*`: every dataset).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthOk {
    pub datasets: Vec<String>,
}

/// Cluster: one step of the members' challenge–response over the cluster secret
/// (`--cluster-secret-file`), the first exchange on a connection between members.
///
/// 1. The asker sends `PeerAuth { node_id, nonce: its nonce, proof: empty }`.
/// 2. The server answers [`Frame::PeerChallenge`] with its own node id, its nonce and a proof
///    (HMAC-SHA256 under the secret over both nonces and both ids), which the asker checks: a
///    process that does not hold the secret cannot pass for a member to the asker either.
/// 3. The asker sends `PeerAuth { node_id, nonce: empty, proof: its proof }`; the server checks
///    it and answers [`AuthOk`], or an `Unauthenticated` error and closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerAuth {
    pub node_id: String,
    /// [`PEER_AUTH_LEN`] bytes, or empty.
    pub nonce: Vec<u8>,
    /// [`PEER_AUTH_LEN`] bytes, or empty.
    pub proof: Vec<u8>,
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
    Auth(Auth),
    AuthOk(AuthOk),
    PeerAuth(PeerAuth),
    PeerChallenge(PeerAuth),
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
            Frame::Auth(_) => T_AUTH,
            Frame::AuthOk(_) => T_AUTH_OK,
            Frame::PeerAuth(_) => T_PEER_AUTH,
            Frame::PeerChallenge(_) => T_PEER_CHALLENGE,
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
                | Frame::Auth(_)
                | Frame::PeerAuth(_)
        )
    }
}

/// A frame with the id of the request it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub request_id: u32,
    pub frame: Frame,
}
