//! The read path: from a `DATASET/KEY` range to a stream of checksummed chunks.
//!
//! A read pins the object's version first (from the version cache or a HEAD), checks the range,
//! then walks the blocks that cover it. Each block comes from the first source that has it, in
//! this order ([`sources`]): the RAM tier; inside the RAM tier's single flight (every concurrent
//! miss of one block waits on one fill), the disk tier; a chain fill already bringing the block
//! to this node; the cluster (the block's owner, then its neighbours), through the
//! [`RemoteSource`] the server plugs in (`crate::peer`; none on a single node); the origin.
//! Blocks filled from the origin or taken from a neighbour are offered to the disk tier. Up to
//! `readahead` blocks of one read are fetched ahead of the one being sent, so a cold read keeps
//! several ranged GETs in flight.
//!
//! If the origin turns out to hold another version before any byte was sent, the read starts
//! over once at the new version; after bytes went out it ends with `PreconditionFailed`, because
//! a client must never receive two versions in one read.
//!
//! This module knows nothing of peers or sockets: what other nodes do with it is in
//! `crate::peer`, how requests arrive in `crate::transport`.

pub mod metrics;
pub mod sources;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use shardcache_proto::{
    BlockState, DataChunk, ObjectInfo, ObjectPath, PeerMode, ReadRequest, ReadStart,
};

use crate::cache::{
    Block, BlockKey, DiskTier, FillSource, Filled, ObjectId, RamTier, VersionCache,
};
use crate::error::{Error, Result};
use crate::origin::{Origin, Version};
pub use metrics::ReadMetrics;
pub use sources::{Alone, RemoteSource, Source};

/// Chunks bigger than this get their partial-block checksum computed off the async threads.
const INLINE_CRC_LIMIT: usize = 1 << 20;

/// Prefetch requests that may load in the background at once; more are declined.
const PREFETCH_SLOTS: usize = 4;

/// The local read path: origins, tiers, versions.
pub struct CacheService {
    origins: HashMap<String, Arc<Origin>>,
    ram: RamTier,
    disk: Option<Arc<DiskTier>>,
    versions: VersionCache,
    metrics: Arc<ReadMetrics>,
    readahead: usize,
    /// Keep blocks read from their owner in RAM (a neighbour's copy is always kept).
    keep_copies: bool,
    /// Prefetch requests loading in the background at once, server-wide.
    prefetch_slots: Arc<tokio::sync::Semaphore>,
    /// Where blocks come from beyond this node's tiers.
    remote: Arc<dyn RemoteSource>,
}

/// This node's tiers: blocks in RAM and on disk, object versions.
pub struct Tiers {
    pub ram: RamTier,
    pub disk: Option<Arc<DiskTier>>,
    pub versions: VersionCache,
}

/// An accepted read: the version and range, then the chunks in order.
pub struct ReadResponse {
    pub start: ReadStart,
    pub chunks: BoxStream<'static, Result<DataChunk>>,
}

/// Everything one read of one object version needs, shared by its block fetches.
#[derive(Clone)]
pub struct BlockCtx {
    pub origin: Arc<Origin>,
    pub key: String,
    pub version: Version,
    pub object: ObjectId,
    /// The byte range read (for a whole-block context: the block's range).
    pub start: u64,
    pub end: u64,
    /// Another node asked this one for the block: it is filled here, never forwarded again.
    pub for_peer: bool,
}

impl BlockCtx {
    /// The context of one whole block of one version, filled on behalf of a peer or the control
    /// plane (so never forwarded to another owner). The range is checked here: sizes and
    /// indices come from other nodes.
    pub fn whole_block(
        origin: Arc<Origin>,
        key: &str,
        version: Version,
        index: u64,
    ) -> Result<BlockCtx> {
        let bs = origin.settings().block_size;
        let start = index.saturating_mul(bs);
        if start >= version.size {
            return Err(Error::RangeNotSatisfiable {
                dataset: origin.dataset().to_string(),
                key: key.to_string(),
                offset: start,
                size: version.size,
            });
        }
        if version.size > u64::MAX - bs {
            return Err(Error::BadRequest {
                reason: format!("object size {} is out of range", version.size),
            });
        }
        Ok(BlockCtx {
            object: ObjectId::of(&origin, key, &version),
            key: key.to_string(),
            end: (start + bs).min(version.size),
            start,
            version,
            origin,
            for_peer: true,
        })
    }

