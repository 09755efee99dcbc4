//! Helpers shared by the CLI's integration tests: the built binary with the
//! environment that would change its behaviour removed, and output access.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

/// The built `seqfeed` binary, without the caller's log filter, colour,
/// secret and systemd settings (a test sets what it needs explicitly).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seqfeed"));
    for var in [
        "SEQFEED_LOG",
        "NO_COLOR",
        "SEQFEED_SECRET",
        "SEQFEED_SECRET_FILE",
        "NOTIFY_SOCKET",
    ] {
        c.env_remove(var);
    }
    c
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path as `&str` (test paths are UTF-8).
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
