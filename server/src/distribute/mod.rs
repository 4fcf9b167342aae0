//! P2P chain distribution: putting one block on many nodes with one origin read.
//!
//! The node that runs a warm plans each block's chain ([`plan::chain`]) and sends every node of
//! it a `PeerBlock{Chain}` naming the nodes ahead of it. Each node pulls the block from the node
//! just ahead (`PeerBlock{Stream}`), which answers with chunks as they arrive there, so bytes
//! flow down the chain as a pipeline: the head reads the origin once, every other node stores
//! and forwards. A block being filled this way is a [`Growing`] buffer that successors read
//! while it grows. The fill itself (pulling, checking, cutting out a dead node, falling back to
//! the origin) lives with the read path in `service/chain.rs`.

pub mod growing;
pub mod plan;

pub use growing::Growing;
