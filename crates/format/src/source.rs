//! Sources: a directory of sequence files plus a `manifest.json`.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dtype::Dtype;
use crate::error::{FormatError, Result};
use crate::seqfile::{hex, temp_sibling, validate_source_name, SeqFile, SeqFileWriter, PAGE};

/// File name of a source's manifest.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Manifest format version written and read.
pub const MANIFEST_VERSION: u32 = 1;
/// Default split size of a source's files: 1 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// One sequence file as listed in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name relative to the source directory (no `/`).
    pub path: String,
    /// Number of sequences.
    pub count: u64,
    /// Byte offset of the payload.
    pub data_offset: u64,
    /// Total file length.
    pub file_len: u64,
    /// blake3 hash of the payload, lower-case hex.
    pub payload_hash: String,
}

/// A source's manifest: what its files hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceManifest {
    /// Source name (also its directory name inside a dataset).
    pub name: String,
    /// Token type of every file.
    pub dtype: Dtype,
    /// Tokens per sequence of every file.
    pub seq_len: u64,
    /// The files, in sequence order.
    pub files: Vec<FileEntry>,
    /// The tokenizer that produced the tokens, when `seqfeed pack` tokenized
    /// text itself. Absent in manifests written before this field existed and
    /// in sources packed from token ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerInfo>,
    /// The special-token ids `seqfeed pack` used (EOS after each document,
    /// BOS before it, the pad id of a padded tail). Absent when it used none,
    /// and in manifests written before this field existed.
    #[serde(default, skip_serializing_if = "SpecialTokens::is_empty")]
    pub special_tokens: SpecialTokens,
}

/// Special-token ids recorded in a source manifest: what a trainer needs to
/// find document boundaries (`eod_token`) without the tokenizer at hand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    /// The id appended after every document (`--eos`, or the tokenizer's end
    /// of text), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos: Option<u32>,
    /// The id put before every document (`--bos`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos: Option<u32>,
    /// The id that pads the last sequence (`--tail pad`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<u32>,
}

impl SpecialTokens {
    /// No id recorded.
    pub fn is_empty(&self) -> bool {
        self.eos.is_none() && self.bos.is_none() && self.pad.is_none()
    }
}

/// The tokenizer recorded in a source manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// `tiktoken:<encoding>`, e.g. `tiktoken:cl100k_base`, or `hf:<label>` for
    /// a Hugging Face `tokenizer.json` (the file's stem, or its directory's
    /// name when the file is called `tokenizer.json`).
    pub name: String,
    /// blake3 (lower-case hex) of the vocabulary: for tiktoken, of the
    /// encoding's rank table (the bytes of the `<encoding>.tiktoken` file,
    /// `base64(token) rank` lines); for a `tokenizer.json`, of the file's bytes.
    /// This, not the name, identifies the tokenizer (see `plan`'s tokenizer pin).
    pub vocab_hash: String,
    /// Number of ids: for tiktoken the largest id, special or not, plus one;
    /// for a `tokenizer.json` the vocabulary size with added tokens.
    pub n_vocab: u64,
}

#[derive(Serialize, Deserialize)]
struct ManifestDoc {
    format: String,
    version: u32,
    total_sequences: u64,
    #[serde(flatten)]
    manifest: SourceManifest,
}

const MANIFEST_FORMAT: &str = "seqfeed-source";

impl SourceManifest {
    /// Sum of the files' sequence counts.
    pub fn total_sequences(&self) -> u64 {
        self.files.iter().map(|f| f.count).sum()
    }

    /// Total tokens (`total_sequences * seq_len`).
    pub fn total_tokens(&self) -> u64 {
        self.total_sequences() * self.seq_len
    }

