//! Completions: polling every rail's CQ, retiring chains in order (RC
//! completes in order, so a signaled completion retires every earlier chain
//! of its lane), handing a failed lane to rebuild, sleeping on the rails'
//! completion channels once spinning has gone on long enough, and noticing
//! a stalled node.
//!
//! Waiting is spin-then-sleep: the batch loop polls the CQs without pause
//! (completions of a deep send queue arrive microseconds apart, and a
//! context switch would cost more than it saves) until nothing has
//! progressed for [`ClientOptions::spin`](super::ClientOptions::spin); then
//! it arms every rail's CQ, polls once more (a completion that arrived
//! before arming raises no event) and sleeps in `poll(2)` on the rails'
//! completion channels. A rank waiting on a slow node, or on a deep queue of
//! large reads, therefore does not burn a core.

use std::time::{Duration, Instant};

use seqfeed_transport::TransportError;

use super::lanes::wr_id_parts;
use super::posting::Batch;
use super::{node_err, VerbsTransport};
use crate::raw::{wait_readable, wc_status_str};

/// Longest single sleep on the completion channels: the batch loop wakes at
/// least this often to enforce its deadline and check the node.
const MAX_SLEEP: Duration = Duration::from_millis(100);

/// Progress bookkeeping of one batch: when it must end, when a completion
/// last arrived, when the node was last asked whether it is alive.
pub(super) struct Stall {
    deadline: Instant,
    last_progress: Instant,
    alive_checked: Instant,
    idle: u32,
}

impl Stall {
    /// Whether the loop has spun without progress for longer than `spin`
    /// (`None`: never give up spinning). Reads the clock every 64 idle rounds.
    pub(super) fn spun_out(&self, spin: Option<Duration>) -> bool {
        match spin {
            None => false,
            Some(s) if s.is_zero() => true,
            Some(s) => self.idle & 63 == 63 && self.last_progress.elapsed() >= s,
        }
    }

    /// A batch that started now and may run for `timeout`.
    pub(super) fn new(timeout: Duration) -> Stall {
        let now = Instant::now();
        Stall {
            deadline: now + timeout,
            last_progress: now,
            alive_checked: now,
            idle: 0,
        }
    }
}

impl VerbsTransport {
    /// Polls every rail's CQ once and applies what completed. Returns whether
    /// any completion of a live lane arrived.
    pub(super) fn poll_completions(&mut self, b: &mut Batch<'_>) -> Result<bool, TransportError> {
        let mut progressed = false;
        for rail in 0..self.rails.len() {
            self.comps.clear();
            let r = &mut self.rails[rail];
            r.cq.poll(&mut r.wc, &mut self.comps).map_err(|e| {
                node_err(
                    &self.node,
                    "ibv_poll_cq",
                    format!("device {}: {e}", r.nic.info.name),
                )
            })?;
            for ci in 0..self.comps.len() {
                let c = self.comps[ci];
                let (lane, gen, wr) = wr_id_parts(c.wr_id);
                let Some(l) = self.lanes.get_mut(lane) else {
                    continue;
                };
                if l.gen != gen || l.qp.is_none() {
                    continue; // completion of a QP already torn down
                }
                progressed = true;
                if c.ok() {
                    let Some(n) = l.sq.complete(wr) else {
                        tracing::warn!(node = %self.node, lane, wr, "verbs: completion for no outstanding signaled WR; ignored");
                        continue;
                    };
                    // In-order completion: this WR and all earlier ones are done.
                    for i in l.inflight.drain(..n as usize) {
                        b.stats.reads += 1;
                        b.stats.bytes += u64::from(b.reads[i as usize].len);
                    }
                } else {
                    let failed = l.sq.position(wr).and_then(|p| l.inflight.get(p).copied());
                    let what = failed
                        .map(|i| self.describe(b.reads, i))
                        .unwrap_or_else(|| "a read".into());
                    let detail = format!(
                        "device {} QP {}: {what}: {}, vendor error {:#x}",
                        self.rails[rail].nic.info.name,
                        c.qp_num,
                        wc_status_str(c.status),
                        c.vendor_err
                    );
                    self.lane_failed(
                        lane,
                        b.pending,
                        &mut b.rebuilds,
                        b.reads,
                        "RDMA READ completion",
                        detail,
                    )?;
                }
            }
        }
        Ok(progressed)
    }

