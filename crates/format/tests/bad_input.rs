//! Corrupt, truncated, mismatched and overflowing inputs: each a precise error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use seqfeed_format::*;

fn synth(dir: &Path, name: &str, dtype: Dtype, seq_len: u64, count: u64, max_file: u64) -> PathBuf {
    let out = dir.join(name);
    write_synthetic_source(&out, name, dtype, seq_len, count, 9, max_file).unwrap();
    out
}

fn flip(path: &Path, offset: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[offset] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

#[test]
fn flipped_payload_byte_names_file_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = synth(dir.path(), "web", Dtype::U16, 50, 30, 4096 + 10 * 104);
    let file = src_dir.join("part-00001.seq");
    // Sequence 7 of the second file, byte 33 inside it.
    flip(&file, 4096 + 7 * 100 + 33);
    // Opening is cheap and does not hash: still fine.
    let src = Source::open(&src_dir).unwrap();
    match src.verify(&|_| {}) {
        Err(FormatError::CrcMismatch {
            path,
            index,
            offset,
            ..
        }) => {
            assert_eq!(path, file);
            assert_eq!(index, 7);
            assert_eq!(offset, 4096 + 700);
        }
        other => panic!("{other:?}"),
    }
    assert!(src.files()[1].verify_sequence(6).is_ok());
    assert!(matches!(
        src.files()[1].verify_sequence(7),
        Err(FormatError::CrcMismatch { index: 7, .. })
    ));
    // Global sequence 17 is file 1 index 7.
    let (fi, i) = src.locate(17).unwrap();
    assert_eq!((fi, i), (1, 7));
}

#[test]
fn flipped_payload_without_crc_is_a_hash_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("n");
    let opts = PackOptions::new("n", Dtype::U32, 8).crc(false);
    pack_tokens([(0..100u32).collect::<Vec<_>>()], &opts, &out).unwrap();
    let file = out.join("part-00000.seq");
    flip(&file, 4096 + 5);
    let src = Source::open(&out).unwrap();
    assert!(
        matches!(src.verify(&|_| {}), Err(FormatError::HashMismatch { ref path, .. }) if *path == file)
    );
    assert!(matches!(
        src.files()[0].verify_sequence(0),
        Err(FormatError::NoCrcTable { .. })
    ));
}

#[test]
fn every_header_byte_flip_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = synth(dir.path(), "h", Dtype::U32, 16, 5, DEFAULT_MAX_FILE_BYTES);
    let file = src_dir.join("part-00000.seq");
    let good = std::fs::read(&file).unwrap();
    let header_len = 128 + 1;
    // Every byte of the header and its padding page, and the CRC table.
    // Every header byte, a sample of the padding (every 61st byte and the last),
    // and every byte of the CRC table.
    let padding = (header_len..4096).filter(|o| o % 61 == 0 || *o == 4095);
    for off in (0..header_len)
        .chain(padding)
        .chain(4096 + 5 * 64..good.len())
    {
        let mut b = good.clone();
        b[off] ^= 0x01;
        std::fs::write(&file, &b).unwrap();
        let res = SeqFile::open(&file).and_then(|f| f.verify(&|_| {}));
        let err = res.expect_err(&format!("flip at {off} undetected"));
        match off {
            0..=7 => assert!(matches!(err, FormatError::BadMagic { .. }), "{off}: {err}"),
            8..=11 => assert!(
                matches!(err, FormatError::UnsupportedVersion { offset: 8, .. }),
                "{off}: {err}"
            ),
            o if o < header_len => assert!(
                matches!(
                    err,
                    FormatError::HeaderChecksum { .. } | FormatError::BadHeader { .. }
                ),
                "{off}: {err}"
            ),
            o if o < 4096 => assert!(matches!(err, FormatError::BadHeader { .. }), "{off}: {err}"),
            _ => assert!(
                matches!(err, FormatError::CrcMismatch { .. }),
                "{off}: {err}"
            ),
        }
        // Errors name the file.
        assert!(err.to_string().contains("part-00000.seq"), "{err}");
    }
}

#[test]
fn truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = synth(dir.path(), "t", Dtype::U16, 100, 20, DEFAULT_MAX_FILE_BYTES);
    let file = src_dir.join("part-00000.seq");
    let good = std::fs::read(&file).unwrap();
    for cut in [0usize, 5, 100, 2000, 4096, 4096 + 1999, good.len() - 1] {
        std::fs::write(&file, &good[..cut]).unwrap();
        let err = SeqFile::open(&file).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Truncated { .. } | FormatError::BadMagic { .. }
            ),
            "cut {cut}: {err}"
        );
        if cut >= 8 {
            assert!(
                matches!(err, FormatError::Truncated { actual, .. } if actual == cut as u64),
                "cut {cut}: {err}"
            );
        }
        assert!(matches!(
            Source::open(&src_dir),
            Err(FormatError::Truncated { .. } | FormatError::BadMagic { .. })
        ));
    }
    // Extra bytes at the end are also refused.
    let mut long = good.clone();
    long.push(0);
    std::fs::write(&file, &long).unwrap();
    assert!(matches!(
        SeqFile::open(&file),
        Err(FormatError::BadHeader { offset: 56, .. })
    ));
}

