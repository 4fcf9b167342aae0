//! Where an object's blocks are and how to drop them: the cached fraction of a listing, the
//! holders of each block, eviction from every member. Each block is asked of its targets with a
//! `PeerBlock{Check}` or `PeerBlock{Evict}` (or looked up here when this node is one).

use std::sync::Arc;

use futures::{StreamExt, stream};
use shardcache_proto::PeerMode;
use shardcache_proto::control::{BlockHolders, EvictResponse, Failure, ObjectEntry};

use super::warm::{Operations, Placed, blocks};
use crate::cache::ObjectId;
use crate::cluster::{Candidate, PeerState};
use crate::origin::{Origin, Version};

/// Blocks of one object looked up at once.
const BLOCKS_AT_ONCE: usize = 8;

impl Operations {
    /// An object's entry in a listing: its version and the fraction of its blocks held by
    /// their owner or its first neighbour.
    pub async fn list_entry(&self, origin: &Arc<Origin>, key: String, size: u64) -> ObjectEntry {
        let Ok(version) = self.peers.service.version(origin, &key).await else {
            return ObjectEntry {
                key,
                size,
                etag: String::new(),
                cached_fraction: 0.0,
            };
        };
        let blocks = blocks(origin, version.size);
        let object = ObjectId::of(origin, &key, &version);
        let (key_ref, version_ref) = (&key, &version);
        let cached = stream::iter(0..blocks)
            .map(|index| async move {
                let bkey = object.block(index);
                // The owner and its first neighbour: where a block lives.
                let targets = self.cluster.candidates(&bkey, 2);
                self.on_targets(
                    origin,
                    key_ref,
                    version_ref,
                    index,
                    PeerMode::Check,
                    &targets,
                )
                .await
                .iter()
                .any(|p| p.result.as_ref().is_ok_and(|s| s.present))
            })
            .buffered(BLOCKS_AT_ONCE)
            .filter(|held| std::future::ready(*held))
            .count()
            .await as u64;
        ObjectEntry {
            key,
            size: version.size,
            etag: version.etag.clone(),
            cached_fraction: if blocks == 0 {
                1.0
            } else {
                cached as f64 / blocks as f64
            },
        }
    }

    /// Each block of one version of an object: its owner and the members that hold it.
    pub async fn holders(
        &self,
        origin: &Arc<Origin>,
        key: &str,
        version: &Version,
    ) -> Vec<BlockHolders> {
        let everyone = self.cluster.everyone();
        let bs = origin.settings().block_size;
        let everyone = &everyone;
        let object = ObjectId::of(origin, key, version);
        stream::iter(0..blocks(origin, version.size))
            .map(|index| async move {
                let bkey = object.block(index);
                let owner = match self.cluster.candidates(&bkey, 1).first() {
                    Some(Candidate::Peer(p)) => p.name(),
                    _ => self.cluster.node_id().to_string(),
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
            .buffered(BLOCKS_AT_ONCE)
            .collect()
            .await
    }

    /// Drop every block of `objects` from every member that is up. `path` is what the caller
    /// asked for (named in the failures of members that are not up: they keep their copies).
    pub async fn evict(
        &self,
        origin: &Arc<Origin>,
        path: &str,
        objects: Vec<(String, u64)>,
    ) -> EvictResponse {
        let everyone = self.cluster.everyone();
        let mut resp = EvictResponse::default();
        for m in self.cluster.members() {
            if matches!(m.state, PeerState::Down { .. } | PeerState::Unknown) {
                resp.failures.push(Failure {
                    path: path.to_string(),
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
            let version = match self.peers.service.version(origin, &key).await {
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
            let (key, version, everyone) = (&key, &version, &everyone);
            let placed: Vec<Placed> = stream::iter(0..blocks(origin, version.size))
                .map(|index| {
                    self.on_targets(origin, key, version, index, PeerMode::Evict, everyone)
                })
                .buffer_unordered(BLOCKS_AT_ONCE)
                .flat_map(stream::iter)
                .collect()
                .await;
            for placed in placed {
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
        resp
    }
}
