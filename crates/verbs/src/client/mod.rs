//! Client side: [`VerbsTransport`], batched one-sided RDMA READs into the
//! caller's buffer.
//!
//! Reads are spread over *lanes*: several RC QPs per device ("rail"), every
//! rail with its own completion queue; a lane takes the next pending reads
//! whenever its send queue has free slots. Each post is a chain of up to
//! `chain` work requests linked into one `ibv_post_send` (one doorbell),
//! only the last signaled. The send queue (128–512 entries) is deeper than
//! the read depth both sides allow (`max_rd_atomic`, from
//! `max_qp_init_rd_atom` / `max_qp_rd_atom`), which the NIC enforces on the
//! wire: reads beyond it wait in the send queue, so the wire never drains
//! while the client polls (see [`crate::sendq`]). RC completes in order, so
//! a signaled completion retires every earlier WR of its QP.
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
//! device pointer (peer memory, e.g. `nvidia_peermem`), but only after the
//! CUDA driver confirmed that the pointer is device memory and the range one
//! allocation (`cuPointerGetAttribute`; host memory, which a provider would
//! pin, is refused; the self-test's unsafe
//! [`VerbsTransport::register_host_as_device`] skips the check). Simulated
//! regions are refused. A provider that
//! refuses (rxe has no dmabuf MRs) yields [`TransportError::Unsupported`]
//! naming the device and the reason. [`Transport::read_batch_device`] then
//! posts the same chained READs with device addresses as local addresses.
//!
//! Modules: `lanes` (rails, QPs, bring-up), `posting` (the batch loop and
//! what each lane posts), `completions` (CQ polling, stall detection),
//! `rebuild` (failed lanes), `memory` (destination registrations).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use seqfeed_transport::{
    BatchStats, DeviceRegion, ReadRequest, RegionId, RegionInfo, Transport, TransportError,
};
use sideway::ibverbs::memory_region::MemoryRegion;

use crate::device::{open_devices_with, Nic};
use crate::endpoint::QpExchange;
use crate::error::VerbsError;
use crate::raw::{Completion, ReadWr};

mod completions;
mod lanes;
mod memory;
pub(crate) use memory::HOST_AS_DEVICE;
mod posting;
mod rebuild;

use lanes::{Lane, Rail};
use memory::{DeviceMr, MrEntry};

/// Largest chain (work requests per doorbell) supported.
pub const MAX_CHAIN: usize = 64;

/// Tuning of a [`VerbsTransport`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Devices to use (rails); `None` = every device with an ACTIVE port.
    pub devices: Option<Vec<String>>,
    /// Which node rail each of our rails pairs with: entry k is the node
    /// rail (the node's device index) for our rail k. `None`: rail k pairs
    /// with node rail k (rail-optimized fabrics), unless the environment
    /// variable [`RAIL_MAP_ENV`] gives a map (see [`parse_rail_map`]).
    pub rail_map: Option<Vec<u32>>,
    /// GID index, traffic class, service level, pkey index and port of our
    /// QPs; `None`: from the `SEQFEED_*` environment variables
    /// ([`FabricSettings::from_env`](crate::FabricSettings::from_env)),
    /// else discovery's choice.
    pub fabric: Option<crate::FabricSettings>,
    /// RC queue pairs per device, used round-robin.
    pub qps_per_rail: usize,
    /// Work requests per doorbell (post list length), 1..=64.
    pub chain: usize,
    /// Cap on the read depth per QP (`max_rd_atomic`: reads on the wire;
    /// the device limit and the node's applies anyway).
    pub max_outstanding: Option<u32>,
    /// Send-queue entries per QP (`max_send_wr`); `None` sizes it from the
    /// read depth (twice, 128..=512, capped by the device's `max_qp_wr`).
    /// See [`SqConfig`](crate::SqConfig).
    pub sq_depth: Option<u32>,
    /// QP rebuilds allowed within one batch before it fails as a node failure.
    pub max_rebuilds: u32,
    /// Time limit for one batch.
    pub timeout: Duration,
    /// After this long without any completion, the node's control connection
    /// is checked ([`QpExchange::check_alive`]); a dead node fails the batch.
    pub stall_check: Duration,
    /// How QPs are connected: through the control service (QP numbers and
    /// GIDs exchanged) or with rdma_cm. `None`: from the environment
    /// variable [`CONNECT_ENV`](crate::cm::CONNECT_ENV), else control.
    pub connect: Option<crate::cm::ConnectMode>,
    /// rdma_cm: the node's address when its grant names none (InfiniBand,
    /// or a node whose GID is no IP address). [`VerbsTransport::connect_node`]
    /// fills in the control address's host.
    pub cm_addr: Option<std::net::IpAddr>,
    /// rdma_cm: bound on one QP's set-up (address and route resolution,
    /// connect).
    pub cm_timeout: Duration,
    /// How long a waiting batch polls its CQs without progress before it
    /// sleeps on their completion channels (spin-then-sleep). `Some(ZERO)`
    /// sleeps at once; `None` never sleeps (pure busy polling, as
    /// `ib_read_bw`). The environment variable [`SPIN_ENV`] overrides it.
    pub spin: Option<Duration>,
}

