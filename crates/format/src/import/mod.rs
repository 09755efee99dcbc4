//! Importers: Megatron `.bin/.idx`, headerless token arrays, `.npy`, JSON Lines
//! (token ids, or text tokenized by [`crate::tokenize`]).
//!
//! Every importer validates token ids against the output dtype while decoding
//! and reports an overflowing or negative id with its file and position.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{FormatError, Result, TokenPos};
use crate::pack::{PackOptions, PackStats, Packer};
use crate::parquet_input::{import_parquet_ids, import_parquet_text};
use crate::source::Source;
use crate::text_input::import_text;
use crate::tokenize::{TextOptions, Tokenizer};
use crate::Dtype;

mod jsonl;
mod megatron;
mod npy;

use jsonl::import_jsonl;
use megatron::import_megatron;
pub use megatron::{megatron_paths, parse_megatron_index, MegatronIndex};
use npy::import_npy;
pub use npy::{parse_npy_header, NpyHeader};

/// Element type of an input token array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InDtype {
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
    /// Signed 64-bit.
    I64,
}

impl InDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            InDtype::U8 | InDtype::I8 => 1,
            InDtype::U16 | InDtype::I16 => 2,
            InDtype::U32 | InDtype::I32 => 4,
            InDtype::I64 => 8,
        }
    }
    /// Lower-case name (`u16`, `i64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            InDtype::U8 => "u8",
            InDtype::I8 => "i8",
            InDtype::U16 => "u16",
            InDtype::I16 => "i16",
            InDtype::U32 => "u32",
            InDtype::I32 => "i32",
            InDtype::I64 => "i64",
        }
    }
}

impl fmt::Display for InDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for InDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "u8" => InDtype::U8,
            "i8" => InDtype::I8,
            "u16" => InDtype::U16,
            "i16" => InDtype::I16,
            "u32" => InDtype::U32,
            "i32" => InDtype::I32,
            "i64" => InDtype::I64,
            other => {
                return Err(format!(
                    "unknown input dtype '{other}' (u8 i8 u16 i16 u32 i32 i64)"
                ))
            }
        })
    }
}

/// The kind of an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    /// A Megatron-LM `MMIDIDX` corpus; the path is the prefix (without `.bin`/`.idx`).
    /// Each Megatron sequence becomes one document.
    Megatron,
    /// A headerless little-endian token array of this element type; the whole
    /// file is one document.
    Raw(InDtype),
    /// A `.npy` array (u8/i8/u16/i16/u32/i32/i64, little-endian, C order); the
    /// whole array, flattened, is one document.
    Npy,
    /// JSON Lines (plain, gzip or zstd); each line's `field` (an array of token ids) is one document.
    Jsonl {
        /// The token-array field name.
        field: String,
    },
    /// JSON Lines of text (plain, gzip or zstd); each line's text field, tokenized,
    /// is one document. See [`crate::tokenize`].
    Text(TextOptions),
    /// Parquet; each row's `field` (a list of integer token ids: list<int8..int64>
    /// or unsigned) is one document. Read row group by row group.
    ParquetIds {
        /// The token-list column name (top level).
        field: String,
    },
    /// Parquet of text; each row's string column [`TextOptions::field`],
    /// tokenized, is one document. Read row group by row group.
    ParquetText(TextOptions),
}

impl InputKind {
    /// The text options of a kind that tokenizes (`Text`, `ParquetText`).
    pub fn text_options(&self) -> Option<&TextOptions> {
        match self {
            InputKind::Text(t) | InputKind::ParquetText(t) => Some(t),
            _ => None,
        }
    }
}

/// One input to [`pack_inputs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Path (for Megatron, the prefix).
    pub path: PathBuf,
    /// Kind.
    pub kind: InputKind,
}

impl Input {
    /// A text JSON Lines input (plain, gzip or zstd).
    pub fn text(path: impl Into<PathBuf>, opts: TextOptions) -> Input {
        Input {
            path: path.into(),
            kind: InputKind::Text(opts),
        }
    }

    /// Whether the file name ends in `.parquet` (or `.pq`).
    pub fn is_parquet_name(path: &Path) -> bool {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        ext.eq_ignore_ascii_case("parquet") || ext.eq_ignore_ascii_case("pq")
    }

    /// Whether the file name ends in `.jsonl` or `.json`, optionally followed
    /// by `.gz` or `.zst`.
    pub fn is_jsonl_name(path: &Path) -> bool {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let name = name
            .strip_suffix(".gz")
            .or_else(|| name.strip_suffix(".zst"))
            .unwrap_or(name);
        name.ends_with(".jsonl") || name.ends_with(".json")
    }

