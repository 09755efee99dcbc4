//! `seqfeed place`: assign a dataset's files to storage nodes with a
//! replication factor and write a cluster file.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use seqfeed_transport::cluster::place;

/// Flags of `seqfeed place`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Dataset root (one subdirectory per packed source).
    #[arg(long)]
    dataset: PathBuf,
    /// Storage nodes as name=host:port, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Number of distinct nodes holding each file.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Cluster file to write (TOML).
    #[arg(long)]
    out: PathBuf,
}

/// Runs `seqfeed place`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut nodes = Vec::with_capacity(args.nodes.len());
    for spec in &args.nodes {
        let Some((name, addr)) = spec.split_once('=') else {
            bail!("--nodes entry {spec:?} is not name=host:port");
        };
        if name.is_empty() || addr.is_empty() {
            bail!("--nodes entry {spec:?} has an empty name or address");
        }
        nodes.push((name.to_owned(), addr.to_owned()));
    }
    let ds = seqfeed_format::Dataset::open(&args.dataset)
        .with_context(|| format!("opening dataset {}", args.dataset.display()))?;
    let mut files = Vec::new();
    for (si, s) in ds.sources().iter().enumerate() {
        for (fi, entry) in s.manifest().files.iter().enumerate() {
            files.push((ds.file_path(si, fi), entry.file_len));
        }
    }
    if files.is_empty() {
        bail!("dataset {} has no sequence files", args.dataset.display());
    }
    let cluster = place(
        &files,
        &nodes,
        args.replicas,
        Some(ds.fingerprint().to_owned()),
    )?;
    cluster.save(&args.out)?;
    let sizes: std::collections::HashMap<&str, u64> =
        files.iter().map(|(p, b)| (p.as_str(), *b)).collect();
    println!(
        "placed {} files ({:.1} MiB) on {} nodes with {} replicas -> {}",
        files.len(),
        sizes.values().sum::<u64>() as f64 / (1 << 20) as f64,
        nodes.len(),
        args.replicas,
        args.out.display()
    );
    for n in &cluster.nodes {
        let bytes: u64 = n
            .files
            .iter()
            .map(|f| sizes.get(f.as_str()).copied().unwrap_or(0))
            .sum();
        println!(
            "  {:<16} {:<24} {:>5} files {:>10.1} MiB",
            n.name,
            n.addr,
            n.files.len(),
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(ExitCode::SUCCESS)
}
