//! The read path: from a `DATASET/KEY` range to a stream of checksummed chunks.
//!
//! A read pins the object's version first (from the version cache or a HEAD), checks the range,
//! then walks the blocks that cover it: each from the RAM tier, or filled from the origin once
//! however many readers miss it at the same time. Up to `readahead` blocks of one read are
//! fetched ahead of the one being sent, so a cold read keeps several ranged GETs in flight.
//! A RAM miss looks in the disk tier (if configured) before the origin, inside the same
//! single-flight fill; blocks filled from the origin are offered to the disk tier.
//!
//! If the origin turns out to hold another version before any byte was sent, the read starts
//! over once at the new version; after bytes went out it ends with `PreconditionFailed`, because
//! a client must never receive two versions in one read.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use shardcache_proto::{DataChunk, ObjectInfo, ObjectPath, ReadRequest, ReadStart};

use crate::cache::{
    Block, BlockKey, DiskTier, FillSource, Filled, ObjectId, RamTier, VersionCache,
};
use crate::error::{Error, Result};
use crate::origin::{Origin, Version};
use crate::stats::Stats;

/// Chunks bigger than this get their partial-block checksum computed off the async threads.
const INLINE_CRC_LIMIT: usize = 1 << 20;

/// What the transports need from the cache: reads and stats.
pub struct CacheService {
    origins: HashMap<String, Arc<Origin>>,
    ram: RamTier,
    disk: Option<Arc<DiskTier>>,
    versions: VersionCache,
    stats: Arc<Stats>,
    readahead: usize,
    /// Prefetch requests loading in the background at once, server-wide.
    prefetch_slots: Arc<tokio::sync::Semaphore>,
}

/// Prefetch requests that may load in the background at once; more are declined.
const PREFETCH_SLOTS: usize = 4;

/// An accepted read: the version and range, then the chunks in order.
pub struct ReadResponse {
    pub start: ReadStart,
    pub chunks: BoxStream<'static, Result<DataChunk>>,
}

/// Everything one read needs, shared by its block fetches.
struct ReadCtx {
    origin: Arc<Origin>,
    key: String,
    version: Version,
    object: ObjectId,
    start: u64,
    end: u64,
}

impl CacheService {
    pub fn new(
        origins: Vec<Arc<Origin>>,
        ram: RamTier,
        disk: Option<Arc<DiskTier>>,
        versions: VersionCache,
        stats: Arc<Stats>,
        readahead: usize,
    ) -> CacheService {
        let origins = origins
            .into_iter()
            .map(|o| (o.dataset().to_string(), o))
            .collect();
        CacheService {
            origins,
            ram,
            disk,
            versions,
            stats,
            readahead: readahead.max(1),
            prefetch_slots: Arc::new(tokio::sync::Semaphore::new(PREFETCH_SLOTS)),
        }
    }

