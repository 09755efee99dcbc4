//! On-device widening of token ids to int64, compiled at run time with
//! NVRTC from `native/widen_tokens.cu`.
#![allow(unsafe_code)]

use crate::batch::DType;
use crate::device::Device;
use crate::error::{CudaError, Result};
use crate::ffi::{self, CUfunction, CUmodule};
use crate::memory::{DeviceBuffer, Stream};
use std::ffi::{c_void, CString};

/// The kernel source, embedded at build time.
pub const WIDEN_SOURCE: &str = include_str!("../../../native/widen_tokens.cu");
/// Kernel widening u16 to i64.
pub const KERNEL_U16: &str = "widen_u16_to_i64";
/// Kernel widening u32 to i64.
pub const KERNEL_U32: &str = "widen_u32_to_i64";

const BLOCK: u32 = 256;
const MAX_GRID: u64 = 65_535;

/// `Ok` when an NVRTC library can be loaded, else why not. Never panics.
pub fn nvrtc_available() -> std::result::Result<(), String> {
    if ffi::nvrtc_library_present() {
        Ok(())
    } else {
        Err("no NVRTC library: the dynamic loader finds no libnvrtc.so (CUDA 13 ships only libnvrtc.so.13: put a libnvrtc.so symlink to it on LD_LIBRARY_PATH)".to_string())
    }
}

/// Compiles [`WIDEN_SOURCE`] to PTX, for compute capability `cc` when given
/// (retrying with NVRTC's default target if this NVRTC does not know it).
pub fn compile_widen_ptx(cc: Option<(i32, i32)>) -> Result<String> {
    nvrtc_available().map_err(|detail| CudaError::Nvrtc {
        what: "loading NVRTC".to_string(),
        detail,
    })?;
    let attempt = |arch: Option<String>| -> std::result::Result<String, String> {
        let opts = cudarc::nvrtc::CompileOptions {
            options: arch.into_iter().collect(),
            name: Some("widen_tokens.cu".to_string()),
            ..Default::default()
        };
        match std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(WIDEN_SOURCE, opts))
        {
            Ok(Ok(ptx)) => Ok(ptx.to_src()),
            Ok(Err(e)) => Err(format!("{e:?}")),
            Err(_) => Err("NVRTC panicked (missing symbol?)".to_string()),
        }
    };
    let first = attempt(cc.map(|(ma, mi)| format!("--gpu-architecture=compute_{ma}{mi}")));
    match first {
        Ok(p) => Ok(p),
        Err(e) if cc.is_some() => {
            tracing::debug!("NVRTC with the device's arch failed ({e}); retrying with its default");
            attempt(None).map_err(|detail| CudaError::Nvrtc {
                what: "compiling native/widen_tokens.cu".to_string(),
                detail,
            })
        }
        Err(detail) => Err(CudaError::Nvrtc {
            what: "compiling native/widen_tokens.cu".to_string(),
            detail,
        }),
    }
}

/// The widening kernels loaded into one device's context.
#[derive(Debug)]
pub struct Widener {
    device: Device,
    module: CUmodule,
    u16: CUfunction,
    u32: CUfunction,
}

// SAFETY: module and function handles are thread-safe driver handles we never dereference.
unsafe impl Send for Widener {}
// SAFETY: as above.
unsafe impl Sync for Widener {}

impl Widener {
    /// Compiles and loads the kernels on `device`.
    pub fn new(device: &Device) -> Result<Widener> {
        let ptx = compile_widen_ptx(Some(device.info().compute_capability))?;
        let ptx = CString::new(ptx).map_err(|_| CudaError::Nvrtc {
            what: "loading the PTX".to_string(),
            detail: "PTX contains a NUL byte".to_string(),
        })?;
        device.bind()?;
        let module = ffi::module_load_ptx(&ptx)
            .map_err(|e| device.err("cuModuleLoadData", "loading the widening kernels", e))?;
        let get = |name: &str| -> Result<CUfunction> {
            let c = CString::new(name).map_err(|_| CudaError::InvalidArgument {
                what: format!("kernel name {name:?}"),
            })?;
            // SAFETY: `module` is live (just loaded).
            unsafe { ffi::module_function(module, &c) }
                .map_err(|e| device.err("cuModuleGetFunction", &format!("finding {name}"), e))
        };
        let functions = get(KERNEL_U16).and_then(|a| Ok((a, get(KERNEL_U32)?)));
        match functions {
            Ok((u16, u32)) => Ok(Widener {
                device: device.clone(),
                module,
                u16,
                u32,
            }),
            Err(e) => {
                // SAFETY: the module is live and no function of it escapes.
                let _ = unsafe { ffi::module_unload(module) };
                Err(e)
            }
        }
    }

