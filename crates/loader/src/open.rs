//! One call from file names to a running loader, as the CLI's `read` and
//! the Python package do it: open the plan against what the storage nodes
//! publish (a trainer host needs only the plan config and the cluster
//! file), a shapes file, or a dataset directory; connect to the nodes of a
//! cluster file, a node list or the local dataset; and start the
//! [`Loader`].
//!
//! Errors carry the same words wherever they surface: [`error_message`]
//! renders an error and its causes the way the CLI prints them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use seqfeed_plan::{
    shapes_from_dataset, shapes_from_manifests, Plan, PlanConfig, ShapesFile, SourceShape, Split,
};
use seqfeed_transport::tcp::ConnectOptions;
use seqfeed_transport::ClusterFile;

use crate::alloc::BufferAllocator;
use crate::block::BlockSource;
use crate::cluster_reader::ClusterReader;
use crate::config::LoaderConfig;
use crate::connect::{connect_endpoints_with, Endpoint, TransportKind, VerbsDevices};
use crate::error::{BoxError, LoaderError};
use crate::loader::Loader;
use crate::plan_source::PlanSource;
use crate::remote::fetch_dataset;

/// A plan opened against its data.
#[derive(Debug, Clone)]
pub struct OpenedPlan {
    /// The plan.
    pub plan: Arc<Plan>,
    /// The plan as the loader's block source (of the stream it was opened for).
    pub source: Arc<PlanSource>,
    /// The dataset's fingerprint, when known: opened against a dataset,
    /// the nodes' manifests, or a shapes file that records it.
    pub dataset_fingerprint: Option<String>,
}

/// Opens the plan config at `config` against the dataset at `dataset`
/// (fingerprints checked) or, without one, the shapes file at `shapes`, for
/// the training stream.
pub fn open_plan(
    config: &Path,
    dataset: Option<&Path>,
    shapes: Option<&Path>,
) -> Result<OpenedPlan, LoaderError> {
    open_plan_split(config, dataset, shapes, Split::Train)
}

/// [`open_plan`] for one stream of the plan: the block source serves
/// `split` ([`PlanSource::with_split`]).
pub fn open_plan_split(
    config: &Path,
    dataset: Option<&Path>,
    shapes: Option<&Path>,
    split: Split,
) -> Result<OpenedPlan, LoaderError> {
    let cfg = PlanConfig::from_file(config)
        .map_err(|e| opening(format!("plan {}", config.display()), e))?;
    let (shapes, fingerprint) = match (dataset, shapes) {
        (Some(root), _) => {
            let ds = seqfeed_format::Dataset::open(root)
                .map_err(|e| opening(format!("opening dataset {}", root.display()), e))?;
            let shapes = shapes_from_dataset(&ds)
                .map_err(|e| opening(format!("dataset {}", root.display()), e))?;
            (shapes, Some(ds.fingerprint().to_owned()))
        }
        (None, Some(path)) => {
            let file = ShapesFile::from_file(path)
                .map_err(|e| opening(format!("shapes file {}", path.display()), e))?;
            (file.sources, file.fingerprint)
        }
        (None, None) => {
            return Err(LoaderError::Config {
                what: "give a dataset directory or a shapes file to open the plan against, or open it from the storage nodes (LoaderSpec::open_plan)".into(),
            })
        }
    };
    finish_open(
        cfg,
        shapes,
        fingerprint,
        split,
        format!("plan {}", config.display()),
    )
}

/// Makes the plan from its config and the sources' shapes.
fn finish_open(
    cfg: PlanConfig,
    shapes: Vec<SourceShape>,
    dataset_fingerprint: Option<String>,
    split: Split,
    what: String,
) -> Result<OpenedPlan, LoaderError> {
    let plan = Arc::new(Plan::new(cfg, shapes).map_err(|e| opening(what, e))?);
    let source = Arc::new(PlanSource::with_split(plan.clone(), split)?);
    Ok(OpenedPlan {
        plan,
        source,
        dataset_fingerprint,
    })
}

fn opening(what: String, e: impl Into<BoxError>) -> LoaderError {
    LoaderError::Open {
        what,
        source: e.into(),
    }
}

/// Where a rank's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    /// Every node of a cluster file.
    Cluster(PathBuf),
    /// Nodes given as `host:port` or `name=host:port`, each holding every file.
    List(Vec<String>),
    /// The dataset on this host (local transport).
    Local,
}

