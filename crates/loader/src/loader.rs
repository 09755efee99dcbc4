//! The trainer-side loader: a ring of step buffers filled ahead by a
//! background reader thread.
//!
//! [`Loader::new`] allocates `prefetch + 1` step buffers of the rank's
//! block (`global_batch / dp_size` rows) and starts a reader thread that,
//! for each step from the start step on, takes a free buffer, asks the
//! block source for the rank's block and reads it with the
//! [`ClusterReader`]. While the consumer works on step `s`, steps
//! `s+1 ..= s+prefetch` are being read. [`Loader::next`] hands out the
//! step's micro-batches ([`Batch`]) in order; the step's buffer goes back
//! to the ring once every micro-batch of it, and every clone, is dropped
//! (see [`crate::batch`] for the release rules). The time `next` spends
//! waiting is the stall time.
//!
//! The ring's buffers are registered with every node transport when they are
//! allocated ([`ClusterReader::register_buffer`]), so RDMA transports never
//! register per step. They are freed only after the reader (and with it every
//! transport and its registrations) is gone: the reader thread drops the
//! cluster reader before the ring, and buffers the consumer still holds are
//! freed after that.
//!
//! GPUDirect: when the allocator's buffers offer device memory
//! ([`HostBuffer::device_regions`], e.g. seqfeed-cuda's dmabuf / peer-memory
//! paths), the loader registers it with every node ([`ClusterReader::register_device`]);
//! each step is then read straight into device memory and the buffer's
//! ready event recorded after the reads ([`HostBuffer::filled_device`], no
//! host-to-device copy). A refusal is logged with its reason and the next
//! region (or the host bounce path) is used; a step whose device read is
//! refused later (a node reconnected without it) is read through the host.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::alloc::{BufferAllocator, HeapAllocator, HostBuffer};
use crate::batch::{Batch, StepSlot};
use crate::block::{BlockSource, Dtype, SeqRead};
use crate::cluster_reader::{ClusterReader, NodeStats, StepReadStats};
use crate::config::LoaderConfig;
use crate::docs::{self, DocBoundaries, DocBounds};
use crate::error::LoaderError;

/// How often a waiting `next` checks whether the consumer holds the ring.
const RING_CHECK: Duration = Duration::from_millis(50);

/// Running totals of a loader.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoaderStats {
    /// Steps received from the reader.
    pub steps: u64,
    /// Micro-batches handed out.
    pub micro_batches: u64,
    /// Rows (sequences) handed out.
    pub sequences: u64,
    /// Bytes handed out.
    pub bytes: u64,
    /// Total time `next` waited for a batch.
    pub stall: Duration,
    /// Time `next` waited for the first batch (the warm-up).
    pub first_stall: Duration,
    /// Time the reader thread spent reading (sum over steps).
    pub read_time: Duration,
    /// Rows re-read from a replica after a node failure.
    pub failed_over: u64,
    /// Rows that failed their file's CRC32C check (each re-read from a replica).
    pub crc_mismatches: u64,
    /// Steps the NICs wrote straight into device memory (GPUDirect).
    pub direct_steps: u64,
}

impl LoaderStats {
    /// Stall time after the first batch (the steady-state stall).
    pub fn stall_after_warmup(&self) -> Duration {
        self.stall.saturating_sub(self.first_stall)
    }
}

/// What [`Loader::poll_next`] found.
#[derive(Debug)]
pub enum Next {
    /// The next micro-batch.
    Batch(Batch),
    /// The run failed; the loader returns nothing after this.
    Error(LoaderError),
    /// Past the last step (or after an error).
    End,
    /// Nothing arrived within the wait; ask again.
    Pending,
}

/// A filled step buffer on its way from the reader thread to the consumer.
struct Filled {
    step: u64,
    buf: Box<dyn HostBuffer>,
    rows: Vec<SeqRead>,
    read_time: Duration,
    stats: StepReadStats,
    direct: bool,
    /// Each micro-batch's document boundaries, when configured.
    docs: Option<Vec<DocBounds>>,
}

