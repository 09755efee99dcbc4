//! Posting: checking a batch's reads against the region table, and the
//! batch loop that hands pending reads to lanes with room, one chain (one
//! doorbell) at a time, until every read has completed.

use std::collections::VecDeque;
use std::time::Instant;

use seqfeed_transport::{BatchStats, ReadRequest, TransportError};

use super::completions::Stall;
use super::lanes::wr_id;
use super::VerbsTransport;
use crate::raw::ReadWr;

/// Integrates the lanes' occupancy over a batch's time: the value only
/// changes when something is posted or completes, so sampling at those
/// moments is exact. A post counts from the moment `ibv_post_send` is
/// called: a provider may execute the reads inside that call (rxe runs its
/// requester in the caller's context), and that time belongs to the posted
/// state, not to the one before.
pub(super) struct OccupancyClock {
    start: Instant,
    last: Instant,
    value: f64,
    area_ns: f64,
}

impl OccupancyClock {
    /// A clock starting at `now` with nothing posted.
    pub(super) fn start(now: Instant) -> OccupancyClock {
        OccupancyClock {
            start: now,
            last: now,
            value: 0.0,
            area_ns: 0.0,
        }
    }

    /// The occupancy became `value` at `at` (not before the last change).
    pub(super) fn change_at(&mut self, at: Instant, value: f64) {
        let at = at.max(self.last);
        self.area_ns += self.value * (at - self.last).as_nanos() as f64;
        self.last = at;
        self.value = value;
    }

    /// Ends the batch at `now`: (batch nanoseconds, occupancy-weighted nanoseconds).
    pub(super) fn finish(mut self, now: Instant) -> (u64, u64) {
        self.change_at(now, 0.0);
        (
            (self.last - self.start).as_nanos() as u64,
            self.area_ns as u64,
        )
    }
}

/// One batch in progress: its reads, where they go, and what is left.
pub(super) struct Batch<'a> {
    /// The batch's reads, indexed by the `u32`s in `pending` and in chains.
    pub(super) reads: &'a [ReadRequest],
    /// Destination address of offset 0 (host or device).
    pub(super) base: u64,
    /// Destination key per rail.
    pub(super) lkeys: &'a [u32],
    /// Region table index of each read.
    pub(super) region_of: &'a [u32],
    /// Reads not posted yet (or given back by a failed lane).
    pub(super) pending: &'a mut VecDeque<u32>,
    /// What completed so far.
    pub(super) stats: &'a mut BatchStats,
    /// QP rebuilds in this batch.
    pub(super) rebuilds: u32,
    /// Occupancy over the batch's time.
    pub(super) occ: OccupancyClock,
}

impl VerbsTransport {
    pub(super) fn describe(&self, reads: &[ReadRequest], i: u32) -> String {
        match reads.get(i as usize) {
            Some(r) => {
                let name = self
                    .region_index
                    .get(&r.region)
                    .map(|&k| self.regions[k].name.as_str())
                    .unwrap_or("?");
                format!(
                    "{} ({name}) bytes [{}, +{}) -> destination offset {}",
                    r.region, r.offset, r.len, r.dst_offset
                )
            }
            None => format!("read #{i}"),
        }
    }

    /// Checks `reads` against the regions and a destination of `dst_len`
    /// bytes. Returns each read's region index and the reads to post (empty
    /// ones are counted as done in `stats`).
    pub(super) fn plan(
        &self,
        reads: &[ReadRequest],
        dst_len: usize,
        stats: &mut BatchStats,
    ) -> Result<(Vec<u32>, VecDeque<u32>), TransportError> {
        let mut pending = VecDeque::with_capacity(reads.len());
        let mut region_of = Vec::with_capacity(reads.len());
        for (i, r) in reads.iter().enumerate() {
            let Some(&ri) = self.region_index.get(&r.region) else {
                return Err(TransportError::UnknownRegion {
                    node: self.node.clone(),
                    region: r.region,
                });
            };
            r.check(self.regions[ri].len, dst_len)?;
            region_of.push(ri as u32);
            if r.len == 0 {
                stats.reads += 1;
            } else {
                pending.push_back(i as u32);
            }
        }
        Ok((region_of, pending))
    }

    /// Posts and completes `pending` reads into the destination at `base`
    /// (host or device address) covered by `lkeys` (one per rail). On error,
    /// no QP can still write into the destination when this returns.
    pub(super) fn execute(
        &mut self,
        reads: &[ReadRequest],
        base: u64,
        lkeys: &[u32],
        region_of: &[u32],
        mut pending: VecDeque<u32>,
        mut stats: BatchStats,
    ) -> Result<BatchStats, TransportError> {
        let mut b = Batch {
            reads,
            base,
            lkeys,
            region_of,
            pending: &mut pending,
            stats: &mut stats,
            rebuilds: 0,
            occ: OccupancyClock::start(Instant::now()),
        };
        match self.run_batch(&mut b) {
            Ok(()) => Ok(stats),
            Err(e) => {
                self.abandon_inflight();
                Err(e)
            }
        }
    }