#[test]
fn wrong_version_with_valid_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = synth(dir.path(), "v", Dtype::U16, 10, 3, DEFAULT_MAX_FILE_BYTES);
    let file = src_dir.join("part-00000.seq");
    let mut b = std::fs::read(&file).unwrap();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    b[96..100].copy_from_slice(&[0; 4]);
    let crc = crc32c::crc32c(&b[..129]);
    b[96..100].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&file, &b).unwrap();
    assert!(matches!(
        SeqFile::open(&file),
        Err(FormatError::UnsupportedVersion {
            found: 2,
            supported: 1,
            ..
        })
    ));
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn manifest_disagreeing_with_files() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = synth(dir.path(), "m", Dtype::U16, 10, 40, 4096 + 10 * 24);
    let original = std::fs::read_to_string(src_dir.join("manifest.json")).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "count",
            Box::new(|v| {
                v["files"][1]["count"] = 11.into();
                v["total_sequences"] = 41.into();
            }),
        ),
        (
            "payload_hash",
            Box::new(|v| v["files"][2]["payload_hash"] = "00".repeat(32).into()),
        ),
        (
            "file_len",
            Box::new(|v| v["files"][0]["file_len"] = 1.into()),
        ),
        ("seq_len", Box::new(|v| v["seq_len"] = 11.into())),
        ("dtype", Box::new(|v| v["dtype"] = "u32".into())),
    ];
    for (field, edit) in cases {
        std::fs::write(src_dir.join("manifest.json"), &original).unwrap();
        edit_manifest(&src_dir, edit);
        match Source::open(&src_dir) {
            Err(FormatError::ManifestMismatch { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // Inconsistent total and bad JSON are manifest errors.
    std::fs::write(src_dir.join("manifest.json"), &original).unwrap();
    edit_manifest(&src_dir, |v| v["total_sequences"] = 5.into());
    assert!(matches!(
        Source::open(&src_dir),
        Err(FormatError::Manifest { .. })
    ));
    std::fs::write(src_dir.join("manifest.json"), "{").unwrap();
    assert!(matches!(
        Source::open(&src_dir),
        Err(FormatError::Manifest { .. })
    ));
    // A listed file that is missing.
    std::fs::write(src_dir.join("manifest.json"), &original).unwrap();
    std::fs::remove_file(src_dir.join("part-00003.seq")).unwrap();
    assert!(matches!(
        Source::open(&src_dir),
        Err(FormatError::Io { op: "open", .. })
    ));
}

#[test]
fn files_of_one_source_disagreeing_on_dtype_or_seq_len() {
    let dir = tempfile::tempdir().unwrap();
    let a = synth(dir.path(), "s", Dtype::U16, 10, 4, DEFAULT_MAX_FILE_BYTES);
    // Same name, other dtype / seq_len, built elsewhere; graft its file in as part-00001.
    for (dtype, seq_len, field) in [(Dtype::U32, 10, "dtype"), (Dtype::U16, 12, "seq_len")] {
        let other_root = tempfile::tempdir().unwrap();
        let b = synth(
            other_root.path(),
            "s",
            dtype,
            seq_len,
            4,
            DEFAULT_MAX_FILE_BYTES,
        );
        std::fs::copy(b.join("part-00000.seq"), a.join("part-00001.seq")).unwrap();
        let good = std::fs::read_to_string(a.join("manifest.json")).unwrap();
        let other: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(b.join("manifest.json")).unwrap())
                .unwrap();
        edit_manifest(&a, |v| {
            let mut e = other["files"][0].clone();
            e["path"] = "part-00001.seq".into();
            v["files"].as_array_mut().unwrap().push(e);
            v["total_sequences"] = 8.into();
        });
        match Source::open(&a) {
            Err(FormatError::SourceMismatch { field: f, path, .. }) => {
                assert_eq!(f, field);
                assert_eq!(path, a.join("part-00001.seq"));
            }
            other => panic!("{field}: {other:?}"),
        }
        std::fs::write(a.join("manifest.json"), good).unwrap();
    }
}

#[test]
fn overflow_u32_ids_into_u16_source() {
    let dir = tempfile::tempdir().unwrap();
    // Raw u32 array with one id of 65536 at token 70_001.
    let mut toks: Vec<u32> = (0..100_000).map(|i| i % 65536).collect();
    toks[70_001] = 65_536;
    let path = dir.path().join("big.u32");
    std::fs::write(&path, bytemuck::cast_slice::<u32, u8>(&toks)).unwrap();
    let opts = PackOptions::new("o", Dtype::U16, 64);
    let out = dir.path().join("o");
    let err = pack_inputs(
        &[Input {
            path: path.clone(),
            kind: InputKind::Raw(InDtype::U32),
        }],
        &opts,
        &out,
        &|_| {},
    )
    .unwrap_err();
    match &err {
        FormatError::TokenOverflow {
            path: p,
            pos,
            value,
            dtype,
        } => {
            assert_eq!(p, &path);
            assert_eq!(
                *pos,
                TokenPos::Array {
                    token: 70_001,
                    byte: 280_004
                }
            );
            assert_eq!(*value, 65_536);
            assert_eq!(*dtype, Dtype::U16);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("big.u32") && err.to_string().contains("70001"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary leftovers"
    );
    // The same data fits a u32 source.
    pack_inputs(
        &[Input {
            path,
            kind: InputKind::Raw(InDtype::U32),
        }],
        &PackOptions::new("o", Dtype::U32, 64),
        &out,
        &|_| {},
    )
    .unwrap();

    // Negative i64 in .npy.
    let vals: Vec<i64> = vec![1, 2, 3, -4, 5];
    let npy = dir.path().join("neg.npy");
    write_npy(&npy, "<i8", bytemuck::cast_slice(&vals), 5);
    let err = pack_inputs(
        &[Input::detect(&npy, None, "x").unwrap()],
        &opts,
        dir.path().join("p"),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, FormatError::NegativeToken { pos: TokenPos::Array { token: 3, byte }, value: -4, .. } if byte == 128 + 24),
        "{err}"
    );

    // JSONL: line and element.
    let j = dir.path().join("d.jsonl");
    std::fs::write(&j, "{\"ids\":[1,2]}\n{\"ids\":[3,4,65535,65536]}\n").unwrap();
    let err = pack_inputs(
        &[Input::detect(&j, None, "ids").unwrap()],
        &opts,
        dir.path().join("q"),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::TokenOverflow {
                pos: TokenPos::Line {
                    line: 2,
                    element: 3
                },
                value: 65536,
                ..
            }
        ),
        "{err}"
    );
    std::fs::write(&j, "{\"ids\":[1,2]}\n{\"ids\":[3,\"x\"]}\n").unwrap();
    let err = pack_inputs(
        &[Input::detect(&j, None, "ids").unwrap()],
        &opts,
        dir.path().join("q"),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, FormatError::Jsonl { line: 2, .. }), "{err}");
    std::fs::write(&j, "{\"other\":[1,2]}\n").unwrap();
    let err = pack_inputs(
        &[Input::detect(&j, None, "ids").unwrap()],
        &opts,
        dir.path().join("q"),
        &|_| {},
    )
    .unwrap_err();
    assert!(matches!(err, FormatError::Jsonl { line: 1, .. }), "{err}");

    // Megatron i32 corpus: sequence 2, token 1.
    let prefix = dir.path().join("mc");
    write_megatron(&prefix, 4, 4, &[vec![1, 2], vec![3], vec![4, 70_000, 5]], 0);
    let err = pack_inputs(
        &[Input::detect(prefix.with_extension("bin"), None, "x").unwrap()],
        &opts,
        dir.path().join("r"),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::TokenOverflow {
                pos: TokenPos::Megatron {
                    sequence: 2,
                    token: 1,
                    byte: 16
                },
                ..
            }
        ),
        "{err}"
    );

    // EOS that does not fit.
    assert!(matches!(
        Packer::create(
            dir.path().join("s"),
            &PackOptions::new("s", Dtype::U16, 4).eos(70_000)
        ),
        Err(FormatError::InvalidOption(_))
    ));
}

