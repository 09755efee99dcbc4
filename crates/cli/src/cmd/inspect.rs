//! `seqfeed inspect` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed inspect`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed inspect' is not implemented yet")
}
