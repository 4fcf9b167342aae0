//! Transports: interchangeable byte movers for the one data-plane protocol.
//!
//! [`serve_connection`] speaks the protocol over any ordered byte stream: a TCP connection, or one
//! QUIC bidirectional stream. It decodes requests, runs each in its own task (at most
//! `max_requests` at once; more are answered `Busy`), and funnels every response frame through
//! one writer task, so frames of concurrent requests interleave whole. A malformed or oversized
//! frame closes that connection and nothing else.

mod handshake;
pub mod local;
pub mod metrics;
pub mod quic;
pub mod shm;
pub mod tcp;
pub mod tls;
mod write;

use std::sync::Arc;

use futures::StreamExt;
use shardcache_proto::frame::{Encoded, MAX_REQUEST_PAYLOAD, encode};
use shardcache_proto::{
    DataChunk, ErrorCode, ErrorFrame, Frame, FrameCodec, Framed, Placed, Prefetched, ReadInto,
    ReadRequest, ReadStart,
};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::access::{Access, ClusterSecret, Policy};
use crate::error::Error;
use crate::node::Node;
use crate::peer::{Caller, PeerAnswer};
use crate::service::CacheService;
use shm::Region;
use write::{NoRoom, Queued, Sender, write_frames};

/// Copies into a client region larger than this run on the blocking pool.
const COPY_INLINE_LIMIT: usize = 256 * 1024;

/// Response frames queued per connection before request handlers wait for the writer (the
/// bytes they hold are bounded by [`ConnLimits::buffer`]).
const WRITE_QUEUE: usize = 64;

/// Limits applied to each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_requests: usize,
    /// Longest one frame may take to be written; then the connection is closed.
    pub write_timeout: std::time::Duration,
    /// With nothing in flight, longest silence from the client; then the connection is closed.
    pub idle_timeout: std::time::Duration,
    /// Response bytes queued at most (a larger frame waits for the queue to empty).
    pub buffer: u64,
}

impl ConnLimits {
    /// Limits for tests and tools: generous, with the given requests in flight.
    pub fn with_requests(max_requests: usize) -> ConnLimits {
        ConnLimits {
            max_requests,
            write_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(120),
            buffer: 8 << 20,
        }
    }
}

pub use crate::drain::Draining;
pub use metrics::TransportMetrics;

/// What every connection is served with.
#[derive(Clone)]
pub struct Serving {
    pub node: Arc<Node>,
    pub limits: ConnLimits,
    pub metrics: Arc<TransportMetrics>,
    /// Who may read: anyone, or holders of an access token.
    pub policy: Policy,
    /// The secret members prove on their connections, when configured.
    pub secret: Option<Arc<ClusterSecret>>,
    /// Response bytes queued on all connections together (`response_buffer`).
    pub responses: ResponseBudget,
}

/// The server-wide budget of queued response bytes.
#[derive(Clone)]
pub struct ResponseBudget {
    permits: Arc<Semaphore>,
    bytes: u64,
}

impl ResponseBudget {
    pub fn new(bytes: u64) -> ResponseBudget {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS as u64);
        ResponseBudget {
            permits: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
        }
    }

    /// Bytes queued now, on all connections.
    pub fn used(&self) -> u64 {
        self.bytes - self.permits.available_permits() as u64
    }
}

