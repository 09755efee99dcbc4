//! Shared helpers for the cross-crate integration tests under `tests/tests/`:
//! a small multi-source dataset, its plan, storage nodes on 127.0.0.1, a
//! rank runner that checks every batch, and the path of the `seqfeed`
//! binary for tests that run real processes.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use seqfeed_format::{write_synthetic_source, Dataset, Dtype};
use seqfeed_loader::{
    node_spec_with, BlockSource, ClusterReader, Endpoint, Loader, LoaderConfig, LoaderError,
    LoaderStats, PlanSource, RetryPolicy, TransportKind, Verifier,
};
use seqfeed_node::{Node, NodeConfig, NodeHandle};
use seqfeed_plan::{shapes_from_dataset, Plan, PlanConfig};
use seqfeed_transport::tcp::ConnectOptions;

/// A test dataset on disk with its plan.
pub struct Corpus {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The plan over it.
    pub plan: Arc<Plan>,
    /// The plan as the loader's block source.
    pub source: Arc<PlanSource>,
    /// The dataset fingerprint.
    pub fingerprint: String,
    /// The plan config as TOML text.
    pub plan_toml: String,
}

impl Corpus {
    /// The dataset root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Every file the plan reads, dataset-relative.
    pub fn files(&self) -> Vec<String> {
        self.source.files().to_vec()
    }
}

/// Three sources (web, code, wiki) of u32 sequences of `seq_len` tokens,
/// several files each, and a plan with weights 5:3:2, global batch
/// `global_batch` and `steps` steps.
pub fn corpus(seq_len: u64, global_batch: u64, steps: u64) -> Corpus {
    let dir = tempfile::tempdir().expect("temp dir");
    let seq_bytes = seq_len * 4;
    for (i, (name, n)) in [("web", 500u64), ("code", 300), ("wiki", 200)]
        .iter()
        .enumerate()
    {
        write_synthetic_source(
            dir.path().join(name),
            name,
            Dtype::U32,
            seq_len,
            *n,
            100 + i as u64,
            seq_bytes * 64,
        )
        .expect("write source");
    }
    let ds = Dataset::open(dir.path()).expect("open dataset");
    let plan_toml = format!(
        "seed = 42\nglobal_batch = {global_batch}\nmax_epochs = 100.0\n[run]\nsteps = {steps}\n\
         [[sources]]\nname = \"web\"\nweight = 5\n[[sources]]\nname = \"code\"\nweight = 3\n\
         [[sources]]\nname = \"wiki\"\nweight = 2\n"
    );
    let config = PlanConfig::from_toml_str(&plan_toml).expect("plan config");
    let plan =
        Arc::new(Plan::new(config, shapes_from_dataset(&ds).expect("shapes")).expect("plan"));
    let source = Arc::new(PlanSource::new(plan.clone()).expect("plan source"));
    Corpus {
        fingerprint: ds.fingerprint().to_owned(),
        plan_toml,
        dir,
        plan,
        source,
    }
}

/// Splits `files` over `nodes` nodes, each file on `replicas` consecutive
/// nodes starting at its index modulo `nodes`.
pub fn place(files: &[String], nodes: usize, replicas: usize) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); nodes];
    for (i, f) in files.iter().enumerate() {
        for r in 0..replicas {
            out[(i + r) % nodes].push(f.clone());
        }
    }
    out
}

/// Lays out one data directory per node under a new temporary directory,
/// as storage hosts hold them: `node-<i>/` with every source's
/// `manifest.json` of the dataset at `root` and only the files of
/// `placement[i]` (hard links). Returns the directory and the node roots.
pub fn stage_nodes(root: &Path, placement: &[Vec<String>]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ds = seqfeed_format::DatasetManifests::open(root).expect("manifests");
    let roots = placement
        .iter()
        .enumerate()
        .map(|(i, files)| {
            let node = dir.path().join(format!("node-{i}"));
            for m in ds.sources() {
                std::fs::create_dir_all(node.join(&m.name)).expect("mkdir");
                let name = seqfeed_format::MANIFEST_NAME;
                std::fs::copy(root.join(&m.name).join(name), node.join(&m.name).join(name))
                    .expect("copy manifest");
            }
            for f in files {
                std::fs::hard_link(root.join(f), node.join(f)).expect("link file");
            }
            node
        })
        .collect();
    (dir, roots)
}

/// Starts one storage node on 127.0.0.1 (ephemeral port) per file list.
pub fn start_nodes(root: &Path, placement: &[Vec<String>]) -> Vec<NodeHandle> {
    start_nodes_with(root, placement, &|_| {})
}

/// [`start_nodes`], with `configure` applied to each node's config first.
pub fn start_nodes_with(
    root: &Path,
    placement: &[Vec<String>],
    configure: &dyn Fn(&mut NodeConfig),
) -> Vec<NodeHandle> {
    placement
        .iter()
        .enumerate()
        .map(|(i, files)| {
            let mut cfg = NodeConfig::new(root, "127.0.0.1:0".parse().expect("addr"));
            cfg.files = Some(files.clone());
            cfg.node_name = format!("node-{i}");
            cfg.worker_threads = 2;
            configure(&mut cfg);
            Node::start(cfg).expect("start node")
        })
        .collect()
}

