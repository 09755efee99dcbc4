//! `seqfeed pack` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed pack`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed pack`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed pack' is not implemented yet")
}
