//! `NativeLoader` and `NativeBatch`: the loader and its micro-batches as
//! Python objects. Iteration releases the GIL while it waits and checks for
//! signals every 100 ms, so Ctrl-C stops a waiting loop (the loader's
//! reader thread stops when the loader is closed or collected).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use seqfeed_cuda::dlpack::{DLDataType, DLDevice, KDL_CPU, KDL_CUDA};
use seqfeed_cuda::{DlpackTensor, LoaderDestination, TransportCaps};
use seqfeed_loader::{
    Batch, BlockSource, BufferAllocator, Dtype, HeapAllocator, Loader, LoaderConfig, LoaderError,
    Next, OpenedPlan, RetryPolicy, Split, TransportKind,
};

use crate::capsule::{into_capsule, into_versioned_capsule};
use crate::plan::NativePlan;
use crate::py_err;
use crate::widen::{WidenedBuffer, WideningAllocator};

/// How long one wait for the reader lasts before signals are checked.
const POLL: Duration = Duration::from_millis(100);

/// Where batches land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Cpu,
    Cuda(usize),
}

fn parse_device(device: &str) -> PyResult<Place> {
    match device.trim() {
        "cpu" => Ok(Place::Cpu),
        "cuda" => Ok(Place::Cuda(0)),
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(Place::Cuda(i)),
            _ => Err(PyValueError::new_err(format!(
                "device {device:?}: expected \"cpu\", \"cuda\" or \"cuda:N\""
            ))),
        },
    }
}

/// The seqfeed loader of one data-parallel rank (see the `seqfeed.Loader`
/// wrapper for the documented interface).
#[pyclass(module = "seqfeed._native")]
pub(crate) struct NativeLoader {
    inner: Mutex<Option<Loader>>,
    opened: OpenedPlan,
    place: Place,
    /// Batches are widened to int64 on the device.
    widened: bool,
    pid: u32,
    dp_rank: usize,
    dp_size: usize,
    accumulation: usize,
    micro_batch: usize,
    end_step: u64,
    split: Split,
}

