//! What cross-node work did: block requests sent (fills to owners, probes of neighbours) by
//! outcome, requests answered for peers, requests refused from non-members, chain bytes by
//! source, resends and cut-outs, warm blocks by outcome, damaged blocks from peers.

use prometheus::IntCounter;

use crate::stats::{self, Registry};

pub struct PeerMetrics {
    pub fill_ok: IntCounter,
    pub fill_failed: IntCounter,
    pub probe_hit: IntCounter,
    pub probe_miss: IntCounter,
    pub probe_failed: IntCounter,
    pub served_fill: IntCounter,
    pub served_probe: IntCounter,
    pub served_chain: IntCounter,
    pub served_stream: IntCounter,
    pub refused: IntCounter,
    pub chain_bytes_upstream: IntCounter,
    pub chain_bytes_origin: IntCounter,
    pub chain_resends: IntCounter,
    pub chain_cutovers: IntCounter,
    pub warm_loaded: IntCounter,
    pub warm_cached: IntCounter,
    pub warm_failed: IntCounter,
    /// Blocks and chain chunks from peers that failed their CRC32C.
    pub checksum_failures: IntCounter,
}

impl PeerMetrics {
    pub fn new(r: &Registry) -> PeerMetrics {
        let requests = r.counter_vec(
            "shardcache_peer_requests_total",
            "Block requests sent to peers, by mode (fill: to the owner; probe: to a neighbour) and outcome",
            &["mode", "outcome"],
        );
        let served = r.counter_vec(
            "shardcache_peer_requests_served_total",
            "Block requests answered for peers, by mode",
            &["mode"],
        );
        let chain_bytes = r.counter_vec(
            "shardcache_chain_bytes_total",
            "Bytes chain fills took, by source (upstream: the node ahead in the chain; origin: the head's read, or a fallback)",
            &["source"],
        );
        let warm = r.counter_vec(
            "shardcache_warm_blocks_total",
            "Blocks of warms run from this node, by outcome (loaded: fetched now; cached: already held; failed)",
            &["outcome"],
        );
        PeerMetrics {
            fill_ok: requests.with_label_values(&["fill", "ok"]),
            fill_failed: requests.with_label_values(&["fill", "failed"]),
            probe_hit: requests.with_label_values(&["probe", "hit"]),
            probe_miss: requests.with_label_values(&["probe", "miss"]),
            probe_failed: requests.with_label_values(&["probe", "failed"]),
            served_fill: served.with_label_values(&["fill"]),
            served_probe: served.with_label_values(&["probe"]),
            served_chain: served.with_label_values(&["chain"]),
            served_stream: served.with_label_values(&["stream"]),
            refused: stats::rejected(r).with_label_values(&["not_a_member"]),
            chain_bytes_upstream: chain_bytes.with_label_values(&["upstream"]),
            chain_bytes_origin: chain_bytes.with_label_values(&["origin"]),
            chain_resends: r.counter(
                "shardcache_chain_resends_total",
                "Chain chunks that arrived damaged (CRC32C mismatch) and were asked for again",
            ),
            chain_cutovers: r.counter(
                "shardcache_chain_cutovers_total",
                "Times a chain fill cut out a failed node ahead of it and went on from the node before it or the origin",
            ),
            warm_loaded: warm.with_label_values(&["loaded"]),
            warm_cached: warm.with_label_values(&["cached"]),
            warm_failed: warm.with_label_values(&["failed"]),
            checksum_failures: stats::checksum_failures(r),
        }
    }
}
