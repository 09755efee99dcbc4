//! Text inputs tokenized with tiktoken while packing: round trips on real
//! prose, byte-for-byte agreement with OpenAI's Python tiktoken, and precise
//! errors for bad records and ids that do not fit the dtype.
//!
//! The prose is `tests/data/pydoc_topics.txt`: paragraphs of Python's own
//! documentation (the `pydoc_data.topics` module), one document per paragraph,
//! documents separated by a form-feed line.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use seqfeed_format::*;

/// The real-prose documents, plus hand-made edge cases.
fn documents() -> Vec<String> {
    let text = include_str!("data/pydoc_topics.txt");
    let mut docs: Vec<String> = text
        .strip_suffix('\n')
        .unwrap()
        .split("\n\u{c}\n")
        .map(str::to_string)
        .collect();
    assert!(docs.len() > 250, "{}", docs.len());
    docs.extend(
        [
            // Special-token text is ordinary text.
            "Special text <|endoftext|> and <|fim_prefix|> stays text.",
            "",
            "naïve café — 日本語のテキスト 🚀 Ελληνικά",
            "   leading spaces\tand tabs\r\nand CRLF\n\n\n",
            "1234567890 3.14159 0xdeadbeef",
        ]
        .map(str::to_string),
    );
    docs
}

/// Writes `docs` as JSON Lines with the text in `field`, other fields around
/// it and a blank line in the middle (blank lines are not documents).
fn write_jsonl(path: &Path, docs: &[String], field: &str) {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        let mut rec = serde_json::Map::new();
        rec.insert("id".into(), serde_json::json!(i));
        rec.insert(field.into(), serde_json::json!(d));
        rec.insert("meta".into(), serde_json::json!({"source": "pydoc"}));
        out.push_str(&serde_json::Value::Object(rec).to_string());
        out.push('\n');
        if i == 3 {
            out.push_str("   \n");
        }
    }
    std::fs::write(path, out).unwrap();
}

fn gzip(src: &Path, dst: &Path) {
    let mut enc =
        flate2::write::GzEncoder::new(std::fs::File::create(dst).unwrap(), Default::default());
    enc.write_all(&std::fs::read(src).unwrap()).unwrap();
    enc.finish().unwrap();
}

/// Every token of the source, in order.
fn stream(src: &Source) -> Vec<u32> {
    (0..src.total_sequences())
        .flat_map(|i| src.tokens_as_u32(i).unwrap())
        .collect()
}

/// The payload bytes of every file, in order.
fn payload(src: &Source) -> Vec<u8> {
    (0..src.total_sequences())
        .flat_map(|i| src.sequence_bytes(i).unwrap().to_vec())
        .collect()
}

/// The directory holds nothing (no output, no temporary directory).
fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "in.jsonl")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn text_round_trip_decodes_to_the_documents() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let input = dir.path().join("corpus.jsonl");
    write_jsonl(&input, &docs, "text");
    let tok = Tokenizer::tiktoken(Encoding::Cl100kBase).unwrap();
    let eos = tok.end_of_text().unwrap();
    assert_eq!(eos, 100_257);
    // Small files so the source spans several; pad with EOS to keep every token.
    let opts = PackOptions::new("web", Dtype::U32, 1025)
        .eos(eos)
        .tail(Tail::Pad(eos))
        .max_file_bytes(4096 + 3 * 1025 * 4 + 64);
    let out = dir.path().join("web");
    let (src, stats) = pack_inputs(
        &[Input::text(&input, TextOptions::new(Encoding::Cl100kBase))],
        &opts,
        &out,
        &|_| {},
    )
    .unwrap();
    assert_eq!(stats.documents, docs.len() as u64);
    assert_eq!(stats.eos_tokens, docs.len() as u64);
    assert!(src.files().len() > 2, "{}", src.files().len());

    // Split the stream at EOS: the documents, in order, then padding only.
    let toks = stream(&src);
    let parts: Vec<&[u32]> = toks.split(|&t| t == eos).collect();
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(&tok.decode(parts[i]).unwrap(), d, "document {i}");
    }
    assert!(parts[docs.len()..].iter().all(|p| p.is_empty()));
    assert_eq!(
        stats.input_tokens,
        toks.len() as u64 - stats.eos_tokens - stats.pad_tokens
    );
    // The literal "<|endoftext|>" was encoded as text, not as the special id.
    let special_doc = &docs[docs.len() - 5];
    assert!(special_doc.contains("<|endoftext|>"));
    assert!(tok.encode(special_doc).unwrap().len() > 10);

    // The manifest records the tokenizer, on disk too.
    let info = tok.info();
    assert_eq!(info.name, "tiktoken:cl100k_base");
    assert_eq!(info.n_vocab, 100_277);
    assert_eq!(src.manifest().tokenizer.as_ref(), Some(&info));
    let json = std::fs::read_to_string(out.join(MANIFEST_NAME)).unwrap();
    assert!(json.contains("\"tokenizer\""), "{json}");
    assert!(json.contains(&info.vocab_hash));
    assert_eq!(
        Source::open(&out).unwrap().manifest().tokenizer.as_ref(),
        Some(&info)
    );
    src.verify(&|_| {}).unwrap();

    // gzip input packs to the same bytes.
    let gz = dir.path().join("corpus.jsonl.gz");
    gzip(&input, &gz);
    let (src_gz, _) = pack_inputs(
        &[Input::text(&gz, TextOptions::new(Encoding::Cl100kBase))],
        &opts,
        dir.path().join("gz"),
        &|_| {},
    )
    .unwrap();
    assert_eq!(payload(&src_gz), payload(&src));
}

