//! One sequence file: header, page-aligned payload, optional CRC32C table.
//!
//! See `docs/FORMAT.md` for the byte layout. Everything is little-endian.
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dtype::{Dtype, Token};
use crate::error::{FormatError, Result};

mod writer;

pub(crate) use writer::temp_sibling;
pub use writer::{SeqFileWriter, WrittenFile};

/// The 8 magic bytes every sequence file starts with.
pub const MAGIC: [u8; 8] = *b"SEQFEED\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Alignment of the payload (and of `data_offset`).
pub const PAGE: u64 = 4096;
/// Size of the fixed part of the header; the source name follows it.
pub const FIXED_HEADER_LEN: u64 = 128;
/// Longest allowed source name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Header flag: a per-sequence CRC32C table follows the payload.
pub const FLAG_CRC: u8 = 1;

// Field offsets within the header.
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_DTYPE: usize = 16;
const OFF_FLAGS: usize = 17;
const OFF_NAME_LEN: usize = 18;
const OFF_RESERVED0: usize = 20;
const OFF_SEQ_LEN: usize = 24;
const OFF_COUNT: usize = 32;
const OFF_DATA_OFFSET: usize = 40;
const OFF_CRC_OFFSET: usize = 48;
const OFF_FILE_LEN: usize = 56;
const OFF_HASH: usize = 64;
const OFF_HEADER_CRC: usize = 96;
const OFF_RESERVED1: usize = 100;

