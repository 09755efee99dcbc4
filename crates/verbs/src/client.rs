//! Client side: [`VerbsTransport`], batched one-sided RDMA READs into the
//! caller's buffer.
//!
//! Reads are spread over *lanes*: several RC QPs per device ("rail"), every
//! rail with its own completion queue; a lane takes the next pending reads
//! whenever it has room. Each post is a chain of up to `chain` work requests
//! linked into one `ibv_post_send` (one doorbell), only the last signaled;
//! a lane never has more reads outstanding than the read depth both sides
//! allow (`max_qp_init_rd_atom` / `max_qp_rd_atom`). RC completes in order,
//! so the signaled completion of a chain retires the whole chain.
//!
//! A work-completion error breaks only its lane: its outstanding reads go
//! back to the pending queue, the QP is destroyed and rebuilt through the
//! node's control service, and the batch continues. After `max_rebuilds`
//! rebuilds in one batch (or when the node cannot be reached to rebuild), the
//! batch fails with a node failure naming the node, the region, the offsets,
//! and the step, so the loader can fail over to a replica.
//!
//! Destination memory: buffers announced with
//! [`Transport::register_buffer`] keep one registration per device until
//! [`Transport::unregister_buffer`]; a batch whose destination lies inside one
//! of them posts with its keys. Any other destination is registered for that
//! batch only and deregistered when the batch ends (after no QP can still
//! write into it). Nothing is cached by address alone: a registration pins
//! the pages it was made on, so memory freed and reallocated at the same
//! addresses must never be served by an old registration.
//!
//! Device memory (GPUDirect RDMA): [`Transport::register_device`] registers a
//! [`DeviceRegion`] with `ibv_reg_dmabuf_mr` when it carries a dmabuf export
//! (its device address as the MR's iova), else with `ibv_reg_mr` on the
//! device pointer (peer memory, e.g. `nvidia_peermem`). A provider that
//! refuses (rxe has no dmabuf MRs) yields [`TransportError::Unsupported`]
//! naming the device and the reason. [`Transport::read_batch_device`] then
//! posts the same chained READs with device addresses as local addresses.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seqfeed_transport::{
    BatchStats, DeviceRegion, ReadRequest, RegionId, RegionInfo, Transport, TransportError,
};
use sideway::ibverbs::memory_region::MemoryRegion;

use crate::device::{open_devices, Nic};
use crate::endpoint::{Accepted, QpEndpoint, QpExchange};
use crate::error::VerbsError;
use crate::raw::{wc_status_str, Completion, Connect, Cq, Qp, ReadWr, WcBuf};

/// Largest chain (work requests per doorbell) supported.
pub const MAX_CHAIN: usize = 64;

/// Tuning of a [`VerbsTransport`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Devices to use (rails); `None` = every device with an ACTIVE port.
    pub devices: Option<Vec<String>>,
    /// RC queue pairs per device, used round-robin.
    pub qps_per_rail: usize,
    /// Work requests per doorbell (post list length), 1..=64.
    pub chain: usize,
    /// Cap on outstanding reads per QP (the device limit applies anyway).
    pub max_outstanding: Option<u32>,
    /// QP rebuilds allowed within one batch before it fails as a node failure.
    pub max_rebuilds: u32,
    /// Time limit for one batch.
    pub timeout: Duration,
    /// After this long without any completion, the node's control connection
    /// is checked ([`QpExchange::check_alive`]); a dead node fails the batch.
    pub stall_check: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            devices: None,
            qps_per_rail: 2,
            chain: 32,
            max_outstanding: None,
            max_rebuilds: 3,
            timeout: Duration::from_secs(30),
            stall_check: Duration::from_secs(1),
        }
    }
}

/// Counters over a transport's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerbsCounters {
    /// QPs rebuilt after an error.
    pub rebuilds: u64,
    /// Reads re-posted after their QP failed.
    pub retried_reads: u64,
    /// Destination registrations made (long-lived and per batch).
    pub registrations: u64,
    /// Of [`registrations`](Self::registrations), those made for one batch
    /// only (destination outside every registered buffer).
    pub batch_registrations: u64,
    /// Doorbells (ibv_post_send calls).
    pub doorbells: u64,
}

