//! The async client.

use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardcache_proto::{
    DataChunk, ErrorCode, Frame, ObjectInfo, ReadRequest, ReadStart, ServerInfo, StatRequest,
};

use crate::conn::{BufPool, Conn, LocalConn, QuicConn, Responses, TcpConn};
use crate::endpoint::{Endpoint, Transport};
use crate::error::{ClientError, Result};
use crate::local::{Registration, read_into_region, register};
use crate::options::ClientOptions;
use crate::pinned::{PinnedBuffer, Pinning};

/// An async client of one shardcache server. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn example() -> Result<(), shardcache_client::ClientError> {
/// let client = shardcache_client::Client::connect("127.0.0.1:7070").await?;
/// let info = client.stat("imagenet/train/shard-000001.tar").await?;
/// let head = client.read("imagenet/train/shard-000001.tar", 0..512).await?;
/// assert!(head.len() as u64 <= info.size);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    options: ClientOptions,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    /// Receive buffers shared by this client's connections.
    pool: Arc<BufPool>,
}

/// Size of the scratch buffer each local-path connection registers for `read`/`read_into`.
const LOCAL_SCRATCH: usize = 16 << 20;

/// Idle receive buffers a client keeps for reuse.
const POOLED_BUFFERS: usize = 16;

impl Client {
    /// Connect with default options. `endpoint` is `host:port`, `tcp://host:port` or
    /// `quic://host:port`.
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Client::connect_with(endpoint, ClientOptions::default()).await
    }

    /// Connect with the given options. The first connection is opened now, so a wrong address
    /// fails here rather than at the first read.
    pub async fn connect_with(endpoint: &str, options: ClientOptions) -> Result<Client> {
        let endpoint = Endpoint::parse(endpoint)?;
        let n = match endpoint.transport {
            Transport::Tcp | Transport::Tls => options.connections.max(1),
            Transport::Quic => options.connections.clamp(1, 4),
            Transport::Local => options.connections.clamp(1, 8),
        };
        let slots = (0..n).map(|_| tokio::sync::Mutex::new(None)).collect();
        let client = Client {
            inner: Arc::new(Inner {
                endpoint,
                options,
                slots,
                next: AtomicUsize::new(0),
                pool: BufPool::new(POOLED_BUFFERS),
            }),
        };
        client.conn_at(0).await?;
        Ok(client)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    async fn conn_at(&self, slot: usize) -> Result<Arc<Conn>> {
        let mut guard = self.inner.slots[slot].lock().await;
        if let Some(conn) = guard.as_ref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let ep = &self.inner.endpoint;
        let name = ep.to_string();
        let conn = Arc::new(match ep.transport {
            Transport::Tcp => {
                Conn::Tcp(TcpConn::connect(&ep.address, &name, self.inner.pool.clone()).await?)
            }
            Transport::Tls => Conn::Tcp(
                TcpConn::connect_tls(
                    &ep.address,
                    ep.host(),
                    &name,
                    &self.inner.options,
                    self.inner.pool.clone(),
                )
                .await?,
            ),
            Transport::Quic => Conn::Quic(
                QuicConn::connect(&self.inner.options, &ep.address, ep.host(), &name).await?,
            ),
            Transport::Local => {
                // A scratch buffer registered with the server carries `read`'s bytes.
                let scratch = crate::pinned::memfd(LOCAL_SCRATCH, Pinning::Preferred)?;
                let token = self.inner.options.token.as_deref();
                let conn = register(&ep.address, &scratch, self.inner.pool.clone(), token).await?;
                Conn::Local(LocalConn {
                    conn,
                    scratch: tokio::sync::Mutex::new(scratch),
                })
            }
        });
        if let (Some(token), false) = (&self.inner.options.token, conn_is_local(&conn)) {
            conn.authenticate(token, self.inner.options.idle_timeout)
                .await?;
        }
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn send(&self, frame: Frame) -> Result<Responses> {
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let conn = self.conn_at(slot).await?;
        conn.request(frame, self.inner.options.idle_timeout).await
    }

    /// Retry `op` on retryable errors, with a short growing pause.
    async fn retrying<T, F, Fut>(&self, pinned: bool, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    // A read pinned to a version must not silently move to another one.
                    let pinned_change = pinned && e.code() == Some(ErrorCode::PreconditionFailed);
                    if attempt >= self.inner.options.retries || !e.is_retryable() || pinned_change {
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
            }
        }
    }

    /// Tell the server which objects will be read next, in order (a loader's upcoming shards),
    /// so it loads them into its cache in the background. Returns how many it queued (a busy
    /// server declines hints rather than queueing them without bound).
    pub async fn prefetch(&self, paths: &[String]) -> Result<u32> {
        let mut accepted = 0;
        for batch in paths.chunks(shardcache_proto::frame::MAX_PREFETCH_PATHS) {
            let frame = Frame::Prefetch(shardcache_proto::Prefetch {
                paths: batch.to_vec(),
            });
            let mut responses = self.send(frame).await?;
            match responses.next().await? {
                Frame::Prefetched(p) => accepted += p.accepted,
                Frame::Error(e) => {
                    return Err(ClientError::Server {
                        code: e.code,
                        message: e.message,
                    });
                }
                other => return Err(self.unexpected(&other)),
            }
        }
        Ok(accepted)
    }

    /// Who the server is: node id, process instance, version, and where its control plane
    /// listens.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        let hello = Frame::Hello(shardcache_proto::Hello {
            client: concat!("shardcache-client/", env!("CARGO_PKG_VERSION")).into(),
        });
        let mut responses = self.send(hello).await?;
        match responses.next().await? {
            Frame::ServerInfo(info) => Ok(info),
            Frame::Error(e) => Err(ClientError::Server {
                code: e.code,
                message: e.message,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The server's control plane as this client reaches it (`host:port`), when it has one:
    /// an address bound to every interface is reached at the data plane's host.
    pub async fn control_endpoint(&self) -> Result<Option<String>> {
        let info = self.server_info().await?;
        Ok(control_endpoint_for(&info.control, &self.inner.endpoint))
    }

    /// Size and version of an object.
    pub async fn stat(&self, path: &str) -> Result<ObjectInfo> {
        self.stat_untagged(path)
            .await
            .map_err(|e| e.for_object(path))
    }

    async fn stat_untagged(&self, path: &str) -> Result<ObjectInfo> {
        self.retrying(false, || async {
            let mut responses = self
                .send(Frame::Stat(StatRequest { path: path.into() }))
                .await?;
            match responses.next().await? {
                Frame::StatOk(info) => Ok(info),
                Frame::Error(e) => Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                }),
                other => Err(self.unexpected(&other)),
            }
        })
        .await
    }

    /// Stream a range as checksummed chunks, in order. `length: None` reads to the end;
    /// `if_match` pins the version (ETag) the bytes must come from.
    pub async fn read_stream(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        if_match: Option<String>,
    ) -> Result<ReadStream> {
        self.start_stream(path, offset, length, if_match)
            .await
            .map_err(|e| e.for_object(path))
    }

    async fn start_stream(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        if_match: Option<String>,
    ) -> Result<ReadStream> {
        if self.inner.endpoint.transport == Transport::Local {
            return Err(ClientError::Unsupported {
                what: "read_stream (bytes over the socket)",
                endpoint: self.inner.endpoint.to_string(),
            });
        }
        let req = ReadRequest {
            path: path.into(),
            offset,
            length,
            if_match,
        };
        let mut responses = self.send(Frame::Read(req)).await?;
        let start = match responses.next().await? {
            Frame::ReadStart(start) => start,
            Frame::Error(e) => {
                return Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                });
            }
            other => return Err(self.unexpected(&other)),
        };
        if start.offset != offset || length.is_some_and(|l| start.length > l) {
            return Err(self.protocol("server answered a different range than asked"));
        }
        Ok(ReadStream {
            next_offset: start.offset,
            end: start.offset + start.length,
            start,
            responses,
            path: path.to_string(),
            endpoint: self.inner.endpoint.to_string(),
        })
    }

    /// Read a range of an object (`..` for all of it) into memory.
    pub async fn read(&self, path: &str, range: impl RangeBounds<u64>) -> Result<Bytes> {
        let (offset, length) = bounds(range)?;
        self.read_pinned(path, offset, length, None)
            .await
            .map(|(_, bytes)| bytes)
    }

    /// Read a range at a pinned version (`if_match`), returning the version read too.
    pub async fn read_pinned(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        if_match: Option<String>,
    ) -> Result<(ObjectInfo, Bytes)> {
        self.read_pinned_untagged(path, offset, length, if_match)
            .await
            .map_err(|e| e.for_object(path))
    }

    async fn read_pinned_untagged(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        if_match: Option<String>,
    ) -> Result<(ObjectInfo, Bytes)> {
        if self.inner.endpoint.transport == Transport::Local {
            let read = || self.local_read(path, offset, length, if_match.clone());
            return self.retrying(if_match.is_some(), read).await;
        }
        self.retrying(if_match.is_some(), || async {
            let mut stream = self
                .read_stream(path, offset, length, if_match.clone())
                .await?;
            let total = stream.remaining();
            let mut out: Option<BytesMut> = None;
            let mut only: Option<Bytes> = None;
            while let Some(chunk) = stream.next_chunk().await? {
                // One chunk covering the whole range is returned as is, without a copy.
                if only.is_none() && out.is_none() && chunk.data.len() as u64 == total {
                    only = Some(chunk.data);
                    continue;
                }
                let buf = out.get_or_insert_with(|| BytesMut::with_capacity(total as usize));
                if let Some(first) = only.take() {
                    buf.extend_from_slice(&first);
                }
                buf.extend_from_slice(&chunk.data);
            }
            let bytes = match (only, out) {
                (Some(b), None) => b,
                (_, Some(b)) => b.freeze(),
                (None, None) => Bytes::new(),
            };
            Ok((stream.start.info.clone(), bytes))
        })
        .await
    }

    /// Read from `offset` into `buf`, up to its length; returns the bytes written (fewer only at
    /// the end of the object).
    pub async fn read_into(&self, path: &str, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.read_into_pinned(path, offset, buf, None).await
    }

    /// [`Client::read_into`] at a pinned version (`if_match`, an ETag from `stat`).
    pub async fn read_into_pinned(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
        if_match: Option<String>,
    ) -> Result<usize> {
        self.read_into_window(path, offset, buf, if_match, false)
            .await
    }

    /// Read all of the object from `offset` into `buf`; [`ClientError::BufferTooSmall`] (and
    /// nothing read) when the rest of the object does not fit.
    pub async fn read_into_all(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
        if_match: Option<String>,
    ) -> Result<usize> {
        self.read_into_window(path, offset, buf, if_match, true)
            .await
    }

    /// Read up to `buf.len()` bytes; with `whole`, one byte more is asked for, and an answer
    /// that has it means the buffer is too small for the rest of the object.
    async fn read_into_window(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
        if_match: Option<String>,
        whole: bool,
    ) -> Result<usize> {
        self.read_into_window_untagged(path, offset, buf, if_match, whole)
            .await
            .map_err(|e| e.for_object(path))
    }

    async fn read_into_window_untagged(
        &self,
        path: &str,
        offset: u64,
        buf: &mut [u8],
        if_match: Option<String>,
        whole: bool,
    ) -> Result<usize> {
        let have = buf.len() as u64;
        let want = have + u64::from(whole);
        let too_small = |info: &ObjectInfo| ClientError::BufferTooSmall {
            path: path.to_string(),
            need: info.size.saturating_sub(offset),
            have,
        };
        if self.inner.endpoint.transport == Transport::Local {
            let (info, bytes) = self.read_pinned(path, offset, Some(want), if_match).await?;
            if bytes.len() as u64 > have {
                return Err(too_small(&info));
            }
            buf[..bytes.len()].copy_from_slice(&bytes);
            return Ok(bytes.len());
        }
        let buf = std::sync::Mutex::new(buf);
        let buf = &buf;
        let pinned = if_match.is_some();
        self.retrying(pinned, || {
            let if_match = if_match.clone();
            async move {
                let mut stream = self.read_stream(path, offset, Some(want), if_match).await?;
                if stream.start.length > have {
                    return Err(too_small(&stream.start.info));
                }
                let mut filled = 0usize;
                while let Some(chunk) = stream.next_chunk().await? {
                    let at = (chunk.offset - offset) as usize;
                    let mut guard = buf.lock().expect("lock");
                    guard[at..at + chunk.data.len()].copy_from_slice(&chunk.data);
                    filled = at + chunk.data.len();
                }
                Ok(filled)
            }
        })
        .await
    }

    /// Read from `range` into `buf`, up to its length; returns the bytes placed. Over a local
    /// socket the server writes straight into the buffer's shared memory (registered on first
    /// use) and only completions cross the socket; over TCP or QUIC the chunks are copied in.
    /// Every chunk's CRC32C is checked in place.
    pub async fn read_into_buffer(
        &self,
        path: &str,
        range: impl RangeBounds<u64>,
        buf: &mut PinnedBuffer,
    ) -> Result<usize> {
        let (offset, length) = bounds(range)?;
        self.read_into_buffer_untagged(path, offset, length, buf)
            .await
            .map_err(|e| e.for_object(path))
    }

    async fn read_into_buffer_untagged(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        buf: &mut PinnedBuffer,
    ) -> Result<usize> {
        let want = length.map_or(buf.len() as u64, |l| l.min(buf.len() as u64));
        if self.inner.endpoint.transport != Transport::Local {
            let mut stream = self.read_stream(path, offset, Some(want), None).await?;
            let mut filled = 0usize;
            while let Some(chunk) = stream.next_chunk().await? {
                let at = (chunk.offset - offset) as usize;
                buf.as_mut_slice()[at..at + chunk.data.len()].copy_from_slice(&chunk.data);
                filled = at + chunk.data.len();
            }
            return Ok(filled);
        }
        let socket = self.inner.endpoint.address.clone();
        let mut attempt = 0;
        loop {
            let registered = buf
                .registration
                .take()
                .filter(|r| r.socket == socket && !r.conn.is_closed());
            let registration = match registered {
                Some(r) => r,
                None => Registration {
                    conn: register(
                        &socket,
                        buf.mem(),
                        self.inner.pool.clone(),
                        self.inner.options.token.as_deref(),
                    )
                    .await?,
                    socket: socket.clone(),
                },
            };
            let req = ReadRequest {
                path: path.into(),
                offset,
                length: Some(want),
                if_match: None,
            };
            let idle = self.inner.options.idle_timeout;
            let result = read_into_region(&registration.conn, req, 0, buf.mem_mut(), idle).await;
            buf.registration = Some(registration);
            match result {
                Ok((_, n)) => return Ok(n as usize),
                Err(e) if e.is_retryable() && attempt < self.inner.options.retries => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A range through a local connection's scratch buffer, window by window, every window
    /// pinned to the version the first one found.
    async fn local_read(
        &self,
        path: &str,
        offset: u64,
        length: Option<u64>,
        if_match: Option<String>,
    ) -> Result<(ObjectInfo, Bytes)> {
        let slot = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        let conn = self.conn_at(slot).await?;
        let Conn::Local(local) = &*conn else {
            return Err(self.protocol("local read on a non-local connection"));
        };
        let mut scratch = local.scratch.lock().await;
        let window = scratch.len() as u64;
        let idle = self.inner.options.idle_timeout;
        let (mut pos, mut pin, mut info, mut out) = (offset, if_match, None, BytesMut::new());
        loop {
            let want = match length {
                Some(l) => (offset + l).saturating_sub(pos).min(window),
                None => window,
            };
            let req = ReadRequest {
                path: path.into(),
                offset: pos,
                length: Some(want),
                if_match: pin.clone(),
            };
            let (start, n) = read_into_region(&local.conn, req, 0, &mut scratch, idle).await?;
            if info.is_none() {
                let end = length.map_or(start.info.size, |l| (offset + l).min(start.info.size));
                out.reserve(end.saturating_sub(offset) as usize);
                pin = (!start.info.etag.is_empty())
                    .then(|| start.info.etag.clone())
                    .or(pin);
                info = Some(start.info.clone());
            }
            out.extend_from_slice(&scratch.as_slice()[..n as usize]);
            pos += n;
            let size = start.info.size;
            let end = length.map_or(size, |l| (offset + l).min(size));
            if n == 0 || pos >= end {
                break;
            }
        }
        Ok((info.unwrap_or_default(), out.freeze()))
    }

    fn unexpected(&self, frame: &Frame) -> ClientError {
        self.protocol(&format!("unexpected frame {frame:?}"))
    }

    fn protocol(&self, reason: &str) -> ClientError {
        ClientError::protocol(&self.inner.endpoint.to_string(), reason)
    }
}

/// `(offset, length)` of a range over an object of unknown size.
fn bounds(range: impl RangeBounds<u64>) -> Result<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e.saturating_add(1)),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end < start => Err(ClientError::Server {
            code: ErrorCode::BadRequest,
            message: format!("range {start}..{end} ends before it starts"),
        }),
        Some(end) => Ok((start, Some(end - start))),
        None => Ok((start, None)),
    }
}

