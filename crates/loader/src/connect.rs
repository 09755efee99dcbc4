//! Transport selection: [`TransportKind`] and the factory that turns a node
//! endpoint into a [`NodeSpec`] whose connector opens that transport.
//!
//! Backends: `local` (the node's files are on this host: read straight from
//! their mapping), `tcp` and `verbs` (RDMA); `auto` picks the best available
//! one and logs why.
//!
//! A rank's verbs transports use the RDMA devices [`VerbsDevices`] resolves
//! to: those given explicitly, else an environment override
//! (`SEQFEED_NICS*`), else, for a rank whose batches go to a GPU, the NICs
//! closest to that GPU ([`seqfeed_verbs::affinity`]), else every ACTIVE
//! device.

use std::path::{Path, PathBuf};

use seqfeed_transport::tcp::{ConnectOptions, TcpTransport};
use seqfeed_transport::{ClusterFile, LocalTransport, Transport, TransportError};

use crate::cluster_reader::{ClusterReader, NodeSpec, RetryPolicy};
use crate::error::LoaderError;

/// Which transport the loader uses to reach storage nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransportKind {
    /// Read the node's files from this host's file system (mapping).
    Local,
    /// The tcp transport (one-sided reads emulated over TCP).
    Tcp,
    /// RDMA verbs (one-sided RDMA READs; queue pairs set up through the
    /// node's control service).
    Verbs,
    /// The best available: local for an endpoint without an address, else
    /// verbs when this host has a usable RDMA device (and the node accepts
    /// verbs), else tcp.
    #[default]
    Auto,
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(TransportKind::Local),
            "tcp" => Ok(TransportKind::Tcp),
            "verbs" => Ok(TransportKind::Verbs),
            "auto" => Ok(TransportKind::Auto),
            other => Err(format!(
                "unknown transport {other:?} (expected local, tcp, verbs or auto)"
            )),
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Local => "local",
            TransportKind::Tcp => "tcp",
            TransportKind::Verbs => "verbs",
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
    /// Every node of a cluster file; `root` is the dataset on this host,
    /// when there is one (needed only by the local transport).
    pub fn from_cluster(cluster: &ClusterFile, root: Option<&Path>) -> Vec<Endpoint> {
        cluster
            .nodes
            .iter()
            .map(|n| Endpoint {
                name: n.name.clone(),
                addr: Some(n.addr.clone()),
                root: root.map(Path::to_owned),
                files: Some(n.files.clone()),
            })
            .collect()
    }

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

/// How a rank picks the RDMA devices (rails) of its verbs transports; see
/// [`seqfeed_verbs::affinity::devices_for_rank`] for the order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerbsDevices {
    /// Devices given explicitly (`seqfeed read --verbs-device`): used as
    /// given, over every other rule.
    pub explicit: Option<Vec<String>>,
    /// PCI bus id of the GPU the rank's batches go to (from
    /// `seqfeed_cuda::DeviceInfo::pci_bus_id`); `None` for a host
    /// destination. With it, the NICs closest to that GPU are used.
    pub gpu_bus_id: Option<String>,
    /// Fabric settings of the rank's queue pairs (GID index, traffic class,
    /// service level, pkey index, port); `None`: the `SEQFEED_*`
    /// environment, else discovery's choice.
    pub fabric: Option<seqfeed_verbs::FabricSettings>,
    /// How the rank's queue pairs are connected (control-service exchange
    /// or rdma_cm); `None`: `SEQFEED_VERBS_CONNECT`, else the exchange.
    pub connect: Option<seqfeed_verbs::ConnectMode>,
}

