//! DLPack (v0.8 ABI) structs so a framework can wrap a batch without a copy:
//! put [`DlpackTensor::into_raw`] in a `PyCapsule` named `"dltensor"` and
//! `torch.from_dlpack` takes it; the consumer calls the deleter when done.
//!
//! The tensor owns its shape and strides and, when made with
//! [`DlpackTensor::with_owner`], a value that keeps the memory alive (e.g.
//! a loader batch, whose step buffer is then reused only after the
//! consumer has called the deleter).
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;

/// `DLDeviceType::kDLCPU`.
pub const KDL_CPU: i32 = 1;
/// `DLDeviceType::kDLCUDA`.
pub const KDL_CUDA: i32 = 2;
/// `DLDeviceType::kDLCUDAHost` (pinned host memory).
pub const KDL_CUDA_HOST: i32 = 3;

/// `DLDevice`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDevice {
    /// One of the `KDL_*` constants.
    pub device_type: i32,
    /// Device ordinal.
    pub device_id: i32,
}

impl DLDevice {
    /// CUDA device `index`.
    pub fn cuda(index: usize) -> DLDevice {
        DLDevice {
            device_type: KDL_CUDA,
            device_id: i32::try_from(index).unwrap_or(i32::MAX),
        }
    }

    /// Host memory.
    pub fn cpu() -> DLDevice {
        DLDevice {
            device_type: KDL_CPU,
            device_id: 0,
        }
    }
}

/// `DLDataType`: `code` 0 int, 1 uint, 2 float; `bits`; `lanes`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLDataType {
    /// Type code (`kDLInt` = 0, `kDLUInt` = 1, `kDLFloat` = 2).
    pub code: u8,
    /// Bits per lane.
    pub bits: u8,
    /// Lanes (1 for scalars).
    pub lanes: u16,
}

/// `DLTensor`.
#[repr(C)]
#[derive(Debug)]
pub struct DLTensor {
    /// Data pointer (device address for CUDA).
    pub data: *mut c_void,
    /// Where the data lives.
    pub device: DLDevice,
    /// Number of dimensions.
    pub ndim: i32,
    /// Element type.
    pub dtype: DLDataType,
    /// `ndim` extents.
    pub shape: *mut i64,
    /// `ndim` strides in elements (never null here).
    pub strides: *mut i64,
    /// Byte offset from `data` to the first element.
    pub byte_offset: u64,
}

