//! Destination memory: long-lived registrations of announced buffers, per
//! batch registrations of any other destination, and device-memory
//! (GPUDirect) registrations; one MR per rail each.

use std::sync::Arc;

use seqfeed_transport::{DeviceRegion, TransportError};
use sideway::ibverbs::memory_region::MemoryRegion;

use super::{node_err, VerbsTransport};

/// A long-lived destination registration (one MR per rail), made by
/// [`Transport::register_buffer`].
pub(super) struct MrEntry {
    addr: usize,
    len: usize,
    per_rail: Vec<Arc<MemoryRegion>>,
}

/// A device-memory registration (one MR per rail), made by
/// [`Transport::register_device`].
pub(super) struct DeviceMr {
    region: DeviceRegion,
    per_rail: Vec<Arc<MemoryRegion>>,
}

impl MrEntry {
    fn contains(&self, addr: usize, len: usize) -> bool {
        self.addr <= addr && addr + len <= self.addr + self.len
    }

    fn overlaps(&self, addr: usize, len: usize) -> bool {
        addr < self.addr + self.len && self.addr < addr + len
    }
}

impl VerbsTransport {
    /// Registers `len` bytes at `addr` (local write) on every rail. A
    /// `shared` registration (an announced, long-lived buffer) reuses the
    /// one another transport of this process holds for the same range on the
    /// same device, so the loader's ring is registered once per device, not
    /// once per node; a per-batch registration is always this transport's own.
    pub(super) fn register_range(
        &mut self,
        addr: usize,
        len: usize,
        shared: bool,
    ) -> Result<Vec<Arc<MemoryRegion>>, TransportError> {
        let mut per_rail = Vec::with_capacity(self.rails.len());
        let mut fresh = false;
        for r in &self.rails {
            let reg = if shared {
                crate::mrcache::local_write(&r.nic.pd, addr, len)
            } else {
                crate::raw::reg_local_write(&r.nic.pd, addr, len).map(|mr| (mr, true))
            };
            let (mr, new) = reg.map_err(|e| {
                node_err(
                    &self.node,
                    "ibv_reg_mr (destination, local write)",
                    format!("device {}: {len} bytes at {addr:#x}: {e}", r.nic.info.name),
                )
            })?;
            fresh |= new;
            per_rail.push(mr);
        }
        if fresh {
            self.counters.registrations += 1;
        } else {
            self.counters.shared_registrations += 1;
        }
        Ok(per_rail)
    }

    /// Keys of `dst` on every rail: those of the registered buffer holding it,
    /// else of a registration made for this batch only (kept in `batch_mrs`
    /// until the batch has ended).
    pub(super) fn lkeys(&mut self, dst: &mut [u8]) -> Result<Vec<u32>, TransportError> {
        let (addr, len) = (dst.as_ptr() as usize, dst.len());
        if let Some(e) = self.mrs.iter().find(|e| e.contains(addr, len)) {
            return Ok(e.per_rail.iter().map(|m| m.lkey()).collect());
        }
        let per_rail = self.register_range(addr, len, false)?;
        self.counters.batch_registrations += 1;
        let keys = per_rail.iter().map(|m| m.lkey()).collect();
        self.batch_mrs = per_rail;
        Ok(keys)
    }

    /// [`Transport::register_device`](seqfeed_transport::Transport::register_device):
    /// one MR per rail, dmabuf when the region carries one, else peer memory,
    /// whose address the CUDA driver must confirm is device memory of one
    /// allocation ([`crate::cudaptr`]). Simulated regions are refused.
    pub(super) fn register_device_mr(
        &mut self,
        region: &DeviceRegion,
    ) -> Result<(), TransportError> {
        let ask_cuda = !HOST_AS_DEVICE.load(std::sync::atomic::Ordering::SeqCst);
        self.register_device_checked(region, ask_cuda)
    }

    /// The self-test's hook: registers `region` for peer memory without
    /// asking the CUDA driver, so host memory can stand in for device memory
    /// on a provider (rxe) that pins any address.
    ///
    /// # Safety
    ///
    /// `region` must name host memory that stays allocated, with no Rust
    /// reference to it, until it is unregistered or the transport dropped;
    /// the caller reads it only after `read_batch_device` has returned.
    #[allow(unsafe_code)]
    pub(super) unsafe fn register_host_as_device_mr(
        &mut self,
        region: &DeviceRegion,
    ) -> Result<(), TransportError> {
        self.register_device_checked(region, false)
    }

    #[allow(unsafe_code)]
    fn register_device_checked(
        &mut self,
        region: &DeviceRegion,
        ask_cuda: bool,
    ) -> Result<(), TransportError> {
        let refuse = |what: String| TransportError::Unsupported {
            node: self.node.clone(),
            backend: "verbs",
            what,
        };
        refusal(region, ask_cuda, crate::cudaptr::check_device_range).map_err(refuse)?;
        let mut per_rail = Vec::with_capacity(self.rails.len());
        for r in &self.rails {
            let mr = match region.dmabuf() {
                Some(d) => crate::raw::reg_dmabuf_local_write(
                    &r.nic.pd,
                    d.fd,
                    d.offset,
                    region.len(),
                    region.addr(),
                )
                .map_err(|e| ("ibv_reg_dmabuf_mr", e)),
                // SAFETY: `region` is no simulated region, so its maker vouched for it
                // (`DeviceRegion::new`'s contract: allocated, writable by the NIC, no
                // Rust reference, until unregistered); and either the CUDA driver has
                // just confirmed it is device memory of one allocation, or the caller
                // of the unsafe `register_host_as_device_mr` took that on.
                None => unsafe {
                    crate::raw::reg_device_local_write(&r.nic.pd, region.addr(), region.len())
                }
                .map_err(|e| ("ibv_reg_mr on the device pointer (peer memory)", e)),
            };
            match mr {
                Ok(mr) => per_rail.push(mr),
                Err((call, e)) => {
                    return Err(TransportError::Unsupported {
                        node: self.node.clone(),
                        backend: "verbs",
                        what: format!("device {} refused {call} of {region}: {e}", r.nic.info.name),
                    })
                }
            }
        }
        self.counters.registrations += 1;
        self.device_mrs
            .retain(|m| !m.region.overlaps(region.addr(), region.len()));
        self.device_mrs.push(DeviceMr {
            region: *region,
            per_rail,
        });
        tracing::info!(node = %self.node, kind = region.kind(), "verbs: registered {region} for GPUDirect RDMA");
        Ok(())
    }