#[pymethods]
impl NativeLoader {
    #[new]
    #[pyo3(signature = (plan, *, device="cpu", prefetch=2, start_step=0, start_micro=0,
        end_step=None, dp_rank=0, dp_size=1, accumulation=1, widen=false,
        failover_ms=10_000, ring_wait_ms=10_000, client_name=None,
        split="train", verify_crc=false, eod_token=None, doc_row_tokens=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        plan: PyRef<'_, NativePlan>,
        device: &str,
        prefetch: usize,
        start_step: u64,
        start_micro: usize,
        end_step: Option<u64>,
        dp_rank: usize,
        dp_size: usize,
        accumulation: usize,
        widen: bool,
        failover_ms: u64,
        ring_wait_ms: u64,
        client_name: Option<String>,
        split: &str,
        verify_crc: bool,
        eod_token: Option<u32>,
        doc_row_tokens: Option<usize>,
    ) -> PyResult<Self> {
        let place = parse_device(device)?;
        let split = crate::inspect::parse_split(split)?;
        if dp_size == 0 || dp_rank >= dp_size {
            return Err(crate::SeqfeedError::new_err(format!(
                "invalid loader configuration: data-parallel rank {dp_rank} is out of range for data-parallel size {dp_size}"
            )));
        }
        let mut spec = plan.spec().clone();
        spec.split = split;
        spec.client_name = client_name
            .unwrap_or_else(|| format!("seqfeed-python/dp{dp_rank}/pid{}", std::process::id()));
        if let Place::Cuda(i) = place {
            // The verbs transport reads through the NICs closest to this GPU.
            spec.gpu_bus_id = seqfeed_cuda::probe()
                .system()
                .and_then(|s| s.devices.iter().find(|d| d.index == i))
                .map(|d| d.pci_bus_id.clone())
                .filter(|b| !b.is_empty());
        }
        let mut config = LoaderConfig::data_parallel(dp_rank, dp_size)
            .accumulation(accumulation)
            .start_step(start_step)
            .start_micro(start_micro)
            .prefetch(prefetch)
            .ring_wait(Duration::from_millis(ring_wait_ms))
            .verify_crc(verify_crc)
            .retry(RetryPolicy {
                failover_timeout: Duration::from_millis(failover_ms),
                ..RetryPolicy::default()
            });
        if let Some(e) = end_step {
            config = config.end_step(e);
        }
        // Document boundaries: computed by the reader thread for every
        // micro-batch over the first `doc_row_tokens` tokens of each row.
        match (eod_token, doc_row_tokens) {
            (Some(eod), Some(n)) => config = config.doc_boundaries(eod, n),
            (None, None) => {}
            _ => {
                return Err(PyValueError::new_err(
                    "document boundaries need eod_token and doc_row_tokens together",
                ))
            }
        }
        let opened = plan.opened(split).map_err(|e| crate::py_err(&e))?;
        drop(plan);
        let (opened, loader, widened) = py
            .detach(|| -> Result<_, String> {
                let msg = |e: LoaderError| seqfeed_loader::error_message(&e);
                let (alloc, widened) =
                    allocator(place, opened.source.dtype(), spec.transport, widen)?;
                let reader = spec.connect(&opened, &config).map_err(msg)?;
                let source: Arc<dyn BlockSource> = opened.source.clone();
                let loader = Loader::with_allocator(config, source, reader, alloc).map_err(msg)?;
                Ok((opened, loader, widened))
            })
            .map_err(crate::SeqfeedError::new_err)?;
        Ok(NativeLoader {
            micro_batch: loader.micro_batch(),
            end_step: loader.end_step(),
            inner: Mutex::new(Some(loader)),
            opened,
            place,
            widened,
            pid: std::process::id(),
            dp_rank,
            dp_size,
            accumulation,
            split,
        })
    }

    /// The stream read: `"train"` or `"validation"`.
    #[getter]
    fn split(&self) -> String {
        self.split.to_string()
    }

    /// The next micro-batch, or `None` after the last step.
    fn next_batch(&self, py: Python<'_>) -> PyResult<Option<NativeBatch>> {
        self.check_process()?;
        // Fast path: a micro-batch already read ahead is handed out without
        // releasing the GIL (a non-blocking poll; releasing and re-taking the
        // GIL costs more than the hand-off itself). `try_lock`: a thread that
        // holds the loader (close) never makes this one wait with the GIL.
        if let Ok(mut guard) = self.inner.try_lock() {
            match guard.as_mut().map(|l| l.poll_next(Some(Duration::ZERO))) {
                Some(Next::Pending) => {}
                got => return self.finish(got),
            }
        }
        loop {
            let got = py.detach(|| {
                let mut guard = match self.inner.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                guard.as_mut().map(|l| l.poll_next(Some(POLL)))
            });
            match got {
                Some(Next::Pending) => py.check_signals()?,
                got => return self.finish(got),
            }
        }
    }

    /// `(step, micro)` of the next micro-batch.
    fn position(&self) -> PyResult<(u64, usize)> {
        self.with(|l| l.position())
    }

    /// Running totals.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(|l| l.stats())?;
        let d = PyDict::new(py);
        d.set_item("steps", s.steps)?;
        d.set_item("micro_batches", s.micro_batches)?;
        d.set_item("sequences", s.sequences)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("stall_s", s.stall.as_secs_f64())?;
        d.set_item("first_stall_s", s.first_stall.as_secs_f64())?;
        d.set_item("stall_after_warmup_s", s.stall_after_warmup().as_secs_f64())?;
        d.set_item("read_time_s", s.read_time.as_secs_f64())?;
        d.set_item("failed_over", s.failed_over)?;
        d.set_item("crc_mismatches", s.crc_mismatches)?;
        d.set_item("direct_steps", s.direct_steps)?;
        let nodes = PyList::empty(py);
        for n in self.with(|l| l.node_stats())? {
            nodes.append(node_stats_dict(py, &n)?)?;
        }
        d.set_item("nodes", nodes)?;
        Ok(d)
    }

    /// Stops the reader thread and closes the node connections. Batches
    /// still held stay valid. The GIL is released while the reader stops
    /// (up to the I/O timeout when a node does not answer). In a forked
    /// child the loader is only forgotten: its threads do not exist there.
    fn close(&self, py: Python<'_>) {
        let taken = self.take();
        py.detach(move || self.release(taken));
    }

    /// The plan's fingerprint.
    #[getter]
    fn plan_fingerprint(&self) -> String {
        self.opened.plan.fingerprint().to_owned()
    }

    /// The dataset's fingerprint (`None` when opened from a shapes file).
    #[getter]
    fn dataset_fingerprint(&self) -> Option<String> {
        self.opened.dataset_fingerprint.clone()
    }

    /// Steps of the stream read: the plan's steps for training, the full
    /// validation steps for `split="validation"`.
    #[getter]
    fn plan_steps(&self) -> u64 {
        self.opened.source.steps()
    }

    /// One past the last step this loader reads.
    #[getter]
    fn end_step(&self) -> u64 {
        self.end_step
    }

    /// Sequences per step over all data-parallel ranks.
    #[getter]
    fn global_batch(&self) -> u64 {
        self.opened.plan.global_batch()
    }

    /// Rows per micro-batch.
    #[getter]
    fn micro_batch(&self) -> usize {
        self.micro_batch
    }

    /// Micro-batches per step.
    #[getter]
    fn accumulation(&self) -> usize {
        self.accumulation
    }

    /// Tokens per sequence (per row).
    #[getter]
    fn seq_len(&self) -> u32 {
        self.opened.plan.seq_len()
    }

    /// The token dtype on disk: `"uint16"` or `"uint32"`.
    #[getter]
    fn token_dtype(&self) -> &'static str {
        dtype_name(self.opened.source.as_ref())
    }

    /// `(dp_rank, dp_size)`.
    #[getter]
    fn data_parallel(&self) -> (usize, usize) {
        (self.dp_rank, self.dp_size)
    }

    /// Source names, in plan order.
    #[getter]
    fn sources(&self) -> Vec<String> {
        self.opened
            .plan
            .sources()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// True when batches are widened to int64 on the device.
    #[getter]
    fn widened(&self) -> bool {
        self.widened
    }
}