struct Rail {
    nic: Arc<Nic>,
    cq: Arc<Cq>,
    wc: WcBuf,
    /// Per region (same order as the transport's table): remote address and rkey on this device.
    remote: Vec<(u64, u32)>,
}

#[derive(Clone, Copy)]
struct Chain {
    seq: u32,
    n: u8,
    idx: [u32; MAX_CHAIN],
}

struct Lane {
    rail: usize,
    qp: Option<Qp>,
    gen: u16,
    depth: u32,
    seq: u32,
    outstanding: u32,
    inflight: VecDeque<Chain>,
}

/// A long-lived destination registration (one MR per rail), made by
/// [`Transport::register_buffer`].
struct MrEntry {
    addr: usize,
    len: usize,
    per_rail: Vec<Arc<MemoryRegion>>,
}

/// A device-memory registration (one MR per rail), made by
/// [`Transport::register_device`].
struct DeviceMr {
    region: DeviceRegion,
    per_rail: Vec<Arc<MemoryRegion>>,
}

impl MrEntry {
    fn contains(&self, addr: usize, len: usize) -> bool {
        self.addr <= addr && addr + len <= self.addr + self.len
    }

    fn overlaps(&self, addr: usize, len: usize) -> bool {
        addr < self.addr + self.len && self.addr < addr + len
    }
}

/// wr_id layout: lane (12 bits) | gen (12 bits) | seq (32 bits) | position in chain (8 bits).
fn wr_id(lane: usize, gen: u16, seq: u32, pos: usize) -> u64 {
    ((lane as u64 & 0xfff) << 52)
        | ((u64::from(gen) & 0xfff) << 40)
        | (u64::from(seq) << 8)
        | (pos as u64 & 0xff)
}

fn wr_id_parts(id: u64) -> (usize, u16, u32, usize) {
    (
        (id >> 52) as usize,
        ((id >> 40) & 0xfff) as u16,
        ((id >> 8) & 0xffff_ffff) as u32,
        (id & 0xff) as usize,
    )
}

/// A connection to one storage node over RDMA verbs.
pub struct VerbsTransport {
    node: String,
    regions: Vec<RegionInfo>,
    region_index: HashMap<RegionId, usize>,
    rails: Vec<Rail>,
    lanes: Vec<Lane>,
    exchange: Box<dyn QpExchange>,
    opts: ClientOptions,
    mrs: Vec<MrEntry>,
    device_mrs: Vec<DeviceMr>,
    batch_mrs: Vec<Arc<MemoryRegion>>,
    next_lane: usize,
    comps: Vec<Completion>,
    wrs: Vec<ReadWr>,
    counters: VerbsCounters,
}

impl std::fmt::Debug for VerbsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsTransport")
            .field("node", &self.node)
            .field(
                "rails",
                &self
                    .rails
                    .iter()
                    .map(|r| r.nic.info.name.clone())
                    .collect::<Vec<_>>(),
            )
            .field("lanes", &self.lanes.len())
            .finish()
    }
}

fn node_err(node: &str, step: impl Into<String>, detail: impl Into<String>) -> VerbsError {
    VerbsError::Node {
        node: node.to_string(),
        step: step.into(),
        detail: detail.into(),
    }
}

impl VerbsTransport {
    /// Opens the devices named in `opts` (or every device with an ACTIVE port)
    /// and connects to `node` through `exchange`.
    pub fn connect(
        node: impl Into<String>,
        exchange: Box<dyn QpExchange>,
        opts: ClientOptions,
    ) -> Result<VerbsTransport, TransportError> {
        let node = node.into();
        let nics: Vec<_> = open_devices(opts.devices.as_deref())
            .map_err(|e| TransportError::Backend {
                node: node.clone(),
                backend: "verbs",
                what: e.to_string(),
            })?
            .into_iter()
            .filter(|n| n.info.active)
            .collect();
        VerbsTransport::with_nics(node, nics, exchange, opts)
    }

