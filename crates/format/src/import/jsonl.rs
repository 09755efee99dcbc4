//! JSON Lines of token ids (one document per line, in a field or as a bare array).
use std::io::BufRead;
use std::path::Path;

use super::{token_error, Progress};
use crate::error::{FormatError, Result, TokenPos};
use crate::pack::Packer;

// ---------------------------------------------------------------- JSON Lines

pub(super) fn import_jsonl(
    packer: &mut Packer,
    path: &Path,
    field: &str,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let counter = std::cell::Cell::new(0u64);
    let mut reader = crate::text_input::open_lines(path, &counter)?;
    let mut line = String::new();
    let mut tokens: Vec<u32> = Vec::new();
    let mut prog = Progress::new(progress);
    let mut reported = 0u64;
    let dtype = packer.dtype();
    let max = dtype.max_id();
    for lineno in 1u64.. {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| FormatError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        // File bytes (compressed ones for gzip).
        prog.add(counter.get() - reported);
        reported = counter.get();
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let jerr = |reason: String| FormatError::Jsonl {
            path: path.to_path_buf(),
            line: lineno,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| jerr(e.to_string()))?;
        let arr = value
            .get(field)
            .ok_or_else(|| jerr(format!("no field '{field}'")))?
            .as_array()
            .ok_or_else(|| jerr(format!("field '{field}' is not an array")))?;
        tokens.clear();
        for (element, v) in arr.iter().enumerate() {
            let pos = TokenPos::Line {
                line: lineno,
                element: element as u64,
            };
            let t: i128 = if let Some(u) = v.as_u64() {
                i128::from(u)
            } else if let Some(i) = v.as_i64() {
                i128::from(i)
            } else {
                return Err(jerr(format!(
                    "element {element} of '{field}' is not an integer token id: {v}"
                )));
            };
            if t < 0 || t > i128::from(max) {
                return Err(token_error(path, pos, t, dtype));
            }
            tokens.push(t as u32);
        }
        packer.push_document(&tokens)?;
    }
    Ok(())
}
