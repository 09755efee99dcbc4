//! `seqfeed read`: one rank reads a step range of a plan from storage nodes
//! (a cluster file, one node address, or the local dataset) through the
//! loader, and prints throughput (GB/s, sequences/s) and stall time.
//! `--verify` checks every batch against the plan and direct reads of the
//! dataset's files; `--digest` prints a BLAKE3 digest of every byte read
//! (compare it with a run on a host that has the data); `--consume-us`
//! simulates a trainer's work per step.
//!
//! A trainer host needs only the plan config and the cluster file (or node
//! addresses): without `--dataset` and `--shapes` the plan is opened from
//! the manifests the storage nodes publish.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use seqfeed_loader::{
    Endpoint, Loader, LoaderConfig, LoaderSpec, Nodes, RetryPolicy, TransportKind, Verifier,
};
use seqfeed_transport::ClusterFile;

/// Flags of `seqfeed read`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Plan config (TOML).
    #[arg(long)]
    plan: PathBuf,
    /// Dataset root: plan shapes, `--local` reads and `--verify` checks.
    /// Not needed on a trainer host: without it (and without --shapes) the
    /// plan is opened from the manifests the storage nodes publish.
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Source shapes file (`seqfeed plan shapes`) instead of asking the
    /// nodes (no --verify, no --local).
    #[arg(long, conflicts_with = "dataset")]
    shapes: Option<PathBuf>,
    /// Cluster file (nodes, addresses, files each holds).
    #[arg(long, conflicts_with_all = ["node", "local"])]
    cluster: Option<PathBuf>,
    /// A single storage node holding every file (host:port).
    #[arg(long, conflicts_with = "local")]
    node: Option<String>,
    /// Read the dataset's files on this host (local transport).
    #[arg(long)]
    local: bool,
    /// Transport: auto, tcp, verbs or local.
    #[arg(long, default_value = "auto")]
    transport: TransportKind,
    /// RDMA devices of the verbs transport (comma-separated, e.g.
    /// mlx5_0,mlx5_1: one rail each). Default: SEQFEED_NICS_LOCAL_RANK_<n>
    /// or SEQFEED_NICS when set, else every ACTIVE device (this command
    /// reads into host memory, so no GPU affinity applies).
    #[arg(long, value_delimiter = ',')]
    verbs_device: Vec<String>,
    /// How verbs queue pairs are connected: `control` (QP numbers and GIDs
    /// exchanged through the node's control service) or `cm` (rdma_cm: the
    /// kernel resolves address, route and GID; the node must run with
    /// `serve --verbs-cm-port`). Default: SEQFEED_VERBS_CONNECT, else control.
    #[arg(long, value_parser = parse_connect)]
    verbs_connect: Option<seqfeed_node::ConnectMode>,
    #[command(flatten)]
    fabric: super::fabric::FabricArgs,
    /// This rank (default: RANK from the environment, else 0).
    #[arg(long)]
    rank: Option<usize>,
    /// Number of ranks (default: WORLD_SIZE from the environment, else 1).
    #[arg(long)]
    world: Option<usize>,
    /// First step (resume).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Number of steps (default: to the end of the plan).
    #[arg(long)]
    steps: Option<u64>,
    /// Steps read ahead of the consumer.
    #[arg(long, default_value_t = seqfeed_loader::DEFAULT_PREFETCH)]
    prefetch: usize,
    /// Parallel TCP connections per node.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[command(flatten)]
    secret: super::secret::SecretArgs,
    /// Socket read/write timeout of the tcp transport (ms): how long a silent
    /// node (partitioned, stopped) blocks a read before it counts as failed.
    #[arg(long, default_value_t = 10_000)]
    io_timeout_ms: u64,
    /// Longest wait for a live replica before a step fails (ms).
    #[arg(long, default_value_t = 10_000)]
    failover_ms: u64,
    /// Check every batch against the plan and the dataset's files.
    #[arg(long, requires = "dataset")]
    verify: bool,
    /// Check each sequence read against its file's CRC32C table (fetched
    /// from the nodes); a mismatch is read again from a replica, and with no
    /// intact replica the run fails naming node, file and sequence. Off by
    /// default: it costs 20-33% of tcp read throughput.
    #[arg(long)]
    verify_crc: bool,
    /// Simulated consumer work per step (microseconds of sleep).
    #[arg(long, default_value_t = 0)]
    consume_us: u64,
    /// Print a BLAKE3 digest of every byte read, in step and row order (the
    /// same on any host for the same plan, rank, world and steps).
    #[arg(long)]
    digest: bool,
    /// Print the summary as one JSON object on stdout (rank, world, steps,
    /// sequences, bytes, seconds, throughput, stall, and `verified_bytes`
    /// with `--verify`).
    #[arg(long)]
    json: bool,
}

pub(crate) use seqfeed_loader::OpenedPlan;

