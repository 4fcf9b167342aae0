//! The read path's source order, with a scripted [`RemoteSource`] in place of the cluster, a
//! real disk tier in a temporary directory, and an in-memory origin.

use std::sync::Mutex;
use std::time::Duration;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shardcache_proto::ErrorCode;
use tokio::sync::Semaphore;

use super::*;
use crate::cache::DiskConfig;
use crate::cache::TierMetrics;
use crate::cache::policy::PolicyKind;
use crate::origin::{DatasetSettings, OriginMetrics, RetryPolicy};
use crate::stats::Registry;

const BS: u64 = 8;
const BODY: &[u8] = b"0123456789abcdefghij"; // three blocks of 8, 8, 4

/// What the scripted cluster does when asked.
#[derive(Clone)]
enum Answer {
    /// Nothing elsewhere: read the origin.
    Nothing,
    /// A block from another member, with this source.
    Block(FillSource),
    /// A definitive error relayed from the owner.
    Fails,
}

/// A cluster that answers from a script and writes down what it was asked, in order.
struct Scripted {
    chain: Option<Block>,
    answer: Answer,
    asked: Mutex<Vec<&'static str>>,
}

#[async_trait::async_trait]
impl RemoteSource for Scripted {
    async fn in_flight(&self, _key: &BlockKey) -> Option<Block> {
        self.asked.lock().unwrap().push("chain");
        self.chain.clone()
    }

    async fn fetch(&self, ctx: &BlockCtx, key: &BlockKey) -> Result<Option<Block>> {
        self.asked.lock().unwrap().push("cluster");
        let bs = ctx.origin.settings().block_size as usize;
        let at = key.index as usize * bs;
        let data = Bytes::copy_from_slice(&BODY[at..(at + bs).min(BODY.len())]);
        match &self.answer {
            Answer::Nothing => Ok(None),
            Answer::Block(source) => Ok(Some(Block {
                source: *source,
                ..Block::new(data)
            })),
            Answer::Fails => Err(Error::Relayed {
                code: ErrorCode::OriginUnavailable,
                message: "the origin failed at the owner".into(),
                peer: "10.0.0.2:7070".into(),
            }),
        }
    }
}

/// The metrics of one fixture's parts, in one registry.
struct Counters {
    origin: Arc<OriginMetrics>,
    tiers: Arc<TierMetrics>,
    read: Arc<ReadMetrics>,
}

fn counters() -> Counters {
    let r = Registry::new();
    Counters {
        origin: Arc::new(OriginMetrics::new(&r)),
        tiers: Arc::new(TierMetrics::new(&r)),
        read: Arc::new(ReadMetrics::new(&r)),
    }
}

struct Fixture {
    service: Arc<CacheService>,
    remote: Arc<Scripted>,
    stats: Counters,
    _dir: tempfile::TempDir,
}

