//! The loader's error type. Every variant names what failed and where: the
//! node, the step, the file, the environment variable.

use seqfeed_transport::TransportError;

/// Boxed error from a block source (e.g. the plan) or an allocator.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from the cluster reader and the loader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoaderError {
    /// A configuration value is invalid.
    #[error("invalid loader configuration: {what}")]
    Config {
        /// What is wrong.
        what: String,
    },
    /// The consumer holds every step buffer of the ring, so the reader
    /// cannot fill the next step without overwriting memory still in use.
    #[error("step {step}: the consumer holds all {ring} step buffers (prefetch + 1) and released none for {waited:?}; the reader cannot read ahead without overwriting a batch still in use: drop batches (and tensors made from them) sooner, or raise prefetch")]
    RingHeld {
        /// The step `next` was waiting for.
        step: u64,
        /// Ring size.
        ring: usize,
        /// How long `next` waited.
        waited: std::time::Duration,
    },
    /// A plan, dataset, shapes or cluster file could not be opened.
    #[error("{what}: {source}")]
    Open {
        /// What was being opened.
        what: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// An environment variable (RANK, WORLD_SIZE, LOCAL_RANK) is malformed.
    #[error("environment variable {var}={value:?}: {why}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The block source (the plan) could not produce a rank's block.
    #[error("step {step}: cannot compute the block of rank {rank}: {source}")]
    Block {
        /// The step.
        step: u64,
        /// The rank.
        rank: usize,
        /// Underlying error.
        #[source]
        source: BoxError,
    },
    /// The storage nodes could not describe the dataset, or describe
    /// different data.
    #[error("{what}")]
    Nodes {
        /// What went wrong, naming the nodes.
        what: String,
    },
    /// A node could not be connected after every retry.
    #[error("node {node}: unreachable after {attempts} attempt(s): {source}")]
    Connect {
        /// The node.
        node: String,
        /// Connection attempts made.
        attempts: u32,
        /// The last error.
        #[source]
        source: TransportError,
    },
    /// A node's region table lacks a file the cluster file says it holds.
    #[error("node {node}: its region table has no region named {file:?} (the cluster file says it holds it)")]
    MissingRegion {
        /// The node.
        node: String,
        /// The dataset-relative file path.
        file: String,
    },
    /// No node of the cluster holds a file the plan needs.
    #[error("no node holds file {file:?}")]
    Unplaced {
        /// The dataset-relative file path.
        file: String,
    },
    /// Every replica of a file failed or stayed unreachable for the whole
    /// fail-over window.
    #[error("step {step}: no live replica of {file:?} within {waited_ms} ms; tried: {tried}")]
    NoReplica {
        /// The step being read.
        step: u64,
        /// The dataset-relative file path.
        file: String,
        /// How long the reader waited for a replica.
        waited_ms: u128,
        /// Each replica with its latest state: how long it has been down,
        /// its latest error and the read that made it suspect (or its
        /// damaged copy).
        tried: String,
    },
    /// Every replica of a file that was read served data that fails the
    /// file's CRC32C table (a file changed or damaged in place on its nodes).
    #[error("step {step}: no intact replica of {file:?}: {what}")]
    Corrupt {
        /// The step being read.
        step: u64,
        /// The dataset-relative file path.
        file: String,
        /// Each damaged copy: node, sequence and checksums.
        what: String,
    },
    /// A read failed for a reason another replica cannot fix (e.g. out of
    /// bounds: the plan and the node disagree about a file).
    #[error("step {step}: node {node}: {source}")]
    Read {
        /// The step being read.
        step: u64,
        /// The node.
        node: String,
        /// Underlying error.
        #[source]
        source: TransportError,
    },
    /// A sequence of the block does not fit the step buffer's row.
    #[error("step {step}, row {row}: {what}")]
    BadRow {
        /// The step.
        step: u64,
        /// The row within the rank's block.
        row: usize,
        /// What is wrong.
        what: String,
    },
    /// A step buffer could not be allocated.
    #[error("allocating a {len}-byte step buffer with {allocator}: {source}")]
    Alloc {
        /// Requested length.
        len: usize,
        /// Allocator name.
        allocator: String,
        /// Underlying error.
        #[source]
        source: BoxError,
    },
    /// The step buffer's backend could not move a filled step to its
    /// destination (e.g. the async copy to GPU memory failed to start).
    #[error("step {step}: moving the step buffer to its destination: {source}")]
    Destination {
        /// The step.
        step: u64,
        /// Underlying error.
        #[source]
        source: BoxError,
    },
    /// A step could not be read straight into device memory (a node's
    /// transport has no registration of it, e.g. it reconnected and refused
    /// the registration). The loader then reads the step through the host
    /// buffer instead.
    #[error("step {step}: node {node}: cannot read into device memory: {what}")]
    DeviceDestination {
        /// The step.
        step: u64,
        /// The node.
        node: String,
        /// Why.
        what: String,
    },
    /// The background reader thread ended unexpectedly (it panicked).
    #[error("the loader's reader thread ended unexpectedly before step {step}")]
    ReaderGone {
        /// The step the consumer waited for.
        step: u64,
    },
}
