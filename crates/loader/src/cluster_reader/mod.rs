//! Reads a rank's block from a cluster of storage nodes, with fail-over.
//!
//! A [`ClusterReader`] knows every node ([`NodeSpec`]: a name, the files the
//! cluster file says it holds, and a [`Connector`] that opens a transport to
//! it). For one step it
//!
//! 1. assigns each row to a live node that holds the row's file, preferring
//!    node `i` for the `i`-th contiguous share of rows so that each node's rows
//!    form few runs and the load is spread evenly;
//! 2. turns each node's rows into one batch of [`ReadRequest`](seqfeed_transport::ReadRequest)s (region
//!    looked up by file name in the node's region table) and issues the
//!    batches to all nodes in parallel, one scoped thread per node. A node
//!    whose rows form a single run reads straight into the destination; one
//!    whose rows are scattered reads into a per-node staging buffer with one
//!    batch and then copies each row into place (one round trip instead of
//!    one per run);
//! 3. when a node fails ([`TransportError::is_node_failure`], e.g. a read
//!    past the io timeout) marks it suspect with one log line naming it and
//!    what it was reading, moves its rows to other live replicas and reads
//!    them again at once. When a file has no live holder, it waits for a
//!    holder's reconnect (probing the holders meanwhile) until
//!    [`RetryPolicy::failover_timeout`] has passed since the step's first
//!    failure; then [`LoaderError::NoReplica`] names the step, the file,
//!    the time waited and each replica with how long it has been down, its
//!    latest error and the read it failed (a socket timeout says "timed
//!    out"). Other errors (a read out of bounds) fail the step at once.
//!
//! Destination memory: [`ClusterReader::register_buffer`] announces a
//! long-lived destination (the loader's ring of step buffers) to every node
//! transport, so RDMA transports register it once instead of per batch; a
//! reconnected transport gets it again the next time it is the destination
//! of a step. Each node's staging buffer is registered whenever it is
//! (re)allocated, and unregistered before it is freed or reallocated: an
//! RDMA registration pins the pages it was made on, so a registration must
//! never outlive its memory.
//!
//! Device memory (GPUDirect RDMA): [`ClusterReader::register_device`]
//! registers a [`DeviceRegion`] with every connected node, all or none (a
//! refusal is returned so the caller can fall back to a host bounce buffer);
//! [`ClusterReader::read_step_device`] then has each node read its rows
//! straight into the region (no staging: every read carries its own
//! destination offset). A node reconnected later registers the region
//! again; if it refuses, the region is withdrawn from every node and the
//! step in progress fails with [`LoaderError::DeviceDestination`], which
//! the loader answers by reading through the host buffer.
//!
//! A dead node is reconnected off the step's path, by background probes
//! (one connect attempt at a time per node, see `revive`) with exponential
//! backoff ([`RetryPolicy::backoff_initial`] doubling up to
//! [`RetryPolicy::backoff_max`]), for as long as the reader lives: storage
//! nodes restart for maintenance during runs that last weeks, and a node
//! that comes back is used again however long it was down. A step takes a
//! reconnected node back at its start. A frozen node (a stopped process
//! still accepting TCP connections) thus costs a run one io timeout, not
//! one per reconnect attempt. No wait is unbounded: connects and reads are
//! bounded by the transports' own timeouts, waiting for a replica by the
//! fail-over window.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use seqfeed_transport::{DeviceRegion, RegionId, Transport, TransportError};

use crate::block::SeqRead;
use crate::error::LoaderError;

mod crc;
mod failover;
mod revive;
mod round;
mod stats;
#[cfg(test)]
mod tests;

use crc::FileCrc;
use revive::{connect_at_start, map_regions, ProbeResult};
use round::Dest;
pub use stats::{ErrorCounts, LatencyHistogram, NodeStats, LATENCY_BUCKETS};

/// Opens a transport to one node. Called at start and on every reconnect.
pub type Connector = Box<dyn Fn() -> Result<Box<dyn Transport>, TransportError> + Send + Sync>;

/// A [`Connector`] shared with the node's background probe.
type SharedConnector = Arc<dyn Fn() -> Result<Box<dyn Transport>, TransportError> + Send + Sync>;

