//! `seqfeed pack`: documents in, a source of fixed-size sequences out.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use seqfeed_format::{
    pack_inputs, Dtype, Encoding, InDtype, Input, InputKind, PackOptions, SourceOptions, Tail,
    TextOptions, Tokenizer, TokenizerSpec,
};

/// Flags of `seqfeed pack`.
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("tokenize").args(["tiktoken", "tokenizer"]).multiple(false))]
pub struct Args {
    /// Input files, packed in the order given. The kind is taken from the extension:
    /// `.idx`/`.bin` Megatron corpus (give `PREFIX.idx`), `.npy`, `.jsonl`/`.json` (also
    /// `.gz`, `.zst`), `.parquet`/`.pq`, anything else a headerless token array of
    /// `--input-dtype`. Override with `--format`. With `--tokenizer` or `--tiktoken`, every
    /// input is text: JSON Lines (plain, gzip or zstd, told apart by their magic bytes) or
    /// Parquet with a string column (`--text-field`).
    ///
    /// Parquet: one document per row, read row group by row group (the file is never loaded
    /// whole); the column is a top-level list of integer ids named by `--jsonl-field` (default
    /// `input_ids`), or with a tokenizer a string column named by `--text-field`. Codecs:
    /// uncompressed, snappy, gzip, lz4 (not zstd or brotli).
    ///
    /// Documents (what `--eos` ends): one per Megatron sequence and one per JSON Lines
    /// record, but a whole `.npy` file is ONE document, whatever its shape (a 1-D array, or
    /// a 2-D `[rows, len]` array flattened in C order: rows are not separate documents),
    /// and so is a whole headerless array. To end every row with an EOS, write the rows as
    /// JSON Lines of ids or as a Megatron corpus.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output source directory (must not exist; written to a temporary name, then renamed).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Source name (default: the output directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Output token type.
    #[arg(long, default_value = "u16")]
    pub dtype: Dtype,
    /// Tokens per sequence.
    #[arg(long)]
    pub seq_len: u64,
    /// Token appended after every document (omit when the input already separates
    /// documents): an id, or with a tokenizer a token of its vocabulary such as
    /// `"</s>"` or `"<|endoftext|>"` (it must exist there). With `--tiktoken` the default is
    /// the encoding's `<|endoftext|>` (100257 for cl100k_base). With `--tokenizer` the
    /// default is the file's end-of-text token when exactly one of <|endoftext|>,
    /// <|end_of_text|>, </s>, <eos>, <|eos|>, [EOS], <EOS>, [SEP] is among its special
    /// tokens (the choice is logged); otherwise give `--eos` or `--no-eos`.
    #[arg(long, value_name = "TOKEN|ID")]
    pub eos: Option<String>,
    /// Append no EOS, even with a tokenizer.
    #[arg(long, conflicts_with = "eos")]
    pub no_eos: bool,
    /// Tokenize text: inputs are JSON Lines (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`) or Parquet (`.parquet`)
    /// whose `--text-field` string is one document, encoded with this embedded tiktoken encoding (cl100k_base,
    /// o200k_base, p50k_base, r50k_base; nothing is downloaded). Encoding follows tiktoken's
    /// `encode_ordinary`: special-token text such as `<|endoftext|>` inside a document is
    /// encoded as ordinary text, never as a special id. The manifest records the tokenizer
    /// (name, blake3 of its rank table, n_vocab).
    #[arg(long, value_name = "ENCODING")]
    pub tiktoken: Option<Encoding>,
    /// Tokenize text with a Hugging Face `tokenizer.json` (the `tokenizers` library; the
    /// file is read locally, nothing is downloaded). Inputs as with `--tiktoken`. Each
    /// document is encoded like Python's `Tokenizer.encode(text, add_special_tokens=False)`:
    /// the post-processor adds nothing (no [CLS]/<s> template: use `--bos`), but the
    /// tokenizer's added tokens, special ones included, are recognised inside the text as
    /// the library does (a literal "</s>" in a document becomes the </s> id). Truncation
    /// and padding set in the file are switched off: documents are packed whole. The
    /// manifest records the tokenizer (name `hf:<file stem, or its directory for
    /// tokenizer.json>`, blake3 of the file's bytes, vocabulary size with added tokens).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// String field of text JSON Lines records, or string column of Parquet rows (with
    /// `--tokenizer` or `--tiktoken`).
    #[arg(long, default_value = "text", requires = "tokenize")]
    pub text_field: String,
    /// Token prepended to every document (with `--tokenizer` or `--tiktoken`): an id or a
    /// token of the vocabulary such as `"<s>"`. None by default.
    #[arg(long, value_name = "TOKEN|ID", requires = "tokenize")]
    pub bos: Option<String>,
    /// What to do with the last partial sequence.
    #[arg(long, value_enum, default_value = "drop")]
    pub tail: TailArg,
    /// Pad id for `--tail pad` (default: the EOS id).
    #[arg(long)]
    pub pad_id: Option<u32>,
    /// Force the input kind instead of guessing from the extension.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    /// Element type of headerless token arrays: u8 i8 u16 i16 u32 i32 i64.
    #[arg(long)]
    pub input_dtype: Option<InDtype>,
    /// Token-array field of JSON Lines records, and token-list column of Parquet rows.
    #[arg(long, default_value = "input_ids")]
    pub jsonl_field: String,
    /// Split the source into files of at most this size, in bytes with an optional unit:
    /// K, M, G, T or KiB, MiB, GiB, TiB are binary (1G = 1GiB = 2^30 bytes); KB, MB, GB, TB
    /// are decimal (1GB = 10^9 bytes). Case-insensitive; whole numbers only.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub max_file_size: u64,
    /// Do not write per-sequence CRC32C tables.
    #[arg(long)]
    pub no_crc: bool,
}

