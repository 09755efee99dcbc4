//! The seqfeed storage node.
//!
//! A node maps its sequence files ([`seqfeed_transport::RegionTable`]: one
//! read-only region per file, ids in sorted path order) and runs a tokio
//! control and data service speaking the [`seqfeed_wire`] protocol:
//! versioned handshake, dataset fingerprint check, optional shared secret,
//! region table, health and per-client counters, and batched reads answered
//! straight from the mapping with vectored writes (no copy into a buffer).
//! A bad frame closes only its connection; the node keeps serving others.
//!
//! RDMA connection setup ([`seqfeed_wire::VerbsConnect`]) is delegated to a
//! [`VerbsAcceptor`] built by the [`VerbsFactory`] in [`NodeConfig::verbs`];
//! without one the node answers "verbs not enabled on this node".
//!
//! ```no_run
//! use seqfeed_node::{Node, NodeConfig};
//! let cfg = NodeConfig::new("/data/ds", "127.0.0.1:0".parse().unwrap());
//! let node = Node::start(cfg).unwrap();
//! println!("serving on {}", node.local_addr());
//! node.shutdown();
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod auth;
mod logs;
mod metrics;
mod send;
mod service;
mod verbs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use seqfeed_transport::{RegionError, RegionTable};
use seqfeed_wire::{ClientCounters, Limits, NodeCounters, VerbsAccept, VerbsConnect};

pub use auth::AuthLimit;
pub use logs::WarnLimit;
pub use seqfeed_verbs::QpLimits;
pub use seqfeed_verbs::{ConnectMode, FabricSettings};
pub use service::NodeHandle;
pub use verbs::{
    clients_use_cm, verbs_devices, verbs_factory, verbs_factory_cm, verbs_factory_with,
};

/// Identifies one control connection of a node, unique for the node's
/// lifetime (connections are numbered in accept order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

/// Answers RDMA queue-pair connect requests for a node (implemented by the
/// verbs backend).
///
/// The queue pairs a connection asked for belong to that control
/// connection: when it closes (clean close, I/O or protocol error, killed
/// client, unfinished-frame timeout, node shutdown) the node calls
/// [`VerbsAcceptor::disconnected`] exactly once for it, provided it called
/// [`VerbsAcceptor::accept`] for it at least once.
pub trait VerbsAcceptor: Send + Sync {
    /// Connects the node's side of the client's queue pairs and returns the
    /// node's endpoints with every region's address and rkey, or a message
    /// the client sees as an error. `id` is the asking control connection,
    /// `client` the client's name from its Hello. The QPs named in
    /// `req.replaces` (this connection's only) are destroyed first; a
    /// request beyond `limits` (the connection's quota, the node-wide cap)
    /// is refused with a message naming the limit, never by evicting
    /// another connection's QPs. Called on a blocking thread.
    fn accept(
        &self,
        id: ClientId,
        client: &str,
        req: &VerbsConnect,
        limits: &QpLimits,
    ) -> Result<VerbsAccept, String>;

    /// The control connection `id` closed: release every queue pair
    /// accepted for it. Called on a blocking thread, once, after its last
    /// [`VerbsAcceptor::accept`] returned.
    fn disconnected(&self, id: ClientId);

    /// Queue pairs held now for all connections, when the acceptor counts
    /// them (`None`: it does not).
    fn open_qps(&self) -> Option<usize> {
        None
    }
}

/// Builds a node's [`VerbsAcceptor`] from its mapped regions (called once
/// at start; an error aborts the start).
pub type VerbsFactory =
    Arc<dyn Fn(&Arc<RegionTable>) -> Result<Arc<dyn VerbsAcceptor>, String> + Send + Sync>;

