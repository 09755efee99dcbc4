//! Plan benchmark: a three-source mixture sized like 1T tokens at seq_len
//! 4096 (~244M sequences), described by shapes alone.
//!
//! Measures, in this run, side by side:
//! * time to open the plan and produce step 0 of rank 0, and the peak memory
//!   of a process doing only that (a child process of this benchmark);
//! * sequence resolutions per second on one core;
//! * the same for the materialized approach of Megatron-LM / OLMo (full
//!   permutation over all positions plus a blend index, in numpy:
//!   `benches/scripts/plan_materialized.py`).
//!
//! Prints ratios. Targets: time to first batch >= 100x faster, peak memory
//! <= 1% of the materialized approach, >= 20M resolutions/s/core.
//!
//! Environment: `SEQFEED_PLAN_BENCH_SEQUENCES` (run length; default
//! 61035156, a quarter of the full 244140625, to keep the default run near a
//! minute), `SEQFEED_PYTHON` (interpreter with numpy; default: the first
//! of python3, /usr/bin/python3 that imports numpy),
//! `SEQFEED_PLAN_BENCH_RESOLVE` (positions for the rate; default 50M).

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use seqfeed_benches::print_ratio;
use seqfeed_plan::{FileShape, Plan, PlanConfig, SourceShape};

const SEQ_LEN: u32 = 4096;
const TOKEN_BYTES: u32 = 2;
const DATA_OFFSET: u64 = 4096;
/// Sequences per 1 GiB file at 8 KiB per sequence (less one page of header).
const PER_FILE: u64 = ((1 << 30) - 4096) / (SEQ_LEN as u64 * TOKEN_BYTES as u64);
const BATCH: u64 = 1024;
const WORLD: u32 = 8;
const SEED: u64 = 1234;