    /// Enqueues on `stream`: `n` tokens of `src_dtype` at byte `src_offset`
    /// of `src` become `n` int64 at byte `dst_offset` of `dst`. Both buffers
    /// must stay allocated until the stream reaches this point (wait on an
    /// event recorded after it).
    #[allow(clippy::too_many_arguments)]
    pub fn widen(
        &self,
        src: &DeviceBuffer,
        src_offset: usize,
        src_dtype: DType,
        n: usize,
        dst: &DeviceBuffer,
        dst_offset: usize,
        stream: &Stream,
    ) -> Result<()> {
        let f = match src_dtype {
            DType::U16 => self.u16,
            DType::U32 => self.u32,
            DType::I64 => {
                return Err(CudaError::InvalidArgument {
                    what: "widening from i64: already int64".to_string(),
                })
            }
        };
        let fits = |buf: &DeviceBuffer, off: usize, bytes: Option<usize>| {
            bytes
                .and_then(|b| off.checked_add(b))
                .is_some_and(|end| end <= buf.len())
        };
        if !fits(src, src_offset, n.checked_mul(src_dtype.size()))
            || !fits(dst, dst_offset, n.checked_mul(8))
        {
            return Err(CudaError::InvalidArgument {
                what: format!(
                    "widening {n} tokens: source [{src_offset}, +{n}x{}) of {} bytes or destination [{dst_offset}, +{n}x8) of {} bytes out of range",
                    src_dtype.size(),
                    src.len(),
                    dst.len()
                ),
            });
        }
        if !src_offset.is_multiple_of(src_dtype.size()) || !dst_offset.is_multiple_of(8) {
            return Err(CudaError::InvalidArgument {
                what: format!(
                    "widening: offsets {src_offset}/{dst_offset} are not element-aligned"
                ),
            });
        }
        if n == 0 {
            return Ok(());
        }
        self.device.bind()?;
        let mut src_ptr: u64 = src.device_ptr() + src_offset as u64;
        let mut dst_ptr: u64 = dst.device_ptr() + dst_offset as u64;
        let mut count: u64 = n as u64;
        let mut params: [*mut c_void; 3] = [
            (&mut src_ptr as *mut u64).cast(),
            (&mut dst_ptr as *mut u64).cast(),
            (&mut count as *mut u64).cast(),
        ];
        let grid = count.div_ceil(u64::from(BLOCK)).clamp(1, MAX_GRID) as u32;
        // SAFETY: `f` is a live kernel of this context taking (ptr, ptr, u64);
        // the ranges were checked above; the caller keeps the buffers alive
        // until the stream passes this launch (documented above).
        unsafe { ffi::launch(f, grid, BLOCK, stream.raw, &mut params) }.map_err(|e| {
            self.device
                .err("cuLaunchKernel", "launching the widening kernel", e)
        })
    }
}

impl Drop for Widener {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: the module is live and its functions die with self.
        if let Err(e) = unsafe { ffi::module_unload(self.module) } {
            tracing::warn!(
                "GPU {}: cuModuleUnload failed: {}",
                self.device.index(),
                e.name()
            );
        }
    }
}

/// The host reference of the kernel: u16 tokens (little-endian bytes) to i64.
pub fn widen_u16_host(tokens_le: &[u8]) -> Vec<i64> {
    tokens_le
        .chunks_exact(2)
        .map(|c| i64::from(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_defines_both_kernels_with_c_linkage() {
        for k in [KERNEL_U16, KERNEL_U32] {
            assert!(
                WIDEN_SOURCE.contains(&format!("extern \"C\" __global__ void {k}(")),
                "{k} missing from native/widen_tokens.cu"
            );
        }
        assert!(
            !WIDEN_SOURCE.contains("#include"),
            "NVRTC has no system headers"
        );
        assert!(!WIDEN_SOURCE.contains('\0'));
    }

    #[test]
    fn host_reference() {
        assert_eq!(
            widen_u16_host(&[1, 0, 0xff, 0xff, 0x34, 0x12]),
            vec![1, 65535, 0x1234]
        );
    }

    #[test]
    fn compiles_with_nvrtc_or_skips() {
        if let Err(why) = nvrtc_available() {
            if std::env::var("SEQFEED_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
                panic!("SEQFEED_REQUIRE_NVRTC=1 but {why}");
            }
            eprintln!("SKIP compiles_with_nvrtc_or_skips: {why}");
            return;
        }
        let ptx = compile_widen_ptx(None).unwrap();
        assert!(
            ptx.contains(".entry widen_u16_to_i64") || ptx.contains("widen_u16_to_i64"),
            "{ptx}"
        );
    }
}