    /// Guesses the kind from the extension: `.idx`/`.bin` Megatron (the prefix
    /// is taken), `.npy`, `.jsonl`/`.json` (also `.gz`, `.zst`), `.parquet`/`.pq` (the
    /// token-list column is `jsonl_field` as well), else a raw array of
    /// `raw_dtype` (an error when none is given).
    pub fn detect(
        path: impl AsRef<Path>,
        raw_dtype: Option<InDtype>,
        jsonl_field: &str,
    ) -> Result<Input> {
        let path = path.as_ref();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let kind = match ext {
            // A `.bin` is Megatron only next to its `.idx`; otherwise it may be a raw array.
            "idx" | "bin" if ext == "idx" || path.with_extension("idx").exists() => {
                return Ok(Input {
                    path: path.with_extension(""),
                    kind: InputKind::Megatron,
                });
            }
            "npy" => InputKind::Npy,
            _ if Input::is_parquet_name(path) => InputKind::ParquetIds {
                field: jsonl_field.to_string(),
            },
            _ if Input::is_jsonl_name(path) => InputKind::Jsonl {
                field: jsonl_field.to_string(),
            },
            _ => match raw_dtype {
                Some(d) => InputKind::Raw(d),
                None => {
                    return Err(FormatError::InvalidOption(format!(
                    "{}: cannot tell the input kind from the extension, and no input dtype for a raw token array was given",
                    path.display()
                )))
                }
            },
        };
        Ok(Input {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// Bytes of input this will read (for progress totals); 0 if unknown.
    pub fn size_hint(&self) -> u64 {
        let p = match self.kind {
            InputKind::Megatron => megatron_paths(&self.path).1,
            _ => self.path.clone(),
        };
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

/// Packs `inputs` in order into a new source at `out_dir`. `progress` receives
/// input bytes consumed.
pub fn pack_inputs(
    inputs: &[Input],
    opts: &PackOptions,
    out_dir: impl AsRef<Path>,
    progress: &dyn Fn(u64),
) -> Result<(Source, PackStats)> {
    let tokenizer = text_tokenizer(inputs)?;
    if let Some(tok) = &tokenizer {
        let max = opts.dtype.max_id();
        for i in inputs {
            if let Some(TextOptions { bos: Some(b), .. }) = i.kind.text_options() {
                let b = *b;
                if u64::from(b) > max {
                    return Err(FormatError::InvalidOption(format!(
                        "BOS id {b} does not fit {}",
                        opts.dtype
                    )));
                }
            }
        }
        tracing::info!(tokenizer = %tok.name(), "tokenizing text inputs");
    }
    let mut packer = Packer::create(out_dir, opts)?;
    if let Some(tok) = &tokenizer {
        packer.set_tokenizer(tok.info());
    }
    for input in inputs {
        tracing::info!(path = %input.path.display(), kind = ?input.kind, "importing");
        match &input.kind {
            InputKind::Megatron => import_megatron(&mut packer, &input.path, progress)?,
            InputKind::Raw(d) => import_raw(&mut packer, &input.path, *d, progress)?,
            InputKind::Npy => import_npy(&mut packer, &input.path, progress)?,
            InputKind::Jsonl { field } => import_jsonl(&mut packer, &input.path, field, progress)?,
            InputKind::ParquetIds { field } => {
                import_parquet_ids(&mut packer, &input.path, field, progress)?
            }
            InputKind::Text(t) | InputKind::ParquetText(t) => match &tokenizer {
                Some(tok) if matches!(input.kind, InputKind::Text(_)) => {
                    import_text(&mut packer, &input.path, t, tok, progress)?
                }
                Some(tok) => import_parquet_text(&mut packer, &input.path, t, tok, progress)?,
                None => return Err(FormatError::InvalidOption("no tokenizer loaded".into())),
            },
        }
    }
    packer.finish()
}

/// The tokenizer of the text inputs, if any. A source records one tokenizer,
/// so text inputs must share one and cannot be mixed with token inputs.
fn text_tokenizer(inputs: &[Input]) -> Result<Option<Tokenizer>> {
    let mut spec: Option<&crate::TokenizerSpec> = None;
    for i in inputs {
        if let Some(t) = i.kind.text_options() {
            match spec {
                None => spec = Some(&t.tokenizer),
                Some(s) if *s != t.tokenizer => {
                    return Err(FormatError::InvalidOption(format!(
                        "{}: text inputs of one source must share a tokenizer ({s} and {})",
                        i.path.display(),
                        t.tokenizer
                    )))
                }
                Some(_) => {}
            }
        }
    }
    let Some(spec) = spec else {
        return Ok(None);
    };
    if let Some(i) = inputs.iter().find(|i| i.kind.text_options().is_none()) {
        return Err(FormatError::InvalidOption(format!(
            "{}: a source records one tokenizer, so text inputs cannot be packed together with token inputs ({:?}); pack them into separate sources",
            i.path.display(),
            i.kind
        )));
    }
    Tokenizer::load(spec).map(Some)
}

const CHUNK_TOKENS: usize = 1 << 16;

/// Decodes little-endian elements of `dt` from `bytes` into `out` (cleared
/// first), rejecting any above `max` or negative: returns the element index
/// and value of the first bad one.
pub(crate) fn decode_tokens(
    bytes: &[u8],
    dt: InDtype,
    max: u64,
    out: &mut Vec<u32>,
) -> std::result::Result<(), (usize, i128)> {
    out.clear();
    // `bad` accumulates without branching; signed negatives cast to u64 are > max.
    let mut bad = false;
    macro_rules! run {
        ($t:ty, $n:literal, $wide:expr) => {{
            out.extend(bytes.chunks_exact($n).map(|c| {
                let mut a = [0u8; $n];
                a.copy_from_slice(c);
                let v = <$t>::from_le_bytes(a);
                let w: u64 = $wide(v);
                bad |= w > max;
                w as u32
            }));
            if bad {
                let i = bytes
                    .chunks_exact($n)
                    .position(|c| {
                        let mut a = [0u8; $n];
                        a.copy_from_slice(c);
                        $wide(<$t>::from_le_bytes(a)) > max
                    })
                    .unwrap_or(0);
                let mut a = [0u8; $n];
                a.copy_from_slice(&bytes[i * $n..(i + 1) * $n]);
                return Err((i, <$t>::from_le_bytes(a) as i128));
            }
        }};
    }
    match dt {
        InDtype::U8 => run!(u8, 1, u64::from),
        InDtype::I8 => run!(i8, 1, |v: i8| i64::from(v) as u64),
        InDtype::U16 => run!(u16, 2, u64::from),
        InDtype::I16 => run!(i16, 2, |v: i16| i64::from(v) as u64),
        InDtype::U32 => run!(u32, 4, u64::from),
        InDtype::I32 => run!(i32, 4, |v: i32| i64::from(v) as u64),
        InDtype::I64 => run!(i64, 8, |v: i64| v as u64),
    }
    Ok(())
}

fn token_error(path: &Path, pos: TokenPos, value: i128, dtype: Dtype) -> FormatError {
    if value < 0 {
        FormatError::NegativeToken {
            path: path.to_path_buf(),
            pos,
            value: i64::try_from(value).unwrap_or(i64::MIN),
        }
    } else {
        FormatError::TokenOverflow {
            path: path.to_path_buf(),
            pos,
            value: u64::try_from(value).unwrap_or(u64::MAX),
            dtype,
        }
    }
}

/// Pushes a flat array (the bytes of one document starting at `base` in the
/// file) through the packer, naming positions with `pos(token index, byte)`.
#[allow(clippy::too_many_arguments)]
fn push_array(
    packer: &mut Packer,
    path: &Path,
    bytes: &[u8],
    dt: InDtype,
    base: u64,
    pos: &dyn Fn(u64, u64) -> TokenPos,
    scratch: &mut Vec<u32>,
    progress: &mut Progress<'_>,
) -> Result<()> {
    let size = dt.size();
    let dtype = packer.dtype();
    for (ci, chunk) in bytes.chunks(CHUNK_TOKENS * size).enumerate() {
        let first = (ci * CHUNK_TOKENS) as u64;
        if let Err((i, v)) = decode_tokens(chunk, dt, dtype.max_id(), scratch) {
            let t = first + i as u64;
            return Err(token_error(path, pos(t, base + t * size as u64), v, dtype));
        }
        packer.push_tokens(scratch)?;
        progress.add(chunk.len() as u64);
    }
    Ok(())
}

/// Batches progress calls to about one per MiB.
pub(crate) struct Progress<'a> {
    f: &'a dyn Fn(u64),
    pending: u64,
}

impl<'a> Progress<'a> {
    pub(crate) fn new(f: &'a dyn Fn(u64)) -> Self {
        Progress { f, pending: 0 }
    }

    pub(crate) fn add(&mut self, n: u64) {
        self.pending += n;
        if self.pending >= 1 << 20 {
            (self.f)(self.pending);
            self.pending = 0;
        }
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        if self.pending > 0 {
            (self.f)(self.pending);
        }
    }
}

fn import_raw(packer: &mut Packer, path: &Path, dt: InDtype, progress: &dyn Fn(u64)) -> Result<()> {
    let map = crate::mmap::map_path(path)?;
    let len = map.len() as u64;
    let size = dt.size() as u64;
    if len % size != 0 {
        return Err(FormatError::RaggedArray {
            path: path.to_path_buf(),
            len,
            size,
            offset: len - len % size,
        });
    }
    let mut scratch = Vec::with_capacity(CHUNK_TOKENS);
    let mut prog = Progress {
        f: progress,
        pending: 0,
    };
    push_array(
        packer,
        path,
        &map,
        dt,
        0,
        &|token, byte| TokenPos::Array { token, byte },
        &mut scratch,
        &mut prog,
    )?;
    packer.end_document()
}
