//! `seqfeed verify`: recompute every hash and CRC; report the first bad sequence.
//! Exits 0 when everything checks, [`crate::EXIT_VERIFY_FAILED`] when the data
//! is wrong, 1 when it could not run (missing path, unreadable manifest).
use std::path::PathBuf;
use std::process::ExitCode;

use seqfeed_format::{FormatError, SeqFile, Source};

use super::inspect::{open_target, Target};

/// Flags of `seqfeed verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A dataset directory, a source directory, or a single sequence file.
    pub path: PathBuf,
    /// Print the result as one JSON object on stdout (`ok`, `kind`, `sequences`,
    /// `files`, `bytes`, `secs`, and `error` when verification failed).
    #[arg(long)]
    pub json: bool,
}

fn bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Adds the source-global index to a CRC failure.
fn describe(source: Option<&Source>, err: &FormatError) -> String {
    if let (Some(s), FormatError::CrcMismatch { path, index, .. }) = (source, err) {
        if let Some(fi) = s.files().iter().position(|f| f.path() == path) {
            return format!(
                "{err}\nfirst bad sequence: source '{}', file {}, sequence {index} of that file (source sequence {})",
                s.name(),
                s.manifest().files[fi].path,
                s.file_starts()[fi] + index
            );
        }
    }
    err.to_string()
}

fn verify_source(s: &Source, bar: &indicatif::ProgressBar) -> Result<(), String> {
    s.verify(&|n| bar.inc(n)).map_err(|e| describe(Some(s), &e))
}

fn verify_file(f: &SeqFile, bar: &indicatif::ProgressBar) -> Result<(), String> {
    f.verify(&|n| bar.inc(n)).map_err(|e| describe(None, &e))
}

/// Runs `seqfeed verify`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let target = open_target(&args.path)?;
    let kind = match &target {
        Target::File(_) => "file",
        Target::Source(_) => "source",
        Target::Dataset(_) => "dataset",
    };
    let (result, sequences, files, bytes) = match &target {
        Target::File(f) => {
            let b = bar(f.count() * f.seq_bytes());
            let r = verify_file(f, &b);
            b.finish_and_clear();
            (r, f.count(), 1, f.count() * f.seq_bytes())
        }
        Target::Source(s) => {
            let b = bar(s.payload_bytes());
            let r = verify_source(s, &b);
            b.finish_and_clear();
            (r, s.total_sequences(), s.files().len(), s.payload_bytes())
        }
        Target::Dataset(d) => {
            let total: u64 = d.sources().iter().map(Source::payload_bytes).sum();
            let b = bar(total);
            let r = d.sources().iter().try_for_each(|s| verify_source(s, &b));
            b.finish_and_clear();
            let files = d.sources().iter().map(|s| s.files().len()).sum();
            (r, d.total_sequences(), files, total)
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let mut out = serde_json::json!({
            "ok": result.is_ok(),
            "path": args.path.display().to_string(),
            "kind": kind,
            "sequences": sequences,
            "files": files,
            "bytes": bytes,
            "secs": secs,
        });
        if let Err(msg) = &result {
            out["error"] = msg.clone().into();
        }
        println!("{out}");
    }
    match result {
        Ok(()) => {
            tracing::info!(sequences, files, bytes, secs, "verified");
            if args.json {
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "OK: {sequences} sequences in {files} files verified ({bytes} bytes, {:.1} MB/s)",
                bytes as f64 / secs.max(1e-9) / 1e6
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(msg) => {
            eprintln!("seqfeed: verify FAILED: {msg}");
            Ok(ExitCode::from(crate::EXIT_VERIFY_FAILED))
        }
    }
}
