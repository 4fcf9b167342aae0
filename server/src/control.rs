//! The control plane (`--control-listen`): a tonic gRPC service over `proto/control.proto`.
//!
//! Any node answers for the whole cluster: it lists objects at the origin itself, and the
//! block operations behind `Warm`, `List`, `Stat` and `Evict` run across the members through
//! [`crate::peer::warm::Operations`]. This module checks requests, lists prefixes, and turns
//! results and errors into gRPC answers.
//!
//! With `--control-token-file`, every call needs `authorization: Bearer <token>`; a missing or
//! wrong token is refused with `Unauthenticated` and a message that says which.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt, TryStreamExt, stream};
use shardcache_proto::control::control_server::Control;
use shardcache_proto::control::{
    EvictRequest, EvictResponse, HealthRequest, HealthResponse, ListRequest, ListResponse, Member,
    MembersRequest, MembersResponse, StatRequest, StatResponse, WarmProgress, WarmRequest,
};
use shardcache_proto::{ErrorCode, ObjectPath};
use tonic::{Request, Response, Status};

use crate::cluster::PeerState;
use crate::error::Error;
use crate::node::Node;
use crate::origin::Origin;
use crate::peer::warm::{MAX_WARMS, Operations, WarmOptions};
use crate::service::CacheService;

/// Objects one `List`, `Warm` or `Evict` covers at most.
const MAX_OBJECTS: usize = 1_000_000;
/// Objects of a listing whose cached fraction is worked out at once.
const LIST_AT_ONCE: usize = 8;

#[derive(Clone)]
pub struct ControlService {
    node: Arc<Node>,
    ops: Arc<Operations>,
}

impl ControlService {
    pub fn new(node: Arc<Node>) -> ControlService {
        let ops = Operations::new(node.peers.clone(), node.cluster.clone());
        ControlService { node, ops }
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
        if crate::access::same_bytes(given.as_bytes(), token.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "wrong bearer token: the token does not match this control plane's --control-token-file",
            ))
        }
    }
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
    let origin = service.origin(dataset).map_err(|e| status(&e))?;
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

type WarmStream = Pin<Box<dyn Stream<Item = Result<WarmProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    type WarmStream = WarmStream;

    async fn warm(&self, req: Request<WarmRequest>) -> Result<Response<WarmStream>, Status> {
        let req = req.into_inner();
        let (origin, prefix) = dataset_prefix(&self.node.service, &req.path)?;
        let slot = self.ops.warm_slot().map_err(|_| {
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
        let opts = WarmOptions {
            replicas: req.replicas.max(1) as usize,
            all_nodes: req.all_nodes,
            detach: req.detach,
            manifest: req.manifest,
        };
        let rx = self.ops.warm(slot, origin, objects, opts);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (Ok(item), rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = req.into_inner();
        let (origin, prefix) = dataset_prefix(&self.node.service, &req.path)?;
        let objects = list_objects(&origin, &prefix).await?;
        let origin = &origin;
        let entries = stream::iter(objects)
            .map(|(key, size)| self.ops.list_entry(origin, key, size))
            .buffered(LIST_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        Ok(Response::new(ListResponse { objects: entries }))
    }

    async fn stat(&self, req: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let req = req.into_inner();
        let service = &self.node.service;
        let path = ObjectPath::parse(&req.path).map_err(|e| status(&Error::from(e)))?;
        let origin = service.origin(path.dataset()).map_err(|e| status(&e))?;
        let version = service
            .version(&origin, path.key())
            .await
            .map_err(|e| status(&e))?;
        let blocks = self.ops.holders(&origin, path.key(), &version).await;
        Ok(Response::new(StatResponse {
            path: req.path,
            size: version.size,
            etag: version.etag,
            last_modified_ms: version.last_modified_ms,
            block_size: origin.settings().block_size as u32,
            blocks,
        }))
    }

    async fn evict(&self, req: Request<EvictRequest>) -> Result<Response<EvictResponse>, Status> {
        let req = req.into_inner();
        let (origin, prefix) = dataset_prefix(&self.node.service, &req.path)?;
        let objects = list_objects(&origin, &prefix).await?;
        Ok(Response::new(
            self.ops.evict(&origin, &req.path, objects).await,
        ))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let (cluster, service) = (&self.node.cluster, &self.node.service);
        let (disk_used, disk_capacity) =
            service.disk().map_or((0, 0), |d| (d.used(), d.capacity()));
        let mut members = vec![Member {
            node_id: cluster.node_id().to_string(),
            address: cluster.own_addr().unwrap_or_default(),
            state: "self".into(),
            weight: cluster.weight(),
            ram_used_bytes: service.ram().used(),
            ram_capacity_bytes: service.ram().capacity(),
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
        let cluster = &self.node.cluster;
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

/// Serve the control plane on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    token: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let check = TokenCheck::new(token);
    let control = ControlService::new(node);
    let svc = shardcache_proto::control::control_server::ControlServer::with_interceptor(
        control,
        move |req| check.check(req),
    );
    // Bounded: calls in flight per connection, and how long one may take to send its request.
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(32)
        .max_concurrent_streams(64)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)));
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
