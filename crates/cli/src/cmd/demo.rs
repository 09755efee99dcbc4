//! `seqfeed demo` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed demo`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed demo`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed demo' is not implemented yet")
}
