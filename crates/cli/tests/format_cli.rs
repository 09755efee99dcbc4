//! `seqfeed pack`, `inspect` and `verify` run as the built binary.
#![allow(clippy::unwrap_used)]

mod common;

use common::p;

use std::path::Path;
use std::process::{Command, Output};

fn seqfeed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqfeed"))
        .args(args)
        .env("SEQFEED_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write_u32s(path: &Path, v: &[u32]) {
    std::fs::write(
        path,
        v.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
}

#[test]
fn pack_inspect_verify_raw_array() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("tokens.u32");
    let toks: Vec<u32> = (0..10_000).map(|i| (i * 31) % 60_000).collect();
    write_u32s(&input, &toks);
    let out = dir.path().join("web");
    let o = seqfeed(&[
        "pack",
        p(&input),
        "--input-dtype",
        "u32",
        "--seq-len",
        "100",
        "--eos",
        "7",
        "--tail",
        "pad",
        "--pad-id",
        "9",
        "--max-file-size",
        "8K",
        "-o",
        p(&out),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    // 10_000 tokens + 1 EOS = 10_001 -> 101 sequences, the last padded with 99 x 9.
    assert!(stdout.contains("sequences   101"), "{stdout}");
    assert!(stdout.contains("+99 pad"), "{stdout}");
    // 8 KiB files hold (8192 - 4096) / (200 + 4 CRC) = 20 sequences -> 6 files.
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 7, "{files:?}"); // 6 files + manifest

    let o = seqfeed(&["inspect", p(&out), "--seq", "42"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("sequences    101"), "{stdout}");
    assert!(stdout.contains("files        6"), "{stdout}");
    let want: Vec<String> = toks[4200..4300].iter().map(u32::to_string).collect();
    assert_eq!(stdout.lines().last().unwrap(), want.join(" "));
    let o = seqfeed(&["inspect", p(&out), "--seq", "100"]);
    let last: Vec<u32> = text(&o)
        .0
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(last[0], 7, "EOS follows the document");
    assert!(last[1..].iter().all(|&t| t == 9));

    let o = seqfeed(&["verify", p(&out)]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("OK: 101 sequences in 6 files"), "{stdout}");

    // Damage sequence 5 of the second file (source sequence 20 + 5 = 25).
    let f = out.join("part-00001.seq");
    let mut b = std::fs::read(&f).unwrap();
    b[4096 + 5 * 200 + 17] ^= 0xFF;
    std::fs::write(&f, b).unwrap();
    let o = seqfeed(&["verify", p(&out)]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("part-00001.seq"), "{stderr}");
    assert!(
        stderr.contains("sequence 5 of that file (source sequence 25)"),
        "{stderr}"
    );
    // A single file can be verified too.
    let o = seqfeed(&["verify", p(&f)]);
    assert!(!o.status.success());
    assert!(seqfeed(&["verify", p(&out.join("part-00000.seq"))])
        .status
        .success());

    // Truncation: inspect fails cleanly, naming the file.
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() - 10]).unwrap();
    let o = seqfeed(&["inspect", p(&out)]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("part-00001.seq") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn overflow_and_bad_options_fail_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.u32");
    write_u32s(&input, &[1, 2, 3, 65_536, 5]);
    let out = dir.path().join("o");
    let o = seqfeed(&[
        "pack",
        p(&input),
        "--input-dtype",
        "u32",
        "--seq-len",
        "2",
        "-o",
        p(&out),
    ]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("t.u32")
            && stderr.contains("token 3 (byte offset 12)")
            && stderr.contains("65536"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary leftovers"
    );

    // --tail pad without a pad id; unknown kind without --input-dtype; existing output.
    let o = seqfeed(&[
        "pack",
        p(&input),
        "--input-dtype",
        "u32",
        "--seq-len",
        "2",
        "--tail",
        "pad",
        "-o",
        p(&out),
    ]);
    assert!(!o.status.success() && text(&o).1.contains("--pad-id"));
    let o = seqfeed(&["pack", p(&input), "--seq-len", "2", "-o", p(&out)]);
    assert!(
        !o.status.success() && text(&o).1.contains("input dtype"),
        "{}",
        text(&o).1
    );
    std::fs::create_dir(&out).unwrap();
    let o = seqfeed(&[
        "pack",
        p(&input),
        "--input-dtype",
        "u32",
        "--dtype",
        "u32",
        "--seq-len",
        "2",
        "-o",
        p(&out),
    ]);
    assert!(
        !o.status.success() && text(&o).1.contains("already exists"),
        "{}",
        text(&o).1
    );
}

#[test]
fn megatron_and_jsonl_into_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    // Megatron u16 corpus from the documented layout: 3 documents.
    let docs: [&[u16]; 3] = [&[10, 11, 12], &[20, 21], &[30, 31, 32, 33]];
    let mut bin = Vec::new();
    let mut idx = b"MMIDIDX\0\0".to_vec();
    idx.extend_from_slice(&1u64.to_le_bytes());
    idx.push(8);
    idx.extend_from_slice(&3u64.to_le_bytes());
    idx.extend_from_slice(&4u64.to_le_bytes());
    let mut ptrs = Vec::new();
    for d in docs {
        idx.extend_from_slice(&(d.len() as i32).to_le_bytes());
        ptrs.push(bin.len() as i64);
        bin.extend(d.iter().flat_map(|t| t.to_le_bytes()));
    }
    for ptr in ptrs {
        idx.extend_from_slice(&ptr.to_le_bytes());
    }
    for j in 0..4i64 {
        idx.extend_from_slice(&j.to_le_bytes());
    }
    std::fs::write(dir.path().join("corpus.idx"), idx).unwrap();
    std::fs::write(dir.path().join("corpus.bin"), bin).unwrap();
    std::fs::write(
        dir.path().join("d.jsonl"),
        "{\"ids\": [1, 2, 3]}\n{\"ids\": [4]}\n",
    )
    .unwrap();

    let ds = dir.path().join("ds");
    std::fs::create_dir(&ds).unwrap();
    let mega = ds.join("mega");
    let o = seqfeed(&[
        "pack",
        p(&dir.path().join("corpus.idx")),
        "--seq-len",
        "4",
        "--eos",
        "0",
        "-o",
        p(&mega),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    // The same corpus named by its prefix with --format megatron: same source.
    let again = dir.path().join("mega");
    let o2 = seqfeed(&[
        "pack",
        p(&dir.path().join("corpus")),
        "--format",
        "megatron",
        "--seq-len",
        "4",
        "--eos",
        "0",
        "-o",
        p(&again),
    ]);
    assert!(o2.status.success(), "{}", text(&o2).1);
    let fp = |o: &Output| {
        text(o)
            .0
            .lines()
            .find(|l| l.starts_with("fingerprint"))
            .unwrap()
            .to_string()
    };
    assert_eq!(fp(&o), fp(&o2));
    let js = ds.join("js");
    let o = seqfeed(&[
        "pack",
        p(&dir.path().join("d.jsonl")),
        "--jsonl-field",
        "ids",
        "--dtype",
        "u32",
        "--seq-len",
        "3",
        "--tail",
        "pad",
        "--pad-id",
        "5",
        "-o",
        p(&js),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);

    // Megatron stream: 10 11 12 0 | 20 21 0 30 | 31 32 33 0
    let o = seqfeed(&["inspect", p(&ds), "--source", "mega", "--seq", "1"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stdout.lines().last().unwrap(), "20 21 0 30");
    assert!(stdout.contains("sources      2"), "{stdout}");
    let o = seqfeed(&["inspect", p(&ds), "--source", "js", "--seq", "1"]);
    assert_eq!(
        text(&o).0.lines().last().unwrap(),
        "4 5 5",
        "JSONL without --eos concatenates; tail padded"
    );
    let o = seqfeed(&["verify", p(&ds)]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(
        text(&o).0.contains("OK: 5 sequences in 2 files"),
        "{}",
        text(&o).0
    );
}

#[test]
fn pack_tiktoken_text_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.jsonl");
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            "{{\"id\": {i}, \"text\": \"Document {i}: the quick brown fox jumps over the lazy dog. <|endoftext|> is plain text here.\"}}\n"
        ));
    }
    std::fs::write(&input, lines).unwrap();
    let out = dir.path().join("web");
    let o = seqfeed(&[
        "pack",
        "--tiktoken",
        "cl100k_base",
        "--text-field",
        "text",
        p(&input),
        "--out",
        p(&out),
        "--seq-len",
        "1025",
        "--dtype",
        "u32",
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("documents   200"), "{stdout}");
    assert!(
        stdout.contains("tokenizer   tiktoken:cl100k_base (n_vocab 100277, eos 100257)"),
        "{stdout}"
    );
    let o = seqfeed(&["inspect", p(&out), "--seq", "0"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("tokenizer    tiktoken:cl100k_base"),
        "{stdout}"
    );
    assert!(stdout.contains(" 100257 "), "{stdout}");

    // cl100k's default EOS does not fit u16: refused up front, nothing written.
    let out16 = dir.path().join("web16");
    let args = [
        "pack",
        "--tiktoken",
        "cl100k_base",
        p(&input),
        "-o",
        p(&out16),
        "--seq-len",
        "64",
    ];
    let o = seqfeed(&args);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("does not fit --dtype u16"), "{stderr}");
    assert!(!out16.exists());

    // A bad record names the file and line.
    std::fs::write(&input, "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n").unwrap();
    let o = seqfeed(&[
        "pack",
        "--tiktoken",
        "cl100k_base",
        p(&input),
        "-o",
        p(&out16),
        "--seq-len",
        "4",
        "--dtype",
        "u32",
    ]);
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("corpus.jsonl: line 2: no field 'text'"),
        "{stderr}"
    );
    assert!(!out16.exists());
}

/// A small word-level `tokenizer.json` written by hand: lower-cases, splits on
/// whitespace and punctuation. `specials` become special added tokens (ids
/// from 0), then `[UNK]`, then the words.
fn word_tokenizer(path: &Path, specials: &[&str]) -> Vec<String> {
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    vocab.push("[UNK]".into());
    for w in "the quick brown fox jumps over lazy dog . , document a is".split(' ') {
        vocab.push(w.into());
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, s)| {
            serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), serde_json::json!(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "[UNK]"}
    });
    std::fs::write(path, json.to_string()).unwrap();
    vocab
}