/// Everything [`open_loader`] needs besides the [`LoaderConfig`].
#[derive(Debug, Clone)]
pub struct LoaderSpec {
    /// Plan config (TOML).
    pub plan: PathBuf,
    /// Dataset root: plan shapes and fingerprint, local reads.
    pub dataset: Option<PathBuf>,
    /// Shapes file instead of a dataset.
    pub shapes: Option<PathBuf>,
    /// The storage nodes.
    pub nodes: Nodes,
    /// Transport to the nodes.
    pub transport: TransportKind,
    /// The nodes' shared secret (never sent: the handshake proves it).
    pub secret: Option<String>,
    /// A file holding the nodes' shared secret, read at connect time with
    /// [`seqfeed_transport::read_secret_file`] (not with `secret` too).
    pub secret_file: Option<PathBuf>,
    /// Parallel TCP connections per node.
    pub connections: usize,
    /// Socket read/write timeout of the tcp transport.
    pub io_timeout: Duration,
    /// Name the nodes log for this client.
    pub client_name: String,
    /// The stream to read: training (default) or validation.
    pub split: Split,
    /// RDMA devices of the verbs transport, given explicitly (`None`:
    /// chosen by [`VerbsDevices`]: `SEQFEED_NICS*`, the GPU's nearest NICs,
    /// else every ACTIVE device).
    pub verbs_devices: Option<Vec<String>>,
    /// PCI bus id of the GPU this rank's batches go to (`None`: a host
    /// destination), so the verbs transport uses the NICs closest to it.
    pub gpu_bus_id: Option<String>,
    /// Fabric settings of the verbs queue pairs (`None`: the `SEQFEED_*`
    /// environment, else discovery's choice).
    pub verbs_fabric: Option<seqfeed_verbs::FabricSettings>,
    /// How verbs queue pairs are connected (`None`: `SEQFEED_VERBS_CONNECT`,
    /// else the control-service exchange).
    pub verbs_connect: Option<seqfeed_verbs::ConnectMode>,
}

impl LoaderSpec {
    /// A spec for `plan` over `nodes`, transport `auto`, no secret, 2
    /// connections per node, a 10 s io timeout, the training stream, a host
    /// destination and no explicit verbs devices.
    pub fn new(plan: impl Into<PathBuf>, nodes: Nodes) -> Self {
        LoaderSpec {
            plan: plan.into(),
            dataset: None,
            shapes: None,
            nodes,
            transport: TransportKind::Auto,
            secret: None,
            secret_file: None,
            connections: 2,
            io_timeout: Duration::from_secs(10),
            client_name: "seqfeed-loader".into(),
            split: Split::Train,
            verbs_devices: None,
            gpu_bus_id: None,
            verbs_fabric: None,
            verbs_connect: None,
        }
    }

    /// The endpoints and the transport to use for them, checked against
    /// the dataset `opened` was opened for.
    pub fn endpoints(
        &self,
        opened: &OpenedPlan,
    ) -> Result<(Vec<Endpoint>, TransportKind), LoaderError> {
        let (endpoints, kind, cluster_fingerprint) = self.node_endpoints()?;
        if let (Some(want), Some(have), Nodes::Cluster(path)) = (
            &cluster_fingerprint,
            &opened.dataset_fingerprint,
            &self.nodes,
        ) {
            if want != have {
                let from = match (&self.dataset, &self.shapes) {
                    (Some(d), _) => format!("dataset {}", d.display()),
                    (None, Some(s)) => format!("shapes file {}", s.display()),
                    (None, None) => "the storage nodes' data".into(),
                };
                return Err(LoaderError::Config {
                    what: format!(
                        "cluster file {} is for dataset fingerprint {want}, but {from} has {have}",
                        path.display(),
                    ),
                });
            }
        }
        Ok((endpoints, kind))
    }

