//! Step buffers in device memory: the pinned bounce slot and the batch
//! descriptor a trainer consumes.

use crate::device::Device;
use crate::dlpack::{DLDataType, DLDevice, DlpackTensor};
use crate::error::{CudaError, Result};
use crate::memory::{DeviceBuffer, Event, PinnedBuffer, Stream};
use crate::widen::Widener;
use std::ops::Range;
use std::sync::Arc;

/// Element type of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// Unsigned 16-bit token ids (vocabularies up to 65 536).
    U16,
    /// Unsigned 32-bit token ids.
    U32,
    /// Signed 64-bit ids (what embedding layers take), after widening.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U16 => 2,
            DType::U32 => 4,
            DType::I64 => 8,
        }
    }

    /// The DLPack type code/bits/lanes.
    pub fn dlpack(self) -> DLDataType {
        match self {
            DType::U16 => DLDataType {
                code: 1,
                bits: 16,
                lanes: 1,
            },
            DType::U32 => DLDataType {
                code: 1,
                bits: 32,
                lanes: 1,
            },
            DType::I64 => DLDataType {
                code: 0,
                bits: 64,
                lanes: 1,
            },
        }
    }

    /// The token dtype for a token size in bytes (2 or 4).
    pub fn for_token_size(bytes: usize) -> Option<DType> {
        match bytes {
            2 => Some(DType::U16),
            4 => Some(DType::U32),
            _ => None,
        }
    }
}

/// Where a batch lives and how to wait for it: everything a framework needs
/// to wrap it without a copy.
///
/// Valid while the loader batch it came from (or a clone of it) is alive:
/// a slot is reused only after every view is dropped and, on CUDA, after an
/// event recorded on each consumer stream (`Batch::record_stream`) has
/// completed. Work reading it must be enqueued on a recorded stream before
/// the last view is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBatch {
    /// Device ordinal.
    pub device: usize,
    /// Device address of element `[0, 0]`.
    pub ptr: u64,
    /// Shape in elements, row-major contiguous (`[micro_batch, seq_len]`).
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Raw `CUstream` the copy ran on.
    pub stream: u64,
    /// Raw `CUevent` that completes when the bytes are in place; make the
    /// consuming stream wait on it (`cuStreamWaitEvent`) before reading.
    pub event: u64,
}

impl DeviceBatch {
    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }

    /// A DLPack `DLManagedTensor` describing this batch (no copy; the memory
    /// stays owned by the loader). Wait on [`DeviceBatch::event`] first.
    pub fn to_dlpack(&self) -> Result<DlpackTensor> {
        let shape = shape_i64(&self.shape)?;
        Ok(DlpackTensor::new(
            self.ptr,
            DLDevice::cuda(self.device),
            self.dtype.dlpack(),
            &shape,
        ))
    }
}

pub(crate) fn shape_i64(shape: &[usize]) -> Result<Vec<i64>> {
    shape
        .iter()
        .map(|d| {
            i64::try_from(*d).map_err(|_| CudaError::InvalidArgument {
                what: format!("dimension {d} does not fit DLPack's int64"),
            })
        })
        .collect()
}

/// One step buffer on the pinned-bounce path: the transport writes into
/// pinned host memory ([`BounceSlot::host_mut`]), [`BounceSlot::submit`]
/// enqueues the async copy to device memory on the rank's stream and records
/// an event, and the batch is ready when that event completes.
///
/// Reuse is ordered after the consumer: [`BounceSlot::release`] records an
/// event on each consumer stream, makes the copy stream wait for it and
/// records `released` on the copy stream, so the next copy into the slot
/// (same stream) runs only after the consumer's work, and the next direct
/// fill ([`BounceSlot::begin_direct`]) waits for `released` on the host.
#[derive(Debug)]
pub struct BounceSlot {
    pinned: PinnedBuffer,
    dst: DeviceBuffer,
    /// Ready event: recorded after the copy (and widening) of each step.
    done: Event,
    /// Recorded on each consumer stream at release; reused sequentially
    /// (each `cuStreamWaitEvent` captures the record current at the call).
    consumer: Event,
    /// Recorded on the copy stream after waiting for every consumer
    /// stream: completes once the consumers' work on the last step has run.
    released: Event,
    stream: Arc<Stream>,
    in_flight: bool,
    filled: usize,
    widen: Option<WidenTarget>,
}

/// On-device widening after each copy: `from` tokens in the step buffer
/// become int64 in `out`.
#[derive(Debug)]
struct WidenTarget {
    widener: Arc<Widener>,
    from: DType,
    out: DeviceBuffer,
}

