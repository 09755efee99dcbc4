//! Importers: Megatron `.bin/.idx`, headerless token arrays, `.npy`, JSON Lines
//! (token ids, or text tokenized by [`crate::tokenize`]).
//!
//! Every importer validates token ids against the output dtype while decoding
//! and reports an overflowing or negative id with its file and position.
use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{FormatError, Result, TokenPos};
use crate::pack::{PackOptions, PackStats, Packer};
use crate::parquet_input::{import_parquet_ids, import_parquet_text};
use crate::source::Source;
use crate::text_input::import_text;
use crate::tokenize::{TextOptions, Tokenizer};
use crate::Dtype;

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

// ---------------------------------------------------------------- .npy

/// The parsed header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: InDtype,
    /// Array shape.
    pub shape: Vec<u64>,
    /// Byte offset of the data.
    pub data_offset: u64,
}

/// Parses a `.npy` header from the start of `bytes` (the whole file).
pub fn parse_npy_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    let bad = |offset: u64, reason: String| FormatError::Npy {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        if bytes.len() >= 6 && &bytes[..6] != MAGIC {
            return Err(FormatError::BadMagic {
                path: path.to_path_buf(),
                expected: "\\x93NUMPY".into(),
                found: bytes[..6].escape_ascii().to_string(),
            });
        }
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the .npy preamble",
            expected: 10,
            actual: bytes.len() as u64,
        });
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u64::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10u64),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(FormatError::Truncated {
                    path: path.to_path_buf(),
                    what: "the .npy preamble",
                    expected: 12,
                    actual: bytes.len() as u64,
                });
            }
            (
                u64::from(u32::from_le_bytes([
                    bytes[8], bytes[9], bytes[10], bytes[11],
                ])),
                12u64,
            )
        }
        v => {
            return Err(FormatError::UnsupportedVersion {
                path: path.to_path_buf(),
                offset: 6,
                found: u64::from(v),
                supported: 3,
            });
        }
    };
    let data_offset = hstart + hlen;
    if (bytes.len() as u64) < data_offset {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the .npy header",
            expected: data_offset,
            actual: bytes.len() as u64,
        });
    }
    let text = std::str::from_utf8(&bytes[hstart as usize..data_offset as usize])
        .map_err(|_| bad(hstart, "header is not text".into()))?;
    let field = |key: &str| -> Result<&str> {
        let k = format!("'{key}':");
        let at = text
            .find(&k)
            .ok_or_else(|| bad(hstart, format!("header has no '{key}'")))?;
        Ok(text[at + k.len()..].trim_start())
    };
    let descr_rest = field("descr")?;
    let descr = descr_rest
        .strip_prefix('\'')
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad(hstart, "descr is not a quoted string".into()))?;
    let split = descr.chars().next().map_or(0, char::len_utf8);
    let (endian, code) = descr.split_at(split);
    let dtype = match code {
        "u1" => InDtype::U8,
        "i1" => InDtype::I8,
        "u2" => InDtype::U16,
        "i2" => InDtype::I16,
        "u4" => InDtype::U32,
        "i4" => InDtype::I32,
        "i8" => InDtype::I64,
        _ => {
            return Err(bad(
                hstart,
                format!("unsupported dtype '{descr}' (integers u1 i1 u2 i2 u4 i4 i8 only)"),
            ))
        }
    };
    if endian == ">" && dtype.size() > 1 {
        return Err(bad(
            hstart,
            format!("big-endian dtype '{descr}' is not supported"),
        ));
    }
    if !matches!(endian, "<" | "|" | "=" | ">") {
        return Err(bad(
            hstart,
            format!("dtype '{descr}' has no byte-order mark"),
        ));
    }
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_rest = field("shape")?;
    let inner = shape_rest
        .strip_prefix('(')
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad(hstart, "shape is not a tuple".into()))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(
            part.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| bad(hstart, format!("bad shape entry '{part}'")))?,
        );
    }
    if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(bad(
            hstart,
            "Fortran-order arrays with more than one dimension are not supported".into(),
        ));
    }
    let elems = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(hstart, "shape overflows".into()))?;
    let need = elems
        .checked_mul(dtype.size() as u64)
        .and_then(|b| b.checked_add(data_offset))
        .ok_or_else(|| bad(hstart, "shape overflows".into()))?;
    let actual = bytes.len() as u64;
    if actual < need {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the .npy data",
            expected: need,
            actual,
        });
    }
    if actual > need {
        return Err(bad(
            need,
            format!("{} bytes after the array data", actual - need),
        ));
    }
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset,
    })
}