    /// The endpoints, the transport, and the dataset fingerprint the
    /// cluster file records (if any).
    fn node_endpoints(
        &self,
    ) -> Result<(Vec<Endpoint>, TransportKind, Option<String>), LoaderError> {
        match &self.nodes {
            Nodes::Cluster(path) => {
                let cluster = ClusterFile::load(path).map_err(|e| LoaderError::Open {
                    what: format!("cluster file {}", path.display()),
                    source: e.into(),
                })?;
                Ok((
                    Endpoint::from_cluster(&cluster, self.dataset.as_deref()),
                    self.transport,
                    cluster.fingerprint.clone(),
                ))
            }
            Nodes::List(list) => {
                if list.is_empty() {
                    return Err(LoaderError::Config {
                        what: "the node list is empty".into(),
                    });
                }
                let eps = list
                    .iter()
                    .map(|n| match n.split_once('=') {
                        Some((name, addr)) => Endpoint::remote(name.trim(), addr.trim(), None),
                        None => Endpoint::remote(n.trim(), n.trim(), None),
                    })
                    .collect();
                Ok((eps, self.transport, None))
            }
            Nodes::Local => {
                let root = self.dataset.as_ref().ok_or_else(|| LoaderError::Config {
                    what: "the local transport needs the dataset directory".into(),
                })?;
                Ok((
                    vec![Endpoint::local(root, None)],
                    TransportKind::Local,
                    None,
                ))
            }
        }
    }

    /// Opens the plan for [`LoaderSpec::split`]: against the dataset
    /// directory when one is given; else against a shapes file (checked
    /// against the nodes' data where they describe it); else against the
    /// manifests the storage nodes publish ([`fetch_dataset`]), so a
    /// trainer host needs no copy of the data.
    pub fn open_plan(&self) -> Result<OpenedPlan, LoaderError> {
        if self.dataset.is_some() {
            return open_plan_split(
                &self.plan,
                self.dataset.as_deref(),
                self.shapes.as_deref(),
                self.split,
            );
        }
        let (endpoints, _, cluster_fingerprint) = self.node_endpoints()?;
        let opts = self.connect_options(None)?;
        if let Some(path) = &self.shapes {
            let opened = open_plan_split(&self.plan, None, Some(path), self.split)?;
            if let Some(want) = &opened.dataset_fingerprint {
                // Best effort: nodes that describe their data must describe
                // this data; nodes that cannot are checked by the handshake.
                match fetch_dataset(&endpoints, &opts) {
                    Ok(nodes) if nodes.manifests.fingerprint() != want => {
                        let file = ShapesFile::from_file(path)
                            .map_err(|e| opening(format!("shapes file {}", path.display()), e))?;
                        return Err(LoaderError::Nodes {
                            what: format!(
                                "shapes file {} does not match the data the storage nodes ({}) serve: {}",
                                path.display(),
                                nodes.answered.join(", "),
                                shapes_difference(&file.sources, nodes.manifests.sources())
                            ),
                        });
                    }
                    Ok(_) => {}
                    Err(e) => tracing::info!(
                        error = %error_message(&e),
                        "the shapes file could not be checked against the nodes' manifests; the handshake still checks the dataset fingerprint"
                    ),
                }
            }
            return Ok(opened);
        }
        let nodes = fetch_dataset(&endpoints, &opts)?;
        let fingerprint = nodes.manifests.fingerprint().to_owned();
        if let (Some(want), Nodes::Cluster(path)) = (&cluster_fingerprint, &self.nodes) {
            if *want != fingerprint {
                return Err(LoaderError::Nodes {
                    what: format!(
                        "cluster file {} is for dataset fingerprint {want}, but the storage nodes ({}) serve {fingerprint}",
                        path.display(),
                        nodes.answered.join(", ")
                    ),
                });
            }
        }
        let cfg = PlanConfig::from_file(&self.plan)
            .map_err(|e| opening(format!("plan {}", self.plan.display()), e))?;
        let shapes = shapes_from_manifests(nodes.manifests.sources())
            .map_err(|e| opening("the storage nodes' manifests".into(), e))?;
        finish_open(
            cfg,
            shapes,
            Some(fingerprint),
            self.split,
            format!(
                "plan {} against the data the storage nodes ({}) serve",
                self.plan.display(),
                nodes.answered.join(", ")
            ),
        )
    }

    /// How to connect to the nodes: client name, secret, timeouts, and the
    /// dataset fingerprint the nodes must serve.
    fn connect_options(
        &self,
        expected_fingerprint: Option<String>,
    ) -> Result<ConnectOptions, LoaderError> {
        Ok(ConnectOptions {
            client_name: self.client_name.clone(),
            secret: self.resolve_secret()?,
            expected_fingerprint,
            connections: self.connections.max(1),
            connect_timeout: self
                .io_timeout
                .clamp(Duration::from_millis(100), Duration::from_secs(2)),
            io_timeout: self.io_timeout.max(Duration::from_millis(100)),
            ..ConnectOptions::default()
        })
    }

