//! [`LoaderConfig`]: which data-parallel rank this loader serves, how a
//! step splits into micro-batches, where to start and how far to read ahead.
//!
//! seqfeed splits each step's global batch by **data-parallel** rank and
//! size, not by the process's global rank: ranks that share a data-parallel
//! rank (tensor- and pipeline-parallel peers) read identical batches. With
//! plain data parallelism the two coincide, which is what
//! [`LoaderConfig::from_env`] assumes unless `SEQFEED_DP_RANK` and
//! `SEQFEED_DP_SIZE` say otherwise.
//!
//! Gradient accumulation: `global_batch = micro_batch × dp_size ×
//! accumulation`. A step's block of `global_batch / dp_size` rows is read
//! once (one batch of reads) and handed out as `accumulation` micro-batches
//! of `micro_batch` rows, in order.

use std::time::Duration;

use crate::cluster_reader::RetryPolicy;
use crate::docs::DocBoundaries;
use crate::error::LoaderError;

/// Default prefetch depth (steps read ahead of the consumer).
pub const DEFAULT_PREFETCH: usize = 2;

/// Loader settings; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// This loader's data-parallel rank, `0..world`.
    pub rank: usize,
    /// The data-parallel size (number of distinct blocks per step).
    pub world: usize,
    /// Rank within this host (for picking a GPU or NIC).
    pub local_rank: usize,
    /// Micro-batches per step (gradient accumulation); at least 1.
    pub accumulation: usize,
    /// First step to read (resume at step N).
    pub start_step: u64,
    /// First micro-batch of the start step (resume within a step).
    pub start_micro: usize,
    /// One past the last step to read; `None`: the plan's last step.
    pub end_step: Option<u64>,
    /// Steps read ahead of the consumer (ring size is `prefetch + 1`).
    pub prefetch: usize,
    /// Connect, fail-over and reconnect bounds.
    pub retry: RetryPolicy,
    /// How long `next` waits while the consumer holds every step buffer
    /// (nothing can be read ahead) before it fails with
    /// [`LoaderError::RingHeld`] instead of waiting forever. Another thread
    /// releasing a batch within this time lets the run go on.
    pub ring_wait: Duration,
    /// Check every sequence read into host memory against its file's
    /// CRC32C table ([`ClusterReader::set_verify_crc`](crate::ClusterReader::set_verify_crc));
    /// off by default (it costs more than 5% of tcp throughput; see there).
    pub verify_crc: bool,
    /// Document boundaries the reader thread computes for every
    /// micro-batch ([`crate::Batch::doc_bounds`]); `None`: none.
    pub doc_boundaries: Option<DocBoundaries>,
}

/// Default [`LoaderConfig::ring_wait`].
pub const DEFAULT_RING_WAIT: Duration = Duration::from_secs(10);

impl LoaderConfig {
    /// Data-parallel rank `rank` of `world`, from step 0, one micro-batch
    /// per step, default prefetch.
    pub fn new(rank: usize, world: usize) -> Self {
        LoaderConfig {
            rank,
            world,
            local_rank: 0,
            accumulation: 1,
            start_step: 0,
            start_micro: 0,
            end_step: None,
            prefetch: DEFAULT_PREFETCH,
            retry: RetryPolicy::default(),
            ring_wait: DEFAULT_RING_WAIT,
            verify_crc: false,
            doc_boundaries: None,
        }
    }

    /// Same as [`new`](Self::new), named for what the numbers are.
    pub fn data_parallel(dp_rank: usize, dp_size: usize) -> Self {
        Self::new(dp_rank, dp_size)
    }