impl Serving {
    /// A new connection's state: nothing proved yet, no request in flight.
    pub fn connection(&self) -> PerConnection {
        PerConnection {
            access: Access::new(&self.policy, self.secret.as_ref()),
            inflight: Arc::new(Semaphore::new(self.limits.max_requests)),
            buffer: Arc::new(Semaphore::new(
                usize::try_from(self.limits.buffer.max(1))
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
            members_only: false,
            open: Arc::new(tokio::sync::watch::Sender::new(())),
        }
    }
}

/// How long a connection admitted on a member's slot has to prove it is one.
const MEMBER_PROOF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connection slots: `clients` for everyone, and a few kept for members, so connections of
/// clients (idle ones included) never lock members out of each other.
#[derive(Clone)]
pub struct Slots {
    pub clients: Arc<Semaphore>,
    pub members: Arc<Semaphore>,
}

impl Slots {
    pub fn new(clients: usize, members: usize) -> Slots {
        Slots {
            clients: Arc::new(Semaphore::new(clients)),
            members: Arc::new(Semaphore::new(members)),
        }
    }

    /// A slot for a new connection: a client slot, else a member's (`true`: members only).
    pub fn admit(&self) -> Option<(OwnedSemaphorePermit, bool)> {
        if let Ok(p) = self.clients.clone().try_acquire_owned() {
            return Some((p, false));
        }
        self.members
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| (p, true))
    }
}

/// What one connection holds, shared by the streams of a QUIC connection: what it proved, and
/// its budget of requests in flight.
#[derive(Clone)]
pub struct PerConnection {
    pub access: Arc<Access>,
    pub inflight: Arc<Semaphore>,
    /// Response bytes queued, at most [`ConnLimits::buffer`] (all streams of a QUIC connection).
    pub buffer: Arc<Semaphore>,
    /// Admitted on a slot kept for members (every client slot was taken): only the members'
    /// handshake, `Hello` and `Ping` are served until it proves it is one, and it is closed if
    /// it has not within [`MEMBER_PROOF_TIMEOUT`].
    pub members_only: bool,
    /// Dropped with the last holder, when the connection ends: what it started in the
    /// background (prefetches) stops then.
    pub open: Arc<tokio::sync::watch::Sender<()>>,
}

/// Serve one connection (or one QUIC stream) until the peer closes it or breaks the protocol.
/// `access` is the connection's (shared by the streams of one QUIC connection): an `Auth` frame
/// on any of them authenticates all.
pub async fn serve_connection<R, W>(
    mut rd: R,
    wr: W,
    serving: Serving,
    remote: Caller,
    shared: PerConnection,
    mut draining: Draining,
    region: Option<Arc<Region>>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let PerConnection {
        access,
        inflight,
        buffer,
        members_only,
        open,
    } = shared;
    let proof_deadline = tokio::time::Instant::now() + MEMBER_PROOF_TIMEOUT;
    let mut idle_deadline = tokio::time::Instant::now() + serving.limits.idle_timeout;
    let mut was_idle = true;
    // Members known by address (no secret, no CA) never send a token.
    let must_authenticate = !serving.node.peers.is_member(&remote);
    let limits = serving.limits;
    let (tx, rx) = mpsc::channel::<Queued>(WRITE_QUEUE);
    let peer_name = remote.name.clone();
    let written = serving.metrics.clone();
    let writer = tokio::spawn(async move {
        if let Err(e) = write_frames(wr, rx, limits.write_timeout).await {
            written.write_timeouts.inc();
            tracing::info!(peer = %peer_name, error = %e, "closing connection: the client does not take its data");
        }
    });
    let tx = Sender {
        tx,
        buffer: buffer.clone(),
        cap: limits.buffer.max(1),
        server_cap: serving.responses.bytes,
        server: serving.responses.permits.clone(),
        wait: limits.write_timeout,
    };
    let mut handlers = JoinSet::new();
    let mut codec = FrameCodec::new(MAX_REQUEST_PAYLOAD);
    let stats = serving.metrics.clone();
    let peer = remote.name.clone();
    let remote = Arc::new(remote);
    'conn: loop {
        loop {
            let framed = match codec.next_frame() {
                Ok(Some(framed)) => framed,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "closing connection: malformed frame");
                    let _ = tx
                        .send(error_frame(0, ErrorCode::BadRequest, e.to_string()))
                        .await;
                    handlers.abort_all();
                    break 'conn;
                }
            };
            idle_deadline = tokio::time::Instant::now() + limits.idle_timeout;
            let member_frame = matches!(
                framed.frame,
                Frame::PeerAuth(_) | Frame::Hello(_) | Frame::Ping(_)
            );
            // Frames that end the connection: the last answer, then close.
            let last = if !framed.frame.is_request() {
                tracing::warn!(%peer, "closing connection: response frame sent by a client");
                Some((
                    ErrorCode::BadRequest,
                    "clients may only send request frames",
                ))
            } else if members_only && !member_frame && !proved(&remote, &access) {
                stats.rejected_connections.inc();
                Some((
                    ErrorCode::Busy,
                    "server at max_connections for clients; retry later",
                ))
            } else {
                None
            };
            if let Some((code, msg)) = last {
                let _ = tx
                    .send(error_frame(framed.request_id, code, msg.to_string()))
                    .await;
                handlers.abort_all();
                break 'conn;
            }
            // Authentication is answered in order, before any later request is looked at.
            if let Some(answer) = handshake::answer(&framed.frame, &access, &serving, &peer) {
                let (reply, closing) = match answer {
                    Ok(frame) => (
                        encode(&Framed {
                            request_id: framed.request_id,
                            frame,
                        }),
                        false,
                    ),
                    Err((e, closing)) => (
                        error_frame(framed.request_id, e.code(), e.to_string()),
                        closing,
                    ),
                };
                if tx.send(reply).await.is_err() || closing {
                    handlers.abort_all();
                    break 'conn;
                }
                continue;
            }
            match inflight.clone().try_acquire_owned() {
                Ok(permit) => {
                    handlers.spawn(handle(
                        framed,
                        serving.clone(),
                        tx.clone(),
                        permit,
                        region.clone(),
                        remote.clone(),
                        access.clone(),
                        open.clone(),
                    ));
                }
                Err(_) => {
                    stats.rejected_requests.inc();
                    let msg = format!(
                        "more than {} requests in flight on this connection; retry later",
                        limits.max_requests
                    );
                    if tx
                        .send(error_frame(framed.request_id, ErrorCode::Busy, msg))
                        .await
                        .is_err()
                    {
                        break 'conn;
                    }
                }
            }
        }
        while handlers.try_join_next().is_some() {}
        // Nothing in flight: the client has until `idle_deadline` (moved by each request and by
        // the end of the last one, not by stray bytes) to send its next request.
        let idle = handlers.is_empty();
        if idle && !was_idle {
            idle_deadline = tokio::time::Instant::now() + limits.idle_timeout;
        }
        was_idle = idle;
        let read = tokio::select! {
            read = rd.read_buf(codec.buffer_mut()) => read,
            // A request finished: look again (the connection may now be idle).
            Some(_) = handlers.join_next(), if !idle => continue 'conn,
            _ = draining.wait_for(|d| *d) => Ok(0),
            // The writer gave up on the client: nothing more can reach it.
            _ = tx.tx.closed() => Ok(0),
            // On a member's slot without having proved it is one.
            _ = tokio::time::sleep_until(proof_deadline), if members_only && !proved(&remote, &access) => {
                tracing::info!(%peer, "closing a connection on a member's slot: no proof in time");
                Ok(0)
            }
            // Tokens are required: a connection that shows none (nor a member's proof) in time
            // is closed, so tokenless sockets cannot sit on client slots.
            _ = tokio::time::sleep_until(proof_deadline), if must_authenticate && access.unauthenticated() => {
                stats.idle_closed.inc();
                tracing::info!(%peer, "closing a connection that sent no access token in time");
                Ok(0)
            }
            _ = tokio::time::sleep_until(idle_deadline), if idle => {
                stats.idle_closed.inc();
                tracing::debug!(%peer, "closing an idle connection");
                Ok(0)
            }
        };
        match read {
            Ok(0) => {
                if codec.buffered() > 0 {
                    tracing::debug!(%peer, "connection closed inside a frame");
                }
                // The peer is done sending: finish what it asked for, then close.
                while handlers.join_next().await.is_some() {}
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection read failed");
                handlers.abort_all();
                break;
            }
        }
    }
    drop(tx);
    drop(handlers);
    let _ = writer.await;
}

