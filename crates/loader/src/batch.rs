//! [`Batch`]: one micro-batch of one step, a view of a ring slot that owns
//! the slot while it lives.
//!
//! A step's rows are read into one ring slot ([`HostBuffer`]). Every
//! micro-batch of the step, and every clone of one (e.g. a tensor a
//! framework made from it), holds a reference to that slot. The slot goes
//! back to the reader thread only when the last of them is dropped, and
//! then only after [`HostBuffer::release`] has been told on which consumer
//! streams the data was used ([`Batch::record_stream`]), so a device
//! backend can order its next write into the slot after that work. A
//! consumer holding more steps than the ring has makes the reader wait: a
//! slot under a live view is never written.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::alloc::HostBuffer;
use crate::block::{Dtype, SeqRead};
use crate::cluster_reader::StepReadStats;
use crate::docs::DocBounds;

/// One step's ring slot while the consumer holds any view of it.
pub(crate) struct StepSlot {
    pub(crate) step: u64,
    /// `Some` until the slot goes back to the ring.
    pub(crate) buf: Option<Box<dyn HostBuffer>>,
    /// Raw stream handles the consumer used the step on.
    pub(crate) consumers: Mutex<Vec<u64>>,
    pub(crate) ret: Sender<Box<dyn HostBuffer>>,
    /// Slots the consumer holds (this one included while it lives).
    pub(crate) held: Arc<AtomicUsize>,
    pub(crate) rows: Vec<SeqRead>,
    pub(crate) row_bytes: usize,
    pub(crate) seq_len: usize,
    pub(crate) dtype: Dtype,
    pub(crate) micro_rows: usize,
    pub(crate) sources: Arc<[String]>,
    pub(crate) files: Arc<[String]>,
    pub(crate) stall: Duration,
    pub(crate) read_time: Duration,
    pub(crate) stats: StepReadStats,
    pub(crate) direct: bool,
    /// Each micro-batch's document boundaries, when the loader computes them.
    pub(crate) docs: Option<Vec<DocBounds>>,
}

impl Drop for StepSlot {
    fn drop(&mut self) {
        let Some(mut buf) = self.buf.take() else {
            return;
        };
        self.held.fetch_sub(1, Ordering::SeqCst);
        let streams = match self.consumers.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        if let Err(e) = buf.release(&streams) {
            // The backend could not order its next write after the
            // consumer's work: keep the slot out of the ring rather than
            // risk overwriting data still in use. The reader then waits for
            // another slot (or, with none left, for the loader to stop).
            tracing::error!(
                step = self.step,
                "releasing a step buffer failed ({e}); the buffer is retired"
            );
            return;
        }
        // The loader may be gone already; then the buffer is just freed.
        let _ = self.ret.send(buf);
    }
}

/// One micro-batch of one step: `[micro_batch, seq_len]` tokens. Cloning
/// is cheap and shares the memory; the step's ring slot is reused only
/// after every micro-batch of the step and every clone is dropped.
#[derive(Clone)]
pub struct Batch {
    slot: Arc<StepSlot>,
    micro: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("step", &self.slot.step)
            .field("micro", &self.micro)
            .field("shape", &self.shape())
            .field("dtype", &self.slot.dtype)
            .finish_non_exhaustive()
    }
}

impl Batch {
    pub(crate) fn new(slot: Arc<StepSlot>, micro: usize) -> Batch {
        Batch { slot, micro }
    }

    /// The step number.
    pub fn step(&self) -> u64 {
        self.slot.step
    }

    /// Index of this micro-batch within its step (`0..micro_batches()`).
    pub fn micro(&self) -> usize {
        self.micro
    }

    /// Micro-batches per step (gradient accumulation).
    pub fn micro_batches(&self) -> usize {
        self.slot.rows.len() / self.slot.micro_rows.max(1)
    }

