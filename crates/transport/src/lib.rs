//! One-sided, batched reads from storage-node memory regions.
//!
//! Every backend (`local`, `tcp`, and `verbs` in the `seqfeed-verbs` crate)
//! implements [`Transport`] with RDMA semantics:
//!
//! * a storage node publishes a table of [`RegionInfo`] (one region per
//!   whole sequence file, named by its dataset-relative path, ids in sorted
//!   path order; with the address and remote key an RDMA peer needs, which
//!   other transports ignore);
//! * a client posts a batch of [`ReadRequest`]s, each copying
//!   `len` bytes at `offset` of a region into `dst_offset` of a local
//!   destination buffer;
//! * [`Transport::read_batch`] returns when every read of the batch has
//!   completed, or with the first error (naming node, region and position).
//!
//! Destination buffers are reused across steps (a ring of step buffers).
//! Backends that must register memory (verbs) keep a long-lived registration
//! only for buffers announced with [`Transport::register_buffer`], until
//! [`Transport::unregister_buffer`] (call it *before* freeing the buffer: a
//! registration pins the pages it was made on, and a new allocation at the
//! same addresses would otherwise receive nothing). Any other destination is
//! registered for one batch only, so memory freed and reallocated between
//! batches is always correct.
//!
//! Device (GPU) memory is a destination too, for transports whose NIC can
//! write it (GPUDirect RDMA): [`Transport::register_device`] registers a
//! [`DeviceRegion`] (through a dmabuf export, or a plain registration of the
//! device pointer where a peer-memory client such as `nvidia_peermem` is
//! loaded) and [`Transport::read_batch_device`] reads straight into it. A
//! `DeviceRegion` is made only by `unsafe` [`DeviceRegion::new`], whose
//! caller vouches for the memory, so safe code never hands a NIC an
//! arbitrary address. Other
//! transports refuse with [`TransportError::Unsupported`], and the caller
//! falls back to a host bounce buffer.
//!
//! The modules:
//!
//! * [`regions`]: [`RegionTable`], a node's read-only mappings (one per file);
//! * [`local`]: [`LocalTransport`], same-host reads straight from the
//!   mapping, the reference implementation the others are tested against;
//! * [`tcp`]: [`TcpTransport`] (one-sided reads over several TCP
//!   connections, received straight into the destination) and
//!   [`ControlClient`] (handshake plus one request/one response, for
//!   control frames such as `VerbsConnect`), configured by
//!   [`ConnectOptions`];
//! * [`cluster`]: [`ClusterFile`], which node holds which files, and
//!   [`cluster::place`].
//!
//! ```
//! use seqfeed_transport::{LocalTransport, ReadRequest, RegionId, Transport};
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("a.seq"), b"0123456789").unwrap();
//! let mut t = LocalTransport::open(dir.path(), &["a.seq"]).unwrap();
//! let mut dst = [0u8; 4];
//! let read = ReadRequest { region: RegionId(0), offset: 3, len: 4, dst_offset: 0 };
//! t.read_batch(&[read], &mut dst).unwrap();
//! assert_eq!(&dst, b"3456");
//! ```
#![deny(missing_docs)]
// Only the private `mmap` module (one call) holds `unsafe`.
#![deny(unsafe_code)]

pub mod cluster;
pub mod local;
mod mmap;
pub mod regions;
pub mod secret;
pub mod tcp;

pub use cluster::{ClusterError, ClusterFile, ClusterNode};
pub use local::LocalTransport;
pub use regions::{MappedRegion, RegionError, RegionTable};
pub use secret::{read_secret_file, SecretFileError};
/// Region ids and table entries are defined with the wire protocol that
/// carries them.
pub use seqfeed_wire::{RegionId, RegionInfo};
pub use tcp::{ConnectOptions, ControlClient, TcpTransport};

