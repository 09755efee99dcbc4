//! The only place that calls the CUDA driver: thin wrappers over `cudarc`'s
//! `sys` bindings (dynamically loaded), returning [`DriverError`] codes.
//!
//! Functions whose only precondition is "the library is loaded and `cuInit`
//! succeeded" are safe here because every caller reaches them through
//! [`crate::Device`], which exists only after [`crate::probe`] found a
//! working driver. Functions that take raw device or host pointers are
//! `unsafe fn` with a `# Safety` section.
#![allow(unsafe_code)]

use cudarc::driver::sys;
use std::ffi::{c_int, c_uint, c_void, CStr};
use std::mem::MaybeUninit;

pub(crate) use sys::{CUcontext, CUdevice, CUdeviceptr, CUevent, CUfunction, CUmodule, CUstream};

/// A failed driver call: its `CUresult` as a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DriverError(pub(crate) sys::CUresult);

impl DriverError {
    /// `CUDA_ERROR_OUT_OF_MEMORY` and friends.
    pub(crate) fn name(&self) -> String {
        format!("{:?}", self.0)
    }

    pub(crate) fn is_out_of_memory(&self) -> bool {
        self.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
    }
}

type R<T> = Result<T, DriverError>;

fn check(r: sys::CUresult) -> R<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(DriverError(r))
    }
}

/// True when the dynamic loader finds a CUDA driver library. Never panics.
pub(crate) fn driver_library_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on candidate library
    // names and closes what it opened; it calls no CUDA function.
    unsafe { sys::is_culib_present() }
}

/// True when the dynamic loader finds an NVRTC library. Never panics.
pub(crate) fn nvrtc_library_present() -> bool {
    // SAFETY: as for `driver_library_present`: dlopen probes only.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

pub(crate) fn init() -> R<()> {
    // SAFETY: cuInit takes a flags word that must be 0.
    check(unsafe { sys::cuInit(0) })
}

pub(crate) fn driver_version() -> R<i32> {
    let mut v: c_int = 0;
    // SAFETY: writes one int through a valid pointer.
    check(unsafe { sys::cuDriverGetVersion(&mut v) })?;
    Ok(v)
}

pub(crate) fn device_count() -> R<usize> {
    let mut n: c_int = 0;
    // SAFETY: writes one int through a valid pointer.
    check(unsafe { sys::cuDeviceGetCount(&mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

pub(crate) fn device_get(index: usize) -> R<CUdevice> {
    let ordinal = c_int::try_from(index)
        .map_err(|_| DriverError(sys::CUresult::CUDA_ERROR_INVALID_DEVICE))?;
    let mut d = MaybeUninit::uninit();
    // SAFETY: writes one CUdevice through a valid pointer; the driver checks the ordinal.
    check(unsafe { sys::cuDeviceGet(d.as_mut_ptr(), ordinal) })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { d.assume_init() })
}

pub(crate) fn device_name(dev: CUdevice) -> R<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the driver writes at most `len` bytes, NUL-terminated, into `buf`.
    check(unsafe { sys::cuDeviceGetName(buf.as_mut_ptr().cast(), buf.len() as c_int, dev) })?;
    Ok(cstr_in(&buf))
}

pub(crate) fn device_pci_bus_id(dev: CUdevice) -> R<String> {
    let mut buf = [0u8; 64];
    // SAFETY: the driver writes at most `len` bytes, NUL-terminated, into `buf`.
    check(unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr().cast(), buf.len() as c_int, dev) })?;
    Ok(cstr_in(&buf))
}

fn cstr_in(buf: &[u8]) -> String {
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub(crate) fn device_total_mem(dev: CUdevice) -> R<usize> {
    let mut b: usize = 0;
    // SAFETY: writes one size_t through a valid pointer.
    check(unsafe { sys::cuDeviceTotalMem_v2(&mut b, dev) })?;
    Ok(b)
}

pub(crate) fn device_attribute(dev: CUdevice, attr: sys::CUdevice_attribute) -> R<i32> {
    let mut v: c_int = 0;
    // SAFETY: writes one int through a valid pointer; the driver rejects unknown attributes.
    check(unsafe { sys::cuDeviceGetAttribute(&mut v, attr, dev) })?;
    Ok(v)
}

pub(crate) use sys::CUdevice_attribute as Attr;

pub(crate) fn primary_ctx_retain(dev: CUdevice) -> R<CUcontext> {
    let mut c = MaybeUninit::uninit();
    // SAFETY: writes one CUcontext through a valid pointer.
    check(unsafe { sys::cuDevicePrimaryCtxRetain(c.as_mut_ptr(), dev) })?;
    // SAFETY: initialised by the successful call above.
    Ok(unsafe { c.assume_init() })
}

pub(crate) fn primary_ctx_release(dev: CUdevice) -> R<()> {
    // SAFETY: releases one retain taken by `primary_ctx_retain` on `dev`.
    check(unsafe { sys::cuDevicePrimaryCtxRelease_v2(dev) })
}

pub(crate) fn ctx_set_current(ctx: CUcontext) -> R<()> {
    // SAFETY: `ctx` is a retained primary context (kept alive by `Device`).
    check(unsafe { sys::cuCtxSetCurrent(ctx) })
}

pub(crate) fn mem_get_info() -> R<(usize, usize)> {
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: writes two size_t through valid pointers; needs a current context.
    check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
    Ok((free, total))
}

pub(crate) fn mem_alloc(bytes: usize) -> R<CUdeviceptr> {
    let mut p: CUdeviceptr = 0;
    // SAFETY: writes one device pointer through a valid pointer; needs a current context.
    check(unsafe { sys::cuMemAlloc_v2(&mut p, bytes) })?;
    Ok(p)
}

/// # Safety
/// `p` came from [`mem_alloc`] in the current context and is not used again.
pub(crate) unsafe fn mem_free(p: CUdeviceptr) -> R<()> {
    // SAFETY: the caller guarantees `p` is a live allocation of this context.
    check(unsafe { sys::cuMemFree_v2(p) })
}

pub(crate) fn host_alloc(bytes: usize) -> R<*mut u8> {
    let mut p: *mut c_void = std::ptr::null_mut();
    // SAFETY: writes one pointer through a valid pointer. PORTABLE makes the
    // pinning visible to every context, not only the current one.
    check(unsafe { sys::cuMemHostAlloc(&mut p, bytes, sys::CU_MEMHOSTALLOC_PORTABLE as c_uint) })?;
    if p.is_null() {
        return Err(DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY));
    }
    Ok(p.cast())
}

/// # Safety
/// `p` came from [`host_alloc`] and is not used again.
pub(crate) unsafe fn host_free(p: *mut u8) -> R<()> {
    // SAFETY: the caller guarantees `p` is a live pinned allocation.
    check(unsafe { sys::cuMemFreeHost(p.cast()) })
}

/// # Safety
/// `[dst, dst+len)` is live device memory and `[src, src+len)` live host
/// memory that stays valid and unwritten until the copy completes on `stream`
/// (pinned memory for a truly asynchronous copy).
pub(crate) unsafe fn memcpy_htod_async(
    dst: CUdeviceptr,
    src: *const u8,
    len: usize,
    stream: CUstream,
) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), len, stream) })
}

