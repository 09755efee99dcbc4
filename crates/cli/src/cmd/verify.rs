//! `seqfeed verify` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed verify`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed verify`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed verify' is not implemented yet")
}
