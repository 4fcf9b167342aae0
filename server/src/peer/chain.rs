//! Chain fills: holding a block by taking it, chunk by chunk, from the node ahead in its chain.
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

use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::BoxStream;
use shardcache_proto::{BlockState, DataChunk, Frame, PeerBlock, PeerMode};

use super::{CacheService, ReadCtx, relayed};
use crate::cache::{Block, BlockKey, FillSource};
use crate::cluster::peer::{Peer, PeerFailure, PeerState, declined, refusal, unavailable};
use crate::distribute::Growing;
use crate::error::{Error, Result};
use crate::stats::Stats;

/// Times a damaged chunk is asked for again from the same node before it is cut out.
const MAX_RESENDS: u32 = 3;
/// Origin reads a chain fill starts (the first, then resumes after failures inside the body).
const MAX_ORIGIN_READS: u32 = 3;
/// Accepted chunk sizes of a chain stream.
pub const MIN_CHAIN_CHUNK: u32 = 64 * 1024;
pub const MAX_CHAIN_CHUNK: u32 = 4 * 1024 * 1024;

/// Ends a chain fill's registration when its task ends.
struct FillDone {
    service: Arc<CacheService>,
    key: BlockKey,
    fill: Arc<Growing>,
}

impl Drop for FillDone {
    fn drop(&mut self) {
        self.fill.finish(Err(Error::Internal {
            reason: "the block's fill stopped".into(),
        }));
        let mut chains = self.service.chains.lock().expect("lock");
        if chains
            .get(&self.key)
            .is_some_and(|g| Arc::ptr_eq(g, &self.fill))
        {
            chains.remove(&self.key);
        }
    }
}

/// A block this node holds, or is filling.
pub enum Held {
    Whole(Block),
    Filling(Arc<Growing>),
}