/// Every token of a packed u16 source with one file, read from the file by hand.
fn u16_stream(source: &Path) -> Vec<u16> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("manifest.json")).unwrap()).unwrap();
    let f = &m["files"][0];
    let bytes = std::fs::read(source.join(f["path"].as_str().unwrap())).unwrap();
    let n = (f["count"].as_u64().unwrap() * m["seq_len"].as_u64().unwrap()) as usize;
    let start = f["data_offset"].as_u64().unwrap() as usize;
    bytes[start..start + 2 * n]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn pack_tokenizer_json_text() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("words.json");
    let vocab = word_tokenizer(&tok, &["<s>", "</s>"]);
    let id = |w: &str| vocab.iter().position(|v| v == w).unwrap() as u16;
    let input = dir.path().join("corpus.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"The quick brown fox.\"}\n{\"text\": \"A lazy dog, jumps </s> over\"}\n",
    )
    .unwrap();
    let pack = |extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        let mut args = vec![
            "pack",
            "--tokenizer",
            p(&tok),
            p(&input),
            "-o",
            p(&out),
            "--seq-len",
            "4",
            "--tail",
            "pad",
        ];
        args.extend(extra);
        let o = seqfeed(&args);
        (o, out)
    };
    // Default EOS: the one end-of-text candidate among the special tokens.
    let (o, out) = pack(&[], "a");
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("tokenizer   hf:words (n_vocab 16, eos 1)"),
        "{stdout}"
    );
    let doc1 = [id("the"), id("quick"), id("brown"), id("fox"), id(".")];
    // The special `</s>` inside the text is recognised as its id.
    let doc2 = [
        id("a"),
        id("lazy"),
        id("dog"),
        id(","),
        id("jumps"),
        1,
        id("over"),
    ];
    let mut want: Vec<u16> = doc1
        .iter()
        .chain(&[1])
        .chain(&doc2)
        .chain(&[1])
        .copied()
        .collect();
    want.resize(16, 1);
    assert_eq!(u16_stream(&out), want);

    // BOS and EOS given as token text.
    let (o, out) = pack(&["--bos", "<s>", "--eos", "</s>"], "b");
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(
        u16_stream(&out)[..7],
        [0, doc1[0], doc1[1], doc1[2], doc1[3], doc1[4], 1]
    );

    // Tokens that are not in the vocabulary are refused, naming them.
    for (bad, msg) in [
        ("<eos>", "'<eos>' is not a token of this vocabulary"),
        ("99", "token id 99 is not in the vocabulary"),
    ] {
        let (o, out) = pack(&["--eos", bad], "c");
        assert!(!o.status.success());
        assert!(text(&o).1.contains(msg), "{}", text(&o).1);
        assert!(!out.exists());
    }
    // --eos without a tokenizer is an id.
    let o = seqfeed(&[
        "pack",
        p(&input),
        "-o",
        p(&dir.path().join("d")),
        "--seq-len",
        "4",
        "--eos",
        "</s>",
    ]);
    assert!(
        text(&o).1.contains("the EOS is a numeric token id"),
        "{}",
        text(&o).1
    );
    // One tokenizer at a time.
    let o = seqfeed(&[
        "pack",
        "--tokenizer",
        p(&tok),
        "--tiktoken",
        "cl100k_base",
        p(&input),
        "-o",
        "x",
        "--seq-len",
        "4",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("cannot be used with"), "{}", text(&o).1);

    // No end-of-text token: an error asking for --eos or --no-eos.
    let plain = dir.path().join("plain.json");
    word_tokenizer(&plain, &["<pad>"]);
    let o = seqfeed(&[
        "pack",
        "--tokenizer",
        p(&plain),
        p(&input),
        "-o",
        p(&dir.path().join("e")),
        "--seq-len",
        "4",
    ]);
    let stderr = text(&o).1;
    assert!(!o.status.success());
    assert!(
        stderr.contains("no end-of-text token") && stderr.contains("--no-eos"),
        "{stderr}"
    );
    let o = seqfeed(&[
        "pack",
        "--tokenizer",
        p(&plain),
        "--no-eos",
        p(&input),
        "-o",
        p(&dir.path().join("e")),
        "--seq-len",
        "4",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);

    // zstd input (two frames, written by the zstd tool).
    let zst =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../format/tests/data/two_frames.jsonl.zst");
    let o = seqfeed(&[
        "pack",
        "--tokenizer",
        p(&tok),
        p(&zst),
        "-o",
        p(&dir.path().join("z")),
        "--seq-len",
        "4",
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(text(&o).0.contains("documents   3"), "{}", text(&o).0);
}

#[test]
fn plan_warns_on_mixed_tokenizers_and_a_pin_refuses_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.jsonl");
    let mut lines = String::new();
    for i in 0..300 {
        lines.push_str(&format!(
            "{{\"text\": \"The quick brown fox {i}, a lazy dog.\"}}\n"
        ));
    }
    std::fs::write(&input, lines).unwrap();
    let data = dir.path().join("data");
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    word_tokenizer(&a, &["</s>"]);
    word_tokenizer(&b, &["<s>", "</s>"]);
    for (name, tok) in [("web", &a), ("books", &a), ("code", &b)] {
        let out = data.join(name);
        let o = seqfeed(&[
            "pack",
            "--tokenizer",
            p(tok),
            p(&input),
            "-o",
            p(&out),
            "--seq-len",
            "8",
        ]);
        assert!(o.status.success(), "{}", text(&o).1);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("web/manifest.json")).unwrap()).unwrap();
    let hash = manifest["tokenizer"]["vocab_hash"]
        .as_str()
        .unwrap()
        .to_string();
    let plan = |pin: &str, sources: &[&str]| {
        let mut t = format!("seed = 1\nglobal_batch = 4\n{pin}\n[run]\nsteps = 3\n");
        for s in sources {
            t.push_str(&format!("[[sources]]\nname = \"{s}\"\nweight = 1\n"));
        }
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, t).unwrap();
        seqfeed(&["plan", "stats", "--dataset", p(&data), "--config", p(&path)])
    };
    let o = plan("", &["web", "books", "code"]);
    let stderr = text(&o).1;
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("different tokenizers"), "{stderr}");
    assert!(
        stderr.contains(&format!("web, books: hf:a (vocab_hash {hash}")),
        "{stderr}"
    );
    assert!(stderr.contains("code: hf:b"), "{stderr}");
    let o = plan(
        &format!("tokenizer = \"{hash}\""),
        &["web", "books", "code"],
    );
    let stderr = text(&o).1;
    assert!(!o.status.success());
    assert!(
        stderr.contains("source 'code' was packed with tokenizer hf:b"),
        "{stderr}"
    );
    let o = plan(&format!("tokenizer = \"{hash}\""), &["web", "books"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert!(!text(&o).1.contains("different tokenizers"));
}
