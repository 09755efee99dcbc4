//! One read round: each pending row read from its assigned node, all nodes
//! in parallel, a node's scattered rows through its staging buffer.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use seqfeed_transport::{BatchStats, DeviceRegion, ReadRequest, TransportError};

use super::crc::{self, Corrupt, FileCrc};
use super::revive::schedule_retry;
use super::{name_timeout, ClusterReader, Node, StepReadStats};
use crate::block::SeqRead;
use crate::error::LoaderError;

impl ClusterReader {
    /// Reads every pending row from its owner, all nodes in parallel.
    /// Returns the rows whose node failed (to be re-assigned).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_round(
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
        let ctx = NodeCtx {
            step,
            reads,
            row_bytes,
            files,
            crcs: &self.crcs,
            verify: self.verify_crc && !device,
        };
        let ctx = &ctx;
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
            corrupt: Vec::new(),
            elapsed: None,
        };
        let others = work.len().saturating_sub(1);
        let pool = if others == 0 {
            None
        } else {
            Some(round_workers(&mut self.workers, others)?)
        };
        let outcomes: Vec<(usize, NodeOutcome)> = {
            let mut first = if work.is_empty() {
                None
            } else {
                Some(work.remove(0))
            };
            // One result slot per other node, filled by the pool's threads.
            let slots: Vec<std::sync::Mutex<Option<NodeOutcome>>> =
                work.iter().map(|_| std::sync::Mutex::new(None)).collect();
            let meta: Vec<(usize, String, Vec<usize>)> = work
                .iter()
                .map(|(ni, node, runs)| (*ni, node.spec.name.clone(), runs.rows(row_bytes)))
                .collect();
            let mut outcomes = Vec::with_capacity(work.len() + 1);
            let mut run_first = |outcomes: &mut Vec<(usize, NodeOutcome)>| {
                if let Some((ni, node, runs)) = first.take() {
                    outcomes.push((ni, read_node(node, ctx, runs)));
                }
            };
            match pool {
                Some(pool) => pool.in_place_scope(|s| {
                    for ((_, node, runs), slot) in work.into_iter().zip(&slots) {
                        s.spawn(move |_| {
                            // A panic becomes this node's error, as a joined
                            // thread's did, instead of unwinding the round.
                            let out =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    read_node(node, ctx, runs)
                                }));
                            if let (Ok(out), Ok(mut slot)) = (out, slot.lock()) {
                                *slot = Some(out);
                            }
                        });
                    }
                    run_first(&mut outcomes);
                }),
                None => run_first(&mut outcomes),
            }
            for ((ni, name, rows), slot) in meta.into_iter().zip(slots) {
                let out = slot
                    .into_inner()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| panicked(&name, rows));
                outcomes.push((ni, out));
            }
            outcomes
        };

        let mut failed = Vec::new();
        for (ni, out) in outcomes {
            stats.batches += out.batches;
            stats.staged_rows += out.staged;
            let c = &mut self.nodes[ni].counters;
            c.batches += out.batches;
            if let Some(d) = out.elapsed {
                c.latency.record(d);
            }
            match &out.result {
                Ok(_) if out.corrupt.is_empty() => c.reads += out.rows.len() as u64,
                Ok(_) => c.failed_over += out.rows.len() as u64,
                Err(e) => {
                    c.errors.count(e);
                    if e.is_node_failure() {
                        c.failed_over += out.rows.len() as u64;
                    }
                }
            }
            match out.result {
                Ok(st) if !out.corrupt.is_empty() => {
                    // The node's copy of a file is damaged: that file is read
                    // from replicas from now on, and every row of this node's
                    // batch again (a few good rows re-read, no bookkeeping).
                    self.nodes[ni].bytes += st.bytes;
                    stats.crc_mismatches +=
                        out.corrupt.iter().filter(|c| c.sequence.is_some()).count() as u64;
                    self.mark_corrupt(ni, step, &out.corrupt);
                    failed.extend(out.rows);
                }
                Ok(st) => self.nodes[ni].bytes += st.bytes,
                Err(TransportError::Unsupported { what, .. }) if device => {
                    return Err(LoaderError::DeviceDestination {
                        step,
                        node: self.nodes[ni].spec.name.clone(),
                        what,
                    })
                }
                Err(e) if e.is_node_failure() => {
                    let e = name_timeout(e);
                    let what = reading(step, reads, &out.rows, &self.files);
                    let node = &mut self.nodes[ni];
                    // The one line that names the suspect node: later reads go
                    // to replicas, and reconnect attempts run in the background.
                    tracing::warn!(node = %node.spec.name, step, error = %e, "node failed {what}; suspect until it reconnects: its reads move to replicas and it is probed in the background");
                    node.last_error = Some(e.to_string());
                    node.down_because = Some((what, e.to_string()));
                    node.down_since = Some(Instant::now());
                    node.failures = 0;
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
pub(super) enum Dest<'a> {
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

/// The reader's round workers, started (or grown) to `n` threads: the
/// nodes of a round beyond the first are read on them.
fn round_workers(
    workers: &mut Option<rayon_core::ThreadPool>,
    n: usize,
) -> Result<&rayon_core::ThreadPool, LoaderError> {
    if workers
        .as_ref()
        .is_some_and(|p| p.current_num_threads() < n)
    {
        *workers = None;
    }
    if workers.is_none() {
        let pool = rayon_core::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("sf-round-{i}"))
            .build()
            .map_err(|e| LoaderError::Open {
                what: format!("starting {n} reader threads"),
                source: Box::new(std::io::Error::other(e.to_string())),
            })?;
        *workers = Some(pool);
    }
    workers.as_ref().ok_or_else(|| LoaderError::Open {
        what: "reader threads".into(),
        source: Box::new(std::io::Error::other("not started")),
    })
}

/// What one node's thread did in one round.
struct NodeOutcome {
    result: Result<BatchStats, TransportError>,
    /// Every row this node was given (re-assigned when it failed).
    rows: Vec<usize>,
    batches: u64,
    staged: u64,
    /// Files whose copy on this node failed the CRC check (or whose table is
    /// malformed); the batch's rows are then read again elsewhere.
    corrupt: Vec<Corrupt>,
    /// How long the batch took, when one was issued.
    elapsed: Option<Duration>,
}

/// What a round's node threads share.
pub(super) struct NodeCtx<'a> {
    pub(super) step: u64,
    pub(super) reads: &'a [SeqRead],
    pub(super) row_bytes: usize,
    pub(super) files: &'a [String],
    /// Each file's CRC table, fetched once (from the first node read).
    pub(super) crcs: &'a [OnceLock<FileCrc>],
    /// Whether reads are checked against the tables.
    pub(super) verify: bool,
}

/// Reads one node's runs: straight into the run when there is a single run,
/// else with one batch into the node's staging buffer, then row copies.
fn read_node(node: &mut Node, ctx: &NodeCtx<'_>, runs: NodeRuns<'_>) -> NodeOutcome {
    let NodeCtx {
        step,
        reads,
        row_bytes,
        files,
        ..
    } = *ctx;
    let rows = runs.rows(row_bytes);
    let mut out = NodeOutcome {
        result: Ok(BatchStats::default()),
        rows,
        batches: 0,
        staged: 0,
        corrupt: Vec::new(),
        elapsed: None,
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
    if ctx.verify {
        // The first read of a file fetches its table (header and table, two reads).
        match crc::ensure_tables(transport.as_mut(), &node.regions, ctx, &out.rows) {
            Ok(bad) if bad.is_empty() => {}
            Ok(bad) => {
                out.corrupt = bad;
                return out;
            }
            Err(e) => {
                out.result = Err(e);
                return out;
            }
        }
    }
    out.batches = 1;
    let t0 = Instant::now();
    if let Some(region) = device {
        out.result = if node.device.iter().any(|r| r.contains(&region)) {
            let res = transport.read_batch_device(&requests, &region);
            out.elapsed = Some(t0.elapsed());
            res
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
        out.elapsed = Some(t0.elapsed());
        if ctx.verify && out.result.is_ok() {
            out.corrupt = crc::check_rows(ctx, &out.rows, dst);
        }
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
    let t0 = Instant::now();
    out.result = transport.read_batch(&requests, &mut node.staging[..need]);
    out.elapsed = Some(t0.elapsed());
    if ctx.verify && out.result.is_ok() {
        out.corrupt = crc::check_rows(ctx, &out.rows, &node.staging[..need]);
    }
    if out.result.is_ok() && out.corrupt.is_empty() {
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

/// What a node was reading when it failed, for the log and errors:
/// `reading step S: N rows of FILE[, FILE, ...]` (at most three files named).
fn reading(step: u64, reads: &[SeqRead], rows: &[usize], files: &[String]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for &row in rows {
        let Some(name) = reads.get(row).and_then(|r| files.get(r.file as usize)) else {
            continue;
        };
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let more = names.len().saturating_sub(3);
    names.truncate(3);
    let mut what = format!(
        "reading step {step}: {} rows of {}",
        rows.len(),
        names.join(", ")
    );
    if more > 0 {
        what.push_str(&format!(" and {more} more files"));
    }
    what
}