    /// `[micro_batch, seq_len]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.slot.micro_rows, self.slot.seq_len]
    }

    /// Token type.
    pub fn dtype(&self) -> Dtype {
        self.slot.dtype
    }

    /// This micro-batch's rows within the rank's block of the step.
    pub fn block_rows(&self) -> Range<usize> {
        let r = self.slot.micro_rows;
        self.micro * r..(self.micro + 1) * r
    }

    /// This micro-batch's byte range within the step buffer
    /// ([`buffer`](Self::buffer)).
    pub fn byte_range(&self) -> Range<usize> {
        let rows = self.block_rows();
        rows.start * self.slot.row_bytes..rows.end * self.slot.row_bytes
    }

    /// The micro-batch's bytes, row-major (`micro_batch * seq_len *
    /// dtype.size()`).
    ///
    /// Empty for a batch the NICs wrote straight into device memory
    /// ([`filled_directly`](Self::filled_directly)): its bytes exist only on
    /// the device (see the buffer's backend, e.g. seqfeed-cuda's
    /// `device_batch`), and the host memory holds an older step.
    pub fn bytes(&self) -> &[u8] {
        if self.slot.direct {
            return &[];
        }
        let range = self.byte_range();
        self.slot
            .buf
            .as_ref()
            .and_then(|b| b.bytes().get(range))
            .unwrap_or(&[])
    }

    /// Row `k`'s bytes (panics for a batch filled directly into device
    /// memory; see [`bytes`](Self::bytes)).
    pub fn row(&self, k: usize) -> &[u8] {
        let n = self.slot.row_bytes;
        &self.bytes()[k * n..(k + 1) * n]
    }

    /// The tokens as `u16` (`None` unless the dtype is `u16`).
    pub fn tokens_u16(&self) -> Option<&[u16]> {
        (self.slot.dtype == Dtype::U16)
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }

    /// The tokens as `u32` (`None` unless the dtype is `u32`).
    pub fn tokens_u32(&self) -> Option<&[u32]> {
        (self.slot.dtype == Dtype::U32)
            .then(|| bytemuck::try_cast_slice(self.bytes()).ok())
            .flatten()
    }

    /// Where each row came from (file index, offset, plan position).
    pub fn reads(&self) -> &[SeqRead] {
        &self.slot.rows[self.block_rows()]
    }

    /// Source name of row `k`.
    pub fn source(&self, k: usize) -> &str {
        &self.slot.sources[self.reads()[k].source as usize]
    }

    /// Source names of every row.
    pub fn row_sources(&self) -> Vec<&str> {
        (0..self.slot.micro_rows).map(|k| self.source(k)).collect()
    }

    /// Dataset-relative path of row `k`'s file.
    pub fn file(&self, k: usize) -> &str {
        &self.slot.files[self.reads()[k].file as usize]
    }

    /// How long `next` waited for this step (zero for micro-batches after
    /// the first).
    pub fn stall(&self) -> Duration {
        if self.micro == 0 {
            self.slot.stall
        } else {
            Duration::ZERO
        }
    }

    /// How long the reader took to read this step.
    pub fn read_time(&self) -> Duration {
        self.slot.read_time
    }

    /// Counters of the step's read.
    pub fn read_stats(&self) -> StepReadStats {
        self.slot.stats
    }

    /// This micro-batch's document boundaries ([`crate::docs`]), computed
    /// by the reader thread before the step was handed out; `None` unless
    /// the loader was configured with
    /// [`LoaderConfig::doc_boundaries`](crate::LoaderConfig::doc_boundaries).
    pub fn doc_bounds(&self) -> Option<&DocBounds> {
        self.slot.docs.as_ref()?.get(self.micro)
    }

    /// True when the NICs wrote this step straight into the buffer's device
    /// memory (GPUDirect); false when it went through host memory.
    pub fn filled_directly(&self) -> bool {
        self.slot.direct
    }

    /// The whole step buffer (every micro-batch of the step), for backends
    /// that expose more than bytes (see [`HostBuffer::backend`]; e.g.
    /// seqfeed-cuda's device batch). This micro-batch is
    /// [`byte_range`](Self::byte_range) of it.
    pub fn buffer(&self) -> Option<&dyn HostBuffer> {
        self.slot.buf.as_deref()
    }

    /// Declares that the consumer uses this step's memory on the stream
    /// `stream` (a raw handle, e.g. a `CUstream`): when the step is
    /// released, the backend orders its next write into the slot after the
    /// work enqueued on that stream by then (like `Tensor.record_stream`).
    pub fn record_stream(&self, stream: u64) {
        let mut s = match self.slot.consumers.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !s.contains(&stream) {
            s.push(stream);
        }
    }

    /// Number of live references to the step's slot: this batch, its
    /// clones, the step's other micro-batches, and the loader's own while
    /// micro-batches of the step remain to be handed out.
    pub fn views(&self) -> usize {
        Arc::strong_count(&self.slot)
    }
}
