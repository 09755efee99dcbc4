//! Send-queue credit for one queue pair, without a device: how many reads to
//! post now, which of them to signal, and what a completion retires.
//!
//! Two depths matter and they are not the same:
//! * the **read depth** (`max_rd_atomic`, negotiated with the node): how many
//!   RDMA READs the NIC keeps on the wire. The NIC enforces it; reads beyond
//!   it wait in the send queue and start as earlier ones finish.
//! * the **send-queue depth** (`max_send_wr`): how many work requests the
//!   client may have posted and not yet seen retired. It is sized for the
//!   work (128–512 entries, at least twice the read depth, capped by the
//!   device's `max_qp_wr`), so the send queue always holds reads waiting
//!   for a wire slot and the NIC never idles between a completion and the
//!   next post. This is how `ib_read_bw` runs: `-t` (tx depth, 128) entries
//!   posted, `-o` (outstanding reads) bounding the wire.
//!
//! Signaling: every chain (the WRs of one doorbell) ends with a signaled WR,
//! and a chain is at most a quarter of the send queue. So a signal goes out
//! at least every `sq_depth / 4` WRs (completions keep freeing slots before
//! the queue fills) and the last WR a lane posts in a batch is always
//! signaled. RC completes in order: a signaled completion retires itself and
//! every earlier WR of the QP.
//!
//! The [`tests`](self) drive this against a simulated wire with a fixed
//! latency and link rate, measuring occupancy (time-weighted reads in flight
//! / read depth); see `sendq/sim.rs` for the numbers of the old policy
//! (send queue = read depth, drain before refill).

use std::collections::VecDeque;

/// Fewest send-queue entries a QP gets (unless the device allows fewer).
pub const MIN_SQ_DEPTH: u32 = 128;
/// Most send-queue entries a QP gets without an explicit override.
pub const MAX_SQ_DEPTH: u32 = 512;

/// How one QP's send queue is sized and signaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqConfig {
    /// Send-queue entries (`max_send_wr`).
    pub sq_depth: u32,
    /// Reads the NIC keeps on the wire (`max_rd_atomic`); the occupancy denominator.
    pub rd_depth: u32,
    /// Longest chain (WRs per doorbell); each chain ends signaled.
    pub chain: u32,
}

impl SqConfig {
    /// Sizes the send queue for read depth `rd_depth` on a device allowing
    /// `max_qp_wr` WRs per QP: twice the read depth rounded up to a power of
    /// two, within [`MIN_SQ_DEPTH`]..=[`MAX_SQ_DEPTH`], or `sq_override`;
    /// never above `max_qp_wr`. Chains are at most `chain` and at most a
    /// quarter of the send queue.
    pub fn new(rd_depth: u32, max_qp_wr: u32, chain: u32, sq_override: Option<u32>) -> SqConfig {
        let rd_depth = rd_depth.max(1);
        let max_qp_wr = max_qp_wr.max(1);
        let sized = rd_depth
            .saturating_mul(2)
            .next_power_of_two()
            .clamp(MIN_SQ_DEPTH, MAX_SQ_DEPTH);
        let sq_depth = sq_override.unwrap_or(sized).clamp(1, max_qp_wr);
        SqConfig {
            sq_depth,
            rd_depth: rd_depth.min(sq_depth),
            chain: chain.clamp(1, (sq_depth / 4).max(1)),
        }
    }

    /// The largest number of WRs between two signaled ones.
    pub fn signal_every(&self) -> u32 {
        self.chain
    }
}

/// One QP's send-queue accounting: WRs are numbered from 0 in post order;
/// `retired` of them are known complete (a signaled completion arrived for
/// them or a later WR).
#[derive(Debug, Clone)]
pub struct SendQueue {
    cfg: SqConfig,
    posted: u64,
    retired: u64,
    /// Numbers of the signaled WRs not yet retired, oldest first.
    signaled: VecDeque<u64>,
}

/// What [`SendQueue::plan`] decided: post `n` WRs numbered `first..first+n`,
/// the last one signaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainPlan {
    /// Number of the first WR.
    pub first: u64,
    /// WRs in this chain (1..=chain).
    pub n: u32,
}

impl ChainPlan {
    /// Whether the WR at `pos` (0-based in the chain) is signaled.
    pub fn signaled(&self, pos: u32) -> bool {
        pos + 1 == self.n
    }
}