/// `--tail` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailArg {
    /// Drop the last partial sequence.
    Drop,
    /// Pad it to `seq_len` with `--pad-id`.
    Pad,
}

/// `--format` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    /// Guess from the file extension.
    Auto,
    /// Megatron-LM `.bin/.idx` (MMIDIDX).
    Megatron,
    /// Headerless little-endian token array (`--input-dtype`).
    Raw,
    /// NumPy `.npy`.
    Npy,
    /// JSON Lines: a token-array field, or text with a tokenizer.
    Jsonl,
    /// Parquet: a token-list column, or a string column with a tokenizer.
    Parquet,
}

/// Parses a byte size: a whole number with an optional unit. `K`, `M`, `G`,
/// `T` and `KiB`..`TiB` are binary (powers of 1024), `KB`..`TB` decimal
/// (powers of 1000), `B` bytes; case-insensitive, space allowed before the
/// unit. Zero, fractions, negative numbers and unknown units are refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const UNITS: &str = "K, M, G, T or KiB, MiB, GiB, TiB (binary), KB, MB, GB, TB (decimal), or B";
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    if num.is_empty() {
        return Err(format!(
            "'{s}' is not a size: expected a whole number of bytes with an optional unit ({UNITS}), e.g. 512MB or 1GiB"
        ));
    }
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "'{s}': unknown size unit '{unit}' (use {UNITS}; whole numbers only)"
            ))
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("size '{s}' overflows"))?;
    if n == 0 {
        return Err(format!("size '{s}' must be greater than zero"));
    }
    n.checked_mul(mul)
        .ok_or_else(|| format!("size '{s}' overflows"))
}

