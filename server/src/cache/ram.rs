//! The RAM tier: a byte-weighted moka cache with a hard budget, and single-flight fills.
//!
//! Concurrent misses of one block coalesce: the first starts the fill in a task of its own,
//! which stores the block and ends on its own; every reader of the block (the first included)
//! waits for that task's result, success or error. So no reader's connection carries a fill: a
//! reader that stops reading, or goes away, delays nobody else's copy of the block and holds no
//! origin or peer permit. moka applies evictions in batches, so usage can run ahead of the
//! budget by the blocks inserted since the last batch; `run_pending_tasks` is called after each
//! fill to keep that window small.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use moka::future::Cache;
use moka::notification::RemovalCause;
use prometheus::IntCounter;

use super::{Block, BlockKey};
use crate::error::Error;

/// How a block was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Already in RAM.
    Hit,
    /// This call ran the fill.
    Filled,
    /// Another reader's fill was in flight; this call waited for it.
    Waited,
    /// Filled ahead of its first reader (readahead, [`RamTier::warm`]), and this call is that
    /// first reader: the block came from its source, not from an earlier read.
    Ahead,
}

/// Blocks filled ahead that the cache did not keep are held up to `capacity / PARKED_SHARE`.
const PARKED_SHARE: u64 = 16;

/// A fill in its own task, awaited by every reader of the block.
type InFlight = Shared<BoxFuture<'static, Result<Block, Error>>>;

/// A fill started ahead of its reader (or found in flight), to wait for without taking the
/// block.
pub struct Warming(InFlight);

impl Warming {
    /// Wait for the fill to end: its error, or `Ok` once the block is stored.
    pub async fn done(self) -> Result<(), Error> {
        self.0.await.map(drop)
    }
}

/// Takes a fill out of the in-flight table when its task ends.
struct Leave {
    table: Arc<Mutex<HashMap<BlockKey, InFlight>>>,
    key: BlockKey,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Ok(mut table) = self.table.lock() {
            table.remove(&self.key);
        }
    }
}

#[derive(Clone)]
pub struct RamTier {
    cache: Cache<BlockKey, Block>,
    capacity: u64,
    fills: Arc<Mutex<HashMap<BlockKey, InFlight>>>,
    /// Blocks filled by [`RamTier::warm`] that no reader has taken yet (each leaves when it is
    /// taken or removed from the cache, so this never outgrows the cache).
    ahead: Arc<Mutex<HashSet<BlockKey>>>,
    /// Blocks filled ahead that the cache turned away or pushed out before their reader came.
    parked: Arc<Mutex<Parked>>,
}

/// Blocks filled ahead of their reader that the cache did not keep (its admission turned them
/// away, or it evicted them first), held until taken, within a budget of their own: the oldest
/// leave first. Without it a readahead under memory pressure would fetch every block twice.
struct Parked {
    blocks: HashMap<BlockKey, Block>,
    order: VecDeque<BlockKey>,
    bytes: u64,
    limit: u64,
}

impl Parked {
    fn park(&mut self, key: BlockKey, block: Block) {
        let len = block.len() as u64;
        if len > self.limit {
            return;
        }
        while self.bytes + len > self.limit {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.take(&old);
        }
        if let Some(old) = self.blocks.insert(key, block) {
            self.bytes -= old.len() as u64;
        }
        self.bytes += len;
        self.order.push_back(key);
        // Taken blocks leave `order` lazily: drop their keys before they outnumber the rest.
        if self.order.len() > 2 * self.blocks.len() + 64 {
            let blocks = &self.blocks;
            self.order.retain(|k| blocks.contains_key(k));
        }
    }

    fn take(&mut self, key: &BlockKey) -> Option<Block> {
        let block = self.blocks.remove(key)?;
        self.bytes -= block.len() as u64;
        Some(block)
    }
}

