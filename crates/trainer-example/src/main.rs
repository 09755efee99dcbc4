//! An example trainer that embeds the seqfeed loader.
//!
//! Launch it the way torchrun launches ranks: one process per rank with
//! `RANK`, `WORLD_SIZE` and `LOCAL_RANK` in the environment (or
//! `SEQFEED_DP_RANK`/`SEQFEED_DP_SIZE` for the data-parallel layout). Each
//! process builds the plan from the shared config, reads its block of every
//! step from the storage nodes of a cluster file, checks every batch against
//! the plan and direct reads of the dataset's files, and "trains" (sleeps
//! `--step-ms`). With `--gather HOST:PORT` every rank then sends the plan
//! positions it read to rank 0, which listens there, and rank 0 checks that,
//! step by step, the ranks' blocks in rank order are exactly the plan's
//! global batch.
//!
//! The gathering address is its own: `MASTER_ADDR:MASTER_PORT` belongs to
//! torch's rendezvous store in a torchrun job and is never bound here.
//!
//! ```text
//! RANK=0 WORLD_SIZE=4 LOCAL_RANK=0 \
//!   seqfeed-trainer --plan plan.toml --dataset /data/ds --cluster cluster.toml --gather 127.0.0.1:29600
//! ```
#![forbid(unsafe_code)]

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use seqfeed_loader::{
    connect_endpoints, Endpoint, Loader, LoaderConfig, PlanSource, RetryPolicy, TransportKind,
    Verifier,
};
use seqfeed_plan::{shapes_from_dataset, Plan, PlanConfig};
use seqfeed_transport::tcp::ConnectOptions;
use seqfeed_transport::ClusterFile;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// Example trainer: consumes its blocks from a seqfeed cluster and checks them.
#[derive(Parser, Debug)]
struct Args {
    /// Plan config (TOML).
    #[arg(long)]
    plan: PathBuf,
    /// Dataset root (plan shapes and byte checks).
    #[arg(long)]
    dataset: PathBuf,
    /// Cluster file (storage nodes and their files).
    #[arg(long)]
    cluster: PathBuf,
    /// First step (resume).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Steps to train (default: to the end of the plan).
    #[arg(long)]
    steps: Option<u64>,
    /// Simulated compute per step, in milliseconds.
    #[arg(long, default_value_t = 0)]
    step_ms: u64,
    /// Transport: tcp, local or auto.
    #[arg(long, default_value = "tcp")]
    transport: TransportKind,
    /// Where rank 0 gathers every rank's positions (also SEQFEED_GATHER_ADDR).
    /// Without it each rank checks only its own batches.
    #[arg(long, env = "SEQFEED_GATHER_ADDR")]
    gather: Option<String>,
    /// Seconds rank 0 waits for the other ranks' reports.
    #[arg(long, default_value_t = 60)]
    gather_timeout: u64,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEQFEED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match train(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let rank = std::env::var("RANK").unwrap_or_else(|_| "?".into());
            eprintln!("seqfeed-trainer rank {rank}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn train(args: &Args) -> Result<()> {
    let mut config = LoaderConfig::from_env()?.start_step(args.start);
    if let Some(n) = args.steps {
        config = config.end_step(args.start.saturating_add(n));
    }
    let (rank, world) = (config.rank, config.world);
    // Rank 0 listens before reading, so the others can report whenever they finish.
    let listener = match (&args.gather, rank) {
        (Some(addr), 0) => Some(
            TcpListener::bind(addr)
                .map_err(|e| format!("rank 0: binding the gather address {addr}: {e}"))?,
        ),
        _ => None,
    };

    let ds = seqfeed_format::Dataset::open(&args.dataset)?;
    let plan = Arc::new(Plan::new(
        PlanConfig::from_file(&args.plan)?,
        shapes_from_dataset(&ds)?,
    )?);
    let source = Arc::new(PlanSource::new(plan.clone())?);
    let cluster = ClusterFile::load(&args.cluster)?;
    let opts = ConnectOptions {
        client_name: format!("seqfeed-trainer/rank{rank}"),
        expected_fingerprint: Some(ds.fingerprint().to_owned()),
        connections: 2,
        ..ConnectOptions::default()
    };
    let reader = connect_endpoints(
        seqfeed_loader::BlockSource::files(&*source),
        &Endpoint::from_cluster(&cluster, Some(&args.dataset)),
        args.transport,
        &opts,
        RetryPolicy::default(),
    )?;

    let t = Instant::now();
    let mut loader = Loader::new(config, source, reader)?;
    let mut verifier = Verifier::new(&args.dataset);
    let mut report = Vec::new();
    let mut checked = 0u64;
    while let Some(batch) = loader.next() {
        let batch = batch?;
        checked += verifier.check(&plan, &batch, rank, world)?;
        // A real trainer would hand batch.tokens_u16()/tokens_u32() to its model here.
        std::thread::sleep(Duration::from_millis(args.step_ms));
        let positions: Vec<String> = batch
            .reads()
            .iter()
            .map(|r| r.position.to_string())
            .collect();
        report.push(format!("{} {} {}", rank, batch.step(), positions.join(",")));
    }
    let st = loader.stats();
    println!(
        "rank {rank}/{world} (local rank {}): {} steps, {checked} bytes checked, stall after warm-up {:.3} ms, {:.3} s",
        loader.config().local_rank,
        st.steps,
        st.stall_after_warmup().as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64()
    );

    match (listener, &args.gather) {
        (Some(l), _) => gather(
            &l,
            &plan,
            world,
            report,
            Duration::from_secs(args.gather_timeout),
        ),
        (None, Some(addr)) => send_report(addr, &report),
        (None, None) => Ok(()),
    }
}

/// Sends this rank's report to rank 0 (retrying while rank 0 starts up).
fn send_report(master: &str, report: &[String]) -> Result<()> {
    let t = Instant::now();
    let mut stream = loop {
        match TcpStream::connect(master) {
            Ok(s) => break s,
            Err(e) if t.elapsed() < Duration::from_secs(30) => {
                tracing::debug!(error = %e, "rank 0 not reachable yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("reporting to rank 0 at {master}: {e}").into()),
        }
    };
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    for line in report {
        writeln!(stream, "{line}")?;
    }
    writeln!(stream, "end")?;
    Ok(())
}

/// Rank 0: collects every rank's positions and checks the union per step.
fn gather(
    listener: &TcpListener,
    plan: &Plan,
    world: usize,
    mine: Vec<String>,
    timeout: Duration,
) -> Result<()> {
    let mut lines = mine;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    let mut got = 1;
    while got < world {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut ended = false;
                for line in BufReader::new(s).lines() {
                    let line = line?;
                    if line == "end" {
                        ended = true;
                        break;
                    }
                    lines.push(line);
                }
                if !ended {
                    return Err("a rank's report was cut short".into());
                }
                got += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(
                        format!("only {got} of {world} ranks reported within {timeout:?}").into(),
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // step -> rank -> positions
    let mut steps: std::collections::BTreeMap<u64, Vec<Option<Vec<u64>>>> = Default::default();
    for line in &lines {
        let mut it = line.splitn(3, ' ');
        let (Some(r), Some(s), Some(p)) = (it.next(), it.next(), it.next()) else {
            return Err(format!("malformed report line {line:?}").into());
        };
        let (r, s): (usize, u64) = (r.parse()?, s.parse()?);
        let positions = p
            .split(',')
            .map(str::parse)
            .collect::<std::result::Result<Vec<u64>, _>>()?;
        let slot = steps.entry(s).or_insert_with(|| vec![None; world]);
        if r >= world || slot[r].replace(positions).is_some() {
            return Err(format!("rank {r} reported step {s} twice or is out of range").into());
        }
    }
    for (step, ranks) in &steps {
        let mut all: Vec<u64> = Vec::new();
        for (r, p) in ranks.iter().enumerate() {
            all.extend(
                p.as_ref()
                    .ok_or_else(|| format!("rank {r} did not report step {step}"))?,
            );
        }
        let want: Vec<u64> = plan.step_block(*step)?.iter().map(|x| x.position).collect();
        if all != want {
            return Err(
                format!("step {step}: the ranks' blocks are not the plan's global batch").into(),
            );
        }
    }
    println!(
        "rank 0: all {world} ranks reported; union of blocks = the plan's global batch for {} steps",
        steps.len()
    );
    Ok(())
}
