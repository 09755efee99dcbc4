//! `seqfeed completions` and `seqfeed man`: shell completion scripts and
//! man pages generated from the same clap definition as `--help`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap_complete::Shell;

/// Flags of `seqfeed completions`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Install, e.g.:
  bash: seqfeed completions bash > ~/.local/share/bash-completion/completions/seqfeed
  zsh:  seqfeed completions zsh > ~/.zfunc/_seqfeed   (with fpath+=~/.zfunc before compinit)
  fish: seqfeed completions fish > ~/.config/fish/completions/seqfeed.fish")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Flags of `seqfeed man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write seqfeed.1 and one seqfeed-COMMAND.1 per subcommand into this
    /// directory (created if missing) instead of printing seqfeed.1.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs `seqfeed completions`.
pub fn completions(args: CompletionsArgs, mut cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Runs `seqfeed man`.
pub fn man(args: ManArgs, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    match &args.dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("writing the man page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            println!("man pages written to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