/// One one-sided read: `len` bytes at `offset` of `region` into
/// `dst_offset` of the destination buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// Source region on the node.
    pub region: RegionId,
    /// Byte offset inside the region.
    pub offset: u64,
    /// Number of bytes to read.
    pub len: u32,
    /// Byte offset inside the destination buffer.
    pub dst_offset: u64,
}

impl ReadRequest {
    /// Checks this read against a region length and a destination length.
    pub fn check(&self, region_len: u64, dst_len: usize) -> Result<(), TransportError> {
        let end = self.offset.checked_add(u64::from(self.len));
        if end.is_none_or(|e| e > region_len) {
            return Err(TransportError::OutOfBounds {
                what: format!(
                    "{} bytes [{}, +{}) of {} (length {})",
                    self.len, self.offset, self.len, self.region, region_len
                ),
            });
        }
        let dend = self.dst_offset.checked_add(u64::from(self.len));
        if dend.is_none_or(|e| e > dst_len as u64) {
            return Err(TransportError::OutOfBounds {
                what: format!(
                    "destination [{}, +{}) of a {}-byte buffer",
                    self.dst_offset, self.len, dst_len
                ),
            });
        }
        Ok(())
    }
}

/// A dmabuf export of device memory (`cuMemGetHandleForAddressRange(...,
/// DMA_BUF_FD)`): what `ibv_reg_dmabuf_mr` takes besides the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmaBuf {
    /// The dmabuf file descriptor. The exporter owns it and keeps it open
    /// until the region is unregistered.
    pub fd: i32,
    /// Offset of the region's first byte inside the dmabuf.
    pub offset: u64,
}

/// Device memory as a read destination: `len` bytes at device virtual
/// address `addr`, optionally with a dmabuf export of the same bytes.
///
/// A transport hands this address to the NIC, which writes it by DMA, so a
/// `DeviceRegion` can only be made by a caller who vouches for the memory:
/// [`DeviceRegion::new`] is `unsafe` (see its `# Safety` contract), and with
/// it [`Transport::register_device`] and [`Transport::read_batch_device`]
/// are safe. The owner of the memory makes one:
///
/// ```
/// use seqfeed_transport::DeviceRegion;
/// # let (ptr, len) = (0x7f00_0000_0000u64, 1 << 20);
/// // SAFETY: (in real code) `ptr` is a live cuMemAlloc allocation of `len`
/// // bytes that this owner keeps until every transport has unregistered it.
/// let r = unsafe { DeviceRegion::new(ptr, len, None) };
/// assert_eq!(r.kind(), "peer-memory");
/// ```
///
/// and safe code cannot name an arbitrary address for the NIC: the same call
/// without `unsafe`, or a struct literal, does not compile (stable rustdoc
/// does not check the error codes; the example above shows the call itself
/// is well-formed):
///
/// ```compile_fail,E0133
/// use seqfeed_transport::DeviceRegion;
/// // error[E0133]: call to unsafe function requires an unsafe block
/// let r = DeviceRegion::new(0x1000, 4096, None);
/// ```
///
/// ```compile_fail,E0451
/// use seqfeed_transport::DeviceRegion;
/// // error[E0451]: the fields are private
/// let r = DeviceRegion { addr: 0x1000, len: 4096, dmabuf: None, simulated: false };
/// ```
///
/// Fakes and tests that need no real memory use
/// [`DeviceRegion::simulated`], which every NIC-backed transport refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRegion {
    addr: u64,
    len: usize,
    dmabuf: Option<DmaBuf>,
    simulated: bool,
}