/// Environment variable overriding [`ClientOptions::spin`]: microseconds to
/// spin before sleeping, or `always` to never sleep.
pub const SPIN_ENV: &str = "SEQFEED_VERBS_SPIN_US";

/// Default [`ClientOptions::spin`]: long enough for the next completion of a
/// busy queue, short against a step.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Parses a [`SPIN_ENV`] value: microseconds, or `always` (never sleep).
pub fn parse_spin(s: &str) -> Result<Option<Duration>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("always") {
        return Ok(None);
    }
    t.parse::<u64>()
        .map(|us| Some(Duration::from_micros(us)))
        .map_err(|e| format!("{SPIN_ENV}={s:?}: expected microseconds or \"always\": {e}"))
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            devices: None,
            rail_map: None,
            fabric: None,
            qps_per_rail: 2,
            chain: 32,
            max_outstanding: None,
            sq_depth: None,
            max_rebuilds: 3,
            timeout: Duration::from_secs(30),
            stall_check: Duration::from_secs(1),
            spin: Some(DEFAULT_SPIN),
            connect: None,
            cm_addr: None,
            cm_timeout: Duration::from_secs(10),
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
    /// Buffers registered with [`Transport::register_buffer`](seqfeed_transport::Transport::register_buffer)
    /// whose registrations another transport of this process already held
    /// on every rail (reused, not made again; not in `registrations`).
    pub shared_registrations: u64,
    /// Doorbells (ibv_post_send calls).
    pub doorbells: u64,
    /// Nanoseconds spent in batches with reads to post or complete.
    pub batch_ns: u64,
    /// Of [`batch_ns`](Self::batch_ns), weighted by occupancy: the mean over
    /// lanes of the reads provably queued or on the wire
    /// ([`SendQueue::occupancy`](crate::SendQueue::occupancy)) over the read
    /// depth, integrated over time.
    pub occupied_ns: u64,
    /// Times a batch slept on its completion channels after spinning
    /// [`ClientOptions::spin`] without progress.
    pub sleeps: u64,
    /// Nanoseconds spent in those sleeps.
    pub sleep_ns: u64,
}

impl VerbsCounters {
    /// Time-weighted QP occupancy over every batch so far (0..=1): a lower
    /// bound of reads on the wire / read depth (a read counts until the
    /// signaled completion that retires it arrives, but WRs before the oldest
    /// outstanding signal do not count, since they may be done). `None`
    /// before the first batch.
    pub fn occupancy(&self) -> Option<f64> {
        (self.batch_ns > 0).then(|| self.occupied_ns as f64 / self.batch_ns as f64)
    }
}

/// Environment variable giving the client's rail map when
/// [`ClientOptions::rail_map`] is `None`: `"0:1,1:0"` pairs our rail 0 with
/// the node's rail 1 and our rail 1 with its rail 0.
pub const RAIL_MAP_ENV: &str = "SEQFEED_RAIL_MAP";

/// Parses a rail map, `"ours:node,..."` (e.g. `"0:1,1:0"`), into the node
/// rail of each of our rails (entry k for our rail k). Our rails must be
/// 0..n, each given once; rails left out pair with the same index.
pub fn parse_rail_map(s: &str) -> Result<Vec<u32>, String> {
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (a, b) = item
            .split_once(':')
            .ok_or_else(|| format!("rail map {s:?}: {item:?} is not ours:node (e.g. 0:1)"))?;
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|e| format!("rail map {s:?}: {x:?} in {item:?}: {e}"))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a >= 256 || b >= 256 {
            return Err(format!("rail map {s:?}: rail {} is over 255", a.max(b)));
        }
        if pairs.iter().any(|p| p.0 == a) {
            return Err(format!("rail map {s:?}: our rail {a} is given twice"));
        }
        pairs.push((a, b));
    }
    let n = pairs.iter().map(|p| p.0 + 1).max().unwrap_or(0);
    let mut map: Vec<u32> = (0..n).collect();
    for (a, b) in pairs {
        map[a as usize] = b;
    }
    Ok(map)
}

