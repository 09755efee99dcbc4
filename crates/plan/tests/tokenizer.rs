//! Tokenizers across a plan's sources: a warning when they differ, and the
//! config's `tokenizer` pin refusing a source packed with another one (or
//! with none), naming it.
#![allow(clippy::unwrap_used)]

use seqfeed_format::{
    pack_inputs, pack_tokens, Dataset, Dtype, Encoding, Input, PackOptions, Tail, TextOptions,
    Tokenizer, TokenizerInfo,
};
use seqfeed_plan::{
    shapes_from_dataset, FileShape, Plan, PlanConfig, PlanError, ShapesFile, SourceShape,
};

fn info(name: &str, hash_byte: char) -> TokenizerInfo {
    TokenizerInfo {
        name: name.to_string(),
        vocab_hash: hash_byte.to_string().repeat(64),
        n_vocab: 50_000,
    }
}

fn shape(name: &str, tokenizer: Option<TokenizerInfo>) -> SourceShape {
    SourceShape {
        name: name.to_string(),
        fingerprint: format!("fp-{name}"),
        seq_len: 16,
        token_bytes: 4,
        tokenizer,
        special_tokens: Default::default(),
        files: vec![FileShape {
            path: format!("{name}/part-00000.seq"),
            count: 1000,
            data_offset: 4096,
        }],
    }
}

fn config(pin: Option<&str>, sources: &[&str]) -> PlanConfig {
    let mut text = String::from("seed = 1\nglobal_batch = 8\n");
    if let Some(p) = pin {
        text.push_str(&format!("tokenizer = \"{p}\"\n"));
    }
    text.push_str("[run]\nsteps = 10\n");
    for s in sources {
        text.push_str(&format!("[[sources]]\nname = \"{s}\"\nweight = 1\n"));
    }
    PlanConfig::from_toml_str(&text).unwrap()
}

#[test]
fn different_tokenizers_draw_a_warning_naming_sources_and_tokenizers() {
    let a = info("hf:llama", 'a');
    let b = info("tiktoken:cl100k_base", 'b');
    let shapes = vec![
        shape("web", Some(a.clone())),
        shape("code", Some(b.clone())),
        shape("books", Some(a.clone())),
        shape("ids", None),
        shape("unused", Some(info("hf:other", 'c'))),
    ];
    // Same tokenizer (the unused source does not count): no warning.
    let plan = Plan::new(config(None, &["web", "books"]), shapes.clone()).unwrap();
    assert_eq!(plan.mixed_tokenizers(), None);

    let plan = Plan::new(config(None, &["web", "code", "books"]), shapes.clone()).unwrap();
    let msg = plan.mixed_tokenizers().unwrap();
    assert!(msg.contains("different tokenizers"), "{msg}");
    assert!(
        msg.contains(&format!(
            "web, books: hf:llama (vocab_hash {}",
            a.vocab_hash
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "code: tiktoken:cl100k_base (vocab_hash {}",
            b.vocab_hash
        )),
        "{msg}"
    );
    assert!(msg.contains("tokenizer = \"<vocab_hash>\""), "{msg}");
    assert!(!msg.contains("unused"), "{msg}");

    // A source packed from token ids has no tokenizer: that differs too.
    let plan = Plan::new(config(None, &["web", "ids"]), shapes.clone()).unwrap();
    let msg = plan.mixed_tokenizers().unwrap();
    assert!(
        msg.contains("ids: none recorded (packed from token ids)"),
        "{msg}"
    );
    // All without: nothing to compare.
    let plan = Plan::new(config(None, &["ids"]), shapes).unwrap();
    assert_eq!(plan.mixed_tokenizers(), None);
}

