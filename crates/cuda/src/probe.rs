//! Finding out whether CUDA is here, without ever panicking.
//!
//! `cudarc` panics on first use when `libcuda` is missing, so [`probe`]
//! first asks the dynamic loader for the library, then calls `cuInit` inside
//! `catch_unwind`, and reports every failure as
//! [`CudaProbe::NotAvailable`], a normal state.

use crate::ffi;
use crate::path::GpuDirectCaps;
use std::path::Path;
use std::sync::OnceLock;

/// Lowest driver API version this crate calls into (11.7 added
/// `cuMemGetHandleForAddressRange`).
pub const MIN_DRIVER_VERSION: i32 = 11070;

/// Environment variable that, set to anything but `0` or empty, makes the
/// probe report CUDA as absent (forces host destinations).
pub const DISABLE_ENV: &str = "SEQFEED_NO_CUDA";

/// The result of probing for CUDA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaProbe {
    /// A driver and at least one device.
    Available(CudaSystem),
    /// No usable CUDA; the reason is one line for logs and skip messages.
    NotAvailable {
        /// Why (library missing, `cuInit` error, no device, disabled).
        reason: String,
    },
}

impl CudaProbe {
    /// The system, when CUDA is available.
    pub fn system(&self) -> Option<&CudaSystem> {
        match self {
            CudaProbe::Available(s) => Some(s),
            CudaProbe::NotAvailable { .. } => None,
        }
    }

    /// The reason CUDA is absent, or `None` when available.
    pub fn unavailable_reason(&self) -> Option<&str> {
        match self {
            CudaProbe::Available(_) => None,
            CudaProbe::NotAvailable { reason } => Some(reason),
        }
    }
}

/// What the driver reports about this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaSystem {
    /// Driver API version, e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    /// One entry per device, in driver order.
    pub devices: Vec<DeviceInfo>,
    /// Name of the loaded peer-memory kernel module, if any
    /// (`nvidia_peermem` or the legacy `nv_peer_mem`).
    pub peer_mem_module: Option<String>,
}

/// Static facts about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Driver ordinal.
    pub index: usize,
    /// Marketing name (`NVIDIA H200`).
    pub name: String,
    /// PCI bus id (`0000:17:00.0`), to pair the GPU with its nearest NIC.
    pub pci_bus_id: String,
    /// Total device memory in bytes.
    pub total_mem: usize,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// `CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`.
    pub dmabuf_supported: bool,
    /// `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED`.
    pub gpudirect_rdma_supported: bool,
}

impl DeviceInfo {
    /// GPUDirect capabilities of this device on a host with (or without) peer memory.
    pub fn gpudirect_caps(&self, peer_mem_loaded: bool) -> GpuDirectCaps {
        GpuDirectCaps {
            device: self.index,
            dmabuf_supported: self.dmabuf_supported,
            gpudirect_rdma_supported: self.gpudirect_rdma_supported,
            peer_mem_loaded,
        }
    }
}

/// Probes once per process and caches the answer. Never panics.
pub fn probe() -> &'static CudaProbe {
    static PROBE: OnceLock<CudaProbe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let p = probe_uncached();
        match &p {
            CudaProbe::Available(s) => tracing::info!(
                driver = s.driver_version,
                devices = s.devices.len(),
                peer_mem = s.peer_mem_module.as_deref().unwrap_or("none"),
                "CUDA available"
            ),
            CudaProbe::NotAvailable { reason } => {
                tracing::info!("CUDA not available: {reason}")
            }
        }
        p
    })
}

fn disabled_by_env(value: Option<&str>) -> bool {
    matches!(value, Some(v) if !v.is_empty() && v != "0")
}

fn probe_uncached() -> CudaProbe {
    if disabled_by_env(std::env::var(DISABLE_ENV).ok().as_deref()) {
        return CudaProbe::NotAvailable {
            reason: format!("disabled by {DISABLE_ENV}"),
        };
    }
    if !ffi::driver_library_present() {
        return CudaProbe::NotAvailable {
            reason: "no CUDA driver library: the dynamic loader finds neither libcuda.so nor libcuda.so.1 (no NVIDIA driver installed)".to_string(),
        };
    }
    match std::panic::catch_unwind(probe_driver) {
        Ok(Ok(sys)) => sys,
        Ok(Err(reason)) => CudaProbe::NotAvailable { reason },
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            CudaProbe::NotAvailable {
                reason: format!("the CUDA driver library could not be used: {msg}"),
            }
        }
    }
}

