//! Cross-node work, in one place: asking peers for blocks, serving their requests, chain fills,
//! and the cluster-wide block operations of the control plane (warm, list, stat, evict).
//!
//! - [`fetch`]: [`Remote`], the read path's source beyond this node: a block's owner first
//!   (`PeerBlock{Fill}`), then, when this node fills the block itself, its neighbours
//!   (`PeerBlock{Probe}`: they held it before a membership change);
//! - [`serve`]: [`PeerServer`], answering other members' block requests (probe, fill, load,
//!   check, evict, chain, stream), only to members;
//! - [`chain`]: one node's part of a chain: taking a block chunk by chunk from the node ahead,
//!   cutting out a node that fails, resending damaged chunks, the origin last;
//! - [`warm`]: the node that runs a warm putting each block on its targets, through a chain when
//!   there are several;
//! - [`inspect`]: the same node finding (list, stat) or dropping (evict) copies on every member;
//! - [`failure`]: what a failed peer request means ([`failure::judge`]), decided in one place.
//!
//! Everything here talks to peers through [`PeerLink`] and to the membership through
//! [`Members`], so its decisions are tested with scripted links, without sockets.

pub mod chain;
pub mod failure;
pub mod fetch;
pub mod growing;
pub mod inspect;
pub mod metrics;
pub mod serve;
pub mod warm;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use shardcache_proto::{ErrorCode, PeerBlock, PeerMode};

use crate::cache::BlockKey;
use crate::cluster::{Candidate, Cluster, PeerLink};
use crate::error::Error;
use crate::origin::{Origin, Version};
use crate::service::BlockCtx;

pub use chain::{Chains, MAX_CHAIN_CHUNK, MIN_CHAIN_CHUNK};
pub use fetch::Remote;
pub use growing::Growing;
pub use metrics::PeerMetrics;
pub use serve::{Caller, PeerAnswer, PeerServer};

/// The deadlines and sizes cross-node work runs with.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A ping, a connection, a probe for a block.
    pub peer: Duration,
    /// A block asked of its owner (which may have to read the origin).
    pub fill: Duration,
    /// Neighbours asked before the origin.
    pub read_neighbours: usize,
    /// Chunk size of chain distribution.
    pub chain_chunk: u32,
}

/// The membership as cross-node work sees it.
pub trait Members: Send + Sync {
    /// Up to `limit` holders of `key` in placement order, owner first; `None` is this node.
    fn candidates(&self, key: &BlockKey, limit: usize) -> Vec<Option<Arc<dyn PeerLink>>>;
    /// The member at a data-plane address, if it is one.
    fn link(&self, addr: &str) -> Option<Arc<dyn PeerLink>>;
    /// This node's data-plane address as the other members know it.
    fn own_addr(&self) -> Option<String>;
    /// Whether `ip` is a configured member's address.
    fn is_member_ip(&self, ip: IpAddr) -> bool;
    /// Mark a peer down after a failed request; its probes bring it back.
    fn report_failure(&self, link: &dyn PeerLink, reason: &str);
    fn timeouts(&self) -> Timeouts;
}

impl Members for Cluster {
    fn candidates(&self, key: &BlockKey, limit: usize) -> Vec<Option<Arc<dyn PeerLink>>> {
        Cluster::candidates(self, key, limit)
            .iter()
            .map(Candidate::link)
            .collect()
    }

    fn link(&self, addr: &str) -> Option<Arc<dyn PeerLink>> {
        self.peer(addr).map(|p| p as Arc<dyn PeerLink>)
    }

    fn own_addr(&self) -> Option<String> {
        Cluster::own_addr(self)
    }

    fn is_member_ip(&self, ip: IpAddr) -> bool {
        Cluster::is_member_ip(self, ip)
    }

    fn report_failure(&self, link: &dyn PeerLink, reason: &str) {
        self.report_link_failure(link, reason);
    }

    fn timeouts(&self) -> Timeouts {
        let s = self.settings();
        Timeouts {
            peer: s.peer_timeout,
            fill: s.fill_timeout,
            read_neighbours: s.read_neighbours,
            chain_chunk: s.chain_chunk,
        }
    }
}

/// The request that asks a peer about block `index` of one version of an object.
pub fn request(
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

/// A definitive error from the peer that owns a block, as this node's own error.
pub fn relayed(ctx: &BlockCtx, code: ErrorCode, message: String, peer: &str) -> Error {
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

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