/// A connection to one storage node over RDMA verbs.
pub struct VerbsTransport {
    node: String,
    regions: Vec<RegionInfo>,
    region_index: HashMap<RegionId, usize>,
    rails: Vec<Rail>,
    lanes: Vec<Lane>,
    /// Lane indices in posting order: rails interleaved (QP 0 of every
    /// rail, then QP 1 of every rail, ...), so reads go round-robin over
    /// rails and QPs.
    lane_order: Vec<usize>,
    exchange: Box<dyn QpExchange>,
    opts: ClientOptions,
    mrs: Vec<MrEntry>,
    device_mrs: Vec<DeviceMr>,
    batch_mrs: Vec<Arc<MemoryRegion>>,
    next_lane: usize,
    comps: Vec<Completion>,
    wrs: Vec<ReadWr>,
    /// Scratch: the rails' completion-channel descriptors, for `poll(2)`.
    fds: Vec<i32>,
    counters: VerbsCounters,
    /// The process that made this transport: a forked child may not use it.
    owner_pid: u32,
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
        let fabric = match opts.fabric {
            Some(f) => f,
            None => crate::FabricSettings::from_env().map_err(|e| TransportError::Backend {
                node: node.clone(),
                backend: "verbs",
                what: e,
            })?,
        };
        let nics: Vec<_> = open_devices_with(opts.devices.as_deref(), &fabric)
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
        if opts.rail_map.is_none() {
            if let Ok(v) = std::env::var(RAIL_MAP_ENV) {
                opts.rail_map =
                    Some(parse_rail_map(&v).map_err(|e| node_err(&node, RAIL_MAP_ENV, e))?);
            }
        }
        if opts.connect.is_none() {
            opts.connect = Some(
                crate::cm::ConnectMode::from_env()
                    .map_err(|e| node_err(&node, "connect mode", e))?,
            );
        }
        if let Ok(v) = std::env::var(SPIN_ENV) {
            opts.spin = parse_spin(&v).map_err(|e| node_err(&node, SPIN_ENV, e))?;
        }
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
            lane_order: Vec::new(),
            exchange,
            opts,
            mrs: Vec::new(),
            device_mrs: Vec::new(),
            batch_mrs: Vec::new(),
            next_lane: 0,
            comps: Vec::with_capacity(256),
            wrs: Vec::with_capacity(MAX_CHAIN),
            fds: Vec::new(),
            counters: VerbsCounters::default(),
            owner_pid: std::process::id(),
        };
        for (r, nic) in nics.into_iter().enumerate() {
            t.add_rail(r, nic)?;
        }
        t.lane_order = (0..t.lanes.len()).collect();
        let per_rail = t.opts.qps_per_rail;
        t.lane_order
            .sort_by_key(|&i| (i % per_rail, t.lanes[i].rail));
        tracing::info!(
            node = %t.node,
            devices = ?t.rails.iter().map(|r| r.nic.info.name.as_str()).collect::<Vec<_>>(),
            node_rails = ?(0..t.rails.len()).map(|r| t.node_rail(r)).collect::<Vec<_>>(),
            qps = t.lanes.len(),
            depth = t.lanes.first().map(|l| l.depth).unwrap_or(0),
            sq_depth = t.lanes.first().map(|l| l.sq.config().sq_depth).unwrap_or(0),
            chain = t.opts.chain,
            spin_us = ?t.opts.spin.map(|d| d.as_micros()),
            connect = ?t.connect_mode(),
            regions = t.regions.len(),
            "verbs: connected"
        );
        Ok(t)
    }

    /// How this transport's QPs were connected.
    pub fn connect_mode(&self) -> crate::cm::ConnectMode {
        self.opts.connect.unwrap_or_default()
    }

    /// Counters since connect.
    pub fn counters(&self) -> VerbsCounters {
        self.counters
    }

    /// Names of the devices in use, in rail order.
    pub fn devices(&self) -> Vec<String> {
        self.rails.iter().map(|r| r.nic.info.name.clone()).collect()
    }

    /// Reads posted on each rail since connect, in rail order.
    pub fn rail_reads(&self) -> Vec<u64> {
        self.rails.iter().map(|r| r.reads).collect()
    }

    /// The node rail our rail `rail` pairs with ([`ClientOptions::rail_map`]).
    pub fn node_rail(&self, rail: usize) -> u32 {
        self.opts
            .rail_map
            .as_ref()
            .and_then(|m| m.get(rail).copied())
            .unwrap_or(rail as u32)
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

    /// Per lane: (negotiated read depth, send-queue entries, chain length).
    pub fn lane_depths(&self) -> Vec<(u32, u32, u32)> {
        self.lanes
            .iter()
            .map(|l| {
                let c = l.sq.config();
                (l.depth, c.sq_depth, c.chain)
            })
            .collect()
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

    /// Refuses (with the reason and the fix) in a forked child of the
    /// process that made this transport, and in a process that forked while
    /// its registrations were not fork-safe (see the `fork` module).
    fn fork_check(&self) -> Result<(), TransportError> {
        crate::fork::usable(self.owner_pid).map_err(|what| TransportError::Unsupported {
            node: self.node.clone(),
            backend: "verbs",
            what,
        })
    }

    /// Test hook (the self-test without a GPU): registers `region` as a
    /// peer-memory destination of [`Transport::read_batch_device`] *without*
    /// asking the CUDA driver whether it is device memory, so that host
    /// memory can stand in for it on a provider that pins any address
    /// (rxe). [`Transport::register_device`] refuses such a region.
    ///
    /// # Safety
    ///
    /// `region` must name memory that stays allocated, writable, and
    /// unreferenced by any Rust reference (`&`/`&mut`) until it is
    /// unregistered ([`Transport::unregister_device`]) or this transport is
    /// dropped, except between `read_batch_device` calls, when the caller
    /// may read it through a pointer it keeps. Host memory freed while
    /// registered would be written by the NIC after Rust reused it.
    #[allow(unsafe_code)]
    pub unsafe fn register_host_as_device(
        &mut self,
        region: &DeviceRegion,
    ) -> Result<(), TransportError> {
        self.fork_check()?;
        // SAFETY: passed on: the caller's contract above is the one
        // `register_host_as_device_mr` asks for.
        unsafe { self.register_host_as_device_mr(region) }
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
        self.fork_check()?;
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
        self.fork_check()?;
        self.register_device_mr(region)
    }

    fn unregister_device(&mut self, addr: u64, len: usize) {
        self.unregister_device_mr(addr, len)
    }

    fn read_batch_device(
        &mut self,
        reads: &[ReadRequest],
        dst: &DeviceRegion,
    ) -> Result<BatchStats, TransportError> {
        self.fork_check()?;
        let lkeys = self.device_lkeys(dst)?;
        let mut stats = BatchStats::default();
        let (region_of, pending) = self.plan(reads, dst.len(), &mut stats)?;
        if pending.is_empty() {
            return Ok(stats);
        }
        self.execute(reads, dst.addr(), &lkeys, &region_of, pending, stats)
    }

    fn register_buffer(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        self.fork_check()?;
        self.register_host_buffer(buf)
    }

    fn unregister_buffer(&mut self, addr: usize, len: usize) {
        self.unregister_host_buffer(addr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rail_maps_parse() {
        assert_eq!(parse_rail_map("0:1,1:0").unwrap(), vec![1, 0]);
        assert_eq!(parse_rail_map(" 1:3 ").unwrap(), vec![0, 3]);
        assert_eq!(parse_rail_map("").unwrap(), Vec::<u32>::new());
        for (bad, says) in [
            ("0-1", "not ours:node"),
            ("0:x", "\"x\""),
            ("0:1,0:2", "given twice"),
            ("0:300", "over 255"),
        ] {
            let e = parse_rail_map(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn spin_settings_parse() {
        assert_eq!(parse_spin("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(
            parse_spin(" 250 ").unwrap(),
            Some(Duration::from_micros(250))
        );
        assert_eq!(parse_spin("Always").unwrap(), None);
        let e = parse_spin("fast").unwrap_err();
        assert!(e.contains(SPIN_ENV) && e.contains("\"fast\""), "{e}");
        assert!(parse_spin("-5").is_err());
    }

    #[test]
    fn default_options_are_bounded() {
        let o = ClientOptions::default();
        assert!(o.chain <= MAX_CHAIN && o.chain >= 1);
        assert!(o.qps_per_rail >= 1 && o.max_rebuilds >= 1);
        assert!(o.stall_check < o.timeout);
    }
}
