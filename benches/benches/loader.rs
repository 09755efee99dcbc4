//! Loader stall benchmark: does prefetching hide the transport behind the
//! consumer?
//!
//! One rank reads a 3-source plan of 16 KiB sequences (4096 x u32) through
//! the local transport, then through the tcp transport from a storage node
//! on 127.0.0.1 (same run). First the transport alone: `read_step` for every
//! step, back to back (time per step `T`). Then the loader with a consumer
//! that works per step (sleeping, like a trainer thread waiting on its GPU):
//!
//! * transport time = 80% of the consumer's step (consumer `T / 0.8`):
//!   target no stall after warm-up (< 5% of `T` per step), and the loader's
//!   step rate equals the consumer's alone (ratio >= 0.95);
//! * the consumer at `0.8 T` (faster than the transport): the run is
//!   transport-bound, a stall of `0.2 T` per step is unavoidable, and the
//!   loader's step rate must equal the transport's alone (ratio >= 0.95).
//!
//! Then the cost of the per-read CRC32C check (issue 12 item 9) over tcp:
//! the reader's throughput with the check against without it, the same
//! steps in interleaved passes of the same run (best of 5 each); the
//! target is 0.95x or more (the check would be on by default if it cost
//! under 5%; it is not: 0.81x and 0.67x in two runs on the 2-core
//! development host).
//!
//! `SEQFEED_BENCH_SCALE=N` multiplies the number of steps;
//! `SEQFEED_BENCH_ONLY=crc` runs the CRC comparison only.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use seqfeed_benches::print_ratio;
use seqfeed_format::{write_synthetic_source, Dataset, Dtype};
use seqfeed_loader::{
    node_spec, node_spec_with, BlockSource, ClusterReader, Endpoint, Loader, LoaderConfig,
    PlanSource, RetryPolicy, TransportKind,
};
use seqfeed_node::{Node, NodeConfig};
use seqfeed_plan::{shapes_from_dataset, Plan, PlanConfig};
use seqfeed_transport::tcp::ConnectOptions;

const SEQ_LEN: u64 = 4096;
const GLOBAL_BATCH: u64 = 256; // 4 MiB per step

