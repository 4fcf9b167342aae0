//! Answering other members: a block from this node's tiers only (`Probe`), a block this node
//! fills as its holder (`Fill`: tiers, neighbours, origin; never forwarded to another owner), a
//! block's state (`Load`, `Check`, `Evict`), and chain fills (`Chain`, `Stream`). Peer-only
//! requests are accepted only from members: with a cluster CA, connections that presented a
//! member certificate; otherwise connections from member addresses.

use std::sync::Arc;

use futures::stream::BoxStream;
use shardcache_proto::{BlockState, DataChunk, ObjectPath, PeerBlock, PeerMode};

use super::Members;
use super::chain::Chains;
use super::metrics::PeerMetrics;
use crate::error::{Error, Result};
use crate::origin::{Origin, Version};
use crate::service::{BlockCtx, CacheService};

/// Who is at the other end of a connection: for logs, and for requests only members may send.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    /// Source address (TCP, QUIC); `None` on the local socket.
    pub ip: Option<std::net::IpAddr>,
    /// Presented a certificate signed by the cluster CA (mutual TLS).
    pub authenticated: bool,
}

impl Caller {
    pub fn addr(addr: std::net::SocketAddr) -> Caller {
        Caller {
            name: addr.to_string(),
            ip: Some(addr.ip()),
            authenticated: false,
        }
    }
}

/// What a node answers to a peer's block request.
pub enum PeerAnswer {
    Data(DataChunk),
    State(BlockState),
    /// A chain stream: chunks while they arrive.
    Stream(BoxStream<'static, Result<DataChunk>>),
}

/// This node's side of cross-node requests.
pub struct PeerServer {
    pub(super) service: Arc<CacheService>,
    pub(super) members: Arc<dyn Members>,
    pub(super) chains: Arc<Chains>,
    pub(super) metrics: Arc<PeerMetrics>,
    /// Peer-only requests need a proof (a cluster CA or a cluster secret is configured), not
    /// only a member's address.
    require_proof: bool,
}

impl PeerServer {
    pub fn new(
        service: Arc<CacheService>,
        members: Arc<dyn Members>,
        chains: Arc<Chains>,
        metrics: Arc<PeerMetrics>,
        require_proof: bool,
    ) -> PeerServer {
        PeerServer {
            service,
            members,
            chains,
            metrics,
            require_proof,
        }
    }

    pub fn service(&self) -> &Arc<CacheService> {
        &self.service
    }

    /// Whether a connection is a member's: a member certificate or the cluster secret proved
    /// on it, or, when neither is configured, a member's source address.
    pub fn is_member(&self, caller: &Caller) -> bool {
        if self.require_proof {
            caller.authenticated
        } else {
            caller.authenticated || caller.ip.is_some_and(|ip| self.members.is_member_ip(ip))
        }
    }

    /// Whether a connection may send peer-only requests.
    pub fn allowed(&self, caller: &Caller) -> Result<()> {
        if self.is_member(caller) {
            return Ok(());
        }
        self.metrics.refused.inc();
        let reason = if self.require_proof {
            format!(
                "{} has not proved it is a member; block requests between members need the cluster secret (--cluster-secret-file) or a certificate signed by --tls-ca",
                caller.name
            )
        } else {
            format!(
                "{} is not a cluster member (not an address in --peers, --peers-file or --peer-dns); block requests between members only",
                caller.name
            )
        };
        Err(Error::Forbidden { reason })
    }

    /// Serve a peer's block request.
    pub async fn peer_block(self: &Arc<Self>, req: PeerBlock) -> Result<PeerAnswer> {
        let path = ObjectPath::parse(&req.path)?;
        let origin = self.service.origin(path.dataset())?;
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
        let ctx = BlockCtx::whole_block(origin, path.key(), version, req.index)?;
        let block = match req.mode {
            PeerMode::Chain => {
                self.metrics.served_chain.inc();
                return self
                    .chain_load(ctx, req.upstream, req.chunk_size)
                    .await
                    .map(PeerAnswer::State);
            }
            PeerMode::Stream => {
                self.metrics.served_stream.inc();
                return self.chain_stream(ctx, &req).await.map(PeerAnswer::Stream);
            }
            PeerMode::Load | PeerMode::Check | PeerMode::Evict => {
                return self
                    .service
                    .block_state(&ctx, req.mode)
                    .await
                    .map(PeerAnswer::State);
            }
            PeerMode::Probe => {
                self.metrics.served_probe.inc();
                self.service
                    .held(&ctx.block_key(req.index))
                    .await
                    .ok_or(Error::NotCached)?
            }
            PeerMode::Fill => {
                self.metrics.served_fill.inc();
                self.service.block(&ctx, req.index).await?.0
            }
        };
        Ok(PeerAnswer::Data(DataChunk {
            offset: ctx.start,
            crc32c: block.crc32c,
            data: block.data,
        }))
    }

    /// This node's part of a block operation the control plane runs (`Load`, `Check`,
    /// `Evict`).
    pub async fn block_op(
        &self,
        origin: &Arc<Origin>,
        key: &str,
        version: Version,
        index: u64,
        mode: PeerMode,
    ) -> Result<BlockState> {
        let ctx = BlockCtx::whole_block(origin.clone(), key, version, index)?;
        self.service.block_state(&ctx, mode).await
    }

    /// This node's part of a chain the control plane runs (this node is one of its targets):
    /// hold the block, taking it from `upstream`, the chain's head first.
    pub async fn chain_op(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        key: &str,
        version: Version,
        index: u64,
        upstream: Vec<String>,
        chunk_size: u32,
    ) -> Result<BlockState> {
        let ctx = BlockCtx::whole_block(origin.clone(), key, version, index)?;
        self.chain_load(ctx, upstream, chunk_size).await
    }
}
