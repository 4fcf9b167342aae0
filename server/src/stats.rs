//! The one metrics registry every module registers into.
//!
//! Each module owns a struct of the metrics it counts (`origin::OriginMetrics`,
//! `cache::TierMetrics`, `service::ReadMetrics`, `cluster::ClusterMetrics`, `peer::PeerMetrics`,
//! `transport::TransportMetrics`), built from a [`Registry`] at start-up with every label value
//! resolved, so the hot path pays one atomic add. A family several modules count into (checksum
//! failures, tier hits, refusals) is defined once here and shared: asking the registry for a
//! name it holds returns the same family. Names carry their unit (`_bytes`, `_seconds`,
//! `_total`); the table of them is in `docs/metrics.md`.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

/// Buckets for request latencies: 100 µs to ~50 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 25.0, 50.0,
];

/// A registered family, kept so a second module asking for the same name shares it.
#[derive(Clone)]
enum Family {
    Counter(IntCounter),
    CounterVec(IntCounterVec),
    Gauge(IntGauge),
    GaugeVec(IntGaugeVec),
    HistogramVec(HistogramVec),
}

/// The server's metrics registry.
pub struct Registry {
    inner: prometheus::Registry,
    families: Mutex<HashMap<&'static str, Family>>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        let r = Registry {
            inner: prometheus::Registry::new(),
            families: Mutex::default(),
        };
        r.gauge_vec("shardcache_build_info", "Build information", &["version"])
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        r
    }

    /// The family called `name`, made by `make` and registered the first time it is asked for.
    fn family(&self, name: &'static str, make: impl FnOnce() -> Family) -> Family {
        let mut families = self.families.lock().expect("lock");
        if let Some(f) = families.get(name) {
            return f.clone();
        }
        let f = make();
        let collector: Box<dyn Collector> = match f.clone() {
            Family::Counter(c) => Box::new(c),
            Family::CounterVec(c) => Box::new(c),
            Family::Gauge(g) => Box::new(g),
            Family::GaugeVec(g) => Box::new(g),
            Family::HistogramVec(h) => Box::new(h),
        };
        self.inner
            .register(collector)
            .expect("a new metric name registers");
        families.insert(name, f.clone());
        f
    }

    pub fn counter(&self, name: &'static str, help: &str) -> IntCounter {
        match self.family(name, || {
            Family::Counter(IntCounter::new(name, help).expect("valid metric"))
        }) {
            Family::Counter(c) => c,
            _ => panic!("{name} is registered as another kind of metric"),
        }
    }

    pub fn counter_vec(&self, name: &'static str, help: &str, labels: &[&str]) -> IntCounterVec {
        match self.family(name, || {
            Family::CounterVec(
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        }) {
            Family::CounterVec(c) => c,
            _ => panic!("{name} is registered as another kind of metric"),
        }
    }

    pub fn gauge(&self, name: &'static str, help: &str) -> IntGauge {
        match self.family(name, || {
            Family::Gauge(IntGauge::new(name, help).expect("valid metric"))
        }) {
            Family::Gauge(g) => g,
            _ => panic!("{name} is registered as another kind of metric"),
        }
    }

    pub fn gauge_vec(&self, name: &'static str, help: &str, labels: &[&str]) -> IntGaugeVec {
        match self.family(name, || {
            Family::GaugeVec(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
        }) {
            Family::GaugeVec(g) => g,
            _ => panic!("{name} is registered as another kind of metric"),
        }
    }

    /// A latency histogram family with one label.
    pub fn latency_vec(&self, name: &'static str, help: &str, label: &str) -> HistogramVec {
        match self.family(name, || {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            Family::HistogramVec(HistogramVec::new(opts, &[label]).expect("valid metric"))
        }) {
            Family::HistogramVec(h) => h,
            _ => panic!("{name} is registered as another kind of metric"),
        }
    }

    /// Every metric in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let families = self.inner.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

// Families counted by more than one module.

/// Blocks whose CRC32C did not match: disk-tier files read back, blocks and chunks from peers.
pub fn checksum_failures(r: &Registry) -> IntCounter {
    r.counter(
        "shardcache_checksum_failures_total",
        "Stored blocks whose CRC32C did not match when read back (dropped and refetched)",
    )
}

/// Block lookups found in a tier (RAM: the read path; disk: the disk tier).
pub fn tier_hits(r: &Registry) -> IntCounterVec {
    r.counter_vec(
        "shardcache_tier_hits_total",
        "Block lookups found in a tier",
        &["tier"],
    )
}

pub fn tier_misses(r: &Registry) -> IntCounterVec {
    r.counter_vec(
        "shardcache_tier_misses_total",
        "Block lookups not found in a tier",
        &["tier"],
    )
}

/// Requests and connections refused: at a limit (transport), or from a non-member (peer).
pub fn rejected(r: &Registry) -> IntCounterVec {
    r.counter_vec(
        "shardcache_rejected_requests_total",
        "Requests and connections refused at a configured limit, by reason",
        &["reason"],
    )
}

/// Add `n` to a counter.
pub fn add(counter: &IntCounter, n: u64) {
    counter.inc_by(n);
}

/// A histogram's child, for modules that time one operation.
pub fn child(h: &HistogramVec, label: &str) -> Histogram {
    h.with_label_values(&[label])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_asked_for_twice_is_one_family() {
        let r = Registry::new();
        checksum_failures(&r).inc();
        checksum_failures(&r).inc_by(2);
        tier_hits(&r).with_label_values(&["ram"]).inc();
        tier_hits(&r).with_label_values(&["disk"]).inc();
        let text = r.encode();
        assert!(
            text.contains("shardcache_checksum_failures_total 3"),
            "{text}"
        );
        assert!(text.contains("shardcache_tier_hits_total{tier=\"ram\"} 1"));
        assert!(text.contains("shardcache_tier_hits_total{tier=\"disk\"} 1"));
        assert!(text.contains("shardcache_build_info{version="));
    }
}
