//! Chain fills: holding a block by taking it, chunk by chunk, from the node ahead in its chain.
//!
//! The node that runs a warm plans each block's chain (`crate::cluster::plan`) and sends every
//! node of it a `PeerBlock{Chain}` naming the nodes ahead of it. Each node pulls the block from
//! the node just ahead (`PeerBlock{Stream}`), which answers with chunks as they arrive there, so
//! bytes flow down the chain as a pipeline: the head reads the origin once, every other node
//! stores and forwards. A block being filled this way is a [`Growing`] buffer that successors
//! read while it grows.
//!
//! `PeerBlock{Chain}` (from the node running a warm) and `PeerBlock{Stream}` (from the node
//! behind) both start or join this node's fill of the block, a [`Growing`] buffer registered by
//! block key, so a block is filled once however it is asked for. The fill pulls from the last
//! node of its upstream list; if that node fails (connection lost, marked down, refusing) it is
//! cut out and the fill goes on, from the offset it reached, with the node before it, and
//! finally with the origin. A chunk that fails its end-to-end checksum is asked for again from
//! the same node, a few times, before that node is cut out too. Fills run in their own task (a
//! caller that goes away does not waste the bytes in flight), bounded in number like origin
//! fills (`origin_concurrency`): a new fill waits up to `peer_timeout` for a slot, then is
//! refused with `Busy` instead of buffering more blocks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::BoxStream;
use shardcache_proto::{BlockState, DataChunk, Frame, PeerBlock, PeerMode};

use super::failure::{Asked, judge, record};
use super::growing::Growing;
use super::serve::PeerServer;
use super::{relayed, request};
use crate::cache::{Block, BlockKey, FillSource};
use crate::cluster::{PeerFailure, PeerLink, declined, refusal, unavailable};
use crate::error::{Error, Result};
use crate::service::BlockCtx;

/// Times a damaged chunk is asked for again from the same node before it is cut out.
const MAX_RESENDS: u32 = 3;
/// Origin reads a chain fill starts (the first, then resumes after failures inside the body).
const MAX_ORIGIN_READS: u32 = 3;
/// Accepted chunk sizes of a chain stream.
pub const MIN_CHAIN_CHUNK: u32 = 64 * 1024;
pub const MAX_CHAIN_CHUNK: u32 = 4 * 1024 * 1024;

/// Chain fills in flight on this node, by block (a block is filled once however it is asked
/// for), and the bound on how many run at once (each buffers up to a block).
pub struct Chains {
    fills: Mutex<HashMap<BlockKey, Arc<Growing>>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Chains {
    pub fn new(max_fills: usize) -> Chains {
        Chains {
            fills: Mutex::new(HashMap::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(max_fills.max(1))),
        }
    }

    /// The fill of `key` in progress here, if any (a reader waits for it).
    pub fn get(&self, key: &BlockKey) -> Option<Arc<Growing>> {
        self.fills.lock().expect("lock").get(key).cloned()
    }
}

/// Ends a chain fill's registration when its task ends.
struct FillDone {
    chains: Arc<Chains>,
    key: BlockKey,
    fill: Arc<Growing>,
}

impl Drop for FillDone {
    fn drop(&mut self) {
        self.fill.finish(Err(Error::Internal {
            reason: "the block's fill stopped".into(),
        }));
        let mut fills = self.chains.fills.lock().expect("lock");
        if fills
            .get(&self.key)
            .is_some_and(|g| Arc::ptr_eq(g, &self.fill))
        {
            fills.remove(&self.key);
        }
    }
}

/// A block this node holds, or is filling.
pub enum Held {
    Whole(Block),
    Filling(Arc<Growing>),
}

impl PeerServer {
    /// `PeerBlock{Chain}`: hold the block, taking it from `upstream` (or the origin), and say
    /// so once every byte is here.
    pub async fn chain_load(
        self: &Arc<Self>,
        ctx: BlockCtx,
        upstream: Vec<String>,
        chunk_size: u32,
    ) -> Result<BlockState> {
        let len = ctx.end - ctx.start;
        match self.chain_hold(ctx, upstream, chunk_size).await? {
            Held::Whole(block) => Ok(BlockState {
                was_present: true,
                present: true,
                len,
                crc32c: block.crc32c,
            }),
            Held::Filling(g) => {
                g.wait().await?;
                Ok(BlockState {
                    was_present: false,
                    present: true,
                    len,
                    crc32c: g.block().map_or_else(|| g.crc32c(), |b| b.crc32c),
                })
            }
        }
    }