impl SendQueue {
    /// An empty send queue with this configuration.
    pub fn new(cfg: SqConfig) -> SendQueue {
        SendQueue {
            cfg,
            posted: 0,
            retired: 0,
            signaled: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> SqConfig {
        self.cfg
    }

    /// Changes the read depth (after negotiation with the node), keeping the
    /// send-queue size.
    pub fn set_rd_depth(&mut self, rd_depth: u32) {
        self.cfg.rd_depth = rd_depth.clamp(1, self.cfg.sq_depth);
    }

    /// WRs posted and not yet retired.
    pub fn unretired(&self) -> u32 {
        (self.posted - self.retired) as u32
    }

    /// Free send-queue slots.
    pub fn free(&self) -> u32 {
        self.cfg.sq_depth.saturating_sub(self.unretired())
    }

    /// WRs posted so far (the number the next WR gets).
    pub fn posted(&self) -> u64 {
        self.posted
    }

    /// WRs known complete so far.
    pub fn retired(&self) -> u64 {
        self.retired
    }

    /// WRs provably not complete: from the oldest unretired signaled WR on
    /// (its completion has not arrived, so neither it nor any later WR is
    /// done). Earlier unretired WRs may have completed silently.
    pub fn not_complete(&self) -> u32 {
        match self.signaled.front() {
            Some(&s) => (self.posted - s) as u32,
            None => 0,
        }
    }

    /// Reads provably queued or on the wire, as a fraction of the read depth
    /// (capped at 1): the lower bound of this QP's occupancy right now.
    pub fn occupancy(&self) -> f64 {
        f64::from(self.not_complete().min(self.cfg.rd_depth)) / f64::from(self.cfg.rd_depth)
    }

    /// The next chain to post when `available` reads are waiting: as many as
    /// fit in the free slots, at most one chain. `None` when nothing fits.
    pub fn plan(&self, available: usize) -> Option<ChainPlan> {
        let n = (self.free().min(self.cfg.chain) as usize).min(available) as u32;
        (n > 0).then_some(ChainPlan {
            first: self.posted,
            n,
        })
    }

    /// Records that `plan` was posted (the device accepted it).
    pub fn commit(&mut self, plan: ChainPlan) {
        debug_assert_eq!(plan.first, self.posted);
        self.posted += u64::from(plan.n);
        self.signaled.push_back(self.posted - 1);
    }

    /// A successful signaled completion of WR `wr`: retires it and every
    /// earlier WR. Returns how many WRs were retired, or `None` when `wr` is
    /// not a signaled WR posted and still outstanding here (stale or foreign).
    pub fn complete(&mut self, wr: u64) -> Option<u32> {
        if wr < self.retired || wr >= self.posted || !self.signaled.contains(&wr) {
            return None;
        }
        while self.signaled.front().is_some_and(|&s| s <= wr) {
            self.signaled.pop_front();
        }
        let n = (wr + 1 - self.retired) as u32;
        self.retired = wr + 1;
        Some(n)
    }

    /// Position of WR `wr` among the unretired ones (0 = oldest), if it is one.
    pub fn position(&self, wr: u64) -> Option<usize> {
        (wr >= self.retired && wr < self.posted).then(|| (wr - self.retired) as usize)
    }

    /// Forgets everything posted (the QP was destroyed or rebuilt).
    pub fn reset(&mut self) {
        self.posted = 0;
        self.retired = 0;
        self.signaled.clear();
    }
}

#[cfg(test)]
#[path = "sendq/sim.rs"]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_separates_send_queue_from_read_depth() {
        let c = SqConfig::new(16, 32768, 32, None);
        assert_eq!((c.sq_depth, c.rd_depth, c.chain), (128, 16, 32));
        let c = SqConfig::new(4, 32768, 32, None);
        assert_eq!(c.sq_depth, 128);
        let c = SqConfig::new(128, 16384, 32, None);
        assert_eq!((c.sq_depth, c.rd_depth), (256, 128));
        let c = SqConfig::new(255, 1 << 20, 64, None);
        assert_eq!((c.sq_depth, c.chain), (512, 64));
        // The device's max_qp_wr caps everything.
        let c = SqConfig::new(16, 64, 32, None);
        assert_eq!((c.sq_depth, c.chain), (64, 16));
        // An override is honoured (within the device limit); chains shrink to a quarter.
        let c = SqConfig::new(16, 32768, 32, Some(16));
        assert_eq!((c.sq_depth, c.rd_depth, c.chain), (16, 16, 4));
    }

    #[test]
    fn plan_commit_complete_retire_in_order() {
        let mut q = SendQueue::new(SqConfig::new(16, 1 << 14, 32, None));
        assert_eq!(q.free(), 128);
        let mut chains = Vec::new();
        while let Some(p) = q.plan(1000) {
            assert!(p.signaled(p.n - 1) && (p.n == 1 || !p.signaled(0)));
            q.commit(p);
            chains.push(p);
        }
        assert_eq!((q.free(), q.unretired(), chains.len()), (0, 128, 4));
        // WRs before the first chain's signaled one may be done silently.
        assert_eq!(q.not_complete(), 128 - 31);
        assert_eq!(q.occupancy(), 1.0);
        // An unsignaled WR's number is not a completion.
        assert_eq!(q.complete(0), None);
        // The second chain's completion retires the first two chains.
        assert_eq!(q.complete(63), Some(64));
        assert_eq!(
            (q.free(), q.not_complete(), q.retired()),
            (64, 128 - 95, 64)
        );
        assert_eq!(q.complete(63), None, "stale completion");
        assert_eq!(q.position(64), Some(0));
        assert_eq!(q.position(63), None);
        let p = q.plan(3).expect("room");
        assert_eq!((p.first, p.n), (128, 3));
        q.commit(p);
        assert_eq!(q.complete(130), Some(67));
        assert_eq!((q.unretired(), q.not_complete()), (0, 0));
        q.reset();
        assert_eq!((q.posted(), q.free()), (0, 128));
    }

    #[test]
    fn a_signal_at_least_every_quarter_queue() {
        for (rd, wr, chain) in [
            (4, 1 << 14, 64),
            (16, 1 << 14, 32),
            (128, 1 << 14, 64),
            (16, 40, 64),
        ] {
            let cfg = SqConfig::new(rd, wr, chain, None);
            let mut q = SendQueue::new(cfg);
            let mut since = 0;
            let mut left = 10_000usize;
            while left > 0 {
                let p = q
                    .plan(left.min(7 + left % 50))
                    .expect("room after completions");
                for pos in 0..p.n {
                    since = if p.signaled(pos) { 0 } else { since + 1 };
                    assert!(since < cfg.sq_depth / 4, "{cfg:?}");
                }
                q.commit(p);
                left -= p.n as usize;
                if q.free() == 0 {
                    let oldest = q.signaled[0];
                    q.complete(oldest).expect("signaled");
                }
            }
            // The last WR posted is signaled: the batch end is always seen.
            assert_eq!(q.signaled.back(), Some(&(q.posted() - 1)));
        }
    }
}
