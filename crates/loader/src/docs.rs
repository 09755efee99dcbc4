//! Document boundaries of packed rows ([`DocBounds`]), computed by the
//! loader's reader thread for every micro-batch, ahead of the consumer, for
//! attention that must not cross documents (flash-attention's varlen
//! functions, Megatron's `thd` packed sequences, Hugging Face's
//! `cu_seq_lens_q/k`).
//!
//! # The rule
//!
//! A row is packed documents, each ended by the EOD token. **The EOD token
//! belongs to the document it ends; the token after it starts a new
//! document** (Megatron's `reset_position_ids` / `reset_attention_mask`).
//! Each row is independent: a row starts a document at its first token,
//! and a document cut by the end of a row ends there (a document never
//! spans two rows in `cu_seqlens`, even when the next row continues it on
//! disk). So, in a row of `L` tokens:
//!
//! * a row without an EOD is one document of `L` tokens;
//! * an EOD as the last token ends the row's last document (no empty
//!   document follows);
//! * an EOD as the first token is a document of one token;
//! * consecutive EODs make one-token documents (each EOD alone);
//! * a row of EODs only is `L` one-token documents.
//!
//! Only the first `row_tokens` tokens of each row count (`L` = the stored
//! length minus one for rows packed at `L + 1` whose last token is only a
//! label).
//!
//! # The layout
//!
//! For a micro-batch of `R` rows: `cu_seqlens` (int32) has the fixed
//! capacity `R * L + 1` (every token a document is the most there can be),
//! starts at 0, holds the end offset of each document in the flattened
//! `[R * L]` token order (row `r` covers `r * L .. (r + 1) * L`), and is
//! padded after the last valid entry by repeating `R * L` (zero-length
//! documents, what flash-attention varlen users pad with for static
//! shapes). [`DocBounds::num_docs`] says how many documents are valid:
//! `cu_seqlens[..num_docs + 1]`. `document_ids` (int32, `[R, L]`) numbers
//! each token's document within its row from 0; `max_seqlen` is the longest
//! document of the micro-batch.

use crate::block::Dtype;

/// What the reader thread needs to find document boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocBoundaries {
    /// The end-of-document token id.
    pub eod: u32,
    /// Leading tokens of each row that the boundaries cover (`seq_len`, or
    /// `seq_len - 1` for rows packed at `L + 1` tokens whose inputs are the
    /// first `L`); at least 1 and at most the row's length.
    pub row_tokens: usize,
}

/// The document boundaries of one micro-batch; see the module docs for the
/// rule and the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocBounds {
    rows: usize,
    row_tokens: usize,
    cu_seqlens: Vec<i32>,
    num_docs: usize,
    max_seqlen: usize,
    document_ids: Vec<i32>,
}

impl DocBounds {
    /// Computes the boundaries of `rows` rows of `seq_len` little-endian
    /// `dtype` tokens in `bytes`, over the first `row_tokens` tokens of each
    /// row, with `eod` as the end-of-document id.
    ///
    /// Fails when `bytes` does not hold exactly `rows` rows, when
    /// `row_tokens` is 0 or longer than a row, or when the flattened
    /// offsets (`rows * row_tokens`) do not fit in int32.
    pub fn compute(
        bytes: &[u8],
        dtype: Dtype,
        rows: usize,
        seq_len: usize,
        row_tokens: usize,
        eod: u32,
    ) -> Result<DocBounds, String> {
        let tokens = Self::capacity_tokens(rows, row_tokens)?;
        if row_tokens > seq_len {
            return Err(format!(
                "document boundaries over {row_tokens} tokens of rows of {seq_len}"
            ));
        }
        let row_bytes = seq_len * dtype.size();
        if bytes.len() != rows * row_bytes {
            return Err(format!(
                "document boundaries: {} bytes are not {rows} rows of {seq_len} {}-byte tokens",
                bytes.len(),
                dtype.size()
            ));
        }
        let mut cu_seqlens = Vec::with_capacity(tokens + 1);
        let mut document_ids = Vec::with_capacity(tokens);
        let mut max_seqlen = 0usize;
        cu_seqlens.push(0i32);
        for (r, row) in bytes.chunks_exact(row_bytes.max(1)).enumerate() {
            let mut out = RowOut {
                cu_seqlens: &mut cu_seqlens,
                document_ids: &mut document_ids,
                max_seqlen: &mut max_seqlen,
            };
            let (start, n) = (r * row_tokens, row_tokens);
            match dtype {
                Dtype::U16 => scan_row(
                    row.chunks_exact(2)
                        .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
                    start,
                    n,
                    eod,
                    &mut out,
                ),
                Dtype::U32 => scan_row(
                    row.chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    start,
                    n,
                    eod,
                    &mut out,
                ),
            }
        }
        let num_docs = cu_seqlens.len() - 1;
        cu_seqlens.resize(tokens + 1, tokens as i32);
        Ok(DocBounds {
            rows,
            row_tokens,
            cu_seqlens,
            num_docs,
            max_seqlen,
            document_ids,
        })
    }