async fn fixture(remote: Scripted, keep_copies: bool) -> Fixture {
    let store = InMemory::new();
    store
        .put(&Path::from("shard"), PutPayload::from_static(BODY))
        .await
        .unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let stats = counters();
    let origin = Origin::new(
        "ds",
        store,
        DatasetSettings {
            block_size: BS,
            metadata_ttl: Duration::from_secs(30),
            immutable: false,
            stale_if_error: Duration::ZERO,
        },
        RetryPolicy::default(),
        Arc::new(Semaphore::new(4)),
        stats.origin.clone(),
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskTier::open(
        &DiskConfig {
            root: dir.path().to_path_buf(),
            budget: 1 << 20,
            policy: PolicyKind::Lru,
            block_size: BS,
            write_queue: 4,
        },
        stats.tiers.clone(),
    )
    .map(Arc::new)
    .unwrap();
    let remote = Arc::new(remote);
    let service = Arc::new(CacheService::new(
        vec![Arc::new(origin)],
        Tiers {
            ram: RamTier::new(1 << 20, stats.tiers.ram_evictions.clone()),
            disk: Some(disk.clone()),
            versions: VersionCache::new(100, Some(disk)),
        },
        stats.read.clone(),
        2,
        keep_copies,
        remote.clone(),
    ));
    Fixture {
        service,
        remote,
        stats,
        _dir: dir,
    }
}

fn scripted(answer: Answer) -> Scripted {
    Scripted {
        chain: None,
        answer,
        asked: Mutex::new(Vec::new()),
    }
}

async fn read_all(service: &Arc<CacheService>, path: &str) -> Result<Vec<u8>> {
    let mut resp = service
        .read(ReadRequest {
            path: path.into(),
            offset: 0,
            length: None,
            if_match: None,
        })
        .await?;
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunks.next().await {
        let chunk = chunk?;
        assert!(
            chunk.verify(),
            "chunk at {} fails its checksum",
            chunk.offset
        );
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Wait until the disk tier has written `key` (writes run in the background).
async fn disk_holds(f: &Fixture, key: &BlockKey) {
    let disk = f.service.disk().unwrap().clone();
    for _ in 0..200 {
        if disk.contains(key) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the disk tier never wrote block {}", key.index);
}

async fn first_block(f: &Fixture) -> BlockKey {
    let origin = f.service.origin("ds").unwrap();
    let version = f.service.version(&origin, "shard").await.unwrap();
    ObjectId::new("ds", "shard", &version, origin.settings().block_size).block(0)
}

#[test]
fn the_order_is_ram_disk_chain_owner_neighbours_origin() {
    assert_eq!(
        sources::ORDER,
        [
            Source::Ram,
            Source::Disk,
            Source::ChainInFlight,
            Source::Owner,
            Source::Neighbours,
            Source::Origin
        ]
    );
}

#[tokio::test]
async fn a_cold_block_asks_the_chain_then_the_cluster_then_reads_the_origin() {
    let f = fixture(scripted(Answer::Nothing), true).await;
    assert_eq!(read_all(&f.service, "ds/shard").await.unwrap(), BODY);
    // Three blocks, each: a chain in flight?, then the cluster, then the origin.
    assert_eq!(
        *f.remote.asked.lock().unwrap(),
        ["chain", "cluster", "chain", "cluster", "chain", "cluster"]
    );
    assert_eq!(f.stats.origin.get_requests.get(), 3);
    // Filled from the origin, each block is offered to the disk tier.
    disk_holds(&f, &first_block(&f).await).await;

    // Again: RAM has every block; nobody else is asked, the origin is not read.
    f.remote.asked.lock().unwrap().clear();
    assert_eq!(read_all(&f.service, "ds/shard").await.unwrap(), BODY);
    assert!(f.remote.asked.lock().unwrap().is_empty());
    assert_eq!(f.stats.origin.get_requests.get(), 3);
    assert_eq!(f.stats.read.ram_hits.get(), 3);
}

#[tokio::test]
async fn the_disk_tier_answers_before_the_cluster() {
    let f = fixture(scripted(Answer::Nothing), true).await;
    read_all(&f.service, "ds/shard").await.unwrap();
    let key = first_block(&f).await;
    disk_holds(&f, &key).await;
    // Out of RAM, still on disk.
    f.service.ram.invalidate(&key).await;
    f.remote.asked.lock().unwrap().clear();
    let ctx = BlockCtx::whole_block(
        f.service.origin("ds").unwrap(),
        "shard",
        f.service
            .version(&f.service.origin("ds").unwrap(), "shard")
            .await
            .unwrap(),
        0,
    )
    .unwrap();
    let (block, how) = f.service.block(&ctx, 0).await.unwrap();
    assert_eq!(how, Filled::Filled);
    assert_eq!(block.source, FillSource::Disk);
    assert_eq!(&block.data[..], &BODY[..8]);
    assert!(f.remote.asked.lock().unwrap().is_empty());
    assert_eq!(f.stats.origin.get_requests.get(), 3);
}

#[tokio::test]
async fn a_chain_in_flight_is_waited_for_instead_of_asking_anyone() {
    let remote = Scripted {
        chain: Some(Block {
            source: FillSource::Chain,
            ..Block::new(Bytes::from_static(&BODY[..8]))
        }),
        ..scripted(Answer::Nothing)
    };
    let f = fixture(remote, true).await;
    let version = f
        .service
        .version(&f.service.origin("ds").unwrap(), "shard")
        .await
        .unwrap();
    let ctx = BlockCtx::whole_block(f.service.origin("ds").unwrap(), "shard", version, 0).unwrap();
    let (block, _) = f.service.block(&ctx, 0).await.unwrap();
    assert_eq!(block.source, FillSource::Chain);
    assert_eq!(*f.remote.asked.lock().unwrap(), ["chain"]);
    assert_eq!(f.stats.origin.get_requests.get(), 0);
}

#[tokio::test]
async fn an_owners_copy_stays_out_of_ram_unless_copies_are_kept() {
    for keep in [false, true] {
        let f = fixture(scripted(Answer::Block(FillSource::Peer)), keep).await;
        assert_eq!(read_all(&f.service, "ds/shard").await.unwrap(), BODY);
        assert_eq!(f.stats.origin.get_requests.get(), 0);
        let key = first_block(&f).await;
        assert_eq!(f.service.ram.contains(&key), keep, "keep_copies = {keep}");
        // An owner's copy is never this node's to hold on disk.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!f.service.disk().unwrap().contains(&key));
    }
}

#[tokio::test]
async fn a_neighbours_copy_is_held_here_on_disk() {
    let f = fixture(scripted(Answer::Block(FillSource::Neighbour)), false).await;
    assert_eq!(read_all(&f.service, "ds/shard").await.unwrap(), BODY);
    assert_eq!(f.stats.origin.get_requests.get(), 0);
    let key = first_block(&f).await;
    assert!(f.service.ram.contains(&key));
    disk_holds(&f, &key).await;
}

#[tokio::test]
async fn a_definitive_answer_from_the_owner_fails_the_read_without_the_origin() {
    let f = fixture(scripted(Answer::Fails), true).await;
    let err = read_all(&f.service, "ds/shard").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::OriginUnavailable);
    assert!(err.to_string().contains("10.0.0.2:7070"), "{err}");
    assert_eq!(f.stats.origin.get_requests.get(), 0);
}

#[tokio::test]
async fn alone_every_miss_reads_the_origin() {
    let store = InMemory::new();
    store
        .put(&Path::from("shard"), PutPayload::from_static(BODY))
        .await
        .unwrap();
    let stats = counters();
    let origin = Origin::new(
        "ds",
        Arc::new(store),
        DatasetSettings {
            block_size: BS,
            metadata_ttl: Duration::from_secs(30),
            immutable: false,
            stale_if_error: Duration::ZERO,
        },
        RetryPolicy::default(),
        Arc::new(Semaphore::new(4)),
        stats.origin.clone(),
    );
    let service = Arc::new(CacheService::new(
        vec![Arc::new(origin)],
        Tiers {
            ram: RamTier::new(1 << 20, stats.tiers.ram_evictions.clone()),
            disk: None,
            versions: VersionCache::new(100, None),
        },
        stats.read.clone(),
        2,
        true,
        Arc::new(Alone),
    ));
    assert_eq!(read_all(&service, "ds/shard").await.unwrap(), BODY);
    assert_eq!(stats.origin.get_requests.get(), 3);
}
