//! Packing documents into fixed-size sequences.
//!
//! Documents are concatenated, each followed by the EOS id (when one is set),
//! and the stream is cut every `seq_len` tokens. The last partial sequence is
//! dropped or padded ([`Tail`]).
use std::path::Path;

use crate::dtype::Dtype;
use crate::error::{FormatError, Result, TokenPos};
use crate::source::{Source, SourceOptions, SourceWriter, DEFAULT_MAX_FILE_BYTES};

/// What to do with the tokens left over after the last whole sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Drop them.
    Drop,
    /// Fill the last sequence up to `seq_len` with this id.
    Pad(u32),
}

/// How to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// Source name.
    pub name: String,
    /// Output token type.
    pub dtype: Dtype,
    /// Tokens per sequence.
    pub seq_len: u64,
    /// Appended after every document, if set.
    pub eos: Option<u32>,
    /// The BOS id the inputs put before every document (text inputs'
    /// [`crate::TextOptions::bos`]), recorded in the manifest; the packer
    /// itself adds none.
    pub bos: Option<u32>,
    /// Handling of the last partial sequence.
    pub tail: Tail,
    /// File split size and CRC tables.
    pub source: SourceOptions,
}

impl PackOptions {
    /// Options with no EOS, dropped tail, 1 GiB files and CRC tables.
    pub fn new(name: impl Into<String>, dtype: Dtype, seq_len: u64) -> Self {
        PackOptions {
            name: name.into(),
            dtype,
            seq_len,
            eos: None,
            bos: None,
            tail: Tail::Drop,
            source: SourceOptions {
                max_file_bytes: DEFAULT_MAX_FILE_BYTES,
                crc: true,
            },
        }
    }
    /// Sets the EOS id.
    pub fn eos(mut self, eos: u32) -> Self {
        self.eos = Some(eos);
        self
    }
    /// Sets the tail handling.
    pub fn tail(mut self, tail: Tail) -> Self {
        self.tail = tail;
        self
    }
    /// Sets the file split size.
    pub fn max_file_bytes(mut self, bytes: u64) -> Self {
        self.source.max_file_bytes = bytes;
        self
    }
    /// Enables or disables CRC tables.
    pub fn crc(mut self, crc: bool) -> Self {
        self.source.crc = crc;
        self
    }
}

/// Counts from a finished pack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Documents pushed (each followed by EOS when set).
    pub documents: u64,
    /// Input tokens (excluding EOS and padding).
    pub input_tokens: u64,
    /// EOS tokens inserted.
    pub eos_tokens: u64,
    /// Sequences written.
    pub sequences: u64,
    /// Pad tokens written into the last sequence.
    pub pad_tokens: u64,
    /// Tokens dropped with the last partial sequence.
    pub dropped_tokens: u64,
}

