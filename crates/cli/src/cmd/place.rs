//! `seqfeed place`: assign a dataset's files to storage nodes with a
//! replication factor and write a cluster file; with `--stage`, also lay out
//! each node's own data directory (every source's manifest plus the files
//! placed on it, hard-linked where possible), ready to copy to that host.
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
    /// Also write each node's data directory under this one: DIR/<node>/
    /// holds every source's manifest.json and only the files placed on
    /// that node (hard links into the dataset where the file system allows,
    /// else copies). Serve it with `seqfeed serve --dataset DIR/<node>
    /// --cluster CLUSTER --name <node>`.
    #[arg(long)]
    stage: Option<PathBuf>,
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
    if let Some(stage) = &args.stage {
        for n in &cluster.nodes {
            stage_node(&ds, stage, &n.name, &n.files)?;
        }
    }
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

/// Lays out `stage/<name>`: every source's manifest and the node's `files`,
/// built under a hidden temporary name and renamed into place, so a failed
/// run leaves no half-written node directory.
fn stage_node(
    ds: &seqfeed_format::Dataset,
    stage: &std::path::Path,
    name: &str,
    files: &[String],
) -> anyhow::Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
        bail!("node name {name:?} cannot name a directory under --stage");
    }
    let dest = stage.join(name);
    if dest.exists() {
        bail!(
            "{} already exists: --stage writes new node directories only",
            dest.display()
        );
    }
    let tmp = stage.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| -> anyhow::Result<()> {
        for s in ds.sources() {
            let dir = tmp.join(s.name());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let from = s.dir().join(seqfeed_format::MANIFEST_NAME);
            let to = dir.join(seqfeed_format::MANIFEST_NAME);
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        for f in files {
            let from = ds.root().join(f);
            let to = tmp.join(f);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
        std::fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result?;
    println!(
        "  staged {name}: {} files in {}",
        files.len(),
        dest.display()
    );
    Ok(())
}
