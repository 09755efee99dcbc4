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

/// CPU seconds (user + system) used so far: the utime and stime counters
/// getrusage(2) sums, read from /proc (clock ticks, 100 per second on
/// Linux) so the benches need no unsafe code. Zero where /proc is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    /// The whole process, exited threads included (`RUSAGE_SELF`).
    pub process: f64,
    /// The calling thread plus the live threads whose names start with one
    /// of the prefixes given to [`cpu_times`] (e.g. a transport's workers).
    pub client: f64,
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            process: self.process - earlier.process,
            client: self.client - earlier.client,
        }
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_cpu_seconds(path: &std::path::Path) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (in parentheses, which may hold spaces).
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 11 and 12 counted after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// The CPU time of this process and of its client threads: the calling
/// thread and those named with one of `prefixes`.
pub fn cpu_times(prefixes: &[&str]) -> CpuTimes {
    let me = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_owned()));
    let mut client = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.filter_map(Result::ok) {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let ours = me.as_deref() == Some(t.file_name().as_os_str())
                || prefixes.iter().any(|p| name.starts_with(p));
            if ours {
                client += stat_cpu_seconds(&t.path().join("stat"));
            }
        }
    }
    CpuTimes {
        process: stat_cpu_seconds(std::path::Path::new("/proc/self/stat")),
        client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins for `secs` of wall time.
    fn burn(secs: f64) {
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }

    #[test]
    fn cpu_times_count_this_thread_and_named_threads_only() {
        let c0 = cpu_times(&["cpu-test-burn"]);
        // The helper stays alive (blocked) until both readings are taken: a
        // thread that has exited is gone from /proc/self/task.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::Builder::new()
            .name("cpu-test-burn".into())
            .spawn(move || {
                burn(0.4);
                let _ = done_rx.recv();
            })
            .expect("spawn");
        burn(0.4);
        let with = cpu_times(&["cpu-test-burn"]) - c0;
        let without = cpu_times(&[]) - c0;
        drop(done_tx);
        helper.join().expect("join");
        // Two spinning threads; the machine may be shared, so loose bounds.
        assert!(with.client > without.client + 0.05, "{with:?} {without:?}");
        assert!(without.client > 0.05, "{without:?}");
        assert!(with.process >= with.client - 0.02, "{with:?}");
    }
}