    /// The key of block `index` of this context's object version.
    pub fn block_key(&self, index: u64) -> BlockKey {
        self.object.block(index)
    }

    /// The block index a whole-block context covers.
    pub fn index(&self) -> u64 {
        self.start / self.origin.settings().block_size
    }
}

impl CacheService {
    pub fn new(
        origins: Vec<Arc<Origin>>,
        tiers: Tiers,
        metrics: Arc<ReadMetrics>,
        readahead: usize,
        keep_copies: bool,
        remote: Arc<dyn RemoteSource>,
    ) -> CacheService {
        let origins = origins
            .into_iter()
            .map(|o| (o.dataset().to_string(), o))
            .collect();
        let Tiers {
            ram,
            disk,
            versions,
        } = tiers;
        CacheService {
            origins,
            ram,
            disk,
            versions,
            metrics,
            readahead: readahead.max(1),
            keep_copies,
            prefetch_slots: Arc::new(tokio::sync::Semaphore::new(PREFETCH_SLOTS)),
            remote,
        }
    }

    /// Load `paths` into the cache in the background, one object after another in the given
    /// order (a loader's upcoming shards), until `stop` completes (the asking connection
    /// ended). Returns how many were queued: all of them, or 0 when `PREFETCH_SLOTS`
    /// prefetches are already running (a hint is dropped, never queued without bound).
    pub fn prefetch(
        self: &Arc<Self>,
        paths: Vec<String>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> u32 {
        let Ok(permit) = self.prefetch_slots.clone().try_acquire_owned() else {
            self.metrics.prefetch_declined.inc_by(paths.len() as u64);
            return 0;
        };
        let accepted = paths.len() as u32;
        let this = self.clone();
        let load = async move {
            for path in paths {
                let req = ReadRequest {
                    path: path.clone(),
                    offset: 0,
                    length: None,
                    if_match: None,
                };
                let loaded = match this.read(req).await {
                    Ok(mut resp) => {
                        let mut ok = true;
                        while let Some(chunk) = resp.chunks.next().await {
                            if chunk.is_err() {
                                ok = false;
                                break;
                            }
                        }
                        ok
                    }
                    Err(e) => {
                        tracing::debug!(path, error = %e, "prefetch skipped");
                        false
                    }
                };
                let counter = if loaded {
                    &this.metrics.prefetch_done
                } else {
                    &this.metrics.prefetch_failed
                };
                counter.inc();
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = load => {}
                _ = stop => tracing::debug!("prefetch stopped: its connection ended"),
            }
        });
        accepted
    }

    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    pub fn metrics(&self) -> &Arc<ReadMetrics> {
        &self.metrics
    }

    pub fn ram(&self) -> &RamTier {
        &self.ram
    }

    pub fn datasets(&self) -> impl Iterator<Item = &str> {
        self.origins.keys().map(String::as_str)
    }

    pub fn origins(&self) -> impl Iterator<Item = &Arc<Origin>> {
        self.origins.values()
    }

    /// The origin of a dataset; `UnknownDataset` naming the ones this server has otherwise.
    pub fn origin(&self, dataset: &str) -> Result<Arc<Origin>> {
        self.origins.get(dataset).cloned().ok_or_else(|| {
            let mut known: Vec<String> = self.origins.keys().cloned().collect();
            known.sort();
            Error::UnknownDataset {
                dataset: dataset.to_string(),
                known,
            }
        })
    }

    fn info(origin: &Origin, version: &Version) -> ObjectInfo {
        ObjectInfo {
            size: version.size,
            etag: version.etag.clone(),
            last_modified_ms: version.last_modified_ms,
            block_size: origin.settings().block_size as u32,
        }
    }

    /// Version and size of an object.
    pub async fn stat(&self, path: &str) -> Result<ObjectInfo> {
        let path = ObjectPath::parse(path)?;
        let origin = self.origin(path.dataset())?;
        let version = self.versions.get(&origin, path.key()).await?;
        Ok(Self::info(&origin, &version))
    }

    /// An object's current version.
    pub async fn version(&self, origin: &Origin, key: &str) -> Result<Version> {
        self.versions.get(origin, key).await
    }