/// (name, weight, sequences in the source, repetition limit)
const SOURCES: [(&str, f64, u64, f64); 3] = [
    ("web", 0.60, 200_000_000, 1.0),
    ("code", 0.25, 80_000_000, 1.0),
    ("books", 0.15, 20_000_000, 2.0),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn shapes(scale: f64) -> Vec<SourceShape> {
    SOURCES
        .iter()
        .map(|&(name, _, size, _)| {
            let size = ((size as f64 * scale).round() as u64).max(1);
            let mut files = Vec::new();
            let mut left = size;
            while left > 0 {
                let count = left.min(PER_FILE);
                files.push(FileShape {
                    path: format!("{name}/part-{:05}.seq", files.len()),
                    count,
                    data_offset: DATA_OFFSET,
                });
                left -= count;
            }
            SourceShape {
                name: name.to_string(),
                fingerprint: format!("blake3-of-{name}-manifest"),
                seq_len: SEQ_LEN,
                token_bytes: TOKEN_BYTES,
                tokenizer: None,
                special_tokens: Default::default(),
                files,
            }
        })
        .collect()
}

fn config(sequences: u64) -> PlanConfig {
    let mut text = format!(
        "seed = {SEED}\nglobal_batch = {BATCH}\nmode = \"global\"\n[run]\nsequences = {sequences}\n"
    );
    for (name, weight, _, limit) in SOURCES {
        text +=
            &format!("[[sources]]\nname = \"{name}\"\nweight = {weight}\nmax_epochs = {limit:?}\n");
    }
    PlanConfig::from_toml_str(&text).unwrap_or_else(|e| panic!("bench config: {e}"))
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Child mode: open the plan and produce step 0 of rank 0, report memory.
fn child(sequences: u64, scale: f64) {
    let base = status_kib("VmRSS");
    let plan = Plan::new(config(sequences), shapes(scale)).unwrap_or_else(|e| panic!("{e}"));
    let block = plan
        .rank_block(0, 0, WORLD)
        .unwrap_or_else(|e| panic!("{e}"));
    black_box(&block);
    println!("peak_rss {}", status_kib("VmHWM") * 1024);
    println!("base_rss {}", base * 1024);
}

/// CPU seconds (user + system) this thread has used, from
/// /proc/thread-self/stat (clock ticks, 100 per second on Linux).
fn thread_cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 0-based after ')': 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn parse(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn find_python() -> Option<String> {
    let candidates: Vec<String> = match std::env::var("SEQFEED_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1 << 20) as f64)
}

fn main() {
    let full = 244_140_625u64; // 1T tokens / 4096
                               // Default: a quarter of the 1T-token size, so the numpy reference (about
                               // 55 CPU-seconds and 7.3 GiB at full size) keeps the default run near a
                               // minute; SEQFEED_PLAN_BENCH_SEQUENCES=244140625 runs the full size.
    let sequences = env_u64("SEQFEED_PLAN_BENCH_SEQUENCES", full / 4);
    let scale = sequences as f64 / full as f64;
    if std::env::var_os("SEQFEED_PLAN_BENCH_CHILD").is_some() {
        child(sequences, scale);
        return;
    }
    let resolve_n = env_u64("SEQFEED_PLAN_BENCH_RESOLVE", 50_000_000);

    // --- seqfeed: time to open + step 0 of rank 0 (shapes prepared, as a
    // loader has its manifests). Best of 20.
    let shapes0 = shapes(scale);
    let files: usize = shapes0.iter().map(|s| s.files.len()).sum();
    let mut best = Duration::MAX;
    let mut plan = None;
    for _ in 0..20 {
        let s = shapes0.clone();
        let t = Instant::now();
        let p = Plan::new(config(sequences), s).unwrap_or_else(|e| panic!("{e}"));
        let block = p.rank_block(0, 0, WORLD).unwrap_or_else(|e| panic!("{e}"));
        black_box(&block);
        best = best.min(t.elapsed());
        plan = Some(p);
    }
    let Some(plan) = plan else { return };
    if sequences < full {
        println!(
            "(scaled to {:.3} of the 1T-token size; SEQFEED_PLAN_BENCH_SEQUENCES={full} for the full size)",
            scale
        );
    }
    let open_s = best.as_secs_f64();
    println!(
        "plan: {} sequences ({} steps of {BATCH}, world {WORLD}), {files} files, seq_len {SEQ_LEN}",
        plan.total_sequences(),
        plan.steps()
    );
    for s in plan.sources() {
        println!(
            "  {:<6} quota {:>11}  size {:>11}  epochs {:.3}",
            s.name,
            s.quota,
            s.size,
            s.epochs()
        );
    }

    // --- seqfeed: peak memory of a process that opens the plan and produces step 0.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let out = Command::new(&exe)
        .env("SEQFEED_PLAN_BENCH_CHILD", "1")
        .env("SEQFEED_PLAN_BENCH_SEQUENCES", sequences.to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    let child_text = String::from_utf8_lossy(&out.stdout).to_string();
    let ours_peak = parse(&child_text, "peak_rss").unwrap_or(f64::NAN);
    let ours_base = parse(&child_text, "base_rss").unwrap_or(f64::NAN);

    // --- seqfeed: resolutions per second on this core (contiguous blocks of
    // steps spread over the run, as ranks read them).
    let total = plan.total_sequences();
    let n = resolve_n.min(total);
    let t = Instant::now();
    let cpu0 = thread_cpu_seconds();
    let mut acc = 0u64;
    let chunk = 1 << 16;
    let chunks = n.div_ceil(chunk);
    let stride = (total / chunks.max(1)).max(chunk) / BATCH * BATCH;
    let mut done = 0u64;
    let mut c = 0u64;
    // At least `n` positions and at least one CPU-second (clock ticks are 10 ms).
    loop {
        let start = (c * stride) % (total - chunk.min(total) + 1);
        let len = chunk.min(total - start);
        for p in start..start + len {
            let r = plan.locate(p);
            acc = acc.wrapping_add(r.offset ^ u64::from(r.file));
        }
        done += len;
        c += 1;
        if done >= n && (thread_cpu_seconds() - cpu0 >= 1.0 || done >= 50 * n) {
            break;
        }
    }
    black_box(acc);
    let wall = t.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds() - cpu0;
    // Per core: resolutions per CPU-second of this thread (the machine may be
    // shared); wall-clock rate printed beside it.
    let ours_rate = done as f64 / if cpu >= 0.2 { cpu } else { wall };
    let ours_wall_rate = done as f64 / wall;

    println!();
    println!(
        "seqfeed plan: open + step 0 rank 0  {:>12.1} us",
        open_s * 1e6
    );
    println!(
        "seqfeed plan: peak RSS              {:>12}  (process base {})",
        mib(ours_peak),
        mib(ours_base)
    );
    println!(
        "seqfeed plan: resolutions/s/core    {:>12.1} M per CPU-second ({:.1} M/s wall, {done} positions)",
        ours_rate / 1e6,
        ours_wall_rate / 1e6
    );

    // --- The materialized reference.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/plan_materialized.py");
    let Some(python) = find_python() else {
        println!();
        println!("MATERIALIZED BASELINE NOT MEASURED: numpy is missing (tried SEQFEED_PYTHON, python3, /usr/bin/python3).");
        println!("Install it (apt-get install -y python3-numpy, or pip install numpy) to print the ratios.");
        print_ratio(
            "resolutions/s/core vs the 20M/s target",
            ours_rate,
            20e6,
            "20M/s",
            Some(1.0),
        );
        std::process::exit(2);
    };
    let join = |f: &dyn Fn(&seqfeed_plan::PlanSource) -> u64| {
        plan.sources()
            .iter()
            .map(|s| f(s).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = Command::new(&python)
        .arg(script)
        .arg(format!("--sizes={}", join(&|s| s.size)))
        .arg(format!("--quotas={}", join(&|s| s.quota)))
        .arg(format!("--files={}", join(&|_| PER_FILE)))
        .arg(format!("--seq-bytes={}", plan.seq_bytes()))
        .arg(format!("--data-offset={DATA_OFFSET}"))
        .arg(format!("--batch={BATCH}"))
        .arg(format!("--world={WORLD}"))
        .arg(format!("--seed={SEED}"))
        .arg(format!("--rate-positions={}", n.min(10_000_000)))
        .output()
        .unwrap_or_else(|e| panic!("running {python} {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        println!(
            "materialized baseline failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    let get = |k: &str| parse(&text, k).unwrap_or(f64::NAN);
    let (ref_open, ref_peak, ref_base, ref_rate) =
        (get("open_s"), get("peak_rss"), get("base_rss"), get("rate"));
    println!();
    let ref_open_cpu = get("open_cpu_s");
    println!(
        "numpy materialized: build + step 0 {:>12.3} s wall, {:.3} s CPU  ({python})",
        ref_open, ref_open_cpu
    );
    println!(
        "numpy materialized: peak RSS        {:>12}  (process base {})",
        mib(ref_peak),
        mib(ref_base)
    );
    println!(
        "numpy materialized: resolutions/s   {:>12.1} M per CPU-second ({:.1} M/s wall; vectorized gathers)",
        ref_rate / 1e6,
        get("rate_wall") / 1e6
    );
    println!();
    // The machine may be shared: compare against numpy's CPU time (never more
    // than its wall time) and seqfeed's best wall time of 20.
    let ref_first = if ref_open_cpu > 0.0 {
        ref_open_cpu.min(ref_open)
    } else {
        ref_open
    };
    print_ratio(
        "time to first batch (speedup)",
        ref_first,
        open_s,
        "seqfeed time",
        Some(100.0),
    );
    print_ratio(
        "peak memory: materialized / seqfeed",
        ref_peak,
        ours_peak,
        "seqfeed peak",
        Some(100.0),
    );
    println!(
        "{:<48} {:>8.3}% of materialized (target <= 1%: {})",
        "peak memory: seqfeed / materialized",
        100.0 * ours_peak / ref_peak,
        if ours_peak <= 0.01 * ref_peak {
            "met"
        } else {
            "NOT met"
        }
    );
    print_ratio(
        "resolutions/s/core vs numpy gathers",
        ours_rate,
        ref_rate,
        "numpy",
        None,
    );
    print_ratio(
        "resolutions/s/core vs the 20M/s target",
        ours_rate,
        20e6,
        "20M/s",
        Some(1.0),
    );
}
