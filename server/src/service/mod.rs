//! The read path: from a `DATASET/KEY` range to a stream of checksummed chunks.
//!
//! A read pins the object's version first (from the version cache or a HEAD), checks the range,
//! then walks the blocks that cover it: each from the RAM tier, or filled from the origin once
//! however many readers miss it at the same time. Up to `readahead` blocks of one read are
//! fetched ahead of the one being sent, so a cold read keeps several ranged GETs in flight.
//! A RAM miss looks in the disk tier (if configured) before the origin, inside the same
//! single-flight fill; blocks filled from the origin are offered to the disk tier.
//!
//! In a cluster, a block missing here is asked of its owner (weighted rendezvous placement,
//! see [`crate::cluster`]); a node that fills a block itself first asks the block's neighbours
//! (read-neighbour: they held it before a membership change), then reads the origin. A peer
//! that fails, stalls or sends bad bytes is skipped: the next candidate, and finally this node
//! itself, fills the block, so losing a node is never an error to a client. Requests from
//! peers to fill a block are served from this node's tiers, neighbours or origin and never
//! forwarded again, so members that briefly disagree on placement cannot loop.
//!
//! If the origin turns out to hold another version before any byte was sent, the read starts
//! over once at the new version; after bytes went out it ends with `PreconditionFailed`, because
//! a client must never receive two versions in one read.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::stream::{self, BoxStream, StreamExt};
use shardcache_proto::{
    BlockState, DataChunk, ErrorCode, ObjectInfo, ObjectPath, PeerBlock, PeerMode, ReadRequest,
    ReadStart,
};

use crate::cache::{
    Block, BlockKey, DiskTier, FillSource, Filled, ObjectId, RamTier, VersionCache,
};
use crate::cluster::{Candidate, Cluster, Peer, PeerFailure};
use crate::distribute::Growing;
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
    cluster: Arc<Cluster>,
    /// Peer-only requests need a member certificate (a cluster CA is configured).
    peer_auth_required: bool,
    /// Chain fills in flight, by block: a block is filled once however it is asked for.
    chains: std::sync::Mutex<HashMap<BlockKey, Arc<Growing>>>,
    /// Bounds the chain fills in flight (each buffers up to a block).
    chain_slots: Arc<tokio::sync::Semaphore>,
    /// The control plane's bound address, told to clients that ask who this server is.
    control_addr: std::sync::OnceLock<Option<std::net::SocketAddr>>,
}

/// Owners (and their successors when they fail) a node asks before filling a block itself.
const MAX_FILL_TRIES: usize = 3;

/// Chain fills in flight at once unless set (`set_chain_fills`; the server uses
/// `origin_concurrency`: a chain fill is a fill, each buffers up to a block).
const DEFAULT_CHAIN_FILLS: usize = 64;

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
    /// A peer asked this node to fill the block: never forward it again.
    for_peer: bool,
}

mod chain;

pub use chain::{MAX_CHAIN_CHUNK, MIN_CHAIN_CHUNK};

