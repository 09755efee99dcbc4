//! seqfeed's data model on disk: sequence files, sources, datasets, packing.
//!
//! * A [`SeqFile`] holds `count` sequences of exactly `seq_len` tokens
//!   ([`Dtype::U16`] or [`Dtype::U32`]) after a small header, in a payload that
//!   starts on a 4096-byte page, so sequence `i` is at byte
//!   `data_offset + i * seq_len * dtype.size()`. An optional CRC32C table lets a
//!   reader check any single sequence; a blake3 hash covers the payload. Files
//!   are read zero-copy through `memmap2` + `bytemuck`.
//! * A [`Source`] is a directory of sequence files plus a [`SourceManifest`]
//!   (`manifest.json`); a [`Dataset`] is a directory of sources, with a
//!   fingerprint derived from the manifests.
//! * [`Packer`] / [`pack_tokens`] / [`pack_inputs`] turn documents (in memory,
//!   Megatron `.bin/.idx`, `.npy`, headerless arrays, JSON Lines or Parquet of
//!   token ids, or JSON Lines / Parquet of text tokenized with an embedded
//!   tiktoken encoding or a Hugging Face `tokenizer.json`, see [`tokenize`])
//!   into a source.
//!
//! The byte layout is specified in `docs/FORMAT.md`.
//!
//! ```
//! use seqfeed_format::{pack_tokens, Dtype, PackOptions, Tail};
//! let dir = tempfile::tempdir().unwrap();
//! let opts = PackOptions::new("web", Dtype::U16, 4).eos(0).tail(Tail::Pad(0));
//! let (src, stats) = pack_tokens([vec![5, 6, 7], vec![8, 9]], &opts, dir.path().join("web")).unwrap();
//! assert_eq!(stats.sequences, 2);
//! assert_eq!(src.files()[0].tokens_u16(0).unwrap(), &[5, 6, 7, 0]);
//! assert_eq!(src.files()[0].tokens_u16(1).unwrap(), &[8, 9, 0, 0]);
//! ```
#![deny(missing_docs)]
#![deny(unsafe_code)]

#[cfg(target_endian = "big")]
compile_error!(
    "seqfeed-format reads little-endian files zero-copy and supports little-endian targets only"
);

mod dataset;
mod dtype;
mod error;
mod hf;
pub mod import;
mod mmap;
mod pack;
mod parquet_input;
mod seqfile;
mod source;
mod text_input;
pub mod tokenize;
mod zstd;

pub use dataset::{fingerprint_of, Dataset, DatasetManifests};
pub use dtype::{Dtype, Token};
pub use error::{FormatError, Result, TokenPos};
pub use import::{pack_inputs, InDtype, Input, InputKind};
pub use pack::{
    pack_tokens, synthetic_token, write_synthetic_source, PackOptions, PackStats, Packer, Tail,
};
pub use seqfile::{
    check_sequence_crc, hex, validate_source_name, Header, SeqFile, SeqFileWriter, WrittenFile,
    FIXED_HEADER_LEN, FLAG_CRC, MAGIC, MAX_NAME_LEN, PAGE, VERSION,
};
pub use source::{
    file_name, FileEntry, Source, SourceManifest, SourceOptions, SourceWriter, SpecialTokens,
    TokenizerInfo, DEFAULT_MAX_FILE_BYTES, MANIFEST_NAME,
};
pub use tokenize::{Encoding, TextOptions, Tokenizer, TokenizerSpec};
