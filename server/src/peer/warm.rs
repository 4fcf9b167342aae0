//! Cluster-wide block operations, run by whichever node the control plane asked: warming a
//! list of objects here, finding and evicting copies in [`super::inspect`].
//!
//! Each block operation goes to the block's owner (and replicas) as a `PeerBlock` request with
//! mode `Load`, `Check` or `Evict`, or runs here when this node is a target. A warm therefore
//! loads each block on its owner straight from the origin (or from a neighbour that already has
//! it), never through the node that was asked, and skips blocks already cached, so running it
//! again after an interruption only loads what is missing. A block warmed onto several nodes
//! travels down one chain (`super::chain`): the origin is read once, at its head.
//!
//! What the control plane lists and how it answers (gRPC, tokens) is `crate::control`'s; this
//! module is the work behind it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use shardcache_proto::control::{Failure, ManifestEntry, NodeBytes, WarmProgress};
use shardcache_proto::{BlockState, PeerBlock, PeerMode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::metrics::PeerMetrics;
use super::request;
use super::serve::PeerServer;
use crate::cache::ObjectId;
use crate::cluster::{Candidate, Cluster, PeerLink};
use crate::error::{Error, Result};
use crate::origin::{Origin, Version};

/// Objects a warm works on at once, and blocks of each.
const WARM_OBJECTS_AT_ONCE: usize = 4;
const WARM_BLOCKS_AT_ONCE: usize = 8;
/// Warms running at once on one node; more are refused as busy.
pub const MAX_WARMS: usize = 4;
/// Failures a warm keeps for its next report; more are counted, not kept.
const MAX_QUEUED_FAILURES: usize = 1000;
/// How often a warm reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long a warm that ended waits for its caller to take the last report.
const LAST_REPORT_WAIT: Duration = Duration::from_secs(60);

/// What a warm is asked to do besides loading every block once.
#[derive(Debug, Clone, Copy)]
pub struct WarmOptions {
    /// Copies of each block (its owner and the next nodes in placement order).
    pub replicas: usize,
    /// A copy on every member that is up (a replica count of "all").
    pub all_nodes: bool,
    /// Go on when the caller goes away (otherwise a warm stops starting new blocks).
    pub detach: bool,
    /// Collect each object's size, ETag and CRC32C for the last report.
    pub manifest: bool,
}

/// The cluster-wide operations one node runs for the control plane.
pub struct Operations {
    pub(super) peers: Arc<PeerServer>,
    pub(super) cluster: Arc<Cluster>,
    warms: Arc<Semaphore>,
}

/// A block's placement under way: done, or a chain still travelling.
enum Placement {
    Done(Vec<Placed>),
    Chain(tokio::task::JoinHandle<Vec<Placed>>),
}

/// Where a block operation ran, and what it found.
pub(super) struct Placed {
    pub(super) node: String,
    pub(super) result: Result<BlockState, String>,
}

impl Operations {
    pub fn new(peers: Arc<PeerServer>, cluster: Arc<Cluster>) -> Arc<Operations> {
        Arc::new(Operations {
            peers,
            cluster,
            warms: Arc::new(Semaphore::new(MAX_WARMS)),
        })
    }

    fn metrics(&self) -> &PeerMetrics {
        &self.peers.metrics
    }

    /// A slot for one more warm on this node, or `Busy` when [`MAX_WARMS`] are running.
    pub fn warm_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.warms
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Busy {
                what: "the warms this node runs at once are running",
            })
    }

    /// Warm `objects` (`(key, size)`, as listed) in the background; progress reports arrive on
    /// the receiver every [`PROGRESS_EVERY`], the last with `done` set. A report the caller has
    /// not taken yet is skipped, never queued (failures wait for the next one).
    pub fn warm(
        self: &Arc<Self>,
        slot: OwnedSemaphorePermit,
        origin: Arc<Origin>,
        objects: Vec<(String, u64)>,
        opts: WarmOptions,
    ) -> mpsc::Receiver<WarmProgress> {
        let state = Arc::new(Mutex::new(WarmState {
            objects_total: objects.len() as u64,
            bytes_total: objects.iter().map(|(_, s)| s).sum(),
            with_manifest: opts.manifest,
            ..WarmState::default()
        }));
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let work = stream::iter(objects)
                .map(|(key, _)| {
                    let (this, origin, state) = (this.clone(), origin.clone(), state.clone());
                    async move { this.warm_object(&origin, &key, opts, &state).await }
                })
                .buffer_unordered(WARM_OBJECTS_AT_ONCE)
                .collect::<()>();
            tokio::pin!(work);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tokio::select! {
                    () = &mut work => break,
                    _ = tick.tick() => {
                        let Ok(report) = tx.try_reserve() else {
                            // The caller went away: stop (running the warm again finishes
                            // it), unless it asked the warm to go on without it.
                            if tx.is_closed() && !opts.detach {
                                state.lock().expect("lock").stopping = true;
                            }
                            continue;
                        };
                        report.send(state.lock().expect("lock").progress(false));
                    }
                }
            }
            let last = state.lock().expect("lock").progress(true);
            let _ = tokio::time::timeout(LAST_REPORT_WAIT, tx.send(last)).await;
        });
        rx
    }

    /// Run `mode` for one block on `targets`.
    pub(super) async fn on_targets(
        &self,
        origin: &Arc<Origin>,
        key: &str,
        version: &Version,
        index: u64,
        mode: PeerMode,
        targets: &[Candidate],
    ) -> Vec<Placed> {
        let ops = targets.iter().map(|t| async move {
            match t.link() {
                None => Placed {
                    node: self.cluster.node_id().to_string(),
                    result: self
                        .peers
                        .block_op(origin, key, version.clone(), index, mode)
                        .await
                        .map_err(|e| e.to_string()),
                },
                Some(link) => {
                    let req = request(origin, key, version, index, mode);
                    self.on_peer(link.as_ref(), req).await
                }
            }
        });
        futures::future::join_all(ops).await
    }

    /// Put one block on `targets` through a chain in that order: each target is told the
    /// nodes ahead of it and takes the block from the nearest one, chunk by chunk, while it
    /// arrives there; the head reads the origin. A target that fails is reported and cut out
    /// by the ones behind it. `head_done` fires once the head has the block (or failed).
    async fn chain(
        self: Arc<Self>,
        origin: Arc<Origin>,
        key: String,
        version: Version,
        index: u64,
        targets: Vec<Candidate>,
        head_done: tokio::sync::oneshot::Sender<()>,
    ) -> Vec<Placed> {
        let me = self.cluster.own_addr();
        let chunk = self.peers.members.timeouts().chain_chunk;
        let mut head_done = Some(head_done);
        // This node can be in the chain only if the others can name it.
        let (chain, rest): (Vec<&Candidate>, Vec<&Candidate>) = targets
            .iter()
            .partition(|t| me.is_some() || !matches!(t, Candidate::Me));
        let addrs: Vec<String> = chain
            .iter()
            .map(|t| match t {
                Candidate::Me => me.clone().unwrap_or_default(),
                Candidate::Peer(p) => p.addr().to_string(),
            })
            .collect();
        let (addrs, origin_ref, key_ref, version_ref) = (&addrs, &origin, &key, &version);
        let hops = chain.iter().enumerate().map(|(i, t)| {
            let head_done = if i == 0 { head_done.take() } else { None };
            let this = &self;
            async move {
                let upstream = addrs[..i].to_vec();
                let placed = match t.link() {
                    None => Placed {
                        node: this.cluster.node_id().to_string(),
                        result: this
                            .peers
                            .chain_op(
                                origin_ref,
                                key_ref,
                                version_ref.clone(),
                                index,
                                upstream,
                                chunk,
                            )
                            .await
                            .map_err(|e| e.to_string()),
                    },
                    Some(link) => {
                        let mut req =
                            request(origin_ref, key_ref, version_ref, index, PeerMode::Chain);
                        req.chunk_size = chunk;
                        req.upstream = upstream;
                        this.on_peer(link.as_ref(), req).await
                    }
                };
                // The head has read the block from the origin (or failed): the warm may start
                // the next one while this one travels on.
                if let Some(tx) = head_done {
                    let _ = tx.send(());
                }
                placed
            }
        });
        let mut placed = futures::future::join_all(hops).await;
        if !rest.is_empty() {
            let rest: Vec<Candidate> = rest.into_iter().cloned().collect();
            placed.extend(
                self.on_targets(&origin, &key, &version, index, PeerMode::Load, &rest)
                    .await,
            );
        }
        placed
    }

    /// One block-state request to a peer.
    async fn on_peer(&self, link: &dyn PeerLink, req: PeerBlock) -> Placed {
        let t = self.peers.members.timeouts();
        Placed {
            node: link.name(),
            result: link
                .block_state(req, t.fill, t.peer)
                .await
                .map_err(|f| format!("node {}: {}", link.addr(), f.reason())),
        }
    }

    /// Warm one object: every block on its targets; failures and totals go to `state`.
    async fn warm_object(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        key: &str,
        opts: WarmOptions,
        state: &Mutex<WarmState>,
    ) {
        if state.lock().expect("lock").stopping {
            return;
        }
        let version = match self.peers.service.version(origin, key).await {
            Ok(v) => v,
            Err(e) => {
                let mut s = state.lock().expect("lock");
                s.fail(Failure {
                    path: format!("{}/{key}", origin.dataset()),
                    message: e.to_string(),
                    node: String::new(),
                });
                s.objects_done += 1;
                return;
            }
        };
        let replicas = (!opts.all_nodes).then_some(opts.replicas.max(1));
        // Stage one starts each block's placement and holds a window slot until the block is
        // read from the origin (a chain's head holds it; a single copy is done); stage two
        // waits for the rest of each chain. So the origin is kept busy while the last chunks
        // of earlier blocks travel down their chains.
        let version_ref = &version;
        let object = ObjectId::of(origin, key, &version);
        let results: Vec<Option<(u64, u32)>> = stream::iter(0..blocks(origin, version.size))
            .map(|index| async move {
                if state.lock().expect("lock").stopping {
                    return None;
                }
                let bkey = object.block(index);
                let targets = self.cluster.chain(&bkey, replicas);
                if targets.len() > 1 {
                    // Several copies: one chain, the origin read once at its head.
                    let (head_done, head) = tokio::sync::oneshot::channel();
                    let chain = tokio::spawn(self.clone().chain(
                        origin.clone(),
                        key.to_string(),
                        version_ref.clone(),
                        index,
                        targets,
                        head_done,
                    ));
                    let _ = head.await;
                    Some((index, Placement::Chain(chain)))
                } else {
                    let placed = self
                        .on_targets(origin, key, version_ref, index, PeerMode::Load, &targets)
                        .await;
                    Some((index, Placement::Done(placed)))
                }
            })
            .buffered(WARM_BLOCKS_AT_ONCE)
            .map(|started| async move {
                let (index, placement) = started?;
                let placed = match placement {
                    Placement::Done(placed) => placed,
                    Placement::Chain(chain) => chain.await.unwrap_or_else(|e| {
                        vec![Placed {
                            node: self.cluster.node_id().to_string(),
                            result: Err(format!("chain task failed: {e}")),
                        }]
                    }),
                };
                self.account(origin, key, index, placed, state)
            })
            .buffered(WARM_BLOCKS_AT_ONCE)
            .collect()
            .await;
        let mut s = state.lock().expect("lock");
        s.objects_done += 1;
        // The whole object's CRC32C from its blocks', when every block made it.
        if s.with_manifest && results.iter().all(Option::is_some) {
            let crc = results.iter().flatten().fold(0u32, |acc, (len, crc)| {
                crc32c::crc32c_combine(acc, *crc, *len as usize)
            });
            s.manifest.push(ManifestEntry {
                key: key.to_string(),
                size: version.size,
                etag: version.etag.clone(),
                crc32c: crc,
            });
        }
    }

    /// Add one block's placements to the warm's totals; its length and CRC32C when it is held
    /// somewhere.
    fn account(
        &self,
        origin: &Origin,
        key: &str,
        index: u64,
        placed: Vec<Placed>,
        state: &Mutex<WarmState>,
    ) -> Option<(u64, u32)> {
        let stats = self.metrics();
        let mut first: Option<BlockState> = None;
        let mut s = state.lock().expect("lock");
        for p in placed {
            match p.result {
                Ok(b) => {
                    *s.nodes.entry(p.node).or_default() += b.len;
                    first.get_or_insert(b);
                }
                Err(message) => s.fail(Failure {
                    path: format!("{}/{key}", origin.dataset()),
                    message: format!("block {index}: {message}"),
                    node: p.node,
                }),
            }
        }
        let Some(b) = first else {
            stats.warm_failed.inc();
            return None;
        };
        s.bytes_done += b.len;
        if b.was_present {
            s.bytes_skipped += b.len;
            stats.warm_cached.inc();
        } else {
            stats.warm_loaded.inc();
        }
        Some((b.len, b.crc32c))
    }
}

