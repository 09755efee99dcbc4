//! One CUDA device and its primary context; the factory for buffers,
//! streams and events.

use crate::error::{CudaError, Result};
use crate::ffi::{self, CUcontext, CUdevice, DriverError};
use crate::flush::{direct_flush_decision, DirectFlush};
use crate::memory::{DeviceBuffer, Event, PinnedBuffer, Stream};
use crate::path::GpuDirectCaps;
use crate::probe::{check_device_index, parse_device_index, probe, CudaProbe, DeviceInfo};
use std::sync::{Arc, OnceLock};

/// Environment variable the launcher sets to this process's GPU on the node.
pub const LOCAL_RANK_ENV: &str = "LOCAL_RANK";

/// A CUDA device with its retained primary context (the one PyTorch uses).
/// Cheap to clone; the context is released when the last clone goes.
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

struct DeviceInner {
    info: DeviceInfo,
    raw: CUdevice,
    ctx: CUcontext,
    peer_mem_loaded: bool,
    /// GPUDirect RDMA write flushing, decided on first use.
    direct_flush: OnceLock<DirectFlush>,
}

// SAFETY: a CUcontext is a handle the driver lets any thread make current;
// DeviceInner never dereferences it.
#[allow(unsafe_code)]
unsafe impl Send for DeviceInner {}
// SAFETY: as above; all methods only pass the handle to thread-safe driver calls.
#[allow(unsafe_code)]
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        if let Err(e) = ffi::primary_ctx_release(self.raw) {
            tracing::warn!(
                "GPU {}: cuDevicePrimaryCtxRelease failed: {}",
                self.info.index,
                e.name()
            );
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("index", &self.inner.info.index)
            .field("name", &self.inner.info.name)
            .finish()
    }
}

impl Device {
    /// Opens device `index`. `CudaError::NotAvailable` without CUDA,
    /// `CudaError::NoSuchDevice` for an index beyond the GPUs present.
    pub fn open(index: usize) -> Result<Device> {
        Device::open_from(index, "argument")
    }

    /// Opens the device named by `LOCAL_RANK` (0 when unset, with a log line).
    pub fn from_local_rank() -> Result<Device> {
        if let CudaProbe::NotAvailable { reason } = probe() {
            return Err(CudaError::NotAvailable {
                reason: reason.clone(),
            });
        }
        match std::env::var(LOCAL_RANK_ENV) {
            Ok(v) => {
                let index = parse_device_index(LOCAL_RANK_ENV, &v)?;
                Device::open_from(index, &format!("{LOCAL_RANK_ENV}={index}"))
            }
            Err(_) => {
                tracing::info!("{LOCAL_RANK_ENV} is not set: using GPU 0");
                Device::open_from(0, &format!("{LOCAL_RANK_ENV} unset"))
            }
        }
    }

    /// Opens device `index`; `origin` says where the index came from, for errors.
    pub fn open_from(index: usize, origin: &str) -> Result<Device> {
        let sys = match probe() {
            CudaProbe::Available(s) => s,
            CudaProbe::NotAvailable { reason } => {
                return Err(CudaError::NotAvailable {
                    reason: reason.clone(),
                })
            }
        };
        check_device_index(index, sys.devices.len(), origin)?;
        let info = sys.devices[index].clone();
        let place = format!("GPU {index}");
        let raw =
            ffi::device_get(index).map_err(|e| driver(&place, "cuDeviceGet", "opening", e))?;
        let ctx = ffi::primary_ctx_retain(raw).map_err(|e| {
            driver(
                &place,
                "cuDevicePrimaryCtxRetain",
                "creating its context",
                e,
            )
        })?;
        let dev = Device {
            inner: Arc::new(DeviceInner {
                info,
                raw,
                ctx,
                peer_mem_loaded: sys.peer_mem_module.is_some(),
                direct_flush: OnceLock::new(),
            }),
        };
        dev.bind()?;
        tracing::debug!(
            "opened GPU {index} ({}, {} MiB, from {origin})",
            dev.inner.info.name,
            dev.inner.info.total_mem >> 20
        );
        Ok(dev)
    }

    /// Driver ordinal.
    pub fn index(&self) -> usize {
        self.inner.info.index
    }

