//! What the tiers did: hits, misses, evictions, admissions declined, I/O errors, damaged blocks,
//! and their usage (gauges set when they change, and for RAM at scrape time).

use prometheus::{IntCounter, IntGaugeVec};

use crate::stats::{self, Registry};

pub struct TierMetrics {
    pub ram_evictions: IntCounter,
    pub disk_hits: IntCounter,
    pub disk_misses: IntCounter,
    pub disk_evictions: IntCounter,
    pub disk_errors: IntCounter,
    pub disk_admissions_rejected: IntCounter,
    pub disk_admissions_skipped: IntCounter,
    /// Block files whose CRC32C or header failed when read back.
    pub checksum_failures: IntCounter,
    pub degraded: IntGaugeVec,
    pub used_bytes: IntGaugeVec,
    pub capacity_bytes: IntGaugeVec,
}

impl TierMetrics {
    pub fn new(r: &Registry) -> TierMetrics {
        let hits = stats::tier_hits(r);
        let misses = stats::tier_misses(r);
        let evictions = r.counter_vec(
            "shardcache_tier_evictions_total",
            "Blocks evicted from a tier to stay within its budget",
            &["tier"],
        );
        let errors = r.counter_vec(
            "shardcache_tier_errors_total",
            "I/O errors of a cache tier (each one degrades the tier, never a read)",
            &["tier"],
        );
        let admissions = r.counter_vec(
            "shardcache_tier_admissions_declined_total",
            "Blocks a tier did not store, by reason (policy: not admitted; busy: write queue full)",
            &["tier", "reason"],
        );
        let degraded = r.gauge_vec(
            "shardcache_tier_degraded",
            "1 while a tier is failing I/O and reads bypass it",
            &["tier"],
        );
        degraded.with_label_values(&["disk"]).set(0);
        TierMetrics {
            ram_evictions: evictions.with_label_values(&["ram"]),
            disk_hits: hits.with_label_values(&["disk"]),
            disk_misses: misses.with_label_values(&["disk"]),
            disk_evictions: evictions.with_label_values(&["disk"]),
            disk_errors: errors.with_label_values(&["disk"]),
            disk_admissions_rejected: admissions.with_label_values(&["disk", "policy"]),
            disk_admissions_skipped: admissions.with_label_values(&["disk", "busy"]),
            checksum_failures: stats::checksum_failures(r),
            degraded,
            used_bytes: r.gauge_vec(
                "shardcache_tier_used_bytes",
                "Bytes held by a cache tier",
                &["tier"],
            ),
            capacity_bytes: r.gauge_vec(
                "shardcache_tier_capacity_bytes",
                "Byte budget of a cache tier",
                &["tier"],
            ),
        }
    }

    /// Metrics in a registry of their own (tests and tools that open one tier).
    pub fn standalone() -> std::sync::Arc<TierMetrics> {
        std::sync::Arc::new(TierMetrics::new(&Registry::new()))
    }
}
