//! The link to one peer, as cross-node work uses it: ask for a block, for a block's state, or
//! for a block as a stream of chunks. [`super::Peer`] (a real protocol connection) implements
//! it; tests implement it with scripted answers, so the decisions built on it (which source
//! next, what a failure means, when to cut a chain) run without sockets.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use shardcache_client::ClientError;
use shardcache_proto::{BlockState, ErrorCode, ErrorFrame, Frame, PeerBlock};

use crate::cache::Block;

/// A peer's answer frames to a streamed request, each within the request's silence deadline.
pub type FrameStream = BoxStream<'static, Result<Frame, ClientError>>;

/// One peer, as seen by the node that asks it for blocks.
#[async_trait::async_trait]
pub trait PeerLink: Send + Sync {
    /// The peer's data-plane address (its identity in the membership).
    fn addr(&self) -> &str;
    /// Its node id when known, else its address.
    fn name(&self) -> String;
    /// Whether it is marked down.
    fn is_down(&self) -> bool;
    /// Resolves once the peer is marked down (requests to it stop waiting then).
    fn marked_down(&self) -> BoxFuture<'static, ()>;
    /// One whole block, its checksum verified; `deadline` bounds the whole request.
    async fn block(
        &self,
        req: PeerBlock,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<Block, PeerFailure>;
    /// A block's state after a `Load`, `Check`, `Evict` or `Chain` request.
    async fn block_state(
        &self,
        req: PeerBlock,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<BlockState, PeerFailure>;
    /// A `Stream` request's answer frames, each arriving within `idle` of the last.
    async fn stream(
        &self,
        req: PeerBlock,
        idle: Duration,
        connect_timeout: Duration,
    ) -> Result<FrameStream, PeerFailure>;
}

/// Why a peer did not deliver a block.
#[derive(Debug, Clone)]
pub enum PeerFailure {
    /// A probe found no copy there.
    Miss,
    /// The peer answered with a definitive error about the block (the origin's answer, a version
    /// change): asking someone else would get the same.
    Answer { code: ErrorCode, message: String },
    /// The peer is down, stalled, or sent bad bytes: try the next candidate, and mark it down
    /// until a probe says otherwise.
    Unavailable { reason: String },
    /// The block failed its checksum on the way: try the next candidate.
    Corrupt { reason: String },
    /// The peer is alive but declined (busy, refused, a bug): try the next candidate.
    Declined { reason: String },
}

impl PeerFailure {
    /// What went wrong, in words.
    pub fn reason(self) -> String {
        match self {
            PeerFailure::Miss => "not cached".into(),
            PeerFailure::Answer { message, .. } => message,
            PeerFailure::Unavailable { reason }
            | PeerFailure::Declined { reason }
            | PeerFailure::Corrupt { reason } => reason,
        }
    }
}

pub fn unavailable(reason: impl Into<String>) -> PeerFailure {
    PeerFailure::Unavailable {
        reason: reason.into(),
    }
}

/// What an error answer from a peer means for the asker.
pub fn refusal(e: ErrorFrame) -> PeerFailure {
    match e.code {
        ErrorCode::NotCached => PeerFailure::Miss,
        ErrorCode::NotFound
        | ErrorCode::PreconditionFailed
        | ErrorCode::OriginUnavailable
        | ErrorCode::RangeNotSatisfiable => PeerFailure::Answer {
            code: e.code,
            message: e.message,
        },
        code => declined(format!("answered {code:?}: {}", e.message)),
    }
}

pub fn declined(reason: impl Into<String>) -> PeerFailure {
    PeerFailure::Declined {
        reason: reason.into(),
    }
}
