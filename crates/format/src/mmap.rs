//! The one place in this crate that maps files into memory (the only `unsafe`).
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{FormatError, Result};

/// Maps `file` (opened from `path`) read-only.
///
/// Contract relied on by every caller: seqfeed never modifies a sequence file
/// in place (writers create a temporary file and rename it), and input corpora
/// are treated as read-only. A file truncated by another process while mapped
/// would make reads past the new end fault (SIGBUS); that is the documented
/// limit of zero-copy reading. The paths that must survive it read with
/// `pread` instead: `SeqFile::verify` and the local transport.
pub(crate) fn map_file(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: memmap2 requires that the mapped file is not modified or
    // truncated while the map lives. Sequence files are immutable once renamed
    // into place and inputs are opened read-only; the map is only ever read
    // through `&[u8]`, so no aliasing `&mut` exists on our side.
    let map = unsafe { Mmap::map(file) }.map_err(|e| FormatError::io("mmap", path, e))?;
    Ok(map)
}

/// Opens and maps `path` read-only.
pub(crate) fn map_path(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| FormatError::io("open", path, e))?;
    map_file(&file, path)
}
