//! The one place in this crate that maps a file: a read-only, private
//! mapping of a whole sequence file.
#![allow(unsafe_code)]

use std::fs::File;

use memmap2::{Mmap, MmapOptions};

/// Maps `file` read-only. An empty file yields an empty mapping.
pub(crate) fn map_readonly(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only (PROT_READ, MAP_PRIVATE). Sequence
    // files are immutable once written (the packer writes to a temporary name
    // and renames), so no other process truncates or rewrites them while a
    // node serves them; a node must not be pointed at files that are being
    // modified. Reads of the mapping never outlive the `Mmap`, which is owned
    // by the region table.
    unsafe { MmapOptions::new().map(file) }
}
