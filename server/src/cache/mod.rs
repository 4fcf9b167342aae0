//! Blocks and the tiers that keep them.
//!
//! An object is cached as fixed-size blocks, keyed by a hash of `(dataset, key, version)` and the
//! block index, so a new version of an object never hits blocks of the old one. Every block keeps
//! the CRC32C computed when it was filled; it travels with the block to the client.

pub mod disk;
mod key;
pub mod metrics;
pub mod policy;
mod ram;
mod versions;

pub use disk::{DiskConfig, DiskTier};
pub use key::{Block, BlockKey, Damaged, FillSource, ObjectId};
pub use metrics::TierMetrics;
pub use ram::{Filled, RamTier, Warming};
pub use versions::VersionCache;