/// Answer a connection that is refused (at a limit, or on a bad handshake) with one error
/// frame, then close it gracefully: write side first, then drain what the peer already sent
/// (for at most a second), so the peer reads the error instead of a connection reset.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    code: ErrorCode,
    message: String,
) {
    let _ = stream
        .write_all(&error_frame(0, code, message).to_vec())
        .await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

fn error_frame(request_id: u32, code: ErrorCode, message: String) -> Encoded {
    encode(&Framed {
        request_id,
        frame: Frame::Error(ErrorFrame { code, message }),
    })
}

/// Run one request to completion, sending its frames to the writer.
#[allow(clippy::too_many_arguments)]
async fn handle(
    framed: Framed,
    serving: Serving,
    tx: Sender,
    _permit: OwnedSemaphorePermit,
    region: Option<Arc<Region>>,
    remote: Arc<Caller>,
    access: Arc<Access>,
    open: Arc<tokio::sync::watch::Sender<()>>,
) {
    let id = framed.request_id;
    let (node, stats) = (&serving.node, &serving.metrics);
    let service = &node.service;
    stats.requests.inc();
    let started = std::time::Instant::now();
    let duration = match &framed.frame {
        Frame::Stat(_) => stats.stat_duration.clone(),
        _ => stats.read_duration.clone(),
    };
    let send = |frame: Frame| {
        let tx = tx.clone();
        async move {
            tx.send(encode(&Framed {
                request_id: id,
                frame,
            }))
            .await
            .is_ok()
        }
    };
    if let Err(e) = allowed(&framed.frame, &access) {
        stats.denied_requests.inc();
        tracing::info!(peer = %remote.name, error = %e, "request refused");
        send(Frame::Error(ErrorFrame {
            code: e.code(),
            message: e.to_string(),
        }))
        .await;
        return;
    }
    let (path, result) = match framed.frame {
        Frame::Stat(req) => {
            let result = match service.stat(&req.path).await {
                Ok(info) => {
                    send(Frame::StatOk(info)).await;
                    Ok(())
                }
                Err(e) => Err(e),
            };
            (req.path, result)
        }
        Frame::Read(req) => {
            let path = req.path.clone();
            let result = stream_read(service, req, &tx, id, |chunk| async {
                Ok(Frame::Data(chunk))
            })
            .await;
            (path, result)
        }
        Frame::Hello(_) => {
            send(Frame::ServerInfo(node.server_info())).await;
            (String::new(), Ok(()))
        }
        Frame::Ping(_) => {
            // Liveness for anyone; who answers, its weight and usage for members only.
            let pong = match node.peers.is_member(&member(&remote, &access)) {
                true => node.pong(),
                false => node.liveness(),
            };
            send(Frame::Pong(pong)).await;
            (String::new(), Ok(()))
        }
        Frame::PeerBlock(req) => {
            let path = req.path.clone();
            let result = match node.peers.allowed(&member(&remote, &access)) {
                Ok(()) => match node.peers.peer_block(req).await {
                    Ok(PeerAnswer::Data(chunk)) => {
                        send(Frame::Data(chunk)).await;
                        Ok(())
                    }
                    Ok(PeerAnswer::State(state)) => {
                        send(Frame::BlockState(state)).await;
                        Ok(())
                    }
                    Ok(PeerAnswer::Stream(mut chunks)) => {
                        let mut result = Ok(());
                        while let Some(chunk) = chunks.next().await {
                            match chunk {
                                // The asker went away: stop sending.
                                Ok(chunk) => {
                                    if !send(Frame::Data(chunk)).await {
                                        break;
                                    }
                                }
                                Err(e) => {
                                    result = Err(e);
                                    break;
                                }
                            }
                        }
                        result
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            (path, result)
        }
        Frame::Prefetch(req) => {
            // Loads while the connection is open, and stops when it ends.
            let mut open = open.subscribe();
            let accepted =
                service.prefetch(
                    req.paths,
                    async move { while open.changed().await.is_ok() {} },
                );
            send(Frame::Prefetched(Prefetched { accepted })).await;
            (String::new(), Ok(()))
        }
        Frame::ReadInto(req) => {
            let path = req.read.path.clone();
            let result = match region {
                Some(region) => read_into(service, req, region, &tx, id).await,
                None => Err(Error::BadRequest {
                    reason: "read-into needs the local socket and a registered region".into(),
                }),
            };
            (path, result)
        }
        _ => (
            String::new(),
            Err(Error::BadRequest {
                reason: "this connection does not take that frame".into(),
            }),
        ),
    };
    if let Err(e) = result {
        // A probe that finds nothing is an answer, not a failure.
        if !matches!(e, Error::NotCached) {
            stats.failed_requests.inc();
            log_failure(&path, &e);
        }
        send(Frame::Error(ErrorFrame {
            code: e.code(),
            message: e.to_string(),
        }))
        .await;
    }
    duration.observe(started.elapsed().as_secs_f64());
}

/// Whether the connection is a member's: a member certificate, or the secret proved on it.
fn proved(remote: &Caller, access: &Access) -> bool {
    remote.authenticated || access.is_member()
}

/// The caller, marked authenticated once it proved the cluster secret on this connection.
fn member(remote: &Caller, access: &Access) -> Caller {
    Caller {
        authenticated: remote.authenticated || access.is_member(),
        ..remote.clone()
    }
}

/// Whether the connection's grant covers the datasets a request names. Peer requests are
/// authorized as a member's (by the peer path); `Hello` and `Ping` need nothing.
fn allowed(frame: &Frame, access: &Access) -> Result<(), Error> {
    fn dataset(path: &str) -> &str {
        path.split('/').next().unwrap_or_default()
    }
    let one = match frame {
        Frame::Read(r) => &r.path,
        Frame::Stat(r) => &r.path,
        Frame::ReadInto(r) => &r.read.path,
        Frame::Prefetch(p) => {
            access.require()?;
            return p.paths.iter().try_for_each(|p| access.check(dataset(p)));
        }
        _ => return Ok(()),
    };
    access.check(dataset(one))
}

/// Bytes a `Data` frame adds to its chunk (header and fields), at most.
const DATA_FRAME_OVERHEAD: u64 = 64;

/// Send a read's `ReadStart`, then one frame per chunk as `place` makes it. Room for each chunk
/// is reserved before the chunk is taken from the read path, so a client that does not take
/// its data stops its reads (see [`write`]).
async fn stream_read<P, PF>(
    service: &Arc<CacheService>,
    req: ReadRequest,
    tx: &Sender,
    request_id: u32,
    place: P,
) -> Result<(), Error>
where
    P: Fn(DataChunk) -> PF,
    PF: Future<Output = Result<Frame, Error>>,
{
    let frame = |frame| encode(&Framed { request_id, frame });
    let mut resp = service.read(req).await?;
    let ReadStart { offset, length, .. } = resp.start;
    let block = u64::from(resp.start.info.block_size).max(1);
    if tx.send(frame(Frame::ReadStart(resp.start))).await.is_err() {
        return Ok(());
    }
    let end = offset + length;
    let mut at = offset;
    while at < end {
        let len = ((at / block + 1) * block).min(end) - at;
        let room = match tx.reserve(len + DATA_FRAME_OVERHEAD).await {
            Ok(room) => room,
            Err(NoRoom::Closed) => return Ok(()),
            Err(NoRoom::Full) => {
                return Err(Error::Busy {
                    what: "the server's response buffers (response_buffer)",
                });
            }
        };
        let Some(chunk) = resp.chunks.next().await else {
            break;
        };
        let chunk = chunk?;
        at = chunk.offset + chunk.data.len() as u64;
        let placed = place(chunk).await?;
        if tx.send_in(frame(placed), room).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// A read whose bytes are copied into the client's region; only `Placed` notices go back.
async fn read_into(
    service: &Arc<CacheService>,
    req: ReadInto,
    region: Arc<Region>,
    tx: &Sender,
    request_id: u32,
) -> Result<(), Error> {
    let base = req.region_offset;
    // The whole range must fit before anything is read or written.
    let want = req.read.length.unwrap_or(u64::MAX);
    let room = region.len().saturating_sub(base);
    if base > region.len() || (req.read.length.is_some() && !region.fits(base, want)) {
        return Err(Error::BadRequest {
            reason: format!(
                "{want} bytes at region offset {base} do not fit the region of {} bytes",
                region.len()
            ),
        });
    }
    let first = req.read.offset;
    let read = ReadRequest {
        length: Some(want.min(room)),
        ..req.read
    };
    stream_read(service, read, tx, request_id, |chunk| {
        let region = region.clone();
        async move {
            let at = base + (chunk.offset - first);
            let (offset, len, crc32c) = (chunk.offset, chunk.data.len() as u64, chunk.crc32c);
            let copy = move || region.write(at, &chunk.data);
            let copied = if len as usize <= COPY_INLINE_LIMIT {
                copy()
            } else {
                tokio::task::spawn_blocking(copy)
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
            };
            copied.map_err(|reason| Error::BadRequest { reason })?;
            Ok(Frame::Placed(Placed {
                offset,
                region_offset: at,
                len,
                crc32c,
            }))
        }
    })
    .await
}

fn log_failure(path: &str, e: &Error) {
    let (dataset, key) = path.split_once('/').unwrap_or((path, ""));
    match e {
        Error::Origin { .. } | Error::OriginTimeout { .. } | Error::Internal { .. } => {
            tracing::warn!(dataset, key, code = ?e.code(), error = %e, "request failed");
        }
        _ => tracing::info!(dataset, key, code = ?e.code(), error = %e, "request failed"),
    }
}

#[cfg(test)]
mod tests;