/// Checks that `name` is a valid source name: 1..=255 bytes of ASCII letters,
/// digits, `.`, `_`, `-`, not starting with `.` (names double as directory names).
pub fn validate_source_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "source name must be 1..={MAX_NAME_LEN} bytes, got {}",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return Err(format!("source name '{name}' must not start with '.'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "source name '{name}' has character {c:?} (allowed: A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// The decoded header of a sequence file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Token type.
    pub dtype: Dtype,
    /// Tokens per sequence.
    pub seq_len: u64,
    /// Number of sequences.
    pub count: u64,
    /// Byte offset of the payload (a multiple of [`PAGE`]).
    pub data_offset: u64,
    /// Byte offset of the CRC32C table, if present.
    pub crc_offset: Option<u64>,
    /// Total file length in bytes.
    pub file_len: u64,
    /// blake3 hash of the payload bytes.
    pub payload_hash: [u8; 32],
    /// Name of the source the file belongs to.
    pub source_name: String,
}

impl Header {
    /// Bytes per sequence.
    pub fn seq_bytes(&self) -> u64 {
        self.seq_len * self.dtype.size() as u64
    }

    /// Header length covered by the header CRC (fixed part plus name).
    pub fn header_len(&self) -> u64 {
        FIXED_HEADER_LEN + self.source_name.len() as u64
    }

    /// Encodes the header into exactly `header_len()` bytes (CRC filled in).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.header_len() as usize];
        b[..8].copy_from_slice(&MAGIC);
        put_u32(&mut b, OFF_VERSION, VERSION);
        put_u32(&mut b, OFF_HEADER_LEN, self.header_len() as u32);
        b[OFF_DTYPE] = self.dtype.code();
        b[OFF_FLAGS] = if self.crc_offset.is_some() {
            FLAG_CRC
        } else {
            0
        };
        b[OFF_NAME_LEN..OFF_NAME_LEN + 2]
            .copy_from_slice(&(self.source_name.len() as u16).to_le_bytes());
        put_u64(&mut b, OFF_SEQ_LEN, self.seq_len);
        put_u64(&mut b, OFF_COUNT, self.count);
        put_u64(&mut b, OFF_DATA_OFFSET, self.data_offset);
        put_u64(&mut b, OFF_CRC_OFFSET, self.crc_offset.unwrap_or(0));
        put_u64(&mut b, OFF_FILE_LEN, self.file_len);
        b[OFF_HASH..OFF_HASH + 32].copy_from_slice(&self.payload_hash);
        b[FIXED_HEADER_LEN as usize..].copy_from_slice(self.source_name.as_bytes());
        let crc = crc32c::crc32c(&b);
        put_u32(&mut b, OFF_HEADER_CRC, crc);
        b
    }

    /// Decodes and validates a header from the start of `bytes`, the whole file
    /// (`path` only names the file in errors).
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Header> {
        let actual = bytes.len() as u64;
        let truncated = |what, expected| FormatError::Truncated {
            path: path.to_path_buf(),
            what,
            expected,
            actual,
        };
        let bad = |offset: usize, reason: String| FormatError::BadHeader {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() < 8 || bytes[..8] != MAGIC {
            let n = bytes.len().min(8);
            if n == 8 || bytes[..n] != MAGIC[..n] {
                return Err(FormatError::BadMagic {
                    path: path.to_path_buf(),
                    expected: String::from_utf8_lossy(&MAGIC).escape_debug().to_string(),
                    found: bytes[..n].escape_ascii().to_string(),
                });
            }
        }
        if bytes.len() < FIXED_HEADER_LEN as usize {
            return Err(truncated("the fixed header", FIXED_HEADER_LEN));
        }
        let version = get_u32(bytes, OFF_VERSION);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion {
                path: path.to_path_buf(),
                offset: OFF_VERSION as u64,
                found: u64::from(version),
                supported: u64::from(VERSION),
            });
        }
        let header_len = u64::from(get_u32(bytes, OFF_HEADER_LEN));
        let name_len = u64::from(u16::from_le_bytes([
            bytes[OFF_NAME_LEN],
            bytes[OFF_NAME_LEN + 1],
        ]));
        if name_len as usize > MAX_NAME_LEN || header_len != FIXED_HEADER_LEN + name_len {
            return Err(bad(
                OFF_HEADER_LEN,
                format!("header_len {header_len} does not equal {FIXED_HEADER_LEN} + name_len {name_len} (name_len max {MAX_NAME_LEN})"),
            ));
        }
        if actual < header_len {
            return Err(truncated("the header", header_len));
        }
        let hdr = &bytes[..header_len as usize];
        let stored_crc = get_u32(hdr, OFF_HEADER_CRC);
        let mut h = crc32c::crc32c(&hdr[..OFF_HEADER_CRC]);
        h = crc32c::crc32c_append(h, &[0u8; 4]);
        h = crc32c::crc32c_append(h, &hdr[OFF_HEADER_CRC + 4..]);
        if h != stored_crc {
            return Err(FormatError::HeaderChecksum {
                path: path.to_path_buf(),
                stored: stored_crc,
                computed: h,
            });
        }
        let dtype = Dtype::from_code(hdr[OFF_DTYPE])
            .ok_or_else(|| bad(OFF_DTYPE, format!("unknown dtype code {}", hdr[OFF_DTYPE])))?;
        let flags = hdr[OFF_FLAGS];
        if flags & !FLAG_CRC != 0 {
            return Err(bad(OFF_FLAGS, format!("unknown flag bits {flags:#04x}")));
        }
        if get_u32(hdr, OFF_RESERVED0) != 0
            || hdr[OFF_RESERVED1..FIXED_HEADER_LEN as usize]
                .iter()
                .any(|&b| b != 0)
        {
            return Err(bad(
                OFF_RESERVED1,
                "reserved header bytes are not zero".into(),
            ));
        }
        let seq_len = get_u64(hdr, OFF_SEQ_LEN);
        if seq_len == 0 {
            return Err(bad(OFF_SEQ_LEN, "seq_len is 0".into()));
        }
        let count = get_u64(hdr, OFF_COUNT);
        let data_offset = get_u64(hdr, OFF_DATA_OFFSET);
        if data_offset % PAGE != 0 || data_offset < header_len {
            return Err(bad(
                OFF_DATA_OFFSET,
                format!("data_offset {data_offset} is not a multiple of {PAGE} at or after the header end {header_len}"),
            ));
        }
        let seq_bytes = seq_len
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| bad(OFF_SEQ_LEN, format!("seq_len {seq_len} overflows")))?;
        let payload_end = count
            .checked_mul(seq_bytes)
            .and_then(|p| p.checked_add(data_offset))
            .ok_or_else(|| {
                bad(
                    OFF_COUNT,
                    format!("count {count} x {seq_bytes} bytes overflows"),
                )
            })?;
        let crc_field = get_u64(hdr, OFF_CRC_OFFSET);
        let (crc_offset, expected_len) = if flags & FLAG_CRC != 0 {
            let want = round_up(payload_end, 8);
            if crc_field != want {
                return Err(bad(
                    OFF_CRC_OFFSET,
                    format!("crc_offset {crc_field} should be {want}"),
                ));
            }
            let end = count
                .checked_mul(4)
                .and_then(|t| t.checked_add(want))
                .ok_or_else(|| bad(OFF_COUNT, format!("count {count} overflows")))?;
            (Some(want), end)
        } else {
            if crc_field != 0 {
                return Err(bad(
                    OFF_CRC_OFFSET,
                    format!("crc_offset {crc_field} set but the CRC flag is not"),
                ));
            }
            (None, payload_end)
        };
        let file_len = get_u64(hdr, OFF_FILE_LEN);
        if file_len != expected_len {
            return Err(bad(
                OFF_FILE_LEN,
                format!("file_len {file_len} disagrees with the layout ({expected_len} bytes for {count} sequences)"),
            ));
        }
        if actual < file_len {
            let what = if actual < payload_end {
                "the payload"
            } else {
                "the CRC table"
            };
            return Err(truncated(what, file_len));
        }
        if actual > file_len {
            return Err(bad(
                OFF_FILE_LEN,
                format!(
                    "file has {actual} bytes, {} more than file_len {file_len}",
                    actual - file_len
                ),
            ));
        }
        let name_bytes = &hdr[FIXED_HEADER_LEN as usize..];
        let source_name = std::str::from_utf8(name_bytes)
            .map_err(|_| bad(FIXED_HEADER_LEN as usize, "source name is not UTF-8".into()))?
            .to_string();
        validate_source_name(&source_name).map_err(|r| bad(FIXED_HEADER_LEN as usize, r))?;
        if let Some(p) = bytes[header_len as usize..data_offset as usize]
            .iter()
            .position(|&b| b != 0)
        {
            return Err(bad(
                header_len as usize + p,
                "padding before the payload is not zero".into(),
            ));
        }
        if let Some(c) = crc_offset {
            if let Some(p) = bytes[payload_end as usize..c as usize]
                .iter()
                .position(|&b| b != 0)
            {
                return Err(bad(
                    payload_end as usize + p,
                    "padding before the CRC table is not zero".into(),
                ));
            }
        }
        let mut payload_hash = [0u8; 32];
        payload_hash.copy_from_slice(&hdr[OFF_HASH..OFF_HASH + 32]);
        Ok(Header {
            dtype,
            seq_len,
            count,
            data_offset,
            crc_offset,
            file_len,
            payload_hash,
            source_name,
        })
    }
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A memory-mapped, validated sequence file. Token access is zero-copy.
#[derive(Debug)]
pub struct SeqFile {
    path: PathBuf,
    map: Mmap,
    header: Header,
    /// (device, inode) of the file mapped, to notice a replaced file.
    identity: (u64, u64),
}