#[test]
fn text_bos_field_and_other_encodings() {
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<String> = documents().into_iter().take(40).collect();
    let input = dir.path().join("c.jsonl");
    write_jsonl(&input, &docs, "content");
    for enc in Encoding::ALL {
        let tok = Tokenizer::tiktoken(enc).unwrap();
        let (bos, eos) = (7u32, tok.end_of_text().unwrap());
        let opts = PackOptions::new("s", Dtype::U32, 64).eos(eos);
        let text = TextOptions::new(enc).field("content").bos(bos);
        let (src, stats) = pack_inputs(
            &[Input::text(&input, text)],
            &opts,
            dir.path().join(enc.name()),
            &|_| {},
        )
        .unwrap();
        // [BOS] ids [EOS] per document, cut into 64-token sequences, tail dropped.
        let docs_ids: Vec<Vec<u32>> = docs
            .iter()
            .map(|d| {
                let mut v = vec![bos];
                v.extend(tok.encode(d).unwrap());
                v
            })
            .collect();
        let expected = expected_sequences(&docs_ids, 64, Some(eos), None);
        assert_eq!(read_source_by_hand(&dir.path().join(enc.name())), expected);
        assert_eq!(stats.documents, docs.len() as u64);
        let info = src.manifest().tokenizer.clone().unwrap();
        assert_eq!(info.name, format!("tiktoken:{enc}"));
        assert_eq!(info.n_vocab, u64::from(enc.n_vocab()));
    }
}

/// The tiktoken-rs version in Cargo.lock and its sources in the cargo registry.
fn tiktoken_rs_assets() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).map_err(|e| e.to_string())?;
    let block = lock
        .split("[[package]]")
        .find(|b| b.contains("name = \"tiktoken-rs\""))
        .ok_or("tiktoken-rs is not in Cargo.lock")?;
    let version = block
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .ok_or("no version")?
        .trim_matches('"');
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let src = home.join("registry/src");
    for reg in std::fs::read_dir(&src).map_err(|e| format!("{}: {e}", src.display()))? {
        let assets = reg
            .map_err(|e| e.to_string())?
            .path()
            .join(format!("tiktoken-rs-{version}/assets"));
        if assets.is_dir() {
            return Ok(assets);
        }
    }
    Err(format!(
        "tiktoken-rs {version} not found under {}",
        src.display()
    ))
}

#[test]
fn recorded_vocab_hash_is_the_blake3_of_the_embedded_rank_file() {
    let assets = match tiktoken_rs_assets() {
        Ok(a) => a,
        Err(e) => {
            println!("SKIP recorded_vocab_hash_is_the_blake3_of_the_embedded_rank_file: {e}");
            return;
        }
    };
    for enc in Encoding::ALL {
        let file = std::fs::read(assets.join(format!("{enc}.tiktoken"))).unwrap();
        let tok = Tokenizer::tiktoken(enc).unwrap();
        assert!(
            tok.rank_table().unwrap() == file,
            "{enc}: rank table differs from the file"
        );
        assert_eq!(
            tok.info().vocab_hash,
            blake3::hash(&file).to_hex().to_string(),
            "{enc}"
        );
    }
}

