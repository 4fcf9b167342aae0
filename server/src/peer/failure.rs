//! What a failed peer request means for the node that asked: whether the answer is final,
//! whether the peer is marked down, whether bytes arrived damaged, what is counted, and how
//! loudly it is logged. One function decides it for every kind of request.

use super::metrics::PeerMetrics;
use crate::cluster::PeerFailure;

/// What the request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// A block of its owner (`Fill`).
    Owner,
    /// A neighbour's copy (`Probe`), while this node fills the block itself.
    Neighbour,
    /// The node ahead in a chain (`Stream`).
    Upstream,
}

/// The counter a failure adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    FillFailed,
    ProbeMiss,
    ProbeFailed,
    ChainResend,
    ChainCutover,
}

/// What the asker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The peer's answer is final (the object is gone, its version changed, the origin failed
    /// there): relay it instead of asking anyone else.
    pub definitive: bool,
    /// Mark the peer down until a probe says otherwise.
    pub mark_down: bool,
    /// The bytes failed their checksum (counted as a checksum failure too).
    pub corrupt: bool,
    /// Ask the same peer again (a damaged chain chunk), within a bound.
    pub resend: bool,
    pub counted: Counted,
    /// Worth a warning; otherwise a debug line.
    pub warn: bool,
}

/// Decide what `failure` of an `asked` request means.
pub fn judge(asked: Asked, failure: &PeerFailure) -> Verdict {
    let base = Verdict {
        definitive: false,
        mark_down: false,
        corrupt: false,
        resend: false,
        counted: Counted::FillFailed,
        warn: false,
    };
    match (asked, failure) {
        // The owner's definitive answer is relayed; anything else tries the next candidate.
        (Asked::Owner, PeerFailure::Answer { .. }) => Verdict {
            definitive: true,
            ..base
        },
        (Asked::Owner, PeerFailure::Unavailable { .. }) => Verdict {
            mark_down: true,
            warn: true,
            ..base
        },
        (Asked::Owner, PeerFailure::Corrupt { .. }) => Verdict {
            mark_down: true,
            corrupt: true,
            warn: true,
            ..base
        },
        // Busy, refused, or slow (it may be waiting on the origin): routine, and not down.
        (Asked::Owner, PeerFailure::Declined { .. } | PeerFailure::Miss) => base,

        // A neighbour without the block, whatever it says about it, is a miss.
        (Asked::Neighbour, PeerFailure::Miss | PeerFailure::Answer { .. }) => Verdict {
            counted: Counted::ProbeMiss,
            ..base
        },
        (Asked::Neighbour, PeerFailure::Corrupt { .. }) => Verdict {
            mark_down: true,
            corrupt: true,
            counted: Counted::ProbeFailed,
            warn: true,
            ..base
        },
        (Asked::Neighbour, PeerFailure::Unavailable { .. }) => Verdict {
            mark_down: true,
            counted: Counted::ProbeFailed,
            ..base
        },
        (Asked::Neighbour, PeerFailure::Declined { .. }) => Verdict {
            counted: Counted::ProbeFailed,
            ..base
        },

        // A chain: a damaged chunk is asked for again; a definitive answer ends the fill; any
        // other failure cuts the node out (marked down only when it is unreachable: slow is
        // not dead, it may be waiting on its own upstream).
        (Asked::Upstream, PeerFailure::Corrupt { .. }) => Verdict {
            corrupt: true,
            resend: true,
            counted: Counted::ChainResend,
            warn: true,
            ..base
        },
        (Asked::Upstream, PeerFailure::Answer { .. }) => Verdict {
            definitive: true,
            counted: Counted::ChainCutover,
            ..base
        },
        (Asked::Upstream, PeerFailure::Unavailable { .. }) => Verdict {
            mark_down: true,
            counted: Counted::ChainCutover,
            warn: true,
            ..base
        },
        (Asked::Upstream, PeerFailure::Declined { .. } | PeerFailure::Miss) => Verdict {
            counted: Counted::ChainCutover,
            warn: true,
            ..base
        },
    }
}

/// Count a verdict.
pub fn record(stats: &PeerMetrics, v: &Verdict) {
    let counter = match v.counted {
        Counted::FillFailed => &stats.fill_failed,
        Counted::ProbeMiss => &stats.probe_miss,
        Counted::ProbeFailed => &stats.probe_failed,
        Counted::ChainResend => &stats.chain_resends,
        Counted::ChainCutover => &stats.chain_cutovers,
    };
    counter.inc();
    if v.corrupt {
        stats.checksum_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcache_proto::ErrorCode;

    fn all() -> Vec<PeerFailure> {
        vec![
            PeerFailure::Miss,
            PeerFailure::Answer {
                code: ErrorCode::NotFound,
                message: "gone".into(),
            },
            PeerFailure::Unavailable {
                reason: "reset".into(),
            },
            PeerFailure::Corrupt {
                reason: "crc".into(),
            },
            PeerFailure::Declined {
                reason: "busy".into(),
            },
        ]
    }

    #[test]
    fn only_unreachable_or_damaging_peers_are_marked_down() {
        for asked in [Asked::Owner, Asked::Neighbour] {
            for f in all() {
                let v = judge(asked, &f);
                let expect = matches!(
                    f,
                    PeerFailure::Unavailable { .. } | PeerFailure::Corrupt { .. }
                );
                assert_eq!(v.mark_down, expect, "{asked:?} {f:?}");
            }
        }
        // In a chain a damaged chunk is resent first; the resend bound decides later.
        for f in all() {
            let v = judge(Asked::Upstream, &f);
            assert_eq!(
                v.mark_down,
                matches!(f, PeerFailure::Unavailable { .. }),
                "{f:?}"
            );
            assert_eq!(v.resend, matches!(f, PeerFailure::Corrupt { .. }), "{f:?}");
        }
    }

    #[test]
    fn definitive_answers_end_the_search_except_from_neighbours() {
        let answer = PeerFailure::Answer {
            code: ErrorCode::PreconditionFailed,
            message: "changed".into(),
        };
        assert!(judge(Asked::Owner, &answer).definitive);
        assert!(judge(Asked::Upstream, &answer).definitive);
        let v = judge(Asked::Neighbour, &answer);
        assert!(!v.definitive && v.counted == Counted::ProbeMiss);
        for f in all()
            .into_iter()
            .filter(|f| !matches!(f, PeerFailure::Answer { .. }))
        {
            for asked in [Asked::Owner, Asked::Neighbour, Asked::Upstream] {
                assert!(!judge(asked, &f).definitive, "{asked:?} {f:?}");
            }
        }
    }

    #[test]
    fn counters_and_loudness() {
        let busy = PeerFailure::Declined {
            reason: "busy".into(),
        };
        let v = judge(Asked::Owner, &busy);
        assert_eq!((v.counted, v.warn), (Counted::FillFailed, false));
        let v = judge(Asked::Neighbour, &PeerFailure::Miss);
        assert_eq!((v.counted, v.warn), (Counted::ProbeMiss, false));
        let v = judge(
            Asked::Upstream,
            &PeerFailure::Corrupt {
                reason: "crc".into(),
            },
        );
        assert_eq!(
            (v.counted, v.corrupt, v.warn),
            (Counted::ChainResend, true, true)
        );
        let stats = PeerMetrics::new(&crate::stats::Registry::new());
        record(&stats, &v);
        assert_eq!(stats.chain_resends.get(), 1);
        assert_eq!(stats.checksum_failures.get(), 1);
    }
}
