//! `seqfeed demo`: the whole path end to end, checked byte for byte.
//!
//! With no arguments it packs a small three-source corpus (web, code, wiki:
//! generated token documents through the packer) in a temporary directory,
//! makes a plan (weights 5:3:2), places the files on two storage nodes
//! started in this process on 127.0.0.1 (ephemeral ports), runs four ranks
//! (threads, each with its own loader and tcp connections), checks every
//! byte of every batch against direct reads of the files and against the
//! plan, checks that the ranks' blocks of each step are exactly the plan's
//! global batch, and prints a per-step table and a summary. It exits
//! non-zero on any mismatch or read error.
//!
//! With `--dataset DIR --plan CONFIG` it runs against a real dataset, on
//! in-process nodes, or on running nodes with `--cluster FILE`.
//!
//! `--transport verbs` (or `auto`, when this host has a usable RDMA device)
//! enables verbs on the in-process nodes, so the ranks read with one-sided
//! RDMA READs; each rank prints which transport it uses for each node, and
//! the summary counts the node connections per transport.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use seqfeed_format::{pack_tokens, Dtype, PackOptions, Tail};
use seqfeed_loader::{
    node_spec_with, BlockSource, ClusterReader, Endpoint, Loader, LoaderConfig, LoaderError,
    RetryPolicy, TransportKind, Verifier,
};
use seqfeed_node::{Node, NodeConfig, NodeHandle};
use seqfeed_transport::cluster::place;
use seqfeed_transport::tcp::ConnectOptions;
use seqfeed_transport::ClusterFile;

use super::read::{cluster_endpoints, open_plan, OpenedPlan};

/// Flags of `seqfeed demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A real dataset root (needs --plan); default: a generated corpus.
    #[arg(long, requires = "plan")]
    dataset: Option<PathBuf>,
    /// Plan config (TOML) for --dataset.
    #[arg(long, requires = "dataset")]
    plan: Option<PathBuf>,
    /// Cluster file of running storage nodes; default: nodes started here.
    #[arg(long, requires = "dataset")]
    cluster: Option<PathBuf>,
    /// Write the generated corpus here (must not exist) instead of a temp dir.
    #[arg(long, conflicts_with = "dataset")]
    keep: Option<PathBuf>,
    /// Ranks (threads).
    #[arg(long, default_value_t = 4)]
    ranks: usize,
    /// Storage nodes started in this process (without --cluster).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Nodes holding each file (without --cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Steps to run (default: 48 for the generated corpus, all for --plan).
    #[arg(long)]
    steps: Option<u64>,
    /// Global batch of the generated plan (sequences per step).
    #[arg(long, default_value_t = 128)]
    global_batch: u64,
    /// Tokens per sequence of the generated corpus (u16 tokens).
    #[arg(long, default_value_t = 4096)]
    seq_len: u64,
    /// Transport: tcp, local, verbs or auto (verbs needs a usable RDMA
    /// device; auto uses verbs when there is one, else tcp).
    #[arg(long, default_value = "tcp")]
    transport: TransportKind,
    /// Steps read ahead by each rank's loader.
    #[arg(long, default_value_t = seqfeed_loader::DEFAULT_PREFETCH)]
    prefetch: usize,
    /// TCP connections per node per rank.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    #[command(flatten)]
    secret: super::secret::SecretArgs,
    /// Shut node 0 down once a rank has read this step (in-process nodes;
    /// with --replicas 2 the reads move to the replica).
    #[arg(long)]
    kill_node_after: Option<u64>,
}

/// The generated corpus: (source, documents, token id range, seed).
const SOURCES: [(&str, u64, (u32, u32), u64); 3] = [
    ("web", 3000, (1000, 30_000), 11),
    ("code", 1800, (30_000, 50_000), 22),
    ("wiki", 1100, (50_000, 65_000), 33),
];

/// One rank's report of one step.
struct StepRecord {
    rank: usize,
    step: u64,
    rows: usize,
    bytes: u64,
    positions: Vec<u64>,
    per_source: Vec<u64>,
    stall: Duration,
    read: Duration,
    failed_over: u64,
    mismatch: Option<String>,
}