impl BounceSlot {
    /// A slot of `bytes` on `device`, copying on `stream`.
    pub fn new(device: &Device, stream: Arc<Stream>, bytes: usize) -> Result<BounceSlot> {
        let dst = device.alloc(bytes, "a step buffer")?;
        let pinned = device.alloc_pinned(bytes)?;
        let done = device.event(false)?;
        let consumer = device.event(false)?;
        let released = device.event(false)?;
        Ok(BounceSlot {
            pinned,
            dst,
            done,
            consumer,
            released,
            stream,
            in_flight: false,
            filled: 0,
            widen: None,
        })
    }

    /// Also widens every submitted step of `from` tokens to int64 on the
    /// device (same stream, before the completion event); batches then
    /// describe the int64 buffer. Allocates that buffer (4x or 2x the slot).
    pub fn with_widening(mut self, widener: Arc<Widener>, from: DType) -> Result<BounceSlot> {
        if from == DType::I64 {
            return Err(CudaError::InvalidArgument {
                what: "widening int64 tokens: they are already int64".to_string(),
            });
        }
        let tokens = self.dst.len() / from.size();
        let out = self
            .dst
            .device()
            .alloc(tokens.max(1) * 8, "the int64 widened step buffer")?;
        self.widen = Some(WidenTarget { widener, from, out });
        Ok(self)
    }

    /// The int64 buffer when widening is on.
    pub fn widened_buffer(&self) -> Option<&DeviceBuffer> {
        self.widen.as_ref().map(|w| &w.out)
    }

    /// Capacity in bytes.
    pub fn len(&self) -> usize {
        self.dst.len()
    }

    /// Always false (zero-length slots are refused).
    pub fn is_empty(&self) -> bool {
        self.dst.is_empty()
    }

    /// The pinned staging memory for the transport to write into. Waits for
    /// a previous copy out of it to finish first, so bytes in flight are
    /// never overwritten.
    pub fn host_mut(&mut self) -> Result<&mut [u8]> {
        self.wait()?;
        Ok(self.pinned.as_mut_slice())
    }

    /// Like [`BounceSlot::host_mut`] for callers that cannot return an
    /// error (a `&mut [u8]` accessor): a failed wait is logged, and then
    /// the device context is broken and later calls fail anyway.
    pub fn host_mut_logged(&mut self) -> &mut [u8] {
        if let Err(e) = self.wait() {
            tracing::error!("waiting for a bounce copy before reuse: {e}");
            self.in_flight = false;
        }
        self.pinned.as_mut_slice()
    }

    /// The staged bytes (host view of what was, or will be, copied).
    pub fn host(&self) -> &[u8] {
        self.pinned.as_slice()
    }

    /// The pinned staging buffer (address and length for RDMA registration).
    pub fn pinned(&self) -> &PinnedBuffer {
        &self.pinned
    }

    /// The device memory the batch lands in.
    pub fn device_buffer(&self) -> &DeviceBuffer {
        &self.dst
    }

    /// The completion event of the last submitted copy.
    pub fn event(&self) -> &Event {
        &self.done
    }

    /// Enqueues the copy of the first `len` staged bytes to the device and
    /// records the completion event. Returns at once.
    ///
    /// The copy is ordered after the consumers of the previous step in this
    /// slot: [`BounceSlot::release`] enqueued the waits for them on this same
    /// stream.
    pub fn submit(&mut self, len: usize) -> Result<()> {
        self.wait()?;
        self.check_widen_len(len)?;
        self.dst
            .copy_from_pinned_async(0, &self.pinned, len, &self.stream)?;
        self.finish(len)
    }

    /// Direct path (GPUDirect RDMA): blocks until the device buffer may be
    /// overwritten by the NIC: the last submitted work on it has completed
    /// and the consumers' work on the previous batch has run (the
    /// `released` event of [`BounceSlot::release`]; a never-recorded event
    /// is complete). Call before the RDMA reads.
    pub fn begin_direct(&mut self) -> Result<()> {
        self.wait()?;
        self.released.synchronize()
    }

    /// Direct path: the NIC has written the first `len` bytes of the device
    /// buffer (every read completed). Flushes the RDMA writes where the
    /// device needs it ([`Device::direct_flush`]), widens them if widening is
    /// on and records the ready event on the stream; no copy. Returns at
    /// once (the flush, where called, is a short host call).
    pub fn complete_direct(&mut self, len: usize) -> Result<()> {
        if len > self.dst.len() {
            return Err(CudaError::InvalidArgument {
                what: format!(
                    "{len} bytes written into a {}-byte device buffer",
                    self.dst.len()
                ),
            });
        }
        self.check_widen_len(len)?;
        self.dst.device().flush_direct_writes()?;
        self.finish(len)
    }

