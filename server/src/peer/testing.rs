//! Scripted peers and membership for the tests of cross-node decisions: each [`FakeLink`]
//! answers from a queue and writes down what it was asked; [`FakeMembers`] is a fixed placement.
//! Logic tests only: the protocol over real sockets is tested in the `tests` crate.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use shardcache_proto::{BlockState, Frame, PeerBlock, PeerMode};
use tokio::sync::{Semaphore, watch};

use super::{Members, Timeouts};
use crate::cache::TierMetrics;
use crate::cache::{Block, BlockKey, RamTier, VersionCache};
use crate::cluster::{FrameStream, PeerFailure, PeerLink};
use crate::origin::OriginMetrics;
use crate::origin::{DatasetSettings, Origin, RetryPolicy};
use crate::peer::PeerMetrics;
use crate::service::ReadMetrics;
use crate::service::{Alone, CacheService, Tiers};
use crate::stats::Registry;

/// One scripted answer to a `Stream` request: these frames, then the end of the stream.
pub type Streamed = Result<Vec<Frame>, PeerFailure>;

/// A peer that answers from queues. An empty block queue answers `Miss`; an empty stream queue
/// answers `Unavailable`.
pub struct FakeLink {
    addr: String,
    down: AtomicBool,
    down_tx: watch::Sender<bool>,
    blocks: Mutex<VecDeque<Result<Block, PeerFailure>>>,
    streams: Mutex<VecDeque<Streamed>>,
    /// Every request, in order: its mode and offset.
    pub asked: Mutex<Vec<(PeerMode, u64)>>,
}

impl FakeLink {
    pub fn new(addr: &str) -> Arc<FakeLink> {
        Arc::new(FakeLink {
            addr: addr.to_string(),
            down: AtomicBool::new(false),
            down_tx: watch::channel(false).0,
            blocks: Mutex::default(),
            streams: Mutex::default(),
            asked: Mutex::default(),
        })
    }

    pub fn answer_block(&self, answer: Result<Block, PeerFailure>) -> &Self {
        self.blocks.lock().unwrap().push_back(answer);
        self
    }

    pub fn answer_stream(&self, answer: Streamed) -> &Self {
        self.streams.lock().unwrap().push_back(answer);
        self
    }

    pub fn set_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.down_tx.send_replace(true);
    }

    pub fn modes(&self) -> Vec<PeerMode> {
        self.asked.lock().unwrap().iter().map(|(m, _)| *m).collect()
    }

    fn note(&self, req: &PeerBlock) {
        self.asked.lock().unwrap().push((req.mode, req.offset));
    }
}

#[async_trait::async_trait]
impl PeerLink for FakeLink {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn name(&self) -> String {
        self.addr.clone()
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    fn marked_down(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.down_tx.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|d| *d).await;
        })
    }

    async fn block(
        &self,
        req: PeerBlock,
        _deadline: Duration,
        _connect: Duration,
    ) -> Result<Block, PeerFailure> {
        self.note(&req);
        self.blocks
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err(PeerFailure::Miss))
    }

    async fn block_state(
        &self,
        req: PeerBlock,
        _deadline: Duration,
        _connect: Duration,
    ) -> Result<BlockState, PeerFailure> {
        self.note(&req);
        Err(PeerFailure::Declined {
            reason: "block states are not scripted".into(),
        })
    }

    async fn stream(
        &self,
        req: PeerBlock,
        _idle: Duration,
        _connect: Duration,
    ) -> Result<FrameStream, PeerFailure> {
        self.note(&req);
        let answer = self
            .streams
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| {
                Err(PeerFailure::Unavailable {
                    reason: "no stream scripted".into(),
                })
            })?;
        Ok(Box::pin(stream::iter(answer.into_iter().map(Ok))))
    }
}