/// A loader collected by Python's GC stops its reader with the GIL released,
/// as `close()` does, so other Python threads run while a node times out.
impl Drop for NativeLoader {
    fn drop(&mut self) {
        let taken = self.take();
        if taken.is_none() {
            return;
        }
        let this = &*self;
        Python::attach(|py| py.detach(move || this.release(taken)));
    }
}

impl NativeLoader {
    /// Takes the loader out (closing it), whatever a panic left behind.
    fn take(&self) -> Option<Loader> {
        match self.inner.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }
    }

    /// Drops `loader`: stops its reader and closes its connections. In a
    /// forked child the reader thread does not exist, and waiting for it
    /// would never end: the child forgets the loader instead (its memory
    /// goes with the process; the parent's loader is untouched).
    fn release(&self, loader: Option<Loader>) {
        if std::process::id() != self.pid {
            std::mem::forget(loader);
        } else {
            drop(loader);
        }
    }

    /// What `next_batch` returns for a poll's outcome (not `Pending`).
    fn finish(&self, got: Option<Next>) -> PyResult<Option<NativeBatch>> {
        match got {
            None => Err(crate::SeqfeedError::new_err("the loader is closed")),
            Some(Next::Batch(batch)) => Ok(Some(NativeBatch {
                batch,
                place: self.place,
                widened: self.widened,
            })),
            Some(Next::End) => Ok(None),
            Some(Next::Error(e)) => Err(py_err(&e)),
            Some(Next::Pending) => Err(crate::SeqfeedError::new_err(
                "internal error: a pending poll was taken for a result",
            )),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Loader) -> T) -> PyResult<T> {
        let guard = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard
            .as_ref()
            .map(f)
            .ok_or_else(|| crate::SeqfeedError::new_err("the loader is closed"))
    }

    /// Threads do not survive `fork`: a loader used in a child process
    /// (e.g. a DataLoader worker) would wait forever on a reader that does
    /// not exist there.
    fn check_process(&self) -> PyResult<()> {
        let pid = std::process::id();
        if pid != self.pid {
            return Err(crate::SeqfeedError::new_err(format!(
                "this seqfeed loader was started in process {} and cannot be used in process {pid} (a forked child such as a DataLoader worker): its reader threads do not exist there. Use num_workers=0; seqfeed already reads ahead in background threads",
                self.pid
            )));
        }
        Ok(())
    }
}