/// # Safety
/// `[dst, dst+src.len())` is live device memory.
pub(crate) unsafe fn memcpy_htod(dst: CUdeviceptr, src: &[u8]) -> R<()> {
    // SAFETY: guaranteed by the caller; `src` is a valid slice for the whole call.
    check(unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) })
}

/// # Safety
/// `[src, src+len)` is live device memory and `[dst, dst+len)` live host
/// memory that nothing else reads or writes until the copy completes on
/// `stream` (pinned memory for a truly asynchronous copy).
pub(crate) unsafe fn memcpy_dtoh_async(
    dst: *mut u8,
    src: CUdeviceptr,
    len: usize,
    stream: CUstream,
) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, len, stream) })
}

/// # Safety
/// `[src, src+dst.len())` is live device memory.
pub(crate) unsafe fn memcpy_dtoh(dst: &mut [u8], src: CUdeviceptr) -> R<()> {
    // SAFETY: guaranteed by the caller; `dst` is a valid, exclusive slice.
    check(unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()) })
}

/// # Safety
/// `[dst, dst+len)` is live device memory.
pub(crate) unsafe fn memset_d8(dst: CUdeviceptr, value: u8, len: usize) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuMemsetD8_v2(dst, value, len) })
}

pub(crate) fn stream_create() -> R<CUstream> {
    let mut s: CUstream = std::ptr::null_mut();
    // SAFETY: writes one stream handle; non-blocking so it never syncs with the legacy stream.
    check(unsafe {
        sys::cuStreamCreate(
            &mut s,
            sys::CUstream_flags::CU_STREAM_NON_BLOCKING as c_uint,
        )
    })?;
    Ok(s)
}

/// # Safety
/// `s` came from [`stream_create`] and is not used again.
pub(crate) unsafe fn stream_destroy(s: CUstream) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuStreamDestroy_v2(s) })
}

/// # Safety
/// `s` is a live stream.
pub(crate) unsafe fn stream_synchronize(s: CUstream) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuStreamSynchronize(s) })
}

/// # Safety
/// `s` is a live stream (or null for the legacy stream) and `e` a live event.
pub(crate) unsafe fn stream_wait_event(s: CUstream, e: CUevent) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuStreamWaitEvent(s, e, 0) })
}

/// A raw stream handle as the driver takes it: `CUstream` values the
/// consumer passed as integers (0 is the legacy default stream; 0x1
/// `CU_STREAM_LEGACY` and 0x2 `CU_STREAM_PER_THREAD` are valid too).
pub(crate) fn raw_stream(handle: u64) -> CUstream {
    handle as usize as CUstream
}

