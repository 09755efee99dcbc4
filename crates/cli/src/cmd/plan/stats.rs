//! `seqfeed plan stats`: quotas, realized ratios, repetition counts, the
//! first and last steps, an optional whole-run scan, as a table or JSON.
use std::process::ExitCode;
use std::time::Instant;

use anyhow::bail;
use seqfeed_plan::Plan;

use super::{header, progress, StatsArgs};

fn step_summary(plan: &Plan, step: u64) -> anyhow::Result<String> {
    let block = plan.step_block(step)?;
    let mut counts = vec![0u64; plan.sources().len()];
    for r in &block {
        counts[r.source as usize] += 1;
    }
    let parts: Vec<String> = plan
        .sources()
        .iter()
        .zip(&counts)
        .map(|(s, c)| format!("{} {}", s.name, c))
        .collect();
    let first: Vec<String> = block
        .iter()
        .take(4)
        .map(|r| {
            format!(
                "{}:{}#{}",
                plan.sources()[r.source as usize].name,
                r.file,
                r.index
            )
        })
        .collect();
    Ok(format!(
        "{}  (first: {} ...)",
        parts.join(", "),
        first.join(" ")
    ))
}

pub(super) fn stats(a: StatsArgs) -> anyhow::Result<ExitCode> {
    let plan = a.input.plan()?;
    let scan = if a.scan {
        Some(scan_sources(&plan, a.scan_steps)?)
    } else {
        None
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats_json(&plan, scan.as_ref())?)?
        );
    } else {
        print_stats(&plan, scan.as_ref())?;
    }
    if let Some(scan) = &scan {
        if scan.whole_run()
            && plan
                .sources()
                .iter()
                .zip(&scan.counts)
                .any(|(s, c)| *c != s.quota)
        {
            bail!("realized counts differ from the quotas");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `plan stats --scan` counted: each source's positions over the first
/// `steps` steps.
struct Scan {
    steps: u64,
    total_steps: u64,
    positions: u64,
    seconds: f64,
    counts: Vec<u64>,
}

impl Scan {
    /// Whether the scan covered the whole run (so counts must equal quotas).
    fn whole_run(&self) -> bool {
        self.steps == self.total_steps
    }
}

fn scan_sources(plan: &Plan, scan_steps: Option<u64>) -> anyhow::Result<Scan> {
    let steps = scan_steps.unwrap_or(plan.steps()).min(plan.steps());
    let bar = progress(steps, "scanning");
    let t = Instant::now();
    let mut counts = vec![0u64; plan.sources().len()];
    let b = plan.global_batch();
    for step in 0..steps {
        for (i, c) in plan
            .count_sources(step * b..(step + 1) * b)
            .into_iter()
            .enumerate()
        {
            counts[i] += c;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Scan {
        steps,
        total_steps: plan.steps(),
        positions: steps * b,
        seconds: t.elapsed().as_secs_f64(),
        counts,
    })
}

fn print_stats(plan: &Plan, scan: Option<&Scan>) -> anyhow::Result<()> {
    header(plan);
    let total = plan.total_sequences();
    let wsum: f64 = plan.sources().iter().map(|s| s.weight).sum();
    println!(
        "{:<20} {:>8} {:>10} {:>10} {:>14} {:>14} {:>9} {:>7} {:>14} {:>7}",
        "source",
        "weight",
        "target",
        "realized",
        "quota",
        "size",
        "epochs",
        "repeats",
        "at max",
        "limit"
    );
    for s in plan.sources() {
        println!(
            "{:<20} {:>8.4} {:>10.6} {:>10.6} {:>14} {:>14} {:>9.4} {:>7} {:>14} {:>7}",
            s.name,
            s.weight,
            s.weight / wsum,
            s.quota as f64 / total as f64,
            s.quota,
            s.size,
            s.epochs(),
            s.max_repeats(),
            s.sequences_at_max_repeats(),
            s.max_epochs
        );
        if let Some(b) = s.per_batch {
            println!("{:<20} {b} per global batch", "");
        }
        if !s.held_out().is_empty() {
            println!(
                "{:<20} {} held out for validation ({}); {} for training",
                "",
                s.held_out().len(),
                s.holdout,
                s.train_size()
            );
        }
    }
    println!("step 0: {}", step_summary(plan, 0)?);
    let last = plan.steps() - 1;
    println!("step {last}: {}", step_summary(plan, last)?);
    if let Some(scan) = scan {
        println!(
            "scanned {} positions in {:.2} s ({:.1} M/s)",
            scan.positions,
            scan.seconds,
            scan.positions as f64 / scan.seconds.max(1e-9) / 1e6
        );
        for (s, c) in plan.sources().iter().zip(&scan.counts) {
            let verdict = match (scan.whole_run(), *c == s.quota) {
                (true, true) => "= quota",
                (true, false) => "!= quota",
                (false, _) => "",
            };
            println!(
                "  {:<20} {:>14} ({:.6}) {verdict}",
                s.name,
                c,
                *c as f64 / scan.positions.max(1) as f64
            );
        }
    }
    Ok(())
}

/// A finite float as a JSON number, anything else (an unlimited epoch cap) as null.
fn finite(x: f64) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::Value::Null
    }
}

fn step_counts(plan: &Plan, step: u64) -> anyhow::Result<serde_json::Value> {
    let block = plan.step_block(step)?;
    let mut counts = vec![0u64; plan.sources().len()];
    for r in &block {
        counts[r.source as usize] += 1;
    }
    let by_source: serde_json::Map<String, serde_json::Value> = plan
        .sources()
        .iter()
        .zip(&counts)
        .map(|(s, c)| (s.name.clone(), serde_json::json!(c)))
        .collect();
    Ok(serde_json::json!({ "step": step, "sources": by_source }))
}

fn stats_json(plan: &Plan, scan: Option<&Scan>) -> anyhow::Result<serde_json::Value> {
    let total = plan.total_sequences();
    let wsum: f64 = plan.sources().iter().map(|s| s.weight).sum();
    let sources: Vec<serde_json::Value> = plan
        .sources()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "name": s.name,
                "weight": s.weight,
                "target": s.weight / wsum,
                "realized": s.quota as f64 / total as f64,
                "quota": s.quota,
                "size": s.size,
                "epochs": s.epochs(),
                "max_repeats": s.max_repeats(),
                "sequences_at_max_repeats": s.sequences_at_max_repeats(),
                "max_epochs": finite(s.max_epochs),
                "per_batch": s.per_batch,
                "held_out": s.held_out().len(),
                "train_size": s.train_size(),
                "scanned": scan.map(|sc| sc.counts[i]),
            })
        })
        .collect();
    let last = plan.steps() - 1;
    Ok(serde_json::json!({
        "fingerprint": plan.fingerprint().to_string(),
        "mode": plan.mode().to_string(),
        "global_batch": plan.global_batch(),
        "steps": plan.steps(),
        "sequences": total,
        "requested_sequences": plan.requested_sequences(),
        "seq_len": plan.seq_len(),
        "token_bytes": plan.token_bytes(),
        "sources": sources,
        "first_step": step_counts(plan, 0)?,
        "last_step": step_counts(plan, last)?,
        "scan": scan.map(|sc| serde_json::json!({
            "steps": sc.steps,
            "positions": sc.positions,
            "seconds": sc.seconds,
            "whole_run": sc.whole_run(),
            "matches_quotas": sc.whole_run()
                && plan.sources().iter().zip(&sc.counts).all(|(s, c)| *c == s.quota),
        })),
    }))
}
