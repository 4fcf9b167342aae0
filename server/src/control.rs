//! The control plane (`--control-listen`): a tonic gRPC service over `proto/control.proto`.
//!
//! Any node answers for the whole cluster: it lists objects at the origin itself and sends each
//! block operation to the block's owner (and replicas) as a `PeerBlock` request with mode
//! `Load`, `Check` or `Evict`, or runs it locally when it is the owner. A warm therefore loads
//! each block on its owner straight from the origin (or from a neighbour that already has it),
//! never through the node that was asked, and skips blocks already cached, so running it again
//! after an interruption only loads what is missing.
//!
//! With `--control-token-file`, every call needs `authorization: Bearer <token>`; a missing or
//! wrong token is refused with `Unauthenticated` and a message that says which.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt, stream};
use shardcache_proto::control::control_server::Control;
use shardcache_proto::control::{
    BlockHolders, EvictRequest, EvictResponse, Failure, HealthRequest, HealthResponse, ListRequest,
    ListResponse, ManifestEntry, Member, MembersRequest, MembersResponse, NodeBytes, ObjectEntry,
    StatRequest, StatResponse, WarmProgress, WarmRequest,
};
use shardcache_proto::{BlockState, ErrorCode, ObjectPath, PeerMode};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::cluster::{Candidate, Peer, PeerState};
use crate::error::Error;
use crate::origin::{Origin, Version};
use crate::service::CacheService;

/// Objects one `List`, `Warm` or `Evict` covers at most.
const MAX_OBJECTS: usize = 1_000_000;
/// Objects a warm works on at once, and blocks of each.
const WARM_OBJECTS_AT_ONCE: usize = 4;
const WARM_BLOCKS_AT_ONCE: usize = 8;
/// Warms running at once on one node; more are refused as busy.
const MAX_WARMS: usize = 4;
/// Failures a warm keeps for its next report; more are counted, not kept.
const MAX_QUEUED_FAILURES: usize = 1000;
/// How often a warm reports progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct ControlService {
    service: Arc<CacheService>,
    warms: Arc<tokio::sync::Semaphore>,
}

impl ControlService {
    pub fn new(service: Arc<CacheService>) -> ControlService {
        ControlService {
            service,
            warms: Arc::new(tokio::sync::Semaphore::new(MAX_WARMS)),
        }
    }
}

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<String>>,
}