    /// Connects to `node` over the given devices (one rail each).
    pub fn with_nics(
        node: impl Into<String>,
        nics: Vec<Arc<Nic>>,
        exchange: Box<dyn QpExchange>,
        opts: ClientOptions,
    ) -> Result<VerbsTransport, TransportError> {
        let node = node.into();
        if nics.is_empty() {
            return Err(
                node_err(&node, "open devices", "no RDMA device with an ACTIVE port").into(),
            );
        }
        let mut opts = opts;
        opts.chain = opts.chain.clamp(1, MAX_CHAIN);
        opts.qps_per_rail = opts
            .qps_per_rail
            .clamp(1, crate::server::MAX_QPS_PER_CONNECT);
        let mut t = VerbsTransport {
            node,
            regions: Vec::new(),
            region_index: HashMap::new(),
            rails: Vec::new(),
            lanes: Vec::new(),
            exchange,
            opts,
            mrs: Vec::new(),
            device_mrs: Vec::new(),
            batch_mrs: Vec::new(),
            next_lane: 0,
            comps: Vec::with_capacity(256),
            wrs: Vec::with_capacity(MAX_CHAIN),
            counters: VerbsCounters::default(),
        };
        for (r, nic) in nics.into_iter().enumerate() {
            t.add_rail(r, nic)?;
        }
        tracing::info!(
            node = %t.node,
            devices = ?t.rails.iter().map(|r| r.nic.info.name.as_str()).collect::<Vec<_>>(),
            qps = t.lanes.len(),
            depth = t.lanes.first().map(|l| l.depth).unwrap_or(0),
            chain = t.opts.chain,
            regions = t.regions.len(),
            "verbs: connected"
        );
        Ok(t)
    }

    /// Counters since connect.
    pub fn counters(&self) -> VerbsCounters {
        self.counters
    }

    /// Names of the devices in use, in rail order.
    pub fn devices(&self) -> Vec<String> {
        self.rails.iter().map(|r| r.nic.info.name.clone()).collect()
    }

    /// Fault injection for tests: moves the QP of `lane` (0-based, rail-major)
    /// to the error state, so its next reads complete with a flush error and
    /// exercise the rebuild-and-retry path. Returns false when there is no such lane.
    pub fn inject_qp_error(&mut self, lane: usize) -> bool {
        match self.lanes.get_mut(lane).and_then(|l| l.qp.as_mut()) {
            Some(qp) => qp.set_error().is_ok(),
            None => false,
        }
    }

    /// Number of QPs (lanes) in use.
    pub fn qp_count(&self) -> usize {
        self.lanes.len()
    }

    /// Drops every long-lived destination registration (as
    /// [`Transport::unregister_buffer`] on each registered buffer). Call it
    /// before freeing registered buffers.
    pub fn forget_buffers(&mut self) {
        self.mrs.clear();
    }

    /// Number of long-lived destination registrations held.
    pub fn registered_buffers(&self) -> usize {
        self.mrs.len()
    }

    /// Number of device-memory registrations held.
    pub fn registered_device_regions(&self) -> usize {
        self.device_mrs.len()
    }

