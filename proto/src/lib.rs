//! Wire formats of shardcache, with no I/O.
//!
//! - [`frame`]: the data-plane protocol, one framed request/response format carried unchanged
//!   over every transport (TCP, each QUIC stream, later the local socket and RDMA bootstrap).
//!   Encoding and decoding are plain functions over `bytes` buffers: no sockets, no runtime.
//! - [`path`]: the `DATASET/KEY` object address and the rules a key must obey before any server
//!   turns it into an origin request.
//!
//! - [`control`]: the control-plane gRPC schema (`proto/control.proto`), compiled at build time
//!   with protox into tonic service and client types.
//!
//! Nothing here knows about caches, origins or connections; the server and the client build on it.

pub mod frame;
pub mod path;

/// The control plane: `Warm`, `List`, `Stat`, `Evict`, `Members`, `Health`.
pub mod control {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("shardcache.control.v1");
}

pub use frame::{
    Auth, AuthOk, BlockState, DataChunk, DecodeError, ErrorCode, ErrorFrame, Frame, FrameCodec,
    Framed, Header, Hello, ObjectInfo, PeerAuth, PeerBlock, PeerMode, Ping, Placed, Pong, Prefetch,
    Prefetched, ReadInto, ReadRequest, ReadStart, Register, Registered, ServerInfo, StatRequest,
};
pub use path::{ObjectPath, PathError};
