//! `seqfeed._native`: the thin PyO3 layer under the `seqfeed` Python
//! package. The Rust loader does the work; this module converts arguments,
//! hands out each micro-batch as a DLPack capsule (no copy) and turns
//! errors into `seqfeed.SeqfeedError` with the CLI's words.
//!
//! * [`loader`]: `NativeLoader` / `NativeBatch`.
//! * [`capsule`]: the DLPack `PyCapsule` (the only `unsafe` here).
//! * [`inspect`]: plan and source inspection for notebooks.
//! * [`widen`]: int64 ids for CPU consumers, widened by the reader thread.
#![deny(missing_docs)]

use pyo3::create_exception;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

mod capsule;
mod inspect;
mod loader;
mod plan;
mod widen;

create_exception!(
    seqfeed,
    SeqfeedError,
    PyRuntimeError,
    "A seqfeed error: unreachable node, wrong secret, plan or data mismatch, bad rank, corrupt file... The message is the one the seqfeed CLI prints."
);

/// `SeqfeedError` with `err`'s message and causes, as the CLI prints them.
pub(crate) fn py_err(err: &(dyn std::error::Error + 'static)) -> PyErr {
    SeqfeedError::new_err(seqfeed_loader::error_message(err))
}

/// Sends the Rust side's `tracing` logs to stderr, filtered by
/// `SEQFEED_LOG` (default `warn`). Called once at import.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEQFEED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    m.add("SeqfeedError", m.py().get_type::<SeqfeedError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<loader::NativeLoader>()?;
    m.add_class::<loader::NativeBatch>()?;
    m.add_class::<plan::NativePlan>()?;
    m.add_function(wrap_pyfunction!(plan::open_plan, m)?)?;
    m.add_function(wrap_pyfunction!(inspect::plan_stats, m)?)?;
    m.add_function(wrap_pyfunction!(inspect::plan_show, m)?)?;
    m.add_function(wrap_pyfunction!(inspect::inspect_source, m)?)?;
    Ok(())
}
