//! Text input: JSON Lines of raw text (plain, gzip or zstd; or a Parquet
//! string column, see [`crate::InputKind::ParquetText`]), tokenized while packing.
//!
//! Two tokenizers ([`TokenizerSpec`]):
//!
//! * an OpenAI BPE encoding from the `tiktoken-rs` crate, which embeds the
//!   rank tables (nothing is downloaded at run time). Text is encoded like
//!   tiktoken's `encode_ordinary`: special-token text such as `<|endoftext|>`
//!   inside a document is ordinary text, never a special id;
//! * a Hugging Face `tokenizer.json` file, loaded with the `tokenizers` crate
//!   (the library under the Python `tokenizers` wheel). Text is encoded like
//!   Python's `Tokenizer.encode(text, add_special_tokens=False)`: the
//!   post-processor adds nothing (no `[CLS]`/`<s>` template), but the
//!   tokenizer's added tokens, special ones included, are recognised inside
//!   the text as the library does (`</s>` in a document becomes the `</s>` id).
//!   Truncation and padding set in the file are switched off: a document is
//!   packed whole.
//!
//! The packer then appends the EOS id after every document (like Megatron's
//! `--append-eod`); an optional BOS id goes before it.
//!
//! Lines are read in batches and tokenized on all cores; documents are packed
//! in input order, so the output does not depend on the thread count.
//!
//! ```no_run
//! use seqfeed_format::{pack_inputs, Dtype, Encoding, Input, PackOptions, TextOptions, Tokenizer};
//! let tok = Tokenizer::tiktoken(Encoding::Cl100kBase)?;
//! let opts = PackOptions::new("web", Dtype::U32, 1025).eos(tok.default_eos()?);
//! let input = Input::text("corpus.jsonl", TextOptions::new(Encoding::Cl100kBase));
//! let (source, stats) = pack_inputs(&[input], &opts, "data/web", &|_| {})?;
//! assert_eq!(source.manifest().tokenizer.as_ref().unwrap().name, "tiktoken:cl100k_base");
//! # Ok::<(), seqfeed_format::FormatError>(())
//! ```
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;

use crate::error::{FormatError, Result};
use crate::hf::HfTokenizer;
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

/// Which tokenizer encodes a text input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenizerSpec {
    /// An embedded tiktoken encoding.
    Tiktoken(Encoding),
    /// A Hugging Face `tokenizer.json` file.
    HuggingFace(PathBuf),
}

impl From<Encoding> for TokenizerSpec {
    fn from(e: Encoding) -> Self {
        TokenizerSpec::Tiktoken(e)
    }
}