enum Buf {
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl Buf {
    fn len(&self) -> usize {
        match self {
            Buf::U16(v) => v.len(),
            Buf::U32(v) => v.len(),
        }
    }
    fn bytes(&self) -> &[u8] {
        match self {
            Buf::U16(v) => bytemuck::cast_slice(v),
            Buf::U32(v) => bytemuck::cast_slice(v),
        }
    }
    fn clear(&mut self) {
        match self {
            Buf::U16(v) => v.clear(),
            Buf::U32(v) => v.clear(),
        }
    }
    fn truncate(&mut self, n: usize) {
        match self {
            Buf::U16(v) => v.truncate(n),
            Buf::U32(v) => v.truncate(n),
        }
    }
    /// Appends tokens known to fit the dtype.
    fn extend(&mut self, t: &[u32]) {
        match self {
            Buf::U16(v) => v.extend(t.iter().map(|&x| x as u16)),
            Buf::U32(v) => v.extend_from_slice(t),
        }
    }
}

/// Index and value of the first token in `tokens` above `max`, if any.
pub(crate) fn first_overflow(tokens: &[u32], max: u64) -> Option<(usize, u32)> {
    if max >= u64::from(u32::MAX) {
        return None;
    }
    let max = max as u32;
    // Branch-free maximum first (vectorizes); locate only on failure.
    if tokens.iter().fold(0u32, |m, &t| m.max(t)) <= max {
        return None;
    }
    tokens.iter().position(|&t| t > max).map(|i| (i, tokens[i]))
}

/// Packs a stream of documents into a source. Create with [`Packer::create`],
/// feed documents, then [`Packer::finish`].
pub struct Packer {
    writer: SourceWriter,
    buf: Buf,
    /// Buffer capacity in tokens: a whole number of sequences.
    cap: usize,
    seq_len: usize,
    dtype: Dtype,
    eos: Option<u32>,
    tail: Tail,
    stats: PackStats,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("writer", &self.writer)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Packer {
    /// Starts packing into a new source directory `out_dir` (must not exist).
    pub fn create(out_dir: impl AsRef<Path>, opts: &PackOptions) -> Result<Packer> {
        let max = opts.dtype.max_id();
        if let Some(e) = opts.eos {
            if u64::from(e) > max {
                return Err(FormatError::InvalidOption(format!(
                    "EOS id {e} does not fit {}",
                    opts.dtype
                )));
            }
        }
        if let Tail::Pad(p) = opts.tail {
            if u64::from(p) > max {
                return Err(FormatError::InvalidOption(format!(
                    "pad id {p} does not fit {}",
                    opts.dtype
                )));
            }
        }
        let mut writer =
            SourceWriter::create(out_dir, &opts.name, opts.dtype, opts.seq_len, opts.source)?;
        writer.set_special_tokens(crate::source::SpecialTokens {
            eos: opts.eos,
            bos: opts.bos,
            pad: match opts.tail {
                Tail::Pad(p) => Some(p),
                Tail::Drop => None,
            },
        });
        let seq_len = opts.seq_len as usize;
        // About 1 MiB of output per flush, whole sequences.
        let per = ((1usize << 20) / (seq_len * opts.dtype.size())).max(1);
        let cap = per * seq_len;
        let buf = match opts.dtype {
            Dtype::U16 => Buf::U16(Vec::with_capacity(cap)),
            Dtype::U32 => Buf::U32(Vec::with_capacity(cap)),
        };
        Ok(Packer {
            writer,
            buf,
            cap,
            seq_len,
            dtype: opts.dtype,
            eos: opts.eos,
            tail: opts.tail,
            stats: PackStats::default(),
        })
    }

    /// Records the tokenizer that produced the tokens in the source manifest.
    pub fn set_tokenizer(&mut self, tokenizer: crate::source::TokenizerInfo) {
        self.writer.set_tokenizer(tokenizer);
    }

    /// Output dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Counts so far.
    pub fn stats(&self) -> PackStats {
        self.stats
    }

    /// Appends tokens to the current document. Every id must fit the output
    /// dtype; otherwise nothing is appended and the error gives the index within
    /// `tokens` (importers check first and report file positions).
    pub fn push_tokens(&mut self, tokens: &[u32]) -> Result<()> {
        if let Some((i, v)) = first_overflow(tokens, self.dtype.max_id()) {
            return Err(FormatError::TokenOverflow {
                path: "<tokens>".into(),
                pos: TokenPos::Array {
                    token: i as u64,
                    byte: i as u64 * 4,
                },
                value: u64::from(v),
                dtype: self.dtype,
            });
        }
        self.push_checked(tokens)?;
        self.stats.input_tokens += tokens.len() as u64;
        Ok(())
    }

    fn push_checked(&mut self, mut tokens: &[u32]) -> Result<()> {
        while !tokens.is_empty() {
            let room = self.cap - self.buf.len();
            let n = room.min(tokens.len());
            self.buf.extend(&tokens[..n]);
            tokens = &tokens[n..];
            if self.buf.len() == self.cap {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let whole = self.buf.len() / self.seq_len * self.seq_len;
        if whole > 0 {
            let nbytes = whole * self.dtype.size();
            self.writer.push_sequences(&self.buf.bytes()[..nbytes])?;
            self.stats.sequences += (whole / self.seq_len) as u64;
            // Keep a partial sequence (only possible at finish).
            let rest = self.buf.len() - whole;
            match &mut self.buf {
                Buf::U16(v) => {
                    v.copy_within(whole.., 0);
                }
                Buf::U32(v) => {
                    v.copy_within(whole.., 0);
                }
            }
            self.buf.truncate(rest);
        }
        Ok(())
    }

    /// Ends the current document: appends the EOS id when one is set.
    pub fn end_document(&mut self) -> Result<()> {
        if let Some(e) = self.eos {
            self.push_checked(&[e])?;
            self.stats.eos_tokens += 1;
        }
        self.stats.documents += 1;
        Ok(())
    }

    /// Appends a whole document (tokens then EOS).
    pub fn push_document(&mut self, tokens: &[u32]) -> Result<()> {
        self.push_tokens(tokens)?;
        self.end_document()
    }

    /// Handles the tail, writes the manifest and renames the source into place.
    pub fn finish(mut self) -> Result<(Source, PackStats)> {
        self.flush()?;
        let rest = self.buf.len();
        if rest > 0 {
            match self.tail {
                Tail::Drop => {
                    self.stats.dropped_tokens = rest as u64;
                    self.buf.clear();
                }
                Tail::Pad(p) => {
                    let pad = vec![p; self.seq_len - rest];
                    self.buf.extend(&pad);
                    self.stats.pad_tokens = pad.len() as u64;
                    self.flush()?;
                }
            }
        }
        let stats = self.stats;
        let source = self.writer.finish()?;
        tracing::info!(?stats, "packed");
        Ok((source, stats))
    }
}

/// Packs in-memory documents into a new source at `out_dir`.
pub fn pack_tokens<I, D>(
    docs: I,
    opts: &PackOptions,
    out_dir: impl AsRef<Path>,
) -> Result<(Source, PackStats)>
where
    I: IntoIterator<Item = D>,
    D: AsRef<[u32]>,
{
    let mut p = Packer::create(out_dir, opts)?;
    for d in docs {
        p.push_document(d.as_ref())?;
    }
    p.finish()
}

/// The token at position `pos` of sequence `seq` of a synthetic source made
/// by [`write_synthetic_source`] with `seed` (a splitmix64 hash, reduced to the
/// dtype's range). Lets tests elsewhere check bytes without reading files.
pub fn synthetic_token(seed: u64, seq: u64, pos: u64, dtype: Dtype) -> u32 {
    let mut z =
        seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    match dtype {
        Dtype::U16 => (z & 0xFFFF) as u32,
        Dtype::U32 => (z & 0xFFFF_FFFF) as u32,
    }
}

/// Writes a deterministic source of `count` sequences whose tokens are
/// [`synthetic_token`]`(seed, seq, pos, dtype)`, split at `max_file_bytes`,
/// with CRC tables, into `out_dir` (which must not exist; its last path
/// component should equal `name` when it is part of a dataset).
pub fn write_synthetic_source(
    out_dir: impl AsRef<Path>,
    name: &str,
    dtype: Dtype,
    seq_len: u64,
    count: u64,
    seed: u64,
    max_file_bytes: u64,
) -> Result<Source> {
    let opts = SourceOptions {
        max_file_bytes,
        crc: true,
    };
    let mut w = SourceWriter::create(out_dir, name, dtype, seq_len, opts)?;
    let mut bytes = Vec::with_capacity(w.seq_bytes());
    for s in 0..count {
        bytes.clear();
        for p in 0..seq_len {
            let t = synthetic_token(seed, s, p, dtype);
            match dtype {
                Dtype::U16 => bytes.extend_from_slice(&(t as u16).to_le_bytes()),
                Dtype::U32 => bytes.extend_from_slice(&t.to_le_bytes()),
            }
        }
        w.push_sequences(&bytes)?;
    }
    w.finish()
}
