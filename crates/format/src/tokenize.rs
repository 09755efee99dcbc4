//! Text input: JSON Lines of raw text (or a Parquet string column, see
//! [`crate::InputKind::ParquetText`]), tokenized while packing.
//!
//! Each record's text field is encoded with an OpenAI BPE encoding from the
//! `tiktoken-rs` crate, which embeds the rank tables (nothing is downloaded at
//! run time). Text is encoded like tiktoken's `encode_ordinary`: special-token
//! text such as `<|endoftext|>` inside a document is ordinary text, never a
//! special id. The packer then appends the EOS id after every document (like
//! Megatron's `--append-eod`); an optional BOS id goes before it.
//!
//! Lines are read in batches and tokenized on all cores; documents are packed
//! in input order, so the output does not depend on the thread count.
//!
//! ```no_run
//! use seqfeed_format::{pack_inputs, Dtype, Encoding, Input, PackOptions, TextOptions, Tokenizer};
//! let tok = Tokenizer::tiktoken(Encoding::Cl100kBase)?;
//! let opts = PackOptions::new("web", Dtype::U32, 1025).eos(tok.end_of_text());
//! let input = Input::text("corpus.jsonl", TextOptions::new(Encoding::Cl100kBase));
//! let (source, stats) = pack_inputs(&[input], &opts, "data/web", &|_| {})?;
//! assert_eq!(source.manifest().tokenizer.as_ref().unwrap().name, "tiktoken:cl100k_base");
//! # Ok::<(), seqfeed_format::FormatError>(())
//! ```
use std::fmt;
use std::io::{BufRead, Read};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;

use crate::error::{FormatError, Result, TokenPos};
use crate::import::Progress;
use crate::pack::{first_overflow, Packer};
use crate::source::TokenizerInfo;

/// A tiktoken BPE encoding embedded in the binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `cl100k_base` (GPT-4, GPT-3.5): 100277 ids, `<|endoftext|>` = 100257.
    Cl100kBase,
    /// `o200k_base` (GPT-4o): 200019 ids, `<|endoftext|>` = 199999.
    O200kBase,
    /// `p50k_base` (Codex, text-davinci-002/003): 50281 ids, `<|endoftext|>` = 50256.
    P50kBase,
    /// `r50k_base` (GPT-3, also known as `gpt2`): 50257 ids, `<|endoftext|>` = 50256.
    R50kBase,
}

impl Encoding {
    /// Every supported encoding.
    pub const ALL: [Encoding; 4] = [
        Encoding::Cl100kBase,
        Encoding::O200kBase,
        Encoding::P50kBase,
        Encoding::R50kBase,
    ];

    /// tiktoken's name (`cl100k_base`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::O200kBase => "o200k_base",
            Encoding::P50kBase => "p50k_base",
            Encoding::R50kBase => "r50k_base",
        }
    }

    /// Number of ids (tiktoken's `n_vocab`: the largest id, special or not, plus one).
    pub fn n_vocab(self) -> u32 {
        match self {
            Encoding::Cl100kBase => 100_277,
            Encoding::O200kBase => 200_019,
            Encoding::P50kBase => 50_281,
            Encoding::R50kBase => 50_257,
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.strip_prefix("tiktoken:").unwrap_or(s);
        Encoding::ALL
            .into_iter()
            .find(|e| e.name() == s || (s == "gpt2" && *e == Encoding::R50kBase))
            .ok_or_else(|| {
                format!(
                    "unknown tiktoken encoding '{s}' (cl100k_base, o200k_base, p50k_base, r50k_base)"
                )
            })
    }
}

/// How to read and tokenize a text input ([`crate::InputKind::Text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    /// The string field of each JSON record holding the document text.
    pub field: String,
    /// The encoding.
    pub encoding: Encoding,
    /// Prepended to every document, if set.
    pub bos: Option<u32>,
}

impl TextOptions {
    /// Field `"text"`, no BOS.
    pub fn new(encoding: Encoding) -> Self {
        TextOptions {
            field: "text".into(),
            encoding,
            bos: None,
        }
    }
    /// Sets the text field name.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }
    /// Sets the BOS id.
    pub fn bos(mut self, bos: u32) -> Self {
        self.bos = Some(bos);
        self
    }
}

