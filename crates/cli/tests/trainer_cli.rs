//! The CLI for trainer hosts that hold no data: `pack` records the special
//! token ids in the manifest, `place --stage` lays out each node's own
//! directory, `plan shapes` writes the shapes file, and `read` in a
//! directory holding only plan.toml and cluster.toml reads byte-exact from
//! nodes serving their staged directories (the digest of every byte equals a
//! local read of the dataset; so does a read through the shapes file).
#![allow(clippy::unwrap_used)]

mod common;

use common::{bin, p, pack_counting_source, run, stderr, stdout, Killed};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(stdout(o).trim().lines().last().unwrap()).unwrap()
}

fn seq_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for source in std::fs::read_dir(dir).unwrap() {
        let source = source.unwrap().path();
        for f in std::fs::read_dir(&source).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "seq") {
                let rel = f.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// Serves `root` as node `name` of `cluster` on 127.0.0.1 (port 0); returns
/// the process and its address.
fn serve(root: &Path, cluster: &Path, name: &str, dir: &Path) -> (Killed, String) {
    let addr_file = dir.join(format!("{name}.addr"));
    let node = Killed(
        bin()
            .args([
                "--log",
                "warn",
                "serve",
                "--dataset",
                p(root),
                "--cluster",
                p(cluster),
            ])
            .args([
                "--name",
                name,
                "--listen",
                "127.0.0.1:0",
                "--addr-file",
                p(&addr_file),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.trim().is_empty() {
                return (node, a.trim().to_owned());
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "node {name} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_trainer_directory_with_plan_and_cluster_reads_what_the_dataset_holds() {
    let dir = tempfile::tempdir().unwrap();
    let web = pack_counting_source(dir.path(), &["--eos", "999", "--max-file-size", "6144"]);
    let data: PathBuf = web.parent().unwrap().to_owned();
    // The EOS id is in the manifest.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(web.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["special_tokens"], serde_json::json!({"eos": 999}));
    let files = seq_files(&data);
    assert!(files.len() >= 2, "{files:?}");

    // Staged node directories: every manifest, disjoint files whose union is all.
    let stage = dir.path().join("stage");
    let placed = dir.path().join("placed.toml");
    let o = run(&[
        "--log",
        "warn",
        "place",
        "--dataset",
        p(&data),
        "--nodes",
        "a=127.0.0.1:1,b=127.0.0.1:2",
        "--replicas",
        "1",
        "--out",
        p(&placed),
        "--stage",
        p(&stage),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (seq_files(&stage.join("a")), seq_files(&stage.join("b")));
    assert!(!a.is_empty() && !b.is_empty() && a.iter().all(|f| !b.contains(f)));
    let mut union: Vec<String> = a.iter().chain(&b).cloned().collect();
    union.sort();
    assert_eq!(union, files);
    for n in ["a", "b"] {
        assert!(stage.join(n).join("web/manifest.json").is_file());
    }
    // Staging again into the same directory is refused, leaving it as it was.
    let o = run(&[
        "--log",
        "warn",
        "place",
        "--dataset",
        p(&data),
        "--nodes",
        "a=127.0.0.1:1,b=127.0.0.1:2",
        "--replicas",
        "1",
        "--out",
        p(&dir.path().join("again.toml")),
        "--stage",
        p(&stage),
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("already exists"),
        "{}",
        stderr(&o)
    );
    assert_eq!(seq_files(&stage.join("a")), a);

    // The shapes file, from the dataset and from a storage host's directory alike.
    let shapes = dir.path().join("shapes.toml");
    let o = run(&["plan", "shapes", "--dataset", p(&data), "-o", p(&shapes)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let from_a = dir.path().join("shapes-a.toml");
    let o = run(&[
        "plan",
        "shapes",
        "--dataset",
        p(&stage.join("a")),
        "-o",
        p(&from_a),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&shapes).unwrap(),
        std::fs::read_to_string(&from_a).unwrap()
    );
    let file = seqfeed_plan::ShapesFile::from_file(&shapes).unwrap();
    let ds = seqfeed_format::Dataset::open(&data).unwrap();
    assert_eq!(file.fingerprint.as_deref(), Some(ds.fingerprint()));
    assert_eq!(file.sources[0].special_tokens.eos, Some(999));

    // Two nodes serving their staged directories; a trainer directory with two files.
    let (_na, addr_a) = serve(&stage.join("a"), &placed, "a", dir.path());
    let (_nb, addr_b) = serve(&stage.join("b"), &placed, "b", dir.path());
    let trainer = dir.path().join("trainer");
    std::fs::create_dir(&trainer).unwrap();
    std::fs::write(
        trainer.join("plan.toml"),
        "seed = 5\nglobal_batch = 4\n[run]\nsteps = 20\n[[sources]]\nname = \"web\"\nweight = 1\nmax_epochs = 10.0\n",
    )
    .unwrap();
    let cluster = std::fs::read_to_string(&placed)
        .unwrap()
        .replace("\"127.0.0.1:1\"", &format!("\"{addr_a}\""))
        .replace("\"127.0.0.1:2\"", &format!("\"{addr_b}\""));
    std::fs::write(trainer.join("cluster.toml"), cluster).unwrap();

    // `seqfeed read` in the trainer directory, rank 1 of 2 over tcp, with `extra` flags.
    let trainer_read = |extra: &[&str]| {
        json(
            &bin()
                .current_dir(&trainer)
                .args(["--log", "warn", "read", "--plan", "plan.toml"])
                .args(["--cluster", "cluster.toml", "--transport", "tcp"])
                .args(["--rank", "1", "--world", "2", "--digest", "--json"])
                .args(extra)
                .output()
                .unwrap(),
        )
    };
    let remote = trainer_read(&[]);
    let local = json(&run(&[
        "--log",
        "warn",
        "read",
        "--plan",
        p(&trainer.join("plan.toml")),
        "--dataset",
        p(&data),
        "--local",
        "--rank",
        "1",
        "--world",
        "2",
        "--digest",
        "--json",
    ]));
    let shaped = trainer_read(&["--shapes", p(&shapes)]);
    assert_eq!(remote["bytes"], 20 * 2 * 10 * 4);
    for k in ["digest", "dataset_fingerprint", "sequences", "bytes"] {
        assert_eq!(remote[k], local[k], "{k}");
        assert_eq!(shaped[k], local[k], "{k}");
    }
    assert_eq!(
        remote["dataset_fingerprint"].as_str(),
        Some(ds.fingerprint())
    );
    let mut left: Vec<String> = std::fs::read_dir(&trainer)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["cluster.toml", "plan.toml"]);
}