impl DeviceRegion {
    /// A destination of `len` bytes of device memory at `addr`, registered
    /// through `dmabuf` when given (`ibv_reg_dmabuf_mr`), else by its address
    /// (peer memory).
    ///
    /// # Safety
    ///
    /// From this call until every registration made from this value (or a
    /// copy of it) is gone, i.e. until
    /// [`Transport::unregister_device`] covered it or the transport that
    /// registered it was dropped, the caller guarantees that:
    /// * `[addr, addr + len)` is memory a NIC may write: device memory of
    ///   one live allocation (for peer memory), or the bytes of the dmabuf
    ///   `dmabuf.fd` at `dmabuf.offset` (that fd stays open and is the
    ///   export of those bytes);
    /// * the memory stays allocated (it is not freed and reused), and no
    ///   Rust reference (`&`/`&mut`) to it exists, since the NIC writes it
    ///   without Rust knowing;
    /// * nothing else reads or writes it while a
    ///   [`Transport::read_batch_device`] into it runs.
    ///
    /// Transports may check some of this (the verbs transport asks the CUDA
    /// driver that a peer-memory address is device memory), but do not have
    /// to.
    #[allow(unsafe_code)]
    pub unsafe fn new(addr: u64, len: usize, dmabuf: Option<DmaBuf>) -> DeviceRegion {
        DeviceRegion {
            addr,
            len,
            dmabuf,
            simulated: false,
        }
    }

    /// A region naming no real memory, for fake transports and tests: safe
    /// to make because every transport that hands addresses to a NIC (verbs)
    /// refuses to register it ([`DeviceRegion::is_simulated`]).
    pub fn simulated(addr: u64, len: usize, dmabuf: Option<DmaBuf>) -> DeviceRegion {
        DeviceRegion {
            addr,
            len,
            dmabuf,
            simulated: true,
        }
    }

    /// True for a [`DeviceRegion::simulated`] region: a transport that
    /// hands addresses to hardware must refuse it.
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    /// Device virtual address of the first byte.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length in bytes.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The dmabuf export of the region, registered with
    /// `ibv_reg_dmabuf_mr`; `None`: the device pointer itself is registered
    /// (peer memory).
    pub fn dmabuf(&self) -> Option<DmaBuf> {
        self.dmabuf
    }

    /// The `len` bytes at `offset` of this region, or `None` when they are
    /// not all inside it. Safe: a part of memory vouched for is vouched for.
    pub fn part(&self, offset: u64, len: usize) -> Option<DeviceRegion> {
        let end = offset.checked_add(len as u64)?;
        if end > self.len as u64 {
            return None;
        }
        let dmabuf = match self.dmabuf {
            Some(d) => Some(DmaBuf {
                fd: d.fd,
                offset: d.offset.checked_add(offset)?,
            }),
            None => None,
        };
        Some(DeviceRegion {
            addr: self.addr.checked_add(offset)?,
            len,
            dmabuf,
            simulated: self.simulated,
        })
    }

    /// How the region is registered: `dmabuf` or `peer-memory`.
    pub fn kind(&self) -> &'static str {
        if self.dmabuf.is_some() {
            "dmabuf"
        } else {
            "peer-memory"
        }
    }

    /// True when `[addr, addr + len)` of `other` lies inside this region.
    pub fn contains(&self, other: &DeviceRegion) -> bool {
        self.addr <= other.addr
            && other.addr.saturating_add(other.len as u64)
                <= self.addr.saturating_add(self.len as u64)
    }

    /// True when this region shares a byte with the `len` bytes at `addr`.
    pub fn overlaps(&self, addr: u64, len: usize) -> bool {
        self.addr < addr.saturating_add(len.max(1) as u64)
            && addr < self.addr.saturating_add(self.len.max(1) as u64)
    }
}

impl std::fmt::Display for DeviceRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes of device memory at {:#x}", self.len, self.addr)?;
        if self.simulated {
            write!(f, " (simulated)")?;
        }
        if let Some(d) = self.dmabuf {
            write!(f, " (dmabuf fd {}, offset {})", d.fd, d.offset)?;
        }
        Ok(())
    }
}

/// Counters a transport returns for one completed batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Number of reads completed.
    pub reads: u64,
    /// Number of bytes moved.
    pub bytes: u64,
    /// Work requests / request frames posted (doorbells for verbs).
    pub posts: u64,
}

