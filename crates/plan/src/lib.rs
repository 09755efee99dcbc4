//! The seqfeed training plan (after patent CN118246542A): which sequence of
//! which source every rank reads at every step, computed, never stored.
//!
//! * [`PlanConfig`]: sources with weights, run length, global batch `B`,
//!   seed, repetition limits, [`MixingMode`] (parsed from TOML; unknown keys
//!   are rejected, naming the key).
//! * [`SourceShape`]: the plan's view of a source: sequence shape, files with
//!   counts and payload offsets, fingerprint. No data is needed.
//! * [`Plan`]: exact per-source quotas by the largest remainder
//!   ([`largest_remainder`]), epochs each with their own permutation of the
//!   source, one global shuffle over all positions by a keyed [`Feistel`]
//!   bijection with cycle walking. Step `s` is positions `[s*B, (s+1)*B)`;
//!   rank `r` of `W` takes the `r`-th contiguous `B/W` of it
//!   ([`Plan::rank_block`]). Every position resolves to a [`SequenceRef`]
//!   (source, file, index, byte offset, length) in `O(1)`.
//! * Splits: a `[split]` table holds out a deterministic part of each source
//!   (a fraction, stable as the source grows, or a count), chosen by a keyed
//!   hash of the sequence index. The training run never reads it;
//!   [`Plan::validation_iter`] and [`Plan::split_block`] give the
//!   validation stream ([`Split`]).
//! * Tokenizers: sources packed with different tokenizers (their manifests'
//!   `tokenizer.vocab_hash`) draw a warning ([`Plan::mixed_tokenizers`]); a
//!   config's `tokenizer = "<vocab_hash or name>"` pin refuses any source
//!   packed with another one, or with none ([`PlanError::TokenizerMismatch`]).
//! * [`shapes_from_dataset`] / [`SourceShape::from_manifest`]: shapes of a
//!   packed `seqfeed-format` dataset.
//!
//! ```
//! use seqfeed_plan::{FileShape, Plan, PlanConfig, SourceShape};
//! let shape = |name: &str, n: u64| SourceShape {
//!     name: name.into(),
//!     fingerprint: format!("fp-{name}"),
//!     seq_len: 4096,
//!     token_bytes: 2,
//!     tokenizer: None,
//!     special_tokens: Default::default(),
//!     files: vec![FileShape { path: format!("{name}/part-00000.seq"), count: n, data_offset: 4096 }],
//! };
//! let config = PlanConfig::from_toml_str(r#"
//!     seed = 7
//!     global_batch = 8
//!     [run]
//!     steps = 10
//!     [[sources]]
//!     name = "web"
//!     weight = 3
//!     [[sources]]
//!     name = "code"
//!     weight = 1
//! "#).unwrap();
//! let plan = Plan::new(config, vec![shape("web", 1000), shape("code", 1000)]).unwrap();
//! assert_eq!(plan.sources()[0].quota, 60);
//! let block = plan.rank_block(3, 1, 2).unwrap(); // step 3, rank 1 of 2
//! assert_eq!(block.len(), 4);
//! assert_eq!(block[0].position, 3 * 8 + 4);
//! assert_eq!(block[0].offset, 4096 + block[0].index * 8192);
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod bijection;
mod config;
mod dataset;
mod error;
mod plan;
mod quota;
mod shape;
mod split;
mod tokenizer;

pub use bijection::{derive_key, mix64, Feistel, ROUNDS};
pub use config::{Holdout, MixingMode, PlanConfig, RunLength, SourceWeight, SplitConfig};
pub use dataset::{shapes_from_dataset, shapes_from_manifests};
pub use error::{PlanError, QuotaRow};
pub use plan::{Plan, PlanFile, PlanSource, RankCursor, SequenceRef};
pub use quota::largest_remainder;
pub use shape::{FileShape, ShapesFile, SourceShape};
pub use split::Split;
