//! The error type of this crate. Every variant names the file and, where it
//! applies, the byte offset, sequence index, or line at fault.
use std::fmt;
use std::path::PathBuf;

use crate::Dtype;

/// Where in an input file a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPos {
    /// A flat token array (headerless or `.npy`): the token index and its byte offset.
    Array {
        /// Index of the token in the array.
        token: u64,
        /// Byte offset of the token in the file.
        byte: u64,
    },
    /// A Megatron corpus: the sequence (document) index, the token within it, and
    /// the byte offset in the `.bin` file.
    Megatron {
        /// Megatron sequence index.
        sequence: u64,
        /// Token index within that sequence.
        token: u64,
        /// Byte offset in the `.bin` file.
        byte: u64,
    },
    /// A JSON Lines file: 1-based line number and the element index in the token array.
    Line {
        /// 1-based line number.
        line: u64,
        /// Index of the element in the token array.
        element: u64,
    },
    /// A Parquet row: the row group and the row within it (both 0-based), and
    /// the element of its token list (or the token of its tokenized text).
    Row {
        /// Row group index.
        row_group: u64,
        /// Row index within the row group.
        row: u64,
        /// Element (token) index within the row's document.
        element: u64,
    },
    /// A text JSON Lines file: 1-based line number, 0-based document index in
    /// the file (blank lines are not documents), and the index of the token
    /// within the document's tokenized text.
    Text {
        /// 1-based line number.
        line: u64,
        /// 0-based document index within the file.
        document: u64,
        /// Index of the token in the document's tokens.
        token: u64,
    },
}

impl fmt::Display for TokenPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenPos::Array { token, byte } => write!(f, "token {token} (byte offset {byte})"),
            TokenPos::Megatron {
                sequence,
                token,
                byte,
            } => {
                write!(
                    f,
                    "sequence {sequence}, token {token} (.bin byte offset {byte})"
                )
            }
            TokenPos::Line { line, element } => write!(f, "line {line}, element {element}"),
            TokenPos::Row {
                row_group,
                row,
                element,
            } => write!(f, "row group {row_group}, row {row}, element {element}"),
            TokenPos::Text {
                line,
                document,
                token,
            } => write!(
                f,
                "line {line} (document {document}, 0-based), token {token} of the document's text"
            ),
        }
    }
}