#[test]
fn bad_megatron_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("c");
    let docs = vec![vec![1i64, 2, 3], vec![4, 5], vec![6]];
    let opts = PackOptions::new("c", Dtype::U16, 2);
    let run = |name: &str| {
        pack_inputs(
            &[Input {
                path: prefix.clone(),
                kind: InputKind::Megatron,
            }],
            &opts,
            dir.path().join(name),
            &|_| {},
        )
    };
    let idx_path = prefix.with_extension("idx");

    // Pointer of sequence 2 past the end of the .bin.
    write_megatron(&prefix, 8, 2, &docs, 0);
    let mut idx = std::fs::read(&idx_path).unwrap();
    let p2 = 34 + 4 * 3 + 8 * 2;
    idx[p2..p2 + 8].copy_from_slice(&11i64.to_le_bytes()); // bin is 12 bytes; 11 + 2 > 12
    std::fs::write(&idx_path, &idx).unwrap();
    let err = run("a").unwrap_err();
    assert!(
        matches!(err, FormatError::Megatron { offset, .. } if offset == p2 as u64),
        "{err}"
    );
    assert!(
        err.to_string().contains("c.bin") && err.to_string().contains("sequence 2"),
        "{err}"
    );

    // Truncated index arrays.
    write_megatron(&prefix, 8, 2, &docs, 0);
    let idx = std::fs::read(&idx_path).unwrap();
    std::fs::write(&idx_path, &idx[..idx.len() - 3]).unwrap();
    assert!(matches!(run("b"), Err(FormatError::Truncated { .. })));
    std::fs::write(&idx_path, &idx[..20]).unwrap();
    assert!(matches!(
        run("b"),
        Err(FormatError::Truncated {
            expected: 34,
            actual: 20,
            ..
        })
    ));

    // Wrong magic, version, dtype code.
    let mut bad = idx.clone();
    bad[0] = b'X';
    std::fs::write(&idx_path, &bad).unwrap();
    assert!(matches!(run("c"), Err(FormatError::BadMagic { .. })));
    let mut bad = idx.clone();
    bad[9] = 2;
    std::fs::write(&idx_path, &bad).unwrap();
    assert!(matches!(
        run("c"),
        Err(FormatError::UnsupportedVersion {
            offset: 9,
            found: 2,
            ..
        })
    ));
    let mut bad = idx.clone();
    bad[17] = 7;
    std::fs::write(&idx_path, &bad).unwrap();
    assert!(matches!(
        run("c"),
        Err(FormatError::Megatron { offset: 17, .. })
    ));

    // Missing .bin.
    std::fs::write(&idx_path, &idx).unwrap();
    std::fs::remove_file(prefix.with_extension("bin")).unwrap();
    assert!(matches!(run("d"), Err(FormatError::Io { .. })));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only c.idx remains: no outputs"
    );
}

