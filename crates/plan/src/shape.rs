//! The plan's view of a dataset: sources described by their shapes alone
//! (sequence size, file counts and offsets, fingerprint), no data.

use seqfeed_format::{SpecialTokens, TokenizerInfo};
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
    /// The special-token ids recorded in the source's manifest (EOS, BOS,
    /// pad), when `seqfeed pack` recorded them: the trainer's default EOD id.
    #[serde(default, skip_serializing_if = "SpecialTokens::is_empty")]
    pub special_tokens: SpecialTokens,
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
    /// The dataset fingerprint of these sources (as `seqfeed plan shapes`
    /// writes it); when present it must equal the one the sources give
    /// ([`ShapesFile::dataset_fingerprint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The sources.
    pub sources: Vec<SourceShape>,
}

impl ShapesFile {
    /// The shapes of `sources`, with their dataset fingerprint recorded.
    pub fn new(sources: Vec<SourceShape>) -> Self {
        let mut file = ShapesFile {
            fingerprint: None,
            sources,
        };
        file.fingerprint = Some(file.dataset_fingerprint());
        file
    }

    /// The dataset fingerprint of the sources, as
    /// [`seqfeed_format::Dataset::fingerprint`] gives it for the same
    /// manifests (every source of the dataset must be listed).
    pub fn dataset_fingerprint(&self) -> String {
        seqfeed_format::fingerprint_of(
            self.sources
                .iter()
                .map(|s| (s.name.as_str(), s.fingerprint.as_str())),
        )
    }

    fn checked(self, path: Option<&std::path::Path>) -> Result<Self, PlanError> {
        if let Some(want) = &self.fingerprint {
            let have = self.dataset_fingerprint();
            if *want != have {
                return Err(PlanError::Config {
                    path: path.map(Into::into),
                    message: format!(
                        "the file records dataset fingerprint {want}, but its sources give {have}: it was edited, or sources were added or removed"
                    ),
                });
            }
        }
        Ok(self)
    }

    /// Parses a shapes file.
    pub fn from_toml_str(text: &str) -> Result<Self, PlanError> {
        let file: ShapesFile = toml::from_str(text).map_err(|e| PlanError::Config {
            path: None,
            message: e.to_string(),
        })?;
        file.checked(None)
    }

    /// Reads and parses a shapes file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ShapesFile = toml::from_str(&text).map_err(|e| PlanError::Config {
            path: Some(path.to_path_buf()),
            message: e.to_string(),
        })?;
        file.checked(Some(path))
    }

    /// The shapes file as TOML text.
    pub fn to_toml_string(&self) -> Result<String, PlanError> {
        toml::to_string(self).map_err(|e| PlanError::Config {
            path: None,
            message: e.to_string(),
        })
    }
}