    /// Start a read. Errors that concern the whole request (unknown dataset, bad key, missing
    /// object, bad range, wrong version) come back here, before any chunk.
    pub async fn read(self: &Arc<Self>, req: ReadRequest) -> Result<ReadResponse> {
        let path = ObjectPath::parse(&req.path)?;
        let origin = self.origin(path.dataset())?;
        let mut restarted = false;
        loop {
            let version = self.versions.get(&origin, path.key()).await?;
            if let Some(expected) = &req.if_match
                && *expected != version.etag
            {
                return Err(Error::VersionChanged {
                    dataset: path.dataset().to_string(),
                    key: path.key().to_string(),
                    expected: expected.clone(),
                    found: version.etag,
                });
            }
            if req.offset > version.size {
                return Err(Error::RangeNotSatisfiable {
                    dataset: path.dataset().to_string(),
                    key: path.key().to_string(),
                    offset: req.offset,
                    size: version.size,
                });
            }
            let end = match req.length {
                Some(len) => req.offset.saturating_add(len).min(version.size),
                None => version.size,
            };
            let start = ReadStart {
                info: Self::info(&origin, &version),
                offset: req.offset,
                length: end - req.offset,
            };
            if start.length == 0 {
                return Ok(ReadResponse {
                    start,
                    chunks: stream::empty().boxed(),
                });
            }
            let ctx = Arc::new(BlockCtx {
                object: ObjectId::of(&origin, path.key(), &version),
                origin: origin.clone(),
                key: path.key().to_string(),
                version,
                start: req.offset,
                end,
                for_peer: false,
            });
            let bs = origin.settings().block_size;
            let first = ctx.start / bs;
            let last = (ctx.end - 1) / bs;
            // The first block is fetched before answering, so a version change found there
            // restarts the read instead of failing it. It is not held here: the stream takes
            // it from the tier when the connection has room for it.
            match self.fetch_ahead(&ctx, first).await {
                Ok(()) => {}
                Err(Error::VersionChanged { .. }) if !restarted && req.if_match.is_none() => {
                    restarted = true;
                    continue;
                }
                Err(e) => return Err(e),
            }
            let chunks = Chunks {
                service: self.clone(),
                ctx,
                next: first,
                last,
                warmed: first,
                window: 1,
            };
            return Ok(ReadResponse {
                start,
                chunks: chunks.stream(),
            });
        }
    }

    /// Start filling block `index` ahead of its reader (see [`RamTier::warm`]); the fill, to
    /// wait for, unless the block is held.
    fn warm(&self, ctx: &BlockCtx, index: u64) -> Option<crate::cache::Warming> {
        let (warming, started) = self
            .ram
            .warm(ctx.block_key(index), || self.fill(ctx, index).1);
        if started {
            self.metrics.ram_misses.inc();
        }
        warming
    }

    /// Fill block `index` if it is not held, and wait until it is, without taking it.
    async fn fetch_ahead(&self, ctx: &BlockCtx, index: u64) -> Result<()> {
        let Some(warming) = self.warm(ctx, index) else {
            return Ok(());
        };
        let done = warming.done().await;
        if let Err(e) = &done {
            self.failed(ctx, e).await;
        }
        done
    }

    /// The part of block `index` that falls in the read's range. A whole block goes with the
    /// CRC it was stored with (the client checks it); a part's CRC is computed and checked
    /// against the block's (see [`Block::verified_range`]). A held copy found damaged is dropped
    /// and the block fetched again, once.
    async fn chunk(&self, ctx: &BlockCtx, index: u64) -> Result<DataChunk> {
        let mut again = true;
        loop {
            let (block, how) = self.block(ctx, index).await?;
            match self.cut(ctx, index, block, how).await {
                Ok(chunk) => return Ok(chunk),
                Err(damage) if again => {
                    again = false;
                    self.metrics.damaged_blocks.inc();
                    tracing::warn!(dataset = ctx.origin.dataset(), key = ctx.key, index, error = %damage, "a held block is damaged; dropped and fetched again");
                    self.ram.invalidate(&ctx.block_key(index)).await;
                }
                Err(damage) => {
                    return Err(Error::Internal {
                        reason: format!("block {index} of {} is damaged: {damage}", ctx.key),
                    });
                }
            }
        }
    }