    /// The batch loop: post to lanes with room, poll every rail's CQ, and
    /// watch for a stalled node, until nothing is pending or in flight.
    fn run_batch(&mut self, b: &mut Batch<'_>) -> Result<(), TransportError> {
        let mut stall = Stall::new(self.opts.timeout);
        // Lanes without a QP (broken in an earlier batch) are rebuilt first.
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].qp.is_none() {
                self.rebuild_lane(lane)?;
            }
        }
        b.occ = OccupancyClock::start(Instant::now());
        loop {
            let posted = self.post_ready(b)?;
            if b.pending.is_empty() && self.lanes.iter().all(|l| l.inflight.is_empty()) {
                let occ = std::mem::replace(&mut b.occ, OccupancyClock::start(Instant::now()));
                let (batch_ns, occupied_ns) = occ.finish(Instant::now());
                self.counters.batch_ns += batch_ns;
                self.counters.occupied_ns += occupied_ns;
                return Ok(());
            }
            let mut completed = self.poll_completions(b)?;
            let mut slept = false;
            if !posted && !completed && stall.spun_out(self.opts.spin) {
                completed = self.sleep_for_completions(b, &stall)?;
                slept = !completed;
            }
            if completed {
                b.occ.change_at(Instant::now(), self.lane_occupancy());
            }
            self.check_stall(&mut stall, posted || completed, slept, b.pending.len())?;
        }
    }

    /// Mean over lanes of [`SendQueue::occupancy`](crate::SendQueue::occupancy) now.
    fn lane_occupancy(&self) -> f64 {
        let n = self.lanes.len().max(1) as f64;
        self.lanes.iter().map(|l| l.sq.occupancy()).sum::<f64>() / n
    }

    /// Post: every lane with free send-queue slots takes pending reads, in
    /// chains, up to its even share of what was pending at the start of the
    /// round (so a small batch still spreads over every lane and rail).
    /// Returns whether anything was posted.
    fn post_ready(&mut self, b: &mut Batch<'_>) -> Result<bool, TransportError> {
        let nlanes = self.lanes.len();
        let share = b.pending.len().div_ceil(nlanes.max(1));
        let mut progressed = false;
        for k in 0..nlanes {
            let lane = self.lane_order[(self.next_lane + k) % nlanes];
            let mut quota = share;
            while quota > 0 && !b.pending.is_empty() {
                let l = &self.lanes[lane];
                if l.qp.is_none() {
                    break;
                }
                let Some(plan) = l.sq.plan(quota.min(b.pending.len())) else {
                    break;
                };
                let n = plan.n as usize;
                let rail = &self.rails[l.rail];
                let lkey = b.lkeys[l.rail];
                let gen = l.gen;
                self.wrs.clear();
                for pos in 0..n {
                    let i = b.pending[pos];
                    let r = &b.reads[i as usize];
                    let ri = b.region_of[i as usize] as usize;
                    let (raddr, rkey) = rail.remote[ri];
                    self.wrs.push(ReadWr {
                        wr_id: wr_id(lane, gen, plan.first + pos as u64),
                        signaled: plan.signaled(pos as u32),
                        local_addr: b.base + r.dst_offset,
                        lkey,
                        len: r.len,
                        remote_addr: raddr + r.offset,
                        rkey,
                    });
                }
                let l = &mut self.lanes[lane];
                let t0 = Instant::now();
                let posted = match l.qp.as_mut() {
                    Some(qp) => qp.post_reads(&self.wrs),
                    None => Err(std::io::Error::other("no QP")),
                };
                match posted {
                    Ok(()) => {
                        l.sq.commit(plan);
                        l.inflight.extend(b.pending.drain(..n));
                        let on_rail = l.rail;
                        self.rails[on_rail].reads += n as u64;
                        quota -= n;
                        b.stats.posts += 1;
                        self.counters.doorbells += 1;
                        progressed = true;
                        let occupancy = self.lane_occupancy();
                        b.occ.change_at(t0, occupancy);
                    }
                    Err(e) => {
                        let detail = format!(
                            "device {}: posting {n} reads, first {}: {e}",
                            self.rails[self.lanes[lane].rail].nic.info.name,
                            self.describe(b.reads, b.pending[0])
                        );
                        self.lane_failed(
                            lane,
                            b.pending,
                            &mut b.rebuilds,
                            b.reads,
                            "ibv_post_send",
                            detail,
                        )?;
                        break;
                    }
                }
            }
        }
        self.next_lane = (self.next_lane + 1) % nlanes.max(1);
        Ok(progressed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn occupancy_clock_weights_values_by_time_from_the_post() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut c = OccupancyClock::start(t);
        // Idle 1 ms, then a post issued at 1 ms (its call returning at 3 ms) fills the
        // queue; the completions at 5 ms leave it a quarter full; done at 6 ms.
        c.change_at(ms(1), 1.0);
        c.change_at(ms(5), 0.25);
        let (batch, occupied) = c.finish(ms(6));
        assert_eq!(batch, 6_000_000);
        assert_eq!(occupied, 4_250_000);
        // A change stamped before the last one counts from the last one.
        let mut c = OccupancyClock::start(t);
        c.change_at(ms(2), 0.5);
        c.change_at(ms(1), 1.0);
        assert_eq!(c.finish(ms(3)), (3_000_000, 1_000_000));
    }
}
