//! Round trips for every input kind, checked against independently computed
//! expectations and a by-hand reading of the documented layout.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use seqfeed_format::*;

#[test]
fn in_memory_docs_random_shapes() {
    let mut rng = Rng(7);
    for case in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let dtype = if case % 2 == 0 {
            Dtype::U16
        } else {
            Dtype::U32
        };
        let seq_len = 1 + rng.below(37) as usize;
        let ndocs = 1 + rng.below(30) as usize;
        let docs = random_docs(&mut rng, ndocs, 50, dtype.max_id());
        let eos = (rng.below(2) == 0).then(|| rng.below(dtype.max_id() + 1) as u32);
        let pad = (rng.below(2) == 0).then(|| rng.below(100) as u32);
        let crc = rng.below(2) == 0;
        // Small split sizes so many cases span several files.
        let max_file = 4096 + 8 + rng.below(600);
        let expected = expected_sequences(&docs, seq_len, eos, pad);
        let mut opts = PackOptions::new("s", dtype, seq_len as u64)
            .max_file_bytes(max_file)
            .crc(crc);
        opts.eos = eos;
        opts.tail = pad.map_or(Tail::Drop, Tail::Pad);
        let out = dir.path().join("s");
        let res = pack_tokens(&docs, &opts, &out);
        if expected.is_empty() {
            assert!(
                matches!(res, Err(FormatError::InvalidOption(_))),
                "case {case}: {res:?}"
            );
            assert!(!out.exists());
            continue;
        }
        let (src, stats) = res.unwrap();
        assert_eq!(stats.sequences as usize, expected.len(), "case {case}");
        assert_eq!(read_source_by_hand(&out), expected, "case {case}");
        // The crate's own readers agree.
        assert_eq!(src.total_sequences() as usize, expected.len());
        for (i, e) in expected.iter().enumerate() {
            assert_eq!(&src.tokens_as_u32(i as u64).unwrap(), e);
        }
        // Split respected: no file bigger than max_file unless it holds one sequence.
        for f in src.files() {
            assert!(
                f.file_len() <= max_file || f.count() == 1,
                "case {case}: {} > {max_file}",
                f.file_len()
            );
            assert_eq!(f.has_crc(), crc);
        }
        src.verify(&|_| {}).unwrap();
        // No temporary leftovers.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("s")]);
    }
}

#[test]
fn zero_copy_accessors_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_synthetic_source(
        dir.path().join("syn"),
        "syn",
        Dtype::U32,
        100,
        50,
        42,
        4096 + 20 * 404,
    )
    .unwrap();
    assert_eq!(src.files().len(), 3); // 20 + 20 + 10
    assert_eq!(src.file_starts(), &[0, 20, 40]);
    for g in 0..50u64 {
        let (fi, i) = src.locate(g).unwrap();
        let f = &src.files()[fi];
        let toks = f.tokens_u32(i).unwrap();
        let want: Vec<u32> = (0..100)
            .map(|p| synthetic_token(42, g, p, Dtype::U32))
            .collect();
        assert_eq!(toks, &want[..]);
        // The byte offset is arithmetic.
        let off = (f.data_offset() + i * f.seq_bytes()) as usize;
        assert_eq!(
            &f.bytes()[off..off + 400],
            bytemuck::cast_slice::<u32, u8>(&want)
        );
        assert_eq!(f.mmap().as_ptr() as usize % 4096, 0);
        f.verify_sequence(i).unwrap();
    }
    assert!(matches!(
        src.locate(50),
        Err(FormatError::IndexOutOfRange {
            index: 50,
            count: 50,
            ..
        })
    ));
    assert!(matches!(
        src.files()[0].tokens_u16(0),
        Err(FormatError::DtypeAccess { .. })
    ));
    assert!(matches!(
        src.files()[2].sequence_bytes(10),
        Err(FormatError::IndexOutOfRange { .. })
    ));
}

#[test]
fn raw_arrays_all_input_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(3);
    let toks: Vec<u32> = (0..5000).map(|_| rng.below(60000) as u32).collect();
    for (dt, elem) in [
        (InDtype::U16, 2usize),
        (InDtype::U32, 4),
        (InDtype::I32, 4),
        (InDtype::I64, 8),
    ] {
        let path = dir.path().join(format!("a.{dt}"));
        let bytes: Vec<u8> = toks
            .iter()
            .flat_map(|&t| (t as i64).to_le_bytes()[..elem].to_vec())
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        // Two copies of the file: two documents, each followed by EOS 1.
        let inputs = vec![
            Input {
                path: path.clone(),
                kind: InputKind::Raw(dt)
            };
            2
        ];
        let out = dir.path().join(format!("out-{dt}"));
        let opts = PackOptions::new("raw", Dtype::U16, 128)
            .eos(1)
            .max_file_bytes(8 << 10);
        let (src, stats) = pack_inputs(&inputs, &opts, &out, &|_| {}).unwrap();
        let expected = expected_sequences(&[toks.clone(), toks.clone()], 128, Some(1), None);
        assert_eq!(read_source_by_hand(&out), expected, "{dt}");
        assert_eq!(stats.input_tokens, 10000);
        assert_eq!(stats.dropped_tokens, (10002 % 128) as u64);
        assert!(src.files().len() > 1);
    }
}