    /// Load `paths` into the cache in the background, one object after another in the given
    /// order (a loader's upcoming shards). Returns how many were queued: all of them, or 0 when
    /// `PREFETCH_SLOTS` prefetches are already running (a hint is dropped, never queued
    /// without bound).
    pub fn prefetch(self: &Arc<Self>, paths: Vec<String>) -> u32 {
        let Ok(permit) = self.prefetch_slots.clone().try_acquire_owned() else {
            Stats::add(&self.stats.prefetch_declined, paths.len() as u64);
            return 0;
        };
        let accepted = paths.len() as u32;
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
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
                    &this.stats.prefetch_done
                } else {
                    &this.stats.prefetch_failed
                };
                Stats::add(counter, 1);
            }
        });
        accepted
    }

    pub fn disk(&self) -> Option<&Arc<DiskTier>> {
        self.disk.as_ref()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
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

    fn origin(&self, dataset: &str) -> Result<Arc<Origin>> {
        self.origins
            .get(dataset)
            .cloned()
            .ok_or_else(|| Error::UnknownDataset {
                dataset: dataset.to_string(),
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
            let ctx = Arc::new(ReadCtx {
                object: ObjectId::new(path.dataset(), path.key(), &version),
                origin: origin.clone(),
                key: path.key().to_string(),
                version,
                start: req.offset,
                end,
            });
            let bs = origin.settings().block_size;
            let first = ctx.start / bs;
            let last = (ctx.end - 1) / bs;
            // The first block is fetched before answering, so a version change found there
            // restarts the read instead of failing it.
            let head = match self.chunk(&ctx, first).await {
                Ok(chunk) => chunk,
                Err(Error::VersionChanged { .. }) if !restarted && req.if_match.is_none() => {
                    restarted = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let this = self.clone();
            let rest = stream::iter(first + 1..=last)
                .map(move |index| {
                    let this = this.clone();
                    let ctx = ctx.clone();
                    async move { this.chunk(&ctx, index).await }
                })
                .buffered(self.readahead);
            let chunks = stream::once(async { Ok(head) }).chain(rest).boxed();
            return Ok(ReadResponse { start, chunks });
        }
    }

    /// The part of block `index` that falls in the read's range.
    async fn chunk(&self, ctx: &ReadCtx, index: u64) -> Result<DataChunk> {
        let (block, how) = self.block(ctx, index).await?;
        let bs = ctx.origin.settings().block_size;
        let block_start = index * bs;
        let from = ctx.start.max(block_start) - block_start;
        let to = ctx.end.min(block_start + block.len() as u64) - block_start;
        let offset = block_start + from;
        let (bytes, chunks) = match (how, block.source) {
            (Filled::Hit, _) => (&self.stats.served_bytes_ram, &self.stats.served_chunks_ram),
            (_, FillSource::Disk) => (
                &self.stats.served_bytes_disk,
                &self.stats.served_chunks_disk,
            ),
            (_, FillSource::Origin) => (
                &self.stats.served_bytes_origin,
                &self.stats.served_chunks_origin,
            ),
        };
        Stats::add(bytes, to - from);
        Stats::add(chunks, 1);
        if from == 0 && to == block.len() as u64 {
            return Ok(DataChunk {
                offset,
                crc32c: block.crc32c,
                data: block.data,
            });
        }
        let data = block.data.slice(from as usize..to as usize);
        if data.len() <= INLINE_CRC_LIMIT {
            return Ok(DataChunk::new(offset, data));
        }
        tokio::task::spawn_blocking(move || DataChunk::new(offset, data))
            .await
            .map_err(|e| Error::Internal {
                reason: format!("checksum task failed: {e}"),
            })
    }

    /// Block `index` of the read's object version, from RAM or the origin.
    async fn block(&self, ctx: &ReadCtx, index: u64) -> Result<(Block, Filled)> {
        let key = BlockKey {
            object: ctx.object,
            index,
        };
        let bs = ctx.origin.settings().block_size;
        let range = index * bs..((index + 1) * bs).min(ctx.version.size);
        let fill = async {
            if let Some(disk) = &self.disk
                && let Some(block) = disk.get(&key).await
            {
                return Ok(block);
            }
            let data = ctx.origin.get_range(&ctx.key, &ctx.version, range).await?;
            let block = to_block(data).await?;
            if let Some(disk) = &self.disk {
                disk.admit(key, block.clone());
            }
            Ok(block)
        };
        match self.ram.get_or_fill(key, fill).await {
            Ok((block, how)) => {
                let counter = match how {
                    Filled::Hit => &self.stats.ram_hits,
                    Filled::Filled => &self.stats.ram_misses,
                    Filled::Waited => &self.stats.single_flight_waits,
                };
                Stats::add(counter, 1);
                Ok((block, how))
            }
            Err(e) => {
                if matches!(e, Error::VersionChanged { .. }) {
                    self.versions
                        .invalidate(ctx.origin.dataset(), &ctx.key)
                        .await;
                }
                Err(e)
            }
        }
    }
}

/// Checksum a freshly fetched block off the async threads.
async fn to_block(data: Bytes) -> Result<Block> {
    tokio::task::spawn_blocking(move || Block::new(data))
        .await
        .map_err(|e| Error::Internal {
            reason: format!("checksum task failed: {e}"),
        })
}
