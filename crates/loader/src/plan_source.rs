//! The plan as a [`BlockSource`]: rank `r`'s block of step `s` is
//! [`Plan::split_block`] of the source's [`Split`] ([`Plan::rank_block`]
//! for training), each [`SequenceRef`](seqfeed_plan::SequenceRef) turned
//! into a [`SeqRead`] of a flat file table (every file of every source, in
//! plan order).
//!
//! The validation stream ([`PlanSource::with_split`]) is served in full
//! steps only: `floor(validation_len / B)` steps, exactly the plan's
//! validation steps but the short last one. A step buffer has a fixed number
//! of rows, so the last `validation_len mod B` held-out sequences are not
//! served (make the hold-out a multiple of `B` with `holdout_sequences` to
//! serve them all).

use std::sync::Arc;

use seqfeed_plan::{Plan, Split};

use crate::block::{BlockSource, Dtype, SeqRead};
use crate::error::{BoxError, LoaderError};

/// A [`Plan`] serving blocks to the loader.
#[derive(Debug, Clone)]
pub struct PlanSource {
    plan: Arc<Plan>,
    files: Vec<String>,
    sources: Vec<String>,
    /// Index of each source's first file in `files`.
    file_base: Vec<u32>,
    dtype: Dtype,
    split: Split,
    steps: u64,
}

impl PlanSource {
    /// Wraps `plan`'s training stream. Fails when its token size is neither
    /// 2 nor 4 bytes.
    pub fn new(plan: Arc<Plan>) -> Result<Self, LoaderError> {
        Self::with_split(plan, Split::Train)
    }

    /// Wraps one stream of `plan`: [`Split::Train`] (the run) or
    /// [`Split::Validation`] (the held-out sequences, in full steps; see the
    /// module docs). Fails when the token size is neither 2 nor 4 bytes, or
    /// when the validation stream does not fill one global batch.
    pub fn with_split(plan: Arc<Plan>, split: Split) -> Result<Self, LoaderError> {
        let dtype = match plan.token_bytes() {
            2 => Dtype::U16,
            4 => Dtype::U32,
            other => {
                return Err(LoaderError::Config {
                    what: format!("plan has {other}-byte tokens; the loader reads u16 or u32"),
                })
            }
        };
        let mut files = Vec::new();
        let mut file_base = Vec::new();
        let mut sources = Vec::new();
        for s in plan.sources() {
            file_base.push(u32::try_from(files.len()).map_err(|_| LoaderError::Config {
                what: "more than 2^32 files".into(),
            })?);
            sources.push(s.name.clone());
            files.extend(s.files.iter().map(|f| f.path.clone()));
        }
        let steps = match split {
            Split::Train => plan.steps(),
            Split::Validation => {
                let (v, b) = (plan.validation_len(), plan.global_batch());
                if v < b {
                    return Err(LoaderError::Config {
                        what: if v == 0 {
                            "the plan holds out no sequences, so it has no validation stream: set [split] holdout or holdout_sequences".into()
                        } else {
                            format!("the validation stream has {v} sequences, less than one global batch ({b}): hold out more")
                        },
                    });
                }
                v / b
            }
        };
        Ok(PlanSource {
            plan,
            files,
            sources,
            file_base,
            dtype,
            split,
            steps,
        })
    }

    /// The stream served.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }
}

impl BlockSource for PlanSource {
    fn steps(&self) -> u64 {
        self.steps
    }

    fn global_batch(&self) -> usize {
        self.plan.global_batch() as usize
    }

    fn seq_len(&self) -> usize {
        self.plan.seq_len() as usize
    }

    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn files(&self) -> &[String] {
        &self.files
    }

    fn sources(&self) -> &[String] {
        &self.sources
    }

