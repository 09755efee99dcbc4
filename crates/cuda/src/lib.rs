//! CUDA destinations for seqfeed: where a trainer rank's batches land.
//!
//! * [`probe`] finds the driver without ever panicking: `cudarc` panics on
//!   first use without `libcuda`, so the library is looked up first and "no
//!   CUDA" is the normal [`CudaProbe::NotAvailable`] state (callers then use
//!   host destinations).
//! * [`Device::from_local_rank`] opens the GPU named by `LOCAL_RANK` (its
//!   primary context, shared with PyTorch); an index beyond the GPUs present
//!   is [`CudaError::NoSuchDevice`].
//! * [`choose_path`] decides, from the probe and the transport's
//!   capabilities, how bytes reach device memory: GPUDirect through a dmabuf
//!   export ([`DeviceBuffer::export_dmabuf`]), then peer memory
//!   (`nvidia_peermem`), then a pinned bounce buffer ([`BounceSlot`]) whose
//!   async copy on the rank's stream completes an event when the batch is
//!   ready.
//! * A [`DeviceBatch`] carries device pointer, stream, event, shape and
//!   dtype, and converts to a DLPack [`DlpackTensor`] so PyTorch can wrap it
//!   without a copy.
//! * Ownership of step memory: a slot is reused only after every view is
//!   dropped and, on CUDA, after an event recorded on each consumer stream
//!   has completed ([`BounceSlot::release`], called by the loader through
//!   `HostBuffer::release` with the streams registered by
//!   `Batch::record_stream` or [`batch_ready_on`]).
//! * GPUDirect fills flush the NIC's writes before the batch is declared
//!   ready where the device needs it ([`Device::direct_flush`]).
//! * [`LoaderDestination::select`] plugs this into `seqfeed-loader`: the
//!   loader's ring of step buffers becomes [`CudaStepBuffer`]s (heap buffers
//!   without CUDA), and [`device_batch`] gives a batch's device side.
//! * [`Widener`] widens u16/u32 tokens to int64 on the device with a kernel
//!   from `native/widen_tokens.cu`, compiled at run time by NVRTC.
//!
//! ```no_run
//! use seqfeed_cuda::{probe, BounceSlot, DType, Device};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), seqfeed_cuda::CudaError> {
//! if let Some(reason) = probe().unavailable_reason() {
//!     println!("host destinations: {reason}");
//!     return Ok(());
//! }
//! let dev = Device::from_local_rank()?;
//! let stream = Arc::new(dev.stream()?);
//! let mut slot = BounceSlot::new(&dev, stream, 4 * 2048 * 2)?;
//! slot.host_mut()?.fill(7); // a transport writes here
//! slot.submit(4 * 2048 * 2)?;
//! let batch = slot.batch(&[4, 2048], DType::U16)?;
//! slot.wait()?;
//! println!("batch at {:#x} on GPU {}", batch.ptr, batch.device);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

mod batch;
mod device;
pub mod dlpack;
mod error;
mod ffi;
mod flush;
mod loader_dest;
mod memory;
mod path;
mod probe;
mod widen;

pub use batch::{BounceSlot, DType, DeviceBatch};
pub use device::{Device, LOCAL_RANK_ENV};
pub use dlpack::DlpackTensor;
pub use error::{CudaError, Result};
pub use flush::{direct_flush_decision, DirectFlush};
pub use loader_dest::{
    batch_ready_on, device_batch, CudaBounceAllocator, CudaStepBuffer, LoaderDestination,
};
pub use memory::{DeviceBuffer, DmaBufRange, Event, PinnedBuffer, Stream};
pub use path::{choose_path, DevicePath, GpuDirectCaps, GpuSide, PathChoice, TransportCaps};
pub use probe::{
    check_device_index, parse_device_index, peer_mem_module, probe, CudaProbe, CudaSystem,
    DeviceInfo, DISABLE_ENV, MIN_DRIVER_VERSION,
};
pub use widen::{
    compile_widen_ptx, nvrtc_available, widen_u16_host, Widener, KERNEL_U16, KERNEL_U32,
    WIDEN_SOURCE,
};

/// The GPU side of [`choose_path`] for device `index` from the probe.
pub fn gpu_side(index: usize) -> GpuSide {
    match probe() {
        CudaProbe::NotAvailable { reason } => GpuSide::Absent {
            reason: reason.clone(),
        },
        CudaProbe::Available(sys) => match sys.devices.get(index) {
            Some(d) => GpuSide::Present(d.gpudirect_caps(sys.peer_mem_module.is_some())),
            None => GpuSide::Absent {
                reason: format!(
                    "GPU index {index} is out of range: {} device(s)",
                    sys.devices.len()
                ),
            },
        },
    }
}
