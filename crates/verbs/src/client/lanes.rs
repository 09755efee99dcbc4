//! Lanes and rails: one completion queue per device ("rail"), several RC
//! queue pairs per rail ("lanes"), how a lane's QP is created and brought to
//! RTS through the node, and the work-request id that names a lane's chain.

use std::collections::VecDeque;
use std::sync::Arc;

use seqfeed_transport::{RegionInfo, TransportError};

use super::{node_err, VerbsTransport};
use crate::cm::{self, ConnectMode};
use crate::device::Nic;
use crate::endpoint::{Accepted, QpEndpoint};
use crate::error::VerbsError;
use crate::raw::{CompChannel, Connect, Cq, Qp, WcBuf};
use crate::sendq::{SendQueue, SqConfig};

/// One device: its completion queue (shared by its lanes), the completion
/// channel a waiting batch sleeps on, and the node's regions as seen through it.
pub(super) struct Rail {
    pub(super) nic: Arc<Nic>,
    pub(super) cq: Arc<Cq>,
    pub(super) channel: Arc<CompChannel>,
    pub(super) wc: WcBuf,
    /// Per region (same order as the transport's table): remote address and rkey on this device.
    pub(super) remote: Vec<(u64, u32)>,
    /// Reads posted on this rail's lanes.
    pub(super) reads: u64,
}

/// One RC queue pair: its send-queue accounting and the reads it has
/// posted and not yet retired, in post order (WR `sq.retired() + i` is
/// `inflight[i]`).
pub(super) struct Lane {
    pub(super) rail: usize,
    pub(super) qp: Option<Qp>,
    /// The node's QP connected to `qp` (named as replaced when rebuilt).
    pub(super) remote_qpn: Option<u32>,
    pub(super) gen: u16,
    /// Negotiated read depth (`max_rd_atomic`).
    pub(super) depth: u32,
    pub(super) sq: SendQueue,
    pub(super) inflight: VecDeque<u32>,
}

/// wr_id layout: lane (12 bits) | gen (12 bits) | WR number on this QP (40 bits).
pub(super) fn wr_id(lane: usize, gen: u16, wr: u64) -> u64 {
    ((lane as u64 & 0xfff) << 52) | ((u64::from(gen) & 0xfff) << 40) | (wr & WR_MASK)
}

/// WR numbers wrap at 2^40 (over a year of posting at 20 M reads/s per QP).
const WR_MASK: u64 = (1 << 40) - 1;

pub(super) fn wr_id_parts(id: u64) -> (usize, u16, u64) {
    (
        (id >> 52) as usize,
        ((id >> 40) & 0xfff) as u16,
        id & WR_MASK,
    )
}

impl VerbsTransport {
    /// The read depth this side offers: the device's initiator and responder
    /// limits, `max_outstanding`, at most 255.
    pub(super) fn local_depth(&self, nic: &Nic) -> u32 {
        let mut d = nic
            .info
            .max_qp_init_rd_atom
            .min(nic.info.max_qp_rd_atom)
            .min(255);
        if let Some(m) = self.opts.max_outstanding {
            d = d.min(m.max(1));
        }
        d.min(nic.info.max_qp_wr).max(1)
    }

    /// Send-queue size and chain length for a QP on `nic` (see [`SqConfig::new`]).
    pub(super) fn sq_config(&self, nic: &Nic) -> SqConfig {
        SqConfig::new(
            self.local_depth(nic),
            nic.info.max_qp_wr,
            self.opts.chain as u32,
            self.opts.sq_depth,
        )
    }

    /// A fresh QP on `rail` (RESET) and the endpoint to send the node.
    pub(super) fn new_qp(&self, rail: usize) -> Result<(Qp, QpEndpoint), VerbsError> {
        let r = &self.rails[rail];
        let info = &r.nic.info;
        let depth = self.local_depth(&r.nic);
        let sq = self.sq_config(&r.nic);
        let qp = Qp::new(&r.nic.pd, &r.cq, sq.sq_depth, self.opts.chain).map_err(|e| {
            node_err(
                &self.node,
                "ibv_create_qp",
                format!(
                    "device {}: {} send WRs (device max_qp_wr {}): {e}",
                    info.name, sq.sq_depth, info.max_qp_wr
                ),
            )
        })?;
        let ep = if self.connect_mode() == ConnectMode::Cm {
            cm::request_endpoint(qp.qp_num(), depth as u8)
        } else {
            QpEndpoint {
                qp_num: qp.qp_num(),
                psn: rand::random::<u32>() & 0xff_ffff,
                gid: info.gid,
                lid: info.lid,
                mtu: info.mtu,
                rd_atom: depth as u8,
            }
        };
        Ok((qp, ep))
    }

