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
//! * dmabuf / peer memory (GPUDirect RDMA): the same [`CudaStepBuffer`]s
//!   also offer their device memory ([`HostBuffer::device_regions`]: a dmabuf
//!   export of it, then its device pointer for a peer-memory registration,
//!   in the order of [`PathChoice::direct_chain`]). The loader registers the
//!   first one every node's transport accepts; each step is then read by the
//!   NICs straight into device memory and the ready event is recorded after
//!   the reads (no copy). A refusal (rxe has no dmabuf MRs; without
//!   `nvidia_peermem` the kernel refuses a device pointer) is logged with its
//!   reason and the next path is used, ending at the pinned bounce buffer,
//!   which every buffer keeps for that purpose.
//!
//! A consumer gets the device side of a batch (one micro-batch of the step
//! in the buffer) with [`device_batch`], and orders its stream after the
//! batch's arrival with [`batch_ready_on`] (what a DLPack
//! `__dlpack__(stream=s)` does).
//!
//! Ownership: a slot is reused only after every view is dropped and, on
//! CUDA, after an event recorded on each consumer stream has completed. The
//! loader calls [`HostBuffer::release`] when the last view of a step goes,
//! with the streams the consumer registered (`Batch::record_stream`;
//! [`batch_ready_on`] registers its stream too). [`BounceSlot::release`]
//! then orders the next copy into the slot (and a direct fill's
//! `begin_direct`) after those streams' work, without blocking the
//! consumer's thread.

use crate::batch::{BounceSlot, DType, DeviceBatch};
use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::gpu_side;
use crate::memory::{DmaBufRange, Stream};
use crate::path::{choose_path, DevicePath, PathChoice, TransportCaps};
use crate::widen::Widener;
use seqfeed_loader::{
    Batch, BoxError, BufferAllocator, DeviceRegion, DmaBuf, Dtype, HeapAllocator, HostBuffer,
};
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Allocates [`CudaStepBuffer`]s on one device, all copying on one stream
/// (one stream per rank).
#[derive(Debug, Clone)]
pub struct CudaBounceAllocator {
    device: Device,
    stream: Arc<Stream>,
    widen: Option<(Arc<Widener>, DType)>,
    /// GPUDirect paths whose device regions the buffers offer, best first.
    direct: Vec<DevicePath>,
}

impl CudaBounceAllocator {
    /// An allocator for `device` with a fresh stream.
    pub fn new(device: &Device) -> Result<CudaBounceAllocator> {
        Ok(CudaBounceAllocator {
            device: device.clone(),
            stream: Arc::new(device.stream()?),
            widen: None,
            direct: Vec::new(),
        })
    }

    /// Buffers also offer their device memory for GPUDirect RDMA along
    /// `paths` (best first; [`PathChoice::direct_chain`]): a dmabuf export
    /// for [`DevicePath::DmaBuf`], the device pointer for
    /// [`DevicePath::PeerMem`]. Other paths are ignored.
    pub fn with_direct(mut self, paths: &[DevicePath]) -> CudaBounceAllocator {
        self.direct = paths.iter().copied().filter(|p| p.is_direct()).collect();
        self
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
        let mut direct = self.direct.clone();
        let mut dmabuf = None;
        if direct.contains(&DevicePath::DmaBuf) {
            match slot.device_buffer().export_dmabuf(0, len) {
                Ok(d) => dmabuf = Some(d),
                Err(e) => {
                    direct.retain(|p| *p != DevicePath::DmaBuf);
                    let next = direct.first().map_or("bounce", |p| p.name());
                    tracing::warn!(
                        "device destination dmabuf: exporting the step buffer failed ({e}); falling back to {next}"
                    );
                }
            }
        }
        Ok(Box::new(CudaStepBuffer {
            dmabuf,
            slot,
            direct,
            last_direct: None,
        }))
    }
}

