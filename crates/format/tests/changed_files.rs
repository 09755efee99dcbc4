//! `verify` on a file that changes under it: truncated after it was opened
//! (it used to read through the map and die of SIGBUS), or replaced by a
//! repack. Both are errors naming the file; nothing faults.
#![allow(clippy::unwrap_used)]

use seqfeed_format::{write_synthetic_source, Dtype, FormatError, SeqFile};

fn one_file(dir: &std::path::Path) -> std::path::PathBuf {
    let src =
        write_synthetic_source(dir.join("web"), "web", Dtype::U32, 1024, 600, 1, 64 << 20).unwrap();
    assert_eq!(src.files().len(), 1);
    src.files()[0].path().to_owned()
}

#[test]
fn verify_of_a_file_truncated_after_open_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_file(dir.path());
    let f = SeqFile::open(&path).unwrap();
    f.verify(&|_| {}).unwrap();
    let full = std::fs::metadata(&path).unwrap().len();
    // Cut the payload in half while the file is mapped.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full / 2)
        .unwrap();
    let e = f.verify(&|_| {}).unwrap_err();
    assert!(matches!(e, FormatError::Truncated { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    assert!(msg.contains("shrank"), "{msg}");
    assert!(
        msg.contains(&full.to_string()) && msg.contains(&(full / 2).to_string()),
        "{msg}"
    );
}

#[test]
fn verify_of_a_replaced_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = one_file(dir.path());
    let f = SeqFile::open(&path).unwrap();
    // A repack writes a new file and renames it over the old name.
    let tmp = dir.path().join("new.seq");
    std::fs::copy(&path, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let e = f.verify(&|_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("replaced since it was opened") && msg.contains(path.to_str().unwrap()),
        "{msg}"
    );
    // Opened again, the new file verifies.
    SeqFile::open(&path).unwrap().verify(&|_| {}).unwrap();
}

#[test]
fn verify_still_finds_the_first_bad_sequence() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = one_file(dir.path());
    let f = SeqFile::open(&path).unwrap();
    // Flip a byte of sequence 417 in place (same length, same inode).
    let off = f.sequence_offset(417) + 5;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, off).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], off).unwrap();
    match f.verify(&|_| {}).unwrap_err() {
        FormatError::CrcMismatch { index, offset, .. } => {
            assert_eq!(index, 417);
            assert_eq!(offset, f.sequence_offset(417));
        }
        e => panic!("{e}"),
    }
}
