//! Owned CUDA resources: pinned host buffers, device buffers, streams and
//! events. Each holds its [`Device`] so the context outlives it, and frees
//! itself in `Drop` (logging, never panicking, on failure).
#![allow(unsafe_code)]

use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::ffi::{self, CUdeviceptr, CUevent, CUstream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Pinned (page-locked) host memory from `cuMemHostAlloc`: transports write
/// into [`PinnedBuffer::as_mut_slice`], RDMA registers
/// [`PinnedBuffer::addr`]/[`PinnedBuffer::len`], and the GPU copies from it
/// asynchronously.
pub struct PinnedBuffer {
    device: Device,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is uniquely owned memory; moving the owner between
// threads is fine and shared access only hands out `&[u8]`.
unsafe impl Send for PinnedBuffer {}
// SAFETY: `&PinnedBuffer` only allows reads.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    pub(crate) fn new(device: &Device, len: usize) -> Result<PinnedBuffer> {
        if len == 0 {
            return Err(CudaError::InvalidArgument {
                what: "a pinned buffer of 0 bytes".to_string(),
            });
        }
        device.bind()?;
        let p = ffi::host_alloc(len).map_err(|e| {
            device.err(
                "cuMemHostAlloc",
                &format!("pinning {len} bytes of host memory"),
                e,
            )
        })?;
        let ptr = NonNull::new(p).ok_or_else(|| CudaError::InvalidArgument {
            what: "cuMemHostAlloc returned null".to_string(),
        })?;
        // Zero it so the slice never exposes uninitialised memory.
        // SAFETY: `ptr` points to `len` writable bytes we own.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Ok(PinnedBuffer {
            device: device.clone(),
            ptr,
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (zero-length buffers are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host virtual address of the first byte (for `ibv_reg_mr`).
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live, initialised allocation of `len` bytes owned
        // by self; the borrow of self keeps it alive and unaliased by `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable (where a transport writes).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`, and `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The device this buffer was pinned for.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_err() {
            tracing::warn!(
                "GPU {}: cannot bind context to free pinned buffer",
                self.device.index()
            );
        }
        // SAFETY: `ptr` came from cuMemHostAlloc and is not used after this.
        if let Err(e) = unsafe { ffi::host_free(self.ptr.as_ptr()) } {
            tracing::warn!(
                "GPU {}: cuMemFreeHost failed: {}",
                self.device.index(),
                e.name()
            );
        }
    }
}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedBuffer({} bytes at {:#x})", self.len, self.addr())
    }
}

/// Device memory from `cuMemAlloc`.
pub struct DeviceBuffer {
    device: Device,
    ptr: CUdeviceptr,
    len: usize,
}