fn dtype_name(source: &dyn seqfeed_loader::BlockSource) -> &'static str {
    match source.dtype() {
        Dtype::U16 => "uint16",
        Dtype::U32 => "uint32",
    }
}

/// The step-buffer allocator for `place` (heap for the CPU) and whether it
/// widens tokens to int64. On a GPU the path is chosen as the CLI does
/// ([`LoaderDestination`]): GPUDirect RDMA (dmabuf, then peer memory) where
/// the transport registers memory, else pinned host memory and an async
/// copy; a node that refuses device memory falls back to the copy (logged).
fn allocator(
    place: Place,
    token: Dtype,
    transport: TransportKind,
    widen: bool,
) -> Result<(Arc<dyn BufferAllocator>, bool), String> {
    let Place::Cuda(index) = place else {
        if widen {
            return Ok((Arc::new(WideningAllocator { token }), true));
        }
        return Ok((Arc::new(HeapAllocator), false));
    };
    let caps = match transport {
        TransportKind::Tcp => TransportCaps::cpu_copy("tcp"),
        TransportKind::Local => TransportCaps::cpu_copy("local"),
        _ => TransportCaps::rdma("verbs", true),
    };
    let widened = widen && seqfeed_cuda::nvrtc_available().is_ok();
    let dest = LoaderDestination::select_on(index, &caps, None, widened.then_some(token))
        .map_err(|e| format!("device cuda:{index}: {}", seqfeed_loader::error_message(&e)))?;
    let widened = widened && dest.device.is_some();
    Ok((dest.allocator, widened))
}

/// One micro-batch. `__dlpack__` hands out its memory without a copy; the
/// step's buffer is reused only after every tensor made from it is freed.
#[pyclass(module = "seqfeed._native")]
pub(crate) struct NativeBatch {
    batch: Batch,
    place: Place,
    widened: bool,
}

#[pymethods]
impl NativeBatch {
    /// The step.
    #[getter]
    fn step(&self) -> u64 {
        self.batch.step()
    }

    /// Index of this micro-batch within its step.
    #[getter]
    fn micro(&self) -> usize {
        self.batch.micro()
    }

    /// Micro-batches per step.
    #[getter]
    fn micro_batches(&self) -> usize {
        self.batch.micro_batches()
    }

