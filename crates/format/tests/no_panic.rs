//! Randomly damaged inputs give errors, never panics (a deterministic fuzz).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;
use seqfeed_format::import::{parse_megatron_index, parse_npy_header};
use seqfeed_format::*;

fn mutate(rng: &mut Rng, good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next() as u8;
            }
        }
        1 => b.truncate(rng.below(b.len() as u64) as usize),
        2 => {
            // Damage within the first 160 bytes (the headers).
            let i = rng.below(160.min(b.len() as u64)) as usize;
            b[i] ^= 1 << rng.below(8);
        }
        _ => {
            let extra = rng.below(16) as usize;
            b.extend((0..extra).map(|_| rng.next() as u8));
        }
    }
    b
}

#[test]
fn damaged_sequence_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_synthetic_source(
        dir.path().join("f"),
        "fuzz",
        Dtype::U16,
        7,
        9,
        3,
        DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap();
    let path = src.files()[0].path().to_path_buf();
    let good = std::fs::read(&path).unwrap();
    drop(src);
    let mut rng = Rng(99);
    let mut detected = 0;
    for _ in 0..600 {
        let b = mutate(&mut rng, &good);
        std::fs::write(&path, &b).unwrap();
        let r = SeqFile::open(&path).and_then(|f| {
            f.verify(&|_| {})?;
            for i in 0..f.count() {
                f.verify_sequence(i)?;
                f.tokens_as_u32(i)?;
            }
            Ok(())
        });
        if b != good {
            // Any change in the header region, payload or CRC table is detected
            // (byte-identical mutations aside).
            assert!(r.is_err(), "undetected change");
            detected += 1;
        }
        let _ = Header::decode(Path::new("x"), &b);
    }
    assert!(detected > 500);
}

#[test]
fn damaged_megatron_and_npy_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("m");
    write_megatron(&prefix, 4, 4, &[vec![1, 2, 3], vec![4], vec![5, 6]], 1);
    let idx = std::fs::read(dir.path().join("m.idx")).unwrap();
    let npy_path = dir.path().join("a.npy");
    write_npy(&npy_path, "<u2", &[1, 0, 2, 0, 3, 0], 3);
    let npy = std::fs::read(&npy_path).unwrap();
    let mut rng = Rng(5);
    for _ in 0..3000 {
        let b = mutate(&mut rng, &idx);
        let _ = parse_megatron_index(Path::new("m.idx"), &b, Path::new("m.bin"), 30);
        let b = mutate(&mut rng, &npy);
        let _ = parse_npy_header(Path::new("a.npy"), &b);
        // Arbitrary non-ASCII text in the descr.
        let mut t = npy.clone();
        let at = 10 + 11 + rng.below(3) as usize;
        t[at] = 0xC3;
        t[at + 1] = 0xA9;
        let _ = parse_npy_header(Path::new("a.npy"), &t);
    }
}

#[test]
fn packing_damaged_inputs_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("m");
    write_megatron(&prefix, 8, 2, &[vec![1, 2, 3], vec![4], vec![5, 6]], 1);
    let idx = std::fs::read(dir.path().join("m.idx")).unwrap();
    let npy_path = dir.path().join("a.npy");
    write_npy(&npy_path, "<i8", bytemuck::cast_slice(&[1i64, 2, 3]), 3);
    let npy = std::fs::read(&npy_path).unwrap();
    let jsonl_path = dir.path().join("d.jsonl");
    let jsonl = b"{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5]}\n".to_vec();
    let mut rng = Rng(17);
    let opts = PackOptions::new("p", Dtype::U16, 2).tail(Tail::Pad(0));
    for n in 0..200 {
        std::fs::write(dir.path().join("m.idx"), mutate(&mut rng, &idx)).unwrap();
        std::fs::write(&npy_path, mutate(&mut rng, &npy)).unwrap();
        std::fs::write(&jsonl_path, mutate(&mut rng, &jsonl)).unwrap();
        for (k, input) in [
            Input {
                path: prefix.clone(),
                kind: InputKind::Megatron,
            },
            Input {
                path: npy_path.clone(),
                kind: InputKind::Npy,
            },
            Input {
                path: jsonl_path.clone(),
                kind: InputKind::Jsonl {
                    field: "input_ids".into(),
                },
            },
        ]
        .into_iter()
        .enumerate()
        {
            let out = dir.path().join(format!("o{n}-{k}"));
            if pack_inputs(&[input], &opts, &out, &|_| {}).is_ok() {
                Source::open(&out).unwrap().verify(&|_| {}).unwrap();
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
    }
    // Nothing but the three inputs and the .bin is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}
