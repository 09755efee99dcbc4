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
//! loaded) and [`Transport::read_batch_device`] reads straight into it. Other
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
/// Plain numbers, no borrow: the owner of the memory keeps it allocated
/// from [`Transport::register_device`] until after
/// [`Transport::unregister_device`] (or the transport's drop), and does not
/// read it while a [`Transport::read_batch_device`] into it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceRegion {
    /// Device virtual address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
    /// A dmabuf export of the region: registered with `ibv_reg_dmabuf_mr`;
    /// `None`: the device pointer itself is registered (peer memory).
    pub dmabuf: Option<DmaBuf>,
}

impl DeviceRegion {
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
}

impl std::fmt::Display for DeviceRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes of device memory at {:#x}", self.len, self.addr)?;
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
    /// registration. Default: [`TransportError::Unsupported`] (the transport
    /// copies with the CPU and cannot write device memory).
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
        let region = DeviceRegion {
            addr: 0x7000_0000,
            len: 4096,
            dmabuf: Some(DmaBuf { fd: 9, offset: 0 }),
        };
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
        let inner = DeviceRegion {
            addr: 0x7000_0010,
            len: 16,
            dmabuf: None,
        };
        assert!(region.contains(&inner) && !inner.contains(&region));
        assert_eq!(inner.kind(), "peer-memory");
    }
}