    /// `(micro_batch, seq_len)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        let [r, c] = self.batch.shape();
        (r, c)
    }

    /// Element type of the DLPack tensor: `"uint16"`, `"int32"` (u32
    /// tokens, same bits) or `"int64"` (widened on the device).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.dl_dtype().1
    }

    /// Each row's source name.
    #[getter]
    fn sources(&self) -> Vec<String> {
        self.batch
            .row_sources()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// Each row's position in the plan's global order.
    #[getter]
    fn positions(&self) -> Vec<u64> {
        self.batch.reads().iter().map(|r| r.position).collect()
    }

    /// True when the NICs wrote the step straight into device memory.
    #[getter]
    fn filled_directly(&self) -> bool {
        self.batch.filled_directly()
    }

    /// Documents in this micro-batch (valid entries of `cu_seqlens` minus
    /// one); `None` without document boundaries.
    #[getter]
    fn num_docs(&self) -> Option<usize> {
        self.batch.doc_bounds().map(|d| d.num_docs())
    }

    /// The longest document of this micro-batch, in tokens; `None` without
    /// document boundaries.
    #[getter]
    fn max_seqlen(&self) -> Option<usize> {
        self.batch.doc_bounds().map(|d| d.max_seqlen())
    }

    /// `cu_seqlens` (int32, `[micro_batch * row_tokens + 1]`, padded by
    /// repeating the last offset) as a CPU DLPack capsule, without a copy;
    /// `None` without document boundaries. The tensor keeps the step's
    /// buffer out of the ring while it lives.
    fn cu_seqlens_dlpack<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(d) = self.batch.doc_bounds() else {
            return Ok(None);
        };
        let cu = d.cu_seqlens();
        let shape = [cu.len() as i64];
        let t = DlpackTensor::with_owner(
            cu.as_ptr() as u64,
            DLDevice::cpu(),
            int32(),
            &shape,
            Box::new(self.batch.clone()),
        );
        into_capsule(py, t).map(Some)
    }

    /// `document_ids` (int32, `[micro_batch, row_tokens]`: each token's
    /// document within its row) as a CPU DLPack capsule, without a copy;
    /// `None` without document boundaries.
    fn document_ids_dlpack<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(d) = self.batch.doc_bounds() else {
            return Ok(None);
        };
        let [r, c] = d.shape();
        let shape = [r as i64, c as i64];
        let t = DlpackTensor::with_owner(
            d.document_ids().as_ptr() as u64,
            DLDevice::cpu(),
            int32(),
            &shape,
            Box::new(self.batch.clone()),
        );
        into_capsule(py, t).map(Some)
    }

    /// Live references to the step's buffer (this batch, tensors made from
    /// it, the step's other micro-batches, the loader's own).
    #[getter]
    fn views(&self) -> usize {
        self.batch.views()
    }

    /// The tokens' bytes (a copy; CPU batches only). For tests and tools.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        if self.place != Place::Cpu {
            return Err(PyBufferError::new_err("tobytes() needs a CPU batch"));
        }
        Ok(PyBytes::new(py, self.batch.bytes()))
    }

    /// Declares that the consumer uses this batch on CUDA stream `stream`
    /// (a raw handle, `torch.cuda.Stream.cuda_stream`): the step's buffer
    /// is rewritten only after the work enqueued there by the time every
    /// view is freed. Like `Tensor.record_stream`.
    fn record_stream(&self, stream: u64) {
        self.batch.record_stream(stream);
    }

    /// `(device_type, device_id)` as DLPack defines them.
    fn __dlpack_device__(&self) -> (i32, i32) {
        match self.place {
            Place::Cpu => (KDL_CPU, 0),
            Place::Cuda(i) => (KDL_CUDA, i32::try_from(i).unwrap_or(i32::MAX)),
        }
    }

    /// The micro-batch as a DLPack capsule, without a copy. The tensor
    /// keeps the step's buffer out of the ring until it is freed. For CUDA,
    /// `stream` is the consumer's stream: it is made to wait for the
    /// batch's copy, and the buffer's next fill waits for it.
    #[pyo3(signature = (stream=None, max_version=None, dl_device=None, copy=None))]
    fn __dlpack__<'py>(
        &self,
        py: Python<'py>,
        stream: Option<i64>,
        max_version: Option<(u32, u32)>,
        dl_device: Option<(i32, i32)>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // DLPack 1.0 consumers (max_version >= (1, 0)) get a versioned
        // capsule; older ones (None, or 0.x) the unversioned one.
        let versioned = max_version.is_some_and(|(major, _)| major >= 1);
        if copy == Some(true) {
            return Err(PyBufferError::new_err(
                "seqfeed batches are exported without a copy (copy=True is not supported)",
            ));
        }
        if let Some(d) = dl_device {
            if d != self.__dlpack_device__() {
                return Err(PyBufferError::new_err(format!(
                    "the batch lives on DLPack device {:?}, not {d:?}",
                    self.__dlpack_device__()
                )));
            }
        }
        let (dl, _) = self.dl_dtype();
        let [rows, cols] = self.batch.shape();
        let shape = [rows as i64, cols as i64];
        let owner = Box::new(self.batch.clone());
        let tensor = match self.place {
            Place::Cpu if self.widened => {
                let buf = self
                    .batch
                    .buffer()
                    .and_then(|b| b.backend())
                    .and_then(|b| b.downcast_ref::<WidenedBuffer>())
                    .ok_or_else(|| PyBufferError::new_err("the batch has no int64 buffer"))?;
                let first = self.batch.byte_range().start / buf.token_size();
                let ids = buf.wide().get(first..first + rows * cols).ok_or_else(|| {
                    PyBufferError::new_err(format!(
                        "step {}: micro-batch {} is outside its int64 buffer",
                        self.batch.step(),
                        self.batch.micro()
                    ))
                })?;
                DlpackTensor::with_owner(ids.as_ptr() as u64, DLDevice::cpu(), dl, &shape, owner)
            }
            Place::Cpu => {
                let bytes = self.batch.bytes();
                if bytes.len() != rows * cols * self.batch.dtype().size() {
                    return Err(PyBufferError::new_err(format!(
                        "step {} has no host bytes ({} of {} bytes)",
                        self.batch.step(),
                        bytes.len(),
                        rows * cols * self.batch.dtype().size()
                    )));
                }
                DlpackTensor::with_owner(bytes.as_ptr() as u64, DLDevice::cpu(), dl, &shape, owner)
            }
            Place::Cuda(i) => {
                let dev = seqfeed_cuda::device_batch(&self.batch)
                    .ok_or_else(|| PyBufferError::new_err("the batch has no device side"))?
                    .map_err(|e| py_err(&e))?;
                // DLPack: None means the legacy default stream; -1 means
                // the consumer asks for no synchronization.
                let stream = stream.unwrap_or(1);
                if stream != -1 {
                    let s = u64::try_from(stream).map_err(|_| {
                        PyValueError::new_err(format!("stream {stream} is not a CUDA stream"))
                    })?;
                    if let Some(r) = seqfeed_cuda::batch_ready_on(&self.batch, s) {
                        r.map_err(|e| py_err(&e))?;
                    }
                    self.batch.record_stream(s);
                }
                DlpackTensor::with_owner(dev.ptr, DLDevice::cuda(i), dl, &shape, owner)
            }
        };
        if versioned {
            into_versioned_capsule(py, tensor, 0)
        } else {
            into_capsule(py, tensor)
        }
    }

    fn __repr__(&self) -> String {
        let [r, c] = self.batch.shape();
        format!(
            "NativeBatch(step={}, micro={}/{}, shape=({r}, {c}), dtype={})",
            self.batch.step(),
            self.batch.micro(),
            self.batch.micro_batches(),
            self.dl_dtype().1
        )
    }
}

