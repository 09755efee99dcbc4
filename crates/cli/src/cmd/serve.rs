//! `seqfeed serve` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed serve`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed serve`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed serve' is not implemented yet")
}
