//! NumPy `.npy` inputs: the header parser and the importer (a whole array is one document).
use std::path::Path;

use super::{push_array, InDtype, Progress, CHUNK_TOKENS};
use crate::error::{FormatError, Result, TokenPos};
use crate::pack::Packer;

// ---------------------------------------------------------------- .npy

/// The parsed header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: InDtype,
    /// Array shape.
    pub shape: Vec<u64>,
    /// Byte offset of the data.
    pub data_offset: u64,
}

/// Parses a `.npy` header from the start of `bytes` (the whole file).
pub fn parse_npy_header(path: &Path, bytes: &[u8]) -> Result<NpyHeader> {
    let bad = |offset: u64, reason: String| FormatError::Npy {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        if bytes.len() >= 6 && &bytes[..6] != MAGIC {
            return Err(FormatError::BadMagic {
                path: path.to_path_buf(),
                expected: "\\x93NUMPY".into(),
                found: bytes[..6].escape_ascii().to_string(),
            });
        }
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the .npy preamble",
            expected: 10,
            actual: bytes.len() as u64,
        });
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u64::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10u64),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(FormatError::Truncated {
                    path: path.to_path_buf(),
                    what: "the .npy preamble",
                    expected: 12,
                    actual: bytes.len() as u64,
                });
            }
            (
                u64::from(u32::from_le_bytes([
                    bytes[8], bytes[9], bytes[10], bytes[11],
                ])),
                12u64,
            )
        }
        v => {
            return Err(FormatError::UnsupportedVersion {
                path: path.to_path_buf(),
                offset: 6,
                found: u64::from(v),
                supported: 3,
            });
        }
    };
    let data_offset = hstart + hlen;
    if (bytes.len() as u64) < data_offset {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the .npy header",
            expected: data_offset,
            actual: bytes.len() as u64,
        });
    }
    let text = std::str::from_utf8(&bytes[hstart as usize..data_offset as usize])
        .map_err(|_| bad(hstart, "header is not text".into()))?;
    let field = |key: &str| -> Result<&str> {
        let k = format!("'{key}':");
        let at = text
            .find(&k)
            .ok_or_else(|| bad(hstart, format!("header has no '{key}'")))?;
        Ok(text[at + k.len()..].trim_start())
    };
    let descr_rest = field("descr")?;
    let descr = descr_rest
        .strip_prefix('\'')
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad(hstart, "descr is not a quoted string".into()))?;
    let split = descr.chars().next().map_or(0, char::len_utf8);
    let (endian, code) = descr.split_at(split);
    let dtype = match code {
        "u1" => InDtype::U8,
        "i1" => InDtype::I8,
        "u2" => InDtype::U16,
        "i2" => InDtype::I16,
        "u4" => InDtype::U32,
        "i4" => InDtype::I32,
        "i8" => InDtype::I64,
        _ => {
            return Err(bad(
                hstart,
                format!("unsupported dtype '{descr}' (integers u1 i1 u2 i2 u4 i4 i8 only)"),
            ))
        }
    };
    if endian == ">" && dtype.size() > 1 {
        return Err(bad(
            hstart,
            format!("big-endian dtype '{descr}' is not supported"),
        ));
    }
    if !matches!(endian, "<" | "|" | "=" | ">") {
        return Err(bad(
            hstart,
            format!("dtype '{descr}' has no byte-order mark"),
        ));
    }
    let fortran = field("fortran_order")?.starts_with("True");
    let shape_rest = field("shape")?;
    let inner = shape_rest
        .strip_prefix('(')
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad(hstart, "shape is not a tuple".into()))?;
    let mut shape = Vec::new();
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        shape.push(
            part.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| bad(hstart, format!("bad shape entry '{part}'")))?,
        );
    }
    if fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(bad(
            hstart,
            "Fortran-order arrays with more than one dimension are not supported".into(),
        ));
    }
    let elems = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(hstart, "shape overflows".into()))?;
    let need = elems
        .checked_mul(dtype.size() as u64)
        .and_then(|b| b.checked_add(data_offset))
        .ok_or_else(|| bad(hstart, "shape overflows".into()))?;
    let actual = bytes.len() as u64;
    if actual < need {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the .npy data",
            expected: need,
            actual,
        });
    }
    if actual > need {
        return Err(bad(
            need,
            format!("{} bytes after the array data", actual - need),
        ));
    }
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset,
    })
}

pub(super) fn import_npy(packer: &mut Packer, path: &Path, progress: &dyn Fn(u64)) -> Result<()> {
    let map = crate::mmap::map_path(path)?;
    let h = parse_npy_header(path, &map)?;
    let data = &map[h.data_offset as usize..];
    let mut scratch = Vec::with_capacity(CHUNK_TOKENS);
    let mut prog = Progress {
        f: progress,
        pending: 0,
    };
    prog.add(h.data_offset);
    push_array(
        packer,
        path,
        data,
        h.dtype,
        h.data_offset,
        &|token, byte| TokenPos::Array { token, byte },
        &mut scratch,
        &mut prog,
    )?;
    packer.end_document()
}