impl VerbsDevices {
    /// The verbs client options for this process (sysfs at `/sys`, the
    /// environment, the local rank from `LOCAL_RANK` and the like), the
    /// choice logged.
    pub fn client_options(&self) -> Result<seqfeed_verbs::ClientOptions, LoaderError> {
        let choice = seqfeed_verbs::affinity::devices_for_this_rank(
            self.gpu_bus_id.as_deref(),
            self.explicit.as_deref(),
        )
        .map_err(|e| LoaderError::Open {
            what: "choosing the RDMA devices of this rank".into(),
            source: e.into(),
        })?;
        Ok(seqfeed_verbs::ClientOptions {
            devices: choice.map(|c| c.devices),
            fabric: self.fabric,
            connect: self.connect,
            ..seqfeed_verbs::ClientOptions::default()
        })
    }
}

/// Connects a [`ClusterReader`] for the file table `files` to every node of
/// `endpoints` over transport `kind` with network options `opts` (verbs
/// devices chosen by [`VerbsDevices::default`]: no GPU, no explicit devices).
pub fn connect_endpoints(
    files: &[String],
    endpoints: &[Endpoint],
    kind: TransportKind,
    opts: &ConnectOptions,
    retry: RetryPolicy,
) -> Result<ClusterReader, LoaderError> {
    connect_endpoints_with(
        files,
        endpoints,
        kind,
        opts,
        &VerbsDevices::default(),
        retry,
    )
}

/// [`connect_endpoints`] with the rank's verbs devices chosen by `verbs`
/// (resolved, and logged, once, and only when some node is read over
/// verbs).
pub fn connect_endpoints_with(
    files: &[String],
    endpoints: &[Endpoint],
    kind: TransportKind,
    opts: &ConnectOptions,
    verbs: &VerbsDevices,
    retry: RetryPolicy,
) -> Result<ClusterReader, LoaderError> {
    let over_verbs = endpoints
        .iter()
        .any(|e| resolve_kind(kind, e).0 == TransportKind::Verbs);
    let vopts = if over_verbs {
        verbs.client_options()?
    } else {
        seqfeed_verbs::ClientOptions::default()
    };
    let specs = endpoints
        .iter()
        .map(|e| node_spec_verbs(kind, e, opts, &vopts))
        .collect::<Result<Vec<_>, _>>()?;
    ClusterReader::connect(files.to_vec(), specs, retry)
}

/// The [`NodeSpec`] for `endpoint` over transport `kind`, with default
/// network options (see [`node_spec_with`]).
pub fn node_spec(kind: TransportKind, endpoint: &Endpoint) -> Result<NodeSpec, LoaderError> {
    node_spec_with(kind, endpoint, &ConnectOptions::default())
}

/// The transport `kind` resolves to for `endpoint`, and whether it is
/// verbs chosen by `auto` (then a node refusing verbs is read over tcp).
fn resolve_kind(kind: TransportKind, endpoint: &Endpoint) -> (TransportKind, bool) {
    match kind {
        TransportKind::Auto if endpoint.addr.is_some() => {
            // Probed once per process; `auto_select` logs which and why.
            static PROBE: std::sync::OnceLock<seqfeed_verbs::Selection> =
                std::sync::OnceLock::new();
            match PROBE.get_or_init(seqfeed_verbs::auto_select) {
                seqfeed_verbs::Selection::Verbs { .. } => (TransportKind::Verbs, true),
                seqfeed_verbs::Selection::Tcp { .. } => (TransportKind::Tcp, false),
            }
        }
        TransportKind::Auto => {
            tracing::debug!(node = %endpoint.name, "auto transport: local (node is a local dataset)");
            (TransportKind::Local, false)
        }
        k => (k, false),
    }
}

/// The [`NodeSpec`] for `endpoint` over transport `kind`; network
/// transports use `opts` (secret, expected fingerprint, connections,
/// timeouts). Each connector call makes one connect attempt
/// (`opts.retries` is ignored): the [`ClusterReader`]
/// owns retries and backoff. Verbs uses the default client options (every
/// ACTIVE device, or `SEQFEED_NICS*`); see [`node_spec_verbs`].
pub fn node_spec_with(
    kind: TransportKind,
    endpoint: &Endpoint,
    opts: &ConnectOptions,
) -> Result<NodeSpec, LoaderError> {
    node_spec_verbs(
        kind,
        endpoint,
        opts,
        &seqfeed_verbs::ClientOptions::default(),
    )
}