    /// From the launcher's environment: the data-parallel rank and size are
    /// `SEQFEED_DP_RANK` / `SEQFEED_DP_SIZE` when set, else `RANK` /
    /// `WORLD_SIZE` (plain data parallelism; defaults 0 and 1), and the local
    /// rank is `LOCAL_RANK` (default 0).
    pub fn from_env() -> Result<Self, LoaderError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env) with variables looked up by `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, LoaderError> {
        let read = |var: &'static str| -> Result<Option<usize>, LoaderError> {
            match get(var) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|e| LoaderError::Env {
                        var,
                        value: v.clone(),
                        why: format!("not a non-negative integer ({e})"),
                    }),
            }
        };
        let (rank_var, world_var) = match (read("SEQFEED_DP_RANK")?, read("SEQFEED_DP_SIZE")?) {
            (Some(_), Some(_)) => ("SEQFEED_DP_RANK", "SEQFEED_DP_SIZE"),
            (None, None) => ("RANK", "WORLD_SIZE"),
            (Some(_), None) | (None, Some(_)) => {
                return Err(LoaderError::Env {
                    var: "SEQFEED_DP_RANK",
                    value: get("SEQFEED_DP_RANK").unwrap_or_default(),
                    why: "SEQFEED_DP_RANK and SEQFEED_DP_SIZE must be set together".into(),
                })
            }
        };
        let rank = read(rank_var)?.unwrap_or(0);
        let world = read(world_var)?.unwrap_or(1);
        let local_rank = read("LOCAL_RANK")?.unwrap_or(0);
        if world == 0 {
            return Err(LoaderError::Env {
                var: world_var,
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        if rank >= world {
            return Err(LoaderError::Env {
                var: rank_var,
                value: rank.to_string(),
                why: format!("must be below {world_var}={world}"),
            });
        }
        let mut c = Self::new(rank, world);
        c.local_rank = local_rank;
        Ok(c)
    }

    /// Sets the start step (resume).
    pub fn start_step(mut self, step: u64) -> Self {
        self.start_step = step;
        self
    }

    /// Sets the first micro-batch of the start step (resume within a step).
    pub fn start_micro(mut self, micro: usize) -> Self {
        self.start_micro = micro;
        self
    }

    /// Sets the end step (exclusive).
    pub fn end_step(mut self, step: u64) -> Self {
        self.end_step = Some(step);
        self
    }

    /// Sets the prefetch depth.
    pub fn prefetch(mut self, depth: usize) -> Self {
        self.prefetch = depth;
        self
    }

    /// Sets the micro-batches per step (gradient accumulation).
    pub fn accumulation(mut self, micro_batches: usize) -> Self {
        self.accumulation = micro_batches;
        self
    }

    /// Sets how long `next` waits while the consumer holds every step
    /// buffer ([`LoaderConfig::ring_wait`]).
    pub fn ring_wait(mut self, wait: Duration) -> Self {
        self.ring_wait = wait;
        self
    }

    /// Turns the per-read CRC32C check on or off ([`LoaderConfig::verify_crc`]).
    pub fn verify_crc(mut self, on: bool) -> Self {
        self.verify_crc = on;
        self
    }

    /// Has the reader thread compute the document boundaries of every
    /// micro-batch over the first `row_tokens` tokens of each row, ended by
    /// `eod` ([`crate::docs`]).
    pub fn doc_boundaries(mut self, eod: u32, row_tokens: usize) -> Self {
        self.doc_boundaries = Some(DocBoundaries { eod, row_tokens });
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Rows of one micro-batch for a step block of `block_rows` rows (the
    /// global batch divided by the data-parallel size).
    pub fn micro_batch_rows(&self, block_rows: usize) -> Result<usize, LoaderError> {
        let a = self.accumulation;
        if a == 0 || !block_rows.is_multiple_of(a) {
            return Err(LoaderError::Config {
                what: format!(
                    "a step's block of {block_rows} rows per data-parallel rank does not split into {a} micro-batches (global_batch = micro_batch x dp_size x accumulation)"
                ),
            });
        }
        if self.start_micro >= a {
            return Err(LoaderError::Config {
                what: format!(
                    "start micro-batch {} is out of range: a step has {a} micro-batches",
                    self.start_micro
                ),
            });
        }
        Ok(block_rows / a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn rank_and_world_come_from_the_environment() {
        let c = LoaderConfig::from_vars(vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
        ]))
        .unwrap();
        assert_eq!((c.rank, c.world, c.local_rank, c.prefetch), (3, 8, 1, 2));
        let e = LoaderConfig::from_vars(vars(&[("RANK", "8"), ("WORLD_SIZE", "8")])).unwrap_err();
        assert!(e.to_string().contains("RANK=\"8\""), "{e}");
        let e = LoaderConfig::from_vars(vars(&[("RANK", "x"), ("WORLD_SIZE", "8")])).unwrap_err();
        assert!(e.to_string().contains("RANK"), "{e}");
        let e = LoaderConfig::from_vars(vars(&[("RANK", "0"), ("WORLD_SIZE", "0")])).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE"), "{e}");
        let c = LoaderConfig::from_vars(|_| None).unwrap();
        assert_eq!((c.rank, c.world), (0, 1));
    }

    #[test]
    fn data_parallel_variables_override_the_global_rank() {
        // Rank 5 of 8 with tensor parallelism 2: data-parallel rank 2 of 4.
        let c = LoaderConfig::from_vars(vars(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("SEQFEED_DP_RANK", "2"),
            ("SEQFEED_DP_SIZE", "4"),
        ]))
        .unwrap();
        assert_eq!((c.rank, c.world), (2, 4));
        let e = LoaderConfig::from_vars(vars(&[("SEQFEED_DP_RANK", "2")])).unwrap_err();
        assert!(e.to_string().contains("set together"), "{e}");
        let e =
            LoaderConfig::from_vars(vars(&[("SEQFEED_DP_RANK", "4"), ("SEQFEED_DP_SIZE", "4")]))
                .unwrap_err();
        assert!(e.to_string().contains("SEQFEED_DP_RANK"), "{e}");
    }

    #[test]
    fn micro_batches_split_the_block_exactly() {
        let c = LoaderConfig::new(0, 2).accumulation(4);
        assert_eq!(c.micro_batch_rows(16).unwrap(), 4);
        let e = c.micro_batch_rows(10).unwrap_err();
        assert!(e.to_string().contains("does not split into 4"), "{e}");
        let e = LoaderConfig::new(0, 2)
            .accumulation(2)
            .start_micro(2)
            .micro_batch_rows(8)
            .unwrap_err();
        assert!(e.to_string().contains("start micro-batch 2"), "{e}");
        assert!(LoaderConfig::new(0, 1)
            .accumulation(0)
            .micro_batch_rows(8)
            .is_err());
    }
}
