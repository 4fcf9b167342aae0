//! The shardcache client: reads training data from a shardcache server.
//!
//! - [`Client`]: async `stat`, `read`, `read_into`, and `open` for a seekable [`ObjectReader`]
//!   with readahead; over TCP (`host:port`) or QUIC (`quic://host:port`).
//! - [`BlockingClient`]: the same for synchronous code, with a std `Read + Seek` reader.
//!
//! Every chunk is checked against the CRC32C the server sent with it; a mismatch is an error
//! ([`ClientError::Checksum`]) and the request is retried, never returned as data.

mod blocking;
mod client;
mod conn;
#[cfg(feature = "cuda")]
mod cuda;
pub use conn::quic_endpoint;
mod endpoint;
mod error;
mod local;
mod pinned;
mod reader;

pub use blocking::{BlockingClient, BlockingReader};
pub use client::{Client, ClientOptions, ReadStream};
#[cfg(feature = "cuda")]
pub use cuda::cuda_driver_available;
pub use endpoint::{Endpoint, Transport};
pub use error::{ClientError, Result};
pub use pinned::{PinnedBuffer, PinnedBufferPool, Pinning, PooledBuffer};
pub use reader::ObjectReader;
pub use shardcache_proto::{ErrorCode, ObjectInfo};