/// Where a client reaches the control plane a server says it bound (`control`), given the
/// endpoint it reached the data plane at.
pub fn control_endpoint_for(control: &str, data: &Endpoint) -> Option<String> {
    let addr: std::net::SocketAddr = control.parse().ok()?;
    if !addr.ip().is_unspecified() {
        return Some(addr.to_string());
    }
    // Bound to every interface: the data plane's host, or loopback for a local socket.
    let host = match data.transport {
        Transport::Local => "127.0.0.1".to_string(),
        _ => data.host().to_string(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    Some(format!("{host}:{}", addr.port()))
}

/// The chunks of one read, checked as they arrive: in order, inside the range, checksum intact.
pub struct ReadStream {
    pub start: ReadStart,
    responses: Responses,
    next_offset: u64,
    end: u64,
    path: String,
    endpoint: String,
}

impl ReadStream {
    /// Bytes not yet received.
    pub fn remaining(&self) -> u64 {
        self.end - self.next_offset
    }

    /// The next verified chunk, `None` once the whole range arrived.
    pub async fn next_chunk(&mut self) -> Result<Option<DataChunk>> {
        let next = self.next_chunk_untagged().await;
        next.map_err(|e| e.for_object(&self.path))
    }

    async fn next_chunk_untagged(&mut self) -> Result<Option<DataChunk>> {
        if self.next_offset == self.end {
            return Ok(None);
        }
        match self.responses.next().await? {
            Frame::Data(chunk) => {
                let len = chunk.data.len() as u64;
                if chunk.offset != self.next_offset || len == 0 || len > self.end - chunk.offset {
                    return Err(ClientError::protocol(
                        &self.endpoint,
                        format!(
                            "chunk at {}+{} does not continue the range at {} (ends {})",
                            chunk.offset, len, self.next_offset, self.end
                        ),
                    ));
                }
                if !verify(&chunk).await {
                    return Err(ClientError::Checksum {
                        path: self.path.clone(),
                        offset: chunk.offset,
                    });
                }
                self.next_offset += len;
                Ok(Some(chunk))
            }
            Frame::Error(e) => Err(ClientError::Server {
                code: e.code,
                message: e.message,
            }),
            other => Err(ClientError::protocol(
                &self.endpoint,
                format!("unexpected frame {other:?}"),
            )),
        }
    }
}

/// CRC32C check; large chunks are checked off the async threads.
async fn verify(chunk: &DataChunk) -> bool {
    if chunk.data.len() < (1 << 20) {
        return chunk.verify();
    }
    let data = chunk.data.clone();
    let crc = chunk.crc32c;
    tokio::task::spawn_blocking(move || crc32c::crc32c(&data) == crc)
        .await
        .unwrap_or(false)
}

/// Local connections authenticate while registering.
fn conn_is_local(conn: &Conn) -> bool {
    matches!(conn, Conn::Local(_))
}

#[cfg(test)]
mod tests;
