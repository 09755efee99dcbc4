//! Step-buffer memory: where a step's sequences land.
//!
//! The loader asks a [`BufferAllocator`] for one [`HostBuffer`] per ring slot
//! at start-up and reuses them for the whole run, so backends that register
//! memory (verbs) register each buffer once. [`HeapAllocator`] gives plain,
//! 64-byte aligned heap memory. A CUDA backend adds a pinned-host allocator by
//! implementing the same trait (and copies a filled buffer to the device
//! itself); nothing else in the loader changes.
//!
//! A buffer backed by device memory may also offer it for GPUDirect RDMA
//! ([`HostBuffer::device_regions`]): when every node's transport registers
//! one of those regions, the loader has the NICs write each step straight
//! into device memory and calls [`HostBuffer::filled_device`] instead of
//! [`HostBuffer::filled`] (no host-to-device copy).

use crate::error::BoxError;
use seqfeed_transport::DeviceRegion;

/// A host-addressable step buffer. Transports write into
/// [`bytes_mut`](HostBuffer::bytes_mut); the consumer reads
/// [`bytes`](HostBuffer::bytes).
pub trait HostBuffer: Send + Sync + 'static {
    /// The buffer's bytes.
    fn bytes(&self) -> &[u8];
    /// The buffer's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];

    /// Called by the reader thread once a step's first `len` bytes have
    /// landed, before the batch is handed out. A device backend starts its
    /// copy to device memory here (the seqfeed-cuda bounce path). Default:
    /// nothing.
    fn filled(&mut self, len: usize) -> Result<(), BoxError> {
        let _ = len;
        Ok(())
    }

    /// Device memory this buffer's steps can be read into directly by RDMA
    /// (GPUDirect), best first: e.g. a dmabuf export of the device buffer,
    /// then the same memory for a peer-memory registration. The loader
    /// registers the first one every node accepts and logs each refusal.
    /// The regions must stay valid as long as the buffer. Default: none.
    fn device_regions(&self) -> Vec<DeviceRegion> {
        Vec::new()
    }

    /// Called before a step is read straight into `region` (one of
    /// [`device_regions`](HostBuffer::device_regions)): returns once nothing
    /// reads that device memory any more (e.g. a consumer stream still
    /// working on the batch this buffer held before). Default: nothing.
    fn begin_device_fill(&mut self, region: &DeviceRegion) -> Result<(), BoxError> {
        let _ = region;
        Ok(())
    }

    /// Called by the reader thread once a step's first `len` bytes have
    /// landed in device memory by RDMA (instead of
    /// [`filled`](HostBuffer::filled)): the backend marks the batch ready
    /// (records its ready event; no copy). Default: an error, since a buffer
    /// without device regions is never filled this way.
    fn filled_device(&mut self, len: usize) -> Result<(), BoxError> {
        Err(format!("filled_device({len}) on a buffer without device memory").into())
    }

    /// Called by the reader thread after [`filled_device`](HostBuffer::filled_device)
    /// when it needs the step's first `len` bytes on the host too (e.g. to
    /// compute document boundaries): copies them from device memory into
    /// [`bytes`](HostBuffer::bytes), returning once they are there.
    /// Returns `false` when the backend cannot. Default: `false`.
    fn copy_back(&mut self, len: usize) -> Result<bool, BoxError> {
        let _ = len;
        Ok(false)
    }

    /// Called once the consumer has released the step this buffer holds
    /// (every view of it dropped), before the buffer goes back to the ring.
    /// `consumer_streams` are the raw stream handles (e.g. `CUstream`) the
    /// consumer used the step on ([`crate::Batch::record_stream`]): a
    /// device backend records an event on each and orders its next write
    /// into this buffer after them. An error retires the buffer (it is
    /// never written again). Default: nothing.
    fn release(&mut self, consumer_streams: &[u64]) -> Result<(), BoxError> {
        let _ = consumer_streams;
        Ok(())
    }

    /// The backend's own buffer type, for backends that expose more than
    /// bytes (e.g. a device pointer and copy event); see [`crate::Batch::buffer`].
    /// Default: `None`.
    fn backend(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// Produces step buffers.
pub trait BufferAllocator: Send + Sync {
    /// Short name for logs and errors (`heap`, `cuda-pinned`, ...).
    fn name(&self) -> &str;
    /// Allocates a buffer of exactly `len` bytes, aligned to at least 8 bytes.
    fn allocate(&self, len: usize) -> Result<Box<dyn HostBuffer>, BoxError>;
}

/// One 64-byte block: the unit [`HeapBuffer`] allocates in, so its bytes are
/// 64-byte aligned (cache line; any token type fits).
#[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A heap step buffer, 64-byte aligned.
pub struct HeapBuffer {
    lines: Vec<Line>,
    len: usize,
}

impl HeapBuffer {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> Result<Self, BoxError> {
        let n = len.div_ceil(64);
        let mut lines = Vec::new();
        lines
            .try_reserve_exact(n)
            .map_err(|e| Box::new(e) as BoxError)?;
        lines.resize(n, Line([0; 64]));
        Ok(HeapBuffer { lines, len })
    }
}

impl HostBuffer for HeapBuffer {
    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Line, u8>(&self.lines)[..self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Line, u8>(&mut self.lines)[..self.len]
    }
}

/// Allocates [`HeapBuffer`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeapAllocator;

impl BufferAllocator for HeapAllocator {
    fn name(&self) -> &str {
        "heap"
    }

    fn allocate(&self, len: usize) -> Result<Box<dyn HostBuffer>, BoxError> {
        Ok(Box::new(HeapBuffer::new(len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffers_are_aligned_and_sized() {
        for len in [0usize, 1, 63, 64, 65, 16384 * 3 + 5] {
            let mut b = HeapAllocator.allocate(len).unwrap();
            assert_eq!(b.bytes().len(), len);
            assert_eq!(b.bytes().as_ptr() as usize % 64, 0);
            b.bytes_mut().iter_mut().for_each(|x| *x = 7);
            assert!(b.bytes().iter().all(|&x| x == 7));
        }
    }
}