    /// Brings `qp` to RTS against the node's `remote` endpoint; returns the
    /// negotiated read depth.
    pub(super) fn bring_up(
        &self,
        rail: usize,
        qp: &mut Qp,
        local: &QpEndpoint,
        remote: &QpEndpoint,
    ) -> Result<u32, VerbsError> {
        let info = &self.rails[rail].nic.info;
        if self.connect_mode() == ConnectMode::Cm {
            return self.bring_up_cm(rail, qp, local, remote);
        }
        let mut depth = u32::from(local.rd_atom);
        if remote.rd_atom != 0 {
            depth = depth.min(u32::from(remote.rd_atom));
        }
        let depth = depth.max(1);
        if !(1..=5).contains(&remote.mtu) {
            return Err(node_err(
                &self.node,
                "VerbsConnect answer",
                format!("bad MTU value {}", remote.mtu),
            ));
        }
        qp.connect(&Connect {
            port: info.port,
            sgid_index: info.gid_index,
            remote_qpn: remote.qp_num,
            remote_psn: remote.psn,
            local_psn: local.psn,
            remote_gid: remote.gid,
            remote_lid: remote.lid,
            path_mtu: u32::from(local.mtu.min(remote.mtu)),
            max_rd_atomic: depth as u8,
            max_dest_rd_atomic: 1,
            access: 0,
            traffic_class: info.traffic_class,
            sl: info.service_level,
            pkey_index: info.pkey_index,
            timeout: info.qp_timeout,
            retry_cnt: info.qp_retry_count,
        })
        .map_err(|e| {
            node_err(
                &self.node,
                "QP RESET->RTS",
                format!("device {} QP {}: {e}", info.name, qp.qp_num()),
            )
        })?;
        Ok(depth)
    }

    /// [`bring_up`](Self::bring_up) with rdma_cm: connects `qp` to the
    /// node QP its grant names, at the address and port the grant gives.
    fn bring_up_cm(
        &self,
        rail: usize,
        qp: &mut Qp,
        local: &QpEndpoint,
        remote: &QpEndpoint,
    ) -> Result<u32, VerbsError> {
        let info = &self.rails[rail].nic.info;
        let Some(grant) = cm::CmGrant::from_endpoint(remote) else {
            return Err(node_err(
                &self.node,
                "VerbsConnect answer",
                format!(
                    "rail {rail} (device {}): the node answered without an rdma_cm grant \
                     (mtu {}, port {}): it does not listen for rdma_cm (seqfeed serve --verbs-cm-port)",
                    info.name, remote.mtu, remote.lid
                ),
            ));
        };
        let Some(ip) = grant.addr.or(self.opts.cm_addr) else {
            return Err(node_err(
                &self.node,
                "rdma_cm resolve addr",
                format!(
                    "rail {rail} (device {}): the node gave no rdma_cm address for its rail {} \
                     and none is configured (ClientOptions::cm_addr)",
                    info.name,
                    self.node_rail(rail)
                ),
            ));
        };
        let mut depth = local.rd_atom.max(1);
        if grant.rd_atom != 0 {
            depth = depth.min(grant.rd_atom);
        }
        let target = cm::CmTarget {
            node: &self.node,
            dst: std::net::SocketAddr::new(ip, grant.port),
            src: cm::src_for(info, ip),
            timeout: self.opts.cm_timeout,
        };
        let (conn, depth) = cm::connect_qp(qp, info, &grant, &target, depth)?;
        qp.keep_alive(Box::new(conn));
        Ok(u32::from(depth))
    }