/// Hands out the micro-batches of each step; see the module docs.
pub struct Loader {
    config: LoaderConfig,
    filled: Receiver<Result<Filled, LoaderError>>,
    ret: Sender<Box<dyn HostBuffer>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    /// The step whose micro-batches are being handed out, and the next one.
    current: Option<(Arc<StepSlot>, usize)>,
    next_step: u64,
    next_micro: usize,
    end_step: u64,
    micro_rows: usize,
    row_bytes: usize,
    seq_len: usize,
    dtype: Dtype,
    sources: Arc<[String]>,
    files: Arc<[String]>,
    stats: LoaderStats,
    waiting_since: Option<Instant>,
    /// Per-node counters, as of the reader's last step.
    node_stats: Arc<Mutex<Vec<NodeStats>>>,
    /// Slots the consumer holds, and the ring size.
    held: Arc<AtomicUsize>,
    ring: usize,
    done: bool,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("config", &self.config)
            .field("next_step", &self.next_step)
            .field("next_micro", &self.next_micro)
            .field("end_step", &self.end_step)
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// Starts a loader for data-parallel rank `config.rank` of
    /// `config.world` over `source`, reading with `reader` into heap
    /// buffers.
    pub fn new(
        config: LoaderConfig,
        source: Arc<dyn BlockSource>,
        reader: ClusterReader,
    ) -> Result<Self, LoaderError> {
        Self::with_allocator(config, source, reader, Arc::new(HeapAllocator))
    }