impl CacheService {
    /// `PeerBlock{Chain}`: hold the block, taking it from `upstream` (or the origin), and say
    /// so once every byte is here.
    pub(super) async fn chain_load(
        self: &Arc<Self>,
        ctx: ReadCtx,
        index: u64,
        upstream: Vec<String>,
        chunk_size: u32,
    ) -> Result<BlockState> {
        let len = ctx.end - ctx.start;
        match self.chain_hold(ctx, index, upstream, chunk_size).await? {
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
        ctx: ReadCtx,
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
        Ok(
            match self
                .chain_hold(ctx, req.index, req.upstream.clone(), req.chunk_size)
                .await?
            {
                Held::Filling(g) => g.read_from(offset),
                Held::Whole(block) => {
                    // Held already: chunks of the stored block, checksummed as they go.
                    let data = block.data;
                    futures::stream::iter((offset..len).step_by(chunk))
                        .map(move |at| {
                            let end = (at as usize + chunk).min(data.len());
                            Ok(DataChunk::new(start + at, data.slice(at as usize..end)))
                        })
                        .boxed()
                }
            },
        )
    }

    /// Start or join this node's chain fill of a block, unless it is held already.
    async fn chain_hold(
        self: &Arc<Self>,
        ctx: ReadCtx,
        index: u64,
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
        let key = BlockKey {
            object: ctx.object,
            index,
        };
        if let Some(g) = self.chains.lock().expect("lock").get(&key) {
            return Ok(Held::Filling(g.clone()));
        }
        if let Some(block) = self.ram.get(&key).await {
            return Ok(Held::Whole(block));
        }
        // Held on disk (say, after a restart): served from there, no fill and no slot.
        if let Some(disk) = &self.disk
            && disk.contains(&key)
            && let Some(block) = disk.get(&key).await
        {
            return Ok(Held::Whole(block));
        }
        // A slot first (waiting a little: chains of other blocks finish all the time), then
        // the registry again, since another request may have started the fill meanwhile.
        let wait = self.cluster.settings().peer_timeout;
        let permit =
            match tokio::time::timeout(wait, self.chain_slots.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => {
                    if let Some(g) = self.chains.lock().expect("lock").get(&key) {
                        return Ok(Held::Filling(g.clone()));
                    }
                    return Err(Error::Busy {
                        what: "chain fills in flight are at their bound",
                    });
                }
            };
        let g = {
            let mut chains = self.chains.lock().expect("lock");
            if let Some(g) = chains.get(&key) {
                return Ok(Held::Filling(g.clone()));
            }
            let g = Growing::new(ctx.start, ctx.end - ctx.start);
            chains.insert(key, g.clone());
            let this = self.clone();
            let fill = g.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // However the task ends (a panic included), waiters are told and the registry
                // forgets the fill.
                let _done = FillDone {
                    service: this.clone(),
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
    /// of the same block waits for this one instead (`CacheService::block` looks here first),
    /// so a reader asking another node cannot hold up the chain this node forwards.
    async fn run_chain_fill(
        self: &Arc<Self>,
        ctx: ReadCtx,
        key: BlockKey,
        upstream: Vec<String>,
        chunk: usize,
        g: &Arc<Growing>,
    ) {
        let fill = async {
            if let Some(block) = self.ram.get(&key).await {
                return Ok(block);
            }
            if let Some(disk) = &self.disk
                && let Some(block) = disk.get(&key).await
            {
                return Ok(block);
            }
            let source = self.pull_chain(&ctx, g, &upstream, chunk).await?;
            let block = g.assemble(source)?;
            if let Some(disk) = &self.disk {
                disk.admit(key, block.clone());
            }
            self.ram.insert(key, block.clone()).await;
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

    /// A chain fill of `key` in progress here, if any (a reader waits for it).
    pub(super) fn chain_fill(&self, key: &BlockKey) -> Option<Arc<Growing>> {
        self.chains.lock().expect("lock").get(key).cloned()
    }

    /// Take the block into `g` from the nodes ahead (nearest first), then the origin.
    async fn pull_chain(
        &self,
        ctx: &ReadCtx,
        g: &Growing,
        upstream: &[String],
        chunk: usize,
    ) -> Result<FillSource> {
        let me = self.cluster.own_addr();
        for pos in (0..upstream.len()).rev() {
            if g.filled() == g.len() {
                break;
            }
            let addr = &upstream[pos];
            if me.as_deref() == Some(addr.as_str()) {
                continue;
            }
            // Only members are contacted: the list comes from another node.
            let Some(peer) = self.cluster.peer(addr) else {
                tracing::warn!(addr, "chain names a node that is not a member; skipped");
                Stats::add(&self.stats.chain_cutovers, 1);
                continue;
            };
            if peer.state().is_down() {
                Stats::add(&self.stats.chain_cutovers, 1);
                continue;
            }
            let mut resends = 0;
            loop {
                let index = ctx.start / ctx.origin.settings().block_size;
                let mut req = Self::peer_request(
                    &ctx.origin,
                    &ctx.key,
                    &ctx.version,
                    index,
                    PeerMode::Stream,
                );
                req.chunk_size = chunk as u32;
                req.offset = g.filled();
                req.upstream = upstream[..pos].to_vec();
                match self.stream_from(&peer, req, ctx, g).await {
                    Ok(()) => break,
                    Err(PeerFailure::Corrupt { reason }) => {
                        Stats::add(&self.stats.checksum_failures, 1);
                        Stats::add(&self.stats.chain_resends, 1);
                        resends += 1;
                        tracing::warn!(
                            peer = addr,
                            key = ctx.key,
                            at = g.filled(),
                            reason,
                            "chain chunk arrived damaged; asking again"
                        );
                        if resends >= MAX_RESENDS {
                            self.cluster.report_failure(&peer, &reason);
                            Stats::add(&self.stats.chain_cutovers, 1);
                            break;
                        }
                    }
                    Err(PeerFailure::Answer { code, message }) => {
                        return Err(relayed(ctx, code, message, addr));
                    }
                    Err(failure) => {
                        let down = matches!(failure, PeerFailure::Unavailable { .. });
                        let reason = failure.reason();
                        tracing::warn!(
                            peer = addr,
                            key = ctx.key,
                            at = g.filled(),
                            reason,
                            "node ahead in the chain failed; cutting it out"
                        );
                        Stats::add(&self.stats.chain_cutovers, 1);
                        if down {
                            self.cluster.report_failure(&peer, &reason);
                        }
                        break;
                    }
                }
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
        peer: &Peer,
        req: PeerBlock,
        ctx: &ReadCtx,
        g: &Growing,
    ) -> Result<(), PeerFailure> {
        let settings = self.cluster.settings();
        let mut down = peer.state_watch();
        let work = async {
            let mut responses = peer
                .stream(req, settings.fill_timeout, settings.peer_timeout)
                .await?;
            while g.filled() < g.len() {
                let chunk = match responses.next().await {
                    Ok(Frame::Data(chunk)) => chunk,
                    Ok(Frame::Error(e)) => return Err(refusal(e)),
                    Ok(other) => {
                        return Err(unavailable(format!(
                            "answered a chain stream with {other:?}"
                        )));
                    }
                    // Slow is not dead (the node ahead may be waiting on its own upstream or
                    // the origin): skip it without marking it down; the probes decide that.
                    Err(e @ shardcache_client::ClientError::Timeout { .. }) => {
                        return Err(declined(e.to_string()));
                    }
                    Err(e) => return Err(unavailable(e.to_string())),
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
                Stats::add(&self.stats.chain_bytes_upstream, chunk.data.len() as u64);
                g.push(chunk.data, chunk.crc32c)
                    .map_err(|e| unavailable(e.to_string()))?;
            }
            Ok(())
        };
        tokio::select! {
            result = work => result,
            _ = down.wait_for(PeerState::is_down) => Err(declined("marked down")),
        }
    }

    /// The rest of the block from the origin, as it arrives, in chunks of `chunk`.
    async fn pull_origin(&self, ctx: &ReadCtx, g: &Growing, chunk: usize) -> Result<()> {
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
        Stats::add(&self.stats.chain_bytes_origin, data.len() as u64);
        let crc = crc32c::crc32c(&data);
        g.push(data, crc)
    }
}