    async fn cut(
        &self,
        ctx: &BlockCtx,
        index: u64,
        block: Block,
        how: Filled,
    ) -> std::result::Result<DataChunk, crate::cache::Damaged> {
        let bs = ctx.origin.settings().block_size;
        let block_start = index * bs;
        let from = ctx.start.max(block_start) - block_start;
        let to = ctx.end.min(block_start + block.len() as u64) - block_start;
        let offset = block_start + from;
        let (bytes, chunks) = match (how, block.source) {
            (Filled::Hit, _) => (
                &self.metrics.served_bytes_ram,
                &self.metrics.served_chunks_ram,
            ),
            (_, FillSource::Disk) => (
                &self.metrics.served_bytes_disk,
                &self.metrics.served_chunks_disk,
            ),
            (_, FillSource::Origin) => (
                &self.metrics.served_bytes_origin,
                &self.metrics.served_chunks_origin,
            ),
            (_, FillSource::Peer | FillSource::Neighbour | FillSource::Chain) => (
                &self.metrics.served_bytes_peer,
                &self.metrics.served_chunks_peer,
            ),
        };
        let (from, to) = (from as usize, to as usize);
        let (data, crc32c) = if from == 0 && to == block.len() {
            (block.data, block.crc32c)
        } else if block.len() <= INLINE_CRC_LIMIT {
            block.verified_range(from, to)?
        } else {
            tokio::task::spawn_blocking(move || block.verified_range(from, to))
                .await
                .map_err(|e| crate::cache::Damaged {
                    reason: format!("checksum task failed: {e}"),
                })??
        };
        bytes.inc_by(data.len() as u64);
        chunks.inc();
        Ok(DataChunk {
            offset,
            crc32c,
            data,
        })
    }

    /// Block `index` of the context's object version, from the first source that has it (see
    /// the module docs; the order is [`sources::ORDER`]).
    pub async fn block(&self, ctx: &BlockCtx, index: u64) -> Result<(Block, Filled)> {
        let (key, fill) = self.fill(ctx, index);
        match self.ram.get_or_fill(key, fill).await {
            Ok((block, how)) => {
                // An owner's copy, just brought here (by this read, another's or the
                // readahead), is not this node's to keep.
                if how != Filled::Hit && block.source == FillSource::Peer && !self.keep_copies {
                    self.ram.invalidate(&key).await;
                }
                let counter = match how {
                    Filled::Hit => Some(&self.metrics.ram_hits),
                    Filled::Filled => Some(&self.metrics.ram_misses),
                    Filled::Waited => Some(&self.metrics.single_flight_waits),
                    // Counted as a miss when the readahead started it.
                    Filled::Ahead => None,
                };
                if let Some(counter) = counter {
                    counter.inc();
                }
                Ok((block, how))
            }
            Err(e) => {
                self.failed(ctx, &e).await;
                Err(e)
            }
        }
    }

    /// After a failed fill: a version change found by it makes the cached version stale.
    async fn failed(&self, ctx: &BlockCtx, e: &Error) {
        if matches!(e, Error::VersionChanged { .. }) {
            self.versions
                .invalidate(ctx.origin.dataset(), &ctx.key)
                .await;
        }
    }

    /// The key of block `index` and the fill that brings it from the first source that has it
    /// (see the module docs; the order is [`sources::ORDER`]). The fill owns what it needs: it
    /// runs in a task of its own (see the RAM tier).
    fn fill(
        &self,
        ctx: &BlockCtx,
        index: u64,
    ) -> (
        BlockKey,
        impl std::future::Future<Output = Result<Block>> + Send + 'static,
    ) {
        let key = ctx.block_key(index);
        let bs = ctx.origin.settings().block_size;
        let range = index * bs..((index + 1) * bs).min(ctx.version.size);
        let (disk, remote, metrics, ctx_owned) = (
            self.disk.clone(),
            self.remote.clone(),
            self.metrics.clone(),
            ctx.clone(),
        );
        let fill = async move {
            let ctx = &ctx_owned;
            if let Some(disk) = &disk
                && let Some(block) = disk.get(&key).await
            {
                let want = range.end - range.start;
                if block.len() as u64 == want {
                    return Ok(block);
                }
                // Checked against its CRC on read, but not the length this block must have.
                metrics.damaged_blocks.inc();
                tracing::warn!(
                    dataset = ctx.origin.dataset(),
                    key = ctx.key,
                    index,
                    len = block.len(),
                    want,
                    "a disk block has the wrong length; dropped"
                );
                disk.remove(&key).await;
            }
            // A chain is bringing the block here: wait for it rather than fetch it twice.
            if let Some(block) = remote.in_flight(&key).await {
                return Ok(block);
            }
            if let Some(block) = remote.fetch(ctx, &key).await? {
                // Taken from a neighbour, the block is now this node's to hold; a copy from its
                // owner stays in RAM only.
                if block.source == FillSource::Neighbour
                    && let Some(disk) = &disk
                {
                    disk.admit(key, block.clone());
                }
                return Ok(block);
            }
            let data = ctx.origin.get_range(&ctx.key, &ctx.version, range).await?;
            let block = to_block(data).await?;
            if let Some(disk) = &disk {
                disk.admit(key, block.clone());
            }
            Ok(block)
        };
        (key, fill)
    }

