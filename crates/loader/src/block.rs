//! What a rank reads at each step: the [`BlockSource`] abstraction.
//!
//! The plan (`seqfeed-plan`) is the block source used in training (see
//! [`crate::PlanSource`]); tests and tools may supply others. A block is a
//! list of [`SeqRead`]s, one per row of the rank's step buffer, in row order.

use crate::error::BoxError;

pub use seqfeed_format::Dtype;

/// One sequence to read: row `k` of a block is the `k`-th `SeqRead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRead {
    /// Index into [`BlockSource::files`].
    pub file: u32,
    /// Byte offset of the sequence in its file (= in the node's region).
    pub offset: u64,
    /// Length in bytes (`seq_len * dtype.size()`).
    pub len: u32,
    /// Index into [`BlockSource::sources`].
    pub source: u32,
    /// Global position of the sequence in the plan's order.
    pub position: u64,
}

/// Produces, for any step and rank, the sequences that rank reads.
pub trait BlockSource: Send + Sync {
    /// Number of steps (valid steps are `0..steps()`).
    fn steps(&self) -> u64;
    /// Sequences per step across all ranks (the global batch).
    fn global_batch(&self) -> usize;
    /// Tokens per sequence.
    fn seq_len(&self) -> usize;
    /// Token type.
    fn dtype(&self) -> Dtype;
    /// Every file a block may name, as dataset-relative paths
    /// (`web/part-00000.seq`); [`SeqRead::file`] indexes this table.
    fn files(&self) -> &[String];
    /// Every source name; [`SeqRead::source`] indexes this table.
    fn sources(&self) -> &[String];
    /// Appends rank `rank` of `world`'s block for `step` to `out`, in row order.
    fn block(
        &self,
        step: u64,
        rank: usize,
        world: usize,
        out: &mut Vec<SeqRead>,
    ) -> Result<(), BoxError>;

    /// Bytes per sequence (one row of a step buffer).
    fn seq_bytes(&self) -> usize {
        self.seq_len() * self.dtype().size()
    }

    /// Rows per rank (`global_batch / world`), or an error when `world`
    /// does not divide the global batch.
    fn micro_batch(&self, world: usize) -> Result<usize, String> {
        let b = self.global_batch();
        if world == 0 || !b.is_multiple_of(world) {
            return Err(format!(
                "world size {world} does not divide the global batch {b}"
            ));
        }
        Ok(b / world)
    }
}
