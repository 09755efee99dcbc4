//! Destination registrations shared per protection domain: every transport
//! of a process opens a device with the same protection domain (see
//! `device::open_devices_with`), so a buffer that several node transports
//! read into (the loader's step ring) is registered once per device, not
//! once per node per device. Entries are weak: a registration lives as
//! long as some transport holds it, and the next request after the last
//! holder dropped it registers afresh.
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;

/// (protection domain, address, length) -> registration.
type Cache = HashMap<(usize, usize, usize), Weak<MemoryRegion>>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A local-write registration of `len` bytes at `addr` in `pd`: the one
/// another transport of this process already holds for exactly that range,
/// else a new one. The flag says whether it was registered now.
///
/// A live registration keeps its protection domain alive, so a key's
/// domain address cannot be reused while the entry can still be upgraded.
pub(crate) fn local_write(
    pd: &Arc<ProtectionDomain>,
    addr: usize,
    len: usize,
) -> io::Result<(Arc<MemoryRegion>, bool)> {
    let key = (Arc::as_ptr(pd) as usize, addr, len);
    let mut map = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(mr) = map.get(&key).and_then(Weak::upgrade) {
        return Ok((mr, false));
    }
    // Forget registrations nobody holds any more (bounded by live ones).
    map.retain(|_, w| w.strong_count() > 0);
    let mr = crate::raw::reg_local_write(pd, addr, len)?;
    map.insert(key, Arc::downgrade(&mr));
    Ok((mr, true))
}