fn import_npy(packer: &mut Packer, path: &Path, progress: &dyn Fn(u64)) -> Result<()> {
    let map = crate::mmap::map_path(path)?;
    let h = parse_npy_header(path, &map)?;
    let data = &map[h.data_offset as usize..];
    let mut scratch = Vec::with_capacity(CHUNK_TOKENS);
    let mut prog = Progress {
        f: progress,
        pending: 0,
    };
    prog.add(h.data_offset);
    push_array(
        packer,
        path,
        data,
        h.dtype,
        h.data_offset,
        &|token, byte| TokenPos::Array { token, byte },
        &mut scratch,
        &mut prog,
    )?;
    packer.end_document()
}

// ---------------------------------------------------------------- Megatron

/// Magic bytes of a Megatron `.idx` file.
pub const MEGATRON_MAGIC: &[u8; 9] = b"MMIDIDX\0\0";
/// Byte offset of the arrays in a Megatron `.idx` file.
pub const MEGATRON_ARRAYS_OFFSET: u64 = 34;

/// `(prefix.idx, prefix.bin)`.
pub fn megatron_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let s = prefix.as_os_str().to_owned();
    let mut idx = s.clone();
    idx.push(".idx");
    let mut bin = s;
    bin.push(".bin");
    (PathBuf::from(idx), PathBuf::from(bin))
}

/// A validated Megatron index: a view of the `.idx` bytes (nothing is copied,
/// so indexes of any size cost no memory beyond their mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MegatronIndex<'a> {
    /// Token type of the `.bin`.
    pub dtype: InDtype,
    /// Number of sequences S.
    pub sequences: u64,
    /// Number of document-index entries D.
    pub doc_entries: u64,
    idx: &'a [u8],
}

impl MegatronIndex<'_> {
    /// Length in tokens of sequence `i` (`i < sequences`).
    pub fn length(&self, i: u64) -> u64 {
        let o = MEGATRON_ARRAYS_OFFSET as usize + 4 * i as usize;
        u64::from(u32::from_le_bytes([
            self.idx[o],
            self.idx[o + 1],
            self.idx[o + 2],
            self.idx[o + 3],
        ]))
    }
    /// Byte offset in the `.bin` of sequence `i` (`i < sequences`).
    pub fn pointer(&self, i: u64) -> u64 {
        le_u64(
            self.idx,
            MEGATRON_ARRAYS_OFFSET as usize + 4 * self.sequences as usize + 8 * i as usize,
        )
    }
    /// Document-index entry `j` (`j < doc_entries`).
    pub fn doc_index(&self, j: u64) -> u64 {
        le_u64(
            self.idx,
            MEGATRON_ARRAYS_OFFSET as usize + 12 * self.sequences as usize + 8 * j as usize,
        )
    }
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Parses `idx` (the `.idx` bytes) and checks every pointer against `bin_len`.
pub fn parse_megatron_index<'a>(
    idx_path: &Path,
    idx: &'a [u8],
    bin_path: &Path,
    bin_len: u64,
) -> Result<MegatronIndex<'a>> {
    let bad = |offset: u64, reason: String| FormatError::Megatron {
        path: idx_path.to_path_buf(),
        offset,
        reason,
    };
    let actual = idx.len() as u64;
    if idx.len() < 9 || &idx[..9] != MEGATRON_MAGIC {
        let n = idx.len().min(9);
        if idx[..n] != MEGATRON_MAGIC[..n] || n == 9 {
            return Err(FormatError::BadMagic {
                path: idx_path.to_path_buf(),
                expected: "MMIDIDX\\0\\0".into(),
                found: idx[..n].escape_ascii().to_string(),
            });
        }
    }
    if actual < MEGATRON_ARRAYS_OFFSET {
        return Err(FormatError::Truncated {
            path: idx_path.to_path_buf(),
            what: "the Megatron index header",
            expected: 34,
            actual,
        });
    }
    let version = le_u64(idx, 9);
    if version != 1 {
        return Err(FormatError::UnsupportedVersion {
            path: idx_path.to_path_buf(),
            offset: 9,
            found: version,
            supported: 1,
        });
    }
    let dtype = match idx[17] {
        1 => InDtype::U8,
        2 => InDtype::I8,
        3 => InDtype::I16,
        4 => InDtype::I32,
        5 => InDtype::I64,
        8 => InDtype::U16,
        6 => {
            return Err(bad(
                17,
                "token dtype code 6 (f64) is not an integer type".into(),
            ))
        }
        7 => {
            return Err(bad(
                17,
                "token dtype code 7 (f32) is not an integer type".into(),
            ))
        }
        c => return Err(bad(17, format!("unknown token dtype code {c}"))),
    };
    let s = le_u64(idx, 18);
    let d = le_u64(idx, 26);
    let need = s
        .checked_mul(12)
        .and_then(|x| d.checked_mul(8).and_then(|y| x.checked_add(y)))
        .and_then(|x| x.checked_add(MEGATRON_ARRAYS_OFFSET))
        .ok_or_else(|| {
            bad(
                18,
                format!("sequence count {s} / document count {d} overflow"),
            )
        })?;
    if actual < need {
        return Err(FormatError::Truncated {
            path: idx_path.to_path_buf(),
            what: "the Megatron index arrays",
            expected: need,
            actual,
        });
    }
    if actual > need {
        return Err(bad(
            need,
            format!(
                "{} trailing bytes after the arrays (counts S={s}, D={d})",
                actual - need
            ),
        ));
    }
    let s_us = s as usize;
    let len_off = MEGATRON_ARRAYS_OFFSET as usize;
    let ptr_off = len_off + 4 * s_us;
    let doc_off = ptr_off + 8 * s_us;
    let size = dtype.size() as u64;
    for i in 0..s_us {
        let lo = len_off + 4 * i;
        let len = i32::from_le_bytes([idx[lo], idx[lo + 1], idx[lo + 2], idx[lo + 3]]);
        if len < 0 {
            return Err(bad(
                lo as u64,
                format!("sequence {i} has negative length {len}"),
            ));
        }
        let po = ptr_off + 8 * i;
        let ptr = le_u64(idx, po) as i64;
        if ptr < 0 {
            return Err(bad(
                po as u64,
                format!("sequence {i} has negative pointer {ptr}"),
            ));
        }
        let end = (ptr as u64).checked_add(len as u64 * size);
        if end.is_none_or(|e| e > bin_len) {
            return Err(bad(
                po as u64,
                format!(
                    "sequence {i}: pointer {ptr} + {len} tokens x {size} bytes runs past the end of {} ({bin_len} bytes)",
                    bin_path.display()
                ),
            ));
        }
    }
    let mut prev = 0u64;
    for j in 0..d as usize {
        let o = doc_off + 8 * j;
        let v = le_u64(idx, o) as i64;
        if v < 0 || v as u64 > s || (j > 0 && (v as u64) < prev) {
            return Err(bad(
                o as u64,
                format!("document index {j} = {v} is not a non-decreasing value in 0..={s}"),
            ));
        }
        prev = v as u64;
    }
    Ok(MegatronIndex {
        dtype,
        sequences: s,
        doc_entries: d,
        idx,
    })
}