    /// Static facts from the probe.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// GPUDirect capabilities for [`crate::choose_path`].
    pub fn gpudirect_caps(&self) -> GpuDirectCaps {
        self.inner.info.gpudirect_caps(self.inner.peer_mem_loaded)
    }

    /// Makes this device's context current on the calling thread (cheap;
    /// every operation of this crate does it first).
    pub fn bind(&self) -> Result<()> {
        ffi::ctx_set_current(self.inner.ctx)
            .map_err(|e| self.err("cuCtxSetCurrent", "binding the context to this thread", e))
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        ffi::mem_get_info().map_err(|e| self.err("cuMemGetInfo", "reading free memory", e))
    }

    /// Allocates `bytes` of device memory (`cuMemAlloc`); out-of-memory is
    /// [`CudaError::OutOfMemory`] naming `what`.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        DeviceBuffer::new(self, bytes, what)
    }

    /// Allocates `bytes` of pinned host memory (`cuMemHostAlloc`).
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedBuffer> {
        PinnedBuffer::new(self, bytes)
    }

    /// Creates a non-blocking stream.
    pub fn stream(&self) -> Result<Stream> {
        Stream::new(self)
    }

    /// Creates an event; `timing` enables [`Event::elapsed_ms`].
    pub fn event(&self, timing: bool) -> Result<Event> {
        Event::new(self, timing)
    }

    /// How GPUDirect RDMA writes into this device are made visible before a
    /// directly filled batch is declared ready: from the device's
    /// write-ordering and flush-options attributes, queried once per device
    /// (the decision is logged at debug level, a missing host flush as a
    /// warning, once).
    pub fn direct_flush(&self) -> DirectFlush {
        *self.inner.direct_flush.get_or_init(|| {
            let index = self.index();
            let attr = |a| ffi::device_attribute(self.inner.raw, a);
            let ordering = attr(ffi::Attr::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING);
            let options = attr(ffi::Attr::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS);
            let shown = |r: &std::result::Result<i32, DriverError>| match r {
                Ok(v) => v.to_string(),
                Err(e) => format!("unreadable ({})", e.name()),
            };
            let decision = direct_flush_decision(
                *ordering.as_ref().unwrap_or(&0),
                *options.as_ref().unwrap_or(&0),
            );
            tracing::debug!(
                "GPU {index}: GPUDirect RDMA writes ordering {}, flush options {}: {}",
                shown(&ordering),
                shown(&options),
                match decision {
                    DirectFlush::NotNeeded =>
                        "ordered for the owning GPU, no flush after direct fills",
                    DirectFlush::Host =>
                        "cuFlushGPUDirectRDMAWrites(current ctx, to owner) after each direct fill",
                    DirectFlush::Unavailable => "not ordered and no host flush",
                }
            );
            if decision == DirectFlush::Unavailable {
                tracing::warn!(
                    "GPU {index}: GPUDirect RDMA writes are not ordered for the GPU (ordering {}) and cuFlushGPUDirectRDMAWrites from the host is not offered (flush options {}): batches the NICs write directly may be read before every write is visible",
                    shown(&ordering),
                    shown(&options)
                );
            }
            decision
        })
    }

    /// Makes GPUDirect RDMA writes that completed so far visible to CUDA
    /// work enqueued afterwards, where [`Device::direct_flush`] says a flush
    /// is needed and possible; otherwise nothing.
    pub fn flush_direct_writes(&self) -> Result<()> {
        if self.direct_flush() != DirectFlush::Host {
            return Ok(());
        }
        self.bind()?;
        ffi::flush_gpudirect_rdma_writes_to_owner().map_err(|e| {
            self.err(
                "cuFlushGPUDirectRDMAWrites",
                "flushing GPUDirect RDMA writes before a batch is ready",
                e,
            )
        })
    }

    pub(crate) fn err(&self, call: &'static str, what: &str, e: DriverError) -> CudaError {
        driver(&format!("GPU {}", self.index()), call, what, e)
    }
}

pub(crate) fn driver(place: &str, call: &'static str, what: &str, e: DriverError) -> CudaError {
    CudaError::Driver {
        place: place.to_string(),
        call,
        what: what.to_string(),
        code: e.name(),
    }
}