    /// `PeerBlock{Stream}`: the block from `offset` as chunks, while they arrive here.
    pub(super) async fn chain_stream(
        self: &Arc<Self>,
        ctx: BlockCtx,
        req: &PeerBlock,
    ) -> Result<BoxStream<'static, Result<DataChunk>>> {
        let len = ctx.end - ctx.start;
        if req.offset > len {
            return Err(Error::BadRequest {
                reason: format!("offset {} is past the block's {len} bytes", req.offset),
            });
        }
        let start = ctx.start;
        let chunk = req.chunk_size as usize;
        let offset = req.offset;
        let key = ctx.block_key(ctx.index());
        Ok(
            match self
                .chain_hold(ctx, req.upstream.clone(), req.chunk_size)
                .await?
            {
                Held::Filling(g) => g.read_from(offset),
                Held::Whole(block) => {
                    // Held already: chunks of the stored block, their CRCs checked together
                    // against the block's before the first is sent (a damaged copy here is
                    // dropped, and the node behind cuts over to another source).
                    let from = offset as usize;
                    let to = block.len();
                    let cut = tokio::task::spawn_blocking(move || {
                        block.verified_chunks(from.min(to), to, chunk)
                    })
                    .await
                    .map_err(|e| Error::Internal {
                        reason: format!("checksum task failed: {e}"),
                    })?;
                    let chunks = match cut {
                        Ok(chunks) => chunks,
                        Err(damage) => {
                            self.service.ram().invalidate(&key).await;
                            return Err(Error::Internal {
                                reason: format!("the held block is damaged: {damage}"),
                            });
                        }
                    };
                    futures::stream::iter(chunks.into_iter().map(move |(at, data, crc32c)| {
                        Ok(DataChunk {
                            offset: start + at as u64,
                            crc32c,
                            data,
                        })
                    }))
                    .boxed()
                }
            },
        )
    }

