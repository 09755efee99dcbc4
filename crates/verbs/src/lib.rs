//! RDMA verbs transport for seqfeed: batched one-sided RDMA READs from a
//! storage node's registered sequence files straight into the caller's buffer.
//!
//! * [`VerbsServer`] (node side) registers the node's mapped files as
//!   remote-read-only memory regions on every RDMA device and accepts queue
//!   pairs through the node's control service ([`VerbsServer::accept`]).
//! * [`VerbsTransport`] (client side) implements
//!   [`seqfeed_transport::Transport`]: RC queue pairs (several per device,
//!   striped over every device), reads posted as chains of up to 32 work
//!   requests per doorbell with selective signaling, a send queue deeper
//!   than the read depth so the wire stays full ([`sendq`]: the device-free
//!   credit logic), failed QPs rebuilt and their reads
//!   retried a bounded number of times before a node failure is reported.
//! * [`pinning`] checks, before a node registers its files, that the host
//!   lets it pin them (`RLIMIT_MEMLOCK`, `MemAvailable`), and devices with
//!   on-demand paging register without pinning.
//! * [`auto_select`] decides between verbs and tcp and logs why.
//! * [`affinity`] picks the RDMA devices closest to a rank's GPU (PCIe and
//!   NUMA distance from sysfs), with a per-local-rank override.
//! * [`cm`] connects the queue pairs with rdma_cm instead (opt-in,
//!   `SEQFEED_VERBS_CONNECT=cm`; the node's [`CmListener`]): the kernel
//!   resolves address, route and GID; regions, quotas and QP replacement
//!   stay on the control service.
//! * [`standalone`] is a minimal TCP exchange used by the self-test and bench
//!   binaries before (and besides) the node's real control service.
//!
//! libibverbs is loaded at run time (`rdma-mummy-sys` dlopens
//! `libibverbs.so.1`), so a binary linking this crate starts and works over
//! tcp on a machine without rdma-core or RDMA devices: [`auto_select`] then
//! answers [`Selection::Tcp`] with the reason.
//!
//! ```no_run
//! use seqfeed_verbs::{auto_select, Selection};
//! match auto_select() {
//!     Selection::Verbs { devices } => println!("verbs over {devices:?}"),
//!     Selection::Tcp { reason } => println!("tcp: {reason}"),
//! }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod affinity;
mod client;
pub mod cm;
mod cudaptr;
mod device;
mod endpoint;
mod error;
pub mod fabric;
mod fork;
mod mrcache;
pub mod pinning;
pub use pinning::{OdpPolicy, ODP_ENV};
pub mod qpbook;
mod raw;
pub mod sendq;
mod server;
pub mod standalone;
mod wire;

pub use client::{
    parse_rail_map, parse_spin, ClientOptions, VerbsCounters, VerbsTransport, DEFAULT_SPIN,
    MAX_CHAIN, RAIL_MAP_ENV, SPIN_ENV,
};
pub use cm::{CmListener, ConnectMode, CONNECT_ENV};
pub use device::{list_devices, mtu_bytes, open_devices, open_devices_with, DeviceInfo, Nic};
pub use endpoint::{Accepted, QpEndpoint, QpExchange};
pub use error::VerbsError;
pub use fabric::FabricSettings;
pub use qpbook::{QpBook, QpLimits};
pub use sendq::{ChainPlan, SendQueue, SqConfig, MAX_SQ_DEPTH, MIN_SQ_DEPTH};
pub use server::{ServedQp, ServedRegion, ServerQps, VerbsServer, MAX_QPS_PER_CONNECT};
pub use wire::{join_regions, ControlExchange, WireAcceptor};

/// Test hook for runs without a GPU (the rxe integration tests): from now
/// on, every [`VerbsTransport`] in this process registers peer-memory
/// [`DeviceRegion`](seqfeed_transport::DeviceRegion)s without asking the
/// CUDA driver whether they are device memory, so host memory can stand in
/// for it on a provider that pins any address (rxe). Without it, such a
/// registration is refused. Per transport, see
/// [`VerbsTransport::register_host_as_device`].
///
/// # Safety
///
/// Every `DeviceRegion` registered with a verbs transport in this process
/// afterwards must name memory that stays allocated, writable and without
/// any live Rust reference to it until it is unregistered or its transport
/// dropped (read only between `read_batch_device` calls); in particular host
/// memory must not be freed while registered, or the NIC writes memory Rust
/// has reused.
#[allow(unsafe_code)]
pub unsafe fn allow_host_memory_as_device() {
    client::HOST_AS_DEVICE.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// What [`auto_select`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// RDMA verbs over these devices (each with an ACTIVE port and a usable GID).
    Verbs {
        /// Device names.
        devices: Vec<String>,
    },
    /// TCP, because verbs is not usable here.
    Tcp {
        /// Why not verbs.
        reason: String,
    },
}

/// Probes for a usable RDMA device without failing: libibverbs must load and
/// at least one device must have an ACTIVE port with a usable GID.
pub fn probe() -> Selection {
    match list_devices() {
        Err(e) => Selection::Tcp {
            reason: e.to_string(),
        },
        Ok(devs) if devs.is_empty() => Selection::Tcp {
            reason:
                "libibverbs loaded but no RDMA devices exist (no /sys/class/infiniband entries)"
                    .into(),
        },
        Ok(devs) => {
            let usable: Vec<String> = devs
                .iter()
                .filter(|d| d.active)
                .map(|d| d.name.clone())
                .collect();
            if usable.is_empty() {
                let seen: Vec<String> = devs
                    .iter()
                    .map(|d| format!("{} port {} not ACTIVE or without GID", d.name, d.port))
                    .collect();
                Selection::Tcp {
                    reason: format!("no usable RDMA device: {}", seen.join(", ")),
                }
            } else {
                Selection::Verbs { devices: usable }
            }
        }
    }
}

/// [`probe`], plus one log line (`tracing` at info level) saying which
/// transport `auto` picks and why.
pub fn auto_select() -> Selection {
    let s = probe();
    match &s {
        Selection::Verbs { devices } => {
            tracing::info!(
                "transport auto: verbs (RDMA devices with an ACTIVE port: {})",
                devices.join(", ")
            )
        }
        Selection::Tcp { reason } => tracing::info!("transport auto: tcp ({reason})"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a host without RDMA this must answer tcp with a reason, not fail or panic.
    #[test]
    fn probe_never_fails() {
        match probe() {
            Selection::Verbs { devices } => {
                assert!(!devices.is_empty());
                eprintln!("probe: verbs usable here over {devices:?}");
            }
            Selection::Tcp { reason } => {
                assert!(!reason.is_empty());
                eprintln!("probe: verbs NOT usable here ({reason}); device tests will skip");
            }
        }
    }
}