/// One storage node as the reader sees it.
pub struct NodeSpec {
    /// Name for logs and errors (usually its address).
    pub name: String,
    /// Files the node holds (dataset-relative paths). `None`: whatever its
    /// region table lists (learned when it is first connected).
    pub files: Option<Vec<String>>,
    /// Opens a transport to the node.
    pub connect: Connector,
}

impl std::fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSpec")
            .field("name", &self.name)
            .field("files", &self.files.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// Retry and fail-over bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Connection attempts per node at start-up.
    pub start_attempts: u32,
    /// First backoff after a failed connect or a node failure.
    pub backoff_initial: Duration,
    /// Largest backoff: a node down for long is probed this often, for as
    /// long as the reader lives (a dead node is never given up).
    pub backoff_max: Duration,
    /// How long one step waits for a live replica of a file when none is
    /// connected (dead holders are probed meanwhile); then the step fails
    /// with [`LoaderError::NoReplica`].
    pub failover_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            start_attempts: 5,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            failover_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of one [`ClusterReader::read_step`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReadStats {
    /// Rows read.
    pub rows: u64,
    /// Bytes read (counted once per row, even when re-read after a fail-over).
    pub bytes: u64,
    /// Read batches issued (all nodes, all rounds).
    pub batches: u64,
    /// Rows moved to another replica after a node failure.
    pub failed_over: u64,
    /// Rows that went through a staging buffer (scattered rows).
    pub staged_rows: u64,
    /// Rows whose bytes failed their file's CRC32C table (then read again
    /// from a replica).
    pub crc_mismatches: u64,
}

/// Per-node state.
///
/// Field order matters: `transport` is dropped before `staging`, so the
/// staging buffer's registration goes before its memory.
struct Node {
    spec: NodeSpec,
    /// The spec's connector, shared with background probes.
    connect: SharedConnector,
    transport: Option<Box<dyn Transport>>,
    /// Buffers of [`ClusterReader::register_buffer`] (address, length) the
    /// current transport has registered.
    registered: Vec<(usize, usize)>,
    /// Whether the current transport has `staging` registered.
    staging_registered: bool,
    /// Device regions the current transport has registered.
    device: Vec<DeviceRegion>,
    /// Region of each file of the reader's file table, when this node holds it.
    regions: Vec<Option<RegionId>>,
    /// Since when the node is disconnected (`None` while live).
    down_since: Option<Instant>,
    /// Earliest time of the next reconnect attempt while disconnected.
    retry_at: Instant,
    /// Consecutive failures since the node was last connected (the read
    /// failure and the failed reconnects): the backoff's exponent.
    failures: u32,
    /// The latest error since the node was last connected, for messages;
    /// cleared when it reconnects.
    last_error: Option<String>,
    /// The read failure that made the node suspect (what was being read,
    /// and the error), until it is reconnected.
    down_because: Option<(String, String)>,
    /// Whether a background reconnect attempt is in flight.
    probing: bool,
    /// Per file of the reader's table: why this node's copy is not read
    /// (it failed the CRC check), for the reader's lifetime.
    bad_files: Vec<Option<String>>,
    /// Rows from this node that failed the CRC check.
    crc_mismatches: u64,
    /// The last of them (`FILE sequence N`).
    last_crc_mismatch: Option<String>,
    /// Rows, batches, errors, fail-overs, reconnects, latency.
    counters: stats::Counters,
    /// Staging buffer for scattered rows, reused across steps.
    staging: Vec<u8>,
    /// Bytes read from this node (lifetime).
    bytes: u64,
}

impl Node {
    fn live(&self) -> bool {
        self.transport.is_some()
    }

    /// Installs a new transport (or none, after a failure): registrations
    /// belonged to the old one.
    fn set_transport(&mut self, t: Option<Box<dyn Transport>>) {
        self.transport = t;
        self.registered.clear();
        self.staging_registered = false;
        self.device.clear();
    }

    /// Registers `buf` (one of the reader's registered buffers) with the
    /// current transport if it is not yet; a refusal is logged and the
    /// transport then registers per batch.
    fn ensure_registered(&mut self, buf: &mut [u8]) {
        let key = (buf.as_ptr() as usize, buf.len());
        let Some(t) = self.transport.as_mut() else {
            return;
        };
        if self.registered.contains(&key) {
            return;
        }
        match t.register_buffer(buf) {
            Ok(()) => self.registered.push(key),
            Err(e) => {
                tracing::warn!(node = %self.spec.name, len = key.1, error = %e, "cannot register a destination buffer; reads into it register per batch")
            }
        }
    }
}

/// Reads blocks of sequences from a set of storage nodes; see the module docs.
pub struct ClusterReader {
    files: Vec<String>,
    nodes: Vec<Node>,
    /// Long-lived destinations announced by [`ClusterReader::register_buffer`].
    buffers: Vec<(usize, usize)>,
    /// Device regions every live node has registered.
    device: Vec<DeviceRegion>,
    /// For each file, the nodes that hold it (per the node specs).
    holders: Vec<Vec<usize>>,
    policy: RetryPolicy,
    /// Results of background reconnect attempts (node index, outcome).
    probes: mpsc::Receiver<ProbeResult>,
    /// Handed to each background reconnect attempt.
    probe_tx: mpsc::Sender<ProbeResult>,
    /// Each file's CRC32C table, fetched from a node the first time the
    /// file is read (see `crc`).
    crcs: Vec<OnceLock<FileCrc>>,
    /// Whether host reads are checked against the tables.
    verify_crc: bool,
    /// Threads that read the other nodes' rows of a round (the first node's
    /// run on the caller), started with the first round that needs them and
    /// kept for the reader's life: no thread is started per round.
    workers: Option<rayon_core::ThreadPool>,
}

impl std::fmt::Debug for ClusterReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterReader")
            .field("files", &self.files.len())
            .field("nodes", &self.node_names())
            .finish_non_exhaustive()
    }
}

