//! `seqfeed read` (not yet built; see the open issue that covers it).
use std::process::ExitCode;

/// Flags of `seqfeed read`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs `seqfeed read`.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'seqfeed read' is not implemented yet")
}
