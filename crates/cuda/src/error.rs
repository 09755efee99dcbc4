//! The crate's error type.

/// Errors from CUDA destinations. Each names the device and the step that
/// failed; "no CUDA" is [`CudaError::NotAvailable`], a normal state callers
/// turn into host destinations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// No usable CUDA driver or device on this machine.
    #[error("CUDA is not available: {reason}")]
    NotAvailable {
        /// Why (library missing, no device, driver too old, disabled by env).
        reason: String,
    },
    /// A device index beyond the GPUs present.
    #[error("GPU index {index} (from {origin}) is out of range: this machine has {count} CUDA device(s){hint}", hint = if *count > 0 { format!(", valid indices are 0..={}", count - 1) } else { String::new() })]
    NoSuchDevice {
        /// The requested index.
        index: usize,
        /// Number of devices the driver reports.
        count: usize,
        /// Where the index came from (`LOCAL_RANK=3`, `argument`).
        origin: String,
    },
    /// `LOCAL_RANK` (or another device selector) is not a valid index.
    #[error("{name}={value:?} is not a valid GPU index: {why}")]
    BadDeviceSelector {
        /// Environment variable or option name.
        name: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The device has not enough free memory for an allocation.
    #[error("GPU {device}: out of device memory allocating {requested} bytes for {what} ({free} of {total} bytes free)")]
    OutOfMemory {
        /// Device index.
        device: usize,
        /// Requested size in bytes.
        requested: usize,
        /// Free bytes reported by the driver just after the failure.
        free: usize,
        /// Total bytes of the device.
        total: usize,
        /// What the allocation was for.
        what: String,
    },
    /// A CUDA driver call failed.
    #[error("{place}: {call} failed while {what}: {code}")]
    Driver {
        /// `GPU n` or `driver`.
        place: String,
        /// The driver function (`cuMemAlloc`).
        call: &'static str,
        /// What was being done.
        what: String,
        /// The driver's error name (`CUDA_ERROR_INVALID_VALUE`).
        code: String,
    },
    /// Run-time compilation of a kernel failed or NVRTC is missing.
    #[error("NVRTC: {what}: {detail}")]
    Nvrtc {
        /// What was being compiled or loaded.
        what: String,
        /// The compiler log or error.
        detail: String,
    },
    /// A caller passed sizes or offsets that do not fit.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// Description naming the offending value.
        what: String,
    },
    /// The device cannot export a dmabuf for a memory range.
    #[error("GPU {device}: dmabuf export unsupported: {why}")]
    DmaBufUnsupported {
        /// Device index.
        device: usize,
        /// Why (attribute off, driver refused).
        why: String,
    },
}

impl CudaError {
    /// True for [`CudaError::NotAvailable`]: callers fall back to host memory.
    pub fn is_not_available(&self) -> bool {
        matches!(self, CudaError::NotAvailable { .. })
    }
}

/// Result alias for this crate.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;