impl ClusterReader {
    /// Connects to every node (each up to `policy.start_attempts` times with
    /// backoff) and maps each file of `files` to the nodes holding it.
    ///
    /// Nodes that stay unreachable are marked dead and retried later; it is
    /// an error when some file has no reachable holder at all, or when a node
    /// lacks a region for a file its spec says it holds.
    pub fn connect(
        files: Vec<String>,
        specs: Vec<NodeSpec>,
        policy: RetryPolicy,
    ) -> Result<Self, LoaderError> {
        if specs.is_empty() {
            return Err(LoaderError::Config {
                what: "no storage nodes given".into(),
            });
        }
        let now = Instant::now();
        let mut nodes: Vec<Node> = specs
            .into_iter()
            .map(|spec| {
                let NodeSpec {
                    name,
                    files: held,
                    connect,
                } = spec;
                let connect: SharedConnector = Arc::from(connect);
                let forward = connect.clone();
                Node {
                    spec: NodeSpec {
                        name,
                        files: held,
                        connect: Box::new(move || forward()),
                    },
                    connect,
                    transport: None,
                    registered: Vec::new(),
                    staging_registered: false,
                    device: Vec::new(),
                    regions: vec![None; files.len()],
                    down_since: None,
                    retry_at: now,
                    failures: 0,
                    last_error: None,
                    down_because: None,
                    probing: false,
                    bad_files: vec![None; files.len()],
                    crc_mismatches: 0,
                    last_crc_mismatch: None,
                    counters: stats::Counters::default(),
                    staging: Vec::new(),
                    bytes: 0,
                }
            })
            .collect();
        let index: HashMap<&str, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();

        let results = connect_at_start(&nodes, &index, &policy);
        let mut connect_errors = Vec::new();
        for (node, res) in nodes.iter_mut().zip(results) {
            match res {
                Ok(t) => {
                    node.set_transport(Some(t));
                }
                Err(e) => {
                    tracing::warn!(node = %node.spec.name, error = %e, "node unreachable at start");
                    node.last_error = Some(e.to_string());
                    node.down_since = Some(now);
                    node.failures = 1;
                    node.retry_at = Instant::now() + policy.backoff_initial;
                    connect_errors.push(e);
                }
            }
        }

        let mut holders = vec![Vec::new(); files.len()];
        for (ni, node) in nodes.iter_mut().enumerate() {
            // Files this node holds: the spec's list, else its region table.
            let listed: Vec<String> = match (&node.spec.files, &node.transport) {
                (Some(list), _) => list.clone(),
                (None, Some(t)) => t.regions().iter().map(|r| r.name.clone()).collect(),
                (None, None) => Vec::new(),
            };
            for name in &listed {
                if let Some(&fi) = index.get(name.as_str()) {
                    holders[fi].push(ni);
                }
            }
            if let Some(t) = &node.transport {
                map_regions(&node.spec, t.as_ref(), &index, &mut node.regions)?;
            }
        }
        for (fi, h) in holders.iter().enumerate() {
            if h.is_empty() {
                // A node without a file list that could not be reached may
                // hold the file: its connect error is the real cause.
                let unknown = nodes
                    .iter()
                    .find(|n| n.spec.files.is_none() && !n.live())
                    .map(|n| n.spec.name.clone());
                if let Some(name) = unknown {
                    if let Some(pos) = connect_errors.iter().position(
                        |e| matches!(e, LoaderError::Connect { node, .. } if *node == name),
                    ) {
                        return Err(connect_errors.swap_remove(pos));
                    }
                }
                return Err(LoaderError::Unplaced {
                    file: files[fi].clone(),
                });
            }
            if !h.iter().any(|&n| nodes[n].live()) {
                // Every holder is unreachable: report the first holder's error.
                let first = h[0];
                let e = connect_errors
                    .into_iter()
                    .find(|e| matches!(e, LoaderError::Connect { node, .. } if *node == nodes[first].spec.name));
                return Err(e.unwrap_or_else(|| LoaderError::Unplaced {
                    file: files[fi].clone(),
                }));
            }
        }
        tracing::debug!(
            nodes = nodes.len(),
            live = nodes.iter().filter(|n| n.live()).count(),
            files = files.len(),
            "cluster reader connected"
        );
        let (probe_tx, probes) = mpsc::channel();
        let nfiles = files.len();
        Ok(ClusterReader {
            files,
            nodes,
            buffers: Vec::new(),
            device: Vec::new(),
            holders,
            policy,
            probes,
            probe_tx,
            crcs: (0..nfiles).map(|_| OnceLock::new()).collect(),
            verify_crc: false,
            workers: None,
        })
    }

