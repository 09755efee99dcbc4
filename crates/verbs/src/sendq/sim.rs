//! A simulated QP for [`SendQueue`](super::SendQueue): a wire with a fixed
//! round-trip latency and link rate, a NIC that starts queued reads while
//! fewer than the read depth are on the wire, and a client that reacts to
//! each signaled completion after a fixed delay by posting what fits.
//!
//! Occupancy = time-weighted mean of reads on the wire / read depth, from
//! the first post to the batch's last completion (tail included).
//!
//! Measured (`cargo test -p seqfeed-verbs sendq -- --nocapture`), 200 × depth
//! reads per batch:
//!
//! | wire                        | depth | old (SQ = depth) | new (SQ 128–256) |
//! |-----------------------------|-------|------------------|------------------|
//! | 1 µs RTT, 1.3 µs/read       | 4     | 0.59             | 1.00             |
//! | (64 KiB at ~50 GB/s)        | 16    | 0.52             | 1.00             |
//! |                             | 128   | 0.88             | 1.00             |
//! | 2 µs RTT, 0.33 µs/read      | 4     | 0.78             | 1.00             |
//! | (16 KiB at ~50 GB/s)        | 16    | 0.63             | 1.00             |
//! |                             | 128   | 0.87             | 1.00             |
//! | 5 µs RTT, 0.1 µs/read       | 4     | 0.89             | 1.00             |
//! | (4 KiB at ~40 GB/s)         | 16    | 0.82             | 1.00             |
//! |                             | 128   | 0.84             | 1.00             |
//!
//! (new: 0.997–0.999, the rest is the batch's ramp-up and tail.)
//!
//! The old policy posts a chain of min(depth, 32) and waits for its signaled
//! completion: at depth ≤ 32 the wire drains from `depth` reads to none
//! before the next post (0.52–0.63 at depth 16, a ConnectX's
//! `max_qp_rd_atom`, when the link rather than the round trip is the
//! limit). At depth 128 it posts four chains of 32, so the wire only drops
//! to 96 before a refill (0.84–0.88).

use std::collections::VecDeque;

use super::{SendQueue, SqConfig};

/// The simulated wire and client timing, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wire {
    /// From a read starting on the wire to its last byte landing, unloaded.
    pub latency: f64,
    /// Link time per read (read size / link rate): responses are serialized.
    pub service: f64,
    /// From a completion landing to the client's next post (poll + post).
    pub react: f64,
}

/// Runs one batch of `reads` reads through a QP driven by `cfg` and returns
/// its occupancy.
pub(super) fn occupancy(cfg: SqConfig, reads: u64, w: Wire) -> f64 {
    let mut q = SendQueue::new(cfg);
    let mut pending = reads;
    let mut sq: VecDeque<(u64, bool)> = VecDeque::new(); // posted, not started
    let mut wire: VecDeque<(u64, bool, f64)> = VecDeque::new(); // (wr, signaled, finish)
    let mut cqes: VecDeque<(f64, u64)> = VecDeque::new(); // (visible at, wr)
    let (mut t, mut last_finish, mut area) = (0.0f64, f64::NEG_INFINITY, 0.0f64);
    let mut client_due = Some(0.0f64);
    loop {
        // Client: take what is visible, then post what fits.
        if client_due.is_some_and(|c| c <= t) {
            client_due = None;
            while cqes.front().is_some_and(|&(v, _)| v <= t) {
                let (_, wr) = cqes.pop_front().expect("front checked");
                q.complete(wr).expect("a signaled, outstanding WR");
            }
            while let Some(p) = q.plan(pending as usize) {
                q.commit(p);
                for pos in 0..p.n {
                    sq.push_back((p.first + u64::from(pos), p.signaled(pos)));
                }
                pending -= u64::from(p.n);
            }
        }
        if q.retired() == reads {
            return area / (f64::from(cfg.rd_depth) * t);
        }
        // NIC: start queued reads while the read depth allows.
        while wire.len() < cfg.rd_depth as usize {
            let Some((wr, sig)) = sq.pop_front() else {
                break;
            };
            let finish = (t + w.latency).max(last_finish + w.service);
            last_finish = finish;
            wire.push_back((wr, sig, finish));
        }
        // Next event: a read landing, or the client acting on a completion.
        let next_wire = wire.front().map(|&(_, _, f)| f);
        let next = match (next_wire, client_due) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => panic!("simulation stalled: {} pending, {q:?}", pending),
        };
        area += wire.len() as f64 * (next - t);
        t = next;
        while wire.front().is_some_and(|&(_, _, f)| f <= t) {
            let (wr, sig, f) = wire.pop_front().expect("front checked");
            if sig {
                let visible = f + w.react;
                cqes.push_back((visible, wr));
                client_due = Some(client_due.map_or(visible, |c| c.min(visible)));
            }
        }
    }
}

/// The policy before issue 10: the send queue as deep as the read depth,
/// chains of up to 32, each ending signaled (so at depth ≤ 32 a lane posts
/// one chain, waits for all of it, and posts again).
fn old_policy(depth: u32) -> SqConfig {
    SqConfig {
        sq_depth: depth,
        rd_depth: depth,
        chain: depth.min(32),
    }
}

#[test]
fn occupancy_new_policy_keeps_the_wire_full_old_drains() {
    let wires = [
        Wire {
            latency: 1.0,
            service: 1.3,
            react: 0.2,
        },
        Wire {
            latency: 2.0,
            service: 0.33,
            react: 0.2,
        },
        Wire {
            latency: 5.0,
            service: 0.1,
            react: 0.5,
        },
    ];
    for w in wires {
        for depth in [4u32, 16, 128] {
            let reads = 200 * u64::from(depth);
            let new = occupancy(SqConfig::new(depth, 1 << 14, 32, None), reads, w);
            let old = occupancy(old_policy(depth), reads, w);
            eprintln!("{w:?} depth {depth}: occupancy old {old:.3} new {new:.3}");
            assert!(
                new >= 0.9,
                "depth {depth} {w:?}: new policy occupancy {new:.3}"
            );
            assert!(new > old, "depth {depth} {w:?}: new {new:.3} old {old:.3}");
            if depth == 16 && w.service * 16.0 > w.latency {
                // Link-bound: the old policy drains to zero between chains.
                assert!(old < 0.7, "depth 16 {w:?}: old policy occupancy {old:.3}");
            }
        }
    }
}

#[test]
fn occupancy_holds_with_a_slow_client() {
    // The client takes as long to react as a whole read round trip: the
    // deep send queue still covers it.
    let w = Wire {
        latency: 2.0,
        service: 0.33,
        react: 2.0,
    };
    for depth in [4u32, 16, 128] {
        let new = occupancy(
            SqConfig::new(depth, 1 << 14, 32, None),
            200 * u64::from(depth),
            w,
        );
        assert!(new >= 0.9, "depth {depth}: {new:.3}");
    }
}