/// [`node_spec_with`] with the verbs client options `vopts` (devices,
/// queue pairs per device, ...), e.g. from [`VerbsDevices::client_options`].
pub fn node_spec_verbs(
    kind: TransportKind,
    endpoint: &Endpoint,
    opts: &ConnectOptions,
    vopts: &seqfeed_verbs::ClientOptions,
) -> Result<NodeSpec, LoaderError> {
    let (kind, verbs_fallback) = resolve_kind(kind, endpoint);
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
        TransportKind::Verbs => {
            let addr = endpoint.addr.clone().ok_or_else(|| LoaderError::Config {
                what: format!(
                    "node {}: the verbs transport needs an address",
                    endpoint.name
                ),
            })?;
            let mut opts = opts.clone();
            opts.retries = 0;
            let vopts = vopts.clone();
            Ok(NodeSpec {
                name: endpoint.name.clone(),
                files: endpoint.files.clone(),
                connect: Box::new(move || {
                    let vopts = vopts.clone();
                    match seqfeed_verbs::VerbsTransport::connect_node(addr.as_str(), &opts, vopts) {
                        Ok(t) => Ok(Box::new(t) as Box<dyn Transport>),
                        // auto: a node without verbs (it refuses VerbsConnect) is read over tcp.
                        Err(e @ TransportError::Protocol { .. }) if verbs_fallback => {
                            tracing::info!(node = %addr, "transport auto: tcp for this node (verbs refused: {e})");
                            TcpTransport::connect(addr.as_str(), &opts)
                                .map(|t| Box::new(t) as Box<dyn Transport>)
                        }
                        Err(e) => Err(e),
                    }
                }),
            })
        }
        TransportKind::Auto => Err(LoaderError::Config {
            what: format!("node {}: no transport resolved", endpoint.name),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_verbs_devices_reach_the_client_options_as_given() {
        let v = VerbsDevices {
            explicit: Some(vec!["mlx5_3".into(), "mlx5_1".into()]),
            // Explicit devices win: the GPU is not even looked up.
            gpu_bus_id: Some("0000:99:00.0".into()),
            fabric: Some(seqfeed_verbs::FabricSettings {
                gid_index: Some(3),
                traffic_class: 26 << 2,
                ..seqfeed_verbs::FabricSettings::DEFAULT
            }),
            connect: Some(seqfeed_verbs::ConnectMode::Cm),
        };
        let o = v.client_options().expect("client options");
        assert_eq!(
            o.devices,
            Some(vec!["mlx5_3".to_string(), "mlx5_1".to_string()])
        );
        // The fabric settings reach the verbs client as given.
        let f = o.fabric.expect("fabric settings");
        assert_eq!((f.gid_index, f.traffic_class), (Some(3), 104));
        assert_eq!(o.connect, Some(seqfeed_verbs::ConnectMode::Cm));
        let d = seqfeed_verbs::ClientOptions::default();
        assert_eq!((o.qps_per_rail, o.chain), (d.qps_per_rail, d.chain));
    }

    #[test]
    fn tcp_and_local_endpoints_do_not_resolve_verbs() {
        let remote = Endpoint::remote("n", "127.0.0.1:1", None);
        assert_eq!(
            resolve_kind(TransportKind::Tcp, &remote),
            (TransportKind::Tcp, false)
        );
        assert_eq!(
            resolve_kind(TransportKind::Auto, &Endpoint::local("/nonexistent", None)),
            (TransportKind::Local, false)
        );
        assert_eq!(
            resolve_kind(TransportKind::Verbs, &remote),
            (TransportKind::Verbs, false),
            "verbs asked for: no tcp fallback"
        );
    }
}