    /// Node names, in spec order.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.spec.name.clone()).collect()
    }

    /// Which nodes are currently connected, in spec order.
    pub fn live_nodes(&self) -> Vec<bool> {
        self.nodes.iter().map(Node::live).collect()
    }

    /// Bytes read from each node so far, in spec order.
    pub fn bytes_per_node(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.bytes).collect()
    }

    /// The file table reads index into.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Turns the per-read CRC32C check on or off (off by default: done on
    /// the reading thread after each batch, it cost 20-33% of the tcp
    /// reader's throughput in `benches/loader.rs`). When on, every sequence
    /// read into host memory is checked against its file's table, fetched
    /// from the nodes; one that fails is read again from a replica.
    pub fn set_verify_crc(&mut self, on: bool) {
        self.verify_crc = on;
    }

    /// Whether reads are checked against the files' CRC32C tables.
    pub fn verify_crc(&self) -> bool {
        self.verify_crc
    }

    /// Rows read from each node that failed their CRC32C check, in spec order.
    pub fn crc_mismatches_per_node(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.crc_mismatches).collect()
    }

    /// Announces `buf` as a long-lived destination of [`read_step`](Self::read_step)
    /// (one step buffer of a ring) and registers it with every connected
    /// node's transport; a node connected later registers it the first time
    /// `buf` is a step's destination. Call
    /// [`unregister_buffer`](Self::unregister_buffer) before freeing `buf`.
    /// A transport that refuses the registration (logged) registers per
    /// batch instead.
    pub fn register_buffer(&mut self, buf: &mut [u8]) {
        let key = (buf.as_ptr() as usize, buf.len());
        if key.1 == 0 {
            return;
        }
        let overlaps = |&(a, l): &(usize, usize)| a < key.0 + key.1 && key.0 < a + l;
        self.buffers.retain(|b| !overlaps(b));
        self.buffers.push(key);
        for node in &mut self.nodes {
            node.registered.retain(|b| !overlaps(b));
            node.ensure_registered(buf);
        }
    }

    /// Withdraws a buffer of [`register_buffer`](Self::register_buffer):
    /// every node's transport drops its registration of those addresses.
    pub fn unregister_buffer(&mut self, addr: usize, len: usize) {
        let overlaps = |&(a, l): &(usize, usize)| a < addr + len.max(1) && addr < a + l;
        self.buffers.retain(|b| !overlaps(b));
        for node in &mut self.nodes {
            node.registered.retain(|b| !overlaps(b));
            if let Some(t) = node.transport.as_mut() {
                t.unregister_buffer(addr, len);
            }
        }
    }

    /// Registers device memory with every connected node's transport
    /// (GPUDirect RDMA), all or none: when one refuses, the others'
    /// registrations are withdrawn and the refusal (naming the node) is
    /// returned. Call [`unregister_device`](Self::unregister_device) before
    /// the memory is freed.
    pub fn register_device(&mut self, region: &DeviceRegion) -> Result<(), String> {
        if !self.nodes.iter().any(Node::live) {
            return Err("no node is connected".into());
        }
        let mut refused = None;
        for node in &mut self.nodes {
            let Some(t) = node.transport.as_mut() else {
                continue;
            };
            match t.register_device(region) {
                Ok(()) => node.device.push(*region),
                Err(e) => {
                    refused = Some(format!("node {}: {e}", node.spec.name));
                    break;
                }
            }
        }
        match refused {
            None => {
                self.device.push(*region);
                Ok(())
            }
            Some(why) => {
                self.unregister_device(region.addr(), region.len());
                Err(why)
            }
        }
    }

    /// Withdraws device memory registered with
    /// [`register_device`](Self::register_device) from every node.
    pub fn unregister_device(&mut self, addr: u64, len: usize) {
        let overlaps = |r: &DeviceRegion| r.overlaps(addr, len);
        self.device.retain(|r| !overlaps(r));
        for node in &mut self.nodes {
            if node.device.iter().any(overlaps) {
                node.device.retain(|r| !overlaps(r));
                if let Some(t) = node.transport.as_mut() {
                    t.unregister_device(addr, len);
                }
            }
        }
    }

    /// Whether `region` lies inside device memory registered with every node.
    pub fn has_device(&self, region: &DeviceRegion) -> bool {
        self.device.iter().any(|r| r.contains(region))
    }

    /// Like [`read_step`](Self::read_step), straight into device memory
    /// registered with [`register_device`](Self::register_device): row `k`
    /// lands at `dst.addr + k * row_bytes`. Fails with
    /// [`LoaderError::DeviceDestination`] when a node cannot write `dst`
    /// (then nothing is promised about its contents; read the step through
    /// host memory).
    pub fn read_step_device(
        &mut self,
        step: u64,
        reads: &[SeqRead],
        row_bytes: usize,
        dst: &DeviceRegion,
    ) -> Result<StepReadStats, LoaderError> {
        if !self.has_device(dst) {
            return Err(LoaderError::DeviceDestination {
                step,
                node: "(all)".into(),
                what: format!("{dst} is not registered with the nodes"),
            });
        }
        self.read_dest(step, reads, row_bytes, Dest::Device(*dst))
    }

    /// Reads `reads[k]` into row `k` of `dst` (rows of `row_bytes` bytes)
    /// for `step`; see the module docs for placement and fail-over.
    pub fn read_step(
        &mut self,
        step: u64,
        reads: &[SeqRead],
        row_bytes: usize,
        dst: &mut [u8],
    ) -> Result<StepReadStats, LoaderError> {
        // A registered buffer is registered with nodes connected since.
        if self.buffers.contains(&(dst.as_ptr() as usize, dst.len())) {
            for node in &mut self.nodes {
                node.ensure_registered(dst);
            }
        }
        self.read_dest(step, reads, row_bytes, Dest::Host(dst))
    }
}

/// Says "timed out" for a socket timeout: a read or write past the tcp
/// transport's io timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`) surfaces as EAGAIN,
/// whose text (`os error 11`, "resource temporarily unavailable") does not
/// say that a node stopped answering.
pub(super) fn name_timeout(e: TransportError) -> TransportError {
    match e {
        TransportError::Io { node, what, source }
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            TransportError::Io {
                node,
                what,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out (no answer within the io timeout)",
                ),
            }
        }
        e => e,
    }
}
