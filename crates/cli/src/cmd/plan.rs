//! `seqfeed plan` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed plan`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed plan`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed plan' is not implemented yet")
}
