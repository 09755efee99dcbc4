//! `NativePlan`: a plan opened once per process (against a dataset, a shapes
//! file or the manifests the storage nodes publish) and shared by every
//! loader built on it, train and validation alike. A trainer host that holds
//! no data opens it from the cluster file alone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use seqfeed_loader::{LoaderSpec, Nodes, OpenedPlan, PlanSource, Split, TransportKind};
use seqfeed_plan::Plan;

/// A plan opened with the connection settings of its nodes (see
/// `seqfeed._loader._open_plan`, which keeps one per process and argument
/// set).
#[pyclass(module = "seqfeed._native", frozen)]
pub(crate) struct NativePlan {
    spec: LoaderSpec,
    plan: Arc<Plan>,
    dataset_fingerprint: Option<String>,
}

impl NativePlan {
    /// The spec to connect loaders with (nodes, transport, secret, timeouts).
    pub(crate) fn spec(&self) -> &LoaderSpec {
        &self.spec
    }

    /// The plan opened for one stream.
    pub(crate) fn opened(&self, split: Split) -> Result<OpenedPlan, seqfeed_loader::LoaderError> {
        Ok(OpenedPlan {
            plan: self.plan.clone(),
            source: Arc::new(PlanSource::with_split(self.plan.clone(), split)?),
            dataset_fingerprint: self.dataset_fingerprint.clone(),
        })
    }
}

/// Where the data is, as the `seqfeed.Loader` arguments give it.
pub(crate) fn nodes_of(
    cluster: Option<PathBuf>,
    nodes: Option<Vec<String>>,
    transport: TransportKind,
    has_dataset: bool,
) -> PyResult<Nodes> {
    match (cluster, nodes) {
        (Some(_), Some(_)) => Err(PyValueError::new_err(
            "give either cluster or nodes, not both",
        )),
        (Some(c), None) => Ok(Nodes::Cluster(c)),
        (None, Some(n)) => Ok(Nodes::List(n)),
        (None, None) if transport == TransportKind::Local || has_dataset => Ok(Nodes::Local),
        (None, None) => Err(PyValueError::new_err(
            "give a cluster file, a node list, or a dataset directory (local transport)",
        )),
    }
}

/// Opens `plan` once: against `dataset` when given, else `shapes`, else the
/// manifests the storage nodes of `cluster` / `nodes` publish (a trainer
/// host needs no copy of the data). Errors are `SeqfeedError`s with the
/// CLI's words, naming the nodes.
#[pyfunction]
#[pyo3(signature = (plan, *, dataset=None, shapes=None, cluster=None, nodes=None,
    transport="auto", secret=None, secret_file=None, connections=2, io_timeout_ms=10_000,
    client_name=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_plan(
    py: Python<'_>,
    plan: PathBuf,
    dataset: Option<PathBuf>,
    shapes: Option<PathBuf>,
    cluster: Option<PathBuf>,
    nodes: Option<Vec<String>>,
    transport: &str,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    connections: usize,
    io_timeout_ms: u64,
    client_name: Option<String>,
) -> PyResult<NativePlan> {
    let transport: TransportKind = transport.parse().map_err(PyValueError::new_err)?;
    let nodes = nodes_of(cluster, nodes, transport, dataset.is_some())?;
    let mut spec = LoaderSpec::new(plan, nodes);
    spec.dataset = dataset;
    spec.shapes = shapes;
    spec.transport = transport;
    spec.secret = secret;
    spec.secret_file = secret_file;
    spec.connections = connections.max(1);
    spec.io_timeout = Duration::from_millis(io_timeout_ms.max(100));
    spec.client_name =
        client_name.unwrap_or_else(|| format!("seqfeed-python/pid{}", std::process::id()));
    let opened = py
        .detach(|| spec.open_plan())
        .map_err(|e| crate::py_err(&e))?;
    Ok(NativePlan {
        spec,
        plan: opened.plan,
        dataset_fingerprint: opened.dataset_fingerprint,
    })
}

#[pymethods]
impl NativePlan {
    /// The plan's statistics (`seqfeed.plan_stats`), with each source's
    /// recorded special-token ids and tokenizer.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.plan, self.dataset_fingerprint.clone())
    }

    /// The plan's fingerprint.
    #[getter]
    fn fingerprint(&self) -> String {
        self.plan.fingerprint().to_owned()
    }

    /// The dataset's fingerprint, when known.
    #[getter]
    fn dataset_fingerprint(&self) -> Option<String> {
        self.dataset_fingerprint.clone()
    }
}

/// Quotas, target and realized ratios, epochs and repeats of every source
/// (`seqfeed plan stats`), and what the manifests recorded.
pub(crate) fn stats_dict<'py>(
    py: Python<'py>,
    p: &Plan,
    dataset_fingerprint: Option<String>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("fingerprint", p.fingerprint())?;
    d.set_item("dataset_fingerprint", dataset_fingerprint)?;
    d.set_item("mode", p.mode().to_string())?;
    d.set_item("global_batch", p.global_batch())?;
    d.set_item("steps", p.steps())?;
    // The validation stream: its sequences, and the full steps a loader serves.
    d.set_item("validation_sequences", p.validation_len())?;
    d.set_item("validation_steps", p.validation_len() / p.global_batch())?;
    d.set_item("total_sequences", p.total_sequences())?;
    d.set_item("requested_sequences", p.requested_sequences())?;
    d.set_item("seq_len", p.seq_len())?;
    d.set_item("token_bytes", p.token_bytes())?;
    let total = p.total_sequences().max(1) as f64;
    let wsum: f64 = p.sources().iter().map(|s| s.weight).sum();
    let sources = PyList::empty(py);
    for s in p.sources() {
        let e = PyDict::new(py);
        e.set_item("name", &s.name)?;
        e.set_item("weight", s.weight)?;
        e.set_item("target", if wsum > 0.0 { s.weight / wsum } else { 0.0 })?;
        e.set_item("realized", s.quota as f64 / total)?;
        e.set_item("quota", s.quota)?;
        e.set_item("size", s.size)?;
        e.set_item("epochs", s.epochs())?;
        e.set_item("max_repeats", s.max_repeats())?;
        e.set_item("at_max_repeats", s.sequences_at_max_repeats())?;
        e.set_item("max_epochs", s.max_epochs)?;
        e.set_item("per_batch", s.per_batch)?;
        e.set_item("files", s.files.len())?;
        e.set_item("eos", s.special_tokens.eos)?;
        e.set_item("bos", s.special_tokens.bos)?;
        e.set_item("pad", s.special_tokens.pad)?;
        e.set_item("tokenizer", s.tokenizer.as_ref().map(|t| t.name.clone()))?;
        e.set_item("n_vocab", s.tokenizer.as_ref().map(|t| t.n_vocab))?;
        sources.append(e)?;
    }
    d.set_item("sources", sources)?;
    Ok(d)
}
