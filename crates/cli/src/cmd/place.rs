//! `seqfeed place` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed place`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed place`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed place' is not implemented yet")
}