    /// The token count `rows * row_tokens` of a micro-batch, checked: at
    /// least one token, and `cu_seqlens` (capacity `rows * row_tokens + 1`)
    /// addressable in int32.
    pub fn capacity_tokens(rows: usize, row_tokens: usize) -> Result<usize, String> {
        let tokens = rows
            .checked_mul(row_tokens)
            .filter(|&t| t > 0 && t < i32::MAX as usize)
            .ok_or_else(|| {
                format!(
                    "document boundaries of {rows} rows of {row_tokens} tokens: need 1 to {} tokens per micro-batch (int32 offsets)",
                    i32::MAX - 1
                )
            })?;
        Ok(tokens)
    }

    /// Cumulative document lengths over the flattened micro-batch, padded
    /// to the fixed capacity `rows * row_tokens + 1` by repeating the last
    /// offset; the valid part is `[..num_docs() + 1]`.
    pub fn cu_seqlens(&self) -> &[i32] {
        &self.cu_seqlens
    }

    /// The valid part of [`cu_seqlens`](Self::cu_seqlens): `num_docs() + 1`
    /// offsets from 0 to `rows * row_tokens`.
    pub fn valid_cu_seqlens(&self) -> &[i32] {
        &self.cu_seqlens[..self.num_docs + 1]
    }

    /// Documents in the micro-batch (every row has at least one).
    pub fn num_docs(&self) -> usize {
        self.num_docs
    }

    /// Length of the longest document.
    pub fn max_seqlen(&self) -> usize {
        self.max_seqlen
    }

    /// Each token's document within its row (0, 1, ...), row-major
    /// `[rows, row_tokens]`.
    pub fn document_ids(&self) -> &[i32] {
        &self.document_ids
    }

    /// `[rows, row_tokens]`: the shape of
    /// [`document_ids`](Self::document_ids).
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.row_tokens]
    }
}

/// Where [`scan_row`] appends a row's boundaries.
struct RowOut<'a> {
    cu_seqlens: &'a mut Vec<i32>,
    document_ids: &'a mut Vec<i32>,
    max_seqlen: &'a mut usize,
}

/// Appends the boundaries of one row (its first `n` token `ids`, starting
/// at flattened offset `start`): the end offset of each of its documents
/// and each token's document. Offsets fit in int32: the caller checked the
/// micro-batch's capacity ([`DocBounds::capacity_tokens`]).
fn scan_row(
    ids: impl Iterator<Item = u32>,
    start: usize,
    n: usize,
    eod: u32,
    out: &mut RowOut<'_>,
) {
    let mut doc_start = start;
    let mut doc = 0i32;
    for (i, id) in ids.take(n).enumerate() {
        out.document_ids.push(doc);
        // The EOD ends its document; a new one starts after it, unless it
        // is the row's last token.
        if id == eod && i + 1 < n {
            let end = start + i + 1;
            *out.max_seqlen = (*out.max_seqlen).max(end - doc_start);
            out.cu_seqlens.push(end as i32);
            doc_start = end;
            doc += 1;
        }
    }
    let end = start + n;
    *out.max_seqlen = (*out.max_seqlen).max(end - doc_start);
    out.cu_seqlens.push(end as i32);
}

