//! Plan and source inspection for notebooks: the data behind `seqfeed plan
//! stats`, `seqfeed plan show` and `seqfeed inspect`, as Python values.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use seqfeed_loader::{open_plan, OpenedPlan, Split};

use crate::py_err;

fn open(plan: PathBuf, dataset: Option<PathBuf>, shapes: Option<PathBuf>) -> PyResult<OpenedPlan> {
    open_plan(&plan, dataset.as_deref(), shapes.as_deref()).map_err(|e| py_err(&e))
}

/// `"train"` or `"validation"` as a [`Split`].
pub(crate) fn parse_split(split: &str) -> PyResult<Split> {
    match split {
        "train" => Ok(Split::Train),
        "validation" => Ok(Split::Validation),
        other => Err(PyValueError::new_err(format!(
            "split {other:?}: expected \"train\" or \"validation\""
        ))),
    }
}

/// Quotas, target and realized ratios, epochs and repeats of every source
/// (`seqfeed plan stats`).
#[pyfunction]
#[pyo3(signature = (plan, *, dataset=None, shapes=None))]
pub(crate) fn plan_stats<'py>(
    py: Python<'py>,
    plan: PathBuf,
    dataset: Option<PathBuf>,
    shapes: Option<PathBuf>,
) -> PyResult<Bound<'py, PyDict>> {
    let opened = open(plan, dataset, shapes)?;
    crate::plan::stats_dict(py, &opened.plan, opened.dataset_fingerprint.clone())
}

/// The rows data-parallel rank `dp_rank` of `dp_size` reads at `step`
/// (every rank when `dp_rank` is `None`): position, source, file (relative
/// to the dataset), index (within the file), seq (within the source) and
/// byte offset of each (`seqfeed plan show`). `split="validation"` shows
/// the validation stream (its positions are positions in that stream).
#[pyfunction]
#[pyo3(signature = (plan, step, dp_size=1, dp_rank=None, *, dataset=None, shapes=None, split="train"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan_show<'py>(
    py: Python<'py>,
    plan: PathBuf,
    step: u64,
    dp_size: u32,
    dp_rank: Option<u32>,
    dataset: Option<PathBuf>,
    shapes: Option<PathBuf>,
    split: &str,
) -> PyResult<Bound<'py, PyList>> {
    let split = parse_split(split)?;
    let opened = open(plan, dataset, shapes)?;
    let p = &opened.plan;
    let ranks = match dp_rank {
        Some(r) => r..r + 1,
        None => 0..dp_size,
    };
    let out = PyList::empty(py);
    for rank in ranks {
        let block = p
            .split_block(split, step, rank, dp_size)
            .map_err(|e| py_err(&e))?;
        for (row, r) in block.iter().enumerate() {
            let src = &p.sources()[r.source as usize];
            // The row's index within its source: the files before its file,
            // then its index within the file (what `inspect_source(source, seq=)`
            // takes; `inspect_source(file, index=)` takes `index`).
            let before: u64 = src.files[..r.file as usize].iter().map(|f| f.count).sum();
            let e = PyDict::new(py);
            e.set_item("step", step)?;
            e.set_item("dp_rank", rank)?;
            e.set_item("row", row)?;
            e.set_item("position", r.position)?;
            e.set_item("source", &p.sources()[r.source as usize].name)?;
            e.set_item("file", p.file_path(r.source, r.file))?;
            e.set_item("index", r.index)?;
            e.set_item("seq", before + r.index)?;
            e.set_item("offset", r.offset)?;
            out.append(e)?;
        }
    }
    Ok(out)
}

/// A packed source's manifest (as JSON text), its sequence count and
/// fingerprint, and with `seq` that sequence's tokens (`seqfeed inspect`).
///
/// `path` is a source directory or one of its sequence files. For a
/// directory, `seq` counts within the source (plan_show's `seq` column);
/// for a file, `index` counts within the file (plan_show's `index`
/// column, with `file` joined to the dataset directory).
#[pyfunction]
#[pyo3(signature = (path, seq=None, *, index=None))]
pub(crate) fn inspect_source<'py>(
    py: Python<'py>,
    path: PathBuf,
    seq: Option<u64>,
    index: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    if path.is_file() {
        return inspect_file(py, path, seq, index);
    }
    if index.is_some() {
        return Err(PyValueError::new_err(format!(
            "{}: index= counts within a sequence file; for a source directory use seq= (plan_show's `seq` column), or pass the file (dataset / row[\"file\"])",
            path.display()
        )));
    }
    let src = seqfeed_format::Source::open(&path).map_err(|e| py_err(&e))?;
    let d = PyDict::new(py);
    let manifest = serde_json::to_string(src.manifest())
        .map_err(|e| crate::SeqfeedError::new_err(format!("{}: {e}", path.display())))?;
    d.set_item("manifest_json", manifest)?;
    d.set_item("name", src.name())?;
    d.set_item("dtype", src.dtype().to_string())?;
    d.set_item("seq_len", src.seq_len())?;
    d.set_item("sequences", src.total_sequences())?;
    d.set_item("files", src.files().len())?;
    d.set_item("fingerprint", src.fingerprint())?;
    if let Some(k) = seq {
        d.set_item("seq", k)?;
        d.set_item("tokens", src.tokens_as_u32(k).map_err(|e| py_err(&e))?)?;
    }
    Ok(d)
}

/// `inspect_source` of one sequence file: its dtype, seq_len and count,
/// and with `index` that sequence's tokens.
fn inspect_file<'py>(
    py: Python<'py>,
    path: PathBuf,
    seq: Option<u64>,
    index: Option<u64>,
) -> PyResult<Bound<'py, PyDict>> {
    if seq.is_some() {
        return Err(PyValueError::new_err(format!(
            "{} is a sequence file: give index= (within the file, plan_show's `index` column); seq= counts within a source directory",
            path.display()
        )));
    }
    let file = seqfeed_format::SeqFile::open(&path).map_err(|e| py_err(&e))?;
    let d = PyDict::new(py);
    d.set_item("file", path.display().to_string())?;
    d.set_item("dtype", file.dtype().to_string())?;
    d.set_item("seq_len", file.seq_len())?;
    d.set_item("sequences", file.count())?;
    if let Some(i) = index {
        d.set_item("index", i)?;
        d.set_item("tokens", file.tokens_as_u32(i).map_err(|e| py_err(&e))?)?;
    }
    Ok(d)
}
