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
    /// one MR per rail, dmabuf when the region carries one, else peer memory.
    pub(super) fn register_device_mr(
        &mut self,
        region: &DeviceRegion,
    ) -> Result<(), TransportError> {
        if region.len == 0 {
            return Err(TransportError::Unsupported {
                node: self.node.clone(),
                backend: "verbs",
                what: format!("registering {region}: empty region"),
            });
        }
        let mut per_rail = Vec::with_capacity(self.rails.len());
        for r in &self.rails {
            let mr = match region.dmabuf {
                Some(d) => crate::raw::reg_dmabuf_local_write(
                    &r.nic.pd,
                    d.fd,
                    d.offset,
                    region.len,
                    region.addr,
                )
                .map_err(|e| ("ibv_reg_dmabuf_mr", e)),
                None => crate::raw::reg_device_local_write(&r.nic.pd, region.addr, region.len)
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
        let end = |x: &DeviceRegion| x.addr.saturating_add(x.len as u64);
        self.device_mrs
            .retain(|m| !(m.region.addr < end(region) && region.addr < end(&m.region)));
        self.device_mrs.push(DeviceMr {
            region: *region,
            per_rail,
        });
        tracing::info!(node = %self.node, kind = region.kind(), "verbs: registered {region} for GPUDirect RDMA");
        Ok(())
    }

    /// Drops the device registrations overlapping `addr..addr+len`.
    pub(super) fn unregister_device_mr(&mut self, addr: u64, len: usize) {
        let end = addr.saturating_add(len.max(1) as u64);
        self.device_mrs.retain(|m| {
            !(m.region.addr < end && addr < m.region.addr.saturating_add(m.region.len as u64))
        });
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