#[test]
fn npy_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let toks: Vec<u32> = (0..3001).map(|i| (i * 7919) % 100_000).collect();
    for (descr, elem) in [("<u4", 4usize), ("<i8", 8), ("<i4", 4)] {
        let path = dir.path().join(format!("x{elem}{}.npy", &descr[1..2]));
        let bytes: Vec<u8> = toks
            .iter()
            .flat_map(|&t| (t as i64).to_le_bytes()[..elem].to_vec())
            .collect();
        write_npy(&path, descr, &bytes, toks.len());
        let input = Input::detect(&path, None, "ids").unwrap();
        assert_eq!(input.kind, InputKind::Npy);
        let out = dir.path().join(format!("npy-{descr}").replace('<', ""));
        let opts = PackOptions::new("npy", Dtype::U32, 64).tail(Tail::Pad(9));
        pack_inputs(&[input], &opts, &out, &|_| {}).unwrap();
        assert_eq!(
            read_source_by_hand(&out),
            expected_sequences(std::slice::from_ref(&toks), 64, None, Some(9)),
            "{descr}"
        );
    }
    // u2 too.
    let small: Vec<u32> = (0..1000).collect();
    let path = dir.path().join("s.npy");
    write_npy(
        &path,
        "<u2",
        &small
            .iter()
            .flat_map(|&t| (t as u16).to_le_bytes())
            .collect::<Vec<_>>(),
        1000,
    );
    let out = dir.path().join("npy-u2");
    pack_inputs(
        &[Input::detect(&path, None, "x").unwrap()],
        &PackOptions::new("n", Dtype::U16, 10),
        &out,
        &|_| {},
    )
    .unwrap();
    assert_eq!(
        read_source_by_hand(&out),
        expected_sequences(&[small], 10, None, None)
    );
}

#[test]
fn jsonl_round_trip_with_custom_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(11);
    let docs = random_docs(&mut rng, 200, 40, 70_000);
    let mut text = String::new();
    for (i, d) in docs.iter().enumerate() {
        text.push_str(&serde_json::json!({"id": i, "toks": d, "text": "ignored"}).to_string());
        text.push('\n');
        if i % 17 == 0 {
            text.push('\n'); // blank lines are skipped
        }
    }
    let path = dir.path().join("d.jsonl");
    std::fs::write(&path, text).unwrap();
    let out = dir.path().join("j");
    let opts = PackOptions::new("j", Dtype::U32, 33).eos(0);
    let (_, stats) = pack_inputs(
        &[Input::detect(&path, None, "toks").unwrap()],
        &opts,
        &out,
        &|_| {},
    )
    .unwrap();
    assert_eq!(stats.documents, 200);
    assert_eq!(
        read_source_by_hand(&out),
        expected_sequences(&docs, 33, Some(0), None)
    );
}

#[test]
fn megatron_fixture_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(5);
    let docs: Vec<Vec<u32>> = random_docs(&mut rng, 50, 300, 30_000);
    let docs64: Vec<Vec<i64>> = docs
        .iter()
        .map(|d| d.iter().map(|&t| t as i64).collect())
        .collect();
    // dtype 8 = u16, 4 = i32, 5 = i64, 3 = i16; junk gaps make pointers non-contiguous.
    for (code, elem, gap) in [(8u8, 2usize, 0usize), (4, 4, 3), (5, 8, 1), (3, 2, 2)] {
        let prefix = dir.path().join(format!("corpus{code}"));
        write_megatron(&prefix, code, elem, &docs64, gap);
        let input = Input::detect(prefix.with_extension("idx"), None, "x").unwrap();
        assert_eq!(input.kind, InputKind::Megatron);
        let out = dir.path().join(format!("m{code}"));
        let opts = PackOptions::new("mega", Dtype::U16, 256)
            .eos(2)
            .tail(Tail::Pad(3));
        let (src, stats) = pack_inputs(&[input], &opts, &out, &|_| {}).unwrap();
        assert_eq!(stats.documents, 50);
        assert_eq!(
            read_source_by_hand(&out),
            expected_sequences(&docs, 256, Some(2), Some(3)),
            "code {code}"
        );
        assert_eq!(src.name(), "mega");
    }
}

