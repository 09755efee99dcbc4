//! Reading text inputs: JSON Lines (plain, gzip or zstd, told apart by their
//! magic bytes) read in batches and tokenized on all cores, documents packed
//! in input order.
use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{FormatError, Result, TokenPos};
use crate::import::Progress;
use crate::pack::{first_overflow, Packer};
use crate::tokenize::{TextOptions, Tokenizer};

/// Lines per batch handed to the tokenizer threads, and the batch's byte budget.
const BATCH_LINES: usize = 4096;
const BATCH_BYTES: usize = 8 << 20;

/// Opens a text file, plain or compressed with gzip or zstd (told apart by
/// their magic bytes),
/// counting the file bytes read in `counter`.
pub(crate) fn open_lines<'a>(
    path: &Path,
    counter: &'a std::cell::Cell<u64>,
) -> Result<Box<dyn BufRead + 'a>> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io("open", path, e))?;
    let mut raw = std::io::BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: file,
            counter,
        },
    );
    let head = raw
        .fill_buf()
        .map_err(|e| FormatError::io("read", path, e))?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(raw),
        ))
    } else if crate::zstd::is_zstd(head) {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            crate::zstd::ZstdReader::new(raw),
        ))
    } else {
        Box::new(raw)
    })
}

struct Counting<'a, R> {
    inner: R,
    counter: &'a std::cell::Cell<u64>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.set(self.counter.get() + n as u64);
        Ok(n)
    }
}

/// Parses one line and tokenizes its text: `None` for a blank line.
fn encode_line(
    path: &Path,
    lineno: u64,
    line: &[u8],
    field: &str,
    tok: &Tokenizer,
) -> Result<Option<Vec<u32>>> {
    let jerr = |reason: String| FormatError::Jsonl {
        path: path.to_path_buf(),
        line: lineno,
        reason,
    };
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| jerr(format!("malformed JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| {
        jerr(format!(
            "the record is not a JSON object: {}",
            kind_of(&value)
        ))
    })?;
    let text = match obj.get(field) {
        None => return Err(jerr(format!("no field '{field}'"))),
        Some(serde_json::Value::String(s)) => s,
        Some(v) => {
            return Err(jerr(format!(
                "field '{field}' is {}, not a string",
                kind_of(v)
            )))
        }
    };
    tok.encode(text).map(Some).map_err(jerr)
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Tokenizes every line of `lines` (`(line number, bytes)`) on up to `threads`
/// threads; results in input order.
fn encode_batch(
    path: &Path,
    lines: &[(u64, Vec<u8>)],
    field: &str,
    tok: &Tokenizer,
    threads: usize,
) -> Vec<Result<Option<Vec<u32>>>> {
    par_map(lines, threads, |(n, l)| {
        encode_line(path, *n, l, field, tok)
    })
    .into_iter()
    .zip(lines)
    .map(|(r, (n, _))| {
        r.unwrap_or_else(|| {
            Err(FormatError::Jsonl {
                path: path.to_path_buf(),
                line: *n,
                reason: "a tokenizer thread failed".into(),
            })
        })
    })
    .collect()
}

/// Tokenizes `texts` on up to `threads` threads; results in input order.
pub(crate) fn encode_texts(
    tok: &Tokenizer,
    texts: &[String],
    threads: usize,
) -> Vec<std::result::Result<Vec<u32>, String>> {
    par_map(texts, threads, |t| tok.encode(t))
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("a tokenizer thread failed".into())))
        .collect()
}

/// Applies `f` to every item on up to `threads` threads; results in input
/// order (`None` only if a worker panicked).
fn par_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = threads.min(items.len());
    if threads <= 1 {
        return items.iter().map(|i| Some(f(i))).collect();
    }
    // Threads take blocks of items from a shared cursor, so long items balance out.
    const BLOCK: usize = 16;
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = Vec::new();
    out.resize_with(items.len(), || None);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let start = next.fetch_add(BLOCK, Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        let end = (start + BLOCK).min(items.len());
                        for (i, item) in items[start..end].iter().enumerate() {
                            done.push((start + i, f(item)));
                        }
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            // A worker cannot panic (encode catches the tokenizer's panics); a
            // missing result is reported by the caller all the same.
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    out[i] = Some(r);
                }
            }
        }
    });
    out
}

/// Packs the documents of a text JSON Lines file (plain, gzip or zstd).
pub(crate) fn import_text(
    packer: &mut Packer,
    path: &Path,
    opts: &TextOptions,
    tok: &Tokenizer,
    progress: &dyn Fn(u64),
) -> Result<()> {
    let dtype = packer.dtype();
    let max = dtype.max_id();
    if let Some(b) = opts.bos {
        if u64::from(b) > max {
            return Err(FormatError::InvalidOption(format!(
                "BOS id {b} does not fit {dtype}"
            )));
        }
    }
    let counter = std::cell::Cell::new(0u64);
    let mut reader = open_lines(path, &counter)?;
    let mut prog = Progress::new(progress);
    let mut reported = 0u64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(32));
    let mut batch: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH_LINES);
    let mut lineno = 0u64;
    let mut document = 0u64;
    let mut eof = false;
    while !eof {
        batch.clear();
        let mut bytes = 0usize;
        while batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
            let mut line = Vec::new();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| FormatError::Jsonl {
                    path: path.to_path_buf(),
                    line: lineno + 1,
                    reason: format!("read error: {e}"),
                })?;
            if n == 0 {
                eof = true;
                break;
            }
            lineno += 1;
            bytes += n;
            batch.push((lineno, line));
        }
        for (result, (line, _)) in encode_batch(path, &batch, &opts.field, tok, threads)
            .into_iter()
            .zip(&batch)
        {
            let Some(tokens) = result? else { continue };
            push_document(packer, path, &tokens, max, opts.bos, |i| TokenPos::Text {
                line: *line,
                document,
                token: i,
            })?;
            document += 1;
        }
        prog.add(counter.get() - reported);
        reported = counter.get();
    }
    Ok(())
}

/// Appends one tokenized document (BOS first when given; the tokenizer's
/// EOS is already in `tokens`) to `packer`, after checking every id fits
/// the output dtype (`max`); an id that does not is an error at `pos(i)`.
pub(crate) fn push_document(
    packer: &mut Packer,
    path: &Path,
    tokens: &[u32],
    max: u64,
    bos: Option<u32>,
    pos: impl Fn(u64) -> TokenPos,
) -> Result<()> {
    if let Some((i, v)) = first_overflow(tokens, max) {
        return Err(FormatError::TokenOverflow {
            path: path.to_path_buf(),
            pos: pos(i as u64),
            value: u64::from(v),
            dtype: packer.dtype(),
        });
    }
    if let Some(b) = bos {
        packer.push_tokens(&[b])?;
    }
    packer.push_tokens(tokens)?;
    packer.end_document()
}