    /// Hex blake3 over a canonical encoding of every field (independent of JSON
    /// formatting): changes whenever any file's content, count or layout does.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"seqfeed-source-manifest-v1\0");
        let put_str = |h: &mut blake3::Hasher, s: &str| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        put_str(&mut h, &self.name);
        h.update(&[self.dtype.code()]);
        h.update(&self.seq_len.to_le_bytes());
        h.update(&(self.files.len() as u64).to_le_bytes());
        for f in &self.files {
            put_str(&mut h, &f.path);
            h.update(&f.count.to_le_bytes());
            h.update(&f.data_offset.to_le_bytes());
            h.update(&f.file_len.to_le_bytes());
            put_str(&mut h, &f.payload_hash);
        }
        // Only when present, so manifests without a tokenizer keep their fingerprints.
        if let Some(t) = &self.tokenizer {
            put_str(&mut h, "tokenizer");
            put_str(&mut h, &t.name);
            put_str(&mut h, &t.vocab_hash);
            h.update(&t.n_vocab.to_le_bytes());
        }
        // Likewise only when recorded: the ids decide where documents end.
        if !self.special_tokens.is_empty() {
            put_str(&mut h, "special_tokens");
            for id in [
                self.special_tokens.eos,
                self.special_tokens.bos,
                self.special_tokens.pad,
            ] {
                match id {
                    None => h.update(&[0]),
                    Some(v) => h.update(&[1]).update(&v.to_le_bytes()),
                };
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// Serializes to pretty JSON (the `manifest.json` text).
    pub fn to_json(&self) -> String {
        let doc = ManifestDoc {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            total_sequences: self.total_sequences(),
            manifest: self.clone(),
        };
        let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses and validates manifest JSON (`path` names the file in errors).
    pub fn from_json(path: &Path, text: &str) -> Result<SourceManifest> {
        let bad = |reason: String| FormatError::Manifest {
            path: path.to_path_buf(),
            reason,
        };
        let doc: ManifestDoc = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if doc.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format is '{}', expected '{MANIFEST_FORMAT}'",
                doc.format
            )));
        }
        if doc.version != MANIFEST_VERSION {
            return Err(bad(format!(
                "unsupported manifest version {} (this build reads {MANIFEST_VERSION})",
                doc.version
            )));
        }
        let m = doc.manifest;
        validate_source_name(&m.name).map_err(bad)?;
        if m.seq_len == 0 {
            return Err(bad("seq_len is 0".into()));
        }
        if m.files.is_empty() {
            return Err(bad("no files listed".into()));
        }
        for (i, f) in m.files.iter().enumerate() {
            if f.path.is_empty()
                || f.path.contains('/')
                || f.path.contains('\\')
                || f.path.starts_with('.')
            {
                return Err(bad(format!(
                    "files[{i}].path '{}' must be a plain file name",
                    f.path
                )));
            }
            if f.payload_hash.len() != 64 || !f.payload_hash.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(bad(format!("files[{i}].payload_hash is not 64 hex digits")));
            }
        }
        if let Some(t) = &m.tokenizer {
            if t.name.is_empty() {
                return Err(bad("tokenizer.name is empty".into()));
            }
            if t.vocab_hash.len() != 64 || !t.vocab_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("tokenizer.vocab_hash is not 64 hex digits".into()));
            }
        }
        if doc.total_sequences != m.total_sequences() {
            return Err(bad(format!(
                "total_sequences {} is not the sum of the file counts {}",
                doc.total_sequences,
                m.total_sequences()
            )));
        }
        Ok(m)
    }

    /// Reads and validates `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<SourceManifest> {
        let path = dir.join(MANIFEST_NAME);
        let text = std::fs::read_to_string(&path).map_err(|e| FormatError::io("read", &path, e))?;
        Self::from_json(&path, &text)
    }
}

/// An opened source: its manifest and its mapped, header-checked files.
#[derive(Debug)]
pub struct Source {
    dir: PathBuf,
    manifest: SourceManifest,
    files: Vec<SeqFile>,
    /// `starts[i]` = global index of file i's first sequence; one extra entry = total.
    starts: Vec<u64>,
    fingerprint: String,
}