    fn local_depth(&self, nic: &Nic) -> u32 {
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

    fn new_qp(&self, rail: usize) -> Result<(Qp, QpEndpoint), VerbsError> {
        let r = &self.rails[rail];
        let info = &r.nic.info;
        let depth = self.local_depth(&r.nic);
        let qp = Qp::new(&r.nic.pd, &r.cq, depth, self.opts.chain).map_err(|e| {
            node_err(
                &self.node,
                "ibv_create_qp",
                format!("device {}: {e}", info.name),
            )
        })?;
        let ep = QpEndpoint {
            qp_num: qp.qp_num(),
            psn: rand::random::<u32>() & 0xff_ffff,
            gid: info.gid,
            lid: info.lid,
            mtu: info.mtu,
            rd_atom: depth as u8,
        };
        Ok((qp, ep))
    }

    fn bring_up(
        &self,
        rail: usize,
        qp: &mut Qp,
        local: &QpEndpoint,
        remote: &QpEndpoint,
    ) -> Result<u32, VerbsError> {
        let info = &self.rails[rail].nic.info;
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

    fn apply_regions(&mut self, rail: usize, acc: &Accepted) -> Result<(), VerbsError> {
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

    fn add_rail(&mut self, rail: usize, nic: Arc<Nic>) -> Result<(), TransportError> {
        let n = self.opts.qps_per_rail;
        let depth = self.local_depth(&nic);
        let cqe = (n as u32 * (depth + 1) + 64).min(nic.info.max_cqe);
        let cq = Cq::new(&nic.ctx, cqe).map_err(|e| {
            node_err(
                &self.node,
                "ibv_create_cq",
                format!("device {}: {e}", nic.info.name),
            )
        })?;
        self.rails.push(Rail {
            nic,
            cq: Arc::new(cq),
            wc: WcBuf::new(),
            remote: Vec::new(),
        });
        let mut qps = Vec::with_capacity(n);
        let mut eps = Vec::with_capacity(n);
        for _ in 0..n {
            let (qp, ep) = self.new_qp(rail)?;
            qps.push(qp);
            eps.push(ep);
        }
        let device = self.rails[rail].nic.info.name.clone();
        let acc = self.exchange.connect(rail as u32, &device, &eps)?;
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
            self.lanes.push(Lane {
                rail,
                qp: Some(qp),
                gen: 0,
                depth,
                seq: 0,
                outstanding: 0,
                inflight: VecDeque::new(),
            });
        }
        Ok(())
    }

    /// Creates a fresh QP for `lane` and connects it through the node.
    fn rebuild_lane(&mut self, lane: usize) -> Result<(), TransportError> {
        let rail = self.lanes[lane].rail;
        self.lanes[lane].qp = None; // destroy the old QP first: no late writes into any buffer
        let (mut qp, ep) = self.new_qp(rail)?;
        let device = self.rails[rail].nic.info.name.clone();
        let acc = self
            .exchange
            .connect(rail as u32, &device, std::slice::from_ref(&ep))
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
        self.apply_regions(rail, &acc)?;
        let depth = self.bring_up(rail, &mut qp, &ep, &remote)?;
        let l = &mut self.lanes[lane];
        l.qp = Some(qp);
        l.gen = l.gen.wrapping_add(1) & 0xfff;
        l.depth = depth;
        l.outstanding = 0;
        l.inflight.clear();
        self.counters.rebuilds += 1;
        tracing::warn!(node = %self.node, device = %self.rails[rail].nic.info.name, lane, "verbs: QP rebuilt");
        Ok(())
    }

    /// Registers `len` bytes at `addr` (local write) on every rail.
    fn register_range(
        &mut self,
        addr: usize,
        len: usize,
    ) -> Result<Vec<Arc<MemoryRegion>>, TransportError> {
        let mut per_rail = Vec::with_capacity(self.rails.len());
        for r in &self.rails {
            let mr = crate::raw::reg_local_write(&r.nic.pd, addr, len).map_err(|e| {
                node_err(
                    &self.node,
                    "ibv_reg_mr (destination, local write)",
                    format!("device {}: {len} bytes at {addr:#x}: {e}", r.nic.info.name),
                )
            })?;
            per_rail.push(mr);
        }
        self.counters.registrations += 1;
        Ok(per_rail)
    }

    /// Keys of `dst` on every rail: those of the registered buffer holding it,
    /// else of a registration made for this batch only (kept in `batch_mrs`
    /// until the batch has ended).
    fn lkeys(&mut self, dst: &mut [u8]) -> Result<Vec<u32>, TransportError> {
        let (addr, len) = (dst.as_ptr() as usize, dst.len());
        if let Some(e) = self.mrs.iter().find(|e| e.contains(addr, len)) {
            return Ok(e.per_rail.iter().map(|m| m.lkey()).collect());
        }
        let per_rail = self.register_range(addr, len)?;
        self.counters.batch_registrations += 1;
        let keys = per_rail.iter().map(|m| m.lkey()).collect();
        self.batch_mrs = per_rail;
        Ok(keys)
    }

    /// Destroys the QPs of lanes that still have reads in flight (so nothing
    /// writes the caller's buffer after we return an error).
    fn abandon_inflight(&mut self) {
        for l in &mut self.lanes {
            if !l.inflight.is_empty() {
                l.qp = None;
                l.inflight.clear();
                l.outstanding = 0;
            }
        }
    }

    fn describe(&self, reads: &[ReadRequest], i: u32) -> String {
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
    fn plan(
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
    fn execute(
        &mut self,
        reads: &[ReadRequest],
        base: u64,
        lkeys: &[u32],
        region_of: &[u32],
        mut pending: VecDeque<u32>,
        mut stats: BatchStats,
    ) -> Result<BatchStats, TransportError> {
        match self.run_batch(reads, base, lkeys, region_of, &mut pending, &mut stats) {
            Ok(()) => Ok(stats),
            Err(e) => {
                self.abandon_inflight();
                Err(e)
            }
        }
    }

    fn run_batch(
        &mut self,
        reads: &[ReadRequest],
        base: u64,
        lkeys: &[u32],
        region_of: &[u32],
        pending: &mut VecDeque<u32>,
        stats: &mut BatchStats,
    ) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut rebuilds = 0u32;
        let mut idle = 0u32;
        // Lanes without a QP (broken in an earlier batch) are rebuilt first.
        for lane in 0..self.lanes.len() {
            if self.lanes[lane].qp.is_none() {
                self.rebuild_lane(lane)?;
            }
        }
        let nlanes = self.lanes.len();
        let mut last_progress = Instant::now();
        let mut alive_checked = Instant::now();
        loop {
            let mut progressed = false;
            // Post: every lane with room takes the next pending reads as one chain.
            for k in 0..nlanes {
                if pending.is_empty() {
                    break;
                }
                let lane = (self.next_lane + k) % nlanes;
                let l = &self.lanes[lane];
                let room = l.depth.saturating_sub(l.outstanding) as usize;
                if room == 0 || l.qp.is_none() {
                    continue;
                }
                // Spread what is pending over all lanes (and so all rails), in chains.
                let share = pending.len().div_ceil(nlanes);
                let n = room.min(self.opts.chain).min(share).min(pending.len());
                let rail = &self.rails[l.rail];
                let lkey = lkeys[l.rail];
                let (gen, seq) = (l.gen, l.seq);
                let mut chain = Chain {
                    seq,
                    n: n as u8,
                    idx: [0; MAX_CHAIN],
                };
                self.wrs.clear();
                for pos in 0..n {
                    let Some(i) = pending.pop_front() else { break };
                    let r = &reads[i as usize];
                    let ri = region_of[i as usize] as usize;
                    let (raddr, rkey) = rail.remote[ri];
                    chain.idx[pos] = i;
                    self.wrs.push(ReadWr {
                        wr_id: wr_id(lane, gen, seq, pos),
                        signaled: pos + 1 == n,
                        local_addr: base + r.dst_offset,
                        lkey,
                        len: r.len,
                        remote_addr: raddr + r.offset,
                        rkey,
                    });
                }
                let l = &mut self.lanes[lane];
                let posted = match l.qp.as_mut() {
                    Some(qp) => qp.post_reads(&self.wrs),
                    None => Err(std::io::Error::other("no QP")),
                };
                match posted {
                    Ok(()) => {
                        l.seq = l.seq.wrapping_add(1);
                        l.outstanding += n as u32;
                        l.inflight.push_back(chain);
                        stats.posts += 1;
                        self.counters.doorbells += 1;
                        progressed = true;
                    }
                    Err(e) => {
                        for pos in (0..n).rev() {
                            pending.push_front(chain.idx[pos]);
                        }
                        let detail = format!(
                            "device {}: posting {n} reads, first {}: {e}",
                            self.rails[self.lanes[lane].rail].nic.info.name,
                            self.describe(reads, chain.idx[0])
                        );
                        self.lane_failed(
                            lane,
                            pending,
                            &mut rebuilds,
                            reads,
                            "ibv_post_send",
                            detail,
                        )?;
                    }
                }
            }
            self.next_lane = (self.next_lane + 1) % nlanes;
            if pending.is_empty() && self.lanes.iter().all(|l| l.inflight.is_empty()) {
                return Ok(());
            }
            // Poll every rail's CQ.
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
                    let (lane, gen, seq, pos) = wr_id_parts(c.wr_id);
                    let Some(l) = self.lanes.get_mut(lane) else {
                        continue;
                    };
                    if l.gen != gen || l.qp.is_none() {
                        continue; // completion of a QP already torn down
                    }
                    progressed = true;
                    if c.ok() {
                        if !l.inflight.iter().any(|ch| ch.seq == seq) {
                            tracing::warn!(node = %self.node, lane, seq, "verbs: completion for no posted chain; ignored");
                            continue;
                        }
                        // In-order completion: this chain and all earlier ones are done.
                        while let Some(ch) = l.inflight.pop_front() {
                            l.outstanding -= u32::from(ch.n);
                            for &i in &ch.idx[..ch.n as usize] {
                                stats.reads += 1;
                                stats.bytes += u64::from(reads[i as usize].len);
                            }
                            if ch.seq == seq {
                                break;
                            }
                        }
                    } else {
                        let failed = l
                            .inflight
                            .iter()
                            .find(|ch| ch.seq == seq)
                            .map(|ch| ch.idx[pos.min(ch.n as usize - 1)]);
                        let what = failed
                            .map(|i| self.describe(reads, i))
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
                            pending,
                            &mut rebuilds,
                            reads,
                            "RDMA READ completion",
                            detail,
                        )?;
                    }
                }
            }
            if progressed {
                idle = 0;
                last_progress = Instant::now();
            } else {
                idle += 1;
                if idle & 1023 == 0 {
                    // Stalled: ask the control connection whether the node is still there,
                    // so a dead node fails in about `stall_check`, not the full timeout.
                    if last_progress.elapsed() >= self.opts.stall_check
                        && alive_checked.elapsed() >= self.opts.stall_check
                    {
                        alive_checked = Instant::now();
                        if let Err(e) = self.exchange.check_alive() {
                            let inflight: usize =
                                self.lanes.iter().map(|l| l.outstanding as usize).sum();
                            return Err(TransportError::Backend {
                                node: self.node.clone(),
                                backend: "verbs",
                                what: format!(
                                    "waiting for RDMA READ completions: no progress for {:.1}s with {inflight} reads \
                                     outstanding, and the node's control connection is gone: {e}",
                                    last_progress.elapsed().as_secs_f64()
                                ),
                            });
                        }
                    }
                    if Instant::now() > deadline {
                        let inflight: usize =
                            self.lanes.iter().map(|l| l.outstanding as usize).sum();
                        return Err(node_err(
                            &self.node,
                            "waiting for RDMA READ completions",
                            format!(
                                "timed out after {:?} with {inflight} reads outstanding and {} not posted",
                                self.opts.timeout,
                                pending.len()
                            ),
                        )
                        .into());
                    }
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// Handles a broken lane: its outstanding reads go back to `pending`, the
    /// QP is rebuilt (bounded), or the batch fails as a node failure.
    fn lane_failed(
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
        for ch in l.inflight.drain(..).rev() {
            for pos in (0..ch.n as usize).rev() {
                pending.push_front(ch.idx[pos]);
                requeued += 1;
            }
        }
        l.outstanding = 0;
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

impl Transport for VerbsTransport {
    fn backend(&self) -> &'static str {
        "verbs"
    }

    fn node(&self) -> &str {
        &self.node
    }

    fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    fn read_batch(
        &mut self,
        reads: &[ReadRequest],
        dst: &mut [u8],
    ) -> Result<BatchStats, TransportError> {
        let mut stats = BatchStats::default();
        let (region_of, pending) = self.plan(reads, dst.len(), &mut stats)?;
        if pending.is_empty() {
            return Ok(stats);
        }
        let lkeys = self.lkeys(dst)?;
        let base = dst.as_mut_ptr() as u64;
        let r = self.execute(reads, base, &lkeys, &region_of, pending, stats);
        // Per-batch registrations go only after no QP can still write into them.
        self.batch_mrs.clear();
        r
    }

    fn register_device(&mut self, region: &DeviceRegion) -> Result<(), TransportError> {
        if region.len == 0 {
            return Err(TransportError::Unsupported {
                node: self.node.clone(),
                backend: "verbs",
                what: format!("registering {region}: empty region"),
            });
        }
        let mut per_rail = Vec::with_capacity(self.rails.len());
        for r in &self.rails {
            let mr = match region.dmabuf {
                Some(d) => crate::raw::reg_dmabuf_local_write(
                    &r.nic.pd,
                    d.fd,
                    d.offset,
                    region.len,
                    region.addr,
                )
                .map_err(|e| ("ibv_reg_dmabuf_mr", e)),
                None => crate::raw::reg_device_local_write(&r.nic.pd, region.addr, region.len)
                    .map_err(|e| ("ibv_reg_mr on the device pointer (peer memory)", e)),
            };
            match mr {
                Ok(mr) => per_rail.push(mr),
                Err((call, e)) => {
                    return Err(TransportError::Unsupported {
                        node: self.node.clone(),
                        backend: "verbs",
                        what: format!("device {} refused {call} of {region}: {e}", r.nic.info.name),
                    })
                }
            }
        }
        self.counters.registrations += 1;
        let end = |x: &DeviceRegion| x.addr.saturating_add(x.len as u64);
        self.device_mrs
            .retain(|m| !(m.region.addr < end(region) && region.addr < end(&m.region)));
        self.device_mrs.push(DeviceMr {
            region: *region,
            per_rail,
        });
        tracing::info!(node = %self.node, kind = region.kind(), "verbs: registered {region} for GPUDirect RDMA");
        Ok(())
    }

    fn unregister_device(&mut self, addr: u64, len: usize) {
        let end = addr.saturating_add(len.max(1) as u64);
        self.device_mrs.retain(|m| {
            !(m.region.addr < end && addr < m.region.addr.saturating_add(m.region.len as u64))
        });
    }

    fn read_batch_device(
        &mut self,
        reads: &[ReadRequest],
        dst: &DeviceRegion,
    ) -> Result<BatchStats, TransportError> {
        let Some(lkeys) = self
            .device_mrs
            .iter()
            .find(|m| m.region.contains(dst))
            .map(|m| m.per_rail.iter().map(|mr| mr.lkey()).collect::<Vec<u32>>())
        else {
            return Err(TransportError::Unsupported {
                node: self.node.clone(),
                backend: "verbs",
                what: format!("reading into {dst}: not inside a registered device region"),
            });
        };
        let mut stats = BatchStats::default();
        let (region_of, pending) = self.plan(reads, dst.len, &mut stats)?;
        if pending.is_empty() {
            return Ok(stats);
        }
        self.execute(reads, dst.addr, &lkeys, &region_of, pending, stats)
    }

    fn register_buffer(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let (addr, len) = (buf.as_ptr() as usize, buf.len());
        if len == 0 {
            return Ok(());
        }
        // Whatever overlaps `buf` was made on pages that `buf` owns now (or
        // that were freed): it must not serve reads any more.
        self.mrs.retain(|e| !e.overlaps(addr, len));
        let per_rail = self.register_range(addr, len)?;
        self.mrs.push(MrEntry {
            addr,
            len,
            per_rail,
        });
        tracing::debug!(node = %self.node, addr, len, buffers = self.mrs.len(), "verbs: destination buffer registered");
        Ok(())
    }

    fn unregister_buffer(&mut self, addr: usize, len: usize) {
        // No read is in flight between batches (`read_batch` returns only when
        // none can still write), so the MRs can go at once.
        self.mrs.retain(|e| !e.overlaps(addr, len.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wr_id_roundtrip() {
        for (lane, gen, seq, pos) in [
            (0, 0, 0, 0),
            (4095, 4095, u32::MAX, 63),
            (17, 3, 123_456, 31),
        ] {
            assert_eq!(
                wr_id_parts(wr_id(lane, gen, seq, pos)),
                (lane, gen, seq, pos)
            );
        }
        // Distinct lanes/generations never alias.
        assert_ne!(wr_id(1, 0, 5, 0), wr_id(0, 1, 5, 0));
    }

    #[test]
    fn default_options_are_bounded() {
        let o = ClientOptions::default();
        assert!(o.chain <= MAX_CHAIN && o.chain >= 1);
        assert!(o.qps_per_rail >= 1 && o.max_rebuilds >= 1);
        assert!(o.stall_check < o.timeout);
    }
}
