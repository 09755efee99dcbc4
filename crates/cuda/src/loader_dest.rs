//! CUDA step buffers for `seqfeed-loader`: the loader's ring of step buffers
//! lands in device memory.
//!
//! [`LoaderDestination::select`] runs [`choose_path`] for the rank's GPU and
//! the transport, logs the choice, and returns the allocator to hand to
//! `Loader::with_allocator`:
//! * no CUDA: the loader's heap buffers (same code, host batches);
//! * pinned bounce: [`CudaBounceAllocator`]; each [`CudaStepBuffer`] is a
//!   [`BounceSlot`]: the transport writes its pinned memory, the loader's
//!   reader thread calls `HostBuffer::filled`, which enqueues the async copy
//!   on the rank's stream and records the completion event.
//! * dmabuf / peer memory need a transport that reads into registered
//!   device memory; the loader's transports write host slices, so these fall
//!   back to the bounce path with a log line saying so.
//!
//! A consumer gets the device side of a batch with [`device_batch`].

use crate::batch::{BounceSlot, DType, DeviceBatch};
use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::gpu_side;
use crate::memory::Stream;
use crate::path::{choose_path, DevicePath, PathChoice, TransportCaps};
use crate::widen::Widener;
use seqfeed_loader::{Batch, BoxError, BufferAllocator, Dtype, HeapAllocator, HostBuffer};
use std::sync::Arc;

/// Allocates [`CudaStepBuffer`]s on one device, all copying on one stream
/// (one stream per rank).
#[derive(Debug, Clone)]
pub struct CudaBounceAllocator {
    device: Device,
    stream: Arc<Stream>,
    widen: Option<(Arc<Widener>, DType)>,
}

impl CudaBounceAllocator {
    /// An allocator for `device` with a fresh stream.
    pub fn new(device: &Device) -> Result<CudaBounceAllocator> {
        Ok(CudaBounceAllocator {
            device: device.clone(),
            stream: Arc::new(device.stream()?),
            widen: None,
        })
    }

    /// Like [`CudaBounceAllocator::new`], and every step of `token` ids is
    /// widened to int64 on the device (NVRTC kernel from `native/`); batches
    /// then describe int64 buffers. Fails when NVRTC is missing.
    pub fn with_widening(device: &Device, token: Dtype) -> Result<CudaBounceAllocator> {
        let mut a = CudaBounceAllocator::new(device)?;
        a.widen = Some((Arc::new(Widener::new(device)?), dtype_of(token)));
        Ok(a)
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The rank's copy stream.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }
}

impl BufferAllocator for CudaBounceAllocator {
    fn name(&self) -> &str {
        "cuda-bounce"
    }

    fn allocate(&self, len: usize) -> std::result::Result<Box<dyn HostBuffer>, BoxError> {
        let mut slot = BounceSlot::new(&self.device, self.stream.clone(), len)?;
        if let Some((w, from)) = &self.widen {
            slot = slot.with_widening(w.clone(), *from)?;
        }
        Ok(Box::new(CudaStepBuffer { slot }))
    }
}

/// A loader step buffer in device memory, filled through pinned memory.
#[derive(Debug)]
pub struct CudaStepBuffer {
    slot: BounceSlot,
}

impl CudaStepBuffer {
    /// The bounce slot (device buffer, copy event).
    pub fn slot(&self) -> &BounceSlot {
        &self.slot
    }

    /// The CUDA step buffer behind a loader batch, if it has one.
    pub fn of(batch: &Batch) -> Option<&CudaStepBuffer> {
        batch.buffer()?.backend()?.downcast_ref::<CudaStepBuffer>()
    }
}

impl HostBuffer for CudaStepBuffer {
    fn bytes(&self) -> &[u8] {
        self.slot.host()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.slot.host_mut_logged()
    }

    fn filled(&mut self, len: usize) -> std::result::Result<(), BoxError> {
        self.slot.submit(len)?;
        Ok(())
    }

    fn backend(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// The device side of a loader batch: `None` for host batches. Make the
/// consuming stream wait on [`DeviceBatch::event`] before reading.
pub fn device_batch(batch: &Batch) -> Option<Result<DeviceBatch>> {
    let buf = CudaStepBuffer::of(batch)?;
    Some(buf.slot.batch(&batch.shape(), dtype_of(batch.dtype())))
}

fn dtype_of(d: Dtype) -> DType {
    match d {
        Dtype::U16 => DType::U16,
        Dtype::U32 => DType::U32,
    }
}

/// The step-buffer destination picked for a loader.
pub struct LoaderDestination {
    /// The allocator to pass to `Loader::with_allocator`.
    pub allocator: Arc<dyn BufferAllocator>,
    /// The path in use.
    pub path: DevicePath,
    /// The decision, with reasons (already logged).
    pub choice: PathChoice,
    /// The device, when the path uses one.
    pub device: Option<Device>,
}

impl std::fmt::Debug for LoaderDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoaderDestination")
            .field("allocator", &self.allocator.name())
            .field("path", &self.path)
            .field("device", &self.device)
            .finish()
    }
}

impl LoaderDestination {
    /// Picks the destination for the GPU named by `LOCAL_RANK` (see
    /// [`Device::from_local_rank`]) and a transport with `caps`; `force`
    /// restricts the choice (an option such as `--dest bounce`).
    ///
    /// Without CUDA this is the heap allocator, not an error. A bad
    /// `LOCAL_RANK` or a device index beyond the GPUs present is an error.
    pub fn select(caps: &TransportCaps, force: Option<DevicePath>) -> Result<LoaderDestination> {
        LoaderDestination::select_with(caps, force, None)
    }

    /// Like [`LoaderDestination::select`]; with `widen = Some(token dtype)`
    /// device batches are widened to int64 on the GPU (an error when NVRTC
    /// is missing; host destinations are never widened).
    pub fn select_with(
        caps: &TransportCaps,
        force: Option<DevicePath>,
        widen: Option<Dtype>,
    ) -> Result<LoaderDestination> {
        let device = match Device::from_local_rank() {
            Ok(d) => Some(d),
            Err(e) if e.is_not_available() => None,
            Err(e) => return Err(e),
        };
        let side = match &device {
            Some(d) => gpu_side(d.index()),
            None => gpu_side(0),
        };
        let choice =
            choose_path(&side, caps, force).map_err(|what| CudaError::InvalidArgument { what })?;
        choice.log();
        let mut path = choice.path();
        loop {
            match (path, &device) {
                (DevicePath::Host, _) | (_, None) => {
                    return Ok(LoaderDestination {
                        allocator: Arc::new(HeapAllocator),
                        path: DevicePath::Host,
                        choice,
                        device: None,
                    })
                }
                (DevicePath::PinnedBounce, Some(d)) => {
                    let alloc = match widen {
                        Some(token) => CudaBounceAllocator::with_widening(d, token)?,
                        None => CudaBounceAllocator::new(d)?,
                    };
                    return Ok(LoaderDestination {
                        allocator: Arc::new(alloc),
                        path,
                        choice,
                        device: device.clone(),
                    });
                }
                (DevicePath::DmaBuf | DevicePath::PeerMem, Some(_)) => {
                    let next = choice
                        .fallback_after(path)
                        .unwrap_or(DevicePath::PinnedBounce);
                    tracing::warn!(
                        "device destination {path} is not wired into the loader's transports (they write host memory); falling back to {next}"
                    );
                    path = next;
                }
            }
        }
    }
}
