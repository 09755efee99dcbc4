//! Text inputs tokenized with a Hugging Face `tokenizer.json` while packing,
//! and zstd-compressed JSON Lines.
//!
//! The tokenizer is built here: a byte-level BPE (GPT-2 style) trained with
//! the `tokenizers` crate on `tests/data/pydoc_topics.txt` (real prose, see
//! `tests/data/README.md`) and saved as `tokenizer.json`, so nothing is
//! downloaded. The ids are compared with Python's `tokenizers` in
//! `crates/python/tests/test_pack_text.py`; here the packed stream is checked
//! against the library's own `encode(text, add_special_tokens=False)`, and
//! decoded back to the documents.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use seqfeed_format::*;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

fn documents() -> Vec<String> {
    let text = include_str!("data/pydoc_topics.txt");
    let mut docs: Vec<String> = text
        .strip_suffix('\n')
        .unwrap()
        .split("\n\u{c}\n")
        .map(str::to_string)
        .collect();
    docs.extend(
        [
            // A special added token inside the text is recognised, as the library does.
            "Padding <pad> is a special token here.",
            "",
            "naïve café — 日本語のテキスト 🚀 Ελληνικά",
            "   leading spaces\tand tabs\r\nand CRLF\n\n\n",
        ]
        .map(str::to_string),
    );
    docs
}

