//! What the origins did: requests, bytes, failures, retries, stale answers, latencies.

use prometheus::{Histogram, IntCounter};

use crate::stats::Registry;

pub struct OriginMetrics {
    pub get_requests: IntCounter,
    pub head_requests: IntCounter,
    pub bytes: IntCounter,
    pub errors: IntCounter,
    pub timeouts: IntCounter,
    pub retries: IntCounter,
    pub stale_served: IntCounter,
    pub get_duration: Histogram,
    pub head_duration: Histogram,
}

impl OriginMetrics {
    pub fn new(r: &Registry) -> OriginMetrics {
        let requests = r.counter_vec(
            "shardcache_origin_requests_total",
            "Requests sent to origins (each retry counts), by operation",
            &["op"],
        );
        let errors = r.counter_vec(
            "shardcache_origin_errors_total",
            "Origin request attempts that failed, by kind",
            &["kind"],
        );
        let duration = r.latency_vec(
            "shardcache_origin_request_duration_seconds",
            "Duration of origin request attempts that completed, by operation",
            "op",
        );
        OriginMetrics {
            get_requests: requests.with_label_values(&["get"]),
            head_requests: requests.with_label_values(&["head"]),
            bytes: r.counter(
                "shardcache_origin_bytes_total",
                "Object bytes received from origins",
            ),
            errors: errors.with_label_values(&["error"]),
            timeouts: errors.with_label_values(&["timeout"]),
            retries: r.counter(
                "shardcache_origin_retries_total",
                "Origin request attempts that were retries of a failed attempt",
            ),
            stale_served: r.counter(
                "shardcache_origin_stale_served_total",
                "Reads served at the last known version of an object past its TTL because the origin was unreachable (stale_if_error)",
            ),
            get_duration: duration.with_label_values(&["get"]),
            head_duration: duration.with_label_values(&["head"]),
        }
    }

    /// Metrics in a registry of their own (tests and tools that build one origin).
    pub fn standalone() -> std::sync::Arc<OriginMetrics> {
        std::sync::Arc::new(OriginMetrics::new(&Registry::new()))
    }
}
