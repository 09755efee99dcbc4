//! Completions: polling every rail's CQ, retiring chains in order (RC
//! completes in order, so a signaled completion retires every earlier chain
//! of its lane), handing a failed lane to rebuild, and noticing a stalled
//! node.

use std::time::{Duration, Instant};

use seqfeed_transport::TransportError;

use super::lanes::wr_id_parts;
use super::posting::Batch;
use super::{node_err, VerbsTransport};
use crate::raw::wc_status_str;

/// Progress bookkeeping of one batch: when it must end, when a completion
/// last arrived, when the node was last asked whether it is alive.
pub(super) struct Stall {
    deadline: Instant,
    last_progress: Instant,
    alive_checked: Instant,
    idle: u32,
}

impl Stall {
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

    /// After a round without progress: every 1024 idle rounds, ask the
    /// control connection whether the node is still there (so a dead node
    /// fails in about `stall_check`, not the full timeout) and enforce the
    /// batch deadline; `not_posted` is named in the timeout error.
    pub(super) fn check_stall(
        &mut self,
        s: &mut Stall,
        progressed: bool,
        not_posted: usize,
    ) -> Result<(), TransportError> {
        if progressed {
            s.idle = 0;
            s.last_progress = Instant::now();
            return Ok(());
        }
        s.idle += 1;
        if s.idle & 1023 != 0 {
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
