//! The validation stream of a plan: the held-out sequences of every source,
//! in config order, cut into steps of `B` (the last one may be short).

use std::ops::Range;

use super::{Plan, SequenceRef};
use crate::config::invalid;
use crate::{PlanError, Split};

impl Plan {
    /// Sequences held out of training over all sources: the length of the
    /// validation stream.
    pub fn validation_len(&self) -> u64 {
        self.validation_ends.last().copied().unwrap_or(0)
    }

    /// The sequence at `position` of the validation stream: sources in
    /// config order, each one's held-out sequences in ascending index order.
    ///
    /// # Panics
    /// If `position >= validation_len()`.
    pub fn validation_locate(&self, position: u64) -> SequenceRef {
        assert!(
            position < self.validation_len(),
            "validation position {position} out of range ({})",
            self.validation_len()
        );
        let src = self.validation_ends.partition_point(|&e| e <= position);
        let start = if src == 0 {
            0
        } else {
            self.validation_ends[src - 1]
        };
        let idx = self.sources[src].held_out[(position - start) as usize];
        self.resolve_index(position, src as u32, idx)
    }

    /// The whole validation stream, in order.
    pub fn validation_iter(&self) -> impl Iterator<Item = SequenceRef> + '_ {
        (0..self.validation_len()).map(|p| self.validation_locate(p))
    }

    /// Steps of a stream: the run's steps for [`Split::Train`];
    /// `ceil(validation_len / B)` for [`Split::Validation`] (the last one
    /// may be short).
    pub fn split_steps(&self, split: Split) -> u64 {
        match split {
            Split::Train => self.steps,
            Split::Validation => self.validation_len().div_ceil(self.global_batch),
        }
    }

    /// Positions of rank `rank`'s block of step `step` of a stream. For
    /// [`Split::Train`], [`Plan::rank_range`]. For [`Split::Validation`],
    /// step `s` is positions `[s B, min((s + 1) B, V))` and rank `r` of `W`
    /// takes `[start + floor(len r / W), start + floor(len (r + 1) / W))`
    /// (equal shares but in a short last step).
    pub fn split_range(
        &self,
        split: Split,
        step: u64,
        rank: u32,
        world: u32,
    ) -> Result<Range<u64>, PlanError> {
        if split == Split::Train {
            return self.rank_range(step, rank, world);
        }
        self.rank_range(0, rank, world)?;
        let v = self.validation_len();
        if v == 0 {
            return Err(invalid(
                "split",
                "the plan holds out no sequences: set [split] holdout or holdout_sequences",
            ));
        }
        let steps = self.split_steps(split);
        if step >= steps {
            return Err(PlanError::StepOutOfRange { step, steps });
        }
        let start = step * self.global_batch;
        let len = (v - start).min(self.global_batch);
        let share = |r: u64| start + len * r / u64::from(world);
        Ok(share(u64::from(rank))..share(u64::from(rank) + 1))
    }

    /// Rank `rank`'s block of step `step` of a stream (see
    /// [`Plan::split_range`]).
    pub fn split_block(
        &self,
        split: Split,
        step: u64,
        rank: u32,
        world: u32,
    ) -> Result<Vec<SequenceRef>, PlanError> {
        let range = self.split_range(split, step, rank, world)?;
        Ok(match split {
            Split::Train => range.map(|p| self.locate(p)).collect(),
            Split::Validation => range.map(|p| self.validation_locate(p)).collect(),
        })
    }
}
