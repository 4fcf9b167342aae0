//! [`BlockingClient`]: the async client behind a small runtime of its own, for code that is not
//! async (data loader workers, the Python bindings). Do not call it from inside a tokio runtime.

use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use bytes::Bytes;
use shardcache_proto::ObjectInfo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::options::ClientOptions;
use crate::reader::ObjectReader;

/// A blocking client. Cheap to clone; clones share the runtime and connections.
///
/// ```no_run
/// # fn example() -> Result<(), shardcache_client::ClientError> {
/// use std::io::Read;
/// let client = shardcache_client::BlockingClient::connect("127.0.0.1:7070")?;
/// let mut shard = client.open("imagenet/train/shard-000001.tar")?;
/// let mut header = [0u8; 512];
/// shard.read_exact(&mut header).expect("read");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BlockingClient {
    client: Client,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl BlockingClient {
    pub fn connect(endpoint: &str) -> Result<BlockingClient> {
        BlockingClient::connect_with(endpoint, ClientOptions::default())
    }

    pub fn connect_with(endpoint: &str, options: ClientOptions) -> Result<BlockingClient> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("shardcache-client")
            .enable_all()
            .build()
            .map_err(|e| {
                ClientError::connect(endpoint, format!("cannot start the client runtime: {e}"))
                    .caused_by(e)
            })?;
        let client = runtime.block_on(Client::connect_with(endpoint, options))?;
        Ok(BlockingClient {
            client,
            runtime: Arc::new(runtime),
        })
    }

    /// The async client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Run any async call of [`BlockingClient::client`] to completion on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    pub fn stat(&self, path: &str) -> Result<ObjectInfo> {
        self.runtime.block_on(self.client.stat(path))
    }

    pub fn read(&self, path: &str, range: impl RangeBounds<u64>) -> Result<Bytes> {
        self.runtime.block_on(self.client.read(path, range))
    }

    pub fn read_into(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.runtime
            .block_on(self.client.read_into(path, offset, buf))
    }

    pub fn open(&self, path: &str) -> Result<BlockingReader> {
        let _guard = self.runtime.enter();
        let inner = self.runtime.block_on(self.client.open(path))?;
        Ok(BlockingReader {
            inner,
            runtime: self.runtime.clone(),
        })
    }
}

/// A `std::io::Read + Seek` reader over one object version, with readahead.
pub struct BlockingReader {
    inner: ObjectReader,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl BlockingReader {
    pub fn info(&self) -> &ObjectInfo {
        self.inner.info()
    }
}

impl io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.runtime.block_on(self.inner.read(buf))
    }
}

impl io::Seek for BlockingReader {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.runtime.block_on(self.inner.seek(pos))
    }
}
