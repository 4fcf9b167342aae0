//! Eviction and admission policies for the disk tier, as plain structs with no I/O.
//!
//! A policy orders the blocks a tier holds (which one leaves next) and decides whether a new
//! block may push one out. Two ship:
//!
//! - [`Lru`]: evict the least recently used block, admit everything. Right when the working set
//!   fits, and what most caches do.
//! - [`EpochAware`]: the same recency order, plus a frequency gate (in the manner of TinyLFU): a
//!   new block is admitted only if it has been asked for more often, recently, than the block it
//!   would evict. Training reads a dataset once per epoch in a new shuffled order; when the
//!   dataset is larger than the cache, LRU keeps replacing blocks that will not be read again
//!   until the next epoch and hits little, while the gate keeps a stable set that hits
//!   cache/dataset of every epoch's reads. Frequencies are counted in a small count-min sketch
//!   that halves itself after `10 × capacity` requests, so a new workload displaces an old one
//!   within a few epochs.

use std::collections::{BTreeMap, HashMap};

use super::BlockKey;

/// Which policy a tier uses (`disk_eviction` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Lru,
    #[default]
    EpochAware,
}

impl PolicyKind {
    /// A policy for a tier that holds about `capacity_blocks` blocks.
    pub fn build(self, capacity_blocks: usize) -> Box<dyn EvictionPolicy> {
        match self {
            PolicyKind::Lru => Box::new(Lru::default()),
            PolicyKind::EpochAware => Box::new(EpochAware::new(capacity_blocks)),
        }
    }
}

/// What a tier tells its policy, and asks it.
pub trait EvictionPolicy: Send {
    /// A lookup of `key`, hit or miss.
    fn record_request(&mut self, key: &BlockKey);
    /// `key` was read from the tier.
    fn touch(&mut self, key: &BlockKey);
    /// `key` entered the tier.
    fn insert(&mut self, key: BlockKey);
    /// `key` left the tier.
    fn remove(&mut self, key: &BlockKey);
    /// The block to evict next, if any (it stays until [`EvictionPolicy::remove`]).
    fn victim(&self) -> Option<BlockKey>;
    /// Whether `candidate` may take `victim`'s place.
    fn admit(&self, _candidate: &BlockKey, _victim: &BlockKey) -> bool {
        true
    }
}

/// Least recently used first.
#[derive(Debug, Default)]
pub struct Lru {
    tick: u64,
    by_key: HashMap<BlockKey, u64>,
    by_tick: BTreeMap<u64, BlockKey>,
}

impl Lru {
    fn bump(&mut self, key: BlockKey) {
        self.tick += 1;
        if let Some(old) = self.by_key.insert(key, self.tick) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.tick, key);
    }
}

impl EvictionPolicy for Lru {
    fn record_request(&mut self, _key: &BlockKey) {}

    fn touch(&mut self, key: &BlockKey) {
        if self.by_key.contains_key(key) {
            self.bump(*key);
        }
    }

    fn insert(&mut self, key: BlockKey) {
        self.bump(key);
    }

    fn remove(&mut self, key: &BlockKey) {
        if let Some(tick) = self.by_key.remove(key) {
            self.by_tick.remove(&tick);
        }
    }

    fn victim(&self) -> Option<BlockKey> {
        self.by_tick.first_key_value().map(|(_, k)| *k)
    }
}

/// LRU order with a frequency gate on admission.
pub struct EpochAware {
    lru: Lru,
    sketch: Sketch,
}

impl EpochAware {
    pub fn new(capacity_blocks: usize) -> EpochAware {
        EpochAware {
            lru: Lru::default(),
            sketch: Sketch::new(capacity_blocks.max(16)),
        }
    }
}

impl EvictionPolicy for EpochAware {
    fn record_request(&mut self, key: &BlockKey) {
        self.sketch.increment(key);
    }

    fn touch(&mut self, key: &BlockKey) {
        self.lru.touch(key);
    }

    fn insert(&mut self, key: BlockKey) {
        self.lru.insert(key);
    }

    fn remove(&mut self, key: &BlockKey) {
        self.lru.remove(key);
    }

    fn victim(&self) -> Option<BlockKey> {
        self.lru.victim()
    }

    /// The candidate's count includes the request that brought it here; the victim's does not
    /// necessarily (it may not have been asked for yet this epoch), so the candidate needs
    /// strictly more requests before this one than the victim has had.
    fn admit(&self, candidate: &BlockKey, victim: &BlockKey) -> bool {
        self.sketch.estimate(candidate) > self.sketch.estimate(victim).saturating_add(1)
    }
}

/// Count-min sketch of 4-bit counters with periodic halving.
struct Sketch {
    rows: [Vec<u8>; 4],
    mask: usize,
    samples: usize,
    reset_at: usize,
}

impl Sketch {
    fn new(capacity: usize) -> Sketch {
        // 4 counters per block, within [1 Ki, 4 Mi] per row (16 MiB for all four rows at most).
        let width = capacity
            .saturating_mul(4)
            .clamp(1024, 1 << 22)
            .next_power_of_two();
        Sketch {
            rows: std::array::from_fn(|_| vec![0u8; width]),
            mask: width - 1,
            samples: 0,
            reset_at: capacity.saturating_mul(10),
        }
    }