/// Which transport a rank's connection to one node uses.
type Used = Vec<(String, &'static str)>;

enum Msg {
    Connected {
        rank: usize,
        used: Used,
    },
    Step(StepRecord),
    Done {
        rank: usize,
        stats: seqfeed_loader::LoaderStats,
        error: Option<String>,
        /// Every node connection the rank made (reconnects included).
        used: Used,
    },
}

/// Runs `seqfeed demo`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.ranks == 0 {
        bail!("--ranks must be at least 1");
    }
    let started = Instant::now();
    let secret = args.secret.resolve()?;
    // 1. The data and the plan.
    let tmp;
    let (root, opened) = match (&args.dataset, &args.plan) {
        (Some(root), Some(plan)) => (root.clone(), open_plan(plan, Some(root), None)?),
        _ => {
            let root = match &args.keep {
                Some(p) => {
                    if p.exists() {
                        bail!("--keep {}: already exists", p.display());
                    }
                    std::fs::create_dir_all(p)
                        .with_context(|| format!("creating {}", p.display()))?;
                    p.clone()
                }
                None => {
                    tmp = tempfile::Builder::new()
                        .prefix("seqfeed-demo-")
                        .tempdir()
                        .context("creating a temp dir")?;
                    tmp.path().to_owned()
                }
            };
            build_corpus(&root, args.seq_len)?;
            let steps = args.steps.unwrap_or(48);
            let config = root.join("plan.toml");
            std::fs::write(&config, plan_config(args.global_batch, steps))
                .with_context(|| format!("writing {}", config.display()))?;
            (root.clone(), open_plan(&config, Some(&root), None)?)
        }
    };
    let plan = &opened.plan;
    let world = args.ranks;
    let micro = opened
        .source
        .micro_batch(world)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = args.steps.unwrap_or(plan.steps()).min(plan.steps());
    println!(
        "seqfeed demo: {} sources ({}), plan {} steps x {} sequences of {} tokens ({}), {} ranks x {} rows, fingerprint {}",
        plan.sources().len(),
        plan.sources()
            .iter()
            .map(|s| format!("{} w={}", s.name, s.weight))
            .collect::<Vec<_>>()
            .join(", "),
        steps,
        plan.global_batch(),
        plan.seq_len(),
        opened.source.dtype(),
        world,
        micro,
        &plan.fingerprint()[..16.min(plan.fingerprint().len())]
    );

    // 2. The storage nodes.
    let (nodes, endpoints) = match &args.cluster {
        Some(path) => {
            let cluster = ClusterFile::load(path)?;
            (Vec::new(), cluster_endpoints(&cluster, Some(&root)))
        }
        None => {
            let verbs = nodes_verbs(args.transport)?;
            start_nodes(
                &root,
                &opened,
                args.nodes,
                args.replicas,
                &secret,
                verbs,
                args.transport == TransportKind::Verbs,
            )?
        }
    };
    for e in &endpoints {
        println!(
            "  node {} at {}: {} files",
            e.name,
            e.addr.as_deref().unwrap_or("local"),
            e.files.as_ref().map_or(0, Vec::len)
        );
    }

    // 3. The ranks.
    let opts = ConnectOptions {
        client_name: "seqfeed-demo".into(),
        secret: secret.clone(),
        expected_fingerprint: opened.dataset_fingerprint.clone(),
        connections: args.connections.max(1),
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    };
    let retry = RetryPolicy {
        failover_timeout: Duration::from_secs(3),
        ..RetryPolicy::default()
    };
    let (tx, rx) = mpsc::channel::<Msg>();
    let bar = indicatif::ProgressBar::new(steps * world as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} batches checked {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t_run = Instant::now();
    let mut table = Table::new(world, plan.sources().len());
    let mut done: Vec<(usize, seqfeed_loader::LoaderStats, Option<String>)> = Vec::new();
    let mut used_by_rank: Vec<(usize, Used)> = Vec::new();
    let mut nodes = nodes;
    let mut node_bytes_before_kill = None;
    std::thread::scope(|s| -> anyhow::Result<()> {
        for rank in 0..world {
            let tx = tx.clone();
            let (opened, root, endpoints, opts) = (&opened, &root, &endpoints, &opts);
            let kind = args.transport;
            let prefetch = args.prefetch;
            s.spawn(move || {
                let used = Arc::new(Mutex::new(Used::new()));
                let (stats, error) = run_rank(
                    opened, root, endpoints, kind, opts, retry, rank, world, steps, prefetch, &tx,
                    &used,
                );
                let used = used.lock().map(|u| u.clone()).unwrap_or_default();
                let _ = tx.send(Msg::Done {
                    rank,
                    stats,
                    error,
                    used,
                });
            });
        }
        drop(tx);
        for msg in rx {
            match msg {
                Msg::Connected { rank, used } => {
                    let line = describe_used(&used);
                    tracing::info!(rank, transports = %line, "rank connected");
                    say(&bar, format!("  rank {rank} connected: {line}"));
                }
                Msg::Step(r) => {
                    if let (Some(k), false) = (args.kill_node_after, nodes.is_empty()) {
                        if r.step >= k && node_bytes_before_kill.is_none() {
                            let n = nodes.remove(0);
                            node_bytes_before_kill =
                                Some((n.name().to_owned(), n.stats().node.bytes));
                            say(
                                &bar,
                                format!(
                                    "  -- shutting down node {} after step {} --",
                                    n.name(),
                                    r.step
                                ),
                            );
                            n.shutdown();
                        }
                    }
                    bar.inc(1);
                    table.add(plan, r);
                }
                Msg::Done {
                    rank,
                    stats,
                    error,
                    used,
                } => {
                    done.push((rank, stats, error));
                    used_by_rank.push((rank, used));
                }
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let wall = t_run.elapsed();
    // Every rank has dropped its connections: the verbs nodes must release
    // every queue pair they accepted (each on its connection's close).
    let open_qps = wait_qps_released(&nodes, Duration::from_secs(5));

    // 4. The report.
    done.sort_by_key(|d| d.0);
    let rank_failed = done.iter().any(|d| d.2.is_some());
    table.finish(plan, rank_failed);
    let mut failures = std::mem::take(&mut table.failures);
    for (rank, _, error) in &done {
        if let Some(e) = error {
            failures.push(format!("rank {rank}: {e}"));
        }
    }
    let names: Vec<&str> = plan.sources().iter().map(|s| s.name.as_str()).collect();
    println!();
    table.print(&names);
    let (total_bytes, total_seqs, batches) = (table.bytes, table.seqs, table.batches);
    let expected_batches = steps * world as u64;
    if batches < expected_batches && failures.is_empty() {
        failures.push(format!("{batches} of {expected_batches} batches read"));
    }
    let max_read: Duration = done.iter().map(|d| d.1.read_time).max().unwrap_or_default();
    println!();
    println!(
        "summary: {} batches, {total_seqs} sequences, {:.2} MiB in {:.3} s; {:.3} GB/s and {:.0} sequences/s end to end (every byte checked); {:.3} GB/s while reading",
        batches,
        total_bytes as f64 / (1 << 20) as f64,
        wall.as_secs_f64(),
        total_bytes as f64 / wall.as_secs_f64().max(1e-9) / 1e9,
        total_seqs as f64 / wall.as_secs_f64().max(1e-9),
        total_bytes as f64 / max_read.as_secs_f64().max(1e-9) / 1e9,
    );
    for (rank, st, _) in &done {
        println!(
            "  rank {rank}: {} steps, stall {:.3} ms total (first batch {:.3} ms, after warm-up {:.3} ms), reader busy {:.3} ms, rows moved to a replica {}",
            st.steps,
            st.stall.as_secs_f64() * 1e3,
            st.first_stall.as_secs_f64() * 1e3,
            st.stall_after_warmup().as_secs_f64() * 1e3,
            st.read_time.as_secs_f64() * 1e3,
            st.failed_over
        );
    }
    used_by_rank.sort_by_key(|u| u.0);
    let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
    for (rank, used) in &used_by_rank {
        println!("  rank {rank} transports: {}", describe_used(used));
        for (_, b) in used {
            *per_backend.entry(b).or_default() += 1;
        }
    }
    println!(
        "transports: {}",
        per_backend
            .iter()
            .map(|(b, n)| format!("{b}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some((name, bytes)) = &node_bytes_before_kill {
        println!(
            "  node {name}: {:.2} MiB served, then shut down",
            *bytes as f64 / (1 << 20) as f64
        );
    }
    for (n, open) in nodes.iter().zip(&open_qps) {
        let qps = match open {
            Some(q) => format!(", verbs QPs open after the ranks left: {q}"),
            None => String::new(),
        };
        println!(
            "  node {}: {:.2} MiB served{qps}",
            n.name(),
            n.stats().node.bytes as f64 / (1 << 20) as f64
        );
        if let Some(q @ 1..) = open {
            failures.push(format!(
                "node {} still holds {q} verbs queue pairs after every rank disconnected",
                n.name()
            ));
        }
    }
    println!("  total time {:.2} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        println!(
            "demo OK: {} ranks x {steps} steps, every byte equal to the files and the plan",
            world
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for f in failures.iter().take(20) {
            eprintln!("  FAILED: {f}");
        }
        eprintln!("demo FAILED: {} problem(s)", failures.len());
        Ok(ExitCode::FAILURE)
    }
}

/// One finished step of the table (all ranks).
struct StepRow {
    step: u64,
    seqs: usize,
    bytes: u64,
    mix: Vec<u64>,
    read: Duration,
    stall: Duration,
    moved: u64,
    /// `None`: ok; else what is wrong.
    problem: Option<String>,
    /// Some rank never read this step (it failed earlier).
    incomplete: bool,
}

/// Collects the ranks' step records into per-step rows, checking each
/// step's union as soon as every rank has reported it (positions are not
/// kept longer than that).
struct Table {
    world: usize,
    nsources: usize,
    pending: BTreeMap<u64, Vec<StepRecord>>,
    rows: Vec<StepRow>,
    failures: Vec<String>,
    bytes: u64,
    seqs: u64,
    batches: u64,
}

impl Table {
    fn new(world: usize, nsources: usize) -> Self {
        Table {
            world,
            nsources,
            pending: BTreeMap::new(),
            rows: Vec::new(),
            failures: Vec::new(),
            bytes: 0,
            seqs: 0,
            batches: 0,
        }
    }

    fn add(&mut self, plan: &seqfeed_plan::Plan, r: StepRecord) {
        self.bytes += r.bytes;
        self.seqs += r.rows as u64;
        self.batches += 1;
        if let Some(m) = &r.mismatch {
            self.failures.push(m.clone());
        }
        let step = r.step;
        let entry = self.pending.entry(step).or_default();
        entry.push(r);
        if entry.len() == self.world {
            if let Some(rs) = self.pending.remove(&step) {
                self.close(plan, step, rs, false);
            }
        }
    }

    /// Closes the steps some rank never reported.
    fn finish(&mut self, plan: &seqfeed_plan::Plan, rank_failed: bool) {
        for (step, rs) in std::mem::take(&mut self.pending) {
            self.close(plan, step, rs, rank_failed);
        }
        self.rows.sort_by_key(|r| r.step);
    }

    fn close(
        &mut self,
        plan: &seqfeed_plan::Plan,
        step: u64,
        mut rs: Vec<StepRecord>,
        expected_gap: bool,
    ) {
        rs.sort_by_key(|r| r.rank);
        let mut mix = vec![0u64; self.nsources];
        for r in &rs {
            for (m, c) in mix.iter_mut().zip(&r.per_source) {
                *m += c;
            }
        }
        let problem = if rs.len() < self.world {
            let p = format!(
                "step {step}: only {} of {} ranks read it",
                rs.len(),
                self.world
            );
            if !expected_gap {
                self.failures.push(p.clone());
            }
            Some(p)
        } else {
            // The ranks' blocks, in rank order, must be the plan's global batch.
            let got: Vec<u64> = rs
                .iter()
                .flat_map(|r| r.positions.iter().copied())
                .collect();
            let want: Vec<u64> = plan
                .step_block(step)
                .map(|b| b.iter().map(|r| r.position).collect())
                .unwrap_or_default();
            if got != want {
                let p = format!("step {step}: the ranks' blocks are not the plan's global batch");
                self.failures.push(p.clone());
                Some(p)
            } else {
                rs.iter().find_map(|r| r.mismatch.clone())
            }
        };
        self.rows.push(StepRow {
            step,
            seqs: rs.iter().map(|r| r.rows).sum(),
            bytes: rs.iter().map(|r| r.bytes).sum(),
            mix,
            read: rs.iter().map(|r| r.read).max().unwrap_or_default(),
            stall: rs.iter().map(|r| r.stall).max().unwrap_or_default(),
            moved: rs.iter().map(|r| r.failed_over).sum(),
            incomplete: rs.len() < self.world,
            problem,
        });
    }

    /// Prints the table: every step, or the first and last 25 (and every
    /// step with a problem) when there are more than 60.
    fn print(&self, names: &[&str]) {
        println!(
            "{:>6} {:>5} {:>9} {:>14} {:>9} {:>9} {:>6}  check",
            "step",
            "seqs",
            "KiB",
            names.join("/"),
            "read ms",
            "stall ms",
            "moved",
        );
        let n = self.rows.len();
        let mut elided = 0usize;
        for (i, r) in self.rows.iter().enumerate() {
            let show = n <= 60 || i < 25 || i >= n - 25 || r.problem.is_some();
            if !show {
                elided += 1;
                continue;
            }
            if elided > 0 {
                println!("   ... {elided} more steps, all ok ...");
                elided = 0;
            }
            println!(
                "{:>6} {:>5} {:>9} {:>14} {:>9.3} {:>9.3} {:>6}  {}",
                r.step,
                r.seqs,
                r.bytes >> 10,
                r.mix
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
                r.read.as_secs_f64() * 1e3,
                r.stall.as_secs_f64() * 1e3,
                r.moved,
                match (&r.problem, r.incomplete) {
                    (None, _) => "ok",
                    (Some(_), true) => "incomplete",
                    (Some(_), false) => "MISMATCH",
                }
            );
        }
    }
}

/// One rank: connect, load, check every batch, report each step.
#[allow(clippy::too_many_arguments)]
fn run_rank(
    opened: &OpenedPlan,
    root: &Path,
    endpoints: &[Endpoint],
    kind: TransportKind,
    opts: &ConnectOptions,
    retry: RetryPolicy,
    rank: usize,
    world: usize,
    steps: u64,
    prefetch: usize,
    tx: &mpsc::Sender<Msg>,
    used: &Arc<Mutex<Used>>,
) -> (seqfeed_loader::LoaderStats, Option<String>) {
    let reader = match connect_recording(opened.source.files(), endpoints, kind, opts, retry, used)
    {
        Ok(r) => r,
        Err(e) => return (Default::default(), Some(e.to_string())),
    };
    let first = used.lock().map(|u| u.clone()).unwrap_or_default();
    let _ = tx.send(Msg::Connected { rank, used: first });
    let config = LoaderConfig::new(rank, world)
        .end_step(steps)
        .prefetch(prefetch)
        .retry(retry);
    let mut loader = match Loader::new(config, opened.source.clone(), reader) {
        Ok(l) => l,
        Err(e) => return (Default::default(), Some(e.to_string())),
    };
    let mut verifier = Verifier::new(root);
    let nsources = opened.plan.sources().len();
    let mut error = None;
    while let Some(b) = loader.next() {
        let b = match b {
            Ok(b) => b,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        };
        let mismatch = verifier
            .check(&opened.plan, &b, rank, world)
            .err()
            .map(|e| e.to_string());
        let mut per_source = vec![0u64; nsources];
        for r in b.reads() {
            if let Some(c) = per_source.get_mut(r.source as usize) {
                *c += 1;
            }
        }
        let rec = StepRecord {
            rank,
            step: b.step(),
            rows: b.shape()[0],
            bytes: b.bytes().len() as u64,
            positions: b.reads().iter().map(|r| r.position).collect(),
            per_source,
            stall: b.stall(),
            read: b.read_time(),
            failed_over: b.read_stats().failed_over,
            mismatch,
        };
        if tx.send(Msg::Step(rec)).is_err() {
            break;
        }
    }
    (loader.stats(), error)
}

/// Connects a cluster reader like `seqfeed read` does, recording in `used`
/// the transport of every node connection it makes (reconnects included).
fn connect_recording(
    files: &[String],
    endpoints: &[Endpoint],
    kind: TransportKind,
    opts: &ConnectOptions,
    retry: RetryPolicy,
    used: &Arc<Mutex<Used>>,
) -> Result<ClusterReader, LoaderError> {
    let specs = endpoints
        .iter()
        .map(|e| {
            let mut spec = node_spec_with(kind, e, opts)?;
            let inner = spec.connect;
            let (name, used) = (e.name.clone(), Arc::clone(used));
            spec.connect = Box::new(move || {
                let t = inner()?;
                if let Ok(mut u) = used.lock() {
                    u.push((name.clone(), t.backend()));
                }
                Ok(t)
            });
            Ok(spec)
        })
        .collect::<Result<Vec<_>, LoaderError>>()?;
    ClusterReader::connect(files.to_vec(), specs, retry)
}

/// Waits (up to `limit`) until every verbs node holds no queue pair;
/// returns each node's count at the end (`None`: verbs not enabled).
fn wait_qps_released(nodes: &[NodeHandle], limit: Duration) -> Vec<Option<usize>> {
    let deadline = Instant::now() + limit;
    loop {
        let open: Vec<Option<usize>> = nodes.iter().map(NodeHandle::verbs_open_qps).collect();
        if open.iter().all(|q| q.unwrap_or(0) == 0) || Instant::now() >= deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Prints a line above the progress bar (or plainly when the bar is hidden,
/// e.g. stdout is not a terminal, where `println` of the bar prints nothing).
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// `node-0 over verbs, node-1 over tcp` by node name, with the connection
/// count when a node was connected more than once (reconnects) and every
/// transport it was read over.
fn describe_used(used: &Used) -> String {
    if used.is_empty() {
        return "no node connected".into();
    }
    let mut seen: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (node, b) in used {
        seen.entry(node.as_str()).or_default().push(b);
    }
    seen.iter()
        .map(|(n, v)| {
            let times = if v.len() > 1 {
                format!(" ({} connections)", v.len())
            } else {
                String::new()
            };
            let mut kinds: Vec<&str> = v.clone();
            kinds.dedup();
            format!("{n} over {}{times}", kinds.join("+"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Devices to enable verbs on for the in-process nodes: `Some` for
/// `--transport verbs` (an error when this host has no usable RDMA
/// device) and for `auto` when there is one; `None` otherwise.
fn nodes_verbs(kind: TransportKind) -> anyhow::Result<Option<Vec<String>>> {
    if !matches!(kind, TransportKind::Verbs | TransportKind::Auto) {
        return Ok(None);
    }
    match seqfeed_node::verbs_devices() {
        Ok(devices) => {
            println!(
                "  transport {kind}: verbs (RDMA devices {}); the nodes accept RDMA queue pairs",
                devices.join(", ")
            );
            Ok(Some(devices))
        }
        Err(reason) if kind == TransportKind::Verbs => {
            bail!("--transport verbs: no usable RDMA device on this host ({reason}); use --transport tcp or auto")
        }
        Err(reason) => {
            println!("  transport auto: tcp ({reason})");
            Ok(None)
        }
    }
}

/// Packs the three generated sources under `root`.
fn build_corpus(root: &Path, seq_len: u64) -> anyhow::Result<()> {
    let t = Instant::now();
    for (name, docs, (lo, hi), seed) in SOURCES {
        let mut rng = SplitMix(seed);
        let documents = (0..docs).map(|_| {
            // Lengths from a few tokens to a few sequences.
            let len = 16 + rng.next() % (2 * seq_len);
            (0..len)
                .map(|_| lo + (rng.next() % u64::from(hi - lo)) as u32)
                .collect::<Vec<u32>>()
        });
        let opts = PackOptions::new(name, Dtype::U16, seq_len)
            .eos(0)
            .tail(Tail::Pad(0))
            .max_file_bytes(2 << 20);
        let (src, stats) = pack_tokens(documents, &opts, root.join(name))
            .with_context(|| format!("packing source {name}"))?;
        println!(
            "  packed {name}: {} documents -> {} sequences in {} files",
            stats.documents,
            stats.sequences,
            src.files().len()
        );
    }
    tracing::info!(elapsed_ms = t.elapsed().as_millis() as u64, "corpus built");
    Ok(())
}

/// The generated plan: weights 5:3:2 over web, code, wiki.
fn plan_config(global_batch: u64, steps: u64) -> String {
    format!(
        "seed = 2024\nglobal_batch = {global_batch}\nmax_epochs = 4.0\n[run]\nsteps = {steps}\n\
         [[sources]]\nname = \"web\"\nweight = 5\n[[sources]]\nname = \"code\"\nweight = 3\n\
         [[sources]]\nname = \"wiki\"\nweight = 2\n"
    )
}

/// Places the plan's files on `n` nodes (`replicas` each) and starts them on
/// 127.0.0.1 with ephemeral ports.
fn start_nodes(
    root: &Path,
    opened: &OpenedPlan,
    n: usize,
    replicas: usize,
    secret: &Option<String>,
    verbs: Option<Vec<String>>,
    verbs_required: bool,
) -> anyhow::Result<(Vec<NodeHandle>, Vec<Endpoint>)> {
    if n == 0 {
        bail!("--nodes must be at least 1");
    }
    let mut files = Vec::new();
    for f in opened.source.files() {
        let len = std::fs::metadata(root.join(f))
            .with_context(|| format!("stat {f}"))?
            .len();
        files.push((f.clone(), len));
    }
    let names: Vec<(String, String)> = (0..n)
        .map(|i| (format!("node-{i}"), "127.0.0.1:0".to_owned()))
        .collect();
    let cluster = place(&files, &names, replicas, opened.dataset_fingerprint.clone())?;
    let mut handles = Vec::new();
    let mut endpoints = Vec::new();
    for node in &cluster.nodes {
        let listen: SocketAddr = "127.0.0.1:0".parse()?;
        let mut cfg = NodeConfig::new(root, listen);
        cfg.files = Some(node.files.clone());
        cfg.node_name = node.name.clone();
        cfg.secret = secret.clone().filter(|s| !s.is_empty());
        cfg.worker_threads = 2;
        // Ranks told to connect with rdma_cm (SEQFEED_VERBS_CONNECT=cm) need
        // nodes that listen for it (a port the kernel picks; grants carry it).
        let cm = seqfeed_node::clients_use_cm().then(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        cfg.verbs = verbs
            .as_ref()
            .map(|d| seqfeed_node::verbs_factory_cm(Some(d.clone()), None, cm));
        let h = match Node::start(cfg.clone()) {
            // auto: a node that cannot enable verbs serves tcp (and says so).
            Err(e) if cfg.verbs.is_some() && !verbs_required => {
                println!("  {}: verbs not enabled ({e}); serving tcp only", node.name);
                cfg.verbs = None;
                Node::start(cfg)
            }
            r => r,
        }
        .with_context(|| format!("starting {}", node.name))?;
        endpoints.push(Endpoint {
            name: node.name.clone(),
            addr: Some(h.local_addr().to_string()),
            root: Some(root.to_owned()),
            files: Some(node.files.clone()),
        });
        handles.push(h);
    }
    Ok((handles, endpoints))
}

/// splitmix64: a tiny deterministic generator for the corpus.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
