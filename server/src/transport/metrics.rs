//! What the data plane did: requests received and failed, their durations, requests and
//! connections refused at a limit, connections open.

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::stats::{self, Registry};

pub struct TransportMetrics {
    pub requests: IntCounter,
    pub failed_requests: IntCounter,
    pub read_duration: Histogram,
    pub stat_duration: Histogram,
    pub rejected_requests: IntCounter,
    pub rejected_connections: IntCounter,
    pub open_connections: IntGauge,
    /// Connections closed because the client did not take its data within write_timeout.
    pub write_timeouts: IntCounter,
    /// Connections closed after idle_timeout with nothing in flight.
    pub idle_closed: IntCounter,
    /// Bytes of local clients' registered regions.
    pub local_region_bytes: IntGauge,
    /// Connections closed for an unknown token.
    pub auth_failures: IntCounter,
    /// Requests refused: no token yet, or a dataset the token does not grant.
    pub denied_requests: IntCounter,
}

impl TransportMetrics {
    pub fn new(r: &Registry) -> TransportMetrics {
        let duration = r.latency_vec(
            "shardcache_request_duration_seconds",
            "Duration of data-plane requests from arrival to last byte queued, by operation",
            "op",
        );
        let rejected = stats::rejected(r);
        TransportMetrics {
            requests: r.counter("shardcache_requests_total", "Data-plane requests received"),
            failed_requests: r.counter(
                "shardcache_failed_requests_total",
                "Data-plane requests that ended with an error frame",
            ),
            read_duration: duration.with_label_values(&["read"]),
            stat_duration: duration.with_label_values(&["stat"]),
            rejected_requests: rejected.with_label_values(&["requests_per_connection"]),
            rejected_connections: rejected.with_label_values(&["connections"]),
            open_connections: r.gauge(
                "shardcache_open_connections",
                "Open data-plane connections (TCP connections and QUIC connections)",
            ),
            write_timeouts: r.counter(
                "shardcache_write_timeouts_total",
                "Data-plane connections closed because the client did not take its data within write_timeout",
            ),
            idle_closed: r.counter(
                "shardcache_idle_connections_closed_total",
                "Data-plane connections closed after idle_timeout with nothing in flight",
            ),
            local_region_bytes: r.gauge(
                "shardcache_local_region_bytes",
                "Bytes of the shared-memory regions local clients have registered",
            ),
            auth_failures: r.counter(
                "shardcache_auth_failures_total",
                "Data-plane connections closed because their token is not an access token, or their member's proof does not match the cluster secret",
            ),
            denied_requests: r.counter(
                "shardcache_denied_requests_total",
                "Data-plane requests refused: no token sent yet, or a dataset the token does not grant",
            ),
        }
    }
}