/// Everything that can go wrong reading, writing, packing or verifying sequence files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// An I/O operation on a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "read", "write", "rename", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than its header or structure says it must be.
    #[error("{path}: truncated: {what} needs {expected} bytes but the file has {actual}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which part did not fit.
        what: &'static str,
        /// Bytes needed.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file does not start with the expected magic bytes.
    #[error("{path}: bad magic at offset 0: expected {expected:?}, found {found:?}")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic expected.
        expected: String,
        /// The bytes found (escaped).
        found: String,
    },
    /// The file's format version is not one this build reads.
    #[error("{path}: unsupported format version {found} at offset {offset} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Byte offset of the version field.
        offset: u64,
        /// The version found.
        found: u64,
        /// The version supported.
        supported: u64,
    },
    /// A header field is invalid.
    #[error("{path}: invalid header field at offset {offset}: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Byte offset of the field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The header's CRC32C does not match its bytes.
    #[error("{path}: header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the header is corrupt")]
    HeaderChecksum {
        /// The file.
        path: PathBuf,
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header bytes.
        computed: u32,
    },
    /// A sequence index past the end of a file or source.
    #[error("{path}: sequence index {index} out of range (count {count})")]
    IndexOutOfRange {
        /// The file or source directory.
        path: PathBuf,
        /// The index asked for.
        index: u64,
        /// Number of sequences present.
        count: u64,
    },
    /// A typed token accessor was used on a file of the other dtype.
    #[error("{path}: file holds {found} tokens, {expected} requested")]
    DtypeAccess {
        /// The file.
        path: PathBuf,
        /// Dtype requested.
        expected: Dtype,
        /// Dtype of the file.
        found: Dtype,
    },
    /// One sequence's bytes do not match its CRC32C.
    #[error("{path}: sequence {index} (byte offset {offset}) fails its CRC32C: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The file.
        path: PathBuf,
        /// Sequence index within the file.
        index: u64,
        /// Byte offset of the sequence in the file.
        offset: u64,
        /// CRC from the table.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The file has no per-sequence CRC table, so a single sequence cannot be verified.
    #[error("{path}: file has no per-sequence CRC table")]
    NoCrcTable {
        /// The file.
        path: PathBuf,
    },
    /// The payload's blake3 hash does not match the stored one.
    #[error("{path}: payload hash mismatch: stored {stored}, computed {computed}{hint}")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// Hash stored (header or manifest), hex.
        stored: String,
        /// Hash computed, hex.
        computed: String,
        /// Extra words on where the damage may be.
        hint: String,
    },
    /// A manifest is unreadable or invalid.
    #[error("{path}: invalid manifest: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A manifest disagrees with one of its files.
    #[error("manifest {manifest} disagrees with {file}: {field} is {manifest_value} in the manifest but {file_value} in the file")]
    ManifestMismatch {
        /// The manifest file.
        manifest: PathBuf,
        /// The sequence file.
        file: PathBuf,
        /// The field that differs.
        field: &'static str,
        /// Value in the manifest.
        manifest_value: Box<str>,
        /// Value in the file.
        file_value: Box<str>,
    },
    /// Two files of one source disagree on dtype or seq_len.
    #[error("{path}: {field} is {found} but the source's first file {first} has {expected}")]
    SourceMismatch {
        /// The disagreeing file.
        path: PathBuf,
        /// The source's first file.
        first: PathBuf,
        /// "dtype" or "seq_len" or "source name".
        field: &'static str,
        /// Value in the first file.
        expected: Box<str>,
        /// Value in this file.
        found: Box<str>,
    },
    /// A token id does not fit the output dtype.
    #[error("{path}: token id {value} at {pos} does not fit the output dtype {dtype} (max {max})", max = dtype.max_id())]
    TokenOverflow {
        /// The input file.
        path: PathBuf,
        /// Where the token is.
        pos: TokenPos,
        /// The id found.
        value: u64,
        /// The output dtype.
        dtype: Dtype,
    },
    /// A negative token id in a signed input.
    #[error("{path}: negative token id {value} at {pos}")]
    NegativeToken {
        /// The input file.
        path: PathBuf,
        /// Where the token is.
        pos: TokenPos,
        /// The id found.
        value: i64,
    },
    /// A Megatron `.idx`/`.bin` pair is invalid.
    #[error("{path}: invalid Megatron index at offset {offset}: {reason}")]
    Megatron {
        /// The `.idx` or `.bin` file.
        path: PathBuf,
        /// Byte offset of the offending field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A `.npy` file is invalid or of an unsupported kind.
    #[error("{path}: invalid .npy at offset {offset}: {reason}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// Byte offset of the offending part.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A JSON Lines record is invalid.
    #[error("{path}: line {line}: {reason}")]
    Jsonl {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A Parquet input is invalid or unreadable. `at` names the row group and
    /// row (both 0-based) when the problem is in one.
    #[error("{path}: {at}{reason}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// `"row group G, row R: "`, `"row group G: "` or empty.
        at: String,
        /// What is wrong.
        reason: String,
    },
    /// A raw token array's length is not a multiple of its token size.
    #[error("{path}: length {len} is not a multiple of the {size}-byte token size (trailing partial token at offset {offset})")]
    RaggedArray {
        /// The file.
        path: PathBuf,
        /// File length.
        len: u64,
        /// Token size.
        size: u64,
        /// Offset of the partial token.
        offset: u64,
    },
    /// The output path already exists.
    #[error("{path}: output already exists (remove it first)")]
    OutputExists {
        /// The path.
        path: PathBuf,
    },
    /// A dataset directory is invalid.
    #[error("{path}: invalid dataset: {reason}")]
    Dataset {
        /// The dataset root.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An option or argument is invalid.
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl FormatError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn error_stays_small() {
        // Results of this type are returned everywhere; keep it cheap to move.
        assert!(
            std::mem::size_of::<super::FormatError>() <= 112,
            "{}",
            std::mem::size_of::<super::FormatError>()
        );
    }
}