    /// Like [`new`](Self::new) with step buffers from `alloc`.
    pub fn with_allocator(
        config: LoaderConfig,
        source: Arc<dyn BlockSource>,
        mut reader: ClusterReader,
        alloc: Arc<dyn BufferAllocator>,
    ) -> Result<Self, LoaderError> {
        if config.world == 0 || config.rank >= config.world {
            return Err(LoaderError::Config {
                what: format!(
                    "data-parallel rank {} is out of range for data-parallel size {}",
                    config.rank, config.world
                ),
            });
        }
        let block = source
            .micro_batch(config.world)
            .map_err(|what| LoaderError::Config { what })?;
        let micro_rows = config.micro_batch_rows(block)?;
        let steps = source.steps();
        let end_step = config.end_step.unwrap_or(steps).min(steps);
        if config.start_step > end_step {
            return Err(LoaderError::Config {
                what: format!(
                    "start step {} is past the end step {end_step} (the plan has {steps} steps)",
                    config.start_step
                ),
            });
        }
        if reader.files() != source.files() {
            return Err(LoaderError::Config {
                what: "the cluster reader's file table differs from the block source's".into(),
            });
        }
        let row_bytes = source.seq_bytes();
        let (seq_len, dtype) = (source.seq_len(), source.dtype());
        if let Some(d) = config.doc_boundaries {
            DocBounds::capacity_tokens(micro_rows, d.row_tokens)
                .and_then(|_| {
                    if d.row_tokens <= seq_len {
                        Ok(())
                    } else {
                        Err(format!(
                            "document boundaries over {} tokens of rows of {seq_len}",
                            d.row_tokens
                        ))
                    }
                })
                .map_err(|what| LoaderError::Config { what })?;
        }
        let len = block
            .checked_mul(row_bytes)
            .ok_or_else(|| LoaderError::Config {
                what: format!("{block} rows of {row_bytes} bytes overflow"),
            })?;
        let ring = config.prefetch + 1;
        let mut bufs = Vec::with_capacity(ring);
        for _ in 0..ring {
            bufs.push(alloc.allocate(len).map_err(|source| LoaderError::Alloc {
                len,
                allocator: alloc.name().to_owned(),
                source,
            })?);
        }
        // Nothing fails after this point but the thread spawn, whose closure
        // (owning the reader and the ring) then drops the reader first.
        reader.set_verify_crc(config.verify_crc);
        for buf in &mut bufs {
            reader.register_buffer(buf.bytes_mut());
        }
        register_device_memory(&mut reader, &bufs);
        let (ret_tx, ret_rx) = mpsc::channel::<Box<dyn HostBuffer>>();
        for buf in bufs {
            let _ = ret_tx.send(buf);
        }
        let (filled_tx, filled_rx) = mpsc::sync_channel(ring);
        let stop = Arc::new(AtomicBool::new(false));
        let sources: Arc<[String]> = source.sources().to_vec().into();
        let files: Arc<[String]> = source.files().to_vec().into();
        let thread_stop = stop.clone();
        let node_stats = Arc::new(Mutex::new(reader.node_stats()));
        let thread_node_stats = node_stats.clone();
        let (rank, world, start) = (config.rank, config.world, config.start_step);
        let doc_layout = config.doc_boundaries.map(|d| DocLayout {
            docs: d,
            micro_rows,
            seq_len,
            dtype,
        });
        let reader_thread = std::thread::Builder::new()
            .name(format!("seqfeed-reader-{rank}"))
            .spawn(move || {
                let mut reader = reader;
                let free = ret_rx;
                let held = reader_loop(ReaderArgs {
                    source,
                    reader: &mut reader,
                    rank,
                    world,
                    start,
                    end: end_step,
                    row_bytes,
                    free: &free,
                    filled: filled_tx,
                    stop: thread_stop,
                    node_stats: thread_node_stats,
                    docs: doc_layout,
                });
                // The transports (and their registrations of the ring) go
                // before any ring buffer can be freed.
                drop(reader);
                drop(held);
                drop(free);
            })
            .map_err(|e| LoaderError::Config {
                what: format!("cannot start the reader thread: {e}"),
            })?;
        tracing::debug!(
            dp_rank = rank,
            dp_size = world,
            block_rows = block,
            micro_batch = micro_rows,
            accumulation = config.accumulation,
            start_step = start,
            start_micro = config.start_micro,
            end_step,
            prefetch = config.prefetch,
            allocator = alloc.name(),
            "loader started"
        );
        Ok(Loader {
            dtype,
            next_micro: config.start_micro,
            config,
            filled: filled_rx,
            ret: ret_tx,
            stop,
            reader: Some(reader_thread),
            current: None,
            next_step: start,
            end_step,
            micro_rows,
            row_bytes,
            seq_len,
            sources,
            files,
            stats: LoaderStats::default(),
            waiting_since: None,
            node_stats,
            held: Arc::new(AtomicUsize::new(0)),
            ring,
            done: false,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The step of the next micro-batch `next` returns.
    pub fn next_step(&self) -> u64 {
        self.next_step
    }

    /// The next position `next` returns: `(step, micro-batch)`. A loader
    /// started at this position (`start_step`, `start_micro`) continues the
    /// run exactly (resume).
    pub fn position(&self) -> (u64, usize) {
        (self.next_step, self.next_micro)
    }

    /// Rows per micro-batch.
    pub fn micro_batch(&self) -> usize {
        self.micro_rows
    }

    /// One past the last step.
    pub fn end_step(&self) -> u64 {
        self.end_step
    }

    /// Totals so far.
    pub fn stats(&self) -> LoaderStats {
        self.stats
    }

    /// Each storage node's counters (bytes, reads, batches, errors by kind,
    /// fail-overs, reconnects, CRC mismatches, batch latency), in the node
    /// order of the cluster, as of the reader's last step (steps read ahead
    /// of the consumer included).
    pub fn node_stats(&self) -> Vec<NodeStats> {
        match self.node_stats.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The next micro-batch, `None` after the last step or after an error.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Batch, LoaderError>> {
        match self.poll_next(None) {
            Next::Batch(b) => Some(Ok(b)),
            Next::Error(e) => Some(Err(e)),
            Next::End | Next::Pending => None,
        }
    }

    /// Like [`next`](Self::next), waiting at most `wait` (`None`: as long
    /// as it takes) for the reader. [`Next::Pending`] means nothing arrived
    /// yet: a caller that must stay responsive (e.g. to Ctrl-C in Python)
    /// checks its signals and asks again.
    pub fn poll_next(&mut self, wait: Option<Duration>) -> Next {
        if self.done || self.next_step >= self.end_step {
            return Next::End;
        }
        if let Some((slot, micro)) = self.current.take() {
            if slot.step == self.next_step && micro == self.next_micro {
                return Next::Batch(self.hand_out(slot, micro));
            }
        }
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let got = loop {
            // Wait in slices so a consumer that holds the whole ring gets
            // an error instead of waiting forever.
            let slice = wait.map_or(RING_CHECK, |w| w.min(RING_CHECK));
            match self.filled.recv_timeout(slice) {
                Ok(m) => break Ok(m),
                Err(RecvTimeoutError::Disconnected) => break Err(()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let waited = since.elapsed();
            if self.held.load(Ordering::SeqCst) >= self.ring && waited >= self.config.ring_wait {
                self.done = true;
                self.waiting_since = None;
                return Next::Error(LoaderError::RingHeld {
                    step: self.next_step,
                    ring: self.ring,
                    waited,
                });
            }
            if wait.is_some_and(|w| waited >= w) {
                return Next::Pending;
            }
        };
        self.waiting_since = None;
        let stall = since.elapsed();
        let first = self.stats.steps == 0;
        self.stats.stall += stall;
        if first {
            self.stats.first_stall = stall;
        }
        let filled = match got {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                self.done = true;
                return Next::Error(e);
            }
            Err(()) => {
                self.done = true;
                return Next::Error(LoaderError::ReaderGone {
                    step: self.next_step,
                });
            }
        };
        debug_assert_eq!(filled.step, self.next_step);
        self.stats.steps += 1;
        self.stats.read_time += filled.read_time;
        self.stats.failed_over += filled.stats.failed_over;
        self.stats.crc_mismatches += filled.stats.crc_mismatches;
        self.stats.direct_steps += u64::from(filled.direct);
        self.held.fetch_add(1, Ordering::SeqCst);
        let slot = Arc::new(StepSlot {
            step: filled.step,
            buf: Some(filled.buf),
            consumers: Mutex::new(Vec::new()),
            ret: self.ret.clone(),
            held: self.held.clone(),
            rows: filled.rows,
            row_bytes: self.row_bytes,
            seq_len: self.seq_len,
            dtype: self.dtype,
            micro_rows: self.micro_rows,
            sources: self.sources.clone(),
            files: self.files.clone(),
            stall,
            read_time: filled.read_time,
            stats: filled.stats,
            direct: filled.direct,
            docs: filled.docs,
        });
        let micro = self.next_micro;
        Next::Batch(self.hand_out(slot, micro))
    }

    /// Hands out micro-batch `micro` of `slot` and advances the position;
    /// keeps the slot while micro-batches of its step remain.
    fn hand_out(&mut self, slot: Arc<StepSlot>, micro: usize) -> Batch {
        let batch = Batch::new(slot.clone(), micro);
        self.stats.micro_batches += 1;
        self.stats.sequences += self.micro_rows as u64;
        self.stats.bytes += (self.micro_rows * self.row_bytes) as u64;
        if micro + 1 < self.config.accumulation {
            self.next_micro = micro + 1;
            self.current = Some((slot, micro + 1));
        } else {
            self.next_micro = 0;
            self.next_step = slot.step + 1;
        }
        batch
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, LoaderError>;
    fn next(&mut self) -> Option<Self::Item> {
        Loader::next(self)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.current = None;
        // Unblock a reader waiting to hand over a batch. Filled buffers go
        // back to the ring rather than being freed here: they are still
        // registered with the reader's transports.
        let drain = |l: &mut Loader| {
            while let Ok(msg) = l.filled.try_recv() {
                if let Ok(f) = msg {
                    let _ = l.ret.send(f.buf);
                }
            }
        };
        drain(self);
        if let Some(h) = self.reader.take() {
            // Drain filled batches until the reader exits (it checks `stop`
            // between steps; a step's reads are bounded by the transports'
            // timeouts and the fail-over window).
            while !h.is_finished() {
                drain(self);
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = h.join();
        }
    }
}

struct ReaderArgs<'a> {
    source: Arc<dyn BlockSource>,
    reader: &'a mut ClusterReader,
    rank: usize,
    world: usize,
    start: u64,
    end: u64,
    row_bytes: usize,
    free: &'a Receiver<Box<dyn HostBuffer>>,
    filled: SyncSender<Result<Filled, LoaderError>>,
    stop: Arc<AtomicBool>,
    node_stats: Arc<Mutex<Vec<NodeStats>>>,
    docs: Option<DocLayout>,
}

/// What the reader thread needs to compute each step's document boundaries.
#[derive(Clone, Copy)]
struct DocLayout {
    docs: DocBoundaries,
    micro_rows: usize,
    seq_len: usize,
    dtype: Dtype,
}

impl DocLayout {
    /// The boundaries of every micro-batch of the step of `rows` rows in
    /// `buf`. A step
    /// the NICs wrote into device memory is first copied back to the
    /// buffer's host bytes ([`HostBuffer::copy_back`]), here on the reader
    /// thread.
    fn compute(
        &self,
        step: u64,
        rows: usize,
        buf: &mut dyn HostBuffer,
        direct: bool,
    ) -> Result<Vec<DocBounds>, LoaderError> {
        let len = rows * self.seq_len * self.dtype.size();
        let err = |what: String| LoaderError::Destination {
            step,
            source: what.into(),
        };
        if direct
            && !buf
                .copy_back(len)
                .map_err(|source| LoaderError::Destination { step, source })?
        {
            return Err(err(
                "document boundaries need the step's tokens in host memory, and this buffer cannot copy a step written into device memory back".into(),
            ));
        }
        docs::step_bounds(
            buf.bytes(),
            self.dtype,
            rows,
            self.micro_rows,
            self.seq_len,
            self.docs,
        )
        .map_err(err)
    }
}

/// Reads every step into a free ring buffer and hands it over. Returns the
/// buffer it still holds when it stops early (freed by the caller after the
/// reader's transports are gone).
fn reader_loop(a: ReaderArgs<'_>) -> Option<Box<dyn HostBuffer>> {
    for step in a.start..a.end {
        // Wait for a free ring slot, checking for shutdown.
        let mut buf = loop {
            if a.stop.load(Ordering::Relaxed) {
                return None;
            }
            match a.free.recv_timeout(Duration::from_millis(20)) {
                Ok(b) => break b,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        };
        let t = Instant::now();
        let mut rows = Vec::new();
        let result = a
            .source
            .block(step, a.rank, a.world, &mut rows)
            .map_err(|source| LoaderError::Block {
                step,
                rank: a.rank,
                source,
            })
            .and_then(|()| read_into(a.reader, step, &rows, a.row_bytes, buf.as_mut()))
            .and_then(|(stats, direct)| {
                let docs = match &a.docs {
                    Some(d) => Some(d.compute(step, rows.len(), buf.as_mut(), direct)?),
                    None => None,
                };
                Ok((stats, direct, docs))
            });
        if let Ok(mut g) = a.node_stats.lock() {
            *g = a.reader.node_stats();
        }
        match result {
            Ok((stats, direct, docs)) => {
                let msg = Filled {
                    step,
                    buf,
                    rows,
                    read_time: t.elapsed(),
                    stats,
                    direct,
                    docs,
                };
                if let Err(mpsc::SendError(msg)) = a.filled.send(Ok(msg)) {
                    return msg.ok().map(|f| f.buf);
                }
            }
            Err(e) => {
                let _ = a.filled.send(Err(e));
                return Some(buf);
            }
        }
    }
    None
}

/// Registers device memory of the ring (GPUDirect) with every node: for each
/// buffer, the first of its regions all nodes accept. Refusals are logged
/// with their reason (once per kind); those buffers use the host path.
fn register_device_memory(reader: &mut ClusterReader, bufs: &[Box<dyn HostBuffer>]) {
    let mut refused: Vec<&'static str> = Vec::new();
    let mut direct = 0usize;
    for buf in bufs {
        let regions = buf.device_regions();
        if regions.is_empty() {
            continue;
        }
        let mut accepted = false;
        for region in &regions {
            if refused.contains(&region.kind()) {
                continue;
            }
            match reader.register_device(region) {
                Ok(()) => {
                    accepted = true;
                    break;
                }
                Err(why) => {
                    tracing::warn!(
                        kind = region.kind(),
                        "device destination: {} registration refused ({why}); falling back",
                        region.kind()
                    );
                    refused.push(region.kind());
                }
            }
        }
        if accepted {
            direct += 1;
        }
    }
    if direct > 0 {
        tracing::info!(
            buffers = direct,
            of = bufs.len(),
            "device destination: GPUDirect RDMA, the NICs write step buffers in device memory (no host copy)"
        );
    } else if !refused.is_empty() {
        tracing::warn!("device destination: no GPUDirect registration accepted; steps go through the host bounce buffer");
    }
}

/// Reads one step into `buf`: straight into its device memory when the
/// nodes registered it, else (or when that is refused) into its host bytes.
/// Returns the counters and whether the step went direct.
fn read_into(
    reader: &mut ClusterReader,
    step: u64,
    rows: &[SeqRead],
    row_bytes: usize,
    buf: &mut dyn HostBuffer,
) -> Result<(StepReadStats, bool), LoaderError> {
    let len = rows.len() * row_bytes;
    let region = buf
        .device_regions()
        .into_iter()
        .find(|r| reader.has_device(r));
    if let Some(region) = region {
        buf.begin_device_fill(&region)
            .map_err(|source| LoaderError::Destination { step, source })?;
        match reader.read_step_device(step, rows, row_bytes, &region) {
            Ok(stats) => {
                buf.filled_device(len)
                    .map_err(|source| LoaderError::Destination { step, source })?;
                return Ok((stats, true));
            }
            Err(e @ LoaderError::DeviceDestination { .. }) => {
                tracing::warn!(step, error = %e, "device destination refused; this buffer now goes through host memory");
                reader.unregister_device(region.addr(), region.len());
            }
            Err(e) => return Err(e),
        }
    }
    let stats = reader.read_step(step, rows, row_bytes, buf.bytes_mut())?;
    // Let a device backend start moving the step (e.g. H2D copy).
    buf.filled(len)
        .map_err(|source| LoaderError::Destination { step, source })?;
    Ok((stats, false))
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
