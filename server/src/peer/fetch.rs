//! Blocks from other members: the read path's source beyond this node.
//!
//! A block missing here is asked of its owner (weighted rendezvous placement), which fills it
//! from its own tiers, neighbours or the origin; if the owner fails, the next candidate is asked,
//! up to [`MAX_FILL_TRIES`]. When this node ranks first (it fills the block itself), it first
//! asks the block's neighbours, which held it before a membership change, so a join, a leave or
//! a restart does not send a storm to the origin. A request from a peer (`for_peer`) is never
//! forwarded to another owner, so members that briefly disagree on placement cannot loop.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use shardcache_proto::PeerMode;

use super::chain::Chains;
use super::failure::{Asked, judge, record};
use super::metrics::PeerMetrics;
use super::{Members, relayed, request};
use crate::cache::{Block, BlockKey, FillSource};
use crate::cluster::{PeerFailure, PeerLink};
use crate::error::Result;
use crate::service::{BlockCtx, RemoteSource};

/// Owners (and their successors when they fail) a node asks before filling a block itself.
pub const MAX_FILL_TRIES: usize = 3;

/// The cluster as a source of blocks.
pub struct Remote {
    members: Arc<dyn Members>,
    chains: Arc<Chains>,
    metrics: Arc<PeerMetrics>,
}

impl Remote {
    pub fn new(
        members: Arc<dyn Members>,
        chains: Arc<Chains>,
        metrics: Arc<PeerMetrics>,
    ) -> Remote {
        Remote {
            members,
            chains,
            metrics,
        }
    }

    /// Log and act on a failure the verdict says what to do with.
    fn failed(&self, asked: Asked, link: &dyn PeerLink, failure: &PeerFailure) -> bool {
        let v = judge(asked, failure);
        record(&self.metrics, &v);
        let reason = failure.clone().reason();
        match (asked, v.warn) {
            (Asked::Owner, true) => tracing::warn!(
                peer = link.addr(),
                reason,
                "owner did not deliver a block; trying the next candidate"
            ),
            (Asked::Owner, false) => tracing::debug!(
                peer = link.addr(),
                reason,
                "owner declined a block; trying the next candidate"
            ),
            (_, true) => {
                tracing::warn!(peer = link.addr(), reason, "neighbour sent a damaged block")
            }
            (_, false) => tracing::debug!(peer = link.addr(), reason, "neighbour probe failed"),
        }
        if v.mark_down {
            self.members.report_failure(link, &reason);
        }
        v.definitive
    }
}

#[async_trait::async_trait]
impl RemoteSource for Remote {
    async fn in_flight(&self, key: &BlockKey) -> Option<Block> {
        let g = self.chains.get(key)?;
        g.wait().await.ok()?;
        g.block()
    }

    async fn fetch(&self, ctx: &BlockCtx, key: &BlockKey) -> Result<Option<Block>> {
        let t = self.members.timeouts();
        let plan = self
            .members
            .candidates(key, MAX_FILL_TRIES + t.read_neighbours + 1);
        // Alone, or first in line: fill here. (A node of weight 0 is in no plan, so it still
        // asks the owner.)
        if matches!(plan.as_slice(), [] | [None]) {
            return Ok(None);
        }
        let req = |mode| request(&ctx.origin, &ctx.key, &ctx.version, key.index, mode);
        let mut asked: Vec<&Arc<dyn PeerLink>> = Vec::new();
        if !ctx.for_peer {
            for candidate in plan.iter().take(MAX_FILL_TRIES) {
                let Some(link) = candidate else {
                    break;
                };
                asked.push(link);
                match link.block(req(PeerMode::Fill), t.fill, t.peer).await {
                    Ok(block) => {
                        self.metrics.fill_ok.inc();
                        return Ok(Some(block));
                    }
                    Err(failure) => {
                        if self.failed(Asked::Owner, link.as_ref(), &failure)
                            && let PeerFailure::Answer { code, message } = failure
                        {
                            return Err(relayed(ctx, code, message, link.addr()));
                        }
                    }
                }
            }
        }
        // This node fills the block: its neighbours may hold it from before a membership change.
        let mut probes: FuturesUnordered<_> = plan
            .iter()
            .flatten()
            .filter(|p| !asked.iter().any(|a| Arc::ptr_eq(a, p)))
            .take(t.read_neighbours)
            .map(|link| async move {
                let r = link.block(req(PeerMode::Probe), t.peer * 4, t.peer).await;
                (link, r)
            })
            .collect();
        while let Some((link, result)) = probes.next().await {
            match result {
                Ok(block) => {
                    self.metrics.probe_hit.inc();
                    return Ok(Some(Block {
                        source: FillSource::Neighbour,
                        ..block
                    }));
                }
                Err(failure) => {
                    self.failed(Asked::Neighbour, link.as_ref(), &failure);
                }
            }
        }
        Ok(None)
    }
}
