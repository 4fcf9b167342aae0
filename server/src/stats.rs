//! Server-wide counters of what the read path did. Plain atomics, cheap to bump on the hot path;
//! the metrics endpoint and the tests read them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub origin_get_requests: AtomicU64,
    pub origin_head_requests: AtomicU64,
    pub origin_bytes: AtomicU64,
    pub origin_errors: AtomicU64,
    pub origin_retries: AtomicU64,
    pub ram_hits: AtomicU64,
    pub ram_misses: AtomicU64,
    pub served_bytes_ram: AtomicU64,
    pub served_bytes_origin: AtomicU64,
    pub single_flight_waits: AtomicU64,
    pub rejected_requests: AtomicU64,
    pub open_connections: AtomicU64,
    pub requests: AtomicU64,
    pub failed_requests: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub origin_get_requests: u64,
    pub origin_head_requests: u64,
    pub origin_bytes: u64,
    pub origin_errors: u64,
    pub origin_retries: u64,
    pub ram_hits: u64,
    pub ram_misses: u64,
    pub served_bytes_ram: u64,
    pub served_bytes_origin: u64,
    pub single_flight_waits: u64,
    pub rejected_requests: u64,
    pub open_connections: u64,
    pub requests: u64,
    pub failed_requests: u64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            origin_get_requests: g(&self.origin_get_requests),
            origin_head_requests: g(&self.origin_head_requests),
            origin_bytes: g(&self.origin_bytes),
            origin_errors: g(&self.origin_errors),
            origin_retries: g(&self.origin_retries),
            ram_hits: g(&self.ram_hits),
            ram_misses: g(&self.ram_misses),
            served_bytes_ram: g(&self.served_bytes_ram),
            served_bytes_origin: g(&self.served_bytes_origin),
            single_flight_waits: g(&self.single_flight_waits),
            rejected_requests: g(&self.rejected_requests),
            open_connections: g(&self.open_connections),
            requests: g(&self.requests),
            failed_requests: g(&self.failed_requests),
        }
    }
}