/// How to run a storage node.
#[derive(Clone)]
pub struct NodeConfig {
    /// Dataset root (a directory of sources). It holds every source's
    /// `manifest.json` (the node publishes them to trainers) and at least
    /// the files this node serves.
    pub dataset_root: PathBuf,
    /// Dataset-relative sequence files this node serves; `None` serves
    /// every file of the dataset.
    pub files: Option<Vec<String>>,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Address of the Prometheus endpoint (`GET /metrics`), if any (port 0
    /// picks a free one; [`NodeHandle::metrics_addr`] tells which).
    pub metrics_listen: Option<SocketAddr>,
    /// Shared secret clients must prove they hold, if any. It never
    /// crosses the network: clients answer a challenge with an HMAC
    /// ([`seqfeed_wire::auth`]), and the node proves it holds it too.
    pub secret: Option<String>,
    /// Rate limit of wrong proofs of the secret per peer address.
    pub auth_limit: AuthLimit,
    /// Node name in the handshake and logs.
    pub node_name: String,
    /// Dataset fingerprint to publish. `None` (the default) reads the
    /// dataset's manifests; `Some` serves the files without opening the
    /// dataset (for plain files outside a dataset).
    pub fingerprint: Option<String>,
    /// Tokio worker threads (default 4).
    pub worker_threads: usize,
    /// Protocol limits.
    pub limits: Limits,
    /// A connection that leaves its handshake or a frame unfinished this
    /// long without sending anything is closed (default 30 s). Idling
    /// between requests is allowed.
    pub idle_timeout: Duration,
    /// The whole handshake (connect to an accepted Hello) must be done
    /// within this, however the client trickles its bytes (default 5 s).
    pub handshake_timeout: Duration,
    /// A frame, once its first byte arrived, must be complete within this
    /// (default 10 s).
    pub frame_timeout: Duration,
    /// A connection whose answer (a frame, or a batch's header and data)
    /// makes no progress for this long, the client taking none of its bytes,
    /// is dropped (default 30 s). A slow client that keeps reading is
    /// served to the end, however long a large batch takes.
    pub write_timeout: Duration,
    /// Most open connections (default 4096). When reached, the oldest
    /// unauthenticated connection is shed; if there is none the new one
    /// is closed at once (the client retries with backoff).
    pub max_connections: usize,
    /// Most connections still in their handshake (default 256). A new one
    /// beyond it sheds the oldest unauthenticated connection.
    pub max_unauthenticated: usize,
    /// Node-wide budget of received bytes not yet decoded (partly
    /// received frames), default 512 MiB. A connection whose bytes would
    /// exceed it is closed with an error. (Before the handshake a frame is
    /// at most [`seqfeed_wire::MAX_PRE_AUTH_FRAME`], 16 KiB.)
    pub max_buffered_bytes: u64,
    /// Most per-client entries in one stats reply (default 256; the
    /// oldest connections first). The node counters' `connections_open`
    /// says how many there are in all.
    pub stats_max_clients: usize,
    /// RDMA connection setup; `None` answers verbs requests with an error.
    pub verbs: Option<VerbsFactory>,
    /// Queue pairs one control connection may hold (its quota) and the
    /// node may hold in all (default [`QpLimits::DEFAULT`]: 128 and 16,384).
    pub verbs_qp_limits: QpLimits,
    /// How many per-connection warnings (refused handshakes, connection
    /// errors) of each kind are logged per interval; the rest are summed up
    /// in one line per interval. Default: 10 per 10 s.
    pub warn_limit: WarnLimit,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("dataset_root", &self.dataset_root)
            .field("files", &self.files.as_ref().map(Vec::len))
            .field("listen", &self.listen)
            .field("metrics_listen", &self.metrics_listen)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("auth_limit", &self.auth_limit)
            .field("node_name", &self.node_name)
            .field("fingerprint", &self.fingerprint)
            .field("worker_threads", &self.worker_threads)
            .field("limits", &self.limits)
            .field("idle_timeout", &self.idle_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("frame_timeout", &self.frame_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_unauthenticated", &self.max_unauthenticated)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("stats_max_clients", &self.stats_max_clients)
            .field("verbs", &self.verbs.is_some())
            .field("verbs_qp_limits", &self.verbs_qp_limits)
            .field("warn_limit", &self.warn_limit)
            .finish()
    }
}

impl NodeConfig {
    /// Serves every file of the dataset at `dataset_root` on `listen`, no
    /// secret, named after the listen address.
    pub fn new(dataset_root: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        NodeConfig {
            dataset_root: dataset_root.into(),
            files: None,
            listen,
            metrics_listen: None,
            secret: None,
            auth_limit: AuthLimit::DEFAULT,
            node_name: format!("node@{listen}"),
            fingerprint: None,
            worker_threads: 4,
            limits: Limits::DEFAULT,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_unauthenticated: 256,
            max_buffered_bytes: 512 << 20,
            stats_max_clients: 256,
            verbs: None,
            verbs_qp_limits: QpLimits::DEFAULT,
            warn_limit: WarnLimit::DEFAULT,
        }
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The dataset could not be opened.
    #[error("node {node}: opening dataset {}: {source}", root.display())]
    Dataset {
        /// Node name.
        node: String,
        /// Dataset root.
        root: PathBuf,
        /// Underlying error.
        #[source]
        source: Box<seqfeed_format::FormatError>,
    },
    /// A listed file is not part of the dataset.
    #[error("node {node}: file {file:?} is not part of the dataset at {}", root.display())]
    NotInDataset {
        /// Node name.
        node: String,
        /// Dataset root.
        root: PathBuf,
        /// The file.
        file: String,
    },
    /// Mapping the files failed.
    #[error("node {node}: {source}")]
    Regions {
        /// Node name.
        node: String,
        /// Underlying error.
        #[source]
        source: RegionError,
    },
    /// Binding the listen address or starting the runtime failed.
    #[error("node {node}: {what} {addr}: {source}")]
    Io {
        /// Node name.
        node: String,
        /// What was being done.
        what: &'static str,
        /// Listen address.
        addr: SocketAddr,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The region table does not fit in one Welcome frame.
    #[error("node {node}: the region table of {regions} files ({bytes} bytes encoded) exceeds the {max}-byte frame limit; serve fewer files per node")]
    TableTooLarge {
        /// Node name.
        node: String,
        /// Number of regions.
        regions: usize,
        /// Encoded Welcome size.
        bytes: usize,
        /// Frame limit.
        max: u32,
    },
    /// The source manifests do not fit in one ManifestsOk frame.
    #[error("node {node}: the manifests of {sources} sources ({bytes} bytes encoded) exceed the {max}-byte frame limit; split the dataset across fewer files per source or raise the frame limit")]
    ManifestsTooLarge {
        /// Node name.
        node: String,
        /// Number of sources.
        sources: usize,
        /// Encoded ManifestsOk size.
        bytes: usize,
        /// Frame limit.
        max: u32,
    },
    /// The verbs factory failed.
    #[error("node {node}: enabling verbs: {what}")]
    Verbs {
        /// Node name.
        node: String,
        /// The factory's message.
        what: String,
    },
}

/// Entry point: [`Node::start`].
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Opens the dataset, maps the files, binds the listener and starts the
    /// service on its own tokio runtime. Returns once the node accepts
    /// connections.
    pub fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
        let node = config.node_name.clone();
        let (fingerprint, files, manifests) = match &config.fingerprint {
            Some(fp) => {
                let files = match &config.files {
                    Some(f) => f.clone(),
                    None => seqfeed_transport::regions::list_sequence_files(&config.dataset_root)
                        .map_err(|source| NodeError::Regions {
                        node: node.clone(),
                        source,
                    })?,
                };
                (fp.clone(), files, None)
            }
            None => {
                // The manifests alone: a node holds every source's manifest
                // but may hold only the files placed on it.
                let dataset_err = |source| NodeError::Dataset {
                    node: node.clone(),
                    root: config.dataset_root.clone(),
                    source: Box::new(source),
                };
                let ds = seqfeed_format::DatasetManifests::open(&config.dataset_root)
                    .map_err(dataset_err)?;
                let files = match &config.files {
                    None => ds.all_files(),
                    Some(listed) => {
                        if let Some(f) = listed.iter().find(|f| ds.find_file(f).is_none()) {
                            return Err(NodeError::NotInDataset {
                                node,
                                root: config.dataset_root.clone(),
                                file: f.clone(),
                            });
                        }
                        listed.clone()
                    }
                };
                // Each served file's header against its manifest entry
                // (count, offsets, length, payload hash): a node never
                // publishes a manifest its own files contradict.
                for f in &files {
                    ds.open_file(f).map_err(dataset_err)?;
                }
                let manifests = ds.sources().iter().map(|m| m.to_json()).collect();
                (ds.fingerprint().to_owned(), files, Some(manifests))
            }
        };
        let table = RegionTable::open(&config.dataset_root, &files).map_err(|source| {
            NodeError::Regions {
                node: node.clone(),
                source,
            }
        })?;
        service::start(config, fingerprint, Arc::new(table), manifests)
    }
}

/// Counters of the node's defences against hostile clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GuardStats {
    /// Connections open now that have not finished their handshake.
    pub unauthenticated: u64,
    /// Unauthenticated connections shed to make room for newer ones.
    pub shed: u64,
    /// New connections closed at once because `max_connections` were
    /// open and none could be shed.
    pub rejected: u64,
    /// Connections closed for a handshake, frame, idle or write deadline.
    pub timed_out: u64,
    /// Connections closed because the receive budget was exhausted.
    pub over_budget: u64,
    /// Received bytes not yet decoded, over all connections, now.
    pub buffered_bytes: u64,
    /// The most `buffered_bytes` ever was.
    pub buffered_peak: u64,
    /// `accept` failures (EMFILE, ENFILE, ...).
    pub accept_errors: u64,
    /// Wrong proofs of the shared secret received.
    pub auth_failures: u64,
    /// Handshakes refused because their peer was blocked for failing too
    /// many proofs.
    pub auth_refused_blocked: u64,
    /// Peers in the failed-proof table now (bounded by
    /// [`AuthLimit::max_peers`]).
    pub auth_peers: u64,
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStats {
    /// Node-wide counters.
    pub node: NodeCounters,
    /// Every open client connection.
    pub clients: Vec<ClientCounters>,
}