/// A fixed membership: `plan` is every block's placement (`None` is this node).
pub struct FakeMembers {
    pub plan: Vec<Option<Arc<FakeLink>>>,
    /// Members that are not in the plan but may be named (chain upstreams).
    pub others: Vec<Arc<FakeLink>>,
    pub own: Option<String>,
    pub member_ips: Vec<IpAddr>,
    /// `(address, reason)` of every peer reported failed.
    pub reported: Mutex<Vec<(String, String)>>,
}

impl FakeMembers {
    pub fn new(plan: Vec<Option<Arc<FakeLink>>>) -> Arc<FakeMembers> {
        Arc::new(FakeMembers {
            plan,
            others: Vec::new(),
            own: Some("127.0.0.1:7000".into()),
            member_ips: Vec::new(),
            reported: Mutex::default(),
        })
    }

    pub fn reported(&self) -> Vec<String> {
        self.reported
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    fn all(&self) -> impl Iterator<Item = &Arc<FakeLink>> {
        self.plan.iter().flatten().chain(&self.others)
    }
}

impl Members for FakeMembers {
    fn candidates(&self, _key: &BlockKey, limit: usize) -> Vec<Option<Arc<dyn PeerLink>>> {
        self.plan
            .iter()
            .take(limit)
            .map(|c| c.clone().map(|l| l as Arc<dyn PeerLink>))
            .collect()
    }

    fn link(&self, addr: &str) -> Option<Arc<dyn PeerLink>> {
        self.all()
            .find(|l| l.addr() == addr)
            .map(|l| l.clone() as Arc<dyn PeerLink>)
    }

    fn own_addr(&self) -> Option<String> {
        self.own.clone()
    }

    fn is_member_ip(&self, ip: IpAddr) -> bool {
        self.member_ips.contains(&ip)
    }

    fn report_failure(&self, link: &dyn PeerLink, reason: &str) {
        self.reported
            .lock()
            .unwrap()
            .push((link.addr().to_string(), reason.to_string()));
        if let Some(l) = self.all().find(|l| l.addr() == link.addr()) {
            l.set_down();
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            peer: Duration::from_millis(500),
            fill: Duration::from_secs(2),
            read_neighbours: 2,
            chain_chunk: 64 * 1024,
        }
    }
}

/// The metrics of the parts a test builds, in one registry.
pub struct Counters {
    pub registry: Registry,
    pub origin: Arc<OriginMetrics>,
    pub tiers: Arc<TierMetrics>,
    pub read: Arc<ReadMetrics>,
    pub peer: Arc<PeerMetrics>,
}

impl Counters {
    pub fn new() -> Arc<Counters> {
        let registry = Registry::new();
        Arc::new(Counters {
            origin: Arc::new(OriginMetrics::new(&registry)),
            tiers: Arc::new(TierMetrics::new(&registry)),
            read: Arc::new(ReadMetrics::new(&registry)),
            peer: Arc::new(PeerMetrics::new(&registry)),
            registry,
        })
    }
}

/// An origin of dataset `ds` holding `shard` = `body`, in blocks of `block_size`.
pub async fn origin(body: &[u8], block_size: u64, stats: &Counters) -> Arc<Origin> {
    let store = InMemory::new();
    store
        .put(
            &Path::from("shard"),
            PutPayload::from(Bytes::copy_from_slice(body)),
        )
        .await
        .unwrap();
    Arc::new(Origin::new(
        "ds",
        Arc::new(store),
        DatasetSettings {
            block_size,
            metadata_ttl: Duration::from_secs(30),
            immutable: false,
            stale_if_error: Duration::ZERO,
        },
        RetryPolicy::default(),
        Arc::new(Semaphore::new(4)),
        stats.origin.clone(),
    ))
}

/// A read path over `origin` with a RAM tier and no other members.
pub fn service(origin: Arc<Origin>, stats: &Counters) -> Arc<CacheService> {
    Arc::new(CacheService::new(
        vec![origin],
        Tiers {
            ram: RamTier::new(64 << 20, stats.tiers.ram_evictions.clone()),
            disk: None,
            versions: VersionCache::new(100, None),
        },
        stats.read.clone(),
        2,
        true,
        Arc::new(Alone),
    ))
}
