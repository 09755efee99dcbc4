//! Issue 12 item 5: `--secret-file` (and `SEQFEED_SECRET_FILE`) on `serve`
//! and on the client commands (`read`, `health`), with the built binary and
//! a real node process on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, p, stderr};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Packs 1000 u32 tokens into `root/data/web` (seq_len 10) and returns
/// the dataset root.
fn dataset(root: &Path) -> PathBuf {
    let input = root.join("tokens.u32");
    let bytes: Vec<u8> = (0..1000u32).flat_map(|t| t.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let out = root.join("data").join("web");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = bin()
        .args(["--log", "warn", "pack", p(&input), "--input-dtype", "u32"])
        .args(["--dtype", "u32", "--seq-len", "10", "-o", p(&out)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    root.join("data")
}

fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

struct Node(std::process::Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn secret_file_on_serve_read_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = dataset(d);
    let plan = d.join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 7\nglobal_batch = 4\n[run]\nsteps = 5\n[[sources]]\nname = \"web\"\nweight = 1.0\n",
    )
    .unwrap();
    let good = secret_file(d, "secret", "s3cret\n", 0o600);
    let wrong = secret_file(d, "wrong-secret", "s3cre\n", 0o600);
    let open = secret_file(d, "open-secret", "s3cret\n", 0o644);
    let empty = secret_file(d, "empty-secret", "\n", 0o600);

    // A bad file on the node: an error naming it, before anything listens.
    let missing = d.join("no-such-secret");
    for (f, want) in [
        (&missing, "cannot read the secret file"),
        (&open, "chmod 600"),
        (&empty, "is empty"),
    ] {
        let o = bin()
            .args(["serve", "--dataset", p(&data), "--listen", "127.0.0.1:0"])
            .args(["--secret-file", p(f)])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(p(f)) && e.contains(want), "{e}");
    }

    let addr_file = d.join("addr");
    let _node = Node(
        bin()
            .args(["--log", "warn", "serve", "--dataset", p(&data)])
            .args(["--listen", "127.0.0.1:0", "--name", "node-s"])
            .args(["--addr-file", p(&addr_file)])
            .env("SEQFEED_SECRET_FILE", &good)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !addr_file.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&addr_file)
        .unwrap()
        .trim()
        .to_owned();
    let read = |secret: &[&str]| {
        bin()
            .args(["--log", "warn", "read", "--json", "--plan", p(&plan)])
            .args(["--dataset", p(&data), "--node", &addr, "--transport", "tcp"])
            .args(secret)
            .output()
            .unwrap()
    };
    let o = read(&["--secret-file", p(&good)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"sequences\":20"));
    // The same secret given inline works too.
    assert!(read(&["--secret", "s3cret"]).status.success());
    for (args, want) in [
        (vec!["--secret-file", p(&wrong)], "wrong shared secret"),
        (vec![], "requires a shared secret"),
        (vec!["--secret-file", p(&open)], "chmod 600"),
        (vec!["--secret-file", p(&missing)], "no-such-secret"),
        (
            vec!["--secret", "x", "--secret-file", p(&good)],
            "give the shared secret once",
        ),
    ] {
        let o = read(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    let health = |file: &Path| {
        bin()
            .args(["health", &addr, "--secret-file", p(file)])
            .output()
            .unwrap()
    };
    assert!(health(&good).status.success(), "{}", stderr(&health(&good)));
    assert!(!health(&wrong).status.success());
    let help = bin().args(["read", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--secret-file"));
}

/// `serve --auth-max-failures --auth-backoff-ms`: after one wrong proof the
/// address is blocked, and even the right secret is refused, naming why.
#[test]
fn serve_rate_limit_flags() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = dataset(d);
    let good = secret_file(d, "secret", "s3cret", 0o600);
    let wrong = secret_file(d, "wrong-secret", "nope", 0o600);
    let addr_file = d.join("addr");
    let _node = Node(
        bin()
            .args(["--log", "warn", "serve", "--dataset", p(&data)])
            .args(["--listen", "127.0.0.1:0", "--addr-file", p(&addr_file)])
            .args(["--secret-file", p(&good), "--auth-max-failures", "1"])
            .args(["--auth-backoff-ms", "60000"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !addr_file.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "serve did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&addr_file)
        .unwrap()
        .trim()
        .to_owned();
    let health = |file: &Path| {
        bin()
            .args(["health", &addr, "--secret-file", p(file)])
            .output()
            .unwrap()
    };
    assert!(stderr(&health(&wrong)).contains("wrong shared secret"));
    let o = health(&good);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("too many failed handshakes"),
        "{}",
        stderr(&o)
    );
}
