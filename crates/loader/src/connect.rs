//! Transport selection: [`TransportKind`] and the factory that turns a node
//! endpoint into a [`NodeSpec`] whose connector opens that transport.
//!
//! Backends: `local` (the node's files are on this host: read straight from
//! their mapping) and `tcp`; `auto` picks the best available one and logs
//! why. A `verbs` backend slots in as one more [`TransportKind`] variant and
//! one more arm of [`node_spec`].

use std::path::PathBuf;

use seqfeed_transport::tcp::{ConnectOptions, TcpTransport};
use seqfeed_transport::{LocalTransport, Transport, TransportError};

use crate::cluster_reader::NodeSpec;
use crate::error::LoaderError;

/// Which transport the loader uses to reach storage nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransportKind {
    /// Read the node's files from this host's file system (mapping).
    Local,
    /// The tcp transport (one-sided reads emulated over TCP).
    Tcp,
    /// The best available: local for an endpoint without an address, else
    /// tcp (verbs once a usable RDMA device is found).
    #[default]
    Auto,
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(TransportKind::Local),
            "tcp" => Ok(TransportKind::Tcp),
            "auto" => Ok(TransportKind::Auto),
            other => Err(format!(
                "unknown transport {other:?} (expected local, tcp or auto)"
            )),
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Local => "local",
            TransportKind::Tcp => "tcp",
            TransportKind::Auto => "auto",
        })
    }
}

/// One storage node: where it is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Name for logs and errors.
    pub name: String,
    /// Network address (`host:port`), when the node is remote.
    pub addr: Option<String>,
    /// Dataset root on this host, for the `local` transport.
    pub root: Option<PathBuf>,
    /// Files the node holds (dataset-relative); `None`: all it publishes.
    pub files: Option<Vec<String>>,
}

impl Endpoint {
    /// A remote node `name` at `addr` holding `files`.
    pub fn remote(
        name: impl Into<String>,
        addr: impl Into<String>,
        files: Option<Vec<String>>,
    ) -> Self {
        Endpoint {
            name: name.into(),
            addr: Some(addr.into()),
            root: None,
            files,
        }
    }

    /// A node on this host serving `files` (all `*.seq` when `None`) of the dataset at `root`.
    pub fn local(root: impl Into<PathBuf>, files: Option<Vec<String>>) -> Self {
        let root = root.into();
        Endpoint {
            name: format!("local:{}", root.display()),
            addr: None,
            root: Some(root),
            files,
        }
    }
}

/// The [`NodeSpec`] for `endpoint` over transport `kind`, with default
/// network options (see [`node_spec_with`]).
pub fn node_spec(kind: TransportKind, endpoint: &Endpoint) -> Result<NodeSpec, LoaderError> {
    node_spec_with(kind, endpoint, &ConnectOptions::default())
}

/// The [`NodeSpec`] for `endpoint` over transport `kind`; network
/// transports use `opts` (secret, expected fingerprint, connections,
/// timeouts). Each connector call makes one connect attempt
/// (`opts.retries` is ignored): the [`ClusterReader`](crate::ClusterReader)
/// owns retries and backoff.
pub fn node_spec_with(
    kind: TransportKind,
    endpoint: &Endpoint,
    opts: &ConnectOptions,
) -> Result<NodeSpec, LoaderError> {
    let kind = match kind {
        TransportKind::Auto => {
            let pick = if endpoint.addr.is_some() {
                TransportKind::Tcp
            } else {
                TransportKind::Local
            };
            tracing::debug!(node = %endpoint.name, transport = %pick, "auto transport: no RDMA backend built in; {}",
                if pick == TransportKind::Tcp { "node has an address" } else { "node is a local dataset" });
            pick
        }
        k => k,
    };
    match kind {
        TransportKind::Local => {
            let root = endpoint.root.clone().ok_or_else(|| LoaderError::Config {
                what: format!(
                    "node {}: the local transport needs the dataset root on this host",
                    endpoint.name
                ),
            })?;
            let name = endpoint.name.clone();
            let files = endpoint.files.clone();
            Ok(NodeSpec {
                name: endpoint.name.clone(),
                files: endpoint.files.clone(),
                connect: Box::new(move || {
                    let t = match &files {
                        Some(f) => LocalTransport::open(&root, f),
                        None => seqfeed_transport::RegionTable::open_all(&root).map(|t| {
                            LocalTransport::from_table(
                                format!("local:{}", root.display()),
                                std::sync::Arc::new(t),
                            )
                        }),
                    }
                    .map_err(|e| TransportError::Protocol {
                        node: name.clone(),
                        what: e.to_string(),
                    })?;
                    Ok(Box::new(t) as Box<dyn Transport>)
                }),
            })
        }
        TransportKind::Tcp => {
            let addr = endpoint.addr.clone().ok_or_else(|| LoaderError::Config {
                what: format!("node {}: the tcp transport needs an address", endpoint.name),
            })?;
            let mut opts = opts.clone();
            opts.retries = 0;
            Ok(NodeSpec {
                name: endpoint.name.clone(),
                files: endpoint.files.clone(),
                connect: Box::new(move || {
                    TcpTransport::connect(addr.as_str(), &opts)
                        .map(|t| Box::new(t) as Box<dyn Transport>)
                }),
            })
        }
        TransportKind::Auto => Err(LoaderError::Config {
            what: format!("node {}: no transport resolved", endpoint.name),
        }),
    }
}
