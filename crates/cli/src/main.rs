//! `seqfeed`: the command-line front end. `main() -> run(parse) -> ExitCode`;
//! each subcommand lives in its own module under `cmd/` with an `Args`
//! struct (raw flags) and a `run` function that validates them into library
//! objects.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// Moves LLM training data from storage nodes into trainer GPUs by index.
#[derive(Parser, Debug)]
#[command(name = "seqfeed", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing env-filter syntax); also read from SEQFEED_LOG.
    #[arg(long, global = true, env = "SEQFEED_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pack documents (Megatron .bin/.idx, .npy, raw token arrays, JSONL of ids, or JSONL text with --tiktoken) into a source of fixed-size sequences.
    Pack(cmd::pack::Args),
    /// Show a source's manifest, files, hashes, and optionally a sequence's tokens.
    Inspect(cmd::inspect::Args),
    /// Recompute every hash and CRC of a source or dataset; report the first bad sequence.
    Verify(cmd::verify::Args),
    /// Build and query a training plan (mixture, global shuffle, per-rank blocks).
    Plan(cmd::plan::Args),
    /// Assign a dataset's files to storage nodes with replication; writes a cluster file.
    Place(cmd::place::Args),
    /// Run a storage node serving a dataset's sequence files.
    Serve(cmd::serve::Args),
    /// Read a step range as one rank and print throughput.
    Read(cmd::read::Args),
    /// End-to-end demo: corpus, plan, two nodes, four ranks, byte checks (the main job).
    Demo(cmd::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("seqfeed: error: {}", error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Joins an error and its causes with ": ", skipping a cause whose text the
/// message already holds (library errors often print their source inline
/// *and* expose it as `source()`, which `{:#}` would repeat).
fn error_chain(err: &anyhow::Error) -> String {
    // The same rendering the Python package raises (seqfeed_loader::error_message).
    seqfeed_loader::error_message(err.as_ref())
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pack(a) => cmd::pack::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Place(a) => cmd::place::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Read(a) => cmd::read::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Inner;
    impl std::fmt::Display for Inner {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("file.seq: truncated")
        }
    }
    impl std::error::Error for Inner {}

    #[derive(Debug)]
    struct Outer(Inner);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "opening dataset: {}", self.0)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let err = anyhow::Error::new(Outer(Inner)).context("starting the node");
        assert_eq!(
            error_chain(&err),
            "starting the node: opening dataset: file.seq: truncated"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_appended() {
        let err = anyhow::Error::new(Inner).context("starting the node");
        assert_eq!(error_chain(&err), "starting the node: file.seq: truncated");
    }
}
