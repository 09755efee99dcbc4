//! Step buffers in device memory: the pinned bounce slot and the batch
//! descriptor a trainer consumes.

use crate::device::Device;
use crate::dlpack::{DLDataType, DLDevice, DlpackTensor};
use crate::error::{CudaError, Result};
use crate::memory::{DeviceBuffer, Event, PinnedBuffer, Stream};
use crate::widen::Widener;
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
/// to wrap it without a copy. Valid until the loader's slot is released.
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
#[derive(Debug)]
pub struct BounceSlot {
    pinned: PinnedBuffer,
    dst: DeviceBuffer,
    done: Event,
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
        let released = device.event(false)?;
        Ok(BounceSlot {
            pinned,
            dst,
            done,
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
    pub fn submit(&mut self, len: usize) -> Result<()> {
        self.wait()?;
        // Do not overwrite device memory a consumer stream may still read
        // (a never-recorded event is already complete).
        self.stream.wait_event(&self.released)?;
        self.check_widen_len(len)?;
        self.dst
            .copy_from_pinned_async(0, &self.pinned, len, &self.stream)?;
        self.finish(len)
    }

    /// Direct path (GPUDirect RDMA): blocks until the device buffer may be
    /// overwritten by the NIC: the last submitted work on it has completed
    /// and the consumer released the previous batch
    /// ([`BounceSlot::release_after`]). Call before the RDMA reads.
    pub fn begin_direct(&mut self) -> Result<()> {
        self.wait()?;
        self.released.synchronize()
    }

    /// Direct path: the NIC has written the first `len` bytes of the device
    /// buffer (every read completed). Widens them if widening is on and
    /// records the ready event on the stream; no copy. Returns at once.
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
        self.finish(len)
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

    /// Records that the consumer's work on this batch is enqueued on
    /// `consumer`: the next copy into this slot waits (on the GPU, without
    /// blocking the host) until that work has run. Call before releasing
    /// the batch when the consumer reads it asynchronously.
    pub fn release_after(&self, consumer: &Stream) -> Result<()> {
        self.released.record(consumer)
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
        let (ptr, dtype) = match &self.widen {
            None => (self.dst.device_ptr(), dtype),
            Some(w) if w.from == dtype => (w.out.device_ptr(), DType::I64),
            Some(w) => {
                return Err(CudaError::InvalidArgument {
                    what: format!(
                        "batch of {dtype:?} from a slot widening {:?} tokens",
                        w.from
                    ),
                })
            }
        };
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

impl Drop for BounceSlot {
    fn drop(&mut self) {
        // The pinned source must outlive the copy reading it.
        if let Err(e) = self.wait() {
            tracing::warn!("dropping a bounce slot: {e}");
        }
    }
}