impl fmt::Display for TokenizerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerSpec::Tiktoken(e) => write!(f, "tiktoken:{e}"),
            TokenizerSpec::HuggingFace(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How to read and tokenize a text input ([`crate::InputKind::Text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    /// The string field of each JSON record holding the document text.
    pub field: String,
    /// The tokenizer.
    pub tokenizer: TokenizerSpec,
    /// Prepended to every document, if set.
    pub bos: Option<u32>,
}

impl TextOptions {
    /// Field `"text"`, no BOS.
    pub fn new(tokenizer: impl Into<TokenizerSpec>) -> Self {
        TextOptions {
            field: "text".into(),
            tokenizer: tokenizer.into(),
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

enum Backend {
    Tiktoken {
        encoding: Encoding,
        bpe: Box<tiktoken_rs::CoreBPE>,
    },
    HuggingFace(Box<HfTokenizer>),
}

/// A loaded tokenizer: an embedded tiktoken encoding or a `tokenizer.json`.
pub struct Tokenizer {
    spec: TokenizerSpec,
    backend: Backend,
    /// For tiktoken, `vocab_hash` is left empty here and computed on the first
    /// [`Tokenizer::info`] call (hashing the rank table takes a while).
    info: TokenizerInfo,
    rank_table_hash: std::sync::OnceLock<String>,
    /// The end-of-text token when it is known unambiguously: `(id, text)`.
    end_of_text: std::result::Result<(u32, String), String>,
    specials: Vec<u32>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("spec", &self.spec)
            .field("info", &self.info)
            .field("end_of_text", &self.end_of_text)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads the tokenizer `spec` names.
    pub fn load(spec: &TokenizerSpec) -> Result<Tokenizer> {
        match spec {
            TokenizerSpec::Tiktoken(e) => Tokenizer::tiktoken(*e),
            TokenizerSpec::HuggingFace(p) => Tokenizer::hugging_face(p),
        }
    }

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
                    end_of_text = Some((id, s.to_string()));
                }
            }
        }
        specials.sort_unstable();
        let end_of_text = end_of_text.ok_or_else(|| {
            FormatError::InvalidOption(format!("tiktoken encoding {encoding} has no <|endoftext|>"))
        })?;
        Ok(Tokenizer {
            spec: TokenizerSpec::Tiktoken(encoding),
            backend: Backend::Tiktoken {
                encoding,
                bpe: Box::new(bpe),
            },
            info: TokenizerInfo {
                name: format!("tiktoken:{encoding}"),
                vocab_hash: String::new(),
                n_vocab: u64::from(encoding.n_vocab()),
            },
            rank_table_hash: std::sync::OnceLock::new(),
            end_of_text: Ok(end_of_text),
            specials,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. Truncation and padding set in
    /// the file are switched off (documents are packed whole). The EOS is
    /// found among the special added tokens when exactly one of the usual
    /// end-of-text tokens is there (see [`Tokenizer::default_eos`]).
    pub fn hugging_face(path: &Path) -> Result<Tokenizer> {
        let hf = HfTokenizer::load(path)?;
        Ok(Tokenizer {
            spec: TokenizerSpec::HuggingFace(path.to_path_buf()),
            info: hf.info.clone(),
            rank_table_hash: std::sync::OnceLock::new(),
            end_of_text: hf.end_of_text.clone(),
            specials: hf.special_ids(),
            backend: Backend::HuggingFace(Box::new(hf)),
        })
    }

    /// What was loaded.
    pub fn spec(&self) -> &TokenizerSpec {
        &self.spec
    }

    /// The tiktoken encoding, for a tiktoken tokenizer.
    pub fn encoding(&self) -> Option<Encoding> {
        match self.backend {
            Backend::Tiktoken { encoding, .. } => Some(encoding),
            Backend::HuggingFace(_) => None,
        }
    }

    /// The name recorded in manifests: `tiktoken:<encoding>`, or `hf:<label>`
    /// for a `tokenizer.json` (the file's stem, or its directory's name when
    /// the file is called `tokenizer.json`).
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The end-of-text id, when the tokenizer has one unambiguously
    /// (`<|endoftext|>` for tiktoken).
    pub fn end_of_text(&self) -> Option<u32> {
        self.end_of_text.as_ref().ok().map(|(id, _)| *id)
    }

    /// The end-of-text token's text, when known (see [`Tokenizer::end_of_text`]).
    pub fn end_of_text_token(&self) -> Option<&str> {
        self.end_of_text.as_ref().ok().map(|(_, s)| s.as_str())
    }

    /// The EOS to append when none is given: [`Tokenizer::end_of_text`], or
    /// an error saying why it cannot be chosen (none, or several candidates)
    /// and asking for an explicit one.
    pub fn default_eos(&self) -> Result<u32> {
        match &self.end_of_text {
            Ok((id, _)) => Ok(*id),
            Err(why) => Err(FormatError::InvalidOption(format!(
                "{}: {why}; give the EOS explicitly (--eos TOKEN or --eos ID) or --no-eos",
                self.spec
            ))),
        }
    }

    /// Number of ids: tiktoken's `n_vocab`, or for a `tokenizer.json` the
    /// vocabulary size with added tokens (Python's
    /// `get_vocab_size(with_added_tokens=True)`).
    pub fn n_vocab(&self) -> u32 {
        u32::try_from(self.info.n_vocab).unwrap_or(u32::MAX)
    }

    /// The largest id the tokenizer can produce.
    pub fn max_id(&self) -> u32 {
        match &self.backend {
            Backend::Tiktoken { encoding, .. } => encoding.n_vocab() - 1,
            Backend::HuggingFace(hf) => hf.max_id,
        }
    }

    /// The special-token ids, ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.specials
    }

    /// The id of a token given by its text (a special token such as
    /// `<|endoftext|>` or `</s>`, or any single vocabulary entry), or by its
    /// decimal id. An id outside the vocabulary or an unknown token is an
    /// error naming it.
    pub fn resolve_token(&self, token: &str) -> Result<u32> {
        let bad = |why: String| FormatError::InvalidOption(format!("{}: {why}", self.spec));
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            let id: u32 = token
                .parse()
                .map_err(|_| bad(format!("token id {token} is too large")))?;
            if id > self.max_id() || !self.has_id(id) {
                return Err(bad(format!(
                    "token id {id} is not in the vocabulary (ids go up to {})",
                    self.max_id()
                )));
            }
            return Ok(id);
        }
        let found = match &self.backend {
            Backend::Tiktoken { bpe, .. } => {
                if bpe.special_tokens().iter().any(|s| *s == token) {
                    match bpe.encode_with_special_tokens(token)[..] {
                        [id] => Some(id),
                        _ => None,
                    }
                } else {
                    match self.encode(token).ok().as_deref() {
                        Some([id]) => Some(*id),
                        _ => None,
                    }
                }
            }
            Backend::HuggingFace(hf) => hf.tok.token_to_id(token),
        };
        found.ok_or_else(|| {
            let specials = self
                .specials
                .iter()
                .filter_map(|&id| self.token_text(id))
                .take(12)
                .collect::<Vec<_>>()
                .join(" ");
            bad(format!(
                "'{token}' is not a token of this vocabulary (special tokens: {specials})"
            ))
        })
    }

    fn has_id(&self, id: u32) -> bool {
        match &self.backend {
            Backend::Tiktoken { bpe, .. } => bpe.decode_bytes(&[id]).is_ok(),
            Backend::HuggingFace(hf) => hf.tok.id_to_token(id).is_some(),
        }
    }

    /// The text of token `id` (lossy for tiktoken byte tokens).
    pub fn token_text(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Tiktoken { bpe, .. } => bpe
                .decode_bytes(&[id])
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            Backend::HuggingFace(hf) => hf.tok.id_to_token(id),
        }
    }

    /// Encodes one document (see the module docs for the semantics of each
    /// tokenizer). Fails, instead of panicking, if the tokenizer gives up.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, String> {
        // tiktoken-rs unwraps the regex engine's result (a backtrack limit can be
        // hit on pathological input); keep that from taking the process down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &self.backend {
            Backend::Tiktoken { bpe, .. } => Ok(bpe.encode_ordinary(text)),
            Backend::HuggingFace(hf) => hf.encode(text),
        }))
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            format!("the tokenizer failed on this text: {msg}")
        })?
    }

    /// Decodes ids to text (tiktoken: invalid UTF-8 is replaced with U+FFFD;
    /// `tokenizer.json`: the file's decoder, special tokens kept). An unknown
    /// id is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.backend {
            Backend::Tiktoken { bpe, .. } => {
                let bytes = bpe.decode_bytes(ids).map_err(|e| {
                    FormatError::InvalidOption(format!("decoding: unknown token id {}", e.token))
                })?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Backend::HuggingFace(hf) => hf.decode(ids),
        }
    }

    /// For a tiktoken encoding, its rank table in tiktoken's file format
    /// (`base64(token bytes) rank\n` for every non-special id in ascending
    /// order): byte for byte the `<encoding>.tiktoken` file that tiktoken and
    /// tiktoken-rs load. `None` for a `tokenizer.json`.
    pub fn rank_table(&self) -> Option<Vec<u8>> {
        let Backend::Tiktoken { bpe, encoding } = &self.backend else {
            return None;
        };
        let mut out = String::with_capacity(encoding.n_vocab() as usize * 16);
        for id in 0..encoding.n_vocab() {
            if self.specials.binary_search(&id).is_ok() {
                continue;
            }
            // Ids that are neither special nor in the table (gaps) are skipped.
            if let Ok(bytes) = bpe.decode_bytes(&[id]) {
                base64::engine::general_purpose::STANDARD.encode_string(&bytes, &mut out);
                out.push(' ');
                out.push_str(&id.to_string());
                out.push('\n');
            }
        }
        Some(out.into_bytes())
    }

    /// What a source manifest records: the name, the vocab hash (blake3 of
    /// [`Tokenizer::rank_table`] for tiktoken, of the `tokenizer.json` bytes
    /// otherwise) and n_vocab.
    pub fn info(&self) -> TokenizerInfo {
        let mut info = self.info.clone();
        if info.vocab_hash.is_empty() {
            info.vocab_hash = self
                .rank_table_hash
                .get_or_init(|| {
                    let table = self.rank_table().unwrap_or_default();
                    blake3::hash(&table).to_hex().to_string()
                })
                .clone();
        }
        info
    }
}