impl DeviceBuffer {
    pub(crate) fn new(device: &Device, len: usize, what: &str) -> Result<DeviceBuffer> {
        if len == 0 {
            return Err(CudaError::InvalidArgument {
                what: format!("a device buffer of 0 bytes for {what}"),
            });
        }
        device.bind()?;
        match ffi::mem_alloc(len) {
            Ok(ptr) => Ok(DeviceBuffer {
                device: device.clone(),
                ptr,
                len,
            }),
            Err(e) if e.is_out_of_memory() => {
                let (free, total) = ffi::mem_get_info().unwrap_or((0, device.info().total_mem));
                Err(CudaError::OutOfMemory {
                    device: device.index(),
                    requested: len,
                    free,
                    total,
                    what: what.to_string(),
                })
            }
            Err(e) => Err(device.err(
                "cuMemAlloc",
                &format!("allocating {len} bytes for {what}"),
                e,
            )),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (zero-length buffers are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device virtual address of the first byte.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The device holding this memory.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn check_range(&self, offset: usize, len: usize, what: &str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(CudaError::InvalidArgument {
                what: format!(
                    "{what}: range [{offset}, +{len}) exceeds the {}-byte device buffer on GPU {}",
                    self.len,
                    self.device.index()
                ),
            }),
        }
    }

    /// Copies `src` to `offset` synchronously (`cuMemcpyHtoD`).
    pub fn copy_from_host(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check_range(offset, src.len(), "host-to-device copy")?;
        self.device.bind()?;
        // SAFETY: the range was checked against this live allocation.
        unsafe { ffi::memcpy_htod(self.ptr + offset as u64, src) }.map_err(|e| {
            self.device.err(
                "cuMemcpyHtoD",
                &format!("copying {} bytes to the device", src.len()),
                e,
            )
        })
    }

    /// Copies the first `len` bytes of this buffer into the pinned buffer
    /// `dst` on `stream` (after the work already enqueued there) and waits
    /// for the copy: only `stream` is waited for, not the device's other
    /// streams (unlike [`copy_to_host`](Self::copy_to_host)).
    pub fn copy_to_pinned(
        &self,
        dst: &mut PinnedBuffer,
        len: usize,
        stream: &Stream,
    ) -> Result<()> {
        self.check_range(0, len, "async device-to-host copy")?;
        if len > dst.len() {
            return Err(CudaError::InvalidArgument {
                what: format!(
                    "device-to-host copy of {len} bytes into a {}-byte pinned buffer",
                    dst.len()
                ),
            });
        }
        self.device.bind()?;
        // SAFETY: both ranges are checked against live allocations; `dst`
        // is borrowed exclusively until the stream is synchronized below,
        // so nothing touches it while the copy runs.
        unsafe {
            ffi::memcpy_dtoh_async(dst.as_mut_slice().as_mut_ptr(), self.ptr, len, stream.raw)
        }
        .map_err(|e| {
            self.device.err(
                "cuMemcpyDtoHAsync",
                &format!("copying {len} bytes back to pinned memory"),
                e,
            )
        })?;
        stream.synchronize()
    }

    /// Copies `dst.len()` bytes at `offset` to `dst` synchronously (`cuMemcpyDtoH`).
    pub fn copy_to_host(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check_range(offset, dst.len(), "device-to-host copy")?;
        self.device.bind()?;
        // SAFETY: the range was checked against this live allocation.
        unsafe { ffi::memcpy_dtoh(dst, self.ptr + offset as u64) }.map_err(|e| {
            self.device.err(
                "cuMemcpyDtoH",
                &format!("copying {} bytes back", dst.len()),
                e,
            )
        })
    }

    /// Fills the whole buffer with `value` (synchronously).
    pub fn fill(&self, value: u8) -> Result<()> {
        self.device.bind()?;
        // SAFETY: the whole live allocation.
        unsafe { ffi::memset_d8(self.ptr, value, self.len) }
            .map_err(|e| self.device.err("cuMemsetD8", "filling a device buffer", e))
    }

    /// Enqueues a copy of `src` (pinned memory) to `offset` on `stream`.
    /// The pinned buffer must not be written, and this buffer not read,
    /// until an event recorded after this on `stream` completes; the
    /// [`crate::BounceSlot`] enforces that.
    pub fn copy_from_pinned_async(
        &self,
        offset: usize,
        src: &PinnedBuffer,
        len: usize,
        stream: &Stream,
    ) -> Result<()> {
        self.check_range(offset, len, "async host-to-device copy")?;
        if len > src.len() {
            return Err(CudaError::InvalidArgument {
                what: format!(
                    "async copy of {len} bytes from a {}-byte pinned buffer",
                    src.len()
                ),
            });
        }
        self.device.bind()?;
        // SAFETY: both ranges are checked against live allocations; the
        // callers keep `src` alive and unwritten until the copy's event
        // completes (BounceSlot waits on it before handing out the slice or
        // dropping), and pinned memory makes the copy truly asynchronous.
        unsafe {
            ffi::memcpy_htod_async(
                self.ptr + offset as u64,
                src.as_slice().as_ptr(),
                len,
                stream.raw,
            )
        }
        .map_err(|e| {
            self.device.err(
                "cuMemcpyHtoDAsync",
                &format!("enqueueing a {len}-byte copy"),
                e,
            )
        })
    }

    /// Enqueues a device-to-device copy of `len` bytes from `src` at
    /// `src_offset` to this buffer at `offset`, on `stream`. Both buffers
    /// must stay alive until the copy completes (e.g. an event recorded on
    /// `stream` after it).
    pub fn copy_from_device_async(
        &self,
        offset: usize,
        src: &DeviceBuffer,
        src_offset: usize,
        len: usize,
        stream: &Stream,
    ) -> Result<()> {
        self.check_range(offset, len, "async device-to-device copy (destination)")?;
        src.check_range(src_offset, len, "async device-to-device copy (source)")?;
        self.device.bind()?;
        // SAFETY: both ranges are checked against live allocations; keeping
        // them alive until the copy completes is the documented contract.
        unsafe {
            ffi::memcpy_dtod_async(
                self.ptr + offset as u64,
                src.ptr + src_offset as u64,
                len,
                stream.raw,
            )
        }
        .map_err(|e| {
            self.device.err(
                "cuMemcpyDtoDAsync",
                &format!("enqueueing a {len}-byte device copy"),
                e,
            )
        })
    }

    /// Exports `[offset, offset+len)` as a dmabuf for `ibv_reg_dmabuf_mr`.
    /// The exported range is widened to host pages; the returned
    /// [`DmaBufRange::fd_offset`] locates `offset` inside it.
    pub fn export_dmabuf(&self, offset: usize, len: usize) -> Result<DmaBufRange> {
        self.check_range(offset, len, "dmabuf export")?;
        if !self.device.info().dmabuf_supported {
            return Err(CudaError::DmaBufUnsupported {
                device: self.device.index(),
                why: "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0".to_string(),
            });
        }
        let page = page_size() as u64;
        let start = self.ptr + offset as u64;
        let aligned = start & !(page - 1);
        let end = (start + len as u64).div_ceil(page) * page;
        let alloc_end = (self.ptr + self.len as u64).div_ceil(page) * page;
        if aligned < self.ptr || end > alloc_end {
            // cuMemAlloc returns page-aligned memory, so this only fires for odd allocators.
            return Err(CudaError::InvalidArgument {
                what: format!("dmabuf range [{aligned:#x}, {end:#x}) is not page-aligned inside the allocation"),
            });
        }
        self.device.bind()?;
        // SAFETY: [aligned, end) lies within this live allocation (checked above,
        // cuMemAlloc rounds allocations to at least a page).
        let fd = unsafe { ffi::dmabuf_fd(aligned, (end - aligned) as usize) }.map_err(|e| {
            CudaError::DmaBufUnsupported {
                device: self.device.index(),
                why: format!(
                    "cuMemGetHandleForAddressRange(DMA_BUF_FD) refused: {}",
                    e.name()
                ),
            }
        })?;
        if fd < 0 {
            return Err(CudaError::DmaBufUnsupported {
                device: self.device.index(),
                why: format!("cuMemGetHandleForAddressRange returned fd {fd}"),
            });
        }
        // SAFETY: the driver handed us a fresh file descriptor we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(DmaBufRange {
            fd,
            fd_offset: start - aligned,
            len: len as u64,
            iova: start,
        })
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.device.bind().is_err() {
            tracing::warn!(
                "GPU {}: cannot bind context to free device buffer",
                self.device.index()
            );
        }
        // SAFETY: `ptr` came from cuMemAlloc in this context and is not used after this.
        if let Err(e) = unsafe { ffi::mem_free(self.ptr) } {
            tracing::warn!(
                "GPU {}: cuMemFree failed: {}",
                self.device.index(),
                e.name()
            );
        }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer(GPU {}, {} bytes at {:#x})",
            self.device.index(),
            self.len,
            self.ptr
        )
    }
}

/// A dmabuf export of device memory: the arguments of
/// `ibv_reg_dmabuf_mr(pd, fd_offset, len, iova, fd, access)`.
#[derive(Debug)]
pub struct DmaBufRange {
    /// The dmabuf file descriptor (closed on drop; keep it until the MR is deregistered).
    pub fd: OwnedFd,
    /// Offset of the first wanted byte inside the dmabuf.
    pub fd_offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Device virtual address of the first wanted byte (use as the MR's iova).
    pub iova: u64,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// A non-blocking CUDA stream.
pub struct Stream {
    device: Device,
    pub(crate) raw: CUstream,
}

// SAFETY: CUDA streams are thread-safe handles; we never dereference them.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Stream {
    pub(crate) fn new(device: &Device) -> Result<Stream> {
        device.bind()?;
        let raw = ffi::stream_create()
            .map_err(|e| device.err("cuStreamCreate", "creating a stream", e))?;
        Ok(Stream {
            device: device.clone(),
            raw,
        })
    }

    /// The raw `CUstream` handle as an integer (what
    /// `torch.cuda.ExternalStream(ptr)` takes).
    pub fn handle(&self) -> u64 {
        self.raw as u64
    }

    /// Blocks until all work enqueued so far has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.device.bind()?;
        // SAFETY: `raw` is live for as long as self.
        unsafe { ffi::stream_synchronize(self.raw) }.map_err(|e| {
            self.device
                .err("cuStreamSynchronize", "waiting for a stream", e)
        })
    }