    /// The shared secret to use: `secret` (an empty one counts as none) or
    /// the contents of `secret_file`, not both.
    pub fn resolve_secret(&self) -> Result<Option<String>, LoaderError> {
        let inline = self.secret.clone().filter(|s| !s.is_empty());
        match (&inline, &self.secret_file) {
            (Some(_), Some(path)) => Err(LoaderError::Config {
                what: format!(
                    "give the shared secret once: a secret and the secret file {} are both set",
                    path.display()
                ),
            }),
            (_, Some(path)) => seqfeed_transport::read_secret_file(path)
                .map(Some)
                .map_err(|e| LoaderError::Config {
                    what: e.to_string(),
                }),
            (s, None) => Ok(s.clone()),
        }
    }

    /// Connects a cluster reader for `opened`'s files.
    pub fn connect(
        &self,
        opened: &OpenedPlan,
        config: &LoaderConfig,
    ) -> Result<ClusterReader, LoaderError> {
        let (endpoints, kind) = self.endpoints(opened)?;
        let opts = self.connect_options(opened.dataset_fingerprint.clone())?;
        let verbs = VerbsDevices {
            explicit: self.verbs_devices.clone(),
            gpu_bus_id: self.gpu_bus_id.clone(),
            fabric: self.verbs_fabric,
            connect: self.verbs_connect,
        };
        connect_endpoints_with(
            opened.source.files(),
            &endpoints,
            kind,
            &opts,
            &verbs,
            config.retry,
        )
    }
}

/// Opens the plan, connects to the nodes and starts a loader with step
/// buffers from `alloc` (heap when `None`).
pub fn open_loader(
    spec: &LoaderSpec,
    config: LoaderConfig,
    alloc: Option<Arc<dyn BufferAllocator>>,
) -> Result<(OpenedPlan, Loader), LoaderError> {
    let opened = spec.open_plan()?;
    let reader = spec.connect(&opened, &config)?;
    let source: Arc<dyn BlockSource> = opened.source.clone();
    let loader = match alloc {
        Some(a) => Loader::with_allocator(config, source, reader, a)?,
        None => Loader::new(config, source, reader)?,
    };
    Ok((opened, loader))
}

/// Which source of a shapes file differs from the nodes' manifests, and how.
fn shapes_difference(
    shapes: &[SourceShape],
    manifests: &[seqfeed_format::SourceManifest],
) -> String {
    for shape in shapes {
        match manifests.iter().find(|m| m.name == shape.name) {
            None => return format!("source '{}' is not served by the nodes", shape.name),
            Some(m) if m.fingerprint() != shape.fingerprint => {
                return format!(
                    "source '{}' has fingerprint {} in the shapes file and {} on the nodes",
                    shape.name,
                    shape.fingerprint,
                    m.fingerprint()
                )
            }
            Some(_) => {}
        }
    }
    match manifests
        .iter()
        .find(|m| !shapes.iter().any(|s| s.name == m.name))
    {
        Some(m) => format!(
            "source '{}' is served by the nodes but not in the shapes file",
            m.name
        ),
        None => "the dataset fingerprints differ".into(),
    }
}

/// An error and its causes as one line, each cause once (causes whose text
/// is already in the message are skipped): what the CLI prints and what
/// the Python package raises.
pub fn error_message(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_secret_comes_from_the_spec_or_its_file_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut spec = LoaderSpec::new("plan.toml", Nodes::Local);
        assert_eq!(spec.resolve_secret().unwrap(), None);
        spec.secret = Some(String::new());
        assert_eq!(spec.resolve_secret().unwrap(), None);
        spec.secret_file = Some(file.clone());
        assert_eq!(spec.resolve_secret().unwrap().as_deref(), Some("s3cret"));
        spec.secret = Some("x".into());
        let e = spec.resolve_secret().unwrap_err().to_string();
        assert!(e.contains("once") && e.contains("secret"), "{e}");
        spec.secret = None;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = spec.resolve_secret().unwrap_err().to_string();
        assert!(
            e.contains(file.to_str().unwrap()) && e.contains("chmod 600"),
            "{e}"
        );
    }
}
