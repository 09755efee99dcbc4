//! Trainer-side loader for seqfeed.
//!
//! A trainer rank embeds a [`Loader`]: it learns its rank and world from the
//! launcher's environment ([`LoaderConfig::from_env`]: `RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`), computes from the shared plan which sequences it needs at
//! each step (a [`BlockSource`]), and pulls them from the storage nodes with
//! a [`ClusterReader`] into a ring of step buffers, `prefetch` steps ahead of
//! the consumer. [`Loader::next`] returns a [`Batch`] of shape
//! `[micro_batch, seq_len]` with its step number and each row's source; its
//! memory stays valid until the batch is dropped.
//!
//! * [`cluster_reader`]: placement of rows on nodes, parallel batched reads,
//!   fail-over to replicas, reconnect with backoff off the step's path, a
//!   per-read CRC32C check against each file's table, per-node counters
//!   ([`NodeStats`]).
//! * [`alloc`]: where step buffers live ([`BufferAllocator`]); heap by
//!   default, pinned or device memory from a CUDA backend.
//! * [`block`]: the [`BlockSource`] abstraction; [`PlanSource`] serves the
//!   plan's blocks.
//! * [`connect`]: transport selection ([`TransportKind`]: local, tcp, verbs,
//!   auto) and [`connect_endpoints`], from [`Endpoint`]s (e.g.
//!   [`Endpoint::from_cluster`] of a cluster file) to a [`ClusterReader`].
//! * [`verify`]: checks a [`Batch`] against the plan and direct reads of the
//!   files ([`Verifier`]).
//!
//! ```no_run
//! # fn demo(source: std::sync::Arc<dyn seqfeed_loader::BlockSource>,
//! #         reader: seqfeed_loader::ClusterReader) -> Result<(), seqfeed_loader::LoaderError> {
//! use seqfeed_loader::{Loader, LoaderConfig};
//! let config = LoaderConfig::from_env()?.start_step(100);
//! let mut loader = Loader::new(config, source, reader)?;
//! while let Some(batch) = loader.next() {
//!     let batch = batch?;
//!     let [rows, seq_len] = batch.shape();
//!     // train on batch.bytes() / batch.tokens_u32() ...
//!     # let _ = (rows, seq_len);
//! }
//! println!("stall after warm-up: {:?}", loader.stats().stall_after_warmup());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod alloc;
pub mod batch;
pub mod block;
pub mod cluster_reader;
pub mod config;
pub mod connect;
mod dataset;
pub mod docs;
mod error;
mod loader;
pub mod open;
mod plan_source;
pub mod remote;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod verify;

pub use alloc::{BufferAllocator, HeapAllocator, HostBuffer};
pub use batch::Batch;
pub use block::{BlockSource, Dtype, SeqRead};
pub use cluster_reader::{
    ClusterReader, Connector, ErrorCounts, LatencyHistogram, NodeSpec, NodeStats, RetryPolicy,
    StepReadStats,
};
pub use config::{LoaderConfig, DEFAULT_PREFETCH, DEFAULT_RING_WAIT};
pub use connect::{
    connect_endpoints, connect_endpoints_with, node_spec, node_spec_verbs, node_spec_with,
    Endpoint, TransportKind, VerbsDevices,
};
pub use dataset::dataset_files;
pub use docs::{DocBoundaries, DocBounds};
pub use error::{BoxError, LoaderError};
pub use loader::{Loader, LoaderStats, Next};
pub use open::{
    error_message, open_loader, open_plan, open_plan_split, LoaderSpec, Nodes, OpenedPlan,
};
pub use plan_source::PlanSource;
pub use remote::{fetch_dataset, NodeDataset};
pub use seqfeed_plan::Split;
/// Device-memory destinations (GPUDirect RDMA), as the transports take them.
pub use seqfeed_transport::{DeviceRegion, DmaBuf};
pub use verify::{Mismatch, Verifier};