/// A loader step buffer in device memory, filled through pinned memory
/// (bounce) or, where the transports accept its device memory, directly by
/// the NICs (GPUDirect RDMA).
#[derive(Debug)]
pub struct CudaStepBuffer {
    /// The dmabuf export offered for [`DevicePath::DmaBuf`] (its fd stays
    /// open as long as the buffer; the loader unregisters it first).
    dmabuf: Option<DmaBufRange>,
    slot: BounceSlot,
    /// GPUDirect paths offered, best first.
    direct: Vec<DevicePath>,
    /// The GPUDirect path of the step being / last written directly.
    last_direct: Option<DevicePath>,
}

impl CudaStepBuffer {
    /// The bounce slot (device buffer, copy event).
    pub fn slot(&self) -> &BounceSlot {
        &self.slot
    }

    /// How the last step reached device memory: dmabuf / peer memory when
    /// the NICs wrote it directly, else the pinned bounce copy.
    pub fn last_path(&self) -> DevicePath {
        self.last_direct.unwrap_or(DevicePath::PinnedBounce)
    }

    /// The CUDA step buffer behind a loader batch, if it has one.
    pub fn of(batch: &Batch) -> Option<&CudaStepBuffer> {
        batch.buffer()?.backend()?.downcast_ref::<CudaStepBuffer>()
    }

    /// Makes the consumer stream `stream` (a raw `CUstream` of this
    /// device's primary context; 0x1 / 0x2 for the legacy / per-thread
    /// default stream) wait, on the GPU, until the step in this buffer has
    /// arrived (`cuStreamWaitEvent` on the ready event). Binds the device's
    /// context to the calling thread.
    pub fn ready_on(&self, stream: u64) -> Result<()> {
        self.slot.ready_on(stream)
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
        self.last_direct = None;
        Ok(())
    }

    #[allow(unsafe_code)]
    fn device_regions(&self) -> Vec<DeviceRegion> {
        let dev = self.slot.device_buffer();
        self.direct
            .iter()
            .filter_map(|p| match p {
                DevicePath::DmaBuf => self.dmabuf.as_ref().map(|d| {
                    let dmabuf = Some(DmaBuf {
                        fd: d.fd.as_raw_fd(),
                        offset: d.fd_offset,
                    });
                    // SAFETY: `d` is this buffer's own dmabuf export of `d.len` bytes of
                    // its cuMemAlloc allocation at `d.iova`; this buffer owns both the
                    // allocation and the fd and frees them only on drop. The loader, the
                    // one caller, registers the region with transports its reader owns
                    // and drops that reader (every transport, so every MR) before the
                    // ring's buffers; it never makes a Rust reference to device memory,
                    // and `begin_device_fill` waits for the consumer's streams before a
                    // read into it.
                    unsafe { DeviceRegion::new(d.iova, d.len as usize, dmabuf) }
                }),
                DevicePath::PeerMem => {
                    // SAFETY: `dev` is this buffer's own cuMemAlloc allocation of
                    // `dev.len()` bytes at `dev.device_ptr()`, freed only when this
                    // buffer drops; the loader's ordering above holds, and the verbs
                    // transport also asks the driver that the range is device memory
                    // before registering it.
                    let r = unsafe { DeviceRegion::new(dev.device_ptr(), dev.len(), None) };
                    Some(r)
                }
                DevicePath::PinnedBounce | DevicePath::Host => None,
            })
            .collect()
    }

    fn begin_device_fill(&mut self, region: &DeviceRegion) -> std::result::Result<(), BoxError> {
        self.slot.begin_direct()?;
        self.last_direct = Some(if region.dmabuf().is_some() {
            DevicePath::DmaBuf
        } else {
            DevicePath::PeerMem
        });
        Ok(())
    }

    fn filled_device(&mut self, len: usize) -> std::result::Result<(), BoxError> {
        self.slot.complete_direct(len)?;
        Ok(())
    }

    /// Copies a step the NICs wrote into device memory back into the
    /// pinned buffer ([`BounceSlot::copy_back`]), for host-side work on the
    /// reader thread (document boundaries).
    fn copy_back(&mut self, len: usize) -> std::result::Result<bool, BoxError> {
        self.slot.copy_back(len)?;
        Ok(true)
    }