    /// After a direct fill ([`complete_direct`](Self::complete_direct)):
    /// copies the step's first `len` bytes from the device buffer into the
    /// pinned buffer, so host code (the loader's document boundaries) can
    /// read them, and returns once they are there. Runs on the caller's
    /// thread (the loader's reader thread) and waits only for this slot's
    /// own stream.
    pub fn copy_back(&mut self, len: usize) -> Result<()> {
        self.wait()?;
        self.dst.copy_to_pinned(&mut self.pinned, len, &self.stream)
    }

    fn check_widen_len(&self, len: usize) -> Result<()> {
        match &self.widen {
            Some(w) if !len.is_multiple_of(w.from.size()) => Err(CudaError::InvalidArgument {
                what: format!("{len} bytes is not a whole number of {:?} tokens", w.from),
            }),
            _ => Ok(()),
        }
    }

    /// After the bytes are (or, enqueued, will be) in `dst`: widening, then
    /// the ready event.
    fn finish(&mut self, len: usize) -> Result<()> {
        if let Some(w) = &self.widen {
            let n = len / w.from.size();
            w.widener
                .widen(&self.dst, 0, w.from, n, &w.out, 0, &self.stream)?;
        }
        self.done.record(&self.stream)?;
        self.in_flight = true;
        self.filled = len;
        Ok(())
    }

    /// The consumer is done with the last batch of this slot, having
    /// enqueued its reads on `consumer_streams` (raw `CUstream` handles; 0,
    /// 0x1 `CU_STREAM_LEGACY` and 0x2 `CU_STREAM_PER_THREAD` included; each
    /// a live stream of this device's primary context). For each stream
    /// this records the slot's consumer event on it and makes the copy
    /// stream wait for it, then records the `released` event on the copy
    /// stream. The next copy into the slot (same stream) therefore runs
    /// after the consumers' work, and [`BounceSlot::begin_direct`] waits for
    /// it. Nothing blocks the host. Work the consumer enqueued on the copy
    /// stream itself ([`DeviceBatch::stream`]) is ordered too.
    ///
    /// Binds the device's context to the calling thread (the consumer's).
    /// Takes `&mut self`: the record/wait pairs on the one consumer event
    /// must not interleave with another release.
    pub fn release(&mut self, consumer_streams: &[u64]) -> Result<()> {
        for &s in consumer_streams {
            self.consumer.record_raw(s)?;
            self.stream.wait_event(&self.consumer)?;
        }
        self.released.record(&self.stream)
    }

    /// Makes the consumer stream `stream` (raw `CUstream`, contract as in
    /// [`BounceSlot::release`]) wait for the last submitted batch of this
    /// slot without blocking the host: `cuStreamWaitEvent(stream, done)`.
    /// What a DLPack producer does for `__dlpack__(stream=s)`.
    pub fn ready_on(&self, stream: u64) -> Result<()> {
        self.done.wait_on_raw(stream)
    }

    /// The event recorded by the last [`BounceSlot::release`] on the copy
    /// stream after the waits for the consumer streams (complete when never
    /// recorded).
    pub fn released_event(&self) -> &Event {
        &self.released
    }

    /// True when the last submitted copy has completed.
    pub fn is_ready(&self) -> Result<bool> {
        if !self.in_flight {
            return Ok(true);
        }
        self.done.is_complete()
    }

    /// Blocks until the last submitted copy has completed.
    pub fn wait(&mut self) -> Result<()> {
        if self.in_flight {
            self.done.synchronize()?;
            self.in_flight = false;
        }
        Ok(())
    }

    /// Describes the last submitted bytes as a batch of `shape` × `dtype`
    /// (the token dtype); with widening on, the batch is the int64 buffer.
    pub fn batch(&self, shape: &[usize], dtype: DType) -> Result<DeviceBatch> {
        let want = shape.iter().product::<usize>() * dtype.size();
        if want != self.filled {
            return Err(CudaError::InvalidArgument {
                what: format!(
                    "batch shape {shape:?} of {dtype:?} is {want} bytes but {} bytes were submitted",
                    self.filled
                ),
            });
        }
        self.batch_range(0..self.filled, shape, dtype)
    }