fn probe_driver() -> Result<CudaProbe, String> {
    let version = ffi::driver_version().map_err(|e| format!("cuDriverGetVersion: {}", e.name()))?;
    if version < MIN_DRIVER_VERSION {
        return Err(format!(
            "the driver supports CUDA {}.{}, seqfeed needs {}.{} or newer",
            version / 1000,
            (version % 1000) / 10,
            MIN_DRIVER_VERSION / 1000,
            (MIN_DRIVER_VERSION % 1000) / 10
        ));
    }
    ffi::init().map_err(|e| format!("cuInit failed: {}", e.name()))?;
    let count = ffi::device_count().map_err(|e| format!("cuDeviceGetCount: {}", e.name()))?;
    if count == 0 {
        return Err("the driver reports no CUDA devices".to_string());
    }
    let mut devices = Vec::with_capacity(count);
    for index in 0..count {
        devices.push(device_info(index).map_err(|e| format!("GPU {index}: {e}"))?);
    }
    Ok(CudaProbe::Available(CudaSystem {
        driver_version: version,
        devices,
        peer_mem_module: peer_mem_module(Path::new("/sys/module")),
    }))
}

fn device_info(index: usize) -> Result<DeviceInfo, String> {
    let dev = ffi::device_get(index).map_err(|e| format!("cuDeviceGet: {}", e.name()))?;
    let name = ffi::device_name(dev).map_err(|e| format!("cuDeviceGetName: {}", e.name()))?;
    let pci_bus_id = ffi::device_pci_bus_id(dev).unwrap_or_default();
    let total_mem =
        ffi::device_total_mem(dev).map_err(|e| format!("cuDeviceTotalMem: {}", e.name()))?;
    let attr = |a| ffi::device_attribute(dev, a);
    let major = attr(ffi::Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR).unwrap_or(0);
    let minor = attr(ffi::Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR).unwrap_or(0);
    // Older drivers answer CUDA_ERROR_INVALID_VALUE for attributes they do not know: unsupported.
    let dmabuf = attr(ffi::Attr::CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED).unwrap_or(0) != 0;
    let rdma = attr(ffi::Attr::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED).unwrap_or(0) != 0;
    Ok(DeviceInfo {
        index,
        name,
        pci_bus_id,
        total_mem,
        compute_capability: (major, minor),
        dmabuf_supported: dmabuf,
        gpudirect_rdma_supported: rdma,
    })
}

/// The loaded peer-memory kernel module under `sys_module` (normally
/// `/sys/module`): `nvidia_peermem`, or the legacy `nv_peer_mem`.
pub fn peer_mem_module(sys_module: &Path) -> Option<String> {
    ["nvidia_peermem", "nv_peer_mem"]
        .into_iter()
        .find(|m| sys_module.join(m).is_dir())
        .map(str::to_string)
}

/// Parses a device selector such as `LOCAL_RANK`'s value into an index.
pub fn parse_device_index(name: &str, value: &str) -> Result<usize, crate::CudaError> {
    let v = value.trim();
    v.parse::<usize>()
        .map_err(|e| crate::CudaError::BadDeviceSelector {
            name: name.to_string(),
            value: value.to_string(),
            why: if v.starts_with('-') {
                "negative".to_string()
            } else {
                e.to_string()
            },
        })
}

/// Checks `index` against the `count` devices present.
pub fn check_device_index(
    index: usize,
    count: usize,
    origin: &str,
) -> Result<(), crate::CudaError> {
    if index < count {
        Ok(())
    } else {
        Err(crate::CudaError::NoSuchDevice {
            index,
            count,
            origin: origin.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_switch() {
        assert!(!disabled_by_env(None));
        assert!(!disabled_by_env(Some("")));
        assert!(!disabled_by_env(Some("0")));
        assert!(disabled_by_env(Some("1")));
        assert!(disabled_by_env(Some("yes")));
    }

    #[test]
    fn peer_mem_module_detection() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(peer_mem_module(d.path()), None);
        std::fs::create_dir(d.path().join("nv_peer_mem")).unwrap();
        assert_eq!(peer_mem_module(d.path()).as_deref(), Some("nv_peer_mem"));
        std::fs::create_dir(d.path().join("nvidia_peermem")).unwrap();
        assert_eq!(peer_mem_module(d.path()).as_deref(), Some("nvidia_peermem"));
    }

    #[test]
    fn device_selectors() {
        assert_eq!(parse_device_index("LOCAL_RANK", " 3 ").unwrap(), 3);
        let e = parse_device_index("LOCAL_RANK", "-1")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("LOCAL_RANK=\"-1\"") && e.contains("negative"),
            "{e}"
        );
        let e = parse_device_index("LOCAL_RANK", "gpu0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpu0"), "{e}");
        check_device_index(7, 8, "LOCAL_RANK=7").unwrap();
        let e = check_device_index(8, 8, "LOCAL_RANK=8")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GPU index 8 (from LOCAL_RANK=8)")
                && e.contains("8 CUDA device(s)")
                && e.contains("0..=7"),
            "{e}"
        );
        let e = check_device_index(0, 0, "argument")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 CUDA device(s)"), "{e}");
    }
}
