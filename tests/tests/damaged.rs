//! A file changed in place on a storage node (issue 12 item 9), end to end:
//! two `seqfeed serve` processes on two copies of a dataset, one byte of
//! one sequence flipped in one copy while it is served. `seqfeed read`
//! `--verify-crc` checks every sequence against its file's CRC32C table:
//! with a replica the run completes byte for byte (`--verify` against the
//! intact copy) and the log names the node, the file and the sequence;
//! without one the error names them. Without the check (the default) the
//! damaged byte is served silently (and only `--verify` notices).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output};

use seqfeed_loader::BlockSource;
use seqfeed_tests::{
    corpus, place, seqfeed_bin, serve_process, write_plan_and_cluster, Corpus, NodeAddr,
    ServeProcess,
};

/// Starts `seqfeed serve` named `name` on an ephemeral port over `root`.
fn serve(root: &Path, name: &str) -> ServeProcess {
    serve_process(root, name, None)
}

/// Copies the dataset at `from` (every source directory) to `to`.
fn copy_dataset(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("dataset dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        std::fs::create_dir_all(to.join(&name)).expect("mkdir");
        for f in std::fs::read_dir(entry.path()).expect("source dir") {
            let f = f.expect("file");
            std::fs::copy(f.path(), to.join(&name).join(f.file_name())).expect("copy");
        }
    }
}

/// Flips one byte at `offset` of `path`, in place (same length).
fn flip(path: &Path, offset: u64) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&[b[0] ^ 0x5a]).expect("write");
}

/// `seqfeed read` over tcp (`extra` flags added), checked against the
/// intact dataset with `--verify`.
fn read(c: &Corpus, nodes: &[NodeAddr], extra: &[&str]) -> Output {
    let (plan, cluster) = write_plan_and_cluster(c, nodes);
    Command::new(seqfeed_bin())
        .args(["--log", "info", "read", "--transport", "tcp", "--verify"])
        .arg("--dataset")
        .arg(c.root())
        .arg("--plan")
        .arg(&plan)
        .arg("--cluster")
        .arg(&cluster)
        .args(["--io-timeout-ms", "3000", "--failover-ms", "3000"])
        .args(extra)
        .output()
        .expect("seqfeed read")
}

/// The corpus, a damaged copy of it served as `node-1`, and the damaged
/// file and sequence: the last row of step 0, which `node-1` reads (the
/// second share of a step goes to the second node).
fn damaged_copy() -> (Corpus, tempfile::TempDir, String, u64) {
    let c = corpus(256, 32, 20);
    let copy = tempfile::tempdir().expect("temp dir");
    copy_dataset(c.root(), copy.path());
    let mut reads = Vec::new();
    c.source.block(0, 0, 1, &mut reads).expect("block");
    let last = *reads.last().expect("rows");
    let file = c.files()[last.file as usize].clone();
    let sf = seqfeed_format::SeqFile::open(copy.path().join(&file)).expect("open copy");
    let seq = (last.offset - sf.data_offset()) / sf.seq_bytes();
    (c, copy, file, seq)
}

#[test]
fn a_file_changed_in_place_on_one_replica_is_read_from_the_other() {
    let (c, copy, file, seq) = damaged_copy();
    let a = serve(c.root(), "node-0");
    let b = serve(copy.path(), "node-1");
    // Changed while served.
    let sf = seqfeed_format::SeqFile::open(copy.path().join(&file)).expect("open copy");
    flip(&copy.path().join(&file), sf.sequence_offset(seq) + 7);
    let placement = place(&c.files(), 2, 2);
    let nodes: Vec<NodeAddr> = [&a, &b]
        .iter()
        .zip(&placement)
        .enumerate()
        .map(|(i, (s, files))| NodeAddr {
            name: format!("node-{i}"),
            addr: s.addr.clone(),
            files: files.clone(),
        })
        .collect();

    let out = read(&c, &nodes, &["--verify-crc"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let named: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("damaged"))
        .collect();
    assert_eq!(named.len(), 1, "{err}");
    for want in ["node-1", file.as_str(), &format!("sequence {seq} of")] {
        assert!(named[0].contains(want), "{want:?} not in {}", named[0]);
    }

    // With node-1 alone: an error naming the node, the file and the sequence.
    let out = read(&c, &nodes[1..], &["--verify-crc"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "read a damaged copy without error");
    for want in [
        "node-1",
        file.as_str(),
        &format!("sequence {seq} of"),
        "CRC32C",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }

    // Without the check the damaged byte reaches the batch: only --verify
    // (a direct read of the intact copy) catches it, exit status 3.
    let out = read(&c, &nodes[1..], &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
}
