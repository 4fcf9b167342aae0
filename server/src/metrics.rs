//! Every module's metrics together: one registry, each part owned by the module that counts it
//! (see `crate::stats`), and the snapshot tests read.

use std::sync::Arc;

use crate::cache::TierMetrics;
use crate::cluster::ClusterMetrics;
use crate::origin::OriginMetrics;
use crate::peer::PeerMetrics;
use crate::service::ReadMetrics;
use crate::stats::Registry;
use crate::transport::TransportMetrics;

pub struct Metrics {
    pub registry: Registry,
    pub origin: Arc<OriginMetrics>,
    pub tiers: Arc<TierMetrics>,
    pub read: Arc<ReadMetrics>,
    pub cluster: ClusterMetrics,
    pub peer: Arc<PeerMetrics>,
    pub transport: Arc<TransportMetrics>,
    pub s3: Arc<S3Metrics>,
}

/// What the S3-compatible endpoint did (the native data plane's are `transport`'s): requests
/// by operation and outcome, their durations, body bytes sent, bodies cut short.
pub struct S3Metrics {
    /// By `op` (GetObject, ...) and `code` (`ok`, or the S3 error code answered).
    pub requests: prometheus::IntCounterVec,
    /// From arrival to the response's head, by `op`.
    pub duration: prometheus::HistogramVec,
    pub sent_bytes: prometheus::IntCounter,
    /// GetObject bodies that ended before their last byte (a version change, an origin failure).
    pub truncated: prometheus::IntCounter,
}

/// The operations the endpoint answers (the others are NotImplemented).
pub const S3_OPERATIONS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "ListObjectsV2",
    "ListBuckets",
    "GetBucketLocation",
];

impl S3Metrics {
    pub fn new(r: &Registry) -> S3Metrics {
        let m = S3Metrics {
            requests: r.counter_vec(
                "shardcache_s3_requests_total",
                "Requests to the S3-compatible endpoint, by operation and outcome (ok or the S3 error code)",
                &["op", "code"],
            ),
            duration: r.latency_vec(
                "shardcache_s3_request_duration_seconds",
                "Duration of S3-endpoint requests from arrival to the response's head, by operation",
                "op",
            ),
            sent_bytes: r.counter(
                "shardcache_s3_sent_bytes_total",
                "Object bytes sent in S3-endpoint GetObject bodies",
            ),
            truncated: r.counter(
                "shardcache_s3_truncated_responses_total",
                "S3-endpoint GetObject bodies that ended before their last byte",
            ),
        };
        // Every answered operation has a series from the start (dashboards need no traffic).
        for op in S3_OPERATIONS {
            m.requests.with_label_values(&[op, "ok"]);
            m.duration.with_label_values(&[op]);
        }
        m
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        Metrics {
            origin: Arc::new(OriginMetrics::new(&registry)),
            tiers: Arc::new(TierMetrics::new(&registry)),
            read: Arc::new(ReadMetrics::new(&registry)),
            cluster: ClusterMetrics::new(&registry),
            peer: Arc::new(PeerMetrics::new(&registry)),
            transport: Arc::new(TransportMetrics::new(&registry)),
            s3: Arc::new(S3Metrics::new(&registry)),
            registry,
        }
    }

    /// Every metric in Prometheus text format.
    pub fn encode(&self) -> String {
        self.registry.encode()
    }

    pub fn snapshot(&self) -> Snapshot {
        let (o, t, r, x) = (&self.origin, &self.tiers, &self.read, &self.transport);
        Snapshot {
            origin_get_requests: o.get_requests.get(),
            origin_head_requests: o.head_requests.get(),
            origin_bytes: o.bytes.get(),
            origin_errors: o.errors.get() + o.timeouts.get(),
            origin_retries: o.retries.get(),
            origin_stale_served: o.stale_served.get(),
            ram_hits: r.ram_hits.get(),
            ram_misses: r.ram_misses.get(),
            ram_evictions: t.ram_evictions.get(),
            served_bytes_ram: r.served_bytes_ram.get(),
            served_bytes_origin: r.served_bytes_origin.get(),
            served_bytes_disk: r.served_bytes_disk.get(),
            served_bytes_peer: r.served_bytes_peer.get(),
            disk_hits: t.disk_hits.get(),
            // One family, counted by the disk tier and by peer transfers.
            checksum_failures: t.checksum_failures.get(),
            single_flight_waits: r.single_flight_waits.get(),
            rejected_requests: x.rejected_requests.get() + x.rejected_connections.get(),
            open_connections: x.open_connections.get().max(0) as u64,
            requests: x.requests.get(),
            failed_requests: x.failed_requests.get(),
        }
    }
}

/// A point-in-time copy of the counters tests look at.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
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
