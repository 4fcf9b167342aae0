//! Where a block comes from, in order, and the hook through which the cluster supplies the
//! sources beyond this node.

use crate::cache::{Block, BlockKey};
use crate::error::Result;

use super::BlockCtx;

/// A place a block can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ram,
    Disk,
    /// A chain fill already bringing the block to this node.
    ChainInFlight,
    /// The block's owner.
    Owner,
    /// The block's next candidates in placement order (they held it before a membership change).
    Neighbours,
    Origin,
}

/// The order [`super::CacheService::block`] asks them in: the first that has the block wins.
pub const ORDER: [Source; 6] = [
    Source::Ram,
    Source::Disk,
    Source::ChainInFlight,
    Source::Owner,
    Source::Neighbours,
    Source::Origin,
];

/// Sources beyond this node's tiers: chain fills in flight here, and other members. The server
/// plugs in `crate::peer::Remote`; a single node uses [`Alone`].
#[async_trait::async_trait]
pub trait RemoteSource: Send + Sync {
    /// A chain fill bringing `key` here, waited for to its end: the block, or `None` when there
    /// is none (or it failed).
    async fn in_flight(&self, key: &BlockKey) -> Option<Block>;

    /// The block from another member (its owner, then its neighbours), or `None` when this node
    /// should read the origin itself. An error is a definitive answer relayed from the owner
    /// (the object is gone, its version changed).
    async fn fetch(&self, ctx: &BlockCtx, key: &BlockKey) -> Result<Option<Block>>;
}

/// No other members: every block this node does not hold comes from the origin.
pub struct Alone;

#[async_trait::async_trait]
impl RemoteSource for Alone {
    async fn in_flight(&self, _key: &BlockKey) -> Option<Block> {
        None
    }

    async fn fetch(&self, _ctx: &BlockCtx, _key: &BlockKey) -> Result<Option<Block>> {
        Ok(None)
    }
}