impl RamTier {
    /// A tier of `capacity` bytes; `evictions` counts blocks dropped to stay within it.
    pub fn new(capacity: u64, evictions: IntCounter) -> RamTier {
        let ahead = Arc::new(Mutex::new(HashSet::new()));
        let parked = Arc::new(Mutex::new(Parked {
            blocks: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            limit: capacity / PARKED_SHARE,
        }));
        let (gone, park) = (Arc::clone(&ahead), Arc::clone(&parked));
        let cache = Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &BlockKey, b: &Block| u32::try_from(b.len()).unwrap_or(u32::MAX))
            .eviction_listener(move |k: Arc<BlockKey>, block: Block, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
                let unread = cause != RemovalCause::Replaced
                    && gone.lock().map(|mut a| a.remove(&*k)).unwrap_or(false);
                if unread
                    && cause == RemovalCause::Size
                    && let Ok(mut parked) = park.lock()
                {
                    parked.park(*k, block);
                }
            })
            .build();
        RamTier {
            cache,
            capacity,
            fills: Arc::new(Mutex::new(HashMap::new())),
            ahead,
            parked,
        }
    }

    /// Hold at most `limit` bytes of blocks filled ahead that the cache did not keep (by
    /// default `capacity / 16`).
    pub fn parking(self, limit: u64) -> RamTier {
        self.parked.lock().expect("lock").limit = limit;
        self
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now (approximate until pending maintenance has run).
    pub fn used(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub async fn get(&self, key: &BlockKey) -> Option<Block> {
        self.cache.get(key).await
    }

    /// The block, from RAM or from `fill`, with concurrent misses sharing one fill. The fill
    /// runs in a task of its own and stores the block itself, so it finishes whether or not
    /// this caller (or any other) keeps waiting for it.
    pub async fn get_or_fill<F>(&self, key: BlockKey, fill: F) -> Result<(Block, Filled), Error>
    where
        F: Future<Output = Result<Block, Error>> + Send + 'static,
    {
        if let Some(block) = self.cache.get(&key).await {
            return Ok((block, self.taken(&key)));
        }
        if let Some(block) = self.parked.lock().expect("lock").take(&key) {
            return Ok((block, Filled::Ahead));
        }
        let (waiting, how) = {
            let mut fills = self.fills.lock().expect("lock");
            match fills.get(&key) {
                Some(f) => (Some(f.clone()), Filled::Waited),
                // Stored between the lookup above and now: its fill has ended.
                None if self.cache.contains_key(&key) => (None, Filled::Hit),
                None => (
                    Some(self.start(&mut fills, key, fill, false)),
                    Filled::Filled,
                ),
            }
        };
        match waiting {
            Some(fill) => {
                let block = fill.await?;
                // A readahead's fill, now taken by this reader.
                self.taken(&key);
                Ok((block, how))
            }
            None => match self.cache.get(&key).await {
                Some(block) => Ok((block, self.taken(&key))),
                // Evicted between the two lookups: rare, and retryable.
                None => Err(Error::Busy {
                    what: "a block evicted as soon as it was filled",
                }),
            },
        }
    }

    /// Start filling a block ahead of its reader, unless it is held or already being filled:
    /// the fill (made by `fill` only then) runs in its own task like any other, and the block
    /// it stores is marked so that its first reader gets [`Filled::Ahead`]. Returns the fill in
    /// flight (this one, or one already running), `None` when the block is held; `started`
    /// says whether a fill was started.
    pub fn warm<F, M>(&self, key: BlockKey, fill: M) -> (Option<Warming>, bool)
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<Block, Error>> + Send + 'static,
    {
        if self.cache.contains_key(&key)
            || self.parked.lock().expect("lock").blocks.contains_key(&key)
        {
            return (None, false);
        }
        let mut fills = self.fills.lock().expect("lock");
        match fills.get(&key) {
            Some(f) => (Some(Warming(f.clone())), false),
            None if self.cache.contains_key(&key) => (None, false),
            None => (
                Some(Warming(self.start(&mut fills, key, fill(), true))),
                true,
            ),
        }
    }

    /// How a held block is taken: [`Filled::Ahead`] for the first reader of a readahead's
    /// block, else a hit.
    fn taken(&self, key: &BlockKey) -> Filled {
        let mut ahead = self.ahead.lock().expect("lock");
        if !ahead.is_empty() && ahead.remove(key) {
            Filled::Ahead
        } else {
            Filled::Hit
        }
    }

    /// Spawn the fill of `key` and enter it in the table (whose lock the caller holds).
    fn start<F>(
        &self,
        fills: &mut HashMap<BlockKey, InFlight>,
        key: BlockKey,
        fill: F,
        ahead: bool,
    ) -> InFlight
    where
        F: Future<Output = Result<Block, Error>> + Send + 'static,
    {
        let (cache, table, marks) = (self.cache.clone(), self.fills.clone(), self.ahead.clone());
        let task = tokio::spawn(async move {
            // Leaves the table however the fill ends, a panic included, after the block is
            // stored: a later miss finds one or the other.
            let _leave = Leave { table, key };
            let result = fill.await;
            if let Ok(block) = &result {
                if ahead && let Ok(mut marks) = marks.lock() {
                    marks.insert(key);
                }
                cache.insert(key, block.clone()).await;
                cache.run_pending_tasks().await;
            }
            result
        });
        let shared = async move {
            task.await.unwrap_or_else(|e| {
                Err(Error::Internal {
                    reason: format!("block fill task failed: {e}"),
                })
            })
        }
        .boxed()
        .shared();
        fills.insert(key, shared.clone());
        shared
    }

    /// Fills running now (for tests and the memory bound: each holds up to one block).
    pub fn fills_in_flight(&self) -> usize {
        self.fills.lock().expect("lock").len()
    }

    /// Store a block filled outside the single flight (a chain fill).
    pub async fn insert(&self, key: BlockKey, block: Block) {
        self.cache.insert(key, block).await;
        self.cache.run_pending_tasks().await;
    }

    /// Whether the block is held, without counting as a use (eviction order is untouched).
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.cache.contains_key(key)
    }

    pub async fn invalidate(&self, key: &BlockKey) {
        self.parked.lock().expect("lock").take(key);
        self.cache.invalidate(key).await;
    }

    /// Bytes of blocks filled ahead and held outside the cache until taken (at most the
    /// [`RamTier::parking`] limit).
    pub fn parked(&self) -> u64 {
        self.parked.lock().expect("lock").bytes
    }

    /// Flip a bit in every held block, keeping their CRCs: memory damage, for tests of the
    /// checks that must catch it. Returns how many blocks were damaged.
    #[doc(hidden)]
    pub async fn damage_all_for_tests(&self) -> usize {
        let held: Vec<(BlockKey, Block)> = self
            .cache
            .iter()
            .map(|(k, b)| (*k, b.damaged_copy()))
            .collect();
        for (key, block) in &held {
            self.cache.insert(*key, block.clone()).await;
        }
        self.cache.run_pending_tasks().await;
        held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjectId;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn key(i: u64) -> BlockKey {
        BlockKey {
            object: ObjectId([7; 16]),
            index: i,
        }
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fill() {
        let tier = RamTier::new(1 << 20, IntCounter::new("t", "t").unwrap());
        let fills = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let tier = tier.clone();
            let fills = fills.clone();
            tasks.push(tokio::spawn(async move {
                tier.get_or_fill(key(1), async move {
                    fills.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    Ok(Block::new(Bytes::from_static(b"block")))
                })
                .await
                .unwrap()
            }));
        }
        let mut filled = 0;
        for t in tasks {
            let (block, how) = t.await.unwrap();
            assert_eq!(&block.data[..], b"block");
            filled += usize::from(how == Filled::Filled);
        }
        assert_eq!(fills.load(Ordering::SeqCst), 1);
        assert_eq!(filled, 1);
    }

    /// A fill of `data` that ends when the sender is used.
    fn gated(
        data: &'static [u8],
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        impl Future<Output = Result<Block, Error>> + Send + 'static,
    ) {
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        (release, async move {
            let _ = gate.await;
            Ok(Block::new(Bytes::from_static(data)))
        })
    }

    #[tokio::test]
    async fn a_caller_that_stops_waiting_holds_up_no_one() {
        let tier = RamTier::new(1 << 20, IntCounter::new("t", "t").unwrap());
        let (release, fill) = gated(b"shared");
        // The first caller starts the fill, then is never polled again (a reader that stopped
        // reading: its connection handler is stuck on a full socket).
        let first = tier.get_or_fill(key(3), fill);
        let mut first = Box::pin(first);
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert_eq!(tier.fills_in_flight(), 1);
        // Another reader of the same block gets it as soon as the fill ends.
        let tier2 = tier.clone();
        let second = tokio::spawn(async move {
            tier2
                .get_or_fill(key(3), async { panic!("the fill in flight is shared") })
                .await
        });
        release.send(()).unwrap();
        let (block, how) = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("not held up by the stalled caller")
            .unwrap()
            .unwrap();
        assert_eq!(&block.data[..], b"shared");
        assert_ne!(how, Filled::Filled, "it did not fill the block again");
        // The fill stored the block and left by itself.
        assert_eq!(tier.fills_in_flight(), 0);
        assert!(tier.contains(&key(3)));
        drop(first);
        // Dropping the caller cancels nothing either: a fill runs to its end.
        let (release, fill) = gated(b"kept");
        let gone = tier.get_or_fill(key(4), fill);
        let mut gone = Box::pin(gone);
        assert!(futures::poll!(gone.as_mut()).is_pending());
        drop(gone);
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !tier.contains(&key(4)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the fill was cancelled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_fill_that_panics_is_forgotten() {
        let tier = RamTier::new(1 << 20, IntCounter::new("t", "t").unwrap());
        let e = tier
            .get_or_fill(key(5), async { panic!("a bug in a fill") })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("fill task failed"), "{e}");
        assert_eq!(tier.fills_in_flight(), 0);
        let (_, how) = tier
            .get_or_fill(key(5), async { Ok(Block::new(Bytes::from_static(b"y"))) })
            .await
            .unwrap();
        assert_eq!(how, Filled::Filled);
    }

    #[tokio::test]
    async fn failed_fill_is_shared_then_forgotten() {
        let tier = RamTier::new(1 << 20, IntCounter::new("t", "t").unwrap());
        let e = tier
            .get_or_fill(key(2), async { Err(Error::Busy { what: "test" }) })
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Busy { .. }));
        let (_, how) = tier
            .get_or_fill(key(2), async { Ok(Block::new(Bytes::from_static(b"x"))) })
            .await
            .unwrap();
        assert_eq!(how, Filled::Filled);
    }

    #[tokio::test]
    async fn blocks_filled_ahead_reach_their_reader_once_under_pressure() {
        // Room for 64 blocks, and 4 parked.
        let tier = RamTier::new(256 * 1024, IntCounter::new("t", "t").unwrap());
        let block = || async { Ok(Block::new(Bytes::from(vec![1u8; 4096]))) };
        // A full cache of blocks read twice, which its admission prefers to new ones.
        for i in 0..64 {
            for _ in 0..2 {
                tier.get_or_fill(key(i), block()).await.unwrap();
            }
        }
        let fills = Arc::new(AtomicU32::new(0));
        for i in 100..104 {
            let fills = fills.clone();
            let (warming, started) = tier.warm(key(i), || async move {
                fills.fetch_add(1, Ordering::SeqCst);
                Ok(Block::new(Bytes::from(vec![2u8; 4096])))
            });
            assert!(started);
            warming.unwrap().done().await.unwrap();
        }
        tier.cache.run_pending_tasks().await;
        let kept = (100..104).filter(|&i| tier.contains(&key(i))).count() as u64;
        assert_eq!(
            tier.parked(),
            (4 - kept) * 4096,
            "what the cache did not keep is parked"
        );
        assert!(kept < 4, "the cache turned new blocks away");
        for i in 100..104 {
            let (got, how) = tier
                .get_or_fill(key(i), async { panic!("filled twice") })
                .await
                .unwrap();
            assert_eq!(how, Filled::Ahead, "block {i}");
            assert_eq!(got.data[0], 2);
        }
        assert_eq!(fills.load(Ordering::SeqCst), 4);
        assert_eq!(tier.parked(), 0, "taken blocks leave the parked set");
        // Parking and taking many more leaves no trail behind.
        for i in 0..1000 {
            tier.parked
                .lock()
                .unwrap()
                .park(key(10_000 + i), Block::new(Bytes::from(vec![4u8; 4096])));
            tier.parked.lock().unwrap().take(&key(10_000 + i));
        }
        assert!(tier.parked.lock().unwrap().order.len() <= 64 + 1);
        // A second read of a block filled ahead is an ordinary hit.
        let (_, how) = tier.get_or_fill(key(1), block()).await.unwrap();
        assert_eq!(how, Filled::Hit);
    }

    #[tokio::test]
    async fn parked_blocks_stay_within_their_budget() {
        let tier = RamTier::new(64 * 1024, IntCounter::new("t", "t").unwrap());
        for i in 0..64 {
            let (warming, _) = tier.warm(key(i), || async {
                Ok(Block::new(Bytes::from(vec![3u8; 4096])))
            });
            warming.unwrap().done().await.unwrap();
        }
        tier.cache.run_pending_tasks().await;
        assert!(tier.used() <= 64 * 1024);
        assert!(
            tier.parked() <= 64 * 1024 / PARKED_SHARE,
            "{}",
            tier.parked()
        );
    }

    #[tokio::test]
    async fn budget_holds_after_maintenance() {
        let evictions = IntCounter::new("t", "t").unwrap();
        let tier = RamTier::new(64 * 1024, evictions.clone());
        for i in 0..64 {
            tier.get_or_fill(key(i), async {
                Ok(Block::new(Bytes::from(vec![0u8; 4096])))
            })
            .await
            .unwrap();
        }
        tier.cache.run_pending_tasks().await;
        assert!(tier.used() <= 64 * 1024, "used {}", tier.used());
        assert!(tier.used() > 0);
        assert!(
            evictions.get() >= 48,
            "evictions counted: {}",
            evictions.get()
        );
    }
}