    /// Start or join this node's chain fill of a block, unless it is held already.
    async fn chain_hold(
        self: &Arc<Self>,
        ctx: BlockCtx,
        upstream: Vec<String>,
        chunk_size: u32,
    ) -> Result<Held> {
        if !(MIN_CHAIN_CHUNK..=MAX_CHAIN_CHUNK).contains(&chunk_size) {
            return Err(Error::BadRequest {
                reason: format!(
                    "chain chunk size {chunk_size} is outside {MIN_CHAIN_CHUNK}..={MAX_CHAIN_CHUNK}"
                ),
            });
        }
        let key = ctx.block_key(ctx.index());
        if let Some(g) = self.chains.get(&key) {
            return Ok(Held::Filling(g));
        }
        // Held already (in RAM, or on disk after a restart): served from there, no fill and no
        // slot.
        if let Some(block) = self.service.held(&key).await {
            return Ok(Held::Whole(block));
        }
        // A slot first (waiting a little: chains of other blocks finish all the time), then
        // the registry again, since another request may have started the fill meanwhile.
        let wait = self.members.timeouts().peer;
        let permit =
            match tokio::time::timeout(wait, self.chains.slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    if let Some(g) = self.chains.get(&key) {
                        return Ok(Held::Filling(g));
                    }
                    return Err(Error::Busy {
                        what: "chain fills in flight are at their bound",
                    });
                }
            };
        let g = {
            let mut fills = self.chains.fills.lock().expect("lock");
            if let Some(g) = fills.get(&key) {
                return Ok(Held::Filling(g.clone()));
            }
            let g = Growing::new(ctx.start, ctx.end - ctx.start);
            fills.insert(key, g.clone());
            let this = self.clone();
            let fill = g.clone();
            let chains = self.chains.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // However the task ends (a panic included), waiters are told and the registry
                // forgets the fill.
                let _done = FillDone {
                    chains,
                    key,
                    fill: fill.clone(),
                };
                this.run_chain_fill(ctx, key, upstream, chunk_size as usize, &fill)
                    .await;
            });
            g
        };
        Ok(Held::Filling(g))
    }

    /// Fill `g`, then store the block. Not inside the RAM tier's single flight: a reader's fill
    /// of the same block waits for this one instead (the read path asks for chains in flight
    /// before other members), so a reader asking another node cannot hold up the chain this
    /// node forwards.
    async fn run_chain_fill(
        self: &Arc<Self>,
        ctx: BlockCtx,
        key: BlockKey,
        upstream: Vec<String>,
        chunk: usize,
        g: &Arc<Growing>,
    ) {
        let fill = async {
            if let Some(block) = self.service.held(&key).await {
                return Ok(block);
            }
            let source = self.pull_chain(&ctx, g, &upstream, chunk).await?;
            let block = g.assemble(source)?;
            self.service.store(key, block.clone()).await;
            Ok(block)
        };
        match fill.await {
            // RAM or the disk tier had it: the rest goes out from here.
            Ok(block) => g.finish(g.push_rest_of(&block, chunk)),
            Err(e) => {
                tracing::warn!(key = ctx.key, index = key.index, error = %e, "chain fill failed");
                g.finish(Err(e));
            }
        }
    }

    /// Take the block into `g` from the nodes ahead (nearest first), then the origin.
    pub(super) async fn pull_chain(
        &self,
        ctx: &BlockCtx,
        g: &Growing,
        upstream: &[String],
        chunk: usize,
    ) -> Result<FillSource> {
        let me = self.members.own_addr();
        for pos in (0..upstream.len()).rev() {
            if g.filled() == g.len() {
                break;
            }
            let addr = &upstream[pos];
            if me.as_deref() == Some(addr.as_str()) {
                continue;
            }
            // Only members are contacted: the list comes from another node.
            let Some(link) = self.members.link(addr) else {
                tracing::warn!(addr, "chain names a node that is not a member; skipped");
                self.metrics.chain_cutovers.inc();
                continue;
            };
            if link.is_down() {
                self.metrics.chain_cutovers.inc();
                continue;
            }
            let mut resends = 0;
            loop {
                let mut req = request(
                    &ctx.origin,
                    &ctx.key,
                    &ctx.version,
                    ctx.index(),
                    PeerMode::Stream,
                );
                req.chunk_size = chunk as u32;
                req.offset = g.filled();
                req.upstream = upstream[..pos].to_vec();
                let failure = match self.stream_from(link.as_ref(), req, ctx, g).await {
                    Ok(()) => break,
                    Err(f) => f,
                };
                let v = judge(Asked::Upstream, &failure);
                record(&self.metrics, &v);
                let reason = failure.clone().reason();
                if v.definitive
                    && let PeerFailure::Answer { code, message } = failure
                {
                    return Err(relayed(ctx, code, message, addr));
                }
                if v.resend {
                    resends += 1;
                    tracing::warn!(
                        peer = addr,
                        key = ctx.key,
                        at = g.filled(),
                        reason,
                        "chain chunk arrived damaged; asking again"
                    );
                    if resends < MAX_RESENDS {
                        continue;
                    }
                    // The node keeps sending damaged bytes: its copy is bad.
                    self.members.report_failure(link.as_ref(), &reason);
                    self.metrics.chain_cutovers.inc();
                    break;
                }
                tracing::warn!(
                    peer = addr,
                    key = ctx.key,
                    at = g.filled(),
                    reason,
                    "node ahead in the chain failed; cutting it out"
                );
                if v.mark_down {
                    self.members.report_failure(link.as_ref(), &reason);
                }
                break;
            }
        }
        if g.filled() == g.len() {
            return Ok(FillSource::Chain);
        }
        self.pull_origin(ctx, g, chunk).await?;
        Ok(FillSource::Origin)
    }

    /// The rest of the block from one node ahead.
    async fn stream_from(
        &self,
        link: &dyn PeerLink,
        req: PeerBlock,
        ctx: &BlockCtx,
        g: &Growing,
    ) -> Result<(), PeerFailure> {
        let t = self.members.timeouts();
        let down = link.marked_down();
        let work = async {
            let mut responses = link.stream(req, t.fill, t.peer).await?;
            while g.filled() < g.len() {
                let chunk = match responses.next().await {
                    Some(Ok(Frame::Data(chunk))) => chunk,
                    Some(Ok(Frame::Error(e))) => return Err(refusal(e)),
                    Some(Ok(other)) => {
                        return Err(unavailable(format!(
                            "answered a chain stream with {other:?}"
                        )));
                    }
                    // Slow is not dead (the node ahead may be waiting on its own upstream or
                    // the origin): skip it without marking it down; the probes decide that.
                    Some(Err(e @ shardcache_client::ClientError::Timeout { .. })) => {
                        return Err(declined(e.to_string()));
                    }
                    Some(Err(e)) => return Err(unavailable(e.to_string())),
                    None => return Err(unavailable("the stream ended early")),
                };
                let at = g.filled();
                if chunk.offset != ctx.start + at
                    || chunk.data.is_empty()
                    || chunk.data.len() as u64 > g.len() - at
                {
                    return Err(unavailable(format!(
                        "sent {} bytes at {} where {} bytes at {} were due",
                        chunk.data.len(),
                        chunk.offset,
                        g.len() - at,
                        ctx.start + at
                    )));
                }
                if !chunk.verify() {
                    return Err(PeerFailure::Corrupt {
                        reason: format!("chunk at {} failed its checksum", chunk.offset),
                    });
                }
                self.metrics
                    .chain_bytes_upstream
                    .inc_by(chunk.data.len() as u64);
                g.push(chunk.data, chunk.crc32c)
                    .map_err(|e| unavailable(e.to_string()))?;
            }
            Ok(())
        };
        tokio::select! {
            result = work => result,
            () = down => Err(declined("marked down")),
        }
    }

    /// The rest of the block from the origin, as it arrives, in chunks of `chunk`.
    async fn pull_origin(&self, ctx: &BlockCtx, g: &Growing, chunk: usize) -> Result<()> {
        let mut reads = 0;
        while g.filled() < g.len() {
            reads += 1;
            let from = ctx.start + g.filled();
            let mut body = ctx
                .origin
                .open_range(&ctx.key, &ctx.version, from..ctx.end)
                .await?;
            let mut buf = BytesMut::with_capacity(chunk);
            let mut failed = None;
            while let Some(piece) = body.next().await {
                match piece {
                    Ok(bytes) => {
                        buf.extend_from_slice(&bytes);
                        while buf.len() >= chunk {
                            self.push_origin_chunk(g, buf.split_to(chunk).freeze())?;
                        }
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => {
                    if !buf.is_empty() {
                        self.push_origin_chunk(g, buf.split().freeze())?;
                    }
                    if g.filled() < g.len() {
                        return Err(Error::VersionChanged {
                            dataset: ctx.origin.dataset().to_string(),
                            key: ctx.key.clone(),
                            expected: ctx.version.etag.clone(),
                            found: format!(
                                "a body that ended {} bytes short",
                                g.len() - g.filled()
                            ),
                        });
                    }
                }
                // What arrived short of a whole chunk is read again by the next request.
                Some(e) if reads >= MAX_ORIGIN_READS => return Err(e),
                Some(e) => {
                    tracing::warn!(key = ctx.key, at = g.filled(), error = %e, "origin read broke off; resuming");
                }
            }
        }
        Ok(())
    }

    fn push_origin_chunk(&self, g: &Growing, data: bytes::Bytes) -> Result<()> {
        self.metrics.chain_bytes_origin.inc_by(data.len() as u64);
        let crc = crc32c::crc32c(&data);
        g.push(data, crc)
    }
}
