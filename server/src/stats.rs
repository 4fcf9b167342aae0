//! What the server did, as Prometheus metrics.
//!
//! Every counter the read path bumps is a prometheus metric resolved once at start-up (label
//! values included), so the hot path pays one atomic add. The same values back
//! [`Stats::snapshot`], which tests read directly, and `/metrics`, which scrapes the registry.
//! Names carry their unit (`_bytes`, `_seconds`, `_total`); the table of them is in
//! `docs/metrics.md`.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Buckets for request latencies: 100 µs to ~50 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 25.0, 50.0,
];

pub struct Stats {
    registry: Registry,

    pub served_bytes_ram: IntCounter,
    pub served_bytes_origin: IntCounter,
    pub served_chunks_ram: IntCounter,
    pub served_chunks_origin: IntCounter,
    pub served_bytes_disk: IntCounter,
    pub served_chunks_disk: IntCounter,
    pub served_bytes_peer: IntCounter,
    pub served_chunks_peer: IntCounter,

    pub ram_hits: IntCounter,
    pub ram_misses: IntCounter,
    pub ram_evictions: IntCounter,
    pub single_flight_waits: IntCounter,
    pub disk_hits: IntCounter,
    pub disk_misses: IntCounter,
    pub disk_evictions: IntCounter,
    pub disk_errors: IntCounter,
    pub disk_admissions_rejected: IntCounter,
    pub disk_admissions_skipped: IntCounter,
    pub tier_degraded: IntGaugeVec,
    pub tier_used_bytes: IntGaugeVec,
    pub tier_capacity_bytes: IntGaugeVec,

    pub origin_get_requests: IntCounter,
    pub origin_head_requests: IntCounter,
    pub origin_bytes: IntCounter,
    pub origin_errors: IntCounter,
    pub origin_timeouts: IntCounter,
    pub origin_retries: IntCounter,
    /// Object versions handed out past their TTL because the origin could not be reached
    /// (`stale_if_error`).
    pub origin_stale_served: IntCounter,
    pub origin_get_duration: Histogram,
    pub origin_head_duration: Histogram,

    pub checksum_failures: IntCounter,
    pub prefetch_done: IntCounter,
    pub prefetch_failed: IntCounter,
    pub prefetch_declined: IntCounter,
    pub peers: IntGaugeVec,
    /// Block requests this node sent to peers, by mode and outcome.
    pub peer_fill_ok: IntCounter,
    pub peer_fill_failed: IntCounter,
    pub peer_probe_hit: IntCounter,
    pub peer_probe_miss: IntCounter,
    pub peer_probe_failed: IntCounter,
    /// Block requests from peers this node answered, by mode.
    pub peer_served_fill: IntCounter,
    pub peer_served_probe: IntCounter,
    pub peer_served_chain: IntCounter,
    pub peer_served_stream: IntCounter,
    /// Bytes chain fills took from the node ahead of them, and from the origin.
    pub chain_bytes_upstream: IntCounter,
    pub chain_bytes_origin: IntCounter,
    /// Chain chunks that failed their checksum on arrival and were asked for again.
    pub chain_resends: IntCounter,
    /// Times a chain fill cut out a node ahead of it and went on from the one before (or the
    /// origin).
    pub chain_cutovers: IntCounter,
    pub peer_refused: IntCounter,
    /// Blocks warms started on this node handled, by outcome.
    pub warm_loaded: IntCounter,
    pub warm_cached: IntCounter,
    pub warm_failed: IntCounter,

    pub requests: IntCounter,
    pub failed_requests: IntCounter,
    pub read_duration: Histogram,
    pub stat_duration: Histogram,
    pub rejected_requests: IntCounter,
    pub rejected_connections: IntCounter,
    pub open_connections: IntGauge,
}