    /// Takes the node's region table from a connect answer (rail 0 sets it,
    /// later rails must agree) and this rail's remote addresses and keys.
    pub(super) fn apply_regions(&mut self, rail: usize, acc: &Accepted) -> Result<(), VerbsError> {
        if self.regions.is_empty() && rail == 0 {
            self.regions = acc
                .regions
                .iter()
                .map(|r| RegionInfo { ..r.clone() })
                .collect();
            self.region_index = self
                .regions
                .iter()
                .enumerate()
                .map(|(i, r)| (r.id, i))
                .collect();
        }
        if acc.regions.len() != self.regions.len() {
            return Err(node_err(
                &self.node,
                "VerbsConnect answer",
                format!(
                    "rail {rail}: {} regions, rail 0 had {}",
                    acc.regions.len(),
                    self.regions.len()
                ),
            ));
        }
        let mut remote = vec![(0u64, 0u32); self.regions.len()];
        for r in &acc.regions {
            let Some(&i) = self.region_index.get(&r.id) else {
                return Err(node_err(
                    &self.node,
                    "VerbsConnect answer",
                    format!("rail {rail}: unexpected {}", r.id),
                ));
            };
            if r.len != self.regions[i].len {
                return Err(node_err(
                    &self.node,
                    "VerbsConnect answer",
                    format!(
                        "rail {rail}: {} has length {}, rail 0 said {}",
                        r.id, r.len, self.regions[i].len
                    ),
                ));
            }
            remote[i] = (r.addr, r.rkey);
        }
        self.rails[rail].remote = remote;
        Ok(())
    }

    /// Opens a rail on `nic`: its CQ, and `qps_per_rail` QPs connected through the node.
    pub(super) fn add_rail(&mut self, rail: usize, nic: Arc<Nic>) -> Result<(), TransportError> {
        let n = self.opts.qps_per_rail;
        // A flushed QP completes every WR in its send queue, signaled or not.
        let sq = self.sq_config(&nic);
        let cqe = (n as u32 * (sq.sq_depth + 1) + 64).min(nic.info.max_cqe);
        let channel = Arc::new(CompChannel::new(&nic.ctx).map_err(|e| {
            node_err(
                &self.node,
                "ibv_create_comp_channel",
                format!("device {}: {e}", nic.info.name),
            )
        })?);
        let cq = Cq::new(&nic.ctx, cqe, Some(&channel)).map_err(|e| {
            node_err(
                &self.node,
                "ibv_create_cq",
                format!("device {}: {e}", nic.info.name),
            )
        })?;
        self.rails.push(Rail {
            nic,
            cq: Arc::new(cq),
            channel,
            wc: WcBuf::new(),
            remote: Vec::new(),
            reads: 0,
        });
        let mut qps = Vec::with_capacity(n);
        let mut eps = Vec::with_capacity(n);
        for _ in 0..n {
            let (qp, ep) = self.new_qp(rail)?;
            qps.push(qp);
            eps.push(ep);
        }
        let device = self.rails[rail].nic.info.name.clone();
        let acc = self
            .exchange
            .connect(self.node_rail(rail), &device, &eps, &[])?;
        if acc.qps.len() != n {
            return Err(node_err(
                &self.node,
                "VerbsConnect answer",
                format!("{} QPs for {n} asked", acc.qps.len()),
            )
            .into());
        }
        self.apply_regions(rail, &acc)?;
        for ((mut qp, ep), remote) in qps.into_iter().zip(eps).zip(acc.qps) {
            let depth = self.bring_up(rail, &mut qp, &ep, &remote)?;
            let mut sq = SendQueue::new(sq);
            sq.set_rd_depth(depth);
            self.lanes.push(Lane {
                rail,
                remote_qpn: Some(remote.qp_num),
                qp: Some(qp),
                gen: 0,
                depth,
                sq,
                inflight: VecDeque::new(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wr_id_roundtrip() {
        for (lane, gen, wr) in [(0, 0, 0), (4095, 4095, WR_MASK), (17, 3, 123_456_789)] {
            assert_eq!(wr_id_parts(wr_id(lane, gen, wr)), (lane, gen, wr));
        }
        // Distinct lanes/generations never alias; numbers wrap at 2^40.
        assert_ne!(wr_id(1, 0, 5), wr_id(0, 1, 5));
        assert_eq!(wr_id_parts(wr_id(2, 1, WR_MASK + 6)), (2, 1, 5));
    }
}