fn import_megatron(packer: &mut Packer, prefix: &Path, progress: &dyn Fn(u64)) -> Result<()> {
    let (idx_path, bin_path) = megatron_paths(prefix);
    let idx = crate::mmap::map_path(&idx_path)?;
    let bin = crate::mmap::map_path(&bin_path)?;
    let index = parse_megatron_index(&idx_path, &idx, &bin_path, bin.len() as u64)?;
    let size = index.dtype.size();
    let mut scratch = Vec::with_capacity(CHUNK_TOKENS);
    let mut prog = Progress {
        f: progress,
        pending: 0,
    };
    for seq in 0..index.sequences {
        let (len, ptr) = (index.length(seq), index.pointer(seq));
        let start = ptr as usize;
        let bytes = &bin[start..start + len as usize * size];
        let pos = |token: u64, byte: u64| TokenPos::Megatron {
            sequence: seq,
            token,
            byte,
        };
        push_array(
            packer,
            &bin_path,
            bytes,
            index.dtype,
            ptr,
            &pos,
            &mut scratch,
            &mut prog,
        )?;
        packer.end_document()?;
    }
    Ok(())
}

// ---------------------------------------------------------------- JSON Lines

fn import_jsonl(
    packer: &mut Packer,
    path: &Path,
    field: &str,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let counter = std::cell::Cell::new(0u64);
    let mut reader = crate::text_input::open_lines(path, &counter)?;
    let mut line = String::new();
    let mut tokens: Vec<u32> = Vec::new();
    let mut prog = Progress::new(progress);
    let mut reported = 0u64;
    let dtype = packer.dtype();
    let max = dtype.max_id();
    for lineno in 1u64.. {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| FormatError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        // File bytes (compressed ones for gzip).
        prog.add(counter.get() - reported);
        reported = counter.get();
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let jerr = |reason: String| FormatError::Jsonl {
            path: path.to_path_buf(),
            line: lineno,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| jerr(e.to_string()))?;
        let arr = value
            .get(field)
            .ok_or_else(|| jerr(format!("no field '{field}'")))?
            .as_array()
            .ok_or_else(|| jerr(format!("field '{field}' is not an array")))?;
        tokens.clear();
        for (element, v) in arr.iter().enumerate() {
            let pos = TokenPos::Line {
                line: lineno,
                element: element as u64,
            };
            let t: i128 = if let Some(u) = v.as_u64() {
                i128::from(u)
            } else if let Some(i) = v.as_i64() {
                i128::from(i)
            } else {
                return Err(jerr(format!(
                    "element {element} of '{field}' is not an integer token id: {v}"
                )));
            };
            if t < 0 || t > i128::from(max) {
                return Err(token_error(path, pos, t, dtype));
            }
            tokens.push(t as u32);
        }
        packer.push_document(&tokens)?;
    }
    Ok(())
}
