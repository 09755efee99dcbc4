//! `seqfeed pack`: documents in, a source of fixed-size sequences out.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use seqfeed_format::{
    pack_inputs, Dtype, InDtype, Input, InputKind, PackOptions, SourceOptions, Tail,
};

/// Flags of `seqfeed pack`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input files, packed in the order given. The kind is taken from the extension:
    /// `.idx`/`.bin` Megatron corpus (prefix), `.npy`, `.jsonl`/`.json`, anything else a
    /// headerless token array of `--input-dtype`. Override with `--format`.
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
    /// Token id appended after every document (omit when the input already separates documents).
    #[arg(long)]
    pub eos: Option<u32>,
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
    /// Token-array field of JSON Lines records.
    #[arg(long, default_value = "input_ids")]
    pub jsonl_field: String,
    /// Split the source into files of at most this size (suffixes K, M, G = KiB, MiB, GiB).
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
    /// JSON Lines with a token-array field.
    Jsonl,
}

/// Parses `123`, `64K`, `512M`, `1G` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in '{s}' (use K, M, G or T)")),
            };
            (&s[..i], mul)
        }
        _ => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size"))?;
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
    let tail = match args.tail {
        TailArg::Drop => Tail::Drop,
        TailArg::Pad => match args.pad_id.or(args.eos) {
            Some(p) => Tail::Pad(p),
            None => bail!("--tail pad needs --pad-id (or --eos, used as the pad id by default)"),
        },
    };
    let mut inputs = Vec::with_capacity(args.inputs.len());
    for p in &args.inputs {
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
        };
        inputs.push(input);
    }
    let opts = PackOptions {
        name,
        dtype: args.dtype,
        seq_len: args.seq_len,
        eos: args.eos,
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
}