fn main() {
    let scale: u64 = std::env::var("SEQFEED_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let steps = 60 * scale;
    let dir = tempfile::tempdir().expect("temp dir");
    for (i, (name, n)) in [("code", 600u64), ("web", 1500), ("wiki", 400)]
        .iter()
        .enumerate()
    {
        write_synthetic_source(
            dir.path().join(name),
            name,
            Dtype::U32,
            SEQ_LEN,
            *n,
            i as u64,
            8 << 20,
        )
        .expect("write source");
    }
    let ds = Dataset::open(dir.path()).expect("open dataset");
    let config = PlanConfig::from_toml_str(&format!(
        "seed = 1\nglobal_batch = {GLOBAL_BATCH}\nmax_epochs = 1000.0\n[run]\nsteps = {steps}\n\
         [[sources]]\nname = \"web\"\nweight = 5\n[[sources]]\nname = \"code\"\nweight = 3\n\
         [[sources]]\nname = \"wiki\"\nweight = 2\n"
    ))
    .expect("plan config");
    let plan =
        Arc::new(Plan::new(config, shapes_from_dataset(&ds).expect("shapes")).expect("plan"));
    let source = Arc::new(PlanSource::new(plan.clone()).expect("plan source"));
    let local = || {
        let spec =
            node_spec(TransportKind::Local, &Endpoint::local(dir.path(), None)).expect("spec");
        ClusterReader::connect(source.files().to_vec(), vec![spec], RetryPolicy::default())
            .expect("connect")
    };
    let only_crc = std::env::var("SEQFEED_BENCH_ONLY").is_ok_and(|v| v == "crc");
    if !only_crc {
        bench_transport("local", &source, steps, &local);
    }

    let node = Node::start(NodeConfig::new(
        dir.path(),
        "127.0.0.1:0".parse().expect("addr"),
    ))
    .expect("start node");
    let addr = node.local_addr().to_string();
    let tcp = || {
        let opts = ConnectOptions {
            connections: 4,
            ..ConnectOptions::default()
        };
        let spec = node_spec_with(
            TransportKind::Tcp,
            &Endpoint::remote("node", addr.as_str(), None),
            &opts,
        )
        .expect("spec");
        ClusterReader::connect(source.files().to_vec(), vec![spec], RetryPolicy::default())
            .expect("connect")
    };
    if !only_crc {
        bench_transport("tcp, 4 connections, 127.0.0.1", &source, steps, &tcp);
    }
    bench_crc("tcp, 4 connections, 127.0.0.1", &source, steps, &tcp);
}

/// Reader throughput over `reader` with and without the per-read CRC32C
/// check: interleaved passes over the same steps, best of 5 each.
fn bench_crc(name: &str, source: &Arc<PlanSource>, steps: u64, reader: &dyn Fn() -> ClusterReader) {
    println!("== CRC32C check on the read path ({name})");
    let step_bytes = GLOBAL_BATCH as usize * source.seq_bytes();
    let mut r = reader();
    let mut bufs = vec![vec![0u8; step_bytes]; 3];
    let mut reads = Vec::new();
    let mut best = [Duration::MAX; 2]; // [without, with]
    for pass in 0..12 {
        let verify = pass % 2 == 1;
        r.set_verify_crc(verify);
        let t = Instant::now();
        let mut mismatches = 0;
        for step in 0..steps {
            reads.clear();
            source.block(step, 0, 1, &mut reads).expect("block");
            let dst = &mut bufs[step as usize % 3];
            mismatches += r
                .read_step(step, &reads, source.seq_bytes(), dst)
                .expect("read")
                .crc_mismatches;
        }
        assert_eq!(mismatches, 0, "intact data failed the CRC check");
        if pass >= 2 {
            let b = &mut best[usize::from(verify)];
            *b = (*b).min(t.elapsed());
        }
    }
    let gbps = |d: Duration| (step_bytes as f64 * steps as f64) / d.as_secs_f64() / 1e9;
    println!(
        "{steps} steps of {} KiB: without the check {:.2} GB/s, with it {:.2} GB/s",
        step_bytes >> 10,
        gbps(best[0]),
        gbps(best[1])
    );
    print_ratio(
        &format!("{name}: reader rate with CRC32C check vs without"),
        gbps(best[1]),
        gbps(best[0]),
        "rate without the check",
        Some(0.95),
    );
}

/// Transport-only time per step, then the loader with consumers at
/// `T / 0.8` and `0.8 T`.
fn bench_transport(
    name: &str,
    source: &Arc<PlanSource>,
    steps: u64,
    reader: &dyn Fn() -> ClusterReader,
) {
    println!("== {name}");
    let step_bytes = GLOBAL_BATCH as usize * source.seq_bytes();

    // 1. Transport only: every step back to back (best of 3 passes after a
    //    warm-up pass).
    let mut r = reader();
    // Rotate over as many buffers as the loader's ring (prefetch 2 + 1), so
    // both touch the same memory.
    let mut bufs = vec![vec![0u8; step_bytes]; 3];
    let mut reads = Vec::new();
    let mut transport = Duration::MAX;
    for pass in 0..4 {
        let t = Instant::now();
        for step in 0..steps {
            reads.clear();
            source.block(step, 0, 1, &mut reads).expect("block");
            let dst = &mut bufs[step as usize % 3];
            r.read_step(step, &reads, source.seq_bytes(), dst)
                .expect("read");
        }
        if pass > 0 {
            transport = transport.min(t.elapsed());
        }
    }
    let per_step = transport / steps as u32;
    let gbps = (step_bytes as f64 * steps as f64) / transport.as_secs_f64() / 1e9;
    println!(
        "transport only ({name}): {steps} steps of {} KiB, T = {:.1} us/step, {gbps:.2} GB/s",
        step_bytes >> 10,
        per_step.as_secs_f64() * 1e6
    );

    // 2. The case: transport time is 80% of the consumer's step
    //    (consumer = T / 0.8). Prefetching must hide the reads completely.
    let work = per_step.mul_f64(1.0 / 0.8);
    let run = best_run(source, reader, work);
    let consumer_alone = sleep_time(work, run.steps - 1);
    let stall_per_step = run.stall_after_warmup / (run.steps - 1) as u32;
    println!(
        "consumer = T/0.8 = {:.1} us/step: loader wall {:.1} us/step after warm-up; stall first batch {:.1} us, after warm-up {:.1} us/step = {:.3}x of T (target <= 0.05x: {})",
        work.as_secs_f64() * 1e6,
        run.wall_after_first.as_secs_f64() * 1e6 / (run.steps - 1) as f64,
        run.first_stall.as_secs_f64() * 1e6,
        stall_per_step.as_secs_f64() * 1e6,
        stall_per_step.as_secs_f64() / per_step.as_secs_f64(),
        if stall_per_step.as_secs_f64() <= 0.05 * per_step.as_secs_f64() { "met" } else { "NOT met" }
    );
    print_ratio(
        &format!("{name}: loader step rate vs consumer alone (T = 0.8 C)"),
        consumer_alone.as_secs_f64(),
        run.wall_after_first.as_secs_f64(),
        "consumer-only rate",
        Some(0.95),
    );

    // 3. The consumer is faster than the transport (consumer = 0.8 T): the
    //    run is transport-bound; a stall of ~0.2 T per step is unavoidable
    //    and the loader must run at the transport's own rate.
    let work = per_step.mul_f64(0.8);
    let run = best_run(source, reader, work);
    let stall_per_step = run.stall_after_warmup / (run.steps - 1) as u32;
    println!(
        "consumer = 0.8 T = {:.1} us/step: loader wall {:.1} us/step after warm-up; stall after warm-up {:.1} us/step = {:.3}x of T (unavoidable: 0.2x)",
        work.as_secs_f64() * 1e6,
        run.wall_after_first.as_secs_f64() * 1e6 / (run.steps - 1) as f64,
        stall_per_step.as_secs_f64() * 1e6,
        stall_per_step.as_secs_f64() / per_step.as_secs_f64(),
    );
    print_ratio(
        &format!("{name}: loader step rate vs transport alone (C = 0.8 T)"),
        per_step.as_secs_f64() * (run.steps - 1) as f64,
        run.wall_after_first.as_secs_f64(),
        "transport-only rate",
        Some(0.95),
    );
}

struct Run {
    steps: u64,
    first_stall: Duration,
    stall_after_warmup: Duration,
    wall_after_first: Duration,
}

/// Best (least stall) of 3 loader runs with a consumer working `work` per step.
fn best_run(source: &Arc<PlanSource>, reader: &dyn Fn() -> ClusterReader, work: Duration) -> Run {
    let mut best: Option<Run> = None;
    for _ in 0..3 {
        let mut loader =
            Loader::new(LoaderConfig::new(0, 1), source.clone(), reader()).expect("loader");
        let t = Instant::now();
        let mut n = 0u64;
        let mut first_done = Duration::ZERO;
        while let Some(b) = loader.next() {
            let b = b.expect("batch");
            if n == 0 {
                first_done = t.elapsed();
            }
            std::hint::black_box(b.bytes()[0]);
            std::thread::sleep(work);
            n += 1;
        }
        let st = loader.stats();
        println!(
            "  run: reader thread {:.1} us/step reading, stall after warm-up {:.1} us total",
            st.read_time.as_secs_f64() * 1e6 / n.max(1) as f64,
            st.stall_after_warmup().as_secs_f64() * 1e6
        );
        let run = Run {
            steps: n.max(2),
            first_stall: st.first_stall,
            stall_after_warmup: st.stall_after_warmup(),
            wall_after_first: t.elapsed().saturating_sub(first_done),
        };
        if best
            .as_ref()
            .is_none_or(|b| run.wall_after_first < b.wall_after_first)
        {
            best = Some(run);
        }
    }
    best.expect("at least one run")
}

/// Wall time of `n` sleeps of `work` (sleep overshoot included, as in the runs).
fn sleep_time(work: Duration, n: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        std::thread::sleep(work);
    }
    t.elapsed()
}
