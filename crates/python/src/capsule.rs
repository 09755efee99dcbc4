//! A DLPack tensor as a Python `PyCapsule`, the object `__dlpack__`
//! returns: named `"dltensor"` (a `DLManagedTensor`, DLPack 0.x) or, for a
//! consumer that asks with `max_version >= (1, 0)`, `"dltensor_versioned"`
//! (a `DLManagedTensorVersioned`). The capsule points at the managed tensor
//! itself (as consumers expect); a consumer renames it (`"used_dltensor"`,
//! `"used_dltensor_versioned"`) and later calls the tensor's deleter. A
//! capsule nobody consumed calls the deleter when it is destroyed.
#![allow(unsafe_code)]

use std::ffi::CStr;

use pyo3::ffi;
use pyo3::prelude::*;
use seqfeed_cuda::dlpack::{DLManagedTensor, DLManagedTensorVersioned};
use seqfeed_cuda::DlpackTensor;

const NAME: &CStr = c"dltensor";
const NAME_VERSIONED: &CStr = c"dltensor_versioned";

/// Wraps `tensor` in a new `"dltensor"` capsule.
pub(crate) fn into_capsule(py: Python<'_>, tensor: DlpackTensor) -> PyResult<Bound<'_, PyAny>> {
    let raw = tensor.into_raw();
    // SAFETY: `raw` is a live DLManagedTensor we own; NAME is a static C
    // string that outlives the capsule; the destructor matches the
    // capsule's contents.
    let cap = unsafe { ffi::PyCapsule_New(raw.cast(), NAME.as_ptr(), Some(destroy)) };
    if cap.is_null() {
        // SAFETY: the capsule was not made, so we still own `raw`; its
        // deleter frees it exactly once.
        unsafe { delete(raw) };
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PyCapsule_New returned a new, non-null reference.
    Ok(unsafe { Bound::from_owned_ptr(py, cap) })
}

/// Runs a managed tensor's deleter.
///
/// # Safety
/// `t` must be a live `DLManagedTensor` whose deleter was not called yet.
unsafe fn delete(t: *mut DLManagedTensor) {
    // SAFETY: the caller guarantees `t` is live.
    if let Some(d) = unsafe { (*t).deleter } {
        // SAFETY: called once, on a live tensor, as DLPack requires.
        unsafe { d(t) };
    }
}

/// Capsule destructor: deletes the tensor only if no consumer took it
/// (a consumer renames the capsule, so it is no longer a valid "dltensor").
unsafe extern "C" fn destroy(cap: *mut ffi::PyObject) {
    // SAFETY: Python calls the destructor with the capsule being destroyed;
    // PyCapsule_IsValid sets no exception.
    if unsafe { ffi::PyCapsule_IsValid(cap, NAME.as_ptr()) } != 1 {
        return;
    }
    // SAFETY: the capsule is a valid "dltensor" capsule, so its pointer is
    // the DLManagedTensor made in `into_capsule`, never consumed.
    let t = unsafe { ffi::PyCapsule_GetPointer(cap, NAME.as_ptr()) }.cast::<DLManagedTensor>();
    if !t.is_null() {
        // SAFETY: unconsumed, so its deleter has not run.
        unsafe { delete(t) };
    }
}

/// Wraps `tensor` in a new `"dltensor_versioned"` capsule (DLPack 1.0) with
/// the DLPack `flags` given.
pub(crate) fn into_versioned_capsule(
    py: Python<'_>,
    tensor: DlpackTensor,
    flags: u64,
) -> PyResult<Bound<'_, PyAny>> {
    let raw = tensor.into_versioned_raw(flags);
    // SAFETY: `raw` is a live DLManagedTensorVersioned we own;
    // NAME_VERSIONED is a static C string that outlives the capsule; the
    // destructor matches the capsule's contents.
    let cap =
        unsafe { ffi::PyCapsule_New(raw.cast(), NAME_VERSIONED.as_ptr(), Some(destroy_versioned)) };
    if cap.is_null() {
        // SAFETY: the capsule was not made, so we still own `raw`; its
        // deleter frees it exactly once.
        unsafe { delete_versioned(raw) };
        return Err(PyErr::fetch(py));
    }
    // SAFETY: PyCapsule_New returned a new, non-null reference.
    Ok(unsafe { Bound::from_owned_ptr(py, cap) })
}

/// Runs a versioned managed tensor's deleter.
///
/// # Safety
/// `t` must be a live `DLManagedTensorVersioned` whose deleter was not
/// called yet.
unsafe fn delete_versioned(t: *mut DLManagedTensorVersioned) {
    // SAFETY: the caller guarantees `t` is live.
    if let Some(d) = unsafe { (*t).deleter } {
        // SAFETY: called once, on a live tensor, as DLPack requires.
        unsafe { d(t) };
    }
}

/// Destructor of a versioned capsule: deletes the tensor only if no
/// consumer took it (a consumer renames the capsule).
unsafe extern "C" fn destroy_versioned(cap: *mut ffi::PyObject) {
    // SAFETY: Python calls the destructor with the capsule being destroyed;
    // PyCapsule_IsValid sets no exception.
    if unsafe { ffi::PyCapsule_IsValid(cap, NAME_VERSIONED.as_ptr()) } != 1 {
        return;
    }
    // SAFETY: a valid "dltensor_versioned" capsule holds the tensor made in
    // `into_versioned_capsule`, never consumed.
    let t = unsafe { ffi::PyCapsule_GetPointer(cap, NAME_VERSIONED.as_ptr()) }
        .cast::<DLManagedTensorVersioned>();
    if !t.is_null() {
        // SAFETY: unconsumed, so its deleter has not run.
        unsafe { delete_versioned(t) };
    }
}