/// A loaded tokenizer.
pub struct Tokenizer {
    encoding: Encoding,
    bpe: tiktoken_rs::CoreBPE,
    end_of_text: u32,
    specials: Vec<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("encoding", &self.encoding)
            .field("end_of_text", &self.end_of_text)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads an embedded tiktoken encoding (about 0.1-0.3 s: the rank table is parsed).
    pub fn tiktoken(encoding: Encoding) -> Result<Tokenizer> {
        let bpe = match encoding {
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base(),
            Encoding::O200kBase => tiktoken_rs::o200k_base(),
            Encoding::P50kBase => tiktoken_rs::p50k_base(),
            Encoding::R50kBase => tiktoken_rs::r50k_base(),
        }
        .map_err(|e| {
            FormatError::InvalidOption(format!("loading tiktoken encoding {encoding}: {e}"))
        })?;
        let mut specials = Vec::new();
        let mut end_of_text = None;
        for s in bpe.special_tokens() {
            if let [id] = bpe.encode_with_special_tokens(s)[..] {
                specials.push(id);
                if s == tiktoken_rs::ENDOFTEXT {
                    end_of_text = Some(id);
                }
            }
        }
        specials.sort_unstable();
        let end_of_text = end_of_text.ok_or_else(|| {
            FormatError::InvalidOption(format!("tiktoken encoding {encoding} has no <|endoftext|>"))
        })?;
        Ok(Tokenizer {
            encoding,
            bpe,
            end_of_text,
            specials,
        })
    }

    /// The encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The name recorded in manifests: `tiktoken:<encoding>`.
    pub fn name(&self) -> String {
        format!("tiktoken:{}", self.encoding)
    }

    /// The id of `<|endoftext|>`, the default EOS.
    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    /// Number of ids ([`Encoding::n_vocab`]).
    pub fn n_vocab(&self) -> u32 {
        self.encoding.n_vocab()
    }

    /// The special-token ids, ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.specials
    }

    /// Encodes `text` with `encode_ordinary` semantics: special-token text is
    /// encoded as ordinary text. Fails (instead of panicking) if the regex
    /// engine gives up on a pathological input.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        // tiktoken-rs unwraps the regex engine's result (a backtrack limit can be
        // hit on pathological input); keep that from taking the process down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.bpe.encode_ordinary(text)
        }))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            format!("the tokenizer failed on this text: {msg}")
        })
    }

    /// Decodes ids to text (invalid UTF-8 is replaced with U+FFFD); an unknown id is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.bpe.decode_bytes(ids).map_err(|e| {
            FormatError::InvalidOption(format!("decoding: unknown token id {}", e.token))
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The encoding's rank table in tiktoken's file format (`base64(token bytes) rank\n`
    /// for every non-special id in ascending order): byte for byte the
    /// `<encoding>.tiktoken` file that tiktoken and tiktoken-rs load.
    pub fn rank_table(&self) -> Vec<u8> {
        let mut out = String::with_capacity(self.n_vocab() as usize * 16);
        for id in 0..self.n_vocab() {
            if self.specials.binary_search(&id).is_ok() {
                continue;
            }
            // Ids that are neither special nor in the table (gaps) are skipped.
            if let Ok(bytes) = self.bpe.decode_bytes(&[id]) {
                base64::engine::general_purpose::STANDARD.encode_string(&bytes, &mut out);
                out.push(' ');
                out.push_str(&id.to_string());
                out.push('\n');
            }
        }
        out.into_bytes()
    }

    /// What a source manifest records: name, blake3 of [`Tokenizer::rank_table`], n_vocab.
    pub fn info(&self) -> TokenizerInfo {
        TokenizerInfo {
            name: self.name(),
            vocab_hash: blake3::hash(&self.rank_table()).to_hex().to_string(),
            n_vocab: u64::from(self.n_vocab()),
        }
    }
}

/// Lines per batch handed to the tokenizer threads, and the batch's byte budget.
const BATCH_LINES: usize = 4096;
const BATCH_BYTES: usize = 8 << 20;

/// Opens a (possibly gzip-compressed: detected by its magic bytes) text file,
/// counting the file bytes read in `counter`.
pub(crate) fn open_lines<'a>(
    path: &Path,
    counter: &'a std::cell::Cell<u64>,
) -> Result<Box<dyn BufRead + 'a>> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io("open", path, e))?;
    let mut raw = std::io::BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            counter,
        },
    );
    let gz = raw
        .fill_buf()
        .map_err(|e| FormatError::io("read", path, e))?
        .starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(raw),
        ))
    } else {
        Box::new(raw)
    })
}

struct Counting<'a, R> {
    inner: R,
    counter: &'a std::cell::Cell<u64>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.set(self.counter.get() + n as u64);
        Ok(n)
    }
}

