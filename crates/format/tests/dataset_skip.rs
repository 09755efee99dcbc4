//! A dataset folder may hold folders that are not packed sources: they are
//! skipped (and named), not a reason to refuse the dataset.
#![allow(clippy::unwrap_used)]

use seqfeed_format::{write_synthetic_source, Dataset, Dtype};

#[test]
fn folders_without_a_manifest_are_skipped_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_synthetic_source(root.join("web"), "web", Dtype::U16, 16, 50, 1, 1 << 20).unwrap();
    std::fs::create_dir(root.join("raw-corpus")).unwrap();
    std::fs::write(root.join("raw-corpus").join("a.jsonl"), "{}\n").unwrap();
    std::fs::create_dir(root.join(".tmp-pack")).unwrap();
    let ds = Dataset::open(root).unwrap();
    assert_eq!(ds.sources().len(), 1);
    assert_eq!(ds.skipped(), ["raw-corpus".to_string()]);
    // The fingerprint is the same as without the stray folder.
    std::fs::remove_dir_all(root.join("raw-corpus")).unwrap();
    assert_eq!(Dataset::open(root).unwrap().fingerprint(), ds.fingerprint());

    // Only stray folders: still "no sources", naming what was skipped.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir(empty.path().join("notes")).unwrap();
    let e = Dataset::open(empty.path()).unwrap_err().to_string();
    assert!(
        e.contains("no source subdirectories") && e.contains("notes"),
        "{e}"
    );
}
