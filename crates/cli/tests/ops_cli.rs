//! Operations of the built binary: log output (no ANSI when piped, JSON
//! lines, malformed filters), `--json` output, exit statuses, completions,
//! man pages and `--version`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, p, pack_counting_source, run, stderr, stdout, Killed};

use std::path::{Path, PathBuf};

/// Packs 1000 u32 tokens into `root/web` (seq_len 10: 100 sequences in
/// several files) and returns the source directory.
fn dataset(root: &Path) -> PathBuf {
    pack_counting_source(root, &["--max-file-size", "8K"])
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn logs_have_no_ansi_escapes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.u32");
    std::fs::write(&input, [1u8, 0, 0, 0, 2, 0, 0, 0]).unwrap();
    let out = dir.path().join("web");
    let o = run(&[
        "--log",
        "debug",
        "pack",
        p(&input),
        "--input-dtype",
        "u32",
        "--seq-len",
        "1",
        "-o",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("packing"), "{err}");
    assert!(
        !err.contains("\x1b["),
        "ANSI escapes in piped stderr:\n{err:?}"
    );
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let o = run(&["--log-format", "json", "verify", p(&src)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<serde_json::Value> = err.lines().map(json).collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "verified" && l["level"] == "INFO"),
        "{err}"
    );
}

#[test]
fn a_malformed_log_filter_is_an_error_naming_it() {
    for bad in ["seqfeed=loud", "info,[{"] {
        let o = run(&["--log", bad, "--version"]);
        // --version exits before logging starts; a command reaches it.
        assert!(o.status.success());
        let o = run(&["--log", bad, "verify", "/nonexistent"]);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(
            err.contains("invalid log filter") && err.contains(&format!("{bad:?}")),
            "{err}"
        );
        // Also from the environment.
        let o = bin()
            .env("SEQFEED_LOG", bad)
            .args(["verify", "/nonexistent"])
            .output()
            .unwrap();
        assert!(stderr(&o).contains("invalid log filter"), "{}", stderr(&o));
    }
}

#[test]
fn inspect_json() {
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let o = run(&["inspect", "--json", p(&src), "--seq", "42"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["kind"], "source");
    assert_eq!(v["name"], "web");
    assert_eq!(v["sequences"], 100);
    assert_eq!(v["seq_len"], 10);
    assert_eq!(v["dtype"], "u32");
    assert!(v["files"].as_array().unwrap().len() > 1, "{v}");
    let want: Vec<u64> = (420..430).collect();
    assert_eq!(v["sequence"]["tokens"], serde_json::json!(want));

    let data = src.parent().unwrap();
    let o = run(&[
        "inspect",
        "--json",
        p(data),
        "--seq",
        "3",
        "--source",
        "web",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["kind"], "dataset");
    assert_eq!(v["sources"][0]["name"], "web");
    assert_eq!(v["sequence"]["source"], "web");
    assert_eq!(v["sequence"]["tokens"][0], 30);
}

/// The first sequence file of a source.
fn first_seq_file(src: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seq"))
        .collect();
    files.sort();
    files.into_iter().next().unwrap()
}

#[test]
fn verify_json_and_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let data = src.parent().unwrap();
    let o = run(&["verify", "--json", p(data)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["ok"], true);
    assert_eq!(v["kind"], "dataset");
    assert_eq!(v["sequences"], 100);
    assert_eq!(v["bytes"], 4000);

    // Could not run: a missing path is 1.
    let o = run(&["verify", p(&dir.path().join("missing"))]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // Ran and found the data wrong: 3. Flip the last payload byte of a file.
    let file = first_seq_file(&src);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    let o = run(&["verify", p(data)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("verify FAILED"), "{}", stderr(&o));
    let o = run(&["verify", "--json", p(data)]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("sequence"), "{v}");

    // The statuses are documented in --help.
    let help = stdout(&run(&["--help"]));
    assert!(
        help.contains("Exit status") && help.contains("3  verification failed"),
        "{help}"
    );
}

#[test]
fn read_json_and_the_plan_fingerprint_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let data = src.parent().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 7\nglobal_batch = 4\n[run]\nsteps = 5\n[[sources]]\nname = \"web\"\nweight = 1.0\n",
    )
    .unwrap();
    let o = run(&[
        "read",
        "--json",
        "--plan",
        p(&plan),
        "--dataset",
        p(data),
        "--local",
        "--verify",
        "--rank",
        "1",
        "--world",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["rank"], 1);
    assert_eq!(v["world"], 2);
    assert_eq!(v["steps"], 5);
    assert_eq!(v["sequences"], 10);
    assert_eq!(v["bytes"], 400);
    assert_eq!(v["verified_bytes"], 400);
    let err = stderr(&o);
    assert!(
        err.contains("loader starting") && err.contains("plan="),
        "{err}"
    );
}

/// `plan stats --json`: one JSON object whose quotas add up to the run and
/// whose whole-run scan matches them; two sources at 3:1.
#[test]
fn plan_stats_json() {
    let dir = tempfile::tempdir().unwrap();
    let web = dataset(dir.path());
    let data = web.parent().unwrap();
    // A second source: the same tokens packed under another name.
    let o = run(&[
        "--log",
        "warn",
        "pack",
        p(&dir.path().join("tokens.u32")),
        "--input-dtype",
        "u32",
        "--dtype",
        "u32",
        "--seq-len",
        "10",
        "-o",
        p(&data.join("code")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 7\nglobal_batch = 4\n[run]\nsteps = 25\n\
         [[sources]]\nname = \"web\"\nweight = 3.0\n\
         [[sources]]\nname = \"code\"\nweight = 1.0\n",
    )
    .unwrap();
    let o = run(&[
        "--log",
        "warn",
        "plan",
        "stats",
        "--json",
        "--scan",
        "--dataset",
        p(data),
        "--config",
        p(&plan),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&stdout(&o));
    assert_eq!(v["steps"], 25);
    assert_eq!(v["global_batch"], 4);
    assert_eq!(v["sequences"], 100);
    assert_eq!(v["fingerprint"].as_str().map(str::len), Some(64), "{v}");
    let sources = v["sources"].as_array().unwrap();
    let quota = |name: &str| {
        sources
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no source {name} in {v}"))["quota"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(quota("web"), 75);
    assert_eq!(quota("code"), 25);
    for s in sources {
        assert_eq!(s["scanned"], s["quota"], "{s}");
        assert_eq!(s["size"], 100);
    }
    assert_eq!(v["scan"]["whole_run"], true);
    assert_eq!(v["scan"]["matches_quotas"], true);
    assert_eq!(v["scan"]["positions"], 100);
    let first: u64 = v["first_step"]["sources"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(first, 4);
}

#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        for sub in ["pack", "verify", "serve", "completions"] {
            assert!(out.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let o = run(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(page.contains(".TH seqfeed 1"), "{page}");
    for sub in ["pack", "verify", "serve", "read"] {
        assert!(page.contains(sub), "man page lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let o = run(&["man", "--dir", p(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for page in ["seqfeed.1", "seqfeed-pack.1", "seqfeed-verify.1"] {
        let text = std::fs::read_to_string(out.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
}

#[test]
fn version_names_the_git_commit() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let out = stdout(&o);
    let want = format!("seqfeed {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(out.starts_with(&want), "{out}");
    let commit = out[want.len()..].trim_end().trim_end_matches(')');
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{out}"
    );
}

#[test]
fn pack_help_says_what_a_document_is_and_takes_size_units() {
    let help = stdout(&run(&["pack", "--help"]));
    assert!(
        help.contains("a whole `.npy` file is ONE document")
            && help.contains("2-D")
            && help.contains("1GB = 10^9 bytes"),
        "{help}"
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.u32");
    std::fs::write(&input, [1u8, 0, 0, 0, 2, 0, 0, 0]).unwrap();
    let pack = |size: &str, out: &str| {
        run(&[
            "--log",
            "warn",
            "pack",
            p(&input),
            "--input-dtype",
            "u32",
            "--seq-len",
            "1",
            "--max-file-size",
            size,
            "-o",
            p(&dir.path().join(out)),
        ])
    };
    for (size, out) in [("1GB", "a"), ("1GiB", "b"), ("512MB", "c"), ("64k", "d")] {
        let o = pack(size, out);
        assert!(o.status.success(), "{size}: {}", stderr(&o));
    }
    for bad in ["1.5GB", "12XB", "0", "GB"] {
        let o = pack(bad, "bad");
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = stderr(&o);
        assert!(
            err.contains("--max-file-size") && err.contains(&format!("'{bad}'")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_megatron_prefix_without_extension_suggests_the_idx() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("code_text_document");
    std::fs::write(dir.path().join("code_text_document.idx"), b"").unwrap();
    std::fs::write(dir.path().join("code_text_document.bin"), b"").unwrap();
    let o = run(&[
        "pack",
        p(&prefix),
        "--seq-len",
        "4",
        "-o",
        p(&dir.path().join("out")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let want = format!("did you mean {}.idx?", prefix.display());
    assert!(err.contains(&want), "{err}");
}

#[test]
fn folders_that_are_not_sources_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let data = src.parent().unwrap();
    std::fs::create_dir(data.join("notes")).unwrap();
    std::fs::write(data.join("notes").join("README.txt"), "raw corpus notes").unwrap();
    let o = run(&["--log", "warn", "verify", "--json", p(data)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&stdout(&o))["sequences"], 100);
    let err = stderr(&o);
    assert!(
        err.contains("skipping 'notes'") && err.contains("not a packed source"),
        "{err}"
    );
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 7\nglobal_batch = 4\n[run]\nsteps = 5\n[[sources]]\nname = \"web\"\nweight = 1.0\n",
    )
    .unwrap();
    let o = run(&[
        "--log",
        "warn",
        "plan",
        "stats",
        "--dataset",
        p(data),
        "--config",
        p(&plan),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("skipping 'notes'"), "{}", stderr(&o));
}

/// `serve --handshake-timeout-ms`: a client that connects and says nothing
/// is closed after the deadline, while the node keeps serving.
#[test]
fn serve_limits_are_flags() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let addr_file = dir.path().join("addr");
    let mut node = bin()
        .args(["--log", "warn", "serve", "--dataset"])
        .arg(src.parent().unwrap())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--handshake-timeout-ms",
            "300",
            "--addr-file",
        ])
        .arg(&addr_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !addr_file.exists() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "serve did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&addr_file).unwrap();
    let mut silent = std::net::TcpStream::connect(addr.trim()).unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let t = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // Closed (EOF or reset) by the node, well before the 5 s read timeout.
    let r = silent.read(&mut buf);
    let waited = t.elapsed();
    let _ = node.kill();
    let _ = node.wait();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(
        waited < std::time::Duration::from_secs(3),
        "the silent client was held {waited:?}"
    );
    assert!(run(&["serve", "--help"]).status.success());
    assert!(stdout(&run(&["serve", "--help"])).contains("--handshake-timeout-ms"));
}

/// The fabric flags (issue 10 item 4) on `serve` and `read`: listed in
/// both helps, a DSCP out of range is refused naming it, and on `serve`
/// they need `--verbs`.
#[test]
fn fabric_flags_on_serve_and_read() {
    for cmd in ["serve", "read"] {
        let help = stdout(&run(&[cmd, "--help"]));
        for flag in [
            "--gid-index",
            "--traffic-class",
            "--dscp",
            "--service-level",
            "--pkey-index",
            "--ib-port",
        ] {
            assert!(help.contains(flag), "{cmd} --help lacks {flag}:\n{help}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let data = src.parent().unwrap();
    let o = run(&[
        "serve",
        "--dataset",
        p(data),
        "--listen",
        "127.0.0.1:0",
        "--gid-index",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("need --verbs"), "{}", stderr(&o));
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 7\nglobal_batch = 4\n[run]\nsteps = 5\n[[sources]]\nname = \"web\"\nweight = 1.0\n",
    )
    .unwrap();
    let o = run(&[
        "read",
        "--plan",
        p(&plan),
        "--dataset",
        p(data),
        "--node",
        "127.0.0.1:9",
        "--dscp",
        "64",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--dscp 64: DSCP is 0..=63"),
        "{}",
        stderr(&o)
    );
}

/// `read --json` over a real node reports that node's counters
/// (`per_node`): its bytes and sequences equal the run's, one batch per
/// step, no errors, a latency for every batch; the text summary has a line
/// for it.
#[test]
fn read_reports_per_node_counters() {
    let dir = tempfile::tempdir().unwrap();
    let src = dataset(dir.path());
    let data = src.parent().unwrap();
    let addr_file = dir.path().join("addr");
    let _node = Killed(
        bin()
            .args([
                "--log",
                "warn",
                "serve",
                "--dataset",
                p(data),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--name", "node-a", "--addr-file", p(&addr_file)])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = std::time::Instant::now();
    while !addr_file.exists() {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "serve did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&addr_file).unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 7\nglobal_batch = 4\n[run]\nsteps = 5\n[[sources]]\nname = \"web\"\nweight = 1.0\n",
    )
    .unwrap();
    let args = [
        "--log",
        "warn",
        "read",
        "--plan",
        p(&plan),
        "--dataset",
        p(data),
        "--node",
        addr.trim(),
    ];
    let o = run(&[&args[..], &["--json", "--verify"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json(&stdout(&o));
    let nodes = v["per_node"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    let n = &nodes[0];
    assert_eq!(n["bytes"], v["bytes"]);
    assert_eq!(n["sequences"], v["sequences"]);
    assert_eq!(n["sequences"], 20);
    assert_eq!(n["batches"], 5);
    assert_eq!(n["batch_latency_us"]["count"], 5);
    assert_eq!(n["failed_over"], 0);
    assert_eq!(n["live"], true);
    for kind in ["timeout", "connection", "protocol", "backend", "other"] {
        assert_eq!(n["errors"][kind], 0, "{n}");
    }
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("node ") && l.contains("20 sequences in 5 batches")),
        "{text}"
    );
}
