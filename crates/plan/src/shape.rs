//! The plan's view of a dataset: sources described by their shapes alone
//! (sequence size, file counts and offsets, fingerprint), no data.

use seqfeed_format::TokenizerInfo;
use serde::{Deserialize, Serialize};

use crate::PlanError;

/// One sequence file of a source, as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileShape {
    /// Path relative to the dataset root, e.g. `web/part-00000.seq`.
    pub path: String,
    /// Whole sequences in the file.
    pub count: u64,
    /// Byte offset of sequence 0 in the file (the payload start).
    pub data_offset: u64,
}

/// One source (a named set of sequence files), as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceShape {
    /// Source name (unique in a dataset).
    pub name: String,
    /// The source's content fingerprint (e.g. the manifest hash).
    pub fingerprint: String,
    /// Tokens per sequence.
    pub seq_len: u32,
    /// Bytes per token (2 for u16, 4 for u32).
    pub token_bytes: u32,
    /// The tokenizer recorded in the source's manifest (name, vocab hash,
    /// n_vocab), when `seqfeed pack` tokenized text; `None` for sources packed
    /// from token ids. Compared across the plan's sources and against the
    /// config's `tokenizer` pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerInfo>,
    /// The files, in order; sequence `i` of the source lives in the file
    /// whose cumulative count range holds `i`.
    pub files: Vec<FileShape>,
}

impl SourceShape {
    /// Total sequences in the source.
    pub fn sequences(&self) -> u64 {
        self.files.iter().map(|f| f.count).sum()
    }

    /// Bytes per sequence.
    pub fn seq_bytes(&self) -> u64 {
        u64::from(self.seq_len) * u64::from(self.token_bytes)
    }
}

/// A file listing source shapes, for plans made without the data at hand
/// (`[[sources]]` tables, each with `[[sources.files]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesFile {
    /// The sources.
    pub sources: Vec<SourceShape>,
}

impl ShapesFile {
    /// Parses a shapes file.
    pub fn from_toml_str(text: &str) -> Result<Self, PlanError> {
        toml::from_str(text).map_err(|e| PlanError::Config {
            path: None,
            message: e.to_string(),
        })
    }

    /// Reads and parses a shapes file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| PlanError::Config {
            path: Some(path.to_path_buf()),
            message: e.to_string(),
        })
    }

    /// The shapes file as TOML text.
    pub fn to_toml_string(&self) -> Result<String, PlanError> {
        toml::to_string(self).map_err(|e| PlanError::Config {
            path: None,
            message: e.to_string(),
        })
    }
}