/// `DLManagedTensor`.
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensor {
    /// The tensor.
    pub dl_tensor: DLTensor,
    /// Producer context (our shape/stride storage).
    pub manager_ctx: *mut c_void,
    /// Called once by the consumer when it no longer needs the tensor.
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

/// `DLPackVersion`: the ABI version of a [`DLManagedTensorVersioned`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DLPackVersion {
    /// Major version (1 for DLPack 1.x).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

/// The DLPack version this crate produces in versioned capsules.
pub const DLPACK_VERSION: DLPackVersion = DLPackVersion { major: 1, minor: 0 };

/// `DLPACK_FLAG_BITMASK_READ_ONLY`: the consumer must not write the memory.
pub const DLPACK_FLAG_READ_ONLY: u64 = 1;

/// `DLManagedTensorVersioned` (DLPack 1.0): what a `"dltensor_versioned"`
/// capsule holds, for consumers that ask with `max_version >= (1, 0)`.
#[repr(C)]
#[derive(Debug)]
pub struct DLManagedTensorVersioned {
    /// The ABI version of this struct.
    pub version: DLPackVersion,
    /// Producer context.
    pub manager_ctx: *mut c_void,
    /// Called once by the consumer when it no longer needs the tensor.
    pub deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    /// `DLPACK_FLAG_*` bits.
    pub flags: u64,
    /// The tensor.
    pub dl_tensor: DLTensor,
}

/// A versioned tensor and the unversioned one whose storage (shape,
/// strides, owner) it describes; `tensor` first so a pointer to the holder
/// is a pointer to the tensor.
#[repr(C)]
struct VersionedHolder {
    tensor: DLManagedTensorVersioned,
    inner: DlpackTensor,
}

unsafe extern "C" fn delete_versioned(t: *mut DLManagedTensorVersioned) {
    if t.is_null() {
        return;
    }
    // SAFETY: every DLManagedTensorVersioned with this deleter was made by
    // `DlpackTensor::into_versioned_raw` as the first field of a boxed,
    // repr(C) VersionedHolder, and DLPack calls the deleter exactly once;
    // dropping the holder drops the inner tensor, which runs its own deleter.
    drop(unsafe { Box::from_raw(t.cast::<VersionedHolder>()) });
}

/// Storage for one managed tensor; `tensor` first so a pointer to the
/// holder is a pointer to the tensor.
#[repr(C)]
struct Holder {
    tensor: DLManagedTensor,
    shape: Box<[i64]>,
    strides: Box<[i64]>,
    /// Dropped by the deleter: what keeps `data` valid.
    owner: Option<Box<dyn std::any::Any + Send>>,
}

unsafe extern "C" fn delete_holder(t: *mut DLManagedTensor) {
    if t.is_null() {
        return;
    }
    // SAFETY: every DLManagedTensor with this deleter was made by
    // `DlpackTensor::new` as the first field of a boxed, repr(C) Holder, and
    // the DLPack contract calls the deleter exactly once.
    drop(unsafe { Box::from_raw(t.cast::<Holder>()) });
}

/// An owned `DLManagedTensor` (row-major, contiguous). Dropping it runs the
/// deleter; [`DlpackTensor::into_raw`] hands ownership to a consumer.
#[derive(Debug)]
pub struct DlpackTensor {
    ptr: NonNull<DLManagedTensor>,
}

impl DlpackTensor {
    /// Describes `data` (an address on `device`) as a contiguous tensor.
    pub fn new(data: u64, device: DLDevice, dtype: DLDataType, shape: &[i64]) -> DlpackTensor {
        Self::build(data, device, dtype, shape, None)
    }

    /// Like [`new`](Self::new), and the tensor owns `owner` (whatever keeps
    /// `data` valid): the deleter drops it, on whichever thread the
    /// consumer frees the tensor.
    pub fn with_owner(
        data: u64,
        device: DLDevice,
        dtype: DLDataType,
        shape: &[i64],
        owner: Box<dyn std::any::Any + Send>,
    ) -> DlpackTensor {
        Self::build(data, device, dtype, shape, Some(owner))
    }

    fn build(
        data: u64,
        device: DLDevice,
        dtype: DLDataType,
        shape: &[i64],
        owner: Option<Box<dyn std::any::Any + Send>>,
    ) -> DlpackTensor {
        let shape: Box<[i64]> = shape.into();
        let strides = contiguous_strides(&shape);
        let mut holder = Box::new(Holder {
            tensor: DLManagedTensor {
                dl_tensor: DLTensor {
                    data: data as usize as *mut c_void,
                    device,
                    ndim: i32::try_from(shape.len()).unwrap_or(i32::MAX),
                    dtype,
                    shape: std::ptr::null_mut(),
                    strides: std::ptr::null_mut(),
                    byte_offset: 0,
                },
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_holder),
            },
            shape,
            strides,
            owner,
        });
        // Boxed slices do not move when the Box<Holder> moves.
        holder.tensor.dl_tensor.shape = holder.shape.as_mut_ptr();
        holder.tensor.dl_tensor.strides = holder.strides.as_mut_ptr();
        let raw = Box::into_raw(holder);
        // SAFETY: `raw` is a fresh non-null Box allocation.
        let tensor_ptr = unsafe { std::ptr::addr_of_mut!((*raw).tensor) };
        // SAFETY: points into the live allocation just made.
        unsafe { (*tensor_ptr).manager_ctx = raw.cast() };
        DlpackTensor {
            // SAFETY: derived from a non-null Box pointer.
            ptr: unsafe { NonNull::new_unchecked(tensor_ptr) },
        }
    }

    /// The managed tensor.
    pub fn get(&self) -> &DLManagedTensor {
        // SAFETY: `ptr` is live until drop or into_raw, which consumes self.
        unsafe { self.ptr.as_ref() }
    }

    /// Shape as stored in the tensor.
    pub fn shape(&self) -> &[i64] {
        let t = &self.get().dl_tensor;
        // SAFETY: `shape` points to `ndim` i64s owned by the holder.
        unsafe { std::slice::from_raw_parts(t.shape, t.ndim as usize) }
    }

    /// Strides (elements) as stored in the tensor.
    pub fn strides(&self) -> &[i64] {
        let t = &self.get().dl_tensor;
        // SAFETY: `strides` points to `ndim` i64s owned by the holder.
        unsafe { std::slice::from_raw_parts(t.strides, t.ndim as usize) }
    }

    /// Gives up ownership as a DLPack 1.0 versioned tensor (with `flags`,
    /// e.g. [`DLPACK_FLAG_READ_ONLY`]): the consumer must call its
    /// `deleter` exactly once, which also frees this tensor's storage.
    pub fn into_versioned_raw(self, flags: u64) -> *mut DLManagedTensorVersioned {
        let t = &self.get().dl_tensor;
        let dl_tensor = DLTensor {
            data: t.data,
            device: t.device,
            ndim: t.ndim,
            dtype: t.dtype,
            shape: t.shape,
            strides: t.strides,
            byte_offset: t.byte_offset,
        };
        let raw = Box::into_raw(Box::new(VersionedHolder {
            tensor: DLManagedTensorVersioned {
                version: DLPACK_VERSION,
                manager_ctx: std::ptr::null_mut(),
                deleter: Some(delete_versioned),
                flags,
                dl_tensor,
            },
            inner: self,
        }));
        // SAFETY: `raw` is a fresh, non-null Box allocation; the shape and
        // strides pointers copied above stay valid while `inner` lives,
        // which is until the versioned deleter runs.
        unsafe {
            (*raw).tensor.manager_ctx = raw.cast();
            std::ptr::addr_of_mut!((*raw).tensor)
        }
    }

    /// Gives up ownership: the consumer must call `deleter` exactly once.
    pub fn into_raw(self) -> *mut DLManagedTensor {
        let p = self.ptr.as_ptr();
        std::mem::forget(self);
        p
    }
}

