//! `seqfeed`: the command-line front end. `main() -> run(parse) -> ExitCode`;
//! each subcommand lives in its own module under `cmd/` with an `Args`
//! struct (raw flags) and a `run` function that validates them into library
//! objects.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod cmd;

/// `--version`: the package version and the git commit it was built from
/// ("unknown" outside a git checkout; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SEQFEED_GIT_COMMIT"),
    ")"
);

/// Exit status of a command that ran and found the data wrong (`verify`,
/// `read --verify`); 1 is "could not run", 2 a usage error (clap's).
pub(crate) const EXIT_VERIFY_FAILED: u8 = 3;

const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  could not run (bad input, missing file, I/O or network error)
  2  usage error (unknown flag, missing argument)
  3  verification failed (verify, read --verify: the data differs from what it should be)";

/// Moves LLM training data from storage nodes into trainer GPUs by index.
#[derive(Parser, Debug)]
#[command(name = "seqfeed", version = VERSION, about, long_about = None, after_help = EXIT_CODES_HELP)]
struct Cli {
    /// Log filter (tracing env-filter syntax, e.g. `info` or
    /// `warn,seqfeed_node=debug`); also read from SEQFEED_LOG. A malformed
    /// filter is an error. Default: `info`, and `warn` for `demo` (whose
    /// table is its output).
    #[arg(long, global = true, env = "SEQFEED_LOG")]
    log: Option<String>,
    /// Log line format on stderr: `text` (colored only when stderr is a
    /// terminal) or `json` (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format` values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pack documents (Megatron .bin/.idx, .npy, raw token arrays, JSONL of ids, Parquet, or text as JSONL/Parquet with --tokenizer or --tiktoken) into a source of fixed-size sequences.
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
    /// Check that a storage node answers (handshake and counters); exit 0 if it does.
    Health(cmd::health::Args),
    /// End-to-end demo: corpus, plan, two nodes, four ranks, byte checks (the main job).
    Demo(cmd::demo::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(cmd::docs::CompletionsArgs),
    /// Write man pages: seqfeed.1 to stdout, or one page per subcommand into --dir.
    Man(cmd::docs::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli.log.as_deref().unwrap_or(match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    });
    if let Err(err) = init_logging(filter, cli.log_format) {
        eprintln!("seqfeed: error: {}", error_chain(&err));
        return ExitCode::FAILURE;
    }
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

/// Parses the `--log` filter; a malformed one is an error naming it (it
/// used to fall back to `info` without a word).
fn log_filter(filter: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|e| {
            anyhow::anyhow!(
                "invalid log filter {filter:?} (--log or SEQFEED_LOG): {e}; \
                 expected tracing env-filter directives such as `info` or `warn,seqfeed_node=debug`"
            )
        })
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = log_filter(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Pack(a) => cmd::pack::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Place(a) => cmd::place::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Health(a) => cmd::health::run(a),
        Command::Read(a) => cmd::read::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Completions(a) => cmd::docs::completions(a, Cli::command()),
        Command::Man(a) => cmd::docs::man(a, Cli::command()),
    }
}

#[cfg(test)]
mod tests {
    use super::{error_chain, log_filter};

    #[test]
    fn malformed_log_filters_are_errors_naming_the_filter() {
        assert!(log_filter("info").is_ok());
        assert!(log_filter("warn,seqfeed_node=debug").is_ok());
        for bad in ["seqfeed=loud", "info,[{", "=debug"] {
            let err = log_filter(bad).err().map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

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