impl SeqFile {
    /// Maps `path` and validates its header and length (not the payload hash;
    /// see [`SeqFile::verify`]).
    pub fn open(path: impl AsRef<Path>) -> Result<SeqFile> {
        use std::os::unix::fs::MetadataExt;
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| FormatError::io("open", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| FormatError::io("stat", &path, e))?;
        let map = crate::mmap::map_file(&file, &path)?;
        let header = Header::decode(&path, &map)?;
        Ok(SeqFile {
            path,
            map,
            header,
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// The file's path as opened.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Token type.
    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }
    /// Tokens per sequence.
    pub fn seq_len(&self) -> u64 {
        self.header.seq_len
    }
    /// Number of sequences.
    pub fn count(&self) -> u64 {
        self.header.count
    }
    /// Byte offset of the payload (page-aligned).
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }
    /// Bytes per sequence (`seq_len * dtype.size()`).
    pub fn seq_bytes(&self) -> u64 {
        self.header.seq_bytes()
    }
    /// Byte offset of sequence `i` within the file (no bounds check).
    pub fn sequence_offset(&self, i: u64) -> u64 {
        self.header.data_offset + i * self.seq_bytes()
    }
    /// Total file length.
    pub fn file_len(&self) -> u64 {
        self.header.file_len
    }
    /// Name of the source recorded in the header.
    pub fn source_name(&self) -> &str {
        &self.header.source_name
    }
    /// blake3 hash of the payload as stored in the header.
    pub fn payload_hash(&self) -> [u8; 32] {
        self.header.payload_hash
    }
    /// [`SeqFile::payload_hash`] as lower-case hex.
    pub fn payload_hash_hex(&self) -> String {
        hex(&self.header.payload_hash)
    }
    /// Whether the file carries a per-sequence CRC32C table.
    pub fn has_crc(&self) -> bool {
        self.header.crc_offset.is_some()
    }
    /// The whole mapped file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
    /// The underlying map (e.g. to register the whole file as an RDMA region).
    pub fn mmap(&self) -> &Mmap {
        &self.map
    }
    /// The payload: all sequences, back to back.
    pub fn payload(&self) -> &[u8] {
        let start = self.header.data_offset as usize;
        &self.map[start..start + (self.count() * self.seq_bytes()) as usize]
    }
    /// The per-sequence CRC32C table, if present.
    pub fn crc_table(&self) -> Option<&[u32]> {
        let off = self.header.crc_offset? as usize;
        let bytes = &self.map[off..off + self.count() as usize * 4];
        // The map is page-aligned and `off` is a multiple of 8, so the cast cannot fail.
        bytemuck::try_cast_slice(bytes).ok()
    }

    fn check_index(&self, i: u64) -> Result<()> {
        if i >= self.count() {
            return Err(FormatError::IndexOutOfRange {
                path: self.path.clone(),
                index: i,
                count: self.count(),
            });
        }
        Ok(())
    }

    /// The bytes of sequence `i`.
    pub fn sequence_bytes(&self, i: u64) -> Result<&[u8]> {
        self.check_index(i)?;
        let start = self.sequence_offset(i) as usize;
        Ok(&self.map[start..start + self.seq_bytes() as usize])
    }

    /// The tokens of sequence `i` as `&[T]` (zero-copy); `T` must match the file's dtype.
    pub fn tokens<T: Token>(&self, i: u64) -> Result<&[T]> {
        if T::DTYPE != self.dtype() {
            return Err(FormatError::DtypeAccess {
                path: self.path.clone(),
                expected: T::DTYPE,
                found: self.dtype(),
            });
        }
        let bytes = self.sequence_bytes(i)?;
        bytemuck::try_cast_slice(bytes).map_err(|e| FormatError::BadHeader {
            path: self.path.clone(),
            offset: self.sequence_offset(i),
            reason: format!("sequence is not aligned for {}: {e}", T::DTYPE),
        })
    }
    /// The tokens of sequence `i` of a u16 file.
    pub fn tokens_u16(&self, i: u64) -> Result<&[u16]> {
        self.tokens::<u16>(i)
    }
    /// The tokens of sequence `i` of a u32 file.
    pub fn tokens_u32(&self, i: u64) -> Result<&[u32]> {
        self.tokens::<u32>(i)
    }
    /// The tokens of sequence `i` widened to u32 (copies; for display and tests).
    pub fn tokens_as_u32(&self, i: u64) -> Result<Vec<u32>> {
        Ok(match self.dtype() {
            Dtype::U16 => self.tokens_u16(i)?.iter().map(|&t| u32::from(t)).collect(),
            Dtype::U32 => self.tokens_u32(i)?.to_vec(),
        })
    }

    /// Checks sequence `i` against its CRC32C (for use after a remote read, see
    /// [`check_sequence_crc`]).
    pub fn verify_sequence(&self, i: u64) -> Result<()> {
        let table = self.crc_table().ok_or_else(|| FormatError::NoCrcTable {
            path: self.path.clone(),
        })?;
        let bytes = self.sequence_bytes(i)?;
        let computed = crc32c::crc32c(bytes);
        let stored = table[i as usize];
        if computed != stored {
            return Err(FormatError::CrcMismatch {
                path: self.path.clone(),
                index: i,
                offset: self.sequence_offset(i),
                stored,
                computed,
            });
        }
        Ok(())
    }

    /// Recomputes every CRC (stopping at the first bad sequence) and the payload
    /// hash. `progress` is called with payload bytes hashed since the last call.
    ///
    /// Reads the file with `pread` rather than through the map, so a file
    /// truncated (or replaced) while it is being verified is an error naming
    /// it, never a SIGBUS. Each ~1 MiB run is CRC-checked and then hashed
    /// while it is still in cache (measured faster than checking CRCs on a
    /// second thread, which streams the payload from memory twice).
    pub fn verify(&self, progress: &dyn Fn(u64)) -> Result<()> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        let file = File::open(&self.path).map_err(|e| FormatError::io("open", &self.path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| FormatError::io("stat", &self.path, e))?;
        let changed = |what: &'static str, actual: u64| FormatError::Truncated {
            path: self.path.clone(),
            what,
            expected: self.file_len(),
            actual,
        };
        if meta.len() < self.file_len() {
            return Err(changed("the file as opened (it shrank since)", meta.len()));
        }
        if (meta.dev(), meta.ino()) != self.identity {
            return Err(FormatError::BadHeader {
                path: self.path.clone(),
                offset: 0,
                reason: "the file was replaced since it was opened; open it again".into(),
            });
        }
        let read_at = |buf: &mut [u8], offset: u64, what: &'static str| -> Result<()> {
            file.read_exact_at(buf, offset).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    let now = file.metadata().map(|m| m.len()).unwrap_or(0);
                    changed(what, now)
                } else {
                    FormatError::io("read", &self.path, e)
                }
            })
        };
        let seq_bytes = self.seq_bytes() as usize;
        let table: Option<Vec<u32>> = match self.header.crc_offset {
            None => None,
            Some(off) => {
                let mut raw = vec![0u8; self.count() as usize * 4];
                read_at(
                    &mut raw,
                    off,
                    "the CRC table (the file shrank while verified)",
                )?;
                Some(
                    raw.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
        };
        let payload_len = self.count() * self.seq_bytes();
        // ~1 MiB runs of whole sequences.
        let run_bytes = (1usize << 20).div_ceil(seq_bytes.max(1)).max(1) * seq_bytes.max(1);
        let mut buf = vec![0u8; run_bytes];
        let mut hasher = blake3::Hasher::new();
        let mut bad = None;
        let mut done = 0u64;
        while done < payload_len {
            let len = (payload_len - done).min(run_bytes as u64) as usize;
            let run = &mut buf[..len];
            read_at(
                run,
                self.data_offset() + done,
                "the payload (the file shrank while verified)",
            )?;
            if let Some(table) = &table {
                let first = done / self.seq_bytes();
                bad = first_bad_crc(run, seq_bytes, &table[first as usize..], first);
                if bad.is_some() {
                    break;
                }
            }
            hasher.update(run);
            progress(len as u64);
            done += len as u64;
        }
        if let Some((index, stored, computed)) = bad {
            return Err(FormatError::CrcMismatch {
                path: self.path.clone(),
                index,
                offset: self.sequence_offset(index),
                stored,
                computed,
            });
        }
        let computed = hasher.finalize();
        if computed.as_bytes() != &self.header.payload_hash {
            return Err(FormatError::HashMismatch {
                path: self.path.clone(),
                stored: self.payload_hash_hex(),
                computed: computed.to_hex().to_string(),
                hint: if table.is_some() {
                    " (every sequence matches its CRC: the stored hash or CRC table is damaged)"
                        .into()
                } else {
                    " (no CRC table to localise the damage)".into()
                },
            });
        }
        Ok(())
    }
}

/// The first sequence of `payload` whose CRC32C differs from `table`, as
/// `(first + index, stored, computed)`.
fn first_bad_crc(
    payload: &[u8],
    seq_bytes: usize,
    table: &[u32],
    first: u64,
) -> Option<(u64, u32, u32)> {
    payload
        .chunks_exact(seq_bytes)
        .zip(table)
        .enumerate()
        .find_map(|(i, (seq, &stored))| {
            let computed = crc32c::crc32c(seq);
            (computed != stored).then_some((first + i as u64, stored, computed))
        })
}

/// Checks `bytes` (one sequence, e.g. just read from a remote node) against its
/// expected CRC32C.
pub fn check_sequence_crc(bytes: &[u8], expected: u32) -> bool {
    crc32c::crc32c(bytes) == expected
}