/// Errors from any transport. Each names the node and what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A read falls outside its region or its destination buffer.
    #[error("read out of bounds: {what}")]
    OutOfBounds {
        /// Description of the offending read.
        what: String,
    },
    /// The region id is not in the node's table.
    #[error("node {node}: unknown {region}")]
    UnknownRegion {
        /// Node address or name.
        node: String,
        /// The unknown region.
        region: RegionId,
    },
    /// The node could not be reached or the connection broke.
    #[error("node {node}: {what}: {source}")]
    Io {
        /// Node address or name.
        node: String,
        /// What was being done.
        what: String,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The node refused the request or answered with a malformed frame.
    #[error("node {node}: protocol error: {what}")]
    Protocol {
        /// Node address or name.
        node: String,
        /// Description.
        what: String,
    },
    /// The node refused the session (wrong shared secret, dataset
    /// fingerprint or protocol version).
    #[error("node {node} refused the connection: {reason}")]
    Refused {
        /// Node address or name.
        node: String,
        /// The node's reason.
        reason: String,
    },
    /// The transport cannot do what was asked (e.g. write device memory, or
    /// register a dmabuf on a provider without dmabuf support). Not a node
    /// failure: the caller falls back (to a host bounce buffer).
    #[error("node {node}: {backend}: unsupported: {what}")]
    Unsupported {
        /// Node address or name.
        node: String,
        /// Backend name.
        backend: &'static str,
        /// What was refused, and why.
        what: String,
    },
    /// A backend-specific failure (e.g. an RDMA work completion error).
    #[error("node {node}: {backend}: {what}")]
    Backend {
        /// Node address or name.
        node: String,
        /// Backend name (`verbs`, ...).
        backend: &'static str,
        /// Description.
        what: String,
    },
}

impl TransportError {
    /// True when retrying on another replica may succeed (node unreachable,
    /// connection lost, RDMA QP failure), false for caller bugs such as
    /// out-of-bounds reads.
    pub fn is_node_failure(&self) -> bool {
        matches!(
            self,
            TransportError::Io { .. }
                | TransportError::Backend { .. }
                | TransportError::Protocol { .. }
        )
    }
}

/// A connection from one client to one storage node with one-sided,
/// batched read semantics.
pub trait Transport: Send {
    /// Short backend name: `local`, `tcp` or `verbs`.
    fn backend(&self) -> &'static str;

    /// The node this transport reads from (address or name), for errors and logs.
    fn node(&self) -> &str;

    /// The node's region table.
    fn regions(&self) -> &[RegionInfo];

    /// Performs every read of `reads` into `dst` and returns when all have
    /// completed. Reads may complete in any order; on error, the contents of
    /// the destination ranges of this batch are unspecified.
    fn read_batch(
        &mut self,
        reads: &[ReadRequest],
        dst: &mut [u8],
    ) -> Result<BatchStats, TransportError>;

    /// Announces `buf` as a long-lived destination (e.g. one step buffer of
    /// a ring): a backend that registers memory registers it now and every
    /// later batch whose destination lies inside it needs no registration.
    /// The registration lasts until [`unregister_buffer`](Self::unregister_buffer)
    /// or until the transport is dropped; the caller must unregister before
    /// freeing the buffer. Registering again replaces any registration that
    /// overlaps `buf` (so a buffer reallocated at the same address is
    /// registered afresh). Default: nothing to do (CPU-copying transports).
    fn register_buffer(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let _ = buf;
        Ok(())
    }

    /// Drops every long-lived registration overlapping the `len` bytes at
    /// `addr` (see [`register_buffer`](Self::register_buffer)). Unknown
    /// ranges are ignored. Default: nothing to do.
    fn unregister_buffer(&mut self, addr: usize, len: usize) {
        let _ = (addr, len);
    }