#[test]
fn dataset_fingerprint_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    std::fs::create_dir(&root).unwrap();
    write_synthetic_source(
        root.join("web"),
        "web",
        Dtype::U16,
        64,
        100,
        1,
        4096 + 40 * 132,
    )
    .unwrap();
    write_synthetic_source(
        root.join("code"),
        "code",
        Dtype::U32,
        32,
        10,
        2,
        DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap();
    std::fs::create_dir(root.join(".scratch.tmp-1")).unwrap(); // hidden: ignored
    let ds = Dataset::open(&root).unwrap();
    assert_eq!(
        ds.sources().iter().map(|s| s.name()).collect::<Vec<_>>(),
        ["code", "web"]
    );
    assert_eq!(ds.file_path(1, 2), "web/part-00002.seq");
    assert_eq!(ds.file_path(0, 0), "code/part-00000.seq");
    assert_eq!(ds.total_sequences(), 110);
    assert_eq!(ds.source("web").unwrap().files().len(), 3);
    let fp = ds.fingerprint().to_string();
    assert_eq!(fp.len(), 64);
    assert_eq!(Dataset::open(&root).unwrap().fingerprint(), fp, "stable");

    // Same shape, different content: different fingerprint.
    let root2 = dir.path().join("ds2");
    std::fs::create_dir(&root2).unwrap();
    write_synthetic_source(
        root2.join("web"),
        "web",
        Dtype::U16,
        64,
        100,
        99,
        4096 + 40 * 132,
    )
    .unwrap();
    write_synthetic_source(
        root2.join("code"),
        "code",
        Dtype::U32,
        32,
        10,
        2,
        DEFAULT_MAX_FILE_BYTES,
    )
    .unwrap();
    assert_ne!(Dataset::open(&root2).unwrap().fingerprint(), fp);

    // A source in a directory of another name is refused.
    std::fs::rename(root2.join("web"), root2.join("web2")).unwrap();
    assert!(matches!(
        Dataset::open(&root2),
        Err(FormatError::Dataset { .. })
    ));
    // A source directory is not a dataset.
    assert!(matches!(
        Dataset::open(root.join("web")),
        Err(FormatError::Dataset { .. })
    ));
}

#[test]
fn writer_leaves_nothing_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = SourceWriter::create(
            dir.path().join("x"),
            "x",
            Dtype::U16,
            4,
            SourceOptions::default(),
        )
        .unwrap();
        w.push_sequences(&[1u8; 16]).unwrap();
        // dropped: interrupted
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    {
        let mut p =
            Packer::create(dir.path().join("y"), &PackOptions::new("y", Dtype::U16, 4)).unwrap();
        p.push_document(&[1, 2, 3, 4, 5]).unwrap();
        assert!(p.push_document(&[70_000]).is_err());
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // An existing output is never overwritten.
    std::fs::create_dir(dir.path().join("z")).unwrap();
    assert!(matches!(
        pack_tokens(
            [vec![1u32; 8]],
            &PackOptions::new("z", Dtype::U16, 4),
            dir.path().join("z")
        ),
        Err(FormatError::OutputExists { .. })
    ));
}

#[test]
fn bin_extension_is_megatron_only_next_to_an_idx() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("tokens.v2.bin");
    std::fs::write(&bin, [0u8; 8]).unwrap();
    let i = Input::detect(&bin, Some(InDtype::U32), "x").unwrap();
    assert_eq!(i.kind, InputKind::Raw(InDtype::U32));
    assert!(Input::detect(&bin, None, "x").is_err());
    write_megatron(
        &dir.path().join("tokens.v2"),
        8,
        2,
        &[vec![1, 2], vec![3]],
        5,
    );
    let i = Input::detect(&bin, Some(InDtype::U32), "x").unwrap();
    assert_eq!(i.kind, InputKind::Megatron);
    assert_eq!(i.path, dir.path().join("tokens.v2"));
    // The index view reads the documented fields.
    let idx = std::fs::read(dir.path().join("tokens.v2.idx")).unwrap();
    let bin_len = std::fs::metadata(&bin).unwrap().len();
    let view = import::parse_megatron_index(&dir.path().join("tokens.v2.idx"), &idx, &bin, bin_len)
        .unwrap();
    assert_eq!(
        (view.dtype, view.sequences, view.doc_entries),
        (InDtype::U16, 2, 3)
    );
    assert_eq!(
        (
            view.length(0),
            view.pointer(0),
            view.length(1),
            view.pointer(1)
        ),
        (2, 5, 1, 14)
    );
    assert_eq!(view.doc_index(2), 2);
}
