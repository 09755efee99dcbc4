//! Asks the CUDA driver whether an address is device memory before the
//! peer-memory path registers it (`ibv_reg_mr` on a device pointer, served by
//! `nvidia_peermem`): `CU_POINTER_ATTRIBUTE_MEMORY_TYPE` must be
//! `CU_MEMORYTYPE_DEVICE`, the memory must not be managed, and the whole
//! range must lie inside one allocation (`CU_POINTER_ATTRIBUTE_RANGE_START_ADDR`
//! and `_RANGE_SIZE`). Without this, host memory (which a provider would
//! happily pin) could pass as "device" memory.
//!
//! libcuda is loaded at run time (cudarc's dynamic loading): without a CUDA
//! driver, or before the process initialised CUDA, nothing is device memory
//! and the registration is refused with the reason. The decision itself
//! ([`judge`]) is plain logic, tested without a GPU.
#![allow(unsafe_code)]

use cudarc::driver::sys;

/// What the driver says about one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PointerFacts {
    /// `CU_POINTER_ATTRIBUTE_MEMORY_TYPE` (a `CUmemorytype`).
    pub memory_type: u32,
    /// `CU_POINTER_ATTRIBUTE_IS_MANAGED`.
    pub managed: bool,
    /// `CU_POINTER_ATTRIBUTE_RANGE_START_ADDR`: the allocation's first byte.
    pub range_start: u64,
    /// `CU_POINTER_ATTRIBUTE_RANGE_SIZE`: the allocation's length.
    pub range_size: u64,
}

/// `CU_MEMORYTYPE_DEVICE`.
pub(crate) const MEMORYTYPE_DEVICE: u32 = sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32;

fn memory_type_name(t: u32) -> String {
    match t {
        1 => "host".into(),
        2 => "device".into(),
        3 => "array".into(),
        4 => "unified".into(),
        t => format!("memory type {t}"),
    }
}

/// Accepts `len` bytes at `addr` as device memory of one allocation, given
/// what the driver said (`facts`), or says why not.
pub(crate) fn judge(
    addr: u64,
    len: usize,
    facts: Result<PointerFacts, String>,
) -> Result<(), String> {
    let what = format!("{len} bytes at {addr:#x}");
    let f = facts.map_err(|why| format!("{what}: not known to be CUDA device memory ({why})"))?;
    if f.memory_type != MEMORYTYPE_DEVICE {
        return Err(format!(
            "{what} are not CUDA device memory (the driver says {})",
            memory_type_name(f.memory_type)
        ));
    }
    if f.managed {
        return Err(format!(
            "{what} are CUDA managed memory, which peer-memory registration does not support"
        ));
    }
    let end = addr.checked_add(len as u64);
    let alloc_end = f.range_start.checked_add(f.range_size);
    match (end, alloc_end) {
        (Some(end), Some(alloc_end)) if f.range_start <= addr && end <= alloc_end && len > 0 => {
            Ok(())
        }
        _ => Err(format!(
            "{what} are not inside one CUDA allocation (the allocation holding {addr:#x} is \
             {} bytes at {:#x})",
            f.range_size, f.range_start
        )),
    }
}

/// One pointer attribute into a zeroed `T`.
///
/// # Safety
///
/// `T` must be at least as large as what the driver writes for `attr`
/// (`unsigned int` for the memory type, `CUdeviceptr`/`size_t` for the
/// range), and the driver library must be loadable.
unsafe fn attribute<T: Default>(attr: sys::CUpointer_attribute, addr: u64) -> Result<T, String> {
    let mut v = T::default();
    // SAFETY: `v` is a live, writable `T`, as large as the attribute's value
    // (the caller's contract); cuPointerGetAttribute only reads `addr` as a
    // number (it never dereferences it) and fails cleanly for unknown ones.
    let r = unsafe { sys::cuPointerGetAttribute((&mut v as *mut T).cast(), attr, addr) };
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(v)
    } else {
        Err(format!("cuPointerGetAttribute({attr:?}): {r:?}"))
    }
}

/// Asks the driver about `addr`. Never panics: no driver library is an error.
pub(crate) fn query(addr: u64) -> Result<PointerFacts, String> {
    // SAFETY: `is_culib_present` only tries `dlopen` on candidate library
    // names and closes what it opened; it calls no CUDA function.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) to ask".into());
    }
    std::panic::catch_unwind(|| {
        // SAFETY: the library is present (checked above); each value type is
        // the attribute's (u32 for `unsigned int`, u64 for `CUdeviceptr` and
        // `size_t`; u64 also holds the managed flag, whatever its width).
        unsafe {
            use sys::CUpointer_attribute as A;
            Ok(PointerFacts {
                memory_type: attribute::<u32>(A::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, addr)?,
                managed: attribute::<u64>(A::CU_POINTER_ATTRIBUTE_IS_MANAGED, addr)? != 0,
                range_start: attribute::<u64>(A::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, addr)?,
                range_size: attribute::<u64>(A::CU_POINTER_ATTRIBUTE_RANGE_SIZE, addr)?,
            })
        }
    })
    .unwrap_or_else(|_| Err("loading cuPointerGetAttribute from the CUDA driver failed".into()))
}