    /// Makes later work on this stream wait for `event` (no host blocking).
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        self.device.bind()?;
        // SAFETY: both handles are live for the call.
        unsafe { ffi::stream_wait_event(self.raw, event.raw) }
            .map_err(|e| self.device.err("cuStreamWaitEvent", "ordering streams", e))
    }

    /// The device of this stream.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: `raw` came from cuStreamCreate and is not used after this;
        // the driver lets pending work finish before releasing it.
        if let Err(e) = unsafe { ffi::stream_destroy(self.raw) } {
            tracing::warn!(
                "GPU {}: cuStreamDestroy failed: {}",
                self.device.index(),
                e.name()
            );
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Stream(GPU {}, {:#x})",
            self.device.index(),
            self.handle()
        )
    }
}

/// A CUDA event.
pub struct Event {
    device: Device,
    pub(crate) raw: CUevent,
}

// SAFETY: CUDA events are thread-safe handles; we never dereference them.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    pub(crate) fn new(device: &Device, timing: bool) -> Result<Event> {
        device.bind()?;
        let raw = ffi::event_create(timing)
            .map_err(|e| device.err("cuEventCreate", "creating an event", e))?;
        Ok(Event {
            device: device.clone(),
            raw,
        })
    }

    /// The raw `CUevent` handle as an integer.
    pub fn handle(&self) -> u64 {
        self.raw as u64
    }

    /// Records the event after the work enqueued so far on `stream`.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        self.device.bind()?;
        // SAFETY: both handles are live for the call.
        unsafe { ffi::event_record(self.raw, stream.raw) }
            .map_err(|e| self.device.err("cuEventRecord", "recording an event", e))
    }

    /// Records the event after the work enqueued so far on the raw stream
    /// `stream` (a `CUstream` as an integer, e.g. a consumer's stream from
    /// PyTorch; 0, 0x1 `CU_STREAM_LEGACY` and 0x2 `CU_STREAM_PER_THREAD`
    /// name the default streams). The stream must belong to this device's
    /// primary context and be live for the call; the driver reports handles
    /// it can tell are wrong as an error.
    pub fn record_raw(&self, stream: u64) -> Result<()> {
        self.device.bind()?;
        // SAFETY: the event is live for the call. The stream handle is the
        // consumer's (documented contract above: a live stream of this
        // context or a special default-stream handle); it is passed through
        // to the driver, never dereferenced here.
        unsafe { ffi::event_record(self.raw, ffi::raw_stream(stream)) }.map_err(|e| {
            self.device.err(
                "cuEventRecord",
                &format!("recording an event on consumer stream {stream:#x}"),
                e,
            )
        })
    }

    /// Makes later work on the raw stream `stream` wait (on the GPU, without
    /// blocking the host) for the work before this event's last record
    /// (`cuStreamWaitEvent(stream, event)`). The stream contract is that of
    /// [`Event::record_raw`].
    pub fn wait_on_raw(&self, stream: u64) -> Result<()> {
        self.device.bind()?;
        // SAFETY: as in `record_raw`: the event is live, the stream handle is
        // passed through to the driver under the documented contract.
        unsafe { ffi::stream_wait_event(ffi::raw_stream(stream), self.raw) }.map_err(|e| {
            self.device.err(
                "cuStreamWaitEvent",
                &format!("ordering consumer stream {stream:#x} after an event"),
                e,
            )
        })
    }

    /// True when the recorded work has completed (true for a never-recorded event).
    pub fn is_complete(&self) -> Result<bool> {
        self.device.bind()?;
        // SAFETY: `raw` is live.
        unsafe { ffi::event_query(self.raw) }
            .map_err(|e| self.device.err("cuEventQuery", "polling an event", e))
    }

    /// Blocks until the recorded work has completed.
    pub fn synchronize(&self) -> Result<()> {
        self.device.bind()?;
        // SAFETY: `raw` is live.
        unsafe { ffi::event_synchronize(self.raw) }.map_err(|e| {
            self.device
                .err("cuEventSynchronize", "waiting for an event", e)
        })
    }

    /// Milliseconds between `start` and this event (both timing events, both completed).
    pub fn elapsed_ms(&self, start: &Event) -> Result<f32> {
        self.device.bind()?;
        // SAFETY: both handles are live.
        unsafe { ffi::event_elapsed_ms(start.raw, self.raw) }
            .map_err(|e| self.device.err("cuEventElapsedTime", "timing", e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: `raw` came from cuEventCreate and is not used after this.
        if let Err(e) = unsafe { ffi::event_destroy(self.raw) } {
            tracing::warn!(
                "GPU {}: cuEventDestroy failed: {}",
                self.device.index(),
                e.name()
            );
        }
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Event(GPU {}, {:#x})",
            self.device.index(),
            self.handle()
        )
    }
}
