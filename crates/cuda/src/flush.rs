//! GPUDirect RDMA write ordering: whether the NIC's writes into device
//! memory, complete as far as the host can tell (the work completion was
//! polled), are visible to CUDA work enqueued afterwards, or must first be
//! flushed with `cuFlushGPUDirectRDMAWrites`.
//!
//! `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING` gives the scope
//! within which such writes are already ordered; when it covers the owning
//! GPU (`CU_GPU_DIRECT_RDMA_WRITES_ORDERING_OWNER` or wider) a flush to the
//! owner is a no-op and is skipped. Otherwise the flush is called from the
//! host when `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS` has
//! `CU_FLUSH_GPU_DIRECT_RDMA_WRITES_OPTION_HOST`; without it nothing can be
//! flushed from the host, which is logged as a warning.

/// `CU_GPU_DIRECT_RDMA_WRITES_ORDERING_OWNER`.
pub(crate) const WRITES_ORDERING_OWNER: i32 = 100;
/// `CU_FLUSH_GPU_DIRECT_RDMA_WRITES_OPTION_HOST`.
pub(crate) const FLUSH_OPTION_HOST: i32 = 1;

/// What a direct (GPUDirect RDMA) fill does before its ready event is
/// recorded; see [`direct_flush_decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectFlush {
    /// The device orders RDMA writes for the owning GPU (or wider): the
    /// flush would be a no-op and is skipped.
    NotNeeded,
    /// Call `cuFlushGPUDirectRDMAWrites(TARGET_CURRENT_CTX, TO_OWNER)` from
    /// the host after the NIC's writes completed.
    Host,
    /// Writes are not ordered for the owner and the host flush is not
    /// offered: nothing is called (a warning is logged once per device).
    Unavailable,
}

/// The flush decision from the two device attributes: `ordering`
/// (`CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING`) and
/// `flush_options` (`CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS`,
/// a bit mask). An attribute that could not be read is passed as 0.
pub fn direct_flush_decision(ordering: i32, flush_options: i32) -> DirectFlush {
    if ordering >= WRITES_ORDERING_OWNER {
        DirectFlush::NotNeeded
    } else if flush_options > 0 && flush_options & FLUSH_OPTION_HOST != 0 {
        DirectFlush::Host
    } else {
        DirectFlush::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_for_owner_or_wider_skips_the_flush() {
        for options in [0, 1, 2, 3] {
            assert_eq!(direct_flush_decision(100, options), DirectFlush::NotNeeded);
            assert_eq!(direct_flush_decision(200, options), DirectFlush::NotNeeded);
        }
    }

    #[test]
    fn unordered_writes_flush_from_the_host_when_offered() {
        assert_eq!(direct_flush_decision(0, 1), DirectFlush::Host);
        assert_eq!(direct_flush_decision(0, 3), DirectFlush::Host);
        // Unknown ordering values below OWNER are treated as unordered.
        assert_eq!(direct_flush_decision(50, 1), DirectFlush::Host);
    }

    #[test]
    fn unordered_writes_without_the_host_option_are_unavailable() {
        assert_eq!(direct_flush_decision(0, 0), DirectFlush::Unavailable);
        // MEMOPS only: a stream-side flush, not callable from the host.
        assert_eq!(direct_flush_decision(0, 2), DirectFlush::Unavailable);
        // An attribute read as negative garbage is not a flag set.
        assert_eq!(direct_flush_decision(-1, -1), DirectFlush::Unavailable);
    }
}
