//! Errors of the verbs transport, each naming the device or node, the
//! region and the step that failed.

use seqfeed_transport::TransportError;

/// A verbs failure with its context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerbsError {
    /// `libibverbs.so.1` could not be loaded (no rdma-core installed).
    #[error("libibverbs.so.1 cannot be loaded: {detail}")]
    NoLibrary {
        /// The dynamic loader's message.
        detail: String,
    },
    /// A device-level verb failed (open, query, PD, CQ, MR ...).
    #[error("RDMA device {device}: {step}: {detail}")]
    Device {
        /// Device name (`-` before a device is known).
        device: String,
        /// The verb or step that failed.
        step: &'static str,
        /// errno text or other detail.
        detail: String,
    },
    /// The node would pin more memory than the host allows
    /// ([`pinning::check`](crate::pinning::check)): the numbers and the fix.
    #[error("cannot register the served files for RDMA: {detail}")]
    Pinning {
        /// What would be pinned, the limit it exceeds, and how to raise it.
        detail: String,
    },
    /// A connection-level failure with a node (QP setup, exchange, completion error).
    #[error("node {node}: verbs: {step}: {detail}")]
    Node {
        /// Node address or name.
        node: String,
        /// The step that failed (e.g. `QP RESET->RTS`, `RDMA READ completion`).
        step: String,
        /// Detail: device, region, offsets, status.
        detail: String,
    },
}

impl From<VerbsError> for TransportError {
    fn from(e: VerbsError) -> TransportError {
        match e {
            VerbsError::Node { node, step, detail } => TransportError::Backend {
                node,
                backend: "verbs",
                what: format!("{step}: {detail}"),
            },
            other => TransportError::Backend {
                node: "-".into(),
                backend: "verbs",
                what: other.to_string(),
            },
        }
    }
}