    /// Arms every rail's CQ, polls once more, and when that finds nothing
    /// sleeps on the rails' completion channels until a completion event,
    /// the next node check, the batch deadline or [`MAX_SLEEP`], whichever
    /// comes first. Returns whether the extra poll made progress.
    pub(super) fn sleep_for_completions(
        &mut self,
        b: &mut Batch<'_>,
        s: &Stall,
    ) -> Result<bool, TransportError> {
        for r in &self.rails {
            r.cq.arm().map_err(|e| {
                node_err(
                    &self.node,
                    "ibv_req_notify_cq",
                    format!("device {}: {e}", r.nic.info.name),
                )
            })?;
        }
        if self.poll_completions(b)? {
            return Ok(true);
        }
        let now = Instant::now();
        let next_check = s.last_progress.max(s.alive_checked) + self.opts.stall_check;
        let timeout = s
            .deadline
            .saturating_duration_since(now)
            .min(next_check.saturating_duration_since(now))
            .clamp(Duration::from_millis(1), MAX_SLEEP);
        self.fds.clear();
        self.fds.extend(self.rails.iter().map(|r| r.channel.fd()));
        wait_readable(&self.fds, timeout).map_err(|e| {
            node_err(
                &self.node,
                "poll(2) on the completion channels",
                e.to_string(),
            )
        })?;
        for r in &self.rails {
            r.channel.drain().map_err(|e| {
                node_err(
                    &self.node,
                    "ibv_get_cq_event",
                    format!("device {}: {e}", r.nic.info.name),
                )
            })?;
        }
        self.counters.sleeps += 1;
        self.counters.sleep_ns += now.elapsed().as_nanos() as u64;
        Ok(false)
    }

    /// After a round without progress: every 1024 idle rounds, or after a
    /// sleep (`slept`), ask the control connection whether the node is still
    /// there (so a dead node fails in about `stall_check`, not the full
    /// timeout) and enforce the batch deadline; `not_posted` is named in the
    /// timeout error.
    pub(super) fn check_stall(
        &mut self,
        s: &mut Stall,
        progressed: bool,
        slept: bool,
        not_posted: usize,
    ) -> Result<(), TransportError> {
        if progressed {
            s.idle = 0;
            s.last_progress = Instant::now();
            return Ok(());
        }
        s.idle += 1;
        if !slept && s.idle & 1023 != 0 {
            std::hint::spin_loop();
            return Ok(());
        }
        if s.last_progress.elapsed() >= self.opts.stall_check
            && s.alive_checked.elapsed() >= self.opts.stall_check
        {
            s.alive_checked = Instant::now();
            if let Err(e) = self.exchange.check_alive() {
                let inflight: usize = self.lanes.iter().map(|l| l.sq.unretired() as usize).sum();
                return Err(TransportError::Backend {
                    node: self.node.clone(),
                    backend: "verbs",
                    what: format!(
                        "waiting for RDMA READ completions: no progress for {:.1}s with {inflight} reads \
                         outstanding, and the node's control connection is gone: {e}",
                        s.last_progress.elapsed().as_secs_f64()
                    ),
                });
            }
        }
        if Instant::now() > s.deadline {
            let inflight: usize = self.lanes.iter().map(|l| l.sq.unretired() as usize).sum();
            return Err(node_err(
                &self.node,
                "waiting for RDMA READ completions",
                format!(
                    "timed out after {:?} with {inflight} reads outstanding and {not_posted} not posted",
                    self.opts.timeout,
                ),
            )
            .into());
        }
        Ok(())
    }
}
