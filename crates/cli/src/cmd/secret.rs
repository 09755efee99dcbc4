//! The shared-secret flags of every command that talks to storage nodes
//! (`serve`, `read`, `health`, `demo`): `--secret` / `SEQFEED_SECRET` or
//! `--secret-file` / `SEQFEED_SECRET_FILE`.
use std::path::PathBuf;

use anyhow::bail;

/// `--secret` and `--secret-file`, flattened into a command's flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// Shared secret of the nodes (also SEQFEED_SECRET). It never crosses
    /// the network (the handshake is a challenge-response), but a flag shows
    /// in `ps`: prefer --secret-file.
    #[arg(long, env = "SEQFEED_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Read the shared secret from this file (also SEQFEED_SECRET_FILE): one
    /// trailing newline is stripped; a file every user may read is refused.
    #[arg(long, env = "SEQFEED_SECRET_FILE", value_name = "PATH")]
    secret_file: Option<PathBuf>,
}

impl SecretArgs {
    /// The secret to use, if any (an empty `--secret` counts as none).
    pub fn resolve(&self) -> anyhow::Result<Option<String>> {
        let inline = self.secret.clone().filter(|s| !s.is_empty());
        match (&inline, &self.secret_file) {
            (Some(_), Some(path)) => bail!(
                "give the shared secret once: --secret (or SEQFEED_SECRET) and --secret-file {} \
                 (or SEQFEED_SECRET_FILE) are both set",
                path.display()
            ),
            (_, Some(path)) => Ok(Some(seqfeed_transport::read_secret_file(path)?)),
            (s, None) => Ok(s.clone()),
        }
    }
}
