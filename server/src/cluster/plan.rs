//! The order of a block's chain (pure: no sockets, tested alone).
//!
//! A chain's head reads the origin and sends the block on; its tail only receives. If every
//! block used the same order, the head would read and send everything. Ordering each block's
//! targets by their rendezvous score for that block makes each member the head of about 1/N of
//! the blocks and the tail of about 1/N, so every member sends about (N-1)/N of the data and
//! none sends it all. Members agree on the order without talking (the same scores as
//! placement), and for `--replicas` the head is the block's owner, which already holds it
//! when the block was read before.

use crate::cluster::placement::{Weighted, rank};

/// Indices of `members` in chain order for the block with hash `block`: the `replicas`
/// highest-ranked members (weighted placement: owner first), or, when `replicas` is `None`,
/// every member, weight 0 included (a broadcast puts the data everywhere), by unweighted score.
pub fn chain(members: &[Weighted], block: u64, replicas: Option<usize>) -> Vec<usize> {
    match replicas {
        Some(n) => rank(members, block, n),
        None => {
            let equal: Vec<Weighted> = members
                .iter()
                .map(|m| Weighted {
                    hash: m.hash,
                    weight: 1,
                })
                .collect();
            rank(&equal, block, equal.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{BlockKey, ObjectId};
    use crate::cluster::placement::block_hash;
    use crate::cluster::placement::tests::nodes;

    fn blocks(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| {
            block_hash(&BlockKey {
                object: ObjectId([7; 16]),
                index: i,
            })
        })
    }

    /// Per member: chains it heads, and blocks it sends on (every position but the tail).
    fn load(members: &[Weighted], replicas: Option<usize>, n: u64) -> (Vec<u64>, Vec<u64>) {
        let mut heads = vec![0u64; members.len()];
        let mut sends = vec![0u64; members.len()];
        for b in blocks(n) {
            let order = chain(members, b, replicas);
            heads[order[0]] += 1;
            for &i in &order[..order.len() - 1] {
                sends[i] += 1;
            }
        }
        (heads, sends)
    }

    #[test]
    fn broadcast_chains_hold_every_member_once() {
        let members = nodes(6, |i| if i == 2 { 0 } else { 1 });
        for b in blocks(1000) {
            let mut order = chain(&members, b, None);
            order.sort_unstable();
            assert_eq!(order, (0..6).collect::<Vec<_>>(), "weight 0 included");
        }
    }

    #[test]
    fn heads_and_sends_are_spread() {
        for n in [2usize, 3, 4, 8, 16] {
            let members = nodes(n, |_| 1);
            let total = 20_000u64;
            let (heads, sends) = load(&members, None, total);
            let mean_heads = total as f64 / n as f64;
            let mean_sends = total as f64 * (n - 1) as f64 / n as f64;
            for i in 0..n {
                assert!(
                    (heads[i] as f64 - mean_heads).abs() / mean_heads < 0.1,
                    "n={n}: member {i} heads {} chains, mean {mean_heads}",
                    heads[i]
                );
                assert!(
                    (sends[i] as f64 - mean_sends).abs() / mean_sends < 0.1,
                    "n={n}: member {i} sends {} blocks, mean {mean_sends}",
                    sends[i]
                );
                assert!(sends[i] < total, "n={n}: member {i} sends everything");
            }
        }
    }

    #[test]
    fn replica_chains_start_at_the_owner() {
        let members = nodes(8, |i| 1 + i as u32 % 3);
        for b in blocks(2000) {
            let order = chain(&members, b, Some(3));
            assert_eq!(order.len(), 3);
            assert_eq!(order, rank(&members, b, 3), "the placement order");
            assert_eq!(
                Some(order[0]),
                crate::cluster::placement::owner(&members, b)
            );
        }
        // More replicas than members: everyone of non-zero weight.
        let members = nodes(3, |i| u32::from(i != 1));
        assert_eq!(chain(&members, 42, Some(5)).len(), 2);
    }

    #[test]
    fn the_order_depends_only_on_members_and_block() {
        let members = nodes(5, |_| 1);
        let mut reversed = members.clone();
        reversed.reverse();
        for b in blocks(500) {
            let a: Vec<u64> = chain(&members, b, None)
                .into_iter()
                .map(|i| members[i].hash)
                .collect();
            let r: Vec<u64> = chain(&reversed, b, None)
                .into_iter()
                .map(|i| reversed[i].hash)
                .collect();
            assert_eq!(a, r);
        }
    }
}