/// The boundaries of every micro-batch of a step of `step_rows` rows in
/// `bytes` (`micro_rows` rows each).
pub(crate) fn step_bounds(
    bytes: &[u8],
    dtype: Dtype,
    step_rows: usize,
    micro_rows: usize,
    seq_len: usize,
    docs: DocBoundaries,
) -> Result<Vec<DocBounds>, String> {
    let micro_bytes = micro_rows * seq_len * dtype.size();
    let bytes = bytes
        .get(..step_rows * seq_len * dtype.size())
        .ok_or("document boundaries: the step buffer is shorter than the step")?;
    if micro_bytes == 0 {
        return Err("document boundaries: empty micro-batches".into());
    }
    bytes
        .chunks(micro_bytes)
        .map(|m| {
            DocBounds::compute(
                m,
                dtype,
                m.len() / (seq_len * dtype.size()),
                seq_len,
                docs.row_tokens,
                docs.eod,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOD: u32 = 9;

    fn bounds(rows: &[&[u16]], row_tokens: usize) -> DocBounds {
        let seq_len = rows[0].len();
        let bytes: Vec<u8> = rows
            .iter()
            .flat_map(|r| r.iter().flat_map(|t| t.to_le_bytes()))
            .collect();
        DocBounds::compute(&bytes, Dtype::U16, rows.len(), seq_len, row_tokens, EOD).unwrap()
    }

    #[test]
    fn a_row_without_eod_is_one_document() {
        let b = bounds(&[&[1, 2, 3, 4], &[5, 6, 7, 8]], 4);
        assert_eq!(b.valid_cu_seqlens(), &[0, 4, 8]);
        assert_eq!(b.num_docs(), 2);
        assert_eq!(b.max_seqlen(), 4);
        assert_eq!(b.document_ids(), &[0, 0, 0, 0, 0, 0, 0, 0]);
        // Fixed capacity 2 * 4 + 1, padded with the last offset.
        assert_eq!(b.cu_seqlens(), &[0, 4, 8, 8, 8, 8, 8, 8, 8]);
    }

    #[test]
    fn the_eod_ends_its_document() {
        let b = bounds(&[&[1, 9, 3, 4, 5]], 5);
        assert_eq!(b.valid_cu_seqlens(), &[0, 2, 5]);
        assert_eq!(b.document_ids(), &[0, 0, 1, 1, 1]);
        assert_eq!(b.max_seqlen(), 3);
    }

    #[test]
    fn eod_as_first_and_last_token() {
        let b = bounds(&[&[9, 2, 3, 9]], 4);
        assert_eq!(b.valid_cu_seqlens(), &[0, 1, 4]);
        assert_eq!(b.document_ids(), &[0, 1, 1, 1]);
        assert_eq!((b.num_docs(), b.max_seqlen()), (2, 3));
        // The last token's EOD starts no empty document.
        let b = bounds(&[&[1, 2, 3, 9], &[9, 1, 1, 1]], 4);
        assert_eq!(b.valid_cu_seqlens(), &[0, 4, 5, 8]);
        assert_eq!(b.document_ids(), &[0, 0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn consecutive_eods_are_one_token_documents() {
        let b = bounds(&[&[1, 9, 9, 9, 5, 6]], 6);
        assert_eq!(b.valid_cu_seqlens(), &[0, 2, 3, 4, 6]);
        assert_eq!(b.document_ids(), &[0, 0, 1, 2, 3, 3]);
        assert_eq!(b.max_seqlen(), 2);
    }

    #[test]
    fn every_token_eod_fills_the_capacity() {
        let b = bounds(&[&[9, 9, 9], &[9, 9, 9]], 3);
        assert_eq!(b.cu_seqlens(), &[0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(b.num_docs(), 6);
        assert_eq!(b.max_seqlen(), 1);
        assert_eq!(b.document_ids(), &[0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn rows_are_independent_and_only_the_inputs_count() {
        // L + 1 rows: the last token (a label) is not an input; an EOD
        // there starts nothing, and the next row starts its own document.
        let b = bounds(&[&[1, 2, 9, 4, 9], &[5, 9, 7, 8, 1]], 4);
        assert_eq!(b.valid_cu_seqlens(), &[0, 3, 4, 6, 8]);
        assert_eq!(b.document_ids(), &[0, 0, 0, 1, 0, 0, 1, 1]);
        assert_eq!(b.shape(), [2, 4]);
        assert_eq!(b.cu_seqlens().len(), 9);
    }

    #[test]
    fn u32_tokens_and_step_split() {
        let eod = 100_000u32;
        let toks = [1u32, eod, 3, 4, eod, eod, 7, 8];
        let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
        let docs = DocBoundaries { eod, row_tokens: 2 };
        // 4 rows of 2 tokens in micro-batches of 2 rows.
        let m = step_bounds(&bytes, Dtype::U32, 4, 2, 2, docs).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].valid_cu_seqlens(), &[0, 2, 4]);
        assert_eq!(m[1].valid_cu_seqlens(), &[0, 1, 2, 4]);
        assert_eq!(m[1].document_ids(), &[0, 1, 0, 0]);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let bytes = [0u8; 8];
        assert!(DocBounds::compute(&bytes, Dtype::U16, 2, 2, 3, EOD).is_err());
        assert!(DocBounds::compute(&bytes, Dtype::U16, 2, 2, 0, EOD).is_err());
        assert!(DocBounds::compute(&bytes, Dtype::U16, 3, 2, 2, EOD).is_err());
        assert!(DocBounds::capacity_tokens(1 << 20, 1 << 12).is_err());
    }
}
