//! Reads a rank's block from a cluster of storage nodes, with fail-over.
//!
//! A [`ClusterReader`] knows every node ([`NodeSpec`]: a name, the files the
//! cluster file says it holds, and a [`Connector`] that opens a transport to
//! it). For one step it
//!
//! 1. assigns each row to a live node that holds the row's file, preferring
//!    node `i` for the `i`-th contiguous share of rows so that each node's rows
//!    form few runs and the load is spread evenly;
//! 2. turns each node's rows into one batch of [`ReadRequest`]s (region
//!    looked up by file name in the node's region table) and issues the
//!    batches to all nodes in parallel, one scoped thread per node. A node
//!    whose rows form a single run reads straight into the destination; one
//!    whose rows are scattered reads into a per-node staging buffer with one
//!    batch and then copies each row into place (one round trip instead of
//!    one per run);
//! 3. when a node fails ([`TransportError::is_node_failure`]) marks it dead,
//!    moves its rows to other live replicas and reads them again. When a
//!    file has no live holder, it waits for a holder's reconnect for at most
//!    [`RetryPolicy::failover_timeout`] (counted from the step's first
//!    failure); then [`LoaderError::NoReplica`] names the step, the file and
//!    each replica's last error. Other errors (a read out of bounds) fail the
//!    step at once.
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
//! A dead node is reconnected with exponential backoff
//! ([`RetryPolicy::backoff_initial`] doubling up to
//! [`RetryPolicy::backoff_max`]) for at most
//! [`RetryPolicy::max_reconnects`] attempts, then given up for the reader's
//! lifetime. No wait is unbounded: connects and reads are bounded by the
//! transports' own timeouts, waiting for a replica by the fail-over window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use seqfeed_transport::{
    BatchStats, DeviceRegion, ReadRequest, RegionId, Transport, TransportError,
};

use crate::block::SeqRead;
use crate::error::LoaderError;

/// Opens a transport to one node. Called at start and on every reconnect.
pub type Connector = Box<dyn Fn() -> Result<Box<dyn Transport>, TransportError> + Send + Sync>;

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
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Reconnect attempts after a node failure before the node is given up.
    pub max_reconnects: u32,
    /// Longest time one step waits for a live replica of a file.
    pub failover_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            start_attempts: 5,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_reconnects: 8,
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
}

/// Per-node state.
///
/// Field order matters: `transport` is dropped before `staging`, so the
/// staging buffer's registration goes before its memory.
struct Node {
    spec: NodeSpec,
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
    /// Whether the node is given up for good.
    given_up: bool,
    /// Earliest time of the next reconnect attempt while disconnected.
    retry_at: Instant,
    /// Consecutive failed reconnects.
    failures: u32,
    /// Last error, for messages.
    last_error: Option<String>,
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
            .map(|spec| Node {
                spec,
                transport: None,
                registered: Vec::new(),
                staging_registered: false,
                device: Vec::new(),
                regions: vec![None; files.len()],
                given_up: false,
                retry_at: now,
                failures: 0,
                last_error: None,
                staging: Vec::new(),
                bytes: 0,
            })
            .collect();
        let index: HashMap<&str, usize> = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();