/// Opens a plan config against a dataset (fingerprints checked) or a shapes
/// file; the library call the Python package makes too, so the messages match.
pub(crate) fn open_plan(
    config: &Path,
    dataset: Option<&Path>,
    shapes: Option<&Path>,
) -> anyhow::Result<OpenedPlan> {
    if dataset.is_none() && shapes.is_none() {
        bail!("give --dataset or --shapes");
    }
    Ok(seqfeed_loader::open_plan(config, dataset, shapes)?)
}

/// Endpoints of a cluster file's nodes (`root`: the dataset on this host,
/// for the local transport).
pub(crate) fn cluster_endpoints(cluster: &ClusterFile, root: Option<&Path>) -> Vec<Endpoint> {
    Endpoint::from_cluster(cluster, root)
}

/// Runs `seqfeed read`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut config = LoaderConfig::from_env()?;
    if let Some(r) = args.rank {
        config.rank = r;
    }
    if let Some(w) = args.world {
        config.world = w;
    }
    if config.world == 0 || config.rank >= config.world {
        // The loader's own wording, which the Python package raises too.
        return Err(seqfeed_loader::LoaderError::Config {
            what: format!(
                "data-parallel rank {} is out of range for data-parallel size {}",
                config.rank, config.world
            ),
        }
        .into());
    }
    config = config
        .start_step(args.start)
        .prefetch(args.prefetch)
        .verify_crc(args.verify_crc)
        .retry(RetryPolicy {
            failover_timeout: Duration::from_millis(args.failover_ms),
            ..RetryPolicy::default()
        });
    if let Some(n) = args.steps {
        config = config.end_step(args.start.saturating_add(n));
    }

    let nodes = if let Some(path) = &args.cluster {
        Nodes::Cluster(path.clone())
    } else if let Some(addr) = &args.node {
        Nodes::List(vec![addr.clone()])
    } else if args.local {
        if args.dataset.is_none() {
            bail!("--local needs --dataset");
        }
        Nodes::Local
    } else {
        bail!("give --cluster FILE, --node ADDR or --local");
    };
    let mut spec = LoaderSpec::new(&args.plan, nodes);
    spec.dataset = args.dataset.clone();
    spec.shapes = args.shapes.clone();
    spec.transport = args.transport;
    spec.secret = args.secret.resolve()?;
    spec.connections = args.connections.max(1);
    spec.io_timeout = Duration::from_millis(args.io_timeout_ms.max(100));
    spec.client_name = format!("seqfeed-read/rank{}", config.rank);
    spec.verbs_devices = (!args.verbs_device.is_empty()).then(|| args.verbs_device.clone());
    spec.verbs_connect = args.verbs_connect;
    spec.verbs_fabric = args
        .fabric
        .any()
        .then(|| args.fabric.settings())
        .transpose()?;
    let opened = spec.open_plan()?;
    let (endpoints, _) = spec.endpoints(&opened)?;
    // The plan's identity in the log: two runs with the same fingerprint read
    // the same sequences in the same order (an unpinned config changes plan
    // when the data is repacked; `seqfeed plan pin` makes that an error).
    tracing::info!(
        plan = %opened.plan.fingerprint(),
        rank = config.rank,
        world = config.world,
        start = args.start,
        "loader starting"
    );
    let reader = spec.connect(&opened, &config)?;
    let (rank, world) = (config.rank, config.world);
    let t0 = Instant::now();
    let mut loader = Loader::new(config, opened.source.clone(), reader)?;
    let (first, end) = (loader.next_step(), loader.end_step());
    let bar = indicatif::ProgressBar::new(end - first);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut verifier = args.dataset.as_ref().map(Verifier::new);
    let mut checked = 0u64;
    let work = Duration::from_micros(args.consume_us);
    let mut digest = args.digest.then(blake3::Hasher::new);
    while let Some(batch) = loader.next() {
        let batch = batch.with_context(|| format!("rank {rank} of {world}"))?;
        if let Some(h) = digest.as_mut() {
            h.update(batch.bytes());
        }
        if args.verify {
            if let Some(v) = verifier.as_mut() {
                match v.check(&opened.plan, &batch, rank, world) {
                    Ok(n) => checked += n,
                    Err(mismatch) => {
                        // The data is wrong, not the command: the verification exit status.
                        bar.finish_and_clear();
                        eprintln!("seqfeed: read --verify FAILED: {mismatch}");
                        return Ok(ExitCode::from(crate::EXIT_VERIFY_FAILED));
                    }
                }
            }
        }
        if !work.is_zero() {
            std::thread::sleep(work);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let wall = t0.elapsed();
    let st = loader.stats();
    let per_node = loader.node_stats();
    let gbps = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9;
    let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
    let digest = digest.map(|h| h.finalize().to_hex().to_string());
    if args.json {
        let out = serde_json::json!({
            "rank": rank,
            "world": world,
            "first_step": first,
            "end_step": end,
            "steps": st.steps,
            "sequences": st.sequences,
            "bytes": st.bytes,
            "nodes": names,
            "wall_secs": wall.as_secs_f64(),
            "gb_per_sec": gbps(st.bytes, wall),
            "sequences_per_sec": st.sequences as f64 / wall.as_secs_f64().max(1e-9),
            "read_secs": st.read_time.as_secs_f64(),
            "read_gb_per_sec": gbps(st.bytes, st.read_time),
            "stall_secs": st.stall.as_secs_f64(),
            "first_stall_secs": st.first_stall.as_secs_f64(),
            "stall_after_warmup_secs": st.stall_after_warmup().as_secs_f64(),
            "failed_over": st.failed_over,
            "verified_bytes": args.verify.then_some(checked),
            "digest": digest,
            "dataset_fingerprint": opened.dataset_fingerprint,
            "per_node": per_node.iter().map(node_json).collect::<Vec<_>>(),
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "seqfeed read: rank {rank}/{world}, steps {first}..{end} ({} steps, {} sequences, {:.1} MiB) over {}",
        st.steps,
        st.sequences,
        st.bytes as f64 / (1 << 20) as f64,
        names.join(", ")
    );
    println!(
        "  throughput: {:.3} GB/s end to end, {:.0} sequences/s; reader busy {:.3} s ({:.3} GB/s while reading)",
        gbps(st.bytes, wall),
        st.sequences as f64 / wall.as_secs_f64().max(1e-9),
        st.read_time.as_secs_f64(),
        gbps(st.bytes, st.read_time)
    );
    println!(
        "  stall: {:.3} ms total, first batch {:.3} ms, after warm-up {:.3} ms ({:.3} ms/step); rows failed over: {}",
        st.stall.as_secs_f64() * 1e3,
        st.first_stall.as_secs_f64() * 1e3,
        st.stall_after_warmup().as_secs_f64() * 1e3,
        st.stall_after_warmup().as_secs_f64() * 1e3 / st.steps.saturating_sub(1).max(1) as f64,
        st.failed_over
    );
    for n in &per_node {
        let ms =
            |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3));
        println!(
            "  node {}: {:.1} MiB, {} sequences in {} batches; batch ms p50 {} p99 {} mean {}; errors {}, failed over {}, reconnects {}, CRC mismatches {}{}",
            n.name,
            n.bytes as f64 / (1 << 20) as f64,
            n.reads,
            n.batches,
            ms(n.latency.quantile(0.5)),
            ms(n.latency.quantile(0.99)),
            ms(n.latency.mean()),
            n.errors.total(),
            n.failed_over,
            n.reconnects,
            n.crc_mismatches,
            down_note(n)
        );
    }
    if args.verify {
        println!("  verified: {checked} bytes equal to the plan's sequences in the files: OK");
    }
    if let Some(d) = &digest {
        println!("  digest: blake3 {d} over {} bytes", st.bytes);
    }
    Ok(ExitCode::SUCCESS)
}

/// ` (down 12.3 s, probed in the background; latest error: ...)` for a node
/// disconnected at the end of the run, else nothing.
fn down_note(n: &seqfeed_loader::NodeStats) -> String {
    match n.down_for {
        None => String::new(),
        Some(d) => format!(
            " (down {:.1} s, probed in the background; latest error: {})",
            d.as_secs_f64(),
            n.last_error.as_deref().unwrap_or("none recorded")
        ),
    }
}

/// One node's loader counters for `read --json`.
fn node_json(n: &seqfeed_loader::NodeStats) -> serde_json::Value {
    let us = |d: Option<Duration>| d.map(|d| d.as_micros() as u64);
    serde_json::json!({
        "name": n.name,
        "live": n.live,
        "bytes": n.bytes,
        "sequences": n.reads,
        "batches": n.batches,
        "errors": {
            "timeout": n.errors.timeout,
            "connection": n.errors.connection,
            "protocol": n.errors.protocol,
            "backend": n.errors.backend,
            "other": n.errors.other,
        },
        "failed_over": n.failed_over,
        "reconnects": n.reconnects,
        "crc_mismatches": n.crc_mismatches,
        "last_crc_mismatch": n.last_crc_mismatch,
        "down_ms": n.down_for.map(|d| d.as_millis() as u64),
        "last_error": n.last_error,
        "batch_latency_us": {
            "p50": us(n.latency.quantile(0.5)),
            "p99": us(n.latency.quantile(0.99)),
            "mean": us(n.latency.mean()),
            "count": n.latency.count,
        },
    })
}

/// `--verbs-connect` values: `control` or `cm`.
fn parse_connect(s: &str) -> Result<seqfeed_node::ConnectMode, String> {
    seqfeed_node::ConnectMode::parse(s).map_err(|_| format!("{s:?}: expected control or cm"))
}