#[test]
fn ragged_raw_array_and_bad_npy() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("r.bin32");
    std::fs::write(&raw, [0u8; 10]).unwrap();
    let opts = PackOptions::new("x", Dtype::U16, 2);
    let err = pack_inputs(
        &[Input {
            path: raw,
            kind: InputKind::Raw(InDtype::U32),
        }],
        &opts,
        dir.path().join("o"),
        &|_| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::RaggedArray {
                len: 10,
                size: 4,
                offset: 8,
                ..
            }
        ),
        "{err}"
    );

    let npy = dir.path().join("a.npy");
    write_npy(&npy, ">u4", &[0u8; 8], 2);
    assert!(matches!(
        pack_inputs(
            &[Input::detect(&npy, None, "").unwrap()],
            &opts,
            dir.path().join("o"),
            &|_| {}
        ),
        Err(FormatError::Npy { .. })
    ));
    write_npy(&npy, "<f4", &[0u8; 8], 2);
    assert!(matches!(
        pack_inputs(
            &[Input::detect(&npy, None, "").unwrap()],
            &opts,
            dir.path().join("o"),
            &|_| {}
        ),
        Err(FormatError::Npy { .. })
    ));
    write_npy(&npy, "<u4", &[0u8; 7], 2);
    assert!(matches!(
        pack_inputs(
            &[Input::detect(&npy, None, "").unwrap()],
            &opts,
            dir.path().join("o"),
            &|_| {}
        ),
        Err(FormatError::Truncated { .. })
    ));
}

#[test]
fn large_file_verify_finds_the_first_bad_sequence_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    // 5000 x 2 KiB = 10 MB, many 1 MiB verification runs.
    let src_dir = synth(
        dir.path(),
        "big",
        Dtype::U16,
        1024,
        5000,
        DEFAULT_MAX_FILE_BYTES,
    );
    let file = src_dir.join("part-00000.seq");
    Source::open(&src_dir).unwrap().verify(&|_| {}).unwrap();
    flip(&file, 4096 + 4999 * 2048 + 1);
    flip(&file, 4096 + 4321 * 2048 + 1000);
    let src = Source::open(&src_dir).unwrap();
    let hashed = std::sync::atomic::AtomicU64::new(0);
    let err = src.verify(&|n| {
        hashed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(
        matches!(err, Err(FormatError::CrcMismatch { index: 4321, .. })),
        "{err:?}"
    );
    // Stopped at the run holding sequence 4321: never hashed the last runs.
    assert!(hashed.into_inner() < 4400 * 2048);
}