/// A node as the loader sees it: name, address and files.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    /// Name (for errors).
    pub name: String,
    /// `127.0.0.1:port`.
    pub addr: String,
    /// Files it holds.
    pub files: Vec<String>,
}

/// The addresses of running nodes.
pub fn addrs(nodes: &[NodeHandle], placement: &[Vec<String>]) -> Vec<NodeAddr> {
    nodes
        .iter()
        .zip(placement)
        .map(|(n, files)| NodeAddr {
            name: n.name().to_owned(),
            addr: n.local_addr().to_string(),
            files: files.clone(),
        })
        .collect()
}

/// Writes the plan config and a cluster file for `nodes` into the corpus
/// directory (hidden names, so the dataset ignores them); returns their paths.
pub fn write_plan_and_cluster(corpus: &Corpus, nodes: &[NodeAddr]) -> (PathBuf, PathBuf) {
    let plan = corpus.root().join(".plan.toml");
    std::fs::write(&plan, &corpus.plan_toml).expect("write plan config");
    let cluster = seqfeed_transport::ClusterFile {
        fingerprint: Some(corpus.fingerprint.clone()),
        replicas: 1,
        nodes: nodes
            .iter()
            .map(|n| seqfeed_transport::ClusterNode {
                name: n.name.clone(),
                addr: n.addr.clone(),
                files: n.files.clone(),
            })
            .collect(),
    };
    let path = corpus.root().join(".cluster.toml");
    cluster.save(&path).expect("write cluster file");
    (plan, path)
}

/// Quick retry bounds for tests.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        start_attempts: 3,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        failover_timeout: Duration::from_millis(1500),
    }
}

/// Tcp options for tests: short timeouts, the dataset's fingerprint.
pub fn tcp_options(fingerprint: &str) -> ConnectOptions {
    ConnectOptions {
        client_name: "seqfeed-tests".into(),
        expected_fingerprint: Some(fingerprint.to_owned()),
        connections: 2,
        connect_timeout: Duration::from_secs(1),
        io_timeout: Duration::from_secs(3),
        ..ConnectOptions::default()
    }
}

/// A cluster reader over tcp to `nodes`.
pub fn tcp_reader(
    corpus: &Corpus,
    nodes: &[NodeAddr],
    retry: RetryPolicy,
) -> Result<ClusterReader, LoaderError> {
    reader(corpus, nodes, TransportKind::Tcp, retry)
}