/// Runs `seqfeed pack`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .out
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .context("cannot take a source name from the output path; give --name")?,
    };
    if args.seq_len == 0 {
        bail!("--seq-len must be at least 1");
    }
    let spec = match (args.tiktoken, &args.tokenizer) {
        (Some(e), _) => Some(TokenizerSpec::Tiktoken(e)),
        (None, Some(p)) => Some(TokenizerSpec::HuggingFace(p.clone())),
        (None, None) => None,
    };
    let tokenizer = match &spec {
        Some(s) => Some(Tokenizer::load(s)?),
        None => None,
    };
    let eos = match (&tokenizer, args.no_eos, &args.eos) {
        (_, true, _) => None,
        (Some(t), false, Some(e)) => Some(t.resolve_token(e)?),
        (Some(t), false, None) => {
            let id = t.default_eos()?;
            tracing::info!(
                eos = id,
                token = t.end_of_text_token().unwrap_or(""),
                tokenizer = t.name(),
                "EOS after every document: the tokenizer's end-of-text token (--eos to choose another, --no-eos for none)"
            );
            Some(id)
        }
        (None, false, Some(e)) => Some(e.parse::<u32>().map_err(|_| {
            anyhow::anyhow!(
                "--eos '{e}': without --tokenizer or --tiktoken the EOS is a numeric token id"
            )
        })?),
        (None, false, None) => None,
    };
    let bos = match (&tokenizer, &args.bos) {
        (Some(t), Some(b)) => Some(t.resolve_token(b)?),
        _ => None,
    };
    if let Some(t) = &tokenizer {
        let top = u64::from(t.max_id());
        if eos.is_some_and(|e| u64::from(e) > args.dtype.max_id()) && args.eos.is_none() {
            bail!(
                "the default EOS id {} ({} of {}) does not fit --dtype {}: {} ids go up to {top}, use --dtype u32",
                eos.unwrap_or_default(),
                t.end_of_text_token().unwrap_or("end of text"),
                t.name(),
                args.dtype,
                t.name()
            );
        }
        if top > args.dtype.max_id() {
            tracing::warn!(
                "{} ids go up to {top}, more than --dtype {} holds; packing fails at the first such id",
                t.name(),
                args.dtype
            );
        }
    }
    let tail = match args.tail {
        TailArg::Drop => Tail::Drop,
        TailArg::Pad => match args.pad_id.or(eos) {
            Some(p) => Tail::Pad(p),
            None => bail!("--tail pad needs --pad-id (or --eos, used as the pad id by default)"),
        },
    };
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for p in &args.inputs {
        if let Some(t) = &tokenizer {
            if !matches!(
                args.format,
                FormatArg::Auto | FormatArg::Jsonl | FormatArg::Parquet
            ) {
                bail!("a tokenizer reads JSON Lines or Parquet of text; --format must be auto, jsonl or parquet");
            }
            let parquet = args.format == FormatArg::Parquet
                || (args.format == FormatArg::Auto && Input::is_parquet_name(p));
            if args.format == FormatArg::Auto && !parquet && !Input::is_jsonl_name(p) {
                bail!(
                    "{}: with a tokenizer, inputs are JSON Lines of text (.jsonl, .json, .jsonl.gz, .jsonl.zst) or Parquet (.parquet); use --format jsonl or parquet for other names",
                    p.display()
                );
            }
            let mut opts = TextOptions::new(t.spec().clone()).field(args.text_field.clone());
            opts.bos = bos;
            inputs.push(if parquet {
                Input {
                    path: p.clone(),
                    kind: InputKind::ParquetText(opts),
                }
            } else {
                Input::text(p.clone(), opts)
            });
            continue;
        }
        if args.format == FormatArg::Auto && !p.exists() {
            // A Megatron corpus named by its prefix: point at the .idx.
            for ext in ["idx", "bin"] {
                let mut with_ext = p.clone().into_os_string();
                with_ext.push(format!(".{ext}"));
                let with_ext = PathBuf::from(with_ext);
                if with_ext.is_file() {
                    bail!(
                        "{}: no such file, but {} exists: did you mean {}? (a Megatron corpus is given by its .idx or .bin, or with --format megatron)",
                        p.display(),
                        with_ext.display(),
                        with_ext.display()
                    );
                }
            }
        }
        let input = match args.format {
            FormatArg::Auto => Input::detect(p, args.input_dtype, &args.jsonl_field)?,
            FormatArg::Megatron => {
                // Accept the prefix, `prefix.idx` or `prefix.bin`.
                let ext = p.extension().and_then(|e| e.to_str());
                let prefix = if matches!(ext, Some("idx" | "bin")) {
                    p.with_extension("")
                } else {
                    p.clone()
                };
                Input {
                    path: prefix,
                    kind: InputKind::Megatron,
                }
            }
            FormatArg::Raw => Input {
                path: p.clone(),
                kind: InputKind::Raw(
                    args.input_dtype
                        .context("--format raw needs --input-dtype")?,
                ),
            },
            FormatArg::Npy => Input {
                path: p.clone(),
                kind: InputKind::Npy,
            },
            FormatArg::Jsonl => Input {
                path: p.clone(),
                kind: InputKind::Jsonl {
                    field: args.jsonl_field.clone(),
                },
            },
            FormatArg::Parquet => Input {
                path: p.clone(),
                kind: InputKind::ParquetIds {
                    field: args.jsonl_field.clone(),
                },
            },
        };
        inputs.push(input);
    }
    let opts = PackOptions {
        name,
        dtype: args.dtype,
        seq_len: args.seq_len,
        eos,
        bos,
        tail,
        source: SourceOptions {
            max_file_bytes: args.max_file_size,
            crc: !args.no_crc,
        },
    };
    let total: u64 = inputs.iter().map(Input::size_hint).sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "packing [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    tracing::info!(inputs = inputs.len(), out = %args.out.display(), dtype = %opts.dtype, seq_len = opts.seq_len, "packing");
    let started = std::time::Instant::now();
    let result = pack_inputs(&inputs, &opts, &args.out, &|n| bar.inc(n));
    bar.finish_and_clear();
    let (source, stats) = result.with_context(|| format!("packing into {}", args.out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    println!("source      {}", source.name());
    println!("directory   {}", source.dir().display());
    println!("dtype       {}", source.dtype());
    println!("seq_len     {}", source.seq_len());
    println!("files       {}", source.files().len());
    println!("sequences   {}", stats.sequences);
    println!("documents   {}", stats.documents);
    if let Some(t) = &source.manifest().tokenizer {
        println!(
            "tokenizer   {} (n_vocab {}, eos {})",
            t.name,
            t.n_vocab,
            eos.map_or("none".to_string(), |e| e.to_string())
        );
    }
    println!(
        "tokens in   {} (+{} eos, +{} pad, -{} dropped)",
        stats.input_tokens, stats.eos_tokens, stats.pad_tokens, stats.dropped_tokens
    );
    println!("fingerprint {}", source.fingerprint());
    println!(
        "time        {secs:.2} s ({:.1} MB/s of input)",
        total as f64 / secs.max(1e-9) / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2 M"), Ok(2 << 20));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn sizes_with_decimal_and_binary_units() {
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64kb"), Ok(64_000));
        assert_eq!(parse_size("2tib"), Ok(2 << 40));
        assert_eq!(parse_size("4096B"), Ok(4096));
        for bad in [
            "1.5G", "-1G", "GB", "1GBB", "1 G B", "0", "0GB", "1Gi", "1XB",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(parse_size("1.5G").unwrap_err().contains("unit"));
    }
}
