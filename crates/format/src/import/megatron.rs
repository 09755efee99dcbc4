//! Megatron-LM `.bin/.idx` inputs: the index parser and the importer (one document per index entry).
use std::path::{Path, PathBuf};

use super::{push_array, InDtype, Progress, CHUNK_TOKENS};
use crate::error::{FormatError, Result, TokenPos};
use crate::pack::Packer;

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

pub(super) fn import_megatron(
    packer: &mut Packer,
    prefix: &Path,
    progress: &dyn Fn(u64),
) -> Result<()> {
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