/// The number of blocks of an object of `size` bytes.
pub(super) fn blocks(origin: &Origin, size: u64) -> u64 {
    size.div_ceil(origin.settings().block_size)
}

/// A warm's running totals.
#[derive(Default)]
struct WarmState {
    objects_total: u64,
    objects_done: u64,
    bytes_total: u64,
    bytes_done: u64,
    bytes_skipped: u64,
    nodes: BTreeMap<String, u64>,
    /// Failures not yet reported (at most `MAX_QUEUED_FAILURES`; the rest are counted).
    failures: Vec<Failure>,
    failures_dropped: u64,
    /// Collect the manifest (the caller asked for one).
    with_manifest: bool,
    manifest: Vec<ManifestEntry>,
    /// The caller went away: start nothing new, let what runs finish (so no fetched block is
    /// thrown away before it is stored).
    stopping: bool,
}

impl WarmState {
    /// Queue a failure for the next report. A caller that is not reading (a detached warm)
    /// and a node that fails every block cannot make the queue grow without bound.
    fn fail(&mut self, failure: Failure) {
        if self.failures.len() < MAX_QUEUED_FAILURES {
            self.failures.push(failure);
        } else {
            self.failures_dropped += 1;
        }
    }

    fn progress(&mut self, done: bool) -> WarmProgress {
        let mut failures = std::mem::take(&mut self.failures);
        if self.failures_dropped > 0 {
            failures.push(Failure {
                path: String::new(),
                message: format!(
                    "{} more failures not listed (more than {MAX_QUEUED_FAILURES} between two reports)",
                    self.failures_dropped
                ),
                node: String::new(),
            });
            self.failures_dropped = 0;
        }
        WarmProgress {
            objects_total: self.objects_total,
            objects_done: self.objects_done,
            bytes_total: self.bytes_total,
            bytes_done: self.bytes_done,
            bytes_skipped: self.bytes_skipped,
            nodes: self
                .nodes
                .iter()
                .map(|(node_id, bytes)| NodeBytes {
                    node_id: node_id.clone(),
                    bytes: *bytes,
                })
                .collect(),
            failures,
            done,
            manifest: if done && self.with_manifest {
                std::mem::take(&mut self.manifest)
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(n: usize) -> Failure {
        Failure {
            path: format!("d/k{n}"),
            message: "x".into(),
            node: String::new(),
        }
    }

    #[test]
    fn failures_between_reports_are_bounded_and_counted() {
        let mut s = WarmState::default();
        for n in 0..MAX_QUEUED_FAILURES + 5 {
            s.fail(failure(n));
        }
        let p = s.progress(false);
        assert_eq!(p.failures.len(), MAX_QUEUED_FAILURES + 1);
        assert!(
            p.failures
                .last()
                .unwrap()
                .message
                .starts_with("5 more failures")
        );
        // Reported failures are not reported again.
        assert!(s.progress(false).failures.is_empty());
    }

    #[test]
    fn the_manifest_comes_with_the_last_report_only() {
        let mut s = WarmState {
            with_manifest: true,
            ..WarmState::default()
        };
        s.manifest.push(ManifestEntry::default());
        assert!(s.progress(false).manifest.is_empty());
        assert_eq!(s.progress(true).manifest.len(), 1);
    }
}
