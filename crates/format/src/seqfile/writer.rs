//! Writing one sequence file: sequences are appended to a temporary
//! sibling, then the header, CRC table and hash are written and the file is
//! renamed into place (never a partially written file under the final name).
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{round_up, validate_source_name, Header, PAGE};
use crate::dtype::{Dtype, Token};
use crate::error::{FormatError, Result};

/// What [`SeqFileWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Final path.
    pub path: PathBuf,
    /// The header written.
    pub header: Header,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique temporary sibling name for `path`: `.<name>.tmp-<pid>-<n>`.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

const WRITE_BUF: usize = 4 << 20;

/// Writes one sequence file to a temporary name, renamed into place by
/// [`SeqFileWriter::finish`]; dropped unfinished, it removes the temporary file.
#[derive(Debug)]
pub struct SeqFileWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    dtype: Dtype,
    seq_len: u64,
    seq_bytes: usize,
    name: String,
    crcs: Option<Vec<u32>>,
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    count: u64,
    done: bool,
}

impl SeqFileWriter {
    /// Starts a file at `path` (which must not exist) for source `source_name`.
    pub fn create(
        path: impl AsRef<Path>,
        source_name: &str,
        dtype: Dtype,
        seq_len: u64,
        with_crc: bool,
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        validate_source_name(source_name).map_err(FormatError::InvalidOption)?;
        if seq_len == 0 {
            return Err(FormatError::InvalidOption(
                "seq_len must be at least 1".into(),
            ));
        }
        if path.exists() {
            return Err(FormatError::OutputExists { path });
        }
        let tmp = temp_sibling(&path);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| FormatError::io("create", &tmp, e))?;
        // Reserve the header page; the real header is written by finish().
        file.write_all(&[0u8; PAGE as usize])
            .map_err(|e| FormatError::io("write", &tmp, e))?;
        let seq_bytes = (seq_len as usize)
            .checked_mul(dtype.size())
            .ok_or_else(|| FormatError::InvalidOption(format!("seq_len {seq_len} too large")))?;
        Ok(SeqFileWriter {
            path,
            tmp,
            file: Some(file),
            dtype,
            seq_len,
            seq_bytes,
            name: source_name.to_string(),
            crcs: with_crc.then(Vec::new),
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(WRITE_BUF.max(seq_bytes)),
            count: 0,
            done: false,
        })
    }

    /// Sequences written so far.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Bytes per sequence.
    pub fn seq_bytes(&self) -> usize {
        self.seq_bytes
    }
    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one or more whole sequences given as bytes (length a multiple of `seq_bytes`).
    pub fn push_sequences(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() % self.seq_bytes != 0 {
            return Err(FormatError::InvalidOption(format!(
                "{} bytes is not a whole number of {}-byte sequences",
                bytes.len(),
                self.seq_bytes
            )));
        }
        for seq in bytes.chunks_exact(self.seq_bytes) {
            if let Some(crcs) = &mut self.crcs {
                crcs.push(crc32c::crc32c(seq));
            }
            if self.buf.len() + seq.len() > self.buf.capacity() {
                self.flush_buf()?;
            }
            self.buf.extend_from_slice(seq);
            self.count += 1;
        }
        Ok(())
    }

    /// Appends one sequence of `seq_len` tokens of the file's dtype.
    pub fn push_tokens<T: Token>(&mut self, tokens: &[T]) -> Result<()> {
        if T::DTYPE != self.dtype || tokens.len() as u64 != self.seq_len {
            return Err(FormatError::InvalidOption(format!(
                "expected {} {} tokens, got {} {}",
                self.seq_len,
                self.dtype,
                tokens.len(),
                T::DTYPE
            )));
        }
        self.push_sequences(bytemuck::cast_slice(tokens))
    }

    fn flush_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hasher.update(&self.buf);
        if let Some(f) = &mut self.file {
            f.write_all(&self.buf)
                .map_err(|e| FormatError::io("write", &self.tmp, e))?;
        }
        self.buf.clear();
        Ok(())
    }

    /// Writes the CRC table and header, syncs, and renames the file into place.
    pub fn finish(mut self) -> Result<WrittenFile> {
        self.flush_buf()?;
        let data_offset = PAGE;
        let payload_end = data_offset + self.count * self.seq_bytes as u64;
        let mut file = self
            .file
            .take()
            .ok_or_else(|| FormatError::InvalidOption("writer already finished".into()))?;
        let tmp = self.tmp.clone();
        let w = |e| FormatError::io("write", &tmp, e);
        let (crc_offset, file_len) = match &self.crcs {
            Some(crcs) => {
                let off = round_up(payload_end, 8);
                file.write_all(&vec![0u8; (off - payload_end) as usize])
                    .map_err(w)?;
                file.write_all(bytemuck::cast_slice(crcs)).map_err(w)?;
                (Some(off), off + 4 * crcs.len() as u64)
            }
            None => (None, payload_end),
        };
        let header = Header {
            dtype: self.dtype,
            seq_len: self.seq_len,
            count: self.count,
            data_offset,
            crc_offset,
            file_len,
            payload_hash: *self.hasher.finalize().as_bytes(),
            source_name: self.name.clone(),
        };
        file.seek(SeekFrom::Start(0)).map_err(w)?;
        file.write_all(&header.encode()).map_err(w)?;
        file.sync_all()
            .map_err(|e| FormatError::io("sync", &tmp, e))?;
        drop(file);
        if self.path.exists() {
            return Err(FormatError::OutputExists {
                path: self.path.clone(),
            });
        }
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| FormatError::io("rename", &self.path, e))?;
        self.done = true;
        tracing::debug!(path = %self.path.display(), count = self.count, "wrote sequence file");
        Ok(WrittenFile {
            path: self.path.clone(),
            header,
        })
    }
}

impl Drop for SeqFileWriter {
    fn drop(&mut self) {
        if !self.done {
            drop(self.file.take());
            match std::fs::remove_file(&self.tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %self.tmp.display(), error = %e, "could not remove unfinished temporary file")
                }
            }
        }
    }
}