pub(crate) fn event_create(timing: bool) -> R<CUevent> {
    let flags = if timing {
        sys::CUevent_flags::CU_EVENT_DEFAULT
    } else {
        sys::CUevent_flags::CU_EVENT_DISABLE_TIMING
    };
    let mut e: CUevent = std::ptr::null_mut();
    // SAFETY: writes one event handle through a valid pointer.
    check(unsafe { sys::cuEventCreate(&mut e, flags as c_uint) })?;
    Ok(e)
}

/// # Safety
/// `e` came from [`event_create`] and is not used again.
pub(crate) unsafe fn event_destroy(e: CUevent) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuEventDestroy_v2(e) })
}

/// # Safety
/// `e` and `s` are live.
pub(crate) unsafe fn event_record(e: CUevent, s: CUstream) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuEventRecord(e, s) })
}

/// True when the work before the event's last record has completed.
///
/// # Safety
/// `e` is live.
pub(crate) unsafe fn event_query(e: CUevent) -> R<bool> {
    // SAFETY: guaranteed by the caller.
    let r = unsafe { sys::cuEventQuery(e) };
    match r {
        sys::CUresult::CUDA_SUCCESS => Ok(true),
        sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        other => Err(DriverError(other)),
    }
}

/// # Safety
/// `e` is live.
pub(crate) unsafe fn event_synchronize(e: CUevent) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuEventSynchronize(e) })
}

/// # Safety
/// Both events are live, created with timing, and recorded.
pub(crate) unsafe fn event_elapsed_ms(start: CUevent, end: CUevent) -> R<f32> {
    let mut ms = 0f32;
    // SAFETY: guaranteed by the caller; writes one float.
    check(unsafe { sys::cuEventElapsedTime(&mut ms, start, end) })?;
    Ok(ms)
}

/// # Safety
/// `[dst, dst+len)` and `[src, src+len)` are live device memory of the
/// current context and stay live until the copy completes on `stream`.
pub(crate) unsafe fn memcpy_dtod_async(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    len: usize,
    stream: CUstream,
) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, len, stream) })
}

/// Makes GPUDirect RDMA writes that completed (as seen by the host) so far
/// visible to later CUDA work of the current context
/// (`cuFlushGPUDirectRDMAWrites(TARGET_CURRENT_CTX, TO_OWNER)`).
pub(crate) fn flush_gpudirect_rdma_writes_to_owner() -> R<()> {
    // SAFETY: takes two enum values and needs a current context (callers
    // bind one); the symbol exists from CUDA 11.3, below the driver
    // version the probe requires.
    check(unsafe {
        sys::cuFlushGPUDirectRDMAWrites(
            sys::CUflushGPUDirectRDMAWritesTarget::CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TARGET_CURRENT_CTX,
            sys::CUflushGPUDirectRDMAWritesScope::CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TO_OWNER,
        )
    })
}

/// Exports `[ptr, ptr+len)` (both host-page aligned) as a dmabuf file descriptor.
///
/// # Safety
/// The range lies within live device allocations of the current context.
pub(crate) unsafe fn dmabuf_fd(ptr: CUdeviceptr, len: usize) -> R<c_int> {
    let mut fd: c_int = -1;
    // SAFETY: for DMA_BUF_FD the handle is one int; the caller guarantees the range.
    check(unsafe {
        sys::cuMemGetHandleForAddressRange(
            (&mut fd as *mut c_int).cast(),
            ptr,
            len,
            sys::CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
            0,
        )
    })?;
    Ok(fd)
}

pub(crate) fn module_load_ptx(ptx: &CStr) -> R<CUmodule> {
    let mut m: CUmodule = std::ptr::null_mut();
    // SAFETY: `ptx` is a NUL-terminated PTX image valid for the call; the
    // driver JIT-compiles it into a module of the current context.
    check(unsafe { sys::cuModuleLoadData(&mut m, ptx.as_ptr().cast()) })?;
    Ok(m)
}

/// # Safety
/// `m` is a live module.
pub(crate) unsafe fn module_function(m: CUmodule, name: &CStr) -> R<CUfunction> {
    let mut f: CUfunction = std::ptr::null_mut();
    // SAFETY: guaranteed by the caller; `name` is NUL-terminated.
    check(unsafe { sys::cuModuleGetFunction(&mut f, m, name.as_ptr()) })?;
    Ok(f)
}

/// # Safety
/// `m` came from [`module_load_ptx`] and none of its functions is used again.
pub(crate) unsafe fn module_unload(m: CUmodule) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe { sys::cuModuleUnload(m) })
}

/// # Safety
/// `f` is a live kernel whose parameters match `params` (pointers to each
/// argument value, in order), every device pointer argument covers what the
/// kernel touches, and that memory stays live until the launch completes.
pub(crate) unsafe fn launch(
    f: CUfunction,
    grid: u32,
    block: u32,
    stream: CUstream,
    params: &mut [*mut c_void],
) -> R<()> {
    // SAFETY: guaranteed by the caller.
    check(unsafe {
        sys::cuLaunchKernel(
            f,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    })
}