impl Source {
    /// Loads `dir/manifest.json`, maps every file, and checks each file's header
    /// against the manifest and the first file (cheap: no payload hashing; see
    /// [`Source::verify`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Source> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = SourceManifest::load(&dir)?;
        let mut files: Vec<SeqFile> = Vec::with_capacity(manifest.files.len());
        for (index, entry) in manifest.files.iter().enumerate() {
            let f = SeqFile::open(dir.join(&entry.path))?;
            if let Some(first) = files.first() {
                let mismatch =
                    |field, expected: String, found: String| FormatError::SourceMismatch {
                        path: f.path().to_path_buf(),
                        first: first.path().to_path_buf(),
                        field,
                        expected: expected.into(),
                        found: found.into(),
                    };
                if f.dtype() != first.dtype() {
                    return Err(mismatch(
                        "dtype",
                        first.dtype().to_string(),
                        f.dtype().to_string(),
                    ));
                }
                if f.seq_len() != first.seq_len() {
                    return Err(mismatch(
                        "seq_len",
                        first.seq_len().to_string(),
                        f.seq_len().to_string(),
                    ));
                }
                if f.source_name() != first.source_name() {
                    return Err(mismatch(
                        "source name",
                        first.source_name().into(),
                        f.source_name().into(),
                    ));
                }
            }
            Self::check_file(&dir, &manifest, index, &f)?;
            files.push(f);
        }
        let mut starts = Vec::with_capacity(files.len() + 1);
        let mut acc = 0u64;
        for f in &files {
            starts.push(acc);
            acc += f.count();
        }
        starts.push(acc);
        let fingerprint = manifest.fingerprint();
        Ok(Source {
            dir,
            manifest,
            files,
            starts,
            fingerprint,
        })
    }

    /// Maps file `index` of `manifest` in the source directory `dir` and
    /// checks its header against the manifest's entry (dtype, seq_len,
    /// source name, count, offsets, length and payload hash as recorded in
    /// the header; the payload itself is not hashed). What a storage node
    /// does for the files placed on it when it holds only some of a source.
    pub fn open_file(dir: &Path, manifest: &SourceManifest, index: usize) -> Result<SeqFile> {
        let entry = manifest
            .files
            .get(index)
            .ok_or_else(|| FormatError::Manifest {
                path: dir.join(MANIFEST_NAME),
                reason: format!(
                    "file index {index} out of range: the manifest lists {} files",
                    manifest.files.len()
                ),
            })?;
        let f = SeqFile::open(dir.join(&entry.path))?;
        Self::check_file(dir, manifest, index, &f)?;
        Ok(f)
    }

    /// Checks file `index`'s header (mapped as `f`) against its manifest entry.
    fn check_file(dir: &Path, manifest: &SourceManifest, index: usize, f: &SeqFile) -> Result<()> {
        let manifest_path = dir.join(MANIFEST_NAME);
        let entry = manifest
            .files
            .get(index)
            .ok_or_else(|| FormatError::Manifest {
                path: manifest_path.clone(),
                reason: format!(
                    "file index {index} out of range: the manifest lists {} files",
                    manifest.files.len()
                ),
            })?;
        let check = |field: &'static str, m: String, v: String| -> Result<()> {
            if m != v {
                return Err(FormatError::ManifestMismatch {
                    manifest: manifest_path.clone(),
                    file: f.path().to_path_buf(),
                    field,
                    manifest_value: m.into(),
                    file_value: v.into(),
                });
            }
            Ok(())
        };
        check("dtype", manifest.dtype.to_string(), f.dtype().to_string())?;
        check(
            "seq_len",
            manifest.seq_len.to_string(),
            f.seq_len().to_string(),
        )?;
        check("source name", manifest.name.clone(), f.source_name().into())?;
        check("count", entry.count.to_string(), f.count().to_string())?;
        check(
            "data_offset",
            entry.data_offset.to_string(),
            f.data_offset().to_string(),
        )?;
        check(
            "file_len",
            entry.file_len.to_string(),
            f.file_len().to_string(),
        )?;
        check(
            "payload_hash",
            entry.payload_hash.to_ascii_lowercase(),
            f.payload_hash_hex(),
        )?;
        Ok(())
    }

    /// The source directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Source name.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }
    /// The manifest.
    pub fn manifest(&self) -> &SourceManifest {
        &self.manifest
    }
    /// Token type.
    pub fn dtype(&self) -> Dtype {
        self.manifest.dtype
    }
    /// Tokens per sequence.
    pub fn seq_len(&self) -> u64 {
        self.manifest.seq_len
    }
    /// Bytes per sequence.
    pub fn seq_bytes(&self) -> u64 {
        self.manifest.seq_len * self.manifest.dtype.size() as u64
    }
    /// The mapped files, in sequence order.
    pub fn files(&self) -> &[SeqFile] {
        &self.files
    }
    /// Total sequences over all files.
    pub fn total_sequences(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }
    /// The manifest fingerprint (hex).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    /// Global index of the first sequence of each file.
    pub fn file_starts(&self) -> &[u64] {
        &self.starts[..self.files.len()]
    }

    /// Maps a source-global sequence index to `(file index, index within file)`.
    pub fn locate(&self, seq: u64) -> Result<(usize, u64)> {
        if seq >= self.total_sequences() {
            return Err(FormatError::IndexOutOfRange {
                path: self.dir.clone(),
                index: seq,
                count: self.total_sequences(),
            });
        }
        // Last file whose start is <= seq.
        let fi = self.starts.partition_point(|&s| s <= seq) - 1;
        Ok((fi, seq - self.starts[fi]))
    }

    /// The bytes of source-global sequence `seq`.
    pub fn sequence_bytes(&self, seq: u64) -> Result<&[u8]> {
        let (fi, i) = self.locate(seq)?;
        self.files[fi].sequence_bytes(i)
    }

    /// The tokens of source-global sequence `seq`, widened to u32.
    pub fn tokens_as_u32(&self, seq: u64) -> Result<Vec<u32>> {
        let (fi, i) = self.locate(seq)?;
        self.files[fi].tokens_as_u32(i)
    }

    /// Recomputes every file's CRCs and payload hash; the first failure names
    /// the file and sequence. `progress` receives payload bytes checked.
    pub fn verify(&self, progress: &dyn Fn(u64)) -> Result<()> {
        for f in &self.files {
            f.verify(progress)?;
            tracing::debug!(file = %f.path().display(), "verified");
        }
        Ok(())
    }

    /// Payload bytes over all files.
    pub fn payload_bytes(&self) -> u64 {
        self.total_sequences() * self.seq_bytes()
    }
}