#[test]
fn text_matches_python_tiktoken_byte_for_byte() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiktoken_reference.py");
    let probe = Command::new("python3")
        .args([
            "-c",
            "import tiktoken, tiktoken.load, tiktoken_ext.openai_public",
        ])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        println!(
            "SKIP text_matches_python_tiktoken_byte_for_byte: python3 with tiktoken is not importable (pip install tiktoken): {}",
            probe.map_or_else(|e| e.to_string(), |o| String::from_utf8_lossy(&o.stderr).into_owned())
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let input = dir.path().join("corpus.jsonl");
    write_jsonl(&input, &docs, "text");
    for enc in Encoding::ALL {
        let reference = dir.path().join(format!("{enc}.json"));
        let o = Command::new("python3")
            .arg(&script)
            .arg(enc.name())
            .arg(&input)
            .arg(&reference)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        if o.status.code() == Some(3) {
            println!("SKIP text_matches_python_tiktoken_byte_for_byte: {stderr}");
            return;
        }
        assert!(o.status.success(), "{stderr}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
        let py_docs: Vec<Vec<u32>> = serde_json::from_value(r["docs"].clone()).unwrap();
        assert_eq!(py_docs.len(), docs.len());
        let tok = Tokenizer::tiktoken(enc).unwrap();
        assert_eq!(r["eot_token"], tok.end_of_text().unwrap());
        assert_eq!(r["n_vocab"], tok.n_vocab());

        // Pack with seqfeed and compare the payload with the Python ids packed
        // by the documented rule, byte for byte.
        let eos = tok.end_of_text().unwrap();
        let opts = PackOptions::new("s", Dtype::U32, 1025)
            .eos(eos)
            .tail(Tail::Pad(eos));
        let (src, _) = pack_inputs(
            &[Input::text(&input, TextOptions::new(enc))],
            &opts,
            dir.path().join(enc.name()),
            &|_| {},
        )
        .unwrap();
        let expected: Vec<u8> = expected_sequences(&py_docs, 1025, Some(eos), Some(eos))
            .concat()
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        let got = payload(&src);
        if got != expected {
            // Name the first document that differs.
            for (i, (d, want)) in docs.iter().zip(&py_docs).enumerate() {
                assert_eq!(&tok.encode(d).unwrap(), want, "{enc}: document {i}");
            }
            panic!("{enc}: payload differs");
        }
        println!(
            "{enc}: {} documents, {} bytes identical to Python tiktoken",
            docs.len(),
            got.len()
        );
    }
}

fn pack_text(dir: &Path, lines: &str, dtype: Dtype, eos: u32) -> FormatError {
    let input = dir.join("in.jsonl");
    std::fs::write(&input, lines).unwrap();
    let err = pack_inputs(
        &[Input::text(&input, TextOptions::new(Encoding::Cl100kBase))],
        &PackOptions::new("s", dtype, 4).eos(eos),
        dir.join("s"),
        &|_| {},
    )
    .unwrap_err();
    assert_empty(dir);
    err
}

#[test]
fn malformed_json_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = pack_text(
        dir.path(),
        "{\"text\": \"fine\"}\n\n{\"text\": \"also fine\"}\n{\"text\": \"broken\n",
        Dtype::U32,
        0,
    );
    let msg = err.to_string();
    assert!(
        matches!(&err, FormatError::Jsonl { path, line: 4, .. } if path.ends_with("in.jsonl")),
        "{err:?}"
    );
    assert!(msg.contains("in.jsonl: line 4: malformed JSON"), "{msg}");
}

#[test]
fn missing_or_non_string_text_field_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = pack_text(
        dir.path(),
        "{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
        Dtype::U32,
        0,
    );
    assert!(matches!(err, FormatError::Jsonl { line: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("line 2: no field 'text'"), "{err}");

    let err = pack_text(dir.path(), "{\"text\": [1, 2]}\n", Dtype::U32, 0);
    assert!(
        err.to_string()
            .contains("line 1: field 'text' is an array, not a string"),
        "{err}"
    );
    let err = pack_text(dir.path(), "\n\"just a string\"\n", Dtype::U32, 0);
    assert!(
        err.to_string()
            .contains("line 2: the record is not a JSON object"),
        "{err}"
    );
}

#[test]
fn id_too_big_for_u16_names_document_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::tiktoken(Encoding::Cl100kBase).unwrap();
    // Common words have small ids; " Kubernetes" is 67474 in cl100k.
    let big = [
        "hello world",
        "The quick brown fox",
        "We deploy on Kubernetes",
    ];
    let ids: Vec<Vec<u32>> = big.iter().map(|d| tok.encode(d).unwrap()).collect();
    assert!(
        ids[0].iter().chain(&ids[1]).all(|&t| t <= 65_535),
        "{ids:?}"
    );
    let (token, &value) = ids[2]
        .iter()
        .enumerate()
        .find(|(_, &t)| t > 65_535)
        .expect("a cl100k id above u16");
    let lines = format!(
        "{{\"text\": \"{}\"}}\n\n{{\"text\": \"{}\"}}\n{{\"text\": \"{}\"}}\n",
        big[0], big[1], big[2]
    );
    let err = pack_text(dir.path(), &lines, Dtype::U16, 0);
    match &err {
        FormatError::TokenOverflow {
            path,
            pos,
            value: v,
            dtype: Dtype::U16,
        } => {
            assert!(path.ends_with("in.jsonl"));
            assert_eq!(
                *pos,
                TokenPos::Text {
                    line: 4,
                    document: 2,
                    token: token as u64
                }
            );
            assert_eq!(*v, u64::from(value));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("token id {value} at line 4 (document 2")),
        "{msg}"
    );
    assert!(msg.contains("does not fit the output dtype u16"), "{msg}");
}

