//! The shardcache client: reads training data from a shardcache server.
//!
//! - [`Client`]: async `stat`, `read`, `read_into`, and `open` for a seekable [`ObjectReader`]
//!   with readahead; over TCP (`host:port`) or QUIC (`quic://host:port`).
//! - [`BlockingClient`]: the same for synchronous code, with a std `Read + Seek` reader.
//! - The local path: given a Unix socket path (`/run/shardcache.sock`), the client registers
//!   shared memory with a co-located server, which copies blocks straight into it;
//!   [`Client::read_into_buffer`] reads into a page-locked [`PinnedBuffer`] (or one from a
//!   [`PinnedBufferPool`]); with the `cuda` feature a buffer can also be registered with the CUDA
//!   driver (`PinnedBuffer::register_cuda`).
//!
//! - [`ControlClient`]: the gRPC control plane (warm, list, stat, evict, members, health), and
//!   [`Manifest`]s that pin reads to what a warm recorded ([`Client::read_manifest`]).
//!
//! Every chunk is checked against the CRC32C the server sent with it; a mismatch is an error
//! ([`ClientError::Checksum`]) and the request is retried, never returned as data.
//!
//! No `unsafe` here (the workspace forbids it): the shared memory, mlock and CUDA calls are in
//! shardcache-mem.

mod blocking;
mod client;
mod conn;
mod control;
#[cfg(feature = "cuda")]
mod cuda;
pub use conn::quic_endpoint;
mod endpoint;
mod error;
mod local;
mod options;
mod pinned;
mod reader;

pub use blocking::{BlockingClient, BlockingReader};
pub use client::{Client, ReadStream, control_endpoint_for};
pub use control::{ControlClient, ControlError, Manifest, ManifestObject};
#[cfg(feature = "cuda")]
pub use cuda::cuda_driver_available;
pub use endpoint::{Endpoint, Transport};
pub use error::{Cause, ClientError, Result};
pub use options::ClientOptions;
pub use pinned::{PinnedBuffer, PinnedBufferPool, Pinning, PooledBuffer};
pub use reader::ObjectReader;
pub use shardcache_proto::control as control_proto;
pub use shardcache_proto::{ErrorCode, ObjectInfo, ServerInfo};

/// Multiplexed protocol connections below [`Client`]: one request frame in, that request's
/// response frames out. Servers use them to talk to their peers.
pub mod raw {
    pub use crate::conn::{BufPool, Conn, QuicConn, Responses, TcpConn, TcpResponses};
}
