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

/// Packs the tokens 0..1000 (u32, seq_len 10: 100 sequences) into the
/// source `root/data/web` with the extra `pack` flags `extra`, and returns
/// the source directory.
pub fn pack_counting_source(root: &Path, extra: &[&str]) -> std::path::PathBuf {
    let input = root.join("tokens.u32");
    let bytes: Vec<u8> = (0..1000u32).flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let out = root.join("data").join("web");
    std::fs::create_dir_all(root.join("data")).unwrap();
    let mut args = vec![
        "--log",
        "warn",
        "pack",
        p(&input),
        "--input-dtype",
        "u32",
        "--dtype",
        "u32",
        "--seq-len",
        "10",
        "-o",
        p(&out),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// Kills the child when dropped (a failed assertion must not leak a node).
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