/// Trains a byte-level BPE on the documents, with `specials` as special
/// added tokens (ids 0, 1, ...), and saves it as `<dir>/<name>/tokenizer.json`.
fn build_tokenizer(dir: &Path, name: &str, specials: &[&str]) -> PathBuf {
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(1200)
        .show_progress(false)
        .special_tokens(
            specials
                .iter()
                .map(|s| AddedToken::from(s.to_string(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.train(&mut trainer, documents().into_iter()).unwrap();
    let path = dir.join(name).join("tokenizer.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    tok.save(&path, false).unwrap();
    path
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        out.push_str(&serde_json::json!({"id": i, "text": d}).to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn stream(src: &Source) -> Vec<u32> {
    (0..src.total_sequences())
        .flat_map(|i| src.tokens_as_u32(i).unwrap())
        .collect()
}

#[test]
fn tokenizer_json_round_trip_and_library_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_tokenizer(dir.path(), "pybpe", &["<|endoftext|>", "<pad>"]);
    let docs = documents();
    let input = dir.path().join("corpus.jsonl");
    write_jsonl(&input, &docs);

    let tok = Tokenizer::hugging_face(&path).unwrap();
    assert_eq!(tok.end_of_text_token(), Some("<|endoftext|>"));
    let eos = tok.default_eos().unwrap();
    assert_eq!(eos, 0);
    assert_eq!(tok.resolve_token("<|endoftext|>").unwrap(), 0);
    assert_eq!(tok.resolve_token("<pad>").unwrap(), 1);
    assert_eq!(tok.resolve_token("1").unwrap(), 1);
    assert_eq!(tok.special_ids(), &[0, 1]);
    let info = tok.info();
    assert_eq!(info.name, "hf:pybpe");
    assert_eq!(info.n_vocab, 1200);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(info.vocab_hash, blake3::hash(&bytes).to_hex().to_string());

    let spec = TokenizerSpec::HuggingFace(path.clone());
    let opts = PackOptions::new("web", Dtype::U16, 64)
        .eos(eos)
        .tail(Tail::Pad(eos));
    let (src, stats) = pack_inputs(
        &[Input::text(&input, TextOptions::new(spec.clone()))],
        &opts,
        dir.path().join("web"),
        &|_| {},
    )
    .unwrap();
    assert_eq!(src.manifest().tokenizer.as_ref(), Some(&info));
    assert_eq!(stats.documents, docs.len() as u64);

    // The ids are the library's `encode(text, add_special_tokens=False)`, document by document.
    let reference = tokenizers::Tokenizer::from_file(&path).unwrap();
    let mut want = Vec::new();
    for d in &docs {
        want.extend(reference.encode(d.as_str(), false).unwrap().get_ids());
        want.push(eos);
    }
    let got = stream(&src);
    assert_eq!(&got[..want.len()], &want[..]);
    assert!(got[want.len()..].iter().all(|&t| t == eos));
    // The special <pad> inside the text is its id, not text.
    let pad_doc = tok.encode(&docs[docs.len() - 4]).unwrap();
    assert!(pad_doc.contains(&1), "{pad_doc:?}");

    // Round trip: split at EOS, decode each part, get the documents back.
    let parts: Vec<&[u32]> = got[..want.len() - 1].split(|&t| t == eos).collect();
    assert_eq!(parts.len(), docs.len());
    for (i, (p, d)) in parts.iter().zip(&docs).enumerate() {
        assert_eq!(&tok.decode(p).unwrap(), d, "document {i}");
    }

    // BOS by token text; the same output whatever the input's compression.
    let zst = dir.path().join("corpus.jsonl.zst");
    std::fs::write(
        &zst,
        ruzstd::encoding::compress_to_vec(
            std::fs::read(&input).unwrap().as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        ),
    )
    .unwrap();
    assert!(Input::is_jsonl_name(&zst));
    let bos = tok.resolve_token("<pad>").unwrap();
    let with_bos = |i: &Path, out: &str| {
        pack_inputs(
            &[Input::text(i, TextOptions::new(spec.clone()).bos(bos))],
            &opts,
            dir.path().join(out),
            &|_| {},
        )
        .unwrap()
        .0
    };
    let plain = with_bos(&input, "bos_plain");
    let from_zst = with_bos(&zst, "bos_zst");
    assert_eq!(plain.fingerprint(), from_zst.fingerprint());
    assert_eq!(stream(&plain)[..3], [bos, want[0], want[1]]);
}

#[test]
fn truncation_and_padding_in_the_file_are_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_tokenizer(dir.path(), "t", &["</s>"]);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["truncation"] =
        serde_json::json!({"max_length": 8, "strategy": "LongestFirst", "stride": 0});
    json["padding"] = serde_json::json!({"strategy": {"Fixed": 16}, "direction": "Right",
        "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "</s>"});
    std::fs::write(&path, json.to_string()).unwrap();
    let tok = Tokenizer::hugging_face(&path).unwrap();
    assert_eq!(tok.end_of_text_token(), Some("</s>"));
    let doc = &documents().into_iter().max_by_key(String::len).unwrap();
    let ids = tok.encode(doc).unwrap();
    assert!(ids.len() > 16, "{}", ids.len());
    assert!(!ids.contains(&0));
    assert_eq!(&tok.decode(&ids).unwrap(), doc);
}

#[test]
fn eos_must_be_unambiguous_or_given() {
    let dir = tempfile::tempdir().unwrap();
    let none = build_tokenizer(dir.path(), "none", &["<pad>", "<unk>"]);
    let tok = Tokenizer::hugging_face(&none).unwrap();
    assert_eq!(tok.end_of_text(), None);
    let msg = tok.default_eos().unwrap_err().to_string();
    assert!(msg.contains("no end-of-text token"), "{msg}");
    assert!(msg.contains("<pad> (0), <unk> (1)"), "{msg}");
    assert!(msg.contains("--eos") && msg.contains("--no-eos"), "{msg}");

    let two = build_tokenizer(dir.path(), "two", &["</s>", "<|endoftext|>"]);
    let tok = Tokenizer::hugging_face(&two).unwrap();
    let msg = tok.default_eos().unwrap_err().to_string();
    assert!(
        msg.contains("several end-of-text candidates") && msg.contains("</s> (0)"),
        "{msg}"
    );
    // Either may be chosen explicitly; unknown tokens and ids are refused, naming them.
    assert_eq!(tok.resolve_token("<|endoftext|>").unwrap(), 1);
    let msg = tok.resolve_token("<eos>").unwrap_err().to_string();
    assert!(
        msg.contains("'<eos>' is not a token of this vocabulary"),
        "{msg}"
    );
    let msg = tok.resolve_token("5000").unwrap_err().to_string();
    assert!(
        msg.contains("token id 5000 is not in the vocabulary"),
        "{msg}"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"model\": 3}").unwrap();
    let msg = Tokenizer::hugging_face(&bad).unwrap_err().to_string();
    assert!(msg.contains("bad.json: not a tokenizer.json"), "{msg}");
}

#[test]
fn id_too_big_and_bad_lines_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = build_tokenizer(dir.path(), "big", &["<|endoftext|>"]);
    // Move the byte-level token for "!" to id 70000 (above u16).
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["model"]["vocab"]["!"] = serde_json::json!(70_000);
    std::fs::write(&path, json.to_string()).unwrap();
    let spec = TokenizerSpec::HuggingFace(path);
    let input = dir.path().join("in.jsonl");
    let pack = |lines: &str| {
        std::fs::write(&input, lines).unwrap();
        let out = dir.path().join("s");
        let err = pack_inputs(
            &[Input::text(&input, TextOptions::new(spec.clone()))],
            &PackOptions::new("s", Dtype::U16, 4).eos(0),
            &out,
            &|_| {},
        )
        .unwrap_err();
        assert!(!out.exists());
        err
    };
    let err = pack("{\"text\": \"fine\"}\n\n{\"text\": \"ab!\"}\n");
    match &err {
        FormatError::TokenOverflow {
            pos:
                TokenPos::Text {
                    line: 3,
                    document: 1,
                    ..
                },
            value: 70_000,
            dtype: Dtype::U16,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("token id 70000 at line 3 (document 1"),
        "{err}"
    );
    let err = pack("{\"text\": \"a\"}\n{\"body\": \"b\"}\n");
    assert!(
        err.to_string()
            .contains("in.jsonl: line 2: no field 'text'"),
        "{err}"
    );
    let err = pack("{\"text\": \"a\"}\n{\"text\": \"b\n");
    assert!(
        err.to_string().contains("in.jsonl: line 2: malformed JSON"),
        "{err}"
    );
}

#[test]
fn zstd_inputs_with_several_frames_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let opts = PackOptions::new("s", Dtype::U32, 4).eos(100_257);
    let pack = |path: &Path, out: &str| {
        pack_inputs(
            &[Input::text(path, TextOptions::new(Encoding::Cl100kBase))],
            &opts,
            dir.path().join(out),
            &|_| {},
        )
    };
    // Two frames written by the zstd tool (with checksums), see tests/data/README.md.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/two_frames.jsonl.zst");
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(
        &plain,
        "{\"text\": \"first frame, line one\"}\n{\"text\": \"first frame, line two\"}\n\
         {\"text\": \"second frame: naïve café 日本語\"}\n",
    )
    .unwrap();
    let (a, stats) = pack(&fixture, "a").unwrap();
    let (b, _) = pack(&plain, "b").unwrap();
    assert_eq!(stats.documents, 3);
    assert_eq!(stream(&a), stream(&b));

    // A skippable frame between two frames is skipped.
    let bytes = std::fs::read(&fixture).unwrap();
    let f1 = ruzstd::encoding::compress_to_vec(
        &b"{\"text\": \"one\"}\n"[..],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9];
    let mut joined = f1.clone();
    joined.append(&mut skippable);
    joined.extend(&bytes);
    let j = dir.path().join("joined.jsonl.zst");
    std::fs::write(&j, &joined).unwrap();
    assert_eq!(pack(&j, "j").unwrap().1.documents, 4);

    // Corrupt content: the checksum (or the decoder) refuses it, naming file and line.
    let mut bad = bytes.clone();
    let mid = f1.len().min(bad.len() / 3);
    bad[mid + 10] ^= 0x55;
    let c = dir.path().join("corrupt.jsonl.zst");
    std::fs::write(&c, &bad).unwrap();
    let err = pack(&c, "c").unwrap_err().to_string();
    assert!(err.contains("corrupt.jsonl.zst"), "{err}");
    assert!(!dir.path().join("c").exists());

    // Truncated: an error, never a partial output.
    let t = dir.path().join("trunc.jsonl.zst");
    std::fs::write(&t, &bytes[..bytes.len() - 7]).unwrap();
    let err = pack(&t, "t").unwrap_err().to_string();
    assert!(
        err.contains("trunc.jsonl.zst") && err.contains("zstd frame 1"),
        "{err}"
    );
    assert!(!dir.path().join("t").exists());
}