    /// Drops the device registrations overlapping `addr..addr+len`.
    pub(super) fn unregister_device_mr(&mut self, addr: u64, len: usize) {
        self.device_mrs.retain(|m| !m.region.overlaps(addr, len));
    }

    /// Keys (one per rail) of the device registration holding `dst`.
    pub(super) fn device_lkeys(&self, dst: &DeviceRegion) -> Result<Vec<u32>, TransportError> {
        self.device_mrs
            .iter()
            .find(|m| m.region.contains(dst))
            .map(|m| m.per_rail.iter().map(|mr| mr.lkey()).collect::<Vec<u32>>())
            .ok_or_else(|| TransportError::Unsupported {
                node: self.node.clone(),
                backend: "verbs",
                what: format!("reading into {dst}: not inside a registered device region"),
            })
    }

    /// [`Transport::register_buffer`](seqfeed_transport::Transport::register_buffer):
    /// a long-lived registration replacing any that overlaps it.
    pub(super) fn register_host_buffer(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let (addr, len) = (buf.as_ptr() as usize, buf.len());
        if len == 0 {
            return Ok(());
        }
        // Whatever overlaps `buf` was made on pages that `buf` owns now (or
        // that were freed): it must not serve reads any more.
        self.mrs.retain(|e| !e.overlaps(addr, len));
        let per_rail = self.register_range(addr, len, true)?;
        self.mrs.push(MrEntry {
            addr,
            len,
            per_rail,
        });
        tracing::debug!(node = %self.node, addr, len, buffers = self.mrs.len(), "verbs: destination buffer registered");
        Ok(())
    }

    /// Drops the long-lived registrations overlapping `addr..addr+len`.
    pub(super) fn unregister_host_buffer(&mut self, addr: usize, len: usize) {
        // No read is in flight between batches (`read_batch` returns only when
        // none can still write), so the MRs can go at once.
        self.mrs.retain(|e| !e.overlaps(addr, len.max(1)));
    }
}

/// Set by the unsafe [`crate::allow_host_memory_as_device`]: peer-memory
/// registrations skip the CUDA driver check in this whole process.
pub(crate) static HOST_AS_DEVICE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Why the verbs transport will not register `region`, if it will not: an
/// empty or simulated region, or (when `ask_cuda`) a peer-memory address
/// that `is_device` (the CUDA driver) does not confirm as device memory of
/// one allocation. A dmabuf region is checked by the kernel instead (the fd
/// must be a dmabuf holding the range).
pub(super) fn refusal(
    region: &DeviceRegion,
    ask_cuda: bool,
    is_device: impl FnOnce(u64, usize) -> Result<(), String>,
) -> Result<(), String> {
    if region.len() == 0 {
        return Err(format!("registering {region}: empty region"));
    }
    if region.is_simulated() {
        return Err(format!(
            "registering {region}: a simulated region names no memory the NIC may write"
        ));
    }
    if region.dmabuf().is_none() && ask_cuda {
        is_device(region.addr(), region.len())
            .map_err(|why| format!("peer-memory registration of {region} refused: {why}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqfeed_transport::DmaBuf;

    /// Safe code cannot get an arbitrary address registered: a simulated
    /// region (the only kind safe code can make) is refused, and host
    /// memory behind a vouched-for region is refused by the CUDA check.
    #[test]
    #[allow(unsafe_code)]
    fn safe_code_cannot_register_an_arbitrary_address() {
        let never = |_: u64, _: usize| -> Result<(), String> { panic!("not asked") };
        let fake = DeviceRegion::simulated(0x7000_0000, 4096, None);
        let e = refusal(&fake, true, never).unwrap_err();
        assert!(e.contains("simulated"), "{e}");
        let e = refusal(
            &DeviceRegion::simulated(0x7000_0000, 4096, Some(DmaBuf { fd: 3, offset: 0 })),
            true,
            never,
        )
        .unwrap_err();
        assert!(e.contains("simulated"), "{e}");
        let host = vec![0u8; 4096];
        // SAFETY: the region is only checked, never registered: no NIC sees it.
        let r = unsafe { DeviceRegion::new(host.as_ptr() as u64, host.len(), None) };
        let e = refusal(&r, true, crate::cudaptr::check_device_range).unwrap_err();
        assert!(
            e.contains("peer-memory registration") && e.contains("refused"),
            "{e}"
        );
        // The driver's answer decides; the explicit hook skips it.
        assert_eq!(refusal(&r, true, |_, _| Ok(())), Ok(()));
        assert_eq!(refusal(&r, false, never), Ok(()));
        // SAFETY: as above, only checked.
        let empty = unsafe { DeviceRegion::new(host.as_ptr() as u64, 0, None) };
        assert!(refusal(&empty, false, never).unwrap_err().contains("empty"));
    }
}