        // Connect all nodes in parallel: start-up retries must not add up.
        let results: Vec<Result<Box<dyn Transport>, LoaderError>> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let spec = &n.spec;
                    s.spawn(move || connect_with_retry(spec, &policy))
                })
                .collect();
            handles
                .into_iter()
                .zip(&nodes)
                .map(|(h, n)| {
                    h.join().unwrap_or_else(|_| {
                        Err(LoaderError::Connect {
                            node: n.spec.name.clone(),
                            attempts: 0,
                            source: TransportError::Protocol {
                                node: n.spec.name.clone(),
                                what: "connect thread panicked".into(),
                            },
                        })
                    })
                })
                .collect()
        });
        let mut connect_errors = Vec::new();
        for (node, res) in nodes.iter_mut().zip(results) {
            match res {
                Ok(t) => {
                    node.set_transport(Some(t));
                }
                Err(e) => {
                    tracing::warn!(node = %node.spec.name, error = %e, "node unreachable at start");
                    node.last_error = Some(e.to_string());
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
        Ok(ClusterReader {
            files,
            nodes,
            buffers: Vec::new(),
            device: Vec::new(),
            holders,
            policy,
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
                self.unregister_device(region.addr, region.len);
                Err(why)
            }
        }
    }

    /// Withdraws device memory registered with
    /// [`register_device`](Self::register_device) from every node.
    pub fn unregister_device(&mut self, addr: u64, len: usize) {
        let end = addr.saturating_add(len.max(1) as u64);
        let overlaps =
            |r: &DeviceRegion| r.addr < end && addr < r.addr.saturating_add(r.len as u64);
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

    fn read_dest(
        &mut self,
        step: u64,
        reads: &[SeqRead],
        row_bytes: usize,
        mut dst: Dest<'_>,
    ) -> Result<StepReadStats, LoaderError> {
        let rows = reads.len();
        let dst_len = match &dst {
            Dest::Host(d) => d.len(),
            Dest::Device(r) => r.len,
        };
        if rows.checked_mul(row_bytes).is_none_or(|n| n > dst_len) {
            return Err(LoaderError::BadRow {
                step,
                row: rows.saturating_sub(1),
                what: format!(
                    "{rows} rows of {row_bytes} bytes do not fit a {dst_len}-byte buffer"
                ),
            });
        }
        for (k, r) in reads.iter().enumerate() {
            if r.len as usize > row_bytes {
                return Err(LoaderError::BadRow {
                    step,
                    row: k,
                    what: format!("a {}-byte sequence in a {row_bytes}-byte row", r.len),
                });
            }
            if r.file as usize >= self.files.len() {
                return Err(LoaderError::BadRow {
                    step,
                    row: k,
                    what: format!(
                        "file index {} outside the {}-file table",
                        r.file,
                        self.files.len()
                    ),
                });
            }
        }

        let mut stats = StepReadStats {
            rows: rows as u64,
            bytes: reads.iter().map(|r| u64::from(r.len)).sum(),
            ..StepReadStats::default()
        };
        // The fail-over window opens at the step's first node failure (or
        // the first time a file has no live holder), not at the step's
        // start: a slow read does not eat into it.
        let mut window: Option<(Instant, Instant)> = None; // (opened, deadline)
        let policy = self.policy;
        let open = |w: &mut Option<(Instant, Instant)>| {
            *w.get_or_insert_with(|| {
                let now = Instant::now();
                (now, now + policy.failover_timeout)
            })
        };
        let mut pending: Vec<usize> = (0..rows).collect();
        let mut round = 0u32;
        while !pending.is_empty() {
            round += 1;
            // Reconnect dead nodes only while the window is open: once it has
            // passed, the step finishes on the nodes still live or fails, so
            // the rounds are bounded.
            if window.is_none_or(|(_, deadline)| Instant::now() < deadline) {
                self.revive_due();
            }
            let owner = match self.assign(&pending, reads) {
                Ok(owner) => owner,
                Err(fi) => {
                    // No live holder of file `fi`: wait for a reconnect if one
                    // is due before the deadline, else give up.
                    let (opened, deadline) = open(&mut window);
                    let now = Instant::now();
                    let next = self.holders[fi]
                        .iter()
                        .filter(|&&n| !self.nodes[n].given_up)
                        .map(|&n| self.nodes[n].retry_at)
                        .min();
                    match next {
                        Some(t) if t < deadline && now < deadline => {
                            std::thread::sleep(t.saturating_duration_since(now));
                            continue;
                        }
                        _ => return Err(self.no_replica(step, fi, opened.elapsed())),
                    }
                }
            };
            let failed = self.read_round(
                step, reads, row_bytes, &mut dst, &pending, &owner, &mut stats,
            )?;
            if !failed.is_empty() {
                open(&mut window);
                tracing::warn!(
                    step,
                    round,
                    rows = failed.len(),
                    "moving rows of failed node(s) to replicas"
                );
                stats.failed_over += failed.len() as u64;
            }
            pending = failed;
        }
        Ok(stats)
    }

    fn no_replica(&self, step: u64, fi: usize, waited: Duration) -> LoaderError {
        let tried = self.holders[fi]
            .iter()
            .map(|&n| {
                let node = &self.nodes[n];
                format!(
                    "{} ({})",
                    node.spec.name,
                    node.last_error.as_deref().unwrap_or("no error recorded")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        LoaderError::NoReplica {
            step,
            file: self.files[fi].clone(),
            waited_ms: waited.as_millis(),
            tried,
        }
    }

    /// Tries to reconnect every dead node whose backoff has expired.
    fn revive_due(&mut self) {
        let now = Instant::now();
        let due = |n: &Node| !n.live() && !n.given_up && n.retry_at <= now;
        if !self.nodes.iter().any(due) {
            return;
        }
        let mut withdrawn: Vec<DeviceRegion> = Vec::new();
        let index: HashMap<&str, usize> = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str(), i))
            .collect();
        for node in &mut self.nodes {
            if !due(node) {
                continue;
            }
            match (node.spec.connect)() {
                Ok(t) => {
                    let mut regions = vec![None; self.files.len()];
                    match map_regions(&node.spec, t.as_ref(), &index, &mut regions) {
                        Ok(()) => {
                            tracing::info!(node = %node.spec.name, "node reconnected");
                            node.regions = regions;
                            node.set_transport(Some(t));
                            node.failures = 0;
                            // Device memory: the new transport registers it too, or
                            // the region is withdrawn (steps then read through host memory).
                            for region in &self.device {
                                let Some(t) = node.transport.as_mut() else {
                                    break;
                                };
                                match t.register_device(region) {
                                    Ok(()) => node.device.push(*region),
                                    Err(e) => {
                                        tracing::warn!(node = %node.spec.name, error = %e, "reconnected node refuses device memory {region}; reading those steps through host memory");
                                        withdrawn.push(*region);
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(node = %node.spec.name, error = %e, "reconnected node has a wrong region table; giving it up");
                            node.last_error = Some(e.to_string());
                            node.given_up = true;
                        }
                    }
                }
                Err(e) => {
                    node.last_error = Some(e.to_string());
                    schedule_retry(node, &self.policy);
                }
            }
        }
        for r in withdrawn {
            self.unregister_device(r.addr, r.len);
        }
    }

    /// Assigns each pending row to a live node holding its file. Returns the
    /// owner of each pending row (same order), or the index of a file with no
    /// live holder.
    fn assign(&self, pending: &[usize], reads: &[SeqRead]) -> Result<Vec<usize>, usize> {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].live())
            .collect();
        let mut load = vec![0usize; self.nodes.len()];
        let mut owner = Vec::with_capacity(pending.len());
        let total = pending.len().max(1);
        for (i, &row) in pending.iter().enumerate() {
            let fi = reads[row].file as usize;
            // Preferred node for the i-th share of rows.
            let preferred = if live.is_empty() {
                None
            } else {
                Some(live[i * live.len() / total])
            };
            let holds = |n: usize| self.nodes[n].live() && self.nodes[n].regions[fi].is_some();
            let pick = match preferred {
                Some(p) if holds(p) => Some(p),
                _ => self.holders[fi]
                    .iter()
                    .copied()
                    .filter(|&n| holds(n))
                    .min_by_key(|&n| load[n]),
            };
            let Some(n) = pick else {
                return Err(fi);
            };
            load[n] += 1;
            owner.push(n);
        }
        Ok(owner)
    }

    /// Reads every pending row from its owner, all nodes in parallel.
    /// Returns the rows whose node failed (to be re-assigned).
    #[allow(clippy::too_many_arguments)]
    fn read_round(
        &mut self,
        step: u64,
        reads: &[SeqRead],
        row_bytes: usize,
        dst: &mut Dest<'_>,
        pending: &[usize],
        owner: &[usize],
        stats: &mut StepReadStats,
    ) -> Result<Vec<usize>, LoaderError> {
        // Runs of consecutive pending rows with the same owner, in row order.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // (first row, count, node)
        for (&row, &n) in pending.iter().zip(owner) {
            match runs.last_mut() {
                Some((first, count, node)) if *node == n && *first + *count == row => *count += 1,
                _ => runs.push((row, 1, n)),
            }
        }
        let device = matches!(dst, Dest::Device(_));
        let per_node: Vec<NodeRuns<'_>> = match dst {
            Dest::Host(dst) => {
                // Split the destination into one disjoint slice per run.
                let mut per_node: Vec<Vec<(usize, &mut [u8])>> =
                    (0..self.nodes.len()).map(|_| Vec::new()).collect();
                let mut rest: &mut [u8] = dst;
                let mut at = 0usize; // row where `rest` starts
                for &(first, count, node) in &runs {
                    let skip = (first - at) * row_bytes;
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
                    let (run, tail) = tail.split_at_mut(count * row_bytes);
                    per_node[node].push((first, run));
                    rest = tail;
                    at = first + count;
                }
                per_node.into_iter().map(NodeRuns::Host).collect()
            }
            Dest::Device(region) => {
                // Device memory: every read carries its own offset, no split.
                let mut per_node: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
                for (&row, &n) in pending.iter().zip(owner) {
                    per_node[n].push(row);
                }
                per_node
                    .into_iter()
                    .map(|rows| NodeRuns::Device(rows, *region))
                    .collect()
            }
        };

        let files = &self.files;
        // One unit of work per node with rows; the first runs on this thread
        // (no spawn when a single node is involved), the others on scoped threads.
        let mut work: Vec<NodeWork<'_, '_>> = self
            .nodes
            .iter_mut()
            .enumerate()
            .zip(per_node)
            .filter(|(_, runs)| !runs.is_empty())
            .map(|((ni, node), runs)| (ni, node, runs))
            .collect();
        let panicked = |node: &str, rows: Vec<usize>| NodeOutcome {
            result: Err(TransportError::Protocol {
                node: node.to_owned(),
                what: "reader thread panicked".into(),
            }),
            rows,
            batches: 0,
            staged: 0,
        };
        let outcomes: Vec<(usize, NodeOutcome)> = std::thread::scope(|s| {
            let first = if work.is_empty() {
                None
            } else {
                Some(work.remove(0))
            };
            let handles: Vec<_> = work
                .into_iter()
                .map(|(ni, node, runs)| {
                    let name = node.spec.name.clone();
                    let rows = runs.rows(row_bytes);
                    let h = s.spawn(move || read_node(node, step, reads, row_bytes, runs, files));
                    (ni, name, rows, h)
                })
                .collect();
            let mut outcomes = Vec::with_capacity(handles.len() + 1);
            if let Some((ni, node, runs)) = first {
                outcomes.push((ni, read_node(node, step, reads, row_bytes, runs, files)));
            }
            for (ni, name, rows, h) in handles {
                let out = h.join().unwrap_or_else(|_| panicked(&name, rows));
                outcomes.push((ni, out));
            }
            outcomes
        });

        let mut failed = Vec::new();
        for (ni, out) in outcomes {
            stats.batches += out.batches;
            stats.staged_rows += out.staged;
            match out.result {
                Ok(st) => self.nodes[ni].bytes += st.bytes,
                Err(TransportError::Unsupported { what, .. }) if device => {
                    return Err(LoaderError::DeviceDestination {
                        step,
                        node: self.nodes[ni].spec.name.clone(),
                        what,
                    })
                }
                Err(e) if e.is_node_failure() => {
                    let node = &mut self.nodes[ni];
                    tracing::warn!(node = %node.spec.name, step, error = %e, "node failed; marking it dead");
                    node.last_error = Some(e.to_string());
                    node.set_transport(None);
                    schedule_retry(node, &self.policy);
                    failed.extend(out.rows);
                }
                Err(source) => {
                    return Err(LoaderError::Read {
                        step,
                        node: self.nodes[ni].spec.name.clone(),
                        source,
                    })
                }
            }
        }
        failed.sort_unstable();
        Ok(failed)
    }
}

/// Where a step lands.
enum Dest<'a> {
    /// Host memory, row `k` at byte `k * row_bytes`.
    Host(&'a mut [u8]),
    /// Registered device memory, row `k` at `addr + k * row_bytes`.
    Device(DeviceRegion),
}

/// One node's share of a round's destination.
enum NodeRuns<'d> {
    /// Runs of rows (first row, slice of whole rows) of a host destination.
    Host(Vec<(usize, &'d mut [u8])>),
    /// Rows, each read to `row * row_bytes` of the device region.
    Device(Vec<usize>, DeviceRegion),
}

impl NodeRuns<'_> {
    fn is_empty(&self) -> bool {
        match self {
            NodeRuns::Host(runs) => runs.is_empty(),
            NodeRuns::Device(rows, _) => rows.is_empty(),
        }
    }

    /// The rows, in order.
    fn rows(&self, row_bytes: usize) -> Vec<usize> {
        match self {
            NodeRuns::Host(runs) => run_rows(runs, row_bytes),
            NodeRuns::Device(rows, _) => rows.clone(),
        }
    }
}

/// One node's share of a round: its index, its state, and its rows.
type NodeWork<'n, 'd> = (usize, &'n mut Node, NodeRuns<'d>);

/// What one node's thread did in one round.
struct NodeOutcome {
    result: Result<BatchStats, TransportError>,
    /// Every row this node was given (re-assigned when it failed).
    rows: Vec<usize>,
    batches: u64,
    staged: u64,
}

/// Reads one node's runs: straight into the run when there is a single run,
/// else with one batch into the node's staging buffer, then row copies.
fn read_node(
    node: &mut Node,
    step: u64,
    reads: &[SeqRead],
    row_bytes: usize,
    runs: NodeRuns<'_>,
    files: &[String],
) -> NodeOutcome {
    let rows = runs.rows(row_bytes);
    let mut out = NodeOutcome {
        result: Ok(BatchStats::default()),
        rows,
        batches: 0,
        staged: 0,
    };
    let name = node.spec.name.clone();
    let Some(transport) = node.transport.as_mut() else {
        out.result = Err(TransportError::Protocol {
            node: name,
            what: "not connected".into(),
        });
        return out;
    };
    let mut requests = Vec::with_capacity(out.rows.len());
    let (mut runs, device) = match runs {
        NodeRuns::Host(runs) => (runs, None),
        NodeRuns::Device(_, region) => (Vec::new(), Some(region)),
    };
    let single = runs.len() == 1;
    for (i, &row) in out.rows.iter().enumerate() {
        let r = &reads[row];
        let fi = r.file as usize;
        let Some(region) = node.regions[fi] else {
            out.result = Err(TransportError::Protocol {
                node: name,
                what: format!("step {step}: no region for {}", files[fi]),
            });
            return out;
        };
        let dst_row = if device.is_some() {
            row
        } else if single {
            row - out.rows[0]
        } else {
            i
        };
        requests.push(ReadRequest {
            region,
            offset: r.offset,
            len: r.len,
            dst_offset: (dst_row * row_bytes) as u64,
        });
    }
    out.batches = 1;
    if let Some(region) = device {
        out.result = if node.device.iter().any(|r| r.contains(&region)) {
            transport.read_batch_device(&requests, &region)
        } else {
            Err(TransportError::Unsupported {
                node: name,
                backend: transport.backend(),
                what: format!("{region} is not registered with this node's transport"),
            })
        };
        return out;
    }
    if single {
        let (_, dst) = &mut runs[0];
        out.result = transport.read_batch(&requests, dst);
        return out;
    }
    let need = out.rows.len() * row_bytes;
    if node.staging.len() < need {
        // Unregister before the old memory is freed, register the new memory.
        if node.staging_registered {
            transport.unregister_buffer(node.staging.as_ptr() as usize, node.staging.len());
            node.staging_registered = false;
        }
        // Grow geometrically (bounded by a whole step) so re-registrations stay rare.
        let len = need
            .max(2 * node.staging.len())
            .min(reads.len() * row_bytes);
        node.staging = Vec::new();
        node.staging = vec![0; len];
    }
    if !node.staging_registered {
        match transport.register_buffer(&mut node.staging) {
            Ok(()) => node.staging_registered = true,
            Err(e) => {
                tracing::warn!(node = %name, len = node.staging.len(), error = %e, "cannot register the staging buffer; reads into it register per batch")
            }
        }
    }
    out.staged = out.rows.len() as u64;
    out.result = transport.read_batch(&requests, &mut node.staging[..need]);
    if out.result.is_ok() {
        let mut src = node.staging.chunks_exact(row_bytes.max(1));
        for (_, run) in &mut runs {
            for dst_row in run.chunks_exact_mut(row_bytes.max(1)) {
                if let Some(s) = src.next() {
                    dst_row.copy_from_slice(s);
                }
            }
        }
    }
    out
}

/// The rows covered by `runs` (first row, slice of whole rows), in order.
fn run_rows(runs: &[(usize, &mut [u8])], row_bytes: usize) -> Vec<usize> {
    runs.iter()
        .flat_map(|(first, s)| *first..*first + s.len() / row_bytes.max(1))
        .collect()
}

/// Connects to a node, retrying with backoff up to `policy.start_attempts` times.
fn connect_with_retry(
    spec: &NodeSpec,
    policy: &RetryPolicy,
) -> Result<Box<dyn Transport>, LoaderError> {
    let attempts = policy.start_attempts.max(1);
    let mut backoff = policy.backoff_initial;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match (spec.connect)() {
            Ok(t) => return Ok(t),
            Err(e) if attempt >= attempts || !e.is_node_failure() => {
                return Err(LoaderError::Connect {
                    node: spec.name.clone(),
                    attempts: attempt,
                    source: e,
                })
            }
            Err(e) => {
                tracing::debug!(node = %spec.name, attempt, error = %e, "connect failed; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(policy.backoff_max);
            }
        }
    }
}

/// Looks up each file the node should hold in its region table.
fn map_regions(
    spec: &NodeSpec,
    t: &dyn Transport,
    index: &HashMap<&str, usize>,
    out: &mut [Option<RegionId>],
) -> Result<(), LoaderError> {
    let by_name: HashMap<&str, RegionId> = t
        .regions()
        .iter()
        .map(|r| (r.name.as_str(), r.id))
        .collect();
    out.iter_mut().for_each(|r| *r = None);
    match &spec.files {
        Some(list) => {
            for name in list {
                let Some(&fi) = index.get(name.as_str()) else {
                    continue; // held but never read by this plan
                };
                let Some(&id) = by_name.get(name.as_str()) else {
                    return Err(LoaderError::MissingRegion {
                        node: spec.name.clone(),
                        file: name.clone(),
                    });
                };
                out[fi] = Some(id);
            }
        }
        None => {
            for (name, id) in by_name {
                if let Some(&fi) = index.get(name) {
                    out[fi] = Some(id);
                }
            }
        }
    }
    Ok(())
}

/// Schedules the next reconnect of a dead node, or gives it up.
fn schedule_retry(node: &mut Node, policy: &RetryPolicy) {
    node.failures += 1;
    if node.failures > policy.max_reconnects {
        tracing::warn!(node = %node.spec.name, failures = node.failures, "giving up on node");
        node.given_up = true;
        return;
    }
    let shift = node.failures.saturating_sub(1).min(16);
    let backoff = policy
        .backoff_initial
        .saturating_mul(1u32 << shift)
        .min(policy.backoff_max);
    node.retry_at = Instant::now() + backoff;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockSource;
    use crate::testutil::{expected, files, flaky_node, RandomBlocks, Switch};
    use std::sync::atomic::Ordering;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            start_attempts: 2,
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            max_reconnects: 100,
            failover_timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn partial_placement_reads_every_row_in_place() {
        let f = files(7, 20, 256, 1);
        // File i on node i % 2; file 6 on both.
        let on = |n: usize| -> Vec<String> {
            f.names
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == n || *i == 6)
                .map(|(_, s)| s.clone())
                .collect()
        };
        let (a, _) = flaky_node(f.dir.path(), "a", on(0));
        let (b, _) = flaky_node(f.dir.path(), "b", on(1));
        let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
        let src = RandomBlocks::new(&f, 32, 10);
        let mut staged = 0;
        for step in 0..10 {
            let mut reads = Vec::new();
            src.block(step, 0, 1, &mut reads).unwrap();
            let mut dst = vec![0u8; 32 * 256];
            let st = r.read_step(step, &reads, 256, &mut dst).unwrap();
            assert_eq!(dst, expected(&f, &reads), "step {step}");
            assert_eq!(st.rows, 32);
            assert_eq!(st.bytes, 32 * 256);
            assert_eq!(st.failed_over, 0);
            staged += st.staged_rows;
        }
        assert!(staged > 0, "scattered rows should go through staging");
        let per = r.bytes_per_node();
        assert_eq!(per.iter().sum::<u64>(), 10 * 32 * 256);
        assert!(per.iter().all(|&b| b > 0), "{per:?}");
    }

    #[test]
    fn full_replication_gives_one_run_per_node() {
        let f = files(3, 10, 64, 2);
        let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
        let (b, sb) = flaky_node(f.dir.path(), "b", f.names.clone());
        let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
        let src = RandomBlocks::new(&f, 16, 4);
        let mut reads = Vec::new();
        src.block(0, 0, 1, &mut reads).unwrap();
        let mut dst = vec![0u8; 16 * 64];
        let st = r.read_step(0, &reads, 64, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads));
        assert_eq!(st.batches, 2);
        assert_eq!(st.staged_rows, 0);
        assert_eq!(sa.batches.load(Ordering::SeqCst), 1);
        assert_eq!(sb.batches.load(Ordering::SeqCst), 1);
        assert_eq!(r.bytes_per_node(), vec![8 * 64, 8 * 64]);
    }

    #[test]
    fn node_failure_moves_rows_to_replica_and_node_comes_back() {
        let f = files(4, 16, 128, 3);
        let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
        let (b, _sb) = flaky_node(f.dir.path(), "b", f.names.clone());
        let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
        let src = RandomBlocks::new(&f, 8, 100);
        let mut dst = vec![0u8; 8 * 128];
        let mut reads = Vec::new();
        src.block(0, 0, 1, &mut reads).unwrap();
        r.read_step(0, &reads, 128, &mut dst).unwrap();
        sa.down.store(true, Ordering::SeqCst);
        reads.clear();
        src.block(1, 0, 1, &mut reads).unwrap();
        dst.fill(0);
        let st = r.read_step(1, &reads, 128, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads));
        assert_eq!(st.failed_over, 4, "node a's half moved to b");
        assert_eq!(r.live_nodes(), vec![false, true]);
        // While a is down, b serves everything.
        for step in 2..5 {
            reads.clear();
            src.block(step, 0, 1, &mut reads).unwrap();
            let st = r.read_step(step, &reads, 128, &mut dst).unwrap();
            assert_eq!(dst, expected(&f, &reads));
            assert_eq!(st.failed_over, 0);
        }
        // a comes back: reconnected after its backoff, serves again.
        sa.down.store(false, Ordering::SeqCst);
        let served = sa.batches.load(Ordering::SeqCst);
        let t = Instant::now();
        let mut step = 5;
        while r.live_nodes() != vec![true, true] {
            assert!(t.elapsed() < Duration::from_secs(5), "a never reconnected");
            std::thread::sleep(Duration::from_millis(5));
            reads.clear();
            src.block(step, 0, 1, &mut reads).unwrap();
            r.read_step(step, &reads, 128, &mut dst).unwrap();
            assert_eq!(dst, expected(&f, &reads));
            step += 1;
        }
        reads.clear();
        src.block(step, 0, 1, &mut reads).unwrap();
        r.read_step(step, &reads, 128, &mut dst).unwrap();
        assert!(sa.batches.load(Ordering::SeqCst) > served);
    }

    #[test]
    fn registered_destination_is_registered_again_after_reconnect() {
        let f = files(4, 16, 128, 9);
        let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
        let (b, sb) = flaky_node(f.dir.path(), "b", f.names.clone());
        let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
        let src = RandomBlocks::new(&f, 8, 100);
        let mut dst = vec![0u8; 8 * 128];
        r.register_buffer(&mut dst);
        let regs = |s: &Switch| s.registers.load(Ordering::SeqCst);
        assert_eq!((regs(&sa), regs(&sb)), (1, 1));
        let mut reads = Vec::new();
        let mut step = 0;
        let mut read = |r: &mut ClusterReader, dst: &mut Vec<u8>| {
            reads.clear();
            src.block(step, 0, 1, &mut reads).unwrap();
            r.read_step(step, &reads, 128, dst).unwrap();
            assert_eq!(*dst, expected(&f, &reads));
            step += 1;
        };
        read(&mut r, &mut dst);
        assert_eq!(sa.misses.load(Ordering::SeqCst), 0);
        sa.down.store(true, Ordering::SeqCst);
        read(&mut r, &mut dst);
        sa.down.store(false, Ordering::SeqCst);
        let t = Instant::now();
        while r.live_nodes() != vec![true, true] {
            assert!(t.elapsed() < Duration::from_secs(5), "a never reconnected");
            std::thread::sleep(Duration::from_millis(5));
            read(&mut r, &mut dst);
        }
        // The reconnected transport registers the buffer the next time it is the destination.
        let misses = sa.misses.load(Ordering::SeqCst);
        read(&mut r, &mut dst);
        read(&mut r, &mut dst);
        assert_eq!(regs(&sa), 2, "registered once per transport");
        assert_eq!(sa.misses.load(Ordering::SeqCst), misses);
        assert_eq!(sa.overlaps.load(Ordering::SeqCst), 0);
        // Withdrawn: every transport drops it, later batches register per batch.
        r.unregister_buffer(dst.as_ptr() as usize, dst.len());
        assert_eq!(sb.unregisters.load(Ordering::SeqCst), 1);
        let before = sb.misses.load(Ordering::SeqCst);
        read(&mut r, &mut dst);
        assert!(sb.misses.load(Ordering::SeqCst) > before);
    }

    #[test]
    fn no_replica_fails_in_bounded_time_naming_step_file_and_node() {
        let f = files(2, 8, 64, 4);
        let (a, sa) = flaky_node(f.dir.path(), "node-a", vec![f.names[0].clone()]);
        let (b, _) = flaky_node(f.dir.path(), "node-b", vec![f.names[1].clone()]);
        let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
        let src = RandomBlocks::new(&f, 8, 10);
        let mut reads = Vec::new();
        src.block(3, 0, 1, &mut reads).unwrap();
        assert!(reads.iter().any(|x| x.file == 0));
        sa.down.store(true, Ordering::SeqCst);
        let mut dst = vec![0u8; 8 * 64];
        let t = Instant::now();
        let e = r.read_step(3, &reads, 64, &mut dst).unwrap_err();
        let el = t.elapsed();
        assert!(
            el >= Duration::from_millis(250) && el < Duration::from_secs(3),
            "{el:?}"
        );
        let msg = e.to_string();
        assert!(matches!(e, LoaderError::NoReplica { step: 3, .. }), "{msg}");
        assert!(msg.contains("node-a") && msg.contains(&f.names[0]), "{msg}");
        // Reconnects were attempted with backoff, not in a tight loop.
        let c = sa.connects.load(Ordering::SeqCst);
        assert!((2..=40).contains(&c), "{c} connects");
    }

    #[test]
    fn unreachable_at_start_is_a_clear_error_after_retries() {
        let f = files(1, 4, 64, 5);
        let (a, sa) = flaky_node(f.dir.path(), "10.0.0.1:1", f.names.clone());
        sa.down.store(true, Ordering::SeqCst);
        let mut p = quick();
        p.start_attempts = 3;
        let e = ClusterReader::connect(f.names.clone(), vec![a], p).unwrap_err();
        assert!(matches!(e, LoaderError::Connect { attempts: 3, .. }), "{e}");
        assert!(e.to_string().contains("10.0.0.1:1"), "{e}");
        assert_eq!(sa.connects.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn unreachable_node_without_a_file_list_reports_its_connect_error() {
        // A single `--node` has no file list: its holdings are only known
        // once connected, so "no node holds file" would hide the real cause.
        let f = files(1, 4, 64, 5);
        let (mut a, sa) = flaky_node(f.dir.path(), "10.0.0.1:1", f.names.clone());
        a.files = None;
        sa.down.store(true, Ordering::SeqCst);
        let mut p = quick();
        p.start_attempts = 2;
        let e = ClusterReader::connect(f.names.clone(), vec![a], p).unwrap_err();
        assert!(matches!(e, LoaderError::Connect { attempts: 2, .. }), "{e}");
        assert!(e.to_string().contains("10.0.0.1:1"), "{e}");
    }

    #[test]
    fn one_node_down_at_start_with_a_replica_is_tolerated() {
        let f = files(2, 4, 64, 6);
        let (a, sa) = flaky_node(f.dir.path(), "a", f.names.clone());
        let (b, _) = flaky_node(f.dir.path(), "b", f.names.clone());
        sa.down.store(true, Ordering::SeqCst);
        let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
        assert_eq!(r.live_nodes(), vec![false, true]);
        let src = RandomBlocks::new(&f, 4, 1);
        let mut reads = Vec::new();
        src.block(0, 0, 1, &mut reads).unwrap();
        let mut dst = vec![0u8; 4 * 64];
        r.read_step(0, &reads, 64, &mut dst).unwrap();
        assert_eq!(dst, expected(&f, &reads));
    }

    #[test]
    fn out_of_bounds_is_not_failed_over() {
        let f = files(1, 4, 64, 7);
        let (a, _) = flaky_node(f.dir.path(), "a", f.names.clone());
        let (b, _) = flaky_node(f.dir.path(), "b", f.names.clone());
        let mut r = ClusterReader::connect(f.names.clone(), vec![a, b], quick()).unwrap();
        let bad = [SeqRead {
            file: 0,
            offset: 4 * 64 - 10,
            len: 64,
            source: 0,
            position: 0,
        }];
        let mut dst = vec![0u8; 64];
        let e = r.read_step(9, &bad, 64, &mut dst).unwrap_err();
        assert!(matches!(e, LoaderError::Read { step: 9, .. }), "{e}");
        assert_eq!(r.live_nodes(), vec![true, true]);
        let too_long = [SeqRead { len: 65, ..bad[0] }];
        assert!(matches!(
            r.read_step(9, &too_long, 64, &mut dst),
            Err(LoaderError::BadRow {
                step: 9,
                row: 0,
                ..
            })
        ));
    }

    #[test]
    fn missing_region_and_unplaced_files_are_refused() {
        let f = files(2, 4, 64, 8);
        let (mut a, _) = flaky_node(f.dir.path(), "a", vec![f.names[0].clone()]);
        a.files = Some(f.names.clone()); // claims a file its table lacks
        let e = ClusterReader::connect(f.names.clone(), vec![a], quick()).unwrap_err();
        assert!(matches!(e, LoaderError::MissingRegion { .. }), "{e}");
        let (a, _) = flaky_node(f.dir.path(), "a", vec![f.names[0].clone()]);
        let e = ClusterReader::connect(f.names.clone(), vec![a], quick()).unwrap_err();
        assert!(matches!(e, LoaderError::Unplaced { .. }), "{e}");
        assert!(e.to_string().contains(&f.names[1]));
    }
}