/// Parses one line and tokenizes its text: `None` for a blank line.
fn encode_line(
    path: &Path,
    lineno: u64,
    line: &[u8],
    field: &str,
    tok: &Tokenizer,
) -> Result<Option<Vec<u32>>> {
    let jerr = |reason: String| FormatError::Jsonl {
        path: path.to_path_buf(),
        line: lineno,
        reason,
    };
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| jerr(format!("malformed JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| {
        jerr(format!(
            "the record is not a JSON object: {}",
            kind_of(&value)
        ))
    })?;
    let text = match obj.get(field) {
        None => return Err(jerr(format!("no field '{field}'"))),
        Some(serde_json::Value::String(s)) => s,
        Some(v) => {
            return Err(jerr(format!(
                "field '{field}' is {}, not a string",
                kind_of(v)
            )))
        }
    };
    tok.encode(text).map(Some).map_err(jerr)
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Tokenizes every line of `lines` (`(line number, bytes)`) on up to `threads`
/// threads; results in input order.
fn encode_batch(
    path: &Path,
    lines: &[(u64, Vec<u8>)],
    field: &str,
    tok: &Tokenizer,
    threads: usize,
) -> Vec<Result<Option<Vec<u32>>>> {
    par_map(lines, threads, |(n, l)| {
        encode_line(path, *n, l, field, tok)
    })
    .into_iter()
    .zip(lines)
    .map(|(r, (n, _))| {
        r.unwrap_or_else(|| {
            Err(FormatError::Jsonl {
                path: path.to_path_buf(),
                line: *n,
                reason: "a tokenizer thread failed".into(),
            })
        })
    })
    .collect()
}

/// Tokenizes `texts` on up to `threads` threads; results in input order.
pub(crate) fn encode_texts(
    tok: &Tokenizer,
    texts: &[String],
    threads: usize,
) -> Vec<std::result::Result<Vec<u32>, String>> {
    par_map(texts, threads, |t| tok.encode(t))
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("a tokenizer thread failed".into())))
        .collect()
}

/// Applies `f` to every item on up to `threads` threads; results in input
/// order (`None` only if a worker panicked).
fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.iter().map(|i| Some(f(i))).collect();
    }
    // Threads take blocks of items from a shared cursor, so long items balance out.
    const BLOCK: usize = 16;
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = Vec::new();
    out.resize_with(items.len(), || None);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let start = next.fetch_add(BLOCK, Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        let end = (start + BLOCK).min(items.len());
                        for (i, item) in items[start..end].iter().enumerate() {
                            done.push((start + i, f(item)));
                        }
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            // A worker cannot panic (encode catches the tokenizer's panics); a
            // missing result is reported by the caller all the same.
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    out[i] = Some(r);
                }
            }
        }
    });
    out
}

/// Packs the documents of a text JSON Lines file (plain or gzip).
pub(crate) fn import_text(
    packer: &mut Packer,
    path: &Path,
    opts: &TextOptions,
    tok: &Tokenizer,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let dtype = packer.dtype();
    let max = dtype.max_id();
    if let Some(b) = opts.bos {
        if u64::from(b) > max {
            return Err(FormatError::InvalidOption(format!(
                "BOS id {b} does not fit {dtype}"
            )));
        }
    }
    let counter = std::cell::Cell::new(0u64);
    let mut reader = open_lines(path, &counter)?;
    let mut prog = Progress::new(progress);
    let mut reported = 0u64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH_LINES);
    let mut lineno = 0u64;
    let mut document = 0u64;
    let mut eof = false;
    while !eof {
        batch.clear();
        let mut bytes = 0usize;
        while batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
            let mut line = Vec::new();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| FormatError::Jsonl {
                    path: path.to_path_buf(),
                    line: lineno + 1,
                    reason: format!("read error: {e}"),
                })?;
            if n == 0 {
                eof = true;
                break;
            }
            lineno += 1;
            bytes += n;
            batch.push((lineno, line));
        }
        for (result, (line, _)) in encode_batch(path, &batch, &opts.field, tok, threads)
            .into_iter()
            .zip(&batch)
        {
            let Some(tokens) = result? else { continue };
            if let Some((i, v)) = first_overflow(&tokens, max) {
                return Err(FormatError::TokenOverflow {
                    path: path.to_path_buf(),
                    pos: TokenPos::Text {
                        line: *line,
                        document,
                        token: i as u64,
                    },
                    value: u64::from(v),
                    dtype,
                });
            }
            if let Some(b) = opts.bos {
                packer.push_tokens(&[b])?;
            }
            packer.push_tokens(&tokens)?;
            packer.end_document()?;
            document += 1;
        }
        prog.add(counter.get() - reported);
        reported = counter.get();
    }
    Ok(())
}