    /// Deterministic per-row hash (splitmix64 of the key folded to 64 bits): the keys are
    /// already SHA-256 derived, and a fixed function keeps the policy reproducible.
    fn slot(&self, row: usize, key: &BlockKey) -> usize {
        const SEEDS: [u64; 4] = [
            0x9E37_79B9_7F4A_7C15,
            0xC2B2_AE3D_27D4_EB4F,
            0x1656_67B1_9E37_79F9,
            0x85EB_CA77_C2B2_AE63,
        ];
        let id = u64::from_le_bytes(key.object.0[..8].try_into().expect("8 bytes"))
            ^ u64::from_le_bytes(key.object.0[8..].try_into().expect("8 bytes")).rotate_left(17);
        let mut x = id ^ key.index.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ SEEDS[row];
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (x ^ (x >> 31)) as usize & self.mask
    }

    fn increment(&mut self, key: &BlockKey) {
        for row in 0..4 {
            let i = self.slot(row, key);
            self.rows[row][i] = (self.rows[row][i] + 1).min(15);
        }
        self.samples += 1;
        if self.samples >= self.reset_at {
            for row in &mut self.rows {
                row.iter_mut().for_each(|c| *c /= 2);
            }
            self.samples /= 2;
        }
    }

    fn estimate(&self, key: &BlockKey) -> u8 {
        (0..4)
            .map(|row| self.rows[row][self.slot(row, key)])
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjectId;

    fn key(i: u64) -> BlockKey {
        BlockKey {
            object: ObjectId([1; 16]),
            index: i,
        }
    }

    /// A cache of `capacity` equal blocks driven by `policy` the way the disk tier drives it.
    /// Returns the hit ratio of each epoch.
    fn simulate(
        mut policy: Box<dyn EvictionPolicy>,
        capacity: usize,
        dataset: u64,
        epochs: u64,
    ) -> Vec<f64> {
        let mut held = std::collections::HashSet::new();
        let mut ratios = Vec::new();
        for epoch in 0..epochs {
            let mut order: Vec<u64> = (0..dataset).collect();
            shuffle(&mut order, epoch * 7919 + 17);
            let mut hits = 0;
            for i in order {
                let k = key(i);
                policy.record_request(&k);
                if held.contains(&k) {
                    hits += 1;
                    policy.touch(&k);
                    continue;
                }
                if held.len() < capacity {
                    held.insert(k);
                    policy.insert(k);
                    continue;
                }
                let victim = policy.victim().expect("full cache has a victim");
                if policy.admit(&k, &victim) {
                    held.remove(&victim);
                    policy.remove(&victim);
                    held.insert(k);
                    policy.insert(k);
                }
            }
            ratios.push(hits as f64 / dataset as f64);
        }
        ratios
    }

    /// Deterministic Fisher–Yates with a xorshift generator.
    fn shuffle(v: &mut [u64], seed: u64) {
        let mut s = seed | 1;
        for i in (1..v.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.swap(i, (s % (i as u64 + 1)) as usize);
        }
    }

    #[test]
    fn shuffled_epochs_over_twice_the_cache() {
        let (capacity, dataset, epochs) = (1000, 2000, 8);
        let lru = simulate(PolicyKind::Lru.build(capacity), capacity, dataset, epochs);
        let epoch = simulate(
            PolicyKind::EpochAware.build(capacity),
            capacity,
            dataset,
            epochs,
        );
        // After the first epoch, the epoch-aware policy keeps a stable half of the dataset.
        let mean = |r: &[f64]| r[1..].iter().sum::<f64>() / (r.len() - 1) as f64;
        let (lru_mean, epoch_mean) = (mean(&lru), mean(&epoch));
        eprintln!("hit ratio per epoch: lru {lru:.3?} epoch-aware {epoch:.3?}");
        assert!(
            (0.45..=0.5).contains(&epoch_mean),
            "epoch-aware hit ratio {epoch_mean:.3} ({epoch:?})"
        );
        assert!(lru_mean < 0.2, "LRU hit ratio {lru_mean:.3} ({lru:?})");
    }

    #[test]
    fn a_new_working_set_displaces_the_old_one() {
        let capacity = 500;
        let mut policy = PolicyKind::EpochAware.build(capacity);
        let mut held = std::collections::HashSet::new();
        let mut run = |policy: &mut Box<dyn EvictionPolicy>, base: u64, rounds: u64| {
            let mut hits = 0;
            for _ in 0..rounds {
                for i in base..base + capacity as u64 {
                    let k = key(i);
                    policy.record_request(&k);
                    if held.contains(&k) {
                        hits += 1;
                        policy.touch(&k);
                    } else if held.len() < capacity {
                        held.insert(k);
                        policy.insert(k);
                    } else {
                        let v = policy.victim().unwrap();
                        if policy.admit(&k, &v) {
                            held.remove(&v);
                            policy.remove(&v);
                            held.insert(k);
                            policy.insert(k);
                        }
                    }
                }
            }
            hits
        };
        run(&mut policy, 0, 5);
        // A different dataset of the same size, read repeatedly, takes over the cache.
        run(&mut policy, 1_000_000, 12);
        let last = run(&mut policy, 1_000_000, 1);
        assert!(
            last as f64 >= 0.9 * capacity as f64,
            "new set hits {last} of {capacity}"
        );
    }

    #[test]
    fn lru_orders_by_recency() {
        let mut p = Lru::default();
        for i in 0..3 {
            p.insert(key(i));
        }
        p.touch(&key(0));
        assert_eq!(p.victim(), Some(key(1)));
        p.remove(&key(1));
        assert_eq!(p.victim(), Some(key(2)));
    }
}