/// A point-in-time copy of the counters tests look at.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub origin_get_requests: u64,
    pub origin_head_requests: u64,
    pub origin_bytes: u64,
    pub origin_errors: u64,
    pub origin_retries: u64,
    pub origin_stale_served: u64,
    pub ram_hits: u64,
    pub ram_misses: u64,
    pub ram_evictions: u64,
    pub served_bytes_ram: u64,
    pub served_bytes_origin: u64,
    pub served_bytes_disk: u64,
    pub served_bytes_peer: u64,
    pub disk_hits: u64,
    pub checksum_failures: u64,
    pub single_flight_waits: u64,
    pub rejected_requests: u64,
    pub open_connections: u64,
    pub requests: u64,
    pub failed_requests: u64,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(v.clone()));
            v
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(v.clone()));
            v
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let histogram_vec = |name: &str, help: &str, label: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, &[label]).expect("valid metric");
            reg(Box::new(h.clone()));
            h
        };

        let served_bytes = counter_vec(
            "shardcache_served_bytes_total",
            "Bytes sent to clients, by where the block came from",
            &["source"],
        );
        let served_chunks = counter_vec(
            "shardcache_served_chunks_total",
            "Data chunks (block pieces) sent to clients, by where the block came from",
            &["source"],
        );
        let hits = counter_vec(
            "shardcache_tier_hits_total",
            "Block lookups found in a tier",
            &["tier"],
        );
        let misses = counter_vec(
            "shardcache_tier_misses_total",
            "Block lookups not found in a tier",
            &["tier"],
        );
        let evictions = counter_vec(
            "shardcache_tier_evictions_total",
            "Blocks evicted from a tier to stay within its budget",
            &["tier"],
        );
        let origin_requests = counter_vec(
            "shardcache_origin_requests_total",
            "Requests sent to origins (each retry counts), by operation",
            &["op"],
        );
        let origin_errors = counter_vec(
            "shardcache_origin_errors_total",
            "Origin request attempts that failed, by kind",
            &["kind"],
        );
        let origin_duration = histogram_vec(
            "shardcache_origin_request_duration_seconds",
            "Duration of origin request attempts that completed, by operation",
            "op",
        );
        let request_duration = histogram_vec(
            "shardcache_request_duration_seconds",
            "Duration of data-plane requests from arrival to last byte queued, by operation",
            "op",
        );
        let rejected = counter_vec(
            "shardcache_rejected_requests_total",
            "Requests and connections refused at a configured limit, by reason",
            &["reason"],
        );
        let tier_errors = counter_vec(
            "shardcache_tier_errors_total",
            "I/O errors of a cache tier (each one degrades the tier, never a read)",
            &["tier"],
        );
        let admissions = counter_vec(
            "shardcache_tier_admissions_declined_total",
            "Blocks a tier did not store, by reason (policy: not admitted; busy: write queue full)",
            &["tier", "reason"],
        );
        let prefetch = counter_vec(
            "shardcache_prefetch_objects_total",
            "Objects named in prefetch hints, by outcome (loaded, failed, or declined when busy)",
            &["outcome"],
        );
        let tier_degraded = gauge_vec(
            "shardcache_tier_degraded",
            "1 while a tier is failing I/O and reads bypass it",
            &["tier"],
        );
        tier_degraded.with_label_values(&["disk"]).set(0);
        let peers = gauge_vec("shardcache_peers", "Cluster peers by state", &["state"]);
        peers.with_label_values(&["up"]);
        peers.with_label_values(&["down"]);
        let peer_requests = counter_vec(
            "shardcache_peer_requests_total",
            "Block requests sent to peers, by mode (fill: to the owner; probe: to a neighbour) and outcome",
            &["mode", "outcome"],
        );
        let warm = counter_vec(
            "shardcache_warm_blocks_total",
            "Blocks of warms run from this node, by outcome (loaded: fetched now; cached: already held; failed)",
            &["outcome"],
        );
        let peer_served = counter_vec(
            "shardcache_peer_requests_served_total",
            "Block requests answered for peers, by mode",
            &["mode"],
        );
        let chain_bytes = counter_vec(
            "shardcache_chain_bytes_total",
            "Bytes chain fills took, by source (upstream: the node ahead in the chain; origin: the head's read, or a fallback)",
            &["source"],
        );
        let build = gauge_vec("shardcache_build_info", "Build information", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        Stats {
            served_bytes_ram: served_bytes.with_label_values(&["ram"]),
            served_bytes_origin: served_bytes.with_label_values(&["origin"]),
            served_chunks_ram: served_chunks.with_label_values(&["ram"]),
            served_chunks_origin: served_chunks.with_label_values(&["origin"]),
            served_bytes_disk: served_bytes.with_label_values(&["disk"]),
            served_chunks_disk: served_chunks.with_label_values(&["disk"]),
            served_bytes_peer: served_bytes.with_label_values(&["peer"]),
            served_chunks_peer: served_chunks.with_label_values(&["peer"]),
            disk_hits: hits.with_label_values(&["disk"]),
            disk_misses: misses.with_label_values(&["disk"]),
            disk_evictions: evictions.with_label_values(&["disk"]),
            disk_errors: tier_errors.with_label_values(&["disk"]),
            disk_admissions_rejected: admissions.with_label_values(&["disk", "policy"]),
            disk_admissions_skipped: admissions.with_label_values(&["disk", "busy"]),
            tier_degraded,
            ram_hits: hits.with_label_values(&["ram"]),
            ram_misses: misses.with_label_values(&["ram"]),
            ram_evictions: evictions.with_label_values(&["ram"]),
            single_flight_waits: counter(
                "shardcache_single_flight_waits_total",
                "Block misses that waited on another reader's fill instead of asking the origin",
            ),
            tier_used_bytes: gauge_vec(
                "shardcache_tier_used_bytes",
                "Bytes held by a cache tier",
                &["tier"],
            ),
            tier_capacity_bytes: gauge_vec(
                "shardcache_tier_capacity_bytes",
                "Byte budget of a cache tier",
                &["tier"],
            ),
            origin_get_requests: origin_requests.with_label_values(&["get"]),
            origin_head_requests: origin_requests.with_label_values(&["head"]),
            origin_bytes: counter(
                "shardcache_origin_bytes_total",
                "Object bytes received from origins",
            ),
            origin_errors: origin_errors.with_label_values(&["error"]),
            origin_timeouts: origin_errors.with_label_values(&["timeout"]),
            origin_retries: counter(
                "shardcache_origin_retries_total",
                "Origin request attempts that were retries of a failed attempt",
            ),
            origin_stale_served: counter(
                "shardcache_origin_stale_served_total",
                "Reads served at the last known version of an object past its TTL because the origin was unreachable (stale_if_error)",
            ),
            origin_get_duration: origin_duration.with_label_values(&["get"]),
            origin_head_duration: origin_duration.with_label_values(&["head"]),
            checksum_failures: counter(
                "shardcache_checksum_failures_total",
                "Stored blocks whose CRC32C did not match when read back (dropped and refetched)",
            ),
            prefetch_done: prefetch.with_label_values(&["loaded"]),
            prefetch_failed: prefetch.with_label_values(&["failed"]),
            prefetch_declined: prefetch.with_label_values(&["declined"]),
            peers,
            peer_fill_ok: peer_requests.with_label_values(&["fill", "ok"]),
            peer_fill_failed: peer_requests.with_label_values(&["fill", "failed"]),
            peer_probe_hit: peer_requests.with_label_values(&["probe", "hit"]),
            peer_probe_miss: peer_requests.with_label_values(&["probe", "miss"]),
            peer_probe_failed: peer_requests.with_label_values(&["probe", "failed"]),
            peer_served_fill: peer_served.with_label_values(&["fill"]),
            peer_served_probe: peer_served.with_label_values(&["probe"]),
            peer_served_chain: peer_served.with_label_values(&["chain"]),
            peer_served_stream: peer_served.with_label_values(&["stream"]),
            chain_bytes_upstream: chain_bytes.with_label_values(&["upstream"]),
            chain_bytes_origin: chain_bytes.with_label_values(&["origin"]),
            chain_resends: counter(
                "shardcache_chain_resends_total",
                "Chain chunks that arrived damaged (CRC32C mismatch) and were asked for again",
            ),
            chain_cutovers: counter(
                "shardcache_chain_cutovers_total",
                "Times a chain fill cut out a failed node ahead of it and went on from the node before it or the origin",
            ),
            peer_refused: rejected.with_label_values(&["not_a_member"]),
            warm_loaded: warm.with_label_values(&["loaded"]),
            warm_cached: warm.with_label_values(&["cached"]),
            warm_failed: warm.with_label_values(&["failed"]),
            requests: counter("shardcache_requests_total", "Data-plane requests received"),
            failed_requests: counter(
                "shardcache_failed_requests_total",
                "Data-plane requests that ended with an error frame",
            ),
            read_duration: request_duration.with_label_values(&["read"]),
            stat_duration: request_duration.with_label_values(&["stat"]),
            rejected_requests: rejected.with_label_values(&["requests_per_connection"]),
            rejected_connections: rejected.with_label_values(&["connections"]),
            open_connections: {
                let g = IntGauge::new(
                    "shardcache_open_connections",
                    "Open data-plane connections (TCP connections and QUIC connections)",
                )
                .expect("valid metric");
                reg(Box::new(g.clone()));
                g
            },
            registry,
        }
    }

    pub fn add(counter: &IntCounter, n: u64) {
        counter.inc_by(n);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let families = self.registry.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            origin_get_requests: self.origin_get_requests.get(),
            origin_head_requests: self.origin_head_requests.get(),
            origin_bytes: self.origin_bytes.get(),
            origin_errors: self.origin_errors.get() + self.origin_timeouts.get(),
            origin_retries: self.origin_retries.get(),
            origin_stale_served: self.origin_stale_served.get(),
            ram_hits: self.ram_hits.get(),
            ram_misses: self.ram_misses.get(),
            ram_evictions: self.ram_evictions.get(),
            served_bytes_ram: self.served_bytes_ram.get(),
            served_bytes_origin: self.served_bytes_origin.get(),
            served_bytes_disk: self.served_bytes_disk.get(),
            served_bytes_peer: self.served_bytes_peer.get(),
            disk_hits: self.disk_hits.get(),
            checksum_failures: self.checksum_failures.get(),
            single_flight_waits: self.single_flight_waits.get(),
            rejected_requests: self.rejected_requests.get() + self.rejected_connections.get(),
            open_connections: self.open_connections.get().max(0) as u64,
            requests: self.requests.get(),
            failed_requests: self.failed_requests.get(),
        }
    }
}
