//! What the read path did: bytes and chunks served by where their block came from, RAM-tier
//! hits and misses, single-flight waits, prefetch hints.

use prometheus::IntCounter;

use crate::stats::{self, Registry};

pub struct ReadMetrics {
    pub served_bytes_ram: IntCounter,
    pub served_bytes_disk: IntCounter,
    pub served_bytes_origin: IntCounter,
    pub served_bytes_peer: IntCounter,
    pub served_chunks_ram: IntCounter,
    pub served_chunks_disk: IntCounter,
    pub served_chunks_origin: IntCounter,
    pub served_chunks_peer: IntCounter,
    pub ram_hits: IntCounter,
    pub ram_misses: IntCounter,
    pub single_flight_waits: IntCounter,
    pub prefetch_done: IntCounter,
    pub prefetch_failed: IntCounter,
    pub prefetch_declined: IntCounter,
    /// Held blocks found not to match their CRC (memory or disk damage, a wrong length).
    pub damaged_blocks: IntCounter,
}

impl ReadMetrics {
    pub fn new(r: &Registry) -> ReadMetrics {
        let bytes = r.counter_vec(
            "shardcache_served_bytes_total",
            "Bytes sent to clients, by where the block came from",
            &["source"],
        );
        let chunks = r.counter_vec(
            "shardcache_served_chunks_total",
            "Data chunks (block pieces) sent to clients, by where the block came from",
            &["source"],
        );
        let prefetch = r.counter_vec(
            "shardcache_prefetch_objects_total",
            "Objects named in prefetch hints, by outcome (loaded, failed, or declined when busy)",
            &["outcome"],
        );
        ReadMetrics {
            served_bytes_ram: bytes.with_label_values(&["ram"]),
            served_bytes_disk: bytes.with_label_values(&["disk"]),
            served_bytes_origin: bytes.with_label_values(&["origin"]),
            served_bytes_peer: bytes.with_label_values(&["peer"]),
            served_chunks_ram: chunks.with_label_values(&["ram"]),
            served_chunks_disk: chunks.with_label_values(&["disk"]),
            served_chunks_origin: chunks.with_label_values(&["origin"]),
            served_chunks_peer: chunks.with_label_values(&["peer"]),
            damaged_blocks: stats::checksum_failures(r),
            ram_hits: stats::tier_hits(r).with_label_values(&["ram"]),
            ram_misses: stats::tier_misses(r).with_label_values(&["ram"]),
            single_flight_waits: r.counter(
                "shardcache_single_flight_waits_total",
                "Block misses that waited on another reader's fill instead of asking the origin",
            ),
            prefetch_done: prefetch.with_label_values(&["loaded"]),
            prefetch_failed: prefetch.with_label_values(&["failed"]),
            prefetch_declined: prefetch.with_label_values(&["declined"]),
        }
    }
}