/// [`judge`] on what the driver says now.
pub(crate) fn check_device_range(addr: u64, len: usize) -> Result<(), String> {
    judge(addr, len, query(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(start: u64, size: u64) -> Result<PointerFacts, String> {
        Ok(PointerFacts {
            memory_type: MEMORYTYPE_DEVICE,
            managed: false,
            range_start: start,
            range_size: size,
        })
    }

    #[test]
    fn only_device_memory_inside_one_allocation_passes() {
        assert_eq!(judge(0x1000, 4096, dev(0x1000, 4096)), Ok(()));
        assert_eq!(judge(0x1800, 16, dev(0x1000, 4096)), Ok(()));
        let e = judge(0x1800, 4096, dev(0x1000, 4096)).unwrap_err();
        assert!(e.contains("not inside one CUDA allocation"), "{e}");
        let e = judge(0x800, 16, dev(0x1000, 4096)).unwrap_err();
        assert!(e.contains("not inside one CUDA allocation"), "{e}");
        assert!(judge(u64::MAX, 2, dev(0, u64::MAX)).is_err(), "overflow");
        assert!(judge(0x1000, 0, dev(0x1000, 4096)).is_err(), "empty");
        let host = Ok(PointerFacts {
            memory_type: 1,
            ..dev(0x1000, 4096).unwrap()
        });
        let e = judge(0x1000, 16, host).unwrap_err();
        assert!(
            e.contains("not CUDA device memory") && e.contains("host"),
            "{e}"
        );
        let managed = Ok(PointerFacts {
            managed: true,
            ..dev(0x1000, 4096).unwrap()
        });
        assert!(judge(0x1000, 16, managed).unwrap_err().contains("managed"));
        let e = judge(0x1000, 16, Err("CUDA_ERROR_INVALID_VALUE".into())).unwrap_err();
        assert!(
            e.contains("0x1000") && e.contains("CUDA_ERROR_INVALID_VALUE"),
            "{e}"
        );
    }

    /// Host memory never passes, with or without a CUDA driver here.
    #[test]
    fn host_memory_is_refused_by_the_driver_check() {
        let v = vec![0u8; 1 << 16];
        let e = check_device_range(v.as_ptr() as u64, v.len()).unwrap_err();
        eprintln!("host memory refused: {e}");
    }

    /// With a GPU: a cuMemAlloc allocation passes, a range past its end and
    /// host memory do not. Skips loudly without a CUDA driver or device.
    #[test]
    fn device_memory_passes_with_a_gpu() {
        // SAFETY: dlopen probe only.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("SKIP device_memory_passes_with_a_gpu: no CUDA driver library here");
            return;
        }
        let r = std::panic::catch_unwind(|| {
            // SAFETY: standard driver set-up on device 0's primary context, every
            // out-pointer a live local; the allocation is freed below.
            unsafe {
                if sys::cuInit(0) != sys::CUresult::CUDA_SUCCESS {
                    return Err("cuInit failed".to_string());
                }
                let mut n = 0;
                if sys::cuDeviceGetCount(&mut n) != sys::CUresult::CUDA_SUCCESS || n == 0 {
                    return Err("no CUDA device".into());
                }
                let mut d = 0;
                let mut ctx = std::ptr::null_mut();
                if sys::cuDeviceGet(&mut d, 0) != sys::CUresult::CUDA_SUCCESS
                    || sys::cuDevicePrimaryCtxRetain(&mut ctx, d) != sys::CUresult::CUDA_SUCCESS
                    || sys::cuCtxSetCurrent(ctx) != sys::CUresult::CUDA_SUCCESS
                {
                    return Err("no context on device 0".into());
                }
                let mut p: sys::CUdeviceptr = 0;
                if sys::cuMemAlloc_v2(&mut p, 1 << 20) != sys::CUresult::CUDA_SUCCESS {
                    return Err("cuMemAlloc failed".into());
                }
                let ok = check_device_range(p, 1 << 20);
                let part = check_device_range(p + 4096, 4096);
                let past = check_device_range(p + 4096, 1 << 20);
                // From another thread, which has no current context.
                let other = std::thread::spawn(move || check_device_range(p, 1 << 20))
                    .join()
                    .unwrap_or_else(|_| Err("thread panicked".into()));
                sys::cuMemFree_v2(p);
                sys::cuDevicePrimaryCtxRelease_v2(d);
                Ok((ok, part, past, other))
            }
        });
        match r {
            Ok(Ok((ok, part, past, other))) => {
                assert_eq!(ok, Ok(()));
                assert_eq!(part, Ok(()));
                assert!(past.unwrap_err().contains("not inside one CUDA allocation"));
                assert_eq!(other, Ok(()), "no current context on that thread");
            }
            Ok(Err(why)) => eprintln!("SKIP device_memory_passes_with_a_gpu: {why}"),
            Err(_) => {
                eprintln!("SKIP device_memory_passes_with_a_gpu: the CUDA driver failed to load")
            }
        }
    }
}
