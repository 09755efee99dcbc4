//! Shared helpers for seqfeed's benchmarks (timing, ratio tables).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Runs `f` `iters` times and returns the fastest wall time of one run.
pub fn best_of<F: FnMut()>(iters: usize, mut f: F) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best
}

/// Bytes per second for `bytes` moved in `d`.
pub fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-12)
}

/// Prints one line of a ratio table: `name  value_vs_reference  target`.
pub fn print_ratio(
    name: &str,
    ours: f64,
    reference: f64,
    reference_name: &str,
    target: Option<f64>,
) {
    let ratio = ours / reference.max(1e-12);
    let verdict = match target {
        Some(t) if ratio >= t => format!("(target >= {t:.2}x: met)"),
        Some(t) => format!("(target >= {t:.2}x: NOT met)"),
        None => String::new(),
    };
    println!("{name:<48} {ratio:>8.3}x of {reference_name} {verdict}");
}
