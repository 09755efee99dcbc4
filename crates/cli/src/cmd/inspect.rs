//! `seqfeed inspect`: what a sequence file, source or dataset holds.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use seqfeed_format::{Dataset, SeqFile, Source, MANIFEST_NAME};

/// Flags of `seqfeed inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A dataset directory, a source directory, or a single sequence file.
    pub path: PathBuf,
    /// Also print the tokens of this sequence (index within the source or file).
    #[arg(long)]
    pub seq: Option<u64>,
    /// With a dataset and `--seq`: the source to take the sequence from.
    #[arg(long)]
    pub source: Option<String>,
    /// Print one JSON object on stdout instead of text (`kind`, the source(s)
    /// with their files, and `sequence` with `tokens` when `--seq` is given).
    #[arg(long)]
    pub json: bool,
}

/// What a path names.
pub(crate) enum Target {
    File(SeqFile),
    Source(Source),
    Dataset(Dataset),
}

/// Opens `path` as a sequence file, source or dataset.
pub(crate) fn open_target(path: &Path) -> anyhow::Result<Target> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(if meta.is_file() {
        Target::File(SeqFile::open(path)?)
    } else if path.join(MANIFEST_NAME).is_file() {
        Target::Source(Source::open(path)?)
    } else {
        Target::Dataset(Dataset::open(path)?)
    })
}

fn print_file(f: &SeqFile, indent: &str) {
    println!(
        "{indent}{}  sequences {}  bytes {}  data_offset {}  crc {}  blake3 {}",
        f.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        f.count(),
        f.file_len(),
        f.data_offset(),
        if f.has_crc() { "yes" } else { "no" },
        f.payload_hash_hex()
    );
}

fn print_source(s: &Source) {
    println!("source {}", s.name());
    println!("  dtype        {}", s.dtype());
    println!("  seq_len      {}", s.seq_len());
    println!("  sequences    {}", s.total_sequences());
    println!("  tokens       {}", s.total_sequences() * s.seq_len());
    println!("  bytes        {}", s.payload_bytes());
    if let Some(t) = &s.manifest().tokenizer {
        println!(
            "  tokenizer    {}  n_vocab {}  vocab blake3 {}",
            t.name, t.n_vocab, t.vocab_hash
        );
    }
    println!("  fingerprint  {}", s.fingerprint());
    println!("  files        {}", s.files().len());
    for f in s.files() {
        print_file(f, "    ");
    }
}

fn print_tokens(tokens: &[u32]) {
    let text: Vec<String> = tokens.iter().map(u32::to_string).collect();
    println!("{}", text.join(" "));
}

fn file_json(f: &SeqFile) -> serde_json::Value {
    serde_json::json!({
        "name": f.path().file_name().map(|n| n.to_string_lossy().into_owned()),
        "sequences": f.count(),
        "bytes": f.file_len(),
        "data_offset": f.data_offset(),
        "crc": f.has_crc(),
        "blake3": f.payload_hash_hex(),
    })
}

fn source_json(s: &Source) -> serde_json::Value {
    serde_json::json!({
        "name": s.name(),
        "dir": s.dir().display().to_string(),
        "dtype": s.dtype().to_string(),
        "seq_len": s.seq_len(),
        "sequences": s.total_sequences(),
        "tokens": s.total_sequences() * s.seq_len(),
        "bytes": s.payload_bytes(),
        "tokenizer": s.manifest().tokenizer.as_ref().map(|t| serde_json::json!({
            "name": t.name,
            "n_vocab": t.n_vocab,
            "vocab_blake3": t.vocab_hash,
        })),
        "fingerprint": s.fingerprint(),
        "files": s.files().iter().map(file_json).collect::<Vec<_>>(),
    })
}

fn sequence_json(
    index: u64,
    file: Option<&str>,
    file_index: u64,
    tokens: &[u32],
) -> serde_json::Value {
    serde_json::json!({
        "index": index,
        "file": file,
        "file_index": file_index,
        "tokens": tokens,
    })
}

/// `seqfeed inspect --json`.
fn run_json(args: &Args) -> anyhow::Result<ExitCode> {
    let out = match open_target(&args.path)? {
        Target::File(f) => {
            let mut v = file_json(&f);
            v["kind"] = "file".into();
            v["path"] = f.path().display().to_string().into();
            v["source"] = f.source_name().into();
            v["dtype"] = f.dtype().to_string().into();
            v["seq_len"] = f.seq_len().into();
            if let Some(i) = args.seq {
                v["sequence"] = sequence_json(i, None, i, &f.tokens_as_u32(i)?);
            }
            v
        }
        Target::Source(s) => {
            let mut v = source_json(&s);
            v["kind"] = "source".into();
            if let Some(i) = args.seq {
                let (fi, j) = s.locate(i)?;
                let file = s.manifest().files[fi].path.as_str();
                v["sequence"] = sequence_json(i, Some(file), j, &s.tokens_as_u32(i)?);
            }
            v
        }
        Target::Dataset(d) => {
            let mut v = serde_json::json!({
                "kind": "dataset",
                "root": d.root().display().to_string(),
                "sequences": d.total_sequences(),
                "fingerprint": d.fingerprint(),
                "sources": d.sources().iter().map(source_json).collect::<Vec<_>>(),
            });
            if let Some(i) = args.seq {
                let Some(name) = &args.source else {
                    bail!("--seq on a dataset needs --source NAME");
                };
                let s = d
                    .source(name)
                    .with_context(|| format!("no source '{name}' in {}", d.root().display()))?;
                let (fi, j) = s.locate(i)?;
                let file = s.manifest().files[fi].path.as_str();
                let mut seq = sequence_json(i, Some(file), j, &s.tokens_as_u32(i)?);
                seq["source"] = name.as_str().into();
                v["sequence"] = seq;
            }
            v
        }
    };
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// Runs `seqfeed inspect`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.json {
        return run_json(&args);
    }
    match open_target(&args.path)? {
        Target::File(f) => {
            println!("file {}", f.path().display());
            println!("  source       {}", f.source_name());
            println!("  dtype        {}", f.dtype());
            println!("  seq_len      {}", f.seq_len());
            print_file(&f, "  ");
            if let Some(i) = args.seq {
                println!("sequence {i}:");
                print_tokens(&f.tokens_as_u32(i)?);
            }
        }
        Target::Source(s) => {
            print_source(&s);
            if let Some(i) = args.seq {
                let (fi, j) = s.locate(i)?;
                println!("sequence {i} ({} index {j}):", s.manifest().files[fi].path);
                print_tokens(&s.tokens_as_u32(i)?);
            }
        }
        Target::Dataset(d) => {
            println!("dataset {}", d.root().display());
            println!("  sources      {}", d.sources().len());
            println!("  sequences    {}", d.total_sequences());
            println!("  fingerprint  {}", d.fingerprint());
            for s in d.sources() {
                print_source(s);
            }
            if let Some(i) = args.seq {
                let Some(name) = &args.source else {
                    bail!("--seq on a dataset needs --source NAME");
                };
                let s = d
                    .source(name)
                    .with_context(|| format!("no source '{name}' in {}", d.root().display()))?;
                let (fi, j) = s.locate(i)?;
                println!(
                    "sequence {i} of {name} ({} index {j}):",
                    s.manifest().files[fi].path
                );
                print_tokens(&s.tokens_as_u32(i)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