    /// Registers device memory as a destination of
    /// [`read_batch_device`](Self::read_batch_device) (GPUDirect RDMA): by
    /// its dmabuf export when `region.dmabuf` is set, else by its device
    /// address (peer memory). Registering again replaces any overlapping
    /// registration. Safe because the region's maker vouched for the memory
    /// ([`DeviceRegion::new`] is `unsafe`); a transport that hands addresses
    /// to a NIC must refuse [`DeviceRegion::simulated`] regions. Default:
    /// [`TransportError::Unsupported`] (the transport copies with the CPU
    /// and cannot write device memory).
    fn register_device(&mut self, region: &DeviceRegion) -> Result<(), TransportError> {
        Err(TransportError::Unsupported {
            node: self.node().to_string(),
            backend: self.backend(),
            what: format!(
                "the {} transport copies with the CPU and cannot write {region}",
                self.backend()
            ),
        })
    }

    /// Drops every device registration overlapping the `len` bytes at
    /// `addr`. Call it before the device memory is freed. Default: nothing.
    fn unregister_device(&mut self, addr: u64, len: usize) {
        let _ = (addr, len);
    }

    /// Like [`read_batch`](Self::read_batch), into device memory inside a
    /// region registered with [`register_device`](Self::register_device)
    /// (`dst_offset`s are relative to `dst.addr`). Returns when every read
    /// has landed. Default: [`TransportError::Unsupported`].
    fn read_batch_device(
        &mut self,
        reads: &[ReadRequest],
        dst: &DeviceRegion,
    ) -> Result<BatchStats, TransportError> {
        let _ = reads;
        Err(TransportError::Unsupported {
            node: self.node().to_string(),
            backend: self.backend(),
            what: format!("the {} transport cannot read into {dst}", self.backend()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_transports_refuse_device_memory_cleanly_and_accept_buffers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.seq"), b"0123456789").unwrap();
        let mut t = LocalTransport::open(dir.path(), &["a.seq"]).unwrap();
        let region = DeviceRegion::simulated(0x7000_0000, 4096, Some(DmaBuf { fd: 9, offset: 0 }));
        let e = t.register_device(&region).unwrap_err();
        assert!(matches!(e, TransportError::Unsupported { .. }), "{e}");
        assert!(!e.is_node_failure());
        let msg = e.to_string();
        assert!(
            msg.contains("local") && msg.contains("0x70000000") && msg.contains("dmabuf fd 9"),
            "{msg}"
        );
        let read = ReadRequest {
            region: RegionId(0),
            offset: 0,
            len: 4,
            dst_offset: 0,
        };
        let e = t.read_batch_device(&[read], &region).unwrap_err();
        assert!(matches!(e, TransportError::Unsupported { .. }), "{e}");
        // Host buffers: registration is a no-op and reads still work.
        let mut dst = [0u8; 4];
        t.register_buffer(&mut dst).unwrap();
        t.read_batch(&[read], &mut dst).unwrap();
        t.unregister_buffer(dst.as_ptr() as usize, dst.len());
        assert_eq!(&dst, b"0123");
        assert_eq!(region.kind(), "dmabuf");
        let inner = DeviceRegion::simulated(0x7000_0010, 16, None);
        assert!(region.contains(&inner) && !inner.contains(&region));
        assert_eq!(inner.kind(), "peer-memory");
        assert!(inner.is_simulated() && inner.to_string().contains("(simulated)"));
    }

    #[test]
    fn parts_stay_inside_and_follow_the_dmabuf_offset() {
        let r = DeviceRegion::simulated(0x1000, 100, Some(DmaBuf { fd: 3, offset: 8 }));
        let p = r.part(10, 90).expect("inside");
        assert_eq!((p.addr(), p.len()), (0x100a, 90));
        assert_eq!(p.dmabuf(), Some(DmaBuf { fd: 3, offset: 18 }));
        assert!(p.is_simulated() && r.contains(&p));
        assert_eq!(r.part(10, 91), None);
        assert_eq!(r.part(u64::MAX, 1), None);
        assert!(r.overlaps(0x1000 + 99, 1) && !r.overlaps(0x1000 + 100, 8));
    }
}