#[test]
fn text_inputs_need_one_tokenizer_and_no_token_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    std::fs::write(&a, "{\"text\": \"a b c d e f g\"}\n").unwrap();
    let opts = PackOptions::new("s", Dtype::U32, 2);
    let out = dir.path().join("s");
    let mixed = [
        Input::text(&a, TextOptions::new(Encoding::Cl100kBase)),
        Input::text(&a, TextOptions::new(Encoding::O200kBase)),
    ];
    let err = pack_inputs(&mixed, &opts, &out, &|_| {}).unwrap_err();
    assert!(err.to_string().contains("must share a tokenizer"), "{err}");
    let with_tokens = [
        Input::text(&a, TextOptions::new(Encoding::Cl100kBase)),
        Input::detect(&a, None, "ids").unwrap(),
    ];
    let err = pack_inputs(&with_tokens, &opts, &out, &|_| {}).unwrap_err();
    assert!(
        err.to_string().contains("cannot be packed together"),
        "{err}"
    );
    let bos = [Input::text(
        &a,
        TextOptions::new(Encoding::Cl100kBase).bos(70_000),
    )];
    let err = pack_inputs(&bos, &PackOptions::new("s", Dtype::U16, 2), &out, &|_| {}).unwrap_err();
    assert!(
        err.to_string().contains("BOS id 70000 does not fit u16"),
        "{err}"
    );
    assert!(!out.exists());
}

/// The fingerprint as docs/FORMAT.md section 2.1 specifies it, computed here
/// independently of the crate.
fn fingerprint_by_hand(m: &SourceManifest) -> String {
    let mut b: Vec<u8> = b"seqfeed-source-manifest-v1\0".to_vec();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    s(&mut b, &m.name);
    b.push(m.dtype.code());
    b.extend(m.seq_len.to_le_bytes());
    b.extend((m.files.len() as u64).to_le_bytes());
    for f in &m.files {
        s(&mut b, &f.path);
        b.extend(f.count.to_le_bytes());
        b.extend(f.data_offset.to_le_bytes());
        b.extend(f.file_len.to_le_bytes());
        s(&mut b, &f.payload_hash);
    }
    if let Some(t) = &m.tokenizer {
        s(&mut b, "tokenizer");
        s(&mut b, &t.name);
        s(&mut b, &t.vocab_hash);
        b.extend(t.n_vocab.to_le_bytes());
    }
    blake3::hash(&b).to_hex().to_string()
}

#[test]
fn manifest_without_tokenizer_loads_and_keeps_its_fingerprint() {
    // A manifest as written before the tokenizer field existed.
    let old = r#"{
  "format": "seqfeed-source",
  "version": 1,
  "total_sequences": 20,
  "name": "web",
  "dtype": "u16",
  "seq_len": 2048,
  "files": [
    {
      "path": "part-00000.seq",
      "count": 20,
      "data_offset": 4096,
      "file_len": 86096,
      "payload_hash": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
    }
  ]
}"#;
    let m = SourceManifest::from_json(Path::new("manifest.json"), old).unwrap();
    assert_eq!(m.tokenizer, None);
    assert_eq!(m.fingerprint(), fingerprint_by_hand(&m));
    // Value computed from the pre-tokenizer code; must never change.
    assert_eq!(
        m.fingerprint(),
        "f36398e319405709b97a6d8b52a5e2d391fb24919b98b54fd00ab753bacfbae5"
    );
    assert!(!m.to_json().contains("tokenizer"));

    let mut with = m.clone();
    with.tokenizer = Some(Tokenizer::tiktoken(Encoding::R50kBase).unwrap().info());
    assert_eq!(with.fingerprint(), fingerprint_by_hand(&with));
    assert_ne!(with.fingerprint(), m.fingerprint());
    let back = SourceManifest::from_json(Path::new("m.json"), &with.to_json()).unwrap();
    assert_eq!(back, with);
    let mut bad = with.clone();
    bad.tokenizer.as_mut().unwrap().vocab_hash = "xyz".into();
    let err = SourceManifest::from_json(Path::new("m.json"), &bad.to_json()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.vocab_hash"), "{err}");
}