    /// A block this node holds (RAM, else disk), without filling it.
    pub async fn held(&self, key: &BlockKey) -> Option<Block> {
        if let Some(block) = self.ram.get(key).await {
            return Some(block);
        }
        match &self.disk {
            Some(disk) => disk.get(key).await,
            None => None,
        }
    }

    /// Keep a block filled outside the RAM tier's single flight (a chain fill): RAM and disk.
    pub async fn store(&self, key: BlockKey, block: Block) {
        if let Some(disk) = &self.disk {
            disk.admit(key, block.clone());
        }
        self.ram.insert(key, block).await;
    }

    /// This node's part of warming, inspecting and evicting a block: `Load` makes sure the block
    /// is held here (filled from the sources above when missing; a whole-block context is never
    /// forwarded to an owner), `Check` says whether it is, `Evict` drops it from RAM and disk.
    pub async fn block_state(&self, ctx: &BlockCtx, mode: PeerMode) -> Result<BlockState> {
        let index = ctx.index();
        let len = ctx.end - ctx.start;
        let bkey = ctx.block_key(index);
        // A look, not a use: listing or evicting a prefix must not reorder the RAM tier.
        let in_ram = self.ram.contains(&bkey);
        let on_disk = self.disk.as_ref().is_some_and(|d| d.contains(&bkey));
        let was_present = in_ram || on_disk;
        let state = |present: bool, crc32c: u32| BlockState {
            was_present,
            present,
            len,
            crc32c: if present { crc32c } else { 0 },
        };
        match mode {
            PeerMode::Check => Ok(state(was_present, 0)),
            PeerMode::Evict => {
                self.ram.invalidate(&bkey).await;
                if let Some(disk) = &self.disk {
                    disk.remove(&bkey).await;
                }
                Ok(state(false, 0))
            }
            PeerMode::Load => {
                let (block, _) = self.block(ctx, index).await?;
                Ok(state(true, block.crc32c))
            }
            PeerMode::Fill | PeerMode::Probe | PeerMode::Chain | PeerMode::Stream => {
                Err(Error::BadRequest {
                    reason: "fill, probe, chain and stream are not block operations".into(),
                })
            }
        }
    }
}

/// Checksum a freshly fetched block off the async threads.
/// The chunks of one read, each taken when the stream is polled for it (when the connection has
/// room for it), never before: what a read holds is what its connection is sending. Blocks
/// after the one taken are filled ahead, into the RAM tier, in a window that starts at one
/// block and doubles with each block taken up to `readahead` — a reader that stops taking
/// stops the readahead, and what was filled ahead is in the tier's budget (see
/// [`RamTier::warm`]), not held here.
struct Chunks {
    service: Arc<CacheService>,
    ctx: Arc<BlockCtx>,
    /// The next block to take.
    next: u64,
    last: u64,
    /// Blocks up to this one have been started.
    warmed: u64,
    window: u64,
}

impl Chunks {
    fn stream(self) -> BoxStream<'static, Result<DataChunk>> {
        stream::unfold(self, |mut c| async move {
            if c.next > c.last {
                return None;
            }
            let index = c.next;
            let until = index.saturating_add(c.window).min(c.last);
            for ahead in c.warmed + 1..=until {
                c.service.warm(&c.ctx, ahead);
            }
            c.warmed = c.warmed.max(until);
            c.window = (c.window * 2).min(c.service.readahead as u64);
            c.next += 1;
            let chunk = c.service.chunk(&c.ctx, index).await;
            if chunk.is_err() {
                c.next = c.last + 1;
            }
            Some((chunk, c))
        })
        .boxed()
    }
}

async fn to_block(data: Bytes) -> Result<Block> {
    tokio::task::spawn_blocking(move || Block::new(data))
        .await
        .map_err(|e| Error::Internal {
            reason: format!("checksum task failed: {e}"),
        })
}

#[cfg(test)]
mod tests;