impl TokenCheck {
    pub fn new(token: Option<String>) -> TokenCheck {
        TokenCheck {
            token: token.map(Arc::new),
        }
    }

    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing bearer token: this control plane requires `authorization: Bearer <token>` (cachectl --token-file)",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "wrong bearer token: the token does not match this control plane's --control-token-file",
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A server error as a gRPC status, with its message.
fn status(e: &Error) -> Status {
    let msg = e.to_string();
    match e.code() {
        ErrorCode::UnknownDataset | ErrorCode::NotFound => Status::not_found(msg),
        ErrorCode::InvalidKey | ErrorCode::BadRequest | ErrorCode::RangeNotSatisfiable => {
            Status::invalid_argument(msg)
        }
        ErrorCode::PreconditionFailed => Status::failed_precondition(msg),
        ErrorCode::Busy | ErrorCode::OriginUnavailable => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

/// `DATASET/PREFIX` split and checked: the dataset must exist; the prefix (possibly empty) must
/// obey the key rules once a trailing `/` is set aside.
fn dataset_prefix(service: &CacheService, path: &str) -> Result<(Arc<Origin>, String), Status> {
    let (dataset, prefix) = path.split_once('/').unwrap_or((path, ""));
    if dataset.is_empty() {
        return Err(Status::invalid_argument(
            "expected DATASET/PREFIX, e.g. imagenet/train/",
        ));
    }
    let origin = service.dataset_origin(dataset).map_err(|e| status(&e))?;
    let trimmed = prefix.trim_end_matches('/');
    if !trimmed.is_empty() {
        ObjectPath::parse(&format!("{dataset}/{trimmed}"))
            .map_err(|e| Status::invalid_argument(format!("prefix {prefix:?}: {e}")))?;
    }
    Ok((origin, prefix.to_string()))
}

/// Objects under a prefix at the origin, sorted by key: `(key, size)`.
async fn list_objects(origin: &Origin, prefix: &str) -> Result<Vec<(String, u64)>, Status> {
    let dir = match prefix.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => Some(object_store::path::Path::from(dir)),
        _ => None,
    };
    let mut listing = origin.store().list(dir.as_ref());
    let mut out = Vec::new();
    while let Some(meta) = listing.try_next().await.map_err(|e| {
        Status::unavailable(format!(
            "cannot list {}/{prefix} at the origin: {e}",
            origin.dataset()
        ))
    })? {
        let key = meta.location.as_ref().to_string();
        if key.starts_with(prefix) {
            out.push((key, meta.size));
            if out.len() > MAX_OBJECTS {
                return Err(Status::resource_exhausted(format!(
                    "more than {MAX_OBJECTS} objects under {}/{prefix}; use a longer prefix",
                    origin.dataset()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A block's placement under way: done, or a chain still travelling.
enum Placement {
    Done(Vec<Placed>),
    Chain(tokio::task::JoinHandle<Vec<Placed>>),
}

/// Where a block operation ran, and what it found.
struct Placed {
    node: String,
    result: Result<BlockState, String>,
}

impl ControlService {
    /// Run `mode` for one block on `targets`.
    async fn on_targets(
        &self,
        origin: &Arc<Origin>,
        key: &str,
        version: &Version,
        index: u64,
        mode: PeerMode,
        targets: &[Candidate],
    ) -> Vec<Placed> {
        let cluster = self.service.cluster();
        let ops = targets.iter().map(|t| async move {
            match t {
                Candidate::Me => Placed {
                    node: cluster.node_id().to_string(),
                    result: self
                        .service
                        .block_op(origin, key, version.clone(), index, mode)
                        .await
                        .map_err(|e| e.to_string()),
                },
                Candidate::Peer(peer) => {
                    let req = CacheService::peer_request(origin, key, version, index, mode);
                    self.on_peer(peer, req).await
                }
            }
        });
        futures::future::join_all(ops).await
    }

    /// Put one block on `targets` through a chain in that order: each target is told the
    /// nodes ahead of it and takes the block from the nearest one, chunk by chunk, while it
    /// arrives there; the head reads the origin. A target that fails is reported and cut out
    /// by the ones behind it.
    async fn chain(
        &self,
        origin: &Arc<Origin>,
        key: &str,
        version: &Version,
        index: u64,
        targets: &[Candidate],
        head_done: tokio::sync::oneshot::Sender<()>,
    ) -> Vec<Placed> {
        let cluster = self.service.cluster();
        let settings = cluster.settings();
        let me = cluster.own_addr();
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
        let addrs = &addrs;
        let chunk = settings.chain_chunk;
        let hops = chain.iter().enumerate().map(|(i, t)| {
            let head_done = if i == 0 { head_done.take() } else { None };
            async move {
                let upstream = addrs[..i].to_vec();
                let placed = match t {
                    Candidate::Me => Placed {
                        node: cluster.node_id().to_string(),
                        result: self
                            .service
                            .chain_op(origin, key, version.clone(), index, upstream, chunk)
                            .await
                            .map_err(|e| e.to_string()),
                    },
                    Candidate::Peer(peer) => {
                        let mut req = CacheService::peer_request(
                            origin,
                            key,
                            version,
                            index,
                            PeerMode::Chain,
                        );
                        req.chunk_size = chunk;
                        req.upstream = upstream;
                        self.on_peer(peer, req).await
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
                self.on_targets(origin, key, version, index, PeerMode::Load, &rest)
                    .await,
            );
        }
        placed
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
        let mut first: Option<BlockState> = None;
        let stats = self.service.stats();
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
            crate::stats::Stats::add(&stats.warm_failed, 1);
            return None;
        };
        s.bytes_done += b.len;
        if b.was_present {
            s.bytes_skipped += b.len;
            crate::stats::Stats::add(&stats.warm_cached, 1);
        } else {
            crate::stats::Stats::add(&stats.warm_loaded, 1);
        }
        Some((b.len, b.crc32c))
    }

    /// One block-state request to a peer.
    async fn on_peer(&self, peer: &Peer, req: shardcache_proto::PeerBlock) -> Placed {
        let settings = self.service.cluster().settings();
        Placed {
            node: peer.name(),
            result: peer
                .block_state(req, settings.fill_timeout, settings.peer_timeout)
                .await
                .map_err(|f| format!("node {}: {}", peer.addr(), f.reason())),
        }
    }

    fn blocks(origin: &Origin, size: u64) -> u64 {
        size.div_ceil(origin.settings().block_size)
    }
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

type WarmStream = Pin<Box<dyn Stream<Item = Result<WarmProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    type WarmStream = WarmStream;

    async fn warm(&self, req: Request<WarmRequest>) -> Result<Response<WarmStream>, Status> {
        let req = req.into_inner();
        let (origin, prefix) = dataset_prefix(&self.service, &req.path)?;
        let permit = self.warms.clone().try_acquire_owned().map_err(|_| {
            Status::unavailable(format!(
                "{MAX_WARMS} warms are running on this node; retry later"
            ))
        })?;
        let objects = list_objects(&origin, &prefix).await?;
        if objects.is_empty() {
            return Err(Status::not_found(format!(
                "no objects under {}/{prefix}",
                origin.dataset()
            )));
        }
        let state = Arc::new(Mutex::new(WarmState {
            objects_total: objects.len() as u64,
            bytes_total: objects.iter().map(|(_, s)| s).sum(),
            with_manifest: req.manifest,
            ..WarmState::default()
        }));
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        let replicas = req.replicas.max(1) as usize;
        let all_nodes = req.all_nodes;
        let detach = req.detach;
        tokio::spawn(async move {
            let _permit = permit;
            let work = stream::iter(objects)
                .map(|(key, _)| {
                    let this = this.clone();
                    let origin = origin.clone();
                    let state = state.clone();
                    async move {
                        this.warm_object(&origin, &key, replicas, all_nodes, &state)
                            .await;
                    }
                })
                .buffer_unordered(WARM_OBJECTS_AT_ONCE)
                .collect::<()>();
            tokio::pin!(work);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                tokio::select! {
                    () = &mut work => break,
                    _ = tick.tick() => {
                        // Never wait on the caller: a report it has not read yet is skipped
                        // (failures stay queued for the next one).
                        let Ok(slot) = tx.try_reserve() else {
                            // The caller went away: stop (running the warm again finishes it),
                            // unless it asked the warm to go on without it.
                            if tx.is_closed() && !detach {
                                state.lock().expect("lock").stopping = true;
                            }
                            continue;
                        };
                        slot.send(Ok(state.lock().expect("lock").progress(false)));
                    }
                }
            }
            let last = state.lock().expect("lock").progress(true);
            // The caller gets a while to take the last report; the warm slot is freed anyway.
            let _ = tokio::time::timeout(Duration::from_secs(60), tx.send(Ok(last))).await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = req.into_inner();
        let (origin, prefix) = dataset_prefix(&self.service, &req.path)?;
        let objects = list_objects(&origin, &prefix).await?;
        let cluster = self.service.cluster();
        let entries = stream::iter(objects)
            .map(|(key, size)| {
                let origin = origin.clone();
                async move {
                    let Ok(version) = self.service.version(&origin, &key).await else {
                        return ObjectEntry {
                            key,
                            size,
                            etag: String::new(),
                            cached_fraction: 0.0,
                        };
                    };
                    let blocks = ControlService::blocks(&origin, version.size);
                    let (origin, key, version) = (&origin, &key, &version);
                    let cached = stream::iter(0..blocks)
                        .map(|index| async move {
                            let bkey = CacheService::block_key(origin, key, version, index);
                            // The owner and its first neighbour: where a block lives.
                            let targets = cluster.candidates(&bkey, 2);
                            self.on_targets(origin, key, version, index, PeerMode::Check, &targets)
                                .await
                                .iter()
                                .any(|p| p.result.as_ref().is_ok_and(|s| s.present))
                        })
                        .buffered(WARM_BLOCKS_AT_ONCE)
                        .filter(|held| std::future::ready(*held))
                        .count()
                        .await as u64;
                    ObjectEntry {
                        key: key.clone(),
                        size: version.size,
                        etag: version.etag.clone(),
                        cached_fraction: if blocks == 0 {
                            1.0
                        } else {
                            cached as f64 / blocks as f64
                        },
                    }
                }
            })
            .buffered(WARM_OBJECTS_AT_ONCE * 2)
            .collect::<Vec<_>>()
            .await;
        Ok(Response::new(ListResponse { objects: entries }))
    }

    async fn stat(&self, req: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let req = req.into_inner();
        let path = ObjectPath::parse(&req.path).map_err(|e| status(&Error::from(e)))?;
        let origin = self
            .service
            .dataset_origin(path.dataset())
            .map_err(|e| status(&e))?;
        let version = self
            .service
            .version(&origin, path.key())
            .await
            .map_err(|e| status(&e))?;
        let cluster = self.service.cluster();
        let everyone = cluster.everyone();
        let bs = origin.settings().block_size;
        let (origin, version_ref, everyone, key) = (&origin, &version, &everyone, path.key());
        let blocks = stream::iter(0..ControlService::blocks(origin, version.size))
            .map(|index| async move {
                let version = version_ref;
                let bkey = CacheService::block_key(origin, key, version, index);
                let owner = match cluster.candidates(&bkey, 1).first() {
                    Some(Candidate::Peer(p)) => p.name(),
                    _ => cluster.node_id().to_string(),
                };
                let found = self
                    .on_targets(origin, key, version, index, PeerMode::Check, everyone)
                    .await;
                BlockHolders {
                    index,
                    length: bs.min(version.size - index * bs),
                    owner,
                    holders: found
                        .into_iter()
                        .filter(|p| p.result.as_ref().is_ok_and(|s| s.present))
                        .map(|p| p.node)
                        .collect(),
                }
            })
            .buffered(WARM_BLOCKS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        Ok(Response::new(StatResponse {
            path: req.path,
            size: version.size,
            etag: version.etag,
            last_modified_ms: version.last_modified_ms,
            block_size: bs as u32,
            blocks,
        }))
    }

    async fn evict(&self, req: Request<EvictRequest>) -> Result<Response<EvictResponse>, Status> {
        let req = req.into_inner();
        let (origin, prefix) = dataset_prefix(&self.service, &req.path)?;
        let objects = list_objects(&origin, &prefix).await?;
        let everyone = self.service.cluster().everyone();
        let mut resp = EvictResponse::default();
        // Members that are not up keep their copies: say so rather than report success.
        for m in self.service.cluster().members() {
            if matches!(m.state, PeerState::Down { .. } | PeerState::Unknown) {
                resp.failures.push(Failure {
                    path: req.path.clone(),
                    message: format!(
                        "node {} is {}: its copies were not evicted",
                        m.addr,
                        m.state.name()
                    ),
                    node: m.addr.clone(),
                });
            }
        }
        for (key, _) in objects {
            resp.objects += 1;
            let version = match self.service.version(&origin, &key).await {
                Ok(v) => v,
                Err(e) => {
                    resp.failures.push(Failure {
                        path: format!("{}/{key}", origin.dataset()),
                        message: e.to_string(),
                        node: String::new(),
                    });
                    continue;
                }
            };
            let (origin, key, version, everyone) = (&origin, &key, &version, &everyone);
            let placed: Vec<Placed> = stream::iter(0..ControlService::blocks(origin, version.size))
                .map(|index| {
                    self.on_targets(origin, key, version, index, PeerMode::Evict, everyone)
                })
                .buffer_unordered(WARM_BLOCKS_AT_ONCE)
                .flat_map(stream::iter)
                .collect()
                .await;
            for placed in placed {
                {
                    match placed.result {
                        Ok(s) if s.was_present => resp.blocks += 1,
                        Ok(_) => {}
                        Err(message) => resp.failures.push(Failure {
                            path: format!("{}/{key}", origin.dataset()),
                            message,
                            node: placed.node,
                        }),
                    }
                }
            }
        }
        Ok(Response::new(resp))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let cluster = self.service.cluster();
        let (disk_used, disk_capacity) = self
            .service
            .disk()
            .map_or((0, 0), |d| (d.used(), d.capacity()));
        let mut members = vec![Member {
            node_id: cluster.node_id().to_string(),
            address: cluster.own_addr().unwrap_or_default(),
            state: "self".into(),
            weight: cluster.weight(),
            ram_used_bytes: self.service.ram().used(),
            ram_capacity_bytes: self.service.ram().capacity(),
            disk_used_bytes: disk_used,
            disk_capacity_bytes: disk_capacity,
            detail: String::new(),
        }];
        for m in cluster.members() {
            if m.state == PeerState::Myself {
                continue;
            }
            let pong = m.last_pong.clone().unwrap_or_default();
            let (node_id, weight, detail) = match &m.state {
                PeerState::Up {
                    node_id, weight, ..
                } => (node_id.clone(), *weight, String::new()),
                PeerState::Down { reason } => (pong.node_id.clone(), pong.weight, reason.clone()),
                _ => (String::new(), 0, "not probed yet".into()),
            };
            members.push(Member {
                node_id,
                address: m.addr,
                state: m.state.name().into(),
                weight,
                ram_used_bytes: pong.ram_used,
                ram_capacity_bytes: pong.ram_capacity,
                disk_used_bytes: pong.disk_used,
                disk_capacity_bytes: pong.disk_capacity,
                detail,
            });
        }
        Ok(Response::new(MembersResponse { members }))
    }

    async fn health(
        &self,
        _req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        let cluster = self.service.cluster();
        let ready = cluster.membership_known();
        Ok(Response::new(HealthResponse {
            ready,
            detail: if ready {
                "ready".into()
            } else {
                "membership not known yet: peers not probed".into()
            },
            node_id: cluster.node_id().to_string(),
            instance: cluster.instance(),
        }))
    }
}

impl ControlService {
    /// Warm one object: every block on its targets; failures and totals go to `state`.
    async fn warm_object(
        &self,
        origin: &Arc<Origin>,
        key: &str,
        replicas: usize,
        all_nodes: bool,
        state: &Mutex<WarmState>,
    ) {
        let fail = |message: String| {
            let mut s = state.lock().expect("lock");
            s.fail(Failure {
                path: format!("{}/{key}", origin.dataset()),
                message,
                node: String::new(),
            });
        };
        if state.lock().expect("lock").stopping {
            return;
        }
        let version = match self.service.version(origin, key).await {
            Ok(v) => v,
            Err(e) => {
                fail(e.to_string());
                state.lock().expect("lock").objects_done += 1;
                return;
            }
        };
        let cluster = self.service.cluster();
        let blocks = ControlService::blocks(origin, version.size);
        // Stage one starts each block's placement and holds a window slot until the block is
        // read from the origin (a chain's head holds it; a single copy is done); stage two
        // waits for the rest of each chain. So the origin is kept busy while the last chunks
        // of earlier blocks travel down their chains.
        let results: Vec<Option<(u64, u32)>> = stream::iter(0..blocks)
            .map(|index| {
                let version = &version;
                async move {
                    if state.lock().expect("lock").stopping {
                        return None;
                    }
                    let bkey = CacheService::block_key(origin, key, version, index);
                    let targets = cluster.chain(&bkey, (!all_nodes).then_some(replicas));
                    if targets.len() > 1 {
                        // Several copies: one chain, the origin read once at its head.
                        let (head_done, head) = tokio::sync::oneshot::channel();
                        let (this, origin, key, version) = (
                            self.clone(),
                            origin.clone(),
                            key.to_string(),
                            version.clone(),
                        );
                        let chain = tokio::spawn(async move {
                            this.chain(&origin, &key, &version, index, &targets, head_done)
                                .await
                        });
                        let _ = head.await;
                        Some((index, Placement::Chain(chain)))
                    } else {
                        let placed = self
                            .on_targets(origin, key, version, index, PeerMode::Load, &targets)
                            .await;
                        Some((index, Placement::Done(placed)))
                    }
                }
            })
            .buffered(WARM_BLOCKS_AT_ONCE)
            .map(|started| async move {
                let (index, placement) = started?;
                let placed = match placement {
                    Placement::Done(placed) => placed,
                    Placement::Chain(chain) => chain.await.unwrap_or_else(|e| {
                        vec![Placed {
                            node: self.service.cluster().node_id().to_string(),
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
}

/// Serve the control plane on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<CacheService>,
    token: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let check = TokenCheck::new(token);
    let control = ControlService::new(service);
    let svc = shardcache_proto::control::control_server::ControlServer::with_interceptor(
        control,
        move |req| check.check(req),
    );
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
}