impl Drop for DlpackTensor {
    fn drop(&mut self) {
        // SAFETY: we still own the tensor; its deleter is `delete_holder`.
        unsafe { delete_holder(self.ptr.as_ptr()) };
    }
}

/// Row-major strides in elements for `shape`.
pub fn contiguous_strides(shape: &[i64]) -> Box<[i64]> {
    let mut strides = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for (s, d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul((*d).max(1));
    }
    strides.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn abi_layout_matches_dlpack_h() {
        assert_eq!(size_of::<DLDevice>(), 8);
        assert_eq!(size_of::<DLDataType>(), 4);
        assert_eq!(offset_of!(DLTensor, data), 0);
        assert_eq!(offset_of!(DLTensor, device), 8);
        assert_eq!(offset_of!(DLTensor, ndim), 16);
        assert_eq!(offset_of!(DLTensor, dtype), 20);
        assert_eq!(offset_of!(DLTensor, shape), 24);
        assert_eq!(offset_of!(DLTensor, strides), 32);
        assert_eq!(offset_of!(DLTensor, byte_offset), 40);
        assert_eq!(size_of::<DLTensor>(), 48);
        assert_eq!(offset_of!(DLManagedTensor, manager_ctx), 48);
        assert_eq!(offset_of!(DLManagedTensor, deleter), 56);
        assert_eq!(size_of::<DLManagedTensor>(), 64);
    }

    #[test]
    fn versioned_abi_layout_matches_dlpack_h() {
        assert_eq!(size_of::<DLPackVersion>(), 8);
        assert_eq!(offset_of!(DLManagedTensorVersioned, version), 0);
        assert_eq!(offset_of!(DLManagedTensorVersioned, manager_ctx), 8);
        assert_eq!(offset_of!(DLManagedTensorVersioned, deleter), 16);
        assert_eq!(offset_of!(DLManagedTensorVersioned, flags), 24);
        assert_eq!(offset_of!(DLManagedTensorVersioned, dl_tensor), 32);
        assert_eq!(size_of::<DLManagedTensorVersioned>(), 80);
    }

    #[test]
    fn versioned_tensor_describes_the_same_memory_and_frees_the_owner_once() {
        let data: Vec<u16> = (0..24).collect();
        let alive = std::sync::Arc::new(());
        let t = DlpackTensor::with_owner(
            data.as_ptr() as u64,
            DLDevice::cpu(),
            DLDataType {
                code: 1,
                bits: 16,
                lanes: 1,
            },
            &[4, 6],
            Box::new(alive.clone()),
        );
        let raw = t.into_versioned_raw(DLPACK_FLAG_READ_ONLY);
        // SAFETY: `raw` is live until its deleter runs below.
        let v = unsafe { &*raw };
        assert_eq!(v.version, DLPACK_VERSION);
        assert_eq!(v.flags, DLPACK_FLAG_READ_ONLY);
        assert_eq!(v.manager_ctx as usize, raw as usize);
        assert_eq!(v.dl_tensor.data as usize, data.as_ptr() as usize);
        // SAFETY: shape and strides hold ndim = 2 entries owned by the tensor.
        let (shape, strides) = unsafe {
            (
                std::slice::from_raw_parts(v.dl_tensor.shape, 2),
                std::slice::from_raw_parts(v.dl_tensor.strides, 2),
            )
        };
        assert_eq!((shape, strides), (&[4i64, 6][..], &[6i64, 1][..]));
        assert_eq!(std::sync::Arc::strong_count(&alive), 2);
        // SAFETY: calling the deleter exactly once, as a consumer would.
        unsafe { v.deleter.unwrap()(raw) };
        assert_eq!(std::sync::Arc::strong_count(&alive), 1);
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(&*contiguous_strides(&[4, 2048]), &[2048, 1]);
        assert_eq!(&*contiguous_strides(&[2, 3, 5]), &[15, 5, 1]);
        assert_eq!(&*contiguous_strides(&[]), &[] as &[i64]);
    }

    #[test]
    fn host_tensor_describes_real_memory() {
        let data: Vec<u16> = (0..24).collect();
        let t = DlpackTensor::new(
            data.as_ptr() as u64,
            DLDevice::cpu(),
            DLDataType {
                code: 1,
                bits: 16,
                lanes: 1,
            },
            &[4, 6],
        );
        let m = t.get();
        assert_eq!(m.dl_tensor.ndim, 2);
        assert_eq!(t.shape(), &[4, 6]);
        assert_eq!(t.strides(), &[6, 1]);
        assert_eq!(m.dl_tensor.device, DLDevice::cpu());
        assert_eq!(m.manager_ctx as usize, m as *const DLManagedTensor as usize);
        // Element [2, 3] through the descriptor, the way a consumer computes it.
        let idx = 2 * t.strides()[0] + 3 * t.strides()[1];
        let base = m.dl_tensor.data as *const u16;
        // SAFETY: idx < 24 elements of the live `data` vector.
        let v = unsafe { *base.add(idx as usize) };
        assert_eq!(v, 15);
    }

    #[test]
    fn the_deleter_drops_the_owner() {
        let data: Vec<u16> = vec![1, 2, 3, 4];
        let alive = std::sync::Arc::new(());
        let t = DlpackTensor::with_owner(
            data.as_ptr() as u64,
            DLDevice::cpu(),
            DLDataType {
                code: 1,
                bits: 16,
                lanes: 1,
            },
            &[2, 2],
            Box::new(alive.clone()),
        );
        assert_eq!(std::sync::Arc::strong_count(&alive), 2);
        let raw = t.into_raw();
        assert_eq!(std::sync::Arc::strong_count(&alive), 2);
        // SAFETY: calling the deleter exactly once, as a consumer would.
        unsafe { (*raw).deleter.unwrap()(raw) };
        assert_eq!(std::sync::Arc::strong_count(&alive), 1);
    }

    #[test]
    fn consumer_deleter_frees_once() {
        let t = DlpackTensor::new(
            0x1000,
            DLDevice::cuda(1),
            DLDataType {
                code: 0,
                bits: 64,
                lanes: 1,
            },
            &[8, 512],
        );
        let raw = t.into_raw();
        // SAFETY: `raw` is live and owned by us as the consumer.
        let (dev, deleter) = unsafe { ((*raw).dl_tensor.device, (*raw).deleter) };
        assert_eq!(
            dev,
            DLDevice {
                device_type: KDL_CUDA,
                device_id: 1
            }
        );
        // SAFETY: calling the deleter exactly once, as a consumer would.
        unsafe { deleter.unwrap()(raw) };
    }
}