    /// Orders the next write into this buffer (bounce copy or direct fill)
    /// after the consumer's work on `consumer_streams`; see
    /// [`BounceSlot::release`]. Runs on the consumer's thread and binds the
    /// device's context there.
    fn release(&mut self, consumer_streams: &[u64]) -> std::result::Result<(), BoxError> {
        self.slot.release(consumer_streams)?;
        Ok(())
    }

    fn backend(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// The device side of a loader batch (its micro-batch only: the device
/// pointer is offset by `batch.byte_range().start` into the step buffer, or
/// by the matching int64 offset when widening is on); `None` for host
/// batches. Before reading, make the consuming stream wait for it
/// ([`batch_ready_on`], or `cuStreamWaitEvent` on [`DeviceBatch::event`])
/// and register that stream with `batch.record_stream` so the slot is not
/// reused before the reads have run.
pub fn device_batch(batch: &Batch) -> Option<Result<DeviceBatch>> {
    let buf = CudaStepBuffer::of(batch)?;
    Some(
        buf.slot
            .batch_range(batch.byte_range(), &batch.shape(), dtype_of(batch.dtype())),
    )
}

/// Makes the consumer stream `stream` (a raw `CUstream` of the batch's
/// device's primary context; 0x1 / 0x2 for the legacy / per-thread default
/// stream) wait on the GPU until `batch` has arrived, and registers the
/// stream with `batch.record_stream` (a stream that waits for a batch is
/// one that reads it, so the slot's reuse is ordered after it). `None` for
/// host batches. This is what a DLPack producer does for
/// `__dlpack__(stream=s)`.
pub fn batch_ready_on(batch: &Batch, stream: u64) -> Option<Result<()>> {
    let buf = CudaStepBuffer::of(batch)?;
    Some(buf.ready_on(stream).map(|()| batch.record_stream(stream)))
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
    /// The path chosen. For dmabuf / peer memory this is what the buffers
    /// offer; the loader falls back (logged) when a node refuses it, so each
    /// batch says how it arrived ([`CudaStepBuffer::last_path`],
    /// `Batch::filled_directly`).
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
        LoaderDestination::select_for(device, caps, force, widen)
    }

    /// Like [`LoaderDestination::select_with`] for GPU `index` (e.g. from a
    /// `cuda:N` device string) instead of `LOCAL_RANK`. Unlike `select`,
    /// a machine without CUDA is an error here: the caller asked for a GPU.
    pub fn select_on(
        index: usize,
        caps: &TransportCaps,
        force: Option<DevicePath>,
        widen: Option<Dtype>,
    ) -> Result<LoaderDestination> {
        let device = Device::open(index)?;
        LoaderDestination::select_for(Some(device), caps, force, widen)
    }

    fn select_for(
        device: Option<Device>,
        caps: &TransportCaps,
        force: Option<DevicePath>,
        widen: Option<Dtype>,
    ) -> Result<LoaderDestination> {
        let side = match &device {
            Some(d) => gpu_side(d.index()),
            None => gpu_side(0),
        };
        let choice =
            choose_path(&side, caps, force).map_err(|what| CudaError::InvalidArgument { what })?;
        choice.log();
        let path = choice.path();
        let Some(d) = device.as_ref().filter(|_| path != DevicePath::Host) else {
            return Ok(LoaderDestination {
                allocator: Arc::new(HeapAllocator),
                path: DevicePath::Host,
                choice,
                device: None,
            });
        };
        let alloc = match widen {
            Some(token) => CudaBounceAllocator::with_widening(d, token)?,
            None => CudaBounceAllocator::new(d)?,
        };
        // dmabuf / peer memory: the buffers offer their device memory; the
        // loader registers it with every node or falls back (logged).
        let chain = choice.direct_chain();
        if !chain.is_empty() {
            tracing::info!(
                "device destination {path}: step buffers are offered to the transports for GPUDirect RDMA ({}), with the pinned bounce buffer as the fallback when a node refuses",
                chain.iter().map(|p| p.name()).collect::<Vec<_>>().join(", then ")
            );
        }
        Ok(LoaderDestination {
            allocator: Arc::new(alloc.with_direct(&chain)),
            path,
            choice,
            device: device.clone(),
        })
    }
}