/// Options for writing a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceOptions {
    /// Split files so none exceeds this many bytes (at least one sequence per file).
    pub max_file_bytes: u64,
    /// Write per-sequence CRC32C tables.
    pub crc: bool,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            crc: true,
        }
    }
}

/// Writes a source into a temporary sibling directory, renamed into place by
/// [`SourceWriter::finish`]; dropped unfinished, it removes the temporary directory.
#[derive(Debug)]
pub struct SourceWriter {
    dir: PathBuf,
    tmp: PathBuf,
    name: String,
    dtype: Dtype,
    seq_len: u64,
    opts: SourceOptions,
    per_file: u64,
    current: Option<SeqFileWriter>,
    files: Vec<FileEntry>,
    tokenizer: Option<TokenizerInfo>,
    special_tokens: SpecialTokens,
    done: bool,
}

impl SourceWriter {
    /// Starts a source named `name` at `dir` (which must not exist).
    pub fn create(
        dir: impl AsRef<Path>,
        name: &str,
        dtype: Dtype,
        seq_len: u64,
        opts: SourceOptions,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        validate_source_name(name).map_err(FormatError::InvalidOption)?;
        if seq_len == 0 {
            return Err(FormatError::InvalidOption(
                "seq_len must be at least 1".into(),
            ));
        }
        if dir.exists() {
            return Err(FormatError::OutputExists { path: dir });
        }
        let seq_bytes = seq_len
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| FormatError::InvalidOption(format!("seq_len {seq_len} too large")))?;
        let per_file = sequences_per_file(opts.max_file_bytes, seq_bytes, opts.crc);
        let tmp = temp_sibling(&dir);
        std::fs::create_dir_all(&tmp).map_err(|e| FormatError::io("create directory", &tmp, e))?;
        Ok(SourceWriter {
            dir,
            tmp,
            name: name.to_string(),
            dtype,
            seq_len,
            opts,
            per_file,
            current: None,
            files: Vec::new(),
            tokenizer: None,
            special_tokens: SpecialTokens::default(),
            done: false,
        })
    }

    /// Bytes per sequence.
    pub fn seq_bytes(&self) -> usize {
        self.seq_len as usize * self.dtype.size()
    }
    /// Records the tokenizer in the manifest written by [`SourceWriter::finish`].
    pub fn set_tokenizer(&mut self, tokenizer: TokenizerInfo) {
        self.tokenizer = Some(tokenizer);
    }
    /// Records the special-token ids in the manifest written by
    /// [`SourceWriter::finish`].
    pub fn set_special_tokens(&mut self, ids: SpecialTokens) {
        self.special_tokens = ids;
    }
    /// Sequences per file (the split point).
    pub fn sequences_per_file(&self) -> u64 {
        self.per_file
    }
    /// Sequences written so far.
    pub fn count(&self) -> u64 {
        self.files.iter().map(|f| f.count).sum::<u64>()
            + self.current.as_ref().map_or(0, |c| c.count())
    }

    /// Appends whole sequences (`bytes.len()` a multiple of the sequence size),
    /// starting new files at the split size.
    pub fn push_sequences(&mut self, mut bytes: &[u8]) -> Result<()> {
        let sb = self.seq_bytes();
        if bytes.len() % sb != 0 {
            return Err(FormatError::InvalidOption(format!(
                "{} bytes is not a whole number of {sb}-byte sequences",
                bytes.len()
            )));
        }
        while !bytes.is_empty() {
            if self
                .current
                .as_ref()
                .is_some_and(|c| c.count() >= self.per_file)
            {
                self.close_current()?;
            }
            if self.current.is_none() {
                let path = self.tmp.join(file_name(self.files.len()));
                self.current = Some(SeqFileWriter::create(
                    path,
                    &self.name,
                    self.dtype,
                    self.seq_len,
                    self.opts.crc,
                )?);
            }
            let cur = self
                .current
                .as_mut()
                .ok_or_else(|| FormatError::InvalidOption("no open file".into()))?;
            let room = (self.per_file - cur.count()) as usize;
            let n = room.min(bytes.len() / sb);
            cur.push_sequences(&bytes[..n * sb])?;
            bytes = &bytes[n * sb..];
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            let written = w.finish()?;
            let h = &written.header;
            self.files.push(FileEntry {
                path: file_name(self.files.len()),
                count: h.count,
                data_offset: h.data_offset,
                file_len: h.file_len,
                payload_hash: hex(&h.payload_hash),
            });
        }
        Ok(())
    }

    /// Closes the last file, writes the manifest, renames the directory into
    /// place and opens the result. Fails if no sequence was written.
    pub fn finish(mut self) -> Result<Source> {
        self.close_current()?;
        if self.files.is_empty() {
            return Err(FormatError::InvalidOption(format!(
                "source '{}' would hold no sequences (input shorter than one sequence of {} tokens?)",
                self.name, self.seq_len
            )));
        }
        let manifest = SourceManifest {
            name: self.name.clone(),
            dtype: self.dtype,
            seq_len: self.seq_len,
            files: self.files.clone(),
            tokenizer: self.tokenizer.clone(),
            special_tokens: self.special_tokens,
        };
        let mpath = self.tmp.join(MANIFEST_NAME);
        std::fs::write(&mpath, manifest.to_json())
            .map_err(|e| FormatError::io("write", &mpath, e))?;
        if self.dir.exists() {
            return Err(FormatError::OutputExists {
                path: self.dir.clone(),
            });
        }
        std::fs::rename(&self.tmp, &self.dir)
            .map_err(|e| FormatError::io("rename", &self.dir, e))?;
        self.done = true;
        tracing::info!(source = %self.name, dir = %self.dir.display(), files = manifest.files.len(),
            sequences = manifest.total_sequences(), "wrote source");
        Source::open(&self.dir)
    }
}

impl Drop for SourceWriter {
    fn drop(&mut self) {
        if !self.done {
            drop(self.current.take());
            match std::fs::remove_dir_all(&self.tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove unfinished source directory")
                }
            }
        }
    }
}

/// The most sequences of `seq_bytes` bytes that fit a file of at most
/// `max_file_bytes` (header page, payload, CRC padding and table), at least 1.
pub fn sequences_per_file(max_file_bytes: u64, seq_bytes: u64, crc: bool) -> u64 {
    let len = |n: u64| {
        let end = PAGE + n * seq_bytes;
        if crc {
            crate::seqfile::round_up(end, 8) + 4 * n
        } else {
            end
        }
    };
    let per_seq = seq_bytes + if crc { 4 } else { 0 };
    let mut n = max_file_bytes.saturating_sub(PAGE) / per_seq;
    while n > 1 && len(n) > max_file_bytes {
        n -= 1;
    }
    n.max(1)
}

/// Name of the `i`-th file of a source: `part-00000.seq`, ...
pub fn file_name(i: usize) -> String {
    format!("part-{i:05}.seq")
}