#[test]
fn a_pinned_tokenizer_refuses_other_sources_by_name() {
    let a = info("hf:llama", 'a');
    let shapes = vec![
        shape("web", Some(a.clone())),
        shape("books", Some(a.clone())),
        shape("code", Some(info("hf:llama", 'd'))),
        shape("ids", None),
    ];
    // By vocab hash (any case) or by name.
    for pin in [
        a.vocab_hash.clone(),
        a.vocab_hash.to_uppercase(),
        a.name.clone(),
    ] {
        let plan = Plan::new(config(Some(&pin), &["web", "books"]), shapes.clone()).unwrap();
        assert_eq!(plan.mixed_tokenizers(), None);
    }
    // Same name, another vocabulary: the hash pin refuses it, naming the source.
    let err = Plan::new(
        config(Some(&a.vocab_hash), &["web", "code"]),
        shapes.clone(),
    )
    .unwrap_err();
    match &err {
        PlanError::TokenizerMismatch {
            source_name,
            pinned,
            found,
        } => {
            assert_eq!(source_name, "code");
            assert_eq!(pinned, &a.vocab_hash);
            assert!(found.contains(&"d".repeat(64)), "{found}");
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("source 'code' was packed with tokenizer hf:llama"),
        "{msg}"
    );
    // A source without a tokenizer is refused under a pin.
    let err = Plan::new(config(Some("hf:llama"), &["web", "ids"]), shapes.clone()).unwrap_err();
    assert!(
        err.to_string()
            .contains("source 'ids' was packed with tokenizer none recorded"),
        "{err}"
    );
    // The pin checks, it selects nothing: the plan is the same as without it.
    let with = Plan::new(config(Some("hf:llama"), &["web", "books"]), shapes.clone()).unwrap();
    let without = Plan::new(config(None, &["web", "books"]), shapes).unwrap();
    assert_eq!(with.fingerprint(), without.fingerprint());
    assert_eq!(with.step_block(3).unwrap(), without.step_block(3).unwrap());
    // An empty pin is a config error.
    let err = Plan::new(config(Some(" "), &["web"]), vec![]).unwrap_err();
    assert!(
        err.to_string().contains("tokenizer: empty tokenizer pin"),
        "{err}"
    );
}

#[test]
fn pin_and_shape_tokenizers_round_trip_through_toml() {
    let c = config(Some("tiktoken:r50k_base"), &["web"]);
    assert_eq!(c.tokenizer.as_deref(), Some("tiktoken:r50k_base"));
    let text = c.to_toml_string().unwrap();
    assert_eq!(PlanConfig::from_toml_str(&text).unwrap(), c);
    assert!(!config(None, &["web"])
        .to_toml_string()
        .unwrap()
        .contains("tokenizer"));

    let shapes = ShapesFile {
        fingerprint: None,
        sources: vec![shape("web", Some(info("hf:x", 'e'))), shape("ids", None)],
    };
    let text = shapes.to_toml_string().unwrap();
    assert_eq!(ShapesFile::from_toml_str(&text).unwrap(), shapes);
}

#[test]
fn shapes_of_packed_sources_carry_their_manifest_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("docs.jsonl");
    let mut lines = String::new();
    for i in 0..200 {
        lines.push_str(&format!(
            "{{\"text\": \"Document {i}: the quick brown fox jumps over the lazy dog.\"}}\n"
        ));
    }
    std::fs::write(&text, lines).unwrap();
    let data = dir.path().join("data");
    for (name, enc) in [("web", Encoding::Cl100kBase), ("old", Encoding::R50kBase)] {
        let tok = Tokenizer::tiktoken(enc).unwrap();
        let opts = PackOptions::new(name, Dtype::U32, 16).eos(tok.end_of_text().unwrap());
        pack_inputs(
            &[Input::text(&text, TextOptions::new(enc))],
            &opts,
            data.join(name),
            &|_| {},
        )
        .unwrap();
    }
    let docs: Vec<Vec<u32>> = (0..300).map(|i| vec![i; 7]).collect();
    let opts = PackOptions::new("ids", Dtype::U32, 16)
        .eos(0)
        .tail(Tail::Drop);
    pack_tokens(docs, &opts, data.join("ids")).unwrap();

    let ds = Dataset::open(&data).unwrap();
    let shapes = shapes_from_dataset(&ds).unwrap();
    for s in &shapes {
        let manifest = ds.source(&s.name).unwrap().manifest();
        assert_eq!(s.tokenizer, manifest.tokenizer, "{}", s.name);
    }
    let cl100k = Tokenizer::tiktoken(Encoding::Cl100kBase).unwrap().info();
    let web = shapes.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web.tokenizer.as_ref(), Some(&cl100k));

    let plan = Plan::new(config(None, &["web", "old", "ids"]), shapes.clone()).unwrap();
    let msg = plan.mixed_tokenizers().unwrap();
    for part in [
        "web: tiktoken:cl100k_base",
        "old: tiktoken:r50k_base",
        "ids: none recorded",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    let err = Plan::new(
        config(Some(&cl100k.vocab_hash), &["web", "old"]),
        shapes.clone(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("source 'old' was packed with tokenizer tiktoken:r50k_base"),
        "{err}"
    );
    Plan::new(config(Some("tiktoken:cl100k_base"), &["web"]), shapes).unwrap();
}