impl CacheService {
    pub fn new(
        origins: Vec<Arc<Origin>>,
        ram: RamTier,
        disk: Option<Arc<DiskTier>>,
        versions: VersionCache,
        stats: Arc<Stats>,
        readahead: usize,
        cluster: Arc<Cluster>,
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
            cluster,
            peer_auth_required: false,
            chains: std::sync::Mutex::new(HashMap::new()),
            chain_slots: Arc::new(tokio::sync::Semaphore::new(DEFAULT_CHAIN_FILLS)),
            control_addr: std::sync::OnceLock::new(),
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

    /// Bound the chain fills in flight (each buffers up to a block).
    pub fn set_chain_fills(&mut self, n: usize) {
        self.chain_slots = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
    }

    /// Accept peer-only requests only from connections authenticated by the cluster CA.
    pub fn require_peer_certificates(&mut self) {
        self.peer_auth_required = true;
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Record where the control plane listens (once, when the server starts).
    pub fn set_control_addr(&self, addr: Option<std::net::SocketAddr>) {
        let _ = self.control_addr.set(addr);
    }

    pub fn control_addr(&self) -> Option<std::net::SocketAddr> {
        self.control_addr.get().copied().flatten()
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
                for_peer: false,
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
            (_, FillSource::Peer | FillSource::Neighbour | FillSource::Chain) => (
                &self.stats.served_bytes_peer,
                &self.stats.served_chunks_peer,
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

    /// Block `index` of the read's object version: from RAM, disk, a peer, or the origin.
    async fn block(&self, ctx: &ReadCtx, index: u64) -> Result<(Block, Filled)> {
        let key = BlockKey {
            object: ctx.object,
            index,
        };
        let bs = ctx.origin.settings().block_size;
        let range = index * bs..((index + 1) * bs).min(ctx.version.size);
        let fill = async {
            // A chain is bringing the block here: wait for it rather than fetch it twice.
            if let Some(g) = self.chain_fill(&key)
                && g.wait().await.is_ok()
                && let Some(block) = g.block()
            {
                return Ok(block);
            }
            if let Some(disk) = &self.disk
                && let Some(block) = disk.get(&key).await
            {
                return Ok(block);
            }
            if let Some(block) = self.ask_peers(ctx, &key).await? {
                // Taken from a neighbour, the block is now this node's to hold; a copy from its
                // owner stays in RAM only.
                if block.source == FillSource::Neighbour
                    && let Some(disk) = &self.disk
                {
                    disk.admit(key, block.clone());
                }
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
                if how == Filled::Filled
                    && block.source == FillSource::Peer
                    && !self.cluster.settings().keep_copies
                {
                    self.ram.invalidate(&key).await;
                }
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

impl CacheService {
    /// The block from another member (`FillSource::Peer` from its owner, `Neighbour` from a
    /// neighbour while this node fills it), or `None` when this node should read the origin.
    async fn ask_peers(&self, ctx: &ReadCtx, key: &BlockKey) -> Result<Option<Block>> {
        let settings = self.cluster.settings();
        let plan = self
            .cluster
            .candidates(key, MAX_FILL_TRIES + settings.read_neighbours + 1);
        // Alone, or first in line: fill here. (A node of weight 0 is in no plan, so it still
        // asks the owner.)
        if matches!(plan.as_slice(), [] | [Candidate::Me]) {
            return Ok(None);
        }
        let request =
            |mode| Self::peer_request(&ctx.origin, &ctx.key, &ctx.version, key.index, mode);
        let mut asked: Vec<&Arc<Peer>> = Vec::new();
        if !ctx.for_peer {
            for candidate in plan.iter().take(MAX_FILL_TRIES) {
                let Candidate::Peer(peer) = candidate else {
                    break;
                };
                asked.push(peer);
                match peer
                    .block(
                        request(PeerMode::Fill),
                        settings.fill_timeout,
                        settings.peer_timeout,
                    )
                    .await
                {
                    Ok(block) => {
                        Stats::add(&self.stats.peer_fill_ok, 1);
                        return Ok(Some(block));
                    }
                    Err(PeerFailure::Answer { code, message }) => {
                        Stats::add(&self.stats.peer_fill_failed, 1);
                        return Err(relayed(ctx, code, message, peer.addr()));
                    }
                    Err(failure) => {
                        Stats::add(&self.stats.peer_fill_failed, 1);
                        let (reason, down) = match failure {
                            PeerFailure::Unavailable { reason } => (reason, true),
                            PeerFailure::Corrupt { reason } => {
                                Stats::add(&self.stats.checksum_failures, 1);
                                (reason, true)
                            }
                            PeerFailure::Declined { reason } => (reason, false),
                            PeerFailure::Miss | PeerFailure::Answer { .. } => {
                                ("did not fill the block".to_string(), false)
                            }
                        };
                        // A dead owner is worth a warning; a busy one is routine.
                        if down {
                            tracing::warn!(
                                peer = peer.addr(),
                                reason,
                                "owner did not deliver a block; trying the next candidate"
                            );
                        } else {
                            tracing::debug!(
                                peer = peer.addr(),
                                reason,
                                "owner declined a block; trying the next candidate"
                            );
                        }
                        if down {
                            self.cluster.report_failure(peer, &reason);
                        }
                    }
                }
            }
        }
        // This node fills the block: its neighbours may hold it from before a membership change.
        let mut probes: FuturesUnordered<_> = plan
            .iter()
            .filter_map(|c| match c {
                Candidate::Peer(p) if !asked.iter().any(|a| Arc::ptr_eq(a, p)) => Some(p),
                _ => None,
            })
            .take(settings.read_neighbours)
            .map(|peer| async move {
                let r = peer
                    .block(
                        request(PeerMode::Probe),
                        settings.peer_timeout * 4,
                        settings.peer_timeout,
                    )
                    .await;
                (peer, r)
            })
            .collect();
        while let Some((peer, result)) = probes.next().await {
            match result {
                Ok(block) => {
                    Stats::add(&self.stats.peer_probe_hit, 1);
                    return Ok(Some(Block {
                        source: FillSource::Neighbour,
                        ..block
                    }));
                }
                Err(PeerFailure::Miss) => Stats::add(&self.stats.peer_probe_miss, 1),
                Err(PeerFailure::Answer { .. }) => Stats::add(&self.stats.peer_probe_miss, 1),
                Err(PeerFailure::Corrupt { reason }) => {
                    Stats::add(&self.stats.peer_probe_failed, 1);
                    Stats::add(&self.stats.checksum_failures, 1);
                    tracing::warn!(peer = peer.addr(), reason, "neighbour sent a damaged block");
                    self.cluster.report_failure(peer, &reason);
                }
                Err(PeerFailure::Unavailable { reason }) => {
                    Stats::add(&self.stats.peer_probe_failed, 1);
                    tracing::debug!(peer = peer.addr(), reason, "neighbour probe failed");
                    self.cluster.report_failure(peer, &reason);
                }
                Err(PeerFailure::Declined { reason }) => {
                    Stats::add(&self.stats.peer_probe_failed, 1);
                    tracing::debug!(peer = peer.addr(), reason, "neighbour probe failed");
                }
            }
        }
        Ok(None)
    }

    /// Serve a block to a peer: from this node's tiers only (`Probe`), or as its holder
    /// (`Fill`: tiers, neighbours, origin; never forwarded to another owner); or report on it
    /// (`Load`, `Check`, `Evict`: see [`CacheService::block_op`]).
    pub async fn peer_block(self: &Arc<Self>, req: PeerBlock) -> Result<PeerAnswer> {
        let path = ObjectPath::parse(&req.path)?;
        let origin = self.origin(path.dataset())?;
        let bs = origin.settings().block_size;
        if u64::from(req.block_size) != bs {
            return Err(Error::BadRequest {
                reason: format!(
                    "members disagree on the block size of dataset {}: {bs} here, {} at the asker",
                    path.dataset(),
                    req.block_size
                ),
            });
        }
        let version = Version {
            size: req.size,
            etag: req.etag.clone(),
            last_modified_ms: req.last_modified_ms,
        };
        let ctx = Self::one_block(origin, path.key(), version, req.index)?;
        let block = match req.mode {
            PeerMode::Chain => {
                Stats::add(&self.stats.peer_served_chain, 1);
                return self
                    .chain_load(ctx, req.index, req.upstream, req.chunk_size)
                    .await
                    .map(PeerAnswer::State);
            }
            PeerMode::Stream => {
                Stats::add(&self.stats.peer_served_stream, 1);
                return self.chain_stream(ctx, &req).await.map(PeerAnswer::Stream);
            }
            PeerMode::Load | PeerMode::Check | PeerMode::Evict => {
                return self
                    .block_state(&ctx, req.index, req.mode)
                    .await
                    .map(PeerAnswer::State);
            }
            PeerMode::Probe => {
                Stats::add(&self.stats.peer_served_probe, 1);
                let key = BlockKey {
                    object: ctx.object,
                    index: req.index,
                };
                let mut found = self.ram.get(&key).await;
                if found.is_none()
                    && let Some(disk) = &self.disk
                {
                    found = disk.get(&key).await;
                }
                found.ok_or(Error::NotCached)?
            }
            PeerMode::Fill => {
                Stats::add(&self.stats.peer_served_fill, 1);
                self.block(&ctx, req.index).await?.0
            }
        };
        Ok(PeerAnswer::Data(DataChunk {
            offset: ctx.start,
            crc32c: block.crc32c,
            data: block.data,
        }))
    }

    /// The context of one whole block of one version, filled on behalf of a peer or the control
    /// plane (so never forwarded to another owner). The range is checked here: sizes and
    /// indices come from other nodes.
    fn one_block(origin: Arc<Origin>, key: &str, version: Version, index: u64) -> Result<ReadCtx> {
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
        Ok(ReadCtx {
            object: ObjectId::new(origin.dataset(), key, &version),
            key: key.to_string(),
            end: (start + bs).min(version.size),
            start,
            version,
            origin,
            for_peer: true,
        })
    }

    /// The request that asks a peer about block `index` of one version of an object.
    pub fn peer_request(
        origin: &Origin,
        key: &str,
        version: &Version,
        index: u64,
        mode: PeerMode,
    ) -> PeerBlock {
        PeerBlock {
            path: format!("{}/{key}", origin.dataset()),
            etag: version.etag.clone(),
            size: version.size,
            last_modified_ms: version.last_modified_ms,
            block_size: origin.settings().block_size as u32,
            index,
            mode,
            chunk_size: 0,
            offset: 0,
            upstream: Vec::new(),
        }
    }

    /// The origin of a dataset, for the control plane.
    pub fn dataset_origin(&self, dataset: &str) -> Result<Arc<Origin>> {
        self.origin(dataset)
    }

    /// An object's current version, for the control plane.
    pub async fn version(&self, origin: &Origin, key: &str) -> Result<Version> {
        self.versions.get(origin, key).await
    }

    /// The key of block `index` of one version of an object.
    pub fn block_key(origin: &Origin, key: &str, version: &Version, index: u64) -> BlockKey {
        BlockKey {
            object: ObjectId::new(origin.dataset(), key, version),
            index,
        }
    }

    /// This node's part of warming, inspecting and evicting: `Load` makes sure the block is
    /// held here (filled from neighbours or the origin when missing, never from a forwarded
    /// owner), `Check` says whether it is, `Evict` drops it from RAM and disk.
    pub async fn block_op(
        &self,
        origin: &Arc<Origin>,
        key: &str,
        version: Version,
        index: u64,
        mode: PeerMode,
    ) -> Result<BlockState> {
        let ctx = Self::one_block(origin.clone(), key, version, index)?;
        self.block_state(&ctx, index, mode).await
    }

    async fn block_state(&self, ctx: &ReadCtx, index: u64, mode: PeerMode) -> Result<BlockState> {
        let len = ctx.end - ctx.start;
        let bkey = BlockKey {
            object: ctx.object,
            index,
        };
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

    /// This node's part of a chain (the warming node is in the chain): hold the block, taking
    /// it from `upstream`, the chain's head first.
    pub async fn chain_op(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        key: &str,
        version: Version,
        index: u64,
        upstream: Vec<String>,
        chunk_size: u32,
    ) -> Result<BlockState> {
        let ctx = Self::one_block(origin.clone(), key, version, index)?;
        self.chain_load(ctx, index, upstream, chunk_size).await
    }

    /// Whether a connection may send peer-only requests: with a cluster CA, only members that
    /// proved themselves with a certificate; otherwise connections from member addresses.
    pub fn peer_allowed(&self, remote: &crate::transport::Remote) -> Result<()> {
        let allowed = if self.peer_auth_required {
            remote.authenticated
        } else {
            remote.authenticated || remote.ip.is_some_and(|ip| self.cluster.is_member_ip(ip))
        };
        if allowed {
            return Ok(());
        }
        Stats::add(&self.stats.peer_refused, 1);
        let reason = if self.peer_auth_required {
            format!(
                "{} presented no certificate signed by the cluster CA; block requests between members need one (QUIC with --tls-cert/--tls-key signed by --tls-ca)",
                remote.name
            )
        } else {
            format!(
                "{} is not a cluster member (not an address in --peers, --peers-file or --peer-dns); block requests between members only",
                remote.name
            )
        };
        Err(Error::Forbidden { reason })
    }
}

/// What a node answers to a peer's block request.
pub enum PeerAnswer {
    Data(DataChunk),
    State(BlockState),
    /// A chain stream: chunks while they arrive.
    Stream(BoxStream<'static, Result<DataChunk>>),
}

/// A definitive error from the peer that owns a block, as this node's own error.
fn relayed(ctx: &ReadCtx, code: ErrorCode, message: String, peer: &str) -> Error {
    match code {
        // The read path restarts at the new version on this one.
        ErrorCode::PreconditionFailed => Error::VersionChanged {
            dataset: ctx.origin.dataset().to_string(),
            key: ctx.key.clone(),
            expected: ctx.version.etag.clone(),
            found: format!("another version (reported by peer {peer})"),
        },
        code => Error::Relayed {
            code,
            message,
            peer: peer.to_string(),
        },
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