    /// Describes bytes `range` of the last submitted step (one micro-batch)
    /// as a batch of `shape` × `dtype` (the token dtype): the device pointer
    /// is offset by `range.start`, or, with widening on, by
    /// `range.start / dtype.size() * 8` into the int64 buffer.
    pub fn batch_range(
        &self,
        range: Range<usize>,
        shape: &[usize],
        dtype: DType,
    ) -> Result<DeviceBatch> {
        let want = shape.iter().product::<usize>() * dtype.size();
        if want != range.len() {
            return Err(CudaError::InvalidArgument {
                what: format!(
                    "batch shape {shape:?} of {dtype:?} is {want} bytes but the byte range {range:?} is {}",
                    range.len()
                ),
            });
        }
        let widened = self.widen.as_ref().map(|w| (w.out.device_ptr(), w.from));
        let (ptr, dtype) = view_ptr(self.dst.device_ptr(), widened, &range, self.filled, dtype)?;
        Ok(DeviceBatch {
            device: self.dst.device().index(),
            ptr,
            shape: shape.to_vec(),
            dtype,
            stream: self.stream.handle(),
            event: self.done.handle(),
        })
    }
}

/// The device address and element type of bytes `range` of a step of
/// `filled` bytes of `dtype` tokens at `base`; with `widened = Some((ptr,
/// from))` the step is also widened from `from` tokens to int64 at `ptr`,
/// and the view is of the int64 ids.
pub(crate) fn view_ptr(
    base: u64,
    widened: Option<(u64, DType)>,
    range: &Range<usize>,
    filled: usize,
    dtype: DType,
) -> Result<(u64, DType)> {
    if range.start > range.end || range.end > filled {
        return Err(CudaError::InvalidArgument {
            what: format!("byte range {range:?} of a step of {filled} submitted bytes"),
        });
    }
    if !range.start.is_multiple_of(dtype.size()) {
        return Err(CudaError::InvalidArgument {
            what: format!("byte range {range:?} does not start on a {dtype:?} token boundary"),
        });
    }
    match widened {
        None => Ok((base + range.start as u64, dtype)),
        Some((wide, from)) if from == dtype => Ok((
            wide + (range.start / dtype.size() * DType::I64.size()) as u64,
            DType::I64,
        )),
        Some((_, from)) => Err(CudaError::InvalidArgument {
            what: format!("batch of {dtype:?} from a slot widening {from:?} tokens"),
        }),
    }
}

impl Drop for BounceSlot {
    fn drop(&mut self) {
        // The pinned source must outlive the copy reading it.
        if let Err(e) = self.wait() {
            tracing::warn!("dropping a bounce slot: {e}");
        }
        // The device memory must outlive the consumers' work on the last
        // released batch (complete at once when never released).
        if let Err(e) = self.released.synchronize() {
            tracing::warn!("dropping a bounce slot: waiting for its consumers: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batch_views_are_offset_by_their_byte_range() {
        // Step of 4 micro-batches of 2 rows x 8 u16 tokens (32 bytes each).
        let base = 0x7000_0000;
        for m in 0..4usize {
            let r = m * 32..(m + 1) * 32;
            assert_eq!(
                view_ptr(base, None, &r, 128, DType::U16).unwrap(),
                (base + (m * 32) as u64, DType::U16)
            );
        }
        let r = 64..128;
        assert_eq!(
            view_ptr(base, None, &r, 128, DType::U32).unwrap(),
            (base + 64, DType::U32)
        );
    }

    #[test]
    fn widened_views_are_offset_in_int64_ids() {
        let (base, wide) = (0x1000, 0x9_0000);
        // u16: byte 32 is token 16, which is byte 128 of the int64 buffer.
        assert_eq!(
            view_ptr(base, Some((wide, DType::U16)), &(32..64), 128, DType::U16).unwrap(),
            (wide + 128, DType::I64)
        );
        // u32: byte 32 is token 8, byte 64 of the int64 buffer.
        assert_eq!(
            view_ptr(base, Some((wide, DType::U32)), &(32..64), 128, DType::U32).unwrap(),
            (wide + 64, DType::I64)
        );
        assert_eq!(
            view_ptr(base, Some((wide, DType::U16)), &(0..128), 128, DType::U16).unwrap(),
            (wide, DType::I64)
        );
    }

    #[test]
    fn views_outside_the_step_or_off_token_boundaries_are_refused() {
        assert!(view_ptr(0x1000, None, &(64..160), 128, DType::U16).is_err());
        assert!(view_ptr(0x1000, None, &(1..33), 128, DType::U16).is_err());
        assert!(view_ptr(0x1000, None, &(2..34), 128, DType::U32).is_err());
        assert!(view_ptr(
            0x1000,
            Some((0x9000, DType::U32)),
            &(0..32),
            128,
            DType::U16
        )
        .is_err());
    }
}
