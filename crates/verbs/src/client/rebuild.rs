//! Rebuild: a lane whose QP failed gives its outstanding reads back to the
//! batch, and its QP is replaced through the node's control service, a
//! bounded number of times per batch.

use std::collections::VecDeque;

use seqfeed_transport::{ReadRequest, TransportError};

use super::{node_err, VerbsTransport};

impl VerbsTransport {
    /// Creates a fresh QP for `lane` and connects it through the node.
    pub(super) fn rebuild_lane(&mut self, lane: usize) -> Result<(), TransportError> {
        let rail = self.lanes[lane].rail;
        self.lanes[lane].qp = None; // destroy the old QP first: no late writes into any buffer
                                    // The node destroys its side of the old QP when it accepts the new one.
                                    // Kept until the new one is up: should this request not reach the
                                    // node, the next rebuild names it again (the node ignores numbers it
                                    // no longer holds).
        let replaces: Vec<u32> = self.lanes[lane].remote_qpn.into_iter().collect();
        let (mut qp, ep) = self.new_qp(rail)?;
        let device = self.rails[rail].nic.info.name.clone();
        let acc = self
            .exchange
            .connect(
                self.node_rail(rail),
                &device,
                std::slice::from_ref(&ep),
                &replaces,
            )
            .map_err(|e| TransportError::Backend {
                node: self.node.clone(),
                backend: "verbs",
                what: format!(
                    "rebuilding QP on device {}: node unreachable: {e}",
                    self.rails[rail].nic.info.name
                ),
            })?;
        let Some(remote) = acc.qps.first().copied() else {
            return Err(node_err(&self.node, "VerbsConnect answer", "no QP in answer").into());
        };
        // The node now holds the new QP (the old one is gone): name it next time.
        self.lanes[lane].remote_qpn = Some(remote.qp_num);
        self.apply_regions(rail, &acc)?;
        let depth = self.bring_up(rail, &mut qp, &ep, &remote)?;
        let l = &mut self.lanes[lane];
        l.qp = Some(qp);
        l.gen = l.gen.wrapping_add(1) & 0xfff;
        l.depth = depth;
        l.sq.reset();
        l.sq.set_rd_depth(depth);
        l.inflight.clear();
        self.counters.rebuilds += 1;
        tracing::warn!(node = %self.node, device = %self.rails[rail].nic.info.name, lane, "verbs: QP rebuilt");
        Ok(())
    }

    /// Destroys the QPs of lanes that still have reads in flight (so nothing
    /// writes the caller's buffer after we return an error).
    pub(super) fn abandon_inflight(&mut self) {
        for l in &mut self.lanes {
            if !l.inflight.is_empty() {
                l.qp = None;
                l.inflight.clear();
                l.sq.reset();
            }
        }
    }

    /// Handles a broken lane: its outstanding reads go back to `pending`, the
    /// QP is rebuilt (bounded), or the batch fails as a node failure.
    pub(super) fn lane_failed(
        &mut self,
        lane: usize,
        pending: &mut VecDeque<u32>,
        rebuilds: &mut u32,
        reads: &[ReadRequest],
        step: &str,
        detail: String,
    ) -> Result<(), TransportError> {
        let _ = reads;
        let l = &mut self.lanes[lane];
        let mut requeued = 0u64;
        for i in l.inflight.drain(..).rev() {
            pending.push_front(i);
            requeued += 1;
        }
        l.sq.reset();
        l.qp = None;
        self.counters.retried_reads += requeued;
        *rebuilds += 1;
        tracing::warn!(node = %self.node, lane, step, %detail, requeued, "verbs: QP failed");
        if *rebuilds > self.opts.max_rebuilds {
            return Err(node_err(
                &self.node,
                step,
                format!(
                    "{detail} (gave up after {} QP rebuilds in this batch)",
                    self.opts.max_rebuilds
                ),
            )
            .into());
        }
        self.rebuild_lane(lane)
            .map_err(|e| TransportError::Backend {
                node: self.node.clone(),
                backend: "verbs",
                what: format!("{step}: {detail}; then {e}"),
            })
    }
}