    fn block(
        &self,
        step: u64,
        rank: usize,
        world: usize,
        out: &mut Vec<SeqRead>,
    ) -> Result<(), BoxError> {
        let rank = u32::try_from(rank).map_err(|_| format!("rank {rank} too large"))?;
        let world = u32::try_from(world).map_err(|_| format!("world {world} too large"))?;
        let block = match self.split {
            Split::Train => self.plan.rank_block(step, rank, world)?,
            Split::Validation => {
                if step >= self.steps {
                    return Err(format!(
                        "validation step {step} out of range: the validation stream has {} full steps",
                        self.steps
                    )
                    .into());
                }
                self.plan
                    .split_block(Split::Validation, step, rank, world)?
            }
        };
        out.extend(block.iter().map(|r| SeqRead {
            file: self.file_base[r.source as usize] + r.file,
            offset: r.offset,
            len: r.len,
            source: r.source,
            position: r.position,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seqfeed_plan::{FileShape, PlanConfig, SourceShape};

    #[test]
    fn blocks_follow_the_plan() {
        let shape = |name: &str, files: u64| SourceShape {
            name: name.into(),
            fingerprint: format!("fp-{name}"),
            seq_len: 64,
            token_bytes: 2,
            tokenizer: None,
            special_tokens: Default::default(),
            files: (0..files)
                .map(|i| FileShape {
                    path: format!("{name}/part-{i:05}.seq"),
                    count: 50,
                    data_offset: 4096,
                })
                .collect(),
        };
        let config = PlanConfig::from_toml_str(
            "seed = 3\nglobal_batch = 8\n[run]\nsteps = 5\n[[sources]]\nname = \"a\"\nweight = 1\n[[sources]]\nname = \"b\"\nweight = 2\n",
        )
        .unwrap();
        let plan = Arc::new(Plan::new(config, vec![shape("a", 2), shape("b", 3)]).unwrap());
        let src = PlanSource::new(plan.clone()).unwrap();
        assert_eq!(src.files().len(), 5);
        assert_eq!(src.sources(), ["a", "b"]);
        assert_eq!(src.dtype(), Dtype::U16);
        assert_eq!(src.seq_bytes(), 128);
        for step in 0..5 {
            let mut out = Vec::new();
            src.block(step, 1, 2, &mut out).unwrap();
            let want = plan.rank_block(step, 1, 2).unwrap();
            assert_eq!(out.len(), 4);
            for (r, w) in out.iter().zip(&want) {
                assert_eq!(
                    src.files()[r.file as usize],
                    plan.file_path(w.source, w.file)
                );
                assert_eq!(
                    (r.offset, r.len, r.source, r.position),
                    (w.offset, w.len, w.source, w.position)
                );
            }
        }
        let mut out = Vec::new();
        assert!(src.block(5, 0, 2, &mut out).is_err());
        assert!(src.block(0, 0, 3, &mut out).is_err());
    }

    #[test]
    fn validation_blocks_are_the_plans_split_blocks() {
        let shape = |name: &str, files: u64| SourceShape {
            name: name.into(),
            fingerprint: format!("fp-{name}"),
            seq_len: 64,
            token_bytes: 4,
            tokenizer: None,
            special_tokens: Default::default(),
            files: (0..files)
                .map(|i| FileShape {
                    path: format!("{name}/part-{i:05}.seq"),
                    count: 60,
                    data_offset: 4096,
                })
                .collect(),
        };
        let config = PlanConfig::from_toml_str(
            "seed = 3\nglobal_batch = 8\n[run]\nsteps = 5\n[split]\nholdout = 0.2\nseed = 9\n[[sources]]\nname = \"a\"\nweight = 1\n[[sources]]\nname = \"b\"\nweight = 2\n",
        )
        .unwrap();
        let plan = Arc::new(Plan::new(config, vec![shape("a", 2), shape("b", 3)]).unwrap());
        let v = plan.validation_len();
        assert!(
            v > 8 && !v.is_multiple_of(8),
            "{v}: the test wants a short last step"
        );
        let src = PlanSource::with_split(plan.clone(), Split::Validation).unwrap();
        assert_eq!(src.split(), Split::Validation);
        assert_eq!(src.steps(), v / 8);
        assert_eq!(plan.split_steps(Split::Validation), v / 8 + 1);
        assert_eq!(src.dtype(), Dtype::U32);
        let mut seen = Vec::new();
        for step in 0..src.steps() {
            for rank in 0..2 {
                let mut out = Vec::new();
                src.block(step, rank, 2, &mut out).unwrap();
                let want = plan
                    .split_block(Split::Validation, step, rank as u32, 2)
                    .unwrap();
                assert_eq!(out.len(), 4);
                for (r, w) in out.iter().zip(&want) {
                    assert_eq!(
                        src.files()[r.file as usize],
                        plan.file_path(w.source, w.file)
                    );
                    assert_eq!(
                        (r.offset, r.len, r.source, r.position),
                        (w.offset, w.len, w.source, w.position)
                    );
                }
                seen.extend(out.iter().map(|r| r.position));
            }
        }
        // Every full step of the validation stream, in order.
        assert_eq!(seen, (0..src.steps() * 8).collect::<Vec<_>>());
        let mut out = Vec::new();
        assert!(src.block(src.steps(), 0, 2, &mut out).is_err());
        // The training stream is unchanged, and a plan without a hold-out has
        // no validation stream.
        let train = PlanSource::new(plan.clone()).unwrap();
        assert_eq!((train.split(), train.steps()), (Split::Train, 5));
        let config = PlanConfig::from_toml_str(
            "seed = 3\nglobal_batch = 8\n[run]\nsteps = 5\n[[sources]]\nname = \"a\"\nweight = 1\n",
        )
        .unwrap();
        let plain = Arc::new(Plan::new(config, vec![shape("a", 2)]).unwrap());
        let e = PlanSource::with_split(plain, Split::Validation).unwrap_err();
        assert!(e.to_string().contains("holds out no sequences"), "{e}");
    }
}