/// A cluster reader over `kind` to `nodes` (with the tcp options of
/// [`tcp_options`]).
pub fn reader(
    corpus: &Corpus,
    nodes: &[NodeAddr],
    kind: TransportKind,
    retry: RetryPolicy,
) -> Result<ClusterReader, LoaderError> {
    let opts = tcp_options(&corpus.fingerprint);
    let specs = nodes
        .iter()
        .map(|n| {
            node_spec_with(
                kind,
                &Endpoint::remote(&n.name, &n.addr, Some(n.files.clone())),
                &opts,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    ClusterReader::connect(corpus.files(), specs, retry)
}

/// What one rank saw.
#[derive(Debug, Default)]
pub struct RankRun {
    /// Steps read, in order.
    pub steps: Vec<u64>,
    /// Plan positions of each step's rows.
    pub positions: Vec<Vec<u64>>,
    /// Bytes checked against the files.
    pub checked: u64,
    /// Loader totals.
    pub stats: LoaderStats,
    /// The first error, if the run ended with one.
    pub error: Option<String>,
}

/// Runs rank `rank` of `world` over `reader` from `start` to the end,
/// checking every batch with a [`Verifier`] (plan + direct file reads);
/// `after_step` is called after each checked batch. Panics on a mismatch.
pub fn run_rank(
    corpus: &Corpus,
    reader: ClusterReader,
    rank: usize,
    world: usize,
    start: u64,
    after_step: &dyn Fn(u64),
) -> RankRun {
    let config = LoaderConfig::new(rank, world)
        .start_step(start)
        .retry(quick_retry());
    let mut loader = Loader::new(config, corpus.source.clone(), reader).expect("loader");
    let mut verifier = Verifier::new(corpus.root());
    let mut run = RankRun::default();
    while let Some(b) = loader.next() {
        match b {
            Ok(b) => {
                run.checked += verifier
                    .check(&corpus.plan, &b, rank, world)
                    .unwrap_or_else(|e| panic!("rank {rank}: {e}"));
                run.steps.push(b.step());
                run.positions
                    .push(b.reads().iter().map(|r| r.position).collect());
                after_step(b.step());
            }
            Err(e) => {
                run.error = Some(e.to_string());
                break;
            }
        }
    }
    run.stats = loader.stats();
    run
}

/// Runs ranks `0..world` of `world` at once, a thread each over its own
/// `reader()`, with [`run_rank`] from step 0; `after_step(rank, step)` is
/// called after each checked batch.
pub fn run_ranks(
    corpus: &Corpus,
    world: usize,
    reader: &(dyn Fn() -> ClusterReader + Sync),
    after_step: &(dyn Fn(usize, u64) + Sync),
) -> Vec<RankRun> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..world)
            .map(|rank| {
                s.spawn(move || {
                    run_rank(corpus, reader(), rank, world, 0, &|step| {
                        after_step(rank, step)
                    })
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

/// [`run_ranks`] with a failure injected: once every rank has checked step
/// `at` (all holding that batch, so nothing past step `at + 2` has been
/// read), rank 0 calls `kill` once, then they all go on.
pub fn run_ranks_with_a_kill(
    corpus: &Corpus,
    world: usize,
    at: u64,
    reader: &(dyn Fn() -> ClusterReader + Sync),
    kill: &(dyn Fn() + Sync),
) -> Vec<RankRun> {
    let barrier = Barrier::new(world);
    run_ranks(corpus, world, reader, &|rank, step| {
        if step == at {
            barrier.wait();
            if rank == 0 {
                kill();
            }
            barrier.wait();
        }
    })
}

/// Asserts that every rank read every step of `0..steps` without an error,
/// moving at least one row to a replica, and that together they read the
/// plan's global batches ([`assert_union_is_global_batch`]).
pub fn assert_failed_over(plan: &Plan, runs: &[RankRun], steps: u64) {
    for (rank, r) in runs.iter().enumerate() {
        assert_eq!(r.error, None, "rank {rank}");
        assert_eq!(r.steps, (0..steps).collect::<Vec<_>>(), "rank {rank}");
        assert!(
            r.stats.failed_over > 0,
            "rank {rank}: no row was moved to the replica"
        );
    }
    assert_union_is_global_batch(plan, runs, 0..steps);
}

/// Asserts that, step by step, the ranks' blocks concatenated in rank order
/// are exactly the plan's global batch, and their union covers it once.
pub fn assert_union_is_global_batch(plan: &Plan, runs: &[RankRun], steps: std::ops::Range<u64>) {
    for step in steps {
        let want: Vec<u64> = plan
            .step_block(step)
            .expect("step block")
            .iter()
            .map(|r| r.position)
            .collect();
        let mut got = Vec::new();
        for (rank, run) in runs.iter().enumerate() {
            let i = run
                .steps
                .iter()
                .position(|&s| s == step)
                .unwrap_or_else(|| panic!("rank {rank} never read step {step}"));
            got.extend_from_slice(&run.positions[i]);
        }
        assert_eq!(
            got, want,
            "step {step}: ranks' blocks != the plan's global batch"
        );
        let set: BTreeSet<u64> = got.iter().copied().collect();
        assert_eq!(set.len(), want.len(), "step {step}: a position read twice");
    }
}

/// The `seqfeed` binary for tests that run real node processes:
/// `$SEQFEED_BIN` when set, else `target/<profile>/seqfeed` brought up to
/// date once per test process with `cargo build -p seqfeed` (a no-op when
/// `cargo test --workspace` has just built it).
pub fn seqfeed_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SEQFEED_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> -> target/<profile>/seqfeed
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_owned();
        let bin = profile_dir.join("seqfeed");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "seqfeed", "--bin", "seqfeed"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => {}
            other => {
                eprintln!("cargo build -p seqfeed: {other:?}; using the existing binary");
            }
        }
        assert!(
            bin.exists(),
            "{} missing (cargo build -p seqfeed)",
            bin.display()
        );
        bin
    })
    .clone()
}

/// A `seqfeed serve` child process on 127.0.0.1 (ephemeral port). Dropping
/// it continues it (a test may have stopped it with SIGSTOP), kills it and
/// reaps it.
pub struct ServeProcess {
    /// The child process.
    pub child: std::process::Child,
    /// The address it listens on (`host:port`).
    pub addr: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `seqfeed serve` named `name` over the dataset at `root`, serving
/// `files` (every file when `None`), and waits (at most 30 s) until it has
/// written its address; panics if it exits first.
pub fn serve_process(root: &Path, name: &str, files: Option<&[String]>) -> ServeProcess {
    let addr_file = root.join(format!(".{name}.addr"));
    let mut cmd = std::process::Command::new(seqfeed_bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "2",
        "--name",
        name,
    ])
    .arg("--dataset")
    .arg(root)
    .arg("--addr-file")
    .arg(&addr_file)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    if let Some(files) = files {
        cmd.arg("--files").arg(files.join(","));
    }
    let child = cmd.spawn().expect("spawn seqfeed serve");
    let mut s = ServeProcess {
        child,
        addr: String::new(),
    };
    let t = std::time::Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.trim().is_empty() {
                s.addr = a.trim().to_owned();
                return s;
            }
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!("seqfeed serve {name} exited early: {status}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