impl NativeBatch {
    fn dl_dtype(&self) -> (DLDataType, &'static str) {
        let int = |bits: u8, code: u8| DLDataType {
            code,
            bits,
            lanes: 1,
        };
        if self.widened {
            return (int(64, 0), "int64");
        }
        match self.batch.dtype() {
            Dtype::U16 => (int(16, 1), "uint16"),
            // Token ids are below 2^31: int32 is what torch indexes with.
            Dtype::U32 => (int(32, 0), "int32"),
        }
    }
}

/// DLPack's int32.
fn int32() -> DLDataType {
    DLDataType {
        code: 0,
        bits: 32,
        lanes: 1,
    }
}

/// One node's counters as a dict: name, live, bytes, reads, batches,
/// errors (by kind), failed_over, reconnects, crc_mismatches,
/// last_crc_mismatch, down_s (seconds disconnected, None while connected),
/// last_error (its latest error while down), and the batch latency (p50/p99/mean in
/// seconds, each the upper bound of a power-of-two bucket, None before the
/// first batch).
fn node_stats_dict<'py>(
    py: Python<'py>,
    n: &seqfeed_loader::NodeStats,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &n.name)?;
    d.set_item("live", n.live)?;
    d.set_item("bytes", n.bytes)?;
    d.set_item("reads", n.reads)?;
    d.set_item("batches", n.batches)?;
    let e = PyDict::new(py);
    e.set_item("timeout", n.errors.timeout)?;
    e.set_item("connection", n.errors.connection)?;
    e.set_item("protocol", n.errors.protocol)?;
    e.set_item("backend", n.errors.backend)?;
    e.set_item("other", n.errors.other)?;
    d.set_item("errors", e)?;
    d.set_item("failed_over", n.failed_over)?;
    d.set_item("reconnects", n.reconnects)?;
    d.set_item("crc_mismatches", n.crc_mismatches)?;
    d.set_item("last_crc_mismatch", n.last_crc_mismatch.as_deref())?;
    let secs = |x: Option<Duration>| x.map(|d| d.as_secs_f64());
    d.set_item("down_s", secs(n.down_for))?;
    d.set_item("last_error", n.last_error.as_deref())?;
    d.set_item("latency_p50_s", secs(n.latency.quantile(0.5)))?;
    d.set_item("latency_p99_s", secs(n.latency.quantile(0.99)))?;
    d.set_item("latency_mean_s", secs(n.latency.mean()))?;
    Ok(d)
}
